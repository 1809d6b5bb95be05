"""`kind: EnvoyResources`: hand-written Envoy resources, passed through as they were validated.

The escape hatch: a raw resource goes to every view (or the views it names) and replaces a
generated resource of the same type and name, so a hand-written cluster `reviews` overrides the
generated one while everything else stays generated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from meshpilot.ir.model import Model, RawResource
from meshpilot.translators.reuse import NOTHING, Earlier
from meshpilot.xds.resources import Resource


class RawResources:
    """The model's raw resources, each serialized once (or taken from `earlier`)."""

    def __init__(self, model: Model, earlier: Earlier = NOTHING):
        self.encoded: tuple[tuple[RawResource, Resource], ...] = tuple(
            (r, earlier.raw_resource(r) or Resource.from_message(r.type_url, r.name, r.message))
            for r in model.raw)

    def by_id(self) -> Mapping[int, tuple[RawResource, Resource]]:
        """id(raw resource) -> (it, its Resource): what the next Translation may reuse."""
        return {id(raw): (raw, resource) for raw, resource in self.encoded}

    def for_view(self, view: str) -> list[Resource]:
        return [resource for raw, resource in self.encoded
                if raw.views is None or view in raw.views]

    def overridden(self, view: str) -> set[tuple[str, str]]:
        """(type URL, name) of every generated resource the view's raw resources replace."""
        return {(r.type_url, r.name) for r in self.for_view(view)}

    def over(self, view: str, generated: Iterable[Resource]) -> list[Resource]:
        """The view's raw resources, then the generated ones they do not replace."""
        handwritten = self.for_view(view)
        overridden = {(r.type_url, r.name) for r in handwritten}
        return handwritten + [r for r in generated if (r.type_url, r.name) not in overridden]
