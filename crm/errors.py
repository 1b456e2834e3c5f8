"""Every failure the engine can report, each with the process exit code the CLI maps it to.

One table (docs/exit-codes.md) documents these numbers; keep the two in step.
"""

from __future__ import annotations


class CrmError(Exception):
    """Base class: a failure the user can act on. Never shown as a traceback."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, *, details: object | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict:
        out = {"error": self.kind, "message": self.message}
        if self.details is not None:
            out["details"] = self.details
        return out


class UsageError(CrmError):
    """The command line names something unusable: a --home that is not a directory or is too long,
    a token given twice. The same code and kind as the command-line parser's own usage errors."""

    exit_code = 2
    kind = "usage"


class ValidationError(CrmError):
    """A value the domain refuses: a missing required field, a bad email, a negative price."""

    exit_code = 3
    kind = "invalid"


class NotFoundError(CrmError):
    """An id that names no record in this store."""

    exit_code = 4
    kind = "not_found"


class StoreMissingError(CrmError):
    """No store at the home (run `crm init`), or the home is not usable."""

    exit_code = 5
    kind = "store_missing"


class StoreLockedError(CrmError):
    """Another process held the store's write lock past the busy timeout."""

    exit_code = 6
    kind = "store_locked"


class StoreCorruptError(CrmError):
    """The store file is not a readable SQLite database of ours; it is left untouched."""

    exit_code = 7
    kind = "store_corrupt"


class SchemaTooNewError(CrmError):
    """The store was written by a newer crm; refusing it protects its data."""

    exit_code = 8
    kind = "schema_too_new"


class AmbiguousError(CrmError):
    """A short id, a start of an id, an external ref or a name that names several records; the
    message (and ``details.candidates``) lists them."""

    exit_code = 13
    kind = "ambiguous"


class ImportFileError(CrmError):
    """An import file that is unreadable, empty, malformed or has invalid rows."""

    exit_code = 9
    kind = "import_invalid"


class StateError(CrmError):
    """A valid request the record's current state forbids (editing a deleted record, re-init)."""

    exit_code = 10
    kind = "state"


class StoreInconsistentError(CrmError):
    """`crm doctor` found the store readable but inconsistent (outbox, clock); it was not changed."""

    exit_code = 11
    kind = "store_inconsistent"


class DiskFullError(CrmError):
    """The disk holding the home is full: the change was not made and nothing was lost."""

    exit_code = 12
    kind = "disk_full"

    @classmethod
    def at(cls, directory: object | None, detail: object, *,
           kept: str = "the store is unchanged and this change was not made") -> DiskFullError:
        where = f"the disk holding {directory}" if directory else "the disk"
        return cls(f"{where} is full ({detail}): free space; nothing was lost ({kept}), so run the "
                   "command again once there is room")


class StoreReadOnlyError(CrmError):
    """The home is on a read-only file system (a backup mounted to be looked at, storage the kernel
    remounted read-only): the store can be read, not changed; nothing was changed."""

    exit_code = 14
    kind = "store_read_only"


class ServerUnreachableError(CrmError):
    """The sync server could not be reached or did not answer in time; work stays queued."""

    exit_code = 20
    kind = "unreachable"


class AuthRefusedError(CrmError):
    """The server refused the device token (missing, wrong or revoked)."""

    exit_code = 21
    kind = "auth_refused"


class ServerError(CrmError):
    """The server answered with an error (5xx) or a response that breaks the protocol."""

    exit_code = 22
    kind = "server_error"


class NotConfiguredError(CrmError):
    """The device has no server configured (`crm login`)."""

    exit_code = 23
    kind = "not_configured"


class OpsRejectedError(CrmError):
    """The sync finished, but the server rejected some ops: they wait in `crm outbox --rejected`."""

    exit_code = 24
    kind = "ops_rejected"


# `crm certify`'s own failures (cli/certify_cmds.py raises them; the harness never imports crm).
class ToxiproxyMissingError(CrmError):
    """No toxiproxy-server to break the network with: a certification cannot start."""

    exit_code = 40
    kind = "no_toxiproxy"


class EmptySelectionError(CrmError):
    """`crm certify -k EXPR` (or `--list -k EXPR`) selects no scenario."""

    exit_code = 41
    kind = "empty_selection"


class HarnessMissingError(CrmError):
    """`crm certify` in an install without the harness's packages (the `harness` extra)."""

    exit_code = 42
    kind = "harness_missing"


class InterruptedError_(CrmError):
    """Ctrl-C: whatever was committed stays, the rest was rolled back."""

    exit_code = 130
    kind = "interrupted"
