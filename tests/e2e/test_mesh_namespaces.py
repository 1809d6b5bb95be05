"""Namespaces and service accounts in the native mesh, end to end: real sidecar Envoys on
loopback with certificates from meshpilot's CA (docs/security.md, "Namespaces").

`front` (namespace shop, service account web) and `intruder` (namespace other) call `api`
(namespace shop), which allows callers `namespaces: [shop]`, and `ledger`, which allows
`from: [front]`. Each sidecar's certificate carries its written identity
(`spiffe://cluster.local/ns/shop/sa/web`); callers accept the callee's written identity (without
that the TLS handshake to `api` would fail, since its certificate does not say
`ns/default/sa/api`); a name in `from` stands for the identity its Service wrote.
"""

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
name: front
endpoints: ["127.0.0.1:{front_in}"]
sidecar:
  port: {front_in}
  address: 127.0.0.1
  app: {app_front}
  mtls: strict
  namespace: shop
  service_account: web
  calls: [{{service: api, local_port: {front_to_api}}},
          {{service: ledger, local_port: {front_to_ledger}}}]
---
kind: Service
name: intruder
endpoints: ["127.0.0.1:{intruder_in}"]
sidecar:
  port: {intruder_in}
  address: 127.0.0.1
  app: {app_intruder}
  mtls: strict
  namespace: other
  calls: [{{service: api, local_port: {intruder_to_api}}},
          {{service: ledger, local_port: {intruder_to_ledger}}}]
---
kind: Service
name: api
endpoints: ["127.0.0.1:{api_in}"]
sidecar:
  port: {api_in}
  address: 127.0.0.1
  app: {app_api}
  mtls: strict
  namespace: shop
  authorization: {{rules: [{{namespaces: [shop]}}]}}
---
kind: Service
name: ledger
endpoints: ["127.0.0.1:{ledger_in}"]
sidecar:
  port: {ledger_in}
  address: 127.0.0.1
  app: {app_ledger}
  mtls: strict
  namespace: shop
  authorization: {{rules: [{{from: [front]}}]}}
"""

NAMES = ("front", "intruder", "api", "ledger")


class Mesh:
    def __init__(self, ports: dict[str, int], sidecars: dict[str, EnvoyProcess],
                 mp: MeshpilotProcess):
        self.ports, self.sidecars, self.mp = ports, sidecars, mp

    def get(self, port: str, path: str = "/") -> tuple[int, bytes]:
        status, _, body = http_get(f"http://127.0.0.1:{self.ports[port]}{path}", timeout=3)
        return status, body


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("mesh-namespaces-e2e")
    ports = ("front_in", "intruder_in", "api_in", "ledger_in", "front_to_api",
             "front_to_ledger", "intruder_to_api", "intruder_to_ledger")
    with served_policy(work, "mesh.yaml", POLICY, {f"app_{n}": EchoServer(n) for n in NAMES},
                       free_ports=ports, envoys={name: f"sidecar-{name}" for name in NAMES},
                       extra_args=("--ca-dir", str(work / "ca"))) as served:
        environment = Mesh(served.ports, served.envoys, served.mp)
        eventually(lambda: environment.get("front_to_api")[0] == 200, timeout=30,
                   what="front's sidecar to reach api over mTLS")
        yield environment


def test_a_caller_of_the_namespace_is_allowed_with_its_written_identity(mesh: Mesh) -> None:
    status, body = mesh.get("front_to_api", "/orders")
    assert status == 200, body[:300]
    seen = json.loads(body)
    assert seen["backend"] == "api"
    # api's sidecar names the caller by the identity front's certificate carries.
    assert "URI=spiffe://cluster.local/ns/shop/sa/web" in \
        seen["headers"]["x-forwarded-client-cert"]


def test_a_caller_of_another_namespace_is_refused(mesh: Mesh) -> None:
    status, body = mesh.get("intruder_to_api", "/orders")
    assert status == 403, body[:300]
    # mTLS itself worked (intruder has a valid identity, ns/other/sa/intruder): refused by rule.
    assert mesh.sidecars["intruder"].stats().get("cluster.api.ssl.handshake", 0) >= 1


def test_a_name_in_from_stands_for_the_identity_its_service_wrote(mesh: Mesh) -> None:
    assert mesh.get("front_to_ledger", "/entries")[0] == 200
    assert mesh.get("intruder_to_ledger", "/entries")[0] == 403
