"""Small network helpers shared by the runtime, demos and tests."""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["free_port", "split_address", "split_authority"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that the OS reports free right now.

    The port is released before returning, so another process could take it in between; prefer
    binding port 0 directly where the consumer allows it (Envoy's admin does, see EnvoyProcess).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def split_authority(text: str, default_port: int | None = None) -> tuple[str, int | None]:
    """("host", port) of "host:port", "[v6]:port", "host" (port `default_port`); the host
    lower-cased, without brackets or a trailing dot. ValueError if malformed."""
    text = text.strip()
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(text)
        host, port_text = str(ipaddress.IPv6Address(host)), rest[1:] if rest else None
    elif text.count(":") > 1:  # a bare IPv6 address, as an admin address may be written
        host = str(ipaddress.IPv6Address(text))
    elif ":" in text:
        host, port_text = text.split(":")
    else:
        host = text
    host = host.lower().rstrip(".")
    if not host or any(c in host for c in "/@?#[] "):
        raise ValueError(text)
    if port_text is None:
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(text)
    return host, int(port_text)
