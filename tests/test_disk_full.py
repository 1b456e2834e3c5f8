"""A full disk is exit 12 (`disk_full`): "free space; nothing was lost", and the store unchanged.
It is not a damaged store (exit 7 says "restore from a backup", which would throw away unsynced
work). In-process, SQLite is made to answer SQLITE_FULL (a page cap on crm's connections); the
`process` test fills a real, small tmpfs."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from crm import store as crm_store
from tests.support import crm as crm_process
from tests.support import crm_inprocess as crm
from tests.support import home_with_an_account, mounted_tmpfs, outbox_ops

STORE = "crm.sqlite3"
WORDS = "free space; nothing was lost"


@pytest.fixture
def home(tmp_path) -> Path:
    return home_with_an_account(tmp_path / "home")


@pytest.fixture
def store_cannot_grow(monkeypatch):
    _cannot_grow(monkeypatch)


def _cannot_grow(monkeypatch) -> None:
    """From now on every store connection crm opens holds no page more than it has: SQLite
    answers a write that needs one with SQLITE_FULL ("database or disk is full"), as on a full disk."""
    real = crm_store._connect

    def capped(path, **options):
        conn = real(path, **options)
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count = {max(pages, 1)}")
        return conn

    monkeypatch.setattr(crm_store, "_connect", capped)


def _account(home: Path) -> str:
    return crm("account", "ls", "--json", home=home).json[0]["id"]


def _state(home: Path) -> tuple[str, int]:
    """The canonical export and the outbox size: what a rep stands to lose."""
    conn = sqlite3.connect(home / STORE)
    pending = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    conn.close()
    return crm("export", home=home).stdout, pending


def _disk_full(result) -> str:
    assert result.code == 12, (result.code, result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    error = json.loads(result.stderr)
    assert error["error"] == "disk_full" and WORDS in error["message"], error
    assert "backup" not in error["message"] and "damaged" not in error["message"]
    return error["message"]


def test_a_write_on_a_full_disk_is_exit_12_and_changes_nothing(home, store_cannot_grow):
    account = _account(home)
    before = _state(home)
    _disk_full(crm("note", "add", "--account", account, "--text", "x" * 20000, "--json", home=home))
    _disk_full(crm("order", "add", "--account", account, *[f"--line=SKU-{i}:1:2.50" for i in range(40)],
                   "--json", home=home))
    assert _state(home) == before


def test_an_import_on_a_full_disk_is_exit_12_and_writes_no_row(home, store_cannot_grow, tmp_path):
    rows = "\n".join(f"Shop {i},{'Street ' * 50}{i},Leeds" for i in range(300))
    (tmp_path / "accounts.csv").write_text("name,address,city\n" + rows + "\n")
    before = _state(home)
    _disk_full(crm("import", "accounts", str(tmp_path / "accounts.csv"), "--json", home=home))
    assert _state(home) == before


def test_init_on_a_full_disk_is_exit_12_and_leaves_no_store(tmp_path, store_cannot_grow):
    home = tmp_path / "home"
    _disk_full(crm("init", "--rep", "rep-1", "--json", home=home))
    assert list(home.iterdir()) == [], "no store, no temporary file"


def test_init_when_the_file_system_says_enospc(tmp_path, monkeypatch):
    home = tmp_path / "home"
    real_fsync = os.fsync

    def no_space(fd):
        if Path(f"/proc/self/fd/{fd}").resolve().name.startswith(".crm-init-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_space)
    _disk_full(crm("init", "--rep", "rep-1", "--json", home=home))
    assert list(home.iterdir()) == []


def test_export_to_a_full_disk_is_exit_12(home, tmp_path, monkeypatch):
    target = tmp_path / "copy.json"

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    message = _disk_full(crm("export", "--output", str(target), "--json", home=home))
    assert f"{target} was not written" in message
    assert list(tmp_path.iterdir()) == [home], "neither the file nor its temporary file"


def test_doctor_says_the_disk_is_full(home, monkeypatch):
    full = os.statvfs(home)
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result(
        (full.f_bsize, full.f_frsize, full.f_blocks, 0, 0, full.f_files, 0, 0, full.f_flag, full.f_namemax)))
    result = crm("doctor", "--json", home=home)
    message = _disk_full(result)
    assert "space: the disk holding" in message
    checks = json.loads(result.stderr)["details"]["checks"]
    assert [c["check"] for c in checks if not c["ok"]] == ["space"]  # the store itself is fine


# -- a real full file system -----------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs mounted for this test (needs root, or skips saying why)."""
    with mounted_tmpfs(tmp_path / "disk", "2m"):
        yield tmp_path / "disk"


def _fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.mark.process
def test_a_really_full_disk_is_exit_12_and_loses_nothing(small_disk):
    home = small_disk / "home"
    assert crm_process("init", "--rep", "rep-1", home=home).code == 0
    account = crm_process("account", "add", "--name", "Corner Store", "--json", home=home).json["id"]
    before = crm_process("export", home=home).stdout
    _fill(small_disk / "filler")
    for args in (("note", "add", "--account", account, "--text", "x" * 20000),
                 ("account", "add", "--name", "Second Shop", "--address", "y" * 2000),
                 ("doctor",)):
        _disk_full(crm_process(*args, "--json", home=home))
    (small_disk / "filler").unlink()
    assert crm_process("export", home=home).stdout == before, "nothing lost, nothing half-written"
    assert crm_process("doctor", "--json", home=home).code == 0
    assert crm_process("note", "add", "--account", account, "--text", "now there is room", home=home).code == 0


@pytest.mark.process
def test_a_disk_out_of_inodes_is_a_full_disk_and_the_store_still_reads(tmp_path):
    """Space left but no free inode (a disk full of small files): SQLite cannot create the files
    beside the store that a write goes through. That was exit 5, "cannot use the store: unable to
    open database file", for every command, reads included, while `crm doctor` said all was well."""
    with mounted_tmpfs(tmp_path / "disk", "8m", inodes=24):
        home = tmp_path / "disk" / "home"
        assert crm_process("init", "--rep", "rep-1", home=home).code == 0
        assert crm_process("account", "add", "--name", "Corner Store", home=home).code == 0
        before = crm_process("export", home=home).stdout
        filler = tmp_path / "disk" / "filler"
        filler.mkdir()
        made = 0
        with contextlib.suppress(OSError):
            while True:
                (filler / str(made)).touch()
                made += 1
        assert made > 0 and shutil.disk_usage(home).free > 1 << 20, "space left, no inode"
        _disk_full(crm_process("account", "add", "--name", "Second Shop", "--json", home=home))
        listed = crm_process("account", "ls", "--json", home=home)
        assert listed.code == 0, listed.stderr
        assert [a["name"] for a in listed.json] == ["Corner Store"]
        assert crm_process("export", home=home).stdout == before
        _disk_full(crm_process("doctor", "--json", home=home))
        for name in list(filler.iterdir())[:4]:
            name.unlink()
        assert crm_process("account", "add", "--name", "Second Shop", home=home).code == 0
        assert crm_process("doctor", home=home).code == 0


def test_a_store_whose_search_index_is_behind_still_opens_and_reads_on_a_full_disk(tmp_path, monkeypatch) -> None:
    """A bulk pull left records out of the search index (crm/search.py, ``catch_up``), and then the
    disk filled: opening the store cannot index them, and must not fail for it. Listing works,
    the index stays behind, and it catches up once there is room."""
    from crm import Change, Device
    from crm.ids import new_id
    from crm.search import DEFER_AT_LEAST
    from crm.store import MetaKey

    source = Device.init(tmp_path / "source", rep="rep-1")
    source.write([Change("account", new_id(), {"name": f"Shop {i}"}, {}, "create") for i in range(DEFER_AT_LEAST)])
    ops = outbox_ops(source)
    home = tmp_path / "home"
    device = Device.init(home, rep="rep-2")
    device.apply_remote(ops, cursor="1")
    device.close()
    source.close()
    with monkeypatch.context() as full:
        _cannot_grow(full)
        listed = crm("account", "ls", "--all", "--json", home=home)
        assert listed.code == 0, listed.stderr
        assert len(listed.json) == DEFER_AT_LEAST
    conn = sqlite3.connect(home / STORE)
    assert conn.execute("SELECT value FROM meta WHERE key = ?", (MetaKey.SEARCH_BEHIND,)).fetchone()[0] == "1"
    conn.close()
    assert len(crm("search", "shop", "--all", "--json", home=home).json) == DEFER_AT_LEAST  # room again


@pytest.mark.process
def test_a_server_whose_disk_fills_answers_503_keeps_serving_and_takes_the_rest_later(small_disk, tmp_path):
    """The operator's side: the server's data directory runs out of space mid-push. The device is
    told (exit 22, the server's own words), the server stays up and consistent, and once there is
    room the next sync delivers every queued op exactly once."""
    from tests.support import running_server

    with running_server(small_disk / "server") as server:
        token = server.add_rep("acme", "rep-1")
        home = server.device(tmp_path, "rep-1", token)
        first = crm_process("account", "add", "--name", "Before the disk filled", "--json", home=home).json["id"]
        assert crm_process("sync", home=home).code == 0
        rows = tmp_path / "accounts.csv"
        rows.write_text("name,address\n" + "".join(f"Shop {i},{'Long Road ' * 40}{i}\n" for i in range(300)))
        assert crm_process("import", "accounts", str(rows), home=home).code == 0
        _fill(small_disk / "filler")
        refused = crm_process("sync", home=home)
        assert refused.code == 22 and "full" in refused.stderr and "nothing was lost" in refused.stderr, refused.stderr
        assert server.proc.poll() is None and server.get("/v1/health").status_code == 200
        assert crm_process("outbox", "--json", home=home).json["pending"] > 0
        assert json.loads(server.export("acme"))["account"][0]["id"] == first  # what it had, readable
        (small_disk / "filler").unlink()
        assert crm_process("sync", home=home).code == 0
        assert crm_process("outbox", "--json", home=home).json["pending"] == 0
        assert server.export("acme") == crm_process("export", home=home).stdout
        stats = server.ok("server", "stats", *server.where, "--org", "acme", "--json")
        assert stats == {"ops": 301, "records": 301}, "each op once"


@pytest.mark.process
def test_a_server_whose_temporary_directory_is_full_still_takes_pushes(small_disk, tmp_path, monkeypatch):
    """The operator's /var/tmp (or whatever SQLITE_TMPDIR names) is full, the data directory is not.
    A push writes its batch in multi-row statements, which SQLite may have to roll back one at a
    time: it kept each statement's undo pages in a temporary file (about 2 KB an op, 40 MB for a
    20,000-op push), so a full temporary directory refused every push with "disk full". The
    server keeps them in memory (bounded by one statement's rows)."""
    from tests.support import running_server

    spare = small_disk / "tmp"
    spare.mkdir()
    _fill(small_disk / "filler")
    monkeypatch.setenv("SQLITE_TMPDIR", str(spare))  # the server's and the devices' temporary files
    with running_server(tmp_path / "server") as server:
        token = server.add_rep("acme", "rep-1")
        home = server.device(tmp_path, "rep-1", token)
        rows = tmp_path / "accounts.csv"
        rows.write_text("name,address\n" + "".join(f"Shop {i},{'Long Road ' * 40}{i}\n" for i in range(300)))
        assert crm_process("import", "accounts", str(rows), home=home).code == 0
        synced = crm_process("sync", home=home)
        assert synced.code == 0, synced.stderr
        assert crm_process("outbox", "--json", home=home).json["pending"] == 0
        assert server.ok("server", "stats", *server.where, "--org", "acme", "--json") == {"ops": 300, "records": 300}
        assert server.export("acme") == crm_process("export", home=home).stdout
