"""A small pytest plugin: each conformance scenario's verdict, for `crm certify`.

features/conftest.py imports its hooks. State travels in ``item.stash`` under the keys below,
never in private node attributes. With ``--crm-results DIR`` every verdict is appended to
``DIR/results.jsonl`` (one write(2) with O_APPEND, so parallel workers' lines never interleave)
and the scenario's history saved next to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from .pytest_plugin import FEATURE_PROPERTY, SCENARIO_PROPERTY
from .session import HostedLimit, NotExercisable, Session

SCENARIO = pytest.StashKey[str]()
FEATURE = pytest.StashKey[str]()
SESSION = pytest.StashKey[Session]()
VERDICT = pytest.StashKey[dict[str, Any]]()
FAILED_STEP = pytest.StashKey[dict[str, Any]]()
STEPS = pytest.StashKey[list[dict[str, Any]]]()  # each step's text and span (time.monotonic, the history's clock)
SERVER_FAULTS = pytest.StashKey[list[str]]()  # the scenario's steps that crash, back up or restore the server
# Steps the harness can only take on a server it runs: on a hosted one (profile [server] url) their
# scenario is not exercised, and says so before anything starts (the step itself refuses too).
SERVER_FAULT_STEP = re.compile(r"^(the server is (killed|restarted|restored)|a backup of the server is taken)")
# Anomalies of a timing bound of the contract (delivery within N s, a write within 2 s): a
# scenario failing only on these is run again before the failure counts (docs/levels.md).
TIMING_CHECKS = ("stuck", "slow_write")


def scenario_name(item: pytest.Item) -> str:
    return item.stash.get(SCENARIO, item.name)


def pytest_bdd_before_scenario(request, feature, scenario):
    request.node.stash[SCENARIO] = scenario.name
    request.node.stash[FEATURE] = feature.name
    request.node.stash[SERVER_FAULTS] = [f"{step.keyword.strip()} {step.name}" for step in scenario.steps
                                         if SERVER_FAULT_STEP.match(step.name)]
    # for the JUnit file: "<feature> :: <scenario>" (harness/pytest_plugin.py renames the testcase);
    # an outline's name is rendered with its example's values, so each example reads apart
    if (FEATURE_PROPERTY, feature.name) not in request.node.user_properties:
        request.node.user_properties += [(FEATURE_PROPERTY, feature.name), (SCENARIO_PROPERTY, scenario.name)]


def pytest_bdd_before_step(request, feature, scenario, step, step_func):
    request.node.stash.setdefault(STEPS, []).append(
        {"keyword": step.keyword.strip(), "text": step.name, "line": step.line_number, "t": time.monotonic(),
         "t_end": None, "failed": False})


def pytest_bdd_after_step(request, feature, scenario, step, step_func, step_func_args):
    _end_step(request.node)


def _end_step(item: pytest.Item, *, failed: bool = False) -> None:
    steps = item.stash.get(STEPS, [])
    if steps and steps[-1]["t_end"] is None:
        steps[-1].update(t_end=time.monotonic(), failed=failed)


def pytest_bdd_step_error(request, feature, scenario, step, step_func, step_func_args, exception):
    request.node.stash[FAILED_STEP] = {"type": step.type, "keyword": step.keyword.strip(), "text": step.name,
                                       "line": step.line_number, "background": step.background is not None}
    _end_step(request.node, failed=True)


def refuse_on_hosted(item: pytest.Item, profile) -> None:
    """HostedLimit before anything starts, for a scenario that must crash, back up or restore a
    server the harness does not run (a hosted profile)."""
    steps = item.stash.get(SERVER_FAULTS, [])
    if profile.hosted and steps:
        from .driver import HOSTED_LIMIT

        raise HostedLimit(HOSTED_LIMIT.format(url=profile.server_url, what="crash, restart, back up or restore")
                          + f" (this scenario's step \"{steps[0]}\")")


def blocked(item: pytest.Item, anomalies: list[dict[str, Any]]) -> str:
    """A scenario that failed in its setup (a Given step) with nothing the checkers can name is
    *blocked*: it says nothing about the behaviour it is named after (docs/levels.md)."""
    step = item.stash.get(FAILED_STEP, None)
    if step is None or step["type"] != "given" or anomalies:
        return ""
    return f"blocked: its setup failed at \"{step['keyword']} {step['text']}\""


def timing_only(anomalies: list[dict[str, Any]]) -> bool:
    """Every anomaly is a missed timing bound that quiescence then made good."""
    return bool(anomalies) and all(a.get("check") in TIMING_CHECKS and (a.get("evidence") or {}).get("step")
                                   in ("wait", "catch_up", "writes_within") for a in anomalies)


def verdict_of(item: pytest.Item, report: pytest.TestReport, session: Session | None,
               not_exercisable: str = "", limit: str = "") -> dict[str, Any]:
    anomalies = [a.to_json() for a in session.anomalies] if session else []
    inconclusive = not_exercisable or ("; ".join(session.inconclusive) if session and report.passed else "")
    setup = "" if report.passed or not_exercisable else blocked(item, anomalies)
    if setup:
        inconclusive = f"{setup}: {_reason(report)[:300]}"
    sut, seed = item.config.getoption("crm_sut", None), item.config.getoption("crm_seed", None)
    return {
        "name": scenario_name(item),
        "feature": item.stash.get(FEATURE, ""),
        "test": item.nodeid,
        "passed": report.passed and not inconclusive,
        "inconclusive": inconclusive,
        "not_exercisable": bool(not_exercisable) or any(
            why.startswith("not exercisable") for why in (session.inconclusive if session else [])),
        # a limit the profile declares ("hosted": its server cannot be crashed or restored), which the
        # level rule names instead of counting the scenario as inconclusive (docs/levels.md)
        "limit": limit if not_exercisable else "",
        "timing_only": (not report.passed) and timing_only(anomalies),
        "duration_s": round(report.duration, 2),
        "offline_create_refused": session.offline_create_refused if session else None,
        "anomalies": anomalies,
        "reason": "" if report.passed else _reason(report),
        "seed": session.seed if session else None,
        "blocked": bool(setup),
        "failed_step": item.stash.get(FAILED_STEP, None),
        "steps": item.stash.get(STEPS, []),  # for the timeline: which step ran when, which one failed
        # the scenario alone, as it ran (its moments are seeded from the run's seed and its name)
        "reproduce": f"crm certify --sut {sut} --seed {seed} -k '{item.name}' --report reports/reproduce",
    }


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" and not (report.when == "setup" and report.failed):
        return
    session = item.stash.get(SESSION, None)
    missing = call.excinfo.value if call.excinfo is not None and call.excinfo.errisinstance(NotExercisable) else None
    if report.failed and report.when == "call" and session is not None and missing is None:
        session.evidence()  # a failed step is explained by the checkers too (docs/levels.md)
    verdict = item.stash[VERDICT] = verdict_of(item, report, session, str(missing or ""),
                                               getattr(missing, "limit", ""))
    folder = item.config.getoption("crm_results")
    if folder and (session is not None or missing is not None):  # not exercised before its world began: no history
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        if session is not None:
            (out / "histories").mkdir(parents=True, exist_ok=True)
            slug = _slug(item.name)
            session.history.save(out / "histories" / f"{slug}.jsonl")
            verdict["history"] = f"histories/{slug}.jsonl"
            if not verdict["passed"]:
                verdict["evidence_dir"] = _keep_evidence(session, out / "evidence" / slug, out)
        fd = os.open(out / "results.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(verdict) + "\n").encode())
        finally:
            os.close(fd)


def _keep_evidence(session: Session, target: Path, root: Path) -> str:
    """What a vendor debugs from, kept next to the history: the server's and each device's
    stderr and logs, and a copy of each device's home as the scenario left it."""
    ignore = shutil.ignore_patterns("*.sock", "*.pid", "*.lock")
    for source, name in [(session.workdir / "logs", "logs"),
                         *((d.driver.home, f"home-{n}") for n, d in session.devices.items())]:
        try:
            if Path(source).is_dir():
                shutil.copytree(source, target / name, symlinks=True, ignore=ignore, dirs_exist_ok=True)
        except (OSError, shutil.Error):
            continue  # evidence is best effort: a file that vanished mid-copy must not hide the verdict
    return str(target.relative_to(root))


def _slug(name: str) -> str:
    """A file name for a test's history: readable, and unique even when long names share a start."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if len(slug) <= 100:
        return slug
    return f"{slug[:60]}-{slug[-30:]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _reason(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return text.replace("harness.session.ScenarioFailure: ", "")[:2000]
