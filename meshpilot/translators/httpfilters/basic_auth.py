"""Basic authentication: a Route's or a rule's `basic_auth`, by Envoy's basic_auth filter.

On a gateway listener with a Route that uses it; each virtual host or route entry names its own
users file.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3.base_pb2 import DataSource
from envoy.extensions.filters.http.basic_auth.v3.basic_auth_pb2 import (
    BasicAuth,
    BasicAuthPerRoute,
)
from google.protobuf.message import Message

from meshpilot.ir.model import BasicAuth as BasicAuthSpec
from meshpilot.ir.model import Route, Rule
from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFeature,
    HttpFilter,
    http_filter,
    securities,
    security_inputs,
)

BASIC_AUTH = "envoy.filters.http.basic_auth"


class BasicAuthFeature(HttpFeature):
    route_inputs = staticmethod(security_inputs)

    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        first = next((s.basic_auth for route in chain.routes for s in securities(route)
                      if s.basic_auth), None)
        if first is None:
            return []
        # Envoy wants users here too: the first file (every route names its own).
        return [http_filter(BASIC_AUTH, BasicAuth(users=DataSource(filename=first.users_file)),
                            disabled=True)]

    def virtual_host_config(self, route: Route) -> Mapping[str, Message]:
        return _users(route.security.basic_auth)

    def route_config(self, route: Route, rule: Rule, entry: str) -> Mapping[str, Message]:
        return _users(rule.security.basic_auth)


FEATURE = BasicAuthFeature()


def _users(spec: BasicAuthSpec | None) -> Mapping[str, Message]:
    if spec is None:
        return {}
    return {BASIC_AUTH: BasicAuthPerRoute(users=DataSource(filename=spec.users_file))}
