"""A long outbox is pushed with one batch in flight while the device stores the answer before it
(crm.sync._Flight): the server still gets the batches one after the other, each sent after the
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

import httpx
import pytest
import respx

from crm.device import Device
from crm.errors import ServerError, ServerUnreachableError
from crm.server import ServerStore
from crm.server.app import create_app
from crm.sync import SyncClient, push_outbox
from tests.support import AppTransport

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
    store = ServerStore.open(tmp_path / "server")
    app = AppTransport()
    app.serve(create_app(store))
    dev = Device.init(tmp_path / "home", rep="a", server_url=URL, token=store.add_token(ORG, "a"))
    yield store, app, dev
    dev.close()
    store.close()
    app.shutdown()


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
