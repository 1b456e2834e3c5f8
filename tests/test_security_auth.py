"""Authentication: random tokens kept only as hashes, refused when missing, wrong, revoked or
expired (401 with a JSON body saying why, nothing applied), and a refused device keeps its work.

In-process (the fast tier) and against a real `crm server serve` process with real `crm` device
processes (the full run).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import httpx

from crm.hlc import format_stamp
from crm.ids import uuid7
from crm.ops import Op, op_to_wire
from crm.server import ServerStore

ORG = "acme"
SAYS = {"missing": "no token", "unknown": "not a token of this server", "revoked": "revoked", "expired": "expired"}


def _stats(server) -> dict:
    return server.ok("server", "stats", "--data", str(server.data), "--org", ORG, "--json")


def _expire(server, rep: str) -> None:
    """Move a token's expiry into the past, as time passing would."""
    db = sqlite3.connect(server.data / "server.sqlite3")
    with db:
        db.execute("UPDATE tokens SET expires_at = '2000-01-01T00:00:00Z' WHERE rep = ?", (rep,))
    db.close()


def _requests(server, headers: dict[str, str]) -> dict[str, httpx.Response]:
    op = op_to_wire(Op(op_id=uuid7(), device="dev-x", hlc=format_stamp(time.time_ns() // 1_000_000, 0, "dev-x"),
                       entity="account", record_id=uuid7(), fields={"name": "Sneaked In"}, kind="create"))
    return {
        "push": server.post("/v1/push", json={"protocol": 1, "ops": [op]}, headers=headers),
        "pull": server.get("/v1/pull?cursor=0", headers=headers),
        "admin edit": server.post("/v1/admin/edit", headers=headers, json={
            "protocol": 1, "entity": "account", "id": uuid7(), "set": {"city": "York"}}),
        "admin export": server.get("/v1/admin/export", headers=headers),
    }


def test_missing_wrong_revoked_and_expired_tokens_get_401_saying_why(server):
    valid = server.add_rep(ORG, "rep-1")
    revoked = server.add_rep(ORG, "lost-phone")
    server.ok("server", "revoke", "--data", str(server.data), "--org", ORG, "--rep", "lost-phone", "--json")
    expired = server.ok("server", "add-rep", "--data", str(server.data), "--org", ORG, "--rep", "temp",
                 "--expires-in-days", "30", "--json")["token"]
    _expire(server, "temp")
    before = _stats(server)
    cases = {
        "missing": {},
        "missing ": {"authorization": "Bearer"},
        "missing  ": {"authorization": f"Basic {valid}"},
        "unknown": {"authorization": "Bearer " + valid[:-1] + ("A" if valid[-1] != "A" else "B")},
        "unknown ": {"authorization": "Bearer " + "x" * 5000},
        "revoked": {"authorization": f"Bearer {revoked}"},
        "expired": {"authorization": f"Bearer {expired}"},
    }
    for reason, headers in cases.items():
        for endpoint, answer in _requests(server, headers).items():
            assert answer.status_code == 401, (reason, endpoint, answer.text)
            body = answer.json()
            assert body["error"] == "unauthorized" and body["reason"] == reason.strip(), (endpoint, body)
            assert SAYS[reason.strip()] in body["message"], body
            assert answer.headers["www-authenticate"].startswith("Bearer")
    assert _stats(server) == before, "nothing was applied"
    assert _requests(server, {"authorization": f"Bearer {valid}"})["push"].status_code == 200


def test_tokens_are_random_and_the_server_keeps_only_their_hash(server):
    tokens = [server.add_rep(ORG, f"rep-{i}") for i in range(5)]
    assert len(set(tokens)) == 5
    assert all(t.startswith("crm_") and len(t) >= 4 + 43 for t in tokens), "at least 256 random bits"
    stored = b"".join(p.read_bytes() for p in server.data.iterdir() if p.is_file())
    for token in tokens:
        assert token.encode() not in stored and token[4:].encode() not in stored
    db = sqlite3.connect(server.data / "server.sqlite3")
    hashes = {row[0] for row in db.execute("SELECT token_hash FROM tokens")}
    db.close()
    assert {hashlib.sha256(t.encode()).hexdigest() for t in tokens} <= hashes


def test_a_token_is_compared_in_constant_time(tmp_path, monkeypatch):
    """The lookup is by hash (an attacker cannot steer it byte by byte), and the stored hash is
    then compared with hmac.compare_digest, never ==."""
    store = ServerStore.open(tmp_path / "srv")
    token = store.add_token(ORG, "rep-1")
    seen, compare = [], hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return compare(a, b)

    monkeypatch.setattr("hmac.compare_digest", spy)  # the store imports hmac where it checks a token
    assert store.authenticate(token) is not None
    assert seen == [(hashlib.sha256(token.encode()).hexdigest(),) * 2]
    store.close()


def test_a_revoked_device_is_refused_and_its_unsynced_work_waits_in_its_outbox(tmp_path, server):
    home = server.device(tmp_path, "d1", server.add_rep(ORG, "rep-1"))
    server.ok("account", "add", "--name", "Synced Before", "--json", home=home)
    server.ok("sync", home=home)
    offline = server.ok("account", "add", "--name", "Written After Theft", "--json", home=home)["id"]
    server.ok("visit", "log", "--account", offline, "--outcome", "met the buyer", "--json", home=home)
    server.ok("server", "revoke", "--data", str(server.data), "--org", ORG, "--rep", "rep-1", "--json")

    refused = server.crm("sync", "--json", home=home)
    assert refused.code == 21
    assert json.loads(refused.stderr)["error"] == "auth_refused" and "revoked" in refused.stderr
    queued = server.ok("outbox", "--json", home=home)
    assert queued["pending"] == 2 and {e["entity"] for e in queued["entries"]} == {"account", "visit"}
    assert "Written After Theft" not in server.export(ORG)

    server.ok("login", "--server", server.url, "--token", server.add_rep(ORG, "rep-1"), "--json", home=home)
    assert server.ok("sync", "--json", home=home)["pushed"] == 2
    assert "Written After Theft" in server.export(ORG)
    assert server.export_home(home) == server.export(ORG)


def test_an_expired_token_is_refused_from_its_expiry_on(tmp_path, server):
    token = server.ok("server", "add-rep", "--data", str(server.data), "--org", ORG, "--rep", "temp",
               "--expires-in-days", "2", "--json")["token"]
    db = sqlite3.connect(server.data / "server.sqlite3")
    (expires_at,) = db.execute("SELECT expires_at FROM tokens WHERE rep = 'temp'").fetchone()
    db.close()
    due = datetime.strptime(expires_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(due - (datetime.now(UTC) + timedelta(days=2))) < timedelta(minutes=5)
    home = server.device(tmp_path, "d1", token)
    server.ok("account", "add", "--name", "Before Expiry", "--json", home=home)
    assert server.ok("sync", "--json", home=home)["pushed"] == 1
    _expire(server, "temp")
    server.ok("account", "add", "--name", "After Expiry", "--json", home=home)
    refused = server.crm("sync", "--json", home=home)
    assert refused.code == 21 and "expired" in refused.stderr
    assert server.ok("outbox", "--json", home=home)["pending"] == 1
    assert "After Expiry" not in server.export(ORG)
    assert server.crm("server", "add-rep", "--data", str(server.data), "--org", ORG, "--rep", "x",
               "--expires-in-days", "0").code == 2


def test_replayed_traffic_changes_nothing(tmp_path, server):
    """A captured push replayed later (after newer edits, and after revocation) cannot roll a
    record back or apply anything twice."""
    token = server.add_rep(ORG, "rep-1")
    home = server.device(tmp_path, "d1", token)
    acc = server.ok("account", "add", "--name", "Corner Store", "--city", "Leeds", "--json", home=home)["id"]
    db = sqlite3.connect(home / "crm.sqlite3")
    captured = {"protocol": 1, "ops": [json.loads(b) for (b,) in db.execute("SELECT body FROM outbox")]}
    db.close()
    server.ok("sync", home=home)
    server.ok("account", "edit", acc, "--set", "city=York", "--json", home=home)
    server.ok("sync", home=home)
    before, stats = server.export(ORG), _stats(server)

    replay = server.post("/v1/push", json=captured, headers={"authorization": f"Bearer {token}"})
    assert replay.status_code == 200 and replay.json()["acked"] == [op["op"] for op in captured["ops"]]
    assert server.export(ORG) == before and _stats(server) == stats
    assert json.loads(before)["account"][0]["city"] == "York"

    server.ok("server", "revoke", "--data", str(server.data), "--org", ORG, "--rep", "rep-1", "--json")
    replay = server.post("/v1/push", json=captured, headers={"authorization": f"Bearer {token}"})
    assert replay.status_code == 401 and replay.json()["reason"] == "revoked"
    assert server.export(ORG) == before
