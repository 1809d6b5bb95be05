"""Istio Gateway servers through a real ingress Envoy (issue #13); the inputs are meshpilot's
own:

- a TLS server with `tls.mode: SIMPLE` (certificate files): the gateway ends TLS, with its own
  certificate, and the plaintext stream goes by the VirtualService's `tcp` route;
- a TLS server with `tls.mode: MUTUAL` (a credentialName Secret with its clients' CA): a
  client without a certificate the CA signed is refused, one with it reaches the tcp route;
- a TLS server with `tls.mode: ISTIO_MUTUAL`: the gateway shows its mesh identity certificate
  (the built-in CA's, SPIFFE ID of the ingress gateway's service account) and requires a
  client certificate of the mesh CA; a plain TLS client, or one of another CA, is refused;
- a GRPC server: gRPC (HTTP/2 cleartext) reaches a gRPC backend by the http route.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support import eventually, http_get, served_policy, write_atomically
from tls_material import CA

from meshpilot.ca.authority import CertificateAuthority
from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.demo.grpc_echo import GrpcEchoServer, load_stubs

pytestmark = pytest.mark.envoy

GATEWAY_ID = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"

POLICY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db}}
spec:
  hosts: [db.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 5432, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {db}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: greeter}}
spec:
  hosts: [greeter.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 50051, name: grpc, protocol: GRPC}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{grpc: {g1}}}}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: db-credential, namespace: istio-system}}
type: kubernetes.io/tls
data: {{tls.crt: {crt}, tls.key: {key}, ca.crt: {clients}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {simple}, name: tls-simple, protocol: TLS}}
    hosts: ["*"]
    tls: {{mode: SIMPLE, serverCertificate: certs/db.pem, privateKey: certs/db.key}}
  - port: {{number: {mutual}, name: tls-mutual, protocol: TLS}}
    hosts: ["*"]
    tls: {{mode: MUTUAL, credentialName: db-credential}}
  - port: {{number: {mesh}, name: tls-mesh, protocol: TLS}}
    hosts: ["*"]
    tls: {{mode: ISTIO_MUTUAL}}
  - port: {{number: {grpc}, name: grpc, protocol: GRPC}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  tcp: [{{route: [{{destination: {{host: db}}}}]}}]
  http: [{{route: [{{destination: {{host: greeter}}}}]}}]
"""

# A sidecar calling the ISTIO_MUTUAL server as a mesh service: a caller with a mesh identity
# (its own certificate, from the built-in CA) that checks the gateway's by the rule's
# subjectAltNames (EAST_RULE, written by the test).
MESH_CALLER = """
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: east}}
spec:
  hosts: [east.example.internal]
  location: MESH_INTERNAL
  ports: [{{number: {eastport}, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {mesh}}}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: client-v1
  annotations: {{meshpilot.io/outbound-port: "{out}"}}
spec: {{address: 127.0.0.1, labels: {{app: client}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress: [{{hosts: ["./east.example.internal"]}}]
"""

EAST_RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: east}
spec:
  host: east.example.internal
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL, subjectAltNames: [SAN]}}
"""

OPTIONS = [("grpc.enable_http_proxy", 0)]  # never through an http_proxy of the environment


class Setup:
    def __init__(self, served, certs: Path, ca_dir: Path):
        self.ports = served.ports
        self.certs, self.ca_dir = certs, ca_dir
        self.folder: Path = served.policy

    def through_sidecar(self) -> str | None:
        """The backend that answered an HTTP request over the client's sidecar port for
        east.example.internal (the sidecar's mTLS to the ISTIO_MUTUAL server); None: closed."""
        try:
            status, _, body = http_get(f"http://127.0.0.1:{self.ports['eastport']}/",
                                       timeout=5)
        except OSError:
            return None
        return json.loads(body)["backend"] if status == 200 else None

    def over_tls(self, port: str, client: tuple[Path, Path] | None = None,
                 cafile: Path | None = None) -> tuple[dict, str]:
        """(the gateway's certificate, the backend that answered an HTTP request sent in the
        TLS stream); raises when the gateway refuses the handshake or closes the stream."""
        context = ssl.create_default_context(cafile=str(cafile or self.certs / "edge-ca.pem"))
        context.check_hostname = False
        if client is not None:
            context.load_cert_chain(str(client[0]), str(client[1]))
        with socket.create_connection(("127.0.0.1", self.ports[port]), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="db.example.com") as tls:
            peer = tls.getpeercert()
            tls.sendall(b"GET / HTTP/1.1\r\nHost: db\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
        if b"\r\n\r\n" not in data:
            raise ConnectionError(f"no HTTP answer in the stream: {data!r}")
        return peer, json.loads(data.split(b"\r\n\r\n", 1)[1])["backend"]

    def answers(self, port: str, client: tuple[Path, Path] | None = None,
                cafile: Path | None = None) -> bool:
        try:
            return self.over_tls(port, client, cafile)[1] == "db"
        except (OSError, ssl.SSLError, ValueError):
            return False

    def refused(self, port: str, client: tuple[Path, Path] | None = None,
                cafile: Path | None = None) -> bool:
        """The handshake (or the stream right after it: TLS 1.3 clients learn of a refused
        certificate at their first read) failed; a port not listening yet is no refusal."""
        try:
            self.over_tls(port, client, cafile)
        except ConnectionRefusedError:
            return False
        except (OSError, ssl.SSLError):
            return True
        return False

    def mesh_client(self) -> tuple[Path, Path]:
        """A workload certificate of the mesh CA (the one meshpilot serve keeps in --ca-dir)."""
        authority = CertificateAuthority.load(self.ca_dir)
        issued = authority.issue(authority.spiffe_id("client"), time.time(), 3600.0)
        cert, key = self.certs / "mesh-client.pem", self.certs / "mesh-client.key"
        cert.write_bytes(issued.certificate_chain)
        key.write_bytes(issued.private_key)
        return cert, key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("istio-gw-servers")
    certs = work / "policy" / "certs"
    edge, clients, stranger = CA("edge CA"), CA("clients CA"), CA("stranger CA")
    edge.write(certs / "edge-ca.pem")
    server = edge.issue("db.example.com")
    server.write(certs, "db")
    clients.issue("client.example.com").write(certs, "client")
    stranger.issue("client.example.com").write(certs, "stranger")
    ca_dir = work / "ca"
    servers = {"db": EchoServer("db"), "g1": GrpcEchoServer("g1")}
    with served_policy(work, "istio.yaml", POLICY + MESH_CALLER, servers,
                       free_ports=("simple", "mutual", "mesh", "grpc", "eastport", "out"),
                       envoys={"istio=ingressgateway": "ingress",
                               "client-v1.default": "client"},
                       extra_args=("--insecure-xds", "--ca-dir", str(ca_dir)),
                       crt=_b64(server.cert_pem), key=_b64(server.key_pem),
                       clients=_b64(clients.pem)) as served:
        yield Setup(served, certs, ca_dir)


def test_tls_simple_server_ends_tls_then_tcp(setup: Setup) -> None:
    eventually(lambda: setup.answers("simple"), what="the TLS server to end TLS, then TCP")
    peer, backend = setup.over_tls("simple")
    assert backend == "db"
    # The session is the gateway's: its certificate (the db echo backend speaks no TLS).
    assert ("DNS", "db.example.com") in peer["subjectAltName"]


def test_tls_mutual_server_requires_a_client_certificate_of_its_ca(setup: Setup) -> None:
    client = (setup.certs / "client.pem", setup.certs / "client.key")
    eventually(lambda: setup.answers("mutual", client),
               what="a client of the clients' CA to reach the tcp route")
    assert setup.refused("mutual")
    assert setup.refused("mutual", (setup.certs / "stranger.pem", setup.certs / "stranger.key"))
    assert setup.answers("mutual", client)


def test_istio_mutual_server_takes_mesh_identities_only(setup: Setup) -> None:
    bundle = setup.ca_dir / "ca.crt"
    mesh_client = setup.mesh_client()
    eventually(lambda: setup.answers("mesh", mesh_client, bundle),
               what="a mesh client to reach the ISTIO_MUTUAL server")
    peer, backend = setup.over_tls("mesh", mesh_client, bundle)
    assert backend == "db"
    # The gateway shows its mesh identity, which the mesh CA signed (the handshake verified it).
    assert ("URI", GATEWAY_ID) in peer["subjectAltName"]
    # A plain TLS client (no certificate) and one of another CA are refused.
    assert setup.refused("mesh", None, bundle)
    assert setup.refused("mesh", (setup.certs / "client.pem", setup.certs / "client.key"),
                         bundle)


async def _say(port: int, message: str):  # type: ignore[no-untyped-def]
    pb2, pb2_grpc = load_stubs()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
        return await pb2_grpc.EchoStub(channel).Say(pb2.EchoRequest(message=message),
                                                    timeout=5)


def test_grpc_server_routes_h2c_to_a_grpc_backend(setup: Setup) -> None:
    def reached() -> bool:
        try:
            return asyncio.run(_say(setup.ports["grpc"], "ping")).backend == "g1"
        except grpc.RpcError:
            return False

    eventually(reached, what="a gRPC call through the GRPC server")
    reply = asyncio.run(_say(setup.ports["grpc"], "hello"))
    assert reply.backend == "g1" and reply.message == "hello"


def test_a_sidecar_reaches_the_istio_mutual_server_by_its_subject_alt_names(
        setup: Setup) -> None:
    """DestinationRule ISTIO_MUTUAL `subjectAltNames`: the sidecar's mTLS accepts the gateway's
    certificate only when it names one of them (the gateway's identity is not the default
    service account's a ServiceEntry endpoint would otherwise be expected to show)."""
    write_atomically(setup.folder / "east.yaml", EAST_RULE.replace("SAN", GATEWAY_ID))
    eventually(lambda: setup.through_sidecar() == "db",
               what="the sidecar's mTLS to reach the ISTIO_MUTUAL server")
    other = "spiffe://cluster.local/ns/istio-system/sa/someone-else"
    write_atomically(setup.folder / "east.yaml", EAST_RULE.replace("SAN", other))
    eventually(lambda: setup.through_sidecar() is None,
               what="the sidecar to refuse a gateway certificate without the named identity")
    write_atomically(setup.folder / "east.yaml", EAST_RULE.replace("SAN", GATEWAY_ID))
    eventually(lambda: setup.through_sidecar() == "db", what="the named identity again")
