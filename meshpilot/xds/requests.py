"""Delta discovery requests decoded once however many streams send the same one.

In a reconnect storm thousands of Envoys of one view resume at once, each with a first request
that claims what it holds (`initial_resource_versions`: a name and a version per resource, two
thousand entries for a thousand clusters and their endpoints). Apart from the node, those
requests are often byte for byte the same. Parsing each, turning its map into a dict and
comparing it with the snapshot one entry at a time cost about three times what a SotW storm
costs (one version string per type).

`DeltaRequestDecoder` is the gRPC request deserializer of the delta services: a request that
carries `initial_resource_versions` is split into its node (field 1, which protobuf encoders
write first) and the rest; the rest is looked up in a small bounded memo by its bytes. On a hit
only the node is parsed, and the request shares the parsed rest, the claims as one interned
read-only dict and the subscribed names as one frozenset with every other stream that sent the
same bytes, so `ResourceMap.held_exactly` answers them all from one comparison. Anything else
(ACKs, subscription changes, a request whose node is not written first) is parsed as usual. The
memo is an optimisation only: a miss decodes the same request the slow way, so Envoys that write
the map in another order (each Envoy's own hash order) are served exactly as before.

It owns decoding only; what the stream does with a request is `xds/stream.py`'s.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from meshpilot.xds.resources import SharedClaims

_Request = discovery_pb2.DeltaDiscoveryRequest
_NODE_TAG = 0x0A  # field 1 (node), length-delimited
# Requests whose rest is shorter than this are parsed as usual: a memo lookup would cost more
# than it saves, and small requests (ACKs) differ by nonce anyway.
_MIN_SHARED = 512


class SharedDeltaRequest:
    """A DeltaDiscoveryRequest whose fields other than `node` are shared, read-only, with the
    other streams that sent the same bytes. It answers what `XdsStream` reads of a request."""

    __slots__ = ("_node", "_rest", "initial_resource_versions", "resource_names_subscribe",
                 "resource_names_unsubscribe")

    def __init__(self, node: Any, rest: _SharedRest):
        self._node = node
        self._rest = rest
        self.initial_resource_versions: Mapping[str, str] = rest.claims
        self.resource_names_subscribe: frozenset[str] = rest.subscribe
        self.resource_names_unsubscribe: frozenset[str] = rest.unsubscribe

    @property
    def node(self) -> Any:
        return self._node if self._node is not None else self._rest.message.node

    @property
    def type_url(self) -> str:
        return self._rest.message.type_url  # type: ignore[no-any-return]

    @property
    def response_nonce(self) -> str:
        return self._rest.message.response_nonce  # type: ignore[no-any-return]

    @property
    def error_detail(self) -> Any:
        return self._rest.message.error_detail

    def HasField(self, name: str) -> bool:
        if name == "node":
            return self._node is not None or self._rest.message.HasField("node")
        return self._rest.message.HasField(name)  # type: ignore[no-any-return]


class _SharedRest:
    __slots__ = ("claims", "message", "subscribe", "unsubscribe")

    def __init__(self, message: Any):
        self.message = message
        self.claims = SharedClaims(message.initial_resource_versions)
        self.subscribe = frozenset(message.resource_names_subscribe)
        self.unsubscribe = frozenset(message.resource_names_unsubscribe)


def _node_end(data: bytes) -> int:
    """Where the node field ends if the request starts with it, else 0."""
    if not data or data[0] != _NODE_TAG:
        return 0
    length, shift, pos = 0, 0, 1
    while pos < len(data) and shift < 35:
        byte = data[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            end = pos + length
            return end if end <= len(data) else 0
        shift += 7
    return 0


class DeltaRequestDecoder:
    """`decode(bytes)`: a DeltaDiscoveryRequest, or a `SharedDeltaRequest` for a resuming one
    whose bytes past the node another stream sent already. Bounded: at most `limit` distinct
    request bodies kept, the least recently used forgotten first. Used from the event loop's
    thread only (grpc.aio deserializes there)."""

    def __init__(self, limit: int = 32):
        self.limit = limit
        self._memo: OrderedDict[bytes, _SharedRest] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def decode(self, data: bytes) -> Any:
        end = _node_end(data)
        if len(data) - end < _MIN_SHARED:
            return _Request.FromString(data)
        rest_bytes = data[end:] if end else data
        rest = self._memo.get(rest_bytes)
        if rest is None:
            message = _Request.FromString(rest_bytes)
            if end and message.HasField("node"):
                return _Request.FromString(data)  # a node written twice: protobuf merges them
            if not message.initial_resource_versions:
                # Not a resume (a first subscription, say): this stream's own request.
                if end:
                    message.MergeFromString(data[:end])
                return message
            rest = _SharedRest(message)
            self._memo[rest_bytes] = rest
            if len(self._memo) > self.limit:
                self._memo.popitem(last=False)
            self.misses += 1
        else:
            self._memo.move_to_end(rest_bytes)
            self.hits += 1
        node = _Request.FromString(data[:end]).node if end else None
        return SharedDeltaRequest(node, rest)
