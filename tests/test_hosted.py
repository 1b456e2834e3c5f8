"""Issue 13 item 9: a hosted vendor. A profile names the vendor's own server (``[server] url``, e.g.
staging) instead of a command that starts one. Device-side faults still apply through Toxiproxy in
front of it; scenarios that crash, restart, back up or restore the server are *not exercised*, and
the certificate says which level claim that limits (docs/levels.md, "Hosted servers")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import certify as certify_mod
from harness.driver import HostedServer, server_for
from harness.levels import certify_level, claim_limits
from harness.profile import ProfileError, load_profile
from harness.report import mark, markdown, page
from harness.schedule import Capabilities, generate
from tests.support import CERTIFY_TIMEOUT, reference_profile_with
from tests.test_certify_partial import OFFLINE_CREATE, certificate, parse

ROOT = Path(__file__).resolve().parent.parent


def hosted_profile(tmp_path: Path, url: str, data_dir: Path | str = "/srv/crm", **extra) -> Path:
    """The reference profile made hosted: the server at ``url`` is not the harness's to start; its
    admin commands (the vendor's provisioning tool) work on ``data_dir``, as a vendor's would on
    its staging server."""
    def change(data: dict) -> None:
        data["server"] = {
            "url": url,
            "ready": "{server_url}/v1/health",
            "provision": ["crm", "server", "add-rep", "--data", str(data_dir), "--org", "{org}", "--rep", "{rep}",
                          "--json"],
            "backoffice_edit": ["crm", "server", "edit", "--data", str(data_dir), "{entity}", "{record_id}",
                                "--set", "{field}={value}", "--json"],
            "export": ["crm", "server", "export", "--data", str(data_dir), "--org", "{org}", "--json"],
            **extra,
        }

    return reference_profile_with(tmp_path, "hosted", change)


# -- the profile -------------------------------------------------------------------------------------
def test_a_hosted_profile_names_a_url_and_starts_nothing(tmp_path):
    profile = load_profile(hosted_profile(tmp_path, "https://staging.vendor.example/api/"))
    assert profile.hosted and profile.server_url == "https://staging.vendor.example/api"
    assert profile.server_start is None
    assert profile.ready_url() == "https://staging.vendor.example/api/v1/health"
    server = server_for(profile, server_dir=tmp_path / "s")
    assert isinstance(server, HostedServer) and server.running
    assert server.address == "staging.vendor.example:443"  # Toxiproxy's upstream
    assert server.device_url("127.0.0.1:40001") == "https://127.0.0.1:40001/api"  # through the device's proxy
    assert server.command(profile.server_export, org="acme-1")[-3:] == ["--org", "acme-1", "--json"]
    assert server_for(load_profile(hosted_profile(tmp_path, "http://10.0.0.5:8080")), server_dir=tmp_path).address \
        == "10.0.0.5:8080"
    assert not load_profile(ROOT / "fixtures" / "sut" / "reference.toml").hosted


@pytest.mark.parametrize("extra, key, words", [
    ({"start": ["crm", "server", "serve"]}, "server.start", "is not started"),
    ({"restore": ["crm", "server", "restore"]}, "server.restore", "restored by the harness"),
    ({"export": ["crm", "server", "export", "--data", "{server_dir}", "--org", "{org}"]}, "server.export",
     "{server_dir} has no value here"),
])
def test_a_hosted_profile_cannot_ask_for_what_the_harness_cannot_do_to_a_hosted_server(tmp_path, extra, key, words):
    with pytest.raises(ProfileError) as caught:
        load_profile(hosted_profile(tmp_path, "http://10.0.0.5:8080", **extra))
    assert caught.value.key == key and words in str(caught.value)


@pytest.mark.parametrize("url", ["staging.vendor.example", "ftp://x.example", "http://", "http://h:0", 5])
def test_a_hosted_url_must_be_an_http_url(tmp_path, url):
    with pytest.raises(ProfileError) as caught:
        load_profile(hosted_profile(tmp_path, url))
    assert caught.value.key == "server.url"


def test_the_server_commands_of_a_local_server_may_use_its_own_url(tmp_path):
    def change(data: dict) -> None:
        data["server"]["export"] = ["crm", "server", "export", "--url", "{server_url}", "--org", "{org}"]

    profile = load_profile(reference_profile_with(tmp_path, "local", change))
    server = server_for(profile, server_dir=tmp_path / "s")
    assert server.command(profile.server_export, org="o")[3:5] == ["--url", f"http://127.0.0.1:{server.port}"]


def test_chaos_schedules_for_a_hosted_server_never_crash_it(tmp_path):
    caps = Capabilities.of(load_profile(hosted_profile(tmp_path, "http://10.0.0.5:8080")))
    assert not caps.server_faults
    steps = [s["do"] for seed in range(1, 40) for s in generate(seed, devices=3, steps=20, capabilities=caps).steps]
    assert "server_kill" not in steps and "kill" in steps and "offline" in steps
    local = [s["do"] for seed in range(1, 40) for s in generate(seed, devices=3, steps=20).steps]
    assert "server_kill" in local
    assert generate(7, capabilities=Capabilities()).steps == generate(7).steps  # local seeds play as before


# -- the level claim -----------------------------------------------------------------------------------
HOSTED_WHY = "not exercisable on a hosted server: the SUT's server is the vendor's own"
CRASH = {"name": "The server is killed right after a sync said everything was saved", "test": "test_crash",
         "feature": "Sync survives a server crash", "passed": False, "inconclusive": HOSTED_WHY,
         "not_exercisable": True, "limit": "hosted", "offline_create_refused": None, "anomalies": [],
         "duration_s": 1.0}


def test_hosted_not_exercised_scenarios_leave_level_3_standing_but_named():
    level, reasons = certify_level([OFFLINE_CREATE, CRASH])
    assert level == 3 and "1 not exercised (hosted)" in reasons[0] and CRASH["name"] in reasons[0]
    limits = claim_limits([OFFLINE_CREATE, CRASH])
    assert [(x["limit"], x["scenarios"]) for x in limits] == [("hosted", [CRASH["name"]])]
    assert "without server-crash and server-restore evidence" in limits[0]["what"]
    fields = certify_mod.level_fields([OFFLINE_CREATE, CRASH], None)
    assert fields["level_name"] == "offline-first, hosted: server faults not exercised"


def test_an_inconclusive_scenario_still_caps_the_level_and_a_failure_still_counts():
    clock = {**CRASH, "name": "clock", "limit": "", "inconclusive": "not exercisable: no clock_skew_env"}
    assert certify_level([OFFLINE_CREATE, CRASH, clock])[0] == 2
    found = {**CRASH, "anomalies": [{"check": "lost_write", "message": "m", "evidence": {}}]}
    assert certify_level([OFFLINE_CREATE, found])[0] == 2  # a limit never hides a finding
    assert claim_limits([OFFLINE_CREATE, found]) == []
    assert claim_limits([OFFLINE_CREATE]) == [] and certify_level([OFFLINE_CREATE])[1] == [
        "all 1 scenarios passed with no anomaly"]


def test_the_certificate_says_not_exercised_and_what_the_claim_was_made_without(monkeypatch):
    cert = certificate([OFFLINE_CREATE, CRASH], None, monkeypatch)
    assert mark(CRASH) == "NOT EXERCISED"
    md = markdown(cert)
    assert "level 3 (offline-first, hosted: server faults not exercised)" in md
    assert "## What this claim was made without" in md and CRASH["name"] in md.split("## What this claim")[1]
    assert "| NOT EXERCISED |" in md
    html = page(cert)
    parse(html)
    assert "What this claim was made without: hosted: server faults not exercised" in html
    assert '<p class="level">Level 3*</p>' in html  # the badge points at it
    assert "A hosted server (profile [server] url): scenarios that" in html  # in the plain words at the top


# -- end to end: the reference server started by the test, as if it were the vendor's staging ------------
@pytest.fixture
def staging(tmp_path):
    """A reference server the harness did not start: the test runs it, the profile names its URL."""
    from harness.ports import free_port
    from harness.processes import ManagedProcess

    data, port = tmp_path / "staging-data", free_port()
    data.mkdir()
    server = ManagedProcess([sys.executable, "-m", "cli.main", "server", "serve", "--data", str(data),
                             "--host", "127.0.0.1", "--port", str(port)], name="staging", log_dir=tmp_path)
    server.start(ready_url=f"http://127.0.0.1:{port}/v1/health", ready_timeout=30)
    try:
        yield f"http://127.0.0.1:{port}", data
    finally:
        server.stop()


def _crm(*args: str, timeout: float = CERTIFY_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


@pytest.mark.process
@pytest.mark.conformance
def test_a_hosted_certification_exercises_device_faults_and_names_the_server_faults_it_could_not(tmp_path, staging):
    url, data = staging
    profile = hosted_profile(tmp_path, url, data)
    check = _crm("certify", "check", str(profile), "--json")
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    assert json.loads(check.stdout)["steps"][0]["action"] == "server.ready"

    report = tmp_path / "r"
    done = _crm("certify", "--sut", str(profile), "--report", str(report), "--workers", "2", "-k",
                "create_a_new_account_in_airplane_mode or server_is_killed_right_after or server_is_restored")
    assert done.returncode == 0, done.stderr[-3000:]
    cert = json.loads((report / "certificate.json").read_text())
    by_name = {v["name"]: v for v in cert["scenarios"]}
    airplane = by_name["Create a new account in airplane mode"]
    assert airplane["passed"] and airplane["offline_create_refused"] is False  # Toxiproxy in front of staging
    crash = by_name["The server is killed right after a sync said everything was saved"]
    restore = by_name["The server is restored from an older backup while phones hold newer work"]
    for v in (crash, restore):
        assert v["limit"] == "hosted" and not v["passed"] and not v["anomalies"], v
        assert v["inconclusive"].startswith("not exercisable on a hosted server")
        assert "history" not in v  # refused at its first step: no device was set up for nothing
    assert cert["summary"]["not_exercised"] == 2 and cert["summary"]["inconclusive"] == 0
    assert "2 not exercised (hosted)" in done.stdout
    assert cert["partial_level"] == 3  # what the selection shows: nothing failed, two not exercised
    assert [x["scenarios"] for x in cert["limits"]] == [sorted([crash["name"], restore["name"]],
                                                               key=[v["name"] for v in cert["scenarios"]].index)]
    md = (report / "certificate.md").read_text()
    assert md.count("NOT EXERCISED") == 2 and "without server-crash and server-restore evidence" in md
    # Nothing was written under the plain organisation name: each scenario had a tenant of its own.
    plain = _crm("server", "export", "--data", str(data), "--org", "acme", "--json", timeout=60)
    assert not any(json.loads(plain.stdout or "{}").get(k) for k in ("account", "visit", "order", "note")), plain
    junit = (report / "junit.xml").read_text()
    assert 'name="The airplane-mode checklist :: Create a new account in airplane mode"' in junit


def test_the_scenarios_a_hosted_server_cannot_run_are_found_from_their_steps():
    """The server-fault steps (bdd_results.SERVER_FAULT_STEP) pick out exactly the scenarios that
    crash, restart, back up or restore the server; every other one runs against a hosted server."""
    from harness import coverage
    from harness.bdd_results import SERVER_FAULT_STEP

    def server_steps(sc):
        return [step for step in sc.steps if SERVER_FAULT_STEP.match(step.split(" ", 1)[1])]

    found = {sc.test for sc in coverage.scenarios() if server_steps(sc)}
    assert {"test_the_server_is_killed_right_after_a_sync_said_everything_was_saved",
            "test_every_kind_of_write_survives_a_server_crash_in_the_middle_of_a_sync_with_mode_sync"
            "[server_crash-manual]",
            "test_every_kind_of_write_survives_a_server_crash_in_the_middle_of_a_sync_with_mode_sync"
            "[server_crash-background]",
            "test_the_server_is_restored_from_an_older_backup_while_phones_hold_newer_work"} <= found
    for sc in coverage.scenarios():  # a scenario that touches the server's process or data is among them
        if any(word in step for step in sc.steps for word in ("server is killed", "server is restored",
                                                              "backup of the server")):
            assert sc.test in found, sc.test
    assert not any("airplane" in sc.file for sc in coverage.scenarios() if sc.test in found)


def test_a_comparison_shows_a_hosted_certificates_not_exercised_scenarios(tmp_path, monkeypatch):
    from harness import compare
    from tests.test_compare import write

    folder = write(tmp_path / "hosted", "vendor", [OFFLINE_CREATE, CRASH], None, monkeypatch)
    data = compare.compare([folder])
    assert {r["scenario"]: r["cells"]["vendor"]["verdict"] for r in data["scenarios"]}[CRASH["name"]] == "NOT EXERCISED"
    html = compare.page(data)
    parse(html)
    assert ">n/e<" in html and compare.COLOURS["NOT EXERCISED"] in html


# -- a SUT without territories: a declared limit too -----------------------------------------------
TERRITORY = {**CRASH, "name": "Two reps in different territories", "limit": "territories",
             "inconclusive": "not exercisable: the SUT profile has no [server] rep_export"}


def test_a_sut_without_territories_keeps_its_level_with_the_territory_scenarios_named():
    """Territories are an optional part of the contract (docs/driver-contract.md): a SUT that does not
    scope devices is not capped for it, but its claim says the territory scenarios were not run."""
    from harness.session import NotExercisable, TerritoryLimit

    assert issubclass(TerritoryLimit, NotExercisable) and TerritoryLimit.limit == "territories"
    level, reasons = certify_level([OFFLINE_CREATE, TERRITORY])
    assert level == 3 and "1 not exercised (territories)" in reasons[0]
    limits = claim_limits([OFFLINE_CREATE, CRASH, TERRITORY])
    assert [(x["limit"], x["scenarios"]) for x in limits] == [("hosted", [CRASH["name"]]),
                                                             ("territories", [TERRITORY["name"]])]
    assert "partial replication" in limits[1]["what"]
    fields = certify_mod.level_fields([OFFLINE_CREATE, TERRITORY], None)
    assert fields["level_name"] == "offline-first, territories not exercised"


@pytest.mark.process
@pytest.mark.conformance
def test_the_summary_line_names_the_limit_that_left_scenarios_out(tmp_path):
    """The weak SUT has no territories: its territory scenario is not exercised, and the summary
    says why (it said "hosted server" for every limit)."""
    done = _crm("certify", "--sut", "fragile-sync", "--report", str(tmp_path / "r"), "-k", "different_territories")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 not exercised (territories)" in done.stdout and "hosted" not in done.stdout
