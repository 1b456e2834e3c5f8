"""`crm login` and `crm init` take the device token from stdin (`--token -`), a file
(`--token-file`) or CRM_TOKEN, so it need not sit on a command line any user can read with ps;
`--token VALUE` still works. A missing, doubled, empty or malformed token is refused, nothing
written."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from crm import Device

URL = "http://127.0.0.1:9"
ROOT = Path(__file__).resolve().parents[1]


def crm(home: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None):
    result = CliRunner().invoke(app, ["--home", str(home), *args], input=stdin,
                                env={"CRM_TOKEN": None, **(env or {})})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _token(home: Path) -> str | None:
    conn = sqlite3.connect(home / "crm.sqlite3")
    row = conn.execute("SELECT value FROM meta WHERE key = 'token'").fetchone()
    conn.close()
    return row[0] if row else None


@pytest.fixture
def home(tmp_path) -> Path:
    path = tmp_path / "home"
    Device.init(path, rep="rep-1").close()
    return path


@pytest.fixture
def token_file(tmp_path) -> Path:
    path = tmp_path / "token"
    path.write_text("crm_from-a-file\n")
    return path


WAYS = {
    "stdin": lambda f: (("--token", "-"), "crm_from-stdin\n", None, "crm_from-stdin"),
    "file": lambda f: (("--token-file", str(f)), None, None, "crm_from-a-file"),
    "environment": lambda f: ((), None, {"CRM_TOKEN": "crm_from-the-env"}, "crm_from-the-env"),
    "argv (compatibility)": lambda f: (("--token", "crm_on-argv"), None, None, "crm_on-argv"),
    "file beats environment": lambda f: (("--token-file", str(f)), None, {"CRM_TOKEN": "crm_x"}, "crm_from-a-file"),
}


@pytest.mark.parametrize("way", list(WAYS))
def test_login_takes_the_token_each_way(home, token_file, way):
    args, stdin, env, expected = WAYS[way](token_file)
    result = crm(home, "login", "--server", URL, *args, "--json", stdin=stdin, env=env)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["server"] == URL
    assert _token(home) == expected


@pytest.mark.parametrize("way", list(WAYS))
def test_init_takes_the_token_each_way(tmp_path, token_file, way):
    args, stdin, env, expected = WAYS[way](token_file)
    home = tmp_path / "new"
    result = crm(home, "init", "--rep", "rep-1", "--server", URL, *args, "--json", stdin=stdin, env=env)
    assert result.exit_code == 0, result.stderr
    assert _token(home) == expected


@pytest.mark.parametrize("args, stdin, code, words", [
    ((), None, 2, "give the device token: --token-file FILE, --token - to read it from stdin, or the CRM_TOKEN"),
    (("--token", "crm_a", "--token-file", "{file}"), None, 2, "not both --token and --token-file"),
    (("--token-file", "{missing}"), None, 2, "cannot read it (No such file or directory)"),
    (("--token", "-"), "", 3, "--token - (stdin): the token is empty"),
    (("--token", "-"), "crm_one\ncrm_two\n", 3, "no spaces or line breaks"),
    (("--token", "crm with spaces"), None, 3, "one word of printable ASCII"),
])
def test_login_refuses_a_missing_or_malformed_token(home, token_file, args, stdin, code, words):
    crm(home, "login", "--server", URL, "--token", "crm_before")
    args = tuple(a.format(file=token_file, missing=token_file.with_name("absent")) for a in args)
    result = crm(home, "login", "--server", URL, *args, "--json", stdin=stdin)
    assert result.exit_code == code, result.stderr
    assert result.stdout == "" and words in json.loads(result.stderr)["message"]
    assert _token(home) == "crm_before", "nothing was written"


def test_init_refuses_a_malformed_token_and_creates_nothing(tmp_path):
    home = tmp_path / "new"
    result = crm(home, "init", "--rep", "rep-1", "--token", "-", stdin="two\nlines\n")
    assert result.exit_code == 3 and not home.exists()


def test_help_says_argv_is_visible():
    result = CliRunner().invoke(app, ["login", "--help"])
    assert "visible to other users" in " ".join(result.stdout.split())


@pytest.mark.process
def test_a_real_login_reads_stdin_and_the_environment(home):
    argv = [sys.executable, "-m", "cli.main", "--home", str(home), "login", "--server", URL]
    env = {k: v for k, v in os.environ.items() if k != "CRM_TOKEN"}
    piped = subprocess.run([*argv, "--token", "-"], input="crm_piped\n", capture_output=True, text=True,
                           cwd=ROOT, env=env, timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert _token(home) == "crm_piped"
    from_env = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT,
                              env={**env, "CRM_TOKEN": "crm_env"}, timeout=60)
    assert from_env.returncode == 0, from_env.stderr
    assert _token(home) == "crm_env"
