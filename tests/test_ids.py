"""crm.ids.uuid7: valid RFC 9562 version-7 ids that sort in creation order."""

from __future__ import annotations

import time
import uuid

import crm.ids
from crm.ids import uuid7


def test_ids_are_version_7_with_the_current_time(monkeypatch) -> None:
    monkeypatch.setattr(crm.ids, "_last_ms", 0)  # earlier bursts may have run the clock ahead
    before = time.time_ns() // 1_000_000
    value = uuid.UUID(uuid7())
    after = time.time_ns() // 1_000_000
    assert value.version == 7 and value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after + 1
    text = uuid7()
    assert text == str(uuid.UUID(text))  # canonical lowercase 8-4-4-4-12 text


def test_ids_strictly_increase_and_do_not_repeat() -> None:
    ids = [uuid7() for _ in range(5000)]  # many per millisecond
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_random_bits_vary() -> None:
    tails = {uuid7()[-12:] for _ in range(200)}
    assert len(tails) == 200
