"""Listeners of different Gateways on one socket (an address that names one machine, and a
port): the oldest Gateway keeps it, a later one's listener there is Conflicted or refused, as
the spec's conditions say, and only the older one's is served."""

from __future__ import annotations

from test_gatewayapi import status_of

from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import Model

CLASSES = """apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: host}
spec:
  controllerName: meshpilot.io/gateway-controller
  parametersRef: {group: "", kind: ConfigMap, name: host, namespace: default}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: host}
data: {address: 192.0.2.10, ports: "8080:80"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: local}
spec: {controllerName: meshpilot.io/gateway-controller}
---
"""


def gateway(name: str, listener: str, stamp: str, class_name: str = "host") -> str:
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: infra, creationTimestamp: "{stamp}"}}
spec:
  gatewayClassName: {class_name}
  listeners: [{{name: l, {listener}}}]
---
"""


FIRST = gateway("first", "port: 80, protocol: HTTP, hostname: a.example.com",
                "2026-01-01T00:00:00Z")


def listener(model: Model, name: str) -> dict[str, tuple[str, str]]:
    return status_of(model, "Listener", f"infra/{name}/l")


def test_the_older_gateway_keeps_the_socket_and_later_ones_say_why_not() -> None:
    model = load_policy_text(CLASSES + FIRST + "".join(
        gateway(name, spec, "2026-02-01T00:00:00Z") for name, spec in (
            ("proto", "port: 80, protocol: TCP"),
            ("same", "port: 80, protocol: HTTP, hostname: a.example.com"),
            ("other", "port: 80, protocol: HTTP, hostname: b.example.com"),
            # The class maps 8080 to 80: the socket is what counts.
            ("mapped", "port: 8080, protocol: HTTP, hostname: c.example.com"),
            ("elsewhere", "port: 81, protocol: HTTP, hostname: a.example.com"))))
    assert listener(model, "first")["Programmed"] == ("True", "Programmed")
    assert listener(model, "proto")["Conflicted"] == ("True", "ProtocolConflict")
    assert listener(model, "same")["Conflicted"] == ("True", "HostnameConflict")
    assert listener(model, "other")["Accepted"] == ("False", "PortUnavailable")
    assert listener(model, "mapped")["Accepted"] == ("False", "PortUnavailable")
    for name in ("proto", "same", "other", "mapped"):
        assert listener(model, name)["Programmed"] == ("False", "Invalid")
        assert status_of(model, "Gateway", f"infra/{name}")["Accepted"] == \
            ("False", "ListenersNotValid")
        assert model.gateway(f"infra/{name}").listeners == ()  # type: ignore[union-attr]
    assert listener(model, "elsewhere")["Programmed"] == ("True", "Programmed")
    (message,) = [c.message for s in model.statuses if s.name == "infra/proto/l"
                  for c in s.conditions if c.type == "Conflicted"]
    assert message == ("port 80 is bound as 192.0.2.10:80 by listener l of Gateway "
                       "infra/first (protocol HTTP)")


def test_the_older_one_wins_whichever_is_written_first() -> None:
    later = gateway("aaa", "port: 80, protocol: HTTP, hostname: a.example.com",
                    "2026-03-01T00:00:00Z")
    model = load_policy_text(CLASSES + later + FIRST)
    assert listener(model, "first")["Programmed"] == ("True", "Programmed")
    assert listener(model, "aaa")["Conflicted"] == ("True", "HostnameConflict")


def test_gateways_on_every_machines_addresses_are_not_said_to_conflict() -> None:
    """0.0.0.0 (the default) and loopback are each machine's (each container's) own: two
    Gateways binding them may run apart, as a compose stack runs them."""
    model = load_policy_text(CLASSES + gateway("one", "port: 80, protocol: HTTP", "2026-01-01T00:00:00Z",
                                               "local")
                             + gateway("two", "port: 80, protocol: TCP", "2026-02-01T00:00:00Z",
                                               "local"))
    assert listener(model, "one")["Accepted"] == ("True", "Accepted")
    assert listener(model, "two")["Accepted"] == ("True", "Accepted")
    assert listener(model, "two")["Conflicted"] == ("False", "NoConflicts")


def classes_on(*addresses: str) -> str:
    """A GatewayClass per address (named after it, dots as dashes), no port map."""
    return "".join(f"""apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: {name}}}
spec:
  controllerName: meshpilot.io/gateway-controller
  parametersRef: {{group: "", kind: ConfigMap, name: {name}, namespace: default}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}}}
data: {{address: "{address}"}}
---
""" for address in addresses for name in [address.replace(".", "-").replace(":", "x") or "x"])


def test_the_unspecified_address_overlaps_every_specific_one_of_its_family() -> None:
    """0.0.0.0 takes the port on loopback and on every other address, :: on every IPv6 one: the
    later Gateway of such a pair is refused, whichever of the two is the wildcard."""
    model = load_policy_text(classes_on("0.0.0.0", "127.0.0.1", "192.0.2.20", "::", "::1")
                             + CLASSES + "".join(
        gateway(name, spec, stamp, class_name) for name, spec, stamp, class_name in (
            ("wild", "port: 80, protocol: HTTP", "2026-01-01T00:00:00Z", "0-0-0-0"),
            ("loop", "port: 80, protocol: HTTP, hostname: b.example.com",
             "2026-02-01T00:00:00Z", "127-0-0-1"),
            ("proto", "port: 80, protocol: TCP", "2026-02-01T00:00:00Z", "192-0-2-20"),
            ("loop81", "port: 81, protocol: HTTP", "2026-01-01T00:00:00Z", "127-0-0-1"),
            ("wild81", "port: 81, protocol: HTTP", "2026-02-01T00:00:00Z", "0-0-0-0"),
            # Another family: :: beside IPv4 addresses is not said to collide.
            ("six", "port: 80, protocol: HTTP", "2026-03-01T00:00:00Z", "xx"),
            ("six1", "port: 80, protocol: HTTP", "2026-04-01T00:00:00Z", "xx1"))))
    assert listener(model, "wild")["Programmed"] == ("True", "Programmed")
    assert listener(model, "loop")["Accepted"] == ("False", "PortUnavailable")
    assert listener(model, "proto")["Conflicted"] == ("True", "ProtocolConflict")
    assert listener(model, "loop81")["Programmed"] == ("True", "Programmed")
    assert listener(model, "wild81")["Conflicted"] == ("True", "HostnameConflict")
    assert listener(model, "six")["Programmed"] == ("True", "Programmed")
    assert listener(model, "six1")["Conflicted"] == ("True", "HostnameConflict")
    for name in ("loop", "proto", "wild81", "six1"):
        assert listener(model, name)["Programmed"] == ("False", "Invalid")
        assert model.gateway(f"infra/{name}").listeners == ()  # type: ignore[union-attr]
    (message,) = [c.message for s in model.statuses if s.name == "infra/loop/l"
                  for c in s.conditions if c.type == "Accepted"]
    assert message == ("port 80 is bound as 127.0.0.1:80 by listener l of Gateway infra/wild "
                       "on 0.0.0.0:80 (the unspecified address takes the port on every "
                       "address); Gateways are not merged")
