"""HTTPS listeners sharing a port: a filter chain and a route table per listener, picked by SNI,
and 421 Misdirected Request for a Host another listener owns (GEP-3567). Traffic through a real
Envoy: tests/e2e/test_gatewayapi_https_traffic.py and the conformance test
HTTPRouteHTTPSListenerDetectMisdirectedRequests."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from test_gatewayapi import CLASS, view
from test_incremental import _assert_same
from tls_material import CA

from meshpilot.base import types
from meshpilot.inputs.loader import PolicyLoader, load_policy, load_policy_text
from meshpilot.ir.model import Model
from meshpilot.translators import Translation
from meshpilot.translators.provenance import origins_of

PAIR = CA().issue("*.example.com", "example.com")
SECRET = f"""apiVersion: v1
kind: Secret
metadata: {{name: cert, namespace: infra}}
type: kubernetes.io/tls
data:
  tls.crt: {base64.b64encode(PAIR.cert_pem).decode()}
  tls.key: {base64.b64encode(PAIR.key_pem).decode()}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: infra}}
spec: {{ports: [{{port: 8080}}]}}
---
"""
TLS = "tls: {certificateRefs: [{name: cert}]}"


def gateway(*listeners: str) -> str:
    body = "\n".join(f"  - {{{item}, port: 443, protocol: HTTPS, {TLS}}}" for item in listeners)
    return CLASS + SECRET + f"""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: mp
  listeners:
{body}
---
"""


def route(name: str, section: str, hostnames: str = "[]") -> str:
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: infra}}
spec:
  parentRefs: [{{name: edge, sectionName: {section}}}]
  hostnames: {hostnames}
  rules: [{{backendRefs: [{{name: web, port: 8080}}]}}]
---
"""


THREE = gateway("name: any", "name: exact, hostname: a.example.com",
                "name: wild, hostname: '*.example.com'")


def tables(model: Model) -> dict[str, dict[str, Any]]:
    """Each route configuration by name: {domain: what its virtual host answers}."""
    found: dict[str, dict[str, Any]] = {}
    for config in view(model)["routes"]:
        hosts: dict[str, Any] = {}
        for vhost in config.get("virtual_hosts", []):
            entries = vhost.get("routes", [])
            answer: Any = "404" if not entries else (
                entries[0]["direct_response"]["status"] if "direct_response" in entries[0]
                else entries[0]["route"]["cluster"])
            hosts.update(dict.fromkeys(vhost["domains"], answer))
        found[config["name"]] = hosts
    return found


def test_each_listener_is_a_filter_chain_of_its_sni_with_its_own_table() -> None:
    model = load_policy_text(THREE + route("r-any", "any", "[example.com]")
                             + route("r-exact", "exact") + route("r-wild", "wild"))
    (listener,) = [lst for lst in view(model)["listeners"] if lst["name"] == "infra/edge/443"]
    assert listener["listener_filters"][0]["name"] == "envoy.filters.listener.tls_inspector"
    chains = {c["name"]: c for c in listener["filter_chains"]}
    assert {name: c.get("filter_chain_match", {}).get("server_names", [])
            for name, c in chains.items()} == {
        "infra/edge/443/any": [], "infra/edge/443/exact": ["a.example.com"],
        "infra/edge/443/wild": ["*.example.com"]}
    for name, chain in chains.items():
        manager = chain["filters"][0]["typed_config"]
        assert manager["rds"]["route_config_name"] == name
        assert "transport_socket" in chain  # each chain terminates TLS itself
    web = "infra/web:8080"
    assert tables(model) == {
        # Another listener's hostname is misdirected; a name no listener has is not found.
        "infra/edge/443/any": {"example.com": web, "a.example.com": 421, "*.example.com": 421},
        "infra/edge/443/exact": {"a.example.com": web, "*": 421, "*.example.com": 421},
        "infra/edge/443/wild": {"*.example.com": web, "*": 421, "a.example.com": 421},
    }


def test_a_listener_without_routes_for_its_own_hostname_answers_404_not_421() -> None:
    """The listener's hostname is a virtual host of its own (404), lest the less specific 421
    of another listener ("*") take the requests that belong to it."""
    model = load_policy_text(THREE + route("r-wild", "wild", "[b.example.com]"))
    wild = tables(model)["infra/edge/443/wild"]
    assert wild == {"b.example.com": "infra/web:8080", "*.example.com": "404", "*": 421,
                    "a.example.com": 421}


def test_without_a_listener_taking_every_sni_the_rest_is_a_table_of_421s() -> None:
    model = load_policy_text(gateway("name: a, hostname: a.example.com",
                                     "name: b, hostname: b.example.com")
                             + route("r-a", "a") + route("r-b", "b"))
    (listener,) = [lst for lst in view(model)["listeners"] if lst["name"] == "infra/edge/443"]
    assert [c.get("filter_chain_match", {}).get("server_names", [])
            for c in listener["filter_chains"]] == [["a.example.com"], ["b.example.com"], []]
    assert tables(model)["infra/edge/443/*"] == {"a.example.com": 421, "b.example.com": 421}


def test_a_wildcard_another_listener_covers_more_specifically_is_not_served_here() -> None:
    """Listener isolation for wildcards: `*.x.example.com` on the listener without a hostname
    belongs to the `*.example.com` listener, which would answer it 421 on that connection."""
    model = load_policy_text(THREE + route("r-any", "any", "['*.x.example.com', example.com]"))
    assert "*.x.example.com" not in tables(model)["infra/edge/443/any"]


def test_one_https_listener_on_a_port_keeps_one_chain() -> None:
    model = load_policy_text(gateway("name: only, hostname: a.example.com")
                             + route("r", "only"))
    (listener,) = [lst for lst in view(model)["listeners"] if lst["name"] == "infra/edge/443"]
    assert len(listener["filter_chains"]) == 1
    assert "filter_chain_match" not in listener["filter_chains"][0]
    assert list(tables(model)) == ["infra/edge/443"]


def test_a_tls_host_table_is_traced_to_its_routes_and_listener() -> None:
    """When Envoy refuses a TLS host's route table, the positions said are its own listener's
    (its 421) and the Gateway's, not the other tables' listeners'."""
    model = load_policy_text(THREE + route("r-any", "any", "[example.com]")
                             + route("r-exact", "exact"))
    origins = origins_of(model, "infra/edge", types.ROUTE, "infra/edge/443/exact")
    fields = {o.field for o in origins}
    assert "spec.listeners[1]" in fields  # the listener `exact`
    assert "spec.listeners[2]" not in fields  # `wild`'s table is another
    assert {o.name for o in origins} == {"infra/edge"}


def test_an_edit_patches_the_view_as_a_cold_load_builds_it(tmp_path: Path) -> None:
    """A route edited, added and removed on a port with TLS hosts: the incremental load and
    the translation told what changed give the cold one's snapshot, byte for byte."""
    (tmp_path / "gateway.yaml").write_text(THREE)
    (tmp_path / "a.yaml").write_text(route("r-exact", "exact"))
    loader = PolicyLoader(tmp_path)
    model = loader.load()
    translation = Translation(model)
    snapshot = translation.snapshot("infra/edge")
    for text in (route("r-exact", "exact", "[a.example.com]") + route("r-wild", "wild"),
                 route("r-wild", "wild", "[b.example.com]"), ""):
        (tmp_path / "a.yaml").write_text(text)
        model = loader.load()
        translation = Translation(model, previous=translation, changes=loader.changes)
        snapshot = translation.snapshot("infra/edge", previous=snapshot)
        _assert_same(snapshot, Translation(load_policy(tmp_path)).snapshot("infra/edge"))
