"""The driver reads commands the way the contract says: exit code -> ok/fail/unknown, stdout -> JSON.

A scripted client (written to tmp_path) stands in for a vendor's SUT so every outcome can be
provoked; one slow test runs the reference `crm` SUT through a real Toxiproxy end to end.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from harness import processes
from harness.driver import ActionResult, Driver, DriverError, ServerHandle, parse_json
from harness.history import History
from harness.profile import MissingAction, load_profile
from harness.toxiproxy import ToxiproxyServer, proxy_url

pytestmark = pytest.mark.process  # the driver runs real commands and servers

REFERENCE = Path(__file__).resolve().parent.parent / "fixtures" / "sut" / "reference.toml"

CLIENT = textwrap.dedent('''
    import json, os, subprocess, sys, time
    action, home = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    store = os.path.join(home, "accounts.jsonl")
    def accounts():
        if not os.path.exists(store):
            return []
        return [json.loads(line) for line in open(store)]
    if action == "init":
        os.makedirs(home, exist_ok=True)
        print(json.dumps({"id": "device-1"}))
    elif action == "create_account":
        name, city = args
        if name == "refused":
            print("name is reserved", file=sys.stderr); sys.exit(3)
        if name == "crash":
            print("Traceback: boom", file=sys.stderr); sys.exit(1)
        if name == "slow":
            print("working", flush=True); time.sleep(600)
        if name == "chatty":
            print("log: saving"); print(json.dumps({"id": "a-chatty"})); sys.exit(0)
        if name == "silent":
            sys.exit(0)
        record = {"id": "a-%d" % (len(accounts()) + 1), "name": name, "city": city}
        with open(store, "a") as f:
            f.write(json.dumps(record) + "\\n")
        print(json.dumps(record))
    elif action == "outbox":
        print(json.dumps({"pending": len(accounts())}))
    elif action == "export":
        fmt = os.environ.get("EXPORT_FORMAT", "crm-export/1")
        print(json.dumps({"format": fmt, "account": accounts(), "contact": [], "visit": [], "order": [],
                          "note": [], "product": [], "conflicts": []}))
    elif action == "agent":
        agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(json.dumps({"running": True, "pid": agent.pid}))
    elif action == "agent-in-group":
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(json.dumps({"running": True}))
''')

SERVER = textwrap.dedent('''
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    data, port = sys.argv[1], int(sys.argv[2])
    with open(os.path.join(data, "starts"), "a") as f:
        f.write("%d\\n" % os.getpid())
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404); self.end_headers()
        def log_message(self, *a):
            pass
    HTTPServer(("127.0.0.1", port), H).serve_forever()
''')

ADMIN = textwrap.dedent('''
    import json, sys
    command, data = sys.argv[1], sys.argv[2]
    if command == "add-rep":
        org, rep = sys.argv[3:]
        if rep == "nobody":
            sys.exit(4)
        print(json.dumps({"token": "tok-%s-%s" % (org, rep)}))
    elif command == "edit":
        entity, rid, assignment = sys.argv[3:]
        print(json.dumps({"id": rid, "set": assignment}))
    elif command == "export":
        print(json.dumps({"format": "crm-export/1", "account": [], "contact": [], "visit": [], "order": [],
                          "note": [], "product": [], "conflicts": []}))
''')

PROFILE = '''
[sut]
name = "scripted client"
[server]
start = ["{python}", "{profile_dir}/server.py", "{server_dir}", "{port}"]
ready = "http://127.0.0.1:{port}/health"
provision = ["{python}", "{profile_dir}/admin.py", "add-rep", "{server_dir}", "{org}", "{rep}"]
backoffice_edit = ["{python}", "{profile_dir}/admin.py", "edit", "{server_dir}", "{entity}", "{record_id}", "{field}={value}"]
export = ["{python}", "{profile_dir}/admin.py", "export", "{server_dir}"]
[device]
init = ["{python}", "{profile_dir}/client.py", "init", "{home}"]
[actions]
create_account = ["{python}", "{profile_dir}/client.py", "create_account", "{home}", "{name}", "{city}"]
log_visit = ["{python}", "{profile_dir}/client.py", "log_visit", "{home}", "{account_id}", "{outcome}"]
take_order = ["{python}", "{profile_dir}/client.py", "take_order", "{home}", "{account_id}", "{sku}:{qty}:{price}"]
write_note = ["{python}", "{profile_dir}/client.py", "write_note", "{home}", "{account_id}", "{text}"]
edit_field = ["{python}", "{profile_dir}/client.py", "edit_field", "{home}", "{entity}", "{record_id}", "{field}={value}"]
start_background_sync = ["{python}", "{profile_dir}/client.py", "AGENT", "{home}"]
outbox = ["{python}", "{profile_dir}/client.py", "outbox", "{home}"]
export = ["{python}", "{profile_dir}/client.py", "export", "{home}"]
[exit_codes]
saved = [0]
not_saved = [3, 4]
[timeouts]
action_s = 10
ready_s = 10
'''


def scripted_profile(tmp_path: Path, agent: str = "agent"):
    (tmp_path / "client.py").write_text(CLIENT)
    (tmp_path / "server.py").write_text(SERVER)
    (tmp_path / "admin.py").write_text(ADMIN)
    (tmp_path / "sut.toml").write_text(PROFILE.replace("AGENT", agent))
    return load_profile(tmp_path / "sut.toml")


@pytest.fixture(autouse=True)
def no_leftover_processes():
    before = set(processes.leftovers())
    yield
    left = {pgid: pids for pgid, pids in processes.leftovers().items() if pgid not in before}
    assert left == {}, f"processes left behind: {left}"


@pytest.fixture
def history() -> History:
    return History()


@pytest.fixture
def device(tmp_path, history):
    profile = scripted_profile(tmp_path)
    with Driver(profile, device="d1", home=tmp_path / "home", server_url="http://127.0.0.1:9", rep="r1",
                token="t", record=history) as driver:
        driver.init()
        yield driver


def test_ok_action_returns_its_json_and_is_recorded(device, history):
    result = device.invoke("create_account", name="Corner Shop", city="Leeds")
    assert isinstance(result, ActionResult)
    assert result.outcome == "ok" and result.exit == 0 and result.ok
    assert result.json == {"id": "a-1", "name": "Corner Shop", "city": "Leeds"}
    assert result.args == {"name": "Corner Shop", "city": "Leeds"}
    assert result.duration > 0 and result.pid
    [op] = history.operations("create_account")
    assert op.outcome == "ok" and op.record_id == "a-1" and op.args == result.args
    assert op.completion.exit == 0 and op.completion.ref == op.invoke.seq


@pytest.mark.parametrize("name,outcome,exit_code,detail", [
    ("refused", "fail", 3, "stderr: name is reserved"),  # listed in not_saved
    ("crash", "unknown", 1, "stderr: Traceback: boom"),  # in neither list
])
def test_exit_codes_decide_fail_and_unknown(device, history, name, outcome, exit_code, detail):
    result = device.invoke("create_account", name=name, city="X")
    assert (result.outcome, result.exit) == (outcome, exit_code)
    assert detail in result.detail
    assert history.operations("create_account")[0].outcome == outcome


def test_timeout_is_unknown_and_kills_the_command(device, history):
    """The command prints, then hangs for 600 s; the driver gives up after 5 s. Five seconds, not
    half of one: the client must have started and printed before the timeout for its partial
    stdout to be kept, and on a loaded 2-core CI machine a Python start can take over a second."""
    started = time.monotonic()
    result = device.invoke("create_account", name="slow", city="X", timeout=5)
    assert time.monotonic() - started < 300  # killed at the timeout, not waited for
    assert result.outcome == "unknown" and result.exit is None
    assert "timed out" in result.detail and result.stdout.strip() == "working"
    assert not processes.alive(result.pid)


def test_kill_after_is_a_force_quit_recorded_before_the_unknown_outcome(device, history):
    result = device.invoke("create_account", name="slow", city="X", kill_after=0.5)
    assert result.outcome == "unknown" and result.exit is None and "SIGKILL" in result.detail
    types = [(e.type, e.action) for e in history if e.action in ("create_account", "kill")]
    assert types == [("invoke", "create_account"), ("fault", "kill"), ("unknown", "create_account")]
    assert history.kills("d1")


def test_kill_after_a_finished_action_kills_nothing(device, history):
    result = device.invoke("create_account", name="Quick", city="X", kill_after=8)
    assert result.outcome == "ok"
    assert history.kills() == []


def test_json_after_log_lines_and_missing_json(device):
    assert device.invoke("create_account", name="chatty", city="X").json == {"id": "a-chatty"}
    silent = device.invoke("create_account", name="silent", city="X")
    assert silent.outcome == "ok" and silent.json is None and "stdout is empty" in silent.detail
    assert parse_json("not json") == (None, "stdout is not JSON (Expecting value at line 1)")


def test_pending_and_export(device, history):
    device.invoke("create_account", name="A", city="Leeds")
    device.invoke("create_account", name="B", city="York")
    assert device.pending() == 2
    export = device.export()
    assert [a["name"] for a in export["account"]] == ["A", "B"]
    assert history.final_exports()["d1"] == export


def test_export_in_the_wrong_format_is_refused(device, history, monkeypatch):
    monkeypatch.setenv("EXPORT_FORMAT", "something-else")
    with pytest.raises(DriverError, match="device d1: export is not crm-export/1"):
        device.export()
    assert "d1" not in history.final_exports()


def test_missing_optional_action(device):
    with pytest.raises(MissingAction, match=r"no \[actions\].sync"):
        device.invoke("sync")


def test_force_quit_kills_the_background_sync_process(device, history):
    result = device.invoke("start_background_sync")
    agent = result.json["pid"]
    assert result.ok and processes.alive(agent)
    killed = device.force_quit("test")
    assert agent in killed
    deadline = time.monotonic() + 5
    while processes.alive(agent) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not processes.alive(agent)
    assert history.kills("d1")[0].detail == "SIGKILL test"


def test_force_quit_kills_a_daemon_left_in_the_commands_group(tmp_path, history):
    profile = scripted_profile(tmp_path, agent="agent-in-group")
    with Driver(profile, device="d2", home=tmp_path / "home", server_url="x", rep="r", token="t",
                record=history) as driver:
        result = driver.invoke("start_background_sync")
        assert result.ok and processes.group_members(result.pid)
        driver.force_quit()
        deadline = time.monotonic() + 5
        while processes.group_members(result.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert processes.group_members(result.pid) == []


def test_server_handle_start_provision_edit_export_and_restart_on_the_same_port(tmp_path, history):
    profile = scripted_profile(tmp_path)
    with ServerHandle(profile, server_dir=tmp_path / "srv", log_dir=tmp_path, record=history) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.provision("acme", "r1") == "tok-acme-r1"
        with pytest.raises(DriverError, match="provisioning rep 'nobody' of 'acme' failed: exit 4"):
            server.provision("acme", "nobody")
        edit = server.backoffice_edit("account", "a-1", "city", "Hull")
        assert edit.ok and edit.json == {"id": "a-1", "set": "city=Hull"}
        assert server.export("acme")["format"] == "crm-export/1"
        first = server.process.pid
        server.restart(crash=True)
        assert server.running and server.process.pid != first and not processes.alive(first)
        assert (tmp_path / "srv" / "starts").read_text().split() == [str(first), str(server.process.pid)]
    assert not server.running
    assert [(e.type, e.action) for e in history if e.type in ("fault", "heal")] == \
        [("fault", "server_kill"), ("heal", "server_kill")]
    assert history.operations("backoffice_edit", device="server")[0].outcome == "ok"


def test_server_that_never_gets_ready_is_a_clear_error(tmp_path):
    profile = scripted_profile(tmp_path)
    (tmp_path / "server.py").write_text("import sys; print('no port for me', file=sys.stderr); sys.exit(2)")
    with pytest.raises(DriverError, match=r"SUT server did not start: .*exited with code 2.*\n.*no port for me"):
        ServerHandle(profile, server_dir=tmp_path / "srv", log_dir=tmp_path).start()


@pytest.mark.slow
def test_reference_sut_through_toxiproxy(tmp_path, history):
    """The reference `crm`: offline writes survive airplane mode and sync once the proxy is back."""
    profile = load_profile(REFERENCE)
    with ToxiproxyServer(log_dir=tmp_path) as toxi, \
            ServerHandle(profile, server_dir=tmp_path / "srv", log_dir=tmp_path, record=history) as server:
        token = server.provision("acme", "r1")
        proxy = toxi.client.create_proxy("d1", server.address)
        with Driver(profile, device="d1", home=tmp_path / "d1", server_url=proxy_url(proxy), rep="r1",
                    token=token, org="acme", record=history) as device:
            device.init()
            toxi.client.disable("d1")
            created = device.invoke("create_account", name="Corner Shop", city="Leeds")
            assert created.ok and created.json["id"]
            offline = device.invoke("sync")
            assert offline.outcome != "ok" and device.pending() == 1
            toxi.client.enable("d1")
            assert device.invoke("sync").ok and device.pending() == 0
            server.restart(crash=True)
            assert device.invoke("sync").ok
            exports = device.export(), server.export("acme")
            assert exports[0] == exports[1]
            assert [a["id"] for a in exports[1]["account"]] == [created.json["id"]]
