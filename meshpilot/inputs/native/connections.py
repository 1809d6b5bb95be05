"""A native Service's connection settings beyond the pool limits, and its load balancer's slow
start: how long connections to the endpoints live, how many streams one carries, TCP
keepalive, Envoy's panic threshold. Istio's DestinationRule connectionPool, outlierDetection
`minHealthPercent` and loadBalancer `warmup` compile to the same model fields.

Shape (every field optional):

    connection_idle_timeout: 1h        # an HTTP connection idle this long is closed
    max_connection_duration: 30m       # an HTTP connection is closed (drained) after this long
    max_concurrent_streams: 100        # http2/grpc: streams one connection carries at once
    tcp_keepalive: {probes: 3, time: 60s, interval: 10s}
    panic_threshold: 0                 # percent healthy below which Envoy balances over all
    load_balancer:
      policy: round_robin              # or least_request: the two with a slow start
      slow_start: {window: 30s, aggression: 1.0, min_weight_percent: 10}
"""

from __future__ import annotations

from typing import Any

from meshpilot.inputs.native import fields
from meshpilot.inputs.native.fields import Fields, Invalid
from meshpilot.ir.model import SlowStart, TcpKeepalive

CONNECTION_KEYS = ("connection_idle_timeout", "max_connection_duration",
                   "max_concurrent_streams", "tcp_keepalive", "panic_threshold")
TCP_KEEPALIVE_KEYS = ("probes", "time", "interval")
SLOW_START_KEYS = ("window", "aggression", "min_weight_percent")
SLOW_START_POLICIES = ("round_robin", "least_request")  # Envoy's: the others have none

_DURATION = fields.duration()
_STREAMS = fields.integer(1, 2_147_483_647)  # Envoy's range for max_concurrent_streams
_PROBES = fields.integer(1, 1_000)
_WHOLE_SECONDS = "keepalive times are whole seconds (Envoy's unit)"


def _number(value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"expected a number from {low:g} to {high:g}, found "
                      f"{fields.describe(value)}")
    if not low <= value <= high:
        raise Invalid(f"must be from {low:g} to {high:g}, found {value}")
    return float(value)


def percent(value: Any) -> float:
    return _number(value, 0, 100)


def aggression(value: Any) -> float:
    number = _number(value, 0, 1_000)
    if number == 0:
        raise Invalid("must be above 0 (1 ramps up linearly)")
    return number


def keepalive_seconds(value: Any) -> float:
    seconds = _DURATION(value)
    if seconds != int(seconds):
        raise Invalid(f"{_WHOLE_SECONDS}: found {value}")
    if seconds > 4_294_967_295:
        raise Invalid(f"must be at most 4294967295s, found {value}")
    return seconds


def parse_connections(doc: Fields, protocol: str) -> dict[str, Any]:
    """The Service fields these keys give, to pass to `Service(...)`."""
    found: dict[str, Any] = {
        "connection_idle_timeout": doc.get("connection_idle_timeout", _DURATION),
        "max_connection_duration": doc.get("max_connection_duration", _DURATION),
        "max_concurrent_streams": doc.get("max_concurrent_streams", _STREAMS),
        "panic_threshold": doc.get("panic_threshold", percent),
        "tcp_keepalive": _tcp_keepalive(doc),
    }
    if protocol == "tcp":
        for key in ("connection_idle_timeout", "max_connection_duration",
                    "max_concurrent_streams"):
            if key in doc.value:
                doc.report(key, f'"{key}" is about HTTP connections; this Service has protocol '
                                "tcp", at_value=False)
    elif protocol == "http" and "max_concurrent_streams" in doc.value:
        doc.report("max_concurrent_streams", '"max_concurrent_streams" limits HTTP/2 '
                   "connections; this Service speaks HTTP/1.1 (protocol http2 or grpc)",
                   at_value=False)
    return found


def _tcp_keepalive(doc: Fields) -> TcpKeepalive | None:
    spec = doc.mapping("tcp_keepalive", "a mapping such as {probes: 3, time: 60s, interval: 10s}")
    if spec is None:
        return None
    spec.check_keys(TCP_KEEPALIVE_KEYS, "tcp_keepalive")
    return TcpKeepalive(probes=spec.get("probes", _PROBES),
                        time=spec.get("time", keepalive_seconds),
                        interval=spec.get("interval", keepalive_seconds))


def parse_slow_start(settings: Fields, policy: str | None) -> SlowStart | None:
    """`load_balancer.slow_start`, for the two policies Envoy ramps up new endpoints in."""
    spec = settings.mapping("slow_start", "a mapping such as {window: 30s}")
    if spec is None:
        return None
    spec.check_keys(SLOW_START_KEYS, "slow_start")
    if policy is not None and policy not in SLOW_START_POLICIES:
        settings.report("slow_start", f"slow_start applies to round_robin and least_request "
                                      f"only (this load balancer is {policy})", at_value=False)
    window = spec.get("window", _DURATION, required=True)
    ramp = spec.get("aggression", aggression)
    minimum = spec.get("min_weight_percent", percent)
    if window is None:
        return None
    return SlowStart(window=window, aggression=1.0 if ramp is None else ramp,
                     min_weight_percent=10.0 if minimum is None else minimum)
