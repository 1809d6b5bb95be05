"""gRPC through a gateway, end to end: a grpc.aio client calls the demo gRPC upstream
(`meshpilot.local.demo.grpc_echo`) through a real Envoy's HTTP listener. The listener's HTTP
connection manager (codec_type AUTO) takes HTTP/2 cleartext with prior knowledge, and the
`protocol: grpc` Service's cluster speaks HTTP/2 to the upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from support import eventually, http_get, served_policy

from meshpilot.local.demo.grpc_echo import GrpcEchoServer, load_stubs

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: greeter
protocol: grpc
endpoints: ["127.0.0.1:{g1}"]
---
kind: Gateway
name: edge
listeners:
  - {{name: http, port: {port}, address: 127.0.0.1, request_id_in_response: true}}
---
kind: Route
name: grpc
gateway: edge
rules:
  - match: {{path: {{prefix: /meshpilot.demo.Echo/}}, headers: {{content-type: {{prefix: application/grpc}}}}}}
    backends: [greeter]
  - direct_response: {{status: 404, body: "not a gRPC call"}}
"""

OPTIONS = [("grpc.enable_http_proxy", 0)]  # never through an http_proxy of the environment


async def call(port: int, message: str, metadata: tuple[tuple[str, str], ...] = ()
               ) -> tuple[Any, Any]:
    pb2, pb2_grpc = load_stubs()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
        stub = pb2_grpc.EchoStub(channel)
        request = stub.Say(pb2.EchoRequest(message=message), metadata=metadata, timeout=5)
        reply = await request
        return reply, await request.initial_metadata()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[tuple[int, GrpcEchoServer]]:
    work = tmp_path_factory.mktemp("grpc-e2e")
    upstream = GrpcEchoServer("g1")
    with served_policy(work, "grpc.yaml", POLICY, {"g1": upstream}) as served:
        port = served.ports["port"]
        eventually(lambda: asyncio.run(call(port, "ping"))[0].backend == "g1", timeout=30,
                   what="a gRPC call through the gateway")
        yield port, upstream


def test_grpc_call_through_the_gateway_reaches_the_upstream(gateway) -> None:
    port, upstream = gateway
    before = upstream.calls
    reply, initial = asyncio.run(call(port, "hello", (("x-tenant", "acme"),)))
    assert reply.backend == "g1"
    assert reply.message == "hello"
    assert reply.metadata["x-tenant"] == "acme"  # client metadata arrives
    # ... through Envoy: it added the request id and the forwarded-for of an edge proxy.
    assert reply.metadata["x-request-id"]
    assert reply.metadata["x-forwarded-for"]  # the client's address as Envoy saw it
    assert dict(initial)["x-request-id"] == reply.metadata["x-request-id"]
    assert upstream.calls == before + 1


def test_a_non_grpc_request_does_not_reach_the_grpc_route(gateway) -> None:
    port, _ = gateway
    status, _, body = http_get(f"http://127.0.0.1:{port}/meshpilot.demo.Echo/Say")
    assert (status, body) == (404, b"not a gRPC call")
