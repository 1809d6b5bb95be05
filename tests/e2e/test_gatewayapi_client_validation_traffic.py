"""Gateway API client-certificate validation (spec.tls.frontend), end to end: a real Envoy,
real TLS handshakes with and without client certificates.

One Gateway, two HTTPS ports. Port 443 takes `default` (AllowValidOnly): a client whose
certificate the trusted CA signed gets 200; one with no certificate, or with a certificate of
another CA, is refused in the handshake. Port 8443 takes its `perPort` entry
(AllowInsecureFallback, same CA): all three clients get through.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPSConnection
from pathlib import Path

import pytest
from gatewayapi_conformance import EchoBackend
from support import gateway_class_template, loopback_service_template, served_policy
from tls_material import CA

pytestmark = pytest.mark.envoy

POLICY = gateway_class_template("443:{strict} 8443:{fallback}") + """apiVersion: v1
kind: ConfigMap
metadata: {{name: client-ca, namespace: infra}}
data:
  ca.crt: |
{client_ca}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: mp
  tls:
    frontend:
      default:
        validation:
          caCertificateRefs: [{{group: "", kind: ConfigMap, name: client-ca}}]
      perPort:
      - port: 8443
        tls:
          validation:
            caCertificateRefs: [{{group: "", kind: ConfigMap, name: client-ca}}]
            mode: AllowInsecureFallback
  listeners:
  - {{name: strict, port: 443, protocol: HTTPS, tls: {{certificateRefs: [{{name: cert}}]}}}}
  - {{name: fallback, port: 8443, protocol: HTTPS, tls: {{certificateRefs: [{{name: cert}}]}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: cert, namespace: infra}}
type: kubernetes.io/tls
data: {{tls.crt: {cert}, tls.key: {key}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app, namespace: infra}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: app, port: 8080}}]}}]
---
""" + loopback_service_template('app', 8080)


@dataclass
class Edge:
    ports: dict[str, int]
    work: Path
    server_ca: CA
    client_ca: CA
    other_ca: CA


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    work = tmp_path_factory.mktemp("gatewayapi-client-validation")
    server_ca, client_ca, other_ca = CA("server CA"), CA("client CA"), CA("other CA")
    pair = server_ca.issue("edge.example.com")
    values = {"cert": base64.b64encode(pair.cert_pem).decode(),
              "key": base64.b64encode(pair.key_pem).decode(),
              "client_ca": "\n".join("    " + line
                                     for line in client_ca.pem.decode().splitlines())}
    with served_policy(work, "gateway.yaml", POLICY, {"app": EchoBackend("infra", "app")},
                       envoys={"infra/edge": "edge"}, free_ports=("strict", "fallback"),
                       **values) as served:
        yield Edge(served.ports, work, server_ca, client_ca, other_ca)


class _Edge(HTTPSConnection):
    """HTTPS to 127.0.0.1 with the SNI (and certificate check) of edge.example.com."""

    def connect(self) -> None:
        HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(  # type: ignore[attr-defined]
            self.sock, server_hostname="edge.example.com")


def _get(edge: Edge, port: str, signer: CA | None) -> tuple[int, dict]:
    """GET / over HTTPS on `port`, presenting a certificate `signer` issued (None: none)."""
    context = ssl.create_default_context(cadata=edge.server_ca.pem.decode())
    if signer is not None:
        cert, key = signer.issue("client.example.com").write(
            edge.work / "clients", f"{port}-{id(signer)}")
        context.load_cert_chain(cert, key)
    connection = _Edge("127.0.0.1", edge.ports[port], timeout=10, context=context)
    connection.request("GET", "/", headers={"Host": "edge.example.com"})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, json.loads(body)


def _refused(edge: Edge, port: str, signer: CA | None) -> bool:
    try:
        _get(edge, port, signer)
    except (ssl.SSLError, ConnectionError):
        return True
    return False


def test_allow_valid_only_lets_in_only_a_certificate_the_ca_signed(edge: Edge) -> None:
    status, echo = _get(edge, "strict", edge.client_ca)
    assert status == 200 and echo["service"] == "app"
    assert _refused(edge, "strict", None)
    assert _refused(edge, "strict", edge.other_ca)


def test_allow_insecure_fallback_lets_in_every_client(edge: Edge) -> None:
    for signer in (edge.client_ca, None, edge.other_ca):
        status, echo = _get(edge, "fallback", signer)
        assert status == 200 and echo["service"] == "app"
