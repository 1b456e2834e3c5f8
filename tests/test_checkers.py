"""The checkers against hand-made histories: each one silent on a clean run, loud on a broken one."""

from __future__ import annotations

import json

import pytest

from harness import checkers
from harness.history import History


def export(*, account=(), visit=(), order=(), note=(), conflicts=()):
    return {"format": "crm-export/1", "account": sorted(account, key=lambda r: r["id"]), "contact": [],
            "visit": sorted(visit, key=lambda r: r["id"]), "order": sorted(order, key=lambda r: r["id"]),
            "note": sorted(note, key=lambda r: r["id"]), "product": [], "conflicts": list(conflicts)}


def acct(rid, name="Acme", city="Leeds", **fields):
    return {"id": rid, "name": name, "city": city, **fields}


def act(h: History, device, action, args, outcome="ok", result=None, exit=None) -> int:
    """Invoke and complete one action; returns the invoke's seq."""
    inv = h.invoke(device, action, args)
    h.complete(inv, outcome, result=result, exit={"ok": 0, "fail": 3}.get(outcome, exit))
    return inv.seq


def create(h, device, rid, name="Acme", city="Leeds", outcome="ok"):
    return act(h, device, "create_account", {"name": name, "city": city}, outcome,
               result={"id": rid, "name": name, "city": city} if outcome == "ok" else None)


def finish(h, *, server, **devices):
    for device, state in devices.items():
        h.append(device, "export", "export", result=state)
    h.append("server", "export", "export", result=server)


def checks(h):
    return sorted({a.check for a in checkers.run_all(h)})


# -- history ---------------------------------------------------------------------------------------
def test_history_pairs_invokes_with_completions_and_round_trips(tmp_path):
    h = History()
    first = h.record({"device": "d1", "type": "invoke", "action": "create_account", "args": {"name": "A"}})
    h.record({"device": "d1", "type": "invoke", "action": "sync"})
    h.record({"device": "d1", "type": "ok", "action": "create_account", "result": {"id": "a1"}, "exit": 0})
    h.append("d1", "fault", "kill")
    ops = h.operations()
    assert [(op.action, op.outcome, op.record_id) for op in ops] == [
        ("create_account", "ok", "a1"), ("sync", "unknown", None)]
    assert ops[0].completion.ref == first.seq
    assert [e.seq for e in h.kills("d1")] == [4]
    path = tmp_path / "history.jsonl"
    h.save(path)
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[2])["ref"] == first.seq
    again = History.load(path)
    assert again.dumps() == h.dumps()
    with pytest.raises(ValueError, match="line 1"):
        History.loads("{not json\n")


def test_history_tracks_airplane_mode():
    h = History()
    h.append("d1", "fault", "offline")
    inside = h.invoke("d1", "create_account", {}).seq
    h.append("d1", "heal", "offline")
    after = h.invoke("d1", "create_account", {}).seq
    assert h.offline_at("d1", inside) and not h.offline_at("d1", after)
    assert not h.offline_at("d2", inside)
    assert not h.offline_throughout("d1", inside, after)


def test_history_counts_a_dead_server_as_cut_off_for_every_device():
    h = History()
    h.append("server", "fault", "server_kill")
    during = h.invoke("d2", "create_account", {}).seq
    h.append("d2", "fault", "offline")
    h.append("server", "heal", "server_kill")
    still = h.invoke("d2", "outbox", {}).seq
    h.append("d2", "heal", "offline")
    back = h.invoke("d2", "outbox", {}).seq
    assert h.offline_at("d1", during) and h.offline_at("d2", during)
    assert not h.offline_at("d1", still) and h.offline_at("d2", still)
    assert h.offline_throughout("d2", during, still) and not h.offline_throughout("d2", during, back)


# -- lost_write ------------------------------------------------------------------------------------
def test_lost_write_clean():
    h = History()
    create(h, "d1", "a1")
    finish(h, d1=export(account=[acct("a1")]), server=export(account=[acct("a1")]))
    assert checkers.lost_write(h) == []
    assert checkers.run_all(h) == []


def test_lost_write_reports_the_action_and_the_export_missing_it():
    h = History()
    seq = create(h, "d1", "a1")
    finish(h, d1=export(account=[acct("a1")]), server=export())
    [anomaly] = checkers.lost_write(h)
    assert anomaly.check == "lost_write"
    assert anomaly.evidence["seq"] == seq and anomaly.evidence["id"] == "a1"
    assert anomaly.evidence["export"] == "server"
    assert "a1" in anomaly.message


def test_lost_write_ignores_unknown_and_failed_writes_but_not_an_ok_without_id():
    h = History()
    create(h, "d1", "a1", outcome="unknown")
    create(h, "d1", "a2", outcome="fail")
    seq = act(h, "d1", "write_note", {"account_id": "a1", "text": "hi"}, result={"saved": True})
    finish(h, d1=export(), server=export())
    [anomaly] = checkers.lost_write(h)
    assert anomaly.evidence["seq"] == seq and "no record id" in anomaly.message


# -- duplicate -------------------------------------------------------------------------------------
def test_duplicate_clean_with_two_actions_of_the_same_payload():
    h = History()
    create(h, "d1", "a1")
    create(h, "d1", "a2")
    state = export(account=[acct("a1"), acct("a2")])
    finish(h, d1=state, server=state)
    assert checkers.duplicate(h) == []


def test_duplicate_same_id_twice_in_an_export():
    h = History()
    create(h, "d1", "a1")
    finish(h, d1=export(account=[acct("a1")]), server=export(account=[acct("a1"), acct("a1")]))
    found = checkers.duplicate(h)
    by_id = [a for a in found if a.evidence.get("id") == "a1"]
    assert by_id and by_id[0].evidence["export"] == "server" and by_id[0].evidence["count"] == 2


def test_duplicate_a_retried_push_that_created_a_second_record():
    h = History()
    seq = create(h, "d1", "a1")
    state = export(account=[acct("a1"), acct("srv-9")])
    finish(h, d1=state, server=state)
    found = checkers.duplicate(h)
    assert {a.evidence["export"] for a in found} == {"d1", "server"}
    assert all(a.evidence["ids"] == ["a1", "srv-9"] for a in found)
    assert all(a.evidence["actions"][0]["seq"] == seq for a in found)


@pytest.mark.parametrize("copies, expected", [(0, 0), (1, 0), (2, 1)])
def test_duplicate_unknown_outcome_may_be_present_zero_or_one_times_never_twice(copies, expected):
    h = History()
    create(h, "d1", None, name="Killed Ltd", outcome="unknown")  # force-quit mid-way
    records = [acct(f"k{i}", name="Killed Ltd") for i in range(copies)]
    finish(h, d1=export(account=records), server=export(account=records))
    found = [a for a in checkers.duplicate(h) if a.evidence["export"] == "server"]
    assert len(found) == expected
    if expected:
        assert found[0].evidence["ids"] == ["k0", "k1"] and found[0].evidence["allowed"] == 1
        assert found[0].evidence["actions"][0]["outcome"] == "unknown"


def test_duplicate_matches_children_by_their_account_payload_when_ids_were_renamed():
    h = History()
    create(h, "d1", "tmp-1")
    visit = act(h, "d1", "log_visit", {"account_id": "tmp-1", "outcome": "met buyer"}, result={"id": "tmp-2"})
    order = act(h, "d1", "take_order", {"account_id": "tmp-1", "sku": "TEA-1", "qty": "2", "price": "2.5"},
                result={"id": "tmp-3"})
    state = export(account=[acct("srv-1")],
                   visit=[{"id": "srv-2", "account": "srv-1", "outcome": "met buyer"},
                          {"id": "srv-4", "account": "srv-1", "outcome": "met buyer"}],
                   order=[{"id": "srv-3", "account": "srv-1",
                           "lines": [{"sku": "TEA-1", "quantity": 2, "unit_price": "2.50"}]},
                          {"id": "srv-5", "account": "srv-1",
                           "lines": [{"sku": "TEA-1", "quantity": 2, "unit_price": "2.50"}]}])
    finish(h, d1=state, server=state)
    found = [a for a in checkers.duplicate(h) if a.evidence["export"] == "server"]
    assert {a.evidence["entity"]: a.evidence["actions"][0]["seq"] for a in found} == {
        "visit": visit, "order": order}
    assert {a.evidence["entity"]: a.evidence["ids"] for a in found} == {
        "visit": ["srv-2", "srv-4"], "order": ["srv-3", "srv-5"]}


# -- order lines added by add_order_line -----------------------------------------------------------
def order_with(*lines, rid="o1"):
    return {"id": rid, "account": "a1", "status": "draft",
            "lines": [{"id": lid, "sku": sku, "quantity": qty, "unit_price": price} for lid, sku, qty, price in lines]}


def lines_history(outcome="ok"):
    """d1 takes an order, d2 adds a second line to it."""
    h = History()
    create(h, "d1", "a1")
    act(h, "d1", "take_order", {"account_id": "a1", "sku": "TEA-1", "qty": 2, "price": "2.50"}, result={"id": "o1"})
    seq = act(h, "d2", "add_order_line", {"order_id": "o1", "sku": "COLA-12", "qty": 5, "price": "9.9"}, outcome,
              result={"id": "l2"} if outcome == "ok" else None)
    return h, seq


def test_added_order_lines_clean_when_every_line_is_there_once():
    h, _ = lines_history()
    state = export(account=[acct("a1")], order=[order_with(("l1", "TEA-1", 2, "2.50"), ("l2", "COLA-12", 5, "9.90"))])
    finish(h, d1=state, d2=state, server=state)
    assert checks(h) == []


def test_an_ok_added_line_missing_from_an_export_is_a_lost_write():
    h, seq = lines_history()
    both = export(account=[acct("a1")], order=[order_with(("l1", "TEA-1", 2, "2.50"), ("l2", "COLA-12", 5, "9.90"))])
    first_only = export(account=[acct("a1")], order=[order_with(("l1", "TEA-1", 2, "2.50"))])
    finish(h, d1=first_only, d2=both, server=first_only)  # whole-record overwrite of the lines
    found = checkers.lost_write(h)
    assert {(a.evidence["seq"], a.evidence["export"]) for a in found} == {(seq, "d1"), (seq, "server")}
    assert "COLA-12" in found[0].message and found[0].evidence["lines"][0]["id"] == "l1"


def test_a_line_added_to_an_order_missing_from_an_export_is_a_lost_write():
    h, seq = lines_history()
    state = export(account=[acct("a1")], order=[order_with(("l1", "TEA-1", 2, "2.50"), ("l2", "COLA-12", 5, "9.90"))])
    finish(h, d1=state, d2=state, server=export(account=[acct("a1")]))
    assert [a.evidence["export"] for a in checkers.lost_write(h) if a.evidence["seq"] == seq] == ["server"]


@pytest.mark.parametrize("outcome", ["ok", "unknown"])
def test_a_line_added_twice_is_a_duplicate(outcome):
    h, seq = lines_history(outcome)
    state = export(account=[acct("a1")], order=[order_with(
        ("l1", "TEA-1", 2, "2.50"), ("l2", "COLA-12", 5, "9.90"), ("l3", "COLA-12", 5, "9.90"))])
    finish(h, d1=state, d2=state, server=state)
    found = [a for a in checkers.duplicate(h) if a.evidence["export"] == "server"]
    assert len(found) == 1 and found[0].evidence["ids"] == ["l2", "l3"]
    assert found[0].evidence["actions"][0]["seq"] == seq and found[0].evidence["allowed"] == 1


def test_a_failed_line_add_may_be_absent():
    h, _ = lines_history("fail")
    state = export(account=[acct("a1")], order=[order_with(("l1", "TEA-1", 2, "2.50"))])
    finish(h, d1=state, d2=state, server=state)
    assert checks(h) == []


# -- lost_edit -------------------------------------------------------------------------------------
def edit(h, device, value, outcome="ok", rid="a1", name="phone"):
    return act(h, device, "edit_field", {"entity": "account", "record_id": rid, "field": name, "value": value},
               outcome, result={"id": rid, name: value} if outcome == "ok" else None)


def sync(h, device, outcome="ok"):
    return act(h, device, "sync", {}, outcome, result={"pushed": 1} if outcome == "ok" else None,
               exit=20 if outcome != "ok" else None)


def test_lost_edit_clean_when_the_value_is_final_or_kept_as_a_conflict():
    h = History()
    create(h, "d1", "a1")
    edit(h, "d1", "0113 496 0000")
    edit(h, "d2", "0113 496 0999")
    conflict = {"id": "op9:phone", "entity": "account", "record": "a1", "field": "phone",
                "kind": "concurrent_edit", "winner": {"value": "0113 496 0999", "stamp": "2"},
                "loser": {"value": "0113 496 0000", "stamp": "1"}}
    state = export(account=[acct("a1", phone="0113 496 0999")], conflicts=[conflict])
    finish(h, d1=state, d2=state, server=state)
    assert checkers.lost_edit(h) == []


def test_lost_edit_whole_record_overwrite_of_another_field_is_reported():
    h = History()
    create(h, "d1", "a1")
    seq = edit(h, "d1", "0113 496 0000")
    edit(h, "d2", "Bradford", name="city")
    state = export(account=[acct("a1", city="Bradford", phone=None)])
    finish(h, d1=state, d2=state, server=state)
    found = checkers.lost_edit(h)
    assert {a.evidence["export"] for a in found} == {"d1", "d2", "server"}
    assert all(a.evidence["seq"] == seq and a.evidence["field"] == "phone" for a in found)
    assert all(a.evidence["final_value"] is None and a.evidence["value"] == "0113 496 0000" for a in found)


def test_lost_edit_superseded_only_after_the_editing_device_synced():
    h = History()
    create(h, "d1", "a1")
    first = edit(h, "d1", "111")
    sync(h, "d1", outcome="fail")  # an unsuccessful sync shows nothing to anyone
    edit(h, "d2", "222")
    state = export(account=[acct("a1", phone="222")])
    finish(h, d1=state, d2=state, server=state)
    assert [a.evidence["seq"] for a in checkers.lost_edit(h)] == [first] * 3

    h = History()
    create(h, "d1", "a1")
    edit(h, "d1", "111")
    sync(h, "d1")
    edit(h, "d2", "222")
    finish(h, d1=state, d2=state, server=state)
    assert checkers.lost_edit(h) == []


def test_lost_edit_superseded_by_a_later_edit_on_the_same_device_and_failed_edits_ignored():
    h = History()
    create(h, "d1", "a1")
    edit(h, "d1", "111")
    edit(h, "d1", "222")
    edit(h, "d1", "333", outcome="fail")
    state = export(account=[acct("a1", phone="222")])
    finish(h, d1=state, server=state)
    assert checkers.lost_edit(h) == []


def test_lost_edit_compares_normalised_values_and_reports_a_missing_record():
    h = History()
    edit(h, "d1", " 2.5 ", rid="o1", name="price")
    seq = edit(h, "d1", "x", rid="gone")
    state = export(account=[acct("o1", price="2.50")])
    finish(h, d1=state, server=state)
    found = checkers.lost_edit(h)
    assert [(a.evidence["seq"], a.evidence["id"]) for a in found] == [(seq, "gone"), (seq, "gone")]


# -- divergence ------------------------------------------------------------------------------------
def test_divergence_clean():
    h = History()
    create(h, "d1", "a1")
    finish(h, d1=export(account=[acct("a1")]), d2=export(account=[acct("a1")]),
           server=export(account=[acct("a1")]))
    assert checkers.divergence(h) == []


def test_divergence_names_the_first_differing_record_and_field():
    h = History()
    create(h, "d1", "a1")
    create(h, "d1", "a2", name="Bolt")
    server = export(account=[acct("a1", phone="1"), acct("a2", name="Bolt")])
    finish(h, d1=export(account=[acct("a1", phone="2")]), d2=server, server=server)
    [anomaly] = checkers.divergence(h)
    ev = anomaly.evidence
    assert (ev["device"], ev["section"], ev["id"], ev["field"]) == ("d1", "account", "a1", "phone")
    assert (ev["device_value"], ev["server_value"], ev["differences"]) == ("2", "1", 2)


def test_divergence_compares_each_device_with_its_reps_export_when_the_profile_gives_one():
    """Territories: d2's rep holds only a2; the organisation holds both. Compared with its rep's
    export d2 agrees; a device holding more than its rep's export diverges."""
    h = History()
    create(h, "d1", "a1")
    create(h, "d2", "a2", name="Bolt")
    both = export(account=[acct("a1"), acct("a2", name="Bolt")])
    finish(h, d1=both, d2=export(account=[acct("a2", name="Bolt")]), server=both)
    assert [a.evidence["device"] for a in checkers.divergence(h)] == ["d2"]  # without the rep's export
    h.append("server", "rep_export", "rep_export", args={"rep": "r2", "for": "d2"},
             result=export(account=[acct("a2", name="Bolt")]))
    assert checkers.divergence(h) == []
    h.append("server", "rep_export", "rep_export", args={"rep": "r1", "for": "d1"},
             result=export(account=[acct("a1")]))
    [anomaly] = checkers.divergence(h)
    assert (anomaly.evidence["device"], anomaly.evidence["id"]) == ("d1", "a2")
    assert set(History.loads(h.dumps()).rep_exports()) == {"d1", "d2"}


def test_a_record_outside_a_devices_territories_is_not_a_lost_write_there_but_is_on_the_server():
    h = History()
    create(h, "d1", "a1")
    act(h, "d1", "edit_field", {"entity": "account", "record_id": "a1", "field": "city", "value": "York"})
    mine = export(account=[acct("a1", city="York")])
    finish(h, d1=mine, d2=export(), server=mine)
    assert checks(h) == ["divergence", "lost_edit", "lost_write"]  # d2 lacks a1: without territories, lost
    h.append("server", "rep_export", "rep_export", args={"rep": "r2", "for": "d2"}, result=export())
    assert checks(h) == []  # d2's rep does not hold a1
    finish(h, d1=mine, d2=export(), server=export())
    assert "lost_write" in checks(h) and "lost_edit" in checks(h)  # the server must still have it


def test_divergence_in_the_conflict_log():
    h = History()
    conflict = {"id": "op1:phone", "entity": "account", "record": "a1", "field": "phone",
                "kind": "concurrent_edit", "winner": {"value": "2", "stamp": "b"}, "loser": {"value": "1", "stamp": "a"}}
    finish(h, d1=export(account=[acct("a1")]), server=export(account=[acct("a1")], conflicts=[conflict]))
    [anomaly] = checkers.divergence(h)
    assert (anomaly.evidence["section"], anomaly.evidence["id"]) == ("conflicts", "op1:phone")
    assert anomaly.evidence["device_value"] is None


# -- orphan ----------------------------------------------------------------------------------------
def test_orphan_clean():
    h = History()
    state = export(account=[acct("a1")], visit=[{"id": "v1", "account": "a1", "outcome": "ok"}],
                   note=[{"id": "n1", "account": "a1", "visit": "v1", "text": "t"}])
    finish(h, d1=state, server=state)
    assert checkers.orphan(h) == []


def test_orphan_reports_children_pointing_at_missing_records():
    h = History()
    state = export(account=[acct("a1")],
                   visit=[{"id": "v1", "account": "tmp-1", "outcome": "ok"}],
                   order=[{"id": "o1", "account": "a1", "lines": []}],
                   note=[{"id": "n1", "account": "a1", "visit": "v9", "text": "t"}])
    finish(h, server=state)
    found = {(a.evidence["id"], a.evidence["field"], a.evidence["missing"]) for a in checkers.orphan(h)}
    assert found == {("v1", "account", "tmp-1"), ("n1", "visit", "v9")}


# -- queue_lost ------------------------------------------------------------------------------------
def offline_then_kill(h, writes, *, pending, outcomes=None):
    """d1 goes offline, makes writes, is force-quit, restarts and reads its outbox."""
    h.append("d1", "fault", "offline")
    seqs = [create(h, "d1", f"a{i}", name=f"Shop {i}", outcome=(outcomes or {}).get(i, "ok"))
            for i in range(writes)]
    h.append("d1", "fault", "kill", detail="SIGKILL client and background sync")
    act(h, "d1", "outbox", {}, result={"pending": pending})
    return seqs


def test_queue_lost_clean_when_every_offline_write_is_still_pending():
    h = History()
    offline_then_kill(h, 2, pending=2)
    assert checkers.queue_lost(h) == []


def test_queue_lost_reports_a_memory_only_queue():
    h = History()
    seqs = offline_then_kill(h, 2, pending=0)
    [anomaly] = checkers.queue_lost(h)
    ev = anomaly.evidence
    assert (ev["pending"], ev["expected"], ev["writes"], ev["ids"]) == (0, 2, seqs, ["a0", "a1"])
    assert ev["kill_seq"] == h.kills("d1")[0].seq


def test_queue_lost_counts_only_ok_writes_since_the_last_ok_sync():
    h = History()
    create(h, "d1", "early")
    sync(h, "d1")
    # write 1 was killed mid-way: its outcome is unknown, so it need not be pending
    offline_then_kill(h, 2, pending=1, outcomes={1: "unknown"})
    assert checkers.queue_lost(h) == []


def test_queue_lost_says_nothing_once_the_device_was_back_online():
    h = History()
    h.append("d1", "fault", "offline")
    create(h, "d1", "a0")
    h.append("d1", "heal", "offline")  # an agent may legitimately have pushed it
    h.append("d1", "fault", "kill")
    act(h, "d1", "outbox", {}, result={"pending": 0})
    assert checkers.queue_lost(h) == []


def test_queue_lost_counts_writes_made_while_the_server_was_down():
    h = History()
    h.append("server", "fault", "server_kill")
    seqs = [create(h, "d1", f"a{i}", name=f"Shop {i}") for i in range(3)]
    h.append("d1", "fault", "kill")
    act(h, "d1", "outbox", {}, result={"pending": 1})
    [anomaly] = checkers.queue_lost(h)
    assert (anomaly.evidence["expected"], anomaly.evidence["writes"]) == (3, seqs)


def test_queue_lost_requires_a_pending_count():
    h = History()
    h.append("d1", "fault", "offline")
    create(h, "d1", "a0")
    h.append("d1", "fault", "kill")
    act(h, "d1", "outbox", {}, result={"entries": []})
    [anomaly] = checkers.queue_lost(h)
    assert "no pending count" in anomaly.message


# -- run_all ---------------------------------------------------------------------------------------
def test_run_all_flags_a_history_without_exports():
    h = History()
    create(h, "d1", "a1")
    assert [(a.check, a.evidence["export"]) for a in checkers.run_all(h)] == [
        ("history", "d1"), ("history", "server")]


def test_run_all_on_a_broken_run_names_each_failing_check():
    h = History()
    create(h, "d1", "a1")
    act(h, "d1", "log_visit", {"account_id": "a1", "outcome": "met"}, result={"id": "v1"})
    device = export(account=[acct("a1")], visit=[{"id": "v1", "account": "a1", "outcome": "met"}])
    server = export(visit=[{"id": "v1", "account": "a1", "outcome": "met"},
                           {"id": "v2", "account": "a1", "outcome": "met"}])
    finish(h, d1=device, server=server)
    assert checks(h) == ["divergence", "duplicate", "lost_write", "orphan"]
    assert all(a.to_json()["evidence"] for a in checkers.run_all(h))


# -- lost_delete ------------------------------------------------------------------------------------
def _deleted_history(*records: dict, outcome: str = "ok") -> History:
    h = History()
    inv = h.invoke("d1", "delete_record", {"entity": "account", "record_id": "a1"})
    h.complete(inv, outcome, result={"id": "a1", "deleted": True} if outcome == "ok" else None,
               exit=0 if outcome == "ok" else None)
    for where, rec in zip(("d1", "server"), records, strict=True):
        h.append(where, "export", "export", result={"format": "crm-export/1", "account": [rec] if rec else []})
    return h


def test_lost_delete_when_a_replica_shows_a_deleted_record_alive():
    lost_delete = checkers.lost_delete
    gone = {"id": "a1", "name": "A", "deleted": True}
    alive = {"id": "a1", "name": "A"}
    assert lost_delete(_deleted_history(gone, gone)) == []
    found = lost_delete(_deleted_history(gone, alive))
    assert [(a.check, a.evidence["export"], a.evidence["id"]) for a in found] == [("lost_delete", "server", "a1")]
    assert lost_delete(_deleted_history(gone, alive, outcome="unknown")) == [], "an unknown delete may not have run"
    assert lost_delete(_deleted_history(gone, None)) == [], "a missing record is lost_write's finding"


# -- the conflict log's precision and field-by-field merge (issue 10, point 7) ----------------------
def city_conflict(winner, loser, kind="concurrent_edit"):
    return {"id": "op7:city", "entity": "account", "record": "a1", "field": "city", "kind": kind,
            "winner": {"value": winner, "stamp": "2"}, "loser": {"value": loser, "stamp": "1"}}


def test_an_edit_that_loses_to_a_value_it_had_already_seen_is_lost_even_if_the_log_lists_it():
    h = History()
    create(h, "d1", "a1")
    sync(h, "d1")
    sync(h, "d2")
    edit(h, "d1", "York", name="city")
    sync(h, "d1")
    sync(h, "d2")  # the tablet has York ...
    hull = edit(h, "d2", "Hull", name="city")  # ... so Hull replaces it knowingly and must win
    state = export(account=[acct("a1", city="York")], conflicts=[city_conflict("York", "Hull")])
    finish(h, d1=state, d2=state, server=state)
    assert {a.evidence["seq"] for a in checkers.lost_edit(h)} == {hull}
    assert [a.check for a in checkers.conflict_log(h)] == ["conflict_log"]


@pytest.mark.parametrize(("synced_between", "precise"), [(False, True), (True, False)])
def test_a_conflict_is_precise_only_between_concurrent_writes(synced_between, precise):
    h = History()
    create(h, "d1", "a1")
    sync(h, "d1")
    sync(h, "d2")
    edit(h, "d1", "York", name="city")
    if synced_between:
        sync(h, "d1")
        sync(h, "d2")
    edit(h, "d2", "Hull", name="city")
    state = export(account=[acct("a1", city="Hull")], conflicts=[city_conflict("Hull", "York")])
    finish(h, d1=state, d2=state, server=state)
    assert (checkers.conflict_log(h) == []) is precise


@pytest.mark.parametrize("entry", [city_conflict("Hull", "Paris"), city_conflict("Rome", "York")])
def test_a_conflict_naming_a_value_nobody_wrote_is_reported(entry):
    h = History()
    create(h, "d1", "a1")
    edit(h, "d1", "York", name="city")
    edit(h, "d2", "Hull", name="city")
    state = export(account=[acct("a1", city="Hull")], conflicts=[city_conflict("Hull", "York"), entry])
    finish(h, d1=state, d2=state, server=state)
    found = checkers.conflict_log(h)
    assert len(found) == 1 and found[0].evidence["conflict"] == entry
    assert "no action wrote" in found[0].message


def test_a_concurrent_back_office_edit_is_a_fair_winner():
    h = History()
    create(h, "d1", "a1")
    sync(h, "d1")
    edit(h, "d1", "York", name="city")
    act(h, "server", "backoffice_edit", {"entity": "account", "record_id": "a1", "field": "city",
                                         "value": "Leeds"}, result={"id": "a1"})
    state = export(account=[acct("a1", city="Leeds")], conflicts=[city_conflict("Leeds", "York")])
    finish(h, d1=state, server=state)
    assert checkers.lost_edit(h) == [] and checkers.conflict_log(h) == []


@pytest.mark.parametrize(("final_phone", "expected"), [("0113 496 0000", []), (None, ["not_merged"] * 3)])
def test_concurrent_edits_of_different_fields_must_both_survive(final_phone, expected):
    h = History()
    create(h, "d1", "a1")
    sync(h, "d1")
    sync(h, "d2")
    edit(h, "d1", "0113 496 0000")
    edit(h, "d2", "Bradford", name="city")
    state = export(account=[acct("a1", city="Bradford", phone=final_phone)])
    finish(h, d1=state, d2=state, server=state)
    assert [a.check for a in checkers.not_merged(h)] == expected


def test_not_merged_leaves_a_field_with_a_competing_write_to_lost_edit():
    h = History()
    create(h, "d1", "a1")
    edit(h, "d1", "York", name="city")
    edit(h, "d2", "Hull", name="city")
    edit(h, "d2", "0113 496 0000")
    state = export(account=[acct("a1", city="Hull", phone="0113 496 0000")])
    finish(h, d1=state, d2=state, server=state)
    assert checkers.not_merged(h) == []
    assert {a.check for a in checkers.lost_edit(h)} == {"lost_edit"}


# -- refused ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("offline", "deleted_first", "expected"), [
    (True, False, ["refused"]), (False, False, []), (True, True, [])])
def test_a_write_refused_offline_is_reported_unless_its_record_was_deleted(offline, deleted_first, expected):
    h = History()
    create(h, "d1", "a1")
    if offline:
        h.append("d1", "fault", "offline")
    if deleted_first:
        act(h, "d1", "delete_record", {"entity": "account", "record_id": "a1"}, result={"id": "a1"})
    act(h, "d1", "log_visit", {"account_id": "a1", "outcome": "met"}, outcome="fail")
    assert [a.check for a in checkers.refused(h)] == expected


@pytest.mark.parametrize(("probe", "expected"), [
    ("lacks", []), ("holds", ["refused"]), ("failed", ["refused"]), ("other target", ["refused"]),
    (None, ["refused"])])
def test_a_write_refused_offline_on_a_record_its_device_never_received_is_not_refused(probe, expected):
    """A schedule may aim an offline write at a record its device never got (the sync that should
    have brought it was killed or cut by a toxic): only the device's own export, taken right after
    the refusal, excuses it, and only if the record is not in it."""
    h = History()
    create(h, "d1", "a1")
    h.append("d2", "fault", "offline")
    act(h, "d2", "edit_field", {"entity": "account", "record_id": "a1", "field": "city", "value": "York"},
        outcome="fail")
    held = export(account=[acct("a1")])
    if probe == "lacks":
        h.append("d2", "probe", "export", args={"target": "a1"}, result=export(account=[acct("b7")]), exit=0)
    elif probe == "holds":
        h.append("d2", "probe", "export", args={"target": "a1"}, result=held, exit=0)
    elif probe == "failed":
        h.append("d2", "probe", "export", args={"target": "a1"}, result=None, exit=1)
    elif probe == "other target":
        h.append("d2", "probe", "export", args={"target": "b7"}, result=export(), exit=0)
    assert [a.check for a in checkers.refused(h)] == expected


@pytest.mark.parametrize(("killed", "expected"), [(False, ["refused"]), (True, [])])
def test_a_write_that_ends_unknown_without_a_kill_is_refused(killed, expected):
    h = History()
    inv = h.invoke("d1", "create_account", {"name": "A", "city": "Leeds"})
    if killed:
        h.append("d1", "fault", "kill")
    h.complete(inv, "unknown", exit=None if killed else 21)
    assert [a.check for a in checkers.refused(h)] == expected


def test_a_lost_write_names_the_record_that_carries_its_payload_under_another_id():
    h = History()
    create(h, "d1", "a1", name="Corner Shop", city="Leeds")
    state = export(account=[acct("srv-9", name="Corner Shop", city="Leeds")])
    finish(h, d1=state, server=state)
    found = checkers.lost_write(h)
    assert {a.evidence["same_payload_ids"][0] for a in found} == {"srv-9"}
    assert all("under another id" in a.message for a in found)


def test_a_conflict_on_the_territory_a_rep_was_assigned_is_a_value_the_server_wrote():
    # Found by chaos with territories: d1 created the account offline before it learnt its rep's
    # territory, and deleted it; the create reached the server without a territory, so the server
    # set the rep's (east) with an op of its own, which lost to the delete: a precise entry, though
    # no action of the harness wrote 'east' to that field. A territory nobody was given still is not.
    def entry(loser):
        return {"id": "op9:territory", "entity": "account", "record": "a1", "field": "territory",
                "kind": "edit_of_deleted", "winner": {"value": True, "stamp": "1@d1"},
                "loser": {"value": loser, "stamp": "2@backoffice"}}

    h = History()
    act(h, "server", "assign", {"org": "acme", "rep": "rep-1", "territory": "east"})
    create(h, "d1", "a1")
    act(h, "d1", "delete_record", {"entity": "account", "record_id": "a1"})
    state = export(conflicts=[entry("east"), entry("west")])
    finish(h, d1=state, server=state)
    found = checkers.conflict_log(h)
    assert [a.evidence["conflict"]["loser"]["value"] for a in found] == ["west"]
