"""`kind: Gateway`: the listeners of one edge Envoy, as one `model.Gateway`.

This module owns the Gateway document's shape and what can be checked within it (listener names
unique in the gateway). It must not look at other documents: port conflicts, between the
gateway's own listeners or with other gateways, are checked over the whole folder by
`references.py`, and the Routes that attach to a gateway are checked there too.

Shape:

    kind: Gateway
    name: edge                       # also the node cluster of the gateway's Envoys
    listeners:                       # at least one
      - {name: http, port: 8080}
      - {name: admin-api, port: 9000, address: 127.0.0.1, protocol: http}
                                     # address: an IP to bind (default 0.0.0.0); protocol: http
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Literal, cast

from meshpilot.policy import fields
from meshpilot.policy.fields import Fields, issue_count, reported_since, written_before
from meshpilot.policy.model import Gateway, GatewayListener
from meshpilot.policy.yamlsource import FieldPath, Located

if TYPE_CHECKING:
    from meshpilot.policy.loader import DocumentContext

KIND = "Gateway"

GATEWAY_KEYS = ("kind", "name", "listeners")
LISTENER_KEYS = ("name", "port", "address", "protocol")
LISTENER_PROTOCOLS = ("http",)

_LISTENER_PROTOCOL = fields.choice(LISTENER_PROTOCOLS)


def parse_gateway(document: Located, ctx: DocumentContext) -> list[Gateway]:
    """The document's Gateway, or nothing if anything in it was reported."""
    mark = issue_count(ctx)
    doc = Fields(ctx, document.value)
    doc.check_keys(GATEWAY_KEYS, "a Gateway")
    name = doc.get("name", fields.name)
    listeners = _listeners(doc)
    if reported_since(ctx, mark) or name is None:
        return []
    return [Gateway(name=name, position=document.position, listeners=listeners)]


def _listeners(doc: Fields) -> tuple[GatewayListener, ...]:
    items = doc.items("listeners", "listener", required=True)
    if items is None:
        return ()
    listeners: list[GatewayListener] = []
    seen: dict[Hashable, FieldPath] = {}
    for index, item in enumerate(items):
        listener = _listener(doc.ctx, item, ("listeners", index))
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


def _listener(ctx: DocumentContext, item: Any, path: tuple[str | int, ...]
              ) -> GatewayListener | None:
    entry = Fields.at(ctx, item, path, "a listener mapping such as {name: http, port: 8080}")
    if entry is None:
        return None
    entry.check_keys(LISTENER_KEYS, "a listener")
    name = entry.get("name", fields.name, required=True)
    port = entry.get("port", fields.PORT, required=True)
    address = entry.get("address", fields.ip_address) or "0.0.0.0"
    protocol = entry.get("protocol", _LISTENER_PROTOCOL) or "http"
    if name is None or port is None:
        return None
    return GatewayListener(name=name, port=port, address=address,
                           protocol=cast(Literal["http"], protocol))
