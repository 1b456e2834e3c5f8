"""One write through the engine API in-process, against a bare committed single-row SQLite insert.

The engine's write is a visit logged with ``Device.create``: validation, the account check, the
record, its outbox op and the clock, in one transaction. The baseline inserts one row into a bare
table and commits. Both use WAL with synchronous=FULL, so each pays one durable commit; the runs
alternate so machine noise hits both alike. Target: engine median at most 3x the baseline median.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import median_ms, print_table, write_result  # noqa: E402

from crm import Device  # noqa: E402

TARGET = 3.0


def bare_table(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE visits (id INTEGER PRIMARY KEY, account TEXT, outcome TEXT, at TEXT)")
    return conn


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=400, help="writes of each kind")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        device = Device.init(Path(tmp) / "home", rep="Bench")
        with device.snapshot() as conn:
            sync_mode = conn.execute("PRAGMA synchronous").fetchone()[0]
        assert sync_mode == 2, "the engine must write with synchronous=FULL"
        account = device.create("account", {"name": "Doorway Deli"})["id"]
        bare = bare_table(Path(tmp) / "bare.sqlite3")
        ours, base = [], []
        for i in range(args.writes + 20):  # the first 20 of each warm up and are not counted
            start = time.perf_counter()
            device.create("visit", {"account": account, "outcome": f"met the buyer {i}"})
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            bare.execute("BEGIN IMMEDIATE")
            bare.execute("INSERT INTO visits (account, outcome, at) VALUES (?, ?, ?)",
                         (account, f"met the buyer {i}", "2026-11-26T10:00:00Z"))
            bare.execute("COMMIT")
            base.append(time.perf_counter() - start)
        ours, base = ours[20:], base[20:]
        device.close()
        bare.close()
    ratio = median_ms(ours) / median_ms(base)
    result = {
        "benchmark": "write",
        "what": "one Device.create (record + outbox op) vs a bare single-row insert, both WAL + FULL",
        "ours": {"label": f"{median_ms(ours):.2f} ms", "median_ms": median_ms(ours), "writes": len(ours)},
        "baseline": {"label": f"{median_ms(base):.2f} ms", "median_ms": median_ms(base), "writes": len(base)},
        "ratio": ratio, "target": f"<= {TARGET:g}x", "target_met": ratio <= TARGET,
    }
    write_result("write", result)
    return result


if __name__ == "__main__":
    print_table([main()])
