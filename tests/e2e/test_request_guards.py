"""CSRF protection and the rate limit options end to end, through a real Envoy gateway
(docs/policy.md, Security: csrf, rate_limit): cross-origin state changes refused, allowed
origins and same-origin requests through, shadow modes that count and refuse nothing, the
x-ratelimit-* headers switched off, and headers only on the limited answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support import eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: api
endpoints: ["127.0.0.1:{api}"]
---
kind: Gateway
name: edge
listeners: [{{name: http, port: {port}, address: 127.0.0.1}}]
---
kind: Route
name: shop
gateway: edge
hosts: [shop.example.com]
csrf: {{allow_origins: [partner.example, "*.trusted.example"]}}
rules:
  - match: {{path: {{prefix: /beta}}}}
    backends: [api]
    csrf: {{shadow: true}}
  - backends: [api]
---
kind: Route
name: limits
gateway: edge
hosts: [limits.example.com]
rules:
  - match: {{path: {{prefix: /quiet}}}}
    backends: [api]
    rate_limit: {{requests: 2, per: 1h, ratelimit_headers: false,
                 limited_headers: {{retry-after: 3600, x-limited-by: meshpilot}}}}
  - match: {{path: {{prefix: /shadow}}}}
    backends: [api]
    rate_limit: {{requests: 1, per: 1h, shadow: true}}
  - match: {{path: {{prefix: /loud}}}}
    backends: [api]
    rate_limit: {{requests: 1, per: 1h}}
"""


class Gateway:
    def __init__(self, port: int, envoy: EnvoyProcess):
        self.port, self.envoy = port, envoy

    def send(self, host: str, path: str, method: str = "GET",
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return http_get(f"http://127.0.0.1:{self.port}{path}", {"Host": host, **(headers or {})},
                        method=method)

    def stat(self, name: str) -> int:
        return self.envoy.stats().get(name, 0)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("guards-e2e")
    with served_policy(work, "edge.yaml", POLICY, {"api": EchoServer("api")}) as served:
        environment = Gateway(served.ports["port"], served.envoy)
        eventually(lambda: environment.send("shop.example.com", "/")[0] == 200, timeout=20,
                   what="the gateway to serve")
        yield environment


@pytest.mark.parametrize("method, origin, status", [
    ("POST", "https://evil.example", 403),  # another site's form
    ("DELETE", "https://evil.example", 403),
    ("POST", "https://shop.example.com", 200),  # the same origin
    ("POST", "https://partner.example", 200),  # allowed
    ("PUT", "https://app.trusted.example", 200),  # allowed by suffix
    ("POST", None, 403),  # neither Origin nor Referer: refused too (Envoy's rule)
    ("GET", "https://evil.example", 200),  # not a state change
])
def test_csrf(gateway: Gateway, method: str, origin: str | None, status: int) -> None:
    headers = {"Origin": origin} if origin else {}
    got, _, body = gateway.send("shop.example.com", "/cart", method, headers)
    assert got == status, body[:200]
    if status == 403:
        assert b"Invalid origin" in body


def test_csrf_referer_counts_when_there_is_no_origin(gateway: Gateway) -> None:
    got, _, _ = gateway.send("shop.example.com", "/cart", "POST",
                             {"Referer": "https://evil.example/page"})
    assert got == 403


def test_csrf_shadow_counts_and_lets_through(gateway: Gateway) -> None:
    before = gateway.stat("http.edge/http.csrf.request_invalid")
    got, _, body = gateway.send("shop.example.com", "/beta/cart", "POST",
                                {"Origin": "https://evil.example"})
    assert got == 200, body[:200]
    eventually(lambda: gateway.stat("http.edge/http.csrf.request_invalid") > before, timeout=5,
               what="the shadow refusal to be counted")


def _ratelimit_headers(headers: dict[str, Any]) -> set[str]:
    return {name for name in headers if name.startswith("x-ratelimit-")}


def test_limited_headers_only_on_limited_answers_and_no_x_ratelimit(gateway: Gateway) -> None:
    answers = [gateway.send("limits.example.com", "/quiet") for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 429]
    for status, headers, _ in answers:
        assert not _ratelimit_headers(headers), headers
        limited = status == 429
        assert ("retry-after" in headers) is limited, headers
        assert (headers.get("x-limited-by") == "meshpilot") is limited, headers
    assert answers[2][1]["retry-after"] == "3600"


def test_shadow_rate_limit_refuses_nothing(gateway: Gateway) -> None:
    before = gateway.stat("http_local_rate_limiter.http_local_rate_limit.rate_limited")
    statuses = [gateway.send("limits.example.com", "/shadow")[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 200]
    eventually(lambda: gateway.stat("http_local_rate_limiter.http_local_rate_limit.rate_limited")
               >= before + 3, timeout=5, what="the shadow limit to count the excess")


def test_default_rate_limit_still_sends_x_ratelimit_headers(gateway: Gateway) -> None:
    first = gateway.send("limits.example.com", "/loud")
    second = gateway.send("limits.example.com", "/loud")
    assert (first[0], second[0]) == (200, 429)
    assert {"x-ratelimit-limit", "x-ratelimit-remaining"} <= _ratelimit_headers(first[1])
    assert "retry-after" not in second[1]
