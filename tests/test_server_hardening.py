"""Server hardening (docs/security.md, "Limits"): what one token or one client address can cost
everyone else. A pull page is capped in bytes; merge metadata of a record stays bounded however
it is pushed; one organisation's big push does not hold another's writes; slow or half-sent
requests are cut and one address cannot take every connection.

Store-level tests run on SQLite in-process and on PostgreSQL (process tier: tox starts it);
socket-level tests start a real `crm server serve` (process tier).
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from crm.hlc import format_stamp, now_ms
from crm.ops import Op, op_to_wire
from crm.server import ServerStore
from crm.server.store import Identity

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
        bodies, cursor, more = store.pull(who, cursor=cursor, limit=5000, max_bytes=max_bytes)
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
    bodies, cursor, more = store.pull(who, cursor=0, limit=5000, max_bytes=2500, device="mine")
    assert len(bodies) == 2 and not more
