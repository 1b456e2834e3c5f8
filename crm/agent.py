"""The background sync agent: syncs soon after every local write, backs off while the server is
unreachable, and catches up by itself when the network returns.

One agent per home, enforced by an exclusive lock on ``agent.pid`` (a lock dies with its
process, so a force-quit never leaves a stale "running" agent). Its state is written
atomically to ``agent.json`` for ``crm status``.

``crm agent start`` runs it as its own process, ``python -m crm.agent --home DIR``: the engine
alone, so a background process neither pays for nor depends on the command line.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (
    AuthRefusedError,
    CrmError,
    NotConfiguredError,
    ServerError,
    ServerUnreachableError,
    StateError,
    StoreLockedError,
)

__all__ = ["Backoff", "agent_pid", "ensure_running", "main", "read_state", "run", "start_detached",
           "stop_detached"]

PID_FILE = "agent.pid"
STATE_FILE = "agent.json"
LOG_FILE = "agent.log"


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter (AWS architecture blog's recommendation)."""

    base: float = 0.5
    cap: float = 8.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt += 1
        return max(0.05, self.rng.uniform(ceiling / 2, ceiling))

    def reset(self) -> None:
        self.attempt = 0


def _private(path: Path, flags: int) -> int:
    """Open (creating) a file only its owner can read or write: 0600 whatever the umask, and an
    older, laxer file is tightened."""
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        with os.fdopen(_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, sort_keys=True))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class _PidLock:
    def __init__(self, home: Path) -> None:
        self.path = Path(home) / PID_FILE
        self.fd: int | None = None

    def acquire(self) -> bool:
        fd = _private(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        os.fsync(fd)
        self.fd = fd
        return True


def agent_pid(home: Path) -> int | None:
    """The running agent's pid, or None: the pid file's lock, not its contents, says whether."""
    path = Path(home) / PID_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def read_state(home: Path) -> dict[str, Any]:
    pid = agent_pid(home)
    state: dict[str, Any] = {}
    try:
        state = json.loads((Path(home) / STATE_FILE).read_text())
    except (OSError, ValueError):
        pass
    if pid is None:
        return {"running": False, "state": "stopped",
                **{k: v for k, v in state.items() if k in ("last_sync", "last_error", "rejected", "last_rejection")}}
    return {**state, "running": True, "pid": pid}


def run(home: Path, *, stop: threading.Event | None = None,
        on_state: Callable[[dict[str, Any]], None] | None = None) -> int:
    """The sync loop, in the foreground, until SIGTERM/SIGINT or ``stop`` is set."""
    from .device import Device
    from .sync import client_for, sync_once

    home = Path(home)
    lock = _PidLock(home)
    if not lock.acquire():
        raise StateError(f"a sync agent is already running for {home} (pid {agent_pid(home)})")
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    poll = _env_float("CRM_AGENT_POLL_S", 0.2)
    idle = _env_float("CRM_AGENT_IDLE_PULL_S", 3.0)
    backoff = Backoff(cap=_env_float("CRM_AGENT_MAX_BACKOFF_S", 8.0))
    timeout = _env_float("CRM_SYNC_TIMEOUT_S", 30.0)
    info: dict[str, Any] = {"pid": os.getpid(), "state": "starting", "last_sync": None, "last_error": None}

    def publish(**changes: Any) -> None:
        info.update(changes, updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        try:
            _write_json_atomic(home / STATE_FILE, info)
        except OSError:  # e.g. a full disk: the state file only informs `crm status`; keep syncing
            pass
        if on_state:
            on_state(dict(info))

    device = Device.open(home)
    client = None
    client_key = None
    seen_version = None
    next_sync = 0.0
    publish()
    try:
        while not stop.is_set():
            version = device.data_version()
            local_change = seen_version is not None and version != seen_version
            seen_version = version
            now = time.monotonic()
            if now >= next_sync or (local_change and info["state"] == "synced"):
                key = device.credentials()
                try:
                    if client is None or key != client_key:
                        if client is not None:
                            client.close()
                        client, client_key = client_for(device, timeout=timeout), key
                    result = sync_once(device, client=client)
                    backoff.reset()
                    now_text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    if result.rejected:  # kept until a later sync rejects more: it keeps syncing
                        info["last_rejection"] = {
                            "at": now_text, "count": result.rejected,
                            "message": f"the server rejected {result.rejected} change(s); see "
                                       "`crm outbox --rejected`"}
                    publish(state="synced", last_sync=now_text, last_error=None, last_result=result.to_json(),
                            rejected=device.outbox(rejected=True, limit=0)["rejected"])
                    device.catch_up_index()  # a bulk pull's records, indexed here, not in the rep's next command
                    next_sync = time.monotonic() + idle
                except (ServerUnreachableError, ServerError, StoreLockedError) as exc:
                    if client is not None and not isinstance(exc, StoreLockedError):
                        # A connection the server or the network dropped may still look open
                        # (its close can lag behind a slow link): the next attempt starts afresh.
                        client.close()
                        client = None
                    delay = backoff.next_delay()
                    publish(state="offline" if isinstance(exc, ServerUnreachableError) else "retrying",
                            last_error=exc.message, retry_in_s=round(delay, 2))
                    next_sync = time.monotonic() + delay
                except (AuthRefusedError, NotConfiguredError) as exc:
                    publish(state="auth_refused" if isinstance(exc, AuthRefusedError) else "not_configured",
                            last_error=exc.message, retry_in_s=backoff.cap)
                    next_sync = time.monotonic() + backoff.cap
                except CrmError as exc:
                    delay = backoff.next_delay()
                    publish(state="error", last_error=exc.message, retry_in_s=round(delay, 2))
                    next_sync = time.monotonic() + delay
                seen_version = device.data_version()
            stop.wait(poll)
    finally:
        publish(state="stopped")
        if client is not None:
            client.close()
        device.close()
        os.close(lock.fd)  # lets go of the lock: the agent no longer runs
    return 0


def start_detached(home: Path, *, wait: bool = True) -> int:
    """Start the agent (``python -m crm.agent``) in its own session; returns its pid once it holds
    the lock (or at once with ``wait=False``)."""
    home = Path(home)
    running = agent_pid(home)
    if running:
        return running
    log = os.fdopen(_private(home / LOG_FILE, os.O_WRONLY | os.O_APPEND), "ab")
    proc = subprocess.Popen([sys.executable, "-m", "crm.agent", "--home", str(home)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                            close_fds=True)
    log.close()
    if not wait:
        return proc.pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pid = agent_pid(home)
        if pid:
            return pid
        if proc.poll() is not None:
            raise StateError(f"the sync agent exited at once (code {proc.returncode}); see {home / LOG_FILE}")
        time.sleep(0.02)
    raise StateError(f"the sync agent did not start within 10 s; see {home / LOG_FILE}")


def stop_detached(home: Path, *, timeout: float = 10.0) -> bool:
    """SIGTERM the agent and wait for it to let go of its lock; SIGKILL after ``timeout``."""
    pid = agent_pid(Path(home))
    if not pid or pid < 0:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent_pid(Path(home)) is None:
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def ensure_running(home: Path) -> int | None:
    """Restart background sync on reopen when the rep has it switched on (``autosync``)."""
    home = Path(home)
    if agent_pid(home):
        return None
    return start_detached(home, wait=False)


def main(argv: list[str] | None = None) -> int:
    """``python -m crm.agent --home DIR``: ``run`` until SIGTERM; a failure is one line on stderr
    (the agent's log) and its exit code (docs/exit-codes.md)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m crm.agent", description="The background sync agent.")
    parser.add_argument("--home", type=Path, default=os.environ.get("CRM_HOME") or None,
                        help="the directory holding the store (default: $CRM_HOME)")
    args = parser.parse_args(argv)
    if args.home is None:
        parser.error("give --home DIR (or set CRM_HOME)")
    try:
        return run(args.home)
    except CrmError as exc:
        sys.stderr.write(f"crm agent: {exc.message}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
