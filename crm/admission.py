"""Which ops a replica admits from elsewhere: the server's gate before anything is applied.

Pure, and in two steps (docs/sync-protocol.md, "What the server refuses"):

* ``parse``: does the op fit the protocol's schema? Known keys and entity, JSON types, ids and
  clock stamps well formed, field names the entity has, values of the field's JSON type. An op
  that does not comes from a broken or hostile client: the server refuses its whole batch.
* ``admit``: do the domain rules accept this well-formed op? Its kind fits its entity, a device
  may write it, and every value is already in canonical form, so every replica can apply it
  without further checks. An op that fails is a rep's change the server rejects on its own.

A stamp too far ahead of the server's clock fails either step with ``code = "clock_ahead"``: more
than a year (``parse``, no clock is that far off) or more than MAX_AHEAD_MS (``admit``). That is no
rep's mistake but a device clock's, and the device re-stamps the op and sends it again.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from .domain import _EMAIL, DELETED, ENTITIES, LINE_FIELD, MAX_TEXT, SUBMISSION, Field, normalize_value
from .domain import entity as entity_spec
from .errors import ValidationError
from .hlc import MAX_AHEAD_MS, MAX_DRIFT_MS, server_now_ms
from .ops import Op, OpFormatError, op_from_wire

# Op, device and record ids: what UUIDs and hand-made test ids look like; no spaces, no control
# characters, nothing a log line or a terminal could misread. Record ids are lower case, as refs are.
ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z._:-]{0,63}")
RECORD_ID = re.compile(r"[0-9a-z][0-9a-z-]{0,63}")
MAX_CURSOR = 2**63 - 1  # the largest log position either server engine stores
# A continuity witness, POSITION:OP_ID (docs/sync-protocol.md, "Continuity"): what the server
# accepts from a device, and so all a device keeps of what a server sends.
WITNESS = re.compile(r"([0-9]{1,19}):(" + ID.pattern + ")")


def parse_witness(text: Any) -> tuple[int, str] | None:
    """(position, op id) of a well-formed witness; None for anything else."""
    match = WITNESS.fullmatch(text) if isinstance(text, str) else None
    return (int(match[1]), match[2]) if match is not None and int(match[1]) <= MAX_CURSOR else None


_NUMBER = (int, float)
_JSON_TYPE = {"int": int, "float": _NUMBER, "line": dict, "submission": dict}  # every other kind is text
_LINE_TYPES = {"sku": str, "quantity": int, "unit_price": str}


CLOCK_AHEAD = "clock_ahead"
_REQUIRED = {name: tuple(f.name for f in spec.fields if f.required) for name, spec in ENTITIES.items()}
_TEXT_FIELDS = {name: frozenset(f.name for f in spec.fields if f.kind == "text") for name, spec in ENTITIES.items()}


class InvalidOp(ValidationError):
    """A pushed op that breaks the protocol's schema; ``op_id`` names it when it has a usable one,
    ``code`` is ``clock_ahead`` when what breaks it is a stamp more than a year ahead."""

    def __init__(self, op_id: str | None, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.op_id = op_id
        self.code = code


class ClockAhead(ValidationError):
    """An op stamped further ahead of the server's clock than a stamp may be (MAX_AHEAD_MS)."""

    code = CLOCK_AHEAD


class _FarFuture(OpFormatError):
    pass


def _ahead(op: Op, now: int | None) -> int:
    """How far ``op``'s stamp is ahead of the server's clock, in ms (negative when behind)."""
    return op.wall_ms - (now if now is not None else server_now_ms())


def _json_type_ok(kind: str, value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):  # a JSON true is no number
        return False
    expected = _JSON_TYPE.get(kind, str)
    if not isinstance(value, expected):
        return False
    if kind == "line":
        return all(name in _LINE_TYPES and (part is None or (isinstance(part, _LINE_TYPES[name])
                                                              and not isinstance(part, bool)))
                   for name, part in value.items())
    return True


def _check_shape(op: Op, now: int | None) -> None:
    for label, value, pattern in (("op", op.op_id, ID), ("dev", op.device, ID), ("id", op.record_id, RECORD_ID)):
        if not pattern.fullmatch(value):
            raise OpFormatError(f"op.{label} {value!r:.80} is not a valid id ({pattern.pattern})")
    if op.entity not in ENTITIES:
        raise OpFormatError(f"op.entity {op.entity!r:.80}: unknown entity (one of {', '.join(ENTITIES)})")
    if _ahead(op, now) > MAX_DRIFT_MS:
        raise _FarFuture(f"op.hlc {op.hlc!r}: the clock stamp is more than a year in the future")
    spec = entity_spec(op.entity)
    for name in op.base:
        if name != DELETED:
            try:
                spec.field(name)
            except ValidationError as exc:
                raise OpFormatError(f"op.base: {exc.message}") from None
    for name, value in op.fields.items():
        if name == DELETED:
            if not isinstance(value, bool):
                raise OpFormatError("op.fields._deleted must be true or false")
            continue
        try:
            f = spec.field(name)
        except ValidationError as exc:
            raise OpFormatError(f"op.fields: {exc.message}") from None
        kind = "line" if f is LINE_FIELD else f.kind
        if not _json_type_ok(kind, value):
            expected = {"int": "a whole number", "float": "a number", "line": "an object with sku (text), "
                        "quantity (whole number) and unit_price (text)",
                        "submission": "an object of line ids"}.get(kind, "text")
            raise OpFormatError(f"op.fields.{name} must be {expected} or null, not {value!r:.80}")


def parse(raw: Any, *, now: int | None = None) -> Op:
    """The op ``raw`` holds, if it fits the protocol's schema; else InvalidOp saying what is wrong."""
    op_id = raw.get("op") if isinstance(raw, dict) else None
    op_id = op_id if isinstance(op_id, str) and ID.fullmatch(op_id) else None
    try:
        op = op_from_wire(raw)
        _check_shape(op, now)
    except (OpFormatError, ValidationError) as exc:
        raise InvalidOp(op_id, str(exc), code=CLOCK_AHEAD if isinstance(exc, _FarFuture) else None) from None
    return op


# The canonical form of a record ref (normalize_value: stripped, lower case) and of a UTC date-time
# (_normalize_datetime: whole seconds, "Z"), recognised without rebuilding the value.
_CANON_REF = re.compile(r"[0-9a-z-]{1,64}")
_CANON_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def _plainly_canonical(f: Field, value: Any) -> bool:
    """Whether ``value`` is one ``normalize_value(f, value)`` gives back unchanged, decided without
    building it, for the common cases only: ASCII text (or email) with nothing to strip, a lower
    case record ref, a UTC date-time in whole seconds. False means "not known here", not "not
    canonical": normalize_value decides then (tests/test_admission_canonical.py)."""
    if value.__class__ is not str:
        return False
    kind = f.kind
    if kind == "ref":
        return _CANON_REF.fullmatch(value) is not None
    if kind == "datetime":
        if _CANON_UTC.fullmatch(value) is None:
            return False
        try:
            year = datetime.fromisoformat(value[:-1]).year
        except ValueError:
            return False
        return 1970 <= year <= 2200
    if not value or not value.isascii() or "\x00" in value or value != value.strip():
        return False
    if kind == "text":
        return len(value) <= MAX_TEXT
    return kind == "email" and len(value) <= 254 and _EMAIL.match(value) is not None


def _canonical(entity: str, f: Field, value: Any) -> None:
    if value is None:
        if f.required:
            raise ValidationError(f"{entity}.{f.name} is required and cannot be cleared")
        return
    if _plainly_canonical(f, value):
        return
    if normalize_value(f, value) != value:
        raise ValidationError(f"{entity}.{f.name}: value {value!r:.60} is not in canonical form")


def admit(op: Op, *, from_device: bool = True, now: int | None = None) -> None:
    """Raise ValidationError saying why ``op`` must not be applied; return if it may.

    ``op`` is one ``parse`` accepted: what parse checked (ids, entity, field and base names, value
    types) is not checked again here."""
    spec = entity_spec(op.entity)
    if from_device and not spec.device_writable:
        raise ValidationError(f"{op.entity} records are managed by the server")
    ahead = _ahead(op, now)
    if ahead > MAX_AHEAD_MS:
        raise ClockAhead(f"op clock stamp {op.hlc} is {_duration(ahead)} ahead of the server's clock (at most "
                         f"{_duration(MAX_AHEAD_MS)}): the device's clock is wrong; it re-stamps the op")
    fields = op.fields
    if op.kind == "create":
        if op.base:
            raise ValidationError("a create has no base")
        if DELETED in fields:
            raise ValidationError("a create cannot set _deleted")
        if SUBMISSION in fields:
            raise ValidationError("a create cannot set submission: only the op that submits an order does")
        missing = [name for name in _REQUIRED[op.entity] if name not in fields]
        if missing:
            raise ValidationError(f"{op.entity} create is missing required fields: {', '.join(missing)}")
        texts = _TEXT_FIELDS[op.entity]
        for name, value in fields.items():
            # _canonical's commonest case inline (a create is most of a push): short plain text
            if (name in texts and value.__class__ is str and 0 < len(value) <= MAX_TEXT and value.isascii()
                    and "\x00" not in value and value == value.strip()):
                continue
            _canonical(op.entity, spec.field(name), value)
        return
    if spec.append_only:
        raise ValidationError(f"{op.entity} records are append-only")
    if op.kind == "delete":
        if fields != {DELETED: True}:
            raise ValidationError("a delete sets exactly _deleted = true")
        return
    if not fields and op.kind != "resolve":
        raise ValidationError("an update changes at least one field")
    for name, value in fields.items():
        if name == DELETED:
            if op.kind != "resolve" or not isinstance(value, bool):
                raise ValidationError("_deleted changes only through delete or a resolution")
            continue
        f = spec.field(name)
        if not f.editable and op.kind != "resolve":
            raise ValidationError(f"{op.entity}.{name} cannot be changed after creation")
        _canonical(op.entity, f, value)


def _duration(ms: int) -> str:
    for unit, size in (("days", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms >= 2 * size:
            return f"{ms // size} {unit}"
    return f"{ms} ms"
