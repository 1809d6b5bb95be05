"""Tracing end to end (docs/policy.md, Gateway: tracing): a real Envoy gateway traces requests
to an OpenTelemetry collector (OTLP over gRPC) and a Zipkin collector (JSON over HTTP), both
loopback servers of this test; the backend sees the trace headers, and the spans that arrive
carry the same trace ids and the gateway's service name. Sampling 0 propagates a not-sampled
trace and exports nothing for it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from support import ZipkinCollector, eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: otel
protocol: grpc
endpoints: ["127.0.0.1:{otel}"]
---
kind: Service
name: zipkin
endpoints: ["127.0.0.1:{zipkin}"]
---
kind: Service
name: shop
endpoints: ["127.0.0.1:{shop}"]
---
kind: Gateway
name: edge
tracing: {{provider: opentelemetry, collector: otel, service_name: shop-edge}}
listeners:
  - {{name: otel, port: {otel_port}, address: 127.0.0.1}}
  - {{name: unsampled, port: {unsampled_port}, address: 127.0.0.1,
     tracing: {{provider: opentelemetry, collector: otel, sampling: 0}}}}
  - {{name: zipkin, port: {zipkin_port}, address: 127.0.0.1,
     tracing: {{provider: zipkin, collector: zipkin}}}}
---
kind: Route
name: shop
gateway: edge
rules:
  - backends: [{{service: shop}}]
"""

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


# ---- a minimal protobuf reader: OTLP without its generated code -----------------------------


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def fields_of(data: bytes) -> list[tuple[int, Any]]:
    """(field number, value) of one protobuf message: ints for varints, bytes otherwise."""
    out: list[tuple[int, Any]] = []
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 2:
            length, at = _varint(data, at)
            value, at = data[at:at + length], at + length
        elif wire == 1:
            value, at = data[at:at + 8], at + 8
        elif wire == 5:
            value, at = data[at:at + 4], at + 4
        else:
            raise ValueError(f"wire type {wire}")
        out.append((number, value))
    return out


def otlp_spans(request: bytes) -> list[dict[str, Any]]:
    """The spans of an ExportTraceServiceRequest: trace id (hex), name, service.name."""
    spans = []
    for number, resource_spans in fields_of(request):
        if number != 1:
            continue
        service = None
        parts = fields_of(resource_spans)
        for part_number, part in parts:
            if part_number == 1:  # Resource: attributes (KeyValue = 1 key, 2 AnyValue)
                for attribute_number, attribute in fields_of(part):
                    if attribute_number != 1:
                        continue
                    kv = dict(fields_of(attribute))
                    if kv.get(1) == b"service.name":
                        service = dict(fields_of(kv[2])).get(1, b"").decode()
        for part_number, part in parts:
            if part_number != 2:  # ScopeSpans: 2 = spans
                continue
            for span_number, span in fields_of(part):
                if span_number == 2:
                    values = dict(fields_of(span))
                    spans.append({"trace_id": values[1].hex(),
                                  "name": values.get(5, b"").decode(), "service": service})
    return spans


class OtlpCollector:
    """An OTLP/gRPC trace collector on loopback: records every span exported to it."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server: grpc.Server | None = None

    def _export(self, request: bytes, context: Any) -> bytes:
        with self.lock:
            self.spans.extend(otlp_spans(request))
        return b""  # an empty ExportTraceServiceResponse

    def start(self) -> int:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(self._export)
        service, method = EXPORT[1:].split("/")
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {method: handler}),))
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        return port

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0)

    def trace_ids(self) -> set[str]:
        with self.lock:
            return {span["trace_id"] for span in self.spans}


class Tracing:
    def __init__(self, served: Any, otel: OtlpCollector, zipkin: ZipkinCollector):
        self.ports, self.otel, self.zipkin, self.envoy = served.ports, otel, zipkin, served.envoy

    def get(self, listener: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        status, _, body = http_get(f"http://127.0.0.1:{self.ports[listener + '_port']}/t",
                                   headers or {})
        assert status == 200, body[:300]
        return json.loads(body)["headers"]


@pytest.fixture(scope="module")
def tracing(tmp_path_factory) -> Iterator[Tracing]:
    work = tmp_path_factory.mktemp("tracing-e2e")
    otel, zipkin = OtlpCollector(), ZipkinCollector()
    servers = {"otel": otel, "zipkin": zipkin, "shop": EchoServer("shop")}
    with served_policy(work, "tracing.yaml", POLICY, servers,
                       free_ports=("otel_port", "unsampled_port", "zipkin_port")) as served:
        environment = Tracing(served, otel, zipkin)
        eventually(lambda: http_get(f"http://127.0.0.1:{served.ports['otel_port']}/")[0] == 200,
                   timeout=20, what="the gateway to serve")
        yield environment


def test_opentelemetry_spans_reach_the_collector_and_the_context_the_backend(tracing) -> None:
    seen = tracing.get("otel")
    version, trace_id, span_id, flags = seen["traceparent"].split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16
    assert flags == "01"  # sampled
    eventually(lambda: trace_id in tracing.otel.trace_ids(), timeout=20,
               what="the request's span at the OTLP collector")
    span = next(s for s in tracing.otel.spans if s["trace_id"] == trace_id)
    assert span["service"] == "shop-edge"  # service_name from the policy
    # A trace the client started is continued, not replaced.
    mine = "0af7651916cd43dd8448eb211c80319c"
    seen = tracing.get("otel", {"traceparent": f"00-{mine}-b7ad6b7169203331-01"})
    assert seen["traceparent"].split("-")[1] == mine
    eventually(lambda: mine in tracing.otel.trace_ids(), timeout=20,
               what="the continued trace's span at the collector")


def test_sampling_zero_propagates_a_trace_that_is_not_exported(tracing) -> None:
    unsampled = tracing.get("unsampled")["traceparent"].split("-")
    assert unsampled[3] == "00" and len(unsampled[1]) == 32  # propagated, not sampled
    # Exported spans are flushed in order: once a later sampled request's span arrived, the
    # unsampled one would have too, had it been exported.
    sampled = tracing.get("otel")["traceparent"].split("-")[1]
    eventually(lambda: sampled in tracing.otel.trace_ids(), timeout=20,
               what="the sampled request's span")
    assert unsampled[1] not in tracing.otel.trace_ids()


def test_zipkin_spans_and_b3_headers(tracing) -> None:
    seen = tracing.get("zipkin")
    trace_id = seen["x-b3-traceid"]
    assert len(trace_id) == 32 and seen["x-b3-sampled"] == "1" and seen["x-b3-spanid"]
    eventually(lambda: any(s["traceId"] == trace_id for s in tracing.zipkin.spans), timeout=20,
               what="the request's span at the Zipkin collector")
    span = next(s for s in tracing.zipkin.spans if s["traceId"] == trace_id)
    assert span["localEndpoint"]["serviceName"] == "edge"  # the node's cluster
    assert span["kind"] == "SERVER"
