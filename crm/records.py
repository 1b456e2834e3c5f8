"""A record's storage form and its public view, shared by the device and the server.

Both stores keep a record as the same columns (``data``, ``meta``, ``deleted``, ``conflicts``; the
device also ``parent``) and both export through ``export_state``, so equal state gives equal
bytes on every replica. Keeping that form in one place is what keeps them equal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from . import merge
from .domain import DELETED, ENTITY_ORDER, LINE_PREFIX, SUBMISSION
from .domain import entity as entity_spec
from .merge import Record
from .ops import Op, dumps, loads

__all__ = [
    "EXPORT_FORMAT",
    "PARENT_FIELD",
    "StoredRecord",
    "canonical_json",
    "export_state",
    "meta_column",
    "present",
    "record_from_row",
    "row_of",
    "row_of_create",
]

EXPORT_FORMAT = "crm-export/1"
# The field naming a record's parent (a visit's account, ...): the device indexes it.
PARENT_FIELD = {name: entity_spec(name).parent for name in ENTITY_ORDER}


class StoredRecord(NamedTuple):
    """A record's row: what both stores write (the server leaves ``parent`` out)."""

    entity: str
    id: str
    data: str
    meta: str
    parent: str | None
    deleted: int
    conflicts: int


def record_from_row(entity: str, rid: str, data: str, meta: str) -> Record:
    """The record a stored row holds."""
    values = loads(data)
    return Record(entity, rid, values, merge.unpack_meta(values, loads(meta)))


def meta_column(rec: Record) -> str:
    """The record's merge metadata as stored (compact; see merge.pack_meta)."""
    return dumps(merge.pack_meta(rec.values, rec.meta))


def _parent(entity: str, values: dict[str, Any]) -> str | None:
    name = PARENT_FIELD.get(entity)
    return values.get(name) if name else None


def row_of(rec: Record) -> StoredRecord:
    """The row of a merged record."""
    return StoredRecord(rec.entity, rec.id, dumps(rec.values), meta_column(rec),
                        _parent(rec.entity, rec.values), 1 if rec.deleted else 0, merge.conflict_count(rec))


def row_of_create(op: Op) -> StoredRecord:
    """The row of a record that exists only through its create op, built without a merge (bulk
    imports and pulls are mostly creates): what ``row_of(merge.apply_op(None, op))`` gives, every
    field won by this op, no conflicts."""
    return StoredRecord(op.entity, op.record_id, dumps(op.fields), dumps({"*": [op.hlc, op.op_id]}),
                        _parent(op.entity, op.fields), 0, 0)


def present(rec: Record) -> dict[str, Any]:
    """A record as users and exports see it: id, then its fields; no merge bookkeeping.

    An order's ``line:<id>`` fields become a ``lines`` list sorted by line id, with its total; a
    submitted order shows the lines its submit saw (``merge.submitted_lines``).
    """
    out: dict[str, Any] = {"id": rec.id}
    lines = []
    submitted = merge.submitted_lines(rec)
    if submitted is not None:
        lines = [{"id": name[len(LINE_PREFIX):], **value} for name, (_, value) in submitted.items()
                 if value is not None]
    for name, value in rec.values.items():
        if name == DELETED or name == SUBMISSION:
            continue
        if name.startswith(LINE_PREFIX):
            if submitted is not None:
                continue
            if value is not None:
                lines.append({"id": name[len(LINE_PREFIX):], **value})
        else:
            out[name] = value
    if rec.entity == "order":
        from decimal import Decimal  # loaded only for orders: `crm visit log` starts faster

        lines.sort(key=lambda line: line["id"])
        out["lines"] = lines
        total = sum((Decimal(line["unit_price"]) * line["quantity"] for line in lines), Decimal(0))
        out["total"] = format(total.quantize(Decimal("0.01")), "f")
    if rec.deleted:
        out["deleted"] = True
    return out


def export_state(rows_for: Callable[[str], Iterable[tuple[str, str, str]]]) -> dict[str, Any]:
    """Canonical export from ``rows_for(entity)`` -> (id, data, meta) rows sorted by id.

    The device and the server both export through this, so equal state gives equal bytes.
    """
    out: dict[str, Any] = {"format": EXPORT_FORMAT}
    conflicts: list[dict[str, Any]] = []
    for entity in ENTITY_ORDER:
        records = []
        for rid, data, meta in rows_for(entity):
            rec = record_from_row(entity, rid, data, meta)
            conflicts.extend(c.to_json() for c in merge.conflicts(rec))
            records.append(present(rec))
        out[entity] = records
    out["conflicts"] = sorted(conflicts, key=lambda c: c["id"])
    return out


def canonical_json(state: dict[str, Any]) -> str:
    """The export as text: sorted keys, two-space indent, so replicas compare byte for byte."""
    return json.dumps(state, sort_keys=True, ensure_ascii=False, indent=2) + "\n"
