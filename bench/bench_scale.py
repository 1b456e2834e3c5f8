"""Many devices at once: 200 devices, each with 100 queued ops, sync concurrently against one real
`crm server serve` process, on SQLite (--data) and on PostgreSQL (--db).

The devices are simulated in this process, one thread each, with the real code: a crm.Device
(its own SQLite store, WAL, synchronous=FULL) and the sync client of crm/sync.py over HTTP on
loopback. Each device's queue is 100 ops: 60 account creates, 20 visits and 10 notes (written in
one transaction through Device._write_changes, the write path) and 10 edits of its accounts
(Device.edit, one transaction each). All devices are released at once; each then syncs exactly as
`crm sync` does: push the outbox, then pull everything new from its cursor.

Figures: throughput (ops pushed per second of wall time from release to the last device done)
and the p50/p99 time of one device's sync (push, and push + pull). Then every device pulls to
quiescence and the run is checked: the server's op log holds exactly devices x 100 ops, each
once; the server export holds exactly the records made, each once; every device holds the same
number of records, and a sample of devices export the same bytes as the server.

The two cores of the CI machine run the server and all 200 clients: the client side (200 SQLite
stores, pulling and merging up to 20,000 ops each) takes a large share of the CPU, so these are
figures of the whole system on one machine, not of the server alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _util import crm_command, write_result  # noqa: E402

from crm import Device  # noqa: E402
from crm.device import Change, new_id  # noqa: E402
from crm.domain import validate_create  # noqa: E402
from crm.server import ServerStore  # noqa: E402
from crm.sync import SyncClient, pull_changes, push_outbox  # noqa: E402

DEFAULT_PG = "postgresql://postgres@/crm_test?host=/tmp/crm-postgres"  # scripts/ensure-postgres.sh
ORG = "scale"
CITIES = ["Leeds", "York", "Hull", "Ripon", "Selby", "Whitby", "Skipton", "Harrogate"]


def queue_ops(device: Device, i: int, ops: int) -> list[str]:
    """``ops`` queued ops on ``device`` (60% accounts, 20% visits, 10% notes, 10% edits); returns
    the ids of the records it created."""
    accounts = ops * 6 // 10
    visits, notes = ops * 2 // 10, ops // 10
    edits = ops - accounts - visits - notes
    changes, account_ids = [], []
    for n in range(accounts):
        rid = new_id()
        account_ids.append(rid)
        changes.append(Change("account", rid, validate_create("account", {
            "name": f"Shop {i}-{n}", "city": CITIES[n % 8], "phone": f"0113 {i:03d} {n:04d}",
            "owner": f"rep-{i}"}), {}, "create"))
    for n in range(visits):
        changes.append(Change("visit", new_id(), validate_create("visit", {
            "account": account_ids[n % accounts], "outcome": f"visit {n}", "rep": f"rep-{i}"}), {}, "create"))
    for n in range(notes):
        changes.append(Change("note", new_id(), validate_create("note", {
            "account": account_ids[n % accounts], "text": f"note {n} of rep {i}", "rep": f"rep-{i}"}), {}, "create"))
    with device.store.write() as conn:
        device._write_changes(conn, changes)
    for n in range(edits):
        device.edit("account", account_ids[n % accounts], {"city": f"Edited {n}"})
    return [c.record_id for c in changes]


class Server:
    """A `crm server serve` process on SQLite (a data directory) or PostgreSQL (a fresh database)."""

    def __init__(self, engine: str, workdir: Path, pg_admin: str) -> None:
        self.engine, self.pg_admin = engine, pg_admin
        self.dbname = None
        if engine == "sqlite":
            self.target = str(workdir / "server")
        else:
            import psycopg

            self.dbname = f"crm_bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(pg_admin, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {self.dbname}")
            self.target = urlunsplit(urlsplit(pg_admin)._replace(path="/" + self.dbname))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        flag = "--data" if engine == "sqlite" else "--db"
        self.proc = subprocess.Popen([*crm_command(), "server", "serve", flag, self.target, "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/v1/health", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"the {engine} server did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        if self.dbname:
            import psycopg

            with psycopg.connect(self.pg_admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {self.dbname} WITH (FORCE)")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def run(engine: str, devices: int, ops: int, orgs: int, workdir: Path, pg_admin: str) -> dict:
    server = Server(engine, workdir, pg_admin)
    org_of = [f"{ORG}-{i % orgs}" for i in range(devices)]
    try:
        store = ServerStore.open(server.target)
        tokens = [store.add_token(org_of[i], f"rep-{i}") for i in range(devices)]
        store.close()
        started = time.perf_counter()
        replicas = [Device.init(workdir / f"{engine}-{orgs}" / f"d{i}", rep=f"rep-{i}") for i in range(devices)]
        made = [queue_ops(d, i, ops) for i, d in enumerate(replicas)]
        setup_s = time.perf_counter() - started
        # A connection per request, as a device that syncs now and then has: a kept-alive one can
        # be closed by the server (5 s idle) while a starved client thread is about to reuse it.
        clients = [SyncClient(base_url=server.url, token=t, timeout=300, transport=httpx.HTTPTransport(
            limits=httpx.Limits(max_keepalive_connections=0))) for t in tokens]
        push_s, sync_s, errors = [0.0] * devices, [0.0] * devices, []
        done_at = [0.0] * devices
        gate = threading.Barrier(devices + 1)

        def device_sync(i: int) -> None:
            try:
                gate.wait()
                t0 = time.perf_counter()
                pushed, _ = push_outbox(replicas[i], clients[i])
                t1 = time.perf_counter()
                pull_changes(replicas[i], clients[i])
                done_at[i] = t2 = time.perf_counter()
                push_s[i], sync_s[i] = t1 - t0, t2 - t0
                assert pushed == ops, f"device {i} pushed {pushed} of {ops}"
            except BaseException as exc:
                errors.append(f"device {i}: {exc!r}")

        threads = [threading.Thread(target=device_sync, args=(i,)) for i in range(devices)]
        for t in threads:
            t.start()
        gate.wait()
        release = time.perf_counter()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"{len(errors)} devices failed: {errors[:3]}")
        wall = max(done_at) - release

        # Quiescence: every device pulls what was pushed after its own pull.
        t0 = time.perf_counter()
        for i, device in enumerate(replicas):
            pull_changes(device, clients[i])
        catch_up_s = time.perf_counter() - t0
        verified = {"server_ops": 0, "server_records": 0, "lost": 0, "duplicates": 0, "devices_checked_exact_export": 0}
        for org in sorted(set(org_of)):
            members = [i for i in range(devices) if org_of[i] == org]
            counts = verify(server, org, [replicas[i] for i in members], [made[i] for i in members], len(members) * ops)
            verified = {key: verified[key] + counts[key] for key in verified}
        for c in clients:
            c.close()
        return {"engine": engine, "devices": devices, "orgs": orgs, "ops_per_device": ops, "ops": devices * ops,
                "wall_s": round(wall, 2), "ops_per_s": round(devices * ops / wall),
                "push_p50_ms": round(_pct(push_s, 0.5)), "push_p99_ms": round(_pct(push_s, 0.99)),
                "sync_p50_ms": round(_pct(sync_s, 0.5)), "sync_p99_ms": round(_pct(sync_s, 0.99)),
                "sync_mean_ms": round(statistics.mean(sync_s) * 1000),
                "setup_s": round(setup_s, 1), "catch_up_s": round(catch_up_s, 1), **verified}
    finally:
        server.close()


def verify(server: Server, org: str, replicas: list[Device], made: list[list[str]], expected_ops: int) -> dict:
    """Exact counts: every op once in the log, every record once in the export and on every device."""
    flag = "--data" if server.engine == "sqlite" else "--db"
    stats = json.loads(subprocess.run([*crm_command(), "server", "stats", flag, server.target, "--org", org,
                                       "--json"], capture_output=True, text=True, check=True).stdout)
    exported = subprocess.run([*crm_command(), "server", "export", flag, server.target, "--org", org],
                              capture_output=True, text=True, check=True).stdout
    state = json.loads(exported)
    ids = [r["id"] for entity in ("account", "visit", "note") for r in state[entity]]
    expected_ids = {rid for ids_ in made for rid in ids_}
    assert stats["ops"] == expected_ops, f"server logged {stats['ops']} ops, expected {expected_ops}"
    assert len(ids) == len(set(ids)) == len(expected_ids) == stats["records"], "duplicate or lost records"
    assert set(ids) == expected_ids, "the server's records are not the ones the devices made"
    counts = set()
    for device in replicas:
        with device.store.read() as conn:
            counts.add(conn.execute("SELECT count(*) FROM records").fetchone()[0])
    assert counts == {len(expected_ids)}, f"devices hold {sorted(counts)} records, expected {len(expected_ids)}"
    from crm import canonical_json

    sample = replicas[:: max(1, len(replicas) // 3)][:3]
    assert all(canonical_json(d.export()) == exported for d in sample), "a device diverged from the server"
    return {"server_ops": stats["ops"], "server_records": stats["records"], "lost": 0, "duplicates": 0,
            "devices_checked_exact_export": len(sample)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--ops", type=int, default=100, help="queued ops per device")
    parser.add_argument("--orgs", type=int, default=1, help="organisations the devices are spread over")
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--pg", default=os.environ.get("CRM_TEST_PG_DSN") or DEFAULT_PG,
                        help="PostgreSQL server to create the benchmark's database on")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines.split(","):
            row = run(engine, args.devices, args.ops, args.orgs, Path(tmp), args.pg)
            rows.append(row)
            print(json.dumps(row), flush=True)
    name = "scale" if args.orgs == 1 else f"scale_{args.orgs}orgs"
    path = write_result(name, {"what": " ".join(__doc__.split("\n\n")[1].split()), "runs": rows})
    print(f"{'engine':<11}{'orgs':>5}{'devices':>8}{'ops':>8}{'wall s':>8}{'ops/s':>8}{'push p50':>10}{'push p99':>10}"
          f"{'sync p50':>10}{'sync p99':>10}  lost/dup")
    for r in rows:
        print(f"{r['engine']:<11}{r['orgs']:>5}{r['devices']:>8}{r['ops']:>8}{r['wall_s']:>8}{r['ops_per_s']:>8}"
              f"{r['push_p50_ms']:>8}ms{r['push_p99_ms']:>8}ms{r['sync_p50_ms']:>8}ms{r['sync_p99_ms']:>8}ms"
              f"  {r['lost']}/{r['duplicates']}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
