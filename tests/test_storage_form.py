"""The compact storage form of merge metadata restores exactly what was packed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crm.merge import pack_meta, unpack_meta

stamps = st.sampled_from([f"17957067839{i:02d}.0000{i % 3}@dev-{i % 4}" for i in range(12)])
ops = st.sampled_from([f"op-{i}" for i in range(6)])
names = st.sampled_from(["name", "city", "phone", "email", "_deleted", "line:0192"])


@st.composite
def field_meta(draw):
    fm = {"s": draw(stamps), "o": draw(ops)}
    if draw(st.booleans()):
        fm["x"] = sorted(draw(st.sets(stamps, min_size=1, max_size=3)))
    if draw(st.booleans()):
        fm["c"] = [[draw(stamps), draw(ops), draw(st.text(max_size=5))]]
    return fm


@st.composite
def records(draw):
    meta = draw(st.dictionaries(names, field_meta(), max_size=6))
    values = {name: draw(st.text(max_size=4)) for name in meta if draw(st.booleans()) or "x" not in meta[name]}
    for name in draw(st.lists(names, max_size=2)):  # base-only fields: metadata without a value
        meta.setdefault(name, {"x": [draw(stamps)]})
        values.pop(name, None) if "s" not in meta[name] else None
    return values, meta


@given(records())
def test_pack_then_unpack_is_the_identity(record):
    values, meta = record
    assert unpack_meta(values, pack_meta(values, meta)) == meta


def test_a_record_written_once_packs_to_one_entry():
    values = {"name": "Corner Store", "city": "Leeds", "owner": "rep-1"}
    meta = {name: {"s": "1795706783938.00000@d1", "o": "op-1"} for name in values}
    assert pack_meta(values, meta) == {"*": ["1795706783938.00000@d1", "op-1"]}


def test_the_fresh_create_row_is_what_the_merge_would_store(tmp_path):
    """The create fast path must store exactly what the general merge path would."""
    from crm import Device
    from crm.records import record_from_row

    device = Device.init(tmp_path / "home", rep="rep-1")
    account = device.create("account", {"name": "Corner Store", "city": "Leeds"})
    with device.store.read() as conn:
        data, meta = conn.execute("SELECT data, meta FROM records WHERE id = ?", (account["id"],)).fetchone()
        body = conn.execute("SELECT body FROM outbox").fetchone()[0]
    from crm.merge import apply_op
    from crm.ops import op_from_json

    expected = apply_op(None, op_from_json(body))
    stored = record_from_row("account", account["id"], data, meta)
    assert (stored.values, stored.meta) == (expected.values, expected.meta)
