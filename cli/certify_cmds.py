"""`crm certify`: certify a system under test with the conformance harness."""


import sys
from pathlib import Path
from typing import Annotated

import typer

from cli import output
from cli.common import Json

# A group whose callback is the certification itself (`crm certify --sut X ...`), with
# subcommands that try a profile before a full run (`check`, `try`) and compare certificates.
certify_app = typer.Typer(invoke_without_command=True,
                          no_args_is_help=False, add_completion=False, rich_markup_mode=None,
                          pretty_exceptions_enable=False)
BELOW_REQUIRED_LEVEL = 30
CHAOS_ANOMALY = 31
CONTRACT_VIOLATION = 32  # `crm certify check` / `try`: the SUT broke the driver contract
SMOKE_FAILED = 33  # `crm certify --smoke`: the round trip failed


# What `crm certify` imports beyond a rep's crm: the `harness` extra of pyproject.toml.
HARNESS_MODULES = ("pytest", "pytest_bdd", "xdist", "toxiproxy", "requests", "jsonschema", "faker")


def _require_harness() -> None:
    """One line naming the extra when the harness's packages are not installed (exit 42)."""
    import importlib.util

    from crm.errors import HarnessMissingError

    missing = sorted(name for name in HARNESS_MODULES if importlib.util.find_spec(name) is None)
    if missing:
        raise HarnessMissingError(f"crm certify needs the harness's packages: pip install 'crm-offline[harness]' "
                                  f"(missing: {', '.join(missing)})")


@certify_app.callback()
def certify(
    ctx: typer.Context,
    sut: Annotated[Path | None, typer.Option(
        "--sut", metavar="PROFILE",
        help="SUT profile (TOML), or a shipped profile's name: reference, reference-postgres, fragile-sync, "
             "readonly-cache [default: reference, or the one a --replay file names]")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the fault schedule and the data")] = 1,
    report: Annotated[Path | None, typer.Option(
        "--report", metavar="DIR",
        help="Where the certificate goes [default: reports/certificate, with --chaos reports/chaos, with --replay "
             "replay-<file name>/ next to the file; a replay never overwrites another run's certificate]")] = None,
    require_level: Annotated[int | None, typer.Option(
        "--require-level", min=1, max=3, help=f"Exit {BELOW_REQUIRED_LEVEL} if the level is below this")] = None,
    select: Annotated[str | None, typer.Option(
        "-k", "--select", help="Only scenarios matching this pytest -k expression")] = None,
    chaos: Annotated[bool, typer.Option(
        "--chaos", help=f"Run seeded randomized fault schedules instead of the scenarios; exit {CHAOS_ANOMALY} "
                        "on an anomaly")] = False,
    runs: Annotated[int | None, typer.Option(
        "--runs", min=1, help="Chaos: how many randomized histories [default: 10]")] = None,
    devices: Annotated[int | None, typer.Option(
        "--devices", min=1, max=50, help="Chaos: devices per history [default: 3]")] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", min=1, max=1000, help="Chaos: scheduled steps per history [default: 20]")] = None,
    shrink_budget: Annotated[int | None, typer.Option(
        "--shrink-budget", min=0, help="Chaos: at most this many re-runs to shrink each anomaly (0: do not "
                                       "shrink) [default: 40]")] = None,
    replay: Annotated[Path | None, typer.Option(
        "--replay", metavar="FILE", help=f"Play the schedule in FILE (written by --chaos) again; exit "
                                         f"{CHAOS_ANOMALY} if it shows an anomaly")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, max=16, help="Scenarios run at once, each with its own server and proxies")] = 3,
    chaos_runs: Annotated[int, typer.Option(
        "--chaos-runs", min=0, max=1000, help="Seeded chaos runs after the scenarios (level 3 needs them "
                                             "clean; 0 skips the stage, which the certificate records)")] = 3,
    list_: Annotated[bool, typer.Option(
        "--list", help="Print the scenarios the selection (-k) matches, without running anything")] = False,
    smoke: Annotated[bool, typer.Option(
        "--smoke", help=f"A ten-second round trip instead: server, one device, one write, a sync, both exports; "
                        f"exit {SMOKE_FAILED} if the id is not in both")] = False,
    as_json: Json = False,
) -> None:
    """Run the airplane-mode checklist and the fault scenarios against a SUT and certify it.

    Prints one line per scenario as it finishes and writes certificate.json, certificate.md,
    certificate.html and junit.xml to the report folder. A selection (-k) certifies no level: its
    certificate is marked PARTIAL and names the scenarios that ran.

    Before a full run: `crm certify check PROFILE` runs every action once and names each contract
    violation; `crm certify try PROFILE ACTION key=value...` runs one; --smoke does one round trip;
    --list shows what -k selects.

    With --chaos it runs --runs randomized histories instead (run i plays the schedule of seed
    --seed + i - 1), shrinks every kind of anomaly to a minimal schedule and writes each to a JSON
    file that --replay plays again. See docs/chaos.md.

    \b
    Example:
      crm certify --sut fixtures/sut/reference.toml --report reports/reference --require-level 3
      crm certify --sut fixtures/sut/reference.toml --chaos --runs 100 --devices 5 --seed 1
      crm certify --replay reports/chaos/chaos-lost-write-seed-3.json
      crm certify --list -k airplane
      crm certify --sut fixtures/sut/reference.toml --smoke
    """
    _require_harness()
    if ctx.invoked_subcommand is not None:
        return
    from crm.errors import EmptySelectionError, ToxiproxyMissingError, UsageError, ValidationError
    from harness.certify import SelectionError
    from harness.certify import certify as run_certification
    from harness.profile import ProfileError
    from harness.report import mark
    from harness.toxiproxy import ToxiproxyError

    if list_:
        _list(select, as_json=as_json)
        return
    if smoke:
        _smoke(sut or Path("fixtures/sut/reference.toml"), as_json=as_json)
        return
    if select is not None and require_level is not None:
        raise UsageError("--require-level needs the whole suite: a selection (-k) certifies no level")
    chaos_only = {"--runs": runs, "--devices": devices, "--steps": steps, "--shrink-budget": shrink_budget}
    if chaos or replay is not None:
        if select is not None or require_level is not None:
            raise typer.BadParameter("-k/--select and --require-level apply to the scenarios, not to --chaos/--replay")
        if replay is not None and (runs is not None or devices is not None or steps is not None):
            raise typer.BadParameter("--replay plays the file's own schedule: drop --runs, --devices and --steps")
        from harness.chaos import replay_folder

        default = replay_folder(replay) if replay is not None else Path("reports/chaos")
        _chaos(sut, seed=seed, report=report or default, runs=runs, devices=devices, steps=steps,
               shrink_budget=shrink_budget, replay=replay, as_json=as_json)
        return
    given = [name for name, value in chaos_only.items() if value is not None]
    if given:
        raise typer.BadParameter(f"{', '.join(given)} only apply with --chaos")
    sut = sut or Path("reference")  # the shipped reference profile, from any folder
    report = report or Path("reports/certificate")

    def live(verdict: dict) -> None:
        why = "" if verdict["passed"] else \
            f"  ({(verdict.get('inconclusive') or verdict.get('reason') or '').splitlines()[0][:150]})"
        output.message(f"{mark(verdict)}  {verdict.get('feature', '')}: {verdict['name']}  [{verdict.get('duration_s')} s]{why}")

    try:
        cert = run_certification(sut, seed=seed, report_dir=report, select=select, live=live, workers=workers,
                                 chaos_runs=chaos_runs, say=output.message)
    except ProfileError as exc:
        raise ValidationError(str(exc)) from None
    except ToxiproxyError as exc:
        raise ToxiproxyMissingError(str(exc)) from None
    except SelectionError as exc:
        raise (EmptySelectionError if exc.empty else UsageError)(str(exc)) from None
    summary = {"level": cert.level, "level_name": cert.data["level_name"], "partial": cert.partial,
               "sut": cert.data["sut"]["name"],
               "passed": cert.data["summary"]["passed"], "failed": cert.data["summary"]["failed"],
               "inconclusive": cert.data["summary"]["inconclusive"],
               "not_exercised": cert.data["summary"].get("not_exercised", 0),
               "duration_s": cert.data["duration_s"], "report": str(report.resolve() / "certificate.html")}
    limits = sorted({v.get("limit") for v in cert.data["scenarios"] if v.get("limit") and not v.get("passed")})
    verdict = f"PARTIAL (no level; -k {select!r})" if cert.partial else f"level {cert.level} ({cert.data['level_name']})"
    output.emit(summary, as_json=as_json,
                text=f"{verdict} for {summary['sut']}: "
                     f"{summary['passed']} passed, {summary['failed']} failed, {summary['inconclusive']} "
                     f"inconclusive"
                     + (f", {summary['not_exercised']} not exercised ({', '.join(limits)})" if summary["not_exercised"] else "")
                     + f" in {summary['duration_s']} s\n"
                     f"certificate: {summary['report']}")
    if require_level is not None and cert.level < require_level:
        output.message(f"crm: level {cert.level} is below the required level {require_level}")
        sys.stdout.flush()
        raise typer.Exit(BELOW_REQUIRED_LEVEL)


def _chaos(sut: Path | None, *, seed: int, report: Path, runs: int | None, devices: int | None,
           steps: int | None, shrink_budget: int | None, replay: Path | None, as_json: bool) -> None:
    """`crm certify --chaos` and `--replay`: the harness runs the histories, this prints the verdict."""
    from crm.errors import ToxiproxyMissingError, UsageError, ValidationError
    from harness import chaos
    from harness.profile import ProfileError
    from harness.schedule import Schedule, ScheduleError
    from harness.toxiproxy import ToxiproxyError

    try:
        schedule = Schedule.load(replay) if replay is not None else None
        if sut is None:
            sut = Path(schedule.meta["sut"]) if schedule and schedule.meta.get("sut") else Path("reference")
        data = chaos.campaign(
            sut, runs=runs or chaos.DEFAULT_RUNS, seed=seed, devices=devices or chaos.DEFAULT_DEVICES,
            steps=steps or chaos.DEFAULT_STEPS, report_dir=report, replay=schedule, live=output.message,
            shrink_budget=chaos.DEFAULT_SHRINK_BUDGET if shrink_budget is None else shrink_budget)
    except (ProfileError, ScheduleError) as exc:
        raise ValidationError(str(exc)) from None
    except chaos.ReplayFolderError as exc:
        raise UsageError(str(exc)) from None
    except ToxiproxyError as exc:  # no Toxiproxy, no chaos: say how to get it
        raise ToxiproxyMissingError(str(exc)) from None
    s = data["summary"]
    summary = {"mode": data["mode"], "passed": data["passed"], "sut": data["sut"]["name"], "seed": data["seed"],
               "runs": s["runs"], "failed_runs": s["failed_runs"], "errored_runs": s["errored_runs"],
               "actions": s["actions"], "faults": s["faults"], "anomalies": s["anomalies"], "checks": s["checks"],
               "replay_files": [c["replay_file"] for c in data["counterexamples"]],
               "duration_s": data["duration_s"], "report": str(report.resolve() / "certificate.html")}
    verdict = "no anomaly" if data["passed"] else (
        f"{s['anomalies']} anomalies in {s['failed_runs']} run(s)" + (
            f", {s['errored_runs']} run(s) not finished" if s["errored_runs"] else ""))
    lines = [f"{data['mode']} of {summary['sut']}: {verdict}; {s['runs']} run(s), {s['actions']} actions, "
             f"{s['faults']} faults in {data['duration_s']} s"]
    lines += [f"minimal schedule ({c['check']}, seed {c['seed']}, {c['minimal_steps']} steps): {c['replay_file']}"
              for c in data["counterexamples"]]
    lines.append(f"certificate: {summary['report']}")
    output.emit(summary, as_json=as_json, text="\n".join(lines))
    if not data["passed"]:
        sys.stdout.flush()
        raise typer.Exit(CHAOS_ANOMALY)


def _list(select: str | None, *, as_json: bool) -> None:
    """`crm certify --list [-k EXPR]`: what a selection runs, as pytest collects it; nothing runs."""
    from crm.errors import EmptySelectionError, UsageError
    from harness.certify import SelectionError, selection

    try:
        found = selection(select)
    except SelectionError as exc:
        raise (EmptySelectionError if exc.empty else UsageError)(str(exc)) from None
    rows = [{"test": sc["test"], "name": sc["name"], "feature": sc["feature"]} for sc in found]
    output.emit(rows, as_json=as_json,
                text="\n".join(f"{sc['test']}\t{sc['name']}" for sc in rows)
                + f"\n{len(rows)} scenario(s)" + (f" selected by -k {select!r}" if select else ""))


def _contract_check(run, *, as_json: bool) -> bool:
    """Run a check/try/smoke and print its report (JSON or text); whether it found no violation."""
    from crm.errors import UsageError, ValidationError
    from harness import check
    from harness.profile import MissingAction, ProfileError

    try:
        report = run()
    except ProfileError as exc:
        raise ValidationError(str(exc)) from None
    except MissingAction as exc:
        raise ValidationError(str(exc).replace("this scenario needs", "`crm certify try` was asked for")) from None
    except check.CheckUsageError as exc:
        raise UsageError(str(exc)) from None
    output.emit(report.to_json(), as_json=as_json, text=check.text(report))
    return report.ok


def _smoke(sut: Path, *, as_json: bool) -> None:
    from harness import check

    if not _contract_check(lambda: check.smoke(sut), as_json=as_json):
        raise typer.Exit(SMOKE_FAILED)


@certify_app.command("check")
def check_cmd(
    profile: Annotated[Path, typer.Argument(metavar="PROFILE", help="SUT profile (TOML) to check")],
    as_json: Json = False,
) -> None:
    """Check a SUT profile against the driver contract in seconds, without a certification.

    Validates the profile, starts the SUT's server, provisions a rep, sets one device up and runs
    every action the profile defines once (create_account, log_visit, take_order, add_order_line,
    write_note, edit_field, delete_record, outbox, sync, export, the server's export, start and
    stop background sync). Prints per action the command line, its exit code, what the harness
    understood from stdout and every contract violation with the section of
    docs/driver-contract.md to read. Exit 32 on any violation.

    \b
    Example:
      crm certify check fixtures/sut/reference.toml
      crm certify check my-client.toml --json
    """
    from harness import check

    if not _contract_check(lambda: check.check(profile), as_json=as_json):
        raise typer.Exit(CONTRACT_VIOLATION)


@certify_app.command("try")
def try_cmd(
    profile: Annotated[Path, typer.Argument(metavar="PROFILE", help="SUT profile (TOML)")],
    action: Annotated[str, typer.Argument(metavar="ACTION", help="A contract action, e.g. create_account")],
    args: Annotated[list[str] | None, typer.Argument(
        metavar="KEY=VALUE...", help="The action's arguments (the rest take defaults; ids are made first)")] = None,
    as_json: Json = False,
) -> None:
    """Run one contract action against a fresh server and device (after init) and show it.

    Arguments not given take defaults; an id argument not given (account_id, order_id,
    record_id) names a record made first, in setup steps that are shown too. A write is then
    looked for in the device's export. Exit 32 on a contract violation.

    \b
    Example:
      crm certify try fixtures/sut/reference.toml create_account name="Corner Store" city=Leeds
      crm certify try fixtures/sut/reference.toml log_visit outcome="met the buyer"
    """
    from crm.errors import UsageError
    from harness import check

    given = {}
    for item in args or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{item!r}: give each argument as KEY=VALUE, e.g. name=\"Corner Store\"")
        given[key] = value
    if not _contract_check(lambda: check.try_action(profile, action, given), as_json=as_json):
        raise typer.Exit(CONTRACT_VIOLATION)


@certify_app.command("compare")
def compare_cmd(
    folders: Annotated[list[Path], typer.Argument(metavar="DIR...", help="Certificate folders (crm certify --report)")],
    report: Annotated[Path, typer.Option("--report", metavar="DIR",
                                         help="Where comparison.html, .md and .json go")] = Path("reports/compare"),
    as_json: Json = False,
) -> None:
    """Compare several certificates side by side: levels, each scenario per SUT, anomalies by check.

    Writes comparison.html (a grid of SUT columns by scenario rows, one coloured cell per verdict),
    comparison.md and comparison.json to the report folder. A folder without a certificate.json
    is exit 3.

    \b
    Example:
      crm certify compare reports/reference reports/fragile reports/readonly --report reports/compare
    """
    from crm.errors import ValidationError
    from harness import compare

    try:
        data = compare.compare(folders)
    except compare.CompareError as exc:
        raise ValidationError(str(exc)) from None
    page = compare.write(data, report)
    lines = [f"{s['label']}: {s['verdict']} ({s['summary'].get('passed', 0)} passed, "
             f"{s['summary'].get('failed', 0)} failed, {s['summary'].get('inconclusive', 0)} inconclusive)"
             for s in data["suts"]]
    output.emit({**data, "report": str(page.resolve())}, as_json=as_json,
                text="\n".join([*lines, f"comparison: {page.resolve()}"]))
