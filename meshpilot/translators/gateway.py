"""Gateway views: what the Envoys of a Gateway receive (a view named like the Gateway).

One Listener and one RouteConfiguration per gateway listener (a tcp listener, or one
redirecting to https, has no routes), the Secrets of its certificates, and only the clusters its
Routes and tcp listeners send traffic to (a whole service or a subset), with the
ClusterLoadAssignment of each EDS cluster: a gateway never receives a large mesh's every
service. Listeners and route configurations are built once per Translation; serialized virtual
hosts are kept per Route, so a reload serializes only the Routes that changed (`reuse.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from meshpilot.base import types
from meshpilot.ir.model import Backend, Gateway, GatewayListener, Model, Route
from meshpilot.translators import failover, httpfilters, listeners, routes, secrets, tracing
from meshpilot.translators.reuse import NOTHING, BuiltListener, Earlier, ListenerKey
from meshpilot.xds.resources import Resource

ClusterResources = Callable[[str, str | None], tuple[Resource, ...]]


class GatewayViews:
    """The gateway views of one model. `cluster_resources(service, subset)` is shared with the
    sidecars (`upstreams.Upstreams.resources`)."""

    def __init__(self, model: Model, cluster_resources: ClusterResources,
                 earlier: Earlier = NOTHING):
        self.model = model
        self._cluster_resources = cluster_resources
        self._earlier = earlier
        self._routes_of: dict[str, list[Route]] = {}
        for route in model.routes:  # sorted by name in the model, so kept in name order here
            if route.gateway is not None:  # else attached to a service: the mesh's
                self._routes_of.setdefault(route.gateway, []).append(route)
        self._listeners: dict[ListenerKey, BuiltListener] = {}
        self._virtual_hosts: routes.VirtualHostCache = {}  # serialized, by Route and port

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

    def with_clusters(self, cluster_resources: ClusterResources) -> GatewayViews:
        """These views building clusters through `cluster_resources` (other discovered
        endpoints): listeners and routes built so far are shared, since none depends on
        endpoints."""
        views = GatewayViews(self.model, cluster_resources, self._earlier)
        views._listeners, views._virtual_hosts = self._listeners, self._virtual_hosts
        return views

    def resources(self, gateway: Gateway) -> list[Resource]:
        attached = self._routes_of.get(gateway.name, [])
        found: list[Resource] = []
        for spec in gateway.listeners:
            built = self._listener(gateway, spec, attached)
            found.extend(built.front)
            found.extend(built.config)
        # No sorting needed here: a snapshot orders each type's resources by name.
        for service, subset in failover.with_targets(self.model, _backends(gateway, attached)):
            found.extend(self._cluster_resources(service, subset))
        return found

    def _listener(self, gateway: Gateway, spec: GatewayListener,
                  attached: list[Route]) -> BuiltListener:
        """A gateway listener's Listener, its certificates' Secrets and its RouteConfiguration,
        built once per Translation (or lent by the previous one when their inputs are equal)."""
        key = (gateway.name, spec.name)
        found = self._listeners.get(key)
        if found is not None:
            return found
        served = tuple(r for r in attached if routes.attaches(r, spec))
        has_routes = spec.protocol != "tcp" and spec.redirect_to_https is None
        filter_inputs = httpfilters.route_inputs(served) if has_routes else ()
        front = self._earlier.listener_front(key, gateway, filter_inputs)
        if front is None:
            listener = listeners.listener(gateway, spec, served)
            front = (Resource.from_message(types.LISTENER, listener.name, listener),
                     *secrets.listener_resources(gateway.name, spec),  # https: its certs
                     *(Resource.from_message(types.SECRET, s.name, s)
                       for s in listeners.filter_secrets(spec, served)))
        config: tuple[Resource, ...] = ()  # a TCP proxy or an https redirect: no routes
        if has_routes:
            config = self._earlier.route_config(key, gateway, served, routes.vhost_key(spec),
                                                self._virtual_hosts) or (
                # Only the virtual hosts of Routes that are not the previous objects are
                # serialized.
                routes.route_configuration_resource(gateway, spec, served,
                                                    self._earlier.virtual_hosts,
                                                    self._virtual_hosts),)
        built = self._listeners[key] = BuiltListener(gateway, served, filter_inputs, front,
                                                     config)
        return built


def _backends(gateway: Gateway, attached: list[Route]) -> Iterator[tuple[str, str | None]]:
    """(service, subset) of every backend of the Routes served on some listener of `gateway`,
    the services their HTTP features call, and the service of every tcp listener, each once."""
    seen: set[tuple[str, str | None]] = set()
    http = [spec for spec in gateway.listeners
            if spec.protocol == "http" and spec.redirect_to_https is None]
    for spec in gateway.listeners:
        if spec.service is not None and (spec.service, None) not in seen:
            seen.add((spec.service, None))
            yield spec.service, None
    for spec in gateway.listeners:  # the collector a listener's tracer exports spans to
        exporter = tracing.collector(spec.tracing)
        if exporter is not None and (exporter, None) not in seen:
            seen.add((exporter, None))
            yield exporter, None
    for route in attached:
        if not any(routes.attaches(route, spec) for spec in http):
            continue
        for service in httpfilters.services_of(route):  # a JWKS server, an authorization one
            if (service, None) not in seen:
                seen.add((service, None))
                yield service, None
        for rule in route.rules:
            for backend in (*rule.backends, *rule.mirrors):  # a mirror needs its cluster too
                if isinstance(backend, Backend) and not backend.resolved:
                    continue  # no cluster: its share is answered 500
                key = (backend.service, backend.subset)
                if key not in seen:
                    seen.add(key)
                    yield key
