"""The device's durable SQLite store: one file per home, WAL, synchronous=FULL, versioned schema.

Opening maps every SQLite failure to an error the user can act on (missing, locked, corrupt,
newer schema) and never creates, migrates or overwrites anything it cannot read.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from .errors import (
    CrmError,
    SchemaTooNewError,
    StateError,
    StoreCorruptError,
    StoreLockedError,
    StoreMissingError,
)

SCHEMA_VERSION = 2
STORE_FILENAME = "crm.sqlite3"
BUSY_TIMEOUT_MS = 10_000  # how long a write waits for another process's lock; CRM_BUSY_TIMEOUT_MS overrides

APPLICATION_ID = 0x43524D31  # "CRM1": tells our stores from any other SQLite file


def busy_timeout_ms() -> int:
    try:
        return max(0, int(os.environ.get("CRM_BUSY_TIMEOUT_MS", BUSY_TIMEOUT_MS)))
    except ValueError:
        return BUSY_TIMEOUT_MS


MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE records (
        entity    TEXT NOT NULL,
        id        TEXT NOT NULL,
        data      TEXT NOT NULL,          -- the winning value of every field, JSON
        meta      TEXT NOT NULL,          -- per-field merge metadata, JSON (see crm/merge.py)
        parent    TEXT,                   -- account of a visit/order/note, order of a line
        deleted   INTEGER NOT NULL DEFAULT 0,
        conflicts INTEGER NOT NULL DEFAULT 0,
        ikey      TEXT,                   -- import key: external ref or row hash (device-local)
        PRIMARY KEY (entity, id)
    ) WITHOUT ROWID;
    CREATE INDEX records_parent ON records (entity, parent) WHERE parent IS NOT NULL;
    CREATE UNIQUE INDEX records_ikey ON records (entity, ikey) WHERE ikey IS NOT NULL;
    CREATE INDEX records_conflicts ON records (entity, id) WHERE conflicts > 0;
    CREATE TABLE outbox (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        op_id     TEXT NOT NULL UNIQUE,
        entity    TEXT NOT NULL,
        record_id TEXT NOT NULL,
        hlc       TEXT NOT NULL,
        body      TEXT NOT NULL,          -- the op's wire JSON (crm/ops.py)
        state     TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'rejected')),
        reason    TEXT,
        attempts  INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX outbox_record ON outbox (entity, record_id);
    CREATE INDEX outbox_state ON outbox (state, seq);
    """,
    # Acknowledged ops are kept, oldest first, to send again to a server restored from a backup
    # that lacks them (docs/sync-protocol.md, "Continuity").
    2: """
    CREATE TABLE sent (
        seq   INTEGER PRIMARY KEY,
        op_id TEXT NOT NULL UNIQUE,
        body  TEXT NOT NULL
    );
    """,
}


def store_path(home: Path) -> Path:
    return Path(home) / STORE_FILENAME


def _map_sqlite_error(exc: sqlite3.Error, path: Path) -> CrmError:
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return StoreLockedError(
            f"the store {path} is locked by another process (waited {busy_timeout_ms() / 1000:g} s); "
            "try again when it has finished")
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return StoreCorruptError(
            f"the store {path} is damaged ({exc}); it was not changed. "
            "Run `crm doctor` or restore it from a backup")
    if "readonly" in text or "unable to open" in text or "disk i/o" in text:
        return StoreMissingError(f"cannot use the store {path}: {exc}")
    return StoreCorruptError(f"the store {path} could not be read: {exc}")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, path: Path, begin: str) -> Iterator[sqlite3.Connection]:
    """``begin`` ... COMMIT, rolled back on any exception, SQLite failures mapped to CrmErrors."""
    with sqlite_errors(path):
        conn.execute(begin)
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


@contextlib.contextmanager
def sqlite_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _map_sqlite_error(exc, path) from exc


def _connect(path: Path) -> sqlite3.Connection:
    timeout_ms = busy_timeout_ms()
    conn = sqlite3.connect(path, timeout=timeout_ms / 1000, isolation_level=None,
                           check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {timeout_ms}")
    return conn


def _configure(conn: sqlite3.Connection) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise StoreCorruptError(f"could not switch the store to WAL mode (got {mode})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")


class Store:
    """An open store. Use ``Store.open`` (existing) or ``Store.create`` (new)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, home: Path) -> Store:
        """Create a new store file (mode 0600) at ``home``; refuse if one exists."""
        home = Path(home)
        path = store_path(home)
        try:
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            raise StateError(f"a store already exists at {path}; it was not changed") from None
        except OSError as exc:
            raise StoreMissingError(f"cannot create the store at {path}: {exc.strerror}") from None
        os.close(fd)
        with sqlite_errors(path):
            conn = _connect(path)
            _configure(conn)
            store = cls(conn, path)
            store._migrate(from_version=0)
        return store

    @classmethod
    def open(cls, home: Path) -> Store:
        path = store_path(Path(home))
        if not path.is_file():
            raise StoreMissingError(
                f"no store at {path.parent}: run `crm init --rep NAME` first "
                "(or point --home / CRM_HOME at an existing one)")
        with sqlite_errors(path):
            conn = _connect(path)
            try:
                app_id = conn.execute("PRAGMA application_id").fetchone()[0]
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.Error:
                conn.close()
                raise
            if app_id != APPLICATION_ID:
                conn.close()
                raise StoreCorruptError(
                    f"{path} is not a crm store (application id {app_id:#x}); it was not changed")
            if version > SCHEMA_VERSION:
                conn.close()
                raise SchemaTooNewError(
                    f"the store {path} has schema version {version}, newer than this crm "
                    f"understands ({SCHEMA_VERSION}); upgrade crm to use it. It was not changed")
            _configure(conn)
            store = cls(conn, path)
            if version < SCHEMA_VERSION:
                store._migrate(from_version=version)
        return store

    def close(self) -> None:
        self.conn.close()

    def _migrate(self, *, from_version: int) -> None:
        with self.write():
            for version in range(from_version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
            self.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- transactions ------------------------------------------------------------------------
    def write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One atomic write transaction; BEGIN IMMEDIATE so concurrent writers queue, not deadlock."""
        return transaction(self.conn, self.path, "BEGIN IMMEDIATE")

    def read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A consistent snapshot for multi-statement reads."""
        return transaction(self.conn, self.path, "BEGIN")

    # -- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with sqlite_errors(self.path):
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                     "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

