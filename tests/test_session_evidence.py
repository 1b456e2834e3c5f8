"""A failed scenario is explained by a named check: work a step waited for in vain, or that never
reached quiescence, is a ``stuck`` anomaly next to the checkers' findings (harness/session.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import session as session_module
from harness.profile import load_profile
from harness.session import ScenarioFailure, Session

PROFILE = load_profile(Path(__file__).resolve().parent.parent / "fixtures" / "sut" / "reference.toml")


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A session with one reachable device and no process: the server's view and the device's
    outbox are stubbed, the final exports are not taken."""
    world = Session(profile=PROFILE, toxiproxy=None, workdir=tmp_path, seed=1, scenario="stuck")
    world.devices["phone"] = SimpleNamespace(name="phone", offline=False)
    world.missing = {"a1": "account"}
    monkeypatch.setattr(world, "missing_on_server", lambda name=None: dict(world.missing))
    monkeypatch.setattr(world, "_final_exports", lambda: None)
    monkeypatch.setattr(session_module.time, "sleep", lambda seconds: None)
    return world


def test_work_still_queued_past_a_steps_deadline_is_stuck(world, monkeypatch):
    monkeypatch.setattr(world, "quiet_pending", lambda name: 1)
    with pytest.raises(ScenarioFailure, match="after 0 s the server lacks 1"):
        world.wait_until_on_server(0)
    assert [(a.check, a.evidence["missing"]) for a in world.stuck] == [("stuck", {"a1": "account"})]
    monkeypatch.setattr(world, "quiesce", lambda: None)  # a later sync delivers it all...
    world.missing = {}
    assert [a.check for a in world.evidence()] == ["stuck"]  # ...and the failure is still explained


def test_work_missing_with_nothing_pending_is_left_to_lost_write(world, monkeypatch):
    monkeypatch.setattr(world, "quiet_pending", lambda name: 0)
    with pytest.raises(ScenarioFailure, match="nothing is pending on any device"):
        world.wait_until_on_server(60)
    assert world.stuck == []  # lost, not late: the checkers name it from the final exports


def test_a_final_check_that_cannot_quiesce_says_stuck(world, monkeypatch):
    def never(**kwargs):
        raise ScenarioFailure("no quiescence within 90 s: still pending {'phone': 3}")

    monkeypatch.setattr(world, "quiesce", never)
    with pytest.raises(ScenarioFailure):
        world.final_check()  # the scenario's last step fails with this...
    assert [(a.check, a.evidence) for a in world.evidence()] == [("stuck", {"step": "quiesce"})]  # ...explained


def test_a_toxiproxy_restart_cuts_the_links_of_online_devices_and_leaves_airplane_mode_alone(world):
    """A restart gives a device in airplane mode its proxy back disabled: its timeline must not
    show it back online (the checkers read offline windows from it)."""
    world.devices["plane"] = SimpleNamespace(name="plane", offline=False)
    world.history.append("plane", "fault", "offline", detail="proxy disabled")
    world.devices["plane"].offline = True
    world._links_cut("Toxiproxy restarted: a call hung")
    later = world.history.append("phone", "heal", "clock_skew", detail="after the restart")
    assert world.history.offline_at("plane", later.seq)
    assert not world.history.offline_at("phone", later.seq)
    cut = [e for e in world.history.events if "links cut" in (e.detail or "")]
    assert [e.device for e in cut] == ["phone"]
