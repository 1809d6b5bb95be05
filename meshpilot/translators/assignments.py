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

A large assignment's version is made from its parts, not by hashing its bytes: with at least
`VERSIONED_BY_PARTS` endpoints in the default locality, it is the hash of the cluster name, the
other localities' bytes and the sum (modulo 2**64) of one 64-bit hash per endpoint entry, so a
patch re-hashes the entries that came and went instead of the whole ~60 kB body at every
registration. It is still a function of the content alone: the cold translation versions the
same content the same way (`versioned`, called by `upstreams.translate_cluster`), so a patched
assignment, a cold one and another replica's agree, and a reconnecting Envoy that holds it is
sent nothing. Smaller ones keep the hash of their bytes (`xds.resources.content_version`).

It owns that equivalence only; which endpoints a cluster has is still `upstreams.py`'s.
"""

from __future__ import annotations

import bisect
import hashlib
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
_MASK = (1 << 64) - 1
# From this many endpoints in the default locality on, an assignment is versioned by its parts
# (the module's docstring): below it, hashing the bytes costs less than hashing each entry.
VERSIONED_BY_PARTS = 64


def _key(endpoint: Endpoint) -> _Key:
    return endpoint.host, endpoint.port, endpoint.labels, endpoint.weight or 0


def _entry(endpoint: Endpoint) -> bytes:
    """The endpoint as one encoded `lb_endpoints` entry of a LocalityLbEndpoints."""
    body = endpoint_messages.lb_endpoint(endpoint).SerializeToString(deterministic=True)
    return wire.length_delimited(_LB_ENDPOINTS, body)


def _share(entry: bytes) -> int:
    """One entry's part of an assignment's version by parts."""
    return int.from_bytes(hashlib.blake2b(entry, digest_size=8).digest(), "big")


def _in_default_locality(endpoint: Endpoint) -> bool:
    return endpoint.priority == 0 and not endpoint.region and not endpoint.zone \
        and not endpoint.sub_zone


class Assignment:
    """The assignment of one cluster of a service (or subset), patchable by discovered
    endpoints. Immutable: `patched` returns a new one (the old one may still be serving)."""

    __slots__ = ("_entries", "_keys", "_other", "_other_digest", "_size", "_total", "discovered",
                 "name", "resource", "selector", "static_addresses")

    def __init__(self, name: str, selector: Labels, static_addresses: frozenset[tuple[str, int]],
                 keys: list[_Key], entries: list[bytes], other: bytes, discovered: int,
                 resource: Resource, *, total: int | None = None, size: int | None = None,
                 other_digest: bytes | None = None):
        self.name = name
        self.selector = selector
        self.static_addresses = static_addresses
        self._keys = keys
        self._entries = entries
        self._other = other
        # Kept as the entries change, so neither the version nor the body's length walks them.
        self._total = total if total is not None else sum(map(_share, entries)) & _MASK
        self._size = size if size is not None else sum(map(len, entries))
        self._other_digest = (other_digest if other_digest is not None
                              else hashlib.blake2b(other, digest_size=8).digest())
        self.discovered = discovered  # discovered endpoints in it
        self.resource = resource

    @classmethod
    def of(cls, service: Service, subset: str | None, policy_endpoints: Iterable[Endpoint],
           resource: Resource) -> Assignment | None:
        """The patchable form of `resource`, the assignment `upstreams.translate_cluster` built
        for `service` (the policy's Service with its discovered endpoints added: those at none
        of `policy_endpoints`' addresses) and `subset`; None where patching does not apply
        (localities weighted by zone, a negative priority)."""
        made = cls._build(service, subset, policy_endpoints, resource)
        # Only ever used if it says exactly what the full translation said, version and all.
        return made if made is not None and made.version() == resource.version else None

    @classmethod
    def _build(cls, service: Service, subset: str | None, policy_endpoints: Iterable[Endpoint],
               resource: Resource) -> Assignment | None:
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
        return made if made.body() == resource.body else None

    def body(self) -> bytes:
        # One join of every piece: the body is copied once, not once per enclosing field.
        out = [wire.string_field(_CLUSTER_NAME, self.name)] if self.name else []
        if self._entries:
            out.append(wire.varint((_ENDPOINTS << 3) | 2) + wire.varint(self._size))
            out.extend(self._entries)
        out.append(self._other)
        return b"".join(out)

    def version(self) -> str:
        """Its content version: by parts from `VERSIONED_BY_PARTS` entries on (the module's
        docstring), else the hash of its bytes."""
        if len(self._entries) < VERSIONED_BY_PARTS:
            return self.resource.version
        return parts_version(self.name, self._total, len(self._entries), self._other_digest)

    def patched(self, changes: Iterable[Change]) -> Assignment | None:
        """This assignment after `changes` of the service's discovered endpoints (self if none
        concerns it); None if one cannot be applied (the caller then builds it anew)."""
        keys: list[_Key] | None = None
        entries: list[bytes] = self._entries
        count = self.discovered
        total, size = self._total, self._size
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
                total += _share(entry)
                size += len(entry)
            else:
                at = bisect.bisect_left(keys, key)
                while at < len(keys) and keys[at] == key and entries[at] != entry:
                    at += 1
                if at == len(keys) or keys[at] != key:
                    return None
                total -= _share(entries[at])
                size -= len(entries[at])
                del keys[at], entries[at]
                count -= 1
        if keys is None:
            return self
        made = Assignment(self.name, self.selector, self.static_addresses, keys, entries,
                          self._other, count, self.resource, total=total & _MASK, size=size,
                          other_digest=self._other_digest)
        body = made.body()
        by_parts = (parts_version(self.name, made._total, len(entries), self._other_digest)
                    if len(entries) >= VERSIONED_BY_PARTS else None)
        made.resource = Resource(types.ENDPOINT, self.name, body, self.resource.refs,
                                 version=by_parts)
        return made


def parts_version(name: str, total: int, count: int, other_digest: bytes) -> str:
    """The version of an assignment by parts: its name, how many entries, their hashes' sum and
    the other localities' hash (a hash of 60 bytes, whatever the number of endpoints)."""
    return hashlib.blake2b(
        b"eds-parts\0" + name.encode() + b"\0" + count.to_bytes(8, "big")
        + total.to_bytes(8, "big") + other_digest, digest_size=8).hexdigest()


def versioned(resource: Resource, service: Service, subset: str | None) -> Resource:
    """`resource`, the assignment the cold translation built for `service` and `subset`, with
    the version a patch of it would have: by parts when it has `VERSIONED_BY_PARTS` endpoints
    or more in the default locality (and patching applies), else as it is."""
    members = service.endpoints_of(subset)
    if len(members) < VERSIONED_BY_PARTS or \
            sum(1 for e in members if _in_default_locality(e)) < VERSIONED_BY_PARTS:
        return resource  # (the count first: most Services have a few endpoints)
    made = Assignment._build(service, subset, (), resource)
    if made is None:
        return resource
    return Resource(types.ENDPOINT, resource.name, resource.body, resource.refs,
                    version=made.version())


def _matches(endpoint: Endpoint, selector: Labels) -> bool:
    return all(kv in endpoint.labels for kv in selector)


def full_bytes(name: str, endpoints: Iterable[Endpoint]) -> bytes:
    """What `endpoints.load_assignment` encodes (for tests and checks)."""
    message: ClusterLoadAssignment = endpoint_messages.load_assignment(name, endpoints)
    return message.SerializeToString(deterministic=True)
