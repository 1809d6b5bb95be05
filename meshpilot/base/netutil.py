"""Small network helpers shared by the runtime, demos and tests."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that the OS reports free right now.

    The port is released before returning, so another process could take it in between; prefer
    binding port 0 directly where the consumer allows it (Envoy's admin does, see EnvoyProcess).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
