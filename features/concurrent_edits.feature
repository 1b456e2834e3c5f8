Feature: Concurrent edits reconcile without losing any of them
  Two reps and the back office change the same customer while the reps are offline. When
  everyone is back, every replica agrees, and every edit is either the value that won or
  kept in the conflict log for a person to settle.

  Background:
    Given a sync server for the organisation "acme"
    And a phone for the rep "rep-1"
    And a tablet for the rep "rep-2"
    And an account on "phone" that "tablet" has too

  Scenario: Two devices and the back office edit the same field
    Given "phone" is in airplane mode
    And "tablet" is in airplane mode
    When the rep edits the account's "city" to "York" on "phone"
    And the rep edits the account's "city" to "Hull" on "tablet"
    And the back office edits the account's "city" to "Leeds"
    And "phone" is back online
    And "tablet" is back online
    And everyone syncs
    Then the run passes every check

  Scenario: Two devices and the back office edit different fields
    Given "phone" is in airplane mode
    And "tablet" is in airplane mode
    When the rep edits the account's "city" to "York" on "phone"
    And the rep edits the account's "phone" to "0113 496 0000" on "tablet"
    And the back office edits the account's "name" to "Corner Store Ltd"
    And "phone" is back online
    And "tablet" is back online
    And everyone syncs
    Then the account shows "city" "York", "phone" "0113 496 0000" and "name" "Corner Store Ltd" everywhere
    And the run passes every check

  Scenario: One device deletes the account while another edits it
    Given "phone" is in airplane mode
    And "tablet" is in airplane mode
    When the rep deletes the account on "phone"
    And the rep edits the account's "city" to "Hull" on "tablet"
    And "phone" is back online
    And "tablet" is back online
    And everyone syncs
    Then the run passes every check

  Scenario: A device whose clock is hours off still converges and loses nothing
    Given the clock of "tablet" is 5 hours behind
    When the rep edits the account's "city" to "York" on "phone"
    And "phone" syncs
    And "tablet" syncs
    And the rep edits the account's "city" to "Hull" on "tablet"
    And "tablet" syncs
    And everyone syncs
    Then the account shows "city" "Hull" everywhere
    And the run passes every check
