"""Translators: the model and a view in, the Envoy resources that view should hold out.

Pure: no I/O, no clocks, deterministic output (the same model gives byte-identical resources, so
versions do not churn). One module per resource family; this module assembles them:

    names.py      every generated resource's name
    clusters.py   Service (or subset) -> Cluster
    endpoints.py  endpoints -> ClusterLoadAssignment
    listeners.py  Gateway listener -> Listener (HTTP connection manager, RDS over ADS)
    routes.py     Routes attached to a listener -> RouteConfiguration
    raw.py        `kind: EnvoyResources`, passed through

What a view receives:
- A view named like a Gateway: a Listener and a RouteConfiguration per gateway listener (a tcp
  listener has no routes), and only the clusters its Routes and tcp listeners send traffic to
  (a whole service or a subset), with the ClusterLoadAssignment of each EDS cluster. A gateway
  never receives a large mesh's every service.
- Any other view: no service-derived resources yet (sidecars come later).
- Every view: the raw EnvoyResources addressed to it. Escape hatch: a raw resource with the same
  type and name as a generated one replaces it, so a hand-written cluster `reviews` overrides
  the generated one while everything else stays generated.
- Then the plugins' resources (`meshpilot.plugins`), in plugin order: each adds resources or
  replaces (patches) one of the same type and name, whether raw, generated or an earlier
  plugin's. So the order is raw -> generated -> plugins, and the last word is a plugin's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from meshpilot.plugins import Plugin, apply_plugins, as_plugins
from meshpilot.policy.model import Gateway, Model, Route, Service
from meshpilot.translators import clusters, endpoints, listeners, names, raw, routes
from meshpilot.xds import types
from meshpilot.xds.resources import Resource
from meshpilot.xds.snapshot import Snapshot


class Translation:
    """All views of one model. Each resource is serialized once and shared by every view.

    Clusters and their endpoints are built on first use and kept, so a service that many
    gateways route to is translated and serialized once. `snapshot` may be called from several
    threads: two racing on the same cluster build equal bytes, and either result is kept.

    `plugins` (`Plugin`s, or plugin objects and functions) run for every view, after raw and
    generated resources; a plugin's failure raises `PluginError`. Pass the same `Plugin`s to
    every Translation of a process: their conversion caches live on them.
    """

    def __init__(self, model: Model, plugins: Iterable[Plugin | object] = ()):
        self.model = model
        self.plugins = as_plugins(plugins)
        self._raw = raw.encode(model)
        self._routes_of: dict[str, list[Route]] = {}
        for route in model.routes:  # sorted by name in the model, so kept in name order here
            self._routes_of.setdefault(route.gateway, []).append(route)
        self._clusters: dict[str, tuple[Resource, ...]] = {}

    def snapshot(self, view: str) -> Snapshot:
        handwritten: list[Resource] = raw.for_view(self._raw, view)
        overridden = {(r.type_url, r.name) for r in handwritten}
        generated = [r for r in self._generated(view)
                     if (r.type_url, r.name) not in overridden]
        assembled = handwritten + generated
        if self.plugins:
            assembled = apply_plugins(self.plugins, self.model, view, assembled)
        return Snapshot.from_resources(view, assembled)

    def _generated(self, view: str) -> list[Resource]:
        gateway = self.model.gateway(view)
        if gateway is None:
            return []
        attached = self._routes_of.get(gateway.name, [])
        resources: list[Resource] = []
        for spec in gateway.listeners:
            listener = listeners.listener(gateway, spec)
            resources.append(Resource.from_message(types.LISTENER, listener.name, listener))
            if spec.protocol == "tcp":
                continue  # a TCP proxy: no routes
            config = routes.route_configuration(gateway, spec, attached)
            resources.append(Resource.from_message(types.ROUTE, config.name, config))
        # No sorting needed here: a snapshot orders each type's resources by name.
        for service, subset in _backends(gateway, attached):
            resources.extend(self._cluster_resources(service, subset))
        return resources

    def _cluster_resources(self, service_name: str, subset: str | None) -> tuple[Resource, ...]:
        """The cluster (and, for EDS, its assignment) of a service or subset, built once."""
        name = names.cluster(service_name, subset)
        found = self._clusters.get(name)
        if found is None:
            found = self._clusters[name] = _translate_cluster(self.model.service(service_name),
                                                              subset)
        return found


def _backends(gateway: Gateway, attached: list[Route]) -> Iterator[tuple[str, str | None]]:
    """(service, subset) of every backend of the Routes served on some listener of `gateway`,
    and the service of every tcp listener, each once."""
    seen: set[tuple[str, str | None]] = set()
    http = [spec for spec in gateway.listeners if spec.protocol == "http"]
    for spec in gateway.listeners:
        if spec.service is not None and (spec.service, None) not in seen:
            seen.add((spec.service, None))
            yield spec.service, None
    for route in attached:
        if not any(routes.attaches(route, spec) for spec in http):
            continue
        for rule in route.rules:
            for backend in (*rule.backends, *rule.mirrors):  # a mirror needs its cluster too
                key = (backend.service, backend.subset)
                if key not in seen:
                    seen.add(key)
                    yield key


def _translate_cluster(service: Service | None, subset: str | None) -> tuple[Resource, ...]:
    # The loader rejects a backend naming an unknown service or subset; if one got through
    # anyway, sending no cluster (Envoy answers 503) beats a subset cluster holding every
    # endpoint of the service.
    if service is None or (subset is not None and service.subset(subset) is None):
        return ()
    cluster = clusters.cluster(service, subset)
    built = [Resource.from_message(types.CLUSTER, cluster.name, cluster)]
    if not clusters.uses_dns(service):
        assignment = endpoints.load_assignment(names.eds_service(cluster.name),
                                               service.endpoints_of(subset))
        built.append(Resource.from_message(types.ENDPOINT, assignment.cluster_name, assignment))
    return tuple(built)
