"""Driving a root rotation (ca/rotation.py) through the running fleet.

`RootRotator` takes each step of the state machine, saves it to the CA folder, and pushes what
it changes to every view that holds mesh identities (an SDS-only change: the trust bundle, and
the certificates re-issued). It moves on only once every connected Envoy of those views has
answered the push that added trust (`delivered`), so no Envoy is ever shown a certificate from a
root it does not trust yet:

    start    save adding-root, push the bundle [A, B]; once delivered: promote
    promote  save overlap; B signs; re-issue every workload certificate at once (or leave it
             to their renewal, `at-renewal`)
    finish   re-issue what A still signs and wait for its delivery; save idle, push the bundle
             [B]; re-issue the xDS serving certificate from B

Steps run one at a time (`_step`, an asyncio lock) on the event loop; issuing keys and building
the views' Secrets run on worker threads, as the renewal timer's do (app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from meshpilot.base import types
from meshpilot.ca.rotation import (
    ADDING_ROOT,
    DEFAULT_OVERLAP,
    IDLE,
    OVERLAP,
    REISSUE_NOW,
    RootStore,
    RotationError,
    RotationState,
    new_root,
)
from meshpilot.ca.workloads import WorkloadIdentities
from meshpilot.runtime.controller import Controller
from meshpilot.translators.mtls import IDENTITY_SECRET, TRUST_BUNDLE_SECRET
from meshpilot.xds.cache import SnapshotCache
from meshpilot.xds.status import ProxyRegistry

log = logging.getLogger("meshpilot.ca.rotation")

DELIVERY_TIMEOUT = 60.0  # seconds an Envoy may take to answer the push that adds a root
_POLL = 0.05


class RootRotator:
    def __init__(self, state: RotationState, store: RootStore | None,
                 identities: WorkloadIdentities, controller: Controller, cache: SnapshotCache,
                 proxies: ProxyRegistry, *, clock: Callable[[], float] = time.time,
                 on_server_root: Callable[[], None] = lambda: None,
                 on_bundle: Callable[[], None] = lambda: None,
                 delivery_timeout: float = DELIVERY_TIMEOUT, refused: str | None = None):
        """`on_server_root`: the root of the xDS serving certificate changed (re-issue it);
        `on_bundle`: the trust bundle changed (rewrite the files that hold a copy);
        `refused`: why this process may not start a rotation (None: it may)."""
        self.state = state
        self.store = store
        self.identities = identities
        self.controller = controller
        self.cache = cache
        self.proxies = proxies
        self.clock = clock
        self.on_server_root = on_server_root
        self.on_bundle = on_bundle
        self.delivery_timeout = delivery_timeout
        self.refused = refused
        self._step = asyncio.Lock()
        self.busy: str | None = None  # the step running now, for the status
        self._tasks: set[asyncio.Task[None]] = set()
        self.last_error: str | None = None

    # ---- the operator's commands ---------------------------------------------------------------

    async def start(self, overlap: float | None = DEFAULT_OVERLAP,
                    reissue: str = REISSUE_NOW) -> dict[str, Any]:
        """Begin a rotation: RotationError if one is in progress. Returns once the bundle with
        the new root is pushed; `run` (or `resume`) promotes it once every Envoy holds it."""
        if self.refused is not None:
            raise RotationError(self.refused)
        if self.state.phase != IDLE or self._step.locked():
            # Refused at once, not after the step that runs now (it may wait for Envoys).
            self.state.start(self.state.signer, self.clock())  # raises, saying why
            raise RotationError(f"a root rotation step is running ({self.busy}); try again")
        async with self._step:
            now = self.clock()
            root = await asyncio.to_thread(new_root, self.state.signer.trust_domain, now)
            self._commit(self.state.start(root, now, overlap, reissue))
            log.info("root rotation started: new root %s joins the trust bundle; %s still "
                     "signs", root.root_fingerprint, self.state.signer.root_fingerprint)
            await self._push_all("the trust bundle with the new root")
        self._soon(self.resume())
        return self.describe()

    def request_finish(self) -> dict[str, Any]:
        """`finish` in the background (it may wait for Envoys to answer); RotationError at
        once if there is no overlap to finish."""
        if self.state.phase != OVERLAP:
            self.state.finish(self.clock())  # raises, saying why
        self.busy = self.busy or "finishing"
        self._soon(self.finish())
        return self.describe()

    def _soon(self, step: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._logged(step))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _logged(self, step: Any) -> None:
        try:
            await step
        except RotationError:
            pass  # taken meanwhile by another caller (the timer, another request)
        except Exception as e:
            self.last_error = f"{type(e).__name__}: {e}"
            log.error("root rotation step failed: %s", self.last_error)
            self.busy = None

    def cancel(self) -> None:
        for task in tuple(self._tasks):
            task.cancel()

    async def finish(self) -> dict[str, Any]:
        """End the overlap: the old root leaves every bundle (RotationError if not in overlap)."""
        async with self._step:
            if self.state.phase != OVERLAP:
                self.state.finish(self.clock())  # raises, saying why
            self.busy = "re-issuing what the old root signed"
            stragglers = await asyncio.to_thread(self.identities.reissue,
                                                 self.identities.stragglers())
            if stragglers:
                await self._push(stragglers, "certificates from the new root")
            # Every Envoy must hold its certificate from the new root (re-issued now, at the
            # promotion, or renewed since) before the old root stops being trusted.
            self.busy = "waiting for every Envoy to hold a certificate from the new root"
            await self._delivered(set(self.cache.views()), IDENTITY_SECRET)
            old = self.state.server_authority.root_fingerprint
            self._commit(self.state.finish(self.clock()))
            self.on_server_root()
            await self._push_all("the trust bundle without the old root")
            self.busy = None
            log.info("root rotation finished: %s is the only root; %s is no longer trusted",
                     self.state.signer.root_fingerprint, old)
        return self.describe()

    async def resume(self) -> None:
        """Take the step that is due: promote a root every Envoy trusts by now (also after a
        restart in adding-root), finish an overlap whose time is up. Called by `run`."""
        if self.state.phase == ADDING_ROOT:
            async with self._step:
                if self.state.phase != ADDING_ROOT:
                    return
                self.busy = "waiting for every Envoy to hold the new trust bundle"
                await self._delivered(set(self.cache.views()), TRUST_BUNDLE_SECRET)
                self._commit(self.state.promote(self.clock()))
                log.info("root rotation: new root %s signs from now on (re-issue: %s)",
                         self.state.signer.root_fingerprint, self.state.reissue)
                if self.state.reissue == REISSUE_NOW:
                    self.busy = "re-issuing workload certificates from the new root"
                    renewed = await asyncio.to_thread(self.identities.reissue,
                                                      self.identities.stragglers())
                    await self._push(renewed, "certificates from the new root")
                self.busy = None
        elif self.state.finish_due(self.clock()):
            log.info("root rotation: the overlap is over, finishing")
            with contextlib.suppress(RotationError):  # finished meanwhile by hand
                await self.finish()

    async def run(self) -> None:
        """Resume at start, then finish the overlap when its time comes; polls every second
        (and at once when due), so a changed clock or a restart is caught up with."""
        while True:
            try:
                await self.resume()
                self.last_error = None
            except Exception as e:  # a failed step is retried, never kills the timer
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("root rotation step failed (retried): %s", self.last_error)
                self.busy = None
            wait = 1.0
            if self.state.finish_after is not None:
                wait = min(wait, max(0.0, self.state.finish_after - self.clock()))
            await asyncio.sleep(max(_POLL, wait))

    # ---- what the status shows -----------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        out = self.state.describe()
        counts = self.identities.by_root()
        out["workload_certificates"] = {root["fingerprint"]: counts.get(root["fingerprint"], 0)
                                        for root in out["roots"]}
        out["persisted"] = str(self.store.folder) if self.store is not None else None
        out["step"] = self.busy
        out["last_error"] = self.last_error
        return out

    # ---- the steps' parts ----------------------------------------------------------------------

    def _commit(self, state: RotationState) -> None:
        """Save first (a restart resumes from here), then issue from the new state."""
        if self.store is not None:
            self.store.save(state)
        self.state = state
        self.identities.set_authority(state.authority)
        self.on_bundle()

    async def _push_all(self, what: str) -> None:
        await self._push(set(self.cache.views()), what)

    async def _push(self, views: set[str] | frozenset[str], what: str) -> None:
        """Send each view in `views` its identity Secrets again, from the identities as they
        are now (an SDS-only change). A reload meanwhile builds them from there anyway."""
        if not views:
            return
        while True:
            generation = self.controller.generation
            prepared = await asyncio.to_thread(self.controller.prepare_identities, set(views))
            if self.controller.generation == generation:
                count = self.controller.commit_identities(set(views), prepared)
                log.info("root rotation: %s pushed to %d view(s)", what, count)
                return

    def _missing(self, views: set[str] | frozenset[str], secret: str) -> list[str]:
        """The connected Envoys of `views` that have not yet answered (ACK or NACK) a response
        holding their view's current `secret`."""
        missing = []
        for connection in self.proxies.connections():
            view = connection.view
            snapshot = self.cache.get(view) if view in views and view is not None else None
            wanted = snapshot.get(types.SECRET).get(secret) if snapshot is not None else None
            if wanted is None:
                continue
            state = connection.stream.types.get(types.SECRET)
            if state is None:
                continue  # not subscribed to SDS: it has nothing that checks certificates
            held = state.known.get(secret)
            if state.in_flight or getattr(held, "version", None) != wanted.version:
                missing.append(connection.node_id or connection.peer)
        return missing

    async def _delivered(self, views: set[str] | frozenset[str], secret: str) -> None:
        """Wait until every connected Envoy of `views` has answered the push of `secret`, at
        most `delivery_timeout` seconds (then warn and go on: an Envoy that does not answer
        gets the newest snapshot, whole, when it reconnects)."""
        deadline = self.clock() + self.delivery_timeout
        while missing := self._missing(views, secret):
            if self.clock() >= deadline:
                log.warning("root rotation: %d Envoy(s) did not answer the push of %s within "
                            "%.0fs, going on: %s", len(missing), secret, self.delivery_timeout,
                            ", ".join(sorted(missing)[:10]))
                return
            await asyncio.sleep(_POLL)
