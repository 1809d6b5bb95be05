"""Discovered instances shared by every replica through the store (docs/operations.md).

Registrations: each is one key, `registrations/<service>/<ip:port>`, on an etcd lease of its
TTL. Any replica may register, renew (a keepalive of the lease) or deregister; every replica
follows the prefix into its own `EndpointRegistry`, so a registration made on one is served
by all, and an unrenewed one expires once, in etcd, whichever replica took it and whether or
not that replica still runs. The local copies carry no expiry of their own: while the store
is unreachable each replica serves the last known registrations, and writes are refused
(`StoreUnavailable`, 503) rather than accepted on one replica only.

Docker-discovered instances: the replica elected to watch the engine (`store/election.py`)
publishes what its `DockerSource` found under `docker/<id>`; the others follow that prefix.
The keys have no lease: if the elected replica dies, what it found keeps serving until the
next one elected replaces it with a full resync (containers stopped meanwhile leave then).

Per-Service limits still hold: the number of endpoints is counted against the fleet's
registrations as this replica last saw them, the rate per replica (a burst spread over N
replicas may reach N times one replica's rate: docs/discovery.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from meshpilot.base.privatefiles import write_private
from meshpilot.discovery.registry import EndpointRegistry, Instance, check_host
from meshpilot.store import Entry, Event, StoreError
from meshpilot.store.etcd import EtcdStore, Mirror

log = logging.getLogger("meshpilot.discovery")

REGISTRATIONS = "registrations/"
DOCKER = "docker/"


def _encode(instance: Instance, lease: int) -> bytes:
    return json.dumps({"id": instance.id, "service": instance.service, "host": instance.host,
                       "port": instance.port, "labels": dict(instance.labels),
                       "ttl": instance.ttl, "lease": lease}, sort_keys=True).encode()


# How long a follower goes without an event before it lists its prefix again (`Mirror`'s
# resync): the longest a change a watch missed stays missed.
RESYNC_SECONDS = 15.0


def _decode(entry: Entry, source: str) -> tuple[Instance, int] | None:
    """(instance, lease) of a stored value; None (logged) for a value no replica would write."""
    try:
        data: dict[str, Any] = json.loads(entry.value)
        instance = Instance(id=str(data["id"]), service=str(data["service"]),
                            host=check_host(str(data["host"])), port=int(data["port"]),
                            labels=tuple(sorted((str(k), str(v))
                                                for k, v in dict(data["labels"]).items())),
                            source=source,
                            ttl=None if data.get("ttl") is None else float(data["ttl"]))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("ignoring the malformed store entry %s: %s", entry.key, e)
        return None
    return instance, entry.lease or int(data.get("lease") or 0)


class _Follower:
    """Keeps one source of the registry in step with a prefix of the store. While `active` is
    False (the elected Docker replica, whose own DockerSource is the truth) it only records."""

    def __init__(self, store: EtcdStore, registry: EndpointRegistry, sub: str, source: str,
                 cache: Path | None = None):
        self.store, self.registry, self.sub, self.source = store, registry, sub, source
        self.instances: dict[str, Instance] = {}  # store key -> instance
        self.leases: dict[str, int] = {}  # instance id -> lease
        self.active = True
        self.mirror = Mirror(store, sub, self._reset, self._event, resync=RESYNC_SECONDS)
        # The last known state on disk, for a replica that restarts while etcd is away: it
        # serves what it followed last instead of nothing (which would empty its Envoys).
        self.cache = cache
        self._save_pending = False

    def _schedule_save(self) -> None:
        if self.cache is None or self._save_pending:
            return
        self._save_pending = True
        asyncio.get_running_loop().call_later(0.2, self._save)

    def _save(self) -> None:
        self._save_pending = False
        if self.cache is None:
            return
        data = {key: json.loads(_encode(i, self.leases.get(i.id, 0)))
                for key, i in sorted(self.instances.items())}
        try:
            write_private(self.cache, json.dumps(data, sort_keys=True).encode())
        except OSError as e:
            log.warning("cannot write the last known %s to %s: %s", self.sub, self.cache, e)

    def load_cache(self) -> int:
        """Serve the last known state saved by an earlier run (the store is unreachable);
        returns how many instances it held."""
        if self.cache is None or not self.cache.exists():
            return 0
        try:
            data = json.loads(self.cache.read_bytes())
            entries = [Entry(str(key), json.dumps(value).encode(), int(value.get("lease") or 0), 0)
                       for key, value in dict(data).items()]
        except (OSError, ValueError, AttributeError) as e:
            log.warning("ignoring %s: %s", self.cache, e)
            return 0
        self._reset(entries, save=False)
        return len(self.instances)

    def key_of(self, instance_id: str) -> str | None:
        for key, instance in self.instances.items():
            if instance.id == instance_id:
                return key
        return None

    def _reset(self, entries: list[Entry], save: bool = True) -> None:
        before = (self.instances, self.leases)
        self.instances, self.leases = {}, {}
        for entry in entries:
            found = _decode(entry, self.source)
            if found is not None:
                self.instances[entry.key], self.leases[found[0].id] = found
        self.apply_all()  # the registry tells only the Services that changed
        if save and (self.instances, self.leases) != before:  # a resync mostly finds none
            self._schedule_save()

    def apply_all(self) -> None:
        if self.active:
            self.registry.replace_source(self.source, self.instances.values())

    def _event(self, event: Event) -> None:
        self._schedule_save()
        key = event.entry.key
        if event.kind == "put":
            found = _decode(event.entry, self.source)
            if found is None:
                return
            instance, lease = found
            old = self.instances.get(key)
            self.instances[key] = instance
            self.leases[instance.id] = lease
            if self.active:
                if old is not None and old.id != instance.id:
                    self.registry.remove(old.id)
                self.registry.upsert(instance)
            return
        gone = self.instances.pop(key, None)
        if gone is None:
            return
        self.leases.pop(gone.id, None)
        if self.active:
            removed = self.registry.remove(gone.id)
            if removed is not None and self.source == "registration":
                log.info("registration %s of %s (%s) removed or expired", removed.id,
                         removed.service, removed.address)


class SharedRegistrations:
    """The self-registration API's writes, made in the store; reads stay local."""

    source = "registration"

    def __init__(self, store: EtcdStore, registry: EndpointRegistry, cache: Path | None = None):
        self.store, self.registry = store, registry
        self.follower = _Follower(store, registry, REGISTRATIONS, self.source, cache)

    async def run(self) -> None:
        await self.follower.mirror.run()

    @staticmethod
    def key(service: str, host: str, port: int) -> str:
        return f"{REGISTRATIONS}{service}/{host}:{port}"

    async def register(self, service: str, host: str, port: int,
                       labels: Mapping[str, str], ttl: float) -> tuple[Instance, bool]:
        """Add or update (same service and address: same id) a registration, on a new lease
        of `ttl` (etcd grants whole seconds, at least its minimum, 2 s by default). Raises
        LimitExceeded, or StoreUnavailable when the store cannot take it."""
        host = check_host(host)
        key = self.key(service, host, port)
        for _ in range(5):  # another replica writing the same address meanwhile: read again
            current = await self.store.get(key)
            existing = None if current is None else _decode(current, self.source)
            if existing is None:
                self.registry.check_limits(self.source, service)
            instance_id = existing[0].id if existing is not None else uuid.uuid4().hex
            lease, granted = await self.store.grant(ttl)
            instance = Instance(id=instance_id, service=service, host=host, port=port,
                                labels=tuple(sorted(labels.items())), source=self.source,
                                ttl=float(max(granted, ttl)))
            written = await self.store.replace(key, _encode(instance, lease), lease,
                                               current.mod_revision if current else 0)
            if not written:
                await self.store.revoke(lease)
                continue
            if existing is not None and existing[1] and existing[1] != lease:
                await self.store.revoke(existing[1])  # the old lease holds no key any more
            # Served here at once; the watch brings the same to every replica (and here again,
            # which changes nothing).
            self.follower.instances[key] = instance
            self.follower.leases[instance.id] = lease
            self.follower._schedule_save()
            self.registry.upsert(instance)
            return instance, existing is None
        raise StoreError("the registration kept changing under us; try again")

    async def renew(self, instance_id: str) -> Instance:
        """A heartbeat: the lease's TTL starts again. KeyError if the registration is gone."""
        instance = self.registry.get(instance_id)
        lease = self.follower.leases.get(instance_id)
        if instance is None or lease is None:
            raise KeyError(instance_id)
        if await self.store.refresh(lease) <= 0:
            raise KeyError(instance_id)  # expired in etcd: the watch removes it everywhere
        return instance

    async def remove(self, instance_id: str) -> Instance | None:
        instance = self.registry.get(instance_id)
        if instance is None:
            return None
        key = self.key(instance.service, instance.host, instance.port)
        deleted = await self.store.delete(key)
        lease = self.follower.leases.pop(instance_id, None)
        if lease:
            await self.store.revoke(lease)
        self.follower.instances.pop(key, None)
        self.registry.remove(instance_id)
        return instance if deleted else None


class SharedDocker:
    """Docker instances: published by the elected replica, followed by all."""

    source = "docker"

    def __init__(self, store: EtcdStore, registry: EndpointRegistry, cache: Path | None = None):
        self.store, self.registry = store, registry
        self.follower = _Follower(store, registry, DOCKER, self.source, cache)
        self.lease = 0  # set while this replica is the elected one
        self._published: dict[str, bytes] = {}
        self._dirty = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        registry_changed = self.local_changed
        self.registry.on_change(lambda _services: registry_changed())
        await asyncio.gather(self.follower.mirror.run(), self.publish())

    def local_changed(self) -> None:
        """The registry changed (on any thread, Docker's own included): publish, if elected."""
        if self.lease and self._loop is not None:
            self._loop.call_soon_threadsafe(self._dirty.set)

    def elected(self, lease: int) -> None:
        """This replica now runs Docker discovery: its DockerSource is the truth here."""
        self.lease = lease
        self.follower.active = False
        # What an earlier elected replica published and this one does not find is deleted.
        self._published = dict.fromkeys(self.follower.instances, b"")
        self._dirty.set()

    def deposed(self) -> None:
        """Another replica runs it now (or none, until one is elected): follow the store."""
        self.lease = 0
        self.follower.active = True
        self.follower.apply_all()

    async def publish(self) -> None:
        """While elected: write the Docker instances this replica's source found, remove the
        ones it no longer finds. Runs forever; each round after a change."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not self.lease:
                continue
            # No lease on these: if the elected replica dies, what it found stays served until
            # the next one's resync replaces it (a lease would take every container out of
            # every Envoy for the length of the takeover).
            wanted = {f"{DOCKER}{i.id}": _encode(replace(i, expires_at=None), 0)
                      for i in self.registry.instances(source=self.source)}
            try:
                for key, value in wanted.items():
                    if self._published.get(key) != value:
                        await self.store.put(key, value)
                        self._published[key] = value
                for key in set(self._published) - set(wanted):
                    await self.store.delete(key)
                    del self._published[key]
            except StoreError as e:
                log.warning("publishing Docker instances: %s; retrying", e)
                await asyncio.sleep(0.5)
                self._dirty.set()
