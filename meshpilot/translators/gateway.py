"""Gateway views: what the Envoys of a Gateway receive (a view named like the Gateway).

One Listener and one RouteConfiguration per gateway listener (a tcp listener, or one
redirecting to https, has no routes), the Secrets of its certificates, and only the clusters its
Routes and tcp listeners send traffic to (a whole service or a subset), with the
ClusterLoadAssignment of each EDS cluster: a gateway never receives a large mesh's every
service. Listeners and route configurations are built once per Translation; serialized virtual
hosts are kept per Route, so a reload serializes only the Routes that changed (`reuse.py`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping
from operator import attrgetter

from meshpilot.base import types
from meshpilot.ir.changes import ModelChanges, route_named
from meshpilot.ir.model import Gateway, GatewayListener, Model, Route
from meshpilot.translators import (
    failover,
    httpfilters,
    listeners,
    locality,
    names,
    routes,
    secrets,
    tcproutes,
    tracing,
)
from meshpilot.translators.reuse import NOTHING, BuiltListener, Earlier, ListenerKey
from meshpilot.translators.routesplice import ConfigLayout
from meshpilot.xds.resources import Resource

_name = attrgetter("name")


class GatewayViews:
    """The gateway views of one model. `cluster_resources(service, subset)` is shared with the
    sidecars (`upstreams.Upstreams.resources`)."""

    def __init__(self, model: Model, cluster_resources: locality.ClusterResources,
                 earlier: Earlier = NOTHING, changes: ModelChanges | None = None):
        """`changes` (what differs from the model `earlier` was built from): the Routes of each
        gateway and the listeners none of the changed Routes or Gateways touch are taken from
        `earlier` as they are, instead of walking every Route."""
        self.model = model
        self._cluster_resources = cluster_resources
        self._earlier = earlier
        self._routes_of: dict[str, list[Route]] = {}
        self._listeners: dict[ListenerKey, BuiltListener] = {}
        self._virtual_hosts: routes.VirtualHostCache = {}  # serialized, by Route and port
        # id(Route) -> (Route, its filters' inputs), kept across Translations on the patch path
        self._route_inputs: dict[int, tuple[Route, tuple[object, ...]]] = {}
        self._changed: frozenset[str] | None = None  # the Routes an edit changed, by name
        self._stale: list[tuple[Route, Gateway | None]] = []  # their old objects
        self.spliced = 0  # listeners whose RouteConfiguration was spliced (tests)
        if changes is not None and earlier.routes_of is not None:
            self._inherit(earlier.routes_of, changes)
            return
        for route in model.routes:  # sorted by name in the model, so kept in name order here
            if route.gateway is not None:  # else attached to a service: the mesh's
                self._routes_of.setdefault(route.gateway, []).append(route)

    def _inherit(self, routes_of: Mapping[str, list[Route]], changes: ModelChanges) -> None:
        self._changed = changes.routes
        self._routes_of = dict(routes_of)
        touched: set[ListenerKey] = set()
        stale: list[tuple[Route, Gateway | None]] = []
        for name in changes.routes:
            for model, old in ((changes.before, True), (self.model, False)):
                route = route_named(model, name)
                if route is None or route.gateway is None:
                    continue
                gateway = model.gateway(route.gateway)
                for spec in gateway.listeners if gateway is not None else ():
                    if routes.attaches(route, spec):
                        touched.add((route.gateway, spec.name))
                served = self._routes_of[route.gateway] = list(
                    self._routes_of.get(route.gateway, ()))  # copied before it is changed
                at = bisect_left(served, name, key=_name)
                if old:
                    if at < len(served) and served[at] is route:
                        del served[at]
                        stale.append((route, gateway))
                else:
                    served.insert(at, route)
        for gateway in changes.gateways:
            touched.update((gateway, spec.name) for model in (changes.before, self.model)
                           if (found := model.gateway(gateway)) is not None
                           for spec in found.listeners)
        self._listeners = {key: built for key, built in self._earlier.listeners.items()
                           if key not in touched}
        # Shared with the earlier Translation, not copied: both are caches by the identity of
        # the Route (which each entry keeps), so either Translation finds only its own Routes.
        self._virtual_hosts = self._earlier.virtual_hosts  # type: ignore[assignment]
        self._route_inputs = self._earlier.route_inputs  # type: ignore[assignment]
        self._stale = stale  # their cache entries go once their listeners are built again

    def _prune(self, spec: GatewayListener) -> None:
        """The old Routes' virtual hosts at this listener, and their filter inputs, go from the
        caches (after the listener was built: splicing reads them)."""
        for route, _ in self._stale:
            self._route_inputs.pop(id(route), None)
            key = (id(route), routes.vhost_key(spec))
            found = self._virtual_hosts.get(key)
            if found is not None and found[0] is route:
                del self._virtual_hosts[key]

    @property
    def route_inputs(self) -> Mapping[int, tuple[Route, tuple[object, ...]]]:
        return self._route_inputs

    def _inputs(self, served: tuple[Route, ...]) -> tuple[object, ...]:
        """`httpfilters.route_inputs(served)`, each Route's share computed once."""
        cache = self._route_inputs
        found = []
        for route in served:
            hit = cache.get(id(route))
            if hit is None or hit[0] is not route:
                hit = cache[id(route)] = (route, httpfilters.route_inputs((route,))[0])
            found.append(hit[1])
        return tuple(found)

    @property
    def routes_of(self) -> Mapping[str, list[Route]]:
        """The Routes of each gateway, in name order (what the next Translation may reuse)."""
        return self._routes_of

    def attached(self, gateway: str) -> list[Route]:
        return self._routes_of.get(gateway, [])

    @property
    def listeners(self) -> Mapping[ListenerKey, BuiltListener]:
        """Every gateway listener built so far (what the next Translation may reuse)."""
        return self._listeners

    @property
    def virtual_hosts(self) -> Mapping[tuple[int, int], routes.VirtualHostBytes]:
        return self._virtual_hosts

    def release_earlier(self) -> None:
        """Reuse nothing more from the previous Translation (`Translation.release_earlier`)."""
        self._earlier = NOTHING

    def with_clusters(self, cluster_resources: locality.ClusterResources) -> GatewayViews:
        """These views building clusters through `cluster_resources` (other discovered
        endpoints): listeners and routes built so far are shared, since none depends on
        endpoints."""
        views = GatewayViews(self.model, cluster_resources, self._earlier)
        views._listeners, views._virtual_hosts = self._listeners, self._virtual_hosts
        views._routes_of, views._route_inputs = self._routes_of, self._route_inputs
        return views

    def resources(self, gateway: Gateway) -> list[Resource]:
        attached = self._routes_of.get(gateway.name, [])
        found: list[Resource] = []
        for spec in gateway.listeners:
            built = self.listener(gateway, spec)
            found.extend(built.front)
            found.extend(built.config)
        # No sorting needed here: a snapshot orders each type's resources by name.
        caller = locality.gateway_caller(gateway)
        for service, subset in failover.with_targets(self.model, _backends(gateway, attached)):
            found.extend(self._cluster_resources(service, subset, caller))
        return found

    def listener(self, gateway: Gateway, spec: GatewayListener) -> BuiltListener:
        """A gateway listener's Listener, its certificates' Secrets and its RouteConfiguration,
        built once per Translation (or lent by the previous one when their inputs are equal)."""
        key = (gateway.name, spec.name)
        found = self._listeners.get(key)
        if found is not None:
            return found
        spliced = self._spliced(gateway, spec, key)
        if spliced is not None:
            self._listeners[key] = spliced
            self.spliced += 1
            self._prune(spec)
            return spliced
        attached = self._routes_of.get(gateway.name, [])
        served = tuple(r for r in attached if routes.attaches(r, spec))
        has_routes = spec.protocol == "http" and spec.redirect_to_https is None
        filter_inputs = self._inputs(served) if has_routes else ()
        front = self._earlier.listener_front(key, gateway, filter_inputs) or \
            self._front(gateway, spec, served)
        config: tuple[Resource, ...] = ()  # a TCP proxy or an https redirect: no routes
        layout: ConfigLayout | None = None
        if has_routes:
            lent = self._earlier.route_config(key, gateway, served, routes.vhost_key(spec),
                                              self._virtual_hosts)
            if lent is not None:
                config = lent
                kept = self._earlier.route_layout(key)
                layout = kept if isinstance(kept, ConfigLayout) else None
            elif spec.tls_hosts:
                # A table per TLS host: built whole after an edit (never spliced).
                config = tuple(routes.route_configuration_resource(
                    gateway, spec, served, self._earlier.virtual_hosts, self._virtual_hosts,
                    host) for host in spec.tls_hosts)
            else:
                # Only the virtual hosts of Routes that are not the previous objects are
                # serialized; the pieces are kept, for the first edit's splice.
                pieces = routes.configuration_pieces(gateway, spec, served,
                                                     self._earlier.virtual_hosts,
                                                     self._virtual_hosts)
                config = (pieces.resource,)
                layout = ConfigLayout.of_pieces(pieces, filter_inputs)
        built = self._listeners[key] = BuiltListener(gateway, served, filter_inputs, front,
                                                     config, layout)
        self._prune(spec)
        return built

    def _spliced(self, gateway: Gateway, spec: GatewayListener,
                 key: ListenerKey) -> BuiltListener | None:
        """After an edit of a few Routes: the earlier listener's RouteConfiguration with their
        virtual hosts taken out or put in (`routesplice.py`), if it has one configuration of
        the name `routes.py` gives it and no domain ends up claimed twice."""
        earlier = self._earlier.listeners.get(key)
        if self._changed is None or earlier is None or earlier.gateway is not gateway or \
                spec.tls_hosts or len(earlier.config) != 1 or \
                earlier.config[0].name != names.route_config(gateway.name, spec.name):
            return None
        layout = earlier.layout if isinstance(earlier.layout, ConfigLayout) else \
            ConfigLayout.of(spec, earlier.routes, earlier.filter_inputs,
                            self._earlier.virtual_hosts)
        if layout is None:
            return None
        changed: dict[str, Route | None] = {}
        for name in self._changed:
            route = route_named(self.model, name)
            changed[name] = route if route is not None and route.gateway == gateway.name \
                and routes.attaches(route, spec) else None
        layout = layout.spliced(spec, changed, lambda r: self._inputs((r,))[0],
                                self._earlier.virtual_hosts, self._virtual_hosts)
        if layout is None:
            return None
        served, filter_inputs = layout.routes, layout.inputs
        front = self._earlier.listener_front(key, gateway, filter_inputs) or \
            self._front(gateway, spec, served)
        return BuiltListener(gateway, served, filter_inputs, front,
                             (layout.resource(gateway, spec),), layout)

    @staticmethod
    def _front(gateway: Gateway, spec: GatewayListener,
               served: tuple[Route, ...]) -> tuple[Resource, ...]:
        listener = listeners.listener(gateway, spec, served)
        return (Resource.from_message(types.LISTENER, listener.name, listener),
                *secrets.listener_resources(gateway.name, spec),  # https: its certs
                *(Resource.from_message(types.SECRET, s.name, s)
                  for s in listeners.filter_secrets(spec, served)))


def _backends(gateway: Gateway, attached: list[Route]) -> Iterator[tuple[str, str | None]]:
    """(service, subset) of every backend of the Routes served on some listener of `gateway`,
    the services their HTTP features call, and the service of every tcp listener, each once."""
    seen: set[tuple[str, str | None]] = set()
    http = http_listeners(gateway)
    for key in gateway_backends(gateway):
        if key not in seen:
            seen.add(key)
            yield key
    for route in attached:
        for key in route_backends(route, http):
            if key not in seen:
                seen.add(key)
                yield key


def http_listeners(gateway: Gateway) -> list[GatewayListener]:
    """The listeners Routes are served on (HTTP, not redirecting to https)."""
    return [spec for spec in gateway.listeners
            if spec.protocol == "http" and spec.redirect_to_https is None]


def gateway_backends(gateway: Gateway) -> Iterator[tuple[str, str | None]]:
    """The services of every tcp listener (its service, weighted backends, passthrough entries
    and tcp routes), then the collector of every listener's tracer; repeats possible."""
    for spec in gateway.listeners:
        if spec.service is not None:
            yield spec.service, None
        # A tcp listener's weighted backends and its TLS passthrough entries' (one that does
        # not resolve has no cluster: its share of connections is closed).
        for backend in (*spec.backends, *(b for e in spec.passthrough for b in e.backends)):
            if backend.resolved:
                yield backend.service, backend.subset
        yield from tcproutes.backends(spec.tcp_routes)  # an Istio gateway's tcp and tls routes
    for spec in gateway.listeners:  # the collector a listener's tracer exports spans to
        exporter = tracing.collector(spec.tracing)
        if exporter is not None:
            yield exporter, None


def route_backends(route: Route, http: list[GatewayListener]) -> Iterator[tuple[str, str | None]]:
    """What one Route served on some listener of `http` sends to: the services its HTTP
    features call, then its backends and mirrors (nothing if it is served nowhere)."""
    if not any(routes.attaches(route, spec) for spec in http):
        return
    for service in httpfilters.services_of(route):  # a JWKS server, an authorization one
        yield service, None
    for rule in route.rules:
        for backend in rule.backends:
            if backend.resolved:  # an unresolved one has no cluster: answered 500
                yield backend.service, backend.subset
        for mirror in rule.mirrors:  # a mirror needs its clusters too
            yield from mirror.targets()
