"""Sync between devices, the server and the back office: in-process (the fast tier) and against a
real `crm server serve` process with real `crm` device processes (the full run)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.conftest import process_only
from tests.support import wait_for

ORG = "acme"


def _pending_in_store(home) -> int:
    with sqlite3.connect(home / "crm.sqlite3") as conn:
        return conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0]


def _account(server, home, name="Corner Store 42", city="Leeds"):
    return server.ok("account", "add", "--name", name, "--city", city, "--json", home=home)["id"]


@pytest.mark.parametrize("order", [("d1", "d2"), ("d2", "d1")])
def test_two_offline_devices_and_the_back_office_converge(tmp_path, server, order):
    homes = {name: server.device(tmp_path, name, server.add_rep(ORG, name)) for name in ("d1", "d2")}
    d1, d2 = homes["d1"], homes["d2"]
    acc = _account(server, d1)
    server.ok("sync", "--json", home=d1)
    server.ok("sync", "--json", home=d2)
    # Offline: both edit the same record, on the same field and on different fields.
    server.ok("account", "edit", acc, "--set", "city=York", "--set", "phone=0113 555 0100", "--json", home=d1)
    server.ok("account", "edit", acc, "--set", "city=Hull", "--set", "email=buyer@corner.example", "--json", home=d2)
    other = _account(server, d1, name="Farm Shop", city="Ripon")
    visit = server.ok("visit", "log", "--account", acc, "--outcome", "met the buyer", "--json", home=d2)["id"]
    order_id = server.ok("order", "add", "--account", acc, "--line", "SKU-1:3:2.50", "--json", home=d1)["id"]
    server.ok("order", "add-line", order_id, "--line", "SKU-2:1:9.99", "--json", home=d1)
    server.ok("server", "edit", "--data", str(server.data), "account", acc, "--set", "name=Corner Store Ltd", "--json")
    first, second = homes[order[0]], homes[order[1]]
    for home in (first, second, first):
        server.ok("sync", "--json", home=home)

    e1, e2, es = server.export_home(d1), server.export_home(d2), server.export(ORG)
    assert e1 == e2 == es, "devices and server must export byte-identical state"
    state = json.loads(es)
    ids = [r["id"] for r in state["account"]]
    assert sorted(ids) == sorted({acc, other}), "no duplicate and no lost account"
    account = next(r for r in state["account"] if r["id"] == acc)
    assert account["name"] == "Corner Store Ltd"
    assert account["phone"] == "0113 555 0100" and account["email"] == "buyer@corner.example"
    (conflict,) = state["conflicts"]
    assert conflict["field"] == "city" and conflict["record"] == acc
    assert {account["city"], conflict["loser"]["value"]} == {"York", "Hull"}, "the losing edit is kept"
    assert [v["id"] for v in state["visit"]] == [visit]
    (the_order,) = state["order"]
    assert len(the_order["lines"]) == 2


def test_conflict_resolution_syncs_to_every_replica(tmp_path, server):
    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    d2 = server.device(tmp_path, "d2", server.add_rep(ORG, "d2"))
    acc = _account(server, d1)
    for home in (d1, d2):
        server.ok("sync", home=home)
    server.ok("account", "edit", acc, "--set", "city=York", home=d1)
    server.ok("account", "edit", acc, "--set", "city=Hull", home=d2)
    for home in (d1, d2, d1):
        server.ok("sync", home=home)
    (conflict,) = server.ok("conflicts", "ls", "--json", home=d2)
    server.ok("conflicts", "resolve", conflict["id"], "--keep", "loser", "--json", home=d2)
    for home in (d2, d1):
        server.ok("sync", home=home)
    state = json.loads(server.export(ORG))
    assert state["conflicts"] == []
    assert state["account"][0]["city"] == conflict["loser"]["value"]
    assert server.export_home(d1) == server.export_home(d2) == server.export(ORG)


@pytest.mark.parametrize(("keep", "total"), [("winner", "42.48"), ("loser", "48.48")])
def test_a_line_added_offline_to_an_order_submitted_elsewhere_is_a_conflict_not_a_new_total(
        tmp_path, server, keep, total):
    """Issue 14: one device submits an order while another, offline, adds a line to it."""
    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    d2 = server.device(tmp_path, "d2", server.add_rep(ORG, "d2"))
    acc = _account(server, d1)
    order_id = server.ok("order", "add", "--account", acc, "--line", "SKU-1:12:2.99", "--line", "SKU-2:3:2.20",
                         "--json", home=d1)["id"]
    for home in (d1, d2):
        server.ok("sync", home=home)
    server.ok("order", "submit", order_id, "--json", home=d1)
    line = server.ok("order", "add-line", order_id, "--line", "SKU-3:2:3.00", "--json", home=d2)["id"]
    for home in (d1, d2, d1):
        server.ok("sync", home=home)

    assert server.export_home(d1) == server.export_home(d2) == server.export(ORG)
    state = json.loads(server.export(ORG))
    (the_order,) = state["order"]
    assert (the_order["status"], the_order["total"], len(the_order["lines"])) == ("submitted", "42.48", 2)
    (conflict,) = server.ok("conflicts", "ls", "--json", home=d2)
    assert (conflict["kind"], conflict["field"], conflict["winner"]["value"]) == \
        ("edit_of_submitted", f"line:{line}", None)
    assert conflict["loser"]["value"] == {"sku": "SKU-3", "quantity": 2, "unit_price": "3.00"}
    assert state["conflicts"] == [conflict]
    assert "edit_of_submitted" in server.crm("conflicts", "ls", home=d2).stdout, "the table says what kind"

    server.ok("conflicts", "resolve", conflict["id"], "--keep", keep, "--json", home=d2)
    for home in (d2, d1):
        server.ok("sync", home=home)
    assert server.export_home(d1) == server.export_home(d2) == server.export(ORG)
    state = json.loads(server.export(ORG))
    assert state["conflicts"] == [] and state["order"][0]["total"] == total


def test_concurrent_edits_of_one_order_line_are_a_conflict_and_a_removal_is_kept(tmp_path, server):
    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    d2 = server.device(tmp_path, "d2", server.add_rep(ORG, "d2"))
    acc = _account(server, d1)
    order = server.ok("order", "add", "--account", acc, "--line", "SKU-1:3:2.50", "--line", "SKU-2:1:1.00",
                      "--json", home=d1)
    first, second = (line["id"] for line in order["lines"])
    for home in (d1, d2):
        server.ok("sync", home=home)
    server.ok("order", "line", "edit", order["id"], first, "--quantity", "4", "--json", home=d1)
    server.ok("order", "line", "edit", order["id"], first, "--quantity", "30", "--price", "2.40", "--json", home=d2)
    server.ok("order", "line", "rm", order["id"], second, "--json", home=d2)
    for home in (d1, d2, d1):
        server.ok("sync", home=home)
    assert server.export_home(d1) == server.export_home(d2) == server.export(ORG)
    state = json.loads(server.export(ORG))
    (conflict,) = state["conflicts"]
    assert (conflict["kind"], conflict["field"]) == ("concurrent_edit", f"line:{first}")
    quantities = {conflict["winner"]["value"]["quantity"], conflict["loser"]["value"]["quantity"]}
    assert quantities == {4, 30}, "both edits are kept: one shown, one as the conflict"
    assert [line["id"] for line in state["order"][0]["lines"]] == [first]


def test_a_batch_sent_twice_and_out_of_order_is_applied_once(tmp_path, server):
    token = server.add_rep(ORG, "d1")
    d1 = server.device(tmp_path, "d1", token)
    acc = _account(server, d1)
    server.ok("account", "edit", acc, "--set", "city=York", home=d1)
    server.ok("account", "edit", acc, "--set", "city=Selby", home=d1)
    ops = [json.loads(body) for (body,) in sqlite3.connect(d1 / "crm.sqlite3").execute(
        "SELECT body FROM outbox ORDER BY seq")]
    headers = {"authorization": f"Bearer {token}"}
    for batch in (ops[::-1], ops, ops[1:]):  # reversed, again in order, a partial retry
        answer = server.post("/v1/push", json={"protocol": 1, "ops": batch}, headers=headers)
        assert answer.status_code == 200 and sorted(answer.json()["acked"]) == sorted(o["op"] for o in batch)
    stats = server.ok("server", "stats", "--data", str(server.data), "--org", ORG, "--json")
    assert stats == {"ops": 3, "records": 1}
    server.ok("sync", home=d1)  # the device's own resend is acknowledged, not applied again
    assert server.ok("server", "stats", "--data", str(server.data), "--org", ORG, "--json")["ops"] == 3
    assert server.ok("outbox", "--json", home=d1)["pending"] == 0
    assert server.export_home(d1) == server.export(ORG)
    assert json.loads(server.export(ORG))["account"][0]["city"] == "Selby"


def test_sync_exit_codes(tmp_path, server):
    lonely = tmp_path / "lonely"
    server.ok("init", "--rep", "x", home=lonely)
    assert server.crm("sync", home=lonely).code == 23
    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    _account(server, d1)
    assert server.crm("sync", home=d1).code == 0
    _account(server, d1, name="Second")
    server.ok("server", "revoke", "--data", str(server.data), "--org", ORG, "--rep", "d1")
    refused = server.crm("sync", "--json", home=d1)
    assert refused.code == 21 and "token" in refused.stderr
    assert server.ok("outbox", "--json", home=d1)["pending"] == 1, "a refused device keeps its work"
    server.kill()
    down = server.crm("sync", home=d1)
    assert down.code == 20 and "queued" in down.stderr
    assert server.ok("outbox", "--json", home=d1)["pending"] == 1


def test_an_op_the_server_refuses_does_not_block_the_queue(tmp_path, server):
    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    acc = _account(server, d1)
    db = sqlite3.connect(d1 / "crm.sqlite3")
    body = json.loads(db.execute("SELECT body FROM outbox").fetchone()[0])
    bad = {**body, "op": body["op"][:-4] + "ffff", "entity": "product", "kind": "create",
           "fields": {"sku": "X", "name": "forged", "price": "1.00", "currency": "GBP"}}
    with db:
        db.execute("INSERT INTO outbox (op_id, entity, record_id, hlc, body) VALUES (?, ?, ?, ?, ?)",
                   (bad["op"], "product", bad["id"], bad["hlc"], json.dumps(bad)))
    db.close()
    _account(server, d1, name="After the bad one")
    synced = server.crm("sync", "--json", home=d1)
    assert synced.code == 24 and synced.json["rejected"] == 1  # ops_rejected (docs/exit-codes.md)
    assert server.ok("outbox", "--json", home=d1)["pending"] == 0
    rejected = server.ok("outbox", "--rejected", "--json", home=d1)
    assert rejected["rejected"] == 1 and "server" in rejected["entries"][0]["reason"]
    names = sorted(a["name"] for a in json.loads(server.export(ORG))["account"])
    assert names == ["After the bad one", "Corner Store 42"]
    assert acc


def test_a_device_hours_behind_still_wins_with_a_later_edit(tmp_path, server):
    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    d2 = server.device(tmp_path, "d2", server.add_rep(ORG, "d2"))
    behind = {"CRM_CLOCK_SKEW_MS": str(-5 * 3600 * 1000)}
    acc = _account(server, d1)
    server.ok("account", "edit", acc, "--set", "city=York", home=d1)
    server.ok("sync", home=d1)
    server.ok("sync", home=d2, env=behind)
    server.ok("account", "edit", acc, "--set", "city=Hull", home=d2, env=behind)  # made after seeing York
    server.ok("sync", home=d2, env=behind)
    server.ok("sync", home=d1)
    state = json.loads(server.export(ORG))
    assert state["account"][0]["city"] == "Hull" and state["conflicts"] == []
    assert server.export_home(d1) == server.export_home(d2) == server.export(ORG)


def test_products_reach_devices_and_price_order_lines(tmp_path, server):
    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    catalogue = tmp_path / "products.csv"
    catalogue.write_text("sku,name,price\nSKU-1,Crisps 24x,12.5\nSKU-2,Cola 12x,7\n")
    server.ok("server", "import-products", "--data", str(server.data), "--org", ORG, str(catalogue), "--json")
    server.ok("sync", home=d1)
    assert sorted(p["sku"] for p in server.ok("product", "ls", "--json", home=d1)) == ["SKU-1", "SKU-2"]
    acc = _account(server, d1)
    order = server.ok("order", "add", "--account", acc, "--line", "SKU-1:2", "--json", home=d1)
    assert order["lines"][0]["unit_price"] == "12.50" or server.ok(
        "order", "show", order["id"], "--json", home=d1)["lines"][0]["unit_price"] == "12.50"
    server.ok("server", "import-products", "--data", str(server.data), "--org", ORG, str(catalogue), "--json")
    assert len(json.loads(server.export(ORG))["product"]) == 2, "re-import upserts by SKU"


@process_only  # the agent is a detached process
def test_background_agent_pushes_alone_and_catches_up_after_an_outage(tmp_path, server):
    env = {"CRM_AGENT_MAX_BACKOFF_S": "1"}
    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    server.ok("agent", "start", "--json", home=d1, env=env)
    try:
        _account(server, d1, name="First")
        # Acknowledged by the server = gone from the outbox, with no `crm sync`. How soon is a figure
        # for bench/ (a loaded CI machine must not fail a deadline); that it happens is the test.
        wait_for(lambda: _pending_in_store(d1) == 0, timeout=30, interval=0.05)
        assert "First" in server.export(ORG)
        server.kill()
        _account(server, d1, name="Written offline")
        wait_for(lambda: server.ok("agent", "status", "--json", home=d1)["state"] == "offline", timeout=30)
        server.start()
        wait_for(lambda: "Written offline" in server.export(ORG), timeout=30)
        assert server.ok("outbox", "--json", home=d1)["pending"] == 0
        assert server.export_home(d1) == server.export(ORG)
    finally:
        server.ok("agent", "stop", "--json", home=d1)
    assert server.ok("agent", "status", "--json", home=d1)["running"] is False


def test_back_office_http_endpoint_edits_through_the_same_rules(tmp_path, server):
    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    acc = _account(server, d1)
    server.ok("sync", home=d1)
    admin = server.ok("server", "add-admin", "--data", str(server.data), "--org", ORG, "--json")["token"]
    device_token = server.ok("server", "add-rep", "--data", str(server.data), "--org", ORG, "--rep", "d9", "--json")["token"]
    body = {"protocol": 1, "entity": "account", "id": acc, "set": {"phone": "0113 496 0000"}}
    assert server.post("/v1/admin/edit", json=body).status_code == 401
    refused = server.post("/v1/admin/edit", json=body, headers={"authorization": f"Bearer {device_token}"})
    assert refused.status_code == 403
    bad = server.post("/v1/admin/edit", json={**body, "set": {"email": "not-an-email"}},
                     headers={"authorization": f"Bearer {admin}"})
    assert bad.status_code == 422 and "email" in bad.json()["message"]
    edited = server.post("/v1/admin/edit", json=body, headers={"authorization": f"Bearer {admin}"})
    assert edited.status_code == 200 and edited.json()["phone"] == "0113 496 0000"
    server.ok("sync", home=d1)
    exported = server.get("/v1/admin/export", headers={"authorization": f"Bearer {admin}"}).json()
    assert exported == json.loads(server.export(ORG)) == json.loads(server.export_home(d1))
    assert exported["account"][0]["phone"] == "0113 496 0000"
