"""The merge rules: pure functions from (record state, op) to record state.

Every replica, device and server alike, applies ops through ``apply_op`` and nothing else, so
they converge to the same state whatever order ops arrive in and however often. The rules,
with their table of cases, are in docs/merge-rules.md:

* Each field is last-writer-wins by its stamp (hybrid logical clock, then device id).
* A write nobody built on is a *leaf*. A leaf that is not its field's winner is a concurrent
  edit that lost: it stays in the record's metadata and is reported by ``conflicts`` until a
  resolution (an op whose base lists it) supersedes it. Nothing is silently discarded.
* ``order.status`` is a join: the furthest status in draft -> submitted -> cancelled wins.
* Delete is a write of the ``_deleted`` field whose base lists every version it saw. Delete wins;
  an edit the delete did not see stays a leaf and is reported as an edit of a deleted record,
  which resolving with ``--keep loser`` restores.
* The op that submits an order also writes ``submission``, the lines it saw; that field is a join
  (per line, the entry of the greatest stamp). A submitted order shows those lines, and a line
  version the submission does not hold is reported as an edit of a submitted order.

Per-field metadata (``Record.meta[field]``), keys present only when non-empty:
``s`` winner stamp, ``o`` winner op id, ``x`` stamps superseded (named in some op's base),
``c`` losing leaves as ``[stamp, op_id, value]`` sorted by stamp.

History is bounded (``bound_history``): a record keeps at most MAX_HISTORY entries of ``x`` and
``c`` together; older ones fall behind the record's *horizon*, ``meta[HORIZON] = {"f": stamp}``,
and any version stamped at or before the horizon counts as seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from .domain import DELETED, LINE_PREFIX, STATUS_RANK, SUBMISSION
from .ops import Op

FORWARD_ONLY = {("order", "status")}
# Fields merged as a join of every write rather than last-writer-wins (``_join``).
JOINED = {("order", SUBMISSION)}
# The most history entries (superseded stamps and open losing versions, over all its fields) a
# record keeps; older ones fall behind its horizon (docs/merge-rules.md). A legitimate edit adds
# about one; one op may name 64 x 256, so without a bound a record grew by 13.6 MB per push.
MAX_HISTORY = 256
HORIZON = "~"  # the meta key of a record's horizon: never a field name (admission checks names)


class Record:
    """A record's winning values and merge metadata. Written out rather than made by @dataclass,
    which costs every command's start-up (bench_startup.py); it behaves as the dataclass it was."""

    entity: str
    id: str
    values: dict[str, Any]
    meta: dict[str, dict[str, Any]]
    # How many history entries ``meta`` holds (None: not counted yet); kept up to date by the merge
    # so that bounding history costs what an op touches, not the size of the record.
    history: int | None  # neither compared nor shown

    def __init__(self, entity: str, id: str, values: dict[str, Any] | None = None,  # noqa: A002
                 meta: dict[str, dict[str, Any]] | None = None, history: int | None = None) -> None:
        self.entity = entity
        self.id = id
        self.values = {} if values is None else values
        self.meta = {} if meta is None else meta
        self.history = history

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.entity, self.id, self.values, self.meta) == (other.entity, other.id, other.values, other.meta)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass was

    def __repr__(self) -> str:
        return f"Record(entity={self.entity!r}, id={self.id!r}, values={self.values!r}, meta={self.meta!r})"

    @property
    def deleted(self) -> bool:
        return self.values.get(DELETED) is True


class Conflict(NamedTuple):  # not a dataclass: @dataclass costs start-up
    id: str  # "<losing op id>:<field>": the same on every replica
    entity: str
    record_id: str
    field: str
    kind: str  # concurrent_edit | edit_of_deleted | edit_of_submitted
    winner_value: Any
    winner_stamp: str | None
    loser_value: Any
    loser_stamp: str
    loser_op: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "entity": self.entity,
            "record": self.record_id,
            "field": self.field,
            "kind": self.kind,
            "winner": {"value": self.winner_value, "stamp": self.winner_stamp},
            "loser": {"value": self.loser_value, "stamp": self.loser_stamp},
        }


def _wins(entity: str, name: str, new: tuple[str, Any], cur: tuple[str, Any]) -> bool:
    """Whether write ``new`` (stamp, value) beats the current winner ``cur``."""
    if (entity, name) in FORWARD_ONLY:
        return (STATUS_RANK.get(new[1], -1), new[0]) > (STATUS_RANK.get(cur[1], -1), cur[0])
    return new[0] > cur[0]


def _supersede(fm: dict[str, Any], stamps: list[str], horizon: str) -> None:
    stamps = [stamp for stamp in stamps if stamp > horizon]  # at or behind it: already seen
    if not stamps:
        return
    x = set(fm.get("x", ()))
    x.update(stamps)
    fm["x"] = sorted(x)
    if "c" in fm:
        fm["c"] = [leaf for leaf in fm["c"] if leaf[0] not in x]
        if not fm["c"]:
            del fm["c"]


def _add_loser(fm: dict[str, Any], leaf: list[Any], horizon: str) -> None:
    if leaf[0] <= horizon or leaf[0] in fm.get("x", ()):
        return  # somebody already built on it: an ordinary overwrite, not a conflict
    leaves = fm.setdefault("c", [])
    if all(existing[0] != leaf[0] for existing in leaves):
        leaves.append(leaf)
        leaves.sort(key=lambda item: item[0])


def _join(rec: Record, name: str, stamp: str, op_id: str, value: Any) -> None:
    """A write of a joined field: per key, the entry written by the greatest stamp, stored as
    ``[stamp, value]``; the field's winner stamp is the greatest. Commutative and idempotent."""
    fm = rec.meta.setdefault(name, {})
    current = rec.values.get(name)
    merged = dict(current) if isinstance(current, dict) else {}  # never change a dict a caller holds
    for key, entry in (value or {}).items():
        held = merged.get(key)
        if held is None or stamp > held[0]:
            merged[key] = [stamp, entry]
    rec.values[name] = merged
    if "s" not in fm or stamp > fm["s"]:
        fm["s"], fm["o"] = stamp, op_id


def _write(rec: Record, name: str, stamp: str, op_id: str, value: Any, horizon: str) -> None:
    if (rec.entity, name) in JOINED:
        _join(rec, name, stamp, op_id, value)
        return
    fm = rec.meta.setdefault(name, {})
    cur = fm.get("s")
    if cur == stamp or any(leaf[0] == stamp for leaf in fm.get("c", ())):
        return  # this exact write is already here
    forward = (rec.entity, name) in FORWARD_ONLY
    if cur is None:
        fm["s"], fm["o"] = stamp, op_id
        rec.values[name] = value
        return
    if _wins(rec.entity, name, (stamp, value), (cur, rec.values.get(name))):
        if not forward:
            _add_loser(fm, [cur, fm["o"], rec.values.get(name)], horizon)
        fm["s"], fm["o"] = stamp, op_id
        rec.values[name] = value
    elif not forward:
        _add_loser(fm, [stamp, op_id, value], horizon)


def apply_op(record: Record | None, op: Op, *, history: int | None = None) -> Record:
    """The record after ``op``; idempotent, and the result is independent of arrival order.
    ``history``: the most history entries the record keeps (MAX_HISTORY; see bound_history)."""
    rec = Record(op.entity, op.record_id) if record is None else _copy(record)
    _apply_in_place(rec, op, MAX_HISTORY if history is None else history)
    return rec


def _copy(record: Record) -> Record:
    return Record(record.entity, record.id, dict(record.values),
                  {k: {mk: (list(mv) if isinstance(mv, list) else mv) for mk, mv in v.items()}
                   for k, v in record.meta.items()}, record.history)


def _history_count(meta: dict[str, dict[str, Any]], names: Iterable[str] | None = None) -> int:
    """History entries (``x`` and ``c``) in ``meta``, or in its fields ``names`` only."""
    fms = meta.values() if names is None else (meta[name] for name in names if name in meta)
    return sum(len(fm.get("x", ())) + len(fm.get("c", ())) for fm in fms)


def _apply_in_place(rec: Record, op: Op, history: int) -> None:
    """``apply_op`` on a record the caller owns. Its cost depends on the op, not on the size of
    the record (the history count is kept up to date from the fields the op touches), so a
    batch of edits to a large order stays cheap."""
    if rec.history is None:
        rec.history = _history_count(rec.meta)
    touched = {*op.base, *op.fields}
    before = _history_count(rec.meta, touched)
    horizon = _horizon(rec.meta)
    for name, stamps in op.base.items():
        _supersede(rec.meta.setdefault(name, {}), stamps, horizon)
    for name, value in op.fields.items():
        _write(rec, name, op.hlc, op.op_id, value, horizon)
    for name in op.base:  # only a base can leave a field empty (all its stamps behind the horizon)
        if name in rec.meta and not rec.meta[name]:
            del rec.meta[name]
    rec.history += _history_count(rec.meta, touched) - before
    if rec.history > history:
        rec.meta = bound_history(rec.meta, history)
        rec.history = _history_count(rec.meta)


def _horizon(meta: dict[str, dict[str, Any]]) -> str:
    """The record's horizon: versions stamped at or before it count as seen ("" before any)."""
    return meta.get(HORIZON, {}).get("f", "")


def bound_history(meta: dict[str, dict[str, Any]], limit: int = MAX_HISTORY) -> dict[str, dict[str, Any]]:
    """``meta`` keeping at most ``limit`` history entries: superseded stamps (``x``) and open
    losing versions (``c``), counted over every field of the record. Pure.

    Entries are ranked by stamp (then field name). Past the limit, the horizon moves up to the
    stamp of the newest entry that does not fit, and every entry stamped at or before it goes
    (entries tied with it too, so the limit is never exceeded); a field left with neither value
    nor history goes with them. Winners (``s``, ``o``) are never pruned. The horizon only moves
    forward and, like ``x`` and ``c``, depends only on the set of ops applied: the ``limit``
    newest entries of a union are the ``limit`` newest of the parts' newest, so replicas still
    converge whatever the arrival order. What falls behind it counts as seen: ``_add_loser``
    and ``_supersede`` ignore such stamps and ``is_leaf`` is false for such a winner.

    ``meta`` itself is not changed; the result shares the fields it does not prune with it.
    """
    if _history_count(meta) <= limit:
        return meta
    entries = sorted(((stamp, name) for name, fm in meta.items() if "x" in fm or "c" in fm
                      for stamp in (*fm.get("x", ()), *(leaf[0] for leaf in fm.get("c", ())))), reverse=True)
    horizon = max(entries[limit][0], _horizon(meta))
    out = dict(meta)  # fields with nothing behind the horizon are kept as they are
    for name in {name for stamp, name in entries if stamp <= horizon}:
        fm = meta[name]
        kept = {key: value for key, value in fm.items() if key not in ("x", "c")}
        x = [stamp for stamp in fm.get("x", ()) if stamp > horizon]
        c = [leaf for leaf in fm.get("c", ()) if leaf[0] > horizon]
        if x:
            kept["x"] = x
        if c:
            kept["c"] = c
        if kept:
            out[name] = kept
        else:
            del out[name]
    out[HORIZON] = {"f": horizon}
    return out


def is_leaf(fm: dict[str, Any], horizon: str = "") -> bool:
    return "s" in fm and fm["s"] > horizon and fm["s"] not in fm.get("x", ())


def leaves(rec: Record, name: str) -> list[str]:
    """Stamps of every unsuperseded version of a field: what a new edit of it has seen."""
    fm = rec.meta.get(name, {})
    out = [leaf[0] for leaf in fm.get("c", ())]
    if is_leaf(fm, _horizon(rec.meta)):
        out.append(fm["s"])
    return sorted(out)


def submitted_lines(rec: Record) -> dict[str, tuple[str, Any]] | None:
    """What an order out of draft shows of its lines: {line field: (stamp, line or None)}, from
    the ``submission`` its submit wrote (joined with any other submit's and resolutions'). None when
    that rule does not apply: another entity, a draft, an order no submit reached (cancelled from
    draft)."""
    if rec.entity != "order" or STATUS_RANK.get(rec.values.get("status"), 0) < STATUS_RANK["submitted"]:
        return None
    held = rec.values.get(SUBMISSION)
    if not isinstance(held, dict):
        return None
    return {LINE_PREFIX + line_id: (entry[0], entry[1]) for line_id, entry in held.items()}


def conflicts(rec: Record) -> list[Conflict]:
    """The record's open conflicts, derived from its state, so identical on every replica."""
    found: list[Conflict] = []
    deleted = rec.deleted
    horizon = _horizon(rec.meta)
    submitted = None if deleted else submitted_lines(rec)
    for name in sorted(rec.meta):
        if name == HORIZON or (rec.entity, name) in JOINED:
            continue  # a joined field keeps every write: nothing of it loses
        fm = rec.meta[name]
        winner_value = rec.values.get(name)
        winner_stamp = fm.get("s")
        candidates = [list(leaf) for leaf in fm.get("c", ())]
        kind = "concurrent_edit"
        if deleted and name != DELETED:
            kind = "edit_of_deleted"
            winner_value, winner_stamp = True, rec.meta.get(DELETED, {}).get("s")
            if is_leaf(fm, horizon):
                candidates.append([fm["s"], fm["o"], rec.values.get(name)])
        elif submitted is not None and name.startswith(LINE_PREFIX):
            # a version of a line the submit did not see: the order shows the line as submitted
            kind = "edit_of_submitted"
            winner_stamp, winner_value = submitted.get(name, (rec.meta[SUBMISSION].get("s"), None))
            if is_leaf(fm, horizon):
                candidates.append([fm["s"], fm["o"], rec.values.get(name)])
        for stamp, op_id, value in candidates:
            if kind != "edit_of_deleted" and value == winner_value:
                continue  # both sides hold the same value: nothing to choose between
            found.append(Conflict(
                id=f"{op_id}:{name}", entity=rec.entity, record_id=rec.id, field=name, kind=kind,
                winner_value=winner_value, winner_stamp=winner_stamp,
                loser_value=value, loser_stamp=stamp, loser_op=op_id,
            ))
    return found


def submit(rec: Record) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The (fields, base) of the op that submits order ``rec``: the status, and the lines it shows
    as ``submission`` (removed lines left out), which is what the order shows from then on."""
    lines = {name[len(LINE_PREFIX):]: value for name, value in sorted(rec.values.items())
             if name.startswith(LINE_PREFIX) and value is not None}
    return {"status": "submitted", SUBMISSION: lines}, {"status": edit_base(rec, "status")}


def delete_base(rec: Record) -> dict[str, list[str]]:
    """What a delete of ``rec`` has seen: every leaf of every field."""
    return {name: leaves(rec, name) for name in sorted(rec.meta) if name != HORIZON and leaves(rec, name)}


def _leaves_valued(rec: Record, name: str, values: list[Any]) -> list[str]:
    """Stamps of the field's leaves carrying one of ``values``.

    A writer who saw a value has seen every leaf carrying it: concurrent writes of the same value
    are never reported as a conflict, so they must not surface as one after the next edit either.
    """
    fm = rec.meta.get(name, {})
    out = [stamp for stamp, _, value in fm.get("c", ()) if value in values]
    if is_leaf(fm, _horizon(rec.meta)) and rec.values.get(name) in values:
        out.append(fm["s"])
    return sorted(out)


def resolution(rec: Record, conflict: Conflict, keep: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The (fields, base) of an op that settles ``conflict`` keeping ``winner`` or ``loser``.

    The base lists only the sides chosen between (and leaves carrying the same values), so other
    open conflicts on the same field stay open. Keeping the winner writes nothing: the winner stands
    and the op only records that the loser was seen, so it cannot collide with a newer edit.
    """
    if keep not in ("winner", "loser"):
        raise ValueError("keep must be winner or loser")
    name = conflict.field
    if conflict.kind == "edit_of_submitted":  # keep loser: the change joins the submitted order
        seen_loser = sorted({conflict.loser_stamp, *_leaves_valued(rec, name, [conflict.loser_value])})
        if keep == "winner":
            return {}, {name: seen_loser}
        seen_winner = _leaves_valued(rec, name, [conflict.winner_value])
        return ({name: conflict.loser_value, SUBMISSION: {name[len(LINE_PREFIX):]: conflict.loser_value}},
                {name: sorted({*seen_loser, *seen_winner})})
    if conflict.kind == "edit_of_deleted":
        if keep == "winner":  # stay deleted: acknowledge the edit without applying it
            return {}, {name: [conflict.loser_stamp]}
        return ({DELETED: False, name: conflict.loser_value},
                {DELETED: leaves(rec, DELETED),
                 name: sorted({conflict.loser_stamp, *_leaves_valued(rec, name, [conflict.loser_value])})})
    seen_loser = sorted({conflict.loser_stamp, *_leaves_valued(rec, name, [conflict.loser_value])})
    if keep == "winner":
        return {}, {name: seen_loser}
    seen_winner = _leaves_valued(rec, name, [conflict.winner_value])
    return {name: conflict.loser_value}, {name: sorted({*seen_loser, *seen_winner})}


def edit_base(rec: Record, name: str) -> list[str]:
    """What an ordinary edit of ``name`` has seen: the winner (and leaves of the same value) only,
    so open conflicts stay open."""
    if "s" not in rec.meta.get(name, {}):
        return []
    return _leaves_valued(rec, name, [rec.values.get(name)])


def apply_all(load: Callable[[str, str], Record | None], ops: Iterable[Op]) -> dict[tuple[str, str], Record]:
    """Apply ``ops`` in order, loading each record once; returns the records that changed."""
    loaded: dict[tuple[str, str], Record | None] = {}
    working: dict[tuple[str, str], Record] = {}  # one copy per record, changed in place op by op
    for op in ops:
        key = (op.entity, op.record_id)
        if key not in working:
            loaded[key] = before = load(op.entity, op.record_id)
            working[key] = Record(op.entity, op.record_id) if before is None else _copy(before)
        _apply_in_place(working[key], op, MAX_HISTORY)
    return {key: rec for key, rec in working.items()
            if (before := loaded[key]) is None or rec.values != before.values or rec.meta != before.meta}


def conflict_count(rec: Record) -> int:
    """How many open conflicts ``rec`` has; cheap when it has none (the common case)."""
    if not rec.deleted and not any("c" in fm for fm in rec.meta.values()) and submitted_lines(rec) is None:
        return 0
    return len(conflicts(rec))


# -- storage form -------------------------------------------------------------------------------
# Most records are written once and never edited: every field then carries the same winner
# stamp and op. Stored as one shared default, such metadata shrinks from ~100 bytes a field to
# ~100 bytes a record, which keeps rows small enough for SQLite to store inline.

def pack_meta(values: dict[str, Any], meta: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The compact storage form of ``meta``; ``unpack_meta`` restores it exactly."""
    counts: dict[tuple[str, str], int] = {}
    for fm in meta.values():
        if fm.keys() == {"s", "o"}:
            key = (fm["s"], fm["o"])
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return meta
    s, o = max(counts, key=lambda k: (counts[k], k))
    packed: dict[str, Any] = {"*": [s, o]}
    for name, fm in meta.items():
        if not (name in values and fm.keys() == {"s", "o"} and fm["s"] == s and fm["o"] == o):
            packed[name] = fm
    return packed


def unpack_meta(values: dict[str, Any], packed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    default = packed.get("*")
    if default is None:
        return packed
    meta = {name: fm for name, fm in packed.items() if name != "*"}
    for name in values:
        if name not in meta:
            meta[name] = {"s": default[0], "o": default[1]}
    return meta
