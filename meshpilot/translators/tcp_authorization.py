"""Callers' authorization on a sidecar's TCP inbound: Envoy's network RBAC filter.

A connection has no path, method, header, host or token, so a policy is narrowed to what a
connection says (who calls: the peer certificate's identity and namespace; from where: the
peer address; to which port), as Istio's RBAC builder does for TCP workloads:

- an ALLOW rule with any HTTP-only condition is left out (it can never be shown to hold, so it
  allows nothing; a policy left with no rules refuses every connection);
- a DENY rule keeps its other conditions, the HTTP-only ones dropped (a rule left with none
  refuses every connection): a DENY is never weakened by what a connection cannot say.

The filters go before the TCP proxy, DENY first; each refused connection is closed before a
byte reaches the application (stats `<inbound listener>.deny.rbac.*` and `.allow.rbac.*`). The
policy is in the listener: an edit is a new listener, and connections already open keep the
decision they were accepted with (a connection is authorized once, when it opens).
"""

from __future__ import annotations

from dataclasses import replace

from envoy.config.listener.v3.listener_components_pb2 import Filter
from envoy.extensions.filters.network.rbac.v3.rbac_pb2 import RBAC as NetworkRBAC

from meshpilot.ir.model import Authorization, AuthzRule
from meshpilot.translators.httpfilters.rbac import rbac
from meshpilot.translators.protos import pack

NETWORK_RBAC = "envoy.filters.network.rbac"


def narrowed(policy: Authorization) -> Authorization:
    """`policy` as it applies to connections (see the module's docstring)."""
    if policy.action == "ALLOW":
        return replace(policy, rules=tuple(r for r in policy.rules if not _speaks_http(r)))
    return replace(policy, rules=tuple(_without_http(r) for r in policy.rules))


def filters(stat_prefix: str, allow: Authorization | None,
            deny: Authorization | None) -> list[Filter]:
    """The network RBAC filters of a TCP inbound chain (DENY first), for policies whose
    callers are SPIFFE IDs already (`mtls.authorization`); none without a policy."""
    found: list[Filter] = []
    for policy, kind in ((deny, "deny"), (allow, "allow")):
        if policy is None or policy.action == "AUDIT":
            continue
        found.append(Filter(name=NETWORK_RBAC, typed_config=pack(NetworkRBAC(
            stat_prefix=f"{stat_prefix}.{kind}.", rules=rbac(narrowed(policy)).rules))))
    return found


def _speaks_http(rule: AuthzRule) -> bool:
    return bool(rule.paths or rule.path_templates or rule.methods or rule.headers
                or rule.claims or rule.hosts or rule.request_principals
                or rule.authenticated is not None
                or any(c.http_only for c in rule.conditions)) or \
        (rule.exclude is not None and _speaks_http(rule.exclude))


def _without_http(rule: AuthzRule) -> AuthzRule:
    exclude = None if rule.exclude is None else _without_http(rule.exclude)
    if exclude is not None and exclude == AuthzRule(origin=exclude.origin):
        exclude = None  # no condition of its own left
    return replace(rule, paths=(), path_templates=(), methods=(), headers=(), claims=(),
                   hosts=(), request_principals=(), authenticated=None, exclude=exclude,
                   conditions=tuple(c for c in rule.conditions if not c.http_only))
