"""One-shot sync: push the outbox in batches, then pull the server's log from the saved cursor.

Safe to kill at any moment: an op leaves the outbox only after the server acknowledged it (the
server applies each op id at most once, so re-sending after a lost response is harmless), and
the pull cursor moves in the same transaction as the ops it covers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .admission import parse_witness
from .device import Device
from .errors import AuthRefusedError, NotConfiguredError, ServerError, ServerUnreachableError
from .hlc import ServerTime, now_ms
from .ops import PROTOCOL, Op, OpFormatError, loads, op_from_wire
from .store import MetaKey

# httpx's __init__ imports its own command-line client (click, rich, pygments): about 140 ms of
# every `crm sync` that we never use. A None entry makes that optional import fail, as httpx
# expects when its CLI extras are absent (it then defines a stub `httpx.main`).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx  # noqa: E402

SYNC_LOCK = "sync.lock"
PUSH_BATCH = 1000
# How often one sync re-stamps ops the server refused as ahead of its clock before it rejects them:
# one round is enough unless the server's clock moves back between answers.
MAX_RESTAMP_ROUNDS = 3
CLOCK_AHEAD = "clock_ahead"  # the code of a refusal for a stamp too far ahead (crm/admission.py)
SERVER_TIME_HEADER = "crm-server-time"
PULL_PAGE = 2000
# The refusals of a whole push batch that halving it can get past (docs/sync-protocol.md).
_BATCH_REFUSALS = {(422, "invalid"), (400, "bad_json"), (413, "too_large")}


class BatchRefused(ServerError):
    """The server refused a whole push batch; ``op`` names the op at fault when it could tell."""

    def __init__(self, message: str, *, op: str | None, reason: str, code: str | None = None) -> None:
        super().__init__(message)
        self.op = op
        self.reason = reason
        self.code = code


class ContinuityBroken(ServerError):
    """409 continuity: the server's log went back (``log_changed``), or another copy of this
    device id pushed (``device_reused``; ``latest`` is that copy's latest op)."""

    def __init__(self, message: str, *, reason: str, latest: str | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.latest = latest


MAX_RECOVERIES = 3  # continuity recoveries in one sync before it gives up (exit 22)


class SyncResult:
    """What one sync did. Written out rather than made by @dataclass, which costs every `crm sync`
    its start-up (as for ``Op``)."""

    __slots__ = ("pushed", "rejected", "pulled", "applied", "seconds", "restamped")

    def __init__(self, *, pushed: int = 0, rejected: int = 0, pulled: int = 0, applied: int = 0,
                 seconds: float = 0.0, restamped: int = 0) -> None:
        self.pushed = pushed
        self.rejected = rejected
        self.pulled = pulled
        self.applied = applied
        self.seconds = seconds
        self.restamped = restamped  # ops given new stamps because this device's clock was ahead of the server's

    def __repr__(self) -> str:
        return f"SyncResult({', '.join(f'{name}={getattr(self, name)!r}' for name in self.__slots__)})"

    def to_json(self) -> dict[str, Any]:
        return {"synced": True, "pushed": self.pushed, "rejected": self.rejected,
                "pulled": self.pulled, "applied": self.applied, "restamped": self.restamped,
                "seconds": round(self.seconds, 3)}


class SyncClient:
    """HTTP client for the sync protocol. Pass ``transport`` to swap the network out in tests."""

    def __init__(self, *, base_url: str, token: str, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.server_time: ServerTime | None = None  # the server's clock, from its latest answer
        # Certificates matter only over TLS: for a plain-http server (loopback, a LAN, a harness
        # proxy) the CA bundle is not loaded (about 50 ms of every `crm sync` and agent start).
        # An https server is verified as always.
        tls = self.base_url.lower().startswith("https://")
        self._http = httpx.Client(base_url=self.base_url, transport=transport, verify=tls,
                                  headers={"authorization": f"Bearer {token}",
                                           "user-agent": "crm-sync/1"},
                                  timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            before = now_ms()
            response = self._http.request(method, path, **kwargs)
            self._learn_time(response, (before + now_ms()) // 2)
        except httpx.TimeoutException as exc:
            raise ServerUnreachableError(f"the server at {self.base_url} did not answer in time "
                                         f"({type(exc).__name__}); changes stay queued") from None
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"cannot reach the server at {self.base_url}: {exc}; "
                                         "changes stay queued") from None
        if response.status_code in (401, 403):
            raise AuthRefusedError(f"the server refused this device's token ({response.status_code}): "
                                   f"{_message(response)}; run `crm login` with a new token")
        if response.status_code >= 400:
            message = f"the server answered {response.status_code} to {path}: {_message(response)}"
            body = _json_object(response)
            if path == "/v1/push" and (response.status_code, body.get("error")) in _BATCH_REFUSALS:
                op, code = body.get("op"), body.get("code")
                raise BatchRefused(message, op=op if isinstance(op, str) else None, reason=_message(response),
                                   code=code if isinstance(code, str) else None)
            if response.status_code == 409 and body.get("reason") in ("log_changed", "device_reused"):
                latest = body.get("latest")
                raise ContinuityBroken(message, reason=body["reason"],
                                       latest=latest if isinstance(latest, str) else None)
            raise ServerError(message)
        try:
            data = loads(response.content)
        except ValueError:
            raise ServerError(f"the server's answer to {path} is not JSON") from None
        if not isinstance(data, dict):
            raise ServerError(f"the server's answer to {path} is not a JSON object")
        return data

    def _learn_time(self, response: httpx.Response, wall: int) -> None:
        """Keep the server's clock from an answer's ``crm-server-time`` (ms), read when the device's
        wall clock said ``wall`` (the middle of the request); an answer without it teaches nothing."""
        text = response.headers.get(SERVER_TIME_HEADER, "")
        if text.isascii() and text.isdigit() and len(text) <= 15:
            self.server_time = ServerTime(int(text), wall)

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    def push(self, device_id: str, ops: list[str], *, witness: str | None = None,
             known: str | None = None) -> dict[str, Any]:
        """Push ops given as their stored wire JSON, spliced in without a decode/encode round trip."""
        claims = "".join(f',"{key}":{json.dumps(value)}' for key, value in
                         (("witness", witness), ("known", known)) if value is not None)
        body = (f'{{"protocol":{PROTOCOL},"device":{json.dumps(device_id)}{claims},"ops":['
                + ",".join(ops) + "]}").encode()
        return self._call("POST", "/v1/push", content=body, headers={"content-type": "application/json"})

    def pull(self, *, cursor: int, limit: int, device_id: str, witness: str | None = None,
             known: str | None = None, scope: int | None = None, own: bool = False,
             part: str | None = None) -> dict[str, Any]:
        """One pull page. ``part`` (with ``scope``): where the device is inside a move's snapshot
        ("" none); sending it says the device resumes inside a move, so big moves come paged."""
        params = {"cursor": cursor, "limit": limit, "device": device_id}
        params.update({key: value for key, value in (("witness", witness), ("known", known), ("scope", scope),
                                                     ("part", part)) if value is not None})
        if own:
            params["own"] = 1
        return self._call("GET", "/v1/pull", params=params)


def _latest(answer: dict[str, Any]) -> str | None:
    """The answer's ``latest`` as the device stores it: "" for none, None when not said."""
    if "latest" not in answer:
        return None
    latest = answer["latest"]
    return latest if isinstance(latest, str) else ""


def _witness(answer: dict[str, Any]) -> str | None:
    """The answer's ``witness`` when it is POSITION:OP_ID; anything else is not kept (sent back,
    the server would refuse every later request of the device)."""
    witness = answer.get("witness")
    return witness if parse_witness(witness) is not None else None


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        data = loads(response.content)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _message(response: httpx.Response) -> str:
    body = _json_object(response)
    return str(body["message"])[:300] if "message" in body else response.text[:300]


def client_for(device: Device, *, timeout: float | None = None,
               transport: httpx.BaseTransport | None = None) -> SyncClient:
    """A client for the device's server; ``timeout`` defaults to ``CRM_SYNC_TIMEOUT_S`` (30 s), the
    same for `crm sync` and the background agent."""
    if timeout is None:
        timeout = _sync_timeout()
    url, token = device.credentials()
    if not url or not token:
        raise NotConfiguredError("this device has no sync server: run `crm login --server URL --token TOKEN`")
    return SyncClient(base_url=url, token=token, timeout=timeout, transport=transport)


def _sync_timeout() -> float:
    try:
        value = float(os.environ.get("CRM_SYNC_TIMEOUT_S", "30"))
    except ValueError:
        return 30.0
    return value if value > 0 else 30.0


def push_outbox(device: Device, client: SyncClient, *, batch: int = PUSH_BATCH) -> tuple[int, int]:
    """Push the outbox oldest first until it is empty; (acked, rejected) counts."""
    pushed, rejected, _ = _push_all(device, client, batch=batch)
    return pushed, rejected


def _push_all(device: Device, client: SyncClient, *, batch: int) -> tuple[int, int, int]:
    """Push the outbox oldest first until it is empty; (acked, rejected, re-stamped) counts.

    No op can block the queue: one the server rejects moves to the rejected list, and so does
    one that makes the server refuse its whole batch, found by halving the batch when the
    server cannot name it; the rest is sent again. An op refused only because its stamp is too
    far ahead of the server's clock (``clock_ahead``) is re-stamped and sent again, the same op
    with the same id (``Device.restamp``); if that does not help it is rejected with the reason.
    """
    if device.setting(MetaKey.FIRST_PUSH_AT) is None:  # from now on acked ops leave the outbox (crm doctor)
        device.set_settings({MetaKey.FIRST_PUSH_AT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    pushed = rejected_count = restamped = rounds = 0
    while True:
        rows = device.pending_ops(limit=batch)
        if not rows:
            return pushed, rejected_count, restamped
        acked, rejected, ahead = _push_rows(device, client, rows, batch=batch)
        pushed += acked
        rejected_count += rejected
        if not ahead:
            continue
        rounds += 1
        server = client.server_time
        again = 0
        # Re-stamping renames every queued op after the refused ones; if the server's latest op of
        # this device is still queued here (a sync cut short between sending a batch and storing
        # the answer before it), some of those are in its log under their old stamps: park instead.
        if server is not None and rounds <= MAX_RESTAMP_ROUNDS and not device.latest_logged_is_queued():
            again = device.restamp([(op_id, stamp) for op_id, stamp, _ in ahead], server)
        if again:
            restamped += again
            continue
        device.settle_pushed([], [(op_id, f"refused by the server: {reason} (re-stamping did not help)")
                                  for op_id, _, reason in ahead])
        rejected_count += len(ahead)


Ahead = list[tuple[str, str, str]]  # (op id, stamp as sent, the server's reason)


def _sent_stamp(body: str) -> str:
    try:
        stamp = loads(body).get("hlc")
    except (ValueError, AttributeError):
        return ""
    return stamp if isinstance(stamp, str) else ""


def _push_rows(device: Device, client: SyncClient, rows: list[tuple[str, str]], *,
               batch: int | None = None) -> tuple[int, int, Ahead]:
    """Push ``rows`` (op id, wire JSON); when one is parked or refused as ahead of the server's clock,
    stop so the caller re-reads the queue. Returns (acked, rejected, refused as ahead).

    With ``batch``, the queue goes on in batches of that size while answers come back clean, one
    push in flight while the device reads and stores around it (``_OnThread``): the next batch goes
    out as soon as this one's answer is in, and this answer is stored while the server works on the
    next. The server still gets the batches one after the other, each sent after the answer to the
    one before, with the continuity claims that answer gives (what storing it would leave)."""
    witness, known = device.continuity()
    device.count_attempt([op_id for op_id, _ in rows])
    flight: _OnThread | None = None
    acked_count = rejected_count = 0
    try:
        flight = _flight(client, device.device_id, rows, witness, known)
        flight.start()
        while True:
            # The next batch is read and its attempt counted while this one is in flight; should
            # this answer stop the run, the count is taken back.
            following = device.pending_ops(limit=batch, after=rows[-1][0]) if batch and len(rows) == batch else []
            if following:
                device.count_attempt([op_id for op_id, _ in following])
            sent = dict(rows)
            try:
                answer = flight.result()
            except BatchRefused as refusal:
                _not_sent(device, following)
                acked, rejected, ahead = _after_refusal(device, client, rows, sent, refusal)
                return acked_count + acked, rejected_count + rejected, ahead
            except BaseException:
                _not_sent(device, following)
                raise
            acked = [op_id for op_id in answer.get("acked", []) if op_id in sent]
            refused = [r for r in answer.get("rejected", []) if isinstance(r, dict) and r.get("op") in sent]
            rejected = [(r["op"], str(r.get("reason", "refused"))) for r in refused if r.get("code") != CLOCK_AHEAD]
            ahead = [(r["op"], _sent_stamp(sent[r["op"]]), str(r.get("reason", "clock ahead")))
                     for r in refused if r.get("code") == CLOCK_AHEAD]
            if not acked and not refused:
                _not_sent(device, following)
                raise ServerError("the server acknowledged none of a pushed batch")
            flight = None
            # Only after an answer that settles every op of the batch: one it left out, or refused as
            # ahead of the server's clock, goes again before anything queued after it.
            if following and not ahead and len(acked) + len(refused) == len(sent) \
                    and set(acked).union(r["op"] for r in refused) == sent.keys():
                witness, known = _continuity_after(witness, known, answer)
                flight = _flight(client, device.device_id, following, witness, known)
                flight.start()
            else:
                _not_sent(device, following)
            device.settle_pushed(acked, rejected, witness=_witness(answer), latest=_latest(answer))
            acked_count, rejected_count = acked_count + len(acked), rejected_count + len(rejected)
            if flight is None:
                return acked_count, rejected_count, ahead
            rows = following
    finally:
        if flight is not None:
            flight.wait()  # no push of this sync outlives it (its ops stay queued: sent again next time)


def _not_sent(device: Device, rows: list[tuple[str, str]]) -> None:
    """Take back the attempt counted for ``rows``, which were not sent. Best effort: a store that
    fails here (locked, full) leaves the count one too high rather than hide why the run stopped."""
    if rows:
        try:
            device.count_attempt([op_id for op_id, _ in rows], by=-1)
        except Exception:  # noqa: BLE001 - the count is for people; the caller's error is the news
            pass


def _after_refusal(device: Device, client: SyncClient, rows: list[tuple[str, str]], sent: dict[str, str],
                   refusal: BatchRefused) -> tuple[int, int, Ahead]:
    """The server refused the whole of ``rows``: park the op at fault when it is known, else halve."""
    if refusal.code == CLOCK_AHEAD and refusal.op in sent:
        return 0, 0, [(refusal.op, _sent_stamp(sent[refusal.op]), refusal.reason)]
    culprit = refusal.op if refusal.op in sent else rows[0][0] if len(rows) == 1 else None
    if culprit is not None:
        device.settle_pushed([], [(culprit, f"refused by the server: {refusal.reason}")])
        return 0, 1, []
    half = len(rows) // 2
    first = _push_rows(device, client, rows[:half])
    if first[1] or first[2]:  # keep the device's order: the rest goes after a fresh read of the queue
        return first
    second = _push_rows(device, client, rows[half:])
    return first[0] + second[0], second[1], second[2]


def _continuity_after(witness: str | None, known: str | None, answer: dict[str, Any]) -> tuple[str | None, str | None]:
    """The claims (witness, known) a device sends once it has stored ``answer``
    (Device._remember_server keeps the furthest witness and the latest it is told)."""
    told = _witness(answer)
    if told and (not witness or int(witness.split(":", 1)[0]) < int(told.split(":", 1)[0])):
        witness = told
    latest = _latest(answer)
    return witness, known if latest is None else latest


class _OnThread:
    """``work()`` run on a thread of its own (a push in flight, the next pull page), so the device
    reads and stores meanwhile; the work touches only the HTTP client, never the device's store.
    Waited for through an Event, not Thread.join: a Ctrl-C in join marks a live thread stopped."""

    def __init__(self, work: Callable[[], Any], name: str) -> None:
        self.outcome: tuple[Any, BaseException | None] = (None, None)
        self.done = threading.Event()

        def run() -> None:
            try:
                self.outcome = (work(), None)
            except BaseException as exc:  # handed to the caller by result()
                self.outcome = (None, exc)
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def wait(self) -> None:
        """Until the work is over (the client's timeout bounds it), a Ctrl-C notwithstanding: no
        push of a sync outlives it, or its lock."""
        if not self.thread.ident:
            return
        while True:
            try:
                self.done.wait()
                return
            except KeyboardInterrupt:  # the one already on its way out is the caller's
                continue

    def join(self) -> None:
        """Until the work is over; a Ctrl-C meanwhile waits for it to end too, then goes on its way."""
        try:
            self.done.wait()
        except BaseException:
            self.wait()
            raise

    def result(self) -> Any:
        self.join()
        value, error = self.outcome
        if error is not None:
            raise error
        return value


def _flight(client: SyncClient, device_id: str, rows: list[tuple[str, str]], witness: str | None,
            known: str | None) -> _OnThread:
    """One push batch in flight (``_push_rows``), not yet started."""
    return _OnThread(lambda: client.push(device_id, [body for _, body in rows], witness=witness, known=known),
                     "crm-push")


def resend_kept(device: Device, client: SyncClient, *, batch: int = PUSH_BATCH) -> int:
    """After the server's log went back: send every acknowledged op this home kept, oldest first,
    so the server has again whatever it lost (it applies each op id once, so what it still has
    changes nothing). Progress is saved per batch: a kill resumes where it stopped."""
    resent = 0
    while (start := device.setting(MetaKey.RESEND_FROM)) not in (None, ""):
        rows = device.kept_ops(after=int(start), limit=batch)
        if not rows:
            device.set_settings({MetaKey.RESEND_FROM: ""})
            return resent
        witness, known = device.continuity()
        answer = client.push(device.device_id, [body for _, body in rows], witness=witness, known=known)
        device.set_settings({MetaKey.RESEND_FROM: str(rows[-1][0]), MetaKey.KNOWN: _latest(answer) or ""})
        resent += len(rows)
    return resent


# A page from which the typed decoder (crm.wire) pays for its import: msgspec and the structs cost
# about 8 ms to load and save about 5 us an op, while most syncs pull a handful of ops and every
# harness-driven `crm sync` is a new process (bench_sync.py, 2026-12-03). Once loaded (the agent
# after a big page, many devices in one process), it reads every page.
TYPED_PAGE_OPS = 1000


def _pulled_ops(raw: Any) -> list[Op]:
    if isinstance(raw, list) and (len(raw) >= TYPED_PAGE_OPS or "crm.wire" in sys.modules):
        from .wire import pulled_ops

        return pulled_ops(raw)
    return [op_from_wire(item) for item in raw]


MAX_SCOPE_RESETS = 3  # scope changes one pull follows before giving up (exit 22)


def _pull_request(device: Device, page: int) -> dict[str, Any]:
    """The arguments of the device's next ``SyncClient.pull``, from what its store says now."""
    cursor = int(device.setting(MetaKey.PULL_CURSOR, "0") or 0)
    at, _, part = (device.setting(MetaKey.PULL_PART) or "").partition(" ")
    witness, known = device.continuity()
    return {"cursor": cursor, "limit": page, "device_id": device.device_id, "witness": witness, "known": known,
            "scope": int(device.setting(MetaKey.SCOPE_EPOCH, "0") or 0),
            "own": device.setting(MetaKey.SCOPE_REFILL) == "1",
            "part": part if at == str(cursor) else ""}  # it belongs to the cursor it was stored with


def _request_after(request: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The request the device will make once it has stored ``answer`` (a page with more to come):
    a guess only, to fetch that page while this one is stored; ``_Prefetch.take`` compares it
    with the request the store then gives, so a wrong guess costs a request, never a page."""
    scope, witness, latest = answer.get("scope"), _witness(answer), _latest(answer)
    held = request["witness"]
    kept = parse_witness(held)
    if witness and kept and kept[0] >= int(witness.split(":", 1)[0]):  # _witness checked it
        witness = held  # the device keeps the furthest it has seen
    return {**request, "cursor": int(answer["cursor"]), "witness": witness or held,
            "known": request["known"] if latest is None else latest, "part": answer.get("part") or "",
            "scope": int(scope.get("epoch") or 0) if isinstance(scope, dict) else request["scope"]}


class _Prefetch:
    """The next pull page, fetched (and its ops decoded) on a thread while the device stores this
    one: the server's work, the wire and the decoding then overlap the device's SQLite work. A
    pull is a read on the server, so fetching early moves nothing there, and a page is stored
    only after the one before it."""

    def __init__(self, client: SyncClient) -> None:
        self.client = client
        self.request: dict[str, Any] | None = None
        self.job: _OnThread | None = None

    def start(self, request: dict[str, Any]) -> None:
        self.request = request

        def fetch() -> tuple[dict[str, Any], list[Op] | None]:
            answer = self.client.pull(**request)
            try:
                return answer, _pulled_ops(answer.get("ops", []))
            except Exception:  # an unusable page: decoded again where pages are judged
                return answer, None

        self.job = _OnThread(fetch, "crm-pull-prefetch")
        self.job.start()

    def take(self, request: dict[str, Any]) -> tuple[dict[str, Any] | None, list[Op] | None]:
        """The answer fetched for ``request`` and its decoded ops; (None, None) when none was."""
        if self.job is None:
            return None, None
        job, fetched = self.job, self.request
        self.job, self.request = None, None
        job.join()
        if fetched != request:
            return None, None
        return job.result()


def pull_changes(device: Device, client: SyncClient, *, page: int = PULL_PAGE) -> tuple[int, int]:
    pulled = applied = resets = 0
    prefetch = _Prefetch(client)
    try:
        while True:
            request = _pull_request(device, page)
            cursor, part, refill = request["cursor"], request["part"], request["own"]
            answer, ops = prefetch.take(request)
            if answer is None:
                answer = client.pull(**request)
            try:
                if ops is None:
                    ops = _pulled_ops(answer.get("ops", []))
                new_cursor = int(answer["cursor"])
                scope = answer.get("scope")
                moves = answer.get("moves") or []
                new_part = answer.get("part") or ""  # an older server sends none: it never stops inside a move
                if not isinstance(new_part, str) or " " in new_part:
                    raise TypeError("part is not ENTITY:ID")
                if scope is not None and not isinstance(scope, dict):
                    raise TypeError("scope is not an object")
                for move in moves:
                    if not isinstance(move.get("account"), str) or not (move.get("drop") is True or all(
                            isinstance(row, list) and len(row) == 4 for row in move["records"])):
                        raise TypeError("a move is neither a drop nor a snapshot")
            except (OpFormatError, KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ServerError(f"the server sent an unusable pull page: {exc}") from None
            if answer.get("reset"):  # the rep's territories changed (docs/sync-protocol.md, "Territories")
                if scope is None or resets >= MAX_SCOPE_RESETS:
                    raise ServerError("the server kept changing this rep's territories during the sync; try again")
                resets += 1
                device.reset_scope(scope)
                continue
            if new_cursor < cursor:
                raise ServerError("the server's pull cursor went backwards")
            if answer.get("more") and (new_cursor, new_part) == (cursor, part):
                raise ServerError("the server's pull made no progress (the same cursor and part again)")
            if answer.get("more"):
                prefetch.start(_request_after(request, answer))
            applied += device.apply_remote(ops, cursor=str(new_cursor), witness=_witness(answer),
                                           latest=_latest(answer), moves=moves, scope=scope, own=refill,
                                           part=f"{new_cursor} {new_part}" if new_part else "",
                                           refilled=refill and not answer.get("more"))
            pulled += len(ops)
            if not answer.get("more"):
                device.sweep_orphans()
                return pulled, applied
    finally:
        if prefetch.job is not None:  # a page asked for and never taken: no read outlives the sync
            prefetch.job.wait()


@contextlib.contextmanager
def _one_sync_at_a_time(device: Device) -> Iterator[None]:
    """An exclusive lock on the home's sync.lock: the agent and a `crm sync` never interleave
    (a continuity recovery changes what the other would send)."""
    fd = os.open(device.home / SYNC_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _learnt(client: SyncClient) -> dict[str, str]:
    """The server's clock as this sync learnt it, to store: the device's next stamps stay near it."""
    return {MetaKey.SERVER_TIME: str(client.server_time)} if client.server_time else {}


def sync_once(device: Device, *, client: SyncClient | None = None) -> SyncResult:
    """Push then pull. Raises ServerUnreachableError / AuthRefusedError / ServerError."""
    device.store.ensure_writable()  # before the lock file, and before anything is sent
    with _one_sync_at_a_time(device):
        device.reload_identity()  # another process may have given this home a new device id
        return _sync_once(device, client)


def _sync_once(device: Device, client: SyncClient | None) -> SyncResult:
    started = time.monotonic()
    own = client is None
    client = client or client_for(device)
    try:
        result = SyncResult()
        try:
            _sync_with_recovery(device, client, result)
        except Exception as exc:
            now = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
            since = (device.setting(MetaKey.SYNC_FAILING) or "").split(" ", 1)[0] or now  # the first failure
            device.set_settings({MetaKey.LAST_SYNC_ERROR: f"{now} {getattr(exc, 'message', str(exc))[:200]}",
                                 MetaKey.SYNC_FAILING: f"{since} {getattr(exc, 'kind', 'error')}",
                                 **_learnt(client)})
            raise
        result.seconds = time.monotonic() - started
        device.set_settings({MetaKey.LAST_SYNC: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             MetaKey.LAST_SYNC_ERROR: "", MetaKey.LAST_SYNC_REJECTED: str(result.rejected),
                             MetaKey.SYNC_FAILING: "",
                             **_learnt(client)})
        return result
    finally:
        if own:
            client.close()


def _sync_with_recovery(device: Device, client: SyncClient, result: SyncResult) -> None:
    """Push, then pull; when the server says the device's view of its log no longer holds, put it
    right and go again (docs/sync-protocol.md, "Continuity")."""
    for _ in range(MAX_RECOVERIES + 1):
        try:
            resend_kept(device, client)
            pushed, rejected, restamped = _push_all(device, client, batch=PUSH_BATCH)
            result.pushed += pushed
            result.rejected += rejected
            result.restamped += restamped
            result.pulled, result.applied = pull_changes(device, client)
            device.pack_kept()
            return
        except ContinuityBroken as broken:
            if broken.reason == "log_changed":
                device.forget_server_log()
            elif broken.latest is None or device.knows_op(broken.latest):
                device.adopt_latest(broken.latest)  # its own op, whose answer was lost
            else:
                device.take_new_identity()
    raise ServerError("the server's log kept changing under this sync; try again later")
