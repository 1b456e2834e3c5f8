"""The HTTP face of the sync server (Starlette). Protocol: docs/sync-protocol.md.

Handlers only authenticate, parse and bound the request; ServerStore does the work in a worker
thread so a slow disk never stalls the event loop.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import CrmError, NotFoundError, ValidationError
from ..ops import loads
from .store import MAX_PULL_LIMIT, MAX_PUSH_OPS, Identity, ServerStore

PROTOCOL = 1
MAX_BODY_BYTES = 16 * 1024 * 1024


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": kind, "message": message}, status_code=status)


class _Refusal(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


def _identity(store: ServerStore, request: Request, role: str) -> Identity:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _Refusal(_error(401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)"))
    identity = store.authenticate(token.strip())
    if identity is None:
        raise _Refusal(_error(401, "unauthorized", "token refused: unknown or revoked"))
    if role == "admin" and identity.role != "admin":
        raise _Refusal(_error(403, "forbidden", "this endpoint needs a back-office (admin) token"))
    return identity


async def _json_body(request: Request) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise _Refusal(_error(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes"))
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _Refusal(_error(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes"))
    try:
        data = loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Refusal(_error(400, "bad_json", f"request body is not JSON: {exc}")) from None
    if not isinstance(data, dict):
        raise _Refusal(_error(400, "bad_request", "request body must be a JSON object"))
    if data.get("protocol", PROTOCOL) != PROTOCOL:
        raise _Refusal(_error(400, "protocol", f"unsupported protocol {data.get('protocol')!r}; "
                                                f"this server speaks {PROTOCOL}"))
    return data


def create_app(store: ServerStore) -> Starlette:
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "protocol": PROTOCOL, "version": __version__})

    async def push(request: Request) -> JSONResponse:
        try:
            identity = await run_in_threadpool(_identity, store, request, "device")
            data = await _json_body(request)
        except _Refusal as refusal:
            return refusal.response
        ops = data.get("ops")
        if not isinstance(ops, list):
            return _error(400, "bad_request", "push body needs an 'ops' list")
        if len(ops) > MAX_PUSH_OPS:
            return _error(413, "too_large", f"at most {MAX_PUSH_OPS} ops per push")
        try:
            result = await run_in_threadpool(store.push, identity, ops)
        except ValidationError as exc:
            return _error(422, "invalid", exc.message)
        return JSONResponse(result.to_json())

    async def pull(request: Request) -> JSONResponse:
        try:
            identity = await run_in_threadpool(_identity, store, request, "device")
        except _Refusal as refusal:
            return refusal.response
        params = request.query_params
        try:
            cursor = int(params.get("cursor", "0"))
            limit = int(params.get("limit", "1000"))
        except ValueError:
            return _error(400, "bad_request", "cursor and limit must be whole numbers")
        if cursor < 0 or not 1 <= limit <= MAX_PULL_LIMIT:
            return _error(400, "bad_request", f"cursor must be >= 0 and limit 1..{MAX_PULL_LIMIT}")
        device = params.get("device")
        ops, new_cursor, more = await run_in_threadpool(store.pull, identity, cursor=cursor,
                                                        limit=limit, device=device)
        body = '{"ops":[' + ",".join(ops) + f'],"cursor":{new_cursor},"more":{"true" if more else "false"}}}'
        return Response(body, media_type="application/json")

    async def admin_edit(request: Request) -> JSONResponse:
        try:
            identity = await run_in_threadpool(_identity, store, request, "admin")
            data = await _json_body(request)
        except _Refusal as refusal:
            return refusal.response
        entity, rid, changes = data.get("entity"), data.get("id"), data.get("set")
        if not isinstance(entity, str) or not isinstance(rid, str) or not isinstance(changes, dict):
            return _error(400, "bad_request", "body needs entity, id and a 'set' object")
        try:
            result = await run_in_threadpool(store.edit, identity.org, entity, rid, changes)
        except NotFoundError as exc:
            return _error(404, "not_found", exc.message)
        except CrmError as exc:
            return _error(422, "invalid", exc.message)
        return JSONResponse(result)

    async def admin_export(request: Request) -> JSONResponse:
        try:
            identity = await run_in_threadpool(_identity, store, request, "admin")
        except _Refusal as refusal:
            return refusal.response
        return JSONResponse(await run_in_threadpool(store.export, identity.org))

    return Starlette(routes=[
        Route("/v1/health", health, methods=["GET"]),
        Route("/v1/push", push, methods=["POST"]),
        Route("/v1/pull", pull, methods=["GET"]),
        Route("/v1/admin/edit", admin_edit, methods=["POST"]),
        Route("/v1/admin/export", admin_export, methods=["GET"]),
    ])
