"""Golden files: policy in, Envoy YAML out, reviewed as diffs; and Envoy's verdict on each.

Each case is a folder `tests/golden/<case>/` holding `policy.yaml` and one `<view>.yaml` per view:
the snapshot that view receives, rendered by `snapshot_to_dict`. The views of a case are its
Gateways plus any other `<view>.yaml` already in the folder (create an empty file to add one).

Regenerate after a deliberate translator change, then review the diff:

    MESHPILOT_UPDATE_GOLDEN=1 .venv/bin/pytest tests/golden/test_golden.py

Envoy checks every golden view (`envoy --mode validate`): the resources are put into a bootstrap
as static resources, with each listener's RDS replaced by its route configuration inline, and
each ClusterLoadAssignment checked as the endpoints of a static cluster. What Envoy would NACK
fails here first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from static_check import static_bootstrap

from meshpilot.inputs.loader import load_policy
from meshpilot.local.envoy_process import validate_config
from meshpilot.translators import Translation
from meshpilot.xds.render import snapshot_to_dict

GOLDEN = Path(__file__).parent
POLICY = "policy.yaml"
UPDATE = os.environ.get("MESHPILOT_UPDATE_GOLDEN") == "1"
HEADER = ("# Generated from policy.yaml by tests/golden/test_golden.py; do not edit. Regenerate with\n"
          "# MESHPILOT_UPDATE_GOLDEN=1 .venv/bin/pytest tests/golden/test_golden.py\n")

CASES = sorted(p.name for p in GOLDEN.glob("*") if (p / POLICY).is_file())

class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(case: Path, view: str) -> str:
    model = load_policy(case / POLICY)
    snapshot = Translation(model).snapshot(view)
    rendered = snapshot_to_dict(snapshot)
    return HEADER + yaml.dump(rendered, Dumper=_NoAliasDumper, sort_keys=False,
                              default_flow_style=False, allow_unicode=True, width=100)


def views_of(case: Path) -> list[str]:
    gateways = {g.name for g in load_policy(case / POLICY).gateways}
    existing = {p.stem.replace("+", "/") for p in case.glob("*.yaml") if p.name != POLICY}
    return sorted(gateways | existing)


def golden_file(case: Path, view: str) -> Path:
    """`<view>.yaml`; a Gateway API view `NS/NAME` is `NS+NAME.yaml` ("+" is in no name)."""
    return case / f"{view.replace('/', '+')}.yaml"


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    folder = GOLDEN / case
    views = views_of(folder)
    assert views, f"{case}: no Gateway and no view file: nothing to compare"
    for view in views:
        golden = golden_file(folder, view)
        actual = render(folder, view)
        if UPDATE:
            golden.write_text(actual)
            continue
        assert golden.is_file(), f"{golden} is missing: run with MESHPILOT_UPDATE_GOLDEN=1"
        assert actual == golden.read_text(), (
            f"{case}/{view}.yaml differs from the translation: if the change is intended, "
            "regenerate with MESHPILOT_UPDATE_GOLDEN=1 and review the diff")


@pytest.mark.envoy
@pytest.mark.parametrize("case", CASES)
def test_envoy_accepts_golden(case: str) -> None:
    for golden in sorted((GOLDEN / case).glob("*.yaml")):
        if golden.name == POLICY:
            continue
        rendered = yaml.safe_load(golden.read_text())
        if rendered and rendered["resources"]:
            validate_config(static_bootstrap(rendered))


