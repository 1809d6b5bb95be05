"""`kind: Gateway`: the listeners of one edge Envoy, as one `model.Gateway`.

This module owns the Gateway document's shape and what can be checked within it (listener names
unique in the gateway, which options go with which protocol). It must not look at other
documents: port conflicts, between the gateway's own listeners or with other gateways, are
checked over the whole folder by `references.py`, and so are a tcp listener's service and the
Routes that attach to a gateway.

Shape:

    kind: Gateway
    name: edge                       # also the node cluster of the gateway's Envoys
    access_log: {path: /dev/stdout}  # optional: every listener's default (format: json | text)
    locality: us-east/us-east-1a     # optional: where its Envoys run (region[/zone[/subzone]]):
                                     # Services with locality_lb rank endpoints for it
    listeners:                       # at least one
      - {name: http, port: 8080}
      - name: api
        port: 9000
        address: 127.0.0.1           # an IP to bind (default 0.0.0.0)
        protocol: http               # http (default) | tcp
        trust_request_id: true       # keep a client's x-request-id (default: Envoy replaces it)
        request_id_in_response: true # x-request-id in every response
        access_log: {path: /var/log/envoy/api.log, format: json}
        compression: {gzip: true, min_content_length: 100, content_types: [application/json]}
        websocket: true              # allow websocket upgrades
      - {name: db, port: 5432, protocol: tcp, service: postgres}
                                     # tcp: every connection to the Service (protocol tcp)
      - name: https
        port: 8443
        protocol: https              # http over TLS: needs tls
        tls:
          certificates:              # Envoy picks by SNI (the certificates' SANs); first: default
            - {cert: /etc/tls/shop.pem, key: /etc/tls/shop.key}
          min_version: "1.3"         # "1.2" (Envoy's default) | "1.3"
          alpn: [h2, http/1.1]       # the default
      - {name: plain, port: 8080, redirect_to_https: 8443}
                                     # every request: 301 to https://host:8443/path (true: 443)
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Any, Literal, cast

from meshpilot.inputs.context import DocumentContext
from meshpilot.inputs.native import fields, tls
from meshpilot.inputs.native import locality as localities
from meshpilot.inputs.native.fields import (
    Fields,
    Invalid,
    convert_at,
    issue_count,
    reported_since,
    written_before,
)
from meshpilot.inputs.native.security import cidr
from meshpilot.inputs.yamlsource import FieldPath, Located
from meshpilot.ir.model import (
    AccessLog,
    ClientIp,
    Compression,
    CompressionAlgorithm,
    Decompression,
    Gateway,
    GatewayListener,
    Tracing,
)

KIND = "Gateway"

GATEWAY_KEYS = ("kind", "name", "access_log", "listeners", "tracing", "locality")
LISTENER_KEYS = ("name", "port", "address", "protocol", "service", "access_log",
                 "trust_request_id", "request_id_in_response", "compression", "websocket",
                 "tls", "redirect_to_https", "client_ip", "tracing", "decompression",
                 "max_requests_per_connection")
CLIENT_IP_KEYS = ("xff_trusted_hops", "trusted_cidrs", "header")
LISTENER_PROTOCOLS = ("http", "https", "tcp")
HTTP_ONLY_KEYS = ("trust_request_id", "request_id_in_response", "compression", "websocket",
                  "tls", "redirect_to_https", "client_ip", "tracing", "decompression",
                  "max_requests_per_connection")
ACCESS_LOG_KEYS = ("path", "format")
ACCESS_LOG_FORMATS = ("json", "text")
ALGORITHMS = ("brotli", "zstd", "gzip")  # in order of preference
COMPRESSION_KEYS = (*ALGORITHMS, "min_content_length", "content_types")
DECOMPRESSION_KEYS = ALGORITHMS
TRACING_KEYS = ("provider", "collector", "sampling", "service_name", "path")
TRACING_PROVIDERS = ("opentelemetry", "zipkin")
_TRACING_PROVIDER = fields.choice(TRACING_PROVIDERS)

_LISTENER_PROTOCOL = fields.choice(LISTENER_PROTOCOLS)
_ACCESS_LOG_FORMAT = fields.choice(ACCESS_LOG_FORMATS)
# type/subtype, as a Content-Type header starts (RFC 9110 token characters).
_MEDIA_TYPE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+/[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


def parse_gateway(document: Located, ctx: DocumentContext) -> list[Gateway]:
    """The document's Gateway, or nothing if anything in it was reported."""
    mark = issue_count(ctx)
    doc = Fields(ctx, document.value)
    doc.check_keys(GATEWAY_KEYS, "a Gateway")
    name = doc.get("name", fields.name)
    default_log = _access_log(doc)
    default_tracing = parse_tracing(doc)
    where = doc.get("locality", localities.locality)
    listeners = _listeners(doc, default_log, default_tracing)
    if reported_since(ctx, mark) or name is None:
        return []
    return [Gateway(name=name, position=document.position, listeners=listeners,
                    origin=ctx.origin(), locality=where)]


def _listeners(doc: Fields, default_log: AccessLog | None,
               default_tracing: Tracing | None = None) -> tuple[GatewayListener, ...]:
    items = doc.items("listeners", "listener", required=True)
    if items is None:
        return ()
    listeners: list[GatewayListener] = []
    seen: dict[Hashable, FieldPath] = {}
    for index, item in enumerate(items):
        listener = _listener(doc.ctx, item, ("listeners", index), default_log, default_tracing)
        if listener is None:
            continue
        path = ("listeners", index, "name")
        first = written_before(doc.ctx, seen, listener.name, path)
        if first is not None:
            doc.ctx.report(path, f"another listener of this Gateway is named "
                                 f"{fields.quoted(listener.name)} (at {first})", at_value=True)
            continue
        listeners.append(listener)
    return tuple(listeners)


def _listener(ctx: DocumentContext, item: Any, path: tuple[str | int, ...],
              default_log: AccessLog | None,
              default_tracing: Tracing | None = None) -> GatewayListener | None:
    entry = Fields.at(ctx, item, path, "a listener mapping such as {name: http, port: 8080}")
    if entry is None:
        return None
    entry.check_keys(LISTENER_KEYS, "a listener")
    name = entry.get("name", fields.name, required=True)
    port = entry.get("port", fields.PORT, required=True)
    address = entry.get("address", fields.ip_address) or "0.0.0.0"
    protocol = entry.get("protocol", _LISTENER_PROTOCOL) or "http"
    access_log = _access_log(entry) or default_log
    if protocol == "tcp":
        service = entry.get("service", fields.name, required=True)
        for key in HTTP_ONLY_KEYS:
            if key in entry.value:
                entry.report(key, f'"{key}" is an HTTP option; this listener has protocol tcp',
                             at_value=False)
        if name is None or port is None or service is None:
            return None
        return GatewayListener(name=name, port=port, address=address, protocol="tcp",
                               service=service, access_log=access_log, origin=entry.origin())
    if "service" in entry.value:
        entry.report("service", '"service" is for protocol tcp listeners; an HTTP listener '
                                "serves the Routes attached to it", at_value=False)
    trust = entry.get("trust_request_id", fields.boolean) or False
    in_response = entry.get("request_id_in_response", fields.boolean) or False
    compression = _compression(entry)
    decompression = _decompression(entry)
    max_requests = entry.get("max_requests_per_connection", fields.integer(1, 4_294_967_295))
    websocket = entry.get("websocket", fields.boolean) or False
    listener_tls, redirect = tls.listener_tls(entry, protocol)
    client_ip = _client_ip(entry)
    tracing = parse_tracing(entry) if "tracing" in entry.value else default_tracing
    if name is None or port is None:
        return None
    # `protocol: https` is an HTTP listener that terminates TLS: Routes attach to it alike.
    return GatewayListener(name=name, port=port, address=address,
                           protocol=cast(Literal["http"], "http"), access_log=access_log,
                           trust_request_id=trust, request_id_in_response=in_response,
                           compression=compression, websocket=websocket, tls=listener_tls,
                           redirect_to_https=redirect, origin=entry.origin(),
                           client_ip=client_ip, tracing=tracing, decompression=decompression,
                           max_requests_per_connection=max_requests)


_TRUSTED_HOPS = fields.integer(1, 32)


def _client_ip(entry: Fields) -> ClientIp | None:
    """`client_ip`: exactly one of xff_trusted_hops (trust that many proxies in front),
    trusted_cidrs (trust X-Forwarded-For written by proxies at these addresses) or header (a
    proxy in front puts the client's address in this header)."""
    spec = entry.mapping("client_ip", "a mapping such as {xff_trusted_hops: 1}, "
                                      "{trusted_cidrs: [10.0.0.0/8]} or {header: x-real-ip}")
    if spec is None:
        return None
    spec.check_keys(CLIENT_IP_KEYS, "client_ip")
    kind = spec.exclusive(CLIENT_IP_KEYS, required=True, what="client_ip")
    if kind == "xff_trusted_hops":
        hops = spec.get("xff_trusted_hops", _TRUSTED_HOPS, required=True)
        return None if hops is None else ClientIp(xff_trusted_hops=hops, origin=spec.origin())
    if kind == "trusted_cidrs":
        cidrs = fields.unique_list(spec, "trusted_cidrs", "CIDR range", cidr)
        return ClientIp(trusted_cidrs=cidrs, origin=spec.origin()) if cidrs else None
    if kind == "header":
        header = spec.get("header", fields.header_name, required=True)
        if header is not None and (header.startswith(":") or header == "host"):
            spec.report("header", f'"{header}" cannot carry an address')
            return None
        return None if header is None else ClientIp(header=header, origin=spec.origin())
    return None


def _log_path(value: Any) -> str:
    text = fields.string(value)
    if not text.startswith("/"):
        raise Invalid(f"an access log path must be absolute (start with \"/\"), found "
                      f"{fields.quoted(text)}")
    if not text.isprintable() or "\x00" in text:
        raise Invalid(f"invalid path {fields.quoted(text)}")
    return text


def _access_log(parent: Fields) -> AccessLog | None:
    entry = parent.mapping("access_log", "a mapping such as {path: /dev/stdout, format: json}")
    if entry is None:
        return None
    entry.check_keys(ACCESS_LOG_KEYS, "an access_log")
    path = entry.get("path", _log_path, required=True)
    log_format = entry.get("format", _ACCESS_LOG_FORMAT) or "json"
    if path is None:
        return None
    return AccessLog(path=path, format=cast(Literal["json", "text"], log_format),
                     origin=entry.origin())


def _media_type(value: Any) -> str:
    text = fields.string(value)
    if not _MEDIA_TYPE.match(text):
        raise Invalid(f"invalid content type {fields.quoted(text)}: expected type/subtype, "
                      "e.g. application/json")
    return text.lower()


def _compression(parent: Fields) -> Compression | None:
    entry = parent.mapping("compression", "a mapping such as {gzip: true}")
    if entry is None:
        return None
    entry.check_keys(COMPRESSION_KEYS, "compression")
    algorithms = _algorithms(entry, "compression", "compresses responses with")
    minimum = entry.get("min_content_length", fields.UINT32)
    types: list[str] = []
    items = entry.items("content_types", "content type")
    for index, item in enumerate(items or ()):
        converted = convert_at(entry.ctx, item, (*entry.path, "content_types", index),
                               _media_type)
        if converted is not None:
            types.append(converted)
    if not algorithms:
        return None
    return Compression(min_content_length=minimum, content_types=tuple(types),
                       origin=entry.origin(), algorithms=algorithms)


def _algorithms(entry: Fields, what: str, verb: str) -> tuple[CompressionAlgorithm, ...]:
    """The algorithms set `true` in `entry`, in order of preference; at least one."""
    chosen = tuple(cast(CompressionAlgorithm, algorithm) for algorithm in ALGORITHMS
                   if entry.get(algorithm, fields.true_only))
    if not chosen and not any(algorithm in entry.value for algorithm in ALGORITHMS):
        entry.ctx.report(entry.path, f"{what} names no algorithm: set one or more of "
                                     f"{fields.one_of_words(ALGORITHMS)} to true (it "
                                     f"{verb} them)")
    return chosen


def _decompression(parent: Fields) -> Decompression | None:
    entry = parent.mapping("decompression", "a mapping such as {gzip: true, brotli: true}")
    if entry is None:
        return None
    entry.check_keys(DECOMPRESSION_KEYS, "decompression")
    algorithms = _algorithms(entry, "decompression", "inflates request bodies sent in")
    return Decompression(algorithms=algorithms, origin=entry.origin()) if algorithms else None


def parse_tracing(parent: Fields) -> Tracing | None:
    """`tracing:` of a gateway, a listener or a sidecar."""
    entry = parent.mapping("tracing", "a mapping such as {provider: opentelemetry, "
                                      "collector: otel-collector}")
    if entry is None:
        return None
    entry.check_keys(TRACING_KEYS, "tracing")
    provider = entry.get("provider", _TRACING_PROVIDER, required=True)
    collector = entry.get("collector", fields.name, required=True)
    sampling = entry.get("sampling", _percent)
    service_name = entry.get("service_name", _span_service_name)
    path = entry.get("path", fields.url_path)
    if path is not None and provider == "opentelemetry":
        entry.report("path", '"path" is the Zipkin collector\'s endpoint; OpenTelemetry '
                             "exports over gRPC", at_value=False)
    if service_name is not None and provider == "zipkin":
        entry.report("service_name", "Envoy's Zipkin tracer names the spans' service after "
                                     "the node's cluster (the gateway's or sidecar's name); "
                                     '"service_name" is for opentelemetry', at_value=False)
    if provider is None or collector is None:
        return None
    return Tracing(provider=cast(Literal["opentelemetry", "zipkin"], provider),
                   collector=collector, sampling=100.0 if sampling is None else sampling,
                   service_name=service_name, path=path or "/api/v2/spans",
                   origin=entry.origin())


def _percent(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"expected a percentage from 0 to 100, found {fields.describe(value)}")
    if not 0 <= value <= 100:
        raise Invalid(f"a percentage must be from 0 to 100, found {value}")
    return float(value)


def _span_service_name(value: Any) -> str:
    text = fields.string(value)
    if not text or len(text) > 253 or not text.isprintable():
        raise Invalid(f"invalid service name {fields.quoted(text)}: 1 to 253 printable "
                      "characters")
    return text
