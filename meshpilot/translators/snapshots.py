"""A view's new snapshot from its earlier one: unchanged maps kept, only what changed rebuilt.

Streams compare a view's new snapshot with the one they hold map by map, and a map that is the
same object costs nothing to compare (its diffs are memoized on it). So every path that makes a
snapshot from an earlier one keeps each `ResourceMap` whose content did not change, and returns
the earlier snapshot itself when nothing changed. The content is the same as a fresh
`Snapshot.from_resources`; only the objects differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from meshpilot.base import types
from meshpilot.translators import names
from meshpilot.xds.resources import Resource, ResourceMap
from meshpilot.xds.snapshot import Snapshot

ClusterResources = Callable[[str, str | None], tuple[Resource, ...]]


def reusing(previous: Snapshot, assembled: list[Resource]) -> Snapshot:
    """`Snapshot.from_resources(previous.view, assembled)`, keeping each of `previous`'s maps
    whose resources are exactly the objects assembled (same content, so same version)."""
    by_type: dict[str, list[Resource]] = {}
    for resource in assembled:
        by_type.setdefault(resource.type_url, []).append(resource)
    maps: dict[str, ResourceMap] = {}
    unchanged = set(by_type) == set(previous.type_urls())
    for type_url, resources in by_type.items():
        earlier = previous.get(type_url)
        if len(earlier) == len(resources) and all(earlier.get(r.name) is r for r in resources):
            maps[type_url] = earlier  # equal length and each name found: no duplicates either
        else:
            maps[type_url] = ResourceMap(type_url, resources)
            unchanged = False
    return previous if unchanged else Snapshot(previous.view, maps)


def keeping_equal_maps(previous: Snapshot, fresh: Snapshot) -> Snapshot:
    """`fresh`, with each map whose version equals `previous`'s replaced by `previous`'s."""
    every = set(fresh.type_urls()) | set(previous.type_urls())
    maps = {t: (previous.get(t) if previous.get(t).version == fresh.get(t).version
                else fresh.get(t)) for t in every}
    return Snapshot(fresh.view, {t: m for t, m in maps.items() if len(m)})


def with_clusters_of(previous: Snapshot, services: set[str], cluster_resources: ClusterResources,
                     overridden: set[tuple[str, str]]) -> Snapshot:
    """`previous` with the clusters and assignments of `services` it holds built again by
    `cluster_resources` (except those a raw resource replaces): for an EDS service only the
    endpoints map changes."""
    updates: dict[str, dict[str, Resource]] = {}
    for name in previous.get(types.CLUSTER):
        service = names.service_of_cluster(name, services.__contains__)
        if service not in services:
            continue
        subset = name[len(service) + 1:] if name.startswith(service + names.SEPARATOR) else ""
        for resource in cluster_resources(service, subset or None):
            if (resource.type_url, resource.name) in overridden:
                continue
            old = previous.get(resource.type_url).get(resource.name)
            if old is None or old.version != resource.version:
                updates.setdefault(resource.type_url, {})[resource.name] = resource
    return replacing(previous, updates)


def replacing(previous: Snapshot,
              updates: Mapping[str, Mapping[str, Resource]]) -> Snapshot:
    """`previous` with `updates` (type URL -> name -> resource) added or replaced; every other
    map is kept (and `previous` itself when there are no updates)."""
    if not updates:
        return previous
    return patched(previous, {t: changed.values() for t, changed in updates.items()}, {})


def patched(previous: Snapshot, changed: Mapping[str, Iterable[Resource]],
            removed: Mapping[str, Iterable[str]]) -> Snapshot:
    """`previous` with `changed` resources added or replaced and `removed` names (type URL ->
    names) left out, each map patched (`ResourceMap.patched`: the cost follows the change);
    maps left empty are dropped, and `previous` itself is returned if nothing differs."""
    maps = {t: previous.get(t) for t in previous.type_urls()}
    moved = False
    for type_url in {*changed, *removed}:
        old = maps.get(type_url) or ResourceMap(type_url)
        new = old.patched(changed.get(type_url, ()), removed.get(type_url, ()))
        if new is not old:
            moved = True
            if len(new):
                maps[type_url] = new
            else:
                maps.pop(type_url, None)
    return Snapshot(previous.view, maps) if moved else previous


def changed_only(previous: Snapshot, type_url: str,
                 resources: Iterable[Resource]) -> Snapshot:
    """`previous` with those of `resources` it already holds (by name) and whose version
    changed replaced: a certificate rotation changes one map only."""
    old = previous.get(type_url)
    changed = {r.name: r for r in resources if r.name in old and old[r.name].version != r.version}
    return replacing(previous, {type_url: changed} if changed else {})
