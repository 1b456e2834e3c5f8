"""Faults that must land while a sync is in flight, aimed by what the harness can observe from
outside (the server's export, the device's outbox and export) rather than by a protocol's shape.

Each returns whether the fault reached the state its scenario tests; when it did not, the
session is marked inconclusive (docs/levels.md), because a pass would prove nothing.
Manual mode starts a ``sync`` in a thread; background mode lets the SUT's own sync run.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from .driver import ActionResult
from .session import ScenarioFailure, Session
from .toxiproxy import Toxic, latency, limit_data, reset_peer, timeout

HOLD_MS = 5000  # answers held back this long leave time to see the server commit before they arrive,
# even when each look at the server's export (a process of the SUT's) takes a second or two under load
CUTS: dict[str, Callable[[], Toxic]] = {
    "reset_peer": lambda: reset_peer(0, stream="downstream", name="answers-reset"),
    "limit_data": lambda: limit_data(1, stream="downstream", name="answers-truncate"),
}


class _InFlight:
    """Manual mode: a sync command in a thread, and its result once done. Background mode:
    nothing to start (the SUT syncs by itself)."""

    def __init__(self, session: Session, name: str) -> None:
        self.result: ActionResult | None = None
        self.thread: threading.Thread | None = None
        if session.modes.get(name, "manual") != "background":
            self.thread = session.in_background(self._run(session, name))

    def _run(self, session: Session, name: str) -> Callable[[], None]:
        def work() -> None:
            self.result = session.sync(name)
        return work

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def join(self, session: Session) -> None:
        if self.thread is not None:
            self.thread.join(session.profile.action_timeout_s + 5)


def _fingerprint(session: Session) -> str:
    return json.dumps(session.server_state(), sort_keys=True, default=str)


def hold_answers(session: Session, name: str) -> None:
    """Answers held back, with every cut armed behind the hold but disabled (toxicity 0), and the
    server's state noted: whatever commits the work from now on (a manual sync, or background sync
    as soon as the device is online) changes it. A cut is switched on in place when it is due:
    adding a toxic would make Toxiproxy flush the held answer through first."""
    session.add_toxic(name, latency(HOLD_MS, stream="downstream", name="answers-hold"))
    device = session.device(name)
    for make in CUTS.values():
        toxic = make()
        toxic.toxicity = 0.0
        session.toxiproxy.add_toxic(device.proxy, toxic)
        device.toxics.append(toxic.name)
    session.baseline = _fingerprint(session)


def _arm(session: Session, name: str, cut: str) -> None:
    device = session.device(name)
    toxic = CUTS[cut]()
    if toxic.name not in device.toxics:
        raise ScenarioFailure(f"the answers to {name} must be held back before they can be cut")
    session.history.append(name, "fault", toxic.type, detail=f"{toxic.stream} {toxic.attributes} armed")
    session.toxiproxy.update_toxic(device.proxy, toxic.name, toxicity=1.0)


def cut_committing_answer(session: Session, name: str, cut: str, *, bound: float = 40.0) -> bool:
    """Cut the answer of whichever request commits ``name``'s work: answers are held back
    (``hold_answers``), the server's export is watched, and the moment it changes the held answer
    is cut with ``cut``. A client whose sync takes several round trips is judged on what it loses
    or duplicates, not on which request carried the data."""
    if cut not in CUTS:
        raise ScenarioFailure(f"an answer is cut by one of {', '.join(CUTS)}, not {cut!r}")
    before = session.baseline if session.baseline is not None else _fingerprint(session)
    sync = _InFlight(session, name)
    changed = _wait_for_change(session, before, sync, bound)
    if changed:
        _arm(session, name, cut)
    sync.join(session)
    if not changed:
        session.mark_inconclusive(f"the server's state never changed while {name} synced, so no answer "
                                  "that committed work could be cut")
        return False
    # Reached: the acknowledgement was lost, so work the server holds is still queued on the device
    # (and a manual sync did not report success).
    reached = (session.quiet_pending(name) or 0) > 0
    if sync.thread is not None:
        reached = reached and (sync.result is None or not sync.result.ok)
    if not reached:
        session.mark_inconclusive(f"the answer that committed {name}'s work arrived before it could be cut")
    return reached


def answers_flow(session: Session, name: str) -> None:
    session.remove_toxics(name, "answers")


def drop_at_seeded_moment(session: Session, name: str, what: str) -> bool:
    """Airplane mode at a seeded moment of a push or a pull. Reached when, right after the drop,
    the work had not fully arrived: for a push, the server lacked some of ``name``'s saved records
    or ``name`` still had work queued; for a pull, ``name`` lacked records others had saved."""
    sync = _InFlight(session, name)
    time.sleep(session.seeded_delay(0.2, 1.2))
    in_flight = sync.running
    session.airplane_mode(name)
    sync.join(session)
    if what == "push":
        reached = in_flight or bool(session.missing_on_server(name)) or (session.quiet_pending(name) or 0) > 0
    else:
        others = set(session.saved_ids()) - set(session.saved_ids(name))
        reached = in_flight or bool(others & set(session.missing_on_device(name)))
    if not reached:
        session.mark_inconclusive(f"the network of {name} dropped after the {what} had completed")
    return reached


def _wait_for_change(session: Session, before: str, sync: _InFlight, bound: float) -> bool:
    """Until the server's export differs from ``before`` (work committed), or the manual sync ended."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if _fingerprint(session) != before:
            return True
        if sync.thread is not None and not sync.running:
            return False
        time.sleep(0.1)
    return False


def kill_server_at_seeded_moment(session: Session, name: str, *, bound: float = 40.0) -> bool:
    """The server SIGKILLed in the middle of ``name``'s sync, its answers held back
    (``hold_answers``): a manual sync at a seeded moment after it starts; background sync, which
    starts when it will, at a seeded moment after the server's state changed. Reached when work
    was still on its way (the sync was running, or work is still queued on ``name``)."""
    sync = _InFlight(session, name)
    if sync.thread is None:
        before = session.baseline if session.baseline is not None else _fingerprint(session)
        _wait_for_change(session, before, sync, bound)
        time.sleep(session.seeded_delay(0.0, 1.0))
    else:
        time.sleep(session.seeded_delay(0.2, 1.2))
    in_flight = sync.running
    session.server.kill()
    sync.join(session)
    reached = in_flight or (session.quiet_pending(name) or 0) > 0
    if not reached:
        session.mark_inconclusive(f"the server was killed after {name}'s sync had completed")
    return reached


def kill_background_sync(session: Session, name: str) -> bool:
    """Force-quit of the device's background sync process (the app is not running: between two
    actions only the background sync is), at a seeded moment while it has work queued."""
    time.sleep(session.seeded_delay(0.2, 1.2))
    queued = (session.quiet_pending(name) or 0) > 0
    session.force_quit(name)
    if not queued:
        session.mark_inconclusive(f"the background sync of {name} had nothing queued when it was killed")
    return queued


def kill_syncs(session: Session, name: str, times: int) -> bool:
    """``times`` sync commands force-quit at seeded moments; reached when one was cut short."""
    results = [session.sync(name, kill_after=session.seeded_delay(0.1, 1.5)) for _ in range(times)]
    reached = any(r.outcome == "unknown" for r in results)
    if not reached:
        session.mark_inconclusive(f"every sync of {name} finished before its seeded kill")
    return reached


def stall(session: Session, name: str) -> None:
    session.add_toxic(name, timeout(0, stream="downstream", name="stall"))


def sync_through_stall(session: Session, name: str) -> bool:
    """Manual: a sync through the stalled connection (it must not report success). Background:
    a few seconds for the background sync to try. Reached when work stayed queued."""
    if session.modes.get(name, "manual") == "manual":
        result = session.sync(name)
        reached = not result.ok
    else:
        time.sleep(session.seeded_delay(2.0, 4.0))
        reached = (session.quiet_pending(name) or 0) > 0
    if not reached:
        session.mark_inconclusive(f"{name}'s work went through although its connection was stalled")
    return reached
