"""An Istio workload serving two ports (issue #13), through real sidecars.

reviews-v1 is one WorkloadEntry behind a ServiceEntry with an HTTP port and a TCP port; its
sidecar has an inbound listener on each (the WorkloadEntry's ports), forwarding to the two
applications annotation `meshpilot.io/app` names (`PORT=ADDRESS` entries). A client workload's
sidecar reaches the HTTP port through its outbound port (Host `reviews:9080`) and the TCP port
through its local port for the service, and PeerAuthentication's `portLevelMtls` gives each
port its own mode: STRICT on one refuses plaintext there while the other, DISABLE or
PERMISSIVE, takes it, and the caller's auto mTLS follows each port's mode. An
AuthorizationPolicy whose `to.operation.ports` names the TCP port closes that port only.
The policy is meshpilot's own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import eventually, http_get, served_policy, write_atomically

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  - {{number: {tcp_number}, name: tcp, protocol: TCP}}
  resolution: STATIC
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-v1
  annotations:
    meshpilot.io/app: "{in_http}=127.0.0.1:{app_http}, {in_tcp}=127.0.0.1:{app_tcp}"
    meshpilot.io/outbound-port: "{out_reviews}"
spec:
  address: 127.0.0.1
  ports: {{http: {in_http}, tcp: {in_tcp}}}
  labels: {{app: reviews, security.istio.io/tlsMode: istio}}
  serviceAccount: reviews
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: client-v1
  annotations: {{meshpilot.io/outbound-port: "{out_client}"}}
spec:
  address: 127.0.0.1
  labels: {{app: client, security.istio.io/tlsMode: istio}}
  serviceAccount: client
---
# reviews calls nothing: without this its sidecar would hold the TCP service's local port
# (127.0.0.1:<tcp_number>) beside the client's, on the same machine.
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: reviews}}
spec:
  workloadSelector: {{labels: {{app: reviews}}}}
  egress: [{{hosts: ["~/*"]}}]
"""

PEER = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: reviews}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  mtls: {{mode: {mode}}}
  portLevelMtls: {{{port}: {{mode: {port_mode}}}}}
"""

DENY_TCP = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: tcp-closed}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: DENY
  rules: [{{to: [{{operation: {{ports: ["{port}"]}}}}]}}]
"""


class Setup:
    def __init__(self, served):
        self.served = served
        self.ports = served.ports
        self.folder: Path = served.policy

    def peer(self, mode: str, port: str, port_mode: str) -> None:
        write_atomically(self.folder / "peer.yaml", PEER.format(
            mode=mode, port=self.ports[port], port_mode=port_mode))

    def via_client(self, how: str) -> dict | None:
        """What the application behind reviews saw of the client's request through both
        sidecars: over HTTP (`http`, Host-routed outbound port) or over the TCP port's local
        port (`tcp`); None when it did not get through."""
        url, headers = (f"http://127.0.0.1:{self.ports['out_client']}/", {"Host": "reviews:9080"}) \
            if how == "http" else (f"http://127.0.0.1:{self.ports['tcp_number']}/", {})
        return _answer(url, headers)

    def direct(self, port: str) -> dict | None:
        """A plaintext request straight to one of reviews' inbound listeners."""
        return _answer(f"http://127.0.0.1:{self.ports[port]}/", {})


def _answer(url: str, headers: dict[str, str]) -> dict | None:
    try:
        status, _, body = http_get(url, headers, timeout=5)
    except OSError:
        return None
    return json.loads(body) if status == 200 else None


def _backend(seen: dict | None) -> str | None:
    return None if seen is None else seen.get("backend")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("istio-ports")
    servers = {"app_http": EchoServer("reviews-http"), "app_tcp": EchoServer("reviews-tcp")}
    with served_policy(work, "mesh.yaml", POLICY, servers,
                       free_ports=("in_http", "in_tcp", "tcp_number", "out_reviews",
                                   "out_client"),
                       envoys={"reviews-v1.default": "reviews", "client-v1.default": "client"},
                       extra_args=("--insecure-xds",)) as served:
        yield Setup(served)


def test_strict_http_port_beside_a_disabled_tcp_port(setup: Setup) -> None:
    setup.peer("STRICT", "in_tcp", "DISABLE")
    eventually(lambda: setup.direct("in_http") is None and _backend(
        setup.direct("in_tcp")) == "reviews-tcp",
        what="reviews' http port to refuse plaintext and its tcp port to take it")
    # Each port reaches its own application, through both sidecars.
    seen = eventually(lambda: setup.via_client("http"), what="the client to reach the http port")
    assert seen["backend"] == "reviews-http"
    assert "spiffe://cluster.local/ns/default/sa/client" in \
        seen["headers"]["x-forwarded-client-cert"]  # mTLS: the caller's identity
    assert _backend(eventually(lambda: setup.via_client("tcp"),
                               what="the client to reach the tcp port")) == "reviews-tcp"
    assert setup.direct("in_http") is None


def test_permissive_http_port_beside_a_strict_tcp_port(setup: Setup) -> None:
    setup.peer("PERMISSIVE", "in_tcp", "STRICT")
    eventually(lambda: setup.direct("in_tcp") is None and _backend(
        setup.direct("in_http")) == "reviews-http",
        what="reviews' tcp port to refuse plaintext and its http port to take it")
    # The client's sidecar now speaks mTLS to the tcp port, which takes nothing else.
    assert _backend(eventually(lambda: setup.via_client("tcp"),
                               what="the client to reach the strict tcp port")) == "reviews-tcp"
    seen = setup.via_client("http")
    assert seen is not None and "x-forwarded-client-cert" in seen["headers"]
    assert setup.direct("in_tcp") is None


def test_authorization_ports_close_one_port_only(setup: Setup) -> None:
    setup.peer("STRICT", "in_tcp", "STRICT")
    eventually(lambda: _backend(setup.via_client("tcp")) == "reviews-tcp",
               what="the client to reach the tcp port")
    write_atomically(setup.folder / "authz.yaml", DENY_TCP.format(port=setup.ports["in_tcp"]))
    eventually(lambda: setup.via_client("tcp") is None,
               what="the DENY policy to close reviews' tcp port")
    assert _backend(setup.via_client("http")) == "reviews-http"  # the http port stays open
    (setup.folder / "authz.yaml").unlink()
    eventually(lambda: _backend(setup.via_client("tcp")) == "reviews-tcp",
               what="the tcp port to open again")
