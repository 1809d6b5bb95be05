"""Checks across documents, run once every document of a load has been parsed.

This module owns the rules no single document can check: a Route's gateway, listeners, services
and subsets exist; no two Routes claim the same host on the same listener; no two gateway
listeners bind the same port on overlapping addresses; and no Service shares its name with a
Gateway (each name is the node cluster of its Envoys, so the two would be one view).

It sees only parts that parsed cleanly (a kind's parser returns nothing for a document with any
issue), so it never repeats a document's own error as a broken reference: a reference to a
document that exists but failed is not reported again. Model parts are index-aligned with their
documents (rule 1 of a Route is `rules[1]`), which is how issues find their positions. It must
not change any part, and reports through the documents' contexts like the parsers do (at the
field's key, as in `routes.yaml:14:7: Route shop: rules[1].backends[0].service: no Service
named "reveiws" (did you mean "reviews"?)`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from meshpilot.base.errors import Position
from meshpilot.inputs.context import DocumentContext, LoadContext, ParsedDocument
from meshpilot.inputs.native import meshpolicy
from meshpilot.inputs.native.fields import did_you_mean, quoted
from meshpilot.ir.model import (
    Authorization,
    AuthzRule,
    Gateway,
    MeshPolicy,
    RateLimit,
    Route,
    Security,
    Service,
    Tracing,
)

# Suggestions compare a missing name with every name of its kind (about 2 us each): fine for a
# few typos, but thousands of broken references to thousands of services would spend minutes in
# difflib. Past this many comparisons in one load (about half a second), messages go without a
# "did you mean".
SUGGESTION_BUDGET = 250_000
MAX_LISTED_NAMES = 8  # a miss lists the candidates when nothing is close and there are this few


def validate_references(documents: Sequence[ParsedDocument], load: LoadContext) -> None:
    """Report every broken reference and every conflict between documents into `load`."""
    index = _Index.of(documents, load)
    for route, ctx in index.routes:
        _check_route(route, ctx, index)
    _check_shared_limit_names(index)
    for gateway, ctx in index.gateway_documents:
        _check_tcp_listeners(gateway, ctx, index)
        _check_tracing(gateway, ctx, index)
    _check_hosts(index)
    _check_forwarded_users(index)
    _check_ports(index)
    _check_view_names(documents)
    _check_one_rollout(documents)
    _check_mesh(documents, index)
    _check_mesh_policies(documents, index)
    _check_served_services(documents, index)
    _check_failover(documents, index)


def check_documents(focus: Sequence[ParsedDocument], gateway_documents: Sequence[ParsedDocument],
                    services: Mapping[str, Service], gateways: Mapping[str, Gateway],
                    load: LoadContext) -> None:
    """The checks of `validate_references` that read one document and the names it refers
    to, run for the `focus` documents only, against the whole set given by name (`services`,
    `gateways`, and `load.definitions`): what an incremental load runs for the documents it
    changed and those referring to what it changed (`dependents.py`). With
    `gateway_documents` (every Gateway document of the set), the port check across gateways
    runs too. The other checks across documents (hosts claimed, shared limits, forwarded
    users, one Route per service, a Service and a Gateway of one name) are the index's."""
    index = _Index(load, {}, {}, [], [], {}, {})
    index.services = services  # type: ignore[assignment]  # read only here
    index.gateways = gateways  # type: ignore[assignment]
    for document in focus:
        ctx = document.context
        for part in document.parts:
            if isinstance(part, Route):
                _check_route(part, ctx, index)
                _check_attached_service(part, ctx, index)
            elif isinstance(part, Gateway):
                _check_tcp_listeners(part, ctx, index)
                _check_tracing(part, ctx, index)
            elif isinstance(part, Service):
                if part.sidecar is not None:
                    _check_calls(part, ctx, index)
                    _check_callers(part, ctx, index)
                _check_service_failover(part, ctx, index)
    if gateway_documents:
        index.gateway_documents = [(part, document.context) for document in gateway_documents
                                   for part in document.parts if isinstance(part, Gateway)]
        _check_ports(index)


def _check_shared_limit_names(index: _Index) -> None:
    """Shared rate limits given one name are one limit: each must say the same."""
    first: dict[str, tuple[RateLimit, str]] = {}
    for route, ctx in index.routes:
        places = [(("rate_limit",), route.security.rate_limit)]
        places += [(("rules", i, "rate_limit"), rule.security.rate_limit)
                   for i, rule in enumerate(route.rules)]
        for path, limit in places:
            if limit is None or limit.shared_name is None:
                continue
            seen = first.setdefault(limit.shared_name, (limit, f"Route {route.name}"))
            if seen[0] is not limit and seen[0] != limit:
                ctx.report((*path, "shared", "name"), f"shared rate limit "
                           f"{quoted(limit.shared_name)} is set differently in {seen[1]}: "
                           "limits of one name must be written alike", at_value=True)


def _check_failover(documents: Sequence[ParsedDocument], index: _Index) -> None:
    """Each failover target is another existing Service, speaking HTTP if this one does (or
    tcp if it does), with no failover of its own (Envoy's aggregate clusters do not nest)."""
    for document in documents:
        for part in document.parts:
            if isinstance(part, Service):
                _check_service_failover(part, document.context, index)


def _check_service_failover(part: Service, ctx: DocumentContext, index: _Index) -> None:
    for position, target in enumerate(part.failover):
        path = ("failover", position)
        found = index.services.get(target)
        if target == part.name:
            ctx.report(path, "a Service cannot fail over to itself", at_value=True)
        elif found is None:
            _report_missing_service(target, path, ctx, index, at_value=True)
        elif (found.protocol == "tcp") != (part.protocol == "tcp"):
            ctx.report(path, f"Service {found.name} speaks protocol {found.protocol}, "
                             f"this one {part.protocol}: a failover target must speak "
                             "alike", at_value=True)
        elif found.failover:
            ctx.report(path, f"Service {found.name} has a failover of its own; list "
                             "every fallback, in order, on this Service instead",
                       at_value=True)


@dataclass(slots=True)
class _Index:
    """The clean parts of a load, by name, with the contexts of their documents."""

    load: LoadContext
    services: dict[str, Service]
    gateways: dict[str, Gateway]
    routes: list[tuple[Route, DocumentContext]]
    gateway_documents: list[tuple[Gateway, DocumentContext]]
    names: dict[str, list[str]]  # kind -> names of its documents, clean or not (suggestions)
    suggestions: dict[tuple[str, str], str]
    compared: int = 0  # names compared for suggestions so far: see SUGGESTION_BUDGET

    @classmethod
    def of(cls, documents: Sequence[ParsedDocument], load: LoadContext) -> _Index:
        index = cls(load, {}, {}, [], [], {}, {})
        for document in documents:
            if document.context.name is not None:
                index.names.setdefault(document.context.kind, []).append(document.context.name)
            for part in document.parts:
                if isinstance(part, Service):
                    index.services.setdefault(part.name, part)
                elif isinstance(part, Gateway):
                    index.gateways.setdefault(part.name, part)
                    if not document.compiled:
                        index.gateway_documents.append((part, document.context))
                elif isinstance(part, Route) and not document.compiled:
                    index.routes.append((part, document.context))
        return index

    def declared(self, kind: str, name: str) -> bool:
        """Whether a document of `kind` named `name` exists, even one that failed to parse."""
        return ("document", kind, name) in self.load.definitions

    def did_you_mean(self, kind: str, name: str, candidates: Iterable[str], *,
                     list_few: bool = False) -> str:
        """` (did you mean "x"?)`; or, if nothing is close, `list_few` and there are few
        candidates (a gateway's listeners, a service's subsets), `; it has: a, b`."""
        key = (kind, name)
        if key in self.suggestions:
            return self.suggestions[key]
        names = list(dict.fromkeys(candidates))
        if self.compared + len(names) > SUGGESTION_BUDGET:
            return ""
        self.compared += len(names)
        hint = did_you_mean(name, names)
        if not hint and list_few and 0 < len(names) <= MAX_LISTED_NAMES:
            hint = f"; it has: {', '.join(names)}"
        self.suggestions[key] = hint
        return hint


# ---------------------------------------------------------------------------------------------
# What a Route refers to.


def _check_route(route: Route, ctx: DocumentContext, index: _Index) -> None:
    gateway = index.gateways.get(route.gateway) if route.gateway is not None else None
    if route.gateway is None:
        pass  # attached to a service: checked by _check_mesh
    elif gateway is None:
        if not index.declared("Gateway", route.gateway):
            hint = index.did_you_mean("Gateway", route.gateway, index.names.get("Gateway", []))
            ctx.report(("gateway",), f"no Gateway named {quoted(route.gateway)}{hint}")
    else:
        _check_listeners(route, gateway, ctx, index)
    _check_security_services(route.security, (), ctx, index)
    for rule_index, rule in enumerate(route.rules):
        for backend_index, backend in enumerate(rule.backends):
            path = ("rules", rule_index, "backends", backend_index)
            _check_backend(backend.service, backend.subset, path, ctx, index)
        _check_mirrors(route, rule_index, ctx, index)
        _check_security_services(route.rules[rule_index].security, ("rules", rule_index), ctx,
                                 index)
        _check_hash_on(route, rule_index, ctx, index)


def _check_security_services(security: Security, path: tuple[str | int, ...],
                             ctx: DocumentContext, index: _Index) -> None:
    """The Services a Route's security calls: a JWKS server, an authorization service."""
    if security.jwt is not None:
        for provider_index, provider in enumerate(security.jwt.providers):
            if provider.jwks.service is not None:
                _check_backend(provider.jwks.service, None,
                               (*path, "jwt", "providers", provider_index, "jwks"), ctx, index)
    if security.ext_authz is not None:
        _check_backend(security.ext_authz.service, None, (*path, "ext_authz"), ctx, index)
    limit = security.rate_limit
    if limit is not None and limit.shared is not None:
        where = (*path, "rate_limit", "shared")
        _check_backend(limit.shared, None, where, ctx, index)
        service = index.services.get(limit.shared)
        if service is not None and service.protocol not in ("grpc", "http2", "tcp"):
            ctx.report((*where, "service"), f"Service {service.name} speaks protocol "
                                            f"{service.protocol}; a rate limit service is "
                                            "called over gRPC: give it protocol grpc")


def _check_mirrors(route: Route, rule_index: int, ctx: DocumentContext, index: _Index) -> None:
    """A mirror names a service (and subset) like a backend does; `mirror` may be written as
    one mapping or as a list of them."""
    written = ctx.document.value["rules"][rule_index].get("mirror")
    for mirror_index, mirror in enumerate(route.rules[rule_index].mirrors):
        path: tuple[str | int, ...] = ("rules", rule_index, "mirror")
        if isinstance(written, list):
            path = (*path, mirror_index)
        if mirror.from_header is None:
            _check_backend(mirror.service, mirror.subset, path, ctx, index)
            continue
        for candidate_index, candidate in enumerate(mirror.candidates):
            _check_backend(candidate, None, (*path, "candidates", candidate_index), ctx, index,
                           named_at_path=True)


def _check_hash_on(route: Route, rule_index: int, ctx: DocumentContext, index: _Index) -> None:
    """A hash policy only steers a consistent-hash load balancer: with any other, it would
    silently do nothing."""
    rule = route.rules[rule_index]
    if not rule.hash_on:
        return
    for backend in rule.backends:
        service = index.services.get(backend.service)
        if service is not None and service.load_balancer not in ("ring_hash", "maglev"):
            ctx.report(("rules", rule_index, "hash_on"),
                       f"hash_on needs backends whose Service balances with ring_hash or "
                       f"maglev; Service {service.name} uses {service.load_balancer}, where "
                       "it would do nothing", at_value=False)
            return


def _check_listeners(route: Route, gateway: Gateway, ctx: DocumentContext,
                     index: _Index) -> None:
    names = [listener.name for listener in gateway.listeners]
    tcp = {listener.name for listener in gateway.listeners if listener.protocol == "tcp"}
    if not route.listeners and len(tcp) == len(names):
        ctx.report(("gateway",), f"Gateway {gateway.name} has no HTTP listener to attach to "
                                 "(its listeners have protocol tcp)")
    redirecting = {listener.name for listener in gateway.listeners
                   if listener.redirect_to_https is not None}
    for listener_index, name in enumerate(route.listeners):
        if name in tcp:
            ctx.report(("listeners", listener_index), f"listener {quoted(name)} of Gateway "
                                                      f"{gateway.name} has protocol tcp; a "
                                                      "Route attaches to HTTP listeners only")
        elif name in redirecting:
            ctx.report(("listeners", listener_index), f"listener {quoted(name)} of Gateway "
                                                      f"{gateway.name} redirects every request "
                                                      "to https (redirect_to_https): no Route "
                                                      "is served there")
        elif name not in names:
            hint = index.did_you_mean(f"listener of {gateway.name}", name, names, list_few=True)
            ctx.report(("listeners", listener_index), f"Gateway {gateway.name} has no listener "
                                                      f"named {quoted(name)}{hint}")


def _check_backend(service_name: str, subset: str | None, path: tuple[str | int, ...],
                   ctx: DocumentContext, index: _Index, *, named_at_path: bool = False) -> None:
    """`named_at_path`: `path` is the Service's name itself (a list item), not a mapping with
    a `service` member."""
    at_service = path if named_at_path else (*path, "service")
    service = index.services.get(service_name)
    if service is None:
        _report_missing_service(service_name, at_service, ctx, index)
        return
    if service.protocol == "tcp":
        ctx.report(at_service, f"Service {service.name} speaks protocol tcp; an HTTP "
                                       "route cannot send requests to it")
        return
    if subset is not None and service.subset(subset) is None:
        names = [name for name, _ in service.subsets]
        hint = index.did_you_mean(f"subset of {service.name}", subset, names, list_few=True) \
            if names else " (it defines no subsets)"
        ctx.report((*path, "subset"), f"Service {service.name} has no subset named "
                                      f"{quoted(subset)}{hint}")


def _check_tcp_listeners(gateway: Gateway, ctx: DocumentContext, index: _Index) -> None:
    """A tcp listener's service exists and speaks tcp."""
    for listener_index, listener in enumerate(gateway.listeners):
        if listener.service is None:
            continue
        path = ("listeners", listener_index, "service")
        service = index.services.get(listener.service)
        if service is None:
            _report_missing_service(listener.service, path, ctx, index)
        elif service.protocol != "tcp":
            ctx.report(path, f"Service {service.name} speaks protocol {service.protocol}; a "
                             "tcp listener needs a Service with protocol tcp")


def _check_tracing(gateway: Gateway, ctx: DocumentContext, index: _Index) -> None:
    """A tracing collector exists and speaks what its tracer sends: OTLP over gRPC
    (protocol grpc or http2) for opentelemetry, HTTP for zipkin."""
    default_reported = False
    for listener_index, listener in enumerate(gateway.listeners):
        spec = listener.tracing
        if spec is None:
            continue
        # Set on this listener, or on the gateway (the default of every listener).
        own = spec.origin is None or spec.origin.field.startswith("listeners")
        path: tuple[str | int, ...] = ("listeners", listener_index, "tracing", "collector") \
            if own else ("tracing", "collector")
        if not own and default_reported:
            continue  # the gateway's default: reported once, not per listener
        default_reported = default_reported or not own
        _check_collector(spec, path, ctx, index)


def _check_collector(spec: Tracing, path: tuple[str | int, ...], ctx: DocumentContext,
                     index: _Index) -> None:
    service = index.services.get(spec.collector)
    if service is None:
        _report_missing_service(spec.collector, path, ctx, index)
    elif spec.provider == "opentelemetry" and service.protocol not in ("grpc", "http2"):
        ctx.report(path, f"Service {service.name} speaks protocol {service.protocol}; an "
                         "OpenTelemetry collector receives OTLP over gRPC: give it "
                         "protocol grpc")
    elif spec.provider == "zipkin" and service.protocol == "tcp":
        ctx.report(path, f"Service {service.name} speaks protocol tcp; a Zipkin collector "
                         "receives spans over HTTP")


# ---------------------------------------------------------------------------------------------
# Conflicts.


@dataclass(frozen=True, slots=True)
class _Claim:
    route: str
    position: Position


def _check_hosts(index: _Index) -> None:
    """Two Routes on one listener of one gateway must not claim the same host: Envoy would
    see two virtual hosts with one domain and refuse the whole route configuration."""
    claims: dict[tuple[str, str, str], _Claim] = {}
    for route, ctx in index.routes:
        gateway = index.gateways.get(route.gateway)
        if gateway is None:
            continue
        names = [listener.name for listener in gateway.listeners if listener.protocol == "http"]
        attached = [name for name in route.listeners or names if name in names]
        written = ctx.document.value.get("hosts") is not None
        for host_index, host in enumerate(route.hosts):
            path = ("hosts", host_index) if written else ("hosts",)
            claim = _Claim(route.name, ctx.document.value_position_of(path) if written
                           else ctx.document.position)
            for listener in attached:
                first = claims.setdefault((gateway.name, listener, host), claim)
                if first is not claim:
                    shown = quoted(host) if written else \
                        f"{quoted(host)} (the default when hosts is left out)"
                    ctx.report(path, f"host {shown} on listener {quoted(listener)} of Gateway "
                                     f"{gateway.name} is already claimed by Route "
                                     f"{first.route} (at {first.position})",
                               position=claim.position)
                    break


def _check_forwarded_users(index: _Index) -> None:
    """Envoy's basic_auth filter forwards the user in one header per listener: every
    basic_auth of a gateway's Routes names the same `forward` header, or none does."""
    first: dict[str, tuple[str | None, str]] = {}  # gateway -> (header, Route)
    for route, ctx in index.routes:
        if route.gateway is None:
            continue
        settings = [((), route.security)] + [(("rules", i), rule.security)
                                              for i, rule in enumerate(route.rules)]
        for path, security in settings:
            auth = security.basic_auth
            if auth is None:
                continue
            seen = first.setdefault(route.gateway, (auth.forward_header, route.name))
            if seen[0] != auth.forward_header:
                shown = lambda h: f'"{h}"' if h else "none"  # noqa: E731
                ctx.report((*path, "basic_auth"), f"basic_auth forwards the user in "
                                                  f"{shown(auth.forward_header)}, but Route "
                                                  f"{seen[1]} on Gateway {route.gateway} in "
                                                  f"{shown(seen[0])}: Envoy has one header "
                                                  "per listener, so the Routes of a gateway "
                                                  "name the same forward (or none)",
                           at_value=False)


@dataclass(frozen=True, slots=True)
class _Binding:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    gateway: str
    listener: str
    position: Position


def _check_ports(index: _Index) -> None:
    """No two gateway listeners may bind one port on overlapping addresses (the same address,
    or a wildcard of the same IP family): all gateways are checked together, as they may run
    on one machine (`meshpilot up`, docker-compose)."""
    bound: dict[int, list[_Binding]] = {}
    for gateway, ctx in index.gateway_documents:
        for listener_index, listener in enumerate(gateway.listeners):
            path = ("listeners", listener_index, "port")
            binding = _Binding(ipaddress.ip_address(listener.address), gateway.name,
                               listener.name, ctx.document.position_of(path))
            other = next((b for b in bound.get(listener.port, ()) if _overlap(b, binding)),
                         None)
            if other is None:
                bound.setdefault(listener.port, []).append(binding)
                continue
            owner = "this Gateway" if other.gateway == gateway.name else \
                f"Gateway {other.gateway}"
            ctx.report(path, f"port {listener.port} on {listener.address} is already bound by "
                             f"listener {quoted(other.listener)} of {owner} on {other.address} "
                             f"(at {other.position})")


def _overlap(a: _Binding, b: _Binding) -> bool:
    if a.address.version != b.address.version:
        return False  # Envoy binds IPv6 wildcards v6-only unless told otherwise
    return a.address == b.address or a.address.is_unspecified or b.address.is_unspecified


def _check_one_rollout(documents: Sequence[ParsedDocument]) -> None:
    """A policy says how it is rolled out once: one Rollout document at most."""
    first: Position | None = None
    for document in documents:
        ctx = document.context
        if ctx.kind != "Rollout" or document.compiled:
            continue
        position = ctx.document.position_of(("kind",))
        if first is None:
            first = position
            continue
        ctx.report(("kind",), f"a policy has one Rollout document; another is at {first}",
                   at_value=True)


def _check_view_names(documents: Sequence[ParsedDocument]) -> None:
    """A Service and a Gateway may not share a name: both name a view (an Envoy node cluster),
    and an Envoy cannot be told which of the two it is."""
    first: dict[str, DocumentContext] = {}
    for document in documents:
        ctx = document.context
        if ctx.kind not in ("Service", "Gateway") or ctx.name is None or document.compiled:
            continue
        earlier = first.setdefault(ctx.name, ctx)
        if earlier.kind != ctx.kind:
            where = earlier.document.position_of(("name",))
            ctx.report(("name",), f"a {earlier.kind} is also named {quoted(ctx.name)} (at "
                                  f"{where}); a Service and a Gateway cannot share a name, as "
                                  "each name is the node cluster of its Envoys", at_value=True)


# ---------------------------------------------------------------------------------------------
# The mesh: sidecars' calls and Routes attached to a service (docs/mesh.md).


def _check_mesh(documents: Sequence[ParsedDocument], index: _Index) -> None:
    """A called service exists (and a tcp one has a local port: the Host-routed outbound port
    speaks HTTP); a Route attached to a service names an HTTP Service, one Route per service."""
    for document in documents:
        if document.compiled:
            continue
        for part in document.parts:
            if isinstance(part, Service) and part.sidecar is not None:
                _check_calls(part, document.context, index)
                _check_callers(part, document.context, index)
                if part.sidecar.tracing is not None:
                    _check_collector(part.sidecar.tracing, ("sidecar", "tracing", "collector"),
                                     document.context, index)
    attached: dict[str, Route] = {}
    for route, ctx in index.routes:
        service = _check_attached_service(route, ctx, index)
        if service is None:
            continue
        first = attached.setdefault(service.name, route)
        if first is not route:
            ctx.report(("service",), f"Service {service.name} already has Route {first.name} "
                                     f"attached (at {first.position}); write all of its rules "
                                     "in one Route")


def _check_attached_service(route: Route, ctx: DocumentContext, index: _Index) -> Service | None:
    """The HTTP Service a Route attached to a service names, or None (reported if wrong)."""
    if route.service is None:
        return None
    service = index.services.get(route.service)
    if service is None:
        _report_missing_service(route.service, ("service",), ctx, index)
        return None
    if service.protocol == "tcp":
        ctx.report(("service",), f"Service {service.name} speaks protocol tcp; HTTP rules "
                                 "cannot apply to it")
        return None
    return service


def _check_callers(service: Service, ctx: DocumentContext, index: _Index) -> None:
    """Each caller a sidecar's authorization names (`from`) is a Service or a Gateway (both
    have identities, docs/security.md); SPIFFE IDs are taken as written."""
    assert service.sidecar is not None
    if service.sidecar.authorization is not None:
        _check_named_callers(service.sidecar.authorization, ("sidecar", "authorization"), ctx,
                             index)


def _check_named_callers(policy: Authorization, at: tuple[str, ...], ctx: DocumentContext,
                         index: _Index) -> None:
    for rule_index, rule in enumerate(policy.rules):
        lists: list[tuple[tuple[str, ...], tuple[str, ...]]] = [((), rule.principals)]
        if rule.exclude is not None:  # `not: {from: [...]}` names callers too
            lists.append((("not",), rule.exclude.principals))
        for inner, principals in lists:
            for caller_index, caller in enumerate(principals):
                if caller.startswith("spiffe://") or index.declared("Service", caller) or \
                        index.declared("Gateway", caller):
                    continue
                known = [*index.names.get("Service", []), *index.names.get("Gateway", [])]
                ctx.report((*at, "rules", rule_index, *inner, "from", caller_index),
                           f"no Service or Gateway named {quoted(caller)}"
                           f"{index.did_you_mean('Service', caller, known)}")


def _check_mesh_policies(documents: Sequence[ParsedDocument], index: _Index) -> None:
    """MeshPolicy documents (`native/meshpolicy.py`): one mTLS mode per scope, callers that
    exist, and rules naming callers only where mTLS says who calls; advice for a namespace no
    sidecar is in and for tcp sidecars, which authorization skips."""
    policies: list[tuple[MeshPolicy, DocumentContext]] = [
        (part, document.context) for document in documents for part in document.parts
        if isinstance(part, MeshPolicy)]
    moded: dict[str, MeshPolicy] = {}
    for policy, ctx in policies:
        if policy.authorization is not None:
            _check_named_callers(policy.authorization, ("authorization",), ctx, index)
        if policy.mtls is None:
            continue
        first = moded.setdefault(policy.namespace, policy)
        if first is not policy:
            scope = "every namespace" if policy.namespace == meshpolicy.EVERY_NAMESPACE else \
                f"namespace {policy.namespace}"
            ctx.report(("mtls",), f"the mtls of {scope} is already given by MeshPolicy "
                                  f"{first.name} (at {first.position}); one policy per scope "
                                  "says it")
    found = [policy for policy, _ in policies]
    namespaces: set[str] = set()
    for document in documents:
        for part in document.parts:
            if isinstance(part, Service) and part.sidecar is not None:
                namespaces.add(part.sidecar.namespace)
                if not document.compiled:
                    _check_sidecar_policies(part, document.context, found, dict(policies))
    for policy, ctx in policies:
        if policy.namespace != meshpolicy.EVERY_NAMESPACE and policy.namespace not in namespaces:
            ctx.warn(("namespace",), f"no sidecar is in namespace {policy.namespace}"
                     f"{did_you_mean(policy.namespace, sorted(namespaces))}: this policy "
                     "applies to nothing")


def _check_sidecar_policies(service: Service, ctx: DocumentContext,
                            policies: Sequence[MeshPolicy],
                            contexts: Mapping[MeshPolicy, DocumentContext]) -> None:
    """What the MeshPolicies (and an mtls left unwritten) make of one native sidecar."""
    sidecar = service.sidecar
    assert sidecar is not None
    applying = meshpolicy.applying(policies, sidecar)
    mode = meshpolicy.mode_for(applying, sidecar)
    inbound = sidecar.inbound_ports()
    written = dict(sidecar.port_modes)
    secured = any(written.get(p.port, mode) != "off" for p in inbound)
    if mode != "off" and sidecar.mtls_inherited and service.tls is not None:
        ctx.report(("tls",), f"its namespace's MeshPolicy gives this Service mtls {mode}; a "
                             "Service in the mesh with mtls gets its TLS from the mesh CA: "
                             "remove tls or set sidecar.mtls: off")
    own = sidecar.authorization
    if own is not None and sidecar.mtls_inherited and not secured and any(
            _names_callers(rule) for rule in own.rules):
        where = " (no MeshPolicy gives its namespace a mode)" if not applying else ""
        ctx.report(("sidecar", "authorization"), "rules with `from` or `namespaces` need mtls "
                   "strict or permissive: without a client certificate no caller has an "
                   f"identity{where}")
    for policy in applying:
        if policy.authorization is None or not inbound:
            continue
        if not meshpolicy.carries_http(service):
            contexts[policy].warn(("authorization",), f"Service {service.name} (namespace "
                                  f"{sidecar.namespace}) speaks tcp only: authorization by "
                                  "request does not apply to it")
        elif not secured and any(_names_callers(r) for r in policy.authorization.rules):
            # Advice, not a refusal: one plaintext workload must not void its namespace's
            # policy; Istio does the same (and says so in its docs).
            contexts[policy].warn(("authorization",), f"rules with `from` or `namespaces` "
                                  f"need mtls, and the sidecar of Service {service.name} "
                                  f"(namespace {sidecar.namespace}) has mtls off: no caller "
                                  "has an identity there, so those rules never match it")


def _check_served_services(documents: Sequence[ParsedDocument], index: _Index) -> None:
    """A further sidecar port's `service` (`ports[].service`): an existing Service without a
    sidecar, served by one port only, speaking that port's protocol, whose endpoints are on
    that port (they are the sidecar's instances' addresses there) and without a `tls` of its
    own (the port's mTLS decides)."""
    first: dict[str, str] = {}
    for document in documents:
        if document.compiled:
            continue
        for owner in document.parts:
            if not isinstance(owner, Service) or owner.sidecar is None:
                continue
            for number, port in enumerate(owner.sidecar.more_ports, start=1):
                if port.service is None:
                    continue
                path = ("sidecar", "ports", number, "service")
                _check_served(owner, port.service, port.port,
                              port.protocol or owner.protocol, path, document.context, index,
                              first)


def _check_served(owner: Service, name: str, number: int, protocol: str,
                  path: tuple[str | int, ...], ctx: DocumentContext, index: _Index,
                  first: dict[str, str]) -> None:
    served = index.services.get(name)
    here = f"Service {owner.name}'s port {number}"
    if served is None:
        _report_missing_service(name, path, ctx, index)
    elif served.name == owner.name:
        ctx.report(path, "a further port serves another Service; this one's is the first")
    elif served.sidecar is not None:
        ctx.report(path, f"Service {name} has a sidecar of its own: its endpoints are that "
                         "sidecar's ports")
    elif first.setdefault(name, here) != here:
        ctx.report(path, f"Service {name} is already served by {first[name]}")
    elif (served.protocol == "tcp") != (protocol == "tcp"):
        ctx.report(path, f"Service {name} speaks protocol {served.protocol}, this port "
                         f"{protocol}: give the port protocol: {served.protocol}")
    elif served.tls is not None:
        ctx.report(path, f"Service {name} has tls of its own; the port's mTLS is what its "
                         "callers speak: remove its tls")
    elif not served.endpoints:
        ctx.report(path, f"Service {name} needs endpoints: the addresses of this sidecar's "
                         f"instances on port {number}")
    else:
        wrong = next((e for e in served.endpoints if e.port != number), None)
        if wrong is not None:
            ctx.report(path, f"Service {name}'s endpoint {wrong.host}:{wrong.port} is not on "
                             f"port {number}: its endpoints are this sidecar's instances on "
                             "this port")


def _names_callers(rule: AuthzRule) -> bool:
    return bool(rule.principals or rule.namespaces or (
        rule.exclude is not None and (rule.exclude.principals or rule.exclude.namespaces)))


def _check_calls(service: Service, ctx: DocumentContext, index: _Index) -> None:
    assert service.sidecar is not None
    written = ctx.document.value["sidecar"]["calls"] if service.sidecar.calls else []
    for call_index, call in enumerate(service.sidecar.calls):
        path: tuple[str | int, ...] = ("sidecar", "calls", call_index)
        if isinstance(written[call_index], dict):
            path = (*path, "service")
        callee = index.services.get(call.service)
        if callee is None:
            _report_missing_service(call.service, path, ctx, index)
        elif callee.protocol == "tcp" and call.local_port is None:
            ctx.report(path, f"Service {callee.name} speaks protocol tcp: the outbound_port "
                             "routes HTTP by Host, so a tcp service needs a local_port")


def _report_missing_service(name: str, path: tuple[str | int, ...], ctx: DocumentContext,
                            index: _Index, *, at_value: bool = False) -> None:
    """"no Service named ..." (with a "did you mean") at `path`, unless another document
    declares it (its own error is reported there, not echoed here)."""
    if not index.declared("Service", name):
        hint = index.did_you_mean("Service", name, index.names.get("Service", []))
        ctx.report(path, f"no Service named {quoted(name)}{hint}", at_value=at_value)
