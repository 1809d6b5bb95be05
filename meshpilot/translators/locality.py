"""A callee's endpoints as one calling sidecar sees them: priorities and shares decided by the
caller's locality and labels (`Service.locality_lb`, Istio's `localityLbSetting`).

Istio's Pilot rewrites each proxy's ClusterLoadAssignments for where that proxy runs
(pilot/pkg/networking/core/loadbalancer: `applyLocalityWeights`, `applyFailoverPriorities`,
`applyLocalityFailover`); this module does the same to the endpoints of one cluster, before
`endpoints.load_assignment` encodes them, for one caller:

- `distribute`: the first rule whose `from` matches the caller gives each `to` pattern's
  endpoints its weight (a locality's weight is the pattern's weight times the locality's share
  of the endpoints the pattern covers, rounded up, as Istio's); endpoints no pattern covers get
  nothing (they are left out). No rule for the caller: the endpoints as written.
- failover: priority 0 for the caller's subzone, 1 its zone, 2 its region, 3 other regions;
  with a `failover` entry from the caller's region, 3 for the region it names and 4 for the
  rest. With `failover_priority`, endpoints are first ranked by how many of those labels, in
  order, equal the caller's (all of them first), the locality ranks inside (only when
  `failover` is written too, as Istio). An endpoint's own `priority` stays the outermost rank.
  Ranks are then numbered 0, 1, 2 ... without gaps (Envoy's priorities).

Pure and deterministic; which caller a view is, is the Translation's (`caller_of`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from math import ceil
from typing import Protocol

from meshpilot.ir.model import (
    TOPOLOGY_LABELS,
    Endpoint,
    Gateway,
    Labels,
    Locality,
    LocalityLb,
    Model,
    Service,
)
from meshpilot.xds.resources import Resource


@dataclass(frozen=True, slots=True)
class Caller:
    """A calling sidecar (or a gateway that says where it runs) as its callees' locality
    balancing sees it."""

    locality: Locality = Locality()  # noqa: RUF009 (frozen)
    labels: Labels = ()


class ClusterResources(Protocol):
    """The Translation's clusters: (service, subset), for a caller (`caller`) as its locality
    sees them."""

    def __call__(self, service: str, subset: str | None,
                 caller: Caller | None = None) -> tuple[Resource, ...]: ...


def caller_of(service: Service | None) -> Caller | None:
    """The caller a view is: a sidecar's Service (an empty locality when it says none, as
    Istio reads a proxy without one); None for any other view (a gateway's)."""
    if service is None or service.sidecar is None:
        return None
    sidecar = service.sidecar
    return Caller(sidecar.locality or Locality(), sidecar.labels)


def gateway_caller(gateway: Gateway | None) -> Caller | None:
    """The caller a gateway's view is when it says where it runs; None (the endpoints as
    written) when it does not: a gateway is not a mesh proxy, so no empty locality either."""
    if gateway is None or gateway.locality is None:
        return None
    return Caller(gateway.locality)


def view_caller(model: Model, view: str) -> Caller | None:
    """The caller of a view, a sidecar's or a gateway's."""
    service = model.service(view)
    return caller_of(service) if service is not None else gateway_caller(model.gateway(view))


def relevant(caller: Caller, policy: LocalityLb) -> Caller:
    """What of `caller` `policy` reads: its locality, and only the labels `failover_priority`
    names (callers alike share one cluster build: `Upstreams` keys by this)."""
    keys = set(policy.failover_priority) if not policy.distribute else set()
    labels = tuple((k, v) for k, v in caller.labels if k in keys)
    return caller if labels == caller.labels else Caller(caller.locality, labels)


def localized(endpoints: Iterable[Endpoint], policy: LocalityLb, caller: Caller
              ) -> tuple[tuple[Endpoint, ...], dict[Locality, int] | None]:
    """One cluster's endpoints for `caller`, and each locality's weight when `distribute`
    applies (None: no weights, Envoy balances within a priority as one set)."""
    members = tuple(endpoints)
    if policy.distribute:
        for source, targets in policy.distribute:
            if matches(caller.locality, source):
                return _distributed(members, targets)
        return members, None
    return _prioritized(members, policy, caller), None


def matches(locality: Locality, pattern: str) -> bool:
    """Istio's LocalityMatch: `region/zone/subzone`, each part `*` or missing for any."""
    region, zone, sub_zone = [*pattern.split("/"), "", ""][:3]
    return (region == "*" or region == locality.region) \
        and (zone in ("*", "") or zone == locality.zone) \
        and (sub_zone in ("*", "") or sub_zone == locality.sub_zone)


def _distributed(members: tuple[Endpoint, ...], targets: tuple[tuple[str, int], ...]
                 ) -> tuple[tuple[Endpoint, ...], dict[Locality, int]]:
    # A locality's own weight is the sum of its endpoints' weights (Istio's EDS builder).
    own: dict[Locality, int] = {}
    for endpoint in members:
        where = Locality.of(endpoint)
        own[where] = own.get(where, 0) + (endpoint.weight or 1)
    weights: dict[Locality, int] = {}
    for pattern, weight in targets:  # in the order written: the first pattern covering wins
        covered = [where for where in sorted(own) if where not in weights
                   and matches(where, pattern)]
        total = sum(own[where] for where in covered)
        for where in covered:
            share = ceil(own[where] * weight / total) if total else 0
            weights[where] = share
    kept = {where for where, weight in weights.items() if weight > 0}
    return (tuple(e for e in members if Locality.of(e) in kept),
            {where: weights[where] for where in sorted(kept)})


def _prioritized(members: tuple[Endpoint, ...], policy: LocalityLb, caller: Caller
                 ) -> tuple[Endpoint, ...]:
    by_locality = not policy.failover_priority or bool(policy.failover)
    ranks = {id(e): (e.priority, _label_rank(e, policy.failover_priority, caller),
                     _locality_rank(e, policy, caller) if by_locality else 0)
             for e in members}
    numbered = {rank: index for index, rank in enumerate(sorted(set(ranks.values())))}
    return tuple(replace(e, priority=numbered[ranks[id(e)]]) for e in members)


def _label_rank(endpoint: Endpoint, keys: tuple[str, ...], caller: Caller) -> int:
    """How many of `keys`, from the first, the endpoint's labels do not share with the
    caller's: 0 when all match (Istio's failoverPriority)."""
    endpoint_labels, caller_labels = dict(endpoint.labels), dict(caller.labels)
    endpoint_where, caller_where = Locality.of(endpoint), caller.locality
    matched = 0
    for key in keys:
        mine = _label(caller_labels, caller_where, key)
        theirs = _label(endpoint_labels, endpoint_where, key)
        if mine is None or mine != theirs:
            break
        matched += 1
    return len(keys) - matched


def _label(labels: dict[str, str], where: Locality, key: str) -> str | None:
    if key in labels:
        return labels[key]
    part = TOPOLOGY_LABELS.get(key)
    value = getattr(where, part) if part is not None else ""
    return value or None


def _locality_rank(endpoint: Endpoint, policy: LocalityLb, caller: Caller) -> int:
    here, there = caller.locality, Locality.of(endpoint)
    if here.region == there.region:
        if here.zone == there.zone:
            return 0 if here.sub_zone == there.sub_zone else 1
        return 2
    for source, target in policy.failover:
        if source == here.region:
            return 3 if there.region == target else 4
    return 3
