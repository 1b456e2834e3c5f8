"""Chaos mode: schedules from a seed, the shrinker, and short real campaigns through `crm certify`.

The pure parts (generator, ddmin, schedule files, the supersession rule the chaos runs exposed)
are tested directly; the rest runs the real SUTs behind a real Toxiproxy with real SIGKILLs, at
small sizes so the whole file stays within a CI budget.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import checkers
from harness.history import History
from harness.schedule import FAULTS, Capabilities, Schedule, ScheduleError, generate, is_fault
from harness.shrink import ddmin
from tests.support import CERTIFY_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
SUT = ROOT / "fixtures" / "sut"
CHAOS_ANOMALY = 31
# A campaign against real SUT processes, servers and Toxiproxy: not in the fast tier.
REAL_RUN = pytest.mark.conformance


# -- schedules -------------------------------------------------------------------------------------
def test_a_seed_always_gives_the_same_schedule_and_another_seed_another():
    first = generate(11, devices=4, steps=30)
    assert first.to_json() == generate(11, devices=4, steps=30).to_json()
    assert first.steps != generate(12, devices=4, steps=30).steps
    assert len(first.steps) == 30 and first.devices == ["d1", "d2", "d3", "d4"]
    json.dumps(first.to_json())  # plain data


def test_schedules_mix_actions_faults_and_heals_and_keep_the_server_down_briefly():
    kinds: dict[str, int] = {}
    for seed in range(60):
        schedule = generate(seed, devices=5, steps=25)
        down = 0
        for step in schedule.steps:
            kinds[step["do"]] = kinds.get(step["do"], 0) + 1
            down = 1 if step["do"] == "server_kill" else (0 if step["do"] == "server_start" or not down else down + 1)
            assert down <= 5, f"seed {seed}: the server stays down too long"
        handles = set()
        for step in schedule.steps:  # a record is named only after the step that creates it
            for key in ("account", "record", "order"):
                if key in step:
                    assert step[key] in handles, f"seed {seed}: {step} names a record not created before"
            if "ref" in step:
                handles.add(step["ref"])
    for kind in ("create_account", "log_visit", "take_order", "add_order_line", "write_note", "edit_field",
                 "backoffice_edit", "sync", "start_background_sync", "reopen", *FAULTS):
        assert kinds.get(kind, 0) >= 3, f"{kind} almost never scheduled: {kinds}"
    toxics = {s["type"] for seed in range(60) for s in generate(seed, devices=5, steps=25).steps if s["do"] == "toxic"}
    assert toxics == {"latency", "timeout", "reset_peer", "limit_data", "slicer"}


def test_edits_hit_the_same_field_from_two_places_and_other_fields_of_the_same_record():
    same = other = 0
    for seed in range(40):
        edits = [s for s in generate(seed, devices=3, steps=30).steps if s["do"] in ("edit_field", "backoffice_edit")]
        for a, b in zip(edits, edits[1:], strict=False):
            if a["record"] == b["record"]:
                if a["field"] != b["field"]:
                    other += 1
                elif a.get("device") != b.get("device"):
                    same += 1
    assert same >= 10 and other >= 10, (same, other)


def test_toxic_attributes_stay_where_toxiproxy_does_not_crash():
    slicers = [s["attributes"] for seed in range(200) for s in generate(seed, devices=3, steps=30).steps
               if s["do"] == "toxic" and s["type"] == "slicer"]
    assert len(slicers) > 20
    assert all(0 <= a["size_variation"] < a["average_size"] for a in slicers), "2.12 panics otherwise"


def test_values_never_repeat_so_payloads_cannot_collide():
    schedule = generate(5, devices=5, steps=200)
    values = [s[k] for s in schedule.steps for k in ("name", "city", "outcome", "text", "value") if k in s]
    assert len(values) == len(set(values)) > 100


def test_orders_get_several_lines_often_from_another_device_and_no_line_repeats():
    several = elsewhere = 0
    for seed in range(40):
        steps = generate(seed, devices=3, steps=40).steps
        taken = {s["ref"]: s["device"] for s in steps if s["do"] == "take_order"}
        adds = [s for s in steps if s["do"] == "add_order_line"]
        several += len({s["order"] for s in adds})
        elsewhere += sum(s["device"] != taken[s["order"]] for s in adds)
        lines = [(s["sku"], s["qty"], s["price"]) for s in steps if s["do"] in ("take_order", "add_order_line")]
        assert len(lines) == len(set(lines)), f"seed {seed}: a line repeats, the checkers could not tell them apart"
    assert several >= 20 and elsewhere >= 5, (several, elsewhere)


def test_a_profile_without_sync_agent_or_back_office_gets_no_such_steps():
    caps = Capabilities(sync=False, agent=False, backoffice=False, order_lines=False)
    kinds = {s["do"] for seed in range(30) for s in generate(seed, devices=3, steps=30, capabilities=caps).steps}
    assert not kinds & {"sync", "start_background_sync", "stop_background_sync", "backoffice_edit", "add_order_line"}
    assert "reopen" in kinds and "create_account" in kinds


def test_a_schedule_file_round_trips_and_a_sub_list_keeps_only_its_devices(tmp_path):
    schedule = generate(3, devices=4, steps=20)
    schedule.meta["sut"] = "x.toml"
    loaded = Schedule.load(schedule.save(tmp_path / "s.json"))
    assert loaded.to_json() == schedule.to_json()
    part = schedule.with_steps([s for s in schedule.steps if s.get("device") == "d2"])
    assert part.devices == ["d2"] and part.meta["sut"] == "x.toml"
    assert schedule.with_steps([{"do": "server_kill"}]).devices == ["d1"]


@pytest.mark.parametrize("content, message", [
    ("{", "cannot read it as JSON"),
    ('{"format": "other"}', "not a chaos schedule"),
    ('{"format": "crm-chaos-schedule/1", "seed": 1, "devices": ["d1"], "steps": [{"do": "explode"}]}',
     "step 1 is not a known step"),
    ('{"format": "crm-chaos-schedule/1", "seed": 1, "devices": ["d1"], "steps": [{"do": "kill", "device": "d9"}]}',
     "names device 'd9'"),
])
def test_a_bad_schedule_file_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ScheduleError, match=message) as info:
        Schedule.load(path)
    assert "bad.json" in str(info.value)


# -- the shrinker ----------------------------------------------------------------------------------
def test_ddmin_finds_the_steps_that_matter_and_only_returns_what_failed():
    needed = {3, 17, 31}
    seen = []

    def fails(items):
        seen.append(tuple(items))
        return needed <= set(items)

    result = ddmin(list(range(40)), fails)
    assert result.items == [3, 17, 31] and not result.exhausted
    assert result.tests == len(seen) == len(set(seen)), "a candidate is never run twice"
    assert fails(result.items)


def test_ddmin_stops_at_its_budget_with_a_smaller_list_that_failed():
    calls = []

    def fails(items):
        calls.append(items)
        return 5 in items and 30 in items

    result = ddmin(list(range(40)), fails, budget=6)
    assert result.exhausted and result.tests == 6 == len(calls)
    assert 5 in result.items and 30 in result.items and len(result.items) < 40


def test_ddmin_keeps_the_input_when_nothing_smaller_fails():
    result = ddmin(["a", "b", "c"], lambda items: len(items) == 3)
    assert result.items == ["a", "b", "c"]


def test_ddmin_of_an_order_dependent_failure_keeps_the_order():
    def fails(items):  # fails only when a kill comes after the write it loses
        return "write" in items and "kill" in items and items.index("write") < items.index("kill")

    steps = ["sync", "write", "edit", "offline", "kill", "online", "sync"]
    assert ddmin(steps, fails).items == ["write", "kill"]


def test_every_kind_of_step_can_be_played_and_is_named_after_its_contract_action():
    from harness.chaos import ALIASES, PLAYED_AS, PLAYS
    from harness.profile import OPTIONAL_ACTIONS, REQUIRED_ACTIONS
    from harness.schedule import KINDS

    assert sorted(PLAYS) == sorted(KINDS)
    contract = set(REQUIRED_ACTIONS) | set(OPTIONAL_ACTIONS) | {"backoffice_edit", "assign", "unassign"}
    work = [PLAYED_AS.get(k, k) for k in KINDS if not k.startswith(("server_", "offline", "online", "toxic", "clear",
                                                                    "kill", "pause", "reopen"))]
    assert set(work) <= contract, set(work) - contract
    assert set(ALIASES.values()) <= set(PLAYS)


def test_fault_steps_are_injections_not_heals():
    assert is_fault({"do": "toxic"}) and is_fault({"do": "create_account", "kill_after": 0.1})
    assert not is_fault({"do": "online"}) and not is_fault({"do": "clear_toxics"}) and not is_fault({"do": "sync"})


# -- the supersession rule, as chaos runs found it needed ------------------------------------------
def _edit_history(between, before=lambda h: None) -> History:
    """``before(h)``, d1 edits a city, ``between(h)``, then the back office overwrites it with no conflict."""
    h = History()
    before(h)
    inv = h.invoke("d1", "edit_field", {"entity": "account", "record_id": "a1", "field": "city", "value": "York"})
    h.complete(inv, "ok", result={}, exit=0)
    between(h)
    inv = h.invoke("server", "backoffice_edit", {"entity": "account", "record_id": "a1", "field": "city",
                                                 "value": "Hull"})
    h.complete(inv, "ok", result={}, exit=0)
    final = {"format": "crm-export/1", "account": [{"id": "a1", "name": "A", "city": "Hull"}], "contact": [],
             "visit": [], "order": [], "note": [], "product": [], "conflicts": []}
    for where in ("d1", "server"):
        h.append(where, "export", "export", result=final)
    return h


def _do(*actions, outcome="ok"):
    def act(h):
        for action in actions:
            if action == "kill":
                h.append("d1", "fault", "kill")
                continue
            inv = h.invoke("d1", action, {})
            h.complete(inv, outcome, result={}, exit=0 if outcome == "ok" else None)
    return act


@pytest.mark.parametrize("before, between, lost", [
    (_do(), _do(), True),  # nothing pushed York: the overwrite without a conflict lost it
    (_do(), _do("sync", outcome="fail"), True),
    (_do(), _do("sync", outcome="unknown"), False),  # a sync killed after the server applied the push
    (_do(), _do("start_background_sync"), False),  # the agent pushed York before the back office edited
    (_do(), _do("start_background_sync", "kill"), False),
    (_do(), _do("start_background_sync", outcome="fail"), True),
    (_do("start_background_sync"), _do(), False),  # the agent was already running
    (_do("start_background_sync", "kill"), _do(), True),  # ... but a force-quit had ended it
    (_do("start_background_sync", "stop_background_sync"), _do(), True),
])
def test_an_edit_is_superseded_once_its_device_may_have_pushed_it(before, between, lost):
    found = checkers.lost_edit(_edit_history(between, before))
    assert bool(found) is lost
    assert all(a.evidence["value"] == "York" for a in found)


# -- real campaigns --------------------------------------------------------------------------------
def crm_certify(*args: str, timeout: float = CERTIFY_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", "certify", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


@REAL_RUN
def test_a_short_chaos_run_finds_no_anomaly_in_the_reference(tmp_path):
    proc = crm_certify("--sut", str(SUT / "reference.toml"), "--chaos", "--runs", "3", "--devices", "2",
                       "--steps", "14", "--seed", "21", "--report", str(tmp_path), "--json")
    cert = json.loads((tmp_path / "certificate.json").read_text())
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["passed"] and summary["runs"] == 3 and summary["anomalies"] == 0
    assert [r["seed"] for r in cert["runs"]] == [21, 22, 23] and all(r["passed"] for r in cert["runs"])
    s = cert["summary"]
    # 3 x 14 scheduled steps, and the 5 opening assignments of the reference's territories on top
    assert s["steps"] == 42 + 5 and s["step_kinds"]["assign"] >= 5
    assert s["actions"] > 42 and s["faults"] > 0 and s["fault_steps"] > 0
    assert proc.stderr.count("PASS  run") == 3
    assert "No anomaly" in (tmp_path / "certificate.html").read_text()
    assert "| PASS | 3 | 23 |" in (tmp_path / "certificate.md").read_text()


@REAL_RUN
def test_chaos_catches_the_fragile_sut_shrinks_it_and_the_replay_fails_again(tmp_path):
    # Seed 5's first three steps: a toxic on d2, an account created on d1, d1 syncs. The fragile
    # server renames the id on sync, so the lost write shows every time, however loaded the
    # machine: a schedule with a seeded SIGKILL can shrink to a step whose anomaly depends on
    # timing, and its replay would then pass now and then.
    proc = crm_certify("--sut", str(SUT / "fragile-sync.toml"), "--chaos", "--runs", "1", "--devices", "2",
                       "--steps", "3", "--seed", "5", "--shrink-budget", "6", "--report", str(tmp_path / "c"))
    assert proc.returncode == CHAOS_ANOMALY, proc.stderr[-3000:]
    assert "FAIL  run 1 seed 5" in proc.stderr
    cert = json.loads((tmp_path / "c" / "certificate.json").read_text())
    assert not cert["passed"] and cert["anomalies"] and cert["counterexamples"]
    example = cert["counterexamples"][0]
    assert [c["check"] for c in cert["counterexamples"]] == ["lost_write"]
    assert example["minimal_steps"] < example["original_steps"] == 3
    assert example["reproduced"] and example["shrink_runs"] <= 6
    replay_file = Path(example["replay_file"])
    assert replay_file.exists() and str(replay_file) in proc.stdout
    assert f"seed {example['seed']}" in proc.stderr
    saved = json.loads(replay_file.read_text())
    assert saved["steps"] == example["schedule"]["steps"] and saved["check"] == example["check"]

    again = crm_certify("--replay", str(replay_file), "--report", str(tmp_path / "r"), "--json")
    assert again.returncode == CHAOS_ANOMALY, again.stderr[-3000:]
    replayed = json.loads((tmp_path / "r" / "certificate.json").read_text())
    assert replayed["mode"] == "replay" and replayed["sut"]["profile"] == str(SUT / "fragile-sync.toml")
    assert replayed["replayed"]["steps"] == saved["steps"]
    assert example["check"] in json.loads(again.stdout)["checks"]


@REAL_RUN
def test_replay_plays_exactly_the_schedule_in_the_file(tmp_path):
    from harness.chaos import run_schedule
    from harness.profile import load_profile
    from harness.toxiproxy import ToxiproxyServer

    schedule = generate(8, devices=2, steps=10)
    path = schedule.save(tmp_path / "s.json")
    loaded = Schedule.load(path)
    with ToxiproxyServer(log_dir=tmp_path / "tp") as toxiproxy:
        result = run_schedule(loaded, profile=load_profile(SUT / "reference.toml"), toxiproxy=toxiproxy.client,
                              workdir=tmp_path / "run")
    assert not result.error and not result.anomalies, (result.error, result.anomalies)
    kinds = ("create_account", "edit_field", "write_note", "backoffice_edit")
    invoked = [(e.device, e.action, e.args.get("name") or e.args.get("value") or e.args.get("text"))
               for e in result.history if e.type == "invoke" and e.action in kinds]
    planned = [(s.get("device", "server"), s["do"], s.get("name") or s.get("value") or s.get("text"))
               for s in loaded.steps if s["do"] in kinds]
    assert invoked and _in_order(invoked, planned), "the file's actions, in the file's order"
    assert len(planned) - len(invoked) <= result.steps_skipped, "only steps naming a record never created are skipped"
    injected = [s.get("type", s["do"]) for s in loaded.steps if s["do"] in ("offline", "toxic", "kill", "server_kill")]
    assert _in_order(injected, [e.action for e in result.history if e.type == "fault"])


@REAL_RUN
def test_lines_added_to_one_order_on_two_devices_all_survive_on_the_reference(tmp_path):
    """An order taken on d1 grows a line on d2 while d1, offline, adds another: every replica
    ends with all three lines, once each, and the checkers judge those lines (a lost one would be
    a lost_write, a doubled one a duplicate)."""
    from harness.chaos import run_schedule
    from harness.profile import load_profile
    from harness.toxiproxy import ToxiproxyServer

    line = {"TEA-1": ("TEA-1", 2, "2.50"), "COLA-12": ("COLA-12", 5, "9.90"), "CRISPS-24": ("CRISPS-24", 1, "0.75")}
    steps = [
        {"do": "create_account", "device": "d1", "name": "Corner Store", "city": "Leeds", "ref": "a1"},
        {"do": "take_order", "device": "d1", "account": "a1", "sku": "TEA-1", "qty": 2, "price": "2.50", "ref": "o1"},
        {"do": "sync", "device": "d1"},
        {"do": "sync", "device": "d2"},
        {"do": "offline", "device": "d1"},
        {"do": "add_order_line", "device": "d1", "order": "o1", "sku": "COLA-12", "qty": 5, "price": "9.90"},
        {"do": "add_order_line", "device": "d2", "order": "o1", "sku": "CRISPS-24", "qty": 1, "price": "0.75"},
        {"do": "sync", "device": "d2"},
        {"do": "online", "device": "d1"},
    ]
    schedule = Schedule(1, ["d1", "d2"], steps)
    with ToxiproxyServer(log_dir=tmp_path / "tp") as toxiproxy:
        result = run_schedule(schedule, profile=load_profile(SUT / "reference.toml"), toxiproxy=toxiproxy.client,
                              workdir=tmp_path / "run")
    assert not result.error and not result.anomalies, (result.error, result.anomalies)
    adds = result.history.line_adds()
    assert [op.outcome for op in adds] == ["ok", "ok"]
    exports = result.history.final_exports()
    assert set(exports) == {"d1", "d2", "server"}
    for where, export in exports.items():
        (order,) = export["order"]
        got = sorted((x["sku"], x["quantity"], x["unit_price"]) for x in order["lines"])
        assert got == sorted(line.values()), where


@REAL_RUN
def test_an_offline_write_on_a_record_its_device_never_received_is_not_counted_refused(tmp_path):
    """The generator thinks every sync delivers; here d2's sync is cut (a reset on the way up), so
    d2 never gets d1's account, and d2's offline edit of it is refused (not found). The device's
    export taken right after shows it never held the record: not an offline write refused. The
    same edit of a record d2 holds is still judged (tests/test_checkers.py)."""
    from harness.chaos import run_schedule
    from harness.profile import load_profile
    from harness.toxiproxy import ToxiproxyServer

    steps = [
        {"do": "create_account", "device": "d1", "name": "Corner Store", "city": "Leeds", "ref": "a1"},
        {"do": "sync", "device": "d1"},
        {"do": "toxic", "device": "d2", "type": "reset_peer", "stream": "upstream", "name": "cut",
         "attributes": {"timeout": 0}},
        {"do": "sync", "device": "d2"},
        {"do": "offline", "device": "d2"},
        {"do": "clear_toxics", "device": "d2"},
        {"do": "edit_field", "device": "d2", "entity": "account", "record": "a1", "field": "city", "value": "York"},
    ]
    with ToxiproxyServer(log_dir=tmp_path / "tp") as toxiproxy:
        result = run_schedule(Schedule(1, ["d1", "d2"], steps), profile=load_profile(SUT / "reference.toml"),
                              toxiproxy=toxiproxy.client, workdir=tmp_path / "run")
    assert not result.error and not result.anomalies, (result.error, result.anomalies)
    (edit,) = result.history.operations("edit_field")
    assert edit.outcome == "fail" and result.history.offline_at("d2", edit.seq)
    (probe,) = [e for e in result.history if e.type == "probe"]
    assert probe.device == "d2" and probe.args == {"target": edit.args["record_id"]} and probe.seq > edit.done_seq
    assert probe.result["account"] == [], "d2 held nothing when it refused the edit"
    assert result.summary()["writes_on_records_never_received"] == 1
    assert [r["id"] for r in result.history.final_exports()["d2"]["account"]] == [edit.args["record_id"]]


def _in_order(part: list, whole: list) -> bool:
    """Whether ``part`` is a subsequence of ``whole``."""
    rest = iter(whole)
    return all(any(item == other for other in rest) for item in part)


@REAL_RUN
def test_a_campaign_starts_toxiproxy_again_when_it_died(tmp_path):
    from harness.chaos import Chaos
    from harness.profile import load_profile
    from harness.toxiproxy import ToxiproxyServer

    schedule = Schedule(1, ["d1"], [{"do": "create_account", "device": "d1", "name": "Nord", "city": "Lille",
                                     "ref": "a1"}, {"do": "sync", "device": "d1"}])
    notes = []
    with ToxiproxyServer(log_dir=tmp_path / "tp") as toxiproxy:
        toxiproxy.process.kill()
        result = Chaos(load_profile(SUT / "reference.toml"), toxiproxy, workdir=tmp_path, live=notes.append).run(
            schedule)
        assert toxiproxy.process.running
    assert not result.error and not result.anomalies and result.actions()["sync"] >= 3
    assert any("starting it again" in note for note in notes)
