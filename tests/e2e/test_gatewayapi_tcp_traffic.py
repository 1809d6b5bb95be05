"""TCPRoute end to end: a Gateway API TCP listener, served by `meshpilot serve` to a real
Envoy, proxies raw bytes to a TCP echo upstream on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import eventually, gateway_class_template, loopback_service_template, served_policy
from test_listeners import TcpEcho, tcp_roundtrip

pytestmark = pytest.mark.envoy

POLICY = gateway_class_template() + """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: mp
  listeners: [{{name: raw, port: {port}, protocol: TCP}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: echo, namespace: infra}}
spec:
  parentRefs: [{{name: edge, sectionName: raw}}]
  rules: [{{backendRefs: [{{name: echo, port: 7000}}]}}]
---
""" + loopback_service_template('echo', 7000)


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    work = tmp_path_factory.mktemp("tcproute-e2e")
    with served_policy(work, "gateway.yaml", POLICY, {"echo": TcpEcho()},
                       envoys={"infra/edge": "edge"}) as served:
        yield served.ports["port"]


def test_bytes_reach_the_tcp_backend_and_come_back(port: int) -> None:
    payload = b"\x00not HTTP\r\n\r\n" + bytes(range(256)) * 32
    assert eventually(lambda: tcp_roundtrip(port, payload) == payload, timeout=15,
                      what="the TCP echo through the TCPRoute")


WEIGHTED = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: mp}}
spec:
  controllerName: meshpilot.io/gateway-controller
  parametersRef: {{group: "", kind: ConfigMap, name: mp, namespace: infra}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: mp, namespace: infra}}
data: {{address: 127.0.0.1}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: mp
  listeners: [{{name: raw, port: {port}, protocol: TCP}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: split, namespace: infra}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - backendRefs: [{{name: one, port: 7000, weight: 1}}, {{name: two, port: 7000, weight: 1}},
                  {{name: three, port: 7000, weight: 0}}]
---
""" + "".join(f"""apiVersion: v1
kind: Service
metadata: {{{{name: {name}, namespace: infra}}}}
spec: {{{{ports: [{{{{port: 7000}}}}]}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{{{name: {name}-1, namespace: infra, labels: {{{{kubernetes.io/service-name: {name}}}}}}}}}
addressType: IPv4
ports: [{{{{port: {{{name}}}}}}}]
endpoints: [{{{{addresses: [127.0.0.1]}}}}]
---
""" for name in ("one", "two", "three"))


def test_weighted_backends_share_the_connections_and_weight_0_gets_none(
        tmp_path: Path) -> None:
    from gatewayapi_conformance import TcpEchoBackend, tcp_pod
    servers = {name: TcpEchoBackend("infra", name) for name in ("one", "two", "three")}
    with served_policy(tmp_path, "gateway.yaml", WEIGHTED, servers,
                       envoys={"infra/edge": "edge"}) as served:
        port = served.ports["port"]
        eventually(lambda: tcp_pod(port) is not None, timeout=15,
                   what="the TCP echo through the weighted TCPRoute")
        answered = [tcp_pod(port) for _ in range(60)]
    assert set(answered) == {"one-pod", "two-pod"}, answered
    assert 10 <= answered.count("one-pod") <= 50
