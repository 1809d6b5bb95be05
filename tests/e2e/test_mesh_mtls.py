"""Mesh security end to end: real Envoys as sidecars on loopback with certificates from
meshpilot's CA (docs/security.md).

A calls B through its local port; B's inbound is mTLS strict and allows only A (C, a mesh
member too, gets 403); P is permissive (plaintext accepted, mesh callers still use mTLS). The
certificates live 8 s, so they rotate every ~4 s while the tests run: requests keep succeeding.
The test shares the CA directory with meshpilot, so it can issue client certificates itself.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from support import MeshpilotProcess, eventually, http_get, served_policy

from meshpilot.ca import CertificateAuthority
from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

TTL_SECONDS = 8  # long enough that a loaded CI machine still rotates before expiry
TTL = f"{TTL_SECONDS}s"
SPIFFE = "spiffe://cluster.local/ns/default/sa/"

POLICY = """
kind: Service
name: a
endpoints: ["127.0.0.1:{a_in}"]
sidecar:
  port: {a_in}
  address: 127.0.0.1
  app: {app_a}
  mtls: strict
  calls: [{{service: b, local_port: {a_to_b}}}, {{service: p, local_port: {a_to_p}}}]
---
kind: Service
name: b
endpoints: ["127.0.0.1:{b_in}"]
sidecar:
  port: {b_in}
  address: 127.0.0.1
  app: {app_b}
  mtls: strict
  authorization: {{action: ALLOW, rules: [{{from: [a]}}]}}
---
kind: Service
name: c
endpoints: ["127.0.0.1:{c_in}"]
sidecar:
  port: {c_in}
  address: 127.0.0.1
  app: {app_c}
  mtls: strict
  calls: [{{service: b, local_port: {c_to_b}}}]
---
kind: Service
name: p
endpoints: ["127.0.0.1:{p_in}"]
sidecar: {{port: {p_in}, address: 127.0.0.1, app: {app_p}, mtls: permissive}}
"""


class Mesh:
    def __init__(self, ports: dict[str, int], sidecars: dict[str, EnvoyProcess],
                 mp: MeshpilotProcess, ca: CertificateAuthority, work: Path):
        self.ports, self.sidecars, self.mp, self.ca, self.work = ports, sidecars, mp, ca, work

    def get(self, port: str, path: str = "/") -> tuple[int, dict, bytes]:
        return http_get(f"http://127.0.0.1:{self.ports[port]}{path}", timeout=3)

    def stat(self, sidecar: str, name: str) -> int:
        return self.sidecars[sidecar].stats().get(name, 0)

    def client_context(self, name: str, ca: CertificateAuthority | None = None) -> ssl.SSLContext:
        """An mTLS client presenting a certificate for `name` issued by `ca` (ours by default),
        trusting our root."""
        issued = (ca or self.ca).issue((ca or self.ca).spiffe_id(name), time.time(), 3600)
        folder = self.work / f"client-{name}-{id(ca)}"
        folder.mkdir(exist_ok=True)
        (folder / "cert.pem").write_bytes(issued.certificate_chain)
        (folder / "key.pem").write_bytes(issued.private_key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(cadata=self.ca.trust_bundle.decode())
        context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
        return context

    def served_certificate(self, port: str, context: ssl.SSLContext) -> x509.Certificate:
        with socket.create_connection(("127.0.0.1", self.ports[port]), timeout=3) as raw, \
                context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    def tls_get(self, port: str, context: ssl.SSLContext, path: str = "/") -> tuple[int, bytes]:
        """One HTTP/1.1 request over mTLS straight to a sidecar's inbound port."""
        with socket.create_connection(("127.0.0.1", self.ports[port]), timeout=3) as raw, \
                context.wrap_socket(raw) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("mesh-mtls-e2e")
    ca = CertificateAuthority.load_or_create(work / "ca")  # meshpilot loads the same root
    names = ("a", "b", "c", "p")
    with served_policy(work, "mesh.yaml", POLICY, {f"app_{n}": EchoServer(n) for n in names},
                       free_ports=("a_in", "b_in", "c_in", "p_in", "a_to_b", "a_to_p", "c_to_b"),
                       envoys={name: f"sidecar-{name}" for name in names},
                       extra_args=("--ca-dir", str(work / "ca"), "--cert-ttl", TTL)) as served:
        environment = Mesh(served.ports, served.envoys, served.mp, ca, work)
        eventually(lambda: environment.get("a_to_b")[0] == 200, timeout=20,
                   what="A's sidecar to reach B over mTLS")
        yield environment


def _listener_stat(mesh: Mesh, sidecar: str, port: str, name: str) -> int:
    return mesh.stat(sidecar, f"listener.127.0.0.1_{mesh.ports[port]}.{name}")


def test_a_calls_b_over_mtls_with_its_identity(mesh: Mesh) -> None:
    handshakes = _listener_stat(mesh, "b", "b_in", "ssl.handshake")
    status, _, body = mesh.get("a_to_b", "/hello")
    assert status == 200, body[:300]
    seen = json.loads(body)
    assert seen["backend"] == "b" and seen["path"] == "/hello"  # it reached B's application
    # B's sidecar tells its application who called: A's SPIFFE ID from A's certificate.
    assert f"URI={SPIFFE}a" in seen["headers"]["x-forwarded-client-cert"]
    assert mesh.stat("a", "cluster.b.ssl.handshake") >= 1
    assert handshakes >= 1 or _listener_stat(mesh, "b", "b_in", "ssl.handshake") >= 1


def test_plaintext_to_a_strict_inbound_is_refused(mesh: Mesh) -> None:
    errors = _listener_stat(mesh, "b", "b_in", "ssl.connection_error")
    requests = mesh.stat("b", "cluster.inbound|b.upstream_rq_total")
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        mesh.get("b_in", "/plain")
    eventually(lambda: _listener_stat(mesh, "b", "b_in", "ssl.connection_error") > errors,
               timeout=5, what="B's listener to count the refused plaintext connection")
    assert mesh.stat("b", "cluster.inbound|b.upstream_rq_total") == requests


def test_a_client_certificate_from_another_ca_is_refused(mesh: Mesh) -> None:
    stranger = CertificateAuthority.create()
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        mesh.tls_get("b_in", mesh.client_context("a", stranger))


def test_permissive_accepts_plaintext_and_mtls(mesh: Mesh) -> None:
    status, _, body = mesh.get("p_in", "/plain")  # a raw HTTP client straight to P's inbound
    assert status == 200 and json.loads(body)["backend"] == "p"
    assert "x-forwarded-client-cert" not in json.loads(body)["headers"]
    status, _, body = mesh.get("a_to_p", "/mesh")  # A's sidecar speaks mTLS to P
    assert status == 200, body[:300]
    assert f"URI={SPIFFE}a" in json.loads(body)["headers"]["x-forwarded-client-cert"]
    assert mesh.stat("a", "cluster.p.ssl.handshake") >= 1


def test_b_allows_only_a(mesh: Mesh) -> None:
    assert mesh.get("a_to_b", "/allowed")[0] == 200
    denied = mesh.stat("b", "http.inbound/b.rbac.denied")
    status, _, body = mesh.get("c_to_b", "/denied")  # C is in the mesh, with a valid identity
    assert status == 403, body[:300]
    assert b"RBAC" in body
    assert mesh.stat("c", "cluster.b.ssl.handshake") >= 1  # mTLS worked; authorization refused
    eventually(lambda: mesh.stat("b", "http.inbound/b.rbac.denied") > denied, timeout=5,
               what="B's RBAC filter to count the denial")
    # The same with a client holding certificates of the mesh's CA: by identity, not by port.
    assert mesh.tls_get("b_in", mesh.client_context("a"))[0] == 200
    assert mesh.tls_get("b_in", mesh.client_context("c"))[0] == 403


def test_certificates_rotate_while_requests_keep_succeeding(mesh: Mesh) -> None:
    context = mesh.client_context("a")
    failures: list[str] = []
    sent = [0]
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                status, _, body = mesh.get("a_to_b", "/during-rotation")
                if status != 200:
                    failures.append(f"{status}: {body[:200]!r}")
            except Exception as e:  # every failure counts
                failures.append(repr(e))
            sent[0] += 1
            time.sleep(0.02)

    first = mesh.served_certificate("b_in", context)
    assert first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.UniformResourceIdentifier) == [f"{SPIFFE}b"]
    lifetime = first.not_valid_after_utc.timestamp() - time.time()
    assert lifetime <= TTL_SECONDS + 0.5, lifetime  # a short-lived certificate, as --cert-ttl asked
    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    serials = [first.serial_number]
    try:
        deadline = time.monotonic() + 6 * TTL_SECONDS
        while len(serials) < 3 and time.monotonic() < deadline:  # two rotations
            serial = mesh.served_certificate("b_in", context).serial_number
            if serial != serials[-1]:
                serials.append(serial)
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        sender.join(5)
    assert len(serials) >= 3, f"B's certificate rotated {len(serials) - 1} time(s) in {6 * TTL_SECONDS} s"
    assert sent[0] > 20
    assert failures == [], f"{len(failures)} of {sent[0]} requests failed: {failures[:5]}"
    # Envoy's own view: B's sidecar serves the newest certificate.
    certs = json.loads(mesh.sidecars["b"].admin_get("/certs"))["certificates"]
    served = {int(c["serial_number"], 16) for entry in certs for c in entry["cert_chain"]}
    assert served & set(serials[1:]), (served, serials)


def test_each_sidecar_holds_only_its_own_identity(mesh: Mesh) -> None:
    for name in ("a", "b"):
        dump = mesh.sidecars[name].config_dump(resource="dynamic_active_secrets")
        secrets = {s["name"]: s for s in dump.get("configs", [])}
        assert set(secrets) == {"spiffe/identity", "spiffe/trust-bundle"}, secrets.keys()
        chain = secrets["spiffe/identity"]["secret"]["tls_certificate"]["certificate_chain"]
        pem = chain["inline_string"] if "inline_string" in chain else chain["inline_bytes"]
        cert = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.UniformResourceIdentifier)
        assert uris == [f"{SPIFFE}{name}"]


def test_keys_are_never_in_meshpilot_dumps_or_logs(mesh: Mesh) -> None:
    for node in ("a-1", "b-1"):
        status, _, body = mesh.mp.admin_get(f"/debug/config_dump?node={node}")
        assert status == 200
        assert b"PRIVATE KEY" not in body
        assert b"spiffe/identity" in body and b"[redacted sha256:" in body
    assert "PRIVATE KEY" not in mesh.mp.log_path.read_text(errors="replace")
