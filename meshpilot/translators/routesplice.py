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
compare them); what is spliced is only ever what that function would have put there. So is the
version: a sum of the virtual hosts' hashes (`routes.config_version`), patched by the pieces
taken out and put in, so no step of a splice reads the whole configuration but the one join of
its bytes. The counts by domain and by cluster are not copied either: the new layout takes them
over and the old one is spent (`spent`); a spent layout, met again when a reload was refused
after it was spliced, is not spliced a second time (`gateway.py` builds the listener whole).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import attrgetter

from meshpilot.base import types
from meshpilot.ir.model import Gateway, GatewayListener, Route
from meshpilot.translators import names, routes
from meshpilot.translators.routes import ConfigPieces, VirtualHostBytes, VirtualHostCache
from meshpilot.xds.deps import References
from meshpilot.xds.resources import Resource

_name = attrgetter("name")
_SPENDING = threading.Lock()
Inputs = Callable[[Route], object]  # what the listener's HTTP filters read of one Route


@dataclass(slots=True, eq=False)
class ConfigLayout:
    """One listener's RouteConfiguration as pieces aligned with its served Routes."""

    routes: tuple[Route, ...]  # served, in name order
    inputs: tuple[object, ...]  # what the HTTP filters read of each (`filter_inputs`)
    segments: tuple[bytes, ...]  # each Route's VirtualHost as field 2 (b"": it has none)
    claims: tuple[tuple[tuple[str, ...], frozenset[str]], ...]  # each one's domains, clusters
    hashes: tuple[int, ...]  # each VirtualHost's `piece_hash` (0: it has none)
    domains: dict[str, int]  # domain -> Routes claiming it (each 1); taken over by a splice
    clusters: dict[str, int]  # cluster -> virtual hosts naming it; taken over by a splice
    cluster_set: frozenset[str]  # the keys of `clusters` (the configuration's References)
    total: int  # the sum of `hashes`
    count: int  # virtual hosts
    spent: bool = False  # a splice took `domains` and `clusters` over: not to be spliced again

    @classmethod
    def of(cls, spec: GatewayListener, served: tuple[Route, ...],
           filter_inputs: tuple[object, ...], cache: VirtualHostCache) -> ConfigLayout | None:
        """The layout of a configuration `route_configuration_resource` just built for
        `served` (its virtual hosts are in `cache`); None if some domain was claimed twice."""
        port = routes.vhost_key(spec)
        segments: list[bytes] = []
        claims: list[tuple[tuple[str, ...], frozenset[str]]] = []
        hashes: list[int] = []
        domains: dict[str, int] = {}
        clusters: dict[str, int] = {}
        for route in served:
            found = cache.get((id(route), port))
            if found is None or found[0] is not route:
                if routes.domains(route.hosts, spec.port):
                    return None  # it lost a domain to another Route: not cached
                segments.append(b"")
                claims.append(((), frozenset()))
                hashes.append(0)
                continue
            segments.append(_field(found[2]))
            claims.append((found[1], found[3]))
            hashes.append(found[4])
            for domain in found[1]:
                domains[domain] = domains.get(domain, 0) + 1
            for cluster in found[3]:
                clusters[cluster] = clusters.get(cluster, 0) + 1
        if any(count > 1 for count in domains.values()):
            return None
        return cls(served, filter_inputs, tuple(segments), tuple(claims), tuple(hashes),
                   domains, clusters, frozenset(clusters), sum(hashes),
                   sum(1 for segment in segments if segment))

    @classmethod
    def of_pieces(cls, pieces: ConfigPieces, filter_inputs: tuple[object, ...]
                  ) -> ConfigLayout | None:
        """The layout of the configuration `routes.configuration_pieces` just made (so the
        first edit after a cold build splices too, instead of walking every Route to make
        one); None if some Route lost a domain to another."""
        if not pieces.own:
            return None
        domains: dict[str, int] = {}
        clusters: dict[str, int] = {}
        for own, named in pieces.claims:
            for domain in own:
                domains[domain] = 1
            for cluster in named:
                clusters[cluster] = clusters.get(cluster, 0) + 1
        count = sum(1 for segment in pieces.segments if segment)
        return cls(pieces.routes, filter_inputs, tuple(pieces.segments), tuple(pieces.claims),
                   tuple(pieces.hashes), domains, clusters, pieces.resource.refs.clusters,
                   sum(pieces.hashes), count)

    def spliced(self, spec: GatewayListener, changed: Mapping[str, Route | None],
                inputs: Inputs, earlier: Mapping[tuple[int, int], VirtualHostBytes],
                cache: VirtualHostCache) -> ConfigLayout | None:
        """This layout with each Route named in `changed` taken out and, if given (a Route
        served on this listener now), put in at its place; its virtual host is taken from
        `earlier` or `cache` by identity, or serialized, and put in `cache`. None if a domain
        would be claimed twice, or if this layout is spent.

        The new layout takes this one's counts over (copying them would visit every domain
        and cluster of the listener): this one is spent, whatever the answer, once it gets
        past the check of what the changed Routes claim."""
        with _SPENDING:  # one splice per layout, whichever thread asks first
            if self.spent:
                return None
            domains, clusters = self.domains, self.clusters
            port = routes.vhost_key(spec)
            removing: list[int] = []
            adding: list[tuple[str, Route, VirtualHostBytes]] = []
            for name, route in changed.items():  # first everything that can refuse the splice
                at = bisect_left(self.routes, name, key=_name)
                if at < len(self.routes) and self.routes[at].name == name:
                    removing.append(at)
                if route is None:
                    continue
                key = (id(route), port)
                found = cache.get(key) or earlier.get(key)
                if found is None or found[0] is not route:
                    own = tuple(routes.domains(route.hosts, spec.port))
                    found = (route, own, b"", frozenset(), 0)
                adding.append((name, route, found))
            gone = {domain for at in removing for domain in self.claims[at][0]}
            claimed: set[str] = set()
            for _, _, found in adding:
                for domain in found[1]:
                    if (domain in domains and domain not in gone) or domain in claimed:
                        return None  # claimed twice: `route_configuration_resource` decides
                    claimed.add(domain)
            self.spent = True
        served, filters = list(self.routes), list(self.inputs)
        segments, claims, hashes = list(self.segments), list(self.claims), list(self.hashes)
        total, count = self.total, self.count
        dropped: set[str] = set()  # clusters no virtual host names any more, then again
        fresh: set[str] = set()
        for at in sorted(removing, reverse=True):
            own, named = claims[at]
            for domain in own:
                _less(domains, domain)
            for cluster in named:
                if _less(clusters, cluster):
                    dropped.add(cluster)
            total -= hashes[at]
            count -= bool(segments[at])
            del served[at], filters[at], segments[at], claims[at], hashes[at]
        for name, route, found in adding:
            key = (id(route), port)
            if found[1] and not found[2]:  # not serialized yet (cache entries always are)
                vhost = routes.virtual_host(route, spec.port, set(), routes.scheme_of(spec))
                assert vhost is not None
                found = routes.serialized_virtual_host(route, found[1], vhost)
            at = bisect_left(served, name, key=_name)
            served.insert(at, route)
            filters.insert(at, inputs(route))
            if found[1]:
                cache[key] = found
                segments.insert(at, _field(found[2]))
                count += 1
            else:
                segments.insert(at, b"")
            claims.insert(at, (found[1], found[3]))
            hashes.insert(at, found[4])
            total += found[4]
            for domain in found[1]:
                domains[domain] = 1
            for cluster in found[3]:
                seen = clusters.get(cluster, 0)
                clusters[cluster] = seen + 1
                if not seen:
                    fresh.add(cluster)
        # The same names (a weight edited, say): the same set, not one made again.
        cluster_set = self.cluster_set if dropped == fresh else frozenset(clusters)
        return ConfigLayout(tuple(served), tuple(filters), tuple(segments), tuple(claims),
                            tuple(hashes), domains, clusters, cluster_set, total, count)

    def resource(self, gateway: Gateway, spec: GatewayListener) -> Resource:
        """The RouteConfiguration: what `route_configuration_resource` gives for `routes`."""
        name = names.route_config(gateway.name, spec.name)
        head = routes._length_delimited(1, name.encode("utf-8")) if name else b""
        body = b"".join((head, *self.segments, routes._IGNORE_PORT_IN_HOST_MATCHING))
        return Resource(types.ROUTE, name, body, References(clusters=self.cluster_set),
                        routes.config_version(head, self.total, self.count, len(body)))


def _field(vhost: bytes) -> bytes:
    return routes._length_delimited(2, vhost)


def _less(counts: dict[str, int], key: str) -> bool:
    """One fewer of `key`; whether that was the last."""
    counts[key] -= 1
    if counts[key]:
        return False
    del counts[key]
    return True
