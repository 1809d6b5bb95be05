"""Sidecars: the view of a Service's own Envoy (node cluster = the Service's name).

This module owns what a sidecar receives (docs/mesh.md):

- inbound (when the sidecar has a `port`): a listener `inbound/<service>` on address:port that
  terminates mesh traffic and forwards it to the local application, cluster `inbound|<service>`
  (a STATIC cluster, or STRICT_DNS for a named app host). HTTP services get an HTTP connection
  manager (stats `http.inbound/<service>.*`) whose route configuration `inbound/<service>`
  comes over RDS: one route with no timeout of its own (the caller's outbound route decides)
  and the sidecar's `authorization` as its per-filter config (`httpfilters/`), so an edit
  never replaces the listener; with mtls, the caller's identity for the application
  (`mtls.py`); tcp services a TCP proxy. Each further inbound port (`Sidecar.more_ports`)
  gets the same three, named with its number (`inbound/<service>:<port>`), its own
  application, protocol and mTLS mode (`Sidecar.mode_of`).
- outbound, for the services it `calls` and nothing else (scoping: a mesh of a thousand services
  does not send a thousand clusters to every sidecar):
  - per call with a `local_port`: a listener `outbound/<callee>` on 127.0.0.1:local_port whose
    route configuration `outbound/<callee>` (one virtual host, every Host) sends to the callee;
    for a tcp callee, a TCP proxy (filter chains by SNI and weight when the callee has
    `tcp_routes`: `tcproutes.py`);
  - with an `outbound_port`: one listener `outbound` on 127.0.0.1:outbound_port whose route
    configuration `outbound` has one virtual host per HTTP callee, picked by the Host header
    (`<callee>`, `<callee>:<outbound_port>`, and `<callee>:<callee's sidecar port>`), and
    with `unknown_hosts` a last catch-all one for every other Host: to a cluster without
    endpoints whose 503 becomes 502 (refuse), or through the dynamic forward proxy to the
    host and port as written (passthrough); a call with an `egress_port` (Istio's Sidecar
    `egress[].port`) is on a listener `outbound:<port>` of the same kind instead;
  - the clusters (and EDS assignments) those virtual hosts send to. A callee's endpoints are its
    instances' sidecar inbound addresses, so the request crosses both sidecars. A callee with
    `locality_lb` has its endpoints ranked for this sidecar's locality (`locality.py`).
- A Route attached to a callee (`service: <callee>`) becomes that callee's virtual host, in both
  styles and in every caller; without one, the virtual host sends everything to the callee's
  whole-service cluster. A caller whose `Call` names another Route attached to the callee
  (`Call.route`: Istio's `sourceLabels`) gets that one instead.

The callee's route configuration for local ports is the same for every caller using the same
Route: built once per Translation and shared. It must not decide which view is a sidecar (the
`Translation` does) nor name anything itself (`names.py` does).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace

from envoy.config.accesslog.v3.accesslog_pb2 import AccessLogFilter, ExtensionFilter
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.core.v3.base_pb2 import (
    DataSource,
    HeaderValue,
    HeaderValueOption,
    TrafficDirection,
)
from envoy.config.core.v3.protocol_pb2 import Http2ProtocolOptions
from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import (
    DirectResponseAction,
    HeaderMatcher,
    RouteAction,
    RouteMatch,
    VirtualHost,
)
from envoy.config.route.v3.route_components_pb2 import Route as EnvoyRoute
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.access_loggers.filters.cel.v3.cel_pb2 import ExpressionFilter
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from google.protobuf.wrappers_pb2 import UInt32Value

from meshpilot.base import types
from meshpilot.ir.model import (
    Authorization,
    Endpoint,
    ExtAuthz,
    InboundPort,
    Model,
    Route,
    Service,
    UnknownHosts,
)
from meshpilot.translators import (
    endpoints,
    failover,
    httpfilters,
    locality,
    mtls,
    names,
    tcp_authorization,
    tcproutes,
    tracing,
)
from meshpilot.translators.clusters import HTTP_PROTOCOL_OPTIONS
from meshpilot.translators.httpfilters import (
    ChainInputs,
    audit,
    dynamic_forward_proxy,
    ext_authz,
    jwt_authn,
    mesh_authorization,
)
from meshpilot.translators.listeners import HTTP_CONNECTION_MANAGER, TCP_PROXY
from meshpilot.translators.protos import ads_config_source, duration, pack
from meshpilot.translators.routes import route_entries
from meshpilot.xds.resources import Resource

CEL_FILTER = "envoy.access_loggers.extension_filters.cel"

# Outbound listeners are for the local application only.
LOOPBACK = "127.0.0.1"

_HTTP2_PROTOCOLS = frozenset({"http2", "grpc"})

_Indexes = tuple[dict[str, Route], dict[str, Route], dict[str, str]]


class Mesh:
    """The sidecar views of one model. `cluster_resources(service, subset)` is the
    Translation's (built once, shared with gateways, discovered endpoints included)."""

    def __init__(self, model: Model, cluster_resources: locality.ClusterResources,
                 trust: mtls.TrustDomain | None = None):
        self.model = model
        self.trust = trust or mtls.TrustDomain()  # SPIFFE IDs (translators/mtls.py)
        self._cluster_resources = cluster_resources
        # Made on the first sidecar view asked for (`_index`): a reload whose views are all
        # gateways' (every Translation makes a Mesh) walks no Route and no Service for it.
        self._indexes: _Indexes | None = None
        # local-port route configs, by (callee, Route name)
        self._outbound: dict[tuple[str, str | None], tuple[Resource, ...]] = {}

    def _index(self) -> _Indexes:
        """(Route attached to each Service, Routes by name that a Call may name, the SPIFFE
        path of each caller named in `from`): once per Mesh; two threads racing make equal
        ones, and either is kept."""
        found = self._indexes
        if found is None:
            # (service, the callers' namespace of a consumer Route; None: every caller's)
            route_of: dict[tuple[str, str | None], Route] = {}
            by_name: dict[str, Route] = {}  # Routes a Call names (`Call.route`)
            for route in self.model.routes:  # sorted by name: the first one wins
                if route.service is not None:
                    by_name[route.name] = route
                    if not route.named_only:
                        route_of.setdefault((route.service, route.callers_namespace), route)
            found = self._indexes = (route_of, by_name, mtls.identity_paths(self.model))
        return found

    def with_clusters(self, cluster_resources: locality.ClusterResources) -> Mesh:
        """These sidecar views building clusters through `cluster_resources` (other discovered
        endpoints): the route configurations built so far are shared, since no route depends
        on endpoints."""
        mesh = Mesh(self.model, cluster_resources, self.trust)
        mesh._outbound = self._outbound
        mesh._indexes = self._indexes
        return mesh

    def resources(self, service: Service) -> list[Resource]:
        """Everything the sidecar of `service` receives (nothing without `sidecar:`)."""
        sidecar = service.sidecar
        if sidecar is None:
            return []
        built: list[Resource] = []
        for inbound in sidecar.inbound_ports():  # the first one's names carry no port
            port = None if inbound.port == sidecar.port else inbound
            listener = mtls.secure_inbound(
                inbound_listener(service, self.trust, port, self._index()[2]), service,
                inbound.port)
            built.append(Resource.from_message(types.LISTENER, listener.name, listener))
            cluster = inbound_cluster(service, port)
            built.append(Resource.from_message(types.CLUSTER, cluster.name, cluster))
            if (inbound.protocol or service.protocol) != "tcp":
                routes = inbound_routes(service, self.trust, self._index()[2], port)
                built.append(Resource.from_message(types.ROUTE, routes.name, routes))
        callees: list[tuple[Service, Route | None]] = []
        http_calls: list[tuple[int | None, Service, Route | None]] = []
        for call in sidecar.calls:
            callee = self.model.service(call.service)
            if callee is None:  # the loader refuses it; if one got through, send nothing
                continue
            route = self.route_for(callee, call.route, sidecar.namespace)
            callees.append((callee, route))
            if callee.protocol != "tcp":
                http_calls.append((call.egress_port, callee, route))
            if call.local_port is not None:
                listener = local_port_listener(callee, call.local_port, service)
                built.append(Resource.from_message(types.LISTENER, listener.name, listener))
                if callee.protocol != "tcp":
                    built.extend(self._local_port_routes(callee, route))
        # Host-routed listeners: the outbound port's (None) and each egress port's (Istio's).
        by_port: dict[int | None, list[tuple[Service, Route | None]]] = {}
        if sidecar.outbound_port is not None:
            by_port[None] = []
        for egress, callee, route in http_calls:
            if egress is not None or sidecar.outbound_port is not None:
                by_port.setdefault(egress, []).append((callee, route))
        for egress, served in sorted(by_port.items(), key=lambda p: p[0] or 0):
            number = sidecar.outbound_port if egress is None else egress
            assert number is not None
            name = names.OUTBOUND if egress is None else names.egress_port(egress)
            listener = outbound_listener(number, service, name)
            built.append(Resource.from_message(types.LISTENER, listener.name, listener))
            config = RouteConfiguration(name=name, virtual_hosts=[
                self.virtual_host(callee, host_domains(callee, number), route)
                for callee, route in sorted(served, key=lambda c: c[0].name)])
            if sidecar.unknown_hosts is not None:
                config.virtual_hosts.append(unknown_hosts_virtual_host(sidecar.unknown_hosts))
            built.append(Resource.from_message(types.ROUTE, config.name, config))
        if sidecar.unknown_hosts is not None and by_port:
            cluster = unknown_hosts_cluster(sidecar.unknown_hosts)
            built.append(Resource.from_message(types.CLUSTER, cluster.name, cluster))
        upstreams = list(self._upstreams(callees))
        collector = tracing.collector(sidecar.tracing)  # the tracer exports through it
        if collector is not None and (collector, None) not in upstreams:
            upstreams.append((collector, None))
        if sidecar.jwt is not None and sidecar.port is not None:  # remote JWKS: their clusters
            upstreams.extend((p.jwks.service, None) for p in sidecar.jwt.providers
                             if p.jwks.service is not None
                             and (p.jwks.service, None) not in upstreams)
        if sidecar.ext_authz is not None and sidecar.port is not None \
                and (sidecar.ext_authz.service, None) not in upstreams:  # its provider
            upstreams.append((sidecar.ext_authz.service, None))
        caller = locality.caller_of(service)
        for name, subset in failover.with_targets(self.model, upstreams):
            built.extend(self._cluster_resources(name, subset, caller))
        return built

    def route_for(self, callee: Service, name: str | None,
                  namespace: str | None = None) -> Route | None:
        """The Route a caller (its sidecar in `namespace`) uses for `callee`: the one its Call
        names (when it is attached to the callee), else the callee's Route for the callers of
        that namespace, else the callee's attached Route."""
        route_of, by_name, _ = self._index()
        if name is not None:
            named = by_name.get(name)
            if named is not None and named.service == callee.name:
                return named
        consumer = route_of.get((callee.name, namespace)) if namespace is not None else None
        return consumer if consumer is not None else route_of.get((callee.name, None))

    def _local_port_routes(self, callee: Service, route: Route | None) -> tuple[Resource, ...]:
        key = (callee.name, None if route is None else route.name)
        found = self._outbound.get(key)
        if found is None:
            config = RouteConfiguration(name=names.outbound(callee.name),
                                        virtual_hosts=[self.virtual_host(callee, ["*"], route)])
            found = self._outbound[key] = (
                Resource.from_message(types.ROUTE, config.name, config),)
        return found

    def virtual_host(self, callee: Service, domains: list[str],
                     route: Route | None = None) -> VirtualHost:
        """The callee's virtual host: `route`'s rules (by default the callee's attached
        Route's), or everything to it."""
        route = route or self._index()[0].get((callee.name, None))
        vhost = VirtualHost(name=names.virtual_host(callee.name), domains=domains)
        if route is None:
            vhost.routes.append(EnvoyRoute(
                name=names.default_route_entry(callee.name), match=RouteMatch(prefix="/"),
                route=RouteAction(cluster=names.cluster(callee.name))))
            return vhost
        vhost.routes.extend(route_entries(route))
        httpfilters.add_virtual_host_configs(vhost, route)
        return vhost

    def _upstreams(self, callees: Iterable[tuple[Service, Route | None]]
                   ) -> Iterator[tuple[str, str | None]]:
        """(service, subset) of every cluster the callees' virtual hosts send to, each once."""
        seen: set[tuple[str, str | None]] = set()
        for callee, route in callees:
            route = route if callee.protocol != "tcp" else None
            wanted: list[tuple[str, str | None]] = [(callee.name, None)] if route is None else [
                *((backend.service, backend.subset) for rule in route.rules
                  for backend in rule.backends if backend.resolved),
                *(target for rule in route.rules for mirror in rule.mirrors
                  for target in mirror.targets())]
            if callee.protocol == "tcp" and callee.tcp_routes:
                wanted = tcproutes.backends(callee.tcp_routes)
            for key in wanted:
                if key not in seen:
                    seen.add(key)
                    yield key


def host_domains(callee: Service, outbound_port: int) -> list[str]:
    """The Host values that pick `callee` on the outbound port: its name, with the outbound
    port, and with its own sidecar's port (what a client writes in `http://reviews:15006/`)."""
    found = {callee.name, f"{callee.name}:{outbound_port}", *callee.hosts}
    if callee.sidecar is not None and callee.sidecar.port is not None:
        found.add(f"{callee.name}:{callee.sidecar.port}")
    return sorted(found)


# ---- inbound ------------------------------------------------------------------------------------


def inbound_listener(service: Service, trust: mtls.TrustDomain | None = None,
                     port: InboundPort | None = None,
                     identities: Mapping[str, str] | None = None) -> Listener:
    """The sidecar's inbound listener on its first port (or on `port`, a further one), in
    plaintext (`mtls.secure_inbound` adds TLS). A TCP one holds the callers' authorization
    itself (`tcp_authorization.py`; `identities`: the SPIFFE paths of callers by name)."""
    sidecar = service.sidecar
    assert sidecar is not None and sidecar.port is not None
    number = sidecar.port if port is None else port.port
    name = names.inbound(service.name, None if port is None else port.port)
    cluster = names.inbound_cluster(service.name, None if port is None else port.port)
    network_filters: list[Filter] = []
    if _protocol(service, port) == "tcp":
        network_filters = tcp_authorization.filters(
            name, _callers(sidecar.authorization, trust, identities),
            _callers(sidecar.deny, trust, identities))
        network_filter = Filter(name=TCP_PROXY, typed_config=pack(
            TcpProxy(stat_prefix=name, cluster=cluster)))
    else:
        # Its routes over RDS (`inbound_routes`): an authorization edit changes only them, so
        # the listener (built without the policy) and its open connections stay.
        manager = hcm.HttpConnectionManager(
            stat_prefix=name,
            rds=hcm.Rds(config_source=ads_config_source(), route_config_name=name),
            http_filters=httpfilters.http_filters(ChainInputs.sidecar_inbound(
                None, None if sidecar.jwt is None else (name, sidecar.jwt),
                denied=sidecar.deny is not None, audited=sidecar.audit is not None,
                ext_authz=sidecar.ext_authz)))
        if sidecar.mode_of(number) != "off":
            mtls.forward_client_identity(manager)
        if sidecar.tracing is not None:
            tracing.apply(manager, service.name, sidecar.tracing)
        network_filter = Filter(name=HTTP_CONNECTION_MANAGER, typed_config=pack(manager))
    # The direction names a traced request's span (Envoy: ingress, a server span).
    return Listener(name=name, address=_address(sidecar.address, number),
                    filter_chains=[FilterChain(filters=[*network_filters, network_filter])],
                    traffic_direction=TrafficDirection.INBOUND)


def _protocol(service: Service, port: InboundPort | None) -> str:
    return service.protocol if port is None or port.protocol is None else port.protocol


def _callers(policy: Authorization | None, trust: mtls.TrustDomain | None,
             identities: Mapping[str, str] | None) -> Authorization | None:
    # `authorization` names callers as services; the peer certificate says SPIFFE IDs.
    return None if policy is None else mtls.authorization(
        policy, trust or mtls.TrustDomain(), identities)


def _selected(spec: ExtAuthz | None, trust: mtls.TrustDomain | None,
              identities: Mapping[str, str] | None) -> ExtAuthz | None:
    # Istio's CUSTOM rules name callers too.
    if spec is None or spec.only is None:
        return spec
    rules = mtls.authorization(Authorization("DENY", spec.only), trust or mtls.TrustDomain(),
                               identities).rules
    return replace(spec, only=rules)


def inbound_routes(service: Service, trust: mtls.TrustDomain | None = None,
                   identities: Mapping[str, str] | None = None,
                   port: InboundPort | None = None) -> RouteConfiguration:
    """The inbound listener's one route to the local application (of the first port, or of
    `port`), with the callers' authorization as its virtual host's per-filter config
    (`mesh_authorization.py`): the same policy on every HTTP port."""
    number = None if port is None else port.port
    name = names.inbound(service.name, number)
    # The caller's sidecar already applied the route's timeout and retries: inbound has no
    # timeout of its own (0s), so a slow answer is the caller's policy to cut short.
    action = RouteAction(cluster=names.inbound_cluster(service.name, number),
                         timeout=duration(0))
    vhost = VirtualHost(name=name, domains=["*"],
                        routes=[EnvoyRoute(name=name, match=RouteMatch(prefix="/"),
                                           route=action)])
    assert service.sidecar is not None
    sidecar = service.sidecar
    configs = {**jwt_authn.inbound_config(sidecar.jwt, name),
               **audit.inbound_config(_callers(sidecar.audit, trust, identities)),
               **ext_authz.inbound_config(_selected(sidecar.ext_authz, trust, identities)),
               **mesh_authorization.inbound_config(
                   _callers(sidecar.authorization, trust, identities),
                   _callers(sidecar.deny, trust, identities))}
    for filter_name, config in configs.items():
        vhost.typed_per_filter_config[filter_name].CopyFrom(pack(config))
    return RouteConfiguration(name=name, virtual_hosts=[vhost])


def inbound_cluster(service: Service, port: InboundPort | None = None) -> Cluster:
    """The local application behind the first port (or `port`): a fixed address, so a static
    cluster (DNS for a host name)."""
    sidecar = service.sidecar
    assert sidecar is not None
    name = names.inbound_cluster(service.name, None if port is None else port.port)
    app = Endpoint(host=sidecar.app_host, port=sidecar.app_port) if port is None else \
        Endpoint(host=port.app_host, port=port.app_port)
    cluster = Cluster(name=name, connect_timeout=duration(service.connect_timeout),
                      type=Cluster.STRICT_DNS if app.is_dns else Cluster.STATIC,
                      load_assignment=endpoints.load_assignment(name, [app]))
    if app.is_dns:
        cluster.dns_lookup_family = Cluster.V4_PREFERRED
    if _protocol(service, port) in _HTTP2_PROTOCOLS:
        options = HttpProtocolOptions()
        options.explicit_http_config.http2_protocol_options.CopyFrom(Http2ProtocolOptions())
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(pack(options))
    return cluster


# ---- outbound -----------------------------------------------------------------------------------


def local_port_listener(callee: Service, port: int, caller: Service | None = None) -> Listener:
    """127.0.0.1:port, all of it for `callee`: the Consul Connect style upstream."""
    name = names.outbound(callee.name)
    if callee.protocol == "tcp" and callee.tcp_routes:  # by SNI and weight (tcproutes.py)
        return Listener(name=name, address=_address(LOOPBACK, port),
                        listener_filters=tcproutes.listener_filters(callee.tcp_routes),
                        filter_chains=tcproutes.filter_chains(name, callee.tcp_routes),
                        traffic_direction=TrafficDirection.OUTBOUND)
    if callee.protocol == "tcp":
        network_filter = Filter(name=TCP_PROXY, typed_config=pack(
            TcpProxy(stat_prefix=name, cluster=names.cluster(callee.name))))
    else:
        network_filter = Filter(name=HTTP_CONNECTION_MANAGER,
                                typed_config=pack(outbound_manager(name, caller)))
    return Listener(name=name, address=_address(LOOPBACK, port),
                    filter_chains=[FilterChain(filters=[network_filter])],
                    traffic_direction=TrafficDirection.OUTBOUND)


def outbound_listener(port: int, caller: Service | None = None,
                      name: str = names.OUTBOUND) -> Listener:
    """127.0.0.1:port for every HTTP callee, chosen by Host: the HTTP-proxy style (`name`: an
    egress port's, `names.egress_port`); with the caller's `unknown_hosts`, the dynamic
    forward proxy (passthrough) or the 502 (refuse)."""
    sidecar = caller.sidecar if caller is not None else None
    unknown = sidecar.unknown_hosts if sidecar is not None else None
    manager = outbound_manager(name, caller, passthrough=unknown == "passthrough")
    if unknown == "refuse":
        manager.local_reply_config.CopyFrom(_refused_reply())
    return Listener(name=name, address=_address(LOOPBACK, port),
                    filter_chains=[FilterChain(filters=[Filter(
                        name=HTTP_CONNECTION_MANAGER, typed_config=pack(manager))])],
                    traffic_direction=TrafficDirection.OUTBOUND)


def outbound_manager(name: str, caller: Service | None = None,
                     passthrough: bool = False) -> hcm.HttpConnectionManager:
    """Routes over ADS (`name`), with the filters a Route's rules configure per route; traced
    as the calling sidecar's `tracing` says (spans named after `caller`)."""
    manager = hcm.HttpConnectionManager(
        stat_prefix=name,
        rds=hcm.Rds(config_source=ads_config_source(), route_config_name=name),
        http_filters=httpfilters.http_filters(ChainInputs.sidecar_outbound(passthrough)))
    spec = caller.sidecar.tracing if caller is not None and caller.sidecar is not None else None
    if spec is not None and caller is not None:
        tracing.apply(manager, caller.name, spec)
    return manager


# ---- unknown hosts (`Sidecar.unknown_hosts`) ----------------------------------------------------

# What the application reads when its sidecar refuses a host the mesh does not know.
REFUSED_BODY = "meshpilot: this host is not in the mesh (unknown_hosts: refuse)\n"


# Marks a request the passthrough forwarded: one that comes back to a passthrough (its Host
# named the outbound port itself, or another sidecar's) would go round for ever.
PASSED_THROUGH_HEADER = "x-meshpilot-passed-through"
LOOP_BODY = "meshpilot: this request was passed through once already (a loop)\n"


def unknown_hosts_virtual_host(mode: UnknownHosts) -> VirtualHost:
    """The outbound port's last virtual host, every Host no callee's picked (`*` loses to every
    exact domain): to the black hole, or to the passthrough cluster, marked, so that a marked
    request arriving at a passthrough again is refused (508) rather than sent once more (a
    Host of 127.0.0.1:<outbound port>, or any name that resolves to it, would loop)."""
    if mode == "refuse":
        return VirtualHost(name=names.UNKNOWN_HOSTS, domains=["*"], routes=[EnvoyRoute(
            name=names.UNKNOWN_HOSTS, match=RouteMatch(prefix="/"),
            route=RouteAction(cluster=names.BLACKHOLE_CLUSTER))])
    looped = EnvoyRoute(name=f"{names.UNKNOWN_HOSTS}/loop", match=RouteMatch(
        prefix="/", headers=[HeaderMatcher(name=PASSED_THROUGH_HEADER, present_match=True)]),
        direct_response=DirectResponseAction(status=508,
                                             body=DataSource(inline_string=LOOP_BODY)))
    forward = EnvoyRoute(name=names.UNKNOWN_HOSTS, match=RouteMatch(prefix="/"),
                         route=RouteAction(cluster=names.PASSTHROUGH_CLUSTER))
    forward.request_headers_to_add.append(HeaderValueOption(
        header=HeaderValue(key=PASSED_THROUGH_HEADER, value="1"),
        append_action=HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))
    return VirtualHost(name=names.UNKNOWN_HOSTS, domains=["*"], routes=[looped, forward])


def unknown_hosts_cluster(mode: UnknownHosts) -> Cluster:
    """Passthrough: the dynamic forward proxy's cluster (its host from the filter's DNS cache,
    `httpfilters/dynamic_forward_proxy.py`). Refuse: a cluster with no endpoints, so each
    refused request counts in its `upstream_cx_none_healthy` (the 503 becomes 502,
    `_refused_reply`)."""
    if mode == "refuse":
        return Cluster(name=names.BLACKHOLE_CLUSTER, type=Cluster.STATIC,
                       connect_timeout=duration(1.0))
    return Cluster(name=names.PASSTHROUGH_CLUSTER, connect_timeout=duration(5.0),
                   lb_policy=Cluster.CLUSTER_PROVIDED,
                   cluster_type=Cluster.CustomClusterType(
                       name=dynamic_forward_proxy.CLUSTER_TYPE,
                       typed_config=pack(dynamic_forward_proxy.cluster_config())))


def _refused_reply() -> hcm.LocalReplyConfig:
    """The black hole's "no healthy upstream" as Istio's REGISTRY_ONLY answer, 502; only for
    that cluster (a callee without healthy endpoints still answers 503)."""
    only_blackhole = AccessLogFilter(extension_filter=ExtensionFilter(
        name=CEL_FILTER, typed_config=pack(ExpressionFilter(
            expression=f"xds.cluster_name == '{names.BLACKHOLE_CLUSTER}'"))))
    return hcm.LocalReplyConfig(mappers=[hcm.ResponseMapper(
        filter=only_blackhole, status_code=UInt32Value(value=502),
        body=DataSource(inline_string=REFUSED_BODY))])


def _address(host: str, port: int) -> Address:
    return Address(socket_address=SocketAddress(address=host, port_value=port))
