"""`crm init` killed with SIGKILL at seeded random moments: each home is left either without a
store (or with one every command refuses naming `crm init`, which then recreates it) or with a
complete, working store. Never a home that nothing can use or repair.

Reproduce a failure with CRM_CRASH_SEED=<the printed seed>.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("CRM_CRASH_SEED", "20261127"))
INIT_KILLS = 30
SERVER = "http://127.0.0.1:9"

pytestmark = [pytest.mark.slow, pytest.mark.process,
              pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")]


def crm(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", "--home", str(home), *args]


def run(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(crm(home, *args), cwd=ROOT, capture_output=True, text=True, timeout=120)


INIT = ("init", "--rep", "Crash", "--server", SERVER, "--token", "tok-1", "--json")


def _complete(home: Path) -> None:
    """The store is whole: every meta row init writes, readable by the CLI."""
    status = run(home, "status", "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["device"] and info["rep"] == "Crash" and info["server"] == SERVER, info
    conn = sqlite3.connect(f"file:{home / 'crm.sqlite3'}?mode=ro", uri=True)
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    conn.close()
    assert meta["token"] == "tok-1" and meta["hlc"] == "0.0", meta


def test_sigkill_during_init(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    durations = []
    for i in range(3):  # how long one init lives, to aim the kills at its end (where it writes)
        began = time.perf_counter()
        assert run(tmp_path / f"warm-{i}", *INIT).returncode == 0
        durations.append(time.perf_counter() - began)
    lifetime = statistics.median(durations)
    kills = rounds = 0
    left: Counter[str] = Counter()
    while kills < INIT_KILLS:
        rounds += 1
        assert rounds < INIT_KILLS * 10, "init finishes before the kills land"
        home = tmp_path / f"home-{rounds}"
        proc = subprocess.Popen(crm(home, *INIT), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if rng.random() < 0.2:  # anywhere in its life
            time.sleep(rng.uniform(0.0, 1.0) * lifetime)
        else:  # aim at the writing: once the home exists, within the few milliseconds init writes
            deadline = time.monotonic() + 60
            while not home.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.0005)
            time.sleep(rng.uniform(0.0, 0.02))
        if proc.poll() is not None:
            assert proc.returncode == 0
            _complete(home)
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
        files = sorted({re.sub(r"^\.crm-init-\w+", ".crm-init-*", p.name) for p in home.iterdir()}
                       if home.exists() else [])
        used = run(home, "status", "--json")
        if used.returncode == 0:
            left["a complete store"] += 1
            _complete(home)
            again = run(home, *INIT)
            assert again.returncode == 10 and "already exists" in again.stderr, again.stderr
            continue
        # no usable store: the command says so, names `crm init`, and init makes the home whole
        assert used.returncode in (5, 7), (files, used.returncode, used.stderr)
        assert "crm init" in used.stderr and "Traceback" not in used.stderr, (files, used.stderr)
        left[f"no usable store (exit {used.returncode}): {' '.join(files) or 'nothing'}"] += 1
        again = run(home, *INIT)
        assert again.returncode == 0, (files, again.stderr)
        _complete(home)
        assert not list(home.glob(".crm-init-*")), "init left its temporary store behind"
    print(f"\ninit: {kills} SIGKILLs in {rounds} runs, seed {SEED}; left behind: {dict(left)}")
