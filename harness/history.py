"""What happened during a conformance run, as an append-only list of events.

The checkers judge a run only from its history, so the history has to say everything they need:
each action's invocation and its outcome (ok / fail / unknown), every fault injected and healed,
and the final exports taken after quiescence. It is JSON-lines serialisable, so a failing run can
be saved, read by a person, and re-checked later without re-running anything.

Event shape (one JSON object per line)::

    {"seq": n, "t": monotonic_s, "device": "d1" | "server" | "harness",
     "type": "invoke" | "ok" | "fail" | "unknown" | "fault" | "heal" | "export" | "life" | "probe",
     "action": "create_account" | ..., "args": {...}, "result": {...} | null,
     "exit": code | null, "ref": seq of the invoke this completes | null, "detail": "..."}

Faults use ``action`` for their kind: ``"kill"`` is a force-quit of the device (SIGKILL of its
client and background sync), ``"offline"`` is airplane mode (its proxy disabled); other kinds
(``"latency"``, ``"timeout"``, ``"reset_peer"``, ``"server_kill"`` ...) are recorded as given.
A ``heal`` event with the same device and action ends that fault; a heal without an action ends
every fault of that device. A device counts as cut off from the server while it is offline or
the server is down (a ``server_kill`` fault of device ``"server"``, until its heal).

A ``life`` event is something that happens to a device's or the server's stored state rather
than to the network: ``backup`` (a copy taken), ``restore`` (state put back to an older copy),
``clone`` (a device's home copied to a new device, named by the event's device).

A ``probe`` event is a device's export taken in the middle of a run, right after it refused a
write aimed at a record (``args.target``): the evidence that tells a write refused on a record
the device holds from one on a record it never received. It never counts as a final export.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The contract actions that create a record, and the entity each one creates.
CREATES = {"create_account": "account", "log_visit": "visit", "take_order": "order", "write_note": "note"}
# The contract action that adds a line to an existing order (optional; chaos runs use it).
LINE_ADDS = ("add_order_line",)
EDITS = ("edit_field", "backoffice_edit")
OUTCOMES = ("ok", "fail", "unknown")
# "rep_export": the server's export for one device's rep (the optional contract entry rep_export)
# "probe": a device's export right after a refused write, naming the write's target (chaos runs)
EVENT_TYPES = ("invoke", *OUTCOMES, "fault", "heal", "export", "life", "rep_export", "probe")
OFFLINE_FAULTS = ("offline", "airplane")
SERVER_DOWN_FAULTS = ("server_kill", "server_down")


@dataclass
class Event:
    seq: int
    t: float
    device: str
    type: str
    action: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    exit: int | None = None
    ref: int | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Operation:
    """One action as a pair: its invoke event and the event that completed it (None while pending)."""

    invoke: Event
    completion: Event | None

    @property
    def seq(self) -> int:
        return self.invoke.seq

    @property
    def device(self) -> str:
        return self.invoke.device

    @property
    def action(self) -> str:
        return self.invoke.action or ""

    @property
    def args(self) -> dict[str, Any]:
        return self.invoke.args

    @property
    def outcome(self) -> str:
        """ok, fail or unknown; an action that never completed has an unknown outcome."""
        return self.completion.type if self.completion else "unknown"

    @property
    def result(self) -> Any:
        return self.completion.result if self.completion else None

    @property
    def done_seq(self) -> int | None:
        return self.completion.seq if self.completion else None

    @property
    def record_id(self) -> str | None:
        """The id an ok create reported, if it printed one."""
        result = self.result
        if isinstance(result, dict) and isinstance(result.get("id"), str):
            return result["id"]
        return None


class History:
    """An append-only event list. Appending assigns ``seq`` and ``t``; events are never changed."""

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self.events: list[Event] = list(events)
        self._lock = threading.Lock()  # steps and background actions append from several threads

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    # -- recording -----------------------------------------------------------------------------
    def append(self, device: str, type: str, action: str | None = None, *, args: dict | None = None,
               result: Any = None, exit: int | None = None, ref: int | None = None,
               detail: str = "", t: float | None = None) -> Event:
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r} (expected one of {', '.join(EVENT_TYPES)})")
        with self._lock:
            if type in OUTCOMES and ref is None:
                ref = self._open_invoke(device, action)
            event = Event(seq=(self.events[-1].seq + 1) if self.events else 1,
                          t=time.monotonic() if t is None else t, device=device,
                          type=type, action=action, args=dict(args or {}), result=result, exit=exit,
                          ref=ref, detail=detail)
            self.events.append(event)
        return event

    def record(self, event: dict[str, Any] | Event) -> Event:
        """Append an event given as a dict (the driver's callback); ``seq`` and ``t`` are assigned."""
        data = event.to_json() if isinstance(event, Event) else dict(event)
        data.pop("seq", None)
        unknown = set(data) - set(Event.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown event keys: {', '.join(sorted(unknown))}")
        return self.append(data.pop("device"), data.pop("type"), data.pop("action", None), **data)

    __call__ = record

    def invoke(self, device: str, action: str, args: dict | None = None) -> Event:
        return self.append(device, "invoke", action, args=args)

    def complete(self, invoke: Event, outcome: str, *, result: Any = None, exit: int | None = None,
                 detail: str = "") -> Event:
        if outcome not in OUTCOMES:
            raise ValueError(f"an outcome is one of {', '.join(OUTCOMES)}, not {outcome!r}")
        return self.append(invoke.device, outcome, invoke.action, args=invoke.args, result=result,
                           exit=exit, ref=invoke.seq, detail=detail)

    def _open_invoke(self, device: str, action: str | None) -> int | None:
        """The latest invoke of this device and action that nothing has completed yet."""
        done = {e.ref for e in self.events if e.type in OUTCOMES}
        for e in reversed(self.events):
            if e.type == "invoke" and e.device == device and e.action == action and e.seq not in done:
                return e.seq
        return None

    # -- reading -------------------------------------------------------------------------------
    def event(self, seq: int) -> Event:
        for e in self.events:
            if e.seq == seq:
                return e
        raise KeyError(f"no event with seq {seq}")

    def operations(self, *actions: str, device: str | None = None) -> list[Operation]:
        """Every invoked action (optionally only these actions / this device), in invoke order."""
        completions = {e.ref: e for e in self.events if e.type in OUTCOMES and e.ref is not None}
        return [Operation(e, completions.get(e.seq)) for e in self.events
                if e.type == "invoke" and (not actions or e.action in actions)
                and (device is None or e.device == device)]

    def writes(self, device: str | None = None) -> list[Operation]:
        """Every create action (create_account, log_visit, take_order, write_note), any outcome."""
        return self.operations(*CREATES, device=device)

    def ok_writes(self, device: str | None = None) -> list[Operation]:
        return [op for op in self.writes(device) if op.outcome == "ok"]

    def line_adds(self, device: str | None = None) -> list[Operation]:
        """Every add_order_line action, any outcome."""
        return self.operations(*LINE_ADDS, device=device)

    def edits(self, device: str | None = None) -> list[Operation]:
        """Device edits and back-office edits on the server, any outcome."""
        return self.operations(*EDITS, device=device)

    def syncs(self, device: str | None = None) -> list[Operation]:
        return self.operations("sync", device=device)

    def faults(self, action: str | None = None, device: str | None = None) -> list[Event]:
        return [e for e in self.events if e.type == "fault" and (action is None or e.action == action)
                and (device is None or e.device == device)]

    def kills(self, device: str | None = None) -> list[Event]:
        return self.faults("kill", device)

    def _cut_off(self, device: str) -> Iterator[tuple[int, bool]]:
        """(seq, cut off after it) for every event that changes whether ``device`` can reach the server.

        A device is cut off while it is in airplane mode or while the server is down.
        """
        offline = server_down = False
        for e in self.events:
            if e.type not in ("fault", "heal"):
                continue
            if e.device == device and (e.action in OFFLINE_FAULTS or (e.type == "heal" and e.action is None)):
                offline = e.type == "fault"
            elif e.device == "server" and (e.action in SERVER_DOWN_FAULTS or (e.type == "heal" and e.action is None)):
                server_down = e.type == "fault"
            else:
                continue
            yield e.seq, offline or server_down

    def offline_at(self, device: str, seq: int) -> bool:
        """Whether ``device`` was cut off from the server (airplane mode, server down) before event ``seq``."""
        state = False
        for at, cut_off in self._cut_off(device):
            if at >= seq:
                break
            state = cut_off
        return state

    def offline_throughout(self, device: str, first: int, last: int) -> bool:
        """Whether ``device`` stayed cut off from the server from before event ``first`` until ``last``."""
        return self.offline_at(device, first) and all(
            cut_off for at, cut_off in self._cut_off(device) if first < at < last)

    def final_exports(self) -> dict[str, dict[str, Any]]:
        """The last export of each device and of the server: ``{"d1": {...}, "server": {...}}``."""
        out: dict[str, dict[str, Any]] = {}
        for e in self.events:
            if e.type == "export" and isinstance(e.result, dict):
                out[e.device] = e.result
        return out

    def rep_exports(self) -> dict[str, dict[str, Any]]:
        """The server's last export for each device's rep: ``{"d1": {...}}`` (profiles with rep_export)."""
        out: dict[str, dict[str, Any]] = {}
        for e in self.events:
            if e.type == "rep_export" and isinstance(e.result, dict):
                out[str(e.args.get("for"))] = e.result
        return out

    def export_seqs(self) -> dict[str, int]:
        return {e.device: e.seq for e in self.events if e.type == "export" and isinstance(e.result, dict)}

    # -- persistence ---------------------------------------------------------------------------
    def dumps(self) -> str:
        return "".join(json.dumps(e.to_json(), sort_keys=True, ensure_ascii=False) + "\n"
                       for e in self.events)

    @classmethod
    def loads(cls, text: str) -> History:
        events = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                events.append(Event(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as exc:
                raise ValueError(f"history line {number} is not an event: {exc}") from None
        return cls(events)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.dumps(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> History:
        return cls.loads(Path(path).read_text(encoding="utf-8"))
