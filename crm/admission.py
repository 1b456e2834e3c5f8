"""Which ops a replica admits from elsewhere: the server's gate before anything is applied.

Pure. A pushed op is admitted only when its every field value is already in canonical form
and its kind fits its entity, so every replica can apply it without further checks.
"""

from __future__ import annotations

from typing import Any

from .domain import DELETED, normalize_value
from .domain import entity as entity_spec
from .errors import ValidationError
from .hlc import MAX_DRIFT_MS, now_ms
from .ops import Op


def _canonical(entity: str, name: str, value: Any) -> None:
    f = entity_spec(entity).field(name)
    if value is None:
        if f.required:
            raise ValidationError(f"{entity}.{name} is required and cannot be cleared")
        return
    if normalize_value(f, value) != value:
        raise ValidationError(f"{entity}.{name}: value {value!r:.60} is not in canonical form")


def admit(op: Op, *, from_device: bool = True, now: int | None = None) -> None:
    """Raise ValidationError saying why ``op`` must not be applied; return if it may."""
    spec = entity_spec(op.entity)
    if from_device and not spec.device_writable:
        raise ValidationError(f"{op.entity} records are managed by the server")
    if op.wall_ms > (now if now is not None else now_ms()) + MAX_DRIFT_MS:
        raise ValidationError("op clock stamp is more than a year in the future")
    if len(op.record_id) > 64:
        raise ValidationError("record id longer than 64 characters")
    for name in op.base:
        if name != DELETED:
            spec.field(name)
    fields = op.fields
    if op.kind == "create":
        if op.base:
            raise ValidationError("a create has no base")
        if DELETED in fields:
            raise ValidationError("a create cannot set _deleted")
        missing = [f.name for f in spec.fields if f.required and f.name not in fields]
        if missing:
            raise ValidationError(f"{op.entity} create is missing required fields: {', '.join(missing)}")
        for name, value in fields.items():
            _canonical(op.entity, name, value)
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
        _canonical(op.entity, name, value)
