"""Callers' authorization: a sidecar's `authorization`, by an RBAC filter on its inbound chain.

Callers are named by SPIFFE ID (the sidecar view turns service names into IDs, `mtls.py`) and
matched against the peer certificate's URI SAN; enforced (not disabled), since the inbound
listener has one route only. Before the router, the only other filter there.
"""

from __future__ import annotations

from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFeature,
    HttpFilter,
    http_filter,
)
from meshpilot.translators.httpfilters.rbac import rbac

RBAC_FILTER = "envoy.filters.http.rbac"


class MeshAuthorizationFeature(HttpFeature):
    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        return [] if chain.callers is None else [http_filter(RBAC_FILTER, rbac(chain.callers))]


FEATURE = MeshAuthorizationFeature()
