"""A snapshot: everything one view of the fleet should hold, as immutable resource maps."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping

from google.protobuf.message import Message

from meshpilot.base import types
from meshpilot.xds.resources import Resource, ResourceMap
from meshpilot.xds.vhds import VhdsLayout


class Snapshot:
    """Per-type `ResourceMap`s for one view. Immutable; its version is a hash of its contents."""

    __slots__ = ("_maps", "_vhds", "_vhds_earlier", "_vhds_lock", "version", "view")

    def __init__(self, view: str, maps: Mapping[str, ResourceMap]):
        self.view = view
        self._maps = dict(maps)
        self._vhds: VhdsLayout | None = None
        self._vhds_earlier: VhdsLayout | None = None
        self._vhds_lock = threading.Lock()
        h = hashlib.blake2b(digest_size=8)
        for type_url in sorted(self._maps):
            h.update(type_url.encode() + b"=" + self._maps[type_url].version.encode() + b";")
        self.version = h.hexdigest()

    @classmethod
    def from_resources(cls, view: str, resources: Iterable[Resource]) -> Snapshot:
        by_type: dict[str, list[Resource]] = {}
        for resource in resources:
            by_type.setdefault(resource.type_url, []).append(resource)
        return cls(view, {t: ResourceMap(t, rs) for t, rs in by_type.items()})

    @classmethod
    def from_messages(cls, view: str,
                      messages: Mapping[str, Iterable[tuple[str, Message]]]) -> Snapshot:
        """Build from {type_url: [(name, message), ...]}: serializes each message once."""
        return cls(view, {
            type_url: ResourceMap(type_url, (Resource.from_message(type_url, name, m)
                                             for name, m in items))
            for type_url, items in messages.items()
        })

    def get(self, type_url: str) -> ResourceMap:
        found = self._maps.get(type_url)
        return found if found is not None else _empty(type_url)

    def type_urls(self) -> tuple[str, ...]:
        known = [t for t in types.ADS_ORDER if t in self._maps]
        return tuple(known + sorted(t for t in self._maps if t not in types.ADS_ORDER))

    def vhds(self) -> VhdsLayout:
        """The ROUTE map as VHDS streams are sent it (`xds/vhds.py`), made once, on first use,
        from the previous snapshot's layout where the configurations did not change."""
        found = self._vhds
        if found is not None:
            return found
        with self._vhds_lock:  # made on a worker thread (xds/server.py): once, however many ask
            if self._vhds is None:
                routes = self.get(types.ROUTE)
                earlier = self._vhds_earlier
                self._vhds = (earlier if earlier is not None and earlier.source is routes
                              else VhdsLayout(routes, earlier))
                self._vhds_earlier = None
            return self._vhds

    @property
    def vhds_ready(self) -> bool:
        return self._vhds is not None

    def follows(self, previous: Snapshot) -> None:
        """This snapshot replaces `previous` (the cache says so): its VHDS layout, when one is
        made, reuses `previous`'s unchanged parts."""
        if self._vhds is None and previous is not self:
            self._vhds_earlier = previous._vhds or previous._vhds_earlier

    def counts(self) -> dict[str, int]:
        return {types.short_name(t): len(m) for t, m in self._maps.items()}

    def __repr__(self) -> str:
        return f"Snapshot(view={self.view!r}, v={self.version}, {self.counts()})"


_EMPTY: dict[str, ResourceMap] = {}


def _empty(type_url: str) -> ResourceMap:
    found = _EMPTY.get(type_url)
    if found is None:
        found = _EMPTY[type_url] = ResourceMap(type_url)
    return found
