"""All Istio documents of a load together -> Services, Routes and Gateways of the model.

    ServiceEntry (+ the WorkloadEntries its workloadSelector picks, or its inline endpoints)
        -> one Service per host and port (`hosts.py`), endpoints = the workloads' addresses
    DestinationRule -> those Services' subsets, load balancer, circuit breaker, outlier
        detection, upstream TLS (portLevelSettings: one port's Service)
    WorkloadEntry -> the workload's own view: a Service with a sidecar (inbound on the
        workload's address, a port per ServiceEntry port selecting it and the application
        behind each, `inbound.py`; one outbound port for every mesh service, Istio's
        default of no Sidecar resource), its mTLS (PeerAuthentication) per port
        and callers' authorization (AuthorizationPolicy), `security.py`
    VirtualService (gateway `mesh`) -> a Route attached to each of its hosts' Services;
        without one, a Service still gets Istio's default route (no timeout, 2 retries)
    Gateway (selector) -> a Gateway of the model per distinct selector, its servers as
        listeners; a VirtualService naming it -> a Route on it
    exportTo (`exports.py`) -> which sidecars call a ServiceEntry's hosts, which callers'
        namespaces a VirtualService's Routes are for (the others: the host's default route),
        which DestinationRule a host takes (Istio's lookup by the callers' namespaces)

What Istio resolves at run time and `istioctl analyze` warns about (a subset no
DestinationRule defines, a host no ServiceEntry declares) is a warning here with the same
outcome (503 for the subset, the VirtualService unused for the host); everything else that
cannot be honoured is an error at the field. Deterministic: documents are taken in
namespace/name order where Istio would order them by creation time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from meshpilot.inputs.context import LoadContext, ParsedDocument
from meshpilot.inputs.gatewayapi.kinds import KubeObject
from meshpilot.inputs.gatewayapi.secrets import ca_of, tls_secret
from meshpilot.inputs.istio import exports, hosts, inbound, meshconfig, parse, security
from meshpilot.inputs.istio import objects as o
from meshpilot.inputs.istio.document import Doc
from meshpilot.inputs.istio.parse import ISTIO_DEFAULT_RETRIES, NOT_SUPPORTED
from meshpilot.ir.model import (
    DEFAULT_APP_HOST,
    Backend,
    Call,
    ClientIp,
    Endpoint,
    ExtAuthz,
    Gateway,
    GatewayListener,
    HeaderOps,
    Labels,
    ListenerTls,
    Locality,
    LocalityLb,
    Match,
    Mirror,
    Origin,
    Protocol,
    Route,
    Rule,
    Service,
    Sidecar,
    StringMatch,
    TcpRoute,
    UnknownHosts,
    UpstreamTls,
)

# A subset no DestinationRule defines selects no endpoint: its cluster answers 503, as Istio's.
UNDEFINED_SUBSET_LABEL = "meshpilot.io/undefined-subset"
_PROTOCOLS: dict[str, Protocol] = {"HTTP": "http", "HTTP2": "http2", "GRPC": "grpc",
                                   "GRPC-WEB": "http"}


@dataclass(slots=True)
class _Host:
    """A ServiceEntry host and what it became."""

    doc: Doc
    entry: o.ServiceEntry
    services: dict[int, Service]  # port number -> its Service (changed as DRs apply)
    subsets_defined: set[str] = field(default_factory=set)
    # (address, port) of each workload endpoint -> its SPIFFE path (for ISTIO_MUTUAL)
    accounts: dict[tuple[str, int], str] = field(default_factory=dict)
    # (address, port) of each WorkloadEntry endpoint -> that WorkloadEntry
    workload_of: dict[tuple[str, int], Doc] = field(default_factory=dict)
    hash_on: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    istio_mutual: dict[int, bool] = field(default_factory=dict)
    # the same for subsets with a trafficPolicy of their own, by (port number, subset)
    subset_hash_on: dict[tuple[int, str], tuple[Any, ...]] = field(default_factory=dict)
    subset_istio_mutual: dict[tuple[int, str], bool] = field(default_factory=dict)
    # AUTO_PASSTHROUGH's plain TCP Services of its ports and subsets, by SNI
    passthrough: dict[str, Service] = field(default_factory=dict)
    # the namespaces whose workloads see the host (the ServiceEntry's exportTo)
    export: exports.Export | None = None

    def visible_to(self, namespace: str) -> bool:
        return self.export is None or self.export.visible_to(namespace)


def compile_istio(everything: Sequence[ParsedDocument], mine: Sequence[ParsedDocument],
                  load: LoadContext) -> list[ParsedDocument]:
    docs = [Doc(parsed, next(p for p in parsed.parts if isinstance(p, o.IstioDocument)))
            for parsed in mine]
    by_kind: dict[str, list[Doc]] = {}
    for doc in sorted(docs, key=lambda d: (d.item.namespace, d.item.name)):
        by_kind.setdefault(doc.item.kind, []).append(doc)
    mesh = meshconfig.read(everything, load)
    native_names = {part.name for parsed in everything for part in parsed.parts
                    if isinstance(part, Service | Gateway)}
    workloads = by_kind.get("WorkloadEntry", [])
    indexed = _Workloads(workloads)
    registry = _services(by_kind.get("ServiceEntry", []), indexed,
                         mesh.export_defaults.get("ServiceEntry", exports.EVERYWHERE))
    secrets = {(part.namespace, part.name): part for parsed in everything
               for part in parsed.parts if isinstance(part, KubeObject) and part.kind == "Secret"}
    _destination_rules(by_kind.get("DestinationRule", []), registry, secrets,
                       mesh.export_defaults.get("DestinationRule", exports.EVERYWHERE),
                       sorted({d.item.namespace for d in workloads}),
                       bool(by_kind.get("Gateway")))
    l4: L4AtGateways = {}
    routes, routed, variants = _virtual_services(
        by_kind.get("VirtualService", []), registry, by_kind, indexed, l4,
        mesh.export_defaults.get("VirtualService", exports.EVERYWHERE))
    _default_routes(registry, routed)
    gateways = _gateways(by_kind.get("Gateway", []), l4, secrets, registry,
                         mesh.trusted_proxies)
    policies = security.Policies.of(by_kind)
    _providers(mesh, registry, policies)
    _workloads(indexed, registry, policies, by_kind.get("Sidecar", []), variants,
               mesh.unknown_hosts or meshconfig.DEFAULT_UNKNOWN_HOSTS)
    _plaintext_where_disabled(registry, policies)
    routes = _secure_gateway_routes(routes, gateways, policies, registry)
    for host in registry.values():
        host.doc.parts.extend(host.services[p.number] for p in host.entry.ports)
        host.doc.parts.extend(host.passthrough[sni] for sni in sorted(host.passthrough))
    for doc, route in routes:
        doc.parts.append(route)
    for doc, gateway in gateways.built:
        doc.parts.append(gateway)
    for doc in docs:
        for part in doc.parts:
            if isinstance(part, Service | Gateway) and part.name in native_names:
                doc.error((), f"{type(part).__name__} {part.name} of this document is also "
                              "the name of a native one: each names a view")
    return [ParsedDocument(doc.ctx, tuple(doc.parts), compiled=True) for doc in docs]


# ---- ServiceEntry + WorkloadEntry -> Services -------------------------------------------------


class _Workloads:
    """The WorkloadEntries, indexed by (namespace, label) so that selecting them costs the
    smallest candidate list, not every workload (a thousand ServiceEntries, three thousand
    WorkloadEntries)."""

    def __init__(self, docs: list[Doc]):
        self.docs = docs
        self._by_label: dict[tuple[str, str, str], list[Doc]] = {}
        self._by_namespace: dict[str, list[Doc]] = {}
        for doc in docs:
            self._by_namespace.setdefault(doc.item.namespace, []).append(doc)
            for key, value in doc.item.spec.spec.labels:  # type: ignore[union-attr]
                self._by_label.setdefault((doc.item.namespace, key, value), []).append(doc)
        self._selected: dict[tuple[str, Labels], list[Doc]] = {}

    def selected(self, namespace: str, selector: Labels) -> list[Doc]:
        """The WorkloadEntries of `namespace` whose labels `selector` selects, in order."""
        key = (namespace, selector)
        found = self._selected.get(key)
        if found is None:
            candidates = min((self._by_label.get((namespace, k, v), []) for k, v in selector),
                             key=len, default=self._by_namespace.get(namespace, []))
            found = self._selected[key] = [
                d for d in candidates
                if hosts.selects(selector, d.item.spec.spec.labels)]  # type: ignore[union-attr]
        return found


def _services(entries: list[Doc], workloads: _Workloads,
              export_default: tuple[str, ...] = exports.EVERYWHERE) -> dict[str, _Host]:
    registry: dict[str, _Host] = {}
    for doc in entries:
        entry = doc.item.spec
        assert isinstance(entry, o.ServiceEntry)
        export = exports.of(doc, export_default)
        for index, host in enumerate(entry.hosts):
            if host in registry:
                first = registry[host].doc
                doc.error(("spec", "hosts", index), f"host {host} is already declared by "
                                                    f"ServiceEntry {first.ctx.name}")
                continue
            services = {port.number: _service(doc, entry, host, port, workloads)
                        for port in entry.ports}
            registry[host] = _Host(doc, entry, services,
                                   accounts=_accounts(doc, entry, workloads),
                                   workload_of=_workload_of(doc, entry, workloads),
                                   export=export)
    return registry


def _selected(doc: Doc, entry: o.ServiceEntry, workloads: _Workloads
              ) -> list[o.WorkloadSpec]:
    """The workloads behind a ServiceEntry: its inline endpoints, or the WorkloadEntries of
    its namespace that its workloadSelector selects."""
    return [workload for workload, _ in _selected_at(doc, entry, workloads)]


def _selected_at(doc: Doc, entry: o.ServiceEntry, workloads: _Workloads
                 ) -> list[tuple[o.WorkloadSpec, Origin]]:
    """`_selected`, each with where it was written (the inline endpoint, or the
    WorkloadEntry's spec)."""
    if entry.workload_selector is None:
        return [(w, doc.ctx.origin(w.path)) for w in entry.endpoints]
    return [(w.item.spec.spec, w.ctx.origin(w.item.spec.spec.path))  # type: ignore[union-attr]
            for w in workloads.selected(doc.item.namespace, entry.workload_selector)]


def _accounts(doc: Doc, entry: o.ServiceEntry, workloads: _Workloads
              ) -> dict[tuple[str, int], str]:
    return {(w.address, endpoint_port(w, port)): hosts.spiffe_path(doc.item.namespace,
                                                                   w.service_account)
            for w in _selected(doc, entry, workloads) for port in entry.ports}


def _workload_of(doc: Doc, entry: o.ServiceEntry, workloads: _Workloads
                 ) -> dict[tuple[str, int], Doc]:
    if entry.workload_selector is None:
        return {}
    return {(w.item.spec.spec.address, endpoint_port(w.item.spec.spec, port)): w  # type: ignore[union-attr]
            for w in workloads.selected(doc.item.namespace, entry.workload_selector)
            for port in entry.ports}


def _plaintext_where_disabled(registry: dict[str, _Host], policies: security.Policies) -> None:
    """Auto mTLS as Istio's Pilot decides it per endpoint: a workload whose PeerAuthentication
    says DISABLE for that port is called in plaintext (unless a DestinationRule says
    ISTIO_MUTUAL)."""
    def plaintext(endpoints: tuple[Endpoint, ...], host: _Host) -> tuple[Endpoint, ...]:
        return tuple(
            replace(e, mtls_identity=None)
            if e.mtls_identity is not None and (workload := host.workload_of.get(
                (e.host, e.port))) is not None and policies.mtls_of(workload, e.port) == "off"
            else e for e in endpoints)

    for host in registry.values():
        for number, service in list(host.services.items()):
            own = tuple((name, s if host.subset_istio_mutual.get((number, name)) else replace(
                s, endpoints=plaintext(s.endpoints, host))) for name, s in service.subset_services)
            if not host.istio_mutual.get(number):
                service = replace(service, endpoints=plaintext(service.endpoints, host))
            host.services[number] = replace(service, subset_services=own)


def _service(doc: Doc, entry: o.ServiceEntry, host: str, port: o.Port,
             workloads: _Workloads) -> Service:
    found: list[Endpoint] = []
    for workload, origin in _selected_at(doc, entry, workloads):
        # Auto mTLS: callers speak mTLS to a workload whose label says it runs a sidecar.
        identity = hosts.spiffe_path(doc.item.namespace, workload.service_account) \
            if security.in_mesh(workload.labels) and entry.location == "MESH_INTERNAL" else None
        found.append(Endpoint(host=workload.address, port=endpoint_port(workload, port),
                              labels=workload.labels, weight=workload.weight,
                              region=_locality(workload, 0), zone=_locality(workload, 1),
                              sub_zone=_locality(workload, 2), mtls_identity=identity,
                              origin=origin))
    if not found and entry.resolution in ("DNS", "DNS_ROUND_ROBIN"):
        found.append(Endpoint(host=host, port=port.target_port or port.number,
                              origin=doc.ctx.origin(("spec", "hosts"))))
    protocol = _PROTOCOLS.get(port.protocol, "tcp")
    return Service(name=hosts.service_name(host, port.number),
                   position=doc.ctx.document.position, protocol=protocol,
                   endpoints=tuple(found), connect_timeout=10.0,  # Istio's default
                   load_balancer="least_request",  # Istio's too, unless a DestinationRule says
                   hosts=hosts.host_values(host, port.number, len(entry.ports) == 1),
                   origin=doc.ctx.origin())


def endpoint_port(workload: o.WorkloadSpec, port: o.Port) -> int:
    """Istio's rule: the workload's port of that name, else the targetPort, else the port."""
    named = dict(workload.ports).get(port.name)
    return named or port.target_port or port.number


def _locality(workload: o.WorkloadSpec, index: int) -> str | None:
    parts = (workload.locality or "").split("/")
    return parts[index] if len(parts) > index and parts[index] else None


# ---- DestinationRule ----------------------------------------------------------------------------


def _rule_for(caller: str, host_namespace: str,
              candidates: list[tuple[Doc, exports.Export]]) -> Doc | None:
    """The DestinationRule of a host that a caller of namespace `caller` takes, in Istio's
    order (PushContext.destinationRule): a rule of its own namespace that it sees (in the root
    namespace: one exported to it only), else one of the host's namespace exported to it,
    else one of the root namespace exported to it; the first in order of each."""
    root = hosts.ROOT_NAMESPACE
    for doc, export in candidates:
        if doc.item.namespace == caller and (export.private if caller == root
                                             else export.visible_to(caller)):
            return doc
    for owner in (host_namespace, root):
        for doc, export in candidates:
            if doc.item.namespace == owner and not export.private \
                    and export.visible_to(caller):
                return doc
    return None


def _chosen_rules(rules: list[Doc], registry: dict[str, _Host],
                  export_default: tuple[str, ...], callers: Sequence[str], gateways: bool
                  ) -> dict[str, Doc]:
    """Per host, the DestinationRule its callers take (the workloads' namespaces and the
    ingress gateway's, Istio's lookup with exportTo). Callers of different namespaces
    taking different rules is a warning: one rule applies to every caller here."""
    by_host: dict[str, list[tuple[Doc, exports.Export]]] = {}
    for doc in rules:
        rule = doc.item.spec
        assert isinstance(rule, o.DestinationRule)
        export = exports.of(doc, export_default)
        found = hosts.lookup(rule.host, doc.item.namespace, registry)
        if found is None:
            doc.warn(("spec", "host"), f"no ServiceEntry declares host {rule.host} "
                                       f"({hosts.qualified(rule.host, doc.item.namespace)}): "
                                       "this DestinationRule applies to nothing")
            continue
        by_host.setdefault(found, []).append((doc, export))
    namespaces = sorted({*callers, *((GATEWAY_NAMESPACE,) if gateways else ())})
    chosen: dict[str, Doc] = {}
    for found, candidates in by_host.items():
        host_namespace = registry[found].doc.item.namespace
        takes = {ns: _rule_for(ns, host_namespace, candidates) for ns in namespaces}
        taken = [doc for doc, _ in candidates if any(t is doc for t in takes.values())]
        for doc, _ in candidates:
            if not any(doc is t for t in taken):
                doc.warn(("spec", "host"), f"host {found} has DestinationRule "
                                           f"{taken[0].ctx.name} for every caller this one "
                                           "is exported to; this one is not used (Istio "
                                           "merges only subsets of rules without policy)"
                         if taken else f"no caller of host {found} is in a namespace this "
                                       "DestinationRule is exported to: it is not used")
        if not taken:
            continue
        chosen[found] = first = taken[0]
        if len(taken) > 1 or any(t is None for t in takes.values()):
            groups = "; ".join(
                ", ".join(ns for ns, t in takes.items() if t is d)
                + f": {d.ctx.name if d is not None else 'none'}"
                for d in {id(t): t for t in takes.values()}.values())
            first.warn(("spec", "exportTo"), (
                f"callers of host {found} take different DestinationRules by namespace "
                f"({groups}); rules per caller namespace are not supported yet "
                f"(docs/istio.md): every caller takes {first.ctx.name}"))
    return chosen


def _destination_rules(rules: list[Doc], registry: dict[str, _Host],
                       secrets: Secrets | None = None,
                       export_default: tuple[str, ...] = exports.EVERYWHERE,
                       callers: Sequence[str] = (), gateways: bool = False) -> None:
    """Each host's DestinationRule (`_chosen_rules`) applied to its Services."""
    for found, doc in _chosen_rules(rules, registry, export_default, callers,
                                    gateways).items():
        rule = doc.item.spec
        assert isinstance(rule, o.DestinationRule)
        rule = _with_credentials(doc, rule, secrets or {})
        host = registry[found]
        host.subsets_defined = {name for name, _ in rule.subsets}
        port_policies = dict(rule.port_policies)
        for number in port_policies:
            if number not in host.services:
                doc.error(("spec", "trafficPolicy", "portLevelSettings"),
                          f"host {found} has no port {number}")
        for number, service in list(host.services.items()):
            service = replace(service, subsets=rule.subsets)
            for subset_index, (name, _) in enumerate(rule.subsets):
                if not service.endpoints_of(name) and service.endpoints:
                    doc.warn(("spec", "subsets", subset_index),
                             f"subset {name} selects no endpoint of {found}")
            policy = port_policies.get(number, rule.policy)
            plain, service = service, _apply_policy(service, policy, host, doc)
            # A subset's own trafficPolicy: Istio's MergeTrafficPolicy (the rule's policy for
            # this port, the subset's blocks in place of its, then the subset's port level).
            own: list[tuple[str, Service]] = []
            for name, subset_policy in rule.subset_policies:
                merged = dict(subset_policy.port_policies).get(
                    number, policy.under(subset_policy.policy))
                built = _apply_policy(plain, merged, host, doc)
                if built != service:
                    own.append((name, built))
                host.subset_hash_on[(number, name)] = merged.hash_on
                host.subset_istio_mutual[(number, name)] = merged.tls_mode == "ISTIO_MUTUAL"
            host.services[number] = replace(service, subset_services=tuple(own))
            host.hash_on[number] = policy.hash_on
            host.istio_mutual[number] = policy.tls_mode == "ISTIO_MUTUAL"
        for index, (_, subset_policy) in enumerate(rule.subset_policies):
            for number in dict(subset_policy.port_policies):
                if number not in host.services:
                    doc.error(("spec", "subsets", index, "trafficPolicy", "portLevelSettings"),
                              f"host {found} has no port {number}")


def _with_credentials(doc: Doc, rule: o.DestinationRule, secrets: Secrets
                      ) -> o.DestinationRule:
    """The rule with the certificates of each `tls.credentialName` in its policies' tls, read
    once per policy (a policy applies to every port and subset)."""
    def resolved(policy: o.TrafficPolicy) -> o.TrafficPolicy:
        if policy.tls_credential is None or policy.tls is None:
            return policy
        tls = _credential_upstream(doc, policy.tls_mode == "MUTUAL", policy.tls,
                                   *policy.tls_credential, secrets)
        return replace(policy, tls=tls, tls_mode=policy.tls_mode if tls else None,
                       tls_credential=None)

    def ports(policies: tuple[tuple[int, o.TrafficPolicy], ...]
              ) -> tuple[tuple[int, o.TrafficPolicy], ...]:
        return tuple((number, resolved(policy)) for number, policy in policies)

    return replace(rule, policy=resolved(rule.policy), port_policies=ports(rule.port_policies),
                   subset_policies=tuple(
                       (name, o.SubsetPolicy(resolved(own.policy), ports(own.port_policies)))
                       for name, own in rule.subset_policies))


def _credential_ca(doc: Doc, at: tuple[str | int, ...], secret: KubeObject,
                   cacert: KubeObject | None) -> tuple[bytes | None, str | None] | None:
    """The CA a credentialName's Secret gives, Istio's way: its own ca.crt (or cacert), else
    the one of Secret `<name>-cacert` (`cacert`): (the CA, where it came from), (None, None)
    when neither has one; None when one is malformed (reported at `at`)."""
    for holder in (secret, cacert):
        if holder is None:
            continue
        ca, problem = ca_of(holder)
        if problem:
            doc.error(at, f"Secret {holder.key}: {problem}")
            return None
        if ca is not None:
            return ca, f"secret:{holder.key}"
    return None, None


def _credential_upstream(doc: Doc, mutual: bool, tls: UpstreamTls, name: str,
                         at: tuple[str | int, ...], secrets: Secrets) -> UpstreamTls | None:
    """A DestinationRule's `credentialName`, as Istio reads it: a Secret of the rule's
    namespace (the caller's, for a sidecar), `kubernetes.io/tls` (tls.crt, tls.key, ca.crt) or
    Opaque (cert, key, cacert); the CA that checks the endpoints in the Secret, else in the
    Secret `<name>-cacert`. SIMPLE takes only the CA, MUTUAL the client certificate too."""
    namespace = doc.item.namespace
    secret = secrets.get((namespace, name))
    if secret is None:
        doc.error(at, f"no Secret {namespace}/{name} (a DestinationRule's credentialName is "
                      f"read in its namespace, {namespace})")
        return None
    client = None
    if mutual:
        client, problem = tls_secret(secret, generic=True)
        if client is None:
            doc.error(at, f"Secret {namespace}/{name}: {problem}")
            return None
    found = _credential_ca(doc, at, secret, secrets.get((namespace, f"{name}-cacert")))
    if found is None:
        return None
    ca, ca_path = found
    if ca is None and tls.verify:
        doc.error(at, f"no CA to check the endpoints' certificates with: ca.crt (or cacert) in "
                      f"Secret {namespace}/{name}, or a Secret {namespace}/{name}-cacert "
                      "(or insecureSkipVerify: true)")
        return None
    verify = tls.verify and ca is not None
    return replace(tls, verify=verify, ca=ca if verify else None,
                   ca_path=ca_path if verify else None, client_certificate=client,
                   subject_alt_names=tls.subject_alt_names if verify else ())


def _apply_policy(service: Service, policy: o.TrafficPolicy, host: _Host, doc: Doc
                  ) -> Service:
    changes: dict[str, Any] = {}
    locality = _locality_lb(doc, policy, service)
    if locality is not None:
        changes["locality_lb"] = locality
    if policy.load_balancer is not None:
        changes["load_balancer"] = policy.load_balancer
        changes["load_balancer_options"] = policy.load_balancer_options
    if policy.circuit_breaker is not None:
        changes["circuit_breaker"] = policy.circuit_breaker
    if policy.connect_timeout is not None:
        changes["connect_timeout"] = policy.connect_timeout
    if policy.max_requests_per_connection is not None:
        changes["max_requests_per_connection"] = policy.max_requests_per_connection
    if policy.tcp_keepalive is not None:
        changes["tcp_keepalive"] = policy.tcp_keepalive
    # HTTP connections' lifetimes on HTTP ports, streams on HTTP/2 ones; Istio writes them
    # into the HTTP protocol options, which a TCP cluster does not have.
    if service.protocol != "tcp":
        for key in ("connection_idle_timeout", "max_connection_duration"):
            if getattr(policy, key) is not None:
                changes[key] = getattr(policy, key)
    if service.protocol in ("http2", "grpc") and policy.max_concurrent_streams is not None:
        changes["max_concurrent_streams"] = policy.max_concurrent_streams
    if policy.outlier_detection is not None:
        changes["outlier_detection"] = policy.outlier_detection
        changes["panic_threshold"] = policy.panic_threshold
    if policy.tls is not None:
        changes["tls"] = policy.tls
    if policy.tls_mode in ("DISABLE", "SIMPLE", "MUTUAL"):  # no mesh mTLS, whatever the workloads
        changes["endpoints"] = tuple(replace(e, mtls_identity=None) for e in service.endpoints)
    elif policy.tls_mode == "ISTIO_MUTUAL":  # mesh mTLS to every endpoint, sidecar or not
        # subjectAltNames: the endpoints' certificates carry one of these, not their own IDs
        changes["mesh_peer_ids"] = policy.mesh_sans
        namespace = host.doc.item.namespace
        changes["endpoints"] = tuple(
            e if e.mtls_identity else replace(e, mtls_identity=host.accounts.get(
                (e.host, e.port), hosts.spiffe_path(namespace, None)))
            for e in service.endpoints)
    return replace(service, **changes)


def _locality_lb(doc: Doc, policy: o.TrafficPolicy, service: Service) -> LocalityLb | None:
    """What Istio's Pilot applies of a DestinationRule's localityLbSetting (its
    `getLocalityLbSetting` and `ApplyLocalityLoadBalancer`): nothing when `enabled: false`;
    `distribute` as written; else failover by locality (and `failoverPriority`), which needs
    outlier detection (Envoy never moves to a lower priority without it, so Istio leaves it
    out: a warning here). Locality balancing is on by default in Istio's mesh config, so a
    rule with outlierDetection and no setting fails over by locality too, which changes
    something only when the endpoints say a locality."""
    setting = policy.locality
    if setting is not None and setting.enabled is False:
        return None
    origin = doc.ctx.origin(setting.path) if setting is not None else doc.ctx.origin()
    if setting is not None and setting.distribute:
        return LocalityLb(distribute=setting.distribute, origin=origin)
    if policy.outlier_detection is None:
        if setting is not None:
            doc.warn(setting.path, "locality failover needs outlierDetection in the same traffic "
                                   "policy: without it Istio does not apply it, nor does "
                                   "meshpilot", once=True)
        return None
    if setting is None and not any(e.region or e.zone or e.sub_zone for e in service.endpoints):
        return None
    return LocalityLb(failover=() if setting is None else setting.failover,
                      failover_priority=() if setting is None else setting.failover_priority,
                      origin=origin)


# ---- VirtualService -> Routes -------------------------------------------------------------------


# (IR Service) -> (WorkloadEntry, by id) -> the Route its sidecar uses for that Service
Variants = dict[str, dict[int, str]]


# (gateway view, listener name) -> its tcp routes, in VirtualService order
L4AtGateways = dict[tuple[str, str], list[TcpRoute]]


@dataclass(slots=True)
class _MeshOwners:
    """Which VirtualService shapes a Service's requests, by caller namespace: the first
    (in order) that the caller's namespace sees (its exportTo)."""

    every: Doc | None = None  # the one of every namespace not in `namespaces`
    namespaces: dict[str, Doc] = field(default_factory=dict)

    def claim(self, doc: Doc, export: exports.Export, callers: Sequence[str]
              ) -> tuple[bool, tuple[str, ...]]:
        """`doc` claims what it can: (whether it is the Route of every caller not claimed
        yet, the namespaces it is the Route of otherwise)."""
        if self.every is not None:
            return False, ()
        if export.everywhere:
            self.every = doc
            return True, ()
        mine = tuple(ns for ns in callers if export.visible_to(ns)
                     and ns not in self.namespaces)
        self.namespaces.update((ns, doc) for ns in mine)
        return False, mine

    def first(self) -> Doc | None:
        return self.every or next(iter(self.namespaces.values()), None)


def _virtual_services(services: list[Doc], registry: dict[str, _Host],
                      by_kind: dict[str, list[Doc]], workloads: _Workloads, l4: L4AtGateways,
                      export_default: tuple[str, ...] = exports.EVERYWHERE
                      ) -> tuple[list[tuple[Doc, Route]], set[str], Variants]:
    routes: list[tuple[Doc, Route]] = []
    variants: Variants = {}
    l4_owner: dict[str, Doc] = {}  # tcp Service -> the VirtualService whose tcp/tls routes it has
    routed: set[str] = set()  # IR Services with a Route attached for every caller
    owners: dict[str, _MeshOwners] = {}
    # The namespaces of the mesh's callers (workloads' sidecars), for exportTo.
    callers = sorted({d.item.namespace for d in workloads.docs})
    claimed: dict[tuple[str, str, str], Doc] = {}  # (gateway, listener, host) -> its VS
    gateway_docs = {(d.item.namespace, d.item.name): d for d in by_kind.get("Gateway", [])}
    expanded, doc_of = _delegations(services)
    for doc in services:
        vs = expanded.get(id(doc), doc.item.spec)
        assert isinstance(vs, o.VirtualService)
        if not vs.hosts:
            continue  # a delegate: its routes are in the VirtualServices delegating to it
        ns = doc.item.namespace
        export = exports.of(doc, export_default)
        targets: list[tuple[str, Service | None, str | None, Any]] = []
        for gateway_index, gateway in enumerate(vs.gateways):
            if gateway == "mesh":
                if (vs.tcp or vs.tls) and not all(export.visible_to(c) for c in callers):
                    doc.error(("spec", "exportTo"), "tcp and tls routes in the mesh seen by "
                                                    "some namespaces only (exportTo) are not "
                                                    "supported yet (docs/istio.md)")
                    continue
                for index, host in enumerate(vs.hosts):
                    found = hosts.lookup(host, ns, registry)
                    if found is None:
                        doc.warn(("spec", "hosts", index),
                                 f"no ServiceEntry declares host {host} "
                                 f"({hosts.qualified(host, ns)}): this VirtualService does "
                                 "not apply in the mesh")
                        continue
                    for service in list(registry[found].services.values()):
                        if service.protocol == "tcp":
                            _mesh_l4(doc, vs, registry, registry[found], service, index,
                                     l4_owner, callers)
                            continue
                        if not vs.http and (vs.tcp or vs.tls):
                            continue  # tcp and tls routes: for the host's TCP ports
                        claims = owners.setdefault(service.name, _MeshOwners())
                        earlier = claims.first()
                        every, mine = claims.claim(doc, export, callers)
                        if not every and not mine:
                            if earlier is not None:
                                doc.warn(("spec", "hosts", index),
                                         f"host {found} already has VirtualService "
                                         f"{earlier.ctx.name} for the callers this one is "
                                         "exported to; this one is not used for it in the mesh")
                            elif callers:
                                doc.warn(("spec", "exportTo"),
                                         "no WorkloadEntry is in a namespace this "
                                         "VirtualService is exported to: it shapes no "
                                         "caller's requests in the mesh", once=True)
                            continue
                        targets.append(("mesh", service, None, (every, mine)))
                continue
            if not export.visible_to(GATEWAY_NAMESPACE):
                doc.warn(("spec", "exportTo"),
                         f"not exported to {GATEWAY_NAMESPACE}, where the ingress gateways' "
                         f"Envoys run: this VirtualService does not apply at {gateway} "
                         "(as in Istio)")
                continue
            gw_ns, _, gw_name = gateway.rpartition("/")
            key = (gw_ns or ns, gw_name)
            gw_doc = gateway_docs.get(key)
            if gw_doc is None:
                doc.error(("spec", "gateways", gateway_index),
                          f"no Gateway {key[0]}/{key[1]}")
                continue
            spec = gw_doc.item.spec
            assert isinstance(spec, o.IstioGateway)
            # The route's hosts are the VirtualService's narrowed by each server's (Istio):
            # one Route per set of listeners with the same hosts.
            by_hosts: dict[tuple[str, ...], list[str]] = {}
            l4_served = False
            for server in spec.servers:
                common = _intersection(vs.hosts or ("*",), server.hosts)
                if server.protocol in ("TCP", "TLS"):
                    # A TLS server whose TLS is ended takes tcp routes, as a TCP one (Istio's).
                    by = "TCP" if server.terminates else server.protocol
                    if common and (vs.tcp if by == "TCP" else vs.tls):
                        l4_served = True
                        view = hosts.gateway_view(spec.selector)
                        found_l4 = _l4_routes(doc, vs, registry, gateway, server.port,
                                              spec.selector, by, common)
                        _warn_hidden_l4(doc, found_l4, (GATEWAY_NAMESPACE,), registry)
                        l4.setdefault((view, _listener_name(server)), []).extend(found_l4)
                    continue
                if server.https_redirect or not vs.http:
                    continue
                if common:
                    by_hosts.setdefault(common, []).append(_listener_name(server))
            if not by_hosts and not l4_served:
                doc.warn(("spec", "gateways", gateway_index),
                         f"no host of this VirtualService is a host of Gateway "
                         f"{key[0]}/{key[1]}'s servers: it does not apply there")
            for common, listener_names in by_hosts.items():
                targets.append((gateway, None, hosts.gateway_view(spec.selector),
                                (tuple(listener_names), common)))
        many = len(targets) > 1
        seen_targets: set[str] = set()
        for gateway, service, gateway_view, listeners in targets:
            target = service.name if service else str(gateway_view)
            if service is None and target in seen_targets:  # another set of listeners
                target = f"{target}/{listeners[0][0]}"
            seen_targets.add(target)
            suffix = f"@{target}" if many else ""
            name = f"{ns}/{doc.item.name}{suffix}"
            port = None
            if service is not None:
                port = int(service.name.rsplit(":", 1)[1])
            if service is not None:
                every, mine = listeners
                claims = owners[service.name]
                rules = _rules(doc, vs, registry, gateway, port, doc_of=doc_of)
                if every:
                    routed.add(service.name)
                    routes.append((doc, Route(name=name, position=doc.ctx.document.position,
                                              gateway=None, rules=rules,
                                              service=service.name, origin=doc.ctx.origin())))
                # exportTo: the callers of these namespaces only (the others take the
                # Service's Route for every caller, its default one without a VirtualService);
                # and those of the namespaces some backend's host is not exported to.
                for caller in callers:
                    if caller in claims.namespaces if every else caller not in mine:
                        continue
                    own, hidden = _unexported(rules, caller, registry)
                    if hidden:
                        doc.warn(("spec", "http"), f"{', '.join(hidden)}: not exported to "
                                                   f"namespace {caller}; its callers' share "
                                                   "of requests to them is answered 503 (as "
                                                   "in Istio)", once=True)
                    elif every:
                        continue
                    routes.append((doc, Route(name=f"{name}~callers={caller}",
                                              position=doc.ctx.document.position, gateway=None,
                                              rules=own, service=service.name,
                                              callers_namespace=caller,
                                              origin=doc.ctx.origin())))

                def shaped(caller: Doc, every: bool = every, mine: tuple[str, ...] = mine,
                           claims: _MeshOwners = claims) -> bool:
                    """Whether this VirtualService shapes `caller`'s requests."""
                    namespace = caller.item.namespace
                    return namespace in mine if not every else \
                        namespace not in claims.namespaces
                for variant, kept, chosen in _source_variants(vs, workloads):
                    chosen = [caller for caller in chosen if shaped(caller)]
                    if not chosen:
                        continue
                    vname = f"{name}~{variant}"
                    vrules = _rules(doc, vs, registry, gateway, port,
                                    lambda m, kept=kept: _source_key(m) in kept, doc_of)
                    # Per namespace of its callers when some backend's host is hidden there.
                    by_ns: dict[str, tuple[Rule, ...]] = {}
                    for caller in chosen:
                        ns_of = caller.item.namespace
                        if ns_of not in by_ns:
                            by_ns[ns_of] = _unexported(vrules, ns_of, registry)[0]
                    for rules_of in {id(r): r for r in by_ns.values()}.values():
                        # the namespaces with these rules: the first with the plain name
                        named = vname if rules_of is vrules else \
                            f"{vname}~callers={next(n for n, r in by_ns.items() if r is rules_of)}"
                        routes.append((doc, Route(
                            name=named, position=doc.ctx.document.position, gateway=None,
                            rules=rules_of, service=service.name, named_only=True,
                            origin=doc.ctx.origin())))
                        variants.setdefault(service.name, {}).update(
                            (id(caller), named) for caller in chosen
                            if by_ns[caller.item.namespace] is rules_of)
            else:
                selector = spec_of_gateway(gateway_view, by_kind)
                rules, hidden = _unexported(_rules(
                    doc, vs, registry, gateway, port,
                    lambda m, at=selector: m.applies_to(at, hosts.ROOT_NAMESPACE), doc_of),
                    GATEWAY_NAMESPACE, registry)
                if hidden:
                    doc.warn(("spec", "http"), f"{', '.join(hidden)}: not exported to "
                                               f"{GATEWAY_NAMESPACE}, where the gateways' "
                                               "Envoys run; their share of requests at "
                                               f"{gateway} is answered 503 (as in Istio)",
                             once=True)
                listener_names, route_hosts = listeners
                if _claim_gateway_hosts(doc, claimed, str(gateway_view), listener_names,
                                        route_hosts):
                    routes.append((doc, Route(name=name, position=doc.ctx.document.position,
                                              gateway=gateway_view, hosts=route_hosts,
                                              rules=rules, listeners=listener_names,
                                              origin=doc.ctx.origin())))
    _warn_unselected_sources(services, workloads, by_kind)
    return routes, routed, variants


def _mesh_l4(doc: Doc, vs: o.VirtualService, registry: dict[str, _Host], host: _Host,
             service: Service, index: int, owner: dict[str, Doc],
             callers: Sequence[str] = ()) -> None:
    """A tcp Service of a VirtualService's host in the mesh: its tcp and tls routes become
    the Service's `tcp_routes` (what its callers' sidecars do with connections to it)."""
    if not vs.tcp and not vs.tls:
        return
    if service.name in owner:
        doc.warn(("spec", "hosts", index), f"{service.name} already has the tcp/tls routes of "
                                           f"VirtualService {owner[service.name].ctx.name}; "
                                           "this one's are not used for it")
        return
    owner[service.name] = doc
    number = int(service.name.rsplit(":", 1)[1])
    found = _l4_routes(doc, vs, registry, "mesh", number, None, None, ())
    _warn_hidden_l4(doc, found, callers, registry)
    host.services[number] = replace(host.services[number], tcp_routes=_distinct(doc, found))


def _warn_hidden_l4(doc: Doc, routes: Sequence[TcpRoute], callers: Sequence[str],
                    registry: dict[str, _Host]) -> None:
    """tcp and tls routes are one per Service (or gateway listener), not per caller
    namespace: a backend's host that some caller's namespace does not see is still reached
    from there, which is said."""
    for route in routes:
        for backend in route.backends:
            host = _host_of(backend.service, registry)
            hidden = [ns for ns in callers if host is not None and not host.visible_to(ns)]
            if hidden:
                doc.warn(("spec",), f"{backend.service}: not exported to namespace "
                                    f"{', '.join(hidden)}; tcp and tls routes to it still "
                                    "reach it from there (not applied yet, docs/istio.md)",
                         once=True)


def _l4_routes(doc: Doc, vs: o.VirtualService, registry: dict[str, _Host], gateway: str,
               port: int, proxy: Labels | None, server: str | None,
               server_hosts: tuple[str, ...]) -> list[TcpRoute]:
    """The `tls` then `tcp` routes of `vs` for one gateway (`mesh`: the sidecars) and port, in
    order. `proxy`: the gateway's labels (its `sourceLabels` hold or not); `server`: a gateway
    server's protocol (TCP takes tcp routes, TLS tls ones), whose hosts narrow the SNI names."""
    ns = doc.item.namespace
    wanted = _gateway_key(gateway, ns)
    found: list[TcpRoute] = []
    kinds = (vs.tls, vs.tcp) if server is None else ((vs.tcp,) if server == "TCP" else (vs.tls,))
    for entries in kinds:
        for route in entries:
            kept = []
            for m in route.matches:
                if m.gateways:
                    if wanted not in {_gateway_key(g, ns) for g in m.gateways}:
                        continue
                elif m.source_labels or m.source_namespace is not None:
                    if proxy is None:
                        doc.error((*m.path, "sourceLabels" if m.source_labels
                                   else "sourceNamespace"),
                                  f"sourceLabels and sourceNamespace in {route.kind} routes in "
                                  f"the mesh {NOT_SUPPORTED}")
                        continue
                    if not m.applies_to_proxy(proxy, hosts.ROOT_NAMESPACE):
                        continue
                if proxy is None and (m.destination_subnets or m.source_subnet):
                    # A sidecar's application dials 127.0.0.1:<port> from 127.0.0.1: neither
                    # address says anything of the connection (Istio reads the captured
                    # connection's original addresses; meshpilot captures nothing).
                    doc.error((*m.path, "destinationSubnets" if m.destination_subnets
                               else "sourceSubnet"),
                              f"destinationSubnets and sourceSubnet in {route.kind} routes in "
                              "the mesh cannot apply: the application connects to its "
                              "sidecar's local port, from and to 127.0.0.1 (they apply at "
                              "gateways)")
                    continue
                if m.port is not None and m.port != port:
                    continue
                kept.append(m)
            if route.matches and not kept:
                continue
            backends = tuple(b for d in route.destinations
                             if (b := _backend(doc, d, registry, port)) is not None)
            # One route per set of addresses its matches name (Envoy's filter chain match),
            # in the order first written; a match naming none is the route without.
            by_addresses: dict[tuple[tuple[str, ...], tuple[str, ...]], list[o.L4Match]] = {}
            for m in kept or [o.L4Match()]:
                by_addresses.setdefault((m.destination_subnets, m.source_subnet), []).append(m)
            for (destinations, sources), group in by_addresses.items():
                origin = doc.ctx.origin(route.path)
                if route.kind == "tcp":
                    found.append(TcpRoute(backends, origin=origin,
                                          destination_ranges=destinations,
                                          source_ranges=sources))
                    continue
                names: tuple[str, ...] = tuple(dict.fromkeys(h for m in group
                                                             for h in m.sni_hosts))
                if server_hosts:
                    names = _intersection(names, server_hosts)
                if names:
                    found.append(TcpRoute(backends, names, origin=origin,
                                          destination_ranges=destinations,
                                          source_ranges=sources))
    return found


def _addresses(route: TcpRoute) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return route.destination_ranges, route.source_ranges


def _distinct(doc: Doc, found: Sequence[TcpRoute]) -> tuple[TcpRoute, ...]:
    """Routes Envoy can take as filter chains: for each set of addresses (subnets), an SNI
    name once (the first route with it) and one route without names (the first), which takes
    every other connection to and from those addresses. Routes after the one that takes every
    connection (no names, no addresses) are never reached in Istio's order: left out."""
    taken: set[tuple[str, tuple[tuple[str, ...], tuple[str, ...]]]] = set()
    catch_all: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    kept: list[TcpRoute] = []
    for route in found:
        if ((), ()) in catch_all:
            break
        addresses = _addresses(route)
        if not route.server_names:
            if addresses not in catch_all:
                catch_all.add(addresses)
                kept.append(route)
            continue
        names = tuple(n for n in route.server_names if (n, addresses) not in taken)
        if names:
            taken.update((n, addresses) for n in names)
            kept.append(replace(route, server_names=names))
    return tuple(kept)


def spec_of_gateway(view: str | None, by_kind: dict[str, list[Doc]]) -> Labels:
    """The labels of the gateway Envoy of `view` (its Istio Gateways' selector)."""
    for doc in by_kind.get("Gateway", []):
        selector = doc.item.spec.selector  # type: ignore[union-attr]
        if hosts.gateway_view(selector) == view:
            return selector
    return ()


def _source_matches(vs: o.VirtualService) -> list[o.HttpMatch]:
    return [m for http in vs.http for m in http.matches if m.by_source]


def _source_key(match: o.HttpMatch) -> str:
    """A readable name for a match's source condition (`app=productpage,ns=default`)."""
    parts = [f"{k}={v}" for k, v in match.source_labels]
    if match.source_namespace is not None:
        parts.append(f"ns={match.source_namespace}")
    return ",".join(parts)


def _source_variants(vs: o.VirtualService, workloads: _Workloads
                     ) -> list[tuple[str, set[str], list[Doc]]]:
    """The Routes a VirtualService with `sourceLabels`/`sourceNamespace` needs in the mesh
    beside its default one (no source condition holds): one per distinct set of source
    conditions some WorkloadEntry satisfies, with those workloads. Istio builds the routes per
    proxy; here each set of callers alike shares one."""
    conditions = sorted({_source_key(m): m for m in _source_matches(vs)}.items())
    if not conditions:
        return []
    found: dict[tuple[str, ...], list[Doc]] = {}
    for doc in workloads.docs:
        labels = doc.item.spec.spec.labels  # type: ignore[union-attr]
        kept = tuple(key for key, match in conditions
                     if match.applies_to(labels, doc.item.namespace))
        if kept:
            found.setdefault(kept, []).append(doc)
    return [("+".join(kept), set(kept), callers) for kept, callers in sorted(found.items())]


def _warn_unselected_sources(services: list[Doc], workloads: _Workloads,
                             by_kind: dict[str, list[Doc]]) -> None:
    """istioctl analyze's spirit: a source condition no proxy satisfies matches nothing."""
    gateways = [(d.item.spec.selector, hosts.ROOT_NAMESPACE)  # type: ignore[union-attr]
                for d in by_kind.get("Gateway", [])]
    proxies = [(d.item.spec.spec.labels, d.item.namespace)  # type: ignore[union-attr]
               for d in workloads.docs] + gateways
    for doc in services:
        vs = doc.item.spec
        assert isinstance(vs, o.VirtualService)
        for index, http in enumerate(vs.http):
            for match_index, match in enumerate(http.matches):
                if match.by_source and not any(match.applies_to(labels, ns)
                                               for labels, ns in proxies):
                    doc.warn(("spec", "http", index, "match", match_index),
                             "no WorkloadEntry or gateway has these sourceLabels (and "
                             "sourceNamespace): this match applies to no caller")


def _overlap(a: str, b: str) -> str | None:
    """The narrower of two host patterns that overlap (`*`, `*.suffix`, exact), else None."""
    if a == b or b == "*":
        return a
    if a == "*":
        return b
    if a.startswith("*.") and b.endswith(a[1:]):
        return b
    if b.startswith("*.") and a.endswith(b[1:]):
        return a
    return None


def _intersection(route_hosts: tuple[str, ...], server_hosts: tuple[str, ...]
                  ) -> tuple[str, ...]:
    found = (_overlap(a, b) for a in route_hosts for b in server_hosts)
    return tuple(dict.fromkeys(h for h in found if h is not None))


def _claim_gateway_hosts(doc: Doc, claimed: dict[tuple[str, str, str], Doc], gateway: str,
                         listeners: tuple[str, ...], route_hosts: tuple[str, ...]) -> bool:
    """Two VirtualServices with a host in common on a gateway's listener: Istio merges
    their routes; meshpilot does not yet, so the later one is refused (rather than Envoy
    refusing the route configuration)."""
    for listener in listeners:
        for host in route_hosts:
            first = claimed.get((gateway, listener, host))
            if first is not None and first is not doc:
                doc.error(("spec", "hosts"),
                          f"host {host} on gateway {gateway} already has VirtualService "
                          f"{first.ctx.name}: merging VirtualServices at a gateway "
                          f"{'is not supported yet (docs/istio.md)'}; write their http "
                          "routes in one")
                return False
    for listener in listeners:
        for host in route_hosts:
            claimed[(gateway, listener, host)] = doc
    return True


def _gateway_key(name: str, namespace: str) -> str:
    """A gateway as Istio compares them: `mesh`, else `ns/name` (a bare name: this
    namespace's)."""
    return name if name == "mesh" or "/" in name else f"{namespace}/{name}"


def _rules(doc: Doc, vs: o.VirtualService, registry: dict[str, _Host], gateway: str,
           port: int | None, source: Callable[[o.HttpMatch], bool] | None = None,
           doc_of: dict[int, Doc] | None = None) -> tuple[Rule, ...]:
    """The rules of `vs` for one gateway (or `mesh`) and port. `source(match)` says whether a
    match with a source condition holds for the proxy (the caller) the rules are for; by
    default none holds (Istio's sourceMatchHTTP: `gateways` when written, else the source).
    `doc_of`: the delegate VirtualService an http route came from (its errors are its)."""
    ns = doc.item.namespace
    wanted = _gateway_key(gateway, ns)

    def kept(m: o.HttpMatch) -> bool:
        if m.gateways:
            return wanted in {_gateway_key(g, ns) for g in m.gateways}
        if m.by_source:
            return source is not None and source(m)
        return True

    rules: list[Rule] = []
    for http in vs.http:
        matches = tuple(m.match for m in http.matches
                        if kept(m) and (m.port is None or port is None or m.port == port))
        if http.matches and not matches:
            continue  # every match is for another gateway or port
        if http.delegate is not None:
            continue  # its delegate is missing (warned): Istio drops the route
        owner = (doc_of or {}).get(id(http), doc)
        backends = tuple(b for d in http.destinations
                         if (b := _backend(owner, d, registry, port)) is not None)
        mirrors = tuple(Mirror(b.service, b.subset, m.percentage)
                        for m in http.mirrors
                        if (b := _backend(owner, m.destination, registry, port)) is not None)
        hash_on: tuple[Any, ...] = ()
        for backend in backends:
            found = _host_of(backend.service, registry)
            if found is not None:
                number = int(backend.service.rsplit(":", 1)[1])
                hash_on = hash_on or found.subset_hash_on.get(
                    (number, backend.subset or ""), found.hash_on.get(number, ()))
        # Each http route's corsPolicy is its own (Istio's per-route CORS config); a route
        # without one answers no CORS.
        rules.append(_one_destination_headers(replace(
            http.rule, matches=matches or (Match(),), backends=backends, mirrors=mirrors,
            hash_on=hash_on, cors=http.cors)))
    return tuple(rules)


def _one_destination_headers(rule: Rule) -> Rule:
    """As Istio's pilot writes a route with one destination: that destination's header
    changes join the route's own, after them (its `set` wins over the route's); with several
    destinations each keeps its own (Envoy's weighted cluster entries, where the route's
    changes are applied after them)."""
    if len(rule.backends) != 1:
        return rule
    (backend,) = rule.backends
    if backend.request_headers is None and backend.response_headers is None:
        return rule
    return replace(rule, backends=(replace(backend, request_headers=None,
                                           response_headers=None),),
                   request_headers=_joined(rule.request_headers, backend.request_headers),
                   response_headers=_joined(rule.response_headers, backend.response_headers))


def _joined(first: HeaderOps, then: HeaderOps | None) -> HeaderOps:
    if then is None:
        return first
    return HeaderOps(add=first.add + then.add, set=first.set + then.set,
                     remove=tuple(dict.fromkeys(first.remove + then.remove)))


# ---- delegation ---------------------------------------------------------------------------------


def _delegations(services: list[Doc]) -> tuple[dict[int, o.VirtualService], dict[int, Doc]]:
    """Root VirtualServices with their `delegate` routes replaced by the delegates' http
    routes, merged as Istio's pilot does (mergeHTTPRoute): each delegate match must fit one of
    the root route's matches (a narrower path, no conflicting header ...) and is ANDed with
    it; a delegate route with no such match is dropped; what the delegate route does not say
    (rewrite, timeout, retries, fault, mirrors, corsPolicy, headers) it inherits from the root
    route. By root document (id); and the delegate document of each merged route (id)."""
    by_name = {(d.item.namespace, d.item.name): d for d in services}
    used: set[int] = set()
    expanded: dict[int, o.VirtualService] = {}
    doc_of: dict[int, Doc] = {}
    for doc in services:
        vs = doc.item.spec
        assert isinstance(vs, o.VirtualService)
        if not any(h.delegate for h in vs.http):
            continue
        routes: list[o.HttpRoute] = []
        for index, http in enumerate(vs.http):
            if http.delegate is None:
                routes.append(http)
                continue
            name, namespace = http.delegate
            target = by_name.get((namespace or doc.item.namespace, name))
            spec = None if target is None else target.item.spec
            if target is None or not isinstance(spec, o.VirtualService) or spec.hosts:
                doc.warn(("spec", "http", index, "delegate"),
                         f"no delegate VirtualService {namespace or doc.item.namespace}/{name} "
                         "(one without hosts): this route is dropped, as in Istio")
                routes.append(http)  # kept as a delegating route: _rules leaves it out
                continue
            used.add(id(target))
            for leaf_index, leaf in enumerate(spec.http):
                merged = _merged_route(http, leaf, target.item.namespace)
                if merged is None:
                    target.warn(("spec", "http", leaf_index, "match"),
                                f"no match of this route fits the matches of "
                                f"{doc.ctx.name}'s spec.http[{index}] delegating to it: it is "
                                "dropped there (Istio)")
                    continue
                doc_of[id(merged)] = target
                routes.append(merged)
        expanded[id(doc)] = replace(vs, http=tuple(routes))
    for doc in services:
        vs = doc.item.spec
        assert isinstance(vs, o.VirtualService)
        if not vs.hosts and id(doc) not in used and vs.http:
            doc.warn(("spec",), "a VirtualService without hosts is a delegate, and no "
                                "VirtualService delegates to it: it applies to nothing")
    return expanded, doc_of


_INHERITED = {"rewrite": ("rewrite_path", "rewrite_host"), "timeout": ("timeout",),
              "retries": ("retries",), "fault": ("fault",),
              "headers": ("request_headers", "response_headers")}
_MIRROR_KEYS = frozenset({"mirror", "mirrors", "mirrorPercentage", "mirrorPercent"})


def _merged_route(root: o.HttpRoute, leaf: o.HttpRoute, namespace: str) -> o.HttpRoute | None:
    matches = _merged_matches(root.matches, leaf.matches)
    if matches is None:
        return None
    changes = {name: getattr(root.rule, name) for key, names in _INHERITED.items()
               if key in root.written and key not in leaf.written for name in names}
    # The delegate's hosts are names in its own namespace.
    destinations = tuple(replace(d, host=hosts.qualified(d.host, namespace))
                         for d in leaf.destinations)
    mirrors = tuple(replace(m, destination=replace(
        m.destination, host=hosts.qualified(m.destination.host, namespace)))
        for m in leaf.mirrors)
    if not leaf.written & _MIRROR_KEYS:
        mirrors = root.mirrors
    return replace(leaf, matches=matches, rule=replace(leaf.rule, **changes),
                   destinations=destinations, mirrors=mirrors,
                   cors=leaf.cors if "corsPolicy" in leaf.written else root.cors)


def _merged_matches(root: tuple[o.HttpMatch, ...], leaf: tuple[o.HttpMatch, ...]
                    ) -> tuple[o.HttpMatch, ...] | None:
    """Istio's mergeHTTPMatchRequests: None when a delegate match fits no root match."""
    if not root:
        return leaf
    if not leaf:
        return root
    found: list[o.HttpMatch] = []
    for sub in leaf:
        fits = [_merged_match(r, sub) for r in root]
        fits = [m for m in fits if m is not None]
        if not fits:
            return None
        found.extend(fits)
    return tuple(found)


def _string_conflict(root: Any, leaf: Any) -> bool:
    """Istio's stringMatchConflict on the model's StringMatch (None: not written)."""
    if root is None or leaf is None:
        return False
    valued = ("exact", "prefix", "regex")
    if root.kind == "regex" and leaf.kind in valued:
        return True
    if leaf.kind == "regex" and root.kind in valued:
        return True
    if root.kind == "exact":
        return leaf.kind != "exact" or leaf.value != root.value
    if root.kind == "prefix" and leaf.kind in ("prefix", "exact"):
        return not leaf.value.startswith(root.value)
    return True  # Istio's fall-through: a `{}` (present) on either side, a regex against one


def _merged_match(root: o.HttpMatch, leaf: o.HttpMatch) -> o.HttpMatch | None:
    r, m = root.match, leaf.match
    if _string_conflict(r.path, m.path):
        return None
    if r.methods and m.methods and set(r.methods) != set(m.methods):
        return None
    for kind in ("headers", "query"):
        mine = {(name, how.invert): how for name, how in getattr(r, kind)}
        if any(_string_conflict(mine.get((name, how.invert)), how)
               for name, how in getattr(m, kind)):
            return None
    if root.port is not None and leaf.port is not None and root.port != leaf.port:
        return None
    if root.source_namespace is not None and leaf.source_namespace != root.source_namespace:
        return None
    labels = dict(root.source_labels)
    if any(labels.get(k, v) != v for k, v in leaf.source_labels):
        return None
    if root.gateways and leaf.gateways and not set(leaf.gateways) <= set(root.gateways):
        return None

    def merged(kind: str) -> tuple[Any, ...]:
        theirs = {(name, how.invert) for name, how in getattr(m, kind)}
        return (*(h for h in getattr(r, kind) if (h[0], h[1].invert) not in theirs),
                *getattr(m, kind))

    match = replace(m, path=m.path or r.path, methods=m.methods or r.methods,
                    headers=merged("headers"), query=merged("query"),
                    whole_segments=m.whole_segments if m.path else r.whole_segments,
                    ignore_case=m.ignore_case if m.path else r.ignore_case)
    return replace(leaf, match=match, port=leaf.port or root.port,
                   gateways=leaf.gateways or root.gateways,
                   source_labels=tuple(sorted({**labels, **dict(leaf.source_labels)}.items())),
                   source_namespace=leaf.source_namespace or root.source_namespace)


def _host_of(service_name: str, registry: dict[str, _Host]) -> _Host | None:
    return registry.get(service_name.rsplit(":", 1)[0])


def _unexported(rules: tuple[Rule, ...], namespace: str, registry: dict[str, _Host]
                ) -> tuple[tuple[Rule, ...], list[str]]:
    """`rules` as a caller of `namespace` has them, and the hosts of their backends that are
    not exported to it: Istio's proxy has no cluster for such a host, so Envoy answers its
    share 503 (a backend not `resolved`), and a mirror to it sends nothing."""
    hidden: list[str] = []

    def unseen(service: str) -> bool:
        host = _host_of(service, registry)
        if host is None or host.visible_to(namespace):
            return False
        hidden.append(service.rsplit(":", 1)[0])
        return True

    found = tuple(replace(rule, backends=tuple(
        replace(b, resolved=False, unresolved_status=503) if unseen(b.service) else b
        for b in rule.backends), mirrors=tuple(m for m in rule.mirrors if not unseen(m.service)))
        for rule in rules)
    return (found if hidden else rules), sorted(set(hidden))


def _backend(doc: Doc, destination: o.Destination, registry: dict[str, _Host],
             route_port: int | None) -> Backend | None:
    ns = doc.item.namespace
    found = hosts.lookup(destination.host, ns, registry)
    if found is None:
        doc.error((*destination.path, "host"),
                  f"no ServiceEntry declares host {destination.host} "
                  f"({hosts.qualified(destination.host, ns)})")
        return None
    host = registry[found]
    ports = sorted(host.services)
    number = destination.port
    if number is None:
        if len(ports) == 1:
            number = ports[0]
        elif route_port in host.services:
            number = route_port
        else:
            doc.error((*destination.path, "port"),
                      f"host {found} has ports {', '.join(map(str, ports))}: say which one")
            return None
    if number not in host.services:
        doc.error((*destination.path, "port", "number"), f"host {found} has no port {number}")
        return None
    service = host.services[number]
    subset = destination.subset
    if subset is not None and subset not in host.subsets_defined:
        doc.warn((*destination.path, "subset"),
                 f"no DestinationRule of host {found} defines subset {subset}: requests to "
                 "it fail with 503, as in Istio (istioctl analyze: IST0101)")
        if service.subset(subset) is None:
            host.services[number] = service = replace(
                service, subsets=(*service.subsets,
                                  (subset, ((UNDEFINED_SUBSET_LABEL, subset),))))
    return Backend(service.name, subset, destination.weight,
                   origin=doc.ctx.origin(destination.path),
                   request_headers=destination.request_headers,
                   response_headers=destination.response_headers)


def _default_routes(registry: dict[str, _Host], routed: set[str]) -> None:
    """Istio's route to a host no VirtualService names: no timeout, the default retries
    (and the DestinationRule's consistent hash)."""
    for host in registry.values():
        for number, service in host.services.items():
            if service.name in routed or service.protocol == "tcp":
                continue
            # Istio's defaults, said where the ServiceEntry is (their origin).
            rule = Rule(position=service.position,
                        backends=(Backend(service.name, origin=service.origin),),
                        timeout=0.0, retries=replace(ISTIO_DEFAULT_RETRIES,
                                                     origin=service.origin),
                        hash_on=host.hash_on.get(number, ()), origin=service.origin)
            host.doc.parts.append(Route(name=f"default@{service.name}",
                                        position=service.position, gateway=None,
                                        rules=(rule,), service=service.name,
                                        origin=service.origin))


# ---- Gateway ------------------------------------------------------------------------------------


def _listener_name(server: o.Server) -> str:
    return f"{server.protocol.lower()}-{server.port}"


@dataclass(slots=True)
class _Gateways:
    docs: list[Doc]
    built: list[tuple[Doc, Gateway]]
    selectors: dict[str, Labels] = field(default_factory=dict)  # view -> its labels


def _secure_gateway_routes(routes: list[tuple[Doc, Route]], gateways: _Gateways,
                           policies: security.Policies, registry: dict[str, _Host]
                           ) -> list[tuple[Doc, Route]]:
    """Every Route at an ingress gateway gets what the gateway enforces (its JWT providers,
    DENY then ALLOW authorization)."""
    jwks_service = _jwks_service(registry)
    found: dict[str, Any] = {view: policies.for_gateway(selector, jwks_service)
                             for view, selector in gateways.selectors.items()}
    return [(doc, route if route.gateway is None or not found.get(route.gateway)
             else replace(route, security=found[route.gateway])) for doc, route in routes]


def _providers(mesh: meshconfig.MeshConfig, registry: dict[str, _Host],
               policies: security.Policies) -> None:
    """MeshConfig's ext_authz providers, each calling the Service of the ServiceEntry that
    declares its host and port (Istio's `[namespace/]hostname`), for CUSTOM policies."""
    policies.other_providers = dict(mesh.other_providers)
    for name, provider in mesh.providers.items():
        kind = "envoyExtAuthzHttp" if provider.protocol == "http" else "envoyExtAuthzGrpc"
        at = (*provider.path, kind)
        host = registry.get(provider.host)
        if host is None or provider.namespace not in (None, host.doc.item.namespace) \
                or provider.port not in host.services:
            where = f" in namespace {provider.namespace}" if provider.namespace else ""
            # (a warning: a MeshConfig may list providers this folder's mesh never calls; a
            # CUSTOM policy naming it is an error)
            problem = (f"no ServiceEntry{where} declares host {provider.host} with port "
                       f"{provider.port}")
            mesh.warn((*at, "service"), f"{problem}: the provider {name} has nothing to call")
            policies.broken_providers[name] = f"{problem} (data.mesh: {kind}.service)"
            continue
        service = host.services[provider.port]
        if provider.protocol == "grpc" and service.protocol not in ("grpc", "http2"):
            mesh.error((*at, "port"), f"a gRPC provider calls an HTTP/2 port: port "
                                      f"{provider.port} of {provider.host} is "
                                      f"{service.protocol} (protocol GRPC in the ServiceEntry)")
            policies.broken_providers[name] = "its port is not HTTP/2"
            continue
        assert mesh.ctx is not None
        policies.providers[name] = ExtAuthz(
            service=service.name, protocol=provider.protocol, timeout=provider.timeout,
            failure_mode_allow=provider.fail_open, origin=mesh.ctx.origin(provider.path),
            path_prefix=provider.path_prefix,
            # Istio leaves Envoy's default (Host, Method, Path, Content-Length and
            # Authorization over HTTP; every header over gRPC) when none are named.
            send_headers=provider.send_headers or (
                (StringMatch("exact", "authorization"),) if provider.protocol == "http" else ()),
            upstream_headers=provider.upstream_headers,
            client_headers=provider.client_headers,
            client_headers_on_success=provider.client_headers_on_success,
            status_on_error=provider.status_on_error, add_headers=provider.add_headers,
            request_body=provider.request_body)


def _jwks_service(registry: dict[str, _Host]) -> Callable[[Doc, tuple[Any, ...], str],
                                                          str | None]:
    """The Service a `jwksUri` is fetched through: the ServiceEntry of its host and port."""
    def jwks_service(doc: Doc, path: tuple[Any, ...], uri: str) -> str | None:
        parsed = urlsplit(uri)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        host = registry.get(parsed.hostname or "")
        if parsed.scheme not in ("http", "https") or host is None or port not in host.services:
            doc.error(path, f"the JWKS server {parsed.hostname}:{port} must be declared: a "
                            "ServiceEntry for that host and port (with a DestinationRule tls "
                            "SIMPLE for https), or write jwks inline")
            return None
        return host.services[port].name

    return jwks_service


# Where the ingress gateway runs (Istio installs it there), so where its Secrets are.
GATEWAY_NAMESPACE = "istio-system"
Secrets = dict[tuple[str, str], KubeObject]


def _add_certificates(doc: Doc, server: o.Server, listeners: dict[int, GatewayListener],
                      secrets: Secrets) -> None:
    """A further HTTPS server on a port: its certificates join the port's listener (Envoy picks
    one by SNI), so that each server's hosts are served with their own certificate. Its other
    TLS settings must be the first server's: a port has one TLS context."""
    if server.mesh_mutual or listeners[server.port].mesh_tls:
        if server.mesh_mutual != listeners[server.port].mesh_tls:
            doc.error((*server.path, "tls"),
                      f"the servers on port {server.port} differ in tls mode: ISTIO_MUTUAL "
                      "(the mesh certificates) and another; one port has one TLS context here")
        return  # ISTIO_MUTUAL servers share the gateway's one mesh certificate
    tls = server.tls if server.credential is None else \
        _credential_tls(doc, server.credential, secrets)
    listener = listeners[server.port]
    if tls is None or listener.tls is None:
        return  # its credential's problem is said; or the first server's TLS did not load
    first = listener.tls
    if (tls.client_ca, tls.min_version, tls.alpn, tls.client_may_omit,
            tls.client_subject_alt_names) != (first.client_ca, first.min_version, first.alpn,
                                              first.client_may_omit,
                                              first.client_subject_alt_names):
        doc.error((*server.path, "tls"),
                  f"the servers on port {server.port} differ in TLS settings other than their "
                  "certificates (mode MUTUAL and its CA and subjectAltNames, "
                  "minProtocolVersion): one port has one TLS context here, which is not "
                  "supported yet (docs/istio.md)")
        return
    certificates = tuple(dict.fromkeys((*first.certificates, *tls.certificates)))
    listeners[server.port] = replace(listener, tls=replace(first, certificates=certificates))


def _credential_tls(doc: Doc, credential: o.Credential, secrets: Secrets) -> ListenerTls | None:
    """A server's TLS from the Secrets its `credentialName(s)` name, as Istio's gateway reads
    them: in the gateway's namespace, `kubernetes.io/tls` (tls.crt, tls.key, ca.crt) or
    Opaque (cert, key, cacert); for MUTUAL the clients' CA in the Secret itself, else in the
    Secret `<name>-cacert`."""
    key = "credentialName" if len(credential.names) == 1 else "credentialNames"
    at = (*credential.path, key)
    certificates = []
    client_ca = client_ca_path = None
    for index, name in enumerate(credential.names):
        here = at if key == "credentialName" else (*at, index)
        secret = secrets.get((GATEWAY_NAMESPACE, name))
        if secret is None:
            doc.error(here, f"no Secret {GATEWAY_NAMESPACE}/{name} (the gateway reads its "
                            f"credentials in its namespace, {GATEWAY_NAMESPACE})")
            return None
        certificate, problem = tls_secret(secret, generic=True)
        if certificate is None:
            doc.error(here, f"Secret {GATEWAY_NAMESPACE}/{name}: {problem}")
            return None
        certificates.append(certificate)
        if credential.mutual and client_ca is None:
            found = _credential_ca(doc, here, secret,
                                   secrets.get((GATEWAY_NAMESPACE, f"{name}-cacert")))
            if found is None:
                return None
            client_ca, client_ca_path = found
    if credential.mutual and client_ca is None:
        mode = "OPTIONAL_MUTUAL" if credential.optional else "MUTUAL"
        doc.error(at, f"tls mode {mode} needs the clients' CA: ca.crt (or cacert) in Secret "
                      f"{GATEWAY_NAMESPACE}/{credential.names[0]}, or a Secret "
                      f"{GATEWAY_NAMESPACE}/{credential.names[0]}-cacert")
        return None
    return ListenerTls(tuple(certificates), credential.min_version,
                       origin=doc.ctx.origin(at), client_ca=client_ca,
                       client_ca_path=client_ca_path, client_may_omit=credential.optional,
                       client_subject_alt_names=credential.client_sans)


def _ended_tls(doc: Doc, server: o.Server, secrets: Secrets) -> ListenerTls | None:
    """The TLS a TLS server's gateway ends (None: passed through, or ISTIO_MUTUAL's mesh
    certificates), its certificates from files or Secrets as an HTTPS server's; no ALPN is
    offered, the stream after it is not HTTP."""
    tls = server.tls
    if server.credential is not None:
        tls = _credential_tls(doc, server.credential, secrets)
    return None if tls is None else replace(tls, alpn=())


def _auto_passthrough(doc: Doc, server: o.Server, registry: dict[str, _Host]) -> list[TcpRoute]:
    """Istio's AUTO_PASSTHROUGH: a connection whose SNI is `outbound_.PORT_.SUBSET_.HOST`
    (`outbound_.PORT_._.HOST` for the whole service) goes, still encrypted, to that service's
    (or subset's) endpoints, for every host the server's hosts cover. The clusters it goes
    through are plain TCP ones of their own, `Service`s named as the SNI (a passthrough
    cluster must not add mTLS: the caller's own TLS reaches the workload)."""
    found: list[TcpRoute] = []
    for name in sorted(registry):
        if not any(_overlap(pattern, name) == name for pattern in server.hosts):
            continue
        host = registry[name]
        for number in sorted(host.services):
            service = host.services[number]
            for subset in (None, *sorted(s for s, _ in service.subsets)):
                sni = f"outbound_.{number}_.{subset or ''}_.{name}"
                endpoints = tuple(replace(e, mtls_identity=None)
                                  for e in service.endpoints_of(subset))
                target = Service(name=sni, position=service.position, protocol="tcp",
                                 endpoints=endpoints, load_balancer=service.load_balancer,
                                 connect_timeout=service.connect_timeout,
                                 origin=doc.ctx.origin(server.path))
                host.passthrough[sni] = target
                found.append(TcpRoute((Backend(sni, origin=doc.ctx.origin(server.path)),),
                                      (sni,), origin=doc.ctx.origin(server.path)))
    return found


def _trusted_proxies(members: list[Doc], mesh_default: int | None) -> ClientIp | None:
    """How a gateway finds the client's address: numTrustedProxies of its Gateways'
    `proxy.istio.io/config` annotation (they must agree), else MeshConfig's default; with
    none or 0 the client is the peer (Istio's)."""
    said: tuple[Doc, int] | None = None
    at = ("metadata", "annotations", parse.PROXY_CONFIG)
    for doc in members:
        spec = doc.item.spec
        assert isinstance(spec, o.IstioGateway)
        for name in spec.proxy_ignored:
            doc.warn(at, f"ProxyConfig field {name} is not applied (docs/istio.md); meshpilot "
                         "reads gatewayTopology.numTrustedProxies")
        if spec.trusted_proxies is None:
            continue
        if said is not None and said[1] != spec.trusted_proxies:
            doc.error(at, f"numTrustedProxies {spec.trusted_proxies}, and Gateway "
                          f"{said[0].ctx.name} of the same gateway Envoys says {said[1]}")
            continue
        said = said or (doc, spec.trusted_proxies)
    count = said[1] if said is not None else mesh_default
    return ClientIp(xff_trusted_hops=count, origin=said[0].ctx.origin(at)
                    if said is not None else None) if count else None


def _gateways(docs: list[Doc], l4: L4AtGateways, secrets: Secrets | None = None,
              registry: dict[str, _Host] | None = None,
              trusted_proxies: int | None = None) -> _Gateways:
    """A Gateway of the model per distinct selector: every Istio Gateway whose selector the
    Envoy's labels (= that selector) satisfy contributes its servers."""
    built: list[tuple[Doc, Gateway]] = []
    selectors: dict[Labels, Doc] = {}
    for doc in docs:
        spec = doc.item.spec
        assert isinstance(spec, o.IstioGateway)
        selectors.setdefault(spec.selector, doc)
    for selector, first in sorted(selectors.items()):
        members = [d for d in docs if hosts.selects(d.item.spec.selector, selector)]  # type: ignore[union-attr]
        listeners: dict[int, GatewayListener] = {}
        client_ip = _trusted_proxies(members, trusted_proxies)
        https_port = None
        for doc in members:
            for server in doc.item.spec.servers:  # type: ignore[union-attr]
                if server.protocol == "HTTPS" and https_port is None:
                    https_port = server.port
        view = hosts.gateway_view(selector)
        kinds: dict[int, str] = {}
        ended_ports: set[int] = set()  # of TLS servers whose TLS the gateway ends
        for doc in members:
            for server in doc.item.spec.servers:  # type: ignore[union-attr]
                if server.port in kinds:
                    if kinds[server.port] != server.protocol:
                        doc.error(server.path, f"port {server.port} is already an "
                                               f"{kinds[server.port]} server of the gateway "
                                               f"{view}")
                    elif server.protocol == "HTTPS" and server.port in listeners:
                        _add_certificates(doc, server, listeners, secrets or {})
                    elif server.protocol == "TLS" and (server.terminates or
                                                       server.port in ended_ports):
                        doc.error((*server.path, "tls"),
                                  f"port {server.port} already has a TLS server: several TLS "
                                  "servers on one port where the gateway ends TLS are "
                                  f"{NOT_SUPPORTED}")
                    continue
                kinds[server.port] = server.protocol
                if server.terminates:
                    ended_ports.add(server.port)
                if server.protocol in ("TCP", "TLS"):
                    found = _auto_passthrough(doc, server, registry or {}) \
                        if server.auto_passthrough else \
                        _distinct(doc, l4.get((view, _listener_name(server)), []))
                    if not any(b.weight > 0 for r in found for b in r.backends):
                        routes_kind = "tcp" if server.terminates else server.protocol.lower()
                        doc.warn(server.path, "no ServiceEntry host is within this server's "
                                              "hosts: it is not served" if server.auto_passthrough
                                 else f"no VirtualService has {routes_kind} "
                                      f"routes for this server: it is not served")
                        continue
                    ended = _ended_tls(doc, server, secrets or {})
                    if server.terminates and ended is None and not server.mesh_mutual:
                        continue  # its credential's problem is said
                    listeners[server.port] = GatewayListener(
                        name=_listener_name(server), port=server.port,
                        address=server.bind or "0.0.0.0", protocol="tcp", tcp_routes=found,
                        tls=ended, mesh_tls=server.mesh_mutual,
                        origin=doc.ctx.origin(server.path))
                    continue
                tls = server.tls
                if server.credential is not None:
                    tls = _credential_tls(doc, server.credential, secrets or {})
                    if tls is None:
                        continue
                listeners[server.port] = GatewayListener(
                    name=_listener_name(server), port=server.port,
                    address=server.bind or "0.0.0.0", tls=tls, mesh_tls=server.mesh_mutual,
                    redirect_to_https=(https_port or 443) if server.https_redirect else None,
                    client_ip=client_ip, origin=doc.ctx.origin(server.path))
        # Its Envoys' labels are the selector's: the topology ones say where they run (as a
        # Kubernetes node's say where a gateway pod runs), for localityLbSetting.
        where = Locality.of_labels(selector)
        gateway = Gateway(name=hosts.gateway_view(selector), position=first.ctx.document.position,
                          listeners=tuple(listeners[p] for p in sorted(listeners)),
                          origin=first.ctx.origin(), identity=hosts.GATEWAY_IDENTITY,
                          locality=where if where != Locality() else None)
        built.append((first, gateway))
    return _Gateways(docs, built, {gateway.name: selector for selector, gateway in
                                   zip(sorted(selectors), (g for _, g in built), strict=True)})


# ---- WorkloadEntry -> a workload's own view ----------------------------------------------------


def _scope(workload: Doc, sidecars: list[Doc]) -> tuple[Doc, o.SidecarScope] | None:
    """The Sidecar resource of a workload (Istio's order): its own (selector, its namespace),
    else its namespace's (no selector), else the root namespace's (no selector)."""
    ns = workload.item.namespace
    labels = workload.item.spec.spec.labels  # type: ignore[union-attr]
    for wanted in ("own", "namespace", "mesh"):
        for doc in sidecars:
            scope = doc.item.spec
            assert isinstance(scope, o.SidecarScope)
            if wanted == "own" and doc.item.namespace == ns and scope.selector \
                    and hosts.selects(scope.selector, labels):
                return doc, scope
            if wanted == "namespace" and doc.item.namespace == ns and not scope.selector:
                return doc, scope
            if wanted == "mesh" and doc.item.namespace == hosts.ROOT_NAMESPACE \
                    and not scope.selector:
                return doc, scope
    return None


def _in_scope(found: tuple[Doc, o.SidecarScope] | None, host: _Host, name: str) -> bool:
    """Whether the Sidecar resource's egress listeners without a port take the service."""
    if found is None:
        return True
    return _listed(found[0], found[1].egress_hosts, host, name)


def _port_of(service_name: str) -> int:
    return int(service_name.rsplit(":", 1)[1])  # a ServiceEntry port's Service: HOST:PORT


def _egress_ports_taking(found: tuple[Doc, o.SidecarScope] | None, host: _Host,
                         name: str, service: Service, protocol: str) -> list[int]:
    """The egress listeners with a port (of `protocol`, http or tcp) that take `service` (of
    host `name`): those whose port is the service's and whose hosts list it (Istio's)."""
    if found is None:
        return []
    doc, scope = found
    return [port.number for port in scope.egress_ports
            if port.protocol == protocol and port.number == _port_of(service.name)
            and _listed(doc, port.hosts, host, name)]


def _listed(doc: Doc, patterns: tuple[tuple[str, str], ...], host: _Host, name: str) -> bool:
    for namespace, pattern in patterns:
        if namespace == "~":
            continue
        wanted = doc.item.namespace if namespace == "." else namespace
        if wanted != "*" and wanted != host.doc.item.namespace:
            continue
        if _overlap(pattern, name) == name:  # the host is within the pattern
            return True
    return False


def _workloads(workloads: _Workloads, registry: dict[str, _Host],
               policies: security.Policies, sidecars: list[Doc], variants: Variants,
               unknown_hosts: UnknownHosts) -> None:
    """Each WorkloadEntry's own view; `unknown_hosts`: MeshConfig's outboundTrafficPolicy, for
    a workload whose Sidecar resource (if any) does not say its own."""
    every = [(registry[host], host, service) for host in sorted(registry)
             for service in sorted(registry[host].services.values(), key=lambda s: s.name)
             if service.protocol != "tcp"]
    serving = _serving(workloads, registry)
    jwks_service = _jwks_service(registry)
    # Istio's default, every service: each call said where its ServiceEntry is.
    everything = tuple(Call(service.name, origin=service.origin) for _, _, service in every)
    # TCP services: the outbound port routes HTTP by Host, so each gets a local port of its
    # own, its port number (the application connects to 127.0.0.1:3306 for mysql:3306),
    # MESH_EXTERNAL ones as well (Istio's outbound listener for an external TCP host).
    tcp = [(registry[host], host, service) for host in sorted(registry)
           for service in sorted(registry[host].services.values(), key=lambda s: s.name)
           if service.protocol == "tcp" and _reachable(registry[host], service)]
    # by (Sidecar resource, namespace): shared by the workloads it scopes in a namespace
    scoped: dict[tuple[int, str], tuple[Call, ...]] = {}
    for doc in workloads.docs:
        # Istio's Sidecar resource scopes what the workload receives (default: everything),
        # within what the ServiceEntries export to its namespace.
        scope = _scope(doc, sidecars)
        ns = doc.item.namespace
        key = (0 if scope is None else id(scope[0]), ns)
        calls = scoped.get(key) or scoped.setdefault(key, (*(
            call for call, (host, name, _) in zip(everything, every, strict=True)
            if host.visible_to(ns) and _in_scope(scope, host, name)), *(
            replace(call, egress_port=number)
            for call, (host, name, service) in zip(everything, every, strict=True)
            if host.visible_to(ns)
            for number in _egress_ports_taking(scope, host, name, service, "http"))))
        entry = doc.item.spec
        assert isinstance(entry, o.WorkloadEntry)
        workload = entry.spec
        served = serving.get(id(doc), [])
        port = served[0].port if served else None
        protocol: Protocol = served[0].service.protocol if served else "http"
        outbound = entry.outbound_port or hosts.DEFAULT_OUTBOUND_PORT
        apps = inbound.app_addresses(doc, entry, served)
        app_host, app_port = apps[0] if apps else (entry.app or (DEFAULT_APP_HOST, 8080))
        if outbound in (s.port for s in served):
            doc.error(("metadata",), f"the outbound port {outbound} is the inbound port: set "
                                     "annotation meshpilot.io/outbound-port")
        # The Sidecar resource's HTTP egress ports: listeners of this workload's sidecar.
        http_egress = [p for p in scope[1].egress_ports if p.protocol == "http"] \
            if scope is not None else []
        egress_ports = [p.number for p in http_egress]
        loopback = inbound.loopback_ports(workload.address, served,
                                          apps or [(app_host, app_port)])
        for egress in http_egress:
            if egress.number == outbound or egress.number in loopback:
                what = "outbound" if egress.number == outbound else \
                    "inbound (or application's)"
                assert scope is not None
                scope[0].error(egress.path, f"egress port {egress.number} is the {what} port "
                                            f"of workload {doc.item.namespace}/{doc.item.name}")
        calls = (*calls, *_tcp_calls(doc, tcp, scope, {outbound, *egress_ports, *loopback}))
        if variants:  # sourceLabels: this caller's own Route for some services
            calls = tuple(replace(call, route=route) if (route := variants.get(
                call.service, {}).get(id(doc))) is not None else call for call in calls)
        view = hosts.workload_view(doc.item.name, doc.item.namespace)
        jwt = policies.jwt_for_workload(doc, jwks_service) if port is not None else None
        mtls, authorization, deny = policies.for_workload(doc, port, jwt is not None)
        audit, custom = policies.audit_and_custom(
            doc, jwt is not None, any(s.service.protocol == "tcp" for s in served)) \
            if port is not None else (None, None)
        more_ports, port_modes = inbound.further_ports(doc, served, apps, mtls,
                                                       policies.mtls_of)
        sidecar = Sidecar(port=port, address=workload.address if port is not None else "0.0.0.0",
                          app_host=app_host, app_port=app_port, outbound_port=outbound,
                          more_ports=more_ports, port_modes=port_modes,
                          calls=calls, mtls=mtls, authorization=authorization,
                          origin=doc.ctx.origin(("spec",)),
                          identity=hosts.spiffe_path(doc.item.namespace,
                                                     workload.service_account),
                          deny=deny, jwt=jwt, audit=audit, ext_authz=custom,
                          locality=Locality(_locality(workload, 0) or "",
                                            _locality(workload, 1) or "",
                                            _locality(workload, 2) or ""),
                          labels=workload.labels,
                          unknown_hosts=(scope[1].unknown_hosts if scope is not None else None)
                          or unknown_hosts)
        doc.parts.append(Service(name=view, position=doc.ctx.document.position,
                                 protocol=protocol, sidecar=sidecar, origin=doc.ctx.origin()))


def _reachable(host: _Host, service: Service) -> bool:
    """Whether a tcp Service gets a local port in sidecars. Not when it is resolution NONE
    with neither endpoints nor a workloadSelector: Istio passes such connections to the
    address the application dialled, which needs traffic capture (iptables) that meshpilot's
    sidecars do not have (a warning says so)."""
    entry = host.entry
    if entry.resolution != "NONE" or entry.endpoints or entry.workload_selector is not None \
            or service.tcp_routes:
        return True
    host.doc.warn(("spec", "resolution"),
                  f"{service.name}: resolution NONE without endpoints passes connections to "
                  "the address the application dialled, which needs traffic capture; "
                  "sidecars get no local port for it (write endpoints, or resolution DNS)",
                  once=True)
    return False


def _tcp_calls(doc: Doc, tcp: list[tuple[_Host, str, Service]],
               scope: tuple[Doc, o.SidecarScope] | None, taken: set[int]) -> list[Call]:
    found: list[Call] = []
    used = set(taken)
    for host, name, service in tcp:
        if not host.visible_to(doc.item.namespace) or (
                not _in_scope(scope, host, name)
                and not _egress_ports_taking(scope, host, name, service, "tcp")):
            continue
        number = _port_of(service.name)
        if number in used:
            doc.warn(("spec",), f"TCP service {service.name} gets no local port in this "
                                f"workload's sidecar: 127.0.0.1:{number} is already taken")
            continue
        used.add(number)
        if number < 1024:  # Envoy refuses the listener unless it may bind low ports
            host.doc.warn(("spec", "ports"), f"TCP service {service.name} gets the local port "
                                             f"127.0.0.1:{number} in sidecars: below 1024, "
                                             "their Envoys need CAP_NET_BIND_SERVICE (or root) "
                                             "to bind it", once=True)
        found.append(Call(service.name, local_port=number, origin=service.origin))
    return found


def _serving(workloads: _Workloads, registry: dict[str, _Host]
             ) -> dict[int, list[inbound.Served]]:
    """Per WorkloadEntry (by id): every port of every ServiceEntry selecting it (hosts in
    order, then the entry's ports), as the workload's port for it (the sidecar's inbound port)
    and that port's Service; the first one found for a workload port serves it. Two Services
    of different protocols on one workload port are refused at the later port."""
    found: dict[int, list[inbound.Served]] = {}
    for name in sorted(registry):
        host = registry[name]
        entry = host.entry
        if entry.workload_selector is None:
            continue
        for doc in workloads.selected(host.doc.item.namespace, entry.workload_selector):
            served = found.setdefault(id(doc), [])
            for index, port in enumerate(entry.ports):
                number = endpoint_port(doc.item.spec.spec, port)  # type: ignore[union-attr]
                service = host.services[port.number]
                first = next((s for s in served if s.port == number), None)
                if first is None:
                    served.append(inbound.Served(service, number))
                elif (first.service.protocol == "tcp") != (service.protocol == "tcp"):
                    host.doc.error(("spec", "ports", index), (
                        f"WorkloadEntry {doc.ctx.name}'s port {number} serves "
                        f"{first.service.name} ({first.service.protocol}) already; one port "
                        f"cannot serve {service.name} ({service.protocol}) too"))
    return found
