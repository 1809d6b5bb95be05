"""Istio workloads with several ports (issue #13): every port of every ServiceEntry selecting a
WorkloadEntry is an inbound port of its sidecar, in that port's protocol, PeerAuthentication
mode (`portLevelMtls`) and application address (`meshpilot.io/app`), and AuthorizationPolicy's
`ports` and `destination.port` decide per port; callers get one cluster per port, whose auto
mTLS follows that port's mode."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from google.protobuf.json_format import MessageToDict
from rbac_eval import admits
from static_check import static_bootstrap

from meshpilot.base.errors import PolicyError
from meshpilot.base.types import CLUSTER, LISTENER, ROUTE
from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import InboundPort, Model, Sidecar
from meshpilot.local.envoy_process import validate_config
from meshpilot.translators import Translation
from meshpilot.translators.tcp_authorization import NETWORK_RBAC
from meshpilot.xds.render import snapshot_to_dict

SERVER = "reviews-v1.default"
CLIENT = "client-v1.default"
HTTP_SERVICE = "reviews.default.svc.cluster.local:9080"
TCP_SERVICE = "reviews.default.svc.cluster.local:9090"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  - {number: 9090, name: tcp, protocol: TCP, targetPort: 7090}
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-v1
  annotations: {meshpilot.io/app: "9080=127.0.0.1:19080, 7090=127.0.0.1:17090"}
spec:
  address: 10.0.0.21
  ports: {http: 9080}
  labels: {app: reviews, security.istio.io/tlsMode: istio}
  serviceAccount: reviews
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client-v1}
spec: {address: 10.0.0.31, labels: {app: client, security.istio.io/tlsMode: istio},
       serviceAccount: client}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: STRICT}
  portLevelMtls: {7090: {mode: DISABLE}}
"""


def load(*documents: str, mesh: str = MESH) -> Model:
    return load_policy_text("\n---\n".join((mesh, *documents)), "istio.yaml")


def errors(*documents: str, mesh: str = MESH) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(*documents, mesh=mesh)
    return [str(issue) for issue in caught.value.issues]


def sidecar_of(model: Model, view: str = SERVER) -> Sidecar:
    service = model.service(view)
    assert service is not None and service.sidecar is not None
    return service.sidecar


_MESSAGES: dict[str, Any] = {LISTENER: Listener, CLUSTER: Cluster, ROUTE: RouteConfiguration}


def dumped(model: Model, view: str, type_url: str, name: str) -> dict[str, Any]:
    resource = Translation(model).snapshot(view).get(type_url)[name]
    message = _MESSAGES[type_url]()
    message.ParseFromString(resource.body)
    return MessageToDict(message)


def test_every_port_is_an_inbound_with_its_protocol_mode_and_application() -> None:
    sidecar = sidecar_of(load())
    # The http port at the WorkloadEntry's named port, the tcp one at its targetPort (Istio's
    # rule), each forwarding to the application the annotation names for it.
    assert (sidecar.port, sidecar.app_host, sidecar.app_port) == (9080, "127.0.0.1", 19080)
    assert sidecar.more_ports == (InboundPort(7090, "127.0.0.1", 17090, protocol="tcp"),)
    assert (sidecar.mode_of(9080), sidecar.mode_of(7090)) == ("strict", "off")
    model = load()
    http = dumped(model, SERVER, LISTENER, f"inbound/{SERVER}")
    tcp = dumped(model, SERVER, LISTENER, f"inbound/{SERVER}:7090")
    assert http["address"]["socketAddress"] == {"address": "10.0.0.21", "portValue": 9080}
    assert tcp["address"]["socketAddress"] == {"address": "10.0.0.21", "portValue": 7090}
    assert "transportSocket" in http["filterChains"][0]  # STRICT: TLS only
    assert [f["name"] for f in tcp["filterChains"][0]["filters"]] == [
        "envoy.filters.network.tcp_proxy"]
    assert "transportSocket" not in tcp["filterChains"][0]  # DISABLE: plaintext
    app = dumped(model, SERVER, CLUSTER, f"inbound|{SERVER}:7090")
    endpoint = app["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]
    assert endpoint["address"]["socketAddress"] == {"address": "127.0.0.1", "portValue": 17090}


def test_callers_get_a_cluster_per_port_whose_mtls_follows_that_ports_mode() -> None:
    model = load()
    http = dumped(model, CLIENT, CLUSTER, HTTP_SERVICE)
    tcp = dumped(model, CLIENT, CLUSTER, TCP_SERVICE)
    assert "transportSocket" in http or "transportSocketMatches" in http  # STRICT: mTLS
    assert "transportSocket" not in tcp and "transportSocketMatches" not in tcp  # DISABLE
    tcp_service = model.service(TCP_SERVICE)
    assert tcp_service is not None
    assert [(e.host, e.port) for e in tcp_service.endpoints] == [("10.0.0.21", 7090)]
    # The other way round: the tcp port STRICT, the http one PERMISSIVE.
    flipped = MESH.replace("mtls: {mode: STRICT}", "mtls: {mode: PERMISSIVE}").replace(
        "{7090: {mode: DISABLE}}", "{7090: {mode: STRICT}}")
    model = load(mesh=flipped)
    assert (sidecar_of(model).mode_of(9080), sidecar_of(model).mode_of(7090)) == (
        "permissive", "strict")
    tcp = dumped(model, CLIENT, CLUSTER, TCP_SERVICE)
    assert "transportSocket" in tcp or "transportSocketMatches" in tcp
    inbound = dumped(model, SERVER, LISTENER, f"inbound/{SERVER}")
    assert len(inbound["filterChains"]) == 2  # PERMISSIVE: an mTLS and a plaintext chain


def test_a_workload_serving_two_service_entries_gets_both_ports() -> None:
    ratings = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9180, name: http-ratings, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
"""
    sidecar = sidecar_of(load(ratings))
    # Hosts in order: ratings' port first, then reviews' two; no annotation entry for 9180:
    # the application is at 127.0.0.1:9180.
    assert [(p.port, p.app_host, p.app_port, p.protocol) for p in sidecar.inbound_ports()] == [
        (9180, "127.0.0.1", 9180, None), (9080, "127.0.0.1", 19080, "http"),
        (7090, "127.0.0.1", 17090, "tcp")]
    assert [sidecar.mode_of(p) for p in (9180, 9080, 7090)] == ["strict", "strict", "off"]


def test_without_the_annotation_each_application_is_on_loopback_at_its_port() -> None:
    mesh = MESH.replace('  annotations: {meshpilot.io/app: "9080=127.0.0.1:19080, '
                        '7090=127.0.0.1:17090"}\n', "")
    sidecar = sidecar_of(load(mesh=mesh))
    assert [(p.port, p.app_host, p.app_port) for p in sidecar.inbound_ports()] == [
        (9080, "127.0.0.1", 9080), (7090, "127.0.0.1", 7090)]
    # The single-address form still names the first port's application.
    one = MESH.replace('"9080=127.0.0.1:19080, 7090=127.0.0.1:17090"', '"127.0.0.1:19080"')
    sidecar = sidecar_of(load(mesh=one))
    assert [(p.port, p.app_port) for p in sidecar.inbound_ports()] == [(9080, 19080),
                                                                       (7090, 7090)]


def _rbac_of_http_port(model: Model) -> dict[str, Any]:
    (vhost,) = dumped(model, SERVER, ROUTE, f"inbound/{SERVER}")["virtualHosts"]
    return {name: config["rbac"] for name, config in vhost["typedPerFilterConfig"].items()
            if name.startswith("envoy.filters.http.rbac")}


def _rbac_of_tcp_port(model: Model) -> dict[str, Any]:
    listener = dumped(model, SERVER, LISTENER, f"inbound/{SERVER}:7090")
    return {f["typedConfig"]["statPrefix"]: f["typedConfig"]
            for f in listener["filterChains"][0]["filters"] if f["name"] == NETWORK_RBAC}


def test_authorization_ports_apply_per_port() -> None:
    # ALLOW the client on the http port only (to.operation.ports), and anyone on the tcp port
    # by destination.port.
    model = load("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]
    to: [{operation: {ports: ["9080"]}}]
  - when: [{key: destination.port, values: ["7090"]}]
""")
    (allow,) = _rbac_of_http_port(model).values()
    assert admits(allow, {"principal": CLIENT_ID, "port": 9080, "path": "/", "method": "GET"})
    assert not admits(allow, {"principal": "spiffe://cluster.local/ns/default/sa/other",
                              "port": 9080, "path": "/", "method": "GET"})
    (tcp_allow,) = _rbac_of_tcp_port(model).values()
    assert admits(tcp_allow, {"principal": None, "port": 7090})
    # Only the port decides on the tcp listener: the http port's rule never holds there.
    model = load("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-closed}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules: [{to: [{operation: {ports: ["7090"]}}]}]
""")
    (deny,) = _rbac_of_http_port(model).values()
    assert admits(deny, {"principal": CLIENT_ID, "port": 9080, "path": "/", "method": "GET"})
    ((prefix, tcp_deny),) = _rbac_of_tcp_port(model).items()
    assert prefix.endswith(".deny.")
    assert not admits(tcp_deny, {"principal": CLIENT_ID, "port": 7090})


def test_errors_of_several_ports() -> None:
    # An annotation entry for a port the sidecar does not have, and a malformed entry.
    found = errors(mesh=MESH.replace("7090=127.0.0.1:17090", "7091=127.0.0.1:17090"))
    assert any("meshpilot.io/app" in e and "port 7091 is not an inbound port of this "
               "workload's sidecar (its inbound ports: 9080, 7090)" in e for e in found), found
    found = errors(mesh=MESH.replace("7090=127.0.0.1:17090", "7090"))
    assert any("invalid entry \"7090\": expected PORT=ADDRESS" in e for e in found), found
    # On loopback, an application may not sit on another port's inbound listener.
    loopback = MESH.replace("address: 10.0.0.21", "address: 127.0.0.1").replace(
        "7090=127.0.0.1:17090", "7090=127.0.0.1:9080")
    found = errors(mesh=loopback)
    assert any("spec.address: the application of inbound port 7090 cannot listen on the "
               "sidecar's inbound 127.0.0.1:9080" in e for e in found), found
    # One workload port cannot serve an http and a tcp Service.
    clash = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: zdb}
spec:
  hosts: [zdb.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: mysql, protocol: TCP}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
"""
    found = errors(clash)
    assert any("ServiceEntry default/zdb: spec.ports[0]: WorkloadEntry default/reviews-v1's "
               "port 9080 serves reviews.default.svc.cluster.local:9080 (http) already" in e
               for e in found), found


def test_custom_on_a_workload_with_a_tcp_port_is_refused() -> None:
    config_map = """
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    extensionProviders:
    - name: authz
      envoyExtAuthzHttp: {service: reviews.default.svc.cluster.local, port: "9080"}
"""
    found = errors(config_map, """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext}
spec:
  selector: {matchLabels: {app: reviews}}
  action: CUSTOM
  provider: {name: authz}
  rules: [{to: [{operation: {paths: ["/x"]}}]}]
""")
    assert any("action CUSTOM for a workload serving TCP" in e for e in found), found


def test_envoy_accepts_a_sidecar_with_several_ports() -> None:
    model = load()
    for view in (SERVER, CLIENT):  # raises when Envoy refuses the configuration
        validate_config(static_bootstrap(snapshot_to_dict(Translation(model).snapshot(view))))
