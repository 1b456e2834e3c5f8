"""Finding records: case- and accent-insensitive search, and every way a rep may name a record.

The index is derived data, local to the device store: it is written in the same transaction as
the records it describes (``reindex``, called by ``Device.write`` and ``Device.apply_remote``
before their upsert), never enters the outbox, the sync protocol or the canonical export, and can
be rebuilt from ``records`` at any time (``rebuild``; the schema-3 migration does that). A bulk pull
page of records new to the device is the exception (``should_defer``): they are indexed by
``catch_up`` before the next lookup (meta row ``search_behind``, docs/architecture.md).

Two tables (crm/store.py, schema version 3):

* ``find (k INTEGER PRIMARY KEY, id, s)``: one row per live (not deleted) record. ``k`` is the
  record's entity (3 bits: ``ENTITY_CODE``) then the start of its UUIDv7 (48 bits of milliseconds,
  12 random bits: ``key_of``): each entity is one range of keys, in the ids' order, close together,
  which keeps the FTS5 doclists (delta-coded rowids) small and lets a query walk one entity;
  ``s`` (indexed) is the short id shown in tables, the id's last 8 hex digits, as an integer, so
  the start of a short id is a range of ``s``.
* ``search``: an FTS5 *contentless* table (columns name, city, postcode, ref, other; rowid = k)
  holding the folded text of accounts, contacts and notes; it stores only the inverted index, by
  column without word positions (``detail=column``): a query is words ANDed, each a word or a
  word's start, and what needs an exact value (a city, a name, a ref) is checked on the record.
  A contentless table forgets what it indexed, so removing an entry gives the old values again:
  ``reindex`` recomputes them from the record's stored row before it is overwritten.

Folding (``fold``): NFKD, drop combining marks, casefold; letters that do not decompose are
mapped by hand (Ł→l, Ø→o, Đ→d, Æ→ae, Œ→oe, Þ→th, ß→ss, ı→i, Ħ→h), so "Łódź" is found as "lodz"
and "Café Müller" as "cafe muller". What is indexed depends on these rules and on Python's Unicode
database; a contentless index can only forget an entry given the very words it was given, so the
store records both (``FOLD_VERSION``, meta row ``search_fold``) and ``Device`` rebuilds the index
when they changed (bump ``_FOLD_RULES`` whenever ``fold`` or ``_doc`` changes).
"""

from __future__ import annotations

import json
import re
import sqlite3
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .errors import AmbiguousError

__all__ = ["INDEXED", "SCHEMA", "catch_up", "fold", "key_of", "rebuild", "reindex", "resolve", "search",
           "should_defer", "short_id"]

# The statements of schema version 3 (crm/store.py runs them, then ``rebuild``).
SCHEMA = """
CREATE TABLE find (k INTEGER PRIMARY KEY, id TEXT NOT NULL, s INTEGER);
CREATE INDEX find_short ON find (s) WHERE s IS NOT NULL;
CREATE VIRTUAL TABLE search USING fts5(name, city, postcode, ref, other, content='', columnsize=0,
    detail=column, tokenize='unicode61 remove_diacritics 2');
"""

_FOLD_RULES = 1
FOLD_VERSION = f"{_FOLD_RULES}/unicode-{unicodedata.unidata_version}"
INDEXED = ("account", "contact", "note")  # the entities whose text is searchable
# An entity's code in the top bits of its keys: stored in every store, so never renumber one.
ENTITY_CODE = {"account": 1, "contact": 2, "visit": 3, "order": 4, "note": 5, "product": 6}
SHORT_LEN = 8  # hex digits of a short id
MIN_SHORT = 4  # the fewest hex digits of a short id (or of an id's start) that may name a record
MAX_CANDIDATES = 10  # how many candidates an ambiguity lists
_PROBE = 16  # how far past its key a record may sit when another record's key took it (never, in practice)
_TAIL_BITS = 60

_UNDECOMPOSED = str.maketrans({"ł": "l", "Ł": "l", "ø": "o", "Ø": "o", "đ": "d", "Đ": "d", "ħ": "h", "Ħ": "h",
                               "ı": "i", "æ": "ae", "Æ": "ae", "œ": "oe", "Œ": "oe", "þ": "th", "Þ": "th",
                               "ð": "d", "Ð": "d", "ß": "ss"})
_WORD = re.compile(r"[^\W_]+")
_HEX = re.compile(r"[0-9a-f]+")


def fold(text: str) -> str:
    """``text`` without case or accents: NFKD, no combining marks, casefolded, Ł→l and the like."""
    if text.isascii():  # most text: nothing to decompose
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.translate(_UNDECOMPOSED).casefold())
    if decomposed.isascii():
        return decomposed
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def words(text: str) -> list[str]:
    """The folded words of ``text`` (letters and digits; everything else separates)."""
    return _WORD.findall(fold(text))


def same(a: Any, b: str) -> bool:
    """Whether a stored value reads as ``b``, ignoring case, accents, spacing and punctuation."""
    return isinstance(a, str) and words(a) == words(b)


def compact_postcode(text: str) -> str:
    return "".join(words(text))


def _hex(rid: str) -> str | None:
    digits = rid.replace("-", "")
    return digits if len(digits) == 32 and _HEX.fullmatch(digits) else None


def _block(entity: str) -> tuple[int, int]:
    """The keys of ``entity``'s records: [start, end)."""
    start = ENTITY_CODE.get(entity, 7) << _TAIL_BITS
    return start, start + (1 << _TAIL_BITS)


def key_of(rid: str, entity: str) -> int:
    """The index key of a record: its entity's code, then for a UUID its first 60 bits but the
    version digit (a UUIDv7's milliseconds and 12 random bits: keys sort as the ids do), for any
    other id a hash."""
    return _key(entity, rid, _hex(rid))


def _key(entity: str, rid: str, digits: str | None) -> int:
    """``key_of`` for a caller that has ``_hex(rid)`` already."""
    if digits is not None:
        tail = int(digits[:12] + digits[13:16], 16)
    else:
        import hashlib  # only for ids crm did not make

        tail = int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=8).digest(), "big") >> (64 - _TAIL_BITS)
    return _block(entity)[0] | tail


def short_id(rid: str) -> str:
    """What tables show of an id: the last 8 hex digits of a UUID (random in a UUIDv7, unlike its
    start, which every record made in the same minute shares); another id whole."""
    digits = _hex(rid)
    return digits[-SHORT_LEN:] if digits is not None else rid


def _doc(entity: str, values: dict[str, Any]) -> tuple[str, str, str, str, str] | None:
    """The folded text of a record, by search column, or None when its entity is not searchable."""
    get = values.get
    if entity == "account":
        postcode = get("postcode")
        return (_folded(get("name")), _folded(get("city")), compact_postcode(postcode) if postcode else "",
                _folded(get("external_ref")), _folded(get("address")))
    if entity == "contact":
        return _folded(get("name")), "", "", _folded(get("external_ref")), _folded(get("role"))
    if entity == "note":
        return "", "", "", "", _folded(get("text"))
    return None


def _folded(value: Any) -> str:
    return fold(value) if isinstance(value, str) else ""


# -- keeping the index -------------------------------------------------------------------------
_INSERT = "INSERT INTO search (rowid, name, city, postcode, ref, other) VALUES (?, ?, ?, ?, ?, ?)"
_DELETE = "INSERT INTO search (search, rowid, name, city, postcode, ref, other) VALUES ('delete', ?, ?, ?, ?, ?, ?)"


def _locate(conn: sqlite3.Connection, entity: str, rid: str) -> int | None:
    """The key a record's ``find`` row sits at, or None when it has none."""
    k = key_of(rid, entity)
    row = conn.execute("SELECT k FROM find WHERE k >= ? AND k < ? AND id = ?", (k, k + _PROBE, rid)).fetchone()
    return row[0] if row else None


def reindex(conn: sqlite3.Connection, rows: Iterable[Sequence[Any]],
            known: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:
    """Bring the index in line with ``rows`` (records' rows: entity, id, data, meta, parent,
    deleted, ...) about to be written; call it inside the write's transaction, BEFORE the rows
    replace what is stored (the old text is read from the stored rows). ``known``: the values of
    rows by (entity, id) where the caller has them (they are the row's ``data``, not parsed again);
    a create's values may be its op's fields (the same values: only the text fields are read)."""
    known = known or {}
    latest: dict[tuple[str, str], tuple[str, int]] = {}
    for row in rows:
        latest[(row[0], row[1])] = (row[2], row[5])
    if not latest:
        return
    by_entity: dict[str, list[str]] = {}
    for entity, rid in latest:
        by_entity.setdefault(entity, []).append(rid)
    old: dict[tuple[str, str], tuple[str, int]] = {}
    for entity, rids in by_entity.items():
        for rid, data, deleted in conn.execute(
                "SELECT id, data, deleted FROM records WHERE entity = ? AND id IN (SELECT value FROM json_each(?))",
                (entity, json.dumps(rids))):
            old[(entity, rid)] = (data, deleted)
    removals, inserts, new_find = [], [], []
    for (entity, rid), (data, deleted) in latest.items():
        before = old.get((entity, rid))
        k = None
        if before is not None and not before[1]:
            k = _locate(conn, entity, rid)
            if k is not None:
                old_doc = _doc(entity, _values(before[0]))
                if old_doc is not None:
                    removals.append((k, *old_doc))
        if deleted:
            if k is not None:
                conn.execute("DELETE FROM find WHERE k = ?", (k,))
            continue
        if k is None:
            new_find.append((entity, rid))
        else:
            new_doc = _doc(entity, known.get((entity, rid)) or _values(data))
            if new_doc is not None:
                inserts.append((k, *new_doc))
    conn.executemany(_DELETE, removals)
    conn.executemany(_INSERT, inserts)
    if new_find:
        _add(conn, new_find, lambda entity, rid: known.get((entity, rid)) or _values(latest[(entity, rid)][0]))


def _add(conn: sqlite3.Connection, records: list[tuple[str, str]],
         values: Callable[[str, str], dict[str, Any]]) -> None:
    """Index ``records`` (entity, id), which have no entry yet; ``values(entity, id)``: their data."""
    hexes = [_hex(rid) for _, rid in records]  # each computed once (bulk imports, first pulls)
    keys = [_key(entity, rid, digits) for (entity, rid), digits in zip(records, hexes, strict=True)]
    taken = {k for (k,) in conn.execute(
        "SELECT k FROM find WHERE k IN (SELECT value FROM json_each(?))", (json.dumps(keys),))}
    find_rows, inserts = [], []
    for (entity, rid), k, digits in zip(records, keys, hexes, strict=True):
        while k in taken:  # another record's key: the next free one (a range query still finds it)
            k = (k & ~((1 << _TAIL_BITS) - 1)) | ((k + 1) & ((1 << _TAIL_BITS) - 1))
            if k not in taken and conn.execute("SELECT 1 FROM find WHERE k = ?", (k,)).fetchone():
                taken.add(k)
        taken.add(k)
        find_rows.append((k, rid, int(digits[-SHORT_LEN:], 16) if digits else None))
        doc = _doc(entity, values(entity, rid))
        if doc is not None:
            inserts.append((k, *doc))
    conn.executemany("INSERT INTO find (k, id, s) VALUES (?, ?, ?)", find_rows)
    conn.executemany(_INSERT, inserts)


def forget(conn: sqlite3.Connection, keys: Iterable[tuple[str, str]]) -> None:
    """Drop the index entries of records about to be deleted from ``records`` outright (a device
    that no longer holds them: a territory move, docs/sync-protocol.md); call it before the DELETE."""
    reindex(conn, [(entity, rid, "{}", None, None, 1) for entity, rid in keys])


def _values(data: str) -> dict[str, Any]:
    try:
        values = json.loads(data)
    except ValueError:
        return {}  # damaged (crm doctor says so): nothing to find in it
    return values if isinstance(values, dict) else {}


# A pull page that brings at least this many records new to the device, and at least as many as
# the index holds (a device filling up), leaves them out of the index: `catch_up` indexes them
# before the next lookup. As PouchDB builds its views when first queried, not while replicating:
# keeping the index was 45% of a first pull's CPU (bench/README.md).
DEFER_AT_LEAST = 500


def should_defer(conn: sqlite3.Connection, new_records: int, behind: bool) -> bool:
    """Whether a write bringing ``new_records`` records the device never had leaves them out of
    the index: only in bulk, when the index is behind already or holds no more than that, so that
    catching up costs about what indexing them would have."""
    if new_records < DEFER_AT_LEAST:
        return False
    return behind or conn.execute("SELECT count(*) FROM find").fetchone()[0] <= new_records


def catch_up(conn: sqlite3.Connection) -> int:
    """Index the live records that have no ``find`` row (left out by a deferred pull page); call
    it in a write transaction. A record has its FTS5 entry exactly when it has its ``find`` row,
    so a record written since, which ``reindex`` indexed then, is not indexed twice. Returns how
    many it indexed."""
    code_of = {code: entity for entity, code in ENTITY_CODE.items()}
    indexed = {(code_of.get(k >> _TAIL_BITS), rid) for k, rid in conn.execute("SELECT k, id FROM find")}
    missing: dict[str, list[str]] = {}
    for entity, rid in conn.execute("SELECT entity, id FROM records WHERE deleted = 0"):
        if (entity, rid) not in indexed:
            missing.setdefault(entity, []).append(rid)
    data = {(entity, rid): text for entity, rids in missing.items() for rid, text in conn.execute(
        "SELECT id, data FROM records WHERE entity = ? AND id IN (SELECT value FROM json_each(?))",
        (entity, json.dumps(rids)))}
    if data:
        _add(conn, list(data), lambda entity, rid: _values(data[(entity, rid)]))
    return len(data)


def rebuild(conn: sqlite3.Connection) -> None:
    """Index every live record again from ``records`` (the migration to schema 3)."""
    conn.execute("DELETE FROM find")
    conn.execute("INSERT INTO search (search) VALUES ('delete-all')")
    reindex(conn, conn.execute("SELECT entity, id, data, meta, parent, deleted FROM records").fetchall())


# -- querying ----------------------------------------------------------------------------------
def _phrase(tokens: list[str], *, prefix: bool) -> str:
    """Words ANDed for FTS5; with ``prefix`` each word of 2 characters or more matches the words it
    starts (a single letter only itself: as a start it would match most of the index)."""
    quoted = ['"' + token.replace('"', '""') + '"' + ("*" if prefix and len(token) > 1 else "") for token in tokens]
    return " ".join(quoted)


def _matching(conn: sqlite3.Connection, entity: str, query: str, limit: int = -1) -> list[str]:
    """Ids of the live ``entity`` records whose index matches an FTS5 ``query``, in id order: the
    index walked in key order over the entity's keys only, stopping after ``limit`` (-1: all)."""
    return [rid for (rid,) in conn.execute(
        "SELECT f.id FROM search JOIN find AS f ON f.k = search.rowid WHERE search MATCH ? "
        "AND search.rowid >= ? AND search.rowid < ? ORDER BY search.rowid LIMIT ?", (query, *_block(entity), limit))]


def matching_ids(conn: sqlite3.Connection, entity: str, *, name: str | None = None, city: str | None = None,
                 postcode: str | None = None) -> list[str] | None:
    """Ids of ``entity`` records that may match the filters (a superset: callers check the values
    with ``filter_matches``), or None when no filter is given. ``name``: every word starts a word
    of the name; ``city``: the same words as the city; ``postcode``: the postcode starts with it."""
    parts = []
    for column, tokens, prefix in (("name", None if name is None else words(name), True),
                                   ("city", None if city is None else words(city), False),
                                   ("postcode", None if postcode is None else [compact_postcode(postcode)], True)):
        if tokens is None:
            continue
        tokens = [token for token in tokens if token]
        if not tokens:
            return []  # nothing to look for: nothing matches
        parts.append(f"{column} : ({_phrase(tokens, prefix=prefix)})")
    if not parts:
        return None
    return _matching(conn, entity, " AND ".join(parts))


def filter_matches(values: dict[str, Any], *, name: str | None = None, city: str | None = None,
                   postcode: str | None = None) -> bool:
    """Whether a record's values pass the ``--name``/``--city``/``--postcode`` filters exactly."""
    if name is not None:
        have = words(values.get("name") or "")
        if not all(any(word.startswith(want) for word in have) for want in words(name)):
            return False
    if city is not None and not same(values.get("city"), city):
        return False
    return postcode is None or compact_postcode(values.get("postcode") or "").startswith(compact_postcode(postcode))


def search(conn: sqlite3.Connection, text: str, *, limit: int | None = None) -> tuple[list[tuple[str, str]], int]:
    """(entity, id) of the live accounts, contacts and notes whose text holds every word of ``text``
    at the start of one of its words, case and accents aside: accounts first, then contacts, then
    notes, each oldest first; at most ``limit`` of them, and how many match in all."""
    tokens = words(text)
    if not tokens:
        return [], 0
    query = _phrase(tokens, prefix=True)
    total = conn.execute("SELECT count(*) FROM search WHERE search MATCH ?", (query,)).fetchone()[0]
    # Keys sort by entity code (accounts, contacts, notes), then id: the first keys are the page.
    entity_of = {code: entity for entity, code in ENTITY_CODE.items()}
    found = [(entity_of.get(k >> _TAIL_BITS, "?"), rid) for k, rid in conn.execute(
        "SELECT f.k, f.id FROM search JOIN find AS f ON f.k = search.rowid WHERE search MATCH ? "
        "ORDER BY search.rowid LIMIT ?", (query, -1 if limit is None else limit))]
    return found, total


# -- naming a record ---------------------------------------------------------------------------
def resolve(conn: sqlite3.Connection, entity: str, text: str) -> str | None:
    """The id of the one live ``entity`` record that ``text`` names, or None when none does;
    AmbiguousError (exit 13) listing the candidates when several do.

    ``text`` names a record by (all forms together: a record matched by any counts once):
    its full id; the start of its id (4 characters or more); the start of its short id (the last 8
    hex digits, 4 to 8 of them); its external ref; or its exact name. Refs and names ignore case,
    accents, spacing and punctuation.
    """
    raw = (text or "").strip()
    low = raw.lower()
    if not raw:
        return None
    found: dict[str, str] = {}  # id -> how it matched
    if len(low) >= MIN_SHORT and re.fullmatch(r"[0-9a-z-]+", low):
        for (rid,) in conn.execute("SELECT id FROM records WHERE entity = ? AND id >= ? AND id < ? AND deleted = 0 "
                                   "LIMIT ?", (entity, low, low + "\x7f", MAX_CANDIDATES + 1)):
            found.setdefault(rid, "id")
        if len(low) <= SHORT_LEN and _HEX.fullmatch(low):
            shift = 4 * (SHORT_LEN - len(low))
            start = int(low, 16) << shift
            for (rid,) in conn.execute("SELECT id FROM find WHERE s >= ? AND s < ? AND k >= ? AND k < ? LIMIT ?",
                                       (start, start + (1 << shift), *_block(entity), MAX_CANDIDATES + 1)):
                found.setdefault(rid, "short id")
    if entity in ("account", "contact") and words(raw):
        for column, field, how in (("ref", "external_ref", "external ref"), ("name", "name", "name")):
            for rid in _matching(conn, entity, f"{column} : ({_phrase(words(raw), prefix=False)})"):
                row = conn.execute("SELECT data FROM records WHERE entity = ? AND id = ?", (entity, rid)).fetchone()
                if row and same(_values(row[0]).get(field), raw):
                    found.setdefault(rid, how)
    if len(found) == 1:
        return next(iter(found))
    if not found:
        return None
    candidates = []
    for rid, how in sorted(found.items())[:MAX_CANDIDATES]:
        row = conn.execute("SELECT data FROM records WHERE entity = ? AND id = ?", (entity, rid)).fetchone()
        values = _values(row[0]) if row else {}
        label = values.get("name") or values.get("outcome") or values.get("text") or values.get("status") or ""
        candidates.append({"id": rid, "short": short_id(rid), "matched": how, "label": str(label)[:60]})
    more = "" if len(found) <= MAX_CANDIDATES else f"\n  ... and more ({len(found)} or more in all)"
    lines = "\n".join(f"  {c['short']}  {c['id']}  {c['label']}  ({c['matched']})" for c in candidates)
    raise AmbiguousError(f"{raw!r} names {len(found)} {entity}s; give more of the id, or the full id:\n"
                         f"{lines}{more}", details={"entity": entity, "given": raw, "candidates": candidates})
