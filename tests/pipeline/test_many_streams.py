"""Thousands of ADS streams opened at once into one `meshpilot serve` (docs/benchmarks.md).

gRPC core queues each new call until grpc.aio's accept loop (one call at a time, on the event
loop) takes it; past `grpc.server.max_pending_requests` queued calls (default 1,000, all dropped
at the hard limit 3,000) core cancels new calls without a log line. With 500 clusters to send per
initial sync the loop falls behind a burst, and one process used to cap at ~2,200 streams.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from support import MeshpilotProcess

from meshpilot.runtime.app import _GRPC_OPTIONS

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
STREAMS = 4_000  # the default limits dropped ~10% of a 3,000 burst, ~15-20% of 5,000
CHANNELS = 4


def _policy(clusters: int) -> str:
    eds = "{ads: {}, resource_api_version: V3}"
    lines = ["kind: EnvoyResources", "name: many", "clusters:"]
    lines += [f"  - {{name: svc-{i:05d}, type: EDS, connect_timeout: 1s,"
              f" eds_cluster_config: {{eds_config: {eds}}}}}" for i in range(clusters)]
    lines.append("endpoints:")
    lines += [f"  - {{cluster_name: svc-{i:05d}, endpoints: [{{lb_endpoints: [{{endpoint:"
              f" {{address: {{socket_address: {{address: 127.0.{i >> 8}.{i & 255},"
              f" port_value: 8000}}}}}}}}]}}]}}" for i in range(clusters)]
    return "\n".join(lines) + "\n"


async def _open_streams(address: str, count: int, channels: int) -> Counter[str]:
    """Open `count` ADS streams at once, one CDS request each; how each first read ended."""
    chans = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(channels)]
    stubs = [ads_pb2_grpc.AggregatedDiscoveryServiceStub(c) for c in chans]
    hold = asyncio.Event()  # keeps every stream open until all have been answered
    results: Counter[str] = Counter()

    async def one(i: int) -> grpc.aio.StreamStreamCall:
        async def requests():  # type: ignore[no-untyped-def]
            yield discovery_pb2.DiscoveryRequest(
                node=base_pb2.Node(id=f"n{i}", cluster="edge"), type_url=CDS)
            await hold.wait()

        call = stubs[i % channels].StreamAggregatedResources(requests())
        try:
            response = await asyncio.wait_for(call.read(), 20)
            results["ok" if response is not grpc.aio.EOF else "EOF"] += 1
        except grpc.aio.AioRpcError as e:
            results[f"{e.code().name}: {e.details()}"] += 1
        except TimeoutError:
            results["timeout"] += 1
        return call

    try:
        calls = await asyncio.gather(*(one(i) for i in range(count)))
        hold.set()
        for call in calls:
            call.cancel()
    finally:
        for c in chans:
            await c.close()
    return results


def test_server_options_queue_a_large_burst_of_new_streams() -> None:
    options = dict(_GRPC_OPTIONS)
    assert options["grpc.server.max_pending_requests"] >= 10_000
    assert (options["grpc.server.max_pending_requests_hard_limit"]
            >= options["grpc.server.max_pending_requests"])


def test_thousands_of_streams_opened_at_once_are_all_served(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "many.yaml").write_text(_policy(500))
    # Plaintext on purpose: this is gRPC core's limits on a burst of calls, not authentication.
    mp = MeshpilotProcess(policy, tmp_path, extra_args=("--insecure-xds",)).start()
    try:
        results = asyncio.run(_open_streams(f"127.0.0.1:{mp.xds_port}", STREAMS, CHANNELS))
        assert results == Counter(ok=STREAMS), f"{results}\n{mp.log_tail()}"
    finally:
        mp.stop()
