"""``crm doctor``: a thin wrapper around ``crm.doctor.diagnose``."""

from __future__ import annotations

import typer

from cli import output
from cli.common import Json, home, sub_app

doctor_app = sub_app("Check this device's store and say how to recover.")


@doctor_app.command("doctor")
def doctor(ctx: typer.Context, as_json: Json = False) -> None:
    """Check the local store without changing it: file, integrity, schema, outbox, clock.

    Exit codes: 0 healthy, 5 no store, 7 damaged, 8 newer schema, 11 inconsistent; each
    problem comes with how to recover. A damaged store is never modified.

    \b
    Example:
      crm doctor --json
    """
    from crm.doctor import diagnose

    report = diagnose(home(ctx))
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
