"""The leading-edge debounce: an isolated save applied at its first completing event, a burst
still coalesced into one reload at its end, and a refused first reload of a file being written
in several steps never shown as the outcome when the steps end well.

The debouncer's timing on a manual clock (no real sleeps); the controller's held refusals and
the watcher's editors (truncate then write, write-aside and rename, vim's backup rename) on real
files and a real watcher."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from test_app import _ManualClock, clusters_yaml, get, until

from meshpilot.base import types
from meshpilot.runtime.app import Meshpilot, Settings
from meshpilot.runtime.controller import Controller
from meshpilot.runtime.watch import Debouncer
from meshpilot.xds.cache import SnapshotCache


class _Fires:
    """What a Debouncer called, with the clock's time."""

    def __init__(self, clock: _ManualClock):
        self.clock = clock
        self.fired: list[tuple[float, bool]] = []
        self.settled: list[float] = []

    def fire(self, leading: bool) -> None:
        self.fired.append((self.clock.time(), leading))

    def settle(self) -> None:
        self.settled.append(self.clock.time())


def _debouncer(leading: bool = True) -> tuple[_ManualClock, _Fires, Debouncer]:
    clock = _ManualClock()
    fires = _Fires(clock)
    d = Debouncer(fires.fire, quiet=0.1, max_wait=1.0, loop=clock,  # type: ignore[arg-type]
                  leading=leading, settled=fires.settle)
    return clock, fires, d


def test_an_isolated_save_fires_at_once_and_settles_after_the_quiet_period() -> None:
    clock, fires, d = _debouncer()
    clock.advance(5.0)
    d.poke(complete=False)  # the save's first steps: created, written
    clock.advance(0.002)
    d.poke(complete=True)  # closed after writing
    assert fires.fired == [(pytest.approx(5.002), True)]
    assert d.fired_burst_started == pytest.approx(5.0)  # convergence counts from the first
    assert fires.settled == []
    clock.advance(0.5)
    assert fires.settled == [pytest.approx(5.102)]
    assert fires.fired == [(pytest.approx(5.002), True)]  # nothing more
    # The next isolated save, long after: at once again.
    clock.advance(3.0)
    d.poke(complete=True)
    assert fires.fired[-1] == (pytest.approx(8.502), True)
    assert (d.leading_fires, d.trailing_fires) == (2, 0)


def test_a_burst_after_the_leading_fire_is_applied_once_at_its_end() -> None:
    clock, fires, d = _debouncer()
    d.poke(complete=True)  # the first file of a checkout
    for _ in range(10):  # the rest of it, 20 ms apart
        clock.advance(0.02)
        d.poke(complete=True)
    clock.advance(1.0)
    assert fires.fired == [(0.0, True), (pytest.approx(0.3), False)]
    assert d.fired_burst_started == pytest.approx(0.02)
    assert fires.settled == []  # the burst's end superseded the leading reload


def test_events_that_do_not_complete_a_file_wait_for_the_quiet_period() -> None:
    clock, fires, d = _debouncer()
    d.poke(complete=False)  # a file deleted (or renamed away): it may be on its way back
    clock.advance(0.05)
    assert fires.fired == []
    clock.advance(0.1)
    assert fires.fired == [(pytest.approx(0.1), False)]
    assert fires.settled == []


def test_a_burst_under_way_is_not_cut_by_a_completing_event() -> None:
    clock, fires, d = _debouncer()
    for _ in range(8):  # a sync tool: events 50 ms apart for 350 ms, none completing
        d.poke(complete=False)
        clock.advance(0.05)
    d.poke(complete=True)  # the burst began 400 ms ago: part of it, not a new save
    clock.advance(0.5)
    assert fires.fired == [(pytest.approx(0.5), False)]


def test_leading_off_is_the_quiet_period_debounce() -> None:
    clock, fires, d = _debouncer(leading=False)
    d.poke(complete=True)
    assert fires.fired == []
    clock.advance(0.2)
    assert fires.fired == [(pytest.approx(0.1), False)]
    assert fires.settled == []


# ----- the controller: a refused tentative reload is held -----------------------------------

SERVICE = """kind: Service
name: api
endpoints: ['127.0.0.1:9000']
"""
ROUTE = """kind: Gateway
name: edge
listeners: [{name: http, port: 10000}]
---
kind: Route
name: api
gateway: edge
hosts: [api.example.com]
rules: [{backends: [{service: api}]}]
"""


def _policy(tmp_path: Path) -> Path:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "route.yaml").write_text(ROUTE)
    (policy / "service.yaml").write_text(SERVICE)
    return policy


def test_a_refused_tentative_reload_is_held_then_superseded(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    controller = Controller(policy, SnapshotCache())
    assert controller.reload()
    loads = controller.status.loads

    async def scenario() -> None:
        (policy / "service.yaml").write_text(SERVICE[:20])  # half written: `api` is unknown
        assert await controller.reload_async(tentative=True) is False
        assert controller.held and "api" in str(controller.held[0])
        assert (controller.status.rejected, controller.status.error) == (0, [])
        (policy / "service.yaml").write_text(SERVICE.replace("9000", "9001"))
        assert await controller.reload_async() is True
        assert controller.held is None

    asyncio.run(scenario())
    assert (controller.status.rejected, controller.status.error) == (0, [])
    assert controller.status.loads == loads + 1  # the held attempt is not a load
    superseded = controller.metrics.policy_loads.labels("superseded")._value.get()
    rejected = controller.metrics.policy_loads.labels("rejected")._value.get()
    assert (superseded, rejected) == (1, 0)
    assert controller.model is not None
    service = controller.model.service("api")
    assert service is not None and service.endpoints[0].port == 9001


def test_a_held_refusal_is_reported_once_the_writes_settle(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    controller = Controller(policy, SnapshotCache())
    assert controller.reload()

    async def scenario() -> None:
        (policy / "service.yaml").write_text("kind: Service\nname: other\n"
                                             "endpoints: ['127.0.0.1:9000']\n")
        task = asyncio.create_task(controller.reload_async(tentative=True))
        await asyncio.sleep(0)  # loading on its worker thread
        controller.settle()  # the quiet period ended first: reported when the reload ends
        assert await task is False

    asyncio.run(scenario())
    assert controller.held is None
    assert controller.status.rejected == 1
    assert any("route.yaml" in e and "api" in e for e in controller.status.error)
    assert controller.metrics.policy_loads.labels("rejected")._value.get() == 1


# ----- the watcher, real files ----------------------------------------------------------------

def _settings(policy: Path, quiet: float) -> Settings:
    # A quiet period far longer than the test's waits: whatever is applied before it could end
    # was applied by the leading edge. Plaintext xDS: this is about reloads.
    return Settings(policy=policy, xds_address="127.0.0.1:0", admin_address="127.0.0.1:0",
                    insecure_xds=True, debounce_quiet=quiet, debounce_max=2 * quiet)


def _watch(tmp_path: Path, quiet: float, steps) -> Meshpilot:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "c.yaml").write_text(clusters_yaml("a"))
    mp = Meshpilot(_settings(policy, quiet))

    async def scenario() -> None:
        await mp.start()
        try:
            async def has(expected: list[str]) -> bool:
                snapshot = await mp.snapshot_of("edge")
                return snapshot is not None and sorted(snapshot.get(types.CLUSTER)) == expected

            assert await has(["a"])
            await steps(policy, has, mp)
        finally:
            await mp.stop()

    asyncio.run(scenario())
    return mp


def test_a_save_by_rename_is_applied_at_once(tmp_path: Path) -> None:
    async def steps(policy: Path, has, mp: Meshpilot) -> None:
        tmp = policy / ".c.yaml.tmp"
        tmp.write_text(clusters_yaml("a", "b"))
        os.replace(tmp, policy / "c.yaml")
        await until(lambda: has(["a", "b"]), timeout=20)

    mp = _watch(tmp_path, 60.0, steps)
    assert mp._debouncer is not None and mp._debouncer.leading_fires == 1
    assert mp.controller.status.rejected == 0


def test_vims_backup_rename_then_write_is_applied_at_once(tmp_path: Path) -> None:
    async def steps(policy: Path, has, mp: Meshpilot) -> None:
        os.rename(policy / "c.yaml", policy / "c.yaml~")  # writebackup: the original aside
        with open(policy / "c.yaml", "w") as f:  # the new text, then close
            f.write(clusters_yaml("a", "v"))
        (policy / "c.yaml~").unlink()
        await until(lambda: has(["a", "v"]), timeout=20)

    mp = _watch(tmp_path, 60.0, steps)
    assert mp._debouncer is not None and mp._debouncer.leading_fires == 1
    assert mp.controller.status.rejected == 0


def test_truncate_then_write_in_two_steps_never_shows_a_rejection(tmp_path: Path) -> None:
    """The first step leaves a broken file (closed, then written again): the leading reload of
    it is refused and held; the burst's end applies the whole file, and status never showed
    the refusal. Then a save that really is broken is reported after the quiet period."""
    seen: list[dict] = []

    async def steps(policy: Path, has, mp: Meshpilot) -> None:
        async def status() -> None:
            seen.append(json.loads((await get(mp, "/debug/status"))[1])["policy"])

        text = clusters_yaml("a", "t")
        with open(policy / "c.yaml", "w") as f:  # step one: truncated, half written, closed
            f.write(text[: len(text) // 2 + 3])

        async def held() -> bool:
            await status()
            return mp.controller.held is not None
        await until(held, timeout=20)  # the leading reload read step one, and was refused
        with open(policy / "c.yaml", "a") as f:  # step two: the rest
            f.write(text[len(text) // 2 + 3:])
        while not await has(["a", "t"]):
            await status()
            await asyncio.sleep(0.02)
        await status()
        # A broken save: refused at once (held), reported when the quiet period ends.
        with open(policy / "c.yaml", "w") as f:
            f.write(text.replace("clusters:", "clusters: {"))

        async def rejected() -> bool:
            return mp.controller.status.rejected == 1
        await until(rejected, timeout=30)
        assert await has(["a", "t"])  # the last good config keeps serving
        # The refused save is no edit to follow: the next one is counted from its own event.
        assert mp._edit_started is None

    # A quiet period long enough that step two, written once the leading reload is refused,
    # is part of the same burst even on a loaded machine.
    mp = _watch(tmp_path, 3.0, steps)
    assert len(seen) >= 2 and all(s["errors"] == [] and s["rejected"] == 0 for s in seen)
    assert mp.controller.metrics.policy_loads.labels("superseded")._value.get() == 1
    assert mp.controller.metrics.policy_loads.labels("rejected")._value.get() == 1


def test_which_events_complete_a_file(tmp_path: Path) -> None:
    from watchdog.events import (
        DirModifiedEvent,
        FileClosedEvent,
        FileDeletedEvent,
        FileModifiedEvent,
        FileMovedEvent,
    )

    from meshpilot.runtime.watch import _Handler, completes_a_file

    full, empty = tmp_path / "a.yaml", tmp_path / "b.yaml"
    full.write_text("kind: EnvoyResources\nname: a\n")
    empty.write_text("")
    assert completes_a_file(FileClosedEvent(str(full)))
    assert not completes_a_file(FileClosedEvent(str(empty)))  # truncated, closed: step one
    assert completes_a_file(FileMovedEvent(str(tmp_path / ".a.yaml.tmp"), str(full)))
    assert not completes_a_file(FileMovedEvent(str(full), str(tmp_path / "a.yaml~")))
    assert not completes_a_file(FileModifiedEvent(str(full)))
    assert not completes_a_file(FileDeletedEvent(str(full)))
    assert not completes_a_file(FileClosedEvent(str(tmp_path / "gone.yaml")))
    notified: list[bool] = []
    handler = _Handler(notified.append)
    handler.on_any_event(DirModifiedEvent(str(tmp_path)))  # watchdog's echo of each file event
    handler.on_any_event(FileClosedEvent(str(tmp_path / "notes.txt")))
    assert notified == []
    handler.on_any_event(FileModifiedEvent(str(full)))
    handler.on_any_event(FileClosedEvent(str(full)))
    assert notified == [False, True]
