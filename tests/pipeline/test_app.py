"""The meshpilot process in-process: readiness, the admin API, hot reload through the watcher,
and what an Envoy is (not) sent while no valid policy exists."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import aiohttp
import grpc
import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from xds_client import XdsClient, names_of, node

from meshpilot.base import types
from meshpilot.ir.model import Model
from meshpilot.runtime.app import Meshpilot, Settings
from meshpilot.runtime.watch import Debouncer, is_policy_file
from meshpilot.translators.plugins import Plugin
from meshpilot.xds.redact import fingerprint

CLUSTERS = """kind: EnvoyResources
name: base
clusters:
{items}
"""

SECRET = """kind: EnvoyResources
name: certs
secrets:
  - name: edge-cert
    tls_certificate:
      certificate_chain: {inline_string: "-----BEGIN CERTIFICATE-----PUBLICPART"}
      private_key: {inline_string: "-----BEGIN PRIVATE KEY-----TOPSECRETKEY"}
"""


def clusters_yaml(*names: str) -> str:
    items = "\n".join(f"  - {{name: {n}, type: STATIC, connect_timeout: 1s}}" for n in names)
    return CLUSTERS.format(items=items)


def save(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def get(mp: Meshpilot, path: str) -> tuple[int, str]:
    """GET as an operator (the admin API's debug endpoints need an operator token)."""
    headers = {"Authorization": f"Bearer {mp.tokens.issue('operator')}"}
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://{mp.admin_address}{path}", headers=headers) as r:
        return r.status, await r.text()


def settings(policy: Path) -> Settings:
    # Plaintext, unauthenticated xDS on purpose: these tests are about reloads and the admin
    # API; tests/pipeline/test_xds_auth.py is about who may connect.
    return Settings(policy=policy, xds_address="127.0.0.1:0", admin_address="127.0.0.1:0",
                    insecure_xds=True,
                    debounce_quiet=0.02, debounce_max=1.0)


async def until(check, timeout: float = 10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out; last result {result!r}")
        await asyncio.sleep(0.02)


def test_nothing_is_sent_before_a_first_valid_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    save(policy / "c.yaml", "kind: EnvoyResources\nname: x\nclusters: [{name: a, tipe: STATIC}]\n")

    async def scenario() -> None:
        mp = Meshpilot(settings(policy))
        await mp.start()
        try:
            assert (await get(mp, "/readyz"))[0] == 503
            status = json.loads((await get(mp, "/debug/status"))[1])
            assert status["policy"]["ok"] is False
            assert any("c.yaml:3:" in e and '"tipe"' in e for e in status["policy"]["errors"])
            async with XdsClient(mp.xds_address) as client:
                await client.send(node=node("n1", "edge"), type_url=types.CLUSTER)
                # An empty CDS response would wipe a reconnecting Envoy's clusters: send nothing.
                await client.expect_silence(0.5)
                save(policy / "c.yaml", clusters_yaml("a", "b"))
                response = await client.recv(timeout=10)
                assert sorted(names_of(response)) == ["a", "b"]
            assert (await get(mp, "/readyz"))[0] == 200
        finally:
            await mp.stop()

    asyncio.run(scenario())


def test_watcher_applies_new_deleted_and_renamed_files(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    (policy / "nested").mkdir(parents=True)
    save(policy / "a.yaml", clusters_yaml("a"))

    async def scenario() -> None:
        mp = Meshpilot(settings(policy))
        await mp.start()
        try:
            async def clusters() -> list[str]:
                snapshot = await mp.snapshot_of("edge")  # built on a worker thread if need be
                return sorted(snapshot.get(types.CLUSTER)) if snapshot else []

            async def has(expected: list[str]) -> bool:
                return await clusters() == expected

            assert await clusters() == ["a"]
            (policy / "nested" / "b.yaml").write_text(clusters_yaml("b").replace("base", "more"))
            await until(lambda: has(["a", "b"]))
            (policy / "a.yaml").unlink()
            await until(lambda: has(["b"]))
            # Editors' temporary files are ignored; the rename into place is seen.
            save(policy / "nested" / "b.yaml", clusters_yaml("b", "c").replace("base", "more"))
            await until(lambda: has(["b", "c"]))
            # A half-written file is refused, then applied once complete.
            half = clusters_yaml("b", "c", "d").replace("base", "more")
            (policy / "nested" / "b.yaml").write_text(half[: len(half) // 2 + 7])
            await until(lambda: _rejected(mp))
            assert await clusters() == ["b", "c"]
            (policy / "nested" / "b.yaml").write_text(half)
            await until(lambda: has(["b", "c", "d"]))
            # A hostile edit, nested 200,000 levels deep: refused at its position (whichever YAML
            # layer refuses it first), and the last good config keeps serving.
            save(policy / "deep.yaml", "[" * 200_000)
            await until(lambda: _rejected(mp))
            (issue,) = mp.controller.status.error
            assert issue.startswith("deep.yaml:1:"), issue
            assert await clusters() == ["b", "c", "d"]
            (policy / "deep.yaml").unlink()
            await until(lambda: _accepted(mp))
            assert await clusters() == ["b", "c", "d"]
        finally:
            await mp.stop()

    asyncio.run(scenario())


async def _rejected(mp: Meshpilot) -> bool:
    return bool(mp.controller.status.error)


async def _accepted(mp: Meshpilot) -> bool:
    return not mp.controller.status.error


def test_admin_endpoints_and_config_dump_redacts_secrets(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    save(policy / "c.yaml", clusters_yaml("a"))
    save(policy / "s.yaml", SECRET)

    async def scenario() -> None:
        mp = Meshpilot(settings(policy))
        await mp.start()
        try:
            assert await get(mp, "/healthz") == (200, "ok\n")
            assert (await get(mp, "/readyz"))[0] == 200
            async with XdsClient(mp.xds_address) as client:
                await client.send(node=node("edge-1", "edge"), type_url=types.CLUSTER)
                await client.ack(await client.recv())
                await until(lambda: _acked(mp))
                status, body = await get(mp, "/debug/proxies")
                proxy = json.loads(body)["proxies"][0]
                assert proxy["node_id"] == "edge-1" and proxy["view"] == "edge"
                assert proxy["types"]["clusters"]["status"] == "SYNCED"
                status, body = await get(mp, "/debug/config_dump?node=edge-1")
                assert status == 200
                dump = json.loads(body)
                assert [c["name"] for c in dump["resources"]["clusters"]] == ["a"]
                assert "TOPSECRETKEY" not in body
                assert fingerprint("-----BEGIN PRIVATE KEY-----TOPSECRETKEY") in body
                assert "PUBLICPART" in body  # certificates are not secret
            status, metrics = await get(mp, "/metrics")
            assert "meshpilot_xds_acks_total" in metrics and "meshpilot_policy_loads_total" in metrics
            assert (await get(mp, "/debug/config_dump?node=nobody"))[0] == 404
        finally:
            await mp.stop()

    asyncio.run(scenario())


async def _acked(mp: Meshpilot) -> bool:
    proxies = mp.registry.describe()
    return bool(proxies) and proxies[0]["types"]["clusters"]["acks"] == 1


def test_views_first_asked_for_are_built_once_off_the_event_loop(tmp_path: Path) -> None:
    """A view is translated only when a stream (or a config dump) asks for it, on a worker
    thread, once however many streams ask at the same time; a view a plugin fails for ends its
    streams with the error, is shown in /debug/status, and is sent nothing."""
    policy = tmp_path / "policy"
    policy.mkdir()
    save(policy / "c.yaml", clusters_yaml("a"))
    calls: list[tuple[str, threading.Thread]] = []

    def plugin(model: Model, view: str) -> list[Cluster]:
        calls.append((view, threading.current_thread()))
        if view == "bad":
            raise ValueError("no such tenant")
        return [Cluster(name=f"for-{view}", type=Cluster.STATIC)]

    async def scenario() -> None:
        mp = Meshpilot(settings(policy), plugins=[Plugin(plugin, "tenants")])
        await mp.start()
        try:
            assert calls == []  # no view asked for: none computed
            clients = [XdsClient(mp.xds_address) for _ in range(3)]
            for client in clients:
                await client.__aenter__()
            try:
                await asyncio.gather(*(c.send(node=node(f"n{i}", "edge"), type_url=types.CLUSTER)
                                       for i, c in enumerate(clients)))
                for client in clients:
                    assert sorted(names_of(await client.recv())) == ["a", "for-edge"]
            finally:
                for client in clients:
                    await client.close()
            assert [view for view, _ in calls] == ["edge"]  # one build for the three streams

            async with XdsClient(mp.xds_address) as client:
                await client.send(node=node("b1", "bad"), type_url=types.CLUSTER)
                assert await client.wait_closed() == grpc.StatusCode.UNKNOWN
            status = json.loads((await get(mp, "/debug/status"))[1])
            assert status["policy"]["errors"] == [
                "Plugin tenants: view 'bad': raised ValueError: no such tenant"]
            assert status["views"]["edge"] is not None and "bad" not in status["views"]

            # A config dump builds a view no stream asked for, the same way.
            code, body = await get(mp, "/debug/config_dump?view=other")
            assert code == 200 and "for-other" in body
            assert all(thread is not threading.main_thread() for _, thread in calls)
        finally:
            await mp.stop()

    asyncio.run(scenario())


class _Timer:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled


class _ManualClock:
    """The two loop methods a Debouncer uses, on a clock the test moves: the timing is the
    test's, not the machine's (real sleeps stretch on a loaded machine)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, _Timer]] = []
        self._count = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Timer:
        handle = _Timer(callback)
        self._count += 1
        self._timers.append((when, self._count, handle))
        return handle

    def advance(self, seconds: float) -> None:
        """Move the clock, running each due timer at its own time, in order."""
        target = self.now + seconds
        while True:
            due = sorted((t for t in self._timers if t[0] <= target and not t[2].cancelled()),
                         key=lambda t: t[:2])
            if not due:
                break
            when, _, handle = due[0]
            self._timers.remove(due[0])
            self.now = when
            handle.callback()
        self.now = target


def test_debouncer_waits_for_quiet_but_not_past_max_wait() -> None:
    clock = _ManualClock()
    fired: list[float] = []
    d = Debouncer(lambda _: fired.append(clock.time()), quiet=0.05, max_wait=0.3,
                  loop=clock)  # type: ignore[arg-type]
    for _ in range(5):  # a burst, 10 ms apart: one reload, 50 ms after the last event
        d.poke()
        clock.advance(0.01)
    clock.advance(0.15)
    assert fired == [pytest.approx(0.09)]
    assert d.fired_burst_started == 0.0
    fired.clear()
    start = clock.time()
    for _ in range(30):  # never quiet for 50 ms: fired by max_wait, then after the end
        d.poke()
        clock.advance(0.02)
    clock.advance(0.15)
    # The first fire at max_wait (0.3 s); the events after it start a new burst, fired at its
    # own max_wait (0.6 s), as the last event (0.58 s) is less than `quiet` before it.
    assert [t - start for t in fired] == [pytest.approx(0.3), pytest.approx(0.6)]


def test_policy_file_filter() -> None:
    assert is_policy_file("/p/a.yaml") and is_policy_file("/p/b.yml")
    assert not is_policy_file("/p/.a.yaml.swp") and not is_policy_file("/p/a.yaml~")
    assert not is_policy_file("/p/.hidden.yaml") and not is_policy_file("/p/notes.txt")


def test_reloads_never_overlap_and_the_newest_files_win(tmp_path: Path) -> None:
    from meshpilot.runtime.controller import Controller
    from meshpilot.xds.cache import SnapshotCache

    policy = tmp_path / "policy"
    policy.mkdir()
    save(policy / "c.yaml", clusters_yaml("old"))
    controller = Controller(policy, SnapshotCache())

    async def scenario() -> None:
        first = asyncio.create_task(controller.reload_async())
        await asyncio.sleep(0)  # the first reload is now loading on its worker thread
        save(policy / "c.yaml", clusters_yaml("new"))
        assert await controller.reload_async() is False  # folded into the running one
        assert await first is True

    asyncio.run(scenario())
    assert controller.status.loads == 2  # the running reload went round once more
    assert [r.name for r in controller.model.raw] == ["new"]
