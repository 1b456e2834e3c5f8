"""The two weak calibration SUTs as real processes, run through their profiles by the real driver.

Each SUT's server and client run as separate processes exactly as its TOML profile says; the
history the driver records is judged by the real checkers, so these tests show both that the
SUTs work online and that their weaknesses are the ones the harness is meant to catch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness import checkers, processes
from harness.driver import Driver, ServerHandle
from harness.history import History
from harness.levels import ScenarioResult, certify_level
from harness.profile import load_profile

pytestmark = [pytest.mark.process, pytest.mark.conformance]  # the weak SUTs, run for real

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ORG = "acme-org"


class Run:
    """One SUT for one test: its server, its devices, and the history they all record into."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.profile = load_profile(FIXTURES / "sut" / f"{name}.toml")
        self.tmp = tmp
        self.history = History()
        self.server = ServerHandle(self.profile, server_dir=tmp / "server", log_dir=tmp / "logs",
                                   record=self.history)
        self.server.start()
        self.devices: list[Driver] = []

    def device(self, name: str, server_url: str | None = None) -> Driver:
        token = self.server.provision(ORG, f"rep-{name}")
        device = Driver(self.profile, device=name, home=self.tmp / name, server_url=server_url or self.server.url,
                        rep=f"rep-{name}", token=token, org=ORG, record=self.history)
        device.init()
        self.devices.append(device)
        return device

    def server_accounts(self) -> list[dict]:
        """The server's accounts right now, without recording a final export."""
        argv = self.server.command(self.profile.server_export, org=ORG)
        return json.loads(processes.run(argv, timeout=30).stdout)["account"]

    def close(self) -> None:
        for device in self.devices:
            device.close()
        self.server.stop()


@pytest.fixture
def make_run(tmp_path):
    runs: list[Run] = []

    def make(name: str) -> Run:
        runs.append(Run(name, tmp_path / name))
        return runs[-1]

    yield make
    for run in runs:
        run.close()


def online_flow(run: Run) -> tuple[Driver, dict, dict]:
    """Create one of everything, sync, edit the synced account, sync again; the final exports."""
    d1 = run.device("d1")
    if d1.has("start_background_sync"):
        assert d1.invoke("start_background_sync").ok
    account = d1.invoke("create_account", name="Acme Tea", city="Leeds").json["id"]
    d1.invoke("log_visit", account_id=account, outcome="met the buyer")
    d1.invoke("take_order", account_id=account, sku="TEA-1", qty="3", price="4.5")
    d1.invoke("write_note", account_id=account, text="wants a call back")
    assert d1.invoke("sync").ok
    [synced] = d1.invoke("export").json["account"]
    assert d1.invoke("edit_field", entity="account", record_id=synced["id"], field="phone",
                     value="0113 496 0000").ok
    assert d1.invoke("sync").ok
    return d1, d1.export(), run.server.export(ORG)


# -- online: both work, and what each is honest about --------------------------------------------
def test_readonly_cache_online_flow_is_clean(make_run):
    run = make_run("readonly-cache")
    d1, device, server = online_flow(run)
    assert all(op.outcome == "ok" for op in run.history.operations())
    assert device == server
    [account] = server["account"]
    assert (account["name"], account["city"], account["phone"]) == ("Acme Tea", "Leeds", "0113 496 0000")
    assert server["order"][0]["lines"] == [{"sku": "TEA-1", "quantity": 3, "unit_price": "4.50"}]
    assert [len(server[e]) for e in ("visit", "note")] == [1, 1]
    assert checkers.run_all(run.history) == []


def test_fragile_sync_online_flow_converges_but_its_ids_do_not_survive_sync(make_run):
    run = make_run("fragile-sync")
    d1, device, server = online_flow(run)
    assert device == server
    assert [len(server[e]) for e in ("account", "visit", "order", "note")] == [1, 1, 1, 1]
    assert server["account"][0]["phone"] == "0113 496 0000"
    printed = {op.record_id for op in run.history.writes()}
    assert all(rid.startswith("tmp-") for rid in printed)
    found = checkers.run_all(run.history)
    assert {a.check for a in found} == {"lost_write"}
    assert {a.evidence["id"] for a in found} == printed


# -- offline: the weaknesses the levels are calibrated on ----------------------------------------
def test_readonly_cache_refuses_an_offline_create_and_certifies_level_1(make_run):
    run = make_run("readonly-cache")
    d1 = run.device("d1")
    account = d1.invoke("create_account", name="Acme Tea", city="Leeds").json["id"]
    run.server.kill()  # no Toxiproxy here: a dead server refuses connections just like airplane mode
    refused = d1.invoke("create_account", name="Offline Ltd", city="York")
    assert (refused.outcome, refused.exit) == ("fail", 20)
    assert "not saved" in refused.detail
    assert d1.pending() == 0
    assert [a["id"] for a in d1.invoke("export").json["account"]] == [account]  # reading works offline
    level, reasons = certify_level([ScenarioResult("create an account in airplane mode", passed=False,
                                                   offline_create_refused=not refused.ok)])
    assert level == 1 and "refused" in reasons[0]


def test_fragile_sync_force_quit_loses_its_memory_queue_and_certifies_level_2(make_run):
    run = make_run("fragile-sync")
    d1 = run.device("d1")
    daemon = d1.invoke("start_background_sync").json["pid"]
    run.server.kill()
    shops = [d1.invoke("create_account", name=f"Shop {i}", city="York") for i in range(2)]
    assert [r.outcome for r in shops] == ["ok", "ok"]  # offline creates are saved... in memory
    assert d1.pending() == 2
    assert daemon in d1.force_quit("while offline")
    deadline = time.monotonic() + 5  # SIGKILL is delivered asynchronously
    while processes.alive(daemon) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not processes.alive(daemon)
    assert d1.pending() == 0
    run.server.start()
    assert d1.invoke("start_background_sync").ok and d1.invoke("sync").ok
    d1.export()
    assert run.server.export(ORG)["account"] == []
    found = checkers.run_all(run.history)
    assert {a.check for a in found} == {"queue_lost", "lost_write"}
    [lost_queue] = [a for a in found if a.check == "queue_lost"]
    assert (lost_queue.evidence["pending"], lost_queue.evidence["expected"]) == (0, 2)
    assert lost_queue.evidence["ids"] == [r.json["id"] for r in shops]
    level, reasons = certify_level([
        ScenarioResult("create an account in airplane mode", passed=True, offline_create_refused=False),
        ScenarioResult("force-quit keeps the outbox", passed=not found, anomalies=found)])
    assert level == 2 and "queue_lost" in reasons[0]


def test_fragile_sync_whole_record_edits_lose_a_concurrent_edit_of_another_field(make_run):
    run = make_run("fragile-sync")
    d1, d2 = run.device("d1"), run.device("d2")
    for device in (d1, d2):
        assert device.invoke("start_background_sync").ok
    d1.invoke("create_account", name="Acme Tea", city="Leeds")
    assert d1.invoke("sync").ok and d2.invoke("sync").ok
    [account] = d2.invoke("export").json["account"]
    run.server.kill()
    phone = d1.invoke("edit_field", entity="account", record_id=account["id"], field="phone", value="0113 496 0000")
    city = d2.invoke("edit_field", entity="account", record_id=account["id"], field="city", value="Bradford")
    assert phone.ok and city.ok
    run.server.start()
    for device in (d1, d2, d1):
        assert device.invoke("sync").ok
    d1.export(), d2.export()
    [final] = run.server.export(ORG)["account"]
    # both daemons push as soon as the server is back: whichever PUT arrives last wins whole
    kept_phone = final.get("phone") == "0113 496 0000"
    assert kept_phone != (final["city"] == "Bradford")
    overwritten = city if kept_phone else phone
    lost = [a for a in checkers.run_all(run.history) if a.check == "lost_edit"]
    assert {a.evidence["export"] for a in lost} == {"d1", "d2", "server"}
    assert {(a.evidence["device"], a.evidence["value"]) for a in lost} == {
        ("d2" if kept_phone else "d1", overwritten.args["value"])}


# -- a lost answer, with real Toxiproxy -----------------------------------------------------------
@pytest.fixture
def toxiproxy_server(tmp_path):
    toxiproxy = pytest.importorskip("harness.toxiproxy")
    try:
        toxiproxy.find_server_binary()
    except toxiproxy.ToxiproxyError as exc:
        pytest.skip(str(exc))
    with toxiproxy.ToxiproxyServer(log_dir=tmp_path / "toxiproxy") as server:
        yield server


def behind_a_proxy_that_cuts_answers(toxi, run: Run, name: str) -> Driver:
    """A device whose answers are cut after 10 bytes: its requests still reach the server."""
    from harness import toxiproxy

    proxy = toxi.client.create_proxy(name, run.server.address)
    device = run.device(name, server_url=toxiproxy.proxy_url(proxy))
    toxi.client.add_toxic(name, toxiproxy.limit_data(10, stream="downstream"))
    run.history.append(name, "fault", "limit_data", detail="answers cut after 10 bytes")
    return device


def test_readonly_cache_reports_a_lost_answer_as_unknown_not_as_not_saved(make_run, toxiproxy_server):
    run = make_run("readonly-cache")
    d1 = behind_a_proxy_that_cuts_answers(toxiproxy_server, run, "d1")
    attempt = d1.invoke("create_account", name="Acme Tea", city="Leeds")
    assert (attempt.outcome, attempt.exit) == ("unknown", 21)
    toxiproxy_server.client.reset()
    run.history.append("d1", "heal", "limit_data")
    assert d1.invoke("sync").ok
    d1.export()
    assert [a["name"] for a in run.server.export(ORG)["account"]] == ["Acme Tea"]  # saved after all
    # Unknown outcome: present once is allowed, so no lost_write or duplicate. But a write that could
    # not say whether it saved waited on the network, which only `refused` names.
    assert [a.check for a in checkers.run_all(run.history)] == ["refused"]


def test_fragile_sync_retries_a_push_whose_answer_was_lost_into_a_duplicate(make_run, toxiproxy_server):
    run = make_run("fragile-sync")
    d1 = behind_a_proxy_that_cuts_answers(toxiproxy_server, run, "d1")
    assert d1.invoke("create_account", name="Acme Tea", city="Leeds").ok
    deadline = time.monotonic() + 10
    while len(run.server_accounts()) < 2:
        assert time.monotonic() < deadline, "the daemon never retried the push"
        time.sleep(0.1)
    toxiproxy_server.client.reset()
    run.history.append("d1", "heal", "limit_data")
    assert d1.invoke("sync").ok
    d1.export()
    server = run.server.export(ORG)
    assert {a["name"] for a in server["account"]} == {"Acme Tea"} and len(server["account"]) >= 2
    dupes = [a for a in checkers.duplicate(run.history) if a.evidence["export"] == "server"]
    assert len(dupes) == 1 and dupes[0].evidence["count"] == len(server["account"])
    assert dupes[0].evidence["allowed"] == 1
