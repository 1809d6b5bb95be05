"""UDPRoute as an input: a UDP listener's datagrams go to one cluster made for the route, whose
endpoints are its backends' weighted by their backendRefs' weights; statuses as for TCPRoute.
Traffic: `tests/e2e/test_gatewayapi_udp_traffic.py`."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_gatewayapi import GATEWAY, status_of, view

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.convert import convert
from meshpilot.inputs.loader import load_policy_text

UDP_GATEWAY = GATEWAY.replace(
    "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}",
    "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n"
    "  - {name: dns, port: 5353, protocol: UDP}") + """\
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: infra}
spec:
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5300}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-1
  namespace: infra
  labels: {kubernetes.io/service-name: dns}
addressType: IPv4
ports: [{name: dns, port: 5300, protocol: UDP}]
endpoints:
- {addresses: [10.0.1.1]}
- {addresses: [10.0.1.2]}
---
"""


UDP_LISTENER = "infra/edge/5353:udp"  # named apart from a TCP listener on the same port


def udp_route(backends: str, name: str = "u", stamp: str | None = None,
              parent: str = "{name: edge, sectionName: dns}", version: str = "v1alpha2") -> str:
    extra = f", creationTimestamp: '{stamp}'" if stamp else ""
    return f"""apiVersion: gateway.networking.k8s.io/{version}
kind: UDPRoute
metadata: {{name: {name}, namespace: infra{extra}}}
spec:
  parentRefs: [{parent}]
  rules: [{{backendRefs: {backends}}}]
---
"""


def udp_listener(model) -> dict:  # type: ignore[no-untyped-def]
    (found,) = [lst for lst in view(model)["listeners"] if lst["name"] == UDP_LISTENER]
    return found


def proxy_of(listener: dict) -> dict:
    (udp_filter,) = listener["listener_filters"]
    assert udp_filter["name"] == "envoy.filters.udp_listener.udp_proxy"
    return udp_filter["typed_config"]


def weights(model, cluster: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    (assignment,) = [a for a in view(model)["endpoints"] if a["cluster_name"] == cluster]
    return {e["endpoint"]["address"]["socket_address"]["address"]:
            e.get("load_balancing_weight", 1)
            for group in assignment["endpoints"] for e in group["lb_endpoints"]}


def test_a_udp_route_sends_its_listeners_datagrams_to_its_backend() -> None:
    model = load_policy_text(UDP_GATEWAY + udp_route("[{name: dns, port: 53}]"))
    assert status_of(model, "UDPRoute", "infra/u") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
    listener = udp_listener(model)
    assert listener["address"]["socket_address"] == {
        "address": "0.0.0.0", "port_value": 5353, "protocol": "UDP"}
    route = proxy_of(listener)["matcher"]["on_no_match"]["action"]["typed_config"]
    assert route["cluster"] == "infra/u:udp"
    assert "filter_chains" not in listener
    clusters = {c["name"] for c in view(model)["clusters"]}
    assert "infra/u:udp" in clusters
    assert not any(c.startswith("infra/dns") for c in clusters)  # only a part of the route's
    assert weights(model, "infra/u:udp") == {"10.0.1.1": 1, "10.0.1.2": 1}
    (status,) = [s for s in model.statuses if s.name == "infra/edge/dns"]
    assert dict(status.details) == {"attachedRoutes": "1", "supportedKinds": "UDPRoute"}


def test_a_v1_udp_route_is_read_as_the_v1alpha2_one() -> None:
    alpha = load_policy_text(UDP_GATEWAY + udp_route("[{name: dns, port: 53}]"))
    v1 = load_policy_text(UDP_GATEWAY + udp_route("[{name: dns, port: 53}]", version="v1"))
    assert status_of(v1, "UDPRoute", "infra/u") == status_of(alpha, "UDPRoute", "infra/u")
    assert udp_listener(v1) == udp_listener(alpha)


def test_weighted_backends_become_one_cluster_weighted_per_endpoint() -> None:
    # dns (weight 3) has two endpoints, web (weight 2) one; the counts' lcm is 2: each dns
    # endpoint weighs 3 * 2 / 2, web's 2 * 2 / 1, so dns takes 6 shares to web's 4 (3:2).
    model = load_policy_text(UDP_GATEWAY + udp_route(
        "[{name: dns, port: 53, weight: 3}, {name: web, port: 8080, weight: 2}]"))
    assert weights(model, "infra/u:udp") == {"10.0.1.1": 3, "10.0.1.2": 3, "10.0.0.1": 4}
    assert {c["name"] for c in view(model)["clusters"]} >= {"infra/u:udp"}


def endpoints(model, cluster: str) -> dict[tuple[str, int], int]:  # type: ignore[no-untyped-def]
    (assignment,) = [a for a in view(model)["endpoints"] if a["cluster_name"] == cluster]
    return {(e["endpoint"]["address"]["socket_address"]["address"],
             e["endpoint"]["address"]["socket_address"].get("port_value", 0)):
            e.get("load_balancing_weight", 1)
            for group in assignment["endpoints"] for e in group["lb_endpoints"]}


def test_an_unresolved_backend_beside_a_valid_one_keeps_its_share_and_drops_it() -> None:
    # dns (weight 1, two endpoints) and nothing (weight 5, unresolved): the lcm of 2 and 1 is
    # 2, so dns's endpoints weigh 1 each and the drop endpoint (port 0) 10: 5/6 dropped.
    model = load_policy_text(UDP_GATEWAY + udp_route(
        "[{name: dns, port: 53}, {name: nothing, port: 1, weight: 5}]"))
    assert status_of(model, "UDPRoute", "infra/u") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")}
    assert endpoints(model, "infra/u:udp") == {
        ("10.0.1.1", 5300): 1, ("10.0.1.2", 5300): 1, ("127.0.0.1", 0): 10}


def test_a_backend_without_endpoints_drops_its_share_too() -> None:
    empty = """apiVersion: v1
kind: Service
metadata: {name: empty, namespace: infra}
spec: {ports: [{port: 53, protocol: UDP}]}
---
"""
    model = load_policy_text(UDP_GATEWAY + empty + udp_route(
        "[{name: dns, port: 53, weight: 1}, {name: empty, port: 53, weight: 1}]"))
    assert status_of(model, "UDPRoute", "infra/u")["ResolvedRefs"] == ("True", "ResolvedRefs")
    assert endpoints(model, "infra/u:udp") == {
        ("10.0.1.1", 5300): 1, ("10.0.1.2", 5300): 1, ("127.0.0.1", 0): 2}


def test_no_backend_that_resolves_leaves_the_listener_unserved() -> None:
    model = load_policy_text(UDP_GATEWAY + udp_route("[{name: nothing, port: 1}]"))
    assert status_of(model, "UDPRoute", "infra/u") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")}
    assert not [lst for lst in view(model)["listeners"] if lst["name"] == UDP_LISTENER]


def test_a_udp_route_cannot_attach_to_an_http_listener_nor_a_tcp_route_to_a_udp_one() -> None:
    model = load_policy_text(UDP_GATEWAY + udp_route("[{name: dns, port: 53}]",
                                                     parent="{name: edge, sectionName: http}"))
    assert status_of(model, "UDPRoute", "infra/u")["Accepted"] == \
        ("False", "NotAllowedByListeners")
    tcp = udp_route("[{name: dns, port: 53}]", name="t").replace("kind: UDPRoute",
                                                                 "kind: TCPRoute")
    model = load_policy_text(UDP_GATEWAY + tcp)
    assert status_of(model, "TCPRoute", "infra/t")["Accepted"] == \
        ("False", "NotAllowedByListeners")
    assert not [lst for lst in view(model)["listeners"] if lst["name"] == UDP_LISTENER]


def test_sectionname_and_port_pick_the_listener() -> None:
    model = load_policy_text(UDP_GATEWAY + udp_route("[{name: dns, port: 53}]",
                                                     parent="{name: edge, port: 5354}"))
    assert status_of(model, "UDPRoute", "infra/u")["Accepted"] == \
        ("False", "NoMatchingParent")
    model = load_policy_text(UDP_GATEWAY + udp_route("[{name: dns, port: 53}]",
                                                     parent="{name: edge, port: 5353}"))
    assert status_of(model, "UDPRoute", "infra/u")["Accepted"] == ("True", "Accepted")


def test_allowed_route_kinds_of_a_udp_listener() -> None:
    text = UDP_GATEWAY.replace(
        "{name: dns, port: 5353, protocol: UDP}",
        "{name: dns, port: 5353, protocol: UDP, allowedRoutes: {kinds: [{kind: TCPRoute}]}}")
    model = load_policy_text(text + udp_route("[{name: dns, port: 53}]"))
    assert status_of(model, "Listener", "infra/edge/dns")["ResolvedRefs"] == \
        ("False", "InvalidRouteKinds")
    assert status_of(model, "UDPRoute", "infra/u")["Accepted"] == \
        ("False", "NotAllowedByListeners")


def test_a_listener_serves_the_oldest_udp_route_only() -> None:
    model = load_policy_text(
        UDP_GATEWAY + udp_route("[{name: web, port: 8080}]", name="new",
                                stamp="2024-01-01T00:00:00Z")
        + udp_route("[{name: dns, port: 53}]", name="old", stamp="2020-01-01T00:00:00Z"))
    assert status_of(model, "UDPRoute", "infra/new")["Accepted"] == ("True", "Accepted")
    (status,) = [s for s in model.statuses if s.name == "infra/edge/dns"]
    assert dict(status.details)["attachedRoutes"] == "2"
    route = proxy_of(udp_listener(model))["matcher"]["on_no_match"]["action"]["typed_config"]
    assert route["cluster"] == "infra/old:udp"


def test_a_service_backend_without_a_port_is_refused() -> None:
    with pytest.raises(PolicyError) as error:
        load_policy_text(UDP_GATEWAY + udp_route("[{name: dns}]"))
    assert 'UDPRoute infra/u: spec.rules[0].backendRefs[0].port: missing "port"' in \
        str(error.value)


def test_converting_to_native_says_the_udp_listener_cannot_be_written(tmp_path: Path) -> None:
    conversion = convert(load_policy_text(UDP_GATEWAY + udp_route("[{name: dns, port: 53}]")),
                         tmp_path)
    assert not conversion.complete
    assert any("udp listener (UDPRoute) has no native field" in u.message
               for u in conversion.unsaid), conversion.unsaid
    assert "5353" not in conversion.text  # left out, never written as an http listener


# ---- UDP and TCP on one port number: two sockets, no conflict -------------------------------


def test_a_udp_and_a_tcp_listener_share_a_port_number() -> None:
    text = UDP_GATEWAY.replace("  - {name: dns, port: 5353, protocol: UDP}",
                               "  - {name: dns, port: 5353, protocol: UDP}\n"
                               "  - {name: raw, port: 5353, protocol: TCP}")
    tcp = udp_route("[{name: web, port: 8080}]", name="t", parent="{name: edge, sectionName: raw}"
                    ).replace("kind: UDPRoute", "kind: TCPRoute")
    model = load_policy_text(text + udp_route("[{name: dns, port: 53}]") + tcp)
    for name in ("dns", "raw"):
        conditions = status_of(model, "Listener", f"infra/edge/{name}")
        assert conditions["Conflicted"] == ("False", "NoConflicts")
        assert conditions["Programmed"] == ("True", "Programmed")
    listeners = {lst["name"]: lst for lst in view(model)["listeners"]}
    assert listeners[UDP_LISTENER]["address"]["socket_address"] == {
        "address": "0.0.0.0", "port_value": 5353, "protocol": "UDP"}
    assert listeners["infra/edge/5353"]["address"]["socket_address"] == {
        "address": "0.0.0.0", "port_value": 5353}  # TCP, the default
    assert proxy_of(listeners[UDP_LISTENER])["matcher"]["on_no_match"]["action"][
        "typed_config"]["cluster"] == "infra/u:udp"
    assert listeners["infra/edge/5353"]["filter_chains"][0]["filters"][0]["name"] == \
        "envoy.filters.network.tcp_proxy"


def test_two_tcp_borne_protocols_on_a_port_still_conflict_beside_udp() -> None:
    text = UDP_GATEWAY.replace("  - {name: dns, port: 5353, protocol: UDP}",
                               "  - {name: dns, port: 5353, protocol: UDP}\n"
                               "  - {name: raw, port: 5353, protocol: TCP}\n"
                               "  - {name: web, port: 5353, protocol: HTTP}\n"
                               "  - {name: dns2, port: 5353, protocol: UDP, hostname: a.b}")
    model = load_policy_text(text + udp_route("[{name: dns, port: 53}]"))
    for name in ("raw", "web"):
        assert status_of(model, "Listener", f"infra/edge/{name}")["Conflicted"] == \
            ("True", "ProtocolConflict")
    # UDP beside UDP, as TCP beside TCP: one socket, and a datagram has no hostname to tell
    # the listeners apart, whatever their `hostname` says.
    for name in ("dns", "dns2"):
        assert status_of(model, "Listener", f"infra/edge/{name}")["Conflicted"] == \
            ("True", "HostnameConflict")
    assert [lst["name"] for lst in view(model)["listeners"]] == ["infra/edge/80"]


def test_a_udp_listener_of_a_later_gateway_may_take_a_tcp_listeners_port() -> None:
    from test_gatewayapi_gateway_conflicts import CLASSES, FIRST, gateway, listener
    model = load_policy_text(CLASSES + FIRST
                             + gateway("dgram", "port: 80, protocol: UDP", "2026-02-01T00:00:00Z")
                             + gateway("late", "port: 80, protocol: UDP", "2026-03-01T00:00:00Z"))
    assert listener(model, "first")["Programmed"] == ("True", "Programmed")
    assert listener(model, "dgram")["Programmed"] == ("True", "Programmed")
    # The UDP socket is dgram's now: a later UDP listener there conflicts with it.
    assert listener(model, "late")["Conflicted"] == ("True", "HostnameConflict")
