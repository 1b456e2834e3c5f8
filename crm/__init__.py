"""The offline CRM engine: a device replica with a durable outbox, the merge rules, and sync.

The public surface is small; everything else is private to its module. Sync (httpx) and the
server (Starlette) live in submodules that load only when used, so local commands stay fast.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

# The public names load on first use (PEP 562), so `import crm.errors` or `crm --version` does not
# pay for the device, the merge rules and the store.
_LAZY = {"Change": "device", "Device": "device", "canonical_json": "records"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        module = _LAZY[name]
    elif name.endswith("Error") and name in __all__:
        module = "errors"
    else:
        raise AttributeError(f"module 'crm' has no attribute {name!r}")
    # An import statement, not importlib.import_module: the same, but `python -X importtime` (how
    # tests/test_cli_subprocess.py sees what a command loads) does not report what import_module loads.
    if module == "device":
        from . import device as loaded
    elif module == "records":
        from . import records as loaded
    else:
        from . import errors as loaded
    value = getattr(loaded, name)
    globals()[name] = value
    return value


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
