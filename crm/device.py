"""The device replica: every CRM action as one SQLite transaction that writes the record and its
outbox entry together, so a crash leaves both or neither.

Nothing here touches the network; sync reads the outbox and feeds pulled ops back through
``apply_remote``, the same merge the local writes use.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from . import hlc as clocks
from . import merge, search
from .domain import (
    DELETED,
    LINE_PREFIX,
    MAX_ORDER_LINES,
    STATUS_RANK,
    SUBMISSION,
    is_utf8,
    normalize_value,
    validate_create,
    validate_edit,
)
from .domain import (
    entity as entity_spec,
)
from .errors import (
    DiskFullError,
    NotFoundError,
    StateError,
    StoreCorruptError,
    StoreLockedError,
    StoreReadOnlyError,
    ValidationError,
)
from .hlc import HybridClock, ServerTime
from .ids import new_id
from .merge import Record
from .ops import Op, loads, op_from_wire, op_to_json
from .records import export_state, meta_column, present, record_from_row, row_of, row_of_create
from .store import (
    MetaKey,
    Store,
    meta_error,
    meta_problem,
    op_id_of,
    op_key,
    pack_op,
    pack_ref,
    read_ref,
    sqlite_errors,
    unpack_op,
)

__all__ = ["MAX_LINES_PER_ORDER", "Change", "Device"]


def _duration(seconds: float) -> str:
    """A span as a person says it: 3 days, 26 h, 45 min."""
    if seconds >= 2 * 86400:
        return f"{int(seconds // 86400)} days"
    if seconds >= 2 * 3600:
        return f"{int(seconds // 3600)} h"
    return f"{max(1, int(seconds // 60))} min"

MAX_LINES_PER_ORDER = 50  # an op carries at most 64 fields (crm/ops.py)
SETTLE_ROWS = 300  # acknowledged ops per statement: 900 parameters, under SQLite's old 999


def _catch_up_index(store: Store, conn: sqlite3.Connection) -> int:
    """``search.catch_up`` when the meta row says a bulk pull left records out; clears the row."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (MetaKey.SEARCH_BEHIND,)).fetchone()
    if not row or not row[0]:
        return 0
    done = search.catch_up(conn)
    store.set_meta(conn, MetaKey.SEARCH_BEHIND, "")
    return done


def _catch_up_if_possible(store: Store) -> int:
    """``_catch_up_index`` in its own transaction, or nothing on a full disk or a store another
    process holds: reading must not fail for the index (it stays behind; the next try catches up)."""
    try:
        with store.write() as conn:
            return _catch_up_index(store, conn)
    except (DiskFullError, StoreLockedError, StoreReadOnlyError):
        return 0


class Change(NamedTuple):  # not a dataclass: @dataclass costs start-up
    """One record change to write: the engine turns each into an op inside a transaction."""

    entity: str
    record_id: str
    fields: dict[str, Any]
    base: dict[str, list[str]]
    kind: str
    ikey: str | None = None


class Device:
    """One device's replica. Construct with ``Device.open(home)`` or ``Device.init(...)``."""

    def __init__(self, *, store: Store) -> None:
        self.store = store
        try:
            with sqlite_errors(store.path):
                meta = dict(store.conn.execute("SELECT key, value FROM meta").fetchall())
            problem = meta_problem(meta)
            if problem:  # without a device id and a readable clock no change can be stamped
                raise meta_error(store.path, problem, store.holds_data())
            if meta.get(MetaKey.SEARCH_FOLD) != search.FOLD_VERSION and not store.read_only:
                # another Python or crm folds otherwise: index again (read-only, it is read as it is)
                with store.write() as conn:
                    search.rebuild(conn)
                    store.set_meta(conn, MetaKey.SEARCH_FOLD, search.FOLD_VERSION)
                    store.set_meta(conn, MetaKey.SEARCH_BEHIND, "")
            elif meta.get(MetaKey.SEARCH_BEHIND):  # a bulk pull left records out of the index
                _catch_up_if_possible(store)
        except BaseException:
            store.close()
            raise
        self.device_id: str = meta[MetaKey.DEVICE_ID]
        self.rep: str = meta[MetaKey.REP]
        # Background sync switched on (`crm agent start`): reopening the app restarts it.
        self.autosync: bool = meta.get(MetaKey.AUTOSYNC) == "1"
        self.replaced: str | None = None  # set by ``init``: why an unfinished store was replaced

    # -- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def init(cls, home: Path, *, rep: str, device_id: str | None = None, server_url: str | None = None,
             token: str | None = None, settings: dict[str, str] | None = None) -> Device:
        """A new store at ``home``; ``server_url`` and ``token`` as ``login`` would set them."""
        rep = (rep or "").strip()
        if not rep or len(rep) > 100:
            raise ValidationError("rep: give the rep's name (1 to 100 characters)")
        login = {key: value for key, value in ((MetaKey.SERVER_URL, server_url), (MetaKey.TOKEN, token))
                 if value is not None}
        # the store is created with its meta rows in place: it exists complete or not at all
        meta = {**(settings or {}), **login, MetaKey.DEVICE_ID: device_id or new_id(), MetaKey.REP: rep,
                MetaKey.CLOCK: "0.0"}
        problem = meta_problem(meta)
        if problem:
            raise ValidationError(f"cannot create a store: {problem}")
        store = Store.create(home, meta)
        device = cls(store=store)
        device.replaced = store.replaced
        return device

    @classmethod
    def open(cls, home: Path) -> Device:
        return cls(store=Store.open(home))

    def close(self) -> None:
        self.store.close()

    @property
    def home(self) -> Path:
        return self.store.path.parent

    def setting(self, key: str, default: str | None = None) -> str | None:
        """A meta row's value (``key``: a ``MetaKey``)."""
        return self.store.get_meta(key, default)

    def set_settings(self, values: dict[str, str]) -> None:
        """Set meta rows (keys: ``MetaKey``) in one transaction."""
        with self.store.write() as conn:
            for key, value in values.items():
                self.store.set_meta(conn, key, value)

    def login(self, server_url: str, token: str) -> None:
        """Sync with ``server_url`` from now on, presenting ``token``; queued changes are kept."""
        self.set_settings({MetaKey.SERVER_URL: server_url, MetaKey.TOKEN: token, MetaKey.SYNC_FAILING: ""})

    def credentials(self) -> tuple[str | None, str | None]:
        """(server URL, token) as ``login`` set them; None where not set."""
        return self.setting(MetaKey.SERVER_URL), self.setting(MetaKey.TOKEN)

    def set_autosync(self, on: bool) -> None:
        """Switch background sync on or off; when on, reopening the app restarts a force-quit agent."""
        self.set_settings({MetaKey.AUTOSYNC: "1" if on else "0"})
        self.autosync = on

    def data_version(self) -> int:
        """A number that changes whenever another connection commits to the store: how the agent
        notices a local write without reading any table."""
        with sqlite_errors(self.store.path):
            return self.store.conn.execute("PRAGMA data_version").fetchone()[0]

    # -- transactions for callers that write many records at once (the importer, benchmarks) ----
    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One atomic write: everything written through the connection, ``write`` included,
        commits together or not at all."""
        return self.store.write()

    def snapshot(self) -> AbstractContextManager[sqlite3.Connection]:
        """A consistent read of the store, for queries the engine has no method for."""
        return self.store.read()

    # -- reading -------------------------------------------------------------------------------
    def _load(self, conn: sqlite3.Connection, entity: str, rid: str) -> Record | None:
        row = conn.execute("SELECT data, meta FROM records WHERE entity = ? AND id = ?",
                           (entity, rid)).fetchone()
        return record_from_row(entity, rid, row[0], row[1]) if row else None

    def _load_many(self, conn: sqlite3.Connection, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Record]:
        """The stored records among ``keys`` (entity, id), one query per entity rather than per record."""
        by_entity: dict[str, list[str]] = {}
        for entity, rid in keys:
            by_entity.setdefault(entity, []).append(rid)
        found: dict[tuple[str, str], Record] = {}
        for entity, rids in by_entity.items():
            for rid, data, meta in conn.execute(
                    "SELECT id, data, meta FROM records WHERE entity = ? "
                    "AND id IN (SELECT value FROM json_each(?))", (entity, json.dumps(rids))):
                found[(entity, rid)] = record_from_row(entity, rid, data, meta)
        return found

    def _require(self, conn: sqlite3.Connection, entity: str, rid: str, *,
                 allow_deleted: bool = False) -> Record:
        """The record ``rid`` names: its id, else whatever ``search.resolve`` accepts (a short id,
        the start of its id, an external ref, a name); NotFoundError (4) or AmbiguousError (13)."""
        if not is_utf8(rid or ""):  # a lone surrogate (undecodable argv bytes) names no record
            raise NotFoundError(f"no {entity} with id {rid!r}", details={"entity": entity, "id": rid})
        rec = self._load(conn, entity, (rid or "").strip().lower())
        if rec is None:
            # behind only after this object's own bulk pull (opening catches up): the transaction
            # this runs in, a read one too, takes the write lock for it
            _catch_up_index(self.store, conn)
            found = search.resolve(conn, entity, rid)
            rec = self._load(conn, entity, found) if found else None
        if rec is None or (rec.deleted and not allow_deleted):
            raise NotFoundError(f"no {entity} with id {rid!r}" + (" (it was deleted)" if rec else ""),
                                details={"entity": entity, "id": rid})
        return rec

    def get(self, entity: str, rid: str, *, allow_deleted: bool = False) -> dict[str, Any]:
        entity_spec(entity)
        with self.store.read() as conn:
            rec = self._require(conn, entity, rid, allow_deleted=allow_deleted)
            out = present(rec)
            if entity == "account":
                out["counts"] = {
                    child: conn.execute(
                        "SELECT count(*) FROM records WHERE entity = ? AND parent = ? AND deleted = 0",
                        (child, rec.id)).fetchone()[0]
                    for child in ("contact", "visit", "order", "note")
                }
        return out

    def resolve(self, entity: str, ref: str) -> str:
        """The id of the live record ``ref`` names: its id, a unique start of its id or of its short
        id, its external ref or its exact name (crm/search.py, ``resolve``). NotFoundError (4) when
        nothing matches, AmbiguousError (13) listing the candidates when several do."""
        entity_spec(entity)
        with self.store.read() as conn:
            return self._require(conn, entity, ref).id

    def list(self, entity: str, *, parent: str | None = None, include_deleted: bool = False,
             limit: int | None = None, where: dict[str, str] | None = None,
             match: dict[str, str] | None = None) -> list[dict[str, Any]]:
        return self.list_page(entity, parent=parent, include_deleted=include_deleted, limit=limit, where=where,
                              match=match)[0]

    def list_page(self, entity: str, *, parent: str | None = None, include_deleted: bool = False,
                  limit: int | None = None, where: dict[str, str] | None = None,
                  match: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], int]:
        """(the first ``limit`` records in id order, how many there are in all). ``parent`` names
        the account (any way ``resolve`` accepts); ``where``: exact field values; ``match``:
        ``name``, ``city``, ``postcode`` ignoring case and accents (crm/search.py)."""
        spec = entity_spec(entity)
        sql = " FROM records WHERE entity = ?"
        args: list[Any] = [entity]
        with self.store.read() as conn:
            if parent is not None:
                sql += " AND parent = ?"
                args.append(self._require(conn, spec.field(spec.parent).ref, parent).id if spec.parent
                            else parent.strip().lower())
            if not include_deleted:
                sql += " AND deleted = 0"
            for name, value in (where or {}).items():
                spec.field(name)
                sql += " AND json_extract(data, ?) = ?"
                args += [f"$.{name}", value]
            filters = {name: value for name, value in (match or {}).items() if value is not None}
            for name in filters:
                if name not in ("name", "city", "postcode"):
                    raise ValidationError(f"cannot filter {entity} records by {name!r}")
            if filters:
                if entity != "account":
                    raise ValidationError("--name, --city and --postcode filter accounts only")
                if not include_deleted:  # the index holds live records; deleted ones are read through
                    sql += " AND id IN (SELECT value FROM json_each(?))"
                    args.append(json.dumps(search.matching_ids(conn, entity, **filters)))
                rows = [(rid, data, meta) for rid, data, meta in
                        conn.execute("SELECT id, data, meta" + sql + " ORDER BY id", args)
                        if search.filter_matches(loads(data), **filters)]
                total = len(rows)
                rows = rows if limit is None else rows[:int(limit)]
            else:
                total = conn.execute("SELECT count(*)" + sql, args).fetchone()[0]
                if limit is not None:
                    sql += " ORDER BY id LIMIT ?"
                    args.append(int(limit))
                else:
                    sql += " ORDER BY id"
                rows = conn.execute("SELECT id, data, meta" + sql, args).fetchall()
        # a listing shows values only: the merge metadata is not unpacked
        return [present(Record(entity, rid, loads(data))) for rid, data, _meta in rows], total

    def catch_up_index(self) -> int:
        """Index the records a bulk pull left out of the search index (the agent does it after a
        sync, a command on opening the store); how many."""
        if not self.store.get_meta(MetaKey.SEARCH_BEHIND):
            return 0
        return _catch_up_if_possible(self.store)

    def search(self, text: str, *, limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """Accounts, contacts and notes holding every word of ``text`` (case and accents aside):
        (the first ``limit`` as ``{entity, id, name, detail, account}`` rows, how many in all)."""
        self.catch_up_index()
        with self.store.read() as conn:
            shown, total = search.search(conn, text, limit=None if limit is None else int(limit))
            records = self._load_many(conn, shown)
        rows = []
        for entity, rid in shown:
            values = records[(entity, rid)].values if (entity, rid) in records else {}
            label = values.get("name") if entity != "note" else values.get("text")
            detail = values.get("city") if entity == "account" else values.get("role") if entity == "contact" else None
            rows.append({"entity": entity, "id": rid, "name": label,
                         "account": values.get("account") if entity != "account" else None, "detail": detail})
        return rows, total

    # -- the one write path --------------------------------------------------------------------
    def _clock(self, conn: sqlite3.Connection) -> HybridClock:
        """The clock as saved, capped near the server's clock as last learnt (``server_time``)."""
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN (?, ?)",
                                 (MetaKey.CLOCK, MetaKey.SERVER_TIME)))
        wall, counter = meta[MetaKey.CLOCK].split(".")
        return HybridClock(device=self.device_id, state=(int(wall), int(counter)),
                           server=ServerTime.parse(meta.get(MetaKey.SERVER_TIME)))

    def _save_clock(self, conn: sqlite3.Connection, clock: HybridClock) -> None:
        conn.execute("UPDATE meta SET value = ? WHERE key = ?",
                     (f"{clock.state[0]}.{clock.state[1]}", MetaKey.CLOCK))

    _UPSERT_RECORD = (
        "INSERT INTO records (entity, id, data, meta, parent, deleted, conflicts, ikey) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(entity, id) DO UPDATE SET "
        "data = excluded.data, meta = excluded.meta, parent = excluded.parent, "
        "deleted = excluded.deleted, conflicts = excluded.conflicts, "
        "ikey = coalesce(excluded.ikey, records.ikey)")

    def write(self, changes: Iterable[Change], conn: sqlite3.Connection | None = None) -> list[Op]:
        """Turn changes into ops, apply them to their records and queue them: inside the caller's
        transaction (``conn`` from ``transaction()``), else in one of its own. The write path of
        every local change; it validates nothing (callers validate first)."""
        if conn is None:
            with self.transaction() as conn:
                return self.write(changes, conn)
        clock = self._clock(conn)
        ops: list[Op] = []
        outbox_rows = []
        # every record this call touches, written once at the end with one executemany (bulk import)
        touched: dict[tuple[str, str], tuple[Record, str | None]] = {}
        fresh_rows = []  # brand-new records: their whole state is the create op itself
        for change in changes:
            op = Op(op_id=new_id(), device=self.device_id, hlc=clock.tick(), entity=change.entity,
                    record_id=change.record_id, fields=change.fields, base=change.base,
                    kind=change.kind)
            key = (op.entity, op.record_id)
            if change.kind == "create" and key not in touched:
                fresh_rows.append((*row_of_create(op), change.ikey))
            else:
                if key in touched:
                    before, ikey = touched[key]
                else:
                    before, ikey = self._load(conn, *key), None
                touched[key] = (merge.apply_op(before, op), change.ikey or ikey)
            outbox_rows.append((op.op_id, op.entity, op.record_id, op.hlc, op_to_json(op)))
            ops.append(op)
        rows = fresh_rows + [(*row_of(rec), ikey) for rec, ikey in touched.values()]
        known = {(op.entity, op.record_id): op.fields for op in ops if op.kind == "create"}
        known.update({key: rec.values for key, (rec, _) in touched.items()})
        search.reindex(conn, rows, known)  # the local search index, in this same transaction
        self._unref(conn, touched)
        conn.executemany(self._UPSERT_RECORD, rows)
        conn.executemany("INSERT INTO outbox (op_id, entity, record_id, hlc, body) "
                         "VALUES (?, ?, ?, ?, ?)", outbox_rows)
        self._save_clock(conn, clock)
        return ops

    def _resolve_refs(self, conn: sqlite3.Connection, entity: str, fields: dict[str, Any]) -> dict[str, Any]:
        """``fields`` with each record reference (``account`` ...) as the full id of the record it
        names: a short id, an external ref or a name works wherever an id does."""
        out = dict(fields)
        for f in entity_spec(entity).fields:
            if f.kind == "ref" and isinstance(out.get(f.name), str) and out[f.name].strip():
                out[f.name] = self._require(conn, f.ref, out[f.name]).id
        return out

    def _check_refs(self, conn: sqlite3.Connection, entity: str, fields: dict[str, Any]) -> None:
        for f in entity_spec(entity).fields:
            if f.kind == "ref" and fields.get(f.name) is not None:
                self._require(conn, f.ref, fields[f.name])

    # -- generic actions -----------------------------------------------------------------------
    def create(self, entity: str, fields: dict[str, Any]) -> dict[str, Any]:
        spec = entity_spec(entity)
        if not spec.device_writable:
            raise ValidationError(f"{entity} records come from the server and cannot be created here")
        with self.store.write() as conn:
            values = validate_create(entity, self.with_rep(entity, self._resolve_refs(conn, entity, fields)))
            self._check_refs(conn, entity, values)
            rid = new_id()
            self.write([Change(entity, rid, values, {}, "create")], conn)
        return {"id": rid, **values}

    def with_rep(self, entity: str, fields: dict[str, Any], *, territory: str | None = "") -> dict[str, Any]:
        """``fields`` with this device's rep as the record's owner (or rep) when none is given.
        ``territory``: the rep's default territory when the caller has read it (an import reads
        it once, not once a row), "" to read it here."""
        names = entity_spec(entity).field_names
        key = "owner" if "owner" in names else "rep" if "rep" in names else None
        if key and fields.get(key) in (None, ""):
            fields = {**fields, key: self.rep}
        if entity == "account" and fields.get("territory") in (None, ""):  # the rep's default, if any
            default = self.setting(MetaKey.DEFAULT_TERRITORY) if territory == "" else territory
            if default:
                fields = {**fields, "territory": default}
        return fields

    def edit(self, entity: str, rid: str, changes: dict[str, Any]) -> dict[str, Any]:
        spec = entity_spec(entity)
        if not spec.device_writable:
            raise ValidationError(f"{entity} records are managed by the server")
        values = validate_edit(entity, changes)
        if "status" in values and entity == "order":
            raise ValidationError("change an order's status with `crm order submit` or `crm order cancel`")
        if SUBMISSION in values and entity == "order":
            raise ValidationError("an order's submission is written by `crm order submit` only")
        with self.store.write() as conn:
            rec = self._require(conn, entity, rid)
            for name, value in values.items():
                if value is None and spec.field(name).required:
                    raise ValidationError(f"{name}: is required", details={"field": name})
            if entity == "order" and any(name.startswith(LINE_PREFIX) for name in values):
                self._require_draft(conn, rec.id)
            base = {name: merge.edit_base(rec, name) for name in values}
            self.write([Change(entity, rec.id, values, base, "update")], conn)
        return self.get(entity, rec.id)

    def delete(self, entity: str, rid: str) -> dict[str, Any]:
        spec = entity_spec(entity)
        if spec.append_only or not spec.device_writable:
            raise ValidationError(f"{entity} records cannot be deleted")
        with self.store.write() as conn:
            rec = self._require(conn, entity, rid)
            self.write([Change(entity, rec.id, {DELETED: True}, merge.delete_base(rec), "delete")], conn)
        return {"id": rec.id, "deleted": True}

    # -- the field workflow --------------------------------------------------------------------
    def _catalogue_price(self, conn: sqlite3.Connection, sku: str) -> str | None:
        row = conn.execute("SELECT json_extract(data, '$.price') FROM records WHERE entity = 'product' "
                           "AND deleted = 0 AND json_extract(data, '$.sku') = ?", (sku,)).fetchone()
        return row[0] if row else None

    def _line_field(self, conn: sqlite3.Connection, line: dict[str, Any]) -> tuple[str, dict]:
        """A new order line as its own field, priced from the catalogue when no price is given."""
        sku = normalize_value(entity_spec("product").field("sku"), str(line.get("sku") or ""))
        price = line.get("unit_price")
        if price in (None, ""):
            price = self._catalogue_price(conn, sku)
            if price is None:
                raise ValidationError(f"line {sku}: no unit price given and {sku!r} is not in the "
                                      "product catalogue", details={"sku": sku})
        name = LINE_PREFIX + new_id()
        value = validate_create("order", {name: {"sku": sku, "quantity": line.get("quantity"),
                                                 "unit_price": price}, "account": "x"})[name]
        return name, value

    def add_order(self, fields: dict[str, Any], lines: list[dict[str, Any]]) -> dict[str, Any]:
        if len(lines) > MAX_LINES_PER_ORDER:
            raise ValidationError(f"an order takes at most {MAX_LINES_PER_ORDER} lines at once; "
                                  "add more with `crm order add-line`")
        with self.store.write() as conn:
            values = validate_create("order", {**self.with_rep("order", self._resolve_refs(conn, "order", fields)),
                                               "status": "draft"})
            self._check_refs(conn, "order", values)
            for line in lines:
                name, value = self._line_field(conn, line)
                values[name] = value
            oid = new_id()
            self.write([Change("order", oid, values, {}, "create")], conn)
        return self.get("order", oid)

    def _require_draft(self, conn: sqlite3.Connection, order_id: str) -> Record:
        order = self._require(conn, "order", order_id)
        if order.values.get("status") != "draft":
            raise StateError(f"order {order.id} is {order.values.get('status')}; only a draft "
                             "order's lines can change", details={"id": order.id})
        return order

    def add_order_line(self, order_id: str, line: dict[str, Any]) -> dict[str, Any]:
        with self.store.write() as conn:
            order = self._require_draft(conn, order_id)
            if sum(1 for name in order.values if name.startswith(LINE_PREFIX)) >= MAX_ORDER_LINES:
                raise ValidationError(f"order {order.id} has {MAX_ORDER_LINES} lines, removed ones included: "
                                      "an order takes no more (the server would refuse it); start another order")
            name, value = self._line_field(conn, line)
            self.write([Change("order", order.id, {name: value}, {}, "update")], conn)
        return {"id": name[len(LINE_PREFIX):], "order": order.id, **value}

    def _order_line(self, conn: sqlite3.Connection, order_id: str, line_id: str) -> tuple[Record, str]:
        """A draft order and the field of one of its lines (removed lines are not found)."""
        order = self._require_draft(conn, order_id)
        name = LINE_PREFIX + (line_id or "").strip().lower()
        if order.values.get(name) is None:
            raise NotFoundError(f"order {order.id} has no line {line_id!r}" +
                                (" (it was removed)" if name in order.values else "") +
                                " (see `crm order show`)", details={"id": order.id, "line": line_id})
        return order, name

    def edit_order_line(self, order_id: str, line_id: str, *, quantity: Any = None,
                        unit_price: Any = None) -> dict[str, Any]:
        """Change a draft order's line: its quantity, its unit price or both; one op on the line's
        field, so a concurrent edit of the same line is a conflict (docs/merge-rules.md)."""
        if quantity is None and unit_price is None:
            raise ValidationError("nothing to change: give --quantity, --price or both")
        with self.store.write() as conn:
            order, name = self._order_line(conn, order_id, line_id)
            line = dict(order.values[name])
            if quantity is not None:
                line["quantity"] = quantity
            if unit_price is not None:
                line["unit_price"] = unit_price
            value = validate_edit("order", {name: line})[name]
            self.write([Change("order", order.id, {name: value}, {name: merge.edit_base(order, name)},
                               "update")], conn)
        return {"id": name[len(LINE_PREFIX):], "order": order.id, **value}

    def remove_order_line(self, order_id: str, line_id: str) -> dict[str, Any]:
        """Remove a draft order's line (its field becomes null; docs/merge-rules.md)."""
        with self.store.write() as conn:
            order, name = self._order_line(conn, order_id, line_id)
            self.write([Change("order", order.id, {name: None}, {name: merge.edit_base(order, name)},
                               "update")], conn)
        return {"id": name[len(LINE_PREFIX):], "order": order.id, "removed": True}

    def set_order_status(self, order_id: str, status: str) -> dict[str, Any]:
        with self.store.write() as conn:
            order = self._require(conn, "order", order_id)
            current = order.values.get("status", "draft")
            if STATUS_RANK[status] <= STATUS_RANK[current]:
                raise StateError(f"order {order.id} is {current}: its status only moves forward "
                                 "(draft -> submitted -> cancelled)", details={"id": order.id})
            if status == "submitted" and not present(order)["lines"]:
                raise StateError(f"order {order.id} has no lines; add one before submitting")
            if status == "submitted":  # with the lines it saw: what the submitted order holds
                fields, base = merge.submit(order)
            else:
                fields, base = {"status": status}, {"status": merge.edit_base(order, "status")}
            self.write([Change("order", order.id, fields, base, "update")], conn)
        return self.get("order", order.id)

    def add_note(self, text: str, *, account: str | None = None, visit: str | None = None,
                 order: str | None = None) -> dict[str, Any]:
        if sum(x is not None for x in (account, visit, order)) != 1:
            raise ValidationError("attach the note to exactly one of --account, --visit or --order")
        with self.store.write() as conn:
            if visit or order:
                parent = self._require(conn, "visit" if visit else "order", visit or order)
                account = parent.values.get("account")
                visit, order = (parent.id, None) if visit else (None, parent.id)
            fields = validate_create("note", self.with_rep("note", self._resolve_refs(conn, "note", {
                "account": account, "visit": visit, "order": order, "text": text})))
            self._check_refs(conn, "note", fields)
            rid = new_id()
            self.write([Change("note", rid, fields, {}, "create")], conn)
        return {"id": rid, **fields}

    # -- conflicts -----------------------------------------------------------------------------
    def conflicts(self) -> list[dict[str, Any]]:
        with self.store.read() as conn:
            rows = conn.execute("SELECT entity, id, data, meta FROM records WHERE conflicts > 0 "
                                "ORDER BY entity, id").fetchall()
        found = [c.to_json() for row in rows for c in merge.conflicts(record_from_row(*row))]
        return sorted(found, key=lambda c: c["id"])

    def resolve_conflict(self, conflict_id: str, keep: str) -> dict[str, Any]:
        if keep not in ("winner", "loser"):
            raise ValidationError("--keep must be winner or loser")
        with self.store.write() as conn:
            for entity, rid, data, meta in conn.execute(
                    "SELECT entity, id, data, meta FROM records WHERE conflicts > 0").fetchall():
                rec = record_from_row(entity, rid, data, meta)
                for conflict in merge.conflicts(rec):
                    if conflict.id == conflict_id:
                        fields, base = merge.resolution(rec, conflict, keep)
                        self.write([Change(entity, rid, fields, base, "resolve")], conn)
                        return {"id": conflict_id, "record": rid, "entity": entity,
                                "kept": keep, "field": conflict.field}
        raise NotFoundError(f"no open conflict with id {conflict_id!r} (see `crm conflicts ls`)")

    # -- outbox and export ---------------------------------------------------------------------
    def outbox(self, *, rejected: bool = False, limit: int | None = None) -> dict[str, Any]:
        state = "rejected" if rejected else "pending"
        with self.store.read() as conn:
            count = conn.execute("SELECT count(*) FROM outbox WHERE state = ?", (state,)).fetchone()[0]
            sql = ("SELECT seq, op_id, entity, record_id, hlc, body, reason, attempts FROM outbox "
                   "WHERE state = ? ORDER BY seq")
            args: list[Any] = [state]
            if limit is not None:
                sql += " LIMIT ?"
                args.append(limit)
            rows = conn.execute(sql, args).fetchall()
        entries = []
        for seq, op_id, entity, rid, hlc, body, reason, attempts in rows:
            try:  # a damaged entry is still listed (crm doctor says what to do about it)
                wire = json.loads(body)
            except ValueError:
                wire = None
            wire = wire if isinstance(wire, dict) else {"kind": "unreadable"}
            entry = {"seq": seq, "op": op_id, "kind": wire.get("kind"), "entity": entity,
                     "id": rid, "hlc": hlc, "fields": wire.get("fields", {}), "attempts": attempts}
            if reason:
                entry["reason"] = reason
            entries.append(entry)
        return {state: count, "entries": entries}

    def export(self) -> dict[str, Any]:
        """The replicated state in canonical form: identical on replicas holding the same data."""
        with self.store.read() as conn:
            return export_state(lambda entity: conn.execute(
                "SELECT id, data, meta FROM records WHERE entity = ? ORDER BY id", (entity,)))


    # -- sync support (crm/sync.py drives these) ------------------------------------------------
    def pending_ops(self, *, limit: int, after: str | None = None) -> list[tuple[str, str]]:
        """The oldest pending outbox entries as (op id, wire JSON), in the order they were made;
        with ``after``, those queued after that op (none if it is no longer queued)."""
        with sqlite_errors(self.store.path):
            if after is None:
                return self.store.conn.execute(
                    "SELECT op_id, body FROM outbox WHERE state = 'pending' ORDER BY seq LIMIT ?",
                    (limit,)).fetchall()
            return self.store.conn.execute(
                "SELECT op_id, body FROM outbox WHERE state = 'pending' "
                "AND seq > (SELECT seq FROM outbox WHERE op_id = ?) ORDER BY seq LIMIT ?", (after, limit)).fetchall()

    def settle_pushed(self, acked: list[str], rejected: list[tuple[str, str]], *,
                      witness: str | None = None, latest: str | None = None) -> None:
        """Move what the server acknowledged from the outbox to the kept ops; park what it refused
        where the rep can see it; remember the server's continuity answer."""
        with self.store.write() as conn:
            # A statement per SETTLE_ROWS ops, not per op: each SQLite step of an executemany gives
            # the GIL up and waits to get it back, which a device's other threads (the agent) and
            # a simulated fleet's (bench_scale.py) make a queue.
            for start in range(0, len(acked), SETTLE_ROWS):
                chunk = acked[start:start + SETTLE_ROWS]
                conn.execute("INSERT OR IGNORE INTO sent (op_key, body) SELECT v.column2, o.body FROM (VALUES "
                             + ", ".join(["(?, ?, ?)"] * len(chunk))
                             + ") AS v JOIN outbox AS o ON o.op_id = v.column3 ORDER BY v.column1",
                             [value for n, op_id in enumerate(chunk) for value in (n, op_key(op_id), op_id)])
            if acked:
                conn.execute("DELETE FROM outbox WHERE op_id IN (SELECT value FROM json_each(?))", (json.dumps(acked),))
            conn.executemany("UPDATE outbox SET state = 'rejected', reason = ? WHERE op_id = ?",
                             [(reason, op_id) for op_id, reason in rejected])
            self._remember_server(conn, witness=witness, latest=latest)

    def restamp(self, refused: list[tuple[str, str]], server: ServerTime) -> int:
        """Give new stamps to this device's ops the server refused as too far ahead of its clock.

        ``refused`` holds (op id, stamp as sent); ``server`` is the server's clock as that answer
        gave it. Re-stamped are the refused ops and every queued op (pending or rejected) stamped at
        or after the earliest of them or further ahead than the server accepts: none of those is in
        the server's log, so no replica holds their stamps. Each keeps its op id; the new stamps come
        after every other stamp the device holds, in the old order (``clocks.restamp``), so every op
        still comes after what it was built on, and renaming the stamps in the queue, in the records'
        merge metadata and in the clock gives the same state as applying the re-stamped ops. The
        clock goes back with them: the next edit is stamped near the server's clock again.
        One transaction. Returns how many ops it re-stamped, counting refused ones another process
        re-stamped meanwhile (0: sending again would not help).
        """
        with self.store.write() as conn:
            sent = dict(refused)
            current = dict(conn.execute(
                "SELECT op_id, hlc FROM outbox WHERE op_id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(sent)),)).fetchall())
            # too far ahead for the server: at or after this
            lower = clocks.format_stamp(server.server_ms + clocks.MAX_AHEAD_MS + 1, 0, "")
            lower = min([lower, *(stamp for op_id, stamp in current.items() if stamp == sent[op_id])])
            rows = conn.execute("SELECT op_id, entity, record_id, hlc, body FROM outbox WHERE hlc >= ?",
                                (lower,)).fetchall()
            renamed: dict[str, str] = {}
            if rows:
                old = {row[3] for row in rows}
                floor = self._newest_stamp(conn, besides=old)
                renamed = clocks.restamp(sorted(old), floor=floor, device=self.device_id,
                                         physical=clocks.physical_ms(clocks.now_ms(), server))
                self._rename_stamps(conn, rows, renamed)
                newest = clocks.parse_stamp(max(renamed.values()))
                self._save_clock(conn, HybridClock(device=self.device_id,
                                                   state=max(floor, (newest.wall_ms, newest.counter))))
            self.store.set_meta(conn, MetaKey.SERVER_TIME, str(server))
            return len(rows) + sum(1 for op_id, stamp in current.items() if stamp != sent[op_id])

    def _newest_stamp(self, conn: sqlite3.Connection, *, besides: set[str]) -> clocks.State:
        """The newest stamp in the records' merge metadata and the queue, other than ``besides``."""
        newest: clocks.State = (0, 0)

        def see(stamp: Any) -> None:
            nonlocal newest
            if isinstance(stamp, str) and stamp not in besides:
                try:
                    parsed = clocks.parse_stamp(stamp)
                except clocks.ClockError:
                    return
                newest = max(newest, (parsed.wall_ms, parsed.counter))

        for (meta,) in conn.execute("SELECT meta FROM records"):
            try:
                packed = loads(meta)
            except ValueError:
                continue  # damaged (crm doctor says so): it holds no stamp this device can build on
            for name, fm in packed.items():  # the stored form: "*" is [stamp, op id] (merge.pack_meta)
                if name == "*":
                    see(fm[0])
                    continue
                if not isinstance(fm, dict):
                    continue
                see(fm.get("s"))
                for stamp in fm.get("x", ()):
                    see(stamp)
                for leaf in fm.get("c", ()):
                    see(leaf[0])
        for (stamp,) in conn.execute("SELECT hlc FROM outbox"):
            see(stamp)
        return newest

    def _rename_stamps(self, conn: sqlite3.Connection, rows: list[tuple], renamed: dict[str, str]) -> None:
        """Put the new stamps in place of the old in the queued ops and in their records."""
        def new(stamp: str) -> str:
            return renamed.get(stamp, stamp)

        for op_id, _entity, _rid, stamp, body in rows:
            try:
                op = op_from_wire(loads(body))
            except (ValueError, TypeError):
                continue  # unreadable (crm doctor says so): it can only be parked, never applied
            op = Op(op_id=op.op_id, device=op.device, hlc=new(op.hlc), entity=op.entity, record_id=op.record_id,
                    fields=op.fields, base={name: sorted(new(s) for s in stamps) for name, stamps in op.base.items()},
                    kind=op.kind)
            conn.execute("UPDATE outbox SET hlc = ?, body = ? WHERE op_id = ?", (new(stamp), op_to_json(op), op_id))
        self._unref(conn, {(row[1], row[2]) for row in rows})
        for entity, rid in sorted({(row[1], row[2]) for row in rows}):
            rec = self._load(conn, entity, rid)
            if rec is None:
                continue
            for fm in rec.meta.values():
                if "s" in fm:
                    fm["s"] = new(fm["s"])
                if "x" in fm:
                    fm["x"] = sorted(new(s) for s in fm["x"])
                if "c" in fm:
                    fm["c"] = sorted(([new(leaf[0]), *leaf[1:]] for leaf in fm["c"]), key=lambda leaf: leaf[0])
            for name in rec.values:  # a joined field keeps each entry's stamp in its value (an order's submission)
                if (entity, name) in merge.JOINED and isinstance(rec.values[name], dict):
                    rec.values[name] = {key: [new(entry[0]), entry[1]] for key, entry in rec.values[name].items()}
            conn.execute("UPDATE records SET data = ?, meta = ? WHERE entity = ? AND id = ?",
                         (row_of(rec).data, meta_column(rec), entity, rid))

    def count_attempt(self, op_ids: list[str], *, by: int = 1) -> None:
        """One more attempt to send each of ``op_ids`` (``crm outbox`` shows the count): counted
        before the push, so an attempt whose answer never comes counts too; ``by=-1`` takes back
        one counted for a push that was then not sent."""
        with self.store.write() as conn:
            conn.execute("UPDATE outbox SET attempts = max(attempts + ?, 0) WHERE op_id IN (SELECT value FROM json_each(?))",
                         (by, json.dumps(op_ids)))

    # -- continuity: the server restored, this home restored or copied (docs/sync-protocol.md) ---
    def continuity(self) -> tuple[str | None, str | None]:
        """(witness, known) to send: a log entry this device saw, and its own latest logged op."""
        with sqlite_errors(self.store.path):
            meta = dict(self.store.conn.execute(
                "SELECT key, value FROM meta WHERE key IN (?, ?)", (MetaKey.WITNESS, MetaKey.KNOWN)).fetchall())
        return meta.get(MetaKey.WITNESS) or None, meta.get(MetaKey.KNOWN)

    def _remember_server(self, conn: sqlite3.Connection, *, witness: str | None, latest: str | None) -> None:
        """Keep the furthest log entry seen, and the device's latest op the log holds ("" none)."""
        if witness:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (MetaKey.WITNESS,)).fetchone()
            if not row or not row[0] or int(row[0].split(":", 1)[0]) < int(witness.split(":", 1)[0]):
                self.store.set_meta(conn, MetaKey.WITNESS, witness)
        if latest is not None:  # "" when the log holds no op of this device id
            self.store.set_meta(conn, MetaKey.KNOWN, latest)

    def latest_logged_is_queued(self) -> bool:
        """Whether the op the server last named as this device's latest in its log is still
        queued here: the server holds ops this home has not seen acknowledged yet."""
        with sqlite_errors(self.store.path):
            return self.store.conn.execute(
                "SELECT 1 FROM outbox WHERE state = 'pending' AND op_id = "
                "(SELECT value FROM meta WHERE key = ?)", (MetaKey.KNOWN,)).fetchone() is not None

    def knows_op(self, op_id: str) -> bool:
        """Whether this home made ``op_id`` (queued, parked or acknowledged)."""
        with sqlite_errors(self.store.path):
            return self.store.conn.execute(
                "SELECT 1 FROM outbox WHERE op_id = ? UNION ALL SELECT 1 FROM sent WHERE op_key = ?",
                (op_id, op_key(op_id))).fetchone() is not None

    def adopt_latest(self, latest: str | None) -> None:
        """The log's latest op of this device id is one this home made (its answer was lost)."""
        self.set_settings({MetaKey.KNOWN: latest or ""})

    def forget_server_log(self) -> None:
        """The server's log went back: pull it all again, this device's own ops included, and
        send every kept op again first. Own ops too, because the restored server may place an
        account differently than the device last heard (a move after the backup is undone): an
        account the device dropped on that move is its rep's again, and if the device made it,
        only its own ops bring it back. The refill's last page drops what is outside the scope,
        as after a scope change (``reset_scope``)."""
        self.set_settings({MetaKey.PULL_CURSOR: "0", MetaKey.PULL_PART: "", MetaKey.WITNESS: "",
                           MetaKey.RESEND_FROM: "0", MetaKey.SCOPE_REFILL: "1"})

    def reload_identity(self) -> None:
        self.device_id = self.setting(MetaKey.DEVICE_ID) or self.device_id

    def take_new_identity(self) -> str:
        """Another copy of this device id pushed: this home becomes a new device, which pulls the
        whole log again, its former id's ops included. Its own ops keep the ids and stamps they
        were made with (they are distinct ops; the server applies each once)."""
        with self.store.write() as conn:
            self._unref_all(conn)  # references give back ops as made by the current device id
        new = new_id()
        self.set_settings({MetaKey.DEVICE_ID: new, MetaKey.PULL_CURSOR: "0", MetaKey.PULL_PART: "",
                           MetaKey.WITNESS: "", MetaKey.KNOWN: ""})
        self.device_id = new
        return new

    def kept_ops(self, *, after: int, limit: int) -> list[tuple[int, str]]:
        """Acknowledged ops after position ``after`` of the kept list, oldest first: (seq, body)."""
        with self.store.read() as conn:
            rows = conn.execute("SELECT seq, op_key, body FROM sent WHERE seq > ? ORDER BY seq LIMIT ?",
                                (after, limit)).fetchall()
            return [(seq, self._kept_body(conn, key, body)) for seq, key, body in rows]

    def _kept_body(self, conn: sqlite3.Connection, key: bytes | str, body: bytes | str) -> str:
        if isinstance(body, str):
            return body
        ref = read_ref(body)
        if ref is None:
            return unpack_op(body)
        row = conn.execute("SELECT data, meta FROM records WHERE entity = ? AND id = ?", ref).fetchone()
        wire = self._create_wire(*ref, *row, op_id_of(key)) if row else None
        if wire is None:
            raise StoreCorruptError(f"{self.store.path}: the kept op {op_id_of(key)} stands for {ref[0]} {ref[1]}, "
                                    "which changed or went without writing it out; run `crm doctor`")
        return wire

    def _create_wire(self, entity: str, rid: str, data: str, meta: str, op_id: str) -> str | None:
        """The wire JSON of the create op ``op_id`` of this device that a record's row (``data``,
        ``meta``) is exactly the result of, or None when the row is not that (changed since)."""
        try:
            stamp = loads(meta)["*"][0]
            op = Op(op_id=op_id, device=self.device_id, hlc=stamp, entity=entity, record_id=rid,
                    fields=loads(data), base={}, kind="create")
        except (ValueError, TypeError, KeyError, IndexError):
            return None
        made = row_of_create(op)
        return op_to_json(op) if (made.data, made.meta) == (data, meta) else None

    def _unref(self, conn: sqlite3.Connection, keys: Iterable[tuple[str, str]]) -> None:
        """Write out the kept creates that stand as references to these records (``pack_kept``)
        before the records change or go; call it in the transaction that changes them."""
        keys = list(keys)
        if not keys or conn.execute("SELECT 1 FROM meta WHERE key = ?", (MetaKey.KEPT_REFS,)).fetchone() is None:
            return
        by_entity: dict[str, list[str]] = {}
        for entity, rid in keys:
            by_entity.setdefault(entity, []).append(rid)
        out = []
        for entity, rids in by_entity.items():
            for rid, data, meta in conn.execute(
                    "SELECT id, data, meta FROM records WHERE entity = ? AND id IN (SELECT value FROM json_each(?)) "
                    "AND meta LIKE '{\"*\":%'", (entity, json.dumps(rids))):
                try:
                    op_id = loads(meta)["*"][1]
                except (ValueError, TypeError, KeyError, IndexError):
                    continue
                if not isinstance(op_id, str):
                    continue
                row = conn.execute("SELECT seq, body FROM sent WHERE op_key = ?", (op_key(op_id),)).fetchone()
                if row and isinstance(row[1], bytes) and read_ref(row[1]) == (entity, rid):
                    wire = self._create_wire(entity, rid, data, meta, op_id)
                    if wire is not None:
                        out.append((pack_op(wire), row[0]))
        conn.executemany("UPDATE sent SET body = ? WHERE seq = ?", out)

    def _unref_all(self, conn: sqlite3.Connection) -> None:
        """Write out every reference (before this home takes a new device id: they name the old one)."""
        refs = [read_ref(body) for (body,) in conn.execute(
            "SELECT body FROM sent WHERE typeof(body) = 'blob' AND substr(body, 1, 1) = X'01'")]
        self._unref(conn, [ref for ref in refs if ref])
        conn.execute("DELETE FROM meta WHERE key = ?", (MetaKey.KEPT_REFS,))

    def pack_kept(self, *, batch: int = 2000) -> int:
        """Pack the kept ops a push stored as text (bench_footprint.py); returns how many. Done after
        a push rather than while settling it, so the push's round trips do not wait for it; a batch
        per transaction, so a kill loses nothing (an op is text or packed, both readable).

        A create of this device whose record has not changed since is kept as a reference to that
        record (``pack_ref``, 18 bytes): the record's row gives the op back exactly (checked here
        before it is stored so), and every path that changes or removes a record writes such an
        op out first (``_unref``)."""
        packed = 0
        while True:
            with self.store.write() as conn:
                start = int(self.store.get_meta(MetaKey.PACKED_TO) or 0)
                rows = conn.execute("SELECT seq, body FROM sent WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (start, batch)).fetchall()
                if not rows:
                    return packed
                text = [(self._pack(conn, body), seq) for seq, body in rows if isinstance(body, str)]
                if any(body[:1] == b"\x01" for body, _ in text):
                    self.store.set_meta(conn, MetaKey.KEPT_REFS, "1")
                conn.executemany("UPDATE sent SET body = ? WHERE seq = ?", text)
                self.store.set_meta(conn, MetaKey.PACKED_TO, str(rows[-1][0]))
                packed += len(text)

    def _pack(self, conn: sqlite3.Connection, body: str) -> bytes:
        """A kept op as stored: a reference to its record when the record gives it back, else packed."""
        try:
            wire = loads(body)
            entity, rid, op_id = wire["entity"], wire["id"], wire["op"]
        except (ValueError, TypeError, KeyError):
            return pack_op(body)
        if wire.get("kind") == "create" and wire.get("dev") == self.device_id and isinstance(entity, str) \
                and isinstance(rid, str) and isinstance(op_id, str):
            ref = pack_ref(entity, rid)
            row = conn.execute("SELECT data, meta FROM records WHERE entity = ? AND id = ?", (entity, rid)).fetchone()
            if ref is not None and row is not None and self._create_wire(entity, rid, *row, op_id) == body:
                return ref
        return pack_op(body)

    def apply_remote(self, ops: list[Op], *, cursor: str, witness: str | None = None,
                     latest: str | None = None, moves: Iterable[dict[str, Any]] = (),
                     scope: dict[str, Any] | None = None, own: bool = False, part: str = "",
                     refilled: bool = False) -> int:
        """Apply pulled ops and moves and move the pull cursor in one transaction; returns ops
        applied. ``own``: this device's own ops are in the page too (a refill after a scope
        change) and are applied like the others (merge is idempotent). ``part``: where the page
        stopped inside a move's snapshot ("<cursor> <ENTITY:ID>", "" none), kept with the cursor.
        ``refilled``: the refill's last page: what is outside ``scope`` now goes, in this same
        transaction as the refill's end (a kill before it leaves the refill to finish next time).

        The clock observes every pulled stamp, so a device whose wall clock is behind still
        stamps its next edit after everything it has seen.
        """
        with self.store.write() as conn:
            clock = self._clock(conn)
            if ops:  # observing the greatest stamp is observing them all: stamps sort as text
                clock.observe(max(op.hlc for op in ops))
            foreign = list(ops) if own else [op for op in ops if op.device != self.device_id]
            stored = self._load_many(conn, {(op.entity, op.record_id) for op in foreign})
            # A create of a record this device has never had, alone in the page, is the record's
            # whole state (as on the server): stored without a merge. Everything else merges.
            touches = Counter((op.entity, op.record_id) for op in foreign)
            rows, merged = [], []
            for op in foreign:
                if op.kind == "create" and touches[(op.entity, op.record_id)] == 1 \
                        and (op.entity, op.record_id) not in stored:
                    rows.append((*row_of_create(op), None))
                else:
                    merged.append(op)
            changed = merge.apply_all(lambda entity, rid: stored.get((entity, rid)), merged)
            rows += [(*row_of(rec), None) for rec in changed.values()]
            known = {(op.entity, op.record_id): op.fields for op in foreign if op.kind == "create"}
            known.update({(rec.entity, rec.id): rec.values for rec in changed.values()})
            new = {(row[0], row[1]) for row in rows} - stored.keys()  # records this device never had
            behind = bool(self.store.get_meta(MetaKey.SEARCH_BEHIND))
            if search.should_defer(conn, len(new), behind):  # a device filling up: index them later
                search.reindex(conn, [row for row in rows if (row[0], row[1]) not in new], known)
                if not behind:
                    self.store.set_meta(conn, MetaKey.SEARCH_BEHIND, "1")
            else:
                search.reindex(conn, rows, known)  # the local search index, in this same transaction
            self._unref(conn, [(rec.entity, rec.id) for rec in changed.values()])
            conn.executemany(self._UPSERT_RECORD, rows)
            orphans = self._orphans(conn)
            if orphans and foreign:  # back in scope: no longer kept only for unsynced work
                self._set_orphans(conn, orphans - {(op.entity, op.record_id) for op in foreign})
            for move in moves:
                self._apply_move(conn, clock, move)
            if scope is not None:
                self._remember_scope(conn, scope)
            if refilled:
                if scope is not None and scope.get("territories") is not None:
                    self._drop_outside(conn, scope["territories"])
                self.store.set_meta(conn, MetaKey.SCOPE_REFILL, "")
            self._save_clock(conn, clock)
            self.store.set_meta(conn, MetaKey.PULL_CURSOR, cursor)
            self.store.set_meta(conn, MetaKey.PULL_PART, part)
            self._remember_server(conn, witness=witness, latest=latest)
        return len(rows)

    def sync_warning(self, *, now: datetime, warn_after_s: float) -> str | None:
        """One line for the rep when sync is failing: at once when the server refused the token,
        else once syncs have failed for more than ``warn_after_s`` seconds; None when all is well.
        Reads what every sync, the agent's included, records (``MetaKey.SYNC_FAILING``)."""
        meta = dict(self.store.conn.execute(
            "SELECT key, value FROM meta WHERE key IN (?, ?)", (MetaKey.SYNC_FAILING, MetaKey.LAST_SYNC_ERROR)))
        since_text, _, kind = (meta.get(MetaKey.SYNC_FAILING) or "").partition(" ")
        if not since_text:
            return None
        try:
            since = datetime.strptime(since_text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return None
        failing_s = max(0.0, (now - since).total_seconds())
        if kind != "auth_refused" and failing_s <= warn_after_s:
            return None
        pending = self.store.conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0]
        waiting = f"{pending} change{'' if pending == 1 else 's'} waiting to sync"
        if kind == "auth_refused":
            return (f"sync stopped: the server refused this device's token (since {since_text}); {waiting}. "
                    "Ask for a new token and run `crm login`")
        last = (meta.get(MetaKey.LAST_SYNC_ERROR) or "").partition(" ")[2]
        return (f"sync has failed for {_duration(failing_s)} (since {since_text}); {waiting}"
                + (f"; last error: {last}" if last else "")
                + ". Check the network and run `crm sync`; `crm status` shows more")

    # -- territories (docs/sync-protocol.md, "Territories") -------------------------------------
    def _unsynced(self, conn: sqlite3.Connection) -> set[tuple[str, str]]:
        """The records this device changed and the server has not acknowledged (queued or parked)."""
        return {(entity, rid) for entity, rid in conn.execute("SELECT DISTINCT entity, record_id FROM outbox")}

    def _orphans(self, conn: sqlite3.Connection) -> set[tuple[str, str]]:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (MetaKey.SCOPE_ORPHANS,)).fetchone()
        return {tuple(key) for key in json.loads(row[0])} if row and row[0] else set()

    def _set_orphans(self, conn: sqlite3.Connection, orphans: set[tuple[str, str]]) -> None:
        self.store.set_meta(conn, MetaKey.SCOPE_ORPHANS, json.dumps(sorted(orphans)))

    def _remove(self, conn: sqlite3.Connection, keys: Iterable[tuple[str, str]]) -> None:
        """Remove records that left this device's scope, keeping those holding its unsynced work
        (they are still pushed, and removed once acknowledged: ``sweep_orphans``)."""
        keys = set(keys)
        if not keys:
            return
        unsynced = self._unsynced(conn)
        search.forget(conn, keys - unsynced)
        self._unref(conn, keys - unsynced)
        conn.executemany("DELETE FROM records WHERE entity = ? AND id = ?", sorted(keys - unsynced))
        kept = keys & unsynced
        if kept:
            self._set_orphans(conn, self._orphans(conn) | kept)

    def _family_keys(self, conn: sqlite3.Connection, accounts: Iterable[str]) -> set[tuple[str, str]]:
        keys: set[tuple[str, str]] = set()
        for account in accounts:
            keys.add(("account", account))
            keys.update(conn.execute("SELECT entity, id FROM records WHERE parent = ? AND entity <> 'account'",
                                     (account,)).fetchall())
        return keys

    def _apply_move(self, conn: sqlite3.Connection, clock: HybridClock, move: dict[str, Any]) -> None:
        """An account moved: drop it and its children (out of this device's scope now), or take
        their current state (in it now), with this device's unsynced ops applied again on top."""
        account = move["account"]
        if move.get("drop"):
            self._remove(conn, self._family_keys(conn, [account]))
            return
        rows, keys = [], set()
        for entity, rid, data, meta in move["records"]:
            rec = record_from_row(entity, rid, data, meta)
            for fm in rec.meta.values():
                if isinstance(fm, dict) and isinstance(fm.get("s"), str):
                    clock.observe(fm["s"])
            keys.add((entity, rid))
            rows.append(rec)
        pending: dict[tuple[str, str], list[Op]] = {}
        for entity, rid, body in conn.execute("SELECT entity, record_id, body FROM outbox ORDER BY seq"):
            if (entity, rid) in keys:
                pending.setdefault((entity, rid), []).append(op_from_wire(loads(body)))
        out = []
        for rec in rows:
            for op in pending.get((rec.entity, rec.id), ()):
                rec = merge.apply_op(rec, op)
            out.append((*row_of(rec), None))
        search.reindex(conn, out)  # the local search index, in this same transaction
        self._unref(conn, keys)
        conn.executemany(self._UPSERT_RECORD, out)
        orphans = self._orphans(conn)
        if orphans & keys:
            self._set_orphans(conn, orphans - keys)

    def _remember_scope(self, conn: sqlite3.Connection, scope: dict[str, Any]) -> None:
        self.store.set_meta(conn, MetaKey.SCOPE_EPOCH, str(int(scope.get("epoch") or 0)))
        self.store.set_meta(conn, MetaKey.DEFAULT_TERRITORY, scope.get("default") or "")

    def reset_scope(self, scope: dict[str, Any]) -> None:
        """The rep's territories changed: pull again from the start, this device's own ops
        included (what it made in a territory it regains comes back). Nothing is removed yet: an
        account's territory on the device may be stale (one the server stamped, one moved into
        the new scope) until the refill brings its current state, and a refill cut short by the
        network must not take the rep's own accounts with it. The refill's last page drops what
        the rep no longer holds (``apply_remote(..., refilled=True)``)."""
        with self.store.write() as conn:
            self._remember_scope(conn, scope)
            self.store.set_meta(conn, MetaKey.PULL_CURSOR, "0")
            self.store.set_meta(conn, MetaKey.PULL_PART, "")
            self.store.set_meta(conn, MetaKey.SCOPE_REFILL, "1")

    def _drop_outside(self, conn: sqlite3.Connection, territories: Iterable[str]) -> None:
        """Remove every account outside ``territories`` and what hangs off it (and children of
        accounts this device does not hold), keeping this device's unsynced work."""
        held = set(territories)
        gone = [rid for rid, data in conn.execute("SELECT id, data FROM records WHERE entity = 'account'")
                if (loads(data).get("territory") or "") not in held]
        keys = self._family_keys(conn, gone)
        keys.update(conn.execute(
            "SELECT entity, id FROM records WHERE parent IS NOT NULL AND entity <> 'account' AND parent "
            "NOT IN (SELECT id FROM records WHERE entity = 'account')").fetchall())
        self._remove(conn, keys)

    def sweep_orphans(self) -> int:
        """Remove the out-of-scope records kept for unsynced work that the server has now taken."""
        with self.store.write() as conn:
            orphans = self._orphans(conn)
            if not orphans:
                return 0
            done = orphans - self._unsynced(conn)
            search.forget(conn, done)
            self._unref(conn, done)
            conn.executemany("DELETE FROM records WHERE entity = ? AND id = ?", sorted(done))
            self._set_orphans(conn, orphans - done)
            return len(done)

    def status(self) -> dict[str, Any]:
        with self.store.read() as conn:
            pending = conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0]
            rejected = conn.execute("SELECT count(*) FROM outbox WHERE state = 'rejected'").fetchone()[0]
            conflicts = conn.execute("SELECT coalesce(sum(conflicts), 0) FROM records").fetchone()[0]
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        server = ServerTime.parse(meta.get(MetaKey.SERVER_TIME))
        return {"device": self.device_id, "rep": self.rep, "pending": pending, "rejected": rejected,
                "conflicts": conflicts, "server": meta.get(MetaKey.SERVER_URL),
                "last_sync": meta.get(MetaKey.LAST_SYNC), "last_sync_error": meta.get(MetaKey.LAST_SYNC_ERROR),
                "last_sync_rejected": int(meta.get(MetaKey.LAST_SYNC_REJECTED) or 0),
                # the server's clock minus this device's when last learnt (ms; null before a sync)
                "clock_offset_ms": server.server_ms - server.wall_ms if server else None}

