"""Several server processes on one store: `crm server serve --workers N`, and the write lock that
serialises the processes' writes (crm/server/workers.py, crm/server/engine.py WriteFileLock)."""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import httpx
import pytest

from crm.server import ServerStore
from harness.ports import free_port
from harness.processes import alive
from tests.support import CRM, wait_for

pytestmark = [pytest.mark.process,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="--workers needs Linux")]

PUSHER = textwrap.dedent("""
    import sys
    from crm.hlc import format_stamp, now_ms
    from crm.ops import Op, op_to_wire
    from crm.server import ServerStore
    from crm.server.store import Identity

    data, dev, pushes, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = ServerStore.open(data)
    who = Identity("acme", "rep-" + dev, "device")
    for p in range(pushes):
        ops = [op_to_wire(Op(op_id=f"{dev}-{p}-{i}", device=dev, hlc=format_stamp(now_ms() - 60_000, p * size + i, dev),
                             entity="account", record_id=f"rec-{dev}-{p}-{i}", fields={"name": f"{dev} {p} {i}"},
                             kind="create"))
               for i in range(size)]
        result = store.push(who, ops)
        assert len(result.acked) == size, result
    store.close()
""")


def test_processes_pushing_into_one_sqlite_store_at_once_log_each_op_once_in_a_gapless_order(tmp_path):
    """Four processes push 20 batches each into one data directory at the same time: every op is
    logged once, the log's positions have no gap, and each process's ops are in its order."""
    data = tmp_path / "server"
    ServerStore.open(data).close()
    devices = [f"dev{k}" for k in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", PUSHER, str(data), dev, "20", "25"],
                              stderr=subprocess.PIPE, text=True) for dev in devices]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    conn = sqlite3.connect(data / "server.sqlite3")
    rows = conn.execute("SELECT seq, op_id, device FROM ops WHERE org = 'acme' ORDER BY seq").fetchall()
    conn.close()
    assert len(rows) == 4 * 20 * 25 == len({op_id for _, op_id, _ in rows})
    assert [seq for seq, _, _ in rows] == list(range(rows[0][0], rows[0][0] + len(rows)))
    for dev in devices:
        mine = [op_id for _, op_id, d in rows if d == dev]
        assert mine == [f"{dev}-{p}-{i}" for p in range(20) for i in range(25)]


def test_a_write_waits_for_another_process_holding_the_write_lock(tmp_path):
    """The lock file beside the database is what the processes take in turn: held elsewhere, a
    write waits (it neither fails nor goes ahead), and goes ahead once it is let go."""
    data = tmp_path / "server"
    store = ServerStore.open(data)
    lock = os.open(data / "server.sqlite3.write-lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)
    done = threading.Event()
    failure: list[BaseException] = []

    def write() -> None:
        try:
            store.add_token("acme", "rep")
        except BaseException as exc:  # noqa: BLE001 - reported below
            failure.append(exc)
        done.set()

    try:
        threading.Thread(target=write, daemon=True).start()
        assert not done.wait(0.5), f"the write did not wait for the lock: {failure}"
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    assert done.wait(30) and not failure, failure
    assert store.stats("acme") == {"ops": 0, "records": 0}
    store.close()


def test_a_write_gives_up_after_the_timeout_and_the_lock_stays_usable(tmp_path):
    """A process that holds the write lock and never lets go (stopped, hung) costs another's write
    a StoreLockedError after the timeout, as SQLite's busy timeout did, not a wait for ever; the
    wait it gave up takes nothing with it: once the lock is free, writes go ahead."""
    from crm.errors import StoreLockedError

    data = tmp_path / "server"
    store = ServerStore.open(data)
    store.db._processes.timeout = 0.3
    lock = os.open(data / "server.sqlite3.write-lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with pytest.raises(StoreLockedError, match="another process's write"):
            store.add_token("acme", "rep")
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    for rep in ("rep", "rep-2", "rep-3"):
        store.add_token("acme", rep)
    other = os.open(data / "server.sqlite3.write-lock", os.O_RDWR)
    try:  # nothing of the abandoned wait still holds it
        wait_for(lambda: _try_lock(other), timeout=30)
    finally:
        os.close(other)
    store.close()


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except FileNotFoundError:
        return set()


def _serve(data: Path, port: int, workers: int) -> subprocess.Popen:
    log = data.parent / f"serve-{port}.log"
    with log.open("w") as err:
        proc = subprocess.Popen([*CRM, "server", "serve", "--data", str(data), "--port", str(port),
                                 "--workers", str(workers)],
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    proc.log = log  # type: ignore[attr-defined]
    wait_for(lambda: _healthy(port) or proc.poll() is not None, timeout=60)
    assert proc.poll() is None, log.read_text()
    wait_for(lambda: len(_children(proc.pid)) == workers, timeout=30)
    return proc


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_workers_serve_one_port_a_dead_worker_is_replaced_and_all_die_with_the_server(tmp_path):
    port = free_port()
    proc = _serve(tmp_path / "server", port, 2)
    try:
        first = _children(proc.pid)
        assert len(first) == 2 and _healthy(port)
        gone = min(first)
        os.kill(gone, signal.SIGKILL)
        wait_for(lambda: len(_children(proc.pid)) == 2 and gone not in _children(proc.pid), timeout=30)
        assert _healthy(port), "the server answers with a replaced worker"
        workers = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the server killed outright: no worker may go on serving
        proc.wait(10)
        wait_for(lambda: not any(alive(pid) for pid in workers), timeout=30)
        assert not _healthy(port)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_every_worker_and_the_server_exits_0(tmp_path, stop):
    """SIGTERM, or SIGINT as Ctrl-C sends it: each worker gets one SIGTERM from the parent (they
    are in process groups of their own) and stops gracefully, without a traceback."""
    port = free_port()
    proc = _serve(tmp_path / "server", port, 3)
    workers = _children(proc.pid)
    try:
        os.killpg(proc.pid, stop)  # the terminal signals the foreground group: the parent's
        assert proc.wait(60) == 0, proc.log.read_text()
        assert not any(alive(pid) for pid in workers)
        assert "Traceback" not in proc.log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


SUPERVISED = textwrap.dedent("""
    import socket, sys
    from crm.server.workers import run_workers

    def serve(sock):
        raise RuntimeError("cannot open the store")

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sys.exit(10 + run_workers(2, sock, serve, quick_exit_s=600))
""")


def test_workers_that_keep_failing_to_start_stop_the_server_with_exit_1():
    """A worker that exits as it starts is replaced, but not forever: five in a row and the
    supervisor stops (a server that cannot serve says so instead of forking in a loop)."""
    from crm.server.workers import MAX_QUICK_EXITS

    done = subprocess.run([sys.executable, "-c", SUPERVISED], capture_output=True, text=True, timeout=300)
    assert done.returncode == 11, done.stderr
    assert "exited as they started" in done.stderr
    assert done.stderr.count("RuntimeError: cannot open the store") >= MAX_QUICK_EXITS


def test_devices_syncing_at_once_through_two_workers_converge_with_each_record_once(tmp_path):
    """Eight devices, each with accounts and an edit of a shared account queued, sync at once
    through a two-worker server (the kernel spreads their connections), then once more: every op is
    logged once and every device exports exactly what the server does."""
    from crm import Change, Device, canonical_json
    from crm.ids import new_id
    from crm.sync import SyncClient, pull_changes, push_outbox

    data, port = tmp_path / "server", free_port()
    store = ServerStore.open(data)
    tokens = [store.add_token("acme", f"rep-{i}") for i in range(8)]
    store.close()
    proc = _serve(data, port, 2)
    try:
        url = f"http://127.0.0.1:{port}"
        shared = new_id()
        seed = Device.init(tmp_path / "seed", rep="rep-0")
        seed.write([Change("account", shared, {"name": "Shared", "owner": "rep-0"}, {}, "create")])
        with SyncClient(base_url=url, token=tokens[0], timeout=60) as client:
            push_outbox(seed, client)
        devices = [Device.init(tmp_path / f"d{i}", rep=f"rep-{i}") for i in range(8)]
        for i, device in enumerate(devices):
            with SyncClient(base_url=url, token=tokens[i], timeout=60) as client:
                pull_changes(device, client)
            device.write([Change("account", new_id(), {"name": f"A{i}-{k}", "owner": f"rep-{i}"}, {}, "create")
                          for k in range(30)])
            device.edit("account", shared, {"city": f"City {i}"})
        errors: list[BaseException] = []

        def sync(i: int) -> None:
            try:
                with SyncClient(base_url=url, token=tokens[i], timeout=120) as client:
                    push_outbox(devices[i], client)
                    pull_changes(devices[i], client)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=sync, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not any(thread.is_alive() for thread in threads), "a sync did not finish in 300 s"
        assert not errors, errors
        for i in range(8):  # the second sync brings what the others pushed after this one pulled
            sync(i)
        assert not errors, errors
        store = ServerStore.open(data)
        try:
            assert store.stats("acme") == {"ops": 1 + 8 * 31, "records": 1 + 8 * 30}
            expected = canonical_json(store.export("acme"))
        finally:
            store.close()
        for i, device in enumerate(devices):
            assert device.outbox()["pending"] == 0
            assert canonical_json(device.export()) == expected, f"device {i} diverged from the server"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
