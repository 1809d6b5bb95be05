"""Translators: the model and a view in, the Envoy resources that view should hold out.

Pure: no I/O, no clocks, deterministic output (the same model gives byte-identical resources, so
versions do not churn). One module per resource family; this module assembles them.
"""

from __future__ import annotations

from meshpilot.policy.model import Model
from meshpilot.translators import raw
from meshpilot.xds.resources import Resource
from meshpilot.xds.snapshot import Snapshot


class Translation:
    """All views of one model. Each resource is serialized once and shared by every view."""

    def __init__(self, model: Model):
        self.model = model
        self._raw = raw.encode(model)

    def snapshot(self, view: str) -> Snapshot:
        resources: list[Resource] = raw.for_view(self._raw, view)
        return Snapshot.from_resources(view, resources)
