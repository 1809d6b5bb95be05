"""AuthorizationPolicy `when` conditions on a validated JWT at a real ingress gateway Envoy:
list-valued claims (Istio's groups-scope sample token), nested claims, audiences with several
values and request principals with a wildcard. Tokens are Istio's samples
(../shared/conformance/istio/jwt-samples) and tokens signed here with the samples' key; the
policy is meshpilot's own."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from support import eventually, http_get, served_policy, shared_folder

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

SAMPLES = shared_folder() / "conformance" / "istio" / "jwt-samples"
ISSUER = "testing@secure.istio.io"

POLICY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {echo}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: {ingress}, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http: [{{route: [{{destination: {{host: echo.default.svc.cluster.local}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules: [{{issuer: testing@secure.istio.io, jwks: '{keys}'}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  rules:
  - to: [{{operation: {{paths: [/open]}}}}]
  - to: [{{operation: {{paths: [/groups]}}}}]
    when: [{{key: "request.auth.claims[groups]", values: ["admin*", group2]}}]
  - to: [{{operation: {{paths: [/nested]}}}}]
    when: [{{key: "request.auth.claims[realm][role]", values: ["*-lead"]}}]
  - to: [{{operation: {{paths: [/audience]}}}}]
    when: [{{key: request.auth.audiences, values: [web, mobile]}}]
  - to: [{{operation: {{paths: [/principal]}}}}]
    when: [{{key: request.auth.principal, values: ["testing@secure.istio.io/team-*"]}}]
"""


@dataclass
class Edge:
    port: int
    key: bytes
    kid: str

    def token(self, **claims: Any) -> str:
        payload = {"iss": ISSUER, "sub": ISSUER, "exp": int(time.time()) + 3600, **claims}
        return pyjwt.encode(payload, self.key, algorithm="RS256", headers={"kid": self.kid})

    def status(self, path: str, token: str | None = None) -> int:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return http_get(f"http://127.0.0.1:{self.port}{path}", headers, timeout=10)[0]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    if not SAMPLES.is_dir():
        print(f"skipped: Istio's JWT samples are not at {SAMPLES}")
        pytest.skip(f"Istio's JWT samples are not at {SAMPLES}")
    keys = json.loads((SAMPLES / "jwks.json").read_text())
    work = tmp_path_factory.mktemp("istio-authz-claims")
    with served_policy(work, "mesh.yaml", POLICY, {"echo": EchoServer("echo")},
                       free_ports=("ingress",), envoys={"istio=ingressgateway": "ingress"},
                       extra_args=("--insecure-xds",), keys=json.dumps(keys)) as served:
        environment = Edge(served.ports["ingress"], Path(SAMPLES / "key.pem").read_bytes(),
                           keys["keys"][0]["kid"])
        eventually(lambda: environment.status("/open") == 200, timeout=60,
                   what="the ingress gateway to reach the echo")
        yield environment


def test_a_list_valued_claim_holds_when_an_element_does(edge: Edge) -> None:
    groups = (SAMPLES / "groups-scope.jwt").read_text().strip()  # groups: [group1, group2]
    demo = (SAMPLES / "demo.jwt").read_text().strip()  # no groups claim
    assert edge.status("/groups", groups) == 200
    assert edge.status("/groups", demo) == 403
    assert edge.status("/groups", edge.token(groups="admins")) == 200  # a string: a prefix
    assert edge.status("/groups", edge.token(groups=["group1", "users"])) == 403
    assert edge.status("/groups") == 403  # no token


def test_a_nested_claim(edge: Edge) -> None:
    assert edge.status("/nested", edge.token(realm={"role": "team-lead"})) == 200
    assert edge.status("/nested", edge.token(realm={"role": "member"})) == 403
    assert edge.status("/nested", edge.token(role="team-lead")) == 403  # not under realm


def test_audiences_and_a_request_principal_wildcard(edge: Edge) -> None:
    assert edge.status("/audience", edge.token(aud=["other", "mobile"])) == 200
    assert edge.status("/audience", edge.token(aud="web")) == 200
    assert edge.status("/audience", edge.token(aud="other")) == 403
    assert edge.status("/principal", edge.token(sub="team-7")) == 200
    assert edge.status("/principal", edge.token(sub="other")) == 403
