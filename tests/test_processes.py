"""Real child processes: output capture, timeouts, SIGKILL of whole process groups, readiness, no leaks."""

from __future__ import annotations

import os
import sys
import time

import pytest

from harness import processes
from harness.ports import free_port

pytestmark = pytest.mark.process  # real process groups and signals

PY = sys.executable

# A parent that starts a grandchild, prints the grandchild's pid, then sleeps.
SPAWNER = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)

# A tiny HTTP server that answers 503 until a file exists, then 200.
SERVER = (
    "import os, sys\n"
    "from http.server import BaseHTTPRequestHandler, HTTPServer\n"
    "flag = sys.argv[2]\n"
    "class H(BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200 if os.path.exists(flag) else 503)\n"
    "        self.end_headers()\n"
    "    def log_message(self, *a):\n"
    "        pass\n"
    "print('serving', flush=True)\n"
    "HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def read_pid(path) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.strip():
            return int(text.split()[0])
        time.sleep(0.02)
    raise AssertionError("the spawner never printed its child's pid")


def gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not processes.alive(pid):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(autouse=True)
def no_leftover_processes():
    before = set(processes.leftovers())
    yield
    left = {pgid: pids for pgid, pids in processes.leftovers().items() if pgid not in before}
    assert left == {}, f"processes left behind: {left}"


def test_run_captures_output_exit_code_env_and_cwd(tmp_path):
    code = "import os, sys; print(os.environ['GREETING'], os.getcwd()); print('oops', file=sys.stderr); sys.exit(3)"
    env = {**os.environ, "GREETING": "hej"}
    done = processes.run([PY, "-c", code], env=env, cwd=tmp_path, timeout=10)
    assert done.returncode == 3
    assert done.stdout.split() == ["hej", str(tmp_path)]
    assert done.stderr.strip() == "oops"
    assert not done.killed and not done.timed_out
    assert done.detail == "exit 3"


def test_run_of_a_missing_program_is_a_clear_error():
    with pytest.raises(processes.ProcessError, match="cannot start 'no-such-program-xyz'"):
        processes.run(["no-such-program-xyz"])


def test_timeout_kills_the_whole_group_including_grandchildren(tmp_path):
    started = time.monotonic()
    done = processes.run([PY, "-c", SPAWNER], timeout=5)  # time to start and print, even under load
    assert time.monotonic() - started < 55  # killed at the timeout, not waited for (it sleeps 60 s)
    assert done.timed_out and done.killed and done.returncode is None
    grandchild = int(done.stdout.split()[0])
    assert gone(grandchild), "the grandchild survived the group kill"
    assert "timed out" in done.detail


def test_run_and_kill_is_a_real_sigkill_at_the_given_moment():
    # A SIGTERM handler would print; SIGKILL cannot be caught, so nothing is printed.
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('caught'), sys.exit(0)))\n"
            "print('started', flush=True)\n"
            "time.sleep(600)\n")
    started = time.monotonic()
    done = processes.run_and_kill([PY, "-c", code], delay=5)  # time to start and print, even under load
    elapsed = time.monotonic() - started
    assert done.killed and done.returncode is None
    assert 5 <= elapsed < 300
    assert done.stdout.strip() == "started"


def test_run_and_kill_reports_a_command_that_finished_first():
    done = processes.run_and_kill([PY, "-c", "print('quick')"], delay=10)
    assert not done.killed and done.returncode == 0 and done.stdout.strip() == "quick"
    assert done.duration < 10


def test_child_kill_from_outside_stops_parent_and_grandchild(tmp_path):
    out = tmp_path / "spawner.out"
    child = processes.Child([PY, "-c", SPAWNER], stdout=out)
    grandchild = read_pid(out)
    assert set(processes.group_members(child.pid)) == {child.pid, grandchild}
    child.kill()
    done = child.wait()
    assert done.killed
    assert gone(grandchild)


def test_a_daemon_holding_stdout_does_not_block_the_harness(tmp_path):
    # The child exits at once but leaves a grandchild with the same stdout: pipes would hang here.
    code = ("import subprocess, sys\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            "print('{\"pid\": 1}')\n")
    started = time.monotonic()
    done = processes.run([PY, "-c", code], timeout=300)
    assert time.monotonic() - started < 60  # not waited for the daemon's 600 s
    assert done.returncode == 0 and done.stdout.strip() == '{"pid": 1}'
    stragglers = processes.leftovers().get(done.pid)
    assert stragglers  # the daemon is still in its group, and tracked
    assert processes.signal_group(done.pid)
    assert all(gone(pid) for pid in stragglers)


def test_managed_process_waits_for_readiness_and_stops_cleanly(tmp_path):
    port = free_port()
    flag = tmp_path / "ready"
    server = processes.ManagedProcess([PY, "-c", SERVER, str(port), str(flag)], name="web", log_dir=tmp_path)
    with server:
        # 5 s: the server must be up and answering 503 (not yet refusing connections) by then
        with pytest.raises(processes.ProcessError, match=r"did not answer 200 .* within 5s .*HTTP 503"):
            server.wait_ready(f"http://127.0.0.1:{port}/", timeout=5)
        flag.touch()
        server.wait_ready(f"http://127.0.0.1:{port}/", timeout=10)
        assert server.running
        pid = server.pid
    assert not server.running and gone(pid)
    assert (tmp_path / "web.out").read_text().strip() == "serving"


def test_managed_process_start_with_ready_url_and_restart_on_the_same_port(tmp_path):
    port = free_port()
    flag = tmp_path / "ready"
    flag.touch()
    server = processes.ManagedProcess([PY, "-c", SERVER, str(port), str(flag)], name="web", log_dir=tmp_path)
    server.start(ready_url=f"http://127.0.0.1:{port}/", ready_timeout=10)
    first = server.pid
    server.kill()
    assert gone(first)
    server.start(ready_url=f"http://127.0.0.1:{port}/", ready_timeout=10)
    assert server.pid != first and server.running
    assert server.stop() is not None
    assert not server.running


def test_managed_process_that_dies_early_reports_its_stderr(tmp_path):
    code = "import sys; print('bad config: port missing', file=sys.stderr); sys.exit(2)"
    server = processes.ManagedProcess([PY, "-c", code], name="broken", log_dir=tmp_path)
    started = time.monotonic()
    with pytest.raises(processes.ProcessError, match=r"exited with code 2 .*\n.*bad config: port missing"):
        server.start(ready_url=f"http://127.0.0.1:{free_port()}/", ready_timeout=300)
    assert time.monotonic() - started < 60  # its exit is reported at once, not after the ready timeout


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path):
    code = ("import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('up', flush=True)\n"
            "time.sleep(60)\n")
    proc = processes.ManagedProcess([PY, "-c", code], name="stubborn", log_dir=tmp_path).start()
    deadline = time.monotonic() + 10
    while "up" not in proc.stdout_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    proc.stop(grace=0.5)
    assert 0.5 <= time.monotonic() - started < 55  # escalated, not waited for its 60 s sleep
    assert not proc.running and proc.returncode == -9


def test_kill_tree_on_an_adopted_pid(tmp_path):
    # A background daemon the harness did not start (e.g. a client's sync agent).
    out = tmp_path / "spawner.out"
    spawner = processes.Child([PY, "-c", SPAWNER], stdout=out)
    grandchild = read_pid(out)
    processes.track(grandchild, "agent")
    assert processes.kill_tree(grandchild)  # not a group leader: only that pid
    assert gone(grandchild)
    assert processes.alive(spawner.pid)
    spawner.kill()
    assert not processes.kill_tree(grandchild)


def test_children_left_running_are_killed_when_the_harness_exits():
    # A harness process that starts a server and a long command, then exits without cleaning up.
    code = ("from harness import processes\n"
            "import sys\n"
            "server = processes.ManagedProcess([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
            "                                  name='srv').start()\n"
            "child = processes.Child([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(server.pid, child.pid, flush=True)\n")
    done = processes.run([PY, "-c", code], timeout=20)
    assert done.returncode == 0, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2
    assert all(gone(pid) for pid in pids), "atexit cleanup left a child running"
