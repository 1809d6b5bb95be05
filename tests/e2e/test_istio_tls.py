"""Istio TLS with certificates of one's own, through real Envoys.

- Gateway `tls.mode: MUTUAL`: the ingress gateway asks every client for a certificate and
  checks it against `caCertificates`: a client with one the clients' CA signed is served, a
  client without one, or with one of another CA, fails the handshake.
- DestinationRule `tls.mode: MUTUAL`: a workload's sidecar originates TLS to an external
  service that requires client certificates, presenting `clientCertificate` and checking the
  server against `caCertificates` and `sni`; with tls SIMPLE instead (no client certificate)
  the server refuses the handshake and the caller gets 503.
- DestinationRule `tls.subjectAltNames`: the server's certificate must carry one of them, else
  the handshake fails (503); `tls.credentialName`: the certificates from a Secret of the rule's
  namespace (SIMPLE: the CA; MUTUAL: client certificate, key and CA).
- Gateway server `tls.subjectAltNames` (MUTUAL: the client's certificate must carry one) and
  `tls.mode: OPTIONAL_MUTUAL` (a client without a certificate is served, one with a
  certificate of another CA is refused).

Certificates are made here (a CA for the gateway, one for the clients, one for the upstream)
and written below the policy folder, which relative paths are read from.
"""

from __future__ import annotations

import base64
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
kind: ServiceEntry
metadata: {{name: open}}
spec:
  hosts: [open.example.com]
  location: MESH_EXTERNAL
  ports: [{{number: 8443, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {open}}}}}]
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

    def ingress(self, client: tuple[Path, Path] | None, port: str = "https") -> int:
        context = ssl.create_default_context(cafile=str(self.certs / "edge-ca.pem"))
        if client is not None:
            context.load_cert_chain(*client)
        connection = http.client.HTTPSConnection("127.0.0.1", self.ports[port],
                                                 context=context, timeout=10)
        try:
            with socket.create_connection(("127.0.0.1", self.ports[port]), timeout=10) as raw:
                connection.sock = context.wrap_socket(raw, server_hostname="edge.example.com")
                connection.request("GET", "/", headers={"Host": "edge.example.com"})
                response = connection.getresponse()
                response.read()
                return response.status
        finally:
            connection.close()

    def secure(self, host: str = "secure.example.com") -> tuple[int, dict]:
        status, _, body = http_get(f"http://127.0.0.1:{self.ports['out']}/",
                                   {"Host": f"{host}:8443"}, timeout=10)
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
                                            client_ca=certs / "clients-ca.pem"),
               "open": LoopbackHttpServer(_WhoAmI, tls=upstream_pair)}
    with served_policy(work, "mesh.yaml", POLICY, servers,
                       free_ports=("https", "out", "optional", "named"),
                       envoys={"client-v1.default": "client",
                               "istio=ingressgateway": "ingress"},
                       extra_args=("--insecure-xds",)) as served:
        yield Setup(served, certs, cas)


def _handshake_refused(setup: Setup, client: tuple[Path, Path] | None,
                       port: str = "https") -> bool:
    """The TLS handshake (or the first read after it) failed; a port not listening (yet) is
    not a refusal."""
    try:
        setup.ingress(client, port)
    except ConnectionRefusedError:
        return False
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


def _secret(name: str, **values: Path) -> str:
    data = ", ".join(f"{key.replace('_', '.')}: {base64.b64encode(path.read_bytes()).decode()}"
                     for key, path in values.items())
    return f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: Opaque\n" \
        f"data: {{{data}}}\n"


def _rule(host: str, tls: str) -> str:
    return (f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: "
            f"{{name: {host.split('.')[0]}}}\nspec:\n  host: {host}\n  trafficPolicy:\n"
            f"    tls: {tls}\n")


def test_destination_rule_subject_alt_names_check_the_server(setup: Setup) -> None:
    """The upstream's certificate names secure.example.com (and the SNI says so too): a rule
    that wants another name fails the handshake, one that lists it reaches the server."""
    mutual = ("{mode: MUTUAL, clientCertificate: certs/client.pem, privateKey: "
              "certs/client.key, caCertificates: certs/upstream-ca.pem, sni: "
              "secure.example.com, subjectAltNames: [NAMES]}")
    write_atomically(setup.folder / "secure.yaml", _rule(
        "secure.example.com", mutual.replace("NAMES", "other.example.com")))
    eventually(lambda: setup.secure()[0] == 503,
               what="the sidecar to refuse a server whose certificate lacks the name")
    write_atomically(setup.folder / "secure.yaml", _rule(
        "secure.example.com", mutual.replace("NAMES", "other.example.com, secure.example.com")))
    eventually(lambda: setup.secure()[0] == 200,
               what="the sidecar to accept the server's certificate with one of the names")
    assert setup.secure() == (200, {"client": "client.example.com"})
    # SIMPLE, to a server that asks for no client certificate
    simple = "{mode: SIMPLE, caCertificates: certs/upstream-ca.pem, subjectAltNames: [NAMES]}"
    write_atomically(setup.folder / "open.yaml", _rule(
        "open.example.com", simple.replace("NAMES", "'spiffe://x/y', secure.example.com")))
    eventually(lambda: setup.secure("open.example.com") == (200, {"client": None}),
               what="SIMPLE to accept the server's certificate with one of the names")
    write_atomically(setup.folder / "open.yaml", _rule(
        "open.example.com", simple.replace("NAMES", "other.example.com")))
    eventually(lambda: setup.secure("open.example.com")[0] == 503,
               what="SIMPLE to refuse a server whose certificate lacks the name")
    (setup.folder / "open.yaml").unlink()
    write_atomically(setup.folder / "secure.yaml", MUTUAL)


def test_destination_rule_credential_name_from_a_secret(setup: Setup) -> None:
    """MUTUAL from one Secret of the rule's namespace (default): the client certificate the
    server sees is the Secret's; SIMPLE: only the CA, from the Secret."""
    certs = setup.certs

    def credentials(ca: str) -> None:
        write_atomically(setup.folder / "credentials.yaml", "---\n".join((
            _secret("client-credential", cert=certs / "client.pem", key=certs / "client.key",
                    cacert=certs / "upstream-ca.pem"),
            _secret("upstream-ca", cacert=certs / ca))))

    # First a state that fails both ways: SIMPLE to the secure server (which wants a client
    # certificate), and a CA that did not sign the open server's certificate.
    credentials("stranger-ca.pem")
    write_atomically(setup.folder / "secure.yaml", _rule(
        "secure.example.com", "{mode: SIMPLE, credentialName: upstream-ca}"))
    write_atomically(setup.folder / "open.yaml", _rule(
        "open.example.com", "{mode: SIMPLE, credentialName: upstream-ca, "
                            "sni: secure.example.com}"))
    eventually(lambda: setup.secure()[0] == 503 and
               setup.secure("open.example.com")[0] == 503,
               what="the sidecar to fail without a client certificate, and with a wrong CA")
    # The Secret's client certificate, and the right CA in the Secret.
    write_atomically(setup.folder / "secure.yaml", _rule(
        "secure.example.com", "{mode: MUTUAL, credentialName: client-credential, "
                              "sni: secure.example.com}"))
    credentials("upstream-ca.pem")
    eventually(lambda: setup.secure() == (200, {"client": "client.example.com"}),
               what="the sidecar to present the Secret's client certificate")
    eventually(lambda: setup.secure("open.example.com") == (200, {"client": None}),
               what="SIMPLE with the Secret's CA")
    (setup.folder / "open.yaml").unlink()
    write_atomically(setup.folder / "secure.yaml", MUTUAL)


SECOND_GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge2, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {optional}, name: https-optional, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: OPTIONAL_MUTUAL, serverCertificate: certs/edge.pem, privateKey: certs/edge.key,
           caCertificates: certs/clients-ca.pem}}
  - port: {{number: {named}, name: https-named, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: MUTUAL, serverCertificate: certs/edge.pem, privateKey: certs/edge.key,
           caCertificates: certs/clients-ca.pem, subjectAltNames: [{names}]}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge2}}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge2]
  http: [{{route: [{{destination: {{host: echo}}}}]}}]
"""


def test_gateway_optional_mutual_and_client_subject_alt_names(setup: Setup) -> None:
    client = (setup.certs / "client.pem", setup.certs / "client.key")
    stranger = (setup.certs / "stranger.pem", setup.certs / "stranger.key")
    write_atomically(setup.folder / "edge2.yaml", SECOND_GATEWAY.format(
        **setup.ports, names="nobody.example.com"))
    # OPTIONAL_MUTUAL: with or without a certificate of the clients' CA; another CA's: refused.
    eventually(lambda: setup.ingress(None, "optional") == 200,
               what="OPTIONAL_MUTUAL to serve a client without a certificate")
    assert setup.ingress(client, "optional") == 200
    assert _handshake_refused(setup, stranger, "optional")
    # MUTUAL with subjectAltNames: the client's certificate (client.example.com) must carry
    # one of them.
    eventually(lambda: _handshake_refused(setup, client, "named"),
               what="a client certificate without the names to be refused")
    write_atomically(setup.folder / "edge2.yaml", SECOND_GATEWAY.format(
        **setup.ports, names="nobody.example.com, client.example.com"))
    eventually(lambda: not _handshake_refused(setup, client, "named"),
               what="a client certificate with one of the names to be served")
    assert setup.ingress(client, "named") == 200
    assert _handshake_refused(setup, None, "named")
    assert _handshake_refused(setup, stranger, "named")
    (setup.folder / "edge2.yaml").unlink()
