"""What one client can hold of the server: read timeouts and connection caps (docs/security.md).

Two layers, because a request that never finishes its head never reaches the app:

* ``guarded_protocol`` (the socket layer: uvicorn's httptools protocol, subclassed) counts connections
  per client address and in all, answering ``503`` and closing a connection over either cap at
  once, and closes a connection whose request head is not complete ``head_timeout`` seconds after
  it opened or after the previous answer. uvicorn itself times out only idle keep-alive
  connections: a half-sent head, which needs no token, was held for ever.
* ``BodyTimeout`` (an ASGI middleware) bounds how long the app waits for a request body: at most
  ``body_timeout`` seconds for each part, and at most ``body_timeout`` plus one second per
  ``min_body_rate`` bytes received for all of it. Past either, the answer is ``408`` and the
  connection is closed. Only time spent waiting for the client counts, not time the app spends
  elsewhere (a slow disk, a queue for the write lock).
"""

from __future__ import annotations

import asyncio
import resource
from collections import Counter
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..ops import dumps
from .store import MAX_PULL_BYTES

HEAD_TIMEOUT_S = 5.0
BODY_TIMEOUT_S = 5.0
MIN_BODY_RATE = 4096  # bytes per second a body must average once past body_timeout
MAX_CONNECTIONS_PER_ADDRESS = 32
MAX_HEAD_BYTES = 16 * 1024  # request line and headers; a push's head is well under 1 KiB


def default_max_connections() -> int:
    """Half this process's open-file limit: the other half stays for the database, whose
    SQLite connections (one per worker thread, with their write-ahead log) need descriptors too."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(8, min(soft, 1 << 20) // 2)


@dataclass(frozen=True)
class Limits:
    """The limits `crm server serve` applies; each is one of its options (docs/cli.md)."""

    head_timeout: float = HEAD_TIMEOUT_S
    body_timeout: float = BODY_TIMEOUT_S
    min_body_rate: int = MIN_BODY_RATE  # 0: no rate, only the wait for each part
    max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS  # 0: no cap
    max_connections: int | None = None  # None: default_max_connections()
    max_head_bytes: int = MAX_HEAD_BYTES
    max_pull_bytes: int = MAX_PULL_BYTES


def _raw_json(status: str, body: dict[str, Any]) -> bytes:
    payload = dumps(body).encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n"
            "connection: close\r\n\r\n").encode() + payload


class HeadTooLarge(Exception):
    """Raised from a parser callback: the request head passed ``max_head_bytes``."""


def guarded_protocol(limits: Limits) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol (``http=``) enforcing the connection caps, the head timeout
    and the head size of ``limits``; its counters are shared by the connections of one server.

    httptools, not h11: h11 parses in Python and cost each request about 0.4 ms more of the
    server's CPU (bench/README.md). llhttp bounds neither a head nor a chunked body's trailers
    (and its CPU grows with the square of an unfinished line), so this protocol counts what a
    request sends outside its body: after each read, the read's bytes but its body's; and the
    request line and each header as the parser completes them, so a head that arrives whole in
    one read is refused before it reaches the app. Past ``max_head_bytes``, a head gets 400 and
    the connection is closed, as h11 answered; a request whose trailers run past it is closed."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    most = limits.max_connections or default_max_connections()
    per_address_cap = limits.max_connections_per_address
    per_address: Counter[str] = Counter()
    count = [0]

    class GuardedProtocol(HttpToolsProtocol):
        _counted_address: str | None = None
        _counted = False
        _head_timer: asyncio.TimerHandle | None = None
        _in_message = False  # from a request's first byte to its end
        _head_open = False  # from a request's first byte to the end of its head
        _outside_body = 0  # bytes of the request that are not its body: head, chunk sizes, trailers
        _head_bytes = 0  # the head's lines as the parser completed them
        _body_in_read = 0  # body bytes of the read being parsed

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            address = self.client[0] if self.client else "?"
            if count[0] >= most:
                self._refuse("the server has as many connections as it takes; retry later")
                return
            if per_address_cap and per_address[address] >= per_address_cap:
                self._refuse(f"at most {per_address_cap} connections from one address; retry later")
                return
            count[0] += 1
            per_address[address] += 1
            self._counted, self._counted_address = True, address
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._counted:
                self._counted = False
                count[0] -= 1
                per_address[self._counted_address] -= 1
                if not per_address[self._counted_address]:
                    del per_address[self._counted_address]
            self._cancel_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._body_in_read = 0
            super().data_received(data)
            if self._in_message and not self.transport.is_closing():
                # all of the read but its body: head, chunk sizes, trailers (and, pipelined, the
                # end of the previous request: an upper bound)
                self._outside_body += len(data) - self._body_in_read
                if self._outside_body > limits.max_head_bytes:
                    if self._head_open:
                        self.send_400_response(f"request head over {limits.max_head_bytes} bytes")
                    else:  # trailers without end: the request is in the app already, so no answer
                        self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_message = self._head_open = True
            self._outside_body = self._head_bytes = 0

        def on_url(self, url: bytes) -> None:
            self._count_head(len(url) + 16)  # method, spaces, version and line end at their longest
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            if self._head_open:  # a trailer is counted with the reads, above
                self._count_head(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._head_open = False
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            self._body_in_read += len(body)
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._in_message = False
            super().on_message_complete()

        def _count_head(self, size: int) -> None:
            """A head that arrives whole in one read is refused before it reaches the app."""
            self._head_bytes += size
            if self._head_bytes > limits.max_head_bytes:
                raise HeadTooLarge  # httptools raises it as a parser error: uvicorn answers 400

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()  # the next request's head is due as the first one was

        def _refuse(self, message: str) -> None:
            self.transport.write(_raw_json("503 Service Unavailable",
                                           {"error": "too_many_connections", "message": message}))
            self.transport.close()

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(limits.head_timeout, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            in_request = self.cycle is not None and not self.cycle.response_complete
            if not in_request and not self.transport.is_closing():
                self.transport.close()  # no complete head in time: a slow or half-sent request

    return GuardedProtocol


class BodyTimeout:
    """ASGI middleware: a request body that stalls for ``idle`` seconds, or that arrives slower
    than ``min_rate`` bytes per second once past ``idle`` seconds, gets ``408`` and the
    connection is closed. The app is cancelled while it waits for the body (it holds nothing then)."""

    def __init__(self, app: ASGIApp, *, idle: float = BODY_TIMEOUT_S, min_rate: int = MIN_BODY_RATE) -> None:
        self.app = app
        self.idle = idle
        self.min_rate = min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        waited = 0.0
        received = 0
        done = False  # the whole body has arrived: nothing more to time
        timed_out = started = False
        app_scope = anyio.CancelScope()

        async def timed_receive() -> Message:
            nonlocal waited, received, done, timed_out
            if done:
                return await receive()
            budget = self.idle
            if self.min_rate:
                budget = min(budget, self.idle + received / self.min_rate - waited)
            began = anyio.current_time()
            message = None
            with anyio.move_on_after(max(budget, 0.0)):
                message = await receive()
            waited += anyio.current_time() - began
            if message is None:
                timed_out = True
                app_scope.cancel()
                await anyio.lowlevel.checkpoint()  # raises the cancellation here
            assert message is not None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with app_scope:
            await self.app(scope, timed_receive, tracked_send)
        if timed_out and not started:
            body = dumps({"error": "timeout", "message": "the request body arrived too slowly; send it again"}).encode()
            await send({"type": "http.response.start", "status": 408,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


__all__ = ["BodyTimeout", "Limits", "default_max_connections", "guarded_protocol"]
