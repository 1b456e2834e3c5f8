"""A device's clock can never lock it out (docs/sync-protocol.md, "Clocks"; docs/merge-rules.md,
"When a clock was wrong").

Each test runs in-process (the fast tier) and against real processes (the full run). The device's
wall clock is moved with CRM_CLOCK_SKEW_MS; the server's clock is the machine's.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

from crm.hlc import format_stamp
from crm.ids import uuid7
from crm.ops import Op, op_to_wire

ORG = "acme"
HOUR = 3600 * 1000
DAY = 24 * HOUR
YEAR = 365 * DAY
# How far past the real time a stamp in the log may be once everything synced. The device's own
# lead is a second; the rest is slack for a loaded machine, far below the skews tried here.
SLACK_MS = 60_000


def _real_ms() -> int:
    return time.time_ns() // 1_000_000


def _skew(ms: int) -> dict[str, str]:
    return {"CRM_CLOCK_SKEW_MS": str(ms)}


def _account(server, home, name, env=None) -> str:
    return server.ok("account", "add", "--name", name, "--city", "Leeds", "--json", home=home, env=env)["id"]


def _log(server, token) -> list[dict]:
    """The organisation's whole op log, as any device pulls it."""
    answer = server.get("/v1/pull?cursor=0&limit=5000", headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return answer.json()["ops"]


def _sync_clean(server, home, env=None) -> dict:
    result = server.ok("sync", "--json", home=home, env=env)
    assert result["rejected"] == 0, result
    return result


def _converged(server, *homes) -> dict:
    exported = server.export(ORG)
    assert all(server.export_home(home) == exported for home in homes), "byte-identical exports"
    return json.loads(exported)


@pytest.mark.parametrize("ahead_ms", [YEAR, 2 * YEAR], ids=["a year ahead", "two years ahead"])
def test_a_device_writing_a_year_ahead_then_with_the_right_clock_syncs_everything(tmp_path, server, ahead_ms):
    token1, token2 = server.add_rep(ORG, "d1"), server.add_rep(ORG, "d2")
    d1, d2 = server.device(tmp_path, "d1", token1), server.device(tmp_path, "d2", token2)
    _account(server, d1, "First")
    _sync_clean(server, d1)
    ahead = _skew(ahead_ms)
    acc = _account(server, d1, "Ahead", env=ahead)
    server.ok("account", "edit", acc, "--set", "city=York", home=d1, env=ahead)  # built on the create
    server.ok("account", "edit", acc, "--set", "phone=0113 555 0100", home=d1)  # the clock is right again
    server.ok("note", "add", "--account", acc, "--text", "after the clock was fixed", home=d1)
    queued = [entry["op"] for entry in server.ok("outbox", "--json", home=d1)["entries"]]

    result = _sync_clean(server, d1)
    assert result["pushed"] == len(queued) == result["restamped"] == 4
    assert server.ok("outbox", "--rejected", "--json", home=d1)["rejected"] == 0
    log = _log(server, token2)
    assert [op["op"] for op in log if op["op"] in queued] == queued, "each op once, same op ids, in order"
    assert len({op["op"] for op in log}) == len(log)
    newest = max(int(op["hlc"][:13]) for op in log)
    assert newest <= _real_ms() + SLACK_MS, f"a stamp {(newest - _real_ms()) / DAY:.1f} days ahead was logged"

    # Causality survived the new stamps: each edit is after the version it was built on.
    mine = {op["op"]: op for op in log if op["op"] in queued}
    create, edit = mine[queued[0]], mine[queued[1]]
    assert edit["base"]["city"] == [create["hlc"]] and edit["hlc"] > create["hlc"]

    # Writes with the right clock go straight through; another device then edits after seeing it all.
    server.ok("account", "edit", acc, "--set", "city=Ripon", home=d1)
    assert _sync_clean(server, d1).get("restamped", 0) == 0
    _sync_clean(server, d2)
    server.ok("account", "edit", acc, "--set", "city=Hull", home=d2)
    _sync_clean(server, d2)
    _sync_clean(server, d1)
    state = _converged(server, d1, d2)
    account = next(a for a in state["account"] if a["id"] == acc)
    assert (account["city"], account["phone"]) == ("Hull", "0113 555 0100") and state["conflicts"] == []
    assert len(state["account"]) == 2 and len(state["note"]) == 1


def test_a_clock_jumping_hours_and_years_forward_and_back_never_locks_the_device_out(tmp_path, server):
    token1, token2 = server.add_rep(ORG, "d1"), server.add_rep(ORG, "d2")
    d1, d2 = server.device(tmp_path, "d1", token1), server.device(tmp_path, "d2", token2)
    acc = _account(server, d1, "Jumpy")
    _sync_clean(server, d1)
    _sync_clean(server, d2)
    skews = [3 * HOUR, 2 * YEAR, -5 * HOUR, 0, YEAR, -YEAR, 6 * HOUR]
    for step, skew in enumerate(skews):
        wrong = _skew(skew)
        # d1 edits with its clock wrong (twice: the second edit is built on the first), then syncs.
        server.ok("account", "edit", acc, "--set", f"city=C{step}", home=d1, env=wrong)
        server.ok("account", "edit", acc, "--set", f"phone=0113 555 {step:04d}", home=d1, env=wrong)
        server.ok("note", "add", "--account", acc, "--text", f"step {step}", home=d1, env=wrong)
        _sync_clean(server, d1, env=wrong)
        # d2, whose clock is right, edits after seeing that; d1 must see d2's edit win.
        _sync_clean(server, d2)
        server.ok("account", "edit", acc, "--set", f"name=Jumpy {step}", home=d2)
        _sync_clean(server, d2)
        _sync_clean(server, d1, env=wrong)
        shown = server.ok("account", "show", acc, "--json", home=d1, env=wrong)
        assert (shown["city"], shown["name"]) == (f"C{step}", f"Jumpy {step}"), (step, skew)
    state = _converged(server, d1, d2)
    assert state["conflicts"] == [], "every edit was built on the one before it"
    assert len(state["note"]) == len(skews)
    assert server.ok("outbox", "--rejected", "--json", home=d1)["rejected"] == 0
    newest = max(int(op["hlc"][:13]) for op in _log(server, token2))
    assert newest <= _real_ms() + SLACK_MS


def _forged(dev: str, wall_ms: int, name: str) -> dict:
    return op_to_wire(Op(op_id=uuid7(), device=dev, hlc=format_stamp(wall_ms, 0, dev), entity="account",
                         record_id=uuid7(), fields={"name": name}, kind="create"))


@pytest.mark.parametrize("ahead_ms", [HOUR, 10 * YEAR], ids=["an hour ahead", "ten years ahead"])
def test_the_server_refuses_a_forged_far_future_stamp_from_a_raw_push(server, ahead_ms):
    token = server.add_rep(ORG, "mallory")
    now = _real_ms()
    good, forged = _forged("dev-m", now, "Honest"), _forged("dev-m", now + ahead_ms, "From the future")
    answer = server.post("/v1/push", json={"protocol": 1, "device": "dev-m", "ops": [good, forged]},
                         headers={"authorization": f"Bearer {token}"})
    server_time = int(answer.headers["crm-server-time"])
    assert abs(server_time - now) < SLACK_MS, "every answer carries the server's clock"
    body = answer.json()
    if ahead_ms < YEAR:  # a clock that is wrong: the op alone is refused, the rest applies
        assert answer.status_code == 200, answer.text
        assert body["acked"] == [good["op"]]
        (refused,) = body["rejected"]
        assert (refused["op"], refused["code"]) == (forged["op"], "clock_ahead")
        assert "ahead" in refused["reason"]
    else:  # no clock is ten years off: the batch breaks the protocol, nothing applies
        assert answer.status_code == 422, answer.text
        assert (body["op"], body["code"]) == (forged["op"], "clock_ahead")
    names = [a["name"] for a in json.loads(server.export(ORG))["account"]]
    assert "From the future" not in names
    assert all(int(op["hlc"][:13]) <= server_time for op in _log(server, token))


def _queue_an_op_the_server_refuses(home) -> None:
    """A product create from a device: well formed, but only the back office makes products."""
    db = sqlite3.connect(home / "crm.sqlite3")
    body = json.loads(db.execute("SELECT body FROM outbox ORDER BY seq DESC").fetchone()[0])
    bad = {**body, "op": body["op"][:-4] + "ffff", "id": body["id"][:-4] + "ffff", "entity": "product",
           "kind": "create", "fields": {"sku": "X", "name": "forged", "price": "1.00", "currency": "GBP"},
           "base": {}}
    with db:
        db.execute("INSERT INTO outbox (op_id, entity, record_id, hlc, body) VALUES (?, ?, ?, ?, ?)",
                   (bad["op"], "product", bad["id"], bad["hlc"], json.dumps(bad)))
    db.close()


def test_sync_exits_24_when_the_server_rejects_an_op_and_status_says_so(tmp_path, server):
    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    _account(server, d1, "Good")
    _queue_an_op_the_server_refuses(d1)
    _account(server, d1, "Also good")

    synced = server.crm("sync", "--json", home=d1)
    assert synced.code == 24, (synced.code, synced.stderr)
    assert (synced.json["pushed"], synced.json["rejected"]) == (2, 1), "stdout still carries the result"
    error = json.loads(synced.stderr)
    assert error["error"] == "ops_rejected" and "crm outbox --rejected" in error["message"]
    assert "1 " in error["message"]

    status = server.ok("status", "--json", home=d1)
    assert (status["pending"], status["rejected"], status["last_sync_rejected"]) == (0, 1, 1)
    human = server.crm("status", home=d1)
    assert human.code == 0 and "crm outbox --rejected" in human.stdout + human.stderr

    again = server.crm("sync", home=d1)  # the parked op is not sent again: nothing rejected now
    assert again.code == 0, again.stderr
    assert server.ok("status", "--json", home=d1)["last_sync_rejected"] == 0
    text = server.crm("sync", home=d1)
    assert text.code == 0 and "rejected 0" in text.stdout


def test_sync_without_json_exits_24_with_a_message(tmp_path, server):
    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    _account(server, d1, "Good")
    _queue_an_op_the_server_refuses(d1)
    synced = server.crm("sync", home=d1)
    assert synced.code == 24
    assert "pushed 1, rejected 1" in synced.stdout
    assert synced.stderr.startswith("crm: error: ") and "crm outbox --rejected" in synced.stderr


def test_the_agent_keeps_going_and_records_rejections_in_its_state(tmp_path, server):
    from crm.agent import read_state, run

    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    _account(server, d1, "Good")
    _queue_an_op_the_server_refuses(d1)
    states: list[dict] = []
    stop = threading.Event()

    def on_state(info: dict) -> None:
        states.append(info)
        if info["state"] != "starting":
            stop.set()

    worker = threading.Thread(target=run, args=(d1,), kwargs={"stop": stop, "on_state": on_state})
    worker.start()
    try:
        worker.join(timeout=120)
    finally:
        stop.set()
        worker.join()
    synced = next(s for s in states if s["state"] not in ("starting", "stopped"))
    assert synced["state"] == "synced", synced
    assert synced["rejected"] == 1 and synced["last_rejection"]["count"] == 1
    assert "crm outbox --rejected" in synced["last_rejection"]["message"]
    assert read_state(d1)["rejected"] == 1, "crm status shows it after the agent stopped"
