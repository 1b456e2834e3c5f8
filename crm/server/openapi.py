"""The server's OpenAPI 3.1 document, served at ``GET /openapi.json``.

Written by hand from the same limits and patterns the handlers enforce (imported, not copied),
so the schema cannot drift from what the server accepts: tests/test_security_openapi.py runs
schemathesis against a real server with it. Prose: docs/sync-protocol.md.
"""

from __future__ import annotations

from typing import Any

from ..admission import ID, RECORD_ID
from ..domain import ENTITY_ORDER
from ..hlc import MAX_AHEAD_MS
from ..ops import MAX_BASE_STAMPS, MAX_FIELD_NAME, MAX_FIELDS_PER_OP
from .store import FAMILY, MAX_PULL_LIMIT, MAX_PUSH_OPS

STAMP = r"^[0-9]{13}\.[0-9]{5}@[^@]{1,64}$"
# Continuity claims (docs/sync-protocol.md): a log entry the device saw, its own latest op.
WITNESS = {"type": "string", "pattern": f"^[0-9]{{1,19}}:{ID.pattern}$",
           "description": "POSITION:OP_ID of a log entry the device saw; 409 log_changed if gone"}
KNOWN = {"type": "string", "pattern": f"^({ID.pattern})?$",
         "description": "the latest op of this device the device knows the log holds ('' none); "
                        "409 device_reused if the log holds a later one"}
LATEST = {"type": ["string", "null"], "description": "the latest op of the named device in the log"}
_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _schemas() -> dict[str, Any]:
    field_names = {"type": "string", "minLength": 1, "maxLength": MAX_FIELD_NAME}
    example_op = {"op": "019abcde-0000-7000-8000-000000000001", "dev": "019abcde-0000-7000-8000-0000000000d1",
                  "hlc": "1795706783938.00000@019abcde-0000-7000-8000-0000000000d1", "kind": "create",
                  "entity": "account", "id": "019abcde-0000-7000-8000-0000000000a1",
                  "fields": {"name": "Corner Store 42", "city": "Leeds"}, "base": {}}
    return {
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string", "description": "what kind of refusal: unauthorized, forbidden, "
                          "bad_json, bad_request, protocol, too_large, invalid, not_found, continuity, "
                          "unavailable"},
                "message": {"type": "string", "description": "what is wrong, for a person"},
                "reason": {"type": "string", "enum": ["missing", "unknown", "revoked", "expired", "valid",
                                                      "log_changed", "device_reused"],
                           "description": "401: why the token was refused; 409: which continuity claim failed"},
                "latest": {"type": ["string", "null"],
                           "description": "409 device_reused: the latest op of the device id the log holds"},
                "op": {"type": ["string", "null"],
                       "description": "422 on push only: the op that made the batch invalid, if it has an id"},
                "code": {"type": "string", "enum": ["clock_ahead"],
                         "description": "422 on push only: the op's stamp is more than a year ahead of the "
                                        "server's clock (crm-server-time); a device re-stamps it and sends it again"},
            },
        },
        "Op": {
            "type": "object",
            "description": "One change to one record (crm/ops.py). The stamp's device part must equal dev; "
                           "field values must have their field's JSON type.",
            "additionalProperties": False,
            "required": ["op", "dev", "hlc", "entity", "id"],
            "properties": {
                "op": {"type": "string", "pattern": f"^{ID.pattern}$"},
                "dev": {"type": "string", "pattern": f"^{ID.pattern}$"},
                "hlc": {"type": "string", "pattern": STAMP},
                "kind": {"type": "string", "enum": ["create", "update", "delete", "resolve"], "default": "update"},
                "entity": {"type": "string", "enum": list(ENTITY_ORDER)},
                "id": {"type": "string", "pattern": f"^{RECORD_ID.pattern}$"},
                "fields": {"type": "object", "maxProperties": MAX_FIELDS_PER_OP, "propertyNames": field_names},
                "base": {"type": "object", "maxProperties": MAX_FIELDS_PER_OP, "propertyNames": field_names,
                         "additionalProperties": {"type": "array", "maxItems": MAX_BASE_STAMPS,
                                                  "items": {"type": "string", "pattern": STAMP}}},
            },
            "example": example_op,
        },
        "LoggedOp": {
            "type": "object",
            "description": "An op as the organisation's log holds it (the wire form of Op).",
            "required": ["op", "dev", "hlc", "kind", "entity", "id", "fields", "base"],
            "properties": {
                "op": {"type": "string"}, "dev": {"type": "string"}, "hlc": {"type": "string"},
                "kind": {"type": "string"}, "entity": {"type": "string"}, "id": {"type": "string"},
                "fields": {"type": "object"},
                "base": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
            },
        },
        "PushRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["ops"],
            "properties": {
                "protocol": {"type": "integer", "enum": [1], "default": 1},
                "device": {"type": "string", "pattern": f"^{ID.pattern}$"},
                "ops": {"type": "array", "maxItems": MAX_PUSH_OPS, "items": _ref("Op")},
                "witness": WITNESS,
                "known": KNOWN,
            },
            "example": {"protocol": 1, "device": example_op["dev"], "ops": [example_op]},
        },
        "PushResponse": {
            "type": "object",
            "required": ["acked", "rejected"],
            "properties": {
                "acked": {"type": "array", "items": {"type": "string"},
                          "description": "op ids now in the log (applied now or before)"},
                "rejected": {"type": "array", "description": "well-formed ops the domain rules refuse; not applied",
                             "items": {"type": "object", "required": ["op", "reason"],
                                       "properties": {"op": {"type": "string"}, "reason": {"type": "string"},
                                                      "code": {"type": "string", "enum": ["clock_ahead"],
                                                               "description": "refused only because its stamp "
                                                               f"is more than {MAX_AHEAD_MS // 60_000} minutes "
                                                               "ahead of the server's clock: re-stamp it and "
                                                               "send it again"}}}},
                "witness": {**WITNESS, "type": ["string", "null"], "description": "the log's last entry now"},
                "latest": LATEST,
            },
        },
        "PullResponse": {
            "type": "object",
            "required": ["ops", "cursor", "more"],
            "properties": {
                "ops": {"type": "array", "items": _ref("LoggedOp")},
                "cursor": {"type": "integer", "minimum": 0},
                "more": {"type": "boolean", "description": "true when the page was cut by limit or by the "
                         "server's byte cap (4 MiB by default; a page always holds at least one op)"},
                "witness": {**WITNESS, "type": ["string", "null"],
                            "description": "with device: the entry at the new cursor (null: none on this page)"},
                "latest": LATEST,
                # protocol 2 (with scope): what the rep holds, and the moves of the page
                "scope": {"type": "object", "required": ["epoch", "territories", "default"],
                          "properties": {"epoch": {"type": "integer", "minimum": 0},
                                         "territories": {"type": ["array", "null"], "items": {"type": "string"},
                                                         "description": "null: the whole organisation"},
                                         "default": {"type": ["string", "null"]}}},
                "moves": {"type": "array", "items": {
                    "type": "object", "required": ["account"],
                    "properties": {"account": {"type": "string"},
                                   "drop": {"type": "boolean", "description": "the rep no longer holds it"},
                                   "records": {"type": "array", "description": "rows [entity, id, data, meta] of "
                                               "the account's current state and its children's",
                                               "items": {"type": "array", "minItems": 4, "maxItems": 4,
                                                         "items": {"type": "string"}}}}}},
                "reset": {"type": "boolean", "description": "the rep's territories changed: pull again from 0"},
                "part": {"type": "string", "description": "'' or ENTITY:ID: where the page stopped inside a "
                         "move's snapshot; send it back with the cursor"},
            },
        },
        "EditRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["entity", "id", "set"],
            "properties": {
                "protocol": {"type": "integer", "enum": [1], "default": 1},
                "entity": {"type": "string", "enum": list(ENTITY_ORDER)},
                "id": {"type": "string", "minLength": 1, "maxLength": 64},
                "set": {"type": "object", "maxProperties": MAX_FIELDS_PER_OP, "propertyNames": field_names},
            },
            "example": {"protocol": 1, "entity": "account", "id": example_op["id"], "set": {"city": "York"}},
        },
        "Record": {
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "string"}, "op": {"type": "string"}},
            "description": "A record as exports show it: id, then its fields (orders: lines and total).",
        },
        "Export": {
            "type": "object",
            "required": ["format", *ENTITY_ORDER, "conflicts"],
            "properties": {
                "format": {"type": "string", "const": "crm-export/1"},
                **{name: {"type": "array", "items": _ref("Record")} for name in ENTITY_ORDER},
                "conflicts": {"type": "array", "items": {"type": "object"}},
            },
        },
        "Health": {
            "type": "object",
            "required": ["ok", "protocol", "version"],
            "properties": {"ok": {"type": "boolean"}, "protocol": {"type": "integer"},
                           "version": {"type": "string"}},
        },
    }


def document(*, version: str) -> dict[str, Any]:
    device = [{"device": []}]
    admin = [{"admin": []}]
    unauthorized = _error("no token, or an unknown, revoked or expired one (see reason); nothing applied")
    unavailable = _error("the store is locked or unreadable, or too many connections from this address "
                         "(too_many_connections, sent before any request is read); retry later, nothing applied")
    continuity = _error("a continuity claim failed (reason): the log went back, or another copy of the "
                        "device id pushed; nothing applied (docs/sync-protocol.md)")
    slow_body = _error("the request body arrived too slowly (timeout); the connection is closed, nothing applied")
    return {
        "openapi": "3.1.0",
        "info": {"title": "crm sync server", "version": version,
                 "description": "Offline-first CRM sync, protocol 1 (docs/sync-protocol.md). Tokens belong to "
                                "one organisation: every read and write is scoped to it (docs/security.md). "
                                "Every answer carries the header crm-server-time: the server's clock, in "
                                "milliseconds since the epoch."},
        "components": {
            "securitySchemes": {
                "device": {"type": "http", "scheme": "bearer", "description": "`crm server add-rep`"},
                "admin": {"type": "http", "scheme": "bearer", "description": "`crm server add-admin`"},
            },
            "schemas": _schemas(),
        },
        "paths": {
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document", "security": [],
                "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
            }},
            "/v1/health": {"get": {
                "operationId": "health", "summary": "Liveness; no token, no organisation data", "security": [],
                "responses": {"200": _json(_ref("Health"), "the server runs")},
            }},
            "/v1/push": {"post": {
                "operationId": "push", "summary": "Apply a batch of ops in short transactions, each op at most once",
                "security": device,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PushRequest")}}},
                "responses": {
                    "200": _json(_ref("PushResponse"), "applied: acked, and rejected ops the domain rules refuse"),
                    "400": _error("not JSON, not an object, an unknown key, a wrong protocol or device"),
                    "401": unauthorized,
                    "408": slow_body,
                    "413": _error(f"body over 16 MiB or more than {MAX_PUSH_OPS} ops"),
                    "409": continuity,
                    "422": _error("an op breaks the schema (op names it): nothing from the batch is applied"),
                    "503": unavailable,
                },
            }},
            "/v1/pull": {"get": {
                "operationId": "pull", "summary": "The organisation's log after a cursor, oldest first",
                "security": device,
                "parameters": [
                    {"name": "cursor", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                  "maximum": 2**63 - 1, "default": 0}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                 "maximum": MAX_PULL_LIMIT, "default": 1000}},
                    {"name": "device", "in": "query", "description": "leave this device's own ops out",
                     "schema": {"type": "string", "pattern": f"^{ID.pattern}$"}},
                    {"name": "witness", "in": "query", "schema": WITNESS},
                    {"name": "known", "in": "query", "description": "needs device", "schema": KNOWN},
                    # protocol 2 (docs/sync-protocol.md, "Territories")
                    {"name": "scope", "in": "query", "description": "protocol 2: the scope epoch the device "
                     "holds (0 at first); a different one gets reset", "schema": {"type": "integer", "minimum": 0,
                                                                                  "maximum": 2**63 - 1}},
                    {"name": "own", "in": "query", "description": "1: include the device's own ops",
                     "schema": {"type": "integer", "enum": [0, 1], "default": 0}},
                    {"name": "part", "in": "query", "description": "needs scope: the last snapshot row of a "
                     "move the device stored (ENTITY:ID, as the previous page's part said), '' at none",
                     "schema": {"type": "string", "pattern": f"^(({'|'.join(FAMILY)}):{ID.pattern})?$"}},
                ],
                "responses": {
                    "200": _json(_ref("PullResponse"), "a page of the log"),
                    "400": _error("a bad or unknown query parameter"),
                    "401": unauthorized,
                    "409": continuity,
                    "503": unavailable,
                },
            }},
            "/v1/admin/edit": {"post": {
                "operationId": "adminEdit", "summary": "A back-office edit, merged like a device's",
                "security": admin,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("EditRequest")}}},
                "responses": {
                    "200": _json(_ref("Record"), "the record after the edit, with the op made for it"),
                    "400": _error("not JSON, not an object, an unknown key, a wrong protocol"),
                    "401": unauthorized,
                    "403": _error("a device token"),
                    "404": _error("no such live record in the token's organisation"),
                    "413": _error("body over 16 MiB"),
                    "408": slow_body,
                    "422": _error("an invalid entity, id or value"),
                    "503": unavailable,
                },
            }},
            "/v1/admin/export": {"get": {
                "operationId": "adminExport", "summary": "The organisation's state in the canonical export format",
                "security": admin,
                "responses": {
                    "200": _json(_ref("Export"), "the export (same bytes as `crm export` on an up-to-date device)"),
                    "401": unauthorized,
                    "403": _error("a device token"),
                    "503": unavailable,
                },
            }},
        },
    }
