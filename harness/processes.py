"""Child processes the harness can always clean up, and kill for real.

Every child starts in its own session, so it leads a process group that also holds whatever it
spawns; a force-quit is ``SIGKILL`` to that whole group, like a phone OS killing an app. Output
goes to files, not pipes: a client that leaves a daemon holding its stdout can never block us.
Every group started here is tracked and killed at interpreter exit if still alive.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO


class ProcessError(RuntimeError):
    """A child that could not be started, or a long-running one that never became ready."""


@dataclass(frozen=True)
class Completed:
    """How a command ended. ``returncode`` is None when the harness killed it (timeout or on purpose)."""

    argv: list[str]
    pid: int
    returncode: int | None
    stdout: str
    stderr: str
    duration: float
    killed: bool = False
    timed_out: bool = False

    @property
    def detail(self) -> str:
        if self.timed_out:
            return f"timed out after {self.duration:.1f}s and was killed (SIGKILL to its process group)"
        if self.killed:
            return f"killed with SIGKILL after {self.duration:.2f}s"
        if self.returncode is not None and self.returncode < 0:
            return f"died from signal {signal.Signals(-self.returncode).name}"
        return f"exit {self.returncode}"


# Process groups started by this module and not yet known to be gone: pgid -> argv.
_tracked: dict[int, list[str]] = {}
_tracked_lock = threading.Lock()


def _track(pgid: int, argv: list[str]) -> None:
    with _tracked_lock:
        _tracked[pgid] = argv


def track(pid: int, label: str = "adopted") -> None:
    """Adopt a process the harness did not start (a client's background daemon) for exit cleanup."""
    _track(pid, [label])


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, waiting to be reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    if not Path("/proc").is_dir():  # no procfs (macOS): ask ps
        out = subprocess.run(["ps", "-A", "-o", "pid=,pgid=,stat="], capture_output=True, text=True).stdout
        for line in out.splitlines():
            pid, group, stat = line.split()[:3]
            if int(group) == pgid and not stat.startswith("Z"):
                members.append(int(pid))
    return members


def signal_group(pgid: int, sig: int = signal.SIGKILL) -> bool:
    """Send ``sig`` to every process in the group; False when the group is already gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def kill_tree(pid: int) -> bool:
    """SIGKILL ``pid`` and, when it leads a process group, everything in that group.

    False when ``pid`` is already gone (a zombie counts as gone).
    """
    if not alive(pid):
        return False
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False
    if pgid == pid:
        return signal_group(pgid)
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def leftovers() -> dict[int, list[int]]:
    """Tracked groups that still have live members: pgid -> pids. Empty after a clean test."""
    with _tracked_lock:
        groups = dict(_tracked)
    found = {}
    for pgid in groups:
        members = set(group_members(pgid)) | ({pgid} if alive(pgid) else set())
        if members:
            found[pgid] = sorted(members)
        else:
            with _tracked_lock:
                _tracked.pop(pgid, None)
    return found


def kill_all() -> None:
    """SIGKILL every tracked group (atexit hook; also handy at the end of a scenario)."""
    with _tracked_lock:
        groups = list(_tracked)
        _tracked.clear()
    for pgid in groups:
        kill_tree(pgid) or signal_group(pgid)


atexit.register(kill_all)


class Child:
    """One started command: its own session and process group, output captured to files."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, stdout: str | Path | None = None,
                 stderr: str | Path | None = None) -> None:
        self.argv = [str(a) for a in argv]
        self._paths = (stdout, stderr)
        out, err = (tempfile.TemporaryFile() if p is None else open(p, "ab") for p in self._paths)
        self.started = time.monotonic()
        try:
            self.popen = subprocess.Popen(
                self.argv, env=None if env is None else dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True,
            )
        except OSError as exc:
            out.close()
            err.close()
            raise ProcessError(f"cannot start {self.argv[0]!r}: {exc.strerror or exc}") from exc
        finally:  # the child has its own copies; we keep only the temp files we must read back
            for handle, path in ((out, stdout), (err, stderr)):
                if path is not None:
                    handle.close()
        self._out, self._err = out, err
        self.pid = self.popen.pid
        _track(self.pid, self.argv)
        self._killed = False
        self._result: Completed | None = None

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def finished_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the leader to exit, without killing it."""
        try:
            self.popen.wait(max(0.0, seconds))
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        """Force-quit: SIGKILL the whole process group, then reap the leader."""
        if self.running:
            self._killed = True
        signal_group(self.pid, signal.SIGKILL)
        self.popen.wait()

    def terminate(self, grace: float = 5.0) -> None:
        """SIGTERM the group; SIGKILL it if the leader is still there after ``grace`` seconds."""
        if not self.running:
            signal_group(self.pid, signal.SIGKILL)  # stragglers of an exited leader
            return
        signal_group(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()
        signal_group(self.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> Completed:
        """Wait for the leader; past ``timeout`` seconds kill the group and report ``timed_out``."""
        timed_out = False
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
        return self._finish(timed_out=timed_out)

    def _finish(self, *, timed_out: bool = False) -> Completed:
        if self._result is None:
            duration = time.monotonic() - self.started
            killed = self._killed or timed_out
            self._result = Completed(
                argv=self.argv, pid=self.pid, returncode=None if killed else self.popen.returncode,
                stdout=_read(self._out, self._paths[0]), stderr=_read(self._err, self._paths[1]),
                duration=duration, killed=killed, timed_out=timed_out,
            )
            if not group_members(self.pid):
                with _tracked_lock:
                    _tracked.pop(self.pid, None)
        return self._result


def _read(handle: IO[bytes], path: str | Path | None) -> str:
    if path is not None:
        return Path(path).read_bytes().decode("utf-8", errors="replace")
    with handle:
        handle.seek(0)
        return handle.read().decode("utf-8", errors="replace")


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
        timeout: float | None = None) -> Completed:
    """Run a command to completion; past ``timeout`` its group is SIGKILLed (``timed_out``)."""
    return Child(argv, env=env, cwd=cwd).wait(timeout)


def run_and_kill(argv: Sequence[str], delay: float, *, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None) -> Completed:
    """Run a command and SIGKILL its group ``delay`` seconds in, if it has not finished by then.

    ``killed`` tells which happened; the caller picks the (seeded random) delay.
    """
    child = Child(argv, env=env, cwd=cwd)
    if not child.finished_within(delay):
        child.kill()
    return child.wait()


def wait_for_200(url: str, timeout: float, *, interval: float,
                 stop: Callable[[], str | None] = lambda: None) -> str | None:
    """GET ``url`` (never through HTTP_PROXY) until it answers 200: None then; after ``timeout``
    seconds, the last answer seen. ``stop()`` returning a reason ends the wait with ProcessError."""
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    last = "no answer yet"
    while True:
        reason = stop()
        if reason is not None:
            raise ProcessError(reason)
        try:
            with opener.open(url, timeout=min(1.0, timeout)) as response:
                if response.status == 200:
                    return None
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            return last
        time.sleep(interval)


class ManagedProcess:
    """A long-running child (a server, an agent) with a readiness check and guaranteed cleanup.

    Use as a context manager; whatever happens, leaving it stops the whole process group.
    stdout and stderr go to ``<log_dir>/<name>.out`` / ``.err`` so they survive for reports.
    """

    def __init__(self, argv: Sequence[str], *, name: str = "process", env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, log_dir: str | Path | None = None) -> None:
        self.argv = [str(a) for a in argv]
        self.name = name
        self.env = env
        self.cwd = cwd
        self.log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix=f"{name}-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.child: Child | None = None

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.name}.out"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}.err"

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child else None

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.running

    @property
    def returncode(self) -> int | None:
        return self.child.popen.poll() if self.child else None

    def start(self, ready_url: str | None = None, ready_timeout: float = 30.0) -> ManagedProcess:
        if self.running:
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self.child = Child(self.argv, env=self.env, cwd=self.cwd, stdout=self.stdout_path,
                           stderr=self.stderr_path)
        if ready_url is not None:
            try:
                self.wait_ready(ready_url, ready_timeout)
            except BaseException:
                self.kill()
                raise
        return self

    def wait_ready(self, url: str, timeout: float = 30.0) -> None:
        """Poll ``url`` with GET until it answers 200; fail early if the process dies first."""
        def dead() -> str | None:
            if self.running:
                return None
            return (f"{self.name} exited with code {self.returncode} before {url} answered; "
                    f"stderr ends with:\n{self.log_tail()}")

        last = wait_for_200(url, timeout, interval=0.05, stop=dead)
        if last is not None:
            raise ProcessError(f"{self.name} did not answer 200 at {url} within {timeout:g}s "
                               f"(last: {last}); stderr ends with:\n{self.log_tail()}")

    def stop(self, grace: float = 5.0) -> int | None:
        """Graceful stop: SIGTERM the group, SIGKILL after ``grace`` seconds. Returns the exit code."""
        if self.child is not None:
            self.child.terminate(grace)
            return self.child.popen.returncode
        return None

    def kill(self) -> None:
        """Crash: SIGKILL the whole group at once."""
        if self.child is not None:
            self.child.kill()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ManagedProcess:
        if self.child is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Every process a device starts carries this variable; children inherit it even when they
# detach into a session of their own (a background sync daemon), so a force-quit can find them.
MARKER_ENV = "CONFORMANCE_DEVICE_TAG"


def marked(marker: str) -> list[int]:
    """Pids of live processes whose environment holds ``MARKER_ENV=marker``."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def kill_marked(marker: str) -> list[int]:
    """SIGKILL every process carrying ``marker``: force-quit of everything a device started."""
    killed = []
    for pid in marked(marker):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed
