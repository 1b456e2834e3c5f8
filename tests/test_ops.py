"""Ops on the wire: a round trip keeps every part, and each malformed shape is refused by name."""

from __future__ import annotations

import pytest

from crm.hlc import format_stamp
from crm.ops import (
    MAX_BASE_STAMPS,
    MAX_FIELDS_PER_OP,
    Op,
    OpFormatError,
    op_from_json,
    op_from_wire,
    op_to_json,
    op_to_wire,
)

T = 1_700_000_000_000
STAMP = format_stamp(T, 3, "dev-a")
SEEN = format_stamp(T - 10, 0, "dev-b")


def good() -> dict:
    return {"op": "op-1", "dev": "dev-a", "hlc": STAMP, "kind": "update", "entity": "account",
            "id": "acct-1", "fields": {"name": "Acme", "line:x": {"sku": "P", "quantity": 2}},
            "base": {"name": [SEEN]}}


def test_round_trip_through_wire_and_json() -> None:
    op = Op(op_id="op-1", device="dev-a", hlc=STAMP, entity="order", record_id="o-1",
            fields={"status": "submitted", "note": "é ✓", "n": None}, base={"status": [SEEN]}, kind="update")
    assert op_from_wire(op_to_wire(op)) == op
    assert op_from_json(op_to_json(op)) == op
    assert op_to_json(op_from_json(op_to_json(op))) == op_to_json(op)  # canonical text is stable
    assert op.wall_ms == T


def test_defaults_for_kind_fields_and_base() -> None:
    raw = {k: v for k, v in good().items() if k not in ("kind", "fields", "base")}
    op = op_from_wire(raw)
    assert (op.kind, op.fields, op.base) == ("update", {}, {})


def test_parsed_op_does_not_share_the_callers_lists() -> None:
    raw = good()
    op = op_from_wire(raw)
    raw["base"]["name"].append(STAMP)
    assert op.base == {"name": [SEEN]}


def _with(**changes) -> dict:
    raw = good()
    for key, value in changes.items():
        if value is ...:
            del raw[key]
        else:
            raw[key] = value
    return raw


MALFORMED = [
    ("not an object", ["op"], "must be a JSON object"),
    ("unknown key", _with(extra=1, also=2), "unknown op keys: also, extra"),
    ("missing op id", _with(op=...), "op.op must be non-empty text"),
    ("empty op id", _with(op=""), "op.op must be non-empty text"),
    ("op id too long", _with(op="x" * 65), "at most 64 characters"),
    ("device not text", _with(dev=7), "op.dev must be non-empty text"),
    ("missing stamp", _with(hlc=...), "op.hlc must be non-empty text"),
    ("malformed stamp", _with(hlc="yesterday"), "invalid clock stamp"),
    ("stamp of another device", _with(hlc=format_stamp(T, 0, "dev-z")), "op.hlc must carry the op's own device"),
    ("unknown kind", _with(kind="merge"), "op.kind must be create, update, delete or resolve"),
    ("kind not text", _with(kind=["update"]), "op.kind must be"),
    ("missing entity", _with(entity=...), "op.entity must be non-empty text"),
    ("record id not text", _with(id=12), "op.id must be non-empty text"),
    ("fields not an object", _with(fields=["name", "Acme"]), "op.fields must be an object"),
    ("too many fields", _with(fields={f"f{i}": i for i in range(MAX_FIELDS_PER_OP + 1)}),
     f"at most {MAX_FIELDS_PER_OP} fields"),
    ("empty field name", _with(fields={"": 1}), "op.fields has a field name that is not text"),
    ("field name not text", _with(fields={3: 1}), "op.fields has a field name that is not text"),
    ("base not an object", _with(base=[SEEN]), "op.base must be an object"),
    ("base field name empty", _with(base={"": [SEEN]}), "op.base has a field name that is not text"),
    ("base stamps not a list", _with(base={"name": SEEN}), f"op.base.name must be a list of at most {MAX_BASE_STAMPS} stamps"),
    ("too many base stamps", _with(base={"name": [SEEN] * (MAX_BASE_STAMPS + 1)}),
     f"op.base.name must be a list of at most {MAX_BASE_STAMPS} stamps"),
    ("malformed base stamp", _with(base={"name": ["17.0@x"]}), "op.base.name: invalid clock stamp"),
    ("base stamp not text", _with(base={"name": [17]}), "op.base.name: clock stamp must be text"),
]


@pytest.mark.parametrize("raw, message", [(raw, msg) for _, raw, msg in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_malformed_ops_are_refused_with_a_message_naming_the_part(raw, message) -> None:
    with pytest.raises(OpFormatError) as refused:
        op_from_wire(raw)
    assert message in str(refused.value)


@pytest.mark.parametrize("text", ["", "{", "[1,", "nul"])
def test_op_from_json_refuses_text_that_is_not_json(text: str) -> None:
    with pytest.raises(OpFormatError, match="an op must be JSON"):
        op_from_json(text)


def test_op_from_json_refuses_json_that_is_not_an_op() -> None:
    with pytest.raises(OpFormatError, match="must be a JSON object"):
        op_from_json("[]")
