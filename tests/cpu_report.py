"""Sum a CRM_TEST_CPU_REPORT file (tests/conftest.py) by module: where a full run's CPU goes."""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str, top: int = 30) -> None:
    cpu: dict[str, float] = defaultdict(float)
    wall: dict[str, float] = defaultdict(float)
    ends: list[tuple[float, float, str, str]] = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            module = row["test"].split("::", 1)[0]
            cpu[module] += row["cpu_s"]
            wall[module] += row["wall_s"]
            if "ended" in row:
                ends.append((row["ended"], row["wall_s"], row.get("worker", ""), row["test"]))
    total = sum(cpu.values())
    print(f"{'CPU s':>8} {'share':>6} {'wall s':>8}  module   (all: {total:.0f} CPU s)")
    for module, seconds in sorted(cpu.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{seconds:8.0f} {seconds / total:6.1%} {wall[module]:8.0f}  {module}")
    if ends:  # the tail: what each worker ran last, and when (seconds after the first test ended)
        first = min(end for end, *_ in ends)
        last: dict[str, tuple[float, float, str]] = {}
        for end, seconds, worker, test in sorted(ends):
            last[worker] = (end, seconds, test)
        print("\nlast test per worker (ended at s, its wall s):")
        for worker, (end, seconds, test) in sorted(last.items(), key=lambda kv: kv[1][0]):
            print(f"{end - first:8.0f} {seconds:8.0f}  {worker:5} {test}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
