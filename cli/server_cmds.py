"""`crm server ...`: run the sync server and administer its data (a SQLite directory or PostgreSQL)."""


import contextlib
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import output
from cli.common import Json, invalid, parse_assignments, sub_app

server_app = sub_app("Run the sync server and administer its organisations, reps and data.",
                     example="crm server serve --data ./server --port 8765")

DataDir = Annotated[Path | None, typer.Option("--data", metavar="DIR",
                                               help="The server's data directory (embedded SQLite)")]
DbUrl = Annotated[str | None, typer.Option("--db", metavar="URL",
                                           help="Keep the server's data in PostgreSQL instead: postgresql://...")]
Org = Annotated[str, typer.Option("--org", help="Organisation (tenant) name")]


def _target(data: Path | None, db: str | None) -> str:
    """Where the server's data is: exactly one of --data DIR and --db URL."""
    if (data is None) == (db is None):
        raise invalid("give the server's data with --data DIR (SQLite) or --db postgresql://... (not both)")
    if db is not None:
        from crm.server.engine import is_postgres_url

        if not is_postgres_url(db):
            raise invalid(f"--db {db!r}: give a PostgreSQL URL, e.g. postgresql://user@host:5432/crm")
        return db
    return str(data)


@contextlib.contextmanager
def _store(data: Path | None, db: str | None, *, create: bool = False) -> Iterator[Any]:
    """The server store for one command, closed after it (a server may be serving the same file)."""
    from crm.server import ServerStore

    store = ServerStore.open(_target(data, db), create=create)
    try:
        yield store
    finally:
        store.close()


@server_app.command("serve")
def serve(
    data: DataDir = None,
    db: DbUrl = None,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8765,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
    head_timeout: Annotated[float, typer.Option(
        min=0.1, max=3600, metavar="SECONDS",
        help="Close a connection whose request head is not complete this long after it opened "
             "or after the previous answer")] = 5.0,
    body_timeout: Annotated[float, typer.Option(
        min=0.1, max=3600, metavar="SECONDS",
        help="Answer 408 and close when a request body stalls this long (or falls behind --min-body-rate)")] = 5.0,
    min_body_rate: Annotated[int, typer.Option(
        min=0, metavar="BYTES_PER_S",
        help="Slowest average a request body may arrive at once past --body-timeout (0: no rate)")] = 4096,
    max_connections_per_address: Annotated[int, typer.Option(
        min=0, metavar="N",
        help="Open connections one client address may hold; more get 503 (0: no cap; behind a "
             "proxy every client has the proxy's address)")] = 32,
    max_connections: Annotated[int | None, typer.Option(
        min=1, metavar="N", help="Open connections in all; more get 503 [default: half the open-file limit]")] = None,
    max_head_bytes: Annotated[int, typer.Option(
        min=1024, max=1024 * 1024, metavar="BYTES", help="Largest request line and headers; more get 400")] = 16384,
    max_pull_bytes: Annotated[int, typer.Option(
        min=1024, max=1 << 30, metavar="BYTES",
        help="Bytes of one pull answer: ops, move snapshots, other fields (at least one op or record is sent)")
    ] = 4 * 1024 * 1024,
    workers: Annotated[int, typer.Option(
        min=1, max=64, metavar="N",
        help="Server processes on the port, each its own core's worth of Python (Linux); the limits "
             "above apply in each")] = 1,
) -> None:
    """Start the sync server: SQLite under DIR (one command, no other service), or PostgreSQL,
    where any number of server processes can serve the same database at once. The limits keep a
    slow or hostile client from holding what others need (docs/security.md).

    \b
    Example:
      crm server serve --data ./server --port 8765
      crm server serve --db postgresql://crm@db.internal/crm --port 8765
      crm server serve --data ./server --max-connections-per-address 0   # behind a proxy
      crm server serve --data ./server --workers 2   # use two cores
    """
    from crm.server import serve as run_server
    from crm.server.limits import Limits

    if not 0 < port < 65536:
        raise invalid(f"--port {port}: give a TCP port between 1 and 65535")
    if workers > 1 and not sys.platform.startswith("linux"):
        raise invalid(f"--workers {workers}: several server processes need Linux; serve with one")
    limits = Limits(head_timeout=head_timeout, body_timeout=body_timeout, min_body_rate=min_body_rate,
                    max_connections_per_address=max_connections_per_address, max_connections=max_connections,
                    max_head_bytes=max_head_bytes, max_pull_bytes=max_pull_bytes)
    with _store(data, db, create=True) as store:
        location = store.location
    output.message(f"crm sync server on http://{host}:{port} (data: {location})"
                   + (f", {workers} worker processes" if workers > 1 else ""))
    if run_server(_target(data, db), host=host, port=port, log_level=log_level, limits=limits, workers=workers):
        raise typer.Exit(1)  # the workers kept exiting as they started; their errors are on stderr


@server_app.command("add-rep")
def add_rep(org: Org, rep: Annotated[str, typer.Option("--rep", help="The rep's name")],
            data: DataDir = None, db: DbUrl = None,
            expires_in_days: Annotated[int | None, typer.Option(
                "--expires-in-days", min=1, max=3660, metavar="N",
                help="Refuse the token from N days on [default: it never expires]")] = None,
            as_json: Json = False) -> None:
    """Create a device token for a rep (and the organisation if new). The token is shown once.

    \b
    Example:
      crm server add-rep --data ./server --org acme --rep rep-1 --expires-in-days 90 --json
    """
    with _store(data, db, create=True) as store:
        token = store.add_token(org, rep, role="device", expires_in_days=expires_in_days)
    output.emit({"org": org, "rep": rep, "token": token, "expires_in_days": expires_in_days},
                as_json=as_json, text=token)


@server_app.command("add-admin")
def add_admin(org: Org, name: Annotated[str, typer.Option("--name", help="Who uses it")] = "backoffice",
              data: DataDir = None, db: DbUrl = None, as_json: Json = False) -> None:
    """Create a back-office token (for /v1/admin/edit and /v1/admin/export).

    \b
    Example:
      crm server add-admin --data ./server --org acme --name backoffice --json
    """
    with _store(data, db, create=True) as store:
        token = store.add_token(org, name, role="admin")
    output.emit({"org": org, "name": name, "token": token}, as_json=as_json, text=token)


@server_app.command("revoke")
def revoke(org: Org, rep: Annotated[str, typer.Option("--rep")], data: DataDir = None, db: DbUrl = None,
           as_json: Json = False) -> None:
    """Revoke every token of a rep: the device's next request is refused; its outbox is kept.

    \b
    Example:
      crm server revoke --data ./server --org acme --rep rep-1
    """
    with _store(data, db) as store:
        count = store.revoke(org, rep)
    output.emit({"org": org, "rep": rep, "revoked": count}, as_json=as_json, text=f"revoked {count} token(s)")


@server_app.command("import-products")
def import_products(org: Org, file: Annotated[Path, typer.Argument(help="CSV with sku,name,price[,currency]")],
                    data: DataDir = None, db: DbUrl = None, as_json: Json = False) -> None:
    """Load the product catalogue from a CSV (upsert by SKU); devices receive it by sync.

    \b
    Example:
      crm server import-products --data ./server --org acme products.csv
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
    with _store(data, db) as store:
        result = store.import_products(org, rows)
    output.emit(result, as_json=as_json,
                text=f"products: {result['created']} created, {result['updated']} updated, "
                     f"{result['unchanged']} unchanged")


@server_app.command("edit")
def edit(entity: Annotated[str, typer.Argument(help="account, contact, visit, order")],
         record_id: Annotated[str, typer.Argument(metavar="ID")],
         set_: Annotated[list[str], typer.Option("--set", help="FIELD=VALUE (repeatable)")],
         org: Annotated[str | None, typer.Option("--org", help="Needed only if the id is ambiguous")] = None,
         data: DataDir = None, db: DbUrl = None, as_json: Json = False) -> None:
    """A back-office edit on the server, merged by the same rules as a rep's edit.

    \b
    Example:
      crm server edit --data ./server account 0192... --set phone=0113-555-0100
    """
    with _store(data, db) as store:
        result = store.edit(org, entity, record_id, parse_assignments(set_))
    output.emit(result, as_json=as_json)


@server_app.command("export")
def export(org: Org, data: DataDir = None, db: DbUrl = None,
           rep: Annotated[str | None, typer.Option(
               "--rep", help="Only what a device of this rep holds (its territories and the catalogue)")] = None,
           territory: Annotated[str | None, typer.Option(
               "--territory", help="Only this territory's accounts, what hangs off them, and the catalogue")] = None,
           as_json: Json = False) -> None:
    """Print the organisation's state in the canonical export JSON (same bytes as `crm export`).

    With --rep (or --territory): exactly what a device of that rep holds after a sync.
    Always JSON; --json is accepted for symmetry with the other commands.

    \b
    Example:
      crm server export --data ./server --org acme > acme.json
      crm server export --data ./server --org acme --rep rep-1 > rep-1.json
    """
    import sys

    from crm import canonical_json

    if rep is not None and territory is not None:
        raise invalid("give --rep or --territory, not both")
    with _store(data, db) as store:
        state = store.export(org, rep=rep, territory=territory)
    sys.stdout.write(canonical_json(state))


@server_app.command("assign")
def assign(org: Org, rep: Annotated[str, typer.Option("--rep", help="The rep's name")],
           territory: Annotated[str, typer.Option("--territory", help="The territory's name")],
           remove: Annotated[bool, typer.Option("--remove", help="Take the territory away instead")] = False,
           data: DataDir = None, db: DbUrl = None, as_json: Json = False) -> None:
    """Assign a territory to a rep (or --remove it): their devices then hold only the accounts of
    their territories, what hangs off them, and the catalogue. A rep with no territory holds the
    whole organisation; the first territory assigned is the default of their new accounts.

    \b
    Example:
      crm server assign --data ./server --org acme --rep rep-1 --territory north
    """
    with _store(data, db) as store:
        result = store.assign(org, rep, territory, remove=remove)
    output.emit(result, as_json=as_json,
                text=f"{rep}: {', '.join(result['territories'] or ['(the whole organisation)'])}")


@server_app.command("territories")
def territories(org: Org, data: DataDir = None, db: DbUrl = None, as_json: Json = False) -> None:
    """List the organisation's territories: their reps and how many accounts each holds.

    \b
    Example:
      crm server territories --data ./server --org acme --json
    """
    with _store(data, db) as store:
        result = store.territories(org)
    output.emit(result, as_json=as_json,
                text="\n".join(f"{t['territory']}\t{t['accounts']} accounts\t{', '.join(t['reps']) or '-'}"
                               for t in result) if result else None)


@server_app.command("stats")
def stats(org: Org, data: DataDir = None, db: DbUrl = None, as_json: Json = False) -> None:
    """Counts of ops and records for an organisation.

    \b
    Example:
      crm server stats --data ./server --org acme --json
    """
    with _store(data, db) as store:
        result = store.stats(org)
    output.emit(result, as_json=as_json, text=json.dumps(result))


@server_app.command("backup")
def backup(to: Annotated[Path, typer.Option("--to", metavar="FILE", help="The backup file to write")],
           data: DataDir = None, as_json: Json = False) -> None:
    """Write a consistent copy of a SQLite server's data, safe while the server runs (SQLite's
    backup API; never copy the live file). PostgreSQL: use pg_dump.

    \b
    Example:
      crm server backup --data ./server --to ./server-2026-12-02.sqlite3
    """
    from crm.server import backup_sqlite

    result = backup_sqlite(_target(data, None), to)
    output.emit(result, as_json=as_json, text=f"backed up {result['ops']} ops to {result['file']}")


@server_app.command("restore")
def restore(from_: Annotated[Path, typer.Option("--from", metavar="FILE", help="A file `crm server backup` wrote")],
            data: DataDir = None, as_json: Json = False) -> None:
    """Put a SQLite server's data back to a backup. Devices notice on their next sync and send
    again whatever they hold that the backup lacks (docs/sync-protocol.md, "Continuity").
    Stop the server first. PostgreSQL: pg_restore; devices recover the same way.

    \b
    Example:
      crm server restore --data ./server --from ./server-2026-12-02.sqlite3
    """
    from crm.server import restore_sqlite

    result = restore_sqlite(_target(data, None), from_)
    output.emit(result, as_json=as_json, text=f"restored {result['ops']} ops from {result['file']}")
