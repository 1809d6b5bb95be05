"""Convergence of every edit: from the file event to the last Envoy's ACK.

An edit is a reload started by file events (the first event of the debounced burst) that
changed at least one view's snapshot. Its targets are the Envoys connected to those views when
it was applied; an Envoy has converged on it once its stream is idle (nothing in flight, nothing
more to send) on that snapshot or a newer one. When the last target converges (or goes away),
the time since the file event is observed in `meshpilot_edit_convergence_seconds`, and
`meshpilot status` shows the newest edits: "edit 3f2a: 12 of 12 Envoys in 41 ms".

All times are the event loop's clock (monotonic); everything here runs on the loop.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram

from meshpilot.xds.snapshot import Snapshot
from meshpilot.xds.status import Connection


@dataclass
class Edit:
    id: str  # 4 hex digits of the views' new snapshot versions: "3f2a"
    seq: int
    started: float  # the first file event of the burst
    applied: float  # the new snapshots were in the cache
    views: tuple[str, ...]
    targets: dict[int, str] = field(default_factory=dict)  # connection id -> node id
    converged: dict[int, float] = field(default_factory=dict)  # connection id -> when
    gone: set[int] = field(default_factory=set)  # disconnected before converging
    done: float | None = None

    @property
    def waiting(self) -> set[int]:
        return set(self.targets) - set(self.converged) - self.gone

    @property
    def finished(self) -> bool:
        """No Envoy left to wait for. Counted, not `waiting`'s sets: asked on every stream's
        settling, which would make an edit to 10,000 Envoys cost 10,000 sets of 10,000. A
        connection converges or goes only while it is a target it waits for (`settled`,
        `closed`), so the three counts say it."""
        return len(self.converged) + len(self.gone) >= len(self.targets)

    def seconds(self) -> float | None:
        if self.done is None:
            return None
        last = max(self.converged.values(), default=self.applied)
        return last - self.started

    def line(self, now: float) -> str:
        total, reached = len(self.targets), len(self.converged)
        gone = f", {len(self.gone)} disconnected" if self.gone else ""
        if not self.targets:
            return (f"edit {self.id}: no Envoy connected to its views; applied in "
                    f"{_ms(self.applied - self.started)}")
        seconds = self.seconds()
        if seconds is not None:
            return f"edit {self.id}: {reached} of {total} Envoys in {_ms(seconds)}{gone}"
        return (f"edit {self.id}: {reached} of {total} Envoys so far, "
                f"{_ms(now - self.started)} since the file event{gone}")

    def describe(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "views": list(self.views), "envoys": len(self.targets),
                "converged": len(self.converged), "disconnected": len(self.gone),
                "seconds": self.seconds(), "applied_after": self.applied - self.started,
                "waiting_for": sorted(self.targets[c] for c in self.waiting),
                "line": self.line(now)}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def edit_id(snapshots: Iterable[Snapshot]) -> str:
    h = hashlib.blake2b(digest_size=2)
    for snapshot in sorted(snapshots, key=lambda s: s.view):
        h.update(f"{snapshot.view}={snapshot.version};".encode())
    return h.hexdigest()


class Convergence:
    """The newest edits and their convergence; `applied`, `settled` and `closed` are fed by
    the controller and the xDS server."""

    def __init__(self, histogram: Histogram, clock: Callable[[], float], keep: int = 20):
        self.histogram = histogram
        self.clock = clock
        self.edits: deque[Edit] = deque(maxlen=keep)
        self._seq = 0
        self._open = 0  # edits still waiting for an Envoy
        # (view, snapshot version) -> the newest edit that made it
        self._made: dict[tuple[str, str], int] = {}

    def applied(self, started: float, changed: list[Snapshot],
                connections: Iterable[Connection]) -> Edit | None:
        """A reload from file events (first at `started`) put `changed` in the cache."""
        if not changed:
            return None
        self._seq += 1
        views = {s.view for s in changed}
        edit = Edit(edit_id(changed), self._seq, started, self.clock(), tuple(sorted(views)))
        for snapshot in changed:
            self._made[(snapshot.view, snapshot.version)] = self._seq
        if len(self._made) > 4 * (self.edits.maxlen or 20) * max(1, len(views)):
            oldest = self._seq - (self.edits.maxlen or 20)
            self._made = {k: v for k, v in self._made.items() if v > oldest}
        edit.targets = {c.id: c.node_id for c in connections if c.view in views}
        if len(self.edits) == self.edits.maxlen and self.edits[0].done is None:
            self._open -= 1  # the oldest, still open, is forgotten
        self.edits.append(edit)
        self._open += 1
        self._finish(edit)
        return edit

    def settled(self, conn: Connection) -> None:
        """`conn`'s stream is idle on its snapshot: every edit up to the one that made it has
        reached this Envoy."""
        if not self._open:
            return
        snapshot = conn.stream.snapshot
        if snapshot is None or conn.view is None:
            return
        seq = self._made.get((conn.view, snapshot.version))
        if seq is None:
            return
        now = self.clock()
        for edit in self.edits:
            if edit.done is None and edit.seq <= seq and conn.id in edit.targets \
                    and conn.id not in edit.converged:
                edit.converged[conn.id] = now
                self._finish(edit)

    def closed(self, conn: Connection) -> None:
        for edit in self.edits:
            if edit.done is None and conn.id in edit.waiting:
                edit.gone.add(conn.id)
                self._finish(edit)

    def _finish(self, edit: Edit) -> None:
        if edit.done is None and edit.finished:
            edit.done = self.clock()
            self._open -= 1
            if edit.converged:
                seconds = edit.seconds()
                if seconds is not None:
                    self.histogram.observe(seconds)

    def describe(self) -> dict[str, Any]:
        now = self.clock()
        newest_first = list(reversed(self.edits))
        return {"edits": [e.describe(now) for e in newest_first],
                "lines": [e.line(now) for e in newest_first[:5]]}
