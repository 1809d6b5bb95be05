"""Resources as JSON-able dicts for config dumps and `meshpilot render`, secrets redacted
(each secret value replaced by its fingerprint, xds/redact.py)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, symbol_database
from google.protobuf.message import Message

from meshpilot.base import types
from meshpilot.xds.deps import is_repeated
from meshpilot.xds.redact import redacted
from meshpilot.xds.resources import Resource
from meshpilot.xds.snapshot import Snapshot


def message_of(resource: Resource) -> Message:
    cls = symbol_database.Default().GetSymbol(resource.type_url.rsplit("/", 1)[-1])
    message = cls()
    message.ParseFromString(resource.body)
    return message


def to_dict(resource: Resource) -> dict[str, Any]:
    return message_to_dict(redacted(message_of(resource)))


def message_to_dict(message: Message) -> dict[str, Any]:
    """A message as `to_dict` renders it (fields in declaration order, maps sorted), as is:
    redact first where it may hold secrets."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return _plain(_sort_maps(message, data))  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    """Plain dicts and lists all the way down (MessageToDict gives an Any an OrderedDict), so
    that every dumper (json, yaml.safe_dump) takes the result."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _sort_maps(message: Message, data: Any) -> Any:
    """`data` (the JSON form of `message`) with the keys of its maps and Structs sorted.

    The bytes are deterministic, but upb iterates a map (a Struct's fields, say endpoint labels)
    in a per-process hash order when converting to JSON, so the same resource would render
    differently from run to run. Message fields keep their declaration order, which reads best.
    """
    if message.DESCRIPTOR.full_name == "google.protobuf.Struct":
        return _sorted_deep(data)
    if not isinstance(data, dict):
        return data  # a well-known type rendered as a scalar: a duration, a wrapped number
    if message.DESCRIPTOR.full_name == "google.protobuf.Any":
        inner = symbol_database.Default().GetSymbol(message.TypeName())()  # type: ignore[attr-defined]
        message.Unpack(inner)  # type: ignore[attr-defined]
        message = inner
    for field, value in message.ListFields():
        if field.name not in data or field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            entries = data[field.name]
            if field.message_type.fields_by_name["value"].message_type is not None:
                entries = {key: _sort_maps(value[key], entries[key]) for key in entries}
            data[field.name] = dict(sorted(entries.items()))
        elif is_repeated(field):
            data[field.name] = [_sort_maps(item, item_data)
                                for item, item_data in zip(value, data[field.name], strict=True)]
        else:
            data[field.name] = _sort_maps(value, data[field.name])
    return data


def _sorted_deep(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_deep(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_deep(item) for item in value]
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
