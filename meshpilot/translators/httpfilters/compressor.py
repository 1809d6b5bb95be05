"""Compression: a gateway listener's `compression` (brotli, zstd, gzip), by Envoy's compressor
filter, one per algorithm.

Only on a listener with `compression`; right before the router whose responses it compresses,
after everything that may answer with a short local reply. With several algorithms, Envoy
uses the one the client's Accept-Encoding prefers (its q-values); among equals, the first
filter (`choose_first`) if the client names it, else the client's first; the filters are in
the order brotli, zstd, gzip.
"""

from __future__ import annotations

from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.extensions.compression.brotli.compressor.v3.brotli_pb2 import Brotli
from envoy.extensions.compression.gzip.compressor.v3.gzip_pb2 import Gzip
from envoy.extensions.compression.zstd.compressor.v3.zstd_pb2 import Zstd
from envoy.extensions.filters.http.compressor.v3.compressor_pb2 import Compressor
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import UInt32Value

from meshpilot.ir.model import Compression, CompressionAlgorithm
from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFeature,
    HttpFilter,
    http_filter,
)
from meshpilot.translators.protos import pack

COMPRESSOR = "envoy.filters.http.compressor"
GZIP = "envoy.compression.gzip.compressor"
BROTLI = "envoy.compression.brotli.compressor"
ZSTD = "envoy.compression.zstd.compressor"

# (library name, its config) per algorithm.
_LIBRARIES: dict[str, tuple[str, type[Message]]] = {
    "gzip": (GZIP, Gzip), "brotli": (BROTLI, Brotli), "zstd": (ZSTD, Zstd)}


def filter_name(algorithm: CompressionAlgorithm) -> str:
    """gzip keeps the filter's plain name (the only algorithm before there were several)."""
    return COMPRESSOR if algorithm == "gzip" else f"{COMPRESSOR}.{algorithm}"


class CompressorFeature(HttpFeature):
    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        if chain.compression is None:
            return []
        several = len(chain.compression.algorithms) > 1
        return [http_filter(filter_name(algorithm),
                            compressor(chain.compression, algorithm, first=several and i == 0))
                for i, algorithm in enumerate(chain.compression.algorithms)]


FEATURE = CompressorFeature()


def compressor(compression: Compression, algorithm: CompressionAlgorithm = "gzip", *,
               first: bool = False) -> Compressor:
    """`algorithm` for responses whose client accepts it (Accept-Encoding), of the listed
    content types (Envoy's default list if none), at least `min_content_length` bytes long."""
    common = Compressor.CommonDirectionConfig(content_type=list(compression.content_types))
    if compression.min_content_length is not None:
        common.min_content_length.CopyFrom(UInt32Value(value=compression.min_content_length))
    library, config = _LIBRARIES[algorithm]
    return Compressor(
        compressor_library=TypedExtensionConfig(name=library, typed_config=pack(config())),
        response_direction_config=Compressor.ResponseDirectionConfig(common_config=common),
        choose_first=first)
