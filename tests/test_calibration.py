"""Calibration: the harness must tell the three systems apart, end to end through `crm certify`.

The read-only cache is level 1, the fragile sync level 2, the reference CRM level 3. Each run is
the real thing: real servers, real Toxiproxy, real SIGKILL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.process, pytest.mark.conformance]  # `crm certify` end to end

ROOT = Path(__file__).resolve().parent.parent
SUTS = {"reference": 3, "readonly-cache": 1, "fragile-sync": 2}


def certify(tmp_path: Path, sut: str, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / sut
    proc = subprocess.run([sys.executable, "-m", "cli.main", "certify", "--sut",
                           str(ROOT / "fixtures" / "sut" / f"{sut}.toml"), "--report", str(report), "--json",
                           *extra], capture_output=True, text=True, cwd=ROOT, timeout=1500)
    certificate = json.loads((report / "certificate.json").read_text()) if (report / "certificate.json").exists() else {}
    return proc, certificate


# The chaos stage of the weak SUTs is one run: their level is already below 3 from the scenarios,
# and a longer stage (with its shrinking) would only lengthen the run. The reference gets the default.
CHAOS_RUNS = {"reference": [], "readonly-cache": ["--chaos-runs", "1"], "fragile-sync": ["--chaos-runs", "1"]}


# One class per SUT, so parallel workers (xdist --dist loadscope) certify the three at once.
@pytest.mark.slow
class TestReferenceGetsLevel3:
    def test_level(self, tmp_path):
        _gets_its_level(tmp_path, "reference")


@pytest.mark.slow
class TestFragileSyncGetsLevel2:
    def test_level(self, tmp_path):
        _gets_its_level(tmp_path, "fragile-sync")


@pytest.mark.slow
class TestReadonlyCacheGetsLevel1:
    def test_level(self, tmp_path):
        _gets_its_level(tmp_path, "readonly-cache")


# The read-only cache is certified with --require-level 2: its level 1 must exit 30 (a level
# needs the whole suite, so this is checked on the full run, not on a -k selection).
REQUIRE = {"readonly-cache": 2}


def _gets_its_level(tmp_path, sut):
    required = ["--require-level", str(REQUIRE[sut])] if sut in REQUIRE else []
    proc, cert = certify(tmp_path, sut, "--seed", "7", *CHAOS_RUNS[sut], *required)
    assert cert, f"no certificate written: {proc.stderr[-2000:]}"
    if sut in REQUIRE:
        assert proc.returncode == 30 and "below the required level" in proc.stderr, proc.stderr[-2000:]
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert cert["partial"] is False and cert["provenance"]["profile"]["sha256"]
    assert cert["level"] == SUTS[sut], f"{sut}: level {cert['level']}: {cert['reasons']}\n{proc.stderr[-3000:]}"
    summary = json.loads(proc.stdout)
    assert summary["level"] == SUTS[sut]
    lines = sum(proc.stderr.count(word) for word in ("PASS", "FAIL", "INCONCLUSIVE", "BLOCKED", "NOT EXERCISED"))
    assert lines == cert["summary"]["scenarios"] + sum(len(v.get("earlier", [])) for v in cert["scenarios"]), \
        "one live line per scenario and per attempt"
    report = tmp_path / sut
    for name in ("certificate.md", "certificate.html", "junit.xml"):
        assert (report / name).stat().st_size > 500
    html = (report / "certificate.html").read_text()
    assert f"Level {SUTS[sut]}" in html and "<svg" in html
    if SUTS[sut] < 3:
        failing = [s for s in cert["scenarios"] if not s["passed"] and not s.get("inconclusive")]
        unexplained = [s["name"] for s in failing if not s["anomalies"]]
        assert failing and not unexplained, f"every failure is explained by a named check: {unexplained}"
        named = {a["check"] for s in failing for a in s["anomalies"]}
        assert named <= set(cert["checks"]), "the Checks table accounts for every failure"
        assert all(cert["checks"][c]["anomalies"] for c in named)
    else:
        assert all(s["passed"] for s in cert["scenarios"])
        assert len(cert["scenarios"]) >= 38
    assert cert["chaos"]["runs"] == (int(CHAOS_RUNS[sut][1]) if CHAOS_RUNS[sut] else 3), "the chaos stage ran"


def test_require_level_with_a_selection_is_a_usage_error(tmp_path):
    proc, cert = certify(tmp_path, "readonly-cache", "--require-level", "2", "-k", "create_a_new_account")
    assert proc.returncode == 2 and not cert
    assert len(proc.stderr.strip().splitlines()) == 1 and "no level" in proc.stderr


def test_a_broken_profile_is_refused_before_anything_starts(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nstart = ["no-such-program-xyz"]\n')
    proc = subprocess.run([sys.executable, "-m", "cli.main", "certify", "--sut", str(bad), "--report",
                           str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 3
    assert "bad.toml" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "certificate.json").exists()
