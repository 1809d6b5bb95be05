"""Shared (global) rate limits: a Route's or a rule's `rate_limit` with `shared`, by Envoy's
ratelimit filter and a rate limit service (`envoy.service.ratelimit.v3`).

The filter sits disabled in a gateway listener's chain and is switched on per virtual host or
route entry, where its per-route config says which descriptor to send: the limit's id (entry
`limit`: the Route's name, or `<route>/rules[<i>]`) and, by client, the client's address
(`remote_address`), a header's value or the Host (`client`). The service decides; meshpilot's
own (runtime/ratelimit_service.py, `--rate-limit-address`) knows each limit by its id from the
same policy (`shared_limits`) and counts per descriptor across every Envoy that asks.

The x-ratelimit-* headers and the headers of limited answers are the service's to add (it
knows the counts); Envoy's own x-ratelimit headers stay off. If the service cannot be reached,
requests pass (Envoy's failure_mode_deny false): a rate limit must not become an outage.
Placed where local rate limits are: first of the request security filters.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3.config_source_pb2 import ApiVersion
from envoy.config.core.v3.grpc_service_pb2 import GrpcService
from envoy.config.ratelimit.v3.rls_pb2 import RateLimitServiceConfig
from envoy.config.route.v3.route_components_pb2 import FilterConfig
from envoy.config.route.v3.route_components_pb2 import RateLimit as RouteRateLimit
from envoy.extensions.filters.http.ratelimit.v3.rate_limit_pb2 import (
    RateLimit,
    RateLimitPerRoute,
)
from google.protobuf.message import Message

from meshpilot.ir.model import Model, Route, Rule, Security
from meshpilot.ir.model import RateLimit as PolicyRateLimit
from meshpilot.translators import names
from meshpilot.translators.httpfilters.feature import (
    HttpFilter,
    PerRouteSecurity,
    http_filter,
)
from meshpilot.translators.protos import duration

RATELIMIT = "envoy.filters.http.ratelimit"
DOMAIN = "meshpilot"
LIMIT_KEY = "limit"  # the descriptor entry naming the policy's limit
CLIENT_KEY = "client"  # a header's value or the Host
ADDRESS_KEY = "remote_address"  # Envoy's key for the client's address
TIMEOUT = 0.1  # seconds Envoy waits for the service before letting the request pass


def limit_id(route: Route, rule: Rule | None = None) -> str:
    """The name a shared limit goes by in descriptors: the one it was given, else its Route's,
    or its rule's entry."""
    limit = (rule.security if rule is not None else route.security).rate_limit
    if limit is not None and limit.shared_name is not None:
        return limit.shared_name
    if rule is None:
        return route.name
    index = next(i for i, candidate in enumerate(route.rules) if candidate is rule)
    return names.route_entry(route.name, index)


def shared_limits(model: Model) -> dict[str, PolicyRateLimit]:
    """Every shared limit of the policy's gateway Routes, by its id (what a rate limit service
    needs to know to decide)."""
    found: dict[str, PolicyRateLimit] = {}
    for route in model.routes:
        limit = route.security.rate_limit
        if limit is not None and limit.shared is not None:
            found[limit_id(route)] = limit
        for rule in route.rules:
            limit = rule.security.rate_limit
            if limit is not None and limit.shared is not None:
                found[limit_id(route, rule)] = limit
    return found


def _descriptor(identifier: str, limit: PolicyRateLimit) -> RouteRateLimit:
    actions = [RouteRateLimit.Action(generic_key=RouteRateLimit.Action.GenericKey(
        descriptor_key=LIMIT_KEY, descriptor_value=identifier))]
    if limit.by == "source_ip":
        client = RouteRateLimit.Action()
        client.remote_address.SetInParent()
        actions.append(client)
    elif limit.by in ("header", "host"):
        # A request without the header shares the limit's one bucket (its entry is skipped).
        actions.append(RouteRateLimit.Action(request_headers=RouteRateLimit.Action.RequestHeaders(
            header_name=limit.header if limit.by == "header" and limit.header else ":authority",
            descriptor_key=CLIENT_KEY, skip_if_absent=True)))
    return RouteRateLimit(actions=actions)


class SharedRateLimitFeature(PerRouteSecurity):
    def setting(self, security: Security) -> PolicyRateLimit | None:
        limit = security.rate_limit
        return limit if limit is not None and limit.shared is not None else None

    def disabled_filter(self, first: PolicyRateLimit) -> HttpFilter:
        assert first.shared is not None
        config = RateLimit(
            domain=DOMAIN, timeout=duration(TIMEOUT), failure_mode_deny=False,
            rate_limit_service=RateLimitServiceConfig(
                grpc_service=GrpcService(envoy_grpc=GrpcService.EnvoyGrpc(
                    cluster_name=names.cluster(first.shared))),
                transport_api_version=ApiVersion.V3))
        return http_filter(RATELIMIT, config, disabled=True)

    def virtual_host_config(self, route: Route) -> Mapping[str, Message]:
        limit = self.setting(route.security)
        return {} if limit is None else {RATELIMIT: RateLimitPerRoute(
            rate_limits=[_descriptor(limit_id(route), limit)])}

    def route_config(self, route: Route, rule: Rule, entry: str) -> Mapping[str, Message]:
        limit = self.setting(rule.security)
        if limit is None:
            # A rule's own local limit replaces the Route's shared one for its entries.
            if rule.security.rate_limit is not None and self.setting(route.security):
                return {RATELIMIT: FilterConfig(disabled=True)}
            return {}
        return {RATELIMIT: RateLimitPerRoute(
            rate_limits=[_descriptor(limit_id(route, rule), limit)])}

    def services(self, security: Security) -> tuple[str, ...]:
        limit = self.setting(security)
        return () if limit is None or limit.shared is None else (limit.shared,)


FEATURE = SharedRateLimitFeature()
