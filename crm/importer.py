"""Bulk import of accounts and contacts from CSV or JSON lines.

Every row is validated before anything is written, so a bad file changes nothing (or, with
``skip_invalid``, only its good rows go in). Rows are written in atomic batches through the
device's ordinary write path, so each record arrives with its outbox op. Each row carries an
import key (its external ref, else a hash of its fields) kept in ``records.ikey``: re-running an
import, even one killed halfway, updates or skips what is already there instead of duplicating it.
A row with an external ref also finds a record that carries that ref but no key yet (added by
hand, or pulled from another device: keys are device-local) and takes it over.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import merge
from .device import Change, Device
from .domain import entity as entity_spec
from .domain import validate_create
from .errors import CrmError, ImportFileError, InterruptedError_, ValidationError
from .ids import new_id
from .merge import Record
from .ops import dumps
from .records import record_from_row

__all__ = ["IMPORTABLE", "ImportReport", "RowError", "import_file"]

IMPORTABLE = {"accounts": "account", "account": "account", "contacts": "contact", "contact": "contact"}
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass(frozen=True)
class RowError:
    line: int  # physical line in the file, counting the header as line 1
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason}


@dataclass
class ImportReport:
    entity: str
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    invalid: list[RowError] = field(default_factory=list)
    total_rows: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"entity": self.entity, "created": self.created, "updated": self.updated,
                "unchanged": self.unchanged, "invalid": [e.to_json() for e in self.invalid],
                "total_rows": self.total_rows}


@dataclass(frozen=True)
class _Row:
    line: int
    values: dict[str, Any]  # the record's normalized fields, as a create writes them
    given: tuple[str, ...]  # the fields the row speaks for: an update sets exactly these
    ikey: str


def import_file(device: Device, entity: str, path: Path, *, skip_invalid: bool = False,
                fmt: str | None = None, batch_size: int = 1000,
                progress: Callable[[int, int | None], None] | None = None) -> ImportReport:
    """Import ``path`` into ``device``; see the module docstring for the guarantees.

    Raises ImportFileError for an unreadable or malformed file, and for invalid rows unless
    ``skip_invalid``; InterruptedError_ on Ctrl-C, after which the committed batches stay.
    """
    name = IMPORTABLE.get((entity or "").strip().lower())
    if name is None:
        raise ImportFileError(f"cannot import {entity!r}: choose accounts or contacts")
    if batch_size < 1:
        raise ImportFileError("batch size must be at least 1")
    path = Path(path)
    fmt = _format(path, fmt)
    report = ImportReport(entity=name + "s")
    rows = _validate(device, name, path, fmt, report)
    if report.invalid and not skip_invalid:
        bad = len(report.invalid)
        raise ImportFileError(
            f"{path}: {bad} of {report.total_rows} rows are invalid (first: line "
            f"{report.invalid[0].line}: {report.invalid[0].reason}); nothing was imported. "
            "Fix them, or skip them with --skip-invalid",
            details=[e.to_json() for e in report.invalid])
    _write(device, name, rows, batch_size, report, progress)
    return report


# -- reading ---------------------------------------------------------------------------------
def _format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        chosen = {"csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl", "json": "jsonl"}.get(fmt.lower())
        if chosen is None:
            raise ImportFileError(f"unknown import format {fmt!r}: choose csv or jsonl")
        return chosen
    guessed = FORMATS.get(path.suffix.lower())
    if guessed is None:
        raise ImportFileError(f"cannot tell the format of {path} from its extension; "
                              "name it .csv or .jsonl, or give the format (csv or jsonl)")
    return guessed


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def _read_text(path: Path) -> str:
    """The file as text, refusing what is not UTF-8 text with the line where it goes wrong."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ImportFileError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise ImportFileError(f"{path} is a directory, not a file to import") from None
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ImportFileError(f"{path} is UTF-16 text; save it as UTF-8 and import it again")
    if not raw.strip():
        raise ImportFileError(f"{path} is empty: nothing to import")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ImportFileError(f"{path} line {_line_of(raw, nul)}: contains NUL bytes; "
                              "this is not a text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"{path} line {_line_of(raw, exc.start)}: not valid UTF-8 "
                              f"({exc.reason} at byte {exc.start}); save the file as UTF-8") from None


def _canonical(column: str) -> str:
    """``External Ref``, ``external-ref`` and ``external_ref`` all name the same field."""
    return column.strip().lower().replace("-", "_").replace(" ", "_")


def _csv_rows(path: Path, text: str, entity: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line, fields) per data row, or (line, reason) for a row of the wrong width."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    columns: tuple[str, ...] | None = None
    start = 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # a blank line
            if columns is None:
                columns = _header(path, entity, cells, line)
            elif len(cells) != len(columns):
                yield line, f"has {len(cells)} values but the header has {len(columns)} columns"
            else:
                yield line, dict(zip(columns, cells, strict=True))
    except csv.Error as exc:
        raise ImportFileError(f"{path} line {start}: malformed CSV ({exc})") from None
    if columns is None:
        raise ImportFileError(f"{path} is empty: nothing to import")


def _header(path: Path, entity: str, cells: list[str], line: int) -> tuple[str, ...]:
    spec = entity_spec(entity)
    columns = tuple(_canonical(c) for c in cells)
    unknown = [raw for raw, name in zip(cells, columns, strict=True) if name not in spec.field_names]
    if unknown:
        raise ImportFileError(
            f"{path} line {line}: unknown column(s) {', '.join(repr(u) for u in unknown)}; the first "
            f"line must be a header naming {entity} fields: {', '.join(spec.field_names)}",
            details={"unknown": unknown, "known": list(spec.field_names)})
    twice = sorted({name for name in columns if columns.count(name) > 1})
    if twice:
        raise ImportFileError(f"{path} line {line}: column(s) {', '.join(twice)} appear more than once")
    missing = [f.name for f in spec.fields if f.required and f.name not in columns]
    if missing:
        raise ImportFileError(f"{path} line {line}: the header lacks the required column(s) "
                              f"{', '.join(missing)}")
    return columns


def _jsonl_rows(text: str, entity: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    names = entity_spec(entity).field_names
    # split on \n only: str.splitlines would also break at U+2028, which is legal inside JSON text
    for line, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield line, f"not valid JSON: {exc.msg} at column {exc.colno}"
            continue
        except (ValueError, RecursionError) as exc:  # a 5,000-digit number; nesting past the stack
            yield line, f"not usable JSON: {'nested too deeply' if isinstance(exc, RecursionError) else exc}"
            continue
        if not isinstance(obj, dict):
            yield line, f"must be a JSON object with {entity} fields, not {type(obj).__name__}"
            continue
        fields = {_canonical(str(key)): value for key, value in obj.items()}
        unknown = sorted(key for key in obj if _canonical(str(key)) not in names)
        if unknown or len(fields) != len(obj):
            yield line, (f"unknown field(s) {', '.join(unknown)}; {entity} fields are {', '.join(names)}"
                         if unknown else "names a field twice")
            continue
        yield line, fields


# -- validating ------------------------------------------------------------------------------
class _Refs:
    """What contact rows need from the store: live accounts, and the accounts of known contacts."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.account_ids: set[str] = set()
        self.deleted_ids: set[str] = set()
        self.account_by_ref: dict[str, str] = {}
        for rid, ikey, deleted in conn.execute(
                "SELECT id, ikey, deleted FROM records WHERE entity = 'account'"):
            (self.deleted_ids if deleted else self.account_ids).add(rid)
            if ikey and ikey.startswith("ref:") and not deleted:
                self.account_by_ref[ikey[4:]] = rid
        self.contact_account: dict[str, str] = {}  # contact ref key -> its account
        for key, account in conn.execute(
                "SELECT coalesce(ikey, 'ref:' || json_extract(data, '$.external_ref')) AS key, "
                "json_extract(data, '$.account') FROM records WHERE entity = 'contact' "
                "AND key LIKE 'ref:%' ORDER BY ikey IS NULL, deleted, id"):
            self.contact_account.setdefault(key, account)  # the record an import would match

    def account(self, value: Any) -> Any:
        """An account id, or the external ref of an imported account, as the account's id."""
        if not isinstance(value, str) or not value.strip():
            return value  # validation says what is wrong with it
        text = value.strip()
        if text.lower() in self.account_ids:
            return text.lower()
        if text in self.account_by_ref:
            return self.account_by_ref[text]
        if text.lower() in self.deleted_ids:
            raise ValidationError(f"account: {text!r} was deleted")
        raise ValidationError(f"account: no account {text!r} in the store (give an account id, or "
                              "the external_ref of an imported account)")


def _import_key(values: dict[str, Any]) -> str:
    ref = values.get("external_ref")
    if ref:
        return "ref:" + ref
    return "hash:" + hashlib.sha256(dumps(values).encode()).hexdigest()


def _validate(device: Device, entity: str, path: Path, fmt: str, report: ImportReport) -> list[_Row]:
    text = _read_text(path)
    source = _csv_rows(path, text, entity) if fmt == "csv" else _jsonl_rows(text, entity)
    if entity == "contact":
        with device.snapshot() as conn:
            refs: _Refs | None = _Refs(conn)
    else:
        refs = None
    defaulted = "owner" if entity == "account" else None  # filled with the device's rep when empty
    rows: list[_Row] = []
    for line, fields in source:
        report.total_rows += 1
        if isinstance(fields, str):
            report.invalid.append(RowError(line, fields))
            continue
        try:
            if refs is not None and "account" in fields:
                fields["account"] = refs.account(fields["account"])
            given = tuple(name for name in fields
                          if not (name == defaulted and fields[name] in (None, "")))
            values = validate_create(entity, device.with_rep(entity, fields))
            ikey = _import_key(values)
            if refs is not None and ikey.startswith("ref:"):
                # a contact's account is fixed at creation; a re-import cannot move it
                owner = refs.contact_account.setdefault(ikey, values["account"])
                if owner != values["account"]:
                    raise ValidationError(f"account: contact {values['external_ref']!r} belongs to "
                                          f"account {owner}; a contact cannot move to another account")
        except ValidationError as exc:
            report.invalid.append(RowError(line, exc.message))
            continue
        rows.append(_Row(line, values, given, ikey))
    if report.total_rows == 0:
        raise ImportFileError(f"{path} has no rows to import")
    # the last row with a given external ref wins; the ones it supersedes change nothing
    last = {row.ikey: i for i, row in enumerate(rows) if row.ikey.startswith("ref:")}
    kept = [row for i, row in enumerate(rows) if last.get(row.ikey, i) == i]
    report.unchanged += len(rows) - len(kept)
    return kept


# -- writing ---------------------------------------------------------------------------------
def _write(device: Device, entity: str, rows: list[_Row], batch_size: int, report: ImportReport,
           progress: Callable[[int, int | None], None] | None) -> None:
    done = 0
    with device.snapshot() as conn:
        unkeyed = _unkeyed_refs(conn, entity)
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            with device.transaction() as conn:
                created, updated, unchanged = _write_batch(device, conn, entity, batch, unkeyed)
            report.created += created
            report.updated += updated
            report.unchanged += unchanged
            done += len(batch)
            if progress is not None:
                progress(done, len(rows))
    except KeyboardInterrupt:
        raise InterruptedError_(
            f"import interrupted: {done} of {len(rows)} rows were committed and stay; run the same "
            "import again to finish it (rows already in are not duplicated)",
            details=report.to_json()) from None
    except CrmError as exc:  # a lock held too long, a full disk: the same error, saying what stays
        committed = {"committed_rows": done, "committed_batches": done // batch_size, **report.to_json()}
        stays = (f"{done} of {len(rows)} rows ({done // batch_size} batch(es)) were committed and stay; run "
                 "the same import again to finish it (rows already in are not duplicated)") if done else \
            "nothing was imported"
        raise type(exc)(f"{exc.message}; {stays}", details=committed) from exc


def _existing(conn: sqlite3.Connection, entity: str, keys: list[str]) -> dict[str, Record]:
    """The records already holding any of ``keys``, in one query."""
    # without table statistics SQLite would rather scan the entity's primary key: name the index
    found = conn.execute(
        "SELECT r.ikey, r.id, r.data, r.meta FROM json_each(?) AS k CROSS JOIN records AS r "
        "INDEXED BY records_ikey ON r.entity = ? AND r.ikey = k.value",
        (json.dumps(keys), entity)).fetchall()
    return {ikey: record_from_row(entity, rid, data, meta) for ikey, rid, data, meta in found}


def _unkeyed_refs(conn: sqlite3.Connection, entity: str) -> dict[str, str]:
    """external_ref -> id of records that have one but no import key: added by hand
    (``--external-ref``) or pulled from another device, whose import keys stay there."""
    found: dict[str, str] = {}
    for ref, rid in conn.execute(
            "SELECT json_extract(data, '$.external_ref') AS ref, id FROM records "
            "WHERE entity = ? AND ikey IS NULL AND ref IS NOT NULL ORDER BY deleted, id", (entity,)):
        found.setdefault("ref:" + ref, rid)  # a live record before a deleted one, then the oldest
    return found


def _adopt(conn: sqlite3.Connection, entity: str, unkeyed: dict[str, str],
           keys: list[str]) -> dict[str, Record]:
    """Records an import key should have matched but that carry none yet (see _unkeyed_refs)."""
    wanted = {unkeyed[key]: key for key in keys if key in unkeyed}
    if not wanted:
        return {}
    found = conn.execute(
        "SELECT id, data, meta FROM records WHERE entity = ? AND ikey IS NULL "
        "AND id IN (SELECT value FROM json_each(?))", (entity, json.dumps(list(wanted)))).fetchall()
    adopted = {}
    for rid, data, meta in found:
        rec = record_from_row(entity, rid, data, meta)
        if "ref:" + str(rec.values.get("external_ref")) == wanted[rid]:  # still the same ref
            adopted[wanted[rid]] = rec
    return adopted


def _write_batch(device: Device, conn: sqlite3.Connection, entity: str, batch: list[_Row],
                 unkeyed: dict[str, str]) -> tuple[int, int, int]:
    spec = entity_spec(entity)
    keys = [row.ikey for row in batch]
    existing = _existing(conn, entity, keys)
    adopted = _adopt(conn, entity, unkeyed, [key for key in keys if key not in existing])
    existing.update(adopted)
    pending: list[Change] = []
    seen: set[str] = set()
    created = updated = unchanged = 0
    for row in batch:  # an external ref occurs once per file (see _validate); a hash may repeat
        rec = existing.get(row.ikey)
        if rec is None and row.ikey not in seen:
            pending.append(Change(entity, new_id(), row.values, {}, "create", ikey=row.ikey))
            seen.add(row.ikey)
            created += 1
        elif rec is None or rec.deleted or row.ikey.startswith("hash:"):
            unchanged += 1  # an identical row, or one whose record was deleted here: deletes win
        else:
            fields = {name: row.values.get(name) for name in row.given
                      if spec.field(name).editable and rec.values.get(name) != row.values.get(name)}
            if fields:
                base = {name: merge.edit_base(rec, name) for name in fields}
                pending.append(Change(entity, rec.id, fields, base, "update",
                                      ikey=row.ikey if row.ikey in adopted else None))
                updated += 1
                adopted.pop(row.ikey, None)
            else:
                unchanged += 1
    if pending:
        device.write(pending, conn)
    # an adopted record that needed no change still takes its key: device-local, so no op
    conn.executemany("UPDATE records SET ikey = ? WHERE entity = ? AND id = ?",
                     [(key, entity, rec.id) for key, rec in adopted.items()])
    return created, updated, unchanged
