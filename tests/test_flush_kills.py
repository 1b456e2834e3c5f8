"""Real `crm` processes killed as they ask for their K-th flush to disk, for every K: the store
must stay whole, and a pull must lose nothing.

test_crash.py aims its kills by the clock, which lands them in Python's start-up far more often
than in the instant between two commits; a save made of two transactions (the record, then its
op) or a pull that saves its cursor before its page passes it. Here each command runs under
`strace -e inject=fdatasync,fsync:signal=KILL:when=K` for K = 1, 2, ... until it runs to its end:
the process dies on the K-th flush it asks for, after every write before it (a SIGKILL keeps what
the kernel already holds), so each step between two durable points is hit once, whatever the
machine's speed. Tried against fixtures/mutants: `outbox-after-record` leaves a record with no
op, and `cursor-before-page` a pull that never delivers three accounts (docs/coverage.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ok, running_server
from tests.test_crash import ROOT, check_store, crm, run_ok

MAX_FLUSHES = 40  # a command asking for more flushes than this is a failure of its own

pytestmark = [pytest.mark.process, pytest.mark.skipif(sys.platform != "linux", reason="needs strace (Linux)")]


def _strace_works() -> str | None:
    """Why strace cannot run here (not installed, or ptrace refused), or None."""
    if shutil.which("strace") is None:
        return "strace is not installed (scripts/ensure-strace.sh installs it)"
    probe = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"strace cannot trace here: {probe.stderr.strip()[:200]}"


@pytest.fixture(scope="module", autouse=True)
def strace() -> None:
    why = _strace_works()
    if why is not None:
        pytest.skip(why)


def killed_at_flush(k: int, argv: list[str]) -> subprocess.CompletedProcess | None:
    """``argv`` run until its ``k``-th fsync or fdatasync, where it is SIGKILLed: None then; its
    finished process when it asked for fewer flushes (it must have exited 0)."""
    done = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=fsync,fdatasync",
                           "-e", f"inject=fsync,fdatasync:signal=KILL:when={k}", *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode == -signal.SIGKILL:  # strace dies of the signal that killed its command
        return None
    assert done.returncode == 0, f"{' '.join(argv[2:])} exited {done.returncode}: {done.stderr[-500:]}"
    return done


def test_a_save_killed_at_each_of_its_flushes_leaves_every_record_with_its_op(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_ok(home, "init", "--rep", "Flush")
    account = run_ok(home, "account", "add", "--name", "Flush Test Deli")["id"]
    acknowledged = [("account", account)]
    commands = {
        "account": ["account", "add", "--name", "Killed Deli", "--city", "Leeds"],
        "visit": ["visit", "log", "--account", account, "--outcome", "met the buyer"],
        "order": ["order", "add", "--account", account, "--line", "SKU-1:2:2.50"],
        "note": ["note", "add", "--account", account, "--text", "call back on Monday"],
    }
    for kind, args in commands.items():
        kills = 0
        for k in range(1, MAX_FLUSHES + 1):
            done = killed_at_flush(k, crm(home, *args, "--json"))
            if done is not None:  # asked for fewer than k flushes: it ran to its end
                acknowledged.append((kind, json.loads(done.stdout)["id"]))
                break
            kills += 1
            check_store(home, acknowledged).close()  # every record has its op, every op its record
        else:
            pytest.fail(f"{kind}: still killed at flush {MAX_FLUSHES}")
        assert kills >= 1, f"{kind}: the command asked for no flush at all: it does not save durably"
    exported = run_ok(home, "export")
    for kind, rid in acknowledged:
        assert any(r["id"] == rid for r in exported[kind]), f"acknowledged {kind} {rid} is gone"


def test_a_pull_killed_at_each_of_its_flushes_still_delivers_everything(tmp_path: Path) -> None:
    with running_server(tmp_path / "server") as server:
        writer = tmp_path / "writer"
        ok("init", "--rep", "writer", "--server", server.url, "--token", server.add_rep("acme", "writer"),
           "--json", home=writer)
        made = {ok("account", "add", "--name", f"Pulled {n}", "--json", home=writer)["id"] for n in range(3)}
        ok("sync", "--json", home=writer)
        token = server.add_rep("acme", "reader")
        for k in range(1, MAX_FLUSHES + 1):
            reader = tmp_path / f"reader-{k}"
            ok("init", "--rep", "reader", "--server", server.url, "--token", token, "--json", home=reader)
            done = killed_at_flush(k, crm(reader, "sync", "--json"))
            for _ in range(2):  # the app reopened: it syncs again, and once more for good measure
                ok("sync", "--json", home=reader)
            held = {r["id"] for r in ok("export", "--json", home=reader)["account"]}
            assert held == made, f"killed at flush {k} of its first sync, the device never got {made - held}"
            if done is not None:  # the sync asked for fewer than k flushes: every step was hit
                assert k > 1, "the first sync asked for no flush at all"
                return
        pytest.fail(f"the sync was still killed at flush {MAX_FLUSHES}")


def test_a_push_of_several_batches_killed_at_each_of_its_flushes_delivers_every_op_once(tmp_path: Path) -> None:
    """The push keeps one batch in flight while the device counts the next one's attempt and
    stores the answer before it (crm.sync._OnThread): a kill at any of those flushes, with a batch
    on its way to the server or already in its log, must still end with every op delivered once
    and nothing left queued once the app syncs again."""
    from crm import Change, Device
    from crm.ids import new_id

    for k in range(1, MAX_FLUSHES + 1):
        with running_server(tmp_path / f"server-{k}") as server:
            home = tmp_path / f"phone-{k}"
            ok("init", "--rep", "rep", "--server", server.url, "--token", server.add_rep("acme", "rep"), "--json",
               home=home)
            device = Device.open(home)
            made = []
            for start in range(0, 2100, 700):  # three push batches of 1,000, 1,000 and 100
                changes = [Change("account", new_id(), {"name": f"Shop {n}"}, {}, "create")
                           for n in range(start, start + 700)]
                device.write(changes)
                made += [change.record_id for change in changes]
            device.close()
            done = killed_at_flush(k, crm(home, "sync", "--json"))
            for _ in range(2):  # the app reopened: it syncs again, and once more for good measure
                ok("sync", "--json", home=home)
            on_server = [r["id"] for r in json.loads(server.export("acme"))["account"]]
            assert sorted(on_server) == sorted(made), f"killed at flush {k}: the server holds " \
                f"{len(on_server)} accounts ({len(set(on_server))} distinct) of {len(made)}"
            outbox = ok("outbox", "--json", home=home)
            assert outbox["pending"] == 0, f"killed at flush {k}: {outbox['pending']} ops still queued"
            assert ok("outbox", "--rejected", "--json", home=home)["rejected"] == 0
            assert sorted(r["id"] for r in ok("export", "--json", home=home)["account"]) == sorted(made)
        if done is not None:  # the sync asked for fewer than k flushes: every step was hit
            assert k > 4, f"a push of three batches asked for only {k - 1} flushes"
            return
    pytest.fail(f"the sync was still killed at flush {MAX_FLUSHES}")
