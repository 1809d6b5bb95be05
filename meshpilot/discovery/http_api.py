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
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from meshpilot.base.units import parse_duration
from meshpilot.discovery.registry import EndpointRegistry, Instance, check_host

SOURCE = "registration"
DEFAULT_TTL = 30.0
MIN_TTL = 0.1
MAX_TTL = 24 * 3600.0
MAX_LABELS = 64

# The policy's rule for names (meshpilot.inputs.native.fields.name): a registration names a Service.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})\Z")
_LABEL_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,252})\Z")
_KEYS = ("service", "address", "labels", "ttl")


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


def add_registration_routes(routes: web.RouteTableDef, registry: EndpointRegistry) -> None:
    def describe(instance: Instance) -> dict[str, object]:
        return instance.describe(registry.clock())

    def owned(request: web.Request) -> Instance | None:
        instance = registry.get(request.match_info["id"])
        return instance if instance is not None and instance.source == SOURCE else None

    @routes.post("/v1/registrations")
    async def register(request: web.Request) -> web.Response:
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error("the body must be JSON")
        try:
            service, host, port, labels, ttl = parse_registration(data)
        except Invalid as e:
            return _error(str(e))
        instance, created = registry.register(service, host, port, labels, source=SOURCE, ttl=ttl)
        return _json(describe(instance), 201 if created else 200)

    @routes.put("/v1/registrations/{id}")
    async def heartbeat(request: web.Request) -> web.Response:
        if owned(request) is None:
            return _error("no such registration (expired or deleted): register again", 404)
        try:
            instance = registry.renew(request.match_info["id"])
        except KeyError:
            return _error("no such registration (expired or deleted): register again", 404)
        return _json(describe(instance))

    @routes.delete("/v1/registrations/{id}")
    async def deregister(request: web.Request) -> web.Response:
        if owned(request) is None or registry.remove(request.match_info["id"]) is None:
            return _error("no such registration", 404)
        return web.Response(status=204)

    @routes.get("/v1/registrations")
    async def registrations(request: web.Request) -> web.Response:
        service = request.query.get("service")
        return _json({"registrations": [describe(i) for i in
                                        registry.instances(service=service, source=SOURCE)]})

    @routes.get("/debug/discovery")
    async def discovery(_: web.Request) -> web.Response:
        return _json({"instances": [describe(i) for i in registry.instances()],
                      "counts": registry.counts()})
