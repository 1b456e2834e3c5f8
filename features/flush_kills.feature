Feature: Force-quits aimed at every flush to disk
  A force-quit by the clock lands in the app's start-up far more often than in the instant between
  two of its commits. Here each command runs again and again, killed as it asks for its first,
  second, third... flush to disk (strace on Linux; harness/flushes.py), until a run ends by itself:
  every step between two durable points is hit once, whatever the machine's speed. A save made of
  two transactions (the record, then its queued change) or a pull that stores how far it got before
  what it got is caught here. Whatever the app showed it saved must reach the office, and what the
  office holds must reach the app.

  Background:
    Given a sync server for the organisation "acme"
    And a phone for the rep "rep-1"

  Scenario: Every kind of write survives a force-quit at each of its flushes to disk
    Given the rep has records on "phone" that reached the office: an account with an order, and an account to delete
    And "phone" is in airplane mode
    When the rep makes one of every kind of write on "phone", each force-quit at each of its flushes to disk
    And "phone" is back online
    Then "phone" catches up within 60 seconds
    And the run passes every check

  Scenario: A pull survives a force-quit at each of its flushes to disk
    Given the rep has saved 3 accounts on "phone"
    And "phone" syncs
    When a new tablet of the rep "rep-1" syncs for the first time, force-quit at each of its flushes to disk, then syncs twice
    Then the run passes every check
