"""Istio tcp and tls routes through real Envoys.

- In the mesh: a TCP service (two versions, a DestinationRule's subsets) and a VirtualService
  `tcp` route; a client workload's sidecar gives the application a local port for it, and the
  route's weights decide the version its connections reach (all to v1, then all to v2).
- At the ingress gateway: a TCP server whose connections a `tcp` route sends to the service,
  and a TLS PASSTHROUGH server whose `tls` routes pick the backend by the client's SNI; the TLS
  session is the backend's own (its certificate, not the gateway's), and an SNI no route names
  finds no filter chain.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import LoopbackHttpServer, eventually, http_get, served_policy, write_atomically
from tls_material import CA

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [db.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: {dbport}, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp: {db_v1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{tcp: {db_v2}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure}}
spec:
  hosts: [secure.example.com]
  ports: [{{number: 8443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tls: {secure_a}}}, labels: {{site: a}}}}
  - {{address: 127.0.0.1, ports: {{tls: {secure_b}}}, labels: {{site: b}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: db}}
spec:
  host: db
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure}}
spec:
  host: secure.example.com
  subsets: [{{name: a, labels: {{site: a}}}}, {{name: b, labels: {{site: b}}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: client-v1
  annotations: {{meshpilot.io/outbound-port: "{out}"}}
spec: {{address: 127.0.0.1, labels: {{app: client}}}}
---
# The client calls db only: secure.example.com (MESH_EXTERNAL, a TLS port) would otherwise get
# a local port in its sidecar too, 127.0.0.1:8443, which another process may hold.
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress: [{{hosts: ["./db.default.svc.cluster.local"]}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {tcp}, name: tcp, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: {tls}, name: tls, protocol: TLS}}
    hosts: ["*.example.com"]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  tcp:
  - route: [{{destination: {{host: db, subset: v2}}}}]
  tls:
  - match: [{{sniHosts: [a.example.com]}}]
    route: [{{destination: {{host: secure.example.com, subset: a}}}}]
  - match: [{{sniHosts: [b.example.com]}}]
    route: [{{destination: {{host: secure.example.com, subset: b}}}}]
"""

DB_ROUTE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db]
  tcp:
  - match: [{port: PORT}]
    route:
    - {destination: {host: db, subset: v1}, weight: V1}
    - {destination: {host: db, subset: v2}, weight: V2}
"""


def _named(name: str) -> type[LoopbackHttpServer.Handler]:
    class Named(LoopbackHttpServer.Handler):
        def do_GET(self) -> None:
            self.reply(200, json.dumps({"backend": name}).encode(), "application/json")

    return Named


class Setup:
    def __init__(self, served, certs: Path):
        self.served, self.certs = served, certs
        self.ports = served.ports
        self.folder: Path = served.policy

    def db_backend(self) -> str | None:
        """The application's connection to db's local port (an HTTP request over it)."""
        try:
            status, _, body = http_get(f"http://127.0.0.1:{self.ports['dbport']}/", timeout=5)
        except OSError:
            return None
        return json.loads(body)["backend"] if status == 200 else None

    def gateway_tcp(self) -> str | None:
        try:
            status, _, body = http_get(f"http://127.0.0.1:{self.ports['tcp']}/", timeout=5)
        except OSError:
            return None
        return json.loads(body)["backend"] if status == 200 else None

    def passthrough(self, sni: str) -> tuple[str, str] | None:
        """(the certificate's first name, the backend's answer) of a TLS session with `sni`
        through the gateway; None when the gateway closes it."""
        context = ssl.create_default_context(cafile=str(self.certs / "ca.pem"))
        context.check_hostname = False
        try:
            with socket.create_connection(("127.0.0.1", self.ports["tls"]), timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname=sni) as tls:
                peer = tls.getpeercert()
                tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
        except (OSError, ssl.SSLError):
            return None
        names = [value for kind, value in peer.get("subjectAltName", ()) if kind == "DNS"]
        return names[0], json.loads(data.split(b"\r\n\r\n", 1)[1])["backend"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("istio-tcp")
    certs = work / "certs"
    ca = CA("backends CA")
    ca.write(certs / "ca.pem")
    servers = {
        "db_v1": EchoServer("db-v1"), "db_v2": EchoServer("db-v2"),
        "secure_a": LoopbackHttpServer(_named("site-a"), tls=ca.issue("a.example.com").write(
            certs, "a")),
        "secure_b": LoopbackHttpServer(_named("site-b"), tls=ca.issue("b.example.com").write(
            certs, "b")),
    }
    with served_policy(work, "mesh.yaml", POLICY, servers,
                       free_ports=("dbport", "out", "tcp", "tls"),
                       envoys={"client-v1.default": "client",
                               "istio=ingressgateway": "ingress"},
                       extra_args=("--insecure-xds",)) as served:
        yield Setup(served, certs)


def _db_route(setup: Setup, v1: int, v2: int) -> str:
    return DB_ROUTE.replace("PORT", str(setup.ports["dbport"])).replace(
        "V1", str(v1)).replace("V2", str(v2))


def test_tcp_route_weights_in_the_mesh(setup: Setup) -> None:
    # Without a VirtualService both versions answer (round robin) ...
    eventually(lambda: {setup.db_backend() for _ in range(6)} == {"db-v1", "db-v2"},
               what="db connections to reach both versions")
    # ... with weights 100/0 only v1.
    write_atomically(setup.folder / "db.yaml", _db_route(setup, 100, 0))
    eventually(lambda: {setup.db_backend() for _ in range(6)} == {"db-v1"},
               what="db connections to go to v1")
    assert {setup.db_backend() for _ in range(6)} == {"db-v1"}
    write_atomically(setup.folder / "db.yaml", _db_route(setup, 0, 100))
    eventually(lambda: setup.db_backend() == "db-v2", what="db connections to go to v2")
    assert {setup.db_backend() for _ in range(6)} == {"db-v2"}


def test_gateway_tcp_server(setup: Setup) -> None:
    eventually(lambda: setup.gateway_tcp() == "db-v2", what="the TCP server to reach db v2")
    assert {setup.gateway_tcp() for _ in range(4)} == {"db-v2"}


def test_gateway_tls_passthrough_by_sni(setup: Setup) -> None:
    eventually(lambda: setup.passthrough("a.example.com") is not None,
               what="the TLS server to pass a.example.com through")
    # The backend's own certificate and answer: the gateway never ended the TLS session.
    assert setup.passthrough("a.example.com") == ("a.example.com", "site-a")
    assert setup.passthrough("b.example.com") == ("b.example.com", "site-b")
    assert setup.passthrough("c.example.com") is None  # no route names it: no filter chain
