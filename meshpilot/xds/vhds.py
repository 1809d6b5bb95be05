"""VHDS: a view's route configurations as delta ADS streams are sent them with `--vhds`.

A RouteConfiguration holding every virtual host of a gateway listener is one resource: a
one-host edit replaces it whole (1.1 MB at 10,000 Routes), for every Envoy of the view. With
Envoy's Virtual Host Discovery Service the route configuration is sent without its virtual
hosts and with `vhds` (over ADS, which must be delta); Envoy then subscribes to the type
`VirtualHost` (Envoy 1.40: a wildcard subscription) and gives each route configuration the
virtual hosts whose name has its name as namespace (`<route configuration>/<...>`: the text
before the last `/`). A one-host edit is then one VirtualHost resource on the wire.

This module makes that layout from the snapshot's own ROUTE map, at the wire level: the
snapshot (what `meshpilot render`, `diff`, CSDS's "newest", the pre-push check and provenance
see) keeps the whole route configurations, byte for byte as today, and a SotW or per-type
stream is sent those. What Envoy builds from the layout (the route configuration with its VHDS
virtual hosts merged in) matches what the whole one says: the same domains, the same routes and
per-filter configs, `ignore_port_in_host_matching` kept; only each virtual host's name becomes
`<route configuration>/<name>` (a `/` or `%` in the name written `%2F`, `%25`), since Envoy
keys VHDS virtual hosts by their name and removes one by its resource name.

Left whole (not split): a route configuration with no virtual hosts (nothing to split: it goes
out as it is and Envoy opens no VHDS subscription for it), one that already says `vhds` (a raw
one), and one whose virtual hosts repeat a name (Envoy refuses it anyway; split, it would
refuse something else).

It never parses a whole configuration: the bytes are walked field by field, each virtual host
is parsed only when it is new or changed (for the clusters it names), an unchanged
configuration's split is the previous layout's, and an edited one walks only the stretch of
bytes that differs from the previous one (`_split_from`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from envoy.config.core.v3.config_source_pb2 import AggregatedConfigSource, ApiVersion, ConfigSource
from envoy.config.route.v3.route_pb2 import RouteConfiguration, Vhds

from meshpilot.base import types
from meshpilot.xds.deps import References, references_of
from meshpilot.xds.resources import Resource, ResourceMap

_VHOSTS_FIELD = 2  # RouteConfiguration.virtual_hosts
_VHDS_FIELD = 9  # RouteConfiguration.vhds
_NAME_FIELD = 1  # RouteConfiguration.name, VirtualHost.name

# RouteConfiguration.vhds: over ADS (the bootstrap's, delta), the v3 API.
_VHDS_BYTES = RouteConfiguration(vhds=Vhds(config_source=ConfigSource(
    ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3))).SerializeToString(
        deterministic=True)


def vhost_resource_name(route_config: str, vhost: str) -> str:
    """A VHDS virtual host's name (and its resource's): namespaced by its route configuration."""
    return f"{route_config}/{vhost.replace('%', '%25').replace('/', '%2F')}"


def split_name(name: str) -> tuple[str, str]:
    """(route configuration, virtual host name) of a VHDS resource name."""
    namespace, _, escaped = name.rpartition("/")
    return namespace, escaped.replace("%2F", "/").replace("%25", "%")


def namespace_of(name: str) -> str:
    """Envoy's namespace of a resource name: what comes before its last `/`."""
    return name.rpartition("/")[0]


Field = tuple[int, int, int, int, str]
Parts = tuple[tuple[int, list[Field]], ...]
_MAX_PARTS = 16  # runs kept before they are merged into one again


class SplitConfig:
    """One route configuration in the VHDS layout: its thin form and its virtual hosts."""

    __slots__ = ("changed", "parts", "removed", "source", "thin", "vhosts")

    def __init__(self, source: Resource, thin: Resource, vhosts: dict[str, Resource],
                 parts: Parts,
                 changed: dict[str, Resource] | None = None, removed: tuple[str, ...] = ()):
        self.source = source  # the whole RouteConfiguration this was made from
        self.thin = thin  # without virtual hosts, with `vhds`
        self.vhosts = vhosts  # resource name -> VirtualHost resource
        # Every top-level field of `source`, in order: (number, start, payload start, end, the
        # virtual host's resource name or ""), in runs of (shift, fields): a field's offsets
        # are its run's shift plus its own. An edit re-slices runs instead of moving every
        # offset after it (thousands of new tuples per edit otherwise).
        self.parts = parts
        # Made from an earlier split: the virtual hosts new or changed since, and those gone
        # (None: made whole, compare every one).
        self.changed = changed
        self.removed = removed

    def chunk(self, name: str) -> bytes:
        """The bytes of virtual host `name` inside the whole configuration."""
        body = self.source.body
        return next(body[p:e] for _, _, p, e, n in _fields_of(self.parts) if n == name)


class VhdsLayout:
    """A ROUTE map as VHDS sends it: thin route configurations and VirtualHost resources."""

    __slots__ = ("_covering", "routes", "source", "split", "vhosts")

    def __init__(self, source: ResourceMap, earlier: VhdsLayout | None = None):
        self.source = source
        self.split: dict[str, SplitConfig] = {}
        before = earlier.split if earlier is not None else {}
        routes: list[Resource] = []
        changed: dict[str, Resource] = {}  # virtual hosts new or changed since `earlier`
        removed: set[str] = set()
        for name, config in source.items():
            previous = before.get(name)
            if previous is not None and previous.source.version == config.version:
                found: SplitConfig | None = previous
            else:
                found = _split(config, previous)
            old = previous.vhosts if previous is not None else {}
            if found is None:
                routes.append(config)  # served whole
                removed.update(old)
                continue
            self.split[name] = found
            routes.append(found.thin)
            if found is previous:
                continue
            if found.changed is not None:  # split from `previous`: it says what changed
                changed.update(found.changed)
                removed.update(found.removed)
            else:
                changed.update((n, r) for n, r in found.vhosts.items() if old.get(n) is not r)
                removed.update(n for n in old if n not in found.vhosts)
        for name, gone in before.items():
            if name not in source:
                removed.update(gone.vhosts)
        same_routes = earlier is not None and len(earlier.routes) == len(routes) and all(
            earlier.routes.get(r.name) is r for r in routes)
        self.routes = earlier.routes if same_routes else ResourceMap(types.ROUTE, routes)
        if earlier is None:
            self.vhosts = ResourceMap(types.VIRTUAL_HOST, (
                r for split in self.split.values() for r in split.vhosts.values()))
        else:
            self.vhosts = earlier.vhosts.patched(changed.values(), removed)
        self._covering: tuple[frozenset[str], bool] | None = None

    def get(self, type_url: str) -> ResourceMap | None:
        """This layout's map of `type_url` (ROUTE, VIRTUAL_HOST); None for any other type."""
        if type_url == types.ROUTE:
            return self.routes
        if type_url == types.VIRTUAL_HOST:
            return self.vhosts
        return None

    def subscribed(self, namespaces: frozenset[str]) -> Mapping[str, Resource]:
        """The virtual hosts of the route configurations named in `namespaces` (a VHDS
        subscription): the shared map itself when they are all of them (the usual case)."""
        memo = self._covering
        if memo is None or memo[0] is not namespaces:
            memo = self._covering = (namespaces, namespaces.issuperset(self.split))
        if memo[1]:
            return self.vhosts
        return {n: r for name in sorted(namespaces) if (s := self.split.get(name)) is not None
                for n, r in s.vhosts.items()}


def _split(config: Resource, previous: SplitConfig | None) -> SplitConfig | None:
    """`config` in the VHDS layout, reusing `previous`'s unchanged virtual hosts; None when it
    is to be served whole.

    After a one-host edit the new bytes differ from `previous`'s in one stretch: the fields
    before it and after it (found by comparing bytes, in C) are taken as they were, shifted,
    and only the stretch is walked."""
    body = config.body
    try:
        if previous is not None:
            found = _split_from(config, previous)
            if found is not None:
                return found if found.vhosts else None
        fields = _walk(config.name, body, 0, len(body))
        if fields is None:
            return None
        vhosts = {}
        for _, _, payload, end, name in fields:
            if name:
                vhosts[name] = _vhost_resource(name, body[payload:end])
        if len(vhosts) != sum(1 for f in fields if f[4]):
            return None  # two virtual hosts of one name: Envoy's to refuse, whole
        if not vhosts:
            return None
        return SplitConfig(config, _thin(config, fields, None), vhosts, ((0, fields),))
    except ValueError:
        return None  # not bytes this module can walk: served whole, Envoy decides


def _walk(config_name: str, body: bytes, pos: int, end: int
          ) -> list[tuple[int, int, int, int, str]] | None:
    """The fields of `body[pos:end]`, each virtual host with its resource name; None if the
    configuration says `vhds` itself (served as written)."""
    out = []
    for number, start, payload, stop in _fields(body, pos, end):
        if number == _VHDS_FIELD:
            return None
        name = (vhost_resource_name(config_name, _leading_name(body[payload:stop]))
                if number == _VHOSTS_FIELD else "")
        out.append((number, start, payload, stop, name))
    return out


def _split_from(config: Resource, previous: SplitConfig) -> SplitConfig | None:
    """`_split` by the stretch that differs from `previous`; None: split it whole instead."""
    old, new = previous.source.body, config.body
    prefix = _common_prefix(old, new)
    suffix = _common_suffix(old, new, min(len(old), len(new)) - prefix)
    parts = previous.parts
    # Fields wholly before the stretch stay; those wholly after it move by `shift`.
    first = _position_end(parts, prefix)
    after = _position_start(parts, len(old) - suffix, first)
    shift = len(new) - len(old)
    before = _field_before(parts, first)
    begin = before[3] if before is not None else 0
    next_field = _field_at(parts, after)
    stop = next_field[1] + shift if next_field is not None else len(new)
    if stop < begin:
        return None
    middle = _walk(config.name, new, begin, stop)
    if middle is None or (middle and middle[-1][3] != stop) or (not middle and begin != stop):
        return None  # the walk did not land on the next unchanged field: split it whole
    between = list(_fields_between(parts, first, after))
    vhosts = dict(previous.vhosts)
    replaced = [f[4] for f in between if f[4]]
    for name in replaced:
        del vhosts[name]
    changed: dict[str, Resource] = {}
    for _, _, payload, end, name in middle:
        if not name:
            continue
        if name in vhosts:
            return None  # a duplicate: split it whole (and serve it whole)
        chunk = new[payload:end]
        earlier = previous.vhosts.get(name)
        if earlier is not None and _same_chunk(previous, name, chunk):
            vhosts[name] = earlier
        else:
            vhosts[name] = changed[name] = _vhost_resource(name, chunk)
    merged = _respliced(parts, first, after, middle, shift)
    touched_rest = any(not f[4] for f in between) or any(not f[4] for f in middle)
    thin = (_thin(config, list(_fields_of(merged)), None) if touched_rest else previous.thin)
    return SplitConfig(config, thin, vhosts, merged, changed,
                       tuple(n for n in replaced if n not in vhosts))


def _fields_of(parts: Parts) -> Iterator[Field]:
    """Every field of `parts` with its offsets in the body."""
    for shift, run in parts:
        if not shift:
            yield from run
        else:
            for n, a, p, e, m in run:
                yield n, a + shift, p + shift, e + shift, m


def _shifted(field: Field, shift: int) -> Field:
    n, a, p, e, m = field
    return n, a + shift, p + shift, e + shift, m


def _position_end(parts: Parts, limit: int) -> tuple[int, int]:
    """(run, index) of the first field that ends after `limit`."""
    for index, (shift, run) in enumerate(parts):
        if run[-1][3] + shift <= limit:
            continue
        lo, hi = 0, len(run)
        while lo < hi:
            mid = (lo + hi) // 2
            if run[mid][3] + shift <= limit:
                lo = mid + 1
            else:
                hi = mid
        return index, lo
    return len(parts), 0


def _position_start(parts: Parts, limit: int, low: tuple[int, int]) -> tuple[int, int]:
    """(run, index) of the first field from `low` that starts at or after `limit`."""
    for index in range(low[0], len(parts)):
        shift, run = parts[index]
        lo = low[1] if index == low[0] else 0
        if lo >= len(run) or run[-1][1] + shift < limit:
            continue
        hi = len(run)
        while lo < hi:
            mid = (lo + hi) // 2
            if run[mid][1] + shift < limit:
                lo = mid + 1
            else:
                hi = mid
        return index, lo
    return len(parts), 0


def _field_at(parts: Parts, at: tuple[int, int]) -> Field | None:
    index, i = at
    while index < len(parts):
        shift, run = parts[index]
        if i < len(run):
            return _shifted(run[i], shift)
        index, i = index + 1, 0
    return None


def _field_before(parts: Parts, at: tuple[int, int]) -> Field | None:
    index, i = at
    if index < len(parts) and i > 0:
        shift, run = parts[index]
        return _shifted(run[i - 1], shift)
    for shift, run in reversed(parts[:index]):
        if run:
            return _shifted(run[-1], shift)
    return None


def _fields_between(parts: Parts, first: tuple[int, int], after: tuple[int, int]
                    ) -> Iterator[Field]:
    for index in range(first[0], min(after[0] + 1, len(parts))):
        shift, run = parts[index]
        lo = first[1] if index == first[0] else 0
        hi = after[1] if index == after[0] else len(run)
        for field in run[lo:hi]:
            yield _shifted(field, shift)


def _respliced(parts: Parts, first: tuple[int, int], after: tuple[int, int],
               middle: list[Field], shift: int) -> Parts:
    """`parts` with the fields from `first` to `after` replaced by `middle` (offsets in the new
    body) and every later run moved by `shift`: list slices, no field rebuilt."""
    head = list(parts[:first[0]])
    if first[0] < len(parts):
        run_shift, run = parts[first[0]]
        head.append((run_shift, run[:first[1]]))
    tail = []
    if after[0] < len(parts):
        run_shift, run = parts[after[0]]
        tail.append((run_shift + shift, run[after[1]:]))
        tail.extend((s + shift, r) for s, r in parts[after[0] + 1:])
    out = tuple(p for p in (*head, (0, middle), *tail) if p[1])
    if len(out) > _MAX_PARTS:
        out = ((0, list(_fields_of(out))),)
    return out


def _same_chunk(previous: SplitConfig, name: str, chunk: bytes) -> bool:
    resource = previous.vhosts[name]
    return resource.body == _renamed(name, chunk)


def _thin(config: Resource, fields: list[tuple[int, int, int, int, str]],
          unchanged: Resource | None) -> Resource:
    """The configuration without its virtual hosts, with `vhds`; `unchanged` if given (its
    fields other than virtual hosts are known to be the same)."""
    if unchanged is not None:
        return unchanged
    body = config.body
    thin_body = b"".join(body[start:end] for _, start, _, end, name in fields if not name)
    thin_body += _VHDS_BYTES
    return Resource(types.ROUTE, config.name, thin_body,
                    references_of(types.ROUTE, RouteConfiguration.FromString(thin_body)))


def _common_prefix(a: bytes, b: bytes) -> int:
    """The length of the longest common prefix, by halving (each comparison a memcmp)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    """The length of the longest common suffix, at most `limit`."""
    lo, hi = 0, limit
    la, lb = len(a), len(b)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[la - mid:la - lo] == b[lb - mid:lb - lo]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _renamed(name: str, chunk: bytes) -> bytes:
    """The VirtualHost `chunk` with its name field replaced by `name`, every other byte kept."""
    rest = b"".join(chunk[start:end] for number, start, _, end in _fields(chunk, 0, len(chunk))
                    if number != _NAME_FIELD)
    return _length_delimited(_NAME_FIELD, name.encode("utf-8")) + rest


def _vhost_resource(name: str, chunk: bytes) -> Resource:
    """The VirtualHost `chunk`, renamed `name`, as a resource (with the clusters it names)."""
    holder = RouteConfiguration()
    holder.virtual_hosts.add().MergeFromString(chunk)
    refs = references_of(types.ROUTE, holder)
    return Resource(types.VIRTUAL_HOST, name, _renamed(name, chunk),
                    References(clusters=refs.clusters, secrets=refs.secrets))


def _fields(data: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, start, payload start, end) of each top-level field of a message."""
    while pos < end:
        start = pos
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _read_varint(data, pos)
            payload = pos
        elif wire_type == 2:
            length, payload = _read_varint(data, pos)
            pos = payload + length
        elif wire_type == 1:
            payload, pos = pos, pos + 8
        elif wire_type == 5:
            payload, pos = pos, pos + 4
        else:
            raise ValueError(f"wire type {wire_type}")
        if pos > end or number == 0:
            raise ValueError("truncated")
        yield number, start, payload, pos


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _leading_name(message: bytes) -> str:
    """A VirtualHost's name: its first field, as every message meshpilot serializes is
    (deterministically: fields in number order, each once); else found by walking the fields."""
    if message[:1] == b"\x0a":
        length, start = _read_varint(message, 1)
        if start + length <= len(message):
            return message[start:start + length].decode("utf-8")
    return _string_field(message, _NAME_FIELD)


def _string_field(message: bytes, number: int) -> str:
    found = ""
    for field_number, _, payload, end in _fields(message, 0, len(message)):
        if field_number == number:
            found = message[payload:end].decode("utf-8")  # the last one wins, as in protobuf
    return found


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
