"""Sync throughput against a real `crm server serve` process over loopback, side by side with
PouchDB replication (../shared/peers/pouchdb/run.sh) measured in the same run.

Figures: push ops/s for 10k and 100k queued ops from one device, a fresh device pulling
everything (then indexing it for search, which a device filling up does after the pull:
``index_s``, ``pull_and_index_ops_per_s``), and the cost of a second sync with nothing new at two
database sizes.

Targets (issue 16): push and pull of the largest size at least 10x PouchDB's docs/s, each the
median of ``--repeat`` runs (ours and PouchDB alternating, so the ratio of one run compares one
moment of the machine); they go to bench/results/sync_push.json and sync_pull.json, which
``run_all.py --strict`` judges.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _util import print_table, write_result  # noqa: E402

from crm import Change, Device  # noqa: E402
from crm.ids import new_id  # noqa: E402
from crm.sync import client_for, pull_changes, push_outbox, sync_once  # noqa: E402
from tests.support import running_server  # noqa: E402

CITIES = ["Lisbon", "Porto", "Berlin", "Austin", "Osaka", "Lagos", "Lima", "Oslo"]
POUCH = ROOT.parent / "shared" / "peers" / "pouchdb" / "run.sh"
TARGET = 10.0  # x PouchDB, push and pull (issue 16)


def queue_accounts(device: Device, n: int) -> None:
    """N account creates in the outbox (batched transactions; the write path itself is benched elsewhere)."""
    done = 0
    while done < n:
        size = min(1000, n - done)
        device.write([
            Change("account", new_id(), {"name": f"Account {i}", "city": CITIES[i % 8],
                                         "phone": f"+1-555-{i:07d}", "email": f"contact{i}@example.com",
                                         "owner": "bench"}, {}, "create")
            for i in range(done, done + size)])
        done += size


def trial(n: int, workdir: Path) -> dict:
    with running_server(workdir / f"server-{n}") as server:
        token = server.add_rep("bench", "rep")
        login = {"server_url": server.url, "token": token}
        source = Device.init(workdir / f"src-{n}", rep="rep", **login)
        queue_accounts(source, n)
        with client_for(source) as client:
            t0 = time.perf_counter()
            pushed, _ = push_outbox(source, client)
            push_s = time.perf_counter() - t0
        assert pushed == n and source.outbox()["pending"] == 0
        fresh = Device.init(workdir / f"fresh-{n}", rep="rep2", **login)
        with client_for(fresh) as client:
            t0 = time.perf_counter()
            pulled, applied = pull_changes(fresh, client)
            pull_s = time.perf_counter() - t0
            assert applied == n, (pulled, applied)
            # a device filling up indexes its records for search after the pull (crm/search.py)
            t0 = time.perf_counter()
            indexed = fresh.catch_up_index()
            index_s = time.perf_counter() - t0
            idle = []
            for _ in range(15):
                t0 = time.perf_counter()
                sync_once(fresh, client=client)
                idle.append(time.perf_counter() - t0)
        with fresh.snapshot() as conn:
            assert conn.execute("SELECT count(*) FROM records").fetchone()[0] == n
        return {"n": n, "push_s": push_s, "push_ops_per_s": n / push_s, "pull_s": pull_s,
                "pull_ops_per_s": n / pull_s, "indexed_after_pull": indexed, "index_s": index_s,
                "pull_and_index_ops_per_s": n / (pull_s + index_s),
                "idle_sync_ms_median": statistics.median(idle) * 1000}


def pouch(n: int) -> dict | None:
    if not POUCH.exists():
        return None
    out = subprocess.run(["bash", str(POUCH), str(n)], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        print(f"pouchdb peer failed: {out.stderr[-500:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each size (medians; the last size is judged)")
    parser.add_argument("--no-pouch", action="store_true")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat: at least 1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in args.sizes.split(",")]:
            runs = []
            for k in range(args.repeat):
                (Path(tmp) / f"run-{k}").mkdir(exist_ok=True)
                ours = trial(n, Path(tmp) / f"run-{k}")
                peer = None if args.no_pouch else pouch(n)
                if peer:
                    ours.update(pouch_push_docs_per_s=peer["push_docs_per_s"], pouch_pull_docs_per_s=peer["pull_docs_per_s"],
                                push_ratio=ours["push_ops_per_s"] / peer["push_docs_per_s"],
                                pull_ratio=ours["pull_ops_per_s"] / peer["pull_docs_per_s"])
                runs.append(ours)
                print(json.dumps(ours), flush=True)
            common = set.intersection(*(set(run) for run in runs)) - {"n"}  # the ratios: only if PouchDB ran each time
            row = {key: statistics.median(run[key] for run in runs) for key in sorted(common)}
            rows.append({"n": n, "runs": len(runs), **row, "each": runs})
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sync.json").write_text(json.dumps(rows, indent=2))
    if not args.no_pouch:  # judged even when PouchDB failed: a target with no baseline is not met
        print_table([judged(rows[-1], "push"), judged(rows[-1], "pull")])


def judged(row: dict, way: str) -> dict:
    """The standard result of one way of the last size (bench/results/sync_WAY.json); not met when
    PouchDB did not run every time (no baseline to compare with)."""
    if f"{way}_ratio" not in row:
        result = {"benchmark": f"sync_{way}", "what": f"{way} of {row['n']:,} ops: PouchDB did not run each time",
                  "ours": {"label": f"{row[f'{way}_ops_per_s']:,.0f} ops/s"}, "baseline": {"label": "missing"},
                  "ratio": 0.0, "target": f">= {TARGET:g}x", "target_met": False}
        write_result(f"sync_{way}", result)
        return result
    result = {
        "benchmark": f"sync_{way}", "what": f"{way} of {row['n']:,} ops against PouchDB replication "
                                           f"(median of {row['runs']} runs)",
        "ours": {"label": f"{row[f'{way}_ops_per_s']:,.0f} ops/s"},
        "baseline": {"label": f"{row[f'pouch_{way}_docs_per_s']:,.0f} docs/s"},
        "ratio": row[f"{way}_ratio"], "target": f">= {TARGET:g}x", "target_met": row[f"{way}_ratio"] >= TARGET,
        "each": [run[f"{way}_ratio"] for run in row["each"]],
    }
    write_result(f"sync_{way}", result)
    return result


if __name__ == "__main__":
    main()
