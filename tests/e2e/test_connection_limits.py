"""max_requests_per_connection end to end (docs/policy.md): a real Envoy gateway closes a
client's keep-alive connection after the listener's limit, and opens a new connection to the
Service's endpoint after the Service's limit."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest
from support import eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: api
endpoints: ["127.0.0.1:{api}"]
max_requests_per_connection: 1
---
kind: Gateway
name: edge
listeners: [{{name: http, port: {port}, address: 127.0.0.1, max_requests_per_connection: 3}}]
---
kind: Route
name: shop
gateway: edge
rules: [{{backends: [api]}}]
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[tuple[int, EnvoyProcess]]:
    work = tmp_path_factory.mktemp("connection-limits-e2e")
    with served_policy(work, "edge.yaml", POLICY, {"api": EchoServer("api")}) as served:
        port = served.ports["port"]
        eventually(lambda: http_get(f"http://127.0.0.1:{port}/")[0] == 200, timeout=20,
                   what="the gateway to serve")
        yield port, served.envoy


def test_the_listener_closes_a_client_connection_after_its_limit(gateway) -> None:
    port, _ = gateway
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    closes = []
    for _ in range(3):
        connection.request("GET", "/keep-alive")
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        closes.append((response.getheader("connection") or "").lower() == "close")
    assert closes == [False, False, True]
    connection.close()


def test_the_cluster_opens_a_connection_per_request(gateway) -> None:
    port, envoy = gateway
    before = envoy.stats().get("cluster.api.upstream_cx_total", 0)
    for _ in range(4):
        assert http_get(f"http://127.0.0.1:{port}/upstream")[0] == 200
    eventually(lambda: envoy.stats().get("cluster.api.upstream_cx_total", 0) == before + 4,
               timeout=5, what="one upstream connection per request")
    assert envoy.stats().get("cluster.api.upstream_cx_max_requests", 0) >= 4
