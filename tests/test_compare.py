"""`crm certify compare` (issue 13, item 3): certificates side by side, from small certificates
written by the report module itself (no run needed)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from harness import certify as certify_mod
from harness import compare
from harness.report import write_reports
from tests.test_certify_partial import LOST, OFFLINE_CREATE, parse

INCONCLUSIVE = {"name": "Lost answer", "test": "test_lost_answer", "feature": "Fault matrix", "passed": False,
                "inconclusive": "the answer had already arrived", "offline_create_refused": None, "anomalies": [],
                "duration_s": 2.0}
CHAOS = {"name": "chaos stage: 3 seeded run(s) of 3 devices (seed 7)", "feature": "Chaos", "passed": True,
         "anomalies": [], "offline_create_refused": None, "duration_s": 30.0}


def write(folder: Path, name: str, verdicts: list[dict], select: str | None, monkeypatch) -> Path:
    monkeypatch.setattr(certify_mod, "_git_commit", lambda: {"commit": "abc123", "dirty": False})
    cert = {**certify_mod.level_fields(verdicts, select), "sut": {"name": name, "version": "1.0", "profile": "p"},
            "suite": {"name": "s", "version": "1.0", "selection": select or "all"}, "seed": 7,
            "provenance": certify_mod.provenance(__file__, 7), "workers": 1, "started_at": "t", "duration_s": 9.5,
            "chaos": {"runs": 0}, "checks": certify_mod._check_table(verdicts), "scenarios": verdicts,
            "summary": {"scenarios": len(verdicts), "passed": sum(v["passed"] for v in verdicts),
                        "failed": 0, "inconclusive": 0, "actions": 0, "faults": 0}}
    folder.mkdir(parents=True)
    write_reports(cert, folder)
    return folder


def test_compare_puts_each_scenario_of_each_sut_in_one_grid(tmp_path, monkeypatch):
    ref = write(tmp_path / "ref", "reference", [OFFLINE_CREATE, CHAOS], None, monkeypatch)
    fragile = write(tmp_path / "fragile", "fragile", [OFFLINE_CREATE, LOST, INCONCLUSIVE, CHAOS], None, monkeypatch)
    partial = write(tmp_path / "partial", "vendor", [OFFLINE_CREATE], "airplane", monkeypatch)
    data = compare.compare([ref, fragile, partial])
    assert [s["verdict"] for s in data["suts"]] == ["level 3", "level 2", "PARTIAL"]
    rows = {r["scenario"]: r["cells"] for r in data["scenarios"]}
    assert rows[LOST["name"]]["fragile"]["verdict"] == "FAIL" and rows[LOST["name"]]["fragile"]["checks"] == ["lost_write"]
    assert "reference" not in rows[LOST["name"]]  # not run there
    assert rows["Lost answer"]["fragile"]["verdict"] == "INCONCLUSIVE"
    assert set(rows["chaos stage"]) == {"reference", "fragile"}
    assert data["checks"]["lost_write"] == {"reference": 0, "fragile": 1, "vendor": 0}

    html = compare.page(data)
    parsed = parse(html)  # well-formed
    assert "<link" not in html and "<script" not in html and "src=" not in html  # self-contained
    assert html.count('class="cell"') == len(data["scenarios"]) * 3
    text = " ".join(parsed.text)
    assert "LEVEL 3" in text and "PARTIAL" in text and "lost_write" in text
    md = compare.markdown(data)
    assert "| verdict | **level 3** | **level 2** | **PARTIAL** |" in md and "not run" in md
    assert "| claim | offline-first | offline writes | PARTIAL |" in md  # the level's name, its limits named


def test_the_compare_command_writes_the_three_files(tmp_path, monkeypatch):
    a = write(tmp_path / "a", "reference", [OFFLINE_CREATE], None, monkeypatch)
    b = write(tmp_path / "b", "reference", [OFFLINE_CREATE, LOST], None, monkeypatch)  # same name: folder tells apart
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["certify", "compare", str(a), str(b), "--report", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [s["label"] for s in data["suts"]] == ["reference (a)", "reference (b)"]
    for name in ("comparison.html", "comparison.md", "comparison.json"):
        assert (out / name).stat().st_size > 200
    parse((out / "comparison.html").read_text())
    missing = CliRunner().invoke(app, ["certify", "compare", str(a), str(tmp_path / "nothing")])
    assert missing.exit_code == 3 and "no certificate.json" in missing.stderr
