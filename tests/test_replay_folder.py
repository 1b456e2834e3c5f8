"""Issue 13 item 7: a replay writes to a folder of its own and never overwrites the certificate of
the campaign (or certification) that found its schedule. In-process: nothing is started."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from harness import chaos
from harness.schedule import generate

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "fixtures" / "sut" / "reference.toml"


def campaign_folder(tmp_path: Path) -> tuple[Path, Path, str]:
    """A campaign's folder: its certificate and one minimal schedule file next to it."""
    folder = tmp_path / "chaos"
    folder.mkdir()
    certificate = json.dumps({"mode": "chaos", "passed": False})
    (folder / "certificate.json").write_text(certificate)
    schedule = generate(5, devices=2, steps=3)
    schedule.meta["sut"] = str(REFERENCE)
    return folder, schedule.save(folder / "chaos-lost-write-seed-5.json"), certificate


def test_a_replay_writes_next_to_its_file_in_a_folder_of_its_own(tmp_path, monkeypatch):
    folder, replay_file, certificate = campaign_folder(tmp_path)
    seen = {}

    def fake_campaign(sut, *, report_dir, replay, **_):
        seen.update(report_dir=Path(report_dir), steps=replay.steps)
        raise chaos.ReplayFolderError("stop here")  # nothing needs to run to know where it would write

    monkeypatch.setattr(chaos, "campaign", fake_campaign)
    result = CliRunner().invoke(app, ["certify", "--replay", str(replay_file)])
    assert seen["report_dir"] == folder / "replay-chaos-lost-write-seed-5"
    assert result.exit_code == 2
    assert (folder / "certificate.json").read_text() == certificate


def test_a_replay_into_a_folder_holding_another_runs_certificate_is_refused_before_anything_runs(tmp_path):
    folder, replay_file, certificate = campaign_folder(tmp_path)
    result = CliRunner().invoke(app, ["certify", "--replay", str(replay_file), "--report", str(folder)])
    assert result.exit_code == 2, result.output
    assert "never overwrites" in result.output and "chaos run" in result.output
    assert (folder / "certificate.json").read_text() == certificate
    assert not (folder / "raw").exists()  # nothing started, nothing written


def test_a_replay_may_write_over_an_earlier_replay_of_its_own():
    chaos.check_replay_folder(ROOT / "no-such-folder")  # an empty place is fine

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "certificate.json").write_text(json.dumps({"mode": "replay"}))
        chaos.check_replay_folder(tmp)  # a replay again: allowed
        (Path(tmp) / "certificate.json").write_text(json.dumps({"level": 3, "scenarios": []}))
        try:
            chaos.check_replay_folder(tmp)
        except chaos.ReplayFolderError as exc:
            assert "certification run" in str(exc)
        else:
            raise AssertionError("a certification's certificate must not be overwritten by a replay")
