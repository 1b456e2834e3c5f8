Feature: Life around the faults: backups, restores, a cloned phone, a wrong clock
  Phones are restored from backups and copied onto new phones; servers are restored from last
  night's backup; clocks jump. None of it may lose work that any device or the server still
  holds, leave two replicas that disagree, or refuse a rep's work without saying so.

  Background:
    Given a sync server for the organisation "acme"
    And a phone for the rep "rep-1"

  Scenario: The phone is restored from an older backup of itself
    Given the rep has an account on "phone" that reached the office
    And a backup of "phone" is taken
    And the rep has saved 2 accounts on "phone"
    And "phone" syncs
    When "phone" is restored from its backup
    And the rep creates a new account on "phone"
    Then the run passes every check

  Scenario: The phone's home is copied onto a second phone
    Given the rep has an account on "phone" that reached the office
    And the home of "phone" is copied onto a second phone "tablet"
    When the rep edits the account's "city" to "York" on "phone"
    And the rep edits the account's "phone" to "0113 496 0000" on "tablet"
    And the rep creates a new account on "phone"
    And the rep creates a new account on "tablet"
    Then the run passes every check

  Scenario: The server is restored from an older backup while phones hold newer work
    Given a tablet for the rep "rep-2"
    And the rep has an account on "phone" that reached the office
    And a backup of the server is taken
    And the rep has an account on "phone" that reached the office
    And the rep has an account on "tablet" that reached the office
    And everyone syncs
    When the server is restored from its backup
    And the rep creates a new account on "tablet"
    Then the run passes every check

  Scenario: The phone's clock jumps two years ahead, then back
    Given the clock of "phone" is 17520 hours ahead
    And the rep has an account on "phone" that reached the office
    When the clock of "phone" is right again
    And the rep edits the account's "city" to "York" on "phone"
    And the rep creates a new account on "phone"
    Then the run passes every check
