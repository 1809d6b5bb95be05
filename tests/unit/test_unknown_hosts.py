"""A sidecar's unknown hosts (issue #13): what its Host-routed outbound port does with a Host no
callee answers to. Native `sidecar.unknown_hosts` (passthrough | refuse; unwritten: no
catch-all), Istio's `outboundTrafficPolicy.mode` of MeshConfig and of the Sidecar resource
(the workload's own, then its namespace's, then the root namespace's; Istio's default
ALLOW_ANY), and the catch-all virtual host, cluster and filters the view receives."""

from __future__ import annotations

import re

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)

from meshpilot.base import types
from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import Model
from meshpilot.translators import Translation, names
from meshpilot.translators.httpfilters.dynamic_forward_proxy import DYNAMIC_FORWARD_PROXY
from meshpilot.translators.sidecar import PASSED_THROUGH_HEADER

NATIVE = """
kind: Service
name: a
sidecar: {outbound_port: 15001, calls: [b]UNKNOWN}
---
kind: Service
name: b
endpoints: [10.0.0.2:15006]
sidecar: {port: 15006}
"""


def native(unknown: str | None) -> Model:
    written = "" if unknown is None else f", unknown_hosts: {unknown}"
    return load_policy_text(NATIVE.replace("UNKNOWN", written), "policy.yaml")


def issues(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "policy.yaml")
    return [re.sub(r":\d+:\d+:", ":L:C:", str(issue), count=1) for issue in caught.value.issues]


def outbound_of(model: Model, view: str) -> tuple[RouteConfiguration, hcm.HttpConnectionManager,
                                                  dict[str, Cluster]]:
    snapshot = Translation(model).snapshot(view)
    routes = RouteConfiguration()
    routes.ParseFromString(snapshot.get(types.ROUTE)[names.OUTBOUND].body)
    listener = Listener()
    listener.ParseFromString(snapshot.get(types.LISTENER)[names.OUTBOUND].body)
    manager = hcm.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    clusters = {}
    for name, resource in snapshot.get(types.CLUSTER).items():
        cluster = Cluster()
        cluster.ParseFromString(resource.body)
        clusters[name] = cluster
    return routes, manager, clusters


def test_native_unknown_hosts_is_read() -> None:
    assert native(None).service("a").sidecar.unknown_hosts is None  # type: ignore[union-attr]
    assert native("refuse").service("a").sidecar.unknown_hosts == "refuse"  # type: ignore
    assert native("passthrough").service("a").sidecar.unknown_hosts == "passthrough"  # type: ignore


@pytest.mark.parametrize(("text", "expected"), [
    (NATIVE.replace("UNKNOWN", ", unknown_hosts: allow"),
     'policy.yaml:L:C: Service a: sidecar.unknown_hosts: unknown value "allow"'),
    (NATIVE.replace("outbound_port: 15001, calls: [b]UNKNOWN",
                    "calls: [{service: b, local_port: 9001}], unknown_hosts: refuse"),
     "policy.yaml:L:C: Service a: sidecar.unknown_hosts: unknown_hosts is the outbound port's "
     "catch-all; it needs outbound_port"),
])
def test_native_unknown_hosts_errors(text: str, expected: str) -> None:
    found = issues(text)
    assert any(issue.startswith(expected) for issue in found), found


def test_unwritten_keeps_no_catch_all() -> None:
    routes, manager, clusters = outbound_of(native(None), "a")
    assert [v.name for v in routes.virtual_hosts] == ["b"]
    assert DYNAMIC_FORWARD_PROXY not in [f.name for f in manager.http_filters]
    assert not manager.HasField("local_reply_config")
    assert names.PASSTHROUGH_CLUSTER not in clusters and names.BLACKHOLE_CLUSTER not in clusters


def test_refuse_sends_unknown_hosts_to_the_black_hole_as_502() -> None:
    routes, manager, clusters = outbound_of(native("refuse"), "a")
    last = routes.virtual_hosts[-1]
    assert (last.name, list(last.domains)) == (names.UNKNOWN_HOSTS, ["*"])
    assert last.routes[0].route.cluster == names.BLACKHOLE_CLUSTER
    blackhole = clusters[names.BLACKHOLE_CLUSTER]
    assert blackhole.type == Cluster.STATIC and not blackhole.load_assignment.endpoints
    (mapper,) = manager.local_reply_config.mappers
    assert mapper.status_code.value == 502
    assert names.BLACKHOLE_CLUSTER in str(mapper.filter)  # only the black hole's 503s
    assert DYNAMIC_FORWARD_PROXY not in [f.name for f in manager.http_filters]


def test_passthrough_forwards_through_the_dynamic_forward_proxy() -> None:
    routes, manager, clusters = outbound_of(native("passthrough"), "a")
    last = routes.virtual_hosts[-1]
    assert list(last.domains) == ["*"]
    # A request passed through once (marked) that comes back is refused, not sent again.
    looped, forward = last.routes
    assert looped.match.headers[0].name == PASSED_THROUGH_HEADER
    assert looped.direct_response.status == 508
    assert forward.route.cluster == names.PASSTHROUGH_CLUSTER
    assert [h.header.key for h in forward.request_headers_to_add] == [PASSED_THROUGH_HEADER]
    passthrough = clusters[names.PASSTHROUGH_CLUSTER]
    assert passthrough.cluster_type.name == "envoy.clusters.dynamic_forward_proxy"
    assert passthrough.lb_policy == Cluster.CLUSTER_PROVIDED
    filters = [f.name for f in manager.http_filters]
    assert filters[-2:] == [DYNAMIC_FORWARD_PROXY, "envoy.filters.http.router"]
    assert not manager.HasField("local_reply_config")


def test_local_port_listeners_get_no_catch_all() -> None:
    text = NATIVE.replace("calls: [b]UNKNOWN",
                          "calls: [{service: b, local_port: 9001}], unknown_hosts: passthrough")
    snapshot = Translation(load_policy_text(text)).snapshot("a")
    local = RouteConfiguration()
    local.ParseFromString(snapshot.get(types.ROUTE)[names.outbound("b")].body)
    assert [v.name for v in local.virtual_hosts] == ["b"]


# ---- Istio ---------------------------------------------------------------------------------------

ISTIO = """
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
metadata: {name: client}
spec: {address: 10.0.0.30, labels: {app: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other}
spec: {address: 10.0.0.31, labels: {app: other}}
"""


def mesh_config(mode: str) -> str:
    return f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |-
    outboundTrafficPolicy:
      mode: {mode}
"""


def sidecar(name: str, mode: str, namespace: str = "default", selector: str = "") -> str:
    chosen = f"\n  workloadSelector: {{labels: {{{selector}}}}}" if selector else ""
    return f"""
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {name}, namespace: {namespace}}}
spec:{chosen}
  egress: [{{hosts: ["*/*"]}}]
  outboundTrafficPolicy: {{mode: {mode}}}
"""


def unknown_hosts(*documents: str, workload: str = "client.default") -> str | None:
    model = load_policy_text("\n---\n".join((ISTIO, *documents)), "istio.yaml")
    found = model.service(workload)
    assert found is not None and found.sidecar is not None
    return found.sidecar.unknown_hosts


def test_istio_default_is_allow_any() -> None:
    assert unknown_hosts() == "passthrough"


def test_istio_mesh_config_registry_only() -> None:
    assert unknown_hosts(mesh_config("REGISTRY_ONLY")) == "refuse"
    assert unknown_hosts(mesh_config("ALLOW_ANY")) == "passthrough"


def test_istio_sidecar_resource_comes_before_mesh_config() -> None:
    mesh = mesh_config("REGISTRY_ONLY")
    assert unknown_hosts(mesh, sidecar("root", "ALLOW_ANY", "istio-system")) == "passthrough"
    namespace = sidecar("default", "REGISTRY_ONLY")
    assert unknown_hosts(sidecar("root", "ALLOW_ANY", "istio-system"), namespace) == "refuse"
    own = sidecar("client", "ALLOW_ANY", selector="app: client")
    assert unknown_hosts(mesh, namespace, own) == "passthrough"
    assert unknown_hosts(mesh, namespace, own, workload="other.default") == "refuse"


def test_istio_sidecar_without_a_mode_takes_mesh_config() -> None:
    scoped = sidecar("default", "REGISTRY_ONLY").replace(
        "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n", "  outboundTrafficPolicy: {}\n")
    assert unknown_hosts(mesh_config("REGISTRY_ONLY"), scoped) == "refuse"
    assert unknown_hosts(scoped) == "passthrough"


def test_istio_outbound_mode_errors_are_positioned() -> None:
    found = issues("\n---\n".join((ISTIO, sidecar("default", "DENY_ALL"))))
    assert any(re.match(r'policy\.yaml:L:C: Sidecar default/default: '
                        r'spec\.outboundTrafficPolicy\.mode: unknown value "DENY_ALL"', issue)
               for issue in found), found
    found = issues("\n---\n".join((ISTIO, mesh_config("NOPE"))))
    assert any("data.mesh.outboundTrafficPolicy.mode: unknown value \"NOPE\"" in issue
               for issue in found), found
    proxy = sidecar("default", "ALLOW_ANY").replace(
        "{mode: ALLOW_ANY}", "{mode: ALLOW_ANY, egressProxy: {host: egress}}")
    found = issues("\n---\n".join((ISTIO, proxy)))
    assert any("spec.outboundTrafficPolicy.egressProxy: egressProxy is not supported yet"
               in issue for issue in found), found


def test_istio_registry_only_reaches_the_view() -> None:
    model = load_policy_text("\n---\n".join((ISTIO, mesh_config("REGISTRY_ONLY"))), "istio.yaml")
    routes, manager, clusters = outbound_of(model, "client.default")
    assert routes.virtual_hosts[-1].routes[0].route.cluster == names.BLACKHOLE_CLUSTER
    assert names.BLACKHOLE_CLUSTER in clusters
    assert manager.local_reply_config.mappers[0].status_code.value == 502
