"""The Kubernetes kinds this format reads, their schemas, and their one parser.

Gateway API (`gateway.networking.k8s.io`): GatewayClass, Gateway, HTTPRoute, GRPCRoute,
TCPRoute, TLSRoute, UDPRoute, ReferenceGrant, BackendTLSPolicy, ListenerSet (and XListenerSet of
`gateway.networking.x-k8s.io`). Core: Service, Secret,
Namespace, ConfigMap (a GatewayClass's parameters, a BackendTLSPolicy's CA certificates);
`discovery.k8s.io` EndpointSlice. The schemas follow the upstream CRDs and core APIs (the keys,
their types, required members, enums, the patterns of names and hostnames); anything a
well-shaped document means across documents is `compile.py`'s.

Each document becomes one `KubeObject`, a `FormatPart`: the document as written, checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meshpilot.inputs.context import DocumentContext, FormatPart, ModelPart
from meshpilot.inputs.gatewayapi.shape import (
    Anything,
    Bool,
    Enum,
    Int,
    IntOrStr,
    ListOf,
    Obj,
    Spec,
    Str,
    StrMap,
    check_document,
)
from meshpilot.inputs.yamlsource import Located

GATEWAY_GROUP = "gateway.networking.k8s.io"
EXPERIMENTAL_GROUP = "gateway.networking.x-k8s.io"
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, eq=False, slots=True)
class KubeObject(FormatPart):
    """One well-shaped Kubernetes document."""

    api_version: str
    kind: str
    namespace: str
    name: str
    body: dict[str, Any]
    document: Located
    # What the compile step made of this document last time (a Gateway: its model Routes by
    # name), so that an unchanged route keeps its object and the translation reuses what it
    # built from it. A reload that re-parses the document starts afresh.
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def spec(self) -> dict[str, Any]:
        value = self.body.get("spec")
        return value if isinstance(value, dict) else {}

    def labels(self) -> dict[str, str]:
        value = self.body.get("metadata", {}).get("labels")
        return dict(value) if isinstance(value, dict) else {}

    def label(self, key: str) -> str | None:
        """One label's value (None: not set), without copying the labels."""
        value = self.body.get("metadata", {}).get("labels")
        found = value.get(key) if isinstance(value, dict) else None
        return found if isinstance(found, str) else None


# ---- patterns (from the CRDs) ------------------------------------------------------------------

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
SUBDOMAIN = Str(rf"{_LABEL}(\.{_LABEL})*", 253, "a DNS subdomain (lower case)")
NAMESPACE = Str(_LABEL, 63, "a DNS label (lower case)")
HOSTNAME = Str(rf"(\*\.)?{_LABEL}(\.{_LABEL})*", 253,
               "a hostname (lower case, an optional leading *. wildcard, no port or IP)")
SECTION_NAME = Str(rf"{_LABEL}(\.{_LABEL})*", 253, "a section name (a DNS subdomain)")
GROUP = Str(rf"({_LABEL}(\.{_LABEL})*)?", 253, "an API group")
KIND = Str(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?", 63, "a kind")
PORT = Int(1, 65535)
DURATION = Str(r"([0-9]{1,5}(h|m|s|ms)){1,4}", None,
               'a Gateway API duration such as "10s" or "1m30s"')
HEADER_NAME = Str(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+", 256, "an HTTP header name")
PATH_VALUE = Str(None, 1024)
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")

LABEL_SELECTOR = Obj({
    "matchLabels": StrMap(),
    "matchExpressions": ListOf(Obj({
        "key": Str(), "operator": Enum(("In", "NotIn", "Exists", "DoesNotExist")),
        "values": ListOf(Str()),
    }, required=("key", "operator"))),
})

METADATA = Obj({
    "name": SUBDOMAIN, "namespace": NAMESPACE, "labels": StrMap(), "annotations": StrMap(),
    "creationTimestamp": Str(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", None,
                             "an RFC 3339 time such as 2024-01-02T03:04:05Z"),
    "generation": Int(0), "uid": Str(), "resourceVersion": Str(),
}, required=("name",), open_keys=True)


def _document(spec: Spec | None, *, spec_required: bool = True,
              extra: dict[str, Spec] | None = None) -> Obj:
    members: dict[str, Spec] = {"apiVersion": Str(), "kind": Str(), "metadata": METADATA,
                                "status": Anything()}
    if spec is not None:
        members["spec"] = spec
    members.update(extra or {})
    required = ("metadata", "spec") if spec is not None and spec_required else ("metadata",)
    return Obj(members, required=required)


# ---- Gateway API ---------------------------------------------------------------------------------

PARENT_REF = Obj({"group": GROUP, "kind": KIND, "namespace": NAMESPACE, "name": SUBDOMAIN,
                  "sectionName": SECTION_NAME, "port": PORT}, required=("name",))
BACKEND_OBJECT_REF = Obj({"group": GROUP, "kind": KIND, "name": SUBDOMAIN,
                          "namespace": NAMESPACE, "port": PORT}, required=("name",))
SECRET_REF = Obj({"group": GROUP, "kind": KIND, "name": SUBDOMAIN, "namespace": NAMESPACE},
                 required=("name",))

HEADER = Obj({"name": HEADER_NAME, "value": Str(None, 4096)}, required=("name", "value"))
HEADER_FILTER = Obj({"set": ListOf(HEADER, 16), "add": ListOf(HEADER, 16),
                     "remove": ListOf(HEADER_NAME, 16)})
PATH_MODIFIER = Obj({
    "type": Enum(("ReplaceFullPath", "ReplacePrefixMatch")),
    "replaceFullPath": PATH_VALUE, "replacePrefixMatch": PATH_VALUE,
}, required=("type",), requires={"ReplaceFullPath": ("replaceFullPath", "the new path"),
                                 "ReplacePrefixMatch": ("replacePrefixMatch", "the new prefix")})
CORS = Obj({
    "allowOrigins": ListOf(Str(r"\*|(http|https)://(\*|(\*\.)?[A-Za-z0-9.-]+)(:[0-9]{1,5})?|null",
                               253, 'an origin ("https://www.example.com", '
                               '"https://*.example.com" or "*")'), 64),
    "allowMethods": ListOf(Enum((*METHODS, "*")), 10),
    "allowHeaders": ListOf(Str(r"\*|[A-Za-z0-9!#$%&'*+\-.^_`|~]+", 256, "a header name or *"),
                           64),
    "exposeHeaders": ListOf(Str(r"\*|[A-Za-z0-9!#$%&'*+\-.^_`|~]+", 256,
                                "a header name or *"), 64),
    "allowCredentials": Bool(),
    "maxAge": Int(1),
})
FILTER_TYPES = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror",
                "RequestRedirect", "URLRewrite", "ExtensionRef", "CORS", "ExternalAuth")
FILTER_MEMBERS = {"RequestHeaderModifier": "requestHeaderModifier",
                  "ResponseHeaderModifier": "responseHeaderModifier",
                  "RequestMirror": "requestMirror", "RequestRedirect": "requestRedirect",
                  "URLRewrite": "urlRewrite", "ExtensionRef": "extensionRef", "CORS": "cors",
                  "ExternalAuth": "externalAuth"}
HTTP_FILTER = Obj({
    "type": Enum(FILTER_TYPES),
    "requestHeaderModifier": HEADER_FILTER,
    "responseHeaderModifier": HEADER_FILTER,
    "requestMirror": Obj({
        "backendRef": BACKEND_OBJECT_REF, "percent": Int(0, 100),
        "fraction": Obj({"numerator": Int(0), "denominator": Int(1)},
                        required=("numerator",)),
    }, required=("backendRef",), one_of=("percent", "fraction")),
    "requestRedirect": Obj({
        "scheme": Enum(("http", "https")), "hostname": HOSTNAME, "path": PATH_MODIFIER,
        "port": PORT, "statusCode": Int(301, 308),
    }),
    "urlRewrite": Obj({"hostname": HOSTNAME, "path": PATH_MODIFIER}),
    "extensionRef": Anything(), "cors": CORS, "externalAuth": Anything(),
}, required=("type",), requires={kind: (member, f"the {kind} settings")
                                 for kind, member in FILTER_MEMBERS.items()})
MATCH_VALUE = Obj({"type": Enum(("Exact", "RegularExpression")), "name": HEADER_NAME,
                   "value": Str(None, 4096)}, required=("name", "value"))
HTTP_MATCH = Obj({
    "path": Obj({"type": Enum(("Exact", "PathPrefix", "RegularExpression")),
                 "value": PATH_VALUE}),
    "headers": ListOf(MATCH_VALUE, 16),
    "queryParams": ListOf(MATCH_VALUE, 16),
    "method": Enum(METHODS),
})
HTTP_BACKEND_REF = Obj({
    "group": GROUP, "kind": KIND, "name": SUBDOMAIN, "namespace": NAMESPACE, "port": PORT,
    "weight": Int(0, 1_000_000), "filters": ListOf(HTTP_FILTER, 16),
}, required=("name",))
# GEP-1619. Both the current shape (`cookie`/`header` with their names) and the earlier
# experimental one (`sessionName`, `idleTimeout`, `cookieConfig`) are read.
COOKIE_NAME = Str(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+", 4096, "a cookie name (an RFC 6265 token)")
SESSION_PERSISTENCE = Obj({
    "type": Enum(("Cookie", "Header")),
    "absoluteTimeout": DURATION,
    "cookie": Obj({"name": COOKIE_NAME, "path": Str(None, 1024),
                   "lifetimeType": Enum(("Permanent", "Session"))}),
    "header": Obj({"name": HEADER_NAME}, required=("name",)),
    "sessionName": Str(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+", 128,
                       "a cookie or header name (an RFC 6265 token)"),
    "idleTimeout": DURATION,
    "cookieConfig": Obj({"lifetimeType": Enum(("Permanent", "Session"))}),
})
HTTP_RULE = Obj({
    "name": SECTION_NAME,
    "matches": ListOf(HTTP_MATCH, 64),
    "filters": ListOf(HTTP_FILTER, 16),
    "backendRefs": ListOf(HTTP_BACKEND_REF, 16),
    "timeouts": Obj({"request": DURATION, "backendRequest": DURATION}),
    "retry": Obj({"codes": ListOf(Int(400, 599), 32), "attempts": Int(0),
                  "backoff": DURATION}),
    "sessionPersistence": SESSION_PERSISTENCE,
})
HTTP_ROUTE = _document(Obj({
    "parentRefs": ListOf(PARENT_REF, 32),
    "hostnames": ListOf(HOSTNAME, 16),
    "rules": ListOf(HTTP_RULE, 16),
}))
GRPC_FILTER_TYPES = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror",
                     "ExtensionRef")
GRPC_FILTER = Obj({
    "type": Enum(GRPC_FILTER_TYPES),
    **{FILTER_MEMBERS[kind]: HTTP_FILTER.fields[FILTER_MEMBERS[kind]]
       for kind in GRPC_FILTER_TYPES},
}, required=("type",), requires={kind: (FILTER_MEMBERS[kind], f"the {kind} settings")
                                 for kind in GRPC_FILTER_TYPES})
GRPC_MATCH = Obj({
    "method": Obj({"type": Enum(("Exact", "RegularExpression")), "service": Str(None, 1024),
                   "method": Str(None, 1024)}),
    "headers": ListOf(MATCH_VALUE, 16),
})
GRPC_BACKEND_REF = Obj({
    "group": GROUP, "kind": KIND, "name": SUBDOMAIN, "namespace": NAMESPACE, "port": PORT,
    "weight": Int(0, 1_000_000), "filters": ListOf(GRPC_FILTER, 16),
}, required=("name",))
GRPC_RULE = Obj({
    "name": SECTION_NAME,
    "matches": ListOf(GRPC_MATCH, 64),
    "filters": ListOf(GRPC_FILTER, 16),
    "backendRefs": ListOf(GRPC_BACKEND_REF, 16),
    "sessionPersistence": SESSION_PERSISTENCE,
})
GRPC_ROUTE = _document(Obj({
    "parentRefs": ListOf(PARENT_REF, 32),
    "hostnames": ListOf(HOSTNAME, 16),
    "rules": ListOf(GRPC_RULE, 16),
}))
TCP_ROUTE = _document(Obj({
    "parentRefs": ListOf(PARENT_REF, 32),
    "rules": ListOf(Obj({
        "name": SECTION_NAME,
        "backendRefs": ListOf(Obj({
            "group": GROUP, "kind": KIND, "name": SUBDOMAIN, "namespace": NAMESPACE,
            "port": PORT, "weight": Int(0, 1_000_000)}, required=("name",)), 16),
    }, required=("backendRefs",)), 16),
}, required=("rules",)))
UDP_ROUTE = TCP_ROUTE  # the same members (v1alpha2)
TLS_ROUTE = _document(Obj({
    "parentRefs": ListOf(PARENT_REF, 32),
    "hostnames": ListOf(HOSTNAME, 1024),
    "rules": ListOf(Obj({
        "name": SECTION_NAME,
        "backendRefs": ListOf(Obj({
            "group": GROUP, "kind": KIND, "name": SUBDOMAIN, "namespace": NAMESPACE,
            "port": PORT, "weight": Int(0, 1_000_000)}, required=("name",)), 16),
    }, required=("backendRefs",)), 16),
}, required=("rules",)))
BACKEND_TLS_POLICY = _document(Obj({
    "targetRefs": ListOf(Obj({"group": GROUP, "kind": KIND, "name": SUBDOMAIN,
                              "sectionName": SECTION_NAME},
                             required=("group", "kind", "name")), 16),
    "validation": Obj({
        "caCertificateRefs": ListOf(Obj({"group": GROUP, "kind": KIND, "name": SUBDOMAIN},
                                        required=("group", "kind", "name")), 8),
        "wellKnownCACertificates": Enum(("System",)),
        "hostname": Str(rf"{_LABEL}(\.{_LABEL})*", 253,
                        "a hostname (lower case, no wildcard, no port or IP)"),
        "subjectAltNames": ListOf(Obj({
            "type": Enum(("Hostname", "URI")), "hostname": HOSTNAME,
            "uri": Str(r"[A-Za-z][A-Za-z0-9+.-]*:\S+", 253, "an absolute URI"),
        }, required=("type",), requires={"Hostname": ("hostname", "the hostname"),
                                         "URI": ("uri", "the URI")}), 5),
    }, required=("hostname",), one_of=("caCertificateRefs", "wellKnownCACertificates")),
    "options": StrMap(),
}, required=("targetRefs", "validation")))

# Gateway spec.tls.frontend (GEP-91, v1.4): the CA certificates client certificates must chain to,
# for every HTTPS/TLS-terminating port (`default`) or per port (`perPort`, whole overrides).
_FRONTEND_VALIDATION = Obj({
    "caCertificateRefs": ListOf(Obj({"group": GROUP, "kind": KIND, "name": SUBDOMAIN,
                                     "namespace": SUBDOMAIN},
                                    required=("group", "kind", "name")), 8),
    "mode": Enum(("AllowValidOnly", "AllowInsecureFallback")),
}, required=("caCertificateRefs",))
_FRONTEND_CONFIG = Obj({"validation": _FRONTEND_VALIDATION})
GATEWAY_TLS = Obj({
    "frontend": Obj({
        "default": _FRONTEND_CONFIG,
        "perPort": ListOf(Obj({"port": PORT, "tls": _FRONTEND_CONFIG},
                              required=("port", "tls")), 64),
    }),
    "backend": Obj({"clientCertificateRef": SECRET_REF}),  # what Envoy shows TLS backends
})
LISTENER = Obj({
    "name": SECTION_NAME, "hostname": HOSTNAME, "port": PORT, "protocol": Str(
        r"HTTP|HTTPS|TLS|TCP|UDP|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/"
        r"[A-Za-z0-9]+", 255, "a protocol (HTTP, HTTPS, TLS, TCP, UDP or domain/name)"),
    "tls": Obj({"mode": Enum(("Terminate", "Passthrough")),
                "certificateRefs": ListOf(SECRET_REF, 64),
                "options": StrMap(), "frontendValidation": Anything()}),
    "allowedRoutes": Obj({
        "namespaces": Obj({"from": Enum(("All", "Same", "Selector", "None")),
                           "selector": LABEL_SELECTOR}),
        "kinds": ListOf(Obj({"group": GROUP, "kind": KIND}, required=("kind",)), 8),
    }),
}, required=("name", "port", "protocol"))
GATEWAY = _document(Obj({
    "gatewayClassName": SUBDOMAIN,
    "listeners": ListOf(LISTENER, 64),
    "addresses": Anything(), "backendTLS": Anything(),
    "infrastructure": Obj({"labels": StrMap(), "annotations": StrMap(), "parametersRef": Obj(
        {"group": GROUP, "kind": KIND, "name": Str(None, 253)},
        required=("group", "kind", "name"))}),
    "allowedListeners": Obj({"namespaces": Obj({
        "from": Enum(("All", "Same", "Selector", "None")), "selector": LABEL_SELECTOR})}),
    "tls": GATEWAY_TLS,
}, required=("gatewayClassName", "listeners")))
# ListenerSet (v1; XListenerSet of gateway.networking.x-k8s.io/v1alpha1 before it): listeners
# of a Gateway written apart from it (`listenersets.py`).
LISTENER_SET = _document(Obj({
    "parentRef": Obj({"group": GROUP, "kind": KIND, "name": SUBDOMAIN, "namespace": NAMESPACE},
                     required=("name",)),
    "listeners": ListOf(LISTENER, 64),
}, required=("parentRef", "listeners")))
GATEWAY_CLASS = _document(Obj({
    "controllerName": Str(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
                          r"/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+", 253,
                          "a controller name (domain/path)"),
    "parametersRef": Obj({"group": GROUP, "kind": KIND, "name": Str(None, 253),
                          "namespace": NAMESPACE}, required=("group", "kind", "name")),
    "description": Str(None, 64),
}, required=("controllerName",)))
REFERENCE_GRANT = _document(Obj({
    "from": ListOf(Obj({"group": GROUP, "kind": KIND, "namespace": NAMESPACE},
                       required=("group", "kind", "namespace")), 16),
    "to": ListOf(Obj({"group": GROUP, "kind": KIND, "name": SUBDOMAIN},
                     required=("group", "kind")), 16),
}, required=("from", "to")))

# ---- core and discovery --------------------------------------------------------------------------

SERVICE = _document(Obj({
    "type": Enum(("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")),
    "selector": StrMap(),
    "ports": ListOf(Obj({"name": Str(), "protocol": Enum(("TCP", "UDP", "SCTP")),
                         "appProtocol": Str(), "port": PORT, "targetPort": IntOrStr(),
                         "nodePort": PORT}, required=("port",))),
    "externalName": Str(), "clusterIP": Str(), "clusterIPs": ListOf(Str()),
}, open_keys=True), spec_required=False)
SECRET = _document(None, extra={"type": Str(), "data": StrMap(), "stringData": StrMap(),
                                "immutable": Bool()})
NAMESPACE_DOC = _document(Anything(), spec_required=False)
CONFIG_MAP = _document(None, extra={"data": StrMap(), "binaryData": StrMap(),
                                    "immutable": Bool()})
ENDPOINT_SLICE = _document(None, extra={
    "addressType": Enum(("IPv4", "IPv6", "FQDN")),
    "endpoints": ListOf(Obj({
        "addresses": ListOf(Str()),
        "conditions": Obj({"ready": Bool(), "serving": Bool(), "terminating": Bool()}),
        "hostname": Str(), "nodeName": Str(), "zone": Str(), "targetRef": Anything(),
        "hints": Anything(), "deprecatedTopology": Anything(),
    }, required=("addresses",))),
    "ports": ListOf(Obj({"name": Str(), "port": PORT, "protocol": Str(), "appProtocol": Str()})),
})

SCHEMAS: dict[str, Obj] = {
    "GatewayClass": GATEWAY_CLASS, "Gateway": GATEWAY, "HTTPRoute": HTTP_ROUTE,
    "GRPCRoute": GRPC_ROUTE, "TCPRoute": TCP_ROUTE, "TLSRoute": TLS_ROUTE,
    "BackendTLSPolicy": BACKEND_TLS_POLICY,
    "ReferenceGrant": REFERENCE_GRANT, "Service": SERVICE, "Secret": SECRET,
    "Namespace": NAMESPACE_DOC, "ConfigMap": CONFIG_MAP, "EndpointSlice": ENDPOINT_SLICE,
    "UDPRoute": UDP_ROUTE, "ListenerSet": LISTENER_SET, "XListenerSet": LISTENER_SET,
}


def _check_listener_entries(ctx: DocumentContext, listeners: list[dict[str, Any]]) -> None:
    """The CRD's rules on a ListenerSet's listeners: at least one, each name once."""
    if not listeners:
        ctx.report(("spec", "listeners"), "needs at least one listener", at_value=True)
    seen: dict[str, int] = {}
    for index, item in enumerate(listeners):
        first = seen.setdefault(item["name"], index)
        if first != index:
            ctx.report(("spec", "listeners", index, "name"),
                       f'listener name "{item["name"]}" is used twice (first at '
                       f"spec.listeners[{first}])", at_value=True)


def parser_of(kind: str):  # type: ignore[no-untyped-def]
    """The parser of one kind: check the document's shape, give one `KubeObject`."""
    schema = SCHEMAS[kind]

    def parse(document: Located, ctx: DocumentContext) -> Iterable[ModelPart]:
        mark = len(ctx.load.issues)
        check_document(ctx, document.value, schema)
        if schema is LISTENER_SET and len(ctx.load.issues) == mark:
            _check_listener_entries(ctx, document.value["spec"]["listeners"])
        if len(ctx.load.issues) > mark or ctx.name is None:
            return ()
        body = document.value
        namespace, _, name = ctx.name.partition("/")
        if kind == "Namespace":  # cluster-scoped: its name is its namespace
            namespace = name = body["metadata"]["name"]
        return (KubeObject(body["apiVersion"], kind, namespace, name, body, document),)

    parse.__name__ = f"parse_{kind}"
    return parse
