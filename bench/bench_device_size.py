"""A device holding 1,000,000 records writes as fast as an empty one, and its sync costs what
its changes cost, not what its database holds.

Two devices side by side: one empty, one with 1,000,000 accounts, each with a real
`crm server serve` process (SQLite) of its own. The big one is built through the device's write
path (Device.write, 20,000 records per transaction) and then really synced: its server
holds the 1,000,000 records too. Both are real crm.Device stores (WAL, synchronous=FULL).

* Single write latency: the median of 300 ``Device.create("account", ...)`` calls and of 300
  ``Device.edit`` calls of a random existing account, alternating between the two devices.
* Sync cost: each device syncs (crm.sync.sync_once: push, then pull) with its server, with 0, 10
  and 1,000 new changes queued; median of 15 syncs (5 for 1,000).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _util import crm_command, write_result  # noqa: E402

from crm import Change, Device  # noqa: E402
from crm.domain import validate_create  # noqa: E402
from crm.ids import new_id  # noqa: E402
from crm.server import ServerStore  # noqa: E402
from crm.sync import SyncClient, sync_once  # noqa: E402
from harness.ports import free_port  # noqa: E402

CITIES = ["Leeds", "York", "Hull", "Ripon", "Selby", "Whitby", "Skipton", "Harrogate"]
BATCH = 20_000


def account(n: int) -> dict:
    return validate_create("account", {"name": f"Shop {n}", "city": CITIES[n % 8], "phone": f"0113 {n:07d}",
                                       "email": f"buyer{n}@shop.example", "owner": "rep"})


def fill(device: Device, records: int) -> list[str]:
    """``records`` accounts through the write path, queued in the outbox."""
    ids = []
    for start in range(0, records, BATCH):
        changes = [Change("account", new_id(), account(n), {}, "create") for n in range(start, min(records, start + BATCH))]
        device.write(changes)
        ids += [c.record_id for c in changes]
    return ids


class Server:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.token = ServerStore.open(data).add_token("acme", "rep")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([*crm_command(), "server", "serve", "--data", str(data), "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/v1/health", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)


def write_latency(devices: dict[str, Device], ids: dict[str, list[str]], writes: int) -> dict:
    samples: dict[str, dict[str, list[float]]] = {name: {"create": [], "edit": []} for name in devices}
    rng = random.Random(7)
    for n in range(writes):
        for name, device in devices.items():  # alternate, so machine noise hits both alike
            t0 = time.perf_counter()
            rid = device.create("account", {"name": f"New {n}", "city": "Leeds"})["id"]
            samples[name]["create"].append(time.perf_counter() - t0)
            target = rng.choice(ids[name]) if ids[name] else rid
            t0 = time.perf_counter()
            device.edit("account", target, {"city": f"City {n}"})
            samples[name]["edit"].append(time.perf_counter() - t0)
    return {name: {kind: round(statistics.median(s) * 1000, 3) for kind, s in kinds.items()}
            for name, kinds in samples.items()}


def sync_cost(devices: dict[str, Device], clients: dict[str, SyncClient]) -> dict:
    out: dict[str, dict[str, float]] = {name: {} for name in devices}
    for changes, repeats in ((0, 15), (10, 15), (1000, 5)):
        samples: dict[str, list[float]] = {name: [] for name in devices}
        for r in range(repeats):
            for name, device in devices.items():
                for n in range(changes):
                    device.create("account", {"name": f"Change {r}-{n}", "city": "York"})
                t0 = time.perf_counter()
                result = sync_once(device, client=clients[name])
                samples[name].append(time.perf_counter() - t0)
                assert result.pushed == changes and device.outbox()["pending"] == 0
        for name in devices:
            out[name][str(changes)] = round(statistics.median(samples[name]) * 1000, 1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--workdir", help="keep the stores here (default: a temporary directory)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        empty = Device.init(work / "empty", rep="rep")
        big = Device.init(work / "big", rep="rep")
        t0 = time.perf_counter()
        ids = {"empty": [], "big": fill(big, args.records)}
        build_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in (work / "big").glob("crm.sqlite3*")) / 1e6
        print(f"built {args.records:,} records in {build_s:.0f} s ({size_mb:,.0f} MB)", flush=True)
        devices = {"empty": empty, "big": big}
        servers = {name: Server(work / f"server-{name}") for name in devices}
        try:
            clients = {name: SyncClient(base_url=s.url, token=s.token, timeout=300) for name, s in servers.items()}
            t0 = time.perf_counter()
            first = sync_once(big, client=clients["big"])
            first_sync_s = time.perf_counter() - t0
            assert first.pushed == args.records and big.outbox()["pending"] == 0
            print(f"first sync pushed {first.pushed:,} ops in {first_sync_s:.0f} s", flush=True)
            latency = write_latency(devices, ids, args.writes)
            print(f"write latency (median ms): {latency}", flush=True)
            for name, device in devices.items():  # the writes above reach the server first
                sync_once(device, client=clients[name])
            syncs = sync_cost(devices, clients)
            print(f"sync time (median ms) by new changes: {syncs}", flush=True)
        finally:
            for s in servers.values():
                s.close()
    ratio = {kind: round(latency["big"][kind] / latency["empty"][kind], 2) for kind in ("create", "edit")}
    result = {
        "what": " ".join(__doc__.split("\n\n")[0].split()),
        "records": args.records, "build_s": round(build_s, 1), "store_mb": round(size_mb),
        "first_sync_s": round(first_sync_s, 1),
        "write_median_ms": latency, "write_ratio_big_over_empty": ratio,
        "sync_median_ms": syncs,
        "sync_ratio_big_over_empty": {k: round(syncs["big"][k] / syncs["empty"][k], 2) for k in syncs["big"]},
    }
    path = write_result("device_size", result)
    print(f"{'':<22}{'empty':>10}{f'{args.records:,} records':>18}{'ratio':>8}")
    for kind in ("create", "edit"):
        print(f"{'write: ' + kind:<22}{latency['empty'][kind]:>8.2f}ms{latency['big'][kind]:>16.2f}ms{ratio[kind]:>8.2f}")
    for k in syncs["big"]:
        print(f"{'sync, ' + k + ' changes':<22}{syncs['empty'][k]:>8.1f}ms{syncs['big'][k]:>16.1f}ms"
              f"{result['sync_ratio_big_over_empty'][k]:>8.2f}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
