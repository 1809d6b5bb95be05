"""A sidecar's authorization end to end, through real Envoys with mTLS (issue 14).

Bug 2: after an edit from deny-all to allowing a caller, the caller's requests on a keep-alive
connection that was already open kept getting 403 (the callee's new policy came with a new
listener; the open connections stayed on the draining one). The policy is now the inbound
route configuration's per-route RBAC over RDS, so the listener stays and the next request on
the same connection sees the new policy. Then the rules a sidecar has now, as a Route has
them: paths as regexes, headers, source IPs, JWT claims and the `not` forms. A's own inbound
is `mtls: off` written unquoted (a YAML false, accepted as off): it still calls B over mTLS.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from support import MeshpilotProcess, eventually, served_policy, write_atomically

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
  app: {app_a}
  mtls: off                 # unquoted: YAML's false, read as off (issue 14, bug 8)
  calls: [{{service: b, local_port: {a_to_b}}}]
---
kind: Service
name: b
endpoints: ["127.0.0.1:{b_in}"]
sidecar:
  port: {b_in}
  address: 127.0.0.1
  app: {app_b}
  mtls: strict
  authorization: {authorization}
  jwt:
    required: false
    providers: [{{name: corp, issuer: https://issuer.example, jwks: {{inline: '{jwks}'}}}}]
"""

DENY_ALL = "{action: ALLOW, rules: []}"  # ALLOW with no rules: nobody (issue 14, bug 8)
ALLOW_A = "{action: ALLOW, rules: [{from: [a]}]}"
DETAILED = """
    action: ALLOW
    rules:
      - from: [a]
        paths: [{regex: "/api/v[0-9]+/.*"}, /exact]
        headers: {x-team: blue, x-debug: {absent: true}}
        source_ips: [127.0.0.0/8]
        not: {methods: [DELETE], paths: [/api/v1/admin],
              from: ["spiffe://cluster.local/ns/default/sa/c"]}"""
CLAIMS = """
    action: ALLOW
    rules:
      - {from: [a], paths: [/members], authenticated: true}
      - {from: [a], paths: [/admins], claims: {group: admins}}
      - {from: [a], paths: [/guests], authenticated: false}"""


class Signer:
    """An RSA key, its JWKS, and tokens signed with it (PyJWT)."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = json.dumps({"keys": [{**public, "kid": "k1", "alg": "RS256"}]})

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": "https://issuer.example", "sub": "alice", "iat": now - 10,
                   "exp": now + 600, **claims}
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": "k1"})


class Side:
    def __init__(self, ports: dict[str, int], envoys: dict[str, EnvoyProcess],
                 mp: MeshpilotProcess, policy: Path, signer: Signer):
        self.ports, self.envoys, self.mp, self.policy = ports, envoys, mp, policy
        self.signer = signer

    def write(self, authorization: str) -> None:
        write_atomically(self.policy / "mesh.yaml",
                         POLICY.format(**self.ports, authorization=authorization,
                                       jwks=self.signer.jwks))

    def inbound_rbac(self) -> str:
        """B's inbound route configuration as Envoy holds it (JSON text)."""
        dump = self.envoys["b"].config_dump(resource="dynamic_route_configs")
        return json.dumps([c for c in dump.get("configs", [])
                           if c.get("route_config", {}).get("name") == "inbound/b"])

    def stat(self, name: str) -> int:
        return self.envoys["b"].stats().get(name, 0)


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Side]:
    work = tmp_path_factory.mktemp("sidecar-authz-e2e")
    signer = Signer()
    with served_policy(work, "mesh.yaml", POLICY, {"app_a": EchoServer("a"),
                                                     "app_b": EchoServer("b")},
                       free_ports=("a_in", "b_in", "a_to_b"),
                       envoys={"a": "sidecar-a", "b": "sidecar-b"},
                       authorization=DENY_ALL, jwks=signer.jwks) as served:
        environment = Side(served.ports, served.envoys, served.mp, served.policy, signer)
        eventually(lambda: "inbound/b" in environment.inbound_rbac(), timeout=20,
                   what="B's inbound routes")
        yield environment


def request(connection: http.client.HTTPConnection, path: str = "/", method: str = "GET",
            headers: dict[str, str] | None = None) -> int:
    connection.request(method, path, headers={"Host": "b", **(headers or {})})
    response = connection.getresponse()
    response.read()
    return response.status


def test_an_allowed_caller_gets_through_on_its_open_connection(side: Side) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", side.ports["a_to_b"], timeout=5)
    eventually(lambda: request(connection) == 403, timeout=20, what="deny-all to be served")
    opened = connection.sock.getsockname()  # the keep-alive connection the caller holds
    listeners_before = side.stat("listener_manager.listener_modified")
    side.write(ALLOW_A)
    # The same connection, request after request, until the edit arrives: 200 within the
    # convergence time (before the fix: 403 for as long as the old listener drained).
    eventually(lambda: request(connection) == 200, timeout=10,
               what="the new policy on the open connection")
    assert connection.sock.getsockname() == opened, "the client had to reconnect"
    # B's listener was not replaced: only its route configuration changed.
    assert side.stat("listener_manager.listener_modified") == listeners_before
    assert side.stat("listener_manager.total_listeners_draining") == 0
    side.write(DENY_ALL)  # and back: refused again on the same connection
    eventually(lambda: request(connection) == 403, timeout=10, what="deny-all again")
    assert connection.sock.getsockname() == opened
    connection.close()


def test_sidecar_rules_have_what_route_rules_have(side: Side) -> None:
    side.write(DETAILED)
    eventually(lambda: "x-team" in side.inbound_rbac(), timeout=15, what="the detailed policy")
    connection = http.client.HTTPConnection("127.0.0.1", side.ports["a_to_b"], timeout=5)
    blue = {"x-team": "blue"}
    assert request(connection, "/api/v2/items", headers=blue) == 200  # regex path, header
    assert request(connection, "/exact", headers=blue) == 200
    assert request(connection, "/api/v2/items") == 403  # the header is required
    assert request(connection, "/api/v2/items", headers={"x-team": "red"}) == 403
    assert request(connection, "/api/v2/items", headers={**blue, "x-debug": "1"}) == 403
    assert request(connection, "/other", headers=blue) == 403  # no path matches
    assert request(connection, "/api/v2/items", "DELETE", blue) == 403  # not: methods
    assert request(connection, "/api/v1/admin", headers=blue) == 403  # not: paths
    connection.close()


def test_sidecar_rules_on_jwt_claims(side: Side) -> None:
    side.write(CLAIMS)
    eventually(lambda: "admins" in side.inbound_rbac(), timeout=15, what="the claims policy")
    connection = http.client.HTTPConnection("127.0.0.1", side.ports["a_to_b"], timeout=5)

    def bearer(**claims: Any) -> dict[str, str]:
        return {"authorization": f"Bearer {side.signer.token(**claims)}"}

    assert request(connection, "/members") == 403  # no token
    assert request(connection, "/members", headers=bearer()) == 200
    assert request(connection, "/guests") == 200
    assert request(connection, "/guests", headers=bearer()) == 403
    assert request(connection, "/admins", headers=bearer(group="users")) == 403
    assert request(connection, "/admins", headers=bearer(group="admins")) == 200
    forged = Signer().token(group="admins")  # a key the sidecar does not trust
    assert request(connection, "/admins", headers={"authorization": f"Bearer {forged}"}) == 401
    connection.close()
