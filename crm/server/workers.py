"""Several server processes on one listening socket (``crm server serve --workers N``).

A server process runs its Python on one core (one GIL): with 200 devices syncing at once it kept
one core of two busy while the other idled (bench/README.md). This parent binds and listens, then
forks N workers that each serve the socket with their own store connections (the kernel hands
each new connection to one of them), and supervises them:

* a worker that exits is replaced, unless five in a row exit within a second of starting (a
  server that cannot start: the parent stops the others and exits 1);
* SIGTERM or SIGINT (Ctrl-C) is passed on to every worker as SIGTERM, and it finishes its
  requests and exits; the parent exits 0 when they all have; a second signal kills them;
* a worker dies with the parent (``PR_SET_PDEATHSIG``), so a server killed outright leaves no
  process serving its port. Linux only, hence ``--workers`` above 1 is refused elsewhere.

Writes stay serialised across the workers by the database: SQLite's write lock, taken in turn
through ``engine.WriteFileLock``, or PostgreSQL's per-organisation advisory locks.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
QUICK_EXIT_S = 1.0  # a worker that exits sooner than this after it started did not start
MAX_QUICK_EXITS = 5


def run_workers(count: int, sock: socket.socket, serve: Callable[[socket.socket], None], *,
                quick_exit_s: float = QUICK_EXIT_S) -> int:
    """Fork ``count`` workers that each call ``serve(sock)``, and supervise them until told to stop.
    Returns the exit code: 0 after a stop, 1 when workers keep failing to start.

    The workers are in a process group of their own, so a terminal's Ctrl-C reaches only this
    parent, which passes SIGTERM on once (uvicorn takes a second signal as "exit now"); a second
    signal here kills them. SIGTERM and SIGINT are blocked around each fork, so none is lost
    between a worker's birth and its pid being known, nor handled by a worker as the parent."""
    parent = os.getpid()
    children: dict[int, float] = {}  # pid -> when it started
    signals = {signal.SIGTERM, signal.SIGINT}
    stops: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stops.append(signum)
        for pid in list(children):
            _signal(pid, signal.SIGTERM if len(stops) == 1 else signal.SIGKILL)

    def start() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            if stops:
                return
            pid = os.fork()
            if pid == 0:  # the worker
                code = 1
                try:
                    os.setpgid(0, 0)
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                    _die_with(parent)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
                    serve(sock)
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
                except KeyboardInterrupt:  # a SIGINT sent to the worker itself: a stop
                    code = 0
                except BaseException:  # noqa: BLE001 - a worker reports and exits; the parent replaces it
                    traceback.print_exc()
                finally:
                    os._exit(code)
            children[pid] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)

    previous = {sig: signal.signal(sig, stop) for sig in signals}
    quick_exits = 0
    failed = False
    try:
        for _ in range(count):
            start()
        while children:
            try:
                pid, _status = os.wait()
            except ChildProcessError:
                break
            started = children.pop(pid, None)
            if started is None or stops:
                continue
            quick_exits = quick_exits + 1 if time.monotonic() - started < quick_exit_s else 0
            if quick_exits >= MAX_QUICK_EXITS:
                print(f"crm server: {quick_exits} workers in a row exited as they started; stopping",
                      file=sys.stderr)
                failed = True
                stop(signal.SIGTERM, None)
                continue
            start()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _die_with(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies; exit now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)
