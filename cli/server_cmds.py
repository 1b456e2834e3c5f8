"""`crm server ...`: run the sync server and administer its data directory."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated

import typer

from cli import output
from cli.common import Json, invalid, parse_assignments, sub_app

server_app = sub_app("Run the sync server and administer its organisations, reps and data.")

DataDir = Annotated[Path, typer.Option("--data", metavar="DIR", help="The server's data directory")]
Org = Annotated[str, typer.Option("--org", help="Organisation (tenant) name")]


def _store(data: Path, *, create: bool = False):
    from crm.server import ServerStore

    return ServerStore.open(data, create=create)


@server_app.command("serve")
def serve(
    data: DataDir,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8765,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
) -> None:
    """Start the sync server (SQLite under DIR; one command, no other service).

    \b
    Example:
      crm server serve --data ./server --port 8765
    """
    from crm.server import serve as run_server

    if not 0 < port < 65536:
        raise invalid(f"--port {port}: give a TCP port between 1 and 65535")
    _store(data, create=True)
    output.message(f"crm sync server on http://{host}:{port} (data: {data})")
    run_server(str(data), host=host, port=port, log_level=log_level)


@server_app.command("add-rep")
def add_rep(data: DataDir, org: Org,
            rep: Annotated[str, typer.Option("--rep", help="The rep's name")], as_json: Json = False) -> None:
    """Create a device token for a rep (and the organisation if new). The token is shown once.

    \b
    Example:
      crm server add-rep --data ./server --org acme --rep rep-1 --json
    """
    token = _store(data, create=True).add_token(org, rep, role="device")
    output.emit({"org": org, "rep": rep, "token": token}, as_json=as_json, text=token)


@server_app.command("add-admin")
def add_admin(data: DataDir, org: Org,
              name: Annotated[str, typer.Option("--name", help="Who uses it")] = "backoffice",
              as_json: Json = False) -> None:
    """Create a back-office token (for /v1/admin/edit and /v1/admin/export)."""
    token = _store(data, create=True).add_token(org, name, role="admin")
    output.emit({"org": org, "name": name, "token": token}, as_json=as_json, text=token)


@server_app.command("revoke")
def revoke(data: DataDir, org: Org, rep: Annotated[str, typer.Option("--rep")], as_json: Json = False) -> None:
    """Revoke every token of a rep: the device's next request is refused; its outbox is kept."""
    count = _store(data).revoke(org, rep)
    output.emit({"org": org, "rep": rep, "revoked": count}, as_json=as_json, text=f"revoked {count} token(s)")


@server_app.command("import-products")
def import_products(data: DataDir, org: Org,
                    file: Annotated[Path, typer.Argument(help="CSV with sku,name,price[,currency]")],
                    as_json: Json = False) -> None:
    """Load the product catalogue from a CSV (upsert by SKU); devices receive it by sync.

    \b
    Example:
      crm server import-products --data ./server --org acme fixtures/csv/products.csv
    """
    from crm.errors import ImportFileError

    try:
        with open(file, newline="", encoding="utf-8") as fh:
            rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                    for row in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImportFileError(f"cannot read {file}: {exc}") from None
    if not rows:
        raise ImportFileError(f"{file} has no product rows")
    result = _store(data).import_products(org, rows)
    output.emit(result, as_json=as_json,
                text=f"products: {result['created']} created, {result['updated']} updated, "
                     f"{result['unchanged']} unchanged")


@server_app.command("edit")
def edit(data: DataDir, entity: Annotated[str, typer.Argument(help="account, contact, visit, order")],
         record_id: Annotated[str, typer.Argument(metavar="ID")],
         set_: Annotated[list[str], typer.Option("--set", help="FIELD=VALUE (repeatable)")],
         org: Annotated[str | None, typer.Option("--org", help="Needed only if the id is ambiguous")] = None,
         as_json: Json = False) -> None:
    """A back-office edit on the server, merged by the same rules as a rep's edit.

    \b
    Example:
      crm server edit --data ./server account 0192... --set phone=0113-555-0100
    """
    result = _store(data).edit(org, entity, record_id, parse_assignments(set_))
    output.emit(result, as_json=as_json)


@server_app.command("export")
def export(data: DataDir, org: Org, as_json: Json = False) -> None:
    """Print the organisation's state in the canonical export JSON (same bytes as `crm export`)."""
    import sys

    from crm import canonical_json

    sys.stdout.write(canonical_json(_store(data).export(org)))


@server_app.command("stats")
def stats(data: DataDir, org: Org, as_json: Json = False) -> None:
    """Counts of ops and records for an organisation."""
    result = _store(data).stats(org)
    output.emit(result, as_json=as_json, text=json.dumps(result))
