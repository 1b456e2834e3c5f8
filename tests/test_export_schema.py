"""The export's JSON Schema (harness/schemas/export.schema.json): the reference's exports and the
contract's own example follow it; a malformed export is named field by field, never a divergence."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from harness import checkers
from harness.history import History
from tests.support import crm_inprocess

ROOT = Path(__file__).resolve().parent.parent


def ok(home, *args):
    result = crm_inprocess(*args, "--json", home=home)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def reference_export(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    ok(home, "init", "--rep", "rep-1")
    account = ok(home, "account", "add", "--name", "Corner Shop", "--city", "Leeds")["id"]
    doomed = ok(home, "account", "add", "--name", "Gone Ltd", "--city", "Hull")["id"]
    ok(home, "visit", "log", "--account", account, "--outcome", "met the buyer")
    order = ok(home, "order", "add", "--account", account, "--line", "SKU-1:3:2.50")["id"]
    ok(home, "order", "add-line", order, "--line", "COLA-12:1:9.99")
    ok(home, "note", "add", "--account", account, "--text", "Wants a callback")
    ok(home, "account", "edit", account, "--set", "city=York")
    ok(home, "account", "rm", doomed)
    return ok(home, "export")


def test_the_reference_export_follows_the_schema(reference_export):
    assert checkers.format_errors(reference_export) == []
    assert any(r.get("deleted") is True for r in reference_export["account"])


def test_the_contracts_example_follows_the_schema():
    text = (ROOT / "docs" / "driver-contract.md").read_text(encoding="utf-8")
    example = re.search(r"```json\n(\{\n  \"format\": \"crm-export/1\".*?)\n```", text, re.S).group(1)
    assert checkers.format_errors(json.loads(example)) == []


@pytest.mark.parametrize(("break_it", "path"), [
    (lambda e: e.pop("format"), "$"),
    (lambda e: e["order"][0]["lines"][0].update(quantity="3"), "$.order[0].lines[0].quantity"),
    (lambda e: e["order"][0]["lines"][0].update(unit_price="two fifty"), "$.order[0].lines[0].unit_price"),
    (lambda e: e["account"][0].pop("id"), "$.account[0]"),
    (lambda e: e.update(note={}), "$.note"),
    (lambda e: e["conflicts"].append({"id": "c1", "entity": "account", "record": "a1", "field": "city",
                                      "kind": "concurrent_edit", "winner": {"value": "York"}}), "$.conflicts[0]"),
])
def test_a_malformed_export_is_named_by_its_field(reference_export, break_it, path):
    broken = copy.deepcopy(reference_export)
    break_it(broken)
    errors = checkers.format_errors(broken)
    assert errors and errors[0].startswith(path + ":"), errors


def test_a_malformed_export_is_a_format_error_not_a_divergence(reference_export):
    h = History()
    broken = copy.deepcopy(reference_export)
    broken["order"][0]["lines"][0]["quantity"] = "3"
    h.append("d1", "invoke", "outbox")
    h.append("d1", "export", "export", result=broken)
    h.append("server", "export", "export", result=reference_export)
    found = checkers.run_all(h)
    assert [a.check for a in found] == ["export_format"]
    assert found[0].evidence["export"] == "d1" and "quantity" in found[0].message
