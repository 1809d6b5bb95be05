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
