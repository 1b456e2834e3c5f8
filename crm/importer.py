"""Bulk import of accounts and contacts from CSV or JSON lines.

Every row is validated before anything is written, so a bad file changes nothing (or, with
``skip_invalid``, only its good rows go in). Rows are written in atomic batches through the
device's ordinary write path, so each record arrives with its outbox op. Each row carries an
import key (its external ref, else a hash of its fields) kept in ``records.ikey``: re-running an
import, even one killed halfway, updates or skips what is already there instead of duplicating it.
A row with an external ref also finds a record that carries that ref but no key yet (added by
hand, or pulled from another device: keys are device-local) and takes it over.

What spreadsheets export is read as it is: the file is decoded once (UTF-8 with or without a BOM
by default, a UTF-16 BOM recognised, any other encoding named), an Excel ``sep=`` first line or
the header's shape gives the delimiter, and then a plain ``csv`` reader does the rest. Columns can
be renamed (``mapping``) or unknown ones skipped; a dry run plans the batches without writing; the
rejected rows can go to an errors file (written atomically) to be fixed and imported again.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import merge
from .device import Change, Device
from .domain import ENTITIES, validate_create
from .domain import entity as entity_spec
from .errors import CrmError, ImportFileError, InterruptedError_, UsageError, ValidationError
from .files import replacing
from .ids import new_id
from .merge import Record
from .ops import dumps
from .records import record_from_row
from .store import MetaKey

__all__ = ["IMPORTABLE", "ImportReport", "RowError", "import_file"]

IMPORTABLE = {"accounts": "account", "account": "account", "contacts": "contact", "contact": "contact"}
FORMATS = {".csv": "csv", ".tsv": "csv", ".tab": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
SNIFFED = (",", ";", "\t", "|")  # the delimiters a header's shape can pick, in order of preference
DELIMITER_WORDS = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}
# the columns (keys) an errors file adds to the rejected rows; an import skips them, so a fixed
# errors file imports as it is
TOOL_COLUMNS = ("crm_line", "crm_reason", "crm_raw")
_SEP_LINE = re.compile(r'"?sep=([^\r\n"])"?(?:\r\n|\n|\r|$)', re.IGNORECASE)  # Excel's first line


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
    # how the file was read
    format: str = "csv"
    encoding: str = "utf-8"
    delimiter: str | None = None  # CSV only
    delimiter_from: str | None = None  # "--delimiter", "sep= line" or "sniffed"
    ignored_columns: list[str] | None = None  # None unless columns could be ignored (the options)
    dry_run: bool = False
    errors_file: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The plain import's keys; the new options add theirs only when they are used."""
        out: dict[str, Any] = {
            "entity": self.entity, "created": self.created, "updated": self.updated,
            "unchanged": self.unchanged, "invalid": [e.to_json() for e in self.invalid],
            "total_rows": self.total_rows}
        if self.ignored_columns is not None:
            out["ignored_columns"] = self.ignored_columns
        if self.errors_file is not None:
            out["errors_file"] = self.errors_file
        if self.dry_run:
            out["dry_run"] = True
            read: dict[str, Any] = {"format": self.format, "encoding": self.encoding}
            if self.format == "csv":
                read |= {"delimiter": self.delimiter, "delimiter_from": self.delimiter_from}
            out["read"] = read
        return out


@dataclass
class _Reading:
    """How to read the file (from the options), and what reading it found (the header)."""

    entity: str
    encoding: str | None = None  # None: UTF-8, or what a byte order mark says
    delimiter: str | None = None  # None: a sep= line, else sniffed
    mapping: dict[str, str | None] = field(default_factory=dict)  # canonical column -> field; None drops
    mapped_as_given: dict[str, str] = field(default_factory=dict)  # canonical column -> as on the command line
    ignore_unknown: bool = False
    header: list[str] | None = None  # the CSV header's cells as written
    ignored: dict[str, None] = field(default_factory=dict)  # columns (keys) left out, in order met


@dataclass(frozen=True)
class _Row:
    line: int
    values: dict[str, Any]  # the record's normalized fields, as a create writes them
    given: tuple[str, ...]  # the fields the row speaks for: an update sets exactly these
    ikey: str


def import_file(device: Device, entity: str, path: Path, *, skip_invalid: bool = False,
                fmt: str | None = None, batch_size: int = 1000,
                progress: Callable[[int, int | None], None] | None = None,
                encoding: str | None = None, delimiter: str | None = None,
                mapping: Iterable[str] = (), ignore_unknown_columns: bool = False,
                dry_run: bool = False, errors_path: Path | None = None) -> ImportReport:
    """Import ``path`` into ``device``; see the module docstring for the guarantees.

    ``encoding`` (default UTF-8, or what a byte order mark says), ``delimiter`` (default: an
    Excel ``sep=`` line, else sniffed from the header), ``mapping`` (``COLUMN=FIELD`` strings;
    ``COLUMN=`` leaves a column out) and ``ignore_unknown_columns`` say how to read the file.
    ``dry_run`` validates and plans without writing to the store. ``errors_path`` receives the
    rejected rows (with ``crm_line`` and ``crm_reason``) whenever the rows were judged, before any
    batch is written.

    Raises UsageError for unusable options, ImportFileError for an unreadable or malformed file,
    and for invalid rows unless ``skip_invalid``; InterruptedError_ on Ctrl-C, after which the
    committed batches stay.
    """
    name = IMPORTABLE.get((entity or "").strip().lower())
    if name is None:
        raise ImportFileError(f"cannot import {entity!r}: choose accounts or contacts")
    if batch_size < 1:
        raise ImportFileError("batch size must be at least 1")
    path = Path(path)
    fmt = _format(path, fmt)
    reading = _reading(name, fmt, encoding, delimiter, mapping, ignore_unknown_columns)
    if errors_path is not None:
        errors_path = Path(errors_path)
        if _same_file(errors_path, path):
            raise UsageError(f"--errors {errors_path}: that would overwrite the file being imported; "
                             "name another file")
    report = ImportReport(entity=name + "s", format=fmt, dry_run=dry_run,
                          errors_file=None if errors_path is None else str(errors_path))
    rows, rejected = _validate(device, name, path, fmt, reading, report)
    if reading.mapping or reading.ignore_unknown:
        report.ignored_columns = list(reading.ignored)
    if errors_path is not None:
        _write_errors(errors_path, fmt, reading, report.invalid, rejected)
    if report.invalid and not skip_invalid:
        bad = len(report.invalid)
        where = (f" The rejected rows are in {errors_path}, each with its reason."
                 if errors_path is not None else "")
        raise ImportFileError(
            f"{path}: {bad} of {report.total_rows} rows are invalid (first: line "
            f"{report.invalid[0].line}: {report.invalid[0].reason}); nothing was imported. "
            f"Fix them, or skip them with --skip-invalid.{where}",
            details=[e.to_json() for e in report.invalid])
    if dry_run:
        _plan(device, name, rows, report)
    else:
        _write(device, name, rows, batch_size, report, progress)
    return report


def _reading(entity: str, fmt: str, encoding: str | None, delimiter: str | None,
             mapping: Iterable[str], ignore_unknown: bool) -> _Reading:
    """The options, checked: an unusable one is a usage error before the file is read."""
    reading = _Reading(entity, ignore_unknown=ignore_unknown)
    if encoding is not None:
        try:
            info = codecs.lookup(encoding)
        except LookupError:
            raise UsageError(f"--encoding {encoding!r}: unknown encoding {encoding!r}; common ones are "
                             "utf-8, cp1252 (Excel on Windows), latin-1 and utf-16") from None
        if not getattr(info, "_is_text_encoding", True):
            raise UsageError(f"--encoding {encoding!r}: {info.name} is not a text encoding") from None
        reading.encoding = encoding
    if delimiter is not None:
        if fmt != "csv":
            raise UsageError("--delimiter applies to CSV files only, not JSON lines")
        chosen = DELIMITER_WORDS.get(delimiter.strip().lower(), delimiter) if len(delimiter) > 1 else delimiter
        if len(chosen) != 1:
            raise UsageError(f"--delimiter {delimiter!r}: give one character (such as ';' or '|'), or tab")
        if chosen in '"\r\n':
            raise UsageError(f"--delimiter {delimiter!r}: a delimiter cannot be a quote or a line break")
        reading.delimiter = chosen
    names = entity_spec(entity).field_names
    for item in mapping:
        column, equals, target = item.partition("=")
        if not equals or not column.strip():
            raise UsageError(f"--map {item!r}: give COLUMN=FIELD (such as 'Company=name'), or COLUMN= "
                             "to leave a column out")
        key = _canonical(column)
        if key in reading.mapping:
            raise UsageError(f"--map {item!r}: maps column {column.strip()!r} twice")
        if target.strip() and _canonical(target) not in names:
            article = "an" if entity[0] in "aeiou" else "a"
            raise UsageError(f"--map {item!r}: {target.strip()!r} is not {article} {entity} field; the "
                             f"fields are {', '.join(names)}")
        reading.mapping[key] = _canonical(target) if target.strip() else None
        reading.mapped_as_given[key] = column.strip()
    return reading


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


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


_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def _read_text(path: Path, reading: _Reading, report: ImportReport) -> str:
    """The file as text, decoded once; refusing what does not decode with the line and byte."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ImportFileError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise ImportFileError(f"{path} is a directory, not a file to import") from None
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    given = reading.encoding
    skip, codec = 0, given or "utf-8"
    for mark, marked in _BOMS:
        if raw.startswith(mark):
            label = marked[:6].upper()  # UTF-8 or UTF-16
            if given is not None and not codecs.lookup(given).name.startswith(label.lower()):
                raise ImportFileError(
                    f"{path} starts with a {label} byte order mark, but --encoding {given} was given; "
                    f"leave --encoding out (the mark says how to read the file) or give {label.lower()}")
            skip, codec = len(mark), marked
            break
    body = raw[skip:] if skip else raw
    report.encoding = (codec[:6] if skip else codecs.lookup(codec).name)
    try:
        text = body.decode(codec)
    except UnicodeDecodeError as exc:
        line = body[:exc.start].decode(codec, "replace").count("\n") + 1
        hint = ("if the file was saved by Excel on Windows, give --encoding cp1252 (or the encoding it was "
                "saved in)" if given is None else "give the encoding the file was saved in")
        raise ImportFileError(
            f"{path} line {line}: not valid {given or 'UTF-8'}: byte 0x{body[exc.start]:02x} at byte "
            f"offset {skip + exc.start} ({exc.reason}); {hint}") from None
    if not text.strip():
        raise ImportFileError(f"{path} is empty: nothing to import")
    nul = text.find("\x00")
    if nul >= 0:
        looks_utf16 = given is None and not skip and raw.count(b"\x00") * 4 >= len(raw)
        hint = ("; UTF-16 text without a byte order mark? give --encoding utf-16-le (or utf-16-be)"
                if looks_utf16 else "; this is not a text file")
        raise ImportFileError(f"{path} line {text.count(chr(10), 0, nul) + 1}: contains NUL bytes{hint}")
    return text


_SQUEEZED = {name.replace("_", ""): name for entity in set(IMPORTABLE.values())
             for name in ENTITIES[entity].field_names}


def _canonical(column: str) -> str:
    """``External Ref``, ``external-ref``, ``ExternalRef`` and ``external_ref`` all name the same
    field, as ``E-mail`` and ``Post Code`` name ``email`` and ``postcode``."""
    name = column.strip().lower().replace("-", "_").replace(" ", "_")
    return _SQUEEZED.get(name.replace("_", ""), name)


def _csv_text(path: Path, text: str, reading: _Reading, report: ImportReport) -> tuple[str, int]:
    """The CSV without an Excel ``sep=`` line, and the physical line its first line is on; the
    delimiter chosen: --delimiter, else the sep= line, else sniffed."""
    first = 1
    sep = _SEP_LINE.match(text)
    if sep is not None:
        text, first = text[sep.end():], 2
    if reading.delimiter is not None:
        report.delimiter, report.delimiter_from = reading.delimiter, "--delimiter"
    elif sep is not None:
        report.delimiter, report.delimiter_from = sep.group(1), "sep= line"
    else:
        report.delimiter, report.delimiter_from = _sniff(text), "sniffed"
    return text, first


def _sniff(text: str, rows: int = 20, size: int = 65_536) -> str:
    """The delimiter that reads the first rows as a table: a header of more than one column,
    then the most rows as wide as the header, then the widest header; a comma on a tie."""
    sample = text[:size]
    if len(text) > size:
        sample = sample[:sample.rfind("\n") + 1]  # no half row at the end
    best, best_score = ",", (False, -1, 0, 0)
    for order, candidate in enumerate(SNIFFED):
        widths: list[int] = []
        reader = csv.reader(io.StringIO(sample, newline=""), delimiter=candidate)
        with contextlib.suppress(csv.Error):
            for cells in reader:
                if cells and (len(cells) > 1 or cells[0].strip()):
                    widths.append(len(cells))
                    if len(widths) > rows:
                        break
        if not widths:
            continue
        header = widths[0]
        score = (header > 1, sum(width == header for width in widths[1:]), header, -order)
        if score > best_score:
            best, best_score = candidate, score
    return best


def _csv_rows(path: Path, text: str, reading: _Reading, report: ImportReport,
              ) -> Iterator[tuple[int, dict[str, Any] | str, list[str]]]:
    """(line, fields, cells) per data row, or (line, reason, cells) for a row of the wrong width."""
    text, first = _csv_text(path, text, reading, report)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=report.delimiter, strict=True)
    columns: tuple[str, ...] | None = None
    keep: list[tuple[str, int]] | None = None  # (field, cell index) when some cells are left out
    width = 0
    start = first
    try:
        for cells in reader:
            line, start = start, reader.line_num + first
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # a blank line
            if columns is None:
                columns, keep = _header(path, cells, line, reading)
                width = len(cells)
            elif len(cells) != width:
                yield line, f"has {len(cells)} values but the header has {width} columns", cells
            elif keep is None:
                yield line, dict(zip(columns, cells, strict=True)), cells
            else:
                yield line, {name: cells[i] for name, i in keep}, cells
    except csv.Error as exc:
        raise ImportFileError(f"{path} line {start}: malformed CSV ({exc})") from None
    if columns is None:
        raise ImportFileError(f"{path} is empty: nothing to import")


def _header(path: Path, cells: list[str], line: int,
            reading: _Reading) -> tuple[tuple[str, ...], list[tuple[str, int]] | None]:
    """The fields of the header's columns, and which cells to keep when some are left out."""
    entity = reading.entity
    spec = entity_spec(entity)
    reading.header = cells
    canonical = [_canonical(c) for c in cells]
    for key, shown in reading.mapped_as_given.items():
        if key not in canonical:
            raise ImportFileError(f"{path} line {line}: --map names column {shown!r} but the header has no "
                                  f"such column; its columns are: {', '.join(cells)}")
    names: list[str | None] = []
    unknown: list[str] = []
    for raw, key in zip(cells, canonical, strict=True):
        name = reading.mapping.get(key, key) if reading.mapping else key
        if key in TOOL_COLUMNS:
            name = None  # an errors file's own columns
        elif name is None or (name not in spec.field_names and reading.ignore_unknown):
            reading.ignored[raw] = None
            name = None
        elif name not in spec.field_names:
            unknown.append(raw)
        names.append(name)
    if unknown:
        raise ImportFileError(
            f"{path} line {line}: unknown column(s) {', '.join(repr(u) for u in unknown)}; the first "
            f"line must be a header naming {entity} fields: {', '.join(spec.field_names)}. Rename a "
            "column with --map COLUMN=FIELD, or leave unknown columns out with --ignore-unknown-columns",
            details={"unknown": unknown, "known": list(spec.field_names)})
    columns = tuple(name for name in names if name is not None)
    twice = sorted({name for name in columns if columns.count(name) > 1})
    if twice:
        raise ImportFileError(f"{path} line {line}: column(s) {', '.join(twice)} appear more than once")
    missing = [f.name for f in spec.fields if f.required and f.name not in columns]
    if missing:
        raise ImportFileError(f"{path} line {line}: the header lacks the required column(s) "
                              f"{', '.join(missing)}")
    if len(columns) == len(cells):
        return columns, None
    return columns, [(name, i) for i, name in enumerate(names) if name is not None]


def _jsonl_rows(text: str, reading: _Reading) -> Iterator[tuple[int, dict[str, Any] | str, str]]:
    entity = reading.entity
    names = entity_spec(entity).field_names
    # split on \n only: str.splitlines would also break at U+2028, which is legal inside JSON text
    for line, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield line, f"not valid JSON: {exc.msg} at column {exc.colno}", raw
            continue
        except (ValueError, RecursionError) as exc:  # a 5,000-digit number; nesting past the stack
            yield line, f"not usable JSON: {'nested too deeply' if isinstance(exc, RecursionError) else exc}", raw
            continue
        if not isinstance(obj, dict):
            yield line, f"must be a JSON object with {entity} fields, not {type(obj).__name__}", raw
            continue
        fields: dict[str, Any] = {}
        unknown: list[str] = []
        twice = False
        for key, value in obj.items():
            canonical = _canonical(str(key))
            name = reading.mapping.get(canonical, canonical) if reading.mapping else canonical
            if canonical in TOOL_COLUMNS:
                continue  # an errors file's own keys
            if name is None or (name not in names and reading.ignore_unknown):
                reading.ignored[str(key)] = None
            elif name not in names:
                unknown.append(str(key))
            else:
                twice = twice or name in fields
                fields[name] = value
        if unknown or twice:
            yield line, (f"unknown field(s) {', '.join(sorted(unknown))}; {entity} fields are {', '.join(names)}"
                         if unknown else "names a field twice"), raw
            continue
        yield line, fields, raw


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


def _validate(device: Device, entity: str, path: Path, fmt: str, reading: _Reading,
              report: ImportReport) -> tuple[list[_Row], list[Any]]:
    """The rows to write, and what each rejected row was in the file (its cells, or its line)."""
    text = _read_text(path, reading, report)
    source = _csv_rows(path, text, reading, report) if fmt == "csv" else _jsonl_rows(text, reading)
    if entity == "contact":
        with device.snapshot() as conn:
            refs: _Refs | None = _Refs(conn)
    else:
        refs = None
    defaulted = "owner" if entity == "account" else None  # filled with the device's rep when empty
    territory = device.setting(MetaKey.DEFAULT_TERRITORY) or None  # read once, not once a row (bench_import.py)
    rows: list[_Row] = []
    rejected: list[Any] = []  # in step with report.invalid
    for line, fields, raw in source:
        report.total_rows += 1
        if isinstance(fields, str):
            report.invalid.append(RowError(line, fields))
            rejected.append(raw)
            continue
        try:
            if refs is not None and "account" in fields:
                fields["account"] = refs.account(fields["account"])
            given = tuple(name for name in fields
                          if not (name == defaulted and fields[name] in (None, "")))
            values = validate_create(entity, device.with_rep(entity, fields, territory=territory))
            ikey = _import_key(values)
            if refs is not None and ikey.startswith("ref:"):
                # a contact's account is fixed at creation; a re-import cannot move it
                owner = refs.contact_account.setdefault(ikey, values["account"])
                if owner != values["account"]:
                    raise ValidationError(f"account: contact {values['external_ref']!r} belongs to "
                                          f"account {owner}; a contact cannot move to another account")
        except ValidationError as exc:
            report.invalid.append(RowError(line, exc.message))
            rejected.append(raw)
            continue
        rows.append(_Row(line, values, given, ikey))
    if report.total_rows == 0:
        raise ImportFileError(f"{path} has no rows to import")
    # the last row with a given external ref wins; the ones it supersedes change nothing
    last = {row.ikey: i for i, row in enumerate(rows) if row.ikey.startswith("ref:")}
    kept = [row for i, row in enumerate(rows) if last.get(row.ikey, i) == i]
    report.unchanged += len(rows) - len(kept)
    return kept, rejected


# -- the errors file -------------------------------------------------------------------------
def _write_errors(path: Path, fmt: str, reading: _Reading, invalid: list[RowError], rejected: list[Any]) -> None:
    """The rejected rows, each with its line and reason, written whole or not at all: CSV (UTF-8
    with a BOM, commas) under the file's own header, or JSON lines for a JSON-lines file."""
    def cannot(exc: OSError) -> CrmError:
        return ImportFileError(f"cannot write the errors file {path} ({exc.strerror or exc}); nothing was imported")

    with replacing(path, cannot=cannot, kept=f"{path} was not written; nothing was imported",
                   encoding="utf-8-sig" if fmt == "csv" else "utf-8", newline="") as handle:
        if fmt == "csv":
            header = reading.header or []
            own = {i for i, cell in enumerate(header) if _canonical(cell) in TOOL_COLUMNS}
            writer = csv.writer(handle)
            writer.writerow(["crm_line", "crm_reason", *(c for i, c in enumerate(header) if i not in own)])
            for error, cells in zip(invalid, rejected, strict=True):
                writer.writerow([error.line, error.reason, *(c for i, c in enumerate(cells) if i not in own)])
        else:
            for error, raw in zip(invalid, rejected, strict=True):
                handle.write(json.dumps(_rejected_line(error, raw), ensure_ascii=False) + "\n")


def _rejected_line(error: RowError, raw: str) -> dict[str, Any]:
    """A rejected JSON line: its object with the line and reason first, else the text as it was."""
    head: dict[str, Any] = {"crm_line": error.line, "crm_reason": error.reason}
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        return head | {key: value for key, value in obj.items() if _canonical(str(key)) not in TOOL_COLUMNS}
    return head | {"crm_raw": raw}


# -- planning (a dry run) --------------------------------------------------------------------
def _plan(device: Device, entity: str, rows: list[_Row], report: ImportReport) -> None:
    """Count what writing ``rows`` would do, in one read-only snapshot: all rows as one batch,
    which counts as the batches would (a key repeated across batches finds its record)."""
    with device.snapshot() as conn:
        unkeyed = _unkeyed_refs(conn, entity)
        _, _, created, updated, unchanged = _plan_batch(conn, entity, rows, unkeyed)
    report.created += created
    report.updated += updated
    report.unchanged += unchanged


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
    pending, adopted, created, updated, unchanged = _plan_batch(conn, entity, batch, unkeyed)
    if pending:
        device.write(pending, conn)
    # an adopted record that needed no change still takes its key: device-local, so no op
    conn.executemany("UPDATE records SET ikey = ? WHERE entity = ? AND id = ?",
                     [(key, entity, rec.id) for key, rec in adopted.items()])
    return created, updated, unchanged


def _plan_batch(conn: sqlite3.Connection, entity: str, batch: list[_Row], unkeyed: dict[str, str],
                ) -> tuple[list[Change], dict[str, Record], int, int, int]:
    """The changes a batch makes, the records it adopts without changing them, and its counts."""
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
    return pending, adopted, created, updated, unchanged
