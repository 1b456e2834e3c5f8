"""The ``crm`` command: global options, lazily loaded command modules, and the one place where
failures become exit codes (docs/exit-codes.md).

Startup speed matters (a rep logs a visit in a doorway), so a command module is imported only
when its command runs, and the engine only inside the command function.
"""


import copy
import errno
import importlib
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cli import coercion, output
from cli.common import Home

# ---------------------------------------------------------------------------------------------
# Command registry: top-level command name -> "module:attribute" of a typer.Typer.
# Modules load lazily, only for the command being run (or all of them for `crm --help`).
# Register further command modules here.
# ---------------------------------------------------------------------------------------------
COMMANDS: dict[str, str] = {
    "init": "cli.device_cmds:init_app",
    "account": "cli.record_cmds:account_app",
    "contact": "cli.record_cmds:contact_app",
    "visit": "cli.record_cmds:visit_app",
    "order": "cli.order_cmds:order_app",
    "note": "cli.record_cmds:note_app",
    "product": "cli.record_cmds:product_app",
    "search": "cli.record_cmds:search_app",
    "outbox": "cli.device_cmds:outbox_app",
    "export": "cli.device_cmds:export_app",
    "conflicts": "cli.device_cmds:conflicts_app",
    "import": "cli.import_cmds:import_app",
    "login": "cli.sync_cmds:login_app",
    "sync": "cli.sync_cmds:sync_app",
    "status": "cli.sync_cmds:status_app",
    "agent": "cli.sync_cmds:agent_app",
    "server": "cli.server_cmds:server_app",
    "certify": "cli.certify_cmds:certify_app",
    "doctor": "cli.doctor_cmds:doctor_app",
}


def click_command(app: typer.Typer, rest: list[str]) -> tuple[Any, bool]:
    """``app`` as a click command, and whether it is whole: of a group, only the subcommand
    ``rest`` names.

    Typer turns every command of a group into click's (each signature read, each annotation
    evaluated) before it runs one: for `crm server export`, eleven commands built for nothing. A
    group without a callback has no options of its own, so the first word of ``rest`` that is
    not an option is the subcommand; when it names none (``--help``, a typo) the whole group is
    built, so its help and "did you mean" still see every command."""
    if (app.registered_callback or app.info.callback or app._add_completion
            or len(app.registered_commands) < 2):
        return typer.main.get_command(app), True
    name = next((word for word in rest if not word.startswith("-")), None)
    chosen = [info for info in app.registered_commands if _command_name(info) == name]
    if not chosen:
        return typer.main.get_command(app), True
    narrowed = copy.copy(app)
    narrowed.registered_commands = chosen
    return typer.main.get_group(narrowed), False  # a group still: `crm server export` keeps its shape


def _command_name(info: Any) -> str:
    return info.name or typer.main.get_command_name(info.callback.__name__)


class CrmGroup(TyperGroup):
    """The root group: loads command modules on demand and maps every failure to an exit code."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(dict.fromkeys([*COMMANDS, *self.commands]))

    _rest: list[str] = []  # what follows the command being resolved: its subcommand, if any

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, _, attribute = COMMANDS[cmd_name].partition(":")
            app = getattr(importlib.import_module(module), attribute)
            command, whole = click_command(app, self._rest)
            command.name = cmd_name
            uniform_metavars(command)
            if not whole:  # built for one subcommand: kept out of the cache, the next call may want another
                return command
            self.commands[cmd_name] = command
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """As typer's, but a mistyped command is compared with every command, loaded or not."""
        self._rest = list(args[1:])
        try:
            return super().resolve_command(ctx, args)
        except _usage_error() as exc:
            if args and "Did you mean" not in exc.message:
                close = did_you_mean(args[0], self.list_commands(ctx))
                if close:
                    exc.message = f"{exc.message.rstrip('.')}. {close}"
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            from crm.errors import InterruptedError_

            raise InterruptedError_("interrupted; finished writes are kept, the unfinished one "
                                    "was rolled back") from None

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        coercion.install()
        try:
            result = super().main(args=argv, prog_name=prog_name or "crm", complete_var=complete_var,
                                  standalone_mode=False, **extra)
            # typer returns an Exit's code (--help, --version) here; commands themselves return None
            code = result if isinstance(result, int) and not isinstance(result, bool) else 0
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001 - this is the one place failures are mapped
            try:
                code = report(exc, as_json=wants_json(argv))
            except Exception:  # reporting must never be what shows a traceback
                sys.stderr.write(f"crm: internal error: {type(exc).__name__}\n")
                code = 1
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # the reader went away (| head): nothing left to tell it
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            code = code or 1
        sys.exit(code)


def did_you_mean(typed: str, known: list[str]) -> str:
    """"Did you mean 'account'?" for a mistyped name: the closest known ones, or those it starts."""
    from difflib import get_close_matches

    close = get_close_matches(typed, known, n=3, cutoff=0.6) or [name for name in known if name.startswith(typed)][:3]
    return f"Did you mean {' or '.join(repr(name) for name in close)}?" if close else ""


# One metavar style in every help text: an upper-case word for a value (TEXT, N, PATH...), the
# choices joined by | for a choice. A command module that names its own metavar keeps it.
_METAVARS = {"str": "TEXT", "int": "N", "float": "NUM", "Path": "PATH", "datetime": "ISO", "bool": "BOOL"}


def _metavar(param: Any) -> str:
    from typing import get_args

    desc = getattr(param, "type_descriptor", None)
    if desc is None:  # a plain click parameter
        return (param.name or "value").upper()
    if desc.is_choice:
        return "|".join(str(getattr(choice, "value", choice)) for choice in desc.choices or ())
    kind = desc.annotation
    if desc.is_list and get_args(kind):
        kind = get_args(kind)[0]
    if param.param_type_name == "argument" and kind is str:
        return (param.name or "value").upper()
    return _METAVARS.get(getattr(kind, "__name__", ""), "VALUE")


def _no_type(ctx: Any = None) -> None:
    return None


def uniform_metavars(command: Any) -> None:
    """Give every option and argument of ``command`` (and its subcommands) a metavar in the house
    style unless it has one."""
    for param in getattr(command, "params", ()):
        if param.metavar is None and not getattr(param, "is_flag", False) and not getattr(param, "count", False):
            param.metavar = _metavar(param)
        if param.param_type_name == "argument" and hasattr(param, "display_type_rich"):
            param.display_type_rich = _no_type  # typer adds "<str>" after an argument's name
    for sub in getattr(command, "commands", {}).values():
        uniform_metavars(sub)


def wants_json(argv: list[str]) -> bool:
    """Whether --json was given; read from argv so errors found while parsing honour it too."""
    return "--json" in (argv[:argv.index("--")] if "--" in argv else argv)


def report(exc: BaseException, *, as_json: bool) -> int:
    """Print a failure on stderr and return its exit code; a traceback only with CRM_DEBUG=1."""
    from crm.errors import CrmError, DiskFullError

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a file crm writes itself
        exc = DiskFullError.at(Path(exc.filename).parent if exc.filename else None, exc.strerror,
                               kept="what was already stored is unchanged")
    if isinstance(exc, CrmError):
        output.error(exc.to_json(), as_json=as_json)
        return exc.exit_code
    if isinstance(exc, (KeyboardInterrupt, typer.Abort)):
        output.error({"error": "interrupted", "message": "interrupted"}, as_json=as_json)
        return 130
    if isinstance(exc, _click_exception()):  # usage errors (2) and click's own failures
        if getattr(exc, "possibilities", None):  # a mistyped option: say it as for a command
            exc.message = f"{exc.message}. Did you mean {' or '.join(sorted(exc.possibilities))}?"
            exc.possibilities = None
        if as_json:
            output.error({"error": "usage", "message": exc.format_message()}, as_json=True)
        else:
            exc.show()
        return exc.exit_code
    if os.environ.get("CRM_DEBUG") == "1":
        import traceback

        traceback.print_exception(exc)
    output.error({"error": "internal", "message": f"internal error: {type(exc).__name__}: {exc} "
                  "(set CRM_DEBUG=1 for a traceback)"}, as_json=as_json)
    return 1


def _usage_error() -> type:
    try:
        from typer._click.exceptions import UsageError
    except ImportError:  # pragma: no cover
        from click.exceptions import UsageError
    return UsageError


def _click_exception() -> type:
    try:  # typer >= 0.2x vendors click
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover
        from click.exceptions import ClickException
    return ClickException


app = typer.Typer(
    cls=CrmGroup,
    name="crm",
    no_args_is_help=True,
    add_completion=True,  # crm --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from crm import __version__

        sys.stdout.write(f"crm {__version__}\n")
        raise typer.Exit()


def _zone(value: str | None) -> str | None:
    if value is not None:  # a bad zone is a usage error whatever the command
        from cli.common import zone_named
        from crm.errors import UsageError

        try:
            zone_named(value)
        except UsageError as exc:
            raise typer.BadParameter(exc.message) from None
    return value


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option(
        "--home", envvar="CRM_HOME", metavar="DIR", show_default=False,
        help="Directory holding the store [default: the platform's user data dir for crm]")] = None,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    tz: Annotated[str | None, typer.Option(
        "--tz", metavar="ZONE", show_default=False, callback=_zone,
        help="Time zone for times given without an offset and for times shown, e.g. Europe/London "
             "[default: the machine's, TZ]")] = None,
) -> None:
    """Offline-first CRM for field sales: every change is stored locally and queued for sync.

    \b
    Example:
      crm --home ~/crm init --rep rep-1
      crm account add --name "Corner Store 42" --city Leeds
    """
    ctx.obj = Home(home, tz)


def run() -> None:
    """Console-script entry point (``crm``)."""
    typer.main.get_command(app).main(prog_name="crm")


if __name__ == "__main__":
    run()
