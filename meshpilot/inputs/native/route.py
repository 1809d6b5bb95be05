"""`kind: Route`: how requests arriving at a Gateway are matched and handled, as `model.Route`.

This module owns the Route document's shape and everything that can be checked within one
Route: matches (paths, methods, headers, query parameters), regexes (they must compile with
Python's `re` and suit Envoy's RE2), exactly one action per rule, rewrites, header changes,
timeouts and retries. It must not look at other documents: whether the gateway, its listeners,
the services and their subsets exist, and whether two Routes claim the same host, is checked over
the whole folder by `references.py`.

Shape:

    kind: Route
    name: shop
    gateway: edge                       # or service: reviews (exactly one): the rules then
                                        # apply to every caller of reviews in the mesh, and
                                        # listeners and hosts are not written (docs/mesh.md)
    listeners: [http]                   # some of the gateway's listeners (default: all)
    hosts: [shop.example.com, "*.shop.example.com"]   # default ["*"]: every host
    cors: {allow_origins: ["https://a.example", "*.b.example", {exact: "null"}],
           allow_methods: [GET], allow_headers: [x-user], expose_headers: [x-id],
           max_age: 10m, allow_credentials: true}     # methods, headers: ["*"] for any
                                        # (also on a rule: the Route's, with the rule's fields)
    rules:                              # first match wins, in the order written
      - match:                          # a mapping, or a list of them (any may match)
          path: {prefix: /api/}         # or {exact: /x} or {regex: "/v[0-9]+/.*"};
                                        #   invert: true: paths NOT matching
          methods: [GET, POST]          # or method: GET
          headers: {x-canary: "true", x-user: {prefix: a}, x-debug: {present: true}}
          query: {preview: {absent: true}}    # value forms: "text" | {exact|prefix|regex: v}
                                              #   | {present: true} | {absent: true}
                                              # headers also {exact|prefix|regex: v,
                                              #   invert: true}: absent or not matching
        backends:                       # exactly one of backends, redirect, direct_response
          - {service: reviews, subset: v2, weight: 10}   # or just: reviews
        rewrite: {path: {prefix: /}, host: internal.example.com}   # backends only
                                        # or path: {regex: "^/v1/(.*)", substitution: "/\\1"}
        request_headers: {add: {x-a: "1"}, set: {x-b: "2"}, remove: [x-c]}
        response_headers: {set: {cache-control: no-store}}
        timeout: 2s                     # backends only; 0s disables Envoy's 15 s default
        idle_timeout: 30s               # backends only; 0s disables
        websocket: true                 # backends only; upgrades allowed, whatever the listener
        grpc: {max_timeout: 30s}        # backends only; honour grpc-timeout, capped
        retries: {attempts: 3, on: [5xx, reset], per_try_timeout: 500ms,   # backends only
                  backoff: {base: 25ms, max: 250ms}, retriable_status_codes: [429],
                  retriable_headers: {x-retry: "yes"}, avoid_same_host: true}
        fault: {delay: {fixed: 500ms, percentage: 10}, abort: {status: 503},  # backends only
                headers: {end-user: jason}}
        mirror: {service: reviews, subset: v3, percentage: 5}    # or a list; backends only
        # or: mirror: {service_from_header: x-mirror-to, candidates: [reviews, ratings]}
        hash_on: [{header: x-user}, {cookie: {name: s, ttl: 1h, path: /}}, {source_ip: true},
                  {query: user}]        # backends only (ring_hash and maglev services)
      - redirect: {scheme: https, host: a.example.com, port: 8443, path: /x, status: 301,
                   strip_query: true}   # path or prefix; status 301|302|303|307|308 (302);
                                        # port: N | request (default) | scheme
      - direct_response: {status: 404, body: "not here"}   # formatted: true: %REQ(:PATH)% ...

    Security (native/security.py), on the Route or on a rule: jwt, api_keys, basic_auth,
    ext_authz, authorization, rate_limit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import replace
from typing import Any, cast

from meshpilot.base import re2text
from meshpilot.inputs.context import DocumentContext
from meshpilot.inputs.native import fields, matches
from meshpilot.inputs.native.fields import (
    Fields,
    Invalid,
    issue_count,
    reported_since,
    written_before,
)
from meshpilot.inputs.native.matches import METHOD, MatchKind, methods, value_matches
from meshpilot.inputs.native.security import SECURITY_KEYS, check_claims, parse_security
from meshpilot.inputs.yamlsource import FieldPath, Located
from meshpilot.ir.model import (
    Backend,
    Backoff,
    Cors,
    DirectResponse,
    Fault,
    FaultAbort,
    FaultDelay,
    HashOn,
    HeaderOps,
    Match,
    Mirror,
    PathRewrite,
    Redirect,
    Retries,
    Route,
    Rule,
    StringMatch,
)

KIND = "Route"

ROUTE_KEYS = ("kind", "name", "gateway", "service", "listeners", "hosts", "cors", "rules",
              *SECURITY_KEYS)
# A Route attached to a Service (its virtual host in every caller's sidecar, docs/mesh.md):
# the mesh decides the hosts, and a sidecar has no named listeners.
GATEWAY_ONLY = ("listeners", "hosts")
ACTIONS = ("backends", "redirect", "direct_response")
# Envoy's RouteAction settings (and the fault filter's, which acts before the router).
BACKEND_ONLY = ("rewrite", "timeout", "idle_timeout", "grpc", "retries", "fault", "mirror",
                "hash_on", "websocket")
RULE_KEYS = ("match", *ACTIONS, *BACKEND_ONLY, "request_headers", "response_headers", "cors",
             *SECURITY_KEYS)
MATCH_KEYS = ("path", "method", "methods", "headers", "query")
# Part of a Route's shape too, shared with authorization rules: parsed in matches.py.
METHODS = matches.METHODS
VALUE_MATCHES = matches.VALUE_MATCHES
PATH_MATCHES = ("prefix", "exact", "regex")
BACKEND_KEYS = ("service", "subset", "weight", "request_headers", "response_headers")
REDIRECT_KEYS = ("scheme", "host", "port", "path", "prefix", "regex", "substitution", "status",
                 "strip_query")
REDIRECT_TARGETS = ("scheme", "host", "port", "path", "prefix", "regex", "strip_query")
REDIRECT_PORT_FROM = ("request", "scheme")  # `port:` words: where a port not written comes from
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
REDIRECT_SCHEMES = ("http", "https")
DIRECT_RESPONSE_KEYS = ("status", "body", "formatted")
REWRITE_KEYS = ("path", "host")
PATH_REWRITE_KEYS = ("prefix", "regex", "substitution")
HEADER_OPS_KEYS = ("add", "set", "remove")
RETRIES_KEYS = ("attempts", "on", "per_try_timeout", "backoff", "retriable_status_codes",
                "retriable_headers", "avoid_same_host")
BACKOFF_KEYS = ("base", "max")
GRPC_KEYS = ("max_timeout",)
FAULT_KEYS = ("delay", "abort", "headers")
FAULT_DELAY_KEYS = ("fixed", "percentage")
FAULT_ABORT_KEYS = ("status", "grpc_status", "percentage")
MIRROR_KEYS = ("service", "subset", "percentage", "service_from_header", "candidates")
HASH_KINDS = ("header", "cookie", "source_ip", "query")
HASH_COOKIE_KEYS = ("name", "ttl", "path")
CORS_KEYS = ("allow_origins", "allow_methods", "allow_headers", "expose_headers", "max_age",
             "allow_credentials")
RETRIABLE_STATUS_CODES = "retriable-status-codes"
RETRIABLE_HEADERS = "retriable-headers"

# Every one of Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on names.
RETRY_ON = ("5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
            "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
            "envoy-ratelimited", "http3-post-connect-failure",
            "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
DEFAULT_RETRY_ON = Retries(attempts=1).on


# Envoy's default max_direct_response_body_size_bytes: a longer body is rejected.
MAX_DIRECT_RESPONSE_BODY = 4096
BACKEND_WEIGHT = fields.integer(0, 1_000_000)
RETRY_ATTEMPTS = fields.integer(1, 100)

_DIRECT_STATUS = fields.integer(200, 599)  # Envoy's range for direct responses
_REDIRECT_STATUS = fields.int_choice(REDIRECT_STATUSES)
_SCHEME = fields.choice(REDIRECT_SCHEMES)
_RETRY_ON = fields.choice(RETRY_ON)
_TIMEOUT = fields.duration(allow_zero=True)
_PER_TRY_TIMEOUT = fields.duration()
_STATUS_CODE = fields.integer(100, 599)
_ABORT_STATUS = fields.integer(200, 599)  # Envoy's range for an injected abort
_GRPC_STATUS = fields.integer(1, 16)  # 0 is OK: not an abort


def parse_route(document: Located, ctx: DocumentContext) -> list[Route]:
    """The document's Route, or nothing if anything in it was reported."""
    mark = issue_count(ctx)
    doc = Fields(ctx, document.value)
    doc.check_keys(ROUTE_KEYS, "a Route")
    name = doc.get("name", fields.name)
    attach = doc.exclusive(("gateway", "service"), required=True, what="a Route")
    gateway = doc.get("gateway", fields.name, required=True) if attach == "gateway" else None
    service = doc.get("service", fields.name, required=True) if attach == "service" else None
    for key in GATEWAY_ONLY:
        if attach == "service" and key in doc.value:
            doc.report(key, f'"{key}" applies to a Route attached to a gateway; a Route '
                            "attached to a service serves every caller of that service",
                       at_value=False)
    listeners = fields.unique_list(doc, "listeners", "listener name", fields.name)
    hosts = fields.unique_list(doc, "hosts", "host", fields.host_pattern)
    cors = _cors(doc)
    security = parse_security(doc)
    rules = _rules(doc, cors)
    if attach == "service" and (security or any(rule.security for rule in rules)):
        doc.report("service", "jwt, api_keys, basic_auth, ext_authz, authorization, "
                              "rate_limit, csrf and session_persistence apply to Routes "
                              "attached to a gateway (not yet to sidecars)", at_value=False)
    if not reported_since(ctx, mark):
        check_claims(ctx, security, [(("rules", i), r.security) for i, r in enumerate(rules)])
    if reported_since(ctx, mark) or name is None or (gateway is None and service is None):
        return []
    return [Route(name=name, position=document.position, gateway=gateway,
                  hosts=hosts or ("*",), rules=rules, listeners=listeners, cors=cors,
                  service=service, security=security, origin=ctx.origin())]


# ---------------------------------------------------------------------------------------------
# Rules.


def _rules(doc: Fields, cors: Cors | None) -> tuple[Rule, ...]:
    items = doc.items("rules", "rule", required=True)
    if items is None:
        return ()
    rules = (_rule(doc.ctx, item, ("rules", index), cors) for index, item in enumerate(items))
    return tuple(rule for rule in rules if rule is not None)


def _rule(ctx: DocumentContext, item: Any, path: FieldPath, cors: Cors | None) -> Rule | None:
    rule = Fields.at(ctx, item, path, "a rule mapping such as {match: {path: {prefix: /}}, "
                                      "backends: [...]}")
    if rule is None:
        return None
    rule.check_keys(RULE_KEYS, "a rule")
    action = rule.exclusive(ACTIONS, required=True, what="a rule")
    for key in BACKEND_ONLY:
        if key in rule.value and action not in (None, "backends"):
            rule.report(key, f"{key} applies to rules with backends only (this rule has "
                             f"{action})", at_value=False)
    rewrite_path, rewrite_host = _rewrite(rule)
    # A prefix rewrite or redirect replaces what the rule's path match matched: the prefix of
    # a prefix match ("/" with no path match), all of an exact or regex match (Envoy's
    # prefix_rewrite), so it is accepted with every kind of match (issue 14, bug 1).
    matches = _matches(rule)
    return Rule(
        position=ctx.document.position_of(path),
        origin=ctx.origin(path),
        matches=matches,
        backends=_backends(rule) if action == "backends" else (),
        redirect=_redirect(rule) if action == "redirect" else None,
        direct_response=_direct_response(rule) if action == "direct_response" else None,
        rewrite_path=rewrite_path,
        rewrite_host=rewrite_host,
        request_headers=_header_ops(rule, "request_headers"),
        response_headers=_header_ops(rule, "response_headers"),
        timeout=rule.get("timeout", _TIMEOUT),
        retries=_retries(rule),
        idle_timeout=rule.get("idle_timeout", _TIMEOUT),
        grpc_max_timeout=_grpc_max_timeout(rule),
        fault=_fault(rule),
        mirrors=_mirrors(rule),
        hash_on=_hash_on(rule),
        websocket=rule.get("websocket", fields.boolean) or False,
        security=parse_security(rule),
        cors=_cors(rule, cors),
    )


# ---------------------------------------------------------------------------------------------
# Matches.


def _matches(rule: Fields) -> tuple[Match, ...]:
    """`match` as a mapping, or a list of mappings of which any may match; absent: all."""
    value = rule.value.get("match")
    path = (*rule.path, "match")
    if value is None:
        return (Match(),)
    if not isinstance(value, list):
        match = _match(rule.ctx, value, path)
        return () if match is None else (match,)
    if not value:
        rule.report("match", "must list at least one match (or leave match out to match every "
                             "request)")
    matches = (_match(rule.ctx, item, (*path, index)) for index, item in enumerate(value))
    return tuple(match for match in matches if match is not None)


def _match(ctx: DocumentContext, item: Any, path: FieldPath) -> Match | None:
    entry = Fields.at(ctx, item, path, "a match mapping such as {path: {prefix: /api/}}")
    if entry is None:
        return None
    entry.check_keys(MATCH_KEYS, "a match")
    path_spec = entry.value.get("path")
    ignore_case = isinstance(path_spec, dict) and path_spec.get("ignore_case") is True
    path, whole_segments = _path_match(entry)
    return Match(path=path, methods=_methods(entry),
                 headers=value_matches(entry, "headers"), query=value_matches(entry, "query"),
                 origin=entry.origin(), whole_segments=whole_segments, ignore_case=ignore_case)


def _path_match(entry: Fields) -> tuple[StringMatch | None, bool]:
    """The path match, and whether a prefix matches whole segments only."""
    spec = entry.mapping("path", "a mapping with one of prefix, exact or regex, e.g. "
                                 "{prefix: /api/}")
    if spec is None:
        return None, False
    spec.check_keys((*PATH_MATCHES, "invert", "whole_segments", "ignore_case"), "a path match")
    kind = spec.exclusive(PATH_MATCHES, required=True, what="a path match")
    if kind is None:
        return None, False
    value = spec.get(kind, fields.regex if kind == "regex" else fields.url_path, required=True)
    invert = bool(spec.get("invert", fields.boolean))
    # Gateway API's PathPrefix (`/v2` matches /v2 and /v2/x, not /v2x): Envoy's
    # path_separated_prefix, which has no inverted form.
    whole_segments = bool(spec.get("whole_segments", fields.boolean))
    if whole_segments and kind != "prefix":
        spec.report("whole_segments", f'"whole_segments" goes with "prefix", not "{kind}"',
                    at_value=False)
        return None, False
    if whole_segments and invert:
        spec.report("whole_segments", '"whole_segments" cannot be used with "invert" (an '
                                      "inverted prefix is matched on :path as text)",
                    at_value=False)
        return None, False
    spec.get("ignore_case", fields.boolean)  # checked here; `_match` puts it on the Match
    if value is None:
        return None, False
    if invert and kind == "regex":  # said on :path, query included: see inverted_path_regex
        problem = fields.re2_problem(re2text.path_part(value))
        if problem is not None:
            spec.report("regex", problem)
            return None, False
    return StringMatch(cast(MatchKind, kind), value, invert=invert), whole_segments


def _methods(entry: Fields) -> tuple[str, ...]:
    """`method: GET` or `methods: [GET, POST]`, in upper case as HTTP spells them (methods
    are case-sensitive; `get` is refused with a suggestion rather than guessed)."""
    key = entry.exclusive(("method", "methods"), required=False, what="a match")
    if key == "method":
        method = entry.get("method", METHOD)
        return () if method is None else (method,)
    if key == "methods":
        return methods(entry)
    return ()


# ---------------------------------------------------------------------------------------------
# Actions.


def _backends(rule: Fields) -> tuple[Backend, ...]:
    items = rule.items("backends", "backend", required=True)
    if items is None:
        return ()
    backends: list[Backend] = []
    seen: dict[Hashable, FieldPath] = {}
    for index, item in enumerate(items):
        path = (*rule.path, "backends", index)
        backend = _backend(rule.ctx, item, path)
        if backend is None:
            continue
        first = written_before(rule.ctx, seen, (backend.service, backend.subset), path)
        if first is not None:
            shown = backend.service + (f" (subset {backend.subset})" if backend.subset else "")
            fields.report_at(rule.ctx, path, f"{shown} is listed twice (first at {first})")
            continue
        backends.append(backend)
    if backends and len(backends) == len(items) and not any(b.weight for b in backends):
        rule.report("backends", "at least one backend needs a weight above 0")
    return tuple(backends)


def _backend(ctx: DocumentContext, item: Any, path: FieldPath) -> Backend | None:
    if isinstance(item, str):
        service = fields.convert_at(ctx, item, path, fields.name)
        return None if service is None else Backend(service=service, origin=ctx.origin(path))
    entry = Fields.at(ctx, item, path, "a service name or a mapping such as {service: reviews, "
                                       "subset: v1, weight: 90}")
    if entry is None:
        return None
    entry.check_keys(BACKEND_KEYS, "a backend")
    service = entry.get("service", fields.name, required=True)
    subset = entry.get("subset", fields.name)
    weight = entry.get("weight", BACKEND_WEIGHT)
    # Header changes for the requests sent to this backend (and their responses), after the
    # rule's: Envoy's weighted cluster entry's own (Gateway API's backendRef filters).
    request_headers = _header_ops(entry, "request_headers") \
        if "request_headers" in entry.value else None
    response_headers = _header_ops(entry, "response_headers") \
        if "response_headers" in entry.value else None
    if service is None:
        return None
    return Backend(service=service, subset=subset, weight=1 if weight is None else weight,
                   origin=entry.origin(), request_headers=request_headers,
                   response_headers=response_headers)


def _redirect(rule: Fields) -> Redirect | None:
    spec = rule.mapping("redirect", "a mapping such as {scheme: https} or {path: /new}",
                        required=True)
    if spec is None:
        return None
    spec.check_keys(REDIRECT_KEYS, "a redirect")
    if not any(key in spec.value for key in REDIRECT_TARGETS):
        rule.report("redirect", f"a redirect needs at least one of "
                                f"{fields.one_of_words(REDIRECT_TARGETS)} (or it would send "
                                "the client back to the same URL)")
    spec.exclusive(("path", "prefix", "regex"), required=False, what="a redirect")
    # A path rewritten by a regex (Envoy's regex_rewrite), as a rule's rewrite.path.regex:
    # Gateway API's ReplacePrefixMatch, segment-aware.
    regex = spec.get("regex", fields.regex)
    substitution = None
    if regex is not None:
        substitution = spec.get("substitution", fields.substitution(regex), required=True)
    elif "substitution" in spec.value:
        spec.report("substitution", 'substitution goes with "regex"', at_value=False)
    status = spec.get("status", _REDIRECT_STATUS)
    port = spec.get("port", _redirect_port)
    strip = spec.get("strip_query", fields.boolean)
    if strip is False and len(spec.value) == 1:
        rule.report("redirect", "a redirect that only keeps the query would send the client "
                                "back to the same URL")
    return Redirect(
        scheme=spec.get("scheme", _SCHEME),
        host=spec.get("host", fields.dns_name),
        port=port if isinstance(port, int) else None,
        path=spec.get("path", fields.url_path),
        prefix=spec.get("prefix", fields.url_path),
        status=302 if status is None else status,
        origin=spec.origin(),
        port_from="scheme" if port == "scheme" else "request",
        strip_query=bool(strip),
        regex=regex,
        substitution=substitution or "",
    )


def _redirect_port(value: Any) -> int | str:
    """A port, or where the port comes from: `request` (the default) or `scheme`."""
    if isinstance(value, str):
        return fields.choice(REDIRECT_PORT_FROM)(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"expected a port (1 to 65535), request or scheme, found "
                      f"{fields.describe(value)}")
    return fields.PORT(value)


def _direct_response(rule: Fields) -> DirectResponse | None:
    spec = rule.mapping("direct_response", "a mapping such as {status: 404, body: not found}",
                        required=True)
    if spec is None:
        return None
    spec.check_keys(DIRECT_RESPONSE_KEYS, "a direct response")
    status = spec.get("status", _DIRECT_STATUS, required=True)
    body = spec.get("body", _body)
    formatted = bool(spec.get("formatted", fields.boolean))
    if formatted and body:
        problem = _format_problem(body)
        if problem is not None:
            spec.report("body", problem)
            return None
    if status is None:
        return None
    return DirectResponse(status=status, body=body or "", origin=spec.origin(),
                          formatted=formatted)


# An Envoy command operator: %NAME%, %NAME(arguments)% or %NAME(arguments):LENGTH%; or %%.
_OPERATOR = re.compile(r"%(?:%|[A-Z][A-Z0-9_]*(?:\([^()%]*\))?(?::[0-9]+)?%)")


def _format_problem(body: str) -> str | None:
    """Why Envoy would refuse `body` as a format string (its shape; Envoy checks the names)."""
    rest = _OPERATOR.sub("", body)
    if "%" in rest:
        return ('a formatted body has a "%" that starts no command operator: write %% for a '
                "percent sign, or operators such as %REQ(:PATH)%")
    return None


def _body(value: Any) -> str:
    text = fields.any_string(value)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DIRECT_RESPONSE_BODY:
        raise Invalid(f"a direct response body is limited to {MAX_DIRECT_RESPONSE_BODY} bytes "
                      "by Envoy")
    return text


# ---------------------------------------------------------------------------------------------
# What happens on the way: rewrites, header changes, retries.


def _rewrite(rule: Fields) -> tuple[PathRewrite | None, str | None]:
    rewrite = rule.mapping("rewrite", "a mapping such as {path: {prefix: /}} or "
                                      "{host: example.com}")
    if rewrite is None:
        return None, None
    rewrite.check_keys(REWRITE_KEYS, "rewrite")
    return _path_rewrite(rewrite), rewrite.get("host", fields.dns_name)


def _path_rewrite(rewrite: Fields) -> PathRewrite | None:
    spec = rewrite.mapping("path", "a mapping such as {prefix: /} or {regex: \"^/v1/(.*)\", "
                                   "substitution: \"/\\1\"}")
    if spec is None:
        return None
    spec.check_keys(PATH_REWRITE_KEYS, "a path rewrite")
    kind = spec.exclusive(("prefix", "regex"), required=True, what="a path rewrite")
    if kind == "prefix":
        if "substitution" in spec.value:
            spec.report("substitution", 'substitution goes with "regex", not "prefix"',
                        at_value=False)
        prefix = spec.get("prefix", fields.url_path, required=True)
        return None if prefix is None else PathRewrite(prefix=prefix, origin=spec.origin())
    if kind == "regex":
        pattern = spec.get("regex", fields.regex, required=True)
        if pattern is None:
            return None
        replacement = spec.get("substitution", fields.substitution(pattern), required=True)
        return PathRewrite(regex=pattern, substitution=replacement or "", origin=spec.origin())
    return None


def _header_ops(rule: Fields, key: str) -> HeaderOps:
    spec = rule.mapping(key, "a mapping such as {add: {x-a: \"1\"}, set: {x-b: \"2\"}, "
                             "remove: [x-c]}")
    if spec is None:
        return HeaderOps()
    spec.check_keys(HEADER_OPS_KEYS, key)
    added = _header_values(spec, "add")
    replaced = _header_values(spec, "set")
    removed = fields.unique_list(spec, "remove", "header", _modifiable_header)
    for index, header in enumerate(removed):
        if any(header == name for name, _ in (*added, *replaced)):
            fields.report_at(spec.ctx, (*spec.path, "remove", index),
                             f'header "{header}" is both removed and added or set')
    return HeaderOps(add=added, set=replaced, remove=removed)


def _header_values(spec: Fields, key: str) -> tuple[tuple[str, str], ...]:
    values = spec.mapping(key, "a mapping of header names to values")
    if values is None:
        return ()
    result: list[tuple[str, str]] = []
    seen: set[str] = set()
    for written, value in values.value.items():
        path = (*values.path, written)
        name = fields.convert_at(spec.ctx, written, path, _modifiable_header_key)
        text = fields.convert_at(spec.ctx, value, path, fields.any_string)
        if name is None or text is None:
            continue
        if name in seen:
            spec.ctx.report(path, f'header "{name}" is written twice (header names ignore case)')
            continue
        seen.add(name)
        result.append((name, text))
    return tuple(result)


def _modifiable_header(value: Any) -> str:
    name = fields.header_name(value)
    # Envoy refuses to add, set or remove pseudo-headers and Host through header changes.
    if name.startswith(":") or name == "host":
        raise Invalid(f'"{name}" cannot be changed here (use rewrite: {{host: ...}} for the '
                      "host)" if name in ("host", ":authority") else
                      f'"{name}" cannot be changed here')
    return name


def _modifiable_header_key(value: str) -> str:
    try:
        return _modifiable_header(value)
    except Invalid as problem:
        raise Invalid(problem.message, at_key=True) from None


def _retries(rule: Fields) -> Retries | None:
    spec = rule.mapping("retries", "a mapping such as {attempts: 3, on: [5xx, reset]}")
    if spec is None:
        return None
    spec.check_keys(RETRIES_KEYS, "retries")
    attempts = spec.get("attempts", RETRY_ATTEMPTS)
    conditions = fields.unique_list(spec, "on", "retry condition", _RETRY_ON)
    codes = _status_codes(spec)
    headers = value_matches(spec, "retriable_headers")
    if codes:
        # Codes retry nothing unless "retriable-status-codes" is a condition: implied.
        conditions = (*(conditions or DEFAULT_RETRY_ON), RETRIABLE_STATUS_CODES)
    elif RETRIABLE_STATUS_CODES in conditions and "retriable_status_codes" not in spec.value:
        spec.report("on", f'"{RETRIABLE_STATUS_CODES}" needs the codes to retry on: write '
                          "retriable_status_codes: [503, ...] (which implies it)")
    if headers:  # the same for response headers
        conditions = (*(conditions or DEFAULT_RETRY_ON), RETRIABLE_HEADERS)
    elif RETRIABLE_HEADERS in conditions and "retriable_headers" not in spec.value:
        spec.report("on", f'"{RETRIABLE_HEADERS}" needs the headers to retry on: write '
                          "retriable_headers: {x-retry: \"yes\"} (which implies it)")
    return Retries(attempts=1 if attempts is None else attempts,
                   on=tuple(dict.fromkeys(conditions)) or DEFAULT_RETRY_ON,
                   per_try_timeout=spec.get("per_try_timeout", _PER_TRY_TIMEOUT),
                   backoff=_backoff(spec),
                   retriable_status_codes=codes,
                   avoid_same_host=bool(spec.get("avoid_same_host", fields.boolean)),
                   origin=spec.origin(), retriable_headers=headers)


def _status_codes(spec: Fields) -> tuple[int, ...]:
    items = spec.items("retriable_status_codes", "status code")
    if items is None:
        return ()
    codes: list[int] = []
    seen: dict[Hashable, FieldPath] = {}
    for index, item in enumerate(items):
        path = (*spec.path, "retriable_status_codes", index)
        code = fields.convert_at(spec.ctx, item, path, _STATUS_CODE)
        if code is None:
            continue
        first = written_before(spec.ctx, seen, code, path)
        if first is not None:
            fields.report_at(spec.ctx, path, f"status {code} is listed twice (first at {first})")
            continue
        codes.append(code)
    return tuple(codes)


def _backoff(spec: Fields) -> Backoff | None:
    backoff = spec.mapping("backoff", "a mapping such as {base: 25ms, max: 250ms}")
    if backoff is None:
        return None
    backoff.check_keys(BACKOFF_KEYS, "backoff")
    base = backoff.get("base", _PER_TRY_TIMEOUT, required=True)
    longest = backoff.get("max", _PER_TRY_TIMEOUT)
    if base is None:
        return None
    if longest is not None and longest < base:
        backoff.report("max", "must not be shorter than base")
        return None
    return Backoff(base=base, max=longest)


def _grpc_max_timeout(rule: Fields) -> float | None:
    spec = rule.mapping("grpc", "a mapping such as {max_timeout: 30s}")
    if spec is None:
        return None
    spec.check_keys(GRPC_KEYS, "grpc")
    return spec.get("max_timeout", _TIMEOUT, required=True)


# ---------------------------------------------------------------------------------------------
# Fault injection, mirroring, consistent hashing.


def percentage(value: Any) -> float:
    """A share of requests, 0 to 100, with at most 4 decimals (Envoy counts per million)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"expected a percentage from 0 to 100, found {fields.describe(value)}")
    if not 0 <= value <= 100:
        raise Invalid(f"must be from 0 to 100, found {value}")
    if round(value * 10_000) != value * 10_000:
        raise Invalid(f"{value} has too many decimals: Envoy counts in millionths (4 decimals "
                      "of a percent)")
    return float(value)


def _fault(rule: Fields) -> Fault | None:
    spec = rule.mapping("fault", "a mapping such as {abort: {status: 503, percentage: 10}}")
    if spec is None:
        return None
    spec.check_keys(FAULT_KEYS, "fault")
    if "delay" not in spec.value and "abort" not in spec.value:
        rule.report("fault", "a fault needs a delay, an abort or both")
    return Fault(delay=_fault_delay(spec), abort=_fault_abort(spec),
                 headers=value_matches(spec, "headers"), origin=spec.origin())


def _fault_delay(spec: Fields) -> FaultDelay | None:
    delay = spec.mapping("delay", "a mapping such as {fixed: 500ms, percentage: 10}")
    if delay is None:
        return None
    delay.check_keys(FAULT_DELAY_KEYS, "a fault delay")
    fixed = delay.get("fixed", _PER_TRY_TIMEOUT, required=True)
    share = delay.get("percentage", percentage)
    return None if fixed is None else FaultDelay(fixed=fixed,
                                                 percentage=100.0 if share is None else share)


def _fault_abort(spec: Fields) -> FaultAbort | None:
    abort = spec.mapping("abort", "a mapping such as {status: 503, percentage: 10}")
    if abort is None:
        return None
    abort.check_keys(FAULT_ABORT_KEYS, "a fault abort")
    kind = abort.exclusive(("status", "grpc_status"), required=True, what="a fault abort")
    share = abort.get("percentage", percentage)
    share = 100.0 if share is None else share
    if kind == "status":
        status = abort.get("status", _ABORT_STATUS, required=True)
        return None if status is None else FaultAbort(status=status, percentage=share)
    if kind == "grpc_status":
        code = abort.get("grpc_status", _GRPC_STATUS, required=True)
        return None if code is None else FaultAbort(grpc_status=code, percentage=share)
    return None


def _mirrors(rule: Fields) -> tuple[Mirror, ...]:
    """`mirror`: one mapping, or a list of them (each mirrored service gets a copy)."""
    value = rule.value.get("mirror")
    if value is None:
        return ()
    path = (*rule.path, "mirror")
    if not isinstance(value, list):
        mirror = _mirror(rule.ctx, value, path)
        return () if mirror is None else (mirror,)
    items = rule.items("mirror", "mirror")
    if items is None:
        return ()
    mirrors: list[Mirror] = []
    seen: dict[Hashable, FieldPath] = {}
    for index, item in enumerate(items):
        mirror = _mirror(rule.ctx, item, (*path, index))
        if mirror is None:
            continue
        # One header-chosen mirror per rule: each candidate is a copy of the rule's route
        # entry, and two such mirrors would multiply the copies.
        key = ("header",) if mirror.from_header else (mirror.service, mirror.subset)
        first = written_before(rule.ctx, seen, key, (*path, index))
        if first is not None:
            shown = mirror.service + (f" (subset {mirror.subset})" if mirror.subset else "")
            message = f"{shown} is mirrored twice (first at {first})"
            if mirror.from_header:
                message = (f"a rule has one mirror chosen by a request header (the first is at "
                           f"{first}); list every Service in its candidates")
            fields.report_at(rule.ctx, (*path, index), message)
            continue
        mirrors.append(mirror)
    return tuple(mirrors)


def _mirror(ctx: DocumentContext, item: Any, path: FieldPath) -> Mirror | None:
    entry = Fields.at(ctx, item, path, "a mapping such as {service: reviews, subset: v3, "
                                       "percentage: 10}")
    if entry is None:
        return None
    entry.check_keys(MIRROR_KEYS, "a mirror")
    mark = fields.issue_count(ctx)
    share = entry.get("percentage", percentage)
    share = 100.0 if share is None else share
    kind = entry.exclusive(("service", "service_from_header"), required=True, what="a mirror")
    if kind is None:
        return None
    if kind == "service_from_header":
        return _mirror_from_header(entry, share, mark)
    for key in ("candidates",):
        if key in entry.value:
            entry.report(key, f'"{key}" goes with "service_from_header" only', at_value=False)
    service = entry.get("service", fields.name, required=True)
    subset = entry.get("subset", fields.name)
    if service is None or fields.reported_since(ctx, mark):
        return None
    return Mirror(service=service, subset=subset, percentage=share, origin=entry.origin())


def _mirror_from_header(entry: Fields, share: float, mark: int) -> Mirror | None:
    """`service_from_header`: the request header names the Service receiving the copy, one of
    `candidates` (their clusters go to the view; Envoy sends no copy for any other name)."""
    if "subset" in entry.value:
        entry.report("subset", '"subset" cannot be used with "service_from_header" (the header '
                               "names a whole Service)", at_value=False)
    header = entry.get("service_from_header", fields.header_name, required=True)
    if header is not None and header.startswith(":"):
        entry.report("service_from_header", f"{header} is a pseudo-header: name a request "
                                            "header such as x-mirror-to")
    candidates: tuple[str, ...] = ()
    if entry.items("candidates", "Service the header may name", required=True) is not None:
        candidates = fields.unique_list(entry, "candidates", "candidate", fields.name)
    if header is None or not candidates or fields.reported_since(entry.ctx, mark):
        return None
    return Mirror(service="", percentage=share, origin=entry.origin(), from_header=header,
                  candidates=candidates)


def _hash_on(rule: Fields) -> tuple[HashOn, ...]:
    items = rule.items("hash_on", "hash input")
    if items is None:
        return ()
    found = (_hash_input(rule.ctx, item, (*rule.path, "hash_on", index))
             for index, item in enumerate(items))
    return tuple(item for item in found if item is not None)


def _hash_input(ctx: DocumentContext, item: Any, path: FieldPath) -> HashOn | None:
    entry = Fields.at(ctx, item, path, "a mapping such as {header: x-user}, {cookie: {name: "
                                       "session}}, {source_ip: true} or {query: user}")
    if entry is None:
        return None
    entry.check_keys(HASH_KINDS, "a hash input")
    kind = entry.exclusive(HASH_KINDS, required=True, what="a hash input")
    if kind == "header":
        header = entry.get("header", fields.header_name, required=True)
        return None if header is None else HashOn("header", header, origin=entry.origin())
    if kind == "query":
        parameter = entry.get("query", fields.string, required=True)
        return None if parameter is None else HashOn("query", parameter, origin=entry.origin())
    if kind == "source_ip":
        return None if entry.get("source_ip", fields.true_only, required=True) is None \
            else HashOn("source_ip", origin=entry.origin())
    if kind == "cookie":
        return _hash_cookie(entry)
    return None


def _hash_cookie(entry: Fields) -> HashOn | None:
    if isinstance(entry.value.get("cookie"), str):  # {cookie: session}
        cookie = entry.get("cookie", fields.cookie_name, required=True)
        return None if cookie is None else HashOn("cookie", cookie, origin=entry.origin())
    spec = entry.mapping("cookie", "a cookie name or a mapping such as {name: session, "
                                   "ttl: 1h, path: /}", required=True)
    if spec is None:
        return None
    spec.check_keys(HASH_COOKIE_KEYS, "a hash cookie")
    cookie = spec.get("name", fields.cookie_name, required=True)
    ttl = spec.get("ttl", _TIMEOUT)
    where = spec.get("path", fields.url_path)
    if where is not None and ttl is None:
        spec.report("path", "path is the generated cookie's Path: it needs a ttl (Envoy only "
                            "creates the cookie when a ttl is given)", at_value=False)
    if cookie is None:
        return None
    return HashOn("cookie", cookie, ttl=ttl, path=where, origin=entry.origin())


# ---------------------------------------------------------------------------------------------
# CORS (per Route: its virtual host).


def _cors(doc: Fields, inherit: Cors | None = None) -> Cors | None:
    """A Route's `cors`, or a rule's (`inherit`: the Route's, whose fields fill in what the
    rule leaves out)."""
    spec = doc.mapping("cors", 'a mapping such as {allow_origins: ["https://a.example"]}')
    if spec is None:
        return None
    spec.check_keys(CORS_KEYS, "cors")
    written = set(spec.value)
    origins = _origins(spec)
    if spec.value.get("allow_origins") is None and inherit is None:
        spec.missing("allow_origins")
    credentials = spec.get("allow_credentials", fields.boolean)
    allow_methods = _wildcard_or(spec, "allow_methods", lambda: methods(spec, "allow_methods"))
    allow_headers = _wildcard_or(spec, "allow_headers", lambda: fields.unique_list(
        spec, "allow_headers", "header", fields.header_name))
    max_age = spec.get("max_age", fields.duration())
    if max_age is not None and max_age != int(max_age):
        spec.report("max_age", "max_age is sent in whole seconds")
    cors = Cors(
        allow_origins=origins,
        allow_methods=allow_methods,
        allow_headers=allow_headers,
        expose_headers=fields.unique_list(spec, "expose_headers", "header", fields.header_name),
        max_age=max_age, allow_credentials=credentials, origin=spec.origin())
    if inherit is not None:  # what the rule does not write is the Route's
        cors = replace(inherit, **{key: getattr(cors, key) for key in CORS_KEYS
                                   if key in written}, origin=cors.origin)
    # ["*"] methods and headers go with credentials: Envoy answers a preflight with the
    # method and headers it asks for, never a literal "*" (which browsers would refuse).
    if cors.allow_credentials and StringMatch("regex", ".*") in cors.allow_origins:
        spec.report("allow_credentials" if "allow_credentials" in written else "cors",
                    'allow_credentials cannot be used with the origin "*": any web site '
                    "could then make requests with the user's cookies; list the origins",
                    at_value=False)
    return cors


def _wildcard_or(spec: Fields, key: str, listed: Callable[[], tuple[str, ...]]
                 ) -> tuple[str, ...]:
    """["*"] (any, as browsers read it without credentials) or the listed values."""
    value = spec.value.get(key)
    if isinstance(value, list) and "*" in value:
        if value != ["*"]:
            spec.report(key, '"*" means any: write it alone')
        return ("*",)
    return listed()


def _origins(spec: Fields) -> tuple[StringMatch, ...]:
    """Origins as written (`_origin_text`), or {exact: "null"} for an origin that is no URL
    (a sandboxed page's "null", an extension's origin): compared exactly."""
    items = spec.items("allow_origins", "origin")
    if items is None:
        return ()
    found: list[StringMatch] = []
    seen: dict[Hashable, FieldPath] = {}
    for index, item in enumerate(items):
        where = (*spec.path, "allow_origins", index)
        if isinstance(item, dict):
            entry = Fields(spec.ctx, item, where)
            entry.check_keys(("exact",), "an exact origin")
            text = entry.get("exact", _exact_origin, required=True)
            match = None if text is None else StringMatch("exact", text)
        else:
            text = fields.convert_at(spec.ctx, item, where, _origin_text)
            match = None if text is None else origin_match(text)
        if match is None or text is None:
            continue
        first = written_before(spec.ctx, seen, match, where)
        if first is not None:
            fields.report_at(spec.ctx, where, f"origin {fields.quoted(text)} is listed twice "
                                              f"(first at {first})")
            continue
        found.append(match)
    return tuple(found)


def _exact_origin(value: Any) -> str:
    text = fields.string(value)
    if not text.isprintable() or " " in text or len(text) > 1024:
        raise Invalid(f"invalid origin {fields.quoted(text)}: printable, without spaces")
    return text


# [scheme://][*.]host[:port], or "*".
_ORIGIN = re.compile(r"(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?P<wild>\*\.)?(?P<host>[^:/*]+)"
                     r"(?::(?P<port>[0-9]{1,5}))?\Z")


def _origin_text(value: Any) -> str:
    """An allowed origin as written, lower-cased: `https://a.example`, `a.example` (http or
    https), `*.b.example` (any subdomain), with an optional `:port`; or `*`."""
    text = fields.string(value).lower()
    if text == "*":
        return text
    found = _ORIGIN.match(text)
    host = found.group("host") if found else ""
    if found is None or not (_accepted(fields.dns_name, host)
                             or _accepted(fields.ip_address, host)):
        raise Invalid(f"invalid origin {fields.quoted(text)}: expected an origin such as "
                      '"https://a.example", "*.b.example" (any subdomain) or "*" (any origin)')
    if found.group("port") is not None:
        fields.port_text(found.group("port"))
    match = origin_match(text)
    if match.kind == "regex":  # a long host name can make a regex Envoy refuses
        problem = fields.re2_problem(f"(?i){match.value}")
        if problem is not None:
            raise Invalid(f"origin {fields.quoted(text)} is too long to be matched: {problem}")
    return text


def _accepted(convert: Callable[[str], object], text: str) -> bool:
    try:
        convert(text)
    except Invalid:
        return False
    return True


def origin_match(origin: str) -> StringMatch:
    """How Envoy matches an origin written as `_origin_text` accepts it: a full origin exactly,
    anything else with a regex (a missing scheme is http or https; `*.` is one or more labels;
    no port written matches only the default port)."""
    if origin == "*":
        return StringMatch("regex", ".*")
    found = _ORIGIN.match(origin)
    assert found is not None
    if found.group("scheme") and not found.group("wild"):
        return StringMatch("exact", origin)
    scheme = re.escape(found.group("scheme")) if found.group("scheme") else "https?"
    wild = r"[a-z0-9-]+(\.[a-z0-9-]+)*\." if found.group("wild") else ""
    port = f":{found.group('port')}" if found.group("port") else ""
    return StringMatch("regex", f"{scheme}://{wild}{re.escape(found.group('host'))}"
                                f"{re.escape(port)}")
