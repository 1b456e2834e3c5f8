"""Bytes a device's store spends per record, per entity, with the outbox full and after sync.

For each entity a fresh device writes N records through its write path (validated values, in
batches), then syncs with a real `crm server serve`; a second device pulls them. SQLite's DBSTAT
virtual table gives the bytes of every table and index (pages in use, as stored on disk); the
figure per record is the growth over the same store before the N records, divided by N:

* ``outbox full``: written, not yet pushed (record row + outbox entry with the op's wire JSON);
* ``synced``: the writing device after its push drained the outbox (record row + the kept op that
  a server restored from a backup is sent again, docs/sync-protocol.md "Continuity");
* ``pulled``: the device that received them (record row only).

Target (issue 16): a synced account at most 450 bytes.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _util import print_table, write_result  # noqa: E402

from crm import Change, Device  # noqa: E402
from crm.domain import validate_create  # noqa: E402
from crm.ids import new_id  # noqa: E402
from crm.store import store_path  # noqa: E402
from crm.sync import client_for, pull_changes, push_outbox  # noqa: E402
from tests.support import running_server  # noqa: E402

TARGET = 450
CITIES = ["Leeds", "York", "Hull", "Bath", "Derby", "Bristol", "Leicester", "Norwich"]


def values(entity: str, i: int, account: str) -> dict:
    """Typical field values of the i-th record (what a rep or an import writes)."""
    if entity == "account":
        return {"name": f"Account {i}", "city": CITIES[i % 8], "phone": f"+1-555-{i:07d}",
                "email": f"contact{i}@example.com", "owner": "bench"}
    if entity == "contact":
        return {"account": account, "name": f"Contact {i}", "role": "buyer", "email": f"c{i}@example.com"}
    if entity == "visit":
        return {"account": account, "at": "2026-12-01T10:00:00Z", "outcome": "met the buyer",
                "duration_min": 20, "rep": "rep"}
    return {"account": account, "text": f"Asked for the spring catalogue ({i})", "at": "2026-12-01T10:00:00Z",
            "rep": "rep"}


def usage(home: Path) -> dict[str, int]:
    """Bytes in use per table or index (DBSTAT, aggregated), after a checkpoint."""
    conn = sqlite3.connect(store_path(home))
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return dict(conn.execute("SELECT name, SUM(pgsize - unused) FROM dbstat GROUP BY name").fetchall())
    finally:
        conn.close()


def per_record(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, float]:
    out = {name: (after.get(name, 0) - before.get(name, 0)) / n for name in sorted({*before, *after})}
    return {name: round(v, 1) for name, v in out.items() if abs(v) >= 0.05}


def trial(entity: str, n: int, workdir: Path, made: list[dict] | None = None) -> dict:
    with running_server(workdir / f"server-{entity}") as server:
        token = server.add_rep("bench", "rep")
        login = {"server_url": server.url, "token": token}
        source = Device.init(workdir / f"src-{entity}", rep="rep", **login)
        account = source.create("account", {"name": "Parent"})["id"]
        with client_for(source) as client:
            push_outbox(source, client)
        base = usage(source.home)
        for start in range(0, n, 1000):
            source.write([Change(entity, new_id(), made[i] if made else
                                 validate_create(entity, values(entity, i, account)), {}, "create")
                          for i in range(start, min(n, start + 1000))])
        full = usage(source.home)
        with client_for(source) as client:
            pushed, _ = push_outbox(source, client)
        assert pushed == n and source.outbox()["pending"] == 0
        source.pack_kept()  # what `crm sync` does after its push
        synced = usage(source.home)
        fresh = Device.init(workdir / f"fresh-{entity}", rep="rep2", **login)
        fresh_base = usage(fresh.home)
        with client_for(fresh) as client:
            pull_changes(fresh, client)
        pulled = usage(fresh.home)
        source.close()
        fresh.close()
    shares = {"outbox full": per_record(base, full, n), "synced": per_record(base, synced, n),
              "pulled": per_record(fresh_base, pulled, n)}
    return {state: {"bytes": round(sum(parts.values())), "by_table": parts} for state, parts in shares.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000, help="records per entity")
    parser.add_argument("--entities", default="account,contact,visit,note")
    parser.add_argument("--faker", action="store_true",
                        help="accounts as bench_search.py makes them (Faker names, addresses, refs; a fifth "
                             "accented) instead of the short repetitive values")
    args = parser.parse_args(argv)
    made = None
    if args.faker:
        from bench_search import accounts

        made = accounts(args.records, seed=7)
    with tempfile.TemporaryDirectory() as tmp:
        entities = {e: trial(e, args.records, Path(tmp), made if e == "account" else None)
                    for e in args.entities.split(",")}
    for entity, states in entities.items():
        for state, figures in states.items():
            parts = ", ".join(f"{k} {v:g}" for k, v in figures["by_table"].items())
            print(f"{entity:8} {state:12} {figures['bytes']:5d} B/record  ({parts})", file=sys.stderr)
    account = entities.get("account", {}).get("synced", {}).get("bytes")
    result = {
        "benchmark": "footprint", "what": "bytes per record in a device's store (DBSTAT), per entity",
        "ours": {"label": f"{account} B per synced account", "records": args.records},
        "baseline": {"label": "-"},
        "ratio": account / TARGET if account else None,
        "target": f"<= {TARGET} B per synced account", "target_met": bool(account and account <= TARGET),
        "entities": entities,
    }
    write_result("footprint", result)
    return result


if __name__ == "__main__":
    print_table([main()])
