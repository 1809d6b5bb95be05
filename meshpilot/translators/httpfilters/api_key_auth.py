"""API keys: a Route's or a rule's `api_keys`, by Envoy's api_key_auth filter.

On a gateway listener with a Route that uses it; the keys and where they are read from are
per virtual host or route entry (the listener-level config is empty).
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.extensions.filters.http.api_key_auth.v3.api_key_auth_pb2 import (
    ApiKeyAuth,
    ApiKeyAuthPerRoute,
    Credential,
    KeySource,
)
from google.protobuf.message import Message

from meshpilot.ir.model import ApiKeys, Route, Rule
from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFeature,
    HttpFilter,
    http_filter,
    securities,
    security_inputs,
)

API_KEY_AUTH = "envoy.filters.http.api_key_auth"


class ApiKeyFeature(HttpFeature):
    route_inputs = staticmethod(security_inputs)

    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        if not any(s.api_keys for route in chain.routes for s in securities(route)):
            return []
        return [http_filter(API_KEY_AUTH, ApiKeyAuth(), disabled=True)]

    def virtual_host_config(self, route: Route) -> Mapping[str, Message]:
        return _keys(route.security.api_keys)

    def route_config(self, route: Route, rule: Rule, entry: str) -> Mapping[str, Message]:
        return _keys(rule.security.api_keys)


FEATURE = ApiKeyFeature()


def _keys(keys: ApiKeys | None) -> Mapping[str, Message]:
    return {} if keys is None else {API_KEY_AUTH: api_key_auth(keys)}


def api_key_auth(keys: ApiKeys) -> ApiKeyAuthPerRoute:
    source = KeySource(**{keys.source: keys.name})
    return ApiKeyAuthPerRoute(
        credentials=[Credential(key=key, client=client) for client, key in keys.keys],
        key_sources=[source])
