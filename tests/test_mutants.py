"""The harness is mutation-tested: broken variants of the reference must not be certified level 3.

Each mutant (fixtures/mutants/, table in mutants.toml) is the reference CRM with one patch: one
behaviour a level-3 client must have, broken the way a vendor's engineer taking a shortcut would.
A certification of a "caught" mutant must give a level below 3 **and** name the checks the table
says its shortcut trips, among the anomalies of the scenarios that must catch it. The score, and
the mutants the harness does not catch and why, are in docs/coverage.md.

Why a small selection is enough: each mutant breaks one behaviour, and its table row names the
scenario built to exercise that behaviour (the fault, life event or concurrent edit it mishandles);
every scenario runs against its own server, devices and proxies, so the others could only add
failures, never remove one. Each selection also runs the airplane-mode create, the proof that
offline writes work (docs/levels.md: without it every level is 1): so the level below 3 is the
caught failure's doing, not the selection's.

The certifications run a few at a time (``CRM_MUTANT_JOBS``, default 3): a scenario mostly waits on
processes, the network faults and its deadlines. ``CRM_MUTANTS_REPORT=FILE`` writes the score
table docs/coverage.md shows, from this run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from harness import coverage
from harness.certify import CHECKS
from harness.profile import load_profile
from tests.support import CERTIFY_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
MUTANTS_DIR = ROOT / "fixtures" / "mutants"
SEED = 1
PROOF = "create_a_new_account_in_airplane_mode"  # the offline create every selection includes
STATUSES = {"caught", "gap", "survived", "equivalent"}
CHECK_NAMES = set(CHECKS)  # the checkers', and stuck / slow_write: a timing bound missed


def _load_build():
    spec = importlib.util.spec_from_file_location("mutants_build", MUTANTS_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()
MUTANTS: dict[str, dict[str, Any]] = build.mutants()
CAUGHT = sorted(name for name, m in MUTANTS.items() if m.get("status") == "caught")


SCENARIOS = [sc.test for sc in coverage.scenarios()]  # test ids, what ``-k`` matches


def _selected(select: str, test: str) -> bool:
    """Whether ``-k select`` (names joined by `` or ``) selects the scenario test ``test``."""
    return any(term.strip().lower() in test.lower() for term in select.split(" or "))


# -- the table and the patches: fast ---------------------------------------------------------------
def test_every_patch_is_in_the_table_and_every_row_has_its_patch():
    patches = {path.stem for path in MUTANTS_DIR.glob("*.patch")}
    assert patches == set(MUTANTS), (f"patches without a row: {sorted(patches - set(MUTANTS))}; "
                                     f"rows without a patch: {sorted(set(MUTANTS) - patches)}")
    assert len(CAUGHT) >= 15, "issue 10: at least 15 mutants the harness catches"


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_each_row_says_what_it_breaks_and_what_catches_it(name):
    mutant = MUTANTS[name]
    assert mutant.get("status") in STATUSES, mutant.get("status")
    for key in ("area", "shortcut", "select"):
        assert isinstance(mutant.get(key), str) and mutant[key].strip(), f"{name}: {key} missing"
    for term in mutant["select"].split(" or "):
        assert any(_selected(term, test) for test in SCENARIOS), f"{name}: {term!r} selects no scenario"
    checks = mutant.get("checks")
    assert isinstance(checks, list) and set(checks) <= CHECK_NAMES, f"{name}: unknown checks {checks}"
    if mutant["status"] == "caught":
        assert checks, f"{name}: a caught mutant names the checks it must trip"
    else:
        assert mutant.get("why", "").strip(), f"{name}: say why the harness does not catch it"
    patch = (MUTANTS_DIR / f"{name}.patch").read_text(encoding="utf-8")
    touched = re.findall(r"^\+\+\+ b/(\S+)", patch, flags=re.MULTILINE)
    assert touched and all(path.startswith(build.SOURCES) for path in touched), \
        f"{name}: a mutant patches the reference's crm/ or cli/ only: {touched}"
    assert "MUTANT" in patch, f"{name}: mark the changed line with a '# MUTANT {name}: ...' comment"


# -- the patches apply and the profile runs the copy: processes (git apply, python) -----------------
@pytest.fixture(scope="module")
def source_copy(tmp_path_factory):
    target = tmp_path_factory.mktemp("reference-copy")
    build.copy_sources(target)
    return target


@pytest.mark.process
@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_each_patch_applies_to_the_current_source(name, source_copy):
    done = build.apply_patch(build.patch_path(name), source_copy, check=True)
    assert done.returncode == 0, f"{name}.patch no longer applies to crm/ and cli/; redo it:\n{done.stderr}"


@pytest.mark.process
def test_a_mutant_profile_runs_the_mutant_and_not_the_installed_package(tmp_path):
    profile_path = build.build(CAUGHT[0], tmp_path / "mutant")
    profile = load_profile(profile_path)  # a valid profile: every program found, every placeholder known
    assert profile.action("create_account").argv[:3] == ("{python}", "-m", "cli.main")
    probe = [sys.executable, "-c", "import cli.main, crm.sync; print(cli.main.__file__); print(crm.sync.__file__)"]
    done = subprocess.run(probe, env=profile.environ(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert all(Path(line).is_relative_to(tmp_path / "mutant") for line in done.stdout.split()), done.stdout
    patched = re.findall(r"^\+\+\+ b/(\S+)", build.patch_path(CAUGHT[0]).read_text(), flags=re.MULTILINE)[0]
    assert "MUTANT" in (tmp_path / "mutant" / patched).read_text()


# -- every caught mutant certified: slow -----------------------------------------------------------
@dataclass
class Run:
    name: str
    seconds: float
    returncode: int | None
    stderr: str
    certificate: dict[str, Any] = field(default_factory=dict)


def _certify(name: str, folder: Path) -> Run:
    started = time.monotonic()
    try:
        profile = build.build(name, folder / "mutant")
    except (OSError, RuntimeError) as exc:  # one broken mutant must not hide the others' results
        return Run(name, time.monotonic() - started, None, f"could not build the mutant: {exc}")
    select = f"({MUTANTS[name]['select']}) or {PROOF}"
    report = folder / "report"
    try:
        done = subprocess.run([sys.executable, "-m", "cli.main", "certify", "--sut", str(profile), "-k", select,
                               "--seed", str(SEED), "--workers", "1", "--report", str(report), "--json"],
                              cwd=ROOT, capture_output=True, text=True, timeout=CERTIFY_TIMEOUT)
        code, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, stderr = None, f"certification timed out: {exc}"
    cert_file = report / "certificate.json"
    certificate = json.loads(cert_file.read_text()) if cert_file.exists() else {}
    return Run(name, time.monotonic() - started, code, stderr[-3000:], certificate)


def _wanted(request) -> list[str]:
    """The caught mutants this session runs (after -k and the like), longest first."""
    names = {item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", None) == "test_the_harness_catches_the_mutant"
             and hasattr(item, "callspec")}
    # a mutant caught by `stuck` waits out its scenario's deadline: start those first
    return sorted(names, key=lambda n: ("stuck" not in MUTANTS[n]["checks"], n))


@pytest.fixture(scope="module")
def certifications(request, tmp_path_factory):
    names = _wanted(request)
    root = tmp_path_factory.mktemp("mutants")
    jobs = max(1, int(os.environ.get("CRM_MUTANT_JOBS", "3")))
    started = time.monotonic()
    with ThreadPoolExecutor(jobs) as pool:
        runs = {run.name: run for run in pool.map(lambda n: _certify(n, root / n), names)}
    report = os.environ.get("CRM_MUTANTS_REPORT")
    if report:
        Path(report).write_text(_score_table(runs, time.monotonic() - started, jobs), encoding="utf-8")
    return runs


def _failed(certificate: dict[str, Any], select: str) -> list[dict[str, Any]]:
    return [s for s in certificate.get("scenarios", [])
            if not s["passed"] and _selected(select, s.get("test", "").rsplit("::", 1)[-1])]


def _score_table(runs: dict[str, Run], seconds: float, jobs: int) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"Run of {when}, seed {SEED}, {len(runs)} mutants, {jobs} at a time, {seconds:.0f} s in all.", "",
             "| mutant | scenario that caught it | level (of the selection) | checks that fired | time |", "|---|---|---|---|---|"]
    for name, run in sorted(runs.items()):
        caught = _failed(run.certificate, MUTANTS[name]["select"])
        fired = sorted({a["check"] for s in caught for a in s.get("anomalies", [])})
        lines.append(f"| {name} | {'; '.join(s['name'] for s in caught) or 'none'} | "
                     f"{run.certificate.get('partial_level', '?')} | {', '.join(fired) or 'none'} | {run.seconds:.0f} s |")
    return "\n".join(lines) + "\n"


@pytest.mark.slow
@pytest.mark.conformance
@pytest.mark.process
@pytest.mark.parametrize("name", CAUGHT)
def test_the_harness_catches_the_mutant(name, certifications):
    mutant, run = MUTANTS[name], certifications[name]
    cert = run.certificate
    assert cert, f"{name}: no certificate (exit {run.returncode}):\n{run.stderr}"
    # a selection certifies no level: what the level rule makes of the selected scenarios is partial_level
    assert cert["partial"] and cert["level"] is None, f"{name}: a -k selection must give a PARTIAL certificate"
    assert cert["partial_level"] < 3, f"{name} ({mutant['shortcut']}) passed as level 3: the harness missed it"
    proof = [s for s in cert["scenarios"] if _selected(PROOF, s.get("test", ""))]
    assert proof and all(s["passed"] for s in proof), f"{name}: the offline create failed too: {proof}"
    caught = _failed(cert, mutant["select"])
    assert caught, f"{name}: none of the scenarios {mutant['select']!r} failed: {cert['reasons']}"
    fired = {a["check"] for s in caught for a in s.get("anomalies", [])}
    missing = set(mutant["checks"]) - fired
    assert not missing, (f"{name}: {', '.join(sorted(missing))} did not fire (fired: {sorted(fired)}); "
                         f"reasons: {[s['reason'][:300] for s in caught]}")
