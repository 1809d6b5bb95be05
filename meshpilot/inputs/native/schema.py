"""The JSON Schema (draft 2020-12) of one policy document, for editors and other tools.

This module owns describing the language's shape to tools that never run meshpilot: a `oneOf`
over the kinds, each told apart by its `kind` constant, every field with its description and,
where the loader accepts a closed set of values, its enum. It must stay a description: the loader
is the judge (it checks what a schema cannot say, such as references between documents, and gives
better messages), so the schema may be looser than the loader but should not be stricter. The one
exception is null: the loader reads a member written as null (`endpoints:` with everything under
it commented out) as left out, while the schema flags it, which helps in an editor. Tests check
that its fields match the keys each kind's parser accepts.
"""

from __future__ import annotations

from typing import Any

from meshpilot.inputs.native import (
    gateway,
    matches,
    meshpolicy,
    rollout,
    route,
    security,
    service,
    tls,
)
from meshpilot.inputs.native.envoy_resources import KIND as ENVOY_RESOURCES
from meshpilot.inputs.native.envoy_resources import RESOURCE_LISTS

Schema = dict[str, Any]

DRAFT = "https://json-schema.org/draft/2020-12/schema"

_DNS_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"


def json_schema() -> Schema:
    """The schema of one policy document (a YAML file holds several, each checked alone)."""
    kinds = {"Service": _service(), "Gateway": _gateway(), "Route": _route(),
             ENVOY_RESOURCES: _envoy_resources(), rollout.KIND: _rollout(),
             meshpolicy.KIND: _mesh_policy()}
    return {
        "$schema": DRAFT,
        "title": "meshpilot policy document",
        "description": "One document of a meshpilot policy folder: a Service, a Gateway, a "
                       "Route, raw Envoy resources, how edits are rolled out, or mesh "
                       "security for a namespace. Every document has a kind and a name.",
        "oneOf": [{"$ref": f"#/$defs/{kind}"} for kind in kinds],
        "$defs": {**kinds, **_shared()},
    }


# ---------------------------------------------------------------------------------------------
# Building blocks.


def _ref(name: str, description: str | None = None) -> Schema:
    schema: Schema = {"$ref": f"#/$defs/{name}"}
    if description:
        schema["description"] = description
    return schema


def _object(description: str, properties: dict[str, Schema], *,
            required: tuple[str, ...] = ()) -> Schema:
    schema: Schema = {"type": "object", "description": description, "properties": properties,
                      "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


def _document(kind: str, description: str, properties: dict[str, Schema], *,
              required: tuple[str, ...] = ()) -> Schema:
    return _object(description, {
        "kind": {"const": kind, "description": "What this document describes."},
        "name": _ref("name", f"The {kind}'s name, unique among {kind}s."),
        **properties,
    }, required=("kind", "name", *required))


def _integer(description: str, minimum: int, maximum: int) -> Schema:
    return {"type": "integer", "minimum": minimum, "maximum": maximum,
            "description": description}


def _enum(description: str, values: tuple[Any, ...], default: Any = None) -> Schema:
    schema: Schema = {"enum": list(values), "description": description}
    if default is not None:
        schema["default"] = default
    return schema


def _list(description: str, items: Schema, *, unique: bool = False) -> Schema:
    schema: Schema = {"type": "array", "description": description, "items": items,
                      "minItems": 1}
    if unique:
        schema["uniqueItems"] = True
    return schema


def _exactly_one(*keys: str) -> list[Schema]:
    return [{"required": [key]} for key in keys]


def _shared() -> dict[str, Schema]:
    return {
        "name": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$",
                 "description": "Letters, digits, '.', '_' and '-', starting with a letter or "
                                "digit."},
        "duration": {"type": "string",
                     "pattern": r"^\s*([0-9]+(\.[0-9]+)?(us|ms|s|m|h))+\s*$",
                     "description": "A duration with units: 250ms, 2s, 1m, 1h30m."},
        "address": {"type": "string",
                    "pattern": r"^(\[[^\]]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$",
                    "description": "host:port: an IPv4 address, [IPv6] or a DNS name, and a "
                                   "port from 1 to 65535."},
        "labels": {"type": "object", "additionalProperties": {"type": "string"},
                   "propertyNames": {"minLength": 1},
                   "description": "Label names and their (string) values."},
        "hostName": {"type": "string", "pattern": f"^{_DNS_NAME}$",
                     "description": "A DNS host name."},
        "urlPath": {"type": "string", "pattern": r"^/\S*$",
                    "description": "A URL path, starting with /."},
        "regex": {"type": "string", "minLength": 1,
                  "description": "A regular expression in RE2 syntax (Envoy's engine): no "
                                 "backreferences or lookarounds."},
        "headerName": {"type": "string",
                       "pattern": r"^(:authority|:method|:path|:scheme|"
                                  r"[!#$%&'*+.^_`|~0-9A-Za-z-]+)$",
                       "description": "An HTTP header name (case does not matter)."},
        "valueMatch": _value_match(),
        "headerOps": _header_ops(),
    }


# ---------------------------------------------------------------------------------------------
# The kinds.


def _service() -> Schema:
    endpoint = {"oneOf": [
        _ref("address", "An endpoint's address, host:port."),
        _object("An endpoint with labels (selected by subsets) and a weight.", {
            "address": _ref("address"),
            "labels": _ref("labels", "Labels that subsets select endpoints by."),
            "weight": _integer("Load-balancing weight.", 1, 128),
            "region": _ref("name", "The endpoint's region (its locality, with zone)."),
            "zone": _ref("name", "The endpoint's zone (its locality, with region)."),
            "sub_zone": _ref("name", "The endpoint's subzone (its locality, below zone)."),
            "priority": _integer("Failover level: 0 is preferred, 1 takes over when 0 fails "
                                 "(default 0).", 0, service.MAX_PRIORITY),
        }, required=("address",)),
    ]}
    lb_settings = _object("A load balancer with settings.", {
        "policy": _enum("The load balancer.", service.LOAD_BALANCERS),
        "choice_count": _integer("least_request: endpoints compared per pick (default 2).", 2,
                                 1000),
        "minimum_ring_size": _integer("ring_hash: smallest ring (default 1024).", 1,
                                      service.MAX_RING_SIZE),
        "maximum_ring_size": _integer("ring_hash: largest ring (default 8M).", 1,
                                      service.MAX_RING_SIZE),
        "table_size": _integer("maglev: lookup table size, a prime (default 65537).", 2,
                               service.MAX_MAGLEV_TABLE),
        "slow_start": _object("round_robin, least_request: a new endpoint's share ramped "
                              "up.", {
            "window": _ref("duration", "How long the ramp lasts."),
            "aggression": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000,
                           "description": "1 ramps linearly (the default); higher starts "
                                          "slower."},
            "min_weight_percent": {"type": "number", "minimum": 0, "maximum": 100,
                                   "description": "The share it starts from (default 10)."},
        }, required=("window",)),
    }, required=("policy",))
    limit = {key: _integer(f"{key.replace('_', ' ').capitalize()}.", 0, 2**32 - 1)
             for key in service.CIRCUIT_BREAKER_LIMITS}
    return _document("Service", "A service: its endpoints and how Envoy reaches them.", {
        "protocol": _enum("What the endpoints speak.", service.PROTOCOLS, "http"),
        "endpoints": _list("Static endpoints (discovered ones come from elsewhere).", endpoint),
        "subsets": {"type": "object", "minProperties": 1,
                    "additionalProperties": {"allOf": [_ref("labels"), {"minProperties": 1}]},
                    "propertyNames": _ref("name"),
                    "description": "Named groups of endpoints, each selected by labels; each "
                                   "must select at least one endpoint."},
        "load_balancer": {"oneOf": [
            _enum("How requests are spread over the endpoints.", service.LOAD_BALANCERS,
                  "round_robin"),
            lb_settings], "description": "How requests are spread over the endpoints."},
        "health_check": _health_check(),
        "circuit_breaker": _object("Limits beyond which Envoy fails fast.", {
            **limit,
            "retry_budget": _object("Retries allowed as a share of active requests (replaces "
                                    "max_retries).", {
                "percent": {"type": "number", "minimum": 0, "maximum": 100,
                            "description": "Share of active requests (default 20)."},
                "min_concurrency": _integer("Retries always allowed at once (default 3).", 0,
                                            2**32 - 1),
            })}),
        "outlier_detection": _object("Ejecting endpoints that keep failing.", {
            "consecutive_5xx": _integer("5xx responses in a row that eject an endpoint.", 0,
                                        2**32 - 1),
            "consecutive_gateway_errors": _integer("502, 503 or 504 responses in a row that "
                                                   "eject an endpoint.", 0, 2**32 - 1),
            "interval": _ref("duration", "How often ejection is evaluated."),
            "base_ejection_time": _ref("duration", "How long an endpoint is ejected, times the "
                                                   "number of ejections."),
            "max_ejection_percent": _integer("At most this share of endpoints is ejected.", 0,
                                             100),
            "success_rate": _object("Ejecting endpoints whose success rate is far below the "
                                    "others'.", {
                "minimum_hosts": _integer("Endpoints with enough requests needed (default 5).",
                                          0, 2**32 - 1),
                "request_volume": _integer("Requests per interval an endpoint needs to count "
                                           "(default 100).", 0, 2**32 - 1),
                "stdev_factor": {"type": "number", "minimum": 0.001, "maximum": 1_000_000,
                                 "description": "Eject below mean - factor x stdev (default "
                                                "1.9)."},
            }),
        }),
        "zone_weights": {"type": "object", "description": "Locality-weighted balancing: each "
                         "zone's weight (every zone the endpoints use needs one).",
                         "additionalProperties": _integer("The zone's weight.", 1, 1_000_000)},
        "connect_timeout": _ref("duration", "Timeout for new connections (default 1s)."),
        "max_requests_per_connection": _integer("Open a new connection to an endpoint after "
                                                "this many requests on one.", 1, 2**32 - 1),
        "connection_idle_timeout": _ref("duration", "Close an HTTP connection to an endpoint "
                                                    "idle this long (Envoy's default: 1h)."),
        "max_connection_duration": _ref("duration", "Close (drain) an HTTP connection to an "
                                                    "endpoint after this long."),
        "max_concurrent_streams": _integer("http2, grpc: streams one connection carries at "
                                           "once.", 1, 2_147_483_647),
        "tcp_keepalive": _object("TCP keepalive on connections to the endpoints.", {
            "probes": _integer("Unanswered probes before the connection is dropped.", 1,
                               1000),
            "time": _ref("duration", "Idle time before the first probe (whole seconds)."),
            "interval": _ref("duration", "Time between probes (whole seconds)."),
        }),
        "panic_threshold": {"type": "number", "minimum": 0, "maximum": 100,
                            "description": "Percent healthy below which Envoy balances over "
                                           "every endpoint (default 50; 0: never)."},
        "failover": _list("Services to send to, in order, when this one has no healthy "
                          "endpoint.", _ref("name"), unique=True),
        "sidecar": _sidecar(),
        "tls": _upstream_tls(),
        "locality_lb": _locality_lb(),
    })


def _locality_lb() -> Schema:
    pattern = {"type": "string", "description": "region, region/zone or region/zone/subzone; "
                                                "* as the last part for any."}
    return _object("Balancing by each calling sidecar's locality (its sidecar.locality).", {
        "distribute": _list("Shares by locality for callers in `from` (the first rule that "
                            "matches).", _object("A caller's locality and the shares it sends "
                                                 "to each locality.", {
                                "from": pattern,
                                "to": {"type": "object", "minProperties": 1,
                                       "additionalProperties": _integer(
                                           "The share, in percent (all add up to 100).", 1,
                                           100),
                                       "description": "Locality pattern -> share."},
                            }, required=("from", "to"))),
        "failover": _list("Callers in region `from` fail over to region `to` before any "
                          "other.", _object("Region to region.", {
                              "from": {"type": "string", "description": "The caller's region."},
                              "to": {"type": "string", "description": "The region it fails "
                                                                      "over to."},
                          }, required=("from", "to"))),
        "failover_priority": _list("Label keys: endpoints whose labels equal the caller's for "
                                   "the first keys come first.", {"type": "string"},
                                   unique=True),
    })


def _sidecar() -> Schema:
    port = {"type": "integer", "minimum": 1, "maximum": 65535}
    call = {"oneOf": [
        _ref("name", "A Service, reached through the outbound_port (by Host)."),
        _object("A Service with a local port of its own.", {
            "service": _ref("name", "The called Service."),
            "local_port": {**port, "description": "The application sends to 127.0.0.1:this "
                                                  "port, whatever the Host."},
        }, required=("service",)),
    ]}
    return _object("The mesh side: this Service's sidecar Envoy (node cluster = its name); "
                   "its endpoints are then the sidecars' inbound addresses.", {
        "port": {**port, "description": "Inbound: mesh traffic to this service, forwarded to "
                                        "the application."},
        "address": {"type": "string", "description": "The inbound listener's bind address "
                                                     "(default 0.0.0.0)."},
        "app": {"oneOf": [_ref("address"), port],
                "description": "Where the application listens, host:port or a port on "
                               "127.0.0.1 (default 127.0.0.1:8080)."},
        "outbound_port": {**port, "description": "One HTTP port on 127.0.0.1 for every called "
                                                 "service, picked by the Host header."},
        "unknown_hosts": {"enum": ["passthrough", "refuse"],
                          "description": "A Host the outbound_port knows no called service "
                                         "for: passthrough (to that host and port) or refuse "
                                         "(502). Unwritten: 404."},
        "calls": _list("The services the application calls: all the sidecar receives.", call),
        "ports": _list("Several inbound ports instead of port and app, each a listener of "
                       "its own; the Service's endpoints name the first.", _object(
            "One inbound port.", {
                "port": {**port, "description": "Inbound: mesh traffic on this port."},
                "app": {"oneOf": [_ref("address"), port],
                        "description": "Where the application listens for this port, "
                                       "host:port or a port on 127.0.0.1."},
                "protocol": _enum("What this port speaks (default: the Service's protocol).",
                                  ("http", "http2", "grpc", "tcp")),
                "mtls": {**_mtls(), "description": "This port's mTLS mode (default: the "
                                                   "sidecar's mtls); Istio's portLevelMtls."},
                "service": _ref("name", "A further port only: the Service (without a "
                                        "sidecar) whose endpoints are this port; its callers "
                                        "speak mTLS to it while the port does."),
            }, required=("port", "app"))),
        "mtls": {**_mtls(), "description": "Mesh mTLS with the CA's certificates: strict "
                                           "refuses plaintext, permissive accepts both "
                                           "(docs/security.md); an unquoted off (YAML false) "
                                           "is off. Default: the MeshPolicy of its namespace, "
                                           "else the mesh's, else off."},
        "authorization": _sidecar_authorization(),
        "jwt": {**_security("inbound requests")["jwt"],
                "description": "JWT validation of inbound requests (jwks file or inline), for "
                               "authorization's claims and authenticated."},
        "namespace": _ref("name", "The namespace of the sidecar's identity "
                                  "(spiffe://<td>/ns/<namespace>/sa/<service_account>; default "
                                  "default)."),
        "service_account": _ref("name", "The service account of the sidecar's identity "
                                        "(default: the Service's name)."),
        "tracing": {**_tracing(), "description": "Tracing of the sidecar's inbound and "
                                                 "outbound requests (spans named after the "
                                                 "Service)."},
        "locality": {"type": "string", "description": "Where this sidecar runs: "
                                                      "region[/zone[/subzone]] (what its "
                                                      "callees' locality_lb compares)."},
        "labels": _ref("labels", "This sidecar's labels (what its callees' locality_lb "
                                 "failover_priority compares)."),
    })


def _mtls() -> Schema:
    return {"enum": ["strict", "permissive", "off", False]}


def _sidecar_authorization() -> Schema:
    return _object("Callers allowed (ALLOW) or refused (DENY) on inbound, by identity (needs "
                   "mtls), path, method, header and address; ALLOW with no rules refuses "
                   "everyone.", {
        "action": {"enum": ["ALLOW", "DENY"], "description": "Default ALLOW."},
        "rules": _list("Any rule matches; within a rule, every field given must.",
                       _authz_rule(mesh=True)),
    })


def _mesh_policy() -> Schema:
    return _document(meshpolicy.KIND, "Mesh security for every sidecar of a namespace (or of "
                                      "every namespace): their default mTLS mode and an "
                                      "authorization joining theirs (DENY before ALLOW).", {
        "namespace": {"oneOf": [_ref("name"), {"const": "*"}],
                      "description": "The namespace of the sidecars it applies to (their "
                                     "identity's, sidecar.namespace); \"*\": every "
                                     "namespace, the mesh."},
        "mtls": {**_mtls(), "description": "The default mode of those sidecars: a sidecar's "
                                           "own mtls wins, a namespace's policy over the "
                                           "mesh's."},
        "authorization": {**_sidecar_authorization(),
                          "description": "Checked in each of those sidecars with its own "
                                         "authorization and the other policies': every DENY "
                                         "first, then any ALLOW must match."},
    }, required=("namespace",))


def _authz_rule(*, mesh: bool) -> Schema:
    """An authorization rule (a Route's, or with `from` a sidecar's) and its `not` form."""
    path = {"oneOf": [
        {"type": "string", "description": "\"/exact\", \"/prefix/*\" or \"*\"."},
        _object("Exactly this path.", {"exact": _ref("urlPath")}, required=("exact",)),
        _object("Paths starting with this.", {"prefix": _ref("urlPath")}, required=("prefix",)),
        _object("Paths matching this regex.", {"regex": _ref("regex")}, required=("regex",)),
    ]}
    conditions: dict[str, Schema] = {
        "paths": _list("Any of these paths (without the query).", path),
        "methods": _list("HTTP methods.", _enum("An HTTP method.", matches.METHODS)),
        "headers": {"type": "object", "propertyNames": _ref("headerName"),
                    "additionalProperties": _ref("valueMatch"),
                    "description": "Request headers and how their values must match."},
        "source_ips": _list("Client addresses or CIDR ranges.", {"type": "string"}),
    }
    if mesh:
        conditions["from"] = _list("Callers: Service or Gateway names, or SPIFFE IDs.",
                                   {"type": "string"})
        conditions["namespaces"] = _list("Callers by namespace: any identity "
                                         "ns/<namespace>/sa/* of the trust domain.",
                                         _ref("name", "A namespace."))
    conditions["claims"] = {"type": "object", "additionalProperties": {"type": "string"},
                            "description": "JWT claims and a value each must equal (or hold); "
                                           "needs jwt."}
    rule = _object("Every condition given must hold; each list is any of its items.", {
        **conditions,
        "not": _object("Conditions that must not hold (each one given: not any of its "
                       "items).", dict(conditions)),
    })
    rule["properties"]["authenticated"] = {
        "type": "boolean", "description": "true: the request has a valid JWT; false: it "
                                          "has none (needs jwt)."}
    return rule


def _health_check() -> Schema:
    schema = _object("Active health checking: exactly one of http, tcp or grpc.", {
        "http": _ref("urlPath", "Check with an HTTP GET of this path."),
        "tcp": {"const": True, "description": "Check by connecting."},
        "grpc": {"const": True, "description": "Check with the gRPC health service (needs "
                                               "protocol grpc or http2)."},
        "interval": _ref("duration", "Time between checks (default 5s)."),
        "timeout": _ref("duration", "Time to wait for a check (default 1s)."),
        "unhealthy_threshold": _integer("Failed checks before an endpoint is unhealthy "
                                        "(default 3).", 1, 1_000_000),
        "healthy_threshold": _integer("Passed checks before an endpoint is healthy again "
                                      "(default 1).", 1, 1_000_000),
        "expected_statuses": _list("HTTP statuses that pass (default 200): codes or ranges "
                                   "like \"200-299\".", {"oneOf": [
                                       {"type": "integer", "minimum": 100, "maximum": 599},
                                       {"type": "string",
                                        "pattern": r"^[1-5][0-9]{2}(-[1-5][0-9]{2})?$"}]}),
        "no_traffic_interval": _ref("duration", "Time between checks while the cluster has "
                                                "had no traffic (default: the interval)."),
        "unhealthy_interval": _ref("duration", "Time between checks of an unhealthy endpoint "
                                               "(default: the interval)."),
    })
    schema["oneOf"] = _exactly_one(*service.HEALTH_CHECK_KINDS)
    return schema


def _tls_file(description: str) -> Schema:
    return {"type": "string", "minLength": 1, "description": description}


def _listener_tls() -> Schema:
    certificate = _object("A certificate chain and its private key (PEM files).", {
        "cert": _tls_file("The certificate chain file (leaf first)."),
        "key": _tls_file("Its unencrypted private key file; never shown by meshpilot."),
    }, required=("cert", "key"))
    return _object("protocol https: TLS termination, certificates delivered by SDS.", {
        "certificates": _list("One or more; Envoy picks the one whose SAN matches the "
                              "client's SNI, the first when none does.", certificate),
        "min_version": _enum("Lowest TLS version accepted (default 1.2).", tls.TLS_VERSIONS),
        "alpn": _list("ALPN protocols offered (default [h2, http/1.1]).",
                      {"enum": list(tls.ALPN_PROTOCOLS)}, unique=True),
    }, required=("certificates",))


def _upstream_tls() -> Schema:
    return _object("TLS from Envoy to the endpoints.", {
        "sni": {"type": "string", "pattern": rf"^{_DNS_NAME}$",
                "description": "Server name sent (SNI), and expected in the endpoints' "
                               "certificates when verifying."},
        "ca": _tls_file("PEM file of the CA certificates trusted to sign the endpoints' "
                        "certificates (needed when verify is true)."),
        "verify": {"type": "boolean", "default": True,
                   "description": "Verify the endpoints' certificates (default true)."},
    })


def _tracing() -> Schema:
    return _object("Distributed tracing: spans exported to a collector, trace headers "
                   "propagated upstream.", {
        "provider": _enum("opentelemetry (OTLP over gRPC, W3C traceparent) or zipkin (JSON v2 "
                          "over HTTP, B3 headers).", gateway.TRACING_PROVIDERS),
        "collector": _ref("name", "The Service spans are sent to (protocol grpc for "
                                  "opentelemetry)."),
        "sampling": {"type": "number", "minimum": 0, "maximum": 100, "default": 100,
                     "description": "Percent of new traces sampled (default 100)."},
        "service_name": {"type": "string", "minLength": 1, "maxLength": 253,
                         "description": "opentelemetry: the spans' service name (default: "
                                        "the gateway's or sidecar's name)."},
        "path": {"type": "string", "pattern": "^/", "default": "/api/v2/spans",
                 "description": "zipkin: the collector's endpoint."},
    }, required=("provider", "collector"))


def _gateway() -> Schema:
    access_log = _object("An access log file, one line per request (or connection).", {
        "path": {"type": "string", "pattern": "^/",
                 "description": "An absolute file path, /dev/stdout included."},
        "format": _enum("One JSON object per line, or Envoy's default text line.",
                        gateway.ACCESS_LOG_FORMATS, "json"),
    }, required=("path",))
    tracing = _tracing()
    listener = _object("A port the gateway's Envoy listens on.", {
        "name": _ref("name", "Unique within the gateway; Routes may attach to it by name."),
        "port": _integer("The port.", 1, 65535),
        "address": {"type": "string", "description": "The IP address to bind (default "
                                                     "0.0.0.0)."},
        "protocol": _enum("What the listener speaks: HTTP (Routes attach to it), HTTPS (the "
                          "same over TLS: needs tls) or TCP (proxied to one service).",
                          gateway.LISTENER_PROTOCOLS, "http"),
        "tls": _listener_tls(),
        "redirect_to_https": {"oneOf": [{"const": True}, {"type": "integer", "minimum": 1,
                                                          "maximum": 65535}],
                              "description": "Answer every request with a 301 to the same "
                                             "URL over https: true (port 443) or the https "
                                             "port. The listener then serves no Routes."},
        "service": _ref("name", "protocol tcp: the Service (protocol tcp) every connection "
                                "goes to."),
        "access_log": {**access_log, "description": "This listener's access log (default: the "
                                                    "gateway's)."},
        "trust_request_id": {"type": "boolean", "default": False,
                             "description": "Keep an x-request-id the client sent (default: "
                                            "Envoy replaces it with a new one)."},
        "request_id_in_response": {"type": "boolean", "default": False,
                                   "description": "Send x-request-id back in every response."},
        "compression": _object("Compress responses for clients that accept it (brotli, "
                               "zstd, gzip: at least one).", {
            "brotli": {"const": True, "description": "Compress with brotli (preferred)."},
            "zstd": {"const": True, "description": "Compress with zstd."},
            "gzip": {"const": True, "description": "Compress with gzip."},
            "min_content_length": _integer("Smaller responses are not compressed (default "
                                           "30).", 0, 2**32 - 1),
            "content_types": _list("Content types to compress (default: Envoy's list of "
                                   "text, JSON, XML and JavaScript types).",
                                   {"type": "string", "pattern": "^[^/\\s]+/[^/\\s]+$"}),
        }) | {"anyOf": _exactly_one("brotli", "zstd", "gzip")},
        "decompression": _object("Decompress request bodies sent compressed (Content-Encoding)"
                                 " in these algorithms (at least one).", {
            "brotli": {"const": True, "description": "Accept brotli request bodies."},
            "zstd": {"const": True, "description": "Accept zstd request bodies."},
            "gzip": {"const": True, "description": "Accept gzip request bodies."},
        }) | {"anyOf": _exactly_one("brotli", "zstd", "gzip")},
        "websocket": {"type": "boolean", "default": False,
                      "description": "Allow websocket upgrades."},
        "client_ip": {**_object("How the client's address is found behind proxies (used by "
                                "source_ips, rate limits by source_ip and the access log).", {
            "xff_trusted_hops": _integer("Trust this many proxies' X-Forwarded-For "
                                         "entries.", 1, 32),
            "trusted_cidrs": _list("Trust X-Forwarded-For written by proxies at these "
                                   "addresses.", {"type": "string"}, unique=True),
            "header": _ref("headerName", "The client's address is in this header."),
        }), "oneOf": _exactly_one("xff_trusted_hops", "trusted_cidrs", "header")},
        "max_requests_per_connection": _integer("Close a client's connection after this many "
                                                "requests.", 1, 2**32 - 1),
        "tracing": {**tracing, "description": "This listener's tracing (default: the "
                                              "gateway's)."},
    }, required=("name", "port"))
    listener["if"] = {"properties": {"protocol": {"const": "tcp"}}, "required": ["protocol"]}
    listener["then"] = {"required": ["service"]}
    return _document("Gateway", "An edge Envoy (its node cluster is the gateway's name) and "
                                "its listeners.", {
        "access_log": {**access_log, "description": "The default access log of every "
                                                    "listener."},
        "listeners": _list("The gateway's listeners.", listener),
        "tracing": {**tracing, "description": "The default tracing of every HTTP listener."},
        "locality": {"type": "string", "description": "Where the gateway's Envoys run: "
                                                      "region[/zone[/subzone]] (what the "
                                                      "locality_lb of Services it sends to "
                                                      "compares)."},
    }, required=("listeners",))


def _route() -> Schema:
    schema = _document("Route", "How requests arriving at a gateway, or sent to a service in "
                                "the mesh, are matched and handled.", {
        "gateway": _ref("name", "The Gateway this Route attaches to."),
        "service": _ref("name", "Or: the Service this Route attaches to; its rules apply to "
                                "every caller's sidecar (no listeners or hosts then)."),
        "listeners": _list("Attach to these listeners of the gateway only (default: all).",
                           _ref("name"), unique=True),
        "hosts": _list("Host names this Route serves: exact names, *.suffix wildcards, or "
                       "\"*\" (every host, the default).", {
                           "type": "string", "pattern": rf"^(\*|(\*\.)?{_DNS_NAME})$"},
                       unique=True),
        "cors": {**_cors(), "required": ["allow_origins"]},
        **_security("this Route's hosts"),
        "rules": _list("Rules, tried in order; the first that matches handles the request.",
                       _rule()),
    }, required=("rules",))
    schema["oneOf"] = _exactly_one("gateway", "service")
    return schema


def _percentage(description: str) -> Schema:
    return {"type": "number", "minimum": 0, "maximum": 100,
            "description": f"{description} (0 to 100, default 100)."}


def _cors() -> Schema:
    headers = _list("Header names.", _ref("headerName"), unique=True)
    return _object("CORS for this Route's hosts: Envoy answers preflights and adds the "
                   "Access-Control headers.", {
        "allow_origins": _list("Allowed origins: \"https://a.example\" (exactly), "
                               "\"a.example\" (http or https), \"*.b.example\" (any "
                               "subdomain), or \"*\" (any origin).",
                               {"oneOf": [{"type": "string", "minLength": 1},
                                          _object("An origin that is no URL (\"null\"), "
                                                  "compared exactly.",
                                                  {"exact": {"type": "string",
                                                             "minLength": 1}},
                                                  required=("exact",))]}, unique=True),
        "allow_methods": _list("Allowed methods (Access-Control-Allow-Methods); [\"*\"]: "
                               "any.", _enum("An HTTP method, or *.", (*matches.METHODS, "*")),
                               unique=True),
        "allow_headers": {**headers, "description": "Request headers a page may send "
                                                    "(Access-Control-Allow-Headers)."},
        "expose_headers": {**headers, "description": "Response headers a page may read "
                                                     "(Access-Control-Expose-Headers)."},
        "max_age": _ref("duration", "How long browsers may cache a preflight answer (whole "
                                    "seconds)."),
        "allow_credentials": {"type": "boolean", "description": "Allow cookies and "
                                                                "credentials (not with \"*\")."},
    })


def _fault() -> Schema:
    schema = _object("Inject faults before the request reaches the backends.", {
        "delay": _object("Delay requests.", {
            "fixed": _ref("duration", "How long."),
            "percentage": _percentage("Share of requests delayed"),
        }, required=("fixed",)),
        "abort": {**_object("Answer with an error instead of forwarding.", {
            "status": _integer("HTTP status to answer with.", 200, 599),
            "grpc_status": _integer("gRPC status code to answer with (14: unavailable).", 1,
                                    16),
            "percentage": _percentage("Share of requests aborted"),
        }), "oneOf": _exactly_one("status", "grpc_status")},
        "headers": {"type": "object", "propertyNames": _ref("headerName"),
                    "additionalProperties": _ref("valueMatch"),
                    "description": "Only requests with these headers get the fault."},
    })
    schema["anyOf"] = [{"required": ["delay"]}, {"required": ["abort"]}]
    return schema


def _mirror() -> Schema:
    mirror = _object("A service (or subset) that receives a copy of each request; its answer "
                     "is ignored.", {
        "service": _ref("name", "A Service's name."),
        "subset": _ref("name", "One of the Service's subsets."),
        "percentage": _percentage("Share of requests copied"),
    }, required=("service",))
    chosen = _object("A copy of each request to the Service a request header names, one of "
                     "the candidates; no copy when the header is absent or names another.", {
        "service_from_header": _ref("headerName", "The request header naming the Service."),
        "candidates": _list("The Services the header may name (their clusters go to the "
                            "view).", _ref("name", "A Service's name."), unique=True),
        "percentage": _percentage("Share of requests copied"),
    }, required=("service_from_header", "candidates"))
    mirror = {"oneOf": [mirror, chosen]}
    return {"oneOf": [mirror, _list("Several mirrors.", mirror)],
            "description": "Copy requests to other services (backends only)."}


def _hash_on() -> Schema:
    cookie = {"oneOf": [
        {"type": "string", "minLength": 1, "description": "The cookie's name."},
        _object("A cookie; with a ttl, Envoy sets it when the request has none.", {
            "name": {"type": "string", "minLength": 1, "description": "The cookie's name."},
            "ttl": _ref("duration", "Lifetime of the cookie Envoy sets (0s: a session "
                                    "cookie)."),
            "path": _ref("urlPath", "Path attribute of the cookie Envoy sets."),
        }, required=("name",))]}
    item = _object("One hash input: exactly one of header, cookie, source_ip or query.", {
        "header": _ref("headerName", "Hash this request header."),
        "cookie": {**cookie, "description": "Hash this cookie."},
        "source_ip": {"const": True, "description": "Hash the client's address."},
        "query": {"type": "string", "minLength": 1, "description": "Hash this query "
                                                                   "parameter."},
    })
    item["oneOf"] = _exactly_one(*route.HASH_KINDS)
    return _list("What a ring_hash or maglev Service hashes, tried in order (backends only).",
                 item)


def _rule() -> Schema:
    match = _match()
    schema = _object("A rule: when it matches, and exactly one of backends, redirect or "
                     "direct_response.", {
        "match": {"oneOf": [match, _list("Any of these matches.", match)],
                  "description": "When this rule applies (default: every request)."},
        "backends": _list("Services to send the request to, split by weight.", {"oneOf": [
            _ref("name", "A service name."),
            _object("A service (or one of its subsets) and its share of requests.", {
                "service": _ref("name", "A Service's name."),
                "subset": _ref("name", "One of the Service's subsets."),
                "weight": _integer("Relative share of requests (default 1).", 0, 1_000_000),
                "request_headers": _ref("headerOps", "Changes to the headers of the requests "
                                                     "sent to this backend, after the rule's."),
                "response_headers": _ref("headerOps", "Changes to this backend's responses' "
                                                      "headers, after the rule's."),
            }, required=("service",))]}),
        "redirect": _redirect(),
        "direct_response": _object("Answer directly.", {
            "status": _integer("HTTP status.", 200, 599),
            "body": {"type": "string", "maxLength": route.MAX_DIRECT_RESPONSE_BODY,
                     "description": "Response body."},
            "formatted": {"type": "boolean", "default": False,
                          "description": "The body is an Envoy format string (%REQ(:PATH)%, "
                                         "%% for a percent sign)."},
        }, required=("status",)),
        "rewrite": _rewrite(),
        "request_headers": _ref("headerOps", "Changes to the request's headers."),
        "response_headers": _ref("headerOps", "Changes to the response's headers."),
        "timeout": _ref("duration", "Timeout for the whole request (backends only); 0s "
                                    "disables it."),
        "retries": _object("Retrying failed requests (backends only).", {
            "attempts": _integer("Retries after the first try, at most (default 1).", 1,
                                 100),
            "on": _list("When to retry.", _enum("Envoy's retry_on name.", route.RETRY_ON),
                        unique=True),
            "per_try_timeout": _ref("duration", "Timeout for each try."),
            "backoff": _object("Wait between tries: random, growing from base up to max.", {
                "base": _ref("duration", "The first wait's upper bound."),
                "max": _ref("duration", "The longest wait (default 10 times base)."),
            }, required=("base",)),
            "retriable_status_codes": _list("Retry on these statuses too (implies the "
                                            "retriable-status-codes condition).",
                                            {"type": "integer", "minimum": 100,
                                             "maximum": 599}, unique=True),
            "retriable_headers": {"type": "object", "propertyNames": _ref("headerName"),
                                  "additionalProperties": _ref("valueMatch"),
                                  "description": "Retry when the answer has one of these "
                                                 "headers (implies the retriable-headers "
                                                 "condition)."},
            "avoid_same_host": {"type": "boolean", "description": "Retry on another endpoint "
                                                                  "than those already tried."},
        }),
        "idle_timeout": _ref("duration", "Close a request's stream after this long without "
                                         "activity (backends only); 0s disables it."),
        "websocket": {"type": "boolean", "default": False,
                      "description": "Allow websocket upgrades on this rule's requests, "
                                     "whatever the listener says (backends only)."},
        "grpc": _object("gRPC settings (backends only).", {
            "max_timeout": _ref("duration", "Use the client's grpc-timeout as the request's "
                                            "timeout, capped at this; 0s: uncapped."),
        }, required=("max_timeout",)),
        "fault": _fault(),
        "mirror": _mirror(),
        "hash_on": _hash_on(),
        "cors": {**_cors(), "description": "CORS for this rule: the Route's cors, with the "
                                           "fields written here replacing its own."},
        **_security("this rule (replacing the Route's setting)"),
    })
    schema["oneOf"] = _exactly_one(*route.ACTIONS)
    return schema


def _match() -> Schema:
    invert = {"type": "boolean", "default": False,
              "description": "true: paths NOT matching."}
    case = {"type": "boolean", "default": False,
            "description": "true: compared without regard to case (/API matches /api)."}
    path = {"oneOf": [
        _object("Paths starting with this.", {
            "prefix": _ref("urlPath"), "invert": invert, "ignore_case": case,
            "whole_segments": {"type": "boolean", "default": False,
                               "description": "true: whole path segments only (/v2 matches "
                                              "/v2 and /v2/x, not /v2x)."}},
                required=("prefix",)),
        _object("Exactly this path.", {"exact": _ref("urlPath"), "invert": invert,
                                       "ignore_case": case}, required=("exact",)),
        _object("Paths matching this regex.", {"regex": _ref("regex"), "invert": invert,
                                               "ignore_case": case}, required=("regex",)),
    ], "description": "The request path: one of prefix, exact or regex."}
    method = _enum("An HTTP method.", matches.METHODS)
    schema = _object("Conditions that must all hold.", {
        "path": path,
        "method": method,
        "methods": _list("Any of these methods.", method, unique=True),
        "headers": {"type": "object", "propertyNames": _ref("headerName"),
                    "additionalProperties": _ref("valueMatch"),
                    "description": "Request headers and how their values must match."},
        "query": {"type": "object", "propertyNames": {"minLength": 1},
                  "additionalProperties": _ref("valueMatch"),
                  "description": "Query parameters and how their values must match."},
    })
    schema["not"] = {"required": ["method", "methods"]}
    return schema


def _value_match() -> Schema:
    invert = {"type": "boolean", "default": False,
              "description": "Headers only: true: absent, or a value NOT matching."}
    return {"description": "A value: exactly this text, or one of exact, prefix, regex, "
                           "present or absent.", "oneOf": [
        {"type": "string", "description": "Exactly this text."},
        _object("Exactly this text.", {"exact": {"type": "string"}, "invert": invert},
                required=("exact",)),
        _object("Starting with this.", {"prefix": {"type": "string", "minLength": 1},
                                        "invert": invert}, required=("prefix",)),
        _object("Matching this regex.", {"regex": _ref("regex"), "invert": invert},
                required=("regex",)),
        _object("Present, whatever the value.", {"present": {"const": True}},
                required=("present",)),
        _object("Not present.", {"absent": {"const": True}}, required=("absent",)),
    ]}


def _redirect() -> Schema:
    schema = _object("Redirect the client; what is not given stays as in the request.", {
        "scheme": _enum("New scheme.", route.REDIRECT_SCHEMES),
        "host": _ref("hostName", "New host."),
        "port": {"oneOf": [_integer("New port.", 1, 65535),
                           _enum("Where the port comes from: request (the port the request "
                                 "came to; a new scheme's default port) or scheme (always the "
                                 "scheme's default port).", route.REDIRECT_PORT_FROM,
                                 "request")],
                 "description": "The new port, or where it comes from (default request)."},
        "path": _ref("urlPath", "New path (the whole path)."),
        "prefix": _ref("urlPath", "Replaces the matched prefix."),
        "regex": _ref("regex", "Or: what of the path this matches ..."),
        "substitution": {"type": "string", "description": "... is replaced by this (\\1 for "
                                                          "the first group)."},
        "status": _enum("Redirect status.", route.REDIRECT_STATUSES, 302),
        "strip_query": {"type": "boolean", "default": False,
                        "description": "Drop the query string."},
    })
    schema["anyOf"] = [{"required": [key]} for key in route.REDIRECT_TARGETS]
    schema["not"] = {"anyOf": [{"required": ["path", "prefix"]}, {"required": ["path", "regex"]},
                               {"required": ["prefix", "regex"]}]}
    schema["dependentRequired"] = {"regex": ["substitution"], "substitution": ["regex"]}
    return schema


def _rewrite() -> Schema:
    return _object("Rewrite the request before it is sent to the backends.", {
        "path": {"oneOf": [
            _object("Replace the matched prefix with this.", {"prefix": _ref("urlPath")},
                    required=("prefix",)),
            _object("Replace what the regex matches with the substitution (\\1 for groups).", {
                "regex": _ref("regex"), "substitution": {"type": "string"},
            }, required=("regex", "substitution")),
        ], "description": "How the path is rewritten."},
        "host": _ref("hostName", "The Host header sent to the backends."),
    })


def _header_ops() -> Schema:
    values = {"type": "object", "propertyNames": _ref("headerName"),
              "additionalProperties": {"type": "string"}}
    return _object("Header changes.", {
        "add": {**values, "description": "Headers to append (a header may then repeat)."},
        "set": {**values, "description": "Headers to set, replacing any value."},
        "remove": _list("Headers to remove.", _ref("headerName"), unique=True),
    })


def _envoy_resources() -> Schema:
    lists = {key: {"type": "array", "items": {"type": "object"},
                   "description": f"Envoy v3 {spec.message.DESCRIPTOR.name} resources, in "
                                  "Envoy's own field names (checked against Envoy's schema)."}
             for key, spec in RESOURCE_LISTS.items()}
    schema = _document(ENVOY_RESOURCES, "Raw Envoy resources, for what the language does not "
                                        "say yet.", {
        "views": _list("Send these resources only to these views (node clusters); default: "
                       "every view.", {"type": "string", "minLength": 1}),
        **lists,
    })
    schema["properties"]["name"] = {"type": "string", "minLength": 1,
                                    "description": "The document's name, unique among "
                                                   f"{ENVOY_RESOURCES} documents."}
    return schema


def _rollout() -> Schema:
    def percent(description: str, minimum_exclusive: bool) -> Schema:
        bound = {"exclusiveMinimum": 0} if minimum_exclusive else {"minimum": 0}
        return {"type": "number", **bound, "maximum": 100, "description": description}

    return _document(rollout.KIND, "How each edit is rolled out: to a canary share of every "
                                   "view's Envoys first, watched, then promoted or rolled "
                                   "back. One per policy.", {
        "enabled": {"type": "boolean", "description": "false: no staged rollouts, whatever "
                                                      "--rollout says (default true)."},
        "canary": percent("Percent of each view's Envoys sent an edit first (default 10; at "
                          "least one Envoy, never all of several).", True),
        "watch": _ref("duration", "How long the canaries are watched before promotion "
                                  "(default 30s, at most 24h)."),
        "error_rate": percent("Percent of the canaries' requests answered 5xx above which "
                              "the edit is rolled back (default 5).", False),
        "min_requests": _integer("Canary requests needed before the error rate is judged "
                                 "(default 10).", 0, 1_000_000_000),
        "views": _list("Only these views (node clusters) are rolled out in stages; default: "
                       "every view.", {"type": "string", "minLength": 1}, unique=True),
    })


def _security(scope: str) -> dict[str, Schema]:
    """Request-level security (native/security.py), for a Route or a rule."""
    path = {"type": "string", "pattern": "^/", "description": "An absolute file path."}
    jwks = _object("Where the provider's public keys are: exactly one of file, inline or uri.", {
        "file": path,
        "inline": {"type": "string", "description": "The JWKS JSON text."},
        "uri": {"type": "string", "pattern": "^https?://",
                "description": "A URL Envoy fetches the JWKS from."},
        "service": _ref("name", "The Service the uri is fetched through."),
        "cache": _ref("duration", "How long fetched keys are kept (default 5m)."),
    })
    jwks["oneOf"] = _exactly_one(*security.JWKS_SOURCES)
    provider = _object("A token issuer.", {
        "name": _ref("name", "Unique within the providers."),
        "issuer": {"type": "string", "description": "The iss claim required."},
        "audiences": _list("Accepted aud values (default: any).", {"type": "string"}),
        "jwks": jwks,
        "forward_claims": {"type": "object", "additionalProperties": _ref("headerName"),
                           "description": "Claims copied to request headers: claim -> header."},
        "from_cookies": _list("Cookies the token is also read from.",
                              {"type": "string", "minLength": 1}),
        "forward_payload": _ref("headerName", "The validated payload (base64url) is sent "
                                              "upstream in this header."),
    }, required=("name", "jwks"))
    key = {"oneOf": [{"type": "string", "minLength": 1, "description": "The key itself."},
                     _object("A file holding the key.", {"file": path}, required=("file",))]}
    api_keys = _object(f"API keys required on {scope}: exactly one of header, query, cookie.", {
        "header": _ref("headerName", "The header carrying the key."),
        "query": {"type": "string", "minLength": 1, "description": "The query parameter."},
        "cookie": {"type": "string", "minLength": 1, "description": "The cookie."},
        "keys": {"type": "object", "additionalProperties": key,
                 "description": "Client name -> key (never shown in messages or dumps)."},
        "forward": _ref("headerName", "Send the client's name to the backend in this header."),
        "strip": {"type": "boolean", "default": False,
                  "description": "Remove the key before the request reaches the backend."},
    }, required=("keys",))
    api_keys["oneOf"] = _exactly_one(*security.API_KEY_SOURCES)
    authz_rule = _authz_rule(mesh=False)
    names = _list("Header names (exactly), or {prefix: x-auth-}.", {"oneOf": [
        _ref("headerName"),
        _object("Headers starting with this.", {"prefix": _ref("headerName")},
                required=("prefix",)),
        _object("Exactly this header.", {"exact": _ref("headerName")}, required=("exact",))]})
    policy = _object("ALLOW: only matching requests pass (no rules: none); DENY: matching "
                     "requests are refused (evaluated first).", {
        "action": _enum("What a matching request gets.", security.AUTHZ_ACTIONS, "ALLOW"),
        "rules": _list("Any of these rules.", authz_rule),
    })
    return {
        "jwt": _object(f"JWT validation on {scope}.", {
            "providers": _list("Accepted token issuers.", provider),
            "required": {"type": "boolean", "default": True,
                         "description": "false: requests without a token pass too."},
        }, required=("providers",)),
        "api_keys": api_keys,
        "basic_auth": _object(f"HTTP basic authentication on {scope}.", {
            "users": _object("The users.", {"file": {**path, "description": "An htpasswd "
                                                     "file of {SHA} hashes."}},
                             required=("file",)),
            "forward": _ref("headerName", "Send the user's name to the backend in this header "
                                          "(one header for all Routes of a gateway)."),
            "strip": {"type": "boolean", "default": False,
                      "description": "Remove the Authorization header before the request "
                                     "reaches the backend."},
        }, required=("users",)),
        "ext_authz": _object(f"Ask an authorization service about each request to {scope}.", {
            "service": _ref("name", "The authorization Service."),
            "protocol": _enum("How it is asked.", security.EXT_AUTHZ_PROTOCOLS, "http"),
            "timeout": _ref("duration", "How long to wait for its answer (default 200ms)."),
            "failure_mode_allow": {"type": "boolean", "default": False,
                                   "description": "Let requests through when it fails."},
            "path_prefix": _ref("urlPath", "http: the check request's path is this prefix "
                                           "plus the request's path."),
            "send_headers": {**names, "description": "Only these request headers are sent "
                                                     "to it (default: all)."},
            "upstream_headers": {**names, "description": "http: headers of its 200 answer set "
                                                         "on the request to the backend."},
            "client_headers": {**names, "description": "http: headers of its denial sent to "
                                                       "the client (default: all)."},
            "client_headers_on_success": {**names, "description": "http: headers of its 200 "
                                                                  "answer added to the "
                                                                  "response to the client."},
        }, required=("service",)),
        "authorization": {"oneOf": [policy, _list("Policies (one per action).", policy)],
                          "description": f"Who may do what on {scope} (Istio's semantics)."},
        "rate_limit": _object(f"A local token-bucket rate limit on {scope}.", {
            "requests": _integer("Requests allowed per window.", 1, 1_000_000_000),
            "per": _ref("duration", "The window (at least 50ms)."),
            "by": {"oneOf": [_enum("One bucket for the route, per Host, or per client "
                                   "address.", security.RATE_LIMIT_BY, "route"),
                             _object("One bucket per value of a header.",
                                     {"header": _ref("headerName")}, required=("header",))],
                   "description": "Whose requests share a bucket (default route)."},
            "shadow": {"type": "boolean", "default": False,
                       "description": "Count what would be limited, refuse nothing."},
            "ratelimit_headers": {"type": "boolean", "default": True,
                                  "description": "x-ratelimit-limit, -remaining and -reset "
                                                 "on every answer (default true)."},
            "limited_headers": {"type": "object", "additionalProperties": {
                "type": ["string", "integer"]}, "description": "Headers added to the 429 "
                                                              "answers only."},
            "shared": _object("Count across every Envoy, by a rate limit service.", {
                "service": _ref("name", "The rate limit Service (protocol grpc): meshpilot's "
                                        "own (--rate-limit-address) or another."),
                "name": _ref("name", "The limit's name: limits of one name share counts."),
            }, required=("service",)),
        }, required=("requests", "per")),
        "session_persistence": {**_object(
            "Sticky sessions: the answer names its endpoint in a header (or a cookie), which "
            "a request sends back to reach the same endpoint.", {
                "header": _ref("headerName", "The header (x-session, say)."),
                "cookie": {"oneOf": [{"type": "string", "description": "The cookie's name "
                                                                       "(a session cookie)."},
                                     _object("The cookie Envoy sets.", {
                    "name": {"type": "string", "description": "The cookie's name."},
                    "path": {"type": "string", "default": "/",
                             "description": "The cookie's Path."},
                    "ttl": _ref("duration", "Its lifetime (Max-Age); none: a session cookie."),
                }, required=("name",))]},
                "strict": {"type": "boolean", "default": False,
                           "description": "503 when the session's endpoint is gone (default: "
                                          "another endpoint)."},
            }), "oneOf": [{"required": ["header"]}, {"required": ["cookie"]}]},
        "csrf": {"oneOf": [{"const": True}, _object(
            "Refuse state-changing requests from other origins (403).", {
                "allow_origins": _list("Other origin hosts allowed (host, host:port or "
                                       "*.suffix).", {"type": "string"}, unique=True),
                "shadow": {"type": "boolean", "default": False,
                           "description": "Count what would be refused, refuse nothing."},
            })], "description": f"CSRF protection on {scope}: true, or a mapping."},
    }
