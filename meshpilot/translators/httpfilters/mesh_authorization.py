"""Callers' authorization: a sidecar's `authorization`, by an RBAC filter on its inbound chain.

Callers are named by SPIFFE ID (the sidecar view turns service names into IDs, `mtls.py`) and
matched against the peer certificate's URI SAN. The filter sits in every HTTP inbound chain,
disabled; the inbound route configuration (over RDS) switches it on with the policy as its
virtual host's `RBACPerRoute`. An edit of the policy is then a new RouteConfiguration only:
the listener stays, and so do the connections already open, which see the new policy on
their next request (a new listener would leave them on the draining one, with the old
decision, for the whole drain time: issue 14, bug 2). Before the router, the only other filter
there.
"""

from __future__ import annotations

from envoy.extensions.filters.http.rbac.v3.rbac_pb2 import RBAC, RBACPerRoute
from google.protobuf.message import Message

from meshpilot.ir.model import Authorization
from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFeature,
    HttpFilter,
    http_filter,
)
from meshpilot.translators.httpfilters.rbac import rbac

RBAC_FILTER = "envoy.filters.http.rbac"
RBAC_DENY_FILTER = "envoy.filters.http.rbac/deny"  # a sidecar's `deny`: before the other


class MeshAuthorizationFeature(HttpFeature):
    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        if not chain.inbound:
            return []
        found = [http_filter(RBAC_FILTER, RBAC(), disabled=True)]
        if chain.denied:  # Istio's DENY policies: checked first
            found.insert(0, http_filter(RBAC_DENY_FILTER, RBAC(), disabled=True))
        return found


FEATURE = MeshAuthorizationFeature()


def inbound_config(callers: Authorization | None,
                   denied: Authorization | None = None) -> dict[str, Message]:
    """The inbound virtual host's per-filter config: the policies, or nothing (filters off)."""
    found: dict[str, Message] = {}
    if denied is not None:
        found[RBAC_DENY_FILTER] = RBACPerRoute(rbac=rbac(denied))
    if callers is not None:
        found[RBAC_FILTER] = RBACPerRoute(rbac=rbac(callers))
    return found
