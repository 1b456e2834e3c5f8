"""A territory move's snapshot is paged under the pull byte cap (issue 15 item 2,
docs/sync-protocol.md "Territories"): an account that moves into a rep's territories reaches
their devices over as many pull pages as its family needs, each within ``--max-pull-bytes``,
and a device interrupted in the middle resumes where it stopped and converges.

In process: the server app over a real SQLite store (PostgreSQL: tests/test_server_postgres.py),
with a small byte cap, and Device objects syncing through it.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import orjson
import pytest

from crm.errors import ServerError, ServerUnreachableError
from crm.server.app import create_app
from crm.server.limits import Limits
from crm.sync import SyncClient, pull_changes
from tests.support import AppTransport
from tests.test_territories import ORG, URL, Rig, held, ids

CAP = 8 * 1024  # the server's --max-pull-bytes in these tests
VISITS = 120  # about 1 KB each on the wire: the family is many times the cap
# Text that JSON escapes when a record's data travels inside a snapshot row (quotes, backslashes,
# a newline) and text that is several bytes a character: the page's size is counted exactly.
NOTES = 'Met "the buyer" at C:\\depot\nnext: price list, été, 価格 ' * 5


class Recording(AppTransport):
    """The app's transport, keeping every pull answer the devices receive (and failing on demand)."""

    def __init__(self) -> None:
        super().__init__()
        self.pulls: list[tuple[str, httpx.Response]] = []
        self.fail_after: int | None = None  # refuse to connect once this many more pulls were answered

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/pull" and self.fail_after is not None:
            if self.fail_after == 0:
                raise httpx.ConnectError("the network went away", request=request)
            self.fail_after -= 1
        response = super().handle_request(request)
        if request.url.path == "/v1/pull":
            self.pulls.append((str(request.url), response))
        return response


class PagedRig(Rig):
    """Rig (tests/test_territories.py) whose server caps a pull page at ``cap`` bytes."""

    def __init__(self, tmp: Path, target: str | None = None, *, cap: int = CAP) -> None:
        super().__init__(tmp, target)
        self.transport.shutdown()
        self.transport = Recording()
        self.transport.serve(create_app(self.store, limits=Limits(max_pull_bytes=cap)))


@pytest.fixture
def rig(tmp_path):
    r = PagedRig(tmp_path)
    yield r
    r.close()


def payload(answer: httpx.Response) -> int:
    """The bytes of a pull answer the cap bounds: its ops and its moves (not the few fields
    around them: cursor, more, witness, latest, scope, part)."""
    body = answer.json()
    ops = sum(len(orjson.dumps(op)) + 1 for op in body["ops"])
    return ops + len(orjson.dumps(body.get("moves", [])))


def big_account(rig: Rig, dev, *, visits: int = VISITS) -> str:
    """An account of ``dev``'s territory with every kind of child, ``visits`` visits among them."""
    acc = dev.create("account", {"name": "Big \"Corp\" Ltd", "city": "Zürich"})["id"]
    dev.create("contact", {"account": acc, "name": "Ann \\ Buyer", "email": "ann@example.com"})
    for i in range(visits):
        dev.create("visit", {"account": acc, "outcome": f"visit {i}", "notes": NOTES})
    dev.add_order({"account": acc}, [{"sku": "SKU-1", "quantity": 2, "unit_price": "1.00"}])
    dev.add_note("a note with \"quotes\"", account=acc)
    rig.sync(dev)
    return acc


def north_south(rig: Rig):
    n, s = rig.device("n"), rig.device("s")
    rig.store.assign(ORG, "n", "north")
    rig.store.assign(ORG, "s", "south")
    rig.sync(n, s)
    return n, s


def test_a_big_move_reaches_the_gainer_over_pages_each_within_the_cap(rig):
    n, s = north_south(rig)
    acc = big_account(rig, n)
    rig.sync(s)  # s's cursor is past the account's history: the move reaches it as a snapshot only
    rig.move(acc, "south")
    rig.transport.pulls.clear()
    rig.sync(s)
    answers = [answer for _, answer in rig.transport.pulls]
    assert all(answer.status_code == 200 for answer in answers)
    sizes = [payload(answer) for answer in answers]
    whole = sum(sizes)
    assert whole > 6 * CAP, f"the family is many times the cap: {sizes}"
    assert max(len(answer.content) for answer in answers) <= CAP, sizes  # the whole answer
    assert len(answers) >= whole // CAP, sizes
    assert ids(s, "account") == {acc} and len(ids(s, "visit")) == VISITS
    rig.sync(n)
    assert held(s) == rig.export(rep="s") and held(n) == rig.export(rep="n")
    assert n.export()["visit"] == []
    # later work on the account reaches the gainer as ops, as after any move
    n2 = rig.device("n2", rep="s")
    rig.sync(n2)
    assert held(n2) == rig.export(rep="s")


def test_a_device_interrupted_in_the_middle_of_a_snapshot_resumes_and_converges(rig):
    n, s = north_south(rig)
    acc = big_account(rig, n)
    rig.move(acc, "south")
    rig.transport.pulls.clear()
    rig.transport.fail_after = 3  # three pages arrive, then the network goes
    with pytest.raises(ServerUnreachableError):
        rig.sync(s)
    got = ids(s, "visit")
    assert ids(s, "account") == {acc} and 0 < len(got) < VISITS, "part of the snapshot is stored"
    # the phone restarts (the store reopened) and syncs again: it asks for the rest, not all again
    s.close()
    from crm.device import Device
    s2 = Device.open(s.home)
    rig.devices.append(s2)
    rig.transport.fail_after = None
    first = len(rig.transport.pulls)
    rig.sync(s2)
    resumed = rig.transport.pulls[first][1].json()
    assert not any(r[1] in got for move in resumed["moves"] for r in move.get("records", [])), \
        "the resumed page starts after what the device already stored"
    assert held(s2) == rig.export(rep="s")
    assert max(len(answer.content) for _, answer in rig.transport.pulls) <= CAP


def test_a_device_that_loses_the_account_mid_snapshot_drops_it_but_keeps_its_unsynced_work(rig):
    n, s = north_south(rig)
    acc = big_account(rig, n)
    rig.move(acc, "south")
    rig.transport.fail_after = 2
    with pytest.raises(ServerUnreachableError):
        rig.sync(s)
    rig.transport.fail_after = None
    partial = sorted(ids(s, "visit"))
    assert partial and len(partial) < VISITS
    mine = s.create("visit", {"account": acc, "outcome": "made offline"})["id"]
    s.edit("visit", partial[0], {"outcome": "edited offline"})
    rig.move(acc, "east")  # it leaves the rep before the snapshot is complete
    # a pull alone (as after a push that failed): the records holding unsynced work stay
    with SyncClient(base_url=URL, token=s.credentials()[1], transport=rig.transport) as client:
        pull_changes(s, client)
    assert ids(s, "account") == set() and ids(s, "visit") == {mine, partial[0]}
    rig.sync(s)  # pushed, accepted, then removed
    assert ids(s, "visit") == set() and s.outbox()["pending"] == 0
    everything = rig.store.export(ORG)
    outcomes = {v["id"]: v["outcome"] for v in everything["visit"]}
    assert outcomes[mine] == "made offline" and outcomes[partial[0]] == "edited offline"
    rig.sync(n)
    assert held(s) == rig.export(rep="s") and held(n) == rig.export(rep="n")


def test_moves_and_ops_share_a_page_and_small_moves_stay_whole(rig):
    """Ops, drops and small snapshots around a big one: every page within the cap, all converge."""
    n, s = north_south(rig)
    m = rig.device("m")  # no territory: the whole organisation, no moves
    small = n.create("account", {"name": "Small"})["id"]
    n.create("visit", {"account": small, "outcome": "one"})
    acc = big_account(rig, n)
    south = s.create("account", {"name": "South"})["id"]
    rig.sync(s)
    rig.move(small, "south")
    for i in range(20):
        s.edit("account", south, {"city": f"c{i}"})
        rig.sync(s)
    rig.move(acc, "south")
    rig.move(south, "north")
    rig.transport.pulls.clear()
    rig.sync(n, s, m)
    assert max(len(answer.content) for _, answer in rig.transport.pulls) <= CAP
    assert ids(s, "account") == {small, acc} and ids(n, "account") == {south}
    for dev, rep in ((n, "n"), (s, "s"), (m, "m")):
        assert held(dev) == rig.export(rep=rep)


def _raw_pull(rig: Rig, token: str, **params) -> httpx.Response:
    with httpx.Client(base_url=URL, transport=rig.transport) as http:
        return http.get("/v1/pull", params={"cursor": 0, "limit": 5000, **params},
                        headers={"authorization": f"Bearer {token}"})


def test_a_client_that_does_not_page_snapshots_is_refused_a_snapshot_past_the_cap(rig):
    """A protocol-2 client that sends no ``part`` cannot resume inside a move: it gets a snapshot
    whole when it fits in a page, and 400 protocol (upgrade) when it does not."""
    n, s = north_south(rig)
    small = n.create("account", {"name": "Small"})["id"]
    acc = big_account(rig, n)
    token = rig.store.add_token(ORG, "s")
    epoch = rig.store.scope(ORG, "s").epoch
    start = _raw_pull(rig, token, scope=epoch).json()
    assert start["ops"] == [] and start["more"] is False  # nothing of north
    rig.move(small, "south")
    rig.move(acc, "south")
    page = _raw_pull(rig, token, scope=epoch, cursor=start["cursor"])
    body = page.json()
    assert page.status_code == 200 and [m["account"] for m in body["moves"]] == [small] and body["more"]
    assert "part" not in body
    refused = _raw_pull(rig, token, scope=epoch, cursor=body["cursor"])
    assert refused.status_code == 400 and refused.json()["error"] == "protocol", refused.text
    assert "upgrade" in refused.json()["message"]
    paged = _raw_pull(rig, token, scope=epoch, cursor=body["cursor"], part="")
    body = paged.json()
    assert paged.status_code == 200 and body["more"] is True and body["part"].startswith("visit:")
    assert [m["account"] for m in body["moves"]] == [acc] and len(paged.content) <= CAP


@pytest.mark.parametrize("part, words", [
    ("visit", "part"), ("visit:", "part"), ("product:abc", "part"), ("visit:a b", "part"),
    ("visit:" + "a" * 65, "part"), ("account:abc", "not a move"),
])
def test_a_bad_part_is_refused(rig, part, words):
    n, s = north_south(rig)
    acc = n.create("account", {"name": "Shop"})["id"]
    rig.sync(n)
    rig.move(acc, "south")
    token = rig.store.add_token(ORG, "s")
    epoch = rig.store.scope(ORG, "s").epoch
    answer = _raw_pull(rig, token, scope=epoch, cursor=1, part=part)
    assert answer.status_code == 400 and words in answer.json()["message"], answer.text
    assert _raw_pull(rig, token, part="").status_code == 400  # part needs scope (protocol 2)


def test_a_server_that_makes_no_progress_stops_the_sync(rig, monkeypatch):
    n, s = north_south(rig)
    acc = big_account(rig, n, visits=40)
    rig.move(acc, "south")
    real = rig.store.pull

    def stuck(*args, **kwargs):
        ops, cursor, more, seen = real(*args, **kwargs)
        return ops, kwargs["cursor"], True, {**seen, "part": kwargs.get("part") or ""}

    monkeypatch.setattr(rig.store, "pull", stuck)
    with pytest.raises(ServerError, match="progress"):
        rig.sync(s)


def test_page_sizes_are_counted_exactly(rig):
    """The server reads sizes before bodies; the size it counts for a snapshot row is the row's
    length on the wire, escapes included, so a page full to the byte is not over it."""
    n, s = north_south(rig)
    acc = big_account(rig, n, visits=30)
    rig.move(acc, "south")
    token = rig.store.add_token(ORG, "s")
    epoch = rig.store.scope(ORG, "s").epoch
    cursor, part, full = 0, "", []
    while True:
        answer = _raw_pull(rig, token, scope=epoch, cursor=cursor, part=part)
        body = answer.json()
        full.append(len(answer.content))
        cursor, part = body["cursor"], body["part"]
        if not body["more"]:
            break
    assert max(full) <= CAP and min(full[:-1]) > CAP - 1500, full  # cut when the next row would not fit
    assert json.loads(json.dumps(body))  # the last answer is whole JSON
