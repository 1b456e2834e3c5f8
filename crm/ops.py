"""An op is one change to one record: the unit the outbox stores, the wire carries and merge applies.

Data plus pure conversion functions, so the outbox, the protocol and the merge rules share one
definition and none of them needs the store to reason about an op.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from .hlc import ClockError, parse_stamp

# The sync protocol's version, which a push names and the server checks (docs/sync-protocol.md):
# defined here, with the op it carries, for both ends. Version 2 added territories (a pull names
# the scope epoch it holds and gets moves); the server still takes version 1 (docs/sync-protocol.md).
PROTOCOL = 2
PROTOCOLS = (1, 2)
MAX_FIELDS_PER_OP = 64
MAX_BASE_STAMPS = 256
MAX_FIELD_NAME = 100


class OpFormatError(ValueError):
    """A wire op that is structurally unusable; the message says which part and why."""


class Op:
    """One change to one record, as made on a device and sent over the wire. Immutable, compared
    by value. Written out rather than made by @dataclass, which costs every command's start-up
    (bench_startup.py); it behaves as the frozen dataclass it was."""

    __slots__ = ("op_id", "device", "hlc", "entity", "record_id", "fields", "base", "kind")
    op_id: str
    device: str
    hlc: str  # the stamp every field write in this op carries
    entity: str
    record_id: str
    fields: dict[str, Any]  # field -> new value
    # field -> the stamps of the versions this change was made on top of (what the writer saw).
    # A delete lists every field it saw; a conflict resolution lists every side it chose between.
    base: dict[str, list[str]]
    kind: str  # create | update | delete | resolve: for people and for validation

    def __init__(self, op_id: str, device: str, hlc: str, entity: str, record_id: str,
                 fields: dict[str, Any] | None = None, base: dict[str, list[str]] | None = None,
                 kind: str = "update") -> None:
        # The slots' own setters (bound below the class): half the cost of object.__setattr__,
        # and a pull or a push builds an Op per op (bench_sync.py).
        _set_op_id(self, op_id)
        _set_device(self, device)
        _set_hlc(self, hlc)
        _set_entity(self, entity)
        _set_record_id(self, record_id)
        _set_fields(self, {} if fields is None else fields)
        _set_base(self, {} if base is None else base)
        _set_kind(self, kind)

    def _key(self) -> tuple[Any, ...]:
        return (self.op_id, self.device, self.hlc, self.entity, self.record_id, self.fields, self.base, self.kind)

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if other.__class__ is self.__class__ else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "Op(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__) + ")"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: an Op is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: an Op is immutable")

    @property
    def wall_ms(self) -> int:
        return int(self.hlc[:13])


(_set_op_id, _set_device, _set_hlc, _set_entity, _set_record_id, _set_fields, _set_base,
 _set_kind) = (getattr(Op, name).__set__ for name in Op.__slots__)


def op_to_wire(op: Op) -> dict[str, Any]:
    return {
        "op": op.op_id,
        "dev": op.device,
        "hlc": op.hlc,
        "kind": op.kind,
        "entity": op.entity,
        "id": op.record_id,
        "fields": op.fields,
        "base": op.base,
    }


def dumps(obj: Any) -> str:
    """Compact JSON with sorted keys: the stored and wire form of ops and records.

    orjson, because bulk import and sync spend much of their time here (about 6x json's speed);
    the output is the same text ``json.dumps(..., separators=(",", ":"), sort_keys=True,
    ensure_ascii=False)`` gives.
    """
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode()


loads = orjson.loads


def op_to_json(op: Op) -> str:
    return dumps(op_to_wire(op))


def _text(raw: dict, key: str, max_len: int = 64) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise OpFormatError(f"op.{key} must be non-empty text of at most {max_len} characters")
    return value


_WIRE_KEYS = frozenset({"op", "dev", "hlc", "kind", "entity", "id", "fields", "base"})


def op_from_wire(raw: Any) -> Op:
    """Rebuild an op from its wire form, refusing anything structurally wrong."""
    if not isinstance(raw, dict):
        raise OpFormatError("an op must be a JSON object")
    if not _WIRE_KEYS.issuperset(raw):
        raise OpFormatError(f"unknown op keys: {', '.join(sorted(map(str, set(raw) - _WIRE_KEYS)))}")
    op_id = _text(raw, "op")
    device = _text(raw, "dev")
    hlc = _text(raw, "hlc", 100)
    try:
        stamp = parse_stamp(hlc)
    except ClockError as exc:
        raise OpFormatError(str(exc)) from None
    if stamp.device != device:
        raise OpFormatError("op.hlc must carry the op's own device id")
    kind = raw.get("kind", "update")
    if kind not in ("create", "update", "delete", "resolve"):
        raise OpFormatError("op.kind must be create, update, delete or resolve")
    fields = raw.get("fields", {})
    base = raw.get("base", {})
    if not isinstance(fields, dict) or len(fields) > MAX_FIELDS_PER_OP:
        raise OpFormatError(f"op.fields must be an object of at most {MAX_FIELDS_PER_OP} fields")
    if not isinstance(base, dict) or len(base) > MAX_FIELDS_PER_OP:
        raise OpFormatError("op.base must be an object mapping field names to lists of stamps")
    for part, names in (("fields", fields), ("base", base)):
        for name in names:
            if not isinstance(name, str) or not name or len(name) > MAX_FIELD_NAME:
                raise OpFormatError(f"op.{part} has a field name that is not text of 1 to "
                                    f"{MAX_FIELD_NAME} characters: {name!r:.40}")
    clean_base: dict[str, list[str]] = {}
    for name, stamps in base.items():
        if not isinstance(stamps, list) or len(stamps) > MAX_BASE_STAMPS:
            raise OpFormatError(f"op.base.{name} must be a list of at most {MAX_BASE_STAMPS} stamps")
        for s in stamps:
            try:
                parse_stamp(s)
            except ClockError as exc:
                raise OpFormatError(f"op.base.{name}: {exc}") from None
        clean_base[name] = list(stamps)
    return Op(op_id=op_id, device=device, hlc=hlc, entity=_text(raw, "entity"),
              record_id=_text(raw, "id"), fields=dict(fields), base=clean_base, kind=kind)


def op_from_json(text: str) -> Op:
    try:
        raw = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes
        raise OpFormatError(f"an op must be JSON: {exc}") from None
    return op_from_wire(raw)
