"""`kind: EnvoyResources`: hand-written Envoy v3 resources, checked against Envoy's schema.

This module owns turning one EnvoyResources document into `RawResource`s, and reporting every
mistake in it with the exact field path and position. It must not talk to Envoy or the network,
import grpc, or decide who receives what (that is the translators' job); and it must never put
secret material (anything under `secrets`) into a message.

Checking happens in two passes. First a walk of each resource against its protobuf descriptor
finds the mistakes protobuf's JSON parser reports badly or one at a time: unknown fields (with a
"did you mean"), a field written twice (as `connect_timeout` and `connectTimeout`), two members of
one oneof, unknown enum names, and mappings or lists where they do not belong, descending through
`google.protobuf.Any` by its `@type`. Only a resource the walk found clean goes to
`json_format.ParseDict`, the final judge of scalar values (ranges, durations, base64, ...), whose
first error is mapped back to a field path and position.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from meshpilot.base import types
from meshpilot.inputs.context import DocumentContext
from meshpilot.inputs.yamlsource import FieldPath, Located
from meshpilot.ir.model import RawResource

KIND = "EnvoyResources"


@dataclass(frozen=True, slots=True)
class ResourceList:
    """One list key of an EnvoyResources document and the resources it holds."""

    key: str  # the document key: "clusters"
    type_url: str
    message: type[Message]
    name_field: str  # the proto name of the field that names the resource
    noun: str  # for messages: "cluster"
    secret: bool = False  # values must never be echoed


RESOURCE_LISTS: dict[str, ResourceList] = {
    spec.key: spec
    for spec in (
        ResourceList("clusters", types.CLUSTER, cluster_pb2.Cluster, "name", "cluster"),
        ResourceList("endpoints", types.ENDPOINT, endpoint_pb2.ClusterLoadAssignment,
                     "cluster_name", "ClusterLoadAssignment"),
        ResourceList("listeners", types.LISTENER, listener_pb2.Listener, "name", "listener"),
        ResourceList("routes", types.ROUTE, route_pb2.RouteConfiguration, "name",
                     "route configuration"),
        ResourceList("secrets", types.SECRET, secret_pb2.Secret, "name", "secret", secret=True),
    )
}
DOCUMENT_KEYS = ("kind", "name", "views", *RESOURCE_LISTS)

_WITHHELD = "value rejected by protobuf (details withheld: secrets are never echoed)"


def parse_envoy_resources(document: Located, ctx: DocumentContext) -> list[RawResource]:
    """Parse one EnvoyResources document: its good resources; every problem goes to `ctx`."""
    resources: list[RawResource] = []
    body = document.value
    _check_document_keys(body, ctx)
    views = _parse_views(body, ctx)
    for key, spec in RESOURCE_LISTS.items():
        items = body.get(key)
        if items is None:  # absent, or written with everything under it commented out
            continue
        if not isinstance(items, list):
            ctx.report((key,), f"expected a list, found {_kind_of(items)}", at_value=True)
            continue
        for index, item in enumerate(items):
            resource = _parse_resource(item, spec, (key, index), views, ctx)
            if resource is not None:
                resources.append(resource)
    return resources


def _check_document_keys(body: dict[str, Any], ctx: DocumentContext) -> None:
    for key in body:
        if key not in DOCUMENT_KEYS:
            hint = _did_you_mean(key, DOCUMENT_KEYS) or \
                f"; an {KIND} document has: {', '.join(DOCUMENT_KEYS)}"
            ctx.report((key,), f"unknown key {_quoted_key(key)}{hint}")


def _parse_views(body: dict[str, Any], ctx: DocumentContext) -> frozenset[str] | None:
    """`views` absent: every view. Present: a non-empty list of view (node cluster) names."""
    if "views" not in body:
        return None
    views = body["views"]
    if not isinstance(views, list) or not views:
        ctx.report(("views",), "expected a non-empty list of view names (leave views out to "
                               "send these resources to every view)", at_value=True)
        return None
    for index, view in enumerate(views):
        if not isinstance(view, str) or not view:
            ctx.report(("views", index), f"expected a view name, found {_kind_of(view)}",
                       at_value=True)
    return frozenset(view for view in views if isinstance(view, str) and view)


def _parse_resource(item: Any, spec: ResourceList, path: FieldPath,
                    views: frozenset[str] | None, ctx: DocumentContext) -> RawResource | None:
    if not isinstance(item, dict):
        ctx.report(path, f"expected {_article(spec.noun)} (a mapping), found {_kind_of(item)}",
                   at_value=True)
        return None
    walker = _SchemaWalker(ctx, redact=spec.secret)
    walker.message(item, spec.message.DESCRIPTOR, path)
    name = _claim_name(item, spec, path, ctx)
    if walker.problems or name is None:
        return None
    message = _parse_with_protobuf(item, spec, path, ctx)
    if message is None:
        return None
    return RawResource(type_url=spec.type_url, name=name, message=message,
                       position=ctx.document.position_of(path), document=ctx.name or "",
                       views=views, origin=ctx.origin(path))


def _claim_name(item: dict[str, Any], spec: ResourceList, path: FieldPath,
                ctx: DocumentContext) -> str | None:
    """The resource's name, if it has a usable one that no earlier resource of its type has."""
    field = spec.message.DESCRIPTOR.fields_by_name[spec.name_field]
    key = field.json_name if field.json_name in item else field.name
    name = item.get(key)
    if name is None or name == "":
        ctx.report(path, f'{_article(spec.noun)} needs a non-empty "{spec.name_field}"')
        return None
    if not isinstance(name, str):
        if not isinstance(name, dict | list):  # those the schema walk has reported
            ctx.report((*path, key), f"a name must be a string, found {_kind_of(name)}",
                       at_value=True)
        return None
    position = ctx.document.position_of((*path, key))
    first = ctx.first_definition(("raw", spec.type_url, name), position)
    if first is not None:
        ctx.report((*path, key), f'duplicate {spec.noun} name "{_clip(name)}"; first defined at '
                                 f"{first}")
        return None
    return name


# ---------------------------------------------------------------------------------------------
# The schema walk.

_SINGLE, _REPEATED, _MAP = range(3)
_REGULAR, _LEAF, _ANY = range(3)

# Messages protobuf's JSON mapping writes as scalars or free-form JSON: not walked.
_LEAF_TYPES = frozenset(
    "google.protobuf." + name
    for name in ("Duration", "Timestamp", "FieldMask", "Struct", "Value", "ListValue",
                 "DoubleValue", "FloatValue", "Int64Value", "UInt64Value", "Int32Value",
                 "UInt32Value", "BoolValue", "StringValue", "BytesValue")
)
_ANY_TYPE = "google.protobuf.Any"

_SCALAR_NAMES = {
    FieldDescriptor.CPPTYPE_INT32: "an integer", FieldDescriptor.CPPTYPE_INT64: "an integer",
    FieldDescriptor.CPPTYPE_UINT32: "an integer", FieldDescriptor.CPPTYPE_UINT64: "an integer",
    FieldDescriptor.CPPTYPE_DOUBLE: "a number", FieldDescriptor.CPPTYPE_FLOAT: "a number",
    FieldDescriptor.CPPTYPE_BOOL: "a boolean", FieldDescriptor.CPPTYPE_STRING: "a string",
    FieldDescriptor.CPPTYPE_ENUM: "an enum value name",
}

_MAX_LISTED_FIELDS = 12  # list a message's fields in "unknown field" when there are this few
_MAX_LISTED_ENUM_VALUES = 12


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    json_name: str
    cardinality: int  # _SINGLE, _REPEATED or _MAP
    message: str | None  # full name of the value's message type (for a map: of the map value)
    enum: EnumDescriptor | None
    oneof: str | None
    scalar: str  # what a scalar value should be, in words for error messages


@dataclass(frozen=True, slots=True)
class _Shape:
    """What the walk needs to know about one message type, computed once per type."""

    full_name: str
    short_name: str
    treatment: int  # _REGULAR, _LEAF or _ANY
    fields: dict[str, _Field]  # by proto name and by JSON name
    names: tuple[str, ...]  # proto names, then JSON names that differ: suggestion candidates
    proto_names: tuple[str, ...]


_POOL = descriptor_pool.Default()
# The JSON form of an Any holding a well-known type, for "unknown field" messages.
_PACKED_WELL_KNOWN_TYPE = _Shape("google.protobuf.Any", "Any", _ANY, {}, ("@type", "value"),
                                 ("@type", "value"))
_shapes: dict[str, _Shape] = {}  # by full name; filled as types are met, never emptied
_enum_names: dict[str, tuple[str, ...]] = {}


def _shape(descriptor: Descriptor) -> _Shape:
    shape = _shapes.get(descriptor.full_name)
    if shape is None:
        shape = _shapes[descriptor.full_name] = _build_shape(descriptor)
    return shape


def _shape_named(full_name: str) -> _Shape:
    """The hot path of the walk: one dict lookup per message once its shape is known."""
    shape = _shapes.get(full_name)
    return shape if shape is not None else _shape(_POOL.FindMessageTypeByName(full_name))


def _build_shape(descriptor: Descriptor) -> _Shape:
    full_name = descriptor.full_name
    treatment = _ANY if full_name == _ANY_TYPE else _LEAF if full_name in _LEAF_TYPES \
        else _REGULAR
    described = [_describe_field(field) for field in descriptor.fields]
    # Like protobuf's JSON parser: a JSON name wins over a proto name that happens to be equal.
    fields = {field.name: field for field in described}
    fields.update((field.json_name, field) for field in described)
    proto_names = tuple(field.name for field in descriptor.fields)
    json_names = tuple(field.json_name for field in descriptor.fields
                       if field.json_name != field.name)
    return _Shape(full_name, descriptor.name, treatment, fields, proto_names + json_names,
                  proto_names)


def _describe_field(field: FieldDescriptor) -> _Field:
    value_field = field
    cardinality = _REPEATED if field.is_repeated else _SINGLE
    if field.is_repeated and field.message_type is not None \
            and field.message_type.GetOptions().map_entry:
        cardinality = _MAP
        value_field = field.message_type.fields_by_name["value"]
    message = value_field.message_type.full_name if value_field.message_type else None
    oneof = field.containing_oneof.name if field.containing_oneof is not None else None
    scalar = "base64 text" if value_field.type == FieldDescriptor.TYPE_BYTES \
        else _SCALAR_NAMES.get(value_field.cpp_type, "a mapping")
    return _Field(field.name, field.json_name, cardinality, message, value_field.enum_type,
                  oneof, scalar)


def _enum_value_names(enum: EnumDescriptor) -> tuple[str, ...]:
    names = _enum_names.get(enum.full_name)
    if names is None:
        names = _enum_names[enum.full_name] = tuple(value.name for value in enum.values)
    return names


class _SchemaWalker:
    """Checks one resource's value against its message type, reporting every problem found."""

    # Deep enough for any real resource, shallow enough to stay clear of Python's recursion
    # limit (the YAML layer already caps nesting; this guards values built some other way).
    MAX_DEPTH = 100

    def __init__(self, ctx: DocumentContext, redact: bool):
        self.ctx = ctx
        self.redact = redact
        self.problems = 0

    def report(self, path: FieldPath, message: str, at_value: bool = False) -> None:
        self.problems += 1
        self.ctx.report(path, message, at_value=at_value)

    def message(self, value: Any, descriptor: Descriptor, path: FieldPath,
                skip_type_key: bool = False) -> None:
        self._message(value, _shape(descriptor), path, skip_type_key, 0)

    def _message(self, value: Any, shape: _Shape, path: FieldPath, skip_type_key: bool,
                 depth: int) -> None:
        if shape.treatment == _LEAF:
            return
        if shape.treatment == _ANY:
            self._any(value, path, depth)
            return
        if not isinstance(value, dict):
            self.report(path, f"expected a mapping ({shape.short_name}), found "
                              f"{_kind_of(value)}", at_value=True)
            return
        if depth >= self.MAX_DEPTH:
            self.report(path, f"nested more than {self.MAX_DEPTH} messages deep")
            return
        self._members(value, shape, path, skip_type_key, depth)

    def _members(self, value: dict[str, Any], shape: _Shape, path: FieldPath,
                 skip_type_key: bool, depth: int) -> None:
        seen: dict[str, str] = {}  # proto name -> the key it was written as
        oneofs: dict[str, str] = {}  # oneof name -> the key that set it
        for key, item in value.items():
            if skip_type_key and key == "@type":
                continue
            field = shape.fields.get(key)
            if field is None:
                self._unknown_field(key, shape, path)
            elif field.name in seen:
                self.report((*path, key), f'"{field.name}" is already set '
                                          f'(as "{seen[field.name]}")')
            elif item is not None and field.oneof is not None and field.oneof in oneofs:
                self.report((*path, key), f'"{key}" cannot be set together with '
                                          f'"{oneofs[field.oneof]}" (both belong to oneof '
                                          f"{field.oneof})")
            else:
                seen[field.name] = key
                if item is None:  # JSON null: the field stays unset, as protobuf does
                    continue
                if field.oneof is not None:
                    oneofs[field.oneof] = key
                self._field(item, field, (*path, key), depth)

    def _field(self, value: Any, field: _Field, path: FieldPath, depth: int) -> None:
        if field.cardinality == _SINGLE:
            self._single(value, field, path, depth)
        elif field.cardinality == _REPEATED:
            if not isinstance(value, list):
                self.report(path, f"expected a list, found {_kind_of(value)}", at_value=True)
                return
            for index, item in enumerate(value):
                if item is None and field.message != "google.protobuf.Value":
                    self.report((*path, index), "null is not allowed in a list", at_value=True)
                else:
                    self._single(item, field, (*path, index), depth)
        else:
            if not isinstance(value, dict):
                self.report(path, f"expected a mapping, found {_kind_of(value)}", at_value=True)
                return
            for key, item in value.items():
                if item is not None:  # protobuf says what it thinks of a null map value
                    self._single(item, field, (*path, key), depth)

    def _single(self, value: Any, field: _Field, path: FieldPath, depth: int) -> None:
        if field.message is not None:
            self._message(value, _shape_named(field.message), path, False, depth + 1)
        elif isinstance(value, dict | list):
            self.report(path, f"expected {field.scalar}, found {_kind_of(value)}", at_value=True)
        elif field.enum is not None and isinstance(value, str):
            self._enum(value, field.enum, path)

    def _enum(self, value: str, enum: EnumDescriptor, path: FieldPath) -> None:
        names = _enum_value_names(enum)
        if value in names or _is_integer(value):  # protobuf's JSON accepts numbers too
            return
        listed = f"; expected one of: {', '.join(names)}" \
            if len(names) <= _MAX_LISTED_ENUM_VALUES else ""
        if self.redact:
            self.report(path, f"unknown {enum.name} value{listed}", at_value=True)
            return
        self.report(path, f'unknown {enum.name} value "{_clip(value)}"'
                          f"{_did_you_mean(value, names)}{listed}", at_value=True)

    def _unknown_field(self, key: str, shape: _Shape, path: FieldPath) -> None:
        if self.redact and not _looks_like_a_field_name(key):
            self.report(path, f"unknown field in {shape.short_name} (name not shown: secrets "
                              "are never echoed)")
            return
        hint = _did_you_mean(key, shape.names)
        if not hint:
            hint = f"; {shape.short_name} has: {', '.join(shape.proto_names)}" \
                if len(shape.proto_names) <= _MAX_LISTED_FIELDS else f" in {shape.full_name}"
        self.report((*path, key), f"unknown field {_quoted_key(key)}{hint}")

    def _any(self, value: Any, path: FieldPath, depth: int) -> None:
        if not isinstance(value, dict):
            self.report(path, f'expected a mapping with "@type", found {_kind_of(value)}',
                        at_value=True)
            return
        if not value:
            return  # protobuf accepts {} as an empty Any
        type_url = value.get("@type")
        if not isinstance(type_url, str):
            where, at_value = ((*path, "@type"), True) if "@type" in value else (path, False)
            self.report(where, '"@type" must name the message type, e.g. '
                               '"type.googleapis.com/envoy.extensions.filters.http.router.v3.'
                               'Router"', at_value=at_value)
            return
        descriptor = find_message_type(type_url)
        if descriptor is None:
            self.report((*path, "@type"), f'unknown type "{_clip(type_url, 200)}"; is it an '
                                           "Envoy v3 type?", at_value=True)
            return
        shape = _shape(descriptor)
        if shape.treatment == _REGULAR:
            self._message(value, shape, path, True, depth + 1)
        else:
            self._packed_well_known_type(value, shape, path)

    def _packed_well_known_type(self, value: dict[str, Any], shape: _Shape,
                                path: FieldPath) -> None:
        """A packed Duration, Struct, Any... is {"@type": ..., "value": ...}; protobuf checks
        the value, but fails with a bare KeyError when it is missing."""
        for key in value:
            if key not in ("@type", "value"):
                self._unknown_field(key, _PACKED_WELL_KNOWN_TYPE, path)
        if "value" not in value:
            self.report(path, f'a packed {shape.short_name} needs its "value"')


# ---------------------------------------------------------------------------------------------
# Finding `google.protobuf.Any` payload types.

# Only these top-level packages are imported to find a type: a policy file must not be able to
# make us import arbitrary modules.
_IMPORTABLE_ROOTS = frozenset({"envoy", "xds", "udpa", "validate", "contrib"})
_FULL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+\Z")
_imported_packages: set[str] = set()
_import_lock = threading.Lock()


def find_message_type(type_url: str) -> Descriptor | None:
    """The descriptor for an Any's `@type`, importing its proto package's modules if needed.

    xds-protos does not import extension modules (filters, transport sockets, ...) eagerly, so
    an unknown `a.b.c.v3.Msg` makes us import every `*_pb2` module in the Python package of
    `a.b.c.v3` once, and look again. None if the type cannot be found.
    """
    full_name = type_url.rsplit("/", 1)[-1]
    if not _FULL_NAME.match(full_name):
        return None
    descriptor = _lookup(full_name)
    if descriptor is None and full_name.split(".", 1)[0] in _IMPORTABLE_ROOTS:
        _import_package_of(full_name)
        descriptor = _lookup(full_name)
    return descriptor


def _lookup(full_name: str) -> Descriptor | None:
    try:
        return _POOL.FindMessageTypeByName(full_name)
    except KeyError:
        return None


def _import_package_of(full_name: str) -> None:
    """Import the `*_pb2` modules of the innermost Python package that holds `full_name`.

    The message may be nested (`pkg.v3.Outer.Inner`), so drop trailing parts until a package
    is found.
    """
    parts = full_name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        package = ".".join(parts[:end])
        with _import_lock:
            if package in _imported_packages:
                return
            directories = _package_directories(package)
            if directories is None:
                continue
            _imported_packages.add(package)
            for directory in directories:
                _import_pb2_modules(package, Path(directory))
            return


def _package_directories(package: str) -> list[str] | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.submodule_search_locations is None:
        return None
    return list(spec.submodule_search_locations)


def _import_pb2_modules(package: str, directory: Path) -> None:
    try:
        module_files = sorted(directory.glob("*_pb2.py"))
    except OSError:
        return
    for module_file in module_files:
        try:
            importlib.import_module(f"{package}.{module_file.stem}")
        except Exception:  # one broken module must not hide the others
            continue


# ---------------------------------------------------------------------------------------------
# protobuf's own check, and its errors mapped back to positions.
#
# protobuf's messages name the path only sometimes (`... at Cluster.a.b[0]`), and drop list
# indexes and oneof members from their `Failed to parse x field:` chains. So rather than parse
# its messages, a failure is narrowed down by re-parsing parts of the resource: the first field
# that fails on its own, then the first list item or map value in it, then its fields, and so on.
# This costs a few extra parses, only for a resource that is already wrong.

_FAILED_FIELD = re.compile(r"Failed to parse \S+ field: ")
_AT_PATH = re.compile(r' at "?[A-Za-z_][\w.\[\]@-]*"?\Z')


def _parse_with_protobuf(item: dict[str, Any], spec: ResourceList, path: FieldPath,
                         ctx: DocumentContext) -> Message | None:
    message = spec.message()
    error = _protobuf_error(item, message)
    if error is None:
        return message
    where, detail = _pinpoint(item, spec.message.DESCRIPTOR, error)
    ctx.report(path + where, _WITHHELD if spec.secret else detail, at_value=True)
    return None


def _protobuf_error(value: Any, message: Message) -> str | None:
    """protobuf's complaint about `value` as `message`'s JSON, or None if it parses."""
    try:
        json_format.ParseDict(value, message, ignore_unknown_fields=False)
    except Exception as error:  # whatever protobuf rejects is the input's fault, not ours
        return str(error) or type(error).__name__
    return None


def _pinpoint(value: dict[str, Any], descriptor: Descriptor, error: str) -> tuple[FieldPath, str]:
    """The path (within `value`) of the part protobuf rejects, and its innermost complaint."""
    message_class = message_factory.GetMessageClass(descriptor)
    for key, item in value.items():
        field_error = _protobuf_error({key: item}, message_class())
        if field_error is not None:
            field = descriptor.fields_by_name.get(key) or _field_by_json_name(descriptor, key)
            if field is None:
                return (key,), _innermost(field_error)
            where, detail = _pinpoint_field(item, field, field_error)
            return (key, *where), detail
    return (), _innermost(error)  # only the combination fails


def _pinpoint_field(value: Any, field: FieldDescriptor, error: str) -> tuple[FieldPath, str]:
    if field.message_type is None or not isinstance(value, dict | list):
        return (), _innermost(error)
    if field.message_type.GetOptions().map_entry:
        value_type = field.message_type.fields_by_name["value"].message_type
        items = list(value.items()) if isinstance(value, dict) else []
        return _pinpoint_items(items, value_type, error)
    if field.is_repeated:
        items = list(enumerate(value)) if isinstance(value, list) else []
        return _pinpoint_items(items, field.message_type, error)
    return _pinpoint_message(value, field.message_type, error)


def _pinpoint_items(items: list[tuple[str | int, Any]], descriptor: Descriptor | None,
                    error: str) -> tuple[FieldPath, str]:
    """The first list item or map value that fails on its own."""
    if descriptor is None:  # scalars: protobuf's message is as precise as it gets
        return (), _innermost(error)
    message_class = message_factory.GetMessageClass(descriptor)
    for step, item in items:
        item_error = _protobuf_error(item, message_class())
        if item_error is not None:
            where, detail = _pinpoint_message(item, descriptor, item_error)
            return (step, *where), detail
    return (), _innermost(error)


def _pinpoint_message(value: Any, descriptor: Descriptor, error: str) -> tuple[FieldPath, str]:
    if not isinstance(value, dict):
        return (), _innermost(error)
    treatment = _shape(descriptor).treatment
    if treatment == _ANY:
        packed = find_message_type(str(value.get("@type", "")))
        if packed is None or _shape(packed).treatment != _REGULAR:
            return ("value",) if "value" in value else (), _innermost(error)
        value = {key: item for key, item in value.items() if key != "@type"}
        descriptor = packed
    elif treatment == _LEAF:
        return (), _innermost(error)
    return _pinpoint(value, descriptor, error)


def _field_by_json_name(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    return next((field for field in descriptor.fields if field.json_name == name), None)


def _innermost(error: str) -> str:
    """protobuf's own words for the problem, without its path bookkeeping."""
    text = _FAILED_FIELD.sub("", error.split("\n", 1)[0]).rstrip(".")
    text = _AT_PATH.sub("", text).rstrip(".")
    return text.strip() or "rejected by protobuf"


# ---------------------------------------------------------------------------------------------
# Small helpers for messages.

# Unknown keys in a secret are shown only if they look like a field name, not like key material.
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}\Z|[a-z][a-zA-Z0-9]{0,39}\Z")


def _looks_like_a_field_name(key: str) -> bool:
    return bool(_FIELD_NAME.match(key))


def _did_you_mean(word: str, candidates: tuple[str, ...]) -> str:
    matches = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f' (did you mean "{matches[0]}"?)' if matches else ""


def _quoted_key(key: str) -> str:
    return f'"{_clip(key)}"'


def _clip(text: str, limit: int = 80) -> str:
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= limit else text[:limit] + "..."


def _is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


_KIND_NAMES: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string",
                                bool: "a boolean", int: "a number", float: "a number"}


def _kind_of(value: Any) -> str:
    return "null" if value is None else _KIND_NAMES.get(type(value), type(value).__name__)


def _article(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"

