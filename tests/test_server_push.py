"""The server's push path stores exactly what the pure merge rules give, whatever the batch holds."""

from __future__ import annotations

import itertools

from crm import merge
from crm.ops import Op, op_to_wire
from crm.records import record_from_row
from crm.server import ServerStore
from crm.server.store import Identity

STAMPS = (f"1795706783{n:03d}.00000@dev-1" for n in itertools.count())


def op(kind: str, rid: str, fields: dict, base: dict | None = None) -> Op:
    return Op(op_id=f"op-{next(COUNTER)}", device="dev-1", hlc=next(STAMPS), entity="account",
              record_id=rid, fields=fields, base=base or {}, kind=kind)


COUNTER = itertools.count()


def stored(store: ServerStore, rid: str) -> merge.Record:
    data, meta = store.conn.execute("SELECT data, meta FROM records WHERE id = ?", (rid,)).fetchone()
    return record_from_row("account", rid, data, meta)


def test_batches_mixing_fresh_creates_edits_and_a_second_create_match_the_merge(tmp_path):
    store = ServerStore.open(tmp_path)
    store.add_token("acme", "rep")
    who = Identity("acme", "rep", "device")
    a1 = op("create", "rec-a", {"name": "A", "city": "Leeds", "owner": "rep"})
    a2 = op("update", "rec-a", {"city": "York"}, {"city": [a1.hlc]})
    b1 = op("create", "rec-b", {"name": "B", "owner": "rep"})
    b2 = op("create", "rec-b", {"name": "B2", "owner": "rep"})  # a second create of one id (forged)
    c1 = op("create", "rec-c", {"name": "C", "owner": "rep"})
    result = store.push(who, [op_to_wire(o) for o in (a1, a2, b1, b2, c1)])
    assert sorted(result.acked) == sorted(o.op_id for o in (a1, a2, b1, b2, c1))
    for rid, ops in (("rec-a", [a1, a2]), ("rec-b", [b1, b2]), ("rec-c", [c1])):
        expected = None
        for o in ops:
            expected = merge.apply_op(expected, o)
        got = stored(store, rid)
        assert (got.values, got.meta) == (expected.values, expected.meta), rid
    late = op("create", "rec-c", {"name": "C again", "owner": "rep"})  # a create of a record it has
    store.push(who, [op_to_wire(late)])
    expected = merge.apply_op(merge.apply_op(None, c1), late)
    got = stored(store, "rec-c")
    assert (got.values, got.meta) == (expected.values, expected.meta)
    assert store.stats("acme") == {"ops": 6, "records": 3}
