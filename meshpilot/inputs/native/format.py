"""meshpilot's own policy language as an input format: documents without an `apiVersion`,
named by their top-level `name`, of the kinds Service, Gateway, Route, EnvoyResources,
Rollout and MeshPolicy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from meshpilot.inputs.formats import DocumentParser
from meshpilot.inputs.native import (
    envoy_resources,
    gateway,
    meshpolicy,
    rollout,
    route,
    service,
)
from meshpilot.inputs.yamlsource import FieldPath


@dataclass(frozen=True, slots=True)
class NativeFormat:
    """The native kinds (an `InputFormat`)."""

    api_version: str | None = None
    name_path: FieldPath = ("name",)
    # Service, Gateway and Route parsers return nothing for a document with any issue, so the
    # checks across documents (references.py) never echo a document's own error.
    parsers: Mapping[str, DocumentParser] = field(default_factory=lambda: MappingProxyType({
        envoy_resources.KIND: envoy_resources.parse_envoy_resources,
        service.KIND: service.parse_service,
        gateway.KIND: gateway.parse_gateway,
        route.KIND: route.parse_route,
        rollout.KIND: rollout.parse_rollout,
        meshpolicy.KIND: meshpolicy.parse_mesh_policy,
    }))


NATIVE = NativeFormat()
