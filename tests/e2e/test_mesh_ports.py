"""A sidecar with several inbound ports, each with its own mTLS mode, end to end: real Envoys on
loopback with certificates from meshpilot's CA (docs/policy.md#sidecar, `ports`).

B's sidecar has three inbound ports: `web` (HTTP, strict: the sidecar's mtls), `admin` (HTTP,
permissive) and `raw` (tcp, permissive), each forwarding to an application of its own. A plain
client reaches only the permissive ports; an mTLS client (a certificate the test issues from
the same CA) reaches all three, and A's sidecar calls B's first port over mTLS, and the admin
port over mTLS too as Service `b-admin`, which that port serves (`ports[].service`).
"""

from __future__ import annotations

import json
import socket
import socketserver
import ssl
import threading
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import eventually, http_get, served_policy, write_atomically

from meshpilot.ca import CertificateAuthority
from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: b
endpoints: ["127.0.0.1:{b_web}"]
sidecar:
  address: 127.0.0.1
  mtls: strict
  ports:
    - {{port: {b_web}, app: {app_web}}}
    - {{port: {b_admin}, app: {app_admin}, mtls: permissive, service: b-admin}}
    - {{port: {b_raw}, app: {app_raw}, protocol: tcp, mtls: permissive}}
---
kind: Service
name: a
endpoints: ["127.0.0.1:{a_in}"]
sidecar:
  port: {a_in}
  address: 127.0.0.1
  app: {app_a}
  mtls: strict
  calls: [{{service: b, local_port: {a_to_b}}}, {{service: b-admin, local_port: {a_to_admin}}}]
---
kind: Service
name: b-admin                     # B's admin port, for callers in the mesh
endpoints: ["127.0.0.1:{b_admin}"]
"""


class TcpEcho:
    """A raw TCP application: echoes what it reads, prefixed so the test knows it got there."""

    def __init__(self) -> None:
        self._server: socketserver.ThreadingTCPServer | None = None

    def start(self) -> int:
        class Echo(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                while data := self.request.recv(65536):
                    self.request.sendall(b"echo:" + data)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class Mesh:
    def __init__(self, ports: dict[str, int], sidecars: dict[str, EnvoyProcess],
                 ca: CertificateAuthority, work: Path):
        self.ports, self.sidecars, self.ca, self.work = ports, sidecars, ca, work

    def get(self, port: str, path: str = "/") -> tuple[int, dict]:
        status, _, body = http_get(f"http://127.0.0.1:{self.ports[port]}{path}", timeout=3)
        return status, json.loads(body)

    def client_context(self, name: str) -> ssl.SSLContext:
        """An mTLS client presenting our CA's certificate for `name`, trusting our root."""
        issued = self.ca.issue(self.ca.spiffe_id(name), time.time(), 3600)
        folder = self.work / f"client-{name}"
        folder.mkdir(exist_ok=True)
        (folder / "cert.pem").write_bytes(issued.certificate_chain)
        (folder / "key.pem").write_bytes(issued.private_key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(cadata=self.ca.trust_bundle.decode())
        context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
        return context

    def exchange(self, port: str, data: bytes, context: ssl.SSLContext | None = None, *,
                 expect: int | None = None) -> bytes:
        """Send `data` on one connection to a sidecar port (over mTLS with `context`) and read
        until `expect` bytes came, or else until the peer closes."""
        with socket.create_connection(("127.0.0.1", self.ports[port]), timeout=5) as raw:
            conn = raw if context is None else context.wrap_socket(raw)
            conn.sendall(data)
            received = b""
            while (expect is None or len(received) < expect) and (chunk := conn.recv(65536)):
                received += chunk
            return received

    def echo(self, port: str, data: bytes, context: ssl.SSLContext | None = None) -> bytes:
        return self.exchange(port, data, context, expect=len(data) + len(b"echo:"))

    def tls_get(self, port: str, context: ssl.SSLContext, path: str = "/") -> tuple[int, dict]:
        reply = self.exchange(port, f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n"
                                    f"\r\n".encode(), context)
        head, _, body = reply.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    def stat(self, sidecar: str, name: str) -> int:
        return self.sidecars[sidecar].stats().get(name, 0)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("mesh-ports-e2e")
    ca = CertificateAuthority.load_or_create(work / "ca")  # meshpilot loads the same root
    servers = {"app_web": EchoServer("web"), "app_admin": EchoServer("admin"),
               "app_raw": TcpEcho(), "app_a": EchoServer("a")}
    with served_policy(work, "mesh.yaml", POLICY, servers,
                       free_ports=("b_web", "b_admin", "b_raw", "a_in", "a_to_b", "a_to_admin"),
                       envoys={"a": "sidecar-a", "b": "sidecar-b"},
                       extra_args=("--ca-dir", str(work / "ca"))) as served:
        environment = Mesh(served.ports, served.envoys, ca, work)
        eventually(lambda: environment.get("a_to_b")[0] == 200, timeout=40,
                   what="A's sidecar to reach B's first port over mTLS")
        eventually(lambda: environment.get("b_admin")[0] == 200, timeout=40,
                   what="B's permissive admin port to answer a plain client")
        yield environment


def _handshakes(mesh: Mesh, port: str) -> int:
    return mesh.stat("b", f"listener.127.0.0.1_{mesh.ports[port]}.ssl.handshake")


def test_plaintext_reaches_only_the_permissive_ports(mesh: Mesh) -> None:
    requests = mesh.stat("b", "cluster.inbound|b.upstream_rq_total")
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        mesh.get("b_web", "/plain")  # strict: the handshake it never starts is refused
    assert mesh.stat("b", "cluster.inbound|b.upstream_rq_total") == requests
    status, seen = mesh.get("b_admin", "/plain")
    assert status == 200 and seen["backend"] == "admin" and seen["path"] == "/plain"
    assert "x-forwarded-client-cert" not in seen["headers"]
    assert mesh.echo("b_raw", b"hello") == b"echo:hello"


def test_an_mtls_client_reaches_every_port(mesh: Mesh) -> None:
    context = mesh.client_context("a")
    before = {port: _handshakes(mesh, port) for port in ("b_web", "b_admin", "b_raw")}
    status, seen = mesh.tls_get("b_web", context, "/secure")
    assert status == 200 and seen["backend"] == "web"
    assert "URI=spiffe://cluster.local/ns/default/sa/a" in \
        seen["headers"]["x-forwarded-client-cert"]
    status, seen = mesh.tls_get("b_admin", context, "/secure")
    assert status == 200 and seen["backend"] == "admin"
    assert "URI=spiffe://cluster.local/ns/default/sa/a" in \
        seen["headers"]["x-forwarded-client-cert"]
    assert mesh.echo("b_raw", b"over tls", context) == b"echo:over tls"
    for port, count in before.items():
        eventually(lambda port=port, count=count: _handshakes(mesh, port) > count, timeout=5,
                   what=f"B's {port} listener to count the mTLS handshake")


def test_the_callers_sidecar_speaks_mtls_to_the_first_port(mesh: Mesh) -> None:
    handshakes = _handshakes(mesh, "b_web")
    status, seen = mesh.get("a_to_b", "/from-a")
    assert status == 200 and seen["backend"] == "web"
    assert "URI=spiffe://cluster.local/ns/default/sa/a" in \
        seen["headers"]["x-forwarded-client-cert"]
    assert _handshakes(mesh, "b_web") >= handshakes  # a kept-alive connection may be reused
    assert mesh.stat("a", "cluster.b.ssl.handshake") >= 1


def test_a_caller_speaks_mtls_to_the_service_a_further_port_serves(mesh: Mesh) -> None:
    # b-admin's endpoints are B's admin port: A's sidecar speaks mTLS there as itself and
    # accepts only B's identity, although the port would take plaintext too.
    handshakes = _handshakes(mesh, "b_admin")
    status, seen = mesh.get("a_to_admin", "/from-a")
    assert status == 200 and seen["backend"] == "admin"
    assert "URI=spiffe://cluster.local/ns/default/sa/a" in \
        seen["headers"]["x-forwarded-client-cert"]
    assert _handshakes(mesh, "b_admin") >= handshakes
    assert mesh.stat("a", "cluster.b-admin.ssl.handshake") >= 1


def test_each_port_has_a_listener_and_application_of_its_own(mesh: Mesh) -> None:
    # Envoy's stat names turn the `:` of `inbound|b:<port>` into `_`.
    assert mesh.stat("b", f"cluster.inbound|b_{mesh.ports['b_raw']}.upstream_cx_total") >= 1
    assert mesh.stat("b", f"cluster.inbound|b_{mesh.ports['b_admin']}.upstream_rq_total") >= 1
    assert mesh.stat("b", "cluster.inbound|b.upstream_rq_total") >= 1


def test_authorization_judges_the_connections_of_a_tcp_port(mesh: Mesh) -> None:
    """B allows only A (`from: [a]`), and paths under /metrics to anyone. On the tcp port a
    connection has no path: the second rule cannot hold there (Istio's TCP rules), so only a
    connection presenting A's identity reaches the application; the HTTP ports still take the
    /metrics rule. Runs last: it edits the module's policy (and puts it back)."""
    policy = mesh.work / "policy" / "mesh.yaml"
    written = policy.read_text()
    edited = written.replace("  mtls: strict\n  ports:", "  mtls: strict\n  authorization:\n"
                             "    rules: [{from: [a]}, {paths: [/metrics]}]\n  ports:", 1)
    assert edited != written
    a, c = mesh.client_context("a"), mesh.client_context("c")

    def refused(context: ssl.SSLContext | None) -> bool:
        try:
            # Closed before anything is echoed (an allowed one reads "echo:knock").
            return mesh.exchange("b_raw", b"knock", context, expect=10) == b""
        except (ssl.SSLError, ConnectionError, OSError):
            return True

    try:
        write_atomically(policy, edited)
        eventually(lambda: refused(None), timeout=40,
                   what="B's tcp port to refuse a plaintext connection once B allows only A")
        assert refused(c)  # another mesh identity: refused too
        assert mesh.echo("b_raw", b"as a", a) == b"echo:as a"
        prefix = f"inbound/b:{mesh.ports['b_raw']}.allow.rbac."
        eventually(lambda: mesh.stat("b", prefix + "denied") >= 2 and
                   mesh.stat("b", prefix + "allowed") >= 1, timeout=10,
                   what="B's network RBAC filter to count what it decided")
        # The HTTP ports keep the whole policy: /metrics is open to any caller there.
        assert mesh.get("b_admin", "/metrics")[0] == 200
        status, _, body = http_get(f"http://127.0.0.1:{mesh.ports['b_admin']}/other", timeout=3)
        assert (status, body) == (403, b"RBAC: access denied")
    finally:
        write_atomically(policy, written)
    eventually(lambda: mesh.echo("b_raw", b"again") == b"echo:again", timeout=40,
               what="B's tcp port to take plaintext again once the policy is back")
