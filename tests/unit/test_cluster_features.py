"""Cluster-level traffic management in the Service kind: circuit breakers with a retry budget,
outlier detection with success rate, health check intervals, load balancer settings, localities
and priorities: what loads, what is refused (with its exact position), and the Envoy fields."""

from __future__ import annotations

import textwrap

import pytest

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import (
    CircuitBreaker,
    Endpoint,
    LoadBalancerOptions,
    RetryBudget,
    Service,
    SuccessRate,
)
from meshpilot.translators import clusters, endpoints


def load_service(text: str) -> Service:
    (service,) = load_policy_text("kind: Service\nname: s\n" + textwrap.dedent(text)).services
    return service


def issues(text: str) -> list[str]:
    with pytest.raises(PolicyError) as raised:
        load_policy_text("kind: Service\nname: s\n" + textwrap.dedent(text))
    return [str(issue) for issue in raised.value.issues]


# ---- loading -------------------------------------------------------------------------------


def test_the_full_shapes_load() -> None:
    service = load_service("""\
        endpoints:
          - {address: 10.0.0.1:80, region: eu, zone: eu-1a}
          - {address: 10.0.0.2:80, zone: eu-1b, priority: 1}
        load_balancer: {policy: ring_hash, minimum_ring_size: 64, maximum_ring_size: 128}
        health_check: {http: /h, interval: 1s, no_traffic_interval: 3s, unhealthy_interval: 2s}
        circuit_breaker: {max_requests: 5, retry_budget: {percent: 12.5, min_concurrency: 2}}
        outlier_detection: {success_rate: {minimum_hosts: 2, request_volume: 10,
                                           stdev_factor: 1.25}}
        """)
    assert service.endpoints == (Endpoint("10.0.0.1", 80, region="eu", zone="eu-1a"),
                                 Endpoint("10.0.0.2", 80, zone="eu-1b", priority=1))
    assert service.load_balancer == "ring_hash"
    assert service.load_balancer_options == LoadBalancerOptions(minimum_ring_size=64,
                                                                maximum_ring_size=128)
    assert service.health_check is not None
    assert (service.health_check.no_traffic_interval,
            service.health_check.unhealthy_interval) == (3.0, 2.0)
    assert service.circuit_breaker == CircuitBreaker(max_requests=5,
                                                     retry_budget=RetryBudget(12.5, 2))
    assert service.outlier_detection is not None
    assert service.outlier_detection.success_rate == SuccessRate(2, 10, 1.25)


def test_the_plain_load_balancer_string_still_loads() -> None:
    service = load_service("load_balancer: maglev\n")
    assert (service.load_balancer, service.load_balancer_options) == ("maglev",
                                                                      LoadBalancerOptions())


@pytest.mark.parametrize(("text", "expected"), [
    ("load_balancer: {policy: random, choice_count: 3}\n",
     "policy.yaml:3:33: Service s: load_balancer.choice_count: choice_count applies to policy "
     "least_request only (this load balancer is random)"),
    ("load_balancer: {choice_count: 3}\n",
     'policy.yaml:3:16: Service s: load_balancer.policy: missing "policy"'),
    ("load_balancer: {policy: least_request, choice_count: 1}\n",
     "policy.yaml:3:54: Service s: load_balancer.choice_count: must be from 2 to 1000, found 1"),
    ("load_balancer: {policy: maglev, table_size: 65536}\n",
     "policy.yaml:3:45: Service s: load_balancer.table_size: a Maglev table size must be a "
     "prime number (such as 65537 or 5000011), found 65536"),
    ("load_balancer: {policy: ring_hash, minimum_ring_size: 10, maximum_ring_size: 5}\n",
     "policy.yaml:3:78: Service s: load_balancer.maximum_ring_size: must not be smaller than "
     "minimum_ring_size (10)"),
    ("load_balancer: {policy: ring_hash, ring_size: 5}\n",
     'policy.yaml:3:36: Service s: load_balancer.ring_size: unknown key "ring_size" (did you '
     'mean "minimum_ring_size"?)'),
    ("circuit_breaker: {max_retries: 3, retry_budget: {percent: 20}}\n",
     'policy.yaml:3:35: Service s: circuit_breaker.retry_budget: retry_budget cannot be used '
     'together with "max_retries" (a retry budget replaces the fixed limit)'),
    ("circuit_breaker: {retry_budget: {percent: 120}}\n",
     "policy.yaml:3:43: Service s: circuit_breaker.retry_budget.percent: must be from 0 to 100, "
     "found 120"),
    ("outlier_detection: {success_rate: {stdev_factor: fast}}\n",
     "policy.yaml:3:50: Service s: outlier_detection.success_rate.stdev_factor: expected a "
     "number, found a string"),
    ("endpoints: [{address: 10.0.0.1:80, zone: a}, {address: 10.0.0.2:80, priority: 2}]\n",
     "policy.yaml:3:79: Service s: endpoints[1].priority: no endpoint has priority 1: "
     "priorities must run from 0 without gaps (0 is preferred, 1 takes over when it fails, ...)"),
    ("endpoints: [{address: 10.0.0.1:80, zone: a b}]\n",
     'policy.yaml:3:42: Service s: endpoints[0].zone: invalid name "a b": use letters, digits, '
     "'.', '_' and '-', starting with a letter or digit (at most 253 characters)"),
    ("health_check: {tcp: true, no_traffic_interval: 0s}\n",
     "policy.yaml:3:48: Service s: health_check.no_traffic_interval: must be longer than 0s"),
    ("load_balancer: {policy: ring_hash, slow_start: {window: 30s}}\n",
     "policy.yaml:3:36: Service s: load_balancer.slow_start: slow_start applies to round_robin "
     "and least_request only (this load balancer is ring_hash)"),
    ("load_balancer: {policy: round_robin, slow_start: {aggression: 2}}\n",
     'policy.yaml:3:50: Service s: load_balancer.slow_start.window: missing "window"'),
    ("load_balancer: {policy: round_robin, slow_start: {window: 5s, aggression: 0}}\n",
     "policy.yaml:3:75: Service s: load_balancer.slow_start.aggression: must be above 0 (1 ramps "
     "up linearly)"),
    ("max_concurrent_streams: 10\n",
     'policy.yaml:3:1: Service s: max_concurrent_streams: "max_concurrent_streams" limits HTTP/2 '
     "connections; this Service speaks HTTP/1.1 (protocol http2 or grpc)"),
    ("protocol: tcp\nconnection_idle_timeout: 1m\n",
     'policy.yaml:4:1: Service s: connection_idle_timeout: "connection_idle_timeout" is about '
     "HTTP connections; this Service has protocol tcp"),
    ("tcp_keepalive: {time: 1500ms}\n",
     "policy.yaml:3:23: Service s: tcp_keepalive.time: keepalive times are whole seconds "
     "(Envoy's unit): found 1500ms"),
    ("panic_threshold: 150\n",
     "policy.yaml:3:18: Service s: panic_threshold: must be from 0 to 100, found 150"),
])
def test_refused_with_the_position(text: str, expected: str) -> None:
    assert issues(text) == [expected]


# ---- translating ---------------------------------------------------------------------------


def test_retry_budget_and_limits() -> None:
    breaker = clusters.circuit_breakers(CircuitBreaker(max_pending_requests=1,
                                                       retry_budget=RetryBudget(20.0, 3)))
    (thresholds,) = breaker.thresholds
    assert thresholds.max_pending_requests.value == 1
    assert thresholds.retry_budget.budget_percent.value == 20.0
    assert thresholds.retry_budget.min_retry_concurrency.value == 3
    (empty,) = clusters.circuit_breakers(CircuitBreaker(retry_budget=RetryBudget())).thresholds
    assert empty.HasField("retry_budget")  # on, with Envoy's defaults


def test_success_rate_is_enforced_and_in_thousandths() -> None:
    service = load_service("outlier_detection: {success_rate: {stdev_factor: 1.9}}\n")
    outlier = clusters.cluster(service).outlier_detection
    assert outlier.success_rate_stdev_factor.value == 1900
    assert outlier.enforcing_success_rate.value == 100


def test_health_checks_run_at_the_interval_before_traffic() -> None:
    cluster = clusters.cluster(load_service("health_check: {tcp: true, interval: 250ms}\n"))
    (check,) = cluster.health_checks
    assert check.no_traffic_interval.ToMilliseconds() == 250
    assert not check.HasField("unhealthy_interval")


def test_load_balancer_settings() -> None:
    least = clusters.cluster(load_service(
        "load_balancer: {policy: least_request, choice_count: 4}\n"))
    assert least.least_request_lb_config.choice_count.value == 4
    ring = clusters.cluster(load_service(
        "load_balancer: {policy: ring_hash, minimum_ring_size: 16}\n"))
    assert ring.ring_hash_lb_config.minimum_ring_size.value == 16
    assert not ring.ring_hash_lb_config.HasField("maximum_ring_size")
    maglev = clusters.cluster(load_service("load_balancer: {policy: maglev, table_size: 251}\n"))
    assert maglev.maglev_lb_config.table_size.value == 251
    assert not clusters.cluster(load_service("load_balancer: random\n")).HasField(
        "least_request_lb_config")


def test_endpoints_are_grouped_by_priority_and_locality() -> None:
    assignment = endpoints.load_assignment("c", [
        Endpoint("10.0.0.3", 80, zone="b", priority=1),
        Endpoint("10.0.0.2", 80, region="r", zone="a"),
        Endpoint("10.0.0.1", 80, region="r", zone="a"),
        Endpoint("10.0.0.9", 80),
    ])
    groups = [(g.priority, g.locality.region, g.locality.zone,
               [e.endpoint.address.socket_address.address for e in g.lb_endpoints])
              for g in assignment.endpoints]
    assert groups == [(0, "", "", ["10.0.0.9"]), (0, "r", "a", ["10.0.0.1", "10.0.0.2"]),
                      (1, "", "b", ["10.0.0.3"])]
    assert not assignment.endpoints[0].HasField("locality")


ZONED = """\
kind: Service
name: search
endpoints:
  - {address: 10.0.0.1:80, zone: a}
  - {address: 10.0.0.2:80, zone: a}
  - {address: 10.0.0.3:80, zone: b}
zone_weights: {a: 80, b: 20}
"""


def test_zone_weights_become_locality_weights() -> None:
    service = load_policy_text(ZONED).services[0]
    assert service.zone_weights == (("a", 80), ("b", 20))
    cluster = clusters.cluster(service, None)
    assert cluster.common_lb_config.HasField("locality_weighted_lb_config")
    assignment = endpoints.load_assignment("search", service.endpoints, dict(service.zone_weights))
    weights = {g.locality.zone: g.load_balancing_weight.value for g in assignment.endpoints}
    assert weights == {"a": 80, "b": 20}
    plain = load_policy_text(ZONED.replace("zone_weights: {a: 80, b: 20}\n", "")).services[0]
    assert not clusters.cluster(plain, None).HasField("common_lb_config")


@pytest.mark.parametrize("weights, expected", [
    ("{a: 80}", 'policy.yaml:7:1: Service search: zone_weights: zone "b" has endpoints but no '
                "weight: Envoy would send it nothing"),
    ("{a: 80, b: 20, c: 5}", 'policy.yaml:7:30: Service search: zone_weights.c: no endpoint is '
                             'in zone "c"'),
    ("{a: 80, b: 0}", "policy.yaml:7:26: Service search: zone_weights.b:"),
])
def test_zone_weights_errors(weights: str, expected: str) -> None:
    with pytest.raises(PolicyError) as failed:
        load_policy_text(ZONED.replace("{a: 80, b: 20}", weights))
    assert any(str(issue).startswith(expected) for issue in failed.value.issues), \
        [str(i) for i in failed.value.issues]
