"""Failover to another Service end to end (docs/policy.md, Service: failover): behind a real
Envoy gateway, a Service whose only endpoint fails its health checks hands its traffic to its
failover Service, and takes it back when the endpoint recovers; a Service with no endpoint at
all fails over at once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support import eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: primary
endpoints: ["127.0.0.1:{primary}"]
health_check: {{http: /healthz, interval: 250ms, timeout: 200ms, unhealthy_threshold: 1,
               healthy_threshold: 1}}
failover: [backup, last-resort]
---
kind: Service
name: backup
endpoints: ["127.0.0.1:{backup}"]
health_check: {{http: /healthz, interval: 250ms, timeout: 200ms, unhealthy_threshold: 1,
               healthy_threshold: 1}}
---
kind: Service
name: last-resort
endpoints: ["127.0.0.1:{last}"]
---
kind: Service
name: empty
failover: [backup]
---
kind: Gateway
name: edge
listeners: [{{name: http, port: {port}, address: 127.0.0.1}}]
---
kind: Route
name: shop
gateway: edge
rules:
  - match: {{path: {{prefix: /empty}}}}
    backends: [empty]
  - backends: [primary]
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[dict[str, int], dict[str, EchoServer]]]:
    work = tmp_path_factory.mktemp("failover-e2e")
    echoes = {"primary": EchoServer("primary"), "backup": EchoServer("backup"),
              "last": EchoServer("last-resort")}
    with served_policy(work, "edge.yaml", POLICY, echoes) as running:
        yield running.ports, echoes


def answered_by(ports: dict[str, int], path: str = "/") -> Any:
    status, headers, _ = http_get(f"http://127.0.0.1:{ports['port']}{path}")
    return headers.get("x-backend") if status == 200 else status


def test_traffic_fails_over_and_comes_back(served) -> None:
    ports, echoes = served
    eventually(lambda: answered_by(ports) == "primary", timeout=20,
               what="the primary Service to serve")
    echoes["primary"].forced_status = 503  # its health check fails from now on
    try:
        eventually(lambda: all(answered_by(ports) == "backup" for _ in range(5)), timeout=15,
                   what="the traffic to fail over to the backup Service")
    finally:
        echoes["primary"].forced_status = None
    eventually(lambda: all(answered_by(ports) == "primary" for _ in range(5)), timeout=15,
               what="the traffic to come back to the primary")


def test_the_next_target_takes_over_when_the_first_is_down_too(served) -> None:
    ports, echoes = served
    eventually(lambda: answered_by(ports) == "primary", timeout=15, what="the primary")
    echoes["primary"].forced_status = 503
    echoes["backup"].forced_status = 503
    try:
        eventually(lambda: all(answered_by(ports) == "last-resort" for _ in range(5)),
                   timeout=15, what="the second failover target to take over")
        echoes["backup"].forced_status = None  # the first target is back: it comes first
        eventually(lambda: all(answered_by(ports) == "backup" for _ in range(5)), timeout=15,
                   what="the first failover target to take over again")
    finally:
        echoes["primary"].forced_status = None
        echoes["backup"].forced_status = None


def test_a_service_without_endpoints_fails_over_at_once(served) -> None:
    ports, _ = served
    eventually(lambda: answered_by(ports, "/empty") == "backup", timeout=15,
               what="a Service without endpoints to send to its failover")
