"""A long outbox is pushed with one batch in flight while the device stores the answer before it
(crm.sync._OnThread): the server still gets the batches one after the other, each sent after the
answer to the one before and with the continuity claims that answer gave; an answer that stops
the run (an op ahead of the server's clock, a whole batch refused, no answer) leaves every queued
op's attempt count equal to the times it was really sent.

First against the real server app over a real SQLite store (AppTransport), then against a
scripted server (respx) for the answers a real one gives only when something is wrong."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from unittest import mock

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crm.sync
from crm.device import Device
from crm.errors import ServerError, ServerUnreachableError
from crm.sync import SyncClient, push_outbox
from tests.support import AppServer, AppTransport, CtrlCOnce, examples

ORG, URL, BATCH = "acme", "http://crm-server.test", 2


class Recording(httpx.BaseTransport):
    """AppTransport, logging each push's ops and claims and each answer, in the order they pass."""

    def __init__(self, inner: AppTransport) -> None:
        self.inner = inner
        self.events: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.second_push_arrived = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/push":
            return self.inner.handle_request(request)
        body = json.loads(request.read())
        with self.lock:
            self.events.append(("push", body))
            if sum(kind == "push" for kind, _ in self.events) == 2:
                self.second_push_arrived.set()
        response = self.inner.handle_request(request)
        with self.lock:
            self.events.append(("answer", json.loads(response.content)))
        return response


@pytest.fixture
def world(tmp_path: Path):
    server = AppServer(tmp_path / "server")
    store, app = server.store, server.transport
    dev = Device.init(tmp_path / "home", rep="a", server_url=URL, token=store.add_token(ORG, "a"))
    yield store, app, dev
    dev.close()
    server.close()


def test_each_batch_goes_out_after_the_answer_before_it_with_the_claims_that_answer_gave(world, monkeypatch):
    store, app, dev = world
    made = [dev.create("account", {"name": f"Shop {n}"})["id"] for n in range(7)]
    queued = [op_id for op_id, _ in dev.pending_ops(limit=100)]
    recording = Recording(app)
    settle, settled_while_next_in_flight = dev.settle_pushed, []

    def settle_once_the_next_batch_is_out(acked, rejected, **claims):
        # Stored while the next batch is on its way: the first answer is stored only once the
        # second push reached the server (a client that stores, then sends, never gets here).
        if not settled_while_next_in_flight:
            settled_while_next_in_flight.append(recording.second_push_arrived.wait(timeout=60))
        settle(acked, rejected, **claims)

    monkeypatch.setattr(dev, "settle_pushed", settle_once_the_next_batch_is_out)
    with SyncClient(base_url=URL, token=dev.credentials()[1], transport=recording) as client:
        assert push_outbox(dev, client, batch=BATCH) == (7, 0)

    assert settled_while_next_in_flight == [True]
    kinds = [kind for kind, _ in recording.events]
    assert kinds == ["push", "answer"] * 4, "one push in flight at a time, each after the answer before it"
    pushes = [body for kind, body in recording.events if kind == "push"]
    answers = [body for kind, body in recording.events if kind == "answer"]
    assert [op["op"] for body in pushes for op in body["ops"]] == queued, "every op once, in the device's order"
    assert [len(body["ops"]) for body in pushes] == [2, 2, 2, 1]
    for before, body in zip(answers[:-1], pushes[1:], strict=True):
        assert (body["witness"], body["known"]) == (before["witness"], before["latest"])
    assert dev.outbox()["pending"] == 0
    assert dev.continuity() == (answers[-1]["witness"], answers[-1]["latest"])
    assert sorted(record["id"] for record in store.export(ORG)["account"]) == sorted(made)


class Scripted:
    """A push endpoint that acknowledges what it is sent, but for the pushes ``script`` names
    (push number -> what to do: an exception, a Response, or "ahead" for the first op refused as
    ahead of the server's clock); it counts how often it was sent each op."""

    def __init__(self, script: dict[int, object]) -> None:
        self.script, self.pushes, self.sent = script, 0, Counter()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.pushes += 1
        ops = [op["op"] for op in json.loads(request.content)["ops"]]
        self.sent.update(ops)
        what = self.script.get(self.pushes)
        if isinstance(what, Exception):
            raise what
        if isinstance(what, httpx.Response):
            return what
        if what == "ahead":
            return httpx.Response(200, json={"acked": ops[1:], "rejected": [
                {"op": ops[0], "code": "clock_ahead", "reason": "the device's clock is ahead"}]})
        return httpx.Response(200, json={"acked": ops, "rejected": []})


def _push(dev: Device, script: dict[int, object]) -> tuple[Scripted, BaseException | None]:
    server = Scripted(script)
    error = None
    with respx.mock(base_url=URL) as mock:
        mock.post("/v1/push").mock(side_effect=server)
        with SyncClient(base_url=URL, token="t0k", timeout=2.0) as client:
            try:
                push_outbox(dev, client, batch=BATCH)
            except (ServerError, ServerUnreachableError) as exc:
                error = exc
    return server, error


def _attempts(dev: Device) -> dict[str, int]:
    return {e["op"]: e["attempts"] for state in (False, True) for e in dev.outbox(rejected=state)["entries"]}


@pytest.fixture
def queued(tmp_path: Path) -> Device:
    dev = Device.init(tmp_path / "home", rep="a", settings={"server_url": URL, "token": "t0k"})
    for n in range(7):
        dev.create("account", {"name": f"Shop {n}"})
    yield dev
    dev.close()


@pytest.mark.parametrize("script", [
    {2: httpx.ConnectError("connection refused")},
    {2: httpx.ReadTimeout("timed out")},
    {3: httpx.Response(503, json={"error": "busy", "message": "try later"})},
    {2: httpx.Response(200, json={"acked": []})},
    {1: "ahead", 3: httpx.ConnectError("connection refused")},
    {2: httpx.Response(422, json={"error": "invalid", "message": "broken op"}), 5: httpx.ConnectError("gone")},
], ids=["no connection", "no answer", "server busy", "acknowledged nothing", "op ahead", "batch refused"])
def test_an_answer_that_stops_the_run_leaves_each_attempt_count_equal_to_the_sends(queued, script):
    before = [op_id for op_id, _ in queued.pending_ops(limit=100)]
    server, error = _push(queued, script)
    assert error is not None, "every script ends the push with a failure"
    attempts = _attempts(queued)
    assert attempts, "the failure leaves ops queued"
    for op_id, count in attempts.items():
        assert count == server.sent[op_id], f"{op_id}: counted {count} attempts, sent {server.sent[op_id]} times"
    gone = [op_id for op_id in before if op_id not in attempts]
    assert all(server.sent[op_id] for op_id in gone), "only an op the server acknowledged leaves the outbox"


def test_the_op_of_a_refused_batch_is_parked_and_the_rest_goes_on(queued):
    before = [op_id for op_id, _ in queued.pending_ops(limit=100)]
    culprit = before[3]
    server, error = _push(queued, {2: httpx.Response(422, json={"error": "invalid", "op": culprit,
                                                                "message": "broken op"})})
    assert error is None
    assert queued.outbox()["pending"] == 0
    parked = queued.outbox(rejected=True)["entries"]
    assert [(e["op"], e["attempts"]) for e in parked] == [(culprit, 1)]
    assert all(server.sent[op_id] >= 1 for op_id in before)


def test_an_op_the_answer_leaves_out_goes_in_the_next_batch_before_anything_after_it(queued):
    """An answer that says nothing of an op (a server off the protocol, a damaged entry) stops the
    pipeline: the queue is read again from its head, so no later op overtakes the one left out."""
    before = [op_id for op_id, _ in queued.pending_ops(limit=100)]
    orders: list[list[str]] = []

    def server(request: httpx.Request) -> httpx.Response:
        ops = [op["op"] for op in json.loads(request.content)["ops"]]
        orders.append(ops)
        return httpx.Response(200, json={"acked": ops[1:] if len(orders) == 1 else ops, "rejected": []})

    with respx.mock(base_url=URL) as mock:
        mock.post("/v1/push").mock(side_effect=server)
        with SyncClient(base_url=URL, token="t0k", timeout=2.0) as client:
            push_outbox(queued, client, batch=BATCH)
    assert orders[1][0] == before[0], f"the op left out went after others: {orders}"
    sent = [op_id for batch in orders for op_id in batch]
    assert sorted(set(sent)) == sorted(before) and queued.outbox()["pending"] == 0


def test_a_failing_take_back_never_hides_why_the_run_stopped(queued, monkeypatch):
    count = queued.count_attempt

    def store_fails_on_take_back(op_ids, *, by=1):
        if by < 0:
            raise OSError("database is locked")
        count(op_ids, by=by)

    monkeypatch.setattr(queued, "count_attempt", store_fails_on_take_back)
    _, error = _push(queued, {2: httpx.ConnectError("connection refused")})
    assert isinstance(error, ServerUnreachableError)


def test_ops_the_server_logged_after_this_batch_are_never_re_stamped(queued):
    """A kill between sending batch N+1 and storing the answer to N leaves N+1 queued though the
    server has logged it (its id is the server's ``latest`` for the device). Should an op of N be
    refused as ahead of the server's clock on the next try, re-stamping it and everything queued
    after it would give logged ops stamps the server never sees: the op is parked instead, as
    the refusal it first got would have parked it."""
    ops = [op_id for op_id, _ in queued.pending_ops(limit=100)]
    stamps = {op_id: json.loads(body)["hlc"] for op_id, body in queued.pending_ops(limit=100)}
    seen: dict[str, set[str]] = {}

    def server(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)["ops"]
        for op in sent:
            seen.setdefault(op["op"], set()).add(op["hlc"])
        ids = [op["op"] for op in sent]
        headers = {"crm-server-time": "1000000000000"}  # far behind every stamp: all would be ahead
        if ids[0] == ops[0]:
            return httpx.Response(200, headers=headers, json={
                "acked": ids[1:], "latest": ops[3], "witness": "9:" + ops[3],
                "rejected": [{"op": ids[0], "code": "clock_ahead", "reason": "the device's clock is ahead"}]})
        return httpx.Response(200, headers=headers, json={"acked": ids, "rejected": [], "latest": ids[-1]})

    with respx.mock(base_url=URL) as mock:
        mock.post("/v1/push").mock(side_effect=server)
        with SyncClient(base_url=URL, token="t0k", timeout=2.0) as client:
            push_outbox(queued, client, batch=BATCH)
    assert all(hlcs == {stamps[op_id]} for op_id, hlcs in seen.items()), "a logged op was sent with a new stamp"
    parked = queued.outbox(rejected=True)["entries"]
    assert [e["op"] for e in parked] == [ops[0]] and "ahead" in parked[0]["reason"]
    assert queued.outbox()["pending"] == 0


def test_a_ctrl_c_while_a_push_is_in_flight_leaves_only_once_the_push_is_over():
    """The sync lock is let go only after the push in flight has its answer (or its error): a
    Ctrl-C that lands while the device waits for it is the caller's to raise, after that."""
    from crm.sync import _flight

    release, pushed = threading.Event(), []

    class SlowClient:
        def push(self, device_id, bodies, **claims):
            release.wait(timeout=60)
            pushed.append(bodies)
            return {"acked": []}

    flight = _flight(SlowClient(), "dev-1", [("op-1", "{}")], None, None)
    flight.start()

    flight.done = CtrlCOnce(flight.done, release)
    flight.wait()
    assert flight.done.interrupted and pushed == [["{}"]]


class Faulty(httpx.BaseTransport):
    """AppTransport whose pushes meet the faults ``plan`` draws, in order: "ok"; "down" (refused
    before the server sees it); "busy" (a 503, nothing applied); "lost" (applied and committed, then
    the answer lost on the way back). Pulls always go through."""

    def __init__(self, inner: AppTransport, plan: list[str]) -> None:
        self.inner, self.plan = inner, list(plan)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.plan.pop(0) if request.url.path == "/v1/push" and self.plan else "ok"
        if fault == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if fault == "busy":
            return httpx.Response(503, json={"error": "unavailable", "message": "try later"}, request=request)
        response = self.inner.handle_request(request)
        if fault == "lost":
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.integers(1, 24), batch=st.integers(1, 5), edits=st.lists(st.integers(0, 23), max_size=8),
       plan=st.lists(st.sampled_from(["ok", "ok", "down", "busy", "lost"]), max_size=12))
def test_any_faults_between_pipelined_batches_end_with_every_op_once_and_the_same_records(
        tmp_path_factory, ops, batch, edits, plan):
    """However the pushes of a pipelined run fail (refused, busy, or committed with the answer
    lost), syncing again until the outbox is empty leaves every op in the server's log once and
    the server's records equal to the device's."""
    tmp = tmp_path_factory.mktemp("faults")
    server = AppServer(tmp / "server")
    store, app = server.store, server.transport
    dev = Device.init(tmp / "home", rep="a", server_url=URL, token=store.add_token(ORG, "a"))
    try:
        made = [dev.create("account", {"name": f"Shop {n}"})["id"] for n in range(ops)]
        for n, target in enumerate(edits):  # edits queued after the creates: order matters on the server
            dev.edit("account", made[target % ops], {"city": f"City {n}"})
        queued = [op_id for op_id, _ in dev.pending_ops(limit=1000)]
        transport = Faulty(app, plan)
        with SyncClient(base_url=URL, token=dev.credentials()[1], transport=transport) as client:
            for _ in range(len(plan) + 2):
                try:
                    with mock.patch.object(crm.sync, "PUSH_BATCH", batch):
                        crm.sync.sync_once(dev, client=client)
                    break
                except (ServerError, ServerUnreachableError):
                    continue
            else:
                pytest.fail(f"still failing after the plan ran out: {transport.plan}")
        assert dev.outbox()["pending"] == 0 and dev.outbox(rejected=True)["rejected"] == 0
        with store.db.snapshot() as conn:
            logged = [row[0] for row in conn.execute("SELECT op_id FROM ops WHERE org = ?", (ORG,))]
        mine = [op_id for op_id in logged if op_id in set(queued)]
        assert sorted(mine) == sorted(queued), "an op missing from the log, or logged twice"
        assert store.export(ORG)["account"] == dev.export()["account"]
    finally:
        dev.close()
        server.close()
