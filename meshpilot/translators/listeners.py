"""Listeners: one Envoy Listener per listener of a Gateway, serving HTTP through RDS, or
proxying TCP to one service.

This module owns the listener side of a gateway: its address, the HTTP connection manager and
its request-handling defaults (path normalization, client address, request ids), listener-wide
options (access logs, websockets), and the TCP proxy of a `protocol: tcp` listener (its
filter chains by SNI and weight when it has `tcp_routes`: `tcproutes.py`). Its HTTP
filter chain comes from `httpfilters` (compression and the Routes' request security decide
which filters are in it); the routes themselves are a separate RouteConfiguration fetched over
ADS (`routes.py`), so a route change never drains a listener's connections. It reads nothing of
the Routes itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.accesslog.v3.accesslog_pb2 import AccessLog as EnvoyAccessLog
from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.core.v3.base_pb2 import TransportSocket
from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.config.core.v3.substitution_format_string_pb2 import SubstitutionFormatString
from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain, ListenerFilter
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.access_loggers.file.v3.file_pb2 import FileAccessLog
from envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2 import TlsInspector
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy
from envoy.extensions.filters.udp.udp_proxy.v3.route_pb2 import Route as UdpRoute
from envoy.extensions.filters.udp.udp_proxy.v3.udp_proxy_pb2 import UdpProxyConfig
from envoy.extensions.http.original_ip_detection.custom_header.v3.custom_header_pb2 import (
    CustomHeaderConfig,
)
from envoy.extensions.http.original_ip_detection.xff.v3.xff_pb2 import XffConfig
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from google.protobuf.struct_pb2 import Struct
from google.protobuf.wrappers_pb2 import BoolValue, UInt32Value

from meshpilot.ir.model import AccessLog, Backend, ClientIp, Gateway, GatewayListener, Route
from meshpilot.translators import httpfilters, mtls, names, secrets, tcproutes, tracing
from meshpilot.translators.httpfilters import ChainInputs, rbac
from meshpilot.translators.protos import ads_config_source, pack

HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
UDP_PROXY = "envoy.filters.udp_listener.udp_proxy"
FILE_ACCESS_LOG = "envoy.access_loggers.file"

# The fields of a JSON access log line, documented in docs/policy.md (Gateway, access_log).
# A value that is a single command keeps its type (status is a number); a missing one is null.
HTTP_LOG_FIELDS = (
    ("start_time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("status", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("duration_ms", "%DURATION%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("client_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
)
TCP_LOG_FIELDS = (
    ("start_time", "%START_TIME%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("duration_ms", "%DURATION%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("client_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
)

HttpConnectionManager = hcm.HttpConnectionManager


def listener(gateway: Gateway, spec: GatewayListener, routes: Iterable[Route] = ()) -> Listener:
    """The Listener of `spec`; `routes` are the Routes served there, whose request security
    puts filters in the chain (`httpfilters`)."""
    name = names.listener(gateway.name, spec.name)
    address = Address(socket_address=SocketAddress(address=spec.address,
                                                   port_value=spec.port))
    if spec.passthrough:
        return _passthrough_listener(gateway, spec, name, address)
    if spec.protocol == "udp":
        return _udp_listener(gateway, spec, name)
    if spec.protocol == "tcp" and spec.tcp_routes:  # by SNI and weight (tcproutes.py)
        log = None if spec.access_log is None else access_log(spec.access_log, TCP_LOG_FIELDS)
        chains = tcproutes.filter_chains(names.stat_prefix(gateway.name, spec.name),
                                         spec.tcp_routes, log)
        ended = _ended_tls(gateway, spec)
        for chain in chains if ended is not None else ():  # TLS ended, then TCP (Istio's)
            chain.transport_socket.CopyFrom(ended)
        return Listener(name=name, address=address,
                        listener_filters=tcproutes.listener_filters(spec.tcp_routes),
                        filter_chains=chains)
    if spec.tls_hosts:
        return _tls_hosts_listener(gateway, spec, name, address, routes)
    if spec.protocol == "tcp":
        network_filter = Filter(name=TCP_PROXY, typed_config=pack(tcp_proxy(gateway, spec)))
    else:
        routes = tuple(routes)
        manager = http_connection_manager(gateway, spec, routes)
        if spec.redirect_to_https is not None:
            # Serves no Routes: one inline route answering every request with a 301 to https.
            manager.ClearField("rds")
            manager.route_config.CopyFrom(secrets.https_redirect(name, spec.redirect_to_https))
        network_filter = Filter(name=HTTP_CONNECTION_MANAGER, typed_config=pack(manager))
    chain = FilterChain(filters=[network_filter])
    inspect: list[ListenerFilter] = []
    ended = _ended_tls(gateway, spec)
    if ended is not None:
        chain.transport_socket.CopyFrom(ended)
        if spec.protocol == "http" and rbac.reads_server_name(routes):
            # The server name a rule reads is the TLS inspector's (TLS itself keeps it).
            inspect.append(ListenerFilter(name=TLS_INSPECTOR, typed_config=pack(TlsInspector())))
    return Listener(name=name, address=address, listener_filters=inspect, filter_chains=[chain])


def _ended_tls(gateway: Gateway, spec: GatewayListener) -> TransportSocket | None:
    """The TLS a listener ends: with its own certificates (by SDS name only, secrets.py: never
    inline in the listener), or with the view's mesh identity, a mesh client certificate
    required (mtls.py); None: plaintext."""
    if spec.mesh_tls:
        return mtls.downstream_transport_socket()
    if spec.tls is not None:
        return secrets.downstream_transport_socket(gateway.name, spec)
    return None


def _udp_listener(gateway: Gateway, spec: GatewayListener, name: str) -> Listener:
    """A UDP listener: the UDP proxy sends every datagram to the listener's one Service (its
    matcher has no matchers, so its on_no_match Route takes everything)."""
    assert spec.service is not None  # the compile makes a udp listener only with its Service
    proxy = UdpProxyConfig(stat_prefix=names.stat_prefix(gateway.name, spec.name))
    proxy.matcher.on_no_match.action.name = "route"
    proxy.matcher.on_no_match.action.typed_config.CopyFrom(
        pack(UdpRoute(cluster=names.cluster(spec.service))))
    return Listener(name=name, address=Address(socket_address=SocketAddress(
                        address=spec.address, port_value=spec.port,
                        protocol=SocketAddress.Protocol.UDP)),
                    listener_filters=[ListenerFilter(name=UDP_PROXY, typed_config=pack(proxy))])


def _tls_hosts_listener(gateway: Gateway, spec: GatewayListener, name: str, address: Address,
                        routes: Iterable[Route]) -> Listener:
    """An https listener with TLS hosts: the TLS inspector reads the ClientHello's server name,
    and the filter chain of the TLS host it matches (exact names before `*.` wildcards, the
    longest suffix first: Envoy's order) terminates TLS with that host's certificates and
    routes by that host's own route table. What the SNI chose stays chosen for the
    connection's life, so a request whose Host belongs to another host's listener (a client
    reusing a connection, HTTP/2 coalescing) meets this table's answer for it, a 421, never the
    other listener's routes."""
    served = tuple(routes)
    listener = Listener(name=name, address=address, listener_filters=[
        ListenerFilter(name=TLS_INSPECTOR, typed_config=pack(TlsInspector()))])
    for host in spec.tls_hosts:
        manager = http_connection_manager(gateway, spec, served)
        manager.rds.route_config_name = names.tls_host_routes(gateway.name, spec.name, host.name)
        chain = FilterChain(name=names.tls_host_routes(gateway.name, spec.name, host.name),
                            filters=[Filter(name=HTTP_CONNECTION_MANAGER,
                                            typed_config=pack(manager))])
        if host.server_names:  # else the chain of the SNIs no other takes: no match at all
            chain.filter_chain_match.server_names.extend(host.server_names)
        chain.transport_socket.CopyFrom(
            secrets.downstream_transport_socket(gateway.name, spec, host.certificates))
        listener.filter_chains.append(chain)
    return listener


def chain_inputs(spec: GatewayListener, routes: Iterable[Route]) -> ChainInputs:
    """What the HTTP filter chain of `spec` serving `routes` is built from (a listener
    redirecting to https serves no Routes)."""
    served = routes if spec.redirect_to_https is None else ()
    return ChainInputs.gateway(served, spec.compression, spec.decompression)


def filter_secrets(spec: GatewayListener, routes: Iterable[Route]) -> list[Secret]:
    """The SDS Secrets the HTTP filters of `spec` name (none for a TCP proxy)."""
    return [] if spec.protocol != "http" else httpfilters.chain_secrets(chain_inputs(spec, routes))


def tcp_proxy(gateway: Gateway, spec: GatewayListener,
              backends: tuple[Backend, ...] | None = None) -> TcpProxy:
    """Every connection to the listener's service (its whole-service cluster), or shared by
    weight among `backends` (the listener's own unless given: a passthrough entry's)."""
    backends = spec.backends if backends is None else backends
    proxy = TcpProxy(stat_prefix=names.stat_prefix(gateway.name, spec.name))
    if len(backends) == 1 and backends[0].subset is None:
        proxy.cluster = _tcp_cluster(backends[0])
    elif backends:
        for backend in backends:
            proxy.weighted_clusters.clusters.add(name=_tcp_cluster(backend),
                                                 weight=backend.weight)
    else:
        assert spec.service is not None  # the loader requires one for protocol tcp
        proxy.cluster = names.cluster(spec.service)
    if spec.access_log is not None:
        proxy.access_log.append(access_log(spec.access_log, TCP_LOG_FIELDS))
    return proxy


def _tcp_cluster(backend: Backend) -> str:
    """A backend's cluster; one that does not resolve is named but never made, so Envoy closes
    the connections that fall to it (its share of them, by weight)."""
    if not backend.resolved:
        return names.unresolved_cluster(backend.service)
    return names.cluster(backend.service, backend.subset)


def _passthrough_listener(gateway: Gateway, spec: GatewayListener, name: str,
                          address: Address) -> Listener:
    """TLS passthrough: the TLS inspector reads the ClientHello's server name, and the filter
    chain whose `server_names` match it (exact names before `*.` wildcards, the longest suffix
    first: Envoy's own order) proxies the still encrypted connection to its backends (or, for
    an entry that terminates, ends TLS with its certificates and proxies the plaintext). An
    entry without hostnames takes whatever no other does; without one, such connections are
    closed."""
    listener = Listener(name=name, address=address, listener_filters=[
        ListenerFilter(name=TLS_INSPECTOR, typed_config=pack(TlsInspector()))])
    for index, entry in enumerate(spec.passthrough):
        chain = FilterChain(name=f"{name}/passthrough[{index}]", filters=[
            Filter(name=TCP_PROXY, typed_config=pack(tcp_proxy(gateway, spec, entry.backends)))])
        chain.filter_chain_match.server_names.extend(entry.hostnames)
        if entry.terminate:
            chain.transport_socket.CopyFrom(
                secrets.downstream_transport_socket(gateway.name, spec, entry.terminate))
        listener.filter_chains.append(chain)
    return listener


def http_connection_manager(gateway: Gateway, spec: GatewayListener,
                            routes: Iterable[Route]) -> HttpConnectionManager:
    manager = HttpConnectionManager(
        stat_prefix=names.stat_prefix(gateway.name, spec.name),
        rds=hcm.Rds(config_source=ads_config_source(),
                route_config_name=names.route_config(gateway.name, spec.name)),
        http_filters=httpfilters.http_filters(chain_inputs(spec, routes)),
        # An edge proxy: the client is the peer Envoy sees, and x-forwarded-for is appended to,
        # not trusted (Envoy's default would trust whatever the client wrote).
        use_remote_address=BoolValue(value=True),
        # Route on the path the backend will see: "/a/../admin", "//admin" and "/%2Fadmin" must
        # not slip past a rule about "/admin" (Envoy's recommended edge settings).
        normalize_path=BoolValue(value=True),
        merge_slashes=True,
        path_with_escaped_slashes_action=HttpConnectionManager.UNESCAPE_AND_REDIRECT,
        # generate_request_id is left unset: Envoy's default (true) generates x-request-id.
        # At the edge (use_remote_address) Envoy replaces a client's x-request-id unless told
        # to preserve it: a client must not choose the id the logs and traces are keyed on.
        preserve_external_request_id=spec.trust_request_id,
        always_set_request_id_in_response=spec.request_id_in_response,
    )
    if spec.client_ip is not None:
        _detect_client_ip(manager, spec.client_ip)
    if spec.access_log is not None:
        manager.access_log.append(access_log(spec.access_log, HTTP_LOG_FIELDS))
    if spec.tracing is not None:
        tracing.apply(manager, gateway.name, spec.tracing)
    if spec.max_requests_per_connection is not None:
        # Envoy closes the client's connection after this many requests (HTTP/1.1: with
        # `connection: close` on the last answer; HTTP/2: GOAWAY).
        manager.common_http_protocol_options.max_requests_per_connection.value = \
            spec.max_requests_per_connection
    if spec.websocket:
        manager.upgrade_configs.append(HttpConnectionManager.UpgradeConfig(
            upgrade_type="websocket"))
    return manager


XFF_DETECTION = "envoy.http.original_ip_detection.xff"
CUSTOM_HEADER_DETECTION = "envoy.http.original_ip_detection.custom_header"


def _detect_client_ip(manager: HttpConnectionManager, spec: ClientIp) -> None:
    """The client's address behind trusted proxies: what `source_ips` (RBAC `remote_ip`), rate
    limits by source_ip (`remote_address`) and the access log's client_address see."""
    if spec.xff_trusted_hops:
        manager.xff_num_trusted_hops = spec.xff_trusted_hops
        return
    if spec.trusted_cidrs:
        config = XffConfig()
        for block in spec.trusted_cidrs:
            address, _, length = block.partition("/")
            config.xff_trusted_cidrs.cidrs.add(address_prefix=address,
                                               prefix_len=UInt32Value(value=int(length)))
        name = XFF_DETECTION
    else:
        assert spec.header is not None
        config = CustomHeaderConfig(header_name=spec.header)  # type: ignore[assignment]
        name = CUSTOM_HEADER_DETECTION
    # Envoy refuses use_remote_address together with a detection extension: the extension
    # alone says who the client is (and nothing else trusts X-Forwarded-For).
    manager.ClearField("use_remote_address")
    manager.original_ip_detection_extensions.append(
        TypedExtensionConfig(name=name, typed_config=pack(config)))


def access_log(spec: AccessLog, log_fields: tuple[tuple[str, str], ...]) -> EnvoyAccessLog:
    """A file access log: one JSON object per line (`log_fields`), or Envoy's default text."""
    config = FileAccessLog(path=spec.path)
    if spec.format == "json":
        line = Struct()
        line.update(dict(log_fields))
        config.log_format.CopyFrom(SubstitutionFormatString(json_format=line))
    return EnvoyAccessLog(name=FILE_ACCESS_LOG, typed_config=pack(config))
