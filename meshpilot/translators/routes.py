"""Routes: one RouteConfiguration per gateway listener, one VirtualHost per attached Route.

This module owns how a Route's rules become Envoy route entries: matches (path, methods, headers,
query parameters; the matchers themselves are `matchers.py`), what happens to a matching request
(backends, a redirect or a direct response), path and host rewrites, header changes, timeouts,
retries, mirroring and hash policies. What HTTP filters do per virtual host or route entry (CORS,
fault injection, request security) is their `typed_per_filter_config`, which the features in
`httpfilters/` write. Rule order is the order written, and Envoy takes the first route entry that
matches, so "first match wins" holds as is. It must not decide which views receive a
configuration (the views do) nor build the clusters the entries name (`clusters.py` does; a
cluster name comes from `names.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from envoy.config.core.v3.base_pb2 import (
    DataSource,
    HeaderValue,
    HeaderValueOption,
    RuntimeFractionalPercent,
)
from envoy.config.route.v3.route_components_pb2 import (
    DirectResponseAction,
    HeaderMatcher,
    RedirectAction,
    RetryPolicy,
    RouteAction,
    RouteMatch,
    VirtualHost,
    WeightedCluster,
)
from envoy.config.route.v3.route_components_pb2 import Route as EnvoyRoute
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2 import (
    PreviousHostsPredicate,
)
from envoy.type.matcher.v3.regex_pb2 import RegexMatchAndSubstitute, RegexMatcher
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from google.protobuf.wrappers_pb2 import UInt32Value

from meshpilot.base import re2text, types
from meshpilot.ir.model import (
    Backend,
    DirectResponse,
    Gateway,
    GatewayListener,
    HashOn,
    HeaderOps,
    Match,
    Mirror,
    Redirect,
    Retries,
    Route,
    Rule,
    StringMatch,
    TlsHost,
)
from meshpilot.translators import httpfilters, names
from meshpilot.translators.matchers import (
    header_matcher,
    inverted_path_matcher,
    query_matcher,
    re2_literal,
)
from meshpilot.translators.protos import duration, fractional_percent, pack
from meshpilot.xds.deps import References, references_of
from meshpilot.xds.resources import Resource, piece_hash, pieces_version

# Clients leave the port out of Host for the scheme's default port; any other port is in it.
DEFAULT_HTTP_PORT = 80
DEFAULT_PORTS = {"http": 80, "https": 443}

_REDIRECT_CODES: dict[int, RedirectAction.RedirectResponseCode.ValueType] = {
    301: RedirectAction.MOVED_PERMANENTLY,
    302: RedirectAction.FOUND,
    303: RedirectAction.SEE_OTHER,
    307: RedirectAction.TEMPORARY_REDIRECT,
    308: RedirectAction.PERMANENT_REDIRECT,
}

_ADD = HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
_SET = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
# How often Envoy picks a host again when the predicate refuses one (Istio's value).
HOST_SELECTION_ATTEMPTS = 5


def attaches(route: Route, spec: GatewayListener) -> bool:
    """Whether `route` is served on listener `spec` of its gateway (no listeners named: all)."""
    return not route.listeners or spec.name in route.listeners


def in_table(route: Route, spec: GatewayListener, host: TlsHost | None) -> bool:
    """Whether `route` is in the route table of listener `spec` (of its TLS host `host`, when
    the listener has TLS hosts: each has a table of its own)."""
    return attaches(route, spec) and (host is None or route.tls_host == host.name)


def table_name(gateway: Gateway, spec: GatewayListener, host: TlsHost | None) -> str:
    return names.route_config(gateway.name, spec.name) if host is None else \
        names.tls_host_routes(gateway.name, spec.name, host.name)


def route_configuration(gateway: Gateway, spec: GatewayListener,
                        routes: Iterable[Route], host: TlsHost | None = None,
                        ) -> RouteConfiguration:
    """The routes of one listener (or one of its TLS hosts): a virtual host per attached Route,
    in Route name order.

    Always built, even with no Route attached: the listener waits for it over RDS, and an empty
    configuration answers 404 rather than leaving the listener warming.
    """
    config = RouteConfiguration(name=table_name(gateway, spec, host),
                                ignore_port_in_host_matching=True)
    taken: set[str] = set()
    for route in sorted((r for r in routes if in_table(r, spec, host)), key=lambda r: r.name):
        vhost = virtual_host(route, spec.port, taken, scheme_of(spec))
        if vhost is not None:
            config.virtual_hosts.append(vhost)
    return config


def scheme_of(spec: GatewayListener) -> str:
    return "http" if spec.tls is None and not spec.mesh_tls else "https"


def vhost_key(spec: GatewayListener) -> int:
    """A listener's part of a virtual host's cache key: its port, negative for https (a
    redirect keeping the port depends on both)."""
    return spec.port if spec.tls is None and not spec.mesh_tls else -spec.port


# (id(route), vhost_key) -> (the Route, its domains there, its VirtualHost's bytes, the clusters
# the VirtualHost names, the bytes' `piece_hash`). The Route is kept so the id stays its own
# while the entry lives.
VirtualHostBytes = tuple[Route, tuple[str, ...], bytes, frozenset[str], int]
VirtualHostCache = dict[tuple[int, int], VirtualHostBytes]


def serialized_virtual_host(route: Route, own: tuple[str, ...], vhost: VirtualHost
                            ) -> VirtualHostBytes:
    """A cache entry for `route`'s virtual host `vhost`, claiming the domains `own`."""
    data = vhost.SerializeToString(deterministic=True)
    return route, own, data, _vhost_clusters(vhost), piece_hash(data)


def route_configuration_resource(gateway: Gateway, spec: GatewayListener, routes: Iterable[Route],
                                 earlier: Mapping[tuple[int, int], VirtualHostBytes],
                                 cache: VirtualHostCache, host: TlsHost | None = None,
                                 ) -> Resource:
    """`Resource.from_message` of `route_configuration(gateway, spec, routes)`, byte for byte,
    serializing only the virtual hosts of Routes not found in `earlier` or `cache` (by identity,
    at this port): a RouteConfiguration holding `name`, `virtual_hosts` and
    `ignore_port_in_host_matching` serializes as its name field, each VirtualHost's own bytes
    as a length-delimited field 2, then field 14, so the cached bytes are concatenated. Every
    virtual host used is put in `cache`. `host`: the table of that TLS host of the listener
    (a Route is in one table of a listener, so the cache's key needs no table).

    Its version is `config_version` of its virtual hosts' hashes, not the hash of the whole
    bytes, so that a splice (`routesplice.py`) hashes only the virtual hosts it changed."""
    return configuration_pieces(gateway, spec, routes, earlier, cache, host).resource


@dataclass(slots=True)
class ConfigPieces:
    """A RouteConfiguration `route_configuration_resource` made, and the pieces it joined, by
    served Route (what `routesplice.ConfigLayout` splices later edits into)."""

    resource: Resource
    routes: tuple[Route, ...]  # served, in name order
    segments: list[bytes]  # each one's VirtualHost as field 2 (b"": it has none)
    claims: list[tuple[tuple[str, ...], frozenset[str]]]  # each one's domains, clusters
    hashes: list[int]  # each one's `piece_hash` (0: none)
    own: bool  # every virtual host is its Route's own: no Route lost a domain to another


def configuration_pieces(gateway: Gateway, spec: GatewayListener, routes: Iterable[Route],
                         earlier: Mapping[tuple[int, int], VirtualHostBytes],
                         cache: VirtualHostCache, host: TlsHost | None = None,
                         ) -> ConfigPieces:
    """`route_configuration_resource`, with its pieces."""
    name = table_name(gateway, spec, host)
    port, scheme = spec.port, scheme_of(spec)
    head = _length_delimited(1, name.encode("utf-8")) if name else b""
    served = tuple(sorted((r for r in routes if in_table(r, spec, host)),
                          key=lambda r: r.name))
    segments: list[bytes] = []
    claims: list[tuple[tuple[str, ...], frozenset[str]]] = []
    hashes: list[int] = []
    clusters: set[str] = set()
    taken: set[str] = set()
    total = count = 0
    own_only = True
    for route in served:
        key = (id(route), vhost_key(spec))
        found = cache.get(key) or earlier.get(key)
        if found is None or found[0] is not route:
            own = tuple(domains(route.hosts, port))
            found = (route, own, b"", frozenset(), 0)
            if own and not taken.intersection(own):
                vhost = virtual_host(route, port, set(), scheme)
                assert vhost is not None
                found = serialized_virtual_host(route, own, vhost)
        route_domains = found[1]
        if not route_domains:
            segments.append(b"")
            claims.append(((), frozenset()))
            hashes.append(0)
            continue
        if taken.intersection(route_domains):  # some domain is taken: built here, not cached
            own_only = False
            vhost = virtual_host(route, port, taken, scheme)
            if vhost is not None:
                data = vhost.SerializeToString(deterministic=True)
                segments.append(_length_delimited(2, data))
                total += piece_hash(data)
                count += 1
                clusters.update(_vhost_clusters(vhost))
            continue
        cache[key] = found
        taken.update(route_domains)
        segments.append(_length_delimited(2, found[2]))
        claims.append((found[1], found[3]))
        hashes.append(found[4])
        total += found[4]
        count += 1
        clusters.update(found[3])
    # field 14 follows the virtual hosts (field 2)
    body = b"".join((head, *segments, _IGNORE_PORT_IN_HOST_MATCHING))
    resource = Resource(types.ROUTE, name, body, References(clusters=frozenset(clusters)),
                        config_version(head, total, count, len(body)))
    return ConfigPieces(resource, served, segments, claims, hashes, own_only)


def config_version(head: bytes, total: int, count: int, length: int) -> str:
    """The version of a RouteConfiguration `route_configuration_resource` makes: `head` (its
    name field) and field 14 around `count` virtual hosts whose bytes' `piece_hash`es sum to
    `total` (they come sorted by name, which each one's bytes begin with: `pieces_version`)."""
    return pieces_version(head + _IGNORE_PORT_IN_HOST_MATCHING, total, count, length)


# RouteConfiguration.ignore_port_in_host_matching (field 14, a varint) = true, as serialized.
_IGNORE_PORT_IN_HOST_MATCHING = bytes([14 << 3 | 0, 1])


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _vhost_clusters(vhost: VirtualHost) -> frozenset[str]:
    """The clusters a virtual host's route entries name (as `deps._route_config_refs`)."""
    config = RouteConfiguration()
    config.virtual_hosts.append(vhost)
    return references_of(types.ROUTE, config).clusters


def virtual_host(route: Route, port: int, taken: set[str],
                 scheme: str = "http") -> VirtualHost | None:
    """The virtual host of `route` on a listener at `port` (of `scheme`); None when every
    domain is taken.

    Envoy rejects a whole route configuration in which two virtual hosts share a domain. The
    policy loader refuses two Routes claiming one host on one listener; should a model built
    some other way hold them, the Route first by name keeps the domain, so the rest of the
    configuration still reaches Envoy instead of being NACKed as a whole.
    """
    own = [d for d in domains(route.hosts, port) if d not in taken]
    if not own:
        return None
    taken.update(own)
    vhost = VirtualHost(name=names.virtual_host(route.name), domains=own,
                        routes=list(route_entries(route, (port, scheme))))
    httpfilters.add_virtual_host_configs(vhost, route)
    return vhost


def domains(hosts: Sequence[str], port: int) -> list[str]:
    """The route's hosts. A `Host` header's port, whatever it is (the listener's, or another
    one a proxy or NAT in front put there), is not compared: the gateway's route configurations
    set `ignore_port_in_host_matching`. Sorted: Envoy picks exact names before wildcards
    whatever the order, so order carries no meaning. (`port` is kept for the cache key.)"""
    del port
    return sorted(set(hosts))


# The listener a route configuration is served on: (port, scheme); None: unknown (a sidecar's).
ListenerSide = tuple[int, str] | None


def route_entries(route: Route, listener: ListenerSide = None) -> Iterable[EnvoyRoute]:
    """Every rule's entries, in the order written: one per match of the rule."""
    for index, rule in enumerate(route.rules):
        several = len(rule.matches) > 1
        for match_index, match in enumerate(rule.matches):
            name = names.route_entry(route.name, index, match_index if several else None)
            entry = route_entry(name, match, rule, listener)
            httpfilters.add_route_configs(entry, route, rule)  # CORS, faults, security
            basic_auth = rule.security.basic_auth or route.security.basic_auth
            if basic_auth is not None and basic_auth.strip:
                # The credentials stop here: the router removes them from what it forwards
                # (after the filters that read them).
                entry.request_headers_to_remove.append("authorization")
            yield from _header_chosen_mirrors(entry, rule)
            yield entry


def _header_chosen_mirrors(entry: EnvoyRoute, rule: Rule) -> Iterator[EnvoyRoute]:
    """A mirror whose Service a request header names: before `entry`, one copy of it per
    candidate, matching that header's value too and mirroring to that candidate's cluster.
    Envoy's own `cluster_header` would copy to any cluster the view holds (an authorization or
    JWKS service, a backend behind another route's login), so the client may only pick among
    the candidates. Per-route filter configs are the entry's own (the JWT requirement keeps
    its name), so the copies behave as the entry does in everything but the mirror."""
    chosen = next((m for m in rule.mirrors if m.from_header is not None), None)
    if chosen is None or not entry.HasField("route"):
        return
    assert chosen.from_header is not None
    for candidate in chosen.candidates:
        copy = EnvoyRoute()
        copy.CopyFrom(entry)
        copy.name = names.header_chosen_mirror(entry.name, candidate)
        matchers = [*copy.match.headers, HeaderMatcher(
            name=chosen.from_header, string_match=StringMatcher(exact=candidate))]
        del copy.match.headers[:]
        copy.match.headers.extend(sorted(matchers, key=lambda m: m.name))
        copy.route.request_mirror_policies.append(RouteAction.RequestMirrorPolicy(
            cluster=names.cluster(candidate, None),
            runtime_fraction=RuntimeFractionalPercent(
                default_value=fractional_percent(chosen.percentage))))
        yield copy


def route_entry(name: str, match: Match, rule: Rule,
                listener: ListenerSide = None) -> EnvoyRoute:
    entry = EnvoyRoute(name=name, match=route_match(match))
    if rule.redirect is not None:
        entry.redirect.CopyFrom(redirect_action(rule.redirect, listener))
    elif rule.direct_response is not None:
        entry.direct_response.CopyFrom(direct_response_action(rule.direct_response))
    else:
        entry.route.CopyFrom(route_action(rule))
    _add_header_ops(entry, rule.request_headers, rule.response_headers)
    return entry


# ---- matches ------------------------------------------------------------------------------------


def route_match(match: Match) -> RouteMatch:
    result = RouteMatch()
    path = match.path
    inverted: list[HeaderMatcher] = []
    if path is not None and match.ignore_case and path.kind == "regex":
        # Envoy's case_sensitive is not read for regexes: RE2's own flag says it.
        path = replace(path, value=f"(?i){path.value}")
    if path is not None and path.invert:  # every path, then :path must not match
        inverted.append(inverted_path_matcher(path, ignore_case=match.ignore_case))
        path = None
    elif path is not None and match.ignore_case and path.kind != "regex":
        result.case_sensitive.value = False
    if path is not None and path.kind == "prefix" and match.whole_segments \
            and path.value.rstrip("/"):
        # Envoy's segment-aware prefix is written without a trailing slash ("/v2/" and "/v2"
        # match the same paths); "/" is every path, a plain prefix.
        result.path_separated_prefix = path.value.rstrip("/")
    elif path is None or path.kind == "prefix":
        result.prefix = "/" if path is None else path.value
    elif path.kind == "exact":
        result.path = path.value
    else:
        result.safe_regex.CopyFrom(RegexMatcher(regex=path.value))
    matchers = [*inverted, *_method_matchers(match.methods),
                *(header_matcher(name, how) for name, how in match.headers),
                *(m for name, how in match.query if (m := _absent_query_matcher(name, how)))]
    # All must hold, so their order means nothing: sorted by name (stable for repeats).
    result.headers.extend(sorted(matchers, key=lambda m: m.name))
    result.query_parameters.extend(
        sorted((query_matcher(name, how) for name, how in match.query if how.kind != "absent"),
               key=lambda m: m.name))
    return result


def _method_matchers(methods: Sequence[str]) -> list[HeaderMatcher]:
    unique = sorted(set(methods))
    if not unique:
        return []
    if len(unique) == 1:
        return [HeaderMatcher(name=":method", string_match=StringMatcher(exact=unique[0]))]
    # Envoy's safe_regex matches the whole value, so a plain alternation needs no anchors.
    alternation = "|".join(re2_literal(method) for method in unique)
    return [HeaderMatcher(name=":method",
                          string_match=StringMatcher(safe_regex=RegexMatcher(regex=alternation)))]






def _absent_query_matcher(name: str, how: StringMatch) -> HeaderMatcher | None:
    """Envoy's query parameter matcher cannot be inverted, so "absent" is said on `:path`
    (which holds the query string): it must not have `name` as a parameter."""
    if how.kind != "absent":
        return None
    has_parameter = re2text.query_parameter_present(name)
    return HeaderMatcher(name=":path", invert_match=True,
                         string_match=StringMatcher(safe_regex=RegexMatcher(regex=has_parameter)))






# ---- actions ------------------------------------------------------------------------------------


def route_action(rule: Rule) -> RouteAction:
    action = RouteAction()
    _set_backends(action, rule.backends)
    if any(not b.resolved and b.unresolved_status == 500 for b in rule.backends):
        # The share of an unresolved backend (a cluster never made) is answered 500 (else
        # Envoy's default for a missing cluster, 503).
        action.cluster_not_found_response_code = RouteAction.INTERNAL_SERVER_ERROR
    rewrite = rule.rewrite_path
    if rewrite is not None and rewrite.prefix is not None:
        action.prefix_rewrite = rewrite.prefix
    elif rewrite is not None and rewrite.regex is not None:
        action.regex_rewrite.CopyFrom(RegexMatchAndSubstitute(
            pattern=RegexMatcher(regex=rewrite.regex), substitution=rewrite.substitution))
    if rule.rewrite_host is not None:
        action.host_rewrite_literal = rule.rewrite_host
    if rule.timeout is not None:
        # Set even when 0: an explicit 0s is how Envoy is told "no timeout".
        action.timeout.CopyFrom(duration(rule.timeout))
    if rule.idle_timeout is not None:
        action.idle_timeout.CopyFrom(duration(rule.idle_timeout))
    if rule.grpc_max_timeout is not None:
        action.max_stream_duration.grpc_timeout_header_max.CopyFrom(
            duration(rule.grpc_max_timeout))
    if rule.retries is not None:
        action.retry_policy.CopyFrom(retry_policy(rule.retries))
    # A mirror chosen by a request header is on copies of the entry (_header_chosen_mirrors).
    action.request_mirror_policies.extend(mirror_policy(m) for m in rule.mirrors
                                          if m.from_header is None)
    action.hash_policy.extend(hash_policy(h) for h in rule.hash_on)
    if rule.websocket:  # a route's upgrade config holds whether or not the listener allows it
        action.upgrade_configs.append(RouteAction.UpgradeConfig(upgrade_type="websocket"))
    return action


def _set_backends(action: RouteAction, backends: Sequence[Backend]) -> None:
    if len(backends) == 1 and backends[0].request_headers is None \
            and backends[0].response_headers is None:
        action.cluster = _cluster_of(backends[0])
        return
    # Several backends split traffic by their weights, as written (order kept, so the config
    # reads like the policy); a backend's own header changes sit on its entry.
    action.weighted_clusters.CopyFrom(WeightedCluster(clusters=[
        _cluster_weight(b) for b in backends]))


def _cluster_weight(backend: Backend) -> WeightedCluster.ClusterWeight:
    entry = WeightedCluster.ClusterWeight(name=_cluster_of(backend),
                                          weight=UInt32Value(value=backend.weight))
    if backend.request_headers is not None:
        entry.request_headers_to_add.extend(header_options(backend.request_headers))
        entry.request_headers_to_remove.extend(backend.request_headers.remove)
    if backend.response_headers is not None:
        entry.response_headers_to_add.extend(header_options(backend.response_headers))
        entry.response_headers_to_remove.extend(backend.response_headers.remove)
    return entry


def _cluster_of(backend: Backend) -> str:
    if not backend.resolved:
        return names.unresolved_cluster(backend.service)
    return names.cluster(backend.service, backend.subset)


def retry_policy(retries: Retries) -> RetryPolicy:
    # HTTP and gRPC retry conditions share Envoy's retry_on; duplicates are dropped, order kept.
    policy = RetryPolicy(retry_on=",".join(dict.fromkeys(retries.on)),
                         num_retries=UInt32Value(value=retries.attempts))
    if retries.per_try_timeout is not None:
        policy.per_try_timeout.CopyFrom(duration(retries.per_try_timeout))
    if retries.backoff is not None:
        policy.retry_back_off.base_interval.CopyFrom(duration(retries.backoff.base))
        if retries.backoff.max is not None:
            policy.retry_back_off.max_interval.CopyFrom(duration(retries.backoff.max))
    policy.retriable_status_codes.extend(retries.retriable_status_codes)
    policy.retriable_headers.extend(header_matcher(name, how)
                                    for name, how in retries.retriable_headers)
    if retries.avoid_same_host:
        policy.retry_host_predicate.append(RetryPolicy.RetryHostPredicate(
            name=PREVIOUS_HOSTS, typed_config=pack(PreviousHostsPredicate())))
        policy.host_selection_retry_max_attempts = HOST_SELECTION_ATTEMPTS
    return policy


def mirror_policy(mirror: Mirror) -> RouteAction.RequestMirrorPolicy:
    # Envoy sends the copy without waiting for, or looking at, its answer; the copy's Host gets
    # "-shadow" appended.
    fraction = RuntimeFractionalPercent(default_value=fractional_percent(mirror.percentage))
    return RouteAction.RequestMirrorPolicy(
        cluster=names.cluster(mirror.service, mirror.subset), runtime_fraction=fraction)


def hash_policy(hash_on: HashOn) -> RouteAction.HashPolicy:
    # Terminal: the first input the request has decides alone (docs/policy.md, "tried in the
    # order written"); without it Envoy would combine every input present into one hash.
    policy = RouteAction.HashPolicy(terminal=True)
    if hash_on.kind == "header":
        policy.header.header_name = hash_on.name
    elif hash_on.kind == "query":
        policy.query_parameter.name = hash_on.name
    elif hash_on.kind == "source_ip":
        policy.connection_properties.source_ip = True
    else:
        policy.cookie.name = hash_on.name
        if hash_on.ttl is not None:  # with a ttl, Envoy sets the cookie when it is missing
            policy.cookie.ttl.CopyFrom(duration(hash_on.ttl))
        if hash_on.path is not None:
            policy.cookie.path = hash_on.path
    return policy












def redirect_action(redirect: Redirect, listener: ListenerSide = None) -> RedirectAction:
    action = RedirectAction(response_code=_REDIRECT_CODES[redirect.status])
    if redirect.scheme is not None:
        action.scheme_redirect = redirect.scheme
    if redirect.host is not None:
        action.host_redirect = redirect.host
    port = redirect.port if redirect.port is not None else _derived_port(redirect, listener)
    if port is not None:
        action.port_redirect = port
    if redirect.path is not None:
        action.path_redirect = redirect.path
    elif redirect.prefix is not None:
        action.prefix_rewrite = redirect.prefix
    elif redirect.regex is not None:
        action.regex_rewrite.CopyFrom(RegexMatchAndSubstitute(
            pattern=RegexMatcher(regex=redirect.regex), substitution=redirect.substitution))
    if redirect.strip_query:
        action.strip_query = True
    return action


def _derived_port(redirect: Redirect, listener: ListenerSide) -> int | None:
    """The port of a redirect that names none (Envoy's port_redirect; None: Envoy's own way).

    Envoy keeps the Host's port when the host stays, and drops it when `host_redirect` is set
    (issue 14, bug 4): so a new host gets the port the request came to, the listener's, unless
    that is its scheme's default. A new scheme goes to its default port (Gateway API; Envoy
    would keep the old port, as in https://a.example:8080), written out unless the host
    changes too (Envoy then drops the port already). `port_from: scheme` always sends
    the scheme's default port (Istio's FROM_PROTOCOL_DEFAULT).
    """
    port, scheme = listener if listener is not None else (None, "http")
    target = redirect.scheme or scheme
    if redirect.port_from == "scheme":
        # A new host already loses the port; otherwise say the default one.
        return None if redirect.host is not None else DEFAULT_PORTS[target]
    if target != scheme:  # a new host already loses the port: the scheme's default
        return None if redirect.host is not None else DEFAULT_PORTS[target]
    if redirect.host is not None and port is not None and port != DEFAULT_PORTS[scheme]:
        return port
    return None


def direct_response_action(response: DirectResponse) -> DirectResponseAction:
    action = DirectResponseAction(status=response.status)
    if isinstance(response.body, bytes):  # not text: sent byte for byte
        action.body.CopyFrom(DataSource(inline_bytes=response.body))
    elif response.body and response.formatted:  # command operators replaced per request
        action.body_format.text_format_source.CopyFrom(DataSource(inline_string=response.body))
    elif response.body:  # as written: Envoy does not format `body`
        action.body.CopyFrom(DataSource(inline_string=response.body))
    return action


# ---- header changes -----------------------------------------------------------------------------


def _add_header_ops(entry: EnvoyRoute, request: HeaderOps, response: HeaderOps) -> None:
    entry.request_headers_to_add.extend(header_options(request))
    entry.request_headers_to_remove.extend(request.remove)
    entry.response_headers_to_add.extend(header_options(response))
    entry.response_headers_to_remove.extend(response.remove)


def header_options(ops: HeaderOps) -> list[HeaderValueOption]:
    """`set`s first, then `add`s, each in the order written: Envoy applies them in list order,
    so a header both set and added ends with the set value plus the added ones."""
    return [
        *(HeaderValueOption(header=HeaderValue(key=k, value=v), append_action=_SET)
          for k, v in ops.set),
        *(HeaderValueOption(header=HeaderValue(key=k, value=v), append_action=_ADD)
          for k, v in ops.add),
    ]

