"""SUT profiles: the reference profile loads, and every kind of broken profile fails with file and key."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest

from harness.profile import (
    ACTION_ARGS,
    REQUIRED_ACTIONS,
    ExitCodes,
    MissingAction,
    MissingValue,
    ProfileError,
    Template,
    device_values,
    load_profile,
    placeholders,
    render,
    server_values,
)

REFERENCE = Path(__file__).resolve().parent.parent / "fixtures" / "sut" / "reference.toml"


def toml(data: dict) -> str:
    """A tiny TOML writer for the shapes a profile has (tables of strings, ints and string/int lists)."""
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def reference_data() -> dict:
    return tomllib.loads(REFERENCE.read_text())


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "sut.toml"
    path.write_text(toml(data))
    return path


def test_reference_profile_loads_with_every_action():
    profile = load_profile(REFERENCE)
    assert profile.name == "crm reference"
    assert set(profile.actions) == set(ACTION_ARGS)
    assert profile.exit_codes == ExitCodes(frozenset({0}), frozenset({2, 3, 4, 5, 7, 8, 9, 10}))
    assert profile.action_timeout_s == 30.0
    assert profile.server_ready == "http://127.0.0.1:{port}/v1/health"
    assert profile.backoffice_edit is not None and profile.version is not None
    assert profile.action("take_order").placeholders == {"home", "account_id", "sku", "qty", "price"}
    argv = profile.action("take_order").render(home="/h", account_id="a1", sku="SKU-1", qty=2, price="1.50")
    assert argv == ["crm", "--home", "/h", "order", "add", "--account", "a1", "--line", "SKU-1:2:1.50", "--json"]


def test_missing_file(tmp_path):
    with pytest.raises(ProfileError, match="no such file") as caught:
        load_profile(tmp_path / "absent.toml")
    assert caught.value.path == tmp_path / "absent.toml" and str(tmp_path) in str(caught.value)


def test_toml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nstart = ["crm" "server"]\nready = "x"\n')
    with pytest.raises(ProfileError, match=r"bad.toml: not valid TOML: .*line \d"):
        load_profile(path)


@pytest.mark.parametrize("section,key", [
    ("server", "start"), ("server", "provision"), ("server", "export"), ("device", "init"),
    *[("actions", name) for name in REQUIRED_ACTIONS],
])
def test_missing_required_template(tmp_path, reference_data, section, key):
    del reference_data[section][key]
    with pytest.raises(ProfileError, match=rf"sut.toml: {section}.{key}: missing") as caught:
        load_profile(write(tmp_path, reference_data))
    assert caught.value.key == f"{section}.{key}"


def test_missing_section_is_a_missing_template(tmp_path, reference_data):
    del reference_data["device"]
    with pytest.raises(ProfileError, match="device.init: missing"):
        load_profile(write(tmp_path, reference_data))


def test_missing_ready_url(tmp_path, reference_data):
    del reference_data["server"]["ready"]
    with pytest.raises(ProfileError, match="server.ready: missing"):
        load_profile(write(tmp_path, reference_data))


def test_optional_actions_may_be_absent_and_say_so_when_needed(tmp_path, reference_data):
    for name in ("sync", "start_background_sync", "stop_background_sync"):
        del reference_data["actions"][name]
    del reference_data["server"]["backoffice_edit"]
    profile = load_profile(write(tmp_path, reference_data))
    assert not profile.has("sync") and profile.has("outbox")
    assert profile.backoffice_edit is None
    with pytest.raises(MissingAction, match=r"defines no \[actions\].start_background_sync"):
        profile.action("start_background_sync")
    with pytest.raises(KeyError, match="not a contract action"):
        profile.action("teleport")


def test_territory_entries_are_optional_and_take_org_rep_and_territory(tmp_path, reference_data):
    reference_data["server"].pop("rep_export", None)
    reference_data["server"].pop("assign", None)
    assert load_profile(write(tmp_path, reference_data)).rep_export is None
    reference_data["server"]["rep_export"] = ["crm", "server", "export", "--data", "{server_dir}", "--org", "{org}",
                                              "--rep", "{rep}"]
    reference_data["server"]["assign"] = ["crm", "server", "assign", "--data", "{server_dir}", "--org", "{org}",
                                          "--rep", "{rep}", "--territory", "{territory}"]
    profile = load_profile(write(tmp_path, reference_data))
    assert profile.rep_export is not None and profile.assign is not None
    reference_data["server"]["rep_export"] = ["crm", "server", "export", "--rep", "{territory}"]
    with pytest.raises(ProfileError, match=r"server.rep_export: placeholder \{territory\}"):
        load_profile(write(tmp_path, reference_data))


def test_unknown_placeholder(tmp_path, reference_data):
    reference_data["actions"]["write_note"] = ["crm", "note", "add", "--text", "{txt}"]
    with pytest.raises(ProfileError, match=r"actions.write_note: unknown placeholder \{txt\}") as caught:
        load_profile(write(tmp_path, reference_data))
    assert caught.value.key == "actions.write_note"


def test_placeholder_without_a_value_in_that_slot(tmp_path, reference_data):
    reference_data["server"]["start"] = ["crm", "server", "serve", "--data", "{home}"]
    with pytest.raises(ProfileError, match=r"server.start: placeholder \{home\} has no value here"):
        load_profile(write(tmp_path, reference_data))
    reference_data["server"]["start"] = ["crm", "server", "serve"]
    reference_data["actions"]["create_account"] = ["crm", "account", "add", "--note", "{text}"]
    with pytest.raises(ProfileError, match=r"actions.create_account: placeholder \{text\}"):
        load_profile(write(tmp_path, reference_data))


def test_program_not_on_path(tmp_path, reference_data):
    reference_data["actions"]["export"] = ["no-such-crm-client", "export"]
    with pytest.raises(ProfileError, match="actions.export: program 'no-such-crm-client' not found on PATH"):
        load_profile(write(tmp_path, reference_data))


def test_python_and_fixtures_expand_before_the_program_check(tmp_path, reference_data):
    script = tmp_path / "client.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    reference_data["actions"]["outbox"] = ["{python}", "-m", "client", "outbox"]
    reference_data["actions"]["export"] = ["{fixtures}/client.sh", "export"]
    reference_data["actions"]["sync"] = ["{home}/bin/client", "sync"]  # per-run: checked when it runs
    profile = load_profile(write(tmp_path, reference_data), fixtures_dir=tmp_path)
    assert profile.action("outbox").render(**profile.base_values)[0] == sys.executable
    assert profile.action("export").render(**profile.base_values)[0] == str(script)
    reference_data["actions"]["export"] = ["{fixtures}/missing.sh", "export"]
    with pytest.raises(ProfileError, match="missing.sh' not found"):
        load_profile(write(tmp_path, reference_data), fixtures_dir=tmp_path)


def test_typos_in_sections_and_keys_are_caught(tmp_path, reference_data):
    reference_data["action"] = {"sync": ["crm", "sync"]}
    with pytest.raises(ProfileError, match=r"\[action\]: unknown section"):
        load_profile(write(tmp_path, reference_data))
    del reference_data["action"]
    reference_data["actions"]["creat_account"] = ["crm"]
    with pytest.raises(ProfileError, match="actions.creat_account: unknown key"):
        load_profile(write(tmp_path, reference_data))


def test_template_must_be_a_list_of_strings(tmp_path, reference_data):
    reference_data["actions"]["sync"] = "crm --home {home} sync"
    with pytest.raises(ProfileError, match="actions.sync: must be a non-empty list of strings"):
        load_profile(write(tmp_path, reference_data))


@pytest.mark.parametrize("codes,message", [
    ({"saved": [0], "not_saved": [0, 2]}, "exit_codes: code 0 cannot be both"),
    ({"saved": ["0"]}, "exit_codes.saved: must be a list of integers"),
    ({"saved": []}, "exit_codes.saved: must list at least one"),
    ({"saved": [0], "unknown": [1]}, "exit_codes.unknown: unknown key"),
])
def test_bad_exit_codes(tmp_path, reference_data, codes, message):
    reference_data["exit_codes"] = codes
    with pytest.raises(ProfileError, match=message):
        load_profile(write(tmp_path, reference_data))


def test_exit_code_classification():
    codes = ExitCodes(frozenset({0}), frozenset({3, 4}))
    assert [codes.classify(c) for c in (0, 3, 4, 1, 20, -9, None)] == \
        ["ok", "fail", "fail", "unknown", "unknown", "unknown", "unknown"]


def test_defaults_without_exit_codes_and_timeouts(tmp_path, reference_data):
    del reference_data["exit_codes"], reference_data["timeouts"]
    profile = load_profile(write(tmp_path, reference_data))
    assert profile.exit_codes == ExitCodes(frozenset({0}), frozenset())
    assert profile.action_timeout_s == 30.0 and profile.ready_timeout_s == 30.0


@pytest.mark.parametrize("timeouts", [{"action_s": 0}, {"action_s": "30"}, {"action_s": True}, {"actions_s": 3}])
def test_bad_timeouts(tmp_path, reference_data, timeouts):
    reference_data["timeouts"] = timeouts
    with pytest.raises(ProfileError, match=r"timeouts\.actions?_s"):
        load_profile(write(tmp_path, reference_data))


def test_env_is_added_with_placeholders_rendered(tmp_path, reference_data):
    reference_data["env"] = {"CLIENT_FIXTURES": "{fixtures}/data", "CLIENT_MODE": "test"}
    profile = load_profile(write(tmp_path, reference_data), fixtures_dir=tmp_path)
    env = profile.environ()
    assert env["CLIENT_FIXTURES"] == f"{tmp_path}/data" and env["CLIENT_MODE"] == "test"
    assert env["PATH"]  # the harness's own environment is kept
    reference_data["env"] = {"CLIENT_HOME": "{home}"}
    with pytest.raises(ProfileError, match=r"env.CLIENT_HOME: placeholder \{home\} has no value here"):
        load_profile(write(tmp_path, reference_data))


def test_render_substitutes_each_argument_and_refuses_missing_values():
    template = Template("actions.edit_field", ("c", "{entity}", "--set", "{field}={value}", "{{literal}}"))
    assert template.render(entity="account", field="name", value="Corner {home} & Co") == \
        ["c", "account", "--set", "name=Corner {home} & Co", "{literal}"]
    with pytest.raises(MissingValue, match=r"actions.edit_field: no value for placeholder \{value\}"):
        template.render(entity="account", field="name")
    with pytest.raises(MissingValue):
        template.render(entity="account", field="name", value=None)
    assert render("http://127.0.0.1:{port}/health", port=8080) == "http://127.0.0.1:8080/health"
    assert placeholders('{"json": 1} {a}{b} {{c}}') == ["a", "b"]


def test_command_is_the_one_place_a_command_line_is_built(tmp_path, reference_data):
    reference_data["actions"]["outbox"] = ["{python}", "{fixtures}/c.py", "--home", "{home}", "outbox"]
    profile = load_profile(write(tmp_path, reference_data), fixtures_dir=tmp_path)
    device = device_values(home=tmp_path / "d1", server_url="http://127.0.0.1:9/", rep="rep-1", token="t")
    assert profile.command("outbox", **device) == [sys.executable, f"{tmp_path}/c.py", "--home", f"{tmp_path}/d1",
                                                   "outbox"]
    assert profile.command("take_order", **device, account_id="a1", sku="S", qty=1, price="2") == \
        profile.action("take_order").render(**profile.base_values, **device, account_id="a1", sku="S", qty=1,
                                            price="2")
    assert profile.command(profile.server_export, **server_values(server_dir="/srv", port=8080), org="acme")[-4:] \
        == ["/srv", "--org", "acme", "--json"]
    assert profile.ready_url(8080) == "http://127.0.0.1:8080/v1/health"
    with pytest.raises(MissingValue, match=r"\{account_id\}"):
        profile.command("take_order", **device)
    del reference_data["actions"]["sync"]
    with pytest.raises(MissingAction):
        load_profile(write(tmp_path, reference_data)).command("sync", **device)


COPY = ["{python}", "-c", "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True)"]


def test_life_event_commands_are_optional_and_take_a_backup_dir(tmp_path, reference_data):
    assert load_profile(write(tmp_path, reference_data)).life == {}
    reference_data["device"]["backup"] = [*COPY, "{home}", "{backup_dir}"]
    reference_data["device"]["restore"] = [*COPY, "{backup_dir}", "{home}"]
    reference_data["server"]["backup"] = [*COPY, "{server_dir}", "{backup_dir}"]
    profile = load_profile(write(tmp_path, reference_data))
    assert sorted(profile.life) == ["device.backup", "device.restore", "server.backup"]
    argv = profile.command(profile.life["device.restore"], home="/h", backup_dir="/b", server_url="u", rep="r",
                           org="o", token="t")
    assert argv[-2:] == ["/b", "/h"]
    reference_data["server"]["restore"] = [*COPY, "{backup_dir}", "{home}"]
    with pytest.raises(ProfileError, match=r"server.restore: placeholder \{home\} has no value here"):
        load_profile(write(tmp_path, reference_data))


def test_every_command_that_takes_a_profile_takes_a_shipped_profiles_name(tmp_path, monkeypatch):
    """`crm certify --sut reference`, `crm certify check reference` and `try reference ...` all mean
    the shipped profile: the bare name is resolved where every profile is read."""
    monkeypatch.chdir(tmp_path)  # no file called "reference" here
    assert load_profile("reference").name == load_profile(REFERENCE).name
    with pytest.raises(ProfileError, match="a bare name picks a shipped profile"):
        load_profile("no-such-vendor")
