"""What a failed scenario leaves a vendor to debug from: a setup that failed is BLOCKED, not a
failure of the behaviour; the failing step, the command that runs it alone, and the server's and
devices' logs and homes are kept next to the history (issue 13, item 7)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import CERTIFY_TIMEOUT, reference_profile_with

ROOT = Path(__file__).resolve().parent.parent


def _refusing_profile(tmp_path: Path) -> Path:
    """The reference, except that every create is refused (exit 3, not saved), online or not."""
    def change(data: dict) -> None:
        data["actions"]["create_account"] = ["{python}", "-c", "import sys; sys.exit(3)"]

    return reference_profile_with(tmp_path, "refusing", change)


def _certify(profile: Path, report: Path, *args: str) -> dict:
    subprocess.run([sys.executable, "-m", "cli.main", "certify", "--sut", str(profile), "--report", str(report),
                    "--json", *args], capture_output=True, text=True, cwd=ROOT, timeout=CERTIFY_TIMEOUT)
    return json.loads((report / "certificate.json").read_text())


@pytest.mark.process
@pytest.mark.conformance
def test_a_failed_setup_is_blocked_and_every_failure_leaves_its_evidence(tmp_path):
    profile = _refusing_profile(tmp_path)
    cert = _certify(profile, tmp_path / "r", "-k", "log_an_activity or create_a_new_account_in_airplane",
                    "--workers", "2")
    by_name = {v["name"]: v for v in cert["scenarios"]}
    visit = by_name["Log an activity or visit in airplane mode"]
    assert visit["blocked"] and not visit["passed"] and not visit["anomalies"]
    assert visit["failed_step"]["type"] == "given" and "reached the office" in visit["failed_step"]["text"]
    create = by_name["Create a new account in airplane mode"]
    assert not create["blocked"] and [a["check"] for a in create["anomalies"]] == ["refused"]
    for v in (visit, create):
        kept = tmp_path / "r" / "raw" / v["evidence_dir"]
        assert (kept / "logs" / "server.err").is_file() and (kept / "home-phone").is_dir()
    markdown = (tmp_path / "r" / "certificate.md").read_text()
    assert "BLOCKED" in markdown and "Run it alone: `crm certify" in markdown
    # The command that runs it alone selects exactly that scenario.
    argv = shlex.split(create["reproduce"])
    k = argv[argv.index("-k") + 1]
    alone = _certify(profile, tmp_path / "alone", "-k", k, "--seed", argv[argv.index("--seed") + 1])
    assert [v["name"] for v in alone["scenarios"]] == [create["name"]]
