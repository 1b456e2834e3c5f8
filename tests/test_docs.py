"""The docs checked against the code: every command, option, exit code and module the code has is
documented, and what the docs claim is there is there. In-process and fast: the command tree is
walked with typer's own click objects, the sources are parsed with ast; no process is started."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli.main import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


# -- the command tree -------------------------------------------------------------------------
@cache
def commands() -> dict[tuple[str, ...], object]:
    """Every command and group of `crm`, by path (() is `crm` itself), as click command objects."""
    from typer._click.core import Context

    found: dict[tuple[str, ...], object] = {}

    def walk(command: object, path: tuple[str, ...], ctx: Context) -> None:
        found[path] = command
        if hasattr(command, "list_commands"):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                walk(sub, (*path, name), Context(sub, info_name=name, parent=ctx))

    root = typer.main.get_command(app)
    walk(root, (), Context(root, info_name="crm"))
    return found


def is_group(command: object) -> bool:
    return hasattr(command, "list_commands")


def leaves() -> list[tuple[str, ...]]:
    """The commands that run something (not groups)."""
    return [path for path, command in commands().items() if not is_group(command)]


def options(path: tuple[str, ...]) -> list[str]:
    """The option names of one command (all spellings: -o and --output), --help aside."""
    return [name for param in commands()[path].params if param.param_type_name == "option"
            for name in (*param.opts, *param.secondary_opts)]


def show(path: tuple[str, ...]) -> str:
    return " ".join(("crm", *path))


def test_the_walk_finds_the_whole_tree() -> None:
    paths = commands()
    assert ("init",) in paths and ("account", "add") in paths and ("server", "serve") in paths
    assert ("agent", "run") in paths and ("certify",) in paths and ("doctor",) in paths
    assert len(leaves()) > 40


@pytest.mark.parametrize("path", list(commands()), ids=show)
def test_every_command_shows_an_example_in_its_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout, f"`{show(path)} --help` shows no example"
