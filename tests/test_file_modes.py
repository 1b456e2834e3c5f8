"""Everything crm creates under a home is private: files 0600, directories 0700, whatever the umask
(the tests run crm under the laxest, 000). The store holds a rep's customers and the server token;
the agent's state and log say what was synced and when."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm import agent
from tests.support import crm as crm_process
from tests.support import crm_inprocess as crm
from tests.support import wait_for


@pytest.fixture
def lax_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _modes(top: Path, home: Path) -> dict[str, str]:
    """Octal mode of every directory from ``top`` down to ``home`` and of everything in ``home``."""
    out = {}
    path = home
    while True:
        out[str(path.relative_to(top.parent))] = oct(stat.S_IMODE(path.stat().st_mode))
        if path == top:
            break
        path = path.parent
    for item in home.rglob("*"):
        out[str(item.relative_to(top.parent))] = oct(stat.S_IMODE(item.lstat().st_mode))
    return out


def _private(modes: dict[str, str], top: Path, home: Path) -> None:
    for name, mode in modes.items():
        is_dir = (top.parent / name).is_dir()
        assert mode == ("0o700" if is_dir else "0o600"), (name, mode, modes)


def test_the_store_its_directories_and_the_agents_files_are_private(tmp_path, lax_umask, monkeypatch):
    top = tmp_path / "made-by-crm"
    home = top / "deeper" / "home"
    assert crm("init", "--rep", "rep-1", "--server", "http://127.0.0.1:9", "--token", "secret", home=home).code == 0
    assert crm("account", "add", "--name", "Corner Store", home=home).code == 0

    stop = threading.Event()
    stop.set()  # one pass: the agent takes its lock and publishes its state, then stops
    runner = threading.Thread(target=agent.run, args=(home,), kwargs={"stop": stop})
    runner.start()
    runner.join()

    class Started:  # `crm agent start` without the process: the log file is what is under test
        pid = 4242

        def __init__(self, argv, **kwargs):
            self.argv = argv

    monkeypatch.setattr(agent.subprocess, "Popen", Started)
    assert agent.start_detached(home, wait=False) == 4242

    modes = _modes(top, home)
    assert {"crm.sqlite3", "agent.json", "agent.pid", "agent.log"} <= {Path(n).name for n in modes}, modes
    _private(modes, top, home)


def test_older_lax_agent_files_are_tightened(tmp_path, lax_umask, monkeypatch):
    home = tmp_path / "home"
    assert crm("init", "--rep", "rep-1", home=home).code == 0
    for name in ("agent.log", "agent.pid", "agent.json"):
        (home / name).write_text("")
        (home / name).chmod(0o644)
    stop = threading.Event()
    stop.set()
    runner = threading.Thread(target=agent.run, args=(home,), kwargs={"stop": stop})
    runner.start()
    runner.join()
    monkeypatch.setattr(agent.subprocess, "Popen", lambda argv, **kwargs: type("P", (), {"pid": 1})())
    agent.start_detached(home, wait=False)
    for name in ("agent.log", "agent.pid", "agent.json"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name


@pytest.mark.process
def test_a_real_agent_leaves_only_private_files(tmp_path, lax_umask):
    top = tmp_path / "made-by-crm"
    home = top / "home"
    assert crm_process("init", "--rep", "rep-1", "--server", "http://127.0.0.1:9", "--token", "t",
                       home=home).code == 0
    started = crm_process("agent", "start", "--json", home=home)
    assert started.code == 0, started.stderr
    try:
        wait_for(lambda: (home / "agent.json").exists(), timeout=30)
        assert crm_process("account", "add", "--name", "Corner Store", home=home).code == 0
    finally:
        stopped = crm_process("agent", "stop", "--json", home=home)
        assert stopped.code == 0, stopped.stderr
    modes = _modes(top, home)
    assert {"crm.sqlite3", "agent.json", "agent.pid", "agent.log"} <= {Path(n).name for n in modes}, modes
    _private(modes, top, home)
