Feature: Territories: each phone holds only its rep's part of the organisation
  A field sales organisation splits its accounts into territories: each rep's phone carries the
  accounts of their territories, what hangs off them, and the catalogue. Accounts move between
  territories and reps are reassigned while phones are offline; none of it may lose a rep's work,
  and after a sync every phone holds exactly what the server says its rep holds.

  Background:
    Given a sync server for the organisation "acme"
    And a phone for the rep "rep-1"
    And a tablet for the rep "rep-2"
    And the rep "rep-1" is given the territory "north"
    And the rep "rep-2" is given the territory "south"

  Scenario: Two reps in different territories
    Given the rep has an account on "phone" that reached the office
    When the rep logs a visit to the account on "phone"
    And the rep creates a new account on "tablet"
    And the rep writes a note on the account on "tablet"
    And everyone syncs
    Then the run passes every check

  Scenario: A rep edits an account that is moved away while offline
    Given the rep has an account on "phone" that reached the office
    And "phone" is in airplane mode
    When the back office edits the account's "territory" to "south"
    And the rep edits the account's "city" to "York" on "phone"
    And the rep logs a visit to the account on "phone"
    And "phone" is back online
    And everyone syncs
    Then the run passes every check

  Scenario: Airplane mode during a reassignment
    Given the rep has an account on "tablet" that reached the office
    And "phone" is in airplane mode
    When the rep "rep-1" is given the territory "south"
    And the rep edits the account's "city" to "Leeds" on "tablet"
    And the rep creates a new account on "phone"
    And "phone" is back online
    And everyone syncs
    Then the run passes every check

  Scenario: Two phones of a territory hold newer work when the server goes back to a backup
    Given the rep "rep-2" is given the territory "north"
    And a backup of the server is taken
    And an account on "phone" that "tablet" has too
    When the server is restored from its backup
    And the rep logs a visit to the account on "tablet"
    And "tablet" syncs
    And everyone syncs
    Then the run passes every check
