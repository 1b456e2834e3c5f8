"""`crm visit log` as a whole process, side by side with `python -c "import typer"`.

A rep logs a visit standing in a doorway: the command must cost little more than starting Python
with the CLI library at all. Runs alternate between the two so machine noise hits both alike.
Target (issue 16): the median of `crm visit log` at most 1.3x the median of `import typer`.

Both sides run from compiled bytecode, as an installed package does: typer's `.pyc` files are
written when it is installed, and this benchmark compiles `crm/` and `cli/` before timing, since
an editable install run with PYTHONDONTWRITEBYTECODE=1 would otherwise compile every one of our
modules from source on every run (about a quarter of our start-up, measured 2026-12-02).
"""

from __future__ import annotations

import argparse
import compileall
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import ROOT, crm_command, median_ms, print_table, write_result  # noqa: E402

TARGET = 1.3


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) for one run that must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=25, help="runs of each command (at least 20)")
    args = parser.parse_args(argv)
    crm = crm_command()
    for package in ("crm", "cli"):  # bytecode on both sides (see the docstring)
        compileall.compile_dir(str(ROOT / package), quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        home = str(Path(tmp) / "home")
        subprocess.run([*crm, "--home", home, "init", "--rep", "Bench"], check=True, capture_output=True)
        added = subprocess.run([*crm, "--home", home, "account", "add", "--name", "Doorway Deli", "--json"],
                               check=True, capture_output=True, text=True)
        account = json.loads(added.stdout)["id"]
        ours_cmd = [*crm, "--home", home, "visit", "log", "--account", account, "--outcome", "met the buyer"]
        base_cmd = [sys.executable, "-c", "import typer"]
        for cmd in (ours_cmd, base_cmd):  # warm the page cache and the bytecode
            timed(cmd)
        ours, base, ours_cpu, base_cpu = [], [], [], []
        for _ in range(args.runs):
            wall, cpu = timed(ours_cmd)
            ours.append(wall)
            ours_cpu.append(cpu)
            wall, cpu = timed(base_cmd)
            base.append(wall)
            base_cpu.append(cpu)
    ratio = median_ms(ours) / median_ms(base)
    result = {
        "ours": {"label": f"{median_ms(ours):.0f} ms", "median_ms": median_ms(ours),
                 "cpu_median_ms": median_ms(ours_cpu), "runs": len(ours), "command": " ".join(crm)},
        "baseline": {"label": f"{median_ms(base):.0f} ms", "median_ms": median_ms(base),
                     "cpu_median_ms": median_ms(base_cpu), "runs": len(base)},
        "ratio": ratio, "cpu_ratio": median_ms(ours_cpu) / median_ms(base_cpu),
        "target": f"<= {TARGET}x", "target_met": ratio <= TARGET,
    }
    result = {"benchmark": "startup", "what": "`crm visit log` process vs `python -c 'import typer'`",
              **result}
    write_result("startup", result)
    return result


if __name__ == "__main__":
    print_table([main()])
