"""Finding records (issue 14, item 1): search and filters that ignore case and accents, a local
index kept in the write's own transaction (local writes and pulled ops alike) and out of the
outbox and the export, and one resolver that takes a short id, an id's start, an external ref or a
name wherever an id is taken."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from crm import Change, Device
from crm.errors import AmbiguousError, NotFoundError
from crm.ids import new_id
from crm.search import fold, key_of, short_id
from crm.store import MIGRATIONS, SCHEMA_VERSION
from tests.support import outbox_ops


@pytest.fixture
def device(tmp_path: Path):
    dev = Device.init(tmp_path / "home", rep="rep-1")
    yield dev
    dev.close()


def ids(rows) -> list[str]:
    return [row["id"] for row in rows]


@pytest.mark.parametrize(("text", "folded"), [
    ("Café Müller", "cafe muller"), ("ZÜRICH", "zurich"), ("São Paulo", "sao paulo"),
    ("Łódź", "lodz"), ("Ærøskøbing", "aeroskobing"), ("Straße", "strasse"), ("ﬁne", "fine"),
])
def test_folding_drops_case_and_accents_and_maps_letters_that_do_not_decompose(text: str, folded: str) -> None:
    assert fold(text) == folded


def test_search_ignores_case_and_accents_over_accounts_contacts_and_notes(device: Device) -> None:
    cafe = device.create("account", {"name": "Café Müller", "city": "ZÜRICH"})["id"]
    lodz = device.create("account", {"name": "Łódź Corner", "city": "São Paulo"})["id"]
    sam = device.create("contact", {"account": cafe, "name": "Sam Müller-SSon"})["id"]
    note = device.add_note("Wants the CAFÉ catalogue", account=lodz)["id"]
    assert ids(device.search("cafe muller")[0]) == [cafe]
    assert ids(device.search("MULLER")[0]) == [cafe, sam]  # accounts first, then contacts
    assert ids(device.search("zurich")[0]) == [cafe]
    assert ids(device.search("lodz")[0]) == [lodz]
    assert ids(device.search("sao paulo")[0]) == [lodz]
    assert ids(device.search("catalog")[0]) == [note]  # the start of a word is enough
    assert ids(device.search("cafe")[0]) == [cafe, note]
    assert device.search("nothing here")[0] == []
    assert device.search("  ")[0] == []
    rows, total = device.search("cafe", limit=1)
    assert (ids(rows), total) == ([cafe], 2)


def test_ls_filters_city_exactly_postcode_by_its_start_and_name_by_words(device: Device) -> None:
    leeds = device.create("account", {"name": "Corner Store", "city": "Leeds", "postcode": "LS1 4AP"})["id"]
    upper = device.create("account", {"name": "Café Leeds", "city": "LEEDS", "postcode": "ls14ap"})["id"]
    device.create("account", {"name": "Airport Shop", "city": "Leeds Bradford", "postcode": "LS19 7TU"})
    zurich = device.create("account", {"name": "Zürich Kiosk", "city": "Zürich"})["id"]

    def ls(**match):
        return ids(device.list("account", match=match))

    assert ls(city="leeds") == [leeds, upper]  # not "Leeds Bradford": the city, not a word of it
    assert ls(city="zurich") == ls(city="ZÜRICH") == [zurich]
    assert ls(postcode="ls1 4ap") == ls(postcode="LS14AP") == [leeds, upper]
    assert len(ls(postcode="ls1")) == 3
    assert ls(name="cafe") == [upper] and ls(name="corn sto") == [leeds] and ls(name="zurich") == [zurich]
    assert ls(name="store", city="york") == []
    rows, total = device.list_page("account", match={"city": "leeds"}, limit=1)
    assert (ids(rows), total) == ([leeds], 2)
    device.delete("account", upper)
    assert ls(city="leeds") == [leeds]
    assert ids(device.list("account", match={"city": "leeds"}, include_deleted=True)) == [leeds, upper]


def test_the_index_follows_edits_deletes_and_pulled_ops_in_the_same_transaction(tmp_path: Path) -> None:
    one = Device.init(tmp_path / "one", rep="rep-1")
    two = Device.init(tmp_path / "two", rep="rep-2")
    rid = one.create("account", {"name": "Old Name", "city": "York"})["id"]
    one.edit("account", rid, {"name": "Nouvelle Épicerie"})
    assert one.search("old")[0] == [] and ids(one.search("epicerie")[0]) == [rid]
    gone = one.create("account", {"name": "Gone Shop"})["id"]
    one.delete("account", gone)
    assert one.search("gone")[0] == []
    # the other device receives the ops as sync applies them
    two.apply_remote(outbox_ops(one), cursor="1")
    assert ids(two.search("epicerie")[0]) == [rid] and two.search("gone")[0] == []
    assert two.resolve("account", short_id(rid)) == rid
    one.close()
    two.close()


def _index(device: Device) -> tuple[list, int]:
    """The find rows and the FTS5 entries (their count: a contentless table keeps no text)."""
    conn = device.store.conn
    return (conn.execute("SELECT k, id, s FROM find ORDER BY k").fetchall(),
            conn.execute("SELECT count(*) FROM search WHERE search MATCH 'shop'").fetchone()[0])


@pytest.mark.parametrize("lookup", ["search", "resolve", "reopen", "catch_up_index"])
def test_a_bulk_pull_leaves_new_records_out_of_the_index_until_the_next_lookup(tmp_path: Path, lookup: str) -> None:
    """A device filling up (a pull page of 500 or more records it never had, at least as many as
    it has indexed) writes them without their index entries and a meta row saying so; the next
    lookup, the next opening of the store or the agent after its sync indexes them first. Records
    pulled or written meanwhile are indexed once, a deleted one not at all."""
    from crm.search import DEFER_AT_LEAST, rebuild
    from crm.store import MetaKey

    one = Device.init(tmp_path / "one", rep="rep-1")
    one.write([Change("account", new_id(), {"name": f"Shop {i}", "city": "Leeds"}, {}, "create")
               for i in range(DEFER_AT_LEAST + 100)])
    bulk = outbox_ops(one)
    two = Device.init(tmp_path / "two", rep="rep-2")
    mine = two.create("account", {"name": "Own Shop"})["id"]
    two.apply_remote(bulk, cursor="1")
    assert two.store.get_meta(MetaKey.SEARCH_BEHIND) == "1"
    assert [rid for _, rid, _ in _index(two)[0]] == [mine]  # the pulled ones wait
    # pulled again before the catch-up, in small pages: an edit (indexed now), a delete
    renamed, deleted = bulk[0].record_id, bulk[1].record_id
    one.store.conn.execute("DELETE FROM outbox")
    one.edit("account", renamed, {"name": "Épicerie Centrale"})
    one.delete("account", deleted)
    two.apply_remote(outbox_ops(one), cursor="2")
    assert two.store.get_meta(MetaKey.SEARCH_BEHIND) == "1"
    if lookup == "search":
        assert ids(two.search("epicerie")[0]) == [renamed]
    elif lookup == "resolve":
        assert two.get("account", "Shop 17")["name"] == "Shop 17"
    elif lookup == "reopen":
        two.close()
        two = Device.open(tmp_path / "two")
    else:
        assert two.catch_up_index() == DEFER_AT_LEAST + 100 - 2  # all but the edited and the deleted
    assert not two.store.get_meta(MetaKey.SEARCH_BEHIND)
    assert ids(two.search("epicerie")[0]) == [renamed] and two.search("shop 599")[1] == 1
    assert two.search("shop 42")[0][0]["name"] == "Shop 42" and two.search("centrale")[1] == 1
    caught_up = _index(two)
    assert len(caught_up[0]) == DEFER_AT_LEAST + 100  # each live record once: the 600 pulled but the deleted, and its own
    with two.store.write() as conn:
        rebuild(conn)
    assert _index(two) == caught_up  # the same index as built from scratch
    one.close()
    two.close()


def test_a_small_pull_and_a_device_holding_more_are_indexed_in_the_pages_transaction(tmp_path: Path) -> None:
    from crm.search import DEFER_AT_LEAST
    from crm.store import MetaKey

    one = Device.init(tmp_path / "one", rep="rep-1")
    two = Device.init(tmp_path / "two", rep="rep-2")
    two.write([Change("account", new_id(), {"name": f"Held {i}"}, {}, "create") for i in range(DEFER_AT_LEAST + 1)])
    one.write([Change("account", new_id(), {"name": f"Shop {i}"}, {}, "create") for i in range(DEFER_AT_LEAST)])
    two.apply_remote(outbox_ops(one), cursor="1")  # 500 new, fewer than the 501 indexed
    assert not two.store.get_meta(MetaKey.SEARCH_BEHIND) and two.search("shop")[1] == DEFER_AT_LEAST
    three = Device.init(tmp_path / "three", rep="rep-3")
    three.apply_remote(outbox_ops(one)[:DEFER_AT_LEAST - 1], cursor="1")  # under 500
    assert not three.store.get_meta(MetaKey.SEARCH_BEHIND) and three.search("shop")[1] == DEFER_AT_LEAST - 1
    for device in (one, two, three):
        device.close()


def test_the_index_is_neither_queued_nor_exported(device: Device, tmp_path: Path) -> None:
    plain = Device.init(tmp_path / "plain", rep="rep-1")
    rid = device.create("account", {"name": "Café"})["id"]
    assert device.outbox()["pending"] == 1
    body = json.loads(device.store.conn.execute("SELECT body FROM outbox").fetchone()[0])
    assert set(body["fields"]) == {"name", "owner"}
    export = device.export()
    assert export["account"] == [{"id": rid, "name": "Café", "owner": "rep-1"}]
    assert set(export) == set(plain.export())
    plain.close()


def test_an_older_store_is_migrated_and_its_records_indexed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    dev = Device.init(home, rep="rep-1")
    rid = dev.create("account", {"name": "Crème Brûlée Bakery"})["id"]
    dev.close()
    with sqlite3.connect(home / "crm.sqlite3") as conn:  # what a schema-2 store looks like
        conn.execute("DROP TABLE search")
        conn.execute("DROP TABLE find")
        conn.execute("DROP TABLE sent")  # kept ops as schema 2 kept them (schema 4 packs them)
        conn.execute(MIGRATIONS[2])
        conn.execute("PRAGMA user_version = 2")
    dev = Device.open(home)
    assert ids(dev.search("creme brulee")[0]) == [rid]
    assert dev.store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    dev.close()


def test_short_ids_come_from_the_random_tail() -> None:
    rid = "01a23711-e466-7206-8c2f-646ead462f3d"
    assert short_id(rid) == "ad462f3d"
    # the entity's code, then milliseconds and 12 random bits: one range per entity, in id order
    assert key_of(rid, "account") == 1 << 60 | int("01a23711e466" + "206", 16)
    assert key_of(rid, "note") == 5 << 60 | int("01a23711e466" + "206", 16)
    assert short_id("not-a-uuid") == "not-a-uuid" and 0 <= key_of("not-a-uuid", "account") - (1 << 60) < 2 ** 60


def test_resolve_takes_an_id_its_start_a_short_id_an_external_ref_or_a_name(device: Device) -> None:
    rid = device.create("account", {"name": "Café Müller", "external_ref": "ACC-1002"})["id"]
    other = device.create("account", {"name": "Other"})["id"]
    for given in (rid, rid.upper(), f" {rid} ", short_id(rid), short_id(rid)[:4], short_id(rid).upper(),
                  "ACC-1002", "acc-1002", "cafe muller", "CAFÉ  MÜLLER"):
        assert device.resolve("account", given) == rid, given
    assert device.resolve("account", other[:-3]) == other
    with pytest.raises(NotFoundError):
        device.resolve("account", "cafe")  # a name is taken whole
    with pytest.raises(NotFoundError):
        device.resolve("account", "abc")  # under four characters is not an id


def test_an_ambiguous_name_lists_the_candidates(device: Device) -> None:
    first = device.create("account", {"name": "Corner Store"})["id"]
    second = device.create("account", {"name": "CORNER STORE"})["id"]
    with pytest.raises(AmbiguousError) as raised:
        device.resolve("account", "corner store")
    assert raised.value.exit_code == 13
    assert first in raised.value.message and second in raised.value.message
    assert {c["id"] for c in raised.value.details["candidates"]} == {first, second}
    # the start every id made in the same minute shares is ambiguous too, never a guess
    with pytest.raises(AmbiguousError):
        device.resolve("account", first[:8])


def test_references_are_stored_as_full_ids(device: Device) -> None:
    rid = device.create("account", {"name": "Café Müller", "external_ref": "ACC-1002"})["id"]
    contact = device.create("contact", {"account": "ACC-1002", "name": "Sam"})
    assert contact["account"] == rid
    visit = device.create("visit", {"account": "café müller", "outcome": "met"})
    assert visit["account"] == rid
    order = device.add_order({"account": short_id(rid)}, [])
    assert order["account"] == rid
    note = device.add_note("x", visit=short_id(visit["id"]))
    assert (note["visit"], note["account"]) == (visit["id"], rid)
    assert ids(device.list("visit", parent="acc-1002")) == [visit["id"]]
    assert device.get("order", short_id(order["id"]))["id"] == order["id"]
    with pytest.raises(NotFoundError):
        device.list("visit", parent="no such account")


def test_a_taken_key_and_an_id_crm_did_not_make_are_still_found(device: Device) -> None:
    from crm import Change

    rid = "01a23711-e466-7206-8c2f-646ead462f3d"
    with device.transaction() as conn:  # another record already holds this id's key
        conn.execute("INSERT INTO find (k, id, s) VALUES (?, 'someone-else', NULL)", (key_of(rid, "account"),))
    device.write([Change("account", rid, {"name": "Probed Shop", "owner": "rep-1"}, {}, "create"),
                  Change("account", "shop-42", {"name": "Server Made", "owner": "rep-1"}, {}, "create")])
    assert ids(device.search("probed")[0]) == [rid] and ids(device.search("server made")[0]) == ["shop-42"]
    assert device.resolve("account", short_id(rid)) == rid and device.resolve("account", "server made") == "shop-42"
    device.edit("account", rid, {"name": "Renamed"})
    assert device.search("probed")[0] == [] and ids(device.search("renamed")[0]) == [rid]


def test_the_index_is_rebuilt_when_the_folding_changed(tmp_path: Path) -> None:
    """A contentless index forgets an entry only given the words it was given: a store indexed by
    other folding rules (another crm, another Python's Unicode data) is indexed again on opening."""
    home = tmp_path / "home"
    dev = Device.init(home, rep="rep-1")
    rid = dev.create("account", {"name": "Łódź Corner"})["id"]
    dev.close()
    with sqlite3.connect(home / "crm.sqlite3") as conn:
        conn.execute("INSERT INTO search (search) VALUES ('delete-all')")
        conn.execute("DELETE FROM find")
        conn.execute("UPDATE meta SET value = '0/unicode-0' WHERE key = 'search_fold'")
    dev = Device.open(home)
    assert ids(dev.search("lodz")[0]) == [rid]
    dev.close()
    with sqlite3.connect(home / "crm.sqlite3") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'search_fold'").fetchone()[0] != "0/unicode-0"


@pytest.mark.parametrize("ref", ["\ud800", "Shop\udcff", "\udced\udca0\udc80"])
def test_a_reference_no_record_can_have_is_not_found_not_an_internal_error(device: Device, ref: str) -> None:
    """A lone surrogate (what undecodable argv bytes become) cannot be stored, so it names nothing:
    exit 4 like any unknown id, and nothing written (Hypothesis found `contact add --account=\\ud800`)."""
    before = device.outbox(limit=0)["pending"]
    for write in (lambda: device.create("contact", {"account": ref, "name": "x"}),
                  lambda: device.edit("account", ref, {"name": "y"})):
        with pytest.raises(NotFoundError):
            write()
    assert device.outbox(limit=0)["pending"] == before
