"""Istio Gateway servers whose TLS the gateway ends before a TCP stream (protocol TLS with
tls mode SIMPLE or MUTUAL: the VirtualService's `tcp` routes), ISTIO_MUTUAL servers (the
gateway's mesh identity, a mesh client certificate required) and GRPC servers (HTTP with
h2c)."""

from __future__ import annotations

import base64

import pytest
from tls_material import CA

from meshpilot.base import types
from meshpilot.base.errors import PolicyError
from meshpilot.ca.authority import CertificateAuthority
from meshpilot.ca.workloads import WorkloadIdentities
from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import GatewayListener, Model
from meshpilot.translators import Translation
from meshpilot.translators.mtls import IDENTITY_SECRET, TRUST_BUNDLE_SECRET
from meshpilot.xds.render import message_of, to_dict

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {tcp: 15432}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: greeter}
spec:
  hosts: [greeter.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 50051, name: grpc, protocol: GRPC}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {grpc: 15051}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  tcp: [{route: [{destination: {host: db}}]}]
  tls: [{match: [{sniHosts: [db.example.com]}], route: [{destination: {host: db}}]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 9443, name: tls, protocol: TLS}
    hosts: ["*"]
    tls: TLS
"""

SERVER = CA("example CA").issue("db.example.com")
CLIENTS = CA("clients CA")


def secret(name: str, **values: bytes) -> str:
    data = ", ".join(f"{key.replace('_', '.')}: {base64.b64encode(value).decode()}"
                     for key, value in values.items())
    return (f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}"
            f"\ntype: kubernetes.io/tls\ndata: {{{data}}}\n")


def load(tls: str, *documents: str) -> Model:
    return load_policy_text("\n---\n".join((MESH.replace("tls: TLS", f"tls: {tls}"),
                                            *documents)), "istio.yaml")


def errors(tls: str, *documents: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(tls, *documents)
    return [str(issue) for issue in caught.value.issues]


def dumped(snapshot, type_url: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [to_dict(r) for r in snapshot.get(type_url).values()]


def listener(model: Model, name: str = "tls-9443") -> GatewayListener:
    (gateway,) = model.gateways
    return next(spec for spec in gateway.listeners if spec.name == name)


def test_a_tls_server_with_simple_ends_tls_and_takes_the_tcp_routes() -> None:
    """Istio's gateway: a TLS server not passed through sends the plaintext by tcp routes
    (the tls routes, SNI ones, are for PASSTHROUGH)."""
    credential = secret("db-credential", tls_crt=SERVER.cert_pem, tls_key=SERVER.key_pem)
    spec = listener(load("{mode: SIMPLE, credentialName: db-credential}", credential))
    assert spec.protocol == "tcp" and not spec.mesh_tls
    assert spec.tls is not None and spec.tls.alpn == () and spec.tls.client_ca is None
    assert [c.certificate_chain for c in spec.tls.certificates] == [SERVER.cert_pem]
    assert [(r.server_names, [b.service for b in r.backends]) for r in spec.tcp_routes] == \
        [((), ["db.default.svc.cluster.local:5432"])]
    snapshot = Translation(load("{mode: SIMPLE, credentialName: db-credential}",
                                credential)).snapshot("istio=ingressgateway")
    (built,) = dumped(snapshot, types.LISTENER)
    (chain,) = built["filter_chains"]
    assert chain["filters"][0]["name"] == "envoy.filters.network.tcp_proxy"
    context = chain["transport_socket"]["typed_config"]
    assert context["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["name"] == \
        "istio=ingressgateway/tls-9443/tls[0]"
    assert "alpn_protocols" not in context["common_tls_context"]


def test_a_tls_server_with_mutual_requires_the_clients_ca() -> None:
    credential = secret("db-credential", tls_crt=SERVER.cert_pem, tls_key=SERVER.key_pem,
                        ca_crt=CLIENTS.pem)
    spec = listener(load("{mode: MUTUAL, credentialName: db-credential}", credential))
    assert spec.tls is not None and spec.tls.client_ca == CLIENTS.pem
    assert spec.tls.client_may_omit is False
    assert any("tls mode MUTUAL needs the clients' CA" in e for e in errors(
        "{mode: MUTUAL, credentialName: db-credential}",
        secret("db-credential", tls_crt=SERVER.cert_pem, tls_key=SERVER.key_pem)))


def test_a_tls_server_without_tcp_routes_is_a_warning() -> None:
    credential = secret("db-credential", tls_crt=SERVER.cert_pem, tls_key=SERVER.key_pem)
    text = "\n---\n".join((MESH.replace("tls: TLS", "tls: {mode: SIMPLE, credentialName: "
                                                     "db-credential}").replace(
        "  tcp: [{route: [{destination: {host: db}}]}]\n", ""), credential))
    model = load_policy_text(text, "istio.yaml")
    (gateway,) = model.gateways
    assert gateway.listeners == ()
    assert any("no VirtualService has tcp routes for this server" in str(w)
               for w in model.warnings)


def test_istio_mutual_shows_the_mesh_identity_and_requires_a_mesh_client() -> None:
    model = load("{mode: ISTIO_MUTUAL}")
    spec = listener(model)
    assert spec.mesh_tls and spec.tls is None and spec.protocol == "tcp"
    authority = CertificateAuthority.create()
    snapshot = Translation(model, identities=WorkloadIdentities(authority)).snapshot(
        "istio=ingressgateway")
    (built,) = dumped(snapshot, types.LISTENER)
    context = built["filter_chains"][0]["transport_socket"]["typed_config"]
    assert context["require_client_certificate"] is True
    common = context["common_tls_context"]
    assert common["tls_certificate_sds_secret_configs"][0]["name"] == IDENTITY_SECRET
    assert common["validation_context_sds_secret_config"]["name"] == TRUST_BUNDLE_SECRET
    # The view receives its identity, the gateway's SPIFFE ID, and the trust bundle.
    assert {IDENTITY_SECRET, TRUST_BUNDLE_SECRET} <= set(snapshot.get(types.SECRET))
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    chain = snapshot.get(types.SECRET)[IDENTITY_SECRET]
    pem = message_of(chain).tls_certificate.certificate_chain.inline_string.encode()
    sans = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_oid(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"]


def test_istio_mutual_on_an_https_server_serves_http_routes() -> None:
    text = MESH.replace("protocol: TLS}", "protocol: HTTPS}").replace(
        "tls: TLS", "tls: {mode: ISTIO_MUTUAL}").replace(
        "  tcp: [{route: [{destination: {host: db}}]}]\n",
        "  http: [{route: [{destination: {host: greeter}}]}]\n")
    model = load_policy_text(text, "istio.yaml")
    spec = listener(model, "https-9443")
    assert spec.protocol == "http" and spec.mesh_tls and spec.tls is None
    snapshot = Translation(model).snapshot("istio=ingressgateway")
    (built,) = dumped(snapshot, types.LISTENER)
    chain = built["filter_chains"][0]
    assert chain["filters"][0]["name"] == "envoy.filters.network.http_connection_manager"
    assert chain["transport_socket"]["typed_config"]["require_client_certificate"] is True


def test_istio_mutual_takes_no_certificate_fields() -> None:
    found = errors("{mode: ISTIO_MUTUAL, credentialName: db-credential}")
    assert any("spec.servers[0].tls.credentialName: credentialName is not for tls mode "
               "ISTIO_MUTUAL" in e for e in found), found


def test_a_grpc_server_is_an_http_listener() -> None:
    text = MESH.replace("protocol: TLS}", "protocol: GRPC}").replace(
        "    tls: TLS\n", "").replace(
        "  tcp: [{route: [{destination: {host: db}}]}]\n",
        "  http: [{route: [{destination: {host: greeter}}]}]\n")
    model = load_policy_text(text, "istio.yaml")
    spec = listener(model, "http-9443")
    assert spec.protocol == "http" and spec.tls is None
    (route,) = [r for r in model.routes if r.gateway == "istio=ingressgateway"]
    assert route.listeners == ("http-9443",)
    snapshot = Translation(model).snapshot("istio=ingressgateway")
    (built,) = dumped(snapshot, types.LISTENER)
    manager = built["filter_chains"][0]["filters"][0]["typed_config"]
    # Envoy's default codec (AUTO) takes HTTP/2 with prior knowledge (h2c) as gRPC sends it.
    assert manager.get("codec_type", "AUTO") == "AUTO"
    (cluster,) = [c for c in dumped(snapshot, types.CLUSTER) if "greeter" in c["name"]]
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in \
        cluster["typed_extension_protocol_options"]


# ---- DestinationRule ISTIO_MUTUAL subjectAltNames --------------------------------------------

EAST = "spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway-service-account"
RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: greeter}
spec:
  host: greeter
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL, subjectAltNames: SANS}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
"""


def grpc_gateway(*documents: str) -> Model:
    text = MESH.replace("protocol: TLS}", "protocol: GRPC}").replace(
        "    tls: TLS\n", "").replace(
        "  tcp: [{route: [{destination: {host: db}}]}]\n",
        "  http: [{route: [{destination: {host: greeter}}]}]\n")
    return load_policy_text("\n---\n".join((text, *documents)), "istio.yaml")


def accepted_ids(snapshot, name: str) -> list[str]:  # type: ignore[no-untyped-def]
    cluster = next(c for c in dumped(snapshot, types.CLUSTER) if c["name"] == name)
    context = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    matchers = context["combined_validation_context"]["default_validation_context"][
        "match_typed_subject_alt_names"]
    assert {m["san_type"] for m in matchers} == {"URI"}
    return [m["matcher"]["exact"] for m in matchers]


def test_istio_mutual_subject_alt_names_replace_the_workloads_identities() -> None:
    """The peer's certificate must name one of the rule's SPIFFE IDs; a subset whose own
    tls block says none accepts its workloads' identity again (Istio's block merge)."""
    model = grpc_gateway(RULE.replace("SANS", f"[{EAST}]"))
    service = model.service("greeter.default.svc.cluster.local:50051")
    assert service is not None and service.mesh_peer_ids == (EAST,)
    snapshot = Translation(model).snapshot("istio=ingressgateway")
    assert accepted_ids(snapshot, "greeter.default.svc.cluster.local:50051") == [EAST]
    without = grpc_gateway(RULE.replace(", subjectAltNames: SANS", ""))
    assert accepted_ids(Translation(without).snapshot("istio=ingressgateway"),
                        "greeter.default.svc.cluster.local:50051") == [
        "spiffe://cluster.local/ns/default/sa/default"]


def test_istio_mutual_subject_alt_names_are_spiffe_ids() -> None:
    with pytest.raises(PolicyError) as caught:
        grpc_gateway(RULE.replace("SANS", "[greeter.example.com]"))
    assert any("trafficPolicy.tls.subjectAltNames[0]: \"greeter.example.com\": with tls mode "
               "ISTIO_MUTUAL a subjectAltName is a mesh identity" in str(issue)
               for issue in caught.value.issues), caught.value.issues


def test_servers_on_one_port_must_agree_on_ending_tls() -> None:
    """One port, one TLS context: an ISTIO_MUTUAL server beside a SIMPLE one, or a second TLS
    server on a port whose TLS the gateway ends, is refused at its tls (not dropped)."""
    credential = secret("db-credential", tls_crt=SERVER.cert_pem, tls_key=SERVER.key_pem)
    second = """  - port: {number: 9443, name: tls-2, protocol: TLS}
    hosts: [other.example.com]
    tls: {mode: ISTIO_MUTUAL}
"""
    text = MESH.replace("tls: TLS", "tls: {mode: SIMPLE, credentialName: db-credential}")
    with pytest.raises(PolicyError) as caught:
        load_policy_text("\n---\n".join((text + second, credential)), "istio.yaml")
    assert any("spec.servers[1].tls: port 9443 already has a TLS server" in str(issue)
               for issue in caught.value.issues), caught.value.issues
    https = text.replace("protocol: TLS}", "protocol: HTTPS}") + second.replace(
        "protocol: TLS}", "protocol: HTTPS}")
    with pytest.raises(PolicyError) as caught:
        load_policy_text("\n---\n".join((https, credential)), "istio.yaml")
    assert any("spec.servers[1].tls: the servers on port 9443 differ in tls mode: "
               "ISTIO_MUTUAL" in str(issue) for issue in caught.value.issues), \
        caught.value.issues
