"""Gateway API as input formats: one `InputFormat` per apiVersion it reads, one compile step.

    gateway.networking.k8s.io/v1        GatewayClass, Gateway, HTTPRoute, GRPCRoute, ReferenceGrant,
                                        TLSRoute, TCPRoute, UDPRoute, BackendTLSPolicy,
                                        ListenerSet
    gateway.networking.x-k8s.io/v1alpha1  XListenerSet (read as ListenerSet)
    gateway.networking.k8s.io/v1beta1   the same (v1beta1 is still served upstream)
    gateway.networking.k8s.io/v1alpha2  TLSRoute, TCPRoute, UDPRoute, GRPCRoute, ReferenceGrant
    gateway.networking.k8s.io/v1alpha3  TLSRoute, BackendTLSPolicy
    v1                                  Service, Secret, Namespace, ConfigMap
    discovery.k8s.io/v1                 EndpointSlice

Documents are named by `metadata.name` in `metadata.namespace` ("default" when left out), so a
document's name is "namespace/name" in issues and status. The kinds' parsers only check shape
(`kinds.py`); `compile.compile_gateway_api` turns all of them together into the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from meshpilot.inputs.formats import DocumentParser, FormatCompiler, FormatEditCompiler
from meshpilot.inputs.gatewayapi import kinds
from meshpilot.inputs.gatewayapi.compile import compile_gateway_api, compile_gateway_api_edit
from meshpilot.inputs.yamlsource import FieldPath


@dataclass(frozen=True, slots=True)
class KubernetesFormat:
    """Documents of one Kubernetes apiVersion (an `InputFormat` with a namespace and a
    compile step)."""

    api_version: str
    parsers: Mapping[str, DocumentParser]
    name_path: FieldPath = ("metadata", "name")
    namespace_path: FieldPath = ("metadata", "namespace")
    compile: FormatCompiler = compile_gateway_api
    compile_edit: FormatEditCompiler = compile_gateway_api_edit


def _format(api_version: str, *kind_names: str) -> KubernetesFormat:
    return KubernetesFormat(api_version, MappingProxyType(
        {kind: kinds.parser_of(kind) for kind in kind_names}))


_GATEWAY_KINDS = ("GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute", "ReferenceGrant")
# TCPRoute and UDPRoute are served as v1 upstream too (standard channel since v1.6).
GATEWAY_V1 = _format(f"{kinds.GATEWAY_GROUP}/v1", *_GATEWAY_KINDS, "TLSRoute", "TCPRoute",
                     "UDPRoute", "BackendTLSPolicy", "ListenerSet")
GATEWAY_V1BETA1 = _format(f"{kinds.GATEWAY_GROUP}/v1beta1", *_GATEWAY_KINDS)
GATEWAY_V1ALPHA2 = _format(f"{kinds.GATEWAY_GROUP}/v1alpha2", "TLSRoute", "TCPRoute", "UDPRoute",
                           "GRPCRoute", "ReferenceGrant")
GATEWAY_V1ALPHA3 = _format(f"{kinds.GATEWAY_GROUP}/v1alpha3", "TLSRoute", "BackendTLSPolicy")
X_V1ALPHA1 = _format(f"{kinds.EXPERIMENTAL_GROUP}/v1alpha1", "XListenerSet")
CORE_V1 = _format("v1", "Service", "Secret", "Namespace", "ConfigMap")
DISCOVERY_V1 = _format("discovery.k8s.io/v1", "EndpointSlice")

FORMATS = (GATEWAY_V1, GATEWAY_V1BETA1, GATEWAY_V1ALPHA2, GATEWAY_V1ALPHA3, X_V1ALPHA1, CORE_V1,
           DISCOVERY_V1)
