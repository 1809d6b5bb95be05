"""The statuses and the model the upstream UDPRoute conformance tests (conformance/tests/
udproute-*.go) expect, one test each, named after it. The inputs are meshpilot's own (the
shared conformance copy has no manifests for them), written for the same behaviours; the
datagrams through a real Envoy are `tests/e2e/test_gatewayapi_udp_conformance.py`."""

from __future__ import annotations

from test_gatewayapi import CLASS, status_of, view

from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import Model


def gateway(name: str, *listeners: str) -> str:
    items = "".join(f"\n  - {{{item}}}" for item in listeners)
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: infra}}
spec:
  gatewayClassName: mp
  listeners:{items}
---
"""


def udp_listener(name: str, port: int) -> str:
    return (f"name: {name}, port: {port}, protocol: UDP, "
            "allowedRoutes: {kinds: [{kind: UDPRoute}]}")


def service(name: str, namespace: str = "infra", address: str = "10.0.0.1") -> str:
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec: {{ports: [{{name: udp, port: 8080, protocol: UDP}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: {namespace}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: udp, port: 8080, protocol: UDP}}]
endpoints: [{{addresses: [{address}]}}]
---
"""


def route(name: str, parent: str, backends: str, stamp: str = "2026-01-01T00:00:00Z") -> str:
    return f"""apiVersion: gateway.networking.k8s.io/v1alpha2
kind: UDPRoute
metadata: {{name: {name}, namespace: infra, creationTimestamp: "{stamp}"}}
spec:
  parentRefs: [{parent}]
  rules: [{{backendRefs: {backends}}}]
---
"""


GRANT = """apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: udp-grant, namespace: apps}
spec:
  from: [{group: gateway.networking.k8s.io, kind: UDPRoute, namespace: infra}]
  to: [{group: "", kind: Service, name: far}]
---
"""


def listener_status(model: Model, name: str) -> tuple[dict[str, tuple[str, str]], dict]:
    (found,) = [s for s in model.statuses if s.kind == "Listener" and s.name == name]
    return {c.type: (c.status, c.reason) for c in found.conditions}, dict(found.details)


def clusters_of(model: Model, gateway_name: str) -> dict[str, str]:
    """{Envoy listener name: the cluster its UDP proxy sends every datagram to}."""
    found = {}
    for listener in view(model, gateway_name)["listeners"]:
        (udp_filter,) = listener["listener_filters"]
        action = udp_filter["typed_config"]["matcher"]["on_no_match"]["action"]
        found[listener["name"]] = action["typed_config"]["cluster"]
    return found


ACCEPTED = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}


def test_udproute() -> None:
    """UDPRoute (udproute-simple): the Gateway and the route are accepted, its datagrams go
    to its backend's cluster."""
    model = load_policy_text(CLASS + gateway("udp-gateway", udp_listener("dns", 5300))
                             + service("coredns")
                             + route("udp-coredns", "{name: udp-gateway}",
                                     "[{name: coredns, port: 8080}]"))
    assert status_of(model, "Gateway", "infra/udp-gateway")["Accepted"] == ("True", "Accepted")
    assert status_of(model, "UDPRoute", "infra/udp-coredns") == ACCEPTED
    assert clusters_of(model, "infra/udp-gateway") == \
        {"infra/udp-gateway/5300:udp": "infra/udp-coredns:udp"}


def test_udproute_weighted_routing() -> None:
    """UDPRouteWeightedRouting: weights 70/30/0 become the endpoints' weights of the route's
    one cluster; the weight 0 backend has none."""
    model = load_policy_text(
        CLASS + gateway("udp-weighted", udp_listener("udp", 5300))
        + "".join(service(f"v{i}", address=f"10.0.0.{i}") for i in (1, 2, 3))
        + route("weighted", "{name: udp-weighted, sectionName: udp}",
                "[{name: v1, port: 8080, weight: 70}, {name: v2, port: 8080, weight: 30},"
                " {name: v3, port: 8080, weight: 0}]"))
    assert status_of(model, "UDPRoute", "infra/weighted") == ACCEPTED
    (assignment,) = [a for a in view(model, "infra/udp-weighted")["endpoints"]
                     if a["cluster_name"] == "infra/weighted:udp"]
    assert {e["endpoint"]["address"]["socket_address"]["address"]:
            e.get("load_balancing_weight", 1)
            for group in assignment["endpoints"] for e in group["lb_endpoints"]} == \
        {"10.0.0.1": 7, "10.0.0.2": 3}


def test_udproute_invalid_backendref_nonexistent() -> None:
    """UDPRouteInvalidBackendRefNonexistent: ResolvedRefs False (BackendNotFound); the route
    is still accepted, and its listener serves nothing."""
    model = load_policy_text(CLASS + gateway("udp-invalid", udp_listener("udp", 5300))
                             + route("nonexistent", "{name: udp-invalid, sectionName: udp}",
                                     "[{name: nonexistent-service, port: 8080}]"))
    assert status_of(model, "UDPRoute", "infra/nonexistent") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")}
    assert view(model, "infra/udp-invalid").get("listeners", []) == []


def test_udproute_invalid_cross_namespace_backend_ref() -> None:
    """UDPRouteInvalidCrossNamespaceBackendRef: a Service of another namespace without a
    ReferenceGrant: the Gateway and the route accepted, ResolvedRefs False (RefNotPermitted)."""
    model = load_policy_text(CLASS + gateway("udp-cross", udp_listener("udp", 5300))
                             + service("far", namespace="apps")
                             + route("cross", "{name: udp-cross}",
                                     "[{name: far, namespace: apps, port: 8080}]"))
    assert status_of(model, "Gateway", "infra/udp-cross")["Accepted"] == ("True", "Accepted")
    assert status_of(model, "UDPRoute", "infra/cross") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "RefNotPermitted")}
    assert view(model, "infra/udp-cross").get("listeners", []) == []


def test_udproute_reference_grant() -> None:
    """UDPRouteReferenceGrant: with the grant the cross-namespace backend resolves and is
    served; the grant gone, RefNotPermitted and nothing served."""
    text = (CLASS + gateway("udp-grant", udp_listener("udp", 5300))
            + service("far", namespace="apps")
            + route("granted", "{name: udp-grant}", "[{name: far, namespace: apps, port: 8080}]"))
    model = load_policy_text(text + GRANT)
    assert status_of(model, "UDPRoute", "infra/granted") == ACCEPTED
    assert clusters_of(model, "infra/udp-grant") == \
        {"infra/udp-grant/5300:udp": "infra/granted:udp"}
    without = load_policy_text(text)
    assert status_of(without, "UDPRoute", "infra/granted")["ResolvedRefs"] == \
        ("False", "RefNotPermitted")
    assert view(without, "infra/udp-grant").get("listeners", []) == []


def test_udproute_not_allowed_by_listeners() -> None:
    """UDPRouteNotAllowedByListeners: a Gateway with a TLS passthrough listener only: the
    route is not accepted (NotAllowedByListeners) and counted nowhere."""
    model = load_policy_text(
        CLASS + gateway("tls-only", "name: tls, port: 443, protocol: TLS, tls: {mode: Passthrough}")
        + service("coredns")
        + route("not-allowed", "{name: tls-only, sectionName: tls}",
                "[{name: coredns, port: 8080}]"))
    assert status_of(model, "UDPRoute", "infra/not-allowed")["Accepted"] == \
        ("False", "NotAllowedByListeners")
    assert listener_status(model, "infra/tls-only/tls")[1]["attachedRoutes"] == "0"


def test_udproute_parentref_attach_all_listeners() -> None:
    """UDPRouteParentRefAttachAllListeners: a parentRef with neither port nor sectionName
    attaches to every UDP listener; each counts it and sends to its backend."""
    model = load_policy_text(
        CLASS + gateway("attach-all", *(udp_listener(f"udp-{i}", 5300 + i) for i in (1, 2, 3)))
        + service("echo") + route("all", "{name: attach-all}", "[{name: echo, port: 8080}]"))
    assert status_of(model, "UDPRoute", "infra/all") == ACCEPTED
    for i in (1, 2, 3):
        conditions, details = listener_status(model, f"infra/attach-all/udp-{i}")
        assert conditions["Accepted"][0] == conditions["ResolvedRefs"][0] == "True"
        assert details == {"attachedRoutes": "1", "supportedKinds": "UDPRoute"}
    assert clusters_of(model, "infra/attach-all") == {
        f"infra/attach-all/{5300 + i}:udp": "infra/all:udp" for i in (1, 2, 3)}


def test_udproute_parentref_port_and_section_name() -> None:
    """UDPRouteParentRefPortAndSectionName: one route picks its listener by port, one by
    sectionName, one by both; each listener sends to its own route's backend."""
    model = load_policy_text(
        CLASS + gateway("multi", udp_listener("by-port", 5300), udp_listener("by-section", 5301),
                        udp_listener("by-both", 5302))
        + "".join(service(name) for name in ("echo-port", "echo-section", "echo-both"))
        + route("by-port", "{name: multi, port: 5300}", "[{name: echo-port, port: 8080}]")
        + route("by-section", "{name: multi, sectionName: by-section}",
                "[{name: echo-section, port: 8080}]")
        + route("by-both", "{name: multi, sectionName: by-both, port: 5302}",
                "[{name: echo-both, port: 8080}]"))
    for name in ("by-port", "by-section", "by-both"):
        assert status_of(model, "UDPRoute", f"infra/{name}") == ACCEPTED
    assert clusters_of(model, "infra/multi") == {
        "infra/multi/5300:udp": "infra/by-port:udp",
        "infra/multi/5301:udp": "infra/by-section:udp",
        "infra/multi/5302:udp": "infra/by-both:udp"}
    # Both must agree: a port that is not the named listener's matches nothing.
    wrong = load_policy_text(
        CLASS + gateway("multi", udp_listener("by-port", 5300), udp_listener("by-section", 5301))
        + service("echo") + route("wrong", "{name: multi, sectionName: by-section, port: 5300}",
                                  "[{name: echo, port: 8080}]"))
    assert status_of(wrong, "UDPRoute", "infra/wrong")["Accepted"] == \
        ("False", "NoMatchingParent")


def test_udproute_multiple_routes_attachment() -> None:
    """UDPRouteMultipleRoutesAttachment: two routes on one listener are both accepted and
    counted (attachedRoutes 2); only the older one is served there."""
    model = load_policy_text(
        CLASS + gateway("multi-attach", udp_listener("udp", 5301))
        + service("backend-1", address="10.0.0.1") + service("backend-2", address="10.0.0.2")
        + route("newer", "{name: multi-attach, sectionName: udp}",
                "[{name: backend-2, port: 8080}]", stamp="2026-02-01T00:00:00Z")
        + route("older", "{name: multi-attach, sectionName: udp}",
                "[{name: backend-1, port: 8080}]", stamp="2026-01-01T00:00:00Z"))
    for name in ("older", "newer"):
        assert status_of(model, "UDPRoute", f"infra/{name}")["Accepted"] == ("True", "Accepted")
    conditions, details = listener_status(model, "infra/multi-attach/udp")
    assert conditions["Accepted"] == ("True", "Accepted")
    assert details == {"attachedRoutes": "2", "supportedKinds": "UDPRoute"}
    assert clusters_of(model, "infra/multi-attach") == \
        {"infra/multi-attach/5301:udp": "infra/older:udp"}
