"""Gateway API backend protocols (GEP-1911): a Service port's appProtocol says how the Gateway
speaks to it. kubernetes.io/h2c: prior-knowledge HTTP/2; kubernetes.io/ws: the route entry
lets requests upgrade to a websocket (natively: a rule's `websocket: true`). Traffic: tests/e2e/test_gatewayapi_conformance.py
(HTTPRouteBackendProtocolH2C, HTTPRouteBackendProtocolWebSocket)."""

from __future__ import annotations

import pytest
from test_gatewayapi import GATEWAY, route, vhosts, view

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text

PORTS = "ports: [{name: http, port: 8080, targetPort: web}]"
WS_PORTS = ("ports: [{name: http, port: 8080, targetPort: web}, "
            "{name: ws, port: 8082, targetPort: web, appProtocol: kubernetes.io/ws}, "
            "{name: h2c, port: 8081, targetPort: web, appProtocol: kubernetes.io/h2c}]")


def _entries(rules: str) -> list[dict]:  # type: ignore[type-arg]
    model = load_policy_text(GATEWAY.replace(PORTS, WS_PORTS) + route(rules))
    return vhosts(model)["*"]


def test_a_websocket_port_lets_its_route_entry_upgrade() -> None:
    (entry,) = _entries("  rules: [{backendRefs: [{name: web, port: 8082}]}]\n")
    assert entry["route"]["upgrade_configs"] == [{"upgrade_type": "websocket"}]


def test_a_rule_with_one_websocket_backend_among_others_upgrades() -> None:
    (entry,) = _entries("  rules: [{backendRefs: [{name: web, port: 8080}, "
                        "{name: web, port: 8082}]}]\n")
    assert entry["route"]["upgrade_configs"] == [{"upgrade_type": "websocket"}]


def test_other_ports_do_not_upgrade() -> None:
    entries = _entries("  rules:\n"
                       "  - matches: [{path: {type: PathPrefix, value: /plain}}]\n"
                       "    backendRefs: [{name: web, port: 8080}]\n"
                       "  - backendRefs: [{name: web, port: 8081}]\n")
    assert [e["route"].get("upgrade_configs") for e in entries] == [None, None]


def test_an_h2c_port_is_a_cluster_speaking_http2() -> None:
    model = load_policy_text(GATEWAY.replace(PORTS, WS_PORTS) + route(
        "  rules: [{backendRefs: [{name: web, port: 8081}]}]\n"))
    (cluster,) = [c for c in view(model)["clusters"] if c["name"] == "infra/web:8081"]
    options = cluster["typed_extension_protocol_options"]
    (http,) = options.values()
    assert "http2_protocol_options" in http["explicit_http_config"]


NATIVE = """\
kind: Service
name: api
endpoints: ["127.0.0.1:9000"]
---
kind: Gateway
name: edge
listeners: [{name: http, port: 8080}]
---
kind: Route
name: r
gateway: edge
rules:
  - RULE
"""


def test_the_native_equivalent_is_a_rules_websocket_key() -> None:
    model = load_policy_text(NATIVE.replace("RULE", "{match: {path: {prefix: /ws}}, "
                                                    "backends: [api], websocket: true}\n"
                                                    "  - backends: [api]"))
    (ws, plain) = vhosts(model, "edge")["*"]
    assert ws["route"]["upgrade_configs"] == [{"upgrade_type": "websocket"}]
    assert "upgrade_configs" not in plain["route"]


def test_native_websocket_is_for_rules_with_backends() -> None:
    with pytest.raises(PolicyError) as failed:
        load_policy_text(NATIVE.replace("RULE", "{direct_response: {status: 200}, "
                                                "websocket: true}"))
    assert "websocket" in str(failed.value) and "policy.yaml:" in str(failed.value)
