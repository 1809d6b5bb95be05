"""Listener-level Gateway options: how they load, what is refused (with its position), and the
Envoy fields they become. End-to-end proofs are in tests/e2e/test_listeners.py and test_grpc.py."""

from __future__ import annotations

import textwrap

import pytest
from envoy.extensions.filters.http.compressor.v3.compressor_pb2 import Compressor
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy

from meshpilot.base import types
from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import AccessLog, Compression, GatewayListener
from meshpilot.translators import Translation, listeners

SERVICES = """
kind: Service
name: api
endpoints: [127.0.0.1:9081]
---
kind: Service
name: db
protocol: tcp
endpoints: [127.0.0.1:5432]
---
"""


def load(gateway: str, extra: str = ""):
    return load_policy_text(SERVICES + textwrap.dedent(gateway) + extra)


def problems(gateway: str, extra: str = "") -> list[str]:
    with pytest.raises(PolicyError) as raised:
        load(gateway, extra)
    return [str(issue) for issue in raised.value.issues]


def test_options_load_with_the_gateway_access_log_as_default() -> None:
    model = load("""
        kind: Gateway
        name: edge
        access_log: {path: /dev/stdout}
        listeners:
          - name: http
            port: 8080
            trust_request_id: true
            request_id_in_response: true
            compression: {gzip: true, min_content_length: 10, content_types: [Application/JSON]}
            websocket: true
          - {name: quiet, port: 8081, access_log: {path: /tmp/x.log, format: text}}
          - {name: raw, port: 5432, protocol: tcp, service: db}
        """)
    http, quiet, raw = model.gateway("edge").listeners
    assert http == GatewayListener("http", 8080, access_log=AccessLog("/dev/stdout"),
                                   trust_request_id=True, request_id_in_response=True,
                                   compression=Compression(10, ("application/json",)),
                                   websocket=True)
    assert quiet.access_log == AccessLog("/tmp/x.log", "text")
    assert raw == GatewayListener("raw", 5432, protocol="tcp", service="db",
                                  access_log=AccessLog("/dev/stdout"))


def test_refused_shapes_point_at_their_field() -> None:
    found = problems("""
        kind: Gateway
        name: edge
        listeners:
          - {name: a, port: 1, protocol: tcp, service: db, compression: {gzip: true}}
          - {name: b, port: 2, protocol: tcp}
          - {name: c, port: 3, service: db}
          - {name: d, port: 4, access_log: {path: logs/x.log, format: yaml}}
          - {name: e, port: 5, compression: {min_content_length: -1, content_types: [json]}}
          - {name: f, port: 6, websocket: "yes", trust_request_id: 1}
        """)
    assert found == [
        'policy.yaml:15:52: Gateway edge: listeners[0].compression: "compression" is an HTTP '
        "option; this listener has protocol tcp",
        'policy.yaml:16:5: Gateway edge: listeners[1].service: missing "service"',
        'policy.yaml:17:24: Gateway edge: listeners[2].service: "service" is for protocol tcp '
        "listeners; an HTTP listener serves the Routes attached to it",
        'policy.yaml:18:43: Gateway edge: listeners[3].access_log.path: an access log path must '
        'be absolute (start with "/"), found "logs/x.log"',
        'policy.yaml:18:63: Gateway edge: listeners[3].access_log.format: unknown value "yaml"; '
        "expected one of: json, text",
        "policy.yaml:19:24: Gateway edge: listeners[4].compression: compression names no "
        "algorithm: set one or more of brotli, zstd or gzip to true (it compresses responses "
        "with them)",
        "policy.yaml:19:58: Gateway edge: listeners[4].compression.min_content_length: must be "
        "from 0 to 4294967295, found -1",
        'policy.yaml:19:78: Gateway edge: listeners[4].compression.content_types[0]: invalid '
        'content type "json": expected type/subtype, e.g. application/json',
        "policy.yaml:20:35: Gateway edge: listeners[5].websocket: expected true or false, "
        "found a string",
        "policy.yaml:20:60: Gateway edge: listeners[5].trust_request_id: expected true or "
        "false, found a number",
    ]


def test_references_of_tcp_listeners_and_routes() -> None:
    found = problems("""
        kind: Gateway
        name: edge
        listeners:
          - {name: http, port: 8080}
          - {name: raw, port: 5432, protocol: tcp, service: api}
          - {name: raw2, port: 5433, protocol: tcp, service: dbb}
        ---
        kind: Gateway
        name: tcp-only
        listeners: [{name: raw, port: 6000, protocol: tcp, service: db}]
        ---
        kind: Route
        name: r
        gateway: edge
        listeners: [http, raw]
        rules: [{backends: [api]}]
        ---
        kind: Route
        name: r2
        gateway: tcp-only
        rules: [{backends: [api]}]
        """)
    assert found == [
        "policy.yaml:16:44: Gateway edge: listeners[1].service: Service api speaks protocol "
        "http; a tcp listener needs a Service with protocol tcp",
        'policy.yaml:17:45: Gateway edge: listeners[2].service: no Service named "dbb" (did you '
        'mean "db"?)',
        'policy.yaml:26:19: Route r: listeners[1]: listener "raw" of Gateway edge has protocol '
        "tcp; a Route attaches to HTTP listeners only",
        "policy.yaml:31:1: Route r2: gateway: Gateway tcp-only has no HTTP listener to attach "
        "to (its listeners have protocol tcp)",
    ]


def test_translation_of_http_options_and_the_tcp_proxy() -> None:
    model = load("""
        kind: Gateway
        name: edge
        listeners:
          - name: http
            port: 8080
            trust_request_id: true
            request_id_in_response: true
            access_log: {path: /dev/stdout}
            compression: {gzip: true, min_content_length: 100}
            websocket: true
          - {name: raw, port: 5432, protocol: tcp, service: db}
        """, """
---
kind: Route
name: r
gateway: edge
rules: [{backends: [api]}]
""")
    gateway = model.gateway("edge")
    http = listeners.listener(gateway, gateway.listeners[0])
    manager = hcm.HttpConnectionManager()
    assert http.filter_chains[0].filters[0].typed_config.Unpack(manager)
    assert manager.preserve_external_request_id
    assert manager.always_set_request_id_in_response
    assert not manager.HasField("generate_request_id")  # Envoy's default: generate
    assert [u.upgrade_type for u in manager.upgrade_configs] == ["websocket"]
    assert [f.name for f in manager.http_filters] == [
        "envoy.filters.http.cors", "envoy.filters.http.fault", "envoy.filters.http.compressor",
        "envoy.filters.http.router"]
    compressor = Compressor()
    assert manager.http_filters[2].typed_config.Unpack(compressor)
    assert compressor.compressor_library.name == "envoy.compression.gzip.compressor"
    assert compressor.response_direction_config.common_config.min_content_length.value == 100
    (log,) = manager.access_log
    assert log.name == "envoy.access_loggers.file"

    raw = listeners.listener(gateway, gateway.listeners[1])
    (network_filter,) = raw.filter_chains[0].filters
    assert network_filter.name == "envoy.filters.network.tcp_proxy"
    proxy = TcpProxy()
    assert network_filter.typed_config.Unpack(proxy)
    assert (proxy.cluster, proxy.stat_prefix) == ("db", "edge/raw")

    snapshot = Translation(model).snapshot("edge")
    assert sorted(snapshot.get(types.CLUSTER)) == ["api", "db"]
    assert sorted(snapshot.get(types.ROUTE)) == ["edge/http"]  # none for the tcp listener
