"""`kind: Service`: a set of endpoints and how to reach them, as one `model.Service`.

This module owns the Service document's shape and everything that can be checked within one
Service: endpoint addresses, label selectors (a subset must select at least one of the endpoints
written), health checks, circuit breaking and outlier detection. It must not look at other
documents (whether a Route's subset exists is `references.py`'s job) nor decide Envoy's
representation (that is the translators').

Shape:

    kind: Service
    name: reviews
    protocol: http                       # http | http2 | grpc | tcp (default http)
    endpoints:                           # host:port, or {address, labels, weight, region,
      - 10.0.0.1:9080                    #                 zone, sub_zone, priority}
      - {address: reviews-v2.internal:9080, labels: {version: v2}, weight: 10, zone: b,
         priority: 1}
    subsets: {v2: {version: v2}}         # name -> label selector
    load_balancer: round_robin           # round_robin | least_request | random | ring_hash | maglev
                                         # or {policy: ring_hash, minimum_ring_size: 1024, ...}
    health_check: {http: /healthz, interval: 5s, timeout: 1s, unhealthy_threshold: 3,
                   healthy_threshold: 1, expected_statuses: [200, "200-299"],
                   no_traffic_interval: 5s, unhealthy_interval: 5s}
                                         # or {tcp: true} or {grpc: true}
    circuit_breaker: {max_connections: 1000, max_pending_requests: 100, max_requests: 1000,
                      max_retries: 3}    # or retry_budget: {percent: 20, min_concurrency: 3}
    outlier_detection: {consecutive_5xx: 5, consecutive_gateway_errors: 5, interval: 10s,
                        base_ejection_time: 30s, max_ejection_percent: 10,
                        success_rate: {minimum_hosts: 5, request_volume: 100, stdev_factor: 1.9}}
    connect_timeout: 1s                  # default 1s
    connection_idle_timeout: 1h          # and max_connection_duration, max_concurrent_streams,
    tcp_keepalive: {probes: 3, time: 60s}  # panic_threshold, load_balancer.slow_start: see
                                         # native/connections.py
    locality_lb: {failover: [{from: eu-west, to: us-east}]}   # by each caller's locality:
                                                              # see native/locality.py
    sidecar: {port: 15006, app: 127.0.0.1:8080, outbound_port: 15001,   # the mesh side: see
              calls: [ratings, {service: details, local_port: 9001}]}   # native/sidecar.py
    tls: {sni: reviews.internal, ca: /etc/tls/ca.pem, verify: true}     # TLS to the endpoints:
                                                                        # see native/tls.py
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any, Literal, TypeVar, cast

from meshpilot.inputs.context import DocumentContext
from meshpilot.inputs.native import fields
from meshpilot.inputs.native.connections import CONNECTION_KEYS, parse_connections, parse_slow_start
from meshpilot.inputs.native.fields import (
    Fields,
    Invalid,
    issue_count,
    reported_since,
    written_before,
)
from meshpilot.inputs.native.locality import parse_locality_lb
from meshpilot.inputs.native.sidecar import parse_sidecar
from meshpilot.inputs.native.tls import upstream_tls
from meshpilot.inputs.yamlsource import FieldPath, Located
from meshpilot.ir.model import (
    CircuitBreaker,
    Endpoint,
    HealthCheck,
    Labels,
    LoadBalancer,
    LoadBalancerOptions,
    OutlierDetection,
    Protocol,
    RetryBudget,
    Service,
    SuccessRate,
)

KIND = "Service"

PROTOCOLS: tuple[Protocol, ...] = ("http", "http2", "grpc", "tcp")
LOAD_BALANCERS: tuple[LoadBalancer, ...] = ("round_robin", "least_request", "random",
                                            "ring_hash", "maglev")
HealthCheckKind = Literal["http", "tcp", "grpc"]
HEALTH_CHECK_KINDS: tuple[HealthCheckKind, ...] = ("http", "tcp", "grpc")

SERVICE_KEYS = ("kind", "name", "protocol", "endpoints", "subsets", "load_balancer",
                "health_check", "circuit_breaker", "outlier_detection", "connect_timeout",
                "zone_weights", "sidecar", "tls", "max_requests_per_connection", "failover",
                "locality_lb", *CONNECTION_KEYS)
ENDPOINT_KEYS = ("address", "labels", "weight", "region", "zone", "sub_zone", "priority")
HEALTH_CHECK_KEYS = (*HEALTH_CHECK_KINDS, "interval", "timeout", "unhealthy_threshold",
                     "healthy_threshold", "expected_statuses", "no_traffic_interval",
                     "unhealthy_interval")
CIRCUIT_BREAKER_LIMITS = ("max_connections", "max_pending_requests", "max_requests",
                          "max_retries")
CIRCUIT_BREAKER_KEYS = (*CIRCUIT_BREAKER_LIMITS, "retry_budget")
RETRY_BUDGET_KEYS = ("percent", "min_concurrency")
OUTLIER_DETECTION_KEYS = ("consecutive_5xx", "consecutive_gateway_errors", "interval",
                          "base_ejection_time", "max_ejection_percent", "success_rate")
SUCCESS_RATE_KEYS = ("minimum_hosts", "request_volume", "stdev_factor")
# Each load balancer setting, and the one policy it applies to.
LOAD_BALANCER_SETTINGS: dict[str, LoadBalancer] = {
    "choice_count": "least_request",
    "minimum_ring_size": "ring_hash",
    "maximum_ring_size": "ring_hash",
    "table_size": "maglev",
}
LOAD_BALANCER_KEYS = ("policy", *LOAD_BALANCER_SETTINGS, "slow_start")

MAX_PRIORITY = 127
MAX_RING_SIZE = 8_388_608  # Envoy's limit for both ring sizes
MAX_MAGLEV_TABLE = 5_000_011  # Envoy's limit; the table size must be a prime

MAX_REQUESTS_PER_CONNECTION = fields.integer(1, 4_294_967_295)
ENDPOINT_WEIGHT = fields.integer(1, 128)  # the model's documented range
THRESHOLD = fields.integer(1, 1_000_000)
STATUS = fields.integer(100, 599)  # Envoy's expected_statuses allow [100, 600)

_PROTOCOL = fields.choice(PROTOCOLS)
_LOAD_BALANCER = fields.choice(LOAD_BALANCERS)
_DURATION = fields.duration()
_PERCENT = fields.integer(0, 100)
_PRIORITY = fields.integer(0, MAX_PRIORITY)
_CHOICE_COUNT = fields.integer(2, 1000)
_RING_SIZE = fields.integer(1, MAX_RING_SIZE)


def parse_service(document: Located, ctx: DocumentContext) -> list[Service]:
    """The document's Service, or nothing if anything in it was reported."""
    mark = issue_count(ctx)
    doc = Fields(ctx, document.value)
    doc.check_keys(SERVICE_KEYS, "a Service")
    name = doc.get("name", fields.name)
    protocol = doc.get("protocol", _PROTOCOL) or "http"
    endpoints_mark = issue_count(ctx)
    endpoints = _endpoints(doc)
    # A subset is checked against the endpoints only if they all loaded: otherwise "selects
    # no endpoint" could be an echo of an endpoint's own error.
    subsets = _subsets(doc, endpoints, check_selection=not reported_since(ctx, endpoints_mark))
    load_balancer, load_balancer_options = _load_balancer(doc)
    if protocol == "tcp" and "max_requests_per_connection" in doc.value:
        doc.report("max_requests_per_connection", '"max_requests_per_connection" counts HTTP '
                   "requests; this Service has protocol tcp", at_value=False)
    service = Service(
        name=name or "",
        position=document.position,
        protocol=cast(Protocol, protocol),
        endpoints=endpoints,
        subsets=subsets,
        load_balancer=load_balancer,
        load_balancer_options=load_balancer_options,
        connect_timeout=_or(doc.get("connect_timeout", _DURATION), 1.0),
        health_check=_health_check(doc, protocol),
        circuit_breaker=_circuit_breaker(doc),
        outlier_detection=_outlier_detection(doc),
        zone_weights=_zone_weights(doc, endpoints),
        sidecar=parse_sidecar(doc),
        tls=upstream_tls(doc),
        origin=ctx.origin(),
        max_requests_per_connection=doc.get("max_requests_per_connection",
                                            MAX_REQUESTS_PER_CONNECTION),
        failover=fields.unique_list(doc, "failover", "Service name", fields.name),
        locality_lb=parse_locality_lb(doc, can_fail_over=bool(
            {"outlier_detection", "health_check"} & set(doc.value))),
        **parse_connections(doc, protocol),
    )
    return [] if reported_since(ctx, mark) or name is None else [service]


def _zone_weights(doc: Fields, endpoints: tuple[Endpoint, ...]) -> tuple[tuple[str, int], ...]:
    """`zone_weights: {a: 80, b: 20}`: locality-weighted balancing across the endpoints' zones.

    Envoy sends nothing to a locality without a weight, so every zone the endpoints use needs
    one, and a weight for a zone no endpoint is in is a typo."""
    weights = doc.mapping("zone_weights",
                          "a mapping of zone name to weight, such as {a: 80, b: 20}")
    if weights is None:
        return ()
    result = {}
    for zone in weights.value:
        weight = weights.get(zone, fields.integer(1, 1_000_000))
        if weight is not None:
            result[str(zone)] = weight
    used = {e.zone for e in endpoints if e.zone}
    for zone in sorted(set(result) - used):
        weights.report(zone, f"no endpoint is in zone {fields.quoted(zone)}"
                             f"{fields.did_you_mean(zone, sorted(used))}", at_value=False)
    for zone in sorted(used - set(result)):
        doc.report("zone_weights", f"zone {fields.quoted(zone)} has endpoints but no weight: "
                                   "Envoy would send it nothing", at_value=False)
    if endpoints and any(e.zone is None for e in endpoints):
        doc.report("zone_weights", "every endpoint needs a zone when zone_weights is set",
                   at_value=False)
    return tuple(sorted(result.items()))


_T = TypeVar("_T")


def _or(value: _T | None, default: _T) -> _T:
    return default if value is None else value


# ---------------------------------------------------------------------------------------------
# Endpoints and subsets.


def _endpoints(doc: Fields) -> tuple[Endpoint, ...]:
    items = doc.items("endpoints", "endpoint")
    if items is None:
        return ()
    endpoints: list[Endpoint] = []
    seen: dict[Hashable, FieldPath] = {}
    for index, item in enumerate(items):
        path = ("endpoints", index)
        endpoint = _endpoint(doc.ctx, item, path)
        if endpoint is None:
            continue
        first = written_before(doc.ctx, seen, (endpoint.host, endpoint.port), path)
        if first is not None:
            doc.ctx.report(path, f"endpoint {_shown_address(endpoint)} is listed twice (first "
                                 f"at {first})", at_value=True)
            continue
        endpoints.append(endpoint)
    _check_priorities(doc, items, endpoints)
    return tuple(endpoints)


def _check_priorities(doc: Fields, items: list[Any], endpoints: list[Endpoint]) -> None:
    """Envoy fails over from priority 0 to 1, then 2 ...: a priority no endpoint has would be
    an empty level, which is a typo more often than a plan."""
    present = {endpoint.priority for endpoint in endpoints}
    missing = sorted(set(range(max(present, default=0))) - present)
    if not missing:
        return
    for index, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("priority"), int) \
                and item["priority"] > missing[0]:
            doc.ctx.report(("endpoints", index, "priority"),
                           f"no endpoint has priority {missing[0]}: priorities must run from 0 "
                           f"without gaps (0 is preferred, 1 takes over when it fails, ...)",
                           at_value=True)
            return


def _shown_address(endpoint: Endpoint) -> str:
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"{host}:{endpoint.port}"


def _endpoint(ctx: DocumentContext, item: Any, path: FieldPath) -> Endpoint | None:
    """An endpoint written as `host:port`, or as a mapping with `address`."""
    if isinstance(item, str):
        address = fields.convert_at(ctx, item, path, fields.address)
        if address is None:
            return None
        return Endpoint(host=address[0], port=address[1], origin=ctx.origin(path))
    entry = Fields.at(ctx, item, path, "host:port or a mapping {address: host:port, ...}")
    if entry is None:
        return None
    entry.check_keys(ENDPOINT_KEYS, "an endpoint")
    address = entry.get("address", fields.address, required=True)
    endpoint_labels = entry.get("labels", fields.labels) or ()
    weight = entry.get("weight", ENDPOINT_WEIGHT)
    region = entry.get("region", fields.name)
    zone = entry.get("zone", fields.name)
    sub_zone = entry.get("sub_zone", fields.name)
    priority = entry.get("priority", _PRIORITY)
    if address is None:
        return None
    return Endpoint(host=address[0], port=address[1], labels=endpoint_labels, weight=weight,
                    region=region, zone=zone, priority=priority or 0, sub_zone=sub_zone,
                    origin=entry.origin())


def _subsets(doc: Fields, endpoints: tuple[Endpoint, ...],
             check_selection: bool) -> tuple[tuple[str, Labels], ...]:
    """Named label selectors; each must select at least one endpoint, when endpoints are
    written (a Service without endpoints gets them from discovery, later)."""
    subsets = doc.mapping("subsets", "a mapping of subset names to label selectors")
    if subsets is None:
        return ()
    if not subsets.value:
        doc.report("subsets", "must name at least one subset (or leave subsets out)")
    result: list[tuple[str, Labels]] = []
    for subset_name in subsets.value:
        fields.convert_at(doc.ctx, subset_name, ("subsets", subset_name), _subset_name)
        selector = subsets.get(subset_name, fields.labels, required=True)
        if selector is None:
            continue
        if not selector:
            subsets.report(subset_name, "a subset needs at least one label to select by")
            continue
        if check_selection and endpoints and not _selects_any(selector, endpoints):
            subsets.report(subset_name, f"subset {fields.quoted(subset_name)} selects none of "
                                        f"the endpoints (no endpoint has the labels "
                                        f"{_shown_labels(selector)})")
        result.append((subset_name, selector))
    return tuple(result)


def _subset_name(value: str) -> str:
    try:
        return fields.name(value)
    except Invalid as problem:  # the name is a key: point at it, not at its selector
        raise Invalid(problem.message, at_key=True) from None


def _selects_any(selector: Labels, endpoints: tuple[Endpoint, ...]) -> bool:
    return any(all(pair in endpoint.labels for pair in selector) for endpoint in endpoints)


def _shown_labels(selector: Labels) -> str:
    return "{" + ", ".join(f"{key}: {value}" for key, value in selector) + "}"


# ---------------------------------------------------------------------------------------------
# Health checking and resilience.


def _health_check(doc: Fields, protocol: str) -> HealthCheck | None:
    check = doc.mapping("health_check", "a mapping such as {http: /healthz}, {tcp: true} "
                                        "or {grpc: true}")
    if check is None:
        return None
    check.check_keys(HEALTH_CHECK_KEYS, "health_check")
    kind = check.exclusive(HEALTH_CHECK_KINDS, required=True, what="a health check")
    path = None
    if kind == "http":
        path = check.get("http", fields.url_path, required=True)
    elif kind is not None:
        check.get(kind, fields.true_only, required=True)
    if kind == "grpc" and protocol not in ("grpc", "http2"):
        # Envoy refuses gRPC health checks on a cluster that does not speak HTTP/2.
        check.report("grpc", f"a gRPC health check needs protocol grpc or http2 (this Service "
                             f"speaks {protocol})", at_value=False)
    statuses = _expected_statuses(check, kind)
    return HealthCheck(
        kind=cast(HealthCheckKind, kind or "http"),
        path=path,
        interval=_or(check.get("interval", _DURATION), 5.0),
        timeout=_or(check.get("timeout", _DURATION), 1.0),
        unhealthy_threshold=_or(check.get("unhealthy_threshold", THRESHOLD), 3),
        healthy_threshold=_or(check.get("healthy_threshold", THRESHOLD), 1),
        expected_statuses=statuses or ((200, 201),),
        no_traffic_interval=check.get("no_traffic_interval", _DURATION),
        unhealthy_interval=check.get("unhealthy_interval", _DURATION),
        origin=check.origin(),
    )


def _expected_statuses(check: Fields, kind: str | None) -> tuple[tuple[int, int], ...]:
    """HTTP status codes counted as healthy: 200, or "200-299" (inclusive), as [start, end)."""
    if "expected_statuses" in check.value and kind != "http":
        check.report("expected_statuses", "expected_statuses applies to http health checks "
                                          "only", at_value=False)
        return ()
    items = check.items("expected_statuses", "status code")
    if items is None:
        return ()
    ranges = [fields.convert_at(check.ctx, item, (*check.path, "expected_statuses", index),
                                _status_range) for index, item in enumerate(items)]
    return tuple(item for item in ranges if item is not None)


_STATUS_TEXT = re.compile(r"([0-9]{3})(?:-([0-9]{3}))?\Z")


def _status_range(value: Any) -> tuple[int, int]:
    """200 or "200" -> (200, 201); "200-299" -> (200, 300)."""
    if isinstance(value, int) and not isinstance(value, bool):
        code = STATUS(value)
        return code, code + 1
    written = _STATUS_TEXT.match(value) if isinstance(value, str) else None
    if written is None:
        shown = fields.quoted(value) if isinstance(value, str) else fields.describe(value)
        raise Invalid(f'expected a status code (200) or a range ("200-299"), found {shown}')
    start = STATUS(int(written.group(1)))
    end = STATUS(int(written.group(2) or written.group(1)))
    if start > end:
        raise Invalid(f"range {fields.quoted(value)} ends before it starts")
    return start, end + 1


def _circuit_breaker(doc: Fields) -> CircuitBreaker | None:
    limits = doc.mapping("circuit_breaker", "a mapping of limits")
    if limits is None:
        return None
    limits.check_keys(CIRCUIT_BREAKER_KEYS, "circuit_breaker")
    values = {key: limits.get(key, fields.UINT32) for key in CIRCUIT_BREAKER_LIMITS}
    budget = limits.mapping("retry_budget", "a mapping such as {percent: 20, min_concurrency: 3}")
    retry_budget = None
    if budget is not None:
        if "max_retries" in limits.value:
            limits.report("retry_budget", 'retry_budget cannot be used together with '
                                          '"max_retries" (a retry budget replaces the fixed '
                                          'limit)', at_value=False)
        budget.check_keys(RETRY_BUDGET_KEYS, "retry_budget")
        retry_budget = RetryBudget(percent=budget.get("percent", _percent_number),
                                   min_concurrency=budget.get("min_concurrency", fields.UINT32))
    return CircuitBreaker(**values, retry_budget=retry_budget, origin=limits.origin())


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"expected a number, found {fields.describe(value)}")
    return float(value)


def _percent_number(value: Any) -> float:
    """A percentage, 0 to 100, decimals allowed (12.5)."""
    number = _number(value)
    if not 0 <= number <= 100:
        raise Invalid(f"must be from 0 to 100, found {value}")
    return number


def _stdev_factor(value: Any) -> float:
    """Envoy keeps the factor in thousandths: 1.9 is 1900."""
    number = _number(value)
    if not 0.001 <= number <= 1_000_000:
        raise Invalid(f"must be from 0.001 to 1000000, found {value}")
    return round(number * 1000) / 1000


def _outlier_detection(doc: Fields) -> OutlierDetection | None:
    detection = doc.mapping("outlier_detection", "a mapping of outlier detection settings")
    if detection is None:
        return None
    detection.check_keys(OUTLIER_DETECTION_KEYS, "outlier_detection")
    return OutlierDetection(
        consecutive_5xx=detection.get("consecutive_5xx", fields.UINT32),
        consecutive_gateway_errors=detection.get("consecutive_gateway_errors", fields.UINT32),
        interval=detection.get("interval", _DURATION),
        base_ejection_time=detection.get("base_ejection_time", _DURATION),
        max_ejection_percent=detection.get("max_ejection_percent", _PERCENT),
        success_rate=_success_rate(detection),
        origin=detection.origin(),
    )


def _success_rate(detection: Fields) -> SuccessRate | None:
    rate = detection.mapping("success_rate", "a mapping such as {minimum_hosts: 5, "
                                             "request_volume: 100, stdev_factor: 1.9}")
    if rate is None:
        return None
    rate.check_keys(SUCCESS_RATE_KEYS, "success_rate")
    return SuccessRate(minimum_hosts=rate.get("minimum_hosts", fields.UINT32),
                       request_volume=rate.get("request_volume", fields.UINT32),
                       stdev_factor=rate.get("stdev_factor", _stdev_factor))


# ---------------------------------------------------------------------------------------------
# Load balancing.


def _load_balancer(doc: Fields) -> tuple[LoadBalancer, LoadBalancerOptions]:
    """`load_balancer: ring_hash`, or `{policy: ring_hash, minimum_ring_size: 1024}`."""
    written = doc.value.get("load_balancer")
    if not isinstance(written, dict):
        return (cast(LoadBalancer, doc.get("load_balancer", _LOAD_BALANCER) or "round_robin"),
                LoadBalancerOptions())
    settings = doc.mapping("load_balancer", "a load balancer")
    assert settings is not None
    settings.check_keys(LOAD_BALANCER_KEYS, "load_balancer")
    policy = cast(LoadBalancer | None, settings.get("policy", _LOAD_BALANCER, required=True))
    for key, owner in LOAD_BALANCER_SETTINGS.items():
        if key in settings.value and policy is not None and policy != owner:
            settings.report(key, f"{key} applies to policy {owner} only (this load balancer "
                                 f"is {policy})", at_value=False)
    minimum = settings.get("minimum_ring_size", _RING_SIZE)
    maximum = settings.get("maximum_ring_size", _RING_SIZE)
    if minimum is not None and maximum is not None and minimum > maximum:
        settings.report("maximum_ring_size", f"must not be smaller than minimum_ring_size "
                                             f"({minimum})")
    options = LoadBalancerOptions(choice_count=settings.get("choice_count", _CHOICE_COUNT),
                                  minimum_ring_size=minimum, maximum_ring_size=maximum,
                                  table_size=settings.get("table_size", _maglev_table_size),
                                  slow_start=parse_slow_start(settings, policy))
    return policy or "round_robin", options


def _maglev_table_size(value: Any) -> int:
    size = fields.integer(2, MAX_MAGLEV_TABLE)(value)
    if not _is_prime(size):
        raise Invalid(f"a Maglev table size must be a prime number (such as 65537 or 5000011), "
                      f"found {size}")
    return size


def _is_prime(number: int) -> bool:
    if number < 2:
        return False
    return all(number % divisor for divisor in range(2, int(number ** 0.5) + 1))
