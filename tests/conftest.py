"""Test tiers and the shared server rig.

Tiers (markers registered in pyproject.toml, `--strict-markers`):
  process      starts real OS processes (crm subprocesses, `crm server serve`, agents)
  conformance  runs the harness against a SUT (real Toxiproxy, SIGKILL, certifications)
  slow         long even among those (crash loops, calibration, thousands of requests)
The fast tier (`tox -e fast`) deselects all three; the full run (`tox`) runs everything.

A fast-tier test may not start a process: the guard below fails it, so the tier stays fast by
construction rather than by review.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.support import AppServer, Server, running_server

# Hypothesis: `ci` keeps each test's own example budget; `dev` (the fast tier) caps it.
settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

PROCESS_MARKERS = ("process", "conformance", "slow")


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_process(request, monkeypatch):
    """An unmarked test that starts a process fails here: mark it `process` (or fix it)."""
    if any(request.node.get_closest_marker(m) for m in PROCESS_MARKERS):
        return

    def refuse(self, args, *rest, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a process ({args!r}) but is not marked "
                             "`process`: the fast tier runs in-process only")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def _rig(kind: str, data, monkeypatch) -> Iterator[Server]:
    if kind == "process":
        with running_server(data) as server:
            yield server
        return
    server = AppServer(data)
    server.install(monkeypatch)
    try:
        yield server
    finally:
        server.close()


RIGS = ["app", pytest.param("process", marks=pytest.mark.process)]
# For a test that needs real processes whatever the tier (an agent, a SIGKILL): only the process rig.
process_only = pytest.mark.parametrize("server", RIGS[1:], indirect=True)


@pytest.fixture(params=RIGS)
def server(request, tmp_path, monkeypatch) -> Iterator[Server]:
    """A sync server and the `crm` that talks to it: in-process (``app``) or real processes
    (``process``). The same test body runs on both."""
    yield from _rig(request.param, tmp_path / "server", monkeypatch)


@pytest.fixture(scope="module", params=RIGS)
def module_server(request, tmp_path_factory) -> Iterator[Server]:
    """One rig for a whole module (each test uses its own organisation or records)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from _rig(request.param, tmp_path_factory.mktemp("rig") / "server", monkeypatch)


# The scopes that run longest, longest first (module wall time in the CPU report of a clean-clone
# `.ci/run`, 2026-12-03: tests/cpu_report.py). With --no-loadscope-reorder (tox.ini) xdist's
# loadscope hands scopes to workers in collection order; without it, in order of how many tests
# each holds, and the three one-test calibration classes went last: one worker ran them alone for
# five minutes at the end of the run. Started first, long scopes overlap the many short modules
# instead. Only the order changes: every test still runs, each module's tests in their own order.
HEAVY_FIRST = (
    # A class stands for itself (xdist's scope for its tests): the three calibration certifications
    # are spread out, so three whole certifications never start on an idle machine at once.
    "tests/test_server_postgres.py", "tests/test_calibration.py::TestReferenceGetsLevel3", "tests/test_mutants.py",
    "tests/test_packaging.py", "tests/test_calibration.py::TestFragileSyncGetsLevel2", "tests/test_fuzz_importer.py",
    "tests/test_sync_integration.py", "tests/test_security_openapi.py", "tests/test_life_events.py",
    "tests/test_calibration.py::TestReadonlyCacheGetsLevel1", "tests/test_chaos.py", "tests/test_crash.py",
    "tests/test_init_crash.py", "tests/test_check.py", "tests/test_sync_clock.py", "tests/test_fuzz_cli_parsers.py",
    "tests/test_merge_property.py", "tests/test_chaos_territories.py", "tests/test_hosted.py",
    "tests/test_security_limits.py", "tests/test_cli_subprocess.py", "tests/test_engine_yjs.py",
    "tests/test_scenario_evidence.py",
)


def heavy_rank(nodeid: str) -> int:
    """Where ``nodeid``'s scope (its class, else its module) stands in HEAVY_FIRST; the rest after."""
    rank = _HEAVY_RANK
    return rank.get(nodeid.rsplit("::", 1)[0], rank.get(nodeid.split("::", 1)[0], len(HEAVY_FIRST)))


_HEAVY_RANK = {scope: n for n, scope in enumerate(HEAVY_FIRST)}


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: heavy_rank(item.nodeid))  # stable: each scope's tests in their order


# CPU per test, for budgeting CI (a loaded 2-core machine: the suite is CPU-bound, so wall-clock
# --durations mislead). With CRM_TEST_CPU_REPORT=FILE each test's CPU seconds (its process and
# the children it waited for: crm processes, servers, whole certifications) are appended to FILE
# as JSON lines; `python -m tests.cpu_report FILE` sums them by module.
_CPU_REPORT = os.environ.get("CRM_TEST_CPU_REPORT")


def _cpu_now() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not _CPU_REPORT:
        yield
        return
    import json
    import time

    cpu, wall = _cpu_now(), time.monotonic()
    yield
    line = json.dumps({"test": item.nodeid, "cpu_s": round(_cpu_now() - cpu, 3),
                       "wall_s": round(time.monotonic() - wall, 3), "ended": round(time.time(), 1),
                       "worker": os.environ.get("PYTEST_XDIST_WORKER", "")})
    with open(_CPU_REPORT, "a", encoding="utf-8") as out:  # one short line per write: O_APPEND keeps them whole
        out.write(line + "\n")
