"""The gRPC side of xDS: a thin adapter that moves bytes between Envoy and `XdsStream`.

Every discovery service (ADS and the per-type CDS, EDS, LDS, RDS, SDS, each in SotW and delta) is
registered as a generic handler whose response serializer is the identity: responses are
assembled from pre-encoded resources by `XdsStream`, so nothing is serialized per stream here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge

from meshpilot.base import types
from meshpilot.xds.cache import SnapshotCache
from meshpilot.xds.requests import DeltaRequestDecoder
from meshpilot.xds.snapshot import Snapshot
from meshpilot.xds.status import Connection, ProxyRegistry
from meshpilot.xds.stream import HeldResources, ProtocolError, RequestKind, XdsStream

log = logging.getLogger("meshpilot.xds")

ViewOf = Callable[[Any], str]
Authorize = Callable[[Any, str, grpc.aio.ServicerContext], "str | None"]
# Asked for a view the cache has no snapshot of when a stream first names it: returns once the
# snapshot is in the cache (None: there is none to send yet, the stream waits for a `set`).
# Raising ends the stream with the error.
RequestView = Callable[[str], Awaitable[Snapshot | None]]
# Which snapshot one stream follows, given its view's newest (a staged rollout keeps some
# streams on the previous one): returns the one to send it, or None for nothing yet.
Follow = Callable[[Connection, "Snapshot | None"], "Snapshot | None"]


class XdsMetrics:
    """The streams' Prometheus metrics, in `registry` (a new one by default: several servers in
    one process never share counters). The process's `Metrics` adds its own to these."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.connected = Gauge("meshpilot_xds_connected_streams",
                               "xDS streams open now", ["variant"], registry=r)
        self.responses = Counter("meshpilot_xds_responses_total",
                                 "Discovery responses sent", ["type"], registry=r)
        self.resources_sent = Counter("meshpilot_xds_resources_sent_total",
                                      "Resources carried by responses", ["type"], registry=r)
        self.bytes_sent = Counter("meshpilot_xds_bytes_sent_total",
                                  "Bytes of discovery responses sent", ["type"], registry=r)
        self.acks = Counter("meshpilot_xds_acks_total", "ACKs received", ["type"], registry=r)
        self.nacks = Counter("meshpilot_xds_nacks_total", "NACKs received (Envoy rejected config)",
                             ["type"], registry=r)
        self.stale = Counter("meshpilot_xds_stale_requests_total",
                             "Requests ignored for a stale nonce", ["type"], registry=r)


def view_of_node_cluster(node: Any) -> str:
    """The default view: every Envoy with the same `node.cluster` gets the same config."""
    return node.cluster


# (gRPC service, SotW method, delta method, type served or None for ADS)
_SERVICES: tuple[tuple[str, str, str, str | None], ...] = (
    ("envoy.service.discovery.v3.AggregatedDiscoveryService",
     "StreamAggregatedResources", "DeltaAggregatedResources", None),
    ("envoy.service.cluster.v3.ClusterDiscoveryService", "StreamClusters", "DeltaClusters",
     types.CLUSTER),
    ("envoy.service.endpoint.v3.EndpointDiscoveryService", "StreamEndpoints", "DeltaEndpoints",
     types.ENDPOINT),
    ("envoy.service.listener.v3.ListenerDiscoveryService", "StreamListeners", "DeltaListeners",
     types.LISTENER),
    ("envoy.service.route.v3.RouteDiscoveryService", "StreamRoutes", "DeltaRoutes", types.ROUTE),
    ("envoy.service.secret.v3.SecretDiscoveryService", "StreamSecrets", "DeltaSecrets",
     types.SECRET),
)

_END = object()
_WAKE = object()


class _Box:
    """A message passed through gRPC and emptied by whoever takes it. gRPC's loops keep the last
    message they handled referenced until the next one (their own loop variables): the last
    response sent (~0.6 MiB for a 5,000-cluster initial sync) and, in SotW, the last request (an
    ACK naming all 5,000 resources). Boxed, only an empty box stays behind."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def take(self) -> Any:
        value, self.value = self.value, None
        return value


def _take_bytes(box: _Box) -> bytes:
    return box.take()  # type: ignore[no-any-return]


def _boxed(parse: Callable[[bytes], Any]) -> Callable[[bytes], _Box]:
    return lambda data: _Box(parse(data))


class XdsServer:
    def __init__(self, cache: SnapshotCache, *, registry: ProxyRegistry | None = None,
                 metrics: XdsMetrics | None = None, view_of: ViewOf = view_of_node_cluster,
                 control_plane_id: str = "meshpilot",
                 on_nack: Callable[[Connection, str, str], None] | None = None,
                 authorize: Authorize | None = None, request_view: RequestView | None = None,
                 on_settled: Callable[[Connection], None] | None = None,
                 on_closed: Callable[[Connection], None] | None = None,
                 follow: Follow | None = None, vhds: bool = False):
        """`authorize(node, view, context)`: None lets a stream have that view, a string refuses
        it (PERMISSION_DENIED with that text); see `meshpilot.xds.security.IdentityCheck`.
        `request_view(view)`: builds a view that has no snapshot yet (the runtime translates it,
        off the event loop); without it, a stream waits until its view's snapshot is set.
        `on_settled(conn)`: the stream is idle (nothing in flight, nothing to send) on its
        snapshot, after an input; `on_closed(conn)`: it ended (the runtime's convergence).
        `follow(conn, newest)`: the snapshot that stream follows (runtime/rollout.py); without
        it, every stream follows its view's newest.

        `vhds`: delta ADS streams get route configurations in the VHDS layout (xds/vhds.py)."""
        self.cache = cache
        self.registry = registry or ProxyRegistry()
        self.metrics = metrics or XdsMetrics()
        self.view_of = view_of
        self.control_plane_id = control_plane_id
        self.on_nack = on_nack
        self.authorize = authorize
        self.request_view = request_view
        self.on_settled = on_settled
        self.on_closed = on_closed
        self.follow = follow
        self.vhds = vhds
        # Resource versions an Envoy refused: no stream of this server sends them again.
        self.held = HeldResources()
        # Resuming delta requests that many streams send alike, decoded once (xds/requests.py).
        self.delta_requests = DeltaRequestDecoder()
        # Each type's labelled counters, looked up once: `labels()` per response (three for
        # each of 10,000 streams after a change) was a few per cent of the event loop.
        self._sent: dict[str, tuple[Any, Any, Any]] = {}
        self._answered: dict[tuple[str, RequestKind], Any] = {}

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        out = []
        for service, sotw_method, delta_method, type_url in _SERVICES:
            methods = {
                sotw_method: grpc.stream_stream_rpc_method_handler(
                    self._handler(delta=False, type_url=type_url),
                    request_deserializer=_boxed(discovery_pb2.DiscoveryRequest.FromString),
                    response_serializer=_take_bytes),
                delta_method: grpc.stream_stream_rpc_method_handler(
                    self._handler(delta=True, type_url=type_url),
                    request_deserializer=_boxed(self.delta_requests.decode),
                    response_serializer=_take_bytes),
            }
            out.append(grpc.method_handlers_generic_handler(service, methods))
        return out

    def _handler(self, *, delta: bool, type_url: str | None):
        async def handle(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext):
            stream = XdsStream(delta=delta, ads=type_url is None, type_url=type_url,
                               control_plane_id=self.control_plane_id, held=self.held,
                               vhds=self.vhds)
            async for payload in self._serve(stream, requests, context):
                yield _Box(payload)
                # Between pushes, hold no reference to the last response: with 5,000 clusters
                # that is ~0.5 MiB per stream kept alive for nothing.
                del payload
        return handle

    async def _serve(self, stream: XdsStream, requests: AsyncIterator[Any],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        woken = False

        def wake() -> None:
            # Coalesce: one pending wake-up however many snapshots arrive before the stream runs.
            nonlocal woken
            if not woken:
                woken = True
                inbox.put_nowait(_WAKE)

        async def read() -> None:
            try:
                async for box in requests:
                    inbox.put_nowait(box.take())  # the inbox owns it now; gRPC keeps the box
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                pass
            finally:
                inbox.put_nowait(_END)

        conn = self.registry.open(stream, context.peer(), time.time())
        variant = conn.variant
        self.metrics.connected.labels(variant).inc()
        reader = asyncio.get_running_loop().create_task(read())
        unwatch: Callable[[], None] | None = None
        try:
            while True:
                batch = [await inbox.get()]
                while not inbox.empty():
                    batch.append(inbox.get_nowait())
                for item in batch:
                    if item is _END:
                        return
                    if item is _WAKE:
                        woken = False
                        # Fix: `is not None`, not truthiness: a node with an empty cluster has
                        # view "" (served its first snapshot), and must get the updates too.
                        snapshot = (self._followed(conn, self.cache.get(conn.view))
                                    if conn.view is not None else None)
                        if snapshot is not None:
                            await self._prepare(stream, snapshot)
                            stream.on_snapshot(snapshot)
                        continue
                    try:
                        type_url, kind = stream.on_request(item, time.time())
                    except ProtocolError as e:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
                        return
                    self._count(conn, type_url, kind)
                    if conn.view is None:
                        view = self.view_of(stream.node)
                        refusal = (self.authorize(stream.node, view, context)
                                   if self.authorize is not None else None)
                        if refusal is not None:
                            log.warning("%s refused: node %r: %s", conn.peer, conn.node_id,
                                        refusal)
                            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
                            return
                        conn.view = view
                        unwatch = self.cache.watch(conn.view, wake)
                        snapshot = self.cache.get(conn.view)
                        if snapshot is None and self.request_view is not None:
                            snapshot = await self.request_view(conn.view)
                        snapshot = self._followed(conn, snapshot)
                        if snapshot is not None:
                            await self._prepare(stream, snapshot)
                            stream.on_snapshot(snapshot)
                        log.info("%s connected: node %r view %r (%s)", conn.peer,
                                 conn.node_id, conn.view, variant)
                outbound = stream.responses(time.time())
                if not outbound and self.on_settled is not None and \
                        stream.snapshot is not None and \
                        not any(s.in_flight for s in stream.types.values()):
                    self.on_settled(conn)
                # While waiting for the next input, hold nothing of this round: neither the last
                # requests nor the responses (each may be ~0.5 MiB with thousands of clusters).
                del batch, item
                while outbound:
                    out = outbound.pop(0)
                    responses, resources, sent_bytes = self._sent_counters(out.type_url)
                    responses.inc()
                    resources.inc(len(out.names))
                    sent_bytes.inc(len(out.payload))
                    payload = out.payload
                    del out
                    yield payload
                    del payload
        finally:
            reader.cancel()
            if unwatch is not None:
                unwatch()
            self.registry.close(conn)
            if self.on_closed is not None:
                self.on_closed(conn)
            self.metrics.connected.labels(variant).dec()
            if conn.view is not None:
                log.info("%s disconnected: node %r", conn.peer, conn.node_id)

    def _followed(self, conn: Connection, newest: Snapshot | None) -> Snapshot | None:
        return newest if self.follow is None else self.follow(conn, newest)

    @staticmethod
    async def _prepare(stream: XdsStream, snapshot: Snapshot) -> None:
        """A VHDS stream's layout of `snapshot` (xds/vhds.py), made on a worker thread once per
        snapshot (not on the event loop, which every stream shares)."""
        if stream.vhds and not snapshot.vhds_ready:
            await asyncio.to_thread(snapshot.vhds)

    def _sent_counters(self, type_url: str) -> tuple[Any, Any, Any]:
        found = self._sent.get(type_url)
        if found is None:
            short = types.short_name(type_url)
            found = self._sent[type_url] = (self.metrics.responses.labels(short),
                                            self.metrics.resources_sent.labels(short),
                                            self.metrics.bytes_sent.labels(short))
        return found

    def _count(self, conn: Connection, type_url: str, kind: RequestKind) -> None:
        if kind is RequestKind.ACK or kind is RequestKind.STALE:
            counter = self._answered.get((type_url, kind))
            if counter is None:
                metric = self.metrics.acks if kind is RequestKind.ACK else self.metrics.stale
                counter = self._answered[(type_url, kind)] = metric.labels(
                    types.short_name(type_url))
            counter.inc()
        elif kind is RequestKind.NACK:
            short = types.short_name(type_url)
            self.metrics.nacks.labels(short).inc()
            rejection = conn.stream.types[type_url].rejection
            message = rejection.message if rejection else ""
            log.warning("node %r rejected %s version %s: %s", conn.node_id, short,
                        rejection.version if rejection else "?", message)
            for name in sorted({h.name for h in self.held.all() if h.type_url == type_url
                                and h.message == message and h.view == conn.stream.node_cluster}):
                where = self.registry.locate(conn.view or "", type_url, name)
                log.warning("  held back: %s %r%s", short, name,
                            f", from {where}" if where else "")
            if self.on_nack is not None:
                self.on_nack(conn, type_url, message)
