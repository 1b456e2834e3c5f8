"""Chaos with territories: reps assigned, accounts moved and reps reassigned amid the faults.

The schedule parts are pure and fast; the short campaigns against the reference (and against a
mutant that ignores moves) run real servers and Toxiproxy (``process``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.schedule import Capabilities, generate

ROOT = Path(__file__).resolve().parent.parent


def _schedule_digest_in_a_process(hash_seed: str) -> str:
    code = ("import hashlib, json\n"
            "from harness.schedule import Capabilities, generate\n"
            "caps = [Capabilities(), Capabilities(server_faults=False, backoffice=False)]\n"
            "s = [generate(seed, devices=5, steps=40, capabilities=c).to_json()\n"
            "     for seed in range(990, 1010) for c in caps]\n"
            "print(hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest())\n")
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip()


@pytest.mark.process
def test_a_seed_gives_the_same_schedule_in_every_process_whatever_the_hash_seed():
    # The generator once walked a set of device names (the running agents): its order, and so the
    # schedule, changed with PYTHONHASHSEED, i.e. from one `crm certify` process to the next.
    assert len({_schedule_digest_in_a_process(h) for h in ("1", "2", "3", "4")}) == 1
