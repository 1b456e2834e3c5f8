"""Issue 13 item 7: in the JUnit file a scenario reads as "<feature> :: <scenario>", not as its
pytest function name (kept as a property), in a plain run and under xdist alike."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from harness.pytest_plugin import readable_junit_names

# What harness/bdd_results.py does for each scenario, in a test file of its own (no SUT needed).
SCENARIOS = '''
import pytest

@pytest.fixture(autouse=True)
def _as_a_scenario(request):
    if "plain" not in request.node.name:
        request.node.user_properties += [("crm_feature", "Airplane mode checklist"),
                                         ("crm_scenario", "Create a new account offline")]

def test_create_a_new_account_offline():
    pass

def test_plain():
    pass
'''


@pytest.mark.process
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_a_scenario_is_named_after_its_feature_and_scenario_in_the_junit_file(tmp_path, workers):
    (tmp_path / "test_scenarios.py").write_text(SCENARIOS)
    junit = tmp_path / "junit.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "/dev/null",
                           f"--rootdir={tmp_path}", str(tmp_path / "test_scenarios.py"), f"--junitxml={junit}",
                           *workers], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    cases = {c.get("name"): c for c in ET.parse(junit).iter("testcase")}
    assert set(cases) == {"Airplane mode checklist :: Create a new account offline", "test_plain"}
    case = cases["Airplane mode checklist :: Create a new account offline"]
    assert case.get("classname") == "Airplane mode checklist"
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["pytest_test"] == "test_create_a_new_account_offline"  # still there to run it with -k
    assert cases["test_plain"].get("classname") == "test_scenarios"  # other tests are left as they are


def test_renaming_is_idempotent_and_leaves_a_broken_file_alone(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text('<?xml version="1.0"?><testsuites><testsuite><testcase classname="f.t" name="test_x">'
                     '<properties><property name="crm_feature" value="F"/><property name="crm_scenario" value="S"/>'
                     '</properties></testcase></testsuite></testsuites>')
    assert readable_junit_names(junit) == 1
    first = junit.read_text()
    assert readable_junit_names(junit) == 1 and junit.read_text() == first
    assert first.count('name="pytest_test"') == 1 and 'name="F :: S"' in first
    (tmp_path / "broken.xml").write_text("<testsuites")
    assert readable_junit_names(tmp_path / "broken.xml") == 0
    assert readable_junit_names(tmp_path / "missing.xml") == 0
