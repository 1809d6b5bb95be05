"""TLS listeners in mode Terminate, end to end: a real Envoy ends TLS with the listener's
certificate and proxies the plaintext bytes to a plain TCP echo, by SNI: a TLSRoute's hostname,
or (a TCPRoute behind a terminating listener) the listener's hostname; a passthrough listener
on the same port keeps passing its SNI through, still encrypted, to a TLS backend."""

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
from test_listeners import TcpEcho
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
  - name: raw
    port: 443
    protocol: TLS
    hostname: raw.example.com
    tls: {{certificateRefs: [{{name: raw}}]}}    # Terminate: the spec's default mode
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
apiVersion: v1
kind: Secret
metadata: {{name: raw, namespace: infra}}
type: kubernetes.io/tls
data: {{tls.crt: {cert_raw}, tls.key: {key_raw}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: mqtt, namespace: infra}}
spec:
  parentRefs: [{{name: edge, sectionName: ends}}]
  hostnames: [mqtt.ends.example.com]
  rules: [{{backendRefs: [{{name: echo, port: 1883}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: raw, namespace: infra}}
spec:
  parentRefs: [{{name: edge, sectionName: raw}}]
  rules: [{{backendRefs: [{{name: echo, port: 1883}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: through, namespace: infra}}
spec:
  parentRefs: [{{name: edge, sectionName: through}}]
  rules: [{{backendRefs: [{{name: tls-echo, port: 8443}}]}}]
---
""" + loopback_service_template('echo', 1883) + """---
""" + loopback_service_template('tls-echo', 8443)


@dataclass
class Edge:
    port: int
    context: ssl.SSLContext


class _TlsEcho:
    """A TLS echo upstream (the passthrough listener's backend): its own certificate, for
    `through.example.com`, reaches the client; the bytes come back."""

    def __init__(self, cert: bytes, key: bytes, folder: Path) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        (folder / "echo.pem").write_bytes(cert)
        (folder / "echo.key").write_bytes(key)
        self.context.load_cert_chain(folder / "echo.pem", folder / "echo.key")
        self.server: socket.socket | None = None
        self.running = False

    def start(self) -> int:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.running = True

        def serve() -> None:
            while self.running:
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
        self.running = False
        if self.server is not None:
            self.server.close()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    work = tmp_path_factory.mktemp("gatewayapi-tls-terminate")
    ca = CA()
    pairs = {"ends": ca.issue("*.ends.example.com"), "raw": ca.issue("raw.example.com")}
    values = {f"{part}_{x}": base64.b64encode(getattr(pair, f"{part}_pem")).decode()
              for x, pair in pairs.items() for part in ("cert", "key")}
    backend = ca.issue("through.example.com")
    servers = {"echo": TcpEcho(), "tls_echo": _TlsEcho(backend.cert_pem, backend.key_pem,
                                                       work)}
    with served_policy(work, "gateway.yaml", POLICY, servers,
                       envoys={"infra/edge": "edge"}, **values) as served:
        yield Edge(served.ports["port"], ssl.create_default_context(cadata=ca.pem.decode()))


def _roundtrip(edge: Edge, sni: str, payload: bytes) -> tuple[str, bytes]:
    """The certificate's common name the client was shown, and what came back."""
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as raw, \
            edge.context.wrap_socket(raw, server_hostname=sni) as conn:
        subject = dict(item[0] for item in conn.getpeercert()["subject"])
        conn.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
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


def test_a_tlsroute_on_a_terminating_listener_gets_the_plaintext(edge: Edge) -> None:
    payload = b"CONNECT mqtt\x00" + bytes(range(256)) * 16
    # The plain echo returned the bytes as sent: Envoy ended TLS with the listener's own
    # certificate (the client checked it for the SNI) and proxied what TLS carried.
    assert _eventually(edge, "mqtt.ends.example.com", payload) == \
        ("*.ends.example.com", payload)


def test_a_tcproute_behind_a_terminating_listener_takes_its_hostname(edge: Edge) -> None:
    payload = b"any protocol at all\r\n"
    assert _eventually(edge, "raw.example.com", payload) == ("raw.example.com", payload)


def test_a_passthrough_listener_beside_them_keeps_tls_to_the_backend(edge: Edge) -> None:
    payload = b"still encrypted past Envoy"
    # The backend's own certificate reached the client: nothing was terminated on the way.
    assert _eventually(edge, "through.example.com", payload) == ("through.example.com", payload)


def test_an_sni_no_route_takes_is_refused(edge: Edge) -> None:
    _eventually(edge, "raw.example.com", b"ready")
    with pytest.raises((OSError, ssl.SSLError)):
        _roundtrip(edge, "other.ends.example.com", b"x")
