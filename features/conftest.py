"""Step definitions for every feature, each defined once, over harness.session.Session.

The options come from the crm pytest plugin (harness/pytest_plugin.py, loaded in every pytest run
where crm-offline is installed): the SUT from ``--crm-sut PROFILE`` (a file, or a shipped profile's
name; default: the reference CRM), the fault schedule from ``--crm-seed``. With ``--crm-results DIR``
each scenario's verdict and history are written there for `crm certify` to turn into a certificate.
This conftest is loaded only when the features are collected, so everything heavy stays here.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from pytest_bdd import given, parsers, then, when

from harness import faults
from harness.bdd_results import (
    SCENARIO,
    SESSION,
    pytest_bdd_after_step,
    pytest_bdd_before_scenario,
    pytest_bdd_before_step,
    pytest_bdd_step_error,
    pytest_runtest_makereport,
    refuse_on_hosted,
)
from harness.profile import load_profile
from harness.session import ScenarioFailure, Session
from harness.toxiproxy import ToxiproxyServer, latency

__all__ = ["pytest_bdd_before_scenario", "pytest_bdd_before_step", "pytest_bdd_after_step",  # the results
           "pytest_bdd_step_error", "pytest_runtest_makereport"]  # plugin's hooks  # the results plugin's hooks


def step(parser):
    """Register a step for Given, When and Then alike: scenarios read naturally either way."""

    def register(fn):
        for kind in (given, when, then):
            fn = kind(parser, stacklevel=2)(fn)
        return fn

    return register
WHAT = {"account": "create_account", "visit": "log_visit", "order": "take_order", "note": "write_note"}


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def profile(request):
    return load_profile(request.config.getoption("crm_sut"))  # absolute: the plugin resolved it


@pytest.fixture(scope="session")
def toxiproxy(tmp_path_factory):
    with ToxiproxyServer(log_dir=tmp_path_factory.mktemp("toxiproxy")) as server:
        yield server.client


@pytest.fixture
def scenario_name(request):
    return request.node.stash.get(SCENARIO, request.node.name)


# -- the world ---------------------------------------------------------------------------------
@given(parsers.parse('a sync server for the organisation "{org}"'), target_fixture="world")
def world(request, profile, toxiproxy, tmp_path, scenario_name, org):
    refuse_on_hosted(request.node, profile)  # a hosted server cannot be crashed or restored: not exercised
    attempt = request.config.getoption("crm_attempt")
    session = Session(profile=profile, toxiproxy=toxiproxy, workdir=tmp_path, org=org,
                      seed=request.config.getoption("crm_seed"),
                      scenario=scenario_name if attempt == 1 else f"{scenario_name} (attempt {attempt})")
    request.node.stash[SESSION] = session
    request.addfinalizer(session.close)
    session.__enter__()
    return session


@step(parsers.re(r'an? (?P<device>phone|tablet|laptop) for the rep "(?P<rep>[^"]+)"'))
def a_device(world: Session, device, rep):
    world.add_device(device, rep)


@step(parsers.parse('background sync is switched on for "{device}"'))
def background_sync_on(world: Session, device):
    result = world.act(device, "start_background_sync")
    if not result.ok:
        raise ScenarioFailure(f"start_background_sync failed on {device}: {result.detail}")


@step(parsers.parse('"{device}" is in airplane mode'))
def airplane_mode(world: Session, device):
    world.airplane_mode(device)


@step(parsers.parse('"{device}" is back online'))
def back_online(world: Session, device):
    world.back_online(device)


# -- the rep's work ----------------------------------------------------------------------------
@step(parsers.parse('the rep creates a new account on "{device}"'))
def create_account(world: Session, device):
    world.create_account(device)


@step(parsers.parse('the rep has an account on "{device}" that reached the office'))
def account_reached_office(world: Session, device):
    result = world.create_account(device)
    if not result.ok:
        raise ScenarioFailure(f"creating the account on {device} failed: {result.detail}")
    if world.profile.has("sync"):
        world.sync(device)
    world.wait_until_on_server(30, device)


@step(parsers.parse('the rep logs a visit to the account on "{device}"'))
def log_visit(world: Session, device):
    world.log_visit(device)


@step(parsers.parse('the rep takes an order for the account on "{device}"'))
def take_order(world: Session, device):
    world.take_order(device)


@step(parsers.parse('the rep writes a note on the account on "{device}"'))
def write_note(world: Session, device):
    world.write_note(device)


@step(parsers.parse('''the rep has done a visit's work on "{device}": an account, a visit, an order and a note'''))
def visit_work(world: Session, device):
    for step in (world.create_account, world.log_visit, world.take_order, world.write_note):
        result = step(device)
        if not result.ok:
            raise ScenarioFailure(f"{result.action} on {device} was not saved: {result.detail}")


@step(parsers.parse('the rep has saved {count:d} accounts on "{device}"'))
def saved_accounts(world: Session, device, count):
    for _ in range(count):
        result = world.create_account(device)
        if not result.ok:
            raise ScenarioFailure(f"create_account on {device} was not saved: {result.detail}")


@step(parsers.re(r'"(?P<device>[^"]+)" says the (?P<what>account|visit|order|note) was saved'))
def says_saved(world: Session, device, what):
    last = world.last
    assert last is not None and last.action == WHAT[what], f"no {what} was attempted on {device}"
    if not last.ok:
        raise ScenarioFailure(f"the {what} was not saved on {device} (outcome {last.outcome}): {last.detail}")
    if not (isinstance(last.json, dict) and last.json.get("id")):
        raise ScenarioFailure(f"the {what} was saved but {device} printed no id: {last.stdout[:200]!r}")


@step(parsers.re(r'"(?P<device>[^"]+)" shows (?P<count>\d+) changes? waiting to sync'))
def waiting_to_sync(world: Session, device, count):
    pending = world.device(device).driver.pending()
    if pending != int(count):
        raise ScenarioFailure(f"{device} shows {pending} change(s) waiting to sync, expected {count}")


# -- force-quit --------------------------------------------------------------------------------
@step(parsers.parse('the app on "{device}" is force-quit'))
def force_quit(world: Session, device):
    world.force_quit(device)


@step(parsers.parse('the app on "{device}" is reopened'))
def reopened(world: Session, device):
    result = world.reopen(device)
    if not result.ok:
        raise ScenarioFailure(f"reopening {device} failed: {result.detail}")


# -- syncing -----------------------------------------------------------------------------------
@step(parsers.parse('"{device}" syncs'))
def syncs(world: Session, device):
    world.sync(device)


@step("everyone syncs")
def everyone_syncs(world: Session):
    for _ in range(2):
        for device in world.devices:
            world.sync(device)


@step(parsers.re(r'(?P<no_cmd>without any sync command )?everything the rep saved reaches the office '
                 r'within (?P<seconds>\d+) seconds'))
def reaches_office(world: Session, no_cmd, seconds):
    took = world.wait_until_on_server(float(seconds))
    world.history.append("harness", "heal", None, detail=f"everything reached the server after {took:.1f} s")


@step(parsers.parse('every write on "{device}" finished within {seconds:d} seconds'))
def writes_fast(world: Session, device, seconds):
    world.writes_within(device, seconds)


# -- network faults ----------------------------------------------------------------------------
@step(parsers.parse('the connection of "{device}" crawls with {ms:d} ms of latency'))
def crawls(world: Session, device, ms):
    world.add_toxic(device, latency(ms, stream="downstream", name="latency-down"))
    world.add_toxic(device, latency(ms // 4, stream="upstream", name="latency-up"))


@step(parsers.parse('the connection of "{device}" is fast again'))
def fast_again(world: Session, device):
    world.remove_toxics(device, "latency")


@step(parsers.parse('the connection of "{device}" is released'))
def released(world: Session, device):
    world.remove_toxics(device, "stall")


@step(parsers.parse('"{device}" starts syncing and is killed at a seeded moment, {times:d} times'))
def sync_killed(world: Session, device, times):
    faults.kill_syncs(world, device, times)


@step("the server is killed")
def server_killed(world: Session):
    world.server.kill()


@step("the server is restarted")
def server_restarted(world: Session):
    world.server.start()


@step(parsers.parse("{seconds:d} seconds pass"))
def seconds_pass(world: Session, seconds):
    time.sleep(seconds)


# -- the coverage matrix (features/fault_matrix.feature, docs/coverage.md) ------------------------
@step(parsers.re(r'"(?P<device>[^"]+)" uses (?P<mode>manual|background) sync'))
def uses_mode(world: Session, device, mode):
    world.use_sync_mode(device, mode)


@step(parsers.parse('the rep has records on "{device}" that reached the office: an account with an order, '
                    'and an account to delete'))
def synced_targets(world: Session, device):
    world.synced_targets(device)


@step(parsers.re(r'the rep makes one of every kind of write on "(?P<device>[^"]+)"'
                 r'(?P<killed>, each killed at a seeded moment|, each force-quit at each of its flushes to disk)?'))
def every_kind_of_write(world: Session, device, killed):
    if killed and "flushes" in killed:  # features/flush_kills.feature
        world.every_kind_of_write_at_each_flush(device)
    else:
        world.every_kind_of_write(device, kill=bool(killed))


@step(parsers.re(r'a new (?P<kind>phone|tablet|laptop) of the rep "(?P<rep>[^"]+)" syncs for the first time, '
                 r'force-quit at each of its flushes to disk, then syncs twice'))
def first_sync_at_each_flush(world: Session, kind, rep):
    world.first_sync_at_each_flush(kind, rep)


@step(parsers.parse('"{device}" catches up within {seconds:d} seconds'))
def catches_up(world: Session, device, seconds):
    world.catch_up(device, float(seconds))


@step(parsers.parse('the answers to "{device}" are held back'))
def answers_held(world: Session, device):
    faults.hold_answers(world, device)


@step(parsers.parse('the answer that commits the work of "{device}" is cut off by "{cut}"'))
def answer_cut(world: Session, device, cut):
    faults.cut_committing_answer(world, device, cut)


@step(parsers.parse('the answers to "{device}" flow again'))
def answers_flow(world: Session, device):
    faults.answers_flow(world, device)


@step(parsers.re(r'the network of "(?P<device>[^"]+)" drops at a seeded moment of a (?P<what>push|pull)'))
def network_drops(world: Session, device, what):
    faults.drop_at_seeded_moment(world, device, what)


@step(parsers.parse('the server is killed at a seeded moment while "{device}" syncs'))
def server_killed_mid_sync(world: Session, device):
    faults.kill_server_at_seeded_moment(world, device)


@step(parsers.parse('the background sync of "{device}" is force-quit at a seeded moment'))
def background_sync_killed(world: Session, device):
    faults.kill_background_sync(world, device)


@step(parsers.parse('the connection of "{device}" stalls'))
def stalls(world: Session, device):
    faults.stall(world, device)


@step(parsers.parse('"{device}" tries to sync through the stalled connection'))
def sync_through_stall(world: Session, device):
    faults.sync_through_stall(world, device)


# -- concurrent edits --------------------------------------------------------------------------
@step(parsers.parse('an account on "{device}" that "{other}" has too'))
def shared_account(world: Session, device, other):
    account_reached_office(world, device)
    if world.profile.has("sync"):
        world.sync(other)
    state = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = world.device(other).driver.export()
        if any(a.get("id") == world.account_id for a in state.get("account", [])):
            return
        time.sleep(0.5)
    raise ScenarioFailure(f"{other} never received account {world.account_id}")


@step(parsers.parse('the rep edits the account\'s "{field}" to "{value}" on "{device}"'))
def edit_on_device(world: Session, field, value, device):
    result = world.edit_account(device, field, value)
    if not result.ok:
        raise ScenarioFailure(f"editing {field} on {device} was not saved: {result.detail}")


@step(parsers.parse('the rep deletes the account on "{device}"'))
def delete_on_device(world: Session, device):
    result = world.delete_account(device)
    if not result.ok:
        raise ScenarioFailure(f"deleting the account on {device} was not saved: {result.detail}")


@step(parsers.parse('the rep "{rep}" is given the territory "{territory}"'))
def assign_territory(world: Session, rep, territory):
    result = world.assign(rep, territory)
    if not result.ok:
        raise ScenarioFailure(f"assigning {territory} to {rep} failed: {result.detail}")


@step(parsers.parse('the back office edits the account\'s "{field}" to "{value}"'))
def backoffice_edit(world: Session, field, value):
    result = world.backoffice_edit(field, value)
    if not result.ok:
        raise ScenarioFailure(f"the back-office edit of {field} failed: {result.detail}")


@step(parsers.parse('the clock of "{device}" is {hours:d} hours behind'))
def clock_behind(world: Session, device, hours):
    world.skew_clock(device, -hours)


@step(parsers.parse('the clock of "{device}" is {hours:d} hours ahead'))
def clock_ahead(world: Session, device, hours):
    world.skew_clock(device, hours)


@step(parsers.parse('the clock of "{device}" is right again'))
def clock_right(world: Session, device):
    world.skew_clock(device, 0)


# -- life events -------------------------------------------------------------------------------
@step(parsers.parse('a backup of "{device}" is taken'))
def backup_device(world: Session, device):
    world.snapshots[device] = world.backup_device(device)


@step(parsers.parse('"{device}" is restored from its backup'))
def restore_device(world: Session, device):
    world.restore_device(device, world.snapshots[device])


@step(parsers.parse('the home of "{device}" is copied onto a second phone "{clone}"'))
def clone_device(world: Session, device, clone):
    world.clone_device(device, clone)


@step("a backup of the server is taken")
def backup_server(world: Session):
    world.snapshots["server"] = world.backup_server()


@step("the server is restored from its backup")
def restore_server(world: Session):
    world.restore_server(world.snapshots["server"])


_PAIR = re.compile(r'"([^"]+)" "([^"]*)"')


@step(parsers.re(r'the account shows (?P<pairs>.+) everywhere'))
def account_shows(world: Session, pairs):
    expected = dict(_PAIR.findall(pairs))
    states = {name: d.driver.export() for name, d in world.devices.items()}
    states["server"] = world.server_state()
    for where, state in states.items():
        account = next((a for a in state.get("account", []) if a.get("id") == world.account_id), None)
        if account is None:
            raise ScenarioFailure(f"{where} has no account {world.account_id}")
        wrong = {k: account.get(k) for k, v in expected.items() if account.get(k) != v}
        if wrong:
            raise ScenarioFailure(f"on {where} the account has {wrong}, expected {expected}")


# -- the verdict -------------------------------------------------------------------------------
@step("the run passes every check")
def passes_every_check(world: Session):
    anomalies = world.final_check()
    if anomalies:
        lines = [f"{a.check}: {a.message} evidence={json.dumps(a.evidence, default=str)[:600]}" for a in anomalies]
        raise ScenarioFailure(f"{len(anomalies)} anomal{'y' if len(anomalies) == 1 else 'ies'}:\n" + "\n".join(lines))
