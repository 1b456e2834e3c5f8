"""Times without an offset are local time (the machine's zone, TZ, or `crm --tz ZONE`), stored with
their offset and shown back in local time (issue 14 item 5)."""

from __future__ import annotations

import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from crm.domain import entity as entity_spec
from crm.domain import in_zone, localize_datetime, normalize_value
from crm.errors import ValidationError
from tests.support import crm_inprocess, ok_inprocess

NEW_YORK = ZoneInfo("America/New_York")
AT = entity_spec("visit").field("at")
runner = CliRunner()


# -- the pure rules -------------------------------------------------------------------------------
@pytest.mark.parametrize(("given", "stored"), [
    ("2026-03-01T10:00:00+01:00", "2026-03-01T10:00:00+01:00"),  # the offset given is kept
    ("2026-03-01T10:00:00-05:00", "2026-03-01T10:00:00-05:00"),
    ("2026-03-01T10:00:00Z", "2026-03-01T10:00:00Z"),
    ("2026-03-01T10:00:00+00:00", "2026-03-01T10:00:00Z"),  # UTC is written one way
    ("2026-03-01T10:00:00.750+05:30", "2026-03-01T10:00:00+05:30"),
    ("2026-03-01T10:00", "2026-03-01T10:00:00Z"),  # no offset reaching the engine: UTC, as before
])
def test_a_datetime_is_stored_with_its_offset(given: str, stored: str) -> None:
    assert normalize_value(AT, given) == stored
    assert normalize_value(AT, stored) == stored  # canonical: what the server admits back


@pytest.mark.parametrize(("given", "zone", "stored"), [
    ("2026-12-01T10:00", "America/New_York", "2026-12-01T10:00:00-05:00"),  # the issue's case
    ("2026-07-01T10:00", "America/New_York", "2026-07-01T10:00:00-04:00"),  # summer time
    ("2026-12-01T10:00", "Asia/Kolkata", "2026-12-01T10:00:00+05:30"),
    ("2026-12-01T10:00", "UTC", "2026-12-01T10:00:00Z"),
    ("2026-12-01T10:00:00+01:00", "America/New_York", "2026-12-01T10:00:00+01:00"),  # an offset wins
    ("2026-12-01T10:00:00Z", "America/New_York", "2026-12-01T10:00:00Z"),
    # DST ends: 01:30 happens twice in New York; the first (summer time) is meant
    ("2026-11-01T01:30", "America/New_York", "2026-11-01T01:30:00-04:00"),
    ("2026-11-01T02:30", "America/New_York", "2026-11-01T02:30:00-05:00"),
])
def test_a_time_without_offset_is_local_time_in_the_zone(given: str, zone: str, stored: str) -> None:
    assert localize_datetime(given, ZoneInfo(zone)) == stored


def test_a_local_time_that_never_happened_is_refused() -> None:
    with pytest.raises(ValidationError, match="does not exist in America/New_York"):
        localize_datetime("2026-03-08T02:30", NEW_YORK)  # clocks go from 02:00 to 03:00


def test_something_that_is_no_time_is_left_for_the_domain_to_refuse() -> None:
    assert localize_datetime("next tuesday", NEW_YORK) == "next tuesday"


@pytest.mark.parametrize(("stored", "zone", "shown"), [
    ("2026-12-01T15:00:00Z", "America/New_York", "2026-12-01T10:00:00-05:00"),
    ("2026-12-01T10:00:00-05:00", "Europe/London", "2026-12-01T15:00:00Z"),
    ("2026-07-01T10:00:00Z", "Europe/London", "2026-07-01T11:00:00+01:00"),
])
def test_a_stored_time_is_shown_in_the_zone(stored: str, zone: str, shown: str) -> None:
    assert in_zone(stored, ZoneInfo(zone)) == shown


# -- the command line -----------------------------------------------------------------------------
def crm(home: Path, *args: str, tz: str | None = "UTC"):
    return crm_inprocess(*args, home=home, env={"TZ": tz} if tz is not None else {})


def ok_json(home: Path, *args: str, tz: str | None = "UTC"):
    return ok_inprocess(home, *args, env={"TZ": tz} if tz is not None else {})


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    assert crm(path, "init", "--rep", "rep-1").exit_code == 0
    return path


@pytest.fixture
def account(home: Path) -> str:
    return ok_json(home, "account", "add", "--name", "Corner Store 42")["id"]


def outbox(home: Path) -> int:
    return ok_json(home, "outbox")["pending"]


def test_the_issue_case_under_tz_new_york(home: Path, account: str) -> None:
    visit = ok_json(home, "visit", "log", "--account", account, "--outcome", "demo", "--at", "2026-12-01T10:00",
                    tz="America/New_York")
    assert visit["at"] == "2026-12-01T10:00:00-05:00"
    exported = ok_json(home, "export")["visit"][0]["at"]
    assert exported == "2026-12-01T10:00:00-05:00", "stored with its offset, not as 10:00 UTC"


def test_tz_option_overrides_the_machine_zone(home: Path, account: str) -> None:
    visit = ok_json(home, "--tz", "Asia/Tokyo", "visit", "log", "--account", account, "--outcome", "demo",
                    "--at", "2026-12-01T10:00", tz="America/New_York")
    assert visit["at"] == "2026-12-01T10:00:00+09:00"


def test_edits_take_local_time_too(home: Path, account: str) -> None:
    visit = ok_json(home, "visit", "log", "--account", account, "--outcome", "demo")["id"]
    edited = ok_json(home, "visit", "edit", visit, "--set", "at=2026-07-01T09:00", tz="Europe/London")
    assert edited["at"] == "2026-07-01T09:00:00+01:00"
    order = ok_json(home, "order", "add", "--account", account, "--line", "SKU-1:1:1.00")["id"]
    edited = ok_json(home, "--tz", "Europe/Paris", "order", "edit", order, "--set", "placed_at=2026-12-24T18:00")
    assert edited["placed_at"] == "2026-12-24T18:00:00+01:00"


def test_times_are_shown_back_in_local_time_and_json_is_unchanged(home: Path, account: str) -> None:
    ok_json(home, "visit", "log", "--account", account, "--outcome", "demo", "--at", "2026-12-01T15:00:00Z")
    table = crm(home, "visit", "ls", tz="America/New_York")
    assert table.exit_code == 0 and "2026-12-01T10:00:00-05:00" in table.stdout, table.stdout
    assert "2026-12-01T15:00:00Z" not in table.stdout
    assert ok_json(home, "visit", "ls", tz="America/New_York")[0]["at"] == "2026-12-01T15:00:00Z"
    tokyo = crm(home, "--tz", "Asia/Tokyo", "visit", "ls", tz="America/New_York")
    assert "2026-12-02T00:00:00+09:00" in tokyo.stdout


def test_order_show_and_ls_show_placed_at_in_local_time(home: Path, account: str) -> None:
    order = ok_json(home, "order", "add", "--account", account, "--line", "SKU-1:1:1.00")["id"]
    ok_json(home, "order", "edit", order, "--set", "placed_at=2026-12-01T15:00:00Z")
    for args in (("order", "show", order), ("order", "ls")):
        shown = crm(home, *args, tz="America/New_York")
        assert shown.exit_code == 0 and "2026-12-01T10:00:00-05:00" in shown.stdout, shown.stdout


def test_a_bad_zone_is_a_usage_error_and_nothing_is_written(home: Path, account: str) -> None:
    before = outbox(home)
    result = crm(home, "--tz", "Mars/Olympus_Mons", "visit", "log", "--account", account, "--outcome", "demo",
                 "--at", "2026-12-01T10:00")
    assert result.exit_code == 2 and "Mars/Olympus_Mons" in result.stderr and "Traceback" not in result.stderr
    assert outbox(home) == before
    bad_env = crm(home, "visit", "log", "--account", account, "--outcome", "demo", "--at", "2026-12-01T10:00",
                  tz="Not/AZone")
    assert bad_env.exit_code == 2 and "TZ" in bad_env.stderr
    assert outbox(home) == before
    as_json = crm(home, "--tz", "../etc/passwd", "visit", "ls", "--json")
    assert as_json.exit_code == 2 and json.loads(as_json.stderr)["error"] == "usage"


def test_a_local_time_in_the_dst_gap_is_invalid_and_nothing_is_written(home: Path, account: str) -> None:
    before = outbox(home)
    result = crm(home, "visit", "log", "--account", account, "--outcome", "demo", "--at", "2026-03-08T02:30",
                 tz="America/New_York")
    assert result.exit_code == 3 and "does not exist" in result.stderr
    assert outbox(home) == before


def test_the_machine_zone_is_used_when_tz_is_not_set(home: Path, account: str, monkeypatch) -> None:
    monkeypatch.delenv("TZ", raising=False)
    from cli.common import machine_zone

    zone = machine_zone()
    visit = ok_json(home, "visit", "log", "--account", account, "--outcome", "demo", "--at", "2026-12-01T10:00",
                    tz=None)
    assert visit["at"] == localize_datetime("2026-12-01T10:00", zone)
