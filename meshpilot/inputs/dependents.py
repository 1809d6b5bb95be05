"""Who refers to whom in a valid policy: the index that lets an edit cost what it changed.

After a valid load of meshpilot's own kinds, `References` holds, for every document, the
names it refers to (documents -> names), for every name the documents referring to it (names ->
documents) and which document defines it, plus what the checks across documents compare (the
hosts each Route claims on each listener, the shared rate limits by name, the user header each
gateway's basic_auth forwards, the Route attached to each service). `References.apply` takes
the documents an edit removed and added, and checks only

- the added documents (every reference they make, `references.check_documents`),
- the documents referring to a name whose definition was added, replaced or removed,
- the conflicts those documents could make (a host claimed twice, two limits of one name set
  differently, ...), against the index instead of the whole set: the set before was valid, so
  any new conflict involves a document that changed;

then patches the model (each sorted tuple by bisection). It never words an issue: whenever
anything is wrong it returns None, and the caller loads cold, which reports exactly what a cold
load reports. It covers Service, Route and Gateway documents; a policy holding any other
document (raw EnvoyResources, Gateway API, Istio) or an edit of one is loaded the whole way
(`incremental.py`, still re-parsing changed documents only; an edit of only Gateway API
documents is compiled from what the last load kept, `ParseCache._format_edit`).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TypeVar

from meshpilot.base.errors import Position
from meshpilot.inputs.context import DocumentContext, LoadContext, ParsedDocument
from meshpilot.inputs.native.meshpolicy import serves_others
from meshpilot.inputs.references import check_documents
from meshpilot.ir.changes import ModelChanges
from meshpilot.ir.model import Gateway, Model, RateLimit, Route, Security, Service

KINDS = {"Service": Service, "Route": Route, "Gateway": Gateway}
DocKey = tuple[str, str]  # (kind, name)
HostKey = tuple[str, str, str]  # (gateway, listener, host)


def covered(document: ParsedDocument) -> bool:
    """Whether the index covers this document: a native Service, Route or Gateway (not a
    Service whose sidecar port serves another Service: building the model marks that one's
    endpoints, `native/meshpolicy.py`, which a patched model would miss)."""
    kind = KINDS.get(document.context.kind)
    return (kind is not None and not document.compiled and document.context.name is not None
            and len(document.parts) == 1 and type(document.parts[0]) is kind
            and not serves_others(document.parts[0]))


def references(part: Service | Route | Gateway) -> frozenset[DocKey]:
    """The names (kind, name) a document refers to: what `references.py` looks up for it."""
    found: set[DocKey] = set()
    if isinstance(part, Route):
        if part.gateway is not None:
            found.add(("Gateway", part.gateway))
        if part.service is not None:
            found.add(("Service", part.service))
        found.update(("Service", name) for name in _security_services(part.security))
        for rule in part.rules:
            found.update(("Service", backend.service) for backend in rule.backends)
            found.update(("Service", mirror.service) for mirror in rule.mirrors)
            found.update(("Service", name) for name in _security_services(rule.security))
    elif isinstance(part, Gateway):
        for listener in part.listeners:
            if listener.service is not None:
                found.add(("Service", listener.service))
            if listener.tracing is not None:
                found.add(("Service", listener.tracing.collector))
    else:
        found.update(("Service", target) for target in part.failover)
        if part.sidecar is not None:
            found.update(("Service", call.service) for call in part.sidecar.calls)
            if part.sidecar.authorization is not None:
                for rule in part.sidecar.authorization.rules:
                    callers = [*rule.principals,
                               *(rule.exclude.principals if rule.exclude is not None else ())]
                    for caller in callers:
                        found.update((("Service", caller), ("Gateway", caller)))
    return frozenset(found)


def _security_services(security: Security) -> Iterator[str]:
    if security.jwt is not None:
        for provider in security.jwt.providers:
            if provider.jwks.service is not None:
                yield provider.jwks.service
    if security.ext_authz is not None:
        yield security.ext_authz.service
    if security.rate_limit is not None and security.rate_limit.shared is not None:
        yield security.rate_limit.shared


def _limits(route: Route) -> list[RateLimit]:
    found = [route.security.rate_limit, *(rule.security.rate_limit for rule in route.rules)]
    return [limit for limit in found if limit is not None and limit.shared_name is not None]


def _forwards(route: Route) -> frozenset[str | None]:
    """The user headers the Route's basic_auth settings forward (None: none), if on a gateway."""
    if route.gateway is None:
        return frozenset()
    found = [route.security.basic_auth, *(rule.security.basic_auth for rule in route.rules)]
    return frozenset(auth.forward_header for auth in found if auth is not None)


@dataclass(slots=True)
class Edit:
    """What one incremental load changed, by document (old objects in `removed`)."""

    removed: list[ParsedDocument] = field(default_factory=list)
    added: list[ParsedDocument] = field(default_factory=list)
    removed_definitions: list[Hashable] = field(default_factory=list)
    added_definitions: dict[Hashable, Position] = field(default_factory=dict)
    clash: bool = False  # a name defined by two of the added pieces


class References:
    """The index of one valid load (see the module's docstring). Not thread-safe; after a
    failed `apply` it must be dropped (it may be half updated), and built again (`of`)."""

    def __init__(self, model: Model, definitions: dict[Hashable, Position]):
        self.model = model
        self.definitions = definitions  # every definition key of the load -> where
        self.documents: dict[DocKey, ParsedDocument] = {}
        self.refers_to: dict[DocKey, frozenset[DocKey]] = {}  # documents -> names
        self.referred_by: dict[DocKey, set[DocKey]] = {}  # names -> documents
        self.services: dict[str, Service] = {}
        self.gateways: dict[str, Gateway] = {}
        self.claims: dict[HostKey, str] = {}  # -> the Route claiming it
        self.claims_of: dict[str, tuple[HostKey, ...]] = {}
        self.limits: dict[str, dict[str, RateLimit]] = {}  # shared name -> Route -> a limit
        self.limits_of: dict[str, tuple[str, ...]] = {}
        self.forwards: dict[str, dict[str | None, int]] = {}  # gateway -> header -> Routes
        self.forwards_of: dict[str, tuple[str, frozenset[str | None]]] = {}
        self.attached: dict[str, set[str]] = {}  # service -> Routes attached to it
        self.attached_of: dict[str, str] = {}
        self.gateway_documents: dict[str, ParsedDocument] = {}

    @classmethod
    def of(cls, documents: Sequence[ParsedDocument], model: Model,
           definitions: dict[Hashable, Position]) -> References | None:
        """The index of a valid load's documents; None if one is of a kind it does not cover
        (every load of that policy then goes the whole way)."""
        if model.raw or model.statuses or model.warnings:
            return None
        index = cls(model, dict(definitions))
        for document in documents:
            if not covered(document):
                return None
            index._add(document)
        for document in documents:
            part = document.parts[0]
            if isinstance(part, Route) and not index._claim(part):
                return None  # a valid load never has a conflict; be safe if it did
        return index

    # ---- the incremental step ------------------------------------------------------------

    def apply(self, edit: Edit, files: tuple[str, ...]) -> tuple[Model, ModelChanges] | None:
        """The model after `edit`, and what changed; None if the edit is not covered or
        anything is wrong (then this index is stale: drop it)."""
        if edit.clash or not all(covered(document)
                                 for document in (*edit.removed, *edit.added)):
            return None
        for key in edit.removed_definitions:
            self.definitions.pop(key, None)
        for key, position in edit.added_definitions.items():
            if key in self.definitions:
                return None  # defined twice
            self.definitions[key] = position
        changed: set[DocKey] = set()
        removed_parts: dict[DocKey, Service | Route | Gateway] = {}
        for document in edit.removed:
            key = self._key(document)
            held = self.documents.get(key)
            if held is None or held.parts[0] is not document.parts[0]:
                return None  # the index and the parse cache disagree: go the whole way
            removed_parts[key] = document.parts[0]  # type: ignore[assignment]
            self._remove(document)
            changed.add(key)
        added: dict[DocKey, ParsedDocument] = {}
        for document in edit.added:
            key = self._key(document)
            if key in self.documents:
                return None
            self._add(document)
            added[key] = document
            changed.add(key)
        if self._view_names_clash(changed):
            return None
        # The documents to check: the added ones, and those referring to a changed name.
        focus: dict[DocKey, ParsedDocument] = dict(added)
        for key in changed:
            for referrer in self.referred_by.get(key, ()):
                if referrer not in focus:
                    focus[referrer] = self.documents[referrer]
        load = LoadContext(definitions=self.definitions)
        rebound = [_rebound(document, load) for document in focus.values()]
        gateways_moved = any(key[0] == "Gateway" for key in changed)
        every_gateway = [_rebound(document, load)
                         for document in self.gateway_documents.values()] \
            if gateways_moved else []
        check_documents(rebound, every_gateway, self.services, self.gateways, load)
        if load.issues:
            return None
        focus_routes = [document.parts[0] for document in rebound
                        if isinstance(document.parts[0], Route)]
        for route in focus_routes:  # every old claim of theirs first, then the new ones
            self._unclaim(route.name)  # type: ignore[union-attr]
        for route in focus_routes:
            if not self._claim(route):  # type: ignore[arg-type]
                return None
        return self._patched_model(removed_parts, added, files)

    # ---- bookkeeping ---------------------------------------------------------------------

    @staticmethod
    def _key(document: ParsedDocument) -> DocKey:
        name = document.context.name
        assert name is not None
        return document.context.kind, name

    def _add(self, document: ParsedDocument) -> None:
        key = self._key(document)
        part = document.parts[0]
        self.documents[key] = document
        names = references(part)  # type: ignore[arg-type]
        self.refers_to[key] = names
        for name in names:
            self.referred_by.setdefault(name, set()).add(key)
        if isinstance(part, Service):
            self.services[part.name] = part
        elif isinstance(part, Gateway):
            self.gateways[part.name] = part
            self.gateway_documents[part.name] = document

    def _remove(self, document: ParsedDocument) -> None:
        key = self._key(document)
        part = document.parts[0]
        del self.documents[key]
        for name in self.refers_to.pop(key, ()):
            referrers = self.referred_by.get(name)
            if referrers is not None:
                referrers.discard(key)
                if not referrers:
                    del self.referred_by[name]
        if isinstance(part, Service):
            del self.services[part.name]
        elif isinstance(part, Gateway):
            del self.gateways[part.name]
            del self.gateway_documents[part.name]
        elif isinstance(part, Route):
            self._unclaim(part.name)

    def _view_names_clash(self, changed: set[DocKey]) -> bool:
        """A Service and a Gateway of one name (each names a view)."""
        return any(name in self.services and name in self.gateways
                   for kind, name in changed if kind in ("Service", "Gateway"))

    def _unclaim(self, route: str) -> None:
        for key in self.claims_of.pop(route, ()):
            if self.claims.get(key) == route:
                del self.claims[key]
        for name in self.limits_of.pop(route, ()):
            by_route = self.limits.get(name)
            if by_route is not None:
                by_route.pop(route, None)
                if not by_route:
                    del self.limits[name]
        gateway, headers = self.forwards_of.pop(route, ("", frozenset()))
        counts = self.forwards.get(gateway)
        if counts is not None:
            for header in headers:
                counts[header] -= 1
                if not counts[header]:
                    del counts[header]
            if not counts:
                del self.forwards[gateway]
        service = self.attached_of.pop(route, None)
        if service is not None:
            self.attached[service].discard(route)
            if not self.attached[service]:
                del self.attached[service]

    def _claim(self, route: Route) -> bool:
        """Record what `route` claims (again, if it did before); False on any conflict, as
        `references._check_hosts` and the other checks across documents would report."""
        self._unclaim(route.name)
        keys = self._host_keys(route)
        if len(set(keys)) != len(keys):
            return False
        for key in keys:
            if self.claims.setdefault(key, route.name) != route.name:
                return False
        self.claims_of[route.name] = tuple(keys)
        limits = _limits(route)
        for limit in limits:
            assert limit.shared_name is not None
            by_route = self.limits.setdefault(limit.shared_name, {})
            other = next(iter(by_route.values()), None)
            if other is not None and other is not limit and other != limit:
                return False
            by_route.setdefault(route.name, limit)
        self.limits_of[route.name] = tuple(
            dict.fromkeys(limit.shared_name for limit in limits if limit.shared_name))
        headers = _forwards(route)
        if headers:
            assert route.gateway is not None
            counts = self.forwards.setdefault(route.gateway, {})
            for header in headers:
                counts[header] = counts.get(header, 0) + 1
            self.forwards_of[route.name] = (route.gateway, headers)
            if len(counts) > 1:
                return False
        if route.service is not None:
            attached = self.attached.setdefault(route.service, set())
            attached.add(route.name)
            self.attached_of[route.name] = route.service
            if len(attached) > 1:
                return False
        return True

    def _host_keys(self, route: Route) -> list[HostKey]:
        gateway = self.gateways.get(route.gateway) if route.gateway is not None else None
        if gateway is None:
            return []
        names = [listener.name for listener in gateway.listeners if listener.protocol == "http"]
        attached = [name for name in route.listeners or names if name in names]
        return [(gateway.name, listener, host) for host in route.hosts for listener in attached]

    def _patched_model(self, removed: dict[DocKey, Service | Route | Gateway],
                       added: dict[DocKey, ParsedDocument],
                       files: tuple[str, ...]) -> tuple[Model, ModelChanges]:
        before = self.model
        names: dict[str, set[str]] = {"Service": set(), "Route": set(), "Gateway": set()}
        for kind, name in (*removed, *added):
            names[kind].add(name)
        fresh = {kind: [document.parts[0] for (k, _), document in added.items() if k == kind]
                 for kind in names}
        services = _patched(before.services, names["Service"],
                            fresh["Service"])  # type: ignore[arg-type]
        gateways = _patched(before.gateways, names["Gateway"],
                            fresh["Gateway"])  # type: ignore[arg-type]
        # The index by name, as the model makes it, without visiting every part: this
        # index's own dicts hold exactly the new model's Services and Gateways.
        model = Model(raw=before.raw, services=services, gateways=gateways,
                      routes=_patched(before.routes, names["Route"],
                                      fresh["Route"]),  # type: ignore[arg-type]
                      files=files, _services=self.services.copy(),  # see upstreams._copied
                      _gateways=self.gateways.copy(), _indexed=True)
        self.model = model
        return model, ModelChanges(before, model, frozenset(names["Service"]),
                                   frozenset(names["Gateway"]), frozenset(names["Route"]))


_Named = TypeVar("_Named", Service, Gateway, Route)
_name = attrgetter("name")


def _patched(parts: tuple[_Named, ...], gone: Iterable[str],
             added: list[_Named]) -> tuple[_Named, ...]:
    """`parts` (sorted by name, names unique) without those named in `gone`, with `added`."""
    if not added and not gone:
        return parts
    found = list(parts)
    for name in gone:
        at = bisect_left(found, name, key=_name)
        if at < len(found) and found[at].name == name:
            del found[at]
    for part in added:
        insort(found, part, key=_name)
    return tuple(found)


def _rebound(document: ParsedDocument, load: LoadContext) -> ParsedDocument:
    """The document reporting into `load` (its cached context reports into its parse's)."""
    old = document.context
    return ParsedDocument(DocumentContext(load, old.document, old.kind, old.name),
                          document.parts, document.compiled)
