"""gRPC through the mesh, end to end: a grpc.aio client calls its own sidecar's local port for a
`protocol: grpc` service; the call crosses the caller's sidecar and the callee's sidecar (both
real Envoys, HTTP/2 on every hop) to the demo gRPC upstream, and a Route attached to the service
(retries on `unavailable`) applies to the call."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from support import eventually, served_policy
from test_grpc import OPTIONS

from meshpilot.local.demo.grpc_echo import GrpcEchoServer, load_stubs
from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: frontend              # a client-only workload: its sidecar has calls and no inbound
sidecar:
  calls: [{{service: greeter, local_port: {to_greeter}}}]
---
kind: Service
name: greeter
protocol: grpc
endpoints: ["127.0.0.1:{greeter_in}"]
sidecar: {{port: {greeter_in}, address: 127.0.0.1, app: {app}}}
---
kind: Route
name: greeter-calls
service: greeter
rules:
  - backends: [greeter]
    retries: {{attempts: 2, on: [unavailable, reset, connect-failure]}}
    request_headers: {{set: {{x-mesh-route: greeter-calls}}}}
"""


async def say(port: int, message: str):
    pb2, pb2_grpc = load_stubs()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
        return await pb2_grpc.EchoStub(channel).Say(pb2.EchoRequest(message=message), timeout=5)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Iterator[tuple[dict[str, int], dict[str, EnvoyProcess]]]:
    work = tmp_path_factory.mktemp("mesh-grpc")
    with served_policy(work, "mesh.yaml", POLICY, {"app": GrpcEchoServer("greeter-1")},
                       free_ports=("greeter_in", "to_greeter"),
                       envoys={"frontend": "frontend", "greeter": "greeter"}) as served:
        ports = served.ports
        eventually(lambda: asyncio.run(say(ports["to_greeter"], "ping")).backend
                   == "greeter-1", timeout=30, what="a gRPC call through both sidecars")
        yield ports, served.envoys


def test_grpc_call_crosses_both_sidecars_over_http2(mesh) -> None:
    ports, sidecars = mesh
    before = sidecars["greeter"].stats().get("http.inbound/greeter.downstream_rq_http2_total", 0)
    reply = asyncio.run(say(ports["to_greeter"], "hello mesh"))
    assert reply.backend == "greeter-1"
    assert reply.message == "hello mesh"
    # The Route attached to the service applied in the caller's sidecar.
    assert dict(reply.metadata).get("x-mesh-route") == "greeter-calls"
    # HTTP/2 on the sidecar-to-sidecar hop: the callee's inbound counted an HTTP/2 request.
    after = sidecars["greeter"].stats().get("http.inbound/greeter.downstream_rq_http2_total", 0)
    assert after > before
    caller = sidecars["frontend"].stats()
    assert caller.get("cluster.greeter.upstream_cx_http2_total", 0) >= 1
