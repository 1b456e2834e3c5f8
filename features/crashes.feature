Feature: Sync survives a server crash right after it acknowledged
  Servers restart. What a sync reported saved must still be there afterwards. (Force-quits while
  saving and syncing and a server crash in the middle of a sync are rows of the coverage matrix,
  features/fault_matrix.feature.)

  Background:
    Given a sync server for the organisation "acme"
    And a phone for the rep "rep-1"

  Scenario: The server is killed right after a sync said everything was saved
    Given the rep has saved 3 accounts on "phone"
    And "phone" syncs
    When the server is killed
    And the server is restarted
    Then the run passes every check
