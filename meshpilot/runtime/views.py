"""Views first asked for after a reload: translated on a worker thread, then put in the cache.

A reload builds every view that has a snapshot or a stream waiting for one. A view asked for
later (an Envoy of a new node cluster connects, a config dump names it) is built here, on demand:
a view nobody asked for is never computed, and translating never runs on the event loop, where
it would stall every stream. The cache only stores what is built; setting the snapshot wakes
the streams watching the view.

Many streams asking for the same new view at once share one build. A build that finishes after
the serving state changed (a reload, discovered endpoints, renewed certificates) is not stored:
the change may have built the view already, and otherwise it is built again from the newest
state, so a stale snapshot never replaces a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Protocol

from meshpilot.base.errors import PolicyError
from meshpilot.translators import Translation
from meshpilot.xds.cache import SnapshotCache
from meshpilot.xds.snapshot import Snapshot


class Serving(Protocol):
    """What on-demand builds read of the controller."""

    @property
    def translation(self) -> Translation | None:
        """The serving translation; None before a first valid policy."""

    @property
    def generation(self) -> int:
        """Changes whenever the serving translation or the snapshots built from it change."""

    def view_failed(self, view: str, error: PolicyError) -> None:
        """Report a view that cannot be built (shown in /debug/status); on the event loop."""

    def build_view(self, translation: Translation, view: str) -> Snapshot:
        """The view's snapshot from `translation`, checked as a reload is (PolicyError if it
        cannot be served); called on a worker thread."""


class ViewBuilds:
    def __init__(self, serving: Serving, cache: SnapshotCache):
        self.serving = serving
        self.cache = cache
        self._pending: dict[str, asyncio.Task[Snapshot | None]] = {}

    async def snapshot_of(self, view: str) -> Snapshot | None:
        """The view's snapshot, built first if there is none yet; None while no valid policy is
        loaded (nothing must be sent then). PolicyError if the view cannot be built: a plugin
        failing for it, reported to the controller."""
        found = self.cache.get(view)
        if found is not None or self.serving.translation is None:
            return found
        # Shielded: a stream that goes away while waiting must not cancel the others' build.
        return await asyncio.shield(self._build_soon(view))

    def build_soon(self, views: Iterable[str]) -> None:
        """Start building `views` (those without a snapshot), without waiting for them."""
        for view in views:
            if self.cache.get(view) is None and self.serving.translation is not None:
                self._build_soon(view)

    def building(self) -> tuple[str, ...]:
        return tuple(sorted(self._pending))

    def cancel(self) -> None:
        """Stop waiting for the builds under way (the process stops); their threads finish on
        their own, and what they built is dropped."""
        for task in tuple(self._pending.values()):
            task.cancel()

    def _build_soon(self, view: str) -> asyncio.Task[Snapshot | None]:
        task = self._pending.get(view)
        if task is None:
            task = self._pending[view] = asyncio.get_running_loop().create_task(self._build(view))
            task.add_done_callback(self._done(view))
        return task

    def _done(self, view: str) -> Callable[[asyncio.Task[Snapshot | None]], None]:
        def done(task: asyncio.Task[Snapshot | None]) -> None:
            if self._pending.get(view) is task:
                del self._pending[view]
            if not task.cancelled():
                # Retrieved, so a failure no stream waited for is not logged again by asyncio:
                # the controller has reported it.
                with contextlib.suppress(PolicyError):
                    task.result()
        return done

    async def _build(self, view: str) -> Snapshot | None:
        while True:
            found = self.cache.get(view)
            translation = self.serving.translation
            if found is not None or translation is None:
                return found
            generation = self.serving.generation
            try:
                snapshot = await asyncio.to_thread(self.serving.build_view, translation, view)
            except PolicyError as e:
                if self.serving.generation != generation:
                    continue  # failed on a state that is no longer served: try the newest
                self.serving.view_failed(view, e)
                raise
            if self.serving.generation == generation:
                self.cache.set(snapshot)  # wakes the streams on the view
                return snapshot
            # The serving state changed while this view was built: it may have built the view
            # (a stream was waiting for it), else the loop builds it again from the newest state.
