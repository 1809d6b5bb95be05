"""`free_port` picks ports the kernel never hands out by itself (below its ephemeral range),
so a released one is not the next bind-to-0 or outgoing connection's."""

from __future__ import annotations

import socket

from meshpilot.base import netutil


def test_free_ports_are_below_the_ephemeral_range_and_bindable() -> None:
    low, high = netutil._below_ephemeral()
    assert 1024 <= low < high <= 65536
    ports = {netutil.free_port() for _ in range(20)}
    assert all(low <= port < high for port in ports)
    assert len(ports) > 1  # at random, not one port over and over
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_taken_port_is_never_returned(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        held.listen()
        monkeypatch.setattr(netutil, "_below_ephemeral", lambda: (taken, taken + 1))
        # The one candidate is taken: the kernel's choice instead, never the taken port.
        assert netutil.free_port() != taken
