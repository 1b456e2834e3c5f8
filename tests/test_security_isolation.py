"""Tenant isolation: every endpoint against every attack another organisation can make.

Organisation A (acme) is the victim: a real device fills it with every kind of record. B
(globex) is the attacker, with a real device, a device token and a back-office token of its own.
Each cell of the matrix is observed, not assumed; then A's export must be byte-identical to
before, and nothing of A may appear in anything B received. The matrix is printed with the
test's output and must match the one in docs/security.md.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from crm.hlc import MAX_AHEAD_MS, format_stamp
from crm.ids import uuid7
from crm.ops import Op, op_to_wire

A, B = "acme", "globex"
ENDPOINTS = ("push", "pull", "admin edit", "admin export", "health")
ATTACKS = {
    "B's token, A's ids": "B's device or back-office token names A's record ids",
    "A's op ids in B": "B pushes ops under A's op ids, before and after A",
    "A's record ids in B": "B creates records under A's record ids",
    "cursor": "pull past the end, before the start (-1, 2^64), inside A's log range",
    "device token on admin": "a device token on a back-office endpoint",
    "bad token": "no token, a wrong one, a revoked one, an expired one",
    "A's far-future stamp": "A pushes a stamp as far ahead as the server takes; B's stamps must not follow",
}
NOT_APPLICABLE = "-"
REFUSED_OR_ISOLATED = {"401", "403", "404", "400 / isolated", "isolated", "no data", NOT_APPLICABLE}
DOC = Path(__file__).resolve().parent.parent / "docs" / "security.md"


def render(matrix: dict[str, dict[str, str]]) -> str:
    """The matrix as the markdown table docs/security.md holds."""
    lines = ["| endpoint | " + " | ".join(ATTACKS) + " |", "|---" * (len(ATTACKS) + 1) + "|"]
    lines += [f"| {endpoint} | " + " | ".join(matrix[endpoint][attack] for attack in ATTACKS) + " |"
              for endpoint in ENDPOINTS]
    return "\n".join(lines)


class Client:
    def __init__(self, server, token: str | None) -> None:
        self.server, self.token = server, token

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}

    def push(self, ops: list[dict]) -> httpx.Response:
        return self.server.post("/v1/push", json={"protocol": 1, "ops": ops}, headers=self._headers())

    def pull(self, query: str = "cursor=0") -> httpx.Response:
        return self.server.get(f"/v1/pull?{query}", headers=self._headers())

    def edit(self, entity: str, rid: str, changes: dict) -> httpx.Response:
        return self.server.post("/v1/admin/edit", headers=self._headers(),
                          json={"protocol": 1, "entity": entity, "id": rid, "set": changes})

    def export(self) -> httpx.Response:
        return self.server.get("/v1/admin/export", headers=self._headers())

    def health(self) -> httpx.Response:
        return self.server.get("/v1/health", headers=self._headers())


def _op(entity: str, rid: str, fields: dict, *, kind: str = "create", base: dict | None = None,
        op_id: str | None = None, wall_ms: int | None = None, dev: str = "mallory") -> dict:
    stamp = format_stamp(wall_ms or time.time_ns() // 1_000_000, 0, dev)
    return op_to_wire(Op(op_id=op_id or uuid7(), device=dev, hlc=stamp, entity=entity, record_id=rid,
                         fields=fields, base=base or {}, kind=kind))


def _fill_victim(server, home: Path) -> dict[str, str]:
    acc = server.ok("account", "add", "--name", "Acme Secret Ltd", "--city", "Leeds", "--phone", "0113 496 0001",
             "--json", home=home)["id"]
    ids = {"account": acc}
    ids["contact"] = server.ok("contact", "add", "--account", acc, "--name", "Alice Acme", "--email",
                        "alice@acme.example", "--json", home=home)["id"]
    ids["visit"] = server.ok("visit", "log", "--account", acc, "--outcome", "acme confidential visit", "--json",
                      home=home)["id"]
    ids["order"] = server.ok("order", "add", "--account", acc, "--line", "ACME-1:2:9.99", "--json", home=home)["id"]
    ids["note"] = server.ok("note", "add", "--account", acc, "--text", "acme private note", "--json", home=home)["id"]
    return ids


def _outbox_ops(home: Path) -> list[dict]:
    db = sqlite3.connect(home / "crm.sqlite3")
    ops = [json.loads(body) for (body,) in db.execute("SELECT body FROM outbox ORDER BY seq")]
    db.close()
    return ops


A_SECRETS = ("Acme Secret Ltd", "Alice Acme", "alice@acme.example", "acme confidential", "acme private",
             "ACME-1", "0113 496 0001")


def _leaks(text: str, ids) -> list[str]:
    return [s for s in (*A_SECRETS, *ids) if s in text]


@pytest.fixture(scope="module")
def world(tmp_path_factory, module_server):
    tmp, server = tmp_path_factory.mktemp("isolation"), module_server
    a_home = server.device(tmp, "a-device", server.add_rep(A, "a-rep"))
    b_home = server.device(tmp, "b-device", server.add_rep(B, "b-rep"))
    a_ids = _fill_victim(server, a_home)
    a_ops = _outbox_ops(a_home)
    server.ok("sync", home=a_home)
    server.ok("account", "add", "--name", "Globex Own Account", "--json", home=b_home)
    server.ok("sync", home=b_home)
    admin = {org: server.ok("server", "add-admin", "--data", str(server.data), "--org", org, "--json")["token"]
             for org in (A, B)}
    yield {"server": server, "a_home": a_home, "b_home": b_home, "a_ids": a_ids, "a_ops": a_ops,
           "a_admin": admin[A], "b_admin": admin[B], "b_device": server.add_rep(B, "b-attacker"),
           "a_device": server.add_rep(A, "a-second")}


def test_isolation_matrix(world, request):
    server, a_ids, a_ops = world["server"], world["a_ids"], world["a_ops"]
    a_id_list = list(a_ids.values())
    a_op_ids = [op["op"] for op in a_ops]
    b_dev, b_admin = Client(server, world["b_device"]), Client(server, world["b_admin"])
    a_dev, a_admin = Client(server, world["a_device"]), Client(server, world["a_admin"])
    matrix = {endpoint: dict.fromkeys(ATTACKS, NOT_APPLICABLE) for endpoint in ENDPOINTS}
    a_before = server.export(A)
    a_stats = server.ok("server", "stats", "--data", str(server.data), "--org", A, "--json")

    b_named: set[str] = set()  # A's record and op ids B itself put in its ops: B may see those again

    def b_pull_is_clean(query: str = "cursor=0&limit=5000") -> bool:
        """B's log holds nothing of A: no value, no op id or record id B did not send itself."""
        page = b_dev.pull(query)
        unseen = [name for name in (*a_id_list, *a_op_ids) if name not in b_named]
        return page.status_code == 200 and not _leaks(page.text, unseen)

    # -- B's token with A's record ids --------------------------------------------------------
    attack = "B's token, A's ids"
    rid = a_ids["account"]
    hostile = [_op("account", rid, {"name": "Pwned", "phone": "666"}, kind="update"),
               _op("account", rid, {"_deleted": True}, kind="delete"),
               _op("contact", a_ids["contact"], {"email": "mallory@evil.example"}, kind="update")]
    answer = b_dev.push(hostile)
    b_named.update(op["id"] for op in hostile)
    assert answer.status_code == 200 and len(answer.json()["acked"]) == 3
    assert server.export(A) == a_before
    matrix["push"][attack] = "isolated"
    assert b_pull_is_clean()
    matrix["pull"][attack] = "isolated"
    edit = b_admin.edit("visit", a_ids["visit"], {"outcome": "rewritten by globex"})
    edit_other = b_admin.edit("order", a_ids["order"], {"currency": "EUR"})
    assert edit.status_code == edit_other.status_code == 404, (edit.text, edit_other.text)
    assert not _leaks(edit.text + edit_other.text, [])
    matrix["admin edit"][attack] = "404"
    exported = b_admin.export()
    assert exported.status_code == 200 and not _leaks(exported.text, a_op_ids)
    assert "Globex Own Account" in exported.text
    matrix["admin export"][attack] = "isolated"
    health = b_dev.health()
    assert health.status_code == 200 and set(health.json()) == {"ok", "protocol", "version"}
    matrix["health"][attack] = "no data"

    # -- A's op ids reused in B, after A and before A -----------------------------------------
    attack = "A's op ids in B"
    reused = [_op("account", uuid7(), {"name": f"Globex copy {i}"}, op_id=op_id) for i, op_id in enumerate(a_op_ids)]
    answer = b_dev.push(reused)
    b_named.update(a_op_ids)
    assert answer.status_code == 200 and sorted(answer.json()["acked"]) == sorted(a_op_ids)
    b_names = [a["name"] for a in b_admin.export().json()["account"]]
    assert all(f"Globex copy {i}" in b_names for i in range(len(a_op_ids))), "applied in B, not suppressed"
    assert server.export(A) == a_before, "A's log does not see B's ops under the same ids"
    future_id, future_rid = uuid7(), uuid7()
    squat = b_dev.push([_op("account", future_rid, {"name": "Globex squatter"}, op_id=future_id)])
    assert squat.status_code == 200
    own = a_dev.push([_op("account", future_rid, {"name": "Acme later account"}, op_id=future_id, dev="a-dev")])
    assert own.status_code == 200 and own.json()["acked"] == [future_id]
    a_accounts = {r["id"]: r["name"] for r in a_admin.export().json()["account"]}
    assert a_accounts.get(future_rid) == "Acme later account", "B squatting an op id cannot suppress A's op"
    b_accounts = {r["id"]: r["name"] for r in b_admin.export().json()["account"]}
    assert b_accounts.get(future_rid) == "Globex squatter"
    matrix["push"][attack] = "isolated"
    a_page = a_dev.pull("cursor=0&limit=5000").text
    assert "Acme later account" in a_page and "Globex" not in a_page
    assert b_pull_is_clean() and "Acme later account" not in b_dev.pull("cursor=0&limit=5000").text
    matrix["pull"][attack] = "isolated"
    assert "Acme later account" not in b_admin.export().text
    matrix["admin export"][attack] = "isolated"
    a_before = server.export(A)  # A's own push above is the only change to A

    # -- A's record ids created in B ------------------------------------------------------------
    attack = "A's record ids in B"
    clones = [_op("visit", a_ids["visit"], {"account": a_ids["account"], "outcome": "globex visit",
                                            "at": "2026-01-01T00:00:00Z"}),
              _op("note", a_ids["note"], {"account": a_ids["account"], "text": "globex note",
                                          "at": "2026-01-01T00:00:00Z"})]
    answer = b_dev.push(clones)
    b_named.update(op["id"] for op in clones)
    assert answer.status_code == 200 and len(answer.json()["acked"]) == 2, answer.text
    assert server.export(A) == a_before
    matrix["push"][attack] = "isolated"
    assert b_pull_is_clean()
    matrix["pull"][attack] = "isolated"
    edited = b_admin.edit("visit", a_ids["visit"], {"outcome": "edited by globex"})
    assert edited.status_code == 200 and edited.json()["outcome"] == "edited by globex", edited.text
    assert not _leaks(edited.text, [])
    assert server.export(A) == a_before
    matrix["admin edit"][attack] = "isolated"
    b_export = b_admin.export().json()
    clone = next(r for r in b_export["visit"] if r["id"] == a_ids["visit"])
    assert clone["outcome"] == "edited by globex" and not _leaks(json.dumps(b_export), [])
    matrix["admin export"][attack] = "isolated"

    # -- cursors past the end, before the start, inside A's range ------------------------------
    attack = "cursor"
    a_positions = [int(a_dev.pull(f"cursor={n}&limit=1").json()["cursor"]) for n in range(0, 3)]
    for query in ("cursor=-1", "cursor=18446744073709551616", "cursor=1.5", "limit=0"):
        assert b_dev.pull(query).status_code == 400, query
    for cursor in (*a_positions, 10**12, 2**63 - 1):
        assert b_pull_is_clean(f"cursor={cursor}&limit=5000"), cursor
    assert b_dev.pull("cursor=1000000000000").json() == {"ops": [], "cursor": 10**12, "more": False}
    matrix["pull"][attack] = "400 / isolated"

    # -- device tokens on back-office endpoints -------------------------------------------------
    attack = "device token on admin"
    for client in (b_dev, a_dev):
        assert client.edit("account", a_ids["account"], {"city": "Nowhere"}).status_code == 403
        assert client.export().status_code == 403
    matrix["admin edit"][attack] = matrix["admin export"][attack] = "403"
    assert server.export(A) == a_before

    # -- no token, a wrong one, a revoked one, an expired one -----------------------------------
    attack = "bad token"
    revoked = server.add_rep(A, "lost-phone")
    server.ok("server", "revoke", "--data", str(server.data), "--org", A, "--rep", "lost-phone", "--json")
    expired = server.ok("server", "add-rep", "--data", str(server.data), "--org", A, "--rep", "temp",
                 "--expires-in-days", "1", "--json")["token"]
    db = sqlite3.connect(server.data / "server.sqlite3")
    with db:
        db.execute("UPDATE tokens SET expires_at = '2000-01-01T00:00:00Z' WHERE rep = 'temp'")
    db.close()
    for token, reason in ((None, "missing"), ("crm_" + "x" * 43, "unknown"), (revoked, "revoked"),
                          (expired, "expired")):
        bad = Client(server, token)
        for endpoint, answer in (("push", bad.push([_op("account", uuid7(), {"name": "Sneaky"})])),
                                 ("pull", bad.pull()), ("admin edit", bad.edit("account", a_ids["account"], {"city": "X"})),
                                 ("admin export", bad.export())):
            assert answer.status_code == 401, (endpoint, reason, answer.text)
            assert answer.json()["reason"] == reason and answer.json()["error"] == "unauthorized"
            assert not _leaks(answer.text, a_op_ids)
            matrix[endpoint][attack] = "401"
        assert bad.health().status_code == 200 and set(bad.health().json()) == {"ok", "protocol", "version"}
    matrix["health"][attack] = "no data"
    assert server.export(A) == a_before

    # -- a far-future stamp in A must not drag B's clock ---------------------------------------
    attack = "A's far-future stamp"
    now = time.time_ns() // 1_000_000
    future = now + MAX_AHEAD_MS - 60_000  # the furthest ahead the server takes (a minute to spare)
    answer = a_dev.push([_op("account", uuid7(), {"name": "Acme from the future"}, wall_ms=future, dev="a-dev")])
    assert answer.status_code == 200 and answer.json()["acked"]
    matrix["push"][attack] = "isolated"
    stamp = b_admin.edit("visit", a_ids["visit"], {"outcome": "after the future"})
    assert stamp.status_code == 200
    b_log = b_dev.pull("cursor=0&limit=5000").json()["ops"]
    newest = max(int(op["hlc"][:13]) for op in b_log)
    assert newest < now + MAX_AHEAD_MS // 2, f"B's back office stamped {(newest - now) / 60000:.0f} min ahead"
    matrix["admin edit"][attack] = "isolated"
    matrix["pull"][attack] = "isolated"
    a_before = server.export(A)

    # -- B's real device: it syncs fine and holds nothing of A ----------------------------------
    server.ok("sync", home=world["b_home"])
    b_state = server.export_home(world["b_home"])
    assert b_state == server.export(B)
    assert not _leaks(b_state, a_op_ids)
    assert server.export(A) == a_before
    assert server.ok("server", "stats", "--data", str(server.data), "--org", A, "--json")["ops"] == a_stats["ops"] + 2

    table = render(matrix)
    _say(request, "\nisolation matrix (endpoint x attack; every cell observed):\n" + table)
    assert all(cell in REFUSED_OR_ISOLATED for row in matrix.values() for cell in row.values()), table
    assert table in DOC.read_text(), "docs/security.md must hold the matrix this test observes:\n" + table


def test_the_server_cli_never_guesses_the_organisation_of_a_shared_id(world):
    """`crm server edit` without --org refuses an id two organisations hold, rather than pick one."""
    server, rid = world["server"], world["a_ids"]["account"]
    result = server.crm("server", "edit", "--data", str(server.data), "account", rid, "--set", "city=Guess", "--json")
    assert result.code == 3 and "several organisations" in result.stderr
    assert "Guess" not in server.export(A) and "Guess" not in server.export(B)


def _say(request, text: str) -> None:
    """Print past pytest's capture, so the figures show in a plain run's output."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(text, flush=True)


def test_territories_isolate_reps_within_an_organisation(world, tmp_path_factory):
    """Territories are a read boundary inside one organisation (docs/sync-protocol.md,
    "Territories"): a rep's token never receives a record of an account outside its territories,
    whatever it asks for (any cursor, its own ops included, no device, a stale or wrong scope
    epoch, protocol 1), not even after that account moved out of its reach; a move it is told of
    names only the account id, to drop."""
    server, tmp, org = world["server"], tmp_path_factory.mktemp("territories"), "initech"
    north = server.device(tmp, "north", server.add_rep(org, "n-rep"))
    data = ("--data", str(server.data), "--org", org, "--json")
    server.ok("server", "assign", *data, "--rep", "n-rep", "--territory", "north")
    server.ok("sync", home=north)
    secret = server.ok("account", "add", "--name", "Initech North Secret", "--json", home=north)["id"]
    server.ok("visit", "log", "--account", secret, "--outcome", "north confidential", "--json", home=north)
    server.ok("sync", home=north)
    south = Client(server, server.add_rep(org, "s-rep"))
    server.ok("server", "assign", *data, "--rep", "s-rep", "--territory", "south")
    epoch = server.ok("server", "assign", *data, "--rep", "s-rep", "--territory", "south")["epoch"]
    queries = [f"cursor={c}&scope={e}{extra}" for c in (0, 1, 2, 10**6) for e in (0, epoch, epoch + 1)
               for extra in ("", "&own=1", "&device=s-dev", "&device=s-dev&own=1")] + ["cursor=0"]
    answers = [south.pull(q) for q in queries]
    assert all(a.status_code in (200, 400) for a in answers)
    assert answers[-1].status_code == 400 and answers[-1].json()["error"] == "protocol"  # protocol 1
    for answer in answers:
        assert "Initech North Secret" not in answer.text and "north confidential" not in answer.text
        assert secret not in answer.text
    # The account moves to east: south learns only to drop it (it never had it), nothing of it.
    server.ok("server", "edit", "--data", str(server.data), "account", secret, "--set", "territory=east")
    moved = south.pull(f"cursor=0&scope={epoch}").json()
    assert moved["ops"] == [] and moved["moves"] == [{"account": secret, "drop": True}]
    assert "Initech North Secret" not in json.dumps(moved)
    # The scoped export of a rep is exactly what it may hold.
    assert "Initech North Secret" not in server.crm("server", "export", "--data", str(server.data), "--org", org,
                                                     "--rep", "s-rep").stdout
