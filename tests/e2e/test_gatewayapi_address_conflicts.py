"""Gateways whose sockets overlap (one on 0.0.0.0, a later one on 127.0.0.1, one port): the
older keeps the port and serves through a real Envoy; the later one's Envoy binds nothing
there, so every request to loopback reaches the older Gateway's backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import eventually, http_get, served_policy

pytestmark = pytest.mark.envoy

POLICY = "".join(f"""apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{{{name: {name}}}}}
spec:
  controllerName: meshpilot.io/gateway-controller
  parametersRef: {{{{group: "", kind: ConfigMap, name: {name}, namespace: infra}}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{{{name: {name}, namespace: infra}}}}
data: {{{{address: {address}}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{{{name: {name}, namespace: infra, creationTimestamp: "{stamp}"}}}}
spec:
  gatewayClassName: {name}
  listeners: [{{{{name: web, port: {{port}}, protocol: HTTP}}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{{{name: {name}, namespace: infra}}}}
spec:
  parentRefs: [{{{{name: {name}}}}}]
  rules: [{{{{backendRefs: [{{{{name: {name}-app, port: 8080}}}}]}}}}]
---
apiVersion: v1
kind: Service
metadata: {{{{name: {name}-app, namespace: infra}}}}
spec: {{{{ports: [{{{{port: 8080}}}}]}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{{{name: {name}-1, namespace: infra, labels: {{{{kubernetes.io/service-name: {name}-app}}}}}}}}
addressType: IPv4
ports: [{{{{port: {{{name}}}}}}}]
endpoints: [{{{{addresses: [127.0.0.1]}}}}]
---
""" for name, address, stamp in (("wild", "0.0.0.0", "2026-01-01T00:00:00Z"),
                                 ("loop", "127.0.0.1", "2026-02-01T00:00:00Z")))


def served_by(port: int) -> str | None:
    status, _, body = http_get(f"http://127.0.0.1:{port}/")
    return json.loads(body)["service"] if status == 200 else None


def test_the_older_gateway_on_the_unspecified_address_serves_loopback(tmp_path: Path) -> None:
    from gatewayapi_conformance import EchoBackend
    servers = {name: EchoBackend("infra", name) for name in ("wild", "loop")}
    with served_policy(tmp_path, "gateways.yaml", POLICY, servers,
                       envoys={"infra/wild": "wild", "infra/loop": "loop"}) as served:
        port = served.ports["port"]
        eventually(lambda: served_by(port) == "wild", timeout=15,
                   what="the older Gateway's backend through its Envoy")
        assert {served_by(port) for _ in range(40)} == {"wild"}
        # The wild Envoy binds the port on 0.0.0.0; the later Gateway's was given no listener.
        assert [a for a, _ in served.envoys["infra/wild"].listener_addresses().values()] \
            == ["0.0.0.0"]
        assert served.envoys["infra/loop"].listener_addresses() == {}
