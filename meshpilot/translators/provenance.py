"""Where a generated resource came from: the policy elements (their `Origin`s) that built it.

Asked after the fact, from the model and the resource's type and name, so the translators stay
pure and pay nothing for it: names are made in one place (`names.py`) from the policy's own
names, so a name leads back to the element that named it. Used when Envoy refuses a resource
(the pre-push check, a NACK) to say which file, line and column to fix.

A part of a RouteConfiguration (a virtual host = a Route, a route entry = one of its rules, or
one match of a rule) can be asked for too (`part`): the pre-push check narrows a refused route
configuration down to the virtual host and entry Envoy refuses. A VHDS virtual host
(`xds/vhds.py`, named `<route configuration>/<virtual host>`) is its Route, then the listener.

Most precise first: a raw EnvoyResources entry (which replaces a generated resource of the same
type and name) is exactly its own origin; a route entry is its rule; a route configuration is
its listener and the Routes attached to it.
"""

from __future__ import annotations

import re

from meshpilot.base import types
from meshpilot.base.errors import Position
from meshpilot.ir.model import Model, Origin, Route, Service
from meshpilot.translators import names
from meshpilot.xds import vhds

_ENTRY = re.compile(r"^(?P<route>.+)/rules\[(?P<rule>\d+)\](?:/match\[(?P<match>\d+)\])?"
                    r"(?:/mirror\[[^\]]+\])?$")
_TLS = re.compile(r"^(?P<listener>.+)/tls\[(?P<index>\d+)\]$")
_CLIENT_CA = re.compile(r"^(?P<listener>.+)/client-ca$")  # a MUTUAL listener's clients' CA


def origins_of(model: Model, view: str, type_url: str, name: str,
               part: str | None = None) -> tuple[Origin, ...]:
    """The origins of the view's resource `name` of `type_url` (most precise first); `part`:
    a virtual host or route entry name within a RouteConfiguration. Empty if nothing in the
    policy made it (a plugin's resource, a CA identity Secret)."""
    for raw in model.raw:
        if raw.type_url == type_url and raw.name == name and (
                raw.views is None or view in raw.views):
            return (raw.origin or Origin(raw.position, "EnvoyResources", raw.document),)
    if type_url == types.CLUSTER and name in (names.PASSTHROUGH_CLUSTER,
                                              names.BLACKHOLE_CLUSTER):
        return _keep(*_sidecar_origins(model, view))  # its `unknown_hosts`
    if type_url in (types.CLUSTER, types.ENDPOINT):
        return _cluster(model, name)
    if type_url == types.LISTENER:
        return _listener(model, view, name)
    if type_url == types.ROUTE:
        found = _route_part(model, part) if part else ()
        return found + _route_config(model, view, name)
    if type_url == types.VIRTUAL_HOST:  # VHDS: `<route configuration>/<virtual host>`
        config, vhost = vhds.split_name(name)
        return _keep(*_route_part(model, part or vhost), *_listener(model, view, config))
    if type_url == types.SECRET:
        return _secret(model, name)
    return ()


def first_position(origins: tuple[Origin, ...]) -> Position | None:
    return origins[0].position if origins else None


def _origin(element: Service | Route | object, kind: str, name: str | None,
            position: Position | None) -> Origin | None:
    found = getattr(element, "origin", None)
    if isinstance(found, Origin):
        return found
    return Origin(position, kind, name) if position is not None else None


def _keep(*found: Origin | None) -> tuple[Origin, ...]:
    out: list[Origin] = []
    for origin in found:
        if origin is not None and origin not in out:
            out.append(origin)
    return tuple(out)


def _service_origin(service: Service | None) -> Origin | None:
    if service is None:
        return None
    return _origin(service, "Service", service.name, service.position)


def _cluster(model: Model, name: str) -> tuple[Origin, ...]:
    if name.startswith("inbound|"):
        owner = name.removeprefix("inbound|")
        service = model.service(owner)
        port = None
        if service is None and names.PORT_MARK in owner:  # a further inbound port's
            owner, _, number = owner.rpartition(names.PORT_MARK)
            service = model.service(owner)
            port = next((p for p in service.sidecar.more_ports if str(p.port) == number), None) \
                if service is not None and service.sidecar is not None else None
        sidecar = service.sidecar if service is not None else None
        return _keep(port.origin if port is not None else None,
                     sidecar.origin if sidecar is not None else None, _service_origin(service))
    owner = names.service_of_cluster(name, lambda n: model.service(n) is not None)
    return _keep(_service_origin(model.service(owner)))


def _sidecar_origins(model: Model, view: str) -> tuple[Origin | None, ...]:
    service = model.service(view)
    sidecar = service.sidecar if service is not None else None
    return (sidecar.origin if sidecar is not None else None, _service_origin(service))


def _listener(model: Model, view: str, name: str) -> tuple[Origin, ...]:
    gateway = model.gateway(view)
    if gateway is not None:
        for spec in gateway.listeners:
            if names.listener(gateway.name, spec.name) == name:
                return _keep(spec.origin, _origin(gateway, "Gateway", gateway.name,
                                                  gateway.position))
        return _keep(_origin(gateway, "Gateway", gateway.name, gateway.position))
    if name.startswith("outbound/"):
        callee = model.service(name.removeprefix("outbound/"))
        return _keep(*_calls(model, view, callee), *_sidecar_origins(model, view))
    return _keep(*_sidecar_origins(model, view))


def _calls(model: Model, view: str, callee: Service | None) -> tuple[Origin | None, ...]:
    service = model.service(view)
    if callee is None or service is None or service.sidecar is None:
        return ()
    return tuple(call.origin for call in service.sidecar.calls if call.service == callee.name)


def _route_config(model: Model, view: str, name: str) -> tuple[Origin, ...]:
    gateway = model.gateway(view)
    if gateway is not None:
        listener_name = name.removeprefix(f"{gateway.name}{names.SEPARATOR}")
        # A TLS host's table (`names.tls_host_routes`): LISTENER/HOST; listener names hold no "/".
        listener_name, _, host = listener_name.partition(names.SEPARATOR)
        attached = [r for r in model.routes if r.gateway == gateway.name
                    and (not r.listeners or listener_name in r.listeners)
                    and (not host or r.tls_host == host)]
        return _keep(*(_origin(r, "Route", r.name, r.position) for r in attached),
                     *_listener(model, view, names.listener(gateway.name, listener_name)))
    if name.startswith("outbound/"):
        callee = name.removeprefix("outbound/")
        attached = [r for r in model.routes if r.service == callee]
        return _keep(*(_origin(r, "Route", r.name, r.position) for r in attached),
                     *_listener(model, view, name))
    return _listener(model, view, name)


def _route_part(model: Model, part: str) -> tuple[Origin, ...]:
    """A virtual host (a Route's name), a route entry (`shop/rules[1]`, `.../match[0]`)."""
    entry = _ENTRY.match(part)
    route = next((r for r in model.routes if r.name == (entry["route"] if entry else part)),
                 None)
    if route is None:
        return ()
    whole = _origin(route, "Route", route.name, route.position)
    if entry is None:
        return _keep(whole)
    index = int(entry["rule"])
    if index >= len(route.rules):
        return _keep(whole)
    rule = route.rules[index]
    rule_origin = _origin(rule, "Route", route.name, rule.position)
    match_origin = None
    if entry["match"] is not None and int(entry["match"]) < len(rule.matches):
        match_origin = rule.matches[int(entry["match"])].origin
    return _keep(match_origin, rule_origin, whole)


def _secret(model: Model, name: str) -> tuple[Origin, ...]:
    tls = _TLS.match(name)
    if tls is not None:
        # rpartition: a Gateway API gateway is named NS/NAME; listener names hold no "/".
        gateway_name, _, listener_name = tls["listener"].rpartition(names.SEPARATOR)
        gateway = model.gateway(gateway_name)
        if gateway is not None:
            for spec in gateway.listeners:
                if spec.name == listener_name and spec.tls is not None:
                    certificates = getattr(spec.tls, "certificates", ())
                    index = int(tls["index"])
                    certificate = (certificates[index] if index < len(certificates) else None)
                    return _keep(getattr(certificate, "origin", None), spec.tls.origin,
                                 spec.origin)
    client_ca = _CLIENT_CA.match(name)
    if client_ca is not None:
        gateway_name, _, listener_name = client_ca["listener"].rpartition(names.SEPARATOR)
        gateway = model.gateway(gateway_name)
        for spec in gateway.listeners if gateway is not None else ():
            if spec.name == listener_name and spec.tls is not None:
                return _keep(spec.tls.origin, spec.origin)
    if name.endswith(f"{names.SEPARATOR}ca"):
        service = model.service(name.removesuffix(f"{names.SEPARATOR}ca"))
        if service is not None:
            return _keep(service.tls.origin if service.tls is not None else None,
                         _service_origin(service))
    return ()
