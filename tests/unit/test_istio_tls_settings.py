"""The rest of Istio's TLS settings (issue #13), compiled and translated:

- DestinationRule `tls.subjectAltNames` (SIMPLE, MUTUAL): the endpoint's certificate must
  carry one of the names; Envoy's `match_typed_subject_alt_names` in the upstream
  validation context, each name as DNS and as URI SAN (Istio matches it against any SAN).
- DestinationRule `tls.credentialName`: the CA (SIMPLE) or the client certificate, key and CA
  (MUTUAL) from a Secret of the rule's namespace (the CA in it or in `<name>-cacert`).
- Gateway server `tls.subjectAltNames` (MUTUAL: the client's certificate's names) and
  `tls.mode: OPTIONAL_MUTUAL` (asked for, checked if sent, not required).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import (
    DownstreamTlsContext,
    UpstreamTlsContext,
)
from tls_material import CA

from meshpilot.base.errors import PolicyError
from meshpilot.base.types import CLUSTER, LISTENER, SECRET
from meshpilot.inputs.loader import load_policy, load_policy_text
from meshpilot.ir.model import Model
from meshpilot.translators import Translation

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secure, namespace: shop}
spec:
  hosts: [secure.example.com]
  location: MESH_EXTERNAL
  ports: [{number: 8443, name: https, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {https: 18443}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client-v1, namespace: shop}
spec: {address: 127.0.0.1, labels: {app: client}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: secure, namespace: shop}
spec:
  host: secure.example.com
  trafficPolicy:
    tls: TLS
"""
SECURE = "secure.example.com:8443"
UPSTREAM_CA = CA("upstream CA")
CLIENT = CA("clients CA").issue("client.example.com")


def secret(name: str, kind: str = "kubernetes.io/tls", namespace: str = "shop",
           **values: bytes) -> str:
    data = ", ".join(f"{key.replace('_', '.')}: {base64.b64encode(value).decode()}"
                     for key, value in values.items())
    return (f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}"
            f"\ntype: {kind}\ndata: {{{data}}}\n")


def load(tls: str, *documents: str) -> Model:
    return load_policy_text("\n---\n".join((MESH.replace("TLS", tls), *documents)),
                            "istio.yaml")


def errors(tls: str, *documents: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(tls, *documents)
    return [str(issue) for issue in caught.value.issues]


def upstream(model: Model) -> tuple[UpstreamTlsContext, dict[str, Any]]:
    """The sidecar's upstream TLS to the secure host, and the sidecar's Secrets."""
    snapshot = Translation(model).snapshot("client-v1.shop")
    name = SECURE
    cluster = Cluster()
    cluster.ParseFromString(snapshot.get(CLUSTER)[name].body)
    context = UpstreamTlsContext()
    cluster.transport_socket.typed_config.Unpack(context)
    return context, snapshot.get(SECRET)


def sans_of(context: Any) -> list[tuple[int, str]]:
    matchers = context.common_tls_context.combined_validation_context \
        .default_validation_context.match_typed_subject_alt_names
    return [(m.san_type, m.matcher.exact) for m in matchers]


DNS, URI = 2, 3  # SubjectAltNameMatcher.SanType


# ---- DestinationRule subjectAltNames -----------------------------------------------------------


def test_subject_alt_names_replace_the_sni_check(tmp_path: Path) -> None:
    UPSTREAM_CA.write(tmp_path / "certs" / "upstream-ca.pem")
    CLIENT.write(tmp_path / "certs", "client")
    for tls in ("{mode: SIMPLE, caCertificates: certs/upstream-ca.pem, sni: secure.example.com,"
                " subjectAltNames: [backend.example.com, 'spiffe://shop/backend']}",
                "{mode: MUTUAL, caCertificates: certs/upstream-ca.pem, sni: secure.example.com,"
                " clientCertificate: certs/client.pem, privateKey: certs/client.key,"
                " subjectAltNames: [backend.example.com, 'spiffe://shop/backend']}"):
        (tmp_path / "mesh.yaml").write_text(MESH.replace("TLS", tls))
        model = load_policy(tmp_path)
        service = model.service(SECURE)
        assert service is not None and service.tls is not None
        assert service.tls.subject_alt_names == (
            ("dns", "backend.example.com"), ("uri", "backend.example.com"),
            ("dns", "spiffe://shop/backend"), ("uri", "spiffe://shop/backend"))
        context, _ = upstream(model)
        assert context.sni == "secure.example.com"  # still sent, no longer the name checked
        assert sans_of(context) == [(DNS, "backend.example.com"), (URI, "backend.example.com"),
                                    (DNS, "spiffe://shop/backend"),
                                    (URI, "spiffe://shop/backend")]


def test_subject_alt_names_need_a_verified_certificate() -> None:
    found = errors("{mode: SIMPLE, subjectAltNames: [backend.example.com]}")
    assert any("spec.trafficPolicy.tls.subjectAltNames: subjectAltNames are checked against a "
               "certificate caCertificates verifies" in e for e in found), found
    found = errors("{mode: DISABLE, subjectAltNames: [backend.example.com]}")
    assert any("tls.subjectAltNames: subjectAltNames is for tls modes SIMPLE and MUTUAL" in e
               for e in found), found
    found = errors("{mode: SIMPLE, credentialName: upstream, insecureSkipVerify: true, "
                   "subjectAltNames: [backend.example.com]}")
    assert any("subjectAltNames and insecureSkipVerify" in e for e in found), found


# ---- DestinationRule credentialName ------------------------------------------------------------


def test_simple_credential_gives_the_ca() -> None:
    model = load("{mode: SIMPLE, credentialName: upstream, sni: secure.example.com}",
                 secret("upstream", "Opaque", cacert=UPSTREAM_CA.pem))
    service = model.service(SECURE)
    assert service is not None and service.tls is not None
    assert service.tls.ca == UPSTREAM_CA.pem and service.tls.verify
    assert service.tls.client_certificate is None
    context, secrets = upstream(model)
    ca = context.common_tls_context.combined_validation_context \
        .validation_context_sds_secret_config.name
    assert ca.endswith("/ca") and ca in secrets
    assert sans_of(context) == [(DNS, "secure.example.com")]
    assert not context.common_tls_context.tls_certificate_sds_secret_configs


def test_mutual_credential_gives_the_client_certificate_and_ca() -> None:
    tls = "{mode: MUTUAL, credentialName: client-credential}"
    both = secret("client-credential", tls_crt=CLIENT.cert_pem, tls_key=CLIENT.key_pem,
                  ca_crt=UPSTREAM_CA.pem)
    generic = secret("client-credential", "Opaque", cert=CLIENT.cert_pem, key=CLIENT.key_pem)
    cacert = secret("client-credential-cacert", "Opaque", cacert=UPSTREAM_CA.pem)
    for documents, where in (((both,), "shop/client-credential"),
                             ((generic, cacert), "shop/client-credential-cacert")):
        model = load(tls, *documents)
        service = model.service(SECURE)
        assert service is not None and service.tls is not None
        assert service.tls.client_certificate is not None
        assert service.tls.client_certificate.certificate_chain == CLIENT.cert_pem
        assert service.tls.ca == UPSTREAM_CA.pem and service.tls.ca_path == f"secret:{where}"
        context, secrets = upstream(model)
        (client,) = context.common_tls_context.tls_certificate_sds_secret_configs
        assert client.name.endswith("/client-cert") and client.name in secrets


def test_a_subsets_own_credential() -> None:
    """A subset's trafficPolicy with a credentialName of its own: that subset's cluster
    presents the Secret's certificate, the rest of the host keeps the rule's SIMPLE."""
    text = MESH.replace("TLS", "{mode: SIMPLE, credentialName: upstream}") + """  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {tls: {mode: MUTUAL, credentialName: client-credential}}
"""
    model = load_policy_text("\n---\n".join((
        text, secret("upstream", "Opaque", cacert=UPSTREAM_CA.pem),
        secret("client-credential", tls_crt=CLIENT.cert_pem, tls_key=CLIENT.key_pem,
               ca_crt=UPSTREAM_CA.pem))), "istio.yaml")
    service = model.service(SECURE)
    assert service is not None and service.tls is not None
    assert service.tls.client_certificate is None and service.tls.ca == UPSTREAM_CA.pem
    ((name, v1),) = service.subset_services
    assert name == "v1" and v1.tls is not None and v1.tls.client_certificate is not None
    assert v1.tls.client_certificate.certificate_chain == CLIENT.cert_pem


def test_credential_problems_are_errors_at_the_field() -> None:
    simple = "{mode: SIMPLE, credentialName: upstream}"
    found = errors(simple)
    assert any("spec.trafficPolicy.tls.credentialName: no Secret shop/upstream (a "
               "DestinationRule's credentialName is read in its namespace, shop)" in e
               for e in found), found
    # The gateway's namespace is not the rule's.
    elsewhere = secret("upstream", "Opaque", namespace="istio-system", cacert=UPSTREAM_CA.pem)
    assert any("no Secret shop/upstream" in e for e in errors(simple, elsewhere))
    no_ca = secret("upstream", tls_crt=CLIENT.cert_pem, tls_key=CLIENT.key_pem)
    assert any("tls.credentialName: no CA to check the endpoints' certificates with" in e
               for e in errors(simple, no_ca))
    assert any("Secret shop/upstream: cert holds no PEM certificate" in e for e in errors(
        "{mode: MUTUAL, credentialName: upstream}",
        secret("upstream", "Opaque", cacert=UPSTREAM_CA.pem)))
    assert any("caCertificates and credentialName" in e for e in errors(
        "{mode: SIMPLE, credentialName: upstream, caCertificates: ca.pem}"))


# ---- Gateway subjectAltNames, OPTIONAL_MUTUAL --------------------------------------------------

GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: SERVER_TLS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: shop}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http: [{route: [{destination: {host: secure.example.com}}]}]
"""
EDGE = CA("edge CA").issue("edge.example.com")
CLIENTS_CA = CA("clients CA")
EDGE_SECRET = secret("edge", "Opaque", namespace="istio-system", cert=EDGE.cert_pem,
                     key=EDGE.key_pem, cacert=CLIENTS_CA.pem)


def downstream(server_tls: str) -> DownstreamTlsContext:
    model = load("{mode: DISABLE}", GATEWAY.replace("SERVER_TLS", server_tls), EDGE_SECRET)
    snapshot = Translation(model).snapshot("istio=ingressgateway")
    listener = Listener()
    listener.ParseFromString(next(iter(snapshot.get(LISTENER).values())).body)
    context = DownstreamTlsContext()
    listener.filter_chains[0].transport_socket.typed_config.Unpack(context)
    return context


def test_client_subject_alt_names_at_the_gateway() -> None:
    context = downstream("{mode: MUTUAL, credentialName: edge, subjectAltNames: "
                         "[client.example.com]}")
    assert context.require_client_certificate.value
    combined = context.common_tls_context.combined_validation_context
    assert combined.validation_context_sds_secret_config.name.endswith("/client-ca")
    assert sans_of(context) == [(DNS, "client.example.com"), (URI, "client.example.com")]
    # Without names: any certificate the CA signed (the validation context alone).
    plain = downstream("{mode: MUTUAL, credentialName: edge}")
    assert plain.common_tls_context.validation_context_sds_secret_config.name.endswith(
        "/client-ca")
    assert not plain.common_tls_context.HasField("combined_validation_context")


def test_optional_mutual_asks_for_but_does_not_require_a_certificate(tmp_path: Path) -> None:
    context = downstream("{mode: OPTIONAL_MUTUAL, credentialName: edge}")
    assert context.HasField("require_client_certificate")
    assert not context.require_client_certificate.value
    # a certificate sent is still checked: the clients' CA, not ACCEPT_UNTRUSTED
    assert context.common_tls_context.validation_context_sds_secret_config.name.endswith(
        "/client-ca")
    # with files as well
    CLIENTS_CA.write(tmp_path / "certs" / "clients.pem")
    EDGE.write(tmp_path / "certs", "edge")
    (tmp_path / "mesh.yaml").write_text("\n---\n".join((
        MESH.replace("TLS", "{mode: DISABLE}"), GATEWAY.replace(
            "SERVER_TLS", "{mode: OPTIONAL_MUTUAL, serverCertificate: certs/edge.pem, "
                          "privateKey: certs/edge.key, caCertificates: certs/clients.pem}"))))
    (gateway,) = load_policy(tmp_path).gateways
    (listener,) = gateway.listeners
    assert listener.tls is not None and listener.tls.client_may_omit
    assert listener.tls.client_ca == CLIENTS_CA.pem and not listener.tls.client_optional


def test_gateway_tls_problems_are_errors_at_the_field() -> None:
    def problems(server_tls: str, *documents: str) -> list[str]:
        return errors("{mode: DISABLE}", GATEWAY.replace("SERVER_TLS", server_tls), *documents)

    found = problems("{mode: SIMPLE, credentialName: edge, subjectAltNames: [a.example.com]}",
                     EDGE_SECRET)
    assert any("spec.servers[0].tls.subjectAltNames: subjectAltNames (of the client's "
               "certificate) is for tls modes MUTUAL and OPTIONAL_MUTUAL" in e
               for e in found), found
    no_ca = secret("edge", "Opaque", namespace="istio-system", cert=EDGE.cert_pem,
                   key=EDGE.key_pem)
    found = problems("{mode: OPTIONAL_MUTUAL, credentialName: edge}", no_ca)
    assert any("tls mode OPTIONAL_MUTUAL needs the clients' CA" in e for e in found), found


@pytest.mark.envoy
def test_envoy_accepts_the_settings() -> None:
    from static_check import static_bootstrap

    from meshpilot.local.envoy_process import validate_config
    from meshpilot.xds.render import snapshot_to_dict

    model = load("{mode: MUTUAL, credentialName: client-credential, "
                 "subjectAltNames: [secure.example.com]}",
                 secret("client-credential", tls_crt=CLIENT.cert_pem, tls_key=CLIENT.key_pem,
                        ca_crt=UPSTREAM_CA.pem),
                 GATEWAY.replace("SERVER_TLS", "{mode: OPTIONAL_MUTUAL, credentialName: edge, "
                                               "subjectAltNames: [client.example.com]}"),
                 EDGE_SECRET)
    for view in ("istio=ingressgateway", "client-v1.shop"):
        validate_config(static_bootstrap(snapshot_to_dict(Translation(model).snapshot(view))))


def test_a_renewed_secret_changes_only_secrets() -> None:
    """Another client certificate in the Secret: the sidecar's clusters stay as they were, its
    client-cert Secret changes (a Secret-only push)."""
    renewed = CA("clients CA").issue("client.example.com")

    def snapshot(pair: Any) -> Any:
        return Translation(load("{mode: MUTUAL, credentialName: client-credential}", secret(
            "client-credential", tls_crt=pair.cert_pem, tls_key=pair.key_pem,
            ca_crt=UPSTREAM_CA.pem))).snapshot("client-v1.shop")

    before, after = snapshot(CLIENT), snapshot(renewed)
    assert {n: r.body for n, r in before.get(CLUSTER).items()} == \
        {n: r.body for n, r in after.get(CLUSTER).items()}
    changed = [n for n, r in after.get(SECRET).items() if before.get(SECRET)[n].body != r.body]
    assert changed == [f"{SECURE}/client-cert"]
