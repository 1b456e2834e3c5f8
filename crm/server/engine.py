"""Where the sync server keeps its state: an embedded SQLite file or a PostgreSQL database.

The server store writes one SQL dialect that both engines accept (``?`` placeholders,
``INSERT ... ON CONFLICT``); this module hides the rest: how connections are held, how a write
transaction starts, what a consistent read is, and what a driver error means to the user.

Every write that appends to an organisation's op log holds that organisation's lock until it
commits: SQLite's single database write lock, or a PostgreSQL advisory transaction lock keyed by
the organisation. So log positions (``ops.seq``) of one organisation become visible in the
order they were allocated, and a pull reading ``seq > cursor`` never skips a late commit.

SQLite has one write lock for every organisation, and its busy handler polls with growing sleeps
(up to 100 ms), so a thread that commits and begins again at once can keep it from a thread that
is waiting. The server's write transactions therefore queue first for a first-come, first-served
lock in the process (``FairLock``): a push applied in short transactions lets every push that
arrived meanwhile take its turn between two of them. Then, for the other processes on the same
file (the workers of ``crm server serve --workers N``, an admin command), each takes an ``flock``
on a file beside the database (``WriteFileLock``): a process waiting there is woken by the kernel
the moment the holder lets go, where SQLite's busy handler would sleep.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import CrmError, StoreLockedError, StoreMissingError
from ..store import sqlite_errors, transaction

SQLITE_FILENAME = "server.sqlite3"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
POOL_SIZE = 16  # PostgreSQL connections per server process; more requests wait for a free one
IDLE_CHECK_S = 2.0  # a pooled connection idle longer than this is checked before use
LOCK_NAMESPACE = 0x43524D  # first key of our advisory locks, so they never meet another app's


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


class Database:
    """A connection source for one server database. ``read`` runs single statements,
    ``write(org)`` one serialised transaction, ``snapshot`` several reads that see one state."""

    dialect: str
    location: str  # for messages: a path, or the URL without its password

    def read(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def write(self, org: str | None = None) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def snapshot(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class FairLock:
    """A lock granted in the order it was asked for (threading.Lock promises no order). A caller
    that waits longer than ``timeout`` seconds gives up its turn with StoreLockedError (503)."""

    def __init__(self, *, timeout: float = 30.0) -> None:
        self._cond = threading.Condition()
        self._next = 0  # the ticket the next caller gets
        self._serving = 0  # the ticket that holds the lock
        self._abandoned: set[int] = set()  # tickets whose callers gave up waiting
        self.timeout = timeout

    @contextlib.contextmanager
    def held(self, what: str = "the lock") -> Iterator[None]:
        with self._cond:
            ticket = self._next
            self._next += 1
            if not self._cond.wait_for(lambda: self._serving == ticket, self.timeout):
                self._abandoned.add(ticket)
                raise StoreLockedError(f"{what} is busy: waited {self.timeout:g} s for other writes")
        try:
            yield
        finally:
            with self._cond:
                self._serving += 1
                while self._serving in self._abandoned:
                    self._abandoned.discard(self._serving)
                    self._serving += 1
                self._cond.notify_all()


class WriteFileLock:
    """The write lock between processes: ``flock`` on ``path``. One thread of a process asks for it
    at a time (FairLock is taken first), so one descriptor per process serves the uncontended
    case; it is opened again in a forked child, since a descriptor inherited across ``fork``
    shares the parent's lock.

    When another process holds it, a helper thread waits in a blocking ``flock`` on a descriptor of
    its own (the kernel wakes it the moment the lock is free; polling would let a busy process take
    the lock again and again before the waiter's next try), and hands the held descriptor over. The
    caller waits at most ``timeout`` seconds, as SQLite's busy timeout bounded the wait before:
    then StoreLockedError, and the helper lets go of the lock if it gets it later."""

    def __init__(self, path: Path, *, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None
        self._pid = 0

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise CrmError(f"cannot open the server's write lock {self.path}: {exc.strerror}") from None

    @contextlib.contextmanager
    def held(self, what: str = "the lock") -> Iterator[None]:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = self._open(), os.getpid()
        fd, own = self._fd, False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fd, own = self._wait(what), True
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            if own:
                os.close(fd)

    def _wait(self, what: str) -> int:
        """A descriptor holding the lock, taken by a helper thread within ``timeout``."""
        fd = self._open()
        taken = threading.Event()
        state = threading.Lock()
        abandoned = [False]

        def take() -> None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with state:
                if not abandoned[0]:
                    taken.set()
                    return
            fcntl.flock(fd, fcntl.LOCK_UN)  # the caller gave up meanwhile
            os.close(fd)

        threading.Thread(target=take, name="crm-write-lock", daemon=True).start()
        if not taken.wait(self.timeout):
            with state:
                if not taken.is_set():
                    abandoned[0] = True
                    raise StoreLockedError(f"{what} is busy: waited {self.timeout:g} s for another "
                                           "process's write")
        return fd

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and self._pid == os.getpid():
            os.close(fd)


class SqliteDatabase(Database):
    """One file under the data directory; a connection per thread; BEGIN IMMEDIATE serialises writes,
    which this process's threads take in turn (FairLock) and the processes on the file in the
    order the kernel wakes them (WriteFileLock)."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []  # every thread's, so close() closes them all
        self._opened_lock = threading.Lock()
        self._writers = FairLock()
        self._processes = WriteFileLock(path.with_name(path.name + ".write-lock"))

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            # A push's multi-row statements keep their undo pages (about 2 KB an op) in memory,
            # bounded by one statement, not in a file in SQLITE_TMPDIR or /var/tmp: a full
            # temporary directory must not refuse pushes (tests/test_disk_full.py).
            conn.execute("PRAGMA temp_store = MEMORY")
            self._local.conn = conn
            with self._opened_lock:
                self._opened.append(conn)
        return conn

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with sqlite_errors(self.path):
            yield self._conn()

    @contextlib.contextmanager
    def write(self, org: str | None = None) -> Iterator[sqlite3.Connection]:
        with self._writers.held(f"the server database {self.location}"), \
                self._processes.held(f"the server database {self.location}"), \
                self._transaction("BEGIN IMMEDIATE") as conn:
            yield conn

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        with self._transaction("BEGIN") as conn:  # a WAL read transaction sees one state
            yield conn

    def _transaction(self, begin: str) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return transaction(self._conn(), self.path, begin)

    def close(self) -> None:
        """Close the connections of every thread (a server's request threads included)."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()
        self._local = threading.local()
        self._processes.close()


@functools.lru_cache(maxsize=256)
def _pg_sql(sql: str) -> str:
    """Our ``?`` placeholders as psycopg's ``%s`` (a statement with parameters may hold no other
    ``?`` or ``%``)."""
    return sql.replace("?", "%s")


class PgConnection:
    """A psycopg connection that takes the store's SQL as written for SQLite."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if not params:  # no placeholders to translate: the statement goes as written
            return self.raw.execute(sql)
        return self.raw.execute(_pg_sql(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            with self.raw.cursor() as cur:
                cur.executemany(_pg_sql(sql), rows)


class PostgresDatabase(Database):
    """A PostgreSQL database shared by any number of server processes; a small connection pool
    per process. Nothing is kept in the process between requests, so processes are interchangeable."""

    dialect = "postgresql"

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE) -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreMissingError("PostgreSQL support needs psycopg 3: pip install 'psycopg[binary]'") from None
        self._psycopg = psycopg
        self.url = url
        self.location = _redacted(url)
        self._idle: list[tuple[Any, float]] = []  # (connection, when it was returned)
        self._open = 0
        self._size = pool_size
        self._cond = threading.Condition()

    # -- the pool ------------------------------------------------------------------------------
    def _connect(self) -> Any:
        return self._psycopg.connect(self.url, autocommit=True, connect_timeout=10,
                                     application_name="crm-server")

    @contextlib.contextmanager
    def _borrow(self) -> Iterator[PgConnection]:
        with self._cond:
            while not self._idle and self._open >= self._size:
                self._cond.wait()
            raw, idle_since = self._idle.pop() if self._idle else (None, 0.0)
            if raw is None:
                self._open += 1
        try:
            if raw is not None and time.monotonic() - idle_since > IDLE_CHECK_S and not self._alive(raw):
                raw.close()  # the database restarted or dropped it while it sat in the pool
            if raw is None or raw.closed or raw.broken:
                raw = self._connect()
            yield PgConnection(raw)
        except BaseException:
            if raw is not None and (raw.closed or raw.broken):
                raw = None  # a dead connection is dropped; the next borrower opens a fresh one
            raise
        finally:
            with self._cond:
                if raw is not None and not raw.closed:
                    self._idle.append((raw, time.monotonic()))
                else:
                    self._open -= 1
                self._cond.notify()

    def _alive(self, raw: Any) -> bool:
        try:
            raw.execute("SELECT 1")
        except self._psycopg.Error:
            return False
        return True

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        psycopg = self._psycopg
        try:
            yield
        except psycopg.errors.LockNotAvailable as exc:
            raise StoreLockedError(f"the server database {self.location} is busy: {exc}") from None
        except psycopg.OperationalError as exc:
            raise StoreMissingError(f"cannot use the server database {self.location}: "
                                    f"{str(exc).strip() or type(exc).__name__}") from None
        except psycopg.Error as exc:
            raise CrmError(f"the server database {self.location} refused a statement: "
                           f"{str(exc).strip() or type(exc).__name__}") from None

    # -- the interface -------------------------------------------------------------------------
    @contextlib.contextmanager
    def read(self) -> Iterator[PgConnection]:
        with self._errors(), self._borrow() as conn:
            yield conn

    @contextlib.contextmanager
    def write(self, org: str | None = None) -> Iterator[PgConnection]:
        """One transaction; with ``org``, holding that organisation's advisory lock until commit,
        taken before any log position is allocated (see the module docstring)."""
        with self._errors(), self._borrow() as conn, conn.raw.transaction():
            if org is not None:
                conn.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (LOCK_NAMESPACE, org))
            yield conn

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[PgConnection]:
        with self._errors(), self._borrow() as conn, conn.raw.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn

    @contextlib.contextmanager
    def schema_lock(self) -> Iterator[PgConnection]:
        """A transaction that one process at a time holds while creating or migrating the schema."""
        with self.write() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(?, 0)", (LOCK_NAMESPACE,))
            yield conn

    def close(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for raw, _ in idle:
            raw.close()


def _redacted(url: str) -> str:
    """The URL as safe to print: no password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


__all__ = ["Database", "PostgresDatabase", "SqliteDatabase", "is_postgres_url", "SQLITE_FILENAME"]
