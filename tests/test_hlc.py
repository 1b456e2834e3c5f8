"""The hybrid logical clock: stamps only go forward, whatever the wall clock does."""

from __future__ import annotations

import pytest

from crm.hlc import MAX_COUNTER, ClockError, HybridClock, Stamp, format_stamp, parse_stamp

T = 1_700_000_000_000


class FakeWall:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_a_frozen_wall_clock_still_gives_increasing_stamps() -> None:
    clock = HybridClock(device="dev-a", wall=FakeWall(T))
    stamps = [clock.tick() for _ in range(50)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 50
    assert stamps[0] == format_stamp(T, 0, "dev-a") and stamps[-1] == format_stamp(T, 49, "dev-a")


def test_a_wall_clock_going_backwards_does_not_take_stamps_back() -> None:
    wall = FakeWall(T)
    clock = HybridClock(device="dev-a", wall=wall)
    before = clock.tick()
    wall.ms = T - 6 * 3_600_000  # the device's clock is set back six hours
    after = [clock.tick() for _ in range(3)]
    assert before < after[0] < after[1] < after[2]
    assert all(parse_stamp(s).wall_ms == T for s in after)  # logical time stays where it was
    wall.ms = T + 10  # once the wall clock is ahead again, stamps follow it
    assert clock.tick() == format_stamp(T + 10, 0, "dev-a")


def test_after_observing_a_remote_stamp_the_next_tick_is_later_than_it() -> None:
    clock = HybridClock(device="dev-a", wall=FakeWall(T))
    remote = format_stamp(T + 3_600_000, 7, "dev-b")  # a peer whose clock is an hour ahead
    clock.observe(remote)
    mine = clock.tick()
    assert mine > remote
    assert parse_stamp(mine) == Stamp(T + 3_600_000, 8, "dev-a")


def test_observing_an_older_stamp_changes_nothing() -> None:
    clock = HybridClock(device="dev-a", wall=FakeWall(T))
    clock.tick()
    clock.observe(parse_stamp(format_stamp(T - 5, 3, "dev-b")))
    assert clock.state == (T, 0)


def test_counter_overflow_moves_to_the_next_millisecond() -> None:
    clock = HybridClock(device="dev-a", state=(T, MAX_COUNTER - 1), wall=FakeWall(T))
    last = clock.tick()
    overflowed = clock.tick()
    assert parse_stamp(last) == Stamp(T, MAX_COUNTER, "dev-a")
    assert parse_stamp(overflowed) == Stamp(T + 1, 0, "dev-a")
    assert last < overflowed  # and still sorts after as text


def test_counter_overflow_after_observing_a_maxed_remote() -> None:
    clock = HybridClock(device="dev-a", wall=FakeWall(T))
    remote = format_stamp(T, MAX_COUNTER, "dev-b")
    clock.observe(remote)
    assert clock.tick() > remote


@pytest.mark.parametrize("stamp", [
    Stamp(0, 0, "d"),
    Stamp(T, 12345, "dev-a"),
    Stamp(9_999_999_999_999, MAX_COUNTER, "x" * 64),
    Stamp(T, 1, "appareil-é"),
])
def test_format_and_parse_round_trip(stamp: Stamp) -> None:
    text = format_stamp(stamp.wall_ms, stamp.counter, stamp.device)
    assert text == str(stamp)
    assert parse_stamp(text) == stamp


def test_stamps_sort_as_text_exactly_as_by_time_counter_device() -> None:
    stamps = [Stamp(T, 2, "a"), Stamp(T, 10, "a"), Stamp(T + 1, 0, "a"), Stamp(T, 2, "b"),
              Stamp(999, 0, "z"), Stamp(T, 2, "ab")]
    assert sorted(stamps, key=str) == sorted(stamps)


@pytest.mark.parametrize("text", [
    "",
    "1700000000000.00000",  # no device
    "1700000000000.00000@",  # empty device
    "1700000000000@dev",  # no counter
    "170000000000.00000@dev",  # wall too short: would sort wrongly
    "17000000000000.00000@dev",  # wall too long
    "1700000000000.0000@dev",  # counter too short
    "1700000000000.-0001@dev",
    "17000000000x0.00000@dev",
    "١٧٠٠٠٠٠٠٠٠٠٠٠.00000@dev",  # non-ASCII digits
    "1700000000000.00000@dev@other",
    "1700000000000.00000@" + "d" * 65,
])
def test_invalid_stamps_are_refused(text: str) -> None:
    with pytest.raises(ClockError, match="invalid clock stamp"):
        parse_stamp(text)


@pytest.mark.parametrize("value", [None, 1700000000000, b"1700000000000.00000@dev"])
def test_a_stamp_that_is_not_text_is_refused(value) -> None:
    with pytest.raises(ClockError, match="must be text"):
        parse_stamp(value)


def test_observe_refuses_an_invalid_stamp_and_keeps_its_state() -> None:
    clock = HybridClock(device="dev-a", wall=FakeWall(T))
    clock.tick()
    with pytest.raises(ClockError):
        clock.observe("9999999999999.00000")
    assert clock.state == (T, 0)
