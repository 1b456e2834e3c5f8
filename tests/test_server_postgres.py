"""The sync server on PostgreSQL: real `crm server serve --db` processes, one or two on the same
database, with real `crm` device processes and in-process devices syncing concurrently.

Needs a PostgreSQL server: tox starts one (scripts/ensure-postgres.sh) and passes its DSN in
CRM_TEST_PG_DSN. Without one the tests skip, saying why, except under CI, where they fail.
Each test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from crm import Device
from crm.sync import SyncClient, sync_once
from tests.support import CERTIFY_TIMEOUT, CRM, Server, crm, export, free_port, ok

pytestmark = pytest.mark.process  # real server processes on a real PostgreSQL

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install 'psycopg[binary]')")

DEFAULT_DSN = "postgresql://postgres@/crm_test?host=/tmp/crm-postgres"  # scripts/ensure-postgres.sh
ORG = "acme"


def _admin_dsn() -> str:
    dsn = os.environ.get("CRM_TEST_PG_DSN") or DEFAULT_DSN
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
    except psycopg.Error as exc:
        reason = (f"no PostgreSQL at {dsn} ({str(exc).strip().splitlines()[0]}); run "
                  "scripts/ensure-postgres.sh or set CRM_TEST_PG_DSN")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return dsn


@pytest.fixture
def dsn():
    """A fresh, empty database for this test."""
    admin = _admin_dsn()
    name = f"crm_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(admin)
    yield urlunsplit(parts._replace(path="/" + name))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def admin(*args: str, db: str) -> object:
    """A `crm server ...` admin command against the database."""
    return ok("server", *args, "--db", db)


@contextlib.contextmanager
def servers(db: str, count: int):
    running = [Server(None, free_port(), db=db) for _ in range(count)]
    try:
        for server in running:
            server.start()
        yield running
    finally:
        for server in running:
            server.kill()


def server_export(db: str) -> str:
    result = crm("server", "export", "--db", db, "--org", ORG)
    assert result.code == 0, result.stderr
    return result.stdout


def _account(home: Path, name: str = "Corner Store 42", city: str = "Leeds") -> str:
    return ok("account", "add", "--name", name, "--city", city, "--json", home=home)["id"]


def _device(tmp: Path, name: str, url: str, db: str) -> Path:
    token = admin("add-rep", "--org", ORG, "--rep", name, "--json", db=db)["token"]
    home = tmp / name
    ok("init", "--rep", name, "--server", url, "--token", token, "--json", home=home)
    return home


def _use(home: Path, url: str) -> None:
    """Point a device at another server process (same database) with `crm login`, same token."""
    with contextlib.closing(sqlite3.connect(home / "crm.sqlite3")) as db:
        (token,) = db.execute("SELECT value FROM meta WHERE key = 'token'").fetchone()
    ok("login", "--server", url, "--token", token, "--json", home=home)


# -- the integration behaviours, on PostgreSQL ----------------------------------------------------

def test_two_offline_devices_and_the_back_office_converge(tmp_path, dsn):
    with servers(dsn, 1) as (server,):
        d1, d2 = (_device(tmp_path, name, server.url, dsn) for name in ("d1", "d2"))
        acc = _account(d1)
        ok("sync", "--json", home=d1)
        ok("sync", "--json", home=d2)
        ok("account", "edit", acc, "--set", "city=York", "--set", "phone=0113 555 0100", "--json", home=d1)
        ok("account", "edit", acc, "--set", "city=Hull", "--set", "email=buyer@corner.example", "--json", home=d2)
        other = _account(d1, name="Farm Shop", city="Ripon")
        visit = ok("visit", "log", "--account", acc, "--outcome", "met the buyer", "--json", home=d2)["id"]
        order_id = ok("order", "add", "--account", acc, "--line", "SKU-1:3:2.50", "--json", home=d1)["id"]
        ok("order", "add-line", order_id, "--line", "SKU-2:1:9.99", "--json", home=d1)
        admin("edit", "account", acc, "--set", "name=Corner Store Ltd", "--json", db=dsn)
        for home in (d2, d1, d2):
            ok("sync", "--json", home=home)
        assert export(d1) == export(d2) == server_export(dsn), "devices and server export the same bytes"
    state = json.loads(server_export(dsn))
    assert sorted(r["id"] for r in state["account"]) == sorted({acc, other})
    account = next(r for r in state["account"] if r["id"] == acc)
    assert account["name"] == "Corner Store Ltd"
    assert account["phone"] == "0113 555 0100" and account["email"] == "buyer@corner.example"
    (conflict,) = state["conflicts"]
    assert conflict["field"] == "city" and {account["city"], conflict["loser"]["value"]} == {"York", "Hull"}
    assert [v["id"] for v in state["visit"]] == [visit]
    assert len(state["order"][0]["lines"]) == 2


def test_a_batch_sent_twice_and_out_of_order_is_applied_once(tmp_path, dsn):
    with servers(dsn, 2) as (one, two):
        token = admin("add-rep", "--org", ORG, "--rep", "d1", "--json", db=dsn)["token"]
        d1 = tmp_path / "d1"
        ok("init", "--rep", "d1", "--server", one.url, "--token", token, "--json", home=d1)
        acc = _account(d1)
        ok("account", "edit", acc, "--set", "city=York", home=d1)
        ok("account", "edit", acc, "--set", "city=Selby", home=d1)
        ops = [json.loads(body) for (body,) in sqlite3.connect(d1 / "crm.sqlite3").execute(
            "SELECT body FROM outbox ORDER BY seq")]
        headers = {"authorization": f"Bearer {token}"}
        # reversed to one process, again in order to the other, a partial retry to the first
        for server, batch in ((one, ops[::-1]), (two, ops), (one, ops[1:])):
            answer = httpx.post(server.url + "/v1/push", json={"protocol": 1, "ops": batch}, headers=headers)
            assert answer.status_code == 200
            assert sorted(answer.json()["acked"]) == sorted(o["op"] for o in batch)
        assert admin("stats", "--org", ORG, "--json", db=dsn) == {"ops": 3, "records": 1}
        _use(d1, two.url)
        ok("sync", home=d1)  # the device's own resend is acknowledged, not applied again
        assert admin("stats", "--org", ORG, "--json", db=dsn)["ops"] == 3
        assert ok("outbox", "--json", home=d1)["pending"] == 0
        assert export(d1) == server_export(dsn)
    assert json.loads(server_export(dsn))["account"][0]["city"] == "Selby"


def test_sync_exit_codes(tmp_path, dsn):
    with servers(dsn, 1) as (server,):
        lonely = tmp_path / "lonely"
        ok("init", "--rep", "x", home=lonely)
        assert crm("sync", home=lonely).code == 23
        d1 = _device(tmp_path, "d1", server.url, dsn)
        _account(d1)
        assert crm("sync", home=d1).code == 0
        _account(d1, name="Second")
        admin("revoke", "--org", ORG, "--rep", "d1", db=dsn)
        refused = crm("sync", "--json", home=d1)
        assert refused.code == 21 and "token" in refused.stderr
        assert ok("outbox", "--json", home=d1)["pending"] == 1, "a refused device keeps its work"
        server.kill()
        down = crm("sync", home=d1)
        assert down.code == 20 and "queued" in down.stderr
        assert ok("outbox", "--json", home=d1)["pending"] == 1


def test_the_server_outlives_its_database_connections(tmp_path, dsn):
    """Connections the database drops (a restart, a failover, an idle timeout) are replaced,
    not handed to the next request."""
    with servers(dsn, 1) as (server,):
        d1 = _device(tmp_path, "d1", server.url, dsn)
        _account(d1)
        ok("sync", home=d1)
        with psycopg.connect(dsn, autocommit=True) as conn:
            dropped = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE datname = current_database() AND application_name = 'crm-server'"
                                   ).fetchone()[0]
        assert dropped >= 1
        time.sleep(2.5)  # past the pool's idle check
        _account(d1, name="After the drop")
        assert crm("sync", "--json", home=d1).code == 0
        assert export(d1) == server_export(dsn)


def test_admin_commands_refuse_a_database_without_our_schema_and_a_bad_url(dsn):
    missing = crm("server", "stats", "--org", ORG, "--db", dsn)
    assert missing.code == 5 and "crm server serve --db" in missing.stderr
    bad = crm("server", "stats", "--org", ORG, "--db", "mysql://x/y")
    assert bad.code == 3 and "PostgreSQL URL" in bad.stderr
    both = crm("server", "stats", "--org", ORG, "--db", dsn, "--data", "somewhere")
    assert both.code == 3 and "--data" in both.stderr
    with psycopg.connect(dsn) as conn:  # nothing was created by the refused commands
        assert conn.execute("SELECT to_regclass('ops')").fetchone()[0] is None


# -- two server processes, one database -----------------------------------------------------------

def test_devices_alternating_between_two_server_processes_converge(tmp_path, dsn):
    with servers(dsn, 2) as pair:
        homes = [_device(tmp_path, f"d{i}", pair[i % 2].url, dsn) for i in range(3)]
        acc = _account(homes[0])
        ok("sync", home=homes[0])
        for round_ in range(3):
            for i, home in enumerate(homes):
                _use(home, pair[(i + round_) % 2].url)
                ok("sync", home=home)
                ok("account", "edit", acc, "--set", f"city=City {round_}-{i}", "--json", home=home)
                ok("note", "add", "--account", acc, "--text", f"round {round_} by d{i}", "--json", home=home)
            admin("edit", "account", acc, "--set", f"phone=0113 555 010{round_}", "--json", db=dsn)
        for i, home in enumerate(homes * 2):
            _use(home, pair[i % 2].url)
            ok("sync", home=home)
        exports = {export(home) for home in homes}
        admin_token = admin("add-admin", "--org", ORG, "--json", db=dsn)["token"]
        over_http = [httpx.get(s.url + "/v1/admin/export", headers={"authorization": f"Bearer {admin_token}"})
                     .json() for s in pair]
    assert len(exports) == 1 and exports == {server_export(dsn)}, "every replica holds the same state"
    state = json.loads(server_export(dsn))
    assert over_http[0] == over_http[1] == state, "both processes serve the same state"
    assert len(state["note"]) == 9 and len(state["account"]) == 1
    assert state["account"][0]["phone"] == "0113 555 0102"
    stats = admin("stats", "--org", ORG, "--json", db=dsn)
    assert stats["ops"] == 1 + 9 + 9 + 3, "every op logged once: 1 create, 9 edits, 9 notes, 3 back-office edits"


def test_concurrent_pushes_to_two_processes_lose_and_duplicate_nothing(tmp_path, dsn):
    """Eight in-process devices (the real Device and sync code), each in its own thread, write and
    sync in rounds against two server processes at once while pulling what the others pushed.
    A pull that skipped a late-committed op would leave its device behind for good."""
    devices, rounds, writes = 8, 6, 25
    with servers(dsn, 2) as pair:
        tokens = [admin("add-rep", "--org", ORG, "--rep", f"r{i}", "--json", db=dsn)["token"]
                  for i in range(devices)]
        replicas = [Device.init(tmp_path / f"r{i}", rep=f"r{i}") for i in range(devices)]
        clients = [[SyncClient(base_url=s.url, token=tokens[i]) for s in pair] for i in range(devices)]
        made: list[set[str]] = [set() for _ in range(devices)]
        created = [0] * devices
        shared = replicas[0].create("account", {"name": "Shared", "city": "Leeds"})["id"]
        made[0].update(op_id for op_id, _ in replicas[0].pending_ops(limit=10))
        sync_once(replicas[0], client=clients[0][0])
        start = threading.Barrier(devices)
        errors: list[BaseException] = []

        def field_rep(i: int) -> None:
            device, rng = replicas[i], random.Random(i)
            try:
                sync_once(device, client=clients[i][1])
                for round_ in range(rounds):
                    for n in range(writes):
                        if rng.random() < 0.3:
                            device.edit("account", shared, {"phone": f"0113 {i}{round_:02d}{n:03d}"})
                        else:
                            device.create("account", {"name": f"r{i} round {round_} #{n}", "city": "York"})
                            created[i] += 1
                    made[i].update(op_id for op_id, _ in device.pending_ops(limit=100_000))
                    start.wait(timeout=60)  # everyone pushes at once
                    sync_once(device, client=clients[i][(i + round_) % 2])
            except BaseException as exc:  # reported below, with the thread's name
                errors.append(exc)
                start.abort()

        threads = [threading.Thread(target=field_rep, args=(i,), name=f"rep-{i}") for i in range(devices)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        assert not errors, errors
        for i, device in enumerate(replicas):  # quiescence: nothing new is left anywhere
            sync_once(device, client=clients[i][i % 2])
        expected = set().union(*made)
        logged = _logged(dsn)
        exports = {json.dumps(device.export(), sort_keys=True) for device in replicas}
        for row in clients:
            for client in row:
                client.close()
    assert len(logged) == len(set(logged)), "no op is logged twice"
    assert set(logged) == expected, (f"{len(expected - set(logged))} ops lost, "
                                     f"{len(set(logged) - expected)} unknown ops logged")
    state = json.loads(server_export(dsn))
    assert exports == {json.dumps(state, sort_keys=True)}, \
        "a replica missed ops (a pull skipped a late commit) or diverged"
    names = [a["name"] for a in state["account"]]
    assert len(names) == len(set(names)) == 1 + sum(created), "every account once, none lost"


def _logged(db: str) -> list[str]:
    with psycopg.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT op_id FROM ops WHERE org = %s", (ORG,))]


# -- the conformance suite with two server processes on one database ------------------------------

@pytest.mark.slow
def test_the_reference_on_two_postgres_server_processes_is_certified_level_3(tmp_path):
    """`crm certify` against fixtures/sut/reference-postgres.toml (about 100 s)."""
    admin_dsn = _admin_dsn()
    prefix = f"crm_sut_{uuid.uuid4().hex[:8]}_"  # this run's databases only: others may share the server

    def sut_databases() -> set[str]:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            return {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                                               (prefix,))}

    root = Path(__file__).resolve().parent.parent
    report = tmp_path / "report"
    try:
        proc = subprocess.run([*CRM, "certify", "--sut", str(root / "fixtures" / "sut" / "reference-postgres.toml"),
                               "--report", str(report), "--json", "--seed", "7", "--chaos-runs", "1"],
                              capture_output=True, text=True, cwd=root, timeout=CERTIFY_TIMEOUT,
                              env={**os.environ, "CRM_TEST_PG_DSN": admin_dsn, "CRM_SUT_DB_PREFIX": prefix})
        cert = json.loads((report / "certificate.json").read_text()) if (report / "certificate.json").exists() else {}
        assert cert, f"no certificate written: {proc.stderr[-2000:]}"
        assert cert["level"] == 3, f"level {cert['level']}: {cert['reasons']}\n{proc.stderr[-3000:]}"
        assert all(s["passed"] for s in cert["scenarios"]) and len(cert["scenarios"]) >= 38
        assert len(sut_databases()) >= 19, "every session ran on a PostgreSQL database of its own"
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            for name in sut_databases():
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_territories_on_postgresql(tmp_path, dsn):
    """Scoped pulls, a move (snapshot to the gainer, drop from the loser, the loser's offline work
    kept and accepted), a reassignment, and the admin commands, on PostgreSQL."""
    from crm import canonical_json
    from tests.test_territories import Rig

    rig = Rig(tmp_path, dsn)
    try:
        n, s = rig.device("n"), rig.device("s")
        admin("assign", "--org", ORG, "--rep", "n", "--territory", "north", "--json", db=dsn)
        admin("assign", "--org", ORG, "--rep", "s", "--territory", "south", "--json", db=dsn)
        rig.sync(n, s)
        acc = n.create("account", {"name": "Shop"})["id"]
        visit = n.create("visit", {"account": acc, "outcome": "met"})["id"]
        rig.sync(n, s)
        assert n.export()["account"][0]["territory"] == "north" and s.export()["account"] == []
        n.edit("account", acc, {"city": "Leeds"})  # offline, while it moves south
        admin("edit", "account", acc, "--set", "territory=south", "--org", ORG, "--json", db=dsn)
        rig.sync(n, s)
        assert n.export()["account"] == [] and [v["id"] for v in s.export()["visit"]] == [visit]
        assert s.get("account", acc)["city"] == "Leeds"
        admin("assign", "--org", ORG, "--rep", "n", "--territory", "south", "--json", db=dsn)
        rig.sync(n)
        assert [a["id"] for a in n.export()["account"]] == [acc]
        for dev, rep in ((n, "n"), (s, "s")):
            assert canonical_json(dev.export()) == crm("server", "export", "--db", dsn, "--org", ORG,
                                                       "--rep", rep).stdout
        listed = admin("territories", "--org", ORG, "--json", db=dsn)
        assert listed == [{"territory": "north", "reps": ["n"], "accounts": 0},
                          {"territory": "south", "reps": ["n", "s"], "accounts": 1}]
    finally:
        rig.close()


@pytest.mark.parametrize("early", ["visit", "contact-edit", "line", "chain"])  # tests/test_territories.py EARLY
def test_ops_before_their_record_on_postgresql(tmp_path, dsn, early):
    from tests.test_territories import Rig, ops_before_their_record

    rig = Rig(tmp_path, dsn)
    try:
        ops_before_their_record(rig, early)
    finally:
        rig.close()


@pytest.mark.parametrize("attack", ["account-created-again", "visit-resolved"])  # test_territories.py FIXED_FIELD_ATTACKS
def test_no_rep_can_carry_another_territorys_record_on_postgresql(tmp_path, dsn, attack):
    from tests.test_territories import Rig, carry_another_territorys_record

    rig = Rig(tmp_path, dsn)
    try:
        carry_another_territorys_record(rig, attack, group=True)
    finally:
        rig.close()


def test_territories_big_move_paged_on_postgresql(tmp_path, dsn):
    """A move many times the pull byte cap, on PostgreSQL: every answer within the cap (sizes
    read before bodies, escapes counted alike), an interrupted snapshot resumed, and the gainer
    holding what `crm server export --rep` prints."""
    from crm import canonical_json
    from crm.errors import ServerUnreachableError
    from tests.test_territory_paging import CAP, VISITS, PagedRig, big_account, north_south

    rig = PagedRig(tmp_path, dsn)
    try:
        n, s = north_south(rig)
        acc = big_account(rig, n)
        rig.sync(s)
        rig.move(acc, "south")
        rig.transport.fail_after = 3
        with pytest.raises(ServerUnreachableError):
            rig.sync(s)
        assert 0 < len(s.export()["visit"]) < VISITS
        rig.transport.fail_after = None
        rig.sync(s, n)
        answers = [answer for _, answer in rig.transport.pulls]
        assert len(answers) > 6 and max(len(answer.content) for answer in answers) <= CAP
        for dev, rep in ((n, "n"), (s, "s")):
            assert canonical_json(dev.export()) == crm("server", "export", "--db", dsn, "--org", ORG,
                                                       "--rep", rep).stdout
    finally:
        rig.close()


def test_a_group_of_pushes_is_one_transaction_on_postgresql(dsn):
    """ServerStore.push_group on PostgreSQL: the pushes share one transaction under the
    organisation's lock, a broken continuity applies nothing of its push, a shared op is applied
    once and acknowledged to both pushes that sent it."""
    from crm.server import ServerStore
    from crm.server.store import Continuity, ContinuityBroken, Identity
    from tests.test_server_push import _wire_create

    store = ServerStore.open(dsn)
    try:
        store.add_token(ORG, "rep")
        who = Identity(ORG, "rep", "device")
        shared = _wire_create(0, "dev-a")
        first, broken, last = store.push_group([
            (who, [shared, _wire_create(1, "dev-a")], Continuity(device="dev-a", known="")),
            (who, [_wire_create(0, "dev-b")], Continuity(device="dev-b", known="op-of-another-copy")),
            (who, [shared, _wire_create(0, "dev-d")], Continuity(device="dev-d")),
        ])
        assert first.acked == ["g-dev-a-0", "g-dev-a-1"] and last.acked == ["g-dev-a-0", "g-dev-d-0"]
        assert isinstance(broken, ContinuityBroken) and broken.reason == "device_reused"
        assert first.witness == last.witness and last.latest == "g-dev-d-0"
        assert last.witness[1] == "g-dev-d-0", "each answer: the log's last entry after the group"
        assert store.stats(ORG) == {"ops": 3, "records": 3}
    finally:
        store.close()


def test_a_group_applied_as_one_batch_on_postgresql_gives_what_its_pushes_give_one_by_one(dsn, monkeypatch):
    """tests/test_server_push.py's check of push_group against pushes one by one, on PostgreSQL
    (each example in two organisations of its own)."""
    import uuid

    from tests.test_server_push import check_group_against_alone

    check_group_against_alone(lambda name: (dsn, f"group-{name}-{uuid.uuid4().hex[:8]}"), monkeypatch)
