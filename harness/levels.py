"""The certification rule: from scenario results to a level 1, 2 or 3 and the reasons for it.

* Level 1 (online-only): an offline create was refused, i.e. the create_account scenario in
  airplane mode did not save. Also level 1 when no scenario showed an offline create saved:
  a level is a claim, and without that evidence the harness does not make it.
* Level 2 (offline writes): offline creates are saved, but some scenario failed or some
  check found an anomaly.
* Level 3 (offline-first): every scenario passed with no anomaly, and none was inconclusive.

A scenario is *inconclusive* when its fault never reached the state it tests (the answer to cut
had already arrived, the sync to interrupt had already finished). It is neither a pass nor a
failure, and never enough for level 3: the certificate stays at level 2 until a run reaches it.

A scenario *not exercised* because of a limit the profile declares (``limit``: "hosted", the SUT's
server is the vendor's own and cannot be crashed or restored) is not inconclusive: the level is
claimed on the other scenarios, and ``claim_limits`` says what the claim lacks (docs/levels.md,
"Hosted servers").

Pure: no I/O, so the rule table in docs/levels.md is tested directly (tests/test_levels.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

LEVEL_NAMES = {1: "online-only", 2: "offline writes", 3: "offline-first"}
# What each declared limit leaves out of a level claim, and the qualifier of the level's name.
LIMITS = {"hosted": ("a hosted server (profile [server] url): scenarios that crash, restart, back up or "
                     "restore the server were not exercised and chaos schedules crashed no server, so the level "
                     "is claimed without server-crash and server-restore evidence",
                     "hosted: server faults not exercised"),
          "territories": ("a SUT without territories (no [server] assign and rep_export): the scenarios of reps "
                          "holding different territories and of accounts moved while phones were offline were "
                          "not exercised, so the level says nothing about partial replication",
                          "territories not exercised")}


@dataclass(frozen=True)
class ScenarioResult:
    """One scenario's verdict.

    ``offline_create_refused`` is True when the scenario tried a create in airplane mode and it
    was not saved, False when it tried and the create was saved, None when it did not try.
    """

    name: str
    passed: bool
    offline_create_refused: bool | None = None
    anomalies: list[Any] = field(default_factory=list)
    reason: str = ""
    inconclusive: str = ""
    limit: str = ""  # not exercised because of a limit the profile declares ("hosted")

    @classmethod
    def coerce(cls, value: ScenarioResult | Mapping[str, Any]) -> ScenarioResult:
        if isinstance(value, ScenarioResult):
            return value
        if isinstance(value, Mapping):
            return cls(name=str(value["name"]), passed=bool(value["passed"]),
                       offline_create_refused=value.get("offline_create_refused"),
                       anomalies=list(value.get("anomalies") or ()), reason=str(value.get("reason") or ""),
                       inconclusive=str(value.get("inconclusive") or ""), limit=str(value.get("limit") or ""))
        raise TypeError(f"a scenario result is a ScenarioResult or a mapping, not {type(value).__name__}")

    @property
    def ok(self) -> bool:
        """Passed and clean: a scenario that says it passed while carrying anomalies did not."""
        return self.passed and not self.anomalies and not self.inconclusive

    @property
    def failed(self) -> bool:
        return not self.ok and not (self.inconclusive and not self.anomalies)

    @property
    def not_exercised(self) -> bool:
        """Left out by a declared limit, with nothing found: neither evidence nor an inconclusive run."""
        return bool(self.limit) and not self.passed and not self.anomalies


def _check_name(anomaly: Any) -> str:
    if isinstance(anomaly, Mapping):
        return str(anomaly.get("check", "anomaly"))
    return str(getattr(anomaly, "check", "anomaly"))


def _why_failed(result: ScenarioResult) -> str:
    parts = []
    if result.reason:
        parts.append(result.reason)
    if result.anomalies:
        counts: dict[str, int] = {}
        for anomaly in result.anomalies:
            counts[_check_name(anomaly)] = counts.get(_check_name(anomaly), 0) + 1
        parts.append(", ".join(f"{n} {check}" for check, n in sorted(counts.items())))
    return f"scenario {result.name!r} failed" + (f": {'; '.join(parts)}" if parts else "")


def certify_level(scenario_results: Iterable[ScenarioResult | Mapping[str, Any]]) -> tuple[int, list[str]]:
    """The level the results earn and the reasons, most important first."""
    results = [ScenarioResult.coerce(r) for r in scenario_results]
    if not results:
        raise ValueError("no scenario results: nothing to certify")
    refused = [r for r in results if r.offline_create_refused is True]
    if refused:
        return 1, ([f"offline create refused in scenario {r.name!r}" + (f": {r.reason}" if r.reason else "")
                    for r in refused]
                   + [_why_failed(r) for r in results if r.failed and r not in refused])
    failures = [_why_failed(r) for r in results if r.failed]
    unproven = [f"scenario {r.name!r} was inconclusive: {r.inconclusive}" for r in results
                if not r.failed and r.inconclusive and not r.not_exercised]
    if not any(r.offline_create_refused is False for r in results):
        return 1, ["no scenario showed an offline create being saved", *failures, *unproven]
    if failures or unproven:
        return 2, [*failures, *unproven]
    skipped = [r for r in results if r.not_exercised]
    if skipped:
        return 3, [f"all {len(results) - len(skipped)} scenarios that could run passed with no anomaly; "
                   f"{len(skipped)} not exercised ({', '.join(sorted({r.limit for r in skipped}))}): "
                   + ", ".join(repr(r.name) for r in skipped)]
    return 3, [f"all {len(results)} scenarios passed with no anomaly"]


def claim_limits(scenario_results: Iterable[ScenarioResult | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What a level claim lacks: per declared limit, what it leaves out and the scenarios it kept
    from running (``[]`` when every scenario could run)."""
    results = [ScenarioResult.coerce(r) for r in scenario_results]
    out = []
    for limit in sorted({r.limit for r in results if r.not_exercised}):
        what, qualifier = LIMITS.get(limit, (f"{limit}: some scenarios were not exercised", limit))
        out.append({"limit": limit, "what": what, "qualifier": qualifier,
                    "scenarios": [r.name for r in results if r.not_exercised and r.limit == limit]})
    return out
