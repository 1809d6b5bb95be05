"""Sidecars with several inbound ports, each with its own mTLS mode (docs/policy.md#sidecar):
the `ports:` list as the loader reads and checks it, and the listeners, clusters and route
configurations a sidecar's view then receives. Traffic: tests/e2e/test_mesh_ports.py."""

from __future__ import annotations

import re

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_pb2 import Listener

from meshpilot.base import types
from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import InboundPort
from meshpilot.translators import Translation, provenance

POLICY = """
kind: Service
name: b
endpoints: ["10.0.0.2:15006"]
sidecar:
  mtls: strict
  ports:
    - {port: 15006, app: 9080}
    - {port: 15007, app: "10.0.0.9:9090", protocol: tcp, mtls: permissive}
    - {port: 15008, app: 9091, mtls: off}
---
kind: Service
name: a
endpoints: ["10.0.0.1:15006"]
sidecar: {port: 15006, app: 9080, calls: [{service: b, local_port: 9001}]}
"""


def issues(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text)
    return [re.sub(r":\d+:\d+:", ":L:C:", str(issue), count=1) for issue in caught.value.issues]


def test_ports_are_read_the_first_as_the_sidecars_port() -> None:
    sidecar = load_policy_text(POLICY).service("b").sidecar
    assert sidecar is not None
    assert (sidecar.port, sidecar.app_host, sidecar.app_port) == (15006, "127.0.0.1", 9080)
    assert sidecar.more_ports == (InboundPort(15007, "10.0.0.9", 9090, "tcp"),
                                  InboundPort(15008, "127.0.0.1", 9091))
    assert sidecar.port_modes == ((15007, "permissive"), (15008, "off"))
    assert [sidecar.mode_of(p) for p in (15006, 15007, 15008)] == ["strict", "permissive", "off"]


def _listeners(view: str) -> dict[str, Listener]:
    snapshot = Translation(load_policy_text(POLICY)).snapshot(view)
    listeners = snapshot.get(types.LISTENER)
    return {name: Listener.FromString(listeners[name].body) for name in listeners}


def test_each_port_is_a_listener_with_its_own_mode() -> None:
    listeners = _listeners("b")
    assert sorted(listeners) == ["inbound/b", "inbound/b:15007", "inbound/b:15008"]
    strict, permissive, off = (listeners[n] for n in sorted(listeners))
    assert [c.filter_chain_match.transport_protocol for c in strict.filter_chains] == [""]
    assert strict.filter_chains[0].HasField("transport_socket")
    assert [c.filter_chain_match.transport_protocol for c in permissive.filter_chains] == \
        ["tls", "raw_buffer"]
    assert permissive.filter_chains[0].filters[0].name == "envoy.filters.network.tcp_proxy"
    assert not off.filter_chains[0].HasField("transport_socket")
    assert off.address.socket_address.port_value == 15008


def test_each_port_forwards_to_its_own_application() -> None:
    snapshot = Translation(load_policy_text(POLICY)).snapshot("b")
    assert sorted(snapshot.get(types.CLUSTER).names()) == \
        ["inbound|b", "inbound|b:15007", "inbound|b:15008"]
    assert sorted(snapshot.get(types.ROUTE).names()) == ["inbound/b", "inbound/b:15008"]
    tcp = Cluster.FromString(snapshot.get(types.CLUSTER)["inbound|b:15007"].body)
    address = tcp.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("10.0.0.9", 9090)


def test_callers_speak_mtls_by_the_first_ports_mode() -> None:
    snapshot = Translation(load_policy_text(POLICY)).snapshot("a")
    assert Cluster.FromString(snapshot.get(types.CLUSTER)["b"].body).HasField("transport_socket")


def test_a_further_ports_cluster_leads_to_its_entry() -> None:
    model = load_policy_text(POLICY)
    origins = provenance.origins_of(model, "b", types.CLUSTER, "inbound|b:15007")
    assert origins and origins[0].field == "sidecar.ports[1]"


@pytest.mark.parametrize(("sidecar", "message"), [
    ("{port: 15006, ports: [{port: 15007, app: 9090}]}",
     "sidecar.port: port is the single inbound port's; with ports, each entry says its own"),
    ("{ports: [{port: 15006}]}", 'sidecar.ports[0].app: missing "app"'),
    ("{ports: [{port: 15006, app: 9080}, {port: 15006, app: 9081}]}",
     "sidecar.ports[1].port: port 15006 is listed twice"),
    ("{ports: [{port: 15006, app: 15006}]}",
     "sidecar.ports[0].app: the application cannot listen on the sidecar's own inbound port"),
    ("{ports: [{port: 15006, app: 9080, mtls: sometimes}]}", "sidecar.ports[0].mtls"),
    ("{ports: [{port: 15006, app: 9080, protocol: udp}]}", "sidecar.ports[0].protocol"),
    ("{ports: [{port: 15006, app: 9080, mode: strict}]}", "sidecar.ports[0].mode: unknown key"),
    ("{ports: []}", "sidecar.ports: must list at least one inbound port"),
    ("{ports: [{port: 15006, app: 9080}], outbound_port: 15006}",
     "sidecar.outbound_port: port 15006 is already the inbound port"),
    ("{ports: [{port: 15006, app: 9080, protocol: tcp}], authorization: {rules: []}}",
     "sidecar.authorization: authorization by path, method and caller needs an HTTP service"),
    ("{ports: [{port: 15006, app: 9080, mtls: off}], mtls: off, "
     "authorization: {rules: [{from: [a]}]}}", "need mtls strict or permissive"),
])
def test_ports_errors(sidecar: str, message: str) -> None:
    found = issues(f"kind: Service\nname: b\nendpoints: [10.0.0.2:15006]\nsidecar: {sidecar}\n"
                   "---\nkind: Service\nname: a\nendpoints: [10.0.0.1:1]\n")
    assert any(message in issue for issue in found), found


def test_a_port_of_its_own_mode_may_carry_from_rules_the_sidecar_default_would_not() -> None:
    model = load_policy_text(
        "kind: Service\nname: b\nendpoints: [10.0.0.2:15006]\nsidecar: {mtls: off, ports: "
        "[{port: 15006, app: 9080, mtls: strict}], authorization: {rules: [{from: [a]}]}}\n"
        "---\nkind: Service\nname: a\nendpoints: [10.0.0.1:1]\n")
    sidecar = model.service("b").sidecar
    assert sidecar is not None and sidecar.mode_of(15006) == "strict"


SERVED = """
kind: Service
name: b
endpoints: ["10.0.0.2:15006"]
sidecar:
  mtls: strict
  ports:
    - {port: 15006, app: 9080}
    - {port: 15432, app: 5432, protocol: tcp, service: b-db}
---
kind: Service
name: b-db
protocol: tcp
endpoints: ["10.0.0.2:15432", "10.0.0.3:15432"]
---
kind: Service
name: a
endpoints: ["10.0.0.1:15006"]
sidecar: {port: 15006, app: 9080, calls: [{service: b-db, local_port: 5432}]}
"""


def test_a_further_port_marks_the_service_it_serves_as_the_sidecars_workloads() -> None:
    model = load_policy_text(SERVED)
    assert [e.mtls_identity for e in model.service("b-db").endpoints] == \
        ["ns/default/sa/b", "ns/default/sa/b"]
    cluster = Cluster.FromString(Translation(model).snapshot("a").get(types.CLUSTER)["b-db"].body)
    assert cluster.HasField("transport_socket")  # the caller speaks mTLS, accepting b's ID
    off = load_policy_text(SERVED.replace("service: b-db}", "service: b-db, mtls: off}"))
    assert [e.mtls_identity for e in off.service("b-db").endpoints] == [None, None]


@pytest.mark.parametrize(("edit", "message"), [
    (("service: b-db}", "service: nope}"), 'sidecar.ports[1].service: no Service named "nope"'),
    (("service: b-db}", "service: b}"), "a further port serves another Service"),
    (("service: b-db}", "service: a}"), "Service a has a sidecar of its own"),
    (("protocol: tcp, service", "service"), "Service b-db speaks protocol tcp, this port http"),
    (('"10.0.0.3:15432"', '"10.0.0.3:5432"'), "Service b-db's endpoint 10.0.0.3:5432 is not on "
                                              "port 15432"),
    (("- {port: 15006, app: 9080}", "- {port: 15006, app: 9080, service: b-db}"),
     "sidecar.ports[0].service: the first port serves this Service itself"),
])
def test_served_service_errors(edit: tuple[str, str], message: str) -> None:
    found = issues(SERVED.replace(*edit))
    assert any(message in issue for issue in found), found
