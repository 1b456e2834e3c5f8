"""Server hardening (docs/security.md, "Limits"): what one token or one client address can cost
everyone else. A pull page is capped in bytes; merge metadata of a record stays bounded however
it is pushed; one organisation's big push does not hold another's writes; slow or half-sent
requests are cut and one address cannot take every connection.

Store-level tests run on SQLite in-process and on PostgreSQL (process tier: tox starts it);
socket-level tests start a real `crm server serve` (process tier).
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from crm.errors import StoreLockedError
from crm.hlc import format_stamp, now_ms
from crm.ops import Op, op_to_wire
from crm.server import ServerStore
from crm.server.engine import FairLock
from crm.server.store import Identity
from tests.support import running_server, wait_for

DEFAULT_DSN = "postgresql://postgres@/crm_test?host=/tmp/crm-postgres"  # scripts/ensure-postgres.sh


def _pg_dsn():
    psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed")
    admin = os.environ.get("CRM_TEST_PG_DSN") or DEFAULT_DSN
    try:
        psycopg.connect(admin, connect_timeout=5).close()
    except psycopg.Error as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no PostgreSQL at {admin}: {exc}")
        pytest.skip(f"no PostgreSQL at {admin} (run scripts/ensure-postgres.sh or set CRM_TEST_PG_DSN)")
    name = f"crm_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return admin, name, urlunsplit(urlsplit(admin)._replace(path="/" + name))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.process)])
def store(request, tmp_path):
    """A server store on each engine: SQLite in a temporary directory, PostgreSQL in a database
    of its own, dropped afterwards."""
    if request.param == "sqlite":
        opened = ServerStore.open(tmp_path / "server")
        yield opened
        opened.close()
        return
    import psycopg

    admin, name, dsn = _pg_dsn()
    opened = ServerStore.open(dsn)
    try:
        yield opened
    finally:
        opened.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


TEXT_FIELDS = ("name", "address", "city", "postcode", "phone", "external_ref", "owner")


def _create(i: int, *, dev: str = "dev-1", size: int = 100) -> dict:
    """An account create whose text fields hold about ``size`` characters in all."""
    fields = {name: name[0] * min(1900, size - 1900 * k) + f"{i:05d}"
              for k, name in enumerate(TEXT_FIELDS) if size > 1900 * k or k == 0}
    return op_to_wire(Op(op_id=f"op-{i:05d}", device=dev, hlc=format_stamp(now_ms() - 60_000, i, dev),
                         entity="account", record_id=f"rec-{i:05d}", fields=fields, kind="create"))


# -- 2. a pull page is capped in bytes ----------------------------------------------------------
@pytest.mark.parametrize("max_bytes, sizes, pages", [
    # (cap, the name length of each op in log order, the ops of each page)
    (10_000, [1000] * 6, [[0, 1, 2, 3, 4, 5]]),                           # all fit: one page
    (3_000, [1000] * 6, [[0, 1], [2, 3], [4, 5]]),                       # cut before the op past the cap
    (1_000, [5000, 10, 10], [[0], [1, 2]]),                              # one op over the cap: alone
    (1_000, [5000, 5000], [[0], [1]]),                                   # always at least one op
])
def test_a_pull_page_stops_before_the_op_past_the_byte_cap(store, max_bytes, sizes, pages):
    store.add_token("acme", "rep")
    who = Identity("acme", "rep", "device")
    ops = [_create(i, size=size) for i, size in enumerate(sizes)]
    assert store.push(who, ops).rejected == []
    cursor, got = 0, []
    while True:
        bodies, cursor, more, _ = store.pull(who, cursor=cursor, limit=5000, max_bytes=max_bytes)
        got.append([int(op_id[3:]) for op_id in (b.split('"op":"')[1].split('"')[0] for b in bodies)])
        if len(bodies) > 1:
            assert sum(len(b.encode()) + 1 for b in bodies) <= max_bytes
        if not more:
            break
    assert got == pages


def test_a_pull_page_skips_the_callers_own_ops_without_counting_them(store):
    """The caller's own ops advance the cursor but are neither sent nor counted against the cap."""
    store.add_token("acme", "rep")
    who = Identity("acme", "rep", "device")
    pushed = store.push(who, [_create(0, dev="mine", size=5000), _create(1, size=1000), _create(2, size=1000)])
    assert pushed.rejected == []
    # two ops of ~1,150 bytes and the fields around them (at most 225 bytes with a device) fit in
    # 2,800 bytes; the caller's own op of 5,000 does not count
    bodies, cursor, more, _ = store.pull(who, cursor=0, limit=5000, max_bytes=2800, device="mine")
    assert len(bodies) == 2 and not more


# -- 4. one organisation's push does not hold another's writes ---------------------------------
def _hostile(i: int, rid: str = "rec-hostile") -> dict:
    """A resolve that writes nothing and names 8 x 256 fresh stamps: the edit pattern that grew a
    record by 13.6 MB per push and held the write lock for a minute."""
    fields = ("name", "address", "city", "postcode", "phone", "email", "external_ref", "owner")
    base = {name: [format_stamp(1_000_000_000_000 + (i * 8 + k) * 256 + j, 0, "x") for j in range(256)]
            for k, name in enumerate(fields)}
    return op_to_wire(Op(op_id=f"h-{i:05d}", device="dev-a", hlc=format_stamp(now_ms() - 60_000, i, "dev-a"),
                         entity="account", record_id=rid, fields={}, base=base, kind="resolve"))


@pytest.mark.parametrize("pattern", ["many small creates", "hostile resolves"])
def test_a_big_push_commits_in_short_transactions_and_another_org_gets_in_between(store, pattern):
    """Organisation A pushes a big batch; A is held after its first transaction commits, and B's
    one-op push must complete then. Before, A's push was one transaction: B waited for all of it
    (9.8 s instead of 8 ms in the field) and nothing of A's was visible until its end."""
    store.add_token("big", "rep")
    store.add_token("small", "rep")
    org_a, org_b = Identity("big", "rep", "device"), Identity("small", "rep", "device")
    if pattern == "many small creates":
        a_ops = [_create(i, dev="dev-a") for i in range(3000)]
    else:
        store.push(org_a, [_create(0, dev="dev-a")])
        a_ops = [_hostile(i, rid="rec-00000") for i in range(60)]
    paused, go = threading.Event(), threading.Event()
    real_write = store.db.write

    @contextlib.contextmanager
    def write(org=None):
        with real_write(org) as conn:
            yield conn
        if org == "big" and a_pushing.is_set() and not paused.is_set():
            paused.set()  # A's first transaction of the push has committed: hold A here
            go.wait(120)

    a_pushing, results = threading.Event(), {}
    store.db.write = write

    def push_a():
        a_pushing.set()
        results["a"] = store.push(org_a, a_ops)

    pusher = threading.Thread(target=push_a)
    pusher.start()
    try:
        assert paused.wait(120), "A's push never committed anything"
        visible_while_held = store.stats("big")["ops"]
        small = threading.Thread(target=lambda: results.setdefault("b", store.push(org_b, [_create(1, dev="dev-b")])))
        small.start()
        small.join(60)
        b_done_while_a_held = not small.is_alive()
    finally:
        go.set()
        pusher.join(300)
    assert b_done_while_a_held, "B's 1-op push completed while A's push was still going on"
    assert results["b"].acked == ["op-00001"]
    first = 1 if pattern == "hostile resolves" else 0
    assert first < visible_while_held < first + len(a_ops), \
        f"A's push is split into short transactions ({visible_while_held} of {len(a_ops)} ops visible)"
    assert results["a"].acked == [op["op"] for op in a_ops] and store.stats("big")["ops"] == first + len(a_ops)


def test_sqlite_writers_take_turns_in_the_order_they_came():
    """SQLite's busy handler polls with growing sleeps, so a thread that commits and begins again
    at once could keep the write lock from a waiting one; the server's writers queue instead."""
    lock = FairLock()
    order: list[int] = []
    with lock.held():
        threads = []
        for i in range(5):
            def take(i=i):
                with lock.held():
                    order.append(i)
            threads.append(threading.Thread(target=take))
            threads[-1].start()
            deadline = now_ms() + 30_000
            while lock._next != i + 2 and now_ms() < deadline:  # thread i holds a ticket before the next starts
                threading.Event().wait(0.001)
    for thread in threads:
        thread.join(30)
    assert order == [0, 1, 2, 3, 4]


def test_a_writer_that_waits_too_long_gives_up_its_turn_and_the_queue_goes_on():
    lock = FairLock(timeout=0.2)
    with lock.held(), pytest.raises(StoreLockedError), lock.held():
        pass  # never reached: this ticket waits behind the holder, past its timeout
    done = threading.Event()
    threading.Thread(target=lambda: (lock.held().__enter__(), done.set())).start()
    assert done.wait(30), "the abandoned ticket does not block the ones after it"


def test_an_organisation_has_at_most_two_writes_in_the_store_at_once(tmp_path):
    """Eight concurrent pushes from A: at most two at a time reach the store (the others wait
    without a worker thread), so A cannot take every worker thread while B's push waits."""
    import anyio
    import httpx

    from crm.server.app import MAX_WRITES_PER_ORG, create_app

    store = ServerStore.open(tmp_path / "server")
    tokens = {org: store.add_token(org, "rep") for org in ("big", "small")}
    running: dict[str, int] = {"big": 0, "small": 0}
    most = {"big": 0, "small": 0}
    real_push = store.push_group

    def slow_push(pushes):
        org = pushes[0][0].org
        running[org] += 1
        most[org] = max(most[org], running[org])
        try:
            threading.Event().wait(0.2)  # long enough for the others to pile up behind
            return real_push(pushes)
        finally:
            running[org] -= 1

    store.push_group = slow_push
    app = create_app(store)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            async def push(org, i):
                answer = await client.post("/v1/push", json={"ops": [_create(i, dev=f"dev-{org}")]},
                                           headers={"authorization": f"Bearer {tokens[org]}"}, timeout=120)
                assert answer.status_code == 200, answer.text
            async with anyio.create_task_group() as group:
                for i in range(8):
                    group.start_soon(push, "big", i)
                group.start_soon(push, "small", 100)

    anyio.run(scenario)
    assert most["big"] <= MAX_WRITES_PER_ORG == 2
    assert store.stats("big")["ops"] == 8 and store.stats("small")["ops"] == 1


@pytest.mark.process
def test_a_one_op_push_gets_in_during_a_16_mib_hostile_push(tmp_path):
    """A real server: organisation A pushes 339 hostile resolves (16 MiB, the edit pattern that
    grew one record by 13.6 MB per push); as soon as A's first transaction is visible, B pushes
    one op. B completes and its op lands between A's (A's push was applied in short
    transactions, B took its turn), and A's record stays small. Before: A's push was one
    transaction of over a minute and B's push got 503 after waiting 30 s."""
    import sqlite3

    import httpx

    from crm.ops import dumps

    with running_server(tmp_path / "server") as server:
        token_a, token_b = server.add_rep("big", "a"), server.add_rep("small", "b")
        rid = "rec-00000"
        headers_a = {"authorization": f"Bearer {token_a}", "content-type": "application/json"}
        assert server.post("/v1/push", content=dumps({"ops": [_create(0, dev="dev-a")]}), headers=headers_a,
                           timeout=60).status_code == 200
        body = dumps({"ops": [_hostile(i, rid=rid) for i in range(339)]}).encode()
        assert 15 * 2**20 < len(body) <= 16 * 2**20
        db = sqlite3.connect(f"file:{server.data / 'server.sqlite3'}?mode=ro", uri=True)
        answers: dict[str, httpx.Response] = {}

        def push_a():
            answers["a"] = server.post("/v1/push", content=body, headers=headers_a, timeout=600)

        pusher = threading.Thread(target=push_a)
        pusher.start()
        while pusher.is_alive() and db.execute("SELECT count(*) FROM ops WHERE org = 'big'").fetchone()[0] < 2:
            threading.Event().wait(0.005)
        answers["b"] = server.post("/v1/push", json={"ops": [_create(1, dev="dev-b")]}, timeout=120,
                                   headers={"authorization": f"Bearer {token_b}"})
        pusher.join(600)
        assert answers["b"].status_code == 200 and answers["b"].json()["acked"] == ["op-00001"]
        assert answers["a"].status_code == 200 and len(answers["a"].json()["acked"]) == 339
        first, last = db.execute("SELECT min(seq), max(seq) FROM ops WHERE org = 'big' AND op_id LIKE 'h-%'").fetchone()
        (b_seq,) = db.execute("SELECT seq FROM ops WHERE org = 'small'").fetchone()
        assert first < b_seq < last, "B's op was applied between two of A's transactions"
        (meta,) = db.execute("SELECT length(meta) FROM records WHERE org = 'big' AND id = ?", (rid,)).fetchone()
        assert meta < 64 * 1024, f"A's record holds {meta} bytes of merge metadata"
        db.close()


# -- 1. slow and half-sent requests, and connections per address ------------------------------
SLOW, OTHER = "127.0.0.2", "127.0.0.3"  # client source addresses; every test talks only to 127.0.0.1


@contextlib.contextmanager
def _serve(data, *args: str, nofile: int | None = None):
    """A real `crm server serve` with extra options, its open-file limit lowered to ``nofile``."""
    import resource
    import subprocess
    import time

    import httpx

    from harness.ports import free_port
    from tests.support import CRM, Server

    def lower_limit():
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    server = Server(data, free_port())
    server.proc = subprocess.Popen([*CRM, "server", "serve", "--data", str(data), "--port", str(server.port), *args],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=lower_limit)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(server.url + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield server
    finally:
        server.kill()


def _connect(port: int, source: str = SLOW, head: bytes = b""):
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    if head:
        sock.sendall(head)
    return sock


def _closed_by_server(sock, within: float) -> tuple[bool, bytes]:
    """Whether the server closes ``sock`` within ``within`` seconds while the client keeps
    trickling one byte of header every 0.5 s; and what the server sent before closing."""
    import time

    deadline = time.monotonic() + within
    got = b""
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            try:
                sock.sendall(b"x")  # a slow client keeps sending: it must be cut all the same
            except OSError:
                return True, got
            continue
        except OSError:
            return True, got
        if not data:
            return True, got
        got += data
    return False, got


def _pull_from(server, token: str, source: str = OTHER):
    import httpx

    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), base_url=server.url, timeout=30) as client:
        return client.get("/v1/pull", headers={"authorization": f"Bearer {token}"})


@pytest.mark.process
def test_300_half_sent_heads_from_one_address_no_longer_lock_everyone_out(tmp_path):
    """The operator's finding, with the server's defaults: 300 connections from one address that
    send half a request head (no token needed) against a server with 256 descriptors. Before,
    every one was held for ever and every organisation was locked out (another address's pull
    timed out). Now the address holds at most 32; the rest get 503 and are closed at once; another
    organisation's pull succeeds meanwhile; the held ones are cut within 10 s."""
    import time

    with _serve(tmp_path / "server", nofile=256) as server:
        token = server.add_rep("other-org", "rep")
        opened = time.monotonic()
        socks = [_connect(server.port, head=b"POST /v1/push HTTP/1.1\r\nHost: x\r\n") for _ in range(300)]
        answer = _pull_from(server, token)
        assert answer.status_code == 200, answer.text
        refused = held = 0
        for sock in socks:
            closed, got = _closed_by_server(sock, within=max(0.1, opened + 10 - time.monotonic()))
            assert closed, "cut within 10 s of connecting"
            if got.startswith(b"HTTP/1.1 503"):
                refused += 1
            else:
                held += 1
            sock.close()
        assert held <= 32 and refused >= 300 - 32, (held, refused)
        slow_token = server.add_rep("slow-org", "rep")
        wait_for(lambda: _pull_from(server, slow_token, source=SLOW).status_code == 200, timeout=10)  # served again


@pytest.mark.process
def test_a_slow_head_and_a_slow_body_are_cut(tmp_path):
    """A head trickled a byte at a time, and a body that stalls after its first bytes: the
    server closes both within 10 s (defaults: 5 s for a head, 5 s of stall in a body), and the
    body gets 408 first. Before, both were held for ever."""
    with _serve(tmp_path / "server") as server:
        token = server.add_rep("acme", "rep")
        head = _connect(server.port, head=b"GET /v1/pull HTTP/1.1\r\nHost: x\r\n")
        assert _closed_by_server(head, within=10)[0]
        body = _connect(server.port, head=(f"POST /v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                                           "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                                           '{"ops": [').encode())
        closed, got = _closed_by_server(body, within=10)
        assert closed and got.startswith(b"HTTP/1.1 408"), got[:200]
        assert b'"error":"timeout"' in got
        head.close()
        body.close()


@pytest.mark.process
def test_limits_are_options_of_serve(tmp_path):
    """--max-connections-per-address 2 --head-timeout 1: the third connection of an address is
    refused with 503 JSON, another address is served, and an idle connection is cut after 1 s."""
    with _serve(tmp_path / "server", "--max-connections-per-address", "2", "--head-timeout", "1") as server:
        token = server.add_rep("acme", "rep")
        first, second = _connect(server.port), _connect(server.port)
        third = _connect(server.port)
        closed, got = _closed_by_server(third, within=5)
        assert closed and got.startswith(b"HTTP/1.1 503") and b'"error":"too_many_connections"' in got, got
        assert _pull_from(server, token).status_code == 200
        assert _closed_by_server(first, within=5)[0] and _closed_by_server(second, within=5)[0]
        for sock in (first, second, third):
            sock.close()
        wait_for(lambda: _pull_from(server, token, source=SLOW).status_code == 200, timeout=10)


@pytest.mark.process
def test_the_connections_in_all_and_the_head_size_are_capped(tmp_path):
    """--max-connections 2 (whatever the addresses) and --max-head-bytes 2048."""
    with _serve(tmp_path / "server", "--max-connections", "2", "--max-connections-per-address", "0",
                "--max-head-bytes", "2048") as server:
        token = server.add_rep("acme", "rep")
        held = [_connect(server.port, source=SLOW), _connect(server.port, source=OTHER)]
        closed, got = _closed_by_server(_connect(server.port, source="127.0.0.4"), within=5)
        assert closed and got.startswith(b"HTTP/1.1 503"), got
        for sock in held:
            sock.close()
        wait_for(lambda: _pull_from(server, token).status_code == 200, timeout=10)  # the server saw them go

        def head_too_big() -> bytes:
            sock = _connect(server.port, head=b"GET /v1/pull HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 4096)
            closed, got = _closed_by_server(sock, within=5)
            sock.close()
            assert closed
            return got

        answers: list[bytes] = []
        wait_for(lambda: not answers.append(head_too_big()) and not answers[-1].startswith(b"HTTP/1.1 503"),
                 timeout=10)  # a 503 while the server has not yet seen the pull's connection go
        assert answers[-1].startswith(b"HTTP/1.1 400"), answers[-1]
        # a whole head in one write, past the cap: counted as the parser reads it, refused all the same
        whole = _connect(server.port, head=b"GET /v1/pull HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: a\r\n" * 300 + b"\r\n")
        closed, got = _closed_by_server(whole, within=5)
        whole.close()
        assert closed and got.startswith(b"HTTP/1.1 400"), got[:200]
        # a head under the cap is served: the count does not overshoot
        import httpx

        with httpx.Client(base_url=server.url, timeout=30) as client:
            wait_for(lambda: client.get("/v1/pull", headers={"authorization": f"Bearer {token}",
                                                             "x-pad": "a" * 1700}).status_code == 200, timeout=10)


def _asgi_push(app, token: str, chunks, *, gap: float):
    """Send a push to ``app`` as raw ASGI: the body in ``chunks`` with ``gap`` seconds between
    them, then nothing more (``None`` in chunks: the client stalls for good). Returns (status,
    headers, body)."""
    import anyio

    total = sum(len(c) for c in chunks if c is not None)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/push", "raw_path": b"/v1/push", "query_string": b"",
             "root_path": "", "client": ("127.0.0.2", 5000), "server": ("127.0.0.1", 8765),
             "headers": [(b"host", b"t"), (b"authorization", f"Bearer {token}".encode()),
                         (b"content-type", b"application/json"), (b"content-length", str(total).encode())]}
    pending = list(chunks)
    sent: list[dict] = []

    async def receive():
        if not pending or pending[0] is None:
            await anyio.sleep_forever()
        await anyio.sleep(gap)
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message):
        sent.append(message)

    async def run():
        with anyio.fail_after(60):
            await app(scope, receive, send)

    anyio.run(run)
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("case, chunks, gap, status", [
    ("a body that stalls after its first bytes", [b'{"ops": [', None], 0.0, 408),
    ("a body trickled a few bytes at a time", [b" "] * 400 + [b'{"ops": []}'], 0.05, 408),
    ("a slow but steady body", [b" " * 400] * 20 + [b'{"ops": []}'], 0.05, 200),
])
def test_a_request_body_has_a_read_timeout(tmp_path, case, chunks, gap, status):
    """In-process: the app waits at most 0.5 s for each part of a body, and at most 0.5 s plus
    1 s per 1,000 bytes received for all of it (the serve defaults are 5 s and 4,096 B/s)."""
    from crm.server.app import create_app
    from crm.server.limits import Limits

    store = ServerStore.open(tmp_path / "server")
    token = store.add_token("acme", "rep")
    app = create_app(store, limits=Limits(body_timeout=0.5, min_body_rate=1000))
    got, headers, body = _asgi_push(app, token, chunks, gap=gap)
    assert got == status, body
    if status == 408:
        assert headers[b"connection"] == b"close" and b'"error":"timeout"' in body


# -- 3. an order's lines are fields too: their number is bounded --------------------------------
def _lines_op(i: int, rid: str, count: int, *, dev: str = "dev-1") -> dict:
    fields = {f"line:00000000-0000-4000-8000-{i * 64 + k:012d}": {"sku": "P-1", "quantity": 1, "unit_price": "1.00"}
              for k in range(count)}
    return op_to_wire(Op(op_id=f"l-{i:05d}", device=dev, hlc=format_stamp(now_ms() - 60_000, 100 + i, dev),
                         entity="order", record_id=rid, fields=fields, kind="update"))


def test_an_order_takes_at_most_500_lines(store):
    """Lines are fields named line:<id>, so pushing new ones grew one order without bound (a
    16 MiB push of 64-line ops held the write lock for over ten minutes, copying the growing
    order for every op). Ops that would take an order past 500 lines are rejected, one by one,
    with a reason; ops that change lines it has are not."""
    from crm.domain import MAX_ORDER_LINES

    store.add_token("acme", "rep")
    who = Identity("acme", "rep", "device")
    rid = "order-1"
    create = op_to_wire(Op(op_id="c-order", device="dev-1", hlc=format_stamp(now_ms() - 90_000, 0, "dev-1"),
                           entity="order", record_id=rid, kind="create",
                           fields={"account": "acct-1", "currency": "GBP", "status": "draft",
                                   "placed_at": "2026-01-01T00:00:00Z"}))
    ops = [create, *(_lines_op(i, rid, 64) for i in range(9))]  # 576 new lines: the 8th op passes 500
    result = store.push(who, ops)
    assert [op_id for op_id, _ in result.rejected] == ["l-00007", "l-00008"]
    assert all(f"at most {MAX_ORDER_LINES} lines" in reason for _, reason in result.rejected)
    again = _lines_op(0, rid, 64)  # the first op's lines again, changed: no new line
    again["op"], again["fields"] = "l-again", {k: {**v, "quantity": 2} for k, v in again["fields"].items()}
    assert store.push(who, [again]).rejected == []
    assert store.push(who, [_lines_op(50, rid, 500 - 7 * 64)]).rejected == [], "up to 500 exactly"
    assert store.push(who, [_lines_op(60, rid, 1)]).rejected != []
    lines = [line for line in store.export("acme")["order"][0]["lines"]]
    assert len(lines) == MAX_ORDER_LINES


def test_a_device_refuses_a_line_past_the_cap(tmp_path, monkeypatch):
    """The device says so at once (exit 3) instead of queueing a change the server would refuse."""
    import crm.device
    from crm import Device
    from crm.errors import ValidationError

    monkeypatch.setattr(crm.device, "MAX_ORDER_LINES", 3)
    device = Device.init(tmp_path / "home", rep="rep-1")
    account = device.create("account", {"name": "Corner Store"})
    order = device.add_order({"account": account["id"]}, [{"sku": "P-1", "quantity": 1, "unit_price": "1.00"}] * 2)
    device.add_order_line(order["id"], {"sku": "P-1", "quantity": 1, "unit_price": "1.00"})
    pending = device.outbox()["pending"]
    with pytest.raises(ValidationError, match="3 lines"):
        device.add_order_line(order["id"], {"sku": "P-1", "quantity": 1, "unit_price": "1.00"})
    assert device.outbox()["pending"] == pending
    device.close()


def test_a_submission_names_only_lines_the_order_has(store):
    """A submit's ``submission`` is joined into the order for good, key by key: one naming lines the
    order does not have would grow it past the line cap without a line field. The server rejects
    such an op; an honest submit (its lines pushed before it) and a submit naming lines the same op
    writes (a resolution keeping a change) pass."""
    store.add_token("acme", "rep")
    who = Identity("acme", "rep", "device")
    rid = "order-2"
    create = op_to_wire(Op(op_id="c-order-2", device="dev-1", hlc=format_stamp(now_ms() - 90_000, 0, "dev-1"),
                           entity="order", record_id=rid, kind="create",
                           fields={"account": "acct-1", "currency": "GBP", "status": "draft",
                                   "placed_at": "2026-01-01T00:00:00Z"}))
    lines = _lines_op(0, rid, 2)
    line = {"sku": "P-1", "quantity": 1, "unit_price": "1.00"}
    known = [name[len("line:"):] for name in lines["fields"]]

    def submit(op_id: str, counter: int, names: list[str], fields: dict | None = None) -> dict:
        return op_to_wire(Op(op_id=op_id, device="dev-1", hlc=format_stamp(now_ms() - 60_000, counter, "dev-1"),
                             entity="order", record_id=rid, kind="update",
                             fields={"status": "submitted", "submission": {n: line for n in names}, **(fields or {})}))

    stranger = "00000000-0000-4000-8000-999999999999"
    result = store.push(who, [create, lines, submit("s-bad", 200, [*known, stranger]), submit("s-ok", 201, known)])
    assert [op_id for op_id, _ in result.rejected] == ["s-bad"]
    assert "does not have" in result.rejected[0][1]
    with_its_line = submit("s-too", 202, [stranger], {f"line:{stranger}": line})
    assert store.push(who, [with_its_line]).rejected == []
