"""Python plugins: code that adds or patches Envoy resources per view.

This module owns the extension boundary the translators use: calling a plugin for a view,
checking what it returns, and turning each returned message into a `Resource`. Finding and
importing plugins (entry point group `meshpilot.plugins`) is the runtime's job:
`meshpilot.runtime.plugin_loader`. What a plugin returns may be

- a protobuf message (upb, from `xds-protos`) of a served type: Cluster, ClusterLoadAssignment,
  Listener, RouteConfiguration or Secret; or
- the same message as an `envoy-data-plane` (betterproto2) dataclass.

betterproto2 serializes in pure Python, validating every field with pydantic: ~1 ms for one small
cluster against ~1 µs with upb. So a betterproto2 object never travels past this module: it is
converted here, once, to upb bytes, and the conversion is cached on the plugin (`Converter`), so a
plugin that returns the same (or an equal) object at every reload and for every view pays for it
once. This module must not import betterproto2 or envoy-data-plane: they are optional, and a
process without such plugins should not pay their import (~0.2 s). A betterproto2 object is
recognized through the `betterproto2` module its class already imported.

A plugin that raises, or returns something unusable, raises `PluginError`: a `PolicyError` whose
one issue names the plugin (kind "Plugin"), so the controller refuses that reload as it refuses
an invalid policy, and the last good config keeps serving.

See docs/plugins.md for the user's side.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from google.protobuf.message import DecodeError, Message

from meshpilot.base import types
from meshpilot.base.errors import PolicyError, PolicyIssue
from meshpilot.ir.model import Model
from meshpilot.xds.deps import references_of
from meshpilot.xds.resources import Resource

log = logging.getLogger("meshpilot.translators.plugins")


# ---- the protocol ------------------------------------------------------------------------------


class ResourcePlugin(Protocol):
    """A plugin object: `resources(model, view)` returns the resources to add to `view`.

    Each returned resource replaces an already assembled one of the same type and name (a patch)
    or is added. The method may take a third positional parameter, `current`: a read-only
    `CurrentResources` (type URL -> name -> message) of what the view holds so far. A plugin
    function `(model, view[, current]) -> Iterable[resource]` is the same protocol without the
    object. Returning None adds nothing.

    A plugin must be deterministic (the same model gives the same resources, or versions churn)
    and may be called from several threads at once: views are built on worker threads (every
    view at a reload, and each view first asked for after it), several of them concurrently.
    """

    def resources(self, model: Model, view: str, /) -> Iterable[Any] | None: ...


class PluginFunction(Protocol):
    """The function form of `ResourcePlugin.resources`."""

    def __call__(self, model: Model, view: str, /) -> Iterable[Any] | None: ...


class PluginError(PolicyError):
    """A plugin could not be loaded, raised, or returned something that cannot be served."""

    def __init__(self, plugin: str, message: str):
        self.plugin = plugin
        super().__init__([PolicyIssue(message, kind="Plugin", name=plugin)])


# ---- the served types --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Kind:
    type_url: str
    message_class: type[Message]
    name_field: str  # the field that names a resource of this type

    @property
    def label(self) -> str:
        return self.type_url.rsplit(".", 1)[-1]


_KINDS: dict[str, _Kind] = {  # by protobuf full name
    kind.type_url.removeprefix("type.googleapis.com/"): kind for kind in (
        _Kind(types.CLUSTER, Cluster, "name"),
        _Kind(types.ENDPOINT, ClusterLoadAssignment, "cluster_name"),
        _Kind(types.LISTENER, Listener, "name"),
        _Kind(types.ROUTE, RouteConfiguration, "name"),
        _Kind(types.SECRET, Secret, "name"),
    )
}
_KIND_OF_URL = {kind.type_url: kind for kind in _KINDS.values()}


def _betterproto_message_class() -> type | None:
    """betterproto2's base class if something imported it; else no object can be one."""
    module = sys.modules.get("betterproto2")
    return getattr(module, "Message", None)


@functools.cache
def _betterproto_full_name(cls: type) -> str:
    """The protobuf full name of a betterproto2 message class.

    envoy-data-plane registers every class in its message pool (the type URL that
    betterproto2's `Any` support uses); a class it did not register is named after its module
    (`envoy_data_plane.envoy.config.cluster.v3` + `Cluster`), which holds for top-level messages.
    """
    pool_module = sys.modules.get("envoy_data_plane.message_pool")
    pool = getattr(pool_module, "default_message_pool", None)
    url = getattr(pool, "type_to_url", {}).get(cls)
    if url:
        return str(url).rsplit("/", 1)[-1]
    package = cls.__module__.removeprefix("envoy_data_plane.")
    return f"{package}.{cls.__name__}"


# ---- conversion --------------------------------------------------------------------------------


def _betterproto_bytes(message: Any) -> bytes:
    """The only place a betterproto2 message is serialized: pydantic validation plus a pure
    Python encoder, ~1 ms for one small cluster. Everything else here exists to call it rarely."""
    return bytes(message)


class Converter:
    """A plugin's returned messages -> `Resource`s, the costly part done once per distinct message.

    betterproto2 messages are cached by content: by (class, name), the last few variants, each a
    private deep copy of the converted object next to its Resource. A message equal to a copy
    (one `==`, ~2% of a conversion) reuses the Resource. Equality rather than identity, because
    betterproto2 objects are mutable: a plugin that changes a module-level Cluster in place and
    returns it again must not be served its old bytes.

    upb messages are serialized every time (~1 µs), and cached by (type, bytes) for the rest:
    references, hash and wire fragments.

    Both caches are LRUs of at most `max_entries` Resources each (a betterproto2 entry, copy and
    Resource, holds ~6 KiB for a small cluster). Safe to share between threads; two threads
    converting the same new message both pay, and either result is kept.
    """

    VARIANTS = 4  # per (class, name): per-view variants of one resource, without thrashing

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._upb: OrderedDict[tuple[str, bytes], Resource] = OrderedDict()
        self._betterproto: OrderedDict[tuple[type, str], list[tuple[Any, Resource]]] = \
            OrderedDict()
        self._betterproto_size = 0  # variants held, over all keys

    def resource(self, item: object) -> Resource:
        """`item` as a Resource; ValueError (saying what is wrong) if it cannot be served."""
        if isinstance(item, Message):
            return self._from_upb(item)
        base = _betterproto_message_class()
        if base is not None and isinstance(item, base):
            return self._from_betterproto(item)
        raise ValueError(f"unsupported {_describe_type(item)}; expected an Envoy Cluster, "
                         "ClusterLoadAssignment, Listener, RouteConfiguration or Secret, as a "
                         "protobuf message or an envoy-data-plane (betterproto2) message")

    def clear(self) -> None:
        with self._lock:
            self._upb.clear()
            self._betterproto.clear()
            self._betterproto_size = 0

    def _from_upb(self, message: Message) -> Resource:
        kind = _kind_of(message.DESCRIPTOR.full_name)
        name = _name_of(kind, getattr(message, kind.name_field, None))
        body = message.SerializeToString(deterministic=True)
        key = (kind.type_url, body)
        with self._lock:
            found = self._upb.get(key)
            if found is not None:
                self._upb.move_to_end(key)
                return found
        built = Resource(kind.type_url, name, body, references_of(kind.type_url, message))
        with self._lock:
            self._upb[key] = built
            if len(self._upb) > self.max_entries:
                self._upb.popitem(last=False)
        return built

    def _from_betterproto(self, message: Any) -> Resource:
        kind = _kind_of(_betterproto_full_name(type(message)))
        name = _name_of(kind, getattr(message, kind.name_field, None))
        key = (type(message), name)
        with self._lock:
            variants = list(self._betterproto.get(key, ()))
            if variants:
                self._betterproto.move_to_end(key)
        for seen, resource in variants:  # compared outside the lock: each `==` costs ~20 µs
            if seen == message:
                return resource
        built = self._convert_betterproto(kind, name, message)
        seen = copy.deepcopy(message)
        with self._lock:
            kept = self._betterproto.setdefault(key, [])
            self._betterproto.move_to_end(key)
            kept.insert(0, (seen, built))
            self._betterproto_size += 1 - len(kept[self.VARIANTS:])
            del kept[self.VARIANTS:]
            while self._betterproto_size > self.max_entries:
                _, dropped = self._betterproto.popitem(last=False)
                self._betterproto_size -= len(dropped)
        return built

    @staticmethod
    def _convert_betterproto(kind: _Kind, name: str, message: Any) -> Resource:
        try:
            data = _betterproto_bytes(message)
        except Exception as e:  # pydantic's validation of a field the plugin set wrongly
            raise ValueError(f"cannot be serialized: {type(e).__name__}: {e}") from e
        try:
            parsed = kind.message_class.FromString(data)
        except DecodeError as e:
            raise ValueError(f"serialized to bytes protobuf cannot parse: {e}") from e
        # Re-serialized by upb: betterproto2 writes fields in declaration order and maps in
        # insertion order; upb's deterministic bytes give the version the same resource has when
        # built any other way.
        return Resource.from_message(kind.type_url, name, parsed)


def _kind_of(full_name: str) -> _Kind:
    kind = _KINDS.get(full_name)
    if kind is None:
        raise ValueError(f"unsupported type {full_name}; expected one of: {', '.join(_KINDS)}")
    return kind


def _name_of(kind: _Kind, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind.label} without a {kind.name_field}")
    return value


def _describe_type(item: object) -> str:
    cls = type(item)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


# ---- what a plugin sees of the view ------------------------------------------------------------


class CurrentResources(Mapping[str, Mapping[str, Message]]):
    """What a view holds so far (raw, generated, earlier plugins): type URL -> name -> message.

    Read-only. Every served type URL is a key, with an empty mapping if the view has none. A
    message is parsed from the resource's bytes when first looked up (a plugin patching one
    cluster does not parse five thousand) and is the plugin's own copy: changing it changes
    nothing until the plugin returns it.
    """

    def __init__(self, by_type: Mapping[str, Mapping[str, Resource]]):
        self._by_type = by_type
        self._views: dict[str, _Messages] = {}

    def __getitem__(self, type_url: str) -> Mapping[str, Message]:
        found = self._views.get(type_url)
        if found is None:
            kind = _KIND_OF_URL.get(type_url)
            if kind is None:
                raise KeyError(type_url)
            found = self._views[type_url] = _Messages(kind, self._by_type.get(type_url, {}))
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(_KIND_OF_URL)

    def __len__(self) -> int:
        return len(_KIND_OF_URL)


class _Messages(Mapping[str, Message]):
    def __init__(self, kind: _Kind, resources: Mapping[str, Resource]):
        self._kind = kind
        self._resources = resources
        self._parsed: dict[str, Message] = {}

    def __getitem__(self, name: str) -> Message:
        found = self._parsed.get(name)
        if found is None:
            body = self._resources[name].body
            found = self._parsed[name] = self._kind.message_class.FromString(body)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._resources)

    def __len__(self) -> int:
        return len(self._resources)


# ---- plugins -----------------------------------------------------------------------------------


class Plugin:
    """One loaded plugin: its name (the entry point's), how to call it, and its conversion cache.

    Create one per process and keep it: the cache lives here, so a Plugin made anew for every
    reload would convert everything again.
    """

    def __init__(self, target: object, name: str | None = None, *, max_cached: int = 4096):
        """`target`: a `ResourcePlugin` object, a plugin function, or a class of plugin objects
        (instantiated with no arguments)."""
        self.name = name or _default_name(target)
        if isinstance(target, type):
            try:
                target = target()
            except Exception as e:
                raise PluginError(self.name, f"cannot create {target.__qualname__}(): "
                                  f"{type(e).__name__}: {e}") from e
        method = getattr(target, "resources", None)
        call = method if callable(method) else target if callable(target) else None
        if call is None:
            raise PluginError(self.name, f"{_describe_type(target)} is neither callable nor has "
                              "a resources(model, view) method")
        self.target = target
        self._call: Callable[..., Any] = call
        self._wants_current = _takes_three_positional(call)
        self.converter = Converter(max_cached)

    def resources(self, model: Model, view: str, current: CurrentResources) -> list[Resource]:
        """Call the plugin for `view`: its resources, checked and converted; PluginError if the
        plugin raised or returned something that cannot be served."""
        returned = self._returned(model, view, current)
        built: list[Resource] = []
        seen: set[tuple[str, str]] = set()
        for index, item in enumerate(returned):
            try:
                resource = self.converter.resource(item)
            except ValueError as e:
                raise self._error(view, f"{_describe_item(index, item)}: {e}") from e
            key = (resource.type_url, resource.name)
            if key in seen:
                kind = resource.type_url.rsplit(".", 1)[-1]
                raise self._error(view, f"{kind} {resource.name!r} returned twice")
            seen.add(key)
            built.append(resource)
        return built

    def _returned(self, model: Model, view: str, current: CurrentResources) -> list[object]:
        args = (model, view, current) if self._wants_current else (model, view)
        try:
            returned = self._call(*args)
            if returned is None:
                return []
            if isinstance(returned, str | bytes | Message) or not isinstance(returned, Iterable):
                raise self._error(view, f"returned a {_describe_type(returned)}, not an "
                                  "iterable of resources")
            return list(returned)  # a generator runs here: its exceptions are the plugin's
        except PluginError:
            raise
        except Exception as e:
            # The issue carries the message; the traceback is for the plugin's author.
            log.error("plugin %s raised for view %r", self.name, view, exc_info=True)
            raise self._error(view, f"raised {type(e).__name__}: {e}") from e

    def _error(self, view: str, message: str) -> PluginError:
        return PluginError(self.name, f"view {view!r}: {message}")

    def __repr__(self) -> str:
        return f"Plugin({self.name!r})"


def _default_name(target: object) -> str:
    name = getattr(target, "name", None)
    if isinstance(name, str) and name:
        return name
    return str(getattr(target, "__qualname__", None) or type(target).__qualname__)


def _takes_three_positional(call: Callable[..., Any]) -> bool:
    """Whether `call` wants `current`: a third positional parameter (or *args)."""
    try:
        parameters = inspect.signature(call).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: the 2-argument form
        return False
    positional = 0
    for p in parameters:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return True
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 3


def _describe_item(index: int, item: object) -> str:
    """How an error names a returned item: its type and name if it has them, else its position."""
    name = getattr(item, "name", None) or getattr(item, "cluster_name", None)
    label = type(item).__name__
    return f"{label} {name!r}" if isinstance(name, str) and name else f"item {index} ({label})"


def as_plugins(plugins: Iterable[object]) -> tuple[Plugin, ...]:
    """Plugins as `Plugin`s: those already loaded are kept (with their caches)."""
    return tuple(p if isinstance(p, Plugin) else Plugin(p) for p in plugins)


def apply_plugins(plugins: Sequence[Plugin], model: Model, view: str,
                  resources: Iterable[Resource]) -> list[Resource]:
    """`resources` (raw and generated) with each plugin's added or replacing them, in order: a
    later plugin sees, and may patch, what an earlier one returned."""
    by_type: dict[str, dict[str, Resource]] = {}
    for resource in resources:
        by_type.setdefault(resource.type_url, {})[resource.name] = resource
    for plugin in plugins:
        # All of a plugin's output is collected before any is applied: `current` stays what it
        # was when the plugin was called, even for a generator reading it while it yields.
        for resource in plugin.resources(model, view, CurrentResources(by_type)):
            by_type.setdefault(resource.type_url, {})[resource.name] = resource
    return [resource for named in by_type.values() for resource in named.values()]
