"""`ir.changes.between`: the names it gives are never fewer than what changed between two
models (added, replaced, removed), whether the part tuples have the same length or not."""

from __future__ import annotations

import random

from meshpilot.base.errors import Position
from meshpilot.ir.changes import between
from meshpilot.ir.model import Endpoint, Model, Service


def _service(name: str, port: int = 80) -> Service:
    return Service(name, Position("policy.yaml", 1, 1), endpoints=(Endpoint("127.0.0.1", port),))


def _model(services: list[Service]) -> Model:
    return Model(services=tuple(sorted(services, key=lambda s: s.name)))


def test_between_names_every_change() -> None:
    rng = random.Random(5)
    parts = [_service(f"s{i:03d}") for i in range(60)]
    for _ in range(300):
        after = list(parts)
        changed: set[str] = set()
        for _ in range(rng.randrange(1, 4)):
            what, at = rng.randrange(3), rng.randrange(len(after))
            if what == 0:  # replaced by an equal object: changed by identity
                changed.add(after[at].name)
                after[at] = _service(after[at].name)
            elif what == 1:
                changed.add(after[at].name)
                del after[at]
            else:
                name = f"s{rng.randrange(1000):03d}x"
                if all(part.name != name for part in after):
                    changed.add(name)
                    after.append(_service(name, 81))
        names = between(_model(parts), _model(after)).services
        assert changed <= names
        kept = {part.name for part in parts} & {part.name for part in after}
        if len(after) == len(parts):
            # Beside what changed, only names in a stretch a removal and an addition shifted.
            assert names <= changed | kept
    same = _model(parts)
    assert between(same, _model(list(parts))).services == frozenset()
