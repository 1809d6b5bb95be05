"""Small network helpers shared by the runtime, demos and tests."""

from __future__ import annotations

import ipaddress
import random
import socket

__all__ = ["free_port", "split_address", "split_authority"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that is free right now.

    The port is released before returning, so another process could take it in between; prefer
    binding port 0 directly where the consumer allows it (Envoy's admin does, see EnvoyProcess).
    It is picked at random below the kernel's ephemeral range, which is where the kernel takes
    the ports of every bind to port 0 and of every outgoing connection: a port from inside it
    was, once released, the next thing any such bind or connection could take (a test's echo
    server answering on a sidecar's inbound port, once).
    """
    low, high = _below_ephemeral()
    for _ in range(64):
        port = random.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue  # taken: another one
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # crowded: the kernel's
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _below_ephemeral() -> tuple[int, int]:
    """Ports [low, high) under the kernel's ephemeral range (Linux's is 32768-60999 by default;
    elsewhere, or unreadable, that default is assumed), above the well-known ones."""
    start = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            start = int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    high = max(start, 10000)
    return max(1024, high - 12000), high


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
