"""`kind: MeshPolicy`: mesh security written once for every sidecar of a namespace (or of the
mesh), as `model.MeshPolicy`, and what the policies make of each sidecar.

This module owns the document's shape and what can be checked within it, and `apply`: each
sidecar's mTLS mode and authorization once the policies of its namespace and of the mesh are
taken in, with Istio's precedence (docs/policy.md#kind-meshpolicy):

- mTLS: a port's own mode, else the sidecar's `mtls`, else its namespace's MeshPolicy's, else
  the mesh-wide one's (`namespace: "*"`), else off. One MeshPolicy per scope may say `mtls`.
- authorization: the rules of every DENY policy that applies (the mesh's, the namespace's, the
  sidecar's own) are checked first, and refuse a request any of them matches; then, if any ALLOW
  policy applies, the request must match a rule of one of them (Istio's AuthorizationPolicy
  semantics: ALLOW policies together are one list of rules).
- a sidecar's further inbound port that names the Service it serves (`ports[].service`): that
  Service's endpoints are marked as the sidecar's workloads while the port speaks mTLS, so its
  callers do (Istio's auto mTLS per endpoint, `Endpoint.mtls_identity`).

A sidecar's namespace is its identity's (`sidecar.namespace`, default `default`). The checks
that need every document (a caller named in `from` exists, two policies give one scope an mTLS
mode, rules naming callers reach a sidecar without mTLS) are `references.py`'s; `apply` runs
when the model is built (`assembly.build_model`), so the translators see the sidecars as the
policies made them.

Shape:

    kind: MeshPolicy
    name: shop-strict
    namespace: shop           # the sidecars of namespace shop; "*": every namespace
    mtls: strict              # strict | permissive | off: their default mode
    authorization:            # a sidecar's authorization (paths, methods, headers, from,
      action: DENY            #   namespaces, source_ips, not), for each of those sidecars
      rules: [{namespaces: [legacy]}]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from operator import attrgetter
from typing import Any, cast

from meshpilot.inputs.context import DocumentContext
from meshpilot.inputs.native import fields
from meshpilot.inputs.native.fields import Fields, Invalid, issue_count, reported_since
from meshpilot.inputs.native.security import authorization_policy
from meshpilot.inputs.native.sidecar import mtls_mode
from meshpilot.inputs.yamlsource import Located
from meshpilot.ir.model import (
    MESH_NAMESPACE,
    Authorization,
    AuthzRule,
    InboundPort,
    MeshPolicy,
    MtlsMode,
    Service,
    Sidecar,
)

KIND = "MeshPolicy"
MESH_POLICY_KEYS = ("kind", "name", "namespace", "mtls", "authorization")
EVERY_NAMESPACE = "*"


def _namespace(value: Any) -> str:
    if value == EVERY_NAMESPACE:
        return value
    try:
        return fields.name(value)
    except Invalid as error:
        raise Invalid(f"{error.message} (or \"*\": every namespace)") from None


def parse_mesh_policy(document: Located, ctx: DocumentContext) -> list[MeshPolicy]:
    """The document's policy, or nothing if anything in it was reported."""
    mark = issue_count(ctx)
    doc = Fields(ctx, document.value)
    doc.check_keys(MESH_POLICY_KEYS, "a MeshPolicy")
    namespace = doc.get("namespace", _namespace, required=True)
    mtls = doc.get("mtls", mtls_mode)
    authorization = None
    if doc.value.get("authorization") is not None:
        authorization = authorization_policy(ctx, doc.value["authorization"],
                                             ("authorization",), mesh=True)
    if authorization is not None and any(_reads_tokens(r) for r in authorization.rules):
        doc.report("authorization", "claims and authenticated read a JWT, which a sidecar's "
                                    "own jwt validates: write these rules in its "
                                    "sidecar.authorization", at_value=False)
    if "mtls" not in doc.value and "authorization" not in doc.value:
        ctx.report((), "a MeshPolicy gives mtls, authorization or both")
    if reported_since(ctx, mark) or namespace is None or ctx.name is None:
        return []
    return [MeshPolicy(name=ctx.name, namespace=namespace, mtls=cast(Any, mtls),
                       authorization=authorization, position=ctx.document.position,
                       origin=doc.origin())]


def _reads_tokens(rule: AuthzRule) -> bool:
    return bool(rule.claims or rule.authenticated is not None or rule.request_principals
                or (rule.exclude is not None and _reads_tokens(rule.exclude)))


def applying(policies: Sequence[MeshPolicy], sidecar: Sidecar) -> list[MeshPolicy]:
    """The policies that apply to `sidecar`: the mesh's first, then its namespace's, each
    group by name (the order their rules are listed in)."""
    namespace = sidecar.namespace
    return sorted((p for p in policies if p.namespace in (namespace, EVERY_NAMESPACE)),
                  key=lambda p: (p.namespace != EVERY_NAMESPACE, p.name))


def mode_for(policies: Iterable[MeshPolicy], sidecar: Sidecar) -> MtlsMode:
    """The sidecar's default mTLS mode: its own, else its namespace's, else the mesh's, else
    off."""
    if not sidecar.mtls_inherited:
        return sidecar.mtls
    found = {p.namespace: p.mtls for p in policies if p.mtls is not None}
    return found.get(sidecar.namespace) or found.get(EVERY_NAMESPACE) or "off"


_SIDECAR = attrgetter("sidecar")  # (filtered in C: a Gateway API policy has thousands)


def apply(services: Sequence[Service], policies: Sequence[MeshPolicy]) -> list[Service]:
    """The services with the policies taken into their sidecars (each unchanged when none
    applies), then the Services a sidecar's further port serves (`ports[].service`) with
    their endpoints marked as that sidecar's workloads while the port speaks mTLS, so their
    callers do (`Endpoint.mtls_identity`, read by `translators/mtls.py`)."""
    found = [_applied(service, policies) for service in services] if policies else \
        list(services)
    served = {port.service: (service, port) for service in filter(_SIDECAR, found)
              for port in service.sidecar.more_ports if port.service is not None}
    if not served:
        return found
    return [_served(service, *served[service.name]) if service.name in served else service
            for service in found]


def serves_others(part: object) -> bool:
    """Whether `part` is a Service whose sidecar has a port serving another Service."""
    sidecar = getattr(part, "sidecar", None)
    return isinstance(part, Service) and sidecar is not None and any(
        port.service is not None for port in sidecar.more_ports)


def _served(service: Service, owner: Service, port: InboundPort) -> Service:
    sidecar = owner.sidecar
    assert sidecar is not None
    if sidecar.mode_of(port.port) == "off":
        return service
    identity = sidecar.identity or f"ns/{MESH_NAMESPACE}/sa/{owner.name}"
    return replace(service, endpoints=tuple(replace(e, mtls_identity=identity)
                                            for e in service.endpoints))


def _applied(service: Service, policies: Sequence[MeshPolicy]) -> Service:
    sidecar = service.sidecar
    if sidecar is None:
        return service
    found = applying(policies, sidecar)
    if not found:
        return service
    changed = replace(sidecar, mtls=mode_for(found, sidecar))
    if carries_http(service):
        written = [p.authorization for p in found if p.authorization is not None]
        own = [a for a in (sidecar.deny, sidecar.authorization) if a is not None]
        allow, deny = combined([*written, *own]) if written else \
            (sidecar.authorization, sidecar.deny)
        # A DENY with no rules refuses nothing, but keeps the deny filter in the inbound
        # listener of every sidecar a policy applies to: a DENY policy added later is then a
        # route configuration change, reaching open connections (a new filter would replace
        # the listener and leave them on the draining one, with the old decision).
        if deny is None:
            deny = Authorization("DENY", (), origin=found[0].origin)
        changed = replace(changed, authorization=allow, deny=deny)
    return replace(service, sidecar=changed)


def carries_http(service: Service) -> bool:
    """Whether any inbound port of the service's sidecar speaks HTTP (authorization applies)."""
    sidecar = service.sidecar
    return sidecar is not None and any(
        (p.protocol or service.protocol) != "tcp" for p in sidecar.inbound_ports())


def combined(policies: Sequence[Authorization]
             ) -> tuple[Authorization | None, Authorization | None]:
    """One ALLOW authorization (the rules of every ALLOW policy) and one DENY (of every DENY
    policy), each None if no policy has that action; each keeps its first policy's origin."""
    found: dict[str, Authorization] = {}
    for policy in policies:
        first = found.get(policy.action)
        found[policy.action] = policy if first is None else replace(
            first, rules=(*first.rules, *policy.rules))
    return found.get("ALLOW"), found.get("DENY")
