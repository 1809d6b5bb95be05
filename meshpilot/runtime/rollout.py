"""Staged rollouts: a new snapshot goes to a canary share of each view's Envoys first, is watched,
then promoted to all or rolled back.

Theory of operation
-------------------
The cache always holds the newest snapshot of every view (what the policy says); this module
decides which snapshot each stream follows (`follow`, the xDS server's per-stream choice):

- A reload that changes a view with Envoys connected starts a rollout there (`replaced`): the
  view's previous snapshot becomes its *baseline*, a canary share of its Envoys (by node id:
  `ceil(share * n)`, at least one, and never all of them when there are several) follows the
  new one, every other Envoy (and any that connects meanwhile) stays on the baseline. A view
  with one Envoy has that Envoy as its canary: the watch and rollback still protect it, but all
  of the view's traffic sees the candidate.
- While it is *watching*, the canaries' ACKs (`settled`), NACKs (`nacked`) and error rate (5xx
  of their downstream requests since the rollout started, from the metrics service) are
  followed. A canary NACK, or an error rate above the threshold once `min_requests` requests
  were seen, rolls it back: the canaries are sent the baseline again, and the whole view stays
  on it. When the watch period passes healthy (at least one canary took the candidate), it is
  promoted: every Envoy follows the newest snapshot again.
- An edit saved during a rollout *supersedes* it: the running rollout ends (aborted, "superseded
  by ..."), and a new one starts from the same baseline with the same canaries (those still
  connected), so the non-canaries never see the superseded candidate.
- After a rollback (or an abort) the view keeps serving the baseline until a reload changes the
  view again: a new rollout from the baseline, or, if the view is back to the baseline itself
  (the edit was reverted), nothing to roll out. A reload producing the refused candidate again
  changes nothing in the cache, so it is not rolled out twice.
- `promote` and `abort` do the same by hand.

While a view is held on its baseline, fast-path changes (discovered endpoints, renewed
certificates) reach only the Envoys following the newest snapshot; the others get them at
promotion or with the next edit (docs/operations.md).

Sans-I/O: a clock is handed in, `tick()` is called by the runtime (and tests on a manual
clock); `wake(view)` asks the xDS server to let that view's streams choose again.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from meshpilot.base import types
from meshpilot.base.units import parse_duration
from meshpilot.ir.model import RolloutSettings
from meshpilot.runtime.envoy_metrics import Sample
from meshpilot.xds.snapshot import Snapshot
from meshpilot.xds.status import Connection

WATCHING, PROMOTED, ROLLED_BACK, ABORTED = "watching", "promoted", "rolled_back", "aborted"


class RolloutError(ValueError):
    """A rollout setting that cannot work, or a request that does not apply."""


@dataclass(frozen=True)
class RolloutPolicy:
    """How a new snapshot is rolled out (`--rollout canary=10%,watch=30s,...`)."""

    canary: float = 0.1  # the share of each view's Envoys that gets it first
    watch: float = 30.0  # seconds the canaries are watched before promotion
    threshold: float = 0.05  # the canaries' 5xx share above which it is rolled back
    min_requests: int = 10  # canary requests needed before the error rate is judged
    views: frozenset[str] = frozenset()  # only these views in stages; empty: every view
    source: str = "--rollout"  # where it was said, for status

    def stages(self, view: str) -> bool:
        return not self.views or view in self.views

    def describe(self) -> dict[str, Any]:
        return {"canary": self.canary, "watch": self.watch, "error_rate": self.threshold,
                "min_requests": self.min_requests, "views": sorted(self.views),
                "source": self.source}


def policy_of(settings: RolloutSettings) -> RolloutPolicy | None:
    """A policy's `kind: Rollout` document as the runtime applies it (None: disabled)."""
    if not settings.enabled:
        return None
    return RolloutPolicy(canary=settings.canary / 100, watch=settings.watch,
                         threshold=settings.error_rate / 100,
                         min_requests=settings.min_requests, views=frozenset(settings.views),
                         source=f"{settings.position}: Rollout {settings.name}")


_KEYS = ("canary", "watch", "error-rate", "min-requests")


def _share(key: str, text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(%?)", text.strip())
    if match is None:
        raise RolloutError(f"{key}: a percentage (10%) or a fraction (0.1), got {text!r}")
    value = float(match.group(1)) / (100 if match.group(2) else 1)
    low_ok = value > 0 if key == "canary" else value >= 0
    if not low_ok or value > 1:
        raise RolloutError(f"{key}: between {'0 (excluded)' if key == 'canary' else '0'} and "
                           f"100%, got {text!r}")
    return value


def parse_rollout(text: str) -> RolloutPolicy:
    """`canary=10%,watch=30s,error-rate=5%,min-requests=10` (each optional, these defaults)."""
    values: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in _KEYS:
            raise RolloutError(f"expected KEY=VALUE with KEY one of {', '.join(_KEYS)}, "
                               f"got {part!r}")
        if key in values:
            raise RolloutError(f"{key} given twice")
        if key == "watch":
            try:
                values[key] = parse_duration(value.strip())
            except ValueError as e:
                raise RolloutError(f"watch: {e}") from None
            if not 0 < values[key] <= 24 * 3600:
                raise RolloutError("watch: more than 0s, at most 24h")
        elif key == "min-requests":
            if not value.strip().isdigit():
                raise RolloutError(f"min-requests: a whole number, got {value!r}")
            values[key] = int(value)
        else:
            values[key] = _share(key, value)
    return RolloutPolicy(canary=values.get("canary", 0.1), watch=values.get("watch", 30.0),
                         threshold=values.get("error-rate", 0.05),
                         min_requests=values.get("min-requests", 10))


def canary_count(total: int, share: float) -> int:
    """How many of a view's `total` Envoys are canaries: at least one, not all of several."""
    if total <= 1:
        return total
    return min(total - 1, max(1, math.ceil(share * total - 1e-9)))


@dataclass
class Rollout:
    id: str
    view: str
    baseline: Snapshot
    candidate: Snapshot
    canary: tuple[str, ...]  # node ids
    total: int  # the view's Envoys when it started
    started: float  # wall clock (unix)
    started_at: float  # the rollouts' clock
    policy: RolloutPolicy
    edit: str | None = None
    state: str = WATCHING
    reason: str | None = None
    ended: float | None = None  # wall clock
    acked: set[str] = field(default_factory=set)  # canaries idle on the candidate
    base: dict[str, Sample] = field(default_factory=dict)  # each canary's counts at the start
    requests: float = 0.0  # canary requests since the start
    errors: float = 0.0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    def describe(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "view": self.view, "state": self.state, "started": self.started,
                "canary": list(self.canary), "total": self.total,
                "error_rate": self.error_rate, "threshold": self.policy.threshold,
                "reason": self.reason, "edit": self.edit,
                # more than the dashboard's interface needs
                "ended": self.ended, "watch": self.policy.watch,
                "remaining": (max(0.0, self.policy.watch - (now - self.started_at))
                              if self.state == WATCHING else None),
                "requests": self.requests, "errors": self.errors,
                "min_requests": self.policy.min_requests, "acked": sorted(self.acked),
                "baseline": self.baseline.version, "candidate": self.candidate.version}

    def line(self) -> str:
        rate = "no canary traffic yet" if self.error_rate is None else \
            f"error rate {self.error_rate:.1%} of {self.requests:.0f} request(s)"
        what = {WATCHING: "watching", PROMOTED: "promoted", ROLLED_BACK: "ROLLED BACK",
                ABORTED: "aborted"}[self.state]
        because = f": {self.reason}" if self.reason else ""
        return (f"rollout {self.id} of view {self.view}: {what}, {len(self.canary)} of "
                f"{self.total} Envoy(s) canary, {rate} (threshold "
                f"{self.policy.threshold:.1%}){because}")


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry):
        r = registry
        self.started = Counter("meshpilot_rollouts_started_total",
                               "Staged rollouts started (one per changed view)", registry=r)
        self.promoted = Counter("meshpilot_rollouts_promoted_total",
                                "Rollouts promoted to every Envoy of their view", registry=r)
        self.rolled_back = Counter("meshpilot_rollouts_rolled_back_total",
                                   "Rollouts rolled back by their watch (error rate, NACK)",
                                   registry=r)
        self.aborted = Counter("meshpilot_rollouts_aborted_total",
                               "Rollouts aborted by hand or superseded by a newer edit",
                               registry=r)
        self.in_progress = Gauge("meshpilot_rollouts_in_progress",
                                 "Rollouts being watched now", registry=r)
        self.held_views = Gauge("meshpilot_rollouts_held_views",
                                "Views served their baseline after a rollback or abort",
                                registry=r)


def _rollout_id(view: str, candidate: Snapshot, seq: int) -> str:
    return hashlib.blake2b(f"{seq}:{view}={candidate.version}".encode(),
                           digest_size=3).hexdigest()


class Rollouts:
    def __init__(self, policy: RolloutPolicy | Callable[[], RolloutPolicy | None] | None, *,
                 counts: Callable[[str], Sample | None],
                 connections: Callable[[], Iterable[Connection]],
                 wake: Callable[[str], None], clock: Callable[[], float],
                 wall: Callable[[], float], metrics: RolloutMetrics | None = None,
                 keep: int = 50, on_end: Callable[[Rollout], None] | None = None):
        """`policy` None: nothing is rolled out in stages (every Envoy follows the newest
        snapshot); a callable: asked at each reload (the serving policy's Rollout document).
        `counts(node id)`: that Envoy's newest downstream counts (metrics service);
        `connections()`: the xDS streams open now; `wake(view)`: let the view's streams choose
        their snapshot again; `on_end(rollout)`: a rollout ended (for the log)."""
        self._policy = policy
        self.counts = counts
        self.connections = connections
        self.wake = wake
        self.clock = clock
        self.wall = wall
        self.metrics = metrics or RolloutMetrics(CollectorRegistry())
        self.active: dict[str, Rollout] = {}  # view -> its rollout being watched
        self.held: dict[str, Snapshot] = {}  # view -> the baseline its non-canaries follow
        self.history: deque[Rollout] = deque(maxlen=keep)
        self.on_end = on_end
        self._seq = 0

    @property
    def policy(self) -> RolloutPolicy | None:
        """What the next reload is rolled out by."""
        return self._policy() if callable(self._policy) else self._policy

    # ---- the xDS server's choice ------------------------------------------------------------

    def follow(self, conn: Connection, newest: Snapshot | None) -> Snapshot | None:
        """The snapshot `conn` follows: the newest, unless its view is held on a baseline and it
        is not one of the watched rollout's canaries."""
        if not self.held or conn.view is None:
            return newest
        baseline = self.held.get(conn.view)
        if baseline is None:
            return newest
        rollout = self.active.get(conn.view)
        if rollout is not None and conn.node_id in rollout.canary:
            return newest
        return baseline

    # ---- inputs -----------------------------------------------------------------------------

    def replaced(self, pairs: Iterable[tuple[Snapshot | None, Snapshot]],
                 edit: str | None = None) -> list[Rollout]:
        """A reload put these (previous, new) snapshots in the cache: start (or supersede)
        each changed view's rollout. Returns the rollouts started."""
        started: list[Rollout] = []
        connections: list[Connection] | None = None
        policy = self.policy
        for previous, new in pairs:
            view = new.view
            running = self.active.get(view)
            baseline = self.held.get(view, previous)
            if baseline is None:
                continue  # a first snapshot: nothing to roll back to
            if new.version == baseline.version:
                # Back to what the view's Envoys hold (an edit reverted): nothing to roll out.
                if running is not None:
                    self._end(running, ABORTED, "the view is back to its baseline")
                self._release(view)
                continue
            if policy is None or not policy.stages(view):
                if running is not None:
                    self._end(running, ABORTED, "superseded by an edit not rolled out in stages")
                self._release(view)
                continue
            if connections is None:
                connections = list(self.connections())
            nodes = sorted({c.node_id for c in connections if c.view == view and c.node_id})
            if not nodes:
                if running is not None:
                    self._end(running, ABORTED, "superseded; no Envoy connected to the view")
                self._release(view)
                continue
            keep = [n for n in running.canary if n in nodes] if running is not None else []
            count = canary_count(len(nodes), policy.canary)
            canary = keep[:count] + self._pick(view, new, [n for n in nodes if n not in keep],
                                               count - len(keep[:count]))
            self._seq += 1
            rollout = Rollout(_rollout_id(view, new, self._seq), view, baseline, new,
                              tuple(sorted(canary)), len(nodes), self.wall(), self.clock(),
                              policy, edit)
            if running is not None:
                self._end(running, ABORTED, f"superseded by rollout {rollout.id}", wake=False)
            for node in rollout.canary:
                sample = self.counts(node)
                if sample is not None:
                    rollout.base[node] = sample
            self.active[view] = rollout
            self.held[view] = baseline
            self.history.append(rollout)
            self.metrics.started.inc()
            started.append(rollout)
            self.wake(view)
        self._gauges()
        return started

    @staticmethod
    def _pick(view: str, candidate: Snapshot, nodes: list[str], count: int) -> list[str]:
        """`count` of `nodes`, spread by the candidate's version (each edit picks others)."""
        def rank(node: str) -> str:
            return hashlib.blake2b(f"{view}/{candidate.version}/{node}".encode(),
                                   digest_size=8).hexdigest()
        return sorted(nodes, key=rank)[:max(0, count)]

    def settled(self, conn: Connection) -> None:
        """`conn` is idle on its snapshot: a canary on the candidate (or on a newer snapshot of
        the view) has taken it."""
        rollout = self.active.get(conn.view or "")
        if rollout is None or conn.node_id not in rollout.canary:
            return
        snapshot = conn.stream.snapshot
        if snapshot is None or snapshot.version == rollout.baseline.version:
            return
        if any(s.status == "NACKED" for s in conn.stream.types.values()):
            return
        rollout.acked.add(conn.node_id)

    def nacked(self, conn: Connection, type_url: str, message: str) -> None:
        """An Envoy refused a response: a canary refusing the candidate rolls it back."""
        rollout = self.active.get(conn.view or "")
        if rollout is None or conn.node_id not in rollout.canary:
            return
        self._end(rollout, ROLLED_BACK, f"canary {conn.node_id} rejected "
                                        f"{types.short_name(type_url)}: {message}")

    def tick(self) -> None:
        """Judge every rollout being watched: error rate, then the watch period's end."""
        now = self.clock()
        for rollout in list(self.active.values()):
            self._measure(rollout)
            rate = rollout.error_rate
            policy = rollout.policy
            if rate is not None and rollout.requests >= max(1, policy.min_requests) and \
                    rate > policy.threshold:
                self._end(rollout, ROLLED_BACK,
                          f"canary error rate {rate:.1%} of {rollout.requests:.0f} request(s) "
                          f"is above {policy.threshold:.1%}")
            elif now - rollout.started_at >= policy.watch:
                connected = {c.node_id for c in self.connections() if c.view == rollout.view}
                if not rollout.acked & connected:
                    self._end(rollout, ROLLED_BACK, "no canary took the new config within "
                                                    f"the watch period ({policy.watch:g}s)")
                elif rollout.requests < max(1, policy.min_requests):
                    self._end(rollout, PROMOTED,
                              f"watched {policy.watch:g}s; too little canary traffic to judge "
                              f"({rollout.requests:.0f} of {policy.min_requests} request(s))")
                else:
                    self._end(rollout, PROMOTED,
                              f"watched {policy.watch:g}s: error rate {rate or 0:.1%} of "
                              f"{rollout.requests:.0f} request(s)")

    def _measure(self, rollout: Rollout) -> None:
        requests = errors = 0.0
        for node in rollout.canary:
            sample = self.counts(node)
            if sample is None:
                continue
            base = rollout.base.setdefault(node, sample)  # its first flush since the start
            if sample.requests < base.requests or sample.errors < base.errors:
                base = rollout.base[node] = Sample(0.0, 0.0, base.at)  # counters restarted
            requests += sample.requests - base.requests
            errors += sample.errors - base.errors
        rollout.requests, rollout.errors = requests, errors

    # ---- by hand ----------------------------------------------------------------------------

    def promote(self, view: str | None = None) -> list[Rollout]:
        """Promote the watched rollout of `view` (every one if None) now."""
        return [self._end(r, PROMOTED, "promoted by hand") for r in self._chosen(view)]

    def abort(self, view: str | None = None) -> list[Rollout]:
        """Roll the watched rollout of `view` (every one if None) back now."""
        return [self._end(r, ABORTED, "aborted by hand") for r in self._chosen(view)]

    def _chosen(self, view: str | None) -> list[Rollout]:
        if view is None:
            chosen = list(self.active.values())
        elif view in self.active:
            chosen = [self.active[view]]
        else:
            raise RolloutError(f"no rollout is being watched in view {view!r}" if view else
                               "no rollout is being watched")
        if not chosen:
            raise RolloutError("no rollout is being watched")
        return chosen

    # ---- ends -------------------------------------------------------------------------------

    def _end(self, rollout: Rollout, state: str, reason: str, wake: bool = True) -> Rollout:
        self._measure(rollout)
        rollout.state, rollout.reason, rollout.ended = state, reason, self.wall()
        if self.active.get(rollout.view) is rollout:
            del self.active[rollout.view]
        if state == PROMOTED:
            self.held.pop(rollout.view, None)
            self.metrics.promoted.inc()
        elif state == ROLLED_BACK:
            self.metrics.rolled_back.inc()
        else:
            self.metrics.aborted.inc()
        self._gauges()
        if wake:
            self.wake(rollout.view)
        if self.on_end is not None:
            self.on_end(rollout)
        return rollout

    def _release(self, view: str) -> None:
        if self.held.pop(view, None) is not None:
            self.wake(view)
        self._gauges()

    def _gauges(self) -> None:
        self.metrics.in_progress.set(len(self.active))
        self.metrics.held_views.set(len(set(self.held) - set(self.active)))

    # ---- status -----------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """Every remembered rollout, newest first (AdminSources.rollouts)."""
        now = self.clock()
        return [r.describe(now) for r in reversed(self.history)]

    def status(self) -> dict[str, Any]:
        """For /debug/status and `meshpilot status`."""
        newest = list(reversed(self.history))
        policy = self.policy
        return {"enabled": policy is not None,
                "policy": policy.describe() if policy is not None else None,
                "watching": sorted(self.active),
                "held_views": sorted(set(self.held) - set(self.active)),
                "lines": [r.line() for r in newest[:5]]}
