"""Failover to other Services: a Service's `failover`, as an Envoy aggregate cluster.

The cluster named like the Service (what Routes and callers send to) becomes an aggregate of
the Service's own endpoints (cluster `<service>|primary`, everything the Service says: health
checks, outlier detection, TLS, mTLS) and of each failover target's cluster, in order. Envoy
sends to the first that has healthy endpoints, by the priority levels of the clusters it
aggregates: traffic moves to the next only as the previous loses healthy hosts (health checks,
outlier detection, or no endpoints at all), and back when they recover. Subset clusters do not
fail over.

`with_targets` adds each target's cluster to a view that holds the Service's cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.extensions.clusters.aggregate.v3.cluster_pb2 import ClusterConfig

from meshpilot.ir.model import Model, Service
from meshpilot.translators import names
from meshpilot.translators.protos import duration, pack

AGGREGATE = "envoy.clusters.aggregate"


def aggregate(service: Service) -> Cluster:
    """The Service's cluster: its own endpoints first, then each target's cluster."""
    config = ClusterConfig(clusters=[names.failover_primary(service.name),
                                     *(names.cluster(target) for target in service.failover)])
    cluster = Cluster(name=names.cluster(service.name),
                      connect_timeout=duration(service.connect_timeout),
                      lb_policy=Cluster.CLUSTER_PROVIDED)
    cluster.cluster_type.name = AGGREGATE
    cluster.cluster_type.typed_config.CopyFrom(pack(config))
    return cluster


def with_targets(model: Model,
                 backends: Iterable[tuple[str, str | None]]) -> Iterator[tuple[str, str | None]]:
    """`backends` (service, subset), each once, with the failover targets of every whole
    Service among them added after it."""
    seen: set[tuple[str, str | None]] = set()
    for key in backends:
        if key in seen:
            continue
        seen.add(key)
        yield key
        service = model.service(key[0]) if key[1] is None else None
        for target in service.failover if service is not None else ():
            if (target, None) not in seen:
                seen.add((target, None))
                yield target, None
