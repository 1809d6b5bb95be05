"""An edit's convergence is decided by counts, so each stream's settling costs the same
however many Envoys the edit waits for (`runtime/convergence.py`, issue 18)."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry, Histogram

from meshpilot.runtime.convergence import Convergence
from meshpilot.xds.snapshot import Snapshot


def _conn(conn_id: int, view: str, snapshot: Snapshot | None = None) -> SimpleNamespace:
    return SimpleNamespace(id=conn_id, view=view, node_id=f"envoy-{conn_id}",
                           stream=SimpleNamespace(snapshot=snapshot))


def test_an_edit_is_done_when_its_last_envoy_settles_or_goes() -> None:
    clock = iter(range(100, 200)).__next__
    histogram = Histogram("t_edit_seconds", "t", registry=CollectorRegistry())
    convergence = Convergence(histogram, lambda: float(clock()))
    snapshot = Snapshot("edge", {})
    targets = [_conn(i, "edge", snapshot) for i in range(1, 5)]
    elsewhere = _conn(9, "other", Snapshot("other", {}))
    edit = convergence.applied(50.0, [snapshot], [*targets, elsewhere])
    assert edit is not None and set(edit.targets) == {1, 2, 3, 4}
    convergence.settled(elsewhere)  # not one of the edit's Envoys
    convergence.settled(targets[0])
    convergence.settled(targets[0])  # twice: counted once
    convergence.settled(targets[1])
    assert edit.done is None and not edit.finished and edit.waiting == {3, 4}
    convergence.closed(targets[2])
    assert edit.done is None, "one Envoy still to settle"
    convergence.settled(targets[3])
    assert edit.finished and edit.done is not None
    assert (len(edit.converged), edit.gone) == (3, {3})
    assert edit.seconds() is not None and edit.seconds() > 0
