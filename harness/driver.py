"""Running a SUT through its profile: one device's actions, and the SUT's server.

Every command's result is read the way the contract says: the exit code decides ok (saved),
fail (definitely not saved) or unknown (anything else, including a timeout or a kill), and
stdout is the action's JSON. Each action is reported to an optional ``record(event)`` callback
(a ``History``) as an ``invoke`` event and then its outcome, so checkers can judge the run later.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import flushes, processes
from .ports import HOST, free_port
from .processes import Child, ManagedProcess, ProcessError
from .profile import MissingAction, Profile, Template, device_values, server_values

EXPORT_FORMAT = "crm-export/1"

Record = Callable[[dict[str, Any]], Any]

# Devices may run in threads; one lock keeps their events in one well-ordered sequence.
_RECORD_LOCK = threading.Lock()


class DriverError(RuntimeError):
    """A step the run cannot go on without (device init, provisioning, server start, export) failed."""


@dataclass(frozen=True)
class ActionResult:
    action: str
    args: dict[str, Any]
    exit: int | None  # None: killed, timed out or never started
    stdout: str
    stderr: str
    json: Any  # the parsed stdout, or None when it was not JSON
    outcome: str  # ok | fail | unknown
    duration: float
    detail: str = ""
    pid: int | None = None  # the command's pid, which also names its process group
    killed_at_flush: int | None = None  # force-quit by the harness as it asked for this flush to disk

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def parse_json(stdout: str) -> tuple[Any, str]:
    """stdout as JSON, tolerating log lines before a final one-line JSON document."""
    text = stdout.strip()
    if not text:
        return None, "stdout is empty"
    try:
        return json.loads(text), ""
    except json.JSONDecodeError as exc:
        last = text.splitlines()[-1]
        try:
            return json.loads(last), ""
        except json.JSONDecodeError:
            return None, f"stdout is not JSON ({exc.msg} at line {exc.lineno})"


def _seq(recorded: Any) -> int | None:
    """The seq of a recorded event, whether the callback returned an Event, an int or nothing."""
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        return recorded
    seq = getattr(recorded, "seq", None)
    return seq if isinstance(seq, int) else None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class _Runner:
    """Runs profile templates for one participant (a device or the server) and records them."""

    def __init__(self, profile: Profile, participant: str, context: dict[str, Any],
                 record: Record | None, env: dict[str, str] | None = None) -> None:
        self.profile = profile
        self.env = env if env is not None else {}  # per-participant additions, e.g. a clock offset
        self.participant = participant
        self.context = context
        self.record = record
        self._running: set[Child] = set()
        self._lock = threading.Lock()

    def _emit(self, **event: Any) -> Any:
        if self.record is None:
            return None
        with _RECORD_LOCK:
            return self.record({"device": self.participant, **event})

    def execute(self, action: str, template: Template, args: dict[str, Any], *, timeout: float | None = None,
                kill_after: float | None = None, on_kill: Callable[[], None] | None = None,
                at_flush: int | None = None) -> ActionResult:
        argv = self.profile.command(template, **{**self.context, **args})
        if at_flush is not None:  # killed as it asks for its at_flush-th flush to disk (harness.flushes)
            argv = flushes.aimed(argv, at_flush)
        timeout = self.profile.action_timeout_s if timeout is None else timeout
        ref = _seq(self._emit(type="invoke", action=action, args=args))
        try:
            child = Child(argv, env={**self.profile.environ(), **self.env})
        except ProcessError as exc:  # it never ran, so it saved nothing
            result = ActionResult(action, args, None, "", "", None, "fail", 0.0, str(exc))
            self._emit(type="fail", action=action, args=args, ref=ref, detail=result.detail)
            return result
        with self._lock:
            self._running.add(child)
        try:
            if kill_after is not None and kill_after < timeout:
                if not child.finished_within(kill_after):
                    (on_kill or child.kill)()
                done = child.wait(timeout - kill_after)
            else:
                done = child.wait(timeout)
        finally:
            with self._lock:
                self._running.discard(child)
        flush_killed = at_flush is not None and flushes.killed(done.returncode)
        exit_code = None if flush_killed else done.returncode  # a force-quit: no exit of its own, as for kill_after
        if flush_killed:  # the app died with it: nothing of its group lives on. Recorded as a force-quit
            # (a ``fault`` kill) before the action's unknown outcome, as Driver.force_quit records its own.
            self._emit(type="fault", action="kill", detail=f"SIGKILL at flush to disk {at_flush} during {action}")
            processes.signal_group(child.pid, signal.SIGKILL)
        outcome = self.profile.exit_codes.classify(exit_code)
        parsed, problem = parse_json(done.stdout)
        detail = f"{done.detail} in {done.duration:.2f}s" if not done.killed else done.detail
        if flush_killed:
            detail = f"force-quit as it asked for its flush to disk number {at_flush}"
        if outcome != "ok" and _last_line(done.stderr):
            detail += f"; stderr: {_last_line(done.stderr)}"
        if problem and outcome == "ok":
            detail += f"; {problem}"
        self._emit(type=outcome, action=action, args=args, result=parsed, exit=exit_code, ref=ref,
                   detail=detail)
        return ActionResult(action, args, exit_code, done.stdout, done.stderr, parsed, outcome,
                            done.duration, detail, child.pid, at_flush if flush_killed else None)

    def kill_running(self) -> list[int]:
        with self._lock:
            running = list(self._running)
        for child in running:
            child.kill()
        return [child.pid for child in running]


class Driver:
    """One device of the SUT: its home directory, its server URL (a Toxiproxy proxy), its actions.

    ``record`` receives every event as a dict without ``seq``/``t``; if it returns the recorded
    event (or its seq), completions refer to their invoke by ``ref``.
    """

    def __init__(self, profile: Profile, *, device: str, home: str | Path, server_url: str, rep: str,
                 token: str, org: str | None = None, record: Record | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.profile = profile
        self.device = device
        self.home = Path(home)
        self.server_url, self.token = server_url, token
        self._runner = _Runner(profile, device, device_values(home=self.home, server_url=server_url, rep=rep,
                                                              org=org, token=token), record, env)
        self.env = self._runner.env  # mutable: a scenario may set a clock offset later
        self._background: set[int] = set()  # pids the SUT reported for its background sync
        self._background_groups: set[int] = set()  # process groups of start_background_sync calls

    def init(self) -> ActionResult:
        """Create the device's store (``device.init``); the run cannot go on if this fails."""
        self.home.mkdir(parents=True, exist_ok=True)
        result = self._runner.execute("init", self.profile.device_init, {})
        if not result.ok:
            raise DriverError(f"device {self.device}: init failed ({result.detail})")
        return result

    def has(self, action: str) -> bool:
        return self.profile.has(action)

    def command(self, action: str | Template, **args: Any) -> list[str]:
        """The argv of an action (or another template) for this device, without running it."""
        return self.profile.command(action, **{**self._runner.context, **args})

    def invoke(self, action: str, *, timeout: float | None = None, kill_after: float | None = None,
               at_flush: int | None = None, **args: Any) -> ActionResult:
        """Run one contract action. ``kill_after`` seconds in, if it still runs, force-quit the device;
        with ``at_flush`` K, force-quit it as it asks for its K-th flush to disk (harness.flushes).

        Raises MissingAction when the profile lacks an optional action the caller needs.
        """
        template = self.profile.action(action)
        result = self._runner.execute(action, template, args, timeout=timeout, kill_after=kill_after,
                                      on_kill=lambda: self.force_quit(f"during {action}"), at_flush=at_flush)
        if action == "start_background_sync" and result.ok:
            pid = result.json.get("pid") if isinstance(result.json, dict) else None
            if isinstance(pid, int) and pid > 0:
                self._background.add(pid)
                processes.track(pid, f"{self.device} background sync")
            if result.pid and processes.group_members(result.pid):  # a daemon left in the command's group
                self._background_groups.add(result.pid)
        elif action == "stop_background_sync" and result.ok:
            self._background = {pid for pid in self._background if processes.alive(pid)}
        return result

    def pending(self) -> int:
        """How many changes wait in the device's outbox (``outbox`` must print {"pending": N})."""
        result = self.invoke("outbox")
        pending = result.json.get("pending") if isinstance(result.json, dict) else None
        if not result.ok or not isinstance(pending, int):
            raise DriverError(f"device {self.device}: outbox did not report {{\"pending\": N}} ({result.detail})")
        return pending

    def export(self) -> dict[str, Any]:
        """The device's canonical export, recorded as an ``export`` event for the checkers."""
        return _export(self._runner, self.profile.action("export"), {}, f"device {self.device}")

    def probe(self, target: str) -> dict[str, Any]:
        """The device's export now, recorded as a ``probe`` event naming ``target``: whether the
        device held the record a write it just refused was aimed at (checkers.refused)."""
        return _export(self._runner, self.profile.action("export"), {"target": target}, f"device {self.device}",
                       kind="probe")

    def force_quit(self, reason: str = "") -> list[int]:
        """SIGKILL the device's running commands and its background sync, like an OS killing the app.

        Recorded as a ``fault`` event ``kill`` before the kill, so it precedes the killed actions'
        ``unknown`` outcomes in the history. Returns the pids that were signalled.
        """
        self._runner._emit(type="fault", action="kill", detail=f"SIGKILL {reason}".strip())
        killed = self._runner.kill_running()
        for pid in self._background:
            if processes.kill_tree(pid):
                killed.append(pid)
        for pgid in self._background_groups:
            if processes.signal_group(pgid):
                killed.append(pgid)
        self._background.clear()
        self._background_groups.clear()
        return killed

    def close(self) -> None:
        """Kill whatever background sync is left (cleanup, not a recorded fault)."""
        self._runner.kill_running()
        for pid in self._background:
            processes.kill_tree(pid)
        for pgid in self._background_groups:
            processes.signal_group(pgid)
        self._background.clear()
        self._background_groups.clear()

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _export(runner: _Runner, template: Template, args: dict[str, Any], who: str, *,
            kind: str = "export") -> dict[str, Any]:
    argv = runner.profile.command(template, **{**runner.context, **args})
    done = processes.run(argv, env={**runner.profile.environ(), **runner.env},
                         timeout=runner.profile.action_timeout_s)
    parsed, problem = parse_json(done.stdout)
    outcome = runner.profile.exit_codes.classify(done.returncode)
    fault = ""
    if outcome != "ok":
        fault = f"export failed: {done.detail}; stderr: {_last_line(done.stderr)}"
    elif problem:
        fault = f"export printed no JSON: {problem}"
    elif not isinstance(parsed, dict) or parsed.get("format") != EXPORT_FORMAT:
        fault = f"export is not {EXPORT_FORMAT} JSON (format: {parsed.get('format') if isinstance(parsed, dict) else None!r})"
    runner._emit(type=kind, action=kind, args=args, result=parsed if not fault else None,
                 exit=done.returncode, detail=fault or f"{done.detail} in {done.duration:.2f}s")
    if fault:
        raise DriverError(f"{who}: {fault}")
    return parsed


class ServerHandle:
    """The SUT's server on a fixed loopback port, so a restart keeps the URL the proxies point at."""

    def __init__(self, profile: Profile, *, server_dir: str | Path, port: int | None = None,
                 log_dir: str | Path | None = None, record: Record | None = None) -> None:
        self.profile = profile
        self.server_dir = Path(server_dir)
        self.port = port or free_port()
        self._runner = _Runner(profile, "server", {**server_values(server_dir=self.server_dir, port=self.port),
                                                   "server_url": f"http://{HOST}:{self.port}"}, record)
        self.process = ManagedProcess(self.command(profile.server_start), name="server", env=profile.environ(), log_dir=log_dir)
        self._killed = False

    def command(self, template: Template, **args: Any) -> list[str]:
        """The argv of one of the profile's server commands for this server, without running it."""
        return self.profile.command(template, **{**self._runner.context, **args})

    @property
    def address(self) -> str:
        """host:port, what a Toxiproxy proxy uses as its upstream."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def running(self) -> bool:
        return self.process.running

    def start(self) -> ServerHandle:
        self.server_dir.mkdir(parents=True, exist_ok=True)
        ready = self.profile.ready_url(self.port)
        try:
            self.process.start(ready_url=ready, ready_timeout=self.profile.ready_timeout_s)
        except ProcessError as exc:
            raise DriverError(f"SUT server did not start: {exc}") from exc
        if self._killed:
            self._runner._emit(type="heal", action="server_kill", detail="server restarted")
            self._killed = False
        return self

    def stop(self) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after a grace period)."""
        self.process.stop()

    def kill(self) -> None:
        """Crash the server: SIGKILL its process group. Recorded as a ``server_kill`` fault."""
        self._runner._emit(type="fault", action="server_kill", detail="SIGKILL to the server's process group")
        self._killed = True
        self.process.kill()

    def restart(self, *, crash: bool = False) -> ServerHandle:
        """Stop (or, with ``crash``, SIGKILL) and start again on the same port and data."""
        self.kill() if crash else self.stop()
        return self.start()

    def provision(self, org: str, rep: str) -> str:
        """Create rep ``rep`` of organisation ``org``; returns the device token the SUT printed."""
        done = processes.run(self.command(self.profile.provision, org=org, rep=rep), env=self.profile.environ(),
                             timeout=self.profile.action_timeout_s)
        parsed, problem = parse_json(done.stdout)
        token = parsed.get("token") if isinstance(parsed, dict) else None
        if done.returncode not in self.profile.exit_codes.saved or not isinstance(token, str) or not token:
            why = problem or 'its JSON has no "token"'
            raise DriverError(f"provisioning rep {rep!r} of {org!r} failed: {done.detail}; {why}; "
                              f"stderr: {_last_line(done.stderr)}")
        return token

    def backoffice_edit(self, entity: str, record_id: str, field: str, value: Any, *, org: str = "",
                        timeout: float | None = None) -> ActionResult:
        """An edit made on the server side (the back office), recorded as a server action."""
        if self.profile.backoffice_edit is None:
            raise MissingAction(self.profile, "backoffice_edit")
        args = {"entity": entity, "record_id": record_id, "field": field, "value": value}
        if org:
            args["org"] = org
        return self._runner.execute("backoffice_edit", self.profile.backoffice_edit, args, timeout=timeout)

    def export(self, org: str) -> dict[str, Any]:
        """The organisation's state on the server, recorded as the server's ``export`` event."""
        return _export(self._runner, self.profile.server_export, {"org": org}, "server")

    def device_url(self, proxy_listen: str) -> str:
        """The URL a device uses to reach this server through its proxy listening on host:port."""
        return f"http://{proxy_listen}"

    def rep_export(self, org: str, rep: str, device: str) -> dict[str, Any]:
        """What a device of ``rep`` must hold (the optional ``rep_export``), recorded as a
        ``rep_export`` event for ``device``."""
        if self.profile.rep_export is None:
            raise MissingAction(self.profile, "rep_export")
        return _export(self._runner, self.profile.rep_export, {"org": org, "rep": rep, "for": device},
                       f"server (rep {rep})", kind="rep_export")

    def assign(self, org: str, rep: str, territory: str) -> ActionResult:
        """Give ``rep`` the territory ``territory`` (the optional ``assign``), recorded as a server action."""
        if self.profile.assign is None:
            raise MissingAction(self.profile, "assign")
        return self._runner.execute("assign", self.profile.assign, {"org": org, "rep": rep, "territory": territory})

    def unassign(self, org: str, rep: str, territory: str) -> ActionResult:
        """Take the territory ``territory`` away from ``rep`` (the optional ``unassign``), recorded as a
        server action."""
        if self.profile.unassign is None:
            raise MissingAction(self.profile, "unassign")
        return self._runner.execute("unassign", self.profile.unassign,
                                    {"org": org, "rep": rep, "territory": territory})

    def __enter__(self) -> ServerHandle:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


HOSTED_LIMIT = ("not exercisable on a hosted server: the SUT's server is the vendor's own ([server] url "
                "{url}), which the harness reaches but cannot {what}")


class HostedServer(ServerHandle):
    """The vendor's own server (``[server] url``, e.g. staging): reached, never started or stopped.

    Provisioning, the back office and the export are the profile's commands as for a local server
    (with ``{server_url}``, not ``{server_dir}`` or ``{port}``). Crashing, restarting, backing up or
    restoring it raises HostedLimit: those scenarios are not exercised (docs/levels.md). Devices reach
    it through their Toxiproxy proxies, whose upstream is the URL's host and port.
    """

    def __init__(self, profile: Profile, *, server_dir: str | Path | None = None, log_dir: str | Path | None = None,
                 record: Record | None = None, **_: Any) -> None:
        from urllib.parse import urlsplit

        self.profile = profile
        self.url_parts = urlsplit(profile.server_url or "")
        self.server_dir = Path(server_dir) if server_dir else Path()
        self.port = self.url_parts.port or (443 if self.url_parts.scheme == "https" else 80)
        self._runner = _Runner(profile, "server", {"server_url": profile.server_url}, record)
        self.process = None
        self._killed = False

    @property
    def address(self) -> str:
        return f"{self.url_parts.hostname}:{self.port}"

    @property
    def url(self) -> str:
        return self.profile.server_url or ""

    @property
    def running(self) -> bool:
        return True  # as far as the harness knows: it never stops it

    def device_url(self, proxy_listen: str) -> str:
        return f"{self.url_parts.scheme}://{proxy_listen}{self.url_parts.path}"

    def start(self) -> HostedServer:
        """Wait for the ``ready`` URL to answer 200, if the profile gives one."""
        ready = self.profile.ready_url()
        if ready is not None:
            last = processes.wait_for_200(ready, self.profile.ready_timeout_s, interval=0.2)
            if last is not None:
                raise DriverError(f"the hosted SUT server did not answer 200 at {ready} within "
                                  f"{self.profile.ready_timeout_s:g} s (last: {last})")
        return self

    def stop(self) -> None:
        pass  # not ours to stop

    def _cannot(self, what: str):
        from .session import HostedLimit

        return HostedLimit(HOSTED_LIMIT.format(url=self.url, what=what))

    def kill(self) -> None:
        raise self._cannot("crash (SIGKILL) and restart")

    def restart(self, *, crash: bool = False) -> ServerHandle:
        raise self._cannot("restart")


def server_for(profile: Profile, *, server_dir: str | Path, log_dir: str | Path | None = None,
               record: Record | None = None) -> ServerHandle:
    """The SUT's server for one scenario: started on a free loopback port, or the hosted one."""
    if profile.hosted:
        return HostedServer(profile, server_dir=server_dir, log_dir=log_dir, record=record)
    return ServerHandle(profile, server_dir=server_dir, log_dir=log_dir, record=record)
