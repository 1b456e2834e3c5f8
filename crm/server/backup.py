"""Backup and restore of a SQLite server's data, the consistent way: SQLite's online backup API
copies a transaction-consistent snapshot while the server keeps serving (a raw copy of a live
WAL database can be torn). PostgreSQL has pg_dump and pg_restore for the same.

A restore takes the log back in time; devices notice on their next sync and send again what
they hold that the backup lacks (docs/sync-protocol.md, "Continuity").
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from ..errors import StoreCorruptError, StoreMissingError, ValidationError
from .engine import SQLITE_FILENAME, is_postgres_url


def _data_file(target: str | Path) -> Path:
    if is_postgres_url(target):
        raise ValidationError("a PostgreSQL server is backed up with pg_dump and restored with pg_restore")
    return Path(target) / SQLITE_FILENAME


def _ops_in(conn: sqlite3.Connection, what: Path) -> int:
    try:
        return conn.execute("SELECT count(*) FROM ops").fetchone()[0]
    except sqlite3.Error as exc:
        raise StoreCorruptError(f"{what} is not crm server data ({exc}); nothing was changed") from None


def backup_sqlite(target: str | Path, to: Path) -> dict[str, Any]:
    """Write a consistent copy of the server's data to ``to`` (atomically: a temporary file, renamed)."""
    source = _data_file(target)
    if not source.is_file():
        raise StoreMissingError(f"no server data at {source.parent}")
    to = Path(to)
    partial = to.with_name(f".{to.name}.partial")
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
        dst = sqlite3.connect(partial)
        try:
            ops = _ops_in(src, source)
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            src.close()
            dst.close()
        os.chmod(partial, 0o600)
        os.replace(partial, to)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise StoreMissingError(f"cannot write the backup {to}: {exc.strerror}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return {"file": str(to), "ops": ops}


def restore_sqlite(target: str | Path, backup: Path) -> dict[str, Any]:
    """Replace the server's data with ``backup`` in one transaction (checked first: a file that is
    not server data changes nothing). Readers see the old data or the restored, never a mix."""
    destination = _data_file(target)
    backup = Path(backup)
    if not backup.is_file():
        raise StoreMissingError(f"no backup file at {backup}")
    src = sqlite3.connect(f"file:{backup}?mode=ro", uri=True, timeout=30)
    try:
        ops = _ops_in(src, backup)
        destination.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        dst = sqlite3.connect(destination, timeout=30)
        try:
            src.backup(dst)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise StoreCorruptError(f"cannot restore {backup}: {exc}") from None
    finally:
        src.close()
    from .store import ServerStore

    ServerStore.open(target).close()  # an older backup's schema is brought up to date now
    return {"file": str(backup), "ops": ops}
