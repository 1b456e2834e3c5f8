"""Chaos with territories: reps assigned, accounts moved and reps reassigned amid the faults.

The schedule parts are pure and fast; the short campaigns against the reference (and against a
mutant that ignores moves) run real servers and Toxiproxy (``process``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.schedule import Capabilities, generate
from tests.support import CERTIFY_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent


def _schedule_digest_in_a_process(hash_seed: str) -> str:
    code = ("import hashlib, json\n"
            "from harness.schedule import Capabilities, generate\n"
            "caps = [Capabilities(), Capabilities(server_faults=False, backoffice=False)]\n"
            "s = [generate(seed, devices=5, steps=40, capabilities=c).to_json()\n"
            "     for seed in range(990, 1010) for c in caps]\n"
            "print(hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest())\n")
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=120).stdout.strip()


@pytest.mark.process
def test_a_seed_gives_the_same_schedule_in_every_process_whatever_the_hash_seed():
    # The generator once walked a set of device names (the running agents): its order, and so the
    # schedule, changed with PYTHONHASHSEED, i.e. from one `crm certify` process to the next.
    assert len({_schedule_digest_in_a_process(h) for h in ("1", "2", "3", "4")}) == 1


REFERENCE = ROOT / "fixtures" / "sut" / "reference.toml"
TERRITORIAL = Capabilities(territories=True)
FAKED = ("name", "city", "outcome", "text", "value")  # Faker's data: its releases may change it


def _without_territories(tmp_path: Path) -> Path:
    """The reference profile without server.assign and server.rep_export."""
    text = REFERENCE.read_text(encoding="utf-8")
    kept = [line for line in text.splitlines() if not line.startswith(("assign =", "unassign =", "rep_export ="))]
    path = tmp_path / "no-territories.toml"
    path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return path


def _shape(schedule) -> str:
    steps = [{k: v for k, v in step.items() if k not in FAKED} for step in schedule.steps]
    return hashlib.sha256(json.dumps(steps, sort_keys=True).encode()).hexdigest()[:16]


# The schedules `crm certify --chaos` generated for the reference profile before territories came
# into chaos (commit 2eda3a7 with the PYTHONHASHSEED fix): every step but Faker's values, hashed.
BEFORE_TERRITORIES = {
    (1, 3, 20): "640b63824da1496a", (1, 5, 40): "395c5538a624ac04",
    (2, 3, 20): "4fa578ed73c768b0", (2, 5, 40): "de0782416d66f00f",
    (7, 3, 20): "ad9752aa35dc9117", (7, 5, 40): "7921c6f918390266",
    (42, 3, 20): "3ae2d0fe233c7297", (42, 5, 40): "3039944ad6bbc2aa",
    (1000, 3, 20): "baf1a5b85b550878", (1000, 5, 40): "981609a50638eeef",
}


def test_a_profile_with_assign_rep_export_and_backoffice_edit_gets_territory_steps(tmp_path):
    from harness.profile import load_profile

    reference = Capabilities.of(load_profile(REFERENCE))
    assert reference.territories and reference.unassign
    assert not Capabilities.of(load_profile(_without_territories(tmp_path))).territories
    assert not Capabilities().territories and not Capabilities().unassign
    text = REFERENCE.read_text(encoding="utf-8")
    (tmp_path / "no-unassign.toml").write_text(
        "\n".join(line for line in text.splitlines() if not line.startswith("unassign =")) + "\n", encoding="utf-8")
    caps = Capabilities.of(load_profile(tmp_path / "no-unassign.toml"))
    assert caps.territories and not caps.unassign


def test_a_profile_without_territories_gets_exactly_the_schedules_it_got_before(tmp_path):
    from harness.profile import load_profile

    caps = Capabilities.of(load_profile(_without_territories(tmp_path)))
    got = {(seed, devices, steps): _shape(generate(seed, devices=devices, steps=steps, capabilities=caps))
           for seed, devices, steps in BEFORE_TERRITORIES}
    assert got == BEFORE_TERRITORIES
    for seed in range(1, 60):
        kinds = generate(seed, devices=4, steps=30, capabilities=caps).counts()
        assert "assign" not in kinds and "move_account" not in kinds


def test_territory_schedules_open_with_reps_in_different_territories_then_move_and_reassign():
    moves = reassigns = 0
    for seed in range(1, 120):
        schedule = generate(seed, devices=3, steps=20, capabilities=TERRITORIAL)
        opening = []
        for step in schedule.steps:
            if step["do"] != "assign":
                break
            opening.append(step)
        assert len(schedule.steps) == 20 + len(opening), "the opening assignments come on top"
        territories = [s["territory"] for s in opening]
        assert len(set(territories)) == len(territories), f"seed {seed}: neighbours share a territory"
        created: set[str] = set()
        for number, step in enumerate(schedule.steps):
            if step.get("ref"):
                created.add(step["ref"])
            if step["do"] == "move_account":
                assert step["account"] in created and step["account"].startswith("a"), step
                assert set(step) == {"do", "account", "territory"} and step["territory"] in ("north", "south", "east")
                moves += 1
            if step["do"] == "assign" and number >= len(opening):
                assert step["device"] in schedule.devices
                reassigns += 1
        assert generate(seed, devices=3, steps=20, capabilities=TERRITORIAL).to_json() == schedule.to_json()
    assert moves >= 40 and reassigns >= 10, (moves, reassigns)


def test_with_server_unassign_reps_also_lose_territories_they_were_given():
    caps = Capabilities(territories=True, unassign=True)
    taken = 0
    for seed in range(1, 120):
        schedule = generate(seed, devices=3, steps=20, capabilities=caps)
        held: dict[str, set[str]] = {d: set() for d in schedule.devices}
        for step in schedule.steps:
            if step["do"] == "assign":
                held[step["device"]].add(step["territory"])
            elif step["do"] == "unassign":
                assert step["territory"] in held[step["device"]], (seed, step)
                held[step["device"]].discard(step["territory"])
                taken += 1
        assert "unassign" not in generate(seed, devices=3, steps=20, capabilities=TERRITORIAL).counts()
    assert taken >= 8, taken


def test_a_territory_schedule_round_trips_through_its_file_and_any_sub_list_is_a_schedule(tmp_path):
    from harness.schedule import Schedule

    schedule = next(s for s in (generate(seed, devices=3, steps=20, capabilities=TERRITORIAL) for seed in range(1, 50))
                    if {"assign", "move_account"} <= set(s.counts()))
    loaded = Schedule.load(schedule.save(tmp_path / "s.json"))
    assert loaded.to_json() == schedule.to_json()
    moves = [s for s in schedule.steps if s["do"] == "move_account"]
    part = schedule.with_steps(moves)  # a move names no device: the schedule keeps one to play on
    assert Schedule.from_json(part.to_json()).steps == moves and part.devices == ["d1"]
    assigned = [s for s in schedule.steps if s["do"] == "assign"]
    assert schedule.with_steps(assigned).devices == sorted({s["device"] for s in assigned})


def test_a_territory_counterexample_shrinks_to_the_steps_that_matter():
    from harness.shrink import ddmin

    # A stand-in for the real SUT: "fails" when an account a device created was moved to another
    # territory after that device's rep had been assigned (what the keep-moved-away mutant needs).
    def fails(steps):
        scope, creator = {}, {}
        for step in steps:
            if step["do"] == "assign":
                scope.setdefault(step["device"], step["territory"])
            elif step["do"] == "create_account":
                creator[step["ref"]] = step["device"]
            elif step["do"] == "move_account" and step["account"] in creator:
                home = scope.get(creator[step["account"]])
                if home and home != step["territory"]:
                    return True
        return False

    schedule = next(s for s in (generate(seed, devices=3, steps=30, capabilities=TERRITORIAL) for seed in range(1, 200))
                    if fails(s.steps) and len(s.steps) > 25)
    minimal = ddmin(schedule.steps, fails).items
    assert [s["do"] for s in minimal] == ["assign", "create_account", "move_account"], minimal


# -- real runs: the reference passes, the mutant that ignores moves away is caught ------------------
REAL_RUN = pytest.mark.conformance
CHAOS_ANOMALY = 31

# d1 (north) creates an account, logs a visit and syncs; offline, it edits the account's city while
# the back office moves the account to d2's territory (south); back online it must hand its edit in
# and drop the account. A second account of d1 goes to a territory nobody holds.
MOVES = [
    {"do": "assign", "device": "d1", "territory": "north"},
    {"do": "assign", "device": "d2", "territory": "south"},
    {"do": "create_account", "device": "d1", "name": "Corner Store", "city": "Leeds", "ref": "a1"},
    {"do": "log_visit", "device": "d1", "account": "a1", "outcome": "met the buyer", "ref": "v1"},
    {"do": "sync", "device": "d1"},
    {"do": "offline", "device": "d1"},
    {"do": "move_account", "account": "a1", "territory": "south"},
    {"do": "edit_field", "device": "d1", "entity": "account", "record": "a1", "field": "city", "value": "York"},
    {"do": "online", "device": "d1"},
    {"do": "sync", "device": "d2"},
    {"do": "create_account", "device": "d1", "name": "Café Müller", "city": "Hull", "ref": "a2"},
    {"do": "sync", "device": "d1"},
    {"do": "move_account", "account": "a2", "territory": "east"},
]


# d1's rep holds north and south; d1 creates an account (in north, its default) and syncs; offline,
# it logs a visit there while its rep loses north. Back online its visit must reach the server and
# the account leave d1; d2's rep, with no territory, holds the whole organisation.
UNASSIGN = [
    {"do": "assign", "device": "d1", "territory": "north"},
    {"do": "assign", "device": "d1", "territory": "south"},
    {"do": "create_account", "device": "d1", "name": "Corner Store", "city": "Leeds", "ref": "a1"},
    {"do": "sync", "device": "d1"},
    {"do": "offline", "device": "d1"},
    {"do": "unassign", "device": "d1", "territory": "north"},
    {"do": "log_visit", "device": "d1", "account": "a1", "outcome": "met the buyer", "ref": "v1"},
    {"do": "online", "device": "d1"},
]


def _play(profile_path: Path, steps: list[dict], tmp_path: Path):
    from harness.chaos import run_schedule
    from harness.profile import load_profile
    from harness.schedule import Schedule
    from harness.toxiproxy import ToxiproxyServer

    with ToxiproxyServer(log_dir=tmp_path / "tp") as toxiproxy:
        return run_schedule(Schedule(1, ["d1", "d2"], steps), profile=load_profile(profile_path),
                            toxiproxy=toxiproxy.client, workdir=tmp_path / "run")


def _accounts(export: dict) -> dict[str, tuple]:
    return {a["name"]: (a.get("territory"), a.get("city")) for a in export.get("account", [])}


@pytest.fixture(scope="module")
def keep_moved_away(tmp_path_factory) -> Path:
    """The mutant of the reference whose devices ignore a move away (fixtures/mutants)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mutants_build", ROOT / "fixtures" / "mutants" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build.build("keep-moved-away", tmp_path_factory.mktemp("keep-moved-away"))


@REAL_RUN
def test_the_reference_drops_what_moved_away_and_keeps_the_write_made_before(tmp_path):
    result = _play(REFERENCE, MOVES, tmp_path)
    assert not result.error and not result.anomalies, (result.error, result.anomalies)
    exports = result.history.final_exports()
    assert _accounts(exports["d1"]) == {}
    assert _accounts(exports["d2"]) == {"Corner Store": ("south", "York")}  # d1's offline edit, honoured
    assert _accounts(exports["server"]) == {"Corner Store": ("south", "York"), "Café Müller": ("east", "Hull")}
    assert set(result.history.rep_exports()) == {"d1", "d2"}, "each device judged against its rep's export"


@REAL_RUN
def test_the_reference_honours_an_offline_visit_on_an_account_its_rep_lost(tmp_path):
    result = _play(REFERENCE, UNASSIGN, tmp_path)
    assert not result.error and not result.anomalies, (result.error, result.anomalies)
    exports = result.history.final_exports()
    assert _accounts(exports["d1"]) == {} and exports["d1"].get("visit", []) == []
    assert _accounts(exports["d2"]) == _accounts(exports["server"]) == {"Corner Store": ("north", "Leeds")}
    assert [v["outcome"] for v in exports["server"]["visit"]] == ["met the buyer"]
    assert [e.action for e in result.history if e.type == "ok" and e.device == "server"][:3] == \
        ["assign", "assign", "unassign"]


@REAL_RUN
def test_a_device_that_keeps_what_moved_away_is_caught(tmp_path, keep_moved_away):
    result = _play(keep_moved_away, MOVES, tmp_path)
    assert not result.error, result.error
    assert "divergence" in result.checks, result.anomalies
    assert any(a.check == "divergence" and a.evidence.get("device") == "d1" for a in result.anomalies)


def crm_certify(*args: str, timeout: float = CERTIFY_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", "certify", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


@REAL_RUN
def test_a_chaos_campaign_with_moves_passes_the_reference(tmp_path):
    # Seeds 15 and 16, 2 devices, 12 steps: both open with assignments, seed 15 moves an account
    # d2 synced, amid an airplane mode (measured: 13 s).
    proc = crm_certify("--sut", str(REFERENCE), "--chaos", "--runs", "2", "--devices", "2", "--steps", "12",
                       "--seed", "15", "--report", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cert = json.loads((tmp_path / "certificate.json").read_text())
    kinds = cert["summary"]["step_kinds"]
    assert kinds.get("assign", 0) >= 2 and kinds.get("move_account", 0) >= 1, kinds
    assert cert["summary"]["action_kinds"].get("assign", 0) >= 2
    assert cert["passed"] and cert["summary"]["anomalies"] == 0


@REAL_RUN
def test_a_chaos_campaign_with_moves_catches_the_mutant_and_its_replay_fails_again(tmp_path, keep_moved_away):
    proc = crm_certify("--sut", str(keep_moved_away), "--chaos", "--runs", "1", "--devices", "2", "--steps", "12",
                       "--seed", "15", "--shrink-budget", "0", "--report", str(tmp_path / "c"), "--json")
    assert proc.returncode == CHAOS_ANOMALY, proc.stderr[-3000:]
    assert "divergence" in json.loads(proc.stdout)["checks"]
    # The counterexample the campaign shrank it to (budget 10, measured), replayed from its file.
    replay = tmp_path / "chaos-divergence-seed-15.json"
    replay.write_text(json.dumps({
        "format": "crm-chaos-schedule/1", "seed": 15, "devices": ["d1", "d2"], "check": "divergence",
        "steps": [{"do": "assign", "device": "d2", "territory": "south"},
                  {"do": "create_account", "device": "d2", "name": "Gnatz Roht AG & Co. OHG", "city": "Haldensleben",
                   "ref": "a2"},
                  {"do": "sync", "device": "d2"},
                  {"do": "move_account", "account": "a2", "territory": "north"}]}), encoding="utf-8")
    again = crm_certify("--sut", str(keep_moved_away), "--replay", str(replay), "--report", str(tmp_path / "r"),
                        "--json")
    assert again.returncode == CHAOS_ANOMALY, again.stderr[-3000:]
    assert "divergence" in json.loads(again.stdout)["checks"]
