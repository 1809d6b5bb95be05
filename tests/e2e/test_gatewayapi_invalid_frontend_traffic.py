"""An unresolvable spec.tls.frontend `default` (the upstream
GatewayFrontendInvalidDefaultClientCertificateValidation), end to end: a real Envoy. The
Gateway's HTTPS listener, whose client CA names a ConfigMap that does not exist, is not served
at all (never without the client check it asks for), while its HTTP listener, which a perPort
entry for port 80 does not concern, answers. The input is meshpilot's own."""

from __future__ import annotations

import base64
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection

import pytest
from gatewayapi_conformance import EchoBackend
from support import eventually, gateway_class_template, loopback_service_template, served_policy
from tls_material import CA

pytestmark = pytest.mark.envoy

POLICY = gateway_class_template("80:{http} 443:{https}") + """apiVersion: v1
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
          caCertificateRefs: [{{group: "", kind: ConfigMap, name: no-such-map}}]
      perPort:
      - port: 80
        tls:
          validation:
            caCertificateRefs: [{{group: "", kind: ConfigMap, name: client-ca}}]
  listeners:
  - {{name: https, port: 443, protocol: HTTPS, tls: {{certificateRefs: [{{name: cert}}]}}}}
  - {{name: http, port: 80, protocol: HTTP}}
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
  hostnames: [example.org]
  rules: [{{backendRefs: [{{name: app, port: 8080}}]}}]
---
""" + loopback_service_template('app', 8080)


@dataclass
class Edge:
    ports: dict[str, int]
    server_ca: CA


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    work = tmp_path_factory.mktemp("gatewayapi-invalid-frontend")
    server_ca = CA("server CA")
    pair = server_ca.issue("example.org")
    values = {"cert": base64.b64encode(pair.cert_pem).decode(),
              "key": base64.b64encode(pair.key_pem).decode(),
              "client_ca": "\n".join("    " + line
                                     for line in CA("client CA").pem.decode().splitlines())}
    with served_policy(work, "gateway.yaml", POLICY, {"app": EchoBackend("infra", "app")},
                       envoys={"infra/edge": "edge"}, free_ports=("http", "https"),
                       **values) as served:
        yield Edge(served.ports, server_ca)


def _http(edge: Edge) -> tuple[int, dict]:
    connection = HTTPConnection("127.0.0.1", edge.ports["http"], timeout=10)
    try:
        connection.request("GET", "/", headers={"Host": "example.org"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_the_http_listener_answers_and_the_https_one_is_not_served(edge: Edge) -> None:
    _, echo = eventually(lambda: (lambda r: r if r[0] == 200 else None)(_http(edge)),
                         timeout=30, what="the HTTP listener to answer")
    assert echo["service"] == "app"
    # The same snapshot holds both listeners: with HTTP served, HTTPS is as it will stay.
    context = ssl.create_default_context(cadata=edge.server_ca.pem.decode())
    with pytest.raises(OSError), \
            socket.create_connection(("127.0.0.1", edge.ports["https"]), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="example.org") as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n")
        if not conn.recv(1):
            raise ConnectionError("closed without an answer")
