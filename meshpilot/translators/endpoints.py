"""Endpoints: the ClusterLoadAssignment of a service's (or a subset's) endpoints.

This module owns how the model's endpoints become Envoy `LbEndpoint`s: address, load-balancing
weight and labels as endpoint metadata, in a deterministic order. EDS clusters are sent the
assignment over ADS; DNS clusters carry it inline as their `load_assignment` (`clusters.py`
decides which). It must not decide which endpoints belong to a cluster (the model's
`Service.endpoints_of` does) nor which view receives them (the views do; `upstreams.py` builds
them once for all).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.core.v3.base_pb2 import Locality as EnvoyLocality
from envoy.config.core.v3.base_pb2 import Metadata
from envoy.config.endpoint.v3.endpoint_components_pb2 import (
    Endpoint as EnvoyEndpoint,
)
from envoy.config.endpoint.v3.endpoint_components_pb2 import (
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from google.protobuf.struct_pb2 import Struct
from google.protobuf.wrappers_pb2 import UInt32Value

from meshpilot.ir.model import Endpoint, Locality

# The filter_metadata namespace endpoint labels are published under: subset load balancing and
# access logs can select on them, and config dumps show where an endpoint's labels came from.
METADATA_NAMESPACE = "meshpilot"


def load_assignment(cluster_name: str, endpoints: Iterable[Endpoint],
                    zone_weights: Mapping[str, int] | None = None,
                    locality_weights: Mapping[Locality, int] | None = None
                    ) -> ClusterLoadAssignment:
    """`endpoints` grouped into one `LocalityLbEndpoints` per (priority, region, zone,
    subzone), groups and endpoints sorted so that the same endpoints written in another order
    give the same bytes and version. Endpoints without a locality or priority share one group,
    as before localities existed: a policy that does not use them gets the same bytes.
    `locality_weights`: each locality's weight (a caller's `distribute`, `locality.py`), in
    place of `zone_weights`."""
    groups: dict[tuple[int, str, str, str], list[Endpoint]] = {}
    for endpoint in endpoints:
        key = (endpoint.priority, endpoint.region or "", endpoint.zone or "",
               endpoint.sub_zone or "")
        groups.setdefault(key, []).append(endpoint)
    assignment = ClusterLoadAssignment(cluster_name=cluster_name)
    # An empty locality is noise in config dumps; no endpoints is no locality.
    for (priority, region, zone, sub_zone), members in sorted(groups.items()):
        group = LocalityLbEndpoints(
            lb_endpoints=[lb_endpoint(e) for e in sorted(members, key=_endpoint_order)],
            priority=priority)
        if region or zone or sub_zone:
            group.locality.CopyFrom(EnvoyLocality(region=region, zone=zone, sub_zone=sub_zone))
        if locality_weights is not None:
            weight = locality_weights.get(Locality(region, zone, sub_zone), 0)
            group.load_balancing_weight.CopyFrom(UInt32Value(value=weight))
        elif zone_weights:
            # Locality-weighted balancing: a locality's share is its weight over the sum of the
            # weights of the healthy localities of the same priority (the loader requires a
            # weight for every zone in use, as Envoy sends nothing to an unweighted locality).
            group.load_balancing_weight.CopyFrom(UInt32Value(value=zone_weights.get(zone, 0)))
        assignment.endpoints.append(group)
    return assignment


def lb_endpoint(endpoint: Endpoint) -> LbEndpoint:
    address = Address(socket_address=SocketAddress(address=endpoint.host,
                                                   port_value=endpoint.port))
    result = LbEndpoint(endpoint=EnvoyEndpoint(address=address))
    if endpoint.weight is not None:
        result.load_balancing_weight.CopyFrom(UInt32Value(value=endpoint.weight))
    if endpoint.labels:
        result.metadata.CopyFrom(_labels_metadata(endpoint))
    if endpoint.mtls_identity is not None:
        # A mesh workload: the cluster's transport socket match for mTLS picks it (mtls.py).
        result.metadata.filter_metadata[TRANSPORT_SOCKET_MATCH].update(MESH_WORKLOAD)
    return result


# Envoy's namespace for choosing a cluster's transport socket per endpoint, and what marks an
# endpoint whose workload speaks mesh mTLS (Istio's tlsMode label, as its Pilot does).
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"
MESH_WORKLOAD = {"tlsMode": "istio"}


def _labels_metadata(endpoint: Endpoint) -> Metadata:
    labels = Struct()
    labels.update(dict(endpoint.labels))
    metadata = Metadata()
    metadata.filter_metadata[METADATA_NAMESPACE].CopyFrom(labels)
    return metadata


def _endpoint_order(endpoint: Endpoint) -> tuple[str, int, tuple[tuple[str, str], ...], int]:
    return endpoint.host, endpoint.port, endpoint.labels, endpoint.weight or 0
