"""Territories (issue 15, docs/sync-protocol.md "Territories"): a device holds only its rep's
accounts, what hangs off them, and the catalogue; accounts that move between territories reach
the devices that gain them as a snapshot and leave those that lose them, keeping their own
unsynced work, which is still pushed and accepted.

In process: the server app over a real SQLite store, several Device objects syncing through it.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from crm import canonical_json
from crm.device import Device
from crm.errors import NotFoundError, ServerError, ServerUnreachableError
from crm.server import ServerStore
from crm.server.app import create_app
from crm.server.store import INLINE_BODY_BYTES, MOVE_TERR, Continuity
from crm.sync import SyncClient, sync_once
from tests.support import AppTransport

ORG = "acme"
URL = "http://crm-server.test"


class Rig:
    """A server store and its app in this process, and devices that sync with it."""

    def __init__(self, tmp: Path, target: str | None = None) -> None:
        self.tmp = tmp
        self.store = ServerStore.open(target or tmp / "server")  # a data directory or a PostgreSQL URL
        self.transport = AppTransport()
        self.transport.serve(create_app(self.store))
        self.devices: list[Device] = []

    def device(self, name: str, rep: str | None = None) -> Device:
        token = self.store.add_token(ORG, rep or name)
        dev = Device.init(self.tmp / name, rep=rep or name, server_url=URL, token=token)
        self.devices.append(dev)
        return dev

    def sync(self, *devices: Device) -> None:
        for dev in devices:
            with SyncClient(base_url=URL, token=dev.credentials()[1], transport=self.transport) as client:
                sync_once(dev, client=client)

    def offline(self, dev: Device) -> None:
        """No-op marker: a device that does not sync is offline."""

    def export(self, *, rep: str | None = None, territory: str | None = None) -> str:
        return canonical_json(self.store.export(ORG, rep=rep, territory=territory))

    def move(self, account: str, territory: str) -> None:
        self.store.edit(ORG, "account", account, {"territory": territory})

    def close(self) -> None:
        for dev in self.devices:
            dev.close()
        self.store.close()
        self.transport.shutdown()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def ids(dev: Device, entity: str) -> set[str]:
    return {r["id"] for r in dev.export()[entity]}


def held(dev: Device) -> str:
    return canonical_json(dev.export())


def _two_territories(rig: Rig) -> tuple[Device, Device, Device]:
    """north (rep n), south (rep s), and a manager with no territory (sees everything)."""
    n, s, m = rig.device("n"), rig.device("s"), rig.device("m")
    rig.store.assign(ORG, "n", "north")
    rig.store.assign(ORG, "s", "south")
    rig.sync(n, s, m)
    return n, s, m


def _account(dev: Device, name: str, **fields) -> str:
    return dev.create("account", {"name": name, **fields})["id"]


# -- (a) the data model ----------------------------------------------------------------------------
def test_an_organisation_without_territories_behaves_as_before(rig):
    a, b = rig.device("a"), rig.device("b")
    acc = _account(a, "Corner Store")
    rig.sync(a, b, a)
    assert "territory" not in a.export()["account"][0]
    assert held(a) == held(b) == rig.export() == rig.export(rep="a")
    assert ids(b, "account") == {acc}


def test_assign_lists_territories_and_sets_the_default(rig):
    rig.device("n")
    first = rig.store.assign(ORG, "n", "north")
    assert first["territories"] == ["north"] and first["default"] == "north" and first["changed"]
    again = rig.store.assign(ORG, "n", "north")
    assert not again["changed"] and again["epoch"] == first["epoch"]
    both = rig.store.assign(ORG, "n", "east")
    assert both["territories"] == ["east", "north"] and both["default"] == "north"
    assert both["epoch"] > first["epoch"]
    assert [t["territory"] for t in rig.store.territories(ORG)] == ["east", "north"]
    gone = rig.store.assign(ORG, "n", "north", remove=True)
    assert gone["territories"] == ["east"] and gone["default"] == "east"
    from crm.errors import NotFoundError, ValidationError
    with pytest.raises(NotFoundError):
        rig.store.assign(ORG, "n", "north", remove=True)
    for bad in ("", "*", "!", " x", "a" * 101):
        with pytest.raises(ValidationError):
            rig.store.assign(ORG, "n", bad)


def test_a_new_account_takes_the_reps_default_territory(rig):
    n, s, m = _two_territories(rig)
    acc = _account(n, "North Shop")  # the device learnt its default on its last sync
    assert n.get("account", acc)["territory"] == "north"
    rig.sync(n, s, m)
    assert rig.store.export(ORG)["account"][0]["territory"] == "north"
    assert ids(s, "account") == set() and ids(m, "account") == {acc}


def test_the_server_fills_the_territory_an_older_device_left_out(rig):
    n = rig.device("n")
    rig.store.assign(ORG, "n", "north")
    # the device has not synced since the assignment: it does not know its default yet
    acc = _account(n, "Shop")
    assert "territory" not in n.get("account", acc)
    rig.sync(n)
    assert n.get("account", acc)["territory"] == "north"
    assert held(n) == rig.export(rep="n")


def test_a_device_cannot_move_an_account(rig):
    n, _, _ = _two_territories(rig)
    acc = _account(n, "Shop")
    from crm.errors import ValidationError
    with pytest.raises(ValidationError):
        n.edit("account", acc, {"territory": "south"})


# -- (b) scoped pull and authorisation ----------------------------------------------------------
def test_each_device_holds_only_its_territory_and_the_catalogue(rig):
    n, s, m = _two_territories(rig)
    rig.store.import_products(ORG, [{"sku": "SKU-1", "name": "Widget", "price": "2.50"}])
    na = _account(n, "North Shop")
    n.create("visit", {"account": na, "outcome": "met"})
    n.add_note("call back", account=na)
    sa = _account(s, "South Shop")
    s.create("contact", {"account": sa, "name": "Sam"})
    rig.sync(n, s, m, n, s)
    assert ids(n, "account") == {na} and ids(s, "account") == {sa}
    assert ids(m, "account") == {na, sa}
    assert len(n.export()["product"]) == len(s.export()["product"]) == 1
    assert s.export()["visit"] == [] and s.export()["note"] == [] and n.export()["contact"] == []
    assert held(n) == rig.export(rep="n") == rig.export(territory="north")
    assert held(s) == rig.export(rep="s")
    assert held(m) == rig.export(rep="m") == rig.export()


def _raw_pull(rig: Rig, token: str, **params) -> httpx.Response:
    with httpx.Client(base_url=URL, transport=rig.transport) as http:
        return http.get("/v1/pull", params={"cursor": 0, "limit": 5000, **params},
                        headers={"authorization": f"Bearer {token}"})


def test_the_server_never_sends_a_record_outside_the_reps_territories(rig):
    """Isolation within an organisation: whatever a south token asks for, no north record."""
    n = rig.device("n")
    rig.store.assign(ORG, "n", "north")
    rig.sync(n)
    secret = _account(n, "North Secret")
    n.create("visit", {"account": secret, "outcome": "confidential"})
    rig.sync(n)
    south = rig.store.add_token(ORG, "s")
    rig.store.assign(ORG, "s", "south")
    epoch = rig.store.scope(ORG, "s").epoch
    answers = [_raw_pull(rig, south, scope=epoch), _raw_pull(rig, south, scope=epoch, own=1),
               _raw_pull(rig, south, scope=epoch, device="d-south"), _raw_pull(rig, south, scope=0),
               _raw_pull(rig, south)]
    for answer in answers:
        assert secret not in answer.text and "confidential" not in answer.text
    assert answers[-1].status_code == 400 and answers[-1].json()["error"] == "protocol"  # a protocol-1 client
    assert answers[0].status_code == 200 and answers[0].json()["ops"] == []
    # a move marker names the account a south device may not see: it learns only "drop"
    rig.move(secret, "east")
    page = _raw_pull(rig, south, scope=epoch).json()
    assert page["moves"] == [{"account": secret, "drop": True}] and page["ops"] == []


@pytest.mark.parametrize("reader", ["n2", "m"])
def test_small_and_large_ops_come_back_whole_and_in_log_order(rig, reader):
    """A pull reads a small op's body with its page's plan and a large one's after it: ops either
    side of that size (INLINE_BODY_BYTES), interleaved, come back byte for byte in log order, to
    a rep of one territory and to one who holds the whole organisation."""
    n, s, m = _two_territories(rig)
    rig.store.assign(ORG, "n2", "north")
    sizes = [3, INLINE_BODY_BYTES * 2, INLINE_BODY_BYTES - 300, 10, INLINE_BODY_BYTES + 1, 5000, 20]
    for i, size in enumerate(sizes):
        for dev in (n, s):
            account = _account(dev, f"Shop {i}")
            dev.add_note("é" * (size // 2) + "x" * (size % 2), account=account)
        rig.sync(n, s)
    token = rig.store.add_token(ORG, reader)
    page = _raw_pull(rig, token, scope=rig.store.scope(ORG, reader).epoch).json()
    with rig.store.db.read() as conn:
        log = [(body, terr) for body, terr in conn.execute("SELECT body, terr FROM ops WHERE org = ? ORDER BY seq",
                                                            (ORG,))]
    sent = [body for body, terr in log if terr != MOVE_TERR and (reader == "m" or terr != "south")]
    assert not page["more"] and page["ops"] == [json.loads(body) for body in sent]
    large = [len(body.encode()) > INLINE_BODY_BYTES for body in sent]
    assert large.count(True) >= 3 and large.count(False) >= 3 and large != sorted(large)  # interleaved


def test_a_protocol_1_client_of_an_unscoped_rep_gets_the_log_as_before(rig):
    a = rig.device("a")
    acc = _account(a, "Shop")
    rig.sync(a)
    token = rig.store.add_token(ORG, "b")
    page = _raw_pull(rig, token).json()
    assert [op["id"] for op in page["ops"]] == [acc] and "scope" not in page and "moves" not in page


# -- (c) moves ----------------------------------------------------------------------------------
def test_a_back_office_move_snapshots_to_the_gainer_and_drops_from_the_loser(rig):
    n, s, m = _two_territories(rig)
    acc = _account(n, "Shop")
    visit = n.create("visit", {"account": acc, "outcome": "met"})["id"]
    order = n.add_order({"account": acc}, [{"sku": "SKU-1", "quantity": 2, "unit_price": "1.00"}])["id"]
    n.add_note("hello", account=acc)
    rig.sync(n)
    n.edit("account", acc, {"city": "Leeds"})
    rig.sync(n, s)
    assert ids(s, "account") == set()
    rig.move(acc, "south")
    rig.sync(n, s, m)
    assert ids(n, "account") == set() and n.export()["visit"] == [] and n.export()["order"] == []
    assert n.export()["note"] == []
    assert ids(s, "account") == {acc} and ids(s, "visit") == {visit} and ids(s, "order") == {order}
    assert s.get("account", acc)["city"] == "Leeds"
    for dev, rep in ((n, "n"), (s, "s"), (m, "m")):
        assert held(dev) == rig.export(rep=rep)
    # the gainer works on it and everyone converges
    s.edit("account", acc, {"phone": "0113"})
    rig.sync(s, n, m)
    assert m.get("account", acc)["phone"] == "0113"
    for dev, rep in ((n, "n"), (s, "s"), (m, "m")):
        assert held(dev) == rig.export(rep=rep)


def test_a_rep_edits_an_account_moved_away_while_offline_and_nothing_is_lost(rig):
    n, s, _ = _two_territories(rig)
    acc = _account(n, "Shop")
    rig.sync(n, s)
    # n goes offline and keeps working on the account; meanwhile the back office moves it south
    n.edit("account", acc, {"phone": "0113 555"})
    late_visit = n.create("visit", {"account": acc, "outcome": "signed"})["id"]
    rig.move(acc, "south")
    rig.sync(s)
    assert ids(s, "account") == {acc} and ids(s, "visit") == set()
    rig.sync(n)  # push (accepted: written while n held it), then the move: dropped
    assert ids(n, "account") == set() and n.outbox()["pending"] == 0
    rig.sync(s)
    assert s.get("account", acc)["phone"] == "0113 555" and ids(s, "visit") == {late_visit}
    assert held(n) == rig.export(rep="n") and held(s) == rig.export(rep="s")


def test_unsynced_work_on_a_dropped_account_is_kept_until_the_server_takes_it(rig):
    n, s, _ = _two_territories(rig)
    acc = _account(n, "Shop")
    rig.sync(n)
    rig.move(acc, "south")
    # The drop arrives while n has unsynced work on the account (a pull alone, as after a push
    # that failed): the record holding it stays, the rest goes.
    other = n.create("visit", {"account": acc, "outcome": "x"})["id"]
    with SyncClient(base_url=URL, token=n.credentials()[1], transport=rig.transport) as client:
        from crm.sync import pull_changes
        pull_changes(n, client)
    assert ids(n, "visit") == {other} and ids(n, "account") == set()
    rig.sync(n)  # pushed, acknowledged, then removed
    assert ids(n, "visit") == set() and n.outbox()["pending"] == 0
    rig.sync(s)
    assert ids(s, "visit") == {other}
    assert held(n) == rig.export(rep="n") and held(s) == rig.export(rep="s")


def test_a_move_racing_an_edit_and_a_move_back_converge(rig):
    n, s, m = _two_territories(rig)
    acc = _account(n, "Shop")
    rig.sync(n, s)
    n.edit("account", acc, {"city": "York"})  # offline edit
    rig.move(acc, "south")
    rig.sync(s)
    s.edit("account", acc, {"phone": "1"})  # the gainer edits too, offline
    rig.move(acc, "north")  # and it moves back
    rig.sync(n, s, n, m)
    account = rig.store.export(ORG)["account"][0]
    assert account["city"] == "York" and account["phone"] == "1" and account["territory"] == "north"
    assert ids(n, "account") == {acc} and ids(s, "account") == set()
    assert n.get("account", acc)["phone"] == "1"
    for dev, rep in ((n, "n"), (s, "s"), (m, "m")):
        assert held(dev) == rig.export(rep=rep)


def test_airplane_mode_during_a_reassignment(rig):
    n, s, _ = _two_territories(rig)
    acc = _account(n, "Shop")
    visit = n.create("visit", {"account": acc, "outcome": "met"})["id"]
    rig.sync(n)
    sa = _account(s, "South Shop")
    rig.sync(s)
    # n is offline while the back office gives n south and takes north away
    n.edit("account", acc, {"city": "Leeds"})
    rig.store.assign(ORG, "n", "south")
    rig.store.assign(ORG, "n", "north", remove=True)
    rig.sync(n)
    assert ids(n, "account") == {sa} and ids(n, "visit") == set()
    assert held(n) == rig.export(rep="n")
    # and back: it regains north, its own earlier work (its own ops) included
    rig.store.assign(ORG, "n", "north")
    rig.sync(n)
    assert ids(n, "account") == {acc, sa} and ids(n, "visit") == {visit}
    assert n.get("account", acc)["city"] == "Leeds"
    assert held(n) == rig.export(rep="n")


def _server_down_after_the_reset(rig: Rig, dev: Device, monkeypatch) -> None:
    """The network goes the moment the device has taken a reset answer: its refill never starts."""
    real = dev.reset_scope

    def reset_then_lose_the_network(scope):
        real(scope)
        rig.transport.serve(None)

    monkeypatch.setattr(dev, "reset_scope", reset_then_lose_the_network)


def test_a_reset_cut_short_keeps_the_reps_own_new_account(rig, monkeypatch):
    # Chaos seed 16 (CI, 2026-12-04): the rep's first account, created before the device knew its
    # territory, was pushed (the server stamped it), then the reset dropped it (no territory on
    # the device) and the network went before the refill brought it back: in airplane mode the
    # rep could not edit their own account (exit 4) until the next good sync.
    n = rig.device("n")
    rig.store.assign(ORG, "n", "north")
    acc = _account(n, "Shop")
    _server_down_after_the_reset(rig, n, monkeypatch)
    with pytest.raises(ServerUnreachableError):
        rig.sync(n)
    assert ids(n, "account") == {acc}
    n.edit("account", acc, {"city": "Leeds"})  # offline work on it is saved
    rig.transport.serve(create_app(rig.store))
    rig.sync(n)
    assert n.get("account", acc)["city"] == "Leeds" and n.get("account", acc)["territory"] == "north"
    assert held(n) == rig.export(rep="n")


def test_a_reset_cut_short_keeps_an_account_moved_into_the_new_scope(rig, monkeypatch):
    n, s, _ = _two_territories(rig)
    acc = _account(n, "Shop")
    visit = n.create("visit", {"account": acc, "outcome": "met"})["id"]
    gone = _account(n, "Closed")
    rig.sync(n)
    # while n is offline: n is moved to the south, and so is one of its accounts
    rig.move(acc, "south")
    rig.store.assign(ORG, "n", "south")
    rig.store.assign(ORG, "n", "north", remove=True)
    _server_down_after_the_reset(rig, n, monkeypatch)
    with pytest.raises(ServerUnreachableError):
        rig.sync(n)
    # the device still says north for it: only the refill can tell what the rep holds now
    assert {acc, visit} <= ids(n, "account") | ids(n, "visit")
    rig.transport.serve(create_app(rig.store))
    rig.sync(n)
    assert ids(n, "account") == {acc} and ids(n, "visit") == {visit} and gone not in ids(n, "account")
    assert held(n) == rig.export(rep="n")


def test_a_rep_unassigned_from_everything_holds_the_whole_organisation(rig):
    n, s, _ = _two_territories(rig)
    na, sa = _account(n, "N"), _account(s, "S")
    rig.sync(n, s, n)
    rig.store.assign(ORG, "n", "north", remove=True)
    rig.sync(n)
    assert ids(n, "account") == {na, sa} and held(n) == rig.export(rep="n") == rig.export()


def test_an_account_created_outside_the_reps_territories_leaves_their_device(rig):
    n, s, _ = _two_territories(rig)
    acc = n.create("account", {"name": "For the south", "territory": "south"})["id"]
    rig.sync(n, s)
    assert ids(n, "account") == set() and ids(s, "account") == {acc}
    assert held(n) == rig.export(rep="n") and held(s) == rig.export(rep="s")


def test_an_old_server_answer_without_scope_still_works(rig):
    """A protocol-2 device against a server that sends no scope (an older server): as before."""
    a = rig.device("a")
    acc = _account(a, "Shop")
    rig.sync(a)
    assert ids(a, "account") == {acc}


def test_a_scope_that_keeps_changing_stops_the_sync(rig, monkeypatch):
    n, _, _ = _two_territories(rig)
    real = rig.store.pull

    def always_reset(*args, **kwargs):
        ops, cursor, more, seen = real(*args, **kwargs)
        return [], cursor, False, {**seen, "reset": True}

    monkeypatch.setattr(rig.store, "pull", always_reset)
    with pytest.raises(ServerError):
        rig.sync(n)


# -- a property: random moves, assignments, edits, syncs in any order converge per scope --------
TERRS = ("t1", "t2", "t3")
STEP = st.one_of(
    st.tuples(st.just("create"), st.integers(0, 2)),
    st.tuples(st.just("edit"), st.integers(0, 2), st.integers(0, 9)),
    st.tuples(st.just("visit"), st.integers(0, 2), st.integers(0, 9)),
    st.tuples(st.just("move"), st.integers(0, 9), st.sampled_from(TERRS)),
    st.tuples(st.just("assign"), st.integers(0, 2), st.sampled_from(TERRS), st.booleans()),
    st.tuples(st.just("sync"), st.integers(0, 2)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEP, min_size=1, max_size=30), seed=st.integers(0, 1000))
@example(steps=[("create", 0), ("sync", 0), ("move", 0, "t2"), ("visit", 0, 0), ("sync", 1), ("sync", 0)], seed=1)
@example(steps=[("create", 1), ("sync", 1), ("assign", 0, "t2", True), ("edit", 1, 0), ("move", 0, "t1"),
                ("assign", 1, "t2", False), ("sync", 0), ("assign", 0, "t1", True)], seed=2)
def test_random_moves_and_reassignments_converge_per_scope(tmp_path_factory, steps, seed):
    rig = Rig(tmp_path_factory.mktemp("prop"))
    try:
        devs = [rig.device(f"r{i}") for i in range(3)]
        for i, terr in enumerate(TERRS):
            rig.store.assign(ORG, f"r{i}", terr)
        rig.sync(*devs)
        rng = random.Random(seed)
        made: list[str] = []  # account ids, in order
        written: dict[str, set[str]] = {}  # account -> visit outcomes written by any device
        for step in steps:
            kind, who = step[0], step[1]
            if kind == "create":
                made.append(_account(devs[who], f"A{len(made)}"))
            elif kind in ("edit", "visit") and made:
                acc = made[step[2] % len(made)]
                dev = devs[who]
                if acc in ids(dev, "account"):
                    if kind == "edit":
                        dev.edit("account", acc, {"city": f"c{rng.randint(0, 99)}"})
                    else:
                        outcome = f"o{rng.randint(0, 10**6)}"
                        dev.create("visit", {"account": acc, "outcome": outcome})
                        written.setdefault(acc, set()).add(outcome)
            elif kind == "move" and made:
                acc = made[who % len(made)]
                if any(r["id"] == acc for r in rig.store.export(ORG)["account"]):
                    rig.move(acc, step[2])
            elif kind == "assign":
                rep, terr, on = f"r{who}", step[2], step[3]
                if on:
                    rig.store.assign(ORG, rep, terr)
                elif terr in (rig.store.scope(ORG, rep).territories or ()):
                    rig.store.assign(ORG, rep, terr, remove=True)
            elif kind == "sync":
                rig.sync(devs[who])
        rig.sync(*devs, *devs)
        everything = rig.store.export(ORG)
        outcomes = {v["outcome"] for v in everything["visit"]}
        assert all(o in outcomes for got in written.values() for o in got), "a visit was lost"
        for i, dev in enumerate(devs):
            assert held(dev) == rig.export(rep=f"r{i}"), f"device r{i} holds other than its scope"
            assert dev.outbox()["pending"] == 0
    finally:
        rig.close()


def test_move_markers_and_scope_columns_survive_a_migration_from_version_4(tmp_path):
    """A server store of schema 4 (before territories) opens, migrates, and serves as before."""
    import sqlite3

    from crm.server.store import MIGRATIONS
    data = tmp_path / "old"
    data.mkdir()
    conn = sqlite3.connect(data / "server.sqlite3")
    for version in range(1, 5):
        for statement in MIGRATIONS[version]["sqlite"].split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("PRAGMA user_version = 4")
    conn.execute("INSERT INTO orgs VALUES ('acme', 'x')")
    body = {"op": "0192aaaa-0000-7000-8000-000000000001", "dev": "d1", "hlc": "1795706783938.00000@d1",
            "kind": "create", "entity": "account", "id": "0192aaaa-0000-7000-8000-0000000000aa",
            "fields": {"name": "Old"}, "base": {}}
    child = {**body, "op": "0192aaaa-0000-7000-8000-000000000002", "entity": "visit",
             "id": "0192aaaa-0000-7000-8000-0000000000bb",
             "fields": {"account": body["id"], "outcome": "x", "at": "2026-01-01T00:00:00Z"}}
    conn.execute("INSERT INTO ops (org, op_id, device, body) VALUES ('acme', ?, 'd1', ?)",
                 (body["op"], json.dumps(body)))
    conn.execute("INSERT INTO ops (org, op_id, device, body) VALUES ('acme', ?, 'd1', ?)",
                 (child["op"], json.dumps(child)))
    conn.execute("INSERT INTO records VALUES ('acme', 'account', ?, '{\"name\": \"Old\"}', '{}', 0, 0)", (body["id"],))
    conn.execute("INSERT INTO records VALUES ('acme', 'visit', ?, ?, '{}', 0, 0)",
                 (child["id"], json.dumps(child["fields"])))
    conn.commit()
    conn.close()
    store = ServerStore.open(data)
    try:
        rows = store.conn.execute("SELECT scope, terr FROM ops ORDER BY seq").fetchall()
        assert rows == [(body["id"], ""), (body["id"], "")]
        store.edit("acme", "account", body["id"], {"territory": "north"})
        assert {terr for (terr,) in store.conn.execute("SELECT terr FROM ops WHERE device = 'd1'")} == {"north"}
        assert [t["territory"] for t in store.territories("acme")] == ["north"]
    finally:
        store.close()


def test_the_search_index_follows_moves_in_and_out_of_scope(rig):
    """The local search index (crm/search.py) is derived from the records a device holds: an
    account that leaves the device (a move, a reassignment) is no longer found, nor named by its
    short id; one that arrives as a snapshot is found at once."""
    n, s, _ = _two_territories(rig)
    acc = _account(n, "Zebedee Hardware", city="Leeds")
    note = n.add_note("ask about the zebra crossing", account=acc)["id"]
    rig.sync(n, s)
    assert n.search("zebedee")[1] == 1 and s.search("zebedee")[1] == 0
    rig.move(acc, "south")
    rig.sync(n, s)
    assert n.search("zebedee") == ([], 0) and n.search("zebra") == ([], 0)
    found, total = s.search("zebedee leeds")
    assert total == 1 and found[0]["id"] == acc
    assert s.search("zebra")[1] == 1 and s.resolve("note", note[-8:]) == note
    with pytest.raises(NotFoundError):
        n.resolve("account", acc[-8:])
    rig.store.assign(ORG, "s", "south", remove=True)
    rig.store.assign(ORG, "s", "west")
    rig.sync(s)
    assert s.search("zebedee") == ([], 0)


# What reaches the server first, before the rest of the device's queue: a visit on an account the
# server has not seen; an edit of a contact it has not seen; a line added to an order it has not
# seen (its account known); the line, then the order, then the rest.
EARLY = {"visit": ["visit"], "contact-edit": ["contact-edit"], "line": ["line"], "chain": ["line", "order"]}


@pytest.mark.parametrize("early", sorted(EARLY))
def test_ops_that_reach_the_server_before_their_record_follow_it_into_its_territory(rig, early):
    """A server restored from a backup may get one rep's ops on a record before the record's
    creator sends its create again (each device re-sends only its own ops): they are logged before
    the server knows the record's account or the account's territory. When those arrive, the early
    ops must reach every device of the territory, also one that pulled past them while they were
    unplaced. (tests/test_server_postgres.py runs it on PostgreSQL.)"""
    ops_before_their_record(rig, early)


def ops_before_their_record(rig: Rig, early: str) -> None:
    from crm.server.store import Identity

    n, n2 = rig.device("n"), rig.device("n2")
    rig.store.assign(ORG, "n", "north")
    rig.store.assign(ORG, "n2", "north")
    rig.store.import_products(ORG, [{"sku": "SKU-1", "name": "Widget", "price": "2.50"}])
    rig.sync(n, n2)
    if early == "line":  # the order's account is on the server already
        acc = _account(n, "North Shop")
        rig.sync(n, n2)
    else:
        acc = _account(n, "North Shop")
    made = {"visit": n.create("visit", {"account": acc, "outcome": "met"})["id"]}
    made["contact"] = n.create("contact", {"account": acc, "name": "Sam"})["id"]
    n.edit("contact", made["contact"], {"name": "Sam Smith"})
    made["order"] = n.add_order({"account": acc}, [{"sku": "SKU-1", "quantity": 2}])["id"]
    n.add_order_line(made["order"], {"sku": "SKU-1", "quantity": 5})
    queue = [json.loads(body) for _, body in n.pending_ops(limit=100)]
    label = {"visit": lambda op: op["id"] == made["visit"],
             "contact-edit": lambda op: op["id"] == made["contact"] and op.get("kind") == "update",
             "order": lambda op: op["id"] == made["order"] and op.get("kind") == "create",
             "line": lambda op: op["id"] == made["order"] and op.get("kind") == "update"}
    for name in EARLY[early]:  # alone, in this order, before the rest
        (op,) = [op for op in queue if label[name](op)]
        rig.store.push(Identity(ORG, "n", "device"), [op])
        rig.sync(n2)  # n2's cursor passes the early op
    rig.sync(n)  # the rest, and the early ops again (already logged)
    rig.sync(n2)
    assert ids(n2, "account") == {acc} and ids(n2, "visit") == {made["visit"]}
    assert n2.get("contact", made["contact"])["name"] == "Sam Smith"
    assert held(n2) == held(n) == rig.export(rep="n2") == rig.export(territory="north")
    fresh = rig.device("n3", rep="n2")  # a device that starts after it all
    rig.sync(fresh)
    assert held(fresh) == rig.export(rep="n2")


def test_a_server_restored_from_before_a_move_gives_the_account_back_to_its_creator(rig):
    """The back office moves an account from north to south; the server is then restored from a
    backup taken before the move, so the move is gone and the account is north's again. The north
    device had dropped it, and the account is its own create: its pull from the start of the
    restored log must include its own ops, or the rep never sees the account again."""
    from crm.server.backup import backup_sqlite, restore_sqlite

    n, s, m = _two_territories(rig)
    acc = _account(n, "Shop")
    n.create("visit", {"account": acc, "outcome": "met"})
    rig.sync(n, s, m)
    backup_sqlite(rig.tmp / "server", rig.tmp / "backup.sqlite3")
    rig.move(acc, "south")
    rig.sync(n, s, m)
    assert ids(n, "account") == set() and ids(s, "account") == {acc}
    rig.store.close()
    restore_sqlite(rig.tmp / "server", rig.tmp / "backup.sqlite3")
    rig.store = ServerStore.open(rig.tmp / "server")
    rig.transport.serve(create_app(rig.store))
    rig.sync(n, n)
    assert ids(n, "account") == {acc} and len(ids(n, "visit")) == 1
    assert held(n) == rig.export(rep="n")
    # Known gaps (docs/sync-protocol.md, "Continuity"): the back-office move itself is lost with
    # the restore, and devices that pulled it keep it (south's device holds the account, the
    # manager's says south); only a device's own ops are sent back to a restored server.


def test_a_record_named_like_another_territorys_account_moves_none_of_its_log(rig):
    """Record ids are the client's: a hostile rep may create a contact under its own account with
    the id of an account of another territory. Refiling ops logged before their record (above)
    must take only that record's own ops, never the account's history, into the rep's territory."""
    from crm.hlc import format_stamp, now_ms
    from crm.ops import Op, op_to_wire
    from crm.server.store import Identity

    n, s = rig.device("n"), rig.device("s")
    rig.store.assign(ORG, "n", "north")
    rig.store.assign(ORG, "s", "south")
    rig.sync(n, s)
    secret = _account(n, "North Secret")
    n.create("visit", {"account": secret, "outcome": "confidential"})
    rig.sync(n)
    mine = _account(s, "South Shop")
    rig.sync(s)
    op = Op(op_id="op-collide-1", device="dev-evil", hlc=format_stamp(now_ms(), 0, "dev-evil"),
            entity="contact", record_id=secret, fields={"account": mine, "name": "x"}, kind="create")
    assert rig.store.push(Identity(ORG, "s", "device"), [op_to_wire(op)]).acked == ["op-collide-1"]
    south = rig.store.add_token(ORG, "s")
    for answer in (_raw_pull(rig, south, scope=rig.store.scope(ORG, "s").epoch),
                   _raw_pull(rig, south, scope=rig.store.scope(ORG, "s").epoch, own=1)):
        assert answer.status_code == 200 and "North Secret" not in answer.text and "confidential" not in answer.text
    fresh = rig.device("n3", rep="n")
    rig.sync(fresh)
    assert ids(fresh, "account") == {secret} and held(fresh) == rig.export(rep="n")


# -- a field fixed at creation stays fixed: no second create or resolution changes it -------------
HOSTILE_OPS = itertools.count(0, 100)


def _hostile(rig: Rig, rep: str, *ops: tuple[str, str, str, dict], group: bool = False) -> list:
    """Push ``ops`` (kind, entity, record id, fields) as a device of ``rep`` whose clock runs a
    minute ahead, so that last-writer-wins would give them every field; the push's answer."""
    from crm.hlc import format_stamp, now_ms
    from crm.ops import Op, op_to_wire
    from crm.server.store import Identity

    first = next(HOSTILE_OPS)
    wire = [op_to_wire(Op(op_id=f"op-hostile-{first + k}", device="dev-hostile", kind=kind, entity=entity,
                          record_id=rid, hlc=format_stamp(now_ms() + 60_000, k, "dev-hostile"), fields=fields))
            for k, (kind, entity, rid, fields) in enumerate(ops)]
    who = Identity(ORG, rep, "device")
    if group:  # applied as one batch with another rep's push (ServerStore._commit_together)
        return rig.store.push_group([(who, wire, Continuity()), (Identity(ORG, "m", "device"), [], Continuity())])[0]
    return rig.store.push(who, wire)


FIXED_FIELD_ATTACKS = {
    # a rep of the south re-sends a north account's create naming its own territory
    "account-created-again": lambda secret, visit, mine: [
        ("create", "account", secret, {"name": "Mine now", "territory": "south"})],
    # ... or resolves a made-up conflict on the territory field
    "account-resolved": lambda secret, visit, mine: [("resolve", "account", secret, {"territory": "south"})],
    # ... or re-creates a north visit under its own account
    "visit-created-again": lambda secret, visit, mine: [
        ("create", "visit", visit, {"account": mine, "outcome": "mine", "at": "2026-01-01T00:00:00Z"})],
    "visit-resolved": lambda secret, visit, mine: [("resolve", "visit", visit, {"account": mine})],
}


@pytest.mark.parametrize("group", [False, True], ids=["alone", "in-a-group"])
@pytest.mark.parametrize("attack", sorted(FIXED_FIELD_ATTACKS))
def test_no_rep_can_carry_another_territorys_record_into_their_own(rig, attack, group):
    """The organisation is the write boundary, but a territory is the read boundary: a field fixed
    at creation (an account's territory, a record's account) set again by a second create or a
    resolution would move another territory's record, with its history, to the writer's devices
    (the account attacks), or leave it filed where neither territory's devices hold what the
    server does (the visit attacks). Both were so before the rule."""
    carry_another_territorys_record(rig, attack, group)


def carry_another_territorys_record(rig: Rig, attack: str, group: bool) -> None:
    """The test above on any server store (tests/test_server_postgres.py runs it on PostgreSQL)."""
    n, s, m = _two_territories(rig)
    secret = _account(n, "North Secret")
    visit = n.create("visit", {"account": secret, "outcome": "confidential"})["id"]
    rig.sync(n)
    mine = _account(s, "South Shop")
    rig.sync(s)
    answer = _hostile(rig, "s", *FIXED_FIELD_ATTACKS[attack](secret, visit, mine), group=group)
    assert answer.acked == [] and [reason for _, reason in answer.rejected] != [], answer
    assert all("cannot be changed after creation" in reason for _, reason in answer.rejected), answer
    # the refusal names nothing of the other territory's record the pusher did not send itself
    assert not [reason for _, reason in answer.rejected
                if "north" in reason or (attack.startswith("visit") and secret in reason)], answer
    rig.sync(s, n, m)
    south = rig.store.add_token(ORG, "s")
    for text in (_raw_pull(rig, south, scope=rig.store.scope(ORG, "s").epoch).text, rig.export(rep="s"), held(s)):
        assert "North Secret" not in text and "confidential" not in text
    assert rig.store.export(ORG, territory="north")["account"][0]["id"] == secret
    assert held(n) == rig.export(rep="n") and held(s) == rig.export(rep="s") and held(m) == rig.export()
    fresh = rig.device("n3", rep="n")
    rig.sync(fresh)
    assert held(fresh) == held(n)


def test_two_creates_of_one_new_record_naming_two_accounts_stay_consistent(rig):
    """A buggy client creates one new id twice in one push, naming its own account and another
    territory's: both are creates of its own record (nothing stored is moved), so both are taken;
    the record, and all of its log, go where the merge puts it, and each device holds its scope."""
    n, s, m = _two_territories(rig)
    north = _account(n, "North Shop")
    rig.sync(n)
    mine = _account(s, "South Shop")
    rig.sync(s)
    at = "2026-01-01T00:00:00Z"
    answer = _hostile(rig, "s", ("create", "visit", "visit-twice", {"account": mine, "outcome": "a", "at": at}),
                      ("create", "visit", "visit-twice", {"account": north, "outcome": "b", "at": at}))
    assert len(answer.acked) == 2 and answer.rejected == []
    rig.sync(n, s, m)
    assert "visit-twice" in held(n) and "visit-twice" not in held(s)  # the later create's account won
    assert held(n) == rig.export(rep="n") and held(s) == rig.export(rep="s") and held(m) == rig.export()
    again = _hostile(rig, "s", ("create", "visit", "visit-twice", {"account": mine, "outcome": "c", "at": at}))
    assert again.acked == [] and "already has another account" in again.rejected[0][1]


def test_a_create_sent_again_after_a_move_is_acknowledged(rig):
    """The check is of new ops only: a device that sends its account's create again (its answer
    was lost) after the back office moved the account is acknowledged, not refused."""
    from crm.server.store import Identity

    n, s, m = _two_territories(rig)
    acc = _account(n, "North Shop")
    rig.sync(n)
    rig.move(acc, "south")
    with rig.store.db.read() as conn:
        logged = [json.loads(body) for (body,) in conn.execute(
            "SELECT body FROM ops WHERE org = ? AND device = ? ORDER BY seq", (ORG, n.device_id)).fetchall()]
    create = [op for op in logged if op.get("kind") == "create"]
    assert len(create) == 1 and create[0]["fields"]["territory"] == "north"
    again = rig.store.push(Identity(ORG, "n", "device"), create)
    assert again.rejected == [] and again.acked == [op["op"] for op in create]
    rig.sync(n, s, m)
    assert ids(s, "account") == {acc} and ids(n, "account") == set()
