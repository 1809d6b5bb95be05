"""The native language written from the model: each Service, Gateway and Route as the native
document that says the same (`meshpilot convert --to native`, inputs/convert.py).

The inverse of this package's parsers, field by field: a value equal to the parser's default is
left out, so the document reads as a person would write it. What the native language has no
field for (a Gateway API backend that does not resolve, a TLS passthrough listener, a
certificate held in a Kubernetes Secret rather than a file ...) is not guessed at: it is left
out and reported as an `Unsaid`, with the origin of the element that says it. The converter
then loads what was written and compares it with the model, so what this module leaves out
silently is found too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from meshpilot.inputs.native.route import origin_match
from meshpilot.ir.model import (
    DEFAULT_APP_HOST,
    DEFAULT_APP_PORT,
    Backend,
    Cors,
    Endpoint,
    Gateway,
    GatewayListener,
    HashOn,
    HeaderOps,
    HealthCheck,
    InboundPort,
    Locality,
    LocalityLb,
    Match,
    Mirror,
    Origin,
    Retries,
    Route,
    Rule,
    Security,
    Service,
    SessionPersistence,
    Sidecar,
    StringMatch,
    Tracing,
)

Doc = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Unsaid:
    """Something the model holds that the written document does not say."""

    origin: Origin | None  # where it was written (None: made by a compile step)
    what: str  # the element: "Route shop/edge/80/*: rules[0].backends[1]"
    message: str


@dataclass(slots=True)
class Written:
    """One native document (a mapping, in the order its keys are written) and its source."""

    kind: str
    name: str
    body: Doc
    origin: Origin | None
    unsaid: list[Unsaid] = field(default_factory=list)
    rule_origins: tuple[Origin | None, ...] = ()  # a Route's rules', in order


# Where PEM the model holds but no file of the policy does (a Kubernetes Secret's certificate,
# a ConfigMap's CA bundle) can be written: (what, name it came from, bytes, private?) -> the
# path the native document names. None: nowhere (the value is reported unsaid).
FileSink = Callable[[str, str, bytes, bool], str]


class _Writer:
    """Collects what one document cannot say while it is being written."""

    def __init__(self, kind: str, name: str, origin: Origin | None,
                 files: FileSink | None = None) -> None:
        self.kind, self.name, self.origin = kind, name, origin
        self.unsaid: list[Unsaid] = []
        self.files = files

    def cannot(self, path: str, message: str, origin: Origin | None = None) -> None:
        self.unsaid.append(Unsaid(origin or self.origin, f"{self.kind} {self.name}"
                                  + (f": {path}" if path else ""), message))


# ---- values ----------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """Seconds as the native duration text (`2s`, `250ms`, `1.5us`)."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        count = seconds / size
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    milliseconds = seconds * 1000
    if milliseconds >= 1:
        return f"{milliseconds:.12g}ms"
    return f"{seconds * 1e6:.12g}us"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _value_match(match: StringMatch) -> Any:
    if match.kind == "exact" and not match.invert:
        return match.value
    if match.kind in ("present", "absent"):
        return {match.kind: True}
    written: Doc = {match.kind: match.value}
    if match.invert:
        written["invert"] = True
    return written


def _value_matches(pairs: tuple[tuple[str, StringMatch], ...]) -> Doc:
    return {name: _value_match(match) for name, match in pairs}


def _header_ops(ops: HeaderOps) -> Doc:
    written: Doc = {}
    if ops.add:
        written["add"] = dict(ops.add)
    if ops.set:
        written["set"] = dict(ops.set)
    if ops.remove:
        written["remove"] = list(ops.remove)
    return written


def _put(doc: Doc, key: str, value: Any, default: Any = None) -> None:
    """doc[key] = value, unless it is the parser's default (left out, as a person would)."""
    if value != default and value != () and value != {} and value != []:
        doc[key] = value


# ---- Service ---------------------------------------------------------------------------------


def write_service(service: Service, files: FileSink | None = None) -> Written:
    w = _Writer("Service", service.name, service.origin, files)
    doc: Doc = {"kind": "Service", "name": service.name}
    _put(doc, "protocol", service.protocol, "http")
    doc["endpoints"] = [_endpoint(e) for e in service.endpoints]
    if not doc["endpoints"]:
        del doc["endpoints"]
    _put(doc, "subsets", {name: dict(selector) for name, selector in service.subsets})
    options = service.load_balancer_options
    settings = {key: getattr(options, key) for key in
                ("choice_count", "minimum_ring_size", "maximum_ring_size", "table_size")
                if getattr(options, key) is not None}
    if options.slow_start is not None:
        slow = options.slow_start
        settings["slow_start"] = {"window": duration(slow.window)}
        _put(settings["slow_start"], "aggression", slow.aggression, 1.0)
        _put(settings["slow_start"], "min_weight_percent", slow.min_weight_percent, 10.0)
    if settings:
        doc["load_balancer"] = {"policy": service.load_balancer, **settings}
    else:
        _put(doc, "load_balancer", service.load_balancer, "round_robin")
    if service.connect_timeout != 1.0:
        doc["connect_timeout"] = duration(service.connect_timeout)
    _put(doc, "zone_weights", dict(service.zone_weights))
    if service.locality_lb is not None:
        doc["locality_lb"] = _locality_lb(service.locality_lb)
    _put(doc, "max_requests_per_connection", service.max_requests_per_connection)
    for key in ("connection_idle_timeout", "max_connection_duration"):
        if getattr(service, key) is not None:
            doc[key] = duration(getattr(service, key))
    _put(doc, "max_concurrent_streams", service.max_concurrent_streams)
    if service.tcp_keepalive is not None:
        keepalive = service.tcp_keepalive
        doc["tcp_keepalive"] = {key: duration(value) if key != "probes" else value
                                for key, value in (("probes", keepalive.probes),
                                                   ("time", keepalive.time),
                                                   ("interval", keepalive.interval))
                                if value is not None}
    if service.panic_threshold is not None:
        doc["panic_threshold"] = service.panic_threshold
    _put(doc, "failover", list(service.failover))
    if service.tls is not None:
        tls = service.tls
        written: Doc = {}
        _put(written, "sni", tls.sni)
        if tls.verify and tls.ca is not None and files is not None:
            written["ca"] = files("ca", tls.ca_path or service.name, tls.ca, False)
        elif tls.verify and tls.ca_path is not None and _is_file(tls.ca_path):
            written["ca"] = tls.ca_path
        elif tls.verify:
            w.cannot("tls", f"the CA certificates ({tls.ca_path}) are not in a file the native "
                            "tls.ca can name: convert with --output DIR to have them written, "
                            "or write them to a file and set tls.ca", tls.origin)
        if not tls.verify:
            written["verify"] = False
        if tls.subject_alt_names:
            w.cannot("tls", "subjectAltNames (the names the endpoints' certificates must carry "
                            "instead of the SNI) have no native field", tls.origin)
        if tls.client_certificate is not None:
            w.cannot("tls", "a client certificate to the endpoints has no native field",
                     tls.origin)
        doc["tls"] = written
    if service.health_check is not None:
        doc["health_check"] = _health_check(service.health_check)
    if service.circuit_breaker is not None:
        limits = service.circuit_breaker
        written = {key: getattr(limits, key) for key in
                   ("max_connections", "max_pending_requests", "max_requests", "max_retries")
                   if getattr(limits, key) is not None}
        if limits.retry_budget is not None:
            budget = limits.retry_budget
            written["retry_budget"] = {key: getattr(budget, key) for key in
                                       ("percent", "min_concurrency")
                                       if getattr(budget, key) is not None}
        doc["circuit_breaker"] = written
    if service.outlier_detection is not None:
        detection = service.outlier_detection
        written = {}
        for key in ("consecutive_5xx", "consecutive_gateway_errors", "max_ejection_percent"):
            _put(written, key, getattr(detection, key))
        for key in ("interval", "base_ejection_time"):
            if getattr(detection, key) is not None:
                written[key] = duration(getattr(detection, key))
        if detection.success_rate is not None:
            rate = detection.success_rate
            written["success_rate"] = {key: getattr(rate, key) for key in
                                       ("minimum_hosts", "request_volume", "stdev_factor")
                                       if getattr(rate, key) is not None}
        doc["outlier_detection"] = written
    if service.sidecar is not None:
        doc["sidecar"] = _sidecar(w, service.sidecar)
    for key, what in (("hosts", "more Host names for the outbound port"),
                      ("subset_services", "per-subset cluster settings"),
                      ("tcp_routes", "connections routed by SNI and weight")):
        if getattr(service, key):
            w.cannot(key, f"{what} ({key}) have no native field", service.origin)
    return Written("Service", service.name, doc, service.origin, w.unsaid)


def _sidecar(w: _Writer, sidecar: Sidecar) -> Doc:
    doc: Doc = {}
    several = bool(sidecar.more_ports)  # `ports`, each with its app and mode
    _put(doc, "port", None if several else sidecar.port)
    if sidecar.port is not None:
        _put(doc, "address", sidecar.address, "0.0.0.0")
    if several:
        doc["ports"] = [_inbound_port(sidecar, port) for port in sidecar.inbound_ports()]
    elif (sidecar.app_host, sidecar.app_port) != (DEFAULT_APP_HOST, DEFAULT_APP_PORT):
        doc["app"] = _address(sidecar.app_host, sidecar.app_port)
    _put(doc, "outbound_port", sidecar.outbound_port)
    _put(doc, "unknown_hosts", sidecar.unknown_hosts)
    calls: list[Any] = []
    for index, call in enumerate(sidecar.calls):
        if call.egress_port is not None:  # (left out: native calls name a service once)
            w.cannot(f"sidecar.calls[{index}]", f"a Host-routed port of its own "
                     f"({call.egress_port}, Istio's Sidecar egress port) has no native field",
                     call.origin or sidecar.origin)
            continue
        calls.append(call.service if call.local_port is None
                     else {"service": call.service, "local_port": call.local_port})
        if call.route is not None:
            w.cannot(f"sidecar.calls[{index}]", f"this caller's own Route ({call.route}, "
                     "Istio's sourceLabels) has no native field", call.origin or sidecar.origin)
    _put(doc, "calls", calls)
    _put(doc, "mtls", sidecar.mtls, "off")
    if sidecar.identity is not None:
        found = re.fullmatch(r"ns/([^/]+)/sa/([^/]+)", sidecar.identity)
        if found is None:
            w.cannot("sidecar", f"the identity {sidecar.identity} has no native form",
                     sidecar.origin)
        else:
            doc["namespace"], doc["service_account"] = found.group(1), found.group(2)
    if sidecar.tracing is not None:
        doc["tracing"] = _tracing(sidecar.tracing)
    if sidecar.locality is not None:
        doc["locality"] = _locality(sidecar.locality)
    _put(doc, "labels", dict(sidecar.labels))
    for key in ("authorization", "jwt", "deny"):
        if getattr(sidecar, key) is not None:
            w.cannot(f"sidecar.{key}", f"a sidecar's {key} is not converted yet",
                     sidecar.origin)
    return doc


def _locality_lb(policy: LocalityLb) -> Doc:
    written: Doc = {}
    _put(written, "distribute", [{"from": source, "to": dict(shares)}
                                 for source, shares in policy.distribute])
    _put(written, "failover", [{"from": source, "to": target}
                               for source, target in policy.failover])
    _put(written, "failover_priority", list(policy.failover_priority))
    return written


def _locality(where: Locality) -> str:
    """`region[/zone[/subzone]]`, as `locality.locality` reads it."""
    return "/".join(p for p in (where.region, where.zone, where.sub_zone) if p)


def _inbound_port(sidecar: Sidecar, port: InboundPort) -> Doc:
    doc: Doc = {"port": port.port, "app": _address(port.app_host, port.app_port)}
    _put(doc, "protocol", port.protocol)
    _put(doc, "mtls", dict(sidecar.port_modes).get(port.port))
    _put(doc, "service", port.service)
    return doc


def _tracing(tracing: Tracing) -> Doc:
    written: Doc = {"provider": tracing.provider, "collector": tracing.collector}
    _put(written, "sampling", tracing.sampling, 100.0)
    _put(written, "service_name", tracing.service_name)
    if tracing.provider == "zipkin":
        _put(written, "path", tracing.path, "/api/v2/spans")
    return written


def _health_check(check: HealthCheck) -> Doc:
    doc: Doc = {check.kind: check.path if check.kind == "http" else True}
    for key, default in (("interval", 5.0), ("timeout", 1.0)):
        if getattr(check, key) != default:
            doc[key] = duration(getattr(check, key))
    _put(doc, "unhealthy_threshold", check.unhealthy_threshold, 3)
    _put(doc, "healthy_threshold", check.healthy_threshold, 1)
    if check.kind == "http" and check.expected_statuses != ((200, 201),):
        doc["expected_statuses"] = [start if end == start + 1 else f"{start}-{end - 1}"
                                    for start, end in check.expected_statuses]
    for key in ("no_traffic_interval", "unhealthy_interval"):
        if getattr(check, key) is not None:
            doc[key] = duration(getattr(check, key))
    return doc


def _endpoint(endpoint: Endpoint) -> Any:
    address = _address(endpoint.host, endpoint.port)
    written: Doc = {"address": address}
    _put(written, "labels", dict(endpoint.labels))
    _put(written, "weight", endpoint.weight)
    _put(written, "region", endpoint.region)
    _put(written, "zone", endpoint.zone)
    _put(written, "priority", endpoint.priority, 0)
    return address if len(written) == 1 else written


def _is_file(path: str) -> bool:
    """A path the native language names files with (Gateway API's are `secret:NS/NAME`...)."""
    return path.startswith("/") or not re.match(r"[a-z]+:", path)


# ---- Gateway ---------------------------------------------------------------------------------


def write_gateway(gateway: Gateway, files: FileSink | None = None) -> Written:
    w = _Writer("Gateway", gateway.name, gateway.origin, files)
    for index, listener in enumerate(gateway.listeners):
        if listener.protocol == "udp":  # left out of the document: it could say nothing true
            w.cannot(f"listeners[{index}]", "a udp listener (UDPRoute) has no native field; "
                     "native listeners speak http or tcp", listener.origin)
    doc: Doc = {"kind": "Gateway", "name": gateway.name,
                "listeners": [_listener(w, index, listener)
                              for index, listener in enumerate(gateway.listeners)
                              if listener.protocol != "udp"]}
    if gateway.locality is not None:
        doc["locality"] = _locality(gateway.locality)
    if gateway.identity is not None:
        w.cannot("", "the gateway's certificate identity has no native field", gateway.origin)
    return Written("Gateway", gateway.name, doc, gateway.origin, w.unsaid)


def _listener(w: _Writer, index: int, listener: GatewayListener) -> Doc:
    path = f"listeners[{index}]"
    doc: Doc = {"name": listener.name, "port": listener.port}
    _put(doc, "address", listener.address, "0.0.0.0")
    if listener.protocol == "tcp":
        doc["protocol"] = "tcp"
        if listener.service is not None:
            doc["service"] = listener.service
        for key, what in (("backends", "weighted backends (TCPRoute)"),
                          ("passthrough", "TLS passthrough by SNI (TLSRoute)"),
                          ("tcp_routes", "connections routed by SNI and weight")):
            if getattr(listener, key):
                w.cannot(path, f"{what} on a tcp listener has no native field; a native tcp "
                               "listener sends every connection to one Service",
                         listener.origin)
    elif listener.tls is not None:
        doc["protocol"] = "https"
        tls = listener.tls
        certificates = []
        for number, certificate in enumerate(tls.certificates):
            # With a folder to write into, every certificate is written there from the bytes
            # the model holds (a relative path would be read from the new folder).
            if w.files is None and _is_file(certificate.cert_path) \
                    and _is_file(certificate.key_path):
                certificates.append({"cert": certificate.cert_path,
                                     "key": certificate.key_path})
            elif w.files is not None:
                certificates.append({
                    "cert": w.files("cert", certificate.cert_path,
                                    certificate.certificate_chain, False),
                    "key": w.files("key", certificate.key_path, certificate.private_key,
                                   True)})
            else:
                w.cannot(f"{path}.tls.certificates[{number}]",
                         f"the certificate {certificate.cert_path} is not in files: convert "
                         "with --output DIR to have them written, or write its chain and key "
                         "to files and name them in tls.certificates",
                         certificate.origin or tls.origin)
        written: Doc = {"certificates": certificates}
        _put(written, "min_version", tls.min_version)
        _put(written, "alpn", list(tls.alpn), ["h2", "http/1.1"])
        if tls.client_ca is not None:
            w.cannot(f"{path}.tls", "client certificate validation has no native field",
                     tls.origin)
        doc["tls"] = written
    if listener.access_log is not None:
        log: Doc = {"path": listener.access_log.path}
        _put(log, "format", listener.access_log.format, "json")
        doc["access_log"] = log
    _put(doc, "trust_request_id", listener.trust_request_id, False)
    _put(doc, "request_id_in_response", listener.request_id_in_response, False)
    _put(doc, "websocket", listener.websocket, False)
    _put(doc, "redirect_to_https", listener.redirect_to_https)
    _put(doc, "max_requests_per_connection", listener.max_requests_per_connection)
    if listener.client_ip is not None:
        client = listener.client_ip
        written = {}
        _put(written, "xff_trusted_hops", client.xff_trusted_hops, 0)
        _put(written, "trusted_cidrs", list(client.trusted_cidrs))
        _put(written, "header", client.header)
        doc["client_ip"] = written
    if listener.compression is not None:
        compression = listener.compression
        written = {algorithm: True for algorithm in compression.algorithms}
        _put(written, "min_content_length", compression.min_content_length)
        _put(written, "content_types", list(compression.content_types))
        doc["compression"] = written
    if listener.decompression is not None:
        doc["decompression"] = {a: True for a in listener.decompression.algorithms}
    if listener.tracing is not None:
        doc["tracing"] = _tracing(listener.tracing)
    return doc


# ---- Route -----------------------------------------------------------------------------------


def write_route(route: Route, files: FileSink | None = None) -> Written:
    w = _Writer("Route", route.name, route.origin)
    doc: Doc = {"kind": "Route", "name": route.name}
    if route.gateway is not None:
        doc["gateway"] = route.gateway
        _put(doc, "listeners", list(route.listeners))
        _put(doc, "hosts", list(route.hosts), ["*"])
    else:
        doc["service"] = route.service
        if route.callers_namespace is not None:
            w.cannot("service", "a Route for the callers of namespace "
                                f"{route.callers_namespace} only (a consumer route) has no "
                                "native field", route.origin)
    if route.cors is not None:
        doc["cors"] = _cors(w, "cors", route.cors)
    _put(doc, "session_persistence", _session(route.security.session_persistence))
    if _other_security(route.security):
        w.cannot("", "security (jwt, api_keys, authorization ...) is not converted yet",
                 route.origin)
    doc["rules"] = [_rule(w, f"rules[{index}]", rule, route.cors)
                    for index, rule in enumerate(route.rules)]
    return Written("Route", route.name, doc, route.origin, w.unsaid,
                   tuple(rule.origin for rule in route.rules))


def _rule(w: _Writer, path: str, rule: Rule, route_cors: Cors | None) -> Doc:
    doc: Doc = {}
    if rule.matches != (Match(),):
        matches = [_match(w, f"{path}.match[{i}]", m) for i, m in enumerate(rule.matches)]
        doc["match"] = matches[0] if len(matches) == 1 else matches
    if rule.direct_response is not None:
        direct = rule.direct_response
        written: Doc = {"status": direct.status}
        if isinstance(direct.body, bytes):
            w.cannot(f"{path}.direct_response.body", "a body that is not UTF-8 text has no "
                     "native form (native bodies are text)", direct.origin)
        else:
            _put(written, "body", direct.body, "")
        _put(written, "formatted", direct.formatted, False)
        doc["direct_response"] = written
    elif rule.redirect is not None:
        doc["redirect"] = _redirect(w, f"{path}.redirect", rule)
    else:
        doc["backends"] = [_backend(w, f"{path}.backends[{i}]", b)
                           for i, b in enumerate(rule.backends)]
    rewrite: Doc = {}
    if rule.rewrite_path is not None:
        rewrite_path = rule.rewrite_path
        if rewrite_path.prefix is not None:
            rewrite["path"] = {"prefix": rewrite_path.prefix}
        else:
            rewrite["path"] = {"regex": rewrite_path.regex,
                               "substitution": rewrite_path.substitution}
    _put(rewrite, "host", rule.rewrite_host)
    _put(doc, "rewrite", rewrite)
    _put(doc, "request_headers", _header_ops(rule.request_headers))
    _put(doc, "response_headers", _header_ops(rule.response_headers))
    if rule.timeout is not None:
        doc["timeout"] = duration(rule.timeout)
    if rule.idle_timeout is not None:
        doc["idle_timeout"] = duration(rule.idle_timeout)
    if rule.grpc_max_timeout is not None:
        doc["grpc"] = {"max_timeout": duration(rule.grpc_max_timeout)}
    if rule.retries is not None:
        doc["retries"] = _retries(w, f"{path}.retries", rule.retries)
    if rule.fault is not None:
        fault = rule.fault
        written = {}
        if fault.delay is not None:
            delay: Doc = {"fixed": duration(fault.delay.fixed)}
            _put(delay, "percentage", fault.delay.percentage, 100.0)
            written["delay"] = delay
        if fault.abort is not None:
            abort: Doc = {}
            _put(abort, "status", fault.abort.status)
            _put(abort, "grpc_status", fault.abort.grpc_status)
            _put(abort, "percentage", fault.abort.percentage, 100.0)
            written["abort"] = abort
        _put(written, "headers", _value_matches(fault.headers))
        doc["fault"] = written
    if rule.mirrors:
        doc["mirror"] = [_mirror(m) for m in rule.mirrors]
    if rule.hash_on:
        doc["hash_on"] = [_hash_on(h) for h in rule.hash_on]
    _put(doc, "websocket", rule.websocket, False)
    if rule.cors is not None and rule.cors != route_cors:
        doc["cors"] = _cors(w, f"{path}.cors", rule.cors)
    _put(doc, "session_persistence", _session(rule.security.session_persistence))
    if _other_security(rule.security):
        w.cannot(path, "security (jwt, api_keys, authorization ...) is not converted yet",
                 rule.origin)
    return doc


def _other_security(security: Security) -> bool:
    """Whether `security` sets more than session persistence (which is written)."""
    return bool(replace(security, session_persistence=None))


def _session(spec: SessionPersistence | None) -> Doc | None:
    if spec is None:
        return None
    doc: Doc = {}
    if spec.cookie:
        cookie: Doc = {"name": spec.cookie}
        _put(cookie, "path", spec.cookie_path, "/")
        if spec.cookie_ttl is not None:
            cookie["ttl"] = duration(spec.cookie_ttl)
        doc["cookie"] = cookie
    else:
        doc["header"] = spec.header
    _put(doc, "strict", spec.strict, False)
    return doc


def _match(w: _Writer, path: str, match: Match) -> Doc:
    doc: Doc = {}
    if match.path is not None:
        written: Doc = {match.path.kind: match.path.value}
        if match.whole_segments and match.path.kind == "prefix":
            written["whole_segments"] = True
        if match.path.invert:
            written["invert"] = True
        doc["path"] = written
    if len(match.methods) == 1:
        doc["method"] = match.methods[0]
    elif match.methods:
        doc["methods"] = list(match.methods)
    _put(doc, "headers", _value_matches(match.headers))
    _put(doc, "query", _value_matches(match.query))
    return doc


def _backend(w: _Writer, path: str, backend: Backend) -> Any:
    if not backend.resolved:
        w.cannot(path, f"the backend {backend.service} does not resolve, so its share of "
                       "requests is answered 500 (Gateway API's partial validity); a native "
                       "backend names a Service that exists", backend.origin)
    if backend.subset is None and backend.weight == 1 and backend.request_headers is None \
            and backend.response_headers is None:
        return backend.service
    written: Doc = {"service": backend.service}
    _put(written, "subset", backend.subset)
    _put(written, "weight", backend.weight, 1)
    for key in ("request_headers", "response_headers"):
        ops = getattr(backend, key)
        if ops is not None:
            written[key] = _header_ops(ops)
    return written


def _redirect(w: _Writer, path: str, rule: Rule) -> Doc:
    redirect = rule.redirect
    assert redirect is not None
    doc: Doc = {}
    _put(doc, "scheme", redirect.scheme)
    _put(doc, "host", redirect.host)
    if redirect.port is not None:
        doc["port"] = redirect.port
    elif redirect.port_from == "scheme":
        doc["port"] = "scheme"
    _put(doc, "path", redirect.path)
    _put(doc, "prefix", redirect.prefix)
    _put(doc, "status", redirect.status, 302)
    _put(doc, "strip_query", redirect.strip_query, False)
    if redirect.regex is not None:
        doc["regex"], doc["substitution"] = redirect.regex, redirect.substitution
    return doc


def _retries(w: _Writer, path: str, retries: Retries) -> Doc:
    doc: Doc = {"attempts": retries.attempts}
    # What the parser makes of no `on`: the default conditions, then those the codes and
    # headers imply; anything else is written as it is (in its order: Envoy's retry_on).
    implied = (("retriable-status-codes",) if retries.retriable_status_codes else ()) + \
        (("retriable-headers",) if retries.retriable_headers else ())
    if retries.on != tuple(dict.fromkeys((*Retries(attempts=1).on, *implied))):
        doc["on"] = list(retries.on)
    if retries.per_try_timeout is not None:
        doc["per_try_timeout"] = duration(retries.per_try_timeout)
    if retries.backoff is not None:
        backoff = {"base": duration(retries.backoff.base)}
        if retries.backoff.max is not None:
            backoff["max"] = duration(retries.backoff.max)
        doc["backoff"] = backoff
    _put(doc, "retriable_status_codes", list(retries.retriable_status_codes))
    _put(doc, "retriable_headers", _value_matches(retries.retriable_headers))
    _put(doc, "avoid_same_host", retries.avoid_same_host, False)
    if retries.attempts == 0:
        w.cannot(path, "no retry at all with a per-try timeout (Gateway API's backendRequest "
                       "beside request) cannot be written: native attempts start at 1",
                 retries.origin)
    return doc


def _mirror(mirror: Mirror) -> Doc:
    if mirror.from_header is not None:
        doc: Doc = {"service_from_header": mirror.from_header,
                    "candidates": list(mirror.candidates)}
    else:
        doc = {"service": mirror.service}
        _put(doc, "subset", mirror.subset)
    _put(doc, "percentage", mirror.percentage, 100.0)
    return doc


def _hash_on(hash_on: HashOn) -> Doc:
    if hash_on.kind == "source_ip":
        return {"source_ip": True}
    if hash_on.kind == "cookie":
        cookie: Doc = {"name": hash_on.name}
        if hash_on.ttl is not None:
            cookie["ttl"] = duration(hash_on.ttl) if hash_on.ttl else "0s"
        _put(cookie, "path", hash_on.path)
        return {"cookie": cookie}
    return {hash_on.kind: hash_on.name}


_ANY_ORIGIN = StringMatch("regex", ".*")
# An origin the native text form makes an exact match of: scheme://host[:port].
_FULL_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/*]+\Z")


_WILD_LABELS = r"[a-z0-9-]+(\.[a-z0-9-]+)*\."


def _origin_text(match: StringMatch) -> str | None:
    """The origin text (`*.example.com`, `https://*.example.com:8443`) the native parser
    reads as this regex (`route.origin_match`), or None if it reads none as it."""
    value = match.value
    scheme, _, rest = value.partition("://")
    text = "" if scheme == "https?" else f"{scheme}://"
    if rest.startswith(_WILD_LABELS):
        text, rest = text + "*.", rest[len(_WILD_LABELS):]
    text += re.sub(r"\\(.)", r"\1", rest)
    try:
        return text if origin_match(text) == match else None
    except (AssertionError, ValueError):
        return None


def _cors(w: _Writer, path: str, cors: Cors) -> Doc:
    origins: list[Any] = []
    for index, origin in enumerate(cors.allow_origins):
        if origin == _ANY_ORIGIN:
            origins.append("*")
        elif origin.kind == "exact" and _FULL_ORIGIN.match(origin.value):
            origins.append(origin.value)
        elif origin.kind == "exact":
            origins.append({"exact": origin.value})
        elif _origin_text(origin) is not None:
            origins.append(_origin_text(origin))
        else:
            w.cannot(f"{path}.allow_origins[{index}]",
                     f"the origin pattern {origin.value!r} (a {origin.kind}) has no native form: "
                     "native origins are written as text (https://*.example.com)",
                     cors.origin)
    doc: Doc = {"allow_origins": origins}
    _put(doc, "allow_methods", list(cors.allow_methods))
    _put(doc, "allow_headers", list(cors.allow_headers))
    _put(doc, "expose_headers", list(cors.expose_headers))
    if cors.max_age is not None:
        doc["max_age"] = duration(cors.max_age)
    _put(doc, "allow_credentials", cors.allow_credentials)
    return doc


WRITERS: dict[str, Callable[[Any, FileSink | None], Written]] = {
    "Service": write_service, "Gateway": write_gateway, "Route": write_route}
