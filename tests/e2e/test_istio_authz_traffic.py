"""AuthorizationPolicy's conditions at a real ingress gateway Envoy: `when` on a header with
several values and wildcards, on `destination.ip`; `remoteIpBlocks` and `remote.ip`: the
client's address is read from X-Forwarded-For behind the gateway's trusted proxies (MeshConfig's
`defaultConfig.gatewayTopology.numTrustedProxies`, overridden by the Gateway's
`proxy.istio.io/config` annotation), while `ipBlocks` keep reading the connection's peer.

The requests come from loopback carrying X-Forwarded-For as a load balancer in front of the
gateway would write it (the input is meshpilot's own)."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import eventually, http_get, served_policy
from tls_material import CA, Pair

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |-
    defaultConfig:
      gatewayTopology: {{numTrustedProxies: 2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {echo}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: edge
  namespace: istio-system
  annotations: {{proxy.istio.io/config: "gatewayTopology: {{numTrustedProxies: 1}}"}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - {{port: {{number: {ingress}, name: http, protocol: HTTP}}, hosts: ["*"]}}
  - port: {{number: {https}, name: https, protocol: HTTPS}}
    tls: {{mode: SIMPLE, credentialName: wildcard}}
    hosts: ["*.example.com"]
---
{secret}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http: [{{route: [{{destination: {{host: echo.default.svc.cluster.local}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  rules:
  - from: [{{source: {{remoteIpBlocks: [203.0.113.0/24]}}}}]
    when: [{{key: remote.ip, notValues: [203.0.113.9]}}]
  - from: [{{source: {{ipBlocks: [127.0.0.1]}}}}]
    to: [{{operation: {{paths: [/peer]}}}}]
  - to: [{{operation: {{paths: [/team]}}}}]
    when:
    - {{key: "request.headers[x-team]", values: [red, "blu*", "*een"], notValues: [bluebird]}}
  - to: [{{operation: {{paths: [/here]}}}}]
    when: [{{key: destination.ip, values: [127.0.0.0/8]}}]
  - to: [{{operation: {{paths: [/elsewhere]}}}}]
    when: [{{key: destination.ip, values: [10.9.9.9]}}]
  - to: [{{operation: {{paths: [/sni]}}}}]
    when: [{{key: connection.sni, values: ["a.*", "*.b.example.com"]}}]
"""


@dataclass
class Edge:
    port: int
    https: int
    ca: Path

    def sni_status(self, server_name: str) -> int:
        """A TLS request to /sni with `server_name` as its SNI (and Host)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        with socket.create_connection(("127.0.0.1", self.https), timeout=10) as raw:
            connection = http.client.HTTPSConnection(server_name, timeout=10)
            connection.sock = context.wrap_socket(raw, server_hostname=server_name)
            try:
                connection.request("GET", "/sni", headers={"Host": server_name})
                response = connection.getresponse()
                response.read()
                return response.status
            finally:
                connection.close()

    def status(self, path: str, forwarded: str | None = None, **headers: str) -> int:
        if forwarded is not None:
            headers["x-forwarded-for"] = forwarded
        return http_get(f"http://127.0.0.1:{self.port}{path}", headers, timeout=10)[0]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    work = tmp_path_factory.mktemp("istio-authz")
    ca = CA("example CA")
    pair = ca.issue("*.example.com", "*.b.example.com")
    with served_policy(work, "mesh.yaml", POLICY, {"echo": EchoServer("echo")},
                       free_ports=("ingress", "https"),
                       envoys={"istio=ingressgateway": "ingress"},
                       extra_args=("--insecure-xds",), secret=_tls_secret(pair)) as served:
        environment = Edge(served.ports["ingress"], served.ports["https"],
                           ca.write(work / "ca.pem"))
        eventually(lambda: environment.status("/peer") == 200, timeout=60,
                   what="the ingress gateway to reach the echo")
        yield environment


def _tls_secret(pair: Pair) -> str:
    data = {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem}
    return ("apiVersion: v1\nkind: Secret\nmetadata: {name: wildcard, namespace: istio-system}"
            "\ntype: kubernetes.io/tls\ndata:\n" + "".join(
                f"  {k}: {base64.b64encode(v).decode()}\n" for k, v in data.items())
            )


def test_remote_ip_blocks_read_the_client_behind_one_trusted_proxy(edge: Edge) -> None:
    assert edge.status("/x", "203.0.113.7") == 200
    assert edge.status("/x", "198.51.100.1") == 403
    assert edge.status("/x") == 403  # no X-Forwarded-For: the client is the peer, 127.0.0.1
    # One trusted proxy (the annotation's, not MeshConfig's 2): the last entry is the client
    # that proxy saw; what the client wrote before it is not trusted.
    assert edge.status("/x", "198.51.100.1, 203.0.113.7") == 200
    assert edge.status("/x", "203.0.113.7, 198.51.100.1") == 403


def test_remote_ip_not_values_and_ip_blocks_read_the_peer(edge: Edge) -> None:
    assert edge.status("/x", "203.0.113.9") == 403  # remote.ip notValues
    # ipBlocks are the connection's peer (loopback), whatever X-Forwarded-For says.
    assert edge.status("/peer", "198.51.100.1") == 200
    assert edge.status("/peer", "203.0.113.9") == 200


def test_a_header_condition_holds_for_any_value_and_no_not_value(edge: Edge) -> None:
    assert [edge.status("/team", **{"x-team": team}) for team in
            ("red", "blue", "green", "reds", "bluebird")] == [200, 200, 200, 403, 403]
    assert edge.status("/team") == 403


def test_destination_ip_is_the_address_the_connection_reached(edge: Edge) -> None:
    assert edge.status("/here") == 200  # accepted on 127.0.0.1
    assert edge.status("/elsewhere") == 403


def test_connection_sni_is_the_tls_server_name_asked_for(edge: Edge) -> None:
    eventually(lambda: edge.sni_status("a.example.com") == 200, timeout=60,
               what="the gateway's TLS server to answer")
    assert edge.sni_status("x.b.example.com") == 200  # the suffix
    assert edge.sni_status("c.example.com") == 403
