"""Compression: a gateway listener's `compression` (gzip), by Envoy's compressor filter.

Only on a listener with `compression`; right before the router whose responses it compresses,
after everything that may answer with a short local reply.
"""

from __future__ import annotations

from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.extensions.compression.gzip.compressor.v3.gzip_pb2 import Gzip
from envoy.extensions.filters.http.compressor.v3.compressor_pb2 import Compressor
from google.protobuf.wrappers_pb2 import UInt32Value

from meshpilot.ir.model import Compression
from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFeature,
    HttpFilter,
    http_filter,
)
from meshpilot.translators.protos import pack

COMPRESSOR = "envoy.filters.http.compressor"
GZIP = "envoy.compression.gzip.compressor"


class CompressorFeature(HttpFeature):
    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        if chain.compression is None:
            return []
        return [http_filter(COMPRESSOR, compressor(chain.compression))]


FEATURE = CompressorFeature()


def compressor(compression: Compression) -> Compressor:
    """gzip for responses whose client accepts it (Accept-Encoding), of the listed content
    types (Envoy's default list if none), at least `min_content_length` bytes long."""
    common = Compressor.CommonDirectionConfig(content_type=list(compression.content_types))
    if compression.min_content_length is not None:
        common.min_content_length.CopyFrom(UInt32Value(value=compression.min_content_length))
    return Compressor(
        compressor_library=TypedExtensionConfig(name=GZIP, typed_config=pack(Gzip())),
        response_direction_config=Compressor.ResponseDirectionConfig(common_config=common))
