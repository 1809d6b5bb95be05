"""PeerAuthentication and AuthorizationPolicy -> a workload sidecar's `mtls` and `authorization`.

Which policies apply to a workload, as Istio decides:

- PeerAuthentication: the workload's own (selector matching its labels, in its namespace;
  the oldest, here the first by name, if several), else its namespace's (no selector), else
  the mesh's (no selector, root namespace `istio-system`); UNSET inherits from the next level;
  `portLevelMtls` for an inbound port overrides on that port. Nothing at all: `off` (plaintext;
  Istio's PERMISSIVE with auto mTLS needs nothing written, meshpilot asks for it in writing).
- AuthorizationPolicy: those of the root namespace without selector, of the workload's
  namespace without selector, and of its namespace whose selector matches its labels. Istio's
  order: AUDIT marks (refuses nothing), CUSTOM asks its provider about the requests its rules
  match, then DENY, then ALLOW; with any ALLOW policy, a request must match one of their
  rules. The rules of all ALLOW policies are one ALLOW authorization (any rule of any
  policy), which is what Istio's ALLOW policies are together; the same for DENY and AUDIT.
  CUSTOM: the provider (MeshConfig's `extensionProviders`, `meshconfig.py`) with the rules of
  every CUSTOM policy applying (`ExtAuthz.only`); one provider per workload, as Istio allows.

An Istio rule (`from` any source AND `to` any operation AND every `when`) becomes one rule of
the model per (source, operation) pair: the model's rule is an AND of ORs. Each `when`
condition, and each source field Istio ANDs with the others (namespaces, ipBlocks,
remoteIpBlocks), is an `AuthzCondition` of its own, as Istio's RBAC builder writes them;
notValues and the not* forms go to the rule's `exclude`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import product
from typing import Any, cast

from meshpilot.base import re2text
from meshpilot.inputs.istio import hosts
from meshpilot.inputs.istio import objects as o
from meshpilot.inputs.istio.document import Doc
from meshpilot.inputs.native.fields import did_you_mean
from meshpilot.inputs.native.matches import istio_path_match
from meshpilot.ir.model import (
    Authorization,
    AuthzCondition,
    AuthzRule,
    ExtAuthz,
    Jwks,
    Jwt,
    JwtProvider,
    Labels,
    MtlsMode,
    Security,
    StringMatch,
)

TLS_MODE_LABEL = ("security.istio.io/tlsMode", "istio")


def in_mesh(labels: Any) -> bool:
    """Whether a workload runs Istio's sidecar, as its label says (auto mTLS reads it)."""
    return TLS_MODE_LABEL in tuple(labels)


_MODES: dict[str, MtlsMode] = {"STRICT": "strict", "PERMISSIVE": "permissive", "DISABLE": "off"}
NOT_SUPPORTED = "is not supported yet (docs/istio.md)"


@dataclass(slots=True)
class Policies:
    peer: list[Doc]
    authorization: list[Doc]

    requests: list[Doc] = field(default_factory=list)
    # CUSTOM's providers by name (their services found), the names of those that are not
    # ext_authz ones (by kind), and of those whose problem was reported at the ConfigMap.
    providers: dict[str, ExtAuthz] = field(default_factory=dict)
    other_providers: dict[str, str] = field(default_factory=dict)
    broken_providers: dict[str, str] = field(default_factory=dict)  # name -> why
    # A policy applying to many workloads is compiled for each: its problems are reported once.
    _reported: set[tuple[int, tuple[Any, ...], str]] = field(default_factory=set)

    def _error(self, doc: Doc, path: tuple[Any, ...], message: str) -> None:
        key = (id(doc), tuple(path), message)
        if key not in self._reported:
            self._reported.add(key)
            doc.error(path, message)

    @classmethod
    def of(cls, by_kind: dict[str, list[Doc]]) -> Policies:
        return cls(by_kind.get("PeerAuthentication", []), by_kind.get("AuthorizationPolicy", []),
                   requests=by_kind.get("RequestAuthentication", []))

    # -- the ingress gateway: RequestAuthentication and AuthorizationPolicy, on its Routes --

    def jwt_for_workload(self, workload: Doc,
                         jwks_service: Callable[[Doc, tuple[Any, ...], str], str | None]
                         ) -> Jwt | None:
        """The JWT providers of the RequestAuthentications that apply to a workload (the root
        namespace's and its namespace's without selector, its namespace's selecting it), on
        its sidecar's inbound: keys inline, or fetched from `jwksUri` through the cluster of
        the ServiceEntry that declares its host (`jwks_service`), which the sidecar then
        receives."""
        ns = workload.item.namespace
        labels = workload.item.spec.spec.labels  # type: ignore[union-attr]
        providers: list[JwtProvider] = []
        for doc in self.requests:
            spec = doc.item.spec
            assert isinstance(spec, o.RequestAuthentication)
            applies = (not spec.selector and doc.item.namespace in (ns, hosts.ROOT_NAMESPACE)) \
                or (spec.selector and doc.item.namespace == ns
                    and hosts.selects(spec.selector, labels))
            if not applies:
                continue
            for index, rule in enumerate(spec.rules):
                path = ("spec", "jwtRules", index)
                if rule.jwks is not None:
                    jwks = Jwks(inline=rule.jwks)
                else:
                    assert rule.jwks_uri is not None
                    service = jwks_service(doc, (*path, "jwksUri"), rule.jwks_uri)
                    if service is None:
                        continue
                    jwks = Jwks(uri=rule.jwks_uri, service=service)
                providers.append(JwtProvider(
                    name=f"{doc.item.namespace}.{doc.item.name}[{index}]", issuer=rule.issuer,
                    jwks=jwks, audiences=rule.audiences,
                    **_token_fields(rule), origin=doc.ctx.origin(path)))
        return Jwt(tuple(providers), required=False) if providers else None

    def for_gateway(self, selector: Labels, jwks_service: Callable[[Doc, tuple[Any, ...],
                                                                     str], str | None]
                    ) -> Security:
        """What the gateway whose Envoys carry `selector`'s labels enforces on every Route."""
        def applies(doc: Doc, spec_selector: Labels | None) -> bool:
            return doc.item.namespace == hosts.ROOT_NAMESPACE and (
                not spec_selector or hosts.selects(spec_selector, selector))

        providers: list[JwtProvider] = []
        for doc in self.requests:
            spec = doc.item.spec
            assert isinstance(spec, o.RequestAuthentication)
            if not applies(doc, spec.selector):
                continue
            for index, rule in enumerate(spec.rules):
                path = ("spec", "jwtRules", index)
                if rule.jwks is not None:
                    jwks = Jwks(inline=rule.jwks)
                else:
                    assert rule.jwks_uri is not None
                    service = jwks_service(doc, (*path, "jwksUri"), rule.jwks_uri)
                    if service is None:
                        continue
                    jwks = Jwks(uri=rule.jwks_uri, service=service)
                providers.append(JwtProvider(
                    name=f"{doc.item.namespace}.{doc.item.name}[{index}]", issuer=rule.issuer,
                    jwks=jwks, audiences=rule.audiences,
                    **_token_fields(rule), origin=doc.ctx.origin(path)))
        jwt = Jwt(tuple(providers), required=False) if providers else None
        applying = [d for d in self.authorization
                    if not d.item.spec.dry_run  # type: ignore[union-attr]
                    and applies(d, d.item.spec.selector)]  # type: ignore[union-attr]
        policies = self._combined(applying, allow_request_principals=jwt is not None)
        return Security(jwt=jwt, authorization=policies or None,
                        ext_authz=self._custom(applying, jwt is not None))

    def _combined(self, applying: list[Doc], allow_request_principals: bool = False,
                  actions: tuple[str, ...] = ("AUDIT", "DENY", "ALLOW")
                  ) -> tuple[Authorization, ...]:
        found = []
        for action in actions:
            docs = [d for d in applying if d.item.spec.action == action]  # type: ignore[union-attr]
            if not docs:
                continue
            rules: list[AuthzRule] = []
            for doc in docs:
                spec = doc.item.spec
                assert isinstance(spec, o.AuthorizationPolicy)
                for index, rule in enumerate(spec.rules):
                    rules.extend(self._rules(doc, ("spec", "rules", index), rule,
                                             allow_request_principals))
            found.append(Authorization(action=cast(Any, action), rules=tuple(rules),
                                       origin=docs[0].ctx.origin(("spec",))))
        return tuple(found)

    def for_workload(self, workload: Doc, port: int | None, jwt: bool = False
                     ) -> tuple[MtlsMode, Authorization | None, Authorization | None]:
        """The workload's mTLS mode, its ALLOW authorization and its DENY one (`jwt`: its
        sidecar validates JWTs, so request principals can be checked)."""
        allow, deny = self._authorization(workload, jwt)
        return self._mtls(workload, port), allow, deny

    def audit_and_custom(self, workload: Doc, jwt: bool = False, tcp: bool = False
                         ) -> tuple[Authorization | None, ExtAuthz | None]:
        """The workload's AUDIT rules and its CUSTOM provider (with the requests it is asked
        about), each None when no such policy applies (`tcp`: the workload serves TCP, which
        neither can act on yet)."""
        applying = self._applying(workload)
        if tcp:
            for doc in applying:
                action = doc.item.spec.action  # type: ignore[union-attr]
                if action in ("AUDIT", "CUSTOM"):
                    self._error(doc, ("spec", "action"),
                                f"action {action} for a workload serving TCP "
                                f"({workload.ctx.name}) {NOT_SUPPORTED}: it needs HTTP")
            return None, None
        audit = next(iter(self._combined(applying, jwt, ("AUDIT",))), None)
        return audit, self._custom(applying, jwt)

    def _custom(self, applying: list[Doc], allow_request_principals: bool) -> ExtAuthz | None:
        docs = [d for d in applying if d.item.spec.action == "CUSTOM"]  # type: ignore[union-attr]
        chosen: tuple[Doc, str, ExtAuthz] | None = None
        rules: list[AuthzRule] = []
        for doc in docs:
            spec = doc.item.spec
            assert isinstance(spec, o.AuthorizationPolicy) and spec.provider is not None
            at = ("spec", "provider", "name")
            provider = self.providers.get(spec.provider)
            if provider is None:
                broken = self.broken_providers.get(spec.provider)
                self._error(doc, at, self._missing_provider(spec.provider) if broken is None
                            else f"provider {spec.provider} cannot be used: {broken}")
                continue
            if chosen is not None and chosen[1] != spec.provider:
                self._error(doc, at, f"provider {spec.provider}: one provider may apply to a "
                                     f"workload (Istio's rule), and AuthorizationPolicy "
                                     f"{chosen[0].ctx.name} names {chosen[1]}")
                continue
            chosen = chosen or (doc, spec.provider, provider)
            for index, rule in enumerate(spec.rules):
                rules.extend(self._rules(doc, ("spec", "rules", index), rule,
                                         allow_request_principals))
        if chosen is None:
            return None
        return replace(chosen[2], only=tuple(rules))

    def _missing_provider(self, name: str) -> str:
        kind = self.other_providers.get(name)
        if kind is not None:
            return (f"provider {name} is of kind {kind}; CUSTOM needs an envoyExtAuthzHttp "
                    "or envoyExtAuthzGrpc one")
        known = sorted({*self.providers, *self.broken_providers})
        hint = did_you_mean(name, known) if known else ""
        return (f"no extension provider {name} in MeshConfig (extensionProviders of data.mesh "
                f"in the ConfigMap istio of istio-system){hint}")

    # -- PeerAuthentication --

    def mtls_of(self, workload: Doc, port: int | None) -> MtlsMode:
        """The workload's effective mTLS mode on `port` (its inbound)."""
        return self._mtls(workload, port)

    def _mtls(self, workload: Doc, port: int | None) -> MtlsMode:
        ns = workload.item.namespace
        labels = workload.item.spec.spec.labels  # type: ignore[union-attr]
        levels: list[o.PeerAuthentication] = []
        for level in ("workload", "namespace", "mesh"):
            for doc in self.peer:
                spec = doc.item.spec
                assert isinstance(spec, o.PeerAuthentication)
                if level == "workload" and doc.item.namespace == ns and spec.selector \
                        and hosts.selects(spec.selector, labels):
                    levels.append(spec)
                    break
                if level == "namespace" and doc.item.namespace == ns and not spec.selector:
                    levels.append(spec)
                    break
                if level == "mesh" and doc.item.namespace == hosts.ROOT_NAMESPACE \
                        and not spec.selector:
                    levels.append(spec)
                    break
        if not levels:
            # Istio's default is PERMISSIVE for a workload with a sidecar in the mesh (label
            # security.istio.io/tlsMode: istio, which auto mTLS also reads); others: plaintext.
            return "permissive" if in_mesh(labels) else "off"
        if port is not None and levels[0].selector:
            port_mode = dict(levels[0].port_modes).get(port)
            if port_mode is not None and port_mode != "UNSET":
                return _MODES[port_mode]
        for spec in levels:
            if spec.mode != "UNSET":
                return _MODES[spec.mode]
        return "permissive"  # Istio's default once a policy exists but says nothing

    # -- AuthorizationPolicy --

    def _authorization(self, workload: Doc, jwt: bool = False
                       ) -> tuple[Authorization | None, Authorization | None]:
        found = {policy.action: policy for policy in self._combined(
            self._applying(workload), jwt, ("DENY", "ALLOW"))}
        return found.get("ALLOW"), found.get("DENY")

    def _applying(self, workload: Doc) -> list[Doc]:
        """The AuthorizationPolicies (not dry run) that apply to a workload."""
        ns = workload.item.namespace
        labels = workload.item.spec.spec.labels  # type: ignore[union-attr]
        applying: list[Doc] = []
        for doc in self.authorization:
            spec = doc.item.spec
            assert isinstance(spec, o.AuthorizationPolicy)
            if spec.dry_run:  # Istio's shadow rules only log; nothing to enforce
                continue
            if spec.selector is None or spec.selector == ():
                if doc.item.namespace in (ns, hosts.ROOT_NAMESPACE):
                    applying.append(doc)
            elif doc.item.namespace == ns and hosts.selects(spec.selector, labels):
                applying.append(doc)
        return applying

    def _rules(self, doc: Doc, path: tuple[Any, ...], rule: o.AuthzRuleSpec,
               allow_request_principals: bool = False) -> list[AuthzRule]:
        sources: Sequence[o.Source | None] = rule.sources if rule.sources is not None else (None,)
        operations: Sequence[o.Operation | None] = \
            rule.operations if rule.operations is not None else (None,)
        if not sources or not operations:
            return []  # `from: []` or `to: []` matches nothing
        when = self._when(doc, path, rule.when, allow_request_principals)
        if when is None:
            return []
        held, unheld = when
        result = []
        for (si, source), (oi, operation) in product(enumerate(sources), enumerate(operations)):
            who = self._source(doc, (*path, "from", si, "source"), source,
                               allow_request_principals)
            what = self._operation(doc, (*path, "to", oi, "operation"), operation)
            if who is None or what is None:
                continue
            merged = {**who, **what}
            # `when` holds as well as `from` and `to` (AND): conditions are each their own;
            # ports are the ones in both (none left: the rule can never match).
            never = False
            for key, values in held.items():
                if key == "conditions":
                    merged[key] = (*merged.get(key, ()), *values)
                elif not merged.get(key):
                    merged[key] = values
                else:  # ports
                    merged[key] = tuple(p for p in merged[key] if p in values)
                    never = not merged[key]
            if never:
                continue  # the ports of `to` and `when` share none: it matches nothing
            # Istio's not* forms and notValues: the model's `exclude` (each condition given
            # must not hold; lists are none of their items)
            negated = {key[len("not_"):]: merged.pop(key) for key in list(merged)
                       if key.startswith("not_")}
            for key, values in unheld.items():
                negated[key] = (*negated.get(key, ()), *values)
            negated = {key: value for key, value in negated.items() if value}
            here = doc.ctx.origin(path)
            result.append(AuthzRule(**merged, origin=here,
                                    exclude=AuthzRule(**negated, origin=here) if negated
                                    else None))
        return result

    def _source(self, doc: Doc, path: tuple[Any, ...], source: o.Source | None,
                allow_request_principals: bool = False) -> dict[str, Any] | None:
        if source is None:
            return {}
        for key in ("request_principals", "not_request_principals"):
            written = getattr(source, key)
            if written and not allow_request_principals:
                self._error(doc, (*path, _camel(key)),
                            f"{_camel(key)} need a RequestAuthentication that applies here "
                            "(no JWT is validated)")
                return None
        if (source.service_accounts or source.not_service_accounts) and (
                source.principals or source.not_principals or source.namespaces
                or source.not_namespaces):
            self._error(doc, (*path, "serviceAccounts" if source.service_accounts
                              else "notServiceAccounts"),
                        "serviceAccounts with principals or namespaces in one source: Istio "
                        "refuses it")
            return None
        accounts = tuple(self._account(doc, a) for a in source.service_accounts)
        not_accounts = tuple(self._account(doc, a) for a in source.not_service_accounts)
        # Each field given holds (Istio's AND): principals, namespaces (a condition of their
        # own, any trust domain, as Istio's regex), ipBlocks (the peer's address) and
        # remoteIpBlocks (the client's); each not* field: none of its items holds.
        def namespaces(written: tuple[str, ...]) -> tuple[AuthzCondition, ...]:
            return (AuthzCondition("principal", matches=tuple(
                _namespace_match(n) for n in written)),) if written else ()

        return {
            "principals": tuple(self.spiffe(p) for p in source.principals),
            "not_principals": tuple(self.spiffe(p) for p in source.not_principals),
            "conditions": _addresses(source.ip_blocks, source.remote_ip_blocks)
            + namespaces(source.namespaces),
            "not_conditions": _addresses(source.not_ip_blocks, source.not_remote_ip_blocks)
            + namespaces(source.not_namespaces),
            "request_principals": source.request_principals,
            "not_request_principals": source.not_request_principals,
            "service_accounts": accounts,
            "not_service_accounts": not_accounts,
        }

    @staticmethod
    def _account(doc: Doc, written: str) -> str:
        """Istio's "namespace/name", or "name": of the policy's namespace."""
        return written if "/" in written else f"{doc.item.namespace}/{written}"

    def spiffe(self, principal: str) -> str:
        """Istio writes principals without the scheme: `cluster.local/ns/default/sa/x`."""
        if principal == "*" or principal.startswith("spiffe://"):
            return principal
        if principal.startswith("*"):
            return principal
        return f"spiffe://{principal}"

    def _operation(self, doc: Doc, path: tuple[Any, ...], operation: o.Operation | None
                   ) -> dict[str, Any] | None:
        if operation is None:
            return {}
        paths = self._paths(doc, (*path, "paths"), operation.paths)
        not_paths = self._paths(doc, (*path, "notPaths"), operation.not_paths)
        if paths is None or not_paths is None:
            return None
        return {"paths": paths[0], "path_templates": paths[1], "not_paths": not_paths[0],
                "not_path_templates": not_paths[1], "methods": operation.methods,
                "not_methods": operation.not_methods, "ports": operation.ports,
                "not_ports": operation.not_ports, "hosts": operation.hosts,
                "not_hosts": operation.not_hosts}

    def _paths(self, doc: Doc, path: tuple[Any, ...], written: tuple[str, ...]
               ) -> tuple[tuple[StringMatch, ...], tuple[str, ...]] | None:
        """The paths as matches and as Envoy uri_templates (Istio's `{*}` and `{**}`)."""
        paths = []
        templates = []
        for index, text in enumerate(written):
            if "{" in text or "}" in text:
                template = _template(text)
                if template is None:
                    self._error(doc, (*path, index),
                                f"path {text}: a template's segments are text, {{*}} (one "
                                "segment) or {**} (any segments)")
                    return None
                templates.append(template)
                continue
            if text != "*" and "*" in text[1:-1]:
                self._error(doc, (*path, index),
                            f"path {text}: a * inside a path {NOT_SUPPORTED}")
                return None
            if text.startswith("*") and text != "*":
                paths.append(StringMatch("regex", ".*" + _escape(text[1:])))
            else:
                paths.append(istio_path_match(text))
        return tuple(paths), tuple(templates)

    def _when(self, doc: Doc, path: tuple[Any, ...], conditions: tuple[o.Condition, ...],
              allow_request_principals: bool = False,
              ) -> tuple[dict[str, tuple[Any, ...]], dict[str, tuple[Any, ...]]] | None:
        """A rule's `when` as rule fields: what must hold (values) and what must not
        (notValues), each by AuthzRule field; None after an error. Each condition holds on
        its own (AND): `conditions` items, or the ports both name."""
        held: dict[str, list[Any]] = {}
        unheld: dict[str, list[Any]] = {}
        for index, condition in enumerate(conditions):
            at = (*path, "when", index)
            for values, into, written in ((condition.values, held, "values"),
                                          (condition.not_values, unheld, "notValues")):
                if not values:
                    continue
                found = self._condition(doc, at, written, condition.key, values,
                                        allow_request_principals)
                if found is None:
                    return None
                key, items = found
                if into is held and key == "ports" and key in held:
                    held[key] = [p for p in held[key] if p in items]
                    if not held[key]:
                        return None  # two port conditions sharing none: never matches
                    continue
                into.setdefault(key, []).extend(items)
        return ({k: tuple(v) for k, v in held.items()},
                {k: tuple(v) for k, v in unheld.items()})

    def _condition(self, doc: Doc, at: tuple[Any, ...], written: str, key: str,
                   values: tuple[str, ...], allow_request_principals: bool,
                   ) -> tuple[str, list[Any]] | None:
        """One condition's values as (AuthzRule field, its items); None after an error.
        Values are Istio's strings: exact, `x*` (prefix), `*x` (suffix), `*` (any)."""
        def one(condition: AuthzCondition) -> tuple[str, list[Any]]:
            return "conditions", [condition]

        if key.startswith("request.headers[") and key.endswith("]"):
            name = key[len("request.headers["):-1].lower()
            return one(AuthzCondition("header", (name,), tuple(
                StringMatch("present") if v == "*" else _istio_match(v) for v in values)))
        if key == "destination.port":
            if not all(v.isdigit() for v in values):
                self._error(doc, (*at, written), "expected port numbers")
                return None
            return "ports", [int(v) for v in values]
        if key in ("source.ip", "remote.ip", "destination.ip"):
            try:
                cidrs = tuple(str(ipaddress.ip_network(v, strict=False)) for v in values)
            except ValueError:
                self._error(doc, (*at, written), "expected IPs or CIDRs")
                return None
            attribute = {"source.ip": "peer_ip", "remote.ip": "client_ip"}.get(
                key, "destination_ip")
            return one(AuthzCondition(cast(Any, attribute), cidrs=cidrs))
        if key == "connection.sni":
            return one(AuthzCondition("sni", matches=tuple(_istio_match(v) for v in values)))
        if key == "source.namespace":
            return one(AuthzCondition("principal", matches=tuple(_namespace_match(v)
                                                            for v in values)))
        if key == "source.principal":
            return one(AuthzCondition("principal", matches=tuple(_principal_match(v)
                                                            for v in values)))
        if key.startswith(o.FILTERS_KEY):
            return self._metadata(key, values)
        if key == "request.auth.principal":
            if not allow_request_principals:
                self._error(doc, (*at, "key"), "request.auth.principal needs a "
                                               "RequestAuthentication that applies here (no "
                                               "JWT is validated)")
                return None
            return one(AuthzCondition("request_principal", request_principals=values))
        # Istio's audiences and presenter are the token's aud and azp claims, as its builder
        claim = _CLAIM_KEYS.get(key) or o.claim_path(key)
        if claim is not None:
            if not allow_request_principals:
                self._error(doc, (*at, "key"), f"{key} needs a RequestAuthentication that "
                                               "applies here (no JWT is validated)")
                return None
            return one(AuthzCondition("claim", claim, tuple(_istio_match(v) for v in values)))
        self._error(doc, (*at, "key"),
                    f"condition {key} {NOT_SUPPORTED} (request.headers[...], source.ip, "
                    "remote.ip, source.namespace, source.principal, request.auth.principal, "
                    "request.auth.audiences, request.auth.presenter, request.auth.claims[...], "
                    "destination.ip, destination.port, connection.sni and "
                    "experimental.envoy.filters.*[...] are)")
        return None

    @staticmethod
    def _metadata(key: str, values: tuple[str, ...]) -> tuple[str, list[Any]]:
        """`experimental.envoy.filters.<filter>[<key>]` (checked by the parser): the filter's
        dynamic metadata under `key` matches a value, or, written `[v]`, is a list with an
        element matching `v` (Istio's reading)."""
        found = o.filter_metadata_key(key)
        assert found is not None
        listed = tuple(v[1:-1] for v in values if v.startswith("[") and v.endswith("]"))
        plain = tuple(v for v in values if not (v.startswith("[") and v.endswith("]")))
        return "conditions", [AuthzCondition(
            "metadata", found, tuple(_istio_match(v) for v in plain),
            elements=tuple(_istio_match(v) for v in listed))]


_CLAIM_KEYS = {"request.auth.audiences": ("aud",), "request.auth.presenter": ("azp",)}


def _istio_match(value: str) -> StringMatch:
    """Istio's string value: `*` any (not empty), `*x` a suffix, `x*` a prefix, else exact."""
    if value == "*":
        return StringMatch("regex", ".+")
    if value.startswith("*"):
        return StringMatch("regex", ".*" + re2text.literal(value[1:]))
    if value.endswith("*"):
        return StringMatch("prefix", value[:-1])
    return StringMatch("exact", value)


def _principal_match(value: str) -> StringMatch:
    """source.principal's value against the peer's SPIFFE ID (Istio writes it without the
    scheme): `*` any, `*x` a suffix, `x*` a prefix, else exact."""
    if value == "*":
        return StringMatch("regex", ".+")
    prefix = "" if value.startswith("spiffe://") else "spiffe://"
    if value.startswith("*"):
        return StringMatch("regex", re2text.literal(prefix) + ".*"
                           + re2text.literal(value[1:]))
    if value.endswith("*"):
        return StringMatch("prefix", prefix + value[:-1])
    return StringMatch("exact", prefix + value)


def _namespace_match(namespace: str) -> StringMatch:
    """The peer's SPIFFE ID is of `namespace` (`*` in it: any text), in any trust domain, as
    Istio's builder writes source.namespace."""
    pattern = ".*".join(re2text.literal(part) for part in namespace.split("*"))
    return StringMatch("regex", f".*/ns/{pattern}/.*")


def _addresses(peer: tuple[str, ...], client: tuple[str, ...]) -> tuple[AuthzCondition, ...]:
    """ipBlocks (the peer's address) and remoteIpBlocks (the client's, X-Forwarded-For behind
    the trusted proxies) as conditions, each written one holding on its own."""
    return ((AuthzCondition("peer_ip", cidrs=peer),) if peer else ()) + \
        ((AuthzCondition("client_ip", cidrs=client),) if client else ())


def _template(text: str) -> str | None:
    """Istio's path template in Envoy's uri_template syntax (`{*}` -> `*`, `{**}` -> `**`),
    None if a segment is neither text nor one of those, or `{**}` is not the last operator
    (Envoy's rule)."""
    segments = text.split("/")
    if segments[0] != "":
        return None
    out = []
    for index, segment in enumerate(segments[1:]):
        if segment in ("{*}", "{**}"):
            if segment == "{**}" and "{" in "".join(segments[index + 2:]):
                return None
            out.append(segment[1:-1])
        elif any(c in segment for c in "{}*"):
            return None
        else:
            out.append(segment)
    return "/" + "/".join(out)


def _camel(key: str) -> str:
    first, *rest = key.split("_")
    return first + "".join(word.capitalize() for word in rest)


def _escape(text: str) -> str:
    return re.escape(text)


def _token_fields(rule: o.JwtRule) -> dict[str, Any]:
    """Where a JWT rule's token is read from and what of it goes upstream, in the model's
    terms (Istio's jwt_authn provider: from_*, forward, forward_payload_header and
    claim_to_headers)."""
    return {"from_headers": rule.from_headers, "from_params": rule.from_params,
            "from_cookies": rule.from_cookies, "forward": rule.forward_original_token,
            "payload_header": rule.output_payload_to_header,
            "forward_claims": rule.output_claim_to_headers}
