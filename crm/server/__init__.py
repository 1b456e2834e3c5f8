"""The sync server: tenants, device tokens, the op log and the merged state per organisation.

Loaded only by commands that serve or administer it; local device commands never import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backup import backup_sqlite, restore_sqlite
from .store import ServerStore

if TYPE_CHECKING:
    from .limits import Limits

__all__ = ["ServerStore", "backup_sqlite", "restore_sqlite", "serve"]


def serve(target: str, *, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning",
          limits: Limits | None = None) -> None:
    """Run the HTTP sync server in the foreground until interrupted; ``target`` is a data
    directory (SQLite) or a ``postgresql://`` URL. ``limits``: timeouts and caps (docs/security.md)."""
    import uvicorn

    from .app import create_app
    from .limits import Limits, guarded_protocol

    limits = limits or Limits()
    app = create_app(ServerStore.open(target), limits=limits)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=5, http=guarded_protocol(limits),
                timeout_keep_alive=limits.head_timeout)
