"""The crm CLI in-process (typer's CliRunner): every command, its JSON and human output, and
every documented exit code with a clear message, no traceback and nothing written."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import COMMANDS, app

runner = CliRunner()


def crm(home: Path | None, *args: str, env: dict[str, str] | None = None):
    argv = (["--home", str(home)] if home is not None else []) + list(args)
    return runner.invoke(app, argv, env=env)


def ok_json(home: Path, *args: str):
    result = crm(home, *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def pending(home: Path) -> int:
    """The outbox size, read with plain sqlite3 so it works whatever state the CLI refuses."""
    with sqlite3.connect(home / "crm.sqlite3") as conn:
        return conn.execute("SELECT count(*) FROM outbox").fetchone()[0]


def assert_refused(result, code: int, *words: str) -> None:
    """A failure: the documented code, a message naming the problem, no traceback, no data."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stdout == ""
    for word in words:
        assert word in result.stderr, (word, result.stderr)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    result = crm(path, "init", "--rep", "rep-1")
    assert result.exit_code == 0, result.stderr
    return path


@pytest.fixture
def account(home: Path) -> str:
    return ok_json(home, "account", "add", "--name", "Corner Store 42", "--city", "Leeds")["id"]


# -- the acceptance sequence and every write --------------------------------------------------
def test_field_workflow_is_queued_and_exported(tmp_path: Path) -> None:
    home = tmp_path / "h"
    device = ok_json(home, "init", "--rep", "rep-1")
    assert device["rep"] == "rep-1" and device["id"]
    account = ok_json(home, "account", "add", "--name", "Corner Store 42", "--city", "Leeds")["id"]
    visit = ok_json(home, "visit", "log", "--account", account, "--outcome", "met the buyer")
    order = ok_json(home, "order", "add", "--account", account, "--line", "SKU-1:3:2.50")
    note = ok_json(home, "note", "add", "--account", account, "--text", "Wants a callback Tuesday")

    outbox = ok_json(home, "outbox")
    assert outbox["pending"] == 4
    assert [e["id"] for e in outbox["entries"]] == [account, visit["id"], order["id"], note["id"]]

    exported = ok_json(home, "export")
    assert [a["name"] for a in exported["account"]] == ["Corner Store 42"]
    assert exported["visit"][0]["outcome"] == "met the buyer"
    assert exported["order"][0]["lines"][0] | {"id": None} == {
        "id": None, "sku": "SKU-1", "quantity": 3, "unit_price": "2.50"}
    assert exported["order"][0]["total"] == "7.50"
    assert exported["note"][0]["text"] == "Wants a callback Tuesday"


def test_init_stores_server_settings(tmp_path: Path) -> None:
    home = tmp_path / "h"
    ok_json(home, "init", "--rep", "rep-2", "--server", "http://127.0.0.1:9", "--token", "t0k")
    with sqlite3.connect(home / "crm.sqlite3") as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert meta["server_url"] == "http://127.0.0.1:9" and meta["token"] == "t0k"


def test_home_from_environment_and_flag_wins(tmp_path: Path) -> None:
    env_home, flag_home = tmp_path / "env", tmp_path / "flag"
    assert crm(None, "init", "--rep", "a", env={"CRM_HOME": str(env_home)}).exit_code == 0
    assert (env_home / "crm.sqlite3").is_file()
    assert crm(flag_home, "init", "--rep", "b", env={"CRM_HOME": str(env_home)}).exit_code == 0
    assert (flag_home / "crm.sqlite3").is_file()


def test_human_output_is_a_short_line_or_a_table(home: Path, account: str) -> None:
    added = crm(home, "account", "add", "--name", "Second Shop", "--city", "York")
    assert added.exit_code == 0
    new_id = added.stdout.strip()
    assert len(new_id) == 36 and new_id != account  # just the id: A=$(crm account add ...) works
    listing = crm(home, "account", "ls")
    assert "Corner Store 42" in listing.stdout and "Second Shop" in listing.stdout
    assert account in listing.stdout  # ids are never folded or truncated
    shown = crm(home, "account", "show", account)
    assert "Leeds" in shown.stdout and "visit: 0" in shown.stdout


def test_account_edit_by_option_and_by_set(home: Path, account: str) -> None:
    edited = ok_json(home, "account", "edit", account, "--phone", "0113 496 0000",
                     "--set", "postcode=LS1 1AA", "--set", "external-ref=X-1")
    assert edited["id"] == account
    assert (edited["phone"], edited["postcode"], edited["external_ref"]) == ("0113 496 0000", "LS1 1AA", "X-1")
    cleared = ok_json(home, "account", "edit", account, "--set", "city=")
    assert cleared.get("city") is None and cleared["name"] == "Corner Store 42"
    assert pending(home) == 3


def test_every_editable_entity_has_edit_with_set(home: Path, account: str) -> None:
    """`crm {entity} edit ID --set field=value` is the harness's edit_field action."""
    contact = ok_json(home, "contact", "add", "--account", account, "--name", "Sam", "--phone", "1")["id"]
    visit = ok_json(home, "visit", "log", "--account", account, "--outcome", "first look")["id"]
    order = ok_json(home, "order", "add", "--account", account, "--line", "SKU-1:1:1")["id"]
    assert ok_json(home, "contact", "edit", contact, "--set", "role=owner", "--set", "phone=")["role"] == "owner"
    assert ok_json(home, "export")["contact"][0]["phone"] is None
    assert ok_json(home, "visit", "edit", visit, "--set", "outcome=order next week")["outcome"] == "order next week"
    assert ok_json(home, "order", "edit", order, "--set", "currency=eur")["currency"] == "EUR"
    before = pending(home)
    assert_refused(crm(home, "visit", "edit", visit, "--set", "account=" + account), 3, "cannot be changed")
    assert_refused(crm(home, "order", "edit", order, "--set", "status=submitted"), 3, "submit")
    assert pending(home) == before


def test_account_ls_filters_limits_and_shows_deleted(home: Path, account: str) -> None:
    other = ok_json(home, "account", "add", "--name", "Hull Mart", "--city", "Hull")["id"]
    assert [a["id"] for a in ok_json(home, "account", "ls", "--city", "Hull")] == [other]
    assert len(ok_json(home, "account", "ls", "--limit", "1")) == 1
    assert ok_json(home, "account", "rm", account) == {"id": account, "deleted": True}
    assert [a["id"] for a in ok_json(home, "account", "ls")] == [other]
    with_deleted = ok_json(home, "account", "ls", "--deleted")
    assert {a["id"]: a.get("deleted", False) for a in with_deleted} == {account: True, other: False}
    assert_refused(crm(home, "account", "show", account), 4, "deleted")


def test_contacts_visits_and_notes_list_by_account(home: Path, account: str) -> None:
    other = ok_json(home, "account", "add", "--name", "Other")["id"]
    contact = ok_json(home, "contact", "add", "--account", account, "--name", "Sam Patel",
                      "--role", "buyer", "--email", "sam@example.com")
    ok_json(home, "contact", "add", "--account", other, "--name", "Jo")
    assert [c["id"] for c in ok_json(home, "contact", "ls", "--account", account)] == [contact["id"]]
    assert len(ok_json(home, "contact", "ls")) == 2

    visit = ok_json(home, "visit", "log", "--account", account, "--outcome", "demo", "--at",
                    "2026-03-01T10:00:00+01:00", "--duration", "25", "--notes", "long chat",
                    "--lat", "53.8", "--lon", "-1.55")
    assert (visit["at"], visit["duration_min"], visit["lat"]) == ("2026-03-01T10:00:00+01:00", 25, 53.8)
    assert [v["id"] for v in ok_json(home, "visit", "ls", "--account", account)] == [visit["id"]]
    assert ok_json(home, "visit", "ls", "--account", other) == []

    note = ok_json(home, "note", "add", "--visit", visit["id"], "--text", "follow up")
    assert note["account"] == account and note["visit"] == visit["id"]
    assert [n["id"] for n in ok_json(home, "note", "ls", "--account", account)] == [note["id"]]


def test_order_lifecycle(home: Path, account: str) -> None:
    order = ok_json(home, "order", "add", "--account", account, "--line", "SKU-1:3:2.50",
                    "--line", "SKU-2:1:10", "--currency", "eur")
    assert (order["status"], order["currency"], order["total"]) == ("draft", "EUR", "17.50")
    line = ok_json(home, "order", "add-line", order["id"], "--line", "SKU-3:2:0.99")
    assert line["order"] == order["id"] and line["sku"] == "SKU-3"
    assert ok_json(home, "order", "show", order["id"])["total"] == "19.48"
    assert ok_json(home, "order", "submit", order["id"])["status"] == "submitted"
    before = pending(home)
    assert_refused(crm(home, "order", "add-line", order["id"], "--line", "SKU-4:1:1"), 10, "submitted")
    assert_refused(crm(home, "order", "submit", order["id"]), 10, "forward")
    assert pending(home) == before
    assert ok_json(home, "order", "cancel", order["id"])["status"] == "cancelled"
    listed = crm(home, "order", "ls", "--account", account)
    assert order["id"] in listed.stdout and "cancelled" in listed.stdout


@pytest.mark.parametrize(("line", "part"), [
    ("SKU-1", "expected SKU:QTY"),
    ("SKU-1:3:2.50:9", "expected SKU:QTY"),
    (":3:2.50", "SKU is empty"),
    ("SKU-1:three:2.50", "quantity 'three'"),
    ("SKU-1:-3:2.50", "quantity '-3'"),
    ("SKU-1:3:cheap", "unit price 'cheap'"),
])
def test_malformed_order_line_names_the_bad_part(home: Path, account: str, line: str, part: str) -> None:
    before = pending(home)
    assert_refused(crm(home, "order", "add", "--account", account, "--line", line), 3, part)
    assert pending(home) == before


def test_line_without_price_needs_the_catalogue(home: Path, account: str) -> None:
    assert_refused(crm(home, "order", "add", "--account", account, "--line", "SKU-9:2"), 3, "catalogue")
    assert ok_json(home, "product", "ls") == []


def test_outbox_limit_and_rejected(home: Path, account: str) -> None:
    ok_json(home, "visit", "log", "--account", account, "--outcome", "x")
    limited = ok_json(home, "outbox", "--limit", "1")
    assert limited["pending"] == 2 and len(limited["entries"]) == 1
    assert ok_json(home, "outbox", "--rejected") == {"rejected": 0, "entries": []}
    human = crm(home, "outbox")
    assert human.stdout.startswith("2 pending") and account in human.stdout


def test_export_is_canonical_and_written_atomically(home: Path, account: str, tmp_path: Path) -> None:
    printed = crm(home, "export")
    assert printed.exit_code == 0
    assert json.loads(printed.stdout)["account"][0]["id"] == account
    assert crm(home, "export", "--json").stdout == printed.stdout  # --json is harmless
    target = tmp_path / "out" / "export.json"
    target.parent.mkdir()
    target.write_text("old contents")
    written = crm(home, "export", "--output", str(target))
    assert written.exit_code == 0 and written.stdout == ""
    assert target.read_text() == printed.stdout
    assert os.listdir(target.parent) == ["export.json"]  # no temp file left behind
    assert_refused(crm(home, "export", "--output", str(tmp_path / "missing" / "x.json")), 3, "cannot write")


def test_conflicts_commands(home: Path) -> None:
    assert ok_json(home, "conflicts", "ls") == []
    assert_refused(crm(home, "conflicts", "resolve", "c-1", "--keep", "winner"), 4, "no open conflict")
    assert_refused(crm(home, "conflicts", "resolve", "c-1", "--keep", "both"), 3, "winner or loser")


# -- import -----------------------------------------------------------------------------------
def test_import_accounts_with_and_without_skip_invalid(home: Path, tmp_path: Path) -> None:
    csv = tmp_path / "accounts.csv"
    csv.write_text("name,city,external_ref\nA1,Leeds,X1\n,York,X2\nA3,Hull,X3\n")
    before = pending(home)
    refused = crm(home, "import", "accounts", str(csv))
    assert_refused(refused, 9, "nothing was imported", "line 3")
    assert pending(home) == before

    report = ok_json(home, "import", "accounts", str(csv), "--skip-invalid")
    assert (report["created"], report["total_rows"]) == (2, 3)
    assert report["invalid"] == [{"line": 3, "reason": report["invalid"][0]["reason"]}]
    assert "name" in report["invalid"][0]["reason"]
    again = crm(home, "import", "accounts", str(csv), "--skip-invalid")
    assert again.exit_code == 0
    assert "0 created" in again.stdout and "2 unchanged" in again.stdout and "line 3" in again.stdout


def test_import_contacts_jsonl(home: Path, account: str, tmp_path: Path) -> None:
    rows = tmp_path / "contacts.txt"
    rows.write_text(json.dumps({"account": account, "name": "Sam"}) + "\n")
    report = ok_json(home, "import", "contacts", str(rows), "--format", "jsonl")
    assert report["created"] == 1
    assert [c["name"] for c in ok_json(home, "contact", "ls", "--account", account)] == ["Sam"]


def test_import_refuses_missing_file_and_bad_format(home: Path, tmp_path: Path) -> None:
    assert_refused(crm(home, "import", "accounts", str(tmp_path / "none.csv")), 9, "none.csv")
    assert_refused(crm(home, "import", "accounts", str(tmp_path / "x.csv"), "--format", "xml"), 2, "xml")


# -- exit codes: bad input changes nothing ----------------------------------------------------
def test_unknown_ids_exit_4(home: Path, account: str) -> None:
    missing = "01a21878-0000-7000-8000-000000000000"
    before = pending(home)
    for args in (("visit", "log", "--account", missing, "--outcome", "x"),
                 ("account", "show", missing), ("account", "edit", missing, "--city", "York"),
                 ("account", "rm", missing), ("order", "submit", missing),
                 ("note", "add", "--order", missing, "--text", "x"),
                 ("contact", "add", "--account", missing, "--name", "x")):
        assert_refused(crm(home, *args), 4, missing)
    assert pending(home) == before


@pytest.mark.parametrize("args", [
    ("account", "add", "--name", "X", "--email", "not-an-email"),
    ("account", "add", "--name", "   "),
    ("account", "edit", "{account}", "--set", "colour=red"),
    ("account", "edit", "{account}", "--set", "no-equals-sign"),
    ("account", "edit", "{account}", "--name", ""),
    ("account", "edit", "{account}"),
    ("visit", "log", "--account", "{account}", "--outcome", "x", "--duration", "twenty"),
    ("visit", "log", "--account", "{account}", "--outcome", "x", "--at", "yesterday"),
    ("visit", "log", "--account", "{account}", "--outcome", "x", "--lat", "91"),
    ("order", "add", "--account", "{account}", "--line", "SKU-1:1:1", "--currency", "pounds"),
    ("note", "add", "--text", "orphan"),
    ("note", "add", "--account", "{account}", "--visit", "{account}", "--text", "two parents"),
])
def test_invalid_values_exit_3(home: Path, account: str, args: tuple[str, ...]) -> None:
    before = pending(home)
    assert_refused(crm(home, *(a.format(account=account) for a in args)), 3)
    assert pending(home) == before


def test_json_errors_go_to_stderr_as_one_object(home: Path, account: str) -> None:
    result = crm(home, "account", "add", "--name", "X", "--email", "nope", "--json")
    assert result.exit_code == 3 and result.stdout == ""
    error = json.loads(result.stderr)
    assert error["error"] == "invalid" and "email" in error["message"]
    usage = crm(home, "visit", "log", "--json")
    assert usage.exit_code == 2 and json.loads(usage.stderr)["error"] == "usage"


def test_missing_store_exit_5_creates_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(crm(empty, "account", "add", "--name", "X"), 5, "crm init")
    assert_refused(crm(tmp_path / "absent", "outbox"), 5, "crm init")
    assert os.listdir(empty) == [] and not (tmp_path / "absent").exists()


def test_corrupt_store_exit_7_leaves_file_unchanged(home: Path, account: str) -> None:
    store = home / "crm.sqlite3"
    damaged = b"this is not a database" + bytes(range(256)) * 40
    store.write_bytes(damaged)
    for args in (("visit", "log", "--account", account, "--outcome", "x"), ("outbox",), ("export",)):
        assert_refused(crm(home, *args), 7, "damaged")
    assert store.read_bytes() == damaged


def test_foreign_sqlite_file_exit_7(home: Path) -> None:
    store = home / "crm.sqlite3"
    store.unlink()
    with sqlite3.connect(store) as conn:
        conn.execute("CREATE TABLE t (x)")
    before = store.read_bytes()
    assert_refused(crm(home, "outbox"), 7, "not a crm store")
    assert store.read_bytes() == before


def test_newer_schema_exit_8_leaves_store_unchanged(home: Path, account: str) -> None:
    store = home / "crm.sqlite3"
    with sqlite3.connect(store) as conn:
        conn.execute("PRAGMA user_version = 99")
    before = pending(home)
    assert_refused(crm(home, "visit", "log", "--account", account, "--outcome", "x"), 8, "upgrade crm")
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 99
    assert pending(home) == before


def test_locked_store_exit_6_writes_nothing(home: Path, account: str) -> None:
    holder = sqlite3.connect(home / "crm.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        result = crm(home, "visit", "log", "--account", account, "--outcome", "x",
                     env={"CRM_BUSY_TIMEOUT_MS": "200"})
        assert_refused(result, 6, "locked")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert pending(home) == 1  # only the account's create


def test_reinit_exit_10(home: Path) -> None:
    assert_refused(crm(home, "init", "--rep", "someone-else"), 10, "already exists")


@pytest.mark.parametrize("args", [
    ("bogus",),
    ("account", "add"),  # --name is required
    ("account", "add", "--name", "X", "--colour", "red"),
    ("account", "ls", "--limit", "many"),
    ("outbox", "--limit", "-1"),
    ("visit", "log", "--account", "A"),
])
def test_usage_errors_exit_2(home: Path, args: tuple[str, ...]) -> None:
    result = crm(home, *args)
    assert_refused(result, 2, "Error")
    assert pending(home) == 0


def test_no_command_shows_help_and_exits_2() -> None:
    result = crm(None)
    assert result.exit_code == 2 and "Commands:" in result.stderr + result.stdout


def test_unexpected_exception_exits_1_without_traceback(home: Path, account: str, monkeypatch) -> None:
    import crm as engine

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk gremlins")

    monkeypatch.setattr(engine.Device, "create", broken)
    result = crm(home, "visit", "log", "--account", account, "--outcome", "x")
    assert_refused(result, 1, "internal error", "disk gremlins")
    assert len(result.stderr.strip().splitlines()) == 1
    debug = crm(home, "visit", "log", "--account", account, "--outcome", "x", env={"CRM_DEBUG": "1"})
    assert debug.exit_code == 1 and "Traceback" in debug.stderr and "disk gremlins" in debug.stderr


def test_ctrl_c_exits_130(home: Path, account: str, monkeypatch) -> None:
    import crm as engine

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.Device, "create", interrupted)
    assert_refused(crm(home, "visit", "log", "--account", account, "--outcome", "x"), 130, "interrupted")
    assert pending(home) == 1


# -- help and version -------------------------------------------------------------------------
LOCAL = ("init", "account", "contact", "visit", "order", "note", "product", "outbox", "export",
         "conflicts", "import")


def _leaf_commands():
    import typer

    def walk(path, command):
        subs = getattr(command, "commands", None)
        if subs:
            for sub, inner in subs.items():  # groups within groups too (crm order line edit)
                yield from walk((*path, sub), inner)
        else:
            yield path

    root = typer.main.get_command(app)
    for name in LOCAL:
        yield from walk((name,), root.get_command(None, name))


@pytest.mark.parametrize("path", list(_leaf_commands()), ids=" ".join)
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    result = crm(None, *path, "--help")
    assert result.exit_code == 0, result.stderr
    assert "Usage: crm " + " ".join(path) in result.stdout
    assert "Example" in result.stdout


def test_every_local_command_accepts_json() -> None:
    for path in _leaf_commands():
        assert "--json" in crm(None, *path, "--help").stdout, path


def test_every_registered_command_loads() -> None:
    for name in COMMANDS:
        result = crm(None, name, "--help")
        assert result.exit_code == 0 and f"Usage: crm {name}" in result.stdout, (name, result.stderr)


def test_exit_code_table_matches_the_errors() -> None:
    import crm.errors as errors

    table = (Path(__file__).resolve().parents[1] / "docs" / "exit-codes.md").read_text()
    documented = {int(code): kind.strip("` ") for code, kind in
                  re.findall(r"^\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|", table, re.MULTILINE)}
    raised = {cls.exit_code: cls.kind for cls in vars(errors).values()
              if isinstance(cls, type) and issubclass(cls, errors.CrmError) and cls is not errors.CrmError}
    assert {code: documented.get(code) for code in raised} == raised
    from cli.certify_cmds import (  # crm certify's verdicts, not errors
        BELOW_REQUIRED_LEVEL,
        CHAOS_ANOMALY,
        CONTRACT_VIOLATION,
        SMOKE_FAILED,
    )

    assert documented.keys() == raised.keys() | {0, 1, 2, BELOW_REQUIRED_LEVEL, CHAOS_ANOMALY, CONTRACT_VIOLATION,
                                                  SMOKE_FAILED}
    assert (documented[1], documented[2]) == ("internal", "usage")


def test_version() -> None:
    from crm import __version__

    result = crm(None, "--version")
    assert result.exit_code == 0 and result.stdout == f"crm {__version__}\n"
