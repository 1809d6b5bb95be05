"""Istio's outboundTrafficPolicy through real sidecars (issue #13): a host the mesh does not
know, asked of a sidecar's Host-routed outbound port.

MeshConfig says REGISTRY_ONLY; the `open` workload's own Sidecar resource says ALLOW_ANY, so
one mesh shows both modes and the Sidecar's precedence over MeshConfig:
- `closed` (REGISTRY_ONLY, from MeshConfig): the unknown host answers 502 (Istio's
  BlackHoleCluster), the request never reaches it, and the black hole's counter counts it;
- `open` (ALLOW_ANY): the unknown host, a loopback server no ServiceEntry declares, answers
  through the dynamic forward proxy, at the host and port the application wrote;
- both still reach the mesh's own service by its name;
- `open`, asked for its own outbound port as the host, answers 508 instead of looping;
- `ported` (an egress listener with a port, Sidecar `egress[].port`): the service of that
  port answers on 127.0.0.1:<port> by Host, and no longer on the outbound port.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support import backend_of, eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer
from meshpilot.translators import names
from meshpilot.translators.sidecar import LOOP_BODY, REFUSED_BODY

pytestmark = pytest.mark.envoy

POLICY = """
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |-
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: known}}
spec:
  hosts: [known.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: {svc_port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {known}}}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: closed
  annotations: {{meshpilot.io/outbound-port: "{out_closed}"}}
spec: {{address: 127.0.0.1, labels: {{app: closed}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: open
  annotations: {{meshpilot.io/outbound-port: "{out_open}"}}
spec: {{address: 127.0.0.1, labels: {{app: open}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: open}}
spec:
  workloadSelector: {{labels: {{app: open}}}}
  egress: [{{hosts: ["./*"]}}]
  outboundTrafficPolicy: {{mode: ALLOW_ANY}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: ported
  annotations: {{meshpilot.io/outbound-port: "{out_ported}"}}
spec: {{address: 127.0.0.1, labels: {{app: ported}}}}
---
# Its egress listener with a port: the services of that port on 127.0.0.1:<port>, by Host.
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: ported}}
spec:
  workloadSelector: {{labels: {{app: ported}}}}
  egress: [{{port: {{number: {svc_port}, protocol: HTTP, name: http}}, hosts: ["./*"]}}]
"""


class Setup:
    def __init__(self, served: Any, outside: EchoServer):
        self.served = served
        self.ports = served.ports
        self.outside = outside

    def get(self, caller: str, host: str) -> tuple[int, bytes]:
        status, _, body = http_get(f"http://127.0.0.1:{self.ports[f'out_{caller}']}/",
                                   {"Host": host})
        return status, body

    def outside_host(self) -> str:
        return f"127.0.0.1:{self.ports['outside']}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("istio-outbound-policy")
    # `outside` is served but no ServiceEntry names it: the host the mesh does not know.
    outside = EchoServer("outside")
    servers: dict[str, Any] = {"known": EchoServer("known"), "outside": outside}
    with served_policy(work, "mesh.yaml", POLICY, servers, free_ports=("out_closed", "out_open", "out_ported", "svc_port"),
                       envoys={"closed.default": "closed", "open.default": "open",
                               "ported.default": "ported"},
                       extra_args=("--insecure-xds",)) as served:
        for caller in ("closed", "open"):
            eventually(lambda c=caller: backend_of(served.ports[f"out_{c}"], "/",
                                                   {"Host": "known"}) == "known",
                       timeout=60, what=f"the {caller} sidecar to reach the mesh's service")
        yield Setup(served, outside)


def test_registry_only_answers_502_for_a_host_outside_the_mesh(setup: Setup) -> None:
    before = setup.outside.requests_seen
    status, body = setup.get("closed", setup.outside_host())
    assert (status, body.decode()) == (502, REFUSED_BODY)
    status, _ = setup.get("closed", "nowhere.example")
    assert status == 502
    assert setup.outside.requests_seen == before  # refused in the sidecar, never sent
    counter = f"cluster.{names.BLACKHOLE_CLUSTER}.upstream_cx_none_healthy"
    assert setup.served.envoys["closed.default"].stats()[counter] >= 2


def test_allow_any_reaches_a_loopback_server_the_mesh_does_not_declare(setup: Setup) -> None:
    before = setup.outside.requests_seen
    assert backend_of(setup.ports["out_open"], "/", {"Host": setup.outside_host()}) == "outside"
    assert setup.outside.requests_seen == before + 1
    assert backend_of(setup.ports["out_open"], "/", {"Host": "known"}) == "known"
    stats = setup.served.envoys["open.default"].stats()
    assert stats[f"cluster.{names.PASSTHROUGH_CLUSTER}.upstream_rq_200"] >= 1


def test_allow_any_refuses_a_request_addressed_to_the_outbound_port_itself(setup: Setup) -> None:
    # Passed through once, it comes back to the same listener marked: 508, not a loop.
    status, body = setup.get("open", f"127.0.0.1:{setup.ports['out_open']}")
    assert (status, body.decode()) == (508, LOOP_BODY)
    assert backend_of(setup.ports["out_open"], "/", {"Host": setup.outside_host()}) == "outside"


def test_an_egress_port_serves_its_hosts_on_that_port(setup: Setup) -> None:
    port = setup.ports["svc_port"]
    eventually(lambda: backend_of(port, "/", {"Host": f"known:{port}"}) == "known", timeout=60,
               what="the ported sidecar's egress port to reach the mesh's service")
    assert backend_of(port, "/", {"Host": "known"}) == "known"
    # Not on the outbound port (REGISTRY_ONLY, from MeshConfig: an unknown host there).
    status, _ = setup.get("ported", "known")
    assert status == 502
