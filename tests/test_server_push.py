"""The server's push path stores exactly what the pure merge rules give, whatever the batch holds."""

from __future__ import annotations

import itertools
import json

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


# -- group commit: pushes of one organisation waiting together are applied in one transaction ---
def _wire_create(i: int, dev: str = "dev-g") -> dict:
    from crm.hlc import format_stamp, now_ms

    return op_to_wire(Op(op_id=f"g-{dev}-{i}", device=dev, hlc=format_stamp(now_ms() - 60_000, i, dev),
                         entity="account", record_id=f"rec-g-{dev}-{i}", fields={"name": f"G {i}"}, kind="create"))


def test_a_group_of_pushes_is_one_transaction_and_each_gets_its_own_answer(tmp_path):
    """Four pushes in one group: one commit; the broken continuity of one applies nothing of it,
    an op sent in two of them is applied once and acknowledged to both, an unusable batch is
    refused alone, and each answer is the one a push alone would get (its witness: the log's last
    entry after the group)."""
    from crm.errors import ValidationError
    from crm.server.store import Continuity, ContinuityBroken

    store = ServerStore.open(tmp_path)
    store.add_token("acme", "rep")
    who = Identity("acme", "rep", "device")
    commits = []
    store.conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    shared = _wire_create(0, "dev-a")
    results = store.push_group([
        (who, [shared, _wire_create(1, "dev-a")], Continuity(device="dev-a", known="")),
        (who, [_wire_create(0, "dev-b")], Continuity(device="dev-b", known="op-of-another-copy")),
        (who, [{"op": 7}], Continuity(device="dev-c")),
        (who, [shared, _wire_create(0, "dev-d")], Continuity(device="dev-d")),
    ])
    assert commits == ["COMMIT"], "the three applicable pushes share one transaction"
    first, broken, unusable, last = results
    assert first.acked == ["g-dev-a-0", "g-dev-a-1"] and first.latest == "g-dev-a-1"
    assert isinstance(broken, ContinuityBroken) and broken.reason == "device_reused"
    assert isinstance(unusable, ValidationError)
    assert last.acked == ["g-dev-a-0", "g-dev-d-0"] and last.latest == "g-dev-d-0"
    assert first.witness == last.witness and last.witness[1] == "g-dev-d-0", "the log's last entry after the group"
    assert store.stats("acme") == {"ops": 3, "records": 3}, "dev-b's push applied nothing; the shared op once"


def test_a_group_whose_transaction_fails_applies_each_push_alone(tmp_path, monkeypatch):
    """A failure inside the shared transaction rolls it back whole; each push is then applied
    alone, so the one that fails fails alone and its neighbours land."""
    from crm.errors import CrmError
    from crm.server.store import Continuity

    store = ServerStore.open(tmp_path)
    store.add_token("acme", "rep")
    who = Identity("acme", "rep", "device")
    real_apply = ServerStore._apply

    def failing(self, conn, org, ops, **kw):
        if any(o.device == "dev-bad" for o in ops):
            raise CrmError("the disk is full")
        return real_apply(self, conn, org, ops, **kw)

    monkeypatch.setattr(ServerStore, "_apply", failing)
    good, bad, also = store.push_group([(who, [_wire_create(0, "dev-ok")], Continuity()),
                                        (who, [_wire_create(0, "dev-bad")], Continuity()),
                                        (who, [_wire_create(1, "dev-ok")], Continuity())])
    assert good.acked == ["g-dev-ok-0"] and also.acked == ["g-dev-ok-1"]
    assert isinstance(bad, CrmError)
    assert store.stats("acme") == {"ops": 2, "records": 2}


def test_a_push_too_big_to_share_a_transaction_goes_alone(tmp_path):
    from crm.server.store import PUSH_TXN_OPS, Continuity

    store = ServerStore.open(tmp_path)
    store.add_token("acme", "rep")
    who = Identity("acme", "rep", "device")
    commits = []
    store.conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    big = [_wire_create(i, "dev-big") for i in range(PUSH_TXN_OPS + 1)]
    results = store.push_group([(who, [_wire_create(0, "dev-s")], Continuity()), (who, big, Continuity()),
                                (who, [_wire_create(1, "dev-s")], Continuity())])
    assert [len(r.acked) for r in results] == [1, PUSH_TXN_OPS + 1, 1]
    assert len(commits) == 4, "alone, alone in two short transactions, alone"


def test_pushes_waiting_for_their_organisation_are_applied_together_over_http(tmp_path):
    """Six devices push at once while the organisation's two turns are taken: the pushes that
    waited are applied in one group; an invalid batch among them gets its 422 and the others 200."""
    import anyio
    import httpx

    from crm.server.app import create_app

    store = ServerStore.open(tmp_path)
    token = store.add_token("acme", "rep")
    import threading

    groups: list[int] = []
    holding: list[int] = []
    opened = threading.Event()

    def held(pushes):
        holding.append(len(pushes))
        opened.wait(120)  # the first turns hold until every push has arrived
        groups.append(len(pushes))
        return real(pushes)

    real = store.push_group
    store.push_group = held
    app = create_app(store)
    answers: dict[str, httpx.Response] = {}

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            async def push(name, ops):
                answers[name] = await client.post("/v1/push", json={"ops": ops}, timeout=120,
                                                  headers={"authorization": f"Bearer {token}"})
            async with anyio.create_task_group() as tasks:
                # Two pushes take the organisation's two turns and hold them; only then come the
                # others, so none (the invalid one least) can find a turn free, whatever the load.
                for n in range(2):
                    tasks.start_soon(push, f"dev-{n}", [_wire_create(0, f"dev-{n}")])
                with anyio.fail_after(120):
                    while sum(holding) < 2:
                        await anyio.sleep(0.01)
                for n in range(2, 6):
                    tasks.start_soon(push, f"dev-{n}", [_wire_create(0, f"dev-{n}")])
                tasks.start_soon(push, "invalid", [{**_wire_create(0, "dev-x"), "entity": "spaceship"}])
                with anyio.fail_after(120):
                    while app.state.writes.pending("acme") < 7:  # two hold their turns, the rest wait
                        await anyio.sleep(0.01)
                opened.set()

    anyio.run(scenario)
    assert answers["invalid"].status_code == 422, answers["invalid"].text
    assert all(answers[f"dev-{n}"].status_code == 200 for n in range(6))
    assert all(answers[f"dev-{n}"].json()["acked"] == [f"g-dev-{n}-0"] for n in range(6))
    assert sum(groups) == 6 and max(groups) >= 2, f"pushes that waited went in together: {groups}"
    assert store.stats("acme")["ops"] == 6


def test_a_write_woken_for_a_turn_that_another_writer_took_with_it_is_applied_once(tmp_path):
    """W waits; the turns free and W is woken; before W runs, N arrives, takes a turn and W with
    its own push. W must then wait for N's batch, not take a turn of its own (it was applied twice,
    or the server answered 500, before)."""
    import threading

    import anyio

    from crm.server.app import _OrgWrites, _Write
    from crm.server.store import Continuity

    store = ServerStore.open(tmp_path)
    store.add_token("acme", "rep")
    who = Identity("acme", "rep", "device")
    hold = threading.Event()
    calls: list[list[str]] = []
    real = store.push_group

    def push_group(pushes):
        calls.append([ops[0].op_id for _, ops, _ in pushes])
        if len(calls) <= 2:
            hold.wait(120)  # the first two writers keep their turns
        return real(pushes)

    store.push_group = push_group
    writes = _OrgWrites(store, 2)

    def write(n: int) -> _Write:
        return _Write(push=(who, [_wire_create(n, "dev-w")], Continuity(), None))

    async def scenario():
        async with anyio.create_task_group() as tasks:
            for n in (0, 1):
                tasks.start_soon(writes.run, "acme", write(n))
            with anyio.fail_after(120):
                while len(calls) < 2:
                    await anyio.sleep(0.01)
            waiting = write(2)
            tasks.start_soon(writes.run, "acme", waiting)
            with anyio.fail_after(120):
                while writes.pending("acme") < 3:
                    await anyio.sleep(0.01)
            queue, running = writes._orgs["acme"]
            running[0] -= 2  # both turns free: the first in line is woken ...
            writes._wake(queue, running)
            await writes.run("acme", write(3))  # ... but a newcomer takes it, and the woken write along
            running[0] += 2
            hold.set()
        assert waiting.done and waiting.error is None and waiting.result.acked == ["g-dev-w-2"]

    anyio.run(scenario)
    assert sorted(calls) == [["g-dev-w-0"], ["g-dev-w-1"], ["g-dev-w-3", "g-dev-w-2"]], calls
    assert store.stats("acme")["ops"] == 4


def test_a_back_office_edit_of_an_id_no_record_can_have_is_not_found(tmp_path):
    """A lone surrogate (undecodable argv bytes to `crm server edit`) cannot be stored in SQLite,
    so it names no record: NotFoundError (exit 4), not an internal error from the driver."""
    import pytest

    from crm.errors import NotFoundError

    store = ServerStore.open(tmp_path / "server")
    try:
        store.add_token("acme", "r1")
        for org in (None, "acme"):
            with pytest.raises(NotFoundError):
                store.edit(org, "account", "\udcff", {"name": "x"})
    finally:
        store.close()


# -- a group applied as one batch gives what the same pushes give one by one --------------------
GROUP_REPS = {"r-none": None, "r-t1": "t1", "r-t2": "t2"}  # rep -> the territory assigned to them
GROUP_AT = "2026-01-02T03:04:05Z"


def _group_store(target, org: str) -> ServerStore:
    store = ServerStore.open(target)
    for rep, territory in GROUP_REPS.items():
        store.add_token(org, rep)
        if territory:
            store.assign(org, rep, territory)
    return store


def _group_pushes(draw, st) -> list[tuple[str, str, list[dict], str | None]]:
    """(rep, device, wire ops, known) of a few pushes of one organisation: accounts created with
    and without a territory (a rep's default, one they do not hold), visits and edits on them,
    order lines past a small cap, an account's territory or an order's account named again by a
    second create or a resolution (refused when it differs), ops sent again in a later
    push, continuity claims right, stale and absent, and devices whose clocks run up to four
    minutes ahead of the server's (a back-office op must still follow the earlier pushes' stamps)."""
    from crm.hlc import format_stamp, now_ms

    base_ms = now_ms() - 600_000
    counter = itertools.count()
    made: list[dict] = []
    last_of: dict[str, str] = {}
    out = []
    for _ in range(draw(st.integers(2, 6))):
        rep = draw(st.sampled_from(sorted(GROUP_REPS)))
        dev = draw(st.sampled_from(["dev-a", "dev-b", "dev-c"]))
        skew = draw(st.sampled_from([0, 0, 660_000, 840_000]))  # this device's clock: 1 or 4 min ahead
        ops: list[dict] = []
        for _ in range(draw(st.integers(0, 5))):
            n = next(counter)
            what = draw(st.sampled_from(["account", "account", "visit", "edit", "order", "lines", "move", "again"]))
            acct = draw(st.sampled_from(["acct-0", "acct-1", "acct-2"]))
            if what == "again":
                if made:
                    ops.append(draw(st.sampled_from(made)))
                continue
            entity, rid, kind = "account", acct, "update"
            if what == "account":
                territory = draw(st.sampled_from([None, "t1", "t2", "t3"]))
                fields = {"name": f"A {n}", **({"territory": territory} if territory else {})}
                kind = "create"
            elif what == "visit":
                entity, rid, kind = "visit", f"visit-{n}", "create"
                fields = {"account": acct, "outcome": f"v {n}", "at": GROUP_AT, "rep": rep}
            elif what == "edit":
                fields = {"city": f"City {n}"}
            elif what == "order":
                entity, rid, kind = "order", "ord-0", "create"
                fields = {"account": acct, "currency": "GBP", "status": "draft", "placed_at": GROUP_AT}
            elif what == "lines":
                entity, rid = "order", "ord-0"
                fields = {f"line:l{draw(st.integers(0, 4))}": {"sku": "SKU-1", "quantity": 1, "unit_price": "2.50"}}
            else:
                kind, fields = "resolve", {"territory": draw(st.sampled_from(["t1", "t2"]))}
            wire = op_to_wire(Op(op_id=f"op-{n}", device=dev, hlc=format_stamp(base_ms + skew + n, 0, dev), entity=entity,
                                 record_id=rid, fields=fields, kind=kind))
            ops.append(wire)
            made.append(wire)
        claim = draw(st.sampled_from(["none", "right", "stale"]))
        known = None if claim == "none" else "" if claim == "stale" else last_of.get(dev, "")
        for wire in ops:
            if wire["dev"] == dev:
                last_of[dev] = wire["op"]
        out.append((rep, dev, ops, known))
    return out


def _answer(result) -> tuple:
    from crm.server.store import ContinuityBroken

    if isinstance(result, ContinuityBroken):
        return ("continuity", result.reason, result.latest)
    if isinstance(result, Exception):
        return (type(result).__name__, str(result))
    return (result.acked, result.rejected, result.ahead)


def _state(store: ServerStore, org: str) -> tuple:
    """What the store holds, a back-office op's stamp (the server's clock when it ran) and id (new
    for each) left out."""
    import json
    import re

    from crm import canonical_json

    def export(**scope) -> str:
        text = re.sub(r'"[0-9]+\.[0-9]+@backoffice"', '"@backoffice"', canonical_json(store.export(org, **scope)))
        state = json.loads(re.sub(r'"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:', '"backoffice-op:', text))
        state["conflicts"].sort(key=lambda c: json.dumps(c, sort_keys=True))
        return json.dumps(state, sort_keys=True)

    with store.db.read() as conn:
        device_ops = {row[0] for row in conn.execute(
            "SELECT op_id FROM ops WHERE org = ? AND substr(device, 1, 4) = 'dev-'", (org,)).fetchall()}
        territories = [tuple(row) for row in conn.execute(
            "SELECT account, territory FROM account_terr WHERE org = ? ORDER BY account", (org,)).fetchall()]
    return export(), [export(rep=rep) for rep in sorted(GROUP_REPS)], device_ops, territories


def check_group_against_alone(target_for, monkeypatch) -> None:
    """ServerStore.push_group against ServerStore.push, push after push, on two fresh stores
    (``target_for(name)`` -> (store target, organisation)): the same answers (acknowledged,
    rejected, a broken continuity alike; ``latest`` as the whole group leaves the log), the same
    records, the same export for each rep, the same ops logged and the same territory for each
    account."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from crm.server.store import Continuity

    monkeypatch.setattr("crm.server.store.MAX_ORDER_LINES", 3)  # the cap, reached within a few pushes

    @settings(max_examples=60)
    @given(st.data())
    def check(data):
        pushes = _group_pushes(data.draw, st)
        (alone_at, alone_org), (together_at, org) = target_for("alone"), target_for("together")
        alone, together = _group_store(alone_at, alone_org), _group_store(together_at, org)
        try:
            expected = []
            for rep, dev, ops, known in pushes:
                try:
                    expected.append(alone.push(Identity(alone_org, rep, "device"), ops,
                                               continuity=Continuity(device=dev, known=known)))
                except Exception as exc:  # noqa: BLE001 - compared with the group's
                    expected.append(exc)
            got = together.push_group([(Identity(org, rep, "device"), ops, Continuity(device=dev, known=known))
                                       for rep, dev, ops, known in pushes])
            assert [_answer(r) for r in got] == [_answer(r) for r in expected]
            assert _state(together, org) == _state(alone, alone_org)
            with alone.db.read() as conn:
                for (_, dev, _, _), result, alone_result in zip(pushes, got, expected, strict=True):
                    if not isinstance(result, Exception):  # as the group leaves the log; or, where the
                        # group went push by push (a field fixed at creation to check), as each left it
                        assert result.latest in (alone._latest_of(conn, alone_org, dev), alone_result.latest)
        finally:
            alone.close()
            together.close()

    check()


def test_a_default_territory_in_a_group_is_stamped_after_the_earlier_pushes(tmp_path):
    """A clock ahead in an earlier push of the group: the rep's default territory, a back-office
    op, still follows it, as it would pushed one by one (found by review: the group once stamped it
    before), and a later push's explicit territory does not move the account in either (it is now
    refused: a field fixed at creation)."""
    from crm.hlc import now_ms
    from crm.server.store import Continuity

    now = now_ms()
    pushes = [("r-none", "dev-a", [_wire("dev-a", 0, "acct-x", {"name": "X"}, now + 300_000)]),
              ("r-t1", "dev-b", [_wire("dev-b", 1, "acct-0", {"name": "A"}, now - 1000)]),
              ("r-t2", "dev-c", [_wire("dev-c", 2, "acct-0", {"name": "A2", "territory": "t2"}, now + 120_000)])]
    alone, together = _group_store(tmp_path / "alone", "acme"), _group_store(tmp_path / "together", "acme")
    answers = [alone.push(Identity("acme", rep, "device"), ops) for rep, _, ops in pushes]
    grouped = together.push_group([(Identity("acme", rep, "device"), ops, Continuity()) for rep, _, ops in pushes])
    assert [op for op, _ in answers[2].rejected] == [op for op, _ in grouped[2].rejected] == ["op-2"]
    territory = [json.loads(s.conn.execute("SELECT data FROM records WHERE id = 'acct-0'").fetchone()[0])["territory"]
                 for s in (alone, together)]
    assert territory == ["t1", "t1"], "the default follows push 0's stamp, so it beats push 2's"
    alone.close()
    together.close()


def _wire(dev: str, n: int, rid: str, fields: dict, ms: int) -> dict:
    from crm.hlc import format_stamp

    return op_to_wire(Op(op_id=f"op-{n}", device=dev, hlc=format_stamp(ms, 0, dev), entity="account",
                         record_id=rid, fields=fields, kind="create"))


def test_a_group_applied_as_one_batch_gives_what_its_pushes_give_one_by_one(tmp_path_factory, monkeypatch):
    """check_group_against_alone on SQLite (test_server_postgres.py: on PostgreSQL)."""
    check_group_against_alone(lambda name: (tmp_path_factory.mktemp(name), "acme"), monkeypatch)
