"""The certification rule table (docs/levels.md), row by row."""

from __future__ import annotations

import pytest

from harness.checkers import Anomaly
from harness.levels import ScenarioResult, certify_level

OFFLINE_CREATE = "create an account in airplane mode"


def offline_create(saved=True, passed=None):
    return ScenarioResult(OFFLINE_CREATE, passed=saved if passed is None else passed,
                          offline_create_refused=not saved, reason="" if saved else "exit 20: not saved")


def ok(name):
    return ScenarioResult(name, passed=True)


def inconclusive(name):
    return ScenarioResult(name, passed=False, inconclusive="the answer arrived before it could be cut")


def failed(name, *checks, reason=""):
    return ScenarioResult(name, passed=False, reason=reason,
                          anomalies=[Anomaly(c, f"{c} found", {"seq": 1}) for c in checks])


@pytest.mark.parametrize("results, level", [
    # every scenario passes, offline create saved -> 3
    ([offline_create(), ok("sync after reconnect"), ok("force-quit keeps the outbox")], 3),
    # offline create saved, any other scenario fails -> 2
    ([offline_create(), failed("force-quit keeps the outbox", "queue_lost", "lost_write")], 2),
    ([offline_create(), ok("sync"), failed("flaky network", reason="sync never succeeded")], 2),
    # the offline-create scenario itself saved but found anomalies -> 2
    ([ScenarioResult(OFFLINE_CREATE, passed=True, offline_create_refused=False,
                     anomalies=[Anomaly("duplicate", "twice", {})])], 2),
    # offline create refused -> 1, whatever else passed
    ([offline_create(saved=False), ok("sync"), ok("edits")], 1),
    ([offline_create(saved=False), failed("force-quit", "queue_lost")], 1),
    # no scenario showed an offline create saved -> no claim beyond 1
    ([ok("sync"), ok("edits")], 1),
    # an inconclusive scenario is no failure, but no evidence for 3 either -> 2
    ([offline_create(), ok("sync"), inconclusive("lost answer")], 2),
    ([offline_create(saved=False), inconclusive("lost answer")], 1),
])
def test_rule_table(results, level):
    assert certify_level(results)[0] == level


def test_level_3_reason_counts_the_scenarios():
    level, reasons = certify_level([offline_create(), ok("a"), ok("b")])
    assert (level, reasons) == (3, ["all 3 scenarios passed with no anomaly"])


def test_level_2_reasons_name_each_failed_scenario_and_its_checks():
    level, reasons = certify_level([
        offline_create(), ok("sync"),
        failed("force-quit keeps the outbox", "queue_lost", "lost_write", "lost_write"),
        failed("flaky network", reason="sync never succeeded")])
    assert level == 2
    assert reasons == [
        "scenario 'force-quit keeps the outbox' failed: 2 lost_write, 1 queue_lost",
        "scenario 'flaky network' failed: sync never succeeded"]


def test_level_1_reason_says_which_scenario_refused_first_then_other_failures():
    level, reasons = certify_level([failed("edits", "lost_edit"), offline_create(saved=False)])
    assert level == 1
    assert reasons == [f"offline create refused in scenario {OFFLINE_CREATE!r}: exit 20: not saved",
                       "scenario 'edits' failed: 1 lost_edit"]


def test_a_passed_flag_with_anomalies_does_not_pass():
    assert certify_level([offline_create(),
                          ScenarioResult("s", passed=True, anomalies=[{"check": "orphan"}])]) == (
        2, ["scenario 's' failed: 1 orphan"])


def test_results_may_be_plain_mappings_as_loaded_from_a_report():
    level, _ = certify_level([
        {"name": OFFLINE_CREATE, "passed": True, "offline_create_refused": False, "anomalies": []},
        {"name": "sync", "passed": True}])
    assert level == 3


def test_no_results_is_an_error_not_a_level():
    with pytest.raises(ValueError, match="nothing to certify"):
        certify_level([])
    with pytest.raises(TypeError):
        certify_level(["not a result"])


def test_an_inconclusive_scenario_is_named_as_such_not_as_a_failure():
    level, reasons = certify_level([offline_create(), inconclusive("lost answer")])
    assert level == 2
    assert reasons == ["scenario 'lost answer' was inconclusive: the answer arrived before it could be cut"]
