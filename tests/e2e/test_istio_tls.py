"""Istio TLS with certificates of one's own, through real Envoys.

- Gateway `tls.mode: MUTUAL`: the ingress gateway asks every client for a certificate and
  checks it against `caCertificates`: a client with one the clients' CA signed is served, a
  client without one, or with one of another CA, fails the handshake.
- DestinationRule `tls.mode: MUTUAL`: a workload's sidecar originates TLS to an external
  service that requires client certificates, presenting `clientCertificate` and checking the
  server against `caCertificates` and `sni`; with tls SIMPLE instead (no client certificate)
  the server refuses the handshake and the caller gets 503.

Certificates are made here (a CA for the gateway, one for the clients, one for the upstream)
and written below the policy folder, which relative paths are read from.
"""

from __future__ import annotations

import http.client
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
metadata: {{name: echo}}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {echo}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure}}
spec:
  hosts: [secure.example.com]
  location: MESH_EXTERNAL
  ports: [{{number: 8443, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {secure}}}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: client-v1
  annotations: {{meshpilot.io/outbound-port: "{out}"}}
spec: {{address: 127.0.0.1, labels: {{app: client}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {https}, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls:
      mode: MUTUAL
      serverCertificate: certs/edge.pem
      privateKey: certs/edge.key
      caCertificates: certs/clients-ca.pem
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http: [{{route: [{{destination: {{host: echo}}}}]}}]
"""

MUTUAL = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: secure}
spec:
  host: secure.example.com
  trafficPolicy:
    tls:
      mode: MUTUAL
      clientCertificate: certs/client.pem
      privateKey: certs/client.key
      caCertificates: certs/upstream-ca.pem
      sni: secure.example.com
"""
SIMPLE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: secure}
spec:
  host: secure.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, caCertificates: certs/upstream-ca.pem, sni: secure.example.com}
"""


class _WhoAmI(LoopbackHttpServer.Handler):
    def do_GET(self) -> None:
        peer = self.connection.getpeercert()  # type: ignore[attr-defined]
        subject = dict(item[0] for item in peer["subject"]) if peer else {}
        self.reply(200, json.dumps({"client": subject.get("commonName")}).encode(),
                   "application/json")


class Setup:
    def __init__(self, served, certs: Path, cas: dict[str, CA]):
        self.served, self.certs, self.cas = served, certs, cas
        self.ports = served.ports
        self.folder: Path = served.policy

    def ingress(self, client: tuple[Path, Path] | None) -> int:
        context = ssl.create_default_context(cafile=str(self.certs / "edge-ca.pem"))
        if client is not None:
            context.load_cert_chain(*client)
        connection = http.client.HTTPSConnection("127.0.0.1", self.ports["https"],
                                                 context=context, timeout=10)
        try:
            with socket.create_connection(("127.0.0.1", self.ports["https"]), timeout=10) as raw:
                connection.sock = context.wrap_socket(raw, server_hostname="edge.example.com")
                connection.request("GET", "/", headers={"Host": "edge.example.com"})
                response = connection.getresponse()
                response.read()
                return response.status
        finally:
            connection.close()

    def secure(self) -> tuple[int, dict]:
        status, _, body = http_get(f"http://127.0.0.1:{self.ports['out']}/",
                                   {"Host": "secure.example.com:8443"}, timeout=10)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("istio-tls")
    certs = work / "policy" / "certs"
    cas = {name: CA(f"{name} CA") for name in ("edge", "clients", "upstream", "stranger")}
    for name, ca in cas.items():
        ca.write(certs / f"{name}-ca.pem")
    cas["edge"].issue("edge.example.com").write(certs, "edge")
    cas["clients"].issue("client.example.com").write(certs, "client")
    cas["stranger"].issue("client.example.com").write(certs, "stranger")
    upstream_pair = cas["upstream"].issue("secure.example.com").write(certs, "upstream")
    servers = {"echo": EchoServer("echo"),
               "secure": LoopbackHttpServer(_WhoAmI, tls=upstream_pair,
                                            client_ca=certs / "clients-ca.pem")}
    with served_policy(work, "mesh.yaml", POLICY, servers, free_ports=("https", "out"),
                       envoys={"client-v1.default": "client",
                               "istio=ingressgateway": "ingress"},
                       extra_args=("--insecure-xds",)) as served:
        yield Setup(served, certs, cas)


def _handshake_refused(setup: Setup, client: tuple[Path, Path] | None) -> bool:
    try:
        setup.ingress(client)
    except (ssl.SSLError, ConnectionError, http.client.HTTPException, OSError):
        return True
    return False


def test_gateway_mutual_tls_checks_client_certificates(setup: Setup) -> None:
    client = (setup.certs / "client.pem", setup.certs / "client.key")
    eventually(lambda: setup.ingress(client) == 200,
               what="the gateway to serve a client with a certificate of the clients' CA")
    assert _handshake_refused(setup, None)  # no certificate
    assert _handshake_refused(setup, (setup.certs / "stranger.pem",
                                      setup.certs / "stranger.key"))  # another CA's
    assert setup.ingress(client) == 200


def test_destination_rule_mutual_tls_presents_the_client_certificate(setup: Setup) -> None:
    write_atomically(setup.folder / "secure.yaml", MUTUAL)
    eventually(lambda: setup.secure()[0] == 200,
               what="the sidecar to reach the mutual-TLS server")
    status, seen = setup.secure()
    assert status == 200 and seen == {"client": "client.example.com"}
    # SIMPLE: TLS without a client certificate, which this server refuses.
    write_atomically(setup.folder / "secure.yaml", SIMPLE)
    eventually(lambda: setup.secure()[0] == 503,
               what="the server to refuse a caller without a client certificate")
    write_atomically(setup.folder / "secure.yaml", MUTUAL)
    eventually(lambda: setup.secure()[0] == 200, what="MUTUAL again")
