"""A device whose territory holds 10,000 records of a 1,000,000-record organisation syncs and
stores as a device of a 10,000-record organisation does (issue 15, docs/sync-protocol.md
"Territories").

Two organisations on one SQLite server store, served in this process (the real app through
httpx's ASGI transport, so the figures are the server's and the device's work, not a network's):
``big`` holds ``--records`` accounts spread over territories of ``--territory`` accounts each, and
``small`` holds ``--territory`` accounts and no territories. The server data is written through
the server's own push path (ServerStore.push, in batches of 5,000 ops). Then a fresh device of a
rep assigned one territory of ``big``, and a fresh device of a rep of ``small``, each run a first
full sync with the real code (crm.sync.sync_once: pull every page, merge, store), then a sync
with nothing new, then a sync after 100 new accounts in their scope. Figures: sync time, ops
delivered, records held, the device store's size on disk; checked: each device's export equals
the server's export for its rep, byte for byte.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _util import write_result  # noqa: E402

from crm import canonical_json  # noqa: E402
from crm.device import Device  # noqa: E402
from crm.hlc import format_stamp  # noqa: E402
from crm.ids import new_id  # noqa: E402
from crm.ops import Op, op_to_wire  # noqa: E402
from crm.server import ServerStore  # noqa: E402
from crm.server.app import create_app  # noqa: E402
from crm.server.store import Identity  # noqa: E402
from crm.sync import SyncClient, sync_once  # noqa: E402

URL = "http://crm-server.bench"
BATCH = 5000


def _fill(store: ServerStore, org: str, records: int, per_territory: int | None) -> None:
    """``records`` account creates pushed by one loader device, in batches (the server's push path)."""
    loader = new_id()
    who = Identity(org, "loader", "device")
    wall = int(time.time() * 1000) - 3_600_000
    for start in range(0, records, BATCH):
        ops = []
        for n in range(start, min(records, start + BATCH)):
            fields = {"name": f"Shop {n}", "city": "Leeds", "phone": f"0113 {n:07d}"}
            if per_territory:
                fields["territory"] = f"t{n // per_territory}"
            ops.append(op_to_wire(Op(op_id=new_id(), device=loader, hlc=format_stamp(wall, n % 100000, loader),
                                     entity="account", record_id=new_id(), fields=fields, kind="create")))
        store.push(who, ops)
        print(f"  {org}: {min(records, start + BATCH):,} of {records:,} accounts", end="\r", file=sys.stderr, flush=True)
    print(file=sys.stderr)


def _store_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in home.iterdir() if p.name.startswith("crm.sqlite3"))


def _sync(dev: Device, token: str, transport) -> tuple[float, int]:
    with SyncClient(base_url=URL, token=token, transport=transport, timeout=600) as client:
        t0 = time.perf_counter()
        result = sync_once(dev, client=client)
        return time.perf_counter() - t0, result.pulled


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="accounts in the big organisation")
    parser.add_argument("--territory", type=int, default=10_000, help="accounts per territory")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parent / "tests"))
    from tests.support import AppTransport

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ServerStore.open(Path(tmp) / "server")
        t0 = time.perf_counter()
        tokens = {"big": store.add_token("big", "rep-t0"), "small": store.add_token("small", "rep")}
        store.assign("big", "rep-t0", "t0")
        _fill(store, "small", args.territory, None)
        _fill(store, "big", args.records, args.territory)
        load_s = time.perf_counter() - t0
        transport = AppTransport()
        transport.serve(create_app(store))
        try:
            for org, rep in (("small", "rep"), ("big", "rep-t0"), ("small", "rep"), ("big", "rep-t0")):
                home = Path(tmp) / f"{org}-{len(rows)}"
                dev = Device.init(home, rep=rep, server_url=URL, token=tokens[org])
                first_s, first_ops = _sync(dev, tokens[org], transport)
                idle_s, _ = _sync(dev, tokens[org], transport)
                for n in range(100):
                    dev.create("account", {"name": f"New {n}"})
                new_s, _ = _sync(dev, tokens[org], transport)
                held = len(dev.export()["account"])
                same = canonical_json(dev.export()) == canonical_json(store.export(org, rep=rep))
                rows.append({"org": org, "org_records": args.records if org == "big" else args.territory,
                             "first_sync_s": round(first_s, 2), "ops_delivered": first_ops,
                             "idle_sync_ms": round(idle_s * 1000, 1), "sync_100_new_ms": round(new_s * 1000, 1),
                             "records_held": held, "store_mb": round(_store_bytes(home) / 2**20, 1),
                             "export_equals_server_rep_export": same})
                print(rows[-1], flush=True)
                dev.close()
                assert same, f"the {org} device's export differs from the server's export for its rep"
        finally:
            transport.shutdown()
            store.close()
    path = write_result("territory_size", {"what": " ".join(__doc__.split("\n\n")[1].split()),
                                           "server_load_s": round(load_s, 1), "runs": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
