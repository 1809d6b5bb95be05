"""Session persistence by header: a Route's or a rule's `session_persistence`, by Envoy's
stateful_session filter with the header-based session state.

On a gateway listener with a Route that asks for it; disabled there and switched on per virtual
host or route entry. Envoy writes the endpoint that answered into the header of the response
(base64 of host:port); a request that sends the header back is routed to that endpoint while
it is healthy, even past the load balancer. Just before the router, which picks the endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.extensions.filters.http.stateful_session.v3.stateful_session_pb2 import (
    StatefulSession,
    StatefulSessionPerRoute,
)
from envoy.extensions.http.stateful_session.header.v3.header_pb2 import HeaderBasedSessionState
from google.protobuf.message import Message

from meshpilot.ir.model import Security, SessionPersistence
from meshpilot.translators.httpfilters.feature import (
    HttpFilter,
    PerRouteSecurity,
    http_filter,
)
from meshpilot.translators.protos import pack

STATEFUL_SESSION = "envoy.filters.http.stateful_session"
HEADER_STATE = "envoy.http.stateful_session.header"


def session(spec: SessionPersistence) -> StatefulSession:
    return StatefulSession(
        session_state=TypedExtensionConfig(name=HEADER_STATE, typed_config=pack(
            HeaderBasedSessionState(name=spec.header))),
        strict=spec.strict)


class StatefulSessionFeature(PerRouteSecurity):
    def setting(self, security: Security) -> SessionPersistence | None:
        return security.session_persistence

    def disabled_filter(self, first: SessionPersistence) -> HttpFilter:
        return http_filter(STATEFUL_SESSION, StatefulSession(), disabled=True)

    def per_route(self, spec: SessionPersistence) -> Mapping[str, Message]:
        return {STATEFUL_SESSION: StatefulSessionPerRoute(stateful_session=session(spec))}


FEATURE = StatefulSessionFeature()
