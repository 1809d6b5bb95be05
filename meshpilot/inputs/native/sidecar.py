"""A Service's `sidecar:` block: the mesh side of a Service, as `model.Sidecar`.

This module owns the shape of `sidecar:` and what can be checked within it: ports, the
application's address, the list of called services (each once, each reachable by the
application: through a `local_port` or the sidecar's `outbound_port`), and that no two of the
sidecar's own listeners share a port. Whether a called service exists is `references.py`'s job;
what Envoy receives is `translators/sidecar.py`'s. See docs/mesh.md.

Shape (inside a `kind: Service` document):

    sidecar:
      port: 15006                 # inbound: mesh traffic to this service (optional: a client-only
                                  #   workload has no inbound listener)
      address: 0.0.0.0            # the inbound listener's bind address (default 0.0.0.0)
      app: 127.0.0.1:8080         # where the application listens (default 127.0.0.1:8080);
                                  #   a bare port means 127.0.0.1:port
      ports:                      # instead of port and app: several inbound ports, the first
        - {port: 15006, app: 9080}   # the one the Service's endpoints name
        - {port: 15090, app: 9090, protocol: http, mtls: permissive,   # its own mode
           service: reviews-metrics}  # a Service whose endpoints are this port (meshpolicy.py)
      outbound_port: 15001        # one HTTP port on 127.0.0.1: the Host header picks the service
      calls:                      # the services the application calls: all the sidecar receives
        - ratings                 # through outbound_port only
        - {service: details, local_port: 9001}   # also on 127.0.0.1:9001, whatever the Host
      mtls: strict                # strict | permissive | off (default: the MeshPolicy of its
                                  #   namespace, else the mesh's, else off): docs/security.md
      authorization:              # callers by identity (needs mtls strict or permissive)
        action: ALLOW             # ALLOW (no rules: nobody) or DENY
        rules: [{from: [productpage, "spiffe://cluster.local/ns/default/sa/edge"],
                 paths: [/api/*], methods: [GET]}]   # and a Route rule's keys (security.py)
      jwt: {providers: [...]}     # as a Route's, jwks file or inline: claims, authenticated
      namespace: shop             # identity spiffe://<td>/ns/shop/sa/<service_account>
      service_account: web        #   (defaults: default, the Service's name)
      tracing: {provider: zipkin, collector: zipkin}   # as a Gateway's, inbound and outbound
      locality: eu-west/eu-west-1a  # where it runs: region[/zone[/subzone]], and its labels:
      labels: {tier: gold}          #   what its callees' locality_lb compares (locality.py)
      unknown_hosts: refuse       # a Host outbound_port knows no callee for: refuse (502) or
                                  #   passthrough (to that host:port); unwritten: 404
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, cast, get_args

from meshpilot.inputs.context import DocumentContext
from meshpilot.inputs.native import fields
from meshpilot.inputs.native import locality as localities
from meshpilot.inputs.native.fields import Fields, written_before
from meshpilot.inputs.native.gateway import parse_tracing
from meshpilot.inputs.native.security import authorization_policy, parse_jwt
from meshpilot.inputs.yamlsource import FieldPath
from meshpilot.ir.model import (
    DEFAULT_APP_HOST,
    DEFAULT_APP_PORT,
    MESH_NAMESPACE,
    Authorization,
    AuthzRule,
    Call,
    InboundPort,
    MtlsMode,
    Protocol,
    Sidecar,
    UnknownHosts,
)

SIDECAR_KEYS = ("port", "ports", "address", "app", "outbound_port", "calls", "mtls",
                "authorization", "jwt", "namespace", "service_account", "tracing", "locality",
                "labels", "unknown_hosts")
UNKNOWN_HOSTS = fields.choice(get_args(UnknownHosts))
PORT_KEYS = ("port", "app", "protocol", "mtls", "service")
MTLS_MODES = ("strict", "permissive", "off")
MTLS_MODE = fields.choice(MTLS_MODES)
CALL_KEYS = ("service", "local_port")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
_PROTOCOL = fields.choice(get_args(Protocol))  # a port's: the Service's choices


def parse_sidecar(doc: Fields) -> Sidecar | None:
    """The Service's `sidecar:` block, or None when it has none (issues are reported)."""
    spec = doc.mapping("sidecar", "a mapping such as {port: 15006, app: 127.0.0.1:8080, "
                                  "calls: [reviews]}")
    if spec is None:
        return None
    spec.check_keys(SIDECAR_KEYS, "sidecar")
    protocol = doc.value.get("protocol") or "http"
    address = spec.get("address", fields.ip_address) or "0.0.0.0"
    outbound_port = spec.get("outbound_port", fields.PORT)
    calls = _calls(spec)
    if "ports" in spec.value:
        for key in ("port", "app"):
            if key in spec.value:
                spec.report(key, f"{key} is the single inbound port's; with ports, each entry "
                                 f"says its own", at_value=False)
        inbound, port_modes = _ports(spec, address)
    else:
        inbound, port_modes = _single_port(spec, address), ()
    if not inbound and "calls" not in spec.value and "ports" not in spec.value:
        doc.report("sidecar", "a sidecar needs a port (inbound traffic to this service), calls "
                              "(the services it calls) or both", at_value=False)
    if "address" in spec.value and not inbound:
        spec.report("address", "address is the inbound listener's; it needs a port",
                    at_value=False)
    _check_ports(spec, inbound, outbound_port, calls)
    unknown_hosts = spec.get("unknown_hosts", UNKNOWN_HOSTS)
    if unknown_hosts is not None and outbound_port is None:
        spec.report("unknown_hosts", "unknown_hosts is the outbound port's catch-all; it "
                                     "needs outbound_port", at_value=False)
    mtls = spec.get("mtls", mtls_mode) or "off"
    modes = {mtls, *(mode for _, mode in port_modes)}
    # Which inbound ports carry HTTP: authorization, jwt and tracing act on those.
    http_ports = [p for p in inbound if (p.protocol or protocol) != "tcp"]
    tracing = parse_tracing(spec)
    if tracing is not None and inbound and not http_ports and not calls:
        spec.report("tracing", "tracing follows HTTP requests; this sidecar carries tcp only",
                    at_value=False)
    authorization = _authorization(spec)
    jwt = parse_jwt(spec)
    if jwt is not None and not inbound:
        spec.report("jwt", "jwt applies to inbound traffic; the sidecar needs a port",
                    at_value=False)
    if authorization is not None and "jwt" not in spec.value and any(
            r.claims or r.authenticated is not None or (r.exclude and r.exclude.claims)
            for r in authorization.rules):
        spec.report("authorization", "claims and authenticated need the sidecar's jwt (a "
                                     "request has no claims without one)", at_value=False)
    if modes != {"off"} and "tls" in doc.value:
        doc.report("tls", "a Service in the mesh with mtls gets its TLS from the mesh CA; "
                          "remove tls or set sidecar.mtls: off", at_value=False)
    if authorization is not None:
        if inbound and not http_ports:
            spec.report("authorization", "authorization by path, method and caller needs an "
                                         "HTTP service; this one speaks tcp", at_value=False)
        if not inbound:
            spec.report("authorization", "authorization applies to inbound traffic; the sidecar "
                                         "needs a port", at_value=False)
        # An mtls left unwritten may come from a MeshPolicy: checked with it (meshpolicy.py).
        if "mtls" in spec.value and modes == {"off"} and any(
                names_callers(r) or (r.exclude and names_callers(r.exclude))
                for r in authorization.rules):
            spec.report("authorization", "rules with `from` or `namespaces` need mtls strict or "
                                         "permissive: without a client certificate no caller "
                                         "has an identity", at_value=False)
    first = inbound[0] if inbound else None
    return Sidecar(port=None if first is None else first.port, address=address,
                   app_host=DEFAULT_APP_HOST if first is None else first.app_host,
                   app_port=DEFAULT_APP_PORT if first is None else first.app_port,
                   outbound_port=outbound_port, calls=calls, mtls=cast(Any, mtls),
                   authorization=authorization, origin=spec.origin(), jwt=jwt,
                   identity=_identity(spec, doc), tracing=tracing, more_ports=inbound[1:],
                   port_modes=port_modes, mtls_inherited="mtls" not in spec.value,
                   locality=spec.get("locality", localities.locality),
                   labels=spec.get("labels", fields.labels) or (),
                   unknown_hosts=cast(Any, unknown_hosts))


def _single_port(spec: Fields, address: str) -> tuple[InboundPort, ...]:
    """`port` and `app`: the one inbound port (or none: a client-only sidecar)."""
    port = spec.get("port", fields.PORT)
    app = spec.get("app", _app_address)
    app_host, app_port = app or (DEFAULT_APP_HOST, DEFAULT_APP_PORT)
    if port is None:
        return ()
    if _forwards_to_itself(app_host, app_port, port, address):
        spec.report("app" if "app" in spec.value else "port",
                    f"the application cannot listen on the sidecar's own inbound port {port}: "
                    "the sidecar would forward to itself")
    return (InboundPort(port, app_host, app_port, origin=spec.origin("port")),)


def _ports(spec: Fields, address: str
           ) -> tuple[tuple[InboundPort, ...], tuple[tuple[int, MtlsMode], ...]]:
    """`ports: [{port, app, protocol, mtls}, ...]`: the inbound ports, the first the one the
    Service's endpoints name, and the modes the entries write (Istio's portLevelMtls)."""
    items = spec.items("ports", "inbound port")
    found: list[InboundPort] = []
    modes: list[tuple[int, MtlsMode]] = []
    seen: dict[Hashable, FieldPath] = {}
    for index, item in enumerate(items or ()):
        path = (*spec.path, "ports", index)
        entry = Fields.at(spec.ctx, item, path, "a mapping such as {port: 15006, app: 9080}")
        if entry is None:
            continue
        entry.check_keys(PORT_KEYS, "an inbound port")
        port = entry.get("port", fields.PORT, required=True)
        app = entry.get("app", _app_address, required=True)
        protocol = entry.get("protocol", _PROTOCOL)
        mode = entry.get("mtls", mtls_mode)
        served = entry.get("service", fields.name)
        if served is not None and index == 0:
            entry.report("service", "the first port serves this Service itself (its "
                                    "endpoints name it); name another Service on a further "
                                    "port", at_value=False)
        if port is None or app is None:
            continue
        first = written_before(spec.ctx, seen, port, (*path, "port"))
        if first is not None:
            entry.report("port", f"port {port} is listed twice (first at {first})")
            continue
        if _forwards_to_itself(*app, port, address):
            entry.report("app", f"the application cannot listen on the sidecar's own inbound "
                                f"port {port}: the sidecar would forward to itself")
        found.append(InboundPort(port, app[0], app[1], cast(Any, protocol),
                                 origin=entry.origin(), service=served))
        if mode is not None:
            modes.append((port, cast(MtlsMode, mode)))
    return tuple(found), tuple(sorted(modes))


def _forwards_to_itself(app_host: str, app_port: int, port: int, address: str) -> bool:
    return app_port == port and (app_host in LOOPBACK_HOSTS or app_host == address
                                 or address in ("0.0.0.0", "::"))


def names_callers(rule: AuthzRule) -> bool:
    """Whether the rule names callers (by identity or namespace): only mTLS says who calls."""
    return bool(rule.principals or rule.namespaces)


def _identity(spec: Fields, doc: Fields) -> str | None:
    """`ns/<namespace>/sa/<service_account>` (Istio's SPIFFE path) when either is written;
    None keeps the default, the Service's name in the CA's namespace."""
    namespace = spec.get("namespace", fields.name)
    account = spec.get("service_account", fields.name)
    if namespace is None and account is None:
        return None
    name = doc.value.get("name")
    return (f"ns/{namespace or MESH_NAMESPACE}/sa/"
            f"{account or (name if isinstance(name, str) else '')}")


def _authorization(spec: Fields) -> Authorization | None:
    """`authorization: {action, rules}` with Istio's semantics: a Route's rules (paths, also
    as regexes, methods, headers, source_ips, `not`) plus `from`, the callers."""
    if spec.value.get("authorization") is None:
        return None
    return authorization_policy(spec.ctx, spec.value["authorization"],
                                (*spec.path, "authorization"), mesh=True)


def mtls_mode(value: Any) -> str:
    """strict, permissive or off; YAML reads an unquoted `off` (and `no`) as false: that is off
    too, and an unquoted `on` (true) is refused with the choices."""
    if value is False:
        return "off"
    if value is True:
        raise fields.Invalid("expected strict, permissive or off (true is not a mode: write "
                             "strict or permissive)")
    return MTLS_MODE(value)


def _app_address(value: Any) -> tuple[str, int]:
    """`host:port`, or a bare port on 127.0.0.1."""
    if isinstance(value, int) and not isinstance(value, bool):
        return DEFAULT_APP_HOST, fields.PORT(value)
    return fields.address(value)


def _calls(spec: Fields) -> tuple[Call, ...]:
    items = spec.items("calls", "called service")
    if items is None:
        return ()
    calls: list[Call] = []
    seen: dict[Hashable, FieldPath] = {}
    for index, item in enumerate(items):
        path = (*spec.path, "calls", index)
        call = _call(spec.ctx, item, path)
        if call is None:
            continue
        first = written_before(spec.ctx, seen, call.service, path)
        if first is not None:
            fields.report_at(spec.ctx, path, f"service {fields.quoted(call.service)} is listed "
                                             f"twice (first at {first})")
            continue
        if call.local_port is None and "outbound_port" not in spec.value:
            fields.report_at(spec.ctx, path, f"the application could not reach "
                                             f"{call.service}: give it a local_port "
                                             f"({{service: {call.service}, local_port: 9001}}) "
                                             "or give the sidecar an outbound_port")
        calls.append(call)
    return tuple(calls)


def _call(ctx: DocumentContext, item: Any, path: FieldPath) -> Call | None:
    if isinstance(item, str):
        service = fields.convert_at(ctx, item, path, fields.name)
        return None if service is None else Call(service, origin=ctx.origin(path))
    entry = Fields.at(ctx, item, path, "a service name or a mapping such as {service: reviews, "
                                       "local_port: 9001}")
    if entry is None:
        return None
    entry.check_keys(CALL_KEYS, "a call")
    service = entry.get("service", fields.name, required=True)
    local_port = entry.get("local_port", fields.PORT)
    return None if service is None else Call(service, local_port, origin=entry.origin())


def _check_ports(spec: Fields, inbound: tuple[InboundPort, ...], outbound_port: int | None,
                 calls: tuple[Call, ...]) -> None:
    """The sidecar's listeners share one machine (its outbound ones on 127.0.0.1, which the
    default inbound 0.0.0.0 covers): each needs a port of its own."""
    taken: dict[int, str] = {p.port: "an inbound port" if len(inbound) > 1 else
                             "the inbound port" for p in inbound}
    if outbound_port is not None:
        if outbound_port in taken:
            spec.report("outbound_port", f"port {outbound_port} is already {taken[outbound_port]}")
        taken.setdefault(outbound_port, "the outbound_port")
    for index, call in enumerate(calls):
        if call.local_port is None:
            continue
        if call.local_port in taken:
            path = (*spec.path, "calls", index, "local_port")
            fields.report_at(spec.ctx, path, f"port {call.local_port} is already "
                                             f"{taken[call.local_port]}")
            continue
        taken[call.local_port] = f"the local_port of {call.service}"
