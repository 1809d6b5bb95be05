"""Istio's Sidecar `egress[].port` (issue #13): an egress listener with a port takes the
services of its hosts that have that port, on a Host-routed listener 127.0.0.1:<port> of its
own (meshpilot's sidecars bind loopback and capture nothing: Istio's `bind: 127.0.0.1`,
`captureMode: NONE`); TCP ones keep their local port. The listeners without a port make up
the outbound port's hosts."""

from __future__ import annotations

import re

import pytest
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration

from meshpilot.base import types
from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import Call, Model
from meshpilot.translators import Translation, names

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9090, name: admin}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.5}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.6}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.7}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client}
spec: {address: 10.0.0.30, labels: {app: client}}
"""
REVIEWS = "reviews.default.svc.cluster.local:9080"
ADMIN = "reviews.default.svc.cluster.local:9090"
RATINGS = "ratings.default.svc.cluster.local:9080"
DB = "db.default.svc.cluster.local:5432"


def load(sidecar: str) -> Model:
    return load_policy_text(f"{MESH}---\n{sidecar}", "istio.yaml")


def calls(sidecar: str) -> list[Call]:
    found = load(sidecar).service("client.default")
    assert found is not None and found.sidecar is not None
    return sorted(found.sidecar.calls, key=lambda c: (c.service, c.egress_port or 0))


def errors(sidecar: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(sidecar)
    return [re.sub(r":\d+:\d+:", ":L:C:", str(i), count=1) for i in caught.value.issues]


SIDECAR = """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress:
"""


def test_a_port_listener_takes_its_hosts_services_of_that_port() -> None:
    found = calls(SIDECAR + """  - port: {number: 9080, protocol: HTTP, name: http}
    hosts: ["./reviews.default.svc.cluster.local"]
  - hosts: ["./ratings.default.svc.cluster.local"]
""")
    # reviews:9080 on the egress port; reviews:9090 is not of that port; ratings by default.
    assert [(c.service, c.egress_port) for c in found] == [(RATINGS, None), (REVIEWS, 9080)]


def test_a_tcp_port_listener_gives_its_services_their_local_port() -> None:
    found = calls(SIDECAR + """  - port: {number: 5432, protocol: TCP}
    hosts: ["./*"]
""")
    assert [(c.service, c.local_port, c.egress_port) for c in found] == [(DB, 5432, None)]


def test_the_view_gets_a_listener_and_routes_per_egress_port() -> None:
    model = load(SIDECAR + """  - port: {number: 9080}
    hosts: ["./*"]
  - hosts: ["./ratings.default.svc.cluster.local"]
""")
    snapshot = Translation(model).snapshot("client.default")
    name = names.egress_port(9080)
    listener = Listener()
    listener.ParseFromString(snapshot.get(types.LISTENER)[name].body)
    address = listener.address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.1", 9080)
    routes = RouteConfiguration()
    routes.ParseFromString(snapshot.get(types.ROUTE)[name].body)
    # both services of port 9080, answering to HOST:9080; then Istio's ALLOW_ANY catch-all
    hosts = [v.name for v in routes.virtual_hosts]
    assert hosts[:2] == [RATINGS, REVIEWS] and hosts[2] == names.UNKNOWN_HOSTS
    assert REVIEWS in routes.virtual_hosts[1].domains
    outbound = RouteConfiguration()
    outbound.ParseFromString(snapshot.get(types.ROUTE)[names.OUTBOUND].body)
    assert [v.name for v in outbound.virtual_hosts] == [RATINGS, names.UNKNOWN_HOSTS]
    assert {REVIEWS, RATINGS} <= set(snapshot.get(types.CLUSTER).names())


def test_egress_port_errors_are_positioned() -> None:
    found = errors(SIDECAR + """  - port: {number: 15001}
    hosts: ["./*"]
""")
    assert any(e.startswith("istio.yaml:L:C: Sidecar default/default: spec.egress[0].port: "
                            "egress port 15001 is the outbound port of workload "
                            "default/client") for e in found), found
    found = errors(SIDECAR + """  - port: {number: 9080}
    hosts: ["./*"]
  - port: {number: 9080}
    hosts: ["./*"]
""")
    assert any("spec.egress[1].port: another egress listener has port 9080" in e
               for e in found), found
    found = errors(SIDECAR + """  - port: {protocol: HTTP}
    hosts: ["./*"]
""")
    assert any("spec.egress[0].port.number" in e for e in found), found
