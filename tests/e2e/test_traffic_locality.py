"""A native Service's `locality_lb` through real sidecars: two callers in different regions
each prefer the endpoint of their own, and the first fails over to the region `failover`
names for it when its own endpoint fails (outlier detection ejects it); `distribute` shares a
caller's requests by weight; self-registered instances say their locality with the topology
labels and are balanced the same way; a gateway that says where it runs is ranked for like a
caller in that locality. (Istio's localityLbSetting:
tests/e2e/test_istio_traffic.py.)"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from support import backend_of, eventually, served_policy

from meshpilot.ca.tokens import TokenAuthority
from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: echo
endpoints:
  - {{address: 127.0.0.1:{east}, region: us-east, zone: z1}}
  - {{address: 127.0.0.1:{west}, region: us-west, zone: z1}}
  - {{address: 127.0.0.1:{eu}, region: eu, zone: z1}}
outlier_detection: {{consecutive_5xx: 1, interval: 1s, base_ejection_time: 300s,
                    max_ejection_percent: 100}}
locality_lb: {{failover: [{{from: us-east, to: eu}}]}}
---
kind: Service
name: split
endpoints:
  - {{address: 127.0.0.1:{split_east}, region: us-east, zone: z1}}
  - {{address: 127.0.0.1:{split_eu}, region: eu, zone: z1}}
locality_lb:
  distribute: [{{from: "us-east/*", to: {{"us-east/*": 75, "eu/*": 25}}}}]
---
kind: Service
name: registered
outlier_detection: {{consecutive_5xx: 1, interval: 1s, base_ejection_time: 300s,
                    max_ejection_percent: 100}}
locality_lb: {{}}
---
kind: Gateway
name: edge-west
locality: us-west/z1
listeners: [{{name: http, port: {gw_west}, address: 127.0.0.1}}]
---
kind: Route
name: west-edge
gateway: edge-west
rules: [{{backends: [{{service: echo}}]}}]
---
kind: Service
name: client-east
sidecar: {{locality: us-east/z1, outbound_port: {out_east}, calls: [echo, split, registered]}}
---
kind: Service
name: client-west
sidecar: {{locality: us-west/z1, outbound_port: {out_west}, calls: [echo, registered]}}
"""


class Mesh:
    def __init__(self, running: Any, servers: dict[str, EchoServer]):
        self.ports = running.ports
        self.servers = servers
        self.mp = running.mp


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Mesh]:
    servers = {name: EchoServer(name) for name in ("east", "west", "eu", "split_east",
                                                   "split_eu", "reg_east", "reg_west")}
    with served_policy(tmp_path_factory.mktemp("locality"), "mesh.yaml", POLICY, servers,
                       free_ports=("out_east", "out_west", "gw_west"),
                       envoys={"client-east": "client-east", "client-west": "client-west",
                               "edge-west": "edge-west"}
                       ) as running:
        yield Mesh(running, servers)


def _backend(served: Mesh, caller: str, host: str) -> str | None:
    try:
        return backend_of(served.ports[f"out_{caller}"], "/", {"Host": host})
    except OSError:
        return None


def test_callers_prefer_their_region_and_fail_over_where_the_rule_says(served: Mesh) -> None:
    eventually(lambda: _backend(served, "east", "echo") == "east", timeout=60,
               what="the east caller to reach echo")
    eventually(lambda: _backend(served, "west", "echo") == "west", timeout=60,
               what="the west caller to reach echo")
    assert {_backend(served, "east", "echo") for _ in range(10)} == {"east"}
    assert {_backend(served, "west", "echo") for _ in range(10)} == {"west"}
    served.servers["east"].forced_status = 503
    eventually(lambda: {_backend(served, "east", "echo") for _ in range(5)} == {"eu"},
               timeout=30, what="the east caller to fail over to eu")
    assert {_backend(served, "west", "echo") for _ in range(10)} == {"west"}


def test_distribute_by_weight(served: Mesh) -> None:
    eventually(lambda: _backend(served, "east", "split") is not None, timeout=60,
               what="the east caller to reach split")
    counts = Counter(_backend(served, "east", "split") for _ in range(200))
    assert 130 <= counts["split_east"] <= 170 and counts["split_eu"] > 0, counts


def _register(served: Mesh, server: str, region: str) -> None:
    token = TokenAuthority.load(served.mp.state_dir).issue("registration", "registered")
    body = {"service": "registered", "address": f"127.0.0.1:{served.ports[server]}",
            "labels": {"topology.kubernetes.io/region": region,
                       "topology.kubernetes.io/zone": "z1"}, "ttl": "300s"}
    request = urllib.request.Request(
        f"{served.mp.admin}/v1/registrations", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 201


def test_registered_instances_are_balanced_by_their_topology_labels(served: Mesh) -> None:
    _register(served, "reg_east", "us-east")
    _register(served, "reg_west", "us-west")
    eventually(lambda: _backend(served, "east", "registered") == "reg_east", timeout=60,
               what="the east caller to reach its region's registered instance")
    eventually(lambda: _backend(served, "west", "registered") == "reg_west", timeout=60,
               what="the west caller to reach its region's registered instance")
    # Priorities, not chance: each caller keeps to its own region's instance.
    assert {_backend(served, "east", "registered") for _ in range(20)} == {"reg_east"}
    assert {_backend(served, "west", "registered") for _ in range(20)} == {"reg_west"}


def test_a_gateway_with_a_locality_prefers_its_region(served: Mesh) -> None:
    eventually(lambda: backend_of(served.ports["gw_west"]) == "west", timeout=60,
               what="the west gateway to reach echo's us-west endpoint")
    # Without its locality it would balance over all three endpoints.
    assert {backend_of(served.ports["gw_west"]) for _ in range(20)} == {"west"}
