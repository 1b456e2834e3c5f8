"""A profile tried in seconds, before a full certification: `crm certify check`, `try`, `--smoke`.

``check`` starts the SUT's server, provisions a rep, sets one device up and runs every action the
profile defines once, in a scripted order, then reads both exports. For each command it reports
the command line, the exit code, what the harness understood from stdout (the id a write printed,
``pending``, the sections of an export, the pid of a background sync) and every contract
violation, with the section of docs/driver-contract.md to read. ``try`` runs one action with the
arguments given (on a fresh server and device, after init, with whatever records it needs made
first). ``smoke`` is the shortest round trip: one write, a sync, both exports, the id in both.

No Toxiproxy: the device talks to the server directly. The harness's own library does the work
(``Driver``, ``ServerHandle``, ``load_profile``), so what ``check`` understands is what a
certification will understand.
"""

from __future__ import annotations

import shlex
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import processes
from .checkers import format_errors, same_value
from .driver import ActionResult, Driver, DriverError, HostedServer, ServerHandle, parse_json
from .profile import ACTION_ARGS, MissingAction, Profile, load_profile

CONTRACT = "docs/driver-contract.md"
# The sections of the contract a violation points at.
RUNNING = "How the harness runs a command"
PROFILE = "The profile"
ACTIONS = "The actions"
EXIT_CODES = "Exit codes: saved, not saved, unknown"
EXPORT = "The export format"
FORCE_QUIT = "Force-quit: SIGKILL"
TIME_LIMITS = "Time limits"
EXPORT_SECTIONS = ("account", "contact", "visit", "order", "note", "product", "conflicts")

ORG, REP = "check", "rep-check"
# What `try` fills in for an argument not given on its command line.
DEFAULTS: dict[str, str] = {"name": "Corner Store 42", "city": "Leeds", "outcome": "met the buyer", "sku": "SKU-1",
                            "qty": "2", "price": "12.50", "text": "Wants a callback on Tuesday — ☎",
                            "entity": "account", "field": "city", "value": "York"}
# What each action's stdout must carry: an id (writes), pending (outbox), a pid, an export, or any JSON.
EXPECT = {"create_account": "id", "log_visit": "id", "take_order": "id", "write_note": "id",
          "add_order_line": "json", "edit_field": "json", "delete_record": "json", "sync": "json",
          "start_background_sync": "pid", "stop_background_sync": "json", "outbox": "pending", "export": "export"}
WRITES = {"create_account": "account", "log_visit": "visit", "take_order": "order", "write_note": "note"}


class CheckUsageError(ValueError):
    """`try` asked for an action or an argument the contract does not have."""


@dataclass
class Violation:
    message: str
    section: str

    def to_json(self) -> dict[str, str]:
        return {"message": self.message, "read": f'{CONTRACT}, "{self.section}"'}


@dataclass
class Step:
    """One command the check ran (or skipped), and what the harness made of it."""

    action: str
    argv: list[str] = field(default_factory=list)
    exit: int | None = None
    outcome: str = ""  # ok | fail | unknown (as the profile's exit codes read it) | skipped
    duration_s: float = 0.0
    understood: dict[str, Any] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    stderr: str = ""  # its last line
    note: str = ""

    def violate(self, message: str, section: str) -> None:
        self.violations.append(Violation(message, section))

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "command": shlex.join(self.argv) if self.argv else "", "exit": self.exit,
                "outcome": self.outcome, "duration_s": round(self.duration_s, 2), "understood": self.understood,
                "violations": [v.to_json() for v in self.violations], "stderr": self.stderr, "note": self.note}


@dataclass
class CheckReport:
    mode: str  # check | try | smoke
    profile: str
    sut: str
    steps: list[Step] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def violations(self) -> list[tuple[Step, Violation]]:
        return [(step, v) for step in self.steps for v in step.violations]

    @property
    def ok(self) -> bool:
        return not self.violations

    def step(self, action: str) -> Step:
        """The first step of ``action`` (KeyError when there is none)."""
        for step in self.steps:
            if step.action == action:
                return step
        raise KeyError(action)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "ok": self.ok, "profile": self.profile, "sut": self.sut,
                "violations": len(self.violations), "duration_s": round(self.duration_s, 1),
                "steps": [s.to_json() for s in self.steps]}


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _summary(value: Any) -> Any:
    """A short account of a JSON document the harness reads nothing specific from."""
    if isinstance(value, dict):
        return {"keys": sorted(value)[:12]}
    return {"type": type(value).__name__}


def export_problems(parsed: Any) -> list[str]:
    """What is wrong with an export against "The export format": its JSON Schema
    (harness/schemas/export.schema.json, each problem naming the field), then what a schema cannot
    say (records sorted by id). Empty: nothing."""
    if not isinstance(parsed, dict):
        return [f"an export is a JSON object, not {type(parsed).__name__}"]
    problems = format_errors(parsed)
    for section in EXPORT_SECTIONS:
        records = parsed.get(section)
        if section == "conflicts" or not isinstance(records, list):
            continue
        ids = [r.get("id") for r in records if isinstance(r, dict)]
        if len(ids) == len(records) and None not in ids and [str(i) for i in ids] != sorted(str(i) for i in ids):
            problems.append(f'"{section}": records are not sorted by id')
    return problems


class Bench:
    """One SUT server and one device, started for a check; everything it starts, it stops."""

    def __init__(self, profile: Profile, workdir: Path, report: CheckReport) -> None:
        self.profile = profile
        self.workdir = workdir
        self.report = report
        self.server: ServerHandle | None = None
        self.driver: Driver | None = None
        self.token: str | None = None
        self.marker = f"crm-check-{uuid.uuid4().hex[:12]}"
        # a hosted server is shared: each check provisions a fresh organisation
        self.org = f"{ORG}-{uuid.uuid4().hex[:8]}" if profile.hosted else ORG

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.driver is not None:
            self.driver.close()
        processes.kill_marked(self.marker)  # anything the device started and did not report
        if self.server is not None:
            self.server.stop()

    def _add(self, step: Step) -> Step:
        self.report.steps.append(step)
        return step

    # -- the server and the device ---------------------------------------------------------------
    def start_server(self) -> bool:
        if self.profile.hosted:
            return self.reach_hosted_server()
        self.server = ServerHandle(self.profile, server_dir=self.workdir / "server", log_dir=self.workdir / "logs")
        step = self._add(Step("server.start", self.server.command(self.profile.server_start)))
        started = time.monotonic()
        try:
            self.server.start()
        except DriverError as exc:
            step.outcome = "fail"
            step.stderr = _last_line(self.server.process.log_tail()) if self.server.process else ""
            step.violate(f"the server did not answer 200 at {self.profile.ready_url(self.server.port)} within "
                         f"{self.profile.ready_timeout_s:g} s: {str(exc)[:400]}", PROFILE)
            return False
        finally:
            step.duration_s = time.monotonic() - started
        step.outcome = "ok"
        step.understood = {"ready": self.profile.ready_url(self.server.port), "pid": self.server.process.pid}
        return True

    def reach_hosted_server(self) -> bool:
        """A hosted server (``[server] url``) is not started: its ``ready`` URL, if any, must answer."""
        self.server = HostedServer(self.profile, server_dir=self.workdir / "server")
        ready = self.profile.ready_url()
        step = self._add(Step("server.ready", ["GET", ready] if ready else []))
        started = time.monotonic()
        try:
            self.server.start()
        except DriverError as exc:
            step.outcome = "fail"
            step.violate(str(exc)[:400], PROFILE)
            return False
        finally:
            step.duration_s = time.monotonic() - started
        step.outcome = "ok"
        step.understood = {"hosted": self.profile.server_url, "ready": ready or "no ready URL given"}
        return True

    def _run(self, step: Step, env: dict[str, str] | None = None) -> tuple[Any, str]:
        done = processes.run(step.argv, env={**self.profile.environ(), **(env or {})},
                             timeout=self.profile.action_timeout_s)
        step.exit, step.duration_s = done.returncode, done.duration
        step.outcome = self.profile.exit_codes.classify(done.returncode)
        step.stderr = _last_line(done.stderr)
        if step.outcome != "ok":
            self._not_saved(step, done.detail)
        return parse_json(done.stdout)

    def _not_saved(self, step: Step, detail: str) -> None:
        if step.exit is None:
            step.violate(f"{detail} (timeouts.action_s = {self.profile.action_timeout_s:g})", TIME_LIMITS)
        else:
            step.violate(f"{detail}: not a saved code (exit_codes.saved = {sorted(self.profile.exit_codes.saved)})"
                         + (f"; stderr: {step.stderr}" if step.stderr else ""), EXIT_CODES)

    def provision(self) -> bool:
        assert self.server is not None
        step = self._add(Step("server.provision", self.server.command(self.profile.provision, org=self.org, rep=REP)))
        parsed, problem = self._run(step)
        token = parsed.get("token") if isinstance(parsed, dict) else None
        if step.outcome == "ok" and problem:
            step.violate(f"stdout is not JSON: {problem}", RUNNING)
        elif step.outcome == "ok" and (not isinstance(token, str) or not token):
            step.violate('its JSON has no "token" (a non-empty string)', ACTIONS)
        if isinstance(token, str) and token:
            self.token = token
            step.understood = {"token": f"<{len(token)} characters>"}
        return self.token is not None

    def init_device(self) -> bool:
        assert self.server is not None and self.token is not None
        self.driver = Driver(self.profile, device="device", home=self.workdir / "device", server_url=self.server.url,
                             rep=REP, org=self.org, token=self.token, env={processes.MARKER_ENV: self.marker})
        self.driver.home.mkdir(parents=True, exist_ok=True)
        step = self._add(Step("device.init", self.driver.command(self.profile.device_init)))
        parsed, problem = self._run(step, self.driver.env)
        if step.outcome == "ok" and problem:
            step.violate(f"stdout is not JSON: {problem}", RUNNING)
        elif step.outcome == "ok":
            step.understood = _summary(parsed)
        return step.outcome == "ok"

    # -- actions ---------------------------------------------------------------------------------
    def skip(self, action: str, note: str) -> Step:
        return self._add(Step(action, outcome="skipped", note=note))

    def act(self, action: str, label: str | None = None, **args: Any) -> Step:
        """Run one contract action through the Driver and judge its stdout against the contract."""
        assert self.driver is not None
        name = label or action
        if not self.profile.has(action):
            return self.skip(name, f"the profile defines no [actions].{action} (optional): the scenarios that "
                                   "need it will be inconclusive")
        step = self._add(Step(name, self.driver.command(action, **args)))
        result = self.driver.invoke(action, **args)
        step.exit, step.duration_s, step.outcome = result.exit, result.duration, result.outcome
        step.stderr = _last_line(result.stderr)
        if result.outcome != "ok":
            self._not_saved(step, result.detail.split(";")[0])
            return step
        self._judge(step, result, EXPECT[action])
        return step

    def _judge(self, step: Step, result: ActionResult, expect: str) -> None:
        parsed, problem = parse_json(result.stdout)
        if problem:
            step.violate(f"stdout is not the action's JSON: {problem}"
                         + (f" (it began {result.stdout.strip()[:80]!r})" if result.stdout.strip() else ""), RUNNING)
            return
        if expect == "id":
            found = parsed.get("id") if isinstance(parsed, dict) else None
            if isinstance(found, str | int) and not isinstance(found, bool) and str(found):
                step.understood = {"id": str(found)}
            else:
                step.violate('its JSON has no "id": a write must print the id of the record it created', ACTIONS)
        elif expect == "pending":
            pending = parsed.get("pending") if isinstance(parsed, dict) else None
            if isinstance(pending, int) and not isinstance(pending, bool) and pending >= 0:
                step.understood = {"pending": pending}
            else:
                step.violate('its JSON has no "pending": N (a whole number of changes not yet acknowledged)', ACTIONS)
        elif expect == "pid":
            pid = parsed.get("pid") if isinstance(parsed, dict) else None
            if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
                step.violate('its JSON has no "pid": N, so a force-quit cannot find the background sync process',
                             FORCE_QUIT)
            else:
                step.understood = {"pid": pid, "running": processes.alive(pid)}
                if not processes.alive(pid):
                    step.violate(f"it reported pid {pid}, but no such process runs", FORCE_QUIT)
        elif expect == "export":
            self._judge_export(step, parsed)
        else:
            step.understood = _summary(parsed)

    def _judge_export(self, step: Step, parsed: Any) -> None:
        for problem in export_problems(parsed):
            step.violate(problem, EXPORT)
        if isinstance(parsed, dict):
            step.understood = {"format": parsed.get("format"),
                               "sections": {k: len(v) for k, v in parsed.items() if isinstance(v, list)}}

    def server_export(self) -> tuple[Step, Any]:
        assert self.server is not None
        step = self._add(Step("server.export", self.server.command(self.profile.server_export, org=self.org)))
        parsed, problem = self._run(step)
        if step.outcome == "ok":
            if problem:
                step.violate(f"stdout is not JSON: {problem}", RUNNING)
                return step, None
            self._judge_export(step, parsed)
        return step, parsed if step.outcome == "ok" else None

    def device_export(self) -> tuple[Step, Any]:
        """The device's export, judged, and the parsed document (None when unusable)."""
        assert self.driver is not None
        step = self._add(Step("export", self.driver.command("export")))
        result = self.driver.invoke("export")
        step.exit, step.duration_s, step.outcome = result.exit, result.duration, result.outcome
        step.stderr = _last_line(result.stderr)
        if result.outcome != "ok":
            self._not_saved(step, result.detail.split(";")[0])
            return step, None
        self._judge(step, result, "export")
        return step, result.json if isinstance(result.json, dict) else None


def expect_in_export(step: Step, export: Any, writes: list[tuple[str, str, str]], *,
                     deleted: set[str] = frozenset(), edits: list[tuple[str, str, str, str]] = (),
                     lines: list[tuple[str, str]] = ()) -> None:
    """Every record a write reported (``(action, entity, id)``) is in ``export``; a deleted one says
    ``"deleted": true``; each edit ``(entity, id, field, value)`` shows its value; each order line
    ``(order_id, sku)`` is on its order."""
    if not isinstance(export, dict):
        return
    by_id = {entity: {str(r.get("id")): r for r in export.get(entity, []) if isinstance(r, dict)}
             for entity in ("account", "visit", "order", "note")}
    for action, entity, record_id in writes:
        record = by_id.get(entity, {}).get(record_id)
        if record is None:
            step.violate(f'the {entity} {record_id} that {action} reported saved is not in "{entity}"', ACTIONS)
        elif record_id in deleted and record.get("deleted") is not True:
            step.violate(f'the {entity} {record_id} was deleted (delete_record exited saved) but its record '
                         'does not say "deleted": true', ACTIONS)
    for entity, record_id, name, value in edits:
        record = by_id.get(entity, {}).get(record_id)
        if record is not None and not same_value(value, record.get(name)):
            step.violate(f"edit_field set {entity} {record_id} {name} to {value!r}, but the export shows "
                         f"{record.get(name)!r}", ACTIONS)
    for order_id, sku in lines:
        order = by_id["order"].get(order_id)
        skus = [line.get("sku") for line in order.get("lines", []) if isinstance(line, dict)] if order else []
        if order is not None and sku not in skus:
            step.violate(f"the line {sku} that add_order_line reported saved is not on order {order_id} "
                         f"(lines: {skus})", ACTIONS)


def _session(mode: str, profile_path: str | Path, body: Callable[[Bench], None],
             workdir: str | Path | None = None) -> CheckReport:
    """Load the profile (a ProfileError propagates), run ``body`` on a fresh bench, time it."""
    profile = load_profile(profile_path)
    report = CheckReport(mode, str(Path(profile_path).resolve()), profile.name)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"crm-{mode}-", dir=workdir) as tmp, \
            Bench(profile, Path(tmp), report) as bench:
        body(bench)
    report.duration_s = time.monotonic() - started
    return report


def _setup(bench: Bench) -> bool:
    return bench.start_server() and bench.provision() and bench.init_device()


def _id(step: Step) -> str | None:
    return step.understood.get("id") if step.outcome == "ok" else None


def check(profile_path: str | Path, *, workdir: str | Path | None = None) -> CheckReport:
    """Every action of the profile once, in a scripted order, and both exports (module docstring)."""

    def body(bench: Bench) -> None:
        if not _setup(bench):
            return
        needs = "needs an account id, and create_account gave none"
        written: list[tuple[str, str, str]] = []
        account = _id(bench.act("create_account", name=DEFAULTS["name"], city="Leeds"))
        if account:
            written.append(("create_account", "account", account))
        order = None
        for action, args in (("log_visit", {"outcome": DEFAULTS["outcome"]}),
                             ("take_order", {"sku": "SKU-1", "qty": 2, "price": "12.50"})):
            if not account:
                bench.skip(action, needs)
                continue
            made = _id(bench.act(action, account_id=account, **args))
            if made:
                written.append((action, WRITES[action], made))
                order = made if action == "take_order" else order
        lines = []
        if order:
            if bench.act("add_order_line", order_id=order, sku="SKU-2", qty=1, price="3.00").outcome == "ok":
                lines.append((order, "SKU-2"))
        else:
            bench.skip("add_order_line", "needs an order id, and take_order gave none")
        if account:
            note = _id(bench.act("write_note", account_id=account, text=DEFAULTS["text"]))
            if note:
                written.append(("write_note", "note", note))
        else:
            bench.skip("write_note", needs)
        edits = []
        if account and bench.act("edit_field", entity="account", record_id=account, field="city",
                                 value="York").outcome == "ok":
            edits.append(("account", account, "city", "York"))
        elif not account:
            bench.skip("edit_field", needs)
        deleted: set[str] = set()
        if bench.profile.has("delete_record"):
            doomed = _id(bench.act("create_account", "create_account (one to delete)", name="Closed Shop",
                                   city="Hull"))
            if doomed:
                written.append(("create_account", "account", doomed))
                if bench.act("delete_record", entity="account", record_id=doomed).outcome == "ok":
                    deleted.add(doomed)
        else:
            bench.act("delete_record")  # recorded as skipped: not defined
        bench.act("outbox")
        synced = False
        if bench.profile.has("sync"):
            synced = bench.act("sync").outcome == "ok"
            after = bench.act("outbox", "outbox (after sync)")
            pending = after.understood.get("pending")
            if synced and isinstance(pending, int) and pending:
                after.violate(f"outbox still counts {pending} change(s) after a sync that exited saved: a saved sync "
                              "means everything queued was pushed and acknowledged", ACTIONS)
        else:
            bench.act("sync")
        step, export = bench.device_export()
        expect_in_export(step, export, written, deleted=deleted, edits=edits, lines=lines)
        step, export = bench.server_export()
        if synced:
            expect_in_export(step, export, written, deleted=deleted, edits=edits, lines=lines)
        else:
            step.note = "records not looked for: no sync exited saved"
        start = bench.act("start_background_sync")
        pid = start.understood.get("pid")
        stop = bench.act("stop_background_sync")
        if stop.outcome == "ok" and isinstance(pid, int):
            deadline = time.monotonic() + 5
            while processes.alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if processes.alive(pid):
                stop.violate(f"the background sync process {pid} still runs 5 s after stop_background_sync "
                             "exited saved", ACTIONS)

    return _session("check", profile_path, body, workdir)


def _make(bench: Bench, args: dict[str, Any], action: str) -> bool:
    """Make the records ``action``'s id arguments name when they were not given (setup steps)."""
    def account() -> str | None:
        if "_account" not in args:
            args["_account"] = _id(bench.act("create_account", "create_account (setup)", name=DEFAULTS["name"],
                                             city=DEFAULTS["city"]))
        return args["_account"]

    if "account_id" in ACTION_ARGS[action] and "account_id" not in args:
        args["account_id"] = account()
    if "order_id" in ACTION_ARGS[action] and "order_id" not in args:
        args["order_id"] = account() and _id(bench.act("take_order", "take_order (setup)", account_id=account(),
                                                       sku="SKU-1", qty=2, price="12.50"))
    if "record_id" in ACTION_ARGS[action] and "record_id" not in args:
        entity = args.get("entity", "account")
        maker = {"account": None, "visit": ("log_visit", {"outcome": DEFAULTS["outcome"]}),
                 "order": ("take_order", {"sku": "SKU-1", "qty": 2, "price": "12.50"}),
                 "note": ("write_note", {"text": DEFAULTS["text"]})}.get(entity)
        if entity == "account":
            args["record_id"] = account()
        elif maker is not None:
            args["record_id"] = account() and _id(bench.act(maker[0], f"{maker[0]} (setup)", account_id=account(),
                                                            **maker[1]))
        else:
            raise CheckUsageError(f"entity={entity}: give record_id=ID too (the harness makes accounts, visits, "
                                  "orders and notes only)")
    args.pop("_account", None)
    return all(args.get(name) for name in ("account_id", "order_id", "record_id") if name in ACTION_ARGS[action])


def try_action(profile_path: str | Path, action: str, given: dict[str, str], *,
               workdir: str | Path | None = None) -> CheckReport:
    """Run one action with the arguments ``given`` (the rest from DEFAULTS; the records its ids name
    made first) on a fresh server and device, after init. A write is then looked for in the export."""
    if action not in ACTION_ARGS:
        raise CheckUsageError(f"{action!r} is not a contract action (known: {', '.join(ACTION_ARGS)})")
    unknown = sorted(set(given) - ACTION_ARGS[action])
    if unknown:
        takes = ", ".join(sorted(ACTION_ARGS[action])) or "no arguments"
        raise CheckUsageError(f"{action} takes no argument {unknown[0]!r} (it takes: {takes})")
    profile = load_profile(profile_path)
    if not profile.has(action):
        raise MissingAction(profile, action)

    def body(bench: Bench) -> None:
        if not _setup(bench):
            return
        args: dict[str, Any] = {name: given.get(name, DEFAULTS.get(name)) for name in ACTION_ARGS[action]
                                if name in given or name in DEFAULTS}
        args.update(given)
        if not _make(bench, args, action):
            bench.skip(action, "a record it needs could not be made (see the setup steps)")
            return
        step = bench.act(action, **args)
        made = _id(step) if action in WRITES else None
        if made:
            export_step, export = bench.device_export()
            expect_in_export(export_step, export, [(action, WRITES[action], made)])
        if action == "start_background_sync" and bench.profile.has("stop_background_sync"):
            bench.act("stop_background_sync")

    return _session("try", profile_path, body, workdir)


def smoke(profile_path: str | Path, *, workdir: str | Path | None = None) -> CheckReport:
    """One device, one write, a sync, both exports: the id must be in both."""

    def body(bench: Bench) -> None:
        if not _setup(bench):
            return
        created = bench.act("create_account", name=DEFAULTS["name"], city=DEFAULTS["city"])
        account = _id(created)
        if not bench.profile.has("sync"):
            bench.skip("sync", "").violate("the profile defines no [actions].sync: the smoke test syncs once "
                                           "(a SUT with background sync only cannot be smoke-tested this way)", ACTIONS)
            return
        synced = bench.act("sync")
        step, export = bench.device_export()
        if account:
            expect_in_export(step, export, [("create_account", "account", account)])
        step, export = bench.server_export()
        if account and synced.outcome == "ok":
            expect_in_export(step, export, [("create_account", "account", account)])

    return _session("smoke", profile_path, body, workdir)


def text(report: CheckReport) -> str:
    """The report for a person: per step its command line, exit, what was understood, violations."""
    out = []
    for step in report.steps:
        mark = "skip" if step.outcome == "skipped" else "FAIL" if step.violations else "ok"
        exit_ = f"  exit {step.exit}" if step.exit is not None else "" if step.outcome in ("ok", "skipped") \
            else "  no exit (killed)"
        out.append(f"{mark:4}  {step.action}{exit_}" + (f"  {step.duration_s:.2f} s" if step.argv else ""))
        if step.argv:
            out.append(f"      $ {shlex.join(step.argv)}")
        if step.understood:
            out.append("      understood: " + ", ".join(f"{k}={v}" for k, v in step.understood.items()))
        if step.note:
            out.append(f"      note: {step.note}")
        for v in step.violations:
            out.append(f"      violation: {v.message}")
            out.append(f'        read {CONTRACT}, "{v.section}"')
        if step.violations and step.stderr:
            out.append(f"      stderr: {step.stderr}")
    n = len(report.violations)
    verdict = "no contract violation" if not n else f"{n} contract violation{'s' if n != 1 else ''}"
    out.append(f"{report.mode} of {report.sut}: {verdict}; {len(report.steps)} steps in {report.duration_s:.1f} s")
    return "\n".join(out)
