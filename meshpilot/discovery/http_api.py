"""The self-registration API, served on the admin address (loopback by default).

    POST   /v1/registrations        {"service": "reviews", "address": "10.0.0.7:9080",
                                     "labels": {"version": "v2"}, "ttl": "30s"}
                                    -> 201 {"id": ..., ...}  (200 if that service and address
                                       were registered already: same id, labels and TTL updated)
    PUT    /v1/registrations/{id}   heartbeat: the TTL starts again -> 200; 404 once expired
    DELETE /v1/registrations/{id}   -> 204; 404 if unknown
    GET    /v1/registrations        -> 200 {"registrations": [...]}  (?service=NAME filters)

An instance not renewed within its TTL is removed by the application's periodic sweep. Every
invalid request is answered 400 with {"error": "..."} naming the field.

With a token authority (the default of `meshpilot serve`), every call needs
`Authorization: Bearer TOKEN`: a registration token names one Service and allows only that
Service's registrations (register, renew, delete, list); an operator token allows all. Without
one: 401; for another Service: 403. Writes take only `application/json` bodies (415 otherwise),
which a cross-origin page cannot send without the browser asking first. Per-Service limits
(discovery.registry.Limits) answer 409 (too many endpoints) or 429 with Retry-After (too fast).

With a store (`serve --store`, discovery/shared.py) the writes go to the store, where every
replica sees them; when it is unreachable they are refused with 503 and the reason, and the
reads answer the last known state.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from meshpilot.base.units import parse_duration
from meshpilot.ca.tokens import TokenAuthority, TokenError, bearer
from meshpilot.discovery.registry import EndpointRegistry, Instance, LimitExceeded, check_host
from meshpilot.discovery.shared import SharedRegistrations
from meshpilot.store import StoreError

SOURCE = "registration"
DEFAULT_TTL = 30.0
MIN_TTL = 0.1
MAX_TTL = 24 * 3600.0
MAX_LABELS = 64

# The policy's rule for names (meshpilot.inputs.native.fields.name): a registration names a Service.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})\Z")
_LABEL_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,252})\Z")
_KEYS = ("service", "address", "labels", "ttl")
# The routes a registration token may call (the admin API's guard lets it through to them only).
REGISTRATION_PATHS = ("/v1/registrations", "/v1/registrations/{id}")


class Invalid(ValueError):
    pass


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, indent=2, sort_keys=True) + "\n", status=status,
                        content_type="application/json")


def _error(message: str, status: int = 400) -> web.Response:
    return _json({"error": message}, status)


def parse_registration(data: Any) -> tuple[str, str, int, dict[str, str], float]:
    """(service, host, port, labels, ttl seconds) of a registration body; Invalid if not."""
    if not isinstance(data, dict):
        raise Invalid("expected a JSON object like {\"service\": \"reviews\", "
                      "\"address\": \"10.0.0.7:9080\", \"ttl\": \"30s\"}")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise Invalid(f"unknown field(s) {', '.join(map(repr, unknown))}; "
                      f"known: {', '.join(_KEYS)}")
    service = data.get("service")
    if not isinstance(service, str) or not _NAME.match(service):
        raise Invalid(f"service: expected a service name (letters, digits, '.', '_', '-'), "
                      f"found {service!r}")
    host, port = _address(data.get("address"))
    labels = data.get("labels", {}) or {}
    if not isinstance(labels, dict):
        raise Invalid(f"labels: expected an object of string values, found {labels!r}")
    if len(labels) > MAX_LABELS:
        raise Invalid(f"labels: at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise Invalid(f"labels: invalid label name {key!r}")
        if not isinstance(value, str) or len(value) > 1024:
            raise Invalid(f"labels.{key}: expected a string (at most 1024 characters), "
                          f"found {value!r}")
    ttl = _ttl(data.get("ttl"))
    return service, host, port, labels, ttl


def _address(value: Any) -> tuple[str, int]:
    if not isinstance(value, str):
        raise Invalid(f"address: expected \"IP:PORT\" (e.g. \"10.0.0.7:9080\"), found {value!r}")
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise Invalid(f"address: expected \"IP:PORT\", found {value!r}")
    try:
        host = check_host(host)
    except ValueError:
        raise Invalid(f"address: {host!r} is not an IP address (discovered endpoints are IPs; "
                      f"write DNS names in the policy)") from None
    port = int(port_text)
    if not 0 < port < 65536:
        raise Invalid(f"address: port {port} is out of range 1-65535")
    return host, port


def _ttl(value: Any) -> float:
    if value is None:
        return DEFAULT_TTL
    if isinstance(value, bool):
        raise Invalid(f"ttl: expected a duration like \"30s\", found {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            raise Invalid(f"ttl: {e}") from None
    else:
        raise Invalid(f"ttl: expected a duration like \"30s\", found {value!r}")
    if not MIN_TTL <= seconds <= MAX_TTL:
        raise Invalid(f"ttl: must be between {MIN_TTL}s and {MAX_TTL:.0f}s, found {value!r}")
    return seconds


class Refused(Exception):
    def __init__(self, response: web.Response):
        super().__init__(response.status)
        self.response = response


def _allowed_service(request: web.Request, tokens: TokenAuthority | None) -> str | None:
    """The Service the caller may act for; None: every Service (an operator, or no token
    authority at all). Refused (401) without a valid token."""
    if tokens is None:
        return None
    token = bearer(request.headers.get("Authorization"))
    if token is None:
        raise Refused(_unauthorized("a token is required (Authorization: Bearer TOKEN; "
                                    "`meshpilot token create registration SERVICE`)"))
    try:
        return tokens.verify(token, "registration").subject
    except TokenError as registration_error:
        try:
            tokens.verify(token, "operator")
            return None
        except TokenError:
            raise Refused(_unauthorized(str(registration_error))) from None


def _unauthorized(message: str) -> web.Response:
    response = _error(message, 401)
    response.headers["WWW-Authenticate"] = 'Bearer realm="meshpilot"'
    return response


def _check_service(allowed: str | None, service: str) -> None:
    if allowed is not None and allowed != service:
        raise Refused(_error(f"this token is for Service {allowed!r}, not {service!r}", 403))


def _store_refused(error: StoreError) -> web.Response:
    response = _error(f"{error}; registrations cannot change until it is back (the last known "
                      f"ones keep serving)", 503)
    response.headers["Retry-After"] = "1"
    return response


def add_registration_routes(routes: web.RouteTableDef, registry: EndpointRegistry,
                            tokens: TokenAuthority | None = None,
                            shared: SharedRegistrations | None = None) -> None:
    """`tokens`: None serves the API without authentication (`--insecure-admin`). `shared`:
    writes go to the store (replicas); None: to `registry` only (one process)."""

    def describe(instance: Instance) -> dict[str, object]:
        return instance.describe(registry.clock())

    def owned(request: web.Request) -> Instance:
        """The registration the request names, if the caller may act on it; else Refused (an
        unknown id and another Service's id look the same: 404, nothing to probe with)."""
        allowed = _allowed_service(request, tokens)
        instance = registry.get(request.match_info["id"])
        if instance is None or instance.source != SOURCE \
                or (allowed is not None and allowed != instance.service):
            raise Refused(_error("no such registration (expired or deleted): register again",
                                 404))
        return instance

    def guarded(handler):  # type: ignore[no-untyped-def]
        async def run(request: web.Request) -> web.Response:
            try:
                return await handler(request)
            except Refused as refused:
                return refused.response
        return run

    @routes.post("/v1/registrations")
    @guarded
    async def register(request: web.Request) -> web.Response:
        allowed = _allowed_service(request, tokens)
        if request.content_type != "application/json":
            return _error("the body must be JSON, sent as Content-Type: application/json", 415)
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error("the body must be JSON")
        try:
            service, host, port, labels, ttl = parse_registration(data)
        except Invalid as e:
            return _error(str(e))
        _check_service(allowed, service)
        try:
            if shared is not None:
                instance, created = await shared.register(service, host, port, labels, ttl)
            else:
                instance, created = registry.register(service, host, port, labels,
                                                      source=SOURCE, ttl=ttl)
        except StoreError as e:
            return _store_refused(e)
        except LimitExceeded as e:
            if e.retry_after is None:
                return _error(str(e), 409)
            response = _error(str(e), 429)
            response.headers["Retry-After"] = str(max(1, round(e.retry_after + 0.5)))
            return response
        return _json(describe(instance), 201 if created else 200)

    @routes.put("/v1/registrations/{id}")
    @guarded
    async def heartbeat(request: web.Request) -> web.Response:
        owned(request)
        try:
            if shared is not None:
                instance = await shared.renew(request.match_info["id"])
            else:
                instance = registry.renew(request.match_info["id"])
        except StoreError as e:
            return _store_refused(e)
        except KeyError:
            return _error("no such registration (expired or deleted): register again", 404)
        return _json(describe(instance))

    @routes.delete("/v1/registrations/{id}")
    @guarded
    async def deregister(request: web.Request) -> web.Response:
        owned(request)
        try:
            removed = (await shared.remove(request.match_info["id"]) if shared is not None
                       else registry.remove(request.match_info["id"]))
        except StoreError as e:
            return _store_refused(e)
        if removed is None:
            return _error("no such registration", 404)
        return web.Response(status=204)

    @routes.get("/v1/registrations")
    @guarded
    async def registrations(request: web.Request) -> web.Response:
        allowed = _allowed_service(request, tokens)
        service = request.query.get("service")
        if allowed is not None:
            _check_service(allowed, service or allowed)
            service = allowed
        return _json({"registrations": [describe(i) for i in
                                        registry.instances(service=service, source=SOURCE)]})

    @routes.get("/debug/discovery")
    async def discovery(_: web.Request) -> web.Response:
        return _json({"instances": [describe(i) for i in registry.instances()],
                      "counts": registry.counts()})
