"""Hybrid logical clock: stamps that order causally even when wall clocks disagree.

A stamp is the text ``WWWWWWWWWWWWW.CCCCC@DEVICE`` (wall milliseconds, logical counter,
device id). Comparing two stamps as strings orders them by (time, counter, device), which is
exactly the last-writer-wins order with the device id as the explicit tie-break.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

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


class ClockError(ValueError):
    pass


@dataclass(frozen=True, order=True)
class Stamp:
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


class HybridClock:
    """One device's clock. ``state`` is (wall_ms, counter) of the last stamp issued or seen.

    The caller persists ``state`` in the same transaction as the change that used the stamp, so a
    crash can never make the clock issue a stamp it already issued.
    """

    def __init__(self, *, device: str, state: tuple[int, int] = (0, 0),
                 wall: Callable[[], int] = now_ms) -> None:
        self.device = device
        self.state = state
        self._wall = wall

    def tick(self) -> str:
        """A new stamp for a local event, greater than every stamp issued or observed before."""
        last_wall, last_counter = self.state
        wall = self._wall()
        if wall > last_wall:
            self.state = (wall, 0)
        else:  # the wall clock stood still or went backwards: stay on the logical time
            if last_counter >= MAX_COUNTER:
                self.state = (last_wall + 1, 0)
            else:
                self.state = (last_wall, last_counter + 1)
        return format_stamp(self.state[0], self.state[1], self.device)

    def observe(self, stamp: str | Stamp) -> None:
        """Advance past a stamp seen from another replica (a pulled change)."""
        remote = parse_stamp(stamp) if isinstance(stamp, str) else stamp
        if (remote.wall_ms, remote.counter) > self.state:
            self.state = (remote.wall_ms, remote.counter)
