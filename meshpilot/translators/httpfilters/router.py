"""The router: last in every chain, it sends the request where the route entry says."""

from __future__ import annotations

from envoy.extensions.filters.http.router.v3.router_pb2 import Router

from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFeature,
    HttpFilter,
    http_filter,
)

ROUTER = "envoy.filters.http.router"


class RouterFeature(HttpFeature):
    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        return [http_filter(ROUTER, Router())]


FEATURE = RouterFeature()
