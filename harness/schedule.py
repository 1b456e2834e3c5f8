"""Chaos schedules: one seed in, a list of steps out, as plain JSON data.

A schedule says everything a chaos run does, in order: which device does which contract action
with which (Faker) data, and when the network is cut, degraded or restored, when clients, agents
and the server are SIGKILLed. All data is in the steps themselves, so a schedule replays exactly
from its JSON file, and any sub-list of its steps is again a valid schedule: that is what lets
the shrinker delete steps freely. Records are named by handles (``a3``, ``v1``) that the create
step introduces; a step whose record was never created is skipped when it runs.

Generation keeps a rough model of the world (who is offline, which records each device has
probably seen) only to pick plausible steps: edits of records a device holds, back-office edits
of records that reached the server, faults that can be healed. Correctness never depends on it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faker import Faker

FORMAT = "crm-chaos-schedule/1"
SKUS = ("SKU-1", "SKU-2", "SKU-3", "CRISPS-24", "COLA-12")
LOCALES = ("en_GB", "de_DE", "fr_FR", "es_ES")
TOXICS = ("latency", "timeout", "reset_peer", "limit_data", "slicer")
EDITABLE = {"account": ("name", "city"), "visit": ("outcome",)}

# Every step kind, and whether it is a fault (or its heal) rather than a contract action.
ACTIONS = ("create_account", "log_visit", "take_order", "add_order_line", "write_note", "edit_field",
           "delete_record", "backoffice_edit", "sync", "start_background_sync", "stop_background_sync", "reopen",
           "assign", "unassign", "move_account")
FAULTS = ("offline", "online", "toxic", "clear_toxics", "kill", "server_kill", "server_start")
KINDS = (*ACTIONS, *FAULTS, "pause")


# How often a device's work is taking an order, and adding a line to an order some device holds.
W_ORDER = 16
W_ADD_LINE = 20
# Territories (profiles with server.assign, server.rep_export and server.backoffice_edit): the
# territories accounts move between, how often the back office moves an account and gives a rep
# another territory, and how likely each device's rep starts with a territory of its own.
TERRITORIES = ("north", "south", "east")
W_MOVE = 24
W_ASSIGN = 6
P_START_ASSIGNED = 0.8
P_UNASSIGN = 0.5  # of a reassignment of a rep holding territories, with server.unassign


class ScheduleError(ValueError):
    """A schedule file that cannot be replayed: says which file and what is wrong."""


@dataclass(frozen=True)
class Capabilities:
    """What the SUT's profile lets a schedule use beyond the required actions."""

    sync: bool = True
    agent: bool = True
    backoffice: bool = True
    delete: bool = True
    order_lines: bool = True
    server_faults: bool = True  # the harness may crash the server (not a hosted one: [server] url)
    territories: bool = False  # assign reps, move accounts (server.assign, rep_export, backoffice_edit)
    unassign: bool = False  # and take territories away (server.unassign too)

    @classmethod
    def of(cls, profile: Any) -> Capabilities:
        return cls(sync=profile.has("sync"),
                   agent=profile.has("start_background_sync") and profile.has("stop_background_sync"),
                   backoffice=profile.backoffice_edit is not None, delete=profile.has("delete_record"),
                   order_lines=profile.has("add_order_line"), server_faults=not getattr(profile, "hosted", False),
                   territories=all(getattr(profile, name, None) is not None
                                   for name in ("assign", "rep_export", "backoffice_edit")),
                   unassign=all(getattr(profile, name, None) is not None
                                for name in ("assign", "unassign", "rep_export", "backoffice_edit")))


@dataclass
class Schedule:
    seed: int
    devices: list[str]
    steps: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)  # where it came from: sut, campaign seed, run

    def with_steps(self, steps: Iterable[dict[str, Any]]) -> Schedule:
        """The same schedule over a sub-list of its steps, keeping only the devices they use."""
        steps = list(steps)
        used = {s["device"] for s in steps if "device" in s}
        devices = [d for d in self.devices if d in used] or self.devices[:1]
        return Schedule(self.seed, devices, steps, dict(self.meta))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.steps:
            out[s["do"]] = out.get(s["do"], 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "seed": self.seed, "devices": list(self.devices), **self.meta,
                "steps": self.steps}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.dumps(), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def from_json(cls, data: Any, where: str = "schedule") -> Schedule:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ScheduleError(f"{where}: not a chaos schedule (expected \"format\": \"{FORMAT}\")")
        devices, steps, seed = data.get("devices"), data.get("steps"), data.get("seed")
        if not isinstance(devices, list) or not devices or not all(isinstance(d, str) for d in devices):
            raise ScheduleError(f"{where}: \"devices\" must be a non-empty list of names")
        if not isinstance(steps, list):
            raise ScheduleError(f"{where}: \"steps\" must be a list")
        if not isinstance(seed, int):
            raise ScheduleError(f"{where}: \"seed\" must be an integer")
        for number, step in enumerate(steps, 1):
            if not isinstance(step, dict) or step.get("do") not in KINDS:
                raise ScheduleError(f"{where}: step {number} is not a known step ({step!r:.80})")
            if "device" in step and step["device"] not in devices:
                raise ScheduleError(f"{where}: step {number} names device {step['device']!r}, "
                                    f"which is not in \"devices\"")
        meta = {k: v for k, v in data.items() if k not in ("format", "seed", "devices", "steps")}
        return cls(seed, list(devices), steps, meta)

    @classmethod
    def load(cls, path: str | Path) -> Schedule:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ScheduleError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ScheduleError(f"{path}: cannot read it as JSON ({exc})") from None
        return cls.from_json(data, str(path))


INJECTIONS = ("offline", "toxic", "kill", "server_kill")  # the faults; the other FAULTS heal them


def is_fault(step: dict[str, Any]) -> bool:
    """Whether the step injects a fault (a heal does not): a network cut, a toxic, a SIGKILL."""
    return step["do"] in INJECTIONS or bool(step.get("kill_after"))


class _World:
    """The generator's rough picture of the run, used only to choose plausible steps."""

    def __init__(self, devices: list[str]) -> None:
        self.devices = devices
        self.known: dict[str, list[str]] = {d: [] for d in devices}  # record handles each device holds
        self.on_server: list[str] = []
        self.entity: dict[str, str] = {}  # handle -> entity
        self.creator: dict[str, str] = {}  # handle -> the device whose step created it
        self.offline: set[str] = set()
        self.toxics: dict[str, int] = {d: 0 for d in devices}
        self.agents: set[str] = set()
        self.server_down = 0  # steps since the server was killed; 0 while it runs
        self.last_edit: tuple[str, str, str, str] | None = None  # (who, entity, handle, field)
        # Territories: each rep's territories (none: the whole organisation), each account's
        # territory, the account each child record hangs off. Without territories all stay empty.
        self.scope: dict[str, list[str]] = {d: [] for d in devices}
        self.territory: dict[str, str] = {}
        self.parent: dict[str, str] = {}

    def holds(self, device: str, handle: str) -> bool:
        """Whether the device's rep is entitled to the record (always, for a rep without territories)."""
        scope = self.scope[device]
        return not scope or self.territory.get(self.parent.get(handle, handle), "") in scope

    def reachable(self, device: str) -> bool:
        return device not in self.offline and not self.server_down

    def exchange(self, device: str) -> None:
        """A sync that may have worked: the device pushes what it holds and pulls the server's."""
        if not self.reachable(device):
            return
        for handle in self.known[device]:
            if handle not in self.on_server:
                self.on_server.append(handle)
        for handle in self.on_server:
            if handle not in self.known[device] and self.holds(device, handle):
                self.known[device].append(handle)
        if self.scope[device]:  # what moved away (or left with a reassignment) is dropped
            self.known[device] = [h for h in self.known[device] if self.holds(device, h)]


class Generator:
    """Builds one schedule from a seed: ``Generator(seed, ...).schedule()``."""

    def __init__(self, seed: int, *, devices: int = 3, steps: int = 20,
                 capabilities: Capabilities = Capabilities()) -> None:
        if devices < 1 or steps < 1:
            raise ValueError("a schedule needs at least one device and one step")
        self.seed = seed
        self.rng = random.Random(seed)
        self.fakers = []
        for number, locale in enumerate(LOCALES):
            faker = Faker(locale)
            faker.seed_instance(seed * len(LOCALES) + number)
            self.fakers.append(faker)
        self.caps = capabilities
        self.length = steps
        self.names = [f"d{i}" for i in range(1, devices + 1)]
        self.world = _World(self.names)
        self.handles = 0
        self.toxic_names = 0
        self.values: set[str] = set()

    # -- data --------------------------------------------------------------------------------------
    def _faker(self) -> Faker:
        return self.rng.choice(self.fakers)

    def _unique(self, make) -> str:
        """A value no other step of the schedule uses, so payloads and edits never collide."""
        value = str(make()).strip()
        while not value or value in self.values:
            value = f"{make()} {self.rng.randint(2, 999)}".strip()
        self.values.add(value)
        return value

    def _handle(self, prefix: str, entity: str, device: str) -> str:
        self.handles += 1
        handle = f"{prefix}{self.handles}"
        self.world.entity[handle] = entity
        self.world.creator[handle] = device
        self.world.known[device].append(handle)
        return handle

    def _held(self, device: str, entity: str) -> list[str]:
        return [h for h in self.world.known[device] if self.world.entity[h] == entity]

    # -- steps -------------------------------------------------------------------------------------
    def schedule(self) -> Schedule:
        start = self._territories() if self.caps.territories else []
        steps = [self._step() for _ in range(self.length)]
        return Schedule(self.seed, list(self.names), start + steps)

    def _territories(self) -> list[dict[str, Any]]:
        """The opening assignments (on top of the scheduled steps): most reps get a territory, so
        devices hold different parts of the organisation; a rep left without one holds it all."""
        steps, first = [], self.rng.randrange(len(TERRITORIES))
        for number, device in enumerate(self.names):
            if self.rng.random() < P_START_ASSIGNED:  # neighbours get different territories
                territory = TERRITORIES[(first + number) % len(TERRITORIES)]
                self.world.scope[device].append(territory)
                steps.append({"do": "assign", "device": device, "territory": territory})
        return steps

    def _assign(self, device: str) -> dict[str, Any]:
        """Give the device's rep another territory (a reassignment, when it already had one), or
        (with server.unassign) now and then take one away: a rep left with none holds everything."""
        scope = self.world.scope[device]
        if self.caps.unassign and scope and self.rng.random() < P_UNASSIGN:
            territory = self.rng.choice(scope)
            scope.remove(territory)
            return {"do": "unassign", "device": device, "territory": territory}
        territory = self.rng.choice([t for t in TERRITORIES if t not in scope] or list(TERRITORIES))
        if territory not in scope:
            scope.append(territory)
        return {"do": "assign", "device": device, "territory": territory}

    def _move(self) -> dict[str, Any]:
        """The back office moves an account that reached the server to another territory."""
        w = self.world
        accounts = [h for h in w.on_server if w.entity[h] == "account"]
        if not accounts:
            return self._create_account(self.rng.choice(self.names))
        account = self.rng.choice(accounts)
        territory = self.rng.choice([t for t in TERRITORIES if t != w.territory.get(account, "")])
        w.territory[account] = territory
        return {"do": "move_account", "account": account, "territory": territory}

    def _step(self) -> dict[str, Any]:
        w = self.world
        if w.server_down:
            w.server_down += 1
            if w.server_down > 3 or self.rng.random() < 0.5:
                w.server_down = 0
                return {"do": "server_start"}
        for device in sorted(w.agents):  # a set's order changes with PYTHONHASHSEED
            w.exchange(device)
        roll = self.rng.random()
        if roll < 0.45:
            return self._work(self.rng.choice(self.names))
        if roll < 0.60:
            return self._sync(self.rng.choice(self.names))
        if roll < 0.85:
            return self._fault(self.rng.choice(self.names))
        if roll < 0.96:
            healable = [d for d in self.names if d in w.offline or w.toxics[d]]
            if healable:
                return self._heal(self.rng.choice(healable))
            return self._work(self.rng.choice(self.names))
        return {"do": "pause", "seconds": round(self.rng.uniform(0.2, 1.5), 2)}

    def _work(self, device: str) -> dict[str, Any]:
        accounts = self._held(device, "account")
        if not accounts:
            return self._create_account(device)
        kinds = ["create_account", "log_visit", "take_order", "write_note", "edit_field"]
        weights = [22, 16, W_ORDER, 10, 28]
        if self.caps.backoffice and self.world.on_server:
            kinds.append("backoffice_edit")
            weights.append(10)
        if self.caps.delete:
            kinds.append("delete_record")
            weights.append(4)
        holders = [d for d in self.names if self._held(d, "order")]
        if self.caps.order_lines and holders:  # orders grow several lines, added on any device holding them
            kinds.append("add_order_line")
            weights.append(W_ADD_LINE)
        if self.caps.territories:
            kinds += ["move_account", "assign"]
            weights += [W_MOVE, W_ASSIGN]
        kind = self.rng.choices(kinds, weights)[0]
        account = self.rng.choice(accounts)
        faker = self._faker()
        if kind == "create_account":
            return self._create_account(device)
        if kind == "move_account":
            return self._move()
        if kind == "assign":
            return self._assign(device)
        if kind == "log_visit":
            step = {"do": "log_visit", "device": device, "account": account,
                    "outcome": self._unique(faker.catch_phrase)}
            step["ref"] = self._handle("v", "visit", device)
            self.world.parent[step["ref"]] = account
            return self._maybe_killed(step)
        if kind == "take_order":
            step = {"do": "take_order", "device": device, "account": account, **self._line(),
                    "ref": self._handle("o", "order", device)}
            self.world.parent[step["ref"]] = account
            return self._maybe_killed(step)
        if kind == "add_order_line":
            device, order = self._order_to_extend(device, holders)
            return self._maybe_killed({"do": "add_order_line", "device": device, "order": order, **self._line()})
        if kind == "write_note":
            return self._maybe_killed({"do": "write_note", "device": device, "account": account,
                                       "text": self._unique(lambda: faker.sentence(nb_words=8))})
        if kind == "backoffice_edit":
            return self._edit("server", self.world.on_server)
        if kind == "delete_record":  # the handle stays: devices that have not seen the delete still use it
            return self._maybe_killed({"do": "delete_record", "device": device, "entity": "account",
                                       "record": account})
        return self._edit(device, self.world.known[device])

    def _order_to_extend(self, device: str, holders: list[str]) -> tuple[str, str]:
        """(device, order) for a new line: mostly an order taken on another device, when one has
        reached a device, since lines added concurrently on two devices must all survive."""
        pairs = [(d, o) for d in holders for o in self._held(d, "order")]
        foreign = [(d, o) for d, o in pairs if d != self.world.creator[o]]
        if foreign and self.rng.random() < 0.7:
            return self.rng.choice(foreign)
        own = [(d, o) for d, o in pairs if d == device]
        return self.rng.choice(own or pairs)

    def _line(self) -> dict[str, Any]:
        """An order line no other step uses, so the checkers can tell every line's action apart."""
        while True:
            line = {"sku": self.rng.choice(SKUS), "qty": self.rng.randint(1, 48),
                    "price": f"{self.rng.randint(5, 9999) / 100:.2f}"}
            signature = "line {sku}:{qty}:{price}".format(**line)
            if signature not in self.values:
                self.values.add(signature)
                return line

    def _create_account(self, device: str) -> dict[str, Any]:
        faker = self._faker()
        step = {"do": "create_account", "device": device, "name": self._unique(faker.company),
                "city": self._unique(faker.city)}
        step["ref"] = self._handle("a", "account", device)
        if self.world.scope[device]:  # a new account takes its rep's default territory (the first)
            self.world.territory[step["ref"]] = self.world.scope[device][0]
        return self._maybe_killed(step)

    def _maybe_killed(self, step: dict[str, Any]) -> dict[str, Any]:
        """Now and then a write is SIGKILLed a seeded moment after it starts."""
        if self.rng.random() < 0.08:
            step["kill_after"] = round(self.rng.uniform(0.02, 0.4), 3)
        return step

    def _edit(self, who: str, holdings: list[str]) -> dict[str, Any]:
        """Edits of the same field someone else just edited, of another field of that record, or any."""
        editable = [h for h in holdings if self.world.entity[h] in EDITABLE]
        if not editable:
            return self._create_account(self.rng.choice(self.names) if who == "server" else who)
        last = self.world.last_edit
        roll = self.rng.random()
        if last and last[0] != who and last[2] in editable and roll < 0.5:
            entity, handle, name = last[1], last[2], last[3]
        elif last and last[2] in editable and roll < 0.7 and len(EDITABLE[last[1]]) > 1:
            entity, handle = last[1], last[2]
            name = self.rng.choice([f for f in EDITABLE[entity] if f != last[3]])
        else:
            handle = self.rng.choice(editable)
            entity = self.world.entity[handle]
            name = self.rng.choice(EDITABLE[entity])
        faker = self._faker()
        make = {"name": faker.company, "city": faker.city, "outcome": faker.catch_phrase}[name]
        self.world.last_edit = (who, entity, handle, name)
        step = {"do": "backoffice_edit"} if who == "server" else {"do": "edit_field", "device": who}
        return {**step, "entity": entity, "record": handle, "field": name, "value": self._unique(make)}

    def _sync(self, device: str) -> dict[str, Any]:
        w = self.world
        kinds = ["reopen"]
        weights = [12]
        if self.caps.sync:
            kinds += ["sync", "sync_background", "sync_killed"]
            weights += [45, 18, 12]
        if self.caps.agent:
            kinds.append("stop_background_sync" if device in w.agents else "start_background_sync")
            weights.append(16)
        kind = self.rng.choices(kinds, weights)[0]
        if kind == "reopen":
            return {"do": "reopen", "device": device}
        if kind in ("start_background_sync", "stop_background_sync"):
            (w.agents.add if kind == "start_background_sync" else w.agents.discard)(device)
            return {"do": kind, "device": device}
        w.exchange(device)
        if kind == "sync_background":
            return {"do": "sync", "device": device, "background": True}
        if kind == "sync_killed":
            return {"do": "sync", "device": device, "kill_after": round(self.rng.uniform(0.05, 1.0), 3)}
        return {"do": "sync", "device": device}

    def _fault(self, device: str) -> dict[str, Any]:
        w = self.world
        kinds, weights = (["kill", "server_kill"], [20, 9]) if self.caps.server_faults else (["kill"], [20])
        if device not in w.offline:
            kinds.append("offline")
            weights.append(25)
        if w.toxics[device] < 2:
            kinds.append("toxic")
            weights.append(40)
        kind = self.rng.choices(kinds, weights)[0]
        if kind == "kill":
            w.agents.discard(device)
            return {"do": "kill", "device": device}
        if kind == "server_kill":
            w.server_down = 1
            return {"do": "server_kill"}
        if kind == "offline":
            w.offline.add(device)
            return {"do": "offline", "device": device}
        w.toxics[device] += 1
        return self._toxic(device)

    def _toxic(self, device: str) -> dict[str, Any]:
        rng = self.rng
        kind = rng.choice(TOXICS)
        stream = rng.choice(("upstream", "downstream"))
        if kind == "latency":
            attributes = {"latency": rng.randint(50, 1500), "jitter": rng.randint(0, 300)}
        elif kind == "timeout":
            # 0 keeps the connection silent until the client gives up: rare, it costs a client timeout.
            attributes = {"timeout": 0 if rng.random() < 0.1 else rng.randint(100, 3000)}
        elif kind == "reset_peer":
            attributes = {"timeout": rng.randint(0, 500)}
        elif kind == "limit_data":
            attributes = {"bytes": rng.randint(1, 4000)}
        else:  # Toxiproxy 2.12 panics (slice bounds out of range) when size_variation >= average_size
            size = rng.randint(1, 64)
            attributes = {"average_size": size, "size_variation": rng.randint(0, size - 1),
                          "delay": rng.randint(0, 2000)}
        self.toxic_names += 1
        return {"do": "toxic", "device": device, "type": kind, "stream": stream,
                "name": f"{kind}-{self.toxic_names}", "attributes": attributes}

    def _heal(self, device: str) -> dict[str, Any]:
        w = self.world
        if device in w.offline and (not w.toxics[device] or self.rng.random() < 0.6):
            w.offline.discard(device)
            return {"do": "online", "device": device}
        w.toxics[device] = 0
        return {"do": "clear_toxics", "device": device}


def generate(seed: int, *, devices: int = 3, steps: int = 20,
             capabilities: Capabilities = Capabilities()) -> Schedule:
    """The schedule of one chaos run: the same seed and sizes always give the same schedule."""
    return Generator(seed, devices=devices, steps=steps, capabilities=capabilities).schedule()
