"""What one Envoy's stats flush costs meshpilot's metrics service: parsing the message and
keeping the request counters (`EnvoyMetrics.receive`), for Envoys with 10 to 2,000 clusters.

    .venv/bin/python -m benchmarks.metrics_flush [--clusters 10,100,1000,2000] [--runs 30]

A flush is made as Envoy 1.40's `envoy.stat_sinks.metrics_service` sends one with
`emit_tags_as_labels: true` (what `meshpilot bootstrap` sets): per cluster, the 40 used
counters and gauges an EDS cluster with traffic has (`cluster.upstream_rq_total`,
`cluster.upstream_rq_xx` per code class, `cluster.upstream_cx_*`, `membership_*`, ...), each
family holding one metric per cluster; two HTTP connection managers with their 20 families each.
CPU time of this process (`time.process_time`), median of `--runs` flushes, after a warm-up;
the fleet's cost is that times Envoys / flush interval.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from envoy.config.core.v3 import base_pb2

from meshpilot.runtime.envoy_metrics import EnvoyMetrics
from meshpilot.xds.metrics_protos import COUNTER, GAUGE, StreamMetricsMessage

CLUSTER_COUNTERS = [
    "upstream_rq_total", "upstream_rq_completed", "upstream_cx_total", "upstream_cx_http1_total",
    "upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total", "upstream_rq_pending_total",
    "membership_change", "update_attempt", "update_success", "update_no_rebuild",
    "upstream_cx_destroy", "upstream_cx_destroy_local", "upstream_cx_destroy_remote",
    "upstream_cx_connect_fail", "upstream_rq_retry", "lb_healthy_panic", "assignment_stale",
    "internal.upstream_rq_completed", "default.total_match_count", "upstream_rq_timeout",
    "upstream_cx_close_notify", "upstream_rq_per_try_timeout", "upstream_flow_control_paused",
]
CLUSTER_GAUGES = [
    "membership_total", "membership_healthy", "membership_degraded", "membership_excluded",
    "upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active",
    "circuit_breakers.default.cx_open", "circuit_breakers.default.rq_open",
    "circuit_breakers.default.rq_pending_open", "circuit_breakers.default.cx_pool_open",
    "upstream_cx_rx_bytes_buffered", "upstream_cx_tx_bytes_buffered", "warming_state",
]
HTTP_COUNTERS = [
    "downstream_rq_total", "downstream_cx_total", "downstream_cx_http1_total",
    "downstream_cx_destroy", "downstream_cx_rx_bytes_total", "downstream_cx_tx_bytes_total",
    "downstream_rq_http1_total", "downstream_rq_completed", "rq_total", "no_route",
    "downstream_cx_destroy_remote", "downstream_rq_timeout", "downstream_cx_delayed_close_timeout",
    "rs_too_large", "downstream_flow_control_paused_reading_total",
]
HTTP_GAUGES = ["downstream_cx_active", "downstream_rq_active", "downstream_cx_http1_active",
               "downstream_cx_rx_bytes_buffered", "downstream_cx_tx_bytes_buffered"]


def flush(clusters: int, scale: float, node: bool) -> bytes:
    message = StreamMetricsMessage()
    if node:
        message.identifier.node.id = "edge-1"
        message.identifier.node.cluster = "edge"

    def family(name: str, kind: int, scope_label: str, scopes: list[str],
               extra: tuple[str, str] | None = None) -> None:
        f = message.envoy_metrics.add(name=name, type=kind)
        for i, scope in enumerate(scopes):
            metric = f.metric.add()
            metric.label.add(name=scope_label, value=scope)
            if extra is not None:
                metric.label.add(name=extra[0], value=extra[1])
            if kind == COUNTER:
                metric.counter.value = (i + 1) * scale
            else:
                metric.gauge.value = i

    names = [f"service-{i}" for i in range(clusters)]
    for name in CLUSTER_COUNTERS:
        family(f"cluster.{name}", COUNTER, "envoy.cluster_name", names)
    for code in ("2", "5"):
        family("cluster.upstream_rq_xx", COUNTER, "envoy.cluster_name", names,
               ("envoy.response_code_class", code))
    for name in CLUSTER_GAUGES:
        family(f"cluster.{name}", GAUGE, "envoy.cluster_name", names)
    prefixes = ["ingress", "admin"]
    for name in HTTP_COUNTERS:
        family(f"http.{name}", COUNTER, "envoy.http_conn_manager_prefix", prefixes)
    for code in ("2", "5"):
        family("http.downstream_rq_xx", COUNTER, "envoy.http_conn_manager_prefix", prefixes,
               ("envoy.response_code_class", code))
    for name in HTTP_GAUGES:
        family(f"http.{name}", GAUGE, "envoy.http_conn_manager_prefix", prefixes)
    return message.SerializeToString()  # type: ignore[no-any-return]


def measure(clusters: int, runs: int) -> dict[str, Any]:
    store = EnvoyMetrics()
    node = base_pb2.Node(id="edge-1", cluster="edge")
    payloads = [flush(clusters, 1.0 + i, node=i == 0) for i in range(runs + 3)]
    seconds = []
    for i, payload in enumerate(payloads):
        started = time.process_time()
        store.receive(1, node, "edge", StreamMetricsMessage.FromString(payload), float(i))
        seconds.append(time.process_time() - started)
    kept = seconds[3:]  # after a warm-up
    return {"clusters": clusters, "bytes": len(payloads[-1]),
            "metrics": sum(len(f.metric) for f in
                           StreamMetricsMessage.FromString(payloads[-1]).envoy_metrics),
            "median_ms": statistics.median(kept) * 1000, "min_ms": min(kept) * 1000,
            "max_ms": max(kept) * 1000, "runs": len(kept)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", default="10,100,1000,2000")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    rows = [measure(int(n), args.runs) for n in args.clusters.split(",")]
    print(json.dumps(rows, indent=2))
    print(f"{'clusters':>8} {'bytes':>10} {'metrics':>8} {'median ms':>10} {'min':>7} {'max':>7}")
    for row in rows:
        print(f"{row['clusters']:>8} {row['bytes']:>10} {row['metrics']:>8} "
              f"{row['median_ms']:>10.2f} {row['min_ms']:>7.2f} {row['max_ms']:>7.2f}")


if __name__ == "__main__":
    main()
