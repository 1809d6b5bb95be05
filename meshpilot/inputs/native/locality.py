"""Localities in policy text: a Service's `locality_lb` and a sidecar's `locality`, and the
converters Istio's `localityLbSetting` reads with too (one spelling of a locality pattern).

Shape (inside a `kind: Service` document):

    locality_lb:                        # balancing by where each calling sidecar runs
      distribute:                       # or failover / failover_priority, not both
        - {from: eu-west/*, to: {eu-west/*: 80, us-east/*: 20}}
      failover: [{from: eu-west, to: us-east}]     # region to region (needs outlier_detection
      failover_priority: [tier]                    #   or health_check); label keys, in order
    sidecar: {locality: eu-west/eu-west-1a, labels: {tier: gold}, ...}

It checks each value and the rules within the block (weights add up to 100, no pattern twice,
a failover between two regions); what the endpoints get per caller is
`translators/locality.py`'s.
"""

from __future__ import annotations

from typing import Any

from meshpilot.inputs.native import fields
from meshpilot.inputs.native.fields import Fields, Invalid
from meshpilot.ir.model import Locality, LocalityLb

LOCALITY_LB_KEYS = ("distribute", "failover", "failover_priority")


def locality_pattern(value: Any) -> str:
    """`region`, `region/zone` or `region/zone/subzone`; `*` once, as the last part."""
    text = fields.string(value)
    parts = text.split("/")
    if len(parts) > 3 or any(not part for part in parts):
        raise Invalid(f"{fields.quoted(text)} is not a locality: region, region/zone or "
                      "region/zone/subzone")
    if "*" in text and (text.count("*") > 1 or parts[-1] != "*"):
        raise Invalid(f"{fields.quoted(text)}: a wildcard '*' is allowed once, as the last part")
    return text


def region(value: Any) -> str:
    text = fields.string(value)
    if "/" in text or "*" in text:
        raise Invalid(f"{fields.quoted(text)}: failover names a region, no zone and no wildcard")
    return text


def locality(value: Any) -> Locality:
    """Where a proxy runs: `region[/zone[/subzone]]`, no wildcard."""
    text = locality_pattern(value)
    if "*" in text:
        raise Invalid(f"{fields.quoted(text)}: a sidecar's locality is one place, no wildcard")
    region_name, zone, sub_zone = [*text.split("/"), "", ""][:3]
    return Locality(region_name, zone, sub_zone)


def distribute_rule(rule: Fields, source_key: str = "from", targets_key: str = "to"
                    ) -> tuple[str, tuple[tuple[str, int], ...]] | None:
    """One `{from: PATTERN, to: {PATTERN: weight}}`: weights 1 to 100 adding up to 100."""
    rule.check_keys((source_key, targets_key), "a distribute rule")
    source = rule.get(source_key, locality_pattern, required=True)
    targets = rule.mapping(targets_key, "a mapping of localities to weights", required=True)
    if source is None or targets is None:
        return None
    weights: list[tuple[str, int]] = []
    for name, weight in targets.value.items():
        at = (*targets.path, name)
        pattern = fields.convert_at(rule.ctx, name, at, locality_pattern)
        share = fields.convert_at(rule.ctx, weight, at, fields.integer(1, 100))
        if pattern is not None and share is not None:
            weights.append((pattern, share))
    if len(weights) != len(targets.value):
        return None
    check_overlaps([(pattern, targets, pattern) for pattern, _ in weights])
    total = sum(weight for _, weight in weights)
    if total != 100:
        rule.report(targets_key, f"the weights add up to {total}: they must add up to 100")
        return None
    return source, tuple(weights)


def failover_rule(rule: Fields) -> tuple[str, str] | None:
    rule.check_keys(("from", "to"), "a failover rule")
    source = rule.get("from", region, required=True)
    target = rule.get("to", region, required=True)
    if source is None or target is None:
        return None
    if source == target:
        rule.report("to", "failover must name another region than from")
        return None
    return source, target


def check_overlaps(patterns: list[tuple[str, Fields, str]]) -> None:
    """(pattern, where, key): a pattern an earlier one covers is reported (Istio's rule)."""
    seen: list[str] = []
    for pattern, where, key in patterns:
        for earlier in seen:
            if earlier == pattern or earlier == "*" or (
                    earlier.endswith("/*") and pattern.startswith(earlier[:-1])):
                where.report(key, f"locality {pattern} is already covered by {earlier}")
                break
        seen.append(pattern)


def parse_locality_lb(doc: Fields, can_fail_over: bool) -> LocalityLb | None:
    """A native Service's `locality_lb`; `can_fail_over`: it has outlier detection or a
    health check (without either Envoy never finds an endpoint unhealthy)."""
    spec = doc.mapping("locality_lb", "a mapping such as {failover: [{from: eu-west, to: "
                                      "us-east}]}")
    if spec is None:
        return None
    spec.check_keys(LOCALITY_LB_KEYS, "locality_lb")
    how = spec.exclusive(("distribute", "failover"), required=False, what="locality_lb")
    distribute = []
    for index, item in enumerate(spec.items("distribute", "distribute rule") or []):
        rule = Fields.at(spec.ctx, item, (*spec.path, "distribute", index),
                         "a mapping such as {from: eu-west/*, to: {eu-west/*: 80, "
                         "us-east/*: 20}}")
        found = None if rule is None else distribute_rule(rule)
        if rule is not None and found is not None:
            distribute.append((found, rule))
    check_overlaps([(found[0], rule, "from") for found, rule in distribute])
    failover = []
    for index, item in enumerate(spec.items("failover", "failover rule") or []):
        rule = Fields.at(spec.ctx, item, (*spec.path, "failover", index),
                         "a mapping such as {from: eu-west, to: us-east}")
        found_failover = None if rule is None else failover_rule(rule)
        if found_failover is not None:
            failover.append(found_failover)
    priority = fields.unique_list(spec, "failover_priority", "label key", fields.string)
    if how == "distribute" and priority:
        spec.report("failover_priority", "failover_priority ranks endpoints for failover; "
                                         "distribute gives each locality a share instead",
                    at_value=False)
    if how != "distribute" and not can_fail_over:
        doc.report("locality_lb", "failover moves traffic only off endpoints found unhealthy: "
                                  "this Service needs outlier_detection or a health_check",
                   at_value=False)
    if "zone_weights" in doc.value:
        doc.report("locality_lb", "write zone_weights or locality_lb, not both",
                   at_value=False)
    return LocalityLb(distribute=tuple(found for found, _ in distribute),
                      failover=tuple(failover), failover_priority=tuple(priority or ()),
                      origin=spec.origin())
