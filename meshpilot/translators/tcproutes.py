"""TCP routes: filter chains that send connections by TLS SNI and weight (`ir.TcpRoute`).

This module owns the filter chains of a listener whose connections are routed at the TCP
level: a gateway listener with `tcp_routes` (Istio's TCP servers and TLS passthrough) and the
local port of a tcp Service with `tcp_routes` in its callers' sidecars. One filter chain per
route, in order: a route with `server_names` matches the client's SNI (read by the TLS
inspector, a listener filter added when any route needs it; the connection stays encrypted end
to end), one with `destination_ranges` / `source_ranges` the address the client dialled / its
own (Envoy's `prefix_ranges`, `source_prefix_ranges`), a route with none takes every other
connection. Each chain's TCP proxy sends to one
cluster, or to weighted clusters. It names nothing itself (`names.py`) and never decides which
routes apply (the input formats do).
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.accesslog.v3.accesslog_pb2 import AccessLog as EnvoyAccessLog
from envoy.config.core.v3.address_pb2 import CidrRange
from envoy.config.listener.v3.listener_components_pb2 import (
    Filter,
    FilterChain,
    FilterChainMatch,
    ListenerFilter,
)
from envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2 import TlsInspector
from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy
from google.protobuf.wrappers_pb2 import UInt32Value

from meshpilot.ir.model import TcpRoute
from meshpilot.translators import names
from meshpilot.translators.protos import pack

TCP_PROXY = "envoy.filters.network.tcp_proxy"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"


def tcp_proxy(stat_prefix: str, route: TcpRoute,
              access_log: EnvoyAccessLog | None = None) -> TcpProxy:
    """A TCP proxy to the route's backend, or its backends by weight (those of weight 0 get
    nothing, so they are left out: Envoy wants weights of at least 1)."""
    weighted = [b for b in route.backends if b.weight > 0 and b.resolved]
    proxy = TcpProxy(stat_prefix=stat_prefix)
    if len(weighted) == 1:
        proxy.cluster = names.cluster(weighted[0].service, weighted[0].subset)
    else:
        for backend in weighted:
            proxy.weighted_clusters.clusters.add(
                name=names.cluster(backend.service, backend.subset), weight=backend.weight)
    if access_log is not None:
        proxy.access_log.append(access_log)
    return proxy


def filter_chains(stat_prefix: str, routes: Sequence[TcpRoute],
                  access_log: EnvoyAccessLog | None = None) -> list[FilterChain]:
    chains = []
    for route in routes:
        if not any(b.weight > 0 and b.resolved for b in route.backends):
            continue  # nowhere to send: the connection finds no chain and is closed
        chain = FilterChain(filters=[Filter(name=TCP_PROXY, typed_config=pack(
            tcp_proxy(stat_prefix, route, access_log)))])
        if route.server_names or route.destination_ranges or route.source_ranges:
            chain.filter_chain_match.CopyFrom(FilterChainMatch(
                server_names=list(route.server_names),
                prefix_ranges=[_cidr(r) for r in route.destination_ranges],
                source_prefix_ranges=[_cidr(r) for r in route.source_ranges]))
        chains.append(chain)
    return chains


def _cidr(text: str) -> CidrRange:
    address, _, length = text.partition("/")
    return CidrRange(address_prefix=address, prefix_len=UInt32Value(value=int(length)))


def listener_filters(routes: Sequence[TcpRoute]) -> list[ListenerFilter]:
    """The TLS inspector when some route matches on SNI (it reads the ClientHello only)."""
    if not any(route.server_names for route in routes):
        return []
    return [ListenerFilter(name=TLS_INSPECTOR, typed_config=pack(TlsInspector()))]


def backends(routes: Sequence[TcpRoute]) -> list[tuple[str, str | None]]:
    """(service, subset) of every cluster the routes send to."""
    return [(b.service, b.subset) for route in routes for b in route.backends
            if b.weight > 0 and b.resolved]
