"""Listeners: one Envoy Listener per listener of a Gateway, serving HTTP through RDS.

This module owns the listener side of a gateway: its address, the HTTP connection manager and
its request-handling defaults (path normalization, client address, request ids), and the router
filter. The routes themselves are a separate RouteConfiguration fetched over ADS (`routes.py`),
so a route change never drains a listener's connections. It must not look at Routes.
"""

from __future__ import annotations

from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.http.cors.v3.cors_pb2 import Cors
from envoy.extensions.filters.http.fault.v3.fault_pb2 import HTTPFault
from envoy.extensions.filters.http.router.v3.router_pb2 import Router
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import BoolValue

from meshpilot.policy.model import Gateway, GatewayListener
from meshpilot.translators import names
from meshpilot.translators.protos import ads_config_source

HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"
# Filters configured per route (typed_per_filter_config) by routes.py; in the chain of every
# listener, they do nothing for a route that does not configure them. Order matters: CORS
# answers preflights before anything else runs; faults are injected before the router.
CORS = "envoy.filters.http.cors"
FAULT = "envoy.filters.http.fault"

HttpConnectionManager = hcm.HttpConnectionManager


def listener(gateway: Gateway, spec: GatewayListener) -> Listener:
    name = names.listener(gateway.name, spec.name)
    address = Address(socket_address=SocketAddress(address=spec.address,
                                                   port_value=spec.port))
    manager = Filter(name=HTTP_CONNECTION_MANAGER,
                     typed_config=_pack(http_connection_manager(gateway, spec)))
    chain = FilterChain(filters=[manager])
    return Listener(name=name, address=address, filter_chains=[chain])


def http_connection_manager(gateway: Gateway, spec: GatewayListener) -> HttpConnectionManager:
    return HttpConnectionManager(
        stat_prefix=names.stat_prefix(gateway.name, spec.name),
        rds=hcm.Rds(config_source=ads_config_source(),
                route_config_name=names.route_config(gateway.name, spec.name)),
        http_filters=http_filters(),
        # An edge proxy: the client is the peer Envoy sees, and x-forwarded-for is appended to,
        # not trusted (Envoy's default would trust whatever the client wrote).
        use_remote_address=BoolValue(value=True),
        # Route on the path the backend will see: "/a/../admin", "//admin" and "/%2Fadmin" must
        # not slip past a rule about "/admin" (Envoy's recommended edge settings).
        normalize_path=BoolValue(value=True),
        merge_slashes=True,
        path_with_escaped_slashes_action=HttpConnectionManager.UNESCAPE_AND_REDIRECT,
        # generate_request_id is left unset: Envoy's default (true) generates x-request-id.
    )


def http_filters() -> list[hcm.HttpFilter]:
    """The HTTP filter chain of every gateway listener, in order."""
    return [
        hcm.HttpFilter(name=CORS, typed_config=_pack(Cors())),
        hcm.HttpFilter(name=FAULT, typed_config=_pack(HTTPFault())),
        hcm.HttpFilter(name=ROUTER, typed_config=_pack(Router())),
    ]


def _pack(message: Message) -> Any:
    packed = Any()
    packed.Pack(message, deterministic=True)
    return packed
