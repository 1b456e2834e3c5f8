Feature: Sync survives a bad network
  Real networks drop answers, cut connections mid-transfer, crawl and stall. A clean reconcile
  ends the same as if the network had been perfect: nothing lost, nothing twice.

  Background:
    Given a sync server for the organisation "acme"
    And a phone for the rep "rep-1"

  Scenario: The server saves a push but its answer never arrives (connection reset)
    Given the rep has saved 5 accounts on "phone"
    And the answers to "phone" are cut off by "reset_peer"
    When "phone" syncs
    Then the server has every account "phone" saved
    When the answers to "phone" flow again
    And "phone" syncs
    Then the run passes every check

  Scenario: The server saves a push but its answer never arrives (answer truncated)
    Given the rep has saved 5 accounts on "phone"
    And the answers to "phone" are cut off by "limit_data"
    When "phone" syncs
    Then the server has every account "phone" saved
    When the answers to "phone" flow again
    And "phone" syncs
    Then the run passes every check

  Scenario: The network drops in the middle of a push
    Given the rep has saved 8 accounts on "phone"
    And the connection of "phone" crawls with 400 ms of latency
    When "phone" starts syncing and the network drops at a seeded moment
    And "phone" is back online
    And the connection of "phone" is fast again
    And "phone" syncs
    Then the run passes every check

  Scenario: The network drops in the middle of a pull
    Given a tablet for the rep "rep-2"
    And the rep has saved 8 accounts on "tablet"
    And "tablet" syncs
    And the connection of "phone" crawls with 400 ms of latency
    When "phone" starts syncing and the network drops at a seeded moment
    And "phone" is back online
    And the connection of "phone" is fast again
    And "phone" syncs
    Then the run passes every check

  Scenario: Ten seconds of latency: writes stay instant and sync completes later
    Given background sync is switched on for "phone"
    And the connection of "phone" crawls with 10000 ms of latency
    When the rep has done a visit's work on "phone": an account, a visit, an order and a note
    Then every write on "phone" finished within 2 seconds
    And everything the rep saved reaches the office within 90 seconds
    And the run passes every check

  Scenario: A stalled connection (timeout toxic) does not lose or duplicate work
    Given the rep has saved 3 accounts on "phone"
    And the connection of "phone" stalls
    When "phone" syncs
    Then the sync on "phone" did not report success
    When the connection of "phone" is released
    And "phone" syncs
    Then the run passes every check

  Scenario: Background sync resumes by itself when the network returns
    Given background sync is switched on for "phone"
    And "phone" is in airplane mode
    And the rep has saved 3 accounts on "phone"
    And 5 seconds pass
    When "phone" is back online
    Then without any sync command everything the rep saved reaches the office within 60 seconds
    And the run passes every check
