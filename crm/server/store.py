"""The server's durable state: organisations, reps, token hashes, the op log and the merged
records of each organisation, all keyed by organisation so tenants never meet.

Kept in an embedded SQLite file (``--data DIR``, the default) or in PostgreSQL (``--db URL``),
through crm/server/engine.py; nothing lives in the process between requests, so any number of
server processes can serve one PostgreSQL database.

A push is applied in short transactions of a few hundred ops (``PUSH_TXN_OPS``, or fewer heavy
ones: ``PUSH_TXN_WEIGHT``), so one organisation's big push never holds the write lock long
enough to stall another's (docs/security.md). Ops already in the log (same op id in the same
organisation) are acknowledged without being applied again, so a batch retried after a failure
part-way ends exactly as one delivery.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import re
from collections import Counter
from datetime import UTC
from pathlib import Path
from typing import Any, NamedTuple

from .. import merge
from ..admission import CLOCK_AHEAD, ID, ClockAhead, InvalidOp, admit, parse
from ..domain import (
    ENTITIES,
    LINE_PREFIX,
    MAX_ORDER_LINES,
    SUBMISSION,
    is_utf8,
    validate_create,
    validate_edit,
)
from ..errors import CrmError, NotFoundError, StoreMissingError, ValidationError
from ..hlc import HybridClock, server_now_ms
from ..ids import new_id
from ..merge import Record
from ..ops import PROTOCOL, Op, OpFormatError, op_to_json
from ..records import StoredRecord, export_state, present, record_from_row, row_of, row_of_create
from .engine import SQLITE_FILENAME, Database, PostgresDatabase, SqliteDatabase, is_postgres_url

SERVER_FILENAME = SQLITE_FILENAME
BACKOFFICE_DEVICE = "backoffice"
MAX_PUSH_OPS = 5000
MAX_PULL_LIMIT = 5000
MAX_PULL_BYTES = 4 * 1024 * 1024  # per pull page, at least one op (docs/sync-protocol.md)
INLINE_BODY_BYTES = 1024  # an op this small is read with its page's plan: at most 5 MB a page, read once
# A push is applied in transactions of at most this many ops, and of at most this much work: an
# op weighs 1 + its fields + its base stamps (a hostile op names up to 64 x 256 stamps).
PUSH_TXN_OPS = 500
PUSH_TXN_WEIGHT = 20_000

# Each version's statements, per engine, taking the schema from the previous version to this
# one. Append a version to change the schema; never edit one that has shipped.
MIGRATIONS: dict[int, dict[str, str]] = {
    1: {
        "sqlite": """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS orgs (org TEXT PRIMARY KEY, created_at TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    org        TEXT NOT NULL REFERENCES orgs (org),
    rep        TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('device', 'admin')),
    created_at TEXT NOT NULL,
    revoked_at TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ops (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    org       TEXT NOT NULL,
    op_id     TEXT NOT NULL,
    device    TEXT NOT NULL,
    body      TEXT NOT NULL,
    UNIQUE (org, op_id)
);
CREATE INDEX IF NOT EXISTS ops_org_seq ON ops (org, seq);
CREATE TABLE IF NOT EXISTS records (
    org       TEXT NOT NULL,
    entity    TEXT NOT NULL,
    id        TEXT NOT NULL,
    data      TEXT NOT NULL,
    meta      TEXT NOT NULL,
    deleted   INTEGER NOT NULL DEFAULT 0,
    conflicts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (org, entity, id)
) WITHOUT ROWID;
""",
        # Keys and stamps compare byte-wise (COLLATE "C"), as in SQLite, so exports sort alike.
        "postgresql": """
CREATE TABLE IF NOT EXISTS meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT COLLATE "C" NOT NULL);
CREATE TABLE IF NOT EXISTS orgs (org TEXT COLLATE "C" PRIMARY KEY, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT COLLATE "C" PRIMARY KEY,
    org        TEXT COLLATE "C" NOT NULL REFERENCES orgs (org),
    rep        TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('device', 'admin')),
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS ops (
    seq       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org       TEXT COLLATE "C" NOT NULL,
    op_id     TEXT COLLATE "C" NOT NULL,
    device    TEXT NOT NULL,
    body      TEXT NOT NULL,
    UNIQUE (org, op_id)
);
CREATE INDEX IF NOT EXISTS ops_org_seq ON ops (org, seq);
CREATE TABLE IF NOT EXISTS records (
    org       TEXT COLLATE "C" NOT NULL,
    entity    TEXT COLLATE "C" NOT NULL,
    id        TEXT COLLATE "C" NOT NULL,
    data      TEXT NOT NULL,
    meta      TEXT NOT NULL,
    deleted   INTEGER NOT NULL DEFAULT 0,
    conflicts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (org, entity, id)
);
""",
    },
    # Token expiry (`crm server add-rep --expires-in-days N`, docs/security.md): NULL never expires.
    2: {
        "sqlite": "ALTER TABLE tokens ADD COLUMN expires_at TEXT",
        "postgresql": "ALTER TABLE tokens ADD COLUMN IF NOT EXISTS expires_at TEXT",
    },
    # The back office's clock per organisation ('hlc:<org>', 'max_hlc:<org>'), so a far-ahead
    # stamp pushed in one organisation never drags another's stamps forward (docs/security.md).
    3: {
        "sqlite": """
INSERT INTO meta (key, value) SELECT 'max_hlc:' || org, max(substr(json_extract(body, '$.hlc'), 1, 19))
    FROM ops GROUP BY org ON CONFLICT (key) DO NOTHING;
DELETE FROM meta WHERE key IN ('hlc', 'max_hlc');
""",
        "postgresql": """
INSERT INTO meta (key, value) SELECT 'max_hlc:' || org, max(substr((body::json) ->> 'hlc', 1, 19))
    FROM ops GROUP BY org ON CONFLICT (key) DO NOTHING;
DELETE FROM meta WHERE key IN ('hlc', 'max_hlc');
""",
    },
    # Continuity (docs/sync-protocol.md): "the latest op this device id has in the log" is one
    # index probe, asked on every pull and push that says which device it comes from.
    4: {
        "sqlite": "CREATE INDEX IF NOT EXISTS ops_org_device_seq ON ops (org, device, seq)",
        "postgresql": "CREATE INDEX IF NOT EXISTS ops_org_device_seq ON ops (org, device, seq)",
    },
    # Territories (docs/sync-protocol.md, "Territories"): every log entry carries the account it
    # hangs off (``scope``; NULL for the catalogue) and that account's territory now (``terr``:
    # '*' the catalogue, '!' a move marker, '' no territory), so a scoped pull is an index range.
    5: {
        "sqlite": """
ALTER TABLE ops ADD COLUMN scope TEXT;
ALTER TABLE ops ADD COLUMN terr TEXT NOT NULL DEFAULT '';
UPDATE ops SET terr = '*' WHERE json_extract(body, '$.entity') = 'product';
UPDATE ops SET scope = json_extract(body, '$.id') WHERE json_extract(body, '$.entity') = 'account';
UPDATE ops SET scope = (SELECT json_extract(r.data, '$.account') FROM records r WHERE r.org = ops.org
    AND r.entity = json_extract(ops.body, '$.entity') AND r.id = json_extract(ops.body, '$.id'))
    WHERE json_extract(body, '$.entity') NOT IN ('account', 'product');
CREATE INDEX IF NOT EXISTS ops_org_terr_seq ON ops (org, terr, seq);
CREATE INDEX IF NOT EXISTS ops_org_scope ON ops (org, scope);
CREATE TABLE IF NOT EXISTS account_terr (
    org TEXT NOT NULL, account TEXT NOT NULL, territory TEXT NOT NULL, PRIMARY KEY (org, account)
) WITHOUT ROWID;
INSERT INTO account_terr (org, account, territory)
    SELECT org, id, coalesce(json_extract(data, '$.territory'), '') FROM records WHERE entity = 'account'
    ON CONFLICT DO NOTHING;
CREATE INDEX IF NOT EXISTS account_terr_territory ON account_terr (org, territory);
CREATE TABLE IF NOT EXISTS assignments (
    org TEXT NOT NULL, rep TEXT NOT NULL, territory TEXT NOT NULL, since INTEGER NOT NULL,
    PRIMARY KEY (org, rep, territory)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rep_scope (
    org TEXT NOT NULL, rep TEXT NOT NULL, epoch INTEGER NOT NULL, PRIMARY KEY (org, rep)
) WITHOUT ROWID;
""",
        "postgresql": """
ALTER TABLE ops ADD COLUMN IF NOT EXISTS scope TEXT COLLATE "C";
ALTER TABLE ops ADD COLUMN IF NOT EXISTS terr TEXT COLLATE "C" NOT NULL DEFAULT '';
UPDATE ops SET terr = '*' WHERE (body::json) ->> 'entity' = 'product';
UPDATE ops SET scope = (body::json) ->> 'id' WHERE (body::json) ->> 'entity' = 'account';
UPDATE ops SET scope = (SELECT (r.data::json) ->> 'account' FROM records r WHERE r.org = ops.org
    AND r.entity = (ops.body::json) ->> 'entity' AND r.id = (ops.body::json) ->> 'id')
    WHERE (body::json) ->> 'entity' NOT IN ('account', 'product');
CREATE INDEX IF NOT EXISTS ops_org_terr_seq ON ops (org, terr, seq);
CREATE INDEX IF NOT EXISTS ops_org_scope ON ops (org, scope);
CREATE TABLE IF NOT EXISTS account_terr (
    org TEXT COLLATE "C" NOT NULL, account TEXT COLLATE "C" NOT NULL, territory TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (org, account)
);
INSERT INTO account_terr (org, account, territory)
    SELECT org, id, coalesce((data::json) ->> 'territory', '') FROM records WHERE entity = 'account'
    ON CONFLICT DO NOTHING;
CREATE INDEX IF NOT EXISTS account_terr_territory ON account_terr (org, territory);
CREATE TABLE IF NOT EXISTS assignments (
    org TEXT COLLATE "C" NOT NULL, rep TEXT COLLATE "C" NOT NULL, territory TEXT COLLATE "C" NOT NULL,
    since BIGINT NOT NULL, PRIMARY KEY (org, rep, territory)
);
CREATE TABLE IF NOT EXISTS rep_scope (
    org TEXT COLLATE "C" NOT NULL, rep TEXT COLLATE "C" NOT NULL, epoch BIGINT NOT NULL, PRIMARY KEY (org, rep)
);
""",
    },
}
SERVER_SCHEMA_VERSION = max(MIGRATIONS)
GLOBAL_TERR = "*"  # ops.terr of the catalogue: every rep gets it
MOVE_TERR = "!"  # ops.terr of a move marker: read by protocol-2 pulls, never sent as an op
MOVE_DEVICE = "~move"  # ops.device of a move marker (no device id starts with '~')
CHILD_ENTITIES = tuple(name for name, spec in ENTITIES.items() if spec.parent == "account")
# A move's snapshot (docs/sync-protocol.md, "Territories"): the account's row, then each child
# entity's rows by id; a page may end inside it, the answer's ``part`` naming the last row sent.
FAMILY = ("account", *CHILD_ENTITIES)
FAMILY_BATCH = 500  # snapshot row sizes read at a time
# Bytes of a pull answer besides its ops' and rows' own text, at their longest (the cap bounds it all):
MOVE_BYTES = 27  # {"account":"<id>","records":[...]} or {"account":"<id>","drop":true}, and a comma
ROW_BYTES = 14  # ["<entity>","<id>","<data>","<meta>"] and a comma, besides its four strings
ENVELOPE_BYTES = 52  # {"ops":[],"cursor":<19 digits>,"more":false}
CONTINUITY_BYTES = 173  # ,"witness":"<19 digits>:<64>","latest":"<64>"
SCOPE_BYTES = 102  # ,"scope":<its JSON>,"moves":[],"part":"<entity>:<64>"
_PART = re.compile(f"({'|'.join(FAMILY)}):({ID.pattern})")


class Scope(NamedTuple):  # not a dataclass: @dataclass costs every `crm server` command's start-up
    """What a rep's devices hold (docs/sync-protocol.md, "Territories"): ``territories`` None is the
    whole organisation (a rep with no territory assigned); ``epoch`` changes with every assignment
    change; ``default`` is the territory a new account of theirs gets."""

    territories: tuple[str, ...] | None
    epoch: int = 0
    default: str | None = None

    def holds(self, territory: str) -> bool:
        return self.territories is None or territory in self.territories

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "territories": None if self.territories is None else list(self.territories),
                "default": self.default}


def hash_token(token: str) -> str:
    import hashlib  # loaded by the commands that need it: not every `crm server` command does

    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Identity(NamedTuple):
    org: str
    rep: str
    role: str


class Continuity(NamedTuple):
    """What a device believes of the server's log (docs/sync-protocol.md, "Continuity").

    ``witness`` (position, op id): an entry the device saw in the log; gone means the log went
    back (a restore) or was replaced. ``known``: the latest op of this device id the device knows
    the log holds ("" none; None: not said, an older client); another one there means a second
    incarnation of the device id (a restored or copied home) pushed it."""

    device: str | None = None
    witness: tuple[int, str] | None = None
    known: str | None = None


class ContinuityBroken(Exception):
    """The device's view of the log does not hold: ``reason`` is ``log_changed`` or
    ``device_reused`` (``latest`` names the op of its device id the log holds)."""

    def __init__(self, reason: str, latest: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.latest = latest


class PushResult:
    """A push's answer. Written out rather than made by @dataclass (start-up, as for ``Op``)."""

    __slots__ = ("acked", "rejected", "ahead", "witness", "latest")

    def __init__(self, acked: list[str], rejected: list[tuple[str, str]],
                 ahead: list[tuple[str, str]] | None = None, witness: tuple[int, str] | None = None,
                 latest: str | None = None) -> None:
        self.acked = acked
        self.rejected = rejected
        # refused only for a stamp too far ahead of the server's clock: the device re-stamps them
        self.ahead = [] if ahead is None else ahead
        self.witness = witness  # the log's last entry after this push
        self.latest = latest  # the latest op of the pushing device id in the log

    def __repr__(self) -> str:
        return (f"PushResult(acked={self.acked!r}, rejected={self.rejected!r}, ahead={self.ahead!r}, "
                f"witness={self.witness!r}, latest={self.latest!r})")

    def to_json(self) -> dict[str, Any]:
        return {"acked": self.acked,
                "rejected": [{"op": op_id, "reason": reason} for op_id, reason in self.rejected]
                + [{"op": op_id, "reason": reason, "code": CLOCK_AHEAD} for op_id, reason in self.ahead],
                **_continuity_json(self.witness, self.latest)}


class _NotTogether(Exception):
    """A group's pushes cannot be decided as one batch: push_group applies each alone."""


class _Batch(NamedTuple):
    """A push after admission (ServerStore._prepare), ready to apply under the lock."""

    identity: Identity
    admitted: list[Op]
    rejected: list[tuple[str, str]]
    ahead: dict[str, str]  # op id -> why: refused as ahead of the server's clock
    logged: list[str]  # ahead, but already in the log: acknowledged
    pusher: Scope | None  # the rep's scope when they hold territories

    @property
    def weight(self) -> int:
        return sum(_weight(op) for op in self.admitted)

    def result(self, over: list[tuple[str, str]], head: tuple[int, str] | None, latest: str | None) -> PushResult:
        """The answer once applied; ``over``: the ops refused under the lock (``_refused_under_lock``)."""
        refused = {op_id for op_id, _ in over}
        acked = [op.op_id for op in self.admitted if op.op_id not in refused] if refused else \
            [op.op_id for op in self.admitted]
        return PushResult(acked + self.logged, self.rejected + over, list(self.ahead.items()), head, latest)


def _continuity_json(witness: tuple[int, str] | None, latest: str | None) -> dict[str, Any]:
    return {"witness": f"{witness[0]}:{witness[1]}" if witness else None, "latest": latest}


def _utc_now(*, days_ahead: int = 0) -> str:
    from datetime import datetime, timedelta

    return (datetime.now(UTC) + timedelta(days=days_ahead)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _transactions(ops: list[Op]):
    """``ops`` in order, in slices of at most PUSH_TXN_OPS ops and PUSH_TXN_WEIGHT work (at
    least one op each): one write transaction per slice."""
    chunk: list[Op] = []
    weight = 0
    for op in ops:
        cost = _weight(op)
        if chunk and (len(chunk) >= PUSH_TXN_OPS or weight + cost > PUSH_TXN_WEIGHT):
            yield chunk
            chunk, weight = [], 0
        chunk.append(op)
        weight += cost
    if chunk:
        yield chunk


def _weight(op: Op) -> int:
    """The work of applying ``op``: 1 + its fields + its base stamps."""
    return 1 + len(op.fields) + (sum(map(len, op.base.values())) if op.base else 0)


# Rows per INSERT statement of _insert_rows: few statement texts, and at most 128 rows of 7 values
# (896 parameters; SQLite before 3.32 takes at most 999 in a statement).
_STATEMENT_ROWS = (128, 32, 8, 2, 1)


def _insert_rows(conn: Any, head: str, row: str, tail: str, rows: list[tuple[Any, ...]]) -> None:
    """``head`` VALUES ``row``, ``row``, ... ``tail`` for ``rows``, in order, in statements of the
    sizes of _STATEMENT_ROWS (rows of at most 7 values). One statement is one SQLite step:
    ``executemany`` steps once per row, and every step gives up the GIL, which another thread then
    holds for up to its switch interval. Inside the write lock that stretched each push batch
    several times over with pulls running (500 rows against 3 busy threads: 7 s by executemany,
    55 ms as one statement)."""
    at = 0
    for size in _STATEMENT_ROWS:
        while len(rows) - at >= size:
            conn.execute(f"{head} VALUES {', '.join([row] * size)} {tail}",
                         [value for values in rows[at:at + size] for value in values])
            at += size


# Fields a record is given at its creation and keeps: an account's territory (moved only by the
# back office), a record's account, its rep. Only a push is held to this (ServerStore._fixed_changed).
FIXED_FIELDS = {name: frozenset(f.name for f in spec.fields if not f.editable) for name, spec in ENTITIES.items()}


def _unfiled(entity: str, rid: str) -> str:
    """ops.scope of an op on a record whose account the server does not know yet: never an
    account id (record ids hold no '?'), so refiling it takes that record's ops and nothing else."""
    return f"?{entity}:{rid}"


def _in_chunks(values: list[str], size: int = 500):
    """``values`` in slices with a ``?, ?, ...`` list for each (bounded statement size)."""
    for start in range(0, len(values), size):
        chunk = values[start:start + size]
        yield chunk, ",".join("?" * len(chunk))


class ServerStore:
    """Thread-safe. Open with ``ServerStore.open(data_dir)`` (SQLite) or
    ``ServerStore.open("postgresql://...")``; every method works alike on both."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    def open(cls, target: str | Path, *, create: bool = True) -> ServerStore:
        """The store at a data directory or a PostgreSQL URL; ``create`` makes (or migrates) its schema."""
        if is_postgres_url(target):
            store = cls(PostgresDatabase(str(target)))
        else:
            store = cls(SqliteDatabase(_sqlite_file(Path(target), create=create)))
        store._migrate(create=create)
        return store

    @property
    def location(self) -> str:
        return self.db.location

    @property
    def conn(self):
        """This thread's SQLite connection (tests and tools; SQLite stores only)."""
        if not isinstance(self.db, SqliteDatabase):
            raise AttributeError("conn: only a SQLite server store has one connection per thread")
        return self.db._conn()

    def close(self) -> None:
        self.db.close()

    # -- schema --------------------------------------------------------------------------------
    def _migrate(self, *, create: bool) -> None:
        """Bring the schema to this version; a store already there is only read, not locked."""
        postgres = isinstance(self.db, PostgresDatabase)
        create = create or not postgres  # a SQLite file exists only once something created it
        with self.db.read() as conn:
            version = self._schema_version(conn)
        self._check_version(version, create=create)
        if version == SERVER_SCHEMA_VERSION:
            return
        # Two processes starting at once: one migrates, the other then finds it done.
        with self.db.schema_lock() if postgres else self.db.write() as conn:
            version = self._schema_version(conn)
            self._check_version(version, create=create)
            for step in range(version + 1, SERVER_SCHEMA_VERSION + 1):
                _run_script(conn, MIGRATIONS[step][self.db.dialect])
            if version == SERVER_SCHEMA_VERSION:
                return
            if postgres:
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                             "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                             (str(SERVER_SCHEMA_VERSION),))
            else:
                conn.execute(f"PRAGMA user_version = {SERVER_SCHEMA_VERSION}")

    def _schema_version(self, conn: Any) -> int:
        if not isinstance(self.db, PostgresDatabase):
            return conn.execute("PRAGMA user_version").fetchone()[0]
        if conn.execute("SELECT to_regclass('meta')").fetchone()[0] is None:
            return 0
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _check_version(self, version: int, *, create: bool) -> None:
        if version > SERVER_SCHEMA_VERSION:
            raise StoreMissingError(f"server data at {self.location} has a newer schema ({version}); "
                                    "upgrade crm")
        if version == 0 and not create:
            raise StoreMissingError(f"no crm server data in {self.location} (start it with "
                                    f"`crm server serve --db {self.location}`)")

    # -- tenants and tokens --------------------------------------------------------------------
    def add_token(self, org: str, rep: str, *, role: str = "device", expires_in_days: int | None = None) -> str:
        """Create (org and) a token for ``rep``; only its hash is stored, the token is returned once.
        With ``expires_in_days`` the token is refused from that many days on."""
        for label, value in (("org", org), ("rep", rep)):
            if not value or len(value) > 100 or not value.isprintable():
                raise ValidationError(f"{label}: give a name of 1 to 100 printable characters")
        if expires_in_days is not None and not 1 <= expires_in_days <= 3660:
            raise ValidationError("expires in days: give a whole number of days from 1 to 3660")
        expires_at = None if expires_in_days is None else _utc_now(days_ahead=expires_in_days)
        import secrets

        token = "crm_" + secrets.token_urlsafe(32)
        with self.db.write() as conn:
            conn.execute("INSERT INTO orgs (org, created_at) VALUES (?, ?) ON CONFLICT (org) DO NOTHING",
                         (org, _utc_now()))
            conn.execute("INSERT INTO tokens (token_hash, org, rep, role, created_at, expires_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (hash_token(token), org, rep, role, _utc_now(), expires_at))
        return token

    def revoke(self, org: str, rep: str) -> int:
        with self.db.write() as conn:
            cur = conn.execute("UPDATE tokens SET revoked_at = ? WHERE org = ? AND rep = ? "
                               "AND revoked_at IS NULL", (_utc_now(), org, rep))
            return cur.rowcount

    def authenticate(self, token: str | None) -> Identity | None:
        """The identity of a live token; None for an unknown, revoked or expired one."""
        state, identity = self._token(token)
        return identity if state == "valid" else None

    def token_state(self, token: str | None) -> str:
        """Why ``authenticate`` refuses a token, for the 401 message: unknown, revoked or expired."""
        return self._token(token)[0]

    def _token(self, token: str | None) -> tuple[str, Identity | None]:
        if not token or len(token) > 200:
            return "unknown", None
        digest = hash_token(token)
        with self.db.read() as conn:
            row = conn.execute("SELECT token_hash, org, rep, role, revoked_at, expires_at FROM tokens "
                               "WHERE token_hash = ?", (digest,)).fetchone()
        import hmac  # with hashlib: only the commands that check tokens load them

        if row is None or not hmac.compare_digest(row[0], digest):
            return "unknown", None
        if row[4] is not None:
            return "revoked", None
        if row[5] is not None and row[5] <= _utc_now():
            return "expired", None
        return "valid", Identity(org=row[1], rep=row[2], role=row[3])

    def orgs(self) -> list[str]:
        with self.db.read() as conn:
            return [r[0] for r in conn.execute("SELECT org FROM orgs ORDER BY org").fetchall()]

    # -- the op log ----------------------------------------------------------------------------
    def _load(self, conn: Any, org: str, entity: str, rid: str) -> Record | None:
        row = conn.execute("SELECT data, meta FROM records WHERE org = ? AND entity = ? AND id = ?",
                           (org, entity, rid)).fetchone()
        return record_from_row(entity, rid, row[0], row[1]) if row else None

    def _apply(self, conn: Any, org: str, ops: list[Op], *, pushers: dict[str, Scope] | None = None,
               push_of: dict[str, int] | None = None, known: set[str] | None = None,
               stored: dict[tuple[str, str], tuple[str, str]] | None = None) -> None:
        """Log and merge admitted ops, skipping any this organisation already has (at most once).

        Runs inside ``db.write(org)``: the organisation's lock makes the lookup of known op ids
        exact; the unique (org, op_id) key with ON CONFLICT DO NOTHING keeps the log free of
        duplicates even so. ``known``: those op ids, when the caller has just looked them up.

        Each logged op carries its account and that account's territory (docs/sync-protocol.md,
        "Territories"). ``pushers``: op id -> the scope of the rep who pushed it, for reps who hold
        territories; a new account of theirs without a territory gets their default (a back-office
        op, logged with the batch). ``push_of``: op id -> its push's place in a group applied as one
        batch (ServerStore._commit_together): an account is new to the first push that writes it.
        ``stored``: the stored rows of (at least) the records of ``ops``, when the caller has just
        read them (``_stored_rows``).
        """
        if known is None:
            known = self._logged(conn, org, [op.op_id for op in ops])
        else:
            known = set(known)
        fresh: list[Op] = []
        for op in ops:
            if op.op_id not in known:
                known.add(op.op_id)
                fresh.append(op)
        if not fresh:
            return
        if stored is None:
            stored = self._stored_rows(conn, org, fresh)
        # A new account of a rep with a default territory, created without one, gets it.
        if pushers:
            bare: dict[str, tuple[str, str | None]] = {}  # account -> (default, stamp its op must follow)
            first_push: dict[tuple[str, str], int] = {}
            this_push, before, seen = 0, "", ""  # the newest stamp of the earlier pushes; of every op so far
            for op in fresh:
                number = push_of.get(op.op_id, 0) if push_of else 0
                if number != this_push:  # pushed one by one, the earlier pushes' stamps were logged first
                    this_push, before = number, seen
                seen = max(seen, op.hlc[:19])
                key = (op.entity, op.record_id)
                first = first_push.setdefault(key, number)
                scope = pushers.get(op.op_id)
                if scope is not None and scope.default and first == number and op.entity == "account" \
                        and op.kind == "create" and key not in stored and not op.fields.get("territory"):
                    bare.setdefault(op.record_id, (scope.default, before or None))
            if bare:
                fresh += self._backoffice_ops(conn, org, [
                    ("account", rid, {"territory": default}, {}, "update") for rid, (default, _) in bare.items()],
                    after=[newest for _, newest in bare.values()])
        # A create of a record nobody has yet is its whole state: store it without a merge.
        per_record = Counter((op.entity, op.record_id) for op in fresh)
        rows, merged, created = [], [], {}
        for op in fresh:
            key = (op.entity, op.record_id)
            if op.kind == "create" and key not in stored and per_record[key] == 1:
                rows.append(_row(org, row_of_create(op)))
                created[key] = op.fields
            else:
                merged.append(op)
        changed = merge.apply_all(
            lambda entity, rid: record_from_row(entity, rid, *stored[(entity, rid)]) if (entity, rid) in stored
            else None, merged)
        rows += [_row(org, row_of(rec)) for rec in changed.values()]
        _insert_rows(conn, "INSERT INTO records (org, entity, id, data, meta, deleted, conflicts)",
                     "(?, ?, ?, ?, ?, ?, ?)", "ON CONFLICT (org, entity, id) DO UPDATE SET data = excluded.data, "
                     "meta = excluded.meta, deleted = excluded.deleted, conflicts = excluded.conflicts", rows)
        self._log(conn, org, fresh, stored, changed, created, pushers or {})

    @staticmethod
    def _stored_rows(conn: Any, org: str, ops: list[Op]) -> dict[tuple[str, str], tuple[str, str]]:
        """(entity, id) -> (data, meta) of the stored records ``ops`` touch, read at once: a round
        trip per record would hold the organisation's lock through as many waits (PostgreSQL)."""
        touched: dict[str, set[str]] = {}
        for op in ops:
            touched.setdefault(op.entity, set()).add(op.record_id)
        stored: dict[tuple[str, str], tuple[str, str]] = {}
        for entity, rids in touched.items():  # (org, entity, id) is the key: point lookups, not a scan
            for chunk, marks in _in_chunks(sorted(rids)):
                for rid, data, meta in conn.execute(
                        f"SELECT id, data, meta FROM records WHERE org = ? AND entity = ? AND id IN ({marks})",
                        (org, entity, *chunk)).fetchall():
                    stored[(entity, rid)] = (data, meta)
        return stored

    @staticmethod
    def _logged(conn: Any, org: str, op_ids: list[str]) -> set[str]:
        """Those of ``op_ids`` the organisation's log holds."""
        known: set[str] = set()
        for chunk, marks in _in_chunks(op_ids):
            known.update(row[0] for row in conn.execute(
                f"SELECT op_id FROM ops WHERE org = ? AND op_id IN ({marks})", (org, *chunk)).fetchall())
        return known

    def _log(self, conn: Any, org: str, fresh: list[Op], stored: dict[tuple[str, str], tuple[str, str]],
             changed: dict[tuple[str, str], Record], created: dict[tuple[str, str], dict[str, Any]],
             pushers: dict[str, Scope]) -> None:
        """Append ``fresh`` to the log, each with its account and territory; keep the territory of
        every account current, and mark a move where an account changed territory."""
        def values(entity: str, rid: str) -> dict[str, Any] | None:
            if (entity, rid) in changed:
                return changed[(entity, rid)].values
            if (entity, rid) in created:
                return created[(entity, rid)]
            if (entity, rid) in stored:
                return json.loads(stored[(entity, rid)][0])
            return None

        scope_of: dict[tuple[str, str], str | None] = {}
        pushed_by: dict[str, list[Scope]] = {}  # account -> the scopes of the reps who pushed ops on it
        for op in fresh:
            key = (op.entity, op.record_id)
            if key not in scope_of:
                if op.entity == "product":
                    scope_of[key] = None
                elif op.entity == "account":
                    scope_of[key] = op.record_id
                else:
                    got = values(*key) or {}
                    scope_of[key] = got.get("account") or op.fields.get("account") or _unfiled(*key)
            account = scope_of[key]
            if account and op.op_id in pushers:
                pushed_by.setdefault(account, []).append(pushers[op.op_id])
        accounts = sorted({a for a in scope_of.values() if a and not a.startswith("?")})
        before: dict[str, str] = {}
        for chunk, marks in _in_chunks(accounts):
            before.update(conn.execute(f"SELECT account, territory FROM account_terr WHERE org = ? "
                                       f"AND account IN ({marks})", (org, *chunk)).fetchall())
        now = dict(before)
        for account in accounts:
            got = values("account", account)
            if got is not None:
                now[account] = got.get("territory") or ""
        _insert_rows(conn, "INSERT INTO ops (org, op_id, device, body, scope, terr)", "(?, ?, ?, ?, ?, ?)",
                     "ON CONFLICT (org, op_id) DO NOTHING",
                     [(org, op.op_id, op.device, op_to_json(op), scope_of[(op.entity, op.record_id)],
                       GLOBAL_TERR if op.entity == "product" else now.get(scope_of[(op.entity, op.record_id)] or "", ""))
                      for op in fresh])
        newest = max(op.hlc[:19] for op in fresh)  # so back-office edits are stamped after every version
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                     "SET value = excluded.value WHERE excluded.value > meta.value", ("max_hlc:" + org, newest))
        moved = [a for a in accounts if a in before and a in now and before[a] != now[a]]
        # A new account outside the territories of a rep who wrote it leaves their devices: a move
        # for them (a marker for a device that never held it changes nothing there).
        stray = [a for a in accounts if a not in before and a in now
                 and any(not scope.holds(now[a]) for scope in pushed_by.get(a, ()))]
        fresh_accounts = [a for a in accounts if a not in before and a in now]
        if fresh_accounts:
            _insert_rows(conn, "INSERT INTO account_terr (org, account, territory)", "(?, ?, ?)",
                         "ON CONFLICT (org, account) DO UPDATE SET territory = excluded.territory",
                         [(org, a, now[a]) for a in fresh_accounts])
        # Ops on an account logged before the account itself (a server restored from a backup
        # gets a rep's visit before the account's creator sends the create again) went into the
        # log with no territory: they follow the account into its territory, and a marker brings
        # them, as a snapshot, to the devices that pulled past them.
        # The same for ops on a record logged before the record's create (they went in unfiled,
        # its account unknown): they join its account, and its territory.
        adopted = {_unfiled(entity, rid): account for (entity, rid), account in scope_of.items()
                   if entity not in ("account", "product") and account and not account.startswith("?")}
        placed_now: list[str] = []
        for unfiled in self._scopes_in_log(conn, org, list(adopted)):
            account = adopted[unfiled]
            conn.execute("UPDATE ops SET scope = ?, terr = ? WHERE org = ? AND scope = ?",
                         (account, now.get(account, ""), org, unfiled))
            if now.get(account):
                placed_now.append(account)
        unplaced = placed_now + self._unplaced(conn, org, [a for a in fresh_accounts if now[a]])
        for account in dict.fromkeys(moved + unplaced):  # once each: an UPDATE over its whole history
            if account in moved:
                conn.execute("UPDATE account_terr SET territory = ? WHERE org = ? AND account = ?",
                             (now[account], org, account))
            conn.execute("UPDATE ops SET terr = ? WHERE org = ? AND scope = ? AND terr <> ?",
                         (now[account], org, account, MOVE_TERR))
        marked = moved + [a for a in stray + unplaced if a not in moved]
        if marked:
            conn.executemany("INSERT INTO ops (org, op_id, device, body, scope, terr) VALUES (?, ?, ?, ?, ?, ?)",
                             [(org, new_id(), MOVE_DEVICE, json.dumps({"move": account, "to": now[account]}),
                               account, MOVE_TERR) for account in dict.fromkeys(marked)])

    @staticmethod
    def _unplaced(conn: Any, org: str, accounts: list[str]) -> list[str]:
        """Those of ``accounts`` with ops in the log that have no territory (terr '')."""
        return ServerStore._scopes_in_log(conn, org, accounts, "AND terr = ''")

    @staticmethod
    def _scopes_in_log(conn: Any, org: str, scopes: list[str], where: str = "") -> list[str]:
        """Those of ``scopes`` some op in the log is filed under (and matches ``where``)."""
        found: set[str] = set()
        for chunk, marks in _in_chunks(scopes):
            found.update(row[0] for row in conn.execute(
                f"SELECT DISTINCT scope FROM ops WHERE org = ? AND scope IN ({marks}) {where}",
                (org, *chunk)).fetchall())
        return [s for s in scopes if s in found]

    def push(self, identity: Identity, raw_ops: list[Any], *, continuity: Continuity = Continuity()
             ) -> PushResult:
        """Apply a batch in order, in short transactions (``_transactions``); each op at most once,
        refused ops reported, not applied. Between two transactions the write lock is free, so
        another organisation's push waits for one slice, not the whole batch. If the server stops
        part-way the device gets no answer and sends the batch again: the ops already applied are
        acknowledged, not applied twice. ``continuity`` is checked first, under the organisation's
        lock: ContinuityBroken, and nothing applied, when it does not hold.

        ``raw_ops`` are wire dicts, or Ops the caller already parsed (the HTTP handler does, to
        refuse a malformed batch before it gets here)."""
        return self._commit(self._prepare(identity, raw_ops), continuity)

    def push_group(self, pushes: list[tuple[Identity, list[Any], Continuity]]) -> list[PushResult | Exception]:
        """Several pushes of one organisation (group commit): each one's result (or the exception
        ``push`` would raise for it), as if pushed one after the other in this order.

        Pushes small enough to share one short transaction (PUSH_TXN_OPS, PUSH_TXN_WEIGHT in all)
        are applied in one, so one commit (one fsync) serves them all; each is checked for
        continuity under the lock before anything of it is applied. A bigger push goes alone, in
        its own short transactions. Should a shared transaction fail, nothing of it is kept and
        each of its pushes is applied alone, so one push's failure never becomes its neighbours'."""
        out: list[PushResult | Exception | None] = [None] * len(pushes)
        ready: list[tuple[int, _Batch, Continuity]] = []
        for k, (identity, raw_ops, continuity) in enumerate(pushes):
            try:
                ready.append((k, self._prepare(identity, raw_ops), continuity))
            except Exception as exc:  # noqa: BLE001 - handed back to that push's caller
                out[k] = exc
        if len({batch.identity.org for _, batch, _ in ready}) > 1:
            raise ValueError("push_group: every push must be of one organisation")
        groups: list[list[tuple[int, _Batch, Continuity]]] = []
        ops = weight = 0
        for item in ready:  # consecutive pushes that fit one short transaction together
            size, work = len(item[1].admitted), item[1].weight
            if groups and ops + size <= PUSH_TXN_OPS and weight + work <= PUSH_TXN_WEIGHT:
                groups[-1].append(item)
                ops, weight = ops + size, weight + work
            else:
                groups.append([item])
                ops, weight = size, work
        for group in groups:
            if len(group) > 1:
                try:
                    out_group = self._commit_together(group)
                except Exception:  # noqa: BLE001 - rolled back whole: each goes alone below
                    pass
                else:
                    for k, result in out_group:
                        out[k] = result
                    continue
            for k, batch, continuity in group:
                try:
                    out[k] = self._commit(batch, continuity)
                except Exception as exc:  # noqa: BLE001 - handed back to that push's caller
                    out[k] = exc
        return out  # type: ignore[return-value]

    def _prepare(self, identity: Identity, raw_ops: list[Any]) -> _Batch:
        """The admission step of a push, before any lock: the ops admitted, those rejected, those
        ahead of the server's clock (or already logged), and the pusher's scope."""
        admitted: list[Op] = []
        rejected: list[tuple[str, str]] = []
        ahead: dict[str, str] = {}
        now = server_now_ms()
        for raw in raw_ops:
            if isinstance(raw, Op):
                op_id = raw.op_id
            else:
                op_id = raw.get("op") if isinstance(raw, dict) and isinstance(raw.get("op"), str) else None
            try:
                op = raw if isinstance(raw, Op) else parse(raw, now=now)  # the schema step, once per op
                admit(op, from_device=True, now=now)
            except ClockAhead as exc:
                ahead[op.op_id] = str(exc)
                continue
            except InvalidOp as exc:
                if exc.code == CLOCK_AHEAD and exc.op_id is not None:  # a year ahead: re-stamped like any
                    ahead[exc.op_id] = str(exc)
                    continue
                if op_id is None:
                    raise ValidationError(f"unusable op in batch: {exc}") from None
                rejected.append((op_id, str(exc)))
                continue
            except (OpFormatError, CrmError) as exc:
                if op_id is None:
                    raise ValidationError(f"unusable op in batch: {exc}") from None
                rejected.append((op_id, str(exc)))
                continue
            admitted.append(op)
        logged: list[str] = []
        with self.db.read() as conn:
            if ahead:  # one already in the log was applied when its stamp was fine: acknowledged, so a
                # device never gives a logged op a new stamp (the server's clock may have stepped back)
                for chunk, marks in _in_chunks(list(ahead)):
                    for (op_id,) in conn.execute(f"SELECT op_id FROM ops WHERE org = ? AND op_id IN ({marks})",
                                                 (identity.org, *chunk)).fetchall():
                        logged.append(op_id)
                        del ahead[op_id]
            scope = self._scope(conn, identity.org, identity.rep)
        return _Batch(identity, admitted, rejected, ahead, logged, scope if scope.territories is not None else None)

    def _commit(self, batch: _Batch, continuity: Continuity) -> PushResult:
        """Apply one prepared push in its own short transactions."""
        org = batch.identity.org
        over: list[tuple[str, str]] = []
        chunks = list(_transactions(batch.admitted)) or [[]]
        head = latest = None
        for number, chunk in enumerate(chunks):
            with self.db.write(org) as conn:
                if number == 0:
                    self._check_continuity(conn, org, continuity)
                if chunk:
                    over += self._apply_admitted(conn, batch, chunk)
                if number == len(chunks) - 1:
                    head, latest = self._head_and_latest(conn, org, continuity.device)
        return batch.result(over, head, latest)

    def _commit_together(self, group: list[tuple[int, _Batch, Continuity]]
                         ) -> list[tuple[int, PushResult | ContinuityBroken]]:
        """Apply prepared pushes, each small, in one transaction, as one batch: what each would
        get pushed alone in this order (continuity, what ``_refused_under_lock`` refuses and the ops
        already logged are decided push by push, over what the earlier ones of the group add), but the group's
        rows are written in shared statements, each of which gives up the GIL inside the write
        lock (bench/README.md). Every answer's ``witness`` is the log's last entry after the group."""
        out: list[tuple[int, PushResult | ContinuityBroken]] = []
        org = group[0][1].identity.org
        with self.db.write(org) as conn:
            every = [op for _, batch, _ in group for op in batch.admitted]
            known = self._logged(conn, org, [op.op_id for op in every])
            stored = self._stored_rows(conn, org, every)  # as before the group: see _fixed_changed
            logged = set(known)  # grows with each accepted push's new ops
            latest: dict[str, str] = {}  # device -> its latest op, as the group's accepted pushes leave it
            lines: dict[str, set[str]] = {}
            touched: set[tuple[str, str]] = set()
            ops: list[Op] = []
            pushers: dict[str, Scope] = {}
            push_of: dict[str, int] = {}
            accepted: list[tuple[int, _Batch, Continuity, list[tuple[str, str]]]] = []
            for k, batch, continuity in group:
                try:
                    self._check_continuity(conn, org, continuity, latest)
                except ContinuityBroken as exc:  # nothing of this push applied; the others go on
                    out.append((k, exc))
                    continue
                over = self._refused_under_lock(conn, org, batch.admitted, logged, stored, touched, lines)
                refused = {op_id for op_id, _ in over}
                for op in batch.admitted:
                    if op.op_id in refused or op.op_id in logged:
                        continue
                    logged.add(op.op_id)
                    touched.add((op.entity, op.record_id))
                    ops.append(op)
                    latest[op.device] = op.op_id
                    push_of[op.op_id] = k
                    if batch.pusher is not None:
                        pushers[op.op_id] = batch.pusher
                accepted.append((k, batch, continuity, over))
            if ops:
                self._apply(conn, org, ops, pushers=pushers, push_of=push_of, known=known, stored=stored)
            head = self._head(conn, org)
            for k, batch, continuity, over in accepted:
                device = continuity.device
                out.append((k, batch.result(over, head, latest[device] if device in latest
                                            else self._latest_of(conn, org, device))))
        return out

    def _apply_admitted(self, conn: Any, batch: _Batch, chunk: list[Op]) -> list[tuple[str, str]]:
        """Apply ``chunk`` of ``batch``'s admitted ops but those ``_refused_under_lock``; those
        (op id, reason)."""
        org = batch.identity.org
        known = self._logged(conn, org, [op.op_id for op in chunk])
        stored = self._stored_rows(conn, org, chunk)
        over = self._refused_under_lock(conn, org, chunk, known, stored)
        refused = {op_id for op_id, _ in over}
        self._apply(conn, org, [op for op in chunk if op.op_id not in refused] if refused else chunk,
                    pushers={op.op_id: batch.pusher for op in chunk} if batch.pusher is not None else None,
                    known=known, stored=stored)
        return over

    def _refused_under_lock(self, conn: Any, org: str, ops: list[Op], known: set[str],
                            stored: dict[tuple[str, str], tuple[str, str]],
                            touched: set[tuple[str, str]] | None = None,
                            lines: dict[str, set[str]] | None = None) -> list[tuple[str, str]]:
        """The ops of a push (op id, reason) refused against what the store holds (``stored``: the
        rows of their records): a field fixed at creation changed, then an order past its line cap.
        ``touched``, ``lines``: what the earlier pushes of a group leave."""
        over = self._fixed_changed(ops, known, stored, touched)
        if over:
            refused = {op_id for op_id, _ in over}
            ops = [op for op in ops if op.op_id not in refused]
        return over + self._past_line_cap(conn, org, ops, lines)

    @staticmethod
    def _head(conn: Any, org: str) -> tuple[int, str] | None:
        head = conn.execute("SELECT seq, op_id FROM ops WHERE org = ? ORDER BY seq DESC LIMIT 1", (org,)).fetchone()
        return tuple(head) if head else None

    def _head_and_latest(self, conn: Any, org: str, device: str | None) -> tuple[tuple[int, str] | None, str | None]:
        return self._head(conn, org), self._latest_of(conn, org, device)

    @staticmethod
    def _fixed_changed(ops: list[Op], known: set[str], stored: dict[tuple[str, str], tuple[str, str]],
                       touched: set[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
        """The ops (op id, reason) that would give a field fixed at creation (FIXED_FIELDS) of a
        stored record another value: a second create of it, or a resolution, naming another
        territory or account. The organisation is the write boundary, but a territory is the read
        boundary: such an op would carry another territory's record, and its history, to the
        writer's devices (or leave its log filed under the old account). Ops in ``known`` (logged
        already: sent again) are not checked; nor is a record this push makes (it is its writer's
        own, whatever its creates say). ``touched``: in a group, the records its earlier pushes
        wrote; a check of one of those raises _NotTogether, and each push goes alone (what they
        leave depends on how their merge and a rep's default territory play out). ``stored``: the
        rows of the records ``ops`` touch (``_stored_rows``), as the store held them before."""
        checked = [op for op in ops if op.kind in ("create", "resolve") and op.op_id not in known
                   and not FIXED_FIELDS[op.entity].isdisjoint(op.fields)]
        if not checked:
            return []
        if touched and any((op.entity, op.record_id) in touched for op in checked):
            raise _NotTogether
        refused = []
        for op in checked:
            row = stored.get((op.entity, op.record_id))
            if row is None:
                continue
            have = json.loads(row[0])
            changed = sorted(name for name in FIXED_FIELDS[op.entity] & op.fields.keys()
                             if name in have and op.fields[name] != have[name])
            if changed:  # the stored value stays unsaid: the record may be of a territory the pusher does not hold
                refused.append((op.op_id, f"{op.entity}.{changed[0]} cannot be changed after creation: "
                                          f"{op.entity} {op.record_id} already has another {changed[0]}"))
        return refused

    def _past_line_cap(self, conn: Any, org: str, ops: list[Op], lines: dict[str, set[str]] | None = None
                       ) -> list[tuple[str, str]]:
        """The ops (op id, reason) that would take an order past MAX_ORDER_LINES lines, in order:
        lines are fields, so without a cap one order grew by every push (docs/security.md). So is a
        submission naming a line the order does not have: it is joined into the order for good.
        ``lines``: each order's lines as the earlier pushes of a group leave them, read from the
        store for an order not in it yet and updated in place."""
        orders = {op.record_id for op in ops if op.entity == "order" and (
            SUBMISSION in op.fields or any(name.startswith(LINE_PREFIX) for name in op.fields))}
        if not orders:
            return []
        lines = {} if lines is None else lines
        unread = orders - lines.keys()
        lines.update((rid, set()) for rid in unread)
        for chunk, marks in _in_chunks(sorted(unread)):
            for rid, data in conn.execute(f"SELECT id, data FROM records WHERE org = ? AND entity = 'order' "
                                          f"AND id IN ({marks})", (org, *chunk)).fetchall():
                lines[rid] = {name for name in json.loads(data) if name.startswith(LINE_PREFIX)}
        over = []
        for op in ops:
            if op.entity != "order" or op.record_id not in orders:
                continue
            have = lines[op.record_id]
            new = {name for name in op.fields if name.startswith(LINE_PREFIX)} - have
            submitted = op.fields.get(SUBMISSION)
            unknown = {LINE_PREFIX + key for key in submitted} - have - new if isinstance(submitted, dict) else set()
            if len(have) + len(new) > MAX_ORDER_LINES:
                over.append((op.op_id, f"order {op.record_id} would have {len(have) + len(new)} lines: an order "
                                       f"takes at most {MAX_ORDER_LINES} lines, removed ones included"))
            elif unknown:
                over.append((op.op_id, f"order {op.record_id}: its submission names {len(unknown)} line(s) "
                                       "the order does not have"))
            else:
                have |= new
        return over

    def pull(self, identity: Identity, *, cursor: int, limit: int, device: str | None = None,
             max_bytes: int = MAX_PULL_BYTES, continuity: Continuity | None = None, epoch: int | None = None,
             own: bool = False, part: str | None = None) -> tuple[list[str], int, bool, dict[str, Any]]:
        """Ops (wire JSON text) after ``cursor`` in log order, skipping the caller's own and those
        outside the rep's territories; the new cursor; whether more follow; and the other fields of
        the answer: the continuity fields (the entry at the new cursor, the latest op of
        ``device``) and, for a protocol-2 client (``epoch`` given), its ``scope`` and the ``moves``
        in the page (docs/sync-protocol.md, "Territories"). ContinuityBroken when ``continuity``
        does not hold; OutOfScopeClient for a protocol-1 client of a rep who holds territories.
        ``own``: the caller's own ops are sent too (a device refilling after a scope change).

        A page holds at most ``limit`` log entries and stops before the op, or the snapshot row,
        that would take the answer past ``max_bytes`` (what it sends, and the fields around it
        counted at their longest), but always holds at least one, so a client makes progress
        whatever size an op or a record is. Sizes are read
        first, with the bodies of ops of at most INLINE_BODY_BYTES, and other bodies only for the
        page, so a page of huge ops, or a move of an account with 200,000 visits, is never loaded
        whole to be cut.

        ``part`` (protocol 2): None for a client that cannot resume inside a move (it gets each
        snapshot whole, or OutOfScopeClient when one does not fit in a page); "" at an entry
        boundary; "ENTITY:ID", the last snapshot row it stored of the move marker at ``cursor``
        (BadPart when there is no marker there). The answer's ``part`` says where the page stopped."""
        limit = max(1, min(limit, MAX_PULL_LIMIT))
        continuity = continuity or Continuity(device=device)
        size = "octet_length(body)" if self.db.dialect == "postgresql" else "length(CAST(body AS BLOB))"
        org = identity.org
        skip = None if own else device  # the device whose ops are left out
        resume = parse_part(part) if part else None
        with self.db.snapshot() as conn:
            self._check_continuity(conn, org, continuity)
            latest = self._latest_of(conn, org, device)
            scope = self._scope(conn, org, identity.rep)
            extra: dict[str, Any] = {} if epoch is None else {"scope": scope.to_json(), "moves": []}
            if epoch is None and scope.territories is not None:
                raise OutOfScopeClient(f"rep {identity.rep!r} holds territories: this server sends them only to "
                                       f"clients of protocol {PROTOCOL}; upgrade crm")
            if part is not None:
                extra["part"] = ""
            # The cap bounds the whole answer: what it sends, and the fields around it at their longest.
            around = ENVELOPE_BYTES + (0 if device is None else CONTINUITY_BYTES) + (0 if epoch is None else (
                SCOPE_BYTES + len(json.dumps(extra["scope"], separators=(",", ":"), ensure_ascii=False).encode())))
            budget = max(1, max_bytes - around)
            if epoch is not None and epoch != scope.epoch:  # the rep's territories changed: start again
                return [], cursor, False, {**_continuity_json(None, latest), **extra, "reset": True}
            # Each entry comes with its size and, when it is small, its body: one read of the rows
            # plans the page and fills it (a body read only in the page is read once more, below).
            cols = (f"seq, device, {size} AS size, op_id, terr, scope, "
                    f"CASE WHEN {size} <= {INLINE_BODY_BYTES} THEN body END AS small")
            if scope.territories is None:
                terrs: tuple[str, ...] = ()
                rows = conn.execute(f"SELECT {cols} FROM ops WHERE org = ? AND seq > ? AND terr <> ? "
                                    "ORDER BY seq LIMIT ?", (org, cursor, MOVE_TERR, limit + 1)).fetchall()
            else:  # one index range (org, terr, seq) per territory, merged: a page costs what it
                # holds, however much of the log belongs to other territories
                terrs = (GLOBAL_TERR, MOVE_TERR, *scope.territories)
                rows = self._merged_ranges(conn, cols, org, terrs, cursor, limit + 1)
            more = len(rows) > limit
            entries = list(rows[:limit])
            if resume is not None:  # the page starts inside the snapshot of the marker at the cursor
                marker = conn.execute("SELECT seq, device, 0, op_id, terr, scope, NULL FROM ops "
                                      "WHERE org = ? AND seq = ?", (org, cursor)).fetchone()
                if marker is None or marker[4] != MOVE_TERR or scope.territories is None:
                    raise BadPart(f"part: the entry at cursor {cursor} is not a move of this rep's log")
                entries.insert(0, tuple(marker))
            total = sent = 0
            plan: list[tuple[str, list[tuple[int, str]] | None]] = []  # (account, snapshot rows | None: drop)
            planned: set[str] = set()  # the accounts of ``plan``
            last: tuple[int, str] | None = None  # the last entry wholly in the page
            cut: tuple[int, str, tuple[int, str]] | None = None  # the page ends inside this marker's snapshot
            for seq, dev, length, op_id, terr, account, _ in entries:
                if terr != MOVE_TERR:
                    if dev != skip:
                        if sent and total + length + 1 > budget:
                            more = True
                            break
                        total += length + 1  # the comma between ops
                        sent += 1
                    last = (seq, op_id)
                    continue
                if account in planned:  # moved twice in the page: one move says where it is now
                    last = (seq, op_id)
                    continue
                planned.add(account)
                head = MOVE_BYTES + len(account)
                where = conn.execute("SELECT territory FROM account_terr WHERE org = ? AND account = ?",
                                     (org, account)).fetchone()
                if where is None or not scope.holds(where[0]):
                    if sent and total + head > budget:
                        more = True
                        break
                    total += head
                    sent += 1
                    plan.append((account, None))
                    last = (seq, op_id)
                    continue
                keys: list[tuple[int, str]] = []
                whole = True
                for key, row_bytes in self._family_sizes(conn, org, account, resume if seq == cursor else None):
                    if (sent or keys) and total + head + row_bytes > budget:
                        whole = False
                        break
                    head += row_bytes
                    keys.append(key)
                if whole:
                    total += head
                    sent += 1
                    plan.append((account, keys))
                    last = (seq, op_id)
                    continue
                more = True
                if part is None:  # a client that cannot resume inside a move: a snapshot goes whole
                    if sent:
                        break  # it starts the next page
                    raise OutOfScopeClient(
                        f"account {account} moved into rep {identity.rep!r}'s territories with more records than "
                        f"fit in a pull page ({max_bytes} bytes): this server sends such a move over several "
                        "pages, to clients that resume inside a move (`part`); upgrade crm")
                if keys:
                    total += head
                    sent += 1
                    plan.append((account, keys))
                    cut = (seq, op_id, keys[-1])
                break
            if cut is not None:  # the cursor stays at the marker; ``part`` says how far its snapshot went
                new_cursor, at = cut[0], cut[1]
                extra["part"] = f"{FAMILY[cut[2][0]]}:{cut[2][1]}"
            elif more and last is not None:
                new_cursor, at = last
            else:  # nothing more for this rep: the cursor moves to the log's end, past what is not theirs
                head_entry = conn.execute("SELECT seq, op_id FROM ops WHERE org = ? ORDER BY seq DESC LIMIT 1",
                                          (org,)).fetchone()
                if (head_entry is None or head_entry[0] <= cursor) and not plan:
                    return [], cursor, False, {**_continuity_json(None, latest), **extra}
                new_cursor, at = head_entry if head_entry[0] > cursor else (cursor, entries[0][3])
            seen = {**_continuity_json((new_cursor, at), latest), **extra}
            if not sent:
                return [], new_cursor, more, seen
            page = [(seq, body) for seq, dev, _, _, terr, _, body in entries
                    if seq <= new_cursor and terr != MOVE_TERR and dev != skip]
            large: dict[int, str] = {}
            for chunk, marks in _in_chunks([seq for seq, body in page if body is None]):
                large.update(conn.execute(f"SELECT seq, body FROM ops WHERE org = ? AND seq IN ({marks})",
                                          (org, *chunk)).fetchall())
            ops = [large[seq] if body is None else body for seq, body in page]
            if epoch is not None:
                seen["moves"] = self._moves(conn, org, plan)
        return ops, new_cursor, more, seen

    def _merged_ranges(self, conn: Any, cols: str, org: str, terrs: tuple[str, ...], cursor: int,
                       limit: int) -> list[Any]:
        """The first ``limit`` entries after ``cursor`` of territories ``terrs``, in log order. On
        SQLite, one query per territory merged here: its planner sorts each range of a UNION ALL
        again in a temporary B-tree, which cost a pull more than reading the rows."""
        if self.db.dialect == "postgresql":
            ranges = " UNION ALL ".join(
                f"SELECT * FROM (SELECT {cols} FROM ops WHERE org = ? AND terr = ? AND seq > ? ORDER BY seq "
                f"LIMIT ?) AS r{n}" for n in range(len(terrs)))
            return conn.execute(f"{ranges} ORDER BY seq LIMIT ?",
                                (*(v for t in terrs for v in (org, t, cursor, limit)), limit)).fetchall()
        return list(itertools.islice(heapq.merge(*(conn.execute(
            f"SELECT {cols} FROM ops WHERE org = ? AND terr = ? AND seq > ? ORDER BY seq LIMIT ?",
            (org, terr, cursor, limit)).fetchall() for terr in terrs)), limit))

    def _moves(self, conn: Any, org: str, plan: list[tuple[str, list[tuple[int, str]] | None]]
               ) -> list[dict[str, Any]]:
        """The moves of a page: for each moved account, what a device of the rep does: drop it and
        its children (None: it does not hold the account now) or take the current state of the
        snapshot rows the page holds (keys (FAMILY index, id) in the snapshot's order)."""
        out: list[dict[str, Any]] = []
        for account, keys in plan:
            if keys is None:
                out.append({"account": account, "drop": True})
                continue
            found: dict[tuple[int, str], list[str]] = {}
            for index, entity in enumerate(FAMILY):
                for chunk, marks in _in_chunks([rid for i, rid in keys if i == index]):
                    for rid, data, meta in conn.execute(
                            f"SELECT id, data, meta FROM records WHERE org = ? AND entity = ? AND id IN ({marks})",
                            (org, entity, *chunk)).fetchall():
                        found[(index, rid)] = [entity, rid, data, meta]
            out.append({"account": account, "records": [found[key] for key in keys if key in found]})
        return out

    def _parent_expr(self) -> str:
        return "(data::json) ->> 'account'" if self.db.dialect == "postgresql" else "json_extract(data, '$.account')"

    def _escaped_length(self, column: str) -> str:
        """SQL for the bytes of a JSON text column once written as a JSON string: its bytes, and
        one more for each quote and backslash (the only characters stored JSON text escapes again)."""
        octets = f"octet_length({column})" if self.db.dialect == "postgresql" else f"length(CAST({column} AS BLOB))"
        return f"({octets} + length({column}) - length(replace(replace({column}, '\"', ''), '\\', '')))"

    def _family_sizes(self, conn: Any, org: str, account: str, after: tuple[int, str] | None):
        """The rows of ``account``'s snapshot after ``after``, in the snapshot's order (the account,
        then each child entity by id), as ((FAMILY index, id), bytes on the wire): sizes only, read
        FAMILY_BATCH rows at a time, so the caller stops reading where its page is full."""
        size = f"{self._escaped_length('data')} + {self._escaped_length('meta')} + length(id)"
        for index, entity in enumerate(FAMILY):
            if after is not None and index < after[0]:
                continue
            last = after[1] if after is not None and index == after[0] else None
            owner = "id = ?" if entity == "account" else f"{self._parent_expr()} = ?"
            while True:
                rows = conn.execute(
                    f"SELECT id, {size} FROM records WHERE org = ? AND entity = ? AND {owner}"
                    + ("" if last is None else " AND id > ?") + " ORDER BY id LIMIT ?",
                    (org, entity, account, *(() if last is None else (last,)), FAMILY_BATCH)).fetchall()
                for rid, row_bytes in rows:
                    yield (index, rid), int(row_bytes) + len(entity) + ROW_BYTES
                if len(rows) < FAMILY_BATCH:
                    break
                last = rows[-1][0]

    # -- territories ---------------------------------------------------------------------------
    @staticmethod
    def _scope(conn: Any, org: str, rep: str) -> Scope:
        rows = conn.execute("SELECT territory FROM assignments WHERE org = ? AND rep = ? ORDER BY since, territory",
                            (org, rep)).fetchall()
        row = conn.execute("SELECT epoch FROM rep_scope WHERE org = ? AND rep = ?", (org, rep)).fetchone()
        epoch = int(row[0]) if row else 0
        if not rows:
            return Scope(None, epoch, None)
        return Scope(tuple(sorted(r[0] for r in rows)), epoch, rows[0][0])

    def scope(self, org: str, rep: str) -> Scope:
        with self.db.read() as conn:
            return self._scope(conn, org, rep)

    def assign(self, org: str, rep: str, territory: str, *, remove: bool = False) -> dict[str, Any]:
        """Give ``rep`` the territory ``territory`` (or take it away): their devices start again
        from the new scope on their next sync. A rep with no territory holds the whole organisation."""
        check_territory(territory)
        if org not in self.orgs():
            raise NotFoundError(f"no organisation {org!r} on this server")
        with self.db.write(org) as conn:
            row = conn.execute("SELECT epoch FROM rep_scope WHERE org = ? AND rep = ?", (org, rep)).fetchone()
            epoch = (int(row[0]) if row else 0) + 1
            if remove:
                cur = conn.execute("DELETE FROM assignments WHERE org = ? AND rep = ? AND territory = ?",
                                   (org, rep, territory))
                if cur.rowcount == 0:
                    raise NotFoundError(f"rep {rep!r} of {org!r} is not assigned territory {territory!r}")
            else:
                cur = conn.execute("INSERT INTO assignments (org, rep, territory, since) VALUES (?, ?, ?, ?) "
                                   "ON CONFLICT (org, rep, territory) DO NOTHING", (org, rep, territory, epoch))
                if cur.rowcount == 0:
                    return {"org": org, "rep": rep, **self._scope(conn, org, rep).to_json(), "changed": False}
            conn.execute("INSERT INTO rep_scope (org, rep, epoch) VALUES (?, ?, ?) ON CONFLICT (org, rep) "
                         "DO UPDATE SET epoch = excluded.epoch", (org, rep, epoch))
            return {"org": org, "rep": rep, **self._scope(conn, org, rep).to_json(), "changed": True}

    def territories(self, org: str) -> list[dict[str, Any]]:
        """Every territory of ``org`` (named by an assignment or an account): its reps and accounts."""
        if org not in self.orgs():
            raise NotFoundError(f"no organisation {org!r} on this server")
        with self.db.read() as conn:
            reps: dict[str, list[str]] = {}
            for territory, rep in conn.execute("SELECT territory, rep FROM assignments WHERE org = ? "
                                               "ORDER BY territory, rep", (org,)).fetchall():
                reps.setdefault(territory, []).append(rep)
            counts = dict(conn.execute("SELECT territory, count(*) FROM account_terr WHERE org = ? "
                                       "AND territory <> '' GROUP BY territory", (org,)).fetchall())
        return [{"territory": t, "reps": reps.get(t, []), "accounts": int(counts.get(t, 0))}
                for t in sorted(set(reps) | set(counts))]

    # -- continuity ----------------------------------------------------------------------------
    @staticmethod
    def _latest_of(conn: Any, org: str, device: str | None) -> str | None:
        if device is None:
            return None
        row = conn.execute("SELECT op_id FROM ops WHERE org = ? AND device = ? ORDER BY seq DESC LIMIT 1",
                           (org, device)).fetchone()
        return row[0] if row else None

    def _check_continuity(self, conn: Any, org: str, continuity: Continuity,
                          latest_of: dict[str, str] | None = None) -> None:
        """ContinuityBroken unless ``continuity`` holds; ``latest_of``: devices' latest ops not
        in the store yet (the earlier pushes of a group)."""
        if continuity.witness is not None:
            seq, op_id = continuity.witness
            if conn.execute("SELECT 1 FROM ops WHERE org = ? AND seq = ? AND op_id = ?",
                            (org, seq, op_id)).fetchone() is None:
                raise ContinuityBroken("log_changed")
        if continuity.device is not None and continuity.known is not None:
            latest = latest_of[continuity.device] if latest_of and continuity.device in latest_of \
                else self._latest_of(conn, org, continuity.device)
            if latest != (continuity.known or None):
                raise ContinuityBroken("device_reused", latest)

    # -- the back office -----------------------------------------------------------------------
    def _backoffice_ops(self, conn: Any, org: str, changes: list[tuple[str, str, dict, dict, str]],
                        after: list[str | None] | None = None) -> list[Op]:
        """Back-office ops making ``changes``, stamped after everything logged; ``after``: for each
        change, a stamp (its first 19 characters) logged in this transaction that it must follow."""
        row = conn.execute("SELECT value FROM meta WHERE key = ?", ("hlc:" + org,)).fetchone()
        wall, counter = (row[0] if row else "0.0").split(".")
        clock = HybridClock(device=BACKOFFICE_DEVICE, state=(int(wall), int(counter)), wall=server_now_ms)
        # Stamp after everything already logged, so a back-office edit is never "in the past".
        newest = conn.execute("SELECT value FROM meta WHERE key = ?", ("max_hlc:" + org,)).fetchone()
        if newest:
            wall_ms, counter = newest[0].split(".")
            clock.state = max(clock.state, (int(wall_ms), int(counter)))
        ops = []
        for n, (entity, rid, fields, base, kind) in enumerate(changes):
            if after and after[n]:
                wall_ms, counter = after[n].split(".")
                clock.state = max(clock.state, (int(wall_ms), int(counter)))
            ops.append(Op(op_id=new_id(), device=BACKOFFICE_DEVICE, hlc=clock.tick(), entity=entity,
                          record_id=rid, fields=fields, base=base, kind=kind))
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                     "SET value = excluded.value", ("hlc:" + org, f"{clock.state[0]}.{clock.state[1]}"))
        return ops

    def find_org(self, entity: str, rid: str) -> str:
        with self.db.read() as conn:
            orgs = [r[0] for r in conn.execute(
                "SELECT org FROM records WHERE entity = ? AND id = ?", (entity, rid)).fetchall()]
        if not orgs:
            raise NotFoundError(f"no {entity} with id {rid!r} on this server")
        if len(orgs) > 1:
            raise ValidationError(f"{entity} {rid} exists in several organisations; give --org")
        return orgs[0]

    def edit(self, org: str | None, entity: str, rid: str, changes: dict[str, Any]) -> dict[str, Any]:
        """A back-office edit, merged by the same rules as a device's edit of the same record."""
        if entity not in ENTITIES:
            raise ValidationError(f"unknown entity {entity!r}")
        rid = rid.strip().lower()
        if not is_utf8(rid):  # a lone surrogate (undecodable argv bytes) names no record
            raise NotFoundError(f"no {entity} with id {rid!r} on this server")
        org = org or self.find_org(entity, rid)
        changes = dict(changes)
        territory = changes.pop("territory", None) if entity == "account" else None
        values = validate_edit(entity, changes) if changes or territory is None else {}
        if territory is not None:  # the back office moves accounts (a device cannot)
            values["territory"] = check_territory(territory)
        with self.db.write(org) as conn:
            rec = self._load(conn, org, entity, rid)
            if rec is None or rec.deleted:
                raise NotFoundError(f"no {entity} with id {rid!r} in organisation {org!r}")
            base = {name: merge.edit_base(rec, name) for name in values}
            (op,) = self._backoffice_ops(conn, org, [(entity, rid, values, base, "update")])
            self._apply(conn, org, [op])
            rec = self._load(conn, org, entity, rid)
        return {"op": op.op_id, **present(rec)}

    def import_products(self, org: str, rows: list[dict[str, Any]]) -> dict[str, int]:
        """Upsert catalogue rows by SKU; they reach devices through the op log like any change."""
        if org not in self.orgs():
            raise NotFoundError(f"no organisation {org!r} (add a rep to create it)")
        created = updated = unchanged = 0
        with self.db.write(org) as conn:
            existing = {json.loads(data)["sku"]: record_from_row("product", rid, data, meta)
                        for rid, data, meta in conn.execute(
                            "SELECT id, data, meta FROM records WHERE org = ? AND entity = 'product' "
                            "AND deleted = 0", (org,)).fetchall()}
            changes = []
            for row in rows:
                values = validate_create("product", row)
                rec = existing.get(values["sku"])
                if rec is None:
                    changes.append(("product", new_id(), values, {}, "create"))
                    created += 1
                    continue
                diff = {k: v for k, v in values.items() if k != "sku" and rec.values.get(k) != v}
                if diff:
                    changes.append(("product", rec.id, diff,
                                    {k: merge.edit_base(rec, k) for k in diff}, "update"))
                    updated += 1
                else:
                    unchanged += 1
            self._apply(conn, org, self._backoffice_ops(conn, org, changes))
        return {"created": created, "updated": updated, "unchanged": unchanged}

    def export(self, org: str, *, rep: str | None = None, territory: str | None = None) -> dict[str, Any]:
        """The organisation's state in the canonical export format; with ``rep`` (or ``territory``)
        only what a device of that rep (or of a rep holding just that territory) holds."""
        if org not in self.orgs():
            raise NotFoundError(f"no organisation {org!r} on this server")
        with self.db.snapshot() as conn:
            terrs: tuple[str, ...] | None = None
            if territory is not None:
                check_territory(territory)
                terrs = (territory,)
            elif rep is not None:
                terrs = self._scope(conn, org, rep).territories
            if terrs is None:
                return export_state(lambda entity: conn.execute(
                    "SELECT id, data, meta FROM records WHERE org = ? AND entity = ? ORDER BY id",
                    (org, entity)).fetchall())
            marks = ",".join("?" * len(terrs))
            held = f"SELECT account FROM account_terr WHERE org = ? AND territory IN ({marks})"

            def rows_for(entity: str) -> list[tuple[str, str, str]]:
                if entity == "product":
                    where, args = "", ()
                elif entity == "account":
                    where, args = f" AND id IN ({held})", (org, *terrs)
                else:
                    where, args = f" AND {self._parent_expr()} IN ({held})", (org, *terrs)
                return conn.execute(f"SELECT id, data, meta FROM records WHERE org = ? AND entity = ?{where} "
                                    "ORDER BY id", (org, entity, *args)).fetchall()
            return export_state(rows_for)

    def stats(self, org: str) -> dict[str, int]:
        with self.db.snapshot() as conn:
            ops = conn.execute("SELECT count(*) FROM ops WHERE org = ?", (org,)).fetchone()[0]
            records = conn.execute("SELECT count(*) FROM records WHERE org = ?", (org,)).fetchone()[0]
        return {"ops": ops, "records": records}


class OutOfScopeClient(Exception):
    """A client of protocol 1 asked for the log of a rep who holds territories, or a client that
    cannot resume inside a move (no ``part``) for a snapshot that does not fit in a page."""


class BadPart(Exception):
    """A pull's ``part`` is not ENTITY:ID of a snapshot row, or there is no move at its cursor."""


def parse_part(part: str) -> tuple[int, str]:
    """A pull's ``part`` ("ENTITY:ID", the last snapshot row a device stored) as (FAMILY index, id)."""
    match = _PART.fullmatch(part)
    if match is None:
        raise BadPart("part must be ENTITY:ID of a record of a moved account (as the previous page said)")
    return FAMILY.index(match[1]), match[2]


def check_territory(territory: str) -> str:
    if not territory or len(territory) > 100 or not territory.isprintable() or territory in (GLOBAL_TERR, MOVE_TERR) \
            or territory != territory.strip():
        raise ValidationError(f"territory: give a name of 1 to 100 printable characters (not {territory!r:.40})")
    return territory


def _row(org: str, row: StoredRecord) -> tuple[str, str, str, str, str, int, int]:
    """A record's row in the server's table: its organisation's, without the device's parent column."""
    return (org, row.entity, row.id, row.data, row.meta, row.deleted, row.conflicts)


def _sqlite_file(data: Path, *, create: bool) -> Path:
    path = data / SERVER_FILENAME
    if not path.exists():
        if not create:
            raise StoreMissingError(f"no server data at {data} (start it with `crm server serve --data {data}`)")
        try:
            data.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        except OSError as exc:
            raise StoreMissingError(f"cannot create server data at {data}: {exc.strerror}") from None
    return path


def _run_script(conn: Any, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


__all__ = ["BadPart", "Continuity", "ContinuityBroken", "Identity", "OutOfScopeClient", "PushResult", "Scope", "ServerStore",
           "check_territory", "hash_token", "parse_part"]
