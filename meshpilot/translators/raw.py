"""`kind: EnvoyResources`: hand-written Envoy resources, passed through as they were validated."""

from __future__ import annotations

from meshpilot.ir.model import Model, RawResource
from meshpilot.xds.resources import Resource


def encode(model: Model) -> list[tuple[RawResource, Resource]]:
    return [(r, Resource.from_message(r.type_url, r.name, r.message)) for r in model.raw]


def for_view(encoded: list[tuple[RawResource, Resource]], view: str) -> list[Resource]:
    return [resource for raw, resource in encoded if raw.views is None or view in raw.views]
