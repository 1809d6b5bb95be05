"""GRPCRoute end to end: Gateway API documents served by `meshpilot serve` to a real Envoy,
real gRPC calls (grpcio) through its HTTP listener to two grpcio servers on loopback, routed by
method match: meshpilot.demo.Echo/Say (the demo stub) to one backend, every method of the
service test.Other to the other, an unmatched method answered UNIMPLEMENTED (Envoy's 404)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from support import eventually, gateway_class_template, loopback_service_template, served_policy

from meshpilot.local.demo.grpc_echo import GrpcEchoServer, load_stubs

pytestmark = pytest.mark.envoy

POLICY = gateway_class_template() + """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: mp
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: calls, namespace: infra}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - matches: [{{method: {{service: meshpilot.demo.Echo, method: Say}}}}]
    backendRefs: [{{name: echo, port: 9000}}]
  - matches: [{{method: {{service: test.Other}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-routed-by, value: grpcroute}}]}}
    backendRefs: [{{name: other, port: 9000}}]
---
""" + loopback_service_template('echo', 9000) + """---
""" + loopback_service_template('other', 9000)

OPTIONS = [("grpc.enable_http_proxy", 0)]  # never through an http_proxy of the environment


class AnyMethodServer:
    """A grpcio server answering every unary method with b"NAME METHOD x-routed-by" (bytes
    in, bytes out: no stubs), h2c on loopback."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._server: grpc.Server | None = None

    def start(self) -> int:
        owner = self.name

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: Any) -> Any:
                method = details.method

                def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
                    routed = dict(context.invocation_metadata()).get("x-routed-by", "-")
                    return f"{owner} {method} {routed}".encode()

                return grpc.unary_unary_rpc_method_handler(answer)

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        server.add_generic_rpc_handlers((Handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(None)


async def say(port: int, message: str) -> Any:
    pb2, pb2_grpc = load_stubs()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
        return await pb2_grpc.EchoStub(channel).Say(pb2.EchoRequest(message=message), timeout=5)


async def raw(port: int, method: str) -> bytes:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
        call = channel.unary_unary(method)
        return await call(b"ping", timeout=5)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    work = tmp_path_factory.mktemp("grpcroute-e2e")
    servers = {"echo": GrpcEchoServer("echo"), "other": AnyMethodServer("other")}
    with served_policy(work, "gateway.yaml", POLICY, servers,  # type: ignore[arg-type]
                       envoys={"infra/edge": "edge"}) as served:
        port = served.ports["port"]
        eventually(lambda: asyncio.run(say(port, "ping")).backend == "echo", timeout=30,
                   what="a gRPC call through the GRPCRoute")
        yield port


def test_the_exact_method_match_reaches_its_backend(gateway: int) -> None:
    reply = asyncio.run(say(gateway, "hello"))
    assert (reply.backend, reply.message) == ("echo", "hello")
    assert "x-routed-by" not in reply.metadata  # the other rule's filter is not applied here


def test_every_method_of_a_service_match_reaches_the_other_backend(gateway: int) -> None:
    assert asyncio.run(raw(gateway, "/test.Other/Get")) == b"other /test.Other/Get grpcroute"
    assert asyncio.run(raw(gateway, "/test.Other/Put")) == b"other /test.Other/Put grpcroute"


def test_an_unmatched_method_is_not_routed(gateway: int) -> None:
    for method in ("/meshpilot.demo.Echo/Other", "/test.OtherService/Get"):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            asyncio.run(raw(gateway, method))
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED, method
