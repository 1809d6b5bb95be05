"""The controller: policy on disk in, snapshots in the cache out, the last good config kept.

A reload either replaces the whole model (every document valid) or changes nothing: the error is
logged, counted and shown in `/debug/status`, and every Envoy keeps the snapshot it had. A plugin
failing for a view counts as a policy error (`PluginError`), with the same outcome.

Loading and translating run on worker threads, never on the event loop: a reload's on its own
thread, a view first asked for after a reload by `views` (`ViewBuilds`, runtime/views.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshpilot.base import memory
from meshpilot.base.errors import PolicyError, PolicyIssue
from meshpilot.discovery.registry import EndpointRegistry
from meshpilot.inputs.loader import PolicyLoader
from meshpilot.ir.model import Model, ObjectStatus, clear_caches
from meshpilot.runtime.metrics import Metrics
from meshpilot.runtime.prepush import CheckFailed, PrePush
from meshpilot.runtime.views import ViewBuilds
from meshpilot.translators import Translation
from meshpilot.translators.mtls import IdentitySource
from meshpilot.translators.plugins import Plugin, as_plugins
from meshpilot.xds.cache import SnapshotCache
from meshpilot.xds.snapshot import Snapshot

log = logging.getLogger("meshpilot.runtime.controller")

# A reload whose views hold at least this many resources fewer than before, and at most half
# as many, gives the memory of the difference back to the system (base/memory.py) once the
# streams have moved on from the old snapshots.
RELEASE_AFTER_DROP = 2_000
RELEASE_DELAY = 2.0  # seconds after such a reload


@dataclass
class PolicyStatus:
    path: str
    loads: int = 0
    rejected: int = 0
    last_attempt: float | None = None
    last_success: float | None = None
    applied_files: tuple[str, ...] = ()
    error: list[str] = field(default_factory=list)  # issues of the newest attempt, if it failed
    objects: tuple[ObjectStatus, ...] = ()  # what the formats said of the applied documents

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.path, "loads": self.loads, "rejected": self.rejected,
            "last_attempt": self.last_attempt, "last_success": self.last_success,
            "ok": not self.error and self.last_success is not None,
            "applied_files": list(self.applied_files), "errors": list(self.error),
            "objects": [describe_object(o) for o in self.objects],
        }


def describe_object(status: ObjectStatus) -> dict[str, Any]:
    """One object's status as JSON, its conditions as kubectl shows them."""
    return {
        "kind": status.kind, "name": status.name, "parent": status.parent,
        "at": None if status.position is None else str(status.position),
        "conditions": [{"type": c.type, "status": c.status, "reason": c.reason,
                        "message": c.message} for c in status.conditions],
        **dict(status.details),
    }


@dataclass
class _Prepared:
    issues: tuple[PolicyIssue, ...] = ()
    model: Model | None = None
    translation: Translation | None = None
    snapshots: list[Snapshot] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class PreparedEndpoints:
    """Discovered endpoints made into snapshots off the loop, to be swapped in on it."""

    counts: dict[str, int] = field(default_factory=dict)  # instances per source
    changed: set[str] = field(default_factory=set)  # services whose endpoints changed
    translation: Translation | None = None  # with the new endpoints; None: nothing to apply
    snapshots: list[tuple[Snapshot, Snapshot]] = field(default_factory=list)  # (old, new)
    seconds: float = 0.0


class Controller:
    def __init__(self, policy_path: str | Path, cache: SnapshotCache,
                 metrics: Metrics | None = None, plugins: Iterable[Plugin | object] = (),
                 endpoints: EndpointRegistry | None = None,
                 identities: IdentitySource | None = None,
                 allowed_files: Iterable[Path] = (), prepush: PrePush | None = None):
        """`allowed_files`: folders besides the policy folder the policy may name files in.
        `prepush`: Envoy's own check of what each reload changes (runtime/prepush.py); a
        refusal rejects the reload like any policy error. None: no check."""
        self.policy_path = Path(policy_path)
        # Keeps each file's parse between reloads: only changed files are parsed again.
        self.loader = PolicyLoader(self.policy_path, allowed_files)
        # The mesh CA's workload certificates (meshpilot.ca.WorkloadIdentities), or None.
        self.identities = identities
        self.plugins = as_plugins(plugins)  # made once: their conversion caches outlive reloads
        self.cache = cache
        self.metrics = metrics or Metrics()
        self.status = PolicyStatus(str(self.policy_path))
        self.prepush = prepush
        # Called on the loop with the snapshots a successful reload changed (convergence).
        self.on_applied: Callable[[list[Snapshot]], None] | None = None
        # Called on the loop just before `on_applied`, with each changed view's (previous
        # snapshot or None, new snapshot): staged rollouts keep the previous one for some.
        self.on_replaced: Callable[[list[tuple[Snapshot | None, Snapshot]]], None] | None = None
        self.model: Model | None = None
        self.translation: Translation | None = None
        # Counts changes of `translation` or of the snapshots made from it: a view built on
        # demand is only stored if none happened meanwhile (ViewBuilds).
        self.generation = 0
        self.views = ViewBuilds(self, cache)  # views first asked for after a reload
        self._reloading = False
        self._reload_again = False
        self._again_tentative = True  # every reload asked for meanwhile was tentative
        self._held: _Prepared | None = None  # a refused tentative reload (`held`)
        self._settle_requested = False
        self.release_due = False  # the newest reload shrank the policy (`release_memory`)
        self.memory_releases = 0
        self.tls_files: frozenset[str] = frozenset()  # TLS files the policy names (absolute)
        # Discovered instances (meshpilot.discovery), added to the policy's endpoints.
        self.endpoints = endpoints
        self._endpoints_pending = False
        self._endpoints_lock = asyncio.Lock()
        self._endpoint_tasks: set[asyncio.Task[None]] = set()
        self._sources_seen: set[str] = set()

    @property
    def reloading(self) -> bool:
        """A reload is being prepared or applied (`reload_async`)."""
        return self._reloading

    @property
    def ready(self) -> bool:
        return self.translation is not None

    def reload(self) -> bool:
        """Load the policy; apply it to every view if valid. True if the new policy is serving."""
        prepared = self._prepare(self.cache.all_views())
        applied = self._apply_prepared(prepared)
        if self.release_due:  # no streams to wait for here: the old snapshots are gone
            del prepared
            self.release_memory()
        return applied

    async def reload_async(self, tentative: bool = False) -> bool:
        """`reload()` with loading and translation on a worker thread, so xDS streams keep being
        served meanwhile. Reloads never overlap: one requested while another runs is done after
        it, once, with the newest files.

        `tentative`: a leading-edge reload (runtime/watch.py), begun at the first event of what
        may be a burst. If it is refused, the refusal is held, not reported: the next reload
        supersedes it (the burst's end), or `settle()` reports it (no more events came)."""
        if self._reloading:
            self._reload_again = True
            self._again_tentative = self._again_tentative and tentative
            return False
        self._reloading = True
        try:
            while True:
                self._reload_again = False
                if not tentative:
                    self._drop_held()
                prepared = await asyncio.to_thread(self._prepare, self.cache.all_views())
                if tentative and prepared.translation is None and (
                        self._reload_again or not self._settle_requested):
                    self._hold(prepared)
                    applied = False
                else:
                    applied = self._apply_prepared(prepared)
                if applied:
                    # Views first asked for while this reload was being prepared (streams that
                    # connected meanwhile): built on demand now, from the new translation.
                    self.views.build_soon(self.cache.watched_views())
                    if self.release_due:
                        self.release_due = False
                        self._schedule_release()
                self._settle_requested = False
                if not self._reload_again:
                    return applied
                tentative, self._again_tentative = self._again_tentative, True
        finally:
            self._reloading = False

    @property
    def held(self) -> tuple[PolicyIssue, ...] | None:
        """The issues of a refused tentative reload, held until it is settled or superseded."""
        return None if self._held is None else self._held.issues

    def settle(self) -> None:
        """The events after a tentative reload have stopped: a refusal it got is reported now
        (counted, shown in status, logged), as a reload's refusal is. Called on the loop."""
        if self._reloading:
            self._settle_requested = True  # reported when the running reload ends
            return
        held, self._held = self._held, None
        if held is not None:
            self._apply_prepared(held)

    def _hold(self, prepared: _Prepared) -> None:
        self._held = prepared
        log.info("a first reload of the files being written was refused (%d problems); "
                 "waiting for the writes to settle before reporting it", len(prepared.issues))

    def _drop_held(self) -> None:
        if self._held is not None:
            self._held = None
            self.metrics.policy_loads.labels("superseded").inc()

    def _prepare(self, views: tuple[str, ...]) -> _Prepared:
        """The CPU-heavy half of a reload: load, translate, build every known view's snapshot."""
        started = time.perf_counter()
        try:
            model = self._load()
            discovered = self.endpoints.endpoints() if self.endpoints is not None else {}
            # The serving translation and snapshots are reused where their inputs are equal:
            # a reload costs what changed (the result is the same as a cold translation's).
            translation = Translation(model, self.plugins, discovered=discovered,
                                      identities=self.identities, previous=self.translation,
                                      changes=self.loader.changes)
            snapshots = [translation.snapshot(view, previous=self.cache.get(view))
                         for view in views]
            # What the previous translation built is kept no longer than this reload needs it.
            translation.release_earlier()
            self._check(model, [(self.cache.get(s.view), s) for s in snapshots])
        except PolicyError as e:  # PluginError too: a plugin failing refuses the whole reload
            return _Prepared(issues=e.issues)
        return _Prepared(model=model, translation=translation, snapshots=snapshots,
                         seconds=time.perf_counter() - started)

    def _check(self, model: Model, pairs: list[tuple[Snapshot | None, Snapshot]]) -> None:
        """Envoy's check of what `pairs` (serving, new snapshot) change: PolicyError at the
        positions that built what it refuses, or if it cannot check (nothing unchecked is
        pushed)."""
        if self.prepush is None:
            return
        try:
            issues = self.prepush.issues(model, pairs)
        except CheckFailed as e:
            raise PolicyError([PolicyIssue(str(e))]) from e
        if issues:
            raise PolicyError(issues)

    def build_view(self, translation: Translation, view: str) -> Snapshot:
        """A view first asked for after a reload, built from `translation` and checked like a
        reload (PolicyError if Envoy refuses any of it): for `ViewBuilds`, on a worker thread."""
        snapshot = translation.snapshot(view)
        self._check(translation.model, [(None, snapshot)])
        return snapshot

    def _load(self) -> Model:
        """The policy (`PolicyLoader`: what `load_policy` gives, parsing changed files only),
        recording the certificate, key and CA files it read (`tls_files`, which app.py watches
        too). After a failed load, the files it tried are added to the last good ones: a
        certificate that was missing triggers a reload when it appears."""
        try:
            model = self.loader.load()
        except PolicyError:
            self.tls_files = self.tls_files | self.loader.tls_files
            raise
        self.tls_files = self.loader.tls_files
        return model

    def _apply_prepared(self, prepared: _Prepared) -> bool:
        """The cheap half, on the event loop: swap the cache's snapshots in."""
        self.status.loads += 1
        self.status.last_attempt = time.time()
        if prepared.translation is None or prepared.model is None:
            self._reject(prepared.issues)
            return False
        self.translation = prepared.translation
        self.generation += 1
        self.status.error = []  # before building views: one failing to build reports here
        previous = {s.view: self.cache.get(s.view) for s in prepared.snapshots}
        before = self._resources_served()
        changed = [snapshot for snapshot in prepared.snapshots if self.cache.set(snapshot)]
        after = self._resources_served()
        if before - after >= RELEASE_AFTER_DROP and 2 * after <= before:
            self.release_due = True
        if self.on_replaced is not None:
            self.on_replaced([(previous[s.view], s) for s in changed])
        if self.on_applied is not None:
            self.on_applied(changed)
        self.metrics.views.set(len(self.cache.views()))
        self.metrics.snapshot_builds.observe(prepared.seconds)
        self.model = prepared.model
        self.status.last_success = time.time()
        self.status.applied_files = prepared.model.files
        self.status.objects = prepared.model.statuses
        self.metrics.policy_loads.labels("ok").inc()
        self.metrics.policy_valid.set(1)
        log.info("policy applied in %.3fs: %d files, %d raw resources, views %s",
                 prepared.seconds, len(prepared.model.files), len(prepared.model.raw),
                 list(self.cache.views()) or "(none yet)")
        for warning in prepared.model.warnings:  # applied, but worth a look (istioctl analyze)
            log.warning("policy warning: %s", warning)
        self.apply_endpoints()  # what was discovered while this reload was being prepared
        return True

    def _resources_served(self) -> int:
        total = 0
        for view in self.cache.views():
            snapshot = self.cache.get(view)
            if snapshot is not None:
                total += sum(snapshot.counts().values())
        return total

    def release_memory(self) -> bool:
        """Give what the previous, larger policy held back to the system (base/memory.py):
        memo tables emptied, cycles collected, free heap pages trimmed. Any thread."""
        self.release_due = False
        released = memory.release((clear_caches,))
        self.memory_releases += 1
        log.info("the policy shrank: memory %s (allocator %s)",
                 "trimmed" if released else "collected", memory.allocator())
        return released

    def _schedule_release(self) -> None:
        """After a reload that shrank the policy a lot: `release_memory` on a worker thread,
        a little later (streams still sending the old snapshots keep them alive until then)."""
        loop = asyncio.get_running_loop()

        def start() -> None:
            task = loop.create_task(asyncio.to_thread(self.release_memory))
            self._endpoint_tasks.add(task)  # cancelled with them at stop
            task.add_done_callback(self._endpoint_tasks.discard)

        loop.call_later(RELEASE_DELAY, start)

    def watch_endpoints(self, loop: asyncio.AbstractEventLoop) -> None:
        """Apply discovered endpoint changes (they may come from any thread), coalesced: a
        burst of changes is one push. The new assignments are built on a worker thread; only
        the swap into the cache runs on `loop`."""
        assert self.endpoints is not None

        def changed(_: frozenset[str]) -> None:
            if not self._endpoints_pending:
                self._endpoints_pending = True
                loop.call_soon_threadsafe(self._schedule_endpoints, loop)

        self.endpoints.on_change(changed)

    def _schedule_endpoints(self, loop: asyncio.AbstractEventLoop) -> None:
        task = loop.create_task(self._apply_pending_endpoints())
        self._endpoint_tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._endpoint_tasks.discard)

    async def _apply_pending_endpoints(self) -> None:
        async with self._endpoints_lock:  # one at a time, in order
            self._endpoints_pending = False  # first: a change from now on schedules another
            while True:
                generation = self.generation
                prepared = await asyncio.to_thread(self.prepare_endpoints)
                if self.generation == generation:
                    self.commit_endpoints(prepared)
                    return
                # A reload or a renewal landed meanwhile: prepare again from what it made.

    def cancel_endpoint_updates(self) -> None:
        """Stopping: drop endpoint pushes being prepared (their worker thread finishes alone)."""
        for task in tuple(self._endpoint_tasks):
            task.cancel()

    def apply_endpoints(self) -> set[str]:
        """The EDS fast path in one step (after a reload, and for tests): the registry's
        endpoints into every view. Returns the services that changed."""
        return self.commit_endpoints(self.prepare_endpoints())

    def prepare_endpoints(self) -> PreparedEndpoints:
        """The registry's endpoints as new snapshots: pure, so it may run on a worker thread.

        No policy load, no listener/route/cluster translation: only the services whose
        discovered endpoints changed get new ClusterLoadAssignments, and each view's new
        snapshot reuses every other ResourceMap object, so streams see an EDS-only change."""
        started = time.perf_counter()
        prepared = PreparedEndpoints()
        if self.endpoints is None:
            return prepared
        prepared.counts = self.endpoints.counts()
        translation = self.translation
        if translation is None:
            return prepared  # the first reload reads the registry itself
        discovered = self.endpoints.endpoints()
        prepared.changed = translation.changed_services(discovered)
        if not prepared.changed:
            return prepared
        prepared.translation = translation.with_endpoints(discovered)
        for view in self.cache.views():
            previous = self.cache.get(view)
            if previous is None:
                continue
            try:
                snapshot = prepared.translation.refresh_endpoints(previous, prepared.changed)
            except PolicyError as e:  # a plugin failing on the view: it keeps its snapshot
                log.error("view %r: discovered endpoints not applied: %s", view,
                          "; ".join(str(issue) for issue in e.issues))
                continue
            if snapshot is not previous:
                prepared.snapshots.append((previous, snapshot))
        prepared.seconds = time.perf_counter() - started
        return prepared

    def commit_endpoints(self, prepared: PreparedEndpoints) -> set[str]:
        """Swap prepared assignments into the cache, on the event loop; a view whose snapshot
        changed since they were prepared (built or renewed meanwhile) is left for the next
        round. Returns the services that changed."""
        for source, count in prepared.counts.items():
            self.metrics.discovered_instances.labels(source).set(count)
        for source in self._sources_seen - set(prepared.counts):
            self.metrics.discovered_instances.labels(source).set(0)
        self._sources_seen |= set(prepared.counts)
        if prepared.translation is None:
            return prepared.changed
        self.translation = prepared.translation
        self.generation += 1
        views = 0
        for previous, snapshot in prepared.snapshots:
            if self.cache.get(snapshot.view) is previous and self.cache.set(snapshot):
                views += 1
        self.metrics.discovery_updates.inc()
        log.info("discovered endpoints of %s applied to %d view(s), prepared in %.4fs",
                 sorted(prepared.changed), views, prepared.seconds)
        return prepared.changed

    def refresh_identities(self, renewed: set[str]) -> int:
        """Push the renewed certificates (by view name) of the mesh CA, in one step: an
        SDS-only change per view, nothing loaded or translated again. Returns the views
        updated. The runtime prepares (`prepare_identities`, a worker thread) and commits
        (`commit_identities`, the loop) separately."""
        return self.commit_identities(renewed, self.prepare_identities(renewed))

    def prepare_identities(self, renewed: set[str]) -> list[tuple[Snapshot, Snapshot]]:
        """(old, new) snapshots of the views whose certificate was renewed: pure."""
        translation = self.translation
        if translation is None or not renewed:
            return []
        prepared = []
        for view in self.cache.views():
            previous = self.cache.get(view)
            if view not in renewed or previous is None:
                continue
            try:
                snapshot = translation.refresh_identity(previous)
            except PolicyError as e:
                log.error("view %r: renewed certificate not applied: %s", view,
                          "; ".join(str(issue) for issue in e.issues))
                continue
            if snapshot is not previous:
                prepared.append((previous, snapshot))
        return prepared

    def commit_identities(self, renewed: set[str],
                          prepared: list[tuple[Snapshot, Snapshot]]) -> int:
        """Swap renewed certificates into the cache (the loop); a view whose snapshot changed
        meanwhile gets its certificate from the rebuild that changed it."""
        if not renewed:
            return 0
        self.generation += 1  # a view being built meanwhile may hold a certificate just renewed
        updated = 0
        for previous, snapshot in prepared:
            if self.cache.get(snapshot.view) is previous and self.cache.set(snapshot):
                updated += 1
        if updated:
            log.info("renewed workload certificates of %s pushed to %d view(s)",
                     sorted(renewed), updated)
        return updated

    def snapshot_blocking(self, view: str) -> Snapshot | None:
        """The view's snapshot, built now on the calling thread if it has none, and put in the
        cache: for scripts, tests and benchmarks driving a Controller without an event loop. On
        the loop, `await controller.views.snapshot_of(view)` builds on a worker thread instead.
        None before a first valid policy; PolicyError (reported) if the view cannot be built."""
        found = self.cache.get(view)
        if found is not None or self.translation is None:
            return found
        try:
            snapshot = self.build_view(self.translation, view)
        except PolicyError as e:
            self.view_failed(view, e)
            raise
        self.cache.set(snapshot)
        return snapshot

    def view_failed(self, view: str, error: PolicyError) -> None:
        """A view first asked for after the newest reload cannot be built.

        The reload is already serving, so a plugin failing for this view cannot refuse it: the
        error is shown in `/debug/status` (until the next reload) and this view is sent nothing,
        rather than a config without the plugin's part.
        """
        new = [str(issue) for issue in error.issues if str(issue) not in self.status.error]
        self.status.error.extend(new)
        log.error("view %r cannot be built; nothing is sent to it:\n  %s", view,
                  "\n  ".join(str(issue) for issue in error.issues))

    def _reject(self, issues: tuple[PolicyIssue, ...]) -> None:
        self.status.rejected += 1
        self.status.error = [str(issue) for issue in issues]
        self.metrics.policy_loads.labels("rejected").inc()
        self.metrics.policy_valid.set(0)
        kept = "the last good config keeps serving" if self.ready else "nothing is served yet"
        log.error("policy rejected (%d problems); %s:\n  %s", len(issues), kept,
                  "\n  ".join(self.status.error))
