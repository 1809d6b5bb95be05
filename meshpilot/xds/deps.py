"""What a resource names: the clusters, route configurations and secrets it depends on.

The stream state machine uses this for make-before-break: a cluster is withdrawn from an Envoy only
once no route or listener that Envoy holds still names it, and a changed cluster gets its endpoints
again. Computed once per resource when it is built, never per stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from google.protobuf import any_pb2, symbol_database
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from meshpilot.base import types

_ROUTE_ACTION = "envoy.config.route.v3.RouteAction"
_TCP_PROXY = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_RDS = "envoy.extensions.filters.network.http_connection_manager.v3.Rds"
_SDS_SECRET_CONFIG = "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig"
_EDS_TYPE = 3  # envoy.config.cluster.v3.Cluster.DiscoveryType.EDS


@dataclass(frozen=True, slots=True)
class References:
    clusters: frozenset[str] = frozenset()
    routes: frozenset[str] = frozenset()
    secrets: frozenset[str] = frozenset()
    eds_name: str | None = None  # for an EDS cluster: the ClusterLoadAssignment it waits for


NONE = References()


def is_repeated(field: FieldDescriptor) -> bool:
    # protobuf 7 removed FieldDescriptor.label; `is_repeated` replaces it (older releases lack it).
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def _messages(message: Message) -> Iterator[Message]:
    """Every message nested in `message`, itself included, looking inside typed `Any` fields."""
    stack = [message]
    while stack:
        current = stack.pop()
        if current.DESCRIPTOR.full_name == "google.protobuf.Any":
            unpacked = _unpack(current)  # type: ignore[arg-type]
            if unpacked is not None:
                stack.append(unpacked)
            continue
        yield current
        for field, value in current.ListFields():
            if field.type != FieldDescriptor.TYPE_MESSAGE:
                continue
            if field.message_type.GetOptions().map_entry:
                stack.extend(v for v in value.values() if isinstance(v, Message))
            elif is_repeated(field):
                stack.extend(value)
            else:
                stack.append(value)


def _unpack(packed: any_pb2.Any) -> Message | None:
    name = packed.type_url.rsplit("/", 1)[-1]
    try:
        cls = symbol_database.Default().GetSymbol(name)
    except KeyError:
        return None  # a type we have no schema for names nothing we can follow
    message = cls()
    try:
        message.ParseFromString(packed.value)
    except DecodeError:
        return None
    return message


def _collect(message: Message, visit: Callable[[str, Message], None]) -> None:
    for nested in _messages(message):
        visit(nested.DESCRIPTOR.full_name, nested)


def _cluster_refs(cluster: Message) -> References:
    secrets: set[str] = set()

    def visit(full_name: str, m: Message) -> None:
        if full_name == _SDS_SECRET_CONFIG and m.name:  # type: ignore[attr-defined]
            secrets.add(m.name)  # type: ignore[attr-defined]

    if cluster.HasField("transport_socket"):  # type: ignore[attr-defined]
        _collect(cluster.transport_socket, visit)  # type: ignore[attr-defined]
    for match in cluster.transport_socket_matches:  # type: ignore[attr-defined]
        _collect(match, visit)
    eds_name = None
    if cluster.type == _EDS_TYPE:  # type: ignore[attr-defined]
        eds_name = cluster.eds_cluster_config.service_name or cluster.name  # type: ignore[attr-defined]
    return References(secrets=frozenset(secrets), eds_name=eds_name)


def _route_action_clusters(action: Message, into: set[str]) -> None:
    if action.cluster:  # type: ignore[attr-defined]
        into.add(action.cluster)  # type: ignore[attr-defined]
    for weighted in action.weighted_clusters.clusters:  # type: ignore[attr-defined]
        into.add(weighted.name)
    for mirror in action.request_mirror_policies:  # type: ignore[attr-defined]
        if mirror.cluster:
            into.add(mirror.cluster)


def _route_config_refs(config: Message) -> References:
    clusters: set[str] = set()
    for vhost in config.virtual_hosts:  # type: ignore[attr-defined]
        for route in vhost.routes:
            if route.HasField("route"):
                _route_action_clusters(route.route, clusters)
    return References(clusters=frozenset(clusters))


def _listener_refs(listener: Message) -> References:
    clusters: set[str] = set()
    routes: set[str] = set()
    secrets: set[str] = set()

    def visit(full_name: str, m: Message) -> None:
        if full_name == _ROUTE_ACTION:
            _route_action_clusters(m, clusters)
        elif full_name == _TCP_PROXY:
            if m.cluster:  # type: ignore[attr-defined]
                clusters.add(m.cluster)  # type: ignore[attr-defined]
            clusters.update(w.name for w in m.weighted_clusters.clusters)  # type: ignore[attr-defined]
        elif full_name == _RDS and m.route_config_name:  # type: ignore[attr-defined]
            routes.add(m.route_config_name)  # type: ignore[attr-defined]
        elif full_name == _SDS_SECRET_CONFIG and m.name:  # type: ignore[attr-defined]
            secrets.add(m.name)  # type: ignore[attr-defined]

    _collect(listener, visit)
    return References(clusters=frozenset(clusters), routes=frozenset(routes),
                      secrets=frozenset(secrets))


_EXTRACTORS: dict[str, Callable[[Message], References]] = {
    types.CLUSTER: _cluster_refs,
    types.ROUTE: _route_config_refs,
    types.LISTENER: _listener_refs,
}


def references_of(type_url: str, message: Message) -> References:
    extract = _EXTRACTORS.get(type_url)
    return extract(message) if extract else NONE
