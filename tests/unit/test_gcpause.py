"""base/gcpause.py: a pause counts what it built as old, and leaves a server's freeze alone."""

from __future__ import annotations

import gc

import pytest

from meshpilot.base import gcpause


def test_what_a_pause_built_is_counted_old_and_the_collector_is_back_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # No server froze this process's heap (an in-process server of an earlier test may have).
    monkeypatch.setattr(gcpause, "_frozen", False)
    assert gc.isenabled()
    with gcpause.collection_paused():
        assert not gc.isenabled()
        built = [[] for _ in range(5000)]
    assert gc.isenabled()
    # Moved to the oldest generation: no young pass will scan them again.
    assert gc.get_count()[0] < 100
    assert len(built) == 5000


def test_after_a_freeze_for_life_a_pause_never_unfreezes(monkeypatch: pytest.MonkeyPatch) -> None:
    # As freeze_for_life would, but undone at the end so the rest of the run is unaffected.
    monkeypatch.setattr(gcpause, "_frozen", True)
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with gcpause.collection_paused():
            built = [[] for _ in range(5000)]
        assert gc.get_freeze_count() == frozen and gc.isenabled() and len(built) == 5000
    finally:
        gc.unfreeze()


def test_the_end_of_a_pause_does_not_ask_cpython_for_the_freeze_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """gc.get_freeze_count() walks every frozen object: asked per pause, a server with a large
    policy frozen paid for its whole heap on every view it built."""
    def walked() -> int:
        raise AssertionError("gc.get_freeze_count() called")

    monkeypatch.setattr(gc, "get_freeze_count", walked)
    with gcpause.collection_paused():
        pass
