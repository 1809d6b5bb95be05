"""On-demand views (runtime/views.py): built on a worker thread, shared by whoever asks at the
same time, and never stored when the serving state changed while they were being built."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from xds_client import snapshot_of, static_cluster

from meshpilot.base import types
from meshpilot.base.errors import PolicyError, PolicyIssue
from meshpilot.runtime.views import ViewBuilds
from meshpilot.xds.cache import SnapshotCache
from meshpilot.xds.snapshot import Snapshot


class FakeTranslation:
    """Builds a view with one cluster named after `label`; `gate` holds builds back."""

    def __init__(self, label: str, gate: threading.Event | None = None, fail: bool = False):
        self.label = label
        self.gate = gate
        self.fail = fail
        self.threads: list[threading.Thread] = []

    def snapshot(self, view: str) -> Snapshot:
        self.threads.append(threading.current_thread())
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail:
            raise PolicyError([PolicyIssue(f"cannot build {view}", kind="Plugin", name="p")])
        return snapshot_of(view, static_cluster(self.label))


class FakeServing:
    def __init__(self, translation: Any = None):
        self.translation = translation
        self.generation = 0
        self.failed: list[str] = []

    def view_failed(self, view: str, error: PolicyError) -> None:
        self.failed.append(view)

    def build_view(self, translation: Any, view: str) -> Snapshot:
        return translation.snapshot(view)  # type: ignore[no-any-return]


def clusters(snapshot: Snapshot | None) -> list[str]:
    assert snapshot is not None
    return sorted(snapshot.get(types.CLUSTER))


def test_nothing_is_built_before_a_first_valid_policy() -> None:
    serving = FakeServing()
    views = ViewBuilds(serving, SnapshotCache())
    assert asyncio.run(views.snapshot_of("edge")) is None


def test_one_build_on_a_worker_thread_for_everyone_asking() -> None:
    gate = threading.Event()
    translation = FakeTranslation("a", gate)
    cache = SnapshotCache()
    views = ViewBuilds(FakeServing(translation), cache)

    async def scenario() -> list[Snapshot | None]:
        woken: list[str] = []
        cache.watch("edge", lambda: woken.append("edge"))
        waiting = [asyncio.create_task(views.snapshot_of("edge")) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert views.building() == ("edge",)
        gate.set()
        results = await asyncio.gather(*waiting)
        assert woken == ["edge"]  # the cache's set woke the streams
        return results

    results = asyncio.run(scenario())
    assert len(translation.threads) == 1 and translation.threads[0] is not threading.main_thread()
    assert all(r is results[0] for r in results) and cache.get("edge") is results[0]
    assert views.building() == ()


def test_a_build_overtaken_by_a_change_is_not_stored_and_is_built_again() -> None:
    gate = threading.Event()
    old, new = FakeTranslation("old", gate), FakeTranslation("new")
    serving = FakeServing(old)
    cache = SnapshotCache()
    views = ViewBuilds(serving, cache)

    async def scenario() -> Snapshot | None:
        waiting = asyncio.create_task(views.snapshot_of("edge"))
        await asyncio.sleep(0.05)
        serving.translation, serving.generation = new, 1  # say, discovered endpoints changed
        gate.set()
        return await waiting

    assert clusters(asyncio.run(scenario())) == ["new"]
    assert clusters(cache.get("edge")) == ["new"]


def test_a_change_that_built_the_view_meanwhile_wins() -> None:
    gate = threading.Event()
    serving = FakeServing(FakeTranslation("old", gate))
    cache = SnapshotCache()
    views = ViewBuilds(serving, cache)
    reloaded = snapshot_of("edge", static_cluster("reloaded"))

    async def scenario() -> Snapshot | None:
        waiting = asyncio.create_task(views.snapshot_of("edge"))
        await asyncio.sleep(0.05)
        serving.generation = 1
        cache.set(reloaded)  # a reload built the view (a stream was waiting for it)
        gate.set()
        return await waiting

    assert asyncio.run(scenario()) is reloaded
    assert cache.get("edge") is reloaded


def test_a_view_that_cannot_be_built_is_reported_and_not_stored() -> None:
    serving = FakeServing(FakeTranslation("a", fail=True))
    cache = SnapshotCache()
    views = ViewBuilds(serving, cache)
    with pytest.raises(PolicyError, match="cannot build bad"):
        asyncio.run(views.snapshot_of("bad"))
    assert serving.failed == ["bad"] and cache.get("bad") is None

    async def unawaited() -> None:  # build_soon: reported the same, nobody waiting
        views.build_soon(["worse"])
        while views.building():
            await asyncio.sleep(0.01)

    asyncio.run(unawaited())
    assert serving.failed == ["bad", "worse"] and cache.get("worse") is None
