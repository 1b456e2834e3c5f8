"""The consistency checks, each a pure function from a History to the anomalies it finds.

They judge only what the history recorded: the outcome each action reported, the faults, and the
final exports taken after quiescence. Each anomaly names its evidence (action seqs, record ids and
the relevant part of the exports), so a failed certification says exactly what went wrong where.

Outcomes follow the contract: an ``ok`` write must be in every final export exactly once; a
``fail`` (definitely not saved) may not be duplicated; an ``unknown`` one (killed, timed out) may
be present zero times or once, never twice.
"""

from __future__ import annotations

import functools
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from .history import CREATES, EDITS, Event, History, Operation

ENTITY_ORDER = ("account", "contact", "visit", "order", "note", "product")
# The reference fields that must point at a record present in the same export.
REFS = {"contact": {"account": "account"}, "visit": {"account": "account"},
        "order": {"account": "account"}, "note": {"account": "account", "visit": "visit", "order": "order"}}


@dataclass(frozen=True)
class Anomaly:
    check: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- helpers ---------------------------------------------------------------------------------------
def _records(export: dict[str, Any], entity: str) -> list[dict[str, Any]]:
    records = export.get(entity)
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def _by_id(export: dict[str, Any], entity: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for rec in _records(export, entity):
        out.setdefault(str(rec.get("id")), rec)
    return out


def _text(value: Any) -> str | None:
    return None if value is None else str(value).strip()


def _number(value: Any) -> Decimal | str | None:
    """Quantities and prices compared as numbers, so "2.5" and "2.50" are the same price."""
    try:
        return Decimal(str(value).strip()).normalize()
    except (InvalidOperation, ValueError):
        return _text(value)


def same_value(a: Any, b: Any) -> bool:
    """Whether a value the harness sent and a value an export shows are the same field value.

    SUTs normalise what they store (trim text, write prices with two decimals), so text is
    compared trimmed and numbers by value.
    """
    if a == b:
        return True
    if a is None or b is None or isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return False
    if _text(a) == _text(b):
        return True
    na, nb = _number(a), _number(b)
    return isinstance(na, Decimal) and isinstance(nb, Decimal) and na == nb


def _op_summary(op: Operation) -> dict[str, Any]:
    return {"seq": op.seq, "device": op.device, "action": op.action, "outcome": op.outcome,
            "id": op.record_id}


def _outside(per_rep: dict[str, dict[str, Any]], where: str, entity: str, rid: str) -> bool:
    """Whether the record is outside what device ``where`` must hold: with territories (the
    profile's rep_export) a device holds only its rep's export; the server's holds everything."""
    scoped = per_rep.get(where)
    return scoped is not None and str(rid) not in _by_id(scoped, entity)


# -- lost_write ------------------------------------------------------------------------------------
def lost_write(history: History) -> list[Anomaly]:
    """A create that reported ok must be in every final export under the id it printed (a device's
    only if its rep holds the record: territories)."""
    exports, export_seqs = history.final_exports(), history.export_seqs()
    per_rep = history.rep_exports()
    found = []
    for op in history.ok_writes():
        entity = CREATES[op.action]
        evidence = {"seq": op.seq, "done_seq": op.done_seq, "device": op.device, "action": op.action,
                    "entity": entity, "args": op.args}
        rid = op.record_id
        if rid is None:
            found.append(Anomaly("lost_write", f"{op.action} #{op.seq} on {op.device} reported saved but "
                                 "printed no record id, so the record cannot be found", evidence))
            continue
        for where, export in exports.items():
            if rid not in _by_id(export, entity) and not _outside(per_rep, where, entity, rid):
                elsewhere = _same_payload(history, op, export, entity)
                hint = (f"; a record with the same content is there as {entity} {', '.join(elsewhere[:3])}: "
                        "the SUT stored it under another id") if elsewhere else ""
                found.append(Anomaly(
                    "lost_write",
                    f"{op.action} #{op.seq} on {op.device} reported {entity} {rid} saved, "
                    f"but the final export of {where} has no such record{hint}",
                    {**evidence, "id": rid, "export": where, "export_seq": export_seqs[where],
                     "same_payload_ids": elsewhere}))
    for op in history.line_adds():
        if op.outcome == "ok":
            found.extend(_lost_line(op, exports, export_seqs, per_rep))
    return found


def _same_payload(history: History, op: Operation, export: dict[str, Any], entity: str) -> list[str]:
    """Ids of records in ``export`` that carry ``op``'s payload: the root cause of a lost write is
    often a record stored under an id of the server's own, not a record gone."""
    payloads = _Payloads(history, export)
    wanted = payloads.of_action(op)
    return sorted(str(rec.get("id")) for rec in _records(export, entity) if wanted in payloads.of_record(entity, rec))


def _line_payload(line: Any) -> tuple:
    return ((_text(line.get("sku")), _number(line.get("quantity")), _number(line.get("unit_price")))
            if isinstance(line, dict) else ())


def _order_lines(order: dict[str, Any]) -> list[Any]:
    lines = order.get("lines")
    return lines if isinstance(lines, list) else []


def _lost_line(op: Operation, exports: dict[str, dict[str, Any]],
               export_seqs: dict[str, int], per_rep: dict[str, dict[str, Any]] | None = None) -> list[Anomaly]:
    """An add_order_line that reported ok must show its line in the order of every final export."""
    a = op.args
    order_id = str(a.get("order_id"))
    wanted = (_text(a.get("sku")), _number(a.get("qty")), _number(a.get("price")))
    evidence = {"seq": op.seq, "done_seq": op.done_seq, "device": op.device, "action": op.action,
                "entity": "order", "id": order_id, "args": a}
    found = []
    for where, export in exports.items():
        if _outside(per_rep or {}, where, "order", order_id):
            continue
        order = _by_id(export, "order").get(order_id)
        lines = None if order is None else _order_lines(order)
        if lines is not None and any(_line_payload(line) == wanted for line in lines):
            continue
        missing = "has no such order" if order is None else "shows the order without that line"
        found.append(Anomaly(
            "lost_write",
            f"{op.action} #{op.seq} on {op.device} reported a line {a.get('sku')} x {a.get('qty')} at "
            f"{a.get('price')} added to order {order_id}, but the final export of {where} {missing}",
            {**evidence, "export": where, "export_seq": export_seqs[where], "lines": lines}))
    return found


# -- duplicate -------------------------------------------------------------------------------------
class _Payloads:
    """The distinctive payload of a create action and of an exported record, comparable.

    A child record's account is compared by the account's own payload (name, city), not its id,
    so an SUT that renames ids on sync is still matched to the action that created the record.
    """

    def __init__(self, history: History, export: dict[str, Any]) -> None:
        self.export_accounts = _by_id(export, "account")
        self.created_accounts = {op.record_id: op.args for op in history.writes()
                                 if op.action == "create_account" and op.record_id}

    def account(self, account_id: Any) -> tuple:
        rec = self.export_accounts.get(str(account_id))
        if rec is not None:
            return (_text(rec.get("name")), _text(rec.get("city")))
        args = self.created_accounts.get(account_id)
        if args is not None:
            return (_text(args.get("name")), _text(args.get("city")))
        return ("id", account_id)

    def of_action(self, op: Operation) -> tuple:
        a = op.args
        if op.action == "create_account":
            return ("account", _text(a.get("name")), _text(a.get("city")))
        account = self.account(a.get("account_id"))
        if op.action == "log_visit":
            return ("visit", account, _text(a.get("outcome")))
        if op.action == "take_order":
            return ("order", account, _text(a.get("sku")), _number(a.get("qty")), _number(a.get("price")))
        if op.action == "add_order_line":
            return ("line", str(a.get("order_id")), _text(a.get("sku")), _number(a.get("qty")),
                    _number(a.get("price")))
        return ("note", account, _text(a.get("text")))

    def of_record(self, entity: str, rec: dict[str, Any]) -> set[tuple]:
        if entity == "account":
            return {("account", _text(rec.get("name")), _text(rec.get("city")))}
        account = self.account(rec.get("account"))
        if entity == "visit":
            return {("visit", account, _text(rec.get("outcome")))}
        if entity == "order":
            return {("order", account, *_line_payload(line)) for line in _order_lines(rec)
                    if isinstance(line, dict)}
        return {("note", account, _text(rec.get("text")))}

    @staticmethod
    def lines_of(rec: dict[str, Any]) -> list[tuple[tuple, str]]:
        """(payload, line id) of each line of an exported order, comparable with an add_order_line."""
        return [(("line", str(rec.get("id")), *_line_payload(line)), str(line.get("id")))
                for line in _order_lines(rec) if isinstance(line, dict)]


def duplicate(history: History) -> list[Anomaly]:
    """No id twice in an export, and no action's effect present more often than it could be.

    Actions with the same payload are counted together: n such actions that did not fail may
    leave at most n records (and at least one record is always allowed, for a write that said
    "not saved" but was saved, which is not a duplicate).
    """
    found = []
    export_seqs = history.export_seqs()
    writes = history.writes() + history.line_adds()
    for where, export in history.final_exports().items():
        for entity in ENTITY_ORDER:
            counts = Counter(str(r.get("id")) for r in _records(export, entity))
            for rid, n in sorted(counts.items()):
                if n > 1:
                    found.append(Anomaly("duplicate", f"{entity} {rid} appears {n} times in the final "
                                         f"export of {where}",
                                         {"export": where, "export_seq": export_seqs[where], "entity": entity,
                                          "id": rid, "count": n}))
        payloads = _Payloads(history, export)
        actions: dict[tuple, list[Operation]] = defaultdict(list)
        for op in writes:
            actions[payloads.of_action(op)].append(op)
        records: dict[tuple, list[str]] = defaultdict(list)
        for entity in set(CREATES.values()):
            for rec in _records(export, entity):
                if rec.get("deleted") is True:
                    continue
                for key in payloads.of_record(entity, rec):
                    records[key].append(str(rec.get("id")))
                if entity == "order":  # a line added twice is counted line by line
                    for key, line_id in payloads.lines_of(rec):
                        records[key].append(line_id)
        for key, ops in actions.items():
            allowed = max(1, sum(op.outcome != "fail" for op in ops))
            ids = sorted(records.get(key, ()))
            if len(ids) > allowed:
                entity = key[0]
                found.append(Anomaly(
                    "duplicate",
                    f"{len(ids)} {entity} records in the final export of {where} carry the payload of "
                    f"{len(ops)} {ops[0].action} action(s) (#{', #'.join(str(op.seq) for op in ops)}), "
                    f"which allow at most {allowed}",
                    {"export": where, "export_seq": export_seqs[where], "entity": entity,
                     "payload": ops[0].args, "ids": ids, "count": len(ids), "allowed": allowed,
                     "actions": [_op_summary(op) for op in ops]}))
    return found


# -- lost_edit -------------------------------------------------------------------------------------
def _superseded(history: History, op: Operation, edits: list[Operation]) -> Operation | None:
    """The later edit of the same record and field that replaced ``op`` knowingly, if any.

    A later edit supersedes when it was invoked after ``op`` completed and either on the same
    replica, or after ``op``'s device may have pushed ``op`` (a back-office edit on the server is
    already where everyone syncs to): see ``_may_have_pushed``.
    """
    key = (op.args.get("entity"), op.args.get("record_id"), op.args.get("field"))
    for later in edits:
        if (later.args.get("entity"), later.args.get("record_id"), later.args.get("field")) != key:
            continue
        if later.seq <= op.done_seq or later.outcome == "fail":
            continue
        if later.device == op.device or op.device == "server" or _may_have_pushed(history, op.device,
                                                                                  op.done_seq, later.seq):
            return later
    return None


def _may_have_pushed(history: History, device: str, after: int, before: int) -> bool:
    """Whether ``device`` may have pushed its changes between events ``after`` and ``before``.

    It may have when a sync started after ``after`` and ended before ``before`` without failing
    (an unknown outcome, such as a sync killed or timed out, may have pushed before it died), or
    when its background sync was running at some point in between: from a start_background_sync
    that did not fail until the device's next force-quit or the end of an ok stop_background_sync.
    """
    for s in history.syncs(device):
        if s.outcome != "fail" and s.seq > after and s.done_seq is not None and s.done_seq < before:
            return True
    stops = history.operations("stop_background_sync", device=device)
    kills = [k.seq for k in history.kills(device)]
    for start in history.operations("start_background_sync", device=device):
        if start.outcome == "fail" or start.seq >= before:
            continue
        ends = [k for k in kills if k > start.seq]
        ends += [s.done_seq for s in stops if s.seq > start.seq and s.outcome == "ok"]
        if min(ends, default=before) > after:
            return True
    return False


def _writes_of(history: History, entity: Any, rid: Any, name: Any) -> list[Operation]:
    """Every action that did not fail and wrote field ``name`` of one record: its create (with the
    value the harness passed) and every device or back-office edit of that field."""
    found = [op for op in history.edits() if op.outcome != "fail" and
             (op.args.get("entity"), op.args.get("record_id"), op.args.get("field")) == (entity, rid, name)]
    creates = [op for op in history.writes() if op.outcome != "fail" and CREATES[op.action] == entity
               and op.record_id == rid and name in op.args]
    return sorted(creates + found, key=lambda op: op.seq)


def _wrote(op: Operation, name: Any, value: Any) -> bool:
    written = op.args.get("value") if op.action in EDITS else op.args.get(name)
    return same_value(written, value)


def _certain_push(history: History, op: Operation) -> int | None:
    """The seq by which ``op``'s write was certainly on the server: a back-office edit at once; a
    device's write when an ok sync of that device that started after the write completed."""
    if op.device == "server":
        return op.done_seq
    return min((s.done_seq for s in history.syncs(op.device)
                if s.outcome == "ok" and s.seq > (op.done_seq or 0) and s.done_seq is not None), default=None)


def certainly_knew(history: History, earlier: Operation, later: Operation) -> bool:
    """Whether ``later``'s replica certainly held ``earlier``'s write when ``later`` was invoked.

    Only what the history proves counts: the same replica after the write completed; the server
    once an ok sync pushed it; another device once an ok sync of its own ran after that. Work a
    background sync may have carried is not proof, and a restore of either replica in between
    voids it. Checks that report an anomaly on "this edit knew that one" rely on this relation, so
    it errs towards "concurrent".
    """
    if earlier.outcome != "ok" or earlier.done_seq is None or earlier.seq == later.seq:
        return False
    restores = [e.seq for e in history if e.type == "life" and e.action in ("restore", "clone")
                and e.device in (later.device, earlier.device, "server")]
    if any(earlier.seq < r < later.seq for r in restores):
        return False
    if later.device == earlier.device:
        return earlier.done_seq < later.seq
    pushed = _certain_push(history, earlier)
    if pushed is None or pushed >= later.seq:
        return False
    if later.device == "server":
        return True
    return any(s.outcome == "ok" and s.seq > pushed and s.done_seq is not None and s.done_seq < later.seq
               for s in history.syncs(later.device))


def concurrent(history: History, a: Operation, b: Operation) -> bool:
    """Neither write certainly knew the other."""
    return not certainly_knew(history, a, b) and not certainly_knew(history, b, a)


def _conflicts_of(export: dict[str, Any], rid: Any, name: Any) -> list[dict[str, Any]]:
    return [c for c in export.get("conflicts") or []
            if isinstance(c, dict) and c.get("record") == rid and c.get("field") == name]


def _side(conflict: dict[str, Any], side: str) -> Any:
    value = conflict.get(side)
    return value.get("value") if isinstance(value, dict) else None


def _standing_edits(history: History) -> list[Operation]:
    """The ok edits no later edit knowingly replaced: each must still be seen at the end."""
    edits = history.edits()
    return [op for op in edits if op.outcome == "ok" and not _superseded(history, op, edits)]


def lost_edit(history: History) -> list[Anomaly]:
    """An ok edit must be its field's final value, or the loser of a true conflict in the log
    (against a value written concurrently with it), unless a later edit knowingly replaced it."""
    exports, export_seqs = history.final_exports(), history.export_seqs()
    per_rep = history.rep_exports()
    found = []
    for op in _standing_edits(history):
        entity, rid = op.args.get("entity"), op.args.get("record_id")
        name, value = op.args.get("field"), op.args.get("value")
        base = {"seq": op.seq, "done_seq": op.done_seq, "device": op.device, "entity": entity, "id": rid,
                "field": name, "value": value}
        writers = _writes_of(history, entity, rid, name)
        for where, export in exports.items():
            evidence = {**base, "export": where, "export_seq": export_seqs[where]}
            rec = _by_id(export, str(entity)).get(str(rid))
            if rec is None and _outside(per_rep, where, str(entity), str(rid)):
                continue  # not this device's to hold (territories): the server's export judges it
            if rec is None:
                found.append(Anomaly("lost_edit", f"edit #{op.seq} on {op.device} set {entity} {rid} "
                                     f"{name}={value!r}, but {where}'s final export has no such record",
                                     evidence))
                continue
            if same_value(value, rec.get(name)):
                continue
            conflicts = _conflicts_of(export, rid, name)
            kept = [c for c in conflicts if same_value(value, _side(c, "winner"))
                    or (same_value(value, _side(c, "loser")) and c.get("kind") != "concurrent_edit")]
            fair = [c for c in conflicts if same_value(value, _side(c, "loser")) and c.get("kind") == "concurrent_edit"
                    and any(_wrote(w, name, _side(c, "winner")) and not certainly_knew(history, w, op)
                            for w in writers)]
            if kept or fair:
                continue
            seen = [c for c in conflicts if same_value(value, _side(c, "loser"))]
            why = (f"the conflict log lists it as losing to {_side(seen[0], 'winner')!r}, a value it had "
                   "already seen (not a concurrent edit)") if seen else "no conflict keeps the edited value"
            found.append(Anomaly(
                "lost_edit",
                f"edit #{op.seq} on {op.device} set {entity} {rid} {name}={value!r}; {where}'s final "
                f"export shows {rec.get(name)!r} and {why}",
                {**evidence, "final_value": rec.get(name), "conflicts": conflicts}))
    return found


# -- conflict_log ----------------------------------------------------------------------------------
def conflict_log(history: History) -> list[Anomaly]:
    """The conflict log is precise: each entry's loser and winner are values somebody really wrote
    for that record and field, and (for a concurrent edit) wrote concurrently. A log padded with
    values nobody wrote, or that records an edit as losing to one it had seen, explains nothing."""
    found = []
    reported: set[str] = set()
    # Territories: an account created without one gets its rep's default territory from the device
    # or, when the create reaches the server first, from the server (an op of its own): values no
    # action passed, yet written. Any territory an assignment gave a rep may be such a value.
    assigned = {str(op.args.get("territory")) for op in history.operations("assign") if op.outcome != "fail"}
    for where, export in history.final_exports().items():
        for c in export.get("conflicts") or []:
            if not isinstance(c, dict):
                continue
            key = json.dumps(c, sort_keys=True, default=str)
            if key in reported:
                continue
            entity, rid, name = c.get("entity"), c.get("record"), c.get("field")
            writers = _writes_of(history, entity, rid, name)
            losers = [w for w in writers if _wrote(w, name, _side(c, "loser"))]
            evidence = {"export": where, "conflict": c, "writes": [_op_summary(w) for w in writers]}
            problem = None
            implicit = (entity, name) == ("account", "territory") and str(_side(c, "loser")) in assigned
            if not losers and not implicit:
                problem = f"its loser {_side(c, 'loser')!r} is a value no action wrote to that field"
            elif losers and c.get("kind") == "concurrent_edit":
                winners = [w for w in writers if _wrote(w, name, _side(c, "winner"))]
                if not winners:
                    problem = f"its winner {_side(c, 'winner')!r} is a value no action wrote to that field"
                elif not any(w.seq != lo.seq and concurrent(history, w, lo) for w in winners for lo in losers):
                    problem = (f"{_side(c, 'winner')!r} and {_side(c, 'loser')!r} were not written concurrently "
                               "(one edit had seen the other)")
            if problem:
                reported.add(key)
                found.append(Anomaly("conflict_log", f"conflict {c.get('id')} on {entity} {rid} {name} in "
                                     f"{where}'s final export: {problem}", evidence))
    return found


# -- not_merged ------------------------------------------------------------------------------------
def not_merged(history: History) -> list[Anomaly]:
    """Concurrent edits of different fields of one record must both survive: an edit that no write
    of its own field competed with, yet is not its field's final value, while another field of
    the record was edited concurrently, was lost to a whole-record merge."""
    exports, export_seqs = history.final_exports(), history.export_seqs()
    edits = history.edits()
    found = []
    for op in _standing_edits(history):
        entity, rid, name = op.args.get("entity"), op.args.get("record_id"), op.args.get("field")
        rivals = [w for w in _writes_of(history, entity, rid, name)
                  if w.seq != op.seq and not certainly_knew(history, w, op)]
        if rivals:
            continue  # a write of the same field competed: lost_edit judges that
        others = [e for e in edits if e.outcome != "fail" and e.seq != op.seq
                  and (e.args.get("entity"), e.args.get("record_id")) == (entity, rid)
                  and e.args.get("field") != name and concurrent(history, e, op)]
        if not others:
            continue
        for where, export in exports.items():
            rec = _by_id(export, str(entity)).get(str(rid))
            if rec is None or rec.get("deleted") is True or same_value(op.args.get("value"), rec.get(name)):
                continue
            found.append(Anomaly(
                "not_merged",
                f"edit #{op.seq} on {op.device} set {entity} {rid} {name}={op.args.get('value')!r} while "
                f"{others[0].device} edited {others[0].args.get('field')} (#{others[0].seq}); {where}'s final "
                f"export shows {name}={rec.get(name)!r}: the two edits were not merged field by field",
                {"seq": op.seq, "device": op.device, "entity": entity, "id": rid, "field": name,
                 "value": op.args.get("value"), "final_value": rec.get(name), "export": where,
                 "export_seq": export_seqs[where], "concurrent": [_op_summary(e) for e in others]}))
    return found


# -- divergence ------------------------------------------------------------------------------------
def _sections(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = set(a) | set(b)
    return [k for k in ENTITY_ORDER if k in keys] + sorted(keys - set(ENTITY_ORDER))


def _keyed(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        return {"": items}
    return {str(item.get("id")) if isinstance(item, dict) and "id" in item else f"#{i}": item
            for i, item in enumerate(items)}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Where two canonical exports differ, record by record: [{section, id, field, a, b}], in order."""
    out = []
    for section in _sections(a, b):
        left, right = _keyed(a.get(section)), _keyed(b.get(section))
        for rid in sorted(set(left) | set(right)):
            if rid not in right or rid not in left:
                out.append({"section": section, "id": rid, "field": None,
                            "a": left.get(rid), "b": right.get(rid)})
                continue
            x, y = left[rid], right[rid]
            if x == y:
                continue
            if isinstance(x, dict) and isinstance(y, dict):
                name = next(n for n in sorted(set(x) | set(y)) if x.get(n) != y.get(n) or (n in x) != (n in y))
                out.append({"section": section, "id": rid, "field": name, "a": x.get(name), "b": y.get(name)})
            else:
                out.append({"section": section, "id": rid, "field": None, "a": x, "b": y})
    return out


def divergence(history: History) -> list[Anomaly]:
    """After quiescence every device's export must equal the server's: the server's export for
    the device's rep when the profile gives one (territories), else the organisation's."""
    exports, export_seqs = history.final_exports(), history.export_seqs()
    server = exports.get("server")
    if server is None:
        return []
    per_rep = history.rep_exports()
    found = []
    for device in sorted(d for d in exports if d != "server"):
        diffs = differences(exports[device], per_rep.get(device, server))
        if diffs:
            first = diffs[0]
            where = f"{first['section']} {first['id']}" + (f" field {first['field']}" if first["field"] else "")
            found.append(Anomaly(
                "divergence",
                f"{device} and the server disagree after quiescence at {where}: {device} has "
                f"{first['a']!r}, the server has {first['b']!r} ({len(diffs)} difference(s) in all)",
                {"device": device, "export_seq": export_seqs[device], "server_export_seq": export_seqs["server"],
                 "section": first["section"], "id": first["id"], "field": first["field"],
                 "device_value": first["a"], "server_value": first["b"], "differences": len(diffs)}))
    return found


# -- orphan ----------------------------------------------------------------------------------------
def orphan(history: History) -> list[Anomaly]:
    """A visit, order, note or contact must point at records present in the same export."""
    export_seqs = history.export_seqs()
    found = []
    for where, export in history.final_exports().items():
        present = {entity: set(_by_id(export, entity)) for entity in ENTITY_ORDER}
        for entity, refs in REFS.items():
            for rec in _records(export, entity):
                for name, target in refs.items():
                    ref = rec.get(name)
                    if ref is not None and str(ref) not in present[target]:
                        found.append(Anomaly(
                            "orphan",
                            f"{entity} {rec.get('id')} in {where}'s final export points at {target} {ref}, "
                            "which that export does not have",
                            {"export": where, "export_seq": export_seqs[where], "entity": entity,
                             "id": rec.get("id"), "field": name, "missing": ref}))
    return found


# -- queue_lost ------------------------------------------------------------------------------------
def queue_lost(history: History) -> list[Anomaly]:
    """A force-quit must not shrink the outbox: every ok offline write is still pending after it.

    Counted: ok creates on the killed device since its last ok sync, made in airplane mode that
    lasted until the outbox was read (while offline nothing can have been pushed). Edits are not
    counted, because an outbox may legitimately fold an edit into a pending create.
    """
    found = []
    for kill in history.kills():
        device = kill.device
        outbox = next((op for op in history.operations("outbox", device=device)
                       if op.seq > kill.seq and op.outcome == "ok"), None)
        if outbox is None:
            continue
        syncs = [s for s in history.syncs(device) if s.outcome == "ok"]
        if any(kill.seq < s.seq < outbox.seq for s in syncs):
            continue  # synced after the kill: a shorter outbox proves nothing
        last_sync = max((s.done_seq for s in syncs if s.done_seq < kill.seq), default=0)
        expected = [op for op in history.ok_writes(device)
                    if last_sync < op.seq and op.done_seq < kill.seq
                    and history.offline_throughout(device, op.seq, outbox.done_seq)]
        result = outbox.result if isinstance(outbox.result, dict) else {}
        pending = result.get("pending")
        evidence = {"device": device, "kill_seq": kill.seq, "outbox_seq": outbox.seq,
                    "last_sync_seq": last_sync or None, "pending": pending, "expected": len(expected),
                    "writes": [op.seq for op in expected], "ids": [op.record_id for op in expected]}
        if not isinstance(pending, int) or isinstance(pending, bool):
            found.append(Anomaly("queue_lost", f"outbox #{outbox.seq} on {device} printed no pending count",
                                 {**evidence, "result": outbox.result}))
        elif pending < len(expected):
            found.append(Anomaly(
                "queue_lost",
                f"after the force-quit #{kill.seq} of {device}, outbox #{outbox.seq} shows {pending} pending, "
                f"but {len(expected)} ok offline write(s) since the last sync were still to be pushed",
                evidence))
    return found


# -- lost_delete -----------------------------------------------------------------------------------
def lost_delete(history: History) -> list[Anomaly]:
    """A delete reported ok must win: every final export that has the record shows it deleted.

    (A record missing altogether is lost_write's finding, not this one's.)
    """
    exports, export_seqs = history.final_exports(), history.export_seqs()
    found = []
    for op in history.operations("delete_record"):
        if op.outcome != "ok":
            continue
        entity, rid = str(op.args.get("entity")), str(op.args.get("record_id"))
        for where, export in exports.items():
            records = export.get(entity) if isinstance(export.get(entity), list) else []
            rec = next((r for r in records if isinstance(r, dict) and str(r.get("id")) == rid), None)
            if rec is not None and rec.get("deleted") is not True:
                found.append(Anomaly("lost_delete", f"delete #{op.seq} on {op.device} of {entity} {rid} reported "
                                     f"ok, but {where}'s final export shows it not deleted",
                                     {"seq": op.seq, "done_seq": op.done_seq, "device": op.device, "entity": entity,
                                      "id": rid, "export": where, "export_seq": export_seqs[where], "record": rec}))
    return found


# -- refused -------------------------------------------------------------------------------------
TARGETS = {"log_visit": "account_id", "take_order": "account_id", "write_note": "account_id",
           "add_order_line": "order_id", "edit_field": "record_id", "delete_record": "record_id"}


def refused(history: History) -> list[Anomaly]:
    """Offline-first: a write made while its device was cut off (airplane mode, server down) must
    be saved, not refused; and no write may end without saying whether it saved (an *unknown*
    outcome the harness did not cause by a kill: a write that waited on the network and timed
    out). A write on a record somebody had deleted may be refused; so may one on a record the
    device never received, as its own export taken right after shows (``_never_received``)."""
    deleted = {(str(op.args.get("record_id")), op.seq) for op in history.operations("delete_record")
               if op.outcome != "fail"}
    probes = [e for e in history if e.type == "probe"]
    kills = {e.device: [] for e in history.kills()}
    for e in history.kills():
        kills[e.device].append(e.seq)
    found = []
    for op in history.operations(*CREATES, *TARGETS):
        if op.device == "server":
            continue
        unconfirmed = (op.outcome == "unknown" and op.completion is not None
                       and not any(op.seq < k < op.done_seq for k in kills.get(op.device, [])))
        if not unconfirmed and (op.outcome != "fail" or not history.offline_at(op.device, op.seq)):
            continue
        target = str(op.args.get(TARGETS.get(op.action, ""), ""))
        if target and any(rid == target and seq < op.seq for rid, seq in deleted):
            continue
        if target and not unconfirmed and _never_received(probes, op, target):
            continue
        code = op.completion.exit if op.completion else None
        why = ("ended without saying whether it saved: a write must not wait on the network" if unconfirmed
               else "was refused while the device was offline: offline work must be saved and synced later")
        found.append(Anomaly("refused", f"{op.action} #{op.seq} on {op.device} {why} (exit {code})",
                             {"seq": op.seq, "device": op.device, "action": op.action, "args": op.args,
                              "exit": code}))
    return found


def _never_received(probes: list[Event], op: Operation, target: str) -> bool:
    """Whether the device's export taken right after ``op`` was refused (its next ``probe``) lacks
    ``target``. A chaos schedule aims writes from a rough picture of who holds what, in which a
    sync killed or cut by a toxic still delivered; a write on a record the device never got is
    not offline work refused. A device that lost a record it held is the convergence checks' to
    find; a failed probe excuses nothing."""
    after = op.done_seq or op.seq
    probe = next((e for e in probes if e.device == op.device and e.seq > after), None)
    return probe is not None and probe.args.get("target") == target and probe_lacks_target(probe)


def probe_lacks_target(probe: Event) -> bool:
    """Whether a ``probe`` event's export (none when it failed) lacks the record it names."""
    if not isinstance(probe.result, dict):
        return False
    held = {str(r.get("id")) for rows in probe.result.values() if isinstance(rows, list)
            for r in rows if isinstance(r, dict)}
    return str(probe.args.get("target")) not in held


# -- export_format ---------------------------------------------------------------------------------
EXPORT_SCHEMA = Path(__file__).resolve().parent / "schemas" / "export.schema.json"


@functools.cache
def _export_validator():
    import jsonschema  # only the checkers need it; the engine never imports the harness

    schema = json.loads(EXPORT_SCHEMA.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def format_errors(export: Any) -> list[str]:
    """Where ``export`` departs from crm-export/1 (harness/schemas/export.schema.json): one line
    per problem, naming the field by its JSON path."""
    errors = sorted(_export_validator().iter_errors(export), key=lambda e: list(e.absolute_path))
    return [f"{e.json_path}: {e.message}"[:300] for e in errors]


def export_format(history: History) -> list[Anomaly]:
    """Every final export follows the export's JSON Schema: a malformed export is a format error
    naming the field, never mistaken for a divergence between replicas."""
    export_seqs = history.export_seqs()
    found = []
    for where, export in history.final_exports().items():
        problems = format_errors(export)
        if problems:
            found.append(Anomaly("export_format", f"{where}'s final export is not crm-export/1: {problems[0]}"
                                 + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                                 {"export": where, "export_seq": export_seqs[where], "problems": problems[:20]}))
    return found


# -- all of them -----------------------------------------------------------------------------------
CHECKS: dict[str, Callable[[History], list[Anomaly]]] = {
    "export_format": export_format,
    "lost_write": lost_write,
    "duplicate": duplicate,
    "lost_edit": lost_edit,
    "divergence": divergence,
    "orphan": orphan,
    "queue_lost": queue_lost,
    "lost_delete": lost_delete,
    "conflict_log": conflict_log,
    "not_merged": not_merged,
    "refused": refused,
}


def missing_exports(history: History) -> list[Anomaly]:
    """The checks are only as good as the final exports: name every replica that has none."""
    exports = history.final_exports()
    devices = sorted({e.device for e in history if e.type == "invoke" and e.device not in ("server", "harness")})
    missing = [d for d in devices if d not in exports]
    if devices and "server" not in exports:
        missing.append("server")
    return [Anomaly("history", f"no final export of {where} was recorded, so it could not be checked",
                    {"export": where}) for where in missing]


def run_all(history: History) -> list[Anomaly]:
    """Every check over one history, in a fixed order; an empty list means a clean run. A
    replica whose export is malformed is named by ``export_format``; the divergences it would
    cause are not reported on top (they say nothing about sync)."""
    found = missing_exports(history)
    malformed = set()
    for check in CHECKS.values():
        anomalies = check(history)
        if check is export_format:
            malformed = {a.evidence["export"] for a in anomalies}
        elif check is divergence and malformed:
            anomalies = [a for a in anomalies if a.evidence.get("device") not in malformed and "server" not in malformed]
        found.extend(anomalies)
    return found
