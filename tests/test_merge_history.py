"""The history horizon (docs/merge-rules.md, "How much history a record keeps"): a record keeps
at most MAX_HISTORY entries of history, superseded stamps (``x``) and open losing versions
(``c``), counted over the whole record; older ones fall behind the record's horizon and count
as seen. Tables of cases for the pure rule (``bound_history``) and for ``apply_op`` under a small
limit in many arrival orders (every seventh permutation), the bound under the edit pattern that
grew a record by 13.6 MB a push, and convergence under tiny limits.
"""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm import merge
from crm.hlc import format_stamp
from crm.merge import HORIZON, MAX_HISTORY, Record, apply_op, bound_history, conflicts
from crm.ops import MAX_BASE_STAMPS, Op
from crm.records import meta_column
from tests import test_merge_property as prop
from tests.support import examples
from tests.test_merge import build, create, delete, edit

LINE_1 = "line:00000000-0000-4000-8000-000000000001"
s1, s2, s3, s4, s5, s6, s7, s9 = (format_stamp(1_000 * n, 0, "A") for n in (1, 2, 3, 4, 5, 6, 7, 9))
WIN = {"s": s9, "o": "o9"}  # a field's winner: never pruned

# name: (meta before, limit, meta after)
HISTORY_CASES = {
    "within the limit nothing changes":
        ({"name": {**WIN, "x": [s1, s2]}}, 2, {"name": {**WIN, "x": [s1, s2]}}),
    "the oldest superseded stamps fall behind the horizon":
        ({"name": {**WIN, "x": [s1, s2, s3, s4]}}, 2,
         {"name": {**WIN, "x": [s3, s4]}, HORIZON: {"f": s2}}),
    "the limit counts the whole record, not one field":
        ({"name": {**WIN, "x": [s1, s3]}, "city": {"s": s5, "o": "o5", "x": [s2, s4]}}, 2,
         {"name": {**WIN, "x": [s3]}, "city": {"s": s5, "o": "o5", "x": [s4]}, HORIZON: {"f": s2}}),
    "open losing versions count, and fall behind the horizon too":
        ({"name": {**WIN, "x": [s2], "c": [[s1, "o1", "Ann"], [s3, "o3", "Cy"]]}}, 1,
         {"name": {**WIN, "c": [[s3, "o3", "Cy"]]}, HORIZON: {"f": s2}}),
    "a field left with neither value nor history disappears":
        ({"name": {**WIN, "x": [s3, s4]}, LINE_1: {"x": [s1]}}, 2,
         {"name": {**WIN, "x": [s3, s4]}, HORIZON: {"f": s1}}),
    "stamps tied at the cut all fall behind it":
        ({"name": {**WIN, "x": [s2, s3]}, "city": {"s": s5, "o": "o5", "x": [s2]}}, 2,
         {"name": {**WIN, "x": [s3]}, "city": {"s": s5, "o": "o5"}, HORIZON: {"f": s2}}),
    "the horizon stays put while the record is within the limit":
        ({"name": {**WIN, "x": [s5]}, HORIZON: {"f": s4}}, 2, {"name": {**WIN, "x": [s5]}, HORIZON: {"f": s4}}),
    "the horizon only moves forward":
        ({"name": {**WIN, "x": [s5, s6, s7]}, HORIZON: {"f": s4}}, 2,
         {"name": {**WIN, "x": [s6, s7]}, HORIZON: {"f": s5}}),
    "a winner is never pruned, whatever its stamp":
        ({"name": {"s": s1, "o": "o1", "x": [s2, s3, s4]}}, 2,
         {"name": {"s": s1, "o": "o1", "x": [s3, s4]}, HORIZON: {"f": s2}}),
}


@pytest.mark.parametrize("name", list(HISTORY_CASES))
def test_bound_history(name):
    before, limit, after = HISTORY_CASES[name]
    snapshot = repr(before)
    assert bound_history(before, limit) == after
    assert repr(before) == snapshot, "pure: the argument is not changed"
    assert bound_history(after, limit) == after, "idempotent"


# -- apply_op with a small limit: the effect of the horizon, in many arrival orders ------------
C = create("c1", "A", 1000, name="Acme", city="Leeds")
HISTORY = [C, edit("e1", "A", 2000, {"name": "Ann"}, saw=["c1"]),
           edit("e2", "A", 3000, {"name": "Bo"}, saw=["c1", "e1"]),
           edit("e3", "A", 4000, {"name": "Cy"}, saw=["c1", "e1", "e2"]),
           edit("e4", "A", 5000, {"name": "Di"}, saw=["c1", "e1", "e2", "e3"])]

# name: (writes, limit, values, open conflict ids, horizon)
APPLY_CASES = {
    "a late edit older than the horizon counts as seen":
        ([*HISTORY, edit("late", "B", 1500, {"name": "Old"}, saw=["c1"])], 3,
         {"name": "Di", "city": "Leeds"}, [], format_stamp(1500, 0, "B")),
    "a late edit newer than the horizon is still a conflict":
        ([*HISTORY, edit("late", "B", 2500, {"name": "Old"}, saw=["c1"])], 3,
         {"name": "Di", "city": "Leeds"}, ["late:name"], format_stamp(2000, 0, "A")),
    "without a horizon the same late edit is a conflict":
        ([*HISTORY, edit("late", "B", 1500, {"name": "Old"}, saw=["c1"])], MAX_HISTORY,
         {"name": "Di", "city": "Leeds"}, ["late:name"], None),
    "an edit the delete did not see, older than the horizon, counts as seen":
        ([*HISTORY, edit("u", "B", 1200, {"city": "York"}, saw=["c1"]),
          delete("d1", "A", 6000, saw=["c1", "e1", "e2", "e3", "e4"])], 3,
         {"name": "Di", "city": "York", "_deleted": True}, [], format_stamp(2000, 0, "A")),
    "the same edit newer than the horizon is an edit of a deleted record":
        ([*HISTORY, edit("u", "B", 4500, {"city": "York"}, saw=["c1"]),
          delete("d1", "A", 6000, saw=["c1", "e1", "e2", "e3", "e4"])], 8,
         {"name": "Di", "city": "York", "_deleted": True}, ["u:city"], None),
}


def _replay(ops, limit):
    rec = None
    for op in ops:
        rec = apply_op(rec, op, history=limit)
    return rec


@pytest.mark.parametrize("name", list(APPLY_CASES))
def test_the_horizon_in_many_arrival_orders(name):
    writes, limit, values, open_ids, horizon = APPLY_CASES[name]
    ops = build("account", writes)
    first = _replay(list(ops.values()), limit)
    assert first.values == values
    assert [c.id for c in conflicts(first)] == open_ids
    assert first.meta.get(HORIZON, {}).get("f") == horizon
    orders = itertools.permutations(ops.values())
    for order in itertools.islice(orders, 0, None, 7):  # every seventh permutation (hundreds per row)
        rec = _replay(order, limit)
        assert (rec.values, rec.meta) == (first.values, first.meta), [op.op_id for op in order]


# -- the bound, under the pattern that grew a record by 13.6 MB a push ---------------------------
FIELDS = ("name", "address", "city", "postcode", "phone", "email", "external_ref", "owner")


def _hostile(i: int) -> Op:
    """A resolve writing nothing whose base names 256 fresh stamps for each of the 8 fields: the
    most base stamps an op may carry for an account; each ended up in the record for good."""
    base = {name: [format_stamp(1_000_000 + (i * 8 + k) * MAX_BASE_STAMPS + j, 0, "x")
                   for j in range(MAX_BASE_STAMPS)] for k, name in enumerate(FIELDS)}
    return Op(op_id=f"h{i:05d}", device="evil", hlc=format_stamp(9_000_000_000, i, "evil"), entity="account",
              record_id="r1", fields={}, base=base, kind="resolve")


def _losing(i: int) -> Op:
    """Edits stamped in the past, each a losing version of 7 long text fields that nobody saw."""
    fields = {name: f"{i:05d}" + name[0] * 1990 for name in FIELDS if name != "email"}
    return Op(op_id=f"l{i:05d}", device="evil", hlc=format_stamp(500_000 + i, 0, "evil"), entity="account",
              record_id="r1", fields=fields, base={}, kind="update")


def _stored_bytes(pattern, pushes: int) -> list[int]:
    rec = apply_op(None, Op(op_id="c1", device="d", hlc=format_stamp(1_000_000, 0, "d"), entity="account",
                            record_id="r1", fields={"name": "Shop"}, kind="create"))
    sizes = []
    for i in range(pushes):
        rec = apply_op(rec, pattern(i))
        sizes.append(len(meta_column(rec)))
    return sizes


@pytest.mark.parametrize("pattern, bound", [
    (_hostile, MAX_HISTORY * 40 + 1000),  # a stamp of device "x" and its field: at most ~40 bytes stored
    (_losing, MAX_HISTORY * 2100 + 1000),  # a losing version: at most one field's value and its stamp
])
def test_a_record_stays_bounded_under_hostile_edits(pattern, bound):
    sizes = _stored_bytes(pattern, 60)
    assert max(sizes) <= bound, sizes[-1]
    assert sizes[-1] == sizes[-20], "it stops growing"


@settings(max_examples=examples(100), deadline=None, derandomize=bool(os.environ.get("CI")),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), limit=st.integers(1, 6))
def test_replicas_converge_under_a_tiny_history_limit(data, limit) -> None:
    """The property of tests/test_merge_property.py with a history of 1 to 6 entries: the horizon
    moves on every few ops, and replicas still converge whatever the order and duplicates."""
    saved = merge.MAX_HISTORY
    merge.MAX_HISTORY = limit
    try:
        world = prop.World()
        replicas = [prop.Replica(world, device, 0) for device in prop.DEVICES]
        replicas[0].write("account", "acct1", {"name": "x", "city": "y"}, {}, "create")
        replicas[0].write("order", "order2", {"account": "acct1", "currency": "GBP", "status": "draft"}, {},
                          "create")
        world.records = 2
        for replica in replicas[1:]:
            for op in world.ops:
                replica.receive(op)
        for _ in range(data.draw(st.integers(10, 40))):
            world.now += data.draw(st.sampled_from([0, 1, 1000]))
            action = data.draw(st.sampled_from(prop.ACTIONS))
            if action == "sync":
                prop.do_sync(data, world, replicas)
            else:
                prop.WRITES[action](data, world, data.draw(st.sampled_from(replicas)))
        prop.deliver_everything(data, world, replicas)
        prop.assert_converged(world, replicas)
    finally:
        merge.MAX_HISTORY = saved


def test_records_without_history_are_stored_as_before():
    """The horizon appears only once a record has more history than the limit."""
    rec = Record("account", "r1", {"name": "A"}, {"name": {"s": s1, "o": "o1"}})
    assert bound_history(rec.meta, MAX_HISTORY) == rec.meta
