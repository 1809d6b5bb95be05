"""`exportTo`: which namespaces see a ServiceEntry's hosts, a VirtualService's routes or a
DestinationRule (Istio's visibility).

    ["*"]        every namespace (Istio's default, unless MeshConfig's defaultServiceExportTo,
                 defaultVirtualServiceExportTo or defaultDestinationRuleExportTo says otherwise)
    ["."]        the document's own namespace
    ["~"]        none
    [a, b, "."]  those namespaces ("." = the document's own)

A caller is a workload's sidecar (its WorkloadEntry's namespace) or an ingress gateway (the
namespace its Envoys run in, istio-system).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshpilot.inputs.istio.document import Doc

EVERY = "*"
OWN = "."
NONE = "~"
EVERYWHERE = (EVERY,)
# A Kubernetes namespace name (RFC 1123 label), as Istio's validation checks one.
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class Export:
    """Where a document of namespace `namespace` is visible."""

    namespace: str
    to: tuple[str, ...] = EVERYWHERE

    @property
    def everywhere(self) -> bool:
        return EVERY in self.to

    def visible_to(self, namespace: str) -> bool:
        return EVERY in self.to or namespace in self.to \
            or (OWN in self.to and namespace == self.namespace)

    @property
    def private(self) -> bool:
        """Visible in its own namespace only (Istio's isPrivateOnly)."""
        return len(self.to) == 1 and self.to[0] in (OWN, self.namespace)


def checked(value: Any) -> tuple[tuple[str, ...] | None, str | None]:
    """An `exportTo` list as written (None: not written), or what is wrong with it."""
    if value is None:
        return None, None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None, 'a list of namespaces, "." (its own), "*" (every) or "~" (none)'
    for item in value:
        if item not in (EVERY, OWN, NONE) and not _NAMESPACE.fullmatch(item):
            return None, f'{item!r} is not a namespace name, ".", "*" or "~"'
    if len(value) > 1 and (EVERY in value or NONE in value):
        return None, '"*" and "~" stand alone: they cannot be listed with other values'
    if len(set(value)) != len(value):
        return None, "a namespace is listed twice"
    return tuple(value), None


def of(doc: Doc, default: tuple[str, ...] = EVERYWHERE) -> Export:
    """The visibility of `doc`: its spec.exportTo, else the mesh's default for its kind.
    A malformed list is an error at the field (then: the default)."""
    spec = doc.ctx.document.value.get("spec")
    written, problem = checked(spec.get("exportTo") if isinstance(spec, Mapping) else None)
    if problem is not None:
        doc.error(("spec", "exportTo"), problem)
    return Export(doc.item.namespace, written if written is not None else default)
