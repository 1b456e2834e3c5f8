"""Finding an account among 100,000 (issue 14, items 1 and 2): search, filters and naming a record
in milliseconds, a page of `crm account ls` in well under a second, and what the index costs.

One device store holding 100,000 Faker-made accounts (fixtures/make_dataset.py's pools, a fifth of
them with German, French, Polish and Portuguese names and cities, so accents are real), 20,000
contacts and 20,000 notes, written through the device's own write path (Device.write, 20,000 per
transaction), so the search index is built as a rep's store builds it.

* Engine, in-process, median of ``--repeat`` runs of each query: ``Device.search`` (first page of
  50 and the count of all matches), ``Device.list_page("account", match=...)`` for --city,
  --postcode and --name, ``Device.resolve`` of a short id, an external ref and an exact name.
  Target: each under 50 ms.
* `crm account ls` as a whole process (the console script), median of ``--runs``: the default page,
  --city, and --all piped (tab-separated) at 100,000 and at 20,000 accounts. Target: a page under
  1 s (`--all` of 20,000 too).
* Cost: the index's bytes per account (SQLite's dbstat: the ``find`` table and the FTS5 shadow
  tables, over the accounts, contacts and notes it holds), and the bulk write rate with the index
  against the same writes with index maintenance switched off.

    python bench/bench_search.py                 # 100,000 accounts
    python bench/bench_search.py --accounts 5000 --runs 3 --repeat 5   # a quick look
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _util import crm_command, load_dataset_module, write_result  # noqa: E402

from crm import Change, Device, search  # noqa: E402
from crm.domain import validate_create  # noqa: E402
from crm.ids import new_id  # noqa: E402

BATCH = 20_000
TARGET_MS = 50.0
LS_TARGET_S = 1.0


def pools(seed: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """make_dataset's English pools, and accented ones from other locales."""
    from faker import Faker

    english = load_dataset_module()._pools(seed)
    fake = Faker(["de_DE", "fr_FR", "pl_PL", "pt_BR"])
    fake.seed_instance(seed)
    accented = {"company": [fake.company() for _ in range(1000)], "city": [fake.city() for _ in range(500)]}
    return english, accented


def accounts(count: int, seed: int) -> list[dict]:
    dataset = load_dataset_module()
    english, accented = pools(seed)
    rng = random.Random(seed)
    out = []
    for n in range(count):
        row = dataset._account(rng, english, n, with_ref=True)
        if n % 5 == 0:
            row["name"], row["city"] = rng.choice(accented["company"]), rng.choice(accented["city"])
        out.append(validate_create("account", {k: v for k, v in row.items() if v}))
    return out


def fill(device: Device, rows: list[dict], entity: str = "account") -> tuple[list[str], float]:
    """Write ``rows`` through Device.write, BATCH per transaction: (ids, seconds)."""
    ids, spent = [], 0.0
    for start in range(0, len(rows), BATCH):
        changes = [Change(entity, new_id(), values, {}, "create") for values in rows[start:start + BATCH]]
        began = time.perf_counter()
        device.write(changes)
        spent += time.perf_counter() - began
        ids += [change.record_id for change in changes]
    return ids, spent


def median_ms(run, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1000


def ls_seconds(home: Path, args: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        done = subprocess.run([*crm_command(), "--home", str(home), "account", "ls", *args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        samples.append(time.perf_counter() - began)
        if done.returncode != 0:
            raise SystemExit(f"crm account ls {' '.join(args)} failed: {done.stderr}")
    return statistics.median(samples)


def version_seconds(runs: int) -> float:
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([*crm_command(), "--version"], stdout=subprocess.DEVNULL, check=True)
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


def index_bytes(device: Device) -> dict[str, int]:
    sizes = dict(device.store.conn.execute(
        "SELECT name, sum(pgsize) FROM dbstat WHERE name LIKE 'find%' OR name LIKE 'search%' "
        "OR name = 'records' GROUP BY name").fetchall())
    return sizes


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7, help="runs of each `crm account ls`")
    parser.add_argument("--repeat", type=int, default=21, help="runs of each engine query")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    rows = accounts(args.accounts, args.seed)
    small = min(20_000, args.accounts)
    with tempfile.TemporaryDirectory(prefix="crm-bench-search-") as tmp:
        # the same writes without index maintenance: what the index costs a bulk write
        bare = Device.init(Path(tmp) / "bare", rep="rep")
        kept = search.reindex
        search.reindex = lambda conn, rows, known=None: None
        try:
            _, bare_s = fill(bare, rows)
        finally:
            search.reindex = kept
            bare.close()

        device = Device.init(Path(tmp) / "big", rep="rep")
        ids, indexed_s = fill(device, rows)
        contacts = [validate_create("contact", {"account": ids[n * 5 % len(ids)], "name": f"Zoë Łukasz {n}",
                                                "role": "buyer"}) for n in range(args.accounts // 5)]
        fill(device, contacts, "contact")
        notes = [validate_create("note", {"account": ids[n * 7 % len(ids)], "text": f"Rappeler lundi, café {n}",
                                          "rep": "rep"}) for n in range(args.accounts // 5)]
        fill(device, notes, "note")
        device.store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        sample = rows[len(rows) // 2]
        rid = ids[len(ids) // 2]
        city = sample["city"]
        word = search.words(sample["name"])[0]
        accented_city = rows[0]["city"]
        queries = {
            f"search {word!r}": lambda: device.search(word, limit=50),
            f"search {search.fold(accented_city)!r} (folded)": lambda: device.search(search.fold(accented_city), limit=50),
            "search 'cafe' (notes)": lambda: device.search("cafe", limit=50),
            f"search {sample['external_ref']!r}": lambda: device.search(sample["external_ref"], limit=50),
            f"ls --city {city.lower()!r}": lambda: device.list_page("account", match={"city": city.lower()}, limit=50),
            "ls --postcode (outward code)": lambda: device.list_page(
                "account", match={"postcode": sample["postcode"].split()[0]}, limit=50),
            f"ls --name {word!r}": lambda: device.list_page("account", match={"name": word}, limit=50),
            "resolve short id": lambda: device.resolve("account", search.short_id(rid)),
            "resolve external ref": lambda: device.resolve("account", sample["external_ref"].lower()),
            "resolve full id": lambda: device.resolve("account", rid),
        }
        engine = {name: round(median_ms(run, args.repeat), 2) for name, run in queries.items()}
        matches = {name: device.search(word)[1] for name in ("word",)}
        sizes = index_bytes(device)
        held = args.accounts + 2 * (args.accounts // 5)
        device.close()

        home = Path(tmp) / "big"
        ls = {"crm --version (start-up alone, for scale)": version_seconds(args.runs),
              "page (50)": ls_seconds(home, [], args.runs),
              f"--city {city.lower()!r}": ls_seconds(home, ["--city", city.lower()], args.runs),
              f"--all, piped ({args.accounts})": ls_seconds(home, ["--all"], max(3, args.runs // 2))}
        twenty = Device.init(Path(tmp) / "twenty", rep="rep")
        fill(twenty, rows[:small])
        twenty.store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        accounts_only = index_bytes(twenty)
        twenty.close()
        ls[f"page (50) of {small}"] = ls_seconds(Path(tmp) / "twenty", [], args.runs)
        ls[f"--all, piped ({small})"] = ls_seconds(Path(tmp) / "twenty", ["--all"], args.runs)

    index_total = sum(size for name, size in sizes.items() if name != "records")
    result = {
        "what": f"search and ls over {args.accounts} accounts, {args.accounts // 5} contacts, {args.accounts // 5} notes",
        "engine_ms": engine,
        "engine_target_ms": TARGET_MS,
        "engine_target_met": all(ms < TARGET_MS for ms in engine.values()),
        "matches_of_first_query": matches["word"],
        "ls_seconds": {name: round(s, 3) for name, s in ls.items()},
        "ls_target_met": all(s < LS_TARGET_S for name, s in ls.items() if "page" in name or f"({small})" in name),
        "index_bytes": sizes,
        "index_bytes_per_indexed_record": round(index_total / held, 1),
        "records_bytes_per_record": round(sizes.get("records", 0) / held, 1),
        "index_bytes_per_account": round(sum(size for name, size in accounts_only.items() if name != "records") / small, 1),
        "index_bytes_accounts_only": accounts_only,
        "bulk_write_rows_per_s": {"with_index": round(len(rows) / indexed_s), "without_index": round(len(rows) / bare_s)},
    }
    path = write_result("search", result)
    print(f"{result['what']}")
    for name, ms in engine.items():
        print(f"  {name:<45} {ms:8.2f} ms")
    for name, s in result["ls_seconds"].items():
        print(f"  {name if name.startswith('crm ') else 'crm account ls ' + name:<45} {s:8.3f} s")
    print(f"  index: {result['index_bytes_per_indexed_record']} bytes per indexed record "
          f"(records: {result['records_bytes_per_record']}); {sizes}")
    print(f"  index, a store of {small} accounts only: {result['index_bytes_per_account']} bytes per account; "
          f"{accounts_only}")
    print(f"  bulk write: {result['bulk_write_rows_per_s']} rows/s")
    print(f"  -> {path}")
    return result


if __name__ == "__main__":
    main()
