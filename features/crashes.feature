Feature: Sync survives force-quits and server crashes
  Apps get killed by the phone, by the rep, by a flat battery. Servers restart. A kill
  between saving locally and uploading must never lose a saved change or create a second copy.

  Background:
    Given a sync server for the organisation "acme"
    And a phone for the rep "rep-1"

  Scenario: The app is killed while saving, at seeded random moments
    When the rep creates 6 accounts on "phone", each killed at a seeded moment
    And the app on "phone" is reopened
    And "phone" syncs
    Then the run passes every check

  Scenario: The app is killed while syncing, at seeded random moments
    Given the rep has saved 6 accounts on "phone"
    And the connection of "phone" crawls with 300 ms of latency
    When "phone" starts syncing and is killed at a seeded moment, 3 times
    And the connection of "phone" is fast again
    And the app on "phone" is reopened
    And "phone" syncs
    Then the run passes every check

  Scenario: The server is killed and restarted in the middle of a sync
    Given the rep has saved 6 accounts on "phone"
    And the connection of "phone" crawls with 300 ms of latency
    When "phone" starts syncing and the server is killed at a seeded moment
    And the server is restarted
    And the connection of "phone" is fast again
    And "phone" syncs
    Then the run passes every check

  Scenario: The server is killed right after a sync said everything was saved
    Given the rep has saved 3 accounts on "phone"
    And "phone" syncs
    When the server is killed
    And the server is restarted
    Then the run passes every check
