"""A run's timeline, for the certificate: what each participant did when, drawn as inline SVG.

``timeline_data`` turns a history (and, for a scenario, the steps pytest-bdd ran) into lanes: one
per device, always one for the server (its actions, its crashes and the time it was down, its
backups and restores) and one for the harness when it recorded something. Every action and fault
keeps its history sequence number, the ``#n`` the checkers' messages cite, so an anomaly can point
at the very bar it is about. ``timeline_svg`` draws it with CSS classes (``TIMELINE_CSS``) rather
than inline colours: not-saved, SIGKILL, a server that is down, a life event and the step that
failed each have a class and a colour of their own, explained by ``legend()``.
"""

from __future__ import annotations

import html
from typing import Any

from .history import OUTCOMES, SERVER_DOWN_FAULTS, History

LABELS = {"create_account": "account", "log_visit": "visit", "take_order": "order", "write_note": "note",
          "add_order_line": "line", "edit_field": "edit", "backoffice_edit": "back office",
          "start_background_sync": "bg sync on", "stop_background_sync": "bg sync off"}

# One colour per meaning; the legend and the bars use the same classes.
CLASSES = {
    "ev-ok": ("#2e7d32", "saved / ok"),
    "ev-fail": ("#c62828", "not saved (a not_saved exit)"),
    "ev-unknown": ("#ef6c00", "unknown outcome (killed, timed out)"),
    "ev-fault": ("#b0bec5", "network fault (airplane mode, a toxic)"),
    "ev-kill": ("#4a148c", "SIGKILL (force-quit, server crash)"),
    "ev-server-down": ("#263238", "server down"),
    "ev-life": ("#1565c0", "backup, restore, clone"),
    "step-failed": ("#ffcdd2", "the step that failed"),
}
TIMELINE_CSS = """
svg.timeline text { font-family: system-ui, sans-serif; }
svg.timeline .lane-name { font-size: 12px; fill: #263238; }
svg.timeline .lane-name.server { font-weight: 700; }
svg.timeline .seq { font-size: 8px; fill: #37474f; }
svg.timeline .act { font-size: 9px; fill: #37474f; }
svg.timeline .step { fill: #eceff1; stroke: white; }
svg.timeline .step.alt { fill: #f5f7f8; }
svg.timeline .step.after { fill: #fafafa; stroke: #cfd8dc; stroke-dasharray: 3 2; }
svg.timeline .step-text { font-size: 9px; fill: #546e7a; }
svg.timeline .step.step-failed { fill: #ffcdd2; stroke: #c62828; stroke-width: 1.5; }
svg.timeline .step-text.step-failed { fill: #b71c1c; font-weight: 700; }
svg.timeline .failed-at { stroke: #c62828; stroke-dasharray: 4 3; stroke-width: 1.5; }
svg.timeline .ev-fault { opacity: .6; }
svg.timeline .ev-flagged { stroke: #ffd600; stroke-width: 2.5; }
.legend .flagged { color: #263238 !important; outline: 2.5px solid #ffd600; }
svg.timeline .server-up { stroke: #81c784; stroke-width: 3; }
""" + "".join(f"svg.timeline .{name}, .legend .{name} {{ fill: {colour}; background: {colour}; }}\n"
              for name, (colour, _) in CLASSES.items())


def timeline_data(history: History, steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per participant: action spans (invoke to outcome, with both seqs), fault spans (fault to heal)
    and instants (a SIGKILL, a backup); the server's lane always; and the scenario's steps, each with
    its span, the failed one marked (``steps``: what bdd_results records, times on the history's clock)."""
    lanes: dict[str, list[dict[str, Any]]] = {"server": []}
    if not history.events:
        return {"lanes": lanes, "actions": 0, "faults": 0, "span_s": 0, "steps": []}
    t0 = history.events[0].t
    invokes = {e.seq: e for e in history.events if e.type == "invoke"}
    open_faults: dict[tuple[str, str], tuple[float, int]] = {}
    actions = faults = 0
    end = history.events[-1].t - t0

    def lane(name: str) -> list[dict[str, Any]]:
        return lanes.setdefault(name, [])

    for e in history.events:
        t = round(e.t - t0, 3)
        if e.type in OUTCOMES and e.ref in invokes:
            lane(e.device).append({"kind": "action", "label": e.action, "start": round(invokes[e.ref].t - t0, 3),
                                   "end": t, "outcome": e.type, "seq": e.ref, "done": e.seq})
            actions += 1
        elif e.type == "fault":
            faults += 1
            if e.action == "kill":
                lane(e.device).append({"kind": "kill", "label": "SIGKILL", "start": t, "end": t, "seq": e.seq})
                continue
            if e.action in SERVER_DOWN_FAULTS:
                lane("server").append({"kind": "kill", "label": "SIGKILL", "start": t, "end": t, "seq": e.seq})
            open_faults[(e.device, e.action or "")] = (t, e.seq)
        elif e.type == "life":
            lane(e.device).append({"kind": "life", "label": e.action, "start": t, "end": t, "seq": e.seq})
            faults += 1
        elif e.type == "heal":
            for key in [k for k in open_faults if k[0] == e.device and (e.action is None or k[1] == e.action)]:
                start, seq = open_faults.pop(key)
                lane(e.device).append(_fault_span(key[1], start, t, seq, e.seq))
        elif e.type == "export":
            lane(e.device).append({"kind": "export", "label": "export", "start": t, "end": t, "seq": e.seq})
    for (device, action), (start, seq) in open_faults.items():
        lane(device).append(_fault_span(action, start, round(end, 3), seq, None))
    marked = []
    for step in steps or []:
        if step.get("t") is None:
            continue
        start = round(step["t"] - t0, 3)
        stop = round(step["t_end"] - t0, 3) if step.get("t_end") is not None else round(end, 3)
        marked.append({"keyword": step.get("keyword", ""), "text": step.get("text", ""), "line": step.get("line"),
                       "start": max(start, 0.0), "end": max(stop, start, 0.0), "failed": bool(step.get("failed"))})
        end = max(end, stop)
    return {"lanes": lanes, "actions": actions, "faults": faults, "span_s": round(end, 3), "steps": marked}


def _fault_span(action: str, start: float, end: float, seq: int, healed: int | None) -> dict[str, Any]:
    kind = "down" if action in SERVER_DOWN_FAULTS else "fault"
    return {"kind": kind, "label": "server down" if kind == "down" else action, "start": start, "end": end,
            "seq": seq, "healed": healed}


def event_id(anchor: str, seq: int) -> str:
    """The element id of event ``seq`` in the timeline ``anchor``: what an anomaly links to."""
    return f"{anchor}-e{seq}"


def _lane_order(lanes: dict[str, Any]) -> list[str]:
    return sorted(lanes, key=lambda n: (n == "harness", n == "server", n))


def timeline_svg(timeline: dict[str, Any], *, anchor: str = "tl", flagged: frozenset[int] | set[int] = frozenset(),
                 width: int = 960) -> str:
    """The timeline as one inline SVG. Element ids are ``anchor`` and ``anchor-e<seq>`` (one per
    action or fault, by its sequence number); ``flagged`` seqs (an anomaly's evidence) are outlined."""
    esc = html.escape
    lanes = dict(timeline.get("lanes") or {})
    lanes.setdefault("server", [])
    steps = timeline.get("steps") or []
    span = max(timeline.get("span_s") or 0, 0.001)
    lane_h, left, top = 34, 90, (34 if steps else 4)
    order = _lane_order(lanes)
    height = top + lane_h * len(order) + 24
    scale = (width - left - 10) / span
    seen: set[str] = set()

    def x_of(t: float) -> float:
        return left + t * scale

    def ident(seq: int | None) -> str:
        if seq is None:
            return ""
        key = event_id(anchor, seq)
        if key in seen:  # the server's SIGKILL marker and its down span share a seq: the first keeps the id
            return ""
        seen.add(key)
        return f' id="{key}"'

    def cls(base: str, seq: int | None) -> str:
        return base + (" ev-flagged" if seq is not None and seq in flagged else "")

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" height="{height}" '
             f'role="img" aria-label="timeline of actions and faults">']
    for n, step in enumerate(steps):
        x, w = x_of(step["start"]), max(1.0, (step["end"] - step["start"]) * scale)
        failed = " step-failed" if step["failed"] else ""
        text = f"{step['keyword']} {step['text']}".strip()
        title = esc(("FAILED at this step: " if failed else "") + text + (f" (line {step['line']})" if step["line"] else ""))
        parts.append(f'<rect class="step{" alt" if n % 2 else ""}{failed}" x="{x:.1f}" y="2" width="{w:.1f}" '
                     f'height="{top - 8}" data-line="{step["line"] or ""}"><title>{title}</title></rect>')
        if failed:
            parts.append(f'<line class="failed-at" x1="{x:.1f}" x2="{x:.1f}" y1="2" y2="{height - 18}"/>')
        if w > 6 * min(len(text), 12) or failed:  # as much of the step as its band holds
            shown, room = ("✗ " if failed else "") + text, int((w - 4) / 5.5)
            shown = shown if len(shown) <= room else ("✗" if failed else "") if room < 6 else shown[:room - 1] + "…"
            parts.append(f'<text class="step-text{failed}" x="{x + 2:.1f}" y="{top - 12}">{esc(shown)}</text>')
    failed_step = next((step for step in steps if step["failed"]), None)
    if failed_step is not None and span - failed_step["end"] > 0.05:  # what the harness did after it
        x = x_of(failed_step["end"])
        parts.append(f'<rect class="step after" x="{x:.1f}" y="2" width="{max(1.0, width - 10 - x):.1f}" '
                     f'height="{top - 8}"><title>after the failure: every fault healed, every device synced to '
                     f'quiescence, the final exports taken: what the checkers judged</title></rect>'
                     f'<text class="step-text" x="{x + 2:.1f}" y="{top - 12}">after the failure: heal, sync, '
                     f'export, check</text>')
    for i, name in enumerate(order):
        y = top + i * lane_h
        mid = y + lane_h / 2
        server = name == "server"
        parts.append(f'<text class="lane-name{" server" if server else ""}" x="4" y="{mid + 4:.1f}">'
                     f'{esc(name)}</text>')
        if server:  # up unless a down span covers it
            parts.append(f'<line class="server-up" x1="{left}" x2="{width - 10}" y1="{mid:.1f}" y2="{mid:.1f}"/>')
        else:
            parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{mid:.1f}" y2="{mid:.1f}" stroke="#eceff1"/>')
        items = sorted(lanes[name], key=lambda it: ({"down": 0, "fault": 0}.get(it["kind"], 1), it["start"]))
        for item in items:
            x = x_of(item["start"])
            w = max(2.0, (item["end"] - item["start"]) * scale)
            seq = item.get("seq")
            tag = f"#{seq} " if seq is not None else ""
            if item["kind"] in ("fault", "down"):
                klass = "ev-server-down" if item["kind"] == "down" else "ev-fault"
                title = esc(f"{tag}{item['label']} {item['start']:.2f}-{item['end']:.2f} s"
                            + (f" (healed at #{item['healed']})" if item.get("healed") else ""))
                top_, tall = (y + 10, lane_h - 20) if item["kind"] == "down" else (y + 3, lane_h - 6)
                parts.append(f'<rect{ident(seq)} class="{cls(klass, seq)}" data-seq="{seq}" x="{x:.1f}" '
                             f'y="{top_}" width="{w:.1f}" height="{tall}"><title>{title}</title></rect>')
            elif item["kind"] in ("kill", "life", "export"):
                klass = {"kill": "ev-kill", "life": "ev-life", "export": "ev-export"}[item["kind"]]
                title = esc(f"{tag}{item['label']} at {item['start']:.2f} s")
                if item["kind"] == "export":
                    parts.append(f'<circle{ident(seq)} class="{cls(klass, seq)}" data-seq="{seq}" cx="{x:.1f}" '
                                 f'cy="{mid:.1f}" r="2.5" fill="#90a4ae"><title>{title}</title></circle>')
                    continue
                parts.append(f'<rect{ident(seq)} class="{cls(klass, seq)}" data-seq="{seq}" x="{x - 2:.1f}" '
                             f'y="{y + 1}" width="4" height="{lane_h - 2}"><title>{title}</title></rect>'
                             f'<text class="seq" x="{x + 3:.1f}" y="{y + 9}">{esc(tag + ("⚡" if item["kind"] == "kill" else item["label"]))}</text>')
            else:
                outcome = item["outcome"]
                title = esc(f"{tag}{item['label']} → {'not saved' if outcome == 'fail' else outcome} "
                            f"(#{item.get('done')}) {item['start']:.2f}-{item['end']:.2f} s")
                parts.append(f'<rect{ident(seq)} class="{cls("ev-" + outcome, seq)}" data-seq="{seq}" '
                             f'x="{x:.1f}" y="{y + 10}" width="{w:.1f}" height="{lane_h - 20}" stroke="white" '
                             f'stroke-width="0.5"><title>{title}</title></rect>')
                label = LABELS.get(item["label"], item["label"])
                if w > 5.5 * len(label):  # name the action where the bar has room for it
                    parts.append(f'<text class="act" x="{x + 1:.1f}" y="{y + 8}">{esc(label)}</text>')
                if w > 5.5 * len(tag):
                    parts.append(f'<text class="seq" x="{x + 1:.1f}" y="{y + lane_h - 2}">{esc(tag.strip())}</text>')
    parts.append(f'<text x="{left}" y="{height - 4}" font-size="10">0 s</text>'
                 f'<text x="{width - 60}" y="{height - 4}" font-size="10">{span:.1f} s</text></svg>')
    return "".join(parts)


def legend() -> str:
    """The key to the timeline's colours, with the same classes as the bars."""
    return ('<p class="legend">' + "".join(
        f'<span class="{name}"{" style=color:#263238" if name in ("ev-fault", "step-failed") else ""}>{html.escape(text)}</span>'
        for name, (_, text) in CLASSES.items())
        + '<span class="flagged">outlined: an event a finding cites</span>'
        + ' <small>#n: the event\'s sequence number in the history, as the findings cite it</small></p>')
