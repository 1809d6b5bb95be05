"""The xDS protocol through real gRPC: the scripted client of `xds_client` against an in-process
`XdsServer` (ADS and per-type services, SotW and delta) and CSDS on 127.0.0.1.

Each test is one coroutine run by `asyncio.run` under an overall time limit; every receive is
bounded and silence windows are short, so a silent server fails fast and a loaded machine does
not make a passing test flaky.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from envoy.admin.v3 import config_dump_shared_pb2 as dump
from envoy.service.status.v3 import csds_pb2
from envoy.type.matcher.v3 import node_pb2, string_pb2
from xds_client import (
    CDS,
    EDS,
    LDS,
    RDS,
    SILENCE,
    XdsClient,
    eds_cluster,
    eventually,
    fetch_client_status,
    load_assignment,
    messages_of,
    names_of,
    rds_listener,
    route_config,
    running_server,
    snapshot_of,
)

from meshpilot.base import types
from meshpilot.xds.snapshot import Snapshot

VIEW = "edge"
TEST_TIMEOUT = 30.0


def aio(fn: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run the coroutine test in a fresh event loop, bounded as a whole."""

    @functools.wraps(fn)
    def run() -> None:
        asyncio.run(asyncio.wait_for(fn(), TEST_TIMEOUT))

    return run


def world(*, cluster_names: Iterable[str] = ("a", "b"), timeout_ms: int = 1000,
          ports: dict[str, int] | None = None, route_clusters: Iterable[str] | None = None,
          listener_port: int = 10000, view: str = VIEW) -> Snapshot:
    cluster_names = list(cluster_names)
    ports = ports or {}
    return snapshot_of(
        view, *(eds_cluster(n, connect_timeout_ms=timeout_ms) for n in cluster_names),
        *(load_assignment(n, [ports.get(n, 8080)]) for n in cluster_names),
        rds_listener("l", "r", port=listener_port),
        route_config("r", cluster_names if route_clusters is None else route_clusters))


def interest(type_url: str, snapshot: Snapshot) -> list[str]:
    """What an Envoy subscribes to: CDS and LDS by wildcard, EDS and RDS by name."""
    return [] if type_url in (CDS, LDS) else sorted(snapshot.get(type_url))


async def open_ads(client: XdsClient, snapshot: Snapshot,
                   order: Iterable[str] = (CDS, EDS, LDS, RDS)) -> dict[str, Any]:
    """Open the types as Envoy does (each after the previous is applied), ACK everything.

    A listener (cluster) sent after its routes (endpoints) brings those again; they are ACKed
    as they come. Returns the last response of each type.
    """
    last: dict[str, Any] = {}

    async def ack(response: Any) -> None:
        names = interest(response.type_url, snapshot)
        await client.ack(response, **({} if client.delta else {"resource_names": names}))
        last[response.type_url] = response

    for type_url in order:
        names = interest(type_url, snapshot)
        if client.delta:
            await client.send(type_url=type_url, resource_names_subscribe=names)
        else:
            await client.send(type_url=type_url, resource_names=names)
        while True:
            response = await client.recv()
            await ack(response)
            if response.type_url == type_url:
                break
        assert sorted(names_of(response)) == sorted(snapshot.get(type_url))
    while True:
        try:
            extra = await client.recv(timeout=SILENCE)
        except AssertionError:
            return last
        await ack(extra)


def metric(xds_server: Any, name: str, short: str) -> float | None:
    return xds_server.metrics.registry.get_sample_value(name, {"type": short})


def type_status(xds_server: Any, short: str, node_id: str = "envoy-1") -> dict[str, Any] | None:
    for conn in xds_server.registry.describe():
        if conn["node_id"] == node_id:
            return conn["types"].get(short)
    return None


# ----- SotW ADS -------------------------------------------------------------------------------------


@aio
async def test_sotw_ads_wildcard_ack_nack_and_stale_nonce() -> None:
    async with running_server() as (address, cache, xds), XdsClient(address) as client:
        cache.set(world())
        await client.send(type_url=CDS)
        first = await client.recv_type(CDS)
        assert sorted(names_of(first)) == ["a", "b"]
        assert first.version_info == world().get(CDS).version
        await client.ack(first)
        await client.expect_silence()

        bad = world(cluster_names=["a", "b", "bad"])
        cache.set(bad)
        second = await client.recv_type(CDS)
        assert sorted(names_of(second)) == ["a", "b", "bad"]
        message = "Error adding/updating cluster(s) bad: Proto constraint validation failed"
        await client.nack(second, message, version_info=first.version_info)
        # At once, the config without the refused cluster, which is never sent again.
        corrected = await client.recv_type(CDS)
        assert sorted(names_of(corrected)) == ["a", "b"]
        assert corrected.version_info == first.version_info
        await client.ack(corrected)
        await client.expect_silence()
        status = await eventually(lambda: (s := type_status(xds, "clusters"))
                                  and s["status"] == "HELD" and s, what="HELD status")
        assert status["last_rejection"]["message"] == message
        assert status["last_rejection"]["version"] == second.version_info
        assert status["version_acked"] == first.version_info
        assert [h["name"] for h in status["held_back"]] == ["bad"]
        assert status["held_back"][0]["message"] == message

        third_snapshot = world(cluster_names=["a", "b", "good"])
        cache.set(third_snapshot)
        third = await client.recv_type(CDS)
        assert third.version_info == third_snapshot.get(CDS).version
        # A late answer to an older response (stale nonce) is ignored, even a NACK.
        await client.nack(corrected, "late", version_info=first.version_info)
        await client.expect_silence()
        await eventually(lambda: metric(xds, "meshpilot_xds_stale_requests_total", "clusters") == 1,
                         what="the stale request counted")
        assert type_status(xds, "clusters")["status"] == "PENDING"
        await client.ack(third)
        await eventually(lambda: type_status(xds, "clusters")["status"] == "SYNCED",
                         what="SYNCED after the ACK")
        assert type_status(xds, "clusters")["last_rejection"]["message"] == message
        await client.expect_silence()


@aio
async def test_sotw_ads_named_subscribe_and_unsubscribe() -> None:
    async with running_server() as (address, cache, _), XdsClient(address) as client:
        cache.set(world(cluster_names=["a", "b", "c"]))
        await client.send(type_url=EDS, resource_names=["a"])
        first = await client.recv_type(EDS)
        assert names_of(first) == ["a"]
        await client.ack(first, resource_names=["a"])
        await client.expect_silence()

        await client.send(type_url=EDS, resource_names=["a", "b"], version_info=first.version_info,
                          response_nonce=first.nonce)
        added = await client.recv_type(EDS)
        assert names_of(added) == ["b"], "only the newly subscribed resource"
        await client.ack(added, resource_names=["a", "b"])

        await client.send(type_url=EDS, resource_names=["a"], version_info=added.version_info,
                          response_nonce=added.nonce)
        await client.expect_silence()
        # A change to the unsubscribed b is not sent; re-subscribing sends it again.
        cache.set(world(cluster_names=["a", "b", "c"], ports={"b": 9999}))
        await client.expect_silence()
        await client.send(type_url=EDS, resource_names=["a", "b"], version_info=added.version_info,
                          response_nonce=added.nonce)
        again = await client.recv_type(EDS)
        assert names_of(again) == ["b"]
        port = messages_of(again)["b"].endpoints[0].lb_endpoints[0].endpoint.address
        assert port.socket_address.port_value == 9999


@aio
async def test_sotw_ads_wildcard_listeners_and_full_state_on_removal() -> None:
    async with running_server() as (address, cache, _), XdsClient(address) as client:
        cache.set(snapshot_of(VIEW, rds_listener("l1", "r", 10001), rds_listener("l2", "r", 10002)))
        await client.send(type_url=LDS)
        first = await client.recv_type(LDS)
        assert sorted(names_of(first)) == ["l1", "l2"]
        await client.ack(first)
        cache.set(snapshot_of(VIEW, rds_listener("l2", "r", 10002)))
        second = await client.recv_type(LDS)
        assert names_of(second) == ["l2"], "SotW LDS: what is left out is removed"
        assert second.version_info != first.version_info


@aio
async def test_sotw_reconnect_with_current_version_gets_nothing() -> None:
    async with running_server() as (address, cache, _):
        snapshot = world()
        cache.set(snapshot)
        async with XdsClient(address) as client:
            await client.send(type_url=CDS)
            first = await client.recv_type(CDS)
            await client.ack(first)
        async with XdsClient(address) as again:
            await again.send(type_url=CDS, version_info=first.version_info)
            await again.expect_silence()
            cache.set(world(timeout_ms=3000))
            changed = await again.recv_type(CDS)
            assert changed.version_info != first.version_info
        async with XdsClient(address) as stale:
            await stale.send(type_url=CDS, version_info="something-else")
            assert sorted(names_of(await stale.recv_type(CDS))) == ["a", "b"]


@aio
async def test_client_connected_before_any_snapshot_gets_it_when_set() -> None:
    async with running_server() as (address, cache, xds), XdsClient(address) as client:
        await client.send(type_url=CDS)
        await client.expect_silence()  # nothing, not an empty config that would wipe Envoy's
        await eventually(lambda: xds.registry.describe(), what="the stream registered")
        cache.set(world())
        assert sorted(names_of(await client.recv_type(CDS))) == ["a", "b"]


# ----- delta ADS ------------------------------------------------------------------------------------


@aio
async def test_delta_ads_changes_removals_and_reconnect() -> None:
    async with running_server() as (address, cache, _):
        cache.set(world(cluster_names=["a", "b", "c"], route_clusters=["a"]))
        held: dict[str, str] = {}
        async with XdsClient(address, delta=True) as client:
            await client.send(type_url=CDS)
            first = await client.recv_type(CDS)
            assert sorted(names_of(first)) == ["a", "b", "c"]
            held.update({r.name: r.version for r in first.resources})
            await client.ack(first)
            await client.expect_silence()

            cache.set(world(cluster_names=["a", "b"], route_clusters=["a"]))
            removal = await client.recv_type(CDS)
            assert list(removal.removed_resources) == ["c"]
            assert not removal.resources
            held.pop("c")
            await client.ack(removal)

            cache.set(world(cluster_names=["a", "b"], route_clusters=["a"], timeout_ms=2000))
            change = await client.recv_type(CDS)
            assert sorted(names_of(change)) == ["a", "b"]
            held.update({r.name: r.version for r in change.resources})
            await client.ack(change)

        # Reconnect, telling the server what it holds: nothing is re-sent for nothing.
        async with XdsClient(address, delta=True) as again:
            await again.send(type_url=CDS, initial_resource_versions=held)
            await again.expect_silence()
            cache.set(world(cluster_names=["a", "b", "d"], route_clusters=["a"],
                            timeout_ms=2000))
            grown = await again.recv_type(CDS)
            assert names_of(grown) == ["d"]

        # Reconnect holding an outdated b and a vanished x: only those are dealt with.
        async with XdsClient(address, delta=True) as third:
            await third.send(type_url=CDS, initial_resource_versions={
                **held, "b": "outdated", "x": "1"})
            fix = await third.recv_type(CDS)
            assert sorted(names_of(fix)) == ["b", "d"]
            assert list(fix.removed_resources) == ["x"]


@aio
async def test_delta_ads_named_endpoints_reconnect() -> None:
    async with running_server() as (address, cache, _):
        cache.set(world(cluster_names=["a", "b"]))
        async with XdsClient(address, delta=True) as client:
            await client.send(type_url=EDS, resource_names_subscribe=["a", "b"])
            first = await client.recv_type(EDS)
            held = {r.name: r.version for r in first.resources}
            assert sorted(held) == ["a", "b"]
            await client.ack(first)
            await client.send(type_url=EDS, resource_names_unsubscribe=["b"])
            await client.expect_silence()
        async with XdsClient(address, delta=True) as again:
            await again.send(type_url=EDS, resource_names_subscribe=["a", "b"],
                             initial_resource_versions=held)
            await again.expect_silence()
            cache.set(world(cluster_names=["a", "b"], ports={"a": 7000}))
            changed = await again.recv_type(EDS)
            assert names_of(changed) == ["a"]


# ----- per-type services ----------------------------------------------------------------------------


@aio
async def test_per_type_cds_sotw_and_eds_delta_services() -> None:
    async with running_server() as (address, cache, xds):
        cache.set(world())
        async with XdsClient(address, service=CDS) as cds, \
                XdsClient(address, service=EDS, delta=True, node_id="envoy-2") as eds:
            await cds.send(type_url=CDS)
            clusters = await cds.recv_type(CDS)
            assert sorted(names_of(clusters)) == ["a", "b"]
            await cds.ack(clusters)

            await eds.send(type_url=EDS, resource_names_subscribe=["b"])
            endpoints = await eds.recv_type(EDS)
            assert names_of(endpoints) == ["b"]
            await eds.ack(endpoints)

            await eventually(lambda: sorted(c["variant"] for c in xds.registry.describe())
                             == ["delta-endpoints", "sotw-clusters"],
                             what="both variants registered")

            cache.set(world(timeout_ms=2000, ports={"b": 9000}))
            assert sorted(names_of(await cds.recv_type(CDS))) == ["a", "b"]
            assert names_of(await eds.recv_type(EDS)) == ["b"]


@aio
async def test_per_type_service_rejects_another_type() -> None:
    async with running_server() as (address, cache, _), \
            XdsClient(address, service=CDS) as client:
        cache.set(world())
        await client.send(type_url=LDS)
        assert await client.wait_closed() == grpc.StatusCode.INVALID_ARGUMENT
        assert "serves" in client.error.details()


# ----- ADS ordering and make before break --------------------------------------------------------


@aio
async def test_ads_pushes_cds_eds_lds_rds_in_order() -> None:
    async with running_server() as (address, cache, _), XdsClient(address) as client:
        cache.set(world())
        # Opened in reverse: the order of pushes must come from the protocol, not from this.
        await open_ads(client, world(), order=(RDS, LDS, EDS, CDS))
        await client.expect_silence()
        changed = world(timeout_ms=2000, ports={"a": 1, "b": 2}, listener_port=10001,
                        route_clusters=["b"])
        cache.set(changed)
        received = [await client.recv() for _ in range(4)]
        assert [types.short_name(r.type_url) for r in received] == [
            "clusters", "endpoints", "listeners", "routes"]
        for response in received:
            assert response.version_info == changed.get(response.type_url).version
            await client.ack(response, resource_names=interest(response.type_url, changed))
        await client.expect_silence()


@aio
async def test_ads_removed_cluster_outlives_the_routes_naming_it() -> None:
    async with running_server() as (address, cache, _), XdsClient(address) as client:
        cache.set(world())
        await open_ads(client, world())
        shrunk = world(cluster_names=["a"])
        cache.set(shrunk)
        routes = await client.recv_type(RDS)  # not CDS: the held routes still name b
        route = messages_of(routes)["r"].virtual_hosts[0].routes
        assert [r.route.cluster for r in route] == ["a"]
        await client.expect_silence()
        await client.ack(routes, resource_names=["r"])
        clusters = await client.recv_type(CDS)
        assert names_of(clusters) == ["a"]
        assert clusters.version_info == shrunk.get(CDS).version


@aio
async def test_ads_changed_cluster_gets_its_endpoints_again() -> None:
    async with running_server() as (address, cache, _), XdsClient(address) as client:
        cache.set(world())
        opened = await open_ads(client, world())
        cache.set(world(timeout_ms=5000))  # clusters change, endpoints do not
        await client.recv_type(CDS)
        endpoints = await client.recv_type(EDS)
        assert sorted(names_of(endpoints)) == ["a", "b"]
        assert endpoints.version_info == opened[EDS].version_info


# ----- NACK visibility and CSDS ----------------------------------------------------------------------


@aio
async def test_nack_not_resent_and_visible_with_envoys_message() -> None:
    nacks: list[tuple[str, str, str]] = []

    def on_nack(conn: Any, type_url: str, message: str) -> None:
        nacks.append((conn.node_id, type_url, message))

    async with running_server(on_nack=on_nack) as (address, cache, xds), \
            XdsClient(address, node_id="edge-7") as client:
        cache.set(world())
        await client.send(type_url=LDS)
        good = await client.recv_type(LDS)
        await client.ack(good)
        cache.set(world(listener_port=80))
        bad = await client.recv_type(LDS)
        message = ("Error adding/updating listener(s) l: cannot bind '0.0.0.0:80': "
                   "Permission denied")
        await client.nack(bad, message, version_info=good.version_info)
        # The listener as the client had it, at once; the refused one never again.
        corrected = await client.recv_type(LDS)
        assert corrected.version_info == good.version_info
        await client.ack(corrected)
        await client.expect_silence()
        await client.send(type_url=LDS, version_info=good.version_info,
                          response_nonce=corrected.nonce)
        await client.expect_silence()  # repeating interest does not bring it back either
        await eventually(lambda: nacks, what="on_nack called")
        assert nacks == [("edge-7", LDS, message)]
        status = type_status(xds, "listeners", "edge-7")
        assert status["status"] == "HELD"
        assert status["last_rejection"]["message"] == message
        assert [h["name"] for h in status["held_back"]] == ["l"]
        assert status["responses"] == 3
        assert metric(xds, "meshpilot_xds_nacks_total", "listeners") == 1


@aio
async def test_csds_reports_acked_and_nacked() -> None:
    async with running_server() as (address, cache, _), \
            XdsClient(address, node_id="envoy-ok") as ok, \
            XdsClient(address, node_id="envoy-bad") as bad:
        cache.set(world())
        await ok.send(type_url=CDS)
        await ok.ack(await ok.recv_type(CDS))
        await bad.send(type_url=CDS)
        good = await bad.recv_type(CDS)
        await bad.ack(good)
        await bad.send(type_url=LDS)
        rejected = await bad.recv_type(LDS)
        await bad.nack(rejected, "listener l: invalid filter chain")

        def statuses(response: Any) -> dict[str, dict[tuple[str, str], Any]]:
            return {c.node.id: {(types.short_name(g.type_url), g.name): g
                                for g in c.generic_xds_configs} for c in response.config}

        async def settled() -> dict[str, Any]:
            for _ in range(200):
                found = statuses(await fetch_client_status(address))
                bad_l = found.get("envoy-bad", {}).get(("listeners", "l"))
                ok_a = found.get("envoy-ok", {}).get(("clusters", "a"))
                if (bad_l is not None and bad_l.client_status == dump.NACKED and ok_a
                        is not None and ok_a.client_status == dump.ACKED):
                    return found
                await asyncio.sleep(0.02)
            raise AssertionError(f"CSDS never showed ACKED and NACKED: {found}")

        found = await settled()
        assert set(found) == {"envoy-ok", "envoy-bad"}
        assert {k for k in found["envoy-ok"]} == {("clusters", "a"), ("clusters", "b")}
        assert all(g.client_status == dump.ACKED for g in found["envoy-ok"].values())
        assert found["envoy-ok"][("clusters", "a")].config_status == csds_pb2.SYNCED
        assert found["envoy-ok"][("clusters", "a")].xds_config.type_url == CDS
        listener = found["envoy-bad"][("listeners", "l")]
        assert listener.error_state.details == "listener l: invalid filter chain"
        # The version of the refused resource itself (what the Envoy is held back from).
        assert listener.error_state.version_info == world().get(LDS)["l"].version
        assert rejected.version_info == world().get(LDS).version
        assert found["envoy-bad"][("clusters", "b")].client_status == dump.ACKED

        # Node matchers select one proxy; exclude_resource_contents leaves out the configs.
        only_ok = await fetch_client_status(
            address, exclude_resource_contents=True, node_matchers=[node_pb2.NodeMatcher(
                node_id=string_pb2.StringMatcher(exact="envoy-ok"))])
        assert [c.node.id for c in only_ok.config] == ["envoy-ok"]
        assert all(not g.HasField("xds_config") for g in only_ok.config[0].generic_xds_configs)


# ----- protocol errors --------------------------------------------------------------------------------


@aio
async def test_ads_request_without_type_url_is_invalid_argument() -> None:
    async with running_server() as (address, cache, xds), XdsClient(address) as client:
        cache.set(world())
        await client.send(resource_names=["a"])
        assert await client.wait_closed() == grpc.StatusCode.INVALID_ARGUMENT
        assert "type_url" in client.error.details()
        await eventually(lambda: not xds.registry.connections(), what="the stream forgotten")


@aio
async def test_first_request_without_node_is_invalid_argument() -> None:
    async with running_server() as (address, cache, _), XdsClient(address, delta=True) as client:
        cache.set(world())
        await client.send(type_url=CDS, node=None)
        assert await client.wait_closed() == grpc.StatusCode.INVALID_ARGUMENT
        assert "node" in client.error.details()


@aio
async def test_closed_stream_leaves_the_registry() -> None:
    async with running_server() as (address, cache, xds):
        cache.set(world())
        async with XdsClient(address) as client:
            await client.send(type_url=CDS)
            await client.recv_type(CDS)
            assert [c["node_id"] for c in xds.registry.describe()] == ["envoy-1"]
        await eventually(lambda: not xds.registry.connections(), what="the stream forgotten")
        assert not cache.watched_views()


@aio
async def test_node_with_empty_cluster_follows_its_view() -> None:
    # The default view is node.cluster; an empty one is still a view, and its updates arrive.
    async with running_server() as (address, cache, _), \
            XdsClient(address, cluster="") as client:
        cache.set(world(view=""))
        await client.send(type_url=CDS)
        await client.ack(await client.recv_type(CDS))
        cache.set(world(view="", cluster_names=["a"]))
        assert names_of(await client.recv_type(CDS)) == ["a"]


# ----- many streams ---------------------------------------------------------------------------------


@aio
async def test_200_streams_on_one_view_all_receive_a_change() -> None:
    count = 200
    async with running_server() as (address, cache, xds):
        cache.set(world())
        channels = [grpc.aio.insecure_channel(address) for _ in range(4)]
        clients = [XdsClient(address, node_id=f"envoy-{i}", channel=channels[i % 4],
                             delta=bool(i % 2)) for i in range(count)]
        try:
            for client in clients:
                await client.connect()

            async def open_(client: XdsClient) -> str:
                await client.send(type_url=CDS)
                response = await client.recv_type(CDS, timeout=15)
                await client.ack(response)
                return ",".join(sorted(names_of(response)))

            assert set(await asyncio.gather(*(open_(c) for c in clients))) == {"a,b"}
            await eventually(lambda: len(xds.registry.connections()) == count,
                             what="all streams registered")
            changed = world(cluster_names=["a", "b", "c"])
            cache.set(changed)

            async def changed_(client: XdsClient) -> tuple[str, ...]:
                response = await client.recv_type(CDS, timeout=15)
                if client.delta:
                    return tuple(names_of(response))
                return (response.version_info,)

            results = await asyncio.gather(*(changed_(c) for c in clients))
            assert results.count(("c",)) == count // 2, "delta streams get just the new one"
            assert results.count((changed.get(CDS).version,)) == count // 2
        finally:
            await asyncio.gather(*(c.close() for c in clients))
            for channel in channels:
                await channel.close()
