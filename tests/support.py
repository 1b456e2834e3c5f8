"""Helpers for tests that run the real `crm`: as processes (a server on a free port, a device CLI
per command), or in-process (the same server app and the same CLI, without a socket or a process).

Both kinds of rig answer the same methods, so one test body runs in the fast tier (in-process)
and in the full run (real processes): see the ``server`` fixture in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx

from harness.ports import free_port

CRM = [sys.executable, "-m", "cli.main"]
# A whole certification (or chaos campaign) run as a subprocess may take this long before a test
# calls it hung. A safety net, not a speed check: on a loaded 2-core CI machine one took 11 min
# that takes 2 on a quiet one, and a 600 s net failed the run for it.
CERTIFY_TIMEOUT = 1800


def examples(ci: int) -> int:
    """A Hypothesis test's example budget: ``ci`` in the full run, a twentieth in the fast tier
    (HYPOTHESIS_PROFILE=dev, set by `tox -e fast`)."""
    return ci if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci" else max(10, ci // 20)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def exit_code(self) -> int:  # the name typer's CliRunner result gives it
        return self.code


def crm(*args: str, home: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> Result:
    argv = [*CRM, *(["--home", str(home)] if home else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return Result(proc.returncode, proc.stdout, proc.stderr)


def home_with_an_account(home: Path) -> Path:
    """A device home with one account in it (and its queued op): a store holding the rep's work."""
    from crm import Device

    device = Device.init(home, rep="rep-1")
    device.create("account", {"name": "Corner Store"})
    device.close()
    return home


def crm_inprocess(*args: str, home: Path | None = None, env: dict[str, str] | None = None) -> Result:
    """`crm` run in this process by typer's CliRunner: the same commands, exit codes and output."""
    from typer.testing import CliRunner

    from cli.main import app

    argv = [*(["--home", str(home)] if home else []), *args]
    result = CliRunner().invoke(app, argv, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Result(result.exit_code, result.stdout, result.stderr)


def ok_inprocess(home: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """The JSON a `crm ... --json` run in this process printed; it must have exited 0."""
    result = crm_inprocess(*args, "--json", home=home, env=env)
    assert result.code == 0, result.stderr
    return result.json


def ok(*args: str, **kwargs: Any) -> Any:
    return _ok(crm(*args, **kwargs), args)


def _ok(result: Result, args: tuple[str, ...]) -> Any:
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

    # -- the rig: how a test reaches this server and runs `crm` against it --------------------
    def http(self) -> httpx.Client:
        """A plain HTTP client for this server, for requests no `crm` command would send."""
        return httpx.Client(base_url=self.url, timeout=30)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        with self.http() as client:
            return client.post(path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        with self.http() as client:
            return client.get(path, **kwargs)

    def crm(self, *args: str, **kwargs: Any) -> Result:
        return crm(*args, **kwargs)

    def ok(self, *args: str, **kwargs: Any) -> Any:
        return _ok(self.crm(*args, **kwargs), args)

    def device(self, tmp: Path, name: str, token: str) -> Path:
        home = tmp / name
        self.ok("init", "--rep", name, "--server", self.url, "--token", token, "--json", home=home)
        return home

    def export_home(self, home: Path) -> str:
        result = self.crm("export", home=home)
        assert result.code == 0, result.stderr
        return result.stdout

    def add_rep(self, org: str, rep: str) -> str:
        return self.ok("server", "add-rep", *self.where, "--org", org, "--rep", rep, "--json")["token"]

    def export(self, org: str) -> str:
        result = self.crm("server", "export", *self.where, "--org", org)
        assert result.code == 0, result.stderr
        return result.stdout


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str, *, inodes: int | None = None) -> Iterator[Callable[[], None]]:
    """A tmpfs of ``size`` (and at most ``inodes`` files) mounted at ``where`` (made) for a test;
    yields a function that remounts it read-only. Needs root and mount(8): skips the test saying
    why otherwise."""
    import pytest

    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    where.mkdir()
    options = f"size={size},mode=0700" + (f",nr_inodes={inodes}" if inodes else "")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this machine does not let the test mount a tmpfs: {done.stderr.strip()}")

    def seal() -> None:
        subprocess.run([mount, "-o", "remount,ro", str(where)], check=True, capture_output=True)

    try:
        yield seal
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


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


def outbox_ops(device: Any) -> list[Any]:
    """A device's queued ops, in order, as the Ops a pull would hand to ``apply_remote``."""
    from crm.ops import loads, op_from_wire

    return [op_from_wire(loads(body)) for (body,) in device.store.conn.execute("SELECT body FROM outbox ORDER BY seq")]


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


class AppTransport(httpx.BaseTransport):
    """An ASGI app served to a synchronous httpx client in this process: requests take the app's
    whole path (routing, auth, parsing, the store) with no socket and no process. With no app
    (``serve(None)``) it answers like a server that is down."""

    def __init__(self) -> None:
        self._asgi: httpx.ASGITransport | None = None
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()

    def serve(self, app: Any | None) -> None:
        self._asgi = httpx.ASGITransport(app=app) if app is not None else None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        asgi = self._asgi
        if asgi is None:
            raise httpx.ConnectError("connection refused (the in-process server is down)", request=request)
        body = request.read()

        async def call() -> httpx.Response:
            inner = httpx.Request(request.method, request.url, headers=request.headers, content=body)
            response = await asgi.handle_async_request(inner)
            content = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=content,
                                  request=request)

        return self._portal.call(call)

    def close(self) -> None:
        """Each client closes its transport; this one outlives them (see `shutdown`)."""

    def shutdown(self) -> None:
        self._portal_cm.__exit__(None, None, None)


class AppServer(Server):
    """The in-process twin of `Server`: ``create_app`` over a real SQLite ServerStore in ``data``,
    and `crm` run by typer's CliRunner, its `crm sync` reaching the app through `AppTransport`.
    Install it with ``monkeypatch`` (see ``server`` in tests/conftest.py). ``kill`` closes the
    store and answers like a server that is down; ``start`` opens it again."""

    URL = "http://crm-server.test"

    def __init__(self, data: Path) -> None:
        super().__init__(data, 0)
        self.store: Any = None
        self.transport = AppTransport()
        self.start()

    @property
    def url(self) -> str:
        return self.URL

    def install(self, monkeypatch: Any) -> None:
        import crm.sync

        def client_for(device: Any, *, timeout: float = 30.0, transport: Any = None) -> Any:
            url, token = device.setting("server_url"), device.setting("token")
            if not url or not token:
                return real_client_for(device)  # raises the usual NotConfiguredError
            return crm.sync.SyncClient(base_url=url, token=token, timeout=timeout, transport=self.transport)

        real_client_for = crm.sync.client_for
        monkeypatch.setattr(crm.sync, "client_for", client_for)

    def start(self) -> None:
        from crm.server import ServerStore
        from crm.server.app import create_app

        if self.store is None:
            self.store = ServerStore.open(self.data)
            self.transport.serve(create_app(self.store))

    def kill(self) -> None:
        self.transport.serve(None)
        if self.store is not None:
            self.store.close()
            self.store = None

    def close(self) -> None:
        self.kill()
        self.transport.shutdown()

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, transport=self.transport, timeout=30)

    def crm(self, *args: str, home: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> Result:
        return crm_inprocess(*args, home=home, env=env)


def reference_profile_with(tmp_path: Path, name: str, change) -> Path:
    """A copy of fixtures/sut/reference.toml with ``change(data)`` applied, written as TOML."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    data = tomllib.loads((root / "fixtures" / "sut" / "reference.toml").read_text())
    change(data)
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class CtrlCOnce:
    """A thread job's ``done`` Event (crm.sync._OnThread) whose first wait is cut short by a
    Ctrl-C; that moment also sets ``release``, letting the job's work end."""

    def __init__(self, inner: threading.Event, release: threading.Event) -> None:
        self.inner, self.release, self.interrupted = inner, release, False

    def wait(self, timeout: float | None = None) -> bool:
        if not self.interrupted:
            self.interrupted = True
            self.release.set()
            raise KeyboardInterrupt
        return self.inner.wait(timeout)

    def set(self) -> None:
        self.inner.set()

    def is_set(self) -> bool:
        return self.inner.is_set()
