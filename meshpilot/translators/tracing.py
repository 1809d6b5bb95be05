"""Tracing: a gateway listener's `tracing` as its HTTP connection manager's tracer.

This module owns one HttpConnectionManager field, `tracing`: the provider (Envoy's
OpenTelemetry tracer exporting OTLP over gRPC, or its Zipkin tracer posting JSON v2 spans), the
collector it exports to (a Service's whole-service cluster, which the gateway's view receives:
`gateway.py` asks `collector`), and random sampling. Envoy then starts a trace for a request
without one, continues one the request carries (W3C `traceparent` for OpenTelemetry, B3
`x-b3-*` for Zipkin), and propagates it to the upstream in the same headers.

It is not an HTTP filter (no entry in `httpfilters.ORDER`): tracing is the connection manager's.
"""

from __future__ import annotations

from envoy.config.core.v3.grpc_service_pb2 import GrpcService
from envoy.config.trace.v3.http_tracer_pb2 import Tracing as HttpTracer
from envoy.config.trace.v3.opentelemetry_pb2 import OpenTelemetryConfig
from envoy.config.trace.v3.zipkin_pb2 import ZipkinConfig
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.type.v3.percent_pb2 import Percent

from meshpilot.ir.model import Tracing
from meshpilot.translators import names
from meshpilot.translators.protos import pack

OPENTELEMETRY = "envoy.tracers.opentelemetry"
ZIPKIN = "envoy.tracers.zipkin"


def collector(spec: Tracing | None) -> str | None:
    """The Service whose cluster the tracer exports to."""
    return spec.collector if spec is not None else None


def apply(manager: hcm.HttpConnectionManager, gateway: str, spec: Tracing) -> None:
    """Trace `manager`'s requests as `spec` says; spans carry `gateway` as their service name
    unless `spec` names another (OpenTelemetry only)."""
    cluster = names.cluster(spec.collector)
    if spec.provider == "opentelemetry":
        service_name = spec.service_name or gateway
        provider = HttpTracer.Http(name=OPENTELEMETRY, typed_config=pack(OpenTelemetryConfig(
            grpc_service=GrpcService(envoy_grpc=GrpcService.EnvoyGrpc(cluster_name=cluster)),
            service_name=service_name)))
    else:
        config = ZipkinConfig(collector_cluster=cluster, collector_endpoint=spec.path,
                              collector_endpoint_version=ZipkinConfig.HTTP_JSON,
                              trace_id_128bit=True)
        provider = HttpTracer.Http(name=ZIPKIN, typed_config=pack(config))
    # (Envoy's Zipkin tracer names the spans' service after the node's cluster: the view,
    # which is the gateway's name; it has no setting for another.)
    manager.tracing.provider.CopyFrom(provider)
    manager.tracing.random_sampling.CopyFrom(Percent(value=spec.sampling))
