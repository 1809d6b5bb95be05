"""Every Envoy of the fleet, whichever replica it is connected to (docs/operations.md).

Each replica writes the status of its own connections (the replica, versions sent and
acknowledged per type, the last rejection: `xds/status.py`) under
`proxies/<replica>/<connection>` on its replica lease, at most every `interval` seconds and
only what changed; a replica that dies takes its entries with its lease. `/debug/proxies` (and
so `meshpilot status`) on any replica reads them all, this replica's own fresh from memory.
When the store is unreachable it shows this replica's Envoys and says the rest is unknown.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from meshpilot.store import StoreError
from meshpilot.store.etcd import EtcdStore, ReplicaLease
from meshpilot.xds.status import ProxyRegistry

log = logging.getLogger("meshpilot")

PROXIES = "proxies/"


class FleetStatus:
    def __init__(self, store: EtcdStore, lease: ReplicaLease, proxies: ProxyRegistry,
                 replica: str, addresses: Any, interval: float = 1.0):
        self.store, self.lease, self.proxies = store, lease, proxies
        self.replica, self.addresses, self.interval = replica, addresses, interval
        self._published: dict[str, bytes] = {}
        lease.on_new(lambda _lease: self._published.clear())  # a new lease holds nothing yet

    def local(self) -> dict[str, dict[str, Any]]:
        """(store key -> status) of this replica's connections."""
        out = {}
        for conn in self.proxies.connections():
            if conn.stream.node is None:
                continue
            status = conn.describe()
            status["replica"] = self.replica
            status["replica_xds_address"] = self.addresses()["xds_address"]
            out[f"{PROXIES}{self.replica}/{conn.id}"] = status
        return out

    async def publish_once(self) -> None:
        lease = self.lease.id
        if not lease:
            return
        wanted = {k: json.dumps(v, sort_keys=True).encode() for k, v in self.local().items()}
        for key, value in wanted.items():
            if self._published.get(key) != value:
                await self.store.put(key, value, lease=lease)
                self._published[key] = value
        for key in set(self._published) - set(wanted):
            await self.store.delete(key)
            del self._published[key]

    async def run(self) -> None:
        while True:
            try:
                await self.publish_once()
            except StoreError as e:
                log.debug("publishing proxy status: %s", e)
            await asyncio.sleep(self.interval)

    async def describe(self) -> dict[str, Any]:
        """{"proxies": every Envoy of the fleet, "replicas": ..., "store": ...}."""
        local = list(self.local().values())
        try:
            entries, _ = await self.store.get_prefix(PROXIES)
        except StoreError as e:
            return {"proxies": sorted(local, key=lambda p: (p["node_id"], p["replica"])),
                    "store_error": f"{e}; only this replica's Envoys are shown"}
        others = []
        for entry in entries:
            if entry.key.startswith(f"{PROXIES}{self.replica}/"):
                continue  # ours, fresher from memory
            try:
                others.append(json.loads(entry.value))
            except ValueError:
                log.warning("ignoring the malformed store entry %s", entry.key)
        everyone = sorted([*local, *others],
                          key=lambda p: (str(p.get("node_id")), str(p.get("replica"))))
        return {"proxies": everyone}
