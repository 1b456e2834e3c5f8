"""The server's CPU per pushed op, in-process (no HTTP): what `crm server serve` spends in the push
handler's work (decode, wire.shape, admission, ServerStore, the answer's JSON) on a fresh SQLite
store, timed with time.process_time.

Two shapes: ``mix``, bench_scale.py's (200 devices x 100 ops: 60 account creates, 20 visits,
10 notes, 10 edits; 20 territories), one push per device; ``big``, bench_sync.py's (100,000
account creates from one device in 1,000-op pushes, each with the continuity the previous answer
gave). ``--group K`` applies the mix K pushes at a time through ServerStore.push_group (group
commit, as the server does with pushes that wait for their organisation's turn).

CPU timings on a shared or virtual machine move with the load: compare two trees by alternating
runs (``--runs``) and reading medians; see bench/README.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import orjson  # noqa: E402
from bench_scale import queue_ops  # noqa: E402
from bench_sync import queue_accounts  # noqa: E402
from starlette.responses import Response  # noqa: E402

from crm import Device  # noqa: E402
from crm.ops import PROTOCOL  # noqa: E402
from crm.server import ServerStore  # noqa: E402
from crm.server.app import _continuity, _parsed, _push, _push_body  # noqa: E402
from crm.server.store import Identity  # noqa: E402


def bodies(shape: str, work: Path) -> list[tuple[int, str, str | None, bytes]]:
    """(rep number, device id, territory, push body) of every push of ``shape``."""
    def body(device_id: str, rows: list[tuple[str, str]]) -> bytes:
        return b'{"protocol":%d,"device":"%s","ops":[%s]}' % (
            PROTOCOL, device_id.encode(), b",".join(r[1].encode() for r in rows))
    if shape == "mix":
        out = []
        for i in range(200):
            device = Device.init(work / f"d{i}", rep=f"rep-{i}")
            queue_ops(device, i, 100, f"t{i % 20}")
            out.append((i, device.device_id, f"t{i % 20}", body(device.device_id, device.pending_ops(limit=1000))))
        return out
    device = Device.init(work / "big", rep="rep-0")
    queue_accounts(device, 100_000)
    rows = device.pending_ops(limit=100_000)
    return [(0, device.device_id, None, body(device.device_id, rows[s:s + 1000])) for s in range(0, len(rows), 1000)]


def run(pushes: list[tuple[int, str, str | None, bytes]], group: int) -> float:
    """CPU seconds per op of one run on a fresh store."""
    work = Path(tempfile.mkdtemp())
    try:
        store = ServerStore.open(str(work / "server"))
        for i, _, territory, _ in {p[0]: p for p in pushes}.values():
            store.add_token("scale", f"rep-{i}")
            if territory:
                store.assign("scale", f"rep-{i}", territory)
        witness = known = None
        t0 = time.process_time()
        if group > 1:
            for start in range(0, len(pushes), group):
                items = []
                for i, device, _, raw in pushes[start:start + group]:
                    data, typed = _push_body(raw)
                    items.append((Identity("scale", f"rep-{i}", "device"),
                                  _parsed(data["ops"], raw if typed is not None else None), _continuity(device, None, None)))
                for result in store.push_group(items):
                    Response(orjson.dumps(result.to_json()), media_type="application/json")
        else:
            for i, device, _, raw in pushes:
                data, typed = _push_body(raw)
                result = _push(store, Identity("scale", f"rep-{i}", "device"), data["ops"],
                               _continuity(device, witness, known), raw if typed is not None else None)
                answer = result.to_json()
                Response(orjson.dumps(answer), media_type="application/json")
                if len(pushes) < 200:  # one device pushing in turn: it sends what the last answer said
                    witness, known = answer["witness"], answer["latest"] or ""
        cpu = time.process_time() - t0
        store.close()
        return cpu / sum(raw.count(b'"op":') for *_, raw in pushes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("mix", "big"), default="mix")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--group", type=int, default=1, help="mix: pushes applied together (push_group)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    try:
        pushes = bodies(args.shape, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_op = [run(pushes, args.group) for _ in range(args.runs)]
    print(f"{args.shape} group {args.group}: server CPU per op {statistics.median(per_op) * 1e6:.1f} us "
          f"(median of {args.runs}: {', '.join(f'{x * 1e6:.1f}' for x in per_op)})")


if __name__ == "__main__":
    main()
