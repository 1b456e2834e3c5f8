"""Life around the faults: a server restored from an older backup, a device restored from its own
backup, a phone's home copied to a second phone. Nothing any replica holds is lost, everything
converges, and nobody has to clean up (docs/sync-protocol.md, "Continuity").

Each test runs in-process (the fast tier) and against real processes (the full run).
"""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

ORG = "acme"


def _names(export_text: str) -> list[str]:
    return sorted(a["name"] for a in json.loads(export_text)["account"])


def _add(server, home, name: str) -> str:
    return server.ok("account", "add", "--name", name, "--json", home=home)["id"]


def _converged(server, *homes) -> str:
    for _ in range(2):  # everyone pushes, then everyone pulls what the others pushed
        for home in homes:
            server.ok("sync", "--json", home=home)
    exports = {server.export_home(home) for home in homes} | {server.export(ORG)}
    assert len(exports) == 1, "replicas differ after sync"
    return exports.pop()


def _copy_home(src, dst) -> None:
    """A backup of a home as a phone backup takes it: the files, with no process running."""
    shutil.copytree(src, dst)
    for leftover in ("agent.pid", "agent.json"):
        (dst / leftover).unlink(missing_ok=True)


def _device_id(home) -> str:
    with sqlite3.connect(home / "crm.sqlite3") as conn:
        return conn.execute("SELECT value FROM meta WHERE key = 'device_id'").fetchone()[0]


@pytest.mark.parametrize("how", ["crm server restore", "files copied back"])
def test_a_server_restored_from_an_older_backup_gets_back_everything_the_devices_hold(tmp_path, server, how):
    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    d2 = server.device(tmp_path, "d2", server.add_rep(ORG, "d2"))
    _add(server, d1, "Before Backup")
    _converged(server, d1, d2)
    backup = tmp_path / "backup.sqlite3"
    if how == "crm server restore":  # the consistent way, while the server runs
        server.ok("server", "backup", "--data", str(server.data), "--to", str(backup), "--json")
    else:  # the operator's way: the server stopped, its files copied
        server.kill()
        shutil.copytree(server.data, tmp_path / "server-files")
        server.start()
    _add(server, d1, "Acked After Backup 1")
    _add(server, d2, "Acked After Backup 2")
    _converged(server, d1, d2)  # acknowledged and pulled everywhere, then the server goes back

    server.kill()
    if how == "crm server restore":
        server.ok("server", "restore", "--data", str(server.data), "--from", str(backup), "--json")
    else:
        shutil.rmtree(server.data)
        shutil.copytree(tmp_path / "server-files", server.data)
    server.start()
    assert _names(server.export(ORG)) == ["Before Backup"], "the restore took the server back"

    _add(server, d2, "After Restore")  # the restored log reuses positions the devices saw
    final = _converged(server, d1, d2)
    assert _names(final) == ["Acked After Backup 1", "Acked After Backup 2", "After Restore", "Before Backup"]
    for home in (d1, d2):
        outbox = server.ok("outbox", "--json", home=home)
        assert outbox["pending"] == 0 and server.ok("outbox", "--rejected", "--json", home=home)["rejected"] == 0


def test_a_device_restored_from_its_own_backup_takes_a_new_identity_and_gets_its_later_work_back(
        tmp_path, server):
    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    d2 = server.device(tmp_path, "d2", server.add_rep(ORG, "d2"))
    _add(server, d1, "Before Backup")
    _converged(server, d1, d2)
    _copy_home(d1, tmp_path / "d1-backup")
    _add(server, d1, "Made After Backup")  # acknowledged by the server, then the phone is wiped
    _converged(server, d1, d2)
    old_id = _device_id(d1)

    shutil.rmtree(d1)
    shutil.copytree(tmp_path / "d1-backup", d1)
    _add(server, d1, "Made On The Restored Phone")
    final = _converged(server, d1, d2)
    assert _names(final) == ["Before Backup", "Made After Backup", "Made On The Restored Phone"]
    assert _device_id(d1) != old_id, "the restored home must not share its old device id"
    assert server.ok("status", "--json", home=d1)["pending"] == 0


def test_a_home_copied_to_a_second_phone_diverges_nowhere(tmp_path, server):
    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    acc = _add(server, d1, "Shared Shop")
    server.ok("sync", home=d1)
    clone = tmp_path / "d1-clone"
    _copy_home(d1, clone)
    # Both phones work offline as the same device, on new records and on the same record.
    _add(server, d1, "Only On The Original")
    _add(server, clone, "Only On The Clone")
    server.ok("account", "edit", acc, "--set", "city=York", "--json", home=d1)
    server.ok("account", "edit", acc, "--set", "phone=0113 496 0000", "--json", home=clone)
    final = _converged(server, d1, clone)
    assert _names(final) == ["Only On The Clone", "Only On The Original", "Shared Shop"]
    shop = next(a for a in json.loads(final)["account"] if a["id"] == acc)
    assert shop["city"] == "York" and shop["phone"] == "0113 496 0000", "both edits survive"
    assert _device_id(d1) != _device_id(clone), "two phones never keep one device id"


def test_a_device_whose_acknowledgement_was_lost_keeps_its_identity(tmp_path, server):
    """A push the server applied whose answer never arrived is this device's own op, not a clone's."""
    d1 = server.device(tmp_path, "d1", server.add_rep(ORG, "d1"))
    _add(server, d1, "First")
    server.ok("sync", home=d1)
    _add(server, d1, "Answer Lost")
    with sqlite3.connect(d1 / "crm.sqlite3") as conn:
        body = conn.execute("SELECT body FROM outbox WHERE state = 'pending'").fetchone()[0]
    token = server.ok("server", "add-rep", "--data", str(server.data), "--org", ORG, "--rep", "d1", "--json")["token"]
    answer = server.post("/v1/push", json={"protocol": 1, "ops": [json.loads(body)]},
                         headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 200  # applied on the server; the device never saw the answer
    before = _device_id(d1)
    server.ok("sync", home=d1)
    assert _device_id(d1) == before
    assert server.export_home(d1) == server.export(ORG)
