"""The upstream Gateway API conformance gRPC echo server, in Python, for the GRPCRoute tests.

Upstream's backend (kubernetes-sigs/gateway-api-conformance-images, `echo-basic/grpcecho.proto`,
package `gateway_api_conformance.echo_basic.grpcecho`) serves `GrpcEcho` with three methods:
`Echo` and `EchoTwo` answer an `EchoResponse` whose `assertions` carry the method called, the
request's metadata and `:authority`, and the pod that answered (`context`); `EchoThree` is
left unimplemented on purpose (UNIMPLEMENTED). This module declares the same messages (field
names and numbers as in the .proto) with protobuf descriptors built here, no protoc run, and
serves them with grpcio's generic handlers, so the tests' client and server speak the very
bytes upstream's Go ones do.
"""

from __future__ import annotations

from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "gateway_api_conformance.echo_basic.grpcecho"
SERVICE = f"{PACKAGE}.GrpcEcho"
METHODS = ("Echo", "EchoTwo", "EchoThree")
IMPLEMENTED = ("Echo", "EchoTwo")  # EchoThree: unimplemented upstream too

_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED

# (message, [(field, number, type or message name, repeated)]), as grpcecho.proto declares them.
_MESSAGES: tuple[tuple[str, tuple[tuple[str, int, str, bool], ...]], ...] = (
    ("Header", (("key", 1, "string", False), ("value", 2, "string", False))),
    ("Context", (("namespace", 1, "string", False), ("ingress", 2, "string", False),
                 ("service_name", 3, "string", False), ("pod", 4, "string", False))),
    ("TLSAssertions", (("version", 1, "string", False),
                       ("negotiated_protocol", 2, "string", False),
                       ("server_name", 3, "string", False), ("cipher_suite", 4, "string", False),
                       ("peer_certificates", 5, "string", True))),
    ("Assertions", (("fully_qualified_method", 1, "string", False),
                    ("headers", 2, "Header", True), ("authority", 3, "string", False),
                    ("context", 4, "Context", False), ("tls_assertions", 5, "TLSAssertions", False))),
    ("EchoRequest", ()),
    ("EchoResponse", (("assertions", 1, "Assertions", False),
                      ("request", 2, "EchoRequest", False))),
)


def _messages() -> dict[str, Any]:
    """The message classes, from a descriptor of grpcecho.proto made here (its own pool, so
    nothing clashes with another module declaring the same names)."""
    proto = descriptor_pb2.FileDescriptorProto(name="grpcecho.proto", package=PACKAGE,
                                               syntax="proto3")
    for name, members in _MESSAGES:
        message = proto.message_type.add(name=name)
        for field_name, number, kind, repeated in members:
            field = message.field.add(name=field_name, number=number,
                                      label=_REPEATED if repeated else _OPTIONAL)
            if kind == "string":
                field.type = _STRING
            else:
                field.type, field.type_name = _MESSAGE, f".{PACKAGE}.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
            for name, _ in _MESSAGES}


MESSAGES = _messages()
EchoRequest = MESSAGES["EchoRequest"]
EchoResponse = MESSAGES["EchoResponse"]


class GrpcEchoBackend:
    """One base backend pod (`NAME-pod` of `namespace`, as the HTTP echo names its pods) on
    127.0.0.1, plaintext HTTP/2 (the base Services' `appProtocol: kubernetes.io/h2c`). With
    `tls` (certificate and key files), the same pod also serves gRPC over TLS on a second port
    (`tls_port`), as upstream's echo-basic does on 8443 given TLS_SERVER_CERT."""

    def __init__(self, namespace: str, service: str,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.namespace, self.service = namespace, service
        self.pod = f"{service}-pod"
        self.tls = tls
        self.tls_port: int | None = None
        self._server: grpc.Server | None = None

    def _echo(self, method: str) -> Any:
        def answer(request: Any, context: grpc.ServicerContext) -> Any:
            assertions = MESSAGES["Assertions"](
                fully_qualified_method=f"/{SERVICE}/{method}",
                context=MESSAGES["Context"](namespace=self.namespace, service_name=self.service,
                                            pod=self.pod))
            for key, value in context.invocation_metadata():
                if isinstance(value, bytes):  # a -bin header: not text, not echoed upstream
                    continue
                assertions.headers.add(key=key, value=value)
                if key == ":authority":  # grpcio keeps it out of the metadata so far
                    assertions.authority = value
            return EchoResponse(assertions=assertions, request=request)
        return answer

    def start(self) -> int:
        handlers = {method: grpc.unary_unary_rpc_method_handler(
                        self._echo(method), request_deserializer=EchoRequest.FromString,
                        response_serializer=EchoResponse.SerializeToString)
                    for method in IMPLEMENTED}
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        # A method not in the generic handler (EchoThree) is answered UNIMPLEMENTED by grpcio.
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE,
                                                                              handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        if self.tls is not None:
            cert, key = self.tls
            self.tls_port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
                [(key.read_bytes(), cert.read_bytes())]))
        if port == 0 or self.tls_port == 0:
            raise RuntimeError(f"the gRPC echo of {self.namespace}/{self.service} could not "
                               "bind a loopback port")
        server.start()
        self._server = server
        return port

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=None).wait(5)


def call(port: int, method: str, metadata: dict[str, str] | None = None,
         authority: str | None = None, timeout: float = 5.0) -> tuple[grpc.StatusCode, Any]:
    """One unary call of GrpcEcho/`method` to 127.0.0.1:`port` (the Gateway's listener), as
    upstream's client makes it (plaintext; `authority` as `:authority`; metadata names lower
    cased, as gRPC sends them): (status code, EchoResponse or None)."""
    options = [("grpc.default_authority", authority)] if authority else []
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = channel.unary_unary(f"/{SERVICE}/{method}",
                                   request_serializer=EchoRequest.SerializeToString,
                                   response_deserializer=EchoResponse.FromString)
        try:
            response = stub(EchoRequest(), timeout=timeout,
                            metadata=[(k.lower(), v) for k, v in (metadata or {}).items()])
        except grpc.RpcError as error:
            return error.code(), None
        return grpc.StatusCode.OK, response


def seen_headers(response: Any) -> dict[str, str]:
    """The request headers the backend saw (lower-case names; repeated ones joined by ",")."""
    headers: dict[str, list[str]] = {}
    for header in response.assertions.headers:
        headers.setdefault(header.key.lower(), []).append(header.value)
    return {name: ",".join(values) for name, values in headers.items()}
