"""The CRM's entities, their fields and the validation every replica applies.

Pure: no I/O. The same rules run on a device before it writes and on the server before it
accepts a pushed change, so a value one replica refuses never reaches another.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import ValidationError

if TYPE_CHECKING:  # decimal loads only when a decimal field is checked: `crm visit log` starts faster
    from decimal import Decimal

ORDER_STATUSES = ("draft", "submitted", "cancelled")
# An order's status only moves forward: the merge keeps the furthest status any replica set.
STATUS_RANK = {name: rank for rank, name in enumerate(ORDER_STATUSES)}
DELETED = "_deleted"
LINE_PREFIX = "line:"
# What the op that submits an order saw of its lines: {line id: line or null}, merged as a join
# (docs/merge-rules.md, "Lines of a submitted order"); never shown as a field of its own.
SUBMISSION = "submission"
# Lines an order may have, removed ones included (each is a field for good); the server rejects an op
# that would pass it, so no order grows without bound (docs/security.md).
MAX_ORDER_LINES = 500
_LINE_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")  # the replicated tombstone flag, an ordinary last-writer-wins field

MAX_TEXT = 2000
MAX_LONG_TEXT = 20000
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_SKU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,63}$")


class Field(NamedTuple):  # not a dataclass: @dataclass costs start-up
    name: str
    kind: str  # text, long_text, email, decimal, int, float, datetime, ref, enum, currency, sku
    required: bool = False
    ref: str | None = None  # the entity a ref field points to
    editable: bool = True
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()
    default: Callable[[], Any] | None = None


class Entity:
    """An entity's fields and rules. Written out rather than made by @dataclass, which costs
    every command's start-up (bench_startup.py); immutable and compared by value as before."""

    name: str
    fields: tuple[Field, ...]
    parent: str | None  # the ref field whose value groups this record (for lookups)
    append_only: bool  # created once, never edited or deleted (notes)
    device_writable: bool  # products are written by the server only
    # An order's lines are fields named "line:<line id>", each a {sku, quantity, unit_price}
    # object: lines added on different devices are different fields, so all of them survive.
    has_lines: bool

    def __init__(self, name: str, fields: tuple[Field, ...], parent: str | None = None,
                 append_only: bool = False, device_writable: bool = True, has_lines: bool = False) -> None:
        put = object.__setattr__
        for key, value in (("name", name), ("fields", fields), ("parent", parent), ("append_only", append_only),
                           ("device_writable", device_writable), ("has_lines", has_lines),
                           ("_by_name", {f.name: f for f in fields}),  # every op and row looks fields up by name
                           ("field_names", tuple(f.name for f in fields))):
            put(self, key, value)

    def _key(self) -> tuple[Any, ...]:
        return (self.name, self.fields, self.parent, self.append_only, self.device_writable, self.has_lines)

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if other.__class__ is self.__class__ else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Entity({self.name!r}, fields={self.field_names!r})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: an Entity is immutable")

    def field(self, name: str) -> Field:
        found = self._by_name.get(name)
        if found is not None:
            return found
        if self.has_lines and name.startswith(LINE_PREFIX):
            if not _LINE_ID.match(name[len(LINE_PREFIX):]):
                raise ValidationError(f"{name!r} is not a valid order line field", details={"field": name})
            return LINE_FIELD
        raise ValidationError(
            f"{self.name} has no field {name!r}",
            details={"field": name, "known": [f.name for f in self.fields]},
        )


LINE_FIELD = Field("line", "line")
_LINE_PARTS = (
    Field("sku", "sku", required=True),
    Field("quantity", "int", required=True, minimum=0, exclusive_minimum=True, maximum=10**9),
    Field("unit_price", "decimal", required=True, minimum=0, maximum=10**12),
)


def utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


ENTITIES: dict[str, Entity] = {
    e.name: e
    for e in (
        Entity(
            "account",
            (
                Field("name", "text", required=True),
                Field("address", "text"),
                Field("city", "text"),
                Field("postcode", "text"),
                Field("phone", "text"),
                Field("email", "email"),
                Field("external_ref", "text"),
                Field("owner", "text"),
                # The sales territory the account belongs to (docs/sync-protocol.md, "Territories"):
                # set on create from the rep's default, changed only by the back office.
                Field("territory", "text", editable=False),
            ),
        ),
        Entity(
            "contact",
            (
                Field("account", "ref", required=True, ref="account", editable=False),
                Field("name", "text", required=True),
                Field("role", "text"),
                Field("email", "email"),
                Field("phone", "text"),
                Field("external_ref", "text"),
            ),
            parent="account",
        ),
        Entity(
            "visit",
            (
                Field("account", "ref", required=True, ref="account", editable=False),
                Field("at", "datetime", required=True, default=utc_now_iso),
                Field("outcome", "text", required=True),
                Field("duration_min", "int", minimum=0, maximum=24 * 60),
                Field("notes", "long_text"),
                Field("lat", "float", minimum=-90, maximum=90),
                Field("lon", "float", minimum=-180, maximum=180),
                Field("rep", "text", editable=False),
            ),
            parent="account",
        ),
        Entity(
            "order",
            (
                Field("account", "ref", required=True, ref="account", editable=False),
                Field("currency", "currency", required=True, default=lambda: "GBP"),
                Field("status", "enum", required=True, choices=ORDER_STATUSES,
                      default=lambda: "draft"),
                Field("placed_at", "datetime", required=True, default=utc_now_iso),
                Field("rep", "text", editable=False),
                Field(SUBMISSION, "submission"),
            ),
            parent="account",
            has_lines=True,
        ),
        Entity(
            "note",
            (
                Field("account", "ref", required=True, ref="account", editable=False),
                Field("visit", "ref", ref="visit", editable=False),
                Field("order", "ref", ref="order", editable=False),
                Field("text", "long_text", required=True, editable=False),
                Field("at", "datetime", required=True, default=utc_now_iso, editable=False),
                Field("rep", "text", editable=False),
            ),
            parent="account",
            append_only=True,
        ),
        Entity(
            "product",
            (
                Field("sku", "sku", required=True, editable=False),
                Field("name", "text", required=True),
                Field("price", "decimal", required=True, minimum=0, maximum=10**12),
                Field("currency", "currency", required=True, default=lambda: "GBP"),
            ),
            device_writable=False,
        ),
    )
}

# The order the export and every listing use; parents before children.
ENTITY_ORDER = ("account", "contact", "visit", "order", "note", "product")


def entity(name: str) -> Entity:
    try:
        return ENTITIES[name]
    except KeyError:
        raise ValidationError(
            f"unknown entity {name!r}", details={"known": list(ENTITY_ORDER)}
        ) from None


def canonical_decimal(value: Decimal) -> str:
    """Money as text with at least two decimals and no exponent: '2.5' -> '2.50'."""
    from decimal import Decimal

    if value == value.to_integral_value() or value.as_tuple().exponent >= -2:
        value = value.quantize(Decimal("0.01"))
    text = format(value, "f")
    return text


def _bad(f: Field, message: str, value: Any) -> ValidationError:
    return ValidationError(f"{f.name}: {message}", details={"field": f.name, "value": repr(value)[:100]})


def _in_range(f: Field, number: float | Decimal | int, value: Any) -> None:
    if f.minimum is not None:
        if f.exclusive_minimum and not number > f.minimum:
            raise _bad(f, f"must be greater than {f.minimum:g}", value)
        if not f.exclusive_minimum and number < f.minimum:
            raise _bad(f, f"must be at least {f.minimum:g}", value)
    if f.maximum is not None and number > f.maximum:
        raise _bad(f, f"must be at most {f.maximum:g}", value)


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be stored and sent: lone surrogates (undecodable argv bytes, JSON
    ``\\ud800`` escapes) cannot be written as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def normalize_value(f: Field, value: Any) -> Any:
    """One field's value in its canonical replicated form, or a ValidationError saying why not."""
    kind = f.kind
    if (kind == "text" and type(value) is str and value.isascii() and 0 < len(value) <= MAX_TEXT
            and "\x00" not in value and value == value.strip()):
        return value  # the common case, already canonical: what the checks below would give back
    if value is None or (isinstance(value, str) and value.strip() == "" and f.kind != "long_text"):
        if f.required:
            raise _bad(f, "is required", value)
        return None
    if kind in ("text", "long_text", "email", "ref", "enum", "currency", "sku", "datetime"):
        if not isinstance(value, str):
            raise _bad(f, "must be text", value)
        if "\x00" in value:
            raise _bad(f, "must not contain NUL characters", value)
        if not value.isascii() and not is_utf8(value):
            raise _bad(f, "is not valid text: it holds an unpaired surrogate (bytes that were not UTF-8)", value)
    if kind == "text":
        value = value.strip()
        if len(value) > MAX_TEXT:
            raise _bad(f, f"is longer than {MAX_TEXT} characters", value)
        return value
    if kind == "long_text":
        if f.required and not value.strip():
            raise _bad(f, "is required", value)
        if len(value) > MAX_LONG_TEXT:
            raise _bad(f, f"is longer than {MAX_LONG_TEXT} characters", value)
        return value
    if kind == "email":
        value = value.strip()
        if len(value) > 254 or not _EMAIL.match(value):
            raise _bad(f, f"{value!r} is not a valid email address", value)
        return value
    if kind == "ref":
        value = value.strip()
        if not (1 <= len(value) <= 64) or not re.fullmatch(r"[0-9A-Za-z\-]+", value):
            raise _bad(f, f"{value!r} is not a valid record id", value)
        return value.lower()
    if kind == "enum":
        value = value.strip().lower()
        if value not in f.choices:
            raise _bad(f, f"must be one of {', '.join(f.choices)}", value)
        return value
    if kind == "currency":
        value = value.strip().upper()
        if not _CURRENCY.match(value):
            raise _bad(f, "must be a three-letter currency code such as GBP", value)
        return value
    if kind == "sku":
        value = value.strip()
        if not _SKU.match(value):
            raise _bad(f, f"{value!r} is not a valid SKU (letters, digits, . _ - /; at most 64)", value)
        return value
    if kind == "datetime":
        return _normalize_datetime(f, value)
    if kind == "line":
        if not isinstance(value, dict) or set(value) - {"sku", "quantity", "unit_price"}:
            raise _bad(f, "an order line is an object with sku, quantity and unit_price", value)
        return {part.name: normalize_value(part, value.get(part.name)) for part in _LINE_PARTS}
    if kind == "submission":
        if not isinstance(value, dict) or len(value) > MAX_ORDER_LINES:
            raise _bad(f, f"the lines a submit saw are an object of at most {MAX_ORDER_LINES} "
                          "line ids, each mapped to its line or null", value)
        out = {}
        for line_id, line in value.items():
            if not isinstance(line_id, str) or not _LINE_ID.match(line_id):
                raise _bad(f, f"{line_id!r:.60} is not a line id", value)
            out[line_id] = None if line is None else normalize_value(LINE_FIELD, line)
        return out
    if kind == "decimal":
        from decimal import Decimal, InvalidOperation

        if isinstance(value, float) or isinstance(value, bool):
            raise _bad(f, "must be a decimal written as text, not a float", value)
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise _bad(f, f"{value!r} is not a decimal number", value) from None
        if not number.is_finite():
            raise _bad(f, "must be a finite number", value)
        if number.as_tuple().exponent < -6:
            raise _bad(f, "has more than 6 decimal places", value)
        _in_range(f, number, value)
        return canonical_decimal(number)
    if kind == "int":
        if isinstance(value, bool):
            raise _bad(f, "must be a whole number", value)
        if isinstance(value, str):
            text = value.strip()
            if not re.fullmatch(r"[+-]?\d{1,18}", text):
                raise _bad(f, f"{value!r} is not a whole number", value)
            number = int(text)
        elif isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        else:
            raise _bad(f, f"{value!r} is not a whole number", value)
        _in_range(f, number, value)
        return number
    if kind == "float":
        if isinstance(value, bool):
            raise _bad(f, "must be a number", value)
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise _bad(f, f"{value!r} is not a number", value) from None
        if not math.isfinite(number):
            raise _bad(f, "must be a finite number", value)
        _in_range(f, number, value)
        return round(number, 7)
    raise AssertionError(f"unknown field kind {kind}")  # pragma: no cover


def _normalize_datetime(f: Field, value: str) -> str:
    """An ISO 8601 date-time to whole seconds, keeping its offset (UTC written ``Z``); one given
    without an offset is UTC here: the CLI makes a rep's local time explicit first
    (``localize_datetime``)."""
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f, f"{value!r} is not an ISO 8601 date-time (e.g. 2026-11-26T14:30:00Z)", value) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if not 1970 <= parsed.year <= 2200 or not 1970 <= parsed.astimezone(UTC).year <= 2200:
        raise _bad(f, "is out of range", value)
    return _iso(parsed)


def _iso(moment: datetime) -> str:
    """``moment`` as stored: seconds, then ``Z`` for UTC or its offset as ``+HH:MM``."""
    offset = moment.utcoffset()
    seconds = int(offset.total_seconds()) if offset is not None else 0
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if seconds == 0:
        return text + "Z"
    sign, seconds = ("-", -seconds) if seconds < 0 else ("+", seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}" + (f":{secs:02d}" if secs else "")


def localize_datetime(value: str, zone: tzinfo) -> str:
    """A date-time the rep typed: without an offset it is local time in ``zone`` and gets that
    zone's offset on that date; with one it is left alone. A time the zone skips (clocks going
    forward) is refused; one it has twice (clocks going back) is the first. Anything that is not
    a date-time is returned unchanged, for ``normalize_value`` to refuse with its usual message."""
    text = value.strip() if isinstance(value, str) else value
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, TypeError, AttributeError):
        return value
    if parsed.tzinfo is not None:
        return value
    local = parsed.replace(tzinfo=zone, fold=0)
    if local.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != parsed:
        raise ValidationError(f"{value!r} does not exist in {zone}: the clocks skip it (daylight saving "
                              "time begins); give the time after the change, or an offset",
                              details={"value": value[:100], "zone": str(zone)})
    return _iso(local)


def in_zone(value: Any, zone: tzinfo) -> Any:
    """A stored date-time as local time in ``zone`` (for people to read); anything else unchanged."""
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if parsed.tzinfo is None:
        return value
    return _iso(parsed.astimezone(zone))


def validate_create(entity_name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """All of a new record's fields, normalized, defaults filled, unknown names refused."""
    ent = entity(entity_name)
    out: dict[str, Any] = {}
    for name in fields:
        f = ent.field(name)
        if f is LINE_FIELD:
            out[name] = normalize_value(f, fields[name])
    for f in ent.fields:
        value = fields.get(f.name)
        if value is None and f.default is not None:
            value = f.default()
        value = normalize_value(f, value)
        if value is not None:
            out[f.name] = value
    return out


def validate_edit(entity_name: str, changes: dict[str, Any]) -> dict[str, Any]:
    """The changed fields of an existing record, normalized; None clears an optional field."""
    ent = entity(entity_name)
    if ent.append_only:
        raise ValidationError(f"{entity_name} records are append-only and cannot be edited")
    if not changes:
        raise ValidationError("nothing to change: give at least one field=value")
    out: dict[str, Any] = {}
    for name, value in changes.items():
        f = ent.field(name)
        if not f.editable:
            raise ValidationError(f"{entity_name}.{name} cannot be changed after creation",
                                  details={"field": name})
        out[name] = None if (f is LINE_FIELD and value is None) else normalize_value(f, value)
    return out
