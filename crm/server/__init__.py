"""The sync server: tenants, device tokens, the op log and the merged state per organisation.

Loaded only by commands that serve or administer it; local device commands never import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backup import backup_sqlite, restore_sqlite
from .store import ServerStore

if TYPE_CHECKING:
    import socket

    from .limits import Limits

__all__ = ["ServerStore", "backup_sqlite", "restore_sqlite", "serve"]


def serve(target: str, *, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning",
          limits: Limits | None = None, workers: int = 1) -> int:
    """Run the HTTP sync server in the foreground until interrupted; ``target`` is a data
    directory (SQLite) or a ``postgresql://`` URL. ``limits``: timeouts and caps (docs/security.md),
    applied by each of the ``workers`` processes (crm/server/workers.py). Returns the exit code."""
    import uvicorn

    from .app import create_app
    from .limits import Limits, guarded_protocol

    limits = limits or Limits()
    options = {"log_level": log_level, "access_log": False, "timeout_graceful_shutdown": 5,
               "timeout_keep_alive": limits.head_timeout}
    if workers == 1:
        app = create_app(ServerStore.open(target), limits=limits)
        uvicorn.run(app, host=host, port=port, http=guarded_protocol(limits), **options)
        return 0
    from . import workers as supervisor

    sock = uvicorn.Config(app=None, host=host, port=port, **options).bind_socket()
    sock.listen(2048)  # connections queue from now on, while the workers start

    def serve_socket(sock: socket.socket) -> None:  # in each worker: its own store connections
        app = create_app(ServerStore.open(target), limits=limits)
        uvicorn.Server(uvicorn.Config(app, http=guarded_protocol(limits), **options)).run(sockets=[sock])

    return supervisor.run_workers(workers, sock, serve_socket)
