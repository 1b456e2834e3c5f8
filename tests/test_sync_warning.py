"""Warnings where the rep looks: when syncs have failed for too long, or the server refused the token,
every write says so on stderr, once per command (issue 14 item 6)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from crm import Device, agent
from crm.store import MetaKey

ORG = "acme"
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
runner = CliRunner()


def crm(home: Path, *args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, ["--home", str(home), *args], env=env)


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("crm: warning:")]


def failing(home: Path, since: datetime, kind: str, error: str = "the sync server could not be reached") -> None:
    device = Device.open(home)
    try:
        stamp = since.strftime("%Y-%m-%dT%H:%M:%SZ")
        device.set_settings({MetaKey.SYNC_FAILING: f"{stamp} {kind}", MetaKey.LAST_SYNC_ERROR: f"{stamp} {error}"})
    finally:
        device.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    assert crm(path, "init", "--rep", "rep-1").exit_code == 0
    return path


# -- the rule -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("ago", "kind", "warns"), [
    (None, "", False),                                     # syncing fine (or never tried)
    (timedelta(hours=2), "unreachable", False),            # offline for a while: normal in the field
    (timedelta(hours=24), "unreachable", False),           # exactly the threshold: not yet
    (timedelta(hours=25), "unreachable", True),
    (timedelta(days=3), "server_error", True),
    (timedelta(minutes=1), "auth_refused", True),          # a refused token never fixes itself: at once
])
def test_when_a_device_warns(home: Path, ago, kind: str, warns: bool) -> None:
    if ago is not None:
        failing(home, NOW - ago, kind)
    device = Device.open(home)
    try:
        warning = device.sync_warning(now=NOW, warn_after_s=24 * 3600)
    finally:
        device.close()
    assert (warning is not None) == warns, warning
    if kind == "auth_refused":
        assert "token" in warning and "crm login" in warning
    elif warns:
        assert "crm sync" in warning and "could not be reached" in warning


# -- where the rep looks ----------------------------------------------------------------------------
def test_every_write_warns_once_on_stderr_and_json_stdout_stays_clean(home: Path) -> None:
    failing(home, datetime.now(UTC) - timedelta(days=2), "unreachable")
    added = crm(home, "account", "add", "--name", "Corner Store", "--json")
    assert added.exit_code == 0
    assert json.loads(added.stdout)["name"] == "Corner Store", "stdout holds exactly the JSON"
    (line,) = warnings(added.stderr)
    assert "sync has failed for 2 days" in line and "1 change waiting" in line
    account = json.loads(added.stdout)["id"]
    for args in (("account", "edit", account, "--city", "Leeds"),
                 ("visit", "log", "--account", account, "--outcome", "demo"),
                 ("order", "add", "--account", account, "--line", "SKU-1:1:1.00")):
        result = crm(home, *args)
        assert result.exit_code == 0 and len(warnings(result.stderr)) == 1, (args, result.stderr)
        assert "warning" not in result.stdout


def test_reads_and_failed_writes_do_not_warn(home: Path) -> None:
    failing(home, datetime.now(UTC) - timedelta(days=2), "unreachable")
    for args in (("account", "ls"), ("export",), ("outbox",)):
        result = crm(home, *args)
        assert result.exit_code == 0 and warnings(result.stderr) == [], args
    refused = crm(home, "account", "add", "--name", "")
    assert refused.exit_code == 3 and warnings(refused.stderr) == []


def test_the_threshold_is_a_setting(home: Path) -> None:
    failing(home, datetime.now(UTC) - timedelta(hours=5), "unreachable")
    assert warnings(crm(home, "account", "add", "--name", "A").stderr) == []
    assert len(warnings(crm(home, "account", "add", "--name", "B",
                            env={"CRM_SYNC_WARN_AFTER_H": "4"}).stderr)) == 1
    assert warnings(crm(home, "account", "add", "--name", "C", env={"CRM_SYNC_WARN_AFTER_H": "6"}).stderr) == []


def test_login_with_a_new_token_clears_a_refused_token(home: Path) -> None:
    failing(home, datetime.now(UTC), "auth_refused", "the server refused the device token")
    assert "crm login" in warnings(crm(home, "account", "add", "--name", "A").stderr)[0]
    assert crm(home, "login", "--server", "http://127.0.0.1:9", "--token", "new-token").exit_code == 0
    assert warnings(crm(home, "account", "add", "--name", "B").stderr) == []


# -- recorded by every sync, the background agent's included ------------------------------------------
def test_a_revoked_token_warns_after_a_manual_sync_and_a_good_sync_clears_it(tmp_path, server) -> None:
    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    failing(d1, datetime.now(UTC) - timedelta(days=3), "unreachable")  # back in range after days away
    server.ok("account", "add", "--name", "Corner Store", home=d1)
    server.ok("sync", home=d1)
    assert warnings(server.crm("account", "add", "--name", "Back", home=d1).stderr) == [], "a sync clears it"
    server.ok("server", "revoke", "--data", str(server.data), "--org", ORG, "--rep", "d1")
    assert server.crm("sync", home=d1).code == 21
    written = server.crm("account", "add", "--name", "Farm Shop", "--json", home=d1)
    assert written.code == 0 and json.loads(written.stdout)["name"] == "Farm Shop"
    (line,) = warnings(written.stderr)
    assert "refused this device's token" in line and "crm login" in line

    token = server.add_rep(ORG, "d1-again")
    server.ok("login", "--server", server.url, "--token", token, home=d1)
    server.ok("sync", home=d1)
    assert warnings(server.crm("account", "add", "--name", "Third", home=d1).stderr) == []


@pytest.mark.parametrize("server", ["app"], indirect=True)
def test_the_background_agent_records_a_refused_token_and_writes_warn(tmp_path, server) -> None:
    home = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    server.ok("server", "revoke", "--data", str(server.data), "--org", ORG, "--rep", "d1")
    crm(home, "account", "add", "--name", "Corner Store")
    stop = threading.Event()
    states: list[str] = []

    def on_state(info: dict) -> None:
        states.append(info["state"])
        if info["state"] == "auth_refused":
            stop.set()  # one failed sync is what this test needs

    runner_thread = threading.Thread(target=agent.run, args=(home,), kwargs={"stop": stop, "on_state": on_state})
    runner_thread.start()
    runner_thread.join(timeout=120)
    stop.set()
    runner_thread.join()
    assert "auth_refused" in states, states
    (line,) = warnings(crm(home, "note", "add", "--account", json.loads(
        crm(home, "account", "ls", "--json").stdout)[0]["id"], "--text", "hello").stderr)
    assert "token" in line
