"""TLSRoute as an input: TLS listeners in mode Passthrough pick a route by the ClientHello's
SNI (hostnames intersected with the listener's) and proxy the encrypted connection to its
backends. Traffic through a real Envoy: the conformance test's TLSRoute cases
(`tests/e2e/test_gatewayapi_conformance.py`)."""

from __future__ import annotations

import base64

import pytest
from test_gatewayapi import CLASS, status_of, view
from tls_material import CA

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text

TLS_GATEWAY = CLASS + """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: mp
  listeners:
  - {name: tls, port: 443, protocol: TLS, hostname: "*.example.com", tls: {mode: Passthrough}}
  - {name: exact, port: 443, protocol: TLS, hostname: abc.example.com,
     tls: {mode: Passthrough}}
  - {name: other, port: 8443, protocol: TLS, tls: {mode: Passthrough}}
---
apiVersion: v1
kind: Service
metadata: {name: secure, namespace: infra}
spec: {ports: [{port: 443, targetPort: 8443}]}
---
apiVersion: v1
kind: Service
metadata: {name: secure-2, namespace: infra}
spec: {ports: [{port: 443, targetPort: 8443}]}
---
"""


def tls_route(hostnames: str, backends: str, name: str = "t", section: str = "tls",
              version: str = "v1", stamp: str | None = None) -> str:
    extra = f", creationTimestamp: '{stamp}'" if stamp else ""
    return f"""apiVersion: gateway.networking.k8s.io/{version}
kind: TLSRoute
metadata: {{name: {name}, namespace: infra{extra}}}
spec:
  parentRefs: [{{name: edge, sectionName: {section}}}]
  hostnames: {hostnames}
  rules: [{{backendRefs: {backends}}}]
---
"""


def chains(model, port: int = 443) -> dict[tuple[str, ...], dict]:  # type: ignore[no-untyped-def]
    (listener,) = [lst for lst in view(model)["listeners"] if lst["name"] == f"infra/edge/{port}"]
    assert listener["listener_filters"][0]["name"] == "envoy.filters.listener.tls_inspector"
    assert "transport_socket" not in str(listener)  # passed through: nothing terminated here
    return {tuple(c.get("filter_chain_match", {}).get("server_names", ())):
            c["filters"][0]["typed_config"] for c in listener["filter_chains"]}


@pytest.mark.parametrize("version", ["v1", "v1alpha2", "v1alpha3"])
def test_sni_picks_the_route_and_the_connection_is_passed_through(version: str) -> None:
    model = load_policy_text(
        TLS_GATEWAY + tls_route("[foo.example.com, foo.example.net]",
                                "[{name: secure, port: 443}]", version=version)
        + tls_route("['*.example.com']", "[{name: secure-2, port: 443}]", name="wild"))
    assert status_of(model, "TLSRoute", "infra/t") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    found = chains(model)
    # foo.example.net does not intersect the listener's *.example.com: left out.
    assert set(found) == {("*.example.com",), ("foo.example.com",)}
    assert found[("foo.example.com",)]["cluster"] == "infra/secure:443:tcp"
    assert found[("*.example.com",)]["cluster"] == "infra/secure-2:443:tcp"
    clusters = {c["name"] for c in view(model)["clusters"]}
    assert {"infra/secure:443:tcp", "infra/secure-2:443:tcp"} <= clusters
    (listener,) = [s for s in model.statuses if s.name == "infra/edge/tls"]
    assert dict(listener.details) == {"attachedRoutes": "2", "supportedKinds": "TLSRoute"}


def test_a_route_without_hostnames_on_a_listener_without_one_takes_every_sni() -> None:
    model = load_policy_text(TLS_GATEWAY + tls_route(
        "[]", "[{name: secure, port: 443, weight: 1}, {name: secure-2, port: 443, weight: 3}]",
        section="other"))
    found = chains(model, 8443)
    assert set(found) == {()}
    assert found[()]["weighted_clusters"]["clusters"] == [
        {"name": "infra/secure:443:tcp", "weight": 1},
        {"name": "infra/secure-2:443:tcp", "weight": 3}]


def test_the_older_route_keeps_a_hostname_two_routes_name() -> None:
    model = load_policy_text(
        TLS_GATEWAY + tls_route("[a.example.com]", "[{name: secure-2, port: 443}]", name="new",
                                stamp="2024-01-01T00:00:00Z")
        + tls_route("[a.example.com]", "[{name: secure, port: 443}]", name="old",
                    stamp="2020-01-01T00:00:00Z"))
    assert chains(model)[("a.example.com",)]["cluster"] == "infra/secure:443:tcp"


def test_no_intersecting_hostname_is_not_accepted() -> None:
    model = load_policy_text(TLS_GATEWAY + tls_route("[abc.example.net]",
                                                     "[{name: secure, port: 443}]"))
    assert status_of(model, "TLSRoute", "infra/t")["Accepted"] == \
        ("False", "NoMatchingListenerHostname")
    assert not [lst for lst in view(model).get("listeners", [])
                if lst["name"] == "infra/edge/443"]


def test_a_missing_backend_closes_its_connections_and_says_why() -> None:
    model = load_policy_text(TLS_GATEWAY + tls_route("[a.example.com]",
                                                     "[{name: nothing, port: 443}]"))
    assert status_of(model, "TLSRoute", "infra/t") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")}
    assert chains(model)[("a.example.com",)]["cluster"] == "unresolved|infra/nothing:443"
    assert not any("nothing" in c["name"] for c in view(model).get("clusters", []))


def test_an_unknown_backend_kind_is_invalid_kind() -> None:
    model = load_policy_text(TLS_GATEWAY + tls_route(
        "[a.example.com]", "[{group: example.com, kind: Thing, name: secure, port: 443}]"))
    assert status_of(model, "TLSRoute", "infra/t")["ResolvedRefs"] == ("False", "InvalidKind")


def _secret() -> str:
    pair = CA().issue("abc.example.com")
    return f"""apiVersion: v1
kind: Secret
metadata: {{name: cert, namespace: infra}}
type: kubernetes.io/tls
data:
  tls.crt: {base64.b64encode(pair.cert_pem).decode()}
  tls.key: {base64.b64encode(pair.key_pem).decode()}
---
"""


def test_a_tls_listener_in_terminate_mode_ends_tls_beside_passthrough_ones() -> None:
    """Mode Terminate (the spec's default): the SNI's filter chain ends TLS with the listener's
    certificate and proxies the plaintext; the passthrough listener on the same port keeps
    passing its SNI through, untouched (TLSRouteModeMixed)."""
    gateway = TLS_GATEWAY.replace(
        "hostname: abc.example.com,\n     tls: {mode: Passthrough}",
        "hostname: abc.example.com,\n     tls: {certificateRefs: [{name: cert}]}")
    model = load_policy_text(gateway + _secret()
                             + tls_route("[abc.example.com]", "[{name: secure, port: 443}]",
                                         section="exact")
                             + tls_route("[foo.example.com]", "[{name: secure-2, port: 443}]",
                                         name="p"))
    assert status_of(model, "Listener", "infra/edge/exact")["Programmed"] == \
        ("True", "Programmed")
    (listener,) = [lst for lst in view(model)["listeners"] if lst["name"] == "infra/edge/443"]
    by_sni = {tuple(c["filter_chain_match"]["server_names"]): c
              for c in listener["filter_chains"]}
    ending = by_sni[("abc.example.com",)]
    context = ending["transport_socket"]["typed_config"]["common_tls_context"]
    assert [s["name"] for s in context["tls_certificate_sds_secret_configs"]] == \
        ["infra/edge/443/tls[0]"]
    assert "alpn_protocols" not in context  # not HTTP: nothing offered
    assert ending["filters"][0]["typed_config"]["cluster"] == "infra/secure:443:tcp"
    assert "transport_socket" not in by_sni[("foo.example.com",)]
    assert "infra/edge/443/tls[0]" in {s["name"] for s in view(model)["secrets"]}


def test_a_terminating_tls_listener_without_certificates_is_not_programmed() -> None:
    gateway = TLS_GATEWAY.replace("hostname: abc.example.com,\n     tls: {mode: Passthrough}",
                                  "hostname: abc.example.com")
    model = load_policy_text(gateway)
    assert status_of(model, "Listener", "infra/edge/exact")["ResolvedRefs"] == \
        ("False", "InvalidCertificateRef")
    assert status_of(model, "Listener", "infra/edge/tls")["Accepted"] == ("True", "Accepted")


def test_http_and_tls_routes_stay_on_their_own_listeners() -> None:
    http_route = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: h, namespace: infra}
spec:
  parentRefs: [{name: edge, sectionName: tls}]
  rules: [{backendRefs: [{name: secure, port: 443}]}]
---
"""
    model = load_policy_text(TLS_GATEWAY + http_route)
    assert status_of(model, "HTTPRoute", "infra/h")["Accepted"] == \
        ("False", "NotAllowedByListeners")


def test_shape_errors_have_the_field_path() -> None:
    with pytest.raises(PolicyError) as error:
        load_policy_text(TLS_GATEWAY + tls_route("['*.example.com']",
                                                 "[{name: secure, port: 443, weight: -1}]"))
    assert "TLSRoute infra/t: spec.rules[0].backendRefs[0].weight:" in str(error.value)
    with pytest.raises(PolicyError) as error:
        load_policy_text(TLS_GATEWAY + tls_route("[a.example.com]", "[{name: secure}]"))
    assert 'TLSRoute infra/t: spec.rules[0].backendRefs[0].port: missing "port"' in \
        str(error.value)
    with pytest.raises(PolicyError) as error:
        load_policy_text(TLS_GATEWAY + tls_route("[a.example.com]",
                                                 "[{name: secure, port: 443}]")
                         .replace("  hostnames:", "  matches: []\n  hostnames:"))
    assert "TLSRoute infra/t: spec.matches: unknown key" in str(error.value)


def test_a_tcproute_behind_a_terminating_tls_listener_takes_its_hostname() -> None:
    gateway = TLS_GATEWAY.replace(
        "hostname: abc.example.com,\n     tls: {mode: Passthrough}",
        "hostname: abc.example.com,\n     tls: {certificateRefs: [{name: cert}]}")
    model = load_policy_text(gateway + _secret() + """apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: raw, namespace: infra}
spec:
  parentRefs: [{name: edge, sectionName: exact}]
  rules: [{backendRefs: [{name: secure, port: 443}]}]
---
""")
    assert status_of(model, "TCPRoute", "infra/raw")["Accepted"] == ("True", "Accepted")
    (listener,) = [s for s in model.statuses if s.name == "infra/edge/exact"]
    assert dict(listener.details) == {"attachedRoutes": "1",
                                      "supportedKinds": "TLSRoute,TCPRoute"}
    (envoy,) = [lst for lst in view(model)["listeners"] if lst["name"] == "infra/edge/443"]
    (chain,) = envoy["filter_chains"]
    assert chain["filter_chain_match"]["server_names"] == ["abc.example.com"]
    assert "transport_socket" in chain
    assert chain["filters"][0]["typed_config"]["cluster"] == "infra/secure:443:tcp"
    # A passthrough listener does not take TCPRoutes.
    passthrough = load_policy_text(TLS_GATEWAY + """apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: raw, namespace: infra}
spec:
  parentRefs: [{name: edge, sectionName: exact}]
  rules: [{backendRefs: [{name: secure, port: 443}]}]
---
""")
    assert status_of(passthrough, "TCPRoute", "infra/raw")["Accepted"] == \
        ("False", "NotAllowedByListeners")
