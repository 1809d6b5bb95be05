"""A small scripted xDS client over grpc.aio, test resource builders and an in-process server.

Used by the protocol conformance tests. Tests drive coroutines with `asyncio.run` and every wait
here is bounded, so a server that stays silent fails the test with a clear message instead of
hanging it.

- `XdsClient`: one ADS (or per-type) stream, SotW or delta: `send(**fields)`, `recv(timeout)`,
  `ack(response)`, `nack(response, message)`, `expect_silence(seconds)`, `close()`.
- Resource builders: `eds_cluster`, `static_cluster`, `load_assignment`, `rds_listener`,
  `route_config`, and `snapshot_of(view, *messages)`.
- `running_server(cache)`: grpc.aio server with `XdsServer(cache).handlers()` and CSDS on
  127.0.0.1:0, yielding (address, cache, xds_server).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from meshpilot.base import types
from meshpilot.xds.cache import SnapshotCache
from meshpilot.xds.csds import add_csds
from meshpilot.xds.server import XdsServer
from meshpilot.xds.snapshot import Snapshot

CDS, EDS, LDS, RDS, SDS = (types.CLUSTER, types.ENDPOINT, types.LISTENER, types.ROUTE,
                           types.SECRET)

# gRPC method paths: (SotW, delta) per service; "ads" or a type URL.
METHODS: dict[str, tuple[str, str]] = {
    "ads": ("/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"),
    CDS: ("/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters",
          "/envoy.service.cluster.v3.ClusterDiscoveryService/DeltaClusters"),
    EDS: ("/envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints",
          "/envoy.service.endpoint.v3.EndpointDiscoveryService/DeltaEndpoints"),
    LDS: ("/envoy.service.listener.v3.ListenerDiscoveryService/StreamListeners",
          "/envoy.service.listener.v3.ListenerDiscoveryService/DeltaListeners"),
    RDS: ("/envoy.service.route.v3.RouteDiscoveryService/StreamRoutes",
          "/envoy.service.route.v3.RouteDiscoveryService/DeltaRoutes"),
    SDS: ("/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
          "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets"),
}

RECV_TIMEOUT = 5.0  # generous: a loaded 2-core CI machine must never make a passing test flaky
SILENCE = 0.3  # short: silence is asserted often and every window costs wall time

_MESSAGE_TYPES: dict[str, type[Message]] = {
    CDS: cluster_pb2.Cluster,
    EDS: endpoint_pb2.ClusterLoadAssignment,
    LDS: listener_pb2.Listener,
    RDS: route_pb2.RouteConfiguration,
    SDS: secret_pb2.Secret,
    types.VIRTUAL_HOST: route_components_pb2.VirtualHost,
}

_END = object()


def node(node_id: str = "envoy-1", cluster: str = "edge") -> base_pb2.Node:
    return base_pb2.Node(id=node_id, cluster=cluster)


# ----- decoding responses -------------------------------------------------------------------------


def resource_name(type_url: str, message: Message) -> str:
    if type_url == EDS:
        return message.cluster_name  # type: ignore[attr-defined]
    return message.name  # type: ignore[attr-defined]


def unpack(packed: any_pb2.Any) -> Message:
    """The message inside a response's `Any` (a type these tests build)."""
    cls = _MESSAGE_TYPES[packed.type_url]
    message = cls()
    message.ParseFromString(packed.value)
    return message


def names_of(response: Any) -> list[str]:
    """The names of the resources a (SotW or delta) response carries, in wire order."""
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return [r.name for r in response.resources]
    return [resource_name(a.type_url, unpack(a)) for a in response.resources]


def messages_of(response: Any) -> dict[str, Message]:
    """{name: message} of what a response carries."""
    anys = ([r.resource for r in response.resources]
            if isinstance(response, discovery_pb2.DeltaDiscoveryResponse)
            else list(response.resources))
    out = {}
    for packed in anys:
        message = unpack(packed)
        out[resource_name(packed.type_url, message)] = message
    return out


# ----- the scripted client ------------------------------------------------------------------------


class XdsClient:
    """One xDS stream, scripted by the test: every request is explicit, every wait bounded.

    `service` is "ads" or a type URL (that type's own discovery service). The node is added to
    the first request automatically; pass `node=None` to `send` to leave it out.
    """

    def __init__(self, address: str, *, delta: bool = False, service: str = "ads",
                 node_id: str = "envoy-1", cluster: str = "edge",
                 channel: grpc.aio.Channel | None = None, token: str | None = None):
        """`token`: sent as `authorization: Bearer` metadata, as Envoy sends its node token."""
        self.address = address
        self.token = token
        self.delta = delta
        self.service = service
        self.node = node(node_id, cluster)
        self._own_channel = channel is None
        self._channel = channel
        self._call: Any = None
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._sent_node = False
        self.error: grpc.aio.AioRpcError | None = None  # how the stream ended, if it did
        self.ended = asyncio.Event()

    async def __aenter__(self) -> XdsClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> XdsClient:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address)
        sotw_path, delta_path = METHODS[self.service]
        if self.delta:
            method = self._channel.stream_stream(
                delta_path, request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString)
        else:
            method = self._channel.stream_stream(
                sotw_path, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString)
        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else None
        self._call = method(metadata=metadata)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    break
                self._inbox.put_nowait(response)
        except grpc.aio.AioRpcError as e:
            self.error = e
        except asyncio.CancelledError:
            pass
        finally:
            self._inbox.put_nowait(_END)
            self.ended.set()

    # ---- requests -----------------------------------------------------------------------------

    def request(self, **fields: Any) -> Any:
        """Build the request `send` would send (node added to the first one)."""
        include_node = "node" not in fields and not self._sent_node
        if "node" in fields and fields["node"] is None:
            del fields["node"]
        elif include_node:
            fields["node"] = self.node
        if self.delta:
            return discovery_pb2.DeltaDiscoveryRequest(**fields)
        return discovery_pb2.DiscoveryRequest(**fields)

    async def send(self, **fields: Any) -> None:
        """Send one DiscoveryRequest (or DeltaDiscoveryRequest) built from `fields`."""
        request = self.request(**fields)
        if request.HasField("node"):
            self._sent_node = True
        await asyncio.wait_for(self._call.write(request), RECV_TIMEOUT)

    async def ack(self, response: Any, **fields: Any) -> None:
        """ACK a response: its nonce (and SotW version), its type; extra fields as given."""
        fields.setdefault("type_url", response.type_url)
        fields["response_nonce"] = response.nonce
        if not self.delta:
            fields.setdefault("version_info", response.version_info)
        await self.send(**fields)

    async def nack(self, response: Any, message: str, *, version_info: str = "",
                   **fields: Any) -> None:
        """NACK a response with Envoy-style error_detail; SotW version_info is the previous one."""
        fields.setdefault("type_url", response.type_url)
        fields["response_nonce"] = response.nonce
        fields["error_detail"] = status_pb2.Status(code=3, message=message)
        if not self.delta:
            fields["version_info"] = version_info
        await self.send(**fields)

    # ---- responses ----------------------------------------------------------------------------

    async def recv(self, timeout: float = RECV_TIMEOUT) -> Any:
        """The next response; AssertionError if none arrives within `timeout` or the stream ends."""
        try:
            item = await asyncio.wait_for(self._inbox.get(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no xDS response within {timeout}s on {self.service} "
                f"({'delta' if self.delta else 'sotw'})") from None
        if item is _END:
            self._inbox.put_nowait(_END)  # keep reporting the end to later calls
            raise AssertionError(f"the stream ended instead of responding: {self._ended_how()}")
        return item

    async def recv_type(self, type_url: str, timeout: float = RECV_TIMEOUT) -> Any:
        """The next response, asserting it is of `type_url`."""
        response = await self.recv(timeout)
        assert response.type_url == type_url, (
            f"expected a {types.short_name(type_url)} response, got "
            f"{types.short_name(response.type_url)} {names_of(response)}")
        return response

    async def expect_silence(self, seconds: float = SILENCE) -> None:
        """Assert that nothing arrives within `seconds` (the stream staying open counts)."""
        try:
            item = await asyncio.wait_for(self._inbox.get(), seconds)
        except TimeoutError:
            return
        if item is _END:
            self._inbox.put_nowait(_END)
            raise AssertionError(f"the stream ended: {self._ended_how()}")
        raise AssertionError(
            f"expected silence, got a {types.short_name(item.type_url)} response "
            f"{names_of(item)} version={getattr(item, 'version_info', '')} nonce={item.nonce}")

    async def wait_closed(self, timeout: float = RECV_TIMEOUT) -> grpc.StatusCode:
        """Wait until the server ends the stream; its status code (OK if it ended cleanly)."""
        try:
            await asyncio.wait_for(self.ended.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"the stream was still open after {timeout}s") from None
        return self.error.code() if self.error is not None else grpc.StatusCode.OK

    def _ended_how(self) -> str:
        if self.error is None:
            return "OK"
        return f"{self.error.code().name}: {self.error.details()}"

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._reader, RECV_TIMEOUT)
        if self._own_channel and self._channel is not None:
            await self._channel.close()
            self._channel = None


# ----- test resources -----------------------------------------------------------------------------


def _ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(),
                                          resource_api_version=config_source_pb2.V3)


def _address(port: int, host: str = "127.0.0.1") -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host,
                                                                        port_value=port))


def _millis(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def eds_cluster(name: str, *, service_name: str = "",
                connect_timeout_ms: int = 1000) -> cluster_pb2.Cluster:
    """An EDS cluster over ADS; its endpoints are the ClusterLoadAssignment `service_name or name`."""
    return cluster_pb2.Cluster(
        name=name, type=cluster_pb2.Cluster.EDS,
        connect_timeout=_millis(connect_timeout_ms),
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads_source(),
                                                                service_name=service_name))


def static_cluster(name: str, ports: Iterable[int] = (8080,),
                   connect_timeout_ms: int = 1000) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name, type=cluster_pb2.Cluster.STATIC,
        connect_timeout=_millis(connect_timeout_ms),
        load_assignment=load_assignment(name, ports))


def load_assignment(cluster_name: str,
                    ports: Iterable[int] = (8080,)) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster_name,
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(address=_address(port)))
            for port in ports])])


def rds_listener(name: str, route_config_name: str, port: int = 10000) -> listener_pb2.Listener:
    """A listener whose HttpConnectionManager takes route configuration `route_config_name` by
    RDS over ADS (typed_config as an `Any`, as Envoy is sent it)."""
    router = any_pb2.Any()
    router.Pack(router_pb2.Router())
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        rds=hcm_pb2.Rds(route_config_name=route_config_name, config_source=_ads_source()),
        http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=router)])
    typed = any_pb2.Any()
    typed.Pack(manager)
    return listener_pb2.Listener(
        name=name, address=_address(port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[
            listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager",
                                           typed_config=typed)])])


def route_config(name: str, clusters: Iterable[str]) -> route_pb2.RouteConfiguration:
    """One virtual host for every domain; `/<cluster>` routes to each cluster."""
    routes = [route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix=f"/{c}"),
        route=route_components_pb2.RouteAction(cluster=c)) for c in clusters]
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=[
        route_components_pb2.VirtualHost(name=name, domains=["*"], routes=routes)])


def snapshot_of(view: str, *messages: Message) -> Snapshot:
    """A snapshot of the given clusters, load assignments, listeners and route configurations."""
    by_url = {cls.DESCRIPTOR.full_name: url for url, cls in _MESSAGE_TYPES.items()}
    grouped: dict[str, list[tuple[str, Message]]] = {}
    for message in messages:
        type_url = by_url[message.DESCRIPTOR.full_name]
        grouped.setdefault(type_url, []).append((resource_name(type_url, message), message))
    return Snapshot.from_messages(view, grouped)


# ----- waiting and CSDS ---------------------------------------------------------------------------


async def eventually(predicate: Callable[[], Any], timeout: float = RECV_TIMEOUT,
                     what: str = "the condition") -> Any:
    """Poll `predicate` until it returns something truthy (returned); AssertionError on timeout.

    For server-side state (registry, metrics) that follows a request asynchronously.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s (last: {value!r})")
        await asyncio.sleep(0.01)


async def fetch_client_status(address: str, *, token: str | None = None,
                              credentials: grpc.ChannelCredentials | None = None,
                              server_name: str | None = None,
                              **fields: Any) -> csds_pb2.ClientStatusResponse:
    """One CSDS FetchClientStatus call (over TLS with `credentials`, with an operator token)."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else None
    channel = (grpc.aio.secure_channel(address, credentials, options=options)
               if credentials is not None else grpc.aio.insecure_channel(address))
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        return await stub.FetchClientStatus(csds_pb2.ClientStatusRequest(**fields),
                                            timeout=RECV_TIMEOUT, metadata=metadata)


# ----- the in-process server ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_server(
        cache: SnapshotCache | None = None,
        **server_kwargs: Any) -> AsyncIterator[tuple[str, SnapshotCache, XdsServer]]:
    """A grpc.aio server with every xDS service and CSDS on 127.0.0.1 (port from the OS)."""
    cache = cache if cache is not None else SnapshotCache()
    xds = XdsServer(cache, **server_kwargs)
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 10_000)])
    server.add_generic_rpc_handlers(xds.handlers())
    add_csds(server, xds.registry)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port, "could not bind 127.0.0.1:0"
    await server.start()
    try:
        yield f"127.0.0.1:{port}", cache, xds
    finally:
        await server.stop(grace=None)


__all__ = [
    "CDS", "EDS", "LDS", "RDS", "RECV_TIMEOUT", "SDS", "SILENCE", "XdsClient",
    "eds_cluster", "eventually", "fetch_client_status", "load_assignment", "messages_of", "names_of", "node", "rds_listener",
    "resource_name", "route_config", "running_server", "snapshot_of", "static_cluster", "unpack",
]
