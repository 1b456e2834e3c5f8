"""Helpers for tests that run the real `crm` as processes: a server on a free port, a device CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

CRM = [sys.executable, "-m", "cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def crm(*args: str, home: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> Result:
    argv = [*CRM, *(["--home", str(home)] if home else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return Result(proc.returncode, proc.stdout, proc.stderr)


def ok(*args: str, **kwargs: Any) -> Any:
    result = crm(*args, **kwargs)
    assert result.code == 0, f"crm {' '.join(args)} exited {result.code}: {result.stderr}"
    return result.json if result.stdout.strip().startswith(("{", "[")) else result.stdout


@dataclass
class Server:
    """A real `crm server serve` process, on SQLite under ``data`` or on the PostgreSQL ``db``."""

    data: Path | None
    port: int
    proc: subprocess.Popen | None = None
    db: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def where(self) -> list[str]:
        """The option every `crm server` command takes to name this server's store."""
        return ["--db", self.db] if self.db else ["--data", str(self.data)]

    def start(self) -> None:
        self.proc = subprocess.Popen([*CRM, "server", "serve", *self.where, "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/v1/health", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.proc.stderr.read()}")
            time.sleep(0.05)
        raise RuntimeError("server did not become ready in 20 s")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def add_rep(self, org: str, rep: str) -> str:
        return ok("server", "add-rep", *self.where, "--org", org, "--rep", rep, "--json")["token"]

    def export(self, org: str) -> str:
        result = crm("server", "export", *self.where, "--org", org)
        assert result.code == 0, result.stderr
        return result.stdout


@contextlib.contextmanager
def running_server(data: Path) -> Iterator[Server]:
    server = Server(data, free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


def device(tmp: Path, name: str, server: Server, token: str) -> Path:
    home = tmp / name
    ok("init", "--rep", name, "--server", server.url, "--token", token, "--json", home=home)
    return home


def export(home: Path) -> str:
    result = crm("export", home=home)
    assert result.code == 0, result.stderr
    return result.stdout


def wait_for(predicate, *, timeout: float, interval: float = 0.1) -> float:
    """Seconds until ``predicate()`` held; AssertionError after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
