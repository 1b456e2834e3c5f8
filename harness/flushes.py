"""Force-quits aimed at a flush to disk, black-box: a command run under strace dies as it asks for
its K-th fsync or fdatasync.

A kill by the clock lands in a command's start-up far more often than in the instant between two
of its commits, so a save made of two transactions (the record, then its queued op) or a pull that
stores its cursor before its page passes every seeded kill (docs/coverage.md, "What the harness
still cannot see"). Under ``strace -e inject=fsync,fdatasync:signal=KILL:when=K`` the process is
killed on its K-th flush, after every write before it (a SIGKILL keeps what the kernel already
holds); K = 1, 2, ... until a run ends by itself hits each step between two durable points once,
whatever the machine's speed. Linux and strace only (scripts/ensure-strace.sh installs it).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence

__all__ = ["MAX_FLUSHES", "aimed", "killed", "unavailable"]

# A command still killed at this many flushes is taken to flush without end: a failure of its own.
MAX_FLUSHES = 40


@functools.cache
def unavailable() -> str | None:
    """Why kills cannot be aimed at flushes here (no strace, or ptrace refused), or None."""
    strace = shutil.which("strace")
    if strace is None:
        return "strace is not installed (scripts/ensure-strace.sh installs it)"
    try:
        probe = subprocess.run([strace, "-f", "-qq", "-o", os.devnull, "true"], capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"strace cannot run here: {exc}"
    return None if probe.returncode == 0 else f"strace cannot trace here: {probe.stderr.strip()[:200]}"


def aimed(argv: Sequence[str], k: int) -> list[str]:
    """``argv`` run so that it is SIGKILLed as it asks for its ``k``-th fsync or fdatasync (any of
    its processes: ``-f``); strace then exits by the same signal (``killed``)."""
    if k < 1:
        raise ValueError("flushes are counted from 1")
    return [shutil.which("strace") or "strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=fsync,fdatasync",
            "-e", f"inject=fsync,fdatasync:signal=KILL:when={k}", *argv]


def killed(returncode: int | None) -> bool:
    """Whether an ``aimed`` command died at the flush it was aimed at (not ran to its end)."""
    return returncode == -signal.SIGKILL
