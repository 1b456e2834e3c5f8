"""The heavy-first order of the full run (tests/conftest.py) names real modules and is applied."""

from __future__ import annotations

import configparser
from pathlib import Path

from tests.conftest import HEAVY_FIRST, heavy_rank

ROOT = Path(__file__).resolve().parents[1]


def test_every_heavy_scope_exists():
    missing = []
    for scope in HEAVY_FIRST:
        path, _, cls = scope.partition("::")
        if not (ROOT / path).is_file() or (cls and f"class {cls}" not in (ROOT / path).read_text(encoding="utf-8")):
            missing.append(scope)
    assert not missing, f"HEAVY_FIRST names modules or classes that are gone: {missing}"


def test_the_collection_starts_with_the_heavy_scopes(request):
    seen: list[int] = []
    for item in request.session.items:
        rank = heavy_rank(item.nodeid)
        if not seen or seen[-1] != rank:
            seen.append(rank)
    heavy = [rank for rank in seen if rank < len(HEAVY_FIRST)]
    assert seen[:len(heavy)] == sorted(heavy), [HEAVY_FIRST[r] if r < len(HEAVY_FIRST) else "..." for r in seen[:10]]


def test_the_full_run_keeps_the_collection_order():
    """xdist's loadscope sorts scopes by how many tests they hold unless told not to: the order
    above then never reached the workers (the 2026-12-03 run started the three one-test
    calibration classes last, and one worker ran them alone for five minutes)."""
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    command = tox["testenv"]["commands"]
    assert "--dist loadscope" in command and "--no-loadscope-reorder" in command, command
