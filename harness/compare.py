"""`crm certify compare`: several certificates side by side, for evaluators choosing between vendors.

Reads the certificate.json of each folder and writes comparison.json, comparison.md and one
self-contained comparison.html: each SUT's level (or PARTIAL), version, seed and duration; a grid
of SUT columns by scenario rows with a coloured cell per verdict (PASS, FAIL, INCONCLUSIVE, or not
run), so one sees at a glance where each falls short; and the anomalies by check.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from .report import _atomic_write, anchor, anomaly_target, mark

COLOURS = {"PASS": "#2e7d32", "FAIL": "#c62828", "INCONCLUSIVE": "#ef6c00", "BLOCKED": "#ef6c00",
           "NOT EXERCISED": "#78909c", "": "#cfd8dc"}


class CompareError(ValueError):
    """A folder that holds no certificate this can compare."""


def load(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "certificate.json"
    try:
        cert = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompareError(f"{folder}: no certificate.json (a folder `crm certify --report` wrote)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CompareError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(cert, dict) or "scenarios" not in cert or cert.get("mode") in ("chaos", "replay"):
        raise CompareError(f"{path}: not a certificate of `crm certify` (a chaos or replay report?)")
    return cert


def _key(verdict: dict[str, Any]) -> str:
    """A scenario's row: its name; the chaos stage is one row whatever its runs and seed."""
    return "chaos stage" if verdict.get("feature") == "Chaos" else verdict["name"]


def _verdict(cert: dict[str, Any]) -> str:
    return "PARTIAL" if cert.get("partial") else f"level {cert['level']}"


def compare(folders: list[str | Path]) -> dict[str, Any]:
    """The comparison as data: one column per certificate, one row per scenario any of them ran."""
    if not folders:
        raise CompareError("name at least one certificate folder")
    certs = [load(folder) for folder in folders]
    labels = _labels(folders, certs)
    rows: dict[str, dict[str, Any]] = {}
    for label, cert in zip(labels, certs, strict=True):
        for v in cert["scenarios"]:
            row = rows.setdefault(_key(v), {"scenario": _key(v), "feature": v.get("feature", ""), "cells": {}})
            row["cells"][label] = {"verdict": mark(v).split(" (attempt")[0], "attempts": v.get("attempts", 1),
                                   "duration_s": v.get("duration_s"),
                                   "checks": sorted({a["check"] for a in v.get("anomalies", [])}),
                                   # where each check's first anomaly is drawn, in that certificate.html
                                   "links": {a["check"]: anomaly_target(v, a) for a in reversed(v.get("anomalies", []))},
                                   "timeline": anchor(v),
                                   "why": (v.get("inconclusive") or (v.get("reason") or "").splitlines()[0]
                                           if not v["passed"] and (v.get("inconclusive") or v.get("reason")) else "")[:300]}
    checks: dict[str, dict[str, int]] = {}
    for label, cert in zip(labels, certs, strict=True):
        for name, c in cert.get("checks", {}).items():
            checks.setdefault(name, {})[label] = c.get("anomalies", 0)
    suts = [{"label": label, "folder": str(Path(folder).resolve()), "name": cert["sut"]["name"],
             "version": cert["sut"]["version"], "level": cert.get("level"), "partial": bool(cert.get("partial")),
             "partial_level": cert.get("partial_level"), "verdict": _verdict(cert), "seed": cert.get("seed"),
             "claim": cert.get("level_name") or "",  # e.g. "offline-first, territories not exercised"
             "duration_s": cert.get("duration_s"), "started_at": cert.get("started_at"),
             "selection": cert.get("suite", {}).get("selection", "all"), "summary": cert.get("summary", {}),
             "profile_sha256": (cert.get("provenance") or {}).get("profile", {}).get("sha256"),
             "commit": (cert.get("provenance") or {}).get("harness", {}).get("commit")}
            for label, folder, cert in zip(labels, folders, certs, strict=True)]
    return {"suts": suts, "scenarios": list(rows.values()), "checks": checks}


def _labels(folders: list[str | Path], certs: list[dict[str, Any]]) -> list[str]:
    """A column title per certificate: the SUT's name, with the folder when two share a name."""
    names = [c["sut"]["name"] for c in certs]
    return [name if names.count(name) == 1 else f"{name} ({Path(folder).name or folder})"
            for name, folder in zip(names, folders, strict=True)]


def markdown(data: dict[str, Any]) -> str:
    suts = data["suts"]
    out = ["# Certificates compared", "", "| | " + " | ".join(s["label"] for s in suts) + " |",
           "|---|" + "---|" * len(suts)]
    for title, value in (("verdict", lambda s: f"**{s['verdict']}**"), ("claim", lambda s: s["claim"]),
                         ("version", lambda s: s["version"]),
                         ("selection", lambda s: s["selection"]), ("seed", lambda s: s["seed"]),
                         ("duration", lambda s: f"{s['duration_s']} s"),
                         ("passed / failed / inconclusive", lambda s: "{passed} / {failed} / {inconclusive}".format(
                             **{"passed": 0, "failed": 0, "inconclusive": 0, **s["summary"]})),
                         ("started", lambda s: s["started_at"]), ("profile SHA-256", lambda s: (s["profile_sha256"] or "")[:12]),
                         ("harness commit", lambda s: (s["commit"] or "")[:12])):
        out.append(f"| {title} | " + " | ".join(str(value(s)) for s in suts) + " |")
    out += ["", "## Scenarios", "", "| scenario | " + " | ".join(s["label"] for s in suts) + " |",
            "|---|" + "---|" * len(suts)]
    for row in data["scenarios"]:
        cells = []
        for s in suts:
            cell = row["cells"].get(s["label"])
            cells.append("not run" if cell is None else cell["verdict"] + (f" ({', '.join(cell['checks'])})"
                                                                             if cell["checks"] else ""))
        out.append(f"| {row['scenario'].replace('|', '/')} | " + " | ".join(cells) + " |")
    out += ["", "## Anomalies by check", "", "| check | " + " | ".join(s["label"] for s in suts) + " |",
            "|---|" + "---|" * len(suts)]
    for name, counts in data["checks"].items():
        out.append(f"| {name} | " + " | ".join(str(counts.get(s["label"], "")) for s in suts) + " |")
    return "\n".join(out) + "\n"


def page(data: dict[str, Any], folder: str | Path | None = None) -> str:
    """comparison.html; with ``folder`` (where it is written) each anomaly links to its timeline in its
    certificate.html by a relative path (an absolute file URL without it)."""
    import os

    esc = html.escape
    suts = data["suts"]

    def certificate_page(s: dict[str, Any]) -> str:
        target = Path(s["folder"]) / "certificate.html"
        return os.path.relpath(target, Path(folder).resolve()) if folder is not None else target.as_uri()

    def href(s: dict[str, Any], target: str) -> str:
        page_path = certificate_page(s)
        if target.startswith("#"):
            return page_path + target
        return page_path.rsplit("certificate.html", 1)[0] + target  # the chaos stage's report
    head = "".join(f"<th>{esc(s['label'])}</th>" for s in suts)

    def level_cell(s: dict[str, Any]) -> str:
        colour = "#546e7a" if s["partial"] else {1: "#c62828", 2: "#ef6c00", 3: "#2e7d32"}.get(s["level"], "#546e7a")
        return f'<td class="verdict" style="color:{colour}">{esc(s["verdict"].upper())}</td>'

    facts = "".join(
        f"<tr><th>{esc(title)}</th>{''.join(f'<td>{esc(str(value(s)))}</td>' for s in suts)}</tr>"
        for title, value in (("claim", lambda s: s["claim"]), ("version", lambda s: s["version"]),
                             ("selection", lambda s: s["selection"]),
                             ("seed", lambda s: s["seed"]), ("duration", lambda s: f"{s['duration_s']} s"),
                             ("started", lambda s: s["started_at"]),
                             ("profile SHA-256", lambda s: (s["profile_sha256"] or "")[:12]),
                             ("harness commit", lambda s: (s["commit"] or "")[:12]), ("folder", lambda s: s["folder"])))
    grid = []
    for row in data["scenarios"]:
        cells = []
        for s in suts:
            cell = row["cells"].get(s["label"])
            word = cell["verdict"] if cell else ""
            title = "not run" if cell is None else " ".join(
                p for p in (word, f"{cell['duration_s']} s", ", ".join(cell["checks"]), cell["why"]) if p)
            text = {"PASS": "✓", "FAIL": "✗", "INCONCLUSIVE": "?", "BLOCKED": "?", "NOT EXERCISED": "n/e", "": "–"}[word]
            checks = ", ".join(f'<a href="{esc(href(s, cell.get("links", {}).get(c, "#" + cell.get("timeline", ""))))}">'
                               f'{esc(c)}</a>' for c in cell["checks"]) if cell and cell["checks"] else ""
            cells.append(f'<td class="cell" style="background:{COLOURS[word]}" title="{esc(title)}">{text}'
                         + (f"<small>{checks}</small>" if checks else "")
                         + "</td>")
        grid.append(f"<tr><th>{esc(row['scenario'])}</th>{''.join(cells)}</tr>")
    checks = "".join(
        f"<tr><th>{esc(name)}</th>" + "".join(
            f'<td class="{"bad" if counts.get(s["label"]) else ""}">{counts.get(s["label"], "")}</td>' for s in suts)
        + "</tr>" for name, counts in data["checks"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Certificates compared</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #263238; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
td, th {{ border: 1px solid #eceff1; padding: .3rem .5rem; text-align: left; font-size: .85rem; }}
td.verdict {{ font-size: 1.6rem; font-weight: 800; }}
td.cell {{ color: white; text-align: center; font-weight: 700; min-width: 6rem; }}
td.cell small {{ display: block; font-weight: 400; font-size: .7rem; }}
td.cell a {{ color: white; }}
td.bad {{ color: #c62828; font-weight: 700; }}
.legend span {{ display: inline-block; padding: 0 .5rem; margin-right: .5rem; color: white; }}
</style></head><body>
<h1>Certificates compared</h1>
<table><tr><th></th>{head}</tr>
<tr><th>verdict</th>{''.join(level_cell(s) for s in suts)}</tr>
{facts}</table>
<h2>Scenarios</h2>
<p class="legend"><span style="background:{COLOURS['PASS']}">✓ pass</span><span style="background:{COLOURS['FAIL']}">✗ fail</span>
<span style="background:{COLOURS['INCONCLUSIVE']}">? inconclusive</span><span style="background:{COLOURS['']};color:#263238">– not run</span></p>
<table class="grid"><tr><th>scenario</th>{head}</tr>{''.join(grid)}</table>
<h2>Anomalies by check</h2>
<table><tr><th>check</th>{head}</tr>{checks}</table>
</body></html>
"""


def write(data: dict[str, Any], folder: str | Path) -> Path:
    """comparison.json, comparison.md and comparison.html into ``folder``; the HTML's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / "comparison.json", json.dumps(data, indent=2, default=str) + "\n")
    _atomic_write(folder / "comparison.md", markdown(data))
    _atomic_write(folder / "comparison.html", page(data, folder))
    return folder / "comparison.html"
