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
from meshpilot.ir.model import Security
from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFilter,
    PerRouteSecurity,
    http_filter,
    securities,
)

BASIC_AUTH = "envoy.filters.http.basic_auth"


class BasicAuthFeature(PerRouteSecurity):
    def setting(self, security: Security) -> BasicAuthSpec | None:
        return security.basic_auth

    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        found = [s.basic_auth for route in chain.routes for s in securities(route)
                 if s.basic_auth is not None]
        if not found:
            return []
        # Envoy wants users here too: the first file (every route names its own). The header
        # the user is forwarded in is listener-wide in Envoy: the loader lets the Routes of a
        # gateway name one only (references.py).
        config = BasicAuth(users=DataSource(filename=found[0].users_file))
        forward = next((s.forward_header for s in found if s.forward_header), None)
        if forward is not None:
            config.forward_username_header = forward
        return [http_filter(BASIC_AUTH, config, disabled=True)]

    def disabled_filter(self, first: BasicAuthSpec) -> HttpFilter:
        raise NotImplementedError  # filters() above builds it from every setting

    def per_route(self, spec: BasicAuthSpec) -> Mapping[str, Message]:
        return {BASIC_AUTH: BasicAuthPerRoute(users=DataSource(filename=spec.users_file))}


FEATURE = BasicAuthFeature()
