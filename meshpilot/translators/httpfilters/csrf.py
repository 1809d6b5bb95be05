"""CSRF protection: a Route's or a rule's `csrf`, by Envoy's CSRF filter.

On a gateway listener with a Route that asks for it; disabled there and switched on per virtual
host or route entry. Envoy refuses (403) a request with a state-changing method (POST, PUT,
DELETE, PATCH) whose `Origin` (else `Referer`) host is neither the request's own host nor an
allowed one, and one with neither header (`missing_source_origin`). In shadow mode it
only counts (`csrf.request_invalid` and `csrf.request_valid` under the listener's stats).
Right after CORS: a forged request is refused before it costs a token or an authentication.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3.base_pb2 import RuntimeFractionalPercent
from envoy.extensions.filters.http.csrf.v3.csrf_pb2 import CsrfPolicy
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from envoy.type.v3.percent_pb2 import FractionalPercent
from google.protobuf.message import Message

from meshpilot.ir.model import Csrf, Security
from meshpilot.translators.httpfilters.feature import (
    HttpFilter,
    PerRouteSecurity,
    http_filter,
)

CSRF = "envoy.filters.http.csrf"


def _percent(value: int) -> RuntimeFractionalPercent:
    return RuntimeFractionalPercent(default_value=FractionalPercent(
        numerator=value, denominator=FractionalPercent.HUNDRED))


def policy(csrf: Csrf) -> CsrfPolicy:
    config = CsrfPolicy(filter_enabled=_percent(0 if csrf.shadow else 100),
                        shadow_enabled=_percent(100 if csrf.shadow else 0))
    for allowed in csrf.allow_origins:
        config.additional_origins.append(
            StringMatcher(suffix=allowed[1:]) if allowed.startswith("*.")
            else StringMatcher(exact=allowed))
    return config


class CsrfFeature(PerRouteSecurity):
    def setting(self, security: Security) -> Csrf | None:
        return security.csrf

    def disabled_filter(self, first: Csrf) -> HttpFilter:
        return http_filter(CSRF, CsrfPolicy(filter_enabled=_percent(0)), disabled=True)

    def per_route(self, csrf: Csrf) -> Mapping[str, Message]:
        return {CSRF: policy(csrf)}


FEATURE = CsrfFeature()
