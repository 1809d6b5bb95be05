"""The endpoint registry: service instances found at run time, by whatever source found them.

Sources (the self-registration API, Docker, ...) put `Instance`s in; the controller reads each
service's discovered endpoints out and adds them to the endpoints the policy wrote. The registry
is thread-safe (Docker events arrive on a thread of their own) and calls its change callbacks
with the names of the services whose endpoints changed, outside its lock, on the thread that
made the change: a callback must hop to its own loop itself.

It must not know about Envoy: what it hands out are the model's `Endpoint`s.

Instances of a service that no policy `Service` names are kept (the policy may name it later),
and unused until then. An instance may carry an expiry (a TTL, renewed by heartbeats); `expire()`
removes the lapsed ones and is called periodically by the application.
"""

from __future__ import annotations

import bisect
import heapq
import ipaddress
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from meshpilot.ir.discovered import ADDED, REMOVED, Change, DiscoveredEndpoints, EndpointHistory
from meshpilot.ir.model import Endpoint, Labels, Locality

ChangeCallback = Callable[[frozenset[str]], None]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Instance:
    """One discovered instance of a service."""

    id: str
    service: str
    host: str  # an IP literal: discovered endpoints never make a cluster resolve DNS
    port: int
    labels: Labels = ()
    source: str = "registration"  # "registration", "docker", ...
    ttl: float | None = None  # seconds; None: lives until its source removes it
    expires_at: float | None = None  # on the registry's clock

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def endpoint(self) -> Endpoint:
        where = Locality.of_labels(self.labels)
        return Endpoint(host=self.host, port=self.port, labels=self.labels,
                        region=where.region or None, zone=where.zone or None,
                        sub_zone=where.sub_zone or None)

    def describe(self, now: float) -> dict[str, object]:
        return {
            "id": self.id, "service": self.service, "address": self.address,
            "labels": dict(self.labels), "source": self.source, "ttl": self.ttl,
            "expires_in": (None if self.expires_at is None
                           else round(max(0.0, self.expires_at - now), 3)),
        }


def check_host(host: str) -> str:
    """`host` as a normalized IP literal; ValueError if it is not one."""
    return str(ipaddress.ip_address(host.strip("[]")))


class LimitExceeded(ValueError):
    """A registration refused by a per-Service limit; `retry_after` is set when waiting helps
    (the rate), None when it does not (the number of endpoints)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-Service bounds on what one source may add, so that a runaway or hostile registrant
    can neither grow a Service without bound nor flood the control plane with pushes."""

    max_instances: int = 1000  # instances of one Service from one source
    rate: float = 50.0  # new instances per second and Service, sustained...
    burst: int = 200  # ...after a burst of this many


class _Bucket:
    """A token bucket: `burst` at once, then `rate` per second."""

    __slots__ = ("level", "stamp")

    def __init__(self, burst: int, now: float):
        self.level, self.stamp = float(burst), now

    def take(self, limits: Limits, now: float) -> float:
        """0 if a token was taken, else the seconds until one is there."""
        self.level = min(float(limits.burst), self.level + (now - self.stamp) * limits.rate)
        self.stamp = now
        if self.level >= 1.0:
            self.level -= 1.0
            return 0.0
        return (1.0 - self.level) / limits.rate


_AddressKey = tuple[str, str, str, int]  # (source, service, host, port)


class _ServiceEndpoints:
    """One service's discovered endpoints, kept sorted as instances come and go: one endpoint
    per address (host, port), that of the instance first by (source, id). Each change costs a
    binary search and a list insertion, not a sort of every instance; the tuple handed out is
    made once per change and carries the history of changes (`ir/discovered.py`)."""

    __slots__ = ("_tuple", "addresses", "endpoints", "history", "holders")

    def __init__(self) -> None:
        self.addresses: list[tuple[str, int]] = []  # sorted
        self.endpoints: list[Endpoint] = []  # the winner at each address, aligned
        # address -> {(source, id): endpoint} of every instance there
        self.holders: dict[tuple[str, int], dict[tuple[str, str], Endpoint]] = {}
        self.history = EndpointHistory()
        self._tuple: DiscoveredEndpoints | None = None

    def __bool__(self) -> bool:
        return bool(self.addresses)

    def put(self, instance: Instance) -> None:
        address = (instance.host, instance.port)
        holders = self.holders.setdefault(address, {})
        before = self._winner(holders)
        holders[(instance.source, instance.id)] = instance.endpoint()
        self._changed(address, before, self._winner(holders))

    def drop(self, instance: Instance) -> None:
        address = (instance.host, instance.port)
        holders = self.holders.get(address)
        if holders is None:
            return
        before = self._winner(holders)
        if holders.pop((instance.source, instance.id), None) is None:
            return
        if not holders:
            del self.holders[address]
        self._changed(address, before, self._winner(holders))

    @staticmethod
    def _winner(holders: Mapping[tuple[str, str], Endpoint]) -> Endpoint | None:
        return holders[min(holders)] if holders else None

    def _changed(self, address: tuple[str, int], before: Endpoint | None,
                 after: Endpoint | None) -> None:
        if before is after or before == after:
            return
        i = bisect.bisect_left(self.addresses, address)
        changes: list[Change] = []
        if before is not None:
            changes.append((REMOVED, before))
        if after is None:
            del self.addresses[i]
            del self.endpoints[i]
        elif before is None:
            self.addresses.insert(i, address)
            self.endpoints.insert(i, after)
        else:
            self.endpoints[i] = after
        if after is not None:
            changes.append((ADDED, after))
        self.history.record(changes)
        self._tuple = None

    def tuple(self) -> DiscoveredEndpoints:
        if self._tuple is None:
            self._tuple = DiscoveredEndpoints(self.endpoints, self.history,
                                              self.history.version)
        return self._tuple


class EndpointRegistry:
    def __init__(self, clock: Clock = time.monotonic, limits: Mapping[str, Limits] | None = None):
        """`limits`: per source (e.g. {"registration": Limits()}); a source without limits
        (Docker, which reports what the engine runs) is not limited."""
        self.clock = clock
        self.limits = dict(limits or {})
        self._lock = threading.Lock()
        self._instances: dict[str, Instance] = {}
        # Indexes, so that a registration costs the same whatever the size of its Service.
        self._by_address: dict[_AddressKey, str] = {}
        self._counts: dict[tuple[str, str], int] = {}  # (source, service) -> instances
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        # (expires_at, id) of every instance with a TTL; stale entries (renewed or removed
        # since) are skipped when they come up, so a sweep costs what lapsed, not what lives.
        self._expiries: list[tuple[float, str]] = []
        self._callbacks: list[ChangeCallback] = []
        # Each service's endpoints, kept sorted as instances come and go (what endpoints() reads).
        self._services: dict[str, _ServiceEndpoints] = {}
        self.generation = 0  # bumped on every change

    # ---- callbacks -----------------------------------------------------------------------------

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    def _changed(self, services: Iterable[str]) -> None:
        changed = frozenset(services)
        if not changed:
            return
        for callback in tuple(self._callbacks):
            callback(changed)

    # ---- writing -------------------------------------------------------------------------------

    def register(self, service: str, host: str, port: int, labels: Mapping[str, str] | Labels = (),
                 *, source: str = "registration", ttl: float | None = None,
                 id: str | None = None) -> tuple[Instance, bool]:
        """Add an instance, or update the one of this source with the same service and address
        (a restarted instance registering again keeps its id). Returns (instance, created)."""
        host = check_host(host)
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range 1-65535")
        pairs = tuple(sorted(labels.items() if isinstance(labels, Mapping) else labels))
        with self._lock:
            existing_id = self._by_address.get((source, service, host, port))
            existing = self._instances.get(existing_id) if existing_id is not None else None
            if existing is not None and id is not None and existing.id != id:
                self._drop(existing.id)
                existing = None
            instance_id = existing.id if existing is not None else (id or uuid.uuid4().hex)
            previous = self._instances.get(instance_id)
            if previous is None:
                self._check_limits(source, service)
            instance = Instance(id=instance_id, service=service, host=host, port=port,
                                labels=pairs, source=source, ttl=ttl,
                                expires_at=None if ttl is None else self.clock() + ttl)
            if previous is not None:
                self._drop(instance_id)
            self._put(instance)
            visible = previous is None or previous.endpoint() != instance.endpoint() \
                or previous.service != instance.service
            if visible:
                self.generation += 1
        if visible:
            self._changed({service} | ({previous.service} if previous else set()))
        return instance, existing is None

    def check_limits(self, source: str, service: str) -> None:
        """LimitExceeded if `source` may not add another instance of `service` now (a token is
        taken from the rate bucket when it may): for a writer that adds elsewhere (the store)
        what `register` would add here."""
        with self._lock:
            self._check_limits(source, service)

    def find(self, source: str, service: str, host: str, port: int) -> Instance | None:
        """The instance of `source` at that service and address, if any."""
        with self._lock:
            instance_id = self._by_address.get((source, service, host, port))
            return self._instances.get(instance_id) if instance_id is not None else None

    def upsert(self, instance: Instance) -> None:
        """Put `instance` as it is (id, expiry and all), replacing the one with its id or its
        address: a copy of what another writer decided (a replica, through the store), so
        no limit applies. A change callback runs only if an endpoint changed."""
        with self._lock:
            previous = self._instances.get(instance.id)
            other = self._by_address.get(
                (instance.source, instance.service, instance.host, instance.port))
            if previous == instance:
                return
            if previous is not None:
                self._drop(instance.id)
            replaced = self._drop(other) if other is not None and other != instance.id else None
            self._put(instance)
            services = {instance.service} | ({previous.service} if previous else set()) \
                | ({replaced.service} if replaced else set())
            visible = replaced is not None or previous is None \
                or previous.endpoint() != instance.endpoint() \
                or previous.service != instance.service
            if visible:
                self.generation += 1
        if visible:
            self._changed(services)

    def _check_limits(self, source: str, service: str) -> None:
        """Raise LimitExceeded if `source` may not add another instance of `service` now."""
        limits = self.limits.get(source)
        if limits is None:
            return
        key = (source, service)
        if self._counts.get(key, 0) >= limits.max_instances:
            raise LimitExceeded(f"{service} has {limits.max_instances} endpoints from "
                                f"{source}, the most allowed; deregister one first")
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(limits.burst, now)
        wait = bucket.take(limits, now)
        if wait:
            raise LimitExceeded(f"too many new endpoints of {service} from {source} "
                                f"(at most {limits.rate:g}/s after {limits.burst})", wait)

    def _put(self, instance: Instance) -> None:
        self._instances[instance.id] = instance
        if instance.expires_at is not None:
            heapq.heappush(self._expiries, (instance.expires_at, instance.id))
        self._by_address[(instance.source, instance.service, instance.host, instance.port)] = \
            instance.id
        key = (instance.source, instance.service)
        self._counts[key] = self._counts.get(key, 0) + 1
        found = self._services.get(instance.service)
        if found is None:
            found = self._services[instance.service] = _ServiceEndpoints()
        found.put(instance)

    def _drop(self, instance_id: str) -> Instance | None:
        instance = self._instances.pop(instance_id, None)
        if instance is None:
            return None
        address = (instance.source, instance.service, instance.host, instance.port)
        if self._by_address.get(address) == instance_id:
            del self._by_address[address]
        key = (instance.source, instance.service)
        self._counts[key] -= 1
        if not self._counts[key]:
            del self._counts[key]
        found = self._services[instance.service]
        found.drop(instance)
        if not found:
            # Its history goes too: a tuple of a later one has another history, which a
            # translator that built from this one's endpoints sees (and builds anew).
            del self._services[instance.service]
        return instance

    def renew(self, instance_id: str) -> Instance:
        """A heartbeat: push the instance's expiry one TTL ahead. KeyError if it is gone."""
        with self._lock:
            instance = self._instances[instance_id]
            if instance.ttl is not None:
                instance = self._instances[instance_id] = replace(
                    instance, expires_at=self.clock() + instance.ttl)
                heapq.heappush(self._expiries, (instance.expires_at, instance_id))  # type: ignore[arg-type]
            return instance

    def remove(self, instance_id: str) -> Instance | None:
        with self._lock:
            instance = self._drop(instance_id)
            if instance is not None:
                self.generation += 1
        if instance is not None:
            self._changed({instance.service})
        return instance

    def replace_source(self, source: str, instances: Iterable[Instance]) -> None:
        """Make `instances` the whole of what `source` found (a source's full resync)."""
        new = {i.id: replace(i, source=source) for i in instances}
        with self._lock:
            old = {k: v for k, v in self._instances.items() if v.source == source}
            changed = {i.service for k, i in old.items() if new.get(k) != i}
            changed |= {i.service for k, i in new.items() if old.get(k) != i}
            for k in old:
                self._drop(k)
            for instance in new.values():
                self._put(instance)
            if changed:
                self.generation += 1
        self._changed(changed)

    def expire(self, now: float | None = None) -> list[Instance]:
        """Remove every instance whose TTL lapsed; returns them."""
        now = self.clock() if now is None else now
        with self._lock:
            lapsed = []
            while self._expiries and self._expiries[0][0] <= now:
                expires_at, instance_id = heapq.heappop(self._expiries)
                instance = self._instances.get(instance_id)
                if instance is not None and instance.expires_at == expires_at:
                    lapsed.append(instance)
                    self._drop(instance_id)
            if lapsed:
                self.generation += 1
        self._changed(i.service for i in lapsed)
        return lapsed

    # ---- reading -------------------------------------------------------------------------------

    def get(self, instance_id: str) -> Instance | None:
        return self._instances.get(instance_id)

    def instances(self, service: str | None = None,
                  source: str | None = None) -> tuple[Instance, ...]:
        with self._lock:
            found = [i for i in self._instances.values()
                     if (service is None or i.service == service)
                     and (source is None or i.source == source)]
        return tuple(sorted(found, key=lambda i: (i.service, i.host, i.port, i.source, i.id)))

    def endpoints(self) -> dict[str, tuple[Endpoint, ...]]:
        """Every service's discovered endpoints, in a deterministic order, one per address
        (an address found by two sources is one endpoint: the first source by name wins).

        Each service's tuple is kept between calls and made again only when that service
        changed; it is a `DiscoveredEndpoints`, which tells a translator what changed since an
        earlier one (the 2,000th registration of a Service costs what the first does)."""
        with self._lock:
            return {service: found.tuple() for service, found in sorted(self._services.items())
                    if found}

    def counts(self) -> dict[str, int]:
        """Instances per source."""
        with self._lock:
            counts: dict[str, int] = {}
            for (source, _), count in self._counts.items():
                counts[source] = counts.get(source, 0) + count
        return counts
