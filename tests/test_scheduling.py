"""The heavy-first order of the full run (tests/conftest.py) names real modules and is applied."""

from __future__ import annotations

import configparser
from pathlib import Path

from tests.conftest import HEAVY_FIRST

ROOT = Path(__file__).resolve().parents[1]


def test_every_heavy_module_exists():
    missing = [path for path in HEAVY_FIRST if not (ROOT / path).is_file()]
    assert not missing, f"HEAVY_FIRST names modules that are gone: {missing}"


def test_the_collection_starts_with_the_heavy_modules(request):
    seen: list[str] = []
    for item in request.session.items:
        path = item.nodeid.split("::", 1)[0]
        if not seen or seen[-1] != path:
            seen.append(path)
    heavy_collected = [path for path in HEAVY_FIRST if path in seen]
    assert seen[:len(heavy_collected)] == heavy_collected, seen[:len(heavy_collected) + 2]


def test_the_full_run_keeps_the_collection_order():
    """xdist's loadscope sorts scopes by how many tests they hold unless told not to: the order
    above then never reached the workers (the 2026-12-03 run started the three one-test
    calibration classes last, and one worker ran them alone for five minutes)."""
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    command = tox["testenv"]["commands"]
    assert "--dist loadscope" in command and "--no-loadscope-reorder" in command, command
