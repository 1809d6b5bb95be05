"""The messages of Envoy's metrics service (`envoy.service.metrics.v3.MetricsService`), which the
`xds-protos` package leaves out (it would need Prometheus' `io.prometheus.client` protos).

They are declared here from the upstream `.proto` files, field numbers as upstream, and added to
protobuf's default descriptor pool, so they parse on the same upb runtime as every other
message. Only the fields meshpilot reads are declared: anything else an Envoy sends (exemplars,
native histograms, timestamps) is kept as unknown fields and ignored.

- `io/prometheus/client/metrics.proto` (prometheus/client_model): LabelPair, Gauge, Counter,
  Untyped, Summary, Histogram, Bucket, Metric, MetricFamily, MetricType;
- `envoy/service/metrics/v3/metrics_service.proto` (envoyproxy/envoy): StreamMetricsMessage
  (with its Identifier, the node, sent on the first message of a stream only) and
  StreamMetricsResponse (empty: the call is client-streaming).
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2  # the Node message, in the default pool
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "envoy.service.metrics.v3.MetricsService"
METHOD = "StreamMetrics"

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED


def _field(name: str, number: int, kind: int, label: int = _OPTIONAL,
           type_name: str | None = None) -> _F:
    out = _F(name=name, number=number, type=kind, label=label)  # type: ignore[arg-type]
    if type_name is not None:
        out.type_name = type_name
    return out


def _message(name: str, *fields: _F) -> descriptor_pb2.DescriptorProto:
    out = descriptor_pb2.DescriptorProto(name=name)
    out.field.extend(fields)
    return out


def _prometheus() -> descriptor_pb2.FileDescriptorProto:
    p = ".io.prometheus.client."
    file = descriptor_pb2.FileDescriptorProto(
        name="io/prometheus/client/metrics.proto", package="io.prometheus.client",
        syntax="proto2")
    kind = descriptor_pb2.EnumDescriptorProto(name="MetricType")
    for number, name in enumerate(("COUNTER", "GAUGE", "SUMMARY", "UNTYPED", "HISTOGRAM",
                                   "GAUGE_HISTOGRAM")):
        kind.value.add(name=name, number=number)
    file.enum_type.append(kind)
    double, string, uint64, message = _F.TYPE_DOUBLE, _F.TYPE_STRING, _F.TYPE_UINT64, \
        _F.TYPE_MESSAGE
    file.message_type.extend([
        _message("LabelPair", _field("name", 1, string), _field("value", 2, string)),
        _message("Gauge", _field("value", 1, double)),
        _message("Counter", _field("value", 1, double)),
        _message("Quantile", _field("quantile", 1, double), _field("value", 2, double)),
        _message("Summary", _field("sample_count", 1, uint64), _field("sample_sum", 2, double),
                 _field("quantile", 3, message, _REPEATED, p + "Quantile")),
        _message("Untyped", _field("value", 1, double)),
        _message("Bucket", _field("cumulative_count", 1, uint64),
                 _field("upper_bound", 2, double)),
        _message("Histogram", _field("sample_count", 1, uint64),
                 _field("sample_sum", 2, double),
                 _field("bucket", 3, message, _REPEATED, p + "Bucket")),
        _message("Metric", _field("label", 1, message, _REPEATED, p + "LabelPair"),
                 _field("gauge", 2, message, type_name=p + "Gauge"),
                 _field("counter", 3, message, type_name=p + "Counter"),
                 _field("summary", 4, message, type_name=p + "Summary"),
                 _field("untyped", 5, message, type_name=p + "Untyped"),
                 _field("timestamp_ms", 6, _F.TYPE_INT64),
                 _field("histogram", 7, message, type_name=p + "Histogram")),
        _message("MetricFamily", _field("name", 1, string), _field("help", 2, string),
                 _field("type", 3, _F.TYPE_ENUM, type_name=p + "MetricType"),
                 _field("metric", 4, message, _REPEATED, p + "Metric")),
    ])
    return file


def _service() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="envoy/service/metrics/v3/metrics_service.proto",
        package="envoy.service.metrics.v3", syntax="proto3",
        dependency=["io/prometheus/client/metrics.proto", base_pb2.DESCRIPTOR.name])
    stream = _message(
        "StreamMetricsMessage",
        _field("identifier", 1, _F.TYPE_MESSAGE,
               type_name=".envoy.service.metrics.v3.StreamMetricsMessage.Identifier"),
        _field("envoy_metrics", 2, _F.TYPE_MESSAGE, _REPEATED,
               ".io.prometheus.client.MetricFamily"))
    stream.nested_type.append(_message(
        "Identifier", _field("node", 1, _F.TYPE_MESSAGE, type_name=".envoy.config.core.v3.Node")))
    file.message_type.extend([stream, _message("StreamMetricsResponse")])
    return file


def _classes() -> tuple[Any, Any, Any]:
    pool = descriptor_pool.Default()
    for file in (_prometheus(), _service()):
        try:
            pool.FindFileByName(file.name)
        except KeyError:  # not declared by anyone else in this process: ours
            pool.Add(file)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("envoy.service.metrics.v3.StreamMetricsMessage")),
            get(pool.FindMessageTypeByName("envoy.service.metrics.v3.StreamMetricsResponse")),
            get(pool.FindMessageTypeByName("io.prometheus.client.MetricFamily")))


StreamMetricsMessage, StreamMetricsResponse, MetricFamily = _classes()

# MetricType values
COUNTER, GAUGE, SUMMARY, UNTYPED, HISTOGRAM = 0, 1, 2, 3, 4
