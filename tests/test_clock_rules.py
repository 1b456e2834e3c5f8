"""The clock rules as pure functions, from tables of cases (docs/merge-rules.md, "When a clock was
wrong"): the tick rule with its cap near the server's clock, the estimate of the server's clock, the
re-stamping of refused ops, and what the server admits. Then re-stamping on a real device store, and
the server acknowledging an op it already logged whatever its clock says now."""

from __future__ import annotations

import itertools
import random

import pytest

from crm import Device, merge
from crm.admission import CLOCK_AHEAD, ClockAhead, InvalidOp, admit, parse
from crm.hlc import (
    DEVICE_LEAD_MS,
    MAX_AHEAD_MS,
    MAX_COUNTER,
    MAX_DRIFT_MS,
    HybridClock,
    ServerTime,
    advance,
    format_stamp,
    parse_stamp,
    physical_ms,
    restamp,
)
from crm.ids import uuid7
from crm.ops import Op, op_from_wire, op_to_wire

T = 1_700_000_000_000
S = 1000
H = 3600 * S
Y = 365 * 24 * H
LEAD = DEVICE_LEAD_MS

# case: (state before, device wall clock, what it learnt of the server (server ms, wall ms) or None,
#        state of the stamp it issues)
TICKS = {
    "never synced: the wall clock": ((T - 10, 3), T, None, (T, 0)),
    "never synced, wall clock behind the last stamp: the counter": ((T, 3), T - 5, None, (T, 4)),
    "wall clock a year ahead of the server: capped at the server's clock plus the lead":
        ((0, 0), T + Y + 5 * S, (T, T + Y), (T + 5 * S + LEAD, 0)),
    "wall clock ahead by less than the lead: the wall clock": ((0, 0), T + 500, (T, T), (T + 500, 0)),
    "wall clock hours behind the server: used as it is, the cap never raises a stamp":
        ((0, 0), T - 5 * H + S, (T, T - 5 * H), (T - 5 * H + S, 0)),
    "wall clock set back after the sync (corrected): the wall clock again":
        ((T, 4), T + 60 * S, (T, T + Y), (T + 60 * S, 0)),
    "wall clock set back below the server's clock: the counter carries the order":
        ((T, 7), T - Y, (T, T + Y), (T, 8)),
    "a pulled stamp 9 minutes ahead: the next stamp still comes after it":
        ((T + 9 * 60 * S, 2), T, (T, T), (T + 9 * 60 * S, 3)),
    "wall clock jumped ahead since the sync: not detectable here (the server refuses, the device re-stamps)":
        ((T, 0), T + 3 * H, (T, T), (T + 3 * H, 0)),
    "counter full: the next millisecond": ((T, MAX_COUNTER), T - 1, None, (T + 1, 0)),
    "counter full while capped: the next millisecond": ((T + LEAD, MAX_COUNTER), T + Y, (T, T + Y), (T + LEAD + 1, 0)),
}


@pytest.mark.parametrize("case", list(TICKS))
def test_tick(case):
    state, wall, learnt, expected = TICKS[case]
    server = ServerTime(*learnt) if learnt else None
    assert advance(state, physical_ms(wall, server)) == expected
    clock = HybridClock(device="dev-a", state=state, wall=lambda: wall, server=server)
    assert clock.tick() == format_stamp(*expected, "dev-a") and clock.state == expected
    assert expected > state, "a stamp always comes after the last one"


# case: (server ms, wall ms when learnt), wall now, estimate of the server's clock now
ESTIMATES = {
    "clock right, a minute on": ((T, T), T + 60 * S, T + 60 * S),
    "clock a year ahead, a minute on": ((T, T + Y), T + Y + 60 * S, T + 60 * S),
    "clock 5 hours behind, a minute on": ((T, T - 5 * H), T - 5 * H + 60 * S, T + 60 * S),
    "clock set back from a year ahead to right: trust it": ((T, T + Y), T + 60 * S, T + 60 * S),
    "clock set back below the server time learnt: the server time learnt": ((T, T + Y), T - H, T),
}


@pytest.mark.parametrize("case", list(ESTIMATES))
def test_estimate_of_the_server_clock(case):
    learnt, wall, expected = ESTIMATES[case]
    assert ServerTime(*learnt).estimate(wall) == expected


@pytest.mark.parametrize("text, expected", [
    (f"{T} {T + Y}", ServerTime(T, T + Y)), (f"{T} -5", ServerTime(T, -5)),
    (None, None), ("", None), ("1 2 3", None), ("x 1", None), (f"{T}", None), ("١ 2", None),
])
def test_server_time_is_stored_as_text(text, expected):
    assert ServerTime.parse(text) == expected
    if expected:
        assert ServerTime.parse(str(expected)) == expected


def _s(wall: int, counter: int = 0, dev: str = "d") -> str:
    return format_stamp(wall, counter, dev)


# case: (old stamps, newest other stamp the device holds, physical time now, new stamps in old order)
RESTAMPS = {
    "three stamps a year ahead: now, one after the other":
        ([_s(T + Y), _s(T + Y, 1), _s(T + Y, 2)], (T - 5, 0), T, [_s(T), _s(T, 1), _s(T, 2)]),
    "given out of order: renamed in stamp order":
        ([_s(T + Y, 2), _s(T + Y), _s(T + 2 * Y)], (T - 5, 0), T, [_s(T, 1), _s(T), _s(T, 2)]),
    "a stamp held is after now (pulled, 9 minutes ahead): after it":
        ([_s(T + Y)], (T + 9 * 60 * S, 4), T, [_s(T + 9 * 60 * S, 5)]),
    "the stamp held has a full counter: the next millisecond":
        ([_s(T + Y)], (T, MAX_COUNTER), T, [_s(T + 1)]),
}


@pytest.mark.parametrize("case", list(RESTAMPS))
def test_restamp(case):
    old, floor, physical, expected = RESTAMPS[case]
    renamed = restamp(old, floor=floor, physical=physical, device="d")
    assert [renamed[stamp] for stamp in old] == expected
    held = format_stamp(*floor, "d")
    for a, b in itertools.permutations([held, *old], 2):  # the renaming keeps every order
        assert (a < b) == (renamed.get(a, a) < renamed.get(b, b))


# stamp's distance ahead of the server's clock -> what the server does with the op
ADMISSION = {
    "on time": (0, None),
    "a year behind": (-Y, None),
    "ahead by the most a stamp may be": (MAX_AHEAD_MS, None),
    "a millisecond further": (MAX_AHEAD_MS + 1, "rejected"),
    "hours ahead": (3 * H, "rejected"),
    "a year ahead": (MAX_DRIFT_MS, "rejected"),
    "more than a year ahead: breaks the protocol (the whole batch)": (MAX_DRIFT_MS + 1, "invalid"),
}


@pytest.mark.parametrize("case", list(ADMISSION))
def test_what_the_server_admits(case):
    ahead, outcome = ADMISSION[case]
    wire = op_to_wire(Op(op_id="op-1", device="dev-a", hlc=format_stamp(T + ahead, 0, "dev-a"), entity="account",
                         record_id="rec-1", fields={"name": "Shop"}, kind="create"))
    if outcome == "invalid":
        with pytest.raises(InvalidOp) as refused:
            parse(wire, now=T)
        assert (refused.value.op_id, refused.value.code) == ("op-1", CLOCK_AHEAD)
        return
    op = parse(wire, now=T)
    if outcome == "rejected":
        with pytest.raises(ClockAhead, match="ahead of the server's clock"):
            admit(op, now=T)
    else:
        admit(op, now=T)


# -- re-stamping on a device's store ------------------------------------------------------------
def _replay(ops: list[Op]) -> merge.Record:
    rec = None
    for op in ops:
        rec = merge.apply_op(rec, op)
    return rec


def test_restamping_renames_consistently_and_keeps_causality(tmp_path, monkeypatch):
    """A device creates a record and syncs it; with its clock a year ahead it edits it twice, merges
    concurrent edits from another device, and edits again with the right clock; then the server
    refuses its first edit as ahead. After ``restamp``: the same op ids, each op after what it was
    built on, the record exactly as a replay of the create, the re-stamped ops and the other
    device's gives it in any order, the same conflicts, and the clock back near now."""
    dev = Device.init(tmp_path / "a", rep="rep-a")
    now = T + 10 * Y // 365  # any time: the device's clock is this plus the skew
    monkeypatch.setenv("CRM_CLOCK_SKEW_MS", str(now - 60 * S - _machine_ms()))
    rid = dev.create("account", {"name": "Acme", "city": "Leeds"})["id"]
    (create,) = [op_from_wire(_wire(dev, e["op"])) for e in dev.outbox()["entries"]]
    dev.settle_pushed([create.op_id], [])  # the server has it
    monkeypatch.setenv("CRM_CLOCK_SKEW_MS", str(now + Y - _machine_ms()))
    dev.edit("account", rid, {"name": "Acme Ltd"})
    dev.edit("account", rid, {"name": "Acme Limited", "city": "Bradford"})
    # Another device, its clock right, edited the record concurrently (it saw only the create).
    theirs = [Op(op_id=uuid7(), device="dev-b", hlc=format_stamp(now - 5 * S, i, "dev-b"), entity="account",
                 record_id=rid, fields=fields, base={name: [create.hlc] for name in fields}, kind="update")
              for i, fields in enumerate([{"name": "Acme & Co"}, {"city": "York"}])]
    dev.apply_remote(theirs, cursor="2")
    monkeypatch.setenv("CRM_CLOCK_SKEW_MS", str(now - _machine_ms()))  # the clock is right again
    dev.edit("account", rid, {"phone": "0113 555 0100"})
    before = dev.get("account", rid)
    conflicts_before = dev.conflicts()
    assert len(conflicts_before) == 2, "name and city were edited on both devices"
    queued = [op_from_wire(_wire(dev, e["op"])) for e in dev.outbox()["entries"]]
    assert all(op.wall_ms >= now + Y for op in queued), "the clock was poisoned"

    first = queued[0]
    assert dev.restamp([(first.op_id, first.hlc)], ServerTime(now, now)) == 3
    renamed = [op_from_wire(_wire(dev, e["op"])) for e in dev.outbox()["entries"]]
    assert [op.op_id for op in renamed] == [op.op_id for op in queued], "the same ops, the same ids"
    for op in renamed:
        assert now - 5 * S < op.wall_ms <= now + DEVICE_LEAD_MS
        assert all(op.hlc > stamp for stamps in op.base.values() for stamp in stamps), "after its base"
    assert dev.get("account", rid) == before, "the same values"
    assert [(c["id"], c["winner"]["value"], c["loser"]["value"]) for c in dev.conflicts()] == \
        [(c["id"], c["winner"]["value"], c["loser"]["value"]) for c in conflicts_before]
    with dev.store.read() as conn:
        stored = dev._load(conn, "account", rid)
    for order in random.Random(7).sample(list(itertools.permutations(renamed + theirs)), 20):
        replayed = _replay([create, *order])
        assert (replayed.values, replayed.meta) == (stored.values, stored.meta)
    nxt = dev.edit("account", rid, {"city": "Hull"})
    newest = op_from_wire(_wire(dev, dev.outbox()["entries"][-1]["op"]))
    assert newest.hlc > max(op.hlc for op in renamed + theirs) and nxt["city"] == "Hull"
    assert newest.base["city"] == [renamed[1].hlc], "built on the re-stamped version"
    assert newest.wall_ms <= now + DEVICE_LEAD_MS + 60 * S, "the clock is no longer a year ahead"
    dev.close()


def test_restamping_does_nothing_for_ops_another_sync_already_restamped(tmp_path, monkeypatch):
    dev = Device.init(tmp_path / "a", rep="rep-a")
    monkeypatch.setenv("CRM_CLOCK_SKEW_MS", str(Y))
    dev.create("account", {"name": "Acme"})
    (entry,) = dev.outbox()["entries"]
    now = _machine_ms()
    assert dev.restamp([(entry["op"], entry["hlc"])], ServerTime(now, now + Y)) == 1
    fresh = dev.outbox()["entries"][0]["hlc"]
    # the answer to a push of the old stamp arrives late: nothing is renamed twice
    assert dev.restamp([(entry["op"], entry["hlc"])], ServerTime(now, now + Y)) == 1
    assert dev.outbox()["entries"][0]["hlc"] == fresh
    dev.close()


def _machine_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


def _wire(dev: Device, op_id: str) -> dict:
    import json

    with dev.store.read() as conn:
        return json.loads(conn.execute("SELECT body FROM outbox WHERE op_id = ?", (op_id,)).fetchone()[0])


# -- the server ---------------------------------------------------------------------------------
def test_an_op_already_logged_is_acknowledged_even_if_the_servers_clock_went_back(tmp_path, monkeypatch):
    """A device re-stamps only ops the server has not logged: so an op the server refuses as ahead
    must not be in its log. If the server's clock stepped back after logging it, it is acknowledged."""
    import crm.server.store as server_store
    from crm.server import ServerStore

    store = ServerStore.open(tmp_path / "server")
    token = store.add_token("acme", "rep-1")
    who = store.authenticate(token)
    now = _machine_ms()
    logged, fresh = (op_to_wire(Op(op_id=uuid7(), device="dev-a", hlc=format_stamp(now + 5 * 60 * S, i, "dev-a"),
                                   entity="account", record_id=uuid7(), fields={"name": f"Shop {i}"},
                                   kind="create")) for i in range(2))
    monkeypatch.setattr(server_store, "server_now_ms", lambda: now)
    assert store.push(who, [logged]).acked == [logged["op"]]
    monkeypatch.setattr(server_store, "server_now_ms", lambda: now - H)  # the server's clock steps back
    again = store.push(who, [logged, fresh])
    assert again.acked == [logged["op"]] and again.rejected == []
    assert [op_id for op_id, _ in again.ahead] == [fresh["op"]]
    assert again.to_json()["rejected"][0]["code"] == CLOCK_AHEAD
    assert store.stats("acme")["ops"] == 1
    store.close()


def test_parse_stamp_of_restamped_ops_round_trips():
    renamed = restamp([_s(T + Y, 3, "dev-a")], floor=(T, 0), physical=T + 7, device="dev-a")
    assert parse_stamp(renamed[_s(T + Y, 3, "dev-a")]).wall_ms == T + 7


def test_restamping_a_submit_renames_the_stamps_its_submission_holds(tmp_path, monkeypatch):
    """A submitted order's ``submission`` keeps, per line, the stamp of the op that wrote it: a
    re-stamped submit must leave the device holding what a replay of the re-stamped ops gives
    (else a later resolution joins differently on the device and on the server)."""
    dev = Device.init(tmp_path / "a", rep="rep-a")
    now = T + 10 * Y // 365
    monkeypatch.setenv("CRM_CLOCK_SKEW_MS", str(now - 60 * S - _machine_ms()))
    account = dev.create("account", {"name": "Acme"})["id"]
    oid = dev.add_order({"account": account}, [{"sku": "SKU-1", "quantity": 2, "unit_price": "1.00"}])["id"]
    created = [op_from_wire(_wire(dev, e["op"])) for e in dev.outbox()["entries"]]
    dev.settle_pushed([op.op_id for op in created], [])
    monkeypatch.setenv("CRM_CLOCK_SKEW_MS", str(now + Y - _machine_ms()))  # a year ahead
    dev.set_order_status(oid, "submitted")
    (submit,) = [op_from_wire(_wire(dev, e["op"])) for e in dev.outbox()["entries"]]
    monkeypatch.setenv("CRM_CLOCK_SKEW_MS", str(now - _machine_ms()))
    assert dev.restamp([(submit.op_id, submit.hlc)], ServerTime(now, now)) == 1
    (renamed,) = [op_from_wire(_wire(dev, e["op"])) for e in dev.outbox()["entries"]]
    with dev.store.read() as conn:
        stored = dev._load(conn, "order", oid)
    replayed = _replay([op for op in created if op.entity == "order"] + [renamed])
    assert (replayed.values, replayed.meta) == (stored.values, stored.meta)
    assert dev.get("order", oid)["total"] == "2.00"
    dev.close()
