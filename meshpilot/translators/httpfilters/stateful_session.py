"""Session persistence by header or cookie: a Route's or a rule's `session_persistence`, by
Envoy's stateful_session filter with the header- or cookie-based session state.

On a gateway listener with a Route that asks for it; disabled there and switched on per virtual
host or route entry. Envoy writes the endpoint that answered into the header of the response
(base64 of host:port); a request that sends the header back is routed to that endpoint while
it is healthy, even past the load balancer. A cookie carries the same (and its expiry, when it
has a lifetime) in a Set-Cookie. Just before the router, which picks the endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.extensions.filters.http.stateful_session.v3.stateful_session_pb2 import (
    StatefulSession,
    StatefulSessionPerRoute,
)
from envoy.extensions.http.stateful_session.cookie.v3.cookie_pb2 import CookieBasedSessionState
from envoy.extensions.http.stateful_session.header.v3.header_pb2 import HeaderBasedSessionState
from envoy.type.http.v3.cookie_pb2 import Cookie
from google.protobuf.message import Message

from meshpilot.ir.model import Security, SessionPersistence
from meshpilot.translators.httpfilters.feature import (
    HttpFilter,
    PerRouteSecurity,
    http_filter,
)
from meshpilot.translators.protos import duration, pack

STATEFUL_SESSION = "envoy.filters.http.stateful_session"
HEADER_STATE = "envoy.http.stateful_session.header"
COOKIE_STATE = "envoy.http.stateful_session.cookie"


def session(spec: SessionPersistence) -> StatefulSession:
    if spec.cookie:
        cookie = Cookie(name=spec.cookie, path=spec.cookie_path)
        if spec.cookie_ttl is not None:
            cookie.ttl.CopyFrom(duration(spec.cookie_ttl))
        state = TypedExtensionConfig(name=COOKIE_STATE, typed_config=pack(
            CookieBasedSessionState(cookie=cookie)))
    else:
        state = TypedExtensionConfig(name=HEADER_STATE, typed_config=pack(
            HeaderBasedSessionState(name=spec.header)))
    return StatefulSession(session_state=state, strict=spec.strict)


class StatefulSessionFeature(PerRouteSecurity):
    def setting(self, security: Security) -> SessionPersistence | None:
        return security.session_persistence

    def disabled_filter(self, first: SessionPersistence) -> HttpFilter:
        return http_filter(STATEFUL_SESSION, StatefulSession(), disabled=True)

    def per_route(self, spec: SessionPersistence) -> Mapping[str, Message]:
        return {STATEFUL_SESSION: StatefulSessionPerRoute(stateful_session=session(spec))}


FEATURE = StatefulSessionFeature()
