"""Istio's exportTo through real Envoys: two callers' sidecars, one in namespace `default`
and one in `other`, see the same hosts differently.

- VirtualService `reviews` (default, `exportTo: ["."]`) sends to subset v2 and sets a request
  header: the caller in default gets it; the caller in other gets Istio's default route to the
  host (either endpoint, no header).
- ServiceEntry `ratings` (default, `exportTo: ["."]`): the caller in default reaches it; the
  caller in other has no route for the host and no cluster for it: to it `ratings` is a host
  outside the mesh, which this mesh's REGISTRY_ONLY refuses with 502 (Istio's default,
  ALLOW_ANY, would try it as a DNS name).
- VirtualService `front` (exported everywhere) sends /ratings to ratings: through the caller
  in other, that share is answered 503 (Istio: its proxy has no cluster for the host).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from support import eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer

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
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {v1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {v2}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  exportTo: ["."]
  http:
  - headers: {{request: {{set: {{x-shaped-by: default/reviews}}}}}}
    route: [{{destination: {{host: reviews, subset: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  exportTo: ["."]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {ratings}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: front, namespace: default}}
spec:
  hosts: [front.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {front}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: front, namespace: default}}
spec:
  hosts: [front]
  http:
  - match: [{{uri: {{prefix: /ratings}}}}]
    route: [{{destination: {{host: ratings}}}}]
  - route: [{{destination: {{host: front}}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: caller
  namespace: default
  annotations: {{meshpilot.io/outbound-port: "{out_default}"}}
spec: {{address: 127.0.0.1, labels: {{app: caller}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: caller
  namespace: other
  annotations: {{meshpilot.io/outbound-port: "{out_other}"}}
spec: {{address: 127.0.0.1, labels: {{app: caller}}}}
"""


class Setup:
    def __init__(self, served: Any):
        self.ports = served.ports

    def get(self, caller: str, host: str, path: str = "/") -> tuple[int, dict[str, Any] | None]:
        """(status, the echo's answer) of a request through `caller`'s outbound port."""
        status, _, body = http_get(f"http://127.0.0.1:{self.ports[f'out_{caller}']}{path}",
                                   {"Host": host})
        return status, json.loads(body) if status == 200 else None


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("istio-export")
    servers = {name: EchoServer(name) for name in ("v1", "v2", "ratings", "front")}
    with served_policy(work, "mesh.yaml", POLICY, servers,
                       free_ports=("out_default", "out_other"),
                       envoys={"caller.default": "caller-default",
                               "caller.other": "caller-other"},
                       extra_args=("--insecure-xds",)) as served:
        yield Setup(served)


def answered(setup: Setup, caller: str, host: str) -> tuple[str, str | None] | None:
    _, answer = setup.get(caller, host)
    if answer is None:
        return None
    return answer["backend"], answer["headers"].get("x-shaped-by")


def test_the_virtual_service_shapes_its_own_namespaces_requests_only(setup: Setup) -> None:
    eventually(lambda: answered(setup, "default", "reviews") == ("v2", "default/reviews"),
               timeout=60, what="the caller in default to take the VirtualService's route")
    assert {answered(setup, "default", "reviews") for _ in range(10)} == {
        ("v2", "default/reviews")}
    # The caller in other: the host's default route, to either endpoint, without the header.
    eventually(lambda: answered(setup, "other", "reviews") is not None, timeout=60,
               what="the caller in other to reach reviews")
    seen = {answered(setup, "other", "reviews") for _ in range(10)}
    assert seen <= {("v1", None), ("v2", None)}, seen


def test_a_service_entry_exported_to_its_namespace_is_not_reached_from_another(
        setup: Setup) -> None:
    eventually(lambda: answered(setup, "default", "ratings") == ("ratings", None), timeout=60,
               what="the caller in default to reach ratings")
    # The other caller's sidecar is up (it reaches reviews) and has no route for ratings.
    eventually(lambda: answered(setup, "other", "reviews") is not None, timeout=60,
               what="the caller in other to reach reviews")
    status, _ = setup.get("other", "ratings")
    assert status == 502  # a host it does not know, refused (REGISTRY_ONLY)


def test_a_route_to_a_host_the_caller_does_not_see_is_answered_503(setup: Setup) -> None:
    eventually(lambda: setup.get("default", "front", "/ratings")[1] is not None, timeout=60,
               what="the caller in default to reach ratings through front's route")
    assert setup.get("default", "front", "/ratings")[1]["backend"] == "ratings"  # type: ignore[index]
    eventually(lambda: setup.get("other", "front")[0] == 200, timeout=60,
               what="the caller in other to reach front")
    assert setup.get("other", "front")[1]["backend"] == "front"  # type: ignore[index]
    assert setup.get("other", "front", "/ratings")[0] == 503
