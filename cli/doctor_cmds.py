"""``crm doctor``: a thin wrapper around ``crm.doctor.diagnose`` (and ``repair`` with --repair)."""


from typing import Annotated

import typer

from cli import output
from cli.common import Json, home, sub_app

doctor_app = sub_app("Check this device's store and say how to recover.")


@doctor_app.command("doctor")
def doctor(
    ctx: typer.Context,
    repair: Annotated[bool, typer.Option(
        "--repair", help="First clear what an interrupted `crm init` left (an unfinished store holding "
                         "nothing, its leftover files); never touches a store holding records or queued changes.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Check the local store without changing it: file, integrity, schema, meta, outbox, clock, space.

    Exit codes: 0 healthy, 5 no store, 7 damaged, 8 newer schema, 11 inconsistent, 12 disk full;
    each problem comes with how to recover. Without --repair nothing is written; with it only
    what an interrupted `crm init` left is removed, then the home is checked as usual.

    \b
    Example:
      crm doctor --json
      crm doctor --repair      # then `crm init --rep NAME` if it cleared an unfinished store
    """
    from crm.doctor import Finding, diagnose
    from crm.doctor import repair as clear

    done = clear(home(ctx)) if repair else []
    report = diagnose(home(ctx))
    if repair:
        report.findings[:0] = [Finding("repair", True, line) for line in done] or [Finding(
            "repair", True, "nothing to repair: --repair clears only what an interrupted `crm init` left, and "
                            "changes nothing else")]
    error = report.error()
    if not as_json:
        for finding in report.findings:
            output.emit(None, as_json=False, text=f"{'ok' if finding.ok else 'FAIL':<5} {finding.check:<15} "
                                                   f"{finding.message}")
            if finding.recovery:
                output.emit(None, as_json=False, text=f"{'':<21} how to recover: {finding.recovery}")
    elif error is None:
        output.emit(report.to_json(), as_json=True)
    if error is not None:
        raise error
