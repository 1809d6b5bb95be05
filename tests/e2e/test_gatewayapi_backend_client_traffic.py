"""A Gateway's client certificate to TLS backends (spec.tls.backend.clientCertificateRef, the
upstream GatewayTLSBackendClientCertificate), end to end: a real Envoy per Gateway, an HTTPS
backend on loopback that requires a client certificate its CA signed. The Gateway naming the
certificate is answered by the backend, which saw that certificate; another Gateway routing
to the same Service through the same BackendTLSPolicy presents none and is refused in the
handshake (503). The input is meshpilot's own, for the behaviour of the upstream test."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection

import pytest
from support import (
    LoopbackHttpServer,
    eventually,
    gateway_class_template,
    loopback_service_template,
    served_policy,
)
from tls_material import CA

pytestmark = pytest.mark.envoy

def _gateway(name: str, port: int, tls: str = "") -> str:
    """A Gateway with one HTTP listener and its route to the TLS Service (a template for
    `served_policy`: braces doubled)."""
    return f"""---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{{{name: {name}, namespace: infra}}}}
spec:
  gatewayClassName: mp
  listeners: [{{{{name: http, port: {port}, protocol: HTTP}}}}]
{tls}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{{{name: {name}, namespace: infra}}}}
spec:
  parentRefs: [{{{{name: {name}}}}}]
  hostnames: [abc.example.com]
  rules: [{{{{backendRefs: [{{{{name: secure, port: 443}}}}]}}}}]
"""

POLICY = gateway_class_template("80:{port} 81:{other}") + """apiVersion: v1
kind: Secret
metadata: {{name: client, namespace: infra}}
type: kubernetes.io/tls
data: {{tls.crt: {client_cert}, tls.key: {client_key}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: backend-ca, namespace: infra}}
data:
  ca.crt: |
{backend_ca}
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: secure, namespace: infra}}
spec:
  targetRefs: [{{group: "", kind: Service, name: secure}}]
  validation:
    caCertificateRefs: [{{group: "", kind: ConfigMap, name: backend-ca}}]
    hostname: abc.example.com
---
""" + loopback_service_template('secure', 443, port_name='https') + _gateway("with-client", 80, tls=(
    "  tls: {{backend: {{clientCertificateRef: {{group: '', kind: Secret, name: client}}}}}}\n"
)) + _gateway("without", 81)


class _Answer(LoopbackHttpServer.Handler):
    """200 with the common name of the client certificate the connection presented."""

    def do_GET(self) -> None:
        peer = self.request.getpeercert() if isinstance(self.request, ssl.SSLSocket) else None
        subject = dict(item[0] for item in (peer or {}).get("subject", ()))
        self.reply(200, subject.get("commonName", "").encode())


@dataclass
class Edges:
    with_client: int
    without: int
    backend: LoopbackHttpServer


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edges]:
    work = tmp_path_factory.mktemp("gatewayapi-backend-client")
    servers_ca, clients_ca = CA("backends CA"), CA("gateway clients CA")
    server, client = servers_ca.issue("abc.example.com"), clients_ca.issue("gateway.example.org")
    (work / "server.pem").write_bytes(server.cert_pem)
    (work / "server.key").write_bytes(server.key_pem)
    backend = LoopbackHttpServer(_Answer, tls=(work / "server.pem", work / "server.key"),
                                 client_ca=clients_ca.write(work / "clients-ca.pem"))
    values = {"client_cert": base64.b64encode(client.cert_pem).decode(),
              "client_key": base64.b64encode(client.key_pem).decode(),
              "backend_ca": "\n".join("    " + line
                                      for line in servers_ca.pem.decode().splitlines())}
    with served_policy(work, "gateway.yaml", POLICY, {"secure": backend},
                       free_ports=("port", "other"),
                       envoys={"infra/with-client": "with-client", "infra/without": "without"},
                       **values) as served:
        yield Edges(served.ports["port"], served.ports["other"], backend)


def _get(port: int) -> tuple[int, bytes]:
    connection = HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/", headers={"Host": "abc.example.com"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_gateways_client_certificate_reaches_the_tls_backend(edges: Edges) -> None:
    status, body = eventually(lambda: (lambda r: r if r[0] == 200 else None)(
        _get(edges.with_client)), timeout=30, what="the backend to answer through with-client")
    assert (status, body) == (200, b"gateway.example.org")
    assert "abc.example.com" in edges.backend.server_names  # the policy's hostname as SNI


def test_a_gateway_without_one_is_refused_by_the_backend(edges: Edges) -> None:
    # Served (the same route, the same policy), but the backend wants a client certificate.
    eventually(lambda: _get(edges.with_client)[0] == 200, timeout=30,
               what="the other Gateway's route to be served")
    status, _ = eventually(lambda: (lambda r: r if r[0] != 404 else None)(
        _get(edges.without)), timeout=30, what="the route of without to be served")
    assert status == 503
