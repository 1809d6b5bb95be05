"""A BackendTLSPolicy behind a TLS listener that ends TLS (GEP-4274): the TLSRoute's or
TCPRoute's bytes go to the backend in TLS again (SNI, CA, SANs), in a cluster of their own
(`:tls`), while a passthrough listener's route to the same Service port keeps the plain
`:tcp` cluster: what a client encrypted is never wrapped again."""

from __future__ import annotations

from test_gatewayapi import status_of, view
from test_gatewayapi_backend_tls import ca_map, policy
from test_gatewayapi_tls import TLS_GATEWAY, _secret, tls_route
from tls_material import CA

from meshpilot.inputs.loader import load_policy_text

# `exact` (abc.example.com) ends TLS; `tls` (*.example.com) passes it through, same port.
ENDING = TLS_GATEWAY.replace(
    "hostname: abc.example.com,\n     tls: {mode: Passthrough}",
    "hostname: abc.example.com,\n     tls: {certificateRefs: [{name: cert}]}") + _secret()
ROUTES = (tls_route("[abc.example.com]", "[{name: secure, port: 443}]", name="ends",
                    section="exact")
          + tls_route("[foo.example.com]", "[{name: secure, port: 443}]", name="through"))
TARGET = "{group: '', kind: Service, name: secure}"
VALID = "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: abc.internal}"


def _by_sni(model) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    (listener,) = [lst for lst in view(model)["listeners"] if lst["name"] == "infra/edge/443"]
    return {c["filter_chain_match"]["server_names"][0]: c for c in listener["filter_chains"]}


def _cluster(model, name: str) -> dict:  # type: ignore[no-untyped-def]
    (found,) = [c for c in view(model)["clusters"] if c["name"] == name]
    return found  # type: ignore[no-any-return]


def test_a_terminated_sni_sends_tls_again_and_a_passthrough_one_does_not() -> None:
    ca = CA()
    model = load_policy_text(ENDING + ROUTES + ca_map(ca.pem) + policy(VALID, target=TARGET))
    chains = _by_sni(model)
    assert chains["abc.example.com"]["filters"][0]["typed_config"]["cluster"] == \
        "infra/secure:443:tls"
    assert chains["foo.example.com"]["filters"][0]["typed_config"]["cluster"] == \
        "infra/secure:443:tcp"
    context = _cluster(model, "infra/secure:443:tls")["transport_socket"]["typed_config"]
    assert context["sni"] == "abc.internal"
    combined = context["common_tls_context"]["combined_validation_context"]
    assert combined["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "abc.internal"}}]
    secret_name = combined["validation_context_sds_secret_config"]["name"]
    (secret,) = [s for s in view(model)["secrets"] if s["name"] == secret_name]
    assert secret["validation_context"]["trusted_ca"]["inline_string"] == ca.pem.decode()
    assert "transport_socket" not in _cluster(model, "infra/secure:443:tcp")
    # The Gateway that applies it is the policy's ancestor.
    assert status_of(model, "BackendTLSPolicy", "infra/p", parent="infra/edge") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}


def test_a_tcproute_behind_a_terminating_listener_sends_tls_again_by_port_name() -> None:
    tcp_route = """apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: raw, namespace: infra}
spec:
  parentRefs: [{name: edge, sectionName: exact}]
  rules: [{backendRefs: [{name: secure, port: 443}]}]
---
"""
    gateway = ENDING.replace("spec: {ports: [{port: 443, targetPort: 8443}]}",
                             "spec: {ports: [{name: btls, port: 443, targetPort: 8443}]}", 1)
    model = load_policy_text(gateway + tcp_route + ca_map(CA().pem) + policy(
        VALID, target="{group: '', kind: Service, name: secure, sectionName: btls}"))
    assert _by_sni(model)["abc.example.com"]["filters"][0]["typed_config"]["cluster"] == \
        "infra/secure:443:tls"
    assert _cluster(model, "infra/secure:443:tls")["transport_socket"]["typed_config"][
        "sni"] == "abc.internal"


def test_without_a_policy_the_terminated_bytes_go_plain() -> None:
    model = load_policy_text(ENDING + ROUTES)
    chains = _by_sni(model)
    assert {c["filters"][0]["typed_config"]["cluster"] for c in chains.values()} == \
        {"infra/secure:443:tcp"}
    assert "infra/secure:443:tls" not in {c["name"] for c in view(model)["clusters"]}


def test_a_policy_without_a_valid_ca_closes_terminated_connections_never_plaintext() -> None:
    model = load_policy_text(ENDING + ROUTES + policy(VALID, target=TARGET))
    assert status_of(model, "BackendTLSPolicy", "infra/p", parent="infra/edge")["Accepted"] \
        == ("False", "NoValidCACertificate")
    chains = _by_sni(model)
    assert chains["abc.example.com"]["filters"][0]["typed_config"]["cluster"].startswith(
        "unresolved|")
    # The passthrough route to the same port is not the policy's business.
    assert chains["foo.example.com"]["filters"][0]["typed_config"]["cluster"] == \
        "infra/secure:443:tcp"
