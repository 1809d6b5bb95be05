"""The Client Status Discovery Service: what each connected Envoy was sent and how it answered.

For every connected proxy matching the request's node matchers, one `ClientConfig` with a
`GenericXdsConfig` per resource the proxy holds by our account: its version, its contents (unless
`exclude_resource_contents`; every secret value replaced by its fingerprint, xds/redact.py),
whether it was ACKed or NACKed (with Envoy's message) and whether it matches the newest snapshot
(SYNCED) or not yet (STALE).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.admin.v3 import config_dump_shared_pb2 as dump
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from meshpilot.xds.redact import redacted
from meshpilot.xds.render import message_of
from meshpilot.xds.resources import Resource
from meshpilot.xds.status import Connection, ProxyRegistry


def _string_matches(matcher: Any, value: str) -> bool:
    kind = matcher.WhichOneof("match_pattern")
    if kind is None:
        return True
    subject = value.lower() if matcher.ignore_case else value

    def norm(text: str) -> str:
        return text.lower() if matcher.ignore_case else text

    if kind == "exact":
        return subject == norm(matcher.exact)
    if kind == "prefix":
        return subject.startswith(norm(matcher.prefix))
    if kind == "suffix":
        return subject.endswith(norm(matcher.suffix))
    if kind == "contains":
        return norm(matcher.contains) in subject
    if kind == "safe_regex":
        return re.fullmatch(matcher.safe_regex.regex, value) is not None
    return False


def _selected(request: Any, conn: Connection) -> bool:
    if not request.node_matchers:
        return True
    return any(not m.HasField("node_id") or _string_matches(m.node_id, conn.node_id)
               for m in request.node_matchers)


def client_config(conn: Connection, *, include_contents: bool = True) -> Any:
    stream = conn.stream
    config = csds_pb2.ClientConfig(node=stream.node)
    snapshot = stream.snapshot
    for type_url, state in stream.types.items():
        newest = stream.served(type_url) if snapshot else None
        rejection = state.rejection
        nacked = rejection is not None and rejection.version == state.sent_version
        # Resources Envoy refused and is held back from: it keeps (and is sent) its previous
        # version, shown NACKED with the refused version and Envoy's message.
        held_back = {held.name: held for held in state.held_now}
        for name, held in state.known.items():
            entry = config.generic_xds_configs.add(type_url=type_url, name=name,
                                                   version_info=held.version)
            # Contents with every secret value (keys, API keys, password hashes, JWT keys)
            # replaced by its fingerprint: a change still shows, the value never leaves.
            if include_contents and isinstance(held, Resource):
                entry.xds_config.Pack(redacted(message_of(held)))
            refused = held_back.pop(name, None)
            if refused is not None:
                _refused(entry, refused.message, refused.version)
                continue
            if state.in_flight:
                entry.client_status = dump.REQUESTED
            elif nacked:
                _refused(entry, rejection.message, rejection.version)  # type: ignore[union-attr]
                continue
            else:
                entry.client_status = dump.ACKED
            fresh = newest.get(name) if newest is not None else None
            entry.config_status = (csds_pb2.SYNCED if fresh is not None
                                   and fresh.version == held.version else csds_pb2.STALE)
        for name, refused in held_back.items():  # refused, and never held by the client
            entry = config.generic_xds_configs.add(type_url=type_url, name=name)
            _refused(entry, refused.message, refused.version)
    return config


def _refused(entry: Any, message: str, version: str) -> None:
    entry.client_status = dump.NACKED
    entry.error_state.details = message
    entry.error_state.version_info = version
    entry.config_status = csds_pb2.ERROR


class ClientStatusService(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):
    def __init__(self, registry: ProxyRegistry,
                 authorize: Callable[[grpc.aio.ServicerContext], str | None] | None = None):
        """`authorize(context)`: None lets the call through, a string refuses it
        (UNAUTHENTICATED with that text); None: everyone may call (`--insecure-xds`)."""
        self.registry = registry
        self.authorize = authorize

    async def _check(self, context: grpc.aio.ServicerContext) -> None:
        refusal = self.authorize(context) if self.authorize is not None else None
        if refusal is not None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)

    def _respond(self, request: Any) -> Any:
        response = csds_pb2.ClientStatusResponse()
        for conn in self.registry.connections():
            if conn.stream.node is not None and _selected(request, conn):
                response.config.append(client_config(
                    conn, include_contents=not request.exclude_resource_contents))
        return response

    async def FetchClientStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._check(context)
        return self._respond(request)

    async def StreamClientStatus(self, request_iterator: AsyncIterator[Any],
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await self._check(context)
        async for request in request_iterator:
            yield self._respond(request)


def add_csds(server: grpc.aio.Server, registry: ProxyRegistry,
             authorize: Callable[[grpc.aio.ServicerContext], str | None] | None = None) -> None:
    csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(
        ClientStatusService(registry, authorize), server)
