"""Prometheus metrics of one meshpilot process, in a registry of its own (not the global one),
so that several servers in one process (tests, benchmarks) never share counters.

The xDS streams' metrics are defined next to the code that records them (`XdsMetrics`,
meshpilot/xds/server.py); these are the policy's, the views' and discovery's, in the same
registry.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from meshpilot.xds.server import XdsMetrics


class Metrics(XdsMetrics):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.policy_loads = Counter("meshpilot_policy_loads_total",
                                    "Policy loads by result (ok, rejected; superseded: a "
                                    "refused first reload of files being written, replaced "
                                    "by the reload of the finished writes)", ["result"],
                                    registry=r)
        self.policy_valid = Gauge("meshpilot_policy_last_load_ok",
                                  "1 if the newest policy on disk loaded, 0 if it was rejected",
                                  registry=r)
        self.snapshot_builds = Histogram("meshpilot_snapshot_build_seconds",
                                         "Time to translate and serialize all views",
                                         registry=r,
                                         buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5,
                                                  5, 10))
        self.edit_convergence = Histogram(
            "meshpilot_edit_convergence_seconds",
            "Per policy edit: from the first file event to the last connected Envoy's ACK",
            registry=r, buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.views = Gauge("meshpilot_views", "Views with a snapshot", registry=r)
        self.discovered_instances = Gauge("meshpilot_discovered_instances",
                                          "Discovered service instances, by source",
                                          ["source"], registry=r)
        self.discovery_updates = Counter("meshpilot_discovery_updates_total",
                                         "Discovered endpoint changes applied (EDS fast path)",
                                         registry=r)
