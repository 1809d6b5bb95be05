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
    HttpFilter,
    PerRouteSecurity,
    http_filter,
)

BASIC_AUTH = "envoy.filters.http.basic_auth"


class BasicAuthFeature(PerRouteSecurity):
    def setting(self, security: Security) -> BasicAuthSpec | None:
        return security.basic_auth

    def disabled_filter(self, first: BasicAuthSpec) -> HttpFilter:
        # Envoy wants users here too: the first file (every route names its own).
        return http_filter(BASIC_AUTH, BasicAuth(users=DataSource(filename=first.users_file)),
                           disabled=True)

    def per_route(self, spec: BasicAuthSpec) -> Mapping[str, Message]:
        return {BASIC_AUTH: BasicAuthPerRoute(users=DataSource(filename=spec.users_file))}


FEATURE = BasicAuthFeature()
