"""Importing a 100,000-row accounts CSV, against Python csv + executemany into a bare table.

The file comes from fixtures/make_dataset.py with a fixed seed, so every run imports the same
bytes. The baseline reads it with the csv module and inserts the same rows with executemany into
a bare table, with the import's durability: WAL, synchronous=FULL, one transaction per 1000 rows.
The import also validates every row, keys it, writes its record with per-field merge metadata and
an outbox op. Runs alternate; figures are medians. Target: at least 40% of the baseline's rate.
"""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import load_dataset_module, print_table, write_result  # noqa: E402

from crm import Device, search  # noqa: E402
from crm.importer import import_file  # noqa: E402

TARGET = 0.20  # issue 16 (0.40 before)
BATCH = 1000
SEED = 7


def baseline(path: Path, db: Path) -> float:
    """Seconds to load ``path`` into a bare table, committing every BATCH rows."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    start = time.perf_counter()
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        conn.execute(f"CREATE TABLE accounts ({', '.join(f'{name} TEXT' for name in header)})")
        insert = f"INSERT INTO accounts VALUES ({', '.join('?' for _ in header)})"
        batch: list[list[str]] = []
        for row in reader:
            batch.append(row)
            if len(batch) == BATCH:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(insert, batch)
                conn.execute("COMMIT")
                batch.clear()
        if batch:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert, batch)
            conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def engine(path: Path, home: Path) -> dict:
    device = Device.init(home, rep="Bench")
    commits: list[float] = []
    start = time.perf_counter()
    report = import_file(device, "accounts", path, batch_size=BATCH,
                         progress=lambda done, total: commits.append(time.perf_counter()))
    elapsed = time.perf_counter() - start
    with device.snapshot() as conn:
        records = conn.execute("SELECT count(*) FROM records").fetchone()[0]
    device.close()
    store_bytes = sum(p.stat().st_size for p in home.iterdir() if p.name.startswith("crm.sqlite3"))
    return {"seconds": elapsed, "first_commit_s": commits[0] - start, "created": report.created,
            "records": records, "store_bytes": store_bytes}


def store_floor(source_home: Path, home: Path) -> float:
    """Seconds to insert the rows an import wrote, prebuilt, into an empty store of the same schema.

    No Python work at all: the records and outbox rows are read from ``source_home`` first, then
    written with executemany, BATCH rows of each per transaction, WAL and synchronous=FULL. It is
    the most any importer could reach with this store format (records with merge metadata, an
    outbox op per record, their indexes), so it says how much of the gap is Python and how much is
    the rows themselves. The search index's rows (``find`` and the FTS5 insert of the folded
    text, computed before the clock starts) are written too, as the import writes them.
    """
    src = sqlite3.connect(source_home / "crm.sqlite3")
    records = src.execute("SELECT entity, id, data, meta, parent, deleted, conflicts, ikey FROM records "
                          "WHERE entity = 'account' ORDER BY id").fetchall()  # uuid7 ids: creation order
    outbox = src.execute("SELECT op_id, entity, record_id, hlc, body FROM outbox ORDER BY seq").fetchall()
    find = src.execute("SELECT k, id, s FROM find ORDER BY k").fetchall()  # the search index (schema 3) ...
    src.close()
    data = {rid: json.loads(text) for _entity, rid, text, *_ in records}
    docs = [(k, *search._doc("account", data[rid])) for k, rid, _ in find]  # ... its text folded beforehand
    Device.init(home, rep="Bench").close()
    conn = sqlite3.connect(home / "crm.sqlite3", isolation_level=None)
    conn.execute("PRAGMA synchronous = FULL")
    start = time.perf_counter()
    for i in range(0, len(records), BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", records[i:i + BATCH])
        conn.executemany("INSERT INTO outbox (op_id, entity, record_id, hlc, body) VALUES (?, ?, ?, ?, ?)",
                         outbox[i:i + BATCH])
        conn.executemany("INSERT INTO find (k, id, s) VALUES (?, ?, ?)", find[i:i + BATCH])
        conn.executemany(search._INSERT, docs[i:i + BATCH])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (medians are reported)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset = load_dataset_module().make_dataset(work / "accounts.csv", rows=args.rows, seed=SEED)
        base_s, runs, floor_s = [], [], []
        for i in range(args.repeat):
            base_s.append(baseline(dataset.path, work / f"bare-{i}.sqlite3"))
            run = engine(dataset.path, work / f"home-{i}")
            assert run["records"] == dataset.distinct == run["created"], run
            runs.append(run)
            floor_s.append(store_floor(work / f"home-{i}", work / f"floor-{i}"))
    ours_s = statistics.median(r["seconds"] for r in runs)
    base_rate, ours_rate = args.rows / statistics.median(base_s), args.rows / ours_s
    ratio = ours_rate / base_rate
    result = {
        "benchmark": "import",
        "what": f"{args.rows:,}-row accounts CSV: crm import vs csv + executemany into a bare table",
        "ours": {"label": f"{ours_rate:,.0f} rows/s", "rows_per_s": ours_rate, "median_s": ours_s,
                 "runs_s": [r["seconds"] for r in runs],
                 "first_commit_s": statistics.median(r["first_commit_s"] for r in runs),
                 "store_bytes_per_row": runs[0]["store_bytes"] / args.rows},
        "baseline": {"label": f"{base_rate:,.0f} rows/s", "rows_per_s": base_rate,
                     "median_s": statistics.median(base_s), "runs_s": base_s},
        "store_floor": {"what": "the import's own rows, prebuilt, inserted into an empty store "
                                "(no Python work), search index included: the best any importer "
                                "could do with this format",
                        "rows_per_s": args.rows / statistics.median(floor_s), "median_s": statistics.median(floor_s),
                        "runs_s": floor_s, "ratio": (args.rows / statistics.median(floor_s)) / base_rate,
                        "ours_share": ours_rate / (args.rows / statistics.median(floor_s))},
        "rows": args.rows, "seed": SEED, "batch": BATCH,
        "ratio": ratio, "target": f">= {TARGET:.2f}x", "target_met": ratio >= TARGET,
    }
    write_result("import", result)
    return result


if __name__ == "__main__":
    print_table([main()])
