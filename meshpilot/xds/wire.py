"""Hand-assembled protobuf wire encoding for discovery responses.

Responses are built from pre-encoded fragments so that the bytes of a resource are produced once
and reused by every stream (facts.md: a real Envoy accepts and ACKs such responses). Field numbers
come from envoy/service/discovery/v3/discovery.proto and google/protobuf/any.proto.
"""

from __future__ import annotations

from collections.abc import Iterable

_ANY_TYPE_URL, _ANY_VALUE = 1, 2
# DiscoveryResponse
_SOTW_VERSION, _SOTW_RESOURCES, _SOTW_TYPE_URL, _SOTW_NONCE, _SOTW_CONTROL_PLANE = 1, 2, 4, 5, 6
# DeltaDiscoveryResponse
_DELTA_SYSTEM_VERSION, _DELTA_RESOURCES, _DELTA_TYPE_URL = 1, 2, 4
_DELTA_NONCE, _DELTA_REMOVED, _DELTA_CONTROL_PLANE = 5, 6, 7
# discovery.v3.Resource
_RES_VERSION, _RES_ANY, _RES_NAME = 1, 2, 3
# config.core.v3.ControlPlane
_CONTROL_PLANE_IDENTIFIER = 1


_ONE_BYTE = tuple(bytes((value,)) for value in range(0x80))


def varint(value: int) -> bytes:
    # Tags and most lengths fit in one or two bytes: those without a loop (called several
    # times for every resource of every translation).
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _header(field_number: int, length: int) -> bytes:
    """A length-delimited field's tag and length, without its payload."""
    return varint((field_number << 3) | 2) + varint(length)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    # One join: `tag + length + payload` would copy a large payload twice.
    return b"".join((varint((field_number << 3) | 2), varint(len(payload)), payload))


def string_field(field_number: int, text: str) -> bytes:
    return length_delimited(field_number, text.encode())


# A resource's body is copied once into each fragment below, however large (a 2,000-endpoint
# ClusterLoadAssignment is ~60 kB, made again at every registration of its Service): chains of
# `+` copied it up to four times per fragment, and the `Any` made on its own was one more copy.


_TYPE_URL_FIELDS: dict[str, bytes] = {}
_ANY_VALUE_TAG = varint((_ANY_VALUE << 3) | 2)


def _any_prefix(type_url: str, body_length: int) -> bytes:
    """An `Any`'s bytes before its value: the type URL field and the value's tag and length."""
    field = _TYPE_URL_FIELDS.get(type_url)
    if field is None:
        field = string_field(_ANY_TYPE_URL, type_url)
        if len(_TYPE_URL_FIELDS) < 64:  # Envoy's few resource types; bounded all the same
            _TYPE_URL_FIELDS[type_url] = field
    return field + _ANY_VALUE_TAG + varint(body_length)


def any_bytes(type_url: str, body: bytes) -> bytes:
    return b"".join((_any_prefix(type_url, len(body)), body))


def sotw_resource_entry(any_encoded: bytes) -> bytes:
    return length_delimited(_SOTW_RESOURCES, any_encoded)


def sotw_entry_of(type_url: str, body: bytes) -> bytes:
    """`sotw_resource_entry(any_bytes(type_url, body))`, with one copy of `body`."""
    prefix = _any_prefix(type_url, len(body))
    return b"".join((_header(_SOTW_RESOURCES, len(prefix) + len(body)), prefix, body))


def delta_resource_entry(name: str, version: str, any_encoded: bytes) -> bytes:
    return _delta_entry(name, version, b"", any_encoded)


def delta_entry_of(name: str, version: str, type_url: str, body: bytes) -> bytes:
    """`delta_resource_entry(name, version, any_bytes(type_url, body))`, with one copy of
    `body`."""
    return _delta_entry(name, version, _any_prefix(type_url, len(body)), body)


def _delta_entry(name: str, version: str, any_prefix: bytes, any_rest: bytes) -> bytes:
    """A delta `Resource` entry whose `Any` is `any_prefix` followed by `any_rest`."""
    version_field = string_field(_RES_VERSION, version)
    any_size = len(any_prefix) + len(any_rest)
    any_header = _header(_RES_ANY, any_size)
    name_field = string_field(_RES_NAME, name)
    size = len(version_field) + len(any_header) + any_size + len(name_field)
    return b"".join((_header(_DELTA_RESOURCES, size), version_field, any_header, any_prefix,
                     any_rest, name_field))


def control_plane(identifier: str) -> bytes:
    return string_field(_CONTROL_PLANE_IDENTIFIER, identifier)


def sotw_response(*, version: str, type_url: str, resources_body: bytes, nonce: str,
                  control_plane_bytes: bytes = b"") -> bytes:
    """A DiscoveryResponse; `resources_body` is already-encoded `resources` entries."""
    out = [string_field(_SOTW_VERSION, version), resources_body,
           string_field(_SOTW_TYPE_URL, type_url), string_field(_SOTW_NONCE, nonce)]
    if control_plane_bytes:
        out.append(length_delimited(_SOTW_CONTROL_PLANE, control_plane_bytes))
    return b"".join(out)


def delta_response(*, system_version: str, type_url: str, entries: Iterable[bytes],
                   removed: Iterable[str], nonce: str, control_plane_bytes: bytes = b"") -> bytes:
    out = [string_field(_DELTA_SYSTEM_VERSION, system_version), *entries,
           string_field(_DELTA_TYPE_URL, type_url)]
    out.extend(string_field(_DELTA_REMOVED, name) for name in removed)
    out.append(string_field(_DELTA_NONCE, nonce))
    if control_plane_bytes:
        out.append(length_delimited(_DELTA_CONTROL_PLANE, control_plane_bytes))
    return b"".join(out)
