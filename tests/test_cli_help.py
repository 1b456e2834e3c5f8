"""The command line helps (issue 14, item 7): shell completion as Typer provides it, "did you
mean" for mistyped commands and options, one metavar style in every help text (every command's
example is checked by tests/test_docs.py)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.test_docs import commands, show

runner = CliRunner()


def complete(words: str, env: dict[str, str] | None = None) -> str:
    parts = words.split(" ")
    result = runner.invoke(app, [], env={"_CRM_COMPLETE": "complete_bash", "COMP_WORDS": words,
                                         "COMP_CWORD": str(len(parts) - 1), **(env or {})})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_commands_and_options_complete_in_the_shell() -> None:
    assert complete("crm acc").split() == ["account"]
    assert "search" in complete("crm se").split()
    assert complete("crm account l").split() == ["ls"]
    assert complete("crm account ls --ci").split() == ["--city"]


def test_the_completion_script_is_there_to_install(monkeypatch) -> None:
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout
    # Typer names the shell by walking up this process's parents (shellingham): a run with no
    # shell among them (a CI runner, a detached job) would find none. The rep here is in bash.
    monkeypatch.setattr("shellingham.detect_shell", lambda *args, **kwargs: ("bash", "/bin/bash"))
    script = runner.invoke(app, ["--show-completion"])
    assert script.exit_code == 0 and "_CRM_COMPLETE" in script.stdout and "complete_bash" in script.stdout


@pytest.mark.parametrize(("argv", "suggestion"), [
    (["acount", "ls"], "Did you mean 'account'"),
    (["serach", "x"], "Did you mean 'search'"),
    (["account", "lss"], "Did you mean 'ls'"),
    (["account", "ls", "--cty", "Leeds"], "Did you mean --city?"),
    (["order", "add", "--acount", "x"], "Did you mean --account?"),
])
def test_a_mistyped_command_or_option_suggests_the_closest(argv: list[str], suggestion: str, tmp_path) -> None:
    result = runner.invoke(app, ["--home", str(tmp_path), *argv])
    assert result.exit_code == 2 and result.stdout == ""
    assert suggestion in result.stderr, result.stderr


def test_a_hopeless_typo_suggests_nothing(tmp_path) -> None:
    result = runner.invoke(app, ["--home", str(tmp_path), "zzzz"])
    assert result.exit_code == 2 and "No such command" in result.stderr and "Did you mean" not in result.stderr


_STYLE = re.compile(r"[A-Z][A-Z0-9_]*(?:[=:|\[\]\-.,]*[A-Z0-9_]*)*\]?(?:\.\.\.)?|[a-z0-9-]+(?:\|[a-z0-9-]+)+")


@pytest.mark.parametrize("path", list(commands()), ids=show)
def test_help_uses_one_metavar_style(path: tuple[str, ...]) -> None:
    """An upper-case word for a value (TEXT, N, ID, SKU:QTY[:PRICE]) or choices a|b; never typer's <str>."""
    command = commands()[path]
    for param in command.params:
        if getattr(param, "is_flag", False) or param.name in ("help",):
            continue
        assert param.metavar and _STYLE.fullmatch(param.metavar), \
            f"`{show(path)}` {param.name}: metavar {param.metavar!r} is not in the house style"
    text = runner.invoke(app, [*path, "--help"]).stdout
    assert not re.search(r"<(?:str|int|float|path|list|bool)", text), text


def test_a_group_builds_only_the_subcommand_that_runs_and_all_of_them_for_help_or_a_typo() -> None:
    from cli.main import click_command
    from cli.server_cmds import server_app

    every = {"serve", "add-rep", "export", "edit", "assign", "backup", "restore"}
    one, whole = click_command(server_app, ["export", "--data", "d", "--org", "o"])
    assert not whole and set(one.commands) == {"export"}
    for rest in (["--help"], ["exprot"], []):
        group, whole = click_command(server_app, rest)
        assert whole and every <= set(group.commands), rest
    # in one process, one command after another: a command built for one subcommand is not reused
    for argv, shown in ((["server", "export", "--help"], "canonical export"),
                        (["server", "add-rep", "--help"], "device token"), (["server", "--help"], "restore")):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0 and shown in result.stdout, (argv, result.output)
