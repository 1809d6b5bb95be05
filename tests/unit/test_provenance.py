"""Provenance: every resource a view holds leads back to the policy element that built it, by
its name (translators/provenance.py), without the translators keeping anything for it."""

from __future__ import annotations

from pathlib import Path

from meshpilot.base import types
from meshpilot.inputs.loader import load_policy, load_policy_text
from meshpilot.translators import Translation
from meshpilot.translators.provenance import origins_of

GOLDEN = Path(__file__).parents[1] / "golden"

EDGE = """\
kind: Service
name: web
endpoints: [127.0.0.1:9081]
---
kind: Gateway
name: edge
listeners:
  - {name: http, port: 8080}
  - {name: other, port: 8081}
---
kind: Route
name: shop
gateway: edge
listeners: [http]
rules:
  - match: {path: {prefix: /api}}
    backends: [{service: web}]
  - match:
      - {path: {prefix: /a}}
      - {path: {prefix: /b}}
    backends: [{service: web}]
---
kind: EnvoyResources
name: hand
views: [edge]
clusters:
  - name: web
    type: STATIC
    load_assignment: {cluster_name: web, endpoints: []}
"""


def at(needle: str, nth: int = 0) -> int:
    """The line of the `nth` line of EDGE holding `needle`."""
    return [i for i, line in enumerate(EDGE.splitlines(), 1) if needle in line][nth]


def where(origins) -> list[str]:
    return [f"{o.position.line}:{o.kind} {o.name}:{o.field}" for o in origins]


def test_each_kind_of_generated_resource_names_its_element() -> None:
    model = load_policy_text(EDGE.split("---\nkind: EnvoyResources")[0])
    assert where(origins_of(model, "edge", types.CLUSTER, "web"))[0].startswith("1:Service web")
    assert where(origins_of(model, "edge", types.ENDPOINT, "web"))[0].startswith("1:Service web")
    assert where(origins_of(model, "edge", types.LISTENER, "edge/other")) == [
        f"{at('name: other')}:Gateway edge:listeners[1]", f"{at('kind: Gateway')}:Gateway edge:"]
    # A route configuration: the Routes attached to its listener, then the listener.
    assert where(origins_of(model, "edge", types.ROUTE, "edge/http"))[0] == f"{at('kind: Route')}:Route shop:"
    assert where(origins_of(model, "edge", types.ROUTE, "edge/other"))[0] == (
        f"{at('name: other')}:Gateway edge:listeners[1]")
    # Its parts: a route entry is its rule, or the one match of it.
    assert where(origins_of(model, "edge", types.ROUTE, "edge/http", "shop/rules[0]"))[0] == (
        f"{at('prefix: /api')}:Route shop:rules[0]")
    found = where(origins_of(model, "edge", types.ROUTE, "edge/http", "shop/rules[1]/match[1]"))
    assert found[0] == f"{at('prefix: /b')}:Route shop:rules[1].match[1]"
    assert found[1] == f"{at('- match:', 1)}:Route shop:rules[1]"
    assert where(origins_of(model, "edge", types.ROUTE, "edge/http", "shop"))[0] == (
        f"{at('kind: Route')}:Route shop:")
    # Nothing in the policy made it: nothing to point at.
    assert origins_of(model, "edge", types.SECRET, "edge-identity") == ()
    assert origins_of(model, "edge", types.CLUSTER, "nobody") == ()


def test_a_raw_resource_is_its_own_origin_where_it_replaces_a_generated_one() -> None:
    model = load_policy_text(EDGE)
    assert where(origins_of(model, "edge", types.CLUSTER, "web")) == [
        f"{at('- name: web')}:EnvoyResources hand:clusters[0]"]
    # Only in the views it is for.
    assert where(origins_of(model, "other", types.CLUSTER, "web"))[0].startswith("1:Service")


def test_every_resource_of_every_golden_view_leads_back_to_the_policy() -> None:
    missing = []
    for case in sorted(p for p in GOLDEN.iterdir() if (p / "policy.yaml").is_file()):
        model = load_policy(case / "policy.yaml")
        translation = Translation(model)
        views = {g.name for g in model.gateways} | {
            p.stem for p in case.glob("*.yaml") if p.name != "policy.yaml"}
        for view in sorted(views):
            snapshot = translation.snapshot(view)
            for type_url in snapshot.type_urls():
                for name in snapshot.get(type_url):
                    origins = origins_of(model, view, type_url, name)
                    if not origins:
                        missing.append((case.name, view, types.short_name(type_url), name))
                    for origin in origins:
                        assert Path(origin.position.file).name == "policy.yaml"
    assert missing == []
