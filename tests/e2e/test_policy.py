"""The policy language end to end: Service, Gateway and Route files served by `meshpilot serve` to
a real Envoy, and every feature a request can observe checked through that Envoy: which backend
answered, the path and headers it saw, the status and headers the client got, weighted splits."""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator

import pytest
from support import MeshpilotProcess, eventually, http_get, served_policy, write_atomically

from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: reviews
endpoints:
  - {{address: 127.0.0.1:{v1}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1:{v2}, labels: {{version: v2}}}}
subsets:
  v1: {{version: v1}}
  v2: {{version: v2}}
connect_timeout: 1s
---
kind: Service
name: api
endpoints: ["127.0.0.1:{api}"]
---
kind: Gateway
name: edge
listeners:
  - {{name: http, port: {port}, address: 127.0.0.1}}
---
kind: Route
name: shop
gateway: edge
hosts: [shop.example.com, "*.shop.example.com"]
rules:
  - match: {{path: {{prefix: /api/}}, headers: {{x-canary: "true"}}}}
    backends: [{{service: reviews, subset: v2}}]
  - match: {{path: {{exact: /split}}}}
    backends:
      - {{service: reviews, subset: v1, weight: 90}}
      - {{service: reviews, subset: v2, weight: 10}}
  - match: {{path: {{regex: "/items/[0-9]+"}}}}
    backends: [{{service: api}}]
  - match: {{path: {{prefix: /v1/}}, methods: [POST, PUT]}}
    backends: [{{service: api}}]
    rewrite: {{path: {{prefix: /internal/}}, host: api.internal}}
    request_headers: {{add: {{x-added: yes-1}}, set: {{x-set: fixed}}, remove: [x-drop]}}
    response_headers: {{set: {{x-served-by: meshpilot}}, remove: [x-backend]}}
  - match: {{path: {{prefix: /v1/}}}}
    direct_response: {{status: 405, body: "read-only"}}
  - match: {{path: {{prefix: /regex/}}}}
    backends: [{{service: api}}]
    rewrite: {{path: {{regex: "^/regex/(.*)/(.*)$", substitution: "/\\\\2/\\\\1"}}}}
  - match: {{path: {{prefix: /old/}}}}
    redirect: {{scheme: https, host: new.example.com, prefix: /new/, status: 301}}
  - match: {{path: {{prefix: /search}}, query: {{q: {{present: true}}}}, headers: {{x-debug: {{absent: true}}}}}}
    backends: [{{service: api}}]
  - match: {{path: {{prefix: /slow}}}}
    backends: [{{service: api}}]
    timeout: 250ms
  - match: {{path: {{prefix: /}}}}
    backends: [{{service: reviews, subset: v1}}]
---
kind: Route
name: status
gateway: edge
hosts: [status.example.com]
rules:
  - direct_response: {{status: 200, body: "all good"}}
"""


class Env:
    def __init__(self, port: int, envoy: EnvoyProcess, mp: MeshpilotProcess,
                 echoes: dict[str, EchoServer]):
        self.port, self.envoy, self.mp, self.echoes = port, envoy, mp, echoes

    def get(self, path: str, host: str = "shop.example.com", method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return http_get(f"http://127.0.0.1:{self.port}{path}", {"Host": host, **(headers or {})},
                        method=method)

    def echo(self, path: str, **kwargs) -> dict:
        status, _, body = self.get(path, **kwargs)
        assert status == 200, (status, body[:200])
        return json.loads(body)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("policy-e2e")
    echoes = {name: EchoServer(name) for name in ("v1", "v2", "api")}
    with served_policy(work, "shop.yaml", POLICY, echoes) as served:
        environment = Env(served.ports["port"], served.envoy, served.mp, echoes)
        eventually(lambda: environment.get("/")[0] == 200, what="the gateway to serve")
        yield environment


def test_header_match_sends_canaries_to_v2(env: Env) -> None:
    assert env.echo("/api/x", headers={"x-canary": "true"})["backend"] == "v2"
    assert env.echo("/api/x")["backend"] == "v1"  # falls through to the catch-all rule


def test_weighted_split_is_within_tolerance(env: Env) -> None:
    seen = collections.Counter(env.echo("/split")["backend"] for _ in range(400))
    # 10% of 400 is 40 (binomial sd ~6): far outside [15, 75] means the weights are wrong.
    assert 15 <= seen["v2"] <= 75, seen
    assert seen["v1"] + seen["v2"] == 400


def test_regex_path_match(env: Env) -> None:
    assert env.echo("/items/42")["backend"] == "api"
    assert env.echo("/items/abc")["backend"] == "v1"  # not digits: the catch-all


def test_method_match_rewrites_and_header_operations(env: Env) -> None:
    status, headers, body = env.get("/v1/orders", method="POST",
                                    headers={"x-drop": "secret", "x-set": "client"})
    assert status == 200, body
    seen = json.loads(body)
    assert seen["backend"] == "api"
    assert seen["path"] == "/internal/orders"
    assert seen["headers"]["host"] == "api.internal"
    assert seen["headers"]["x-added"] == "yes-1"
    assert seen["headers"]["x-set"] == "fixed"
    assert "x-drop" not in seen["headers"]
    assert headers["x-served-by"] == "meshpilot"
    assert "x-backend" not in headers  # removed from the response


def test_first_match_wins_then_direct_response(env: Env) -> None:
    status, _, body = env.get("/v1/orders")  # GET is not POST/PUT: the next rule answers
    assert (status, body) == (405, b"read-only")


def test_regex_rewrite(env: Env) -> None:
    assert env.echo("/regex/a/b")["path"] == "/b/a"


def test_redirect(env: Env) -> None:
    status, headers, _ = env.get("/old/page?x=1")
    assert status == 301
    assert headers["location"] == "https://new.example.com/new/page?x=1"


def test_query_and_absent_header_match(env: Env) -> None:
    assert env.echo("/search?q=shoes")["backend"] == "api"
    assert env.echo("/search")["backend"] == "v1"  # no q: the catch-all
    assert env.echo("/search?q=1", headers={"x-debug": "1"})["backend"] == "v1"


def test_route_timeout(env: Env) -> None:
    status, _, _ = env.get("/slow", headers={"x-echo-delay-ms": "1500"})
    assert status == 504
    assert env.echo("/slow", headers={"x-echo-delay-ms": "10"})["backend"] == "api"


def test_hosts_and_wildcards(env: Env) -> None:
    assert env.echo("/", host="eu.shop.example.com")["backend"] == "v1"
    assert env.echo("/", host=f"shop.example.com:{env.port}")["backend"] == "v1"
    assert env.get("/", host="status.example.com")[1:] and \
        env.get("/", host="status.example.com")[2] == b"all good"
    assert env.get("/", host="unknown.example.org")[0] == 404


def test_gateway_receives_only_the_clusters_it_routes_to(env: Env) -> None:
    dump = env.envoy.config_dump(resource="dynamic_active_clusters")
    names = sorted(c["cluster"]["name"] for c in dump.get("configs", []))
    assert names == ["api", "reviews/v1", "reviews/v2"], names


def test_edit_changes_routing_and_bad_edit_keeps_serving(env: Env) -> None:
    policy = env.mp.policy / "shop.yaml"
    original = policy.read_text()
    try:
        write_atomically(policy, original.replace(
            "backends: [{service: reviews, subset: v1}]\n---",
            "backends: [{service: reviews, subset: v2}]\n---"))
        eventually(lambda: env.echo("/anything")["backend"] == "v2", timeout=10,
                   what="the catch-all to move to v2")
        write_atomically(policy, original.replace("service: api}]\n    timeout",
                                                  "service: apii}]\n    timeout"))
        errors = eventually(lambda: env.mp.status()["policy"]["errors"], timeout=10,
                            what="the bad reference to be refused")
        assert any('no Service named "apii"' in e and 'did you mean "api"' in e for e in errors)
        assert env.echo("/anything")["backend"] == "v2"  # the last good config keeps serving
    finally:
        write_atomically(policy, original)
        eventually(lambda: env.echo("/anything")["backend"] == "v1", timeout=10,
                   what="the original policy to be back")
