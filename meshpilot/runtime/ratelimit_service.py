"""meshpilot's own rate limit service: Envoy's `envoy.service.ratelimit.v3.RateLimitService`,
in process, for the policy's shared rate limits (translators/httpfilters/ratelimit.py).

`meshpilot serve --rate-limit-address HOST:PORT` serves it on a gRPC port of its own; a policy
Service with `protocol: grpc` and that address as its endpoint is what `rate_limit.shared`
names. Every Envoy asks it about each request that a shared limit covers, with the limit's id
and the client (address, header value or Host); it counts per (limit, client) in fixed windows
of the limit's `per`, and answers OVER_LIMIT once a window's count passes `requests`, so the
limit holds across every Envoy of the fleet together.

It knows the limits from the newest valid policy (`update`, called after every load); a
descriptor naming no limit it knows (a policy being reloaded, another domain) is answered OK.
It adds the x-ratelimit-limit, -remaining and -reset headers (unless the limit turns them
off) and the limit's `limited_headers` to limited answers. In shadow mode it counts and logs,
and answers OK. Counters live in memory (one process: replicas each count their own share;
run one, or point Envoys at one replica's). At most MAX_COUNTERS windows are kept; the oldest
go first.

The decision is `Counters.decide`: pure but for its dict, the clock a parameter.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import HeaderValue
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from meshpilot.ir.model import Model, RateLimit
from meshpilot.translators.httpfilters.ratelimit import (
    ADDRESS_KEY,
    CLIENT_KEY,
    DOMAIN,
    LIMIT_KEY,
    shared_limits,
)

log = logging.getLogger("meshpilot.ratelimit")

MAX_COUNTERS = 100_000
OK, OVER_LIMIT = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT


@dataclass(frozen=True, slots=True)
class Decision:
    over: bool  # the request is refused (never in shadow mode)
    headers: tuple[tuple[str, str], ...]  # for the answer


class Counters:
    """Fixed-window counts per (limit id, client), bounded in number."""

    def __init__(self, limits: Mapping[str, RateLimit] | None = None,
                 max_counters: int = MAX_COUNTERS):
        self.limits: Mapping[str, RateLimit] = dict(limits or {})
        self.max_counters = max_counters
        self._counts: OrderedDict[tuple[str, str, int], int] = OrderedDict()
        self._lock = threading.Lock()
        self.shadowed = 0  # requests a shadow limit would have refused

    def update(self, limits: Mapping[str, RateLimit]) -> None:
        with self._lock:
            self.limits = dict(limits)

    def decide(self, descriptors: list[dict[str, str]], hits: int, now: float) -> Decision:
        """What to answer a request carrying `descriptors` (each {key: value}) at `now`: over
        the limit if any descriptor's window is full. Headers: those of the tightest limit."""
        results: list[tuple[bool, float, tuple[tuple[str, str], ...]]] = []
        with self._lock:
            for entries in descriptors:
                identifier = entries.get(LIMIT_KEY)
                limit = self.limits.get(identifier or "")
                if limit is None or identifier is None:
                    continue
                client = entries.get(ADDRESS_KEY) or entries.get(CLIENT_KEY) or ""
                window = int(now // limit.per)
                key = (identifier, client, window)
                count = self._counts.pop(key, 0) + max(1, hits)
                self._counts[key] = count  # most recently used last
                while len(self._counts) > self.max_counters:
                    self._counts.popitem(last=False)
                exceeded = count > limit.requests
                if limit.shadow:
                    if exceeded:
                        self.shadowed += 1
                        log.info("shadow rate limit %s: client %r over %d per %gs", identifier,
                                 client, limit.requests, limit.per)
                    continue
                remaining = max(0, limit.requests - count)
                reset = max(1, math.ceil((window + 1) * limit.per - now))
                found: list[tuple[str, str]] = []
                if limit.ratelimit_headers:
                    found += [("x-ratelimit-limit", str(limit.requests)),
                              ("x-ratelimit-remaining", str(remaining)),
                              ("x-ratelimit-reset", str(reset))]
                if exceeded:
                    found += list(limit.limited_headers)
                results.append((exceeded, remaining / limit.requests, tuple(found)))
        over = any(refused for refused, _, _ in results)
        # The headers of the limit that refused, else of the one closest to refusing.
        chosen = min(results, key=lambda r: (not r[0], r[1]), default=None)
        headers = chosen[2] if chosen is not None else ()
        return Decision(over=over, headers=headers)


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    """`model_of()`: the newest valid policy (None before one); its shared limits are taken
    whenever it is another object than the last one seen."""

    def __init__(self, counters: Counters, model_of: Callable[[], Model | None] = lambda: None,
                 clock: Callable[[], float] = time.time):
        self.counters = counters
        self.model_of = model_of
        self.clock = clock
        self._model: Model | None = None

    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
        model = self.model_of()
        if model is not None and model is not self._model:
            self._model = model
            self.counters.update(shared_limits(model))
        if request.domain != DOMAIN:
            return rls_pb2.RateLimitResponse(overall_code=OK)
        descriptors = [{entry.key: entry.value for entry in descriptor.entries}
                       for descriptor in request.descriptors]
        decision = self.counters.decide(descriptors, request.hits_addend, self.clock())
        response = rls_pb2.RateLimitResponse(overall_code=OVER_LIMIT if decision.over else OK)
        for _ in request.descriptors:
            response.statuses.add(code=OVER_LIMIT if decision.over else OK)
        for name, value in decision.headers:
            response.response_headers_to_add.append(HeaderValue(key=name, value=value))
        return response


class RateLimitServer:
    """The service on its own gRPC port (plaintext: bind it where only the Envoys reach it)."""

    def __init__(self, address: str, counters: Counters,
                 model_of: Callable[[], Model | None] = lambda: None):
        self.address = address
        self.counters = counters
        self.model_of = model_of
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self._server = grpc.aio.server()
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(
            RateLimitServicer(self.counters, self.model_of), self._server)
        self.port = self._server.add_insecure_port(self.address)
        await self._server.start()
        log.info("rate limit service on %s (%d shared limit(s))",
                 self.address.rsplit(":", 1)[0] + f":{self.port}", len(self.counters.limits))
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0.2)
