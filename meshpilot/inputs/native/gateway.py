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
from meshpilot.ir.model import AccessLog, ClientIp, Compression, Gateway, GatewayListener

KIND = "Gateway"

GATEWAY_KEYS = ("kind", "name", "access_log", "listeners")
LISTENER_KEYS = ("name", "port", "address", "protocol", "service", "access_log",
                 "trust_request_id", "request_id_in_response", "compression", "websocket",
                 "tls", "redirect_to_https", "client_ip")
CLIENT_IP_KEYS = ("xff_trusted_hops", "trusted_cidrs", "header")
LISTENER_PROTOCOLS = ("http", "https", "tcp")
HTTP_ONLY_KEYS = ("trust_request_id", "request_id_in_response", "compression", "websocket",
                  "tls", "redirect_to_https", "client_ip")
ACCESS_LOG_KEYS = ("path", "format")
ACCESS_LOG_FORMATS = ("json", "text")
COMPRESSION_KEYS = ("gzip", "min_content_length", "content_types")

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
    listeners = _listeners(doc, default_log)
    if reported_since(ctx, mark) or name is None:
        return []
    return [Gateway(name=name, position=document.position, listeners=listeners,
                    origin=ctx.origin())]


def _listeners(doc: Fields, default_log: AccessLog | None) -> tuple[GatewayListener, ...]:
    items = doc.items("listeners", "listener", required=True)
    if items is None:
        return ()
    listeners: list[GatewayListener] = []
    seen: dict[Hashable, FieldPath] = {}
    for index, item in enumerate(items):
        listener = _listener(doc.ctx, item, ("listeners", index), default_log)
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
              default_log: AccessLog | None) -> GatewayListener | None:
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
    websocket = entry.get("websocket", fields.boolean) or False
    listener_tls, redirect = tls.listener_tls(entry, protocol)
    client_ip = _client_ip(entry)
    if name is None or port is None:
        return None
    # `protocol: https` is an HTTP listener that terminates TLS: Routes attach to it alike.
    return GatewayListener(name=name, port=port, address=address,
                           protocol=cast(Literal["http"], "http"), access_log=access_log,
                           trust_request_id=trust, request_id_in_response=in_response,
                           compression=compression, websocket=websocket, tls=listener_tls,
                           redirect_to_https=redirect, origin=entry.origin(),
                           client_ip=client_ip)


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
    entry.get("gzip", fields.true_only, required=True)
    minimum = entry.get("min_content_length", fields.UINT32)
    types: list[str] = []
    items = entry.items("content_types", "content type")
    for index, item in enumerate(items or ()):
        converted = convert_at(entry.ctx, item, (*entry.path, "content_types", index),
                               _media_type)
        if converted is not None:
            types.append(converted)
    return Compression(min_content_length=minimum, content_types=tuple(types),
                       origin=entry.origin())
