"""What an open web dashboard costs the server (runtime/dashboard.py).

    .venv/bin/python -m benchmarks.dashboard [--envoys 10,100,1000] [--repeat 21]

An open dashboard's event stream looks at the process twice a second (`POLL_SECONDS`), or less
often when a look costs more than a tenth of that (`LOAD_FACTOR`), however many dashboards are
open (`SharedState`): each look builds the state (`dashboard_state`: the
fleet's descriptions, the service graph from every view's snapshot) and serializes it, and the
stream sends it when it differs from the last. This times one look for fleets of N Envoys (the
real `ProxyRegistry.describe()` of N streams, each with five types ACKed; 4 views of 50
clusters each, with a request rate per Envoy and cluster), and gives the document's size;
beside it, alternately, the first version's look (every Envoy's whole /debug/proxies
description, keys sorted), with the ratio of the medians.
Medians of `--repeat` runs, with the spread; wall-clock on a shared machine, so read the
orders of magnitude, not the last digit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import base_pb2

from meshpilot.base import types
from meshpilot.runtime.dashboard import (
    LOAD_FACTOR,
    POLL_SECONDS,
    DashboardSources,
    SharedState,
    dashboard_state,
)
from meshpilot.xds.snapshot import Snapshot
from meshpilot.xds.status import ProxyRegistry
from meshpilot.xds.stream import TypeState, XdsStream

VIEWS = 4
CLUSTERS = 50


def snapshots() -> list[Snapshot]:
    return [Snapshot.from_messages(f"view-{v}", {types.CLUSTER: [
        (f"service-{v}-{c}", Cluster(name=f"service-{v}-{c}")) for c in range(CLUSTERS)]})
        for v in range(VIEWS)]


def registry(envoys: int, views: list[Snapshot]) -> ProxyRegistry:
    """N connected streams, each on its view's snapshot with every type sent and ACKed."""
    proxies = ProxyRegistry()
    for i in range(envoys):
        snapshot = views[i % len(views)]
        stream = XdsStream(delta=False, ads=True)
        conn = proxies.open(stream, f"127.0.0.1:{40000 + i}", time.monotonic())
        conn.view = snapshot.view
        stream.node = base_pb2.Node(id=f"envoy-{i}", cluster=snapshot.view)
        stream.snapshot = snapshot
        for type_url in types.ADS_ORDER:
            state = stream.types[type_url] = TypeState(type_url=type_url)
            state.acked_version = state.sent_version = snapshot.get(type_url).version
            state.responses = state.acks = 1
    return proxies


def rates(envoys: int) -> list[dict[str, Any]]:
    return [{"node": f"envoy-{i}", "view": f"view-{i % VIEWS}", "cluster": cluster,
             "rq_per_s": 3.0, "err_per_s": 0.0, "updated": 1.0}
            for i in range(envoys)
            for cluster in ["", *(f"service-{i % VIEWS}-{c}" for c in range(3))]]


def measure(envoys: int, repeat: int) -> dict[str, Any]:
    views = snapshots()
    proxies = registry(envoys, views)
    request_rates = rates(envoys)

    async def fleet() -> dict[str, Any]:
        return {"proxies": proxies.describe()}

    sources = DashboardSources(proxies=fleet, status=lambda: {"policy": {"ok": True}},
                               snapshots=lambda: views, request_rates=lambda: request_rates)
    times: list[float] = []
    full_times: list[float] = []
    size = full_size = 0

    async def full_look() -> str:
        # The first version's look, for comparison: /debug/proxies' whole description of
        # every Envoy (nonces, versions, timestamps), serialized with sorted keys.
        state = await dashboard_state(sources)
        state["proxies"] = (await fleet())["proxies"]
        return json.dumps(state, sort_keys=True, separators=(",", ":"), default=str)

    async def run() -> None:
        nonlocal size, full_size
        for _ in range(repeat):  # the two alternately, so the machine's load hits both alike
            shared = SharedState(sources, time.monotonic)
            started = time.perf_counter()
            text = await shared.text()
            times.append(time.perf_counter() - started)
            size = len(text.encode())
            started = time.perf_counter()
            full = await full_look()
            full_times.append(time.perf_counter() - started)
            full_size = len(full.encode())
        # 32 streams asking in the same look: still one build.
        shared = SharedState(sources, time.monotonic)
        await asyncio.gather(*(shared.text() for _ in range(32)))
        assert shared.computed == 1

    asyncio.run(run())
    state = asyncio.run(dashboard_state(sources))
    assert len(state["proxies"]) == envoys
    median = statistics.median(times)
    interval = max(POLL_SECONDS, LOAD_FACTOR * median)  # as SharedState.interval()
    return {"envoys": envoys, "median_ms": round(median * 1000, 2),
            "min_ms": round(min(times) * 1000, 2), "max_ms": round(max(times) * 1000, 2),
            "bytes": size, "looks_per_s": round(1 / interval, 2),
            "core_share": round(median / interval, 4),
            "full_median_ms": round(statistics.median(full_times) * 1000, 2),
            "full_bytes": full_size,
            "ratio": round(median / statistics.median(full_times), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envoys", default="10,100,1000")
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    for envoys in (int(n) for n in args.envoys.split(",")):
        print(json.dumps(measure(envoys, args.repeat)))


if __name__ == "__main__":
    main()
