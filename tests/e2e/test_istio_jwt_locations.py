"""Istio RequestAuthentication's `fromCookies`, `outputPayloadToHeader` and
`outputClaimToHeaders` through a real ingress gateway Envoy, with Istio's JWT sample keys and
token (../shared/conformance/istio/jwt-samples): the token is read from a cookie only, and
the upstream echo sees the validated payload and the claims in their headers."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from support import (
    ECHO_BEHIND_ISTIO_INGRESS,
    eventually,
    http_get,
    served_policy,
    shared_folder,
)

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

SAMPLES = shared_folder() / "conformance" / "istio" / "jwt-samples"

POLICY = ECHO_BEHIND_ISTIO_INGRESS + """apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: testing@secure.istio.io
    jwks: '{keys}'
    fromCookies: [session]
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-jwt-foo, claim: foo}}, {{header: x-jwt-sub, claim: sub}}]
"""


@dataclass
class Edge:
    port: int
    token: str

    def get(self, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        status, _, body = http_get(f"http://127.0.0.1:{self.port}/x", headers, timeout=10)
        seen = json.loads(body)["headers"] if status == 200 else {}
        return status, {k.lower(): v for k, v in seen.items()}


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    samples = SAMPLES
    if not samples.is_dir():
        print(f"skipped: Istio's JWT samples are not at {samples}")
        pytest.skip(f"Istio's JWT samples are not at {samples}")
    keys = json.dumps(json.loads((samples / "jwks.json").read_text()))
    token = (samples / "demo.jwt").read_text().strip()
    work = tmp_path_factory.mktemp("istio-jwt-locations")
    with served_policy(work, "mesh.yaml", POLICY, {"echo": EchoServer("echo")},
                       free_ports=("ingress",), envoys={"istio=ingressgateway": "ingress"},
                       extra_args=("--insecure-xds",), keys=keys) as served:
        environment = Edge(served.ports["ingress"], token)
        eventually(lambda: environment.get({})[0] == 200, timeout=60,
                   what="the ingress gateway to reach the echo")
        yield environment


def test_the_token_in_a_cookie_is_accepted_and_its_payload_and_claims_go_upstream(
        edge: Edge) -> None:
    status, seen = edge.get({"cookie": f"other=1; session={edge.token}"})
    assert status == 200
    assert (seen["x-jwt-foo"], seen["x-jwt-sub"]) == ("bar", "testing@secure.istio.io")
    encoded = seen["x-jwt-payload"]
    payload = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    assert payload["iss"] == "testing@secure.istio.io" and payload["foo"] == "bar"
    # A bad token in the cookie is refused: the cookie is where the gateway reads it.
    assert edge.get({"cookie": "session=not-a-token"})[0] == 401


def test_only_the_cookie_is_read_and_a_client_cannot_set_the_claim_headers(edge: Edge) -> None:
    # fromCookies is an explicit location: a bad bearer token is not looked at (Istio's way).
    status, seen = edge.get({"authorization": "Bearer not-a-token", "x-jwt-foo": "forged"})
    assert status == 200  # no token where it is read: the RequestAuthentication lets it pass
    assert "x-jwt-payload" not in seen
    # With a valid token the claim replaces whatever the client sent.
    status, seen = edge.get({"cookie": f"session={edge.token}", "x-jwt-foo": "forged"})
    assert (status, seen["x-jwt-foo"]) == (200, "bar")
