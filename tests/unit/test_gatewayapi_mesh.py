"""GAMMA (the mesh profile): an HTTPRoute whose parent is a Service shapes what every sidecar
calling that Service sends. Sidecars are native Services (docs/mesh.md). Traffic through two
sidecar Envoys: `tests/e2e/test_gatewayapi_mesh_traffic.py`."""

from __future__ import annotations

from test_gatewayapi import status_of, view

from meshpilot.inputs.loader import load_policy_text

MESH = """\
kind: Service
name: a
endpoints: ["127.0.0.1:15006"]
sidecar: {port: 15006, app: 8080, outbound_port: 15001, calls: [b]}
---
kind: Service
name: b
endpoints: ["127.0.0.1:15007"]
sidecar: {port: 15007, app: 8081}
---
kind: Service
name: b2
endpoints: ["127.0.0.1:9000"]
---
"""


def mesh_route(rules: str, name: str = "r", parent: str = "{group: '', kind: Service, name: b}",
               stamp: str | None = None) -> str:
    extra = f", creationTimestamp: '{stamp}'" if stamp else ""
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default{extra}}}
spec:
  parentRefs: [{parent}]
  rules: {rules}
---
"""


def b_routes(model) -> list[dict]:  # type: ignore[no-untyped-def]
    (config,) = [r for r in view(model, "a")["routes"] if r["name"] == "outbound"]
    (vhost,) = [v for v in config["virtual_hosts"] if "b" in v["domains"]]
    return vhost["routes"]  # type: ignore[no-any-return]


def test_a_service_parent_shapes_the_callers_sidecar_routes_in_precedence_order() -> None:
    model = load_policy_text(MESH + mesh_route(
        "[{backendRefs: [{name: b, port: 80}]}]", name="all", stamp="2020-01-01T00:00:00Z")
        + mesh_route("[{matches: [{headers: [{name: x-version, value: v2}]}],"
                     " backendRefs: [{name: b2, port: 80}],"
                     " filters: [{type: RequestHeaderModifier,"
                     " requestHeaderModifier: {set: [{name: x-gamma, value: 'yes'}]}}]}]",
                     name="canary", stamp="2024-01-01T00:00:00Z"))
    assert status_of(model, "HTTPRoute", "default/canary") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    canary, rest = b_routes(model)
    # The header match ranks first though its route is younger: precedence, not age.
    assert canary["match"]["headers"][0]["name"] == "x-version"
    assert canary["route"]["cluster"] == "b2"
    assert canary["request_headers_to_add"][0]["header"]["key"] == "x-gamma"
    assert rest["route"]["cluster"] == "b"
    clusters = {c["name"] for c in view(model, "a")["clusters"]}
    assert {"b", "b2"} <= clusters
    # b's own sidecar is not a caller of b: its inbound side is as before.
    assert "b2" not in {c["name"] for c in view(model, "b").get("clusters", [])}


def test_a_service_parent_that_is_no_native_service_is_not_accepted() -> None:
    model = load_policy_text(MESH + mesh_route(
        "[{backendRefs: [{name: b, port: 80}]}]",
        parent="{group: '', kind: Service, name: nothing}"))
    assert status_of(model, "HTTPRoute", "default/r")["Accepted"] == \
        ("False", "NoMatchingParent")
    assert b_routes(model)[0]["route"]["cluster"] == "b"  # calls to b as without it


def test_a_native_route_for_the_service_keeps_it_and_the_http_route_says_why() -> None:
    native = """kind: Route
name: b-traffic
service: b
rules: [{backends: [b2]}]
---
"""
    model = load_policy_text(MESH + native + mesh_route("[{backendRefs: [{name: b, port: 80}]}]"))
    assert status_of(model, "HTTPRoute", "default/r")["Accepted"] == \
        ("False", "UnsupportedValue")
    assert b_routes(model)[0]["route"]["cluster"] == "b2"


def test_a_missing_backend_answers_500_in_the_callers_sidecar() -> None:
    model = load_policy_text(MESH + mesh_route("[{backendRefs: [{name: gone, port: 80}]}]"))
    assert status_of(model, "HTTPRoute", "default/r")["ResolvedRefs"] == \
        ("False", "BackendNotFound")
    assert b_routes(model)[0]["direct_response"]["status"] == 500


# A consumer route (GEP-1294): a route in the callers' namespace whose parent is a Service of
# another namespace. Callers `c` (namespace shop) and `a` (namespace default) both call `b.infra`.
CONSUMERS = """\
kind: Service
name: c
endpoints: ["127.0.0.1:15008"]
sidecar: {port: 15008, app: 8082, namespace: shop, outbound_port: 15001, calls: [b.infra]}
---
kind: Service
name: a
endpoints: ["127.0.0.1:15006"]
sidecar: {port: 15006, app: 8080, outbound_port: 15001, calls: [b.infra]}
---
kind: Service
name: b.infra
endpoints: ["127.0.0.1:15007"]
sidecar: {port: 15007, app: 8081}
---
apiVersion: v1
kind: Service
metadata: {name: b2, namespace: infra}
spec: {ports: [{name: http, port: 80}]}
---
"""


def _routes_to_b(model, caller: str) -> list[dict]:  # type: ignore[no-untyped-def]
    (config,) = [r for r in view(model, caller)["routes"] if r["name"] == "outbound"]
    (vhost,) = [v for v in config["virtual_hosts"] if "b.infra" in v["domains"]]
    return vhost["routes"]  # type: ignore[no-any-return]


def _in(namespace: str, text: str) -> str:
    return text.replace("namespace: default", f"namespace: {namespace}")


def test_a_consumer_route_shapes_only_the_calls_of_its_namespaces_sidecars() -> None:
    model = load_policy_text(CONSUMERS + _in("shop", mesh_route(
        "[{backendRefs: [{name: b2, namespace: infra, port: 80}]}]", name="mine",
        parent="{group: '', kind: Service, name: b, namespace: infra}")))
    # Accepted without a ReferenceGrant, its backend in another namespace too (GEP-1294).
    assert status_of(model, "HTTPRoute", "shop/mine") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    (mine,) = _routes_to_b(model, "c")
    assert mine["route"]["cluster"].startswith("infra/b2")
    # The caller of another namespace calls b.infra as without it.
    (plain,) = _routes_to_b(model, "a")
    assert plain["route"]["cluster"] == "b.infra"
    assert not any(c["name"].startswith("infra/b2") for c in view(model, "a")["clusters"])


def test_a_consumer_route_replaces_the_producer_route_for_its_namespace_only() -> None:
    producer = _in("infra", mesh_route(
        "[{matches: [{path: {type: PathPrefix, value: /p}}],"
        " backendRefs: [{name: b2, port: 80}]}]", name="producer",
        parent="{group: '', kind: Service, name: b}"))
    consumer = _in("shop", mesh_route(
        "[{matches: [{path: {type: PathPrefix, value: /c}}],"
        " backendRefs: [{name: b, namespace: infra, port: 80}]}]", name="consumer",
        parent="{group: '', kind: Service, name: b, namespace: infra}"))
    model = load_policy_text(CONSUMERS + producer + consumer)
    # The consumer namespace takes its own routes only (the routes of one kind merge).
    assert [r["match"]["path_separated_prefix"] for r in _routes_to_b(model, "c")] == ["/c"]
    assert [r["match"]["path_separated_prefix"] for r in _routes_to_b(model, "a")] == ["/p"]
