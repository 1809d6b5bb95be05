"""The dashboard's server side (runtime/dashboard.py), in process: the page and its assets are
served without a token but hold no data and keep the guard's Host and Origin rules; the state
and its event stream are operator-only; the stream sends a new state when the policy changes
and ends when the server stops; the service graph and the rollout and rate sections follow
their sources. The page itself, in a real browser: tests/e2e/test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
from samples import DISCOVERY_POLICY

from meshpilot.base import types
from meshpilot.runtime import dashboard
from meshpilot.runtime.app import Meshpilot, Settings
from meshpilot.runtime.dashboard import DashboardSources, dashboard_state, service_graph
from meshpilot.xds.snapshot import Snapshot


def make(tmp_path: Path, **overrides: Any) -> Meshpilot:
    policy = tmp_path / "policy"
    policy.mkdir(exist_ok=True)
    (policy / "shop.yaml").write_text(DISCOVERY_POLICY)
    # Plaintext xDS on purpose: these tests are about the admin port's dashboard.
    return Meshpilot(Settings(policy=policy, xds_address="127.0.0.1:0",
                              admin_address="127.0.0.1:0", watch=False, insecure_xds=True,
                              state_dir=tmp_path / "state", **overrides))


def run(mp: Meshpilot, scenario) -> None:
    async def main() -> None:
        await mp.start()
        try:
            async with aiohttp.ClientSession() as session:
                await scenario(session)
        finally:
            await mp.stop()

    asyncio.run(main())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def next_state(stream: aiohttp.StreamReader) -> dict[str, Any]:
    """The next `state` event of a server-sent event stream (keep-alive comments skipped)."""
    event, data = None, []
    while True:
        line = (await asyncio.wait_for(stream.readline(), 30)).decode()
        assert line, "the stream ended"
        line = line.rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            assert event == "state"
            return json.loads("\n".join(data))


def test_the_page_needs_no_token_holds_no_data_and_keeps_host_and_origin_rules(
        tmp_path: Path) -> None:
    mp = make(tmp_path)

    async def scenario(session: aiohttp.ClientSession) -> None:
        base = f"http://{mp.admin_address}"
        port = mp.admin_address.rsplit(":", 1)[1]
        for path, kind, asset in (("/", "text/html", "dashboard.html"),
                                  ("/dashboard", "text/html", "dashboard.html"),
                                  ("/dashboard/dashboard.js", "text/javascript", "dashboard.js"),
                                  ("/dashboard/dashboard.css", "text/css", "dashboard.css")):
            async with session.get(base + path) as r:
                assert r.status == 200 and r.content_type == kind, path
                # The package's file as it is: nothing of the process is written into it.
                assert await r.read() == dashboard.asset(asset)
                assert r.headers["Content-Security-Policy"] == dashboard.CONTENT_SECURITY_POLICY
                assert "script-src 'self'" in r.headers["Content-Security-Policy"]
                assert r.headers["X-Frame-Options"] == "DENY"
                assert r.headers["Cache-Control"] == "no-store"
        page = dashboard.asset("dashboard.html").decode()
        assert "<script>" not in page and "http" not in page.replace(
            "http://www.w3.org", "").replace("http-equiv", "")  # no inline script, no CDN
        # A rebinding page or another origin gets no page either (the guard's rules stand).
        async with session.get(base + "/dashboard", headers={"Host": f"evil.example:{port}"}) as r:
            assert r.status == 421
        async with session.get(base + "/dashboard",
                               headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
        # Other paths under /dashboard are not pages: they need a token, like unknown paths.
        for path in ("/dashboard/", "/dashboard/other.js", "/dashboard/dashboard.html"):
            async with session.get(base + path) as r:
                assert r.status == 401, path

    run(mp, scenario)


def test_the_state_and_its_stream_are_for_operators_only(tmp_path: Path) -> None:
    mp = make(tmp_path)

    async def scenario(session: aiohttp.ClientSession) -> None:
        base = f"http://{mp.admin_address}"
        registration = mp.tokens.issue("registration", "ratings")
        node = mp.tokens.issue("node", "edge")
        for path in (dashboard.DATA_PATH, dashboard.EVENTS_PATH):
            async with session.get(base + path) as r:
                assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
                assert "edge" not in await r.text()
            for token in (registration, node, "not-a-token"):
                async with session.get(base + path, headers=bearer(token)) as r:
                    assert r.status in (401, 403), (path, token)
            # A cookie is never a credential here, whatever it holds.
            operator = mp.tokens.issue("operator")
            async with session.get(base + path, headers={
                    "Cookie": f"token={operator}; meshpilot={operator}"}) as r:
                assert r.status == 401

    run(mp, scenario)


def test_the_stream_sends_the_state_again_when_the_policy_changes(tmp_path: Path) -> None:
    mp = make(tmp_path)
    policy = tmp_path / "policy" / "shop.yaml"

    async def scenario(session: aiohttp.ClientSession) -> None:
        base = f"http://{mp.admin_address}"
        headers = bearer(mp.tokens.issue("operator"))
        # The view is built by a config dump (as by a first Envoy): the graph shows it.
        async with session.get(base + "/debug/config_dump?view=edge", headers=headers) as r:
            assert r.status == 200
        async with session.get(base + dashboard.DATA_PATH, headers=headers) as r:
            assert r.status == 200
            state = await r.json()
        assert state["policy"]["ok"] is True and state["proxies"] == []
        # Rollouts and the metrics service's rates: none yet (no edit, no Envoy).
        assert state["rollouts"] == [] and state["request_rates"] == []
        edges = {(e["view"], e["cluster"]) for e in state["graph"]["edges"]}
        assert ("edge", "ratings") in edges and ("edge", "reviews/v1") in edges
        async with session.get(base + dashboard.EVENTS_PATH, headers=headers) as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            first = await next_state(r.content)
            assert first["graph"] == state["graph"]
            # A refused edit: the stream shows the refusal at its line; the graph stays.
            policy.write_text(DISCOVERY_POLICY.replace("name: ratings", "name: ratings\nbogus: 1"))
            await mp.controller.reload_async()
            refused = await next_state(r.content)
            assert refused["policy"]["ok"] is False
            assert any(re.match(r"shop\.yaml:\d+:\d+: Service ratings: bogus: unknown key", e)
                       for e in refused["policy"]["errors"]), refused["policy"]["errors"]
            assert refused["graph"] == state["graph"]
            # A good edit: a new cluster in the view's graph, without asking again.
            policy.write_text(DISCOVERY_POLICY.replace("[{service: ratings}]",
                                                       "[{service: ratings}, {service: extra}]")
                              + "---\nkind: Service\nname: extra\n")
            await mp.controller.reload_async()
            changed = await next_state(r.content)
            while ("edge", "extra") not in {(e["view"], e["cluster"])
                                            for e in changed["graph"]["edges"]}:
                changed = await next_state(r.content)  # the view is rebuilt after the load
            assert changed["policy"]["ok"] is True
        # Open streams end when the server stops (mp.stop() in run() returns; the test's
        # timeout would catch a stop held up by a stream).
        stream = await session.get(base + dashboard.EVENTS_PATH, headers=headers)
        await next_state(stream.content)
        await mp.stop()
        assert await asyncio.wait_for(stream.content.read(), 30) == b""
        stream.release()

    run(mp, scenario)


def test_an_open_stream_ends_when_its_token_no_longer_holds(tmp_path: Path) -> None:
    from meshpilot.ca.tokens import rotate_key

    mp = make(tmp_path)

    async def scenario(session: aiohttp.ClientSession) -> None:
        url = f"http://{mp.admin_address}{dashboard.EVENTS_PATH}"
        async with session.get(url, headers=bearer(mp.tokens.issue("operator"))) as r:
            await next_state(r.content)
            rotate_key(tmp_path / "state")  # every token issued so far stops working
            rest = await asyncio.wait_for(r.content.read(), 30)
            assert b"event: state" not in rest  # it ended, with nothing more sent
        # The running server uses the new key: a token it signs opens a stream again.
        async with session.get(url, headers=bearer(mp.tokens.issue("operator"))) as r:
            assert r.status == 200 and (await next_state(r.content))["policy"]["ok"]

    run(mp, scenario)


def test_too_many_streams_are_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(dashboard, "MAX_STREAMS", 2)
    mp = make(tmp_path)

    async def scenario(session: aiohttp.ClientSession) -> None:
        url = f"http://{mp.admin_address}{dashboard.EVENTS_PATH}"
        headers = bearer(mp.tokens.issue("operator"))
        streams = [await session.get(url, headers=headers) for _ in range(2)]
        for stream in streams:
            await next_state(stream.content)
        async with session.get(url, headers=headers) as r:
            assert r.status == 503 and "poll" in (await r.json())["error"]
        streams[0].close()
        await asyncio.sleep(0.5)  # let the server see the closed stream
        for _ in range(100):
            async with session.get(url, headers=headers) as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.1)
        assert r.status == 200
        streams[1].close()

    run(mp, scenario)


def _snapshot(view: str, clusters: list[str]) -> Snapshot:
    from envoy.config.cluster.v3.cluster_pb2 import Cluster

    return Snapshot.from_messages(view, {types.CLUSTER: [(name, Cluster(name=name))
                                                         for name in clusters]})


def test_the_service_graph_joins_views_envoys_clusters_and_rates() -> None:
    snapshots = [_snapshot("reviews", ["ratings"]), _snapshot("edge", ["reviews", "shop/v2"])]
    proxies = [{"node_id": "edge-1", "view": "edge"}, {"node_id": "edge-0", "view": "edge"},
               {"node_id": "reviews-a", "view": "reviews"}, {"node_id": "early", "view": None}]
    rates = [{"node": "edge-0", "view": "edge", "cluster": "reviews", "rq_per_s": 2.0,
              "err_per_s": 0.5, "updated": 1.0},
             {"node": "edge-1", "view": "edge", "cluster": "reviews", "rq_per_s": 1.5,
              "err_per_s": 0.0, "updated": 1.0},
             {"node": "edge-0", "view": "edge", "cluster": "", "rq_per_s": 4.0,
              "err_per_s": 0.5, "updated": 1.0}]
    graph = service_graph(snapshots, proxies, rates)
    assert graph["views"] == [
        {"view": "edge", "envoys": ["edge-0", "edge-1"], "clusters": 2, "rq_per_s": 4.0,
         "err_per_s": 0.5},
        {"view": "reviews", "envoys": ["reviews-a"], "clusters": 1, "rq_per_s": None,
         "err_per_s": None}]
    assert graph["clusters"] == ["ratings", "reviews", "shop/v2"]
    assert graph["edges"] == [
        {"view": "edge", "cluster": "reviews", "rq_per_s": 3.5, "err_per_s": 0.5},
        {"view": "edge", "cluster": "shop/v2", "rq_per_s": None, "err_per_s": None},
        {"view": "reviews", "cluster": "ratings", "rq_per_s": None, "err_per_s": None}]
    # Without a rate source every rate is None (the page says "no data"), not zero.
    assert all(e["rq_per_s"] is None for e in service_graph(snapshots, proxies, None)["edges"])


def test_open_streams_share_one_look_per_interval() -> None:
    looks = []

    async def fleet() -> dict[str, Any]:
        looks.append(1)
        return {"proxies": []}

    now = [100.0]
    shared = dashboard.SharedState(DashboardSources(
        proxies=fleet, status=lambda: {}, snapshots=lambda: []), lambda: now[0], max_age=0.25)

    async def scenario() -> None:
        texts = await asyncio.gather(*(shared.text() for _ in range(5)))  # five streams at once
        assert len(set(texts)) == 1 and json.loads(texts[0])["proxies"] == []
        assert (shared.computed, len(looks)) == (1, 1)
        now[0] += 0.1
        await shared.text()
        assert shared.computed == 1  # still fresh
        now[0] += 0.2
        await shared.text()
        assert (shared.computed, len(looks)) == (2, 2)

    asyncio.run(scenario())


def test_rollouts_and_rates_are_shown_as_their_sources_give_them() -> None:
    rollout = {"id": "r1", "view": "edge", "state": "watching", "started": 1.0,
               "canary": ["edge-0"], "total": 4, "error_rate": 0.02, "threshold": 0.05,
               "reason": None, "edit": "3f2a"}
    rate = {"node": "edge-0", "view": "edge", "cluster": "", "rq_per_s": 1.0,
            "err_per_s": 0.0, "updated": 2.0}

    async def fleet() -> dict[str, Any]:
        return {"proxies": [{"node_id": "edge-0", "view": "edge"}], "store_error": "down"}

    sources = DashboardSources(
        proxies=fleet, status=lambda: {"policy": {"ok": True}, "replica": "r-1"},
        snapshots=lambda: [_snapshot("edge", ["a"])],
        rollouts=lambda: [rollout], request_rates=lambda: [rate])
    state = asyncio.run(dashboard_state(sources))
    assert state["rollouts"] == [rollout] and state["request_rates"] == [rate]
    assert state["fleet_error"] == "down" and state["replica"] == "r-1"
    assert state["graph"]["views"][0]["rq_per_s"] == 1.0
    assert state["graph"]["views"][0]["envoys"] == ["edge-0"]
