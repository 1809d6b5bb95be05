"""Request-level security end to end: policy served by `meshpilot serve` to a real Envoy in front
of an echo backend. Each assertion fails without its feature (the echo backend answers 200 to
anything): JWT validation (no token and an expired one refused, the claim forwarded as a header,
an authorization rule on a claim), API keys, basic auth, an external HTTP authorization service,
RBAC with Istio's semantics (DENY before ALLOW, source IPs) and local rate limits with
x-ratelimit headers, per route and per client.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from hashlib import sha1
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from support import LoopbackHttpServer, MeshpilotProcess, eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

ISSUER = "https://issuer.meshpilot.test"

POLICY = """
kind: Service
name: api
endpoints: ["127.0.0.1:{api}"]
---
kind: Service
name: authz
endpoints: ["127.0.0.1:{authz}"]
---
kind: Gateway
name: edge
listeners: [{{name: http, port: {port}, address: 127.0.0.1}}]
---
kind: Route
name: jwt
gateway: edge
hosts: [jwt.example.com]
jwt:
  providers:
    - name: test
      issuer: {issuer}
      audiences: [shop]
      jwks: {{file: {policy}/jwks.json}}
      forward_claims: {{sub: x-user}}
rules:
  - match: {{path: {{prefix: /admin}}}}
    backends: [api]
    authorization: {{action: ALLOW, rules: [{{claims: {{group: admins}}}}]}}
  - backends: [api]
---
kind: Route
name: optional
gateway: edge
hosts: [optional.example.com]
jwt:
  required: false
  providers:
    - {{name: test, issuer: {issuer}, audiences: [shop], jwks: {{file: {policy}/jwks.json}}}}
rules:
  - match: {{path: {{prefix: /members}}}}
    backends: [api]
    authorization: {{action: ALLOW, rules: [{{authenticated: true}}]}}
  - match: {{path: {{prefix: /guests}}}}
    backends: [api]
    authorization: {{action: ALLOW, rules: [{{authenticated: false}}]}}
  - match: {{path: {{prefix: /not-admins}}}}
    backends: [api]
    authorization: {{action: ALLOW, rules: [{{not: {{claims: {{group: admins}}}}}}]}}
---
kind: Route
name: keys
gateway: edge
hosts: [keys.example.com]
api_keys: {{header: x-api-key, keys: {{client-a: {{file: {policy}/a.key}}, client-b: value-of-b}}}}
rules:
  - backends: [api]
---
kind: Route
name: basic
gateway: edge
hosts: [basic.example.com]
basic_auth: {{users: {{file: {policy}/users.htpasswd}}}}
rules:
  - backends: [api]
---
kind: Route
name: authz
gateway: edge
hosts: [authz.example.com]
ext_authz: {{service: authz, protocol: http, timeout: 1s}}
rules:
  - backends: [api]
---
kind: Route
name: rbac
gateway: edge
hosts: [rbac.example.com]
authorization:
  - action: DENY
    rules: [{{paths: [/public/secret]}}]
  - action: ALLOW
    rules:
      - {{paths: [/public/*], methods: [GET]}}
      - {{paths: [/local], source_ips: [127.0.0.0/8]}}
      - {{paths: [/remote], source_ips: [10.0.0.0/8]}}
rules:
  - backends: [api]
---
kind: Route
name: limited
gateway: edge
hosts: [limited.example.com]
rules:
  - match: {{path: {{prefix: /route}}}}
    backends: [api]
    rate_limit: {{requests: 3, per: 1m}}
  - match: {{path: {{prefix: /client}}}}
    backends: [api]
    rate_limit: {{requests: 3, per: 1m, by: {{header: x-client}}}}
"""


# ---- tokens -------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """An RS256 key, its JWKS, and tokens signed with it."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.key.public_key().public_numbers()
        self.jwks = {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "k1",
                               "n": b64url(numbers.n.to_bytes(256, "big")),
                               "e": b64url(numbers.e.to_bytes(3, "big"))}]}

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": "shop", "sub": "alice", "iat": now - 10,
                   "exp": now + 600, **claims}
        header = {"alg": "RS256", "typ": "JWT", "kid": "k1"}
        signing_input = (f"{b64url(json.dumps(header).encode())}."
                         f"{b64url(json.dumps(payload).encode())}")
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"


# ---- a tiny HTTP authorization service ----------------------------------------------------------


class AuthzServer(LoopbackHttpServer):
    """Allows (200) a request whose copy carries `x-allow: yes`; refuses (403) anything else."""

    def __init__(self) -> None:
        server = self
        self.checks = 0

        class Handler(LoopbackHttpServer.Handler):
            def _answer(self) -> None:
                server.checks += 1
                self.reply(200 if self.headers.get("x-allow") == "yes" else 403)

            do_GET = do_POST = do_HEAD = _answer

        super().__init__(Handler)


# ---- the environment ----------------------------------------------------------------------------


class Env:
    def __init__(self, port: int, signer: Signer, authz: AuthzServer, mp: MeshpilotProcess):
        self.port, self.signer, self.authz, self.mp = port, signer, authz, mp

    def get(self, path: str, host: str, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        return http_get(f"http://127.0.0.1:{self.port}{path}", {"Host": host, **(headers or {})},
                        method=method)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("auth-e2e")
    signer = Signer()
    authz = AuthzServer()
    policy = work / "policy"  # the files the policy names, beside it
    policy.mkdir()
    (policy / "jwks.json").write_text(json.dumps(signer.jwks))
    (policy / "a.key").write_text("key-of-a-from-a-file\n")
    digest = base64.b64encode(sha1(b"s3cret").digest()).decode()
    (policy / "users.htpasswd").write_text(f"alice:{{SHA}}{digest}\n")
    with served_policy(work, "auth.yaml", POLICY, {"api": EchoServer("api"), "authz": authz},
                       issuer=ISSUER, policy=policy) as served:
        environment = Env(served.ports["port"], signer, authz, served.mp)
        eventually(lambda: environment.get("/public/x", "rbac.example.com")[0] == 200,
                   timeout=30, what="the gateway to serve")
        yield environment


def seen_headers(body: bytes) -> dict[str, str]:
    return json.loads(body)["headers"]


# ---- jwt ----------------------------------------------------------------------------------------


def test_jwt_no_token_is_refused_and_a_valid_one_forwards_its_claim(env: Env) -> None:
    status, _, _ = env.get("/x", "jwt.example.com")
    assert status == 401
    token = env.signer.token(sub="alice")
    status, _, body = env.get("/x", "jwt.example.com", {"authorization": f"Bearer {token}"})
    assert status == 200, body
    assert seen_headers(body)["x-user"] == "alice"


def test_a_client_cannot_choose_the_claim_header(env: Env) -> None:
    token = env.signer.token(sub="alice")
    status, _, body = env.get("/x", "jwt.example.com", {"authorization": f"Bearer {token}",
                                                        "x-user": "mallory"})
    assert status == 200
    assert seen_headers(body)["x-user"] == "alice"


def test_jwt_expired_wrong_audience_and_forged_tokens_are_refused(env: Env) -> None:
    past = int(time.time()) - 3600
    for token in (env.signer.token(exp=past, iat=past - 60),
                  Signer().token(),  # signed by a key not in the JWKS
                  env.signer.token(iss="https://someone.else")):
        status, _, _ = env.get("/x", "jwt.example.com", {"authorization": f"Bearer {token}"})
        assert status == 401
    # A valid token for another audience: Envoy answers 403 (authenticated, not for this API).
    token = env.signer.token(aud="other")
    assert env.get("/x", "jwt.example.com", {"authorization": f"Bearer {token}"})[0] == 403


def test_authorization_on_a_jwt_claim(env: Env) -> None:
    user = {"authorization": f"Bearer {env.signer.token(group='users')}"}
    admin = {"authorization": f"Bearer {env.signer.token(group='admins')}"}
    listed = {"authorization": f"Bearer {env.signer.token(group=['x', 'admins'])}"}
    assert env.get("/admin", "jwt.example.com", user)[0] == 403
    assert env.get("/admin", "jwt.example.com", admin)[0] == 200
    assert env.get("/admin", "jwt.example.com", listed)[0] == 200
    assert env.get("/other", "jwt.example.com", user)[0] == 200


def test_authorization_on_having_a_token_or_not(env: Env) -> None:
    # issue 14: Istio's requestPrincipals ["*"] and notRequestPrincipals ["*"], and notClaims.
    token = {"authorization": f"Bearer {env.signer.token(group='users')}"}
    admin = {"authorization": f"Bearer {env.signer.token(group='admins')}"}
    host = "optional.example.com"
    assert env.get("/members", host)[0] == 403
    assert env.get("/members", host, token)[0] == 200
    assert env.get("/guests", host)[0] == 200
    assert env.get("/guests", host, token)[0] == 403
    assert env.get("/not-admins", host, token)[0] == 200
    assert env.get("/not-admins", host)[0] == 200  # no token, no claim: not an admin
    assert env.get("/not-admins", host, admin)[0] == 403


# ---- api keys, basic auth -----------------------------------------------------------------------


def test_api_keys(env: Env) -> None:
    assert env.get("/", "keys.example.com")[0] == 401
    assert env.get("/", "keys.example.com", {"x-api-key": "wrong"})[0] in (401, 403)
    assert env.get("/", "keys.example.com", {"x-api-key": "key-of-a-from-a-file"})[0] == 200
    assert env.get("/", "keys.example.com", {"x-api-key": "value-of-b"})[0] == 200


def test_basic_auth(env: Env) -> None:
    def basic(user: str, password: str) -> dict[str, str]:
        return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode())
                .decode()}

    assert env.get("/", "basic.example.com")[0] == 401
    assert env.get("/", "basic.example.com", basic("alice", "wrong"))[0] == 401
    status, _, body = env.get("/", "basic.example.com", basic("alice", "s3cret"))
    assert status == 200, body


# ---- external authorization ---------------------------------------------------------------------


def test_ext_authz_denies_and_allows(env: Env) -> None:
    before = env.authz.checks
    assert env.get("/", "authz.example.com")[0] == 403
    status, _, body = env.get("/", "authz.example.com", {"x-allow": "yes"})
    assert status == 200, body
    assert env.authz.checks - before == 2
    # Routes without ext_authz are not checked.
    env.get("/public/x", "rbac.example.com")
    assert env.authz.checks - before == 2


# ---- RBAC ---------------------------------------------------------------------------------------


def test_rbac_allow_deny_and_source_ips(env: Env) -> None:
    host = "rbac.example.com"
    assert env.get("/public/page", host)[0] == 200
    assert env.get("/public/page", host, method="DELETE")[0] == 403  # GET only
    assert env.get("/public/secret", host)[0] == 403  # DENY wins over ALLOW
    assert env.get("/elsewhere", host)[0] == 403  # ALLOW: what no rule allows is refused
    assert env.get("/local", host)[0] == 200  # from 127.0.0.1
    assert env.get("/remote", host)[0] == 403  # not from 10.0.0.0/8


# ---- rate limits --------------------------------------------------------------------------------


def test_rate_limit_per_route(env: Env) -> None:
    statuses = [env.get("/route", "limited.example.com")[0] for _ in range(3)]
    assert statuses == [200, 200, 200]
    status, headers, _ = env.get("/route", "limited.example.com")
    assert status == 429
    assert headers["x-ratelimit-limit"] == "3"
    assert headers["x-ratelimit-remaining"] == "0"
    assert "x-ratelimit-reset" in headers


def test_rate_limit_per_client(env: Env) -> None:
    a = {"x-client": "a"}
    assert [env.get("/client", "limited.example.com", a)[0] for _ in range(3)] == [200] * 3
    status, headers, _ = env.get("/client", "limited.example.com", a)
    assert status == 429 and headers["x-ratelimit-limit"] == "3"
    # Another client has a bucket of its own.
    assert env.get("/client", "limited.example.com", {"x-client": "b"})[0] == 200


def test_key_values_are_not_in_meshpilots_config_dump(env: Env) -> None:
    status, _, body = env.mp.admin_get("/debug/config_dump?node=edge-1")
    assert status == 200
    assert b"api_key_auth" in body
    assert b"value-of-b" not in body and b"key-of-a-from-a-file" not in body
