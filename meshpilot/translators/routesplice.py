"""A listener's RouteConfiguration spliced after a Route edit, in time that follows the edit.

`routes.route_configuration_resource` serializes a RouteConfiguration as its name field, each
served Route's VirtualHost bytes as a length-delimited field 2 in Route name order, then field
14. `ConfigLayout` keeps those pieces of one listener's configuration aligned with its served
Routes (and what the listener's HTTP filters read of each, the domains each claims, the clusters
each names), so that after an edit of a few Routes the new configuration is the old pieces with
those Routes' pieces taken out or put in at their place by name, joined again: no loop over
every Route in Python. Only a configuration in which no domain is claimed twice has a layout
(then no Route lost a domain to another, `routes.virtual_host`); an edit that would make a
domain claimed twice gives None, and the listener is built whole as before.

The bytes are exactly what `route_configuration_resource` gives for the new Routes (tests
compare them); what is spliced is only ever what that function would have put there.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import attrgetter

from meshpilot.base import types
from meshpilot.ir.model import Gateway, GatewayListener, Route
from meshpilot.translators import names, routes
from meshpilot.translators.routes import VirtualHostBytes, VirtualHostCache
from meshpilot.xds.deps import References
from meshpilot.xds.resources import Resource

_name = attrgetter("name")
Inputs = Callable[[Route], object]  # what the listener's HTTP filters read of one Route


@dataclass(frozen=True, slots=True)
class ConfigLayout:
    """One listener's RouteConfiguration as pieces aligned with its served Routes."""

    routes: tuple[Route, ...]  # served, in name order
    inputs: tuple[object, ...]  # what the HTTP filters read of each (`filter_inputs`)
    segments: tuple[bytes, ...]  # each Route's VirtualHost as field 2 (b"": it has none)
    claims: tuple[tuple[tuple[str, ...], frozenset[str]], ...]  # each one's domains, clusters
    domains: Mapping[str, int]  # domain -> Routes claiming it (each 1)
    clusters: Mapping[str, int]  # cluster -> virtual hosts naming it

    @classmethod
    def of(cls, spec: GatewayListener, served: tuple[Route, ...],
           filter_inputs: tuple[object, ...], cache: VirtualHostCache) -> ConfigLayout | None:
        """The layout of a configuration `route_configuration_resource` just built for
        `served` (its virtual hosts are in `cache`); None if some domain was claimed twice."""
        port = routes.vhost_key(spec)
        segments: list[bytes] = []
        claims: list[tuple[tuple[str, ...], frozenset[str]]] = []
        domains: dict[str, int] = {}
        clusters: dict[str, int] = {}
        for route in served:
            found = cache.get((id(route), port))
            if found is None or found[0] is not route:
                if routes.domains(route.hosts, spec.port):
                    return None  # it lost a domain to another Route: not cached
                segments.append(b"")
                claims.append(((), frozenset()))
                continue
            segments.append(_field(found[2]))
            claims.append((found[1], found[3]))
            for domain in found[1]:
                domains[domain] = domains.get(domain, 0) + 1
            for cluster in found[3]:
                clusters[cluster] = clusters.get(cluster, 0) + 1
        if any(count > 1 for count in domains.values()):
            return None
        return cls(served, filter_inputs, tuple(segments), tuple(claims), domains, clusters)

    def spliced(self, spec: GatewayListener, changed: Mapping[str, Route | None],
                inputs: Inputs, earlier: Mapping[tuple[int, int], VirtualHostBytes],
                cache: VirtualHostCache) -> ConfigLayout | None:
        """This layout with each Route named in `changed` taken out and, if given (a Route
        served on this listener now), put in at its place; its virtual host is taken from
        `earlier` or `cache` by identity, or serialized, and put in `cache`. None if a domain
        would be claimed twice."""
        served, filters = list(self.routes), list(self.inputs)
        segments, claims = list(self.segments), list(self.claims)
        domains, clusters = dict(self.domains), dict(self.clusters)
        port = routes.vhost_key(spec)
        for name in changed:
            at = bisect_left(served, name, key=_name)
            if at < len(served) and served[at].name == name:
                own, named = claims[at]
                for domain in own:
                    _less(domains, domain)
                for cluster in named:
                    _less(clusters, cluster)
                del served[at], filters[at], segments[at], claims[at]
        for name, route in changed.items():
            if route is None:
                continue
            key = (id(route), port)
            found = cache.get(key) or earlier.get(key)
            if found is None or found[0] is not route:
                own = tuple(routes.domains(route.hosts, spec.port))
                found = (route, own, b"", frozenset())
                if own and not any(domain in domains for domain in own):
                    vhost = routes.virtual_host(route, spec.port, set(), routes.scheme_of(spec))
                    assert vhost is not None
                    found = (route, own, vhost.SerializeToString(deterministic=True),
                             routes._vhost_clusters(vhost))
            if any(domain in domains for domain in found[1]):
                return None  # claimed twice: `route_configuration_resource` decides who loses
            at = bisect_left(served, name, key=_name)
            served.insert(at, route)
            filters.insert(at, inputs(route))
            if found[1]:
                cache[key] = found
                segments.insert(at, _field(found[2]))
            else:
                segments.insert(at, b"")
            claims.insert(at, (found[1], found[3]))
            for domain in found[1]:
                domains[domain] = 1
            for cluster in found[3]:
                clusters[cluster] = clusters.get(cluster, 0) + 1
        return ConfigLayout(tuple(served), tuple(filters), tuple(segments), tuple(claims),
                            domains, clusters)

    def resource(self, gateway: Gateway, spec: GatewayListener) -> Resource:
        """The RouteConfiguration: what `route_configuration_resource` gives for `routes`."""
        name = names.route_config(gateway.name, spec.name)
        head = routes._length_delimited(1, name.encode("utf-8")) if name else b""
        body = b"".join((head, *self.segments, routes._IGNORE_PORT_IN_HOST_MATCHING))
        return Resource(types.ROUTE, name, body, References(clusters=frozenset(self.clusters)))


def _field(vhost: bytes) -> bytes:
    return routes._length_delimited(2, vhost)


def _less(counts: dict[str, int], key: str) -> None:
    counts[key] -= 1
    if not counts[key]:
        del counts[key]
