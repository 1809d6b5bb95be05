"""Envoy's metrics service on the xDS port, through a real gRPC client: a stream with a node
token for its view is read (request rates at /debug/metrics/envoys); a stream without one, with
another view's, or naming no node is refused and changes nothing, so a stranger cannot feed
false error rates into a rollout."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml

from meshpilot.cli import main as cli_main
from meshpilot.local.bootstrap import render_bootstrap
from meshpilot.local.envoy_process import validate_config
from meshpilot.runtime.app import Meshpilot, Settings
from meshpilot.runtime.envoy_metrics import counts_of
from meshpilot.xds.metrics_protos import COUNTER, GAUGE, StreamMetricsMessage, StreamMetricsResponse

POLICY = """\
kind: Service
name: api
endpoints: [127.0.0.1:9081]
---
kind: Gateway
name: edge
listeners: [{name: http, port: 10000, address: 127.0.0.1}]
---
kind: Route
name: shop
gateway: edge
rules: [{backends: [api]}]
"""
METHOD = "/envoy.service.metrics.v3.MetricsService/StreamMetrics"


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[Meshpilot]:
    policy = tmp_path / "policy"
    policy.mkdir(exist_ok=True)
    (policy / "edge.yaml").write_text(POLICY)
    mp = Meshpilot(Settings(policy=policy, xds_address="127.0.0.1:0",
                            admin_address="127.0.0.1:0", watch=False,
                            state_dir=tmp_path / "state"))
    await mp.start()
    try:
        yield mp
    finally:
        await mp.stop()


def flush(total: float, errors: float, *, node: str | None = None, cluster: str = "edge",
          upstream: str = "api") -> Any:
    """One flush as Envoy's stats sink sends it (tags as labels, as Envoy 1.40 names them)."""
    message = StreamMetricsMessage()
    if node is not None:
        message.identifier.node.id = node
        message.identifier.node.cluster = cluster
    for name, label, value, extra in [
            ("http.downstream_rq_total", ("envoy.http_conn_manager_prefix", "ingress"), total,
             None),
            ("http.downstream_rq_xx", ("envoy.http_conn_manager_prefix", "ingress"), errors,
             ("envoy.response_code_class", "5")),
            ("http.downstream_rq_xx", ("envoy.http_conn_manager_prefix", "ingress"),
             total - errors, ("envoy.response_code_class", "2")),
            ("http.downstream_rq_total", ("envoy.http_conn_manager_prefix", "admin"), 1000.0,
             None),
            ("cluster.upstream_rq_total", ("envoy.cluster_name", upstream), total, None),
            ("cluster.upstream_rq_xx", ("envoy.cluster_name", upstream), errors,
             ("envoy.response_code_class", "5"))]:
        family = message.envoy_metrics.add(name=name, type=COUNTER)
        metric = family.metric.add()
        metric.label.add(name=label[0], value=label[1])
        if extra:
            metric.label.add(name=extra[0], value=extra[1])
        metric.counter.value = value
    gauge = message.envoy_metrics.add(name="cluster.upstream_rq_active", type=GAUGE)
    gauge.metric.add().gauge.value = 7
    return message


def tls_channel(mp: Meshpilot) -> grpc.aio.Channel:
    assert mp.xds_ca_pem is not None
    return grpc.aio.secure_channel(
        mp.xds_address, grpc.ssl_channel_credentials(mp.xds_ca_pem),
        options=[("grpc.ssl_target_name_override", "meshpilot")])


async def stream(mp: Meshpilot, messages: Iterable[Any], token: str | None,
                 until: asyncio.Event | None = None) -> grpc.StatusCode:
    """Send `messages` on one StreamMetrics call, kept open until `until` is set (if given);
    how the call ended."""
    async with tls_channel(mp) as channel:
        call = channel.stream_unary(METHOD, request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=StreamMetricsResponse.FromString)
        metadata = (("authorization", f"Bearer {token}"),) if token else ()

        async def requests() -> AsyncIterator[Any]:
            for message in messages:
                yield message
                await asyncio.sleep(0.05)
            if until is not None:
                await until.wait()

        try:
            await call(requests(), metadata=metadata, timeout=30)
        except grpc.aio.AioRpcError as e:
            return e.code()
        return grpc.StatusCode.OK


async def rates(mp: Meshpilot) -> list[dict[str, Any]]:
    token = mp.tokens.issue("operator")
    async with aiohttp.ClientSession() as http, http.get(
            f"http://{mp.admin_address}/debug/metrics/envoys",
            headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200
        return json.loads(await response.text())["request_rates"]  # type: ignore[no-any-return]


def test_the_metrics_service_reads_authenticated_envoys_only(tmp_path: Path) -> None:
    async def run() -> None:
        async with serving(tmp_path) as mp:
            refused = {
                "no token": None,
                "another view's token": mp.tokens.issue("node", "reviews"),
                "an operator token": mp.tokens.issue("operator"),
                "garbage": "not-a-token",
            }
            for who, token in refused.items():
                ended = await stream(mp, [flush(10, 9, node="edge-1"), flush(20, 19)], token)
                assert ended == grpc.StatusCode.PERMISSION_DENIED, who
            good = mp.tokens.issue("node", "edge")
            # A first message that names no node cannot be placed: refused too.
            assert await stream(mp, [flush(1, 0)], good) == grpc.StatusCode.INVALID_ARGUMENT
            assert mp.envoy_metrics.reporting() == [] and await rates(mp) == []
            assert mp.metrics_service.refused == len(refused) + 1

            # The control: the same stream with the view's token is read. The second flush
            # names another node: ignored, the stream's node is its first message's.
            # It stays open until the checks are done (a loaded machine may take seconds).
            release = asyncio.Event()
            task = asyncio.create_task(stream(
                mp, [flush(10, 1, node="edge-1"), flush(30, 5, node="edge-2"), flush(50, 9)],
                good, until=release))
            for _ in range(400):
                if mp.envoy_metrics.flushes >= 3:
                    break
                await asyncio.sleep(0.05)
            assert mp.envoy_metrics.reporting() == ["edge-1"]
            sample = mp.envoy_metrics.sample("edge-1")
            assert sample is not None and (sample.requests, sample.errors) == (50, 9)
            by_cluster = {r["cluster"]: r for r in await rates(mp)}
            assert set(by_cluster) == {"", "api"}  # the admin listener's requests left out
            assert all(r["node"] == "edge-1" and r["view"] == "edge" for r in by_cluster.values())
            assert by_cluster[""]["rq_per_s"] > 0 and by_cluster[""]["err_per_s"] > 0
            release.set()
            assert await task == grpc.StatusCode.OK
            # Its stream closed: the Envoy is forgotten.
            assert mp.envoy_metrics.reporting() == [] and await rates(mp) == []

    asyncio.run(run())


def test_counts_read_flat_names_and_skip_the_rest() -> None:
    message = StreamMetricsMessage()
    for name, value in [("cluster.a.b.upstream_rq_total", 9), ("cluster.a.b.upstream_rq_5xx", 2),
                        ("http.ingress.downstream_rq_total", 7),
                        ("http.ingress.downstream_rq_5xx", 1),
                        ("http.admin.downstream_rq_total", 100),
                        ("cluster.a.b.upstream_cx_total", 4),
                        ("http.ingress.upstream_rq_total", 3)]:
        family = message.envoy_metrics.add(name=name, type=COUNTER)
        family.metric.add().counter.value = value
    assert counts_of(message.envoy_metrics) == {"a.b": (9, 2), "": (7, 1)}
    assert counts_of(flush(10, 4).envoy_metrics) == {"": (10, 4), "api": (10, 4)}


@pytest.mark.envoy
def test_the_bootstrap_configures_the_stats_sink(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bootstrap", "--node-id", "edge-1", "--node-cluster", "edge", "--xds-address",
            "127.0.0.1:18000", "--admin-address", "127.0.0.1:19000", "--xds-tls-ca", "/ca.pem",
            "--token-file", str(tmp_path / "token")]
    (tmp_path / "token").write_text("NODE-TOKEN\n")
    assert cli_main(args) == 0
    bootstrap = yaml.safe_load(capsys.readouterr().out)
    assert bootstrap["stats_flush_interval"] == "2.000s"
    (sink,) = bootstrap["stats_sinks"]
    assert sink["name"] == "envoy.stat_sinks.metrics_service"
    service = sink["typed_config"]["grpc_service"]
    assert service["envoy_grpc"] == {"cluster_name": "meshpilot_xds"}
    assert service["initial_metadata"] == [{"key": "authorization",
                                            "value": "Bearer NODE-TOKEN"}]
    assert sink["typed_config"]["emit_tags_as_labels"] is True
    assert cli_main([*args, "--stats-flush-interval", "500ms"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["stats_flush_interval"] == "0.500s"
    assert cli_main([*args, "--no-metrics-service"]) == 0
    assert "stats_sinks" not in yaml.safe_load(capsys.readouterr().out)
    assert cli_main([*args, "--stats-flush-interval", "10m"]) == 2
    assert "between 1ms and 300s" in capsys.readouterr().err
    # Envoy itself accepts it.
    validate_config(render_bootstrap(
        node_id="edge-1", node_cluster="edge", xds_addresses=[("127.0.0.1", 18000)],
        admin_address=("127.0.0.1", 0), xds_token="NODE-TOKEN", stats_flush_interval=0.5))
