"""GEP-957 (HTTPRouteDestinationPortMatching): a parentRef's `port` attaches the route to every
listener of the Gateway on that port that accepts it, and to no other; with `sectionName` too,
the listener must have both. Traffic: tests/e2e/test_gatewayapi_conformance.py
(HTTPRouteListenerPortMatching, HTTPRouteInvalidParentRefNotMatchingListenerPort)."""

from __future__ import annotations

from test_gatewayapi import CLASS, status_of

from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import Model

GATEWAY = CLASS + """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: mp
  listeners:
  - {name: foo, port: 8000, protocol: HTTP, hostname: foo.example.com}
  - {name: bar, port: 8000, protocol: HTTP, hostname: bar.example.com}
  - {name: baz, port: 8080, protocol: HTTP, hostname: foo.example.com}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: infra}
spec: {ports: [{port: 8080}]}
---
"""


def _load(parent: str) -> Model:
    return load_policy_text(GATEWAY + f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: infra}}
spec:
  parentRefs: [{parent}]
  rules: [{{backendRefs: [{{name: web, port: 8080}}]}}]
""")


def _served_on(model: Model) -> list[str]:
    """The listener ports and hostnames that serve the route (its virtual hosts' names)."""
    return sorted(r.name for r in model.routes if r.rules)


def _attached(model: Model) -> dict[str, str]:
    return {s.name.rpartition("/")[2]: dict(s.details).get("attachedRoutes", "")
            for s in model.statuses if s.kind == "Listener"}


def test_a_port_attaches_to_every_listener_on_it_and_no_other() -> None:
    model = _load("{name: edge, port: 8000}")
    assert status_of(model, "HTTPRoute", "infra/r")["Accepted"] == ("True", "Accepted")
    assert _served_on(model) == ["infra/edge/8000/bar.example.com",
                                 "infra/edge/8000/foo.example.com"]
    assert _attached(model) == {"foo": "1", "bar": "1", "baz": "0"}


def test_a_port_with_a_section_name_needs_both_on_one_listener() -> None:
    model = _load("{name: edge, port: 8080, sectionName: baz}")
    assert _served_on(model) == ["infra/edge/8080/foo.example.com"]
    refused = _load("{name: edge, port: 8000, sectionName: baz}")
    assert status_of(refused, "HTTPRoute", "infra/r")["Accepted"] == \
        ("False", "NoMatchingParent")
    assert _served_on(refused) == []


def test_a_port_no_listener_has_is_no_matching_parent() -> None:
    model = _load("{name: edge, port: 9999}")
    assert status_of(model, "HTTPRoute", "infra/r")["Accepted"] == ("False", "NoMatchingParent")
    assert _attached(model) == {"foo": "0", "bar": "0", "baz": "0"}
