"""Issue 13 items 7 and 10: a certificate's timelines mark the failing step, show a server lane and
the history's sequence numbers, draw not-saved and SIGKILL in colours of their own, and every anomaly
links to an element of its timeline in the same page. Built from a hand-made history (no run)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from harness.history import History
from harness.report import anchor, chaos_page, page
from harness.timeline import timeline_data
from tests.test_certify_partial import OFFLINE_CREATE, certificate, parse


class Elements(HTMLParser):
    """Every element with its attributes, and the text of each ``<title>``."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.titles: list[str] = []
        self.texts: list[tuple[dict[str, str], str]] = []
        self._open: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes))
        self._open.append((tag, attributes))

    def handle_endtag(self, tag):
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if self._open and self._open[-1][0] == "title":
            self.titles.append(data)
        if self._open and self._open[-1][0] == "text":
            self.texts.append((self._open[-1][1], data))

    def with_class(self, name: str) -> list[dict[str, str]]:
        """The timeline's elements of this class (the legend's spans aside)."""
        return [a for tag, a in self.elements if name in a.get("class", "").split() and tag != "span"]

    @property
    def ids(self) -> set[str]:
        return {a["id"] for _, a in self.elements if "id" in a}


def elements(html: str) -> Elements:
    parse(html)  # well-formed first
    found = Elements()
    found.feed(html)
    return found


def history() -> History:
    """d1 saves an account, is force-quit, a visit is not saved; the server crashes and restarts."""
    h = History()
    a = h.append("d1", "invoke", "create_account", args={"name": "Corner Store"}, t=100.0)  # 1
    h.complete(a, "ok", result={"id": "acc-1"}, exit=0)  # 2
    h.events[-1].t = 100.4
    h.append("d1", "fault", "kill", t=101.0)  # 3
    v = h.append("d1", "invoke", "log_visit", args={"account_id": "acc-1"}, t=101.5)  # 4
    h.append("d1", "fail", "log_visit", ref=v.seq, exit=3, t=101.9)  # 5
    h.append("server", "fault", "server_kill", t=102.0)  # 6
    h.append("server", "heal", "server_kill", t=103.0)  # 7
    h.append("d1", "fault", "offline", t=103.5)  # 8
    h.append("d1", "heal", "offline", t=104.0)  # 9
    return h


STEPS = [{"keyword": "Given", "text": 'a sync server for the organisation "acme"', "line": 7, "t": 99.0,
          "t_end": 99.9, "failed": False},
         {"keyword": "When", "text": 'the rep logs a visit to the account on "d1"', "line": 12, "t": 101.4,
          "t_end": 102.0, "failed": True}]


def failing_verdict() -> dict:
    timeline = timeline_data(history(), STEPS)
    return {"name": "A visit after a force-quit", "test": "test_a_visit_after_a_force_quit",
            "feature": "Force-quits", "passed": False, "offline_create_refused": None, "duration_s": 5.0,
            "reason": "the visit was not saved",
            "failed_step": {"keyword": "When", "text": STEPS[1]["text"], "line": 12, "type": "when"},
            "anomalies": [{"check": "refused", "message": "log_visit #4 on d1 was refused", "evidence": {"seq": 4}},
                          {"check": "lost_write", "message": "no seq in this one", "evidence": {}}],
            "timeline": timeline}


def test_the_failing_step_is_marked_on_the_timeline(monkeypatch):
    found = elements(page(certificate([OFFLINE_CREATE, failing_verdict()], None, monkeypatch)))
    failed = found.with_class("step-failed")
    rects = [a for a in failed if "step" in a.get("class", "").split()]
    assert len(rects) == 1 and rects[0]["data-line"] == "12"
    assert any(t.startswith("FAILED at this step: When the rep logs a visit") for t in found.titles)
    assert len(found.with_class("step")) == 3  # both steps, and what the harness did after the failure
    assert len(found.with_class("after")) == 1
    assert found.with_class("failed-at")  # the line down every lane at the moment it failed


def test_every_timeline_has_a_server_lane_even_without_server_events(monkeypatch):
    quiet = History()
    a = quiet.append("d1", "invoke", "create_account", t=1.0)
    quiet.complete(a, "ok")
    verdict = {**OFFLINE_CREATE, "timeline": timeline_data(quiet)}
    assert "server" in verdict["timeline"]["lanes"]
    found = elements(page(certificate([verdict, failing_verdict()], None, monkeypatch)))
    lanes = [text for attrs, text in found.texts if "lane-name" in attrs.get("class", "")]
    assert lanes.count("server") == 2 and lanes.count("d1") == 2
    assert found.with_class("ev-server-down")  # the crashed server's down time, in the server lane


def test_not_saved_and_sigkill_have_classes_and_colours_of_their_own(monkeypatch):
    html = page(certificate([OFFLINE_CREATE, failing_verdict()], None, monkeypatch))
    found = elements(html)
    assert len(found.with_class("ev-fail")) == 1  # the refused visit
    assert len(found.with_class("ev-kill")) == 2  # the force-quit and the server's SIGKILL
    assert found.with_class("ev-ok") and found.with_class("ev-fault")

    def fill(name: str) -> str:
        match = re.search(r"svg\.timeline \." + name + r"\b[^{]*\{ fill: (#[0-9a-f]{6})", html)
        assert match, name
        return match.group(1)

    colours = {name: fill(name) for name in ("ev-ok", "ev-fail", "ev-unknown", "ev-kill", "ev-fault",
                                             "ev-server-down", "ev-life")}
    assert len(set(colours.values())) == len(colours), colours  # no two meanings share a colour
    legend = [a["class"] for tag, a in found.elements if tag == "span" and a.get("class", "").startswith("ev-")]
    assert {"ev-fail", "ev-kill"} <= set(legend)  # the legend uses the very same classes


def test_each_bar_carries_its_sequence_number(monkeypatch):
    found = elements(page(certificate([OFFLINE_CREATE, failing_verdict()], None, monkeypatch)))
    bars = {a["data-seq"]: a["class"] for a in found.with_class("ev-ok") + found.with_class("ev-fail")}
    assert bars == {"1": "ev-ok", "4": "ev-fail ev-flagged"}  # invoke seqs; the refused one is an anomaly's
    assert "#4 log_visit → not saved (#5) 1.50-1.90 s" in found.titles
    assert {a["data-seq"] for a in found.with_class("ev-kill")} == {"3", "6"}


def test_every_anomaly_links_to_an_element_of_its_timeline_in_the_same_page(monkeypatch):
    verdict = failing_verdict()
    html = page(certificate([OFFLINE_CREATE, verdict], None, monkeypatch))
    found = elements(html)
    links = [a["href"] for tag, a in found.elements if tag == "a" and a.get("href", "").startswith("#")]
    assert links and all(link[1:] in found.ids for link in links), set(links) - {"#" + i for i in found.ids}
    to_timeline = [a["href"] for _, a in found.elements if "to-timeline" in a.get("class", "")]
    # one link per anomaly: the one whose evidence names #4 points at that bar, the other at its timeline
    assert to_timeline == [f"#{anchor(verdict)}-e4", f"#{anchor(verdict)}"]
    assert f'href="#{anchor(verdict)}"' in html  # the scenarios table and the checks table link there too


def test_the_chaos_certificate_draws_a_timeline_for_each_failing_run_and_counterexample():
    timeline = timeline_data(history())
    anomaly = {"run": 2, "seed": 8, "check": "lost_write", "message": "create_account #1 on d1 lost",
               "evidence": {"seq": 1}}
    run = {"run": 2, "seed": 8, "passed": False, "steps": 5, "steps_skipped": 0, "actions": 2, "faults": 3,
           "duration_s": 4.0, "checks": ["lost_write"], "error": "", "anomalies": [anomaly], "timeline": timeline}
    cert = {"mode": "chaos", "passed": False, "sut": {"name": "x", "version": "1", "profile": "p.toml"}, "seed": 7,
            "settings": {"runs": 1, "devices": 1, "steps": 5, "shrink_budget": 4}, "started_at": "t",
            "duration_s": 9.0, "runs": [run], "anomalies": [anomaly],
            "summary": {"runs": 1, "failed_runs": 1, "errored_runs": 0, "steps": 5, "fault_steps": 2, "actions": 2,
                        "faults": 3, "action_kinds": {}, "fault_kinds": {}, "anomalies": 1, "shrink_runs": 3,
                        "checks": {"lost_write": 1}},
            "counterexamples": [{"check": "lost_write", "run": 2, "seed": 8, "message": "m", "original_steps": 5,
                                 "minimal_steps": 2, "shrink_runs": 3, "shrink_exhausted": False, "reproduced": True,
                                 "replay_file": "chaos-lost-write-seed-8.json", "anomalies": [anomaly],
                                 "schedule": {"seed": 8, "devices": ["d1"], "steps": [{"do": "kill", "device": "d1"}]},
                                 "timeline": timeline}]}
    found = elements(chaos_page(cert))
    assert {"run-2", "cx-1"} <= found.ids
    assert len([a for tag, a in found.elements if tag == "svg"]) == 2
    links = [a["href"] for tag, a in found.elements if tag == "a" and a.get("href", "").startswith("#")]
    assert "#run-2-e1" in links and all(link[1:] in found.ids for link in links)
    assert found.with_class("ev-kill") and found.with_class("step-failed") == []


def test_the_comparison_links_each_anomaly_to_its_timeline_in_that_suts_certificate(tmp_path, monkeypatch):
    from harness import compare
    from tests.test_compare import write

    verdict = failing_verdict()
    folder = write(tmp_path / "fragile", "fragile", [OFFLINE_CREATE, verdict], None, monkeypatch)
    out = tmp_path / "compare"
    compare.write(compare.compare([folder]), out)
    found = elements((out / "comparison.html").read_text())
    links = [a["href"] for tag, a in found.elements if tag == "a"]
    assert sorted(links) == sorted(["../fragile/certificate.html#" + anchor(verdict) + "-e4",  # refused: cites #4
                                    "../fragile/certificate.html#" + anchor(verdict)])  # lost_write: cites none
    target = elements((folder / "certificate.html").read_text())
    for link in links:
        assert (out / link.split("#")[0]).resolve() == (folder / "certificate.html").resolve()
        assert link.split("#")[1] in target.ids


def test_the_chaos_stages_anomalies_link_to_their_runs_in_the_chaos_report(monkeypatch):
    stage = {"name": "chaos stage: 3 seeded run(s) of 3 devices (seed 1)", "feature": "Chaos", "passed": False,
             "offline_create_refused": None, "duration_s": 30.0, "reason": "1 anomaly",
             "anomalies": [{"run": 2, "seed": 2, "check": "duplicate", "message": "m", "evidence": {"seq": 9}}]}
    found = elements(page(certificate([OFFLINE_CREATE, stage], None, monkeypatch)))
    assert [a["href"] for _, a in found.elements if "to-timeline" in a.get("class", "")] == [
        "chaos/certificate.html#run-2"]  # the chaos report (report/chaos/) draws run 2's timeline there
