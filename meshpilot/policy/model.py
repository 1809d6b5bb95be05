"""The model: the immutable intermediate representation every input format is loaded into.

Translators read only this. It holds no I/O handles and is never mutated after loading, so one
model can be shared by every view and every thread. Every value here is already validated and
normalized (durations in seconds, addresses split, defaults filled in): translators never
re-check user input. Positions are kept so that later stages (Envoy's NACKs) can point back at
the file and line a resource came from.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from google.protobuf.message import Message

from meshpilot.errors import Position

Labels = tuple[tuple[str, str], ...]  # sorted (key, value) pairs: hashable and deterministic
Protocol = Literal["http", "http2", "grpc", "tcp"]
LoadBalancer = Literal["round_robin", "least_request", "random", "ring_hash", "maglev"]


@dataclass(frozen=True, slots=True)
class RawResource:
    """An Envoy resource written by hand in a `kind: EnvoyResources` document.

    `message` is a parsed, schema-checked protobuf; treat it as read-only. `views` restricts which
    node views receive it (None: every view).
    """

    type_url: str
    name: str
    message: Message
    position: Position
    document: str  # the EnvoyResources document's name
    views: frozenset[str] | None = None


# ---- Service ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str  # an IP literal, or a DNS name (the service's endpoints are then resolved by Envoy)
    port: int
    labels: Labels = ()
    weight: int | None = None  # load-balancing weight, 1..128 (Envoy's range)

    @property
    def is_dns(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return True
        return False


@dataclass(frozen=True, slots=True)
class HealthCheck:
    kind: Literal["http", "tcp", "grpc"]
    path: str | None = None  # http
    interval: float = 5.0
    timeout: float = 1.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 1
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 201),)  # [start, end) ranges, http


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx: int | None = None
    consecutive_gateway_errors: int | None = None
    interval: float | None = None
    base_ejection_time: float | None = None
    max_ejection_percent: int | None = None


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    position: Position
    protocol: Protocol = "http"
    endpoints: tuple[Endpoint, ...] = ()
    subsets: tuple[tuple[str, Labels], ...] = ()  # (subset name, label selector), as written
    load_balancer: LoadBalancer = "round_robin"
    connect_timeout: float = 1.0
    health_check: HealthCheck | None = None
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None

    def subset(self, name: str) -> Labels | None:
        return next((selector for n, selector in self.subsets if n == name), None)

    def endpoints_of(self, subset: str | None) -> tuple[Endpoint, ...]:
        """The endpoints of the whole service, or of one subset (all selector labels match)."""
        if subset is None:
            return self.endpoints
        selector = self.subset(subset) or ()
        return tuple(e for e in self.endpoints if all(kv in e.labels for kv in selector))


# ---- Gateway ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayListener:
    name: str
    port: int
    address: str = "0.0.0.0"
    protocol: Literal["http"] = "http"


@dataclass(frozen=True, slots=True)
class Gateway:
    name: str
    position: Position
    listeners: tuple[GatewayListener, ...] = ()


# ---- Route --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StringMatch:
    """How one value (a path, a header, a query parameter) is matched."""

    kind: Literal["exact", "prefix", "regex", "present", "absent"]
    value: str = ""  # empty for present/absent


@dataclass(frozen=True, slots=True)
class Match:
    path: StringMatch | None = None  # exact | prefix | regex; None matches every path
    methods: tuple[str, ...] = ()  # upper case; empty matches every method
    headers: tuple[tuple[str, StringMatch], ...] = ()  # (lower-case name, match), all must hold
    query: tuple[tuple[str, StringMatch], ...] = ()  # (name, match), all must hold


@dataclass(frozen=True, slots=True)
class Backend:
    service: str
    subset: str | None = None
    weight: int = 1


@dataclass(frozen=True, slots=True)
class PathRewrite:
    prefix: str | None = None  # replace the matched prefix with this
    regex: str | None = None  # or: replace what this regex matches ...
    substitution: str = ""  # ... with this (\1 style groups)


@dataclass(frozen=True, slots=True)
class Redirect:
    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None  # replaces the whole path
    prefix: str | None = None  # replaces the matched prefix
    status: int = 302  # 301, 302, 303, 307, 308


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int
    body: str = ""


@dataclass(frozen=True, slots=True)
class HeaderOps:
    add: tuple[tuple[str, str], ...] = ()  # appended (a header may then have several values)
    set: tuple[tuple[str, str], ...] = ()  # replaces any value
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Retries:
    attempts: int
    on: tuple[str, ...] = ("5xx", "reset", "connect-failure")  # Envoy's retry_on names
    per_try_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a Route: first match wins, in the order written. Exactly one of
    backends, redirect or direct_response says what happens to a matching request."""

    position: Position
    matches: tuple[Match, ...] = (Match(),)  # any of them (a request matching one is taken)
    backends: tuple[Backend, ...] = ()
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    rewrite_path: PathRewrite | None = None
    rewrite_host: str | None = None
    request_headers: HeaderOps = field(default_factory=HeaderOps)
    response_headers: HeaderOps = field(default_factory=HeaderOps)
    timeout: float | None = None  # None: Envoy's default (15 s); 0 disables
    retries: Retries | None = None


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    position: Position
    gateway: str
    hosts: tuple[str, ...] = ("*",)  # exact names and "*.suffix" wildcards; "*" is every host
    rules: tuple[Rule, ...] = ()
    listeners: tuple[str, ...] = ()  # attach to these listeners of the gateway; empty: all


# ---- the whole model ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Model:
    raw: tuple[RawResource, ...] = ()
    services: tuple[Service, ...] = ()  # sorted by name
    gateways: tuple[Gateway, ...] = ()  # sorted by name
    routes: tuple[Route, ...] = ()  # sorted by name
    files: tuple[str, ...] = ()
    _services: dict[str, Service] = field(default_factory=dict, compare=False, repr=False)
    _gateways: dict[str, Gateway] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Lookups by name are on every translator's path: index once (10k services).
        self._services.update((s.name, s) for s in self.services)
        self._gateways.update((g.name, g) for g in self.gateways)

    def service(self, name: str) -> Service | None:
        return self._services.get(name)

    def gateway(self, name: str) -> Gateway | None:
        return self._gateways.get(name)
