"""istio.io's Secure Gateways task: the ingress gateway's certificates from Secrets
(`tls.credentialName`), and an east-west gateway's AUTO_PASSTHROUGH, through real Envoys.

The Secrets are the task's `kubectl create -n istio-system secret ...` as documents in the
policy folder: a `kubernetes.io/tls` Secret for SIMPLE TLS (then replaced by another
certificate, which the gateway then serves); for MUTUAL, the task's generic Secret holding
`tls.crt`, `tls.key` and `ca.crt` (clients without a certificate that CA signed fail the
handshake), then the clients' CA in a Secret of its own, `<credentialName>-cacert`.

AUTO_PASSTHROUGH (Istio's multi-network gateway, `samples/multicluster/expose-services.yaml`):
a client's TLS connection whose SNI is `outbound_.PORT_._.HOST` reaches that service's
endpoint still encrypted, with its SNI, and no VirtualService is written.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import LoopbackHttpServer, eventually, served_policy, write_atomically
from tls_material import CA

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin}}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {httpbin}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure, namespace: foo}}
spec:
  hosts: [secure.foo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9443, name: tls, protocol: TLS}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tls: {secure}}}}}]
"""

# Istio's samples/multicluster/expose-services.yaml, its port a free one here.
EXPOSE_SERVICES = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: cross-network-gateway
spec:
  selector:
    istio: eastwestgateway
  servers:
    - port:
        number: PORT
        name: tls
        protocol: TLS
      tls:
        mode: AUTO_PASSTHROUGH
      hosts:
        - "*.local"
"""

VIRTUAL_SERVICE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - "httpbin.example.com"
  gateways:
  - mygateway
  http:
  - match:
    - uri:
        prefix: /status
    route:
    - destination:
        port:
          number: 8000
        host: httpbin
"""

GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway # use istio default ingress gateway
  servers:
  - port:
      number: PORT
      name: https
      protocol: HTTPS
    tls:
      mode: MODE
      credentialName: httpbin-credential # must be the same as secret
    hosts:
    - httpbin.example.com
"""


def secret(name: str, kind: str, **values: bytes) -> str:
    data = "\n".join(f"  {key.replace('_', '.')}: {base64.b64encode(value).decode()}"
                     for key, value in values.items())
    return (f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: "
            f"istio-system\ntype: {kind}\ndata:\n{data}\n")


class Setup:
    secure: LoopbackHttpServer  # the TLS service behind the east-west gateway

    def __init__(self, served, certs: Path, cas: dict[str, CA]):
        self.served, self.certs, self.cas = served, certs, cas
        self.port = served.ports["https"]
        self.folder: Path = served.policy

    def apply(self, mode: str, *secrets: str) -> None:
        write_atomically(self.folder / "gateway.yaml", "\n---\n".join(
            (GATEWAY.replace("PORT", str(self.port)).replace("MODE", mode), VIRTUAL_SERVICE,
             *secrets)))

    def get(self, trust: str, client: str | None = None) -> tuple[int, str]:
        """`curl --cacert <trust>.pem [--cert <client>] https://httpbin.example.com/`: the
        status and the common name of the certificate the gateway presented."""
        context = ssl.create_default_context(cafile=str(self.certs / f"{trust}-ca.pem"))
        if client is not None:
            context.load_cert_chain(self.certs / f"{client}.pem", self.certs / f"{client}.key")
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            sock = context.wrap_socket(raw, server_hostname="httpbin.example.com")
            peer = sock.getpeercert() or {}
            name = dict(item[0] for item in peer.get("subject", ()))["commonName"]
            connection = http.client.HTTPSConnection("httpbin.example.com", timeout=10)
            connection.sock = sock
            try:
                connection.request("GET", "/status/418", headers={"Host": "httpbin.example.com"})
                response = connection.getresponse()
                response.read()
                return response.status, name
            finally:
                connection.close()

    def refused(self, trust: str, client: str | None = None) -> bool:
        try:
            self.get(trust, client)
        except (ssl.SSLError, ConnectionError, http.client.HTTPException, OSError):
            return True
        return False

    def pem(self, stem: str) -> bytes:
        return (self.certs / stem).read_bytes()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("istio-credential")
    certs = work / "certs"  # outside the policy folder: the Secrets carry them
    cas = {name: CA(f"{name} CA") for name in ("example", "other", "clients", "stranger")}
    for name, ca in cas.items():
        ca.write(certs / f"{name}-ca.pem")
    cas["example"].issue("httpbin.example.com").write(certs, "httpbin")
    cas["other"].issue("httpbin.example.com").write(certs, "httpbin-new")
    cas["clients"].issue("client.example.com").write(certs, "client")
    cas["stranger"].issue("client.example.com").write(certs, "stranger")
    secure = LoopbackHttpServer(_Hello, tls=cas["other"].issue("secure.foo").write(certs,
                                                                                  "secure"))
    with served_policy(work, "mesh.yaml", MESH, {"httpbin": EchoServer("httpbin"),
                                                 "secure": secure},
                       free_ports=("https", "eastwest"),
                       envoys={"istio=ingressgateway": "ingress",
                               "istio=eastwestgateway": "eastwest"},
                       extra_args=("--insecure-xds",)) as served:
        setup = Setup(served, certs, cas)
        setup.secure = secure
        yield setup


class _Hello(LoopbackHttpServer.Handler):
    def do_GET(self) -> None:
        self.reply(200, b"hello from secure")


def test_simple_tls_from_a_kubernetes_tls_secret(setup: Setup) -> None:
    setup.apply("SIMPLE", secret("httpbin-credential", "kubernetes.io/tls",
                                 tls_crt=setup.pem("httpbin.pem"),
                                 tls_key=setup.pem("httpbin.key")))
    eventually(lambda: setup.get("example") == (200, "httpbin.example.com"), timeout=30,
               what="the gateway to serve the Secret's certificate")
    assert setup.refused("other")  # a client trusting another CA refuses it
    # The Secret replaced (kubectl apply of a new certificate): the gateway serves the new one.
    setup.apply("SIMPLE", secret("httpbin-credential", "kubernetes.io/tls",
                                 tls_crt=setup.pem("httpbin-new.pem"),
                                 tls_key=setup.pem("httpbin-new.key")))
    eventually(lambda: not setup.refused("other"), timeout=30,
               what="the gateway to serve the new certificate")
    assert setup.get("other")[0] == 200
    assert setup.refused("example")


def test_mutual_tls_with_the_clients_ca_in_the_secret(setup: Setup) -> None:
    # The task's `kubectl create secret generic httpbin-credential --from-file=tls.key=...
    # --from-file=tls.crt=... --from-file=ca.crt=...`
    setup.apply("MUTUAL", secret("httpbin-credential", "Opaque",
                                 tls_crt=setup.pem("httpbin.pem"),
                                 tls_key=setup.pem("httpbin.key"),
                                 ca_crt=setup.pem("clients-ca.pem")))
    eventually(lambda: setup.refused("example"), timeout=30,
               what="the gateway to ask for a client certificate")
    eventually(lambda: setup.get("example", "client")[0] == 200, timeout=30,
               what="a client with a certificate of the clients' CA to be served")
    assert setup.refused("example", "stranger")  # another CA's certificate


def test_mutual_tls_with_the_clients_ca_in_a_cacert_secret(setup: Setup) -> None:
    setup.apply("MUTUAL",
                secret("httpbin-credential", "kubernetes.io/tls",
                       tls_crt=setup.pem("httpbin.pem"), tls_key=setup.pem("httpbin.key")),
                secret("httpbin-credential-cacert", "Opaque",
                       cacert=setup.pem("stranger-ca.pem")))
    # now the stranger's CA is the clients' CA
    eventually(lambda: not setup.refused("example", "stranger"), timeout=30,
               what="the gateway to trust the -cacert Secret's CA")
    assert setup.get("example", "stranger")[0] == 200
    assert setup.refused("example", "client")
    assert setup.refused("example")


def test_auto_passthrough_sends_the_connection_to_the_service_its_sni_names(
        setup: Setup) -> None:
    port = setup.served.ports["eastwest"]
    write_atomically(setup.folder / "eastwest.yaml",
                     EXPOSE_SERVICES.replace("PORT", str(port)))
    sni = "outbound_.9443_._.secure.foo.svc.cluster.local"

    def get() -> tuple[int, str]:
        context = ssl.create_default_context(cafile=str(setup.certs / "other-ca.pem"))
        context.check_hostname = False  # the SNI is Istio's, the certificate the service's
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            sock = context.wrap_socket(raw, server_hostname=sni)
            name = dict(item[0] for item in sock.getpeercert()["subject"])["commonName"]
            connection = http.client.HTTPSConnection("secure", timeout=10)
            connection.sock = sock
            try:
                connection.request("GET", "/")
                response = connection.getresponse()
                return response.status, name + ":" + response.read().decode()
            finally:
                connection.close()

    eventually(lambda: get() == (200, "secure.foo:hello from secure"), timeout=30,
               what="the east-west gateway to pass the connection through")
    assert setup.secure.server_names[-1] == sni  # the service ended TLS, with its SNI
    # an SNI naming no service (or not Istio's form) is closed
    other = "outbound_.9443_._.nothing.foo.svc.cluster.local"
    context = ssl.create_default_context(cafile=str(setup.certs / "other-ca.pem"))
    context.check_hostname = False
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)), \
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        context.wrap_socket(raw, server_hostname=other).recv(1)
