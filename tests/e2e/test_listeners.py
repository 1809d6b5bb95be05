"""Listener-level features end to end, through a real Envoy fed by `meshpilot serve`: request
ids, JSON access logs, gzip compression, websockets and plain TCP proxying. Each check compares a
listener that has the feature with one that does not (`plain`), so it fails without the feature.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from support import eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.demo.server import LoopThread
from meshpilot.local.demo.ws_echo import WsEchoServer
from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

POLICY = """
kind: Service
name: api
endpoints: ["127.0.0.1:{api}"]
---
kind: Service
name: ws
endpoints: ["127.0.0.1:{ws}"]
---
kind: Service
name: tcp-echo
protocol: tcp
endpoints: ["127.0.0.1:{tcp}"]
---
kind: Gateway
name: edge
listeners:
  - {{name: plain, port: {plain}, address: 127.0.0.1}}
  - name: features
    port: {features}
    address: 127.0.0.1
    trust_request_id: true
    request_id_in_response: true
    access_log: {{path: "{log}", format: json}}
    compression: {{gzip: true, min_content_length: 100, content_types: [application/json]}}
    websocket: true
  - {{name: raw, port: {raw}, address: 127.0.0.1, protocol: tcp, service: tcp-echo}}
---
kind: Route
name: api
gateway: edge
rules:
  - match: {{path: {{prefix: /ws}}}}
    backends: [ws]
  - backends: [api]
"""


class TcpEcho:
    """A raw TCP echo upstream: an asyncio server on a loop of its own, in a daemon thread."""

    def __init__(self) -> None:
        self.port = 0
        self._loop = LoopThread("tcp-echo")
        self._server: asyncio.Server | None = None

    def start(self) -> int:
        self._loop.start()
        self.port = self._loop.run(self._serve(), timeout=10)
        return self.port

    async def _serve(self) -> int:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            finally:
                writer.close()

        self._server = await asyncio.start_server(echo, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        if self._server is not None:
            self._loop.loop.call_soon_threadsafe(self._server.close)
        self._loop.stop()


class Env:
    def __init__(self, ports: dict[str, int], log: Path, envoy: EnvoyProcess):
        self.ports, self.log, self.envoy = ports, log, envoy

    def get(self, listener: str, path: str = "/", headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
        return http_get(f"http://127.0.0.1:{self.ports[listener]}{path}", headers)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("listeners-e2e")
    log = work / "access.log"
    upstreams = {"api": EchoServer("api"), "ws": WsEchoServer("ws1"), "tcp": TcpEcho()}
    with served_policy(work, "edge.yaml", POLICY, upstreams,
                       free_ports=("plain", "features", "raw"), log=log) as served:
        environment = Env(served.ports, log, served.envoy)
        for listener in ("plain", "features"):
            eventually(lambda listener=listener: environment.get(listener)[0] == 200,
                       timeout=30, what=f"listener {listener} to serve")
        yield environment


def seen_by_upstream(response: tuple[int, dict[str, str], bytes]) -> dict:
    status, _, body = response
    assert status == 200, (status, body[:300])
    return json.loads(body)


# ---- 1. correlation ids -------------------------------------------------------------------------


def test_envoy_generates_a_request_id_and_returns_it(env: Env) -> None:
    response = env.get("features")
    seen = seen_by_upstream(response)["headers"]["x-request-id"]
    assert UUID.match(seen), seen
    assert response[1]["x-request-id"] == seen  # request_id_in_response: the same id


def test_a_trusted_listener_keeps_the_clients_request_id(env: Env) -> None:
    response = env.get("features", headers={"x-request-id": "client-abc-123"})
    assert seen_by_upstream(response)["headers"]["x-request-id"] == "client-abc-123"
    assert response[1]["x-request-id"] == "client-abc-123"


def test_by_default_the_clients_request_id_is_replaced_and_not_returned(env: Env) -> None:
    response = env.get("plain", headers={"x-request-id": "client-abc-123"})
    seen = seen_by_upstream(response)["headers"]["x-request-id"]
    assert seen != "client-abc-123" and UUID.match(seen), seen
    assert "x-request-id" not in response[1]


# ---- 2. JSON access logs ------------------------------------------------------------------------


def test_json_access_log_has_one_line_per_request(env: Env) -> None:
    path = f"/logged/{uuid.uuid4().hex}"
    status, headers, _ = env.get("features", path, headers={"user-agent": "e2e-test"})
    assert status == 200
    env.get("plain", path)  # a listener without access_log: never in the file

    def logged() -> list[dict]:
        lines = [json.loads(line) for line in env.log.read_text().splitlines() if line]
        return [entry for entry in lines if entry.get("path") == path]

    (entry,) = eventually(logged, timeout=15, what="the access log line")  # flushed every 1s
    assert entry["status"] == 200  # a number, not text
    assert entry["method"] == "GET"
    assert entry["request_id"] == headers["x-request-id"]
    assert entry["upstream_cluster"] == "api"
    assert entry["user_agent"] == "e2e-test"
    assert entry["bytes_sent"] > 0 and entry["duration_ms"] >= 0
    assert entry["client_address"]  # host:port of the client as Envoy saw it


# ---- 3. compression -----------------------------------------------------------------------------


def test_gzip_when_the_client_accepts_it(env: Env) -> None:
    status, headers, body = env.get("features", "/big", headers={"accept-encoding": "gzip"})
    assert status == 200
    assert headers.get("content-encoding") == "gzip"
    assert json.loads(gzip.decompress(body))["backend"] == "api"


def test_no_gzip_without_accept_encoding_or_on_a_listener_without_compression(env: Env) -> None:
    status, headers, body = env.get("features", "/big")
    assert status == 200 and "content-encoding" not in headers
    assert json.loads(body)["backend"] == "api"
    status, headers, body = env.get("plain", "/big", headers={"accept-encoding": "gzip"})
    assert status == 200 and "content-encoding" not in headers
    assert json.loads(body)["backend"] == "api"


# ---- 4. websockets ------------------------------------------------------------------------------


async def websocket_roundtrip(port: int, message: str) -> str:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session, \
            session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
        await ws.send_str(message)
        return await ws.receive_str(timeout=10)


def test_websocket_through_a_listener_that_allows_it(env: Env) -> None:
    assert asyncio.run(websocket_roundtrip(env.ports["features"], "hello")) == "ws1: hello"


def test_websocket_upgrade_refused_without_websocket_true(env: Env) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        asyncio.run(websocket_roundtrip(env.ports["plain"], "hello"))
    assert refused.value.status == 403


# ---- 5. TCP proxying ----------------------------------------------------------------------------


def tcp_roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_bytes_reach_the_tcp_upstream_and_come_back(env: Env) -> None:
    payload = b"\x00binary, not HTTP\r\n\r\n" + bytes(range(256)) * 64
    assert eventually(lambda: tcp_roundtrip(env.ports["raw"], payload) == payload,
                      timeout=15, what="the tcp echo through Envoy")


def test_the_gateway_receives_the_tcp_services_cluster(env: Env) -> None:
    dump = env.envoy.config_dump(resource="dynamic_active_clusters")
    names = sorted(c["cluster"]["name"] for c in dump.get("configs", []))
    assert names == ["api", "tcp-echo", "ws"], names
