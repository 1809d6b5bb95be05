"""Upstreams: each service's clusters and endpoints, built once per Translation and shared by
every view (gateways and sidecars) that sends to them.

This module owns the cluster of a whole service or a subset (with the mesh's mTLS origination),
its ClusterLoadAssignment for EDS clusters, the CA Secret of a service with upstream TLS, and
the endpoints discovered at run time (meshpilot.discovery), added to the policy's. A change of
discovered endpoints (`with_endpoints`) rebuilds only the affected services' clusters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from meshpilot.base import types
from meshpilot.ir.model import Endpoint, Model, Service
from meshpilot.translators import clusters, endpoints, failover, mtls, names, secrets
from meshpilot.translators.reuse import NOTHING, BuiltCluster, Earlier
from meshpilot.xds.resources import Resource

Discovered = Mapping[str, tuple[Endpoint, ...]]


class Upstreams:
    """The clusters of one model. `resources` may be called from several threads: two racing
    on the same cluster build equal bytes, and either result is kept."""

    def __init__(self, model: Model, discovered: Discovered, trust: mtls.TrustDomain,
                 earlier: Earlier = NOTHING):
        self.model = model
        self.discovered: dict[str, tuple[Endpoint, ...]] = dict(discovered)
        self.trust = trust
        self._earlier = earlier
        self._built: dict[str, BuiltCluster] = {}  # by cluster name
        self._ca_secrets: dict[str, tuple[Resource, ...]] = {}  # by service

    @property
    def built(self) -> Mapping[str, BuiltCluster]:
        """What was built so far, by cluster name (what the next Translation may reuse)."""
        return self._built

    def service(self, name: str) -> Service | None:
        """The policy's Service with its discovered endpoints added (an address already written
        in the policy is not added twice). Discovered endpoints are IPs, so they never change a
        service's cluster type; a service with none at all still gets its (EDS) cluster."""
        service = self.model.service(name)
        found = self.discovered.get(name)
        if service is None or not found:
            return service
        static = {(e.host, e.port) for e in service.endpoints}
        extra = tuple(e for e in found if (e.host, e.port) not in static)
        return replace(service, endpoints=service.endpoints + extra) if extra else service

    def resources(self, service_name: str, subset: str | None) -> tuple[Resource, ...]:
        """The cluster (and, for EDS, its assignment) of a service or subset, built once."""
        name = names.cluster(service_name, subset)
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
                if self.discovered.get(s, ()) != discovered.get(s, ())}

    def with_endpoints(self, discovered: Discovered) -> Upstreams:
        """These upstreams with other discovered endpoints: every cluster of an unaffected
        service is kept, the affected ones are built again on first use."""
        changed = self.changed_services(discovered)
        new = Upstreams(self.model, discovered, self.trust, self._earlier)
        new._built = {name: built for name, built in self._built.items()
                      if names.service_of_cluster(name, changed.__contains__) not in changed}
        new._ca_secrets = self._ca_secrets  # CA files do not depend on endpoints
        return new


def translate_cluster(service: Service | None, subset: str | None,
                      trust: mtls.TrustDomain) -> tuple[Resource, ...]:
    # The loader rejects a backend naming an unknown service or subset; if one got through
    # anyway, sending no cluster (Envoy answers 503) beats a subset cluster holding every
    # endpoint of the service.
    if service is None or (subset is not None and service.subset(subset) is None):
        return ()
    cluster = mtls.secure_cluster(clusters.cluster(service, subset), service, trust, subset)
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
        assignment = endpoints.load_assignment(names.eds_service(cluster.name),
                                               service.endpoints_of(subset),
                                               dict(service.zone_weights))
        built.append(Resource.from_message(types.ENDPOINT, assignment.cluster_name, assignment))
    return tuple(built)
