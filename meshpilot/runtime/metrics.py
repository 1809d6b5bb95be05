"""Prometheus metrics of one meshpilot process, in a registry of its own (not the global one),
so that several servers in one process (tests, benchmarks) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connected = Gauge("meshpilot_xds_connected_streams",
                               "xDS streams open now", ["variant"], registry=r)
        self.responses = Counter("meshpilot_xds_responses_total",
                                 "Discovery responses sent", ["type"], registry=r)
        self.resources_sent = Counter("meshpilot_xds_resources_sent_total",
                                      "Resources carried by responses", ["type"], registry=r)
        self.bytes_sent = Counter("meshpilot_xds_bytes_sent_total",
                                  "Bytes of discovery responses sent", ["type"], registry=r)
        self.acks = Counter("meshpilot_xds_acks_total", "ACKs received", ["type"], registry=r)
        self.nacks = Counter("meshpilot_xds_nacks_total", "NACKs received (Envoy rejected config)",
                             ["type"], registry=r)
        self.stale = Counter("meshpilot_xds_stale_requests_total",
                             "Requests ignored for a stale nonce", ["type"], registry=r)
        self.policy_loads = Counter("meshpilot_policy_loads_total",
                                    "Policy loads by result (ok, rejected)", ["result"], registry=r)
        self.policy_valid = Gauge("meshpilot_policy_last_load_ok",
                                  "1 if the newest policy on disk loaded, 0 if it was rejected",
                                  registry=r)
        self.snapshot_builds = Histogram("meshpilot_snapshot_build_seconds",
                                         "Time to translate and serialize all views",
                                         registry=r,
                                         buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5,
                                                  5, 10))
        self.views = Gauge("meshpilot_views", "Views with a snapshot", registry=r)
        self.discovered_instances = Gauge("meshpilot_discovered_instances",
                                          "Discovered service instances, by source",
                                          ["source"], registry=r)
        self.discovery_updates = Counter("meshpilot_discovery_updates_total",
                                         "Discovered endpoint changes applied (EDS fast path)",
                                         registry=r)
