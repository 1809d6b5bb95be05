"""Gateway API documents, all together, into model parts and statuses.

This module owns what Gateway API documents mean across each other, as the specification says:
which GatewayClasses are meshpilot's (`CONTROLLER`), which listeners of a Gateway are valid
(protocols, TLS certificates from Secrets, allowed route kinds, conflicts on a shared port),
which routes attach to which listeners (parentRefs with sectionName and port, `allowedRoutes`
namespaces and kinds, hostname intersection), what each rule does (matches, filters, weighted
backends, timeouts), and which backend references resolve and are permitted (ReferenceGrant).

What it decides about a reference (missing, not permitted, unsupported) is status, never an
issue that refuses the load: a broken rule answers 500, a route that cannot attach is not
served, and the rest of the folder keeps serving ("partial validity"). Only what the API server
itself would refuse (its CEL rules: a Service backendRef without a port, ReplacePrefixMatch
without a PathPrefix match, a listener name used twice) is reported as an issue.

What it makes, per Gateway "NS/NAME" (the view name, `--node-cluster NS/NAME`):

    model.Gateway      NS/NAME, one listener per port ("80"): listeners sharing a port are merged
    model.Route        one per (port, hostname): NS/NAME/80/foo.example.com, its rules the route
                       entries of every HTTPRoute rule attached there, in the spec's precedence
    model.Service      NS/SVC:PORT per Kubernetes Service port a backend names, its endpoints
                       from the EndpointSlices; or a native Service (`SVC`, or `SVC.NS` outside
                       namespace "default") when no Kubernetes Service of that name exists

Names with "/" and ":" cannot clash with native names (which allow neither).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import ssl
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Any

from cryptography import x509

from meshpilot.base import re2text
from meshpilot.inputs.context import DocumentContext, LoadContext, ModelPart, ParsedDocument
from meshpilot.inputs.gatewayapi import listenersets
from meshpilot.inputs.gatewayapi.backend_client import (
    Resolved,
    client_certificate,
    with_client_backends,
    with_client_certificate,
)
from meshpilot.inputs.gatewayapi.kinds import FILTER_MEMBERS, GATEWAY_GROUP, KubeObject
from meshpilot.inputs.gatewayapi.secrets import tls_secret
from meshpilot.inputs.native.fields import re2_problem, regex_problem
from meshpilot.inputs.yamlsource import FieldPath, format_path
from meshpilot.ir.model import (
    MISDIRECTED_ROUTE,
    Backend,
    Backoff,
    Condition,
    Cors,
    DirectResponse,
    Endpoint,
    Gateway,
    GatewayListener,
    HeaderOps,
    ListenerTls,
    Match,
    Mirror,
    ObjectStatus,
    Origin,
    PathRewrite,
    Redirect,
    Retries,
    Route,
    Rule,
    Security,
    Service,
    SessionPersistence,
    StringMatch,
    TlsCertificate,
    TlsHost,
    TlsPassthrough,
    UpstreamTls,
)

CONTROLLER = "meshpilot.io/gateway-controller"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# The documents a route's compile is said to depend on one by one, as it reads them (a
# Kubernetes Service and its EndpointSlices), rather than all together in the backdrop.
_READ_KINDS = ("Service", "EndpointSlice")
_ROUTE_KINDS_BY_PROTOCOL = {"HTTP": ("HTTPRoute", "GRPCRoute"),
                            "HTTPS": ("HTTPRoute", "GRPCRoute"), "TCP": ("TCPRoute",),
                            "TLS": ("TLSRoute",), "UDP": ("UDPRoute",)}
_WELL_KNOWN_PORTS = {"http": 80, "https": 443}


def compile_gateway_api(parsed: Sequence[ParsedDocument], load: LoadContext,
                        ) -> tuple[list[ModelPart], list[ObjectStatus]]:
    walk = Walk.of(parsed)
    return ([], []) if walk is None else walk.compile()


def compile_gateway_api_edit(parsed: Sequence[ParsedDocument], load: LoadContext,
                             removed: Sequence[ParsedDocument], added: Sequence[ParsedDocument],
                             kept: object | None,
                             ) -> tuple[list[ModelPart], list[ObjectStatus], object | None]:
    """`compile_gateway_api` after an edit (`formats.FormatEditCompiler`): the documents it
    walked last time (`kept`, a `Walk`), patched by the edit's documents when they are only
    routes, Services and EndpointSlices, instead of walking every document again."""
    walk = kept.patched(removed, added) if isinstance(kept, Walk) else None
    if walk is None:
        walk = Walk.of(parsed)
    if walk is None:
        return [], [], None
    parts, statuses = walk.compile()
    return parts, statuses, walk


# The kinds an edit may change for `Walk.patched`: what routes read one by one (`_Reads`), and
# the HTTP routes, whose compile `_KeptPhase` patches.
_EDITABLE_KINDS = frozenset({"HTTPRoute", "GRPCRoute", *_READ_KINDS})


@dataclass
class Walk:
    """What a compile needs of every document, found by one walk over them (a folder of 1,000
    routes holds 5,000 documents), kept for the next edit (`Walk.patched`)."""

    world: _World
    # An object kept from an earlier load was parsed in another load's context: what the
    # compile step reports goes through the context of this load's document.
    contexts: dict[int, DocumentContext]
    natives: dict[str, Service]
    # The native Routes that shape calls to a Service already (its callers' sidecars take one).
    mesh_routes: dict[str, str]
    # What a route's compile may read besides the route itself and the Services it names
    # (`_Reads`): every document but routes, Services and EndpointSlices (by identity: an
    # unchanged document is the very object of the last load) and the native Services by
    # value. The same, and the same Services read: its compile may be taken from the last.
    backdrop: tuple[tuple[object, ...], tuple[Service, ...]]
    compiles: int = 0  # compiles of this walk so far
    # What the newest patch changed: route ns/name -> the route now (None: gone), and Service
    # ns/names (an EndpointSlice's by its service label); None: walked whole.
    changed: tuple[dict[str, KubeObject | None], set[str]] | None = None

    @classmethod
    def of(cls, parsed: Sequence[ParsedDocument]) -> Walk | None:
        objects: list[KubeObject] = []
        contexts: dict[int, DocumentContext] = {}
        natives: dict[str, Service] = {}
        mesh_routes: dict[str, str] = {}
        for document in parsed:
            for part in document.parts:
                if isinstance(part, KubeObject):
                    objects.append(part)
                    contexts[id(part)] = document.context
                elif isinstance(part, Service):
                    natives[part.name] = part
                elif isinstance(part, Route) and part.service is not None:
                    mesh_routes[part.service] = part.name
        if not objects:
            return None
        backdrop = (tuple(o for o in objects if not o.kind.endswith("Route")
                          and o.kind not in _READ_KINDS), tuple(natives.values()))
        return cls(_World.of(objects), contexts, natives, mesh_routes, backdrop)

    def compile(self) -> tuple[list[ModelPart], list[ObjectStatus]]:
        self.compiles += 1
        compiler = _Compiler(self.world, self.natives, self.backdrop, self.contexts)
        compiler.native_mesh_routes = self.mesh_routes
        compiler.walk = self
        compiler.run()
        return compiler.parts(), compiler.statuses

    def patched(self, removed: Sequence[ParsedDocument],
                added: Sequence[ParsedDocument]) -> Walk | None:
        """This walk after an edit of only HTTPRoutes, GRPCRoutes, Services and EndpointSlices
        (the backdrop is then the same), changed in place; None if the edit is another (then
        walk every document again: this one is no longer right)."""
        gone = [part for document in removed for part in document.parts]
        new = [(part, document.context) for document in added for part in document.parts]
        if not all(isinstance(part, KubeObject) and part.kind in _EDITABLE_KINDS
                   for part in (*gone, *(part for part, _ in new))):
            return None
        world = self.world
        routes: dict[str, KubeObject | None] = {}
        services: set[str] = set()
        places: dict[str, int] = {}  # slices' service -> where the gone one was
        for part in gone:
            assert isinstance(part, KubeObject)
            self.contexts.pop(id(part), None)
            if part.kind == "Service":
                if world.services.get(part.key) is part:
                    del world.services[part.key]
                services.add(part.key)
            elif part.kind == "EndpointSlice":
                service = part.label(SERVICE_NAME_LABEL)
                if service:
                    key = f"{part.namespace}/{service}"
                    slices = world.slices.get(key, [])
                    at = next((i for i, one in enumerate(slices) if one is part), None)
                    if at is None or key in places:
                        return None
                    del slices[at]
                    places[key] = at
                    services.add(key)
            else:
                routes[part.key] = None
                # From the end: an edited route was appended there by the last patch.
                at = next((i for i in range(len(world.http_routes) - 1, -1, -1)
                           if world.http_routes[i] is part), None)
                if at is None:
                    return None
                del world.http_routes[at]
        for part, context in new:
            assert isinstance(part, KubeObject)
            self.contexts[id(part)] = context
            if part.kind == "Service":
                world.services[part.key] = part
                services.add(part.key)
            elif part.kind == "EndpointSlice":
                service = part.label(SERVICE_NAME_LABEL)
                if service:
                    key = f"{part.namespace}/{service}"
                    slices = world.slices.setdefault(key, [])
                    # In file order among the Service's others: where the one it replaces
                    # was, or alone.
                    at = places.pop(key, None)
                    if at is None and slices:
                        return None
                    slices.insert(at or 0, part)
                    services.add(key)
            else:
                routes[part.key] = part
                world.http_routes.append(part)
        if places:  # a slice gone without one in its place
            for key in places:
                if not world.slices.get(key):
                    world.slices.pop(key, None)
        self.changed = (routes, services)
        return self


# ---- the documents, indexed ---------------------------------------------------------------------


@dataclass
class _World:
    classes: dict[str, KubeObject] = field(default_factory=dict)
    gateways: list[KubeObject] = field(default_factory=list)
    http_routes: list[KubeObject] = field(default_factory=list)  # and GRPCRoutes
    tcp_routes: list[KubeObject] = field(default_factory=list)
    tls_routes: list[KubeObject] = field(default_factory=list)
    udp_routes: list[KubeObject] = field(default_factory=list)
    backend_tls: list[KubeObject] = field(default_factory=list)
    listener_sets: list[KubeObject] = field(default_factory=list)  # and XListenerSets
    grants: dict[str, list[KubeObject]] = field(default_factory=dict)  # by namespace
    services: dict[str, KubeObject] = field(default_factory=dict)  # ns/name
    secrets: dict[str, KubeObject] = field(default_factory=dict)
    config_maps: dict[str, KubeObject] = field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> labels
    slices: dict[str, list[KubeObject]] = field(default_factory=dict)  # ns/service

    @classmethod
    def of(cls, objects: Iterable[KubeObject]) -> _World:
        world = cls()
        for obj in objects:
            kind = obj.kind
            if kind == "GatewayClass":
                world.classes[obj.name] = obj  # cluster-scoped: the name alone
            elif kind == "Gateway":
                world.gateways.append(obj)
            elif kind in ("HTTPRoute", "GRPCRoute"):
                world.http_routes.append(obj)
            elif kind == "TCPRoute":
                world.tcp_routes.append(obj)
            elif kind == "TLSRoute":
                world.tls_routes.append(obj)
            elif kind == "UDPRoute":
                world.udp_routes.append(obj)
            elif kind == "BackendTLSPolicy":
                world.backend_tls.append(obj)
            elif kind in listenersets.KIND_NAMES:
                world.listener_sets.append(obj)
            elif kind == "ReferenceGrant":
                world.grants.setdefault(obj.namespace, []).append(obj)
            elif kind == "Service":
                world.services[obj.key] = obj
            elif kind == "Secret":
                world.secrets[obj.key] = obj
            elif kind == "ConfigMap":
                world.config_maps[obj.key] = obj
            elif kind == "Namespace":
                world.namespaces[obj.name] = obj.labels()
            elif kind == "EndpointSlice":
                service = obj.label(SERVICE_NAME_LABEL)
                if service:
                    world.slices.setdefault(f"{obj.namespace}/{service}", []).append(obj)
        return world

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        # Kubernetes labels every namespace with its name.
        return {**self.namespaces.get(namespace, {}), NAMESPACE_NAME_LABEL: namespace}

    def permitted(self, from_kind: str, from_namespace: str, to_group: str, to_kind: str,
                  to_namespace: str, to_name: str, from_group: str = GATEWAY_GROUP) -> bool:
        """Whether a reference from a `from_kind` (of `from_group`) in `from_namespace` to
        an object in another namespace is allowed by a ReferenceGrant there."""
        if from_namespace == to_namespace:
            return True
        for grant in self.grants.get(to_namespace, ()):
            spec = grant.spec()
            if not any(f.get("group") == from_group and f.get("kind") == from_kind
                       and f.get("namespace") == from_namespace for f in spec.get("from", ())):
                continue
            if any(t.get("group", "") == to_group and t.get("kind") == to_kind
                   and t.get("name") in (None, "", to_name) for t in spec.get("to", ())):
                return True
        return False


def _selected(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or ():
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or ()
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _conditions(*items: tuple[str, bool | None, str, str]) -> tuple[Condition, ...]:
    return tuple(Condition(kind, "Unknown" if ok is None else ("True" if ok else "False"),
                           reason, message) for kind, ok, reason, message in items)


# ---- listeners ----------------------------------------------------------------------------------


@dataclass
class _Listener:
    gateway: KubeObject
    index: int
    name: str
    port: int
    protocol: str
    hostname: str | None
    spec: dict[str, Any]
    kinds: tuple[str, ...] = ()
    certificates: tuple[TlsCertificate, ...] = ()
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, msg)
    attached: int = 0
    tcp_backends: tuple[Backend, ...] = ()  # TCP: the backends of the TCPRoute it serves
    udp_service: str | None = None  # UDP: the one Service of the UDPRoute it serves
    terminate: bool = False  # TLS: mode Terminate (its certificates end TLS), else Passthrough
    # spec.tls.frontend of its port: the CA client certificates must chain to (None: none
    # asked for), where it was read, and AllowInsecureFallback (a client may also go without).
    client_ca: bytes | None = None
    client_ca_path: str | None = None
    client_optional: bool = False
    # The ListenerSet whose listener it is (None: the Gateway's own); `index` and `path` are
    # then that document's.
    source: KubeObject | None = None

    @property
    def owner(self) -> KubeObject:
        """The document that wrote it: its Gateway or its ListenerSet."""
        return self.source or self.gateway

    @property
    def tls_name(self) -> str:
        """Its TLS host's name on a shared HTTPS port: unique, as a ListenerSet's listener may
        have the name of a Gateway's (or another ListenerSet's) listener there."""
        return self.name if self.source is None else f"{self.source.key}/{self.name}"

    def origin(self) -> Origin:
        return Origin(self.owner.document.position_of(self.path), self.owner.kind,
                      self.owner.key, f"spec.listeners[{self.index}]")

    @property
    def valid(self) -> bool:
        """Programmed: accepted, in no conflict, its certificates resolved. (Route kinds it
        cannot serve are said in ResolvedRefs, and it serves the others.)"""
        return self.attachable and not any(
            reason in ("InvalidCertificateRef", "RefNotPermitted", "InvalidCACertificateRef",
                       "InvalidCACertificateKind")
            for _, reason, _ in self.problems)

    @property
    def attachable(self) -> bool:
        """Routes may attach (and are counted in attachedRoutes) even while its references
        are unresolved; only a programmed listener serves them."""
        return not any(kind in ("Accepted", "Conflicted") for kind, _, _ in self.problems)

    @property
    def path(self) -> FieldPath:
        return ("spec", "listeners", self.index)

    @property
    def transport(self) -> str:
        """The socket it binds: "udp" for UDP, "tcp" for the others. A UDP and a TCP socket can
        share a port number, so only listeners of one transport can conflict."""
        return "udp" if self.protocol == "UDP" else "tcp"


@dataclass
class _Params:
    address: str = "0.0.0.0"
    ports: dict[int, int] = field(default_factory=dict)


# (the rule's index, (match index, match) of each of its matches, the model Rule)
_BuiltRule = tuple[int, list[tuple[int, Match]], Rule]


@dataclass
class _Passthrough:
    """A TLSRoute's hostname on a TLS listener: the oldest route naming it serves it."""

    age: tuple[str, str]
    route: KubeObject
    backends: tuple[Backend, ...]
    listener: _Listener  # the listener it came through: it says whether TLS ends here


@dataclass(frozen=True, slots=True)
class _Attached:
    """An effect of a route: one more route attached to a Gateway's listener."""

    gateway: str
    listener: int  # its place in the compile's list of the Gateway's listeners


@dataclass(frozen=True, slots=True)
class _Placed:
    """An effect of a route: one of its entries on a hostname of a Gateway's listener."""

    gateway: str
    listener: int  # as in _Attached
    hostname: str
    order: tuple[Any, ...]
    rule: Rule


@dataclass(frozen=True, slots=True)
class _SendsTo:
    """An effect of a route: a Gateway serving it sends to these BackendTLSPolicy targets."""

    gateway: str
    targets: frozenset[tuple[str, str | None]]


@dataclass(frozen=True, slots=True)
class _Meshed:
    """An effect of a route whose parent is a Service: one entry of that Service's route."""

    service: str
    callers: str | None  # a consumer route's namespace: only its sidecars' calls; None: all
    entry: tuple[tuple[Any, ...], Rule, KubeObject]


# What attaching a route does, in order (its statuses are ObjectStatus values).
_Effect = ObjectStatus | _Attached | _Placed | _SendsTo | _Meshed
# The Services (ns/name) a compile read, each with the Kubernetes Service and EndpointSlices
# it found (None: no such Service). Kept alive by the memo, so compared by identity.
_Reads = dict[str, tuple[KubeObject | None, tuple[KubeObject, ...]]]
# What a kept compile depended on: the backdrop and what it read.
_Dependencies = tuple[tuple[object, ...], _Reads]


@dataclass
class _Entry:
    """One route entry in the making: a match of an HTTPRoute rule, with its precedence."""

    order: tuple[Any, ...]
    rule: Rule
    listener: _Listener


class _Compiler:
    def __init__(self, world: _World, natives: dict[str, Service],
                 backdrop: tuple[tuple[object, ...], tuple[Service, ...]],
                 contexts: dict[int, DocumentContext]):
        self.world = world
        self.natives = natives
        self.backdrop = backdrop
        self._contexts = contexts
        self._backdrops: dict[int, bool] = {}
        self._reads: _Reads | None = None  # what the route being compiled read, if recorded
        self.walk: Walk | None = None  # the walk it compiles (`Walk.compile`), if kept
        self.statuses: list[ObjectStatus] = []
        self.gateways: list[Gateway] = []
        self.routes: list[Route] = []
        self.services: dict[str, Service] = {}
        self.listeners: dict[str, list[_Listener]] = {}  # gateway ns/name -> its listeners
        # ListenerSet ns/name -> (its Gateway, the ListenerSet, why the Gateway refuses it or
        # None) for every ListenerSet naming a Gateway of ours
        self.listener_sets: dict[str, listenersets.Known] = {}
        self.params: dict[str, _Params] = {}  # gateway ns/name -> its class's parameters
        # gateway key -> port -> hostname -> entries
        self.entries: dict[str, dict[int, dict[str, list[_Entry]]]] = {}
        # gateway key -> port -> SNI hostname ("*": any) -> the TLSRoute serving it
        self.passthrough: dict[str, dict[int, dict[str, _Passthrough]]] = {}
        # GAMMA: native Service -> the route entries of the routes whose parent it is
        # (Service, the namespace a consumer route's callers are in; None: every caller) ->
        # the entries of its mesh routes
        self.mesh_entries: dict[tuple[str, str | None],
                                list[tuple[tuple[Any, ...], Rule, KubeObject]]] = {}
        self.native_mesh_routes: dict[str, str] = {}
        # (Service ns/name, port name or None: every port) -> the TLS of its connections, or
        # None: a policy that cannot be applied (its backends answer 5xx, never plaintext)
        self.backend_tls: dict[tuple[str, str | None], UpstreamTls | None] = {}
        # Each BackendTLSPolicy, the targets it names (applied or conflicted) and its
        # conditions: its status is said per ancestor Gateway once the routes are known.
        self.policies: list[tuple[KubeObject, list[tuple[str, str | None]],
                                  tuple[Condition, ...]]] = []
        # Gateway -> the Service (port) targets its served HTTP routes send to, as written
        self.sends_to: dict[str, set[tuple[str, str | None]]] = {}
        # Gateway -> its tls.backend client certificate (None: it does not resolve) and the
        # Gateway's ResolvedRefs; absent: it names none
        self.backend_client: dict[str, tuple[TlsCertificate | None, Resolved]] = {}

    def report(self, obj: KubeObject, path: FieldPath, message: str) -> None:
        """An issue that refuses the load, at the value at `path` of `obj`'s document."""
        self._contexts[id(obj)].report(path, message, at_value=True)

    def issues(self) -> int:
        return len(next(iter(self._contexts.values())).load.issues)

    def parts(self) -> list[ModelPart]:
        return [*self.gateways, *self.routes, *self.services.values()]

    def status(self, obj: KubeObject, kind: str, name: str, path: FieldPath,
               conditions: tuple[Condition, ...], parent: str = "",
               details: tuple[tuple[str, str], ...] = ()) -> None:
        self.statuses.append(self._status_of(obj, kind, name, path, conditions, parent,
                                             details))

    @staticmethod
    def _status_of(obj: KubeObject, kind: str, name: str, path: FieldPath,
                   conditions: tuple[Condition, ...], parent: str = "",
                   details: tuple[tuple[str, str], ...] = ()) -> ObjectStatus:
        return ObjectStatus(kind, name, obj.document.position_of(path), conditions, parent,
                            details)

    def run(self) -> None:
        holder = self.backdrop[0][0].memo if self.backdrop[0] else None
        kept = holder.pop(_PHASE_MEMO, None) if holder is not None else None
        issues = self.issues()
        touched: dict[str, set[int | tuple[int, str]]] | None = None
        if kept is not None and kept.reusable(self):
            touched = self._patched_http_phase(kept)
        else:
            kept = None
            self._backend_tls_policies()
            classes = self._classes()
            for gateway in self.world.gateways:
                self._gateway(gateway, classes)
            self._between_gateways()
            before = len(self.statuses)
            for route in sorted(self.world.http_routes, key=_route_age):
                self._http_route(route)
            if holder is not None:
                kept = _KeptPhase.of(self, before)
        # TLSRoutes first: on a TLS listener that terminates, a TCPRoute takes the listener's
        # hostname only where no TLSRoute names it.
        for route in sorted(self.world.tls_routes, key=_route_age):
            self._tls_route(route)
        for route in sorted(self.world.tcp_routes, key=_route_age):
            self._tcp_route(route)
        for route in sorted(self.world.udp_routes, key=_route_age):
            self._udp_route(route)
        for gateway in self.world.gateways:
            self._finish_gateway(gateway, None if touched is None else touched.get(gateway.key))
        self.statuses.extend(listenersets.orphans(
            self.world.listener_sets, {gateway.key for gateway in self.world.gateways}))
        self._finish_mesh()
        self._backend_tls_statuses()
        if holder is not None and kept is not None and kept.complete and \
                self.issues() == issues:
            holder[_PHASE_MEMO] = kept  # only a compile that reported nothing is kept
            kept.walk = self.walk
            kept.compiles = self.walk.compiles if self.walk is not None else 0

    def _patched_http_phase(self, kept: _KeptPhase) -> dict[str, set[int | tuple[int, str]]]:
        """The compile up to its HTTP routes, from the last one over the same backdrop
        (`_KeptPhase`): its listeners and what its routes did, less what the routes gone,
        edited or reading an edited Service or EndpointSlice did, plus what those routes do
        now. A route's effects depend on no other route, and where they land does not hang
        on the order they are applied in (entries are sorted by precedence, which includes
        the route's age; statuses by object). The places touched: per Gateway, each
        (port, hostname) whose entries changed, or a port whose wildcard's did."""
        self.listeners, self.params = kept.listeners, kept.params
        self.entries, self.passthrough = kept.entries, kept.passthrough
        self.listener_sets, self.backend_client = kept.listener_sets, kept.backend_client
        self.services = kept.services
        walk = self.walk
        if walk is not None and walk.changed is not None and kept.walk is walk and \
                kept.compiles == walk.compiles - 1:
            # The walk was patched since the compile kept: it says what the edit changed.
            changed_routes, changed_reads = walk.changed
            stale = {route for key in changed_reads for route in kept.readers.get(key, ())}
            stale.update(changed_routes)
            now = {}
            for key in stale:  # a route that only read what changed is the one kept
                route = changed_routes[key] if key in changed_routes else kept.routes[key][0]
                if route is not None:
                    now[key] = route
        else:
            changed_reads = {key for key, (service, slices) in kept.reads.items()
                             if self.world.services.get(key) is not service or
                             not _same_objects(self.world.slices.get(key, ()), slices)}
            stale = {route for key in changed_reads for route in kept.readers.get(key, ())}
            now = {}
            for route in self.world.http_routes:
                now[route.key] = route
                held = kept.routes.get(route.key)
                if held is None or held[0] is not route:
                    stale.add(route.key)
            stale.update(key for key in kept.routes if key not in now)
        touched: dict[str, set[int | tuple[int, str]]] = {}
        for key in stale:
            held = kept.routes.pop(key, None)
            if held is not None:
                kept.forget(held)
                self._unapply(held[1], touched)
        for key in sorted(stale, key=lambda key: _route_age(now[key]) if key in now else ()):
            route = now.get(key)
            if route is None:
                continue
            effects = self._http_route(route)
            kept.remember(route, effects)
            self._touch(effects, touched)
        # (`_http_route` said the statuses of the routes compiled again: said once, here)
        self.statuses = [*kept.statuses, *chain.from_iterable(kept.route_statuses.values())]
        return touched

    def _unapply(self, effects: list[_Effect], touched: dict[str, set[int | tuple[int, str]]],
                 ) -> None:
        """Undo `_apply(effects)` (of a kept compile without BackendTLSPolicies or mesh
        routes: `_KeptPhase.of`), noting the places it touched."""
        self._touch(effects, touched)
        for effect in effects:
            if isinstance(effect, _Attached):
                self.listeners[effect.gateway][effect.listener].attached -= 1
            elif isinstance(effect, _Placed):
                listener = self.listeners[effect.gateway][effect.listener]
                by_host = self.entries[effect.gateway][listener.port]
                found = by_host[effect.hostname]
                at = next(i for i, entry in enumerate(found) if entry.rule is effect.rule and
                          entry.order == effect.order and entry.listener is listener)
                del found[at]
                if not found:
                    del by_host[effect.hostname]

    def _touch(self, effects: list[_Effect],
               touched: dict[str, set[int | tuple[int, str]]]) -> None:
        for effect in effects:
            if isinstance(effect, _Placed):
                port = self.listeners[effect.gateway][effect.listener].port
                places = touched.setdefault(effect.gateway, set())
                # A wildcard's entries join every hostname it covers: the whole port.
                places.add(port if effect.hostname.startswith("*") else
                           (port, effect.hostname))

    # ---- BackendTLSPolicy ----

    def _backend_tls_policies(self) -> None:
        """What each BackendTLSPolicy says of the connections to the Services (or one port of
        them, `sectionName`: the port's name) it targets, the oldest first: a later policy for
        the same target is Conflicted. A policy without a usable CA certificate keeps its
        targets from being sent anything (5xx), never in plaintext."""
        for policy in sorted(self.world.backend_tls, key=_route_age):
            spec = policy.spec()
            validation = spec["validation"]
            if not validation.get("caCertificateRefs") and \
                    not validation.get("wellKnownCACertificates"):
                self.report(policy, ("spec", "validation"), 'one of "caCertificateRefs" and '
                            '"wellKnownCACertificates" must be given')
                continue
            tls, refs = self._policy_tls(policy, validation)
            targets: list[tuple[str, str | None]] = []
            conflicted: list[tuple[str, str | None]] = []
            for ref in spec["targetRefs"]:
                if ref["group"] != "" or ref["kind"] != "Service":
                    continue  # not a kind we send to: nothing to apply it to
                target = (f"{policy.namespace}/{ref['name']}", ref.get("sectionName"))
                (conflicted if target in self.backend_tls else targets).append(target)
            for target in targets:
                self.backend_tls[target] = tls
            if conflicted and not targets:
                accepted = (False, "Conflicted", "an older BackendTLSPolicy targets " + ", ".join(
                    service + (f" port {port}" if port else "") for service, port in conflicted))
            elif tls is None:
                accepted = (False, "NoValidCACertificate", refs[2])
            else:
                accepted = (True, "Accepted", "")
            self.policies.append((policy, [*targets, *conflicted], _conditions(
                ("Accepted", *accepted),
                ("ResolvedRefs", refs[0], refs[1], refs[2] if not refs[0] else ""))))

    def _backend_tls_statuses(self) -> None:
        """Each BackendTLSPolicy's status per ancestor (the spec's PolicyAncestorStatus): every
        Gateway whose served routes send to a Service port the policy targets, whether it
        applies there or lost to an older policy; a policy no Gateway sends through has one
        status of its own (no ancestor)."""
        ancestors: dict[tuple[str, str | None], set[str]] = {}  # target -> Gateways
        for gateway, targets in self.sends_to.items():
            for target in targets:
                ancestors.setdefault(target, set()).add(gateway)
        for policy, targets, conditions in self.policies:
            gateways = sorted({g for t in targets for g in ancestors.get(t, ())})
            for gateway in gateways or [""]:
                self.status(policy, "BackendTLSPolicy", policy.key, ("spec", "targetRefs"),
                            conditions, parent=gateway)

    def _targets_of(self, route: KubeObject) -> set[tuple[str, str | None]]:
        """The BackendTLSPolicy targets the backendRefs (and mirrors) of a route, as written,
        fall under: each Service's whole, and its port's by the port's name, whether the
        reference resolves or not (a policy without a valid CA makes it not)."""
        found: set[tuple[str, str | None]] = set()
        for rule in route.spec().get("rules") or ():
            refs = [*(rule.get("backendRefs") or ()),
                    *((f.get("requestMirror") or {}).get("backendRef") or {}
                      for f in rule.get("filters") or ())]
            for ref in refs:
                if not ref or (ref.get("group") or "") != "" or \
                        ref.get("kind", "Service") != "Service":
                    continue
                key = f"{ref.get('namespace') or route.namespace}/{ref['name']}"
                service = self.world.services.get(key)
                if self._reads is not None:  # what this route's compile depends on
                    self._reads[key] = (service, tuple(self.world.slices.get(key, ())))
                if service is None:
                    continue
                found.add((key, None))
                found.update((key, p.get("name", "")) for p in service.spec().get("ports") or ()
                             if p.get("port") == ref.get("port"))
        return found

    def _policy_tls(self, policy: KubeObject, validation: dict[str, Any],
                    ) -> tuple[UpstreamTls | None, tuple[bool, str, str]]:
        """The TLS a policy asks for (None: no valid CA certificate), and its ResolvedRefs."""
        sans = tuple(("dns" if item["type"] == "Hostname" else "uri",
                      item["hostname"] if item["type"] == "Hostname" else item["uri"])
                     for item in validation.get("subjectAltNames") or ())
        origin = _origin(policy, ("spec", "validation"))
        if validation.get("wellKnownCACertificates") == "System":
            bundle, where = _system_ca()
            if bundle is None:
                return None, (False, "InvalidCACertificateRef",
                              "this machine has no system CA bundle to trust")
            return UpstreamTls(sni=validation["hostname"], ca_path=where, ca=bundle,
                               origin=origin, subject_alt_names=sans), \
                (True, "ResolvedRefs", "")
        pems: list[bytes] = []
        problem: tuple[str, str] | None = None
        for index, ref in enumerate(validation["caCertificateRefs"]):
            key = f"{policy.namespace}/{ref['name']}"
            if ref["group"] != "" or ref["kind"] != "ConfigMap":
                problem = problem or ("InvalidKind", f"caCertificateRefs[{index}] "
                                      f"{ref['group'] or 'core'}/{ref['kind']} is not a "
                                      "ConfigMap")
                continue
            pem, why = self._config_map_ca(key)
            if why is not None:
                problem = problem or ("InvalidCACertificateRef", why)
                continue
            pems.append(pem)
        resolved = (True, "ResolvedRefs", "") if problem is None else (False, *problem)
        if not pems:
            return None, resolved
        return UpstreamTls(sni=validation["hostname"], ca_path=f"configmap:{policy.key}",
                           ca=b"".join(pems), origin=origin, subject_alt_names=sans), resolved

    def _config_map_ca(self, key: str) -> tuple[bytes, str | None]:
        """The `ca.crt` of ConfigMap `key` (ending in a newline, so bundles join), and why it
        is no CA certificate bundle (None: it is one)."""
        config = self.world.config_maps.get(key)
        if config is None:
            return b"", f"no ConfigMap {key}"
        pem = ((config.body.get("data") or {}).get("ca.crt") or "").encode()
        why = _ca_problem(pem, key)
        return (pem if pem.endswith(b"\n") else pem + b"\n"), why

    # ---- GatewayClass and Gateway ----

    def _classes(self) -> dict[str, _Params | None]:
        """Our classes' parameters (None: ours, but its parameters are invalid)."""
        ours: dict[str, _Params | None] = {}
        for name, obj in sorted(self.world.classes.items()):
            spec = obj.spec()
            if spec["controllerName"] != CONTROLLER:
                continue  # another controller's: no status of ours
            params, problem = self._class_params(spec.get("parametersRef"))
            ours[name] = params
            ok = problem is None
            self.status(obj, "GatewayClass", name, ("metadata", "name"), _conditions(
                ("Accepted", ok, "Accepted" if ok else "InvalidParameters", problem or "")))
        return ours

    def _class_params(self, ref: dict[str, Any] | None) -> tuple[_Params | None, str | None]:
        if ref is None:
            return _Params(), None
        if ref.get("group") != "" or ref.get("kind") != "ConfigMap":
            return None, "parametersRef must name a ConfigMap (group \"\")"
        key = f"{ref.get('namespace') or 'default'}/{ref['name']}"
        config = self.world.config_maps.get(key)
        if config is None:
            return None, f"no ConfigMap {key}"
        data = config.body.get("data") or {}
        params = _Params()
        address = data.get("address")
        if address is not None:
            try:
                params.address = str(ipaddress.ip_address(address))
            except ValueError:
                return None, f"ConfigMap {key}: address {address!r} is not an IP address"
        for item in re.split(r"[\s,]+", data.get("ports", "").strip()):
            if not item:
                continue
            written, _, bound = item.partition(":")
            if not (written.isdigit() and bound.isdigit()
                    and 0 < int(written) < 65536 and 0 < int(bound) < 65536):
                return None, (f"ConfigMap {key}: ports item {item!r} is not "
                              "LISTENER_PORT:BOUND_PORT")
            params.ports[int(written)] = int(bound)
        return params, None

    def _gateway(self, obj: KubeObject, classes: dict[str, _Params | None]) -> None:
        spec = obj.spec()
        class_name = spec["gatewayClassName"]
        if class_name not in classes:
            self.status(obj, "Gateway", obj.key, ("spec", "gatewayClassName"), _conditions(
                ("Accepted", None, "Pending",
                 f"no GatewayClass {class_name} with controllerName {CONTROLLER}")))
            return
        params = classes[class_name]
        if params is None:
            self.status(obj, "Gateway", obj.key, ("spec", "gatewayClassName"), _conditions(
                ("Accepted", False, "InvalidParameters",
                 f"GatewayClass {class_name} has invalid parameters"),
                ("Programmed", False, "Invalid", "")))
            for listener_set in self._sets_of(obj):
                self.statuses.append(listenersets.set_status(
                    listener_set, obj.key, ("ParentNotAccepted", "ParentNotProgrammed",
                                            f"Gateway {obj.key} is not accepted"), ()))
            return
        infra_ref = (spec.get("infrastructure") or {}).get("parametersRef")
        if infra_ref is not None:
            # No kind of per-Gateway parameters is read (the class's parametersRef is where
            # ports and address are set): serving the Gateway without them would ignore them.
            self.status(obj, "Gateway", obj.key, ("spec", "infrastructure", "parametersRef"),
                        _conditions(
                            ("Accepted", False, "InvalidParameters",
                             f"infrastructure.parametersRef {infra_ref.get('group') or 'core'}/"
                             f"{infra_ref.get('kind')}: no kind of Gateway parameters is "
                             "supported (set them on the GatewayClass)"),
                            ("Programmed", False, "Invalid", "")))
            return
        self.params[obj.key] = params
        client = client_certificate(obj, self.world.secrets, self.world.permitted)
        if client is not None:
            self.backend_client[obj.key] = client
        listeners: list[_Listener] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(spec["listeners"]):
            if item["name"] in seen:
                self.report(obj, ("spec", "listeners", index, "name"),
                            f'listener name "{item["name"]}" is used twice (first at '
                            f'spec.listeners[{seen[item["name"]]}])')
                continue
            seen[item["name"]] = index
            listeners.append(self._listener(obj, index, item))
        _mark_conflicts(listeners)
        listeners.extend(self._listener_sets(obj, listeners))
        # (transport, the port Envoy binds) -> the listener port first there
        bound: dict[tuple[str, int], int] = {}
        for transport, port in sorted({(lst.transport, lst.port) for lst in listeners
                                       if lst.valid}):
            socket_port = params.ports.get(port, port)
            first = bound.setdefault((transport, socket_port), port)
            if first != port:  # two listener ports on one socket (the class's port map)
                for listener in listeners:
                    if listener.port == port and listener.transport == transport:
                        listener.problems.append((
                            "Accepted", "PortUnavailable",
                            f"port {port} is bound as {socket_port}, as port {first} is"))
        self.listeners[obj.key] = listeners
        self.entries[obj.key] = {}
        self.passthrough[obj.key] = {}

    def _sets_of(self, gateway: KubeObject) -> list[KubeObject]:
        """The ListenerSets naming `gateway`, in the spec's precedence."""
        return listenersets.in_precedence(
            one for one in self.world.listener_sets
            if listenersets.parent_gateway(one) == gateway.key)

    def _listener_sets(self, gateway: KubeObject, own: list[_Listener]) -> list[_Listener]:
        """The listeners of the ListenerSets `gateway` takes, built as its own are, to follow
        them (`listenersets.merge`: precedence and conflicts)."""
        listeners, known = listenersets.merge(
            gateway, self._sets_of(gateway), own,
            lambda index, item, source: self._listener(gateway, index, item, source),
            lambda selector, namespace: _selected(
                selector, self.world.namespace_labels(namespace)))
        self.listener_sets.update(known)
        return listeners

    def _parent(self, route: KubeObject, ref: dict[str, Any],
                ) -> tuple[str, str, KubeObject | None] | None:
        """What a route's parentRef names, if it is a Gateway of ours or a ListenerSet naming
        one: (the Gateway's key, the parent as status names it, the ListenerSet or None)."""
        key = f"{ref.get('namespace') or route.namespace}/{ref['name']}"
        section = f"/{ref['sectionName']}" if ref.get("sectionName") else ""
        if listenersets.names_listener_set(ref):
            known = self.listener_sets.get(key)
            if known is None:
                return None
            return known[0], f"{known[1].kind}:{key}{section}", known[1]
        if ref.get("group", GATEWAY_GROUP) != GATEWAY_GROUP or \
                ref.get("kind", "Gateway") != "Gateway" or key not in self.listeners:
            return None  # another kind, or not a Gateway of ours
        return key, key + section, None

    def _between_gateways(self) -> None:
        """Listeners of different Gateways that would bind one socket (the address and port
        their classes' parameters give, an address of one machine or the unspecified address
        beside a specific one: `_same_socket`) cannot
        both be served: each Gateway is its own Envoys, which cannot share a socket. The oldest
        Gateway (creationTimestamp, then namespace/name) keeps it; a later one's listener
        there is Conflicted (ProtocolConflict: another protocol, TLS beside HTTPS included;
        HostnameConflict: the same hostname), or else not accepted (PortUnavailable), and
        not programmed, so a running Gateway never loses its port to one added later."""
        # (transport, bound port) -> owners: a UDP socket and a TCP one can share a port
        taken: dict[tuple[str, int], list[tuple[str, KubeObject, _Listener]]] = {}
        for gateway in sorted(self.world.gateways, key=_route_age):
            listeners = self.listeners.get(gateway.key)
            if listeners is None:
                continue
            params = self.params[gateway.key]
            kept: list[tuple[int, _Listener]] = []
            for listener in listeners:
                if not listener.attachable:
                    continue  # refused already: it binds nothing
                bound = params.ports.get(listener.port, listener.port)
                owner = next(((address, g, other) for address, g, other
                              in taken.get((listener.transport, bound), ())
                              if _same_socket(address, params.address)), None)
                if owner is None:
                    kept.append((bound, listener))
                    continue
                other_address, other_gateway, other = owner
                where = (f"port {listener.port} is bound as {params.address}:{bound} by "
                         f"listener {other.name} of Gateway {other_gateway.key}")
                if other_address != params.address:  # one is the unspecified address
                    where += (f" on {other_address}:{bound} (the unspecified address takes "
                              "the port on every address)")
                if other.protocol != listener.protocol:
                    listener.problems.append(("Conflicted", "ProtocolConflict",
                                              f"{where} (protocol {other.protocol})"))
                elif other.hostname == listener.hostname:
                    listener.problems.append(("Conflicted", "HostnameConflict",
                                              f"{where}, with the same hostname"))
                else:
                    listener.problems.append(("Accepted", "PortUnavailable",
                                              f"{where}; Gateways are not merged"))
            for bound, listener in kept:
                taken.setdefault((listener.transport, bound), []).append(
                    (params.address, gateway, listener))

    def _listener(self, gateway: KubeObject, index: int, spec: dict[str, Any],
                  source: KubeObject | None = None) -> _Listener:
        protocol = spec["protocol"]
        listener = _Listener(gateway, index, spec["name"], spec["port"], protocol,
                             spec.get("hostname"), spec, source=source)
        if protocol not in _ROUTE_KINDS_BY_PROTOCOL:
            listener.problems.append(("Accepted", "UnsupportedProtocol",
                                      f"protocol {protocol} is not supported yet"))
            return listener
        if protocol == "TLS":
            # Passthrough: the connections go on encrypted. Terminate (the spec's default):
            # Envoy ends TLS with the listener's certificates and proxies the plaintext.
            listener.terminate = (spec.get("tls") or {}).get("mode", "Terminate") == "Terminate"
        listener.kinds = self._route_kinds(listener)
        if protocol == "TLS":
            if listener.terminate:
                listener.certificates = self._certificates(
                    listener, (spec.get("tls") or {}).get("certificateRefs") or ())
                self._frontend_validation(listener)
            return listener
        if protocol == "HTTPS":
            tls = spec.get("tls") or {}
            if tls.get("mode", "Terminate") != "Terminate":
                listener.problems.append(("Accepted", "UnsupportedValue",
                                          "HTTPS listeners terminate TLS (mode Terminate)"))
                return listener
            listener.certificates = self._certificates(listener, tls.get("certificateRefs") or ())
            self._frontend_validation(listener)
        return listener

    def _frontend_validation(self, listener: _Listener) -> None:
        """The Gateway's spec.tls.frontend for a listener ending TLS: its port's perPort entry,
        else `default` (a perPort entry replaces it whole). A CA that cannot be resolved leaves
        the listener unprogrammed (ResolvedRefs False): serving it without the client check
        it asks for would let in whom it means to keep out."""
        frontend = ((listener.gateway.body.get("spec") or {}).get("tls") or {}).get("frontend")
        if not frontend:
            return
        path: FieldPath = ("spec", "tls", "frontend", "default")
        config = frontend.get("default") or {}
        for index, entry in enumerate(frontend.get("perPort") or ()):
            if entry["port"] == listener.port:
                path, config = ("spec", "tls", "frontend", "perPort", index, "tls"), entry["tls"]
                break
        validation = config.get("validation")
        if not validation:
            return
        gateway = listener.gateway
        pems: list[bytes] = []
        for index, ref in enumerate(validation["caCertificateRefs"]):
            namespace = ref.get("namespace") or gateway.namespace
            key = f"{namespace}/{ref['name']}"
            if ref["group"] != "" or ref["kind"] != "ConfigMap":
                listener.problems.append((
                    "ResolvedRefs", "InvalidCACertificateKind",
                    f"{'.'.join(map(str, path))}.validation.caCertificateRefs[{index}] "
                    f"{ref['group'] or 'core'}/{ref['kind']} is not a ConfigMap"))
                continue
            if not self.world.permitted("Gateway", gateway.namespace, "", "ConfigMap",
                                        namespace, ref["name"]):
                listener.problems.append(("ResolvedRefs", "RefNotPermitted",
                                          f"no ReferenceGrant in {namespace} lets Gateways of "
                                          f"{gateway.namespace} use ConfigMap {key}"))
                continue
            pem, why = self._config_map_ca(key)
            if why is not None:
                listener.problems.append(("ResolvedRefs", "InvalidCACertificateRef", why))
                continue
            pems.append(pem)
        if not pems:  # the spec's reason for a port left with no CA to check clients by
            listener.problems.append(("Accepted", "NoValidCACertificate",
                                      "no CA certificate of the client validation resolves"))
        if pems and len(pems) == len(validation["caCertificateRefs"]):
            listener.client_ca = b"".join(pems)
            listener.client_ca_path = f"configmap:{gateway.key}:{'.'.join(map(str, path))}"
            listener.client_optional = validation.get("mode") == "AllowInsecureFallback"

    def _route_kinds(self, listener: _Listener) -> tuple[str, ...]:
        supported = _ROUTE_KINDS_BY_PROTOCOL[listener.protocol]
        if listener.terminate:  # what TLS carried, as plain bytes: a TCPRoute's too
            supported = (*supported, "TCPRoute")
        written = (listener.spec.get("allowedRoutes") or {}).get("kinds")
        if not written:
            return supported
        kinds: list[str] = []
        for item in written:
            if item.get("group", GATEWAY_GROUP) == GATEWAY_GROUP and item["kind"] in supported:
                kinds.append(item["kind"])
            else:
                listener.problems.append(("ResolvedRefs", "InvalidRouteKinds",
                                          f"route kind {item['kind']} is not supported on a "
                                          f"{listener.protocol} listener"))
        return tuple(dict.fromkeys(kinds))

    def _certificates(self, listener: _Listener,
                      refs: Sequence[dict[str, Any]]) -> tuple[TlsCertificate, ...]:
        gateway = listener.owner  # a ListenerSet's references are its own, granted to it
        if not refs:
            listener.problems.append(("ResolvedRefs", "InvalidCertificateRef",
                                      f"a {listener.protocol} listener terminating TLS needs "
                                      "tls.certificateRefs"))
            return ()
        found: list[TlsCertificate] = []
        for ref in refs:
            namespace = ref.get("namespace") or gateway.namespace
            key = f"{namespace}/{ref['name']}"
            if ref.get("group", "") != "" or ref.get("kind", "Secret") != "Secret":
                listener.problems.append(("ResolvedRefs", "InvalidCertificateRef",
                                          f"certificateRef {key} is not a Secret"))
                continue
            if not self.world.permitted(gateway.kind, gateway.namespace, "", "Secret", namespace,
                                        ref["name"], from_group=gateway.group):
                listener.problems.append(("ResolvedRefs", "RefNotPermitted",
                                          f"no ReferenceGrant in {namespace} lets "
                                          f"{gateway.kind}s of {gateway.namespace} use Secret "
                                          f"{key}"))
                continue
            secret = self.world.secrets.get(key)
            problem = "no such Secret" if secret is None else None
            certificate = None
            if secret is not None:
                certificate, problem = tls_secret(secret)
            if certificate is None:
                listener.problems.append(("ResolvedRefs", "InvalidCertificateRef",
                                          f"Secret {key}: {problem}"))
                continue
            found.append(certificate)
        return tuple(found)

    # ---- routes ----

    def _http_route(self, route: KubeObject) -> list[_Effect]:
        """Attach an HTTPRoute (or GRPCRoute): its entries on every listener it attaches to,
        its statuses. What that takes is what it took last time for this very route document
        over the same other documents (`backdrop`), so an edit that leaves a route and every
        non-route document alone replays its effects instead of compiling it again."""
        kept = route.memo.get("effects")
        if kept is not None and self._holds(kept[0]):
            # Its Services join this compile, as the rules it was made with made them
            # (checking the rules' memo again would check a subset of the same reads).
            self.services.update(kept[2])
            effects = kept[1]
        else:
            route.memo.pop("effects", None)
            before = self.issues()
            self._reads = {}
            try:
                effects, cacheable = self._http_route_effects(route)
            finally:
                reads, self._reads = self._reads, None
            rules = route.memo.get("rules")
            if cacheable and self.issues() == before and rules is not None:
                route.memo["effects"] = ((self.backdrop, reads), effects, rules[2])
        self._apply(effects)
        return effects

    def _http_route_effects(self, route: KubeObject) -> tuple[list[_Effect], bool]:
        """What attaching `route` does, in order, without doing it; and whether it depends on
        nothing beyond the route and the backdrop (a mesh parent also depends on the native
        Routes, which the backdrop leaves out)."""
        spec = route.spec()
        hostnames = tuple(spec.get("hostnames") or ())
        rules, resolved, unsupported = self._rules_of(route)
        effects: list[_Effect] = []
        cacheable = True
        attached: set[int] = set()  # listeners (by id) this route is attached to already
        meshed: set[str] = set()  # Services this route shapes calls to already
        for ref_index, ref in enumerate(spec.get("parentRefs") or ()):
            path = ("spec", "parentRefs", ref_index)
            if ref.get("group", GATEWAY_GROUP) == "" and ref.get("kind") == "Service":
                cacheable = False
                self._mesh_parent(route, ref, path, rules, resolved, unsupported, effects,
                                  meshed)
                continue
            found = self._parent(route, ref)
            if found is None:
                continue  # another kind, or not a Gateway of ours
            gateway_key, parent, source = found
            listeners = self.listeners[gateway_key]
            accepted, reason, message, attach = self._attach(route, ref, listeners, hostnames,
                                                             source)
            if accepted and unsupported is not None:
                accepted, reason, message = False, "UnsupportedValue", unsupported
            elif accepted:
                for listener, effective in attach:
                    if id(listener) in attached:
                        continue  # two parentRefs to one listener: attached once
                    attached.add(id(listener))
                    at = next(i for i, one in enumerate(listeners) if one is listener)
                    effects.append(_Attached(gateway_key, at))
                    if listener.valid:
                        effects.append(_SendsTo(gateway_key,
                                                frozenset(self._targets_of(route))))
                        effects.extend(self._entries(gateway_key, listener, at, effective,
                                                     route, rules))
            ok_refs = resolved[0]
            effects.append(self._status_of(route, route.kind, route.key, path, _conditions(
                ("Accepted", accepted, reason, message),
                ("ResolvedRefs", ok_refs, resolved[1], resolved[2] if not ok_refs else "")),
                parent=parent))
        return effects, cacheable

    def _apply(self, effects: list[_Effect]) -> None:
        for effect in effects:
            if isinstance(effect, ObjectStatus):
                self.statuses.append(effect)
            elif isinstance(effect, _Attached):
                self.listeners[effect.gateway][effect.listener].attached += 1
            elif isinstance(effect, _Placed):
                listener = self.listeners[effect.gateway][effect.listener]
                self.entries[effect.gateway].setdefault(listener.port, {}).setdefault(
                    effect.hostname, []).append(_Entry(effect.order, effect.rule, listener))
            elif isinstance(effect, _SendsTo):
                self.sends_to.setdefault(effect.gateway, set()).update(effect.targets)
            else:
                self.mesh_entries.setdefault((effect.service, effect.callers), []).append(
                    effect.entry)

    def _mesh_parent(self, route: KubeObject, ref: dict[str, Any], path: FieldPath,
                     rules: list[_BuiltRule], resolved: tuple[bool, str, str],
                     unsupported: str | None, effects: list[_Effect], meshed: set[str],
                     ) -> None:
        """GAMMA: a route whose parent is a Service shapes what every sidecar calling that
        Service sends. The Service is a native one (`NAME` in namespace default, or
        `NAME.NAMESPACE`): sidecars are native Services (docs/mesh.md). Hostnames are not
        used (the spec's mesh semantics); `port` and `sectionName` are not checked. A parent
        in another namespace makes a consumer route (GEP-1294): it shapes only the calls of
        sidecars in the route's own namespace, so it needs no ReferenceGrant."""
        namespace = ref.get("namespace") or route.namespace
        key = f"{namespace}/{ref['name']}"
        native = next((n for n in ((ref["name"], f"{ref['name']}.{namespace}")
                                   if namespace == "default" else (f"{ref['name']}.{namespace}",))
                       if n in self.natives), None)
        accepted, reason, message = True, "Accepted", ""
        if native is None:
            accepted, reason, message = False, "NoMatchingParent", (
                f"no native Service {ref['name'] if namespace == 'default' else ''}"
                f"{' or ' if namespace == 'default' else ''}{ref['name']}.{namespace} (the "
                "mesh's sidecars are native Services)")
        elif native in self.native_mesh_routes:
            accepted, reason, message = False, "UnsupportedValue", (
                f"the native Route {self.native_mesh_routes[native]} shapes calls to Service "
                f"{native} already")
        elif unsupported is not None:
            accepted, reason, message = False, "UnsupportedValue", unsupported
        if accepted and native is not None and native not in meshed:
            meshed.add(native)  # two parentRefs: attached once
            age = _route_age(route)
            callers = route.namespace if namespace != route.namespace else None
            for index, matches, built in rules:
                for match_index, match in matches:
                    rank = _grpc_precedence(route, index, match_index) \
                        if route.kind == "GRPCRoute" else _precedence(match)
                    effects.append(_Meshed(native, callers, ((*rank, *age, index, match_index),
                                                    _with_match(built, match), route)))
        effects.append(self._status_of(route, route.kind, route.key, path, _conditions(
            ("Accepted", accepted, reason, message),
            ("ResolvedRefs", resolved[0], resolved[1], resolved[2] if not resolved[0] else "")),
            parent=key))

    def _finish_mesh(self) -> None:
        """One model Route per Service that mesh routes name, `mesh/SERVICE`, its rules every
        route's entries in the spec's precedence (as on a Gateway's hostname); and one per
        Service and namespace of consumer routes, `mesh/SERVICE/callers/NAMESPACE`, which the
        sidecars of that namespace take instead (GEP-1294: the routes of one kind merge,
        consumer routes with consumer routes only)."""
        for (service, callers), entries in sorted(self.mesh_entries.items(),
                                                  key=lambda item: (item[0][0],
                                                                    item[0][1] or "")):
            entries.sort(key=lambda e: e[0])
            first = entries[0][2]
            self.routes.append(Route(
                f"mesh/{service}" + (f"/callers/{callers}" if callers else ""),
                first.document.position, None,
                rules=tuple(rule for _, rule, _ in entries), service=service,
                callers_namespace=callers,
                origin=Origin(first.document.position, first.kind, first.key)))

    def _attach(self, route: KubeObject, ref: dict[str, Any], listeners: list[_Listener],
                hostnames: tuple[str, ...], source: KubeObject | None = None,
                ) -> tuple[bool, str, str, list[tuple[_Listener, list[str]]]]:
        """Which of the Gateway's `listeners` the route attaches to through `ref`: those of the
        parent it names (the Gateway's own, or the ListenerSet `source`'s)."""
        section = ref.get("sectionName")
        port = ref.get("port")
        candidates = [lst for lst in listeners if lst.source is source
                      and (section is None or lst.name == section)
                      and (port is None or lst.port == port)]
        if not candidates:
            refused = self.listener_sets[source.key][2] if source is not None else None
            if source is not None and refused is not None:
                return False, "NoMatchingParent", \
                    f"ListenerSet {source.key} is not accepted: {refused[2]}", []
            return False, "NoMatchingParent", "no listener matches sectionName and port", []
        allowed = [lst for lst in candidates if lst.attachable
                   and route.kind in lst.kinds and self._namespace_allowed(lst, route)]
        if not allowed:
            return False, "NotAllowedByListeners", \
                "no listener allows this route (namespace, kind, or listener invalid)", []
        attach: list[tuple[_Listener, list[str]]] = []
        for listener in allowed:
            effective = _intersect(listener.hostname, hostnames)
            effective = [h for h in effective
                         if not _claimed_elsewhere(h, listener, listeners)]
            if effective:
                attach.append((listener, effective))
        if not attach:
            return False, "NoMatchingListenerHostname", \
                "no hostname of the route intersects a listener's hostname", []
        return True, "Accepted", "", attach

    def _namespace_allowed(self, listener: _Listener, route: KubeObject) -> bool:
        namespaces = (listener.spec.get("allowedRoutes") or {}).get("namespaces") or {}
        source = namespaces.get("from", "Same")
        if source == "All":
            return True
        if source == "Same":
            return route.namespace == listener.owner.namespace
        if source == "Selector":
            return _selected(namespaces.get("selector") or {},
                             self.world.namespace_labels(route.namespace))
        return False

    def _gateway_parents(self, route: KubeObject, hostnames: tuple[str, ...],
                         ) -> Iterator[tuple[int, str, str,
                                             tuple[bool, str, str,
                                                   list[tuple[_Listener, list[str]]]]]]:
        """A TCPRoute's, UDPRoute's or TLSRoute's parentRefs that name a Gateway of this
        compile: (index, Gateway key, the parent as status names it, what `_attach` says)."""
        for ref_index, ref in enumerate(route.spec().get("parentRefs") or ()):
            found = self._parent(route, ref)
            if found is not None:
                gateway_key, parent, source = found
                yield ref_index, gateway_key, parent, self._attach(
                    route, ref, self.listeners[gateway_key], hostnames, source)

    def _stream_status(self, route: KubeObject, ref_index: int, parent: str,
                       accepted: tuple[bool, str, str], resolved: tuple[bool, str, str]) -> None:
        self.status(route, route.kind, route.key, ("spec", "parentRefs", ref_index),
                    _conditions(("Accepted", *accepted),
                                ("ResolvedRefs", resolved[0], resolved[1],
                                 resolved[2] if not resolved[0] else "")), parent=parent)

    def _tcp_route(self, route: KubeObject) -> None:
        """A TCPRoute: every connection to the TCP listeners it attaches to goes to its
        backends, shared by weight. A listener serves one TCPRoute, the oldest; later ones are
        accepted and counted but not served there. No backend that resolves: the listener is
        not served (connections refused); beside valid ones, an invalid backend's share of
        connections is closed."""
        backends, resolved = self._stream_backends(route)
        if backends is None:
            return
        served = backends if any(b.resolved for b in backends) else ()
        ended: tuple[Backend, ...] | None = None  # on a listener that ends TLS, when one does
        for ref_index, gateway_key, parent, (accepted, reason, message, attach) in \
                self._gateway_parents(route, ()):
            if accepted:
                # Every route naming a listener is accepted and counted (attachedRoutes); the
                # oldest one is served there, as the spec's conformance tests expect.
                for listener, effective in attach:
                    if listener.protocol == "TLS" and listener.valid:
                        # Its SNI's connections, as a TLSRoute's (none resolving: closed).
                        if listener.terminate and ended is None:
                            ended = self._ended_backends(route, gateway_key)
                        through = ended if listener.terminate and ended is not None else \
                            _or_closed(route, backends)
                        by_host = self.passthrough[gateway_key].setdefault(listener.port, {})
                        for hostname in effective:
                            by_host.setdefault(hostname, _Passthrough(
                                _route_age(route), route, through, listener))
                    elif listener.attached == 0:
                        listener.tcp_backends = served
                    listener.attached += 1
            self._stream_status(route, ref_index, parent, (accepted, reason, message), resolved)

    def _udp_route(self, route: KubeObject) -> None:
        """A UDPRoute: every datagram to the UDP listeners it attaches to goes to one Service
        made for the route (`_udp_service`: Envoy's UDP proxy names one cluster), whose
        endpoints are its backends' by weight. A listener serves one UDPRoute, the oldest, as
        with TCPRoutes. No backend that resolves: the listener is not served."""
        backends, resolved = self._stream_backends(route, protocol="udp")
        if backends is None:
            return
        service = self._udp_service(route, backends)
        for ref_index, _, parent, (accepted, reason, message, attach) in \
                self._gateway_parents(route, ()):
            if accepted:
                for listener, _ in attach:
                    if listener.attached == 0:
                        listener.udp_service = service
                    listener.attached += 1
            self._stream_status(route, ref_index, parent, (accepted, reason, message), resolved)

    def _udp_service(self, route: KubeObject, backends: Sequence[Backend]) -> str | None:
        """One Service ("NS/ROUTE:udp") whose endpoints are the union of the resolved
        backends' endpoints, each weighted so that a backend's endpoints together take its
        weight's share (kgateway's approach): an endpoint of a backend of weight w with n
        endpoints weighs w * L / n, L the least common multiple of the n's, all divided by
        their greatest common divisor. A backend that does not resolve, or has no endpoints,
        keeps its share and drops it (`_DROP_DATAGRAMS`), as a TCPRoute's closes its
        connections. None: no backend resolves."""
        parts: list[tuple[int, tuple[Endpoint, ...]]] = []
        for backend in backends:
            made = self.services.get(backend.service) or self.natives.get(backend.service) \
                if backend.resolved else None
            parts.append((backend.weight, made.endpoints if made is not None and made.endpoints
                          else (replace(_DROP_DATAGRAMS, origin=backend.origin),)))
        for backend in backends:  # a ":udp" Service is only ever a part of this one
            if backend.service.endswith(":udp"):
                self.services.pop(backend.service, None)
        if not any(b.resolved for b in backends):
            return None
        common = math.lcm(*(len(endpoints) for _, endpoints in parts)) if parts else 1
        weights: dict[tuple[str, int], tuple[Endpoint, int]] = {}
        for weight, endpoints in parts:
            for endpoint in endpoints:
                key = (endpoint.host, endpoint.port)
                earlier = weights.get(key, (endpoint, 0))[1]
                weights[key] = (endpoint, earlier + weight * common // len(endpoints))
        divisor = math.gcd(*(w for _, w in weights.values())) if weights else 1
        name = f"{route.key}:udp"
        origin = Origin(route.document.position, route.kind, route.key)
        self.services[name] = Service(
            name, route.document.position, protocol="tcp",  # a plain cluster, no HTTP options
            endpoints=tuple(replace(endpoint, weight=w // divisor)
                            for _, (endpoint, w) in sorted(weights.items())),
            origin=origin)
        return name

    def _stream_backends(self, route: KubeObject, protocol: str = "tcp",
                         ) -> tuple[tuple[Backend, ...] | None, tuple[bool, str, str]]:
        """The weighted backends of a TCPRoute's, TLSRoute's or UDPRoute's rules (all rules
        together: they have no matches), those that do not resolve marked so, and the route's
        ResolvedRefs. None: a backendRef the API server would refuse (reported). `protocol`
        "tls": for a listener that ends TLS (`_backend`)."""
        resolved: tuple[bool, str, str] = (True, "ResolvedRefs", "")
        backends: list[Backend] = []
        for index, rule in enumerate(route.spec().get("rules") or ()):
            for b_index, ref in enumerate(rule.get("backendRefs") or ()):
                path: FieldPath = ("spec", "rules", index, "backendRefs", b_index)
                if (ref.get("group") or "") == "" and ref.get("kind", "Service") == "Service" \
                        and ref.get("port") is None:
                    self.report(route, (*path, "port"),
                                'missing "port" (a Service backendRef needs one)')
                    return None, resolved
                service, why = self._backend(route, ref, protocol=protocol)
                if service is None and resolved[0] and why[0]:
                    resolved = (False, *why)
                weight = ref.get("weight", 1)
                if weight > 0:
                    backends.append(Backend(service or _ref_text(route, ref), None, weight,
                                            _origin(route, path), resolved=service is not None))
        return tuple(backends), resolved

    def _tls_route(self, route: KubeObject) -> None:
        """A TLSRoute: TLS connections to the TLS (Passthrough) listeners it attaches to whose
        SNI is one of its hostnames (intersected with the listener's) go, still encrypted, to
        its backends by weight. A hostname two routes name is served by the older one. No
        backend that resolves: those connections are closed, as the spec asks."""
        spec = route.spec()
        hostnames = tuple(spec.get("hostnames") or ())
        backends, resolved = self._stream_backends(route)
        if backends is None:
            return
        served = _or_closed(route, backends)
        ended: tuple[Backend, ...] | None = None  # on a listener that ends TLS, when one does
        attached: set[int] = set()
        for ref_index, gateway_key, parent, (accepted, reason, message, attach) in \
                self._gateway_parents(route, hostnames):
            if accepted:
                for listener, effective in attach:
                    if id(listener) in attached:
                        continue
                    attached.add(id(listener))
                    listener.attached += 1
                    if not listener.valid:
                        continue
                    if listener.terminate and ended is None:
                        ended = self._ended_backends(route, gateway_key)
                    by_host = self.passthrough[gateway_key].setdefault(listener.port, {})
                    for hostname in effective:  # routes come oldest first: the first keeps it
                        by_host.setdefault(hostname, _Passthrough(
                            _route_age(route), route,
                            ended if listener.terminate and ended is not None else served,
                            listener))
            self._stream_status(route, ref_index, parent, (accepted, reason, message), resolved)

    def _ended_backends(self, route: KubeObject, gateway_key: str) -> tuple[Backend, ...]:
        """A TLSRoute's or TCPRoute's backends behind a listener that ends TLS: a Service port
        a BackendTLSPolicy targets is sent TLS again (its own cluster, `:tls`; a policy without
        a valid CA: closed, never plaintext), the others plain TCP. The Gateway becomes an
        ancestor of the policies it applies."""
        backends, _ = self._stream_backends(route, protocol="tls")
        self.sends_to.setdefault(gateway_key, set()).update(self._targets_of(route))
        return _or_closed(route, backends)

    # ---- rules ----

    def _rules_of(self, route: KubeObject) -> tuple[list[_BuiltRule], tuple[bool, str, str],
                                                    str | None]:
        """`_rules(route)`, or what it gave last time for this very route document over the
        same other documents (`backdrop`); the Services it made are made again from their
        kept objects. Only a compile that reported nothing is kept, so a reused one can have
        no issue to repeat."""
        kept = route.memo.get("rules")
        if kept is not None and self._holds(kept[0]):
            self.services.update(kept[2])
            if self._reads is not None:
                self._reads.update(kept[0][1])
            return kept[1]  # type: ignore[no-any-return]
        before = self.issues()
        outer, self._reads = self._reads, {}
        try:
            result = self._rules(route)
        finally:
            reads, self._reads = self._reads, outer
        if outer is not None:
            outer.update(reads)
        if self.issues() == before:
            made = {name: self.services[name] for name in self._services_of(result[0])
                    if name in self.services}
            route.memo["rules"] = ((self.backdrop, reads), result, made)
        return result

    def _holds(self, dependencies: _Dependencies) -> bool:
        """Whether what a kept compile depended on is what this one has: the same backdrop,
        and for each Service it read, the very Service and EndpointSlice documents."""
        backdrop, reads = dependencies
        if not self._same_backdrop(backdrop):
            return False
        for key, (service, slices) in reads.items():
            now = self.world.slices.get(key, ())
            if self.world.services.get(key) is not service or len(now) != len(slices) or \
                    any(a is not b for a, b in zip(now, slices, strict=True)):
                return False
        return True

    def _same_backdrop(self, earlier: tuple[object, ...]) -> bool:
        """Whether an earlier compile's backdrop is this one's: the very documents (kept
        alive by the memos holding the tuple, so an id is never another's) and equal native
        Services; compared once per earlier tuple (the routes of one load share it)."""
        same = self._backdrops.get(id(earlier))
        if same is None:
            (documents, natives), (now, now_natives) = earlier, self.backdrop
            same = len(documents) == len(now) and \
                all(a is b for a, b in zip(documents, now, strict=True)) and \
                natives == now_natives
            self._backdrops[id(earlier)] = same
        return same

    @staticmethod
    def _services_of(rules: list[_BuiltRule]) -> set[str]:
        return {b.service for _, _, rule in rules for b in (*rule.backends, *rule.mirrors)}

    def _rules(self, route: KubeObject) -> tuple[list[_BuiltRule], tuple[bool, str, str],
                                                 str | None]:
        """Each rule's matches and its model Rule (its one match filled in per listener), the
        route's ResolvedRefs (ok, reason, message), and why the route cannot be served as
        written (an unsupported filter), if it cannot."""
        result: list[_BuiltRule] = []
        resolved: tuple[bool, str, str] = (True, "ResolvedRefs", "")
        unsupported: str | None = None
        for index, rule in enumerate(route.spec().get("rules") or [{}]):
            written = rule.get("matches")
            to_match = _grpc_match if route.kind == "GRPCRoute" else _match
            matches = [(i, to_match(m, _origin(route, ("spec", "rules", index, "matches", i)
                                                if written else ("spec", "rules", index))))
                       for i, m in enumerate(written or [{}])]
            if route.kind == "GRPCRoute":
                self._check_grpc_matches(route, index, written or ())
            else:
                self._check_http_matches(route, index, written or ())
            built, problem, unsupported_here = self._rule(route, index, rule, matches)
            if problem is not None and resolved[0]:
                resolved = (False, problem[0], problem[1])
            unsupported = unsupported or unsupported_here
            result.append((index, matches, built))
        return result, resolved, unsupported

    def _check_http_matches(self, route: KubeObject, index: int,
                            written: Sequence[dict[str, Any]]) -> None:
        """Each RegularExpression of an HTTPRoute match (path, header, query parameter) as
        Envoy's RE2 will compile it, like a native regex: one Envoy would refuse (a lookahead,
        a backreference, too large a program) is reported at its place instead of NACKed."""
        for i, item in enumerate(written):
            path: FieldPath = ("spec", "rules", index, "matches", i)
            values: list[tuple[FieldPath, str]] = []
            if (item.get("path") or {}).get("type") == "RegularExpression":
                values.append(((*path, "path", "value"), item["path"].get("value", "/")))
            for member in ("headers", "queryParams"):
                for j, entry in enumerate(item.get(member) or ()):
                    if entry.get("type") == "RegularExpression":
                        values.append(((*path, member, j, "value"), entry["value"]))
            for where, value in values:
                problem = regex_problem(value)
                if problem is not None:
                    self.report(route, where, f"not a regular expression Envoy accepts: "
                                              f"{problem}")

    def _check_grpc_matches(self, route: KubeObject, index: int,
                            written: Sequence[dict[str, Any]]) -> None:
        """The CRD's rules of a GRPCRoute method match: a service or a method (or both); with
        type Exact, each a gRPC name; with RegularExpression, each a valid regex."""
        for i, item in enumerate(written):
            method = item.get("method")
            if method is None:
                continue
            path: FieldPath = ("spec", "rules", index, "matches", i, "method")
            service, name = method.get("service"), method.get("method")
            if not service and not name:
                self.report(route, path, 'one or both of "service" and "method" must be given')
                continue
            exact = method.get("type", "Exact") == "Exact"
            for key, value, pattern in (("service", service, _GRPC_SERVICE),
                                        ("method", name, _GRPC_METHOD)):
                if not value:
                    continue
                if exact and not pattern.fullmatch(value):
                    self.report(route, (*path, key),
                                f"{value!r} is not a gRPC {key} name (type Exact)")
                elif not exact:
                    # As Envoy will see it: inside the path pattern, through RE2.
                    problem = regex_problem(value) or re2_problem(
                        re2text.path_part(f"/({value})/(x)"))
                    if problem is not None:
                        self.report(route, (*path, key), f"not a regular expression: {problem}")

    def _rule(self, route: KubeObject, index: int, rule: dict[str, Any],
              matches: list[tuple[int, Match]],
              ) -> tuple[Rule, tuple[str, str] | None, str | None]:
        path: FieldPath = ("spec", "rules", index)
        origin = Origin(route.document.position_of(path), route.kind, route.key,
                        f"spec.rules[{index}]")
        request = HeaderOps()
        response = HeaderOps()
        redirect: Redirect | None = None
        rewrite_path: PathRewrite | None = None
        rewrite_host: str | None = None
        mirrors: list[Mirror] = []
        problem: tuple[str, str] | None = None
        unsupported: str | None = None
        cors: Cors | None = None
        prefix = _only_prefix(matches)
        for f_index, item in enumerate(rule.get("filters") or ()):
            kind = item["type"]
            settings = item.get(FILTER_MEMBERS[kind]) or {}
            here = _origin(route, (*path, "filters", f_index))
            if kind == "RequestHeaderModifier":
                request = _merge_ops(request, _header_ops(settings))
            elif kind == "ResponseHeaderModifier":
                response = _merge_ops(response, _header_ops(settings))
            elif kind in ("RequestRedirect", "URLRewrite"):
                modifier = settings.get("path")
                if modifier is not None and modifier["type"] == "ReplacePrefixMatch" \
                        and prefix is None:
                    self.report(route, (*path, "filters", f_index, FILTER_MEMBERS[kind],
                                        "path", "type"),
                                "ReplacePrefixMatch needs every match of the rule to be one "
                                "PathPrefix")
                    continue
                if kind == "RequestRedirect":
                    redirect = self._redirect(settings, prefix, here)
                else:
                    rewrite_host = settings.get("hostname")
                    if modifier is not None:
                        rewrite_path = _path_rewrite(modifier, prefix, here)
            elif kind == "CORS" and route.kind == "HTTPRoute":
                cors = _cors(settings, here)
            elif kind == "RequestMirror":
                target, why = self._backend(route, settings["backendRef"])
                if target is None:
                    problem = problem or (why if why[0] else None)
                else:
                    mirrors.append(Mirror(target, None, _mirror_percentage(settings), here))
            else:
                unsupported = f"filter {kind} is not supported yet"
        backends: list[Backend] = []
        websocket = False  # a backend's Service port says kubernetes.io/ws: upgrades allowed
        refs = rule.get("backendRefs") or ()
        for b_index, ref in enumerate(refs):
            bpath = (*path, "backendRefs", b_index)
            if (ref.get("group") or "") == "" and ref.get("kind", "Service") == "Service" \
                    and ref.get("port") is None:
                self.report(route, (*bpath, "port"),
                            'missing "port" (a Service backendRef needs one)')
                continue
            target, why = self._backend(route, ref,
                                        protocol="grpc" if route.kind == "GRPCRoute" else None)
            if target is None:
                problem = problem or (why if why[0] else None)
                if ref.get("weight", 1) > 0:
                    backends.append(Backend(_ref_text(route, ref), None, ref.get("weight", 1),
                                            origin, resolved=False))
                continue
            own_request: HeaderOps | None = None
            own_response: HeaderOps | None = None
            for f_item in ref.get("filters") or ():
                if f_item["type"] == "RequestHeaderModifier":
                    own_request = _merge_ops(own_request or HeaderOps(),
                                             _header_ops(f_item["requestHeaderModifier"]))
                elif f_item["type"] == "ResponseHeaderModifier":
                    own_response = _merge_ops(own_response or HeaderOps(),
                                              _header_ops(f_item["responseHeaderModifier"]))
                else:
                    unsupported = f"backendRef filter {f_item['type']} is not supported yet"
            websocket = websocket or self._speaks_websocket(route, ref)
            weight = ref.get("weight", 1)
            if weight > 0:
                backends.append(Backend(target, None, weight, origin,
                                        request_headers=own_request,
                                        response_headers=own_response))
        timeouts = rule.get("timeouts") or {}
        timeout = _duration(timeouts.get("request") or timeouts.get("backendRequest"))
        retries: Retries | None = None
        backend_timeout = _duration(timeouts.get("backendRequest"))
        if timeouts.get("request") and backend_timeout:
            # Each try of the backend within the whole request's time: Envoy's per-try timeout
            # (which holds for the first try too), with no retries.
            retries = Retries(0, per_try_timeout=backend_timeout)
        retry = rule.get("retry")
        if retry is not None:
            # attempts: retries after the first try (Envoy's num_retries; the spec's default
            # is left to implementations: one); codes: the statuses retried, beside connection
            # failures; backoff: Envoy's base interval.
            codes = tuple(dict.fromkeys(retry.get("codes") or ()))
            backoff = _duration(retry.get("backoff"))
            retries = Retries(
                retry.get("attempts", 1),
                on=("retriable-status-codes", "connect-failure", "reset") if codes
                else ("connect-failure", "reset"),
                per_try_timeout=retries.per_try_timeout if retries else None,
                backoff=Backoff(backoff) if backoff else None, retriable_status_codes=codes,
                origin=_origin(route, (*path, "retry")))
        session, why = self._session_persistence(route, index, rule.get("sessionPersistence"))
        unsupported = unsupported or why
        direct: DirectResponse | None = None
        if redirect is None and not any(b.resolved for b in backends):
            # No backend (none written, none valid, every weight 0): the spec's 500. With some
            # valid ones, an invalid one's share is answered 500 (`Backend.resolved`).
            direct = DirectResponse(500, origin=origin)
            backends, mirrors = [], []
        built = Rule(origin.position, matches=(Match(),), backends=tuple(backends),
                     redirect=redirect, direct_response=direct, rewrite_path=rewrite_path,
                     rewrite_host=rewrite_host, request_headers=request,
                     response_headers=response, timeout=timeout, retries=retries,
                     mirrors=tuple(mirrors), origin=origin, cors=cors,
                     websocket=websocket and direct is None,
                     security=Security(session_persistence=session))
        return built, problem, unsupported

    def _session_persistence(self, route: KubeObject, index: int,
                             written: dict[str, Any] | None,
                             ) -> tuple[SessionPersistence | None, str | None]:
        """A rule's `sessionPersistence` (GEP-1619) as Envoy's stateful session, or None and
        why it cannot be (the route is then not accepted, UnsupportedValue)."""
        if written is None:
            return None, None
        path: FieldPath = ("spec", "rules", index, "sessionPersistence")
        if _mesh_only(route):
            return None, "sessionPersistence is not supported on a Service parent yet"
        kind = written.get("type", "Cookie")
        name = (written.get(kind.lower()) or {}).get("name") or written.get("sessionName")
        lifetime = ((written.get("cookie") or written.get("cookieConfig") or {})
                    .get("lifetimeType", "Session"))
        timeout = _duration(written.get("absoluteTimeout"))
        if lifetime == "Permanent" and timeout is None:
            self.report(route, (*path, "absoluteTimeout"),
                        "a Permanent cookie needs absoluteTimeout (its lifetime)")
            return None, None
        if written.get("idleTimeout"):
            return None, ("sessionPersistence.idleTimeout is not supported (Envoy's session "
                          "state has no idle timeout)")
        here = _origin(route, path)
        if kind == "Header":
            if name is None:
                self.report(route, (*path, "header"), "a Header session needs header.name")
                return None, None
            if timeout is not None:
                return None, ("sessionPersistence.absoluteTimeout with type Header is not "
                              "supported (Envoy's header session state has no expiry)")
            return SessionPersistence(header=name.lower(), origin=here), None
        if name is None:  # the spec's generated name: one per rule, the same on every load
            digest = hashlib.sha256(f"{route.kind}/{route.key}/{index}".encode()).hexdigest()
            name = f"mp-session-{digest[:12]}"
        return SessionPersistence(cookie=name, cookie_path=(written.get("cookie") or {}).get(
            "path") or "/", cookie_ttl=timeout, origin=here), None

    def _speaks_websocket(self, route: KubeObject, ref: dict[str, Any]) -> bool:
        """Whether the Service port a (resolved) backendRef names has appProtocol
        kubernetes.io/ws or /wss (GEP-1911): its route entry lets requests upgrade."""
        namespace = ref.get("namespace") or route.namespace
        service = self.world.services.get(f"{namespace}/{ref['name']}")
        if service is None:
            return False
        port = next((p for p in service.spec().get("ports") or ()
                     if p["port"] == ref.get("port")), None)
        return port is not None and port.get("appProtocol") in WEBSOCKET_APP_PROTOCOLS

    def _redirect(self, settings: dict[str, Any], prefix: str | None,
                  origin: Origin) -> Redirect:
        scheme = settings.get("scheme")
        port = settings.get("port")
        modifier = settings.get("path")
        path = regex = None
        substitution = ""
        if modifier is not None and modifier["type"] == "ReplaceFullPath":
            path = modifier["replaceFullPath"]
        elif modifier is not None:
            regex, substitution = _prefix_regex(prefix or "/", modifier["replacePrefixMatch"])
        # The port is settled per listener (`_for_listener`): the listener's own when neither
        # a port nor a scheme is given.
        return Redirect(scheme=scheme, host=settings.get("hostname"), port=port, path=path,
                        status=settings.get("statusCode", 302), regex=regex,
                        substitution=substitution, origin=origin)

    def _backend(self, route: KubeObject, ref: dict[str, Any], protocol: str | None = None,
                 ) -> tuple[str | None, tuple[str, str]]:
        """The model Service a backendRef names, or None and (reason, message). A GRPCRoute's
        backends speak gRPC (HTTP/2 cleartext) whatever the Service's appProtocol says
        (`protocol` "grpc"), a TCPRoute's plain TCP ("tcp"), a UDPRoute's datagrams ("udp"), a
        TLSRoute's or TCPRoute's on a listener that ends TLS TCP in the TLS a BackendTLSPolicy
        asks for ("tls")."""
        group, kind = ref.get("group") or "", ref.get("kind", "Service")
        namespace = ref.get("namespace") or route.namespace
        name = ref["name"]
        key = f"{namespace}/{name}"
        if group != "" or kind != "Service":
            return None, ("InvalidKind", f"backendRef kind {group or 'core'}/{kind} is not "
                                         "supported (Service only)")
        if not _mesh_only(route) and not self.world.permitted(
                route.kind, route.namespace, "", "Service", namespace, name):
            return None, ("RefNotPermitted", f"no ReferenceGrant in {namespace} lets "
                                             f"{route.kind}s of {route.namespace} use Service "
                                             f"{key}")
        port = ref.get("port")
        service = self.world.services.get(key)
        if self._reads is not None:  # what this route's compile depends on
            self._reads[key] = (service, tuple(self.world.slices.get(key, ())))
        if service is not None:
            made = self._kube_service(service, port, protocol)
            if made is None:
                return None, ("BackendNotFound", f"Service {key} has no port {port}")
            if made is _NO_VALID_TLS:
                # Resolved, but its BackendTLSPolicy has no valid CA certificate (the policy's
                # status says so): never sent to in plaintext, its share answered 500.
                return None, ("", f"Service {key} port {port}: its BackendTLSPolicy has no "
                                  "valid CA certificate")
            return made, ("", "")
        for native in ((name, f"{name}.{namespace}") if namespace == "default"
                       else (f"{name}.{namespace}",)):
            if native in self.natives:
                return native, ("", "")
        return None, ("BackendNotFound", f"no Service {key}")

    def _kube_service(self, obj: KubeObject, port: int | None, kind: str | None = None,
                      ) -> str | None:
        spec = obj.spec()
        ports = spec.get("ports") or ()
        service_port = next((p for p in ports if p["port"] == port), None)
        if service_port is None:
            return None
        h2c = service_port.get("appProtocol") in ("kubernetes.io/h2c", "h2c")
        port_name = service_port.get("name", "")
        policy_key = next((k for k in ((obj.key, port_name), (obj.key, None))
                           if k in self.backend_tls), None)
        if kind == "tls" and policy_key is None:
            kind = "tcp"  # terminated, and no policy asks for TLS again: the plain cluster
        # A UDPRoute's, and TLS sent again: plain clusters (no HTTP options), as a TCPRoute's.
        protocol = "tcp" if kind in ("udp", "tls") else kind or ("http2" if h2c else "http")
        # Bytes passed through (a TCP or passthrough listener's) and datagrams are never
        # encrypted by us; BackendTLSPolicy is for HTTP, gRPC and TLS a listener ended.
        stream = kind in ("tcp", "udp")
        tls = self.backend_tls[policy_key] if policy_key is not None and not stream else None
        if policy_key is not None and not stream and tls is None:
            return _NO_VALID_TLS
        # A port a GRPCRoute uses is a cluster of its own (":grpc") unless it says h2c, so an
        # HTTPRoute to the same port keeps speaking HTTP/1.1 to it; a TCPRoute's, ":tcp"; the
        # bytes of TLS a listener ended, sent in TLS again by a BackendTLSPolicy, ":tls" (so a
        # passthrough listener's route to the same port keeps the plain ":tcp").
        suffix = {"grpc": "" if h2c else ":grpc", "tcp": ":tcp", "udp": ":udp",
                  "tls": ":tls"}.get(kind or "", "")
        name = f"{obj.key}:{port}{suffix}"
        if name in self.services:
            return name
        origin = Origin(obj.document.position, "Service", obj.key)
        endpoints: list[Endpoint] = []
        if spec.get("type") == "ExternalName" and spec.get("externalName"):
            endpoints.append(Endpoint(spec["externalName"], port or 80, origin=origin))
        else:
            target = service_port.get("targetPort", service_port["port"])
            for endpoint_slice in self.world.slices.get(obj.key, ()):
                number = _slice_port(endpoint_slice.body, port_name, target)
                if number is None:
                    continue
                for item in endpoint_slice.body.get("endpoints") or ():
                    if (item.get("conditions") or {}).get("ready") is False:
                        continue
                    for address in item.get("addresses") or ():
                        endpoints.append(Endpoint(address, number, zone=item.get("zone"),
                                                  origin=origin))
        unique = tuple(dict.fromkeys(sorted(endpoints, key=lambda e: (e.host, e.port))))
        self.services[name] = Service(name, obj.document.position, protocol=protocol,
                                      endpoints=unique, origin=origin, tls=tls)
        return name

    @staticmethod
    def _entries(gateway_key: str, listener: _Listener, at: int, hostnames: list[str],
                 route: KubeObject, rules: list[_BuiltRule]) -> Iterator[_Placed]:
        age = _route_age(route)
        for index, matches, built in rules:
            for match_index, match in matches:
                rule = _for_listener(built, match, listener)
                rank = _grpc_precedence(route, index, match_index) \
                    if route.kind == "GRPCRoute" else _precedence(match)
                order = (*rank, *age, index, match_index)
                for hostname in hostnames:
                    yield _Placed(gateway_key, at, hostname, order, rule)

    # ---- the model of a Gateway ----

    def _host_route(self, obj: KubeObject, port: int, hostname: str,
                    by_host: dict[str, list[_Entry]], wildcards: list[str],
                    on_port: list[_Listener], tls_hosts: bool, previous: dict[str, Any],
                    client: TlsCertificate | None) -> Route:
        """The model Route of one hostname of a Gateway's port: last time's if its entries are
        the very rules it holds (their routes' effects were replayed)."""
        entries = _host_entries(hostname, by_host, wildcards, on_port)
        if client is not None:  # TLS backends get this Gateway's certificate
            entries = [replace(e, rule=with_client_certificate(
                e.rule, obj.key, client, self.services)) for e in entries]
        name = f"{obj.key}/{port}/{hostname}"
        # Every entry of a hostname comes through the one listener it belongs to
        # (`_claimed_elsewhere`): that listener's table.
        tls_host = by_host[hostname][0].listener.tls_name if tls_hosts else None
        old = previous.get(name)
        if old is not None and old.tls_host == tls_host and len(old.rules) == len(entries) and \
                all(r is e.rule for r, e in zip(old.rules, entries, strict=True)):
            return old  # type: ignore[no-any-return]
        return _kept(Route(name, obj.document.position, obj.key, hosts=(hostname,),
                           rules=tuple(e.rule for e in entries), listeners=(str(port),),
                           origin=Origin(obj.document.position, "Gateway", obj.key),
                           tls_host=tls_host), previous)

    def _finish_gateway(self, obj: KubeObject,
                        touched: set[int | tuple[int, str]] | None = None) -> None:
        """The model Gateway, its Routes and the statuses of its listeners and itself;
        with `touched` (a patched compile, `_patched_http_phase`), a hostname's Route whose
        entries were not touched is the one made last time."""
        listeners = self.listeners.get(obj.key)
        if listeners is None:
            return
        params = self.params[obj.key]
        for listener in listeners:
            if listener.source is not None:
                continue  # said with its ListenerSet's status (`_listener_set_statuses`)
            problems = {kind: (reason, message) for kind, reason, message in
                        reversed(listener.problems)}
            accepted = problems.get("Accepted")
            refs = problems.get("ResolvedRefs")
            conflict = problems.get("Conflicted")
            self.status(obj, "Listener", f"{obj.key}/{listener.name}", listener.path,
                        _conditions(
                            ("Accepted", accepted is None, (accepted or ("Accepted",))[0],
                             (accepted or ("", ""))[1]),
                            ("ResolvedRefs", refs is None, (refs or ("ResolvedRefs",))[0],
                             (refs or ("", ""))[1]),
                            ("Conflicted", conflict is not None,
                             (conflict or ("NoConflicts",))[0], (conflict or ("", ""))[1]),
                            ("Programmed", listener.valid, "Programmed" if listener.valid
                             else "Invalid", "")),
                        parent=obj.key,
                        details=(("attachedRoutes", str(listener.attached)),
                                 ("supportedKinds", ",".join(listener.kinds))))
        valid = [lst for lst in listeners if lst.valid]
        gateway_name = obj.key
        previous = dict(obj.memo)
        first = len(self.routes)  # this Gateway's Routes are appended from here
        ports: dict[int, tuple[dict[str, Route], list[str]]] = {}
        backend_client = self.backend_client.get(obj.key)
        client = backend_client[0] if backend_client else None
        model_listeners: list[GatewayListener] = []
        for port, transport in sorted({(lst.port, lst.transport) for lst in valid}):
            on_port = [lst for lst in valid if lst.port == port and lst.transport == transport]
            if on_port[0].protocol == "TCP":
                if on_port[0].tcp_backends:  # else nothing to serve: refused
                    model_listeners.append(GatewayListener(
                        str(port), params.ports.get(port, port), params.address,
                        protocol="tcp", backends=on_port[0].tcp_backends,
                        origin=on_port[0].origin()))
                continue
            if on_port[0].protocol == "UDP":
                if on_port[0].udp_service is not None:  # else nothing to serve
                    # Named apart from the port's TCP-borne listener (`NS/GW/PORT`), which
                    # may bind the same port number: a socket of another transport.
                    model_listeners.append(GatewayListener(
                        f"{port}:udp", params.ports.get(port, port), params.address,
                        protocol="udp", service=on_port[0].udp_service,
                        origin=on_port[0].origin()))
                continue
            if on_port[0].protocol == "TLS":
                sni = self.passthrough[obj.key].get(port, {})
                # The certificates of the listeners terminating TLS here: their Secrets are
                # the listener's (by index), each SNI's chain shows its listener's own.
                ending = tuple(dict.fromkeys(c for lst in on_port if lst.terminate
                                             for c in lst.certificates))
                if sni:  # else nothing to serve: connections refused
                    model_listeners.append(GatewayListener(
                        str(port), params.ports.get(port, port), params.address,
                        protocol="tcp", passthrough=tuple(
                            TlsPassthrough(() if hostname == "*" else (hostname,),
                                           entry.backends if client is None else
                                           with_client_backends(entry.backends, gateway_name,
                                                                client, self.services),
                                           origin=_origin(entry.route, ("spec",)),
                                           terminate=entry.listener.certificates
                                           if entry.listener.terminate else ())
                            for hostname, entry in sorted(sni.items())),
                        # Not HTTP: no ALPN offered (a client must not think it speaks h2).
                        tls=ListenerTls(ending, alpn=(), origin=_origin(obj, on_port[0].path),
                                        **_client_check(next(
                                            lst for lst in on_port if lst.terminate)))
                        if ending else None,
                        origin=on_port[0].origin()))
                continue
            certificates = tuple(dict.fromkeys(c for lst in on_port for c in lst.certificates))
            tls = ListenerTls(certificates, origin=_origin(obj, (*on_port[0].path, "tls")),
                              **_client_check(on_port[0])) \
                if on_port[0].protocol == "HTTPS" else None
            # HTTPS listeners sharing a port: a filter chain and a route table each, by SNI
            # (GEP-3567's misdirected requests, `_tls_hosts`).
            hosts = _tls_hosts(obj, on_port) if tls is not None and len(on_port) > 1 else ()
            model_listeners.append(GatewayListener(
                str(port), params.ports.get(port, port), params.address, tls=tls,
                tls_hosts=hosts,
                origin=on_port[0].origin()))
            by_host = self.entries[obj.key].get(port, {})
            # A patched compile that touched some hostnames of the port (none a wildcard's:
            # then `touched` holds the port) makes only theirs; the others are last time's.
            # (Not with a client certificate for TLS backends: its rules read every Service.)
            last = None if touched is None or port in touched or client is not None else \
                previous.get(_PORTS_MEMO, {}).get(port)
            if last is None:
                wildcards = [h for h in by_host if h.startswith("*")]  # what may cover others
                made_here = {hostname: self._host_route(obj, port, hostname, by_host, wildcards,
                                                        on_port, bool(hosts), previous, client)
                             for hostname in sorted(by_host)}
            else:
                made_here, wildcards = dict(last[0]), last[1]
                for place in touched:  # type: ignore[union-attr]
                    if type(place) is tuple and place[0] == port:
                        if place[1] in by_host:
                            made_here[place[1]] = self._host_route(
                                obj, port, place[1], by_host, wildcards, on_port, bool(hosts),
                                previous, client)
                        else:
                            made_here.pop(place[1], None)
            ports[port] = (made_here, wildcards)
            self.routes.extend(made_here.values())
            if hosts:
                served = {h for h, found in by_host.items() for e in found[:1]
                          if e.listener.hostname == h}
                self.routes.extend(_kept(route, previous) for route in
                                   _misdirected(obj, port, on_port, hosts, served))
        obj.memo.clear()
        mine = self.routes[first:]
        obj.memo.update(zip(map(_route_name, mine), mine, strict=True))
        obj.memo[_PORTS_MEMO] = ports
        gateway = Gateway(gateway_name, obj.document.position, tuple(model_listeners),
                          origin=Origin(obj.document.position, "Gateway", obj.key))
        kept = previous.get(_GATEWAY_MEMO)
        if kept is not None and _same_in_place(kept, gateway):
            gateway = kept  # the translation follows changes by identity: unchanged, kept
        obj.memo[_GATEWAY_MEMO] = gateway
        self.gateways.append(gateway)
        own = [lst for lst in listeners if lst.source is None]
        all_valid = all(lst.valid for lst in own)
        statuses, sets = listenersets.statuses(obj.key, self.listener_sets.values(), listeners)
        self.statuses.extend(statuses)
        self.status(obj, "Gateway", obj.key, ("metadata", "name"), _conditions(
            # ListenersNotValid also beside True: served, but not every listener is.
            ("Accepted", bool(valid), "Accepted" if all_valid else "ListenersNotValid",
             "" if all_valid else "some listeners are not valid"),
            ("Programmed", bool(valid), "Programmed" if valid else "Invalid", ""))
            # ResolvedRefs is the Gateway's own references' (tls.backend), when it has any.
            + (_conditions(("ResolvedRefs", *backend_client[1])) if backend_client else ())
            # The spec's warning that some port lets clients in without a valid certificate.
            + _conditions(("InsecureFrontendValidationMode", True, "ConfigurationChanged",
                           "a port validates client certificates with AllowInsecureFallback"))
            * any(lst.client_optional for lst in valid),
            # upstream's attachedListenerSets, said where ListenerSets are asked for
            details=(("attachedListenerSets", str(sets)),)
            if "allowedListeners" in obj.spec() or any(
                parent == obj.key for parent, _, _ in self.listener_sets.values()) else ())


# ---- a compile patched by the routes that changed ----------------------------------------------

# The key of the memo of a compile's first backdrop document that holds its `_KeptPhase`.
_PHASE_MEMO = "\x00http-phase"


@dataclass
class _KeptPhase:
    """A compile up to and with its HTTP routes, kept for the next compile over the very
    same backdrop (`_Compiler._patched_http_phase`). Only for compiles with HTTPRoutes and
    GRPCRoutes alone (no stream routes, which write into listeners; no BackendTLSPolicy,
    whose statuses depend on what every route sends to; no mesh parent). Taken by the next
    compile (it changes in place), kept again only by one that reported nothing."""

    backdrop: tuple[tuple[object, ...], tuple[Service, ...]]
    listeners: dict[str, list[_Listener]]
    params: dict[str, _Params]
    entries: dict[str, dict[int, dict[str, list[_Entry]]]]
    passthrough: dict[str, dict[int, dict[str, _Passthrough]]]
    listener_sets: dict[str, listenersets.Known]
    backend_client: dict[str, tuple[TlsCertificate | None, Resolved]]
    statuses: list[ObjectStatus]  # those said before the HTTP routes
    services: dict[str, Service]
    # route ns/name -> (its document, its effects, the Services it made), and what it read
    routes: dict[str, tuple[KubeObject, list[_Effect], dict[str, Service]]]
    route_reads: dict[str, _Reads]
    route_statuses: dict[str, tuple[ObjectStatus, ...]]  # the statuses among its effects
    reads: dict[str, tuple[KubeObject | None, tuple[KubeObject, ...]]]  # as read, by Service
    readers: dict[str, set[str]]  # Service ns/name -> the routes that read it
    makers: dict[str, int]  # Service made -> how many routes made it
    complete: bool = True  # every route's effects known (else it is not kept)
    walk: Walk | None = None  # the walk compiled, and how many compiles it had then
    compiles: int = 0

    @classmethod
    def of(cls, compiler: _Compiler, before: int) -> _KeptPhase | None:
        world = compiler.world
        if world.tcp_routes or world.tls_routes or world.udp_routes or world.backend_tls:
            return None
        kept = cls(compiler.backdrop, compiler.listeners, compiler.params, compiler.entries,
                   compiler.passthrough, compiler.listener_sets, compiler.backend_client,
                   compiler.statuses[:before], compiler.services, {}, {}, {}, {}, {}, {})
        for route in world.http_routes:
            memo = route.memo.get("effects")
            if memo is None:
                return None  # a mesh parent, or an issue: not kept
            kept.remember(route, memo[1])
        return kept

    def reusable(self, compiler: _Compiler) -> bool:
        world = compiler.world
        return not (world.tcp_routes or world.tls_routes or world.udp_routes) and \
            compiler._same_backdrop(self.backdrop)

    def remember(self, route: KubeObject, effects: list[_Effect]) -> None:
        """`route`'s compile, from its memo (written by `_http_route` when it reported
        nothing and depends on nothing beyond its reads); without one, not kept."""
        memo = route.memo.get("effects")
        if memo is None or memo[1] is not effects:
            self.complete = False
            return
        (_, reads), _, made = memo
        self.routes[route.key] = (route, effects, made)
        self.route_reads[route.key] = reads
        self.route_statuses[route.key] = tuple(effect for effect in effects
                                               if type(effect) is ObjectStatus)
        for key, read in reads.items():
            self.reads[key] = read
            self.readers.setdefault(key, set()).add(route.key)
        for name in made:
            self.makers[name] = self.makers.get(name, 0) + 1

    def forget(self, held: tuple[KubeObject, list[_Effect], dict[str, Service]]) -> None:
        """A route's compile undone: what it read and the Services it made."""
        route, _, made = held
        self.route_statuses.pop(route.key, None)
        for key in self.route_reads.pop(route.key, {}):
            readers = self.readers[key]
            readers.discard(route.key)
            if not readers:
                del self.readers[key], self.reads[key]
        for name in made:
            self.makers[name] -= 1
            if not self.makers[name]:
                del self.makers[name], self.services[name]


def _same_objects(one: Sequence[object], other: Sequence[object]) -> bool:
    return len(one) == len(other) and all(a is b for a, b in zip(one, other, strict=True))


# ---- helpers ------------------------------------------------------------------------------------

def _client_check(listener: _Listener) -> dict[str, Any]:
    """The ListenerTls fields of a port's client-certificate check (spec.tls.frontend is per
    port, so every listener on the port has the same)."""
    return {"client_ca": listener.client_ca, "client_ca_path": listener.client_ca_path,
            "client_optional": listener.client_optional}


# What `_kube_service` gives for a port whose BackendTLSPolicy cannot be applied.
_NO_VALID_TLS = "\x00no valid BackendTLSPolicy"
# Where a UDPRoute's datagrams for a backend that cannot take them go: no socket can listen
# on port 0 (binding it asks for any free port), so nothing receives them, and on loopback
# they never leave the machine. Envoy's UDP proxy names one cluster (no weighted clusters):
# the share has to be an endpoint of it.
_DROP_DATAGRAMS = Endpoint("127.0.0.1", 0)


def _ca_problem(pem: bytes, key: str) -> str | None:
    """Why a ConfigMap's `ca.crt` is no CA certificate bundle, or None."""
    if not pem.strip():
        return f"ConfigMap {key} has no ca.crt"
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        return f"ConfigMap {key}: ca.crt holds no PEM certificate"
    return None


def _system_ca() -> tuple[bytes | None, str]:
    """The CA bundle this machine trusts (OpenSSL's default file), for
    `wellKnownCACertificates: System`: Envoy trusts only what it is given."""
    where = ssl.get_default_verify_paths().cafile or ssl.get_default_verify_paths().openssl_cafile
    try:
        return Path(where).read_bytes(), where
    except OSError:
        return None, where


# The key of a Gateway document's memo that holds the model Gateway made of it (the others
# are its model Routes' names, which are never empty, and `_PORTS_MEMO`).
_GATEWAY_MEMO = ""
# ... that holds, per HTTP(S) port, its Routes by hostname and its wildcard hostnames.
_PORTS_MEMO = "\x00ports"
_route_name = attrgetter("name")


def _same_in_place(old: Any, new: Any) -> bool:
    """Equal, and written at the same places: the fields equality leaves out (origins,
    positions) equal too, at every depth."""
    return old == new and _places(old) == _places(new)


def _places(value: Any) -> list[Any]:
    """The values of every field equality leaves out, in `value` and what it holds."""
    found: list[Any] = []
    if is_dataclass(value) and not isinstance(value, type):
        for item in fields(value):
            inner = getattr(value, item.name)
            if not item.compare:
                found.append(inner)
            elif not isinstance(inner, str | bytes | int | float | bool | None):
                found.extend(_places(inner))
    elif isinstance(value, tuple):
        for inner in value:
            found.extend(_places(inner))
    return found


def _kept(route: Route, previous: dict[str, Any]) -> Route:
    """The Route the last compile made of this Gateway, if it says the same (rules written at
    the same places too: origins are left out of equality); else `route`. Translation reuses
    what it built from a Route by identity."""
    old = previous.get(route.name)
    if old is None or old != route or \
            any(a.origin != b.origin for a, b in zip(old.rules, route.rules, strict=True)):
        return route
    return old  # type: ignore[no-any-return]


def _host_entries(hostname: str, by_host: dict[str, list[_Entry]], wildcards: list[str],
                  listeners: list[_Listener]) -> list[_Entry]:
    """The route entries of one virtual host, in the spec's order: the rules of routes naming
    this very hostname first, then those of each wildcard covering it, most specific first (down
    to routes with no hostname, "*"), each group in match precedence. A covering wildcard's rules
    join only when they come through the listener the hostname belongs to (the most specific
    listener hostname matching it), so listeners sharing a port stay isolated."""
    own = sorted(by_host[hostname], key=lambda e: e.order)
    owner = max((lst for lst in listeners if lst.hostname is None
                 or _covers(lst.hostname, hostname)),
                key=lambda lst: _specificity(lst.hostname), default=None)
    covering = sorted((w for w in wildcards if w != hostname and
                       (w == "*" or _covers(w, hostname))),
                      key=lambda w: _specificity(None if w == "*" else w), reverse=True)
    for wildcard in covering:
        own.extend(sorted((e for e in by_host[wildcard] if e.listener is owner),
                          key=lambda e: e.order))
    return own


def _same_socket(one: str, other: str) -> bool:
    """Whether Gateways binding these two addresses (on one port) are known to collide: one
    address that names one machine, or the unspecified address beside a specific one of its
    family (loopback too): a socket on 0.0.0.0 (::) takes that port on every address of the
    machine, so the kernel refuses the other bind or, with SO_REUSEPORT (Envoy's default),
    the two share its datagrams and connections unseen. Two binds of the unspecified address,
    or of one loopback address, are every machine's and every container's own (a compose
    stack runs each Gateway's Envoy in its own network namespace; the conformance suite runs
    its Gateways, all on 127.0.0.1, one at a time), so Gateways binding them may well never
    meet, and are not said to conflict."""
    a, b = ipaddress.ip_address(one), ipaddress.ip_address(other)
    if a.version != b.version:
        return False
    if a.is_unspecified != b.is_unspecified:
        return True
    return a == b and not (a.is_unspecified or a.is_loopback)


def _tls_hosts(obj: KubeObject, on_port: list[_Listener]) -> tuple[TlsHost, ...]:
    """The TLS hosts of HTTPS listeners sharing a port: one per listener, its SNI its hostname
    (none: the rest), its certificates its own; with no listener without a hostname, a last
    one ("*") for the connections whose SNI (or lack of one) no listener takes, shown every
    certificate (Envoy picks by SNI, the first by default) and answering 421 for every
    listener's hostname."""
    hosts = [TlsHost(lst.tls_name, (lst.hostname,) if lst.hostname else (), lst.certificates,
                     origin=_origin(lst.owner, lst.path)) for lst in on_port]
    if all(lst.hostname for lst in on_port):
        hosts.append(TlsHost(_OTHER_SNI, (), tuple(dict.fromkeys(
            c for lst in on_port for c in lst.certificates)), origin=_origin(obj, on_port[0].path)))
    return tuple(hosts)


_OTHER_SNI = "*"  # the TLS host of the SNIs no listener takes (no listener name holds "*")


def _misdirected(obj: KubeObject, port: int, on_port: list[_Listener],
                 hosts: tuple[TlsHost, ...], served: set[str]) -> list[Route]:
    """What each TLS host's table says of requests that belong to another listener of the port,
    as the spec asks (GEP-3567): a request whose Host another listener's hostname matches more
    specifically than this one's is answered 421 Misdirected Request (the client opens a
    connection of its own for it); one no listener takes is a 404. Envoy picks a virtual host
    as listeners are picked (an exact name, then the longest wildcard, then "*"), so each table
    holds a 421 virtual host of the other listeners' hostnames ("*" for one without), and the
    listener's own hostname is a virtual host of its own even with no route naming it (a
    404), lest a less specific 421 take its requests."""
    made: list[Route] = []
    gateway = obj.key
    for host in hosts:
        mine = next((lst for lst in on_port if lst.tls_name == host.name), None)
        others = sorted({lst.hostname or "*" for lst in on_port if lst is not mine})
        origin = _origin(obj, mine.path if mine is not None else on_port[0].path)
        position = origin.position
        made.append(Route(
            f"{gateway}/{port}/{host.name}{MISDIRECTED_ROUTE}", position, gateway,
            hosts=tuple(others),
            rules=(Rule(position, matches=(Match(),), direct_response=DirectResponse(
                421, "misdirected request: this host is another listener's; open a new "
                     "connection for it\n", origin=origin), origin=origin),),
            listeners=(str(port),), origin=origin, tls_host=host.name))
        if mine is not None and mine.hostname and mine.hostname not in served:
            made.append(Route(f"{gateway}/{port}/{mine.hostname}", position, gateway,
                              hosts=(mine.hostname,), listeners=(str(port),), origin=origin,
                              tls_host=host.name))
    return made


def _or_closed(route: KubeObject, backends: tuple[Backend, ...]) -> tuple[Backend, ...]:
    """A stream route's backends; every weight 0: one that never resolves, so the route's
    connections are closed (a cluster that is never made)."""
    return backends or (Backend(f"{route.kind}/{route.key}", resolved=False),)

def _mark_conflicts(listeners: list[_Listener]) -> None:
    """Listeners sharing a port and transport must share its protocol (a UDP listener and a
    TCP-borne one are two sockets: they do not conflict); on one protocol and port, hostnames
    must differ."""
    by_port: dict[tuple[str, int], list[_Listener]] = {}
    for listener in listeners:
        if listener.protocol in _ROUTE_KINDS_BY_PROTOCOL:
            by_port.setdefault((listener.transport, listener.port), []).append(listener)
    for (_, port), group in by_port.items():
        if len({lst.protocol for lst in group}) > 1:
            for listener in group:
                listener.problems.append(("Conflicted", "ProtocolConflict",
                                          f"listeners on port {port} use different protocols"))
            continue
        seen: dict[str | None, _Listener] = {}
        for listener in group:
            # TCP and UDP carry no hostname to tell listeners apart (the spec's "if supported
            # by the protocol"): two on one port always conflict.
            hostname = None if listener.protocol in ("TCP", "UDP") else listener.hostname
            if hostname in seen:
                for one in (seen[hostname], listener):
                    if not any(p[0] == "Conflicted" for p in one.problems):
                        one.problems.append(("Conflicted", "HostnameConflict",
                                             f"another listener on port {port} has hostname "
                                             f"{hostname or '(none)'}"))
            else:
                seen[hostname] = listener


def _origin(obj: KubeObject, path: FieldPath) -> Origin:
    """Where the field at `path` of a document was written, for the model element read from it."""
    return Origin(obj.document.position_of(path), obj.kind, obj.key, format_path(path))


def _ref_text(route: KubeObject, ref: dict[str, Any]) -> str:
    """A backendRef as written, for the name of its (never made) cluster."""
    group, kind = ref.get("group") or "", ref.get("kind", "Service")
    prefix = "" if (group, kind) == ("", "Service") else f"{group}/{kind}:"
    port = f":{ref['port']}" if ref.get("port") else ""
    return f"{prefix}{ref.get('namespace') or route.namespace}/{ref['name']}{port}"


def _route_age(route: KubeObject) -> tuple[str, str]:
    """Older first, then namespace/name: the spec's tie-breaks across routes. A route without
    creationTimestamp sorts as of one time with every other such route."""
    stamp = route.body["metadata"].get("creationTimestamp") or "~"
    return (stamp, route.key)


def _match(written: dict[str, Any], origin: Origin) -> Match:
    path = written.get("path") or {}
    kind = path.get("type", "PathPrefix")
    value = path.get("value", "/")
    how = StringMatch({"Exact": "exact", "PathPrefix": "prefix",
                       "RegularExpression": "regex"}[kind], value)  # type: ignore[arg-type]
    headers: dict[str, StringMatch] = {}
    for item in written.get("headers") or ():
        name = item["name"].lower()
        if name not in headers:  # the first of equal names counts (the spec)
            headers[name] = StringMatch("regex" if item.get("type") == "RegularExpression"
                                        else "exact", item["value"])
    query: dict[str, StringMatch] = {}
    for item in written.get("queryParams") or ():
        if item["name"] not in query:
            query[item["name"]] = StringMatch("regex" if item.get("type") == "RegularExpression"
                                              else "exact", item["value"])
    method = written.get("method")
    return Match(how, (method,) if method else (), tuple(sorted(headers.items())),
                 tuple(sorted(query.items())), origin, whole_segments=kind == "PathPrefix")


WEBSOCKET_APP_PROTOCOLS = ("kubernetes.io/ws", "kubernetes.io/wss")
_GRPC_SERVICE = re.compile(r"(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*")
_GRPC_METHOD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


def _mesh_only(route: KubeObject) -> bool:
    """Whether every parent of `route` is a Service: its backends, in any namespace, need no
    ReferenceGrant (GEP-1294: a mesh route augments Services its callers reach already)."""
    parents = route.spec().get("parentRefs") or ()
    return bool(parents) and all(ref.get("group", GATEWAY_GROUP) == "" and
                                 ref.get("kind") == "Service" for ref in parents)


def _grpc_match(written: dict[str, Any], origin: Origin) -> Match:
    """A GRPCRoute match as a path match on /SERVICE/METHOD (gRPC's request path): Exact with
    both, the exact path; with the service only, the prefix /SERVICE/; with the method only, a
    regex on any service. RegularExpression: the regexes in place of each part (any part left
    out matches any name). No method: every path. Headers as HTTPRoute's."""
    method = written.get("method")
    how: StringMatch = StringMatch("prefix", "/")
    if method is not None:
        service, name = method.get("service"), method.get("method")
        if method.get("type", "Exact") == "Exact":
            if service and name:
                how = StringMatch("exact", f"/{service}/{name}")
            elif service:
                how = StringMatch("prefix", f"/{service}/")
            elif name:
                how = StringMatch("regex", f"/[^/]+/{re.escape(name)}")
        else:
            how = StringMatch("regex", f"/({service or '[^/]+'})/({name or '[^/]+'})")
    headers: dict[str, StringMatch] = {}
    for item in written.get("headers") or ():
        header = item["name"].lower()
        if header not in headers:
            headers[header] = StringMatch("regex" if item.get("type") == "RegularExpression"
                                          else "exact", item["value"])
    return Match(how, (), tuple(sorted(headers.items())), (), origin, whole_segments=False)


def _grpc_precedence(route: KubeObject, index: int, match_index: int,
                     ) -> tuple[int, int, int, int, int]:
    """GRPCRoute's sort key of a match as written, smaller first (the spec, after hostnames):
    the most characters of a matching service, then of a matching method, then the most
    header matches. Ahead of every HTTPRoute match on a shared hostname (-1; the spec leaves
    their order to the implementation): a gRPC method's path is the more specific."""
    written = (route.spec().get("rules") or [{}])[index].get("matches") or [{}]
    method = written[match_index].get("method") or {}
    headers = {h["name"].lower() for h in written[match_index].get("headers") or ()}
    return (-1, -len(method.get("service") or ""), -len(method.get("method") or ""),
            -len(headers), 0)


def _precedence(match: Match) -> tuple[int, int, int, int, int]:
    """Sort key, smaller first: Exact > RegularExpression > the longest PathPrefix, then a
    method, the most headers, the most query parameters."""
    path = match.path
    rank = {"exact": 0, "regex": 1}.get(path.kind if path else "prefix", 2)
    length = len(path.value) if path else 1
    return (rank, -length, 0 if match.methods else 1, -len(match.headers), -len(match.query))


def _only_prefix(matches: list[tuple[int, Match]]) -> str | None:
    prefixes = {m.path.value for _, m in matches if m.path and m.path.kind == "prefix"}
    if len(prefixes) != 1 or any(not m.path or m.path.kind != "prefix" for _, m in matches):
        return None
    return prefixes.pop()


def _prefix_regex(prefix: str, replacement: str) -> tuple[str, str]:
    """A regex and substitution replacing a matched PathPrefix (whole segments) with
    `replacement`, with no doubled or lost slash: /foo -> /bar takes /foo/x to /bar/x,
    /foo -> / takes /foo/x to /x and /foo to /."""
    stripped = prefix.rstrip("/")
    literal = re.escape(stripped)
    new = replacement.rstrip("/")
    if not new:
        return f"^{literal}/*", "/"
    return f"^{literal}(/|$)", new.replace("\\", "\\\\") + "\\1"


def _path_rewrite(modifier: dict[str, Any], prefix: str | None, origin: Origin) -> PathRewrite:
    if modifier["type"] == "ReplaceFullPath":
        return PathRewrite(regex="^/.*$", substitution=modifier["replaceFullPath"],
                           origin=origin)
    regex, substitution = _prefix_regex(prefix or "/", modifier["replacePrefixMatch"])
    return PathRewrite(regex=regex, substitution=substitution, origin=origin)


def _for_listener(rule: Rule, match: Match, listener: _Listener) -> Rule:
    """The rule for one match on one listener: a redirect without port or scheme goes to the
    listener's port; with a scheme only, to the scheme's well-known port."""
    redirect = rule.redirect
    if redirect is not None and redirect.port is None:
        port = _WELL_KNOWN_PORTS[redirect.scheme] if redirect.scheme else listener.port
        scheme = redirect.scheme or ("https" if listener.protocol == "HTTPS" else "http")
        redirect = _replace_redirect(redirect, port, scheme)
    return Rule(rule.position, matches=(match,), backends=rule.backends, redirect=redirect,
                direct_response=rule.direct_response, rewrite_path=rule.rewrite_path,
                rewrite_host=rule.rewrite_host, request_headers=rule.request_headers,
                response_headers=rule.response_headers, timeout=rule.timeout,
                retries=rule.retries, mirrors=rule.mirrors, origin=rule.origin, cors=rule.cors,
                websocket=rule.websocket, security=rule.security)


def _with_match(rule: Rule, match: Match) -> Rule:
    """The rule for one of its matches, off any listener (a mesh route's: a redirect keeps
    the request's port and scheme unless it says them)."""
    return Rule(rule.position, matches=(match,), backends=rule.backends, redirect=rule.redirect,
                direct_response=rule.direct_response, rewrite_path=rule.rewrite_path,
                rewrite_host=rule.rewrite_host, request_headers=rule.request_headers,
                response_headers=rule.response_headers, timeout=rule.timeout,
                retries=rule.retries, mirrors=rule.mirrors, origin=rule.origin, cors=rule.cors,
                websocket=rule.websocket, security=rule.security)


def _replace_redirect(redirect: Redirect, port: int, scheme: str) -> Redirect:
    """The redirect with its port settled: the scheme's default port is said as such
    (`port_from: scheme`: left out when the host changes, else written), since the port Envoy
    listens on may not be the listener's (the class's port map); any other port explicitly."""
    default = _WELL_KNOWN_PORTS.get(scheme) == port
    return Redirect(scheme=redirect.scheme if redirect.scheme else None, host=redirect.host,
                    port=None if default else port,
                    path=redirect.path, prefix=redirect.prefix, status=redirect.status,
                    origin=redirect.origin, port_from="scheme" if default else "request",
                    regex=redirect.regex, substitution=redirect.substitution)


def _cors(settings: dict[str, Any], origin: Origin) -> Cors:
    """The CORS filter's settings as the native policy's: an origin with `*` (the whole origin,
    or a host's leading labels) is a regex, others exact; `*` methods and headers stay `*`
    (Envoy answers a preflight with what it asks for)."""
    origins: list[StringMatch] = []
    for written in settings.get("allowOrigins") or ():
        if written == "*":
            origins.append(StringMatch("regex", ".*"))
        elif "*" in written:
            scheme, _, rest = written.partition("://")
            pattern = re.escape(rest).replace(r"\*", r"[^/:]+")
            origins.append(StringMatch("regex", f"{re.escape(scheme)}://{pattern}"))
        else:
            origins.append(StringMatch("exact", written))
    return Cors(tuple(origins), allow_methods=tuple(settings.get("allowMethods") or ()),
                allow_headers=tuple(settings.get("allowHeaders") or ()),
                expose_headers=tuple(settings.get("exposeHeaders") or ()),
                max_age=float(settings.get("maxAge", 5)),
                allow_credentials=settings.get("allowCredentials"), origin=origin)


def _header_ops(settings: dict[str, Any]) -> HeaderOps:
    # Header names in lower case, as the model holds them whatever the input (the native
    # parser's): HTTP ignores their case, and Envoy lower-cases them itself.
    return HeaderOps(
        add=tuple((h["name"].lower(), h["value"]) for h in settings.get("add") or ()),
        set=tuple((h["name"].lower(), h["value"]) for h in settings.get("set") or ()),
        remove=tuple(name.lower() for name in settings.get("remove") or ()))


def _merge_ops(one: HeaderOps, two: HeaderOps) -> HeaderOps:
    return HeaderOps(add=one.add + two.add, set=one.set + two.set, remove=one.remove + two.remove)


def _mirror_percentage(settings: dict[str, Any]) -> float:
    if settings.get("percent") is not None:
        return float(settings["percent"])
    fraction = settings.get("fraction")
    if fraction is not None:
        return 100.0 * fraction["numerator"] / fraction.get("denominator", 100)
    return 100.0


def _duration(text: str | None) -> float | None:
    if text is None:
        return None
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(int(number) * units[unit]
               for number, unit in re.findall(r"([0-9]+)(h|ms|m|s)", text))


def _slice_port(body: dict[str, Any], port_name: str, target: int | str) -> int | None:
    """The number an EndpointSlice gives a Service port: its port of the same name (Kubernetes
    names slice ports after the Service's); a numeric targetPort when the slice has none."""
    ports = body.get("ports")
    if not ports:
        return target if isinstance(target, int) else None
    for item in ports:
        if item.get("name", "") == port_name and item.get("port") is not None:
            return int(item["port"])
    return None


def _intersect(listener: str | None, route: tuple[str, ...]) -> list[str]:
    """The hostnames a route serves on a listener (the spec's intersection)."""
    if listener is None:
        return list(route) or ["*"]
    if not route:
        return [listener]
    found: list[str] = []
    for hostname in route:
        if _covers(listener, hostname):
            found.append(hostname)
        elif _covers(hostname, listener):
            found.append(listener)
    return list(dict.fromkeys(found))


def _covers(pattern: str, hostname: str) -> bool:
    """Whether `pattern` (exact or *.suffix) matches every name `hostname` stands for."""
    if pattern == hostname:
        return True
    if pattern.startswith("*."):
        return hostname.endswith(pattern[1:]) and len(hostname) > len(pattern) - 1
    return False


def _claimed_elsewhere(hostname: str, listener: _Listener, listeners: list[_Listener]) -> bool:
    """Whether requests for `hostname` (every name a wildcard stands for) go to another
    listener on the same port, whose hostname covers it and is more specific than this one's
    (listener isolation): a route's `*.a.example.com` on a listener without a hostname is not
    served there when another listener has `*.example.com`, which takes those names."""
    mine = _specificity(listener.hostname)
    return any(other is not listener and other.valid and other.port == listener.port
               and other.transport == listener.transport
               and other.hostname is not None and _covers(other.hostname, hostname)
               and _specificity(other.hostname) > mine for other in listeners)


def _specificity(hostname: str | None) -> tuple[int, int]:
    if hostname is None:
        return (0, 0)
    if hostname.startswith("*."):
        return (1, len(hostname))
    return (2, len(hostname))
