"""One conformance run of one scenario: the SUT's server behind Toxiproxy, its devices, the
faults, and the history every step is recorded in.

Steps in features/ stay one-liners over this class: the harness library does the work. Faults
are recorded as history events (``offline`` for airplane mode, ``kill`` for a force-quit,
``server_kill``, and the toxic's type for a degraded connection) so the checkers can reason
about what each device could and could not have done.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faker import Faker

from . import checkers, flushes, processes
from .checkers import Anomaly
from .driver import ActionResult, Driver, DriverError, parse_json, server_for
from .history import CREATES, History
from .profile import MissingAction, Profile
from .schedule import SKUS
from .toxiproxy import Toxic, Toxiproxy, ToxiproxyError

# Every contract write, in the order a matrix scenario makes them (docs/coverage.md).
WRITE_ACTIONS = ("create_account", "log_visit", "take_order", "add_order_line", "write_note", "edit_field",
                 "delete_record")
MODES = ("manual", "background")
# Waiting polls (a server export, device exports, outbox reads: each one a process of the SUT) come
# quickly at first, then further apart while work is still queued: work that lands in a second is
# seen at once, and a wait through 10 s of latency costs a dozen polls, not forty. A poll is judged
# by what it reads, so a later poll never turns a late arrival into a pass or a miss; once nothing
# is queued anywhere the polls go back to the first pace, so lost work is named as soon as before.
POLL_GROWTH = 1.5
POLL_MAX_S = 2.0


class ScenarioFailure(AssertionError):
    """A step's expectation did not hold; the message names the evidence."""


class NotExercisable(Exception):
    """The SUT's profile gives the harness no way to cause this scenario's fault (no clock hook):
    the scenario is inconclusive, neither passed nor failed."""

    limit = ""  # a limit the profile declares (see HostedLimit), which the certificate names


class HostedLimit(NotExercisable):
    """The scenario needs the harness to crash, restart, back up or restore the SUT's server, and the
    profile names a hosted server (``[server] url``) instead: *not exercised*, a declared limit of a
    hosted certification (docs/levels.md, "Hosted servers"), not an inconclusive run."""

    limit = "hosted"


class TerritoryLimit(NotExercisable):
    """The scenario needs territories (the profile's optional ``[server] assign`` and ``rep_export``)
    and the SUT does not scope what a device holds: *not exercised*, a declared limit, since
    territories are an optional part of the contract (docs/levels.md, "Territories")."""

    limit = "territories"


@dataclass
class Device:
    name: str
    rep: str
    driver: Driver
    proxy: str
    offline: bool = False
    toxics: list[str] = field(default_factory=list)
    writes: list[ActionResult] = field(default_factory=list)


class Session:
    """The world of one scenario. Use as a context manager: everything it starts, it stops."""

    def __init__(self, *, profile: Profile, toxiproxy: Toxiproxy, workdir: Path, seed: int,
                 scenario: str = "", org: str = "acme") -> None:
        self.profile = profile
        self.toxiproxy = toxiproxy
        self.workdir = Path(workdir)
        # A hosted server is shared: each scenario gets an organisation of its own (a fresh tenant
        # the profile's provision command creates), so scenarios never see each other's data.
        self.org = f"{org}-{uuid.uuid4().hex[:8]}" if profile.hosted else org
        # One seed for the run; each scenario derives its own, so reordering scenarios changes nothing.
        self.seed = (seed * 1_000_003 + zlib.crc32(scenario.encode())) % 2**32
        self.rng = random.Random(self.seed)
        self.faker = Faker()
        self.faker.seed_instance(self.seed)
        self.history = History()
        if toxiproxy is not None:  # None: a unit test's session that never reaches the network
            toxiproxy.on_restart = self._links_cut  # a hung Toxiproxy was restarted (harness/toxiproxy.py)
        self.tag = uuid.uuid4().hex[:8]
        self.server = server_for(profile, server_dir=self.workdir / "server", log_dir=self.workdir / "logs",
                                 record=self.history.record)
        self.devices: dict[str, Device] = {}
        self.account_id: str | None = None  # the account the scenario's steps talk about
        self.last: ActionResult | None = None
        self.offline_create_refused: bool | None = None
        self.anomalies: list[Anomaly] = []
        self._background: list[threading.Thread] = []
        self._backups: list[Path] = []
        self.snapshots: dict[str, Path] = {}  # the latest backup of each device and of the server
        self.checked = False  # final_check ran
        # Work a step waited for in vain while it was still queued: a ``stuck`` anomaly, so the
        # scenario's failure is explained by a named check even if a later sync delivers it all.
        self.stuck: list[Anomaly] = []
        # Why the scenario's fault never reached the state it tests (docs/levels.md: inconclusive).
        self.inconclusive: list[str] = []
        self.modes: dict[str, str] = {}  # device -> "manual" | "background" sync (matrix scenarios)
        self.targets: dict[str, str] = {}
        self.baseline: str | None = None  # the server's state before answers were held back  # synced records the matrix writes edit, extend and delete

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> Session:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for thread in self._background:
            thread.join(timeout=self.profile.action_timeout_s + 5)
        for device in self.devices.values():
            device.driver.close()
            processes.kill_marked(self._marker(device.name))
            try:
                self.toxiproxy.delete_proxy(device.proxy)
            except Exception:  # noqa: BLE001 - cleanup must go on; the proxy dies with Toxiproxy anyway
                pass
        self.server.stop()
        if self.toxiproxy is not None:
            self.toxiproxy.on_restart = None

    def _links_cut(self, reason: str) -> None:
        """Every online device's connections were cut by a Toxiproxy restart: a blip the timeline
        shows (a device in airplane mode stays offline: its proxy comes back disabled)."""
        for name, device in self.devices.items():
            if device.offline:
                continue
            self.history.append(name, "fault", "offline", detail=f"links cut: {reason}")
            self.history.append(name, "heal", "offline", detail="links restored")

    def _marker(self, device: str) -> str:
        return f"{self.tag}-{device}"

    # -- devices and the network ---------------------------------------------------------------
    def add_device(self, name: str, rep: str) -> Device:
        token = self.server.provision(self.org, rep)
        proxy = self.toxiproxy.create_proxy(f"{name}-{self.tag}", self.server.address)
        driver = Driver(self.profile, device=name, home=self.workdir / name, server_url=self.server.device_url(proxy.listen),
                        rep=rep, token=token, org=self.org, record=self.history.record,
                        env={processes.MARKER_ENV: self._marker(name)})
        driver.init()
        device = Device(name, rep, driver, proxy.name)
        self.devices[name] = device
        return device

    def device(self, name: str) -> Device:
        try:
            return self.devices[name]
        except KeyError:
            raise ScenarioFailure(f"no device {name!r} in this scenario") from None

    def airplane_mode(self, name: str) -> None:
        device = self.device(name)
        self.history.append(name, "fault", "offline", detail=f"proxy {device.proxy} disabled")
        self.toxiproxy.disable(device.proxy)
        device.offline = True

    def back_online(self, name: str) -> None:
        device = self.device(name)
        self.toxiproxy.enable(device.proxy)
        self.history.append(name, "heal", "offline", detail=f"proxy {device.proxy} enabled")
        device.offline = False

    def add_toxic(self, name: str, toxic: Toxic) -> None:
        device = self.device(name)
        self.history.append(name, "fault", toxic.type, detail=f"{toxic.stream} {toxic.attributes}")
        self.toxiproxy.add_toxic(device.proxy, toxic)
        device.toxics.append(toxic.name)

    def remove_toxics(self, name: str, kind: str | None = None) -> None:
        device = self.device(name)
        for toxic_name in list(device.toxics):
            if kind is None or toxic_name.startswith(kind):
                self._remove_toxic(device, toxic_name)
                device.toxics.remove(toxic_name)
                self.history.append(name, "heal", toxic_name.split("-")[0], detail=f"toxic {toxic_name} removed")

    def _remove_toxic(self, device: Device, toxic_name: str) -> None:
        """Toxiproxy removes a toxic only once each link has drained it; a client that stopped
        reading blocks that. When the removal hangs, the client restarts Toxiproxy without the
        toxic (``_links_cut``); when it fails otherwise, the links are cut (a recorded blip) and
        the removal tried again."""
        try:
            self.toxiproxy.remove_toxic(device.proxy, toxic_name)
            return
        except ToxiproxyError:
            if device.offline:
                raise
        self.history.append(device.name, "fault", "offline", detail=f"links cut to release toxic {toxic_name}")
        self.toxiproxy.disable(device.proxy)
        try:
            if toxic_name in self.toxiproxy.toxics(device.proxy):
                self.toxiproxy.remove_toxic(device.proxy, toxic_name)
        finally:
            self.toxiproxy.enable(device.proxy)
            self.history.append(device.name, "heal", "offline", detail="links restored")

    def skew_clock(self, name: str, hours: float) -> None:
        device = self.device(name)
        if not self.profile.clock_skew_env:
            raise NotExercisable("not exercisable: the SUT profile has no [device] clock_skew_env, so a "
                                 "device clock cannot be set")
        device.driver.env[self.profile.clock_skew_env] = str(int(hours * 3600 * 1000))
        self.history.append(name, "fault", "clock_skew", detail=f"{hours:+g} h")

    # -- life events: backups, restores, a copied home (docs/driver-contract.md) ------------------
    def _snapshot_dir(self, label: str) -> Path:
        target = self.workdir / "backups" / f"{label}-{len(self._backups) + 1}"
        self._backups.append(target)
        return target

    def _life_command(self, key: str, values: dict[str, Any], env: dict[str, str] | None = None) -> bool:
        """Run the profile's ``[device|server] backup|restore`` command if it has one (True), or
        leave the plain copy to the caller (False). A command that fails stops the scenario."""
        template = self.profile.life.get(key)
        if template is None:
            return False
        done = processes.run(self.profile.command(template, **values), env={**self.profile.environ(), **(env or {})},
                             timeout=self.profile.action_timeout_s)
        if done.returncode != 0:
            raise ScenarioFailure(f"the profile's {key} command failed (exit {done.returncode}): "
                                  f"{(done.stderr or done.stdout).strip()[-300:]}")
        return True

    def _device_values(self, device: Device, home: Path, backup_dir: Path) -> dict[str, Any]:
        d = device.driver
        return {"home": str(home), "server_url": d.server_url, "rep": device.rep, "org": self.org,
                "token": d.token, "backup_dir": str(backup_dir)}

    def backup_device(self, name: str) -> Path:
        """A backup of the device's home, taken as a phone backup is: with no process of the app
        running (it is force-quit first, so nothing is half-written on disk). The profile's
        ``[device] backup`` command makes it if there is one, else a plain copy of ``{home}``."""
        device = self.device(name)
        self.force_quit(name)
        snapshot = self._snapshot_dir(name)
        how = "by the profile's backup command"
        if not self._life_command("device.backup", self._device_values(device, device.driver.home, snapshot),
                                  device.driver.env):
            shutil.copytree(device.driver.home, snapshot, symlinks=True)
            how = "home copied"
        self.history.append(name, "life", "backup", detail=f"{how} to {snapshot.name}")
        return snapshot

    def _restore_home(self, device: Device, snapshot: Path, home: Path) -> str:
        if self._life_command("device.restore", self._device_values(device, home, snapshot), device.driver.env):
            return "by the profile's restore command"
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(snapshot, home, symlinks=True)
        return "home copied back"

    def restore_device(self, name: str, snapshot: Path) -> None:
        """The device's home replaced by an older backup of it (what a restored phone holds)."""
        device = self.device(name)
        self.force_quit(name)
        how = self._restore_home(device, snapshot, device.driver.home)
        self.history.append(name, "life", "restore", detail=f"{how} from {snapshot.name}")

    def clone_device(self, name: str, clone: str) -> Device:
        """A second device made from ``name``'s home (a phone cloned onto another: a backup of it
        restored onto a new phone): same rep, same token, same stored server URL, so it shares
        ``name``'s proxy."""
        device = self.device(name)
        snapshot = self.backup_device(name)
        home = self.workdir / clone
        self._restore_home(device, snapshot, home)
        driver = Driver(self.profile, device=clone, home=home, server_url=device.driver.server_url,
                        rep=device.rep, token=device.driver.token, org=self.org, record=self.history.record,
                        env={**device.driver.env, processes.MARKER_ENV: self._marker(clone)})
        self.devices[clone] = copy = Device(clone, device.rep, driver, device.proxy)
        self.history.append(clone, "life", "clone", detail=f"home restored from a backup of {name}")
        return copy

    def _server_values(self, backup_dir: Path) -> dict[str, Any]:
        return {"server_dir": str(self.server.server_dir), "port": self.server.port, "backup_dir": str(backup_dir)}

    def _own_server(self, what: str) -> None:
        if self.profile.hosted:
            from .driver import HOSTED_LIMIT

            raise HostedLimit(HOSTED_LIMIT.format(url=self.profile.server_url, what=what))

    def backup_server(self) -> Path:
        """A backup of the server's data, taken while the server is stopped: the profile's
        ``[server] backup`` command, else a copy of ``{server_dir}``."""
        self._own_server("back up and restore")
        self.server.stop()
        snapshot = self._snapshot_dir("server")
        how = "by the profile's backup command"
        if not self._life_command("server.backup", self._server_values(snapshot)):
            shutil.copytree(self.server.server_dir, snapshot, symlinks=True)
            how = "data copied"
        self.server.start()
        self.history.append("server", "life", "backup", detail=f"{how} to {snapshot.name}")
        return snapshot

    def restore_server(self, snapshot: Path) -> None:
        """The server's data put back to an older backup, while devices hold newer work."""
        self._own_server("back up and restore")
        self.server.stop()
        how = "by the profile's restore command"
        if not self._life_command("server.restore", self._server_values(snapshot)):
            shutil.rmtree(self.server.server_dir, ignore_errors=True)
            shutil.copytree(snapshot, self.server.server_dir, symlinks=True)
            how = "data copied back"
        self.server.start()
        self.history.append("server", "life", "restore", detail=f"{how} from {snapshot.name}")

    def force_quit(self, name: str) -> None:
        device = self.device(name)
        device.driver.force_quit("force-quit by the harness")
        processes.kill_marked(self._marker(name))

    def reopen(self, name: str) -> ActionResult:
        """A new process on the same home; the outbox read is what a reopened app shows first."""
        return self.act(name, "outbox")

    # -- actions -------------------------------------------------------------------------------
    def act(self, name: str, action: str, /, *, kill_after: float | None = None, at_flush: int | None = None,
            **args: Any) -> ActionResult:
        device = self.device(name)
        try:
            result = device.driver.invoke(action, kill_after=kill_after, at_flush=at_flush, **args)
        except MissingAction as exc:
            raise NotExercisable(f"not exercisable: {exc}") from None
        if kill_after is not None:
            processes.kill_marked(self._marker(name)) if result.outcome == "unknown" else None
        if action in WRITE_ACTIONS:
            device.writes.append(result)
        self.last = result
        return result

    def create_account(self, name: str, *, kill_after: float | None = None) -> ActionResult:
        result = self.act(name, "create_account", kill_after=kill_after, name=self.faker.company(),
                          city=self.faker.city())
        if self.device(name).offline:
            self.offline_create_refused = result.outcome != "ok"
        if result.ok and isinstance(result.json, dict) and result.json.get("id"):
            self.account_id = str(result.json["id"])
        return result

    def _account(self) -> str:
        if not self.account_id:
            raise ScenarioFailure("no account was saved earlier in this scenario")
        return self.account_id

    def log_visit(self, name: str) -> ActionResult:
        return self.act(name, "log_visit", account_id=self._account(),
                        outcome=self.rng.choice(["met the buyer", "left a brochure", "no one in", "reordered"]))

    def take_order(self, name: str, *, kill_after: float | None = None) -> ActionResult:
        return self.act(name, "take_order", kill_after=kill_after, account_id=self._account(),
                        sku=self.rng.choice(SKUS), qty=self.rng.randint(1, 24), price=f"{self.rng.randint(50, 5000) / 100:.2f}")

    def write_note(self, name: str) -> ActionResult:
        return self.act(name, "write_note", account_id=self._account(), text=self.faker.sentence(nb_words=8))

    def edit_account(self, name: str, field_name: str, value: str) -> ActionResult:
        return self.act(name, "edit_field", entity="account", record_id=self._account(), field=field_name,
                        value=value)

    def delete_account(self, name: str) -> ActionResult:
        return self.act(name, "delete_record", entity="account", record_id=self._account())

    def backoffice_edit(self, field_name: str, value: str) -> ActionResult:
        try:
            return self.server.backoffice_edit("account", self._account(), field_name, value, org=self.org)
        except MissingAction as exc:
            raise NotExercisable(f"not exercisable: {exc}") from None

    def assign(self, rep: str, territory: str) -> ActionResult:
        """Give ``rep`` a territory (territories: the profile's optional assign and rep_export)."""
        if self.profile.rep_export is None:
            raise TerritoryLimit("not exercisable: the SUT profile has no [server] rep_export, so what a "
                                 "device of a rep with territories must hold cannot be checked")
        try:
            return self.server.assign(self.org, rep, territory)
        except MissingAction as exc:
            raise TerritoryLimit(f"not exercisable: {exc}") from None

    def sync(self, name: str, *, kill_after: float | None = None) -> ActionResult:
        return self.act(name, "sync", kill_after=kill_after)

    def in_background(self, work: Callable[[], Any]) -> threading.Thread:
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        self._background.append(thread)
        return thread

    def seeded_delay(self, low: float, high: float) -> float:
        return self.rng.uniform(low, high)

    # -- the coverage matrix: one of every write, manual or background sync -----------------------
    def use_sync_mode(self, name: str, mode: str) -> None:
        """Manual: the rep syncs by command. Background: the SUT's background sync does it all."""
        if mode not in MODES:
            raise ScenarioFailure(f"sync mode is one of {', '.join(MODES)}, not {mode!r}")
        if mode == "background":
            result = self.act(name, "start_background_sync")
            if not result.ok:
                raise ScenarioFailure(f"start_background_sync failed on {name}: {result.detail}")
        self.modes[name] = mode

    def mark_inconclusive(self, why: str) -> None:
        """The fault did not reach the state the scenario tests: what passes is not evidence."""
        self.inconclusive.append(why)
        self.history.append("harness", "fault", "inconclusive", detail=why)

    def synced_targets(self, name: str) -> None:
        """An account with an order, and a second account, that reached the office: what the
        matrix's edit, order-line and delete writes work on."""
        made = {}
        for key in ("account", "doomed"):
            result = self.create_account(name)
            if not (result.ok and isinstance(result.json, dict) and result.json.get("id")):
                raise ScenarioFailure(f"creating an account on {name} failed: {result.detail}")
            made[key] = str(result.json["id"])
        self.account_id = made["account"]
        order = self.take_order(name)
        if not (order.ok and isinstance(order.json, dict) and order.json.get("id")):
            raise ScenarioFailure(f"taking an order on {name} failed: {order.detail}")
        made["order"] = str(order.json["id"])
        self.targets = made
        self.catch_up(name, 60)

    def every_kind_of_write(self, name: str, *, kill: bool = False) -> list[ActionResult]:
        """One of each contract write: a new account with a visit, an order, a line added to it and
        a note; an edit of a synced account's city; the delete of another synced account. With
        ``kill`` each is force-quit at a seeded moment; what a killed create printed no id for is
        replaced by the synced targets, so every kind of write still runs."""
        if not self.targets:
            raise ScenarioFailure("no synced records to edit and delete: a step must create them first")
        delay = (lambda: self.seeded_delay(0.05, 0.6)) if kill else (lambda: None)
        results = [self.create_account(name, kill_after=delay())]
        created = results[0].json.get("id") if results[0].ok and isinstance(results[0].json, dict) else None
        self.account_id = str(created) if created else self.targets["account"]
        results.append(self.act(name, "log_visit", kill_after=delay(), account_id=self.account_id,
                                outcome=self.rng.choice(["met the buyer", "left a brochure", "reordered"])))
        results.append(self.take_order(name, kill_after=delay()))
        order = results[-1].json.get("id") if results[-1].ok and isinstance(results[-1].json, dict) else None
        if self._can(name, "add_order_line"):
            results.append(self.act(name, "add_order_line", kill_after=delay(),
                                    order_id=str(order or self.targets["order"]), sku=self.rng.choice(SKUS),
                                    qty=self.rng.randint(1, 24), price=f"{self.rng.randint(50, 5000) / 100:.2f}"))
        results.append(self.act(name, "write_note", kill_after=delay(), account_id=self.account_id,
                                text=self.faker.sentence(nb_words=8)))
        results.append(self.act(name, "edit_field", kill_after=delay(), entity="account",
                                record_id=self.targets["account"], field="city", value=self.faker.city()))
        if self._can(name, "delete_record"):
            results.append(self.act(name, "delete_record", kill_after=delay(), entity="account",
                                    record_id=self.targets["doomed"]))
        if not kill:
            refused = [r for r in results if not r.ok]
            if refused:
                raise ScenarioFailure(f"{refused[0].action} on {name} was not saved: {refused[0].detail}")
        elif self.modes.get(name) == "background":
            self.reopen(name)  # a force-quit also stopped background sync; the reopened app resumes it
        return results

    def every_kind_of_write_at_each_flush(self, name: str) -> list[ActionResult]:
        """The writes of ``every_kind_of_write``, each run again and again, force-quit as it asks for
        its first, second, ... flush to disk, until a run ends by itself (harness.flushes): every
        step between two durable points of each save is hit once. The killed runs are writes whose
        outcome is unknown; the last one's result is the write's."""
        if not self.targets:
            raise ScenarioFailure("no synced records to edit and delete: a step must create them first")
        each = self._at_each_flush
        results = [each(name, "create_account", name=self.faker.company(), city=self.faker.city())]
        created = results[0].json.get("id") if results[0].ok and isinstance(results[0].json, dict) else None
        self.account_id = str(created) if created else self.targets["account"]
        results.append(each(name, "log_visit", account_id=self.account_id, outcome="met the buyer"))
        results.append(each(name, "take_order", account_id=self.account_id, sku=self.rng.choice(SKUS),
                            qty=self.rng.randint(1, 24), price=f"{self.rng.randint(50, 5000) / 100:.2f}"))
        order = results[-1].json.get("id") if results[-1].ok and isinstance(results[-1].json, dict) else None
        if self._can(name, "add_order_line"):
            results.append(each(name, "add_order_line", order_id=str(order or self.targets["order"]),
                                sku=self.rng.choice(SKUS), qty=self.rng.randint(1, 24),
                                price=f"{self.rng.randint(50, 5000) / 100:.2f}"))
        results.append(each(name, "write_note", account_id=self.account_id, text=self.faker.sentence(nb_words=8)))
        results.append(each(name, "edit_field", entity="account", record_id=self.targets["account"], field="city",
                            value=self.faker.city()))
        if self._can(name, "delete_record"):
            results.append(each(name, "delete_record", entity="account", record_id=self.targets["doomed"]))
        return results

    def first_sync_at_each_flush(self, kind: str, rep: str) -> list[str]:
        """For K = 1, 2, ...: a new device of ``rep`` whose first sync is force-quit as it asks for its
        K-th flush to disk, then syncs twice (the app reopened), until a first sync ends by itself.
        A new device each time, so that every K meets the same first sync: one device run again
        would not redo what its killed run already saved, and the aim would drift past the step
        between two commits. The devices' names, ``kind``-1, ``kind``-2, ..."""
        names = []
        for k in range(1, flushes.MAX_FLUSHES + 1):
            name = f"{kind}-{k}"
            self.add_device(name, rep)
            names.append(name)
            first = self._killed_at_flush(name, "sync", k)
            for _ in range(2):
                self.sync(name)
            if first.killed_at_flush is None:
                return names
        raise ScenarioFailure(f"the first sync of {kind} was still force-quit at its flush to disk number "
                              f"{flushes.MAX_FLUSHES}: it asks for more flushes than one sync can need")

    def _at_each_flush(self, device: str, action: str, /, **args: Any) -> ActionResult:
        for k in range(1, flushes.MAX_FLUSHES + 1):
            result = self._killed_at_flush(device, action, k, **args)
            if result.killed_at_flush is None:
                return result
        raise ScenarioFailure(f"{action} on {device} was still force-quit at its flush to disk number "
                              f"{flushes.MAX_FLUSHES}: it asks for more flushes than one save can need")

    def _killed_at_flush(self, device: str, action: str, k: int, /, **args: Any) -> ActionResult:
        why = flushes.unavailable()
        if why is not None:
            raise NotExercisable(f"not exercisable: a force-quit cannot be aimed at a flush to disk here: {why}")
        return self.act(device, action, at_flush=k, **args)

    def _can(self, name: str, action: str) -> bool:
        """Whether the profile has an optional write; without it the rest of the row still runs,
        but its cells are not exercised, so the scenario cannot pass (inconclusive)."""
        if self.profile.has(action):
            return True
        self.mark_inconclusive(f"not exercisable: the SUT profile defines no [actions].{action}, so its cells "
                               "of the coverage matrix cannot run")
        return False

    def catch_up(self, name: str, bound: float) -> float:
        """Until the office and ``name`` hold everything any device saved: by ``sync`` commands in
        manual mode (a rep taps sync until it is done), by themselves in background mode. Seconds
        taken; past ``bound`` the work still queued is a ``stuck`` anomaly."""
        start = time.monotonic()
        manual = self.modes.get(name, "manual") == "manual" and self.profile.has("sync")
        drained = 0  # polls in a row with nothing queued on any reachable device
        pause = base = 0.2 if manual else 0.5
        while True:
            if manual:
                self.sync(name)
            unsent = self.missing_on_server()
            # While the server lacks work, ``name`` cannot be done either: its export is read once the
            # server is complete, or for the record when the bound is passed (each read is a process).
            missing = unsent or self.missing_on_device(name)
            if not missing:
                return time.monotonic() - start
            reachable = [d.name for d in self.devices.values() if not d.offline]
            drained = drained + 1 if unsent and reachable and all(self.quiet_pending(n) == 0 for n in reachable) \
                else 0
            if drained >= (3 if manual else 6):  # nothing left to send: lost, not late (the checkers say so)
                raise ScenarioFailure(f"nothing is pending on any device, yet the server lacks {len(unsent)} saved "
                                      f"record(s): {unsent}")
            if time.monotonic() - start > bound:
                missing = {**unsent, **self.missing_on_device(name)}
                self.stuck.append(Anomaly("stuck", f"{len(missing)} saved record(s) had not reached the server "
                                          f"and {name} within the scenario's {bound:g} s",
                                          {"step": "catch_up", "bound_s": bound, "missing": missing}))
                raise ScenarioFailure(f"after {bound:g} s {len(missing)} saved record(s) were still missing "
                                      f"on the server or {name}: {missing}")
            time.sleep(pause)
            pause = base if drained else min(pause * POLL_GROWTH, POLL_MAX_S)

    def writes_within(self, name: str, seconds: float) -> None:
        """A write must not wait on the network: one slower than ``seconds`` is a ``slow_write``
        anomaly (a timing bound of the contract, re-run before it counts; docs/levels.md)."""
        slow = [(w.action, round(w.duration, 2)) for w in self.device(name).writes if w.duration > seconds]
        if slow:
            self.stuck.append(Anomaly("slow_write", f"{len(slow)} write(s) on {name} took longer than {seconds:g} s",
                                      {"step": "writes_within", "bound_s": seconds, "writes": slow}))
            raise ScenarioFailure(f"writes on {name} waited on the network: {slow}")

    def missing_on_device(self, name: str) -> dict[str, str]:
        """Saved records (of any device) that ``name``'s export lacks, read without recording."""
        driver = self.device(name).driver
        done = processes.run(driver.command("export"),
                             env={**self.profile.environ(), **driver.env}, timeout=self.profile.action_timeout_s)
        state, _ = parse_json(done.stdout)
        state = state if isinstance(state, dict) else {}
        present = {str(r.get("id")) for entity in CREATES.values() for r in state.get(entity, []) or []
                   if isinstance(r, dict)}
        return {rid: entity for rid, entity in self.saved_ids().items() if rid not in present}

    # -- what the office sees ------------------------------------------------------------------
    def server_state(self) -> dict[str, Any]:
        """The server's export without recording it: polling must not flood the history."""
        done = processes.run(self.server.command(self.profile.server_export, org=self.org), env=self.profile.environ(),
                             timeout=self.profile.action_timeout_s)
        parsed, _ = parse_json(done.stdout)
        return parsed if isinstance(parsed, dict) else {}

    def saved_ids(self, name: str | None = None) -> dict[str, str]:
        """id -> entity of every create a device reported saved."""
        out = {}
        for device in self.devices.values():
            if name is None or device.name == name:
                for result in device.writes:
                    if result.ok and result.action in CREATES and isinstance(result.json, dict):
                        out[str(result.json.get("id"))] = CREATES[result.action]
        return out

    def missing_on_server(self, name: str | None = None) -> dict[str, str]:
        state = self.server_state()
        present = {str(r.get("id")) for entity in CREATES.values() for r in state.get(entity, []) or []
                   if isinstance(r, dict)}
        return {rid: entity for rid, entity in self.saved_ids(name).items() if rid not in present}

    def quiet_pending(self, name: str) -> int | None:
        """The device's pending count without recording it (polling must not flood the history)."""
        driver = self.device(name).driver
        done = processes.run(driver.command("outbox"),
                             env={**self.profile.environ(), **driver.env}, timeout=self.profile.action_timeout_s)
        parsed, _ = parse_json(done.stdout)
        pending = parsed.get("pending") if isinstance(parsed, dict) else None
        return pending if isinstance(pending, int) else None

    def wait_until_on_server(self, timeout: float, name: str | None = None) -> float:
        """Seconds until every saved record is on the server. Gives up early when nothing is
        pending anywhere yet records are missing: then they are lost, not late."""
        start = time.monotonic()
        idle_polls = 0
        pause = 0.5
        while True:
            missing = self.missing_on_server(name)
            if not missing:
                return time.monotonic() - start
            elapsed = time.monotonic() - start
            reachable = [d.name for d in self.devices.values() if not d.offline]
            drained = bool(reachable) and all(self.quiet_pending(n) == 0 for n in reachable)
            idle_polls = idle_polls + 1 if drained else 0
            if elapsed > timeout or idle_polls >= 6:
                why = "nothing is pending on any device, yet" if idle_polls >= 6 else f"after {timeout:g} s"
                if idle_polls < 6:  # still queued: late, not (yet) lost; lost_write judges the rest
                    self.stuck.append(Anomaly("stuck", f"{len(missing)} saved record(s) had not reached the "
                                              f"server within the scenario's {timeout:g} s",
                                              {"step": "wait", "bound_s": timeout, "missing": missing}))
                raise ScenarioFailure(f"{why} the server lacks {len(missing)} saved record(s): {missing}")
            time.sleep(pause)
            pause = 0.5 if idle_polls else min(pause * POLL_GROWTH, POLL_MAX_S)

    # -- the verdict ---------------------------------------------------------------------------
    def heal_everything(self) -> None:
        if not self.server.running:
            self.server.start()
        for device in self.devices.values():
            self.remove_toxics(device.name)
            if device.offline:
                self.back_online(device.name)

    def quiesce(self, *, timeout: float = 90.0) -> None:
        """Heal every fault and let every device sync until nothing is pending anywhere."""
        self.heal_everything()
        manual = self.profile.has("sync")
        deadline = time.monotonic() + timeout
        rounds = 0
        while True:
            if manual:
                for device in self.devices.values():
                    self.sync(device.name)
            rounds += 1
            if rounds >= 2:  # a device pulls what the others pushed in a round only in the next one
                pending = {d.name: d.driver.pending() for d in self.devices.values()}
                if not any(pending.values()):
                    return
                if time.monotonic() > deadline:
                    raise ScenarioFailure(f"no quiescence within {timeout:g} s: still pending {pending}")
            if not manual:
                time.sleep(1.0)

    def evidence(self) -> list[Anomaly]:
        """For a scenario that failed at a step: the checkers' view of the same run, so the
        certificate explains the failure by a named check. Work that never reached quiescence, or
        that a step waited for in vain, is a ``stuck`` anomaly; the checkers judge the exports."""
        if self.checked:
            return self.anomalies
        try:
            return self.final_check()
        except ScenarioFailure:
            return self.anomalies  # final_check recorded why quiescence failed
        except Exception as exc:  # noqa: BLE001 - evidence is best effort; the step's failure stands
            self.anomalies = [Anomaly("history", f"no evidence could be gathered: {exc}", {})]
            return self.anomalies

    def final_check(self) -> list[Anomaly]:
        """Quiesce, record the final exports, and run every checker over the history. A failed
        quiescence is a ``stuck`` anomaly next to the checkers' findings, then raised."""
        self.checked = True
        try:
            self.quiesce()
        except ScenarioFailure as exc:
            self._final_exports()
            self.anomalies = [*self.stuck, Anomaly("stuck", str(exc), {"step": "quiesce"}),
                              *checkers.run_all(self.history)]
            raise
        except BaseException:
            self._final_exports()
            raise
        self._final_exports()
        self.anomalies = [*self.stuck, *checkers.run_all(self.history)]
        return self.anomalies

    def _final_exports(self) -> None:
        """Record every replica's export; one that fails is recorded too (the checkers name it)."""
        for device in self.devices.values():
            try:
                device.driver.export()
            except DriverError:
                pass
        try:
            self.server.export(self.org)
        except DriverError:
            pass
        if self.profile.rep_export is not None:  # what each device must hold, per its rep's territories
            for device in self.devices.values():
                try:
                    self.server.rep_export(self.org, device.rep, device.name)
                except DriverError:
                    pass
