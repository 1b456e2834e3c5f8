"""``crm import accounts|contacts FILE``: a thin wrapper around ``crm.importer.import_file``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cli import output
from cli.common import Json, open_device, sub_app

import_app = sub_app("Import accounts or contacts from a CSV or JSONL file (re-running it is safe).",
                     example="crm import accounts accounts.csv --skip-invalid")


class Format(StrEnum):
    csv = "csv"
    jsonl = "jsonl"


FileArg = Annotated[Path, typer.Argument(metavar="FILE", help="The CSV or JSONL file.")]
SkipInvalid = Annotated[bool, typer.Option(
    "--skip-invalid", help="Import the valid rows and report the invalid ones, instead of importing nothing.")]
FormatOpt = Annotated[Format | None, typer.Option(
    "--format", help="The file's format [default: from its extension].")]


def _import(ctx: typer.Context, entity: str, path: Path, skip_invalid: bool, fmt: Format | None,
            as_json: bool) -> None:
    """Run the import with a progress bar on a terminal; list the bad rows when it refuses."""
    from crm.errors import ImportFileError
    from crm.importer import import_file

    try:
        with open_device(ctx) as device, output.progress(f"importing {entity}s") as progress:
            report = import_file(device, entity, path, skip_invalid=skip_invalid,
                                 fmt=fmt.value if fmt else None, progress=progress)
    except ImportFileError as exc:
        if not as_json and isinstance(exc.details, list):
            for row in exc.details[:50]:
                output.message(f"  line {row.get('line')}: {row.get('reason')}")
        raise
    data = report.to_json()
    if as_json:
        output.emit(data, as_json=True)
        return
    invalid = data.get("invalid") or []
    output.emit(data, as_json=False, text=(
        f"{data['total_rows']} rows: {data['created']} created, {data['updated']} updated, "
        f"{data['unchanged']} unchanged, {len(invalid)} invalid (skipped)"))
    for row in invalid:
        output.emit(row, as_json=False, text=f"  line {row['line']}: {row['reason']}")


@import_app.command("accounts")
def import_accounts(ctx: typer.Context, path: FileArg, skip_invalid: SkipInvalid = False,
                    fmt: FormatOpt = None, as_json: Json = False) -> None:
    """Import accounts; rows matching an existing external_ref update it.

    Without --skip-invalid one bad row means nothing is imported (exit 9, bad rows listed).

    \b
    Example:
      crm import accounts fixtures/csv/accounts.csv --skip-invalid --json
    """
    _import(ctx, "account", path, skip_invalid, fmt, as_json)


@import_app.command("contacts")
def import_contacts(ctx: typer.Context, path: FileArg, skip_invalid: SkipInvalid = False,
                    fmt: FormatOpt = None, as_json: Json = False) -> None:
    """Import contacts (each row names its account).

    \b
    Example:
      crm import contacts contacts.jsonl --format jsonl
    """
    _import(ctx, "contact", path, skip_invalid, fmt, as_json)
