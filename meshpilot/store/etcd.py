"""The etcd v3 store, on aetcd (an asyncio client on grpcio; docs/operations.md).

`EtcdStore` is the few operations meshpilot needs (ranges, puts, create-if-absent, deletes,
leases, watches), every call with a deadline, failing over between the endpoints of the
`--store` URL; a call no endpoint answers raises `StoreUnavailable`. `Mirror` keeps a
callback in step with every key under a prefix (a listing, then the watch from the listing's
revision; after a lost watch it lists again, so nothing is missed while etcd was away).
`ReplicaLease` is one lease per replica, kept alive, re-granted if it lapsed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import AsyncGenerator, Callable
from typing import Any

import aetcd
from aetcd import exceptions as etcd_errors

from meshpilot.store import (
    DEFAULT_PREFIX,
    Entry,
    Event,
    StoreError,
    StoreUnavailable,
    check_prefix,
    parse_store_url,
)

log = logging.getLogger("meshpilot.store")

_CALL_TIMEOUT = 2.0  # seconds, each call to one endpoint
_CHANNEL_OPTIONS = {
    # Find a dead etcd (or a partition) in seconds, not at TCP's pace: the watch stream is
    # what tells a replica that registrations changed.
    "grpc.keepalive_time_ms": 3_000,
    "grpc.keepalive_timeout_ms": 2_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
    # etcd's own client-side backoff, shortened: a restarted etcd is used again within 1 s.
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1_000,
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
}
# Errors that mean "this endpoint cannot be reached now", as opposed to a refused request.
_UNREACHABLE = (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError,
                etcd_errors.WatchTimeoutError, asyncio.TimeoutError, ConnectionError)


def _range_end(prefix: bytes) -> bytes:
    return aetcd.utils.prefix_range_end(prefix)


class EtcdStore:
    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, timeout: float = _CALL_TIMEOUT):
        self.url = url
        self.endpoints = parse_store_url(url)
        self.prefix = check_prefix(prefix)
        self.timeout = timeout
        self._current = 0
        self._client: aetcd.Client | None = None
        self.reachable = True  # as of the last call

    def describe(self) -> str:
        return "etcd at " + ",".join(f"{h}:{p}" for h, p in self.endpoints)

    def unavailable(self, detail: object) -> StoreUnavailable:
        return StoreUnavailable(f"the store ({self.describe()}, prefix {self.prefix}) is "
                                f"unreachable: {detail}")

    def key(self, sub: str) -> bytes:
        return f"{self.prefix}/{sub}".encode()

    def _sub(self, key: bytes) -> str:
        return key.decode()[len(self.prefix) + 1:]

    def _entry(self, kv: Any) -> Entry:
        return Entry(self._sub(kv.key), bytes(kv.value), int(kv.lease), int(kv.mod_revision))

    def _connect(self) -> aetcd.Client:
        if self._client is None:
            host, port = self.endpoints[self._current]
            self._client = aetcd.Client(host, port, timeout=self.timeout,  # type: ignore[arg-type]
                                        options=dict(_CHANNEL_OPTIONS))
        return self._client

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), self.timeout)
            except Exception:  # closing a broken channel: nothing more to do with it
                log.debug("closing the etcd client failed", exc_info=True)

    async def _call(self, op: Callable[[aetcd.Client], Any]) -> Any:
        """`op(client)` on the current endpoint, then on each other one; StoreUnavailable if
        none answers. A refused request (etcd answered) raises its ClientError at once."""
        last: BaseException | None = None
        for _ in range(len(self.endpoints)):
            try:
                result = await asyncio.wait_for(op(self._connect()), self.timeout + 0.5)
            except _UNREACHABLE as e:
                last = e
                await self._drop_client()
                self._current = (self._current + 1) % len(self.endpoints)
                continue
            except etcd_errors.ClientError as e:
                # aetcd wraps a refused connection as a plain ClientError when the channel
                # never came up; etcd itself answers with a status code.
                if "connect" in str(e).lower() or "unavailable" in str(e).lower():
                    last = e
                    await self._drop_client()
                    self._current = (self._current + 1) % len(self.endpoints)
                    continue
                raise StoreError(f"{self.describe()} refused the request: {e}") from None
            if not self.reachable:
                log.info("the store (%s) is reachable again", self.describe())
            self.reachable = True
            return result
        if self.reachable:
            log.warning("the store (%s) is unreachable: %s", self.describe(), last)
        self.reachable = False
        raise self.unavailable(last or "no endpoint answered")

    # ---- keys ----------------------------------------------------------------------------------

    async def get(self, sub: str) -> Entry | None:
        found = await self._call(lambda c: c.get(self.key(sub)))
        return None if found is None else self._entry(found)

    async def get_prefix(self, sub: str) -> tuple[list[Entry], int]:
        """Every entry under `sub`, and the store's revision they were read at."""
        key = self.key(sub)

        async def op(client: aetcd.Client) -> Any:
            return await client.get_range(key, _range_end(key))

        found = await self._call(op)
        return [self._entry(kv) for kv in found.kvs], int(found.header.revision)

    async def put(self, sub: str, value: bytes, lease: int = 0) -> int:
        """Returns the revision of the write."""
        found = await self._call(lambda c: c.put(self.key(sub), value, lease=lease or None))
        return int(found.header.revision)

    async def create(self, sub: str, value: bytes, lease: int = 0) -> tuple[bool, Entry | None]:
        """Put `value` only if the key does not exist: (created, the entry there now)."""
        key = self.key(sub)

        async def op(client: aetcd.Client) -> Any:
            t = client.transactions
            return await client.transaction(
                compare=[t.create(key) == 0],
                success=[t.put(key, value, lease=lease or None)],
                failure=[t.get(key)])

        succeeded, responses = await self._call(op)
        if succeeded:
            return True, Entry(sub, value, lease, 0)
        kvs = responses[0] if responses else []
        return False, (self._entry(kvs[0][1]) if kvs else None)

    async def replace(self, sub: str, value: bytes, lease: int, mod_revision: int) -> bool:
        """Put `value` only if the key is still at `mod_revision` (0: does not exist)."""
        key = self.key(sub)

        async def op(client: aetcd.Client) -> Any:
            t = client.transactions
            compare = t.create(key) == 0 if mod_revision == 0 else t.mod(key) == mod_revision
            return await client.transaction(compare=[compare],
                                            success=[t.put(key, value, lease=lease or None)],
                                            failure=[])

        succeeded, _ = await self._call(op)
        return bool(succeeded)

    async def delete(self, sub: str) -> bool:
        found = await self._call(lambda c: c.delete(self.key(sub)))
        return bool(found and found.deleted)

    # ---- leases --------------------------------------------------------------------------------

    async def grant(self, ttl: float) -> tuple[int, int]:
        """A new lease of at least `ttl` seconds: (its id, the TTL etcd granted: whole seconds,
        at least etcd's minimum)."""
        lease = await self._call(lambda c: c.lease(max(1, math.ceil(ttl))))
        return int(lease.id), int(lease.ttl)

    async def refresh(self, lease: int) -> int:
        """Keep a lease alive: its TTL again, or 0 if it is gone (expired or revoked)."""
        reply = await self._call(lambda c: c.refresh_lease(lease))
        return int(reply.TTL) if reply is not None else 0

    async def revoke(self, lease: int) -> None:
        try:
            await self._call(lambda c: c.revoke_lease(lease))
        except StoreError as e:  # already gone: what revoking wanted
            if "not found" not in str(e):
                raise

    # ---- watches -------------------------------------------------------------------------------

    async def watch(self, sub: str, start_revision: int) -> AsyncGenerator[Event, None]:
        """Every change under `sub` from `start_revision` on. Ends with StoreUnavailable when
        the stream is lost (list again and watch from there), StoreError if compacted."""
        key = self.key(sub)

        async def op(client: aetcd.Client) -> Any:
            return await client.watch(key, range_end=_range_end(key),
                                      start_revision=start_revision)

        watch = await self._call(op)
        try:
            async for event in watch:
                entry = self._entry(event.kv)
                yield Event("put" if event.kind == "PUT" else "delete", entry,
                            entry.mod_revision)
        except etcd_errors.RevisionCompactedError as e:
            raise StoreError(str(e)) from None
        except (*_UNREACHABLE, etcd_errors.ClientError) as e:
            await self._drop_client()
            raise self.unavailable(f"watch lost: {e}") from None
        finally:
            if self._client is not None:
                try:
                    await asyncio.wait_for(watch.cancel(), 1.0)
                except Exception:
                    log.debug("cancelling a watch failed", exc_info=True)
        # The stream ended without an error: aetcd's watcher was shut down (close()).
        raise self.unavailable("watch closed")

    async def close(self) -> None:
        await self._drop_client()


def backoff(attempt: int, base: float = 0.1, cap: float = 2.0) -> float:
    """Seconds before retry `attempt` (0, 1, ...): exponential, full jitter from half of it."""
    delay = min(cap, base * (2 ** min(attempt, 10)))
    return delay * (0.5 + random.random() / 2)


class Mirror:
    """`on_reset(entries)` with everything under `sub`, then `on_event(event)` per change;
    after a lost watch (etcd restarted, partitioned, compacted), a fresh listing again. While
    the store is unreachable nothing is called: what was mirrored stays as it was.

    `resync` (seconds, None: never): after that long without an event, list again
    (`on_reset` with what is there) and watch from there. A watch stream that the server
    ends without an error leaves aetcd's watch waiting for events that never come; a
    listing now and then bounds how long a missed change can stay missed, as informers'
    resyncs do. `on_reset` must then cost nothing when nothing changed."""

    def __init__(self, store: EtcdStore, sub: str, on_reset: Callable[[list[Entry]], None],
                 on_event: Callable[[Event], None], resync: float | None = None):
        self.store, self.sub = store, sub
        self.on_reset, self.on_event = on_reset, on_event
        self.resync = resync
        self.synced = asyncio.Event()  # set while the watch runs after a listing

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                entries, revision = await self.store.get_prefix(self.sub)
                self.on_reset(entries)
                self.synced.set()
                attempt = 0
                await self._follow(revision)
                continue  # quiet for `resync`: list again at once
            except StoreError as e:
                if self.synced.is_set():
                    log.warning("following %s/%s: %s; serving the last known state",
                                self.store.prefix, self.sub, e)
                self.synced.clear()
            except Exception:  # a follower must outlive any surprise: say it, then list again
                log.exception("following %s/%s failed; listing again", self.store.prefix,
                              self.sub)
                self.synced.clear()
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    async def _follow(self, revision: int) -> None:
        """Hand on every change after `revision`; return after `resync` without one."""
        events = self.store.watch(self.sub, revision + 1)
        try:
            while True:
                try:
                    event = await asyncio.wait_for(anext(events), self.resync)
                except TimeoutError:
                    return
                self.on_event(event)
        finally:
            await events.aclose()


class ReplicaLease:
    """One lease for this replica's own keys (its Envoys' status, an election), kept alive at a
    third of its TTL. If it lapsed (etcd was away longer than the TTL), a new one is granted
    and `on_new` callbacks are called, so owners write their keys again."""

    def __init__(self, store: EtcdStore, ttl: float = 5.0):
        self.store, self.ttl = store, ttl
        self.id = 0  # 0: none held now
        self._callbacks: list[Callable[[int], None]] = []
        self.held = asyncio.Event()
        self._since_contact = 0.0

    def on_new(self, callback: Callable[[int], None]) -> None:
        self._callbacks.append(callback)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last_contact = loop.time()
        attempt = 0
        while True:
            try:
                if not self.id:
                    self.id, _ = await self.store.grant(self.ttl)
                    self.held.set()
                    for callback in tuple(self._callbacks):
                        callback(self.id)
                elif await self.store.refresh(self.id) <= 0:
                    log.warning("replica lease %x lapsed; granting a new one", self.id)
                    self._lapse()
                    continue
                last_contact = loop.time()
                attempt = 0
                await asyncio.sleep(self.ttl / 3)
            except StoreError:
                if self.id and loop.time() - last_contact >= self.ttl:
                    self._lapse()  # etcd expired it meanwhile, or will have when it is back
                await asyncio.sleep(backoff(attempt, cap=self.ttl / 3))
                attempt += 1

    def _lapse(self) -> None:
        self.id = 0
        self.held.clear()

    async def revoke(self) -> None:
        if self.id:
            lease, self.id = self.id, 0
            self.held.clear()
            try:
                await self.store.revoke(lease)
            except StoreError:
                log.info("could not revoke the replica lease: it expires by itself")
