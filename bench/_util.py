"""What the benchmarks share: medians, the result file, the table, and where `crm` lives.

Every benchmark compares against a baseline measured in the same run on the same machine, so the
ratio means something even on a busy or slow machine; the absolute figures are context.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def crm_command() -> list[str]:
    """The installed `crm` console script beside this Python, else ``python -m cli.main``.

    A version manager's shim (pyenv) in front of `crm` would add its own start-up to ours.
    """
    script = Path(sys.executable).with_name("crm")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "cli.main"]


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def load_dataset_module():
    """fixtures/make_dataset.py, which is a script rather than a package module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_dataset", ROOT / "fixtures" / "make_dataset.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_dataset", module)
    spec.loader.exec_module(module)
    return module


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def write_result(name: str, result: dict[str, Any]) -> Path:
    """bench/results/<name>.json, with the machine and the time it was measured."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    full = {"benchmark": name, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(), **result}
    path.write_text(json.dumps(full, indent=2) + "\n")
    return path


def verdict(result: dict[str, Any]) -> str:
    return "met" if result["target_met"] else "MISSED"


def print_table(results: list[dict[str, Any]]) -> None:
    """One line per benchmark: ours, the baseline, the ratio and the target."""
    header = ("benchmark", "ours", "baseline", "ratio", "target", "")
    rows = [(r["benchmark"], r["ours"]["label"], r["baseline"]["label"], f"{r['ratio']:.2f}x",
             r["target"], verdict(r)) for r in results]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
        return
    table = Table(title="crm benchmarks (medians; ratio = ours / baseline)")
    for column in header:
        table.add_column(column)
    for row in rows:
        table.add_row(*row, style=None if row[-1] == "met" else "red")
    Console().print(table)
