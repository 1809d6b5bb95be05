"""The upstream UDPRoute conformance tests (conformance/tests/udproute-*.go) as traffic: real
datagrams through a real Envoy that `meshpilot serve` configures, to UDP echo upstreams on
loopback, one test each, named after it. The inputs are meshpilot's own (the shared conformance
copy has no manifests for these tests), written for the same behaviours; their statuses are
checked in `tests/unit/test_gatewayapi_udp_statuses.py`. Beside them: an unresolved backend's
share of datagrams (and of a TCPRoute's connections) is dropped, and a UDP and a TCP listener
share one port number."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from gatewayapi_conformance import TcpEchoBackend, tcp_pod
from support import Served, eventually, gateway_class_template, served_policy, write_policy
from test_gatewayapi_udp_traffic import UdpEcho, udp_roundtrip

pytestmark = pytest.mark.envoy

# Block-style YAML only: the text is a `str.format` template ({name}: a port), so no braces.


def gateway(name: str, *listeners: tuple[str, str, str]) -> str:
    """A Gateway of class mp in infra; listeners (name, protocol, the port's template name)."""
    items = "".join(f"""
  - name: {listener}
    protocol: {protocol}
    port: {{{port}}}""" for listener, protocol, port in listeners)
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: infra
spec:
  gatewayClassName: mp
  listeners:{items}
---
"""


def service(name: str, server: str, namespace: str = "infra", protocol: str = "UDP") -> str:
    """A Service (port 8080) whose one endpoint is the loopback server `server`."""
    return f"""apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  ports:
  - port: 8080
    protocol: {protocol}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: {namespace}
  labels:
    kubernetes.io/service-name: {name}
addressType: IPv4
ports:
- port: {{{server}}}
  protocol: {protocol}
endpoints:
- addresses: [127.0.0.1]
---
"""


def route(name: str, parent: str, backends: str, kind: str = "UDPRoute",
          stamp: str = "2026-01-01T00:00:00Z") -> str:
    """A route of infra; `parent` and `backends` are YAML flow-free lines, indented by us."""
    return f"""apiVersion: gateway.networking.k8s.io/v1alpha2
kind: {kind}
metadata:
  name: {name}
  namespace: infra
  creationTimestamp: "{stamp}"
spec:
  parentRefs:
  - {parent.replace(chr(10), chr(10) + "    ")}
  rules:
  - backendRefs:{"".join(chr(10) + "    - " + b.replace(chr(10), chr(10) + "      ")
                         for b in backends.split(";"))}
---
"""


def ref(name: str, weight: int = 1, namespace: str = "") -> str:
    extra = f"\nnamespace: {namespace}" if namespace else ""
    return f"name: {name}\nport: 8080\nweight: {weight}{extra}"


GRANT = """apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata:
  name: udp-grant
  namespace: apps
spec:
  from:
  - group: gateway.networking.k8s.io
    kind: UDPRoute
    namespace: infra
  to:
  - group: ""
    kind: Service
    name: far
---
"""

UDP_SERVERS = ("coredns", "v1", "v2", "v3", "far", "far_denied", "echo_port", "echo_section",
               "echo_both", "backend_1", "backend_2", "partial_ok", "dgram", "attach")
LISTENERS = ("simple", "weighted", "nonexistent", "cross", "granted", "byport", "bysection",
             "byboth", "multi", "partial")

POLICY = gateway_class_template() + gateway(
    "udp", *((name, "UDP", name) for name in LISTENERS),
    ("shared", "UDP", "shared"), ("shared-tcp", "TCP", "shared"),
    ("tcp-partial", "TCP", "tcppartial")) + gateway(
    "all", *((f"udp-{i}", "UDP", f"all{i}") for i in (1, 2, 3))) + "".join(
    service(server.replace("_", "-"), server, namespace="apps" if "far" in server else "infra")
    for server in UDP_SERVERS) + service("stream", "stream", protocol="TCP") + GRANT + "".join((
        route("udp-coredns", "name: udp\nsectionName: simple", ref("coredns")),
        route("weighted", "name: udp\nsectionName: weighted",
              f"{ref('v1', 70)};{ref('v2', 30)};{ref('v3', 0)}"),
        route("nonexistent", "name: udp\nsectionName: nonexistent", ref("nonexistent-service")),
        route("cross", "name: udp\nsectionName: cross", ref("far-denied", namespace="apps")),
        route("granted", "name: udp\nsectionName: granted", ref("far", namespace="apps")),
        route("by-port", "name: udp\nport: {byport}", ref("echo-port")),
        route("by-section", "name: udp\nsectionName: bysection", ref("echo-section")),
        route("by-both", "name: udp\nsectionName: byboth\nport: {byboth}", ref("echo-both")),
        route("newer", "name: udp\nsectionName: multi", ref("backend-2"),
              stamp="2026-02-01T00:00:00Z"),
        route("older", "name: udp\nsectionName: multi", ref("backend-1")),
        route("partial", "name: udp\nsectionName: partial",
              f"{ref('partial-ok')};{ref('nonexistent-service')}"),
        route("shared-udp", "name: udp\nsectionName: shared", ref("dgram")),
        route("shared-tcp", "name: udp\nsectionName: shared-tcp", ref("stream"),
              kind="TCPRoute"),
        route("tcp-partial", "name: udp\nsectionName: tcp-partial",
              f"{ref('stream')};{ref('nonexistent-service')}", kind="TCPRoute"),
        route("attach-all", "name: all", ref("attach"))))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("udproute-conformance")
    servers: dict[str, UdpEcho | TcpEchoBackend] = {
        name: UdpEcho(name.replace("_", "-")) for name in UDP_SERVERS}
    servers["stream"] = TcpEchoBackend("infra", "stream")
    with served_policy(work, "gateway.yaml", POLICY, servers,
                       free_ports=(*LISTENERS, "shared", "tcppartial", "all1", "all2", "all3"),
                       envoys={"infra/udp": "udp", "infra/all": "all"}) as running:
        # Every listener of a Gateway comes in one LDS answer: one answering, all are there.
        for port in ("simple", "all1"):
            eventually(lambda port=port: udp_roundtrip(running.ports[port], b"ready"),
                       timeout=30, what=f"the {port} UDP listener to answer")
        yield running


def sender(answer: bytes | None) -> str | None:
    """The echo server that answered ("NAME:datagram"), or None."""
    return None if answer is None else answer.split(b":", 1)[0].decode()


def senders(port: int, count: int) -> Counter[str | None]:
    """Who answered each of `count` datagrams sent from fresh sockets (new UDP sessions)."""
    return Counter(sender(udp_roundtrip(port, b"probe %d" % i)) for i in range(count))


def listener_names(served: Served, envoy: str = "infra/udp") -> set[str]:
    dump = served.envoys[envoy].config_dump(resource="dynamic_listeners")
    return {entry["name"] for entry in dump["configs"] if "active_state" in entry}


def test_udproute(served: Served) -> None:
    """UDPRoute (udproute-simple): a datagram reaches the backend and its answer comes back."""
    answer = udp_roundtrip(served.ports["simple"], b"query foo.bar.com")
    assert answer == b"coredns:query foo.bar.com"


def test_udproute_weighted_routing(served: Served) -> None:
    """UDPRouteWeightedRouting: 70/30/0: the weight 0 backend never answers, the 70 one more
    often than the 30 one."""
    counts = senders(served.ports["weighted"], 100)
    assert set(counts) <= {"v1", "v2", None}, counts
    assert counts["v1"] > counts["v2"] > 0, counts


def test_udproute_invalid_backendref_nonexistent(served: Served) -> None:
    """UDPRouteInvalidBackendRefNonexistent: the only backend does not exist: the listener is
    not served (absent from the Envoy), datagrams go unanswered."""
    port = served.ports["nonexistent"]
    assert f"infra/udp/{port}:udp" not in listener_names(served)
    assert f"infra/udp/{served.ports['simple']}:udp" in listener_names(served)
    assert udp_roundtrip(port, b"anyone?") is None


def test_udproute_invalid_cross_namespace_backend_ref(served: Served) -> None:
    """UDPRouteInvalidCrossNamespaceBackendRef: no ReferenceGrant for apps/far-denied: not
    served, its server never reached."""
    port = served.ports["cross"]
    assert f"infra/udp/{port}:udp" not in listener_names(served)
    assert udp_roundtrip(port, b"anyone?") is None


def test_udproute_parentref_port_and_section_name(served: Served) -> None:
    """UDPRouteParentRefPortAndSectionName: routes attached by port, by sectionName, by both
    reach each their own backend."""
    for port, backend in (("byport", "echo-port"), ("bysection", "echo-section"),
                          ("byboth", "echo-both")):
        # A listener may be up before its route's cluster has endpoints (EDS comes apart
        # from LDS): datagrams until then are dropped, so wait for an answer, then check it.
        answer = eventually(lambda port=port: udp_roundtrip(served.ports[port], b"which?"),
                            timeout=30, what=f"the {port} listener to answer")
        assert sender(answer) == backend, port


def test_udproute_multiple_routes_attachment(served: Served) -> None:
    """UDPRouteMultipleRoutesAttachment: two routes on one listener: only the older one's
    backend answers."""
    counts = senders(served.ports["multi"], 20)
    assert counts["backend-1"] > 0 and set(counts) <= {"backend-1", None}, counts


def test_udproute_parentref_attach_all_listeners(served: Served) -> None:
    """UDPRouteParentRefAttachAllListeners: a parentRef without port or sectionName: every
    UDP listener of the Gateway reaches the backend."""
    for i in (1, 2, 3):
        assert sender(udp_roundtrip(served.ports[f"all{i}"], b"hello")) == "attach", i


def test_udproute_unresolved_backends_share_is_dropped(served: Served) -> None:
    """Beside a valid backend, a nonexistent one of equal weight keeps its share: Envoy sends
    every datagram into the route's cluster, but those of that share go to the drop endpoint
    (127.0.0.1:0, where nothing can listen), not to the valid backend."""
    sent = 24
    counts = senders(served.ports["partial"], sent)
    assert set(counts) <= {"partial-ok", None}, counts
    assert counts["partial-ok"] > 0 and counts[None] > 0, counts
    stats = served.envoys["infra/udp"].stats()
    prefix = "cluster.infra/partial_udp.udp."  # Envoy's stat name of the cluster infra/partial:udp
    assert stats[prefix + "sess_tx_datagrams"] + stats[prefix + "sess_tx_errors"] >= sent, \
        {k: v for k, v in stats.items() if k.startswith(prefix)}


def test_tcproute_unresolved_backends_share_is_closed(served: Served) -> None:
    """The same for a TCPRoute: the nonexistent backend's connections are closed, the others
    reach the valid one."""
    answered = Counter(tcp_pod(served.ports["tcppartial"]) for _ in range(24))
    assert set(answered) <= {"stream-pod", None}, answered
    assert answered["stream-pod"] > 0 and answered[None] > 0, answered


def test_a_udp_and_a_tcp_listener_share_a_port(served: Served) -> None:
    """One port number, two sockets: a UDPRoute's datagrams and a TCPRoute's connections."""
    port = served.ports["shared"]
    assert {f"infra/udp/{port}", f"infra/udp/{port}:udp"} <= listener_names(served)
    assert udp_roundtrip(port, b"datagram") == b"dgram:datagram"
    assert tcp_pod(port) == "stream-pod"


REFERENCE_GRANT = gateway_class_template() + gateway("udp", ("udp", "UDP", "port")) + service(
    "far", "far", namespace="apps") + route(
    "granted", "name: udp", ref("far", namespace="apps"))


def test_udproute_reference_grant(tmp_path: Path) -> None:
    """UDPRouteReferenceGrant: the cross-namespace backend answers while the ReferenceGrant
    exists; once it is deleted, the listener stops answering."""
    with served_policy(tmp_path, "gateway.yaml", REFERENCE_GRANT + GRANT,
                       {"far": UdpEcho("far")}, envoys={"infra/udp": "udp"}) as served:
        port = served.ports["port"]
        assert eventually(lambda: udp_roundtrip(port, b"granted?"), timeout=30,
                          what="the granted backend to answer") == b"far:granted?"
        write_policy(tmp_path, "gateway.yaml",
                     REFERENCE_GRANT.format(**served.ports))
        eventually(lambda: f"infra/udp/{port}:udp" not in listener_names(served), timeout=30,
                   what="the listener to go once the ReferenceGrant is deleted")
        assert udp_roundtrip(port, b"still?") is None
