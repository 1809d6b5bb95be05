"""A service's discovered endpoints as a tuple that knows how it came from its earlier ones.

The endpoint registry (meshpilot.discovery) hands the translators each service's discovered
endpoints as a `DiscoveredEndpoints`: a plain tuple of `Endpoint`s (sorted by host and port, one
per address) to everything that reads it, plus the service's `EndpointHistory` and its version
in it. A translator that built something from an earlier tuple of the same history can ask what
was added and removed since (`changes_since`) and patch what it built, instead of building it
again from every endpoint: the 2,000th registration of a Service then costs what the first does.
The history is bounded; when the earlier version has been forgotten the answer is None, and the
caller builds from the whole tuple, as it would without a history.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from meshpilot.ir.model import Endpoint

ADDED, REMOVED = "added", "removed"
Change = tuple[str, Endpoint]  # (ADDED or REMOVED, the endpoint)


class EndpointHistory:
    """The changes of one service's discovered endpoints, newest last, at most `limit` kept.
    Written by one owner under its own lock (the registry); read-only to everyone else."""

    __slots__ = ("_changes", "_forgotten", "limit", "version")

    def __init__(self, limit: int = 1024):
        self.limit = limit
        self.version = 0
        # (the version the change led to, the change); several changes may share a version.
        self._changes: deque[tuple[int, Change]] = deque()
        self._forgotten = 0  # the newest version some change of which is no longer kept

    def record(self, changes: Iterable[Change]) -> int:
        """A new version made of `changes` (applied in order); returns it."""
        self.version += 1
        for change in changes:
            self._changes.append((self.version, change))
        while len(self._changes) > self.limit:
            self._forgotten = self._changes.popleft()[0]
        return self.version

    def since(self, version: int, until: int) -> list[Change] | None:
        """The changes from `version` to `until`, in order; None if some were forgotten."""
        if version == until:
            return []
        if version > until:
            return None
        if version < self._forgotten:
            return None  # some change after `version` is no longer kept
        changes = self._changes
        found: list[Change] = []
        # Newest first: what a registration asks for is at the end.
        for at, change in reversed(changes):
            if at <= version:
                break
            if at <= until:
                found.append(change)
        found.reverse()
        return found


class DiscoveredEndpoints(tuple[Endpoint, ...]):
    """A service's discovered endpoints (a tuple to every reader) at one version of its
    history."""

    history: EndpointHistory | None
    version: int

    def __new__(cls, endpoints: Iterable[Endpoint], history: EndpointHistory | None = None,
                version: int = 0) -> DiscoveredEndpoints:
        made = super().__new__(cls, endpoints)
        made.history = history
        made.version = version
        return made

    def changes_since(self, earlier: tuple[Endpoint, ...] | None) -> list[Change] | None:
        """What turned `earlier` (an earlier tuple of the same history) into this one, in
        order; None if that cannot be told (another history, or changes forgotten)."""
        if earlier is self:
            return []
        if (self.history is None or not isinstance(earlier, DiscoveredEndpoints)
                or earlier.history is not self.history):
            return None
        return self.history.since(earlier.version, self.version)
