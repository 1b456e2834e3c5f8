"""The clock rules as pure functions, from tables of cases (docs/merge-rules.md, "When a clock was
wrong"): what the server admits, and the server acknowledging an op it already logged whatever its
clock says now."""

from __future__ import annotations

import pytest

from crm.admission import CLOCK_AHEAD, ClockAhead, InvalidOp, admit, parse
from crm.hlc import MAX_AHEAD_MS, MAX_DRIFT_MS, format_stamp
from crm.ids import uuid7
from crm.ops import Op, op_to_wire

T = 1_700_000_000_000
S = 1000
H = 3600 * S
Y = 365 * 24 * H


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


def _machine_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


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
