"""What an incremental load changed: the names of the model parts it added, replaced or removed.

The loader makes one for a model it built from the previous one (`inputs/dependents.py`), or,
for a load that went the whole way, by comparing the two models (`between`); a Translation
given it (with the previous Translation, of `before`) re-translates only what those names feed
and patches each view's snapshot (`translators/patch.py`). Without one, everything is compared
as before (`translators/reuse.py`).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from itertools import chain, compress
from operator import attrgetter, is_not
from typing import Any

from meshpilot.ir.model import Model, Route


@dataclass(frozen=True, slots=True, eq=False)
class ModelChanges:
    before: Model
    after: Model
    services: frozenset[str] = frozenset()  # Service names added, replaced or removed
    gateways: frozenset[str] = frozenset()
    routes: frozenset[str] = frozenset()

    def follows(self, before: Model, after: Model) -> bool:
        """Whether these are the changes from `before` to `after` (the very objects)."""
        return self.before is before and self.after is after


_name = attrgetter("name")


def between(before: Model, after: Model) -> ModelChanges:
    """The changes from `before` to `after` by comparing them: a part is unchanged only if it
    is the very object `before` holds under its name (equal in value is not enough: its
    origins may have moved), so the names are never fewer than what changed. Linear in the
    parts, by identity: what a whole-way load keeps (unchanged documents, a compile's kept
    Routes and Services) costs a dict entry each."""
    return ModelChanges(before, after, _differing(before.services, after.services),
                        _differing(before.gateways, after.gateways),
                        _differing(before.routes, after.routes))


def _differing(before: tuple[Any, ...], after: tuple[Any, ...]) -> frozenset[str]:
    if before is after:
        return frozenset()
    if len(before) == len(after):
        # Side by side (both sorted by name), in C: a part added, replaced or removed leaves
        # its place holding another object, so the names at the places that differ are never
        # fewer than what changed (more only where a removal and an addition shift a stretch).
        places = list(compress(range(len(after)), map(is_not, before, after)))
        return frozenset(chain(map(_name, map(before.__getitem__, places)),
                               map(_name, map(after.__getitem__, places))))
    earlier = {part.name: part for part in before}
    changed = {part.name for part in after if earlier.pop(part.name, None) is not part}
    return frozenset(changed.union(earlier))  # what is left of `earlier` was removed


def route_named(model: Model, name: str) -> Route | None:
    """The model's Route of that name (its routes are sorted by name: a bisection)."""
    at = bisect_left(model.routes, name, key=_name)
    if at < len(model.routes) and model.routes[at].name == name:
        return model.routes[at]
    return None
