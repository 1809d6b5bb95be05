"""MeshConfig, where Istio users keep it: the `istio` ConfigMap of namespace `istio-system`,
its `data.mesh` a MeshConfig in YAML (what istiod reads, mounted at /etc/istio/config/mesh;
`istioctl install --set meshConfig...` and Helm's `meshConfig` values write that ConfigMap).

Of MeshConfig, meshpilot applies `extensionProviders` of the two external authorization
kinds, `envoyExtAuthzHttp` and `envoyExtAuthzGrpc`, which AuthorizationPolicies with action
CUSTOM name (`provider.name`), `defaultConfig.gatewayTopology.numTrustedProxies` (the
gateways' X-Forwarded-For trust, which a Gateway's `proxy.istio.io/config` annotation may
override) and `outboundTrafficPolicy.mode` (what a sidecar without a Sidecar resource's own
does with a host the mesh does not know). Every other field, and providers of other kinds, are
warnings (not applied), never silently dropped; a CUSTOM policy naming one of those is an
error.

The embedded YAML is read with positions: an issue in it is reported at its own line in the
ConfigMap's file (columns as written with the usual two-space indentation of a block scalar),
with the field path under `data.mesh`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from envoy.type.v3.http_status_pb2 import StatusCode

from meshpilot.base.errors import PolicyIssue, Position
from meshpilot.inputs.context import DocumentContext, LoadContext, ParsedDocument
from meshpilot.inputs.gatewayapi.kinds import KubeObject
from meshpilot.inputs.istio import exports
from meshpilot.inputs.native import fields
from meshpilot.inputs.native.fields import Fields, Invalid
from meshpilot.inputs.yamlsource import FieldPath, Located, format_path, parse_yaml_text
from meshpilot.ir.model import ExtAuthzBody, StringMatch, UnknownHosts

CONFIG_MAP = ("istio-system", "istio")  # (namespace, name): istiod's default revision's
MESH = ("data", "mesh")
DEFAULT_TIMEOUT = 600.0  # Istio's: 10 minutes

_HTTP_KEYS = ("service", "port", "timeout", "pathPrefix", "failOpen", "statusOnError",
              "includeHeadersInCheck", "includeRequestHeadersInCheck",
              "includeAdditionalHeadersInCheck", "includeRequestBodyInCheck",
              "headersToUpstreamOnAllow", "headersToDownstreamOnDeny",
              "headersToDownstreamOnAllow")
_GRPC_KEYS = ("service", "port", "timeout", "failOpen", "statusOnError",
              "includeRequestBodyInCheck")
_KINDS = {"envoyExtAuthzHttp": "http", "envoyExtAuthzGrpc": "grpc"}
_STATUSES = frozenset(StatusCode.values()) - {0}


@dataclass(frozen=True, slots=True)
class ExtAuthzProvider:
    """One `extensionProviders` entry of an ext_authz kind, as written (its service still a
    hostname: compile.py finds the ServiceEntry)."""

    name: str
    protocol: Literal["http", "grpc"]
    host: str
    namespace: str | None  # `service: ns/host`
    port: int
    timeout: float = DEFAULT_TIMEOUT
    path_prefix: str = ""
    fail_open: bool = False
    status_on_error: int | None = None
    send_headers: tuple[StringMatch, ...] = ()
    add_headers: tuple[tuple[str, str], ...] = ()
    request_body: ExtAuthzBody | None = None
    upstream_headers: tuple[StringMatch, ...] = ()
    client_headers: tuple[StringMatch, ...] = ()
    client_headers_on_success: tuple[StringMatch, ...] = ()
    path: FieldPath = ()


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Of a ProxyConfig (MeshConfig's `defaultConfig`, a gateway's `proxy.istio.io/config`
    annotation): `gatewayTopology.numTrustedProxies`, how many proxies in front of a gateway
    write X-Forwarded-For (None: not said), and the fields not applied (dotted names)."""

    trusted_proxies: int | None = None
    ignored: tuple[str, ...] = ()


def proxy_config(value: Any) -> ProxyConfig:
    """A ProxyConfig mapping read (Invalid when it or numTrustedProxies is malformed)."""
    if not isinstance(value, dict):
        raise Invalid(f"expected a ProxyConfig mapping such as {{gatewayTopology: "
                      f"{{numTrustedProxies: 1}}}}, found {fields.describe(value)}")
    ignored = [str(k) for k in value if k != "gatewayTopology"]
    topology = value.get("gatewayTopology")
    if topology is None:
        return ProxyConfig(None, tuple(ignored))
    if not isinstance(topology, dict):
        raise Invalid(f"gatewayTopology: expected a mapping such as {{numTrustedProxies: 1}}, "
                      f"found {fields.describe(topology)}")
    ignored += [f"gatewayTopology.{k}" for k in topology if k != "numTrustedProxies"]
    count = topology.get("numTrustedProxies")
    if count is not None:
        try:
            count = fields.integer(0, 2**32 - 1)(count)
        except Invalid as e:
            raise Invalid(f"gatewayTopology.numTrustedProxies: {e}") from None
    return ProxyConfig(count, tuple(ignored))


# MeshConfig's default exportTo of each kind (Istio's defaultServiceExportTo, ...)
EXPORT_DEFAULTS = {"defaultServiceExportTo": "ServiceEntry",
                   "defaultVirtualServiceExportTo": "VirtualService",
                   "defaultDestinationRuleExportTo": "DestinationRule"}


@dataclass(slots=True)
class MeshConfig:
    """What the ConfigMap says, and where, to report about it."""

    providers: dict[str, ExtAuthzProvider] = field(default_factory=dict)
    other_providers: dict[str, str] = field(default_factory=dict)  # name -> its kind
    # defaultConfig.gatewayTopology.numTrustedProxies: every gateway's, unless its own
    # proxy.istio.io/config annotation says otherwise
    trusted_proxies: int | None = None
    # defaultServiceExportTo, ...: a kind's exportTo where its documents write none
    export_defaults: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ctx: DocumentContext | None = None  # the embedded document's (None: no ConfigMap)
    # outboundTrafficPolicy.mode; None: unwritten (Istio's default, ALLOW_ANY, applies).
    unknown_hosts: UnknownHosts | None = None

    def error(self, path: FieldPath, message: str) -> None:
        if self.ctx is not None:
            self.ctx.report(path, message, at_value=True)

    def warn(self, path: FieldPath, message: str) -> None:
        if self.ctx is not None:
            _warn(self.ctx, path, message)


class _Embedded:
    """The ConfigMap's document with `data.mesh`'s YAML in place of its text: paths under
    `data.mesh` are found in the embedded document, others in the ConfigMap's."""

    def __init__(self, outer: Located, inner: Located):
        self.outer, self.inner = outer, inner
        self.value = outer.value
        self.file = outer.file

    @property
    def position(self) -> Position:
        return self.outer.position

    def position_of(self, path: FieldPath) -> Position:
        if tuple(path[:2]) == MESH and len(path) > 2:
            return self.inner.position_of(path[2:])
        return self.outer.position_of(path)

    def value_position_of(self, path: FieldPath) -> Position:
        if tuple(path[:2]) == MESH and len(path) > 2:
            return self.inner.value_position_of(path[2:])
        return self.outer.value_position_of(path)


def read(everything: Sequence[ParsedDocument], load: LoadContext) -> MeshConfig:
    """The MeshConfig of the load's `istio` ConfigMap in istio-system (empty without one)."""
    found = next(((parsed, part) for parsed in everything for part in parsed.parts
                  if isinstance(part, KubeObject) and part.kind == "ConfigMap"
                  and (part.namespace, part.name) == CONFIG_MAP), None)
    if found is None:
        return MeshConfig()
    parsed, config_map = found
    text = (config_map.body.get("data") or {}).get("mesh")
    outer = parsed.context
    if not isinstance(text, str) or not text.strip():
        return MeshConfig(ctx=outer)
    key = outer.document.position_of(MESH)
    start = outer.document.value_position_of(MESH)
    # A block scalar's content starts on the line after `|`, indented past the key.
    indented = textwrap.indent(text, " " * (key.column + 1))
    documents, issues, _ = parse_yaml_text(indented, outer.document.file,
                                           line_offset=start.line)
    load.issues.extend(issues)
    if issues:
        return MeshConfig(ctx=outer)
    if len(documents) != 1 or not isinstance(documents[0].value, dict):
        outer.report(MESH, "data.mesh must hold one MeshConfig mapping (extensionProviders: "
                           "[...])", at_value=True)
        return MeshConfig(ctx=outer)
    ctx = DocumentContext(load, cast(Any, _Embedded(outer.document, documents[0])),
                          outer.kind, outer.name)
    mesh = MeshConfig(ctx=ctx)
    spec = Fields(ctx, documents[0].value, MESH)
    for name in spec.value:
        if name not in (*_READ, *EXPORT_DEFAULTS):
            _warn(ctx, (*MESH, name), f"MeshConfig field {name} is not applied "
                                      "(docs/istio.md); meshpilot reads extensionProviders, "
                                      "defaultConfig.gatewayTopology.numTrustedProxies, "
                                      "outboundTrafficPolicy and the default*ExportTo "
                                      "fields")
    for name, kind in EXPORT_DEFAULTS.items():
        written, problem = exports.checked(spec.value.get(name))
        if problem is not None:
            ctx.report((*MESH, name), problem, at_value=True)
        elif written is not None:
            mesh.export_defaults[kind] = written
    defaults = spec.get("defaultConfig", proxy_config)
    if defaults is not None:
        mesh.trusted_proxies = defaults.trusted_proxies
        for name in defaults.ignored:
            _warn(ctx, (*MESH, "defaultConfig", *name.split(".")),
                  f"ProxyConfig field {name} is not applied (docs/istio.md); meshpilot reads "
                  "gatewayTopology.numTrustedProxies")
    policy = spec.mapping("outboundTrafficPolicy", "a mapping such as {mode: REGISTRY_ONLY}")
    if policy is not None:
        mesh.unknown_hosts = read_outbound_mode(policy)
    for index, item in enumerate(spec.items("extensionProviders", "provider") or []):
        entry = Fields.at(ctx, item, (*MESH, "extensionProviders", index),
                          "a mapping such as {name: ext-authz, envoyExtAuthzHttp: {...}}")
        if entry is not None:
            _provider(mesh, entry)
    return mesh


_READ = ("extensionProviders", "defaultConfig", "outboundTrafficPolicy")
# Istio's outboundTrafficPolicy modes as what a sidecar's outbound port does with a Host no
# service of the mesh answers to.
OUTBOUND_MODES: dict[str, UnknownHosts] = {"ALLOW_ANY": "passthrough",
                                           "REGISTRY_ONLY": "refuse"}
DEFAULT_UNKNOWN_HOSTS: UnknownHosts = "passthrough"  # Istio's default mode, ALLOW_ANY


def read_outbound_mode(policy: Fields) -> UnknownHosts | None:
    """An `outboundTrafficPolicy` (MeshConfig's, a Sidecar resource's): its mode, as
    `Sidecar.unknown_hosts`; None when it does not say one."""
    policy.check_keys(("mode", "egressProxy"), "an outboundTrafficPolicy")
    if "egressProxy" in policy.value:
        policy.report("egressProxy", "egressProxy is not supported yet (docs/istio.md)",
                      at_value=False)
    mode = policy.get("mode", fields.choice(tuple(OUTBOUND_MODES)))
    return None if mode is None else OUTBOUND_MODES[mode]


def _warn(ctx: DocumentContext, path: FieldPath, message: str) -> None:
    ctx.load.warnings.append(PolicyIssue(message, ctx.document.position_of(path), ctx.kind,
                                         ctx.name, format_path(path)))


def _provider(mesh: MeshConfig, entry: Fields) -> None:
    name = entry.get("name", fields.string, required=True)
    kinds = [key for key in entry.value if key != "name"]
    if name is None:
        return
    if name in mesh.providers or name in mesh.other_providers:
        entry.report("name", f"another extension provider is named {fields.quoted(name)}")
        return
    if len(kinds) != 1:
        entry.ctx.report(entry.path, f"extension provider {name} needs exactly one kind "
                                     "(envoyExtAuthzHttp, envoyExtAuthzGrpc, ...)")
        return
    kind = kinds[0]
    protocol = _KINDS.get(kind)
    if protocol is None:
        mesh.other_providers[name] = kind
        _warn(entry.ctx, (*entry.path, kind), f"extension provider {name} ({kind}) is not "
                                              "applied (docs/istio.md): meshpilot reads the "
                                              "envoyExtAuthzHttp and envoyExtAuthzGrpc kinds")
        return
    spec = entry.mapping(kind, "a mapping such as {service: ext-authz.foo.svc.cluster.local, "
                               "port: 8000}", required=True)
    if spec is None:
        return
    spec.check_keys(_HTTP_KEYS if protocol == "http" else _GRPC_KEYS, kind)
    service = spec.get("service", fields.string, required=True)
    port = spec.get("port", _port, required=True)
    prefix = spec.get("pathPrefix", _path_prefix) or ""
    headers = (_matches(spec, "includeRequestHeadersInCheck")
               or _matches(spec, "includeHeadersInCheck"))
    extra = spec.get("includeAdditionalHeadersInCheck", _header_map) or ()
    mark = len(spec.ctx.load.issues)
    provider = ExtAuthzProvider(
        name=name, protocol=cast(Any, protocol),
        host=(service or "").rpartition("/")[2],
        namespace=(service or "").rpartition("/")[0] or None,
        port=port or 0,
        timeout=spec.get("timeout", fields.duration()) or DEFAULT_TIMEOUT,
        path_prefix=prefix, fail_open=spec.get("failOpen", fields.boolean) or False,
        status_on_error=spec.get("statusOnError", _status),
        send_headers=headers, add_headers=extra,
        request_body=_body(spec),
        upstream_headers=_matches(spec, "headersToUpstreamOnAllow"),
        client_headers=_matches(spec, "headersToDownstreamOnDeny"),
        client_headers_on_success=_matches(spec, "headersToDownstreamOnAllow"),
        path=entry.path)
    if service is not None and port is not None and len(spec.ctx.load.issues) == mark:
        mesh.providers[name] = provider


def _port(value: Any) -> int:
    # MeshConfig's port is a uint32, which its YAML often quotes ("9000", as istio.io does).
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return fields.PORT(value)


def _path_prefix(value: Any) -> str:
    text = fields.string(value)
    if not text.startswith("/"):
        raise Invalid(f"pathPrefix {fields.quoted(text)} must begin with /")
    return text


def _status(value: Any) -> int:
    text = str(value) if isinstance(value, int) else fields.string(value)
    if not text.isdigit() or int(text) not in _STATUSES:
        raise Invalid(f"statusOnError {fields.quoted(text)} is not an HTTP status Envoy knows "
                      "(say 403, 500, 503)")
    return int(text)


def _header_map(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise Invalid(f"expected a mapping of header names to values, found "
                      f"{fields.describe(value)}")
    found = []
    for name, text in value.items():
        found.append((fields.header_name(name), fields.any_string(text)))
    return tuple(sorted(found))


def _matches(spec: Fields, key: str) -> tuple[StringMatch, ...]:
    """Istio's header name patterns: `abc` exact, `abc*` prefix, `*abc` suffix (case
    ignored, as header names are)."""
    found: list[StringMatch] = []
    for index, item in enumerate(spec.items(key, "header name") or []):
        text = fields.convert_at(spec.ctx, item, (*spec.path, key, index), fields.string)
        if text is None:
            continue
        if text.endswith("*") and len(text) > 1:
            found.append(StringMatch("prefix", text[:-1].lower()))
        elif text.startswith("*") and len(text) > 1:
            found.append(StringMatch("suffix", text[1:].lower()))
        elif "*" in text:
            spec.ctx.report((*spec.path, key, index), f"header pattern {fields.quoted(text)}: "
                            "exact, prefix (abc*) or suffix (*abc)", at_value=True)
        else:
            found.append(StringMatch("exact", text.lower()))
    return tuple(found)


def _body(spec: Fields) -> ExtAuthzBody | None:
    body = spec.mapping("includeRequestBodyInCheck", "a mapping such as {maxRequestBytes: "
                                                     "4096, allowPartialMessage: true}")
    if body is None:
        return None
    body.check_keys(("maxRequestBytes", "allowPartialMessage", "packAsBytes"),
                    "includeRequestBodyInCheck")
    size = body.get("maxRequestBytes", fields.integer(1, 2**32 - 1), required=True)
    if size is None:
        return None
    return ExtAuthzBody(size, body.get("allowPartialMessage", fields.boolean) or False,
                        body.get("packAsBytes", fields.boolean) or False)
