"""Serialized resources: each Envoy resource is encoded once and shared by every stream.

A `Resource` carries the message's bytes, its content-hash version and the two wire fragments that
responses are assembled from (the SotW `Any` entry and the delta `Resource` entry), so fan-out to N
Envoys costs a bytes concatenation per stream, never a serialization. A `ResourceMap` is the
immutable set of one type's resources in one view; its version is a hash of its contents, so two
replicas (or a restarted one) that hold the same config agree on every version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping

from google.protobuf.message import Message

from meshpilot.xds import wire
from meshpilot.xds.deps import References, references_of


def content_version(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class Resource:
    """One named resource of one type, immutable once built."""

    __slots__ = ("any_bytes", "body", "delta_entry", "name", "refs", "sotw_entry", "type_url",
                 "version")

    def __init__(self, type_url: str, name: str, body: bytes, refs: References):
        self.type_url = type_url
        self.name = name
        self.body = body
        self.version = content_version(body)
        self.any_bytes = wire.any_bytes(type_url, body)
        self.sotw_entry = wire.sotw_resource_entry(self.any_bytes)
        self.delta_entry = wire.delta_resource_entry(name, self.version, self.any_bytes)
        self.refs = refs

    @classmethod
    def from_message(cls, type_url: str, name: str, message: Message) -> Resource:
        # Deterministic serialization keeps map fields in a stable order, so versions do not churn.
        body = message.SerializeToString(deterministic=True)
        return cls(type_url, name, body, references_of(type_url, message))

    def __repr__(self) -> str:
        return f"Resource({self.type_url.rsplit('.', 1)[-1]} {self.name!r} v={self.version})"


def _hash_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    # The hash of name, NUL, version, newline for each pair: one update of the joined text
    # (the same bytes as an update per part, in a fraction of the time).
    h = hashlib.blake2b(digest_size=8)
    h.update("".join(f"{name}\0{version}\n" for name, version in pairs).encode())
    return h.hexdigest()


def set_version(resources: Mapping[str, Resource]) -> str:
    """The version of a set of resources: a hash of its sorted (name, version) pairs."""
    return _hash_pairs((name, resources[name].version) for name in sorted(resources))


class ResourceMap(Mapping[str, Resource]):
    """All resources of one type in one view: immutable, content-versioned, shared by streams."""

    __slots__ = ("_diffs", "_items", "_name_set", "_names", "_sotw_body", "names_version",
                 "type_url", "version")

    def __init__(self, type_url: str, resources: Iterable[Resource] = ()):
        self.type_url = type_url
        items = sorted(resources, key=lambda r: r.name)
        self._items: dict[str, Resource] = {r.name: r for r in items}
        if len(self._items) != len(items):
            raise ValueError(f"duplicate resource names in {type_url}")
        self.version = _hash_pairs((r.name, r.version) for r in items)
        self.names_version = _hash_pairs((r.name, "") for r in items)
        self._sotw_body: bytes | None = None
        self._names: tuple[str, ...] | None = None
        self._name_set: frozenset[str] | None = None
        self._diffs: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def __getitem__(self, name: str) -> Resource:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def get(self, name: str, default: Resource | None = None) -> Resource | None:  # type: ignore[override]
        return self._items.get(name, default)

    def names(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(self._items)
        return self._names

    def name_set(self) -> frozenset[str]:
        """The names as one shared frozenset: streams subscribed to exactly these hold this
        object instead of a copy each (5,000 names are ~0.5 MiB per stream otherwise)."""
        if self._name_set is None:
            self._name_set = frozenset(self._items)
        return self._name_set

    def sotw_body(self) -> bytes:
        """Every resource as SotW `resources` entries, encoded once and shared by all streams."""
        if self._sotw_body is None:
            self._sotw_body = b"".join(r.sotw_entry for r in self._items.values())
        return self._sotw_body

    def updated(self, changed: Mapping[str, Resource], removed: Iterable[str]) -> ResourceMap:
        """This map with `changed` (name -> resource) put in and `removed` taken out, equal to
        a new map of the result (`self` if nothing changes): the one-host edit of a map of
        thousands re-sorts only when names come or go, and copies the rest in C."""
        gone = [n for n in removed if n in self._items and n not in changed]
        fresh = {n: r for n, r in changed.items() if self._items.get(n) is not r}
        if not gone and not fresh:
            return self
        items = dict(self._items)
        for name in gone:
            del items[name]
        renamed = bool(gone) or any(n not in items for n in fresh)
        items.update(fresh)
        out = ResourceMap(self.type_url)
        out._items = dict(sorted(items.items())) if renamed else items
        out.version = _hash_pairs((n, r.version) for n, r in out._items.items())
        out.names_version = (_hash_pairs((n, "") for n in out._items) if renamed
                             else self.names_version)
        return out

    def diff_from(self, older: Mapping[str, Resource]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(names added or changed, names removed) going from `older` to this map.

        Diffs between two shared maps are memoized here, so a thousand streams moving from the same
        old map to this one pay for one comparison.
        """
        key = older.version if isinstance(older, ResourceMap) else None
        if key is not None and key in self._diffs:
            return self._diffs[key]
        changed = tuple(n for n, r in self._items.items()
                        if (o := older.get(n)) is None or o.version != r.version)
        removed = tuple(n for n in older if n not in self._items)
        if key is not None:
            if len(self._diffs) >= 8:
                self._diffs.pop(next(iter(self._diffs)))
            self._diffs[key] = (changed, removed)
        return changed, removed

    def __repr__(self) -> str:
        kind = self.type_url.rsplit(".", 1)[-1]
        return f"ResourceMap({kind}, {len(self)} items, v={self.version})"
