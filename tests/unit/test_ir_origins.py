"""Every element of the model read from a document carries its origin: the file, line and
column, the document and the field path it was written at, for errors found later."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshpilot.base.errors import Position
from meshpilot.inputs.loader import load_policy, load_policy_text
from meshpilot.ir.model import Backend, Match, Model, Origin, Service

GOLDEN = Path(__file__).parent.parent / "golden"
POLICIES = sorted(path for path in GOLDEN.iterdir() if (path / "policy.yaml").is_file())


def _elements(value: Any) -> Iterator[Any]:
    """Every dataclass instance inside `value`, itself included."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        yield value
        for item in dataclasses.fields(value):
            if item.name != "origin" and not item.name.startswith("_"):
                yield from _elements(getattr(value, item.name))
    elif isinstance(value, tuple | list | frozenset):
        for item in value:
            yield from _elements(item)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda path: path.name)
def test_every_element_that_can_carry_an_origin_has_one(policy: Path) -> None:
    model = load_policy(policy / "policy.yaml")
    missing = [element for element in _elements(model)
               if hasattr(element, "origin") and element.origin is None
               and element != Match()]  # a rule without `match` matches everything: unwritten
    assert missing == []


def test_origins_name_the_document_and_field_path() -> None:
    model = load_policy_text("""\
kind: Service
name: reviews
endpoints: [10.0.0.1:80, {address: 10.0.0.2:80}]
---
kind: Gateway
name: edge
listeners: [{name: http, port: 8080}]
---
kind: Route
name: shop
gateway: edge
rules:
  - match: {path: {prefix: /}}
    backends: [reviews]
""", "routes.yaml")
    route = model.routes[0]
    shown = [str(element.origin.issue("here")) for element in (
        route, route.rules[0], route.rules[0].matches[0], route.rules[0].backends[0],
        *model.services[0].endpoints, model.gateways[0].listeners[0])]
    assert shown == [
        "routes.yaml:9:1: Route shop: here",
        "routes.yaml:13:5: Route shop: rules[0]: here",
        "routes.yaml:13:5: Route shop: rules[0].match: here",
        "routes.yaml:14:16: Route shop: rules[0].backends[0]: here",
        "routes.yaml:3:13: Service reviews: endpoints[0]: here",
        "routes.yaml:3:26: Service reviews: endpoints[1]: here",
        "routes.yaml:7:13: Gateway edge: listeners[0]: here",
    ]


def test_origins_leave_equality_and_hashing_alone() -> None:
    here = Position("routes.yaml", 1, 1)
    somewhere = Origin(here, "Route", "shop", "rules[0].backends[0]")
    assert Backend("reviews", origin=somewhere) == Backend("reviews")
    assert hash(Backend("reviews", origin=somewhere)) == hash(Backend("reviews"))
    assert "origin" not in repr(Backend("reviews", origin=somewhere))
    assert Model(services=(Service("a", here),)) == Model(
        services=(Service("a", here, origin=somewhere),))


def test_security_is_truthy_for_each_of_its_fields_and_only_then() -> None:
    # Security.__bool__ names its fields one by one (it is on every feature's path): a field
    # added to Security must be added there too.
    from dataclasses import fields

    from meshpilot.ir.model import Security

    assert not Security()
    for field in fields(Security):
        assert Security(**{field.name: object()}), field.name
