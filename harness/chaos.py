"""Chaos mode: many seeded randomized histories against one SUT, shrunk counterexamples on failure.

Each run plays one schedule (harness/schedule.py) in a fresh ``Session``: its devices do random
contract actions while the schedule cuts their networks, adds Toxiproxy toxics, SIGKILLs clients,
agents and the server. Then everything heals, every device syncs to quiescence and the checkers
judge the history, exactly as in a conformance scenario. A run that shows an anomaly is shrunk by
delta debugging (harness/shrink.py), re-running the real SUT for every candidate, and its smallest
still-failing schedule is written to a JSON file that ``crm certify --replay FILE`` plays again.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import checkers
from .checkers import Anomaly
from .driver import DriverError
from .history import OUTCOMES, History
from .locations import resolve_profile
from .profile import MissingAction, Profile, load_profile
from .schedule import Capabilities, Schedule, generate, is_fault
from .session import NotExercisable, ScenarioFailure, Session
from .shrink import ddmin
from .timeline import timeline_data
from .toxiproxy import Toxic, Toxiproxy, ToxiproxyError, ToxiproxyServer

DEFAULT_RUNS = 10
DEFAULT_DEVICES = 3
DEFAULT_STEPS = 20
DEFAULT_SHRINK_BUDGET = 40

Live = Callable[[str], None]


@dataclass
class RunResult:
    schedule: Schedule
    anomalies: list[Anomaly]
    history: History
    duration_s: float
    steps_skipped: int = 0  # steps naming a record that was never created
    error: str = ""  # the harness could not finish the run (not the SUT's fault): no verdict

    @property
    def failed(self) -> bool:
        return bool(self.anomalies)

    @property
    def checks(self) -> list[str]:
        return sorted({a.check for a in self.anomalies})

    def actions(self) -> Counter:
        """Completed contract actions by name: the schedule's and those of healing and quiescence."""
        return Counter(e.action for e in self.history if e.type in OUTCOMES)

    def faults(self) -> Counter:
        return Counter(e.action for e in self.history if e.type == "fault")

    def never_received(self) -> int:
        """Refused writes aimed at a record the device's own export then lacked: the schedule's
        picture of who holds what was wrong, and ``refused`` did not count them (docs/chaos.md)."""
        return sum(1 for e in self.history if e.type == "probe" and checkers.probe_lacks_target(e))

    def summary(self) -> dict[str, Any]:
        return {"seed": self.schedule.seed, "passed": not self.failed and not self.error,
                "steps": len(self.schedule.steps), "steps_skipped": self.steps_skipped,
                "writes_on_records_never_received": self.never_received(),
                "actions": sum(self.actions().values()), "faults": sum(self.faults().values()),
                "duration_s": round(self.duration_s, 1), "checks": self.checks, "error": self.error,
                "anomalies": [a.to_json() for a in self.anomalies]}


class _Player:
    """Plays one schedule's steps on a Session, resolving record handles to the ids the SUT printed."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.ids: dict[str, str] = {}
        self.background: dict[str, threading.Thread] = {}
        self.skipped = 0

    def _id(self, handle: str | None) -> str | None:
        rid = self.ids.get(handle or "")
        if rid is None:
            self.skipped += 1
        return rid

    def _keep_id(self, step: dict[str, Any], result) -> None:
        if step.get("ref") and result.ok and isinstance(result.json, dict) and result.json.get("id"):
            self.ids[step["ref"]] = str(result.json["id"])

    def play(self, step: dict[str, Any]) -> None:
        kind = ALIASES.get(step["do"], step["do"])
        try:
            play = PLAYS[kind]
        except KeyError:
            raise ValueError(f"a chaos step cannot be {step['do']!r} (one of {', '.join(sorted(PLAYS))})") from None
        play(self, step)

    # -- the rep's work --------------------------------------------------------------------------
    def _write(self, step: dict[str, Any]) -> None:
        args = {k: step[k] for k in ("name", "city", "outcome", "sku", "qty", "price", "text") if k in step}
        if step["do"] == "create_account":
            self._keep_id(step, self.session.act(step["device"], step["do"], kill_after=step.get("kill_after"), **args))
            return
        args["account_id"] = self._id(step["account"])
        if args["account_id"] is not None:
            self._aimed(step, args["account_id"], step["do"], **args)

    def _add_order_line(self, step: dict[str, Any]) -> None:
        order_id = self._id(step["order"])
        if order_id is not None:
            self._aimed(step, order_id, "add_order_line", order_id=order_id, sku=step["sku"], qty=step["qty"],
                        price=step["price"])

    def _edit_field(self, step: dict[str, Any]) -> None:
        rid = self._id(step["record"])
        if rid is not None:
            self._aimed(step, rid, "edit_field", killable=False, entity=step["entity"], record_id=rid,
                        field=step["field"], value=step["value"])

    def _delete_record(self, step: dict[str, Any]) -> None:
        rid = self._id(step["record"])
        if rid is not None:
            self._aimed(step, rid, "delete_record", entity=step["entity"], record_id=rid)

    def _aimed(self, step: dict[str, Any], target: str, action: str, *, killable: bool = True, **args: Any) -> None:
        """A write aimed at an existing record. The schedule's picture of who holds what is rough
        (a sync killed or cut by a toxic may not have delivered), so a refused one is followed by
        the device's export, which tells the checkers whether the device held ``target`` at all."""
        result = self.session.act(step["device"], action, kill_after=step.get("kill_after") if killable else None,
                                  **args)
        self._keep_id(step, result)
        if result.outcome == "fail":
            try:
                self.session.device(step["device"]).driver.probe(target)
            except DriverError:  # recorded without a result: it excuses nothing
                pass

    def _backoffice_edit(self, step: dict[str, Any]) -> None:
        rid = self._id(step["record"])
        if rid is not None:
            s = self.session
            s.server.backoffice_edit(step["entity"], rid, step["field"], step["value"], org=s.org)

    def _assign(self, step: dict[str, Any]) -> None:
        """Territories: the device's rep is given a territory (first, or one more: a reassignment)."""
        self.session.assign(self.session.device(step["device"]).rep, step["territory"])

    def _unassign(self, step: dict[str, Any]) -> None:
        """Territories: a territory is taken away from the device's rep (server.unassign)."""
        s = self.session
        try:
            s.server.unassign(s.org, s.device(step["device"]).rep, step["territory"])
        except MissingAction as exc:  # a schedule replayed against a profile without it
            raise NotExercisable(f"not exercisable: {exc}") from None

    def _move_account(self, step: dict[str, Any]) -> None:
        """Territories: the back office moves an account to another territory (server.backoffice_edit
        of its ``territory``)."""
        rid = self._id(step["account"])
        if rid is not None:
            s = self.session
            try:
                s.server.backoffice_edit("account", rid, "territory", step["territory"], org=s.org)
            except MissingAction as exc:
                raise NotExercisable(f"not exercisable: {exc}") from None

    def _sync(self, step: dict[str, Any]) -> None:
        s, device = self.session, step["device"]
        if step.get("background"):  # the next steps overlap it
            self.join(device)
            self.background[device] = s.in_background(lambda: s.sync(device))
        else:
            s.sync(device, kill_after=step.get("kill_after"))

    def _start_background_sync(self, step: dict[str, Any]) -> None:
        self.session.act(step["device"], "start_background_sync")

    def _stop_background_sync(self, step: dict[str, Any]) -> None:
        self.session.act(step["device"], "stop_background_sync")

    def _reopen(self, step: dict[str, Any]) -> None:
        self.session.reopen(step["device"])

    # -- faults and heals: each does nothing when the world is already that way -----------------
    def _offline(self, step: dict[str, Any]) -> None:
        if not self.session.device(step["device"]).offline:
            self.session.airplane_mode(step["device"])

    def _online(self, step: dict[str, Any]) -> None:
        if self.session.device(step["device"]).offline:
            self.session.back_online(step["device"])

    def _toxic(self, step: dict[str, Any]) -> None:
        if step["name"] not in self.session.device(step["device"]).toxics:
            self.session.add_toxic(step["device"], Toxic(type=step["type"], stream=step["stream"], name=step["name"],
                                                         toxicity=1.0, attributes=dict(step["attributes"])))

    def _clear_toxics(self, step: dict[str, Any]) -> None:
        self.session.remove_toxics(step["device"])

    def _kill(self, step: dict[str, Any]) -> None:
        self.session.force_quit(step["device"])

    def _server_kill(self, step: dict[str, Any]) -> None:
        if self.session.server.running:
            self.session.server.kill()

    def _server_start(self, step: dict[str, Any]) -> None:
        if not self.session.server.running:
            self.session.server.start()

    def _pause(self, step: dict[str, Any]) -> None:
        time.sleep(float(step["seconds"]))

    def join(self, device: str | None = None) -> None:
        for name in [device] if device else list(self.background):
            thread = self.background.pop(name, None)
            if thread is not None:
                thread.join(self.session.profile.action_timeout_s + 5)


# Each step kind, named after the contract action it plays (docs/driver-contract.md) or the fault
# it injects, and how the player plays it.
PLAYS: dict[str, Callable[[_Player, dict[str, Any]], None]] = {
    "create_account": _Player._write, "log_visit": _Player._write, "take_order": _Player._write,
    "write_note": _Player._write, "add_order_line": _Player._add_order_line, "edit_field": _Player._edit_field,
    "delete_record": _Player._delete_record, "backoffice_edit": _Player._backoffice_edit, "sync": _Player._sync,
    "start_background_sync": _Player._start_background_sync, "stop_background_sync": _Player._stop_background_sync,
    "reopen": _Player._reopen, "offline": _Player._offline, "online": _Player._online, "toxic": _Player._toxic,
    "clear_toxics": _Player._clear_toxics, "kill": _Player._kill, "server_kill": _Player._server_kill,
    "server_start": _Player._server_start, "pause": _Player._pause,
    "assign": _Player._assign, "unassign": _Player._unassign, "move_account": _Player._move_account,
}
ALIASES = {"start_agent": "start_background_sync", "stop_agent": "stop_background_sync"}  # schedules of 2026-11
# The contract action a step kind plays when the kind is not named after one: a move is the back
# office editing an account's territory; assign is the profile's server.assign.
PLAYED_AS = {"move_account": "backoffice_edit"}


def run_schedule(schedule: Schedule, *, profile: Profile, toxiproxy: Toxiproxy, workdir: Path) -> RunResult:
    """Play one schedule against the SUT, heal, quiesce and check: the run's anomalies."""
    started = time.monotonic()
    session = Session(profile=profile, toxiproxy=toxiproxy, workdir=workdir, seed=schedule.seed,
                      scenario="chaos")
    player = _Player(session)
    anomalies: list[Anomaly] = []
    error = ""
    try:
        session.__enter__()
        for number, name in enumerate(schedule.devices, 1):
            session.add_device(name, f"rep-{number}")
        for number, step in enumerate(schedule.steps, 1):
            try:
                player.play(step)
            except DriverError as exc:  # only the server's start can fail mid-run
                anomalies.append(Anomaly("server_restart", f"step {number} ({step['do']}): {exc}",
                                         {"step": number}))
                break
        player.join()
        if not anomalies:
            try:
                anomalies = session.final_check()
            except (ScenarioFailure, DriverError) as exc:
                anomalies = [Anomaly("quiescence", str(exc), {"steps": len(schedule.steps)}),
                             *checkers.run_all(session.history)]
    except (ToxiproxyError, DriverError, ScenarioFailure, NotExercisable) as exc:  # e.g. a replayed
        error = f"{type(exc).__name__}: {exc}"  # server_kill on a hosted server
    finally:
        player.join()
        session.close()
    return RunResult(schedule, anomalies, session.history, time.monotonic() - started,
                     steps_skipped=player.skipped, error=error)


# -- shrinking -------------------------------------------------------------------------------------
@dataclass
class Counterexample:
    """One anomaly kind found by a run, with the smallest schedule that still shows it."""

    check: str
    run: int
    seed: int
    message: str
    original: Schedule
    minimal: Schedule
    tests: int = 0
    exhausted: bool = False
    reproduced: bool | None = None  # did the minimal schedule fail again when replayed once more
    file: str = ""
    anomalies: list[dict[str, Any]] = field(default_factory=list)  # what the minimal schedule showed
    timeline: dict[str, Any] = field(default_factory=dict)  # the minimal schedule's run, for the certificate

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "run": self.run, "seed": self.seed, "message": self.message,
                "original_steps": len(self.original.steps), "minimal_steps": len(self.minimal.steps),
                "shrink_runs": self.tests, "shrink_exhausted": self.exhausted, "reproduced": self.reproduced,
                "replay_file": self.file, "schedule": self.minimal.to_json(), "anomalies": self.anomalies,
                "timeline": self.timeline}


class Chaos:
    """A chaos campaign against one profile: runs, shrinks, and the figures for the certificate."""

    def __init__(self, profile: Profile, toxiproxy: ToxiproxyServer, *, workdir: Path,
                 live: Live | None = None) -> None:
        self.profile = profile
        self.toxiproxy = toxiproxy
        self.workdir = Path(workdir)
        self.live = live or (lambda _: None)
        self.results: list[RunResult] = []  # every run, shrinking runs included
        self._runs = 0

    def run(self, schedule: Schedule) -> RunResult:
        self._runs += 1
        if not self.toxiproxy.process.running:  # one crashed run must not take every later run with it
            self.live(f"  toxiproxy-server had exited (log: {self.toxiproxy.process.stderr_path}); starting it again")
            self.toxiproxy.start()
        with tempfile.TemporaryDirectory(prefix=f"chaos-{self._runs}-", dir=self.workdir) as tmp:
            result = run_schedule(schedule, profile=self.profile, toxiproxy=self.toxiproxy.client,
                                  workdir=Path(tmp))
        self.results.append(result)
        return result

    def shrink(self, result: RunResult, check: str, *, budget: int = DEFAULT_SHRINK_BUDGET) -> Counterexample:
        """The smallest sub-schedule (within ``budget`` re-runs) that still shows an anomaly of ``check``."""
        last: dict[str, RunResult] = {}

        def still_fails(steps: list[dict[str, Any]]) -> bool:
            candidate = result.schedule.with_steps(steps)
            outcome = self.run(candidate)
            verdict = check in outcome.checks
            self.live(f"  shrink {check}: {len(steps)} step(s) -> {'fails' if verdict else 'passes'}"
                      f" [{outcome.duration_s:.1f} s]")
            if verdict:
                last["run"] = outcome
            return verdict

        shrunk = ddmin(result.schedule.steps, still_fails, budget=budget)
        minimal = result.schedule.with_steps(shrunk.items)
        shown = last.get("run", result)
        first = next(a for a in shown.anomalies if a.check == check)
        return Counterexample(check, int(result.schedule.meta.get("run", 0)), result.schedule.seed, first.message,
                              result.schedule, minimal, shrunk.tests, shrunk.exhausted,
                              anomalies=[a.to_json() for a in shown.anomalies if a.check == check],
                              timeline=timeline_data(shown.history))

    # -- figures -------------------------------------------------------------------------------------
    def totals(self, results: list[RunResult]) -> dict[str, Any]:
        actions: Counter = Counter()
        faults: Counter = Counter()
        steps: Counter = Counter()
        for r in results:
            actions.update(r.actions())
            faults.update(r.faults())
            steps.update(r.schedule.counts())
        fault_steps = sum(1 for r in results for s in r.schedule.steps if is_fault(s))
        return {"runs": len(results), "failed_runs": sum(1 for r in results if r.failed),
                "errored_runs": sum(1 for r in results if r.error),
                "steps": sum(steps.values()), "fault_steps": fault_steps,
                "actions": sum(actions.values()), "faults": sum(faults.values()),
                "action_kinds": dict(sorted(actions.items())), "fault_kinds": dict(sorted(faults.items())),
                "step_kinds": dict(sorted(steps.items())),
                "anomalies": sum(len(r.anomalies) for r in results),
                "run_s": round(sum(r.duration_s for r in results), 1)}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


class ReplayFolderError(ValueError):
    """A replay asked to write where a campaign's (or a certification's) certificate is."""


def replay_folder(replay_file: str | Path) -> Path:
    """Where a replay's certificate goes by default: a folder of its own next to the schedule file
    (``chaos-lost-write-seed-5.json`` -> ``replay-chaos-lost-write-seed-5/``), so replaying a minimal
    schedule never touches the certificate of the campaign that found it."""
    path = Path(replay_file)
    return path.parent / f"replay-{path.stem}"


def check_replay_folder(report_dir: str | Path) -> None:
    """A replay never overwrites a certificate that is not a replay's: ReplayFolderError if
    ``report_dir`` holds one (a chaos campaign's, a certification's)."""
    import json

    existing = Path(report_dir) / "certificate.json"
    try:
        mode = json.loads(existing.read_text(encoding="utf-8")).get("mode", "certification")
    except FileNotFoundError:
        return
    except (OSError, ValueError, AttributeError):
        mode = "unreadable"
    if mode != "replay":
        raise ReplayFolderError(f"{report_dir} holds the certificate of a {mode} run, which a replay never "
                                f"overwrites; give the replay a folder of its own with --report "
                                f"(by default it writes next to the schedule file: replay-<file name>/)")


def campaign(profile_path: str | Path, *, runs: int = DEFAULT_RUNS, seed: int = 1,
             devices: int = DEFAULT_DEVICES, steps: int = DEFAULT_STEPS, report_dir: str | Path = "reports/chaos",
             shrink_budget: int = DEFAULT_SHRINK_BUDGET, replay: Schedule | None = None,
             live: Live | None = None) -> dict[str, Any]:
    """Run ``runs`` seeded schedules (or one replayed schedule), shrink what fails, write the certificate.

    Run ``i`` (from 1) plays the schedule of seed ``seed + i - 1``, so any run can be regenerated
    alone with ``--seed`` and ``--runs 1``. Returns the certificate data.
    """
    from .certify import sut_version
    from .report import write_reports

    live = live or (lambda _: None)
    if replay is not None:
        check_replay_folder(report_dir)  # before anything is read, started or written
    profile_path = resolve_profile(profile_path)  # a file, or a shipped profile's name
    profile = load_profile(profile_path)  # a broken profile fails here, before anything starts
    report_dir = Path(report_dir).resolve()
    raw = report_dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    caps = Capabilities.of(profile)
    started, started_at = time.monotonic(), datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if replay is not None:
        schedules = [replay]
    else:
        schedules = []
        for number in range(1, runs + 1):
            schedule = generate(seed + number - 1, devices=devices, steps=steps, capabilities=caps)
            schedule.meta.update({"run": number, "campaign_seed": seed})
            schedules.append(schedule)
    for schedule in schedules:
        schedule.meta["sut"] = str(profile_path)

    results: list[RunResult] = []
    found: list[Counterexample] = []
    with tempfile.TemporaryDirectory(prefix="crm-chaos-") as tmp, ToxiproxyServer(log_dir=raw) as toxiproxy:
        chaos = Chaos(profile, toxiproxy, workdir=Path(tmp), live=live)
        for schedule in schedules:
            result = chaos.run(schedule)
            results.append(result)
            number = schedule.meta.get("run", len(results))
            line = (f"{'FAIL' if result.failed else 'ERROR' if result.error else 'PASS'}  run {number} seed "
                    f"{schedule.seed}: {len(schedule.devices)} devices, {len(schedule.steps)} steps, "
                    f"{sum(result.actions().values())} actions, {sum(result.faults().values())} faults "
                    f"[{result.duration_s:.1f} s]")
            if result.never_received():
                line += f"  ({result.never_received()} write(s) aimed at a record the device never received)"
            if result.failed:
                line += f"  ({', '.join(result.checks)}: {result.anomalies[0].message[:160]})"
            elif result.error:
                line += f"  ({result.error[:200]})"
            live(line)
            if result.failed or result.error:
                result.history.save(raw / f"run-{number}-seed-{schedule.seed}.history.jsonl")
            if replay is not None:
                continue
            for check in result.checks:
                if any(c.check == check for c in found) or shrink_budget <= 0:
                    continue
                live(f"  shrinking run {number} (seed {schedule.seed}) for {check}, up to {shrink_budget} re-runs")
                example = chaos.shrink(result, check, budget=shrink_budget)
                again = chaos.run(example.minimal)
                example.reproduced = check in again.checks
                name = f"chaos-{_slug(check)}-seed-{schedule.seed}.json"
                example.minimal.meta.update({"check": check, "shrunk_from": len(schedule.steps)})
                example.file = str(example.minimal.save(report_dir / name))
                found.append(example)
                live(f"  {check}: seed {schedule.seed}, {len(schedule.steps)} -> {len(example.minimal.steps)} "
                     f"step(s) in {example.tests} re-runs, {'reproduced' if example.reproduced else 'NOT reproduced'}"
                     f" on replay; replay with: crm certify --sut {profile_path} --replay {example.file}")
        totals = chaos.totals(results)
        shrink_runs = len(chaos.results) - len(results)

    anomalies = [{"run": r.schedule.meta.get("run"), "seed": r.schedule.seed, **a.to_json()}
                 for r in results for a in r.anomalies]
    data = {
        "mode": "replay" if replay is not None else "chaos",
        "passed": not anomalies and not any(r.error for r in results),
        "sut": {"name": profile.name, "version": sut_version(profile), "profile": str(profile_path)},
        "seed": seed if replay is None else replay.seed,
        "settings": {"runs": len(schedules), "devices": devices if replay is None else len(replay.devices),
                     "steps": steps if replay is None else len(replay.steps), "shrink_budget": shrink_budget},
        "started_at": started_at,
        "duration_s": round(time.monotonic() - started, 1),
        "summary": {**totals, "shrink_runs": shrink_runs,
                    "checks": dict(sorted(Counter(a["check"] for a in anomalies).items()))},
        "runs": [{"run": r.schedule.meta.get("run"), **r.summary(),  # a timeline for each run that went wrong
                  **({"timeline": timeline_data(r.history)} if r.failed or r.error else {})} for r in results],
        "counterexamples": [c.to_json() for c in found],
        "anomalies": anomalies,
    }
    if replay is not None:
        data["replayed"] = replay.to_json()
    write_reports(data, report_dir)
    return data
