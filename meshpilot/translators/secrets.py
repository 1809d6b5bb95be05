"""Secrets: TLS material as SDS `Secret`s, and the transport sockets that name them.

This module owns TLS on both sides of an Envoy: the DownstreamTlsContext of a `protocol: https`
gateway listener, the UpstreamTlsContext of a Service with `tls`, and the Secrets they reference.
Certificates, keys and CAs are never inlined in a Listener or Cluster: each context names its
Secrets, fetched over ADS (`sds_config: {ads: {}}`), so replacing a certificate file changes one
Secret only; Envoy swaps it in place, without draining the listener or its connections.

Names are stable and readable, made from the policy's names and never from the file's content
(the version, a hash of the bytes, changes with the content instead):

    certificate 0 of listener `https` of gateway `edge`     edge/https/tls[0]
    the CA its clients' certificates must chain to       edge/https/client-ca
    trusted CA of Service `api`                           api/ca
    the certificate Envoy presents to `api`'s endpoints   api/client-cert
    (a subset with TLS settings of its own: `api/v2/ca`, `api/v2/client-cert`)

Several certificates on one listener go into one DownstreamTlsContext (one filter chain): Envoy
(1.22 and later) selects the certificate whose SAN (or CN) matches the client's SNI, wildcards
included, and falls back to the first when none matches or the client sends no SNI. That needs
no TLS inspector and no filter chain per certificate, and the listener does not depend on what
the certificates say: a renewed certificate with another SAN is still a Secret-only change.
"""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import DataSource, TransportSocket
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3.string_pb2 import StringMatcher

from meshpilot.base import types
from meshpilot.ir.model import (
    GatewayListener,
    ListenerTls,
    Model,
    Service,
    TlsCertificate,
    UpstreamTls,
)
from meshpilot.translators import names
from meshpilot.translators.protos import ads_config_source, pack
from meshpilot.xds.resources import Resource

TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
HTTPS_PORT = 443

_VERSIONS = {"1.2": common_pb2.TlsParameters.TLSv1_2, "1.3": common_pb2.TlsParameters.TLSv1_3}

Secret = secret_pb2.Secret


# ---- names ----------------------------------------------------------------------------------


def listener_certificate(gateway: str, listener: str, index: int) -> str:
    return f"{names.listener(gateway, listener)}{names.SEPARATOR}tls[{index}]"


def service_ca(service: str) -> str:
    return f"{service}{names.SEPARATOR}ca"


def service_client_certificate(service: str) -> str:
    return f"{service}{names.SEPARATOR}client-cert"


def listener_client_ca(gateway: str, listener: str) -> str:
    return f"{names.listener(gateway, listener)}{names.SEPARATOR}client-ca"


# ---- secrets --------------------------------------------------------------------------------


def certificate_secret(name: str, certificate: TlsCertificate) -> Secret:
    """A certificate chain and its key. Dumps redact `private_key` (xds/render.py)."""
    return Secret(name=name, tls_certificate=common_pb2.TlsCertificate(
        certificate_chain=DataSource(inline_string=certificate.certificate_chain.decode()),
        private_key=DataSource(inline_string=certificate.private_key.decode())))


def ca_secret(name: str, ca: bytes) -> Secret:
    """Trusted CA certificates (not secret, but delivered the same way, so they rotate alike)."""
    return Secret(name=name, validation_context=common_pb2.CertificateValidationContext(
        trusted_ca=DataSource(inline_string=ca.decode())))


def listener_secrets(gateway: str, spec: GatewayListener) -> list[Secret]:
    if spec.tls is None:
        return []
    found = [certificate_secret(listener_certificate(gateway, spec.name, index), certificate)
             for index, certificate in enumerate(spec.tls.certificates)]
    if spec.tls.client_ca is not None:
        found.append(ca_secret(listener_client_ca(gateway, spec.name), spec.tls.client_ca))
    return found


def service_secrets(service: Service) -> list[Secret]:
    """The CA Secrets of a service's upstream TLS: its own, and those of subsets with TLS
    settings of their own (named after the subset's cluster)."""
    found = _upstream_secrets(service.name, service.tls)
    for subset, own in service.subset_services:
        if own.tls != service.tls:
            found.extend(_upstream_secrets(names.cluster(service.name, subset), own.tls))
    return found


def _upstream_secrets(owner: str, settings: UpstreamTls | None) -> list[Secret]:
    found = []
    if settings is not None and settings.ca is not None:
        found.append(ca_secret(service_ca(owner), settings.ca))
    if settings is not None and settings.client_certificate is not None:
        found.append(certificate_secret(service_client_certificate(owner),
                                        settings.client_certificate))
    return found


# ---- transport sockets ----------------------------------------------------------------------


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=ads_config_source())


def downstream_context(gateway: str, spec: GatewayListener,
                       certificates: tuple[TlsCertificate, ...] | None = None,
                       ) -> tls_pb2.DownstreamTlsContext:
    """The listener's TLS; `certificates`: a filter chain of its that shows only these of the
    listener's certificates (a TLS host's, a terminated SNI's), the listener's Secrets by their
    index there."""
    settings: ListenerTls | None = spec.tls
    assert settings is not None
    indexes = range(len(settings.certificates)) if certificates is None else \
        [settings.certificates.index(c) for c in certificates]
    common = tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[
            _sds(listener_certificate(gateway, spec.name, index)) for index in indexes],
        alpn_protocols=list(settings.alpn))
    if settings.min_version is not None:
        common.tls_params.tls_minimum_protocol_version = _VERSIONS[settings.min_version]
    context = tls_pb2.DownstreamTlsContext(common_tls_context=common)
    if settings.client_ca is not None and settings.client_optional:
        # Asked for, checked against the CA, but neither its absence nor a failed check ends
        # the handshake.
        combined = context.common_tls_context.combined_validation_context
        combined.default_validation_context.trust_chain_verification = \
            common_pb2.CertificateValidationContext.ACCEPT_UNTRUSTED
        combined.validation_context_sds_secret_config.CopyFrom(
            _sds(listener_client_ca(gateway, spec.name)))
    elif settings.client_ca is not None:  # mutual TLS: a client certificate the CA signed
        # (OPTIONAL_MUTUAL: still asked for and checked when sent, but a client may go without)
        context.require_client_certificate.value = not settings.client_may_omit
        ca = _sds(listener_client_ca(gateway, spec.name))
        if settings.client_subject_alt_names:  # and that carries one of these names
            combined = context.common_tls_context.combined_validation_context
            combined.default_validation_context.match_typed_subject_alt_names.extend(
                _san_matchers(settings.client_subject_alt_names))
            combined.validation_context_sds_secret_config.CopyFrom(ca)
        else:
            context.common_tls_context.validation_context_sds_secret_config.CopyFrom(ca)
    return context


def _san_matchers(sans: tuple[tuple[str, str], ...]) -> list[common_pb2.SubjectAltNameMatcher]:
    return [common_pb2.SubjectAltNameMatcher(
        san_type=common_pb2.SubjectAltNameMatcher.DNS if kind == "dns"
        else common_pb2.SubjectAltNameMatcher.URI,
        matcher=StringMatcher(exact=value)) for kind, value in sans]


def downstream_transport_socket(gateway: str, spec: GatewayListener,
                                certificates: tuple[TlsCertificate, ...] | None = None,
                                ) -> TransportSocket:
    return TransportSocket(name=TLS_TRANSPORT_SOCKET,
                           typed_config=pack(downstream_context(gateway, spec, certificates)))


def upstream_context(service: Service, owner: str | None = None
                     ) -> tls_pb2.UpstreamTlsContext:
    """SNI, and when verifying: the CA from SDS (the Secret of `owner`, by default the
    service) plus the SAN to expect (the SNI, or the names `subject_alt_names` lists, any one
    of them)."""
    settings = service.tls
    assert settings is not None
    context = tls_pb2.UpstreamTlsContext(sni=settings.sni or "")
    if settings.verify and settings.ca is not None:
        combined = context.common_tls_context.combined_validation_context
        sans = settings.subject_alt_names or ((("dns", settings.sni),) if settings.sni else ())
        if sans:
            combined.default_validation_context.match_typed_subject_alt_names.extend(
                _san_matchers(sans))
        else:
            combined.default_validation_context.SetInParent()
        combined.validation_context_sds_secret_config.CopyFrom(
            _sds(service_ca(owner or service.name)))
    if settings.client_certificate is not None:  # mutual TLS: our certificate to the endpoint
        context.common_tls_context.tls_certificate_sds_secret_configs.append(
            _sds(service_client_certificate(owner or service.name)))
    return context


def upstream_transport_socket(service: Service, owner: str | None = None) -> TransportSocket:
    return TransportSocket(name=TLS_TRANSPORT_SOCKET,
                           typed_config=pack(upstream_context(service, owner)))


# ---- redirecting plain http to https --------------------------------------------------------


def https_redirect(name: str, port: int) -> route_pb2.RouteConfiguration:
    """Every request answered with a 301 to the same host and path over https on `port`
    (inline in the listener: a redirecting listener serves no Routes)."""
    redirect = route_components_pb2.RedirectAction(
        https_redirect=True, response_code=route_components_pb2.RedirectAction.MOVED_PERMANENTLY)
    if port != HTTPS_PORT:
        redirect.port_redirect = port
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=[
        route_components_pb2.VirtualHost(name="redirect_to_https", domains=["*"], routes=[
            route_components_pb2.Route(name="redirect_to_https",
                                       match=route_components_pb2.RouteMatch(prefix="/"),
                                       redirect=redirect)])])


# ---- what a view receives -------------------------------------------------------------------


def listener_resources(gateway: str, spec: GatewayListener) -> list[Resource]:
    return [Resource.from_message(types.SECRET, secret.name, secret)
            for secret in listener_secrets(gateway, spec)]


def cluster_secret_resources(resources: list[Resource], model: Model,
                             built: dict[str, tuple[Resource, ...]]) -> list[Resource]:
    """The CA Secret of every Service with upstream TLS that one of `resources`' clusters
    belongs to (whatever kind of view assembled them), each once; `built` caches them per
    service across the views of one translation."""
    wanted: dict[str, None] = {}
    for resource in resources:
        if resource.type_url == types.CLUSTER:
            wanted[names.service_of_cluster(
                resource.name, lambda n: model.service(n) is not None)] = None
    found: list[Resource] = []
    for service_name in wanted:
        secrets = built.get(service_name)
        if secrets is None:
            service = model.service(service_name)
            secrets = built[service_name] = () if service is None else tuple(
                Resource.from_message(types.SECRET, secret.name, secret)
                for secret in service_secrets(service))
        found.extend(secrets)
    return found
