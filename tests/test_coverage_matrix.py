"""The coverage matrix is generated from the feature files: every cell that applies has a
scenario, every scenario's test id is what pytest-bdd collects, and the docs show it as it is."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness import coverage

FOUND = coverage.scenarios()


def test_every_cell_that_applies_has_a_scenario():
    assert coverage.uncovered(FOUND) == []
    assert coverage.unknown_rows(FOUND) == []


def test_a_cell_without_a_scenario_is_found(tmp_path):
    text = (coverage.FEATURES / "fault_matrix.feature").read_text(encoding="utf-8")
    (tmp_path / "fault_matrix.feature").write_text(text.replace("      | stall | background |\n", ""),
                                                   encoding="utf-8")
    missing = coverage.uncovered(coverage.scenarios(tmp_path))
    assert {(f, m) for _, f, m in missing} >= {("stall", "background")}
    assert {w for w, f, m in missing if (f, m) == ("stall", "background")} == set(coverage.WRITES)


def test_every_not_applicable_cell_says_why_and_names_a_real_cell():
    for (fault, mode), why in coverage.NOT_APPLICABLE.items():
        assert fault in coverage.FAULTS and mode in coverage.MODES and len(why) > 20


def test_every_write_of_the_contract_is_a_column():
    rows = [sc for sc in FOUND if sc.cell_key]
    assert rows and all(sc.writes == coverage.WRITES for sc in rows)


def test_scenario_names_and_test_ids_are_unique():
    assert len({sc.name for sc in FOUND}) == len(FOUND)
    assert len({sc.test for sc in FOUND}) == len(FOUND)


def test_the_docs_show_the_matrix_and_the_catalogue_as_generated():
    for path, text in coverage.rendered(FOUND).items():
        assert path.read_text(encoding="utf-8") == text, \
            f"{path.name} is stale: run `python -m harness.coverage --write`"


@pytest.mark.process
def test_the_test_ids_are_the_ones_pytest_bdd_collects():
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           str(coverage.FEATURES)], capture_output=True, text=True, cwd=coverage.ROOT, timeout=120)
    collected = {line.split("::", 1)[1] for line in done.stdout.splitlines() if "::" in line}
    assert {sc.test for sc in FOUND} == collected, done.stdout[-2000:]
