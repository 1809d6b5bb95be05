"""One replica at a time runs what must run once (Docker discovery): an etcd lease election.

The candidate holding `elections/<name>` leads: the key is created only if absent, on the
candidate's replica lease, so it vanishes when that replica stops renewing (killed, cut off
from etcd) and another candidate takes it at its next try, within the lease's TTL plus one
poll. A leader that cannot reach etcd for half the TTL steps down first, so two replicas
never both believe they lead for long: the old one has stopped before the key can expire.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from meshpilot.store import StoreError
from meshpilot.store.etcd import EtcdStore, ReplicaLease

log = logging.getLogger("meshpilot.store")


class Election:
    def __init__(self, store: EtcdStore, name: str, candidate: str, lease: ReplicaLease,
                 on_elected: Callable[[int], object], on_deposed: Callable[[], object],
                 poll: float = 0.5):
        self.store, self.name, self.candidate, self.lease = store, name, candidate, lease
        self.on_elected, self.on_deposed, self.poll = on_elected, on_deposed, poll
        self.key = f"elections/{name}"
        self.leader = False
        self.holder: str | None = None  # the leader as last seen

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last_contact = loop.time()
        while True:
            lease = self.lease.id
            try:
                if not lease:
                    self._step_down("lost its replica lease")
                else:
                    created, entry = await self.store.create(self.key, self.candidate.encode(),
                                                             lease)
                    holder = self.candidate if created else (
                        entry.value.decode(errors="replace") if entry else None)
                    mine = created or (entry is not None and entry.lease == lease)
                    self.holder = holder
                    last_contact = loop.time()
                    if mine and not self.leader:
                        self.leader = True
                        log.info("elected to run %s (replica %s)", self.name, self.candidate)
                        self.on_elected(lease)
                    elif not mine:
                        self._step_down(f"{holder} holds it")
            except StoreError:
                if self.leader and loop.time() - last_contact > self.lease.ttl / 2:
                    self._step_down("the store is unreachable")
            await asyncio.sleep(self.poll)

    def _step_down(self, why: str) -> None:
        if self.leader:
            self.leader = False
            log.info("no longer running %s: %s", self.name, why)
            self.on_deposed()

    async def resign(self) -> None:
        """Give it up now (a clean stop), so another replica takes over at its next poll."""
        if self.leader:
            self.leader = False
            self.on_deposed()
            try:
                entry = await self.store.get(self.key)
                if entry is not None and entry.lease == self.lease.id:
                    await self.store.delete(self.key)
            except StoreError:
                log.info("could not resign %s: it lapses with the replica lease", self.name)
