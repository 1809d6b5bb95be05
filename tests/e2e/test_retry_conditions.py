"""Which failures a retry condition covers, through a real Envoy (docs/policy.md, retries: on).

Two Services, each with one good echo endpoint and one that fails:
- `halfdead`'s other endpoint refuses connections: the request never left Envoy, so
  `reset-before-request` retries it (on the good endpoint) and no client sees the failure;
- `dropper`'s other endpoint reads the whole request and then resets the connection: the
  request was sent, so `reset-before-request` does not retry it (a retry could run a
  non-idempotent request twice), while `reset` does.
Without retries some requests to either Service fail; round robin alternates endpoints, so a
handful of requests meets the failing one.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from support import eventually, http_get, served_policy

from meshpilot.base.netutil import free_port
from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: halfdead
endpoints: ["127.0.0.1:{refused}", "127.0.0.1:{good_a}"]
---
kind: Service
name: dropper
endpoints: ["127.0.0.1:{dropping}", "127.0.0.1:{good_b}"]
---
kind: Gateway
name: edge
listeners:
  - {{name: http, port: {port}, address: 127.0.0.1}}
---
kind: Route
name: retries
gateway: edge
rules:
  - match: {{path: {{prefix: /refused/retried}}}}
    backends: [halfdead]
    retries: {{attempts: 3, on: [reset-before-request]}}
  - match: {{path: {{prefix: /refused/plain}}}}
    backends: [halfdead]
  - match: {{path: {{prefix: /dropped/before}}}}
    backends: [dropper]
    retries: {{attempts: 3, on: [reset-before-request]}}
  - match: {{path: {{prefix: /dropped/reset}}}}
    backends: [dropper]
    retries: {{attempts: 3, on: [reset]}}
"""

REQUESTS = 12


class DroppingServer:
    """Reads each request's head, then resets the connection (SO_LINGER 0: an RST, no answer)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> int:
        self.sock.listen(64)
        self._thread.start()
        return int(self.sock.getsockname()[1])

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                data = b""
                try:
                    while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                        data += chunk
                except OSError:
                    pass
                if b"\r\n\r\n" in data:
                    self.requests += 1
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Env:
    def __init__(self, port: int, dropping: DroppingServer):
        self.port, self.dropping = port, dropping

    def statuses(self, path: str) -> list[int]:
        return [http_get(f"http://127.0.0.1:{self.port}{path}/{i}", timeout=5)[0]
                for i in range(REQUESTS)]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("retry-conditions-e2e")
    dropping = DroppingServer()
    servers = {"good_a": EchoServer("a"), "good_b": EchoServer("b"), "dropping": dropping}
    with served_policy(work, "retries.yaml", POLICY, servers, refused=free_port()) as served:
        environment = Env(served.ports["port"], dropping)
        eventually(lambda: http_get(f"http://127.0.0.1:{environment.port}/refused/retried",
                                    timeout=5)[0] == 200, timeout=30,
                   what="the gateway to serve")
        yield environment


def test_a_refused_connection_is_retried_on_reset_before_request(env: Env) -> None:
    assert env.statuses("/refused/retried") == [200] * REQUESTS


def test_without_retries_a_refused_connection_reaches_the_client(env: Env) -> None:
    assert 503 in env.statuses("/refused/plain")


def test_a_reset_after_the_request_was_sent_is_not_retried_on_reset_before_request(
        env: Env) -> None:
    before = env.dropping.requests
    statuses = env.statuses("/dropped/before")
    assert 503 in statuses and 200 in statuses
    # Each failure is one request that reached the dropping endpoint: none was sent twice.
    assert env.dropping.requests - before == statuses.count(503)


def test_the_same_reset_is_retried_on_reset(env: Env) -> None:
    before = env.dropping.requests
    assert env.statuses("/dropped/reset") == [200] * REQUESTS
    assert env.dropping.requests > before  # the dropping endpoint was met, and retried away
