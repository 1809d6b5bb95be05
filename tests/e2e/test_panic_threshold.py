"""`panic_threshold` through a real gateway: one of two endpoints ejected by outlier detection
leaves 50 % healthy. A Service whose threshold is above that (60) is in Envoy's panic mode and
balances over both again, the failing one included; one at 0 never panics and keeps to the
healthy one. (Istio's outlierDetection sets 0 unless `minHealthPercent` says otherwise.)"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from support import eventually, http_get, served_policy

from meshpilot.local.demo.echo import EchoServer

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: panicky
endpoints: [127.0.0.1:{p_good}, 127.0.0.1:{p_bad}]
outlier_detection: {{consecutive_5xx: 1, interval: 200ms, base_ejection_time: 300s,
                    max_ejection_percent: 100}}
panic_threshold: 60
---
kind: Service
name: calm
endpoints: [127.0.0.1:{c_good}, 127.0.0.1:{c_bad}]
outlier_detection: {{consecutive_5xx: 1, interval: 200ms, base_ejection_time: 300s,
                    max_ejection_percent: 100}}
panic_threshold: 0
---
kind: Gateway
name: edge
listeners: [{{name: http, port: {port}, address: 127.0.0.1}}]
---
kind: Route
name: r
gateway: edge
rules:
  - match: {{path: {{prefix: /panicky}}}}
    backends: [panicky]
  - match: {{path: {{prefix: /calm}}}}
    backends: [calm]
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Any]:
    servers = {name: EchoServer(name) for name in ("p_good", "p_bad", "c_good", "c_bad")}
    with served_policy(tmp_path_factory.mktemp("panic"), "policy.yaml", POLICY, servers
                       ) as running:
        for name in ("p_bad", "c_bad"):
            servers[name].forced_status = 503
        yield running


def _statuses(port: int, path: str, count: int) -> Counter[int]:
    return Counter(http_get(f"http://127.0.0.1:{port}{path}")[0] for _ in range(count))


def test_above_the_healthy_share_it_panics_at_zero_never(served: Any) -> None:
    port = served.ports["port"]
    for cluster in ("panicky", "calm"):
        def ejected(c: str = cluster) -> bool:
            _statuses(port, f"/{c}", 4)  # the failure that ejects the failing endpoint
            return served.envoy.stats().get(
                f"cluster.{c}.outlier_detection.ejections_active", 0) == 1

        eventually(ejected, timeout=60, what=f"{cluster}'s failing endpoint ejected")
    calm = _statuses(port, "/calm", 40)
    panicky = _statuses(port, "/panicky", 40)
    assert calm == Counter({200: 40}), calm
    assert panicky[503] > 0 and panicky[200] > 0, panicky
    stats = served.envoy.stats()
    assert stats.get("cluster.panicky.lb_healthy_panic", 0) > 0
    assert stats.get("cluster.calm.lb_healthy_panic", 0) == 0
