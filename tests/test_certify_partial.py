"""Issue 13: a selection certifies no level (a PARTIAL certificate), a certificate says where it
came from, and a missing Toxiproxy or an empty selection is one line with its own exit code.

The fast tests build certificates from verdicts and drive `crm certify` in-process up to the point
where it would start something; the `process` tests collect and run real scenarios."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from harness import certify as certify_mod
from harness import coverage
from harness.report import markdown, page
from tests.support import CERTIFY_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "fixtures" / "sut" / "reference.toml"

OFFLINE_CREATE = {"name": "Create a new account in airplane mode", "test": "test_create_a_new_account_in_airplane_mode",
                  "feature": "The airplane-mode checklist", "passed": True, "offline_create_refused": False,
                  "anomalies": [], "duration_s": 1.2}
LOST = {"name": "Back online: everything syncs", "test": "test_back_online", "feature": "The airplane-mode checklist",
        "passed": False, "offline_create_refused": None, "duration_s": 3.0, "reason": "a record never arrived",
        "anomalies": [{"check": "lost_write", "message": "account a1 is missing on the server", "evidence": {}}]}


def certificate(verdicts, select, monkeypatch) -> dict:
    """What certify() writes, from verdicts: the same functions, without running the suite."""
    monkeypatch.setattr(certify_mod, "_git_commit", lambda: {"commit": "abc123", "dirty": False})
    return {**certify_mod.level_fields(verdicts, select), "sut": {"name": "acme", "version": "4.2", "profile": "p"},
            "suite": {"name": "s", "version": "1.0", "selection": select or "all"}, "seed": 7,
            "provenance": certify_mod.provenance(REFERENCE, 7), "workers": 1, "started_at": "t", "duration_s": 4.2,
            "chaos": {"runs": 0}, "checks": certify_mod._check_table(verdicts), "scenarios": verdicts,
            "summary": {"scenarios": len(verdicts), "passed": 1, "failed": 1, "inconclusive": 0, "rerun": 0,
                        "actions": 0, "faults": 0}}


class Html(HTMLParser):
    """Well-formedness enough for a report: every non-void tag closed in order."""

    VOID = {"meta", "br", "hr", "img", "input", "link", "rect", "line"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> Html:
    parser = Html()
    parser.feed(html)
    parser.close()
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    return parser


def test_a_selection_earns_no_level_but_keeps_what_the_rule_says(monkeypatch):
    cert = certificate([OFFLINE_CREATE, LOST], "airplane", monkeypatch)
    assert cert["level"] is None and cert["partial"] is True and cert["level_name"] == "PARTIAL"
    assert cert["partial_level"] == 2 and any("lost_write" in r for r in cert["partial_reasons"])
    assert cert["selection"] == {"expression": "airplane", "scenarios": [OFFLINE_CREATE["name"], LOST["name"]],
                                 "tests": [OFFLINE_CREATE["test"], LOST["test"]]}
    whole = certificate([OFFLINE_CREATE], None, monkeypatch)
    assert whole["level"] == 3 and whole["partial"] is False and "partial_level" not in whole


def test_a_partial_certificate_says_partial_and_which_scenarios_ran_and_shows_no_level(monkeypatch):
    cert = certificate([OFFLINE_CREATE], "create_a_new_account", monkeypatch)  # all passed: still no level
    md = markdown(cert)
    assert md.startswith("# Conformance certificate: PARTIAL, no level")
    assert "`test_create_a_new_account_in_airplane_mode`" in md and "## Scenarios that ran" in md
    assert not re.search(r"\blevel [123]\b", md, re.IGNORECASE)
    html = page(cert)
    text = " ".join(parse(html).text)
    assert '<p class="level">PARTIAL</p>' in html and "test_create_a_new_account_in_airplane_mode" in text
    assert not re.search(r"Level [123]", html)


def test_a_full_certificate_keeps_its_level_badge(monkeypatch):
    cert = certificate([OFFLINE_CREATE], None, monkeypatch)
    assert '<p class="level">Level 3</p>' in page(cert)
    assert markdown(cert).startswith("# Conformance certificate: level 3")


def test_provenance_names_the_harness_the_profile_the_seed_and_the_machine(monkeypatch):
    cert = certificate([OFFLINE_CREATE], None, monkeypatch)
    p = cert["provenance"]
    assert p["profile"]["sha256"] == hashlib.sha256(REFERENCE.read_bytes()).hexdigest()
    assert p["seed"] == 7 and p["harness"]["commit"] == "abc123" and p["harness"]["version"]
    assert set(p["machine"]) == {"hostname", "os", "cpus", "python"} and p["machine"]["cpus"] >= 1
    md, html = markdown(cert), page(cert)
    for shown in (p["profile"]["sha256"], "abc123", p["machine"]["hostname"], p["machine"]["python"]):
        assert shown in md and shown in html
    parse(html)


def test_require_level_with_a_selection_is_a_one_line_usage_error():
    result = CliRunner().invoke(app, ["certify", "--sut", str(REFERENCE), "-k", "create_a_new_account",
                                      "--require-level", "3"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "crm: error: --require-level needs the whole suite: a selection (-k) certifies no level"]


def test_no_toxiproxy_is_one_line_with_its_own_exit_code(tmp_path, monkeypatch):
    monkeypatch.setenv("TOXIPROXY_SERVER", str(tmp_path / "no-such-toxiproxy"))
    for argv in (["certify", "--sut", str(REFERENCE), "--report", str(tmp_path / "r")],
                 ["certify", "--sut", str(REFERENCE), "-k", "airplane", "--report", str(tmp_path / "r"), "--json"]):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 40, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "toxiproxy" in lines[0].lower() and "Traceback" not in result.output
    assert json.loads(lines[0])["error"] == "no_toxiproxy"
    assert not (tmp_path / "r" / "certificate.json").exists()


@pytest.mark.process
def test_list_shows_what_a_selection_runs_as_pytest_collects_it():
    done = subprocess.run([sys.executable, "-m", "cli.main", "certify", "--list", "-k", "airplane", "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    tests = {r["test"] for r in rows}
    assert "test_create_a_new_account_in_airplane_mode" in tests
    # -k matches pytest's keywords, the module name among them: a scenario of airplane_mode.feature
    # without "airplane" in its own name is selected too, as it would be in a run
    assert "test_forcequit_and_reopen_the_work_is_still_queued" in tests
    assert all(r["name"] and r["feature"] for r in rows)
    everything = subprocess.run([sys.executable, "-m", "cli.main", "certify", "--list"],
                                capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert everything.returncode == 0 and f"{len(coverage.scenarios())} scenario(s)" in everything.stdout


@pytest.mark.process
@pytest.mark.parametrize("argv", [["--list", "-k", "no_such_scenario_xyz"],
                                  ["--sut", str(REFERENCE), "-k", "no_such_scenario_xyz"]])
def test_an_empty_selection_is_one_line_with_its_own_exit_code(argv, tmp_path):
    done = subprocess.run([sys.executable, "-m", "cli.main", "certify", *argv, "--report", str(tmp_path)]
                          if "--sut" in argv else [sys.executable, "-m", "cli.main", "certify", *argv],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 41, done.stderr
    assert done.stderr.strip().splitlines() == [
        "crm: error: -k 'no_such_scenario_xyz' selects no scenario; `crm certify --list` shows them all"]
    assert done.stdout == "" and not (tmp_path / "certificate.json").exists()


@pytest.mark.process
def test_a_malformed_selection_is_a_usage_error():
    done = subprocess.run([sys.executable, "-m", "cli.main", "certify", "--list", "-k", "and and"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "-k" in done.stderr


@pytest.mark.process
@pytest.mark.conformance
def test_a_selection_of_a_level_2_sut_gives_a_partial_certificate_not_a_level(tmp_path):
    """The bug of issue 13, item 6: this used to print "level 3" and write a green Level 3 certificate."""
    report = tmp_path / "fragile"
    done = subprocess.run([sys.executable, "-m", "cli.main", "certify", "--sut",
                           str(ROOT / "fixtures" / "sut" / "fragile-sync.toml"), "-k", "create_a_new_account",
                           "--report", str(report), "--workers", "1", "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=CERTIFY_TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["level"] is None and summary["partial"] is True
    cert = json.loads((report / "certificate.json").read_text())
    assert cert["level"] is None and cert["partial"] and cert["partial_level"] == 3  # the selection alone passes
    assert cert["selection"]["tests"] == ["test_create_a_new_account_in_airplane_mode"]
    assert cert["provenance"]["harness"]["commit"] and cert["provenance"]["seed"] == 1
    html = (report / "certificate.html").read_text()
    parse(html)
    assert "PARTIAL" in html and not re.search(r"Level [123]", html)
    assert "PARTIAL" in (report / "certificate.md").read_text()
