"""Shared rate limits end to end (docs/policy.md, Shared rate limits): two real Envoys (two
gateways whose Routes name the same limits) ask meshpilot's own rate limit service
(`--rate-limit-address`, Envoy's envoy.service.ratelimit.v3 protocol), so a limit holds for
both together; per client, with the service's x-ratelimit headers, headers on limited answers
only, shadow mode, and a limit without a name kept per Route."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support import eventually, http_get, served_policy

from meshpilot.base.netutil import free_port
from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

RULES = """
  - match: {{path: {{prefix: /together}}}}
    backends: [api]
    rate_limit: {{requests: 4, per: 1h, shared: {{service: ratelimit, name: together}},
                 limited_headers: {{retry-after: "3600"}}}}
  - match: {{path: {{prefix: /per-client}}}}
    backends: [api]
    rate_limit: {{requests: 1, per: 1h, by: {{header: x-client}},
                 shared: {{service: ratelimit, name: per-client}}, ratelimit_headers: false}}
  - match: {{path: {{prefix: /shadow}}}}
    backends: [api]
    rate_limit: {{requests: 1, per: 1h, shared: {{service: ratelimit, name: shadow}},
                 shadow: true}}
  - match: {{path: {{prefix: /own}}}}
    backends: [api]
    rate_limit: {{requests: 1, per: 1h, shared: {{service: ratelimit}}}}
  - backends: [api]
"""

# Two gateways (two Envoys), whose Routes name the same shared limits.
POLICY = """
kind: Service
name: ratelimit
protocol: grpc
endpoints: ["127.0.0.1:{rls}"]
---
kind: Service
name: api
endpoints: ["127.0.0.1:{api}"]
---
kind: Gateway
name: edge-a
listeners: [{{name: http, port: {port_a}, address: 127.0.0.1}}]
---
kind: Gateway
name: edge-b
listeners: [{{name: http, port: {port_b}, address: 127.0.0.1}}]
---
kind: Route
name: shop-a
gateway: edge-a
rules:""" + RULES + """---
kind: Route
name: shop-b
gateway: edge-b
rules:""" + RULES


class Fleet:
    def __init__(self, ports: list[int]):
        self.ports = ports

    def get(self, which: int, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, Any]]:
        status, got, _ = http_get(f"http://127.0.0.1:{self.ports[which]}{path}", headers)
        return status, got


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("shared-ratelimit-e2e")
    rls = free_port()
    with served_policy(work, "edge.yaml", POLICY, {"api": EchoServer("api")},
                       free_ports=("port_a", "port_b"),
                       envoys={"edge-a": "edge-a", "edge-b": "edge-b"},
                       extra_args=("--rate-limit-address", f"127.0.0.1:{rls}"),
                       rls=rls) as served:
        ports = [served.ports["port_a"], served.ports["port_b"]]
        for port in ports:
            eventually(lambda p=port: http_get(f"http://127.0.0.1:{p}/")[0] == 200,
                       timeout=20, what="each gateway Envoy to serve")
        yield Fleet(ports)


def test_a_shared_limit_holds_for_both_envoys_together(fleet: Fleet) -> None:
    answers = [fleet.get(i % 2, "/together") for i in range(6)]  # alternate the two Envoys
    assert [status for status, _ in answers] == [200, 200, 200, 200, 429, 429]
    first, limited = answers[0][1], answers[4][1]
    assert first["x-ratelimit-limit"] == "4" and first["x-ratelimit-remaining"] == "3"
    assert "retry-after" not in first
    assert limited["retry-after"] == "3600" and limited["x-ratelimit-remaining"] == "0"


def test_per_client_buckets_and_no_headers(fleet: Fleet) -> None:
    assert fleet.get(0, "/per-client", {"x-client": "a"})[0] == 200
    assert fleet.get(1, "/per-client", {"x-client": "a"})[0] == 429  # a's, on the other Envoy
    status, headers = fleet.get(1, "/per-client", {"x-client": "b"})
    assert status == 200
    assert not [h for h in headers if h.startswith("x-ratelimit-")]


def test_shadow_counts_and_refuses_nothing(fleet: Fleet) -> None:
    assert [fleet.get(i % 2, "/shadow")[0] for i in range(4)] == [200, 200, 200, 200]


def test_an_unnamed_shared_limit_is_its_routes_own(fleet: Fleet) -> None:
    # shop-a/rules[3] and shop-b/rules[3]: one request each, per Route.
    assert [fleet.get(0, "/own")[0], fleet.get(1, "/own")[0]] == [200, 200]
    assert [fleet.get(0, "/own")[0], fleet.get(1, "/own")[0]] == [429, 429]


def test_unlimited_rules_never_ask(fleet: Fleet) -> None:
    assert all(fleet.get(i % 2, "/free")[0] == 200 for i in range(8))
