"""Acknowledged ops kept for a restored server (docs/sync-protocol.md, "Continuity") are stored
packed: they come back exactly as they were queued, from a new store and from one written by an
older crm (schema 2, the wire JSON as text), and take far fewer bytes than their JSON."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from crm import Device
from crm.doctor import diagnose
from crm.ids import new_id
from crm.ops import Op
from crm.store import APPLICATION_ID, MIGRATIONS, STORE_FILENAME, MetaKey, pack_op
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


def test_a_large_acknowledgement_keeps_every_op_in_the_order_acknowledged(tmp_path: Path) -> None:
    """Settled in statements of SETTLE_ROWS ops: across their boundaries nothing is lost, doubled
    or reordered, and only the acknowledged ops leave the outbox."""
    from crm.device import SETTLE_ROWS

    n = 2 * SETTLE_ROWS + 7
    dev, queued = _queue(tmp_path / "h", n + 3)
    acked = queued[:n]
    dev.settle_pushed([op_id for op_id, _ in acked[::-1]], [])  # the answer's order, not the queue's
    assert dev.pending_ops(limit=10) == queued[n:]
    assert [body for _, body in dev.kept_ops(after=0, limit=n + 10)] == [body for _, body in acked[::-1]]


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


def _referenced(dev: Device) -> int:
    return dev.store.conn.execute("SELECT count(*) FROM sent WHERE substr(body, 1, 1) = X'01'").fetchone()[0]


def _settled(home: Path, n: int) -> tuple[Device, list[tuple[str, str]], list[str]]:
    dev, queued = _queue(home, n)
    dev.set_settings({MetaKey.FIRST_PUSH_AT: "2026-12-02T15:00:00Z"})  # as a push does (crm doctor reads it)
    dev.settle_pushed([op_id for op_id, _ in queued], [])
    dev.pack_kept()
    ids = [json.loads(body)["id"] for _, body in queued]
    return dev, queued, ids


def test_an_unchanged_create_is_kept_as_a_reference_to_its_record(tmp_path: Path) -> None:
    dev, queued, _ = _settled(tmp_path / "h", 3)
    assert _referenced(dev) == 3
    lengths = dev.store.conn.execute("SELECT LENGTH(body) FROM sent").fetchall()
    assert lengths == [(18,)] * 3
    assert [body for _, body in dev.kept_ops(after=0, limit=10)] == [body for _, body in queued]
    dev.close()
    assert [body for _, body in Device.open(tmp_path / "h").kept_ops(after=0, limit=10)] == \
        [body for _, body in queued]


def test_a_create_whose_record_changed_before_packing_is_packed_whole(tmp_path: Path) -> None:
    dev, queued = _queue(tmp_path / "h", 2)
    dev.settle_pushed([op_id for op_id, _ in queued], [])
    dev.edit("account", json.loads(queued[0][1])["id"], {"city": "York"})
    dev.pack_kept()
    assert _referenced(dev) == 1
    assert [body for _, body in dev.kept_ops(after=0, limit=10)] == [body for _, body in queued]


def test_an_edit_a_delete_and_a_pulled_op_write_the_referenced_op_out_first(tmp_path: Path) -> None:
    dev, queued, ids = _settled(tmp_path / "h", 3)
    dev.edit("account", ids[0], {"city": "York"})
    dev.delete("account", ids[1])
    other = Op(op_id=new_id(), device=new_id(), hlc="9999999999999.00000@x", entity="account", record_id=ids[2],
               fields={"city": "Hull"}, base={}, kind="update")
    dev.apply_remote([other], cursor="1")
    assert _referenced(dev) == 0
    assert dev.get("account", ids[2])["city"] == "Hull"
    assert [body for _, body in dev.kept_ops(after=0, limit=10)] == [body for _, body in queued]


def test_records_leaving_the_device_write_their_referenced_ops_out_first(tmp_path: Path) -> None:
    dev, queued, ids = _settled(tmp_path / "h", 2)
    scope = {"territories": ["north"], "epoch": 1, "default": ""}  # neither account is in it
    dev.reset_scope(scope)
    dev.apply_remote([], cursor="9", scope=scope, own=True, refilled=True)  # the refill's last page
    assert dev.store.conn.execute("SELECT count(*) FROM records").fetchone()[0] == 0
    assert _referenced(dev) == 0
    assert [body for _, body in dev.kept_ops(after=0, limit=10)] == [body for _, body in queued]


def test_a_new_device_id_writes_every_reference_out(tmp_path: Path) -> None:
    dev, queued, _ = _settled(tmp_path / "h", 2)
    dev.take_new_identity()
    assert _referenced(dev) == 0
    assert [body for _, body in dev.kept_ops(after=0, limit=10)] == [body for _, body in queued]
    dev.create("account", {"name": "After"})
    (op_id, body), = dev.pending_ops(limit=5)
    dev.settle_pushed([op_id], [])
    dev.pack_kept()
    assert _referenced(dev) == 1  # made by the new id: a reference again
    assert [b for _, b in dev.kept_ops(after=0, limit=10)] == [b for _, b in queued] + [body]


def test_a_schema_4_store_with_packed_ops_is_migrated(tmp_path: Path) -> None:
    dev, queued = _queue(tmp_path / "h", 3)
    dev.set_settings({MetaKey.FIRST_PUSH_AT: "2026-12-02T15:00:00Z"})
    dev.settle_pushed([op_id for op_id, _ in queued], [])
    conn = dev.store.conn  # make it what schema 4 stored: every op deflated, no form byte
    with dev.store.write():
        conn.executemany("UPDATE sent SET body = ? WHERE seq = ?",
                         [(pack_op(body)[1:], seq) for seq, body in conn.execute("SELECT seq, body FROM sent")])
        conn.execute("PRAGMA user_version = 4")
    dev.close()
    dev = Device.open(tmp_path / "h")
    assert dev.store.conn.execute("PRAGMA user_version").fetchone()[0] == 5
    assert [body for _, body in dev.kept_ops(after=0, limit=10)] == [body for _, body in queued]
    assert _referenced(dev) == 0  # packed ops stay packed: only text is turned into references
    dev.close()
    assert diagnose(tmp_path / "h").healthy


def test_a_store_holding_references_passes_the_doctor(tmp_path: Path) -> None:
    dev, _, ids = _settled(tmp_path / "h", 2)
    dev.edit("account", ids[0], {"city": "York"})
    dev.close()
    assert diagnose(tmp_path / "h").healthy
