"""A device's clock can never lock it out (docs/sync-protocol.md, "Clocks"; docs/merge-rules.md,
"When a clock was wrong").

Each test runs in-process (the fast tier) and against real processes (the full run). The device's
wall clock is moved with CRM_CLOCK_SKEW_MS; the server's clock is the machine's.
"""

from __future__ import annotations

import json
import time

import pytest

from crm.hlc import format_stamp
from crm.ids import uuid7
from crm.ops import Op, op_to_wire

ORG = "acme"
HOUR = 3600 * 1000
DAY = 24 * HOUR
YEAR = 365 * DAY
# How far past the real time a stamp in the log may be once everything synced. The device's own
# lead is a second; the rest is slack for a loaded machine, far below the skews tried here.
SLACK_MS = 60_000


def _real_ms() -> int:
    return time.time_ns() // 1_000_000


def _skew(ms: int) -> dict[str, str]:
    return {"CRM_CLOCK_SKEW_MS": str(ms)}


def _account(server, home, name, env=None) -> str:
    return server.ok("account", "add", "--name", name, "--city", "Leeds", "--json", home=home, env=env)["id"]


def _log(server, token) -> list[dict]:
    """The organisation's whole op log, as any device pulls it."""
    answer = server.get("/v1/pull?cursor=0&limit=5000", headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return answer.json()["ops"]


def _sync_clean(server, home, env=None) -> dict:
    result = server.ok("sync", "--json", home=home, env=env)
    assert result["rejected"] == 0, result
    return result


def _converged(server, *homes) -> dict:
    exported = server.export(ORG)
    assert all(server.export_home(home) == exported for home in homes), "byte-identical exports"
    return json.loads(exported)


def _forged(dev: str, wall_ms: int, name: str) -> dict:
    return op_to_wire(Op(op_id=uuid7(), device=dev, hlc=format_stamp(wall_ms, 0, dev), entity="account",
                         record_id=uuid7(), fields={"name": name}, kind="create"))


@pytest.mark.parametrize("ahead_ms", [HOUR, 10 * YEAR], ids=["an hour ahead", "ten years ahead"])
def test_the_server_refuses_a_forged_far_future_stamp_from_a_raw_push(server, ahead_ms):
    token = server.add_rep(ORG, "mallory")
    now = _real_ms()
    good, forged = _forged("dev-m", now, "Honest"), _forged("dev-m", now + ahead_ms, "From the future")
    answer = server.post("/v1/push", json={"protocol": 1, "device": "dev-m", "ops": [good, forged]},
                         headers={"authorization": f"Bearer {token}"})
    server_time = int(answer.headers["crm-server-time"])
    assert abs(server_time - now) < SLACK_MS, "every answer carries the server's clock"
    body = answer.json()
    if ahead_ms < YEAR:  # a clock that is wrong: the op alone is refused, the rest applies
        assert answer.status_code == 200, answer.text
        assert body["acked"] == [good["op"]]
        (refused,) = body["rejected"]
        assert (refused["op"], refused["code"]) == (forged["op"], "clock_ahead")
        assert "ahead" in refused["reason"]
    else:  # no clock is ten years off: the batch breaks the protocol, nothing applies
        assert answer.status_code == 422, answer.text
        assert (body["op"], body["code"]) == (forged["op"], "clock_ahead")
    names = [a["name"] for a in json.loads(server.export(ORG))["account"]]
    assert "From the future" not in names
    assert all(int(op["hlc"][:13]) <= server_time for op in _log(server, token))
