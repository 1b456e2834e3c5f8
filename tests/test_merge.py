"""The merge rules as a table of cases (the same table as docs/merge-rules.md).

Each row writes ops the way a replica would: an op's base comes from the real rules
(``edit_base``, ``delete_base``, ``resolution``) applied to the ops its writer had ``saw``. The
row then delivers the ops to a fresh replica in ``arrival`` order (duplicates allowed) and checks
the record's values and open conflicts. Every row is also replayed in every other arrival order,
so each expected outcome is shown to be independent of order.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from crm.hlc import format_stamp
from crm.merge import (
    Conflict,
    Record,
    apply_op,
    conflicts,
    delete_base,
    edit_base,
    leaves,
    resolution,
    submit,
)
from crm.ops import Op
from crm.records import present

LINE_1 = "line:00000000-0000-4000-8000-000000000001"
LINE_2 = "line:00000000-0000-4000-8000-000000000002"
DOC = Path(__file__).resolve().parent.parent / "docs" / "merge-rules.md"


# -- the little language of the table ------------------------------------------------------------
@dataclass(frozen=True)
class Write:
    """One op of a row. ``saw`` names the ops its writer had applied when it wrote."""

    op_id: str
    device: str
    wall: int
    what: str  # create | edit | delete | resolve | submit
    fields: dict[str, Any] = field(default_factory=dict)
    saw: tuple[str, ...] = ()
    conflict: str = ""  # resolve: the conflict id
    keep: str = ""  # resolve: winner | loser


def create(op_id, device, wall, **fields):
    return Write(op_id, device, wall, "create", fields)


def edit(op_id, device, wall, fields, saw):
    return Write(op_id, device, wall, "edit", fields, tuple(saw))


def delete(op_id, device, wall, saw):
    return Write(op_id, device, wall, "delete", {}, tuple(saw))


def submit_order(op_id, device, wall, saw):
    return Write(op_id, device, wall, "submit", {}, tuple(saw))


def resolve(op_id, device, wall, conflict, keep, saw):
    return Write(op_id, device, wall, "resolve", {}, tuple(saw), conflict, keep)


def replay(entity: str, ops: list[Op]) -> Record | None:
    rec = None
    for op in ops:
        rec = apply_op(rec, op)
    return rec


def build(entity: str, writes: list[Write]) -> dict[str, Op]:
    """The ops of a row, each based on exactly what its writer saw, via the real rules."""
    ops: dict[str, Op] = {}
    for w in writes:
        seen = replay(entity, [ops[name] for name in w.saw])
        stamp = format_stamp(w.wall, 0, w.device)
        assert all(stamp > ops[name].hlc for name in w.saw), f"{w.op_id}: a writer's clock is past what it saw"
        kind = "update"
        if w.what == "create":
            fields, base, kind = dict(w.fields), {}, "create"
        elif w.what == "edit":
            fields, base = dict(w.fields), {name: edit_base(seen, name) for name in w.fields}
        elif w.what == "delete":
            fields, base, kind = {"_deleted": True}, delete_base(seen), "delete"
        elif w.what == "submit":
            fields, base = submit(seen)
        else:
            (target,) = [c for c in conflicts(seen) if c.id == w.conflict]
            fields, base = resolution(seen, target, w.keep)
            kind = "resolve"
        ops[w.op_id] = Op(op_id=w.op_id, device=w.device, hlc=stamp, entity=entity, record_id="r1",
                          fields=fields, base=base, kind=kind)
    return ops


@dataclass(frozen=True)
class Case:
    name: str
    writes: list[Write]
    values: dict[str, Any]
    conflicts: dict[str, tuple[str, Any, Any]]  # id -> (kind, winner value, loser value)
    arrival: tuple[str, ...] = ()  # default: the order written
    entity: str = "account"
    total: str | None = None  # an order's total as shown (and exported)


C = create("c1", "A", 1000, name="Acme", city="Leeds")
ORDER = create("c1", "A", 1000, account="a1", currency="GBP", status="draft")
E_ANN = edit("e1", "A", 2000, {"name": "Ann"}, saw=["c1"])
E_BEA = edit("e2", "B", 2500, {"name": "Bea"}, saw=["c1"])
SAME_TIME_BEA = edit("e2", "B", 2000, {"name": "Bea"}, saw=["c1"])
DEL = delete("d1", "A", 2000, saw=["c1"])
E_AFTER_DEL = edit("e1", "B", 2500, {"name": "Bea"}, saw=["c1"])  # later wall clock, still unseen
E_BEFORE_DEL = edit("e1", "B", 1500, {"name": "Bea"}, saw=["c1"])
CONCURRENT = [C, E_ANN, E_BEA]
ALL = ["c1", "e1", "e2"]

CASES = [
    Case("create", [C], {"name": "Acme", "city": "Leeds"}, {}),
    Case("sequential edits by one device",
         [C, E_ANN, edit("e2", "A", 3000, {"name": "Anna"}, saw=["c1", "e1"])],
         {"name": "Anna", "city": "Leeds"}, {}),
    Case("concurrent edits of one field: later stamp wins, loser kept as a conflict",
         CONCURRENT, {"name": "Bea", "city": "Leeds"},
         {"e1:name": ("concurrent_edit", "Bea", "Ann")}),
    Case("concurrent edits at the same wall time: device id breaks the tie",
         [C, E_ANN, SAME_TIME_BEA], {"name": "Bea", "city": "Leeds"},
         {"e1:name": ("concurrent_edit", "Bea", "Ann")}),
    Case("concurrent edits of different fields both survive",
         [C, E_ANN, edit("e2", "B", 2500, {"city": "York"}, saw=["c1"])],
         {"name": "Ann", "city": "York"}, {}),
    Case("concurrent edits writing the same value are no conflict",
         [C, edit("e1", "A", 2000, {"name": "Same"}, saw=["c1"]),
          edit("e2", "B", 2500, {"name": "Same"}, saw=["c1"])],
         {"name": "Same", "city": "Leeds"}, {}),
    Case("an edit after concurrent equal values raises no conflict",
         [C, edit("e1", "A", 2000, {"name": "Same"}, saw=["c1"]),
          edit("e2", "B", 2500, {"name": "Same"}, saw=["c1"]),
          edit("e3", "A", 3000, {"name": "Next"}, saw=ALL)],
         {"name": "Next", "city": "Leeds"}, {}),
    Case("an edit on top of the winner leaves the conflict open",
         [*CONCURRENT, edit("e3", "C", 3000, {"name": "Cy"}, saw=ALL)],
         {"name": "Cy", "city": "Leeds"}, {"e1:name": ("concurrent_edit", "Cy", "Ann")}),
    Case("resolve keeping the winner",
         [*CONCURRENT, resolve("r1", "A", 3000, "e1:name", "winner", saw=ALL)],
         {"name": "Bea", "city": "Leeds"}, {}),
    Case("resolve keeping the loser",
         [*CONCURRENT, resolve("r1", "A", 3000, "e1:name", "loser", saw=ALL)],
         {"name": "Ann", "city": "Leeds"}, {}),
    Case("three concurrent edits: resolving one conflict leaves the other open",
         [*CONCURRENT, edit("e3", "C", 2200, {"name": "Cy"}, saw=["c1"]),
          resolve("r1", "A", 3000, "e1:name", "loser", saw=[*ALL, "e3"])],
         {"name": "Ann", "city": "Leeds"}, {"e3:name": ("concurrent_edit", "Ann", "Cy")}),
    Case("delete vs concurrent edit: deleted, edit kept as edit_of_deleted",
         [C, DEL, E_AFTER_DEL], {"name": "Bea", "city": "Leeds", "_deleted": True},
         {"e1:name": ("edit_of_deleted", True, "Bea")}),
    Case("delete wins over a concurrent edit with an earlier stamp too",
         [C, DEL, E_BEFORE_DEL], {"name": "Bea", "city": "Leeds", "_deleted": True},
         {"e1:name": ("edit_of_deleted", True, "Bea")}),
    Case("delete vs edit, resolve keeping the loser restores the record with the edit",
         [C, DEL, E_AFTER_DEL, resolve("r1", "A", 3000, "e1:name", "loser", saw=["c1", "d1", "e1"])],
         {"name": "Bea", "city": "Leeds", "_deleted": False}, {}),
    Case("delete vs edit, resolve keeping the winner stays deleted",
         [C, DEL, E_AFTER_DEL, resolve("r1", "A", 3000, "e1:name", "winner", saw=["c1", "d1", "e1"])],
         {"name": "Bea", "city": "Leeds", "_deleted": True}, {}),
    Case("delete vs a two-field edit, restoring brings back both fields",
         [C, DEL, edit("e1", "B", 2500, {"name": "Bea", "city": "York"}, saw=["c1"]),
          resolve("r1", "A", 3000, "e1:city", "loser", saw=["c1", "d1", "e1"])],
         {"name": "Bea", "city": "York", "_deleted": False}, {}),
    Case("delete that saw the edit: no conflict",
         [C, E_BEA, delete("d1", "A", 3000, saw=["c1", "e2"])],
         {"name": "Bea", "city": "Leeds", "_deleted": True}, {}),
    Case("delete that saw an open conflict settles it",
         [*CONCURRENT, delete("d1", "C", 3000, saw=ALL)],
         {"name": "Bea", "city": "Leeds", "_deleted": True}, {}),
    Case("order status: submitted vs cancelled concurrently gives cancelled",
         [ORDER, edit("s1", "A", 2500, {"status": "submitted"}, saw=["c1"]),
          edit("s2", "B", 2000, {"status": "cancelled"}, saw=["c1"])],
         {"account": "a1", "currency": "GBP", "status": "cancelled"}, {}, entity="order"),
    Case("order status: a late submitted after cancelled keeps cancelled",
         [ORDER, edit("s1", "A", 2000, {"status": "cancelled"}, saw=["c1"]),
          edit("s2", "B", 9000, {"status": "submitted"}, saw=["c1"])],
         {"account": "a1", "currency": "GBP", "status": "cancelled"}, {}, entity="order"),
    Case("order lines added on two devices both survive",
         [ORDER, edit("l1", "A", 2000, {LINE_1: {"sku": "P-1", "quantity": 2, "unit_price": "1.00"}}, saw=["c1"]),
          edit("l2", "B", 2000, {LINE_2: {"sku": "P-2", "quantity": 1, "unit_price": "9.50"}}, saw=["c1"])],
         {"account": "a1", "currency": "GBP", "status": "draft",
          LINE_1: {"sku": "P-1", "quantity": 2, "unit_price": "1.00"},
          LINE_2: {"sku": "P-2", "quantity": 1, "unit_price": "9.50"}}, {}, entity="order"),
    Case("duplicate ops change nothing",
         CONCURRENT, {"name": "Bea", "city": "Leeds"}, {"e1:name": ("concurrent_edit", "Bea", "Ann")},
         arrival=("c1", "e1", "e1", "c1", "e2", "e1", "e2")),
    Case("edit arriving before its create",
         [C, E_ANN], {"name": "Ann", "city": "Leeds"}, {}, arrival=("e1", "c1")),
    Case("delete arriving before the edit it saw",
         [C, E_BEA, delete("d1", "A", 3000, saw=["c1", "e2"])],
         {"name": "Bea", "city": "Leeds", "_deleted": True}, {}, arrival=("c1", "d1", "e2")),
    Case("resolution (keep winner) arriving before the loser",
         [*CONCURRENT, resolve("r1", "A", 3000, "e1:name", "winner", saw=ALL)],
         {"name": "Bea", "city": "Leeds"}, {}, arrival=("c1", "e2", "r1", "e1")),
    Case("resolution (keep loser) arriving before the loser",
         [*CONCURRENT, resolve("r1", "A", 3000, "e1:name", "loser", saw=ALL)],
         {"name": "Ann", "city": "Leeds"}, {}, arrival=("r1", "e2", "e1", "c1")),
]


def stamp(wall: int, device: str) -> str:
    return format_stamp(wall, 0, device)


def line(sku: str, quantity: int, price: str) -> dict[str, Any]:
    return {"sku": sku, "quantity": quantity, "unit_price": price}


ID_1, ID_2 = LINE_1[len("line:"):], LINE_2[len("line:"):]
P1, P1_MORE, P2 = line("P-1", 2, "1.00"), line("P-1", 5, "1.00"), line("P-2", 1, "9.50")
ORDER_FIELDS = {"account": "a1", "currency": "GBP"}
ADD_1 = edit("l1", "A", 1500, {LINE_1: P1}, saw=["c1"])
SUBMIT_A = submit_order("s1", "A", 2000, saw=["c1", "l1"])
ADD_2_LATE = edit("l2", "B", 2500, {LINE_2: P2}, saw=["c1", "l1"])  # B had not seen the submit
SUBMITTED_1 = {"status": "submitted", "submission": {ID_1: [stamp(2000, "A"), P1]}}

ORDER_CASES = [
    Case("concurrent edits of one draft line: a conflict",
         [ORDER, ADD_1, edit("e1", "A", 2000, {LINE_1: line("P-1", 3, "1.00")}, saw=["c1", "l1"]),
          edit("e2", "B", 2500, {LINE_1: P1_MORE}, saw=["c1", "l1"])],
         {**ORDER_FIELDS, "status": "draft", LINE_1: P1_MORE},
         {"e1:" + LINE_1: ("concurrent_edit", P1_MORE, line("P-1", 3, "1.00"))}, entity="order", total="5.00"),
    Case("a line removed on one device and edited later on another: the edit wins, the removal is a conflict",
         [ORDER, ADD_1, edit("r", "A", 2000, {LINE_1: None}, saw=["c1", "l1"]),
          edit("e2", "B", 2500, {LINE_1: P1_MORE}, saw=["c1", "l1"])],
         {**ORDER_FIELDS, "status": "draft", LINE_1: P1_MORE},
         {"r:" + LINE_1: ("concurrent_edit", P1_MORE, None)}, entity="order", total="5.00"),
    Case("a line edited on one device and removed later on another: removed, the edit is a conflict",
         [ORDER, ADD_1, edit("e2", "B", 2000, {LINE_1: P1_MORE}, saw=["c1", "l1"]),
          edit("r", "A", 2500, {LINE_1: None}, saw=["c1", "l1"])],
         {**ORDER_FIELDS, "status": "draft", LINE_1: None},
         {"e2:" + LINE_1: ("concurrent_edit", None, P1_MORE)}, entity="order", total="0.00"),
    Case("submit records the lines it saw; no conflict",
         [ORDER, ADD_1, SUBMIT_A], {**ORDER_FIELDS, **SUBMITTED_1, LINE_1: P1}, {}, entity="order", total="2.00"),
    Case("a line added concurrently with a submit is held back as edit_of_submitted",
         [ORDER, ADD_1, SUBMIT_A, ADD_2_LATE],
         {**ORDER_FIELDS, **SUBMITTED_1, LINE_1: P1, LINE_2: P2},
         {"l2:" + LINE_2: ("edit_of_submitted", None, P2)}, entity="order", total="2.00"),
    Case("a concurrent line stamped before the submit is held back too",
         [ORDER, ADD_1, edit("l2", "B", 1800, {LINE_2: P2}, saw=["c1", "l1"]), SUBMIT_A],
         {**ORDER_FIELDS, **SUBMITTED_1, LINE_1: P1, LINE_2: P2},
         {"l2:" + LINE_2: ("edit_of_submitted", None, P2)}, entity="order", total="2.00"),
    Case("a line edited concurrently with a submit: the order keeps the line as submitted",
         [ORDER, ADD_1, SUBMIT_A, edit("e2", "B", 2500, {LINE_1: P1_MORE}, saw=["c1", "l1"])],
         {**ORDER_FIELDS, **SUBMITTED_1, LINE_1: P1_MORE},
         {"e2:" + LINE_1: ("edit_of_submitted", P1, P1_MORE)}, entity="order", total="2.00"),
    Case("a line removed concurrently with a submit: the order keeps the line",
         [ORDER, ADD_1, SUBMIT_A, edit("r", "B", 2500, {LINE_1: None}, saw=["c1", "l1"])],
         {**ORDER_FIELDS, **SUBMITTED_1, LINE_1: None},
         {"r:" + LINE_1: ("edit_of_submitted", P1, None)}, entity="order", total="2.00"),
    Case("a line added after a submit, resolve keeping the winner: the submitted order stands",
         [ORDER, ADD_1, SUBMIT_A, ADD_2_LATE,
          resolve("k", "A", 3000, "l2:" + LINE_2, "winner", saw=["c1", "l1", "s1", "l2"])],
         {**ORDER_FIELDS, **SUBMITTED_1, LINE_1: P1, LINE_2: P2}, {}, entity="order", total="2.00"),
    Case("a line added after a submit, resolve keeping the loser: the line joins the submitted order",
         [ORDER, ADD_1, SUBMIT_A, ADD_2_LATE,
          resolve("k", "A", 3000, "l2:" + LINE_2, "loser", saw=["c1", "l1", "s1", "l2"])],
         {**ORDER_FIELDS, "status": "submitted", LINE_1: P1, LINE_2: P2,
          "submission": {ID_1: [stamp(2000, "A"), P1], ID_2: [stamp(3000, "A"), P2]}},
         {}, entity="order", total="11.50"),
    Case("a line removed after a submit, resolve keeping the loser: the line leaves the submitted order",
         [ORDER, ADD_1, SUBMIT_A, edit("r", "B", 2500, {LINE_1: None}, saw=["c1", "l1"]),
          resolve("k", "B", 3000, "r:" + LINE_1, "loser", saw=["c1", "l1", "s1", "r"])],
         {**ORDER_FIELDS, "status": "submitted", LINE_1: None,
          "submission": {ID_1: [stamp(3000, "B"), None]}}, {}, entity="order", total="0.00"),
    Case("two devices submit concurrently having seen different lines: the order holds both",
         [ORDER, ADD_1, edit("l2", "B", 1600, {LINE_2: P2}, saw=["c1"]),
          SUBMIT_A, submit_order("s2", "B", 2100, saw=["c1", "l2"])],
         {**ORDER_FIELDS, "status": "submitted", LINE_1: P1, LINE_2: P2,
          "submission": {ID_1: [stamp(2000, "A"), P1], ID_2: [stamp(2100, "B"), P2]}},
         {}, entity="order", total="11.50"),
    Case("a line added concurrently with a cancel from draft joins the cancelled order",
         [ORDER, ADD_1, edit("x1", "A", 2000, {"status": "cancelled"}, saw=["c1", "l1"]), ADD_2_LATE],
         {**ORDER_FIELDS, "status": "cancelled", LINE_1: P1, LINE_2: P2}, {}, entity="order", total="11.50"),
    Case("a submitted order cancelled later keeps the submitted lines",
         [ORDER, ADD_1, SUBMIT_A, edit("x1", "A", 3000, {"status": "cancelled"}, saw=["c1", "l1", "s1"]),
          ADD_2_LATE],
         {**ORDER_FIELDS, **SUBMITTED_1, "status": "cancelled", LINE_1: P1, LINE_2: P2},
         {"l2:" + LINE_2: ("edit_of_submitted", None, P2)}, entity="order", total="2.00"),
    Case("a submit arriving after the late line still holds it back",
         [ORDER, ADD_1, SUBMIT_A, ADD_2_LATE],
         {**ORDER_FIELDS, **SUBMITTED_1, LINE_1: P1, LINE_2: P2},
         {"l2:" + LINE_2: ("edit_of_submitted", None, P2)}, arrival=("l2", "c1", "l1", "s1"),
         entity="order", total="2.00"),
]
CASES += ORDER_CASES


def _summary(rec: Record) -> tuple[dict, dict, list]:
    return rec.values, rec.meta, [c.to_json() for c in conflicts(rec)]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Case) -> None:
    ops = build(case.entity, case.writes)
    rec = replay(case.entity, [ops[name] for name in (case.arrival or [w.op_id for w in case.writes])])
    assert rec.values == case.values
    found = {c.id: (c.kind, c.winner_value, c.loser_value) for c in conflicts(rec)}
    assert found == case.conflicts
    if case.total is not None:
        assert present(rec)["total"] == case.total
    for conflict in conflicts(rec):  # a conflict names the op that lost, with what it wrote
        assert ops[conflict.loser_op].fields[conflict.field] == conflict.loser_value
        assert ops[conflict.loser_op].hlc == conflict.loser_stamp

    # Order independence: every arrival order, each op once, ends in the same record.
    expected = _summary(rec)
    for order in itertools.permutations(ops.values()):
        assert _summary(replay(case.entity, list(order))) == expected, [op.op_id for op in order]


def test_every_case_is_in_the_documented_table() -> None:
    rows = {m.strip() for m in re.findall(r"^\|\s*([^|]+?)\s*\|", DOC.read_text(), flags=re.M)}
    missing = [c.name for c in CASES if c.name not in rows]
    assert not missing, f"cases missing from {DOC.name}: {missing}"


# -- the helper functions' contracts --------------------------------------------------------------
def test_apply_op_never_mutates_the_record_it_is_given() -> None:
    ops = build("account", CONCURRENT)
    rec = replay("account", [ops["c1"], ops["e1"]])
    frozen = (repr(rec.values), repr(rec.meta))
    apply_op(rec, ops["e2"])
    assert (repr(rec.values), repr(rec.meta)) == frozen


def test_leaves_lists_the_winner_and_every_open_loser() -> None:
    ops = build("account", CONCURRENT)
    rec = replay("account", ops.values())
    assert leaves(rec, "name") == sorted([ops["e1"].hlc, ops["e2"].hlc])
    assert edit_base(rec, "name") == [ops["e2"].hlc]  # an edit sees the winner only
    assert delete_base(rec) == {"city": [ops["c1"].hlc], "name": sorted([ops["e1"].hlc, ops["e2"].hlc])}


def test_edit_base_of_a_never_written_field_is_empty() -> None:
    rec = replay("account", [build("account", [C])["c1"]])
    assert edit_base(rec, "phone") == []


def test_conflict_ids_name_the_losing_op_and_field_and_serialise() -> None:
    ops = build("account", CONCURRENT)
    (conflict,) = conflicts(replay("account", ops.values()))
    assert isinstance(conflict, Conflict)
    assert conflict.to_json() == {
        "id": "e1:name", "entity": "account", "record": "r1", "field": "name", "kind": "concurrent_edit",
        "winner": {"value": "Bea", "stamp": ops["e2"].hlc},
        "loser": {"value": "Ann", "stamp": ops["e1"].hlc},
    }


def test_resolution_refuses_an_unknown_keep() -> None:
    ops = build("account", CONCURRENT)
    rec = replay("account", ops.values())
    with pytest.raises(ValueError, match="winner or loser"):
        resolution(rec, conflicts(rec)[0], "both")


def test_keeping_the_winner_writes_nothing_so_it_cannot_clash_with_a_newer_edit() -> None:
    ops = build("account", [*CONCURRENT, resolve("r1", "A", 3000, "e1:name", "winner", saw=ALL),
                            edit("e3", "C", 2900, {"name": "Cy"}, saw=ALL)])
    assert ops["r1"].fields == {}
    rec = replay("account", ops.values())
    assert rec.values["name"] == "Cy" and conflicts(rec) == []
