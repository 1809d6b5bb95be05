"""Gateway spec.tls.frontend as an input: the CA certificates (ConfigMap ca.crt) a client's
certificate must chain to on the Gateway's TLS-ending ports, `default` or a port's `perPort`
entry, mode AllowValidOnly (required) or AllowInsecureFallback (asked for, not required)."""

from __future__ import annotations

import base64

from test_gatewayapi import GATEWAY, route, status_of, view
from test_gatewayapi_backend_tls import ca_map
from tls_material import CA

from meshpilot.inputs.loader import load_policy_text

LISTENERS = (
    "  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}\n"
    "  - {name: other, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}")


def _gateway(frontend: str) -> str:
    pair = CA().issue("example.com")
    return GATEWAY.replace(
        "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}",
        LISTENERS).replace("  gatewayClassName: mp\n",
                           f"  gatewayClassName: mp\n  tls:\n    frontend: {frontend}\n") + f"""\
apiVersion: v1
kind: Secret
metadata: {{name: cert, namespace: infra}}
type: kubernetes.io/tls
data:
  tls.crt: {base64.b64encode(pair.cert_pem).decode()}
  tls.key: {base64.b64encode(pair.key_pem).decode()}
---
""" + route("  rules: [{backendRefs: [{name: web, port: 8080}]}]\n---\n")


def _context(model, port: int) -> dict:  # type: ignore[no-untyped-def]
    (listener,) = [lst for lst in view(model)["listeners"] if lst["name"] == f"infra/edge/{port}"]
    return listener["filter_chains"][0]["transport_socket"]["typed_config"]  # type: ignore


FRONTEND = ("{default: {validation: {caCertificateRefs: [{group: '', kind: ConfigMap, name: a}]}},"
            " perPort: [{port: 8443, tls: {validation: {mode: AllowInsecureFallback,"
            " caCertificateRefs: [{group: '', kind: ConfigMap, name: b}]}}}]}")


def test_default_requires_a_client_certificate_and_per_port_overrides_it() -> None:
    ca_a, ca_b = CA("a"), CA("b")
    model = load_policy_text(_gateway(FRONTEND) + ca_map(ca_a.pem, "a") + ca_map(ca_b.pem, "b"))
    strict, fallback = _context(model, 443), _context(model, 8443)
    assert strict["require_client_certificate"] is True
    assert strict["common_tls_context"]["validation_context_sds_secret_config"]["name"] == \
        "infra/edge/443/client-ca"
    assert "require_client_certificate" not in fallback
    combined = fallback["common_tls_context"]["combined_validation_context"]
    assert combined["default_validation_context"]["trust_chain_verification"] == \
        "ACCEPT_UNTRUSTED"
    secrets = {s["name"]: s for s in view(model)["secrets"]}
    assert secrets["infra/edge/443/client-ca"]["validation_context"]["trusted_ca"][
        "inline_string"] == ca_a.pem.decode()
    assert secrets[combined["validation_context_sds_secret_config"]["name"]][
        "validation_context"]["trusted_ca"]["inline_string"] == ca_b.pem.decode()


def test_a_missing_ca_configmap_leaves_its_listener_unprogrammed() -> None:
    model = load_policy_text(_gateway(FRONTEND) + ca_map(CA().pem, "a"))
    assert status_of(model, "Listener", "infra/edge/other")["ResolvedRefs"] == \
        ("False", "InvalidCACertificateRef")
    assert status_of(model, "Listener", "infra/edge/https")["ResolvedRefs"] == \
        ("True", "ResolvedRefs")
    assert [lst.port for lst in model.gateway("infra/edge").listeners] == [443]  # type: ignore


def test_a_ca_ref_that_is_not_a_configmap_is_invalid_kind() -> None:
    model = load_policy_text(_gateway(
        "{default: {validation: {caCertificateRefs: [{group: '', kind: Secret, name: a}]}}}"))
    assert status_of(model, "Listener", "infra/edge/https")["ResolvedRefs"] == \
        ("False", "InvalidCACertificateKind")


def test_no_frontend_asks_no_client_certificate() -> None:
    model = load_policy_text(_gateway("{}"))
    assert "require_client_certificate" not in _context(model, 443)


def test_an_insecure_fallback_port_sets_the_gateways_warning_condition() -> None:
    """The spec's InsecureFrontendValidationMode: True (ConfigurationChanged) while a port
    lets clients in without a valid certificate; absent when every port requires one."""
    ca_a, ca_b = CA("a"), CA("b")
    maps = ca_map(ca_a.pem, "a") + ca_map(ca_b.pem, "b")
    fallback = load_policy_text(_gateway(FRONTEND) + maps)
    assert status_of(fallback, "Gateway", "infra/edge")["InsecureFrontendValidationMode"] == \
        ("True", "ConfigurationChanged")
    strict = load_policy_text(_gateway(FRONTEND.replace("mode: AllowInsecureFallback,", "")) + maps)
    assert "InsecureFrontendValidationMode" not in status_of(strict, "Gateway", "infra/edge")
