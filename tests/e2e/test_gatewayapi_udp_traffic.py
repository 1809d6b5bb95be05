"""UDPRoute end to end: a Gateway API UDP listener, served by `meshpilot serve` to a real
Envoy, sends datagrams to UDP echo upstreams on loopback and their answers come back; weighted
backends share one cluster (a weight 0 one gets nothing)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from support import Served, eventually, gateway_class_template, served_policy

pytestmark = pytest.mark.envoy


class UdpEcho:
    """A UDP upstream answering each datagram with its name, ":", and the datagram."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, args=(self._socket,), daemon=True)
        self._thread.start()
        return int(self._socket.getsockname()[1])

    def _serve(self, sock: socket.socket) -> None:
        while True:
            try:
                data, peer = sock.recvfrom(65536)
                sock.sendto(self.name + b":" + data, peer)
            except OSError:  # closed by stop()
                return

    def stop(self) -> None:
        if self._socket is not None:
            self._socket.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def udp_roundtrip(port: int, payload: bytes) -> bytes | None:
    """The answer to one datagram sent from a fresh socket (a session of its own in Envoy's
    UDP proxy, so its upstream is picked anew), or None if none came."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        sock.sendto(payload, ("127.0.0.1", port))
        try:
            return sock.recv(65536)
        except TimeoutError:
            return None


POLICY = gateway_class_template() + """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: mp
  listeners: [{{name: dgram, port: {port}, protocol: UDP}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: UDPRoute
metadata: {{name: split, namespace: infra}}
spec:
  parentRefs: [{{name: edge, sectionName: dgram}}]
  rules:
  - backendRefs: [{{name: one, port: 7000, weight: 1}}, {{name: two, port: 7000, weight: 1}},
                  {{name: three, port: 7000, weight: 0}}]
---
""" + "".join(f"""apiVersion: v1
kind: Service
metadata: {{{{name: {name}, namespace: infra}}}}
spec: {{{{ports: [{{{{port: 7000, protocol: UDP}}}}]}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{{{name: {name}-1, namespace: infra, labels: {{{{kubernetes.io/service-name: {name}}}}}}}}}
addressType: IPv4
ports: [{{{{port: {{{name}}}, protocol: UDP}}}}]
endpoints: [{{{{addresses: [127.0.0.1]}}}}]
---
""" for name in ("one", "two", "three"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("udproute-e2e")
    servers = {name: UdpEcho(name) for name in ("one", "two", "three")}
    with served_policy(work, "gateway.yaml", POLICY, servers,
                       envoys={"infra/edge": "edge"}) as running:
        yield running


def test_datagrams_reach_the_weighted_backends_and_come_back(served: Served) -> None:
    port = served.ports["port"]
    eventually(lambda: udp_roundtrip(port, b"ping") is not None, timeout=15,
               what="a datagram's answer through the UDPRoute")
    answered = [udp_roundtrip(port, b"ping %d" % i) for i in range(40)]
    senders = {a.split(b":", 1)[0] for a in answered if a is not None}
    assert senders == {b"one", b"two"}, answered  # weight 0: three never
    assert all(a is None or a.split(b":", 1)[1].startswith(b"ping ") for a in answered)


def test_envoy_has_the_udp_listener_with_its_udp_proxy(served: Served) -> None:
    dump = served.envoy.config_dump(resource="dynamic_listeners")
    (listener,) = [entry["active_state"]["listener"] for entry in dump["configs"]
                   if entry["name"] == "infra/edge/" + str(served.ports["port"]) + ":udp"]
    assert listener["address"]["socket_address"]["protocol"] == "UDP"
    (udp_filter,) = listener["listener_filters"]
    assert udp_filter["name"] == "envoy.filters.udp_listener.udp_proxy"
    route = udp_filter["typed_config"]["matcher"]["on_no_match"]["action"]["typed_config"]
    assert route["cluster"] == "infra/split:udp"
