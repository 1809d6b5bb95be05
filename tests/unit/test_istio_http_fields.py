"""VirtualService http route fields (issue #13): per-destination headers, a corsPolicy per
http route, rewrite.uri with a regex uri match, directResponse body.bytes, and the refused
fault.abort.http2Error."""

from __future__ import annotations

import pytest
from test_istio import DR, REVIEWS, dumped, errors, load, route_of

from meshpilot.base.types import ROUTE
from meshpilot.ir.model import HeaderOps, StringMatch
from meshpilot.translators import Translation

VIEW = "reviews-v1.default"


def _vs(http: str, name: str = "reviews") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [reviews]
  http:
{http}"""


def _envoy_routes(model) -> list[dict]:
    config = dumped(model, VIEW, ROUTE, "outbound")
    (vhost,) = [v for v in config["virtualHosts"] if REVIEWS.split(":")[0] in v["domains"]]
    return vhost["routes"]


def test_route_destination_headers_are_the_backends_own() -> None:
    model = load(DR, _vs("""
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 80
      headers:
        request: {set: {x-to: v1}, remove: [x-drop]}
        response: {add: {x-from: v1}}
    - destination: {host: reviews, subset: v2}
      weight: 20
"""))
    (rule,) = route_of(model).rules
    first, second = rule.backends
    assert first.request_headers == HeaderOps(set=(("x-to", "v1"),), remove=("x-drop",))
    assert first.response_headers == HeaderOps(add=(("x-from", "v1"),))
    assert second.request_headers is None and second.response_headers is None
    (entry,) = _envoy_routes(model)
    v1, v2 = entry["route"]["weightedClusters"]["clusters"]
    assert [h["header"] for h in v1["requestHeadersToAdd"]] == [{"key": "x-to", "value": "v1"}]
    assert v1["requestHeadersToRemove"] == ["x-drop"]
    assert [h["header"] for h in v1["responseHeadersToAdd"]] == [
        {"key": "x-from", "value": "v1"}]
    assert "requestHeadersToAdd" not in v2


def test_one_destinations_headers_join_the_routes_after_them_as_istio_writes_them() -> None:
    model = load(DR, _vs("""
  - headers: {request: {set: {x-version: route}, remove: [x-a]}}
    route:
    - destination: {host: reviews, subset: v1}
      headers: {request: {set: {x-version: v1}, remove: [x-b]}, response: {add: {x-c: "1"}}}
"""))
    (rule,) = route_of(model).rules
    (backend,) = rule.backends
    assert backend.request_headers is None and backend.response_headers is None
    assert rule.request_headers == HeaderOps(set=(("x-version", "route"), ("x-version", "v1")),
                                             remove=("x-a", "x-b"))
    assert rule.response_headers == HeaderOps(add=(("x-c", "1"),))
    (entry,) = _envoy_routes(model)
    assert "cluster" in entry["route"]  # one cluster, no weighted clusters
    # Envoy applies the list in order: the destination's set is the value sent.
    assert [h["header"]["value"] for h in entry["requestHeadersToAdd"]] == ["route", "v1"]


def test_tcp_route_destination_headers_are_refused() -> None:
    found = errors("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  tcp:
  - route: [{destination: {host: reviews}, headers: {request: {set: {x-a: b}}}}]
""")
    assert any("spec.tcp[0].route[0].headers" in e and "unknown key" in e for e in found), found


def test_each_http_route_has_its_own_cors_policy() -> None:
    model = load(DR, _vs("""
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: reviews}}]
    corsPolicy: {allowOrigins: [{exact: "https://a.example"}], allowMethods: [GET]}
  - match: [{uri: {prefix: /b}}]
    route: [{destination: {host: reviews}}]
    corsPolicy: {allowOrigins: [{prefix: "https://b."}], maxAge: 1m}
  - route: [{destination: {host: reviews}}]
"""))
    route = route_of(model)
    assert route.cors is None  # no policy for the whole virtual host
    a, b, rest = route.rules
    assert a.cors is not None and a.cors.allow_origins == (StringMatch("exact",
                                                                       "https://a.example"),)
    assert b.cors is not None and b.cors.allow_origins == (StringMatch("prefix", "https://b."),)
    assert rest.cors is None
    entries = _envoy_routes(model)
    policies = [e.get("typedPerFilterConfig", {}).get("envoy.filters.http.cors")
                for e in entries]
    assert policies[0]["allowOriginStringMatch"] == [{"exact": "https://a.example",
                                                      "ignoreCase": True}]
    assert policies[0]["allowMethods"] == "GET"
    # The prefix stays a prefix (no regex written for it).
    assert policies[1]["allowOriginStringMatch"] == [{"prefix": "https://b.",
                                                      "ignoreCase": True}]
    assert policies[1]["maxAge"] == "60"
    assert policies[2] is None


def test_a_delegate_route_inherits_the_roots_cors_policy_unless_it_writes_one() -> None:
    model = load(DR, """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /api}}]
    delegate: {name: leaf}
    corsPolicy: {allowOrigins: [{exact: "https://root.example"}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: leaf}
spec:
  http:
  - match: [{uri: {prefix: /api/own}}]
    route: [{destination: {host: reviews}}]
    corsPolicy: {allowOrigins: [{exact: "https://leaf.example"}]}
  - route: [{destination: {host: reviews}}]
""")
    own, inherited = route_of(model).rules
    assert own.cors is not None and own.cors.allow_origins[0].value == "https://leaf.example"
    assert inherited.cors is not None
    assert inherited.cors.allow_origins[0].value == "https://root.example"


def test_rewrite_uri_with_a_regex_match_is_envoys_prefix_rewrite_as_istio_writes_it() -> None:
    model = load(DR, _vs("""
  - match: [{uri: {regex: "/catalog[0-9]+"}}]
    rewrite: {uri: /newcatalog}
    route: [{destination: {host: reviews}}]
"""))
    (rule,) = route_of(model).rules
    assert rule.rewrite_path is not None and rule.rewrite_path.prefix == "/newcatalog"
    (entry,) = _envoy_routes(model)
    assert entry["match"]["safeRegex"]["regex"] == "/catalog[0-9]+"
    assert entry["route"]["prefixRewrite"] == "/newcatalog"


def test_direct_response_body_bytes_is_base64() -> None:
    model = load(DR, _vs("""
  - match: [{uri: {exact: /text}}]
    directResponse: {status: 200, body: {bytes: "aGVsbG8gd29ybGQ="}}
  - directResponse: {status: 503, body: {bytes: "/wD+"}}
"""))
    text, raw = route_of(model).rules
    assert text.direct_response is not None and text.direct_response.body == "hello world"
    assert raw.direct_response is not None and raw.direct_response.body == b"\xff\x00\xfe"
    first, second = _envoy_routes(model)
    assert first["directResponse"]["body"] == {"inlineString": "hello world"}
    assert second["directResponse"] == {"status": 503, "body": {"inlineBytes": "/wD+"}}


@pytest.mark.parametrize(("body", "expected"), [
    ('{bytes: "not base64!"}', "spec.http[0].directResponse.body.bytes: expected base64"),
    ('{bytes: "aGk=", string: hi}', '"bytes" cannot be used together with "string"'),
])
def test_bad_direct_response_bodies_are_refused_at_their_field(body: str, expected: str) -> None:
    found = errors(_vs(f"""
  - directResponse: {{status: 200, body: {body}}}
"""))
    assert any(expected in e and "istio.yaml:" in e for e in found), found


def test_abort_http2_error_is_refused_with_the_reason() -> None:
    found = errors(_vs("""
  - route: [{destination: {host: reviews}}]
    fault: {abort: {http2Error: REFUSED_STREAM}}
"""))
    assert any("spec.http[0].fault.abort.http2Error" in e and "cannot reset a stream" in e
               for e in found), found


@pytest.mark.envoy
def test_envoy_accepts_the_new_fields() -> None:
    from static_check import static_bootstrap

    from meshpilot.local.envoy_process import validate_config
    from meshpilot.xds.render import snapshot_to_dict

    model = load(DR, _vs("""
  - match: [{uri: {regex: "/catalog[0-9]+"}}]
    rewrite: {uri: /newcatalog}
    route:
    - {destination: {host: reviews, subset: v1}, headers: {request: {add: {x-a: b}}}}
    corsPolicy: {allowOrigins: [{prefix: "https://b."}]}
  - directResponse: {status: 503, body: {bytes: "/wD+"}}
"""))
    validate_config(static_bootstrap(snapshot_to_dict(Translation(model).snapshot(VIEW))))
