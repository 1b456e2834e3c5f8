"""Run every benchmark, write bench/results/*.json and print one table (`tox -e bench`).

The start-up, write and import benchmarks run here in turn; any other bench/bench_*.py runs as
its own process and writes its own result files; those with a target (footprint, sync_push,
sync_pull) join the table. --quick gives a smoke-sized run whose figures are not the reported
ones; --strict exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_import  # noqa: E402
import bench_startup  # noqa: E402
import bench_write  # noqa: E402
from _util import RESULTS, print_table  # noqa: E402

OURS = {
    "startup": (bench_startup.main, [], ["--runs", "20"]),
    "write": (bench_write.main, [], ["--writes", "100"]),
    "import": (bench_import.main, [], ["--rows", "20000", "--repeat", "1"]),
}


def judged_results(before: dict[Path, int]) -> list[dict]:
    """The results with a target that a benchmark run as its own process just wrote (footprint,
    sync_push, sync_pull): judged by --strict like the ones run here."""
    fresh = []
    for path in sorted(RESULTS.glob("*.json")):
        if before.get(path) == path.stat().st_mtime_ns:
            continue
        result = json.loads(path.read_text())
        if isinstance(result, dict) and "target_met" in result:
            fresh.append(result)
    return fresh


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small runs, for checking the benchmarks work")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any target is missed")
    parser.add_argument("--only", nargs="*", metavar="NAME",
                        help=f"run only these ({', '.join(OURS)}, or another bench_NAME.py)")
    args = parser.parse_args(argv)
    chosen = set(args.only) if args.only else None
    results = []
    for name, (run, full, quick) in OURS.items():
        if chosen is None or name in chosen:
            print(f"running {name} ...", flush=True)
            results.append(run(quick if args.quick else full))
    others = sorted(p for p in HERE.glob("bench_*.py") if p.stem.removeprefix("bench_") not in OURS)
    failed = []
    for script in others:
        if chosen is None or script.stem.removeprefix("bench_") in chosen:
            print(f"running {script.name} (its figures go to {RESULTS.relative_to(HERE.parent)}/) ...",
                  flush=True)
            before = {path: path.stat().st_mtime_ns for path in RESULTS.glob("*.json")}
            if subprocess.run([sys.executable, str(script)]).returncode != 0:
                failed.append(script.name)
            results += judged_results(before)
    if results:
        print_table(results)
        for result in results:
            print(f"  {result['benchmark']}: {result['what']}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    missed = [r["benchmark"] for r in results if not r["target_met"]]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
