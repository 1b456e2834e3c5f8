"""The next pull page is fetched while the device stores the current one (crm.sync._Prefetch):
every page is still stored in order and once, a wrong guess of the next request costs only a
request, and a failure on either side leaves the device where the pages it stored put it.

In process: the server app over a real SQLite store, reached through AppTransport."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

import crm.sync
from crm.device import Device
from crm.errors import ServerError, ServerUnreachableError
from crm.store import MetaKey
from crm.sync import SyncClient, pull_changes, push_outbox
from tests.support import AppServer, AppTransport, CtrlCOnce

ORG, URL, RECORDS, PAGE = "acme", "http://crm-server.test", 7, 2


class Recording(httpx.BaseTransport):
    """AppTransport, recording the cursor of every pull it carries."""

    def __init__(self, inner: AppTransport, *, cut_at_pull: int = 0) -> None:
        self.inner, self.cursors, self.cut_at_pull = inner, [], cut_at_pull
        self.asked = threading.Condition()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/pull":
            with self.asked:
                self.cursors.append(int(parse_qs(request.url.query.decode())["cursor"][0]))
                self.asked.notify_all()
            if len(self.cursors) == self.cut_at_pull:
                raise httpx.ConnectError("the network went", request=request)
        return self.inner.handle_request(request)


@pytest.fixture
def world(tmp_path: Path):
    server = AppServer(tmp_path / "server")
    store, app = server.store, server.transport
    source = Device.init(tmp_path / "src", rep="a", server_url=URL, token=store.add_token(ORG, "a"))
    for n in range(RECORDS):
        source.create("account", {"name": f"Shop {n}"})
    with SyncClient(base_url=URL, token=source.credentials()[1], transport=app) as client:
        push_outbox(source, client)
    fresh = Device.init(tmp_path / "fresh", rep="b", server_url=URL, token=store.add_token(ORG, "b"))
    yield store, app, fresh
    for dev in (source, fresh):
        dev.close()
    server.close()


def _pull(app: AppTransport, dev: Device, *, cut_at_pull: int = 0, recording: Recording | None = None) -> Recording:
    recording = recording or Recording(app, cut_at_pull=cut_at_pull)
    with SyncClient(base_url=URL, token=dev.credentials()[1], transport=recording) as client:
        pull_changes(dev, client, page=PAGE)
    return recording


def _accounts(dev: Device) -> int:
    return len(dev.export()["account"])


def test_each_page_is_asked_for_once_and_stored_in_order(world, monkeypatch):
    _, app, fresh = world
    recording, real, stored = Recording(app), fresh.apply_remote, []

    def store_once_the_next_page_is_asked_for(ops, **kwargs):
        stored.append(kwargs["cursor"])
        if len(stored) <= RECORDS // PAGE:  # not the last page: the next one is already on its way
            with recording.asked:
                assert recording.asked.wait_for(lambda: len(recording.cursors) > len(stored), timeout=60)
        return real(ops, **kwargs)

    monkeypatch.setattr(fresh, "apply_remote", store_once_the_next_page_is_asked_for)
    _pull(app, fresh, recording=recording)
    assert recording.cursors == sorted(set(recording.cursors)) and len(recording.cursors) == RECORDS // PAGE + 1
    assert _accounts(fresh) == RECORDS


def test_a_wrong_guess_of_the_next_request_costs_a_request_not_a_page(world, monkeypatch):
    _, app, fresh = world
    real = crm.sync._request_after
    monkeypatch.setattr(crm.sync, "_request_after", lambda request, answer: {**real(request, answer), "cursor": 0})
    recording = _pull(app, fresh)
    pages = RECORDS // PAGE + 1
    assert len(recording.cursors) == 2 * pages - 1  # every guess (cursor 0) fetched, then discarded
    assert [c for c in recording.cursors if c] == sorted({c for c in recording.cursors if c})
    assert _accounts(fresh) == RECORDS


def test_a_failure_storing_a_page_leaves_the_cursor_after_the_page_before(world, monkeypatch):
    _, app, fresh = world
    real, calls = fresh.apply_remote, []

    def fail_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk gone")
        return real(*args, **kwargs)

    monkeypatch.setattr(fresh, "apply_remote", fail_on_the_second)
    with pytest.raises(OSError):
        _pull(app, fresh)
    assert _accounts(fresh) == PAGE
    monkeypatch.setattr(fresh, "apply_remote", real)
    _pull(app, fresh)  # the next pull goes on from there
    assert _accounts(fresh) == RECORDS


def test_the_network_lost_during_a_prefetch_stops_after_the_page_stored(world):
    _, app, fresh = world
    with pytest.raises(ServerUnreachableError):
        _pull(app, fresh, cut_at_pull=2)  # the second page's request, made while the first is stored
    assert _accounts(fresh) == PAGE and int(fresh.setting(MetaKey.PULL_CURSOR)) > 0
    _pull(app, fresh)
    assert _accounts(fresh) == RECORDS


class Breaking(Recording):
    """Recording, answering the second pull with a page whose first op is not an op."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path != "/v1/pull" or len(self.cursors) != 2:
            return response
        page = json.loads(response.read())
        page["ops"][0] = {"op": "not an op"}
        return httpx.Response(200, json=page, request=request)


def test_an_unusable_page_fetched_ahead_is_refused_as_any_page(world):
    _, app, fresh = world
    with pytest.raises(ServerError, match="unusable pull page"):
        _pull(app, fresh, recording=Breaking(app))
    assert _accounts(fresh) == PAGE  # the page before it is stored, nothing of it


class BadWitness(Recording):
    """Recording, answering every pull with a witness whose position is not a number."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path != "/v1/pull" or response.status_code != 200:
            return response
        page = json.loads(response.read())
        page["witness"] = "x:" + str(page.get("witness"))
        return httpx.Response(200, json=page, request=request)


def test_a_witness_that_is_no_position_is_not_kept(world):
    _, app, fresh = world
    _pull(app, fresh, recording=BadWitness(app))  # not a crash: the claim is left out, as a missing one
    assert _accounts(fresh) == RECORDS and fresh.continuity()[0] is None


class HeldPrefetch(Recording):
    """Recording, holding the second pull (the prefetch) until ``release`` is set; ``finished``
    once that pull has its answer."""

    def __init__(self, inner: AppTransport) -> None:
        super().__init__(inner)
        self.release, self.finished = threading.Event(), threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        second = request.url.path == "/v1/pull" and len(self.cursors) == 1
        if second:
            assert self.release.wait(timeout=60)
        response = super().handle_request(request)
        if second:
            self.finished.set()
        return response


def test_a_pull_that_fails_while_a_page_is_fetched_ahead_waits_for_that_fetch(world, monkeypatch):
    """No request of a sync outlives it (nor its lock, nor the client it closes): a page asked
    for ahead and never taken is waited for before the failure goes on its way."""
    _, app, fresh = world
    recording = HeldPrefetch(app)

    def fail_once_the_next_page_is_on_its_way(*args, **kwargs):
        recording.release.set()
        raise OSError("disk gone")

    monkeypatch.setattr(fresh, "apply_remote", fail_once_the_next_page_is_on_its_way)
    with pytest.raises(OSError):
        _pull(app, fresh, recording=recording)
    assert recording.finished.is_set(), "the sync ended while a page it asked for was still on its way"


def test_a_ctrl_c_while_waiting_for_a_page_fetched_ahead_still_stops_the_pull():
    """Waiting for a page fetched ahead, a Ctrl-C waits for that fetch to end, then stops the
    pull (it is not swallowed, as it is where a failure is already on its way out)."""
    from crm.sync import _OnThread

    release = threading.Event()
    job = _OnThread(lambda: release.wait(timeout=60) and "page", "test")
    job.start()

    job.done = CtrlCOnce(job.done, release)
    with pytest.raises(KeyboardInterrupt):
        job.join()
    assert job.done.is_set() and job.result() == "page"
