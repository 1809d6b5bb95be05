"""Security that calls out to other Services, end to end: `meshpilot serve` feeding a real Envoy
in front of an echo backend, with the remote parties made here.

- JWT with a remote JWKS: Envoy fetches the keys from `https://jwks.internal/jwks.json` through
  the cluster of the Service `jwks`, over TLS (SNI jwks.internal, verified against the test CA),
  from a tiny HTTPS server that records what it was asked; a valid token passes only if that
  fetch worked (nothing else knows the key), a missing one or one signed by another key is 401.
- gRPC external authorization: every request is first sent to a grpc.aio
  `envoy.service.auth.v3.Authorization/Check` server (allows `x-allow: yes`, denies the rest
  with PERMISSION_DENIED); a denied request is 403 and never reaches the backend.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2, status_pb2
from support import LoopbackHttpServer, MeshpilotProcess, eventually, http_get, served_policy
from test_auth import ISSUER, Signer
from tls_material import CA, Pair

from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.demo.server import LoopThread
from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: api
endpoints: ["127.0.0.1:{api}"]
---
kind: Service
name: jwks
endpoints: ["127.0.0.1:{jwks}"]
tls: {{sni: jwks.internal, ca: "{certs}/ca.pem"}}
---
kind: Service
name: authz
protocol: grpc
endpoints: ["127.0.0.1:{authz}"]
---
kind: Gateway
name: edge
listeners: [{{name: http, port: {port}, address: 127.0.0.1}}]
---
kind: Route
name: open
gateway: edge
hosts: [open.example.com]
rules:
  - backends: [api]
---
kind: Route
name: remote-jwt
gateway: edge
hosts: [jwt.example.com]
jwt:
  providers:
    - name: remote
      issuer: {issuer}
      audiences: [shop]
      jwks: {{uri: "https://jwks.internal/jwks.json", service: jwks, cache: 5m}}
rules:
  - backends: [api]
---
kind: Route
name: grpc-authz
gateway: edge
hosts: [authz.example.com]
rules:
  - backends: [api]
    ext_authz: {{service: authz, protocol: grpc, timeout: 1s}}
"""


# ---- a tiny HTTPS JWKS server -------------------------------------------------------------------


class JwksServer(LoopbackHttpServer):
    """Serves a JWKS at /jwks.json over HTTPS (404 elsewhere); records each request as
    (method, path, Host header, SNI of its connection)."""

    def __init__(self, jwks: dict[str, Any], pair: Pair, folder: Path):
        body = json.dumps(jwks).encode()
        self.requests: list[tuple[str, str, str | None, str | None]] = []
        server = self

        class Handler(LoopbackHttpServer.Handler):
            def do_GET(self) -> None:
                server.requests.append(("GET", self.path, self.headers.get("host"),
                                        server.server_names[-1] if server.server_names else None))
                found = self.path == "/jwks.json"
                self.reply(200 if found else 404, body if found else b"{}", "application/json")

        super().__init__(Handler, tls=pair.write(folder, "jwks"))


# ---- a grpc.aio authorization service -----------------------------------------------------------


@dataclass(frozen=True)
class Check:
    path: str
    host: str
    allowed: bool


class GrpcAuthz:
    """`envoy.service.auth.v3.Authorization/Check` on a grpc.aio server, on an event loop of its
    own in a daemon thread: OK when the request carries `x-allow: yes`, PERMISSION_DENIED
    otherwise (no denied_response: Envoy's default answer, 403). Every call is recorded."""

    def __init__(self) -> None:
        self.calls: list[Check] = []
        self._loop = LoopThread("grpc-authz")
        self._server: grpc.aio.Server | None = None

    def start(self) -> int:
        self._loop.start()
        return self._loop.run(self._serve(), timeout=10)

    async def _serve(self) -> int:
        owner = self

        class Servicer(external_auth_pb2_grpc.AuthorizationServicer):
            async def Check(self, request: Any, context: Any) -> Any:
                http = request.attributes.request.http
                allowed = http.headers.get("x-allow") == "yes"
                owner.calls.append(Check(path=http.path, host=http.host, allowed=allowed))
                code = code_pb2.OK if allowed else code_pb2.PERMISSION_DENIED
                return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code))

        self._server = grpc.aio.server()
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Servicer(), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._loop.run(self._server.stop(None), timeout=5)
        self._loop.stop()


# ---- the environment ----------------------------------------------------------------------------


@dataclass
class Env:
    port: int
    signer: Signer
    api: EchoServer
    jwks: JwksServer
    authz: GrpcAuthz
    mp: MeshpilotProcess
    envoy: EnvoyProcess

    def get(self, path: str, host: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
        return http_get(f"http://127.0.0.1:{self.port}{path}", {"Host": host, **(headers or {})})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("auth-remote-e2e")
    certs = work / "certs"
    ca = CA()
    ca.write(certs / "ca.pem")
    signer = Signer()
    api = EchoServer("api")
    jwks = JwksServer(signer.jwks, ca.issue("jwks.internal"), certs)
    authz = GrpcAuthz()
    with served_policy(work, "remote.yaml", POLICY, {"api": api, "jwks": jwks, "authz": authz},
                       certs=certs, issuer=ISSUER,
                       extra_args=("--allow-files-from", str(certs))) as served:
        environment = Env(served.ports["port"], signer, api, jwks, authz, served.mp,
                          served.envoy)
        eventually(lambda: environment.get("/", "open.example.com")[0] == 200,
                   timeout=30, what="the gateway to serve")
        yield environment


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# ---- jwt with a remote JWKS over TLS ------------------------------------------------------------


def test_a_valid_token_passes_with_keys_fetched_over_tls_through_the_service(env: Env) -> None:
    before = env.api.requests_seen
    status, _, body = env.get("/orders", "jwt.example.com", bearer(env.signer.token()))
    assert status == 200, body
    assert json.loads(body)["path"] == "/orders"
    assert env.api.requests_seen == before + 1
    # Only the HTTPS server knows the key: Envoy asked it, with the URI's host as SNI and Host.
    assert ("GET", "/jwks.json", "jwks.internal", "jwks.internal") in env.jwks.requests
    stats = env.envoy.stats()
    assert stats.get("cluster.jwks.ssl.handshake", 0) >= 1  # through the TLS cluster `jwks`


def test_no_token_or_a_token_signed_by_another_key_is_refused(env: Env) -> None:
    before = env.api.requests_seen
    assert env.get("/orders", "jwt.example.com")[0] == 401
    forged = Signer().token()  # same kid, issuer and audience; a key not in the remote JWKS
    assert env.get("/orders", "jwt.example.com", bearer(forged))[0] == 401
    assert env.api.requests_seen == before
    # The keys are cached (cache: 5m): refusing did not need another fetch per request.
    fetches = len(env.jwks.requests)
    assert env.get("/orders", "jwt.example.com", bearer(env.signer.token()))[0] == 200
    assert env.get("/orders", "jwt.example.com", bearer(forged))[0] == 401
    assert len(env.jwks.requests) == fetches


# ---- gRPC external authorization ----------------------------------------------------------------


def test_grpc_ext_authz_denies_without_the_header_and_allows_with_it(env: Env) -> None:
    seen, calls = env.api.requests_seen, len(env.authz.calls)
    status, _, _ = env.get("/checkout/1", "authz.example.com")
    assert status == 403
    assert env.api.requests_seen == seen  # a denied request never reaches the backend
    status, _, body = env.get("/checkout/2", "authz.example.com", {"x-allow": "yes"})
    assert status == 200, body
    assert env.api.requests_seen == seen + 1
    assert env.authz.calls[calls:] == [
        Check(path="/checkout/1", host="authz.example.com", allowed=False),
        Check(path="/checkout/2", host="authz.example.com", allowed=True)]
    # Routes without ext_authz are not checked.
    assert env.get("/", "open.example.com")[0] == 200
    assert len(env.authz.calls) == calls + 2
