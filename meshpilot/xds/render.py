"""Resources as JSON-able dicts for config dumps and `meshpilot render`, secrets redacted."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, symbol_database
from google.protobuf.message import Message

from meshpilot.xds import types
from meshpilot.xds.resources import Resource
from meshpilot.xds.snapshot import Snapshot

REDACTED = "[redacted]"
# DataSource fields that hold key material inline; file paths and SDS names are not secret.
_SECRET_DATA_FIELDS = ("private_key", "password", "secret", "session_ticket_keys", "generic_secret",
                       "hmac_secret", "keys")


def message_of(resource: Resource) -> Message:
    cls = symbol_database.Default().GetSymbol(resource.type_url.rsplit("/", 1)[-1])
    message = cls()
    message.ParseFromString(resource.body)
    return message


def to_dict(resource: Resource) -> dict[str, Any]:
    data = json_format.MessageToDict(message_of(resource), preserving_proto_field_name=True)
    return redact(data)


def redact(value: Any, secret: bool = False) -> Any:
    """Replace inline key material (inline_string/inline_bytes under secret fields) everywhere."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if secret and key in ("inline_string", "inline_bytes"):
                out[key] = REDACTED
            else:
                out[key] = redact(item, secret or key in _SECRET_DATA_FIELDS)
        return out
    if isinstance(value, list):
        return [redact(v, secret) for v in value]
    return value


def snapshot_to_dict(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "view": snapshot.view,
        "version": snapshot.version,
        "resources": {
            types.short_name(t): [to_dict(r) for r in snapshot.get(t).values()]
            for t in snapshot.type_urls()
        },
    }
