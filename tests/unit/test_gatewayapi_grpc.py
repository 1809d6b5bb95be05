"""GRPCRoute as an input: method matches as /SERVICE/METHOD path matches, the spec's
precedence, hostnames, backends that speak gRPC (HTTP/2), status, and what the CRD refuses.
Traffic through a real Envoy is `tests/e2e/test_gatewayapi_grpc_traffic.py`."""

from __future__ import annotations

import pytest
from test_gatewayapi import GATEWAY, status_of, vhosts, view

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text

SERVICE = "meshpilot.demo.Echo"


def grpc_route(body: str, name: str = "g", namespace: str = "infra",
               stamp: str | None = None) -> str:
    extra = f", creationTimestamp: '{stamp}'" if stamp else ""
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: {name}, namespace: {namespace}{extra}}}
spec:
  parentRefs: [{{name: edge, namespace: infra}}]
{body}---
"""


def test_a_grpc_route_is_accepted_and_its_method_match_is_the_grpc_path() -> None:
    model = load_policy_text(GATEWAY + grpc_route(f"""  rules:
  - matches: [{{method: {{service: {SERVICE}, method: Say}}}}]
    backendRefs: [{{name: web, port: 8080}}]
"""))
    assert status_of(model, "GRPCRoute", "infra/g") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    (entry,) = vhosts(model)["*"]
    assert entry["match"] == {"path": f"/{SERVICE}/Say"}
    assert entry["route"]["cluster"] == "infra/web:8080:grpc"


def test_exact_and_regex_method_matches_with_a_part_left_out() -> None:
    model = load_policy_text(GATEWAY + grpc_route(f"""  rules:
  - matches:
    - method: {{service: {SERVICE}}}
    - method: {{method: Say}}
    - method: {{type: RegularExpression, service: "meshpilot\\\\..*", method: "S.*"}}
    - method: {{type: RegularExpression, method: "Ec+ho"}}
    - headers: [{{name: X-Tenant, value: acme}}]
    backendRefs: [{{name: web, port: 8080}}]
"""))
    matches = [e["match"] for e in vhosts(model)["*"]]
    assert {"prefix": f"/{SERVICE}/"} in matches
    assert {"safe_regex": {"regex": "/[^/]+/Say"}} in matches
    assert {"safe_regex": {"regex": "/(meshpilot\\..*)/(S.*)"}} in matches
    assert {"safe_regex": {"regex": "/([^/]+)/(Ec+ho)"}} in matches
    assert {"prefix": "/", "headers": [{"name": "x-tenant",
                                        "string_match": {"exact": "acme"}}]} in matches


def test_precedence_is_service_characters_then_method_characters_then_headers_then_age() -> None:
    old = grpc_route("""  rules:
  - matches: [{method: {service: a.B}}]
    backendRefs: [{name: web, port: 8080}]
""", name="zzz", stamp="2020-01-01T00:00:00Z")
    new = grpc_route("""  rules:
  - matches:
    - {method: {service: a.B}, headers: [{name: h, value: v}]}
    - method: {method: LongMethodName}
    - method: {service: a.B, method: M}
    - method: {service: a.Longer}
    - method: {service: a.B}
    backendRefs: [{name: web, port: 8080}]
""", name="aaa", stamp="2024-01-01T00:00:00Z")
    model = load_policy_text(GATEWAY + old + new)
    matches = [e["match"] for e in vhosts(model)["*"]]
    assert matches == [
        {"prefix": "/a.Longer/"},
        {"path": "/a.B/M"},
        {"prefix": "/a.B/", "headers": [{"name": "h", "string_match": {"exact": "v"}}]},
        {"prefix": "/a.B/"},  # zzz: older than aaa
        {"prefix": "/a.B/"},
        {"safe_regex": {"regex": "/[^/]+/LongMethodName"}},
    ]


def test_grpc_backends_are_http2_clusters_beside_an_http_route_to_the_same_port() -> None:
    http = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: h, namespace: infra}
spec:
  parentRefs: [{name: edge}]
  hostnames: [web.example.com]
  rules: [{backendRefs: [{name: web, port: 8080}]}]
---
"""
    model = load_policy_text(GATEWAY + http + grpc_route(
        "  hostnames: [grpc.example.com]\n  rules: [{backendRefs: [{name: web, port: 8080}]}]\n"))
    clusters = {c["name"]: c for c in view(model)["clusters"]}
    assert "http2_protocol_options" in str(clusters["infra/web:8080:grpc"])
    assert "http2_protocol_options" not in str(clusters["infra/web:8080"])
    hosts = vhosts(model)
    assert hosts["grpc.example.com"][0]["route"]["cluster"] == "infra/web:8080:grpc"
    assert hosts["web.example.com"][0]["route"]["cluster"] == "infra/web:8080"


def test_an_h2c_service_port_is_one_cluster_for_both_route_kinds() -> None:
    text = GATEWAY.replace("ports: [{name: http, port: 8080, targetPort: web}]",
                           "ports: [{name: http, port: 8080, targetPort: web, "
                           "appProtocol: kubernetes.io/h2c}]")
    model = load_policy_text(text + grpc_route("  rules: [{backendRefs: [{name: web, port: 8080}]}]\n"))
    (entry,) = vhosts(model)["*"]
    assert entry["route"]["cluster"] == "infra/web:8080"


def test_hostnames_intersect_with_the_listener_like_an_http_route() -> None:
    text = GATEWAY.replace("{name: http, port: 80, protocol: HTTP,",
                           "{name: http, port: 80, protocol: HTTP, hostname: '*.example.com',")
    model = load_policy_text(text + grpc_route(
        "  hostnames: [a.example.com, other.org]\n"
        "  rules: [{backendRefs: [{name: web, port: 8080}]}]\n")
        + grpc_route("  hostnames: [other.org]\n"
                     "  rules: [{backendRefs: [{name: web, port: 8080}]}]\n", name="elsewhere"))
    assert list(vhosts(model)) == ["a.example.com"]
    assert status_of(model, "GRPCRoute", "infra/elsewhere")["Accepted"] == \
        ("False", "NoMatchingListenerHostname")


def test_a_listener_allowing_only_http_routes_refuses_grpc_routes() -> None:
    text = GATEWAY.replace("allowedRoutes: {namespaces: {from: All}}",
                           "allowedRoutes: {namespaces: {from: All}, kinds: [{kind: HTTPRoute}]}")
    model = load_policy_text(text + grpc_route("  rules: [{backendRefs: [{name: web, port: 8080}]}]\n"))
    assert status_of(model, "GRPCRoute", "infra/g")["Accepted"] == \
        ("False", "NotAllowedByListeners")
    assert vhosts(model) == {}
    default = load_policy_text(GATEWAY)
    (listener,) = [s for s in default.statuses if s.kind == "Listener"]
    assert dict(listener.details)["supportedKinds"] == "HTTPRoute,GRPCRoute"


def test_a_missing_backend_answers_500_and_a_cross_namespace_one_needs_a_grant() -> None:
    model = load_policy_text(GATEWAY + grpc_route("""  rules:
  - matches: [{method: {service: a.B}}]
    backendRefs: [{name: nothing, port: 80}]
  - backendRefs: [{name: web, namespace: infra, port: 8080}]
""", namespace="apps"))
    status = status_of(model, "GRPCRoute", "apps/g")
    assert status["Accepted"] == ("True", "Accepted")
    assert status["ResolvedRefs"] == ("False", "BackendNotFound")
    assert [e.get("direct_response", {}).get("status") for e in vhosts(model)["*"]] == [500, 500]
    grant = """apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: g, namespace: infra}
spec:
  from: [{group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: apps}]
  to: [{group: "", kind: Service}]
---
"""
    granted = load_policy_text(GATEWAY + grant + grpc_route(
        "  rules: [{backendRefs: [{name: web, namespace: infra, port: 8080}]}]\n",
        namespace="apps"))
    assert vhosts(granted)["*"][0]["route"]["cluster"] == "infra/web:8080:grpc"


def test_header_modifier_filters_apply() -> None:
    model = load_policy_text(GATEWAY + grpc_route("""  rules:
  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-by, value: gw}]}}]
    backendRefs: [{name: web, port: 8080}]
"""))
    (entry,) = vhosts(model)["*"]
    assert [h["header"] for h in entry["request_headers_to_add"]] == [
        {"key": "x-by", "value": "gw"}]


@pytest.mark.parametrize(("method", "message"), [
    ("{}", 'one or both of "service" and "method" must be given'),
    ("{service: 'a b'}", "'a b' is not a gRPC service name (type Exact)"),
    ("{method: a.b}", "'a.b' is not a gRPC method name (type Exact)"),
    ("{type: RegularExpression, method: '(('}", "not a regular expression"),
    ("{type: RegularExpression, service: '(?=a)b'}", "not a regular expression"),  # not RE2
])
def test_what_the_crd_refuses_is_an_issue_at_its_place(method: str, message: str) -> None:
    with pytest.raises(PolicyError) as error:
        load_policy_text(GATEWAY + grpc_route(f"""  rules:
  - matches: [{{method: {method}}}]
    backendRefs: [{{name: web, port: 8080}}]
"""))
    assert "GRPCRoute infra/g: spec.rules[0].matches[0].method" in str(error.value)
    assert message in str(error.value)


def test_http_only_fields_are_refused_on_a_grpc_route() -> None:
    with pytest.raises(PolicyError) as error:
        load_policy_text(GATEWAY + grpc_route("""  rules:
  - matches: [{path: {value: /x}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: x}}]
    backendRefs: [{name: web, port: 8080}]
"""))
    text = str(error.value)
    assert 'GRPCRoute infra/g: spec.rules[0].matches[0].path: unknown key "path"; known keys: ' \
        "method, headers" in text
    assert 'spec.rules[0].filters[0].type: must be one of RequestHeaderModifier, ' \
        'ResponseHeaderModifier, RequestMirror, ExtensionRef, found "URLRewrite"' in text


def test_on_a_shared_hostname_grpc_matches_come_before_http_matches() -> None:
    http = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: h, namespace: infra}
spec:
  parentRefs: [{name: edge}]
  rules: [{matches: [{path: {type: Exact, value: /a.B/Longer}}],
           backendRefs: [{name: web, port: 8080}]}]
---
"""
    model = load_policy_text(GATEWAY + http + grpc_route(
        "  rules: [{matches: [{method: {service: a.B}}], backendRefs: [{name: web, port: 8080}]}]\n"))
    assert [e["match"] for e in vhosts(model)["*"]] == [{"prefix": "/a.B/"},
                                                        {"path": "/a.B/Longer"}]
