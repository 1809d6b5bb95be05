"""Serialized resources: each Envoy resource is encoded once and shared by every stream.

A `Resource` carries the message's bytes, its content-hash version and the two wire fragments that
responses are assembled from (the SotW `Any` entry and the delta `Resource` entry), so fan-out to N
Envoys costs a bytes concatenation per stream, never a serialization. A `ResourceMap` is the
immutable set of one type's resources in one view; its version is a hash of its contents, so two
replicas (or a restarted one) that hold the same config agree on every version.

A map's version is a set hash: the sum, modulo 2**64, of one 64-bit BLAKE2b hash per (name,
version) pair, each computed once when its `Resource` is built. So a map made from another with
a few resources replaced (`ResourceMap.patched`, the incremental reload's path) gets its version
by subtracting the old pairs and adding the new ones, without visiting the rest of the set.

A resource's own version is the BLAKE2b hash of its bytes, except where its builder knows the
bytes as many pieces that change one at a time (a gateway's RouteConfiguration: one piece per
virtual host) and hands in a version made of the pieces' hashes (`pieces_version`): then an
edit of one piece hashes that piece, not the 1.4 MB around it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping

from google.protobuf.message import Message

from meshpilot.xds import wire
from meshpilot.xds.deps import References, references_of


def content_version(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def piece_hash(piece: bytes) -> int:
    """One piece's share of a `pieces_version` (64 bits of BLAKE2b)."""
    return int.from_bytes(hashlib.blake2b(piece, digest_size=8).digest(), "big")


def pieces_version(fixed: bytes, total: int, count: int, length: int) -> str:
    """The version of bytes made of `fixed` (what is not a piece: a name, trailing fields) and
    `count` pieces whose `piece_hash`es sum to `total`, `length` bytes in all.

    A sum forgets the pieces' order, so this is only for bytes whose pieces come in an order
    their own content fixes (virtual hosts sorted by their name, which each one's bytes begin
    with): then the same pieces are the same bytes, and the version is as much a function of
    the content as `content_version`. Two builders of the same resource (a cold build and a
    spliced one) must both use it; nothing compares it with `content_version`."""
    summary = b"".join(((total & _MASK).to_bytes(8, "big"), count.to_bytes(8, "big"),
                        length.to_bytes(8, "big"), fixed))
    return hashlib.blake2b(summary, digest_size=8, person=b"pieces").hexdigest()


_MASK = (1 << 64) - 1


def pair_hash(name: str, version: str) -> int:
    """One (name, version) pair's share of a set version (`set_version`)."""
    digest = hashlib.blake2b(name.encode() + b"\0" + version.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _name_hash(name: str) -> int:
    return pair_hash(name, "")


def _shown(total: int) -> str:
    return f"{total & _MASK:016x}"


class Resource:
    """One named resource of one type, immutable once built."""

    __slots__ = ("_delta_entry", "_sotw_entry", "body", "name", "name_share", "refs", "share",
                 "type_url", "version")

    def __init__(self, type_url: str, name: str, body: bytes, refs: References,
                 version: str | None = None):
        """`version`: a content version its maker computed from the content's parts, the same
        for the same body however it was made (`translators/assignments.py` for large
        assignments, `pieces_version` for a gateway's RouteConfiguration); by default the
        hash of `body` (`content_version`)."""
        self.type_url = type_url
        self.name = name
        self.body = body
        self.version = version if version is not None else content_version(body)
        # The wire fragments responses are joined from, made on first use (`sotw_entry`,
        # `delta_entry`).
        self._sotw_entry: bytes | None = None
        self._delta_entry: bytes | None = None
        self.refs = refs
        self.share = pair_hash(name, self.version)  # its part of a map's version
        self.name_share = _name_hash(name)  # its part of a map's names_version

    # Each fragment is a copy of the body, made straight from it, once, when a response first
    # carries the resource: a fleet on one protocol never makes the other's, and a resource
    # replaced before anyone was sent it (the assignment of a Service whose registrations
    # come faster than a push) makes neither. Made twice at worst if two threads race: the
    # same bytes either way.
    @property
    def sotw_entry(self) -> bytes:
        """The resource as one `resources` entry of a SotW DiscoveryResponse."""
        entry = self._sotw_entry
        if entry is None:
            entry = self._sotw_entry = wire.sotw_entry_of(self.type_url, self.body)
        return entry

    @property
    def delta_entry(self) -> bytes:
        """The resource as one `resources` entry of a DeltaDiscoveryResponse."""
        entry = self._delta_entry
        if entry is None:
            entry = self._delta_entry = wire.delta_entry_of(self.name, self.version,
                                                            self.type_url, self.body)
        return entry

    @classmethod
    def from_message(cls, type_url: str, name: str, message: Message) -> Resource:
        # Deterministic serialization keeps map fields in a stable order, so versions do not churn.
        body = message.SerializeToString(deterministic=True)
        return cls(type_url, name, body, references_of(type_url, message))

    @property
    def any_bytes(self) -> bytes:
        """The resource as an encoded `google.protobuf.Any` (inside both entries)."""
        return wire.any_bytes(self.type_url, self.body)

    def __repr__(self) -> str:
        return f"Resource({self.type_url.rsplit('.', 1)[-1]} {self.name!r} v={self.version})"


def set_version(resources: Mapping[str, Resource]) -> str:
    """The version of a set of resources: the sum of its (name, version) pairs' hashes."""
    total = 0
    for name, resource in resources.items():
        share = getattr(resource, "share", None)
        total += share if share is not None and resource.name == name else \
            pair_hash(name, resource.version)
    return _shown(total)


# Claims maps a ResourceMap remembers its answer for: as many as the request decoder keeps
# distinct bodies (`xds.requests.DeltaRequestDecoder.limit`).
_CLAIMS_MEMO = 32


class SharedClaims(dict[str, str]):
    """A resuming delta request's `initial_resource_versions`, shared read-only by every stream
    that sent the same request bytes (`xds/requests.py`): the claims `ResourceMap.held_exactly`
    remembers its answer for (a stream's own claims are compared once, and not kept)."""

    __slots__ = ()


class ResourceMap(Mapping[str, Resource]):
    """All resources of one type in one view: immutable, content-versioned, shared by streams."""

    __slots__ = ("_claims_memo", "_diffs", "_items", "_name_set", "_names", "_names_total",
                 "_sotw_body", "_total", "_versions", "names_version", "type_url", "version")

    def __init__(self, type_url: str, resources: Iterable[Resource] = ()):
        self.type_url = type_url
        items = sorted(resources, key=lambda r: r.name)
        self._items: dict[str, Resource] = {r.name: r for r in items}
        if len(self._items) != len(items):
            raise ValueError(f"duplicate resource names in {type_url}")
        self._set_totals(sum(r.share for r in items), sum(r.name_share for r in items))
        self._sotw_body: bytes | None = None
        self._names: tuple[str, ...] | None = None
        self._name_set: frozenset[str] | None = None
        self._diffs: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._versions: dict[str, str] | None = None
        # Claims compared with this map, and the answers (see `held_exactly`).
        self._claims_memo: dict[int, tuple[Mapping[str, str], bool]] | None = None

    def _set_totals(self, total: int, names_total: int) -> None:
        self._total = total & _MASK
        self._names_total = names_total & _MASK
        self.version = _shown(self._total)
        self.names_version = _shown(self._names_total)

    def patched(self, changed: Iterable[Resource], removed: Iterable[str] = ()) -> ResourceMap:
        """This map with `changed` added or replacing the resource of their name (unless it
        holds one of the same version: the same bytes) and the resources named in `removed`
        left out: equal to a map built from the whole new set,
        in time proportional to the change when no name is added or removed (a dict copy
        otherwise), its version from this one's (`set_version`). `self` if nothing differs."""
        items = self._items
        replaced: dict[str, Resource] = {}
        for resource in changed:
            old = items.get(resource.name)
            if old is None or (old is not resource and old.version != resource.version):
                replaced[resource.name] = resource  # an equal one is kept: same bytes
        gone = [name for name in removed if name in items and name not in replaced]
        if not replaced and not gone:
            return self
        total, names_total = self._total, self._names_total
        added = False
        for name, resource in replaced.items():
            old = items.get(name)
            if old is None:
                added = True
                names_total += resource.name_share
            else:
                total -= old.share
            total += resource.share
        for name in gone:
            total -= items[name].share
            names_total -= items[name].name_share
        new = ResourceMap.__new__(ResourceMap)
        new.type_url = self.type_url
        if added or gone:  # names moved: the order by name is made again
            merged = {**items, **replaced}
            for name in gone:
                del merged[name]
            new._items = {name: merged[name] for name in sorted(merged)}
        else:
            new._items = {**items, **replaced}  # same names, same order
        new._set_totals(total, names_total)
        new._sotw_body = None
        new._names = self._names if not (added or gone) else None
        new._name_set = self._name_set if not (added or gone) else None
        new._diffs = {}
        new._versions = None
        new._claims_memo = None
        return new

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

    def versions(self) -> Mapping[str, str]:
        """name -> version of every resource, built once (read-only: shared)."""
        if self._versions is None:
            self._versions = {n: r.version for n, r in self._items.items()}
        return self._versions

    def held_exactly(self, claims: Mapping[str, str]) -> bool:
        """Whether `claims` (a resuming delta client's initial_resource_versions) name exactly
        this map's resources at exactly their versions.

        One dict comparison in C, not a loop per claim; and memoized on the claims object, so
        the thousands of streams of a reconnect storm that share one interned claims map
        (`xds/requests.py`) pay for one comparison between them. Several at once: the decoder
        holds one claims map per distinct request body (each client process's map order is
        its own), and their streams' requests arrive interleaved; remembering only the newest
        compared 1,000 claims again for almost every stream of a storm (75 us each)."""
        shared = type(claims) is SharedClaims
        memo = self._claims_memo
        if shared and memo is not None:
            found = memo.get(id(claims))
            if found is not None and found[0] is claims:  # (kept: its id stays its own)
                return found[1]
        versions = self.versions()
        same = len(claims) == len(versions) and (
            claims == versions if isinstance(claims, dict)
            else all(versions.get(n) == v for n, v in claims.items()))
        if shared:
            if memo is None:
                memo = self._claims_memo = {}
            if len(memo) >= _CLAIMS_MEMO:
                memo.pop(next(iter(memo)))
            memo[id(claims)] = (claims, same)
        return same

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
