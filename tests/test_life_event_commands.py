"""A SUT whose state a plain copy cannot back up names its own backup and restore commands
(docs/driver-contract.md, "Life events"); the harness runs them instead of copying."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.history import History
from tests.support import CERTIFY_TIMEOUT, reference_profile_with

ROOT = Path(__file__).resolve().parent.parent
COPY = ["{python}", "-c", "import pathlib, shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True); "
        "pathlib.Path(sys.argv[3]).touch()"]


def _profile(tmp_path: Path) -> Path:
    marks = tmp_path / "marks"
    marks.mkdir()

    def change(data: dict) -> None:
        data["device"]["backup"] = [*COPY, "{home}", "{backup_dir}", f"{marks}/device-backup"]
        data["device"]["restore"] = [*COPY, "{backup_dir}", "{home}", f"{marks}/device-restore"]
        data["server"]["backup"] = [*COPY, "{server_dir}", "{backup_dir}", f"{marks}/server-backup"]
        data["server"]["restore"] = [*COPY, "{backup_dir}", "{server_dir}", f"{marks}/server-restore"]

    return reference_profile_with(tmp_path, "with-life-commands", change)


@pytest.mark.process
@pytest.mark.conformance
@pytest.mark.slow
def test_the_profiles_backup_and_restore_commands_make_the_life_events(tmp_path):
    profile = _profile(tmp_path)
    report = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "cli.main", "certify", "--sut", str(profile), "--report", str(report),
                           "-k", "phone_is_restored or copied_onto or server_is_restored", "--workers", "2",
                           "--json"], capture_output=True, text=True, cwd=ROOT, timeout=CERTIFY_TIMEOUT)
    cert = json.loads((report / "certificate.json").read_text())
    assert len(cert["scenarios"]) == 3 and all(v["passed"] for v in cert["scenarios"]), done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "marks").iterdir()) == [
        "device-backup", "device-restore", "server-backup", "server-restore"]
    details = [e.detail for v in cert["scenarios"] for e in History.load(report / "raw" / v["history"])
               if e.type == "life"]
    assert any("profile's backup command" in d for d in details)
    assert any("profile's restore command" in d for d in details)
