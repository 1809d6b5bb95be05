"""JWT authentication: a Route's or a rule's `jwt`, by Envoy's jwt_authn filter.

On a gateway listener with a Route that uses it. Unlike most filters its listener-level config
depends on the Routes: every provider (named `route/provider`) and one requirement per Route or
rule (named like its virtual host or route entry), which the virtual host or entry then selects
by name. A remote JWKS is fetched through its Service's cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3.base_pb2 import DataSource
from envoy.config.core.v3.http_uri_pb2 import HttpUri
from envoy.extensions.filters.http.jwt_authn.v3.config_pb2 import (
    JwtAuthentication,
    JwtClaimToHeader,
    JwtProvider,
    JwtRequirement,
    JwtRequirementOrList,
    PerRouteConfig,
    RemoteJwks,
)
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message

from meshpilot.ir.model import Jwt, Route, Rule, Security
from meshpilot.translators import names
from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFeature,
    HttpFilter,
    http_filter,
    security_inputs,
)
from meshpilot.translators.protos import duration

JWT_AUTHN = "envoy.filters.http.jwt_authn"
# Where a validated token's payload is kept for the authorization filter (claims).
JWT_PAYLOAD = "payload"


class JwtFeature(HttpFeature):
    route_inputs = staticmethod(security_inputs)

    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        if chain.inbound_jwt is not None:  # a sidecar's: its inbound routes select it
            name, jwt = chain.inbound_jwt
            inbound = JwtAuthentication()
            _add_jwt(inbound, name, jwt, name)
            return [http_filter(JWT_AUTHN, inbound, disabled=True)]
        config = jwt_authentication(chain.routes)
        return [http_filter(JWT_AUTHN, config, disabled=True)] if config.providers else []

    def virtual_host_config(self, route: Route) -> Mapping[str, Message]:
        return _select(route.security.jwt, names.virtual_host(route.name))

    def route_config(self, route: Route, rule: Rule, entry: str) -> Mapping[str, Message]:
        return _select(rule.security.jwt, entry)

    def services(self, security: Security) -> Iterable[str]:
        if security.jwt is None:
            return ()
        return [p.jwks.service for p in security.jwt.providers if p.jwks.service is not None]


FEATURE = JwtFeature()


def inbound_config(jwt: Jwt | None, name: str) -> Mapping[str, Message]:
    """A sidecar's inbound virtual host `name`: its jwt's requirement (named like it)."""
    return _select(jwt, name)


def _select(jwt: Jwt | None, requirement: str) -> Mapping[str, Message]:
    return {} if jwt is None else {JWT_AUTHN: PerRouteConfig(requirement_name=requirement)}


def jwt_authentication(routes: Iterable[Route]) -> JwtAuthentication:
    """Every provider of the Routes (named `route/provider`) and one requirement per Route or
    rule with a jwt (named like its virtual host or route entry)."""
    config = JwtAuthentication()
    for route in routes:
        if route.security.jwt is not None:
            _add_jwt(config, route.name, route.security.jwt, names.virtual_host(route.name))
        for index, rule in enumerate(route.rules):
            if rule.security.jwt is None:
                continue
            several = len(rule.matches) > 1
            for match_index in range(len(rule.matches)):
                entry = names.route_entry(route.name, index, match_index if several else None)
                _add_jwt(config, route.name, rule.security.jwt, entry)
    return config


def _add_jwt(config: JwtAuthentication, owner: str, jwt: Jwt, requirement: str) -> None:
    providers = []
    for spec in jwt.providers:
        name = f"{owner}/{spec.name}"
        provider = JwtProvider(issuer=spec.issuer or "", audiences=list(spec.audiences),
                               payload_in_metadata=JWT_PAYLOAD,
                               claim_to_headers=[JwtClaimToHeader(header_name=h, claim_name=c)
                                                 for c, h in spec.forward_claims],
                               # a forwarded claim may be matched on: select the route again
                               clear_route_cache=bool(spec.forward_claims),
                               forward=spec.forward, from_params=list(spec.from_params),
                               from_cookies=list(spec.from_cookies),
                               forward_payload_header=spec.payload_header or "")
        for header, prefix in spec.from_headers:
            provider.from_headers.add(name=header, value_prefix=prefix)
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
