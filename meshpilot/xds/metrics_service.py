"""Envoy's metrics service, served on the xDS port: `envoy.service.metrics.v3.MetricsService/
StreamMetrics`, the other end of Envoy's `envoy.stat_sinks.metrics_service` stats sink (which
`meshpilot bootstrap` configures).

Each Envoy keeps one client-streaming call open and sends its stats on every flush
(`stats_flush_interval`); the first message names the node. A stream is authenticated exactly
like an xDS stream, with the same `authorize` hook (a node token for the node's view in the
call's `authorization` metadata, or a client certificate proving it): a stranger cannot feed
false error rates into a rollout's verdict. The node a stream names is fixed by its first
message; an identifier in a later message is ignored.

This module only moves messages: what to keep of them is the receiver's (runtime/envoy_metrics.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from meshpilot.xds.metrics_protos import (
    METHOD,
    SERVICE,
    StreamMetricsMessage,
    StreamMetricsResponse,
)
from meshpilot.xds.server import Authorize, ViewOf, view_of_node_cluster

log = logging.getLogger("meshpilot.xds.metrics")

# (stream id, node, view, message, now): one flush of one Envoy
Receive = Callable[[int, Any, str, Any, float], None]


class MetricsService:
    def __init__(self, receive: Receive, *, view_of: ViewOf = view_of_node_cluster,
                 authorize: Authorize | None = None,
                 on_closed: Callable[[int], None] | None = None):
        """`receive` is called on the event loop with every flush of an authenticated stream;
        `on_closed(stream id)` when the stream ends. `authorize` as `XdsServer`'s: None lets
        the stream through, a string refuses it (PERMISSION_DENIED)."""
        self.receive = receive
        self.view_of = view_of
        self.authorize = authorize
        self.on_closed = on_closed
        self.streams = 0  # open now
        self.refused = 0
        self._ids = 0

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            METHOD: grpc.stream_unary_rpc_method_handler(
                self._stream, request_deserializer=StreamMetricsMessage.FromString,
                response_serializer=lambda message: message.SerializeToString()),
        })

    async def _stream(self, requests: AsyncIterator[Any],
                      context: grpc.aio.ServicerContext) -> Any:
        self._ids += 1
        stream_id = self._ids
        node: Any = None
        view = ""
        self.streams += 1
        try:
            async for message in requests:
                if node is None:
                    if not message.HasField("identifier") or \
                            not message.identifier.HasField("node"):
                        self.refused += 1
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                            "the first message must carry identifier.node")
                    node = message.identifier.node
                    view = self.view_of(node)
                    refusal = (self.authorize(node, view, context)
                               if self.authorize is not None else None)
                    if refusal is not None:
                        self.refused += 1
                        log.warning("metrics stream from %s refused: node %r: %s",
                                    context.peer(), node.id, refusal)
                        await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
                    log.info("metrics stream from %s: node %r view %r", context.peer(),
                             node.id, view)
                self.receive(stream_id, node, view, message, time.time())
        finally:
            self.streams -= 1
            if node is not None and self.on_closed is not None:
                self.on_closed(stream_id)
        return StreamMetricsResponse()
