"""``crm import accounts|contacts FILE``: a thin wrapper around ``crm.importer.import_file``."""


from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

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
    "--format", help="The file's format [default: from its extension; .tsv is CSV].")]
Delimiter = Annotated[str | None, typer.Option(
    "--delimiter", metavar="CHAR", show_default=False,
    help="The CSV delimiter: one character, or tab [default: an Excel sep= first line, else sniffed "
         "from the header].")]
Encoding = Annotated[str | None, typer.Option(
    "--encoding", metavar="NAME", show_default=False,
    help="The file's encoding, such as cp1252, latin-1 or utf-16 [default: UTF-8, with or without "
         "a BOM; a UTF-16 BOM is recognised].")]
IgnoreUnknown = Annotated[bool, typer.Option(
    "--ignore-unknown-columns", help="Leave out columns that name no field, instead of refusing the file.")]
Mapping = Annotated[list[str] | None, typer.Option(
    "--map", metavar="COLUMN=FIELD", show_default=False,
    help="Read a column as a field (Company=name); COLUMN= leaves it out. Repeatable.")]
DryRun = Annotated[bool, typer.Option(
    "--dry-run", help="Validate and report what would be imported; write nothing to the store.")]
ErrorsFile = Annotated[Path | None, typer.Option(
    "--errors", metavar="FILE", dir_okay=False, show_default=False,
    help="Write the rejected rows to FILE with their line and reason (UTF-8 CSV), to fix and import again.")]


def _import(ctx: typer.Context, entity: str, path: Path, as_json: bool, **options: Any) -> None:
    """Run the import with a progress bar on a terminal; list the bad rows when it refuses."""
    from crm.errors import ImportFileError
    from crm.importer import import_file

    fmt = options.pop("fmt")
    try:
        with open_device(ctx) as device, output.progress(f"importing {entity}s") as progress:
            report = import_file(device, entity, path, fmt=fmt.value if fmt else None, progress=progress,
                                 **options)
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
    if report.dry_run:
        summary = (f"dry run, nothing written: {data['total_rows']} rows: {data['created']} would be created, "
                   f"{data['updated']} updated, {data['unchanged']} unchanged, {len(invalid)} invalid")
    else:
        summary = (f"{data['total_rows']} rows: {data['created']} created, {data['updated']} updated, "
                   f"{data['unchanged']} unchanged, {len(invalid)} invalid (skipped)")
    output.emit(data, as_json=False, text=summary)
    if report.dry_run:
        how = f"read as {report.format}, {report.encoding}"
        if report.delimiter is not None:
            how += f", delimiter {report.delimiter!r} ({report.delimiter_from})"
        output.emit(data, as_json=False, text="  " + how)
    if report.ignored_columns:
        names = ", ".join(name if name.strip() else repr(name) for name in report.ignored_columns)
        output.emit(data, as_json=False, text=f"  ignored columns: {names}")
    if report.errors_file is not None:
        output.emit(data, as_json=False, text=f"  rejected rows written to {report.errors_file}")
    for row in invalid:
        output.emit(row, as_json=False, text=f"  line {row['line']}: {row['reason']}")


@import_app.command("accounts")
def import_accounts(ctx: typer.Context, path: FileArg, skip_invalid: SkipInvalid = False,
                    fmt: FormatOpt = None, delimiter: Delimiter = None, encoding: Encoding = None,
                    ignore_unknown_columns: IgnoreUnknown = False, mapping: Mapping = None,
                    dry_run: DryRun = False, errors: ErrorsFile = None, as_json: Json = False) -> None:
    """Import accounts; rows matching an existing external_ref update it.

    Without --skip-invalid one bad row means nothing is imported (exit 9, bad rows listed).

    \b
    Example:
      crm import accounts fixtures/csv/accounts.csv --skip-invalid --json
      crm import accounts export.csv --encoding cp1252 --map Company=name --dry-run
    """
    _import(ctx, "account", path, as_json, skip_invalid=skip_invalid, fmt=fmt, delimiter=delimiter,
            encoding=encoding, ignore_unknown_columns=ignore_unknown_columns, mapping=mapping or (),
            dry_run=dry_run, errors_path=errors)


@import_app.command("contacts")
def import_contacts(ctx: typer.Context, path: FileArg, skip_invalid: SkipInvalid = False,
                    fmt: FormatOpt = None, delimiter: Delimiter = None, encoding: Encoding = None,
                    ignore_unknown_columns: IgnoreUnknown = False, mapping: Mapping = None,
                    dry_run: DryRun = False, errors: ErrorsFile = None, as_json: Json = False) -> None:
    """Import contacts (each row names its account).

    \b
    Example:
      crm import contacts contacts.jsonl --format jsonl
    """
    _import(ctx, "contact", path, as_json, skip_invalid=skip_invalid, fmt=fmt, delimiter=delimiter,
            encoding=encoding, ignore_unknown_columns=ignore_unknown_columns, mapping=mapping or (),
            dry_run=dry_run, errors_path=errors)
