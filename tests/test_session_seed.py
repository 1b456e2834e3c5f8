"""The same seed gives the same fault schedule and data; another seed or scenario gives others."""

from __future__ import annotations

from pathlib import Path

from harness.profile import load_profile
from harness.session import Session

PROFILE = load_profile(Path(__file__).resolve().parent.parent / "fixtures" / "sut" / "reference.toml")


def schedule(tmp_path: Path, seed: int, scenario: str) -> list:
    session = Session(profile=PROFILE, toxiproxy=None, workdir=tmp_path, seed=seed, scenario=scenario)
    return [round(session.seeded_delay(0.05, 1.5), 6) for _ in range(5)] + [session.faker.company(),
                                                                            session.faker.city()]


def test_same_seed_same_schedule(tmp_path):
    assert schedule(tmp_path / "a", 7, "killed while saving") == schedule(tmp_path / "b", 7, "killed while saving")


def test_other_seed_or_scenario_other_schedule(tmp_path):
    base = schedule(tmp_path / "a", 7, "killed while saving")
    assert schedule(tmp_path / "b", 8, "killed while saving") != base
    assert schedule(tmp_path / "c", 7, "killed while syncing") != base
