"""meshpilot's rate limit service (runtime/ratelimit_service.py): the counting, with the clock
as a parameter, and the gRPC answer Envoy gets."""

from __future__ import annotations

import asyncio

from envoy.service.ratelimit.v3 import rls_pb2

from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import RateLimit
from meshpilot.runtime.ratelimit_service import Counters, RateLimitServicer
from meshpilot.translators.httpfilters.ratelimit import shared_limits

NOW = 1_699_999_980.0  # a multiple of 60: windows of a minute start here


def test_fixed_windows_per_limit_and_client() -> None:
    counters = Counters({"shop": RateLimit(requests=2, per=60)})
    decide = counters.decide
    a, b = [{"limit": "shop", "remote_address": "10.0.0.1"}], \
        [{"limit": "shop", "remote_address": "10.0.0.2"}]
    assert [decide(a, 1, NOW + i).over for i in range(3)] == [False, False, True]
    assert not decide(b, 1, NOW + 3).over  # another client, its own bucket
    assert not decide(a, 1, NOW + 60).over  # the next window
    first = decide([{"limit": "shop", "client": "x"}], 1, NOW + 100)
    assert dict(first.headers) == {"x-ratelimit-limit": "2", "x-ratelimit-remaining": "1",
                                   "x-ratelimit-reset": "20"}


def test_unknown_limits_pass_and_shadow_never_refuses() -> None:
    counters = Counters({"quiet": RateLimit(requests=1, per=60, shadow=True)})
    assert not counters.decide([{"limit": "other"}], 1, NOW).over
    assert [counters.decide([{"limit": "quiet"}], 1, NOW).over for _ in range(3)] == [False] * 3
    assert counters.shadowed == 2


def test_limited_headers_only_when_limited_and_the_counter_bound() -> None:
    counters = Counters({"l": RateLimit(requests=1, per=60, ratelimit_headers=False,
                                        limited_headers=(("retry-after", "60"),))},
                        max_counters=3)
    assert counters.decide([{"limit": "l"}], 1, NOW).headers == ()
    assert counters.decide([{"limit": "l"}], 1, NOW).headers == (("retry-after", "60"),)
    for client in "abcde":  # only the 3 most recent windows are kept
        counters.decide([{"limit": "l", "client": client}], 1, NOW)
    assert len(counters._counts) == 3


def test_the_servicer_takes_the_limits_of_the_newest_policy() -> None:
    text = """
kind: Service
name: rls
protocol: grpc
endpoints: [127.0.0.1:18081]
---
kind: Service
name: api
endpoints: [10.0.0.8:80]
---
kind: Gateway
name: edge
listeners: [{name: http, port: 8080}]
---
kind: Route
name: shop
gateway: edge
rate_limit: {requests: 1, per: 1m, shared: {service: rls}}
rules:
  - match: {path: {prefix: /x}}
    backends: [api]
    rate_limit: {requests: 5, per: 1s, shared: {service: rls, name: xs}}
  - backends: [api]
"""
    model = load_policy_text(text)
    assert set(shared_limits(model)) == {"shop", "xs"}
    servicer = RateLimitServicer(Counters(), lambda: model, clock=lambda: NOW)

    def ask(limit: str) -> int:
        request = rls_pb2.RateLimitRequest(domain="meshpilot")
        request.descriptors.add().entries.add(key="limit", value=limit)
        return asyncio.run(servicer.ShouldRateLimit(request, None)).overall_code

    OK, OVER = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
    assert [ask("shop"), ask("shop")] == [OK, OVER]
    assert ask("xs") == OK
    foreign = rls_pb2.RateLimitRequest(domain="elsewhere")
    foreign.descriptors.add().entries.add(key="limit", value="shop")
    assert asyncio.run(servicer.ShouldRateLimit(foreign, None)).overall_code == OK
