"""Edge TLS end to end: `meshpilot serve` feeding a real Envoy, Python `ssl` clients, and
certificates made by the test (a CA, leaf certificates for two host names) in a folder outside
the policy folder.

- SNI picks the certificate: a.example.com gets the certificate for a, b.example.com for b;
- replacing the certificate files rotates the served certificate on the running Envoy (a new
  serial), pushed as a Secret only: no listener change, and an open keep-alive connection keeps
  working; a key that does not match is refused and the last good certificate keeps serving;
- min_version 1.3 refuses a TLS 1.2 client; ALPN negotiates h2;
- a plain listener with redirect_to_https answers 301 to https;
- TLS origination to a TLS upstream (a tiny HTTPS echo made here) with the SNI the upstream sees;
- private keys appear in no config dump and no log.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from support import LoopbackHttpServer, MeshpilotProcess, eventually, http_get, served_policy
from tls_material import CA, Pair

from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: api
endpoints: ["127.0.0.1:{api}"]
---
kind: Service
name: secure
endpoints: ["127.0.0.1:{upstream}"]
tls: {{sni: upstream.internal, ca: "{certs}/ca.pem"}}
---
kind: Gateway
name: edge
listeners:
  - name: https
    port: {https}
    address: 127.0.0.1
    protocol: https
    tls:
      certificates:
        - {{cert: "{certs}/a.pem", key: "{certs}/a.key"}}
        - {{cert: "{certs}/b.pem", key: "{certs}/b.key"}}
  - name: modern
    port: {modern}
    address: 127.0.0.1
    protocol: https
    tls:
      certificates: [{{cert: "{certs}/a.pem", key: "{certs}/a.key"}}]
      min_version: "1.3"
      alpn: [http/1.1]
  - {{name: plain, port: {plain}, address: 127.0.0.1, redirect_to_https: {https}}}
---
kind: Route
name: site
gateway: edge
rules:
  - match: {{path: {{prefix: /secure}}}}
    backends: [secure]
  - backends: [api]
"""


class TlsEcho(LoopbackHttpServer):
    """An HTTPS upstream answering every GET with JSON naming the SNI its client sent."""

    def __init__(self, pair: Pair, folder: Path):
        server = self

        class Handler(LoopbackHttpServer.Handler):
            def do_GET(self) -> None:
                body = json.dumps({"backend": "tls-echo", "sni": server.server_names[-1:],
                                   "tls": isinstance(self.connection, ssl.SSLSocket)}).encode()
                self.reply(200, body, "application/json")

        super().__init__(Handler, tls=pair.write(folder, "upstream"))


@dataclass
class Env:
    ports: dict[str, int]
    certs: Path
    ca: CA
    mp: MeshpilotProcess
    envoy: EnvoyProcess
    upstream: TlsEcho


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("tls-e2e")
    certs = work / "certs"  # outside the policy folder, as certificates usually are
    ca = CA()
    ca.write(certs / "ca.pem")
    ca.issue("a.example.com").write(certs, "a")
    ca.issue("b.example.com", "*.b.example.com").write(certs, "b")
    upstream = TlsEcho(ca.issue("upstream.internal"), certs)
    with served_policy(work, "edge.yaml", POLICY, {"api": EchoServer("api"), "upstream": upstream},
                       free_ports=("https", "modern", "plain"), certs=certs,
                       extra_args=("--allow-files-from", str(certs))) as served:
        environment = Env(served.ports, certs, ca, served.mp, served.envoy, upstream)
        eventually(lambda: https_get(environment, "https", "a.example.com")[0] == 200,
                   timeout=30, what="the https listener to serve")
        yield environment


# ---- clients --------------------------------------------------------------------------------


def client_context(env: Env, *, alpn: list[str] | None = None,
                   maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=env.ca.pem.decode())
    if alpn:
        context.set_alpn_protocols(alpn)
    if maximum is not None:
        context.maximum_version = maximum
    return context


def tls_connect(env: Env, listener: str, name: str, context: ssl.SSLContext | None = None
                ) -> ssl.SSLSocket:
    """A verified TLS connection to a listener, sending `name` as SNI (and checking it)."""
    raw = socket.create_connection(("127.0.0.1", env.ports[listener]), timeout=5)
    try:
        return (context or client_context(env)).wrap_socket(raw, server_hostname=name)
    except BaseException:
        raw.close()
        raise


def serial_of(connection: ssl.SSLSocket) -> int:
    der = connection.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


class _Connection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 with `host` as SNI and Host header (no DNS needed)."""

    def __init__(self, env: Env, listener: str, host: str):
        super().__init__(host, env.ports[listener], timeout=5, context=client_context(env))
        self._env, self._listener = env, listener

    def connect(self) -> None:
        self.sock = tls_connect(self._env, self._listener, self.host)


def https_get(env: Env, listener: str, host: str, path: str = "/",
              connection: http.client.HTTPSConnection | None = None
              ) -> tuple[int, dict[str, Any]]:
    conn = connection or _Connection(env, listener, host)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        return response.status, json.loads(body) if body.startswith(b"{") else {}
    finally:
        if connection is None:
            conn.close()


# ---- SNI, versions, ALPN --------------------------------------------------------------------


def test_sni_picks_the_certificate_whose_san_matches(env: Env) -> None:
    for name, expected in (("a.example.com", "a.example.com"), ("b.example.com", "b.example.com"),
                           ("www.b.example.com", "b.example.com")):
        with tls_connect(env, "https", name) as connection:  # verified: the SAN matches
            subject = dict(item[0] for item in connection.getpeercert()["subject"])
            assert subject["commonName"] == expected, name


def test_requests_over_https_reach_the_routes(env: Env) -> None:
    status, body = https_get(env, "https", "b.example.com", "/hello")
    assert status == 200 and body["backend"] == "api"
    assert body["headers"]["x-forwarded-proto"] == "https"


def test_min_version_13_refuses_a_tls12_client(env: Env) -> None:
    with pytest.raises(ssl.SSLError):
        tls_connect(env, "modern", "a.example.com",
                    client_context(env, maximum=ssl.TLSVersion.TLSv1_2)).close()
    with tls_connect(env, "modern", "a.example.com") as connection:
        assert connection.version() == "TLSv1.3"
    # The listener without min_version still speaks TLS 1.2 (Envoy's default minimum).
    with tls_connect(env, "https", "a.example.com",
                     client_context(env, maximum=ssl.TLSVersion.TLSv1_2)) as connection:
        assert connection.version() == "TLSv1.2"


def test_alpn_negotiates_h2_by_default_and_only_what_the_listener_offers(env: Env) -> None:
    offer = ["h2", "http/1.1"]
    with tls_connect(env, "https", "a.example.com", client_context(env, alpn=offer)) as conn:
        assert conn.selected_alpn_protocol() == "h2"
    with tls_connect(env, "modern", "a.example.com", client_context(env, alpn=offer)) as conn:
        assert conn.selected_alpn_protocol() == "http/1.1"  # alpn: [http/1.1]


def test_a_plain_listener_redirects_to_https(env: Env) -> None:
    status, headers, _ = http_get(f"http://127.0.0.1:{env.ports['plain']}/shop/cart?id=7",
                                  headers={"host": "a.example.com"})
    assert status == 301
    assert headers["location"] == f"https://a.example.com:{env.ports['https']}/shop/cart?id=7"


# ---- upstream TLS ---------------------------------------------------------------------------


def test_tls_origination_sends_the_sni_and_verifies_the_upstream(env: Env) -> None:
    status, body = https_get(env, "https", "a.example.com", "/secure/x")
    assert status == 200, body
    assert body == {"backend": "tls-echo", "sni": ["upstream.internal"], "tls": True}
    clusters = env.envoy.config_dump(resource="dynamic_active_clusters")["configs"]
    (secure,) = [c["cluster"] for c in clusters if c["cluster"]["name"] == "secure"]
    assert "trusted_ca" not in json.dumps(secure)  # the CA came over SDS


# ---- keys stay secret -----------------------------------------------------------------------


def test_private_keys_are_in_no_dump_and_no_log(env: Env) -> None:
    keys = [(env.certs / f"{stem}.key").read_text() for stem in ("a", "b")]
    bodies = [key.split("-----")[2].strip().splitlines()[0] for key in keys]
    _, _, dump = env.mp.admin_get("/debug/config_dump?node=edge-1")
    assert b"edge/https/tls[0]" in dump  # the secrets are there ...
    texts = [dump.decode(), env.mp.log_path.read_text(),
             json.dumps(env.envoy.config_dump())]
    for text in texts:  # ... without their keys
        assert "PRIVATE KEY" not in text
        assert not any(body in text for body in bodies)


# ---- rotation (last: it changes the certificates) -------------------------------------------


def test_replacing_the_files_rotates_the_certificate_without_touching_the_listener(
        env: Env) -> None:
    kept = _Connection(env, "https", "a.example.com")  # a keep-alive connection, held open
    assert https_get(env, "https", "a.example.com", connection=kept)[0] == 200
    assert kept.sock is not None
    old_serial = serial_of(kept.sock)
    stats = env.envoy.stats()
    modified = stats["listener_manager.listener_modified"]
    updates = stats["sds.edge/https/tls[0].update_success"]

    # A key that does not belong to the certificate: refused, the served certificate stays.
    wrong = env.ca.issue("a.example.com")
    (env.certs / "a.key").write_bytes(env.ca.issue("x.example.com").key_pem)
    eventually(lambda: any("a.key" in error and "does not match" in error
                           for error in env.mp.status()["policy"]["errors"]),
               timeout=15, what="the mismatched key to be reported")
    with tls_connect(env, "https", "a.example.com") as connection:
        assert serial_of(connection) == old_serial

    new = wrong  # a fresh certificate for a.example.com, and its key
    new.write(env.certs, "a")

    def rotated() -> bool:
        with tls_connect(env, "https", "a.example.com") as connection:
            return serial_of(connection) == new.serial

    eventually(rotated, timeout=20, what="Envoy to serve the new certificate")
    assert new.serial != old_serial
    # The open connection still works, with the certificate it was made with.
    assert https_get(env, "https", "a.example.com", connection=kept)[0] == 200
    assert serial_of(kept.sock) == old_serial
    kept.close()
    stats = env.envoy.stats()
    assert stats["listener_manager.listener_modified"] == modified  # no listener drained
    assert stats["sds.edge/https/tls[0].update_success"] > updates
    # b was not touched
    with tls_connect(env, "https", "b.example.com") as connection:
        assert dict(item[0] for item in connection.getpeercert()["subject"])["commonName"] \
            == "b.example.com"
