"""HTTPRoute `sessionPersistence` end to end (GEP-1619; upstream's HTTPRouteSessionPersistence
feature, which has no conformance test at the snapshot's commit: the input is meshpilot's own).
Behind a real Envoy, one Service with two echo endpoints: without a session a client's requests
are balanced over both; once it sends back the cookie (or header) an answer gave it, each of
its requests reaches that one endpoint."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from support import eventually, gateway_class_template, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = gateway_class_template() + """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: mp
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: shop, namespace: infra}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /cart}}}}]
    backendRefs: [{{name: carts, port: 8080}}]
    sessionPersistence: {{cookie: {{name: cart-session}}}}
  - matches: [{{path: {{type: PathPrefix, value: /saved}}}}]
    backendRefs: [{{name: carts, port: 8080}}]
    sessionPersistence:
      absoluteTimeout: 1h
      cookie: {{name: saved-session, lifetimeType: Permanent}}
  - matches: [{{path: {{type: PathPrefix, value: /api}}}}]
    backendRefs: [{{name: carts, port: 8080}}]
    sessionPersistence: {{type: Header, header: {{name: X-Session}}}}
  - backendRefs: [{{name: carts, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: carts, namespace: infra}}
spec: {{ports: [{{port: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: carts-one, namespace: infra, labels: {{kubernetes.io/service-name: carts}}}}
addressType: IPv4
ports: [{{port: {one}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: carts-two, namespace: infra, labels: {{kubernetes.io/service-name: carts}}}}
addressType: IPv4
ports: [{{port: {two}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
"""


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    work = tmp_path_factory.mktemp("gatewayapi-session")
    servers = {name: EchoServer(name) for name in ("one", "two")}
    with served_policy(work, "shop.yaml", POLICY, servers,
                       envoys={"infra/edge": "edge"}) as served:
        port = served.ports["port"]
        # Both endpoints known to Envoy (balanced over both) before the tests start.
        eventually(lambda: len({http_get(f"http://127.0.0.1:{port}/")[1].get("x-backend")
                                for _ in range(8)}) == 2,
                   timeout=30, what="the gateway to balance over two endpoints")
        yield served.ports


def _get(ports: dict[str, int], path: str, headers: dict[str, str] | None = None,
         ) -> tuple[str, dict[str, str]]:
    status, answer, _ = http_get(f"http://127.0.0.1:{ports['port']}{path}", headers)
    assert status == 200, (path, status)
    return answer["x-backend"], answer


def _cookie(answer: dict[str, str], name: str) -> tuple[str, list[str]]:
    """The value of the cookie `name` an answer sets, and its attributes (lower case)."""
    value, *attributes = (part.strip() for part in answer["set-cookie"].split(";"))
    written, _, content = value.partition("=")
    assert written == name, answer["set-cookie"]
    return content, [a.lower() for a in attributes]


def _session_value(value: str) -> tuple[str, int | None]:
    """The endpoint and the expiry (seconds since the epoch) a cookie value of Envoy's holds:
    base64 of a protobuf message, field 1 the address, field 2 (a varint) the expiry."""
    data = base64.b64decode(value.strip('"'))
    assert data[0] == 0x0A, data  # field 1, length-delimited
    end = 2 + data[1]
    address = data[2:end].decode()
    if end == len(data):
        return address, None
    assert data[end] == 0x10, data  # field 2, varint
    expires, shift = 0, 0
    for byte in data[end + 1:]:
        expires |= (byte & 0x7F) << shift
        shift += 7
    return address, expires


def test_a_session_cookie_keeps_a_client_on_one_endpoint(ports: dict[str, int]) -> None:
    first, answer = _get(ports, "/cart")
    value, attributes = _cookie(answer, "cart-session")
    # A session cookie (lifetimeType Session, the default): no Max-Age, Path / by default.
    assert "path=/" in attributes and not any(a.startswith("max-age") for a in attributes)
    assert _session_value(value) == (f"127.0.0.1:{ports[first]}", None)  # no expiry inside
    cookie = {"Cookie": f"cart-session={value}"}
    assert {_get(ports, "/cart/items", cookie)[0] for _ in range(12)} == {first}
    # The answers to a request in the session do not set the cookie again.
    assert "set-cookie" not in _get(ports, "/cart", cookie)[1]


def test_without_the_cookie_requests_are_balanced(ports: dict[str, int]) -> None:
    assert {_get(ports, "/cart")[0] for _ in range(16)} == {"one", "two"}
    # A rule without sessionPersistence neither sets nor honours it.
    _, answer = _get(ports, "/other")
    assert "set-cookie" not in answer
    _, pinned = _get(ports, "/cart")
    value, _ = _cookie(pinned, "cart-session")
    assert len({_get(ports, "/other", {"Cookie": f"cart-session={value}"})[0]
                for _ in range(16)}) == 2


def test_a_permanent_cookie_lasts_the_absolute_timeout(ports: dict[str, int]) -> None:
    first, answer = _get(ports, "/saved")
    value, attributes = _cookie(answer, "saved-session")
    assert "max-age=3600" in attributes
    # Envoy also keeps the expiry inside the value (so it refuses the cookie once expired,
    # whatever the client does): the endpoint, then an expiry.
    address, expires = _session_value(value)
    assert address == f"127.0.0.1:{ports[first]}" and expires is not None
    assert {_get(ports, "/saved", {"Cookie": f"saved-session={value}"})[0]
            for _ in range(8)} == {first}


def test_a_header_session_keeps_a_client_on_one_endpoint(ports: dict[str, int]) -> None:
    first, answer = _get(ports, "/api")
    session = answer["x-session"]
    assert base64.b64decode(session).decode() == f"127.0.0.1:{ports[first]}"
    assert {_get(ports, "/api/v1", {"X-Session": session})[0] for _ in range(12)} == {first}
    other = "two" if first == "one" else "one"
    theirs = base64.b64encode(f"127.0.0.1:{ports[other]}".encode()).decode()
    assert {_get(ports, "/api", {"X-Session": theirs})[0] for _ in range(8)} == {other}
