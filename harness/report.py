"""The certificate for people and machines: certificate.json, certificate.md, certificate.html.

The HTML is one self-contained file (inline CSS and SVG): the level in large type, the checklist
as a pass/fail table with its evidence, and per scenario a timeline of every participant's
actions and the faults injected into it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

OUTCOME_COLOURS = {"ok": "#2e7d32", "fail": "#c62828", "unknown": "#ef6c00"}
FAULT_COLOUR = "#b0bec5"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_reports(cert: dict[str, Any], folder: Path) -> None:
    _atomic_write(folder / "certificate.json", json.dumps(cert, indent=2, sort_keys=False, default=str) + "\n")
    _atomic_write(folder / "certificate.md", markdown(cert))
    _atomic_write(folder / "certificate.html", page(cert))


def _evidence(verdict: dict[str, Any]) -> str:
    if verdict["passed"]:
        return ""
    parts = [a["check"] + ": " + a["message"] for a in verdict.get("anomalies", [])]
    if not parts and verdict.get("reason"):
        parts.append(verdict["reason"].splitlines()[0])
    return "; ".join(parts)


def markdown(cert: dict[str, Any]) -> str:
    s = cert["summary"]
    out = [f"# Conformance certificate: level {cert['level']} ({cert['level_name']})", "",
           f"* SUT: **{cert['sut']['name']}** {cert['sut']['version']}",
           f"* Suite: {cert['suite']['name']} {cert['suite']['version']} (selection: {cert['suite']['selection']})",
           f"* Seed: {cert['seed']} · started {cert['started_at']} · {cert['duration_s']} s",
           f"* Scenarios: {s['passed']} passed, {s['failed']} failed · {s['actions']} actions, {s['faults']} faults",
           "", "## Why this level", ""]
    out += [f"* {reason}" for reason in cert["reasons"]]
    out += ["", "## Scenarios", "", "| | feature | scenario | time | evidence |", "|---|---|---|---|---|"]
    for v in cert["scenarios"]:
        mark = "PASS" if v["passed"] else "FAIL"
        evidence = _evidence(v).replace("|", "\\|").replace("\n", " ")[:400]
        out.append(f"| {mark} | {v.get('feature', '')} | {v['name']} | {v.get('duration_s', '')} s | {evidence} |")
    out += ["", "## Checks", "", "| check | result | anomalies | scenarios |", "|---|---|---|---|"]
    for name, c in cert["checks"].items():
        out.append(f"| {name} | {'PASS' if c['passed'] else 'FAIL'} | {c['anomalies']} | {', '.join(c['scenarios'])} |")
    failing = [v for v in cert["scenarios"] if not v["passed"]]
    if failing:
        out += ["", "## Evidence", ""]
        for v in failing:
            out += [f"### {v['name']}", "", "```", (v.get("reason") or "")[:3000], "```", ""]
            for a in v.get("anomalies", []):
                out += [f"* **{a['check']}**: {a['message']}", "",
                        "  ```json", "  " + json.dumps(a.get("evidence", {}), default=str)[:1500], "  ```"]
    return "\n".join(out) + "\n"


def timeline_svg(timeline: dict[str, Any], width: int = 900) -> str:
    lanes = timeline.get("lanes", {})
    if not lanes:
        return "<p><em>no events recorded</em></p>"
    span = max(timeline.get("span_s") or 0, 0.001)
    lane_h, left = 26, 80
    order = sorted(lanes, key=lambda n: (n in ("server", "harness"), n))
    height = lane_h * len(order) + 24
    scale = (width - left - 10) / span
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="timeline of actions and faults">']
    for i, name in enumerate(order):
        y = i * lane_h + 4
        parts.append(f'<text x="4" y="{y + 16}" font-size="12">{html.escape(name)}</text>'
                     f'<line x1="{left}" x2="{width - 10}" y1="{y + 12}" y2="{y + 12}" stroke="#eceff1"/>')
        for item in sorted(lanes[name], key=lambda it: it["kind"] != "fault"):
            x = left + item["start"] * scale
            w = max(2.0, (item["end"] - item["start"]) * scale)
            title = html.escape(f"{item['label']} {item.get('outcome', 'fault')} {item['start']:.2f}-{item['end']:.2f}s")
            if item["kind"] == "fault":
                colour = "#d32f2f" if item["label"] == "SIGKILL" else FAULT_COLOUR
                parts.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{lane_h - 4}" fill="{colour}" '
                             f'opacity="0.55"><title>{title}</title></rect>')
            else:
                colour = OUTCOME_COLOURS.get(item["outcome"], "#546e7a")
                parts.append(f'<rect x="{x:.1f}" y="{y + 6}" width="{w:.1f}" height="{lane_h - 16}" '
                             f'fill="{colour}"><title>{title}</title></rect>')
    parts.append(f'<text x="{left}" y="{height - 4}" font-size="10">0 s</text>'
                 f'<text x="{width - 60}" y="{height - 4}" font-size="10">{span:.1f} s</text></svg>')
    return "".join(parts)


def page(cert: dict[str, Any]) -> str:
    esc = html.escape
    level_colour = {1: "#c62828", 2: "#ef6c00", 3: "#2e7d32"}[cert["level"]]
    rows = []
    for v in cert["scenarios"]:
        mark = "PASS" if v["passed"] else "FAIL"
        rows.append(f'<tr class="{mark.lower()}"><td>{mark}</td><td>{esc(v.get("feature", ""))}</td>'
                    f'<td>{esc(v["name"])}</td><td>{v.get("duration_s", "")} s</td>'
                    f'<td>{esc(_evidence(v)[:600])}</td></tr>')
    checks = "".join(f'<tr class="{"pass" if c["passed"] else "fail"}"><td>{esc(name)}</td>'
                     f'<td>{"PASS" if c["passed"] else "FAIL"}</td><td>{c["anomalies"]}</td>'
                     f'<td>{esc(", ".join(c["scenarios"]))}</td></tr>' for name, c in cert["checks"].items())
    timelines = []
    for v in cert["scenarios"]:
        timelines.append(f'<section><h3>{esc(v["name"])} <small>({"PASS" if v["passed"] else "FAIL"})</small></h3>'
                         f'{timeline_svg(v.get("timeline", {}))}'
                         + (f'<pre>{esc((v.get("reason") or "")[:3000])}</pre>' if not v["passed"] else "")
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
pre {{ background: #f5f5f5; padding: .5rem; white-space: pre-wrap; font-size: .8rem; }}
.legend span {{ display: inline-block; padding: 0 .5rem; margin-right: .5rem; color: white; }}
</style></head><body>
<p class="level">Level {cert['level']}</p>
<h1>{esc(cert['level_name'])}: {esc(cert['sut']['name'])} <small>{esc(cert['sut']['version'])}</small></h1>
<p>Suite {esc(cert['suite']['name'])} {esc(cert['suite']['version'])} · seed {cert['seed']} ·
{esc(cert['started_at'])} · {cert['duration_s']} s · {s['passed']} passed, {s['failed']} failed ·
{s['actions']} actions, {s['faults']} faults</p>
<ul>{''.join(f'<li>{esc(r)}</li>' for r in cert['reasons'])}</ul>
<h2>The checklist and the fault scenarios</h2>
<table><tr><th></th><th>feature</th><th>scenario</th><th>time</th><th>evidence</th></tr>{''.join(rows)}</table>
<h2>Checks</h2>
<table><tr><th>check</th><th>result</th><th>anomalies</th><th>scenarios</th></tr>{checks}</table>
<h2>Timelines</h2>
<p class="legend"><span style="background:#2e7d32">ok</span><span style="background:#c62828">not saved</span>
<span style="background:#ef6c00">unknown</span><span style="background:#90a4ae">fault (offline, toxic, server down)</span>
<span style="background:#d32f2f">SIGKILL</span></p>
{''.join(timelines)}
</body></html>
"""
