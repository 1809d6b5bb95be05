"""`failover` on a Service (docs/policy.md): what the loader refuses, with positions, and the
aggregate cluster the translator makes of it."""

from __future__ import annotations

import pytest

from meshpilot.base import types
from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.translators import Translation
from meshpilot.xds.render import snapshot_to_dict

BASE = """
kind: Service
name: west
endpoints: [10.0.0.2:80]
---
kind: Service
name: db
protocol: tcp
endpoints: [10.0.0.3:5432]
---
kind: Service
name: chained
endpoints: [10.0.0.4:80]
failover: [west]
---
kind: Gateway
name: edge
listeners: [{name: http, port: 8080}]
---
kind: Route
name: r
gateway: edge
rules: [{backends: [api]}]
---
kind: Service
name: api
endpoints: [10.0.0.1:80]
"""


@pytest.mark.parametrize("failover, message", [
    ("[api]", "failover[0]: a Service cannot fail over to itself"),
    ("[nope]", 'failover[0]: no Service named "nope"'),
    ("[db]", "failover[0]: Service db speaks protocol tcp, this one http"),
    ("[chained]", "failover[0]: Service chained has a failover of its own"),
    ("[west, west]", 'failover[1]: Service name "west" is listed twice'),
])
def test_refused_failovers_point_at_their_entry(failover: str, message: str) -> None:
    with pytest.raises(PolicyError) as raised:
        load_policy_text(BASE + f"failover: {failover}\n")
    issues = [str(issue) for issue in raised.value.issues]
    assert len(issues) == 1 and message in issues[0], issues
    assert issues[0].startswith("policy.yaml:") and "Service api: " in issues[0]


def test_the_cluster_becomes_an_aggregate_and_the_targets_come_along() -> None:
    model = load_policy_text(BASE + "failover: [west]\n")
    snapshot = Translation(model).snapshot("edge")
    clusters = {c["name"]: c for c in snapshot_to_dict(snapshot)["resources"]["clusters"]}
    assert set(clusters) == {"api", "api|primary", "west"}  # chained: no Route sends to it
    config = clusters["api"]["cluster_type"]["typed_config"]
    assert config["clusters"] == ["api|primary", "west"]
    assert clusters["api"]["lb_policy"] == "CLUSTER_PROVIDED"
    assert clusters["api|primary"]["eds_cluster_config"]["service_name"] == "api|primary"
    assert set(snapshot.get(types.ENDPOINT)) == {"api|primary", "west"}
