"""The sync client's error paths, with the network replaced by respx.

The real server is exercised in test_sync_integration.py; here each failure the network can
produce is forced exactly, and the outbox is checked to be intact afterwards.
"""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from crm import AuthRefusedError, Device, ServerError, ServerUnreachableError
from crm.sync import SyncClient, sync_once

URL = "http://sync.test"


@pytest.fixture
def device(tmp_path):
    dev = Device.init(tmp_path / "home", rep="rep-1", settings={"server_url": URL, "token": "t0k"})
    account = dev.create("account", {"name": "Corner Store", "city": "Leeds"})
    dev.create("visit", {"account": account["id"], "outcome": "met the buyer"})
    yield dev
    dev.close()


def _client() -> SyncClient:
    return SyncClient(base_url=URL, token="t0k", timeout=2.0)


def _pending(dev: Device) -> int:
    return dev.outbox()["pending"]


@pytest.mark.parametrize("failure", [
    httpx.ConnectError("connection refused"),
    httpx.ReadTimeout("timed out"),
    httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
])
def test_unreachable_keeps_the_outbox(device, failure):
    with respx.mock(base_url=URL) as mock:
        mock.post("/v1/push").mock(side_effect=failure)
        with pytest.raises(ServerUnreachableError) as info, _client() as client:
            sync_once(device, client=client)
    assert "queued" in info.value.message
    assert _pending(device) == 2
    assert device.status()["last_sync_error"]


def test_token_refused(device):
    with respx.mock(base_url=URL) as mock:
        mock.post("/v1/push").respond(401, json={"error": "unauthorized", "message": "token refused"})
        with pytest.raises(AuthRefusedError) as info, _client() as client:
            sync_once(device, client=client)
    assert "token refused" in info.value.message
    assert info.value.exit_code == 21
    assert _pending(device) == 2


@pytest.mark.parametrize("response", [
    httpx.Response(500, text="Internal Server Error"),
    httpx.Response(503, json={"error": "busy", "message": "try later"}),
    httpx.Response(200, text="<html>captive portal</html>"),
    httpx.Response(200, json={"acked": []}),
])
def test_server_errors_keep_the_outbox(device, response):
    with respx.mock(base_url=URL) as mock:
        mock.post("/v1/push").mock(return_value=response)
        with pytest.raises(ServerError), _client() as client:
            sync_once(device, client=client)
    assert _pending(device) == 2


def test_response_lost_after_commit_is_resent_with_the_same_op_ids(device):
    """The server committed but the answer never arrived: the retry carries the same ops."""
    sent: list[list[str]] = []

    def server(request: httpx.Request) -> httpx.Response:
        ops = [op["op"] for op in json.loads(request.content)["ops"]]
        sent.append(ops)
        if len(sent) == 1:
            raise httpx.ReadError("connection reset by peer")  # committed, answer lost
        return httpx.Response(200, json={"acked": ops, "rejected": []})

    with respx.mock(base_url=URL) as mock:
        mock.post("/v1/push").mock(side_effect=server)
        mock.get("/v1/pull").respond(200, json={"ops": [], "cursor": 2, "more": False})
        with _client() as client:
            with pytest.raises(ServerUnreachableError):
                sync_once(device, client=client)
            assert _pending(device) == 2
            result = sync_once(device, client=client)
    assert sent[0] == sent[1], "a retry must resend exactly the same op ids"
    assert result.pushed == 2
    assert _pending(device) == 0


def test_the_outbox_counts_each_attempt_to_send_an_op(device):
    """`crm outbox` shows how often each queued op was sent: an attempt whose answer never came,
    or that the server refused, counts; an acknowledged op leaves the outbox."""
    answers = iter([httpx.ConnectError("connection refused"), httpx.ReadTimeout("timed out"),
                    httpx.Response(503, json={"error": "busy", "message": "try later"})])

    def server(request: httpx.Request) -> httpx.Response:
        answer = next(answers, None)
        if isinstance(answer, Exception):
            raise answer
        if answer is not None:
            return answer
        ops = [op["op"] for op in json.loads(request.content)["ops"]]
        return httpx.Response(200, json={"acked": ops[:1], "rejected": [{"op": ops[1], "reason": "nope"}]})

    assert [e["attempts"] for e in device.outbox()["entries"]] == [0, 0]
    with respx.mock(base_url=URL) as mock:
        mock.post("/v1/push").mock(side_effect=server)
        mock.get("/v1/pull").respond(200, json={"ops": [], "cursor": 0, "more": False})
        with _client() as client:
            for attempt in (1, 2, 3):
                with pytest.raises((ServerUnreachableError, ServerError)):
                    sync_once(device, client=client)
                assert [e["attempts"] for e in device.outbox()["entries"]] == [attempt, attempt]
            sync_once(device, client=client)
    assert _pending(device) == 0
    assert [e["attempts"] for e in device.outbox(rejected=True)["entries"]] == [4]


def test_only_acknowledged_ops_leave_the_outbox_and_rejected_ones_are_kept(device):
    def server(request: httpx.Request) -> httpx.Response:
        ops = [op["op"] for op in json.loads(request.content)["ops"]]
        return httpx.Response(200, json={"acked": ops[:1], "rejected": [{"op": ops[1], "reason": "nope"}]})

    with respx.mock(base_url=URL) as mock:
        mock.post("/v1/push").mock(side_effect=server)
        mock.get("/v1/pull").respond(200, json={"ops": [], "cursor": 0, "more": False})
        with _client() as client:
            result = sync_once(device, client=client)
    assert (result.pushed, result.rejected) == (1, 1)
    assert _pending(device) == 0
    rejected = device.outbox(rejected=True)
    assert rejected["rejected"] == 1 and rejected["entries"][0]["reason"] == "nope"


@pytest.mark.parametrize("good", [0, 1500], ids=["small page", "typed page"])
def test_a_malformed_pull_page_changes_nothing(device, good):
    """Whichever decoder reads the page (a big one goes through crm.wire's typed structs), one
    broken op refuses it whole, with op_from_wire's reason."""
    from crm.sync import TYPED_PAGE_OPS, pull_changes

    assert (good + 1 >= TYPED_PAGE_OPS) == bool(good)
    ops = [{"op": f"op-{i}", "dev": "dev-9", "hlc": f"{1_764_000_000_000 + i:013d}.00000@dev-9",
            "kind": "create", "entity": "account", "id": f"acc-{i}", "fields": {"name": f"A{i}"}}
           for i in range(good)]
    with respx.mock(base_url=URL) as mock:
        mock.get("/v1/pull").respond(200, json={"ops": [*ops, {"op": "x"}], "cursor": 5, "more": False})
        with _client() as client, pytest.raises(ServerError, match="op.dev must be"):
            pull_changes(device, client)
    assert device.setting("pull_cursor") is None
    with respx.mock(base_url=URL) as mock:  # and the same page whole is taken
        mock.get("/v1/pull").respond(200, json={"ops": ops, "cursor": 5, "more": False})
        with _client() as client:
            assert pull_changes(device, client) == (good, good)
    assert device.setting("pull_cursor") == "5"


def test_cursor_going_backwards_is_a_protocol_error(device):
    device.set_settings({"pull_cursor": "10"})
    with respx.mock(base_url=URL) as mock:
        mock.get("/v1/pull").respond(200, json={"ops": [], "cursor": 3, "more": False})
        with _client() as client, pytest.raises(ServerError, match="backwards"):
            from crm.sync import pull_changes

            pull_changes(device, client)
    assert device.setting("pull_cursor") == "10"


def test_an_https_server_is_verified_and_plain_http_loads_no_certificates():
    import ssl

    def context(url: str):
        with SyncClient(base_url=url, token="t") as client:
            return client._http._transport._pool._ssl_context  # httpx -> httpcore's pool

    secure = context("HTTPS://crm.example.com")
    assert secure.verify_mode == ssl.CERT_REQUIRED and secure.check_hostname
    assert secure.cert_store_stats()["x509_ca"] > 0  # a CA bundle to verify against
    assert context("http://127.0.0.1:8765").cert_store_stats()["x509_ca"] == 0
