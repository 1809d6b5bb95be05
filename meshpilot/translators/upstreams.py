"""Upstreams: each service's clusters and endpoints, built once per Translation and shared by
every view (gateways and sidecars) that sends to them.

This module owns the cluster of a whole service or a subset (with the mesh's mTLS origination),
its ClusterLoadAssignment for EDS clusters, the CA Secret of a service with upstream TLS, and
the endpoints discovered at run time (meshpilot.discovery), added to the policy's. A change of
discovered endpoints (`with_endpoints`) rebuilds only the affected services' clusters, and of
those only the assignments when it can: patched by the endpoints that came and went
(`assignments.py`), the cluster kept, so a registration costs the same whatever the size of
its Service.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TypeVar

from meshpilot.base import types
from meshpilot.ir.discovered import DiscoveredEndpoints
from meshpilot.ir.model import Endpoint, Model, Service
from meshpilot.translators import (
    assignments,
    clusters,
    endpoints,
    failover,
    locality,
    mtls,
    names,
    secrets,
)
from meshpilot.translators.assignments import Assignment
from meshpilot.translators.reuse import NOTHING, BuiltCluster, Earlier
from meshpilot.xds.resources import Resource

Discovered = Mapping[str, tuple[Endpoint, ...]]


class Upstreams:
    """The clusters of one model. `resources` may be called from several threads: two racing
    on the same cluster build equal bytes, and either result is kept."""

    def __init__(self, model: Model, discovered: Discovered, trust: mtls.TrustDomain,
                 earlier: Earlier = NOTHING, keep_except: Iterable[Service] | None = None):
        """`keep_except`: take every cluster and CA Secret `earlier` built, except those of
        these Services (the changed ones, before and after the change): the patch path, which
        builds only what changed and must still lend everything to the Translation after it."""
        self.model = model
        self.discovered: dict[str, tuple[Endpoint, ...]] = dict(discovered)
        self.trust = trust
        self._earlier = earlier
        self._built: dict[str, BuiltCluster] = {}  # by cluster name
        self._ca_secrets: dict[str, tuple[Resource, ...]] = {}  # by service
        # Patchable forms of built assignments, by cluster name (made on a first patch).
        self._assignments: dict[str, Assignment] = {}
        self._services: dict[str, Service | None] = {}  # service(): made once per name
        # Clusters of services balanced by the caller's locality, by (cluster, caller).
        self._localized: dict[tuple[str, object], BuiltCluster] = {}
        if keep_except is not None:
            self._built = _copied(earlier.clusters)
            self._ca_secrets = _copied(earlier.ca_secrets)
            changed = set()
            for service in keep_except:
                for name in cluster_names(service):
                    self._built.pop(name, None)
                    changed.add(name)
                self._ca_secrets.pop(service.name, None)
            self._localized = {key: built for key, built in earlier.localized.items()
                               if key[0] not in changed}

    @property
    def ca_secrets_built(self) -> Mapping[str, tuple[Resource, ...]]:
        return self._ca_secrets

    @property
    def localized_built(self) -> Mapping[tuple[str, object], BuiltCluster]:
        """The clusters built for callers' localities, by (cluster, caller)."""
        return self._localized

    @property
    def built(self) -> Mapping[str, BuiltCluster]:
        """What was built so far, by cluster name (what the next Translation may reuse)."""
        return self._built

    def service(self, name: str) -> Service | None:
        """The policy's Service with its discovered endpoints added (an address already written
        in the policy is not added twice). Discovered endpoints are IPs, so they never change a
        service's cluster type; a service with none at all still gets its (EDS) cluster."""
        if name in self._services:
            return self._services[name]
        service = self.model.service(name)
        found = self.discovered.get(name)
        if service is not None and found:
            extra = _not_at(found, service.endpoints)
            if extra:  # a subset with a traffic policy of its own (Istio) gets them too
                service = replace(service, endpoints=service.endpoints + extra,
                                  subset_services=tuple(
                                      (n, replace(s, endpoints=s.endpoints + extra))
                                      for n, s in service.subset_services))
        self._services[name] = service
        return service

    def resources(self, service_name: str, subset: str | None,
                  caller: locality.Caller | None = None) -> tuple[Resource, ...]:
        """The cluster (and, for EDS, its assignment) of a service or subset, built once; for
        a calling sidecar (`caller`), once per caller alike when the service balances by the
        caller's locality (`Service.locality_lb`), else the one shared by every view."""
        name = names.cluster(service_name, subset)
        if caller is not None:
            service = self.service(service_name)
            if service is not None and service.locality_lb is not None:
                caller = locality.relevant(caller, service.locality_lb)
                key = (name, caller)
                localized = self._localized.get(key)
                if localized is None:
                    built = self._earlier.localized_cluster(key, service)
                    if built is None:
                        built = translate_cluster(service, subset, self.trust, caller)
                    localized = self._localized[key] = BuiltCluster(service, built)
                return localized.resources
        found = self._built.get(name)
        if found is None:
            service = self.service(service_name)
            built = self._earlier.cluster(name, service)
            if built is None:
                built = translate_cluster(service, subset, self.trust)
            found = self._built[name] = BuiltCluster(service, built)
        return found.resources

    def release_earlier(self) -> None:
        """Reuse nothing more from the previous Translation (`Translation.release_earlier`)."""
        self._earlier = NOTHING

    def ca_secrets(self, resources: Iterable[Resource]) -> list[Resource]:
        """The CA Secret of each service with upstream TLS that one of `resources`' clusters
        belongs to, built once per service."""
        return secrets.cluster_secret_resources(list(resources), self.model, self._ca_secrets)

    def changed_services(self, discovered: Discovered) -> set[str]:
        return {s for s in set(self.discovered) | set(discovered)
                if not _same(self.discovered.get(s, ()), discovered.get(s, ()))}

    def with_endpoints(self, discovered: Discovered) -> Upstreams:
        """These upstreams with other discovered endpoints: every cluster of an unaffected
        service is kept; of an affected one, the cluster is kept and its assignment patched
        where that gives what a new build would (`_patched`), else both are built again on
        first use."""
        changed = self.changed_services(discovered)
        new = Upstreams(self.model, discovered, self.trust, self._earlier)
        # A caller's localized cluster of an unaffected service is kept; of an affected one,
        # built again on first use (its endpoints' ranks may move).
        new._localized = {key: built for key, built in self._localized.items()
                          if names.service_of_cluster(key[0], changed.__contains__)
                          not in changed}
        for name, built in self._built.items():
            service = names.service_of_cluster(name, changed.__contains__)
            if service not in changed:
                new._built[name] = built
                if name in self._assignments:
                    new._assignments[name] = self._assignments[name]
                continue
            patched = self._patched(new, name, service, built)
            if patched is not None:
                new._built[name], new._assignments[name] = patched
        new._ca_secrets = self._ca_secrets  # CA files do not depend on endpoints
        return new

    def _patched(self, new: Upstreams, name: str, service_name: str, built: BuiltCluster
                 ) -> tuple[BuiltCluster, Assignment] | None:
        """The cluster `name` of `service_name` for `new`'s discovered endpoints, from what was
        built for ours: the same cluster, the assignment patched by the endpoints that came and
        went. None (build it anew) unless that is sure to equal a new build: an EDS cluster
        whose assignment is its only other resource, endpoints whose history says what changed
        (`ir/discovered.py`), and discovered endpoints in the cluster before and after (whether
        there are any is what a cluster's mTLS setting reads of them, `mtls.secure_cluster`)."""
        policy = self.model.service(service_name)
        before = self.discovered.get(service_name)
        after = new.discovered.get(service_name)
        if policy is None or built.service is None or not before or \
                not isinstance(after, DiscoveredEndpoints):
            return None
        resources = built.resources
        if len(resources) != 2 or resources[0].type_url != types.CLUSTER or \
                resources[1].type_url != types.ENDPOINT:
            return None
        changes = after.changes_since(before)
        if changes is None:
            return None
        assignment = self._assignments.get(name)
        if assignment is None:
            subset = None if name == service_name else name[len(service_name) + 1:]
            assignment = Assignment.of(built.service, subset, policy.endpoints, resources[1])
            if assignment is None:
                return None
        patched = assignment.patched(changes)
        if patched is None or (patched.discovered > 0) != (assignment.discovered > 0):
            return None
        return BuiltCluster(new.service(service_name), (resources[0], patched.resource)), patched


def _same(old: tuple[Endpoint, ...], now: tuple[Endpoint, ...]) -> bool:
    """Whether two tuples of a service's discovered endpoints hold the same. Two versions of
    one history differ by what changed between them: told without comparing the tuples item
    by item (a tuple comparison walks to the first difference, anywhere in 2,000 endpoints)."""
    if old is now:
        return True
    if len(old) != len(now):
        return False
    if isinstance(old, DiscoveredEndpoints) and isinstance(now, DiscoveredEndpoints) and \
            old.history is not None and old.history is now.history:
        changes = now.changes_since(old)
        if changes == []:
            return True
    return old == now


def _address(endpoint: Endpoint) -> tuple[str, int]:
    return endpoint.host, endpoint.port


def _not_at(found: tuple[Endpoint, ...], policy: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """The discovered endpoints `found` at none of the addresses of the policy's `policy`
    (an address the policy writes is not added twice). The registry's tuples are sorted by
    address, one endpoint each: a binary search per policy endpoint then, not a pass over
    every discovered one."""
    if not policy:
        return found
    if isinstance(found, DiscoveredEndpoints):
        drop = set()
        for address in {_address(e) for e in policy}:
            at = bisect.bisect_left(found, address, key=_address)
            if at < len(found) and _address(found[at]) == address:
                drop.add(at)
        if not drop:
            return found
        return tuple(e for i, e in enumerate(found) if i not in drop)
    static = {_address(e) for e in policy}
    return tuple(e for e in found if _address(e) not in static)


def cluster_names(service: Service) -> list[str]:
    """The name of every cluster `translate_cluster` may build for a Service or its subsets."""
    return [names.cluster(service.name), names.failover_primary(service.name),
            *(names.cluster(service.name, subset) for subset, _ in service.subsets)]


def translate_cluster(service: Service | None, subset: str | None,
                      trust: mtls.TrustDomain, caller: locality.Caller | None = None
                      ) -> tuple[Resource, ...]:
    """The cluster of `service` (or `subset`) and its EDS assignment; for `caller` (a calling
    sidecar), with the endpoints its locality gives them (`Service.locality_lb`)."""
    # The loader rejects a backend naming an unknown service or subset; if one got through
    # anyway, sending no cluster (Envoy answers 503) beats a subset cluster holding every
    # endpoint of the service.
    if service is None or (subset is not None and service.subset(subset) is None):
        return ()
    whole = service
    service = service.for_subset(subset)  # a subset's own settings (Istio's subset policy)
    weights = None
    localized = caller is not None and service.locality_lb is not None
    if localized:
        # The cluster's endpoints as this caller sees them: priorities (and shares) are per
        # cluster, numbered without gaps, so only this subset's endpoints are ranked.
        members, weights = locality.localized(service.endpoints_of(subset),
                                              service.locality_lb, caller)
        service = replace(service, endpoints=members)
    owner = names.cluster(whole.name, subset) if service.tls != whole.tls else None
    cluster = mtls.secure_cluster(clusters.cluster(service, subset, owner, weights), service,
                                  trust, subset)
    built = []
    if subset is None and service.failover:
        # Its own endpoints under another name; its name goes to the aggregate (failover.py).
        aggregate = failover.aggregate(service)
        built.append(Resource.from_message(types.CLUSTER, aggregate.name, aggregate))
        cluster.name = names.failover_primary(service.name)
        if cluster.HasField("eds_cluster_config"):
            cluster.eds_cluster_config.service_name = names.eds_service(cluster.name)
        else:
            cluster.load_assignment.cluster_name = cluster.name
    built.append(Resource.from_message(types.CLUSTER, cluster.name, cluster))
    if not clusters.uses_dns(service):
        members = service.endpoints_of(subset)
        assignment = endpoints.load_assignment(names.eds_service(cluster.name), members,
                                               dict(service.zone_weights), weights)
        resource = Resource.from_message(types.ENDPOINT, assignment.cluster_name, assignment)
        if not localized and len(members) >= assignments.VERSIONED_BY_PARTS:
            # A large assignment is versioned as its patches will be (`assignments.py`); one
            # ranked for a caller's locality is not patched: its bytes' hash.
            resource = assignments.versioned(resource, whole, subset)
        built.append(resource)
    return tuple(built)


_K = TypeVar("_K")
_V = TypeVar("_V")


def _copied(found: Mapping[_K, _V]) -> dict[_K, _V]:
    """A copy of `found`. `dict.copy()` clones a dict's table in one piece while few of its
    entries were deleted, where `dict(found)` inserts every entry again as soon as one was
    (a patch deletes the changed Services' clusters, so it always was)."""
    return found.copy() if isinstance(found, dict) else dict(found)
