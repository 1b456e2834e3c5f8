"""`crm doctor`: finds each kind of damage, says how to recover, exits with the documented code,
and never changes the store (its bytes, and the files beside it, are compared before and after)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from crm import Device
from crm.errors import SchemaTooNewError, StoreCorruptError, StoreInconsistentError, StoreMissingError
from tests.support import crm_inprocess as crm

STORE = "crm.sqlite3"


def _fingerprint(home: Path) -> dict[str, str]:
    """Every file's bytes; the -shm file only by name (any reader takes its read locks in it)."""
    return {p.name: "" if p.name.endswith("-shm") else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(home.iterdir())}


def _doctor(home: Path) -> tuple[int, dict]:
    """Run `crm doctor --json`; the report (stdout when healthy, the error's details otherwise)."""
    before = _fingerprint(home) if home.exists() else None
    result = crm("doctor", "--json", home=home)
    assert (_fingerprint(home) if home.exists() else None) == before, "doctor changed the store"
    assert "Traceback" not in result.stderr
    if result.code == 0:
        assert result.stderr == ""
        return 0, json.loads(result.stdout)
    assert result.stdout == "", "on failure stdout stays empty"
    error = json.loads(result.stderr)
    return result.code, {**error["details"], "error": error["error"], "message": error["message"]}


def _failed(report: dict) -> dict[str, dict]:
    return {c["check"]: c for c in report["checks"] if not c["ok"]}


@pytest.fixture
def home(tmp_path) -> Path:
    """A store with enough records for several pages, never synced, closed cleanly."""
    path = tmp_path / "home"
    device = Device.init(path, rep="rep-1")
    for i in range(60):
        account = device.create("account", {"name": f"Shop {i}", "city": "Leeds", "address": "x" * 200})
        device.create("visit", {"account": account["id"], "outcome": "met the buyer"})
    device.close()
    return path


def _sql(home: Path, *statements: str) -> None:
    db = sqlite3.connect(home / STORE)
    with db:
        for statement in statements:
            db.execute(statement)
    db.close()


def test_a_healthy_store_passes_every_check(home):
    code, report = _doctor(home)
    assert code == 0 and report["healthy"] is True
    assert [c["check"] for c in report["checks"]] == ["file", "application_id", "schema", "integrity", "meta",
                                                      "records", "outbox", "unsynced", "clock"]
    assert "120 queued" in next(c["message"] for c in report["checks"] if c["check"] == "outbox")


def test_no_store(tmp_path):
    code, report = _doctor(tmp_path / "nowhere")
    assert code == StoreMissingError.exit_code == 5
    assert "crm init" in _failed(report)["file"]["recovery"]
    assert not (tmp_path / "nowhere").exists(), "doctor creates nothing"


@pytest.mark.parametrize("damage, check, words", [
    (lambda b: b[: len(b) // 2], "file", "cut short"),
    (lambda b: b[:60], "file", "cut short"),
    (lambda b: b"", "file", "empty"),
    (lambda b: b"PK\x03\x04" + b[4:], "file", "not an SQLite database"),
    (lambda b: b[:100] + b"\xa5" * 3000 + b[3100:], "integrity", "malformed"),  # the schema page
    (lambda b: b[:4096 * 6] + b"\x5a" * 4096 + b[4096 * 7:], "integrity", ""),  # a page of records
])
def test_a_damaged_file_is_reported_and_left_alone(home, damage, check, words):
    path = home / STORE
    path.write_bytes(damage(path.read_bytes()))
    code, report = _doctor(home)
    assert code == StoreCorruptError.exit_code == 7 and report["error"] == "store_corrupt"
    failed = _failed(report)
    assert list(failed) == [check] and words in failed[check]["message"], failed
    assert all("backup" in c["recovery"] for c in failed.values())


def test_a_lost_outbox_row_of_a_never_synced_device(home):
    device = Device.open(home)
    lost = device.list("account", limit=1)[0]["id"]
    device.close()
    _sql(home, f"DELETE FROM outbox WHERE record_id = '{lost}'")
    code, report = _doctor(home)
    assert code == StoreInconsistentError.exit_code == 11 and report["error"] == "store_inconsistent"
    unsynced = _failed(report)["unsynced"]
    assert f"account {lost}" in unsynced["message"] and "edit those records again" in unsynced["recovery"]


def test_after_a_push_a_missing_row_cannot_be_told_from_an_acknowledged_one(home):
    device = Device.open(home)
    device.set_settings({"first_push_at": "2026-01-01T00:00:00Z"})
    device.close()
    _sql(home, "DELETE FROM outbox WHERE seq = 1")
    code, report = _doctor(home)
    assert code == 0 and "skipped" in next(c["message"] for c in report["checks"] if c["check"] == "unsynced")


def test_an_outbox_entry_whose_record_is_gone(home):
    _sql(home, "DELETE FROM records WHERE id = (SELECT record_id FROM outbox WHERE entity = 'visit' LIMIT 1)")
    code, report = _doctor(home)
    assert code == 11 and "missing from the store" in _failed(report)["outbox"]["message"]


def test_an_unreadable_queued_op(home):
    _sql(home, "UPDATE outbox SET body = '{\"op\": ' WHERE seq = 3")
    code, report = _doctor(home)
    assert code == 11
    outbox = _failed(report)["outbox"]
    assert "seq 3" in outbox["message"] and "rejected" in outbox["recovery"]


def test_a_clock_behind_a_queued_change(home):
    _sql(home, "UPDATE meta SET value = '1000.0' WHERE key = 'hlc'")
    code, report = _doctor(home)
    assert code == 11 and "behind a queued change" in _failed(report)["clock"]["message"]


def test_a_newer_schema_is_reported_and_left_alone(home):
    _sql(home, "PRAGMA user_version = 99")
    code, report = _doctor(home)
    assert code == SchemaTooNewError.exit_code == 8
    assert "upgrade crm" in _failed(report)["schema"]["recovery"]


def test_another_sqlite_file_is_not_a_crm_store(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    sqlite3.connect(home / STORE).execute("CREATE TABLE t (x)").connection.close()
    code, report = _doctor(home)
    assert code == 7 and "not a crm store" in _failed(report)["application_id"]["message"]


def test_doctor_reads_a_store_that_another_process_has_open(home):
    """With a write-ahead log beside the file, doctor reads it too, and still changes nothing."""
    db = sqlite3.connect(home / STORE, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("DELETE FROM outbox WHERE seq = 2")  # committed, still only in the -wal file
    code, report = _doctor(home)
    db.close()
    assert code == 11 and "unsynced" in _failed(report)


def test_text_output_says_how_to_recover(home):
    _sql(home, "UPDATE meta SET value = '1000.0' WHERE key = 'hlc'")
    result = crm("doctor", home=home)
    assert result.code == 11
    assert "FAIL  clock" in result.stdout and "how to recover:" in result.stdout
    assert result.stderr.startswith("crm: error: crm doctor found 1 problem(s)")
