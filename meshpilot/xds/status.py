"""Which Envoys are connected and where each stands, per resource type: sent, acknowledged,
rejected (with Envoy's own message). Read by the admin API, CSDS and `meshpilot status`."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshpilot.base import types
from meshpilot.xds.stream import XdsStream

# (view, type URL, resource name) -> where in the policy it came from ("edge.yaml:3:5:
# EnvoyResources e2e: clusters[1]"), or None: the runtime's provenance, for status.
Locate = Callable[[str, str, str], "str | None"]


def _nowhere(view: str, type_url: str, name: str) -> str | None:
    return None


@dataclass(eq=False)
class Connection:
    id: int
    stream: XdsStream
    peer: str
    connected_at: float
    view: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    locate: Locate = _nowhere

    @property
    def node_id(self) -> str:
        return self.stream.node.id if self.stream.node is not None else ""

    @property
    def node_cluster(self) -> str:
        return self.stream.node.cluster if self.stream.node is not None else ""

    @property
    def variant(self) -> str:
        kind = "delta" if self.stream.delta else "sotw"
        scope = "ads" if self.stream.ads else types.short_name(self.stream.only_type or "")
        return f"{kind}-{scope}"

    def describe(self) -> dict[str, Any]:
        node = self.stream.node
        snapshot = self.stream.snapshot
        out: dict[str, Any] = {
            "node_id": self.node_id,
            "node_cluster": self.node_cluster,
            "view": self.view,
            "variant": self.variant,
            "peer": self.peer,
            "connected_at": self.connected_at,
            "envoy_version": _envoy_version(node),
            "snapshot_version": snapshot.version if snapshot else None,
            "types": {},
        }
        for type_url, state in self.stream.types.items():
            rejection = state.rejection
            out["types"][types.short_name(type_url)] = {
                "status": state.status,
                "wildcard": state.wildcard,
                "subscribed": len(state.names),
                "resources": len(state.known),
                "version_sent": state.sent_version or None,
                "version_acked": state.acked_version or None,
                "nonce": state.nonce,
                "sent_at": state.sent_at,
                "acked_at": state.acked_at,
                "responses": state.responses,
                "acks": state.acks,
                "nacks": state.nacks,
                "last_rejection": None if rejection is None else {
                    "version": rejection.version, "nonce": rejection.nonce,
                    "message": rejection.message, "code": rejection.code, "at": rejection.at,
                },
                # Refused resources this Envoy is sent its previous version of (or none).
                "held_back": [{
                    "name": held.name, "version": held.version, "message": held.message,
                    "refused_by": held.node, "at": held.at,
                    "origin": self.locate(self.view or "", type_url, held.name),
                } for held in state.held_now],
            }
        return out


def _envoy_version(node: Any) -> str | None:
    if node is None or not node.HasField("user_agent_build_version"):
        return node.user_agent_version or None if node is not None else None
    v = node.user_agent_build_version.version
    return f"{v.major_number}.{v.minor_number}.{v.patch}"


class ProxyRegistry:
    def __init__(self, locate: Locate = _nowhere) -> None:
        """`locate`: where a resource came from in the policy (shown with held-back ones)."""
        self._connections: dict[int, Connection] = {}
        self._ids = itertools.count(1)
        self.locate = locate

    def open(self, stream: XdsStream, peer: str, now: float) -> Connection:
        conn = Connection(next(self._ids), stream, peer, now, locate=self._locate)
        self._connections[conn.id] = conn
        return conn

    def _locate(self, view: str, type_url: str, name: str) -> str | None:
        return self.locate(view, type_url, name)

    def close(self, conn: Connection) -> None:
        self._connections.pop(conn.id, None)

    def connections(self) -> list[Connection]:
        return sorted(self._connections.values(), key=lambda c: (c.node_id, c.id))

    def unordered(self) -> list[Connection]:
        """The open connections in no particular order: for a poller of thousands of streams,
        which `connections()`'s sort by node would cost more than the poll itself."""
        return list(self._connections.values())

    def by_node(self, node_id: str) -> list[Connection]:
        return [c for c in self.connections() if c.node_id == node_id]

    def describe(self) -> list[dict[str, Any]]:
        return [c.describe() for c in self.connections() if c.stream.node is not None]
