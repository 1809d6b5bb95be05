"""VHDS: a view's route configurations as delta ADS streams are sent them with `--vhds`.

A RouteConfiguration holding every virtual host of a gateway listener is one resource: a
one-host edit replaces it whole (1.4 MB at 10,000 Routes), for every Envoy of the view. With
Envoy's Virtual Host Discovery Service the route configuration is sent without its virtual
hosts and with `vhds` (over ADS, which must be delta); Envoy then subscribes to the type
`VirtualHost` with the route configuration's name and takes every virtual host whose name has
that name as its namespace (`<route configuration>/<...>`: Envoy matches by namespace, the
text before the last `/`). A one-host edit is then one VirtualHost resource on the wire.

This module makes that layout from the snapshot's own ROUTE map, at the wire level: the
snapshot (what `meshpilot render`, `diff`, CSDS's "newest", the pre-push check and provenance
see) keeps the whole route configurations, byte for byte as today, and a SotW or per-type
stream is sent those. What Envoy builds from the layout (the route configuration with its VHDS
virtual hosts merged in) matches what the whole one says: the same domains, the same routes and
per-filter configs, `ignore_port_in_host_matching` kept; only each virtual host's name becomes
`<route configuration>/<name>` (a `/` or `%` in the name written `%2F`, `%25`), since Envoy
keys VHDS virtual hosts by their name and removes one by its resource name.

Left whole (not split): a route configuration with no virtual hosts (Envoy would wait on a VHDS
subscription with nothing to answer it), one that already says `vhds` (a raw one), and one whose
virtual hosts repeat a name (Envoy refuses it anyway; split, it would refuse something else).

It never parses a whole configuration: the bytes are walked field by field, each virtual host is
parsed only when it is new or changed (for the clusters it names), and the split of an unchanged
configuration, and each unchanged virtual host's Resource, are taken from the previous layout.
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


class SplitConfig:
    """One route configuration in the VHDS layout: its thin form and its virtual hosts."""

    __slots__ = ("chunks", "source", "thin", "vhosts")

    def __init__(self, source: Resource, thin: Resource, vhosts: dict[str, Resource],
                 chunks: dict[str, bytes]):
        self.source = source  # the whole RouteConfiguration this was made from
        self.thin = thin  # without virtual hosts, with `vhds`
        self.vhosts = vhosts  # resource name -> VirtualHost resource
        self.chunks = chunks  # resource name -> the virtual host's bytes in `source`


class VhdsLayout:
    """A ROUTE map as VHDS sends it: thin route configurations and VirtualHost resources."""

    __slots__ = ("_covering", "routes", "source", "split", "vhosts")

    def __init__(self, source: ResourceMap, earlier: VhdsLayout | None = None):
        self.source = source
        self.split: dict[str, SplitConfig] = {}
        before = earlier.split if earlier is not None else {}
        routes: list[Resource] = []
        vhosts: list[Resource] = []
        for name, config in source.items():
            previous = before.get(name)
            if previous is not None and previous.source.version == config.version:
                found: SplitConfig | None = previous
            else:
                found = _split(config, previous)
            if found is None:
                routes.append(config)  # served whole
                continue
            self.split[name] = found
            routes.append(found.thin)
            vhosts.extend(found.vhosts.values())
        same_routes = earlier is not None and len(earlier.routes) == len(routes) and all(
            earlier.routes.get(r.name) is r for r in routes)
        self.routes = earlier.routes if same_routes else ResourceMap(types.ROUTE, routes)
        same_vhosts = earlier is not None and len(earlier.vhosts) == len(vhosts) and all(
            earlier.vhosts.get(r.name) is r for r in vhosts)
        self.vhosts = (earlier.vhosts if same_vhosts
                       else ResourceMap(types.VIRTUAL_HOST, vhosts))
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
    is to be served whole."""
    body = config.body
    rest: list[bytes] = []
    vhosts: dict[str, Resource] = {}
    chunks: dict[str, bytes] = {}
    earlier_chunks = previous.chunks if previous is not None else {}
    earlier_vhosts = previous.vhosts if previous is not None else {}
    try:
        for number, start, payload_start, end in _fields(body, 0, len(body)):
            if number == _VHDS_FIELD:
                return None  # VHDS already: as written
            if number != _VHOSTS_FIELD:
                rest.append(body[start:end])
                continue
            chunk = body[payload_start:end]
            vhost_name = _string_field(chunk, _NAME_FIELD)
            name = vhost_resource_name(config.name, vhost_name)
            if name in chunks:
                return None  # two virtual hosts of one name: Envoy's to refuse, whole
            chunks[name] = chunk
            old = earlier_vhosts.get(name)
            if old is not None and earlier_chunks.get(name) == chunk:
                vhosts[name] = old
            else:
                vhosts[name] = _vhost_resource(name, chunk)
    except ValueError:
        return None  # not bytes this module can walk: served whole, Envoy decides
    if not vhosts:
        return None
    thin_body = b"".join(rest) + _VHDS_BYTES
    if previous is not None and previous.thin.body == thin_body:
        thin = previous.thin  # only virtual hosts changed: the same thin configuration
    else:
        thin = Resource(types.ROUTE, config.name, thin_body,
                        references_of(types.ROUTE, RouteConfiguration.FromString(thin_body)))
    return SplitConfig(config, thin, vhosts, chunks)


def _vhost_resource(name: str, chunk: bytes) -> Resource:
    """The VirtualHost `chunk` renamed `name`: its name field replaced, every other byte kept."""
    rest = b"".join(chunk[start:end] for number, start, _, end in _fields(chunk, 0, len(chunk))
                    if number != _NAME_FIELD)
    body = _length_delimited(_NAME_FIELD, name.encode("utf-8")) + rest
    holder = RouteConfiguration()
    holder.virtual_hosts.add().MergeFromString(chunk)
    refs = references_of(types.ROUTE, holder)
    return Resource(types.VIRTUAL_HOST, name, body, References(clusters=refs.clusters,
                                                               secrets=refs.secrets))


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
