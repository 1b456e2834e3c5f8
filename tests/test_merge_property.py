"""Property: replicas that exchange ops in any order, with duplicates, converge and lose nothing.

Three replicas write random ops against their own local state with the real rules (``edit_base``,
``delete_base``, ``resolution``) and a ``HybridClock`` each, on wall clocks skewed by hours that
stand still and jump backwards. They exchange random subsets of what they hold, in random order,
with duplicates and re-deliveries; at the end everything reaches everyone. Then:

* every replica holds the same values, metadata and conflicts (and so does a replay in write order);
* no field write is silently discarded: each one is its field's current value, an open conflict,
  seen by a later op (named in its base), or, for the forward-only order status, behind the
  status that won; a line of a submitted order counts as current only when the order shows it
  (the line as submitted), and every entry of a submit's ``submission`` is held unless a later
  stamp wrote that line;
* resolving the remaining conflicts one by one on one replica and syncing settles all of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from crm.domain import DELETED, LINE_PREFIX, STATUS_RANK, SUBMISSION
from crm.hlc import HybridClock
from crm.merge import (
    Record,
    apply_op,
    conflict_count,
    conflicts,
    delete_base,
    edit_base,
    resolution,
    submit,
    submitted_lines,
)
from crm.ops import Op
from crm.records import present
from tests.support import examples

DEVICES = ("dev-a", "dev-b", "dev-c")
FIELDS = ("name", "city", "phone")
VALUES = ("x", "y", "z")  # few values, so concurrent writes of the same value happen often
START_MS = 1_700_000_000_000
HOUR_MS = 3_600_000
MAX_RECORDS = 4


@dataclass
class World:
    now: int = START_MS
    ops: list[Op] = field(default_factory=list)  # every op ever written, in write order
    records: int = 0
    lines: int = 0


class Replica:
    def __init__(self, world: World, device: str, skew_ms: int) -> None:
        self.world = world
        self.device = device
        self.skew_ms = skew_ms
        self.clock = HybridClock(device=device, wall=lambda: self.world.now + self.skew_ms)
        self.records: dict[str, Record] = {}
        self.held: dict[str, Op] = {}  # every op this replica has, its own and received
        self.last_stamp = ""

    def receive(self, op: Op) -> None:
        self.clock.observe(op.hlc)
        self.records[op.record_id] = apply_op(self.records.get(op.record_id), op)
        self.held.setdefault(op.op_id, op)

    def write(self, entity: str, rid: str, fields: dict, base: dict, kind: str) -> Op:
        stamp = self.clock.tick()
        assert stamp > self.last_stamp, "a replica's stamps must strictly increase"
        seen = [s for stamps in base.values() for s in stamps]
        assert all(s < stamp for s in seen), "an op's stamp must be after every version it saw"
        self.last_stamp = stamp
        op = Op(op_id=f"op{len(self.world.ops)}-{self.device}", device=self.device, hlc=stamp,
                entity=entity, record_id=rid, fields=fields, base=base, kind=kind)
        self.world.ops.append(op)
        self.receive(op)
        note(f"{self.device} {kind} {rid} {fields} base={base} @ {stamp}")
        return op

    def live(self, entity: str | None = None) -> list[Record]:
        return [rec for rid, rec in sorted(self.records.items())
                if not rec.deleted and (entity is None or rec.entity == entity)]

    def open_conflicts(self) -> list[tuple[Record, object]]:
        return [(rec, c) for _, rec in sorted(self.records.items()) for c in conflicts(rec)]


# -- the actions a replica can take ----------------------------------------------------------------
def do_create(data, world: World, r: Replica) -> None:
    if world.records >= MAX_RECORDS:
        return
    world.records += 1
    if data.draw(st.booleans()):
        fields = {"name": data.draw(st.sampled_from(VALUES)), "city": data.draw(st.sampled_from(VALUES))}
        r.write("account", f"acct{world.records}", fields, {}, "create")
    else:
        r.write("order", f"order{world.records}", {"account": "acct1", "currency": "GBP", "status": "draft"},
                {}, "create")


def do_edit(data, world: World, r: Replica) -> None:
    accounts = r.live("account")
    if not accounts:
        return
    rec = data.draw(st.sampled_from(accounts))
    names = data.draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=2, unique=True))
    fields = {name: data.draw(st.sampled_from(VALUES)) for name in names}
    r.write("account", rec.id, fields, {name: edit_base(rec, name) for name in fields}, "update")


def do_delete(data, world: World, r: Replica) -> None:
    live = r.live()
    if live:
        rec = data.draw(st.sampled_from(live))
        r.write(rec.entity, rec.id, {DELETED: True}, delete_base(rec), "delete")


def do_resolve(data, world: World, r: Replica) -> None:
    found = r.open_conflicts()
    if found:
        rec, conflict = data.draw(st.sampled_from(found))
        fields, base = resolution(rec, conflict, data.draw(st.sampled_from(["winner", "loser"])))
        r.write(rec.entity, rec.id, fields, base, "resolve")


def do_status(data, world: World, r: Replica) -> None:
    orders = r.live("order")
    if not orders:
        return
    rec = data.draw(st.sampled_from(orders))
    ahead = [s for s in STATUS_RANK if STATUS_RANK[s] > STATUS_RANK.get(rec.values.get("status"), 0)]
    if ahead:  # a device only moves its own view of the status forward
        status = data.draw(st.sampled_from(ahead))
        if status == "submitted":  # as the device does: with the lines it shows
            fields, base = submit(rec)
        else:
            fields, base = {"status": status}, {"status": edit_base(rec, "status")}
        r.write("order", rec.id, fields, base, "update")


def do_line(data, world: World, r: Replica) -> None:
    orders = [rec for rec in r.live("order") if rec.values.get("status") == "draft"]
    if not orders:
        return
    rec = data.draw(st.sampled_from(orders))
    existing = sorted(name for name in rec.values if name.startswith("line:") and rec.values[name] is not None)
    value: dict | None = {"sku": "P-1", "quantity": data.draw(st.integers(1, 3)), "unit_price": "2.50"}
    if existing and data.draw(st.booleans()):  # change a line's quantity, or remove it
        name = data.draw(st.sampled_from(existing))
        if data.draw(st.booleans()):
            value = None
    else:
        world.lines += 1
        name = f"line:00000000-0000-4000-8000-{world.lines:012d}"
    r.write("order", rec.id, {name: value}, {name: edit_base(rec, name)}, "update")


def do_sync(data, world: World, replicas: list[Replica]) -> None:
    sender, receiver = data.draw(st.permutations(replicas))[:2]
    held = list(sender.held.values())
    if not held:
        return
    batch = data.draw(st.lists(st.sampled_from(held), max_size=2 * len(held)))  # duplicates, any order
    note(f"sync {sender.device} -> {receiver.device}: {[op.op_id for op in batch]}")
    for op in batch:
        receiver.receive(op)


def do_clock(data, world: World, r: Replica) -> None:
    jump = data.draw(st.sampled_from([-6 * HOUR_MS, -HOUR_MS, -1, 0, 1, HOUR_MS, 3 * HOUR_MS]))
    r.skew_ms += jump
    note(f"{r.device} wall clock jumps {jump:+d} ms")


WRITES = {"create": do_create, "edit": do_edit, "delete": do_delete, "resolve": do_resolve,
          "status": do_status, "line": do_line, "clock": do_clock}
ACTIONS = ["create", "edit", "edit", "edit", "edit", "delete", "resolve", "resolve", "status", "line", "line",
           "clock", "sync", "sync", "sync"]


# -- what must hold -------------------------------------------------------------------------------
def state(replica: Replica) -> dict:
    return {rid: (rec.values, rec.meta, [c.to_json() for c in conflicts(rec)], present(rec))
            for rid, rec in sorted(replica.records.items())}


def deliver_everything(data, world: World, replicas: list[Replica]) -> None:
    for replica in replicas:
        order = data.draw(st.permutations(world.ops))
        again = data.draw(st.lists(st.sampled_from(world.ops), max_size=5)) if world.ops else []
        for op in [*again, *order, *again]:
            replica.receive(op)


def assert_converged(world: World, replicas: list[Replica]) -> None:
    first = state(replicas[0])
    for rec in replicas[0].records.values():  # the cheap count the stores keep agrees with the rules
        assert conflict_count(rec) == len(conflicts(rec))
    for replica in replicas[1:]:
        assert state(replica) == first, f"{replica.device} diverged from {replicas[0].device}"
    reference: dict[str, Record] = {}
    for op in world.ops:
        reference[op.record_id] = apply_op(reference.get(op.record_id), op)
    assert {rid: (rec.values, rec.meta) for rid, rec in sorted(reference.items())} == \
        {rid: (v, m) for rid, (v, m, _, _) in first.items()}


def assert_nothing_silently_discarded(world: World, replica: Replica) -> None:
    seen = {(op.record_id, name, stamp) for op in world.ops for name, stamps in op.base.items()
            for stamp in stamps}
    by_id = {op.op_id: op for op in world.ops}
    for op in world.ops:
        rec = replica.records[op.record_id]
        open_ids = {c.id for c in conflicts(rec)}
        for name, value in op.fields.items():
            if f"{op.op_id}:{name}" in open_ids or (op.record_id, name, op.hlc) in seen:
                continue
            if (rec.entity, name) == ("order", "status"):
                if STATUS_RANK[value] <= STATUS_RANK[rec.values[name]]:
                    continue  # the join: a status at or behind the winning one is part of it
            elif (rec.entity, name) == ("order", SUBMISSION):
                held = rec.values[name]
                for line_id, line in value.items():  # the join: each entry held, or a later one wrote it
                    entry = held[line_id]
                    assert entry == [op.hlc, line] or entry[0] > op.hlc, (op.op_id, line_id, entry)
                continue
            elif name.startswith(LINE_PREFIX) and (shown := submitted_lines(rec)) is not None \
                    and not rec.deleted:
                if shown.get(name, (None, None))[1] == value:
                    continue  # the line as the submitted order shows it
            elif rec.values.get(name) == value and not (rec.deleted and name != DELETED):
                continue  # the field's current value (a deleted record's edits must show as conflicts)
            raise AssertionError(f"{op.op_id} wrote {rec.entity}.{name}={value!r} on {op.record_id} and "
                                 f"it is neither current, nor a conflict, nor seen by a later op")
    for rec in replica.records.values():
        for conflict in conflicts(rec):  # every conflict shows exactly what its losing op wrote
            loser = by_id[conflict.loser_op]
            assert (loser.hlc, loser.fields[conflict.field]) == (conflict.loser_stamp, conflict.loser_value)


def resolve_everything(data, world: World, replicas: list[Replica]) -> None:
    resolver = replicas[0]
    for _ in range(10 * len(world.ops) + 1):
        found = resolver.open_conflicts()
        if not found:
            break
        do_resolve(data, world, resolver)
    else:
        raise AssertionError(f"conflicts never settle: {[c.id for _, c in resolver.open_conflicts()]}")
    for replica in replicas[1:]:
        for op in world.ops:
            replica.receive(op)
    assert_converged(world, replicas)
    assert all(replica.open_conflicts() == [] for replica in replicas)


@settings(max_examples=examples(200), deadline=None, derandomize=bool(os.environ.get("CI")),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_replicas_converge_and_discard_nothing(data) -> None:
    world = World()
    skews = data.draw(st.lists(st.integers(-3 * HOUR_MS, 3 * HOUR_MS) | st.just(0),
                               min_size=len(DEVICES), max_size=len(DEVICES)))
    replicas = [Replica(world, device, skew) for device, skew in zip(DEVICES, skews, strict=True)]
    # Everyone starts from one shared account and order, so concurrent work begins at once.
    replicas[0].write("account", "acct1", {"name": "x", "city": "y"}, {}, "create")
    replicas[0].write("order", "order2", {"account": "acct1", "currency": "GBP", "status": "draft"}, {}, "create")
    world.records = 2
    for replica in replicas[1:]:
        for op in world.ops:
            replica.receive(op)
    for _ in range(data.draw(st.integers(10, 50))):
        world.now += data.draw(st.sampled_from([0, 0, 1, 5, 1000]))  # 0: the wall clock stood still
        action = data.draw(st.sampled_from(ACTIONS))
        if action == "sync":
            do_sync(data, world, replicas)
        else:
            WRITES[action](data, world, data.draw(st.sampled_from(replicas)))

    deliver_everything(data, world, replicas)
    assert_converged(world, replicas)
    kinds = sorted({c.kind for _, c in replicas[0].open_conflicts()})
    event(f"ops: {len(world.ops) // 10 * 10}+; open conflicts at the end: {', '.join(kinds) or 'none'}")
    assert_nothing_silently_discarded(world, replicas[0])
    resolve_everything(data, world, replicas)
    assert_nothing_silently_discarded(world, replicas[0])
