"""Bulk import: every row validated first, atomic batches, idempotent re-runs, honest reports."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
from pathlib import Path

import pytest

from crm.device import Device
from crm.errors import ImportFileError, InterruptedError_, StoreLockedError
from crm.importer import import_file

ROOT = Path(__file__).resolve().parent.parent
CSV_DIR = ROOT / "fixtures" / "csv"


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_dataset", ROOT / "fixtures" / "make_dataset.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_dataset", module)
    spec.loader.exec_module(module)
    return module


make_dataset = _load_generator().make_dataset


@pytest.fixture
def device(tmp_path: Path) -> Device:
    dev = Device.init(tmp_path / "home", rep="Ann")
    yield dev
    dev.close()


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def counts(device: Device) -> tuple[int, int]:
    conn = device.store.conn
    return (conn.execute("SELECT count(*) FROM records").fetchone()[0],
            conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


def ops_for(device: Device, rid: str) -> list[dict]:
    rows = device.store.conn.execute("SELECT body FROM outbox WHERE record_id = ? ORDER BY seq", (rid,))
    return [json.loads(body) for (body,) in rows]


def by_ref(device: Device, entity: str = "account") -> dict[str, dict]:
    return {r["external_ref"]: r for r in device.list(entity) if r.get("external_ref")}


# -- the happy path --------------------------------------------------------------------------
def test_csv_import_writes_each_record_with_its_create_op(device: Device) -> None:
    report = import_file(device, "accounts", CSV_DIR / "accounts.csv")
    assert (report.created, report.updated, report.unchanged, report.invalid, report.total_rows) == \
        (5, 0, 0, [], 5)
    accounts = device.list("account")
    assert len(accounts) == 5
    for account in accounts:
        ops = ops_for(device, account["id"])
        assert len(ops) == 1 and ops[0]["kind"] == "create"
        assert ops[0]["fields"] == {k: v for k, v in account.items() if k != "id"}
    refs = by_ref(device)
    assert refs["ACC-1002"]["owner"] == "Priya"
    assert refs["ACC-1001"]["owner"] == "Ann"  # an empty owner is the device's rep, as in `account add`
    assert refs["ACC-1005"]["address"] == "Old Mill\nMill Lane"  # a quoted multi-line value
    assert refs["ACC-1003"]["name"] == "Café Lumière" and "phone" not in refs["ACC-1003"]
    assert report.to_json() == {"entity": "accounts", "created": 5, "updated": 0, "unchanged": 0,
                                "invalid": [], "total_rows": 5}


def test_imported_records_behave_like_created_ones(device: Device) -> None:
    import_file(device, "account", CSV_DIR / "accounts.csv")
    rid = by_ref(device)["ACC-1001"]["id"]
    edited = device.edit("account", rid, {"phone": "0117 000 0000"})
    assert edited["phone"] == "0117 000 0000" and edited["name"] == "Harbour Deli"
    assert device.conflicts() == []
    assert [op["kind"] for op in ops_for(device, rid)] == ["create", "update"]


@pytest.mark.parametrize("header", ["external_ref", "External Ref", "EXTERNAL-REF", " external ref ", "ExternalRef"])
def test_external_ref_header_spellings(device: Device, tmp_path: Path, header: str) -> None:
    path = write(tmp_path, "a.csv", f"Name,{header}\nAcme,R-1\n")
    assert import_file(device, "accounts", path).created == 1
    assert by_ref(device)["R-1"]["name"] == "Acme"


def test_jsonl_import_skips_blank_lines(device: Device) -> None:
    report = import_file(device, "accounts", CSV_DIR / "accounts.jsonl")
    assert (report.created, report.total_rows) == (3, 3)
    assert by_ref(device)["ACC-3002"]["phone"] == "01684 496 000"


def test_format_overrides_the_extension(device: Device, tmp_path: Path) -> None:
    path = write(tmp_path, "export.txt", '{"name": "Acme"}\n')
    with pytest.raises(ImportFileError, match="cannot tell the format"):
        import_file(device, "accounts", path)
    assert import_file(device, "accounts", path, fmt="jsonl").created == 1


# -- bad rows: nothing, or only the good ones ------------------------------------------------
def test_one_bad_row_imports_nothing_and_names_every_bad_line(device: Device) -> None:
    with pytest.raises(ImportFileError) as info:
        import_file(device, "accounts", CSV_DIR / "accounts_invalid.csv")
    assert info.value.exit_code == 9
    assert [d["line"] for d in info.value.details] == [3, 4]
    assert "name" in info.value.details[0]["reason"] and "required" in info.value.details[0]["reason"]
    assert "not-an-email" in info.value.details[1]["reason"]
    assert "2 of 4 rows are invalid" in info.value.message
    assert counts(device) == (0, 0)


def test_skip_invalid_imports_the_good_rows_and_reports_the_bad(device: Device) -> None:
    report = import_file(device, "accounts", CSV_DIR / "accounts_invalid.csv", skip_invalid=True)
    assert (report.created, report.total_rows) == (2, 4)
    assert [(e.line, "email" in e.reason) for e in report.invalid] == [(3, False), (4, True)]
    assert set(by_ref(device)) == {"ACC-2001", "ACC-2004"}
    assert counts(device) == (2, 2)


def test_line_numbers_are_physical_lines(device: Device, tmp_path: Path) -> None:
    text = ('name,address,email\n'
            '"Two\nLines",x,a@b.example\n'  # lines 2-3
            '\n'  # line 4, blank
            'Bad,y,nope\n'  # line 5
            'Short,z\n')  # line 6: too few values
    path = write(tmp_path, "a.csv", text)
    report = import_file(device, "accounts", path, skip_invalid=True)
    assert [e.line for e in report.invalid] == [5, 6]
    assert "has 2 values but the header has 3 columns" in report.invalid[1].reason
    assert (report.created, report.total_rows) == (1, 3)


def test_jsonl_syntax_errors_are_bad_rows_with_their_line(device: Device, tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", '{"name": "Good"}\n{"name": "Broken",\n[1, 2]\n'
                                      '{"name": "X", "colour": "red"}\n{"name": "Fine"}\n')
    with pytest.raises(ImportFileError) as info:
        import_file(device, "accounts", path)
    lines = {d["line"]: d["reason"] for d in info.value.details}
    assert set(lines) == {2, 3, 4}
    assert "not valid JSON" in lines[2] and "JSON object" in lines[3] and "colour" in lines[4]
    assert counts(device) == (0, 0)
    assert import_file(device, "accounts", path, skip_invalid=True).created == 2


@pytest.mark.parametrize(("name", "content", "message"), [
    ("empty.csv", b"", "is empty"),
    ("blank.csv", b"\n  \n\n", "is empty"),
    ("header_only.csv", b"name,city\n", "no rows"),
    ("nul.csv", b"name\nAcme\nBad\x00Row\n", "line 3: contains NUL bytes"),
    ("latin1.csv", b"name\nAcme\nCaf\xe9\n", "line 3: not valid UTF-8"),
    ("utf16.csv", "name\nAcme\n".encode("utf-16-le"), "line 1: contains NUL bytes"),  # no BOM: say it
    ("noheader.csv", b"Acme,Bristol\nBeta,Leeds\n", "unknown column(s) 'Acme', 'Bristol'"),
    ("unknown.csv", b"name,colour,size\nAcme,red,9\n", "unknown column(s) 'colour', 'size'"),
    ("twice.csv", b"name,Name\nA,B\n", "appear more than once"),
    ("noname.csv", b"city\nBristol\n", "lacks the required column(s) name"),
    ("quote.csv", b'name,city\n"Acme,Bristol\n', "malformed CSV"),
    ("stray.csv", b'name,city\nAc"me",x\n"A"b,c\n', "line 3: malformed CSV"),
])
def test_malformed_files_are_refused_and_change_nothing(device: Device, tmp_path: Path, name: str,
                                                        content: bytes, message: str) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(ImportFileError) as info:
        import_file(device, "accounts", path, skip_invalid=True)
    assert message in info.value.message
    assert counts(device) == (0, 0)


def test_missing_file_and_directory(device: Device, tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="no such file"):
        import_file(device, "accounts", tmp_path / "nope.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(ImportFileError, match="is a directory"):
        import_file(device, "accounts", tmp_path / "dir.csv")
    with pytest.raises(ImportFileError, match="choose accounts or contacts"):
        import_file(device, "visits", CSV_DIR / "accounts.csv")


def test_a_bom_is_not_part_of_the_first_column(device: Device, tmp_path: Path) -> None:
    path = write(tmp_path, "excel.csv", "\ufeffname,city\nAcme,Bath\n".encode())
    assert import_file(device, "accounts", path).created == 1


# -- idempotence -----------------------------------------------------------------------------
def test_rerun_changes_nothing(device: Device) -> None:
    import_file(device, "accounts", CSV_DIR / "accounts.csv")
    before = device.export()
    report = import_file(device, "accounts", CSV_DIR / "accounts.csv")
    assert (report.created, report.updated, report.unchanged) == (0, 0, 5)
    assert device.export() == before
    assert counts(device) == (5, 5)


def test_rerun_with_a_changed_ref_row_edits_only_the_changed_fields(device: Device, tmp_path: Path) -> None:
    first = write(tmp_path, "a.csv", "name,city,phone,external_ref\nAcme,Bath,111,R1\nBeta,Leeds,222,R2\n")
    import_file(device, "accounts", first)
    second = write(tmp_path, "b.csv", "name,city,phone,external_ref\nAcme,Bath,999,R1\nBeta,Leeds,,R2\n")
    report = import_file(device, "accounts", second)
    assert (report.created, report.updated, report.unchanged) == (0, 2, 0)
    refs = by_ref(device)
    assert refs["R1"]["phone"] == "999" and refs["R2"].get("phone") is None  # an empty cell clears it
    update = ops_for(device, refs["R1"]["id"])[-1]
    assert update["kind"] == "update" and update["fields"] == {"phone": "999"}
    assert update["base"]["phone"] == [ops_for(device, refs["R1"]["id"])[0]["hlc"]]
    assert counts(device) == (2, 4)


def test_a_ref_row_wins_over_a_local_edit_without_a_conflict(device: Device, tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "name,phone,external_ref\nAcme,111,R1\n")
    import_file(device, "accounts", path)
    rid = by_ref(device)["R1"]["id"]
    device.edit("account", rid, {"phone": "555"})
    report = import_file(device, "accounts", path)
    assert report.updated == 1
    assert device.get("account", rid)["phone"] == "111"
    assert device.conflicts() == []


def test_a_changed_hash_row_is_a_new_record(device: Device, tmp_path: Path) -> None:
    import_file(device, "accounts", write(tmp_path, "a.csv", "name,city\nAcme,Bath\n"))
    report = import_file(device, "accounts", write(tmp_path, "b.csv", "name,city\nAcme,Bath\nAcme,Wells\n"))
    assert (report.created, report.unchanged) == (1, 1)
    assert sorted(a["city"] for a in device.list("account")) == ["Bath", "Wells"]


def test_duplicates_in_one_file_never_make_two_records(device: Device, tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "name,phone,external_ref\n"
                                    "Acme,111,R1\nPlain,,\nAcme,222,R1\nPlain,,\nAcme,333,R1\n")
    report = import_file(device, "accounts", path, batch_size=2)
    assert (report.created, report.updated, report.unchanged, report.total_rows) == (2, 0, 3, 5)
    assert by_ref(device)["R1"]["phone"] == "333"  # the later row wins
    assert counts(device) == (2, 2)
    again = import_file(device, "accounts", path, batch_size=2)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 5)


def test_a_deleted_record_stays_deleted(device: Device) -> None:
    import_file(device, "accounts", CSV_DIR / "accounts.csv")
    rid = by_ref(device)["ACC-1001"]["id"]
    device.delete("account", rid)
    report = import_file(device, "accounts", CSV_DIR / "accounts.csv")
    assert (report.created, report.unchanged) == (0, 5)
    assert len(device.list("account")) == 4


# -- batches and interruption ----------------------------------------------------------------
def test_batches_commit_one_by_one_and_a_rerun_finishes_an_interrupted_import(
        device: Device, tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "name,external_ref\n" + "".join(f"A{i},R{i}\n" for i in range(10)))
    seen: list[tuple[int, int | None]] = []

    def stop_after_two(done: int, total: int | None) -> None:
        seen.append((done, total))
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(InterruptedError_) as info:
        import_file(device, "accounts", path, batch_size=3, progress=stop_after_two)
    assert info.value.exit_code == 130 and info.value.details["created"] == 6
    assert seen == [(3, 10), (6, 10)]
    assert counts(device) == (6, 6)
    seen.clear()
    report = import_file(device, "accounts", path, batch_size=3, progress=lambda d, t: seen.append((d, t)))
    assert (report.created, report.unchanged) == (4, 6)
    assert seen == [(3, 10), (6, 10), (9, 10), (10, 10)]
    assert counts(device) == (10, 10)


def test_a_failing_batch_is_rolled_back_whole(device: Device, tmp_path: Path, monkeypatch) -> None:
    path = write(tmp_path, "a.csv", "name\n" + "".join(f"A{i}\n" for i in range(5)))
    calls = 0
    original = Device.write

    def fail_second(self, changes, conn=None):
        nonlocal calls
        calls += 1
        ops = original(self, changes, conn)  # written, then the transaction fails after it
        if calls == 2:
            raise KeyboardInterrupt
        return ops

    monkeypatch.setattr(Device, "write", fail_second)
    with pytest.raises(InterruptedError_):
        import_file(device, "accounts", path, batch_size=2)
    assert counts(device) == (2, 2)


# -- contacts --------------------------------------------------------------------------------
def test_contacts_name_their_account_by_id_or_external_ref(device: Device, tmp_path: Path) -> None:
    import_file(device, "accounts", CSV_DIR / "accounts.csv")
    report = import_file(device, "contacts", CSV_DIR / "contacts.csv")
    assert report.created == 4
    accounts = by_ref(device)
    contacts = by_ref(device, "contact")
    assert contacts["CON-1"]["account"] == accounts["ACC-1001"]["id"]
    assert device.get("account", accounts["ACC-1001"]["id"])["counts"]["contact"] == 2
    by_id = write(tmp_path, "c.csv", f"account,name\n{accounts['ACC-1002']['id'].upper()},Jo\n")
    assert import_file(device, "contact", by_id).created == 1
    assert import_file(device, "contacts", CSV_DIR / "contacts.csv").unchanged == 4


def test_contacts_of_unknown_or_deleted_accounts_are_bad_rows(device: Device, tmp_path: Path) -> None:
    import_file(device, "accounts", CSV_DIR / "accounts.csv")
    device.delete("account", by_ref(device)["ACC-1002"]["id"])
    gone = device.list("account", include_deleted=True)
    deleted_id = next(a["id"] for a in gone if a.get("deleted"))
    path = write(tmp_path, "c.csv", f"account,name\nACC-9999,Nobody\n{deleted_id},Ghost\nACC-1001,Real\n,Orphan\n")
    with pytest.raises(ImportFileError) as info:
        import_file(device, "contacts", path)
    reasons = {d["line"]: d["reason"] for d in info.value.details}
    assert set(reasons) == {2, 3, 5}
    assert "no account 'ACC-9999'" in reasons[2] and "deleted" in reasons[3] and "required" in reasons[5]


def test_a_contact_cannot_move_to_another_account(device: Device, tmp_path: Path) -> None:
    import_file(device, "accounts", CSV_DIR / "accounts.csv")
    import_file(device, "contacts", CSV_DIR / "contacts.csv")
    moved = write(tmp_path, "c.csv", "account,name,external_ref\nACC-1003,Maria Lopez,CON-1\n")
    with pytest.raises(ImportFileError, match="cannot move to another account"):
        import_file(device, "contacts", moved)
    twice = write(tmp_path, "d.csv", "account,name,external_ref\nACC-1001,A,CON-9\nACC-1002,A,CON-9\n")
    with pytest.raises(ImportFileError) as info:
        import_file(device, "contacts", twice)
    assert [d["line"] for d in info.value.details] == [3]


# -- the generated data set ------------------------------------------------------------------
def test_generated_dataset_is_deterministic_and_imports_to_its_distinct_count(
        device: Device, tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a.csv", rows=3000, seed=11, duplicate_ratio=0.05)
    b = make_dataset(tmp_path / "b.csv", rows=3000, seed=11, duplicate_ratio=0.05)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert make_dataset(tmp_path / "c.csv", rows=3000, seed=12).path.read_bytes() != a.path.read_bytes()
    assert 2700 < a.distinct < 3000
    report = import_file(device, "accounts", a.path, batch_size=500)
    assert report.created == a.distinct and report.invalid == []
    assert counts(device) == (a.distinct, a.distinct)
    contacts = make_dataset(tmp_path / "c.jsonl", entity="contacts", rows=500, seed=3, fmt="jsonl",
                            accounts=a.refs[:50], duplicate_ratio=0.1)
    assert import_file(device, "contacts", contacts.path).created == contacts.distinct


def test_a_ref_row_takes_over_a_record_added_by_hand(device: Device, tmp_path: Path) -> None:
    by_hand = device.create("account", {"name": "Acme", "city": "Bath", "external_ref": "R1"})
    other = device.create("account", {"name": "Beta", "external_ref": "R2"})
    path = write(tmp_path, "a.csv", "name,city,external_ref\nAcme,Bath,R1\nBeta,Leeds,R2\nGamma,York,R3\n")
    report = import_file(device, "accounts", path)
    assert (report.created, report.updated, report.unchanged) == (1, 1, 1)
    assert device.get("account", other["id"])["city"] == "Leeds"
    assert len(device.list("account")) == 3
    keys = dict(device.store.conn.execute("SELECT id, ikey FROM records"))
    assert keys[by_hand["id"]] == "ref:R1" and keys[other["id"]] == "ref:R2"
    assert ops_for(device, by_hand["id"])[-1]["kind"] == "create"  # taking it over wrote no op
    again = import_file(device, "accounts", path)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 3)


def test_a_contact_added_by_hand_cannot_be_moved_by_an_import(device: Device, tmp_path: Path) -> None:
    import_file(device, "accounts", CSV_DIR / "accounts.csv")
    account = by_ref(device)["ACC-1001"]["id"]
    device.create("contact", {"account": account, "name": "Maria", "external_ref": "CON-7"})
    moved = write(tmp_path, "c.csv", "account,name,external_ref\nACC-1002,Maria,CON-7\n")
    with pytest.raises(ImportFileError, match="cannot move to another account"):
        import_file(device, "contacts", moved)
    stays = write(tmp_path, "d.csv", "account,name,role,external_ref\nACC-1001,Maria,Buyer,CON-7\n")
    assert import_file(device, "contacts", stays).updated == 1
    assert len(device.list("contact")) == 1


def test_a_lock_after_a_committed_batch_says_exactly_what_was_committed(device: Device, tmp_path: Path) -> None:
    """Exit 6 mid-import: the batches already committed stay, and the error says which, so the
    rep knows a re-run finishes the job (and duplicates nothing)."""
    path = tmp_path / "six.csv"
    path.write_text("name,city\n" + "".join(f"Shop {n},Leeds\n" for n in range(6)))
    device.store.conn.execute("PRAGMA busy_timeout = 50")
    holder = sqlite3.connect(device.store.path, isolation_level=None)

    def hold_the_lock_after_the_first_batch(done: int, total: int | None) -> None:
        if done == 2:
            holder.execute("BEGIN IMMEDIATE")  # another process starts writing and keeps at it

    with pytest.raises(StoreLockedError) as refused:
        import_file(device, "accounts", path, batch_size=2, progress=hold_the_lock_after_the_first_batch)
    holder.execute("ROLLBACK")
    holder.close()
    error = refused.value
    assert "2 of 6 rows" in error.message and "again" in error.message, error.message
    assert error.details["committed_rows"] == 2 and error.details["committed_batches"] == 1
    assert error.details["created"] == 2
    assert len(device.list("account")) == 2
    again = import_file(device, "accounts", path, batch_size=2)
    assert (again.created, again.unchanged) == (4, 2) and len(device.list("account")) == 6


# -- what spreadsheets export (issue 14 item 4) ----------------------------------------------
def total_changes(device: Device) -> int:
    """Rows SQLite changed on this connection: a dry run must leave it where it was."""
    return device.store.conn.execute("SELECT total_changes()").fetchone()[0]


def read_errors(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf"), "a spreadsheet opens the errors file as UTF-8 only with a BOM"
    import csv
    import io
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))


def test_an_excel_semicolon_cp1252_file_with_a_sep_line(device: Device) -> None:
    path = CSV_DIR / "accounts_excel_semicolon.csv"
    report = import_file(device, "accounts", path, encoding="cp1252")
    assert (report.created, report.invalid, report.total_rows) == (4, [], 4)
    assert (report.encoding, report.delimiter, report.delimiter_from) == ("cp1252", ";", "sep= line")
    refs = by_ref(device)
    assert refs["ACC-5001"]["name"] == "Müller’s Bäckerei"  # ’ is 0x92: cp1252, not latin-1
    assert refs["ACC-5001"]["email"] == "info@mueller.example"  # the E-mail column
    assert refs["ACC-5002"]["address"] == "1; rue du Port" and refs["ACC-5002"]["name"] == "Crêperie « Bretonne »"
    assert refs["ACC-5003"]["address"] == "Place de l'Église\r\nBâtiment B"
    assert refs["ACC-5004"]["name"] == "Señor Pérez, S.L."
    assert import_file(device, "accounts", path, encoding="windows-1252").unchanged == 4


def test_bytes_that_do_not_decode_name_the_line_and_the_byte(device: Device, tmp_path: Path) -> None:
    path = CSV_DIR / "accounts_excel_semicolon.csv"
    with pytest.raises(ImportFileError) as info:
        import_file(device, "accounts", path)  # the default: UTF-8
    offset = path.read_bytes().index(b"\xfc")  # the ü of Müller, on line 3 (sep= is line 1)
    assert f"line 3: not valid UTF-8: byte 0xfc at byte offset {offset}" in info.value.message
    assert "--encoding cp1252" in info.value.message
    assert counts(device) == (0, 0)
    undefined = write(tmp_path, "a.csv", b"name\r\nAcme\r\nBad \x81 Byte\r\n")  # 0x81: no cp1252 character
    with pytest.raises(ImportFileError, match=r"line 3: not valid cp1252: byte 0x81 at byte offset 16"):
        import_file(device, "accounts", undefined, encoding="cp1252", skip_invalid=True)
    assert counts(device) == (0, 0)
    assert import_file(device, "accounts", undefined, encoding="latin-1").created == 2  # every byte is latin-1


def test_a_utf16_tab_separated_export_needs_no_options(device: Device) -> None:
    path = CSV_DIR / "accounts_unicode.tsv"
    report = import_file(device, "accounts", path)
    assert (report.created, report.total_rows) == (3, 3)
    assert (report.encoding, report.delimiter, report.delimiter_from) == ("utf-16", "\t", "sniffed")
    refs = by_ref(device)
    assert refs["ACC-6001"]["name"] == "Zoë's Deli" and refs["ACC-6002"]["name"] == "Łódź Import"
    assert refs["ACC-6003"]["name"] == "東京 Sushi, Ltd" and refs["ACC-6003"]["phone"] == "020 7946 0000"
    assert import_file(device, "accounts", path, encoding="utf-16", delimiter="tab").unchanged == 3


def test_an_encoding_that_contradicts_the_byte_order_mark_is_refused(device: Device, tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="starts with a UTF-16 byte order mark.*--encoding cp1252"):
        import_file(device, "accounts", CSV_DIR / "accounts_unicode.tsv", encoding="cp1252")
    utf8 = write(tmp_path, "a.csv", "\ufeffname\nAcme\n".encode())
    with pytest.raises(ImportFileError, match="UTF-8 byte order mark"):
        import_file(device, "accounts", utf8, encoding="latin-1")
    assert import_file(device, "accounts", utf8, encoding="utf-8").created == 1
    no_bom = write(tmp_path, "b.csv", "name\nAcme\n".encode("utf-16-le"))
    with pytest.raises(ImportFileError, match="contains NUL bytes.*--encoding utf-16-le"):
        import_file(device, "accounts", no_bom)
    assert import_file(device, "accounts", no_bom, encoding="utf-16-le").unchanged == 1
    assert counts(device) == (1, 1)


@pytest.mark.parametrize(("text", "delimiter"), [
    ("name;city;address\nAcme, Ltd;Leeds;1, High St\nBeta;York;\n", ";"),
    ("name|city\nAcme; Ltd|Leeds\nBeta, Inc|York\n", "|"),
    ("name\tcity\nAcme, Ltd\tLeeds\nBeta;Inc\tYork\n", "\t"),
    ('"name","city"\n"Acme; Ltd","Leeds"\n"Beta","York"\n', ","),
    ("name\nAcme, Ltd\nBeta\n", ";"),  # one column: commas in values would split it, so not a comma
])
def test_the_delimiter_is_sniffed_when_not_given(device: Device, tmp_path: Path, text: str, delimiter: str) -> None:
    report = import_file(device, "accounts", write(tmp_path, "a.csv", text))
    assert (report.created, report.invalid, report.delimiter) == (2, [], delimiter)
    assert sorted(a["name"] for a in device.list("account"))[0].startswith("Acme")


@pytest.mark.parametrize(("text", "delimiter"), [
    ("sep=,\r\nname,city\r\nAcme;Ltd,Leeds\r\n", ","),
    ('"sep=;"\r\nname;city\r\nAcme, Ltd;Leeds\r\n', ";"),
    ("SEP=\t\nname\tcity\nAcme\tLeeds\n", "\t"),
    ("\ufeffsep=|\nname|city\nAcme|Leeds\n", "|"),
])
def test_an_excel_sep_line_gives_the_delimiter_and_is_not_the_header(device: Device, tmp_path: Path, text: str,
                                                                     delimiter: str) -> None:
    report = import_file(device, "accounts", write(tmp_path, "a.csv", text))
    assert (report.delimiter, report.delimiter_from, report.created, report.invalid) == \
        (delimiter, "sep= line", 1, [])
    assert device.list("account")[0]["city"] == "Leeds"


def test_a_quote_is_no_delimiter_even_on_a_sep_line(device: Device, tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="line 1: unknown column"):
        import_file(device, "accounts", write(tmp_path, "a.csv", 'sep="\nname\nAcme\n'))


def test_the_delimiter_option_wins_over_a_sep_line(device: Device, tmp_path: Path) -> None:
    report = import_file(device, "accounts", write(tmp_path, "a.csv", "sep=;\nname|city\nZed|Hull\n"),
                         delimiter="|")
    assert (report.delimiter, report.delimiter_from, report.created) == ("|", "--delimiter", 1)
    assert device.list("account")[0]["city"] == "Hull"


def test_line_numbers_count_the_sep_line(device: Device, tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "sep=;\nname;email\nGood;a@b.example\nBad;nope\n")
    report = import_file(device, "accounts", path, skip_invalid=True)
    assert [e.line for e in report.invalid] == [4]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("delimiter", '"', "--delimiter"), ("delimiter", "ab", "one character"), ("delimiter", "\n", "--delimiter"),
    ("delimiter", "", "one character"),
    ("encoding", "klingon", "unknown encoding 'klingon'"), ("encoding", "base64", "not a text encoding"),
    ("mapping", ["Company"], "COLUMN=FIELD"), ("mapping", ["Company=nme"], "'nme' is not an account field"),
    ("mapping", ["Company=name", "company=city"], "maps column 'company' twice"),
])
def test_unusable_options_are_usage_errors(device: Device, option: str, value, message: str) -> None:
    from crm.errors import UsageError
    with pytest.raises(UsageError) as info:
        import_file(device, "accounts", CSV_DIR / "accounts.csv", **{option: value})
    assert message in info.value.message and info.value.exit_code == 2
    assert counts(device) == (0, 0)


def test_the_delimiter_applies_to_csv_only(device: Device) -> None:
    from crm.errors import UsageError
    with pytest.raises(UsageError, match="CSV"):
        import_file(device, "accounts", CSV_DIR / "accounts.jsonl", delimiter=";")


def test_extra_columns_are_refused_unless_ignored_and_columns_can_be_mapped(device: Device) -> None:
    path = CSV_DIR / "accounts_extra_columns.csv"
    with pytest.raises(ImportFileError) as info:
        import_file(device, "accounts", path)
    assert "unknown column(s) 'Company', 'Account No', 'Region', 'Sales YTD', ''" in info.value.message
    assert "--ignore-unknown-columns" in info.value.message and "--map" in info.value.message
    with pytest.raises(ImportFileError, match="lacks the required column"):
        import_file(device, "accounts", path, ignore_unknown_columns=True)  # Company is not name
    report = import_file(device, "accounts", path, ignore_unknown_columns=True, skip_invalid=True,
                         mapping=["Company=name", "account no=external_ref"])
    assert (report.created, report.total_rows) == (2, 4)
    assert [(e.line, e.reason.split(":")[0]) for e in report.invalid] == [(4, "name"), (5, "email")]
    assert report.ignored_columns == ["Region", "Sales YTD", ""]
    assert report.to_json()["ignored_columns"] == ["Region", "Sales YTD", ""]
    refs = by_ref(device)
    assert refs["ACC-1001"]["name"] == "Harbour Deli" and refs["ACC-1001"]["city"] == "Bristol"
    assert set(refs) == {"ACC-1001", "ACC-7002"}


def test_a_mapping_can_drop_a_column_and_must_name_one_the_file_has(device: Device, tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "Company,Notes,city\nAcme,call Tuesday,Leeds\n")
    report = import_file(device, "accounts", path, mapping=["Company=name", "Notes="])
    assert report.created == 1 and report.ignored_columns == ["Notes"]
    with pytest.raises(ImportFileError, match="--map names column 'Firm'.*Company, Notes, city"):
        import_file(device, "accounts", path, mapping=["Firm=name"])
    with pytest.raises(ImportFileError, match="city appear more than once"):
        import_file(device, "accounts", path, mapping=["Company=name", "Notes=city"])


def test_mapping_and_ignoring_apply_to_json_lines_keys(device: Device, tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", '{"Company": "Acme", "Region": "North"}\n{"Company": "Beta"}\n')
    with pytest.raises(ImportFileError):
        import_file(device, "accounts", path, mapping=["Company=name"])
    report = import_file(device, "accounts", path, mapping=["Company=name"], ignore_unknown_columns=True)
    assert report.created == 2 and report.ignored_columns == ["Region"]


def test_a_dry_run_writes_nothing_and_reports_what_the_import_will_do(device: Device, tmp_path: Path) -> None:
    import_file(device, "accounts", write(tmp_path, "old.csv", "name,phone,external_ref\nAcme,1,R1\nBeta,2,R2\n"))
    device.delete("account", by_ref(device)["R2"]["id"])
    path = write(tmp_path, "a.csv", "name,phone,external_ref\nAcme,9,R1\nBeta,2,R2\nGamma,3,R3\n"
                                    "Plain,,\nPlain,,\nBad,,R4\n,,R5\n")
    before, changes, exported = counts(device), total_changes(device), device.export()
    dry = import_file(device, "accounts", path, dry_run=True, skip_invalid=True, batch_size=2)
    assert (counts(device), total_changes(device), device.export()) == (before, changes, exported)
    assert (dry.created, dry.updated, dry.unchanged, [e.line for e in dry.invalid]) == (3, 1, 2, [8])
    assert dry.to_json()["dry_run"] is True
    real = import_file(device, "accounts", path, skip_invalid=True, batch_size=2)
    assert {k: v for k, v in dry.to_json().items() if k not in ("dry_run", "read")} == real.to_json()
    again = import_file(device, "accounts", path, dry_run=True, skip_invalid=True)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 6)
    with pytest.raises(ImportFileError, match="1 of 7 rows are invalid.*nothing was imported"):
        import_file(device, "accounts", path, dry_run=True)


def test_a_dry_run_says_how_the_file_was_read(device: Device) -> None:
    report = import_file(device, "accounts", CSV_DIR / "accounts_excel_semicolon.csv", encoding="cp1252",
                         dry_run=True)
    assert report.to_json()["read"] == {"format": "csv", "encoding": "cp1252", "delimiter": ";",
                                        "delimiter_from": "sep= line"}
    assert counts(device) == (0, 0)


def test_the_errors_file_holds_the_rejected_rows_ready_to_fix_and_import(device: Device, tmp_path: Path) -> None:
    errors = tmp_path / "rejected.csv"
    report = import_file(device, "accounts", CSV_DIR / "accounts_excel_semicolon.csv", encoding="cp1252",
                         errors_path=errors)
    assert report.invalid == [] and read_errors(errors) == []  # written even when empty: no stale rows
    source = write(tmp_path, "src.csv", "sep=;\r\nName;E-mail;Region;External Ref\r\n"
                                        "Good;g@example.com;N;R1\r\n;x@example.com;S;R2\r\n"
                                        "Bad Mail;nope;E;R3\r\nShort;only\r\n")
    report = import_file(device, "accounts", source, skip_invalid=True, ignore_unknown_columns=True,
                         errors_path=errors)
    assert report.created == 1 and report.to_json()["errors_file"] == str(errors)
    rows = read_errors(errors)
    assert [r["crm_line"] for r in rows] == ["4", "5", "6"]
    assert [list(r)[:2] for r in rows][0] == ["crm_line", "crm_reason"]
    assert rows[0]["Name"] == "" and rows[0]["Region"] == "S" and "name" in rows[0]["crm_reason"]
    assert rows[1]["E-mail"] == "nope" and "email" in rows[1]["crm_reason"]
    assert "has 2 values" in rows[2]["crm_reason"]
    assert b";" not in errors.read_bytes().split(b"\n")[0]  # a plain comma CSV whatever the source used
    fixed = errors.read_text(encoding="utf-8-sig").replace(",,x@example.com", ",Named,x@example.com")
    fixed = fixed.replace(",nope,", ",ok@example.com,").replace("Short,only", "Short,s@example.com,W,R6")
    errors.write_text(fixed, encoding="utf-8-sig")
    again = import_file(device, "accounts", errors, ignore_unknown_columns=True)  # crm_ columns are skipped
    assert (again.created, again.invalid, again.ignored_columns) == (3, [], ["Region"])
    assert set(by_ref(device)) >= {"R1", "R2", "R3", "R6"}


def test_a_refused_import_still_writes_its_errors_file(device: Device, tmp_path: Path) -> None:
    errors = tmp_path / "rejected.csv"
    errors.write_text("stale\n")
    with pytest.raises(ImportFileError, match=f"rejected rows are in {errors}"):
        import_file(device, "accounts", CSV_DIR / "accounts_invalid.csv", errors_path=errors)
    assert [r["crm_line"] for r in read_errors(errors)] == ["3", "4"]
    assert read_errors(errors)[1]["email"] == "not-an-email"
    assert counts(device) == (0, 0)
    dry = tmp_path / "dry.csv"
    import_file(device, "accounts", CSV_DIR / "accounts_invalid.csv", errors_path=dry, dry_run=True,
                skip_invalid=True)
    assert read_errors(dry) == read_errors(errors) and counts(device) == (0, 0)


def test_json_lines_errors_file_keeps_each_rejected_line(device: Device, tmp_path: Path) -> None:
    errors = tmp_path / "rejected.jsonl"
    path = write(tmp_path, "a.jsonl", '{"name": "Good"}\n{"name": "Bad", "email": "nope"}\n[1]\n')
    import_file(device, "accounts", path, skip_invalid=True, errors_path=errors)
    lines = [json.loads(line) for line in errors.read_text(encoding="utf-8").splitlines()]
    assert [(x["crm_line"], x.get("email"), x.get("crm_raw")) for x in lines] == [(2, "nope", None), (3, None, "[1]")]
    fixed = write(tmp_path, "b.jsonl", json.dumps({**lines[0], "email": "a@b.example"}) + "\n")
    assert import_file(device, "accounts", fixed).created == 1


def test_the_errors_file_is_written_whole_or_not_at_all(device: Device, tmp_path: Path, monkeypatch) -> None:
    from crm.errors import UsageError
    with pytest.raises(ImportFileError, match="cannot write the errors file"):
        import_file(device, "accounts", CSV_DIR / "accounts_invalid.csv", skip_invalid=True,
                    errors_path=tmp_path / "no-such-dir" / "rejected.csv")
    assert counts(device) == (0, 0)  # refused before any batch
    source = write(tmp_path, "a.csv", "name,email\nGood,g@example.com\nBad,nope\n")
    with pytest.raises(UsageError, match="would overwrite the file being imported"):
        import_file(device, "accounts", source, skip_invalid=True, errors_path=source)
    errors = tmp_path / "rejected.csv"
    errors.write_text("the previous run's rows\n")
    import os as _os
    real_replace = _os.replace

    def crash(src, dst):
        raise KeyboardInterrupt  # killed just before the rename

    monkeypatch.setattr("crm.importer.os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        import_file(device, "accounts", source, skip_invalid=True, errors_path=errors)
    monkeypatch.setattr("crm.importer.os.replace", real_replace)
    assert errors.read_text() == "the previous run's rows\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "home", "rejected.csv"]
    assert counts(device) == (0, 0)


def test_a_spreadsheet_export_and_its_plain_csv_import_as_the_same_records(device: Device, tmp_path: Path) -> None:
    """The import key is a hash of the values, not of the bytes: the same rows from Excel and from
    a UTF-8 comma file are one set of records, so switching exports never duplicates."""
    rows = [["name", "city", "address"], ["Café, Ltd", "Köln", "Line 1\nLine 2"], ["Plain", "Ely", ""]]
    import csv
    import io
    plain = io.StringIO()
    csv.writer(plain).writerows(rows)
    excel = io.StringIO()
    csv.writer(excel, delimiter=";", lineterminator="\r\n").writerows(rows)
    first = import_file(device, "accounts", write(tmp_path, "a.csv", plain.getvalue()))
    second = import_file(device, "accounts", write(tmp_path, "b.csv", ("sep=;\r\n" + excel.getvalue()).encode("cp1252")),
                         encoding="cp1252")
    assert (first.created, second.created, second.unchanged) == (2, 0, 2)


def test_tsv_files_are_csv_with_tabs(device: Device, tmp_path: Path) -> None:
    report = import_file(device, "accounts", write(tmp_path, "a.tsv", "name\tcity\nAcme\tLeeds\n"))
    assert (report.created, report.delimiter) == (1, "\t")


# -- the same through the command line -------------------------------------------------------
def cli(home: Path, *args: str):
    from typer.testing import CliRunner

    from cli.main import app
    return CliRunner().invoke(app, ["--home", str(home), "import", *args])


def test_cli_imports_a_spreadsheet_export_with_every_new_option(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Device.init(home, rep="Ann").close()
    errors = tmp_path / "rejected.csv"
    args = ["accounts", str(CSV_DIR / "accounts_extra_columns.csv"), "--map", "Company=name",
            "--map", "Account No=external_ref", "--ignore-unknown-columns", "--skip-invalid",
            "--errors", str(errors)]
    dry = cli(home, *args, "--dry-run", "--delimiter", ",", "--encoding", "utf-8", "--json")
    assert dry.exit_code == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert (report["dry_run"], report["created"], len(report["invalid"])) == (True, 2, 2)
    assert report["read"] == {"format": "csv", "encoding": "utf-8", "delimiter": ",", "delimiter_from": "--delimiter"}
    assert [r["crm_line"] for r in read_errors(errors)] == ["4", "5"]
    dev = Device.open(home)
    assert counts(dev) == (0, 0)
    dev.close()
    text = cli(home, *args, "--dry-run")
    assert text.exit_code == 0, text.stderr
    assert "dry run" in text.stdout and "2 would be created" in text.stdout and "line 5:" in text.stdout
    assert "ignored columns: Region, Sales YTD, ''" in text.stdout
    done = cli(home, *args, "--json")
    assert done.exit_code == 0 and json.loads(done.stdout)["created"] == 2
    assert "dry_run" not in json.loads(done.stdout)


def test_cli_reads_a_semicolon_cp1252_file_and_refuses_unusable_options(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Device.init(home, rep="Ann").close()
    path = str(CSV_DIR / "accounts_excel_semicolon.csv")
    refused = cli(home, "accounts", path)
    assert refused.exit_code == 9 and "line 3: not valid UTF-8" in refused.stderr and "Traceback" not in refused.stderr
    ok = cli(home, "accounts", path, "--encoding", "cp1252", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["created"] == 4
    for option, value in [("--delimiter", "ab"), ("--encoding", "klingon"), ("--map", "nonsense")]:
        bad = cli(home, "accounts", path, option, value)
        assert bad.exit_code == 2 and option in bad.stderr and bad.stdout == "", (option, bad.stderr)
    tab = cli(home, "accounts", str(CSV_DIR / "accounts_unicode.tsv"), "--delimiter", "\\t", "--json")
    assert tab.exit_code == 0 and json.loads(tab.stdout)["created"] == 3


def test_contacts_from_a_spreadsheet_name_their_account_through_a_mapped_column(device: Device, tmp_path: Path) -> None:
    import_file(device, "accounts", CSV_DIR / "accounts.csv")
    text = ("sep=;\r\nKunde;Name;Rolle;E-Mail\r\nACC-1001;Jürgen Weiß;Einkäufer;jw@example.com\r\n"
            "ACC-9999;Zoë Brandt;Inhaberin;\r\nACC-1002;Anne Roß;;\r\n")
    path = write(tmp_path, "kontakte.csv", text.encode("cp1252"))
    errors = tmp_path / "abgelehnt.csv"
    report = import_file(device, "contacts", path, encoding="cp1252", mapping=["Kunde=account", "Rolle=role"],
                         skip_invalid=True, errors_path=errors)
    assert (report.created, [e.line for e in report.invalid]) == (2, [4])
    contacts = {c["name"]: c for c in device.list("contact")}
    assert contacts["Jürgen Weiß"]["role"] == "Einkäufer"
    assert contacts["Jürgen Weiß"]["account"] == by_ref(device)["ACC-1001"]["id"]
    rows = read_errors(errors)
    assert [(r["Kunde"], r["Name"]) for r in rows] == [("ACC-9999", "Zoë Brandt")]
    assert "no account 'ACC-9999'" in rows[0]["crm_reason"]


def test_imported_accounts_without_a_territory_take_the_reps_default(device: Device, tmp_path: Path) -> None:
    from crm.store import MetaKey

    device.set_settings({MetaKey.DEFAULT_TERRITORY: "north"})
    path = write(tmp_path, "t.csv", "name,city,territory\nA,Leeds,\nB,York,south\n")
    assert import_file(device, "accounts", path, dry_run=True).created == 2
    assert import_file(device, "accounts", path).created == 2
    assert sorted((a["name"], a["territory"]) for a in device.list("account")) == [("A", "north"), ("B", "south")]
