"""The controller: policy on disk in, snapshots in the cache out, the last good config kept.

A reload either replaces the whole model (every document valid) or changes nothing: the error is
logged, counted and shown in `/debug/status`, and every Envoy keeps the snapshot it had.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshpilot.errors import PolicyError, PolicyIssue
from meshpilot.metrics import Metrics
from meshpilot.policy.loader import load_policy
from meshpilot.policy.model import Model
from meshpilot.translators import Translation
from meshpilot.xds.cache import SnapshotCache

log = logging.getLogger("meshpilot.controller")


@dataclass
class PolicyStatus:
    path: str
    loads: int = 0
    rejected: int = 0
    last_attempt: float | None = None
    last_success: float | None = None
    applied_files: tuple[str, ...] = ()
    error: list[str] = field(default_factory=list)  # issues of the newest attempt, if it failed

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.path, "loads": self.loads, "rejected": self.rejected,
            "last_attempt": self.last_attempt, "last_success": self.last_success,
            "ok": not self.error and self.last_success is not None,
            "applied_files": list(self.applied_files), "errors": list(self.error),
        }


class Controller:
    def __init__(self, policy_path: str | Path, cache: SnapshotCache,
                 metrics: Metrics | None = None):
        self.policy_path = Path(policy_path)
        self.cache = cache
        self.metrics = metrics or Metrics()
        self.status = PolicyStatus(str(self.policy_path))
        self.model: Model | None = None
        self.translation: Translation | None = None

    @property
    def ready(self) -> bool:
        return self.translation is not None

    def reload(self) -> bool:
        """Load the policy; apply it to every view if valid. True if the new policy is serving."""
        self.status.loads += 1
        self.status.last_attempt = time.time()
        try:
            model = load_policy(self.policy_path)
        except PolicyError as e:
            self._reject(e.issues)
            return False
        started = time.perf_counter()
        translation = Translation(model)
        self.apply(translation)
        self.metrics.snapshot_builds.observe(time.perf_counter() - started)
        self.model = model
        self.status.last_success = time.time()
        self.status.applied_files = model.files
        self.status.error = []
        self.metrics.policy_loads.labels("ok").inc()
        self.metrics.policy_valid.set(1)
        log.info("policy applied: %d files, %d raw resources, views %s", len(model.files),
                 len(model.raw), list(self.cache.views()) or "(none yet)")
        return True

    def apply(self, translation: Translation) -> None:
        """Make `translation` the source of every view's snapshot, rebuilding each view once."""
        self.translation = translation
        self.cache.set_builder(translation.snapshot)
        for view in self.cache.all_views():
            self.cache.set(translation.snapshot(view))
        self.metrics.views.set(len(self.cache.views()))

    def _reject(self, issues: tuple[PolicyIssue, ...]) -> None:
        self.status.rejected += 1
        self.status.error = [str(issue) for issue in issues]
        self.metrics.policy_loads.labels("rejected").inc()
        self.metrics.policy_valid.set(0)
        kept = "the last good config keeps serving" if self.ready else "nothing is served yet"
        log.error("policy rejected (%d problems); %s:\n  %s", len(issues), kept,
                  "\n  ".join(self.status.error))
