"""The certificate for people and machines: certificate.json, certificate.md, certificate.html.

The HTML is one self-contained file (inline CSS and SVG): the level in large type, the checklist
as a pass/fail table with its evidence, and per scenario a timeline of every participant's
actions and the faults injected into it (harness/timeline.py), each finding linked to the event
it cites. A chaos campaign's page draws the runs that went wrong and each minimal schedule.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from .timeline import TIMELINE_CSS, event_id, legend, timeline_svg


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_reports(cert: dict[str, Any], folder: Path) -> None:
    chaos = cert.get("mode") in ("chaos", "replay")
    _atomic_write(folder / "certificate.json", json.dumps(cert, indent=2, sort_keys=False, default=str) + "\n")
    _atomic_write(folder / "certificate.md", chaos_markdown(cert) if chaos else markdown(cert))
    _atomic_write(folder / "certificate.html", chaos_page(cert) if chaos else page(cert))


def anchor(verdict: dict[str, Any]) -> str:
    """The id of a scenario's timeline in certificate.html (stable: from its test id, else its name);
    what the certificate's and the comparison's anomaly links point at."""
    import hashlib
    import re

    key = verdict.get("test") or verdict["name"]
    slug = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")[:60]
    return f"tl-{slug}-{hashlib.sha1(key.encode()).hexdigest()[:6]}"


def anomaly_target(verdict: dict[str, Any], anomaly: dict[str, Any]) -> str:
    """Where an anomaly of this scenario points in certificate.html: the event its evidence names
    (``seq``), else the scenario's timeline. The chaos stage's point into the chaos report."""
    if verdict.get("feature") == "Chaos":
        run = anomaly.get("run")
        return "chaos/certificate.html" + (f"#run-{run}" if run is not None else "")
    seq = (anomaly.get("evidence") or {}).get("seq")
    seqs = {item.get("seq") for items in (verdict.get("timeline") or {}).get("lanes", {}).values() for item in items}
    return "#" + (event_id(anchor(verdict), seq) if isinstance(seq, int) and seq in seqs else anchor(verdict))


def _flagged(anomalies: list[dict[str, Any]]) -> set[int]:
    return {seq for a in anomalies for seq in [(a.get("evidence") or {}).get("seq")] if isinstance(seq, int)}


def mark(verdict: dict[str, Any]) -> str:
    """PASS, FAIL or INCONCLUSIVE (its fault never reached the state it tests), and the attempt
    that gave it when the scenario was run again."""
    word = ("PASS" if verdict["passed"] else "BLOCKED" if verdict.get("blocked")
            else "NOT EXERCISED" if verdict.get("limit") and not verdict.get("anomalies")
            else "INCONCLUSIVE" if verdict.get("inconclusive") else "FAIL")
    return word + (f" (attempt {verdict['attempts']})" if verdict.get("attempts", 1) > 1 else "")


def _evidence(verdict: dict[str, Any]) -> str:
    earlier = "; ".join(f"attempt {e['attempt']}: " + (e["inconclusive"] or "failed only on timing: "
                                                       + e["reason"].splitlines()[0][:200] if e["reason"] else "")
                        for e in verdict.get("earlier", []))
    if verdict["passed"]:
        return earlier
    if verdict.get("inconclusive"):
        return "; ".join(p for p in (verdict["inconclusive"], earlier) if p)
    parts = [a["check"] + ": " + a["message"] for a in verdict.get("anomalies", [])]
    if not parts and verdict.get("reason"):
        parts.append(verdict["reason"].splitlines()[0])
    return "; ".join(parts)


# What each check means for a rep in the field, in plain words (docs/levels.md has the exact rule).
IN_THE_FIELD = {
    "lost_write": "work a rep saved (an account, a visit, an order, an order line or a note) never reached "
                  "every device and the office",
    "duplicate": "a record a rep saved once turned up twice: someone has to clean up by hand",
    "lost_edit": "a change a rep saved was overwritten without a trace",
    "not_merged": "two people changed different fields of one customer and one change was thrown away",
    "conflict_log": "the conflict list shows clashes that never happened, so nobody can trust it",
    "lost_delete": "a customer a rep deleted came back",
    "divergence": "two devices, or a device and the office, ended up showing different data",
    "orphan": "a visit, order or note points at a customer that is not there",
    "queue_lost": "work waiting to sync vanished when the app was force-quit",
    "refused": "the app refused to save work (or could not say whether it did) without a network",
    "stuck": "work stayed stuck on the phone instead of syncing by itself in time",
    "slow_write": "saving waited on the network",
    "export_format": "the app's data export is malformed, so it could not be checked",
    "history": "a device or the office could not be checked at all",
}


def plain_words(cert: dict[str, Any]) -> list[str]:
    """The verdict as a field manager would want it: what failed, why it matters, where."""
    if cert.get("partial"):
        return ["This is a partial run (a selection of scenarios): it certifies no level."]
    found = {name: c for name, c in cert.get("checks", {}).items() if c.get("anomalies")}
    lines = []
    if cert.get("level") == 3:
        lines.append("Everything a rep did offline was kept, synced by itself once the network was back, and "
                     "ended the same on every device and in the office: no duplicates, no lost edits, no "
                     "manual clean-up.")
    elif cert.get("level") == 1:
        lines.append("Without a network this app cannot be trusted to save a rep's work.")
    else:
        lines.append("Reps can work offline, but some of what they do can go wrong later:")
    for name, c in found.items():
        where = ", ".join(c["scenarios"][:3]) + (" …" if len(c["scenarios"]) > 3 else "")
        meaning = IN_THE_FIELD.get(name, name)
        lines.append(f"{meaning[0].upper()}{meaning[1:]} ({name}: {c['anomalies']} finding(s), in {where}).")
    unproven = [v["name"] for v in cert.get("scenarios", []) if not v["passed"] and v.get("inconclusive")
                and not v.get("limit")]
    if unproven:
        lines.append(f"{len(unproven)} scenario(s) could not be judged (inconclusive or blocked), so they count "
                     "as no evidence either way.")
    lines += [limit_line(limit) for limit in cert.get("limits", [])]
    return lines


def limit_line(limit: dict[str, Any]) -> str:
    """One declared limit of the claim (a hosted server), in plain words with the scenarios it left out."""
    names = limit["scenarios"]
    what = limit["what"]
    return (f"{what[0].upper()}{what[1:]}. Not exercised ({len(names)}): "
            + ", ".join(names[:4]) + (" …" if len(names) > 4 else "") + ".")


def markdown(cert: dict[str, Any]) -> str:
    s = cert["summary"]
    partial = cert.get("partial")
    title = "PARTIAL, no level" if partial else f"level {cert['level']} ({cert['level_name']})"
    out = [f"# Conformance certificate: {title}", "", *(f"> {line}" for line in plain_words(cert)), "",
           f"* SUT: **{cert['sut']['name']}** {cert['sut']['version']}",
           f"* Suite: {cert['suite']['name']} {cert['suite']['version']} (selection: {cert['suite']['selection']})",
           f"* Seed: {cert['seed']} · started {cert['started_at']} · {cert['duration_s']} s",
           f"* Scenarios: {s['passed']} passed, {s['failed']} failed, {s.get('inconclusive', 0)} inconclusive"
           + (f", {s['not_exercised']} not exercised" if s.get("not_exercised") else "") +
           f" ({s.get('rerun', 0)} run again) · {s['actions']} actions, {s['faults']} faults",
           "", "## Why no level" if partial else "## Why this level", ""]
    out += [f"* {reason}" for reason in cert["reasons"]]
    if cert.get("limits"):
        out += ["", "## What this claim was made without", ""]
        out += [f"* **{limit['qualifier']}**: {limit['what']}. Not exercised: "
                + ", ".join(limit["scenarios"]) for limit in cert["limits"]]
    if partial:
        out += ["", "## Scenarios that ran", ""]
        out += [f"* `{test}`" for test in cert["selection"]["tests"]]
        out += ["", "## What the selected scenarios show (not a certification)", ""]
        out += [f"* {reason}" for reason in cert.get("partial_reasons", [])]
    out += ["", "## Scenarios", "", "| | feature | scenario | time | evidence |", "|---|---|---|---|---|"]
    for v in cert["scenarios"]:
        evidence = _evidence(v).replace("|", "\\|").replace("\n", " ")[:400]
        out.append(f"| {mark(v)} | {v.get('feature', '')} | {v['name']} | {v.get('duration_s', '')} s | {evidence} |")
    out += ["", "## Checks", "", "| check | result | anomalies | scenarios |", "|---|---|---|---|"]
    for name, c in cert["checks"].items():
        out.append(f"| {name} | {'PASS' if c['passed'] else 'FAIL'} | {c['anomalies']} | {', '.join(c['scenarios'])} |")
    failing = [v for v in cert["scenarios"] if not v["passed"] and not v.get("inconclusive")]
    if failing:
        out += ["", "## Evidence", ""]
        for v in failing:
            out += [f"### {v['name']}", ""]
            step = v.get("failed_step")
            if step:
                out += [f"Failed at line {step['line']}: **{step['keyword']} {step['text']}**", ""]
            out += ["```", (v.get("reason") or "")[:3000], "```", ""]
            if v.get("reproduce"):
                out += ["Run it alone: `" + v["reproduce"] + "`", ""]
            if v.get("evidence_dir") or v.get("history"):
                out += ["Evidence: " + ", ".join(f"[{label}](raw/{v[key]})" for key, label in
                                                 (("history", "history"), ("evidence_dir", "server and device logs, "
                                                                                           "device homes"))
                                                 if v.get(key)), ""]
            by_check: dict[str, list[dict[str, Any]]] = {}
            for a in v.get("anomalies", []):
                by_check.setdefault(a["check"], []).append(a)
            for check, group in by_check.items():  # one root cause often shows as many anomalies
                out += [f"* **{check}** ({len(group)}): {IN_THE_FIELD.get(check, check)}", ""]
                for a in group[:3]:
                    link = anomaly_target(v, a)
                    out += [f"  * {a['message']} ([timeline]({'certificate.html' if link.startswith('#') else ''}"
                            f"{link}))", "", "    ```json",
                            "    " + json.dumps(a.get("evidence", {}), default=str, indent=None)[:1500], "    ```"]
                if len(group) > 3:
                    out += [f"  * … and {len(group) - 3} more {check} finding(s) of this scenario "
                            "(all in certificate.json)", ""]
    out += ["", "## Provenance", "", "| | |", "|---|---|"]
    out += [f"| {name} | {value} |" for name, value in provenance_rows(cert)]
    return "\n".join(out) + "\n"


def provenance_rows(cert: dict[str, Any]) -> list[tuple[str, str]]:
    """The provenance of a certificate as (label, text) rows; empty for an older certificate."""
    p = cert.get("provenance")
    if not p:
        return []
    h, m = p["harness"], p["machine"]
    commit = (h["commit"] or "not a git checkout") + (" (uncommitted changes)" if h.get("dirty") else "")
    return [("harness", f"{h['version']} (suite {h['suite_version']})"), ("harness commit", commit),
            ("profile", p["profile"]["path"]), ("profile SHA-256", p["profile"]["sha256"] or "unreadable"),
            ("seed", str(p["seed"])), ("machine", m["hostname"]), ("OS", m["os"]),
            ("CPUs", str(m["cpus"])), ("Python", m["python"])]


def _scenario_link(cert: dict[str, Any], name: str) -> str:
    found = next((v for v in cert["scenarios"] if v["name"] == name), None)
    if found is None:
        return html.escape(name)
    return f'<a href="#{anchor(found)}">{html.escape(name)}</a>'


def page(cert: dict[str, Any]) -> str:
    esc = html.escape
    partial = cert.get("partial")
    level_colour = "#546e7a" if partial else {1: "#c62828", 2: "#ef6c00", 3: "#2e7d32"}[cert["level"]]
    badge = "PARTIAL" if partial else f"Level {cert['level']}" + ("*" if cert.get("limits") else "")  # * see the limits
    heading = "Partial run, no level" if partial else cert["level_name"]
    ran = ""
    if partial:
        ran = (f"<p><b>A partial run</b>: the selection <code>-k {esc(cert['selection']['expression'])}</code> ran "
               f"these scenarios only:</p><ul>"
               + "".join(f"<li><code>{esc(t)}</code></li>" for t in cert["selection"]["tests"]) + "</ul>"
               "<h2>What the selected scenarios show (not a certification)</h2><ul>"
               + "".join(f"<li>{esc(r)}</li>" for r in cert.get("partial_reasons", [])) + "</ul>")
    prov = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in provenance_rows(cert))
    limits = "".join(f'<div class="limits"><h2>* What this claim was made without: {esc(limit["qualifier"])}</h2>'
                     f'<p>{esc(limit["what"])}.</p><p>Not exercised:</p><ul>'
                     + "".join(f'<li><a href="#{anchor(v)}">{esc(v["name"])}</a></li>' for v in cert["scenarios"]
                               if v["name"] in limit["scenarios"])
                     + "</ul></div>" for limit in cert.get("limits", []))
    rows = []
    for v in cert["scenarios"]:
        word = mark(v)
        rows.append(f'<tr class="{word.split()[0].lower()}"><td>{word}</td><td>{esc(v.get("feature", ""))}</td>'
                    f'<td>{esc(v["name"])}</td><td>{v.get("duration_s", "")} s</td>'
                    f'<td>{esc(_evidence(v)[:600])} <a href="#{anchor(v)}">timeline</a></td></tr>')
    checks = "".join(f'<tr class="{"pass" if c["passed"] else "fail"}"><td>{esc(name)}</td>'
                     f'<td>{"PASS" if c["passed"] else "FAIL"}</td><td>{c["anomalies"]}</td>'
                     f'<td>{", ".join(_scenario_link(cert, n) for n in c["scenarios"])}</td></tr>'
                     for name, c in cert["checks"].items())
    timelines = []
    for v in cert["scenarios"]:
        tl_id = anchor(v)
        step = v.get("failed_step")
        failed_at = (f'<p class="failed-step">Failed at line {step["line"]}: <b>{esc(step["keyword"])} '
                     f'{esc(step["text"])}</b>{" (marked on the timeline)" if v.get("timeline") else ""}</p>'
                     ) if step and not v["passed"] and not v.get("not_exercisable") else ""
        if v.get("not_exercisable"):
            failed_at = f'<p class="not-exercised">Not exercised: {esc(v.get("inconclusive") or "")}</p>'
        findings = "".join(
            f'<li id="{tl_id}-a{k}"><b>{esc(a["check"])}</b>: {esc(a["message"][:600])} '
            f'<a class="to-timeline" href="{esc(anomaly_target(v, a))}">'
            f'{"on the timeline" if v.get("feature") != "Chaos" else "in the chaos report"}</a></li>'
            for k, a in enumerate(v.get("anomalies", []), 1))
        drawn = (timeline_svg(v["timeline"], anchor=tl_id, flagged=_flagged(v.get("anomalies", [])))
                 if v.get("timeline") else "<p><em>no timeline recorded</em></p>")
        timelines.append(f'<section id="{tl_id}"><h3>{esc(v["name"])} <small>({mark(v)})</small></h3>'
                         f'{failed_at}{drawn}'
                         + (f'<ol class="findings">{findings}</ol>' if findings else "")
                         + (f'<pre>{esc((v.get("reason") or "")[:3000])}</pre>'
                            if not v["passed"] and not v.get("not_exercisable") else "")
                         + "</section>")
    s = cert["summary"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Conformance certificate: {esc(cert['sut']['name'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #263238; }}
.level {{ font-size: 5rem; font-weight: 800; color: {level_colour}; margin: 0; }}
table {{ border-collapse: collapse; width: 100%; margin: 1rem 0; }}
td, th {{ border-bottom: 1px solid #eceff1; padding: .35rem .5rem; text-align: left; vertical-align: top; font-size: .9rem; }}
tr.pass td:first-child {{ color: #2e7d32; font-weight: 700; }}
tr.fail td:first-child {{ color: #c62828; font-weight: 700; }}
tr.not td:first-child {{ color: #546e7a; font-weight: 700; }}
.limits {{ border-left: 4px solid #546e7a; padding-left: 1rem; }}
pre {{ background: #f5f5f5; padding: .5rem; white-space: pre-wrap; font-size: .8rem; }}
.legend span {{ display: inline-block; padding: 0 .5rem; margin-right: .5rem; color: white; }}
.failed-step {{ color: #b71c1c; }}
ol.findings li {{ font-size: .85rem; margin: .2rem 0; }}
{TIMELINE_CSS}
</style></head><body>
<p class="level">{badge}</p>
<h1>{esc(heading)}: {esc(cert['sut']['name'])} <small>{esc(cert['sut']['version'])}</small></h1>
{''.join(f'<p class="plain">{esc(line)}</p>' for line in plain_words(cert))}
<p>Suite {esc(cert['suite']['name'])} {esc(cert['suite']['version'])} · seed {cert['seed']} ·
{esc(cert['started_at'])} · {cert['duration_s']} s · {s['passed']} passed, {s['failed']} failed, {s.get('inconclusive', 0)} inconclusive{f", {s['not_exercised']} not exercised" if s.get('not_exercised') else ""} ·
{s['actions']} actions, {s['faults']} faults</p>
<ul>{''.join(f'<li>{esc(r)}</li>' for r in cert['reasons'])}</ul>
{limits}{ran}
<h2>The checklist and the fault scenarios</h2>
<table><tr><th></th><th>feature</th><th>scenario</th><th>time</th><th>evidence</th></tr>{''.join(rows)}</table>
<h2>Checks</h2>
<table><tr><th>check</th><th>result</th><th>anomalies</th><th>scenarios</th></tr>{checks}</table>
<h2>Timelines</h2>
{legend()}
{''.join(timelines)}
<h2>Provenance</h2>
<table>{prov or '<tr><td>not recorded</td></tr>'}</table>
</body></html>
"""


# -- chaos campaigns (harness/chaos.py): runs, figures, and each anomaly with its minimal schedule --
def _step_text(step: dict[str, Any]) -> str:
    rest = {k: v for k, v in step.items() if k not in ("do", "device")}
    who = step.get("device", "server" if step["do"].startswith(("server", "backoffice")) else "")
    return f"{who} {step['do']} " + " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in rest.items())


def _chaos_title(cert: dict[str, Any]) -> str:
    what = "Replay" if cert["mode"] == "replay" else "Chaos run"
    return f"{what}: {'no anomaly' if cert['passed'] else 'anomalies found'} in {cert['sut']['name']}"


def chaos_markdown(cert: dict[str, Any]) -> str:
    s, st = cert["summary"], cert["settings"]
    out = [f"# {_chaos_title(cert)}", "",
           f"* SUT: **{cert['sut']['name']}** {cert['sut']['version']}",
           f"* Seed {cert['seed']} · {st['runs']} run(s) of {st['devices']} device(s) and {st['steps']} step(s) · "
           f"started {cert['started_at']} · {cert['duration_s']} s",
           f"* Exercised: {s['steps']} scheduled steps ({s['fault_steps']} of them faults), {s['actions']} actions, "
           f"{s['faults']} faults injected; {s['shrink_runs']} more runs while shrinking",
           f"* Result: {s['failed_runs']} run(s) with an anomaly, {s['errored_runs']} run(s) the harness could "
           f"not finish, {s['anomalies']} anomalies ({', '.join(f'{k}: {v}' for k, v in s['checks'].items()) or 'none'})",
           "", "| actions | count |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in s["action_kinds"].items()]
    out += ["", "| faults | count |", "|---|---|"] + [f"| {k} | {v} |" for k, v in s["fault_kinds"].items()]
    out += ["", "## Runs", "", "| | run | seed | steps | actions | faults | time | anomalies |",
            "|---|---|---|---|---|---|---|---|"]
    for r in cert["runs"]:
        mark = "PASS" if r["passed"] else "ERROR" if r["error"] and not r["anomalies"] else "FAIL"
        why = ", ".join(r["checks"]) or r["error"][:200].replace("|", "\\|")
        out.append(f"| {mark} | {r['run']} | {r['seed']} | {r['steps']} | {r['actions']} | {r['faults']} | "
                   f"{r['duration_s']} s | {why} |")
    if cert["counterexamples"]:
        out += ["", "## Anomalies and their minimal schedules", ""]
    for c in cert["counterexamples"]:
        out += [f"### {c['check']} (run {c['run']}, seed {c['seed']})", "", c["message"], "",
                f"Shrunk from {c['original_steps']} to {c['minimal_steps']} step(s) in {c['shrink_runs']} re-runs"
                f"{' (budget exhausted)' if c['shrink_exhausted'] else ''}; "
                f"{'reproduced' if c['reproduced'] else 'not reproduced'} on a further replay. "
                f"Replay: `crm certify --sut {cert['sut']['profile']} --replay {c['replay_file']}`", "",
                f"Devices: {', '.join(c['schedule']['devices'])}", ""]
        out += [f"{n}. `{_step_text(step)}`" for n, step in enumerate(c["schedule"]["steps"], 1)]
        out.append("")
    if cert["anomalies"]:
        out += ["", "## Every anomaly", ""]
        for a in cert["anomalies"]:
            out.append(f"* run {a['run']} (seed {a['seed']}) **{a['check']}**: {a['message'][:600]}")
    return "\n".join(out) + "\n"


def _run_id(anomaly: dict[str, Any]) -> str:
    return f"run-{anomaly.get('run')}"


def chaos_page(cert: dict[str, Any]) -> str:
    esc = html.escape
    s = cert["summary"]
    colour = "#2e7d32" if cert["passed"] else "#c62828"
    rows = "".join(
        f'<tr class="{"pass" if r["passed"] else "fail"}"><td>{"PASS" if r["passed"] else "FAIL"}</td>'
        f'<td>{r["run"]}</td><td>{r["seed"]}</td><td>{r["steps"]}</td><td>{r["actions"]}</td><td>{r["faults"]}</td>'
        f'<td>{r["duration_s"]} s</td><td>{esc(", ".join(r["checks"]) or r["error"][:300])}'
        + (f' <a href="#run-{r["run"]}">timeline</a>' if r.get("timeline") else "") + '</td></tr>'
        for r in cert["runs"])
    drawn = {f'run-{r["run"]}': r["timeline"] for r in cert["runs"] if r.get("timeline")}

    def target(a: dict[str, Any]) -> str:
        """An anomaly's link: the event its evidence names in its run's timeline, else that timeline."""
        tl_id = _run_id(a)
        if tl_id not in drawn:
            return ""
        seq = (a.get("evidence") or {}).get("seq")
        seqs = {item.get("seq") for items in drawn[tl_id].get("lanes", {}).values() for item in items}
        return "#" + (event_id(tl_id, seq) if isinstance(seq, int) and seq in seqs else tl_id)

    run_timelines = "".join(
        f'<section id="{tl_id}"><h3>Run {esc(tl_id[4:])}</h3>'
        f'{timeline_svg(tl, anchor=tl_id, flagged=_flagged([a for a in cert["anomalies"] if _run_id(a) == tl_id]))}'
        '</section>' for tl_id, tl in drawn.items())
    kinds = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in
                    [*s["action_kinds"].items(), *(("fault: " + k, v) for k, v in s["fault_kinds"].items())])
    examples = []
    for k, c in enumerate(cert["counterexamples"], 1):
        steps = "".join(f"<li><code>{esc(_step_text(step))}</code></li>" for step in c["schedule"]["steps"])
        minimal = (f'<p>The minimal schedule, as it last failed:</p>'
                   f'{timeline_svg(c["timeline"], anchor=f"cx-{k}", flagged=_flagged(c.get("anomalies", [])))}'
                   if c.get("timeline") else "")
        examples.append(
            f'<section id="cx-{k}"><h3>{esc(c["check"])} <small>run {c["run"]}, seed {c["seed"]}</small></h3>'
            f'<p>{esc(c["message"])}</p><p>Shrunk from {c["original_steps"]} to {c["minimal_steps"]} step(s) in '
            f'{c["shrink_runs"]} re-runs; {"reproduced" if c["reproduced"] else "not reproduced"} on replay. '
            f'Replay: <code>crm certify --sut {esc(cert["sut"]["profile"])} --replay {esc(c["replay_file"])}</code>'
            f'</p><ol>{steps}</ol>{minimal}</section>')
    every = "".join(f'<li>run {a["run"]} (seed {a["seed"]}) <b>{esc(a["check"])}</b>: {esc(a["message"][:600])}'
                    + (f' <a class="to-timeline" href="{target(a)}">on the timeline</a>' if target(a) else "")
                    + "</li>" for a in cert["anomalies"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(_chaos_title(cert))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #263238; }}
.verdict {{ font-size: 3rem; font-weight: 800; color: {colour}; margin: 0; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
td, th {{ border-bottom: 1px solid #eceff1; padding: .3rem .5rem; text-align: left; font-size: .9rem; }}
tr.pass td:first-child {{ color: #2e7d32; font-weight: 700; }}
tr.fail td:first-child {{ color: #c62828; font-weight: 700; }}
code {{ font-size: .8rem; }}
.legend span {{ display: inline-block; padding: 0 .5rem; margin-right: .5rem; color: white; }}
{TIMELINE_CSS}
</style></head><body>
<p class="verdict">{"No anomaly" if cert["passed"] else f"{s['anomalies']} anomalies"}</p>
<h1>{esc(_chaos_title(cert))} <small>{esc(cert["sut"]["version"])}</small></h1>
<p>Seed {cert["seed"]} · {s["runs"]} runs · {s["steps"]} steps · {s["actions"]} actions · {s["faults"]} faults ·
{s["shrink_runs"]} shrinking runs · {esc(cert["started_at"])} · {cert["duration_s"]} s</p>
<h2>Exercised</h2><table><tr><th>kind</th><th>count</th></tr>{kinds}</table>
<h2>Runs</h2>
<table><tr><th></th><th>run</th><th>seed</th><th>steps</th><th>actions</th><th>faults</th><th>time</th>
<th>anomalies</th></tr>{rows}</table>
<h2>Anomalies and their minimal schedules</h2>{(legend() if any(c.get("timeline") for c in cert["counterexamples"])
                                                 else "") + "".join(examples) or "<p>none</p>"}
<h2>Every anomaly</h2><ul>{every or "<li>none</li>"}</ul>
<h2>Timelines of the runs that went wrong</h2>{(legend() + run_timelines) if run_timelines else "<p>none</p>"}
</body></html>
"""
