"""Local rate limits: a Route's or a rule's `rate_limit`, by Envoy's local_ratelimit filter.

On a gateway listener with a Route that limits; disabled there and switched on per virtual host
or route entry. First of the request security filters, so credential guessing is limited too.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption, RuntimeFractionalPercent
from envoy.config.route.v3.route_components_pb2 import FilterConfig
from envoy.config.route.v3.route_components_pb2 import RateLimit as RouteRateLimit
from envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import (
    LocalRateLimitDescriptor,
    RateLimitDescriptor,
)
from envoy.extensions.filters.http.local_ratelimit.v3.local_rate_limit_pb2 import LocalRateLimit
from envoy.type.v3.percent_pb2 import FractionalPercent
from envoy.type.v3.token_bucket_pb2 import TokenBucket
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import BoolValue, UInt32Value

from meshpilot.ir.model import RateLimit, Route, Rule, Security
from meshpilot.translators.httpfilters.feature import (
    HttpFilter,
    PerRouteSecurity,
    http_filter,
)
from meshpilot.translators.protos import duration

LOCAL_RATELIMIT = "envoy.filters.http.local_ratelimit"
RATE_LIMIT_STATS = "http_local_rate_limiter"
# Distinct clients tracked per rate limit (least recently seen forgotten first).
MAX_CLIENTS = 10_000
RATE_LIMIT_KEY = "client"


class LocalRateLimitFeature(PerRouteSecurity):
    def setting(self, security: Security) -> RateLimit | None:
        limit = security.rate_limit
        return limit if limit is not None and limit.shared is None else None  # else ratelimit.py

    def disabled_filter(self, first: RateLimit) -> HttpFilter:
        return http_filter(LOCAL_RATELIMIT, LocalRateLimit(stat_prefix=RATE_LIMIT_STATS),
                           disabled=True)

    def per_route(self, limit: RateLimit) -> Mapping[str, Message]:
        return {LOCAL_RATELIMIT: local_rate_limit(limit)}

    def route_config(self, route: Route, rule: Rule, entry: str) -> Mapping[str, Message]:
        # A rule's own shared limit replaces the Route's local one for its entries.
        if rule.security.rate_limit is not None and self.setting(rule.security) is None \
                and self.setting(route.security) is not None:
            return {LOCAL_RATELIMIT: FilterConfig(disabled=True)}
        return super().route_config(route, rule, entry)


FEATURE = LocalRateLimitFeature()


def _percent(value: int) -> RuntimeFractionalPercent:
    return RuntimeFractionalPercent(default_value=FractionalPercent(
        numerator=value, denominator=FractionalPercent.HUNDRED))


def _percent_100() -> RuntimeFractionalPercent:
    return _percent(100)


def local_rate_limit(limit: RateLimit) -> LocalRateLimit:
    """A token bucket of `requests` tokens refilled every `per`: one for the route, or one per
    client (host, header value or source address) up to MAX_CLIENTS, via dynamic descriptors.
    A request without the client attribute (no such header) shares the route's bucket."""
    def bucket() -> TokenBucket:
        return TokenBucket(max_tokens=limit.requests,
                           tokens_per_fill=UInt32Value(value=limit.requests),
                           fill_interval=duration(limit.per))

    config = LocalRateLimit(
        stat_prefix=RATE_LIMIT_STATS, token_bucket=bucket(),
        filter_enabled=_percent_100(),
        # Shadow: every request is counted (`rate_limited` in the stats) but none refused.
        filter_enforced=_percent(0 if limit.shadow else 100))
    if limit.ratelimit_headers:
        config.enable_x_ratelimit_headers = LocalRateLimit.DESCRIPTOR.fields_by_name[
            "enable_x_ratelimit_headers"].enum_type.values_by_name["DRAFT_VERSION_03"].number
    for name, value in limit.limited_headers:  # on the 429 answers only
        config.response_headers_to_add.append(HeaderValueOption(
            header=HeaderValue(key=name, value=value),
            append_action=HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))
    if limit.by == "route":
        return config
    action = RouteRateLimit.Action()
    if limit.by == "source_ip":
        action.remote_address.SetInParent()
        key = "remote_address"
    else:
        action.request_headers.header_name = limit.header if limit.by == "header" \
            else ":authority"
        action.request_headers.descriptor_key = key = RATE_LIMIT_KEY
    config.rate_limits.append(RouteRateLimit(actions=[action]))
    config.descriptors.append(LocalRateLimitDescriptor(
        entries=[RateLimitDescriptor.Entry(key=key, value="")], token_bucket=bucket()))
    config.always_consume_default_token_bucket.CopyFrom(BoolValue(value=False))
    config.max_dynamic_descriptors.CopyFrom(UInt32Value(value=MAX_CLIENTS))
    return config
