"""crm.wire, the typed fast path for pushed ops, never accepts what admission.parse refuses, and
builds the very Op parse builds (it is a fast path, never a second rule book). The same for the
client's pulled ops against ops.op_from_wire."""

from __future__ import annotations

import copy
import json

import msgspec
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from crm import wire
from crm.admission import InvalidOp, parse
from crm.hlc import server_now_ms
from crm.ops import OpFormatError, op_from_wire

NOW = server_now_ms()
STAMP = f"{NOW:013d}.00000@dev-1"
LINE = "line:0b9f3a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
VALID = [
    {"op": "op-1", "dev": "dev-1", "hlc": STAMP, "kind": "create", "entity": "account", "id": "acc-1",
     "fields": {"name": "Acme", "city": "Porto", "email": "a@b.co"}, "base": {}},
    {"op": "op-2", "dev": "dev-1", "hlc": STAMP, "kind": "update", "entity": "visit", "id": "v1",
     "fields": {"duration_min": 5, "lat": 1.5, "notes": None}, "base": {"notes": [f"{NOW:013d}.00001@x"]}},
    {"op": "op-3", "dev": "dev-1", "hlc": STAMP, "kind": "update", "entity": "order", "id": "o1",
     "fields": {LINE: {"sku": "A-1", "quantity": 2, "unit_price": "1.50"}}, "base": {LINE: []}},
    {"op": "op-4", "dev": "dev-1", "hlc": STAMP, "kind": "delete", "entity": "account", "id": "acc-1",
     "fields": {"_deleted": True}, "base": {"_deleted": []}},
    {"op": "op-5", "dev": "dev-1", "hlc": STAMP, "entity": "contact", "id": "c1"},
]
ODD_VALUES = [None, True, False, 0, -1, 2**63, 2**64, 2**70, 1.5, -0.0, "", " x", "x\n", "\x00", "é", "a@b.co",
              [], {}, ["x"], {"sku": "A"}, {"sku": 1}, {"quantity": True}, {"quantity": 2**65},
              {"sku": "A", "quantity": 1, "unit_price": "1.00", "x": 1}, "0000000000001.00000@d", "op\n"]
KEYS = ["op", "dev", "hlc", "kind", "entity", "id", "fields", "base", "extra"]
NAMES = ["name", "city", "email", "duration_min", "lat", "_deleted", LINE, "line:nope", "", "x" * 101, "nope"]


def _body(raw: object) -> bytes:
    return json.dumps({"protocol": 1, "ops": [raw]}).encode()


def _fast(raw: object) -> object:
    body = _body(raw)
    typed = wire.decode_push(body)
    if typed is None:
        return None
    return wire.shape(typed.ops[0], NOW)


def _slow(raw: object) -> object:
    """What the slow path makes of ``raw``: parse of what orjson reads in its body."""
    try:
        return parse(orjson.loads(_body(raw))["ops"][0], now=NOW)
    except (InvalidOp, orjson.JSONDecodeError):
        return None


def test_valid_ops_take_the_fast_path_and_give_parse_s_op() -> None:
    for raw in VALID:
        fast = _fast(raw)
        assert fast is not None, raw
        assert fast == parse(raw, now=NOW)


CHANGES = st.lists(st.tuples(st.sampled_from(["key", "field", "base", "drop"]), st.sampled_from(KEYS),
                             st.sampled_from(NAMES), st.sampled_from(ODD_VALUES)), min_size=1, max_size=3)


def _changed(start: dict, changes: list) -> dict:
    raw = copy.deepcopy(start)
    for where, key, name, shared in changes:
        value = copy.deepcopy(shared)  # ODD_VALUES' lists and dicts are shared between examples
        if where == "key":
            raw[key] = value
        elif where == "drop":
            raw.pop(key, None)
        elif where == "field" and isinstance(raw.get("fields"), dict):
            raw["fields"][name] = value
        elif where == "base" and isinstance(raw.get("base"), dict):
            raw["base"][name] = value if isinstance(value, list) else [STAMP if value else value]
    return raw


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(VALID), CHANGES)
def test_what_the_fast_path_accepts_parse_accepts_alike(start: dict, changes: list) -> None:
    raw = _changed(start, changes)
    fast = _fast(raw)
    if fast is not None:
        assert fast == _slow(raw), raw


def test_the_fast_path_refuses_what_parse_refuses() -> None:
    for raw, change in [(VALID[0], {"hlc": f"{NOW:013d}.00000@other"}),
                        (VALID[0], {"id": "Upper"}), (VALID[0], {"op": "op-1\n"}),
                        (VALID[0], {"hlc": f"{NOW + 400 * 86_400_000:013d}.00000@dev-1"}),
                        (VALID[0], {"fields": {"nope": "x"}}), (VALID[1], {"fields": {"duration_min": True}}),
                        (VALID[1], {"fields": {"duration_min": 2**64}}), (VALID[0], {"kind": None}),
                        (VALID[2], {"fields": {LINE: {"sku": "A", "qty": 1}}}), (VALID[0], {"extra": 1})]:
        broken = {**raw, **change}
        assert _fast(broken) is None, change


def _decoded(*raws: object) -> bool:
    return wire.decode_push(json.dumps({"protocol": 1, "ops": list(raws)}).encode()) is not None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(VALID), CHANGES), min_size=2, max_size=4))
def test_a_body_s_ids_and_stamps_are_checked_together_as_each_alone(items: list) -> None:
    """decode_push checks the ids and stamps of a whole body with one regex per kind: a body
    passes exactly when each of its ops would pass alone."""
    raws = [_changed(start, changes) for start, changes in items]
    assert _decoded(*raws) == all(_decoded(raw) for raw in raws), raws


def test_a_newline_cannot_split_one_value_into_two_good_ones() -> None:
    """Joined by newlines, "acc-2\nacc-3" would read as two good ids: the count refuses it."""
    second = f"{NOW:013d}.00000@dev-1"
    for change in ({"id": "acc-2\nacc-3"}, {"op": "op-2\nop-3"}, {"dev": "dev-1\ndev-2"},
                   {"hlc": f"{STAMP}\n{second}"}, {"base": {"name": [f"{second}\n{second}"]}}):
        assert _decoded(VALID[0], VALID[4]) and not _decoded(VALID[0], {**VALID[4], **change}), change


# -- the client's pulled ops --------------------------------------------------------------------
def _typed(raw: object) -> object:
    """What the typed struct alone makes of one pulled op: an Op, or None where it refuses."""
    try:
        (w,) = msgspec.convert([raw], list[wire.PulledOp])
    except msgspec.ValidationError:
        return None
    return None if w.hlc[20:] != w.dev else wire.pulled_ops([raw])[0]


def _by_rule(raw: object) -> object:
    try:
        return op_from_wire(raw)
    except OpFormatError:
        return None


def test_valid_pulled_ops_take_the_typed_path_and_give_op_from_wire_s_op() -> None:
    for raw in VALID:
        assert _typed(raw) is not None, raw
        assert wire.pulled_ops([raw]) == [op_from_wire(raw)]


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(VALID), CHANGES)
def test_what_the_typed_pull_path_accepts_op_from_wire_accepts_alike(start: dict, changes: list) -> None:
    raw = _changed(start, changes)
    typed = _typed(raw)
    if typed is not None:
        assert typed == _by_rule(raw), raw
    try:  # and the page as a whole is what op_from_wire says, op for op
        assert wire.pulled_ops([VALID[0], raw]) == [op_from_wire(VALID[0]), op_from_wire(raw)]
    except OpFormatError:
        assert _by_rule(raw) is None, raw


def test_the_typed_pull_path_refuses_what_op_from_wire_refuses_with_its_reason() -> None:
    wide = "\U0001F600"  # one character, four bytes: lengths count characters, as op_from_wire's do
    assert wire.pulled_ops([{**VALID[0], "id": wide * 64}])[0].record_id == wide * 64
    for change, reason in [({"hlc": f"{NOW:013d}.00000@other"}, "own device id"),
                           ({"id": wide * 65}, "op.id must be"), ({"op": ""}, "op.op must be"),
                           ({"hlc": f"{NOW:013d}.0000@dev-1"}, "invalid clock stamp"),
                           ({"base": {"name": ["nope"]}}, "op.base.name"), ({"kind": "merge"}, "op.kind"),
                           ({"fields": {"": 1}}, "field name"), ({"extra": 1}, "unknown op keys"),
                           ({"fields": ["name"]}, "op.fields must be")]:
        broken = {**VALID[0], **change}
        assert _typed(broken) is None, change
        try:
            wire.pulled_ops([VALID[0], broken])
        except OpFormatError as exc:
            assert reason in str(exc), (change, exc)
        else:
            raise AssertionError(f"accepted {change}")
