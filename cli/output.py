"""The one way commands print: data to stdout, messages and errors to stderr.

With ``--json`` stdout carries exactly one JSON document and nothing else. Without it a write is
a short line and a list is a table: on a terminal, aligned columns cut to its width (ids shown
short, money right-aligned and never cut), through ``$PAGER`` when longer than the screen; piped,
tab-separated plain text with whole values. ``ls`` commands show a page of rows unless told
otherwise (``emit_list``). rich is imported only for a record (``show``) or a progress bar.
"""

from __future__ import annotations

import contextlib
import json
import os
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
            print_rows(data, columns or _columns_of(data))
        else:
            message("(none)")
    else:
        _print_record(data)
    sys.stdout.flush()


DEFAULT_PAGE = 50  # rows an `ls` shows without --limit or --all (not with --json)
MONEY = frozenset({"total", "price", "unit_price"})  # right-aligned, never cut
ID_COLUMNS = frozenset({"id", "account", "visit", "order", "record"})  # shown short on a terminal
_GAP = 2
_MIN_WIDTH = 4


def page_size(limit: int | None, every: bool, *, as_json: bool) -> int | None:
    """How many rows an `ls` shows: --limit, all with --all or --json, else a page."""
    if every and limit is not None:
        from crm.errors import UsageError

        raise UsageError("give --limit N or --all, not both")
    if every or (as_json and limit is None):
        return None
    return DEFAULT_PAGE if limit is None else limit


def emit_list(rows: list[dict[str, Any]], total: int, *, as_json: bool, columns: Sequence[str]) -> None:
    """An `ls` result: the rows (JSON, or a table), then on stderr how many more there are."""
    emit(rows, as_json=as_json, columns=columns)
    if not as_json and total > len(rows):
        message(f"... {total - len(rows)} more (of {total}); --all shows every one, --limit N the first N")


def _is_terminal() -> bool:
    return sys.stdout.isatty()


def print_rows(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """A table on stdout: aligned and paged on a terminal, tab-separated when piped."""
    if not _is_terminal():
        out = ["\t".join(columns)]
        out += ["\t".join([_flat(value) if type(value) is str else _flat(cell(value))
                           for value in map(row.get, columns)]) for row in rows]
        sys.stdout.write("\n".join(out) + "\n")
        return
    import shutil

    size = shutil.get_terminal_size()
    page_lines(format_table(rows, columns, width=size.columns), height=size.lines)


def _flat(text: str) -> str:
    if "\t" in text or "\n" in text or "\r" in text:
        return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return text


def _shown(name: str, value: Any) -> str:
    if name in ID_COLUMNS and isinstance(value, str):
        from crm.search import short_id

        return short_id(value)
    return _flat(cell(value))


def format_table(rows: list[dict[str, Any]], columns: Sequence[str], *, width: int) -> list[str]:
    """The table's lines, none wider than ``width`` while any column may be cut: short ids, money
    right-aligned and whole, other text cut with an ellipsis (widest column first)."""
    cells = [[_shown(name, row.get(name)) for name in columns] for row in rows]
    widths = [max([len(name)] + [len(line[i]) for line in cells]) for i, name in enumerate(columns)]
    fixed = {i for i, name in enumerate(columns) if name in MONEY or name in ID_COLUMNS}
    over = sum(widths) + _GAP * (len(columns) - 1) - width
    while over > 0:
        shrinkable = [i for i in range(len(columns)) if i not in fixed and widths[i] > _MIN_WIDTH]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        runner_up = max((widths[i] for i in shrinkable if i != widest), default=_MIN_WIDTH)
        step = max(1, min(over, widths[widest] - _MIN_WIDTH, widths[widest] - runner_up))
        widths[widest] -= step
        over -= step

    def fit(text: str, i: int) -> str:
        if len(text) > widths[i]:
            text = text[:widths[i] - 1] + "\u2026"
        return text.rjust(widths[i]) if columns[i] in MONEY else text.ljust(widths[i])

    gap = " " * _GAP
    lines = [gap.join(fit(name, i) for i, name in enumerate(columns)).rstrip()]
    lines.append(gap.join("-" * widths[i] for i in range(len(columns))))
    lines += [gap.join(fit(text, i) for i, text in enumerate(line)).rstrip() for line in cells]
    return lines


def page_lines(lines: list[str], *, height: int) -> None:
    """Print ``lines``; through ``$PAGER`` (default ``less``, with ``LESS=FRX`` unless set) when
    they do not fit the screen. ``PAGER=`` or ``PAGER=cat`` prints them directly."""
    import shlex
    import shutil

    text = "\n".join(lines) + "\n"
    pager = os.environ.get("PAGER", "less").strip()
    try:
        program = shlex.split(pager)[0] if pager else ""
    except ValueError:
        program = ""
    if len(lines) < height - 1 or program in ("", "cat") or not shutil.which(program):
        sys.stdout.write(text)  # fits, no pager wanted, or none installed
        return
    import subprocess

    sys.stdout.flush()
    env = {**os.environ, "LESS": os.environ.get("LESS", "FRX")}
    try:
        proc = subprocess.Popen(pager, shell=True, stdin=subprocess.PIPE, env=env)
    except OSError:
        sys.stdout.write(text)
        return
    try:
        proc.stdin.write(text.encode("utf-8", "backslashreplace"))
        proc.stdin.close()
    except BrokenPipeError:  # the reader quit the pager early: fine
        pass
    proc.wait()


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


def _rich_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
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
        _rich_table(rows, _columns_of(rows))
