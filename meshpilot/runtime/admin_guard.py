"""The admin API's gate: one aiohttp middleware every request passes, so no endpoint can forget it.

In order, each answered with the first refusal:

1. **Host** (421): the `Host` header must name meshpilot: the admin address's host:port, any of
   127.0.0.1, localhost and [::1] at that port when bound to loopback or to every address, and
   the names given with `--admin-host`. A page that rebinds its own DNS name to 127.0.0.1 is
   still addressed by that name, so this stops DNS rebinding. Health and metrics (`OPEN`) are
   not Host-checked: probes and scrapers address a pod by an IP meshpilot cannot know, and those
   endpoints hold nothing secret and change nothing.
2. **Origin** (403): a request with an `Origin` header must come from meshpilot's own origin
   (http or https, one of the names above): no other web page may call it, not even to read.
3. **Token** (401 with `WWW-Authenticate: Bearer`, 403 for a token of another kind): an operator
   token for everything but `OPEN` and `REGISTRATION` routes, which accept a registration token
   too (the handlers then check its Service, discovery/http_api.py). `PAGE` routes (the
   dashboard's static page and assets, no data) need none. Skipped with `--insecure-admin`
   (no token authority); steps 1, 2 and 4 still apply.
4. **Body** (415): POST, PUT, PATCH and DELETE bodies must be `application/json`, which a
   cross-origin page cannot send without the browser asking first (and being refused). POST and
   PATCH need that even without a body: a body-less POST is a "simple" cross-origin request.

Every route not named in the access table needs an operator token, unknown paths included (an
anonymous caller learns nothing about what exists).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

from aiohttp import web

from meshpilot.base.netutil import split_authority
from meshpilot.ca.tokens import TokenAuthority, TokenError, WrongKind, bearer


class Access(Enum):
    OPEN = "open"  # health and metrics: anyone who can reach the port
    REGISTRATION = "registration"  # a registration token (of the Service, checked by the route)
    # The dashboard's page and its static assets: no token (a browser cannot send a header on
    # navigation), but Host- and Origin-checked like the API. They hold nothing of the fleet:
    # the page asks for a token and fetches the data with it (runtime/dashboard.py).
    PAGE = "page"
    OPERATOR = "operator"  # the default: everything else


_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_BODY_REQUIRED = frozenset({"POST", "PATCH"})
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
_DEFAULT_PORTS = {"http": 80, "https": 443}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class GuardSettings:
    tokens: TokenAuthority | None  # None: --insecure-admin, no token needed
    address: Callable[[], str]  # the admin's HOST:PORT, its real port once bound
    hosts: tuple[str, ...] = ()  # --admin-host: NAME (any port) or NAME:PORT
    access: Mapping[str, Access] | None = None  # route path (as declared) -> who may call it


def _is_loopback_or_any(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


class HostRules:
    """Which `Host` values (and so which origins) are meshpilot's own."""

    def __init__(self, address: str, names: tuple[str, ...] = ()):
        # The address as app.py writes it: HOST:PORT with an IPv6 host unbracketed ("::1:80").
        bound, _, port_text = address.rpartition(":")
        host, port = split_authority(bound.strip("[]") or "0.0.0.0")[0], int(port_text)
        self.exact: set[tuple[str, int | None]] = {(host, port)}
        if _is_loopback_or_any(host):
            self.exact.update((name, port) for name in _LOOPBACK_NAMES)
        self.any_port: set[str] = set()
        for name in names:
            named_host, named_port = split_authority(name)
            if named_port is None:
                # Behind a proxy or a published container port the client's port is not ours;
                # the name is what a rebinding page cannot fake.
                self.any_port.add(named_host)
            else:
                self.exact.add((named_host, named_port))

    def allows(self, host: str, port: int | None) -> bool:
        return host in self.any_port or (host, port) in self.exact

    def allows_host_header(self, value: str | None) -> bool:
        if not value:
            return False
        try:
            return self.allows(*split_authority(value, default_port=80))
        except ValueError:
            return False

    def allows_origin(self, value: str) -> bool:
        try:
            parts = urlsplit(value)
            if parts.scheme not in _DEFAULT_PORTS or parts.path or parts.query or not parts.netloc:
                return False
            return self.allows(*split_authority(parts.netloc, _DEFAULT_PORTS[parts.scheme]))
        except ValueError:
            return False


def _refuse(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps({"error": message}, indent=2) + "\n", status=status,
                        content_type="application/json", headers=headers)


def _unauthorized(message: str) -> web.Response:
    return _refuse(401, message, {"WWW-Authenticate": 'Bearer realm="meshpilot"'})


def access_of(request: web.Request, table: Mapping[str, Access]) -> Access:
    """The route's access; OPERATOR for anything the table does not name, unknown paths and
    aiohttp's own 404/405 routes included."""
    route = request.match_info.route
    resource = getattr(route, "resource", None)
    if resource is None:
        return Access.OPERATOR
    return table.get(resource.canonical, Access.OPERATOR)


def _check_token(request: web.Request, tokens: TokenAuthority,
                 access: Access) -> web.Response | None:
    token = bearer(request.headers.get("Authorization"))
    hint = ("`meshpilot token create registration SERVICE`" if access is Access.REGISTRATION
            else "`meshpilot token create operator`")
    if token is None:
        return _unauthorized(f"a token is required (Authorization: Bearer TOKEN; {hint})")
    kinds = ("registration", "operator") if access is Access.REGISTRATION else ("operator",)
    wrong: WrongKind | None = None
    for kind in kinds:
        try:
            tokens.verify(token, kind)
            return None
        except WrongKind as e:
            wrong = e
        except TokenError as e:  # not genuine, expired: the same for every kind
            return _unauthorized(str(e))
    return _refuse(403, f"{wrong}; this endpoint needs {' or '.join(kinds)} access")


def guard(settings: GuardSettings) -> Middleware:
    """The middleware. Host rules are worked out from the address when first needed and again
    whenever it changes (port 0 is replaced by the bound port after the app is made)."""
    table = dict(settings.access or {})
    rules: list[tuple[str, HostRules]] = []

    def host_rules() -> HostRules:
        address = settings.address()
        if not rules or rules[0][0] != address:
            rules[:] = [(address, HostRules(address, settings.hosts))]
        return rules[0][1]

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        access = access_of(request, table)
        allowed = host_rules()
        host = request.headers.get("Host")
        if access is not Access.OPEN and not allowed.allows_host_header(host):
            return _refuse(421, "this admin API does not serve that Host (DNS rebinding is "
                                "refused; add the name with --admin-host)")
        origin = request.headers.get("Origin")
        if origin is not None and not allowed.allows_origin(origin):
            return _refuse(403, "cross-origin requests are refused")
        if settings.tokens is not None and access not in (Access.OPEN, Access.PAGE):
            refused = _check_token(request, settings.tokens, access)
            if refused is not None:
                return refused
        if request.method in _WRITES and request.content_type != "application/json" and (
                request.method in _BODY_REQUIRED or request.body_exists):
            return _refuse(415, "the body must be JSON, sent as Content-Type: application/json")
        return await handler(request)

    return middleware
