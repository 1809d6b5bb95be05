"""`kind: Rollout`: how each edit of this policy is rolled out, as `model.RolloutSettings`.

This module owns the document's shape and what can be checked within it; that a policy has one
Rollout document at most is `references.py`'s; what the runtime does with it is
`runtime/rollout.py`'s (docs/operations.md, "Staged rollouts").

Shape:

    kind: Rollout
    name: staged          # one Rollout document per policy
    canary: 10            # percent of each view's Envoys sent an edit first (default 10; at
                          #   least one Envoy, never all of several)
    watch: 30s            # how long the canaries are watched before promotion (default 30s)
    error_rate: 5         # percent of the canaries' requests answered 5xx above which the edit
                          #   is rolled back (default 5)
    min_requests: 10      # canary requests needed before the error rate is judged (default 10)
    views: [edge]         # only these views in stages (default: every view)
    enabled: false        # no staged rollouts (default true), whatever `--rollout` says
"""

from __future__ import annotations

from typing import Any

from meshpilot.inputs.context import DocumentContext
from meshpilot.inputs.native import fields
from meshpilot.inputs.native.fields import Fields, Invalid, issue_count, reported_since
from meshpilot.inputs.yamlsource import Located
from meshpilot.ir.model import RolloutSettings

KIND = "Rollout"
ROLLOUT_KEYS = ("kind", "name", "enabled", "canary", "watch", "error_rate", "min_requests",
                "views")
MAX_WATCH = 24 * 3600.0


def _percent(*, allow_zero: bool) -> fields.Converter[float]:
    bounds = "from 0 to 100" if allow_zero else "above 0, at most 100"

    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            hint = " (a number: write 10, not 10%)" if isinstance(value, str) and \
                value.strip().endswith("%") else ""
            raise Invalid(f"expected a percentage {bounds}, found "
                          f"{fields.describe(value)}{hint}")
        if value > 100 or value < 0 or (value == 0 and not allow_zero):
            raise Invalid(f"must be {bounds}, found {value}")
        return float(value)
    return convert


def _watch(value: Any) -> float:
    seconds = fields.duration()(value)
    if seconds > MAX_WATCH:
        raise Invalid("at most 24h")
    return seconds


def parse_rollout(document: Located, ctx: DocumentContext) -> list[RolloutSettings]:
    """The document's settings, or nothing if anything in it was reported."""
    mark = issue_count(ctx)
    doc = Fields(ctx, document.value)
    doc.check_keys(ROLLOUT_KEYS, "a Rollout")
    name = doc.get("name", fields.name)
    enabled = doc.get("enabled", fields.boolean)
    canary = doc.get("canary", _percent(allow_zero=False))
    watch = doc.get("watch", _watch)
    error_rate = doc.get("error_rate", _percent(allow_zero=True))
    min_requests = doc.get("min_requests", fields.integer(0, 1_000_000_000))
    views = fields.unique_list(doc, "views", "view", fields.string)
    if reported_since(ctx, mark) or name is None:
        return []
    defaults = RolloutSettings("", document.position)
    return [RolloutSettings(
        name=name, position=document.position,
        enabled=defaults.enabled if enabled is None else enabled,
        canary=defaults.canary if canary is None else canary,
        watch=defaults.watch if watch is None else watch,
        error_rate=defaults.error_rate if error_rate is None else error_rate,
        min_requests=defaults.min_requests if min_requests is None else min_requests,
        views=views, origin=ctx.origin())]
