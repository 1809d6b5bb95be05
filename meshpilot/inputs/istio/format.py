"""Istio's APIs as input formats: one `InputFormat` per apiVersion Istio serves
(`networking.istio.io/v1`, with `v1beta1` and `v1alpha3` read the same; `security.istio.io/v1`
and `v1beta1`), documents named by `metadata.name` in `metadata.namespace` (default
`default`). Every parser returns an `IstioDocument` (pending); `compile.py` makes model parts
of all of them together. See docs/istio.md."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from meshpilot.inputs.formats import DocumentParser
from meshpilot.inputs.istio import objects, parse
from meshpilot.inputs.istio.compile import compile_istio
from meshpilot.inputs.yamlsource import FieldPath

objects.IstioDocument.compiler = compile_istio  # type: ignore[misc]

NETWORKING_VERSIONS = ("networking.istio.io/v1", "networking.istio.io/v1beta1",
                       "networking.istio.io/v1alpha3")
SECURITY_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")

NETWORKING_KINDS: Mapping[str, DocumentParser] = MappingProxyType({
    "ServiceEntry": parse.parser("ServiceEntry", parse.read_service_entry),
    "WorkloadEntry": parse.parser("WorkloadEntry", parse.read_workload_entry),
    "VirtualService": parse.parser("VirtualService", parse.read_virtual_service),
    "DestinationRule": parse.parser("DestinationRule", parse.read_destination_rule),
    "Gateway": parse.parser("Gateway", parse.read_gateway),
    "Sidecar": parse.parser("Sidecar", parse.read_sidecar),
})
SECURITY_KINDS: Mapping[str, DocumentParser] = MappingProxyType({
    "PeerAuthentication": parse.parser("PeerAuthentication", parse.read_peer_authentication),
    "AuthorizationPolicy": parse.parser("AuthorizationPolicy",
                                        parse.read_authorization_policy),
    "RequestAuthentication": parse.parser("RequestAuthentication",
                                          parse.read_request_authentication),
})


@dataclass(frozen=True, slots=True)
class IstioFormat:
    """Istio documents of one apiVersion (an `InputFormat`)."""

    api_version: str
    parsers: Mapping[str, DocumentParser]
    name_path: FieldPath = ("metadata", "name")
    # Documents are named `namespace/name` (kubectl's way), unique per kind in the API group
    # (Istio's versions of a kind are one kind), default namespace `default`.
    namespace_path: FieldPath = ("metadata", "namespace")


ISTIO_FORMATS = (*(IstioFormat(v, NETWORKING_KINDS) for v in NETWORKING_VERSIONS),
                 *(IstioFormat(v, SECURITY_KINDS) for v in SECURITY_VERSIONS))
