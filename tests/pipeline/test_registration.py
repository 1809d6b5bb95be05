"""The self-registration API of a meshpilot process (in-process, on free ports), and what an ADS
client is sent when instances come and go: ClusterLoadAssignments only."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import aiohttp
from samples import DISCOVERY_POLICY as POLICY
from xds_client import XdsClient, messages_of, names_of

from meshpilot.base import types
from meshpilot.runtime.app import Meshpilot, Settings


def settings(policy: Path) -> Settings:
    return Settings(policy=policy, xds_address="127.0.0.1:0", admin_address="127.0.0.1:0",
                    insecure_xds=True,  # xDS security is tests/pipeline/test_xds_auth.py's
                    debounce_quiet=0.02, debounce_max=1.0, discovery_sweep=0.05)


async def call(session: aiohttp.ClientSession, mp: Meshpilot, method: str, path: str,
               body: Any = None, raw: bytes | None = None,
               headers: dict[str, str] | None = None,
               token: str | None = "operator") -> tuple[int, Any]:
    """`token`: "operator" (the default) sends one of the process's operator tokens; None
    sends none; anything else is sent as the token."""
    kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
    if token == "operator":
        token = mp.tokens.issue("operator")
    auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
    kwargs["headers"] = {**auth, **(headers or {})}
    async with session.request(method, f"http://{mp.admin_address}{path}", **kwargs) as r:
        text = await r.text()
        return r.status, (json.loads(text) if text.strip() else None)


def hosts(response: Any, name: str) -> list[str]:
    cla = messages_of(response)[name]
    return [f"{e.endpoint.address.socket_address.address}:"
            f"{e.endpoint.address.socket_address.port_value}"
            for group in cla.endpoints for e in group.lb_endpoints]


def start(tmp_path: Path) -> Meshpilot:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "shop.yaml").write_text(POLICY)
    return Meshpilot(settings(policy))


def test_registration_api_validates_and_manages_instances(tmp_path: Path) -> None:
    async def scenario() -> None:
        mp = start(tmp_path)
        await mp.start()
        try:
            async with aiohttp.ClientSession() as s:
                status, body = await call(s, mp, "POST", "/v1/registrations",
                                          {"service": "ratings", "address": "10.0.0.5:8080",
                                           "labels": {"zone": "a"}, "ttl": "30s"})
                assert status == 201, body
                rid = body["id"]
                assert body["address"] == "10.0.0.5:8080" and body["labels"] == {"zone": "a"}
                assert 29 < body["expires_in"] <= 30
                # The same service and address again: the same registration, updated.
                status, again = await call(s, mp, "POST", "/v1/registrations",
                                           {"service": "ratings", "address": "10.0.0.5:8080",
                                            "ttl": "1m"})
                assert (status, again["id"], again["ttl"]) == (200, rid, 60.0)

                status, body = await call(s, mp, "POST", "/v1/registrations",
                                          {"service": "ratings", "address": "db:80"})
                assert status == 400 and "not an IP address" in body["error"]
                status, body = await call(s, mp, "POST", "/v1/registrations", raw=b"{nope",
                                          headers={"Content-Type": "application/json"})
                assert (status, body["error"]) == (400, "the body must be JSON")
                # What any web page may send cross-origin without asking first: refused.
                status, body = await call(s, mp, "POST", "/v1/registrations",
                                          raw=b'{"service": "ratings", "address": "10.9.9.9:80"}',
                                          headers={"Content-Type": "text/plain"})
                assert status == 415 and "application/json" in body["error"]
                status, body = await call(s, mp, "POST", "/v1/registrations",
                                          {"service": "ratings", "address": "10.0.0.1:1",
                                           "ttl": "forever"})
                assert status == 400 and body["error"].startswith("ttl: invalid duration")

                status, body = await call(s, mp, "GET", "/v1/registrations")
                assert status == 200 and [r["id"] for r in body["registrations"]] == [rid]
                status, body = await call(s, mp, "GET", "/v1/registrations?service=reviews")
                assert body["registrations"] == []
                status, body = await call(s, mp, "PUT", f"/v1/registrations/{rid}")
                assert status == 200 and body["expires_in"] > 59
                assert (await call(s, mp, "DELETE", f"/v1/registrations/{rid}"))[0] == 204
                assert (await call(s, mp, "DELETE", f"/v1/registrations/{rid}"))[0] == 404
                status, body = await call(s, mp, "PUT", f"/v1/registrations/{rid}")
                assert status == 404 and "register again" in body["error"]
                status, body = await call(s, mp, "GET", "/debug/discovery")
                assert body == {"counts": {}, "instances": []}
        finally:
            await mp.stop()

    asyncio.run(scenario())


def test_a_registration_and_its_expiry_push_endpoints_only(tmp_path: Path) -> None:
    async def scenario() -> None:
        mp = start(tmp_path)
        await mp.start()
        try:
            async with XdsClient(mp.xds_address, node_id="edge-1", cluster="edge") as xds, \
                    aiohttp.ClientSession() as s:
                await xds.send(type_url=types.CLUSTER)
                cds = await xds.recv_type(types.CLUSTER)
                await xds.ack(cds)
                clusters = sorted(names_of(cds))
                assert clusters == ["ratings", "reviews", "reviews/v1"]
                await xds.send(type_url=types.ENDPOINT, resource_names=clusters)
                eds = await xds.recv_type(types.ENDPOINT)
                await xds.ack(eds, resource_names=clusters)
                assert hosts(eds, "ratings") == []  # no endpoints yet: an empty assignment
                await xds.send(type_url=types.LISTENER)
                lds = await xds.recv_type(types.LISTENER)
                await xds.ack(lds)
                await xds.send(type_url=types.ROUTE, resource_names=["edge/http"])
                await xds.ack(await xds.recv_type(types.ROUTE), resource_names=["edge/http"])
                await xds.expect_silence(0.2)

                status, body = await call(s, mp, "POST", "/v1/registrations",
                                          {"service": "ratings", "address": "10.0.0.5:8080",
                                           "ttl": "300ms"})
                assert status == 201, body
                pushed = await xds.recv_type(types.ENDPOINT, timeout=5)
                assert names_of(pushed) == ["ratings"]  # SotW EDS: only what changed
                assert hosts(pushed, "ratings") == ["10.0.0.5:8080"]
                await xds.ack(pushed, resource_names=clusters)

                # No heartbeat: the TTL lapses, the sweep removes it, one more EDS push.
                expired = await xds.recv_type(types.ENDPOINT, timeout=5)
                assert names_of(expired) == ["ratings"] and hosts(expired, "ratings") == []
                await xds.ack(expired, resource_names=clusters)
                await xds.expect_silence(0.3)  # and nothing of any other type

                # A registration for a service no policy names is kept, unused.
                status, _ = await call(s, mp, "POST", "/v1/registrations",
                                       {"service": "later", "address": "10.0.0.9:80"})
                assert status == 201
                await xds.expect_silence(0.3)
            assert mp.controller.status.loads == 1  # the policy was never loaded again
            assert mp.metrics.discovery_updates._value.get() >= 2
        finally:
            await mp.stop()

    asyncio.run(scenario())


def test_endpoint_pushes_are_prepared_off_the_event_loop_and_redone_after_a_reload(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        mp = start(tmp_path)
        await mp.start()
        threads: list[str] = []
        original = mp.controller.prepare_endpoints
        reloaded = asyncio.Event()

        def prepare():  # type: ignore[no-untyped-def]
            threads.append(threading.current_thread().name)
            prepared = original()
            if len(threads) == 1:  # a reload lands while the first push is being prepared
                mp.controller.generation += 1
                reloaded.set()
            return prepared

        mp.controller.prepare_endpoints = prepare  # type: ignore[method-assign]
        try:
            assert await mp.snapshot_of("edge") is not None  # a view someone asked for
            mp.endpoints.register("ratings", "10.0.0.7", 8080, source="test")
            await asyncio.wait_for(reloaded.wait(), 5)
            for _ in range(200):
                snapshot = mp.cache.get("edge")
                assignment = snapshot.get(types.ENDPOINT).get("ratings") if snapshot else None
                if assignment is not None and b"10.0.0.7" in assignment.body:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the registration never reached the edge view")
            assert len(threads) == 2  # overtaken once, prepared again, then applied
            assert threading.main_thread().name not in threads
        finally:
            await mp.stop()

    asyncio.run(scenario())
