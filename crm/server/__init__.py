"""The sync server: tenants, device tokens, the op log and the merged state per organisation.

Loaded only by commands that serve or administer it; local device commands never import it.
"""

from .backup import backup_sqlite, restore_sqlite
from .store import ServerStore

__all__ = ["ServerStore", "backup_sqlite", "restore_sqlite", "serve"]


def serve(target: str, *, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning") -> None:
    """Run the HTTP sync server in the foreground until interrupted; ``target`` is a data
    directory (SQLite) or a ``postgresql://`` URL."""
    import uvicorn

    from .app import create_app

    app = create_app(ServerStore.open(target))
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=5)
