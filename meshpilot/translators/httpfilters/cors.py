"""CORS: a Route's `cors` policy, answered by Envoy's CORS filter.

In every chain that serves Routes (an empty config that does nothing until a virtual host
configures it); first in the table, since a preflight carries no credentials and must be
answered before any authentication runs.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.extensions.filters.http.cors.v3.cors_pb2 import Cors, CorsPolicy
from envoy.type.matcher.v3.regex_pb2 import RegexMatcher
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import BoolValue

from meshpilot.ir.model import Cors as CorsSpec
from meshpilot.ir.model import Route, Rule, StringMatch
from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFeature,
    HttpFilter,
    http_filter,
)

CORS = "envoy.filters.http.cors"


class CorsFeature(HttpFeature):
    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        return [http_filter(CORS, Cors())] if chain.serves_routes else []

    def virtual_host_config(self, route: Route) -> Mapping[str, Message]:
        return {} if route.cors is None else {CORS: cors_policy(route.cors)}

    def route_config(self, route: Route, rule: Rule, entry: str) -> Mapping[str, Message]:
        # A rule's policy replaces the Route's (the loader filled in what it inherits).
        return {} if rule.cors is None else {CORS: cors_policy(rule.cors)}


FEATURE = CorsFeature()


def cors_policy(cors: CorsSpec) -> CorsPolicy:
    policy = CorsPolicy(
        allow_origin_string_match=[_origin_matcher(origin) for origin in cors.allow_origins],
        allow_methods=",".join(cors.allow_methods),
        allow_headers=",".join(cors.allow_headers),
        expose_headers=",".join(cors.expose_headers),
        # A preflight from an origin not allowed is answered by Envoy, never forwarded (the
        # default forwards it to the backend, which may answer it permissively).
        forward_not_matching_preflights=BoolValue(value=False),
    )
    if cors.max_age is not None:
        policy.max_age = str(int(cors.max_age))
    if cors.allow_credentials is not None:
        policy.allow_credentials.CopyFrom(BoolValue(value=cors.allow_credentials))
    return policy


def _origin_matcher(origin: StringMatch) -> StringMatcher:
    if origin.kind == "exact":  # origins are compared ignoring case (scheme and host are)
        return StringMatcher(exact=origin.value, ignore_case=True)
    if origin.kind == "prefix":
        return StringMatcher(prefix=origin.value, ignore_case=True)
    return StringMatcher(safe_regex=RegexMatcher(regex=f"(?i){origin.value}"))
