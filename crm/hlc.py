"""Hybrid logical clock: stamps that order causally even when wall clocks disagree.

A stamp is the text ``WWWWWWWWWWWWW.CCCCC@DEVICE`` (wall milliseconds, logical counter,
device id). Comparing two stamps as strings orders them by (time, counter, device), which is
exactly the last-writer-wins order with the device id as the explicit tie-break.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import NamedTuple

_WALL_DIGITS = 13
_COUNTER_DIGITS = 5
MAX_COUNTER = 10**_COUNTER_DIGITS - 1
# How far ahead of the server's clock a stamp may be (docs/sync-protocol.md, "Clocks"). The server
# refuses an op stamped further ahead (code ``clock_ahead``); the device then re-stamps it. A stamp
# ahead wins last-writer-wins against edits made later, so this bounds how long it can.
MAX_AHEAD_MS = 10 * 60 * 1000
# No clock is this far off: a stamp more than a year ahead breaks the protocol (the whole batch is
# refused, still with code ``clock_ahead``, so an honest device re-stamps and sends it again).
MAX_DRIFT_MS = 366 * 24 * 3600 * 1000
# A device stamps at most this far ahead of its estimate of the server's clock: the margin for the
# error of that estimate, well inside MAX_AHEAD_MS so an honest device is never refused.
DEVICE_LEAD_MS = 1000


class ClockError(ValueError):
    pass


class Stamp(NamedTuple):  # not a dataclass: @dataclass costs start-up
    wall_ms: int
    counter: int
    device: str

    def __str__(self) -> str:
        return f"{self.wall_ms:0{_WALL_DIGITS}d}.{self.counter:0{_COUNTER_DIGITS}d}@{self.device}"


def format_stamp(wall_ms: int, counter: int, device: str) -> str:
    return f"{wall_ms:0{_WALL_DIGITS}d}.{counter:0{_COUNTER_DIGITS}d}@{device}"


def parse_stamp(text: str) -> Stamp:
    """Parse a stamp, refusing anything that would not sort correctly as text."""
    if not isinstance(text, str):
        raise ClockError(f"clock stamp must be text, got {type(text).__name__}")
    head, sep, device = text.partition("@")
    wall, dot, counter = head.partition(".")
    if (
        not sep
        or not dot
        or not device
        or len(wall) != _WALL_DIGITS
        or len(counter) != _COUNTER_DIGITS
        or not wall.isdigit()
        or not counter.isdigit()
        or not wall.isascii()
        or not counter.isascii()
        or len(device) > 64
        or "@" in device
    ):
        raise ClockError(f"invalid clock stamp {text!r}")
    return Stamp(int(wall), int(counter), device)


def server_now_ms() -> int:
    """The server's clock: the machine's. CRM_CLOCK_SKEW_MS never moves it."""
    return time.time_ns() // 1_000_000


def now_ms() -> int:
    """The device's wall clock: the machine's, moved by CRM_CLOCK_SKEW_MS (milliseconds, read at
    every call) to test a device whose clock is wrong (docs/sync-protocol.md, "Clocks")."""
    skew = os.environ.get("CRM_CLOCK_SKEW_MS")
    try:
        return time.time_ns() // 1_000_000 + (int(skew) if skew else 0)
    except ValueError:
        return time.time_ns() // 1_000_000


# -- the pure rules (docs/merge-rules.md, "When a clock was wrong"; tests/test_clock_rules.py) ------
State = tuple[int, int]  # (wall ms, counter) of the last stamp a clock issued or observed


class ServerTime(NamedTuple):
    """What a device learnt of the server's clock: ``server_ms`` read when its wall clock said
    ``wall_ms`` (the middle of the request that brought it)."""

    server_ms: int
    wall_ms: int

    def estimate(self, wall: int) -> int:
        """The server's clock now, when the device's wall clock says ``wall``.

        While the wall clock runs on from the moment it was learnt, the offset holds. A wall clock
        that stepped back was set (corrected, or set wrong): the offset says nothing any more, so
        trust the wall clock, never below the server time already known."""
        if wall >= self.wall_ms:
            return wall + self.server_ms - self.wall_ms
        return max(self.server_ms, wall)

    def __str__(self) -> str:
        return f"{self.server_ms} {self.wall_ms}"

    @classmethod
    def parse(cls, text: str | None) -> ServerTime | None:
        """The stored form (``str``) back; None for nothing or anything unreadable."""
        found = re.fullmatch(r"([0-9]{1,15}) (-?[0-9]{1,15})", text or "")
        return cls(int(found[1]), int(found[2])) if found else None


def physical_ms(wall: int, server: ServerTime | None) -> int:
    """The physical part of a device's next stamp: its wall clock, but never more than
    DEVICE_LEAD_MS ahead of its estimate of the server's clock. A wall clock behind is used as it
    is (the logical counter keeps stamps going forward); without a server time, the wall clock."""
    if server is None:
        return wall
    return min(wall, server.estimate(wall) + DEVICE_LEAD_MS)


def advance(state: State, physical: int) -> State:
    """The tick rule: the state of the next stamp, after ``state``, at ``physical`` if that is later."""
    last_wall, last_counter = state
    if physical > last_wall:
        return (physical, 0)
    if last_counter >= MAX_COUNTER:  # the logical time ran out in this millisecond: borrow the next
        return (last_wall + 1, 0)
    return (last_wall, last_counter + 1)


def restamp(old: list[str], *, floor: State, physical: int, device: str) -> dict[str, str]:
    """New stamps for this device's stamps ``old``, which the server refused as too far ahead.

    ``floor`` is the newest stamp the device knows apart from ``old``. The new stamps come after
    it, at ``physical`` when that is later, in the order of the old ones; since every old stamp is
    after ``floor`` too, replacing each by its new stamp keeps the order of every stamp the device
    knows, so merge state (winners, losers, superseded versions) is unchanged by the renaming, and
    an op still comes after every version it was built on."""
    state = floor
    renamed: dict[str, str] = {}
    for stamp in sorted(old):
        state = advance(state, physical)
        renamed[stamp] = format_stamp(state[0], state[1], device)
    return renamed


class HybridClock:
    """One device's clock. ``state`` is (wall_ms, counter) of the last stamp issued or seen.

    The caller persists ``state`` in the same transaction as the change that used the stamp, so a
    crash can never make the clock issue a stamp it already issued. With ``server`` (what the
    device last learnt of the server's clock) the wall clock it reads is capped DEVICE_LEAD_MS ahead
    of its estimate of the server's clock; a stamp is further ahead only to come after one already
    issued or pulled (a pulled stamp is at most MAX_AHEAD_MS ahead; one issued after a wall clock
    jumped is re-stamped when the server refuses it, ``Device.restamp``).
    """

    def __init__(self, *, device: str, state: State = (0, 0),
                 wall: Callable[[], int] = now_ms, server: ServerTime | None = None) -> None:
        self.device = device
        self.state = state
        self.server = server
        self._wall = wall

    def tick(self) -> str:
        """A new stamp for a local event, greater than every stamp issued or observed before."""
        self.state = advance(self.state, physical_ms(self._wall(), self.server))
        return format_stamp(self.state[0], self.state[1], self.device)

    def observe(self, stamp: str | Stamp) -> None:
        """Advance past a stamp seen from another replica (a pulled change)."""
        remote = parse_stamp(stamp) if isinstance(stamp, str) else stamp
        if (remote.wall_ms, remote.counter) > self.state:
            self.state = (remote.wall_ms, remote.counter)
