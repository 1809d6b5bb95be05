"""TLS again behind a terminating TLS listener, end to end: a real Envoy ends the client's TLS
with the listener's certificate and, because a BackendTLSPolicy targets the TLSRoute's backend,
opens TLS of its own to a TLS echo on loopback (the policy's hostname as SNI, its CA and name
checked). A passthrough listener on the same port sends its SNI to the same Service port
untouched: the client meets the backend's own certificate. A backend whose certificate does
not carry the policy's hostname gets nothing."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import eventually, gateway_class_template, loopback_service_template, served_policy
from tls_material import CA

pytestmark = pytest.mark.envoy

POLICY = gateway_class_template("443:{port}") + """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: mp
  listeners:
  - name: ends
    port: 443
    protocol: TLS
    hostname: "*.ends.example.com"
    tls: {{mode: Terminate, certificateRefs: [{{name: ends}}]}}
  - name: through
    port: 443
    protocol: TLS
    hostname: through.example.com
    tls: {{mode: Passthrough}}
---
apiVersion: v1
kind: Secret
metadata: {{name: ends, namespace: infra}}
type: kubernetes.io/tls
data: {{tls.crt: {cert_ends}, tls.key: {key_ends}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: good, namespace: infra}}
spec:
  parentRefs: [{{name: edge, sectionName: ends}}]
  hostnames: [good.ends.example.com]
  rules: [{{backendRefs: [{{name: secure, port: 8443}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: wrong, namespace: infra}}
spec:
  parentRefs: [{{name: edge, sectionName: ends}}]
  hostnames: [wrong.ends.example.com]
  rules: [{{backendRefs: [{{name: impostor, port: 8443}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: through, namespace: infra}}
spec:
  parentRefs: [{{name: edge, sectionName: through}}]
  rules: [{{backendRefs: [{{name: secure, port: 8443}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: backends, namespace: infra}}
spec:
  targetRefs:
  - {{group: "", kind: Service, name: secure, sectionName: btls}}
  - {{group: "", kind: Service, name: impostor}}
  validation:
    caCertificateRefs: [{{group: "", kind: ConfigMap, name: backend-ca}}]
    hostname: abc.internal
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: backend-ca, namespace: infra}}
data:
  ca.crt: |
{backend_ca}
---
""" + loopback_service_template('secure', 8443, port_name='btls') + """---
""" + loopback_service_template('impostor', 8443)


class _TlsEcho:
    """A TLS echo that remembers the SNI each handshake asked for."""

    def __init__(self, cert: bytes, key: bytes, folder: Path, stem: str) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        (folder / f"{stem}.pem").write_bytes(cert)
        (folder / f"{stem}.key").write_bytes(key)
        self.context.load_cert_chain(folder / f"{stem}.pem", folder / f"{stem}.key")
        self.context.sni_callback = lambda conn, name, _: self.names.append(name) and None
        self.names: list[str | None] = []
        self.server: socket.socket | None = None

    def start(self) -> int:
        self.server = socket.create_server(("127.0.0.1", 0))

        def serve() -> None:
            while True:
                try:
                    assert self.server is not None
                    raw, _ = self.server.accept()
                except OSError:
                    return
                threading.Thread(target=self._echo, args=(raw,), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()
        return int(self.server.getsockname()[1])

    def _echo(self, raw: socket.socket) -> None:
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                while data := conn.recv(65536):
                    conn.sendall(data)
        except (OSError, ssl.SSLError):
            pass

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@dataclass
class Edge:
    port: int
    client: ssl.SSLContext  # trusts the listener's CA and the backends' one
    secure: _TlsEcho
    impostor: _TlsEcho


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    work = tmp_path_factory.mktemp("gatewayapi-tls-reencrypt")
    front, back = CA("listener CA"), CA("backends CA")  # distinct names: both trusted
    ends = front.issue("*.ends.example.com")
    # The secure echo is also the passthrough listener's, whose client checks its own SNI.
    good = back.issue("abc.internal", "through.example.com")
    bad = back.issue("other.internal")
    secure = _TlsEcho(good.cert_pem, good.key_pem, work, "secure")
    impostor = _TlsEcho(bad.cert_pem, bad.key_pem, work, "bad")
    servers = {"secure": secure, "impostor": impostor}
    values = {"cert_ends": base64.b64encode(ends.cert_pem).decode(),
              "key_ends": base64.b64encode(ends.key_pem).decode(),
              "backend_ca": "\n".join("    " + line for line in back.pem.decode().splitlines())}
    with served_policy(work, "gateway.yaml", POLICY, servers,
                       envoys={"infra/edge": "edge"}, **values) as served:
        client = ssl.create_default_context(cadata=front.pem.decode())
        client.load_verify_locations(cadata=back.pem.decode())
        yield Edge(served.ports["port"], client, secure, impostor)


def _roundtrip(edge: Edge, sni: str, payload: bytes) -> tuple[str, bytes]:
    """The certificate's common name the client was shown, and what came back."""
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as raw, \
            edge.client.wrap_socket(raw, server_hostname=sni) as conn:
        subject = dict(item[0] for item in conn.getpeercert()["subject"])
        received = b""
        try:
            conn.sendall(payload)
            while len(received) < len(payload):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
            pass  # closed by Envoy (without TLS's close_notify): what came back is all
        return subject["commonName"], received


def _eventually(edge: Edge, sni: str, payload: bytes) -> tuple[str, bytes]:
    def attempt() -> tuple[str, bytes] | None:
        try:
            found = _roundtrip(edge, sni, payload)
        except (OSError, ssl.SSLError):
            return None
        return found if found[1] == payload else None
    found = eventually(attempt, timeout=30, what=f"a round trip with SNI {sni}")
    assert found is not None
    return found


def test_a_terminated_connection_reaches_the_tls_backend_in_tls_again(edge: Edge) -> None:
    payload = b"hello backend\x00" + bytes(range(256)) * 8
    # The client met the listener's certificate, and the echo (which speaks only TLS) sent
    # the bytes back: Envoy opened TLS to it, asking for the policy's hostname.
    assert _eventually(edge, "good.ends.example.com", payload) == \
        ("*.ends.example.com", payload)
    assert "abc.internal" in edge.secure.names


def test_a_passthrough_listener_to_the_same_port_is_not_encrypted_again(edge: Edge) -> None:
    payload = b"the client's own TLS"
    # The backend's certificate reached the client: one TLS, end to end.
    assert _eventually(edge, "through.example.com", payload) == ("abc.internal", payload)
    assert "through.example.com" in edge.secure.names


def test_a_backend_without_the_policys_name_gets_nothing(edge: Edge) -> None:
    _eventually(edge, "good.ends.example.com", b"ready")  # served, so the policy is in
    common, received = _roundtrip(edge, "wrong.ends.example.com", b"secret")
    # The client's TLS ended at the listener, but Envoy refused the impostor's certificate
    # (not abc.internal): the connection closed with nothing echoed.
    assert (common, received) == ("*.ends.example.com", b"")
    assert "abc.internal" in edge.impostor.names  # asked for in TLS, then refused
