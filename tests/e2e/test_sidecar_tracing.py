"""Tracing on sidecars, end to end (docs/policy.md, sidecar: tracing): two real sidecar Envoys,
`front` calling `api` through its local port, both exporting Zipkin spans to a loopback
collector. One request makes one trace: a client span from front's sidecar (egress) and a
server span from api's (ingress), the second the child of the first, each named after its
Service; api's application sees the trace's B3 headers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from support import ZipkinCollector, eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: zipkin
endpoints: ["127.0.0.1:{zipkin}"]
---
kind: Service
name: front
endpoints: ["127.0.0.1:{front_in}"]
sidecar:
  port: {front_in}
  address: 127.0.0.1
  app: {app_front}
  calls: [{{service: api, local_port: {front_to_api}}}]
  tracing: {{provider: zipkin, collector: zipkin}}
---
kind: Service
name: api
endpoints: ["127.0.0.1:{api_in}"]
sidecar:
  port: {api_in}
  address: 127.0.0.1
  app: {app_api}
  tracing: {{provider: zipkin, collector: zipkin}}
"""


class Traced:
    def __init__(self, ports: dict[str, int], zipkin: ZipkinCollector):
        self.ports, self.zipkin = ports, zipkin

    def call_api(self, path: str) -> dict[str, Any]:
        status, _, body = http_get(f"http://127.0.0.1:{self.ports['front_to_api']}{path}",
                                   timeout=3)
        assert status == 200, body[:300]
        return json.loads(body)

    def spans_of(self, trace_id: str) -> list[dict[str, Any]]:
        return [s for s in list(self.zipkin.spans) if s["traceId"] == trace_id]


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    work = tmp_path_factory.mktemp("sidecar-tracing-e2e")
    zipkin = ZipkinCollector()
    servers = {"zipkin": zipkin, "app_front": EchoServer("front"), "app_api": EchoServer("api")}
    with served_policy(work, "mesh.yaml", POLICY, servers,
                       free_ports=("front_in", "api_in", "front_to_api"),
                       envoys={"front": "sidecar-front", "api": "sidecar-api"}) as served:
        environment = Traced(served.ports, zipkin)
        eventually(lambda: http_get(f"http://127.0.0.1:{served.ports['front_to_api']}/",
                                    timeout=3)[0] == 200, timeout=30,
                   what="front's sidecar to reach api")
        yield environment


def test_one_request_is_one_trace_across_both_sidecars(traced: Traced) -> None:
    seen = traced.call_api("/orders/1")
    assert seen["backend"] == "api"
    headers = seen["headers"]
    trace_id = headers["x-b3-traceid"]
    assert len(trace_id) == 32 and headers["x-b3-sampled"] == "1"
    eventually(lambda: len(traced.spans_of(trace_id)) >= 2, timeout=30,
               what="both sidecars' spans at the collector")
    spans = {s["kind"]: s for s in traced.spans_of(trace_id)}
    client, server = spans["CLIENT"], spans["SERVER"]
    assert client["localEndpoint"]["serviceName"] == "front"  # the node's cluster
    assert server["localEndpoint"]["serviceName"] == "api"
    # api's sidecar continued front's trace: its span is a child of front's (or shares it).
    assert server.get("parentId") == client["id"] or server["id"] == client["id"]
    # The span api's application saw as its parent is the inbound sidecar's.
    assert headers["x-b3-spanid"] == server["id"]
    assert client["tags"]["http.url"].endswith("/orders/1")
