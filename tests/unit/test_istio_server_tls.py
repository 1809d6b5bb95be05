"""An Istio Gateway server's certificates from Secrets (`tls.credentialName`), as Istio's
gateway reads them: Secrets of istio-system, `kubernetes.io/tls` or Opaque, the clients' CA
for MUTUAL in the Secret or in `<name>-cacert`; every problem at its field."""

from __future__ import annotations

import base64

import pytest
from tls_material import CA

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import Model
from meshpilot.translators import Translation

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 18000}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin.example.com]
  gateways: [mygateway]
  http: [{route: [{destination: {port: {number: 8000}, host: httpbin}}]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mygateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls: TLS
    hosts: [httpbin.example.com]
"""

SERVER = CA("example CA").issue("httpbin.example.com")
CLIENTS = CA("clients CA")


def secret(name: str, kind: str = "kubernetes.io/tls", namespace: str = "istio-system",
           **values: bytes) -> str:
    data = ", ".join(f"{key.replace('_', '.')}: {base64.b64encode(value).decode()}"
                     for key, value in values.items())
    return (f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}"
            f"\ntype: {kind}\ndata: {{{data}}}\n")


TLS_SECRET = secret("httpbin-credential", tls_crt=SERVER.cert_pem, tls_key=SERVER.key_pem)


def load(tls: str, *documents: str) -> Model:
    return load_policy_text("\n---\n".join((MESH.replace("TLS", tls), *documents)),
                            "istio.yaml")


def errors(tls: str, *documents: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(tls, *documents)
    return [str(issue) for issue in caught.value.issues]


def listener_tls(model: Model):  # type: ignore[no-untyped-def]
    (gateway,) = model.gateways
    (listener,) = gateway.listeners
    return listener.tls


def test_simple_from_a_tls_secret_and_mutual_with_its_ca() -> None:
    tls = listener_tls(load("{mode: SIMPLE, credentialName: httpbin-credential}", TLS_SECRET))
    (certificate,) = tls.certificates
    assert certificate.certificate_chain == SERVER.cert_pem
    assert tls.client_ca is None
    with_ca = secret("httpbin-credential", "Opaque", tls_crt=SERVER.cert_pem, tls_key=SERVER.key_pem,
                     ca_crt=CLIENTS.pem)
    tls = listener_tls(load("{mode: MUTUAL, credentialName: httpbin-credential}", with_ca))
    assert tls.client_ca == CLIENTS.pem
    generic = secret("httpbin-credential", "Opaque", cert=SERVER.cert_pem, key=SERVER.key_pem)
    cacert = secret("httpbin-credential-cacert", "Opaque", cacert=CLIENTS.pem)
    tls = listener_tls(load("{mode: MUTUAL, credentialName: httpbin-credential}", generic,
                            cacert))
    assert tls.client_ca == CLIENTS.pem and tls.client_ca_path == \
        "secret:istio-system/httpbin-credential-cacert"


def test_credential_problems_are_errors_at_the_field() -> None:
    simple = "{mode: SIMPLE, credentialName: httpbin-credential}"
    found = errors(simple)
    assert any("spec.servers[0].tls.credentialName: no Secret istio-system/httpbin-credential"
               in e for e in found), found
    elsewhere = secret("httpbin-credential", namespace="default", tls_crt=SERVER.cert_pem,
                       tls_key=SERVER.key_pem)
    assert any("no Secret istio-system/httpbin-credential" in e
               for e in errors(simple, elsewhere))
    mismatched = secret("httpbin-credential", tls_crt=SERVER.cert_pem,
                        tls_key=CA("x").issue("y").key_pem)
    assert any("Secret istio-system/httpbin-credential: tls.crt does not match tls.key" in e
               for e in errors(simple, mismatched))
    assert any("tls mode MUTUAL needs the clients' CA" in e for e in errors(
        "{mode: MUTUAL, credentialName: httpbin-credential}", TLS_SECRET))
    assert any("serverCertificate and credentialName" in e for e in errors(
        "{mode: SIMPLE, credentialName: httpbin-credential, serverCertificate: a.pem, "
        "privateKey: a.key}", TLS_SECRET))


@pytest.mark.envoy
def test_envoy_accepts_credentials() -> None:
    from static_check import static_bootstrap

    from meshpilot.local.envoy_process import validate_config
    from meshpilot.xds.render import snapshot_to_dict

    with_ca = secret("httpbin-credential", "Opaque", tls_crt=SERVER.cert_pem, tls_key=SERVER.key_pem,
                     ca_crt=CLIENTS.pem)
    model = load("{mode: MUTUAL, credentialName: httpbin-credential}", with_ca, EAST_WEST)
    for view in ("istio=ingressgateway", "istio=eastwestgateway"):
        validate_config(static_bootstrap(snapshot_to_dict(Translation(model).snapshot(view))))


# ---- AUTO_PASSTHROUGH ----------------------------------------------------------------------

EAST_WEST = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: cross-network-gateway, namespace: istio-system}
spec:
  selector: {istio: eastwestgateway}
  servers:
  - port: {number: 15443, name: tls, protocol: TLS}
    tls: {mode: AUTO_PASSTHROUGH}
    hosts: ["*.local"]
"""


def test_auto_passthrough_routes_by_the_sni_istio_names() -> None:
    model = load("{mode: SIMPLE, credentialName: httpbin-credential}", TLS_SECRET, EAST_WEST)
    gateway = next(g for g in model.gateways if g.name == "istio=eastwestgateway")
    (listener,) = gateway.listeners
    assert listener.protocol == "tcp"
    routes = {r.server_names: [b.service for b in r.backends] for r in listener.tcp_routes}
    whole = "outbound_.8000_._.httpbin.default.svc.cluster.local"
    subset = "outbound_.8000_.v1_.httpbin.default.svc.cluster.local"
    assert routes == {(whole,): [whole], (subset,): [subset]}
    # their clusters are plain TCP (the caller's TLS goes through), to the same endpoints
    service = model.service(whole)
    assert service is not None and service.protocol == "tcp" and service.tls is None
    assert [(e.host, e.port, e.mtls_identity) for e in service.endpoints] == \
        [("127.0.0.1", 18000, None)]
    snapshot = Translation(model).snapshot("istio=eastwestgateway")
    assert {whole, subset} <= set(snapshot.get(
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"))


def test_auto_passthrough_takes_no_other_tls_field() -> None:
    found = errors("{mode: SIMPLE, credentialName: httpbin-credential}", TLS_SECRET,
                   EAST_WEST.replace("{mode: AUTO_PASSTHROUGH}",
                                     "{mode: AUTO_PASSTHROUGH, credentialName: x}"))
    assert any("tls.credentialName: credentialName is not for tls mode AUTO_PASSTHROUGH" in e
               for e in found), found


def test_servers_sharing_a_port_each_bring_their_certificate() -> None:
    """Two HTTPS servers on 443 for different hosts, each with its credential: one listener
    holding both certificates (Envoy picks by SNI); a second server that disagrees in another
    TLS setting is refused at its tls, not dropped."""
    other = CA("other CA").issue("shop.example.com")
    second = """
  - port: {number: 443, name: https-shop, protocol: HTTPS}
    tls: SECOND
    hosts: [shop.example.com]
"""
    documents = (TLS_SECRET, secret("shop-credential", tls_crt=other.cert_pem,
                                    tls_key=other.key_pem))
    text = MESH.replace("TLS", "{mode: SIMPLE, credentialName: httpbin-credential}") + \
        second.replace("SECOND", "{mode: SIMPLE, credentialName: shop-credential}").lstrip("\n")
    model = load_policy_text("\n---\n".join((text, *documents)), "istio.yaml")
    chains = [c.certificate_chain for c in listener_tls(model).certificates]
    assert chains == [SERVER.cert_pem, other.cert_pem]
    mismatched = second.replace("SECOND", "{mode: SIMPLE, credentialName: shop-credential, "
                                          "minProtocolVersion: TLSV1_3}").lstrip("\n")
    text = MESH.replace("TLS", "{mode: SIMPLE, credentialName: httpbin-credential}") + mismatched
    with pytest.raises(PolicyError) as caught:
        load_policy_text("\n---\n".join((text, *documents)), "istio.yaml")
    (issue,) = caught.value.issues
    assert "servers.1.tls" in str(issue).replace("[", ".").replace("]", "") and \
        "differ in TLS settings" in str(issue)
