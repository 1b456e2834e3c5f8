"""What every command module shares: the --json option, the sub-app factory, opening the store.

The engine (``crm``) is imported inside these helpers, not at module level, so building the
command line costs nothing beyond typer itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from datetime import tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import typer

if TYPE_CHECKING:
    from crm import Device

Json = Annotated[bool, typer.Option("--json", help="Print only JSON on stdout (errors as JSON on stderr).")]
Token = Annotated[str | None, typer.Option(
    "--token", metavar="TOKEN|-", show_default=False,
    help="The device token from `crm server add-rep`; `-` reads it from stdin. A value given here is "
         "visible to other users of this machine (ps, /proc): prefer `--token -`, --token-file or the "
         "CRM_TOKEN environment variable.")]
TokenFile = Annotated[Path | None, typer.Option(
    "--token-file", metavar="FILE", show_default=False, help="Read the device token from FILE.")]
Limit = Annotated[int | None, typer.Option(
    "--limit", min=0, metavar="N", show_default=False,
    help="At most N rows [default: 50 in a table, every row with --json].")]
All = Annotated[bool, typer.Option("--all", help="Every row (a table shows 50 unless told).")]
Assignments = Annotated[list[str] | None, typer.Option(
    "--set", metavar="FIELD=VALUE", help="Set a field; FIELD= clears it. Repeatable.")]


def sub_app(help: str, *, example: str | None = None) -> typer.Typer:
    """A command group configured like the root: plain help, no completion, no pretty tracebacks."""
    return typer.Typer(help=help, epilog=f"Example: {example}" if example else None, no_args_is_help=True,
                       add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


class Home(NamedTuple):  # not a dataclass: @dataclass costs start-up
    """Where the store lives: --home, else CRM_HOME, else the platform's user data directory;
    and the time zone given with --tz (None: the machine's)."""

    given: Path | None
    tz: str | None = None

    @property
    def path(self) -> Path:
        if self.given is not None:
            return self.given
        import platformdirs

        return Path(platformdirs.user_data_dir("crm"))


def home(ctx: typer.Context) -> Path:
    obj = ctx.obj
    return obj.path if isinstance(obj, Home) else Home(None).path


@contextlib.contextmanager
def open_device(ctx: typer.Context, *, reopen_agent: bool = True) -> Iterator[Device]:
    """The device replica at the chosen home, closed when the command is done with it.

    Reopening the app restarts background sync when the rep has it on (``crm agent start``),
    so work queued before a force-quit goes out without anyone remembering to sync.
    """
    from crm import Device

    device = Device.open(home(ctx))
    if reopen_agent and device.autosync and not device.store.read_only:
        from crm.agent import ensure_running

        ensure_running(home(ctx))
    try:
        yield device
    finally:
        try:  # a command that wrote (and did not fail) says if that work is stuck (opening writes nothing)
            if sys.exc_info()[0] is None and device.store.conn.total_changes:
                warn_if_sync_failing(device)
        finally:
            device.close()


SYNC_WARN_AFTER_ENV = "CRM_SYNC_WARN_AFTER_H"
SYNC_WARN_AFTER_H = 24.0  # hours of failing syncs before every write says so (a refused token: at once)


def warn_if_sync_failing(device: Device) -> None:
    """One line on stderr when syncs have been failing too long or the token was refused
    (docs/cli.md, "When sync is failing"); never on stdout, never a failure of its own."""
    from datetime import UTC, datetime

    from cli.output import message

    try:
        hours = float(os.environ.get(SYNC_WARN_AFTER_ENV) or SYNC_WARN_AFTER_H)
    except ValueError:
        hours = SYNC_WARN_AFTER_H
    try:
        warning = device.sync_warning(now=datetime.now(UTC), warn_after_s=max(0.0, hours) * 3600)
    except Exception:  # noqa: BLE001 - a warning must never fail a write that succeeded
        return
    if warning:
        message(f"crm: warning: {warning}")


# -- local time (docs/cli.md, "Times") ---------------------------------------------------------------
def zone_named(name: str, source: str = "--tz") -> tzinfo:
    """The IANA time zone ``name``; a UsageError (exit 2) naming ``source`` when there is none."""
    from zoneinfo import ZoneInfo

    from crm.errors import UsageError

    try:
        if os.path.isabs(name) and os.path.isfile(name):  # TZ=/usr/share/zoneinfo/Europe/London
            with open(name, "rb") as handle:
                return ZoneInfo.from_file(handle, key=name)
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
        raise UsageError(f"{source} {name!r}: unknown time zone; give an IANA zone name such as "
                         "Europe/London or America/New_York") from None


def machine_zone() -> tzinfo:
    """This machine's time zone: TZ when set (empty: UTC), else /etc/localtime, else UTC."""
    from datetime import UTC

    from crm.errors import UsageError

    tz = os.environ.get("TZ")
    if tz is not None:
        name = tz[1:] if tz.startswith(":") else tz
        return zone_named(name, "TZ") if name else UTC
    try:
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            return zone_named(target.split("zoneinfo/", 1)[1], "/etc/localtime")
    except (OSError, UsageError):  # no link, or a name zoneinfo lacks: read the file instead
        pass
    try:
        from zoneinfo import ZoneInfo

        with open("/etc/localtime", "rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError):
        return UTC


def local_zone(ctx: typer.Context) -> tzinfo:
    """The zone a command reads and shows times in: ``crm --tz ZONE``, else the machine's."""
    obj = ctx.find_root().obj
    given = obj.tz if isinstance(obj, Home) else None
    return zone_named(given) if given else machine_zone()


def _datetime_fields(entity: str) -> list[str]:
    from crm.domain import entity as entity_spec

    return [f.name for f in entity_spec(entity).fields if f.kind == "datetime"]


def local_times(ctx: typer.Context, entity: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each date-time given without an offset taken as local time (its offset added)."""
    from crm.domain import localize_datetime

    names = [name for name in _datetime_fields(entity) if isinstance(values.get(name), str) and values[name]]
    if not names:
        return values
    zone = local_zone(ctx)
    return {**values, **{name: localize_datetime(values[name], zone) for name in names}}


def shown_local(ctx: typer.Context, entity: str, data: Any) -> Any:
    """A record or list of records with its date-times in local time, for a table (never --json)."""
    from crm.domain import in_zone

    names = _datetime_fields(entity)
    zone = local_zone(ctx)

    def one(record: dict[str, Any]) -> dict[str, Any]:
        return {key: in_zone(value, zone) if key in names else value for key, value in record.items()}

    return [one(row) for row in data] if isinstance(data, list) else one(data)


def invalid(message: str, **details: Any) -> Exception:
    """A ValidationError (exit 3) for bad input caught by the CLI before it reaches the engine."""
    from crm.errors import ValidationError

    return ValidationError(message, details=details or None)


def parse_assignments(pairs: list[str]) -> dict[str, str | None]:
    """``--set field=value`` pairs as a field dict; ``field=`` (no value) clears the field."""
    out: dict[str, str | None] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise invalid(f"--set {pair!r}: expected FIELD=VALUE (FIELD= clears the field)", value=pair)
        out[name] = value if value != "" else None
    return out


def fields(**values: Any) -> dict[str, Any]:
    """Only the options the user actually gave, so an edit changes nothing else."""
    return {name: value for name, value in values.items() if value is not None}


def edit_record(ctx: typer.Context, entity: str, record_id: str, changes: dict[str, Any], as_json: bool) -> None:
    """The one edit path: only the given fields change; prints the record (JSON) or its id."""
    from cli.output import emit

    with open_device(ctx) as device:
        record = device.edit(entity, record_id, local_times(ctx, entity, changes))
    emit(record, as_json=as_json, text=record["id"])


def read_token(token: str | None, token_file: Path | None) -> str | None:
    """The device token from --token-file, `--token -` (stdin), --token VALUE or $CRM_TOKEN, in that
    order of preference; None when none was given. Argv is visible to every user of the machine, so
    the other three are the ones to use."""
    from crm.errors import UsageError

    if token is not None and token_file is not None:
        raise UsageError("give the token one way: --token-file FILE, --token - (stdin) or CRM_TOKEN; "
                         "not both --token and --token-file")
    if token_file is not None:
        source = f"--token-file {token_file}"
        try:
            text = token_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise invalid(f"{source}: the file is not text") from None
        except OSError as exc:
            raise UsageError(f"{source}: cannot read it ({exc.strerror})") from None
    elif token == "-":
        source, text = "--token - (stdin)", sys.stdin.read()
    elif token is not None:
        source, text = "--token", token
    elif os.environ.get("CRM_TOKEN"):
        source, text = "CRM_TOKEN", os.environ["CRM_TOKEN"]
    else:
        return None
    value = text.strip()
    if not value:
        raise invalid(f"{source}: the token is empty")
    if len(value) > 1024 or not all(33 <= ord(char) <= 126 for char in value):
        raise invalid(f"{source}: a device token is one word of printable ASCII characters (no spaces or "
                      "line breaks), as `crm server add-rep` prints it")
    return value
