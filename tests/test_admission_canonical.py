"""The server's canonical-form check (admission._canonical) decides exactly as normalize_value does:
a value is admitted as is only when normalize_value gives it back unchanged. The check has fast
paths for the common kinds (plain text, emails, record refs, UTC date-times); these tests hold
them against the rule they shortcut, on valid, padded, odd-case and broken values; ``admit`` checks
a create's plain text inline (its commonest case), so a create is held to the same rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crm.admission import _canonical, admit
from crm.domain import ENTITIES, normalize_value
from crm.errors import ValidationError
from crm.ops import Op

FIELDS = [(name, f) for name, spec in ENTITIES.items() for f in spec.fields]
KINDS = {f.kind for _, f in FIELDS}


def _reference(f, value) -> bool:
    try:
        if value is None:
            return not f.required
        return normalize_value(f, value) == value
    except ValidationError:
        return False


def _fast(entity, f, value) -> bool:
    try:
        _canonical(entity, f, value)
    except ValidationError:
        return False
    return True


_VALID = {"text": "x", "long_text": "x", "email": "a@b.co", "ref": "abc", "datetime": "2026-01-01T00:00:00Z",
          "currency": "GBP", "sku": "SKU-1", "decimal": "1.50", "int": 1, "float": 1.0}


def _in_a_create(entity, f, value) -> bool | None:
    """Whether ``admit`` takes a create whose ``f`` is ``value`` (its other required fields valid);
    None for a field no create may set."""
    if f.name == "submission":
        return None
    fields = {g.name: g.choices[0] if g.kind == "enum" else _VALID[g.kind]
              for g in ENTITIES[entity].fields if g.required}
    fields[f.name] = value
    try:
        admit(Op("op-1", "dev-1", "1700000000000.00000@dev-1", entity, "rec-1", fields, {}, "create"),
              from_device=False, now=1700000000000)
    except ValidationError:
        return False
    return True


SAMPLES = [
    None, "", " ", "a", "Shop 1", " Shop", "Shop ", "Sh\x00op", "caf\u00e9", "\ud800", "x" * 2000, "x" * 2001,
    "a@b.co", "A@B.CO", " a@b.co", "a@b", "a@@b.co", "a b@c.de", "x" * 250 + "@b.co",
    "0f8fa1c2-1234-4bcd-8def-0123456789ab", "0F8FA1C2-1234", "abc_def", "-", "a" * 64, "a" * 65, "abc\n",
    "2026-11-26T14:30:00Z", "2026-11-26T14:30:00+00:00", "2026-11-26T14:30:00+01:00", "2026-11-26T14:30:00",
    "2026-02-30T14:30:00Z", "1969-12-31T23:59:59Z", "2200-12-31T23:59:59Z", "2201-01-01T00:00:00Z",
    "2026-11-26T24:00:00Z", "2026-11-26T14:30:00.5Z", "2026-11-26 14:30:00Z", "\u0662026-11-26T14:30:00Z",
    "2026-11-26T14:30:00z", " 2026-11-26T14:30:00Z", "GBP", "gbp", "draft", "Draft", "SKU-1", "1.50", "1.5",
    0, 1, -1, 1440, 1441, True, False, 1.5, 91.0, {"a": 1}, [],
]


@pytest.mark.parametrize("name,f", FIELDS, ids=[f"{n}.{f.name}" for n, f in FIELDS])
def test_the_fast_check_decides_as_normalize_value(name, f):
    for value in SAMPLES:
        assert _fast(name, f, value) == _reference(f, value), (name, f.name, value)
        assert _in_a_create(name, f, value) in (None, _reference(f, value)), (name, f.name, value)


@given(st.sampled_from(FIELDS), st.one_of(
    st.text(max_size=80), st.from_regex(r"[0-9a-zA-Z\- ]{0,70}", fullmatch=True),
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z", fullmatch=True),
    st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ")),
    st.emails(), st.integers(), st.none()))
def test_the_fast_check_decides_as_normalize_value_on_any_value(field, value):
    name, f = field
    assert _fast(name, f, value) == _reference(f, value)
    assert _in_a_create(name, f, value) in (None, _reference(f, value))
