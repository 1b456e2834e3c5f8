"""SUT profiles: the TOML file that tells the harness how to run each contract action.

A profile maps every action to a command (an argv list, never a shell line) with ``{placeholder}``
slots. Loading checks everything that can be checked before a run, so a typo fails in a second
with the file and the key, instead of as a confusing anomaly twenty minutes in.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .locations import SHIPPED_PROFILES, fixtures_dir

FIXTURES = fixtures_dir()  # {fixtures}: the checkout's fixtures/, or the copy the wheel ships

# Placeholders the harness itself fills in everywhere.
COMMON = frozenset({"python", "fixtures", "profile_dir"})
# {server_url} in a server command is the server's own URL (not a device's proxy): the hosted
# server's ``url``, or http://127.0.0.1:{port} for a server the harness starts.
SERVER = COMMON | {"server_dir", "port", "server_url"}
# A hosted server (``[server] url``, docs/driver-contract.md "Hosted vendors"): the harness starts
# nothing, so there is no {server_dir} or {port} to fill in.
HOSTED_SERVER = COMMON | {"server_url"}
DEVICE = COMMON | {"home", "server_url", "rep", "org", "token"}

# Each action and the arguments the harness passes it (beyond DEVICE).
ACTION_ARGS: dict[str, frozenset[str]] = {
    "create_account": frozenset({"name", "city"}),
    "log_visit": frozenset({"account_id", "outcome"}),
    "take_order": frozenset({"account_id", "sku", "qty", "price"}),
    "add_order_line": frozenset({"order_id", "sku", "qty", "price"}),
    "write_note": frozenset({"account_id", "text"}),
    "edit_field": frozenset({"entity", "record_id", "field", "value"}),
    "delete_record": frozenset({"entity", "record_id"}),
    "sync": frozenset(),
    "start_background_sync": frozenset(),
    "stop_background_sync": frozenset(),
    "outbox": frozenset(),
    "export": frozenset(),
}
REQUIRED_ACTIONS = ("create_account", "log_visit", "take_order", "write_note", "edit_field", "outbox", "export")
OPTIONAL_ACTIONS = ("sync", "start_background_sync", "stop_background_sync", "delete_record", "add_order_line")

# Every template slot of a profile: (section, key) -> (required, placeholders it may use).
SLOTS: dict[tuple[str, str], tuple[bool, frozenset[str]]] = {
    ("sut", "version"): (False, COMMON),
    ("server", "start"): (True, SERVER),
    ("server", "provision"): (True, SERVER | {"org", "rep"}),
    ("server", "backoffice_edit"): (False, SERVER | {"org", "entity", "record_id", "field", "value"}),
    ("server", "export"): (True, SERVER | {"org"}),
    # Territories (optional): what one rep's devices must hold, and giving a rep a territory.
    ("server", "rep_export"): (False, SERVER | {"org", "rep"}),
    ("server", "assign"): (False, SERVER | {"org", "rep", "territory"}),
    ("server", "unassign"): (False, SERVER | {"org", "rep", "territory"}),  # take a territory away
    ("device", "init"): (True, DEVICE),
    # Life events (docs/driver-contract.md): how to back up and restore state where a plain copy of
    # {home} / {server_dir} while the process is stopped is not right (optional).
    ("device", "backup"): (False, DEVICE | {"backup_dir"}),
    ("device", "restore"): (False, DEVICE | {"backup_dir"}),
    ("server", "backup"): (False, SERVER | {"backup_dir"}),
    ("server", "restore"): (False, SERVER | {"backup_dir"}),
    **{("actions", name): (name in REQUIRED_ACTIONS, DEVICE | args) for name, args in ACTION_ARGS.items()},
}
KNOWN = frozenset().union(*(names for _, names in SLOTS.values()))
SECTIONS = ("sut", "server", "device", "actions", "exit_codes", "timeouts", "env")

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


class MissingValue(KeyError):
    """A placeholder rendered without a value."""

    def __str__(self) -> str:
        return str(self.args[0])


class ProfileError(ValueError):
    """A profile that cannot be used: says which file, which key, and what is wrong."""

    def __init__(self, path: str | Path, key: str | None, message: str) -> None:
        self.path = Path(path)
        self.key = key
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + message)


def placeholders(text: str) -> list[str]:
    """The ``{name}`` placeholders in ``text``, in order (``{{`` and ``}}`` are literal braces)."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(text) if m.group(1)]


def _substitute(text: str, values: Mapping[str, Any], where: str) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        if name not in values or values[name] is None:
            raise MissingValue(f"{where}: no value for placeholder {{{name}}}")
        return str(values[name])

    return _PLACEHOLDER.sub(replace, text)


@dataclass(frozen=True)
class Template:
    """One command of the profile: its argv with placeholders, and where it came from."""

    key: str
    argv: tuple[str, ...]

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(name for arg in self.argv for name in placeholders(arg))

    def render(self, **values: Any) -> list[str]:
        return render(self, **values)


def render(template: Template | str | list[str] | tuple[str, ...], **values: Any) -> list[str] | str:
    """Fill every placeholder of each argv element (or of one string); a missing value is MissingValue.

    Values are inserted as they are: one argv element stays one argument, whatever it contains.
    """
    if isinstance(template, str):
        return _substitute(template, values, "template")
    key = template.key if isinstance(template, Template) else "template"
    argv = template.argv if isinstance(template, Template) else template
    return [_substitute(arg, values, key) for arg in argv]


@dataclass(frozen=True)
class ExitCodes:
    """How a command's exit code reads: saved, definitely not saved, or unknown (anything else)."""

    saved: frozenset[int] = frozenset({0})
    not_saved: frozenset[int] = frozenset()

    def classify(self, code: int | None) -> str:
        """``ok``, ``fail`` or ``unknown``; None (killed, timed out) is always unknown."""
        if code is None:
            return "unknown"
        if code in self.saved:
            return "ok"
        if code in self.not_saved:
            return "fail"
        return "unknown"


@dataclass(frozen=True)
class Profile:
    path: Path
    name: str
    server_start: Template | None  # None for a hosted server (server_url)
    server_ready: str | None  # optional for a hosted server
    provision: Template
    server_export: Template
    device_init: Template
    actions: dict[str, Template]
    backoffice_edit: Template | None = None
    # Territories (optional): the server export for one rep; with it the final exports of each
    # device are compared with their rep's, not the organisation's (docs/driver-contract.md).
    rep_export: Template | None = None
    assign: Template | None = None
    unassign: Template | None = None
    version: Template | None = None
    exit_codes: ExitCodes = field(default_factory=ExitCodes)
    action_timeout_s: float = 30.0
    ready_timeout_s: float = 30.0
    env: dict[str, str] = field(default_factory=dict)
    fixtures_dir: Path = FIXTURES
    # An environment variable the SUT reads as a clock offset in milliseconds (a device whose
    # clock is wrong); without it the clock-skew scenario cannot run and fails saying so.
    clock_skew_env: str | None = None
    # Optional life-event commands: {backup_dir} is where the copy goes and comes from.
    life: dict[str, Template] = field(default_factory=dict)  # "device.backup", "server.restore", ...
    # The vendor's own server (e.g. staging), which the harness reaches but does not start, crash or
    # restore: ``[server] url``. Its scenarios that need those are not exercised (docs/levels.md).
    server_url: str | None = None

    @property
    def hosted(self) -> bool:
        return self.server_url is not None

    @property
    def base_values(self) -> dict[str, str]:
        """The placeholders every command may use."""
        return {"python": sys.executable, "fixtures": str(self.fixtures_dir),
                "profile_dir": str(self.path.parent)}

    def has(self, action: str) -> bool:
        return action in self.actions

    def command(self, template: Template | str, **values: Any) -> list[str]:
        """The argv to run: ``template`` (one of this profile's templates, or a contract action's
        name) with its placeholders filled from the profile's own values (python, fixtures,
        profile_dir) and ``values`` (home, server_url, rep, org, token, server_dir, port and the
        action's arguments). The one place a command line is built from a profile.

        Raises MissingValue for a placeholder without a value, MissingAction for an optional
        action the profile does not define.
        """
        if isinstance(template, str):
            template = self.action(template)
        return render(template, **{**self.base_values, **values})

    def ready_url(self, port: int | None = None) -> str | None:
        """The URL polled until the server started on ``port`` answers (``server.ready``); for a
        hosted server, its ``ready`` URL if the profile gives one (None otherwise)."""
        if self.server_ready is None:
            return None
        return _substitute(self.server_ready, {**self.base_values, "port": port, "server_url": self.server_url},
                           "server.ready")

    def action(self, name: str) -> Template:
        if name not in ACTION_ARGS:
            raise KeyError(f"{name!r} is not a contract action (known: {', '.join(ACTION_ARGS)})")
        if name not in self.actions:
            raise MissingAction(self, name)
        return self.actions[name]

    def environ(self) -> dict[str, str]:
        """The environment commands run with: the harness's own, plus the profile's [env]."""
        extra = {name: _substitute(value, self.base_values, f"env.{name}") for name, value in self.env.items()}
        return {**os.environ, **extra}


def device_values(*, home: str | Path, server_url: str, rep: str, org: str | None = None,
                  token: str | None = None) -> dict[str, Any]:
    """The placeholders of one device's commands (DEVICE, beyond the profile's own)."""
    return {"home": str(home), "server_url": server_url, "rep": rep, "org": org, "token": token}


def server_values(*, server_dir: str | Path, port: int) -> dict[str, Any]:
    """The placeholders of the server's commands (SERVER, beyond the profile's own)."""
    return {"server_dir": str(server_dir), "port": port}


class MissingAction(LookupError):
    """The profile does not define an optional action that a scenario needs."""

    def __init__(self, profile: Profile, action: str) -> None:
        self.action = action
        super().__init__(f"the SUT profile {profile.path} defines no [actions].{action}, "
                         f"which this scenario needs")


def load_profile(path: str | Path, *, fixtures_dir: str | Path | None = None) -> Profile:
    """Read and check a profile; any problem is a ProfileError naming the file and the key. A bare
    name of a shipped profile (``reference``) is that profile, for every command that reads one."""
    from .locations import resolve_profile

    path = resolve_profile(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(path, None, "no such file (a bare name picks a shipped profile: "
                                       f"{', '.join(SHIPPED_PROFILES)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(path, None, f"cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(path, None, f"not valid TOML: {exc}") from None

    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ProfileError(path, f"[{unknown[0]}]", f"unknown section (known: {', '.join(SECTIONS)})")
    for section in SECTIONS:
        if section in data and not isinstance(data[section], dict):
            raise ProfileError(path, section, "must be a table, e.g. [" + section + "]")
    env = _env(path, data.get("env", {}))
    base = {"python": sys.executable, "fixtures": str(fixtures_dir or FIXTURES), "profile_dir": str(path.parent)}
    search_path = env.get("PATH", os.environ.get("PATH", ""))

    def template(section: str, key: str) -> Template | None:
        required, allowed = SLOTS[(section, key)]
        value = data.get(section, {}).get(key)
        name = f"{section}.{key}"
        if value is None:
            if required:
                raise ProfileError(path, name, "missing (a command is required here)")
            return None
        if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
            raise ProfileError(path, name, 'must be a non-empty list of strings, e.g. ["client", "--json"]')
        _check_placeholders(path, name, value, allowed)
        _check_program(path, name, value[0], base, search_path)
        return Template(name, tuple(value))

    for section in ("server", "device", "actions"):
        extra = sorted(set(data.get(section, {})) - {k for s, k in SLOTS if s == section}
                       - {"ready", "clock_skew_env", "url"})
        if extra:
            known = ", ".join(k for s, k in SLOTS if s == section)
            raise ProfileError(path, f"{section}.{extra[0]}", f"unknown key (known: {known})")

    server = data.get("server", {})
    hosted = _hosted_url(path, server)
    ready = server.get("ready")
    if hosted is not None and ready is None:
        pass  # a hosted server need not offer a health URL: provisioning a rep shows it answers
    elif not isinstance(ready, str) or not ready:
        raise ProfileError(path, "server.ready", 'missing: a URL polled until it answers 200, '
                                                 'e.g. "http://127.0.0.1:{port}/health"')
    else:
        _check_placeholders(path, "server.ready", [ready], HOSTED_SERVER if hosted else COMMON | {"port"})
    if hosted is not None:
        _check_hosted(path, server, data)

    skew_env = data.get("device", {}).get("clock_skew_env")
    if skew_env is not None and (not isinstance(skew_env, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", skew_env)):
        raise ProfileError(path, "device.clock_skew_env", "must be the name of an environment variable")
    actions = {name: t for name in ACTION_ARGS if (t := template("actions", name)) is not None}
    name = data.get("sut", {}).get("name", path.stem)
    if not isinstance(name, str):
        raise ProfileError(path, "sut.name", "must be a string")
    return Profile(
        path=path, name=name, version=template("sut", "version"),
        server_start=None if hosted else template("server", "start"), server_ready=ready, server_url=hosted,
        provision=template("server", "provision"), server_export=template("server", "export"),
        backoffice_edit=template("server", "backoffice_edit"), device_init=template("device", "init"),
        rep_export=template("server", "rep_export"), assign=template("server", "assign"),
        unassign=template("server", "unassign"),
        actions=actions, exit_codes=_exit_codes(path, data.get("exit_codes", {})),
        action_timeout_s=_seconds(path, data, "action_s", 30.0),
        ready_timeout_s=_seconds(path, data, "ready_s", 30.0),
        env=env, fixtures_dir=Path(fixtures_dir or FIXTURES), clock_skew_env=skew_env,
        life={f"{section}.{key}": t for section in ("device", "server") for key in ("backup", "restore")
              if (t := template(section, key)) is not None},
    )


def _hosted_url(path: Path, server: dict) -> str | None:
    """``[server] url``: the vendor's hosted server, http(s)://host[:port][/path]; None without it."""
    url = server.get("url")
    if url is None:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url) if isinstance(url, str) else None
    try:
        port = parts.port if parts else None
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or port == 0:
        raise ProfileError(path, "server.url", 'must be the hosted server\'s http(s) URL, e.g. '
                                              '"https://staging.vendor.example" or "http://10.0.0.5:8080/api"')
    return url.rstrip("/")


def _check_hosted(path: Path, server: dict, data: dict) -> None:
    """A hosted profile starts, crashes and restores nothing: those commands cannot be given, and
    its server commands have no {server_dir} or {port} to use."""
    for key in ("start", "backup", "restore"):
        if key in server:
            raise ProfileError(path, f"server.{key}", "a hosted server (server.url) is not started, backed up "
                                                      "or restored by the harness: remove this key or server.url")
    for key in ("provision", "export", "backoffice_edit"):
        value = server.get(key)
        if isinstance(value, list):
            _check_placeholders(path, f"server.{key}", [v for v in value if isinstance(v, str)],
                                SLOTS[("server", key)][1] - {"server_dir", "port"})


def _check_placeholders(path: Path, key: str, argv: list[str], allowed: frozenset[str]) -> None:
    for arg in argv:
        for name in placeholders(arg):
            if name not in KNOWN:
                raise ProfileError(path, key, f"unknown placeholder {{{name}}} in {arg!r} "
                                              f"(known: {', '.join(sorted(KNOWN))})")
            if name not in allowed:
                raise ProfileError(path, key, f"placeholder {{{name}}} has no value here "
                                              f"(available: {', '.join(sorted(allowed))})")


def _check_program(path: Path, key: str, program: str, base: dict[str, str], search_path: str) -> None:
    if set(placeholders(program)) - set(base):
        return  # depends on a per-run value such as {home}: checked when it runs
    expanded = _substitute(program, base, key)
    if shutil.which(expanded, path=search_path) is None:
        raise ProfileError(path, key, f"program {expanded!r} not found on PATH (or not executable)")


def _env(path: Path, env: dict) -> dict[str, str]:
    out = {}
    for name, value in env.items():
        if not isinstance(value, str):
            raise ProfileError(path, f"env.{name}", "must be a string")
        _check_placeholders(path, f"env.{name}", [value], COMMON)
        out[name] = value
    return out


def _exit_codes(path: Path, table: dict) -> ExitCodes:
    codes = {}
    for key in ("saved", "not_saved"):
        value = table.get(key, [0] if key == "saved" else [])
        if not isinstance(value, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
            raise ProfileError(path, f"exit_codes.{key}", "must be a list of integers")
        codes[key] = frozenset(value)
    extra = sorted(set(table) - {"saved", "not_saved"})
    if extra:
        raise ProfileError(path, f"exit_codes.{extra[0]}", "unknown key (known: saved, not_saved)")
    if not codes["saved"]:
        raise ProfileError(path, "exit_codes.saved", "must list at least one code")
    both = codes["saved"] & codes["not_saved"]
    if both:
        raise ProfileError(path, "exit_codes", f"code {min(both)} cannot be both saved and not_saved")
    return ExitCodes(**codes)


def _seconds(path: Path, data: dict, key: str, default: float) -> float:
    extra = sorted(set(data.get("timeouts", {})) - {"action_s", "ready_s"})
    if extra:
        raise ProfileError(path, f"timeouts.{extra[0]}", "unknown key (known: action_s, ready_s)")
    value = data.get("timeouts", {}).get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ProfileError(path, f"timeouts.{key}", "must be a positive number of seconds")
    return float(value)
