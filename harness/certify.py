"""A certification run: the conformance features under pytest-bdd against one SUT profile,
turned into a certificate (JSON, Markdown, HTML with a timeline, JUnit XML).

The suite runs in its own pytest process so a misbehaving SUT cannot take the caller down; each
scenario's verdict and history arrive through ``--results`` and are echoed live, one line each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import checkers, processes
from .history import History
from .levels import LEVEL_NAMES, certify_level, claim_limits
from .locations import features_dir, resolve_profile, suite_root
from .profile import load_profile
from .timeline import timeline_data

FEATURES = features_dir()  # the checkout's features/, or the copy the wheel ships (harness/features)
ROOT = suite_root()  # the suite's rootdir and working directory: node ids are relative to it
SUITE_VERSION = "1.0"
# The certificate's Checks table: the checkers', then the session's (a missed timing bound:
# ``stuck``, ``slow_write``) and ``history`` (a replica with no final export).
CHECKS = (*checkers.CHECKS, "stuck", "slow_write", "history")


@dataclass
class Certificate:
    data: dict[str, Any]

    @property
    def level(self) -> int | None:
        """The certified level; None for a partial run (a ``-k`` selection), which certifies none."""
        level = self.data.get("level")
        return None if level is None else int(level)

    @property
    def partial(self) -> bool:
        return bool(self.data.get("partial"))


def sut_version(profile) -> str:
    if profile.version is None:
        return "unknown"
    try:
        done = processes.run(profile.command(profile.version), env=profile.environ(), timeout=30)
    except Exception as exc:  # noqa: BLE001 - a version is a label; its absence must not stop a run
        return f"unknown ({exc})"
    return (done.stdout.strip().splitlines() or ["unknown"])[-1][:200]


def _follow(path: Path, stop: threading.Event, live: Callable[[dict[str, Any]], None]) -> None:
    """Echo each scenario verdict as pytest appends it to results.jsonl."""
    seen = 0
    while True:
        finished = stop.is_set()
        if path.exists():
            lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # complete lines only
            for line in lines[seen:]:
                if line.strip():
                    live(json.loads(line))
            seen = len(lines)
        if finished:
            return
        stop.wait(0.2)


DEFAULT_WORKERS = 3  # scenarios are independent (own server, proxies, ports) and mostly wait
# The pytest plugins a certification runs with, and no others: every plugin installed next to the
# harness would otherwise load into the run and each of its workers (in a test environment,
# schemathesis, respx, hypothesis...: about 1.5 s of CPU apiece), and could change what it does.
SUITE_PLUGINS = ("pytest_bdd.plugin", "harness.pytest_plugin")


def _pytest(*, workers: int = 1) -> list[str]:
    """``python -m pytest`` with exactly the suite's plugins (xdist's too when ``workers`` > 1);
    run it with ``_PYTEST_ENV``, which turns the loading of every other installed plugin off."""
    plugins = (*SUITE_PLUGINS, "xdist.plugin") if workers > 1 else SUITE_PLUGINS
    return [sys.executable, "-m", "pytest", *(arg for name in plugins for arg in ("-p", name))]


_PYTEST_ENV = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


def run_suite(profile_path: Path, *, seed: int, report_dir: Path, select: str | None = None,
              live: Callable[[dict[str, Any]], None] | None = None,
              workers: int = DEFAULT_WORKERS, tests: list[str] | None = None,
              attempt: int = 1) -> tuple[list[dict[str, Any]], int]:
    """Run the features (or only ``tests``, pytest node ids), ``workers`` scenarios at a time; the
    verdicts and pytest's exit code. A later ``attempt`` writes under raw/attempt-N and seeds
    its faults differently."""
    raw = report_dir / "raw" / (f"attempt-{attempt}" if attempt > 1 else "")
    (raw / "results.jsonl").unlink(missing_ok=True)
    raw.mkdir(parents=True, exist_ok=True)
    junit = report_dir / ("junit.xml" if attempt == 1 else f"junit-attempt-{attempt}.xml")
    # Plain pytest with the crm plugin's options (harness/pytest_plugin.py), as a QA engineer runs it;
    # ``-c devnull``: no pytest configuration found around an installed package applies to a certification.
    argv = [*_pytest(workers=workers), *(tests or [str(FEATURES)]), "-c", os.devnull, "-p", "no:cacheprovider",
            "-q", "--no-header", f"--rootdir={ROOT}", "--crm-sut", str(profile_path), "--crm-seed", str(seed),
            "--crm-attempt", str(attempt), "--crm-results", str(raw), f"--junitxml={junit}"]
    if select:
        argv += ["-k", select]
    if workers > 1:  # pytest-xdist: each worker has its own Toxiproxy; a scenario never shares one
        argv += ["-n", str(min(workers, len(tests)) if tests else workers)]
    stop = threading.Event()
    def echo(verdict: dict[str, Any]) -> None:
        if live:
            live({**verdict, "attempts": attempt} if attempt > 1 else verdict)

    follower = threading.Thread(target=_follow, args=(raw / "results.jsonl", stop, echo),
                                daemon=True)
    follower.start()
    with open(raw / "pytest.log", "w", encoding="utf-8") as log:
        suite = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                 env={**os.environ, **_PYTEST_ENV})
        try:
            code = suite.wait()
        except BaseException:  # Ctrl-C: let the suite tear its SUT processes down, then make sure
            processes.signal_group(suite.pid, signal.SIGINT)
            try:
                suite.wait(30)
            except subprocess.TimeoutExpired:
                processes.signal_group(suite.pid)
                suite.wait()
            raise
        finally:
            stop.set()
            follower.join()
    results_file = raw / "results.jsonl"
    verdicts = [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()] \
        if results_file.exists() else []
    if attempt > 1:
        for verdict in verdicts:
            verdict["attempts"] = attempt
            for key in ("history", "evidence_dir"):
                if verdict.get(key):
                    verdict[key] = f"attempt-{attempt}/{verdict[key]}"
    return verdicts, code


RERUNS = 2  # further attempts for a scenario that was inconclusive or failed only on timing


def needs_rerun(verdict: dict[str, Any]) -> bool:
    """Inconclusive (its fault missed) or failed only on a timing bound: not yet a verdict."""
    return (bool(verdict.get("test")) and not verdict.get("not_exercisable") and not verdict.get("blocked")
            and bool(verdict.get("inconclusive") or verdict.get("timing_only")))


def rerun(profile_path: Path, verdicts: list[dict[str, Any]], *, seed: int, report_dir: Path,
          live: Callable[[dict[str, Any]], None] | None = None, workers: int = DEFAULT_WORKERS,
          reruns: int = RERUNS) -> list[dict[str, Any]]:
    """Run again, with differently seeded moments, each scenario that was inconclusive or failed
    only on timing; its last attempt is its verdict, the earlier ones are kept in ``earlier``."""
    by_test = {v.get("test"): v for v in verdicts}
    for attempt in range(2, reruns + 2):
        again = [v["test"] for v in by_test.values() if needs_rerun(v)]
        if not again:
            break
        fresh, _ = run_suite(profile_path, seed=seed, report_dir=report_dir, live=live, workers=workers,
                             tests=again, attempt=attempt)
        for verdict in fresh:
            old = by_test.get(verdict.get("test"))
            if old is None:
                continue
            earlier = {"attempt": old.get("attempts", 1), "inconclusive": old.get("inconclusive", ""),
                       "timing_only": bool(old.get("timing_only")), "reason": str(old.get("reason", ""))[:500]}
            verdict["earlier"] = [*old.get("earlier", []), earlier]
            by_test[verdict["test"]] = verdict
    return [by_test.get(v.get("test"), v) if v.get("test") else v for v in verdicts]


def _check_table(verdicts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    table = {}
    for check in CHECKS:
        found = [(v["name"], a) for v in verdicts for a in v.get("anomalies", []) if a.get("check") == check]
        table[check] = {"passed": not found, "anomalies": len(found),
                        "scenarios": sorted({name for name, _ in found})}
    return table


DEFAULT_CHAOS_RUNS = 3  # the chaos stage of a certification: seeded schedules on 3 devices
CHAOS_STAGE_SHRINK_BUDGET = 8  # re-runs to shrink each kind of anomaly it finds (a bounded stage)


def chaos_stage(profile_path: Path, *, runs: int, seed: int, report_dir: Path,
                say: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chaos stage: a bounded seeded campaign after the scenarios. Returns its verdict (one
    more row for the level rule: level 3 needs it clean) and its summary for the certificate."""
    from .chaos import DEFAULT_DEVICES, DEFAULT_STEPS, campaign

    if say:  # one line now; the stage's verdict follows as one more scenario line
        say(f"chaos stage: {runs} seeded run(s) of {DEFAULT_DEVICES} devices, seed {seed}; report in {report_dir}")
    data = campaign(profile_path, runs=runs, seed=seed, devices=DEFAULT_DEVICES, steps=DEFAULT_STEPS,
                    report_dir=report_dir, shrink_budget=CHAOS_STAGE_SHRINK_BUDGET)
    s = data["summary"]
    replays = [f"crm certify --sut {profile_path} --replay {c['replay_file']}" for c in data["counterexamples"]]
    verdict = {
        "name": f"chaos stage: {runs} seeded run(s) of {DEFAULT_DEVICES} devices (seed {seed})",
        "feature": "Chaos", "passed": data["passed"], "duration_s": data["duration_s"],
        "offline_create_refused": None, "anomalies": data["anomalies"], "seed": seed,
        "reason": "" if data["passed"] else (
            f"{s['anomalies']} anomalies in {s['failed_runs']} run(s), {s['errored_runs']} run(s) not finished"
            + (f"; replay: {replays[0]}" if replays else "")),
    }
    summary = {"runs": runs, "seed": seed, "devices": DEFAULT_DEVICES, "steps": DEFAULT_STEPS,
               "passed": data["passed"], "duration_s": data["duration_s"], "actions": s["actions"],
               "faults": s["faults"], "anomalies": s["anomalies"], "checks": s["checks"],
               "counterexamples": [{**c, "replay": r} for c, r in zip(data["counterexamples"], replays, strict=True)],
               "report": str(Path(report_dir) / "certificate.html")}
    return verdict, summary


def certify(profile_path: str | Path, *, seed: int = 1, report_dir: str | Path = "reports",
            select: str | None = None, live: Callable[[dict[str, Any]], None] | None = None,
            workers: int = DEFAULT_WORKERS, chaos_runs: int = DEFAULT_CHAOS_RUNS,
            say: Callable[[str], None] | None = None, reruns: int = RERUNS) -> Certificate:
    """Run the suite against a profile and write the certificate files into ``report_dir``."""
    profile_path = resolve_profile(profile_path)  # a file, or a shipped profile's name ("reference")
    profile = load_profile(profile_path)  # a broken profile fails here, before anything starts
    planned = preflight(select)  # no Toxiproxy, or a selection of nothing: fail before anything starts
    report_dir = Path(report_dir).resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    verdicts, code = run_suite(profile_path, seed=seed, report_dir=report_dir, select=select, live=live,
                               workers=workers)
    if not verdicts:
        log = (report_dir / "raw" / "pytest.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the conformance suite ran no scenario (pytest exit {code}):\n{log}")
    verdicts = rerun(profile_path, verdicts, seed=seed, report_dir=report_dir, live=live, workers=workers,
                     reruns=reruns)
    if chaos_runs > 0 and not select:
        verdict, chaos = chaos_stage(profile_path, runs=chaos_runs, seed=seed, report_dir=report_dir / "chaos",
                                     say=say)
        verdicts.append(verdict)
        if live:
            live(verdict)
    else:  # recorded, so a certificate without the stage says so
        chaos = {"runs": 0, "skipped": "a selection (-k) runs no chaos stage" if select else "--chaos-runs 0"}
    for verdict in verdicts:
        history_file = verdict.get("history")
        if history_file:
            verdict["timeline"] = timeline_data(History.load(report_dir / "raw" / history_file),
                                                verdict.get("steps"))
    data = {
        **level_fields(verdicts, select, planned),
        "sut": {"name": profile.name, "version": sut_version(profile), "profile": str(profile_path)},
        "suite": {"name": "crm offline-first conformance", "version": SUITE_VERSION,
                  "selection": select or "all"},
        "seed": seed,
        "provenance": provenance(profile_path, seed),
        "workers": workers,
        "started_at": started_at,
        "duration_s": round(time.monotonic() - started, 1),
        "chaos": chaos,
        "summary": {"scenarios": len(verdicts), "passed": sum(1 for v in verdicts if v["passed"]),
                    "failed": sum(1 for v in verdicts if not v["passed"] and not v.get("inconclusive")),
                    "inconclusive": sum(1 for v in verdicts if v.get("inconclusive") and not v.get("limit")),
                    "not_exercised": sum(1 for v in verdicts if v.get("limit") and not v["passed"]),
                    "rerun": sum(1 for v in verdicts if v.get("earlier")),
                    "actions": sum(v.get("timeline", {}).get("actions", 0) for v in verdicts),
                    "faults": sum(v.get("timeline", {}).get("faults", 0) for v in verdicts)},
        "checks": _check_table(verdicts),
        "scenarios": verdicts,
    }
    certificate = Certificate(data)
    from .report import write_reports

    write_reports(certificate.data, report_dir)
    return certificate


# -- what a run covers, and where it ran (issue 13) -------------------------------------------------
class SelectionError(ValueError):
    """A ``-k`` expression pytest refuses (a syntax error) or one that selects no scenario."""

    def __init__(self, message: str, *, empty: bool = False) -> None:
        super().__init__(message)
        self.empty = empty


def selection(select: str | None = None) -> list[dict[str, str]]:
    """The scenarios ``-k select`` picks (every one without it), in suite order, as pytest itself
    collects them (``pytest --collect-only -k``, so the expression means exactly what it means in a
    run): each one's test id, name and feature. Nothing runs. Raises SelectionError when the
    expression is malformed or selects nothing."""
    from . import coverage

    argv = [*_pytest(), str(FEATURES), "--collect-only", "-q", "-p", "no:cacheprovider",
            "--no-header", f"--rootdir={ROOT}", "-o", f"bdd_features_base_dir={FEATURES}/"]
    if select:
        argv += ["-k", select]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **_PYTEST_ENV},
                          stdin=subprocess.DEVNULL)
    ids = [line.strip() for line in done.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if done.returncode not in (0, 5):  # 4: a malformed expression
        said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        why = next((line for line in said if "ERROR" in line or "Error" in line), said[-1] if said else "")
        raise SelectionError(f"-k {select!r}: pytest could not use it (exit {done.returncode}): {why.strip()[:300]}")
    if not ids:
        raise SelectionError(f"-k {select!r} selects no scenario; `crm certify --list` shows them all",
                             empty=True)
    by_test = {sc.test: sc for sc in coverage.scenarios(FEATURES)}
    out = []
    for node in ids:
        test = node.rsplit("::", 1)[-1]
        sc = by_test.get(test)
        out.append({"test": test, "name": sc.name if sc else test, "feature": sc.feature if sc else "",
                    "node": node})
    return out


def preflight(select: str | None) -> list[dict[str, str]] | None:
    """What must hold before a certification starts anything: a Toxiproxy to break the network
    with (ToxiproxyError naming how to get one), and a selection that selects something
    (SelectionError). Returns the selected scenarios, or None for the whole suite."""
    from .toxiproxy import find_server_binary

    find_server_binary()
    return selection(select) if select else None


def level_fields(verdicts: list[dict[str, Any]], select: str | None,
                 planned: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The certificate's verdict. The whole suite earns a level (docs/levels.md). A selection
    (``-k``) earns none: a level is a claim about every scenario, so a partial run is marked
    ``partial`` with ``level`` null; what the level rule says of the scenarios that ran stays
    available as ``partial_level`` and ``partial_reasons`` (evidence, not a certification)."""
    level, reasons = certify_level(verdicts)
    limits = claim_limits(verdicts)  # a hosted server: what the claim was made without (docs/levels.md)
    if not select:
        name = LEVEL_NAMES[level] + "".join(f", {limit['qualifier']}" for limit in limits)
        return {"level": level, "level_name": name, "reasons": reasons, "partial": False, "limits": limits}
    from . import coverage

    ran = [v["name"] for v in verdicts]
    total = len(coverage.scenarios(FEATURES))
    return {
        "level": None, "level_name": "PARTIAL", "partial": True,
        "reasons": [f"a selection (-k {select!r}) ran {len(ran)} of the suite's {total} scenarios and no chaos "
                    "stage: no level is certified on a partial run; run `crm certify` without -k for one"],
        "partial_level": level, "partial_reasons": reasons, "limits": limits,
        "selection": {"expression": select, "scenarios": ran,
                      "tests": [p["test"] for p in planned] if planned else [v.get("test", "") for v in verdicts]},
    }


def _git_commit() -> dict[str, Any] | None:
    """The harness's git commit, and whether its tree had uncommitted changes; None outside a checkout."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, stdin=subprocess.DEVNULL)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def harness_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("crm-offline")
    except PackageNotFoundError:
        return "unknown"


def provenance(profile_path: str | Path, seed: int) -> dict[str, Any]:
    """Where a certificate comes from, so a reader can tell two runs apart and redo one: the harness
    (version, suite version, git commit when it runs from a checkout), the exact profile (its
    SHA-256), the seed, and the machine."""
    import hashlib
    import os
    import platform
    import socket

    profile_path = Path(profile_path)
    try:
        digest = hashlib.sha256(profile_path.read_bytes()).hexdigest()
    except OSError:
        digest = None
    git = _git_commit()
    return {
        "harness": {"version": harness_version(), "suite_version": SUITE_VERSION,
                    "commit": git["commit"] if git else None, "dirty": git["dirty"] if git else None},
        "profile": {"path": str(profile_path), "sha256": digest},
        "seed": seed,
        "machine": {"hostname": socket.gethostname(), "cpus": os.cpu_count(),  # os.uname: platform's may fork
                    "os": " ".join((os.uname().sysname, os.uname().release, os.uname().machine)),
                    "python": platform.python_version()},
    }
