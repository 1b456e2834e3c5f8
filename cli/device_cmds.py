"""Commands about the device and its store: init, the outbox, the export, conflicts."""


from pathlib import Path
from typing import Annotated

import typer

from cli.common import Json, Token, TokenFile, home, invalid, open_device, read_token, sub_app
from cli.output import emit, message

# -- init -------------------------------------------------------------------------------------
init_app = sub_app("Create this device's store.")


@init_app.command("init")
def init(
    ctx: typer.Context,
    rep: Annotated[str, typer.Option(metavar="NAME", help="The sales rep using this device.")],
    server: Annotated[str | None, typer.Option(metavar="URL", help="Sync server to use later.")] = None,
    token: Token = None,
    token_file: TokenFile = None,
    as_json: Json = False,
) -> None:
    """Create the store for this device at --home; prints the new device id.

    The store appears complete or not at all; an unfinished one left by an interrupted init
    that holds nothing is replaced. The token, if any, comes from --token-file, `--token -`
    (stdin) or CRM_TOKEN, as for `crm login`.

    \b
    Example:
      crm --home ~/crm init --rep rep-1
      crm --home ~/crm init --rep rep-1 --server http://127.0.0.1:8765 --token-file ~/.crm-token
    """
    from crm import Device

    path = home(ctx)
    token = read_token(token, token_file)
    device = Device.init(path, rep=rep, server_url=server, token=token)
    result = {"id": device.device_id, "rep": device.rep, "home": str(path)}
    device.close()
    if device.replaced:
        message(f"replaced the unfinished store an interrupted `crm init` left at {path}: "
                f"{device.replaced}, and it held nothing")
    emit(result, as_json=as_json, text=f"initialised device {result['id']} for {result['rep']} at {path}")


# -- outbox -----------------------------------------------------------------------------------
outbox_app = sub_app("Show the changes waiting to be synced.")


@outbox_app.command("outbox")
def outbox(
    ctx: typer.Context,
    rejected: Annotated[bool, typer.Option("--rejected", help="Show changes the server refused.")] = False,
    limit: Annotated[int | None, typer.Option(min=0, help="List at most this many entries.")] = None,
    as_json: Json = False,
) -> None:
    """Show how many changes wait for sync, and list them oldest first.

    \b
    Example:
      crm outbox --json        # {"pending": 4, "entries": [...]}
    """
    with open_device(ctx) as device:
        queued = device.outbox(rejected=rejected, limit=limit)
    state = "rejected" if rejected else "pending"
    if as_json:
        emit(queued, as_json=True)
        return
    emit(queued, as_json=False, text=f"{queued[state]} {state}")
    if queued["entries"]:
        columns = ("seq", "kind", "entity", "id", "hlc", "attempts") + (("reason",) if rejected else ())
        emit(queued["entries"], as_json=False, columns=columns)


# -- export -----------------------------------------------------------------------------------
export_app = sub_app("Print the store's data as canonical JSON.")


def write_atomically(path: Path, text: str) -> None:
    """Write a whole file or nothing (crm.files.replacing)."""
    from crm.files import replacing

    def cannot(exc: OSError) -> Exception:
        return invalid(f"--output {str(path)!r}: cannot write there ({exc.strerror})")

    with replacing(path, cannot=cannot, kept=f"{path} was not written") as handle:
        handle.write(text)


@export_app.command("export")
def export(
    ctx: typer.Context,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE", dir_okay=False,
        help="Write to FILE (atomically) instead of stdout.")] = None,
    as_json: Json = False,
) -> None:
    """Print every record, as canonical JSON: replicas holding the same data print the same bytes.

    Always JSON; --json is accepted for symmetry with the other commands.

    \b
    Example:
      crm export --output backup.json
    """
    from crm import canonical_json

    with open_device(ctx) as device:
        text = canonical_json(device.export())
    if output is None:
        emit(None, as_json=False, text=text.rstrip("\n"))
    else:
        write_atomically(output, text)
        message(f"exported to {output}")


# -- conflicts --------------------------------------------------------------------------------
conflicts_app = sub_app("List and resolve concurrent edits that sync could not merge.",
                        example="crm conflicts resolve ID --keep loser")


@conflicts_app.command("ls")
def conflicts_ls(ctx: typer.Context, as_json: Json = False) -> None:
    """List open conflicts: the value kept (winner) and the one set aside (loser).

    \b
    Example:
      crm conflicts ls
    """
    with open_device(ctx) as device:
        found = device.conflicts()
    if as_json:
        emit(found, as_json=True)
    else:
        rows = [{**c, "winner": c["winner"]["value"], "loser": c["loser"]["value"]} for c in found]
        emit(rows, as_json=False, columns=("id", "entity", "record", "field", "kind", "winner", "loser"))


@conflicts_app.command("resolve")
def conflicts_resolve(
    ctx: typer.Context,
    conflict_id: Annotated[str, typer.Argument(metavar="ID", help="The conflict's id.")],
    keep: Annotated[str, typer.Option(metavar="winner|loser", help="Which value to keep.")],
    as_json: Json = False,
) -> None:
    """Resolve a conflict by keeping the winner or the loser; the choice syncs like an edit.

    \b
    Example:
      crm conflicts resolve 0190c3e9-... --keep loser
    """
    with open_device(ctx) as device:
        result = device.resolve_conflict(conflict_id, keep)
    emit(result, as_json=as_json,
         text=f"kept the {keep} for {result['entity']} {result['record']} {result['field']}")
