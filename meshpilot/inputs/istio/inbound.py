"""A WorkloadEntry's sidecar inbound ports: one per port of the ServiceEntries selecting it.

Each port of each ServiceEntry that selects the workload is an inbound listener on the
workload's address and its port for it (`compile.endpoint_port`: Istio's rule), in that port's
protocol and PeerAuthentication mode (`portLevelMtls`), forwarding to the application. With no
traffic capture the application cannot listen where the sidecar does, so annotation
`meshpilot.io/app` says where it listens: one address (the first port's), or `PORT=ADDRESS`
entries, one per inbound port; a port it does not name is `127.0.0.1:<that port>`. The first
port is the model's `Sidecar.port`, the others `Sidecar.more_ports` with their modes in
`Sidecar.port_modes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshpilot.inputs.istio import objects as o
from meshpilot.inputs.istio.document import Doc
from meshpilot.inputs.istio.parse import APP_ANNOTATION
from meshpilot.ir.model import DEFAULT_APP_HOST, InboundPort, MtlsMode, Service

_LOOPBACK_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True, slots=True)
class Served:
    """One inbound port of a workload's sidecar: the Service (ServiceEntry host and port) it
    serves, and the workload's port for it, which the sidecar listens on."""

    service: Service
    port: int


def app_addresses(doc: Doc, entry: o.WorkloadEntry, served: Sequence[Served]
                  ) -> list[tuple[str, int]]:
    """Where the application behind each inbound port listens, in `served`'s order; reports
    an annotation entry naming no inbound port, and an application address that is one of the
    sidecar's own inbound listeners."""
    numbers = [s.port for s in served]
    named = dict(entry.app_ports)
    annotation = ("metadata", "annotations", APP_ANNOTATION)
    for number in named:
        if number not in numbers:
            listed = ", ".join(map(str, numbers)) or "none"
            doc.error(annotation, f"port {number} is not an inbound port of this workload's "
                                  f"sidecar (its inbound ports: {listed})")
    found = [named.get(number) or (entry.app if index == 0 else None)
             or (DEFAULT_APP_HOST, number) for index, number in enumerate(numbers)]
    address = entry.spec.address
    for number, (host, port) in zip(numbers, found, strict=True):
        if port in numbers and (host == address or (
                address in ("127.0.0.1", "::1") and host in _LOOPBACK_NAMES)):
            single = len(numbers) == 1
            suggestion = f"127.0.0.1:{port + 10000}" if single else \
                f"{number}=127.0.0.1:{port + 10000}"
            what = "the application" if single else f"the application of inbound port {number}"
            doc.error(("spec", "address"),
                      f"{what} cannot listen on the sidecar's inbound {address}:{port}: say "
                      f"where it listens with annotation {APP_ANNOTATION} (say {suggestion})")
    return found


def further_ports(doc: Doc, served: Sequence[Served], apps: Sequence[tuple[str, int]],
                  mtls: MtlsMode, mode_of: Callable[[Doc, int], MtlsMode]
                  ) -> tuple[tuple[InboundPort, ...], tuple[tuple[int, MtlsMode], ...]]:
    """The inbound ports after the first, each in its Service's protocol, and the mTLS mode
    of each that differs from `mtls` (the first port's: `Sidecar.mode_of` falls back to it)."""
    more = tuple(InboundPort(s.port, host, port, protocol=s.service.protocol,
                             origin=doc.ctx.origin(("spec",)))
                 for s, (host, port) in zip(served[1:], apps[1:], strict=True))
    modes = tuple(sorted((s.port, mode) for s in served[1:]
                         if (mode := mode_of(doc, s.port)) != mtls))
    return more, modes


def loopback_ports(address: str, served: Sequence[Served],
                   apps: Sequence[tuple[str, int]]) -> set[int]:
    """The ports on 127.0.0.1 the sidecar's inbound listeners and their applications hold,
    which a TCP service's local port cannot take."""
    found = {port for host, port in apps if host in _LOOPBACK_NAMES}
    if address in ("127.0.0.1", "0.0.0.0"):
        found.update(s.port for s in served)
    return found
