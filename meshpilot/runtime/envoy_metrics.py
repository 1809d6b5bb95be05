"""What the Envoys' own stats say about their traffic, from the metrics service (xds/
metrics_service.py): per Envoy, the request counters that matter, and rates derived from
successive flushes.

Kept per Envoy (its node id), for the downstream total (every HTTP connection manager but
Envoy's admin) and per upstream cluster: requests (`downstream_rq_total`, `upstream_rq_total`)
and 5xx answers (`downstream_rq_5xx`, `upstream_rq_5xx`). Envoy names them either with its tags
as labels (`emit_tags_as_labels: true`, what `meshpilot bootstrap` sets: `cluster.upstream_rq_xx`
with `envoy.cluster_name` and `envoy.response_code_class`) or flat (`cluster.NAME.upstream_rq_5xx`);
both are read. Everything else a flush carries is skipped.

Counters are cumulative (the sink's default); a counter that went down means the Envoy
restarted, and its new value is the increase. Memory is bounded: at most `max_clusters` clusters
per Envoy, and an Envoy is forgotten when its last metrics stream closes. Everything here runs on
the event loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meshpilot.xds.metrics_protos import COUNTER, UNTYPED

DOWNSTREAM = ""  # the "cluster" of an Envoy's downstream total
_ADMIN_PREFIX = "admin"
_FLAT = re.compile(r"^(cluster|http)\.(.+)\.(upstream|downstream)_rq_(total|5xx)$")


@dataclass(frozen=True, slots=True)
class Sample:
    """Cumulative counts of one Envoy (downstream total, or one upstream cluster) at a flush."""

    requests: float
    errors: float  # 5xx
    at: float


@dataclass
class EnvoyCounters:
    node: str
    view: str
    streams: set[int] = field(default_factory=set)
    current: dict[str, Sample] = field(default_factory=dict)  # cluster ("" downstream) -> newest
    previous: dict[str, Sample] = field(default_factory=dict)  # the flush before
    raw: dict[str, tuple[float, float]] = field(default_factory=dict)  # as the Envoy said
    offset: dict[str, tuple[float, float]] = field(default_factory=dict)  # before a restart
    flushes: int = 0
    updated: float = 0.0


# Envoy 1.40 names its tags `envoy.cluster_name`; Prometheus' rules would say
# `envoy_cluster_name`: either is read.
_SCOPE_LABELS = {
    "cluster": frozenset({"envoy.cluster_name", "envoy_cluster_name"}),
    "http": frozenset({"envoy.http_conn_manager_prefix", "envoy_http_conn_manager_prefix"}),
}
_CLASS_LABELS = frozenset({"envoy.response_code_class", "envoy_response_code_class"})
_TAGGED = frozenset({"cluster.upstream_rq_total", "http.downstream_rq_total",
                     "cluster.upstream_rq_xx", "http.downstream_rq_xx"})


def _value(family: Any, metric: Any) -> float:
    if family.type == COUNTER:
        return float(metric.counter.value)
    if family.type == UNTYPED:
        return float(metric.untyped.value)
    return 0.0


def counts_of(families: Iterable[Any]) -> dict[str, tuple[float, float]]:
    """{cluster ("" for the downstream total): (requests, 5xx)} of one flush's metric families."""
    requests: dict[str, float] = {}
    errors: dict[str, float] = {}

    def add(kind: str, scope: str, which: str, value: float) -> None:
        if kind == "http":
            if scope == _ADMIN_PREFIX:
                return  # Envoy's own admin listener: health checks and config dumps
            scope = DOWNSTREAM
        into = requests if which == "total" else errors
        into[scope] = into.get(scope, 0.0) + value

    for family in families:
        name = family.name
        if not (name.startswith("cluster.") or name.startswith("http.")):
            continue
        if name in _TAGGED:
            # The hot loop (a metric per cluster): no call, no dict per metric.
            kind = name.partition(".")[0]
            scope_labels = _SCOPE_LABELS[kind]
            five_xx = name.endswith("_xx")
            into = errors if five_xx else requests
            http = kind == "http"
            counter = family.type == COUNTER
            if not counter and family.type != UNTYPED:
                continue
            for metric in family.metric:
                scope = ""
                code_class = None
                for pair in metric.label:  # two or three pairs
                    label = pair.name
                    if label in scope_labels:
                        scope = pair.value
                    elif label in _CLASS_LABELS:
                        code_class = pair.value
                if five_xx and code_class != "5":
                    continue
                if http:
                    if scope == _ADMIN_PREFIX:
                        continue  # Envoy's own admin listener: health checks, config dumps
                    scope = DOWNSTREAM
                value = metric.counter.value if counter else metric.untyped.value
                into[scope] = into.get(scope, 0.0) + value
            continue
        match = _FLAT.match(name)
        if match is None:
            continue
        kind, scope, direction, which = match.groups()
        if (kind == "cluster") != (direction == "upstream"):
            continue
        for metric in family.metric:
            if not metric.label:
                add(kind, scope, which, _value(family, metric))
    return {scope: (requests.get(scope, 0.0), errors.get(scope, 0.0))
            for scope in set(requests) | set(errors)}


class EnvoyMetrics:
    def __init__(self, max_clusters: int = 2_000, max_envoys: int = 100_000):
        self.max_clusters = max_clusters
        self.max_envoys = max_envoys
        self._envoys: dict[str, EnvoyCounters] = {}
        self._stream_node: dict[int, str] = {}
        self.flushes = 0

    def receive(self, stream: int, node: Any, view: str, message: Any, now: float) -> None:
        """One flush of an authenticated metrics stream (MetricsService's `receive`)."""
        node_id = node.id
        envoy = self._envoys.get(node_id)
        if envoy is None or envoy.view != view:
            if envoy is None and len(self._envoys) >= self.max_envoys:
                return
            envoy = self._envoys[node_id] = EnvoyCounters(node_id, view)
        envoy.streams.add(stream)
        self._stream_node[stream] = node_id
        self.flushes += 1
        counts = counts_of(message.envoy_metrics)
        if not counts:
            envoy.updated = now
            envoy.flushes += 1
            return
        current: dict[str, Sample] = {}
        for scope in sorted(counts, key=lambda s: (s != DOWNSTREAM, s))[:self.max_clusters + 1]:
            requests, errors = counts[scope]
            last = envoy.raw.get(scope)
            base = envoy.offset.get(scope, (0.0, 0.0))
            if last is not None and (requests < last[0] or errors < last[1]):
                # The counters started again (an Envoy restarted under the same node id):
                # carry on from what they had reached.
                base = envoy.offset[scope] = (base[0] + last[0], base[1] + last[1])
            envoy.raw[scope] = (requests, errors)
            current[scope] = Sample(base[0] + requests, base[1] + errors, now)
        envoy.previous = envoy.current
        envoy.current = current
        envoy.updated = now
        envoy.flushes += 1

    def closed(self, stream: int) -> None:
        """A metrics stream ended: its Envoy is forgotten once it has none left."""
        node_id = self._stream_node.pop(stream, None)
        envoy = self._envoys.get(node_id) if node_id is not None else None
        if envoy is None:
            return
        envoy.streams.discard(stream)
        if not envoy.streams:
            del self._envoys[envoy.node]

    def sample(self, node_id: str, cluster: str = DOWNSTREAM) -> Sample | None:
        """The newest cumulative counts of an Envoy (its downstream total by default)."""
        envoy = self._envoys.get(node_id)
        return envoy.current.get(cluster) if envoy is not None else None

    def reporting(self) -> list[str]:
        return sorted(self._envoys)

    def request_rates(self) -> list[dict[str, Any]]:
        """Per Envoy and cluster ("" = its downstream total): requests and 5xx per second
        between its two newest flushes (zero until it has flushed twice)."""
        out = []
        for node_id in sorted(self._envoys):
            envoy = self._envoys[node_id]
            for scope in sorted(envoy.current):
                now = envoy.current[scope]
                before = envoy.previous.get(scope)
                rq = err = 0.0
                if before is not None and now.at > before.at:
                    seconds = now.at - before.at
                    rq = max(0.0, now.requests - before.requests) / seconds
                    err = max(0.0, now.errors - before.errors) / seconds
                out.append({"node": node_id, "view": envoy.view, "cluster": scope,
                            "rq_per_s": rq, "err_per_s": err, "updated": now.at})
        return out

    def describe(self) -> dict[str, Any]:
        return {"envoys": len(self._envoys), "flushes": self.flushes}
