Feature: The airplane-mode checklist
  A field rep works where there is no signal: a basement, a loading dock, a rural route.
  Everything done offline must be kept, survive a force-quit, and reach the office by
  itself once the network returns, with no duplicates and nothing lost.

  Background:
    Given a sync server for the organisation "acme"
    And a phone for the rep "rep-1"

  Scenario: Create a new account in airplane mode
    Given "phone" is in airplane mode
    When the rep creates a new account on "phone"
    Then "phone" says the account was saved
    And "phone" shows 1 change waiting to sync

  Scenario: Log an activity or visit in airplane mode
    Given the rep has an account on "phone" that reached the office
    And "phone" is in airplane mode
    When the rep logs a visit to the account on "phone"
    Then "phone" says the visit was saved
    And "phone" shows 1 change waiting to sync

  Scenario: Take an order in airplane mode
    Given the rep has an account on "phone" that reached the office
    And "phone" is in airplane mode
    When the rep takes an order for the account on "phone"
    Then "phone" says the order was saved
    And "phone" shows 1 change waiting to sync

  Scenario: Write and save notes in airplane mode
    Given the rep has an account on "phone" that reached the office
    And "phone" is in airplane mode
    When the rep writes a note on the account on "phone"
    Then "phone" says the note was saved
    And "phone" shows 1 change waiting to sync

  Scenario: Force-quit and reopen: the work is still queued
    Given "phone" is in airplane mode
    And the rep has done a visit's work on "phone": an account, a visit, an order and a note
    When the app on "phone" is force-quit
    And the app on "phone" is reopened
    Then "phone" shows 4 changes waiting to sync

  Scenario: Back online: everything syncs by itself with no duplicates
    Given background sync is switched on for "phone"
    And "phone" is in airplane mode
    And the rep has done a visit's work on "phone": an account, a visit, an order and a note
    And the app on "phone" is force-quit
    And the app on "phone" is reopened
    When "phone" is back online
    Then without any sync command everything the rep saved reaches the office within 60 seconds
    And the run passes every check

  Scenario: Background sync resumes by itself after a long time offline
    Given background sync is switched on for "phone"
    And "phone" is in airplane mode
    And the rep has saved 3 accounts on "phone"
    And 5 seconds pass
    When "phone" is back online
    Then without any sync command everything the rep saved reaches the office within 60 seconds
    And the run passes every check
