"""Compression end to end (docs/policy.md, Gateway: compression, decompression): a real Envoy
gateway compresses an echo backend's JSON with brotli, zstd or gzip as the client's
Accept-Encoding asks (q-values, then the policy's preference), and decompresses request bodies
clients send compressed, so the backend sees the original bytes."""

from __future__ import annotations

import gzip
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import brotli
import pytest
import zstandard
from support import eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: shop
endpoints: ["127.0.0.1:{shop}"]
---
kind: Gateway
name: edge
listeners:
  - name: public
    port: {port}
    address: 127.0.0.1
    compression: {{brotli: true, zstd: true, gzip: true}}
    decompression: {{brotli: true, zstd: true, gzip: true}}
  - {{name: plain, port: {plain}, address: 127.0.0.1}}
---
kind: Route
name: shop
gateway: edge
rules:
  - backends: [{{service: shop}}]
"""

def decode(encoding: str, body: bytes) -> Any:
    if encoding == "zstd":  # a streamed frame may not record its size: decompress as a stream
        return json.loads(zstandard.ZstdDecompressor().decompressobj().decompress(body))
    return json.loads(brotli.decompress(body) if encoding == "br" else gzip.decompress(body))


@pytest.fixture(scope="module")
def ports(tmp_path_factory) -> Iterator[dict[str, int]]:
    work = tmp_path_factory.mktemp("compression-e2e")
    with served_policy(work, "edge.yaml", POLICY, {"shop": EchoServer("shop")},
                       free_ports=("port", "plain")) as served:
        eventually(lambda: http_get(f"http://127.0.0.1:{served.ports['port']}/")[0] == 200,
                   timeout=20, what="the gateway to serve")
        yield served.ports


@pytest.mark.parametrize("accept, chosen", [
    ("br", "br"), ("zstd", "zstd"), ("gzip", "gzip"),
    ("gzip, zstd, br", "br"),  # equals: the first compressor (brotli) if accepted,
    ("gzip, zstd", "gzip"), ("zstd, gzip", "zstd"),  # else the client's order
    ("br;q=0.5, gzip", "gzip"),  # the client's q-values first
    ("zstd;q=0.2, gzip;q=0.9, br;q=0.1", "gzip"),
])
def test_the_client_gets_the_encoding_it_prefers(ports, accept: str, chosen: str) -> None:
    status, headers, body = http_get(f"http://127.0.0.1:{ports['port']}/compress-me" + "x" * 40,
                                     {"Accept-Encoding": accept})
    assert status == 200
    assert headers.get("content-encoding") == chosen, headers
    assert "accept-encoding" in headers.get("vary", "").lower()
    seen = decode(chosen, body)
    assert seen["backend"] == "shop" and seen["path"].startswith("/compress-me")


def test_no_accept_encoding_no_compression(ports) -> None:
    status, headers, body = http_get(f"http://127.0.0.1:{ports['port']}/as-is" + "x" * 40)
    assert status == 200 and "content-encoding" not in headers
    assert json.loads(body)["backend"] == "shop"


@pytest.mark.parametrize("encoding, compress", [
    ("br", brotli.compress), ("zstd", zstandard.ZstdCompressor().compress),
    ("gzip", gzip.compress),
])
def test_request_bodies_reach_the_backend_decompressed(ports, encoding: str, compress) -> None:
    original = json.dumps({"items": list(range(2000))}).encode()
    sent = compress(original)
    assert len(sent) < len(original) // 2

    def post(port: str) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{ports[port]}/upload", data=sent, method="POST",
            headers={"Content-Encoding": encoding, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    seen = post("port")
    assert seen["body_bytes"] == len(original)  # the backend got the original bytes
    assert "content-encoding" not in seen["headers"]
    # A listener without decompression passes the body as it came.
    seen = post("plain")
    assert seen["body_bytes"] == len(sent) and seen["headers"]["content-encoding"] == encoding
