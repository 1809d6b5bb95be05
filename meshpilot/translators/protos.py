"""Small protobuf values every translator family builds the same way."""

from __future__ import annotations

from envoy.config.core.v3.config_source_pb2 import (
    AggregatedConfigSource,
    ApiVersion,
    ConfigSource,
)
from google.protobuf.duration_pb2 import Duration


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(round(seconds * 1_000_000_000))
    return value


def ads_config_source() -> ConfigSource:
    """`{ads: {}, resource_api_version: V3}`: fetch over the same ADS stream as everything else,
    which is what lets meshpilot order a cluster before its endpoints."""
    return ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)
