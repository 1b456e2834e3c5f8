"""`crm doctor`: check a device's store without changing it, say what is wrong and how to recover.

``diagnose`` never writes: the file is opened through SQLite's read-only URI (``immutable=1``, or
``mode=ro`` while a non-empty write-ahead log is beside it), nothing is migrated, and a file SQLite
cannot read is only looked at as bytes. The checks, in order (a failing early one stops the rest,
which could not be trusted):

* file: present, an SQLite file, not cut short (its header says how many pages it has);
* integrity: ``PRAGMA integrity_check``; application id (a crm store); schema version;
* consistency: the meta rows (device id, rep, clock), records hold JSON, every outbox entry holds a
  readable op of an existing record, local changes that never left the device are all queued, and
  the clock is not behind a queued op;
* space: the disk holding the store has room for a write.

Each failure maps to the exit code of its kind (docs/exit-codes.md): 5 no store, 7 damaged,
8 newer schema, 11 inconsistent, 12 disk full.

``repair`` (``crm doctor --repair``) writes only to clear what an interrupted ``crm init`` left: an
unfinished store that holds no records and no queued changes, the side files of a store that is not
there, temporary stores. A store holding any record or queued change is never changed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import (
    CrmError,
    DiskFullError,
    SchemaTooNewError,
    StoreCorruptError,
    StoreInconsistentError,
    StoreMissingError,
)
from .hlc import ClockError, parse_stamp
from .ops import OpFormatError, op_from_json
from .records import record_from_row
from .store import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    MetaKey,
    check_home,
    clear_unfinished,
    is_disk_full,
    meta_problem,
    no_space_left,
    store_path,
)

SQLITE_MAGIC = b"SQLite format 3\x00"
RESTORE = ("the file was left exactly as it is. Restore crm.sqlite3 from a backup and keep the damaged "
           "file for diagnosis; changes not yet synced exist only in it")
UNFINISHED = ("it holds no records and no queued changes, so nothing is lost: `crm init --rep NAME` creates the "
              "store again (or `crm doctor --repair` clears it first)")
FREE_SPACE = ("free space on that disk; nothing was lost: the store is unchanged, and crm works again once "
              "there is room")
_SEVERITY = {StoreMissingError: 5, StoreCorruptError: 4, DiskFullError: 3, SchemaTooNewError: 2,
             StoreInconsistentError: 1}


@dataclass
class Finding:
    check: str
    ok: bool
    message: str
    recovery: str | None = None
    error: type[CrmError] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"check": self.check, "ok": self.ok, "message": self.message}
        if self.recovery:
            out["recovery"] = self.recovery
        return out


@dataclass
class Report:
    path: Path
    findings: list[Finding] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(f.ok for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {"store": str(self.path), "healthy": self.healthy, "checks": [f.to_json() for f in self.findings]}

    def error(self) -> CrmError | None:
        """The error whose exit code says the worst kind of problem found; None when healthy."""
        bad = [f for f in self.findings if not f.ok]
        if not bad:
            return None
        worst = max((f.error or StoreInconsistentError for f in bad), key=lambda kind: _SEVERITY[kind])
        summary = "; ".join(f"{f.check}: {f.message}" for f in bad)
        return worst(f"crm doctor found {len(bad)} problem(s) in {self.path}: {summary[:600]}",
                     details=self.to_json())

    def _ok(self, check: str, message: str) -> None:
        self.findings.append(Finding(check, True, message))

    def _bad(self, check: str, message: str, recovery: str, error: type[CrmError] = StoreInconsistentError) -> None:
        self.findings.append(Finding(check, False, message, recovery, error))


def repair(home: Path) -> list[str]:
    """Clear what an interrupted `crm init` left (never a store holding records or queued changes);
    what was removed, one line each."""
    return clear_unfinished(home)


def diagnose(home: Path) -> Report:
    """Check the store at ``home``; the report lists every check made and what it found."""
    path = store_path(check_home(Path(home)))
    report = Report(path)
    if _file_ok(path, report):
        _read(path, report)
    if path.parent.is_dir() and no_space_left(path.parent) and \
            not any(f.error is DiskFullError for f in report.findings):
        report._bad("space", f"the disk holding {path.parent} is full: free space; nothing was lost", FREE_SPACE,
                    DiskFullError)
    return report


def _read(path: Path, report: Report) -> None:
    # With no write-ahead log beside it (or an empty one) the file is the whole store: open it
    # immutable, so SQLite does not even create the -wal and -shm files. With one, read it too
    # (read-only).
    wal = path.with_name(path.name + "-wal")
    live = wal.exists() and wal.stat().st_size > 0
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?{'mode=ro' if live else 'immutable=1'}", uri=True,
                               isolation_level=None)
    except sqlite3.Error as exc:
        _unreadable(path, report, "file", f"SQLite cannot open it: {exc}", exc)
        return
    try:
        conn.execute("PRAGMA temp_store = MEMORY")  # a full /var/tmp is no damage to report
        if _database_ok(conn, report):
            conn.execute("BEGIN")  # one snapshot for every consistency check
            _consistent(conn, report)
    except sqlite3.Error as exc:
        _unreadable(path, report, "integrity", f"SQLite could not read it: {exc}", exc)
    finally:
        conn.close()


def _unreadable(path: Path, report: Report, check: str, message: str, exc: sqlite3.Error) -> None:
    if is_disk_full(exc, path):  # not damage: SQLite needed room (for its shared-memory file) to read
        report._bad("space", f"the disk holding {path.parent} is full, so SQLite cannot read the store ({exc}): "
                             "free space; nothing was lost", FREE_SPACE, DiskFullError)
    else:
        report._bad(check, message, RESTORE, StoreCorruptError)


def _file_ok(path: Path, report: Report) -> bool:
    if not path.is_file():
        leftovers = [p.name for p in sorted(path.parent.glob(path.name + "-*"))] if path.parent.is_dir() else []
        report._bad("file", f"no store at {path}" + (f" (left beside it: {', '.join(leftovers)})" if leftovers else ""),
                    "run `crm init --rep NAME` for a new store (it clears what is left beside it), or point "
                    "--home / CRM_HOME at the existing one", StoreMissingError)
        return False
    try:
        with open(path, "rb") as fh:
            header = fh.read(100)
        size = path.stat().st_size
    except OSError as exc:
        report._bad("file", f"cannot read {path}: {exc.strerror}", "check the file's permissions",
                    StoreMissingError)
        return False
    if size == 0:
        report._bad("file", "the file is empty (0 bytes), as an interrupted `crm init` of an older crm leaves it",
                    "it holds nothing: `crm init --rep NAME` creates the store again (or `crm doctor --repair` "
                    "clears it first). If this device had data, restore crm.sqlite3 from a backup instead",
                    StoreCorruptError)
        return False
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        what = "cut short" if SQLITE_MAGIC.startswith(header[:16]) else "not an SQLite database"
        report._bad("file", f"the file is {what} ({size} bytes)", RESTORE, StoreCorruptError)
        return False
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    valid_count = header[24:28] == header[92:96]  # the header's page count is current (SQLite >= 3.7)
    if valid_count and pages and size < pages * page_size:
        report._bad("file", f"the file is cut short: {size // page_size} of its {pages} pages are there",
                    RESTORE, StoreCorruptError)
        return False
    report._ok("file", f"{size} bytes, {pages} pages of {page_size} bytes")
    return True


def _database_ok(conn: sqlite3.Connection, report: Report) -> bool:
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id == 0 and conn.execute("PRAGMA user_version").fetchone()[0] == 0 and \
            not conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        report._bad("schema", "no schema: the store was never finished (an interrupted `crm init` of an older crm)",
                    UNFINISHED, StoreCorruptError)
        return False
    if app_id != APPLICATION_ID:
        report._bad("application_id", f"not a crm store (application id {app_id:#x})",
                    "point --home / CRM_HOME at the directory holding this device's crm.sqlite3",
                    StoreCorruptError)
        return False
    report._ok("application_id", f"a crm store ({app_id:#x})")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        report._bad("schema", f"schema version {version} is newer than this crm understands ({SCHEMA_VERSION})",
                    "upgrade crm; this version leaves the store alone", SchemaTooNewError)
        return False
    if version < 1:
        report._bad("schema", "no schema: the store was never finished", RESTORE, StoreCorruptError)
        return False
    report._ok("schema", f"version {version}" + ("" if version == SCHEMA_VERSION else
                                                  f" (crm upgrades it to {SCHEMA_VERSION} on next use)"))
    problems = [row[0] for row in conn.execute("PRAGMA integrity_check(20)")]
    if problems != ["ok"]:
        report._bad("integrity", f"{len(problems)} problem(s), first: {problems[0]}", RESTORE, StoreCorruptError)
        return False
    report._ok("integrity", "PRAGMA integrity_check: ok")
    return True


def _consistent(conn: sqlite3.Connection, report: Report) -> None:
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    problem = meta_problem(meta)
    if problem:
        holds = conn.execute("SELECT EXISTS (SELECT 1 FROM records) OR EXISTS (SELECT 1 FROM outbox)").fetchone()[0]
        report._bad("meta", problem[0].upper() + problem[1:] + ("" if holds else
                    "; the store holds no records and no queued changes"),
                    RESTORE if holds else UNFINISHED, StoreCorruptError)
        return
    device_id = meta[MetaKey.DEVICE_ID]
    wall, counter = (int(part) for part in meta[MetaKey.CLOCK].split("."))
    report._ok("meta", f"device {device_id}, rep {meta[MetaKey.REP]!r}")

    unreadable = conn.execute("SELECT count(*) FROM records WHERE NOT json_valid(data) OR NOT json_valid(meta)"
                              ).fetchone()[0]
    if unreadable:
        report._bad("records", f"{unreadable} record(s) hold text that is not JSON", RESTORE)
    else:
        report._ok("records", f"{conn.execute('SELECT count(*) FROM records').fetchone()[0]} records readable")

    queued = _check_outbox(conn, report)
    if not _ever_pushed(meta):
        _check_unsynced(conn, report, device_id, queued)
    else:
        report._ok("unsynced", "skipped: this device has pushed before, so acknowledged changes have left "
                               "the outbox")
    newest = max(queued.values(), default=None)
    if newest is not None and newest > (wall, counter):
        report._bad("clock", f"the clock ({wall}.{counter}) is behind a queued change ({newest[0]}.{newest[1]}): "
                             "new changes could reuse its stamp and be taken for it",
                    "make no changes on this device before the device clock passes that time "
                    "(wall milliseconds since 1970), or restore crm.sqlite3 from a backup")
    else:
        report._ok("clock", f"{wall}.{counter}, not behind any queued change")


def _check_outbox(conn: sqlite3.Connection, report: Report) -> dict[str, tuple[int, int]]:
    """Check every outbox entry; return the queued stamps (hlc -> (wall, counter)) of readable ones."""
    queued: dict[str, tuple[int, int]] = {}
    broken, orphans = [], []
    rows = conn.execute("SELECT o.seq, o.op_id, o.entity, o.record_id, o.hlc, o.body, r.id IS NOT NULL "
                        "FROM outbox AS o LEFT JOIN records AS r ON r.entity = o.entity AND r.id = o.record_id "
                        "ORDER BY o.seq").fetchall()
    for seq, op_id, entity, rid, hlc, body, has_record in rows:
        try:
            op = op_from_json(body)
            stamp = parse_stamp(hlc)
        except (OpFormatError, ClockError, TypeError):
            broken.append(seq)
            continue
        if (op.op_id, op.entity, op.record_id, op.hlc) != (op_id, entity, rid, hlc):
            broken.append(seq)
            continue
        queued[hlc] = (stamp.wall_ms, stamp.counter)
        if not has_record:
            orphans.append(seq)
    if broken:
        report._bad("outbox", f"{len(broken)} queued change(s) cannot be read or do not match their entry "
                              f"(seq {', '.join(map(str, broken[:10]))})",
                    "these changes cannot be sent as they are; `crm sync` moves them to the rejected list "
                    "(`crm outbox --rejected`). Make the change again to queue it anew")
    if orphans:
        report._bad("outbox", f"{len(orphans)} queued change(s) belong to records missing from the store "
                              f"(seq {', '.join(map(str, orphans[:10]))})",
                    "the records were lost locally; sync (the server merges the queued changes and the "
                    "device pulls them back), or restore crm.sqlite3 from a backup")
    if not broken and not orphans:
        report._ok("outbox", f"{len(rows)} queued change(s), each a readable op of a record in the store")
    return queued


def _ever_pushed(meta: dict[str, str]) -> bool:
    """Whether an op may have left the outbox for good (acknowledged by a server)."""
    return any(meta.get(key) for key in (MetaKey.FIRST_PUSH_AT, MetaKey.LAST_SYNC, MetaKey.LAST_SYNC_ERROR,
                                         MetaKey.PULL_CURSOR))


def _check_unsynced(conn: sqlite3.Connection, report: Report, device_id: str,
                    queued: dict[str, tuple[int, int]]) -> None:
    """A device that never pushed still has every change it made queued: each stamp of its own
    in a record's merge metadata must be a queued op's stamp."""
    suffix = "@" + device_id
    missing: list[str] = []
    for entity, rid, data, meta in conn.execute("SELECT entity, id, data, meta FROM records "
                                                "WHERE json_valid(data) AND json_valid(meta)"):
        try:
            rec = record_from_row(entity, rid, data, meta)
        except (ValueError, TypeError, AttributeError):
            continue  # counted by the records check
        stamps = {fm.get("s") for fm in rec.meta.values()}
        stamps.update(leaf[0] for fm in rec.meta.values() for leaf in fm.get("c", ()))
        stamps.update(s for fm in rec.meta.values() for s in fm.get("x", ()))
        if any(isinstance(s, str) and s.endswith(suffix) and s not in queued for s in stamps):
            missing.append(f"{entity} {rid}")
    if missing:
        report._bad("unsynced", f"{len(missing)} record(s) changed on this device have changes that are not "
                                f"queued and so would never reach the server (first: {missing[0]})",
                    "edit those records again to queue their current values (or restore crm.sqlite3 "
                    "from a backup); until then the server will not have them")
    else:
        report._ok("unsynced", "every change made on this device is queued (it has never pushed)")
