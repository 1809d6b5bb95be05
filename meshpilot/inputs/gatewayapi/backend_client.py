"""A Gateway's spec.tls.backend.clientCertificateRef (GEP-3155): the certificate its Envoys
present to backends they open TLS to (those a BackendTLSPolicy targets).

Services are shared by every Gateway that routes to them, and the certificate is one
Gateway's, so a Gateway with one sends to its own copy of each TLS Service, named
`SERVICE:client:GATEWAY` (its cluster and SDS secret apart): HTTP and gRPC backends and
mirrors, and TLS sent again behind a terminating TLS listener. Other Gateways, and backends
not in TLS, keep the shared Service."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from meshpilot.inputs.gatewayapi.kinds import KubeObject
from meshpilot.inputs.gatewayapi.secrets import tls_secret
from meshpilot.ir.model import Backend, Rule, Service, TlsCertificate

# (ok, reason, message) of the Gateway's ResolvedRefs condition.
Resolved = tuple[bool, str, str]
Permitted = Callable[[str, str, str, str, str, str], bool]


def client_certificate(gateway: KubeObject, secrets: Mapping[str, KubeObject],
                       permitted: Permitted) -> tuple[TlsCertificate | None, Resolved] | None:
    """The certificate a Gateway's tls.backend names and its ResolvedRefs; None when it names
    none. A Secret of another namespace needs a ReferenceGrant there (RefNotPermitted); a
    reference to anything but a core Secret, a missing Secret or one holding no certificate
    and matching key is InvalidClientCertificateRef."""
    spec: dict[str, Any] = gateway.body.get("spec") or {}
    ref = ((spec.get("tls") or {}).get("backend") or {}).get("clientCertificateRef")
    if ref is None:
        return None
    namespace = ref.get("namespace") or gateway.namespace
    key = f"{namespace}/{ref['name']}"
    group, kind = ref.get("group") or "", ref.get("kind", "Secret")
    if group != "" or kind != "Secret":
        return None, (False, "InvalidClientCertificateRef",
                      f"clientCertificateRef {group or 'core'}/{kind} {key} is not a Secret")
    if not permitted("Gateway", gateway.namespace, "", "Secret", namespace, ref["name"]):
        return None, (False, "RefNotPermitted", f"no ReferenceGrant in {namespace} lets "
                                                f"Gateways of {gateway.namespace} use Secret {key}")
    secret = secrets.get(key)
    if secret is None:
        return None, (False, "InvalidClientCertificateRef", f"no Secret {key}")
    certificate, problem = tls_secret(secret)
    if certificate is None:
        return None, (False, "InvalidClientCertificateRef", f"Secret {key}: {problem}")
    return certificate, (True, "ResolvedRefs", "")


def copy_name(service: str, gateway: str) -> str:
    return f"{service}:client:{gateway}"


def _copied(name: str, gateway: str, certificate: TlsCertificate,
            services: dict[str, Service]) -> str:
    """The Gateway's copy of Service `name` if it is sent in TLS (made on first use), else
    `name` (plaintext, bytes passed through, or a native Service with its own TLS)."""
    service = services.get(name)
    if service is None or service.tls is None:
        return name
    made = copy_name(name, gateway)
    if made not in services:
        services[made] = replace(service, name=made, tls=replace(
            service.tls, client_certificate=certificate))
    return made


def with_client_backends(backends: tuple[Backend, ...], gateway: str,
                         certificate: TlsCertificate, services: dict[str, Service],
                         ) -> tuple[Backend, ...]:
    """The backends, each one sent in TLS sent to the Gateway's copy of its Service (which
    presents `certificate`), the copies added to `services`."""
    return tuple(replace(b, service=_copied(b.service, gateway, certificate, services))
                 if b.resolved else b for b in backends)


def with_client_certificate(rule: Rule, gateway: str, certificate: TlsCertificate,
                            services: dict[str, Service]) -> Rule:
    """The rule with its backends and mirrors as `with_client_backends` makes them."""
    backends = with_client_backends(rule.backends, gateway, certificate, services)
    mirrors = tuple(replace(m, service=_copied(m.service, gateway, certificate, services))
                    if m.service else m for m in rule.mirrors)
    if backends == rule.backends and mirrors == rule.mirrors:
        return rule
    return replace(rule, backends=backends, mirrors=mirrors)
