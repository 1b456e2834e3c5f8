"""`crm certify check`, `try` and `--smoke` (issue 13, item 2): a profile tried in seconds against
the real reference, and against a copy broken on purpose, which must produce named violations.
And the "certify your client" walkthrough of docs/driver-contract.md, run as written."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harness import check
from tests.support import CERTIFY_TIMEOUT

pytestmark = pytest.mark.process  # real servers, real devices

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "fixtures" / "sut" / "reference.toml"


def crm(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    """The reference with three contract violations: create_account prints its id as text (no
    --json), start_background_sync reports no pid, the server's export is not crm-export/1."""
    text = REFERENCE.read_text()
    path = tmp_path_factory.mktemp("broken") / "broken.toml"
    text, n1 = re.subn(r'(create_account = \[.*), "--json"\]', r"\1]", text)
    text, n2 = re.subn(r"start_background_sync = \[.*\]", """start_background_sync = ["{python}", "-c", "print('{{}}')"]""", text)
    text, n3 = re.subn(r'^export = \["crm", "server".*$', """export = ["{python}", "-c", "print('{{\\\\"format\\\\": \\\\"csv\\\\"}}')"]""",
                       text, flags=re.MULTILINE)
    assert (n1, n2, n3) == (1, 1, 1)
    path.write_text(text)
    return path


def test_check_of_the_reference_finds_no_violation_and_says_what_it_understood():
    report = check.check(REFERENCE)
    assert report.ok, check.text(report)
    actions = [s.action for s in report.steps]
    for action in ("server.start", "server.provision", "device.init", "create_account", "log_visit", "take_order",
                   "add_order_line", "write_note", "edit_field", "delete_record", "outbox", "sync", "export",
                   "server.export", "start_background_sync", "stop_background_sync"):
        assert action in actions
    assert all(s.outcome == "ok" and s.exit in (0, None) for s in report.steps)
    assert report.step("create_account").understood["id"]
    assert report.step("create_account").argv[:3] == ["crm", "--home", report.step("create_account").argv[2]]
    assert report.step("outbox").understood["pending"] > 0 and report.step("outbox (after sync)").understood == {"pending": 0}
    assert report.step("export").understood["sections"]["account"] == 2
    assert report.step("server.export").understood["sections"] == report.step("export").understood["sections"]
    assert isinstance(report.step("start_background_sync").understood["pid"], int)
    # A hang shows as a step that timed out (outcome above); this bound is only a safety net, far
    # above what a loaded 2-core CI machine takes (a test bound to the machine's speed is a bug).
    assert report.duration_s < 600


def test_check_names_each_violation_of_a_broken_profile_with_its_section(broken):
    report = check.check(broken)
    found = {(step.action, v.section) for step, v in report.violations}
    assert ("create_account", check.RUNNING) in found
    assert ("start_background_sync", check.FORCE_QUIT) in found
    assert ("server.export", check.EXPORT) in found
    create = report.step("create_account")
    assert create.exit == 0 and "stdout is not the action's JSON" in create.violations[0].message
    assert report.step("log_visit").outcome == "skipped"  # no id to log a visit against
    # the export's JSON Schema names the field that is wrong
    assert any(v.message.startswith("$.format:") for v in report.step("server.export").violations)


def test_the_check_command_exits_32_on_a_violation_and_gives_the_same_as_json(broken):
    done = crm("certify", "check", str(broken), "--json")
    assert done.returncode == 32, done.stderr
    data = json.loads(done.stdout)
    assert data["ok"] is False and data["violations"] >= 3
    create = next(s for s in data["steps"] if s["action"] == "create_account")
    assert create["command"].startswith("crm --home ") and create["exit"] == 0
    assert create["violations"][0]["read"] == 'docs/driver-contract.md, "How the harness runs a command"'
    text = crm("certify", "check", str(broken))
    assert text.returncode == 32 and "violation: stdout is not the action's JSON" in text.stdout
    assert 'read docs/driver-contract.md, "Force-quit: SIGKILL"' in text.stdout


def test_try_runs_one_action_after_making_the_records_it_needs():
    done = crm("certify", "try", str(REFERENCE), "log_visit", "outcome=met the buyer", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    steps = [s["action"] for s in json.loads(done.stdout)["steps"]]
    assert steps == ["server.start", "server.provision", "device.init", "create_account (setup)", "log_visit", "export"]
    visit = json.loads(done.stdout)["steps"][4]
    assert "--outcome 'met the buyer'" in visit["command"] and visit["understood"]["id"]


def test_try_of_a_broken_write_is_a_violation_and_bad_arguments_are_usage_errors(broken):
    done = crm("certify", "try", str(broken), "create_account", "name=Corner Store", "city=Leeds")
    assert done.returncode == 32 and "stdout is not the action's JSON" in done.stdout
    for argv, words in ((["create_account", "colour=red"], "takes no argument 'colour'"),
                        (["make_coffee"], "not a contract action"), (["create_account", "name"], "KEY=VALUE")):
        bad = crm("certify", "try", str(REFERENCE), *argv)
        assert bad.returncode == 2 and words in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_smoke_passes_on_the_reference_and_fails_on_a_write_without_json(broken):
    ok = crm("certify", "--sut", str(REFERENCE), "--smoke")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "smoke of crm reference: no contract violation" in ok.stdout
    bad = crm("certify", "--sut", str(broken), "--smoke", "--json")
    assert bad.returncode == 33 and json.loads(bad.stdout)["ok"] is False


def walkthrough() -> list[str]:
    """The command lines of docs/driver-contract.md, "Certify your client, step by step"."""
    text = (ROOT / "docs" / "driver-contract.md").read_text()
    section = text.split("## Certify your client, step by step", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    return [line for line in block.splitlines() if line.startswith("crm ")]


@pytest.mark.conformance
def test_the_walkthrough_runs_as_written(tmp_path):
    lines = walkthrough()
    assert [shlex.split(line)[1:3][0] for line in lines][:2] == ["certify", "certify"] and len(lines) == 6
    *steps, full = lines
    assert "-k" not in full and "--report" in full  # the full certification: tests/test_calibration.py runs it
    for line in steps:
        argv = [str(REFERENCE) if a == "my-client.toml" else str(tmp_path / a) if a.startswith("reports/") else a
                for a in shlex.split(line)[1:]]
        done = crm(*argv, timeout=CERTIFY_TIMEOUT)
        assert done.returncode == 0, f"{line}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert json.loads((tmp_path / "reports" / "my-client-partial" / "certificate.json").read_text())["partial"]
