"""A home on a read-only file system: a restored backup mounted to be looked at, or a phone's
storage that the kernel remounted read-only after an I/O error. Every command used to fail with
exit 5, "cannot use the store: unable to open database file" (SQLite could not create the files
beside the store that a WAL store is read through), while `crm doctor` said all was well.

Now what reads works on the store as it is (opened immutable: SQLite writes nothing beside it),
and a change is refused with exit 14 (`store_read_only`), saying so, before anything is sent or
written. In-process the file system is said to be read-only (``crm.store._read_only_home``); the
`process` test remounts a real tmpfs read-only."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from crm import Device
from crm import store as crm_store
from tests.support import crm as crm_process
from tests.support import crm_inprocess as crm
from tests.support import mounted_tmpfs

READS = (("account", "ls", "--json"), ("search", "corner", "--json"), ("export",), ("status", "--json"),
         ("outbox", "--json"), ("doctor", "--json"))


def _made(home: Path) -> tuple[str, str]:
    """A home holding an account (its create queued) and a visit to it, with a sync server that
    is never reached: (account id, the visit's outcome)."""
    device = Device.init(home, rep="rep-1", server_url="http://127.0.0.1:9", token="never-used")
    account = device.create("account", {"name": "Corner Store", "city": "Leeds"})
    device.create("visit", {"account": account["id"], "outcome": "met the buyer"})
    device.close()
    return account["id"], "met the buyer"


def _digest(home: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(home.iterdir())}


def _refused(result) -> dict:
    assert result.code == 14, (result.code, result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    error = json.loads(result.stderr)
    assert error["error"] == "store_read_only", error
    assert "read-only" in error["message"] and "nothing was changed" in error["message"], error
    return error


def test_reads_work_and_changes_are_refused_on_a_read_only_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    account, _ = _made(home)
    before = {args: crm(*args, home=home) for args in READS}
    assert all(result.code == 0 for result in before.values()), before
    files = _digest(home)
    monkeypatch.setattr(crm_store, "_read_only_home", lambda home: True)
    for args, result in before.items():
        now = crm(*args, home=home)
        assert now.code == 0, (args, now.stderr)
        assert now.stdout == result.stdout, args
    assert crm("account", "show", account[:8], "--json", home=home).json["name"] == "Corner Store"
    for args in (("account", "add", "--name", "Second Shop"), ("visit", "log", "--account", account, "--outcome", "again"),
                 ("account", "edit", account, "--set", "city=York"), ("sync",), ("agent", "start")):
        _refused(crm(*args, "--json", home=home))
    assert _digest(home) == files, "nothing written beside the store or into it"


def test_a_store_that_needs_an_upgrade_says_so_on_a_read_only_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    _made(home)
    monkeypatch.setattr(crm_store, "_read_only_home", lambda home: True)
    monkeypatch.setattr(crm_store, "SCHEMA_VERSION", crm_store.SCHEMA_VERSION + 1)
    monkeypatch.setitem(crm_store.MIGRATIONS, crm_store.SCHEMA_VERSION, "SELECT 1")
    error = _refused(crm("account", "ls", "--json", home=home))
    assert "upgrad" in error["message"], error


# -- a real read-only file system ---------------------------------------------------------------
@pytest.fixture
def read_only_disk(tmp_path):
    """A tmpfs mounted for this test, and the function that remounts it read-only (needs root, or
    skips saying why)."""
    with mounted_tmpfs(tmp_path / "disk", "8m") as seal:
        yield tmp_path / "disk", seal


@pytest.mark.process
def test_a_home_on_a_file_system_remounted_read_only(read_only_disk):
    disk, seal = read_only_disk
    home = disk / "home"
    account, _ = _made(home)
    before = {args: crm_process(*args, home=home) for args in READS}
    assert all(result.code == 0 for result in before.values()), before
    seal()
    for args, result in before.items():
        now = crm_process(*args, home=home)
        assert now.code == 0, (args, now.stderr)
        assert now.stdout == result.stdout, args
    _refused(crm_process("visit", "log", "--account", account, "--outcome", "again", "--json", home=home))
    _refused(crm_process("sync", "--json", home=home))


@pytest.mark.process
def test_changes_still_in_the_write_ahead_log_are_read_on_a_read_only_home(read_only_disk):
    """Power lost (or the app killed) before SQLite folded its log into the store, then the file
    system came back read-only: the last changes exist only in crm.sqlite3-wal. Opened immutable,
    the store would show the rep an older state; it is read with its log."""
    import sys

    disk, seal = read_only_disk
    home = disk / "home"
    _made(home)
    subprocess.run([sys.executable, "-c", "import os, sys\nfrom pathlib import Path\nfrom crm import Device\n"
                    "Device.open(Path(sys.argv[1])).create('account', {'name': 'Only In The Log'})\nos._exit(0)",
                    str(home)], check=True, cwd=Path(__file__).resolve().parents[1])
    assert (home / "crm.sqlite3-wal").stat().st_size > 0
    seal()
    names = {a["name"] for a in crm_process("account", "ls", "--json", home=home).json}
    assert names == {"Corner Store", "Only In The Log"}


def _error_of(conn, sql: str) -> Exception:
    with pytest.raises(Exception) as caught:
        conn.execute(sql)
    return caught.value


def test_sqlites_own_read_only_refusals_are_told_apart(tmp_path):
    """A store file this process may not write (SQLITE_READONLY) is exit 14; a store file replaced
    under an open connection (SQLITE_READONLY_DBMOVED: a restore while the agent runs) is not a
    read-only file system, and is not told to remount one."""
    import sqlite3

    path = tmp_path / "crm.sqlite3"
    setup = sqlite3.connect(path)
    setup.execute("CREATE TABLE t (x)")
    setup.commit()
    setup.close()
    read_only = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    mapped = crm_store._map_sqlite_error(_error_of(read_only, "INSERT INTO t VALUES (1)"), path)
    read_only.close()
    assert mapped.exit_code == 14 and mapped.kind == "store_read_only", mapped.message
    assert "readonly database" in mapped.message and "nothing was changed" in mapped.message

    conn = sqlite3.connect(path)
    other = tmp_path / "other.sqlite3"
    replacement = sqlite3.connect(other)
    replacement.execute("CREATE TABLE t (x)")
    replacement.commit()
    replacement.close()
    conn.execute("SELECT * FROM t").fetchall()
    os.replace(other, path)
    moved = _error_of(conn, "INSERT INTO t VALUES (1)")
    conn.close()
    assert moved.sqlite_errorcode == crm_store._READONLY_DBMOVED, moved
    assert crm_store._map_sqlite_error(moved, path).exit_code == 5
