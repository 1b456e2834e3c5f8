"""`crm certify`: certify a system under test with the conformance harness."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli import output
from cli.common import Json, sub_app

certify_app = sub_app("Certify an offline-first client as level 1, 2 or 3.")
BELOW_REQUIRED_LEVEL = 30


@certify_app.command("certify")
def certify(
    sut: Annotated[Path, typer.Option("--sut", metavar="PROFILE", help="SUT profile (TOML)")] = Path(
        "fixtures/sut/reference.toml"),
    seed: Annotated[int, typer.Option(help="Seed of the fault schedule and the data")] = 1,
    report: Annotated[Path, typer.Option("--report", metavar="DIR", help="Where the certificate goes")] = Path(
        "reports/certificate"),
    require_level: Annotated[int | None, typer.Option(
        "--require-level", min=1, max=3, help=f"Exit {BELOW_REQUIRED_LEVEL} if the level is below this")] = None,
    select: Annotated[str | None, typer.Option(
        "-k", "--select", help="Only scenarios matching this pytest -k expression")] = None,
    as_json: Json = False,
) -> None:
    """Run the airplane-mode checklist and the fault scenarios against a SUT and certify it.

    Prints one line per scenario as it finishes and writes certificate.json, certificate.md,
    certificate.html and junit.xml to the report folder.

    \b
    Example:
      crm certify --sut fixtures/sut/reference.toml --report reports/reference --require-level 3
    """
    from crm.errors import ValidationError
    from harness.certify import certify as run_certification
    from harness.profile import ProfileError

    def live(verdict: dict) -> None:
        mark = "PASS" if verdict["passed"] else "FAIL"
        why = "" if verdict["passed"] else f"  ({(verdict.get('reason') or '').splitlines()[0][:150]})"
        output.message(f"{mark}  {verdict.get('feature', '')}: {verdict['name']}  [{verdict.get('duration_s')} s]{why}")

    try:
        cert = run_certification(sut, seed=seed, report_dir=report, select=select, live=live)
    except ProfileError as exc:
        raise ValidationError(str(exc)) from None
    summary = {"level": cert.level, "level_name": cert.data["level_name"], "sut": cert.data["sut"]["name"],
               "passed": cert.data["summary"]["passed"], "failed": cert.data["summary"]["failed"],
               "duration_s": cert.data["duration_s"], "report": str(report.resolve() / "certificate.html")}
    output.emit(summary, as_json=as_json,
                text=f"level {cert.level} ({cert.data['level_name']}) for {summary['sut']}: "
                     f"{summary['passed']} passed, {summary['failed']} failed in {summary['duration_s']} s\n"
                     f"certificate: {summary['report']}")
    if require_level is not None and cert.level < require_level:
        output.message(f"crm: level {cert.level} is below the required level {require_level}")
        sys.stdout.flush()
        raise typer.Exit(BELOW_REQUIRED_LEVEL)
