"""Hypothesis against the CSV / JSON-lines importer (crm/importer.py).

Whatever the file holds (random bytes, random headers and values, huge fields, NUL, other
encodings, deep or odd JSON), ``import_file`` ends in a report or in a CrmError (exit code 9 or
3; 2 for an unusable option), never another exception; a refused import writes nothing (records
and outbox as before), and a finished one writes exactly one queued op per record it created or
updated.

The spreadsheet options (issue 14 item 4) are fuzzed too: any mix of --encoding, --delimiter,
sep= lines, --map, --ignore-unknown-columns, --dry-run and --errors keeps those rules; a dry run
changes nothing at all; the same rows written in another dialect (delimiter, encoding, BOM, sep=
line) read as the same rows; and the errors file holds exactly the rejected rows, which read
back as the same rejections.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import sqlite3
import string
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm import Device
from crm.domain import ENTITIES
from crm.errors import CrmError
from crm.importer import ImportReport, import_file
from tests.support import examples

TRIED: Counter[str] = Counter()  # outcome -> inputs
FUZZ = settings(max_examples=examples(500), deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
COLUMNS = [*ENTITIES["account"].field_names, *ENTITIES["contact"].field_names,
           "External Ref", " NAME ", "e-mail", "id", "", "name\x00", "naïve", "名前"]
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "latin-1", "cp1252", "shift_jis"]


@pytest.fixture(scope="module")
def device(tmp_path_factory, request):
    home = tmp_path_factory.mktemp("fuzz-import") / "home"
    dev = Device.init(home, rep="rep-1")
    for i in range(3):
        dev.create("account", {"name": f"Known {i}", "external_ref": f"ACC-{i}"})
    yield dev
    dev.close()
    _say(request, f"\nimporter fuzz: {sum(TRIED.values())} inputs tried; "
                  + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items())))


def _counts(dev: Device) -> tuple[int, int, int]:
    conn: sqlite3.Connection = dev.store.conn
    return (conn.execute("SELECT count(*) FROM records").fetchone()[0],
            conn.execute("SELECT count(*) FROM outbox").fetchone()[0],
            conn.execute("SELECT total_changes()").fetchone()[0])


def _import(dev: Device, folder: Path, name: str, data: bytes, entity: str, skip_invalid: bool,
            fmt: str | None = None, **options) -> ImportReport | None:
    path = folder / name
    path.write_bytes(data)
    records, outbox, changes = _counts(dev)
    try:
        report = import_file(dev, entity, path, skip_invalid=skip_invalid, fmt=fmt, batch_size=7, **options)
    except CrmError as exc:
        assert exc.exit_code in ((2, 3, 9) if options else (3, 9)) and exc.message, exc
        assert _counts(dev)[:2] == (records, outbox), "a refused import wrote something"
        TRIED["refused with a documented error"] += 1
        return None
    after_records, after_outbox, after_changes = _counts(dev)
    if options.get("dry_run"):
        assert after_changes == changes, "a dry run changed the store"
        TRIED["dry run"] += 1
        return report
    assert after_records - records == report.created
    assert after_outbox - outbox == report.created + report.updated, "one queued op per record written"
    assert report.total_rows >= report.created + report.updated + len(report.invalid)
    TRIED["imported" if report.created or report.updated else "imported nothing new"] += 1
    return report


@pytest.fixture
def folder(tmp_path):
    return tmp_path


@FUZZ
@given(data=st.binary(max_size=3000), suffix=st.sampled_from([".csv", ".jsonl", ".json", ".txt"]),
       entity=st.sampled_from(["accounts", "contacts", "invoices"]), skip=st.booleans())
def test_random_bytes(device, folder, data, suffix, entity, skip):
    _import(device, folder, "random" + suffix, data, entity, skip)


cell = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=string.printable + "\x00\x1b\u2028\ufeff\"',;\r\n", max_size=40),
    st.sampled_from(["ACC-0", "ACC-1", "not-an-account", "a@b.example", "a@@b", " ", "NaN", "1e999"]),
    st.integers(100_000, 140_000).map(lambda n: "x" * n),  # around csv's 131,072-character limit
)


@FUZZ
@given(header=st.lists(st.sampled_from(COLUMNS) | st.text(max_size=12), min_size=1, max_size=6),
       rows=st.lists(st.lists(cell, min_size=0, max_size=7), max_size=12),
       encoding=st.sampled_from(ENCODINGS), quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, None]),
       entity=st.sampled_from(["accounts", "contacts"]), skip=st.booleans())
def test_random_csv(device, folder, header, rows, encoding, quoting, entity, skip):
    if quoting is None:  # no quoting at all: commas, quotes and newlines in values break the rows
        text = "\n".join(",".join(line) for line in [header, *rows])
    else:
        buffer = io.StringIO()
        csv.writer(buffer, quoting=quoting).writerows([header, *rows])
        text = buffer.getvalue()
    _import(device, folder, "random.csv", text.encode(encoding, "replace"), entity, skip)


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
json_row = st.dictionaries(st.sampled_from(COLUMNS) | st.text(max_size=10), json_value | cell, max_size=6)
raw_line = st.sampled_from([
    "", "[]", "null", "42", '"text"', "{", '{"name": "a"', '{"name": NaN}', '{"name": Infinity}',
    '{"name": "\\ud800"}', '{"name": "a", "external_ref": "\\udfff"}', '{"name": "\\u0000"}',
    '{"name": ' + "9" * 5000 + "}", '{"name": 1e400}',
    '{"name": ' + "[" * 3000 + "]" * 3000 + "}", "[" * 100_000,
    '{"name": "ok", "name": "twice"}', '{"Name": "a", "name": "b"}',
])


@FUZZ
@given(lines=st.lists(json_row.map(lambda row: json.dumps(row, allow_nan=True)) | raw_line, min_size=1,
                      max_size=10),
       separator=st.sampled_from(["\n", "\r\n", "\u2028"]), encoding=st.sampled_from(ENCODINGS),
       entity=st.sampled_from(["accounts", "contacts"]), skip=st.booleans(),
       fmt=st.sampled_from([None, "jsonl", "ndjson", "json", "xml"]))
def test_random_json_lines(device, folder, lines, separator, encoding, entity, skip, fmt):
    data = separator.join(lines).encode(encoding, "surrogatepass" if encoding.startswith("utf-8") else "replace")
    _import(device, folder, "random.jsonl", data, entity, skip, fmt)


@FUZZ
@given(rows=st.lists(st.fixed_dictionaries({"name": st.text(min_size=1, max_size=30)},
                                           optional={"city": st.text(max_size=20),
                                                     "email": st.emails() | st.text(max_size=20),
                                                     "external_ref": st.sampled_from(["R1", "R2", "R3", ""])}),
                     min_size=1, max_size=8))
def test_mostly_valid_rows_and_reruns(device, folder, rows):
    """Near-valid files, imported twice: the second run must not create what the first did."""
    data = "\n".join(json.dumps(row) for row in rows).encode()
    _import(device, folder, "rows.jsonl", data, "accounts", True)
    records = _counts(device)[0]
    _import(device, folder, "rows.jsonl", data, "accounts", True)
    assert _counts(device)[0] == records, "re-importing the same file duplicated records"


# -- the spreadsheet options ------------------------------------------------------------------
DELIMITERS = [",", ";", "\t", "|"]
option_map = st.lists(st.sampled_from(["Company=name", "company=name", "Account No=external_ref", "Notes=",
                                       "city=city", "Region=", "x=nme", "nonsense", "=name", "e-mail=email"]),
                      max_size=3)


@FUZZ
@given(header=st.lists(st.sampled_from([*COLUMNS, "Company", "Account No", "Notes", "Region", "crm_line",
                                        "crm_reason"]) | st.text(max_size=12), min_size=1, max_size=6),
       rows=st.lists(st.lists(cell, min_size=0, max_size=7), max_size=10),
       written=st.sampled_from(DELIMITERS), sep_line=st.sampled_from([None, "sep={}", '"sep={}"', "sep=;", 'sep="', "sep=a", "sep= ", "sep=", "sep=\x0b"]),
       encoding=st.sampled_from(ENCODINGS), say_encoding=st.sampled_from([None, "same", "cp1252", "utf-16", "x"]),
       delimiter=st.sampled_from([None, None, ",", ";", "\t", "tab", "|", "ab", '"']),
       mapping=option_map, ignore=st.booleans(), dry_run=st.booleans(), errors=st.booleans(),
       entity=st.sampled_from(["accounts", "contacts"]), skip=st.booleans())
def test_random_csv_with_the_spreadsheet_options(device, folder, header, rows, written, sep_line, encoding,
                                                 say_encoding, delimiter, mapping, ignore, dry_run, errors,
                                                 entity, skip):
    buffer = io.StringIO()
    if sep_line is not None:
        buffer.write(sep_line.format(written) + "\r\n")
    csv.writer(buffer, delimiter=written).writerows([header, *rows])
    options = {"encoding": encoding if say_encoding == "same" else say_encoding, "delimiter": delimiter,
               "mapping": mapping, "ignore_unknown_columns": ignore, "dry_run": dry_run}
    errors_path = folder / "rejected.csv"
    errors_path.unlink(missing_ok=True)
    if errors:
        options["errors_path"] = errors_path
    report = _import(device, folder, "options.csv", buffer.getvalue().encode(encoding, "replace"), entity, skip,
                     **options)
    if errors and report is not None:
        rejected = list(csv.reader(io.StringIO(errors_path.read_bytes().decode("utf-8-sig"), newline="")))
        assert rejected[0][:2] == ["crm_line", "crm_reason"]
        assert [(int(r[0]), r[1]) for r in rejected[1:]] == [(e.line, e.reason) for e in report.invalid]
    if report is None or not errors:
        assert not errors_path.exists() or errors, "an errors file nobody asked for"
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == [], "a temporary file was left"


plain = st.text(alphabet=string.ascii_letters + string.digits + " .,;|\t\"'\r\néüß€’«»ñ-@", max_size=25)
valid_ish = st.fixed_dictionaries({"name": plain}, optional={
    "city": plain, "email": st.sampled_from(["", "a@b.example", "not-an-email", "x@y.example"]),
    "external_ref": st.sampled_from(["", "R1", "R2", "R3", "R;4", "R,5"]), "phone": plain})


@FUZZ
@given(rows=st.lists(valid_ish, min_size=1, max_size=8), written=st.sampled_from(DELIMITERS),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]),
       sep_line=st.booleans(), say_delimiter=st.booleans())
def test_the_same_rows_in_any_dialect_read_the_same(device, folder, rows, written, encoding, sep_line,
                                                    say_delimiter):
    """Delimiter, encoding, BOM, a sep= line or sniffing: the dry run's report is the plain CSV's."""
    columns = ["name", "city", "email", "external_ref", "phone"]
    table = [columns, *([row.get(c, "") for c in columns] for row in rows)]
    canonical = io.StringIO()
    csv.writer(canonical).writerows(table)
    variant = io.StringIO()
    if sep_line:
        variant.write(f"sep={written}\r\n")
    csv.writer(variant, delimiter=written).writerows(table)
    expected = _import(device, folder, "plain.csv", canonical.getvalue().encode(), "accounts", True, dry_run=True)
    options = {"dry_run": True, "delimiter": written if say_delimiter else None,
               "encoding": "cp1252" if encoding == "cp1252" else None}
    got = _import(device, folder, "variant.csv", variant.getvalue().encode(encoding), "accounts", True, **options)
    assert expected is not None and got is not None
    assert (got.created, got.updated, got.unchanged, got.total_rows) == \
        (expected.created, expected.updated, expected.unchanged, expected.total_rows)
    assert [(e.line - sep_line, e.reason) for e in got.invalid] == [(e.line, e.reason) for e in expected.invalid]


@FUZZ
@given(rows=st.lists(valid_ish | st.fixed_dictionaries({"name": plain, "colour": plain}), min_size=1, max_size=8),
       short=st.lists(st.integers(0, 7), max_size=2), written=st.sampled_from(DELIMITERS))
def test_the_errors_file_reads_back_as_the_same_rejections(device, folder, rows, short, written):
    columns = ["name", "city", "email", "external_ref", "Region"]
    table = [columns, *([row.get(c, "") for c in columns] for row in rows)]
    for i in short:  # a row cut short: the wrong width
        if i + 1 < len(table):
            table[i + 1] = table[i + 1][:2]
    source = io.StringIO()
    source.write(f"sep={written}\n")
    csv.writer(source, delimiter=written).writerows(table)
    errors_path = folder / "rejected.csv"
    first = _import(device, folder, "source.csv", source.getvalue().encode("cp1252"), "accounts", True,
                    encoding="cp1252", ignore_unknown_columns=True, dry_run=True, errors_path=errors_path)
    assert first is not None
    if not first.invalid:
        assert errors_path.read_bytes() == b"\xef\xbb\xbfcrm_line,crm_reason,name,city,email,external_ref,Region\r\n"
        return
    again = import_file(device, "accounts", errors_path, skip_invalid=True, ignore_unknown_columns=True,
                        dry_run=True)
    assert again.total_rows == len(first.invalid)
    assert [e.reason for e in again.invalid if "values but the header" not in e.reason] == \
        [e.reason for e in first.invalid if "values but the header" not in e.reason]
    assert len(again.invalid) == len(first.invalid), "a rejected row was accepted when read back"


def test_known_nasty_inputs_end_in_documented_errors(device, folder):
    """The inputs the fuzzing found, kept as fixed cases."""
    for name, data in {
        "surrogate.jsonl": b'{"name": "\\ud800"}\n',
        "deep.jsonl": b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
        "bigint.jsonl": b'{"name": ' + b"9" * 5000 + b"}\n",
        "utf16.csv": codecs.BOM_UTF16_LE + "name\nshop\n".encode("utf-16-le"),
        "huge.csv": b"name\n" + b"x" * 200_000 + b"\n",
        "nul.csv": b"name\nsh\x00op\n",
    }.items():
        _import(device, folder, name, data, "accounts", False)
        _import(device, folder, name, data, "accounts", True)


def _say(request, text: str) -> None:
    """Print past pytest's capture, so the figures show in a plain run's output."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(text, flush=True)
