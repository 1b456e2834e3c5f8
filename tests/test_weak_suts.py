"""The two weak calibration SUTs as real processes, run through their TOML profiles.

Each SUT's server and client run as separate processes exactly as the profile says; the
history they leave is judged by the real checkers, so these tests show both that the SUTs
work online and that their weaknesses are the ones the harness is meant to catch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import tomllib
from pathlib import Path

import pytest

from harness import checkers, processes
from harness.history import History
from harness.levels import ScenarioResult, certify_level
from harness.ports import free_port

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


class Sut:
    """A weak SUT's profile and its running server (on a fixed port, so it can be restarted)."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.profile = tomllib.loads((FIXTURES / "sut" / f"{name}.toml").read_text())
        self.tmp = tmp
        self.port = free_port()
        self.values = {"python": sys.executable, "fixtures": str(FIXTURES), "server_dir": str(tmp / "server"),
                       "port": str(self.port), "org": "acme-org"}
        self.server: processes.ManagedProcess | None = None
        self.history = History()
        self.codes = self.profile["exit_codes"]

    def argv(self, template: list[str], **values: str) -> list[str]:
        merged = {**self.values, **values}
        argv = [re.sub(r"\{(\w+)\}", lambda m: merged[m.group(1)], part) for part in template]
        return argv

    def start(self) -> None:
        self.server = processes.ManagedProcess(self.argv(self.profile["server"]["start"]), name="server",
                                               log_dir=self.tmp / "logs")
        self.server.start(ready_url=self.argv([self.profile["server"]["ready"]])[0], ready_timeout=15)

    def stop(self) -> None:
        if self.server is not None:
            self.server.kill()

    def provision(self, rep: str) -> str:
        done = processes.run(self.argv(self.profile["server"]["provision"], rep=rep), timeout=30)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["token"]

    def export_server(self) -> dict:
        done = processes.run(self.argv(self.profile["server"]["export"]), timeout=30)
        assert done.returncode == 0, done.stderr
        export = json.loads(done.stdout)
        self.history.append("server", "export", "export", result=export)
        return export

    def device(self, name: str, server_url: str | None = None) -> Device:
        return Device(self, name, server_url or f"http://127.0.0.1:{self.port}")


class Device:
    def __init__(self, sut: Sut, name: str, server_url: str) -> None:
        self.sut, self.name = sut, name
        self.home = sut.tmp / name
        self.values = {"home": str(self.home), "server_url": server_url, "rep": f"rep-{name}"}

    def init(self) -> None:
        token = self.sut.provision(self.values["rep"])
        done = processes.run(self.sut.argv(self.sut.profile["device"]["init"], **self.values, token=token),
                             timeout=30)
        assert done.returncode == 0, done.stderr

    def do(self, action: str, **args: str):
        """Run one contract action, record it in the history as invoke + ok/fail/unknown."""
        history = self.sut.history
        invoke = history.invoke(self.name, action, args)
        done = processes.run(self.sut.argv(self.sut.profile["actions"][action], **self.values, **args), timeout=30)
        code = done.returncode
        outcome = ("ok" if code in self.sut.codes["saved"] else
                   "fail" if code in self.sut.codes["not_saved"] else "unknown")
        try:
            result = json.loads(done.stdout)
        except ValueError:
            result = None
        completion = history.complete(invoke, outcome, result=result, exit=code, detail=done.stderr.strip()[-300:])
        return completion

    def export(self) -> dict:
        event = self.do("export")
        assert event.type == "ok", event.detail
        self.sut.history.append(self.name, "export", "export", result=event.result)
        return event.result

    def kill_background_sync(self) -> int:
        """Force-quit the background sync process (the client's own commands have all exited)."""
        pid = int((self.home / "sync.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while processes.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        return pid


def stop_daemons(sut: Sut) -> None:
    for pid_file in sut.tmp.glob("*/sync.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@pytest.fixture
def make_sut(tmp_path):
    started: list[Sut] = []

    def make(name: str) -> Sut:
        sut = Sut(name, tmp_path / name)
        sut.start()
        started.append(sut)
        return sut

    yield make
    for sut in started:
        stop_daemons(sut)
        sut.stop()


def online_flow(sut: Sut) -> tuple[Device, dict]:
    """Create one of everything, sync, edit the synced account, sync again; the final exports."""
    d1 = sut.device("d1")
    d1.init()
    if "start_background_sync" in sut.profile["actions"]:
        assert d1.do("start_background_sync").type == "ok"
    account = d1.do("create_account", name="Acme Tea", city="Leeds").result["id"]
    d1.do("log_visit", account_id=account, outcome="met the buyer")
    d1.do("take_order", account_id=account, sku="TEA-1", qty="3", price="4.5")
    d1.do("write_note", account_id=account, text="wants a call back")
    assert d1.do("sync").type == "ok"
    [synced] = d1.do("export").result["account"]
    assert d1.do("edit_field", entity="account", record_id=synced["id"], field="phone",
                 value="0113 496 0000").type == "ok"
    assert d1.do("sync").type == "ok"
    return d1, {"device": d1.export(), "server": sut.export_server()}


# -- online: both work, and what each is honest about --------------------------------------------
def test_readonly_cache_online_flow_is_clean(make_sut):
    sut = make_sut("readonly-cache")
    d1, exports = online_flow(sut)
    assert [op.outcome for op in sut.history.operations()].count("ok") == len(sut.history.operations())
    assert exports["device"] == exports["server"]
    [account] = exports["server"]["account"]
    assert (account["name"], account["city"], account["phone"]) == ("Acme Tea", "Leeds", "0113 496 0000")
    assert exports["server"]["order"][0]["lines"] == [{"sku": "TEA-1", "quantity": 3, "unit_price": "4.50"}]
    assert [len(exports["server"][e]) for e in ("visit", "note")] == [1, 1]
    assert checkers.run_all(sut.history) == []


def test_fragile_sync_online_flow_converges_but_its_ids_do_not_survive_sync(make_sut):
    sut = make_sut("fragile-sync")
    d1, exports = online_flow(sut)
    assert exports["device"] == exports["server"]
    assert [len(exports["server"][e]) for e in ("account", "visit", "order", "note")] == [1, 1, 1, 1]
    assert exports["server"]["account"][0]["phone"] == "0113 496 0000"
    printed = {op.record_id for op in sut.history.writes()}
    assert all(rid.startswith("tmp-") for rid in printed)
    found = checkers.run_all(sut.history)
    assert {a.check for a in found} == {"lost_write"}
    assert {a.evidence["id"] for a in found} == printed


# -- offline: the weaknesses the levels are calibrated on ----------------------------------------
def test_readonly_cache_refuses_an_offline_create_and_certifies_level_1(make_sut):
    sut = make_sut("readonly-cache")
    d1 = sut.device("d1")
    d1.init()
    account = d1.do("create_account", name="Acme Tea", city="Leeds").result["id"]
    sut.stop()  # no Toxiproxy here: a dead server refuses connections just like airplane mode
    sut.history.append("d1", "fault", "offline")
    refused = d1.do("create_account", name="Offline Ltd", city="York")
    assert (refused.type, refused.exit) == ("fail", 20)
    assert "not saved" in refused.detail
    assert d1.do("outbox").result["pending"] == 0
    assert [a["id"] for a in d1.do("export").result["account"]] == [account]  # reading still works offline
    level, reasons = certify_level([ScenarioResult("create an account in airplane mode", passed=False,
                                                   offline_create_refused=refused.type != "ok")])
    assert level == 1 and "refused" in reasons[0]


def test_fragile_sync_force_quit_loses_its_memory_queue_and_certifies_level_2(make_sut):
    sut = make_sut("fragile-sync")
    d1 = sut.device("d1")
    d1.init()
    assert d1.do("start_background_sync").type == "ok"
    sut.stop()
    sut.history.append("d1", "fault", "offline")
    shops = [d1.do("create_account", name=f"Shop {i}", city="York") for i in range(2)]
    assert [e.type for e in shops] == ["ok", "ok"]  # offline creates are saved... in memory
    assert d1.do("outbox").result["pending"] == 2
    sut.history.append("d1", "fault", "kill", detail="SIGKILL of the background sync process")
    pid = d1.kill_background_sync()
    assert not processes.alive(pid)
    assert d1.do("outbox").result["pending"] == 0
    sut.start()
    sut.history.append("d1", "heal", "offline")
    assert d1.do("start_background_sync").type == "ok"
    assert d1.do("sync").type == "ok"
    d1.export()
    assert sut.export_server()["account"] == []
    found = checkers.run_all(sut.history)
    assert {a.check for a in found} == {"queue_lost", "lost_write"}
    [lost_queue] = [a for a in found if a.check == "queue_lost"]
    assert (lost_queue.evidence["pending"], lost_queue.evidence["expected"]) == (0, 2)
    assert lost_queue.evidence["writes"] == [e.ref for e in shops]
    level, reasons = certify_level([
        ScenarioResult("create an account in airplane mode", passed=True, offline_create_refused=False),
        ScenarioResult("force-quit keeps the outbox", passed=not found, anomalies=found)])
    assert level == 2 and "queue_lost" in reasons[0]


@pytest.fixture
def toxiproxy_server(tmp_path):
    toxiproxy = pytest.importorskip("harness.toxiproxy")
    try:
        toxiproxy.find_server_binary()
    except toxiproxy.ToxiproxyError as exc:
        pytest.skip(str(exc))
    with toxiproxy.ToxiproxyServer(log_dir=tmp_path / "toxiproxy") as server:
        yield server


def cut_answers(toxi, sut: Sut, device: str) -> Device:
    """A device behind its own proxy whose answers are cut after 10 bytes: requests still arrive."""
    from harness import toxiproxy

    proxy = toxi.client.create_proxy(device, f"127.0.0.1:{sut.port}")
    dev = sut.device(device, server_url=toxiproxy.proxy_url(proxy))
    dev.init()
    toxi.client.add_toxic(device, toxiproxy.limit_data(10, stream="downstream"))
    sut.history.append(device, "fault", "limit_data", detail="answers cut after 10 bytes")
    return dev


def test_readonly_cache_reports_a_lost_answer_as_unknown_not_as_not_saved(make_sut, toxiproxy_server):
    sut = make_sut("readonly-cache")
    d1 = cut_answers(toxiproxy_server, sut, "d1")
    attempt = d1.do("create_account", name="Acme Tea", city="Leeds")
    assert (attempt.type, attempt.exit) == ("unknown", 21)
    toxiproxy_server.client.reset()
    sut.history.append("d1", "heal", "limit_data")
    assert d1.do("sync").type == "ok"
    d1.export()
    assert [a["name"] for a in sut.export_server()["account"]] == ["Acme Tea"]  # it was saved after all
    assert checkers.run_all(sut.history) == []  # unknown: present once is allowed


def test_fragile_sync_retries_a_push_whose_answer_was_lost_into_a_duplicate(make_sut, toxiproxy_server):
    sut = make_sut("fragile-sync")
    d1 = cut_answers(toxiproxy_server, sut, "d1")
    assert d1.do("create_account", name="Acme Tea", city="Leeds").type == "ok"
    deadline = time.monotonic() + 10
    while len(json.loads(processes.run(sut.argv(sut.profile["server"]["export"])).stdout)["account"]) < 2:
        assert time.monotonic() < deadline, "the daemon never retried the push"
        time.sleep(0.1)
    toxiproxy_server.client.reset()
    sut.history.append("d1", "heal", "limit_data")
    assert d1.do("sync").type == "ok"
    d1.export()
    server = sut.export_server()
    assert {a["name"] for a in server["account"]} == {"Acme Tea"} and len(server["account"]) >= 2
    dupes = [a for a in checkers.duplicate(sut.history) if a.evidence["export"] == "server"]
    assert len(dupes) == 1 and dupes[0].evidence["count"] == len(server["account"])
    assert dupes[0].evidence["allowed"] == 1


def test_fragile_sync_whole_record_edits_lose_a_concurrent_edit_of_another_field(make_sut):
    sut = make_sut("fragile-sync")
    d1, d2 = sut.device("d1"), sut.device("d2")
    for dev in (d1, d2):
        dev.init()
        assert dev.do("start_background_sync").type == "ok"
    d1.do("create_account", name="Acme Tea", city="Leeds")
    assert d1.do("sync").type == "ok" and d2.do("sync").type == "ok"
    [account] = d2.do("export").result["account"]
    sut.stop()
    for dev in (d1, d2):
        sut.history.append(dev.name, "fault", "offline")
    phone = d1.do("edit_field", entity="account", record_id=account["id"], field="phone", value="0113 496 0000")
    city = d2.do("edit_field", entity="account", record_id=account["id"], field="city", value="Bradford")
    assert (phone.type, city.type) == ("ok", "ok")
    sut.start()
    for dev in (d1, d2):
        sut.history.append(dev.name, "heal", "offline")
    for dev in (d1, d2, d1):
        assert dev.do("sync").type == "ok"
    d1.export(), d2.export()
    [final] = sut.export_server()["account"]
    # both daemons push as soon as the server is back: whichever PUT arrives last wins whole
    kept_phone = final.get("phone") == "0113 496 0000"
    assert kept_phone != (final["city"] == "Bradford")
    overwritten = city if kept_phone else phone
    lost = [a for a in checkers.run_all(sut.history) if a.check == "lost_edit"]
    assert {a.evidence["export"] for a in lost} == {"d1", "d2", "server"}
    assert {a.evidence["seq"] for a in lost} == {overwritten.ref}
