"""The coverage matrix (contract writes x faults x sync modes) and the scenario catalogue, read
from the feature files themselves, so the docs cannot claim a cell no scenario covers.

A matrix scenario is a row of ``Examples`` with ``fault`` and ``mode`` columns whose steps make
"one of every kind of write"; other scenarios cover the writes their steps name, under no fault
of the matrix. ``python -m harness.coverage --write`` regenerates the generated sections of
docs/coverage.md and docs/driver-contract.md; tests/test_coverage_matrix.py fails when they are
stale or a cell has no scenario.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gherkin.parser import Parser
from gherkin.token_scanner import TokenScanner

from .locations import features_dir, suite_root

FEATURES = features_dir()  # the checkout's features/, or the copy the wheel ships
ROOT = suite_root()
DOCS = ROOT / "docs"  # a checkout's: the generated sections are written there (--write)

WRITES = ("create_account", "log_visit", "take_order", "add_order_line", "write_note", "edit_field",
          "delete_record")
FAULTS = {
    "airplane": "airplane mode",
    "quit_idle": "force-quit of the app while idle, work queued",
    "quit_saving": "force-quit of the app while saving",
    "quit_syncing": "force-quit of the app while syncing",
    "quit_agent": "force-quit of the background sync process, work queued",
    "server_crash": "server crash and restart in the middle of a sync",
    "lost_answer_reset": "lost answer: the answer that commits the work reset",
    "lost_answer_truncated": "lost answer: the answer that commits the work truncated",
    "partition_push": "partition in the middle of a push",
    "partition_pull": "partition in the middle of a pull",
    "latency_10s": "10 s of latency",
    "stall": "a stalled connection",
}
MODES = ("manual", "background")
NOT_APPLICABLE = {
    ("quit_syncing", "background"): "with background sync nothing but the background sync process syncs; "
                                    "its force-quit is the row quit_agent",
    ("quit_agent", "manual"): "with manual sync there is no background sync process to kill",
}
EVERY_WRITE = "one of every kind of write"
# Step wording -> the contract writes it makes (for scenarios outside the matrix).
STEP_WRITES = (
    (re.compile(r"creates a new account|has an account on|saved \d+ accounts|an account on \"[^\"]+\" that"),
     ("create_account",)),
    (re.compile(r"visit's work"), ("create_account", "log_visit", "take_order", "write_note")),
    (re.compile(r"logs a visit"), ("log_visit",)),
    (re.compile(r"takes an order"), ("take_order",)),
    (re.compile(r"writes a note"), ("write_note",)),
    (re.compile(r"edits the account's"), ("edit_field",)),
    (re.compile(r"deletes the account"), ("delete_record",)),
)


@dataclass(frozen=True)
class Scenario:
    feature: str
    file: str
    name: str
    test: str  # the pytest test id, what `crm certify -k` matches
    steps: tuple[str, ...]
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def writes(self) -> tuple[str, ...]:
        if any(EVERY_WRITE in step for step in self.steps):
            return WRITES
        found = {w for step in self.steps for pattern, writes in STEP_WRITES if pattern.search(step) for w in writes}
        return tuple(w for w in WRITES if w in found)

    @property
    def cell_key(self) -> tuple[str, str] | None:
        fault, mode = self.examples.get("fault"), self.examples.get("mode")
        return (fault, mode) if fault and mode else None


def _python_name(name: str) -> str:
    from pytest_bdd.scenario import make_python_name

    return "test_" + make_python_name(name)


def _fill(text: str, values: dict[str, str]) -> str:
    return re.sub(r"<([^>]+)>", lambda m: values.get(m.group(1), m.group(0)), text)


def scenarios(features: Path = FEATURES) -> list[Scenario]:
    """Every scenario of every feature file, a Scenario Outline once per Examples row."""
    out = []
    for path in sorted(features.glob("*.feature")):
        feature = Parser().parse(TokenScanner(path.read_text(encoding="utf-8")))["feature"]
        background: list[str] = []
        for child in feature["children"]:
            if "background" in child:
                background = [f"{s['keyword'].strip()} {s['text']}" for s in child["background"]["steps"]]
                continue
            sc = child.get("scenario")
            if sc is None:
                continue
            steps = background + [f"{s['keyword'].strip()} {s['text']}" for s in sc["steps"]]
            rows = [({c["value"]: v["value"] for c, v in zip(ex["tableHeader"]["cells"], row["cells"], strict=True)})
                    for ex in sc.get("examples", []) for row in ex["tableBody"]]
            for values in rows or [{}]:
                test = _python_name(sc["name"]) + (f"[{'-'.join(values.values())}]" if values else "")
                out.append(Scenario(feature["name"], path.name, _fill(sc["name"], values), test,
                                    tuple(_fill(s, values) for s in steps), values))
    return out


def cells(found: list[Scenario]) -> dict[tuple[str, str, str], list[Scenario]]:
    """(write, fault, mode) -> the matrix scenarios covering that cell."""
    out: dict[tuple[str, str, str], list[Scenario]] = {}
    for sc in found:
        if sc.cell_key:
            for write in sc.writes:
                out.setdefault((write, *sc.cell_key), []).append(sc)
    return out


def uncovered(found: list[Scenario]) -> list[tuple[str, str, str]]:
    """Cells that apply and have no scenario (a test requires none)."""
    covered = cells(found)
    return [(w, f, m) for f in FAULTS for m in MODES for w in WRITES
            if (f, m) not in NOT_APPLICABLE and not covered.get((w, f, m))]


def unknown_rows(found: list[Scenario]) -> list[str]:
    """Matrix scenarios naming a fault or mode the matrix does not know."""
    return [sc.test for sc in found if sc.cell_key and (sc.cell_key[0] not in FAULTS or sc.cell_key[1] not in MODES)]


def matrix_markdown(found: list[Scenario]) -> str:
    covered = cells(found)
    total = len(FAULTS) * len(MODES) * len(WRITES)
    na = len(NOT_APPLICABLE) * len(WRITES)
    done = sum(1 for key, scs in covered.items() if scs and key[1] in FAULTS)
    lines = [f"{total} cells ({len(WRITES)} writes x {len(FAULTS)} faults x {len(MODES)} sync modes): "
             f"**{done} covered**, {na} not applicable, {total - na - done} uncovered.", "",
             "| fault | sync | " + " | ".join(f"`{w}`" for w in WRITES) + " | scenario (`-k`) |",
             "|---|---|" + "---|" * len(WRITES) + "---|"]
    for fault, what in FAULTS.items():
        for mode in MODES:
            if (fault, mode) in NOT_APPLICABLE:
                lines.append(f"| {what} | {mode} | " + " | ".join("n/a" for _ in WRITES)
                             + f" | not applicable: {NOT_APPLICABLE[fault, mode]} |")
                continue
            marks = ["✓" if covered.get((w, fault, mode)) else "**missing**" for w in WRITES]
            tests = sorted({sc.test.split("[", 1)[1].rstrip("]") for w in WRITES for sc in covered.get((w, fault, mode), [])})
            lines.append(f"| {what} | {mode} | " + " | ".join(marks) + " | "
                         + ", ".join(f"`{t}`" for t in tests) + " |")
    return "\n".join(lines)


def catalogue_markdown(found: list[Scenario]) -> str:
    lines = [f"{len(found)} scenarios. Each runs against its own server, proxies and devices; steps are "
             "listed with the Background's first."]
    feature = None
    for sc in found:
        if sc.feature != feature:
            feature = sc.feature
            lines += ["", f"### {feature} (`features/{sc.file}`)"]
        writes = ", ".join(f"`{w}`" for w in sc.writes) or "none"
        lines += ["", f"**{sc.name}** — `{sc.test}`; writes: {writes}", ""]
        lines += [f"{i}. {step}" for i, step in enumerate(sc.steps, 1)]
    return "\n".join(lines)


SECTIONS = {
    DOCS / "coverage.md": {"matrix": matrix_markdown},
    DOCS / "driver-contract.md": {"catalogue": catalogue_markdown},
}


def _replace(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- BEGIN generated: {name} -->", f"<!-- END generated: {name} -->"
    if begin not in text or end not in text:
        raise ValueError(f"no generated section {name!r} (markers {begin} ... {end})")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def rendered(found: list[Scenario] | None = None) -> dict[Path, str]:
    """Each doc with its generated sections brought up to date."""
    found = scenarios() if found is None else found
    out = {}
    for path, sections in SECTIONS.items():
        text = path.read_text(encoding="utf-8")
        for name, render in sections.items():
            text = _replace(text, name, render(found))
        out[path] = text
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.coverage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the generated sections of the docs")
    args = parser.parse_args(argv)
    found = scenarios()
    if args.write:
        for path, text in rendered(found).items():
            tmp = path.with_suffix(".md.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
    print(matrix_markdown(found))
    missing = uncovered(found)
    if missing:
        print(f"{len(missing)} cell(s) without a scenario: {missing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
