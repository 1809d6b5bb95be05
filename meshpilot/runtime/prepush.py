"""The pre-push check: what changed in a reload is checked by Envoy before any Envoy is sent it.

The controller hands `PrePush.issues()` the views' serving and new snapshots; the resources that
differ (new or changed, in any view; each distinct content once) go to a `ResourceCheck`, in
production `meshpilot.local.validator.EnvoyValidator` (`envoy --mode validate`, answers cached by
content hash). This module does not run Envoy itself: the CLI hands it the checker, since
running Envoy belongs to `meshpilot.local`, above this wing.

A refusal becomes a `PolicyIssue` at the policy position that built the resource
(`translators/provenance.py`), with Envoy's message; the controller then refuses the whole
reload and the last good config keeps serving, as for any policy error. A refused
RouteConfiguration is narrowed first: each virtual host alone, then each route entry of a
refused one, so the issue names the Route rule Envoy refuses, not only its listener.

What it does not check: conflicts between resources (two listeners on one address, a route
naming a cluster Envoy has not got: meshpilot's own checks cover those it can know), and the
fast paths that change no policy (discovered endpoints, renewed certificates).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshpilot.base import types
from meshpilot.base.errors import PolicyIssue
from meshpilot.ir.model import Model
from meshpilot.translators.provenance import origins_of
from meshpilot.xds.render import message_of
from meshpilot.xds.resources import Resource
from meshpilot.xds.snapshot import Snapshot

log = logging.getLogger("meshpilot.runtime.prepush")

Key = tuple[str, str]  # (type URL, content version)

_KINDS = {types.CLUSTER: "Cluster", types.ENDPOINT: "ClusterLoadAssignment",
          types.LISTENER: "Listener", types.ROUTE: "RouteConfiguration",
          types.SECRET: "Secret"}


class ResourceCheck(Protocol):
    """Checks resources as an Envoy would; `envoy_version` is that Envoy's build ("1.40.0")."""

    envoy_version: str | None

    def check(self, resources: Iterable[Resource]) -> dict[Key, str]:
        """Envoy's message for each resource refused, by (type URL, version); raises on a
        failure to check at all."""


class CheckFailed(Exception):
    """The checker itself failed (Envoy missing, a timeout): nothing unchecked is pushed."""


@dataclass
class PrePushStatus:
    envoy_version: str | None
    checks: int = 0  # reloads (and views built on demand) checked
    resources_checked: int = 0
    refused: int = 0  # resources refused so far
    last_seconds: float | None = None
    seconds_total: float = 0.0
    last_refusals: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"enabled": True, "envoy_version": self.envoy_version, "checks": self.checks,
                "resources_checked": self.resources_checked, "refused": self.refused,
                "last_seconds": self.last_seconds, "seconds_total": self.seconds_total,
                "last_refusals": list(self.last_refusals)}


class PrePush:
    """Checks the resources a reload changes. Thread-safe as its `ResourceCheck` is."""

    def __init__(self, check: ResourceCheck):
        self.check = check
        self.status = PrePushStatus(check.envoy_version)

    def issues(self, model: Model,
               pairs: Iterable[tuple[Snapshot | None, Snapshot]]) -> tuple[PolicyIssue, ...]:
        """The problems Envoy finds in what `pairs` (serving, new snapshot per view) change;
        empty if it accepts all of it. Raises CheckFailed if it cannot tell."""
        started = time.perf_counter()
        holders: dict[Key, list[tuple[str, Resource]]] = {}
        for old, new in pairs:
            for resource in changed_resources(old, new):
                holders.setdefault((resource.type_url, resource.version), []).append(
                    (new.view, resource))
        if not holders:
            return ()
        try:
            refused = self.check.check(found[0][1] for found in holders.values())
            issues = [issue for key, message in sorted(refused.items())
                      for issue in self._issues(model, holders[key], message)]
        except CheckFailed:
            raise
        except Exception as e:  # EnvoyError and friends: say so, push nothing unchecked
            raise CheckFailed(f"the pre-push check could not run: {e}") from e
        self.status.checks += 1
        self.status.resources_checked += len(holders)
        self.status.refused += len(refused)
        self.status.last_seconds = time.perf_counter() - started
        self.status.seconds_total += self.status.last_seconds
        self.status.last_refusals = [str(issue) for issue in issues]
        return tuple(issues)

    def _issues(self, model: Model, held: list[tuple[str, Resource]],
                message: str) -> list[PolicyIssue]:
        """One issue per refused resource (the first view holding it is named)."""
        view, resource = held[0]
        part, message = self._narrow(resource, message)
        origins = origins_of(model, view, resource.type_url, resource.name, part)
        views = sorted({v for v, _ in held})
        what = f"{_KINDS.get(resource.type_url, resource.type_url)} {resource.name!r}"
        if part:
            what += f", {'entry' if '/rules[' in part else 'virtual host'} {part!r}"
        where = f"view {views[0]!r}" + (f" and {len(views) - 1} more" if len(views) > 1 else "")
        version = self.check.envoy_version or "?"
        text = f"Envoy {version} refuses {what} ({where}): {message}"
        if not origins:
            return [PolicyIssue(text)]
        first = origins[0]
        return [PolicyIssue(text, first.position, first.kind, first.name, first.field)]

    def _narrow(self, resource: Resource, message: str) -> tuple[str | None, str]:
        """(the refused virtual host or route entry, Envoy's message about it) of a refused
        RouteConfiguration; (None, message) for anything else or when no part alone fails."""
        if resource.type_url != types.ROUTE:
            return None, message
        config = message_of(resource)
        hosts = list(config.virtual_hosts)  # type: ignore[attr-defined]
        if len(hosts) == 0:
            return None, message
        found = self._refused_part(config, "virtual_hosts", hosts, resource.name)
        if found is None:
            return None, message
        index, host_message = found
        host = hosts[index]
        entries = list(host.routes)
        one_host = type(config)()
        one_host.CopyFrom(config)
        del one_host.virtual_hosts[:]  # type: ignore[attr-defined]
        one_host.virtual_hosts.add().CopyFrom(host)  # type: ignore[attr-defined]
        if len(entries) > 1:
            entry = self._refused_part(one_host.virtual_hosts[0], "routes", entries,  # type: ignore[attr-defined]
                                       resource.name, wrapper=one_host)
            if entry is not None and entries[entry[0]].name:
                return entries[entry[0]].name, entry[1]
        elif len(entries) == 1 and entries[0].name:
            return entries[0].name, host_message
        return host.name, host_message

    def _refused_part(self, container: Any, field_name: str, parts: Sequence[Any], name: str,
                      wrapper: Any = None) -> tuple[int, str] | None:
        """The first of `parts` (repeated `field_name` of `container`) Envoy refuses alone."""
        candidates = []
        for part in parts:
            copy = type(container)()
            copy.CopyFrom(container)
            del getattr(copy, field_name)[:]
            getattr(copy, field_name).add().CopyFrom(part)
            if wrapper is not None:
                outer = type(wrapper)()
                outer.CopyFrom(wrapper)
                del outer.virtual_hosts[:]
                outer.virtual_hosts.add().CopyFrom(copy)
                copy = outer
            candidates.append(Resource.from_message(types.ROUTE, name, copy))
        refused = self.check.check(candidates)
        for index, candidate in enumerate(candidates):
            found = refused.get((candidate.type_url, candidate.version))
            if found is not None:
                return index, found
        return None


def changed_resources(old: Snapshot | None, new: Snapshot) -> list[Resource]:
    """The resources of `new` that `old` does not hold with the same content."""
    out: list[Resource] = []
    for type_url in new.type_urls():
        current = new.get(type_url)
        if old is None:
            out.extend(current.values())
            continue
        previous = old.get(type_url)
        if previous is current:
            continue
        changed, _ = current.diff_from(previous)
        out.extend(current[name] for name in changed)
    return out
