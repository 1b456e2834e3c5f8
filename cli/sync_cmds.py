"""Sync commands: attach a device to a server, sync once, see status, run the background agent."""


from typing import Annotated

import typer

from cli import output
from cli.common import Json, Token, TokenFile, home, open_device, read_token, sub_app

login_app = sub_app("Attach this device to a sync server.")
sync_app = sub_app("Push queued changes, then pull everyone else's.")
status_app = sub_app("Pending changes, last sync, conflicts and the agent's state.")
# No help= here: the group's help is the callback's docstring, examples included.
agent_app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False,
                        invoke_without_command=True)


@login_app.command("login")
def login(
    ctx: typer.Context,
    server: Annotated[str, typer.Option("--server", help="Sync server URL, e.g. http://127.0.0.1:8765")],
    token: Token = None,
    token_file: TokenFile = None,
    as_json: Json = False,
) -> None:
    """Store the server URL and token for this device (pending changes are kept).

    The token comes from --token-file FILE, from stdin with `--token -`, or from the CRM_TOKEN
    environment variable. `--token VALUE` still works, but any user of this machine can read a
    command line (ps), so keep tokens off it.

    \b
    Example:
      printf '%s' "$TOKEN" | crm login --server http://127.0.0.1:8765 --token -
      crm login --server http://127.0.0.1:8765 --token-file ~/.crm-token
    """
    from crm.errors import UsageError, ValidationError

    if not server.startswith(("http://", "https://")):
        raise ValidationError(f"--server {server!r}: give an http:// or https:// URL")
    token = read_token(token, token_file)
    if token is None:
        raise UsageError("give the device token: --token-file FILE, --token - to read it from stdin, or the "
                         "CRM_TOKEN environment variable")
    with open_device(ctx) as device:
        device.login(server.rstrip("/"), token)
        output.emit({"id": device.device_id, "server": server.rstrip("/")}, as_json=as_json,
                    text=f"device {device.device_id} now syncs with {server}")


@sync_app.command("sync")
def sync(ctx: typer.Context, as_json: Json = False) -> None:
    """Sync once: push every queued change in batches, then pull until up to date.

    Safe to interrupt or kill at any moment: nothing leaves the outbox before the server
    acknowledged it. Exit codes: 0 synced, 20 unreachable, 21 token refused, 22 server error,
    23 no server configured, 24 synced but the server rejected some changes (they wait in
    `crm outbox --rejected`; the result is still printed).

    \b
    Example:
      crm sync --json
    """
    from crm.errors import OpsRejectedError
    from crm.sync import sync_once

    with open_device(ctx) as device:
        result = sync_once(device)
        r = result.to_json()
        restamped = f", re-stamped {r['restamped']} (this device's clock was ahead)" if r["restamped"] else ""
        output.emit(r, as_json=as_json,
                    text=f"synced: pushed {r['pushed']}, rejected {r['rejected']}, pulled {r['pulled']}{restamped}")
    if result.rejected:
        raise OpsRejectedError(f"the server rejected {_changes(result.rejected)} in this sync; kept aside and "
                               "not sent again: see `crm outbox --rejected` for the reasons",
                               details={"rejected": result.rejected})


def _changes(count: int) -> str:
    return f"{count} change" + ("" if count == 1 else "s")


@status_app.command("status")
def status(ctx: typer.Context, as_json: Json = False) -> None:
    """Show pending and rejected changes, open conflicts, the last sync and the agent.

    \b
    Example:
      crm status --json
    """
    from crm.agent import read_state

    with open_device(ctx) as device:
        info = device.status()
    info["agent"] = read_state(home(ctx))
    output.emit(info, as_json=as_json)
    if info["rejected"] and not as_json:
        last = info["last_sync_rejected"]
        output.message(f"{_changes(info['rejected'])} rejected by the server "
                       + (f"({last} in the last sync) " if last else "")
                       + "will not sync: see `crm outbox --rejected` for the reasons")


@agent_app.callback()
def agent(ctx: typer.Context) -> None:
    """Run background sync: `crm agent run` in the foreground, or start|stop|status detached.

    \b
    Example:
      crm agent start      # keeps syncing after this command returns, restarts on reopen
      crm agent status --json
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(agent_run, ctx=ctx)


@agent_app.command("run")
def agent_run(ctx: typer.Context) -> None:
    """The sync loop in the foreground until Ctrl-C / SIGTERM.

    \b
    Example:
      crm agent run        # in the foreground until Ctrl-C; `crm agent` alone does the same
    """
    from crm.agent import run

    run(home(ctx))


@agent_app.command("start")
def agent_start(ctx: typer.Context, as_json: Json = False) -> None:
    """Start the agent detached and switch background sync on for this device.

    With background sync on, any later crm command on this home restarts the agent if it was
    force-quit, so queued work goes out by itself.

    \b
    Example:
      crm agent start --json   # {"running": true, "pid": 12345}
    """
    from crm.agent import start_detached

    with open_device(ctx, reopen_agent=False) as device:
        device.set_autosync(True)
    pid = start_detached(home(ctx))
    output.emit({"running": True, "pid": pid}, as_json=as_json, text=f"sync agent running (pid {pid})")


@agent_app.command("stop")
def agent_stop(ctx: typer.Context, as_json: Json = False) -> None:
    """Stop the agent and switch background sync off.

    \b
    Example:
      crm agent stop
    """
    from crm.agent import stop_detached

    with open_device(ctx, reopen_agent=False) as device:
        device.set_autosync(False)
    stopped = stop_detached(home(ctx))
    output.emit({"running": False, "stopped": stopped}, as_json=as_json,
                text="sync agent stopped" if stopped else "sync agent was not running")


@agent_app.command("status")
def agent_status(ctx: typer.Context, as_json: Json = False) -> None:
    """Whether the agent runs, its state (synced/offline/retrying/auth_refused) and last error.

    \b
    Example:
      crm agent status --json
    """
    from crm.agent import read_state

    output.emit(read_state(home(ctx)), as_json=as_json)
