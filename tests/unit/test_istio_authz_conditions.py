"""AuthorizationPolicy's `when` conditions and source fields, as Istio's RBAC builder reads them.

Each test loads a policy for one workload, takes the RBAC its sidecar's inbound enforces and
evaluates it (`rbac_eval`) on requests that differ in one attribute: several values (any of
them), Istio's wildcards (`x*`, `*x`, `*`), notValues (none of them), nested and list-valued
JWT claims, the destination address, the TLS server name, Envoy's filter metadata, and
principals with namespaces in one source (both must hold). Envoy itself validates the result.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from google.protobuf.json_format import MessageToDict
from rbac_eval import admits
from support import shared_folder
from tls_material import CA

from meshpilot.base.errors import PolicyError
from meshpilot.base.types import LISTENER, ROUTE
from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import Model
from meshpilot.translators import Translation
from meshpilot.translators.tcp_authorization import NETWORK_RBAC

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, annotations: {meshpilot.io/app: "127.0.0.1:19081"}}
spec: {address: 10.0.0.21, ports: {http: 9080}, labels: {app: reviews, version: v1}}
"""
VIEW = "reviews-v1.default"
JWT = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: reviews}
spec:
  selector: {matchLabels: {app: reviews}}
  jwtRules: [{issuer: issuer.example, jwks: 'KEYS'}]
"""


def policy(rules: str, action: str = "ALLOW") -> str:
    return ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: "
            f"{{name: p}}\nspec:\n  selector: {{matchLabels: {{app: reviews}}}}\n"
            f"  action: {action}\n  rules:\n{rules}")


def load(*documents: str) -> Model:
    return load_policy_text("\n---\n".join((MESH, *documents)), "istio.yaml")


def errors(*documents: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(*documents)
    return [str(issue) for issue in caught.value.issues]


def configs(model: Model) -> list[dict[str, Any]]:
    """The RBAC configs (camelCase JSON) the workload's inbound virtual host switches on."""
    routes = RouteConfiguration()
    routes.ParseFromString(Translation(model).snapshot(VIEW).get(ROUTE)[f"inbound/{VIEW}"].body)
    (vhost,) = MessageToDict(routes)["virtualHosts"]
    return [c["rbac"] for n, c in vhost.get("typedPerFilterConfig", {}).items()
            if n.startswith("envoy.filters.http.rbac")]


def decide(*documents: str) -> Any:
    """A function telling whether the workload admits a request (keyword attributes)."""
    found = configs(load(*documents))
    assert found

    def admitted(**request: Any) -> bool:
        return all(admits(c, {"path": "/", "method": "GET", **request}) for c in found)
    return admitted


def when(*conditions: str) -> str:
    return "  - when:\n" + "".join(f"    - {c}\n" for c in conditions)


def test_header_values_any_with_wildcards_and_not_values() -> None:
    admitted = decide(policy(when(
        '{key: "request.headers[X-Team]", values: [red, "blu*", "*een"]}',
        '{key: "request.headers[x-team]", notValues: ["*-banned", bluebird]}')))
    ok = [admitted(headers={"x-team": v}) for v in
          ("red", "blue", "blu", "green", "een", "reds", "yellow", "blue-banned", "bluebird")]
    assert ok == [True, True, True, True, True, False, False, False, False]
    assert not admitted()  # no header: no value matches
    present = decide(policy(when('{key: "request.headers[x-any]", values: ["*"]}')))
    assert present(headers={"x-any": "x"}) and not present()
    deny = decide(policy(when('{key: "request.headers[x-a]", notValues: ["*"]}'), "DENY"))
    assert deny(headers={"x-a": ""}) and not deny()  # denied: the header is absent


def test_claims_nested_listed_several_values_and_wildcards() -> None:
    admitted = decide(JWT, policy(when(
        '{key: "request.auth.claims[groups]", values: [admins, "dev-*"]}',
        '{key: "request.auth.claims[realm][role]", values: ["*-lead"]}',
        '{key: "request.auth.claims[email]", notValues: ["*@evil.example"]}')))

    def token(**claims: Any) -> bool:
        payload = {"groups": ["users", "dev-web"], "realm": {"role": "team-lead"},
                   "email": "a@good.example", **claims}
        return admitted(claims=payload)

    assert token()
    assert token(groups="admins")  # a string claim: the value itself
    assert not token(groups=["users", "ops"])  # no element matches
    assert not token(realm={"role": "member"})
    assert not token(realm="team-lead")  # not nested: no such path
    assert not token(email="x@evil.example")
    assert not admitted()  # no token


def test_audiences_presenter_principal_with_several_values() -> None:
    admitted = decide(JWT, policy(when(
        "{key: request.auth.audiences, values: [web, mobile]}",
        '{key: request.auth.presenter, values: ["cli-*"]}',
        "{key: request.auth.principal, values: [issuer.example/alice, issuer.example/bob]}")))

    def token(aud: Any = "web", azp: str = "cli-1", sub: str = "alice") -> bool:
        return admitted(claims={"iss": "issuer.example", "sub": sub, "aud": aud, "azp": azp})

    assert token() and token(aud=["other", "mobile"]) and token(sub="bob")
    assert not token(aud=["other"]) and not token(azp="web") and not token(sub="carol")


def test_source_principal_and_namespace_wildcards() -> None:
    admitted = decide(policy(when(
        '{key: source.principal, values: ["cluster.local/ns/a/*", "*/sa/robot"]}',
        '{key: source.namespace, notValues: ["test-*"]}')))
    assert admitted(principal="spiffe://cluster.local/ns/a/sa/x")
    assert admitted(principal="spiffe://other.td/ns/b/sa/robot")
    assert not admitted(principal="spiffe://cluster.local/ns/b/sa/x")
    assert not admitted(principal="spiffe://cluster.local/ns/test-1/sa/robot")
    assert not admitted()  # plaintext: no principal at all
    namespaces = decide(policy(when('{key: source.namespace, values: ["prod-*", web]}')))
    assert namespaces(principal="spiffe://td/ns/prod-eu/sa/x")
    assert namespaces(principal="spiffe://td/ns/web/sa/x")
    assert not namespaces(principal="spiffe://td/ns/webx/sa/x")
    anyone = decide(policy(when('{key: source.principal, values: ["*"]}')))
    assert anyone(principal="spiffe://td/ns/a/sa/b") and not anyone()


def test_principals_and_namespaces_in_one_source_both_hold() -> None:
    admitted = decide(policy(
        '  - from: [{source: {principals: ["*/sa/robot", cluster.local/ns/ops/sa/admin], '
        'namespaces: [ops, "dev*"]}}]\n'))
    assert admitted(principal="spiffe://cluster.local/ns/ops/sa/robot")
    assert admitted(principal="spiffe://cluster.local/ns/dev1/sa/robot")
    assert admitted(principal="spiffe://cluster.local/ns/ops/sa/admin")
    assert not admitted(principal="spiffe://cluster.local/ns/web/sa/robot")  # namespace
    assert not admitted(principal="spiffe://cluster.local/ns/ops/sa/other")  # principal


def test_destination_ip_and_sni() -> None:
    admitted = decide(policy(when(
        "{key: destination.ip, values: [10.0.0.21, 192.168.0.0/16]}",
        '{key: connection.sni, values: ["*.example.com", "api.*"], notValues: [bad.example.com]}'
    )))
    assert admitted(destination_ip="10.0.0.21", sni="a.example.com")
    assert admitted(destination_ip="192.168.4.4", sni="api.internal")
    assert not admitted(destination_ip="10.0.0.22", sni="a.example.com")
    assert not admitted(destination_ip="10.0.0.21", sni="bad.example.com")
    assert not admitted(destination_ip="10.0.0.21", sni="example.org")
    assert not admitted(destination_ip="10.0.0.21")  # no TLS: no server name
    assert any("expected IPs or CIDRs" in e for e in errors(
        policy(when("{key: destination.ip, values: [nowhere]}"))))


def test_envoy_filter_metadata_values_and_list_elements() -> None:
    admitted = decide(policy(when(
        '{key: "experimental.envoy.filters.network.mysql_proxy[db.table]", '
        'values: ["[update]", "select*"], notValues: ["[drop]"]}')))

    def with_metadata(value: Any) -> bool:
        return admitted(metadata={"envoy.filters.network.mysql_proxy": {"db.table": value}})

    assert with_metadata(["insert", "update"]) and with_metadata("select-1")
    assert not with_metadata(["insert"]) and not with_metadata("update")  # not a list
    assert not with_metadata(["update", "drop"]) and not admitted()
    for key in ("experimental.envoy.filters.network.mysql_proxy",
                "experimental.envoy.filters.a[b][c]", "experimental.envoy.filters.a[]"):
        found = errors(policy(when(f'{{key: "{key}", values: [x]}}')))
        assert any("spec.rules[0].when[0].key: " in e and "expected experimental.envoy."
                   "filters.<filter name>[<metadata key>]" in e for e in found), found
    found = errors(policy(when('{key: "request.auth.claims[a]x", values: [x]}')))
    assert any("when[0].key: request.auth.claims[a]x: a claim is" in e for e in found), found


def test_peer_and_client_addresses_stay_apart() -> None:
    """ipBlocks and source.ip read the connection's peer, remoteIpBlocks and remote.ip the
    client's address (X-Forwarded-For behind trusted proxies): both given, both hold."""
    admitted = decide(policy(
        "  - from: [{source: {ipBlocks: [10.0.0.0/8], remoteIpBlocks: [203.0.113.0/24]}}]\n"
        "    when: [{key: remote.ip, notValues: [203.0.113.9]}]\n"))
    assert admitted(peer="10.1.1.1", client="203.0.113.5")
    assert not admitted(peer="10.1.1.1", client="198.51.100.1")
    assert not admitted(peer="192.168.1.1", client="203.0.113.5")
    assert not admitted(peer="10.1.1.1", client="203.0.113.9")
    (config,) = configs(load(policy("  - from: [{source: {remoteIpBlocks: [1.2.3.4]}}]\n")))
    assert "remoteIp" in str(config) and "directRemoteIp" not in str(config)


TCP_MESH = MESH.replace("name: http, protocol: HTTP", "name: tcp, protocol: TCP")


def test_tcp_workload_keeps_connection_conditions() -> None:
    """On a TCP workload an ALLOW rule with a header condition is left out; one on the
    destination address or the server name is kept (a connection has those)."""
    document = policy(when("{key: destination.ip, values: [10.0.0.21]}")
                      + when('{key: "request.headers[x]", values: [y]}'))
    model = load_policy_text("\n---\n".join((TCP_MESH, document)), "istio.yaml")
    snapshot = Translation(model).snapshot(VIEW)
    listener = Listener()
    listener.ParseFromString(next(r for n, r in snapshot.get(LISTENER).items()
                                  if n.startswith("inbound/")).body)
    (found,) = [MessageToDict(f)["typedConfig"] for c in listener.filter_chains
                for f in c.filters if f.name == NETWORK_RBAC]
    assert list(found["rules"]["policies"]) == ["rules[0]"]
    assert admits(found, {"destination_ip": "10.0.0.21"})
    assert not admits(found, {"destination_ip": "10.0.0.22"})


def _jwks() -> str:
    """A JWKS with one RSA public key (Envoy checks keys it is given)."""
    import base64
    import json

    from cryptography.hazmat.primitives.asymmetric import rsa

    numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key() \
        .public_numbers()

    def b64(value: int) -> str:
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return json.dumps({"keys": [{"kty": "RSA", "n": b64(numbers.n), "e": b64(numbers.e)}]})


@pytest.mark.envoy
def test_envoy_accepts_every_condition() -> None:
    from static_check import static_bootstrap

    from meshpilot.local.envoy_process import validate_config
    from meshpilot.xds.render import snapshot_to_dict

    model = load(JWT.replace("KEYS", _jwks()), policy(when(
        '{key: "request.headers[x]", values: [a, "b*", "*c", "*"], notValues: [d]}',
        '{key: "request.auth.claims[a][b]", values: [x, "y*"]}',
        "{key: request.auth.audiences, values: [web, mobile]}",
        '{key: source.namespace, values: ["p*"]}',
        '{key: source.principal, values: ["*/sa/x"]}',
        "{key: destination.ip, values: [10.0.0.0/8]}",
        '{key: connection.sni, values: ["*.example.com"]}',
        '{key: "experimental.envoy.filters.network.mysql_proxy[db.t]", values: ["[u]", v]}',
        "{key: remote.ip, values: [1.2.3.0/24]}")
        + '  - from: [{source: {principals: [a/ns/b/sa/c], namespaces: [b]}}]\n'))
    validate_config(static_bootstrap(snapshot_to_dict(Translation(model).snapshot(VIEW))))


# ---- Istio's RBAC builder goldens, decided on requests made of the policies' own values ----

GOLDEN = shared_folder() / "conformance" / "istio" / "authz-builder-golden" / "http"
GOLDEN_MESH = """
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: httpbin-1, namespace: foo, annotations: {meshpilot.io/app: "127.0.0.1:18000"}}
spec: {address: 10.0.0.1, labels: {app: httpbin, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: foo}
spec:
  hosts: [httpbin.foo.svc.cluster.local]
  ports: [{number: 8000, name: http}]
  location: MESH_INTERNAL
  workloadSelector: {labels: {app: httpbin}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  jwtRules: [{issuer: issuer.example, jwks: '{"keys": []}'}]
"""
# The goldens whose every field meshpilot reads (the CUSTOM ones: test_istio_authz.py; the
# trust domain aliases and trustDomains: not supported, docs/istio.md).
CONDITION_GOLDENS = ("allow-full-rule", "single-policy", "multiple-policies")


def _written(node: Any, key: str = "") -> list[tuple[str, str]]:
    """Every (field or condition key, value) a policy writes."""
    if isinstance(node, dict):
        if "key" in node and ("values" in node or "notValues" in node):
            return [(node["key"], v) for v in (*node.get("values", ()),
                                               *node.get("notValues", ()))]
        return [found for k, v in node.items() for found in _written(v, k)]
    if isinstance(node, list):
        return [found for item in node for found in _written(item, key)]
    return [(key, str(node))]


def _probes(policy: str, count: int = 3000) -> list[dict[str, Any]]:
    """Requests whose attributes are the policy's own values (a `*` made text, a CIDR its
    first address), or nothing, chosen at random with a fixed seed."""
    import ipaddress
    import random

    pools: dict[str, set[Any]] = {}

    def add(attribute: str, value: Any) -> None:
        pools.setdefault(attribute, {None}).add(value)

    for document in yaml.safe_load_all(policy):
        for key, value in _written(document):
            text = value.replace("*", "zz")
            if ("/" in value and value[0].isdigit()) or key in (
                    "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
                    "source.ip", "remote.ip", "destination.ip"):
                address = str(ipaddress.ip_network(value, strict=False).network_address)
                for attribute in ("peer", "client", "destination_ip"):
                    add(attribute, address)
            elif key in ("principals", "notPrincipals", "source.principal"):
                add("principal", f"spiffe://{text}")
                add("principal", f"spiffe://td/ns/{text}/sa/x")
            elif key in ("namespaces", "notNamespaces", "source.namespace"):
                add("principal", f"spiffe://td/ns/{text}/sa/x")
            elif key in ("ports", "notPorts", "destination.port"):
                add("port", int(value))
            elif key in ("methods", "notMethods"):
                add("method", text)
            elif key in ("paths", "notPaths"):
                add("path", text.replace("{zz}", "a").replace("{zzzz}", "a/b"))
            elif key in ("hosts", "notHosts", "connection.sni"):
                add("host", text)
                add("sni", text)
            elif key.startswith("request.headers["):
                add("header", (key[len("request.headers["):-1].lower(), text))
            elif key.startswith(("request.auth", "requestPrincipals", "notRequestPrincipals")):
                add("claim", text)
            elif key.startswith("experimental."):
                add("metadata", text)
    rng = random.Random(7)
    ordered = {k: sorted(v, key=repr) for k, v in pools.items()}
    probes = []
    for _ in range(count):
        pick = {k: rng.choice(v) for k, v in ordered.items()}
        claim = pick.pop("claim", None)
        header = pick.pop("header", None)
        metadata = pick.pop("metadata", None)
        request = {"path": "/none", "method": "NONE", **{k: v for k, v in pick.items()
                                                    if v is not None}}
        if claim is not None:
            issuer, _, subject = claim.rpartition("/")
            request["claims"] = {"iss": issuer or claim, "sub": subject, "aud": claim,
                                 "azp": claim, "nested1": {"nested2": [claim]}}
        if header is not None:
            request["headers"] = dict([header])
        if metadata is not None:
            request["metadata"] = {"envoy.filters.a.b": {"c": metadata}}
        probes.append(request)
    return probes


@pytest.mark.parametrize("case", CONDITION_GOLDENS)
def test_conditions_decide_as_istios_builder_golden(case: str) -> None:
    if not GOLDEN.is_dir():
        print(f"skipped: no {GOLDEN}")
        pytest.skip(f"no {GOLDEN}")
    policy = (GOLDEN / f"{case}-in.yaml").read_text()
    goldens = [yaml.safe_load(path.read_text())["typedConfig"]
               for path in sorted(GOLDEN.glob(f"{case}-out*.yaml"))]
    model = load_policy_text(GOLDEN_MESH + "---\n" + policy, f"{case}-in.yaml")
    routes = RouteConfiguration()
    routes.ParseFromString(Translation(model).snapshot("httpbin-1.foo").get(ROUTE)[
        "inbound/httpbin-1.foo"].body)
    (vhost,) = MessageToDict(routes)["virtualHosts"]
    ours = [c["rbac"] for n, c in vhost["typedPerFilterConfig"].items()
            if n.startswith("envoy.filters.http.rbac")]
    admitted = 0
    for request in _probes(policy):
        expected = all(admits(g, request) for g in goldens)
        assert all(admits(c, request) for c in ours) == expected, request
        admitted += expected
    # single-policy's and allow-full-rule's rules can hold for no request (a principal with
    # no namespace in it, notHosts "*" ...): refusing all, as Istio's, is the answer there.
    assert 0 < admitted < 3000 if case == "multiple-policies" else admitted == 0


# ---- the client's address at an ingress gateway: numTrustedProxies ----------------------------

GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: NAME, namespace: istio-system ANNOTATIONS}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: PORT, name: http, protocol: HTTP}, hosts: ["*"]}]
"""
MESH_CONFIG = """
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    defaultConfig:
      gatewayTopology: {numTrustedProxies: 2}
      holdApplicationUntilProxyStarts: true
"""


def gateway(name: str = "edge", port: int = 8080, proxy: str | None = None) -> str:
    notes = "" if proxy is None else f", annotations: {{proxy.istio.io/config: '{proxy}'}}"
    return GATEWAY.replace("NAME", name).replace("PORT", str(port)).replace(
        " ANNOTATIONS", notes)


def trusted_hops(model: Model) -> list[int | None]:
    found = model.gateway("istio=ingressgateway")
    assert found is not None
    return [None if listener.client_ip is None else listener.client_ip.xff_trusted_hops
            for listener in found.listeners]


def test_num_trusted_proxies_from_mesh_config_and_the_gateways_annotation() -> None:
    assert trusted_hops(load(gateway())) == [None]  # the peer is the client
    mesh = load(MESH_CONFIG, gateway())
    assert trusted_hops(mesh) == [2]
    assert any("ProxyConfig field holdApplicationUntilProxyStarts is not applied" in str(w)
               for w in mesh.warnings), mesh.warnings
    own = load(MESH_CONFIG, gateway(proxy="{gatewayTopology: {numTrustedProxies: 1}}"),
               gateway("second", 8081))
    assert trusted_hops(own) == [1, 1]  # every listener of the gateway's Envoys
    assert trusted_hops(load(MESH_CONFIG, gateway(
        proxy="gatewayTopology: {numTrustedProxies: 0}"))) == [None]
    listener = Listener()
    listener.ParseFromString(next(iter(Translation(own).snapshot("istio=ingressgateway").get(
        LISTENER).values())).body)
    assert _hops(listener) == 1


def _hops(listener: Listener) -> int:
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm,
    )
    manager = hcm.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager.xff_num_trusted_hops


def test_num_trusted_proxies_problems_are_errors_at_the_annotation() -> None:
    found = errors(gateway(proxy="{gatewayTopology: {numTrustedProxies: -1}}"))
    assert any("Gateway istio-system/edge: metadata.annotations[\"proxy.istio.io/config\"]: "
               "gatewayTopology.numTrustedProxies: must be from 0" in e for e in found), found
    found = errors(gateway(proxy="[1, 2"))
    assert any("expected ProxyConfig in YAML" in e for e in found), found
    found = errors(gateway(proxy="{gatewayTopology: {numTrustedProxies: 1}}"),
                   gateway("second", 8081, proxy="{gatewayTopology: {numTrustedProxies: 2}}"))
    assert any("Gateway istio-system/second: metadata.annotations[\"proxy.istio.io/config\"]: "
               "numTrustedProxies 2, and Gateway istio-system/edge" in e for e in found), found


HTTPS_GATEWAY = """
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: CERT, tls.key: KEY}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: cert}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http: [{route: [{destination: {host: reviews.default.svc.cluster.local}}]}]
"""


def test_a_tls_server_gets_the_tls_inspector_only_when_a_rule_reads_the_server_name() -> None:
    def inspectors(condition: str) -> list[str]:
        pair = CA().issue("edge.example.com")
        served = HTTPS_GATEWAY.replace("CERT", base64.b64encode(pair.cert_pem).decode()) \
            .replace("KEY", base64.b64encode(pair.key_pem).decode())
        model = load(served, "apiVersion: security.istio.io/v1\nkind: "
                     "AuthorizationPolicy\nmetadata: {name: p, namespace: istio-system}\n"
                     "spec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  rules:\n"
                     + when(condition))
        listener = Listener()
        listener.ParseFromString(next(iter(Translation(model).snapshot(
            "istio=ingressgateway").get(LISTENER).values())).body)
        return [f.name for f in listener.listener_filters]

    assert inspectors('{key: connection.sni, notValues: ["*.internal"]}') == [
        "envoy.filters.listener.tls_inspector"]
    assert inspectors('{key: "request.headers[x]", values: [y]}') == []
