"""The real Toxiproxy server, and a control client where every call has a timeout.

The network faults of a conformance run (airplane mode, latency, stalls, resets, truncation)
come from Toxiproxy, one proxy per device in front of the SUT server. The client reuses
toxiproxy-python's objects (``Proxy``, ``Toxic``) and its status-code mapping, but talks to one
server given per instance (the library keeps one global host) and never waits unboundedly: a
hung Toxiproxy must fail the step, not hang the run.

Toxiproxy's control API can also hang for good (Shopify/toxiproxy#558): removing a toxic that a
link cannot drain holds the proxy's toxic lock, the proxy's accept loop waits on that lock, and
from then on disabling or deleting that proxy, and so any call on the proxy list, never returns.
The client a ``ToxiproxyServer`` hands out (``RestartingToxiproxy``) survives it: it keeps what
it made, and when a call gets no answer it starts the server again on the same port with the same
proxies on the same addresses and the same toxics, as the call would have left them.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from toxiproxy import Proxy
from toxiproxy.api import validate_response
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists
from toxiproxy.toxic import Toxic

from .ports import HOST, free_port
from .processes import ManagedProcess, ProcessError

REPO = Path(__file__).resolve().parent.parent
INSTALL_HINT = "run scripts/install-toxiproxy.sh (it builds the pinned server into .tools/bin)"
STREAMS = ("upstream", "downstream")  # upstream: client -> server; downstream: server -> client


class ToxiproxyError(RuntimeError):
    """A missing binary, a server that will not start, or a control call that failed or timed out."""


class ToxiproxyHung(ToxiproxyError):
    """A control call got no answer within the client's timeout."""


def find_server_binary() -> Path:
    """``toxiproxy-server``: $TOXIPROXY_SERVER, then $CRM_TOOLS_DIR/bin, then <repo>/.tools/bin, then PATH."""
    explicit = os.environ.get("TOXIPROXY_SERVER")
    if explicit:
        if shutil.which(explicit):
            return Path(shutil.which(explicit))
        raise ToxiproxyError(f"TOXIPROXY_SERVER={explicit} is not an executable file; {INSTALL_HINT}")
    candidates = []
    if os.environ.get("CRM_TOOLS_DIR"):
        candidates.append(Path(os.environ["CRM_TOOLS_DIR"]) / "bin" / "toxiproxy-server")
    candidates.append(REPO / ".tools" / "bin" / "toxiproxy-server")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    on_path = shutil.which("toxiproxy-server")
    if on_path:
        return Path(on_path)
    looked = ", ".join(str(p) for p in candidates)
    raise ToxiproxyError(f"toxiproxy-server not found (looked at $TOXIPROXY_SERVER, {looked}, PATH); "
                         f"{INSTALL_HINT}")


# -- toxics: each builder returns the library's Toxic, named "<type>_<stream>" unless named --------

def _toxic(kind: str, stream: str, name: str | None, toxicity: float, **attributes: Any) -> Toxic:
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {', '.join(STREAMS)}, not {stream!r}")
    return Toxic(type=kind, stream=stream, name=name or f"{kind}_{stream}", toxicity=toxicity,
                 attributes=attributes)


def latency(ms: int, jitter_ms: int = 0, *, stream: str = "downstream", name: str | None = None,
            toxicity: float = 1.0) -> Toxic:
    """Delay data by ``ms`` +/- ``jitter_ms`` milliseconds."""
    return _toxic("latency", stream, name, toxicity, latency=int(ms), jitter=int(jitter_ms))


def timeout(ms: int = 0, *, stream: str = "downstream", name: str | None = None,
            toxicity: float = 1.0) -> Toxic:
    """Stop all data; close the connection after ``ms`` (0: keep it open, silent, forever).

    On ``upstream`` the request never reaches the server: the surest stall. On ``downstream`` a
    server that closes right after answering still closes the client's connection.
    """
    return _toxic("timeout", stream, name, toxicity, timeout=int(ms))


def reset_peer(ms: int = 0, *, stream: str = "downstream", name: str | None = None,
               toxicity: float = 1.0) -> Toxic:
    """Reset the TCP connection (RST) after ``ms`` milliseconds."""
    return _toxic("reset_peer", stream, name, toxicity, timeout=int(ms))


def limit_data(nbytes: int, *, stream: str = "downstream", name: str | None = None,
               toxicity: float = 1.0) -> Toxic:
    """Close the connection once ``nbytes`` bytes went through: a truncated request or response."""
    return _toxic("limit_data", stream, name, toxicity, bytes=int(nbytes))


def slicer(average_size: int, size_variation: int = 0, delay_us: int = 0, *, stream: str = "downstream",
           name: str | None = None, toxicity: float = 1.0) -> Toxic:
    """Cut data into small packets (``average_size`` bytes), ``delay_us`` microseconds apart."""
    return _toxic("slicer", stream, name, toxicity, average_size=int(average_size),
                  size_variation=int(size_variation), delay=int(delay_us))


def bandwidth(rate_kb: int, *, stream: str = "downstream", name: str | None = None,
              toxicity: float = 1.0) -> Toxic:
    """Limit throughput to ``rate_kb`` KB/s."""
    return _toxic("bandwidth", stream, name, toxicity, rate=int(rate_kb))


def proxy_url(proxy: Proxy) -> str:
    """The HTTP base URL a client uses to go through ``proxy``."""
    return f"http://{proxy.listen}"


class Toxiproxy:
    """Control client for one Toxiproxy server; every call gives up after ``timeout`` seconds."""

    on_restart: Callable[[str], None] | None = None  # told when a RestartingToxiproxy restarted its server

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False  # loopback control traffic never goes via HTTP_PROXY
        self._lock = threading.Lock()  # a Session is not thread-safe; device threads share a client

    def _call(self, what: str, method: str, path: str, body: dict | None = None) -> requests.Response:
        try:
            with self._lock:
                response = self.session.request(method, self.url + path, json=body, timeout=self.timeout)
        except requests.Timeout as exc:
            raise ToxiproxyHung(f"{what}: Toxiproxy at {self.url} did not answer within "
                                f"{self.timeout:g}s") from exc
        except requests.RequestException as exc:
            raise ToxiproxyError(f"{what}: cannot reach Toxiproxy at {self.url} ({exc})") from exc
        try:
            validate_response(response)
        except (ProxyExists, NotFound, InvalidToxic) as exc:
            raise ToxiproxyError(f"{what}: Toxiproxy answered {response.status_code}: "
                                 f"{_message(response)}") from exc
        if not response.ok:
            raise ToxiproxyError(f"{what}: Toxiproxy answered {response.status_code}: {_message(response)}")
        return response

    def version(self) -> str:
        response = self._call("version", "GET", "/version")
        try:
            return str(response.json()["version"])  # 2.6+: {"version": "2.12.0"}
        except (ValueError, KeyError, TypeError):
            return response.text.strip()

    def proxies(self) -> dict[str, Proxy]:
        data = self._call("list proxies", "GET", "/proxies").json()
        return {name: _proxy(values) for name, values in data.items()}

    def proxy(self, name: str) -> Proxy:
        return _proxy(self._call(f"show proxy {name!r}", "GET", f"/proxies/{name}").json())

    def create_proxy(self, name: str, upstream: str, *, listen: str | None = None,
                     enabled: bool = True) -> Proxy:
        """A proxy to ``upstream`` ("host:port") listening on ``listen`` (default: a free loopback port).

        Toxiproxy keeps the port it bound, so disabling and re-enabling keeps the same URL.
        """
        body = {"name": name, "upstream": upstream, "listen": listen or f"{HOST}:{free_port()}",
                "enabled": enabled}
        return _proxy(self._call(f"create proxy {name!r}", "POST", "/proxies", body).json())

    def delete_proxy(self, name: str) -> None:
        self._call(f"delete proxy {name!r}", "DELETE", f"/proxies/{name}")

    def disable(self, name: str) -> Proxy:
        """Airplane mode: the proxy stops listening and drops its open connections."""
        return _proxy(self._call(f"disable proxy {name!r}", "PATCH", f"/proxies/{name}",
                                 {"enabled": False}).json())

    def enable(self, name: str) -> Proxy:
        return _proxy(self._call(f"enable proxy {name!r}", "PATCH", f"/proxies/{name}",
                                 {"enabled": True}).json())

    def add_toxic(self, proxy: str, toxic: Toxic) -> Toxic:
        body = {"name": toxic.name, "type": toxic.type, "stream": toxic.stream,
                "toxicity": toxic.toxicity, "attributes": toxic.attributes}
        data = self._call(f"add toxic {toxic.name!r} to proxy {proxy!r}", "POST",
                          f"/proxies/{proxy}/toxics", body).json()
        return Toxic(**data)

    def update_toxic(self, proxy: str, name: str, *, toxicity: float) -> Toxic:
        """Change a toxic in place. Toxiproxy restarts only that toxic's stage of each link, so data
        an earlier toxic holds (a latency toxic's delayed answer) stays held and then meets it;
        adding a toxic instead would flush what is held straight through."""
        data = self._call(f"update toxic {name!r} of proxy {proxy!r}", "POST", f"/proxies/{proxy}/toxics/{name}",
                          {"toxicity": toxicity}).json()
        return Toxic(**data)

    def toxics(self, proxy: str) -> dict[str, Toxic]:
        data = self._call(f"list toxics of proxy {proxy!r}", "GET", f"/proxies/{proxy}/toxics").json()
        return {item["name"]: Toxic(**item) for item in data}

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call(f"remove toxic {name!r} from proxy {proxy!r}", "DELETE", f"/proxies/{proxy}/toxics/{name}")

    def reset(self) -> None:
        """Every proxy enabled again and every toxic removed (the proxies themselves stay)."""
        self._call("reset", "POST", "/reset")

    def close(self) -> None:
        self.session.close()


def _proxy(values: dict) -> Proxy:
    return Proxy(name=values["name"], upstream=values["upstream"], enabled=values["enabled"],
                 listen=values["listen"])


def _message(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", response.text)).strip()
    except ValueError:
        return response.text.strip() or response.reason


class _Made:
    """A proxy as this client left it: what a restarted server must be given back."""

    def __init__(self, proxy: Proxy) -> None:
        self.upstream, self.listen, self.enabled = proxy.upstream, proxy.listen, proxy.enabled
        self.toxics: dict[str, Toxic] = {}  # in the order they were added: the order of the chain


class RestartingToxiproxy(Toxiproxy):
    """The control client of a ``ToxiproxyServer`` that outlives a hung server (module docstring).

    A restart cuts every open connection through every proxy; ``on_restart`` (given the reason) is
    told, so a scenario's history records the blip. A call that hung is taken as done: its effect
    is part of what the restarted server is given. A server that died is restarted alike when a
    call fails, and a restart that failed half-way is tried again by the next call that fails.
    Calls wait while a restart runs (device threads share a client)."""

    def __init__(self, server: ToxiproxyServer, *, timeout: float) -> None:
        super().__init__(server.url, timeout=timeout)
        self.server = server
        self.made: dict[str, _Made] = {}
        self._restarting = threading.Lock()  # guards ``made`` and the server's restarts
        self._incomplete = False  # a restart began and did not give every proxy back

    def forget(self) -> None:
        """The server was started afresh (``ToxiproxyServer.start``): it holds nothing of ours."""
        with self._restarting:
            self.made.clear()
            self._incomplete = False

    def _restart(self, cause: ToxiproxyError) -> None:
        self._incomplete = True
        self.server.restart()
        for name, made in self.made.items():
            Toxiproxy.create_proxy(self, name, made.upstream, listen=made.listen, enabled=made.enabled)
            for toxic in made.toxics.values():
                Toxiproxy.add_toxic(self, name, toxic)
        self._incomplete = False
        if self.on_restart is not None:
            self.on_restart(f"Toxiproxy restarted: {cause}")

    def _changed(self, call: Callable[[], Any], effect: Callable[[], None]) -> Any:
        """``call``'s answer, and ``effect`` on what this client made; on a hang, None, and the
        server restarted with ``effect`` applied."""
        return self._call_or_restart(call, effect)

    def _read(self, call: Callable[[], Any]) -> Any:
        return self._call_or_restart(call, None)

    def _call_or_restart(self, call: Callable[[], Any], effect: Callable[[], None] | None) -> Any:
        with self._restarting:  # a call starts once any restart under way has finished
            began = self.server.restarts
        try:
            answer = call()
        except ToxiproxyError as error:
            with self._restarting:
                if self.server.restarts == began:  # no restart since this call began
                    if not (isinstance(error, ToxiproxyHung) or self._incomplete
                            or not self.server.process.running):  # hung, half restarted, or dead
                        raise
                    if effect is not None:
                        effect()
                    self._restart(error)
                    if effect is not None:
                        return None
            answer = call()  # the server was restarted while this call was on its way: ask the new one
        if effect is not None:
            with self._restarting:
                effect()
        return answer

    def create_proxy(self, name: str, upstream: str, *, listen: str | None = None,
                     enabled: bool = True) -> Proxy:
        proxy = self._read(lambda: super(RestartingToxiproxy, self).create_proxy(
            name, upstream, listen=listen, enabled=enabled))
        with self._restarting:
            self.made[name] = _Made(proxy)
        return proxy

    def delete_proxy(self, name: str) -> None:
        try:
            self._changed(lambda: super(RestartingToxiproxy, self).delete_proxy(name),
                          lambda: self.made.pop(name, None))
        finally:  # deleted or not, it is not wanted: a restart must not bring it (or its port) back
            with self._restarting:
                self.made.pop(name, None)

    def disable(self, name: str) -> Proxy:
        return self._enabled(name, False)

    def enable(self, name: str) -> Proxy:
        return self._enabled(name, True)

    def _enabled(self, name: str, enabled: bool) -> Proxy:
        base = super().enable if enabled else super().disable

        def effect() -> None:
            if name in self.made:
                self.made[name].enabled = enabled

        answer = self._changed(lambda: base(name), effect)
        made = self.made.get(name)
        if answer is None and made is not None:
            answer = Proxy(name=name, upstream=made.upstream, enabled=made.enabled, listen=made.listen)
        return answer

    def add_toxic(self, proxy: str, toxic: Toxic) -> Toxic:
        def effect() -> None:
            if proxy in self.made:
                self.made[proxy].toxics[toxic.name] = toxic

        return self._changed(lambda: super(RestartingToxiproxy, self).add_toxic(proxy, toxic), effect) or toxic

    def update_toxic(self, proxy: str, name: str, *, toxicity: float) -> Toxic:
        def effect() -> None:
            made = self.made.get(proxy)
            if made is not None and name in made.toxics:
                made.toxics[name].toxicity = toxicity

        answer = self._changed(lambda: super(RestartingToxiproxy, self).update_toxic(proxy, name, toxicity=toxicity),
                               effect)
        return answer or self.made.get(proxy, _NO_PROXY).toxics.get(name)

    def remove_toxic(self, proxy: str, name: str) -> None:
        def effect() -> None:
            if proxy in self.made:
                self.made[proxy].toxics.pop(name, None)

        self._changed(lambda: super(RestartingToxiproxy, self).remove_toxic(proxy, name), effect)

    def reset(self) -> None:
        def effect() -> None:
            for made in self.made.values():
                made.enabled, made.toxics = True, {}

        self._changed(super().reset, effect)

    def version(self) -> str:
        return self._read(super().version)

    def proxies(self) -> dict[str, Proxy]:
        return self._read(super().proxies)

    def proxy(self, name: str) -> Proxy:
        return self._read(lambda: super(RestartingToxiproxy, self).proxy(name))

    def toxics(self, proxy: str) -> dict[str, Toxic]:
        return self._read(lambda: super(RestartingToxiproxy, self).toxics(proxy))


_NO_PROXY = _Made(Proxy(name="", upstream="", enabled=False, listen=""))


class ToxiproxyServer:
    """A real ``toxiproxy-server`` on a free loopback port, for the duration of a ``with`` block."""

    def __init__(self, *, port: int | None = None, binary: str | Path | None = None,
                 log_dir: str | Path | None = None, start_timeout: float = 10.0,
                 control_timeout: float = 5.0) -> None:
        self.binary = Path(binary) if binary else find_server_binary()
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.control_timeout = control_timeout
        self.log_dir = log_dir
        self.process = self._process("toxiproxy")
        self._client: RestartingToxiproxy | None = None
        self.restarts = 0

    def _process(self, name: str) -> ManagedProcess:
        return ManagedProcess([str(self.binary), "-host", HOST, "-port", str(self.port)], name=name,
                              log_dir=self.log_dir)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def client(self) -> RestartingToxiproxy:
        if self._client is None:
            self._client = RestartingToxiproxy(self, timeout=self.control_timeout)
        return self._client

    def start(self) -> ToxiproxyServer:
        """Start the server afresh (also after it crashed): it holds no proxies."""
        if self._client is not None:
            self._client.forget()
        self._launch()
        return self

    def _launch(self) -> None:
        try:
            self.process.start(ready_url=f"{self.url}/version", ready_timeout=self.start_timeout)
        except ProcessError as exc:
            raise ToxiproxyError(f"toxiproxy-server ({self.binary}) did not start: {exc}") from exc

    def restart(self) -> None:
        """Kill the server and start a new one on the same port, with no proxies (a hung control
        API cannot be asked to stop); the old one's logs stay, the new one logs under a new name.
        Its client gives the proxies back (``RestartingToxiproxy``)."""
        self.process.kill()
        self.restarts += 1
        self.process = self._process(f"toxiproxy-restart{self.restarts}")
        self._launch()

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        self.process.stop(grace=3.0)

    def __enter__(self) -> ToxiproxyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
