"""The device's durable SQLite store: one file per home, WAL, synchronous=FULL, versioned schema.

Opening maps every SQLite failure to an error the user can act on (missing, locked, corrupt,
newer schema, disk full) and never creates, migrates or overwrites anything it cannot read.

Creating is atomic: the whole store (schema and meta rows) is built in a temporary file in the
home, fsynced, then renamed into place, so a store exists complete or not at all. A store left
unfinished by an older crm (empty, no schema, no meta rows) that holds no records and no queued
changes is replaced by ``crm init`` and cleared by ``crm doctor --repair``; a store holding any
record or outbox entry is never thrown away.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from . import search
from .errors import (
    CrmError,
    DiskFullError,
    SchemaTooNewError,
    StateError,
    StoreCorruptError,
    StoreLockedError,
    StoreMissingError,
    StoreReadOnlyError,
    UsageError,
)

SCHEMA_VERSION = 5
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
    # The search index: derived from records, local to this store, rebuilt by the migration
    # (crm/search.py).
    3: search.SCHEMA,
    # Kept ops packed (issue 16, bench/bench_footprint.py): the op id as its 16 bytes, the wire
    # JSON deflated against a fixed dictionary (pack_op): 460 bytes an account's create down to
    # about 220, the row and its op id index together. A push keeps an op as text (a BLOB is
    # packed, TEXT is not); `Device.pack_kept` packs them after the push, off its round trips.
    4: """
    CREATE TABLE sent_packed (
        seq    INTEGER PRIMARY KEY,
        op_key BLOB NOT NULL UNIQUE,      -- op_key(op id)
        body   BLOB NOT NULL              -- pack_op(wire JSON)
    );
    INSERT INTO sent_packed (seq, op_key, body) SELECT seq, crm_op_key(op_id), body FROM sent;
    DROP TABLE sent;
    ALTER TABLE sent_packed RENAME TO sent;
    """,
    # A kept op's packed body starts with its form (issue 16): 0x00 the wire JSON deflated as in
    # schema 4, 0x01 a reference to the record it created (``pack_ref``: a create this device made,
    # the record unchanged since, so its row gives the op back; written out before the record
    # changes, ``Device._unref``). Schema-4 bodies are all of the first form.
    5: """
    UPDATE sent SET body = CAST(X'00' || body AS BLOB) WHERE typeof(body) = 'blob';
    """,
}

# The dictionary kept ops are deflated against: the keys and common values of an op's wire JSON.
# Never change it: packed ops must stay readable (a new dictionary needs a new schema version).
_OP_DICT = (b'"base":{},"dev":"","entity":"account","fields":{"account":"","address":"","city":"",'
            b'"email":"","name":"","owner":"","phone":"","postcode":"","external_ref":"","role":"",'
            b'"duration_min":,"lat":,"lon":,"notes":"","outcome":"","rep":"","text":"","visit":"",'
            b'"order":"","at":"T00:00:00Z"},"hlc":".00000@","id":"","kind":"update","kind":"create","op":"')


def op_key(op_id: str) -> bytes | str:
    """How a kept op's id is stored and looked up: a UUID (canonical text) as its 16 bytes, anything
    else as is. No regex: compiling one costs every command's start-up."""
    if len(op_id) == 36 and op_id[8] + op_id[13] + op_id[18] + op_id[23] == "----":
        digits = op_id.replace("-", "")
        try:
            raw = bytes.fromhex(digits)
        except ValueError:
            return op_id
        if len(raw) == 16 and raw.hex() == digits:
            return raw
    return op_id


def pack_op(body: str) -> bytes:
    import zlib  # loaded when ops are packed or read back, not by every command

    deflate = zlib.compressobj(6, zlib.DEFLATED, -11, 4, zlib.Z_DEFAULT_STRATEGY, _OP_DICT)
    return PACKED + deflate.compress(body.encode()) + deflate.flush()


PACKED, REFERENCE = b"\x00", b"\x01"  # the first byte of a packed kept op: its form (schema 5)


def unpack_op(packed: bytes) -> str:
    """The wire JSON of a kept op packed by ``pack_op`` (not of a reference: ``read_ref``)."""
    import zlib

    if packed[:1] != PACKED:
        raise ValueError("not a packed op")
    inflate = zlib.decompressobj(-11, _OP_DICT)
    return (inflate.decompress(packed[1:]) + inflate.flush()).decode()


def pack_ref(entity: str, rid: str) -> bytes | None:
    """A kept create stored as the record it made: the form byte, the entity's code (the search
    index's, never renumbered) and the record id's 16 bytes; None when the id is not a UUID."""
    key = op_key(rid)
    code = search.ENTITY_CODE.get(entity)
    return REFERENCE + bytes([code]) + key if isinstance(key, bytes) and code is not None else None


def read_ref(packed: bytes) -> tuple[str, str] | None:
    """(entity, record id) of a reference made by ``pack_ref``; None for any other body."""
    if len(packed) != 18 or packed[:1] != REFERENCE:
        return None
    entity = next((name for name, code in search.ENTITY_CODE.items() if code == packed[1]), None)
    return (entity, op_id_of(packed[2:])) if entity else None


def op_id_of(key: bytes | str) -> str:
    """The op id a kept op's ``op_key`` stands for."""
    if isinstance(key, str):
        return key
    digits = key.hex()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


class MetaKey:
    """The keys of the ``meta`` rows, named once: the device, sync, the doctor and ``init`` all
    read and write these rows, and a misspelt key would read as "never set"."""

    DEVICE_ID = "device_id"
    REP = "rep"
    CLOCK = "hlc"  # the hybrid logical clock's state, "wall_ms.counter"
    SERVER_TIME = "server_time"  # the server's clock as last learnt (hlc.ServerTime)
    SERVER_URL = "server_url"
    TOKEN = "token"
    AUTOSYNC = "autosync"  # "1": background sync is on, and reopening the app restarts it
    PULL_CURSOR = "pull_cursor"
    # "<cursor> <ENTITY:ID>": the pull stopped inside the snapshot of the move at that cursor, after
    # that row (docs/sync-protocol.md, "Territories"); "" or another cursor: at an entry boundary
    PULL_PART = "pull_part"
    WITNESS = "witness"  # continuity: a log entry this device saw (docs/sync-protocol.md)
    KNOWN = "known"  # continuity: this device's latest op the log holds ("" none)
    RESEND_FROM = "resend_from"  # position in the kept ops to send again from ("" none)
    PACKED_TO = "packed_to"  # every kept op up to this position is packed (Device.pack_kept)
    KEPT_REFS = "kept_refs"  # set once a kept op is stored as a reference to its record (Device.pack_kept)
    FIRST_PUSH_AT = "first_push_at"
    LAST_SYNC = "last_sync"
    LAST_SYNC_ERROR = "last_sync_error"
    LAST_SYNC_REJECTED = "last_sync_rejected"
    # "<since> <error kind>": syncs have failed since that time (UTC ISO), the latest with that
    # kind; "" once one succeeds or after `crm login` (writes warn: Device.sync_warning)
    SYNC_FAILING = "sync_failing"
    SEARCH_FOLD = "search_fold"  # the folding the search index was built with (crm/search.py)
    # "1": records new to the device were left out of the search index by a bulk pull page;
    # search.catch_up indexes them before the next lookup (Device.catch_up_index)
    SEARCH_BEHIND = "search_behind"
    # Territories (docs/sync-protocol.md): the scope epoch this device holds, its rep's default
    # territory, records kept out of scope only for their unsynced work, and a pull from 0 after
    # a scope change (own ops included) still running.
    SCOPE_EPOCH = "scope_epoch"
    DEFAULT_TERRITORY = "default_territory"
    SCOPE_ORPHANS = "scope_orphans"
    SCOPE_REFILL = "scope_refill"


TEMP_PREFIX = ".crm-init-"  # a store being built by `crm init`; a leftover one is removed by the next
# the longest name crm makes in a home: a temp store's rollback journal
_LONGEST_NAME = len(TEMP_PREFIX) + 8 + len(".sqlite3-journal")
_SIDE_FILES = ("-wal", "-shm", "-journal")
LOW_SPACE_BYTES = 256 << 10  # an I/O error with less free space than this is taken for a full disk


def store_path(home: Path) -> Path:
    return Path(home) / STORE_FILENAME


def _shown(path: object) -> str:
    text = str(path)
    return text if len(text) <= 300 else f"{text[:120]}...{text[-40:]} ({len(text)} characters)"


def check_home(home: Path) -> Path:
    """The home, or a usage error (exit 2) when no store could ever live there: a path too long
    for the system, or a path that is not (and cannot become) a directory."""
    home = Path(home)
    try:
        name_max = os.pathconf("/", "PC_NAME_MAX")
        path_max = os.pathconf("/", "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in home.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise UsageError(f"--home / CRM_HOME {_shown(home)}: a directory name in it is {size} bytes long; "
                             f"names can be at most {name_max} bytes")
    size = len(os.fsencode(os.path.abspath(home)))
    if size + 1 + _LONGEST_NAME >= path_max:
        raise UsageError(f"--home / CRM_HOME {_shown(home)}: the path is too long ({size} bytes; the "
                         f"store's files need it under {path_max - 1 - _LONGEST_NAME})")
    try:
        mode = os.stat(home).st_mode
    except FileNotFoundError:
        return home  # `crm init` creates it
    except NotADirectoryError:
        raise UsageError(f"--home / CRM_HOME {_shown(home)}: a part of the path is a file, not a directory; "
                         "give a directory") from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise UsageError(f"--home / CRM_HOME {_shown(home)}: the path is too long") from None
        return home  # e.g. no permission: opening the store says so
    if not stat.S_ISDIR(mode):
        kind = "a regular file" if stat.S_ISREG(mode) else "a device" if stat.S_ISCHR(mode) or \
            stat.S_ISBLK(mode) else "not a directory"
        raise UsageError(f"--home / CRM_HOME {_shown(home)} is {kind}, not a directory; give the directory "
                         "that holds (or will hold) the store")
    return home


def no_space_left(directory: Path) -> bool:
    """Whether the file system holding ``directory`` has (next to) no space or no free inode left:
    either way SQLite can neither grow the store nor create the files beside it."""
    try:
        fs = os.statvfs(directory)
    except OSError:
        return False
    root = os.geteuid() == 0
    free, inodes = (fs.f_bfree, fs.f_ffree) if root else (fs.f_bavail, fs.f_favail)
    return free * fs.f_frsize < LOW_SPACE_BYTES or (fs.f_files > 0 and inodes == 0)


def is_disk_full(exc: sqlite3.Error, path: Path) -> bool:
    """Whether SQLite failed for want of space: SQLITE_FULL, or an I/O error (growing the WAL or
    its shared-memory file) or a file it could not create (the WAL, with no inode left) on a file
    system with no space left."""
    code = getattr(exc, "sqlite_errorcode", None)
    text = str(exc).lower()
    if code == sqlite3.SQLITE_FULL or "database or disk is full" in text:
        return True
    io_error = (code is not None and code & 0xFF == sqlite3.SQLITE_IOERR) or "disk i/o error" in text
    cannot_open = (code is not None and code & 0xFF == sqlite3.SQLITE_CANTOPEN) or "unable to open" in text
    return (io_error or cannot_open) and no_space_left(Path(path).parent)


def os_error(exc: OSError, path: Path, doing: str) -> CrmError:
    """A CrmError for a failed file operation on the store: disk full (12), else unusable (5)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError.at(Path(path).parent, exc.strerror)
    return StoreMissingError(f"cannot {doing} {path}: {exc.strerror}")


_READONLY_DBMOVED = 1032  # SQLITE_READONLY_DBMOVED: the file was replaced while open (a restore)


def _map_sqlite_error(exc: sqlite3.Error, path: Path) -> CrmError:
    text = str(exc).lower()
    if is_disk_full(exc, path):
        return DiskFullError.at(Path(path).parent, exc)
    if "locked" in text or "busy" in text:
        return StoreLockedError(
            f"the store {path} is locked by another process (waited {busy_timeout_ms() / 1000:g} s); "
            "try again when it has finished")
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return StoreCorruptError(
            f"the store {path} is damaged ({exc}); it was not changed. "
            "Run `crm doctor` or restore it from a backup")
    if "readonly" in text and getattr(exc, "sqlite_errorcode", None) != _READONLY_DBMOVED:
        return StoreReadOnlyError(_read_only_words(path, exc))  # the file or its home is not writable
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
            # SQLite may have rolled back already (a full disk does): never let that hide the cause
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


@contextlib.contextmanager
def sqlite_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _map_sqlite_error(exc, path) from exc


def _read_only_words(path: Path, why: object = "it is on a read-only file system") -> str:
    return (f"the store {path} cannot be changed ({why}): nothing was changed. crm can still read "
            "it (ls, show, search, export); to change it, remount its file system read-write, or copy "
            "the home to a writable place and point --home at the copy")


def _read_only_home(home: Path) -> bool:
    """Whether ``home`` is on a file system mounted read-only, or a directory this process cannot
    write: SQLite could not create the files beside a WAL store that it is read through."""
    try:
        if os.statvfs(home).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        return False
    return not os.access(home, os.W_OK | os.X_OK)


def _wal_holds_changes(path: Path) -> bool:
    wal = Path(f"{path}-wal")
    return wal.is_file() and wal.stat().st_size > 0


def _connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    timeout_ms = busy_timeout_ms()
    target: Path | str = path
    if read_only:  # read as it is: immutable (nothing opened beside it) unless a WAL holds changes
        from urllib.parse import quote

        target = f"file:{quote(str(path))}?{'mode=ro' if _wal_holds_changes(path) else 'immutable=1'}"
    conn = sqlite3.connect(target, timeout=timeout_ms / 1000, isolation_level=None,
                           check_same_thread=False, uri=read_only)
    conn.execute(f"PRAGMA busy_timeout = {timeout_ms}")
    # A statement's undo pages in memory, not in a file in SQLITE_TMPDIR or /var/tmp: a full
    # temporary directory must not refuse a write (or a sync) whose store has room.
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.create_function("crm_op_key", 1, op_key, deterministic=True)
    conn.create_function("crm_pack_op", 1, pack_op, deterministic=True)
    return conn


def _configure(conn: sqlite3.Connection) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise StoreCorruptError(f"could not switch the store to WAL mode (got {mode})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")


class Store:
    """An open store. Use ``Store.open`` (existing) or ``Store.create`` (new)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, read_only: bool = False,
                 full: str | None = None) -> None:
        self.conn = conn
        self.path = path
        # Opened as it is, ``write`` refusing: its home is on a read-only file system, or (``full``:
        # what SQLite said) its disk had no room to create the files beside the store.
        self.read_only = read_only or full is not None
        self.full = full
        self.replaced: str | None = None  # set by ``create``: why an unfinished store was replaced

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, home: Path, meta: dict[str, str]) -> Store:
        """Create the store at ``home`` holding ``meta`` (device id, rep, clock, settings), atomically.

        Refuses when a store exists (exit 10) or one holding records or queued changes is damaged
        (exit 7); replaces an unfinished one that holds nothing (``Store.replaced`` says why).
        """
        home = check_home(home)
        path = store_path(home)
        _make_home(home)
        with _home_locked(home) as dir_fd:
            _remove_temps(home)
            found = survey(home)
            if found.state == "complete":
                raise StateError(f"a store already exists at {path}; it was not changed")
            if found.state == "damaged":
                raise StoreCorruptError(
                    f"the store {path} is damaged ({found.reason}) and holds records or queued changes, "
                    "so `crm init` leaves it exactly as it is. Run `crm doctor`; restore crm.sqlite3 from a "
                    "backup, keeping the damaged file (changes not yet synced exist only in it)")
            temp = _build(home, meta)
            try:
                for suffix in _SIDE_FILES:  # an old journal must never be replayed into the new store
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
                os.replace(temp, path)
                os.fsync(dir_fd)
            except OSError as exc:
                raise os_error(exc, path, "create the store at") from None
            finally:
                temp.unlink(missing_ok=True)
        store = cls.open(home)
        store.replaced = found.reason if found.state == "unfinished" else None
        return store

    @classmethod
    def open(cls, home: Path) -> Store:
        path = store_path(check_home(home))
        try:
            size = path.stat().st_size if path.is_file() else None
        except OSError as exc:
            raise os_error(exc, path, "use the store") from None
        if size is None:
            raise StoreMissingError(
                f"no store at {path.parent}: run `crm init --rep NAME` first "
                "(or point --home / CRM_HOME at an existing one)")
        if size == 0:
            raise StoreCorruptError(
                f"the store {path} is empty (0 bytes), probably left by an interrupted `crm init`; it holds "
                "nothing, so `crm init --rep NAME` creates it again (`crm doctor --repair` clears it). If "
                "this device had data, restore crm.sqlite3 from a backup instead")
        read_only = _read_only_home(path.parent)
        full: str | None = None  # no room to create the files beside the store: read it as it is
        with sqlite_errors(path):
            while True:
                conn = _connect(path, read_only=read_only or full is not None)
                try:
                    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
                    version = conn.execute("PRAGMA user_version").fetchone()[0]
                    unfinished = app_id == 0 and version == 0 and not _tables(conn)
                    break
                except sqlite3.Error as exc:
                    conn.close()
                    if read_only:  # a write-ahead log on a read-only file system, without its index file
                        raise StoreReadOnlyError(
                            f"the store {path} is on a read-only file system and its latest changes are in "
                            f"{path.name}-wal, which SQLite cannot read there ({exc}); nothing was changed. "
                            "Copy the home, with every crm.sqlite3* file, to a writable place and point "
                            "--home at the copy") from None
                    if full is None and is_disk_full(exc, path) and not _wal_holds_changes(path):
                        full = str(exc)  # a write is refused as on any full disk (exit 12)
                        continue
                    raise
            if unfinished:
                conn.close()
                raise StoreCorruptError(
                    f"the store {path} was never finished (an interrupted `crm init`): it has no schema and "
                    "holds nothing, so `crm init --rep NAME` creates it again (`crm doctor --repair` clears it)")
            if app_id != APPLICATION_ID:
                conn.close()
                raise StoreCorruptError(
                    f"{path} is not a crm store (application id {app_id:#x}); it was not changed")
            if version > SCHEMA_VERSION:
                conn.close()
                raise SchemaTooNewError(
                    f"the store {path} has schema version {version}, newer than this crm "
                    f"understands ({SCHEMA_VERSION}); upgrade crm to use it. It was not changed")
            if read_only or full is not None:
                if version < SCHEMA_VERSION:
                    conn.close()
                    if full is not None:
                        raise DiskFullError.at(path.parent, full)
                    raise StoreReadOnlyError(_read_only_words(
                        path, f"it is on a read-only file system, and this crm reads it only after upgrading it "
                              f"from schema version {version} to {SCHEMA_VERSION}, which writes it"))
                return cls(conn, path, read_only=read_only, full=full)
            _configure(conn)
            store = cls(conn, path)
            if version < SCHEMA_VERSION:
                store._migrate(from_version=version)
        return store

    def close(self) -> None:
        self.conn.close()

    def _migrate(self, *, from_version: int) -> None:
        with self.write():
            _apply_migrations(self.conn, from_version)

    def holds_data(self) -> bool:
        """Whether any record or outbox entry is stored (such a store is never thrown away)."""
        with sqlite_errors(self.path):
            return _holds_data(self.conn, _tables(self.conn))

    # -- transactions ------------------------------------------------------------------------
    def write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One atomic write transaction; BEGIN IMMEDIATE so concurrent writers queue, not deadlock."""
        self.ensure_writable()
        return transaction(self.conn, self.path, "BEGIN IMMEDIATE")

    def ensure_writable(self) -> None:
        """StoreReadOnlyError when the store was opened read-only (its home cannot be written);
        DiskFullError when it was for want of room on its disk."""
        if self.full is not None:
            raise DiskFullError.at(self.path.parent, self.full)
        if self.read_only:
            raise StoreReadOnlyError(_read_only_words(self.path))

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



def _apply_migrations(conn: sqlite3.Connection, from_version: int) -> None:
    for version in range(from_version + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS[version].split(";"):
            if statement.strip():
                conn.execute(statement)
        if version == 3:
            search.rebuild(conn)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         (MetaKey.SEARCH_FOLD, search.FOLD_VERSION))
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


# -- the meta rows ------------------------------------------------------------------------------
_CLOCK = re.compile(r"[0-9]{1,13}\.[0-9]{1,5}", re.ASCII)


def meta_problem(meta: dict[str, object]) -> str | None:
    """What is wrong with a store's meta rows (device id, rep, clock), or None when they are usable."""
    if not meta:
        return "its meta rows (device id, rep, clock) are missing"
    missing = [name for key, name in ((MetaKey.DEVICE_ID, "device id"), (MetaKey.REP, "rep"),
                                      (MetaKey.CLOCK, "clock")) if key not in meta]
    if missing:
        return f"the {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing from its meta rows"
    for key, value in meta.items():
        if not isinstance(value, str):
            return f"its meta value {key!r} is not text ({type(value).__name__})"
    device_id = meta[MetaKey.DEVICE_ID]
    if not device_id.strip() or len(device_id) > 64 or "@" in device_id or not device_id.isprintable():
        return f"its device id {device_id[:40]!r} is not a device id"
    if not meta[MetaKey.REP].strip():
        return "its rep is empty"
    if not _CLOCK.fullmatch(meta[MetaKey.CLOCK]):
        return f"its clock {meta[MetaKey.CLOCK][:40]!r} cannot be read"
    return None


def meta_error(path: Path, problem: str, holds_data: bool) -> StoreCorruptError:
    """The error (exit 7) for unusable meta rows, saying whether `crm init` may recreate the store."""
    if not holds_data:
        return StoreCorruptError(
            f"the store {path} is unfinished or damaged: {problem}. It holds no records and no queued "
            "changes, so nothing is lost: `crm init --rep NAME` creates it again (`crm doctor --repair` "
            "clears it)")
    return StoreCorruptError(
        f"the store {path} is damaged: {problem}; it was not changed. Run `crm doctor`; restore crm.sqlite3 "
        "from a backup, keeping the damaged file (changes not yet synced exist only in it)")


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _holds_data(conn: sqlite3.Connection, tables: set[str]) -> bool:
    return any(conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]
               for table in ("records", "outbox") if table in tables)


# -- what is at a home, and making a new store ----------------------------------------------------
class Found(NamedTuple):  # not a dataclass: @dataclass costs start-up
    """What a home's store path holds: ``absent``, ``complete``, ``unfinished`` (not usable and
    holding nothing: safe to replace) or ``damaged`` (not usable, holding records or queued changes)."""

    state: str
    reason: str = ""


def survey(home: Path) -> Found:
    """Look at the store at ``home`` without changing its data. Raises for a file that is not ours
    (exit 7), a newer schema (8) or one SQLite cannot read (7): none of those may be replaced."""
    path = store_path(home)
    try:
        info = path.stat()
    except FileNotFoundError:
        return Found("absent")
    except OSError as exc:
        raise os_error(exc, path, "use the store") from None
    if not stat.S_ISREG(info.st_mode):
        raise StoreCorruptError(f"{path} is not a file; it was not changed")
    if info.st_size == 0:
        return Found("unfinished", "the file is empty")
    with sqlite_errors(path):
        conn = _connect(path)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = _tables(conn)
            if app_id == 0 and version == 0 and not tables:
                return Found("unfinished", "it has no schema")
            if app_id != APPLICATION_ID:
                raise StoreCorruptError(f"{path} is not a crm store (application id {app_id:#x}); it was not "
                                        "changed")
            if version > SCHEMA_VERSION:
                raise SchemaTooNewError(f"the store {path} has schema version {version}, newer than this crm "
                                        f"understands ({SCHEMA_VERSION}); it was not changed")
            holds = _holds_data(conn, tables)
            if "meta" in tables:
                problem = meta_problem(dict(conn.execute("SELECT key, value FROM meta").fetchall()))
            else:
                problem = "it has no meta table"
        finally:
            conn.close()
    if problem is None:
        return Found("complete")
    return Found("damaged" if holds else "unfinished", problem)


def clear_unfinished(home: Path) -> list[str]:
    """Remove what an interrupted `crm init` left: an unfinished store that holds nothing, the side
    files of a store that is not there, temporary stores. What was removed, one line each."""
    home = check_home(home)
    if not home.is_dir():
        return []
    done: list[str] = []
    path = store_path(home)
    with _home_locked(home) as dir_fd:
        done += [f"removed {name}, a store an interrupted `crm init` left half-built" for name in _remove_temps(home)]
        try:
            found = survey(home)
        except CrmError:  # not ours to clear (damaged, foreign, newer): `crm doctor` says what it is
            return done
        if found.state == "complete" or found.state == "damaged":
            return done
        try:
            if found.state == "unfinished":
                path.unlink()
                done.append(f"removed the unfinished {path.name} ({found.reason}; it held nothing)")
            for suffix in _SIDE_FILES:
                side = Path(f"{path}{suffix}")
                if side.exists():
                    side.unlink()
                    done.append(f"removed {side.name}, " + ("a side file of that store" if found.state == "unfinished"
                                                            else "left beside a store that is not there"))
            os.fsync(dir_fd)
        except OSError as exc:
            raise os_error(exc, path, "remove") from None
    return done


def _make_home(home: Path) -> None:
    """Create the home and any missing parent, each 0700."""
    missing = []
    directory = Path(os.path.abspath(home))
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # made by someone else meanwhile
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError.at(directory.parent, exc.strerror) from None
            raise StoreMissingError(f"cannot create the home {directory}: {exc.strerror}") from None
        os.chmod(directory, 0o700)  # exactly, whatever the umask


@contextlib.contextmanager
def _home_locked(home: Path) -> Iterator[int]:
    """An exclusive lock on the home directory for as long as a store is being made or cleared there,
    so two `crm init`s cannot both decide to create it; yields the directory's descriptor."""
    try:
        fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise os_error(exc, home, "use the home") from None
    try:
        with contextlib.suppress(OSError):  # a file system without flock: make the store unlocked
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _remove_temps(home: Path) -> list[str]:
    """Remove temporary stores of killed `crm init`s (called under the home lock: none is live)."""
    removed = []
    for leftover in sorted(Path(home).glob(TEMP_PREFIX + "*")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
            removed.append(leftover.name)
    return removed


def _build(home: Path, meta: dict[str, str]) -> Path:
    """A complete store (schema, meta rows, WAL mode) in a temporary file in ``home``, fsynced."""
    import tempfile  # only init needs it: not every command's start-up

    try:
        fd, name = tempfile.mkstemp(dir=home, prefix=TEMP_PREFIX, suffix=".sqlite3")
    except OSError as exc:
        raise os_error(exc, store_path(home), "create the store at") from None
    temp = Path(name)
    try:
        os.fchmod(fd, 0o600)
        with sqlite_errors(temp):
            conn = _connect(temp)
            try:
                conn.execute("PRAGMA synchronous = FULL")
                with transaction(conn, temp, "BEGIN IMMEDIATE"):
                    _apply_migrations(conn, 0)
                    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(meta.items()))
                conn.execute("VACUUM")  # no free pages left by the migrations (one replaces a table)
                _configure(conn)
            finally:
                conn.close()
        os.fsync(fd)
    except BaseException as exc:
        for leftover in (temp, *(Path(f"{temp}{suffix}") for suffix in _SIDE_FILES)):
            leftover.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise os_error(exc, store_path(home), "create the store at") from None
        raise
    finally:
        os.close(fd)
    return temp
