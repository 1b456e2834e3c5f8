"""`crm order line edit|rm`: fixing a mistyped line on a draft order (issue 14 item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def crm(home: Path, *args: str):
    return runner.invoke(app, ["--home", str(home), *args])


def ok_json(home: Path, *args: str):
    result = crm(home, *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def pending(home: Path) -> int:
    return ok_json(home, "outbox")["pending"]


@pytest.fixture
def order(tmp_path: Path) -> tuple[Path, dict]:
    home = tmp_path / "home"
    assert crm(home, "init", "--rep", "rep-1").exit_code == 0
    account = ok_json(home, "account", "add", "--name", "Corner Store")["id"]
    return home, ok_json(home, "order", "add", "--account", account, "--line", "SKU-1:30:2.50",
                         "--line", "SKU-2:1:1.00")


def test_a_mistyped_quantity_is_fixed_in_place(order) -> None:
    home, placed = order
    line = placed["lines"][0]["id"]
    edited = ok_json(home, "order", "line", "edit", placed["id"], line, "--quantity", "3")
    assert edited == {"id": line, "order": placed["id"], "sku": "SKU-1", "quantity": 3, "unit_price": "2.50"}
    shown = ok_json(home, "order", "show", placed["id"])
    assert shown["total"] == "8.50" and [ln["id"] for ln in shown["lines"]] == [ln["id"] for ln in placed["lines"]]
    ok_json(home, "order", "line", "edit", placed["id"], line, "--price", "2.4")
    assert ok_json(home, "order", "show", placed["id"])["total"] == "8.20"
    text = crm(home, "order", "line", "edit", placed["id"], line.upper(), "--quantity", "4")
    assert text.exit_code == 0 and text.stdout.strip() == line


def test_a_line_is_removed_and_the_total_follows(order) -> None:
    home, placed = order
    line = placed["lines"][1]["id"]
    assert ok_json(home, "order", "line", "rm", placed["id"], line) == {"id": line, "order": placed["id"],
                                                                          "removed": True}
    shown = ok_json(home, "order", "show", placed["id"])
    assert (shown["total"], len(shown["lines"])) == ("75.00", 1)
    again = crm(home, "order", "line", "rm", placed["id"], line)
    assert again.exit_code == 4 and "removed" in again.stderr


@pytest.mark.parametrize(("args", "code", "words"), [
    (("--quantity", "0"), 3, "quantity"),
    (("--quantity", "three"), 3, "quantity"),
    (("--price", "-1"), 3, "unit_price"),
    (("--price", "abc"), 3, "decimal"),
    ((), 3, "nothing to change"),
])
def test_bad_edits_are_refused_and_nothing_is_queued(order, args, code, words) -> None:
    home, placed = order
    before = pending(home)
    result = crm(home, "order", "line", "edit", placed["id"], placed["lines"][0]["id"], *args)
    assert result.exit_code == code and words in result.stderr and "Traceback" not in result.stderr
    assert pending(home) == before


def test_lines_of_a_submitted_order_cannot_change_and_unknown_lines_are_not_found(order) -> None:
    home, placed = order
    before = pending(home)
    missing = crm(home, "order", "line", "edit", placed["id"], "00000000-0000-4000-8000-000000000000",
                  "--quantity", "2")
    assert missing.exit_code == 4 and "no line" in missing.stderr
    assert crm(home, "order", "line", "rm", "no-such-order", placed["lines"][0]["id"]).exit_code == 4
    ok_json(home, "order", "submit", placed["id"])
    for args in (("edit", placed["id"], placed["lines"][0]["id"], "--quantity", "2"),
                 ("rm", placed["id"], placed["lines"][0]["id"])):
        refused = crm(home, "order", "line", *args)
        assert refused.exit_code == 10 and "submitted" in refused.stderr
    assert pending(home) == before + 1  # the submit only


def test_the_submitted_order_holds_what_the_device_showed(order) -> None:
    home, placed = order
    ok_json(home, "order", "line", "rm", placed["id"], placed["lines"][1]["id"])
    submitted = ok_json(home, "order", "submit", placed["id"])
    assert (submitted["total"], len(submitted["lines"])) == ("75.00", 1)
    assert "submission" not in submitted, "bookkeeping, not a field of the order"
    assert ok_json(home, "conflicts", "ls") == []
    assert json.loads(crm(home, "export").stdout)["order"][0] == submitted
