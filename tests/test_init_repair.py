"""Homes an interrupted `crm init` left half-made (the shapes an older crm left when killed, and a
killed new init's temporary store): every command refuses them naming `crm init`, `crm doctor`
reports them without writing, and `crm init` or `crm doctor --repair` makes the home whole.
A store holding records or queued changes is never thrown away, whatever its meta rows say.
In-process: tests/test_init_crash.py kills real `crm init` processes."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from crm import Device
from crm.errors import StateError
from crm.store import APPLICATION_ID, MIGRATIONS
from tests.support import crm_inprocess as crm
from tests.support import home_with_an_account

STORE = "crm.sqlite3"
URL = "http://127.0.0.1:9"
JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")


def _old_schema(home: Path, meta: tuple[tuple[str, str], ...] = ()) -> None:
    """What an older crm's init left when killed between its schema and its meta rows."""
    conn = sqlite3.connect(home / STORE, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    for statement in MIGRATIONS[1].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta)
    conn.execute("COMMIT")
    conn.close()


def _foreign_wal(tmp: Path) -> bytes:
    """A write-ahead log full of committed frames (of a store holding an account): replayed into
    a new store it would plant records there, or corrupt it."""
    other = tmp / "other"
    Device.init(other, rep="someone").close()
    conn = sqlite3.connect(other / STORE, isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("INSERT INTO records (entity, id, data, meta) VALUES ('account', 'x', '{}', '{}')")
    wal = (other / f"{STORE}-wal").read_bytes()
    conn.close()
    assert len(wal) > 32
    return wal


def _empty(home: Path) -> None:
    (home / STORE).touch()


def _empty_with_hot_journal(home: Path) -> None:
    (home / STORE).touch()
    (home / f"{STORE}-journal").write_bytes(JOURNAL_MAGIC + bytes(504))


def _header_only(home: Path) -> None:
    """Killed just after switching a new file to WAL: a header page, no schema, WAL side files."""
    conn = sqlite3.connect(home / STORE, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    (home / f"{STORE}-wal").touch()
    (home / f"{STORE}-shm").write_bytes(bytes(32768))


def _schema_no_meta(home: Path) -> None:
    _old_schema(home)


def _clock_only(home: Path) -> None:
    _old_schema(home, (("hlc", "0.0"),))


def _side_files_only(home: Path) -> None:
    (home / f"{STORE}-wal").write_bytes(_foreign_wal(home.parent))
    (home / f"{STORE}-journal").write_bytes(JOURNAL_MAGIC + bytes(504))
    (home / f"{STORE}-shm").write_bytes(bytes(32768))


def _killed_new_init(home: Path) -> None:
    """A temporary store a killed `crm init` of this version was building (never renamed)."""
    conn = sqlite3.connect(home / ".crm-init-k1lled.sqlite3", isolation_level=None)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.close()
    (home / ".crm-init-k1lled.sqlite3-journal").write_bytes(JOURNAL_MAGIC + bytes(504))


SHAPES = {
    "an empty file": _empty,
    "an empty file and a hot journal": _empty_with_hot_journal,
    "a header page and no schema": _header_only,
    "a schema and no meta rows": _schema_no_meta,
    "a schema and only a clock": _clock_only,
    "no store, only its side files": _side_files_only,
    "a killed init's temporary store": _killed_new_init,
}


@pytest.fixture(params=list(SHAPES))
def half_made(request, tmp_path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    SHAPES[request.param](home)
    return home


def _fingerprint(home: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(home.iterdir())}


def _assert_whole(home: Path, device_id: str) -> None:
    """Every meta row init writes is there, the CLI can write, and nothing else is in the home."""
    status = crm("status", "--json", home=home)
    assert status.code == 0, status.stderr
    assert (status.json["device"], status.json["rep"], status.json["server"]) == (device_id, "rep-1", URL)
    assert crm("account", "add", "--name", "Corner Store", home=home).code == 0
    assert {p.name for p in home.iterdir()} <= {STORE, f"{STORE}-wal", f"{STORE}-shm"}
    conn = sqlite3.connect(home / STORE)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("SELECT count(*) FROM records").fetchone()[0] == 1  # nothing replayed into it
    assert dict(conn.execute("SELECT key, value FROM meta"))["token"] == "tok"
    conn.close()


def test_a_half_made_home_is_refused_naming_crm_init_which_recreates_it(half_made):
    used = crm("outbox", "--json", home=half_made)
    assert used.code in (5, 7), used.stderr
    error = json.loads(used.stderr)
    assert "crm init" in error["message"] and "Traceback" not in used.stderr
    init = crm("init", "--rep", "rep-1", "--server", URL, "--token", "tok", "--json", home=half_made)
    assert init.code == 0, init.stderr
    _assert_whole(half_made, init.json["id"])
    assert crm("init", "--rep", "rep-1", home=half_made).code == 10, "the new store is complete"


def test_doctor_reports_a_half_made_home_and_repair_clears_it(half_made):
    before = _fingerprint(half_made)
    looked = crm("doctor", "--json", home=half_made)
    assert looked.code in (5, 7), looked.stderr
    assert _fingerprint(half_made) == before, "doctor without --repair wrote"
    failed = [c for c in json.loads(looked.stderr)["details"]["checks"] if not c["ok"]]
    assert failed and "crm init" in failed[0]["recovery"], failed

    repaired = crm("doctor", "--repair", "--json", home=half_made)
    assert repaired.code == 5, repaired.stderr  # the home holds no store now: `crm init` next
    checks = json.loads(repaired.stderr)["details"]["checks"]
    assert checks[0]["check"] == "repair" and "removed" in checks[0]["message"], checks
    assert list(half_made.iterdir()) == []
    init = crm("init", "--rep", "rep-1", "--server", URL, "--token", "tok", "--json", home=half_made)
    assert init.code == 0, init.stderr
    _assert_whole(half_made, init.json["id"])


def test_init_says_it_replaced_an_unfinished_store(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    _schema_no_meta(home)
    init = crm("init", "--rep", "rep-1", home=home)
    assert init.code == 0 and "replaced the unfinished store" in init.stderr and "held nothing" in init.stderr


def test_doctor_repair_on_a_healthy_store_changes_nothing(tmp_path):
    home = tmp_path / "home"
    Device.init(home, rep="rep-1").close()
    before = _fingerprint(home)
    repaired = crm("doctor", "--repair", "--json", home=home)
    assert repaired.code == 0, repaired.stderr
    first = repaired.json["checks"][0]
    assert (first["check"], first["ok"]) == ("repair", True) and "nothing to repair" in first["message"]
    assert _fingerprint(home) == before


# -- a store holding data is never thrown away ---------------------------------------------------
@pytest.fixture
def with_data(tmp_path) -> Path:
    return home_with_an_account(tmp_path / "home")


@pytest.mark.parametrize("damage", [
    "DELETE FROM meta",
    "DELETE FROM meta WHERE key IN ('device_id', 'rep')",
    "UPDATE meta SET value = 'garbage' WHERE key = 'hlc'",
    "DELETE FROM records",  # only the queued change holds the work now
])
def test_a_store_holding_records_or_queued_changes_is_never_replaced(with_data, damage):
    conn = sqlite3.connect(with_data / STORE)
    with conn:
        conn.execute(damage)
        conn.execute("DELETE FROM meta WHERE key = 'device_id'")
    conn.close()
    before = _fingerprint(with_data)
    init = crm("init", "--rep", "rep-1", "--json", home=with_data)
    assert init.code == 7, init.stderr
    assert "leaves it exactly as it is" in json.loads(init.stderr)["message"]
    repaired = crm("doctor", "--repair", "--json", home=with_data)
    assert repaired.code == 7 and "nothing to repair" in repaired.stderr
    meta_check = next(c for c in json.loads(repaired.stderr)["details"]["checks"] if c["check"] == "meta")
    assert "backup" in meta_check["recovery"] and "crm init" not in meta_check["recovery"]
    assert _fingerprint(with_data) == before
    conn = sqlite3.connect(with_data / STORE)
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 1
    conn.close()


def test_concurrent_inits_make_one_store(tmp_path):
    """Two `crm init`s racing on one home: one makes the store, the others say it exists."""
    home = tmp_path / "home"
    made, refused = [], []
    start = threading.Barrier(6)

    def init(i: int) -> None:
        start.wait()
        try:
            device = Device.init(home, rep=f"rep-{i}")
        except StateError:
            refused.append(i)
            return
        made.append(device.device_id)
        device.close()

    threads = [threading.Thread(target=init, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1 and len(refused) == 5
    device = Device.open(home)
    assert device.device_id == made[0]
    device.close()
