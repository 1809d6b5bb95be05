"""Request-level security: a Route's (and a rule's) jwt, api_keys, basic_auth, ext_authz,
authorization and rate_limit as Envoy HTTP filters.

Each feature is one HTTP filter in the listener's chain, present only on listeners with a Route
that uses it, disabled by default (`HttpFilter.disabled`) and switched on per virtual host
(a Route's setting) or per route entry (a rule's, which replaces the Route's for that filter)
by `typed_per_filter_config`. Order, after CORS (a preflight carries no credentials) and before
fault injection and the router:

    cors -> local_ratelimit -> jwt_authn -> basic_auth -> api_key_auth -> rbac (DENY)
         -> rbac (ALLOW) -> ext_authz (one per authorization service) -> fault -> router

Rate limiting comes first so that credential guessing is limited too; authorization comes after
the authentications whose results (JWT claims) it reads; the remote authorization service is
asked last, for requests nothing local refused.

Two filters need listener-level settings that depend on the Routes: jwt_authn's providers (and
requirements, named after the Route or route entry that uses them) and ext_authz's service
(one filter per distinct service and settings). So the listener is built from its Routes here
(`with_security_filters`), and changing them updates the listener. Pure, like every translator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from envoy.config.core.v3.base_pb2 import DataSource, RuntimeFractionalPercent
from envoy.config.core.v3.config_source_pb2 import ApiVersion
from envoy.config.core.v3.grpc_service_pb2 import GrpcService
from envoy.config.core.v3.http_uri_pb2 import HttpUri
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.rbac.v3.rbac_pb2 import RBAC as RbacRules
from envoy.config.rbac.v3.rbac_pb2 import Permission, Policy, Principal
from envoy.config.route.v3.route_components_pb2 import RateLimit as RouteRateLimit
from envoy.config.route.v3.route_components_pb2 import Route as EnvoyRoute
from envoy.config.route.v3.route_components_pb2 import VirtualHost
from envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import (
    LocalRateLimitDescriptor,
    RateLimitDescriptor,
)
from envoy.extensions.filters.http.api_key_auth.v3.api_key_auth_pb2 import (
    ApiKeyAuth,
    ApiKeyAuthPerRoute,
    Credential,
    KeySource,
)
from envoy.extensions.filters.http.basic_auth.v3.basic_auth_pb2 import (
    BasicAuth,
    BasicAuthPerRoute,
)
from envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2 import (
    ExtAuthz,
    ExtAuthzPerRoute,
    HttpService,
)
from envoy.extensions.filters.http.jwt_authn.v3.config_pb2 import (
    JwtAuthentication,
    JwtClaimToHeader,
    JwtProvider,
    JwtRequirement,
    JwtRequirementOrList,
    PerRouteConfig,
    RemoteJwks,
)
from envoy.extensions.filters.http.local_ratelimit.v3.local_rate_limit_pb2 import LocalRateLimit
from envoy.extensions.filters.http.rbac.v3.rbac_pb2 import RBAC, RBACPerRoute
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.type.matcher.v3.metadata_pb2 import MetadataMatcher
from envoy.type.matcher.v3.path_pb2 import PathMatcher
from envoy.type.matcher.v3.regex_pb2 import RegexMatcher
from envoy.type.matcher.v3.string_pb2 import ListStringMatcher, StringMatcher
from envoy.type.matcher.v3.value_pb2 import ListMatcher, ValueMatcher
from envoy.type.v3.percent_pb2 import FractionalPercent
from envoy.type.v3.token_bucket_pb2 import TokenBucket
from google.protobuf.any_pb2 import Any
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import BoolValue, UInt32Value

from meshpilot.ir.model import (
    ApiKeys,
    Authorization,
    AuthzRule,
    Jwt,
    RateLimit,
    Route,
    Security,
    StringMatch,
)
from meshpilot.ir.model import (
    ExtAuthz as ExtAuthzSpec,
)
from meshpilot.translators import names
from meshpilot.translators.protos import duration

LOCAL_RATELIMIT = "envoy.filters.http.local_ratelimit"
JWT_AUTHN = "envoy.filters.http.jwt_authn"
BASIC_AUTH = "envoy.filters.http.basic_auth"
API_KEY_AUTH = "envoy.filters.http.api_key_auth"
RBAC_DENY = "envoy.filters.http.rbac/deny"
RBAC_ALLOW = "envoy.filters.http.rbac/allow"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")
CORS = "envoy.filters.http.cors"
# Where a validated token's payload is kept for the authorization filter (claims).
JWT_PAYLOAD = "payload"
RATE_LIMIT_STATS = "http_local_rate_limiter"
# Distinct clients tracked per rate limit (least recently seen forgotten first).
MAX_CLIENTS = 10_000
RATE_LIMIT_KEY = "client"


# ---- per virtual host and per route entry -------------------------------------------------------


def add_virtual_host_security(vhost: VirtualHost, route: Route) -> None:
    _add(vhost.typed_per_filter_config, route.security, names.virtual_host(route.name))


def add_route_security(entry: EnvoyRoute, route: Route, security: Security) -> None:
    """A rule's settings (on each of its entries), replacing the Route's of the same filter."""
    if not security:
        return
    _add(entry.typed_per_filter_config, security, entry.name)
    # A different ext_authz service than the Route's: the Route's filter is switched off.
    if security.ext_authz is not None and route.security.ext_authz is not None:
        own, routes = ext_authz_filter(security.ext_authz), ext_authz_filter(
            route.security.ext_authz)
        if own != routes:
            entry.typed_per_filter_config[routes].CopyFrom(_pack(ExtAuthzPerRoute(
                disabled=True)))
    if security.authorization is not None:  # replaces both of the Route's policies
        for name in (RBAC_DENY, RBAC_ALLOW):
            if name not in entry.typed_per_filter_config:
                entry.typed_per_filter_config[name].CopyFrom(_pack(RBACPerRoute()))


def _add(configs: object, security: Security, requirement: str) -> None:
    assert hasattr(configs, "__getitem__")
    if security.rate_limit is not None:
        configs[LOCAL_RATELIMIT].CopyFrom(_pack(local_rate_limit(security.rate_limit)))  # type: ignore[index]
    if security.jwt is not None:
        configs[JWT_AUTHN].CopyFrom(_pack(PerRouteConfig(requirement_name=requirement)))  # type: ignore[index]
    if security.basic_auth is not None:
        configs[BASIC_AUTH].CopyFrom(_pack(BasicAuthPerRoute(  # type: ignore[index]
            users=DataSource(filename=security.basic_auth.users_file))))
    if security.api_keys is not None:
        configs[API_KEY_AUTH].CopyFrom(_pack(api_key_auth(security.api_keys)))  # type: ignore[index]
    for policy in security.authorization or ():
        name = RBAC_DENY if policy.action == "DENY" else RBAC_ALLOW
        configs[name].CopyFrom(_pack(RBACPerRoute(rbac=rbac(policy))))  # type: ignore[index]
    if security.ext_authz is not None:
        configs[ext_authz_filter(security.ext_authz)].CopyFrom(  # type: ignore[index]
            _pack(ExtAuthzPerRoute(check_settings={})))


# ---- the listener's filters ---------------------------------------------------------------------


def security_filters(routes: Iterable[Route]) -> list[hcm.HttpFilter]:
    """The security filters a listener serving `routes` needs, in chain order (none if no
    Route uses any)."""
    routes = list(routes)
    used = [s for route in routes for s in _securities(route)]
    chain: list[hcm.HttpFilter] = []

    def add(name: str, config: Message) -> None:
        chain.append(hcm.HttpFilter(name=name, typed_config=_pack(config), disabled=True))

    if any(s.rate_limit for s in used):
        add(LOCAL_RATELIMIT, LocalRateLimit(stat_prefix=RATE_LIMIT_STATS))
    jwt = jwt_authentication(routes)
    if jwt.providers:
        add(JWT_AUTHN, jwt)
    basic = next((s.basic_auth for s in used if s.basic_auth), None)
    if basic is not None:  # Envoy wants users here too: the first file (every route names its own)
        add(BASIC_AUTH, BasicAuth(users=DataSource(filename=basic.users_file)))
    if any(s.api_keys for s in used):
        add(API_KEY_AUTH, ApiKeyAuth())
    policies = [p for s in used for p in s.authorization or ()]
    if any(p.action == "DENY" for p in policies):
        add(RBAC_DENY, RBAC())
    if any(p.action == "ALLOW" for p in policies):
        add(RBAC_ALLOW, RBAC())
    services = {ext_authz_filter(s.ext_authz): s.ext_authz for s in used if s.ext_authz}
    for name in sorted(services):
        add(name, ext_authz(services[name]))
    return chain


def with_security_filters(listener: Listener, routes: Iterable[Route]) -> Listener:
    """`listener` with the security filters of `routes` put into each HTTP connection
    manager's chain, right after CORS (or first). Unchanged when no Route uses security."""
    chain = security_filters(routes)
    if not chain:
        return listener
    for filter_chain in listener.filter_chains:
        for network_filter in filter_chain.filters:
            if network_filter.typed_config.type_url != HCM_TYPE:
                continue
            manager = hcm.HttpConnectionManager()
            network_filter.typed_config.Unpack(manager)
            existing = list(manager.http_filters)
            at = next((i + 1 for i, f in enumerate(existing) if f.name == CORS), 0)
            del manager.http_filters[:]
            manager.http_filters.extend([*existing[:at], *chain, *existing[at:]])
            network_filter.typed_config.CopyFrom(_pack(manager))
    return listener


def _securities(route: Route) -> Iterator[Security]:
    if route.security:
        yield route.security
    for rule in route.rules:
        if rule.security:
            yield rule.security


def services_of(route: Route) -> Iterator[str]:
    """The Services a Route's security calls (a JWKS server, an authorization service)."""
    for security in _securities(route):
        if security.jwt is not None:
            for provider in security.jwt.providers:
                if provider.jwks.service is not None:
                    yield provider.jwks.service
        if security.ext_authz is not None:
            yield security.ext_authz.service


# ---- jwt ----------------------------------------------------------------------------------------


def jwt_authentication(routes: Iterable[Route]) -> JwtAuthentication:
    """Every provider of the Routes (named `route/provider`) and one requirement per Route or
    rule with a jwt (named like its virtual host or route entry)."""
    config = JwtAuthentication()
    for route in routes:
        if route.security.jwt is not None:
            _add_jwt(config, route, route.security.jwt, names.virtual_host(route.name))
        for index, rule in enumerate(route.rules):
            if rule.security.jwt is None:
                continue
            several = len(rule.matches) > 1
            for match_index in range(len(rule.matches)):
                entry = names.route_entry(route.name, index, match_index if several else None)
                _add_jwt(config, route, rule.security.jwt, entry)
    return config


def _add_jwt(config: JwtAuthentication, route: Route, jwt: Jwt, requirement: str) -> None:
    providers = []
    for spec in jwt.providers:
        name = f"{route.name}/{spec.name}"
        provider = JwtProvider(issuer=spec.issuer or "", audiences=list(spec.audiences),
                               payload_in_metadata=JWT_PAYLOAD,
                               claim_to_headers=[JwtClaimToHeader(header_name=h, claim_name=c)
                                                 for c, h in spec.forward_claims],
                               # a forwarded claim may be matched on: select the route again
                               clear_route_cache=bool(spec.forward_claims))
        if spec.jwks.file is not None:
            provider.local_jwks.CopyFrom(DataSource(filename=spec.jwks.file))
        elif spec.jwks.inline is not None:
            provider.local_jwks.CopyFrom(DataSource(inline_string=spec.jwks.inline))
        else:
            assert spec.jwks.uri is not None and spec.jwks.service is not None
            remote = RemoteJwks(http_uri=HttpUri(uri=spec.jwks.uri,
                                                 cluster=names.cluster(spec.jwks.service),
                                                 timeout=duration(5.0)))
            if spec.jwks.cache is not None:
                remote.cache_duration.CopyFrom(duration(spec.jwks.cache))
            provider.remote_jwks.CopyFrom(remote)
        if name in config.providers and config.providers[name] != provider:
            # The same provider name with other settings on a rule: keep both apart.
            name = f"{requirement}/{spec.name}"
        config.providers[name].CopyFrom(provider)
        providers.append(name)
    options = [JwtRequirement(provider_name=p) for p in providers]
    if not jwt.required:
        options.append(JwtRequirement(allow_missing=Empty()))
    if len(options) == 1:
        config.requirement_map[requirement].CopyFrom(options[0])
    else:
        config.requirement_map[requirement].CopyFrom(JwtRequirement(
            requires_any=JwtRequirementOrList(requirements=options)))


# ---- api keys, rate limits, ext_authz -----------------------------------------------------------


def api_key_auth(keys: ApiKeys) -> ApiKeyAuthPerRoute:
    source = KeySource(**{keys.source: keys.name})
    return ApiKeyAuthPerRoute(
        credentials=[Credential(key=key, client=client) for client, key in keys.keys],
        key_sources=[source])


def _percent_100() -> RuntimeFractionalPercent:
    return RuntimeFractionalPercent(default_value=FractionalPercent(
        numerator=100, denominator=FractionalPercent.HUNDRED))


def local_rate_limit(limit: RateLimit) -> LocalRateLimit:
    """A token bucket of `requests` tokens refilled every `per`: one for the route, or one per
    client (host, header value or source address) up to MAX_CLIENTS, via dynamic descriptors.
    A request without the client attribute (no such header) shares the route's bucket."""
    def bucket() -> TokenBucket:
        return TokenBucket(max_tokens=limit.requests,
                           tokens_per_fill=UInt32Value(value=limit.requests),
                           fill_interval=duration(limit.per))

    config = LocalRateLimit(
        stat_prefix=RATE_LIMIT_STATS, token_bucket=bucket(),
        filter_enabled=_percent_100(), filter_enforced=_percent_100(),
        enable_x_ratelimit_headers=LocalRateLimit.DESCRIPTOR.fields_by_name[
            "enable_x_ratelimit_headers"].enum_type.values_by_name["DRAFT_VERSION_03"].number)
    if limit.by == "route":
        return config
    action = RouteRateLimit.Action()
    if limit.by == "source_ip":
        action.remote_address.SetInParent()
        key = "remote_address"
    else:
        action.request_headers.header_name = limit.header if limit.by == "header" \
            else ":authority"
        action.request_headers.descriptor_key = key = RATE_LIMIT_KEY
    config.rate_limits.append(RouteRateLimit(actions=[action]))
    config.descriptors.append(LocalRateLimitDescriptor(
        entries=[RateLimitDescriptor.Entry(key=key, value="")], token_bucket=bucket()))
    config.always_consume_default_token_bucket.CopyFrom(BoolValue(value=False))
    config.max_dynamic_descriptors.CopyFrom(UInt32Value(value=MAX_CLIENTS))
    return config


def ext_authz_filter(spec: ExtAuthzSpec) -> str:
    """The filter's name: one per authorization service and settings."""
    settings = f"{spec.protocol}/{spec.timeout}/{spec.failure_mode_allow}"
    digest = hashlib.blake2b(settings.encode(), digest_size=4).hexdigest()
    return f"{EXT_AUTHZ}/{spec.service}/{digest}"


def ext_authz(spec: ExtAuthzSpec) -> ExtAuthz:
    cluster = names.cluster(spec.service)
    # Every request header goes to the service (Envoy's default for HTTP is only a few).
    config = ExtAuthz(failure_mode_allow=spec.failure_mode_allow,
                      transport_api_version=ApiVersion.V3,
                      allowed_headers=ListStringMatcher(patterns=[StringMatcher(
                          safe_regex=RegexMatcher(regex=".*"))]))
    if spec.protocol == "grpc":
        config.grpc_service.CopyFrom(GrpcService(
            envoy_grpc=GrpcService.EnvoyGrpc(cluster_name=cluster),
            timeout=duration(spec.timeout)))
    else:
        config.http_service.CopyFrom(HttpService(server_uri=HttpUri(
            uri=f"http://{spec.service}", cluster=cluster, timeout=duration(spec.timeout))))
    return config


# ---- authorization (RBAC, Istio's semantics) ----------------------------------------------------


def rbac(policy: Authorization) -> RBAC:
    """ALLOW: requests matching a rule pass, the rest are refused (no rules: all refused).
    DENY: requests matching a rule are refused (no rules: none)."""
    action = RbacRules.ALLOW if policy.action == "ALLOW" else RbacRules.DENY
    rules = RbacRules(action=action)
    for index, rule in enumerate(policy.rules):
        rules.policies[f"rules[{index}]"].CopyFrom(_policy(rule))
    return RBAC(rules=rules)


def _policy(rule: AuthzRule) -> Policy:
    permissions: list[Permission] = []
    if rule.paths and not any(p.kind == "present" for p in rule.paths):  # "*": any path
        permissions.append(_any_permission([Permission(url_path=PathMatcher(
            path=_string_matcher(p))) for p in rule.paths]))
    if rule.methods:
        permissions.append(_any_permission([Permission(header=_header(":method", m))
                                            for m in rule.methods]))
    for name, how in rule.headers:
        permissions.append(Permission(header=_header_matcher(name, how)))
    principals: list[Principal] = []
    if rule.source_ips:
        principals.append(_any_principal([_cidr_principal(c) for c in rule.source_ips]))
    for claim, value in rule.claims:
        principals.append(_claim_principal(claim, value))
    if rule.principals:  # a sidecar's `from`: SPIFFE IDs by now (translators/mtls.py)
        principals.append(_any_principal([_authenticated_principal(p)
                                          for p in rule.principals]))
    return Policy(
        permissions=[_all_permission(permissions) if permissions else Permission(any=True)],
        principals=[_all_principal(principals) if principals else Principal(any=True)])


def _string_matcher(how: StringMatch) -> StringMatcher:
    if how.kind == "prefix":
        return StringMatcher(prefix=how.value)
    return StringMatcher(exact=how.value)


def _header(name: str, value: str):  # type: ignore[no-untyped-def]
    from envoy.config.route.v3.route_components_pb2 import HeaderMatcher

    return HeaderMatcher(name=name, string_match=StringMatcher(exact=value))


def _header_matcher(name: str, how: StringMatch):  # type: ignore[no-untyped-def]
    from meshpilot.translators.routes import header_matcher

    return header_matcher(name, how)


def _any_permission(items: list[Permission]) -> Permission:
    return items[0] if len(items) == 1 else Permission(or_rules=Permission.Set(rules=items))


def _all_permission(items: list[Permission]) -> Permission:
    return items[0] if len(items) == 1 else Permission(and_rules=Permission.Set(rules=items))


def _any_principal(items: list[Principal]) -> Principal:
    return items[0] if len(items) == 1 else Principal(or_ids=Principal.Set(ids=items))


def _all_principal(items: list[Principal]) -> Principal:
    return items[0] if len(items) == 1 else Principal(and_ids=Principal.Set(ids=items))


def _cidr_principal(cidr: str) -> Principal:
    address, _, length = cidr.partition("/")
    principal = Principal()
    principal.direct_remote_ip.address_prefix = address
    principal.direct_remote_ip.prefix_len.value = int(length)
    return principal


def _authenticated_principal(spiffe_id: str) -> Principal:
    """The peer certificate's URI SAN is exactly `spiffe_id` (mTLS in the mesh)."""
    principal = Principal()
    principal.authenticated.principal_name.exact = spiffe_id
    return principal


def _claim_principal(claim: str, value: str) -> Principal:
    """The claim equals `value`, or is a list holding it (Istio's request.auth.claims)."""
    def matcher(value_matcher: ValueMatcher) -> Principal:
        principal = Principal()
        principal.sourced_metadata.metadata_matcher.CopyFrom(MetadataMatcher(
            filter=JWT_AUTHN, path=[MetadataMatcher.PathSegment(key=JWT_PAYLOAD),
                                    MetadataMatcher.PathSegment(key=claim)],
            value=value_matcher))
        return principal

    exact = ValueMatcher(string_match=StringMatcher(exact=value))
    return _any_principal([matcher(exact),
                           matcher(ValueMatcher(list_match=ListMatcher(one_of=exact)))])


def _pack(message: Message) -> Any:
    packed = Any()
    packed.Pack(message, deterministic=True)
    return packed
