"""The conformance suite under plain pytest: ``pytest --pyargs harness.features --crm-sut PROFILE``.

Registered as a pytest plugin (entry point ``pytest11``, name ``harness.pytest_plugin``), so it is
loaded by every pytest run in an environment where crm-offline is installed, whatever the folder.
That is why it only adds the suite's options and resolves the profile: the step definitions, the
fixtures that start servers and Toxiproxy, and the results hooks live in the features package's
conftest.py (``features/conftest.py``), which pytest loads only when it collects the features.
`crm certify` runs the same suite with the same options (harness/certify.py, ``run_suite``).
"""

from __future__ import annotations

import pytest

from .locations import resolve_profile

DEFAULT_SUT = "reference"


def pytest_addoption(parser):
    group = parser.getgroup("crm conformance", "the crm conformance suite (pytest --pyargs harness.features)")
    group.addoption("--crm-sut", "--sut", dest="crm_sut", metavar="PROFILE", default=None,
                    help="SUT profile (TOML file) the features run against, or the name of a shipped one: "
                         "reference, reference-postgres, fragile-sync, readonly-cache [default: reference]")
    group.addoption("--crm-seed", dest="crm_seed", type=int, default=1, metavar="N",
                    help="seed of every fault schedule and data set [default: 1]")
    group.addoption("--crm-results", dest="crm_results", default=None, metavar="DIR",
                    help="folder for each scenario's verdict (results.jsonl) and history, as crm certify reads them")
    group.addoption("--crm-attempt", dest="crm_attempt", type=int, default=1, metavar="N",
                    help="the attempt of a re-run (crm certify); seeds each scenario's faults anew")


def pytest_configure(config):
    # An absolute path before anything runs, so xdist workers and every fixture see one profile
    # whatever their working directory.
    sut = config.getoption("crm_sut")
    config.option.crm_sut = str(resolve_profile(sut if sut is not None else DEFAULT_SUT))
    if sut is not None:  # asked for: a profile that cannot be used stops the run here, saying why
        # Imported only then (standard library only): a run without --crm-sut loads nothing more.
        from .profile import ProfileError, load_profile

        try:
            load_profile(config.option.crm_sut)
        except ProfileError as exc:
            raise pytest.UsageError(f"--crm-sut: {exc}") from None
