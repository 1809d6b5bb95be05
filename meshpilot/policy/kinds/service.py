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
    endpoints:                           # host:port, or {address, labels, weight}
      - 10.0.0.1:9080
      - {address: reviews-v2.internal:9080, labels: {version: v2}, weight: 10}
    subsets: {v2: {version: v2}}         # name -> label selector
    load_balancer: round_robin           # round_robin | least_request | random | ring_hash | maglev
    health_check: {http: /healthz, interval: 5s, timeout: 1s, unhealthy_threshold: 3,
                   healthy_threshold: 1, expected_statuses: [200, "200-299"]}
                                         # or {tcp: true} or {grpc: true}
    circuit_breaker: {max_connections: 1000, max_pending_requests: 100, max_requests: 1000,
                      max_retries: 3}
    outlier_detection: {consecutive_5xx: 5, consecutive_gateway_errors: 5, interval: 10s,
                        base_ejection_time: 30s, max_ejection_percent: 10}
    connect_timeout: 1s                  # default 1s
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from meshpilot.policy import fields
from meshpilot.policy.fields import (
    Fields,
    Invalid,
    issue_count,
    reported_since,
    written_before,
)
from meshpilot.policy.model import (
    CircuitBreaker,
    Endpoint,
    HealthCheck,
    Labels,
    LoadBalancer,
    OutlierDetection,
    Protocol,
    Service,
)
from meshpilot.policy.yamlsource import FieldPath, Located

if TYPE_CHECKING:
    from meshpilot.policy.loader import DocumentContext

KIND = "Service"

PROTOCOLS: tuple[Protocol, ...] = ("http", "http2", "grpc", "tcp")
LOAD_BALANCERS: tuple[LoadBalancer, ...] = ("round_robin", "least_request", "random",
                                            "ring_hash", "maglev")
HealthCheckKind = Literal["http", "tcp", "grpc"]
HEALTH_CHECK_KINDS: tuple[HealthCheckKind, ...] = ("http", "tcp", "grpc")

SERVICE_KEYS = ("kind", "name", "protocol", "endpoints", "subsets", "load_balancer",
                "health_check", "circuit_breaker", "outlier_detection", "connect_timeout")
ENDPOINT_KEYS = ("address", "labels", "weight")
HEALTH_CHECK_KEYS = (*HEALTH_CHECK_KINDS, "interval", "timeout", "unhealthy_threshold",
                     "healthy_threshold", "expected_statuses")
CIRCUIT_BREAKER_KEYS = ("max_connections", "max_pending_requests", "max_requests",
                        "max_retries")
OUTLIER_DETECTION_KEYS = ("consecutive_5xx", "consecutive_gateway_errors", "interval",
                          "base_ejection_time", "max_ejection_percent")

ENDPOINT_WEIGHT = fields.integer(1, 128)  # the model's documented range
THRESHOLD = fields.integer(1, 1_000_000)
STATUS = fields.integer(100, 599)  # Envoy's expected_statuses allow [100, 600)

_PROTOCOL = fields.choice(PROTOCOLS)
_LOAD_BALANCER = fields.choice(LOAD_BALANCERS)
_DURATION = fields.duration()
_PERCENT = fields.integer(0, 100)


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
    service = Service(
        name=name or "",
        position=document.position,
        protocol=cast(Protocol, protocol),
        endpoints=endpoints,
        subsets=subsets,
        load_balancer=cast(LoadBalancer, doc.get("load_balancer", _LOAD_BALANCER)
                           or "round_robin"),
        connect_timeout=_or(doc.get("connect_timeout", _DURATION), 1.0),
        health_check=_health_check(doc, protocol),
        circuit_breaker=_circuit_breaker(doc),
        outlier_detection=_outlier_detection(doc),
    )
    return [] if reported_since(ctx, mark) or name is None else [service]


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
    return tuple(endpoints)


def _shown_address(endpoint: Endpoint) -> str:
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"{host}:{endpoint.port}"


def _endpoint(ctx: DocumentContext, item: Any, path: FieldPath) -> Endpoint | None:
    """An endpoint written as `host:port`, or as a mapping with `address`."""
    if isinstance(item, str):
        address = fields.convert_at(ctx, item, path, fields.address)
        return None if address is None else Endpoint(host=address[0], port=address[1])
    entry = Fields.at(ctx, item, path, "host:port or a mapping {address: host:port, ...}")
    if entry is None:
        return None
    entry.check_keys(ENDPOINT_KEYS, "an endpoint")
    address = entry.get("address", fields.address, required=True)
    endpoint_labels = entry.get("labels", fields.labels) or ()
    weight = entry.get("weight", ENDPOINT_WEIGHT)
    if address is None:
        return None
    return Endpoint(host=address[0], port=address[1], labels=endpoint_labels, weight=weight)


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
    return CircuitBreaker(**{key: limits.get(key, fields.UINT32)
                             for key in CIRCUIT_BREAKER_KEYS})


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
    )
