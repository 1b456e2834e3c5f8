"""Free TCP ports on the loopback interface for the servers and proxies the harness starts.

The OS picks a free port (bind to port 0); the harness remembers what it handed out so two
servers started in the same run never get the same number, even after the first one stopped.
"""

from __future__ import annotations

import socket
import threading

HOST = "127.0.0.1"

_lock = threading.Lock()
_handed_out: set[int] = set()


def free_port(host: str = HOST) -> int:
    """A port nobody listens on right now and that this process has not handed out before."""
    with _lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no free TCP port found on {host} after 100 tries")
