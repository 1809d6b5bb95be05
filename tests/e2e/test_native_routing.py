"""Issue 14's native-language fixes and features end to end: `meshpilot serve` and a real Envoy
gateway in front of echo backends, each proven by what a client and the backends observe.

Bugs: a prefix rewrite on an exact path match (1), a redirect with a new host keeping the port
(4), formatted and literal direct-response bodies (7), the doc traps (8: `rules: []` denies
everything, an unknown API key is 401, the first hash input wins). Features: negative path and
header matches, retries on response headers, CORS per rule, forwarded and stripped
credentials, ext_authz's path prefix and header lists, client IP detection behind a trusted
proxy, and the `not` forms of authorization.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from hashlib import sha1
from pathlib import Path
from typing import Any

import pytest
from support import LoopbackHttpServer, MeshpilotProcess, eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: api
endpoints: ["127.0.0.1:{api}"]
---
kind: Service
name: pair
endpoints: ["127.0.0.1:{flaky}", "127.0.0.1:{good}"]
---
kind: Service
name: carts
endpoints: ["127.0.0.1:{c1}", "127.0.0.1:{c2}", "127.0.0.1:{c3}"]
load_balancer: ring_hash
---
kind: Service
name: authz
endpoints: ["127.0.0.1:{authz}"]
---
kind: Service
name: limiter
endpoints: ["127.0.0.1:{limiter}"]
---
kind: Gateway
name: edge
listeners:
  - {{name: http, port: {port}, address: 127.0.0.1, client_ip: {{xff_trusted_hops: 1}},
     access_log: {{path: {log}}}}}
---
kind: Route
name: site
gateway: edge
hosts: [site.example.com]
cors:
  allow_origins: ["https://app.example", {{exact: "null"}}]
  allow_methods: [GET]
rules:
  - match: {{path: {{exact: /old}}}}
    backends: [api]
    rewrite: {{path: {{prefix: /new/place}}}}
  - match: {{path: {{prefix: /moved}}}}
    redirect: {{host: moved.example.com}}
  - match: {{path: {{prefix: /secure}}}}
    redirect: {{scheme: https}}
  - match: {{path: {{prefix: /default-port}}}}
    redirect: {{host: moved.example.com, port: scheme, strip_query: true}}
  - match: {{path: {{prefix: /keep}}}}
    redirect: {{path: /kept}}
  - match: {{path: {{prefix: /whoami}}}}
    direct_response: {{status: 200, body: "%REQ(:METHOD)% %REQ(:PATH)% 100%%", formatted: true}}
  - match: {{path: {{prefix: /literal}}}}
    direct_response: {{status: 200, body: "%REQ(:METHOD)% stays"}}
  - match: {{path: {{prefix: /upload}}}}
    backends: [api]
    cors: {{allow_methods: [PUT]}}
  - match: {{path: {{prefix: /open-api}}}}
    backends: [api]
    cors: {{allow_origins: ["*"], allow_methods: ["*"], allow_headers: ["*"]}}
  - match: {{path: {{prefix: /cart}}}}
    backends: [carts]
    hash_on: [{{header: x-user}}, {{cookie: session}}]
  - match: {{path: {{prefix: /retry}}}}
    backends: [pair]
    retries: {{attempts: 5, retriable_headers: {{x-backend: flaky}}, avoid_same_host: true}}
  - match: {{path: {{prefix: /no-retry}}}}
    backends: [pair]
  - match: {{path: {{prefix: /limited-upstream}}}}
    backends: [limiter]
    retries: {{attempts: 2, on: [envoy-ratelimited]}}
  - match: {{path: {{prefix: /limited-plain}}}}
    backends: [limiter]
  - match: {{path: {{prefix: /api/}}, headers: {{x-env: {{exact: prod, invert: true}}}}}}
    direct_response: {{status: 200, body: "not prod"}}
  - match: {{path: {{prefix: /api/}}}}
    direct_response: {{status: 200, body: "prod"}}
  - match: {{path: {{prefix: /static/, invert: true}}}}
    backends: [api]
  - direct_response: {{status: 200, body: "static"}}
---
kind: Route
name: guarded
gateway: edge
hosts: [guarded.example.com]
rules:
  - match: {{path: {{prefix: /nobody}}}}
    direct_response: {{status: 200}}
    authorization: {{action: ALLOW, rules: []}}
  - match: {{path: {{prefix: /keys}}}}
    backends: [api]
    api_keys: {{header: x-api-key, keys: {{mobile: key-of-mobile}}, forward: x-client,
               strip: true}}
  - match: {{path: {{prefix: /basic}}}}
    backends: [api]
    basic_auth: {{users: {{file: {policy}/users.htpasswd}}, forward: x-user, strip: true}}
  - match: {{path: {{prefix: /authz}}}}
    backends: [api]
    ext_authz:
      service: authz
      path_prefix: /check
      send_headers: [x-ticket]
      upstream_headers: [x-user-id]
      client_headers: [www-authenticate]
      client_headers_on_success: [x-session]
  - match: {{path: {{prefix: /inside}}}}
    backends: [api]
    authorization: {{action: DENY, rules: [{{source_ips: [203.0.113.0/24]}}]}}
  - match: {{path: {{prefix: /limited}}}}
    direct_response: {{status: 200}}
    rate_limit: {{requests: 1, per: 1h, by: source_ip}}
  - match: {{path: {{prefix: /safe}}}}
    backends: [api]
    authorization: {{action: ALLOW, rules: [{{not: {{methods: [DELETE], paths: [/safe/locked]}}}}]}}
"""


class AuthzServer(LoopbackHttpServer):
    """An HTTP authorization service: allows requests with `x-ticket: ok` (setting x-user-id
    for the backend and x-session for the client), refuses the rest with a challenge; records
    each check's path and headers."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(LoopbackHttpServer.Handler):
            def _answer(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.seen.append((self.path, headers))
                allowed = headers.get("x-ticket") == "ok"
                self.send_response(200 if allowed else 403)
                if allowed:
                    self.send_header("x-user-id", "u-42")
                    self.send_header("x-session", "s-1")
                    self.send_header("x-secret", "not for anyone")
                else:
                    self.send_header("www-authenticate", "Ticket")
                    self.send_header("x-internal", "not for the client")
                self.send_header("content-length", "0")
                self.end_headers()

            do_GET = do_POST = do_DELETE = _answer

        super().__init__(Handler)


class Limiter(LoopbackHttpServer):
    """An upstream behind its own Envoy rate limit: the first request of each path is answered
    429 with x-envoy-ratelimited, the next ones 200."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        server = self

        class Handler(LoopbackHttpServer.Handler):
            def do_GET(self) -> None:
                count = server.seen[self.path] = server.seen.get(self.path, 0) + 1
                if count == 1:
                    self.send_response(429)
                    self.send_header("x-envoy-ratelimited", "true")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.reply(200, b"through")

        super().__init__(Handler)


class Env:
    def __init__(self, port: int, mp: MeshpilotProcess, authz: AuthzServer,
                 echoes: dict[str, EchoServer]):
        self.port, self.mp, self.authz, self.echoes = port, mp, authz, echoes
        self.log = Path()

    def get(self, path: str, host: str = "site.example.com", method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return http_get(f"http://127.0.0.1:{self.port}{path}",
                        {"Host": host, **(headers or {})}, method=method)

    def seen(self, path: str, host: str = "site.example.com", **kwargs: Any) -> dict[str, Any]:
        """What the echo backend saw of a request (it must reach one)."""
        status, headers, body = self.get(path, host, **kwargs)
        assert status == 200, (status, body[:300])
        return dict(json.loads(body), answered_by=headers.get("x-backend"))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("native-routing-e2e")
    policy = work / "policy"  # the users file the policy names, beside it
    policy.mkdir()
    digest = base64.b64encode(sha1(b"s3cret").digest()).decode()
    (policy / "users.htpasswd").write_text(f"alice:{{SHA}}{digest}\n")
    echoes = {name: EchoServer(name) for name in ("api", "flaky", "good", "c1", "c2", "c3")}
    authz = AuthzServer()
    log = work / "access.log"
    limiter = Limiter()
    with served_policy(work, "routing.yaml", POLICY, {**echoes, "authz": authz,
                                                        "limiter": limiter},
                       policy=policy, log=log) as served:
        environment = Env(served.ports["port"], served.mp, authz, echoes)
        environment.log = log
        eventually(lambda: environment.get("/x")[0] == 200, timeout=30,
                   what="the gateway to serve")
        yield environment


# ---- bug 1: a prefix rewrite on an exact match replaces the whole path --------------------------


def test_a_prefix_rewrite_on_an_exact_match(env: Env) -> None:
    seen = env.seen("/old?x=1")
    assert seen["path"] == "/new/place" and seen["query"] in ("x=1", {"x": ["1"]}), seen
    assert env.seen("/old/more")["path"] == "/old/more"  # not the exact path: no rewrite


# ---- bug 4: redirects keep or derive the port ---------------------------------------------------


def location(env: Env, path: str, host: str = "site.example.com") -> str:
    status, headers, _ = env.get(path, host)
    assert status == 302, (path, status)
    return headers["location"]


def test_a_new_host_keeps_the_port_the_request_came_to(env: Env) -> None:
    # Envoy alone drops it (http://moved.example.com/moved); the listener's port is kept.
    assert location(env, "/moved/a?q=1") == f"http://moved.example.com:{env.port}/moved/a?q=1"
    # Whatever port the client wrote in Host, the request came to the listener's.
    assert location(env, "/moved", f"site.example.com:{env.port}") == \
        f"http://moved.example.com:{env.port}/moved"


def test_the_same_host_keeps_the_port_the_client_wrote(env: Env) -> None:
    assert location(env, "/keep?q=1", f"site.example.com:{env.port}") == \
        f"http://site.example.com:{env.port}/kept?q=1"
    assert location(env, "/keep") == "http://site.example.com/kept"


def test_a_new_scheme_goes_to_its_default_port(env: Env) -> None:
    # Envoy alone would send https://site.example.com:<this http port>/secure.
    assert location(env, "/secure", f"site.example.com:{env.port}") == \
        "https://site.example.com:443/secure"


def test_port_from_scheme_and_strip_query(env: Env) -> None:
    assert location(env, "/default-port/x?secret=1", f"site.example.com:{env.port}") == \
        "http://moved.example.com/default-port/x"


# ---- bug 7: formatted and literal direct responses ----------------------------------------------


def test_a_formatted_body_has_its_operators_replaced(env: Env) -> None:
    status, _, body = env.get("/whoami/me?x=1", method="POST")
    assert status == 200 and body == b"POST /whoami/me?x=1 100%", body
    status, _, body = env.get("/literal")
    assert status == 200 and body == b"%REQ(:METHOD)% stays", body


# ---- bug 8: the doc traps -----------------------------------------------------------------------


def test_allow_with_empty_rules_refuses_everyone(env: Env) -> None:
    assert env.get("/nobody", "guarded.example.com")[0] == 403


def test_a_missing_or_unknown_api_key_is_401(env: Env) -> None:
    assert env.get("/keys", "guarded.example.com")[0] == 401
    assert env.get("/keys", "guarded.example.com", headers={"x-api-key": "wrong"})[0] == 401


def test_the_first_hash_input_the_request_has_wins(env: Env) -> None:
    # With x-user present the cookie plays no part (Envoy would combine both without
    # terminal): the same user lands on one endpoint whatever cookie it sends.
    for user in ("alice", "bob"):
        answered = {env.seen("/cart", headers={"x-user": user, "Cookie": f"session={n}"})[
            "answered_by"] for n in range(12)}
        assert len(answered) == 1, (user, answered)
    spread = {env.seen("/cart", headers={"Cookie": f"session={n}"})["answered_by"]
              for n in range(12)}
    assert len(spread) > 1  # the cookie does decide when there is no x-user


# ---- negative matches ---------------------------------------------------------------------------


def test_inverted_header_and_path_matches(env: Env) -> None:
    assert env.get("/api/x", headers={"x-env": "prod"})[2] == b"prod"
    assert env.get("/api/x", headers={"x-env": "test"})[2] == b"not prod"
    assert env.get("/api/x")[2] == b"not prod"  # absent counts as not matching
    assert env.seen("/anything")["answered_by"] == "api"  # not under /static/
    assert env.get("/static/logo.png")[2] == b"static"


# ---- retries on response headers ----------------------------------------------------------------


def test_answers_with_a_retriable_header_are_retried_elsewhere(env: Env) -> None:
    # `pair` is two endpoints; every answer of "flaky" carries x-backend: flaky.
    without = {env.seen("/no-retry")["answered_by"] for _ in range(10)}
    assert without == {"flaky", "good"}
    assert {env.seen("/retry")["answered_by"] for _ in range(10)} == {"good"}


def test_envoy_ratelimited_answers_are_retried(env: Env) -> None:
    marker = uuid.uuid4().hex
    status, _, body = env.get(f"/limited-upstream/{marker}")
    assert (status, body) == (200, b"through")  # the 429 was retried
    assert env.get(f"/limited-plain/{marker}")[0] == 429  # no retries: the client sees it


# ---- CORS per rule ------------------------------------------------------------------------------


def preflight(env: Env, path: str, origin: str, method: str) -> dict[str, str]:
    status, headers, _ = env.get(path, method="OPTIONS", headers={
        "Origin": origin, "Access-Control-Request-Method": method})
    assert status == 200, status
    return headers


def test_a_rule_cors_inherits_the_routes_origins(env: Env) -> None:
    upload = preflight(env, "/upload", "https://app.example", "PUT")
    assert upload.get("access-control-allow-origin") == "https://app.example"
    assert upload.get("access-control-allow-methods") == "PUT"  # the rule's own
    other = preflight(env, "/elsewhere", "https://app.example", "GET")
    assert other.get("access-control-allow-methods") == "GET"  # the Route's
    # An exact non-URL origin ("null": a sandboxed page), on the Route and inherited.
    assert preflight(env, "/upload", "null", "PUT").get("access-control-allow-origin") == "null"
    assert "access-control-allow-origin" not in preflight(env, "/upload", "https://evil.example",
                                                          "PUT")
    # A rule of its own: any origin, any method and header ("*", without credentials).
    status, opened, _ = env.get("/open-api", method="OPTIONS", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "x-custom"})
    assert status == 200
    assert opened.get("access-control-allow-origin") == "https://evil.example"
    # Envoy answers "*" with what the preflight asks for: explicit values, which browsers
    # honour with credentials too.
    assert opened.get("access-control-allow-methods") == "PATCH", opened
    assert opened.get("access-control-allow-headers") == "x-custom", opened


# ---- forwarded and stripped credentials ---------------------------------------------------------


def test_api_keys_forward_the_client_and_strip_the_key(env: Env) -> None:
    seen = env.seen("/keys", "guarded.example.com", headers={"x-api-key": "key-of-mobile",
                                                             "x-client": "forged"})
    assert seen["headers"]["x-client"] == "mobile"
    assert "x-api-key" not in seen["headers"]


def test_basic_auth_forwards_the_user_and_strips_the_credentials(env: Env) -> None:
    good = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert env.get("/basic", "guarded.example.com")[0] == 401
    seen = env.seen("/basic", "guarded.example.com", headers={"Authorization": good})
    assert seen["headers"]["x-user"] == "alice"
    assert "authorization" not in seen["headers"]


# ---- ext_authz ----------------------------------------------------------------------------------


def test_ext_authz_path_prefix_and_header_lists(env: Env) -> None:
    status, headers, _ = env.get("/authz/orders?id=1", "guarded.example.com",
                                 headers={"x-ticket": "no", "x-other": "1"})
    assert status == 403
    assert headers.get("www-authenticate") == "Ticket"  # a client header of the denial
    assert "x-internal" not in headers
    path, sent = env.authz.seen[-1]
    assert path == "/check/authz/orders?id=1"  # path_prefix + the request's path
    assert sent.get("x-ticket") == "no" and "x-other" not in sent  # send_headers only
    status, headers, body = env.get("/authz/orders", "guarded.example.com",
                                    headers={"x-ticket": "ok"})
    assert status == 200, body[:200]
    seen = json.loads(body)["headers"]
    assert seen.get("x-user-id") == "u-42" and "x-secret" not in seen  # upstream_headers
    assert headers.get("x-session") == "s-1"  # client_headers_on_success


# ---- client IP detection and the not forms ------------------------------------------------------


def test_source_ips_see_the_client_behind_a_trusted_proxy(env: Env) -> None:
    # One trusted hop: the client is the last X-Forwarded-For entry the proxy appended.
    def status(xff: str) -> int:
        return env.get("/inside", "guarded.example.com", headers={"X-Forwarded-For": xff})[0]

    assert status("203.0.113.7") == 403
    assert status("198.51.100.1") == 200
    assert status("203.0.113.7, 198.51.100.1") == 200  # only the trusted hop's entry counts
    assert env.get("/inside", "guarded.example.com")[0] == 200  # no header: the peer


def test_not_forms_of_authorization(env: Env) -> None:
    assert env.get("/safe/x", "guarded.example.com")[0] == 200
    assert env.get("/safe/x", "guarded.example.com", method="DELETE")[0] == 403
    assert env.get("/safe/locked", "guarded.example.com")[0] == 403


def test_rate_limits_and_access_logs_see_the_detected_client(env: Env) -> None:
    def status(xff: str) -> int:
        return env.get("/limited", "guarded.example.com", headers={"X-Forwarded-For": xff})[0]

    assert status("192.0.2.1") == 200
    assert status("192.0.2.1") == 429  # one bucket per client: this one is empty ...
    assert status("192.0.2.2") == 200  # ... another client's is not, though the peer is one
    marker = f"/logged-{uuid.uuid4().hex}"
    env.get(marker, headers={"X-Forwarded-For": "192.0.2.77"})

    def logged() -> list[dict[str, Any]]:
        lines = env.log.read_text().splitlines() if env.log.exists() else []
        return [entry for line in lines if marker in line
                for entry in [json.loads(line)]]

    (entry,) = eventually(logged, timeout=10, what="the access log line")
    assert entry["client_address"].startswith("192.0.2.77"), entry
