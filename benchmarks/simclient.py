"""Simulated Envoys for the `fanout` scenario: many ADS streams in one process, driven by stdin.

    python -m benchmarks.simclient --address HOST:PORT --streams 250 --channels 10 [--delta]

Each stream behaves like Envoy's ADS client for clusters and endpoints: it subscribes to CDS
(wildcard); on the first CDS response it ACKs, then subscribes to EDS for every cluster it was sent
(SotW: `resource_names` listing all of them, repeated in every EDS request as SotW requires; delta:
`resource_names_subscribe`); it ACKs every later response (nonce, and SotW `version_info`). No
listeners or routes. Responses are read as raw bytes and stamped (CLOCK_MONOTONIC, shared by every
process on the machine) the moment the read returns, before any parsing; a response is
recognised as carrying the change by a marker string in its bytes; parsing is upb's (lazy), and
cluster names for the EDS subscription come from each resource's first field, so the generator
stays cheap. The streams of a process share `--channels` gRPC channels (separate TCP connections).

Commands on stdin, one JSON object per line, each answered with one JSON line:
- `start {timeout}`: open every stream; answer once all have ACKed their first CDS and EDS.
- `arm {marker}`: from now on, count bytes per stream and watch for `marker`.
- `collect {timeout, quiet}`: wait until every stream has received and ACKed the response that
  carries the marker, then `quiet` seconds more (trailing responses, e.g. the changed cluster's
  endpoints); answer per-stream receive/ACK stamps and bytes.
- `reconnect {timeout}`: drop every stream and channel, reconnect them all claiming what they
  held (SotW `version_info`, delta `initial_resource_versions`); `resent`: bytes received since.
- `stats`, `quit`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from benchmarks.common import control_channel, now_ns, proc_rss_bytes, self_cpu_seconds
from meshpilot.base import types

CDS, EDS = types.CLUSTER, types.ENDPOINT
_ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # Each channel its own TCP connection (the global subchannel pool would share one).
    ("grpc.use_local_subchannel_pool", 1),
]


def _channel(args: argparse.Namespace) -> grpc.aio.Channel:
    """Plaintext, or with --ca-file TLS trusting meshpilot's CA (its certificate is issued for
    the name meshpilot), as a bootstrapped Envoy connects."""
    if not args.ca_file:
        return grpc.aio.insecure_channel(args.address, options=_OPTIONS)
    credentials = grpc.ssl_channel_credentials(Path(args.ca_file).read_bytes())
    return grpc.aio.secure_channel(args.address, credentials, options=[
        *_OPTIONS, ("grpc.ssl_target_name_override", "meshpilot")])


_CLAIMS: dict[tuple[str, frozenset[tuple[str, str]], tuple[str, ...]], bytes] = {}


def _claims_request(type_url: str, versions: dict[str, str], names: tuple[str, ...]) -> bytes:
    """A resuming DeltaDiscoveryRequest without its node: `type_url`, the names subscribed and
    the versions held (`initial_resource_versions`), encoded once per distinct claims."""
    key = (type_url, frozenset(versions.items()), names)
    found = _CLAIMS.get(key)
    if found is None:
        found = _CLAIMS[key] = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url, resource_names_subscribe=names,
            initial_resource_versions=versions).SerializeToString()
    return found


def _identity(data: bytes) -> bytes:
    return data


def _first_string_field(encoded: bytes) -> str:
    """Field 1 of an encoded message when it is written first (deterministic serialization writes
    fields in number order): `Cluster.name`, `ClusterLoadAssignment.cluster_name`."""
    if not encoded or encoded[0] != 0x0A:
        raise ValueError("resource does not start with field 1")
    length, shift, pos = 0, 0, 1
    while True:
        byte = encoded[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            break
        shift += 7
    return encoded[pos:pos + length].decode()


class SimStream:
    def __init__(self, index: int, channel: grpc.aio.Channel, delta: bool, node_id: str,
                 cluster: str, token: str | None = None):
        self.index = index
        self.delta = delta
        self.node = base_pb2.Node(id=node_id, cluster=cluster)
        method = _ADS + ("DeltaAggregatedResources" if delta else "StreamAggregatedResources")
        # A node token, as Envoy sends the one in its bootstrap: on every stream.
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._call = channel.stream_stream(method, request_serializer=_identity,
                                           response_deserializer=_identity)(metadata=metadata)
        self.names_blob = b""  # SotW: the EDS resource_names, encoded once, reused in each ACK
        self.names: list[str] = []  # EDS names subscribed
        # What a reconnect resumes from: SotW version_info per type; delta versions per resource.
        self.versions: dict[str, str] = {}
        self.resource_versions: dict[str, dict[str, str]] = {CDS: {}, EDS: {}}
        self.resume = False  # this stream is a reconnect that claims what it holds
        self.cds_acked = self.eds_acked = False
        self.synced = asyncio.Event()
        self.sync_ns = 0
        self.responses = 0
        self.bytes_total = 0
        self.error: str | None = None
        # Tracking of one change (reset by arm()).
        self.marker = b""
        self.armed = False
        self.recv_ns = 0
        self.ack_ns = 0
        self.change_bytes: dict[str, int] = {}
        self.change_responses: dict[str, int] = {}
        self.changed = asyncio.Event()

    def arm(self, marker: bytes) -> None:
        self.marker = marker
        self.armed = True
        self.recv_ns = self.ack_ns = 0
        self.change_bytes = {}
        self.change_responses = {}
        self.changed = asyncio.Event()

    def _request(self, **fields: Any) -> bytes:
        if self.delta:
            return discovery_pb2.DeltaDiscoveryRequest(**fields).SerializeToString()
        return discovery_pb2.DiscoveryRequest(**fields).SerializeToString()

    def resume_from(self, old: SimStream) -> None:
        """Reconnect as Envoy does: claim what the dropped stream held (SotW `version_info`,
        delta `initial_resource_versions`) and re-send both subscriptions at once."""
        self.resume = True
        self.names_blob, self.names = old.names_blob, old.names
        self.versions = dict(old.versions)
        self.resource_versions = {t: dict(v) for t, v in old.resource_versions.items()}
        self.cds_acked = self.eds_acked = True
        self.armed = True  # count every byte received after the reconnect
        self.change_bytes, self.change_responses = {}, {}

    async def _resume_requests(self) -> None:
        if self.delta:
            # The node, then the claims (fields in number order, as one message would be
            # written): the claims encoded once per process for every stream that holds the
            # same, as the SotW streams' EDS names are (`names_blob`). Encoding 2,000 map
            # entries per stream in Python, 625 streams per process, was most of a delta
            # storm's time here, and a real Envoy encodes its request on its own core.
            await self._call.write(self._request(node=self.node) + _claims_request(
                CDS, self.resource_versions[CDS], ()))
            await self._call.write(_claims_request(EDS, self.resource_versions[EDS],
                                                   tuple(self.names)))
        else:
            await self._call.write(self._request(node=self.node, type_url=CDS,
                                                 version_info=self.versions.get(CDS, "")))
            await self._call.write(self.names_blob + self._request(
                type_url=EDS, version_info=self.versions.get(EDS, "")))
        self.sync_ns = now_ns()
        self.synced.set()

    async def run(self) -> None:
        try:
            if self.resume:
                await self._resume_requests()
            else:
                await self._call.write(self._request(node=self.node, type_url=CDS))
            while True:
                data = await self._call.read()
                if data is grpc.aio.EOF:
                    self.error = self.error or "stream ended"
                    return
                received = now_ns()
                await self._on_response(data, received)
        except asyncio.CancelledError:
            pass
        except grpc.aio.AioRpcError as e:
            self.error = f"{e.code().name}: {e.details()}"
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.synced.set()  # never leave a waiter hanging; `error` says what happened
            self.changed.set()

    async def _on_response(self, data: bytes, received: int) -> None:
        carries_marker = self.armed and self.marker in data
        parse = (discovery_pb2.DeltaDiscoveryResponse.FromString if self.delta
                 else discovery_pb2.DiscoveryResponse.FromString)
        response = parse(data)
        type_url = response.type_url
        short = types.short_name(type_url)
        self.responses += 1
        self.bytes_total += len(data)
        if self.armed:
            self.change_bytes[short] = self.change_bytes.get(short, 0) + len(data)
            self.change_responses[short] = self.change_responses.get(short, 0) + 1
        first_cds = type_url == CDS and not self.cds_acked
        if self.delta:
            ack = self._request(type_url=type_url, response_nonce=response.nonce)
            held = self.resource_versions.setdefault(type_url, {})
            for r in response.resources:
                held[r.name] = r.version
            for name in response.removed_resources:
                held.pop(name, None)
        else:
            self.versions[type_url] = response.version_info
            ack = self._request(type_url=type_url, response_nonce=response.nonce,
                                version_info=response.version_info)
            if type_url == EDS:
                # Concatenated messages merge: the names are encoded once per stream.
                ack = self.names_blob + ack
        await self._call.write(ack)
        if carries_marker and not self.recv_ns:
            self.recv_ns = received
            self.ack_ns = now_ns()
            self.changed.set()
        if first_cds:
            self.cds_acked = True
            if self.delta:
                names = [r.name for r in response.resources]
                self.names = names
                await self._call.write(self._request(type_url=EDS,
                                                     resource_names_subscribe=names))
            else:
                names = [_first_string_field(a.value) for a in response.resources]
                self.names = names
                self.names_blob = discovery_pb2.DiscoveryRequest(
                    resource_names=names).SerializeToString()
                await self._call.write(self.names_blob + self._request(type_url=EDS))
        elif type_url == EDS and not self.eds_acked:
            self.eds_acked = True
            self.sync_ns = now_ns()
            self.synced.set()

    def cancel(self) -> None:
        self._call.cancel()


class Client:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.channels: list[grpc.aio.Channel] = []
        self.streams: list[SimStream] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.start_ns = 0

    async def start(self, timeout: float) -> dict[str, Any]:
        args = self.args
        self.channels = [_channel(args) for _ in range(args.channels)]
        for channel in self.channels:
            await asyncio.wait_for(channel.channel_ready(), timeout)
        self.start_ns = now_ns()
        loop = asyncio.get_running_loop()
        for i in range(args.streams):
            index = args.first_id + i
            stream = SimStream(index, self.channels[i % len(self.channels)], args.delta,
                               f"sim-{index}", args.view, args.token)
            self.streams.append(stream)
            self.tasks.append(loop.create_task(stream.run()))
        try:
            await asyncio.wait_for(asyncio.gather(*(s.synced.wait() for s in self.streams)),
                                   timeout)
        except TimeoutError:
            waiting = sum(1 for s in self.streams if not s.synced.is_set())
            return {"error": f"{waiting} of {len(self.streams)} streams not in sync after "
                             f"{timeout:.0f}s"}
        errors = [s.error for s in self.streams if s.error]
        if errors:
            return {"error": f"{len(errors)} streams failed: {errors[0]}"}
        return {"synced": len(self.streams), "start_ns": self.start_ns,
                "sync_ns": [s.sync_ns for s in self.streams], **self.stats()}

    async def reconnect(self, timeout: float) -> dict[str, Any]:
        """Drop every stream and its TCP connection, then reconnect them all at once, each
        claiming what it held. Answers when every new stream has written its requests; the
        server says when they are in sync (a resumed stream may be sent nothing at all)."""
        args = self.args
        old_streams = self.streams
        drop_ns = now_ns()
        for stream in old_streams:
            stream.cancel()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for channel in self.channels:
            with contextlib.suppress(Exception):
                await channel.close()
        dropped_ns = now_ns()
        self.channels = [_channel(args) for _ in range(args.channels)]
        for channel in self.channels:
            await asyncio.wait_for(channel.channel_ready(), timeout)
        loop = asyncio.get_running_loop()
        self.streams, self.tasks = [], []
        for i, old in enumerate(old_streams):
            stream = SimStream(old.index, self.channels[i % len(self.channels)], args.delta,
                               f"sim-{old.index}", args.view, args.token)
            stream.resume_from(old)
            self.streams.append(stream)
            self.tasks.append(loop.create_task(stream.run()))
        try:
            await asyncio.wait_for(asyncio.gather(*(s.synced.wait() for s in self.streams)),
                                   timeout)
        except TimeoutError:
            return {"error": f"reconnect: requests not written within {timeout:.0f}s"}
        return {"drop_ns": drop_ns, "dropped_ns": dropped_ns,
                "requests_written_ns": max(s.sync_ns for s in self.streams), **self.stats()}

    def resent(self) -> dict[str, Any]:
        """Bytes and responses each stream received since the reconnect."""
        errors = [s.error for s in self.streams if s.error]
        if errors:
            return {"error": f"{len(errors)} streams failed: {errors[0]}"}
        return {"bytes": [sum(s.change_bytes.values()) for s in self.streams],
                "responses": [sum(s.change_responses.values()) for s in self.streams],
                **self.stats()}

    def arm(self, marker: str) -> dict[str, Any]:
        for stream in self.streams:
            stream.arm(marker.encode())
        return {"armed": len(self.streams), **self.stats()}

    async def collect(self, timeout: float, quiet: float) -> dict[str, Any]:
        try:
            await asyncio.wait_for(asyncio.gather(*(s.changed.wait() for s in self.streams)),
                                   timeout)
        except TimeoutError:
            missing = sum(1 for s in self.streams if not s.recv_ns)
            return {"error": f"{missing} of {len(self.streams)} streams did not receive the "
                             f"change within {timeout:.0f}s"}
        await asyncio.sleep(quiet)
        errors = [s.error for s in self.streams if s.error]
        if errors:
            return {"error": f"{len(errors)} streams failed: {errors[0]}"}
        out = {
            "recv_ns": [s.recv_ns for s in self.streams],
            "ack_ns": [s.ack_ns for s in self.streams],
            "bytes": [s.change_bytes for s in self.streams],
            "responses": [s.change_responses for s in self.streams],
            **self.stats(),
        }
        for stream in self.streams:
            stream.armed = False
        return out

    def stats(self) -> dict[str, Any]:
        return {"cpu": self_cpu_seconds(), "rss": proc_rss_bytes(),
                "bytes_total": sum(s.bytes_total for s in self.streams)}

    async def close(self) -> None:
        for stream in self.streams:
            stream.cancel()
        for task in self.tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 10)
        for channel in self.channels:
            with contextlib.suppress(Exception):
                await channel.close()


async def main_async(args: argparse.Namespace) -> None:
    client = Client(args)
    loop = asyncio.get_running_loop()
    commands, answer = control_channel(loop)

    try:
        while True:
            command = await commands.get()
            if command is None or command.get("cmd") == "quit":
                break
            cmd = command.pop("cmd")
            if cmd == "start":
                answer(await client.start(**command))
            elif cmd == "arm":
                answer(client.arm(**command))
            elif cmd == "collect":
                answer(await client.collect(**command))
            elif cmd == "reconnect":
                answer(await client.reconnect(**command))
            elif cmd == "resent":
                answer(client.resent())
            elif cmd == "stats":
                answer(client.stats())
            else:
                answer({"error": f"unknown command {cmd!r}"})
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--first-id", type=int, default=0)
    parser.add_argument("--view", default="edge")
    parser.add_argument("--delta", action="store_true")
    parser.add_argument("--ca-file", default=None, help="TLS, trusting this CA")
    parser.add_argument("--token", default=None, help="the node token sent on every stream")
    args = parser.parse_args()
    started = time.monotonic()
    asyncio.run(main_async(args))
    print(f"simclient done after {time.monotonic() - started:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
