"""Cluster-level traffic management end to end: Services with circuit breakers, outlier
detection, active health checks and priority failover, served by `meshpilot serve` to a real
Envoy in front of echo backends. Each test's assertion depends on the feature being translated:
without it, the flood is queued rather than refused, the bad endpoint keeps getting requests,
and nothing fails over."""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from support import eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

BACKENDS = ("breaker", "od-good", "od-bad", "hc-a", "hc-b", "p0", "p1", "idle", "za-1", "za-2",
            "zb-1")

# Short intervals (the test's, not defaults): a check every 200ms finds a bad endpoint in
# well under a second even on a loaded machine.
POLICY = """
kind: Service
name: breaker
endpoints: ["127.0.0.1:{breaker}"]
circuit_breaker: {{max_connections: 1, max_pending_requests: 1, max_requests: 1,
                  retry_budget: {{percent: 20, min_concurrency: 1}}}}
---
kind: Service
name: outlier
endpoints: ["127.0.0.1:{od-good}", "127.0.0.1:{od-bad}"]
outlier_detection:
  consecutive_5xx: 3
  interval: 1s
  base_ejection_time: 60s
  max_ejection_percent: 50
---
kind: Service
name: checked
endpoints: ["127.0.0.1:{hc-a}", "127.0.0.1:{hc-b}"]
health_check: {{http: /healthz, interval: 200ms, timeout: 1s, unhealthy_threshold: 2,
               healthy_threshold: 1}}
---
kind: Service
name: failover
endpoints:
  - {{address: "127.0.0.1:{p0}", zone: a, priority: 0}}
  - {{address: "127.0.0.1:{p1}", zone: b, priority: 1}}
health_check: {{http: /healthz, interval: 200ms, unhealthy_threshold: 2}}
---
kind: Service
name: idle
endpoints: ["127.0.0.1:{idle}"]
health_check: {{http: /healthz, interval: 200ms, unhealthy_threshold: 1}}
---
kind: Service
name: zoned
endpoints:
  - {{address: "127.0.0.1:{za-1}", zone: a}}
  - {{address: "127.0.0.1:{za-2}", zone: a}}
  - {{address: "127.0.0.1:{zb-1}", zone: b}}
zone_weights: {{a: 20, b: 80}}
---
kind: Gateway
name: edge
listeners:
  - {{name: http, port: {port}, address: 127.0.0.1}}
---
kind: Route
name: all
gateway: edge
rules:
  - match: {{path: {{prefix: /breaker}}}}
    backends: [breaker]
  - match: {{path: {{prefix: /outlier}}}}
    backends: [outlier]
  - match: {{path: {{prefix: /checked}}}}
    backends: [checked]
  - match: {{path: {{prefix: /idle}}}}
    backends: [idle]
  - match: {{path: {{prefix: /zoned}}}}
    backends: [zoned]
  - backends: [failover]
"""


class Env:
    def __init__(self, port: int, envoy: EnvoyProcess, echoes: dict[str, EchoServer]):
        self.port, self.envoy, self.echoes = port, envoy, echoes

    def get(self, path: str, headers: dict[str, str] | None = None,
            timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        return http_get(f"http://127.0.0.1:{self.port}{path}", headers, timeout=timeout)

    def backend(self, path: str) -> str | None:
        status, _, body = self.get(path)
        return json.loads(body)["backend"] if status == 200 else f"status {status}"

    def backends(self, path: str, count: int) -> list[str | None]:
        return [self.backend(path) for _ in range(count)]

    def stat(self, name: str) -> int:
        return self.envoy.stats().get(name, 0)

    def health_flags(self, cluster: str, echo: str) -> str:
        """The /clusters health_flags of one echo backend's endpoint in `cluster`."""
        prefix = f"{cluster}::127.0.0.1:{self.echoes[echo].port}::health_flags::"
        for line in self.envoy.admin_get("/clusters").splitlines():
            if line.startswith(prefix):
                return line[len(prefix):]
        raise AssertionError(f"no endpoint of {echo} in cluster {cluster}")


@contextmanager
def answering(echo: EchoServer, status: int) -> Iterator[None]:
    """`echo` answers every request (health checks too) with `status` inside the block: a
    backend gone bad; healthy again afterwards, even when the block failed (the module's
    backends are shared by every test)."""
    echo.forced_status = status
    try:
        yield
    finally:
        echo.forced_status = None


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("traffic-clusters")
    echoes = {name: EchoServer(name) for name in BACKENDS}
    with served_policy(work, "policy.yaml", POLICY, echoes) as served:
        environment = Env(served.ports["port"], served.envoy, echoes)
        eventually(lambda: environment.get("/breaker")[0] == 200,
                   what="the gateway to serve")
        yield environment


def test_circuit_breaker_refuses_a_flood_with_overloaded(env: Env) -> None:
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def one() -> None:
        status, headers, _ = env.get("/breaker", {"x-echo-delay-ms": "1500"}, timeout=20)
        with lock:
            results.append((status, headers.get("x-envoy-overloaded")))

    threads = [threading.Thread(target=one) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 10, results
    overloaded = [r for r in results if r == (503, "true")]
    # 1 request in flight and 1 pending are allowed: at least one of ten is refused at once,
    # and the one in flight succeeds.
    assert overloaded, results
    assert (200, None) in results, results
    assert env.stat("cluster.breaker.upstream_rq_pending_overflow") > 0


def test_outlier_detection_ejects_the_failing_endpoint(env: Env) -> None:
    bad = env.echoes["od-bad"]
    with answering(bad, 503):
        # Round robin sends every other request to the bad endpoint: its third 503 in a row
        # ejects it (consecutive_5xx: 3).
        def ejected_after_one_more_request() -> bool:
            env.backend("/outlier")
            return env.stat("cluster.outlier.outlier_detection.ejections_active") >= 1

        eventually(ejected_after_one_more_request, timeout=15,
                   what="the bad endpoint to be ejected")
        assert env.stat("cluster.outlier.outlier_detection.ejections_active") >= 1
        seen_by_bad = bad.requests_seen
        assert env.backends("/outlier", 20) == ["od-good"] * 20
        assert bad.requests_seen == seen_by_bad  # not one request reached it
        assert "failed_outlier_check" in env.health_flags("outlier", "od-bad")


def test_health_check_removes_and_restores_an_endpoint(env: Env) -> None:
    # Both endpoints serve, and checks run before any traffic (no_traffic_interval).
    eventually(lambda: set(env.backends("/checked", 10)) == {"hc-a", "hc-b"}, timeout=15,
               what="both checked endpoints to serve")
    with answering(env.echoes["hc-b"], 503):
        eventually(lambda: "failed_active_hc" in env.health_flags("checked", "hc-b"),
                   timeout=10, what="hc-b to fail its health checks")
        assert env.backends("/checked", 20) == ["hc-a"] * 20
    eventually(lambda: env.health_flags("checked", "hc-b") == "healthy", timeout=10,
               what="hc-b to pass its health checks again")
    # Workers pick up the host's new health a moment after the admin shows it.
    eventually(lambda: "hc-b" in env.backends("/checked", 4), timeout=10,
               what="hc-b to get traffic again")


def test_priority_failover_and_back(env: Env) -> None:
    eventually(lambda: env.backends("/", 1) == ["p0"], timeout=10, what="p0 to serve")
    assert env.backends("/", 20) == ["p0"] * 20  # priority 1 gets nothing while 0 is healthy
    with answering(env.echoes["p0"], 503):
        eventually(lambda: "failed_active_hc" in env.health_flags("failover", "p0"),
                   timeout=10, what="p0 to fail its health checks")
        assert env.backends("/", 20) == ["p1"] * 20
    eventually(lambda: env.backends("/", 10) == ["p0"] * 10, timeout=10,
               what="traffic to return to priority 0")


def test_localities_and_priorities_reach_envoy(env: Env) -> None:
    dump = env.envoy.config_dump(resource="dynamic_endpoint_configs", include_eds=True)
    failover = next(c["endpoint_config"] for c in dump["configs"]
                    if c["endpoint_config"]["cluster_name"] == "failover")
    groups = collections.OrderedDict(
        (g["locality"]["zone"], g.get("priority", 0)) for g in failover["endpoints"])
    assert groups == {"a": 0, "b": 1}


def test_health_checks_run_at_the_interval_before_any_traffic(env: Env) -> None:
    # No request is ever sent to `idle`. Envoy checks such a cluster every no_traffic_interval
    # (its default: 60s); meshpilot sets it to the interval, so a failure shows within seconds.
    eventually(lambda: env.health_flags("idle", "idle") == "healthy", timeout=10,
               what="the idle endpoint's first check to pass")
    with answering(env.echoes["idle"], 503):
        eventually(lambda: "failed_active_hc" in env.health_flags("idle", "idle"), timeout=10,
                   what="the idle endpoint to fail its checks without traffic")
        assert env.stat("cluster.idle.upstream_rq_total") == 0
        assert env.echoes["idle"].requests_seen == 0


def test_zone_weights_split_traffic_by_zone_not_by_endpoint_count(env: Env) -> None:
    # Zone a has two endpoints, zone b one: by endpoint count b would get a third; weighted by
    # zone it gets 80%.
    seen = collections.Counter(env.backends("/zoned", 300))
    zone_b = seen["zb-1"]
    assert zone_b + seen["za-1"] + seen["za-2"] == 300, seen
    assert 200 <= zone_b <= 270, seen  # 80% of 300 is 240 (binomial sd ~7)
