"""Istio traffic settings through real Envoys: localities, ignoreUriCase, tcp subnets at a
gateway, an external TCP host.

- DestinationRule `localityLbSetting.failover` (with outlierDetection): a caller in us-east is
  served by us-east's endpoint, one in us-west by us-west's (each sidecar gets its own EDS
  priorities); when us-east's backend fails, the east caller fails over to the region the rule
  names (eu), not to us-west.
- `localityLbSetting.distribute`: the east caller's requests split 80/20 between us-east and eu.
- VirtualService `match.ignoreUriCase`: `/API/...` takes the route written for `/api`.
- A TCP server at the ingress gateway with `tcp` routes matching `destinationSubnets` (the
  address the client dialled) and `sourceSubnet` (the client's own), else a default.
- ServiceEntry `location: MESH_EXTERNAL` with a TCP port, resolution STATIC and DNS: the
  application reaches a loopback TCP echo ("external") through its sidecar's local port.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from support import backend_of, eventually, served_policy

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {east}}}, locality: us-east/z1}}
  - {{address: 127.0.0.1, ports: {{http: {west}}}, locality: us-west/z1}}
  - {{address: 127.0.0.1, ports: {{http: {eu}}}, locality: eu/z1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo}}
spec:
  host: echo
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 5m,
                       maxEjectionPercent: 100}}
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        failover: [{{from: us-east, to: eu}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: split}}
spec:
  hosts: [split.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {split_east}}}, locality: us-east/z1}}
  - {{address: 127.0.0.1, ports: {{http: {split_eu}}}, locality: eu/z1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: split}}
spec:
  host: split
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - {{from: "us-east/*", to: {{"us-east/*": 80, "eu/*": 20}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: cased}}
spec:
  hosts: [cased.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {api}}}, labels: {{role: api}}}}
  - {{address: 127.0.0.1, ports: {{http: {web}}}, labels: {{role: web}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: cased}}
spec:
  host: cased
  subsets: [{{name: api, labels: {{role: api}}}}, {{name: web, labels: {{role: web}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cased}}
spec:
  hosts: [cased]
  http:
  - match: [{{uri: {{prefix: /api/}}, ignoreUriCase: true}}]
    route: [{{destination: {{host: cased, subset: api}}}}]
  - route: [{{destination: {{host: cased, subset: web}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external-static}}
spec:
  hosts: [tcp.external.example]
  location: MESH_EXTERNAL
  ports: [{{number: {ext_static}, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {tcp_static}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external-dns}}
spec:
  hosts: [localhost]
  location: MESH_EXTERNAL
  ports: [{{number: {ext_dns}, name: tcp, protocol: TCP, targetPort: {tcp_dns}}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: gw-targets}}
spec:
  hosts: [targets.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: {gw_target}, name: tcp, protocol: TCP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp: {tcp_by_destination}}}, labels: {{to: destination}}}}
  - {{address: 127.0.0.1, ports: {{tcp: {tcp_by_source}}}, labels: {{to: source}}}}
  - {{address: 127.0.0.1, ports: {{tcp: {tcp_default}}}, labels: {{to: default}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: gw-targets}}
spec:
  host: targets
  subsets:
  - {{name: destination, labels: {{to: destination}}}}
  - {{name: source, labels: {{to: source}}}}
  - {{name: default, labels: {{to: default}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gw_tcp}, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge-tcp}}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  tcp:
  - match: [{{destinationSubnets: [127.0.0.2/32]}}]
    route: [{{destination: {{host: targets, subset: destination}}}}]
  - match: [{{sourceSubnet: 127.0.0.3}}]
    route: [{{destination: {{host: targets, subset: source}}}}]
  - route: [{{destination: {{host: targets, subset: default}}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: client-east
  annotations: {{meshpilot.io/outbound-port: "{out_east}"}}
spec: {{address: 127.0.0.1, labels: {{app: client}}, locality: us-east/z1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: client-west
  annotations: {{meshpilot.io/outbound-port: "{out_west}"}}
spec: {{address: 127.0.0.1, labels: {{app: client-west}}, locality: us-west/z1}}
---
# The west caller needs echo only (its sidecar would otherwise take the same local ports for
# the tcp services as the east one's, on the same machine).
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client-west}}
spec:
  workloadSelector: {{labels: {{app: client-west}}}}
  egress: [{{hosts: ["./echo.default.svc.cluster.local"]}}]
"""


class NamedTcpEcho:
    """A loopback TCP server that answers each line with `NAME line`."""

    def __init__(self, name: str):
        self.name = name
        self._server: socketserver.ThreadingTCPServer | None = None

    def start(self) -> int:
        name = self.name.encode()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    for line in self.rfile:
                        self.wfile.write(name + b" " + line)
                except OSError:
                    pass

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()
        return self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def tcp_answer(host: str, port: int, source: str | None = None) -> str | None:
    """Who answered a line sent over one TCP connection (None: closed or refused)."""
    try:
        with socket.create_connection((host, port), timeout=5,
                                      source_address=(source, 0) if source else None) as s:
            s.sendall(b"hello\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    name, _, rest = data.decode().partition(" ")
    return name if rest == "hello\n" else None


class Setup:
    def __init__(self, served: Any, servers: dict[str, Any]):
        self.served = served
        self.ports = served.ports
        self.servers = servers

    def backend(self, caller: str, host: str, path: str = "/") -> str | None:
        try:
            return backend_of(self.ports[f"out_{caller}"], path, {"Host": host})
        except OSError:
            return None


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("istio-traffic")
    servers: dict[str, Any] = {
        name: EchoServer(name) for name in ("east", "west", "eu", "split_east", "split_eu",
                                            "api", "web")}
    servers.update({name: NamedTcpEcho(name) for name in (
        "tcp_static", "tcp_dns", "tcp_by_destination", "tcp_by_source", "tcp_default")})
    with served_policy(work, "mesh.yaml", POLICY, servers,
                       free_ports=("out_east", "out_west", "ext_static", "ext_dns", "gw_tcp",
                                   "gw_target"),
                       envoys={"client-east.default": "client-east",
                               "client-west.default": "client-west",
                               "istio=ingressgateway": "ingress"},
                       extra_args=("--insecure-xds",)) as served:
        yield Setup(served, servers)


def test_each_caller_prefers_its_own_locality_then_fails_over_as_the_rule_says(
        setup: Setup) -> None:
    eventually(lambda: setup.backend("east", "echo") == "east", timeout=60,
               what="the east caller to reach echo")
    assert {setup.backend("east", "echo") for _ in range(10)} == {"east"}
    eventually(lambda: setup.backend("west", "echo") == "west", timeout=60,
               what="the west caller to reach echo")
    assert {setup.backend("west", "echo") for _ in range(10)} == {"west"}
    # us-east's backend fails: outlier detection ejects it, and the east caller fails over to
    # eu (the rule's region for us-east), not to us-west, its priority 2 now.
    setup.servers["east"].forced_status = 503
    eventually(lambda: {setup.backend("east", "echo") for _ in range(5)} == {"eu"}, timeout=30,
               what="the east caller to fail over to eu")
    assert {setup.backend("east", "echo") for _ in range(10)} == {"eu"}
    assert {setup.backend("west", "echo") for _ in range(10)} == {"west"}  # not its locality


def test_distribute_shares_traffic_by_weight(setup: Setup) -> None:
    eventually(lambda: setup.backend("east", "split") is not None, timeout=60,
               what="the east caller to reach split")
    counts = Counter(setup.backend("east", "split") for _ in range(200))
    assert set(counts) == {"split_east", "split_eu"}, counts
    # Envoy picks localities by weight (a deterministic schedule, not dice): close to 80/20.
    assert 140 <= counts["split_east"] <= 180, counts


def test_ignore_uri_case(setup: Setup) -> None:
    eventually(lambda: setup.backend("east", "cased", "/api/x") == "api", timeout=60,
               what="the east caller to reach cased")
    assert setup.backend("east", "cased", "/API/x") == "api"
    assert setup.backend("east", "cased", "/Api/") == "api"
    assert setup.backend("east", "cased", "/apix") == "web"
    assert setup.backend("east", "cased", "/") == "web"


def test_external_tcp_hosts_through_the_sidecar(setup: Setup) -> None:
    static, dns = setup.ports["ext_static"], setup.ports["ext_dns"]
    eventually(lambda: tcp_answer("127.0.0.1", static) == "tcp_static", timeout=60,
               what="the sidecar's local port for the static external host")
    eventually(lambda: tcp_answer("127.0.0.1", dns) == "tcp_dns", timeout=60,
               what="the sidecar's local port for the DNS external host")


def test_gateway_tcp_routes_by_destination_and_source_subnet(setup: Setup) -> None:
    port = setup.ports["gw_tcp"]
    eventually(lambda: tcp_answer("127.0.0.1", port) == "tcp_default", timeout=60,
               what="the gateway's TCP server")
    assert tcp_answer("127.0.0.2", port) == "tcp_by_destination"
    assert tcp_answer("127.0.0.1", port, source="127.0.0.3") == "tcp_by_source"
    assert tcp_answer("127.0.0.4", port, source="127.0.0.5") == "tcp_default"
    # Destination is matched before source (Envoy's filter chain order), as the routes say.
    assert tcp_answer("127.0.0.2", port, source="127.0.0.3") == "tcp_by_destination"
