"""Convergence bookkeeping without sockets: which Envoys an edit waits for, an edit overtaken
by a newer one, an Envoy that goes away, the histogram."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from meshpilot.runtime.convergence import Convergence
from meshpilot.xds.resources import ResourceMap
from meshpilot.xds.snapshot import Snapshot
from meshpilot.xds.status import ProxyRegistry
from meshpilot.xds.stream import XdsStream


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def setup(views: list[str]):
    registry = CollectorRegistry()
    histogram = Histogram("h_seconds", "h", registry=registry)
    clock = Clock()
    proxies = ProxyRegistry()
    conns = []
    for view in views:
        conn = proxies.open(XdsStream(delta=False, ads=True), "peer", 0.0)
        conn.view = view
        conns.append(conn)
    return Convergence(histogram, clock), clock, conns, registry


def snap(view: str, n: int) -> Snapshot:
    """A distinct snapshot of `view` per `n`."""
    type_url = f"type.googleapis.com/x{n}"
    return Snapshot(view, {type_url: ResourceMap(type_url)})


def count(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("h_seconds_count") or 0.0


def test_an_edit_waits_for_the_envoys_of_its_views_only() -> None:
    tracker, clock, (a, b, other), registry = setup(["edge", "edge", "mesh"])
    new = snap("edge", 1)
    edit = tracker.applied(99.9, [new], [a, b, other])
    assert edit is not None and sorted(edit.targets) == [a.id, b.id]
    clock.now = 100.02
    a.stream.on_snapshot(new)
    tracker.settled(a)
    assert edit.line(clock.now) == (f"edit {edit.id}: 1 of 2 Envoys so far, 120 ms since the "
                                    "file event")
    other.stream.on_snapshot(snap("mesh", 2))
    tracker.settled(other)  # not a target
    b.stream.on_snapshot(snap("edge", 0))
    tracker.settled(b)  # idle on another snapshot: not converged on this edit
    assert edit.done is None and count(registry) == 0
    clock.now = 100.041
    b.stream.on_snapshot(new)
    tracker.settled(b)
    assert edit.line(clock.now) == f"edit {edit.id}: 2 of 2 Envoys in 141 ms"
    assert count(registry) == 1
    tracker.settled(b)  # again: observed once
    assert count(registry) == 1


def test_an_envoy_on_a_newer_edit_has_converged_on_the_older_one_too() -> None:
    tracker, _, (a,), registry = setup(["edge"])
    first = tracker.applied(100.0, [snap("edge", 1)], [a])
    second = tracker.applied(100.0, [snap("edge", 2)], [a])
    assert first is not None and second is not None and first.id != second.id
    a.stream.on_snapshot(snap("edge", 2))
    tracker.settled(a)
    assert first.done is not None and second.done is not None
    assert count(registry) == 2


def test_an_envoy_gone_is_not_waited_for_and_nobody_connected_is_said() -> None:
    tracker, clock, (a, b), registry = setup(["edge", "edge"])
    edit = tracker.applied(99.0, [snap("edge", 1)], [a, b])
    a.stream.on_snapshot(snap("edge", 1))
    tracker.settled(a)
    tracker.closed(b)
    assert edit is not None and edit.line(clock.now).endswith("1 of 2 Envoys in 1000 ms, "
                                                              "1 disconnected")
    lonely = tracker.applied(99.5, [snap("mesh", 3)], [a, b])
    assert lonely is not None
    assert lonely.line(clock.now) == f"edit {lonely.id}: no Envoy connected to its views; " \
                                     "applied in 500 ms"
    assert count(registry) == 1  # an edit nobody received is no convergence
    assert tracker.applied(99.0, [], [a]) is None  # a reload that changed nothing
    assert [e["id"] for e in tracker.describe()["edits"]] == [lonely.id, edit.id]
