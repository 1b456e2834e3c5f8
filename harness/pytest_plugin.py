"""The conformance suite under plain pytest: ``pytest --pyargs harness.features --crm-sut PROFILE``.

Registered as a pytest plugin (entry point ``pytest11``, name ``harness.pytest_plugin``), so it is
loaded by every pytest run in an environment where crm-offline is installed, whatever the folder.
That is why it only adds the suite's options and resolves the profile: the step definitions, the
fixtures that start servers and Toxiproxy, and the results hooks live in the features package's
conftest.py (``features/conftest.py``), which pytest loads only when it collects the features.
`crm certify` runs the same suite with the same options (harness/certify.py, ``run_suite``).

With ``--junitxml`` it also makes the report read like the features: each scenario's testcase is
named ``<feature> :: <scenario>`` (classname: the feature) instead of its pytest function name,
which stays in the testcase's ``pytest_test`` property. The results hooks give each scenario the
``crm_feature`` and ``crm_scenario`` properties this reads; other tests are left as they are.
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


# The properties harness/bdd_results.py gives every scenario (item.user_properties: they reach the
# JUnit file through xdist too) and the one that keeps the pytest name once the name is rewritten.
FEATURE_PROPERTY, SCENARIO_PROPERTY, PYTEST_NAME_PROPERTY = "crm_feature", "crm_scenario", "pytest_test"


@pytest.hookimpl(trylast=True)  # after junitxml's own pytest_sessionfinish wrote the file
def pytest_sessionfinish(session):
    from _pytest.junitxml import xml_key

    xml = session.config.stash.get(xml_key, None)  # only where the JUnit file is written (not on xdist workers)
    if xml is not None and getattr(xml, "logfile", None):
        readable_junit_names(xml.logfile)


def readable_junit_names(path) -> int:
    """Rename each scenario's testcase in a JUnit XML file to ``<feature> :: <scenario>``; how many.
    Idempotent; a file that is missing or not XML is left alone."""
    import os
    import xml.etree.ElementTree as ET

    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError):
        return 0
    renamed = 0
    for case in tree.iter("testcase"):
        props = case.find("properties")
        values = {p.get("name"): p.get("value") for p in (props if props is not None else [])}
        feature, scenario = values.get(FEATURE_PROPERTY), values.get(SCENARIO_PROPERTY)
        if not feature or not scenario:
            continue
        if PYTEST_NAME_PROPERTY not in values:
            ET.SubElement(props, "property", name=PYTEST_NAME_PROPERTY, value=case.get("name", ""))
        case.set("name", f"{feature} :: {scenario}")
        case.set("classname", feature)
        renamed += 1
    if renamed:
        tmp = f"{path}.tmp"
        tree.write(tmp, encoding="utf-8", xml_declaration=True)
        os.replace(tmp, path)
    return renamed
