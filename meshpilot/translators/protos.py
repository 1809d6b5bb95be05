"""Small protobuf values every translator family builds the same way."""

from __future__ import annotations

from envoy.config.core.v3.config_source_pb2 import (
    AggregatedConfigSource,
    ApiVersion,
    ConfigSource,
)
from envoy.type.v3.percent_pb2 import FractionalPercent
from google.protobuf.any_pb2 import Any
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(round(seconds * 1_000_000_000))
    return value


def ads_config_source() -> ConfigSource:
    """`{ads: {}, resource_api_version: V3}`: fetch over the same ADS stream as everything else,
    which is what lets meshpilot order a cluster before its endpoints."""
    return ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)


def pack(message: Message) -> Any:
    """`message` as an `Any`, serialized deterministically (map fields in a stable order), so the
    bytes of what holds it, and so its version, do not churn."""
    packed = Any()
    packed.Pack(message, deterministic=True)
    return packed


def fractional_percent(percent: float) -> FractionalPercent:
    """A percentage as Envoy's fraction: per hundred when whole, else per million."""
    if percent == int(percent):
        return FractionalPercent(numerator=int(percent), denominator=FractionalPercent.HUNDRED)
    return FractionalPercent(numerator=round(percent * 10_000),
                             denominator=FractionalPercent.MILLION)
