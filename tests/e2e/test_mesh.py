"""The mesh end to end: two real Envoys as sidecars on loopback (node cluster = the Service's
name), served by `meshpilot serve`, with echo servers as the applications. A request from A's
application to its local port for B crosses A's sidecar, then B's sidecar, to B's application;
a Route attached to B applies to A's calls; the Host-routed outbound port picks B by Host."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from support import MeshpilotProcess, eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.envoy_process import EnvoyProcess

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
name: c                     # a service A does not call: A's sidecar must not know it
endpoints: ["127.0.0.1:{app_c}"]
---
kind: Route
name: b-traffic
service: b
rules:
  - match: {{headers: {{x-fault: "yes"}}}}
    backends: [b]
    fault: {{abort: {{status: 418}}}}
  - backends: [b]
    request_headers: {{set: {{x-mesh-route: b-traffic}}}}
"""


class Mesh:
    def __init__(self, ports: dict[str, int], sidecars: dict[str, EnvoyProcess],
                 mp: MeshpilotProcess):
        self.ports, self.sidecars, self.mp = ports, sidecars, mp

    def get(self, port: str, path: str = "/", **headers: str) -> tuple[int, dict, bytes]:
        return http_get(f"http://127.0.0.1:{self.ports[port]}{path}",
                        {k.replace("_", "-"): v for k, v in headers.items()})

    def echo(self, port: str, path: str = "/", **headers: str) -> dict:
        status, _, body = self.get(port, path, **headers)
        assert status == 200, (status, body[:300])
        return json.loads(body)

    def stat(self, sidecar: str, name: str) -> int:
        return self.sidecars[sidecar].stats().get(name, 0)

    def clusters(self, sidecar: str) -> list[str]:
        dump = self.sidecars[sidecar].config_dump(resource="dynamic_active_clusters")
        return sorted(c["cluster"]["name"] for c in dump.get("configs", []))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("mesh-e2e")
    apps = {f"app_{name}": EchoServer(name) for name in ("a", "b", "c")}
    with served_policy(work, "mesh.yaml", POLICY, apps,
                       free_ports=("a_in", "b_in", "a_out", "a_to_b"),
                       envoys={"a": "sidecar-a", "b": "sidecar-b"}) as served:
        environment = Mesh(served.ports, served.envoys, served.mp)
        eventually(lambda: environment.get("a_to_b")[0] == 200, timeout=20,
                   what="A's sidecar to reach B through B's sidecar")
        yield environment


def test_local_port_reaches_b_through_both_sidecars(mesh: Mesh) -> None:
    inbound_before = mesh.stat("b", "http.inbound/b.downstream_rq_total")
    outbound_before = mesh.stat("a", "http.outbound/b.downstream_rq_total")
    seen = mesh.echo("a_to_b", "/hello")
    assert seen["backend"] == "b"
    assert seen["path"] == "/hello"
    assert seen["headers"]["x-mesh-route"] == "b-traffic"  # the Route attached to B
    # Through B's sidecar: its inbound listener counted the request ...
    eventually(lambda: mesh.stat("b", "http.inbound/b.downstream_rq_total") > inbound_before,
               what="B's inbound to count the request")
    assert mesh.stat("a", "http.outbound/b.downstream_rq_total") > outbound_before
    # ... and A's sidecar sent it to B's sidecar, not to B's application.
    assert mesh.stat("a", "cluster.b.upstream_rq_total") >= 1
    assert mesh.stat("b", "cluster.inbound|b.upstream_rq_total") >= 1


def test_route_attached_to_b_applies_to_a_calls(mesh: Mesh) -> None:
    status, _, _ = mesh.get("a_to_b", "/x", x_fault="yes")
    assert status == 418  # the fault is injected in A's sidecar
    status, _, _ = mesh.get("a_out", "/x", Host="b", x_fault="yes")
    assert status == 418  # the same virtual host on the Host-routed port


def test_outbound_port_routes_by_host(mesh: Mesh) -> None:
    for host in ("b", f"b:{mesh.ports['a_out']}", f"b:{mesh.ports['b_in']}"):
        seen = mesh.echo("a_out", "/by-host", Host=host)
        assert seen["backend"] == "b", host
        assert seen["headers"]["x-mesh-route"] == "b-traffic"
    # c exists in the mesh, but A does not call it: no virtual host, no cluster.
    assert mesh.get("a_out", "/", Host="c")[0] == 404


def test_inbound_forwards_to_the_local_app(mesh: Mesh) -> None:
    assert mesh.echo("a_in", "/in")["backend"] == "a"
    assert mesh.echo("b_in", "/in")["backend"] == "b"


def test_each_sidecar_receives_only_what_it_needs(mesh: Mesh) -> None:
    assert mesh.clusters("a") == ["b", "inbound|a"]
    assert mesh.clusters("b") == ["inbound|b"]
    proxies = {p.get("node_id", p.get("id")): p for p in mesh.mp.proxies()}
    assert len(proxies) == 2, proxies
