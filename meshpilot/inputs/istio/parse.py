"""Reading one Istio document: its metadata and its spec, checked field by field.

Every problem is reported at its position with Istio's field path (`spec.http[0].route[1].
destination.subset`); a field meshpilot cannot honour yet is refused with "not supported"
rather than ignored, so a policy never silently means less than it says (docs/istio.md lists
them). What needs other documents (does a host exist, a subset) is `compile.py`'s.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Literal, cast

from meshpilot.base import tlsfiles as tls_files
from meshpilot.inputs.context import DocumentContext, ModelPart
from meshpilot.inputs.istio import meshconfig
from meshpilot.inputs.istio import objects as o
from meshpilot.inputs.native import connections, fields
from meshpilot.inputs.native import locality as localities
from meshpilot.inputs.native.fields import Fields, Invalid, issue_count, reported_since
from meshpilot.inputs.native.matches import METHOD
from meshpilot.inputs.yamlsource import Located, parse_yaml_text
from meshpilot.ir.model import (
    Backoff,
    CircuitBreaker,
    Cors,
    DirectResponse,
    Fault,
    FaultAbort,
    FaultDelay,
    HashOn,
    HeaderOps,
    ListenerTls,
    LoadBalancerOptions,
    Match,
    OutlierDetection,
    PathRewrite,
    Redirect,
    Retries,
    Rule,
    SlowStart,
    StringMatch,
    TcpKeepalive,
    TlsCertificate,
    UpstreamTls,
)

DEFAULT_NAMESPACE = "default"
METADATA_KEYS = ("name", "namespace", "labels", "annotations", "uid", "resourceVersion",
                 "generation", "creationTimestamp", "managedFields")
APP_ANNOTATION = "meshpilot.io/app"
OUTBOUND_PORT_ANNOTATION = "meshpilot.io/outbound-port"
DRY_RUN = "istio.io/dry-run"
PROXY_CONFIG = "proxy.istio.io/config"

# Istio's retry default, on every route without `retries` (pilot's DefaultRetryPolicy).
ISTIO_DEFAULT_RETRIES = Retries(
    attempts=2, on=("connect-failure", "refused-stream", "unavailable", "cancelled",
                    "retriable-status-codes"),
    retriable_status_codes=(503,), avoid_same_host=True)

_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")

NOT_SUPPORTED = "is not supported yet (docs/istio.md)"


def namespace_of(body: dict[str, Any]) -> str:
    metadata = body.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    return namespace if isinstance(namespace, str) and namespace else DEFAULT_NAMESPACE


Reader = Callable[[Fields], o.Spec | None]


def parser(kind: str, read: Reader) -> Callable[[Located, DocumentContext], Iterable[ModelPart]]:
    """The document parser of one kind: metadata, then `spec` read by `read`."""

    def parse(document: Located, ctx: DocumentContext) -> Iterable[ModelPart]:
        mark = issue_count(ctx)
        doc = Fields(ctx, document.value)
        doc.check_keys(("apiVersion", "kind", "metadata", "spec", "status"), kind)
        meta = doc.mapping("metadata", "a mapping with name and namespace", required=True)
        labels: tuple[tuple[str, str], ...] = ()
        annotations: dict[str, str] = {}
        if meta is not None:
            meta.check_keys(METADATA_KEYS, "metadata")
            meta.get("name", _dns_label)
            meta.get("namespace", _namespace)
            labels = meta.get("labels", fields.labels) or ()
            annotations = dict(meta.get("annotations", fields.labels) or ())
        body = doc.value.get("spec")
        if body is None:
            body = {}
        spec_fields = Fields.at(ctx, body, ("spec",), "a mapping")
        spec = None if spec_fields is None else read(spec_fields)
        if kind == "WorkloadEntry" and isinstance(spec, o.WorkloadEntry) and meta is not None:
            spec = _workload_annotations(meta, spec, annotations)
        if isinstance(spec, o.AuthorizationPolicy) and annotations.get(DRY_RUN) == "true":
            spec = replace(spec, dry_run=True)
        if isinstance(spec, o.IstioGateway) and PROXY_CONFIG in annotations:
            spec = _proxy_annotation(ctx, annotations[PROXY_CONFIG], spec)
        if spec is None or reported_since(ctx, mark):
            return ()
        name = document.value["metadata"]["name"]
        return (o.IstioDocument(kind, namespace_of(document.value), name, labels, spec),)

    return parse


def _proxy_annotation(ctx: DocumentContext, text: str, spec: o.IstioGateway
                      ) -> o.IstioGateway:
    """A Gateway's `proxy.istio.io/config` annotation: ProxyConfig in YAML, as Istio reads it
    on the gateway's pods; its numTrustedProxies is the gateway's."""
    at = ("metadata", "annotations", PROXY_CONFIG)
    documents, issues, _ = parse_yaml_text(text, ctx.document.file)
    if issues or len(documents) != 1:
        ctx.report(at, "expected ProxyConfig in YAML, such as "
                       "'gatewayTopology: {numTrustedProxies: 1}'", at_value=True)
        return spec
    try:
        config = meshconfig.proxy_config(documents[0].value)
    except Invalid as e:
        ctx.report(at, str(e), at_value=True)
        return spec
    return replace(spec, trusted_proxies=config.trusted_proxies, proxy_ignored=config.ignored)


def _dns_label(value: Any) -> str:
    text = fields.string(value)
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", text):
        raise Invalid(f"invalid name {fields.quoted(text)}: use lower-case letters, digits, "
                      "'-' and '.', starting and ending with a letter or digit")
    return text


def _namespace(value: Any) -> str:
    text = fields.string(value)
    if not _NAMESPACE.match(text):
        raise Invalid(f"invalid namespace {fields.quoted(text)}: a DNS label (lower-case "
                      "letters, digits and '-')")
    return text


def _workload_annotations(meta: Fields, spec: o.WorkloadEntry,
                          annotations: dict[str, str]) -> o.WorkloadEntry:
    app = None
    app_ports: tuple[tuple[int, tuple[str, int]], ...] = ()
    outbound = None
    notes = meta.mapping("annotations", "a mapping")
    if notes is not None:
        if APP_ANNOTATION in annotations:
            written = notes.get(APP_ANNOTATION, _app_annotation) or ()
            app = next((address for port, address in written if port is None), None)
            app_ports = tuple((port, address) for port, address in written if port is not None)
        if OUTBOUND_PORT_ANNOTATION in annotations:
            outbound = notes.get(OUTBOUND_PORT_ANNOTATION, lambda v: fields.port_text(
                fields.string(v)))
    return o.WorkloadEntry(spec.spec, app, outbound_port=outbound, app_ports=app_ports)


def _app_annotation(value: Any) -> tuple[tuple[int | None, tuple[str, int]], ...]:
    """`meshpilot.io/app`: one address (port None: the first inbound port's application),
    or, for a sidecar with several inbound ports, `PORT=ADDRESS` entries separated by commas
    (each inbound port's application; PORT is the sidecar's inbound port, the workload's)."""
    text = fields.string(value)
    if "=" not in text:
        return ((None, _app_address(text)),)
    found: dict[int, tuple[str, int]] = {}
    for entry in text.split(","):
        port_text, equals, address = (part.strip() for part in entry.partition("="))
        if not equals or not port_text or not address:
            raise Invalid(f"invalid entry {fields.quoted(entry.strip())}: expected "
                          "PORT=ADDRESS (e.g. 9080=127.0.0.1:19080), entries separated by ','")
        port = fields.port_text(port_text)
        if port in found:
            raise Invalid(f"inbound port {port} is named twice")
        found[port] = _app_address(address)
    return tuple(sorted(found.items()))


def _app_address(value: Any) -> tuple[str, int]:
    text = fields.string(value)
    if text.isdigit():
        return "127.0.0.1", fields.port_text(text)
    return fields.address(text)


# ---- shared pieces -----------------------------------------------------------------------------


def _strings(entry: Fields, key: str, what: str,
             convert: Callable[[Any], str] = fields.string) -> tuple[str, ...]:
    value = entry.value.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        entry.report(key, f"expected a list of {what}s, found {fields.describe(value)}")
        return ()
    result = []
    for index, item in enumerate(value):
        converted = fields.convert_at(entry.ctx, item, (*entry.path, key, index), convert)
        if converted is not None:
            result.append(converted)
    return tuple(result)


def _selector(spec: Fields, key: str = "selector", inner: str = "matchLabels"):  # type: ignore[no-untyped-def]
    selector = spec.mapping(key, f"a mapping such as {{{inner}: {{app: reviews}}}}")
    if selector is None:
        return None
    selector.check_keys((inner,), key)
    return selector.get(inner, fields.labels) or ()


def _percentage(entry: Fields, key: str = "percentage", legacy: str | None = None) -> float:
    """`percentage: {value: 12.5}` (or a deprecated integer `percent`), 0 to 100; 100 when
    neither is written."""
    share = entry.mapping(key, "a mapping such as {value: 10}")
    if share is not None:
        share.check_keys(("value",), key)
        value = share.get("value", _percent)
        return 100.0 if value is None else value
    if legacy is not None and legacy in entry.value:
        value = entry.get(legacy, _percent)
        return 100.0 if value is None else value
    return 100.0


def _percent(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"expected a percentage from 0 to 100, found {fields.describe(value)}")
    if not 0 <= value <= 100:
        raise Invalid(f"a percentage must be from 0 to 100, not {value}")
    return float(value)


def _duration(value: Any) -> float:
    return fields.duration(allow_zero=True)(value)


def string_match(ctx: DocumentContext, value: Any, path: tuple[Any, ...],
                 *, allow_prefix: bool = True) -> StringMatch | None:
    """Istio's StringMatch: exactly one of {exact, prefix, regex}."""
    entry = Fields.at(ctx, value, path, "a mapping such as {exact: v1}, {prefix: /api} or "
                                        "{regex: ...}")
    if entry is None:
        return None
    allowed = ("exact", "prefix", "regex") if allow_prefix else ("exact", "regex")
    entry.check_keys(allowed, "a string match")
    how = entry.exclusive(allowed, required=True, what="a string match")
    if how is None:
        return None
    if how == "regex":
        pattern = entry.get("regex", fields.regex, required=True)
        return None if pattern is None else StringMatch("regex", pattern)
    text = entry.get(how, fields.any_string)
    if text is None:
        if entry.value.get(how) is None:
            entry.missing(how)
        return None
    return StringMatch(cast(Any, how), text)


# ---- ServiceEntry -------------------------------------------------------------------------------

SE_KEYS = ("hosts", "addresses", "ports", "location", "resolution", "endpoints",
           "workloadSelector", "exportTo", "subjectAltNames")
PROTOCOLS = ("HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB", "TCP", "TLS", "MONGO", "MYSQL",
             "REDIS")


def read_service_entry(spec: Fields) -> o.ServiceEntry | None:
    spec.check_keys(SE_KEYS, "a ServiceEntry's spec")
    hosts = _strings(spec, "hosts", "host", _host)
    if "hosts" not in spec.value:
        spec.missing("hosts")
    for index, host in enumerate(hosts):
        if host.startswith("*"):
            spec.ctx.report((*spec.path, "hosts", index), f"wildcard host {fields.quoted(host)} "
                                                          f"{NOT_SUPPORTED}", at_value=True)
    ports = _ports(spec)
    resolution = spec.get("resolution", fields.choice(("NONE", "STATIC", "DNS",
                                                       "DNS_ROUND_ROBIN"))) or "NONE"
    location = spec.get("location", fields.choice(("MESH_INTERNAL", "MESH_EXTERNAL"))) \
        or "MESH_EXTERNAL"
    endpoints = []
    for index, item in enumerate(spec.items("endpoints", "endpoint") or []):
        entry = Fields.at(spec.ctx, item, (*spec.path, "endpoints", index),
                          "a mapping such as {address: 10.0.0.1}")
        if entry is not None:
            workload = read_workload(entry)
            if workload is not None:
                endpoints.append(workload)
    selector = _selector(spec, "workloadSelector", "labels")
    if selector is not None and endpoints:
        spec.report("workloadSelector", "workloadSelector and endpoints cannot be used "
                                        "together", at_value=False)
    if "addresses" in spec.value:
        spec.report("addresses", f"addresses (VIPs for TCP) {NOT_SUPPORTED}", at_value=False)
    sans = _strings(spec, "subjectAltNames", "SPIFFE ID or DNS name")
    if not hosts or not ports:
        return None
    return o.ServiceEntry(hosts, ports, cast(Any, resolution), cast(Any, location),
                          tuple(endpoints), selector, sans)


def _host(value: Any) -> str:
    text = fields.string(value).lower()
    if text == "*" or text.startswith("*."):
        return text
    return fields.dns_name(text)


def _ports(spec: Fields) -> tuple[o.Port, ...]:
    items = spec.items("ports", "port", required=True) or []
    ports: list[o.Port] = []
    numbers: set[int] = set()
    for index, item in enumerate(items):
        entry = Fields.at(spec.ctx, item, (*spec.path, "ports", index),
                          "a mapping such as {number: 9080, name: http, protocol: HTTP}")
        if entry is None:
            continue
        entry.check_keys(("number", "name", "protocol", "targetPort"), "a port")
        number = entry.get("number", fields.PORT, required=True)
        name = entry.get("name", fields.string) or ""
        protocol = entry.get("protocol", lambda v: fields.choice(PROTOCOLS)(
            fields.string(v).upper()))
        if protocol is None:  # Istio sniffs; meshpilot reads the port name's prefix
            prefix = name.split("-")[0].upper()
            protocol = prefix if prefix in PROTOCOLS else "HTTP"
        target = entry.get("targetPort", fields.PORT)
        if number is None:
            continue
        if number in numbers:
            entry.report("number", f"port {number} is listed twice")
            continue
        numbers.add(number)
        ports.append(o.Port(number, name, protocol, target))
    return tuple(ports)


# ---- WorkloadEntry ------------------------------------------------------------------------------

WE_KEYS = ("address", "ports", "labels", "network", "locality", "weight", "serviceAccount")


def read_workload_entry(spec: Fields) -> o.WorkloadEntry | None:
    workload = read_workload(spec)
    if workload is None:
        return None
    if "address" not in spec.value:
        spec.missing("address")
        return None
    return o.WorkloadEntry(workload)


def read_workload(entry: Fields) -> o.WorkloadSpec | None:
    entry.check_keys(WE_KEYS, "a workload")
    address = entry.get("address", _workload_address, required=True)
    ports = entry.get("ports", _port_map) or ()
    labels = entry.get("labels", fields.labels) or ()
    account = entry.get("serviceAccount", _dns_label)
    weight = entry.get("weight", fields.integer(1, 128))
    locality = entry.get("locality", fields.string)
    if address is None:
        return None
    return o.WorkloadSpec(address, ports, labels, account, weight, locality, entry.path)


def _workload_address(value: Any) -> str:
    text = fields.string(value)
    if text.startswith("unix://"):
        raise Invalid(f"unix socket addresses {NOT_SUPPORTED}")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return fields.dns_name(text)


def _port_map(value: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, dict):
        raise Invalid(f"expected a mapping of port names to ports, found "
                      f"{fields.describe(value)}")
    for key, item in value.items():
        try:
            fields.PORT(item)
        except Invalid as problem:
            raise Invalid(problem.message, (key,)) from None
    return tuple(sorted((str(k), int(v)) for k, v in value.items()))


# ---- VirtualService -----------------------------------------------------------------------------

VS_KEYS = ("hosts", "gateways", "http", "tcp", "tls", "exportTo")
HTTP_KEYS = ("name", "match", "route", "redirect", "directResponse", "delegate", "rewrite",
             "timeout", "retries", "fault", "mirror", "mirrorPercent", "mirrorPercentage",
             "mirrors", "corsPolicy", "headers")
MATCH_KEYS = ("name", "uri", "scheme", "method", "authority", "headers", "withoutHeaders",
              "port", "sourceLabels", "gateways", "queryParams", "ignoreUriCase",
              "sourceNamespace", "statPrefix")
DESTINATION_KEYS = ("host", "subset", "port")


def read_virtual_service(spec: Fields) -> o.VirtualService | None:
    spec.check_keys(VS_KEYS, "a VirtualService's spec")
    hosts = _strings(spec, "hosts", "host", _host)
    gateways = _strings(spec, "gateways", "gateway") or ("mesh",)
    l4 = {key: tuple(route for index, item in enumerate(spec.items(key, f"{key} route") or [])
                     if (route := _l4_route(spec, key, index, item)) is not None)
          for key in ("tcp", "tls")}
    http: list[o.HttpRoute] = []
    for index, item in enumerate(spec.items("http", "route") or []):
        entry = Fields.at(spec.ctx, item, (*spec.path, "http", index),
                          "a mapping such as {route: [{destination: {host: reviews}}]}")
        if entry is not None:
            route = _http_route(entry)
            if route is not None:
                http.append(route)
    # No hosts: a delegate (its http routes are another VirtualService's `delegate`).
    if not hosts and "hosts" in spec.value and "mesh" in gateways:
        spec.report("hosts", "a VirtualService needs hosts (a delegate has none: leave the "
                             "key out)", at_value=False)
    if not hosts and any(r.delegate for r in http):
        spec.report("http", "a delegate VirtualService (no hosts) cannot delegate again",
                    at_value=False)
    return o.VirtualService(hosts, gateways, tuple(http), l4["tls"], l4["tcp"])


# Istio's L4MatchAttributes (tcp) and TLSMatchAttributes (tls: sniHosts, no sourceSubnet).
TCP_MATCH_KEYS = ("port", "gateways", "sourceLabels", "sourceNamespace", "destinationSubnets",
                  "sourceSubnet")
TLS_MATCH_KEYS = ("port", "gateways", "sourceLabels", "sourceNamespace", "destinationSubnets",
                  "sniHosts")


def _subnet(value: Any) -> str:
    """`a.b.c.d/xx` or an address alone (its own /32, /128), as a network: host bits dropped,
    as Envoy's CidrRange reads it."""
    text = fields.string(value)
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise Invalid(f"{fields.quoted(text)} is not an IP address or subnet (such as "
                      "10.0.0.0/8)") from None


def _l4_route(spec: Fields, key: str, index: int, item: Any) -> o.L4Route | None:
    """A `tcp` or `tls` route: its matches and its weighted destinations."""
    entry = Fields.at(spec.ctx, item, (*spec.path, key, index),
                      "a mapping such as {route: [{destination: {host: mysql}}]}")
    if entry is None:
        return None
    entry.check_keys(("match", "route"), f"a {key} route")
    matches: list[o.L4Match] = []
    for match_index, value in enumerate(entry.items("match", "match") or []):
        match = Fields.at(entry.ctx, value, (*entry.path, "match", match_index),
                          "a mapping such as {port: 3306}" if key == "tcp"
                          else "a mapping such as {sniHosts: [www.example.com]}")
        if match is None:
            continue
        match.check_keys(TLS_MATCH_KEYS if key == "tls" else TCP_MATCH_KEYS,
                         f"a {key} match")
        destinations = tuple(dict.fromkeys(_strings(match, "destinationSubnets", "subnet",
                                                    _subnet)))
        source = match.get("sourceSubnet", _subnet) if key == "tcp" else None
        sni = _strings(match, "sniHosts", "host", _host) if key == "tls" else ()
        if key == "tls" and not sni and "sniHosts" not in match.value:
            match.missing("sniHosts")
        source_labels = match.get("sourceLabels", fields.labels) or ()
        matches.append(o.L4Match(match.get("port", fields.PORT),
                                 _strings(match, "gateways", "gateway"),
                                 tuple(sorted(source_labels)),
                                 match.get("sourceNamespace", _namespace), sni, match.path,
                                 destinations, () if source is None else (source,)))
    if key == "tls" and "match" not in entry.value:
        entry.missing("match")
    destinations = _destinations(entry)
    return o.L4Route(cast(Any, key), tuple(matches), destinations, entry.path)


def _http_route(entry: Fields) -> o.HttpRoute | None:
    entry.check_keys(HTTP_KEYS, "an http route")
    delegate = None
    if "delegate" in entry.value:
        target = entry.mapping("delegate", "a mapping such as {name: reviews, namespace: nsA}")
        if target is not None:
            target.check_keys(("name", "namespace"), "a delegate")
            name = target.get("name", _dns_label, required=True)
            if name is None:
                return None
            delegate = (name, target.get("namespace", _namespace))
    matches = tuple(m for index, item in enumerate(entry.items("match", "match") or [])
                    if (m := _http_match(entry, item, index)) is not None)
    action = entry.exclusive(("route", "redirect", "directResponse", "delegate"), required=True,
                             what="an http route")
    destinations: tuple[o.Destination, ...] = ()
    redirect = direct = None
    if action == "route":
        destinations = _destinations(entry, http=True)
    elif action == "redirect":
        redirect = _redirect(entry)
    elif action == "directResponse":
        direct = _direct_response(entry)
    request_headers, response_headers = _headers(entry)
    rewrite_path, rewrite_host = _rewrite(entry)
    timeout = entry.get("timeout", _duration)
    retries = _retries(entry)
    fault = _fault(entry)
    mirrors = _mirrors(entry)
    cors = _cors(entry)
    if action not in ("route", "delegate"):  # a delegate's routes inherit them
        for key in ("rewrite", "timeout", "retries", "fault", "mirror", "mirrors"):
            if key in entry.value:
                entry.report(key, f"{key} needs route (destinations), not {action}",
                             at_value=False)
    rule = Rule(
        position=entry.ctx.document.position_of(entry.path),
        matches=tuple(m.match for m in matches) or (Match(),),
        redirect=redirect, direct_response=direct,
        rewrite_path=rewrite_path, rewrite_host=rewrite_host,
        request_headers=request_headers, response_headers=response_headers,
        # Istio turns Envoy's 15 s route timeout off unless a timeout is written.
        timeout=(0.0 if timeout is None else timeout) if action in ("route", "delegate")
        else None,
        retries=retries if action in ("route", "delegate") else None,
        fault=fault, origin=entry.origin())
    return o.HttpRoute(matches, rule, destinations, mirrors, cors, entry.path,
                       frozenset(entry.value), delegate)


def _http_match(entry: Fields, item: Any, index: int) -> o.HttpMatch | None:
    match = Fields.at(entry.ctx, item, (*entry.path, "match", index),
                      "a mapping such as {uri: {prefix: /api}}")
    if match is None:
        return None
    match.check_keys(MATCH_KEYS, "a match")
    ctx = match.ctx
    ignore_case = bool(match.get("ignoreUriCase", fields.boolean))  # the uri only (Istio's)
    path = None
    if "uri" in match.value:
        path = string_match(ctx, match.value["uri"], (*match.path, "uri"))
    headers: list[tuple[str, StringMatch]] = []
    methods: tuple[str, ...] = ()
    if "method" in match.value:
        how = string_match(ctx, match.value["method"], (*match.path, "method"))
        if how is not None and how.kind == "exact":
            method = fields.convert_at(ctx, how.value, (*match.path, "method", "exact"), METHOD)
            methods = () if method is None else (method,)
        elif how is not None:
            headers.append((":method", how))
    for key, header in (("scheme", ":scheme"), ("authority", ":authority")):
        if key in match.value:
            how = string_match(ctx, match.value[key], (*match.path, key))
            if how is not None:
                headers.append((header, how))
    header_spec = match.mapping("headers", "a mapping of header names to string matches")
    if header_spec is not None:
        for name, value in header_spec.value.items():
            at = (*header_spec.path, name)
            header = fields.convert_at(ctx, name, at, fields.header_name)
            how = _value_match(ctx, value, at)
            if header is not None and how is not None:
                headers.append((header, how))
    # withoutHeaders: the same matches, inverted (Istio: invert_match, a missing header read
    # as empty; `{}` or regex `*`, "present", becomes "absent").
    without_spec = match.mapping("withoutHeaders",
                                 "a mapping of header names to string matches")
    if without_spec is not None:
        for name, value in without_spec.value.items():
            at = (*without_spec.path, name)
            header = fields.convert_at(ctx, name, at, fields.header_name)
            how = _value_match(ctx, value, at)
            if header is not None and how is not None:
                headers.append((header, StringMatch("absent") if how.kind == "present"
                                else replace(how, invert=True)))
    query: list[tuple[str, StringMatch]] = []
    query_spec = match.mapping("queryParams", "a mapping of parameter names to string matches")
    if query_spec is not None:
        for name, value in query_spec.value.items():
            how = _value_match(ctx, value, (*query_spec.path, name), allow_prefix=True)
            if how is not None:
                query.append((str(name), how))
    port = match.get("port", fields.PORT)
    gateways = _strings(match, "gateways", "gateway")
    source_labels = match.get("sourceLabels", fields.labels) or ()
    source_namespace = match.get("sourceNamespace", _namespace)
    return o.HttpMatch(Match(path=path, methods=methods, headers=tuple(headers),
                             query=tuple(query), origin=match.origin(),
                             ignore_case=ignore_case and path is not None), port, gateways,
                       tuple(sorted(source_labels)), source_namespace)


def _value_match(ctx: DocumentContext, value: Any, path: tuple[Any, ...],
                 allow_prefix: bool = True) -> StringMatch | None:
    """A header or query match; `{}` means the header is present (Istio)."""
    if value == {} or (isinstance(value, dict) and value.get("regex") == "*"
                       and len(value) == 1):
        return StringMatch("present")  # regex "*": Istio reads it as present (istio#20629)
    return string_match(ctx, value, path, allow_prefix=allow_prefix)


def destination(ctx: DocumentContext, value: Any, path: tuple[Any, ...],
                weight: int = 100) -> o.Destination | None:
    entry = Fields.at(ctx, value, path, "a mapping such as {host: reviews, subset: v2}")
    if entry is None:
        return None
    entry.check_keys(DESTINATION_KEYS, "a destination")
    host = entry.get("host", _host, required=True)
    subset = entry.get("subset", fields.name)
    port = None
    port_spec = entry.mapping("port", "a mapping such as {number: 9080}")
    if port_spec is not None:
        port_spec.check_keys(("number",), "a port selector")
        port = port_spec.get("number", fields.PORT, required=True)
    if host is None:
        return None
    return o.Destination(host, subset, port, weight, path)


def _destinations(entry: Fields, http: bool = False) -> tuple[o.Destination, ...]:
    result = []
    items = entry.items("route", "destination", required=True) or []
    for index, item in enumerate(items):
        weighted = Fields.at(entry.ctx, item, (*entry.path, "route", index),
                             "a mapping such as {destination: {host: reviews}, weight: 100}")
        if weighted is None:
            continue
        weighted.check_keys(("destination", "weight", "headers") if http
                            else ("destination", "weight"), "a route destination")
        weight = weighted.get("weight", fields.integer(0, 100))
        if weight is None:
            weight = 100 if len(items) == 1 else 0
        if "destination" not in weighted.value:
            weighted.missing("destination")
            continue
        found = destination(entry.ctx, weighted.value["destination"],
                            (*weighted.path, "destination"), weight)
        if found is not None and "headers" in weighted.value:
            request, response = _headers(weighted)  # for this destination only (Istio's)
            found = replace(found,
                            request_headers=None if request == HeaderOps() else request,
                            response_headers=None if response == HeaderOps() else response)
        if found is not None:
            result.append(found)
    if len(items) > 1 and result and sum(d.weight for d in result) == 0:
        entry.report("route", "the weights of the destinations add up to 0", at_value=False)
    return tuple(result)


def _redirect(entry: Fields) -> Redirect | None:
    spec = entry.mapping("redirect", "a mapping such as {uri: /v1, authority: example.com}")
    if spec is None:
        return None
    spec.check_keys(("uri", "authority", "port", "derivePort", "scheme", "redirectCode"),
                    "a redirect")
    port = spec.get("port", fields.PORT)
    derive = spec.get("derivePort", fields.choice(("FROM_PROTOCOL_DEFAULT",
                                                   "FROM_REQUEST_PORT")))
    scheme = spec.get("scheme", fields.choice(("http", "https")))
    if derive is not None and port is not None:
        spec.report("derivePort", "derivePort and port cannot be used together",
                    at_value=False)
    if derive == "FROM_PROTOCOL_DEFAULT":
        port = 443 if scheme == "https" else 80
    return Redirect(
        scheme=scheme, host=spec.get("authority", fields.host_pattern), port=port,
        path=spec.get("uri", fields.url_path),
        status=spec.get("redirectCode", fields.int_choice((301, 302, 303, 307, 308))) or 301,
        origin=spec.origin())


def _direct_response(entry: Fields) -> DirectResponse | None:
    spec = entry.mapping("directResponse", "a mapping such as {status: 503}")
    if spec is None:
        return None
    spec.check_keys(("status", "body"), "a direct response")
    status = spec.get("status", fields.integer(200, 599), required=True)
    body = ""
    body_spec = spec.mapping("body", "a mapping such as {string: text}")
    if body_spec is not None:
        body_spec.check_keys(("string", "bytes"), "a body")
        if body_spec.exclusive(("string", "bytes"), required=False, what="a body") == "bytes":
            body = body_spec.get("bytes", _base64) or ""
        else:
            body = body_spec.get("string", fields.any_string) or ""
    return None if status is None else DirectResponse(status, body, origin=spec.origin())


def _base64(value: Any) -> str | bytes:
    """`body.bytes`: base64 (protobuf's JSON form of bytes); text when it is UTF-8."""
    try:
        data = base64.b64decode(fields.string(value), validate=True)
    except binascii.Error:
        raise Invalid("expected base64 (such as aGVsbG8=), found "
                      f"{fields.describe(value)}") from None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data


def _header_ops(spec: Fields | None) -> HeaderOps:
    if spec is None:
        return HeaderOps()
    spec.check_keys(("set", "add", "remove"), "header operations")
    return HeaderOps(add=_header_values(spec, "add"), set=_header_values(spec, "set"),
                     remove=_strings(spec, "remove", "header name", fields.header_name))


def _header_values(spec: Fields, key: str) -> tuple[tuple[str, str], ...]:
    values = spec.mapping(key, "a mapping of header names to values")
    if values is None:
        return ()
    result = []
    for name, value in values.value.items():
        header = fields.convert_at(spec.ctx, name, (*values.path, name), fields.header_name)
        text = fields.convert_at(spec.ctx, value, (*values.path, name), fields.any_string)
        if header is not None and text is not None:
            result.append((header, text))
    return tuple(result)


def _headers(entry: Fields) -> tuple[HeaderOps, HeaderOps]:
    spec = entry.mapping("headers", "a mapping such as {request: {set: {x-a: b}}}")
    if spec is None:
        return HeaderOps(), HeaderOps()
    spec.check_keys(("request", "response"), "headers")
    return (_header_ops(spec.mapping("request", "a mapping of set, add and remove")),
            _header_ops(spec.mapping("response", "a mapping of set, add and remove")))


def _rewrite(entry: Fields) -> tuple[PathRewrite | None, str | None]:
    spec = entry.mapping("rewrite", "a mapping such as {uri: /, authority: example.com}")
    if spec is None:
        return None, None
    spec.check_keys(("uri", "authority", "uriRegexRewrite"), "a rewrite")
    host = spec.get("authority", fields.host_pattern)
    path = None
    uri = spec.get("uri", fields.url_path)
    if uri is not None:
        # As Istio writes it, Envoy's prefix_rewrite: it replaces what the path match matched,
        # so a regex (or exact) uri match has the whole path replaced, the query kept.
        path = PathRewrite(prefix=uri, origin=spec.origin("uri"))
    regex_spec = spec.mapping("uriRegexRewrite", "a mapping such as {match: ^/v1(.*), "
                                                 "rewrite: /v2\\1}")
    if regex_spec is not None:
        regex_spec.check_keys(("match", "rewrite"), "uriRegexRewrite")
        pattern = regex_spec.get("match", fields.regex, required=True)
        substitution = regex_spec.get("rewrite", fields.any_string, required=True)
        if uri is not None:
            spec.report("uriRegexRewrite", "uri and uriRegexRewrite cannot be used together",
                        at_value=False)
        elif pattern is not None and substitution is not None:
            path = PathRewrite(regex=pattern, substitution=substitution,
                               origin=regex_spec.origin())
    return path, host


def _retries(entry: Fields) -> Retries | None:
    spec = entry.mapping("retries", "a mapping such as {attempts: 3, perTryTimeout: 2s}")
    if spec is None:  # Istio's default, said where the route is (origins are not compared)
        return replace(ISTIO_DEFAULT_RETRIES, origin=entry.origin())
    spec.check_keys(("attempts", "perTryTimeout", "retryOn", "retryRemoteLocalities",
                     "retryIgnorePreviousHosts", "backoff"), "retries")
    attempts = spec.get("attempts", fields.integer(0, 1_000_000))
    per_try = spec.get("perTryTimeout", fields.duration())
    backoff = spec.get("backoff", fields.duration())
    on = list(ISTIO_DEFAULT_RETRIES.on)
    codes: list[int] = []
    retry_on = spec.get("retryOn", fields.string)
    if retry_on is not None:
        on = []
        for word in (w.strip() for w in retry_on.split(",")):
            if not word:
                continue
            if word.isdigit():
                codes.append(int(word))
            else:
                on.append(word)
        if codes and "retriable-status-codes" not in on:
            on.append("retriable-status-codes")
    elif attempts is not None:
        codes = [503]
    ignore_previous = spec.get("retryIgnorePreviousHosts", fields.boolean)
    if attempts == 0 or (attempts is None and "attempts" in spec.value):
        return None
    return Retries(attempts=2 if attempts is None else attempts, on=tuple(on),
                   per_try_timeout=per_try,
                   backoff=None if backoff is None else Backoff(backoff),
                   retriable_status_codes=tuple(codes),
                   avoid_same_host=True if ignore_previous is None else ignore_previous,
                   origin=spec.origin())


def _fault(entry: Fields) -> Fault | None:
    spec = entry.mapping("fault", "a mapping such as {delay: {fixedDelay: 5s}}")
    if spec is None:
        return None
    spec.check_keys(("delay", "abort"), "a fault")
    delay = abort = None
    delay_spec = spec.mapping("delay", "a mapping such as {fixedDelay: 5s, percentage: "
                                       "{value: 10}}")
    if delay_spec is not None:
        delay_spec.check_keys(("fixedDelay", "percentage", "percent", "exponentialDelay"),
                              "a delay")
        if "exponentialDelay" in delay_spec.value:
            delay_spec.report("exponentialDelay", f"exponentialDelay {NOT_SUPPORTED}",
                              at_value=False)
        fixed = delay_spec.get("fixedDelay", fields.duration(), required=True)
        if fixed is not None:
            delay = FaultDelay(fixed, _percentage(delay_spec, legacy="percent"))
    abort_spec = spec.mapping("abort", "a mapping such as {httpStatus: 503}")
    if abort_spec is not None:
        abort_spec.check_keys(("httpStatus", "grpcStatus", "http2Error", "percentage"),
                              "an abort")
        how = abort_spec.exclusive(("httpStatus", "grpcStatus", "http2Error"), required=True,
                                   what="an abort")
        if how == "http2Error":
            # Envoy's fault filter aborts with an HTTP status, a gRPC status or a header's
            # status, never a stream reset; Istio's pilot drops such an abort (a log line).
            abort_spec.report("http2Error", "http2Error (a stream reset) is not supported: "
                                            "Envoy's fault filter cannot reset a stream, and "
                                            "Istio drops such an abort; use httpStatus",
                              at_value=False)
        status = abort_spec.get("httpStatus", fields.integer(200, 599))
        grpc = abort_spec.get("grpcStatus", _grpc_status)
        if status is not None or grpc is not None:
            abort = FaultAbort(status=status, grpc_status=grpc,
                               percentage=_percentage(abort_spec))
    if delay is None and abort is None:
        return None
    return Fault(delay=delay, abort=abort, origin=spec.origin())


GRPC_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
              "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
              "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
              "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")


def _grpc_status(value: Any) -> int:
    return GRPC_CODES.index(fields.choice(GRPC_CODES)(fields.string(value).upper()))


def _mirrors(entry: Fields) -> tuple[o.MirrorSpec, ...]:
    result = []
    if "mirror" in entry.value:
        found = destination(entry.ctx, entry.value["mirror"], (*entry.path, "mirror"))
        share = _percentage(entry, "mirrorPercentage", legacy="mirrorPercent")
        if found is not None:
            result.append(o.MirrorSpec(found, share))
    elif "mirrorPercentage" in entry.value or "mirrorPercent" in entry.value:
        entry.report("mirrorPercentage", "a mirror percentage needs mirror", at_value=False)
    for index, item in enumerate(entry.items("mirrors", "mirror") or []):
        spec = Fields.at(entry.ctx, item, (*entry.path, "mirrors", index),
                         "a mapping such as {destination: {host: reviews}, percentage: "
                         "{value: 10}}")
        if spec is None:
            continue
        spec.check_keys(("destination", "percentage"), "a mirror")
        if "destination" not in spec.value:
            spec.missing("destination")
            continue
        found = destination(entry.ctx, spec.value["destination"], (*spec.path, "destination"))
        if found is not None:
            result.append(o.MirrorSpec(found, _percentage(spec)))
    if "mirror" in entry.value and "mirrors" in entry.value:
        entry.report("mirrors", "mirror and mirrors cannot be used together", at_value=False)
    return tuple(result)


def _cors(entry: Fields) -> Cors | None:
    spec = entry.mapping("corsPolicy", "a mapping such as {allowOrigins: [{exact: "
                                       "https://a.example}]}")
    if spec is None:
        return None
    spec.check_keys(("allowOrigins", "allowOrigin", "allowMethods", "allowHeaders",
                     "exposeHeaders", "maxAge", "allowCredentials",
                     "unmatchedPreflights"), "a corsPolicy")
    origins: list[StringMatch] = []
    for index, item in enumerate(spec.items("allowOrigins", "origin") or []):
        how = string_match(spec.ctx, item, (*spec.path, "allowOrigins", index))
        if how is not None:
            origins.append(how)
    for index, text in enumerate(_strings(spec, "allowOrigin", "origin")):
        origins.append(StringMatch("exact", text) if text != "*" else StringMatch("regex", ".*"))
        del index
    if not origins:
        spec.report("allowOrigins", "a corsPolicy needs allowOrigins", at_value=False)
        return None
    return Cors(allow_origins=tuple(origins),
                allow_methods=_strings(spec, "allowMethods", "method", METHOD),
                allow_headers=_strings(spec, "allowHeaders", "header", fields.header_name),
                expose_headers=_strings(spec, "exposeHeaders", "header", fields.header_name),
                max_age=spec.get("maxAge", fields.duration()),
                allow_credentials=spec.get("allowCredentials", fields.boolean),
                origin=spec.origin())


# ---- DestinationRule ----------------------------------------------------------------------------

DR_KEYS = ("host", "trafficPolicy", "subsets", "exportTo", "workloadSelector")
POLICY_KEYS = ("loadBalancer", "connectionPool", "outlierDetection", "tls", "portLevelSettings",
               "tunnel", "proxyProtocol")
LB_SIMPLE = {"ROUND_ROBIN": "round_robin", "LEAST_REQUEST": "least_request",
             "LEAST_CONN": "least_request", "RANDOM": "random", "UNSPECIFIED": None}


def read_destination_rule(spec: Fields) -> o.DestinationRule | None:
    spec.check_keys(DR_KEYS, "a DestinationRule's spec")
    host = spec.get("host", _host, required=True)
    if "workloadSelector" in spec.value:
        spec.report("workloadSelector", f"workloadSelector {NOT_SUPPORTED}", at_value=False)
    subsets: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    subset_policies: list[tuple[str, o.SubsetPolicy]] = []
    names: set[str] = set()
    for index, item in enumerate(spec.items("subsets", "subset") or []):
        entry = Fields.at(spec.ctx, item, (*spec.path, "subsets", index),
                          "a mapping such as {name: v1, labels: {version: v1}}")
        if entry is None:
            continue
        entry.check_keys(("name", "labels", "trafficPolicy"), "a subset")
        name = entry.get("name", fields.name, required=True)
        labels = entry.get("labels", fields.labels) or ()
        own = entry.mapping("trafficPolicy", "a mapping such as {loadBalancer: {simple: "
                                             "ROUND_ROBIN}}")
        if name is None:
            continue
        if name in names:
            entry.report("name", f"subset {fields.quoted(name)} is defined twice")
            continue
        names.add(name)
        subsets.append((name, labels))
        if own is not None:
            subset_policies.append((name, o.SubsetPolicy(_traffic_policy(own),
                                                          _port_policies(own))))
    policy, ports = o.TrafficPolicy(), ()
    policy_spec = spec.mapping("trafficPolicy", "a mapping such as {loadBalancer: {simple: "
                                                "ROUND_ROBIN}}")
    if policy_spec is not None:
        policy = _traffic_policy(policy_spec)
        ports = _port_policies(policy_spec)
    if host is None:
        return None
    return o.DestinationRule(host, tuple(subsets), policy, ports, tuple(subset_policies))


def _port_policies(spec: Fields) -> tuple[tuple[int, o.TrafficPolicy], ...]:
    result = []
    for index, item in enumerate(spec.items("portLevelSettings", "port setting") or []):
        entry = Fields.at(spec.ctx, item, (*spec.path, "portLevelSettings", index),
                          "a mapping such as {port: {number: 9080}, loadBalancer: ...}")
        if entry is None:
            continue
        port_spec = entry.mapping("port", "a mapping such as {number: 9080}", required=True)
        number = None if port_spec is None else port_spec.get("number", fields.PORT,
                                                               required=True)
        policy = _traffic_policy(entry, port_level=True)
        if number is not None:
            result.append((number, policy))
    return tuple(result)


def _traffic_policy(spec: Fields, port_level: bool = False) -> o.TrafficPolicy:
    keys = ("port", *POLICY_KEYS[:4]) if port_level else POLICY_KEYS
    spec.check_keys(keys, "a traffic policy")
    for key in ("tunnel", "proxyProtocol"):
        if key in spec.value:
            spec.report(key, f"{key} {NOT_SUPPORTED}", at_value=False)
    lb, options, hash_on = _load_balancer(spec)
    breaker, connect_timeout, per_connection, lifetimes = _connection_pool(spec)
    outlier, panic = _outlier(spec)
    mode, upstream, credential = _tls(spec)
    mesh_sans = _mesh_sans(spec) if mode == "ISTIO_MUTUAL" else ()
    written = frozenset(key for key in POLICY_KEYS[:4] if key in spec.value)
    balancer = spec.mapping("loadBalancer", "a mapping")
    locality = None if balancer is None else _locality_lb(balancer)
    return o.TrafficPolicy(lb, options, hash_on, breaker, connect_timeout, per_connection,
                           outlier, mode, upstream, written, locality, **lifetimes,
                           panic_threshold=panic, tls_credential=credential,
                           mesh_sans=mesh_sans)


def _mesh_sans(spec: Fields) -> tuple[str, ...]:
    """ISTIO_MUTUAL's `subjectAltNames`: the SPIFFE IDs (URI SANs) an endpoint's mesh
    certificate may carry, as `spiffe://<trust domain>/ns/<namespace>/sa/<account>`."""
    entry = spec.mapping("tls", "a mapping such as {mode: ISTIO_MUTUAL}")
    return () if entry is None else _strings(entry, "subjectAltNames", "SAN", _spiffe_id)


def _spiffe_id(value: Any) -> str:
    text = fields.string(value)
    if not text.startswith("spiffe://"):
        raise Invalid(f"{fields.quoted(text)}: with tls mode ISTIO_MUTUAL a subjectAltName is "
                      "a mesh identity, spiffe://<trust domain>/ns/<namespace>/sa/<account>")
    return text


LOCALITY_KEYS = ("enabled", "distribute", "failover", "failoverPriority")
_TOPOLOGY_KEYS = ("topology.kubernetes.io/region", "topology.kubernetes.io/zone",
                  "topology.istio.io/subzone")


def _locality_lb(balancer: Fields) -> o.LocalitySetting | None:
    """`loadBalancer.localityLbSetting`, checked as Istio's validation does."""
    entry = balancer.mapping("localityLbSetting", "a mapping such as {failover: [{from: "
                                                  "us-east, to: us-west}]}")
    if entry is None:
        return None
    entry.check_keys(LOCALITY_KEYS, "a localityLbSetting")
    enabled = entry.get("enabled", fields.boolean)
    entry.exclusive(("distribute", "failover"), required=False, what="a localityLbSetting")
    distribute: list[tuple[tuple[str, tuple[tuple[str, int], ...]], Fields]] = []
    for index, item in enumerate(entry.items("distribute", "distribute rule") or []):
        rule = Fields.at(entry.ctx, item, (*entry.path, "distribute", index),
                         "a mapping such as {from: us-west/*, to: {us-west/*: 80, us-east/*: 20}}")
        found = None if rule is None else localities.distribute_rule(rule)
        if rule is not None and found is not None:
            distribute.append((found, rule))
    localities.check_overlaps([(found[0], rule, "from") for found, rule in distribute])
    failover: list[tuple[str, str]] = []
    for index, item in enumerate(entry.items("failover", "failover rule") or []):
        rule = Fields.at(entry.ctx, item, (*entry.path, "failover", index),
                         "a mapping such as {from: us-east, to: us-west}")
        found_failover = None if rule is None else localities.failover_rule(rule)
        if found_failover is not None:
            failover.append(found_failover)
    priority = _strings(entry, "failoverPriority", "label name")
    if failover:
        for index, key in enumerate(priority):
            if key in _TOPOLOGY_KEYS:
                entry.ctx.report((*entry.path, "failoverPriority", index),
                                 f"{key} cannot be in failoverPriority together with failover "
                                 "(failover already ranks by region)")
    return o.LocalitySetting(enabled, tuple(found for found, _ in distribute), tuple(failover),
                             priority, entry.path)


def _load_balancer(spec: Fields):  # type: ignore[no-untyped-def]
    entry = spec.mapping("loadBalancer", "a mapping such as {simple: LEAST_REQUEST}")
    if entry is None:
        return None, LoadBalancerOptions(), ()
    entry.check_keys(("simple", "consistentHash", "localityLbSetting", "warmupDurationSecs",
                      "warmup"), "a loadBalancer")
    warmup = _warmup(entry)
    # A loadBalancer with only a localityLbSetting (or a warmup) keeps the default algorithm
    # (Istio's).
    how = entry.exclusive(("simple", "consistentHash"), required=not (
        {"localityLbSetting", "warmup", "warmupDurationSecs"} & set(entry.value)),
        what="a loadBalancer")
    if how == "simple":
        simple = entry.get("simple", fields.choice((*LB_SIMPLE, "PASSTHROUGH")))
        if simple == "PASSTHROUGH":
            entry.report("simple", f"PASSTHROUGH {NOT_SUPPORTED}")
            return None, LoadBalancerOptions(), ()
        algorithm = None if simple is None else LB_SIMPLE[simple]
        if warmup is not None and algorithm not in (None, "round_robin", "least_request"):
            # Istio writes a slow start for ROUND_ROBIN and LEAST_REQUEST only (Envoy has
            # none for the others) and says nothing; meshpilot says so.
            entry.ctx.warn((*entry.path, "warmup"), f"a warmup applies to ROUND_ROBIN and "
                           f"LEAST_REQUEST only; {simple} ignores it")
            warmup = None
        return algorithm, LoadBalancerOptions(slow_start=warmup), ()
    if how != "consistentHash":
        return None, LoadBalancerOptions(slow_start=warmup), ()
    if warmup is not None:
        entry.ctx.warn((*entry.path, "warmup"), "a warmup applies to ROUND_ROBIN and "
                       "LEAST_REQUEST only; a consistentHash ignores it")
    if how != "consistentHash":
        return None, LoadBalancerOptions(), ()
    hashed = entry.mapping("consistentHash", "a mapping such as {httpHeaderName: x-user}")
    if hashed is None:
        return None, LoadBalancerOptions(), ()
    hashed.check_keys(("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName",
                       "ringHash", "maglev", "minimumRingSize"), "a consistentHash")
    key = hashed.exclusive(("httpHeaderName", "httpCookie", "useSourceIp",
                            "httpQueryParameterName"), required=True, what="a consistentHash")
    hash_on: tuple[HashOn, ...] = ()
    if key == "httpHeaderName":
        header = hashed.get("httpHeaderName", fields.header_name)
        hash_on = () if header is None else (HashOn("header", header),)
    elif key == "httpQueryParameterName":
        name = hashed.get("httpQueryParameterName", fields.string)
        hash_on = () if name is None else (HashOn("query", name),)
    elif key == "useSourceIp":
        if hashed.get("useSourceIp", fields.boolean):
            hash_on = (HashOn("source_ip"),)
    elif key == "httpCookie":
        cookie = hashed.mapping("httpCookie", "a mapping such as {name: user, ttl: 0s}")
        if cookie is not None:
            cookie.check_keys(("name", "path", "ttl", "attributes"), "an httpCookie")
            name = cookie.get("name", fields.string, required=True)
            if name is not None:
                hash_on = (HashOn("cookie", name, ttl=cookie.get("ttl", _duration),
                                  path=cookie.get("path", fields.url_path)),)
    algorithm = hashed.exclusive(("ringHash", "maglev"), required=False,
                                 what="a consistentHash")
    if algorithm == "maglev":
        maglev = hashed.mapping("maglev", "a mapping such as {tableSize: 65537}")
        table = None
        if maglev is not None:
            maglev.check_keys(("tableSize",), "maglev")
            table = maglev.get("tableSize", fields.integer(1, 5000011))
        return "maglev", LoadBalancerOptions(table_size=table), hash_on
    ring = hashed.mapping("ringHash", "a mapping such as {minimumRingSize: 1024}")
    minimum = hashed.get("minimumRingSize", fields.integer(1, 8_388_608))
    if ring is not None:
        ring.check_keys(("minimumRingSize",), "ringHash")
        minimum = ring.get("minimumRingSize", fields.integer(1, 8_388_608))
    return "ring_hash", LoadBalancerOptions(minimum_ring_size=minimum), hash_on


def _warmup(entry: Fields) -> SlowStart | None:
    """`warmup: {duration, minimumPercent, aggression}`, or the older `warmupDurationSecs`:
    Envoy's slow start, with Istio's defaults (linear, from 10 %)."""
    if "warmup" in entry.value:
        if "warmupDurationSecs" in entry.value:
            entry.report("warmupDurationSecs", "warmupDurationSecs is the older form of warmup: "
                                               "write one of them", at_value=False)
        warmup = entry.mapping("warmup", "a mapping such as {duration: 30s}")
        if warmup is None:
            return None
        warmup.check_keys(("duration", "minimumPercent", "aggression"), "a warmup")
        window = warmup.get("duration", fields.duration(), required=True)
        minimum = warmup.get("minimumPercent", connections.percent)
        aggression = warmup.get("aggression", connections.aggression)
        if window is None:
            return None
        return SlowStart(window, 1.0 if aggression is None else aggression,
                         10.0 if minimum is None else minimum)
    window = entry.get("warmupDurationSecs", fields.duration())
    return None if window is None else SlowStart(window)


def _connection_pool(spec: Fields):  # type: ignore[no-untyped-def]
    pool = spec.mapping("connectionPool", "a mapping such as {tcp: {maxConnections: 1}}")
    lifetimes: dict[str, Any] = {}
    if pool is None:
        return None, None, None, lifetimes
    pool.check_keys(("tcp", "http"), "a connectionPool")
    connections = connect_timeout = pending = requests = retries = per_connection = None
    idle = None
    tcp = pool.mapping("tcp", "a mapping such as {maxConnections: 100}")
    if tcp is not None:
        tcp.check_keys(("maxConnections", "connectTimeout", "tcpKeepalive",
                        "maxConnectionDuration", "idleTimeout"), "tcp")
        connections = tcp.get("maxConnections", fields.integer(1, 2**31 - 1))
        connect_timeout = tcp.get("connectTimeout", fields.duration())
        lifetimes["max_connection_duration"] = tcp.get("maxConnectionDuration",
                                                       fields.duration())
        idle = tcp.get("idleTimeout", fields.duration())
        lifetimes["tcp_keepalive"] = _tcp_keepalive(tcp)
    http = pool.mapping("http", "a mapping such as {http1MaxPendingRequests: 1}")
    if http is not None:
        http.check_keys(("http1MaxPendingRequests", "http2MaxRequests",
                         "maxRequestsPerConnection", "maxRetries", "idleTimeout",
                         "h2UpgradePolicy", "useClientProtocol", "maxConcurrentStreams"),
                        "http")
        for key in ("h2UpgradePolicy", "useClientProtocol"):
            if key in http.value:
                http.report(key, f"{key} {NOT_SUPPORTED}", at_value=False)
        count = fields.integer(1, 2**31 - 1)
        pending = http.get("http1MaxPendingRequests", count)
        requests = http.get("http2MaxRequests", count)
        per_connection = http.get("maxRequestsPerConnection", fields.integer(0, 2**31 - 1))
        retries = http.get("maxRetries", fields.integer(0, 2**31 - 1))
        # http's idle timeout first, else tcp's (Istio's order)
        idle = http.get("idleTimeout", fields.duration()) or idle
        lifetimes["max_concurrent_streams"] = http.get("maxConcurrentStreams",
                                                       fields.integer(1, 2**31 - 1))
    lifetimes["connection_idle_timeout"] = idle
    breaker = None
    if any(v is not None for v in (connections, pending, requests, retries)):
        breaker = CircuitBreaker(max_connections=connections, max_pending_requests=pending,
                                 max_requests=requests, max_retries=retries,
                                 origin=pool.origin())
    return breaker, connect_timeout, per_connection or None, lifetimes


def _tcp_keepalive(tcp: Fields) -> TcpKeepalive | None:
    keepalive = tcp.mapping("tcpKeepalive", "a mapping such as {time: 60s, interval: 10s}")
    if keepalive is None:
        return None
    keepalive.check_keys(("probes", "time", "interval"), "a tcpKeepalive")
    seconds = connections.keepalive_seconds
    return TcpKeepalive(probes=keepalive.get("probes", fields.integer(1, 1_000)),
                        time=keepalive.get("time", seconds),
                        interval=keepalive.get("interval", seconds))


def _outlier(spec: Fields) -> tuple[OutlierDetection | None, float | None]:
    """The outlier detection, and the panic threshold it sets: Istio writes
    `minHealthPercent` (0 unless written: panic off) as the cluster's healthy panic threshold
    whenever there is an outlierDetection, so ejected endpoints stay out even when most are."""
    entry = spec.mapping("outlierDetection", "a mapping such as {consecutive5xxErrors: 5}")
    if entry is None:
        return None, None
    entry.check_keys(("consecutive5xxErrors", "consecutiveGatewayErrors", "consecutiveErrors",
                      "interval", "baseEjectionTime", "maxEjectionPercent",
                      "minHealthPercent", "splitExternalLocalOriginErrors",
                      "consecutiveLocalOriginFailures"), "an outlierDetection")
    for key in ("splitExternalLocalOriginErrors", "consecutiveLocalOriginFailures"):
        if key in entry.value:
            entry.report(key, f"{key} {NOT_SUPPORTED}", at_value=False)
    count = fields.integer(0, 2**31 - 1)
    five = entry.get("consecutive5xxErrors", count)
    if five is None:
        five = entry.get("consecutiveErrors", count)
    panic = entry.get("minHealthPercent", fields.integer(0, 100))
    return OutlierDetection(
        consecutive_5xx=five,
        consecutive_gateway_errors=entry.get("consecutiveGatewayErrors", count),
        interval=entry.get("interval", fields.duration()),
        base_ejection_time=entry.get("baseEjectionTime", fields.duration()),
        max_ejection_percent=entry.get("maxEjectionPercent", fields.integer(0, 100)),
        origin=entry.origin()), float(panic or 0)


def _tls(spec: Fields):  # type: ignore[no-untyped-def]
    """A traffic policy's `tls`: its mode, the model's UpstreamTls (SIMPLE, MUTUAL) and the
    `credentialName` compile.py reads the certificates from (then the UpstreamTls has none)."""
    entry = spec.mapping("tls", "a mapping such as {mode: ISTIO_MUTUAL}")
    if entry is None:
        return None, None, None
    entry.check_keys(("mode", "sni", "caCertificates", "insecureSkipVerify",
                      "subjectAltNames", "clientCertificate", "privateKey", "credentialName"),
                     "tls")
    mode = entry.get("mode", fields.choice(("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")),
                     required=True)
    if mode != "MUTUAL":
        for key in ("clientCertificate", "privateKey"):
            if key in entry.value:
                entry.report(key, f"{key} is for tls mode MUTUAL", at_value=False)
    if mode not in ("SIMPLE", "MUTUAL"):
        for key in ("credentialName", "subjectAltNames"):
            if key == "subjectAltNames" and mode == "ISTIO_MUTUAL":
                continue  # the peer's SPIFFE IDs (_mesh_sans)
            if key in entry.value:
                entry.report(key, f"{key} with tls mode ISTIO_MUTUAL {NOT_SUPPORTED}"
                             if mode == "ISTIO_MUTUAL" else
                             f"{key} is for tls modes SIMPLE and MUTUAL", at_value=False)
        return mode, None, None
    # Any one of the names, of either type (Istio matches them against every SAN).
    sans = tuple((kind, name) for name in _strings(entry, "subjectAltNames", "SAN")
                 for kind in ("dns", "uri"))
    skip = entry.get("insecureSkipVerify", fields.boolean) or False
    credential = entry.get("credentialName", _dns_label)
    if sans and skip:
        entry.report("subjectAltNames", "subjectAltNames and insecureSkipVerify: a certificate "
                                        "not verified has no names to check", at_value=False)
        return None, None, None
    if credential is not None:
        for key in ("clientCertificate", "privateKey", "caCertificates"):
            if key in entry.value:
                entry.report(key, f"{key} and credentialName: the Secret holds the "
                                  "certificates; write one or the other", at_value=False)
                return None, None, None
        return mode, UpstreamTls(sni=entry.get("sni", fields.dns_name), verify=not skip,
                                 origin=entry.origin(), subject_alt_names=sans), \
            (credential, (*entry.path, "credentialName"))
    client = None
    if mode == "MUTUAL":  # the certificate Envoy presents to the endpoints: files
        cert = entry.get("clientCertificate", fields.string, required=True)
        key = entry.get("privateKey", fields.string, required=True)
        if cert is None or key is None:
            return None, None, None
        try:
            chain, private, _ = tls_files.read_certificate(cert, key)
        except tls_files.FieldError as problem:
            entry.report("clientCertificate" if problem.field == "cert" else "privateKey",
                         str(problem))
            return None, None, None
        client = TlsCertificate(cert, key, chain, private,
                                position=entry.ctx.document.position_of(
                                    (*entry.path, "clientCertificate")),
                                origin=entry.origin("clientCertificate"))
    ca_path = entry.get("caCertificates", fields.string)
    ca = None
    if ca_path is not None:
        try:
            ca = tls_files.read_ca(ca_path)
        except tls_files.TlsFileError as problem:
            entry.report("caCertificates", str(problem))
            return None, None, None
    verify = ca is not None and not skip
    if sans and not verify:
        entry.report("subjectAltNames", "subjectAltNames are checked against a certificate "
                                        "caCertificates verifies: write caCertificates (or "
                                        "credentialName)", at_value=False)
        return None, None, None
    return mode, UpstreamTls(sni=entry.get("sni", fields.dns_name), verify=verify,
                             ca_path=ca_path if verify else None,
                             ca=ca if verify else None, origin=entry.origin(),
                             subject_alt_names=sans, client_certificate=client), None


# ---- Sidecar ------------------------------------------------------------------------------------


def read_sidecar(spec: Fields) -> o.SidecarScope | None:
    spec.check_keys(("workloadSelector", "egress", "ingress", "outboundTrafficPolicy",
                     "inboundConnectionPool"), "a Sidecar's spec")
    for key in ("ingress", "inboundConnectionPool"):
        if key in spec.value:
            spec.report(key, f"{key} {NOT_SUPPORTED}", at_value=False)
    selector = _selector(spec, "workloadSelector", "labels")
    policy = spec.mapping("outboundTrafficPolicy", "a mapping such as {mode: REGISTRY_ONLY}")
    mode = None if policy is None else meshconfig.read_outbound_mode(policy)
    hosts: list[tuple[str, str]] = []
    ports: list[o.EgressPort] = []
    for index, item in enumerate(spec.items("egress", "egress listener", required=True) or []):
        entry = Fields.at(spec.ctx, item, (*spec.path, "egress", index),
                          "a mapping such as {hosts: [./*, istio-system/*]}")
        if entry is None:
            continue
        entry.check_keys(("hosts", "port", "bind", "captureMode"), "an egress listener")
        for key in ("bind", "captureMode"):
            if key in entry.value:
                entry.report(key, f"{key} {NOT_SUPPORTED}", at_value=False)
        port = _egress_port(entry)
        listed: list[tuple[str, str]] = []
        for h_index, written in enumerate(_strings(entry, "hosts", "host")):
            namespace, slash, host = written.partition("/")
            at = (*entry.path, "hosts", h_index)
            if not slash or not namespace or not host:
                spec.ctx.report(at, f'egress host {fields.quoted(written)}: expected '
                                    '"namespace/host" ("./*", "*/reviews.default.svc.cluster'
                                    '.local", "istio-system/*")', at_value=True)
                continue
            converted = fields.convert_at(spec.ctx, host, at, _host)
            if converted is not None:
                listed.append((namespace, converted))
        if "hosts" not in entry.value:
            entry.missing("hosts")
        if "port" not in entry.value:
            hosts.extend(listed)
        elif port is not None:
            number, protocol = port
            if any(p.number == number for p in ports):
                entry.report("port", f"another egress listener has port {number}",
                             at_value=False)
                continue
            ports.append(o.EgressPort(number, protocol, tuple(listed), (*entry.path, "port")))
    return o.SidecarScope(selector, tuple(hosts), mode, tuple(ports))


# An egress listener's protocol: its HTTP kinds get a Host-routed listener of their own; TCP
# services keep their local port (their own port number) as without a Sidecar resource.
_EGRESS_PROTOCOLS: dict[str, Literal["http", "tcp"]] = {
    "HTTP": "http", "HTTP2": "http", "GRPC": "http", "TCP": "tcp"}


def _egress_port(entry: Fields) -> tuple[int, Literal["http", "tcp"]] | None:
    """An egress listener's `port`: (number, http or tcp); HTTP when it says no protocol."""
    port = entry.mapping("port", "a mapping such as {number: 9080, protocol: HTTP, name: http}")
    if port is None:
        return None
    port.check_keys(("number", "protocol", "name", "targetPort"), "an egress listener's port")
    if "targetPort" in port.value:
        port.report("targetPort", f"targetPort {NOT_SUPPORTED}", at_value=False)
    number = port.get("number", fields.PORT, required=True)
    written = port.get("protocol", fields.string)
    port.get("name", fields.string)
    protocol = _EGRESS_PROTOCOLS.get((written or "HTTP").upper())
    if written is not None and protocol is None:
        port.report("protocol", f"protocol {fields.quoted(written)} on an egress listener "
                                f"{NOT_SUPPORTED}: HTTP, HTTP2, GRPC or TCP")
    return None if number is None or protocol is None else (number, protocol)



# ---- Gateway ------------------------------------------------------------------------------------


def read_gateway(spec: Fields) -> o.IstioGateway | None:
    spec.check_keys(("selector", "servers"), "a Gateway's spec")
    selector = spec.get("selector", fields.labels)
    if selector is None and "selector" not in spec.value:
        spec.missing("selector")
    servers = []
    for index, item in enumerate(spec.items("servers", "server", required=True) or []):
        entry = Fields.at(spec.ctx, item, (*spec.path, "servers", index),
                          "a mapping such as {port: {number: 80, protocol: HTTP}, hosts: [*]}")
        if entry is not None:
            server = _server(entry)
            if server is not None:
                servers.append(server)
    if selector is None or not servers:
        return None
    return o.IstioGateway(selector, tuple(servers))


def _server(entry: Fields) -> o.Server | None:
    entry.check_keys(("port", "hosts", "tls", "bind", "name", "defaultEndpoint"), "a server")
    if "defaultEndpoint" in entry.value:
        entry.report("defaultEndpoint", f"defaultEndpoint {NOT_SUPPORTED}", at_value=False)
    port_spec = entry.mapping("port", "a mapping such as {number: 80, name: http, "
                                      "protocol: HTTP}", required=True)
    number = protocol = None
    name = ""
    if port_spec is not None:
        port_spec.check_keys(("number", "name", "protocol", "targetPort"), "a port")
        number = port_spec.get("number", fields.PORT, required=True)
        name = port_spec.get("name", fields.string) or ""
        protocol = port_spec.get("protocol", lambda v: fields.choice(PROTOCOLS)(
            fields.string(v).upper()), required=True)
        if protocol is not None and protocol not in SERVER_PROTOCOLS:
            port_spec.report("protocol", f"a {protocol} server {NOT_SUPPORTED}; HTTP, HTTP2, "
                                         "GRPC, HTTPS, TCP and TLS are")
            protocol = None
    hosts = []
    for index, host in enumerate(_strings(entry, "hosts", "host")):
        namespace, _, bare = host.rpartition("/")
        del namespace
        converted = fields.convert_at(entry.ctx, bare, (*entry.path, "hosts", index), _host)
        if converted is not None:
            hosts.append(converted)
    if "hosts" not in entry.value:
        entry.missing("hosts")
    bind = entry.get("bind", fields.ip_address)
    kind = SERVER_PROTOCOLS.get(protocol or "")
    mode = _mode_of(entry)
    if kind == "HTTPS" and mode in ("PASSTHROUGH", "AUTO_PASSTHROUGH"):
        kind = "TLS"  # Istio: an HTTPS server passed through is a TLS one
    # Istio: a TLS server whose TLS the gateway ends sends the plaintext by the tcp routes.
    ended = kind == "TLS" and mode in ENDED_MODES
    tls, redirect, credential = None, False, None
    auto = mesh = False
    if kind == "TCP" or (kind == "TLS" and not ended):
        passed = _passthrough(entry, kind)
        if passed is None and kind == "TLS":
            return None
        auto = passed == "AUTO_PASSTHROUGH"
    elif mode == "ISTIO_MUTUAL" and kind in ("HTTPS", "TLS"):
        mesh = _istio_mutual(entry, kind)
        if not mesh:
            return None
    else:
        tls, redirect, credential = _server_tls(entry, "HTTPS" if ended else protocol)
        if ended and tls is None and credential is None:
            return None
    if number is None or kind is None or not hosts:
        return None
    return o.Server(number, name, cast(Any, kind), tuple(hosts), tls, redirect, bind,
                    entry.path, credential, auto, mesh_mutual=mesh)


# A server's protocol -> what meshpilot makes of it (TCP ones: a TCP proxy, no HTTP; HTTP
# ones take HTTP/1.1 and HTTP/2 without TLS, h2c, which gRPC clients speak).
SERVER_PROTOCOLS = {"HTTP": "HTTP", "HTTP2": "HTTP", "GRPC": "HTTP", "HTTPS": "HTTPS",
                    "TCP": "TCP", "MONGO": "TCP", "MYSQL": "TCP", "REDIS": "TCP", "TLS": "TLS"}
# The tls modes in which the gateway ends TLS itself.
ENDED_MODES = ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL", "ISTIO_MUTUAL")


def _istio_mutual(entry: Fields, kind: str) -> bool:
    """tls mode ISTIO_MUTUAL: the gateway shows its mesh identity's certificate and requires
    one of the mesh CA's from the client; nothing else is said (Istio: the certificate
    fields must be empty). Whether it is valid."""
    spec = entry.mapping("tls", "a mapping such as {mode: ISTIO_MUTUAL}")
    if spec is None:
        return False
    spec.check_keys(("httpsRedirect", "mode", "serverCertificate", "privateKey",
                     "caCertificates", "credentialName", "credentialNames", "subjectAltNames",
                     "minProtocolVersion", "maxProtocolVersion", "cipherSuites"), "tls")
    valid = True
    for key in spec.value:
        if key != "mode":
            spec.report(key, f"{key} is not for tls mode ISTIO_MUTUAL (the mesh CA's "
                             f"certificates are used){' on a TLS server' if kind == 'TLS' else ''}",
                        at_value=False)
            valid = False
    return valid


def _mode_of(entry: Fields) -> Any:
    spec = entry.value.get("tls")
    return spec.get("mode") if isinstance(spec, dict) else None


def _passthrough(entry: Fields, kind: str) -> str | None:
    """A TCP server takes no tls; a TLS one must pass it through (by SNI: to tls routes, or,
    AUTO_PASSTHROUGH, to the service the SNI names). The mode of a valid TLS passthrough
    server, else None."""
    spec = entry.mapping("tls", "a mapping such as {mode: PASSTHROUGH}")
    if kind == "TCP":
        if spec is not None:
            entry.report("tls", "a TCP server takes no tls (TLS is protocol TLS)",
                         at_value=False)
        return None
    if spec is None:
        entry.report("tls", "a TLS server needs tls: {mode: PASSTHROUGH} (or SIMPLE, MUTUAL, "
                            "ISTIO_MUTUAL: the gateway ends TLS)", at_value=False)
        return None
    spec.check_keys(("mode", "serverCertificate", "privateKey", "caCertificates",
                     "credentialName", "credentialNames", "subjectAltNames",
                     "minProtocolVersion", "maxProtocolVersion", "cipherSuites",
                     "httpsRedirect"), "tls")
    mode = spec.get("mode", fields.choice(("SIMPLE", "MUTUAL", "PASSTHROUGH",
                                           "AUTO_PASSTHROUGH", "ISTIO_MUTUAL",
                                           "OPTIONAL_MUTUAL")), required=True)
    if mode is None:
        return None
    for key in spec.value:
        if key != "mode":
            spec.report(key, f"{key} is not for tls mode {mode} (the backend ends TLS)",
                        at_value=False)
    return cast(str, mode)


def _server_tls(entry: Fields, protocol: str | None
                ) -> tuple[ListenerTls | None, bool, o.Credential | None]:
    spec = entry.mapping("tls", "a mapping such as {mode: SIMPLE, credentialName: my-cert}")
    if spec is None:
        if protocol == "HTTPS":
            entry.report("tls", "an HTTPS server needs tls", at_value=False)
        return None, False, None
    tls, redirect = _files_tls(spec, protocol)
    names = _credential_names(spec) if protocol == "HTTPS" else ()
    if not names:
        return tls, redirect, None
    mode = spec.value.get("mode")
    if mode not in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL"):
        return None, redirect, None
    versions = {"TLSV1_2": "1.2", "TLSV1_3": "1.3", "TLS_AUTO": None}
    minimum = spec.get("minProtocolVersion", fields.choice(tuple(versions)))
    return None, redirect, o.Credential(names, mode != "SIMPLE",
                                        cast(Any, versions.get(minimum or "TLS_AUTO")),
                                        spec.path, optional=mode == "OPTIONAL_MUTUAL",
                                        client_sans=_client_sans(spec, mode))


def _credential_names(spec: Fields) -> tuple[str, ...]:
    """`credentialName`, or `credentialNames` (up to two: say an RSA and an ECDSA
    certificate), checked against the file fields they replace."""
    single = spec.get("credentialName", _dns_label)
    several = _strings(spec, "credentialNames", "Secret name", _dns_label)
    if single is not None and several:
        spec.report("credentialNames", "credentialNames replaces credentialName: write one",
                    at_value=False)
        return ()
    if len(several) > 2:
        spec.report("credentialNames", "at most two Secrets (Istio's): one certificate per "
                                       "key type")
        return ()
    names = (single,) if single is not None else several
    if names:
        for key in ("serverCertificate", "privateKey", "caCertificates"):
            if key in spec.value:
                spec.report(key, f"{key} and credentialName: the Secret holds the "
                                 "certificates; write one or the other", at_value=False)
                return ()
    return names


def _files_tls(spec: Fields, protocol: str | None) -> tuple[ListenerTls | None, bool]:
    spec.check_keys(("httpsRedirect", "mode", "serverCertificate", "privateKey",
                     "caCertificates", "credentialName", "credentialNames", "subjectAltNames",
                     "minProtocolVersion", "maxProtocolVersion", "cipherSuites"), "tls")
    redirect = spec.get("httpsRedirect", fields.boolean) or False
    if protocol != "HTTPS":
        for key in spec.value:
            if key != "httpsRedirect":
                spec.report(key, f"{key} is for HTTPS servers", at_value=False)
        return None, redirect
    for key in ("maxProtocolVersion", "cipherSuites"):
        if key in spec.value:
            spec.report(key, f"{key} {NOT_SUPPORTED}", at_value=False)
    mode = spec.get("mode", fields.choice(("SIMPLE", "MUTUAL", "PASSTHROUGH",
                                           "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL")),
                    required=True)
    if mode is not None and mode not in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL"):
        spec.report("mode", f"tls mode {mode} {NOT_SUPPORTED}; SIMPLE, MUTUAL and "
                            "OPTIONAL_MUTUAL are")
        return None, redirect
    if "credentialName" in spec.value or "credentialNames" in spec.value:
        return None, redirect  # (_credential_names reads them)
    mutual = mode in ("MUTUAL", "OPTIONAL_MUTUAL")
    client_sans = _client_sans(spec, mode)
    client_ca = None
    ca_path = spec.get("caCertificates", fields.string, required=mutual)
    if not mutual and ca_path is not None:
        spec.report("caCertificates", "caCertificates (the clients' CA) is for tls modes MUTUAL "
                                      "and OPTIONAL_MUTUAL", at_value=False)
        return None, redirect
    if ca_path is not None:
        try:
            client_ca = tls_files.read_ca(ca_path)
        except tls_files.TlsFileError as problem:
            spec.report("caCertificates", str(problem))
            return None, redirect
    elif mutual:
        return None, redirect
    cert = spec.get("serverCertificate", fields.string, required=True)
    key = spec.get("privateKey", fields.string, required=True)
    versions = {"TLSV1_2": "1.2", "TLSV1_3": "1.3", "TLS_AUTO": None}
    minimum = spec.get("minProtocolVersion", fields.choice(tuple(versions)))
    if cert is None or key is None:
        return None, redirect
    try:
        chain, private, _ = tls_files.read_certificate(cert, key)
    except tls_files.FieldError as problem:
        spec.report("serverCertificate" if problem.field == "cert" else "privateKey",
                    str(problem))
        return None, redirect
    certificate = TlsCertificate(cert, key, chain, private,
                                 position=spec.ctx.document.position_of(
                                     (*spec.path, "serverCertificate")),
                                 origin=spec.origin("serverCertificate"))
    return ListenerTls((certificate,), cast(Any, versions.get(minimum or "TLS_AUTO")),
                       origin=spec.origin(), client_ca=client_ca,
                       client_ca_path=ca_path, client_may_omit=mode == "OPTIONAL_MUTUAL",
                       client_subject_alt_names=client_sans), redirect


def _client_sans(spec: Fields, mode: Any) -> tuple[tuple[Literal["dns", "uri"], str], ...]:
    """A server's `subjectAltNames`: the client's certificate must carry one of them, of
    either type (as Istio's gateway matches them); only with a client certificate."""
    if "subjectAltNames" in spec.value and mode not in ("MUTUAL", "OPTIONAL_MUTUAL"):
        spec.report("subjectAltNames", "subjectAltNames (of the client's certificate) is for "
                                       "tls modes MUTUAL and OPTIONAL_MUTUAL", at_value=False)
        return ()
    return tuple((kind, name) for name in _strings(spec, "subjectAltNames", "SAN")
                 for kind in ("dns", "uri"))


# ---- security -----------------------------------------------------------------------------------

MTLS = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


def read_peer_authentication(spec: Fields) -> o.PeerAuthentication | None:
    spec.check_keys(("selector", "mtls", "portLevelMtls"), "a PeerAuthentication's spec")
    selector = _selector(spec)
    mode = "UNSET"
    mtls = spec.mapping("mtls", "a mapping such as {mode: STRICT}")
    if mtls is not None:
        mtls.check_keys(("mode",), "mtls")
        mode = mtls.get("mode", fields.choice(MTLS)) or "UNSET"
    ports: list[tuple[int, str]] = []
    levels = spec.mapping("portLevelMtls", "a mapping of ports to {mode: ...}")
    if levels is not None:
        if selector is None:
            levels.report("", "portLevelMtls needs a selector (Istio)", at_value=False)
        for written, value in levels.value.items():
            at = (*levels.path, written)
            port = fields.convert_at(spec.ctx, written, at, lambda v: fields.PORT(int(v)))
            entry = Fields.at(spec.ctx, value, at, "a mapping such as {mode: DISABLE}")
            if entry is None or port is None:
                continue
            entry.check_keys(("mode",), "a port's mtls")
            port_mode = entry.get("mode", fields.choice(MTLS)) or "UNSET"
            ports.append((port, port_mode))
    return o.PeerAuthentication(selector, cast(Any, mode),
                                tuple(sorted(cast(Any, ports))))


def read_authorization_policy(spec: Fields) -> o.AuthorizationPolicy | None:
    spec.check_keys(("selector", "targetRef", "targetRefs", "action", "provider", "rules"),
                    "an AuthorizationPolicy's spec")
    for key in ("targetRef", "targetRefs"):
        if key in spec.value:
            spec.report(key, f"{key} {NOT_SUPPORTED}", at_value=False)
    selector = _selector(spec)
    action = spec.get("action", fields.choice(("ALLOW", "DENY", "AUDIT", "CUSTOM"))) or "ALLOW"
    provider = None
    written = spec.mapping("provider", "a mapping such as {name: my-ext-authz}")
    if action == "CUSTOM" and written is None and "provider" not in spec.value:
        spec.report("action", "action CUSTOM needs a provider: {name: ...} (one of MeshConfig's "
                              "extensionProviders)")
    elif written is not None:
        written.check_keys(("name",), "a provider")
        provider = written.get("name", fields.string, required=True)
        if action != "CUSTOM":
            spec.report("provider", f"provider is for action CUSTOM (this policy is {action})",
                        at_value=False)
    rules = []
    value = spec.value.get("rules")
    if value is not None and not isinstance(value, list):
        spec.report("rules", f"expected a list of rules, found {fields.describe(value)}")
    for index, item in enumerate(value if isinstance(value, list) else []):
        entry = Fields.at(spec.ctx, item, (*spec.path, "rules", index),
                          "a mapping such as {from: [...], to: [...], when: [...]}")
        if entry is not None:
            rules.append(_authz_rule(entry))
    return o.AuthorizationPolicy(selector, cast(Any, action), tuple(rules), provider=provider)


def _authz_rule(entry: Fields) -> o.AuthzRuleSpec:
    entry.check_keys(("from", "to", "when"), "a rule")
    sources = operations = None
    if "from" in entry.value:
        sources = tuple(_source(entry, i, item)
                        for i, item in enumerate(entry.items("from", "source") or []))
    if "to" in entry.value:
        operations = tuple(_operation(entry, i, item)
                           for i, item in enumerate(entry.items("to", "operation") or []))
    when = []
    for index, item in enumerate(entry.items("when", "condition") or []):
        cond = Fields.at(entry.ctx, item, (*entry.path, "when", index),
                         "a mapping such as {key: request.headers[x-user], values: [a]}")
        if cond is None:
            continue
        cond.check_keys(("key", "values", "notValues"), "a condition")
        key = cond.get("key", fields.string, required=True)
        values = _strings(cond, "values", "value")
        not_values = _strings(cond, "notValues", "value")
        if key is not None and key.startswith(o.FILTERS_KEY):
            for written, items in (("values", values), ("notValues", not_values)):
                for at, value in enumerate(items):
                    if not value or value == "[]" or any(c in value[1:-1] for c in "[]"):
                        cond.ctx.report((*cond.path, written, at),
                                        f"value {fields.quoted(value)}: a string, "
                                        "or [a string] for a list's element")
        if key is not None:
            problem = condition_problem(key)
            if problem:
                cond.report("key", problem)
            when.append(o.Condition(key, values, not_values))
    return o.AuthzRuleSpec(sources, operations, tuple(when))


def condition_problem(key: str) -> str | None:
    if key in ("source.ip", "remote.ip", "source.namespace", "source.principal",
               "request.auth.principal", "request.auth.audiences", "request.auth.presenter",
               "destination.ip", "destination.port", "connection.sni") \
            or re.fullmatch(r"request\.headers\[[^\]]+\]", key) \
            or o.claim_path(key) is not None or o.filter_metadata_key(key) is not None:
        return None
    if key.startswith(o.CLAIMS_KEY):
        return f"{key}: a claim is request.auth.claims[name] or, nested, [a][b]"
    if key.startswith(o.FILTERS_KEY):
        return (f"{key}: expected experimental.envoy.filters.<filter name>[<metadata key>] "
                f"(one key: nested keys {NOT_SUPPORTED})")
    return f"condition key {fields.quoted(key)} {NOT_SUPPORTED}"


def _cidr(value: Any) -> str:
    text = fields.string(value)
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise Invalid(f"invalid IP or CIDR {fields.quoted(text)}") from None


def _source(entry: Fields, index: int, item: Any) -> o.Source:
    outer = Fields.at(entry.ctx, item, (*entry.path, "from", index),
                      "a mapping such as {source: {principals: [...]}}")
    if outer is None:
        return o.Source()
    outer.check_keys(("source",), "a from entry")
    spec = outer.mapping("source", "a mapping such as {principals: [...]}", required=True)
    if spec is None:
        return o.Source()
    spec.check_keys(("principals", "notPrincipals", "requestPrincipals",
                     "notRequestPrincipals", "namespaces", "notNamespaces", "ipBlocks",
                     "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
                     "serviceAccounts", "notServiceAccounts"), "a source")
    return o.Source(
        principals=_strings(spec, "principals", "principal"),
        not_principals=_strings(spec, "notPrincipals", "principal"),
        request_principals=_strings(spec, "requestPrincipals", "principal"),
        not_request_principals=_strings(spec, "notRequestPrincipals", "principal"),
        namespaces=_strings(spec, "namespaces", "namespace"),
        not_namespaces=_strings(spec, "notNamespaces", "namespace"),
        ip_blocks=_strings(spec, "ipBlocks", "CIDR", _cidr),
        not_ip_blocks=_strings(spec, "notIpBlocks", "CIDR", _cidr),
        remote_ip_blocks=_strings(spec, "remoteIpBlocks", "CIDR", _cidr),
        not_remote_ip_blocks=_strings(spec, "notRemoteIpBlocks", "CIDR", _cidr),
        service_accounts=_strings(spec, "serviceAccounts", "service account", _account),
        not_service_accounts=_strings(spec, "notServiceAccounts", "service account", _account))


def _account(value: Any) -> str:
    """Istio's "namespace/name" or "name"; neither part empty, no wildcard."""
    text = fields.string(value)
    parts = text.split("/")
    if len(parts) > 2 or not all(parts) or "*" in text:
        raise Invalid(f'service account {fields.quoted(text)}: "namespace/name" or "name"')
    return text


def _operation(entry: Fields, index: int, item: Any) -> o.Operation:
    outer = Fields.at(entry.ctx, item, (*entry.path, "to", index),
                      "a mapping such as {operation: {methods: [GET]}}")
    if outer is None:
        return o.Operation()
    outer.check_keys(("operation",), "a to entry")
    spec = outer.mapping("operation", "a mapping such as {methods: [GET]}", required=True)
    if spec is None:
        return o.Operation()
    spec.check_keys(("hosts", "notHosts", "ports", "notPorts", "methods", "notMethods",
                     "paths", "notPaths"), "an operation")
    port = lambda v: fields.port_text(fields.string(v))  # noqa: E731
    return o.Operation(
        hosts=_strings(spec, "hosts", "host"), not_hosts=_strings(spec, "notHosts", "host"),
        ports=tuple(int(p) for p in _strings(spec, "ports", "port", lambda v: str(port(v)))),
        not_ports=tuple(int(p) for p in _strings(spec, "notPorts", "port",
                                                  lambda v: str(port(v)))),
        methods=_strings(spec, "methods", "method"),
        not_methods=_strings(spec, "notMethods", "method"),
        paths=_strings(spec, "paths", "path"), not_paths=_strings(spec, "notPaths", "path"))


def read_request_authentication(spec: Fields) -> o.RequestAuthentication | None:
    spec.check_keys(("selector", "targetRef", "targetRefs", "jwtRules"),
                    "a RequestAuthentication's spec")
    for key in ("targetRef", "targetRefs"):
        if key in spec.value:
            spec.report(key, f"{key} {NOT_SUPPORTED}", at_value=False)
    selector = _selector(spec)
    rules = []
    for index, item in enumerate(spec.items("jwtRules", "JWT rule") or []):
        entry = Fields.at(spec.ctx, item, (*spec.path, "jwtRules", index),
                          "a mapping such as {issuer: ..., jwksUri: ...}")
        if entry is None:
            continue
        entry.check_keys(("issuer", "audiences", "jwksUri", "jwks", "fromHeaders", "fromParams",
                          "outputPayloadToHeader", "forwardOriginalToken", "fromCookies",
                          "outputClaimToHeaders", "timeout"), "a JWT rule")
        if "timeout" in entry.value:
            entry.report("timeout", f"timeout {NOT_SUPPORTED}", at_value=False)
        issuer = entry.get("issuer", fields.string, required=True)
        headers = []
        for h_index, h_item in enumerate(entry.items("fromHeaders", "header") or []):
            header = Fields.at(entry.ctx, h_item, (*entry.path, "fromHeaders", h_index),
                               "a mapping such as {name: x-jwt, prefix: 'Bearer '}")
            if header is None:
                continue
            header.check_keys(("name", "prefix"), "a header")
            name = header.get("name", fields.header_name, required=True)
            if name is not None:
                headers.append((name, header.get("prefix", fields.any_string) or ""))
        jwks = entry.get("jwks", fields.string)
        jwks_uri = entry.get("jwksUri", fields.string)
        if jwks is None and jwks_uri is None:
            entry.report("jwksUri", "a JWT rule needs jwks or jwksUri (meshpilot does not "
                                    "discover keys from the issuer)", at_value=False)
        if issuer is not None:
            rules.append(o.JwtRule(
                issuer, jwks, jwks_uri, _strings(entry, "audiences", "audience"),
                tuple(headers), _strings(entry, "fromParams", "parameter"),
                entry.get("forwardOriginalToken", fields.boolean) or False,
                entry.get("outputPayloadToHeader", fields.header_name),
                _strings(entry, "fromCookies", "cookie name"), _claim_to_headers(entry)))
    return o.RequestAuthentication(selector, tuple(rules))


def _claim_to_headers(entry: Fields) -> tuple[tuple[str, str], ...]:
    """A JWT rule's `outputClaimToHeaders`: (claim, header) pairs, one claim per header."""
    pairs: list[tuple[str, str]] = []
    for index, item in enumerate(entry.items("outputClaimToHeaders", "claim to header") or []):
        spec = Fields.at(entry.ctx, item, (*entry.path, "outputClaimToHeaders", index),
                         "a mapping such as {header: x-user, claim: sub}")
        if spec is None:
            continue
        spec.check_keys(("header", "claim"), "a claim to header")
        header = spec.get("header", fields.header_name, required=True)
        claim = spec.get("claim", fields.string, required=True)
        if header is None or claim is None:
            continue
        if any(header == taken for _, taken in pairs):
            spec.report("header", f'header "{header}" receives two claims')
            continue
        pairs.append((claim, header))
    return tuple(pairs)
