"""The offline CRM engine: a device replica with a durable outbox, the merge rules, and sync.

The public surface is small; everything else is private to its module. Sync (httpx) and the
server (Starlette) live in submodules that load only when used, so local commands stay fast.
"""

from .device import Change, Device
from .errors import (
    AuthRefusedError,
    CrmError,
    ImportFileError,
    NotConfiguredError,
    NotFoundError,
    SchemaTooNewError,
    ServerError,
    ServerUnreachableError,
    StateError,
    StoreCorruptError,
    StoreLockedError,
    StoreMissingError,
    ValidationError,
)
from .records import canonical_json

__version__ = "0.1.0"

__all__ = [
    "AuthRefusedError",
    "Change",
    "CrmError",
    "Device",
    "ImportFileError",
    "NotConfiguredError",
    "NotFoundError",
    "SchemaTooNewError",
    "ServerError",
    "ServerUnreachableError",
    "StateError",
    "StoreCorruptError",
    "StoreLockedError",
    "StoreMissingError",
    "ValidationError",
    "canonical_json",
    "__version__",
]
