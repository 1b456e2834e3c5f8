"""Limits and validation: hostile or broken input gets a 4xx saying what is wrong, nothing from
the batch is applied, and no op can block a device's queue (docs/security.md, "Malformed client").

In-process (fast tier) and against a real `crm server serve` process (full run); the client's batch-halving is also checked against a
scripted server (respx) where exact refusals are needed.
"""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import pytest
import respx

from crm import Device
from crm.hlc import format_stamp
from crm.ids import uuid7
from crm.ops import Op, op_to_wire
from crm.sync import SyncClient, push_outbox

ORG = "acme"


@pytest.fixture(scope="module")
def server(module_server):
    return module_server


@pytest.fixture(scope="module")
def token(server):
    return server.add_rep(ORG, "limits")


def _op(**change) -> dict:
    dev = change.pop("dev", "dev-limits")
    op = Op(op_id=uuid7(), device=dev, hlc=format_stamp(time.time_ns() // 1_000_000, 0, dev),
            entity="account", record_id=uuid7(), fields={"name": "Valid Shop", "city": "Leeds"}, kind="create")
    return {**op_to_wire(op), **change}


def _push(server, token, body, **kwargs) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    if isinstance(body, (bytes, str)):
        return server.post("/v1/push", content=body, headers=headers, timeout=30)
    return server.post("/v1/push", json=body, headers=headers, timeout=30)


def _stats(server) -> dict:
    return server.ok("server", "stats", "--data", str(server.data), "--org", ORG, "--json")


BAD_OPS = {
    # name: (the bad op's changes, words the message must contain)
    "wrong type of a field value": ({"fields": {"name": "Shop", "city": 42}}, ["city", "text"]),
    "wrong type of the fields": ({"fields": ["name", "Shop"]}, ["fields", "object"]),
    "unknown op key": ({"owner": "mallory"}, ["unknown op keys", "owner"]),
    "unknown field": ({"fields": {"name": "Shop", "discount": "50%"}}, ["no field", "discount"]),
    "unknown entity": ({"entity": "invoice"}, ["unknown entity", "invoice"]),
    "invalid clock stamp": ({"hlc": "yesterday@dev-limits"}, ["clock stamp", "yesterday"]),
    "stamp of another device": ({"hlc": format_stamp(1795706783938, 0, "someone-else")}, ["own device"]),
    "clock stamp years ahead": ({"hlc": format_stamp(4102444800000, 0, "dev-limits")}, ["future"]),
    "record id with spaces": ({"id": "drop table records"}, ["op.id", "not a valid id"]),
    "record id too long": ({"id": "a" * 65}, ["op.id"]),
    "too many fields": ({"fields": {f"f{i}": "x" for i in range(65)}}, ["at most 64 fields"]),
    "base that is not stamps": ({"kind": "update", "base": {"name": ["not a stamp"]}}, ["base", "stamp"]),
}


@pytest.mark.parametrize("name", list(BAD_OPS))
def test_an_invalid_op_refuses_its_whole_batch(server, token, name):
    change, words = BAD_OPS[name]
    before = _stats(server)
    good_before, bad, good_after = _op(), _op(**change), _op()
    answer = _push(server, token, {"protocol": 1, "ops": [good_before, bad, good_after]})
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["error"] == "invalid" and body["op"] == bad["op"], body
    for word in words:
        assert word in body["message"], (word, body["message"])
    assert _stats(server) == before, "nothing from a refused batch is applied"


BAD_BODIES = {
    "not JSON": (b'{"protocol": 1, "ops": [', 400, "bad_json", "not JSON"),
    "invalid UTF-8": (b'{"ops": ["\xff"]}', 400, "bad_json", "not JSON"),
    "not an object": (b"[]", 400, "bad_request", "JSON object"),
    "ops not a list": (b'{"ops": {"a": 1}}', 400, "bad_request", "'ops' list"),
    "unknown body key": (b'{"ops": [], "org": "other"}', 400, "bad_request", "unknown key"),
    "wrong protocol": (b'{"protocol": 3, "ops": []}', 400, "protocol", "protocol"),
    "protocol true": (b'{"protocol": true, "ops": []}', 400, "protocol", "protocol"),
    "device of wrong type": (b'{"device": 7, "ops": []}', 400, "bad_request", "device"),
    "op without an id": (b'{"ops": [{"dev": "x"}]}', 422, "invalid", "op.op"),
    "op not an object": (b'{"ops": [42]}', 422, "invalid", "JSON object"),
    # a million levels crashed the whole server (orjson < 3.9.15 recursed until the stack overflowed)
    "deeply nested": (b'{"ops": [' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"]}", 400, "bad_json", "nesting"),
    "deeply nested, unclosed": (b'{"ops": [' + b"[" * 1_000_000, 400, "bad_json", "nesting"),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_a_malformed_body_is_refused_with_what_is_wrong(server, token, name):
    body, status, kind, words = BAD_BODIES[name]
    before = _stats(server)
    answer = _push(server, token, body, headers={"content-type": "application/json"})
    assert answer.status_code == status and answer.json()["error"] == kind, answer.text
    assert words in answer.json()["message"]
    assert _stats(server) == before
    assert server.get("/v1/health").status_code == 200, "the server is still up"


def _nested_in_an_op(field: str, depth: int, entity: str = "account") -> bytes:
    """A push of one op, valid but for ``field``'s value: arrays ``depth`` deep (or, for a
    submission, a line id mapped to them), the nesting the typed fast path leaves to the bracket count."""
    op = _op(fields={"name": "Deep Shop", field: "@@DEEP@@"} if entity == "account" else {field: "@@DEEP@@"},
             entity=entity)
    deep = b"[" * depth + b"]" * depth
    if field == "submission":
        deep = b'{"01a23c00-0000-7000-8000-000000000000": ' + deep + b"}"
    return json.dumps({"protocol": 1, "ops": [op]}).encode().replace(b'"@@DEEP@@"', deep)


@pytest.mark.parametrize("field, depth, entity", [
    ("city", 40, "account"),          # past MAX_DEPTH (32), well inside what a parser can take
    ("city", 100_000, "account"),     # past the interpreter's recursion limit
    ("submission", 40, "order"),      # the one field whose valid values are objects
])
def test_nesting_inside_an_op_is_refused_as_the_whole_body_would_be(server, token, field, depth, entity):
    before = _stats(server)
    answer = _push(server, token, _nested_in_an_op(field, depth, entity), headers={"content-type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"] == "bad_json", answer.text[:300]
    assert "nesting" in answer.json()["message"]
    assert _stats(server) == before
    assert server.get("/v1/health").status_code == 200, "the server is still up"


def test_size_limits(server, token):
    before = _stats(server)
    too_many = _push(server, token, {"ops": [_op() for _ in range(5001)]})
    assert too_many.status_code == 413 and "5000" in too_many.json()["message"]
    huge = b'{"ops": [], "device": "' + b"x" * (16 * 1024 * 1024) + b'"}'
    too_big = _push(server, token, huge, headers={"content-type": "application/json"})
    assert too_big.status_code == 413 and too_big.json()["error"] == "too_large"
    long_text = _push(server, token, {"ops": [_op(fields={"name": "x" * 2001})]})
    assert long_text.status_code == 200, "a value over a field's length is a per-op rejection"
    assert "longer than 2000" in long_text.json()["rejected"][0]["reason"]
    assert _stats(server) == before


@pytest.mark.parametrize("query, words", [
    ("cursor=-1", "cursor"), ("cursor=1e3", "cursor"), ("cursor=99999999999999999999", "cursor"),
    ("cursor=%D9%A1", "cursor"), ("limit=0", "limit"), ("limit=5001", "limit"), ("limit=ten", "limit"),
    ("device=a%20b", "device"), ("org=other", "unknown query parameter"),
])
def test_pull_parameters_are_bounded(server, token, query, words):
    answer = server.get(f"/v1/pull?{query}", headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 400 and words in answer.json()["message"], answer.text


PULL_CAP = 4 * 1024 * 1024  # the server's default --max-pull-bytes


def test_a_pull_page_is_capped_in_bytes(tmp_path, server):
    """About 5 MB of ops: a page of up to 5,000 ops once held all of them (one page measured
    109 MB in the field). Now a page stops before the op that would take it past 4 MiB, says
    `more`, and the next page goes on from there; a device's `crm sync` follows and gets all."""
    org = "bigpull"
    token = server.add_rep(org, "writer")
    big = {name: name[0] * 1999 + str(i % 10) for i, name in
           enumerate(("name", "address", "city", "postcode", "phone", "external_ref", "owner"))}
    ops = [_op(fields=dict(big, name=f"{i:04d}" + "n" * 1996)) for i in range(320)]
    answer = _push(server, token, {"ops": ops})
    assert answer.status_code == 200 and len(answer.json()["acked"]) == len(ops), answer.text[:300]
    largest = max(len(json.dumps(op)) for op in ops)

    cursor, pages, pulled = 0, [], []
    while True:
        page = server.get(f"/v1/pull?cursor={cursor}&limit=5000", headers={"authorization": f"Bearer {token}"})
        assert page.status_code == 200, page.text[:300]
        body = page.json()
        pages.append((len(page.content), len(body["ops"]), body["more"]))
        assert body["ops"], "a page always holds at least one op while any are left"
        pulled += [op["op"] for op in body["ops"]]
        cursor = body["cursor"]
        if not body["more"]:
            break
        assert len(pages) < 10, pages
    assert pulled == [op["op"] for op in ops], "every op once, in log order"
    assert len(pages) >= 2, pages
    assert all(size <= PULL_CAP + largest for size, _, _ in pages), pages

    home = server.device(tmp_path, "reader", server.add_rep(org, "reader"))
    assert server.ok("sync", "--json", home=home)["pulled"] == len(ops)
    assert server.export_home(home) == server.export(org)


def test_a_domain_rule_failure_is_rejected_alone_and_the_rest_applies(server, token):
    before = _stats(server)
    good, not_canonical = _op(), _op(fields={"name": "  Padded  "})
    answer = _push(server, token, {"ops": [good, not_canonical]})
    assert answer.status_code == 200
    assert answer.json()["acked"] == [good["op"]]
    assert [r["op"] for r in answer.json()["rejected"]] == [not_canonical["op"]]
    assert _stats(server)["ops"] == before["ops"] + 1


# -- the client: no op blocks the queue -----------------------------------------------------------
def _outbox_insert(home, op: dict, *, body: str | None = None) -> None:
    db = sqlite3.connect(home / "crm.sqlite3")
    with db:
        db.execute("INSERT INTO outbox (op_id, entity, record_id, hlc, body) VALUES (?, ?, ?, ?, ?)",
                   (op["op"], op["entity"], op["id"], op["hlc"], body if body is not None else json.dumps(op)))
    db.close()


def _own_op(home, **change) -> dict:
    """An op as this device would make it, changed to be broken."""
    db = sqlite3.connect(home / "crm.sqlite3")
    dev = db.execute("SELECT value FROM meta WHERE key = 'device_id'").fetchone()[0]
    db.close()
    return _op(dev=dev, **change)


def test_poison_ops_are_parked_and_the_rest_of_the_queue_syncs(tmp_path, server):
    """Three ways an op can make the server refuse its batch, among good ops: one the server
    names (unknown field), one it cannot name (an op id it refuses), one that is not even JSON.
    A real device syncs past all three; they wait in the rejected list with the server's reason."""
    home = server.device(tmp_path, "poisoned", server.add_rep(ORG, "poisoned"))
    server.ok("account", "add", "--name", "Before", "--json", home=home)
    named = _own_op(home, fields={"name": "Shop", "discount": "50%"})
    _outbox_insert(home, named)
    server.ok("account", "add", "--name", "Between", "--json", home=home)
    bad_id = _own_op(home, op="op id with spaces")
    _outbox_insert(home, bad_id)
    server.ok("account", "add", "--name", "Between again", "--json", home=home)
    garbled = _own_op(home)
    _outbox_insert(home, garbled, body='{"op": "' + garbled["op"] + '", "fields": {')
    server.ok("account", "add", "--name", "After", "--json", home=home)

    synced = server.crm("sync", "--json", home=home)
    assert synced.code == 24, synced.stderr  # ops_rejected: the sync finished, three were rejected
    result = synced.json
    assert (result["pushed"], result["rejected"]) == (4, 3)
    assert server.ok("outbox", "--json", home=home)["pending"] == 0
    parked = server.ok("outbox", "--rejected", "--json", home=home)
    reasons = {e["op"]: e["reason"] for e in parked["entries"]}
    assert set(reasons) == {named["op"], bad_id["op"], garbled["op"]}
    assert "discount" in reasons[named["op"]]
    assert "not a valid id" in reasons[bad_id["op"]]
    assert "not JSON" in reasons[garbled["op"]]
    names = {a["name"] for a in json.loads(server.export(ORG))["account"]}
    assert {"Before", "Between", "Between again", "After"} <= names
    assert "Shop" not in names
    assert server.ok("sync", "--json", home=home)["rejected"] == 0, "a parked op is not sent again"


def _scripted_device(tmp_path, count: int) -> Device:
    dev = Device.init(tmp_path / "home", rep="rep-1", settings={"server_url": "http://sync.test", "token": "t"})
    for i in range(count):
        dev.create("account", {"name": f"Shop {i}"})
    return dev


@pytest.mark.parametrize("refusal", ["413 too_large", "400 bad_json", "422 invalid"])
def test_the_client_halves_a_refused_batch_until_the_culprit_is_alone(tmp_path, refusal):
    """The server refuses any batch holding op #13 (or, for 413, any batch over 4 ops), naming
    none: the client halves, parks #13 alone, and everything else is acknowledged in order."""
    status, kind = refusal.split()
    dev = _scripted_device(tmp_path, 40)
    order = [op_id for op_id, _ in dev.pending_ops(limit=100)]
    culprit = None if status == "413" else order[13]
    acked_order: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        ops = [op["op"] for op in json.loads(request.content)["ops"]]
        if (culprit in ops) if culprit else len(ops) > 4:
            return httpx.Response(int(status), json={"error": kind, "message": "refused", "op": None})
        acked_order.extend(ops)
        return httpx.Response(200, json={"acked": ops, "rejected": []})

    with respx.mock(base_url="http://sync.test") as mock:
        mock.post("/v1/push").mock(side_effect=server)
        with SyncClient(base_url="http://sync.test", token="t") as client:
            pushed, rejected = push_outbox(dev, client, batch=16)
    assert acked_order == [op_id for op_id in order if op_id != culprit], "order kept, each op once"
    assert (pushed, rejected) == (40 - bool(culprit), bool(culprit))
    parked = dev.outbox(rejected=True)["entries"]
    assert [e["op"] for e in parked] == ([culprit] if culprit else [])
    dev.close()


def test_a_protocol_refusal_is_not_halved_and_parks_nothing(tmp_path):
    """A 400 that no op causes (wrong protocol) must not be blamed on ops: the queue stays."""
    dev = _scripted_device(tmp_path, 3)
    with respx.mock(base_url="http://sync.test") as mock:
        route = mock.post("/v1/push").respond(400, json={"error": "protocol", "message": "speak 2"})
        with SyncClient(base_url="http://sync.test", token="t") as client, pytest.raises(Exception) as info:
            push_outbox(dev, client)
    assert info.value.exit_code == 22 and route.call_count == 1
    assert dev.outbox()["pending"] == 3 and dev.outbox(rejected=True)["rejected"] == 0
    dev.close()


def test_refused_values_never_reach_the_server_state(server):
    """Run last: after every refusal above, the organisation holds none of the refused values."""
    names = {a.get("name") for a in json.loads(server.export(ORG))["account"]}
    assert names and not names & {"Shop", "  Padded  ", "Padded", "x" * 2001}
