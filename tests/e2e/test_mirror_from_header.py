"""A mirror whose target a request header names (`mirror: {service_from_header, candidates}`),
end to end: `meshpilot serve` to a real Envoy gateway in front of one primary and three shadow
backends on loopback. The copy reaches the backend the header names and no other; without the
header, or with a name outside the candidates, no copy is sent, and the client always gets the
primary's answer. That holds for a cluster the view does hold (shadow-c, another Route's
backend): with Envoy's own `cluster_header`, the client could have had a copy sent there.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from support import LoopbackHttpServer, eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: web
endpoints: ["127.0.0.1:{web}"]
---
kind: Service
name: shadow-a
endpoints: ["127.0.0.1:{a}"]
---
kind: Service
name: shadow-b
endpoints: ["127.0.0.1:{b}"]
---
kind: Service
name: shadow-c
endpoints: ["127.0.0.1:{c}"]
---
kind: Gateway
name: edge
listeners:
  - {{name: http, port: {port}, address: 127.0.0.1}}
---
kind: Route
name: web
gateway: edge
rules:
  - backends: [web]
    mirror: {{service_from_header: x-mirror-to, candidates: [shadow-a, shadow-b]}}
---
kind: Route
name: admin
gateway: edge
hosts: [admin.example.com]
rules:
  - backends: [shadow-c]
"""


class Recorder(LoopbackHttpServer):
    """A shadow backend that records the path of every request it gets."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        recorder = self

        class Handler(LoopbackHttpServer.Handler):
            def do_GET(self) -> None:
                recorder.seen.append(self.path)
                self.reply(200, b'{"backend": "shadow"}')

        super().__init__(Handler)


class Env:
    def __init__(self, port: int, shadows: dict[str, Recorder]):
        self.port, self.shadows = port, shadows

    def get(self, path: str, mirror_to: str | None = None) -> tuple[int, str]:
        headers = {"Host": "shop.example.com"}
        if mirror_to is not None:
            headers["x-mirror-to"] = mirror_to
        status, _, body = http_get(f"http://127.0.0.1:{self.port}{path}", headers)
        return status, str(json.loads(body)["backend"]) if status == 200 else ""

    def copies_of(self, path: str) -> dict[str, int]:
        return {name: shadow.seen.count(path) for name, shadow in self.shadows.items()}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("mirror-header-e2e")
    shadows = {name: Recorder() for name in ("a", "b", "c")}
    with served_policy(work, "mirror.yaml", POLICY, {"web": EchoServer("web"), **shadows}) \
            as served:
        environment = Env(served.ports["port"], shadows)
        eventually(lambda: environment.get("/")[0] == 200, timeout=30,
                   what="the gateway to serve")
        yield environment


@pytest.mark.parametrize(("header", "shadow"), [("shadow-a", "a"), ("shadow-b", "b")])
def test_the_copy_reaches_the_backend_the_header_names(env: Env, header: str,
                                                       shadow: str) -> None:
    path = f"/{uuid.uuid4().hex}"
    assert env.get(path, mirror_to=header) == (200, "web")  # the client gets the primary
    eventually(lambda: env.copies_of(path)[shadow] == 1, timeout=10, what="the mirrored copy")
    time.sleep(0.2)  # a copy sent elsewhere too would have arrived by now
    assert env.copies_of(path) == {"a": 0, "b": 0, "c": 0} | {shadow: 1}


@pytest.mark.parametrize("header", [None, "shadow-c", "web", "web-nonexistent"])
def test_no_copy_without_the_header_or_for_a_name_outside_the_candidates(
        env: Env, header: str | None) -> None:
    path = f"/{uuid.uuid4().hex}"
    assert env.get(path, mirror_to=header) == (200, "web")
    # A later mirrored request proves copies flow; the earlier one had none.
    marker = f"/{uuid.uuid4().hex}"
    assert env.get(marker, mirror_to="shadow-a") == (200, "web")
    eventually(lambda: env.copies_of(marker)["a"] == 1, timeout=10, what="the marker's copy")
    time.sleep(0.2)
    assert env.copies_of(path) == {"a": 0, "b": 0, "c": 0}
