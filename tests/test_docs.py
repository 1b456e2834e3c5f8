"""The docs checked against the code: every command, option, exit code and module the code has is
documented, and what the docs claim is there is there. In-process and fast: the command tree is
walked with typer's own click objects, the sources are parsed with ast; no process is started."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
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


# -- docs/cli.md ------------------------------------------------------------------------------
GLOBAL_WITH_VALUE = {"--home", "--tz"}  # root options that come before the command and take a value
_CRM = re.compile(r"(?<![\w/.-])crm(?=\s)")
_STOP = re.compile(r"[|;&)`#>]")  # where an invocation ends on a line: a pipe, $( ), a code span...


@cache
def cli_doc() -> str:
    return (DOCS / "cli.md").read_text(encoding="utf-8")


def invocations(line: str) -> Iterator[tuple[tuple[str, ...], list[str]]]:
    """Each `crm ...` on a line: the command path it names (the longest known) and its arguments."""
    paths = commands()
    for match in _CRM.finditer(line):
        rest = line[match.end():]
        stop = _STOP.search(rest)
        tokens = (rest[:stop.start()] if stop else rest).split()
        while tokens and (tokens[0] in GLOBAL_WITH_VALUE or tokens[0].startswith("--home=")):
            tokens = tokens[2:] if tokens[0] in GLOBAL_WITH_VALUE else tokens[1:]
        path: tuple[str, ...] = ()
        while tokens and (*path, tokens[0]) in paths:
            path, tokens = (*path, tokens[0]), tokens[1:]
        if path:
            yield path, tokens


def code_lines(text: str) -> list[str]:
    """The lines inside fenced code blocks: the examples."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            out.append(line)
    return out


def text_about(path: tuple[str, ...]) -> str:
    """What docs/cli.md says about one command: every line that runs it (a table row, an example)
    and every section whose heading names it."""
    if not path:
        return cli_doc()
    out, level = [], None  # level: the heading depth of a section about `path` we are inside
    for line in cli_doc().splitlines():
        heading = re.match(r"(#+) ", line)
        if heading and level is not None and len(heading.group(1)) <= level:
            level = None
        named = any(found[:len(path)] == path for found, _ in invocations(line))
        if heading and named:
            level = len(heading.group(1))
        if named or level is not None:
            out.append(line)
    return "\n".join(out)


def mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def json_exceptions() -> set[tuple[str, ...]]:
    """The commands docs/cli.md says have no --json: "**`--json`** (every command except ...)"."""
    statement = re.search(r"^\* \*\*`--json`\*\* \(every command(?: except (?P<except>[^)]*))?\)",
                          cli_doc(), re.MULTILINE)
    assert statement, 'docs/cli.md must say which commands have --json: "* **`--json`** (every command ...)"'
    spans = re.findall(r"`([^`]+)`", statement.group("except") or "")
    named = [path for span in spans for path, _ in invocations(span + " ")]
    assert len(named) == len(spans), f"not commands: {spans}"
    return set(named)


@pytest.mark.parametrize("path", [p for p in commands() if p], ids=show)
def test_every_command_is_in_cli_md_with_an_example(path: tuple[str, ...]) -> None:
    assert text_about(path), f"docs/cli.md does not mention `{show(path)}`"
    examples = [found for line in code_lines(cli_doc()) for found, _ in invocations(line)]
    assert any(found[:len(path)] == path for found in examples), \
        f"docs/cli.md has no example of `{show(path)}` in a code block"


@pytest.mark.parametrize("path", list(commands()), ids=show)
def test_every_option_is_in_cli_md(path: tuple[str, ...]) -> None:
    """--json is documented once, for all commands (the next test checks that statement)."""
    about = text_about(path)
    missing = [name for name in options(path) if name != "--json" and not mentions(about, name)]
    assert not missing, f"docs/cli.md does not document {missing} of `{show(path)}` (in its table row, " \
                        "its examples or a section named after it)"


def test_cli_md_says_exactly_which_commands_have_json() -> None:
    without = {path for path in leaves() if "--json" not in options(path)}
    assert json_exceptions() == without


# -- docs/exit-codes.md -----------------------------------------------------------------------
def documented_exit_codes() -> dict[int, str]:
    """code -> kind, from the table in docs/exit-codes.md."""
    table = (DOCS / "exit-codes.md").read_text(encoding="utf-8")
    return {int(code): kind.strip("` ") for code, kind in
            re.findall(r"^\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|", table, re.MULTILINE)}


def _int_value(node: ast.expr | None, constants: dict[str, int]) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def _called(node: ast.Call) -> str:
    return ast.unparse(node.func)


def exit_codes_in_cli() -> dict[int, list[str]]:
    """Every exit code cli/ returns itself, with where: `typer.Exit(N)`, `SystemExit(N)`,
    `sys.exit(N)` with N a literal or a module constant, and the literal codes the one mapping
    (cli/main.py: `report` and `CrmGroup.main`) returns or assigns to `code`."""
    found: dict[int, list[str]] = {}
    for path in sorted((ROOT / "cli").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                     for target in node.targets if isinstance(target, ast.Name)
                     and isinstance(node.value, ast.Constant) and type(node.value.value) is int}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called(node) in ("typer.Exit", "Exit", "SystemExit", "sys.exit"):
                code = _int_value(node.args[0], constants) if node.args else 0
                if code is None and path.name == "main.py" and ast.unparse(node.args[0]) == "code":
                    continue  # the mapping's own exit: its codes are collected below
                assert code is not None, f"{path.name}:{node.lineno}: an exit code this test cannot read"
                found.setdefault(code, []).append(f"{path.name}:{node.lineno}")
            if path.name == "main.py" and isinstance(node, ast.FunctionDef) and node.name in ("report", "main"):
                for inner in ast.walk(node):
                    values = []
                    if isinstance(inner, ast.Return):
                        values = [inner.value]
                    elif isinstance(inner, ast.Assign) and any(
                            isinstance(t, ast.Name) and t.id == "code" for t in inner.targets):
                        values = [inner.value, *getattr(inner.value, "values", [])]  # code = code or 1
                    for value in values:
                        code = _int_value(value, {})
                        if code is not None:
                            found.setdefault(code, []).append(f"{path.name}:{inner.lineno}")
    return found


def error_classes() -> dict[int, set[str]]:
    """code -> kinds of the error classes in crm/errors.py; the base class CrmError counts when
    some code raises it directly."""
    import crm.errors as errors

    classes = [cls for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.CrmError) and cls is not errors.CrmError]
    raised_directly = any(isinstance(node, ast.Call) and _called(node) in ("CrmError", "errors.CrmError")
                          for package in ("cli", "crm", "harness") for path in (ROOT / package).rglob("*.py")
                          for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))
    if raised_directly:
        classes.append(errors.CrmError)
    out: dict[int, set[str]] = {}
    for cls in classes:
        out.setdefault(cls.exit_code, set()).add(cls.kind)
    return out


def test_every_exit_code_the_code_returns_is_documented_and_no_other() -> None:
    documented = documented_exit_codes()
    returned = set(exit_codes_in_cli()) | set(error_classes())
    assert {30, 31} <= returned and 0 in returned, "the walk of cli/ missed the codes it must find"
    assert sorted(returned - documented.keys()) == [], "returned by the code but not in docs/exit-codes.md"
    assert sorted(documented.keys() - returned) == [], "in docs/exit-codes.md but returned by nothing"


def test_every_error_kind_is_documented_with_its_code() -> None:
    table = (DOCS / "exit-codes.md").read_text(encoding="utf-8")
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"^\|\s*(\d+)\s*\|.*$", table, re.MULTILINE)}
    for code, kinds in error_classes().items():
        for kind in kinds:
            assert f"`{kind}`" in rows[code] or f'"error": "{kind}"' in rows[code], \
                f"docs/exit-codes.md: the row for {code} does not name the kind {kind!r}"


# -- docs/architecture.md ---------------------------------------------------------------------
PACKAGES = ("crm", "cli", "harness")  # crm/server/ and any other subpackage are walked too


def modules() -> list[str]:
    """Every module of the packages, as a path from the repository root; empty __init__.py aside."""
    return sorted(path.relative_to(ROOT).as_posix() for package in PACKAGES
                  for path in (ROOT / package).rglob("*.py")
                  if "__pycache__" not in path.parts
                  and not (path.name == "__init__.py" and not path.read_text(encoding="utf-8").strip()))


def test_architecture_md_lists_every_module() -> None:
    found = modules()
    assert "crm/device.py" in found and "crm/server/app.py" in found and "harness/ports.py" in found
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    missing = [module for module in found if f"`{module}`" not in text]
    assert not missing, f"docs/architecture.md does not list {missing} (add a row under ## Modules)"
