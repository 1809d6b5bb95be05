"""The snapshot cache: the newest snapshot of every view, and a wake-up for the streams on it.

The cache and the protocol meet at a narrow interface (go-control-plane's split): `set()` puts a
snapshot in, `watch()` registers a callback that is called (on the event loop, never while holding
anything) when a view's snapshot changes. Streams fetch the newest snapshot when they wake, so
several changes in a row reach a slow stream as one.
"""

from __future__ import annotations

from collections.abc import Callable

from meshpilot.xds.snapshot import Snapshot

ViewBuilder = Callable[[str], Snapshot]


class SnapshotCache:
    def __init__(self, builder: ViewBuilder | None = None):
        self._snapshots: dict[str, Snapshot] = {}
        self._watchers: dict[str, set[Callable[[], None]]] = {}
        self._builder = builder

    def set_builder(self, builder: ViewBuilder) -> None:
        self._builder = builder

    def get(self, view: str) -> Snapshot | None:
        return self._snapshots.get(view)

    def get_or_build(self, view: str) -> Snapshot | None:
        """The view's snapshot, built on first use: views no proxy has asked for cost nothing.

        None until a builder exists (no valid policy loaded yet): an Envoy is then sent nothing,
        rather than an empty config that would wipe what it already serves.
        """
        found = self._snapshots.get(view)
        if found is None and self._builder is not None:
            found = self._snapshots[view] = self._builder(view)
        return found

    def set(self, snapshot: Snapshot) -> bool:
        """Store a view's snapshot; wake its streams if its content changed. True if it did."""
        previous = self._snapshots.get(snapshot.view)
        if previous is not None and previous.version == snapshot.version:
            return False
        self._snapshots[snapshot.view] = snapshot
        for wake in tuple(self._watchers.get(snapshot.view, ())):
            wake()
        return True

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
