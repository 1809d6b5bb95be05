"""Request decompression: a gateway listener's `decompression`, by Envoy's decompressor
filter, one per accepted algorithm.

A request whose `Content-Encoding` is one of them reaches the backend decompressed (the header
removed, the length dropped for chunked transfer). Responses are left alone: this is for
clients that compress what they send. After the request security filters (a refused request
is not inflated first) and before ext_authz, which may read the body.
"""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import RuntimeFeatureFlag
from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.extensions.compression.brotli.decompressor.v3.brotli_pb2 import Brotli
from envoy.extensions.compression.gzip.decompressor.v3.gzip_pb2 import Gzip
from envoy.extensions.compression.zstd.decompressor.v3.zstd_pb2 import Zstd
from envoy.extensions.filters.http.decompressor.v3.decompressor_pb2 import Decompressor
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import BoolValue

from meshpilot.ir.model import CompressionAlgorithm
from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFeature,
    HttpFilter,
    http_filter,
)
from meshpilot.translators.protos import pack

DECOMPRESSOR = "envoy.filters.http.decompressor"
_LIBRARIES: dict[str, tuple[str, type[Message]]] = {
    "gzip": ("envoy.compression.gzip.decompressor", Gzip),
    "brotli": ("envoy.compression.brotli.decompressor", Brotli),
    "zstd": ("envoy.compression.zstd.decompressor", Zstd)}


def filter_name(algorithm: CompressionAlgorithm) -> str:
    return f"{DECOMPRESSOR}.{algorithm}"


class DecompressorFeature(HttpFeature):
    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        if chain.decompression is None:
            return []
        return [http_filter(filter_name(algorithm), decompressor(algorithm))
                for algorithm in chain.decompression.algorithms]


FEATURE = DecompressorFeature()


def decompressor(algorithm: CompressionAlgorithm) -> Decompressor:
    library, config = _LIBRARIES[algorithm]
    off = RuntimeFeatureFlag(default_value=BoolValue(value=False),
                             runtime_key=f"meshpilot.decompression.{algorithm}.responses")
    return Decompressor(
        decompressor_library=TypedExtensionConfig(name=library, typed_config=pack(config())),
        # Requests only: a backend's compressed response goes to the client as it is.
        response_direction_config=Decompressor.ResponseDirectionConfig(
            common_config=Decompressor.CommonDirectionConfig(enabled=off)))
