Feature: The coverage matrix: every kind of write survives every fault
  Each scenario is one row of the matrix in docs/coverage.md: the rep makes one of every contract
  write (an account, a visit, an order, a line added to it, a note, an edit of a synced account and
  the delete of another), then one fault strikes, with manual sync or with background sync. After
  the fault heals, the office and the device must hold everything: nothing lost, nothing twice,
  no edit lost, the delete kept. A fault that never reached the state it tests makes the scenario
  inconclusive, not passed (docs/levels.md).

  Background:
    Given a sync server for the organisation "acme"
    And a phone for the rep "rep-1"

  Scenario Outline: Every kind of write survives airplane mode, with <mode> sync
    Given "phone" uses <mode> sync
    And the rep has records on "phone" that reached the office: an account with an order, and an account to delete
    And "phone" is in airplane mode
    When the rep makes one of every kind of write on "phone"
    And "phone" is back online
    Then "phone" catches up within 60 seconds
    And the run passes every check

    Examples:
      | fault    | mode       |
      | airplane | manual     |
      | airplane | background |

  Scenario Outline: Every kind of write survives a force-quit of the idle app, with <mode> sync
    Given "phone" uses <mode> sync
    And the rep has records on "phone" that reached the office: an account with an order, and an account to delete
    And "phone" is in airplane mode
    When the rep makes one of every kind of write on "phone"
    And the app on "phone" is force-quit
    And the app on "phone" is reopened
    And "phone" is back online
    Then "phone" catches up within 60 seconds
    And the run passes every check

    Examples:
      | fault     | mode       |
      | quit_idle | manual     |
      | quit_idle | background |

  Scenario Outline: Every kind of write survives a force-quit while saving, with <mode> sync
    Given "phone" uses <mode> sync
    And the rep has records on "phone" that reached the office: an account with an order, and an account to delete
    When the rep makes one of every kind of write on "phone", each killed at a seeded moment
    And the app on "phone" is reopened
    Then "phone" catches up within 60 seconds
    And the run passes every check

    Examples:
      | fault       | mode       |
      | quit_saving | manual     |
      | quit_saving | background |

  Scenario Outline: Every kind of write survives force-quits while syncing, with <mode> sync
    Given "phone" uses <mode> sync
    And the rep has records on "phone" that reached the office: an account with an order, and an account to delete
    And "phone" is in airplane mode
    And the rep makes one of every kind of write on "phone"
    And the connection of "phone" crawls with 300 ms of latency
    And "phone" is back online
    When "phone" starts syncing and is killed at a seeded moment, 3 times
    And the connection of "phone" is fast again
    And the app on "phone" is reopened
    Then "phone" catches up within 60 seconds
    And the run passes every check

    Examples:
      | fault        | mode   |
      | quit_syncing | manual |

  Scenario Outline: Every kind of write survives a force-quit of the background sync with work queued, with <mode> sync
    Given "phone" uses <mode> sync
    And the rep has records on "phone" that reached the office: an account with an order, and an account to delete
    And "phone" is in airplane mode
    And the rep makes one of every kind of write on "phone"
    And the answers to "phone" are held back
    And "phone" is back online
    When the background sync of "phone" is force-quit at a seeded moment
    And the answers to "phone" flow again
    And the app on "phone" is reopened
    Then "phone" catches up within 60 seconds
    And the run passes every check

    Examples:
      | fault      | mode       |
      | quit_agent | background |

  Scenario Outline: Every kind of write survives a server crash in the middle of a sync, with <mode> sync
    Given "phone" uses <mode> sync
    And the rep has records on "phone" that reached the office: an account with an order, and an account to delete
    And "phone" is in airplane mode
    And the rep makes one of every kind of write on "phone"
    And the answers to "phone" are held back
    And "phone" is back online
    When the server is killed at a seeded moment while "phone" syncs
    And the server is restarted
    And the answers to "phone" flow again
    Then "phone" catches up within 60 seconds
    And the run passes every check

    Examples:
      | fault        | mode       |
      | server_crash | manual     |
      | server_crash | background |

  Scenario Outline: Every kind of write survives losing the answer that committed it (<cut>), with <mode> sync
    Given "phone" uses <mode> sync
    And the rep has records on "phone" that reached the office: an account with an order, and an account to delete
    And "phone" is in airplane mode
    And the rep makes one of every kind of write on "phone"
    And the answers to "phone" are held back
    And "phone" is back online
    When the answer that commits the work of "phone" is cut off by "<cut>"
    And the answers to "phone" flow again
    Then "phone" catches up within 60 seconds
    And the run passes every check

    Examples:
      | fault                 | mode       | cut        |
      | lost_answer_reset     | manual     | reset_peer |
      | lost_answer_reset     | background | reset_peer |
      | lost_answer_truncated | manual     | limit_data |
      | lost_answer_truncated | background | limit_data |

  Scenario Outline: Every kind of write survives a partition in the middle of a push, with <mode> sync
    Given "phone" uses <mode> sync
    And the rep has records on "phone" that reached the office: an account with an order, and an account to delete
    And "phone" is in airplane mode
    And the rep makes one of every kind of write on "phone"
    And the connection of "phone" crawls with 400 ms of latency
    And "phone" is back online
    When the network of "phone" drops at a seeded moment of a push
    And "phone" is back online
    And the connection of "phone" is fast again
    Then "phone" catches up within 60 seconds
    And the run passes every check

    Examples:
      | fault          | mode       |
      | partition_push | manual     |
      | partition_push | background |

  Scenario Outline: Every kind of write survives a partition in the middle of a pull, with <mode> sync
    Given a tablet for the rep "rep-2"
    And "phone" uses <mode> sync
    And "phone" is in airplane mode
    And the rep has records on "tablet" that reached the office: an account with an order, and an account to delete
    And the rep makes one of every kind of write on "tablet"
    And "tablet" catches up within 60 seconds
    And the connection of "phone" crawls with 2000 ms of latency
    And "phone" is back online
    When the network of "phone" drops at a seeded moment of a pull
    And "phone" is back online
    And the connection of "phone" is fast again
    Then "phone" catches up within 60 seconds
    And the run passes every check

    Examples:
      | fault          | mode       |
      | partition_pull | manual     |
      | partition_pull | background |

  Scenario Outline: Every kind of write stays instant and syncs through 10 seconds of latency, with <mode> sync
    Given "phone" uses <mode> sync
    And the rep has records on "phone" that reached the office: an account with an order, and an account to delete
    And the connection of "phone" crawls with 10000 ms of latency
    When the rep makes one of every kind of write on "phone"
    Then every write on "phone" finished within 2 seconds
    And "phone" catches up within 90 seconds
    And the run passes every check

    Examples:
      | fault       | mode       |
      | latency_10s | manual     |
      | latency_10s | background |

  Scenario Outline: Every kind of write survives a stalled connection, with <mode> sync
    Given "phone" uses <mode> sync
    And the rep has records on "phone" that reached the office: an account with an order, and an account to delete
    And "phone" is in airplane mode
    And the rep makes one of every kind of write on "phone"
    And the connection of "phone" stalls
    And "phone" is back online
    When "phone" tries to sync through the stalled connection
    And the connection of "phone" is released
    Then "phone" catches up within 60 seconds
    And the run passes every check

    Examples:
      | fault | mode       |
      | stall | manual     |
      | stall | background |
