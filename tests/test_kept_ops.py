"""Acknowledged ops kept for a restored server (docs/sync-protocol.md, "Continuity") are stored
packed: they come back exactly as they were queued, from a new store and from one written by an
older crm (schema 2, the wire JSON as text), and take far fewer bytes than their JSON."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from crm import Device
from crm.store import APPLICATION_ID, MIGRATIONS, STORE_FILENAME
from crm.sync import sync_once


def _queue(home: Path, n: int) -> tuple[Device, list[tuple[str, str]]]:
    dev = Device.init(home, rep="rep")
    for i in range(n):
        dev.create("account", {"name": f"Account {i}", "city": "Leeds", "email": f"a{i}@example.com"})
    return dev, dev.pending_ops(limit=n)


def test_an_acknowledged_op_comes_back_exactly_as_queued_and_smaller(tmp_path: Path) -> None:
    dev, queued = _queue(tmp_path / "h", 5)
    dev.settle_pushed([op_id for op_id, _ in queued], [])
    assert dev.pending_ops(limit=10) == []
    assert [body for _, body in dev.kept_ops(after=0, limit=10)] == [body for _, body in queued]
    assert dev.pack_kept(batch=2) == 5  # in batches
    assert dev.pack_kept() == 0  # nothing left to pack
    assert [body for _, body in dev.kept_ops(after=0, limit=10)] == [body for _, body in queued]
    assert all(dev.knows_op(op_id) for op_id, _ in queued)
    assert not dev.knows_op("01a2372d-c64b-7638-b0b2-f4192728b3b2")
    stored = dev.store.conn.execute("SELECT SUM(LENGTH(op_key) + LENGTH(body)) FROM sent").fetchone()[0]
    assert stored < 0.6 * sum(len(op_id) + len(body) for op_id, body in queued)


def test_settling_twice_keeps_an_op_once(tmp_path: Path) -> None:
    dev, queued = _queue(tmp_path / "h", 2)
    dev.settle_pushed([queued[0][0]], [])
    dev.settle_pushed([queued[0][0], queued[1][0]], [])
    assert [body for _, body in dev.kept_ops(after=0, limit=10)] == [body for _, body in queued]


def test_a_schema_2_store_keeps_its_acknowledged_ops(tmp_path: Path) -> None:
    _, queued = _queue(tmp_path / "new", 3)  # bodies as this crm writes them
    home = tmp_path / "old"
    home.mkdir()
    conn = sqlite3.connect(home / STORE_FILENAME, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    for version in (1, 2):
        for statement in MIGRATIONS[version].split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 2")
    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                     [("device_id", "01a2372d-c1cb-7040-9680-8e36415d0a6b"), ("rep", "rep"),
                      ("hlc", "0.0")])
    odd = ("not-a-uuid-op", '{"op":"not-a-uuid-op"}')  # a kept op whose id is not a UUID stays readable
    conn.executemany("INSERT INTO sent (op_id, body) VALUES (?, ?)", [*queued, odd])
    conn.execute("COMMIT")
    conn.close()
    dev = Device.open(home)
    for _ in range(2):  # as migrated, then packed
        assert [body for _, body in dev.kept_ops(after=0, limit=10)] == [body for _, body in [*queued, odd]]
        assert [seq for seq, _ in dev.kept_ops(after=0, limit=10)] == [1, 2, 3, 4]
        assert all(dev.knows_op(op_id) for op_id, _ in [*queued, odd])
        dev.pack_kept()


def test_a_sync_packs_what_it_pushed(tmp_path: Path, server) -> None:
    dev, queued = _queue(tmp_path / "h", 3)
    dev.login(server.url, server.add_rep("org", "rep"))
    assert sync_once(dev).pushed == 3
    kinds = dev.store.conn.execute("SELECT typeof(body) FROM sent ORDER BY seq").fetchall()
    assert kinds == [("blob",)] * 3
    assert [body for _, body in dev.kept_ops(after=0, limit=10)] == [body for _, body in queued]


def test_only_a_canonical_uuid_is_stored_as_its_bytes() -> None:
    from crm.store import op_key

    uid = "01a2372d-c64b-7638-b0b2-f4192728b3b2"
    assert op_key(uid) == bytes.fromhex(uid.replace("-", ""))
    for other in (uid.upper(), uid.replace("2", " ", 1), uid[:-1], "x", "", uid.replace("-", "+")):
        assert op_key(other) == other  # kept as text: two ids never share a key
