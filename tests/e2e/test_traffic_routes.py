"""Route-level traffic management end to end: policy files served by `meshpilot serve` to a real
Envoy in front of echo backends, each feature proven by what a client and the backends observe:
retries (recovering upstreams), fault injection (aborts, delays for one user), mirroring, CORS
preflights answered by Envoy, consistent hashing on a cookie Envoy creates, and a canary weight
shift under steady traffic without a single failed request.

Every assertion here would fail without its feature: without retries the flaky upstream's 503
reaches the client; without the fault filter config the upstream answers; without the mirror the
shadow sees nothing; without CORS no access-control-allow-origin is sent and the preflight reaches
the upstream; without a hash policy a ring_hash cluster picks endpoints at random.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import (
    LoopbackHttpServer,
    MeshpilotProcess,
    eventually,
    http_get,
    served_policy,
    write_atomically,
)

from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: api
endpoints: ["127.0.0.1:{api}"]
---
kind: Service
name: shadow
endpoints: ["127.0.0.1:{shadow}"]
---
kind: Service
name: carts
endpoints: ["127.0.0.1:{c1}", "127.0.0.1:{c2}", "127.0.0.1:{c3}"]
load_balancer: ring_hash
---
kind: Gateway
name: edge
listeners:
  - {{name: http, port: {port}, address: 127.0.0.1}}
---
kind: Route
name: traffic
gateway: edge
hosts: [traffic.example.com]
rules:
  - match: {{path: {{prefix: /retry}}}}
    backends: [api]
    retries: {{attempts: 3}}
  - match: {{path: {{prefix: /codes}}}}
    backends: [api]
    retries: {{attempts: 3, on: [reset], retriable_status_codes: [429],
              backoff: {{base: 5ms, max: 20ms}}}}
  - match: {{path: {{prefix: /abort}}}}
    backends: [api]
    fault: {{abort: {{status: 418, percentage: 100}}}}
  - match: {{path: {{prefix: /delay}}}}
    backends: [api]
    fault: {{delay: {{fixed: 800ms, percentage: 100}}, headers: {{end-user: jason}}}}
  - match: {{path: {{prefix: /mirror}}}}
    backends: [api]
    mirror: {{service: shadow}}
  - match: {{path: {{prefix: /cart}}}}
    backends: [carts]
    hash_on: [{{cookie: {{name: session, ttl: 1h, path: /}}}}]
  - backends: [api]
---
kind: Route
name: site
gateway: edge
hosts: [cors.example.com]
cors:
  allow_origins: ["https://a.example", "*.b.example"]
  allow_methods: [GET, POST]
  allow_headers: [x-user]
  max_age: 10m
rules:
  - backends: [api]
"""

CANARY = """
kind: Service
name: shop
endpoints:
  - {{address: 127.0.0.1:{v1}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1:{v2}, labels: {{version: v2}}}}
subsets: {{v1: {{version: v1}}, v2: {{version: v2}}}}
---
kind: Route
name: canary
gateway: edge
hosts: [canary.example.com]
rules:
  - backends:
      - {{service: shop, subset: v1, weight: {w1}}}
      - {{service: shop, subset: v2, weight: {w2}}}
"""


class Recorder(LoopbackHttpServer):
    """A backend that records the path and Host of every request (for the mirror)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        recorder = self

        class Handler(LoopbackHttpServer.Handler):
            def do_GET(self) -> None:
                recorder.seen.append((self.path, self.headers.get("host", "")))
                self.reply(200, b'{"backend": "recorder"}')

        super().__init__(Handler)


class Env:
    def __init__(self, port: int, envoy: EnvoyProcess, mp: MeshpilotProcess,
                 echoes: dict[str, EchoServer], shadow: Recorder, policy: Path):
        self.port, self.envoy, self.mp, self.echoes = port, envoy, mp, echoes
        self.shadow, self.policy = shadow, policy

    def get(self, path: str, host: str = "traffic.example.com", method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return http_get(f"http://127.0.0.1:{self.port}{path}", {"Host": host, **(headers or {})},
                        method=method)

    def backend(self, path: str, **kwargs: Any) -> str:
        status, _, body = self.get(path, **kwargs)
        assert status == 200, (status, body[:200])
        return str(json.loads(body)["backend"])


def write_canary(policy: Path, echoes: dict[str, EchoServer], w1: int, w2: int) -> None:
    write_atomically(policy / "canary.yaml",  # one atomic save, as editors do
                     CANARY.format(v1=echoes["v1"].port, v2=echoes["v2"].port, w1=w1, w2=w2))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("traffic-e2e")
    echoes = {name: EchoServer(name) for name in ("api", "c1", "c2", "c3", "v1", "v2")}
    shadow = Recorder()
    with served_policy(work, "traffic.yaml", POLICY, {**echoes, "shadow": shadow}) as served:
        write_canary(served.policy, echoes, 90, 10)
        environment = Env(served.ports["port"], served.envoy, served.mp, echoes, shadow,
                          served.policy)
        eventually(lambda: environment.get("/")[0] == 200, timeout=30,
                   what="the gateway to serve")
        eventually(lambda: environment.get("/", host="canary.example.com")[0] == 200,
                   timeout=30, what="the canary route to serve")
        yield environment


def flaky(failures: int, **extra: str) -> dict[str, str]:
    """Headers making the echo fail the first `failures` requests of a fresh key."""
    return {"x-echo-fail-first": str(failures), "x-echo-key": uuid.uuid4().hex, **extra}


# ---- retries ------------------------------------------------------------------------------------


def test_retries_turn_a_recovering_upstream_into_a_success(env: Env) -> None:
    api = env.echoes["api"]
    before = api.requests_seen
    status, _, body = env.get("/retry", headers=flaky(2))
    assert status == 200, body
    assert api.requests_seen - before == 3  # two failed tries, then the answer
    # The same upstream behaviour on a rule without retries reaches the client.
    assert env.get("/plain", headers=flaky(2))[0] == 503


def test_retriable_status_codes_retry_what_5xx_does_not(env: Env) -> None:
    # 429 is no 5xx: only retriable_status_codes (with its implied condition) retries it.
    assert env.get("/codes", headers=flaky(2, **{"x-echo-status": "429"}))[0] == 200
    assert env.get("/retry", headers=flaky(1, **{"x-echo-status": "429"}))[0] == 429


# ---- fault injection ----------------------------------------------------------------------------


def test_an_abort_is_answered_by_envoy_without_reaching_the_upstream(env: Env) -> None:
    api = env.echoes["api"]
    before = api.requests_seen
    for _ in range(3):
        status, _, body = env.get("/abort")
        assert status == 418, body
    assert env.backend("/plain") == "api"  # the upstream is reachable, and counts requests ...
    assert api.requests_seen == before + 1  # ... but saw none of the aborted ones


def test_a_delay_applies_only_to_requests_with_the_header(env: Env) -> None:
    started = time.monotonic()
    assert env.backend("/delay", headers={"end-user": "jason"}) == "api"
    # Envoy's timers tick in milliseconds: allow 20 ms of rounding, far from an undelayed answer.
    assert time.monotonic() - started >= 0.78
    fastest = 10.0
    for _ in range(3):  # the quickest of three: a loaded machine may be slow once
        started = time.monotonic()
        assert env.backend("/delay", headers={"end-user": "someone-else"}) == "api"
        fastest = min(fastest, time.monotonic() - started)
    assert fastest < 0.5, fastest


# ---- mirroring ----------------------------------------------------------------------------------


def test_the_mirror_receives_copies_and_the_client_only_the_primary(env: Env) -> None:
    path = f"/mirror/{uuid.uuid4().hex}?q=1"
    status, headers, body = env.get(path)
    assert status == 200
    assert json.loads(body)["backend"] == "api" and headers["x-backend"] == "api"
    copies = eventually(lambda: [seen for seen in env.shadow.seen if seen[0] == path],
                        timeout=10, what="the mirrored copy")
    assert copies == [(path, "traffic.example.com-shadow")]  # Envoy marks the copy's Host
    assert env.get("/plain-not-mirrored")[0] == 200
    time.sleep(0.2)
    assert not any(seen[0] == "/plain-not-mirrored" for seen in env.shadow.seen)


# ---- CORS ---------------------------------------------------------------------------------------


def preflight(env: Env, origin: str) -> tuple[int, dict[str, str], bytes]:
    return env.get("/things", host="cors.example.com", method="OPTIONS",
                   headers={"Origin": origin, "Access-Control-Request-Method": "POST"})


def test_envoy_answers_preflights_of_allowed_origins(env: Env) -> None:
    api = env.echoes["api"]
    before = api.requests_seen
    for origin in ("https://a.example", "https://shop.b.example", "http://x.y.b.example"):
        status, headers, _ = preflight(env, origin)
        assert status == 200
        assert headers.get("access-control-allow-origin") == origin, headers
        assert headers.get("access-control-allow-methods") == "GET,POST"
        assert headers.get("access-control-allow-headers") == "x-user"
        assert headers.get("access-control-max-age") == "600"
    assert api.requests_seen == before  # Envoy answered: the upstream never saw them


def test_a_disallowed_origin_gets_no_allow_origin(env: Env) -> None:
    api = env.echoes["api"]
    before = api.requests_seen
    for origin in ("https://evil.example", "https://b.example", "https://a.example.evil.com"):
        _, headers, _ = preflight(env, origin)
        assert "access-control-allow-origin" not in headers, (origin, headers)
    # Answered by Envoy, never forwarded: a backend cannot answer them permissively (issue 14,
    # bug 5: Envoy forwards preflights of origins it does not allow unless told not to).
    assert api.requests_seen == before
    # A simple (non-preflight) request from an allowed origin gets the header on the answer.
    status, headers, _ = env.get("/x", host="cors.example.com",
                                 headers={"Origin": "https://a.example"})
    assert status == 200 and headers.get("access-control-allow-origin") == "https://a.example"


# ---- hosts -------------------------------------------------------------------------------------


def test_a_host_header_with_any_port_matches_the_host(env: Env) -> None:
    # A proxy or NAT in front may leave its own port in Host (issue 14, bug 3: it was a 404).
    for host in ("cors.example.com", f"cors.example.com:{env.port}", "cors.example.com:1234"):
        status, _, _ = env.get("/x", host=host)
        assert status == 200, host
    status, _, _ = env.get("/x", host="nowhere.example.com:1234")
    assert status == 404


# ---- consistent hashing -------------------------------------------------------------------------


def test_the_same_cookie_always_lands_on_the_same_endpoint(env: Env) -> None:
    for user in ("alice", "bob", "carol"):
        count = 30 if user == "alice" else 10
        seen = {env.backend("/cart", headers={"Cookie": f"session={user}"})
                for _ in range(count)}
        assert len(seen) == 1, (user, seen)


def test_envoy_sets_the_hash_cookie_when_it_is_missing(env: Env) -> None:
    status, headers, _ = env.get("/cart")
    assert status == 200
    cookie = headers.get("set-cookie", "")
    assert cookie.startswith("session="), headers
    assert "Max-Age=3600" in cookie and "Path=/" in cookie, cookie
    # The cookie Envoy chose pins the client to one endpoint from then on.
    value = cookie.split(";", 1)[0]
    seen = {env.backend("/cart", headers={"Cookie": value}) for _ in range(10)}
    assert len(seen) == 1, seen


# ---- a canary weight shift under load -----------------------------------------------------------


def canary_weights(env: Env) -> list[int]:
    dump = env.envoy.config_dump(resource="dynamic_route_configs")
    for config in dump.get("configs", []):
        for vhost in config.get("route_config", {}).get("virtual_hosts", []):
            if vhost["name"] == "canary":
                clusters = vhost["routes"][0]["route"]["weighted_clusters"]["clusters"]
                return [int(c.get("weight", 0)) for c in clusters]
    return []


def test_shifting_weights_under_load_fails_no_request(env: Env) -> None:
    answers: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            started = time.monotonic()  # a request sent after a change sees it
            try:
                status, _, body = env.get("/", host="canary.example.com")
                backend = json.loads(body)["backend"] if status == 200 else ""
            except Exception as error:  # a reset or a timeout is a failed request too
                status, backend = 0, repr(error)
            answers.append((started, status, backend))

    sender = threading.Thread(target=load, daemon=True)
    sender.start()
    try:
        applied = 0.0
        for w1, w2 in ((90, 10), (50, 50), (20, 80), (0, 100)):
            write_canary(env.policy, env.echoes, w1, w2)
            eventually(lambda w=[w1, w2]: canary_weights(env) == w, timeout=15,  # type: ignore[misc]
                       what=f"Envoy to serve weights {w1}/{w2}")
            applied = time.monotonic()
            count = len(answers)
            eventually(lambda c=count: len(answers) >= c + 20, timeout=15,  # type: ignore[misc]
                       what="traffic at these weights")
        after = [a for a in answers if a[0] > applied]
        assert after and {backend for _, _, backend in after} == {"v2"}, after[:5]
    finally:
        stop.set()
        sender.join(timeout=10)
    failed = [a for a in answers if a[1] != 200]
    assert not failed, failed[:5]
    assert len(answers) >= 80
    assert {backend for _, _, backend in answers} == {"v1", "v2"}
