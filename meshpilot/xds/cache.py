"""The snapshot cache: the newest snapshot of every view, and a wake-up for the streams on it.

The cache and the protocol meet at a narrow interface (go-control-plane's split): `set()` puts a
snapshot in, `watch()` registers a callback that is called (on the event loop, never while holding
anything) when a view's snapshot changes. Streams fetch the newest snapshot when they wake, so
several changes in a row reach a slow stream as one.

It stores snapshots; it never makes one. A view with no snapshot yet is built by whoever owns the
translation (meshpilot.runtime: on a worker thread), which then `set()`s it, waking its streams.
"""

from __future__ import annotations

from collections.abc import Callable

from meshpilot.xds.snapshot import Snapshot


class SnapshotCache:
    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._watchers: dict[str, set[Callable[[], None]]] = {}

    def get(self, view: str) -> Snapshot | None:
        """The view's newest snapshot; None if none was set (not built yet, or no valid policy
        yet: an Envoy is then sent nothing, rather than an empty config that would wipe what it
        already serves)."""
        return self._snapshots.get(view)

    def set(self, snapshot: Snapshot) -> bool:
        """Store a view's snapshot; wake its streams if its content changed. True if it did."""
        previous = self._snapshots.get(snapshot.view)
        if previous is not None and previous.version == snapshot.version:
            return False
        if previous is not None:
            snapshot.follows(previous)
        self._snapshots[snapshot.view] = snapshot
        for wake in tuple(self._watchers.get(snapshot.view, ())):
            wake()
        return True

    def wake(self, view: str) -> None:
        """Wake the view's streams without a new snapshot: what one of them follows changed
        (a rollout promoted or rolled back, `XdsServer`'s `follow`)."""
        for wake in tuple(self._watchers.get(view, ())):
            wake()

    def views(self) -> tuple[str, ...]:
        return tuple(sorted(self._snapshots))

    def watched_views(self) -> tuple[str, ...]:
        return tuple(sorted(v for v, w in self._watchers.items() if w))

    def all_views(self) -> tuple[str, ...]:
        """Views with a snapshot or with streams waiting for one."""
        return tuple(sorted(set(self._snapshots) | set(self.watched_views())))

    def watch(self, view: str, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake()` whenever `view` changes; returns a function that stops watching."""
        self._watchers.setdefault(view, set()).add(wake)

        def cancel() -> None:
            watchers = self._watchers.get(view)
            if watchers is not None:
                watchers.discard(wake)
                if not watchers:
                    del self._watchers[view]

        return cancel
