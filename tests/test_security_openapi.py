"""schemathesis against a real `crm server serve` process, driven by the server's own OpenAPI schema.

Every operation gets schema-valid (positive) and schema-breaking (negative) requests; each
answer must not be a 5xx, must be documented for its operation (status code, content type, body
schema), a schema-breaking request must be refused with a 4xx, and an operation that needs a
token must refuse the same request without one. Bounded: MAX_EXAMPLES per operation and mode.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.parameters import ParameterLocation

from crm import __version__
from crm.server.openapi import document
from tests.support import ok, running_server

pytestmark = [pytest.mark.slow, pytest.mark.process]  # about 1,100 requests to a real server: 15 to 40 s
MAX_EXAMPLES = 200
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection, ignored_auth]

schema = schemathesis.openapi.from_dict(document(version=__version__))
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                max_examples=MAX_EXAMPLES)
# A schema-breaking request is refused with a 4xx other than those 5xx the default also allows;
# 413 is how the server refuses one over a size limit (too many ops in a push).
schema.config.checks.negative_data_rejection.expected_statuses = [
    "400", "401", "403", "404", "405", "406", "409", "413", "415", "422"]
SENT: Counter[str] = Counter()  # "METHOD /path status" -> requests


@dataclass
class Api:
    url: str
    device: str
    admin: str


@pytest.fixture(scope="module")
def api(tmp_path_factory, request):
    with running_server(tmp_path_factory.mktemp("openapi") / "server") as server:
        device = server.add_rep("acme", "fuzz")
        admin = ok("server", "add-admin", "--data", str(server.data), "--org", "acme", "--json")["token"]
        yield Api(server.url, device, admin)
    by_operation: Counter[str] = Counter()
    for key, count in SENT.items():
        method, path, status = key.split()
        documented = path in schema.raw_schema["paths"] and method.lower() in schema.raw_schema["paths"][path]
        by_operation[f"{method} {path}" if documented else "undeclared methods"] += count
    _say(request, f"\nschemathesis: {sum(SENT.values())} generated requests; "
                  + "; ".join(f"{name}: {count}" for name, count in sorted(by_operation.items()))
                  + "\n  by status: " + ", ".join(f"{status} {count}" for status, count in sorted(_by_status().items())))


def _by_status() -> Counter[str]:
    out: Counter[str] = Counter()
    for key, count in SENT.items():
        out[key.split()[2]] += count
    return out


def _stamp_own_device(case) -> None:
    """Most generated ops carry a stamp whose device part differs from ``dev`` (the schema cannot
    say they must match), so the server refuses them before admission. Give half of the
    schema-valid ones their own device, so merge and the store see random ops too."""
    body = case.body
    if case.meta.generation.mode.is_negative or not isinstance(body, dict) or random.random() < 0.5:
        return
    for op in body.get("ops", []) if isinstance(body.get("ops"), list) else []:
        if isinstance(op, dict) and isinstance(op.get("hlc"), str) and isinstance(op.get("dev"), str):
            op["hlc"] = op["hlc"].partition("@")[0] + "@" + op["dev"]


def test_the_served_schema_is_the_one_tested(api):
    served = httpx.get(api.url + "/openapi.json").json()
    assert served == document(version=__version__)
    assert set(served["paths"]) == {"/openapi.json", "/v1/health", "/v1/push", "/v1/pull",
                                    "/v1/admin/edit", "/v1/admin/export"}


# One test per operation and mode, each with its own id: schemathesis's own parametrize gives its
# items one shared node id, which pytest-xdist cannot schedule.
OPERATIONS = [(result.ok(), mode) for result in schema.get_all_operations()
              for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]


@pytest.mark.parametrize("operation, mode", OPERATIONS,
                         ids=[f"{op.method.upper()} {op.path} {mode.value}" for op, mode in OPERATIONS])
def test_no_5xx_and_every_answer_fits_the_schema(operation, mode, api):
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def exchange(case):
        token = api.admin if case.path.startswith("/v1/admin/") else api.device
        # A case made schema-breaking by leaving the token out keeps it out: adding it back would
        # turn the case valid behind schemathesis's back.
        negative_auth = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
        headers = {} if negative_auth else {"Authorization": f"Bearer {token}"}
        _stamp_own_device(case)
        response = case.call(base_url=api.url, headers=headers)
        SENT[f"{case.method} {case.path} {response.status_code}"] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    try:
        exchange()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        pytest.skip("nothing in this operation's request can break its schema (no parameter, body or token)")


def test_the_run_reached_every_operation_and_the_store(api):
    """Run after the generated tests: they were not vacuous, and the server is still up."""
    if not SENT:
        pytest.skip("run together with test_no_5xx_and_every_answer_fits_the_schema")
    sent = Counter()
    for key, count in SENT.items():
        sent[key.rsplit(" ", 1)[0]] += count
    for operation in ("POST /v1/push", "GET /v1/pull", "POST /v1/admin/edit", "GET /v1/admin/export"):
        assert sent[operation] >= MAX_EXAMPLES // 2, f"{operation}: only {sent[operation]} requests"
    assert SENT["POST /v1/push 200"] > 0 and SENT["POST /v1/push 422"] > 0
    assert not any(key.endswith(tuple(f" 5{d:02d}" for d in range(100))) for key in SENT)
    assert httpx.get(api.url + "/v1/health").json()["ok"] is True


def _say(request, text: str) -> None:
    """Print past pytest's capture, so the figures show in a plain run's output."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(text, flush=True)
