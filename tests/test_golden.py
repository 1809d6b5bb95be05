"""Golden files: policy in, Envoy YAML out, reviewed as diffs; and Envoy's verdict on each.

Each case is a folder `tests/golden/<case>/` holding `policy.yaml` and one `<view>.yaml` per view:
the snapshot that view receives, rendered by `snapshot_to_dict`. The views of a case are its
Gateways plus any other `<view>.yaml` already in the folder (create an empty file to add one).

Regenerate after a deliberate translator change, then review the diff:

    MESHPILOT_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py

Envoy checks every golden view (`envoy --mode validate`): the resources are put into a bootstrap
as static resources, with each listener's RDS replaced by its route configuration inline, and
each ClusterLoadAssignment checked as the endpoints of a static cluster. What Envoy would NACK
fails here first.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshpilot.envoy_process import validate_config
from meshpilot.policy.loader import load_policy
from meshpilot.translators import Translation
from meshpilot.xds.render import snapshot_to_dict

GOLDEN = Path(__file__).parent / "golden"
POLICY = "policy.yaml"
UPDATE = os.environ.get("MESHPILOT_UPDATE_GOLDEN") == "1"
HEADER = ("# Generated from policy.yaml by tests/test_golden.py; do not edit. Regenerate with\n"
          "# MESHPILOT_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py\n")

CASES = sorted(p.name for p in GOLDEN.glob("*") if (p / POLICY).is_file())

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# The management server the checked bootstrap's EDS clusters point at: never contacted, since
# validation does not start xDS, but required for an `ads: {}` config source to be valid.
XDS_CLUSTER = "meshpilot_xds"


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
    existing = {p.stem for p in case.glob("*.yaml") if p.name != POLICY}
    return sorted(gateways | existing)


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    folder = GOLDEN / case
    views = views_of(folder)
    assert views, f"{case}: no Gateway and no view file: nothing to compare"
    for view in views:
        golden = folder / f"{view}.yaml"
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


def static_bootstrap(rendered: dict[str, Any]) -> dict[str, Any]:
    """A bootstrap holding a rendered view's resources as static resources, for Envoy to check.

    Clusters stay as they are (EDS ones keep their ADS config source); each assignment becomes
    a static cluster of its own so Envoy checks its endpoints; listeners get their route
    configuration inline, where Envoy also checks that every cluster a route names exists.
    """
    resources = copy.deepcopy(rendered["resources"])
    route_configs = {config["name"]: config for config in resources.get("routes", [])}
    listeners = resources.get("listeners", [])
    for listener in listeners:
        _inline_route_configs(listener, route_configs)
    endpoint_checks = [{"name": f"{assignment['cluster_name']} (endpoints)", "type": "STATIC",
                        "load_assignment": assignment}
                       for assignment in resources.get("endpoints", [])]
    return {
        "node": {"id": "golden-check", "cluster": rendered["view"]},
        "dynamic_resources": {"ads_config": {
            "api_type": "GRPC", "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}]}},
        "static_resources": {
            "clusters": [*resources.get("clusters", []), *endpoint_checks, _xds_cluster()],
            "listeners": listeners,
        },
    }


def _inline_route_configs(listener: dict[str, Any], route_configs: dict[str, Any]) -> None:
    for chain in listener.get("filter_chains", []):
        for network_filter in chain.get("filters", []):
            manager = network_filter.get("typed_config", {})
            if manager.get("@type") == HCM and "rds" in manager:
                manager["route_config"] = route_configs[manager.pop("rds")["route_config_name"]]


def _xds_cluster() -> dict[str, Any]:
    address = {"socket_address": {"address": "127.0.0.1", "port_value": 18000}}
    return {
        "name": XDS_CLUSTER, "type": "STATIC",
        "load_assignment": {"cluster_name": XDS_CLUSTER,
                            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]},
        "typed_extension_protocol_options": {HTTP_OPTIONS: {
            "@type": f"type.googleapis.com/{HTTP_OPTIONS}",
            "explicit_http_config": {"http2_protocol_options": {}}}},
    }
