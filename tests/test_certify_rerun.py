"""crm certify's second chances: which verdicts are run again, and which attempt counts."""

from __future__ import annotations

from pathlib import Path

from harness import certify


def verdict(test, passed=True, inconclusive="", timing_only=False, reason=""):
    return {"name": test, "test": test, "passed": passed, "inconclusive": inconclusive,
            "timing_only": timing_only, "reason": reason, "anomalies": []}


def fake_suite(outcomes):
    """run_suite stand-in: ``outcomes[test]`` is the list of verdicts of attempts 2, 3, ..."""
    calls = []

    def run_suite(profile_path, *, seed, report_dir, live=None, workers=1, tests=None, attempt=1, select=None):
        calls.append((attempt, sorted(tests)))
        return [{**outcomes[t][attempt - 2], "attempts": attempt} for t in tests], 0

    return run_suite, calls


def test_only_inconclusive_and_timing_only_verdicts_are_run_again(monkeypatch):
    first = [verdict("a"), verdict("b", passed=False, reason="lost_write"),
             verdict("c", passed=False, inconclusive="the answer arrived first"),
             verdict("d", passed=False, timing_only=True, reason="stuck after 60 s")]
    run_suite, calls = fake_suite({"c": [verdict("c")], "d": [verdict("d")]})
    monkeypatch.setattr(certify, "run_suite", run_suite)
    final = certify.rerun(Path("p.toml"), first, seed=1, report_dir=Path("r"))
    assert calls == [(2, ["c", "d"])]
    assert [v["passed"] for v in final] == [True, False, True, True]
    assert final[2]["earlier"] == [{"attempt": 1, "inconclusive": "the answer arrived first",
                                    "timing_only": False, "reason": ""}]
    assert final[3]["earlier"][0]["timing_only"] is True


def test_a_scenario_still_inconclusive_after_every_attempt_stays_so(monkeypatch):
    again = verdict("c", passed=False, inconclusive="still missed")
    run_suite, calls = fake_suite({"c": [again, again]})
    monkeypatch.setattr(certify, "run_suite", run_suite)
    final = certify.rerun(Path("p.toml"), [verdict("c", passed=False, inconclusive="missed")], seed=1,
                          report_dir=Path("r"))
    assert [attempt for attempt, _ in calls] == [2, 3]
    assert final[0]["inconclusive"] == "still missed" and final[0]["attempts"] == 3
    assert [e["attempt"] for e in final[0]["earlier"]] == [1, 2]
    assert not certify.needs_rerun(verdict("x", passed=False, reason="lost_edit"))


def test_the_certificate_opens_with_the_verdict_in_plain_words():
    from harness.report import IN_THE_FIELD, plain_words

    assert set(IN_THE_FIELD) >= set(certify.CHECKS), "every check has a plain meaning"
    clean = {"level": 3, "checks": {}, "scenarios": []}
    assert plain_words(clean)[0].startswith("Everything a rep did offline was kept")
    broken = {"level": 2, "scenarios": [verdict("x", passed=False, reason="")],
              "checks": {"duplicate": {"anomalies": 2, "scenarios": ["Lost answer"]}}}
    lines = plain_words(broken)
    assert lines[1].startswith("A record a rep saved once turned up twice") and "Lost answer" in lines[1]
    assert plain_words({"partial": True})[0].startswith("This is a partial run")
