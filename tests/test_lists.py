"""Lists (issue 14, item 2): a page of rows by default (--limit, --all), aligned columns cut to
the terminal with short ids and whole right-aligned money, $PAGER on a terminal, tab-separated
plain text when piped; --json unchanged. And naming records on the command line (item 1)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import output
from crm.search import short_id
from tests.support import crm_inprocess, ok_inprocess

runner = CliRunner()


def crm(home: Path, *args: str, env: dict[str, str] | None = None):
    return crm_inprocess(*args, home=home, env=env)


def ok_json(home: Path, *args: str):
    return ok_inprocess(home, *args)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    assert crm(path, "init", "--rep", "rep-1").exit_code == 0
    return path


@pytest.fixture
def many(home: Path) -> list[str]:
    """60 accounts, imported in one go."""
    csv = home.parent / "accounts.csv"
    csv.write_text("name,city,external_ref\n" + "".join(f"Shop {i},Leeds,REF-{i}\n" for i in range(60)))
    assert crm(home, "import", "accounts", str(csv)).exit_code == 0
    return [row["id"] for row in ok_json(home, "account", "ls")]


def test_a_piped_table_is_tab_separated_with_whole_values(home: Path) -> None:
    rid = ok_json(home, "account", "add", "--name", "Café\tMüller", "--city", "Zürich")["id"]
    result = crm(home, "account", "ls")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["id\tname\tcity\tpostcode\towner", f"{rid}\tCafé Müller\tZürich\t\trep-1"]


def test_ls_shows_a_page_and_says_how_many_more(home: Path, many: list[str]) -> None:
    assert len(many) == 60  # --json: every row, as before
    result = crm(home, "account", "ls")
    assert len(result.stdout.splitlines()) == 1 + output.DEFAULT_PAGE
    assert "10 more (of 60)" in result.stderr and "--all" in result.stderr
    every = crm(home, "account", "ls", "--all")
    assert len(every.stdout.splitlines()) == 61 and "more" not in every.stderr
    some = crm(home, "account", "ls", "--limit", "3")
    assert [line.split("\t")[0] for line in some.stdout.splitlines()[1:]] == many[:3]
    assert len(ok_json(home, "account", "ls", "--limit", "2")) == 2
    refused = crm(home, "account", "ls", "--limit", "3", "--all")
    assert refused.exit_code == 2 and "not both" in refused.stderr
    for command in (("contact", "ls"), ("visit", "ls"), ("order", "ls"), ("note", "ls"), ("product", "ls"),
                    ("search", "shop")):
        assert crm(home, *command, "--all").exit_code == 0, command
    assert len(crm(home, "search", "shop").stdout.splitlines()) == 1 + output.DEFAULT_PAGE


def test_a_terminal_table_fits_80_columns_and_never_splits_money() -> None:
    order = {"id": "01a23714-4628-7eba-b107-2ce5e644acae", "account": "01a23714-3b3c-7e1a-b743-fc670537ee28",
             "status": "submitted", "lines": 12, "total": "1234567.48", "currency": "GBP",
             "placed_at": "2026-12-02T14:06:45Z", "note": "a long remark " * 8}
    columns = ("id", "account", "status", "lines", "total", "currency", "placed_at", "note")
    lines = output.format_table([order, {**order, "total": "42.48"}], columns, width=80)
    assert all(len(line) <= 80 for line in lines), lines
    header, _, first, second = lines
    assert "1234567.48" in first and "42.48" in second
    assert first.index("1234567.48") + len("1234567.48") == second.index("42.48") + len("42.48")  # right-aligned
    assert first.startswith("e644acae  0537ee28  submitted")  # short ids from the random tail
    assert "\u2026" in first  # the long text is what gets cut


def test_a_long_table_goes_through_the_pager_on_a_terminal(monkeypatch) -> None:
    written: list[bytes] = []

    class Pager:
        def __init__(self, command, **kwargs):
            assert command == "my-pager" and kwargs["env"]["LESS"] == "FRX"
            self.stdin = self

        def write(self, data: bytes) -> None:
            written.append(data)

        def close(self) -> None:
            pass

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", Pager)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}" if name == "my-pager" else None)
    monkeypatch.setenv("PAGER", "my-pager")
    monkeypatch.delenv("LESS", raising=False)
    output.page_lines([f"row {i}" for i in range(30)], height=24)
    assert written and written[0].decode().splitlines()[-1] == "row 29"
    written.clear()
    output.page_lines(["one", "two"], height=24)  # fits the screen: printed directly
    assert written == []
    monkeypatch.setenv("PAGER", "no-such-pager --flag")
    output.page_lines([f"row {i}" for i in range(30)], height=24)  # not installed: printed directly
    assert written == []


def test_the_cli_uses_the_terminal_table_when_stdout_is_a_terminal(home: Path, monkeypatch) -> None:
    rid = ok_json(home, "account", "add", "--name", "Corner Store", "--city", "Leeds")["id"]
    monkeypatch.setattr(output, "_is_terminal", lambda: True)
    result = crm(home, "account", "ls", env={"COLUMNS": "80", "LINES": "40", "PAGER": ""})
    assert result.stdout.splitlines()[2].startswith(f"{short_id(rid)}  Corner Store")


def test_every_id_option_takes_a_short_id_an_external_ref_or_a_name(home: Path) -> None:
    rid = ok_json(home, "account", "add", "--name", "Café Müller", "--external-ref", "ACC-1002")["id"]
    assert ok_json(home, "account", "show", short_id(rid))["id"] == rid
    assert ok_json(home, "contact", "add", "--account", "ACC-1002", "--name", "Sam")["account"] == rid
    visit = ok_json(home, "visit", "log", "--account", "cafe muller", "--outcome", "met")
    assert visit["account"] == rid
    order = ok_json(home, "order", "add", "--account", short_id(rid)[:5], "--line", "SKU-1:3:14.16")
    assert ok_json(home, "order", "show", short_id(order["id"]))["total"] == "42.48"
    note = ok_json(home, "note", "add", "--visit", short_id(visit["id"]), "--text", "x")
    assert note["visit"] == visit["id"]
    assert [v["id"] for v in ok_json(home, "visit", "ls", "--account", "ACC-1002")] == [visit["id"]]
    assert ok_json(home, "account", "edit", "acc-1002", "--city", "York")["city"] == "York"
    assert crm(home, "account", "ls", "--city", "YORK").stdout.count(rid) == 1


def test_an_ambiguous_name_exits_13_and_lists_the_candidates_on_stderr(home: Path) -> None:
    first = ok_json(home, "account", "add", "--name", "Corner Store")["id"]
    second = ok_json(home, "account", "add", "--name", "corner  STORE")["id"]
    result = crm(home, "visit", "log", "--account", "Corner Store", "--outcome", "x")
    assert result.exit_code == 13 and result.stdout == ""
    assert first in result.stderr and second in result.stderr and short_id(first) in result.stderr
    as_json = crm(home, "account", "rm", "corner store", "--json")
    error = json.loads(as_json.stderr)
    assert error["error"] == "ambiguous" and {c["id"] for c in error["details"]["candidates"]} == {first, second}
    assert ok_json(home, "visit", "ls") == []  # nothing was written
