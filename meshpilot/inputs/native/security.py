"""Request-level security of a Route or of one of its rules, as `model.Security`.

The same keys are accepted on a Route (its whole virtual host) and on a rule (that rule only,
replacing the Route's setting of the same feature):

    jwt:                                # (also a sidecar's, with file or inline jwks)
      required: true                    # false: no token passes, a bad token never does
      providers:
        - name: corp
          issuer: https://issuer.example
          audiences: [shop]
          jwks: {file: /etc/keys/jwks.json}  # or {inline: "..."} or {uri: https://idp/jwks,
                                        #    service: idp, cache: 5m}
          forward_claims: {sub: x-user} # claim -> request header
          from_cookies: [session]       # also read the token from these cookies
          forward_payload: x-jwt-payload  # the validated payload (base64url) to this header
    api_keys: {header: x-api-key, keys: {client-a: {file: /k/a.txt}, client-b: "literal"},
               forward: x-client, strip: true}     # or query: key, or cookie: k
    basic_auth: {users: {file: /etc/users.htpasswd}, forward: x-user, strip: true}
                                        # {SHA} hashes (htpasswd -s)
    ext_authz: {service: authz, protocol: http, timeout: 200ms, failure_mode_allow: false,
                path_prefix: /check, send_headers: [cookie], upstream_headers: [x-user],
                client_headers: [www-authenticate], client_headers_on_success: [x-session]}
    authorization:                      # a mapping, or a list of them (one per action)
      action: ALLOW                     # or DENY; DENY is evaluated first
      rules:                            # any rule; within a rule, every condition
        - paths: [/api/*, /exact]       # "/x" exactly, "/x/*" a prefix, "*" any, or
                                        #   {exact|prefix|regex: ...}
          methods: [GET]
          headers: {x-team: blue}
          source_ips: [10.0.0.0/8]
          claims: {group: admins}       # needs jwt on the Route or the rule
          authenticated: true           # a valid JWT (false: none); needs jwt
          not: {paths: [/admin/*], methods: [DELETE], source_ips: [...], headers: {...},
                claims: {...}}          # none of these may hold
    rate_limit: {requests: 100, per: 1m, by: route}    # or host, source_ip, {header: x-client}
                                        # shadow: true, ratelimit_headers: false,
                                        # limited_headers: {retry-after: "60"}
    csrf: {allow_origins: [partner.example, "*.shop.example"], shadow: false}  # or csrf: true

File paths are absolute. Key values are never shown in messages.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from pathlib import Path
from typing import Any, cast

from meshpilot.base import tlsfiles as tls_files
from meshpilot.inputs.context import DocumentContext
from meshpilot.inputs.native import fields
from meshpilot.inputs.native.fields import Fields, Invalid
from meshpilot.inputs.native.matches import (
    istio_path,
    istio_path_match,
    methods,
    value_matches,
)
from meshpilot.ir.model import (
    ApiKeys,
    Authorization,
    AuthzRule,
    BasicAuth,
    Csrf,
    ExtAuthz,
    Jwks,
    Jwt,
    JwtProvider,
    RateLimit,
    Security,
    SessionPersistence,
    StringMatch,
)

SECURITY_KEYS = ("jwt", "api_keys", "basic_auth", "ext_authz", "authorization", "rate_limit",
                 "csrf", "session_persistence")
SESSION_PERSISTENCE_KEYS = ("header", "cookie", "strict")
SESSION_COOKIE_KEYS = ("name", "path", "ttl")
JWT_KEYS = ("providers", "required")
PROVIDER_KEYS = ("name", "issuer", "audiences", "jwks", "forward_claims", "from_cookies",
                 "forward_payload")
JWKS_SOURCES = ("file", "inline", "uri")
JWKS_KEYS = ("file", "inline", "uri", "service", "cache")
API_KEY_SOURCES = ("header", "query", "cookie")
API_KEYS_KEYS = (*API_KEY_SOURCES, "keys", "forward", "strip")
BASIC_AUTH_KEYS = ("users", "forward", "strip")
EXT_AUTHZ_KEYS = ("service", "protocol", "timeout", "failure_mode_allow", "path_prefix",
                  "send_headers", "upstream_headers", "client_headers",
                  "client_headers_on_success")
EXT_AUTHZ_HEADER_LISTS = ("send_headers", "upstream_headers", "client_headers",
                          "client_headers_on_success")
EXT_AUTHZ_PROTOCOLS = ("http", "grpc")
AUTHORIZATION_KEYS = ("action", "rules")
AUTHZ_ACTIONS = ("ALLOW", "DENY")
AUTHZ_RULE_KEYS = ("paths", "methods", "headers", "source_ips", "claims", "authenticated",
                   "not")
NOT_KEYS = ("paths", "methods", "headers", "source_ips", "claims")
# A sidecar's rules also name callers; they have no JWT (yet): no claims, no authenticated.
MESH_RULE_KEYS = ("from", "namespaces", "paths", "methods", "headers", "source_ips", "claims",
                  "authenticated", "not")
MESH_NOT_KEYS = ("from", "namespaces", "paths", "methods", "headers", "source_ips", "claims")
RATE_LIMIT_KEYS = ("requests", "per", "by", "shadow", "ratelimit_headers", "limited_headers",
                   "shared")
CSRF_KEYS = ("allow_origins", "shadow")
RATE_LIMIT_BY = ("route", "host", "source_ip")
MIN_RATE_WINDOW = 0.05  # Envoy's smallest token bucket fill interval (50 ms)
MAX_FILE_BYTES = 1 << 20
DEFAULT_EXT_AUTHZ_TIMEOUT = 0.2

_REQUESTS = fields.integer(1, 1_000_000_000)
AUTHZ_ACTION = fields.choice(AUTHZ_ACTIONS)
_PROTOCOL = fields.choice(EXT_AUTHZ_PROTOCOLS)
_HTPASSWD_LINE = re.compile(r"([^:\s]+):\{SHA\}([A-Za-z0-9+/]{27}=)\Z")


def parse_security(spec: Fields) -> Security:
    """The security keys of a Route or rule mapping (the caller checks which keys exist)."""
    return Security(jwt=_jwt(spec), api_keys=_api_keys(spec), basic_auth=_basic_auth(spec),
                    ext_authz=_ext_authz(spec), authorization=_authorization(spec),
                    rate_limit=_rate_limit(spec), csrf=_csrf(spec),
                    session_persistence=_session_persistence(spec))


def check_claims(ctx: DocumentContext, route: Security, rules: list[tuple[Any, Security]]) -> None:
    """An authorization rule on claims needs a JWT to read them from (the Route's or the
    rule's): without one, it could never match."""
    for path, security in [((), route), *rules]:
        jwt = security.jwt or route.jwt
        if security.authorization is None or jwt is not None:
            continue
        if any(r.claims or r.authenticated is not None or (r.exclude and r.exclude.claims)
               for policy in security.authorization for r in policy.rules):
            ctx.report((*path, "authorization"), "claims and authenticated need a jwt on the "
                                                 "Route or on the rule (a request has no "
                                                 "claims without one)")


# ---- files ----------------------------------------------------------------------------------


def _file(ctx: DocumentContext) -> fields.Converter[str]:
    """A readable file, written as an absolute path (Envoy reads some of them itself)."""
    del ctx

    def convert(value: Any) -> str:
        text = fields.string(value)
        path = Path(text)
        if not path.is_absolute():
            raise Invalid(f"expected an absolute path, found {fields.quoted(fields.clip(text))}")
        try:
            tls_files.confined(path, fields.quoted(str(path)))
        except tls_files.FileOutsideError as outside:
            raise Invalid(str(outside)) from None
        if not path.is_file():
            raise Invalid(f"no file {fields.quoted(str(path))}")
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise Invalid(f"{fields.quoted(str(path))} is larger than 1 MiB")
            path.read_bytes()
        except OSError as problem:
            raise Invalid(f"cannot read {fields.quoted(str(path))}: {problem.strerror}") \
                from None
        return str(path)
    return convert


# ---- jwt --------------------------------------------------------------------------------------


def parse_jwt(spec: Fields) -> Jwt | None:
    """`jwt` of a sidecar: as a Route's, with the keys in a file or inline (a sidecar's view
    holds no JWKS server's cluster)."""
    jwt = _jwt(spec)
    if jwt is not None:
        for index, provider in enumerate(jwt.providers):
            if provider.jwks.uri is not None:
                spec.report("jwt", f"providers[{index}]: a sidecar's jwt reads its keys from "
                                   "a file or inline (jwks: {file: ...} or {inline: ...}), not "
                                   "from a uri", at_value=False)
                return None
    return jwt


def _jwt(spec: Fields) -> Jwt | None:
    jwt = spec.mapping("jwt", "a mapping such as {providers: [{name: corp, issuer: ..., "
                              "jwks: {file: jwks.json}}]}")
    if jwt is None:
        return None
    jwt.check_keys(JWT_KEYS, "jwt")
    items = jwt.items("providers", "provider", required=True) or []
    providers: list[JwtProvider] = []
    seen: dict[str, Any] = {}
    for index, item in enumerate(items):
        provider = _provider(jwt.ctx, item, (*jwt.path, "providers", index))
        if provider is None:
            continue
        first = fields.written_before(jwt.ctx, seen, provider.name,
                                      (*jwt.path, "providers", index))
        if first is not None:
            fields.report_at(jwt.ctx, (*jwt.path, "providers", index, "name"),
                             f"provider {provider.name} is defined twice (first at {first})")
            continue
        providers.append(provider)
    required = jwt.get("required", fields.boolean)
    return Jwt(providers=tuple(providers), required=True if required is None else required,
               origin=jwt.origin())


def _provider(ctx: DocumentContext, item: Any, path: fields.FieldPath) -> JwtProvider | None:
    entry = Fields.at(ctx, item, path, "a provider mapping such as {name: corp, issuer: ..., "
                                       "jwks: {file: jwks.json}}")
    if entry is None:
        return None
    entry.check_keys(PROVIDER_KEYS, "a jwt provider")
    name = entry.get("name", fields.name, required=True)
    issuer = entry.get("issuer", fields.string)
    audiences = _strings(entry, "audiences", "audience")
    jwks = _jwks(entry)
    claims = _forward_claims(entry)
    cookies = _strings(entry, "from_cookies", "cookie name")
    payload = entry.get("forward_payload", fields.header_name)
    if name is None or jwks is None:
        return None
    return JwtProvider(name=name, issuer=issuer, jwks=jwks, audiences=audiences,
                       forward_claims=claims, from_cookies=cookies, payload_header=payload,
                       origin=entry.origin())


def _strings(spec: Fields, key: str, what: str) -> tuple[str, ...]:
    items = spec.items(key, what) or []
    found = (fields.convert_at(spec.ctx, item, (*spec.path, key, i), fields.string)
             for i, item in enumerate(items))
    return tuple(dict.fromkeys(s for s in found if s is not None))


def _jwks_text(value: Any) -> str:
    text = fields.string(value)
    try:
        data = json.loads(text)
    except ValueError:
        raise Invalid("is not JSON: expected a JWKS such as {\"keys\": [...]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not data["keys"]:
        raise Invalid("expected a JWKS: a JSON object with a non-empty \"keys\" list")
    return text


def _jwks(entry: Fields) -> Jwks | None:
    spec = entry.mapping("jwks", "a mapping with one of file, inline or uri", required=True)
    if spec is None:
        return None
    spec.check_keys(JWKS_KEYS, "jwks")
    kind = spec.exclusive(JWKS_SOURCES, required=True, what="jwks")
    if kind != "uri":
        for key in ("service", "cache"):
            if key in spec.value:
                spec.report(key, f"{key} applies to a jwks uri only", at_value=False)
    if kind == "file":
        path = spec.get("file", _file(spec.ctx), required=True)
        if path is None:
            return None
        try:
            _jwks_text(Path(path).read_text(encoding="utf-8", errors="replace"))
        except Invalid as problem:
            spec.report("file", f"{fields.quoted(path)} {problem.message}")
            return None
        return Jwks(file=path)
    if kind == "inline":
        inline = spec.get("inline", _jwks_text, required=True)
        return None if inline is None else Jwks(inline=inline)
    if kind == "uri":
        uri = spec.get("uri", _https_uri, required=True)
        service = spec.get("service", fields.name, required=True)
        cache = spec.get("cache", fields.duration())
        if uri is None or service is None:
            return None
        return Jwks(uri=uri, service=service, cache=cache)
    return None


def _https_uri(value: Any) -> str:
    text = fields.string(value)
    if not re.match(r"https?://[^/\s]+(/\S*)?\Z", text):
        raise Invalid(f"expected an http(s) URL such as https://idp.example/jwks, found "
                      f"{fields.quoted(fields.clip(text))}")
    return text


def _forward_claims(entry: Fields) -> tuple[tuple[str, str], ...]:
    spec = entry.mapping("forward_claims", "a mapping of claim names to header names, such as "
                                           "{sub: x-user}")
    if spec is None:
        return ()
    result: list[tuple[str, str]] = []
    headers: set[str] = set()
    for claim, value in spec.value.items():
        header = fields.convert_at(spec.ctx, value, (*spec.path, claim), _claim_header)
        if header is None:
            continue
        if header in headers:
            fields.report_at(spec.ctx, (*spec.path, claim), f'header "{header}" receives two '
                                                           "claims")
            continue
        headers.add(header)
        result.append((claim, header))
    return tuple(result)


def _claim_header(value: Any) -> str:
    name = fields.header_name(value)
    if name.startswith(":") or name == "host":
        raise Invalid(f'"{name}" cannot receive a claim')
    return name


# ---- api keys, basic auth -----------------------------------------------------------------------


def _api_keys(spec: Fields) -> ApiKeys | None:
    keys = spec.mapping("api_keys", "a mapping such as {header: x-api-key, keys: {client-a: "
                                    "{file: a.key}}}")
    if keys is None:
        return None
    keys.check_keys(API_KEYS_KEYS, "api_keys")
    source = keys.exclusive(API_KEY_SOURCES, required=True, what="api_keys")
    name = None
    if source == "header":
        name = keys.get("header", fields.header_name, required=True)
    elif source is not None:
        name = keys.get(source, fields.string, required=True)
    clients = keys.mapping("keys", "a mapping of client names to keys ({file: path} or the "
                                   "key itself)", required=True)
    found: list[tuple[str, str]] = []
    if clients is not None:
        if not clients.value:
            keys.report("keys", "must name at least one client")
        owners: dict[str, str] = {}
        for client, value in clients.value.items():
            path = (*clients.path, client)
            if fields.convert_at(keys.ctx, client, path, _client_name) is None:
                continue
            key = _key_value(keys.ctx, value, path)
            if key is None:
                continue
            if key in owners:  # never show the key itself
                keys.ctx.report(path, f"client {client} has the same key as client "
                                      f"{owners[key]}")
                continue
            owners[key] = client
            found.append((client, key))
    forward = keys.get("forward", _forward_header)
    strip = bool(keys.get("strip", fields.boolean))
    if source is None or name is None:
        return None
    return ApiKeys(source=cast(Any, source), name=name, keys=tuple(found), origin=keys.origin(),
                   forward_header=forward, strip=strip)


def _forward_header(value: Any) -> str:
    """The request header the authenticated client or user is sent to the backend in."""
    name = fields.header_name(value)
    if name.startswith(":") or name in ("host", "authorization"):
        raise Invalid(f'"{name}" cannot carry the client\'s name: use a header such as '
                      "x-client")
    return name


def _client_name(value: Any) -> str:
    try:
        return fields.name(value)
    except Invalid as problem:
        raise Invalid(problem.message, at_key=True) from None


def _key_value(ctx: DocumentContext, value: Any, path: fields.FieldPath) -> str | None:
    """A key written inline or read from a file; problems never quote the key."""
    if isinstance(value, dict):
        spec = Fields(ctx, value, path)
        spec.check_keys(("file",), "a key")
        file = spec.get("file", _file(ctx), required=True)
        if file is None:
            return None
        text = Path(file).read_text(encoding="utf-8", errors="replace").strip()
    elif isinstance(value, str):
        text = value
    else:
        fields.report_at(ctx, path, f"expected the key (a string) or {{file: path}}, found "
                                    f"{fields.describe(value)}")
        return None
    if not text or any(c.isspace() or not c.isprintable() for c in text):
        fields.report_at(ctx, path, "a key must be non-empty, printable, without spaces")
        return None
    return text


def _basic_auth(spec: Fields) -> BasicAuth | None:
    auth = spec.mapping("basic_auth", "a mapping such as {users: {file: users.htpasswd}}")
    if auth is None:
        return None
    auth.check_keys(BASIC_AUTH_KEYS, "basic_auth")
    users = auth.mapping("users", "a mapping such as {file: users.htpasswd}", required=True)
    if users is None:
        return None
    users.check_keys(("file",), "users")
    path = users.get("file", _file(users.ctx), required=True)
    if path is None:
        return None
    lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines()]
    entries = [(n, line) for n, line in enumerate(lines, 1) if line and not line.startswith("#")]
    if not entries:
        users.report("file", f"{fields.quoted(path)} lists no users")
        return None
    for number, line in entries:
        found = _HTPASSWD_LINE.match(line)
        if found is None or len(base64.b64decode(found.group(2))) != 20:
            users.report("file", f"{path}:{number}: expected user:{{SHA}}hash (htpasswd -s); "
                                 "Envoy accepts SHA-1 hashes only")
            return None
    return BasicAuth(users_file=path, origin=auth.origin(),
                     forward_header=auth.get("forward", _forward_header),
                     strip=bool(auth.get("strip", fields.boolean)))


# ---- ext_authz ----------------------------------------------------------------------------------


def _ext_authz(spec: Fields) -> ExtAuthz | None:
    authz = spec.mapping("ext_authz", "a mapping such as {service: authz, protocol: http}")
    if authz is None:
        return None
    authz.check_keys(EXT_AUTHZ_KEYS, "ext_authz")
    service = authz.get("service", fields.name, required=True)
    protocol = authz.get("protocol", _PROTOCOL) or "http"
    timeout = authz.get("timeout", fields.duration())
    fail_open = authz.get("failure_mode_allow", fields.boolean)
    prefix = authz.get("path_prefix", fields.url_path)
    if prefix is not None and protocol == "grpc":
        authz.report("path_prefix", "path_prefix applies to protocol http (a gRPC check has "
                                    "no path of its own)", at_value=False)
    lists = {key: _header_names(authz, key) for key in EXT_AUTHZ_HEADER_LISTS}
    if service is None:
        return None
    return ExtAuthz(service=service, protocol=cast(Any, protocol),
                    timeout=DEFAULT_EXT_AUTHZ_TIMEOUT if timeout is None else timeout,
                    failure_mode_allow=bool(fail_open), origin=authz.origin(),
                    path_prefix=(prefix or "").rstrip("/"), **lists)


def _header_names(spec: Fields, key: str) -> tuple[StringMatch, ...]:
    """A list of header names (exactly) or {prefix: x-auth-} matches."""
    items = spec.items(key, "header")
    if items is None:
        return ()
    found: list[StringMatch] = []
    for index, item in enumerate(items):
        where = (*spec.path, key, index)
        if isinstance(item, dict):
            entry = Fields(spec.ctx, item, where)
            entry.check_keys(("exact", "prefix"), "a header name match")
            kind = entry.exclusive(("exact", "prefix"), required=True, what="a header name match")
            value = entry.get(kind, fields.header_name, required=True) if kind else None
            if kind is not None and value is not None:
                found.append(StringMatch(cast(Any, kind), value))
            continue
        name = fields.convert_at(spec.ctx, item, where, fields.header_name)
        if name is not None:
            found.append(StringMatch("exact", name))
    return tuple(dict.fromkeys(found))


# ---- authorization ------------------------------------------------------------------------------


def _authorization(spec: Fields) -> tuple[Authorization, ...] | None:
    """One policy, or a list of them; policies of the same action are merged (any rule)."""
    value = spec.value.get("authorization")
    if value is None:
        return None
    path = (*spec.path, "authorization")
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not value:
        spec.report("authorization", "must list at least one policy")
    policies = [_policy(spec.ctx, item, (*path, i) if isinstance(value, list) else path)
                for i, item in enumerate(items)]
    by_action: dict[str, list[AuthzRule]] = {}
    for policy in policies:
        if policy is not None:
            by_action.setdefault(policy.action, []).extend(policy.rules)
    # Policies of one action merge into one: it was written at `authorization` (its rules
    # keep where each was written).
    origin = spec.origin("authorization")
    found = tuple(Authorization(action=cast(Any, action), rules=tuple(rules), origin=origin)
                  for action, rules in sorted(by_action.items(), key=lambda kv: kv[0] != "DENY"))
    return found or None


def _policy(ctx: DocumentContext, item: Any, path: fields.FieldPath) -> Authorization | None:
    return authorization_policy(ctx, item, path, mesh=False)


def authorization_policy(ctx: DocumentContext, item: Any, path: fields.FieldPath, *,
                         mesh: bool) -> Authorization | None:
    """`{action, rules}`: a Route's or rule's policy, or (`mesh`) a sidecar's, whose rules may
    also name callers (`from`). `rules: []` or no rules: ALLOW refuses everything, DENY
    nothing (as in Istio)."""
    entry = Fields.at(ctx, item, path, "a mapping such as {action: ALLOW, rules: [{paths: "
                                       "[/api/*]}]}")
    if entry is None:
        return None
    entry.check_keys(AUTHORIZATION_KEYS, "authorization")
    action = entry.get("action", AUTHZ_ACTION) or "ALLOW"
    value = entry.value.get("rules")
    rules: list[AuthzRule] = []
    if value is not None:
        if not isinstance(value, list):
            entry.report("rules", f"expected a list, found {fields.describe(value)}")
        else:
            for index, item2 in enumerate(value):
                rule = _authz_rule(ctx, item2, (*path, "rules", index), mesh)
                if rule is not None:
                    rules.append(rule)
    return Authorization(action=cast(Any, action), rules=tuple(rules), origin=entry.origin())


def _authz_rule(ctx: DocumentContext, item: Any, path: fields.FieldPath,
                mesh: bool) -> AuthzRule | None:
    entry = Fields.at(ctx, item, path, "a mapping such as {paths: [/admin/*], methods: [GET]}")
    if entry is None:
        return None
    entry.check_keys(MESH_RULE_KEYS if mesh else AUTHZ_RULE_KEYS, "an authorization rule")
    exclude = None
    negated = entry.mapping("not", "a mapping of conditions that must not hold, such as "
                                   "{paths: [/admin/*], methods: [DELETE]}")
    if negated is not None:
        negated.check_keys(MESH_NOT_KEYS if mesh else NOT_KEYS, "not")
        if not negated.value:
            entry.report("not", "must give at least one condition")
        exclude = _conditions(negated, mesh)
    authenticated = entry.get("authenticated", fields.boolean)
    return _conditions(entry, mesh, exclude=exclude, authenticated=authenticated)


def _conditions(entry: Fields, mesh: bool, *, exclude: AuthzRule | None = None,
                authenticated: bool | None = None) -> AuthzRule:
    ctx = entry.ctx
    paths = authz_paths(entry)
    ips = fields.unique_list(entry, "source_ips", "source IP range", cidr)
    claims = entry.mapping("claims", "a mapping of claim names to values, such as "
                                     "{group: admins}")
    claim_values: list[tuple[str, str]] = []
    if claims is not None:
        for claim, value in claims.value.items():
            text = fields.convert_at(ctx, value, (*claims.path, claim), fields.any_string)
            if text is not None:
                claim_values.append((claim, text))
    callers = fields.unique_list(entry, "from", "caller", caller) if mesh else ()
    namespaces = fields.unique_list(entry, "namespaces", "namespace", fields.name) if mesh \
        else ()
    return AuthzRule(paths=paths, methods=methods(entry),
                     headers=value_matches(entry, "headers"), source_ips=ips,
                     claims=tuple(claim_values), principals=callers, origin=entry.origin(),
                     exclude=exclude, authenticated=authenticated, namespaces=namespaces)


def authz_paths(entry: Fields) -> tuple[StringMatch, ...]:
    """`paths`: Istio's patterns ("/exact", "/prefix/*", "*") or {exact|prefix|regex: ...}."""
    items = entry.items("paths", "path")
    if items is None:
        return ()
    found: list[StringMatch] = []
    seen: dict[Any, Any] = {}
    for index, item in enumerate(items):
        where = (*entry.path, "paths", index)
        match = (_path_pattern(entry.ctx, item, where) if isinstance(item, dict)
                 else fields.convert_at(entry.ctx, item, where, _istio_path_match))
        if match is None:
            continue
        first = fields.written_before(entry.ctx, seen, match, where)
        if first is not None:
            fields.report_at(entry.ctx, where, f"this path is listed twice (first at {first})")
            continue
        found.append(match)
    return tuple(found)


def _istio_path_match(value: Any) -> StringMatch:
    return istio_path_match(istio_path(value))


_PATH_KINDS = ("exact", "prefix", "regex")


def _path_pattern(ctx: DocumentContext, item: Any, where: fields.FieldPath) -> StringMatch | None:
    spec = Fields(ctx, item, where)
    spec.check_keys(_PATH_KINDS, "a path")
    kind = spec.exclusive(_PATH_KINDS, required=True, what="a path")
    if kind is None:
        return None
    value = spec.get(kind, fields.regex if kind == "regex" else fields.url_path, required=True)
    return None if value is None else StringMatch(cast(Any, kind), value)


def caller(value: Any) -> str:
    """A Service (or Gateway) name, or a SPIFFE ID (`spiffe://trust-domain/...`)."""
    text = fields.string(value)
    if text.startswith("spiffe://"):
        if len(text) > 2048 or any(c.isspace() for c in text) or "/" not in text[9:]:
            raise fields.Invalid(f"invalid SPIFFE ID {fields.quoted(fields.clip(text))}: "
                                 "expected spiffe://trust-domain/path")
        return text
    return fields.name(text)


def cidr(value: Any) -> str:
    text = fields.string(value)
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise Invalid(f"invalid address or CIDR range {fields.quoted(fields.clip(text))}") \
            from None


# ---- rate limit ---------------------------------------------------------------------------------


def _rate_limit(spec: Fields) -> RateLimit | None:
    limit = spec.mapping("rate_limit", "a mapping such as {requests: 100, per: 1m}")
    if limit is None:
        return None
    limit.check_keys(RATE_LIMIT_KEYS, "rate_limit")
    requests = limit.get("requests", _REQUESTS, required=True)
    per = limit.get("per", fields.duration(), required=True)
    if per is not None and per < MIN_RATE_WINDOW:
        limit.report("per", "must be at least 50ms (Envoy's smallest refill interval)")
        per = None
    by, header = "route", None
    value = limit.value.get("by")
    if isinstance(value, dict):
        how = Fields(limit.ctx, value, (*limit.path, "by"))
        how.check_keys(("header",), "by")
        header = how.get("header", fields.header_name, required=True)
        by = "header"
        if header is None:
            return None
    elif value is not None:
        by = limit.get("by", fields.choice(RATE_LIMIT_BY)) or "route"
    shadow = limit.get("shadow", fields.boolean) or False
    headers = limit.get("ratelimit_headers", fields.boolean)
    limited = _header_values(limit, "limited_headers")
    shared = shared_name = None
    if "shared" in limit.value:
        service = limit.mapping("shared", "a mapping such as {service: ratelimit}")
        if service is not None:
            service.check_keys(("service", "name"), "shared")
            shared = service.get("service", fields.name, required=True)
            shared_name = service.get("name", fields.name)
    if requests is None or per is None:
        return None
    return RateLimit(requests=requests, per=per, by=cast(Any, by), header=header,
                     origin=limit.origin(), shadow=shadow,
                     ratelimit_headers=True if headers is None else headers,
                     limited_headers=limited, shared=shared, shared_name=shared_name)


def _header_values(parent: Fields, key: str) -> tuple[tuple[str, str], ...]:
    """A mapping of header name to value (a string, or a number written plainly)."""
    headers = parent.mapping(key, "a mapping of header name to value, such as "
                                  "{retry-after: \"60\"}")
    if headers is None:
        return ()
    out: list[tuple[str, str]] = []
    for name in headers.value:
        try:
            header = fields.header_name(name)
        except Invalid as e:
            headers.report(str(name), str(e), at_value=False)
            continue
        value = headers.get(str(name), _header_value)
        if value is not None:
            out.append((header, value))
    return tuple(out)


def _header_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Invalid(f"expected a header value (a string), found {fields.describe(value)}")
    text = str(value)
    if not text.isprintable() or len(text) > 8192:
        raise Invalid("a header value must be printable text, at most 8192 characters")
    return text


_ORIGIN_HOST = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?\Z")


def _origin_host(value: Any) -> str:
    text = fields.string(value)
    if "://" in text:
        raise Invalid(f"write the origin's host, without its scheme: "
                      f"{fields.quoted(text.split('://', 1)[1].rstrip('/'))}")
    if not _ORIGIN_HOST.match(text):
        raise Invalid(f"invalid origin host {fields.quoted(text)}: a host name or "
                      "host:port, or *.suffix")
    return text.lower()


def _session_persistence(spec: Fields) -> SessionPersistence | None:
    entry = spec.mapping("session_persistence", "a mapping such as {header: x-session}")
    if entry is None:
        return None
    entry.check_keys(SESSION_PERSISTENCE_KEYS, "session_persistence")
    strict = entry.get("strict", fields.boolean) or False
    kind = entry.exclusive(("header", "cookie"), required=True, what="session_persistence")
    if kind == "cookie":
        return _session_cookie(entry, strict)
    header = entry.get("header", fields.header_name, required=True) if kind else None
    if header is not None and header.startswith(":"):
        entry.report("header", f"{header} is a pseudo-header; name an ordinary header such as "
                               "x-session")
        header = None
    if header is None:
        return None
    return SessionPersistence(header=header, strict=strict, origin=entry.origin())


def _session_cookie(entry: Fields, strict: bool) -> SessionPersistence | None:
    """`cookie: NAME` or `cookie: {name: NAME, path: /, ttl: 1h}`: a session cookie (no ttl),
    or one that lasts ttl."""
    if isinstance(entry.value.get("cookie"), str):
        name = entry.get("cookie", fields.cookie_name, required=True)
        return None if name is None else SessionPersistence(
            cookie=name, strict=strict, origin=entry.origin())
    spec = entry.mapping("cookie", "a cookie name or a mapping such as {name: sticky, "
                                   "ttl: 1h, path: /}", required=True)
    if spec is None:
        return None
    spec.check_keys(SESSION_COOKIE_KEYS, "a session cookie")
    name = spec.get("name", fields.cookie_name, required=True)
    path = spec.get("path", fields.url_path) or "/"
    ttl = spec.get("ttl", fields.duration())
    if name is None:
        return None
    return SessionPersistence(cookie=name, cookie_path=path, cookie_ttl=ttl, strict=strict,
                              origin=entry.origin())


def _csrf(spec: Fields) -> Csrf | None:
    value = spec.value.get("csrf")
    if value is None:
        return None
    if value is True:
        return Csrf(origin=spec.origin("csrf"))
    entry = spec.mapping("csrf", "true, or a mapping such as {allow_origins: [partner.example]}")
    if entry is None:
        return None
    entry.check_keys(CSRF_KEYS, "csrf")
    origins: list[str] = []
    for index, item in enumerate(entry.items("allow_origins", "origin host") or ()):
        converted = fields.convert_at(entry.ctx, item, (*entry.path, "allow_origins", index),
                                      _origin_host)
        if converted is not None:
            origins.append(converted)
    shadow = entry.get("shadow", fields.boolean) or False
    return Csrf(allow_origins=tuple(origins), shadow=shadow, origin=entry.origin())
