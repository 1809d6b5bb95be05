"""Istio's AUDIT action: requests matching an AUDIT policy's rules are marked for audit logging.

As Istio's RBAC builder writes it: an RBAC filter whose action is LOG, first of the
authorization filters (AUDIT, CUSTOM, DENY, ALLOW), so that a request refused later is marked
too. Nothing is refused: a matching request gets `access_log_hint: true` in the
`envoy.filters.http.rbac` dynamic metadata (what an access log filter or Istio's Stackdriver
plugin reads) and counts in the listener's `rbac.logged` stat (the others in
`rbac.not_logged`). The filter sits disabled in the chain; a gateway Route's (or rule's)
AUDIT policy, or a sidecar's `audit` on its inbound route configuration, switches it on.
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.extensions.filters.http.rbac.v3.rbac_pb2 import RBAC, RBACPerRoute
from google.protobuf.message import Message

from meshpilot.ir.model import Authorization, Route, Rule
from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFeature,
    HttpFilter,
    http_filter,
    securities,
    security_inputs,
)
from meshpilot.translators.httpfilters.rbac import rbac

RBAC_AUDIT = "envoy.filters.http.rbac/audit"


class AuditFeature(HttpFeature):
    route_inputs = staticmethod(security_inputs)

    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        audited = chain.audited or any(
            _audit(s.authorization) is not None for route in chain.routes
            for s in securities(route))
        return [http_filter(RBAC_AUDIT, RBAC(), disabled=True)] if audited else []

    def virtual_host_config(self, route: Route) -> Mapping[str, Message]:
        policy = _audit(route.security.authorization)
        return {} if policy is None else _on(policy, detected_client=True)

    def route_config(self, route: Route, rule: Rule, entry: str) -> Mapping[str, Message]:
        policies = rule.security.authorization
        if policies is None:
            return {}
        policy = _audit(policies)  # a rule's authorization replaces the Route's, AUDIT too
        if policy is not None:
            return _on(policy, detected_client=True)
        routes = _audit(route.security.authorization)
        return {} if routes is None else {RBAC_AUDIT: RBACPerRoute()}


FEATURE = AuditFeature()


def _audit(policies: tuple[Authorization, ...] | None) -> Authorization | None:
    return next((p for p in policies or () if p.action == "AUDIT"), None)


def _on(policy: Authorization, detected_client: bool = False) -> dict[str, Message]:
    return {RBAC_AUDIT: RBACPerRoute(rbac=rbac(policy, detected_client=detected_client))}


def inbound_config(audit: Authorization | None) -> dict[str, Message]:
    """A sidecar's inbound virtual host's config: its AUDIT rules (callers as SPIFFE IDs)."""
    return {} if audit is None else _on(audit)
