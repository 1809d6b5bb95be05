"""What an incremental load changed: the names of the model parts it added, replaced or removed.

The loader makes one for a model it built from the previous one (`inputs/dependents.py`); a
Translation given it (with the previous Translation, of `before`) re-translates only what those
names feed and patches each view's snapshot (`translators/patch.py`). Without one, everything
is compared as before (`translators/reuse.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshpilot.ir.model import Model


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
