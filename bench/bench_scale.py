"""Many devices at once: 200 devices, each with 100 queued ops, sync concurrently against one real
`crm server serve` process, on SQLite (--data) and on PostgreSQL (--db); and, on PostgreSQL, two
server processes on the same database (device i talks to process i mod 2), the scale-out that a
stateless server allows.

The devices are simulated in this process, one thread each. They push with the real code: a
crm.Device (its own SQLite store, WAL, synchronous=FULL) and push_outbox of crm/sync.py over HTTP
on loopback. Each device's queue is 100 ops: 60 account creates, 20 visits and 10 notes (written in
one transaction through Device.write, the write path) and 10 edits of its accounts
(Device.edit, one transaction each). All devices are released at once; each then syncs as
`crm sync` does: push the outbox, then pull every page from its cursor. The pull pages are fetched
and parsed by the real client (SyncClient.pull) but not merged into the device's store: merging is
the device's own CPU work (bench_sync.py: about 35,000 ops/s), which in a fleet runs on 200 phones,
while here it would put 200 x 20,000 merges on the server's two cores and measure those instead.

Figures: throughput (ops pushed per second of wall time from release to the last device done),
the p50/p99 time of a device's push and of its whole sync (push + pull), and the ops the pulls
delivered. Then the run is checked: the server's op log holds exactly devices x 100 ops, each
once; the server export holds exactly the records made, each once; every device's outbox was
acknowledged; and a sample of devices merge everything with the real sync code (pull_changes)
and export the same bytes as the server.

With ``--territories N`` every organisation is split into N territories (rep i holds territory
i mod N, and its accounts are created in it): a device pulls only its territory's ops and the
sample compares with ``crm server export --rep`` (docs/sync-protocol.md, "Territories").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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

from crm import Change, Device  # noqa: E402
from crm.domain import validate_create  # noqa: E402
from crm.ids import new_id  # noqa: E402
from crm.server import ServerStore  # noqa: E402
from crm.sync import PULL_PAGE, SyncClient, pull_changes, push_outbox  # noqa: E402
from harness.ports import free_port  # noqa: E402

DEFAULT_PG = "postgresql://postgres@/crm_test?host=/tmp/crm-postgres"  # scripts/ensure-postgres.sh
ORG = "scale"
CITIES = ["Leeds", "York", "Hull", "Ripon", "Selby", "Whitby", "Skipton", "Harrogate"]


def queue_ops(device: Device, i: int, ops: int, territory: str | None = None) -> list[str]:
    """``ops`` queued ops on ``device`` (60% accounts, 20% visits, 10% notes, 10% edits), its
    accounts in ``territory``; returns the ids of the records it created."""
    accounts = ops * 6 // 10
    visits, notes = ops * 2 // 10, ops // 10
    edits = ops - accounts - visits - notes
    changes, account_ids = [], []
    for n in range(accounts):
        rid = new_id()
        account_ids.append(rid)
        changes.append(Change("account", rid, validate_create("account", {
            "name": f"Shop {i}-{n}", "city": CITIES[n % 8], "phone": f"0113 {i:03d} {n:04d}",
            "owner": f"rep-{i}", **({"territory": territory} if territory else {})}), {}, "create"))
    for n in range(visits):
        changes.append(Change("visit", new_id(), validate_create("visit", {
            "account": account_ids[n % accounts], "outcome": f"visit {n}", "rep": f"rep-{i}"}), {}, "create"))
    for n in range(notes):
        changes.append(Change("note", new_id(), validate_create("note", {
            "account": account_ids[n % accounts], "text": f"note {n} of rep {i}", "rep": f"rep-{i}"}), {}, "create"))
    device.write(changes)
    for n in range(edits):
        device.edit("account", account_ids[n % accounts], {"city": f"Edited {n}"})
    return [c.record_id for c in changes]


class Server:
    """``processes`` `crm server serve` processes on SQLite (a data directory; one process) or on
    one fresh PostgreSQL database (device i talks to process i mod N)."""

    def __init__(self, engine: str, workdir: Path, pg_admin: str, processes: int = 1, workers: int = 1) -> None:
        self.engine, self.pg_admin, self.workers = engine, pg_admin, workers
        self.dbname = None
        if engine == "sqlite":
            self.target = str(workdir / "server")
        else:
            import psycopg

            self.dbname = f"crm_bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(pg_admin, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {self.dbname}")
            self.target = urlunsplit(urlsplit(pg_admin)._replace(path="/" + self.dbname))
        ServerStore.open(self.target).close()  # the schema, before processes race to make it
        flag = "--data" if engine == "sqlite" else "--db"
        ports = [free_port() for _ in range(processes)]
        self.urls = [f"http://127.0.0.1:{port}" for port in ports]
        self.procs = [subprocess.Popen([*crm_command(), "server", "serve", flag, self.target, "--port", str(port),
                                        # every simulated device is on 127.0.0.1: no per-address cap
                                        "--max-connections-per-address", "0", "--workers", str(workers)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                      for port in ports]
        deadline = time.monotonic() + 30
        for url in self.urls:
            while True:
                try:
                    if httpx.get(url + "/v1/health", timeout=0.5).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {engine} server did not start")

    def cpu_s(self) -> tuple[float, float]:
        """CPU seconds (user, system) the server processes, and their workers, have used so far, from
        /proc (a worker replaced during the run would be missed: the bench checks none was)."""
        user = system = 0
        for proc in self.procs:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as children:
                pids = [proc.pid, *map(int, children.read().split())]
            for pid in pids:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rpartition(")")[2].split()
                user, system = user + int(fields[11]), system + int(fields[12])
        return user / os.sysconf("SC_CLK_TCK"), system / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(15)
        if self.dbname:
            import psycopg

            with psycopg.connect(self.pg_admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {self.dbname} WITH (FORCE)")


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def fetch_new(client: SyncClient, device_id: str, cursor: int, epoch: int = 0) -> tuple[int, int]:
    """The pull half of a sync over the wire: every page from ``cursor`` fetched and parsed by the
    real client, not merged into the device's store. Returns (ops received, new cursor)."""
    received = 0
    while True:
        answer = client.pull(cursor=cursor, limit=PULL_PAGE, device_id=device_id, scope=epoch)
        if answer.get("reset"):
            raise RuntimeError("the rep's territories changed during the benchmark")
        received += len(answer["ops"])
        cursor = int(answer["cursor"])
        if not answer.get("more"):
            return received, cursor


def run(spec: str, devices: int, ops: int, orgs: int, workdir: Path, pg_admin: str, sample: int,
        territories: int = 0, workers: int = 1) -> dict:
    engine, _, processes = spec.partition(":")
    server = Server(engine, workdir, pg_admin, int(processes or 1), workers)
    org_of = [f"{ORG}-{i % orgs}" for i in range(devices)]
    try:
        store = ServerStore.open(server.target)
        tokens = [store.add_token(org_of[i], f"rep-{i}") for i in range(devices)]
        territory = [f"t{i % territories}" if territories else None for i in range(devices)]
        epochs = [store.assign(org_of[i], f"rep-{i}", territory[i])["epoch"] if territory[i] else 0
                  for i in range(devices)]
        store.close()
        started = time.perf_counter()
        replicas = [Device.init(workdir / f"{engine}-{len(server.urls)}-{orgs}-{territories}" / f"d{i}", rep=f"rep-{i}")
                    for i in range(devices)]
        made = [queue_ops(d, i, ops, territory[i]) for i, d in enumerate(replicas)]
        setup_s = time.perf_counter() - started
        # A connection per request, as a device that syncs now and then has: a kept-alive one can
        # be closed by the server (5 s idle) while a starved client thread is about to reuse it.
        clients = [SyncClient(base_url=server.urls[i % len(server.urls)], token=t, timeout=300, transport=httpx.HTTPTransport(
            limits=httpx.Limits(max_keepalive_connections=0))) for i, t in enumerate(tokens)]
        push_s, sync_s, received, errors = [0.0] * devices, [0.0] * devices, [0] * devices, []
        done_at, pushed_at = [0.0] * devices, [0.0] * devices
        gate = threading.Barrier(devices + 1)

        def device_sync(i: int) -> None:
            try:
                gate.wait()
                t0 = time.perf_counter()
                pushed, _ = push_outbox(replicas[i], clients[i])
                pushed_at[i] = t1 = time.perf_counter()
                received[i], _ = fetch_new(clients[i], replicas[i].device_id, 0, epochs[i])
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
        cpu_before = (server.cpu_s(), os.times())
        for t in threads:
            t.join()
        server_cpu = [after - before for after, before in zip(server.cpu_s(), cpu_before[0], strict=True)]
        devices_cpu = [after - before for after, before in zip(os.times()[:2], cpu_before[1][:2], strict=True)]
        if errors:
            raise RuntimeError(f"{len(errors)} devices failed: {errors[:3]}")
        wall = max(done_at) - release

        verified = {"server_ops": 0, "server_records": 0, "lost": 0, "duplicates": 0, "replicas_converged": 0}
        for org in sorted(set(org_of)):
            members = [i for i in range(devices) if org_of[i] == org]
            counts = verify(server, org, [replicas[i] for i in members], [clients[i] for i in members],
                            [made[i] for i in members], len(members) * ops, max(1, sample // orgs),
                            reps=[f"rep-{i}" for i in members] if territories else None)
            verified = {key: verified[key] + counts[key] for key in verified}
        for c in clients:
            c.close()
        return {"engine": engine, "server_processes": len(server.urls), "workers": workers, "devices": devices, "orgs": orgs,
                "territories": territories, "ops_per_device": ops, "ops": devices * ops,
                "wall_s": round(wall, 2), "ops_per_s": round(devices * ops / wall),
                "last_push_done_s": round(max(pushed_at) - release, 2),
                "push_p50_ms": round(_pct(push_s, 0.5)), "push_p99_ms": round(_pct(push_s, 0.99)),
                "sync_p50_ms": round(_pct(sync_s, 0.5)), "sync_p99_ms": round(_pct(sync_s, 0.99)),
                "sync_mean_ms": round(statistics.mean(sync_s) * 1000),
                # CPU over the run (release to the last device done): where the wall time went
                "server_cpu_user_s": round(server_cpu[0], 2), "server_cpu_system_s": round(server_cpu[1], 2),
                "devices_cpu_user_s": round(devices_cpu[0], 2), "devices_cpu_system_s": round(devices_cpu[1], 2),
                "ops_delivered_by_pulls": sum(received), "setup_s": round(setup_s, 1), **verified}
    finally:
        server.close()


def verify(server: Server, org: str, replicas: list[Device], clients: list[SyncClient], made: list[list[str]],
           expected_ops: int, sample: int, reps: list[str] | None = None) -> dict:
    """Exact counts: every op once in the log, every record once in the export, every device's
    outbox acknowledged; and a sample of devices, merging everything they pull with the real
    sync code, export the same bytes as the server (with ``reps``: as the server's export for
    that rep)."""
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
    assert all(d.outbox()["pending"] == 0 for d in replicas), "an op was left unacknowledged"
    from crm import canonical_json

    chosen = list(range(0, len(replicas), max(1, len(replicas) // sample)))[:sample]
    for i in chosen:
        pull_changes(replicas[i], clients[i])
        expected = exported if reps is None else subprocess.run(
            [*crm_command(), "server", "export", flag, server.target, "--org", org, "--rep", reps[i]],
            capture_output=True, text=True, check=True).stdout
        assert canonical_json(replicas[i].export()) == expected, f"device {i} diverged from the server"
    return {"server_ops": stats["ops"], "server_records": stats["records"], "lost": 0, "duplicates": 0,
            "replicas_converged": len(chosen)}


def _pg_answers(dsn: str) -> bool:
    try:
        import psycopg

        psycopg.connect(dsn, connect_timeout=5).close()
    except Exception:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--ops", type=int, default=100, help="queued ops per device")
    parser.add_argument("--orgs", type=int, default=1, help="organisations the devices are spread over")
    parser.add_argument("--territories", type=int, default=0,
                        help="territories per organisation (rep i holds territory i mod N; 0: none)")
    parser.add_argument("--engines", default="sqlite,postgresql,postgresql:2",
                        help="engines to run, each ENGINE[:PROCESSES] (several processes: PostgreSQL only)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes of each server process (crm server serve --workers)")
    parser.add_argument("--sample", type=int, default=4, help="devices that merge everything and compare exports")
    parser.add_argument("--pg", default=os.environ.get("CRM_TEST_PG_DSN") or DEFAULT_PG,
                        help="PostgreSQL server to create the benchmark's database on")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up: stop the server, drop its database
    engines = args.engines.split(",")
    if any(e.startswith("postgresql") for e in engines) and not _pg_answers(args.pg):
        print(f"no PostgreSQL at {args.pg} (scripts/ensure-postgres.sh starts one): SQLite only", file=sys.stderr)
        engines = [e for e in engines if not e.startswith("postgresql")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            row = run(engine, args.devices, args.ops, args.orgs, Path(tmp), args.pg, args.sample, args.territories,
                      args.workers)
            rows.append(row)
            print(json.dumps(row), flush=True)
    name = "scale" if args.orgs == 1 else f"scale_{args.orgs}orgs"
    if args.territories:
        name += f"_{args.territories}territories"
    path = write_result(name, {"what": " ".join(__doc__.split("\n\n")[1].split()), "runs": rows})
    print(f"{'engine':<14}{'orgs':>5}{'devices':>8}{'ops':>8}{'wall s':>8}{'ops/s':>8}{'push p50':>10}{'push p99':>10}"
          f"{'sync p50':>10}{'sync p99':>10}  lost/dup")
    for r in rows:
        label = r["engine"] + (f" x{r['server_processes']}" if r["server_processes"] > 1 else "") \
            + (f" w{r['workers']}" if r["workers"] > 1 else "")
        print(f"{label:<14}{r['orgs']:>5}{r['devices']:>8}{r['ops']:>8}{r['wall_s']:>8}{r['ops_per_s']:>8}"
              f"{r['push_p50_ms']:>8}ms{r['push_p99_ms']:>8}ms{r['sync_p50_ms']:>8}ms{r['sync_p99_ms']:>8}ms"
              f"  {r['lost']}/{r['duplicates']}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
