"""Clusters: one Envoy Cluster per service, and one per service subset a route sends traffic to.

This module owns the mapping of a `Service` to a `Cluster`: discovery type (EDS for static IPs,
STRICT_DNS when any endpoint is a DNS name), connect timeout, load balancer, upstream HTTP
protocol, active health checks, circuit breakers and outlier detection. It must not decide
which clusters a view receives (the views do, from the routes: `gateway.py`, `sidecar.py`) nor
name anything itself (`names.py` does).
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.cluster.v3.circuit_breaker_pb2 import CircuitBreakers
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.cluster.v3.outlier_detection_pb2 import OutlierDetection as EnvoyOutlier
from envoy.config.core.v3.health_check_pb2 import HealthCheck as EnvoyHealthCheck
from envoy.config.core.v3.protocol_pb2 import Http2ProtocolOptions
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from envoy.type.v3.http_pb2 import CodecClientType
from envoy.type.v3.percent_pb2 import Percent
from envoy.type.v3.range_pb2 import Int64Range
from google.protobuf.any_pb2 import Any
from google.protobuf.wrappers_pb2 import UInt32Value, UInt64Value

from meshpilot.ir.model import (
    CircuitBreaker,
    HealthCheck,
    LoadBalancer,
    Locality,
    OutlierDetection,
    Service,
)
from meshpilot.translators import endpoints, names, secrets
from meshpilot.translators.protos import ads_config_source, duration, pack

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

_LB_POLICIES: dict[LoadBalancer, Cluster.LbPolicy.ValueType] = {
    "round_robin": Cluster.ROUND_ROBIN,
    "least_request": Cluster.LEAST_REQUEST,
    "random": Cluster.RANDOM,
    "ring_hash": Cluster.RING_HASH,
    "maglev": Cluster.MAGLEV,
}

# Protocols whose upstream connections must speak HTTP/2 (gRPC is HTTP/2 only).
_HTTP2_PROTOCOLS = frozenset({"http2", "grpc"})

# Outlier detection ejects on gateway errors only when told to enforce it (Envoy's default
# enforcement for that detector is 0%, i.e. stats only): a policy that asks for it means it.
_ENFORCE_FULLY = 100


def uses_dns(service: Service) -> bool:
    """Whether Envoy resolves the service's endpoints itself. Decided per service, not per
    subset, so a service's clusters all have the same type."""
    return any(endpoint.is_dns for endpoint in service.endpoints)


def cluster(service: Service, subset: str | None = None, tls_owner: str | None = None,
            locality_weights: Mapping[Locality, int] | None = None) -> Cluster:
    """The cluster of the whole service, or of one subset (only that subset's endpoints).
    `tls_owner`: whose CA Secret its upstream TLS names (a subset with TLS settings of its
    own: the subset's cluster name; by default the service's). `locality_weights`: each
    locality's share for one caller (`locality.py`)."""
    name = names.cluster(service.name, subset)
    result = Cluster(name=name, connect_timeout=duration(service.connect_timeout),
                     lb_policy=_LB_POLICIES[service.load_balancer])
    _load_balancer_options(result, service)
    if service.zone_weights or locality_weights is not None:
        result.common_lb_config.locality_weighted_lb_config.SetInParent()
    if uses_dns(service):
        result.type = Cluster.STRICT_DNS
        result.dns_lookup_family = Cluster.V4_PREFERRED
        result.load_assignment.CopyFrom(
            endpoints.load_assignment(name, service.endpoints_of(subset),
                                      dict(service.zone_weights), locality_weights))
    else:
        # EDS over ADS: an endpoint change is then an EDS-only push, the cluster (and its
        # connection pools and health state) is left alone.
        result.type = Cluster.EDS
        result.eds_cluster_config.eds_config.CopyFrom(ads_config_source())
        result.eds_cluster_config.service_name = names.eds_service(name)
    protocol_options = _http_protocol_options(service)
    if protocol_options is not None:
        result.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(protocol_options)
    if service.tcp_keepalive is not None:
        keepalive = result.upstream_connection_options.tcp_keepalive
        keepalive.SetInParent()
        if service.tcp_keepalive.probes is not None:
            keepalive.keepalive_probes.value = service.tcp_keepalive.probes
        if service.tcp_keepalive.time is not None:
            keepalive.keepalive_time.value = int(service.tcp_keepalive.time)
        if service.tcp_keepalive.interval is not None:
            keepalive.keepalive_interval.value = int(service.tcp_keepalive.interval)
    if service.panic_threshold is not None:
        result.common_lb_config.healthy_panic_threshold.CopyFrom(
            Percent(value=service.panic_threshold))
    if service.health_check is not None:
        result.health_checks.append(health_check(service.health_check, service))
    if service.circuit_breaker is not None:
        result.circuit_breakers.CopyFrom(circuit_breakers(service.circuit_breaker))
    if service.outlier_detection is not None:
        result.outlier_detection.CopyFrom(outlier_detection(service.outlier_detection))
    if service.tls is not None:
        # TLS to the endpoints; the trusted CA is an SDS Secret (secrets.py), not inline.
        result.transport_socket.CopyFrom(secrets.upstream_transport_socket(service, tls_owner))
    return result


def _load_balancer_options(result: Cluster, service: Service) -> None:
    """The chosen load balancer's settings (the loader allows each only with its policy)."""
    options = service.load_balancer_options
    if options.choice_count is not None:
        result.least_request_lb_config.choice_count.CopyFrom(
            UInt32Value(value=options.choice_count))
    if options.minimum_ring_size is not None:
        result.ring_hash_lb_config.minimum_ring_size.CopyFrom(
            UInt64Value(value=options.minimum_ring_size))
    if options.maximum_ring_size is not None:
        result.ring_hash_lb_config.maximum_ring_size.CopyFrom(
            UInt64Value(value=options.maximum_ring_size))
    if options.table_size is not None:
        result.maglev_lb_config.table_size.CopyFrom(UInt64Value(value=options.table_size))
    if options.slow_start is not None:
        config = (result.least_request_lb_config if service.load_balancer == "least_request"
                  else result.round_robin_lb_config).slow_start_config
        config.slow_start_window.CopyFrom(duration(options.slow_start.window))
        # A fixed value: the runtime key is only where Envoy would look for an override.
        config.aggression.default_value = options.slow_start.aggression
        config.aggression.runtime_key = f"meshpilot.slow_start.{service.name}.aggression"
        config.min_weight_percent.value = options.slow_start.min_weight_percent


def health_check(check: HealthCheck, service: Service) -> EnvoyHealthCheck:
    result = EnvoyHealthCheck(
        interval=duration(check.interval),
        timeout=duration(check.timeout),
        unhealthy_threshold=UInt32Value(value=check.unhealthy_threshold),
        healthy_threshold=UInt32Value(value=check.healthy_threshold),
        # Envoy's default is 60s for a cluster no request has used yet: an endpoint that is down
        # would then be found out only a minute after the first request. Check at the interval.
        no_traffic_interval=duration(check.no_traffic_interval or check.interval),
    )
    if check.unhealthy_interval is not None:
        result.unhealthy_interval.CopyFrom(duration(check.unhealthy_interval))
    http2 = service.protocol in _HTTP2_PROTOCOLS
    if check.kind == "http":
        http = result.http_health_check
        # Envoy's default Host/authority is the cluster name, which for a subset ("reviews/v2")
        # is no valid authority: send the service's name instead.
        http.host = service.name
        http.path = check.path or "/"
        http.expected_statuses.extend(Int64Range(start=start, end=end)
                                      for start, end in check.expected_statuses)
        if http2:
            http.codec_client_type = CodecClientType.HTTP2
    elif check.kind == "grpc":
        result.grpc_health_check.authority = service.name
    else:
        # An empty TCP check is a connect-only check: healthy when the connection opens.
        result.tcp_health_check.SetInParent()
    return result


def circuit_breakers(breaker: CircuitBreaker) -> CircuitBreakers:
    """The DEFAULT-priority thresholds; a limit left out keeps Envoy's default (1024, 3 retries)."""
    thresholds = CircuitBreakers.Thresholds()
    for field in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
        value = getattr(breaker, field)
        if value is not None:
            getattr(thresholds, field).CopyFrom(UInt32Value(value=value))
    budget = breaker.retry_budget
    if budget is not None:
        # Present even when empty: that alone turns the budget on (20%, at least 3 retries).
        thresholds.retry_budget.SetInParent()
        if budget.percent is not None:
            thresholds.retry_budget.budget_percent.CopyFrom(Percent(value=budget.percent))
        if budget.min_concurrency is not None:
            thresholds.retry_budget.min_retry_concurrency.CopyFrom(
                UInt32Value(value=budget.min_concurrency))
    return CircuitBreakers(thresholds=[thresholds])


def outlier_detection(outlier: OutlierDetection) -> EnvoyOutlier:
    result = EnvoyOutlier()
    if outlier.consecutive_5xx is not None:
        result.consecutive_5xx.CopyFrom(UInt32Value(value=outlier.consecutive_5xx))
    if outlier.consecutive_gateway_errors is not None:
        result.consecutive_gateway_failure.CopyFrom(
            UInt32Value(value=outlier.consecutive_gateway_errors))
        result.enforcing_consecutive_gateway_failure.CopyFrom(UInt32Value(value=_ENFORCE_FULLY))
    if outlier.interval is not None:
        result.interval.CopyFrom(duration(outlier.interval))
    if outlier.base_ejection_time is not None:
        result.base_ejection_time.CopyFrom(duration(outlier.base_ejection_time))
    if outlier.max_ejection_percent is not None:
        result.max_ejection_percent.CopyFrom(UInt32Value(value=outlier.max_ejection_percent))
    rate = outlier.success_rate
    if rate is not None:
        if rate.minimum_hosts is not None:
            result.success_rate_minimum_hosts.CopyFrom(UInt32Value(value=rate.minimum_hosts))
        if rate.request_volume is not None:
            result.success_rate_request_volume.CopyFrom(UInt32Value(value=rate.request_volume))
        if rate.stdev_factor is not None:
            # Envoy reads the factor in thousandths: 1900 is 1.9.
            result.success_rate_stdev_factor.CopyFrom(
                UInt32Value(value=round(rate.stdev_factor * 1000)))
        # Envoy's default, written out: a policy that configures the detector means it.
        result.enforcing_success_rate.CopyFrom(UInt32Value(value=_ENFORCE_FULLY))
    # Even empty, the message turns outlier detection on with Envoy's defaults (5 consecutive
    # 5xx), which is what a bare `outlier_detection: {}` in the policy asks for: the caller sets
    # it with CopyFrom, which marks it present.
    return result


def _http_protocol_options(service: Service) -> Any | None:
    """The upstream HTTP protocol options: HTTP/2 for http2 and grpc Services, and the
    connections' limits (ended after a number of requests, spreading load over endpoints and
    renewing TLS sessions; after idling or living so long; streams per h2 connection). None
    when Envoy's defaults (HTTP/1.1, no limits) are all there is to say."""
    if service.protocol == "tcp":
        return None
    http2 = service.protocol in _HTTP2_PROTOCOLS
    limits = (service.max_requests_per_connection, service.connection_idle_timeout,
              service.max_connection_duration)
    if not http2 and all(limit is None for limit in limits):
        return None
    options = HttpProtocolOptions()
    if http2:
        options.explicit_http_config.http2_protocol_options.CopyFrom(Http2ProtocolOptions())
        if service.max_concurrent_streams is not None:
            options.explicit_http_config.http2_protocol_options.max_concurrent_streams.value = \
                service.max_concurrent_streams
    else:
        options.explicit_http_config.http_protocol_options.SetInParent()
    common = options.common_http_protocol_options
    if service.max_requests_per_connection is not None:
        common.max_requests_per_connection.value = service.max_requests_per_connection
    if service.connection_idle_timeout is not None:
        common.idle_timeout.CopyFrom(duration(service.connection_idle_timeout))
    if service.max_connection_duration is not None:
        common.max_connection_duration.CopyFrom(duration(service.max_connection_duration))
    return pack(options)

