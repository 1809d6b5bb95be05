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

from meshpilot.ir.model import ApiKeys, Security
from meshpilot.translators.httpfilters.feature import (
    HttpFilter,
    PerRouteSecurity,
    http_filter,
)

API_KEY_AUTH = "envoy.filters.http.api_key_auth"


class ApiKeyFeature(PerRouteSecurity):
    def setting(self, security: Security) -> ApiKeys | None:
        return security.api_keys

    def disabled_filter(self, first: ApiKeys) -> HttpFilter:
        return http_filter(API_KEY_AUTH, ApiKeyAuth(), disabled=True)

    def per_route(self, keys: ApiKeys) -> Mapping[str, Message]:
        return {API_KEY_AUTH: api_key_auth(keys)}


FEATURE = ApiKeyFeature()


def api_key_auth(keys: ApiKeys) -> ApiKeyAuthPerRoute:
    source = KeySource(**{keys.source: keys.name})
    config = ApiKeyAuthPerRoute(
        credentials=[Credential(key=key, client=client) for client, key in keys.keys],
        key_sources=[source])
    if keys.forward_header is not None or keys.strip:
        # The client's name in a header to the backend; the key itself removed (a header,
        # a query parameter or a cookie: Envoy's hide_credentials removes it where it was).
        config.forwarding.header = keys.forward_header or ""
        config.forwarding.hide_credentials = keys.strip
    return config
