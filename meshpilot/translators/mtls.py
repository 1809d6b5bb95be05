"""Mesh security: mTLS between sidecars with the built-in CA's certificates, and authorization
of callers by SPIFFE identity (docs/security.md).

This module owns:

- the two Secrets of a view's identity, fetched over SDS (ADS):
      spiffe/identity       the view's own workload certificate and key (a sidecar's Service, or
                            a Gateway calling mesh services): never another view's
      spiffe/trust-bundle   the CA root, to verify peers
  The names do not depend on the view, so a callee's cluster is the same bytes for every caller
  and every gateway (built once, shared), and a rotation changes one Secret per view only.
- the inbound side of a Service with `sidecar.mtls` (per inbound port: `Sidecar.mode_of`):
  strict, a DownstreamTlsContext requiring a client certificate signed by the trust bundle
  (plaintext is refused); permissive, a TLS
  inspector and two filter chains (`tls`: mTLS; `raw_buffer`: plaintext). The HTTP connection
  manager sets `x-forwarded-client-cert` (the caller's URI) for the application
  (`forward_client_identity`), and the sidecar's `authorization` names callers by SPIFFE ID
  (`authorization`), checked by an RBAC filter (httpfilters/mesh_authorization.py).
- the outbound side: a cluster of a Service whose sidecar has mtls (strict or permissive, as
  Istio's auto mTLS does) originates mTLS with the caller's identity and accepts only the
  callee's SPIFFE ID (`match_typed_subject_alt_names`, URI, exact).

Pure: the certificates come from an `IdentitySource` (meshpilot.ca.WorkloadIdentities, which
holds the clock); without one (`meshpilot render`, golden files) no identity Secrets are made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Protocol

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import DataSource, TransportSocket
from envoy.config.listener.v3.listener_components_pb2 import FilterChain, ListenerFilter
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2 import TlsInspector
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3.string_pb2 import StringMatcher

from meshpilot.base import types
from meshpilot.ca.authority import DEFAULT_NAMESPACE, DEFAULT_TRUST_DOMAIN, WorkloadCertificate
from meshpilot.ca.authority import spiffe_id as make_spiffe_id
from meshpilot.ir.model import Authorization, AuthzRule, Model, Service
from meshpilot.translators import names
from meshpilot.translators.endpoints import MESH_WORKLOAD
from meshpilot.translators.httpfilters.mesh_authorization import RBAC_FILTER
from meshpilot.translators.protos import ads_config_source, pack
from meshpilot.xds.resources import Resource

IDENTITY_SECRET = "spiffe/identity"
TRUST_BUNDLE_SECRET = "spiffe/trust-bundle"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
INBOUND_ALPN = ("h2", "http/1.1")


class IdentitySource(Protocol):
    """Where a view's certificate comes from (meshpilot.ca.WorkloadIdentities)."""

    @property
    def trust_domain(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def trust_bundle(self) -> bytes: ...
    def certificate(self, name: str) -> WorkloadCertificate: ...


class TrustDomain:
    """SPIFFE IDs of mesh names: `spiffe://<trust domain>/ns/<namespace>/sa/<name>`."""

    def __init__(self, trust_domain: str = DEFAULT_TRUST_DOMAIN,
                 namespace: str = DEFAULT_NAMESPACE):
        self.trust_domain, self.namespace = trust_domain, namespace

    @classmethod
    def of(cls, source: IdentitySource | None) -> TrustDomain:
        return cls() if source is None else cls(source.trust_domain, source.namespace)

    def same_as(self, other: TrustDomain) -> bool:
        return (self.trust_domain, self.namespace) == (other.trust_domain, other.namespace)

    def of_path(self, path: str) -> str:
        """`spiffe://<trust domain>/<path>` for a SPIFFE path (`ns/default/sa/reviews`)."""
        return f"spiffe://{self.trust_domain}/{path}"

    def spiffe_id(self, name: str) -> str:
        # Istio's wildcards (`*`, `*/ns/foo/sa/bar`) are taken as written (httpfilters/rbac.py)
        return name if name.startswith(("spiffe://", "*")) else make_spiffe_id(
            self.trust_domain, name, self.namespace)


def has_mtls(service: Service | None) -> bool:
    """Whether callers of `service` speak mTLS to it (its sidecar has an inbound port and mtls
    strict or permissive)."""
    return (service is not None and service.sidecar is not None
            and service.sidecar.port is not None
            and service.sidecar.mode_of(service.sidecar.port) != "off")


def inbound_mtls(service: Service | None) -> bool:
    """Whether any inbound port of `service`'s sidecar speaks mTLS (it then needs its
    certificate)."""
    sidecar = None if service is None else service.sidecar
    return sidecar is not None and any(sidecar.mode_of(p.port) != "off"
                                       for p in sidecar.inbound_ports())


def workload_identities(service: Service | None, subset: str | None = None
                        ) -> tuple[str, ...] | None:
    """The SPIFFE paths of the mesh workloads behind (a subset of) `service` (Istio's auto
    mTLS: callers speak mTLS to those endpoints), if it has any; else None."""
    if service is None:
        return None
    found = {e.mtls_identity for e in service.endpoints_of(subset) if e.mtls_identity}
    return tuple(sorted(found)) if found else None


def view_identity(model: Model, view: str, trust: TrustDomain) -> str | None:
    """The SPIFFE ID the policy gives the view's certificate (None: from its name)."""
    service = model.service(view)
    path = service.sidecar.identity if service is not None and service.sidecar else None
    gateway = model.gateway(view) if path is None else None
    path = path or (gateway.identity if gateway is not None else None)
    return None if path is None else trust.of_path(path)


# ---- secrets ------------------------------------------------------------------------------------


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=ads_config_source())


def identity_secrets(source: IdentitySource, view: str,
                     spiffe_id: str | None = None) -> list[Resource]:
    """The view's own certificate and key (of `spiffe_id`, when the policy says it), and the
    trust bundle. Dumps redact the key."""
    current = source.certificate(view) if spiffe_id is None else \
        source.certificate(view, spiffe_id)  # type: ignore[call-arg]
    identity = secret_pb2.Secret(name=IDENTITY_SECRET, tls_certificate=common_pb2.TlsCertificate(
        certificate_chain=DataSource(inline_string=current.certificate_chain.decode()),
        private_key=DataSource(inline_string=current.private_key.decode())))
    bundle = secret_pb2.Secret(name=TRUST_BUNDLE_SECRET,
                               validation_context=common_pb2.CertificateValidationContext(
                                   trusted_ca=DataSource(
                                       inline_string=source.trust_bundle.decode())))
    return [Resource.from_message(types.SECRET, s.name, s) for s in (identity, bundle)]


def needs_identity(model: Model, view: str, resources: Iterable[Resource]) -> bool:
    """A sidecar with mtls on its inbound, a gateway with a mesh mTLS listener, or any view
    holding a cluster that originates mTLS (a caller's sidecar, a gateway)."""
    service = model.service(view)
    if inbound_mtls(service):
        return True
    gateway = model.gateway(view) if service is None else None
    if gateway is not None and any(spec.mesh_tls for spec in gateway.listeners):
        return True  # a gateway listener ending mesh mTLS (Istio's ISTIO_MUTUAL) shows it
    for resource in resources:
        if resource.type_url != types.CLUSTER:
            continue
        name = names.service_of_cluster(resource.name, lambda n: model.service(n) is not None)
        callee = model.service(name)
        subset = resource.name[len(name) + 1:] \
            if resource.name.startswith(name + names.SEPARATOR) else None
        if has_mtls(callee) or workload_identities(callee, subset) is not None:
            return True
    return False


# ---- outbound: a caller's cluster to a mesh service --------------------------------------------


def upstream_transport_socket(callee: str, trust: TrustDomain,
                              identities: Iterable[str] = ()) -> TransportSocket:
    """mTLS with the caller's identity, accepting the callee's SPIFFE ID (of its name), or any
    of `identities` (SPIFFE IDs) when given."""
    context = tls_pb2.UpstreamTlsContext()
    common = context.common_tls_context
    common.tls_certificate_sds_secret_configs.append(_sds(IDENTITY_SECRET))
    combined = common.combined_validation_context
    accepted = list(identities) or [trust.spiffe_id(callee)]
    combined.default_validation_context.match_typed_subject_alt_names.extend(
        common_pb2.SubjectAltNameMatcher(san_type=common_pb2.SubjectAltNameMatcher.URI,
                                         matcher=StringMatcher(exact=identity))
        for identity in accepted)
    combined.validation_context_sds_secret_config.CopyFrom(_sds(TRUST_BUNDLE_SECRET))
    return TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(context))


def secure_cluster(cluster: Cluster, service: Service, trust: TrustDomain,
                   subset: str | None = None) -> Cluster:
    """The cluster of (a subset of) `service`, originating mTLS if its sidecar wants it, or if
    every endpoint of it is a mesh workload (`workload_identities`); the endpoint's
    certificate must name one of `mesh_peer_ids`, else its own identity."""
    # The SPIFFE IDs the policy says the endpoints show (Istio's ISTIO_MUTUAL
    # subjectAltNames) replace those of their workloads.
    said = list(service.mesh_peer_ids)
    if has_mtls(service):
        assert service.sidecar is not None
        own = service.sidecar.identity  # the callee's certificate names it, when written
        cluster.transport_socket.CopyFrom(upstream_transport_socket(
            service.name, trust, said or ([trust.of_path(own)] if own is not None else [])))
        return cluster
    workloads = workload_identities(service, subset)
    if workloads is None or service.tls is not None:
        return cluster
    socket = upstream_transport_socket(service.name, trust,
                                       said or [trust.of_path(path) for path in workloads])
    if all(e.mtls_identity for e in service.endpoints_of(subset)):
        cluster.transport_socket.CopyFrom(socket)
    else:  # per endpoint, as Istio: mTLS to the mesh workloads, plaintext to the others
        match = cluster.transport_socket_matches.add(name="tlsMode-istio",
                                                     transport_socket=socket)
        match.match.update(MESH_WORKLOAD)
    return cluster


# ---- inbound ----------------------------------------------------------------------------------


def downstream_transport_socket() -> TransportSocket:
    context = tls_pb2.DownstreamTlsContext()
    context.require_client_certificate.value = True
    common = context.common_tls_context
    common.tls_certificate_sds_secret_configs.append(_sds(IDENTITY_SECRET))
    common.validation_context_sds_secret_config.CopyFrom(_sds(TRUST_BUNDLE_SECRET))
    common.alpn_protocols.extend(INBOUND_ALPN)
    return TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(context))


def authorization(policy: Authorization, trust: TrustDomain,
                  identities: Mapping[str, str] | None = None) -> Authorization:
    """The policy with every caller written as a name turned into its SPIFFE ID (the path
    `identities` gives the name, else the name in the CA's namespace), and every namespace
    into the prefix of its identities (`spiffe://<td>/ns/<namespace>/sa/*`)."""
    paths = identities or {}

    def spiffe(name: str) -> str:
        path = paths.get(name)
        return trust.of_path(path) if path is not None else trust.spiffe_id(name)

    def ids(rule: AuthzRule) -> AuthzRule:
        exclude = None if rule.exclude is None else ids(rule.exclude)  # `not: {from: ...}`
        principals = (*(spiffe(p) for p in rule.principals),
                      *(trust.of_path(f"ns/{n}/sa/*") for n in rule.namespaces))
        return replace(rule, principals=principals, namespaces=(), exclude=exclude)

    return replace(policy, rules=tuple(ids(rule) for rule in policy.rules))


def identity_paths(model: Model) -> dict[str, str]:
    """The SPIFFE path the policy gives each Service's sidecar and Gateway that has one, by
    name: what a caller named in `from` presents."""
    found = {s.name: s.sidecar.identity for s in model.services
             if s.sidecar is not None and s.sidecar.identity is not None}
    found.update((g.name, g.identity) for g in model.gateways if g.identity is not None)
    return found


def forward_client_identity(manager: hcm.HttpConnectionManager) -> None:
    """The application learns who called: `x-forwarded-client-cert` with the caller's URI
    (whatever a caller wrote there is replaced)."""
    manager.forward_client_cert_details = hcm.HttpConnectionManager.SANITIZE_SET
    manager.set_current_client_cert_details.uri = True


def secure_inbound(listener: Listener, service: Service, port: int | None = None) -> Listener:
    """The inbound listener of `service` (on its first port, or `port`) with that port's mTLS
    mode applied to its filter chain (the chain's HTTP side, identity headers and
    authorization, is built by `sidecar.py`)."""
    sidecar = service.sidecar
    assert sidecar is not None
    mode = sidecar.mode_of(sidecar.port if port is None else port)
    if mode == "off":
        return listener
    chain = listener.filter_chains[0]
    if mode == "strict":
        chain.transport_socket.CopyFrom(downstream_transport_socket())
        return listener
    # permissive: mTLS when the caller speaks TLS, plaintext otherwise (migration)
    plaintext = FilterChain()
    plaintext.CopyFrom(chain)
    plaintext.name = "plaintext"
    plaintext.filter_chain_match.transport_protocol = "raw_buffer"
    chain.name = "mtls"
    chain.filter_chain_match.transport_protocol = "tls"
    chain.transport_socket.CopyFrom(downstream_transport_socket())
    listener.filter_chains.append(plaintext)
    listener.listener_filters.append(ListenerFilter(name=TLS_INSPECTOR,
                                                    typed_config=pack(TlsInspector())))
    return listener


# RBAC_FILTER: the callers' authorization filter's name (httpfilters/mesh_authorization.py),
# kept here for code that reads a sidecar's inbound chain.
__all__ = ["IDENTITY_SECRET", "RBAC_FILTER", "TRUST_BUNDLE_SECRET", "IdentitySource",
           "TrustDomain", "authorization", "forward_client_identity", "has_mtls",
           "identity_secrets", "inbound_mtls", "needs_identity", "secure_cluster", "secure_inbound",
           "view_identity", "workload_identities"]
