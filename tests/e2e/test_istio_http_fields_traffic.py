"""VirtualService http route fields through a real sidecar Envoy (issue #13):

- `route[].headers`: each destination's own request and response header changes (two
  destinations sharing the traffic, each request seen with its destination's header only);
  one destination's `set` wins over the route's, as in Istio.
- `corsPolicy` per http route: `/a` allows one exact origin, `/b` origins by prefix, `/plain`
  has none (no CORS answer at all).
- `rewrite.uri` with a regex uri match: the whole path replaced, the query kept (Envoy's
  prefix_rewrite, as Istio writes it).
- `directResponse.body.bytes`: a base64 body that is not UTF-8, answered byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from support import eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: shop}}
spec:
  hosts: [shop.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {v1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {v2}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: shop}}
spec:
  host: shop
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop}}
spec:
  hosts: [shop]
  http:
  - match: [{{uri: {{prefix: /split}}}}]
    headers: {{request: {{set: {{x-route: split}}}}}}
    route:
    - destination: {{host: shop, subset: v1}}
      weight: 50
      headers:
        request: {{set: {{x-dest: v1}}, remove: [x-drop]}}
        response: {{set: {{x-answered-by: v1}}}}
    - destination: {{host: shop, subset: v2}}
      weight: 50
      headers: {{request: {{add: {{x-dest: v2}}}}}}
  - match: [{{uri: {{prefix: /one}}}}]
    headers: {{request: {{set: {{x-version: route}}}}}}
    route:
    - destination: {{host: shop, subset: v2}}
      headers: {{request: {{set: {{x-version: v2}}}}, response: {{add: {{x-answered-by: v2}}}}}}
  - match: [{{uri: {{prefix: /a}}}}]
    corsPolicy: {{allowOrigins: [{{exact: "https://a.example"}}], allowMethods: [GET, PUT]}}
    route: [{{destination: {{host: shop, subset: v1}}}}]
  - match: [{{uri: {{prefix: /b}}}}]
    corsPolicy: {{allowOrigins: [{{prefix: "https://b."}}], allowMethods: [POST]}}
    route: [{{destination: {{host: shop, subset: v1}}}}]
  - match: [{{uri: {{regex: "/catalog[0-9]+"}}}}]
    rewrite: {{uri: /newcatalog}}
    route: [{{destination: {{host: shop, subset: v1}}}}]
  - match: [{{uri: {{exact: /raw}}}}]
    directResponse: {{status: 200, body: {{bytes: "/wD+"}}}}
  - route: [{{destination: {{host: shop, subset: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: client
  annotations: {{meshpilot.io/outbound-port: "{out}"}}
spec: {{address: 127.0.0.1, labels: {{app: client}}}}
"""


class Client:
    def __init__(self, port: int):
        self.port = port

    def get(self, path: str, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        return http_get(f"http://127.0.0.1:{self.port}{path}", {"Host": "shop", **(headers or {})},
                        method=method)

    def echoed(self, path: str, headers: dict[str, str] | None = None
               ) -> tuple[dict[str, Any], dict[str, str]]:
        status, response_headers, body = self.get(path, headers)
        assert status == 200, (status, body)
        return json.loads(body), response_headers

    def preflight(self, path: str, origin: str, method: str) -> dict[str, str]:
        status, headers, _ = self.get(path, {"Origin": origin,
                                             "Access-Control-Request-Method": method},
                                      method="OPTIONS")
        assert status < 500, status
        return headers


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[Client]:
    work = tmp_path_factory.mktemp("istio-vs-http")
    servers = {name: EchoServer(name) for name in ("v1", "v2")}
    with served_policy(work, "mesh.yaml", POLICY, servers, free_ports=("out",),
                       envoys={"client.default": "client"},
                       extra_args=("--insecure-xds",)) as served:
        found = Client(served.ports["out"])
        eventually(lambda: found.get("/")[0] == 200, timeout=60,
                   what="the client's sidecar to reach shop")
        yield found


def test_each_destination_gets_its_own_headers(client: Client) -> None:
    seen: dict[str, set[tuple[Any, Any, Any, Any]]] = {"v1": set(), "v2": set()}
    for _ in range(40):
        echo, response = client.echoed("/split", {"x-drop": "1"})
        got = echo["headers"]
        seen[echo["backend"]].add((got.get("x-dest"), got.get("x-route"), "x-drop" in got,
                                   response.get("x-answered-by")))
    # Both destinations are used (equal weights), each with its own changes only; the http
    # route's own header change reaches both.
    assert seen == {"v1": {("v1", "split", False, "v1")}, "v2": {("v2", "split", True, None)}}


def test_one_destinations_header_set_wins_over_the_routes(client: Client) -> None:
    echo, response = client.echoed("/one")
    assert (echo["backend"], echo["headers"].get("x-version")) == ("v2", "v2")
    assert response.get("x-answered-by") == "v2"


def test_each_http_route_answers_cors_by_its_own_policy(client: Client) -> None:
    allowed = client.preflight("/a/x", "https://a.example", "PUT")
    assert allowed.get("access-control-allow-origin") == "https://a.example"
    assert "PUT" in allowed.get("access-control-allow-methods", "")
    # /a's origin is not /b's: /b allows origins by prefix only.
    assert "access-control-allow-origin" not in client.preflight("/b/x", "https://a.example",
                                                                 "POST")
    by_prefix = client.preflight("/b/x", "https://b.shop.example", "POST")
    assert by_prefix.get("access-control-allow-origin") == "https://b.shop.example"
    assert "access-control-allow-origin" not in client.preflight("/b/x", "https://c.example",
                                                                 "POST")
    # A route without a corsPolicy answers no CORS, even for an origin another route allows.
    _, plain = client.echoed("/plain", {"Origin": "https://a.example"})
    assert "access-control-allow-origin" not in plain
    _, simple = client.echoed("/a/y", {"Origin": "https://a.example"})
    assert simple.get("access-control-allow-origin") == "https://a.example"


def test_rewrite_uri_with_a_regex_match_replaces_the_whole_path(client: Client) -> None:
    echo, _ = client.echoed("/catalog42?page=2")
    assert (echo["path"], echo["query"]) == ("/newcatalog", "page=2")
    echo, _ = client.echoed("/catalogx")  # the regex does not match: the last route
    assert echo["path"] == "/catalogx"


def test_direct_response_bytes_are_sent_byte_for_byte(client: Client) -> None:
    status, _, body = client.get("/raw")
    assert (status, body) == (200, b"\xff\x00\xfe")
