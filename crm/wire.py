"""Ops decoded and checked by typed msgspec structs: the server's hot path for a push body, and
the client's for the ops of a pull page (``pulled_ops``, at the end).

One pass of msgspec's decoder turns a push body into typed structs and checks, on the way, what
the protocol's schema says of every op that a type can say: known keys only, JSON types, field
names well formed, at most MAX_FIELDS_PER_OP fields and MAX_BASE_STAMPS stamps per base entry.
The ids and clock stamps of the whole body are then checked by one regex per kind (``_all_match``).
``shape`` then checks what depends on the op's entity
(field and base names the entity has, values of the field's JSON type) and its clock stamp, and
builds the Op.

This is a fast path, never a second rule book: anything it does not accept, whatever the
reason, goes to ``crm.admission.parse`` on the dicts ``orjson`` gives, which is what says why an
op is refused (and refuses it exactly as before). So the typed schema here must be at least as
strict as ``parse``; tests/test_wire.py holds them against each other on valid and broken ops.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from .domain import DELETED, ENTITIES, LINE_FIELD, Entity
from .errors import ValidationError
from .hlc import MAX_DRIFT_MS
from .ops import MAX_BASE_STAMPS, MAX_FIELD_NAME, MAX_FIELDS_PER_OP, Op, op_from_wire

# The patterns of crm.admission (ID, RECORD_ID) and crm.hlc.parse_stamp, anchored for re.search
# (\Z, not $: $ also matches before a final newline).
_ID = r"\A[0-9A-Za-z][0-9A-Za-z._:-]{0,63}\Z"
_RECORD_ID = r"\A[0-9a-z][0-9a-z-]{0,63}\Z"
_STAMP = r"\A[0-9]{13}\.[0-9]{5}@[^@]{1,64}\Z"
_DEVICE_AT = 20  # a stamp's device id starts after 13 wall digits, '.', 5 counter digits, '@'

StampText = Annotated[str, Meta(pattern=_STAMP)]
FieldName = Annotated[str, Meta(min_length=1, max_length=MAX_FIELD_NAME)]


def _batch(pattern: str) -> re.Pattern[str]:
    """``pattern`` for many values joined by newlines: its anchors dropped, and no newline inside a
    value (``_all_match`` refuses any value that holds one before this pattern reads it)."""
    one = pattern.removeprefix("\\A").removesuffix("\\Z").replace("[^@]", "[^@\\n]")
    return re.compile(f"(?:{one}\n)*{one}")


_IDS, _RECORD_IDS, _STAMPS = _batch(_ID), _batch(_RECORD_ID), _batch(_STAMP)


def _all_match(batch: re.Pattern[str], values: list[str]) -> bool:
    """Whether every one of ``values`` matches the pattern ``batch`` was made from: one regex over
    them joined, not one each (a push's ids and stamps each cost msgspec a Python regex call, 5 µs
    an op in all). A value holding a newline itself would split in two: the count refuses it."""
    joined = "\n".join(values)
    return joined.count("\n") == len(values) - 1 and batch.fullmatch(joined) is not None


# orjson, which the slow path parses with, reads integers past 64 bits as floats: such a value
# goes the slow way so it is judged exactly as before.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class WireOp(Struct, forbid_unknown_fields=True, gc=False):
    """One op as the wire carries it (crm.ops.op_to_wire)."""

    op: str  # op and dev: _ID, id: _RECORD_ID, hlc and base stamps: _STAMP (decode_push checks them)
    dev: str
    hlc: str
    entity: Literal[tuple(ENTITIES)]  # type: ignore[valid-type]
    id: str
    kind: Literal["create", "update", "delete", "resolve"] = "update"
    fields: Annotated[dict[FieldName, Any], Meta(max_length=MAX_FIELDS_PER_OP)] = msgspec.field(
        default_factory=dict)
    base: Annotated[dict[FieldName, Annotated[list[str], Meta(max_length=MAX_BASE_STAMPS)]],
                    Meta(max_length=MAX_FIELDS_PER_OP)] = msgspec.field(default_factory=dict)


class PushBody(Struct, forbid_unknown_fields=True, gc=False):
    """A push request's body (docs/sync-protocol.md); ``protocol`` and the continuity claims are
    checked by the handler as for any body, UNSET meaning the key was left out."""

    ops: list[WireOp]
    protocol: int | UnsetType = UNSET
    device: str | UnsetType = UNSET
    witness: str | UnsetType = UNSET
    known: str | UnsetType = UNSET

    def claims(self) -> dict[str, Any]:
        """The body's keys other than ``ops``, as the JSON object held them."""
        return {name: value for name in ("protocol", "device", "witness", "known")
                if (value := getattr(self, name)) is not UNSET}


_DECODER = msgspec.json.Decoder(PushBody)
_LINE_PARTS = {"sku": str, "quantity": int, "unit_price": str}
# entity -> field name -> the Python types its JSON value may have (None aside)
_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    name: {f.name: {"int": (int,), "float": (int, float), "submission": (dict,)}.get(f.kind, (str,))
           for f in spec.fields}
    for name, spec in ENTITIES.items()
}


def decode_push(body: bytes) -> PushBody | None:
    """The push body as typed structs, or None when it breaks any part of the typed schema (or
    nests past the interpreter's recursion limit: the slow path refuses it as too deep)."""
    try:
        typed = _DECODER.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None
    ops = typed.ops
    if ops and not (_all_match(_IDS, [w.op for w in ops] + [w.dev for w in ops])
                    and _all_match(_RECORD_IDS, [w.id for w in ops])
                    and _all_match(_STAMPS, [w.hlc for w in ops]
                                   + [stamp for w in ops for stamps in w.base.values() for stamp in stamps])):
        return None
    return typed


def nests(ops: list[WireOp]) -> bool:
    """Whether any op holds an object or array as a field value: the one place the typed schema
    leaves the nesting of a push body open (order lines and a submit's lines)."""
    for w in ops:
        for value in w.fields.values():
            if value.__class__ is dict or value.__class__ is list:
                return True
    return False


def _line_ok(value: Any) -> bool:
    if type(value) is not dict:
        return False
    for name, part in value.items():
        expected = _LINE_PARTS.get(name)
        if expected is None:
            return False
        if part is not None and (type(part) is not expected
                                 or (expected is int and not _INT_MIN <= part <= _INT_MAX)):
            return False
    return True


def _is_line(spec: Entity, name: str) -> bool:
    if not spec.has_lines:
        return False
    try:
        return spec.field(name) is LINE_FIELD
    except ValidationError:
        return False


def shape(w: WireOp, now: int) -> Op | None:
    """The Op ``w`` holds if it passes every check of ``admission.parse``; None for the slow path."""
    hlc = w.hlc
    if hlc[_DEVICE_AT:] != w.dev or int(hlc[:13]) - now > MAX_DRIFT_MS:
        return None
    entity = w.entity
    spec = ENTITIES[entity]
    types = _TYPES[entity]
    for name in w.base:
        if name != DELETED and name not in types and not _is_line(spec, name):
            return None
    fields = w.fields
    for name, value in fields.items():
        expected = types.get(name)
        if expected is None:
            if name == DELETED:
                if type(value) is not bool:
                    return None
                continue
            if not _is_line(spec, name):
                return None
            if value is not None and not _line_ok(value):
                return None
            continue
        if value is None:
            continue
        kind = type(value)
        if kind not in expected:  # bool is no int: type(), not isinstance()
            return None
        if kind is int and not _INT_MIN <= value <= _INT_MAX:
            return None
    return Op(op_id=w.op, device=w.dev, hlc=hlc, entity=entity, record_id=w.id, fields=fields,
              base=w.base, kind=w.kind)


# -- the client: a pull page's ops --------------------------------------------------------------
# ``ops.op_from_wire`` is the client's rule for a pulled op (the server already admitted it, so
# only its structure is checked, not its entity's fields); the typed struct below says the same
# in msgspec's terms, and anything it refuses goes to op_from_wire, which says why.
Text = Annotated[str, Meta(min_length=1, max_length=64)]


class PulledOp(Struct, forbid_unknown_fields=True, gc=False):
    """One op of a pull page, as strict as ``ops.op_from_wire`` (tests/test_wire.py)."""

    op: Text
    dev: Text
    hlc: StampText
    entity: Text
    id: Text
    kind: Literal["create", "update", "delete", "resolve"] = "update"
    fields: Annotated[dict[FieldName, Any], Meta(max_length=MAX_FIELDS_PER_OP)] = msgspec.field(
        default_factory=dict)
    base: Annotated[dict[FieldName, Annotated[list[StampText], Meta(max_length=MAX_BASE_STAMPS)]],
                    Meta(max_length=MAX_FIELDS_PER_OP)] = msgspec.field(default_factory=dict)


_PULLED = list[PulledOp]


def pulled_ops(raw: Any) -> list[Op]:
    """The Ops of a pull page's ``ops`` (the JSON values orjson read); OpFormatError, from
    op_from_wire, for the first one that is not an op. Half the CPU of op_from_wire per op."""
    try:
        typed = msgspec.convert(raw, _PULLED)
    except (msgspec.ValidationError, RecursionError):
        typed = None
    if typed is not None and all(w.hlc[_DEVICE_AT:] == w.dev for w in typed):
        return [Op(w.op, w.dev, w.hlc, w.entity, w.id, w.fields, w.base, w.kind) for w in typed]
    if not isinstance(raw, list):
        raise TypeError("ops is not a list")
    return [op_from_wire(item) for item in raw]


__all__ = ["PulledOp", "PushBody", "WireOp", "decode_push", "nests", "pulled_ops", "shape"]
