"""The guarded httptools protocol (crm/server/limits.py) bounds what a request sends outside its
body: the head however its reads are split, and the trailers of a chunked body, which llhttp
collects without a limit (docs/security.md). Byte counts only, against a fake transport: no
socket, no timing."""

from __future__ import annotations

import asyncio

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from crm.server.limits import Limits, guarded_protocol

CAP = 16 * 1024


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default=None):
        return {"sockname": ("127.0.0.1", 8765), "peername": ("127.0.0.9", 5555)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope, receive, send) -> None:
    pass


@pytest.fixture
def connection():
    """A fresh connection of a guarded protocol (head cap CAP) and its transport."""
    loop = asyncio.new_event_loop()
    cls = guarded_protocol(Limits(max_head_bytes=CAP, max_connections=100))
    config = Config(app=_app, http=cls, log_level="critical")
    config.load()
    protocol = cls(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    transport = FakeTransport()
    protocol.connection_made(transport)
    yield protocol, transport
    protocol.connection_lost(None)
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()

    async def drained() -> None:
        await asyncio.gather(*pending, return_exceptions=True)

    loop.run_until_complete(drained())
    loop.close()


def _head(size: int) -> bytes:
    """A complete request head of about ``size`` bytes (padding headers of 100 bytes)."""
    start = b"GET /v1/pull HTTP/1.1\r\nHost: x\r\n"
    pads = b"".join(b"X-Pad-%04d: %s\r\n" % (i, b"a" * 86) for i in range((size - len(start)) // 100))
    return start + pads + b"\r\n"


def _feed(protocol, data: bytes, read: int) -> None:
    for at in range(0, len(data), read):
        protocol.data_received(data[at:at + read])


@pytest.mark.parametrize("read", [1 << 20, 4096, 1000])
def test_a_head_under_the_cap_is_taken_however_its_reads_are_split(connection, read):
    protocol, transport = connection
    head = _head(CAP - 2000)
    _feed(protocol, head, read)
    assert not transport.closed and protocol.cycle is not None, transport.written[:200]
    assert len(protocol.scope["headers"]) > 100


@pytest.mark.parametrize("read", [1 << 20, 4096, 1000])
def test_a_head_over_the_cap_is_refused_however_its_reads_are_split(connection, read):
    protocol, transport = connection
    _feed(protocol, _head(CAP + 2000), read)
    assert transport.closed and transport.written.startswith(b"HTTP/1.1 400"), transport.written[:200]
    assert protocol.cycle is None, "a head over the cap never reaches the app"


def test_an_endless_trailer_is_cut(connection):
    """A chunked body's last chunk, then a trailer line that never ends: llhttp keeps collecting
    it (its CPU grows with the square of its length) and no timer fires while it does. The
    connection is closed once the bytes outside the body pass the cap."""
    protocol, transport = connection
    protocol.data_received(b"POST /v1/push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: ")
    fed = 0
    while not transport.closed and fed < 10 * CAP:
        protocol.data_received(b"a" * 4096)
        fed += 4096
    assert transport.closed and fed <= CAP + 4096, fed


def test_a_chunked_body_and_its_trailer_are_taken(connection):
    """Chunk sizes and a short trailer are not body, but far under the cap: nothing refused."""
    protocol, transport = connection
    body = b"".join(b"1000\r\n" + b"b" * 4096 + b"\r\n" for _ in range(64))  # 256 KiB in 64 chunks
    _feed(protocol, b"POST /v1/push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body
          + b"0\r\nX-Checksum: 1234\r\n\r\n", 4096)
    assert not transport.closed, transport.written[:200]
