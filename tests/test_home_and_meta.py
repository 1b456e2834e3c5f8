"""A damaged meta table is a damaged store (exit 7, naming what is wrong, nothing written), and a
--home no store could live in is a usage error (exit 2, naming the problem). In-process."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from crm import Device
from tests.support import crm_inprocess as crm

STORE = "crm.sqlite3"
COMMANDS = [
    ("account", "add", "--name", "Another Shop"),
    ("outbox",),
    ("export",),
    ("status",),
    ("sync",),
]


@pytest.fixture
def home(tmp_path) -> Path:
    path = tmp_path / "home"
    device = Device.init(path, rep="rep-1", settings={"server_url": "http://127.0.0.1:9", "token": "t"})
    device.create("account", {"name": "Corner Store"})
    device.close()
    return path


def _digest(home: Path) -> str:
    return hashlib.sha256((home / STORE).read_bytes()).hexdigest()


def _refused(result, code: int, kind: str, *words: str) -> str:
    assert result.code == code, (result.code, result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    error = json.loads(result.stderr)
    assert error["error"] == kind, error
    for word in words:
        assert word in error["message"], (word, error["message"])
    return error["message"]


@pytest.mark.parametrize("damage, words", [
    ("DELETE FROM meta WHERE key = 'device_id'", "device id is missing"),
    ("DELETE FROM meta WHERE key = 'hlc'", "clock is missing"),
    ("DELETE FROM meta", "meta rows (device id, rep, clock) are missing"),
    ("UPDATE meta SET value = 'yesterday' WHERE key = 'hlc'", "clock 'yesterday' cannot be read"),
    ("UPDATE meta SET value = '17.x' WHERE key = 'hlc'", "clock '17.x' cannot be read"),
    ("UPDATE meta SET value = '' WHERE key = 'device_id'", "is not a device id"),
    ("UPDATE meta SET value = 'a@b' WHERE key = 'device_id'", "is not a device id"),
    ("UPDATE meta SET value = X'00ff' WHERE key = 'rep'", "'rep' is not text"),
    ("DROP TABLE meta", "no such table: meta"),
])
def test_damaged_meta_rows_are_exit_7_naming_the_problem(home, damage, words):
    conn = sqlite3.connect(home / STORE)
    with conn:
        conn.execute(damage)
    conn.close()
    before = _digest(home)
    for args in COMMANDS:
        message = _refused(crm(*args, "--json", home=home), 7, "store_corrupt", words)
        assert "crm init" not in message, "a store holding records is never to be recreated"
    assert _digest(home) == before


def test_a_damaged_meta_page_is_exit_7(home):
    conn = sqlite3.connect(home / STORE)
    (page,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'meta'").fetchone()
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    data = bytearray((home / STORE).read_bytes())
    data[(page - 1) * size:page * size] = b"\xa5" * size
    (home / STORE).write_bytes(bytes(data))
    for args in COMMANDS:
        _refused(crm(*args, "--json", home=home), 7, "store_corrupt", "damaged", "malformed")
    assert (home / STORE).read_bytes() == bytes(data)


def test_damaged_meta_in_a_store_holding_nothing_points_at_crm_init(tmp_path):
    home = tmp_path / "home"
    Device.init(home, rep="rep-1").close()
    conn = sqlite3.connect(home / STORE)
    with conn:
        conn.execute("UPDATE meta SET value = 'garbage' WHERE key = 'hlc'")
    conn.close()
    _refused(crm("outbox", "--json", home=home), 7, "store_corrupt", "holds no records", "crm init --rep NAME")
    assert crm("init", "--rep", "rep-2", home=home).code == 0
    assert crm("status", "--json", home=home).json["rep"] == "rep-2"


# -- a home no store could live in --------------------------------------------------------------
HOME_COMMANDS = [("init", "--rep", "rep-1"), ("outbox",), ("account", "add", "--name", "X"), ("status",),
                 ("doctor",), ("doctor", "--repair")]


@pytest.mark.parametrize("args", HOME_COMMANDS, ids=" ".join)
def test_a_home_that_is_not_a_directory_is_a_usage_error(tmp_path, args):
    regular = tmp_path / "notes.txt"
    regular.write_text("precious")
    for home, words in ((Path("/dev/null"), "is a device, not a directory"),
                        (regular, "is a regular file, not a directory"),
                        (regular / "crm", "a part of the path is a file")):
        _refused(crm(*args, "--json", home=home), 2, "usage", str(home), words)
    assert regular.read_text() == "precious"


@pytest.mark.parametrize("args", HOME_COMMANDS, ids=" ".join)
def test_an_over_long_home_is_a_usage_error(tmp_path, args):
    long_name = tmp_path / ("n" * 300)
    deep = tmp_path.joinpath(*["d" * 200] * 25)
    _refused(crm(*args, "--json", home=long_name), 2, "usage", "300 bytes long", "at most 255 bytes")
    _refused(crm(*args, "--json", home=deep), 2, "usage", "the path is too long")
    assert list(tmp_path.iterdir()) == []


def test_a_usage_error_without_json_says_what_is_wrong(tmp_path):
    result = crm("init", "--rep", "rep-1", home=Path("/dev/null"))
    assert result.code == 2
    assert result.stderr.startswith("crm: error: --home / CRM_HOME /dev/null is a device, not a directory")
