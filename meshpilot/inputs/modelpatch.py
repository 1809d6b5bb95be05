"""The model after an edit of only a format's documents, patched from the last one.

An edit of only Gateway API documents (`incremental.ParseCache._format_edit`) leaves every
other part of the model as it was, and the compile keeps the very objects of what it did not
make again. So the new model is the last one less the compiled parts and statuses that are no
longer given (by identity) plus those that are new, each put in its place in the sorted tuples
by bisection: what `assembly.build_model` gives, without sorting 3,000 parts and 1,000
statuses again. It only applies where that is exactly what `build_model` would do: the sort
keys are unique (a tie's order would be the input's), no MeshPolicy or sidecar port rewrites
Services (`meshpolicy.apply`), and every part changed is a Service, Gateway or Route.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress, count
from operator import attrgetter, is_not
from typing import Any, TypeVar

from meshpilot.base.errors import PolicyIssue
from meshpilot.inputs.assembly import issue_order, status_order
from meshpilot.inputs.context import FormatPart, ModelPart
from meshpilot.inputs.native import meshpolicy
from meshpilot.ir.changes import ModelChanges
from meshpilot.ir.model import Gateway, MeshPolicy, Model, ObjectStatus, Route, Service

_T = TypeVar("_T")


@dataclass(slots=True)
class Compiled:
    """What a format's compile gave for a model, by identity: its parts and statuses."""

    model: Model
    parts: Sequence[ModelPart]
    statuses: Sequence[ObjectStatus]
    patchable: bool  # the model's sort keys unique, its Services as the inputs gave them


def compiled(model: Model, natives: Sequence[ModelPart], parts: Sequence[ModelPart],
             statuses: Sequence[ObjectStatus]) -> Compiled:
    """What the next edit patches `model` (built whole from `natives` and a compile's `parts`
    and `statuses`) from."""
    patchable = not any(isinstance(part, MeshPolicy) or meshpolicy.serves_others(part)
                        for part in (*natives, *parts)) and \
        _unique(model.routes, _NAME) and _unique(model.services, _NAME) and \
        _unique(model.gateways, _NAME) and _unique(model.statuses, status_order)
    return Compiled(model, parts, statuses, patchable)


def patched(last: Compiled, parts: Sequence[ModelPart], statuses: Sequence[ObjectStatus],
            files: tuple[str, ...], warnings: Iterable[PolicyIssue],
            ) -> tuple[Compiled, ModelChanges] | None:
    """The model after a compile gave `parts` and `statuses` (the other formats' parts are
    those of `last.model`), and what changed; None where only `build_model` can tell."""
    if not last.patchable:
        return None
    before = last.model
    diff = _diff(last.parts, parts)
    status_diff = _diff(last.statuses, statuses)
    if diff is None or status_diff is None:
        return None
    gone, added = diff
    kinds: dict[type, tuple[list[Any], list[Any]]] = {
        Service: ([], []), Gateway: ([], []), Route: ([], [])}
    for side, changed in ((0, gone), (1, added)):
        for part in changed:
            kind = _kind(part)
            if kind is None or (side and meshpolicy.serves_others(part)):
                return None
            kinds[kind][side].append(part)
    gone_statuses, added_statuses = status_diff
    services = _patch(before.services, *kinds[Service], _NAME)
    gateways = _patch(before.gateways, *kinds[Gateway], _NAME)
    routes = _patch(before.routes, *kinds[Route], _NAME)
    ordered = _patch(before.statuses, gone_statuses, added_statuses, status_order)
    if services is None or gateways is None or routes is None or ordered is None:
        return None
    index = before._services.copy()  # this model's own dicts, as `Model` makes them
    gateway_index = before._gateways.copy()
    for found, kind in ((index, Service), (gateway_index, Gateway)):
        gone_parts, added_parts = kinds[kind]
        for part in gone_parts:
            del found[part.name]
        for part in added_parts:
            found[part.name] = part
    model = Model(raw=before.raw, services=services, gateways=gateways, routes=routes,
                  files=files, statuses=ordered,
                  warnings=tuple(sorted(warnings, key=issue_order)), rollout=before.rollout,
                  _services=index, _gateways=gateway_index, _indexed=True)
    names = {kind: frozenset(part.name for side in kinds[kind] for part in side)
             for kind in kinds}
    return Compiled(model, parts, statuses, True), ModelChanges(
        before, model, names[Service], names[Gateway], names[Route])


_NAME = attrgetter("name")


def _kind(part: ModelPart) -> type | None:
    """Where `build_model` puts a compiled part: Routes, Services or Gateways; None for
    anything else (then the model is built whole)."""
    if type(part) is Route:
        return Route
    if isinstance(part, (FormatPart, MeshPolicy)):
        return None
    if isinstance(part, Service):
        return Service
    if isinstance(part, Gateway):
        return Gateway
    return None


def _by_id(items: Sequence[_T]) -> dict[int, _T]:
    return dict(zip(map(id, items), items, strict=True))


def _diff(old: Sequence[_T], items: Sequence[_T]) -> tuple[list[_T], list[_T]] | None:
    """What `old` holds that `items` do not and the other way round, by identity; None if an
    object is there twice (then `build_model` tells). A compile gives what it kept in the
    same order, so only the places holding other objects side by side (as many of each), or
    the stretch between the longest start and end the two share, are compared by id: what
    the rest holds is in both (`old`'s objects are alive, so an id names one object)."""
    if len(old) == len(items):
        places = list(compress(range(len(old)), map(is_not, old, items)))
        was_side = list(map(old.__getitem__, places))
        now_side = list(map(items.__getitem__, places))
    else:
        shortest = min(len(old), len(items))
        start = next(compress(count(), map(is_not, old, items)), shortest)
        end = next(compress(count(), map(is_not, reversed(old), reversed(items))), shortest)
        end = min(end, shortest - start)
        was_side, now_side = list(old[start:len(old) - end]), list(items[start:len(items) - end])
    was, now = _by_id(was_side), _by_id(now_side)
    if len(was) != len(was_side) or len(now) != len(now_side):
        return None
    return [was[key] for key in was.keys() - now.keys()], \
        [now[key] for key in now.keys() - was.keys()]


def _patch(parts: tuple[_T, ...], gone: list[_T], added: list[_T],
           key: Callable[[_T], Any]) -> tuple[_T, ...] | None:
    """`parts` (sorted by `key`, keys unique) without `gone`, with `added`; None when an
    added key is taken (or a gone part is not there): `build_model` would tell the order."""
    if not gone and not added:
        return parts
    found = list(parts)
    for part in gone:
        at = bisect_left(found, key(part), key=key)
        if at == len(found) or found[at] is not part:
            return None
        del found[at]
    for part in added:
        wanted = key(part)
        at = bisect_left(found, wanted, key=key)
        if at < len(found) and key(found[at]) == wanted:
            return None
        found.insert(at, part)
    return tuple(found)


def _unique(parts: Sequence[_T], key: Callable[[_T], Any]) -> bool:
    return len(set(map(key, parts))) == len(parts)
