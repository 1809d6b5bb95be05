"""A ClusterLoadAssignment patched by discovered endpoints, instead of built from all of them.

`endpoints.load_assignment` builds an assignment from a service's endpoints: a protobuf message
per endpoint, sorted, serialized. For a Service that gains its 2,000th registered instance that
is 2,000 messages built for one new endpoint. An `Assignment` keeps, per cluster, each endpoint
of the default locality (priority 0, no region or zone: where every discovered endpoint goes)
as its encoded `lb_endpoints` entry, in `load_assignment`'s order, and the other localities
(the policy's own, which registrations never change) as encoded bytes. A change of discovered
endpoints (`ir/discovered.py`) is then a binary search and an insertion per endpoint, and the
assignment's bytes a concatenation: byte for byte what `load_assignment` makes of the same
endpoints (deterministic protobuf serialization writes fields in field-number order, which is
the order the bytes are joined in; the tests compare the two).

It owns that equivalence only; which endpoints a cluster has is still `upstreams.py`'s.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from meshpilot.base import types
from meshpilot.ir.discovered import ADDED, Change
from meshpilot.ir.model import Endpoint, Labels, Service
from meshpilot.translators import endpoints as endpoint_messages
from meshpilot.xds import wire
from meshpilot.xds.resources import Resource

_CLUSTER_NAME, _ENDPOINTS = 1, 2  # ClusterLoadAssignment
_LB_ENDPOINTS = 2  # LocalityLbEndpoints

_Key = tuple[str, int, Labels, int]


def _key(endpoint: Endpoint) -> _Key:
    return endpoint.host, endpoint.port, endpoint.labels, endpoint.weight or 0


def _entry(endpoint: Endpoint) -> bytes:
    """The endpoint as one encoded `lb_endpoints` entry of a LocalityLbEndpoints."""
    body = endpoint_messages.lb_endpoint(endpoint).SerializeToString(deterministic=True)
    return wire.length_delimited(_LB_ENDPOINTS, body)


def _in_default_locality(endpoint: Endpoint) -> bool:
    return endpoint.priority == 0 and not endpoint.region and not endpoint.zone \
        and not endpoint.sub_zone


class Assignment:
    """The assignment of one cluster of a service (or subset), patchable by discovered
    endpoints. Immutable: `patched` returns a new one (the old one may still be serving)."""

    __slots__ = ("_entries", "_keys", "_other", "discovered", "name", "resource", "selector",
                 "static_addresses")

    def __init__(self, name: str, selector: Labels, static_addresses: frozenset[tuple[str, int]],
                 keys: list[_Key], entries: list[bytes], other: bytes, discovered: int,
                 resource: Resource):
        self.name = name
        self.selector = selector
        self.static_addresses = static_addresses
        self._keys = keys
        self._entries = entries
        self._other = other
        self.discovered = discovered  # discovered endpoints in it
        self.resource = resource

    @classmethod
    def of(cls, service: Service, subset: str | None, policy_endpoints: Iterable[Endpoint],
           resource: Resource) -> Assignment | None:
        """The patchable form of `resource`, the assignment `upstreams.translate_cluster` built
        for `service` (the policy's Service with its discovered endpoints added: those at none
        of `policy_endpoints`' addresses) and `subset`; None where patching does not apply
        (localities weighted by zone, a negative priority)."""
        if service.zone_weights or any(e.priority < 0 for e in service.endpoints):
            return None
        selector = service.subset(subset) or () if subset is not None else ()
        members = service.endpoints_of(subset)
        default = sorted((e for e in members if _in_default_locality(e)), key=_key)
        others = [e for e in members if not _in_default_locality(e)]
        other = b""
        if others:
            rest = endpoint_messages.load_assignment("", others)
            other = rest.SerializeToString(deterministic=True)
        static = frozenset((e.host, e.port) for e in policy_endpoints)
        count = sum(1 for e in members if (e.host, e.port) not in static)
        made = cls(resource.name, selector, static, [_key(e) for e in default],
                   [_entry(e) for e in default], other, count, resource)
        # Only ever used if it says exactly what the full translation said.
        return made if made.body() == resource.body else None

    def body(self) -> bytes:
        out = [wire.string_field(_CLUSTER_NAME, self.name)] if self.name else []
        if self._entries:
            out.append(wire.length_delimited(_ENDPOINTS, b"".join(self._entries)))
        out.append(self._other)
        return b"".join(out)

    def patched(self, changes: Iterable[Change]) -> Assignment | None:
        """This assignment after `changes` of the service's discovered endpoints (self if none
        concerns it); None if one cannot be applied (the caller then builds it anew)."""
        keys: list[_Key] | None = None
        entries: list[bytes] = self._entries
        count = self.discovered
        for kind, endpoint in changes:
            if (endpoint.host, endpoint.port) in self.static_addresses or \
                    not _matches(endpoint, self.selector):
                continue  # the policy's own endpoint at that address wins; or another subset's
            if not _in_default_locality(endpoint):
                return None
            if keys is None:
                keys, entries = list(self._keys), list(self._entries)
            key, entry = _key(endpoint), _entry(endpoint)
            if kind == ADDED:
                at = bisect.bisect_right(keys, key)
                keys.insert(at, key)
                entries.insert(at, entry)
                count += 1
            else:
                at = bisect.bisect_left(keys, key)
                while at < len(keys) and keys[at] == key and entries[at] != entry:
                    at += 1
                if at == len(keys) or keys[at] != key:
                    return None
                del keys[at], entries[at]
                count -= 1
        if keys is None:
            return self
        made = Assignment(self.name, self.selector, self.static_addresses, keys, entries,
                          self._other, count, self.resource)
        made.resource = Resource(types.ENDPOINT, self.name, made.body(), self.resource.refs)
        return made


def _matches(endpoint: Endpoint, selector: Labels) -> bool:
    return all(kv in endpoint.labels for kv in selector)


def full_bytes(name: str, endpoints: Iterable[Endpoint]) -> bytes:
    """What `endpoints.load_assignment` encodes (for tests and checks)."""
    message: ClusterLoadAssignment = endpoint_messages.load_assignment(name, endpoints)
    return message.SerializeToString(deterministic=True)
