"""HTTPS listeners sharing a port, end to end: a real Envoy, real TLS, real requests.

Two Gateway API HTTPS listeners on one port, `a.example.com` and `b.example.com`, each with its
own certificate and routes. The SNI of a connection picks its listener (a filter chain and a
route table of its own); a request on it whose Host belongs to the other listener is answered
421 Misdirected Request (GEP-3567), never routed to the other listener's backends; a Host no
listener has is a 404. Checked over HTTP/1.1 (one keep-alive connection sending both hosts)
and over HTTP/2 (curl, :authority from Host), and for a client sending no SNI.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPSConnection
from pathlib import Path
from typing import Any

import pytest
from gatewayapi_conformance import EchoBackend
from support import eventually, gateway_class_template, served_policy
from tls_material import CA

pytestmark = pytest.mark.envoy

POLICY = gateway_class_template("443:{port}") + """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: mp
  listeners:
  - name: a
    port: 443
    protocol: HTTPS
    hostname: a.example.com
    tls: {{certificateRefs: [{{name: cert-a}}]}}
  - name: b
    port: 443
    protocol: HTTPS
    hostname: b.example.com
    tls: {{certificateRefs: [{{name: cert-b}}]}}
---
apiVersion: v1
kind: Secret
metadata: {{name: cert-a, namespace: infra}}
type: kubernetes.io/tls
data: {{tls.crt: {cert_a}, tls.key: {key_a}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: cert-b, namespace: infra}}
type: kubernetes.io/tls
data: {{tls.crt: {cert_b}, tls.key: {key_b}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: to-a, namespace: infra}}
spec:
  parentRefs: [{{name: edge, sectionName: a}}]
  rules: [{{backendRefs: [{{name: app-a, port: 8080}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: to-b, namespace: infra}}
spec:
  parentRefs: [{{name: edge, sectionName: b}}]
  rules: [{{backendRefs: [{{name: app-b, port: 8080}}]}}]
""" + "".join(f"""---
apiVersion: v1
kind: Service
metadata: {{{{name: app-{x}, namespace: infra}}}}
spec: {{{{ports: [{{{{port: 8080}}}}]}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{{{name: app-{x}-1, namespace: infra, labels: {{{{kubernetes.io/service-name: app-{x}}}}}}}}}
addressType: IPv4
ports: [{{{{port: {{app_{x}}}}}}}]
endpoints: [{{{{addresses: [127.0.0.1]}}}}]
""" for x in ("a", "b"))


@dataclass
class Edge:
    port: int
    ca: Path  # the CA file the clients trust
    context: ssl.SSLContext


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    work = tmp_path_factory.mktemp("gatewayapi-https")
    ca = CA()
    pairs = {x: ca.issue(f"{x}.example.com") for x in ("a", "b")}
    values = {f"{part}_{x}": base64.b64encode(getattr(pair, f"{part}_pem")).decode()
              for x, pair in pairs.items() for part in ("cert", "key")}
    servers = {"app_a": EchoBackend("infra", "app-a"), "app_b": EchoBackend("infra", "app-b")}
    with served_policy(work, "gateway.yaml", POLICY, servers,
                       envoys={"infra/edge": "edge"}, **values) as served:
        context = ssl.create_default_context(cadata=ca.pem.decode())
        yield Edge(served.ports["port"], ca.write(work / "ca.pem"), context)


def _get(connection: HTTPConnection, host: str, path: str = "/") -> tuple[int, dict[str, Any]]:
    connection.request("GET", path, headers={"Host": host})
    response = connection.getresponse()
    body = response.read()
    try:
        return response.status, json.loads(body)
    except ValueError:
        return response.status, {"body": body.decode(errors="replace")}


class _Sni(HTTPSConnection):
    """HTTPS to the edge with the SNI `server_name` (None: none), whatever Host is sent."""

    def __init__(self, port: int, context: ssl.SSLContext, server_name: str | None):
        super().__init__("127.0.0.1", port, timeout=10, context=context)
        self.server_name = server_name

    def connect(self) -> None:
        HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(  # type: ignore[attr-defined]
            self.sock, server_hostname=self.server_name)


def _once(edge: Edge, sni: str, host: str) -> tuple[int, dict[str, Any]]:
    connection = _Sni(edge.port, edge.context, sni)
    try:
        return _get(connection, host)
    finally:
        connection.close()


def _ready(edge: Edge) -> None:
    eventually(lambda: all(_once(edge, f"{x}.example.com", f"{x}.example.com")[0] == 200
                           for x in "ab"), timeout=30, what="both listeners to serve")


def test_the_sni_picks_the_listener_and_its_certificate(edge: Edge) -> None:
    _ready(edge)
    for x in "ab":
        status, echoed = _once(edge, f"{x}.example.com", f"{x}.example.com")
        assert (status, echoed["service"]) == (200, f"app-{x}")
        # The certificate shown is that listener's own (the client checked it for the SNI).
        with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as raw, \
                edge.context.wrap_socket(raw, server_hostname=f"{x}.example.com") as conn:
            subject = dict(item[0] for item in conn.getpeercert()["subject"])
            assert subject["commonName"] == f"{x}.example.com"


def test_a_host_of_the_other_listener_is_misdirected_on_one_connection(edge: Edge) -> None:
    """One keep-alive connection made for a.example.com: its own host is served, the other
    listener's host is answered 421 by Envoy (app-b is never reached), and the connection
    still serves a.example.com after that."""
    _ready(edge)
    connection = _Sni(edge.port, edge.context, "a.example.com")
    try:
        assert _get(connection, "a.example.com")[1]["service"] == "app-a"
        status, answer = _get(connection, "b.example.com")
        assert status == 421, answer
        assert "service" not in answer  # Envoy's answer, not a backend's
        # A port in Host changes nothing (the listener's hostname is matched without it).
        assert _get(connection, f"b.example.com:{edge.port}")[0] == 421
        assert _get(connection, "a.example.com")[1]["service"] == "app-a"
    finally:
        connection.close()
    assert _once(edge, "b.example.com", "a.example.com")[0] == 421


def test_a_host_no_listener_has_is_not_found(edge: Edge) -> None:
    _ready(edge)
    assert _once(edge, "a.example.com", "c.example.com")[0] == 404


def test_http2_coalescing_is_refused_with_421(edge: Edge) -> None:
    """What a browser does when one certificate could cover both names: an HTTP/2 connection
    made for a.example.com carries a request for b.example.com (:authority)."""
    _ready(edge)
    url = f"https://a.example.com:{edge.port}/"
    common = ["curl", "-sS", "--http2", "--cacert", str(edge.ca), "-o", "/dev/null",
              "-w", "%{http_code} %{http_version}",
              "--resolve", f"a.example.com:{edge.port}:127.0.0.1", url]
    same = subprocess.run(common, capture_output=True, text=True, timeout=30)
    assert same.stdout == "200 2", same.stderr
    other = subprocess.run([*common, "-H", "Host: b.example.com"], capture_output=True,
                           text=True, timeout=30)
    assert other.stdout == "421 2", other.stderr


def test_a_connection_without_sni_is_told_to_ask_again(edge: Edge) -> None:
    """No SNI picks no listener (no listener here is without a hostname): every listener's
    host is misdirected on such a connection, which saw the first certificate."""
    _ready(edge)
    context = ssl.create_default_context(cadata=edge.ca.read_text())
    context.check_hostname = False  # no SNI, so no name to check the certificate for
    connection = _Sni(edge.port, context, None)
    try:
        assert _get(connection, "a.example.com")[0] == 421
        assert _get(connection, "b.example.com")[0] == 421
        assert _get(connection, "c.example.com")[0] == 404
    finally:
        connection.close()
