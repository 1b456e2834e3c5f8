"""The HTTP face of the sync server (Starlette). Protocol: docs/sync-protocol.md; what it refuses
and why: docs/security.md; every request and response: ``GET /openapi.json``.

Handlers authenticate first, then parse and bound the request, and refuse anything malformed
before the store sees it; ServerStore does the work in a worker thread so a slow disk never
stalls the event loop. Every answer, refusals included, is a JSON object.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import anyio
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__, wire
from ..admission import ID, MAX_CURSOR, RECORD_ID, InvalidOp, parse, parse_witness
from ..domain import ENTITIES
from ..errors import CrmError, NotFoundError, ValidationError
from ..hlc import server_now_ms
from ..ops import MAX_FIELDS_PER_OP, PROTOCOL, PROTOCOLS, Op, loads
from . import openapi
from .limits import BodyTimeout, Limits
from .store import (
    MAX_PULL_LIMIT,
    MAX_PUSH_OPS,
    PUSH_TXN_OPS,
    BadPart,
    Continuity,
    ContinuityBroken,
    Identity,
    OutOfScopeClient,
    PushResult,
    ServerStore,
    parse_part,
)

SERVER_TIME_HEADER = b"crm-server-time"
# Writes (pushes, back-office edits) of one organisation in the store at once; more wait their turn
# in the event loop, holding no worker thread, so one organisation cannot take all of them.
MAX_WRITES_PER_ORG = 2
MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_PULL_LIMIT = 1000
PUSH_KEYS = frozenset({"protocol", "device", "ops", "witness", "known"})
EDIT_KEYS = frozenset({"protocol", "entity", "id", "set"})
PULL_PARAMS = frozenset({"cursor", "limit", "device", "witness", "known", "scope", "own", "part"})
_WHOLE = re.compile(r"[0-9]{1,19}")  # ASCII digits only: int() would also take "١٢" and "1_000"
# JSON nesting: a push is 6 levels deep; refuse past MAX_DEPTH before any parser recurses into it
# (orjson before 3.9.15 overflows the stack on a deep enough document: CVE-2024-27454).
MAX_DEPTH = 32
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")

TOKEN_REFUSED = {
    "missing": "no token: send Authorization: Bearer <token>",
    "unknown": "token refused: it is not a token of this server",
    "revoked": "token refused: it was revoked; ask for a new token and run `crm login`",
    "expired": "token refused: it has expired; ask for a new token and run `crm login`",
    "valid": "token refused",  # it turned valid between two reads: cannot happen, say little
}


def _error(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="crm"'} if status == 401 else None
    return JSONResponse({"error": kind, "message": message, **extra}, status_code=status, headers=headers)


class _Refusal(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


def _identity(store: ServerStore, request: Request, role: str) -> Identity:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _Refusal(_error(401, "unauthorized", TOKEN_REFUSED["missing"], reason="missing"))
    identity = store.authenticate(token)
    if identity is None:
        state = store.token_state(token)
        raise _Refusal(_error(401, "unauthorized", TOKEN_REFUSED[state], reason=state))
    if role == "admin" and identity.role != "admin":
        raise _Refusal(_error(403, "forbidden", "this endpoint needs a back-office (admin) token"))
    return identity


async def _read_body(request: Request) -> bytes:
    """The body's bytes, at most MAX_BODY_BYTES."""
    too_large = _Refusal(_error(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes"))
    length = request.headers.get("content-length")
    if length is not None and (not _WHOLE.fullmatch(length) or int(length) > MAX_BODY_BYTES):
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request: Request, keys: frozenset[str]) -> dict[str, Any]:
    """The body as a JSON object with only ``keys``, at most MAX_BODY_BYTES, of our protocol."""
    return _decoded(await _read_body(request), keys)


def _decoded(body: bytes, keys: frozenset[str]) -> dict[str, Any]:
    if not _shallow(body):
        raise _Refusal(_error(400, "bad_json", f"request body is not JSON of at most {MAX_DEPTH} levels "
                                               "of nesting"))
    try:
        data = loads(body)
    except ValueError as exc:  # orjson's JSONDecodeError, invalid UTF-8 included
        raise _Refusal(_error(400, "bad_json", f"request body is not JSON: {exc}")) from None
    if not isinstance(data, dict):
        raise _Refusal(_error(400, "bad_request", "request body must be a JSON object"))
    unknown = sorted(str(key) for key in data if key not in keys)
    if unknown:
        raise _Refusal(_error(400, "bad_request", f"unknown key(s) in the request body: "
                                                  f"{', '.join(unknown)[:200]}; expected {', '.join(sorted(keys))}"))
    protocol = data.get("protocol", PROTOCOL)
    if type(protocol) is not int or protocol not in PROTOCOLS:
        raise _Refusal(_error(400, "protocol", f"unsupported protocol {protocol!r:.40}; "
                                               f"this server speaks {', '.join(map(str, PROTOCOLS))}"))
    return data


def _push_body(body: bytes) -> tuple[dict[str, Any], list[Any] | None]:
    """A push body's keys, and its ops as typed structs when every one fits the typed schema
    (crm.wire: one decode, the hot path); else None, and ``ops`` holds the plain JSON the slow
    path (``admission.parse``) judges and explains."""
    typed = wire.decode_push(body)
    # The typed schema bounds the nesting everywhere but in field values: only a body with an object
    # or array among them needs the bracket count (a few us an op) to be refused as too deep.
    if typed is not None and (not wire.nests(typed.ops) or _shallow(body)):
        data = typed.claims()
        protocol = data.get("protocol", PROTOCOL)
        if type(protocol) is int and protocol in PROTOCOLS:
            data["ops"] = typed.ops
            return data, typed.ops
    return _decoded(body, PUSH_KEYS), None


def _shallow(body: bytes) -> bool:
    """Whether ``body``'s brackets nest at most MAX_DEPTH deep and pair up (strings aside).

    Bytes operations only (C speed, a few ms for a 1,000-op push): drop escaped backslashes and
    quotes, keep what lies outside quotes, keep only brackets, then delete innermost pairs once
    per level; valid JSON always ends empty."""
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = b"".join(unescaped.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    for _ in range(MAX_DEPTH):
        if not skeleton:
            return True
        shorter = skeleton.replace(b"[]", b"").replace(b"{}", b"")
        if len(shorter) == len(skeleton):
            return False  # unbalanced: not JSON, and not for a recursive parser to find out
        skeleton = shorter
    return not skeleton


def _push(store: ServerStore, identity: Identity, raw_ops: list[Any], continuity: Continuity,
          body: bytes | None = None) -> PushResult:
    """Refuse the whole batch if any op breaks the schema (InvalidOp); else hand it to the store,
    which rejects the ops the domain rules refuse one by one and applies the rest.

    ``raw_ops`` are crm.wire structs (the typed decode of ``body``) or plain JSON. Typed ops each
    pass ``wire.shape``; the first that does not sends the batch down the slow path, which parses
    the plain JSON of ``body`` op by op with ``admission.parse`` and says what is wrong."""
    return store.push(identity, _parsed(raw_ops, body), continuity=continuity)


def _parsed(raw_ops: list[Any], body: bytes | None) -> list[Op]:
    """The ops of a push body, each parsed once (``_push``); InvalidOp for the batch if one breaks
    the schema."""
    now = server_now_ms()
    ops: list[Op] = []
    if body is not None:
        for w in raw_ops:
            op = wire.shape(w, now)
            if op is None:
                raw_ops = loads(body)["ops"]
                break
            ops.append(op)
        else:
            return ops  # parsed by msgspec
    return [parse(raw, now=now) for raw in raw_ops]


def _continuity(device: Any, witness: Any, known: Any) -> Continuity:
    """The continuity claims of a push body or pull query (docs/sync-protocol.md, "Continuity")."""
    if witness is not None:
        witness = parse_witness(witness)
        if witness is None:
            raise _Refusal(_error(400, "bad_request", "witness must be POSITION:OP_ID"))
    if known is not None and not (isinstance(known, str) and (known == "" or ID.fullmatch(known))):
        raise _Refusal(_error(400, "bad_request", "known must be an op id or empty"))
    if known is not None and device is None:
        raise _Refusal(_error(400, "bad_request", "known needs device"))
    return Continuity(device=device, witness=witness, known=known)


def _continuity_broken(exc: ContinuityBroken) -> JSONResponse:
    says = {"log_changed": "this server's log no longer holds the entry the device saw: it was restored "
                           "from a backup or replaced; send again what you hold and pull from the start",
            "device_reused": "another copy of this device id pushed to this log: a restored or copied home "
                             "must take a new device id"}
    return _error(409, "continuity", says[exc.reason], reason=exc.reason, latest=exc.latest)


def _pull_params(request: Request) -> tuple[int, int, str | None, Continuity, int | None, bool, str | None]:
    params = request.query_params
    unknown = sorted(set(params) - PULL_PARAMS)
    if unknown:
        raise _Refusal(_error(400, "bad_request", f"unknown query parameter(s): {', '.join(unknown)[:200]}; "
                                                  "expected cursor, limit, device, witness, known, scope, own, part"))
    cursor, limit = params.get("cursor", "0"), params.get("limit", str(DEFAULT_PULL_LIMIT))
    if not _WHOLE.fullmatch(cursor) or int(cursor) > MAX_CURSOR:
        raise _Refusal(_error(400, "bad_request", f"cursor must be a whole number from 0 to {MAX_CURSOR}"))
    if not _WHOLE.fullmatch(limit) or not 1 <= int(limit) <= MAX_PULL_LIMIT:
        raise _Refusal(_error(400, "bad_request", f"limit must be a whole number from 1 to {MAX_PULL_LIMIT}"))
    device = params.get("device")
    if device is not None and not ID.fullmatch(device):
        raise _Refusal(_error(400, "bad_request", f"device must be a device id ({ID.pattern})"))
    epoch = params.get("scope")  # protocol 2: the scope epoch the device holds (absent: protocol 1)
    if epoch is not None and (not _WHOLE.fullmatch(epoch) or int(epoch) > MAX_CURSOR):
        raise _Refusal(_error(400, "bad_request", f"scope must be a whole number from 0 to {MAX_CURSOR}"))
    own = params.get("own", "0")
    if own not in ("0", "1"):
        raise _Refusal(_error(400, "bad_request", "own must be 0 or 1"))
    part = params.get("part")  # where the device is inside a move's snapshot ("": at the cursor's entry)
    if part is not None:
        if epoch is None:
            raise _Refusal(_error(400, "bad_request", "part needs scope (protocol 2)"))
        if part:
            try:
                parse_part(part)
            except BadPart as exc:
                raise _Refusal(_error(400, "bad_request", str(exc))) from None
    return (int(cursor), int(limit), device, _continuity(device, params.get("witness"), params.get("known")),
            None if epoch is None else int(epoch), own == "1", part)


class _Write:
    """One write waiting for its organisation's turn: a push (``push``: identity, the body's ops,
    continuity, the body for the typed path) or any other write (``run``, called alone)."""

    __slots__ = ("push", "run", "size", "result", "error", "taken", "done", "wake")

    def __init__(self, *, push: tuple[Identity, list[Any], Continuity, bytes | None] | None = None,
                 run: Callable[[], Any] | None = None) -> None:
        self.push, self.run = push, run
        self.size = len(push[1]) if push is not None else 0
        self.result: Any = None
        self.error: BaseException | None = None
        self.taken = False  # a writer took it into its batch: it is in the store, or done
        self.done = False
        self.wake = anyio.Event()


class _OrgWrites:
    """At most ``limit`` writes per organisation in the store at once; the others wait in a queue,
    in order, without a thread. A writer whose turn comes takes with its own push the pushes queued
    behind it, as many as one short transaction holds (PUSH_TXN_OPS ops), and the store applies
    them together (``ServerStore.push_group``: one commit for all, each answered on its own)."""

    def __init__(self, store: ServerStore, limit: int) -> None:
        self.store, self.limit = store, limit
        self._orgs: dict[str, tuple[list[_Write], list[int]]] = {}  # org -> (queue, [writers running])
        self._pending: dict[str, int] = {}

    async def run(self, org: str, write: _Write) -> Any:
        queue, running = self._orgs.setdefault(org, ([], [0]))
        queue.append(write)
        self._pending[org] = self._pending.get(org, 0) + 1
        try:
            while not write.done:
                # Not taken yet and a turn free: take it. Woken for a free turn, a write may find
                # that a writer arriving meanwhile took the turn, and it with its own push.
                if not write.taken and running[0] < self.limit:
                    batch = self._take(queue, write)
                    running[0] += 1
                    try:
                        await run_in_threadpool(_apply_writes, self.store, batch)
                    finally:
                        running[0] -= 1
                        for done in batch:
                            done.done = True
                            done.wake.set()
                        self._wake(queue, running)
                else:
                    write.wake = anyio.Event()
                    await write.wake.wait()
        finally:
            if not write.done and write in queue:  # cancelled while waiting: leave the queue
                queue.remove(write)
                self._wake(queue, running)
            self._pending[org] -= 1
            if not self._pending[org]:
                del self._pending[org]
            if not queue and not running[0]:
                self._orgs.pop(org, None)  # nobody left: keep no state for idle organisations
        if write.error is not None:
            raise write.error
        return write.result

    def pending(self, org: str) -> int:
        """Writes of ``org`` queued or in the store now (tests)."""
        return self._pending.get(org, 0)

    def _wake(self, queue: list[_Write], running: list[int]) -> None:
        for waiting in queue[:max(0, self.limit - running[0])]:
            waiting.wake.set()  # a turn is free: the first in line take it

    @staticmethod
    def _take(queue: list[_Write], write: _Write) -> list[_Write]:
        """``write`` and, if it is a push, the pushes queued that fit one short transaction with it."""
        queue.remove(write)
        write.taken = True
        if write.push is None:
            return [write]
        batch, size = [write], write.size
        for other in list(queue):
            if other.push is None:
                continue  # another kind of write goes alone, in its place
            if size + other.size > PUSH_TXN_OPS:
                break
            queue.remove(other)
            other.taken = True
            batch.append(other)
            size += other.size
        return batch


def _apply_writes(store: ServerStore, batch: list[_Write]) -> None:
    """In a worker thread: run ``batch`` (one write, or pushes to apply together), leaving each
    write's result or exception on it."""
    try:
        if batch[0].push is None:
            try:
                batch[0].result = batch[0].run()  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - raised again by its handler
                batch[0].error = exc
            return
        ready: list[_Write] = []
        items: list[tuple[Identity, list[Any], Continuity]] = []
        for write in batch:
            identity, raw_ops, continuity, body = write.push  # type: ignore[misc]
            try:
                items.append((identity, _parsed(raw_ops, body), continuity))
            except Exception as exc:  # noqa: BLE001 - an invalid batch fails alone
                write.error = exc
                continue
            ready.append(write)
        if ready:
            for write, result in zip(ready, store.push_group(items), strict=True):
                if isinstance(result, Exception):
                    write.error = result
                else:
                    write.result = result
    finally:
        for write in batch:
            if write.result is None and write.error is None:
                write.error = CrmError("the write did not complete; send it again")


def create_app(store: ServerStore, *, limits: Limits | None = None) -> Starlette:
    """The app over ``store``. Of ``limits`` it applies the body timeout (``BodyTimeout``) and
    the byte cap of a pull page; the socket-level ones are the server's (crm.server.serve)."""
    limits = limits or Limits()
    max_pull_bytes = limits.max_pull_bytes
    schema = openapi.document(version=__version__)
    writes = _OrgWrites(store, MAX_WRITES_PER_ORG)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "protocol": PROTOCOL, "version": __version__})

    async def openapi_json(request: Request) -> JSONResponse:
        return JSONResponse(schema)

    async def push(request: Request) -> JSONResponse:
        try:
            identity = await run_in_threadpool(_identity, store, request, "device")
            body = await _read_body(request)
            data, typed = _push_body(body)
        except _Refusal as refusal:
            return refusal.response
        ops, device = data.get("ops"), data.get("device")
        if not isinstance(ops, list):
            return _error(400, "bad_request", "push body needs an 'ops' list")
        if len(ops) > MAX_PUSH_OPS:
            return _error(413, "too_large", f"at most {MAX_PUSH_OPS} ops per push")
        if "device" in data and not (isinstance(device, str) and ID.fullmatch(device)):
            return _error(400, "bad_request", f"device must be a device id ({ID.pattern})")
        if any(key in data and data[key] is None for key in ("witness", "known")):
            return _error(400, "bad_request", "witness and known may be left out, not null")
        try:
            continuity = _continuity(device, data.get("witness"), data.get("known"))
        except _Refusal as refusal:
            return refusal.response
        try:
            result = await writes.run(identity.org, _Write(
                push=(identity, ops, continuity, body if typed is not None else None)))
        except ContinuityBroken as exc:  # nothing from this batch was applied
            return _continuity_broken(exc)
        except InvalidOp as exc:  # nothing from this batch was applied
            return _error(422, "invalid", exc.message, op=exc.op_id, **({"code": exc.code} if exc.code else {}))
        except ValidationError as exc:
            return _error(422, "invalid", exc.message, op=None)
        # orjson: a 1,000-op answer is 0.1 ms of Starlette's json.dumps, 5 us here
        return Response(orjson.dumps(result.to_json()), media_type="application/json")

    def authorised_pull(request: Request) -> tuple[str | None, tuple[list[str], int, bool, dict[str, Any]]]:
        """The token, the parameters and the page in one trip to a worker thread: a second trip
        cost an empty pull a quarter of its server CPU (about 0.25 of 1.1 ms)."""
        identity = _identity(store, request, "device")
        cursor, limit, device, continuity, epoch, own, part = _pull_params(request)
        return device, store.pull(identity, cursor=cursor, limit=limit, device=device, max_bytes=max_pull_bytes,
                                  continuity=continuity, epoch=epoch, own=own, part=part)

    async def pull(request: Request) -> Response:
        try:
            device, (ops, new_cursor, more, seen) = await run_in_threadpool(authorised_pull, request)
        except _Refusal as refusal:
            return refusal.response
        except ContinuityBroken as exc:
            return _continuity_broken(exc)
        except BadPart as exc:
            return _error(400, "bad_request", str(exc))
        except OutOfScopeClient as exc:
            return _error(400, "protocol", str(exc))
        # A reader that names no device gets the plain page; a device also what it checks next time.
        tail = "" if device is None else f',"witness":{orjson.dumps(seen["witness"]).decode()},' \
                                         f'"latest":{orjson.dumps(seen["latest"]).decode()}'
        for key in ("scope", "moves", "reset", "part"):  # protocol 2 (docs/sync-protocol.md, "Territories")
            if key in seen:
                tail += f',"{key}":{orjson.dumps(seen[key]).decode()}'
        body = ('{"ops":[' + ",".join(ops) + f'],"cursor":{new_cursor},"more":{"true" if more else "false"}'
                + tail + "}")
        return Response(body, media_type="application/json")

    async def admin_edit(request: Request) -> JSONResponse:
        try:
            identity = await run_in_threadpool(_identity, store, request, "admin")
            data = await _json_body(request, EDIT_KEYS)
        except _Refusal as refusal:
            return refusal.response
        entity, rid, changes = data.get("entity"), data.get("id"), data.get("set")
        if not isinstance(entity, str) or not isinstance(rid, str) or not isinstance(changes, dict):
            return _error(400, "bad_request", "body needs entity (text), id (text) and a 'set' object")
        if entity not in ENTITIES:
            return _error(422, "invalid", f"unknown entity {entity!r:.80} (one of {', '.join(ENTITIES)})")
        if not RECORD_ID.fullmatch(rid.strip().lower()):
            return _error(422, "invalid", f"id {rid!r:.80} is not a record id ({RECORD_ID.pattern})")
        if len(changes) > MAX_FIELDS_PER_OP:
            return _error(422, "invalid", f"an edit sets at most {MAX_FIELDS_PER_OP} fields")
        try:
            result = await writes.run(identity.org, _Write(
                run=lambda: store.edit(identity.org, entity, rid, changes)))
        except NotFoundError as exc:
            return _error(404, "not_found", exc.message)
        except ValidationError as exc:  # any other CrmError is the store's: 503 (_store_unavailable)
            return _error(422, "invalid", exc.message)
        return JSONResponse(result)

    async def admin_export(request: Request) -> JSONResponse:
        try:
            identity = await run_in_threadpool(_identity, store, request, "admin")
        except _Refusal as refusal:
            return refusal.response
        return JSONResponse(await run_in_threadpool(store.export, identity.org))

    app = Starlette(
        routes=[
            Route("/openapi.json", openapi_json, methods=["GET"]),
            Route("/v1/health", health, methods=["GET"]),
            Route("/v1/push", push, methods=["POST"]),
            Route("/v1/pull", pull, methods=["GET"]),
            Route("/v1/admin/edit", admin_edit, methods=["POST"]),
            Route("/v1/admin/export", admin_export, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, CrmError: _store_unavailable, Exception: _internal},
        middleware=[Middleware(ServerClock),
                    Middleware(BodyTimeout, idle=limits.body_timeout, min_rate=limits.min_body_rate)],
    )
    app.state.writes = writes
    return app


class ServerClock:
    """Every answer carries the server's clock (``crm-server-time``: ms since the epoch), so a device
    learns it on every sync and keeps its stamps near it (docs/sync-protocol.md, "Clocks")."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_clock(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()),
                                                   (SERVER_TIME_HEADER, str(server_now_ms()).encode())]}
            await send(message)

        await self.app(scope, receive, send_with_clock)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Unknown paths and wrong methods answer JSON like every other refusal."""
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return JSONResponse({"error": kind, "message": str(exc.detail)}, status_code=exc.status_code,
                        headers=exc.headers)


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The store is locked or unreadable: a device retries later with its work still queued."""
    message = exc.message if isinstance(exc, CrmError) else str(exc)
    return JSONResponse({"error": "unavailable", "message": message}, status_code=503)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": "internal", "message": "internal server error"}, status_code=500)
