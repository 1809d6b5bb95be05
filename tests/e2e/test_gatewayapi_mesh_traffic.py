"""GAMMA end to end: an HTTPRoute whose parent is the Service `b` shapes what A's sidecar sends
when A's application calls b. Two real Envoys as sidecars on loopback (node cluster = the
Service's name), served by `meshpilot serve`, echo servers as the applications."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import eventually, served_policy
from test_mesh import Mesh

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: a
endpoints: ["127.0.0.1:{a_in}"]
sidecar:
  port: {a_in}
  address: 127.0.0.1
  app: 127.0.0.1:{app_a}
  outbound_port: {a_out}
  calls: [{{service: b, local_port: {a_to_b}}}]
---
kind: Service
name: b
endpoints: ["127.0.0.1:{b_in}"]
sidecar: {{port: {b_in}, address: 127.0.0.1, app: {app_b}}}
---
kind: Service
name: b2                      # a canary without a sidecar: called directly
endpoints: ["127.0.0.1:{app_b2}"]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: b-canary, namespace: default}}
spec:
  parentRefs: [{{group: "", kind: Service, name: b, port: 80}}]
  rules:
  - matches: [{{headers: [{{name: x-version, value: v2}}]}}]
    backendRefs: [{{name: b2, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /split}}}}]
    backendRefs: [{{name: b, port: 80, weight: 1}}, {{name: b2, port: 80, weight: 1}}]
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-gamma, value: b-canary}}]}}
    backendRefs: [{{name: b, port: 80}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("gamma-e2e")
    apps = {f"app_{name}": EchoServer(name) for name in ("a", "b", "b2")}
    with served_policy(work, "mesh.yaml", POLICY, apps,
                       free_ports=("a_in", "b_in", "a_out", "a_to_b"),
                       envoys={"a": "sidecar-a", "b": "sidecar-b"}) as served:
        environment = Mesh(served.ports, served.envoys, served.mp)
        eventually(lambda: environment.get("a_to_b")[0] == 200, timeout=20,
                   what="A's sidecar to reach B through B's sidecar")
        yield environment


def test_the_service_parents_rules_decide_where_a_call_to_b_goes(mesh: Mesh) -> None:
    seen = mesh.echo("a_to_b", "/hello")
    assert seen["backend"] == "b"
    assert seen["headers"]["x-gamma"] == "b-canary"
    eventually(lambda: mesh.stat("b", "http.inbound/b.downstream_rq_total") >= 1,
               what="B's sidecar to have taken the call")
    assert mesh.echo("a_to_b", "/hello", x_version="v2")["backend"] == "b2"
    # The same virtual host on the Host-routed outbound port.
    assert mesh.echo("a_out", "/hello", Host="b", x_version="v2")["backend"] == "b2"


def test_weights_split_the_calls(mesh: Mesh) -> None:
    answered = {mesh.echo("a_to_b", "/split")["backend"] for _ in range(60)}
    assert answered == {"b", "b2"}


def test_the_route_status_says_its_service_parent(mesh: Mesh) -> None:
    objects = mesh.mp.status()["policy"]["objects"]
    (route,) = [o for o in objects if o["kind"] == "HTTPRoute"]
    assert route["parent"] == "default/b"
    assert {c["type"]: c["status"] for c in route["conditions"]} == {
        "Accepted": "True", "ResolvedRefs": "True"}
