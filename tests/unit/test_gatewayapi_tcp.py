"""TCPRoute as an input: a TCP listener proxies every connection to the route's backend;
several weighted backends share its connections; status for what cannot be served. Traffic:
`tests/e2e/test_gatewayapi_tcp_traffic.py`."""

from __future__ import annotations

import pytest
from test_gatewayapi import GATEWAY, status_of, view

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text

TCP_GATEWAY = GATEWAY.replace(
    "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}",
    "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n"
    "  - {name: raw, port: 5432, protocol: TCP}")


def tcp_route(backends: str, name: str = "t", stamp: str | None = None,
              parent: str = "{name: edge, sectionName: raw}", version: str = "v1alpha2") -> str:
    extra = f", creationTimestamp: '{stamp}'" if stamp else ""
    return f"""apiVersion: gateway.networking.k8s.io/{version}
kind: TCPRoute
metadata: {{name: {name}, namespace: infra{extra}}}
spec:
  parentRefs: [{parent}]
  rules: [{{backendRefs: {backends}}}]
---
"""


def listeners(model) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    return {lst["name"]: lst for lst in view(model)["listeners"]}


def test_a_tcp_route_proxies_its_listener_to_its_backend() -> None:
    model = load_policy_text(TCP_GATEWAY + tcp_route("[{name: web, port: 8080}]"))
    assert status_of(model, "TCPRoute", "infra/t") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    tcp = listeners(model)["infra/edge/5432"]
    assert "tcp_proxy" in str(tcp)
    assert "infra/web:8080:tcp" in str(tcp)
    clusters = {c["name"] for c in view(model)["clusters"]}
    assert "infra/web:8080:tcp" in clusters
    (listener,) = [s for s in model.statuses if s.name == "infra/edge/raw"]
    assert dict(listener.details) == {"attachedRoutes": "1", "supportedKinds": "TCPRoute"}


def test_a_v1_tcp_route_is_read_as_the_v1alpha2_one() -> None:
    alpha = load_policy_text(TCP_GATEWAY + tcp_route("[{name: web, port: 8080}]"))
    v1 = load_policy_text(TCP_GATEWAY + tcp_route("[{name: web, port: 8080}]", version="v1"))
    assert status_of(v1, "TCPRoute", "infra/t") == status_of(alpha, "TCPRoute", "infra/t")
    assert listeners(v1)["infra/edge/5432"] == listeners(alpha)["infra/edge/5432"]


def test_a_listener_serves_the_oldest_tcp_route_only() -> None:
    model = load_policy_text(
        TCP_GATEWAY + tcp_route("[{name: web, port: 8080}, {name: nothing, port: 1}]",
                                name="new", stamp="2024-01-01T00:00:00Z")
        + tcp_route("[{name: web, port: 8080}]", name="old", stamp="2020-01-01T00:00:00Z"))
    assert status_of(model, "TCPRoute", "infra/old")["Accepted"] == ("True", "Accepted")
    assert status_of(model, "TCPRoute", "infra/new")["Accepted"] == ("True", "Accepted")
    (listener,) = [s for s in model.statuses if s.name == "infra/edge/raw"]
    assert dict(listener.details)["attachedRoutes"] == "2"  # both attached, the oldest served
    (chain,) = listeners(model)["infra/edge/5432"]["filter_chains"]
    assert chain["filters"][0]["typed_config"]["cluster"] == "infra/web:8080:tcp"  # old's


def test_a_tcp_route_cannot_attach_to_an_http_listener_nor_an_http_route_to_a_tcp_one() -> None:
    model = load_policy_text(TCP_GATEWAY + tcp_route("[{name: web, port: 8080}]",
                                                     parent="{name: edge, sectionName: http}"))
    assert status_of(model, "TCPRoute", "infra/t")["Accepted"] == \
        ("False", "NotAllowedByListeners")
    assert "infra/edge/5432" not in listeners(model)  # no route: nothing served there


def test_a_missing_backend_leaves_the_listener_unserved_with_its_reason() -> None:
    model = load_policy_text(TCP_GATEWAY + tcp_route("[{name: nothing, port: 1}]"))
    assert status_of(model, "TCPRoute", "infra/t") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")}
    assert "infra/edge/5432" not in listeners(model)


def test_weighted_backends_share_the_connections_and_an_invalid_one_keeps_its_share() -> None:
    model = load_policy_text(TCP_GATEWAY + tcp_route(
        "[{name: web, port: 8080, weight: 3}, {name: nothing, port: 1, weight: 1},"
        " {name: web, port: 8080, weight: 0}]"))
    assert status_of(model, "TCPRoute", "infra/t") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")}
    (chain,) = listeners(model)["infra/edge/5432"]["filter_chains"]
    proxy = chain["filters"][0]["typed_config"]
    assert proxy["weighted_clusters"]["clusters"] == [
        {"name": "infra/web:8080:tcp", "weight": 3},
        {"name": "unresolved|infra/nothing:1", "weight": 1}]  # never made: its share closed
    clusters = {c["name"] for c in view(model)["clusters"]}
    assert "infra/web:8080:tcp" in clusters and not any("nothing" in c for c in clusters)


def test_a_service_backend_without_a_port_is_refused() -> None:
    with pytest.raises(PolicyError) as error:
        load_policy_text(TCP_GATEWAY + tcp_route("[{name: web}]"))
    assert 'TCPRoute infra/t: spec.rules[0].backendRefs[0].port: missing "port"' in \
        str(error.value)
