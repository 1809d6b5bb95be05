"""Cross-translation reuse: what a Translation lends the next one (the incremental path).

After a reload, most model objects are the ones the previous load made (inputs/ re-parses only
the edited document), so most resources can be taken from the previous Translation instead of
built and serialized again. An `Earlier` holds the previous Translation's records (never the
Translation itself, so translations do not chain) and answers one question per kind of
resource: were these built from inputs equal to mine? Frozen model dataclasses compare by value
(identity first, so an untouched object costs nothing), so a Translation with an `Earlier` builds
exactly what one without builds; only the time differs.

    raw resources        the same RawResource object
    a cluster            the same Service (with its discovered endpoints) and trust domain;
                         a caller's localized one: and the same caller (`locality.relevant`)
    a gateway listener   the same Gateway, and equal inputs of its HTTP features' filters
    its routes           the same Gateway and Routes served there; virtual hosts by Route
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from meshpilot.ir.model import Endpoint, Gateway, RawResource, Route, Service
from meshpilot.translators.routes import VirtualHostBytes, VirtualHostCache
from meshpilot.xds.resources import Resource

# (gateway name, listener name)
ListenerKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class BuiltCluster:
    """The cluster (and, for EDS, the assignment) of a service or subset, and its Service."""

    service: Service | None  # with its discovered endpoints
    resources: tuple[Resource, ...]


@dataclass(frozen=True, slots=True)
class BuiltListener:
    """One gateway listener's resources and what they were built from."""

    gateway: Gateway
    routes: tuple[Route, ...]  # the Routes served on the listener, in name order
    filter_inputs: tuple[object, ...]  # what its HTTP filters read of them (httpfilters)
    front: tuple[Resource, ...]  # the Listener, then the Secrets it names
    config: tuple[Resource, ...]  # its RouteConfiguration (none for tcp or a redirect)
    # Its configuration's pieces by Route (`routesplice.ConfigLayout`), kept for the next edit
    layout: object | None = None


@dataclass(frozen=True, slots=True)
class Earlier:
    """The records of the previous Translation; `Earlier()` lends nothing (a cold start)."""

    raw: Mapping[int, tuple[RawResource, Resource]] = field(default_factory=dict)  # by id()
    clusters: Mapping[str, BuiltCluster] = field(default_factory=dict)
    listeners: Mapping[ListenerKey, BuiltListener] = field(default_factory=dict)
    virtual_hosts: Mapping[tuple[int, int], VirtualHostBytes] = field(default_factory=dict)
    # For a Translation told what changed (`ir/changes.py`, the patch path, `patch.py`): the
    # Routes of each gateway, the CA Secrets by service, the discovered endpoints, and what
    # each gateway view's snapshot was assembled from.
    routes_of: Mapping[str, list[Route]] | None = None
    ca_secrets: Mapping[str, tuple[Resource, ...]] = field(default_factory=dict)
    discovered: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    views: Mapping[str, object] = field(default_factory=dict)  # view -> patch.ViewAssembly
    # id(Route) -> (the Route, what its HTTP filters read of it: `httpfilters.route_inputs`)
    route_inputs: Mapping[int, tuple[Route, tuple[object, ...]]] = field(default_factory=dict)
    # Clusters of services balanced by the caller's locality, by (cluster name, caller as the
    # policy reads it: `locality.relevant`).
    localized: Mapping[tuple[str, object], BuiltCluster] = field(default_factory=dict)

    def raw_resource(self, resource: RawResource) -> Resource | None:
        found = self.raw.get(id(resource))  # kept alive by the earlier record: ids are stable
        return found[1] if found is not None and found[0] is resource else None

    def cluster(self, name: str, service: Service | None) -> tuple[Resource, ...] | None:
        return _same_service(self.clusters.get(name), service)

    def localized_cluster(self, key: tuple[str, object], service: Service | None
                          ) -> tuple[Resource, ...] | None:
        """A cluster built for one caller's locality (`Upstreams.resources`), if its Service
        is equal (the caller is in the key)."""
        return _same_service(self.localized.get(key), service)

    def listener_front(self, key: ListenerKey, gateway: Gateway,
                       filter_inputs: tuple[object, ...]) -> tuple[Resource, ...] | None:
        """The Listener (and its Secrets), if the Gateway and its filters' inputs are equal."""
        found = self._listener(key, gateway)
        return found.front if found is not None and found.filter_inputs == filter_inputs \
            else None

    def route_config(self, key: ListenerKey, gateway: Gateway, served: tuple[Route, ...],
                     port: int, keep: VirtualHostCache) -> tuple[Resource, ...] | None:
        """The RouteConfiguration, if the Gateway and the Routes served are equal; the virtual
        hosts of those Routes are then put in `keep`, for the Translation after this one."""
        found = self._listener(key, gateway)
        if found is None or found.routes != served:  # identity first, then by value
            return None
        for route in served:
            host = self.virtual_hosts.get((id(route), port))
            if host is not None and host[0] is route:
                keep[(id(route), port)] = host
        return found.config

    def route_layout(self, key: ListenerKey) -> object | None:
        """The layout of the configuration `route_config` lent (`routesplice.ConfigLayout`);
        shared: whichever Translation splices it first spends it."""
        found = self.listeners.get(key)
        return found.layout if found is not None else None

    def _listener(self, key: ListenerKey, gateway: Gateway) -> BuiltListener | None:
        found = self.listeners.get(key)
        if found is None or not (found.gateway is gateway or found.gateway == gateway):
            return None
        return found


def _same_service(found: BuiltCluster | None, service: Service | None
                  ) -> tuple[Resource, ...] | None:
    if found is None or not (found.service is service or found.service == service):
        return None
    return found.resources


NOTHING = Earlier()
