"""The one way commands print: data to stdout, messages and errors to stderr.

With ``--json`` stdout carries exactly one JSON document and nothing else. Without it a list is a
table and a write is a short line. rich is imported only when a table or progress bar is actually
drawn, so commands that print a line or JSON never pay for it.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any


def emit(data: Any, *, as_json: bool, columns: Sequence[str] | None = None,
         text: str | None = None) -> None:
    """Print a command's result: JSON, else ``text`` when given, else a table of ``data``."""
    if as_json:
        sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    elif text is not None:
        sys.stdout.write(text + "\n")
    elif isinstance(data, list):
        if data:
            _print_table(data, columns or _columns_of(data))
        else:
            message("(none)")
    else:
        _print_record(data)
    sys.stdout.flush()


def message(text: str) -> None:
    """A note for the person at the terminal; never part of the data."""
    sys.stderr.write(text + "\n")


def error(payload: dict[str, Any], *, as_json: bool) -> None:
    """An error on stderr: one JSON object with --json, else ``crm: error: message``."""
    if as_json:
        text = json.dumps(payload, ensure_ascii=False) + "\n"
    else:
        text = f"crm: error: {payload['message']}\n"
    # An error may quote what the user typed, undecodable bytes included: never fail printing it.
    sys.stderr.write(text.encode("utf-8", "backslashreplace").decode("utf-8"))
    sys.stderr.flush()


@contextlib.contextmanager
def progress(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr when it is a terminal; ``None`` (draw nothing) when piped."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def cell(value: Any) -> str:
    """How one value reads in a table: blanks for nothing, compact JSON for structures."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{key}: {cell(item)}" for key, item in value.items())
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _columns_of(rows: list[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)


def _console():
    from rich.console import Console

    # Piped output keeps whole values (ids!) on one line instead of folding them to 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 1000)


def _print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for name in columns:
        table.add_column(name, overflow="fold", no_wrap=name == "id")
    for row in rows:
        table.add_row(*(cell(row.get(name)) for name in columns))
    _console().print(table)


def _print_record(record: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE, show_header=False, show_edge=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    nested: list[tuple[str, list[dict[str, Any]]]] = []
    for name, value in record.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            nested.append((name, value))
        else:
            table.add_row(name, cell(value))
    console = _console()
    console.print(table)
    for name, rows in nested:
        console.print(f"\n{name}:")
        _print_table(rows, _columns_of(rows))
