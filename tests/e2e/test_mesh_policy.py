"""Namespace-wide and mesh-wide policy (`kind: MeshPolicy`, docs/policy.md#meshpolicy) end to
end: real sidecar Envoys on loopback with certificates from meshpilot's CA.

No sidecar writes an mTLS mode or an authorization of its own. The mesh is strict and refuses
`/debug/*` to everyone (DENY); namespace legacy is permissive (a namespace's mode over the
mesh's); namespace shop lets in only callers of namespace shop (ALLOW). `web` (shop) and `old`
(legacy) call `cart` (shop). An edit of the shop policy lets legacy in, on the connections
already open.
"""

from __future__ import annotations

import json
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import eventually, http_get, served_policy, write_atomically

from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

POLICY = """
kind: MeshPolicy
name: mesh-strict
namespace: "*"
mtls: strict
authorization: {{action: DENY, rules: [{{paths: [/debug/*]}}]}}
---
kind: MeshPolicy
name: legacy-permissive
namespace: legacy
mtls: permissive
---
kind: MeshPolicy
name: shop-callers
namespace: shop
authorization: {{rules: [{{namespaces: [{allowed}]}}]}}
---
kind: Service
name: cart
endpoints: ["127.0.0.1:{cart_in}"]
sidecar: {{port: {cart_in}, address: 127.0.0.1, app: {app_cart}, namespace: shop}}
---
kind: Service
name: web
endpoints: ["127.0.0.1:{web_in}"]
sidecar:
  port: {web_in}
  address: 127.0.0.1
  app: {app_web}
  namespace: shop
  calls: [{{service: cart, local_port: {web_to_cart}}}]
---
kind: Service
name: old
endpoints: ["127.0.0.1:{old_in}"]
sidecar:
  port: {old_in}
  address: 127.0.0.1
  app: {app_old}
  namespace: legacy
  calls: [{{service: cart, local_port: {old_to_cart}}}]
"""

NAMES = ("cart", "web", "old")


class Mesh:
    def __init__(self, ports: dict[str, int], sidecars: dict[str, EnvoyProcess], policy: Path):
        self.ports, self.sidecars, self.policy = ports, sidecars, policy

    def get(self, port: str, path: str = "/") -> tuple[int, bytes]:
        status, _, body = http_get(f"http://127.0.0.1:{self.ports[port]}{path}", timeout=3)
        return status, body

    def write(self, allowed: str) -> None:
        write_atomically(self.policy / "mesh.yaml", POLICY.format(**self.ports, allowed=allowed))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    work = tmp_path_factory.mktemp("mesh-policy-e2e")
    ports = ("cart_in", "web_in", "old_in", "web_to_cart", "old_to_cart")
    with served_policy(work, "mesh.yaml", POLICY, {f"app_{n}": EchoServer(n) for n in NAMES},
                       free_ports=ports, envoys={name: f"sidecar-{name}" for name in NAMES},
                       extra_args=("--ca-dir", str(work / "ca")), allowed="shop") as served:
        environment = Mesh(served.ports, served.envoys, served.policy)
        eventually(lambda: environment.get("web_to_cart")[0] == 200, timeout=40,
                   what="web's sidecar to reach cart over mTLS")
        yield environment


def test_the_mesh_mode_makes_a_sidecar_strict(mesh: Mesh) -> None:
    status, body = mesh.get("web_to_cart", "/orders")
    assert status == 200, body[:300]
    seen = json.loads(body)
    assert seen["backend"] == "cart"
    assert "URI=spiffe://cluster.local/ns/shop/sa/web" in \
        seen["headers"]["x-forwarded-client-cert"]
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        mesh.get("cart_in", "/plain")  # plaintext straight to cart: refused


def test_a_namespace_mode_wins_over_the_mesh(mesh: Mesh) -> None:
    status, body = mesh.get("old_in", "/plain")  # legacy is permissive: plaintext accepted
    assert status == 200 and json.loads(body)["backend"] == "old"


def test_the_namespace_allow_refuses_another_namespace(mesh: Mesh) -> None:
    status, body = mesh.get("old_to_cart", "/orders")
    assert status == 403, body[:300]
    # mTLS itself worked (old has an identity of namespace legacy): refused by the rule.
    assert mesh.sidecars["old"].stats().get("cluster.cart.ssl.handshake", 0) >= 1


def test_the_mesh_deny_comes_before_the_namespace_allow(mesh: Mesh) -> None:
    status, _ = mesh.get("web_to_cart", "/debug/vars")
    assert status == 403
    assert mesh.get("web_to_cart", "/orders")[0] == 200


def test_an_edit_of_the_namespace_policy_reaches_open_connections(mesh: Mesh) -> None:
    assert mesh.get("old_to_cart", "/orders")[0] == 403  # old's sidecar keeps this one open
    listeners = mesh.sidecars["cart"].stats().get("listener_manager.listener_modified", 0)
    mesh.write("shop, legacy")
    eventually(lambda: mesh.get("old_to_cart", "/orders")[0] == 200, timeout=30,
               what="the edited shop policy to let namespace legacy in")
    assert mesh.get("old_to_cart", "/debug/vars")[0] == 403  # the mesh's DENY still first
    # Only cart's route configuration changed: its listener stayed.
    assert mesh.sidecars["cart"].stats().get("listener_manager.listener_modified", 0) == \
        listeners
