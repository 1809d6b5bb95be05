"""Session persistence by header end to end (docs/policy.md, session_persistence): behind a
real Envoy gateway, three echo endpoints share the load until a client sends back the header
an answer gave it; from then on each of its requests reaches that one endpoint."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterator

import pytest
from support import eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: carts
endpoints: ["127.0.0.1:{one}", "127.0.0.1:{two}", "127.0.0.1:{three}"]
---
kind: Gateway
name: edge
listeners: [{{name: http, port: {port}, address: 127.0.0.1}}]
---
kind: Route
name: shop
gateway: edge
rules:
  - match: {{path: {{prefix: /cart}}}}
    backends: [carts]
    session_persistence: {{header: x-session}}
  - backends: [carts]
"""


@pytest.fixture(scope="module")
def ports(tmp_path_factory) -> Iterator[dict[str, int]]:
    work = tmp_path_factory.mktemp("session-e2e")
    servers = {name: EchoServer(name) for name in ("one", "two", "three")}
    with served_policy(work, "edge.yaml", POLICY, servers) as served:
        port = served.ports["port"]
        # Every endpoint known to Envoy (balanced over all three) before the tests start.
        eventually(lambda: len({http_get(f"http://127.0.0.1:{port}/")[1].get("x-backend")
                                for _ in range(6)}) == 3,
                   timeout=20, what="the gateway to balance over three endpoints")
        yield served.ports


def _get(ports: dict[str, int], path: str, session: str | None = None) -> tuple[str, str | None]:
    status, headers, _ = http_get(f"http://127.0.0.1:{ports['port']}{path}",
                                  {"x-session": session} if session else {})
    assert status == 200
    return headers["x-backend"], headers.get("x-session")


def test_a_session_sticks_to_its_endpoint(ports) -> None:
    first, session = _get(ports, "/cart")
    assert session is not None  # the answer names its endpoint
    endpoint = base64.b64decode(session).decode()
    assert endpoint == f"127.0.0.1:{ports[first]}"
    assert {_get(ports, "/cart/items", session)[0] for _ in range(12)} == {first}
    # Another session (another endpoint's) sticks to that one.
    other = next(name for name in ("one", "two", "three") if name != first)
    theirs = base64.b64encode(f"127.0.0.1:{ports[other]}".encode()).decode()
    assert {_get(ports, "/cart", theirs)[0] for _ in range(6)} == {other}


def test_without_the_header_requests_are_balanced(ports) -> None:
    seen = Counter(_get(ports, "/cart")[0] for _ in range(12))
    assert len(seen) == 3, seen
    # A rule without session_persistence neither sets nor honours the header.
    assert _get(ports, "/other")[1] is None
    pinned = base64.b64encode(f"127.0.0.1:{ports['one']}".encode()).decode()
    assert len({_get(ports, "/other", pinned)[0] for _ in range(9)}) > 1


def test_a_session_naming_no_endpoint_is_balanced_and_renewed(ports) -> None:
    stale = base64.b64encode(b"127.0.0.1:1").decode()
    backend, session = _get(ports, "/cart", stale)
    assert session is not None and session != stale
    assert base64.b64decode(session).decode() == f"127.0.0.1:{ports[backend]}"
