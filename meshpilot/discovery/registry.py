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

import ipaddress
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from meshpilot.ir.model import Endpoint, Labels

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
        return Endpoint(host=self.host, port=self.port, labels=self.labels)

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


class EndpointRegistry:
    def __init__(self, clock: Clock = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._instances: dict[str, Instance] = {}
        self._callbacks: list[ChangeCallback] = []
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
            existing = next((i for i in self._instances.values()
                             if i.source == source and i.service == service
                             and i.host == host and i.port == port), None)
            if existing is not None and id is not None and existing.id != id:
                self._instances.pop(existing.id)
                existing = None
            instance_id = existing.id if existing is not None else (id or uuid.uuid4().hex)
            instance = Instance(id=instance_id, service=service, host=host, port=port,
                                labels=pairs, source=source, ttl=ttl,
                                expires_at=None if ttl is None else self.clock() + ttl)
            previous = self._instances.get(instance_id)
            self._instances[instance_id] = instance
            visible = previous is None or previous.endpoint() != instance.endpoint() \
                or previous.service != instance.service
            if visible:
                self.generation += 1
        if visible:
            self._changed({service} | ({previous.service} if previous else set()))
        return instance, existing is None

    def renew(self, instance_id: str) -> Instance:
        """A heartbeat: push the instance's expiry one TTL ahead. KeyError if it is gone."""
        with self._lock:
            instance = self._instances[instance_id]
            if instance.ttl is not None:
                instance = self._instances[instance_id] = replace(
                    instance, expires_at=self.clock() + instance.ttl)
            return instance

    def remove(self, instance_id: str) -> Instance | None:
        with self._lock:
            instance = self._instances.pop(instance_id, None)
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
                del self._instances[k]
            self._instances.update(new)
            if changed:
                self.generation += 1
        self._changed(changed)

    def expire(self, now: float | None = None) -> list[Instance]:
        """Remove every instance whose TTL lapsed; returns them."""
        now = self.clock() if now is None else now
        with self._lock:
            lapsed = [i for i in self._instances.values()
                      if i.expires_at is not None and i.expires_at <= now]
            for instance in lapsed:
                del self._instances[instance.id]
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
        (an address found by two sources is one endpoint: the first source by name wins)."""
        with self._lock:
            ordered = sorted(self._instances.values(),
                             key=lambda i: (i.service, i.host, i.port, i.source, i.id))
        result: dict[str, list[Endpoint]] = {}
        seen: set[tuple[str, str, int]] = set()
        for instance in ordered:
            key = (instance.service, instance.host, instance.port)
            if key not in seen:
                seen.add(key)
                result.setdefault(instance.service, []).append(instance.endpoint())
        return {service: tuple(endpoints) for service, endpoints in result.items()}

    def counts(self) -> dict[str, int]:
        """Instances per source."""
        with self._lock:
            counts: dict[str, int] = {}
            for instance in self._instances.values():
                counts[instance.source] = counts.get(instance.source, 0) + 1
        return counts
