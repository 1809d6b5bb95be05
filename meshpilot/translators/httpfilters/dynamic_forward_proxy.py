"""Unknown hosts passed through (a sidecar's `unknown_hosts: passthrough`, Istio's ALLOW_ANY):
Envoy's dynamic forward proxy filter, in the Host-routed outbound chain only.

The outbound port's catch-all virtual host sends a Host no callee answers to to the
`dynamic_forward_proxy` cluster (`sidecar.py`); this filter, just before the router, resolves
that Host (host:port, port 80 when none) through the DNS cache both share, so the cluster
connects where the application addressed. For a route to any other cluster it does nothing.
"""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.extensions.clusters.dynamic_forward_proxy.v3.cluster_pb2 import ClusterConfig
from envoy.extensions.common.dynamic_forward_proxy.v3.dns_cache_pb2 import DnsCacheConfig
from envoy.extensions.filters.http.dynamic_forward_proxy.v3.dynamic_forward_proxy_pb2 import (
    FilterConfig,
)

from meshpilot.translators.httpfilters.feature import (
    ChainInputs,
    HttpFeature,
    HttpFilter,
    http_filter,
)

DYNAMIC_FORWARD_PROXY = "envoy.filters.http.dynamic_forward_proxy"
CLUSTER_TYPE = "envoy.clusters.dynamic_forward_proxy"
DNS_CACHE = "outbound"  # one per Envoy: the filter and the cluster must name the same


def dns_cache() -> DnsCacheConfig:
    return DnsCacheConfig(name=DNS_CACHE, dns_lookup_family=Cluster.V4_PREFERRED)


def cluster_config() -> ClusterConfig:
    """The passthrough cluster's `cluster_type` config (its DNS cache, the filter's)."""
    return ClusterConfig(dns_cache_config=dns_cache())


class DynamicForwardProxyFeature(HttpFeature):
    def filters(self, chain: ChainInputs) -> list[HttpFilter]:
        if not chain.passthrough:
            return []
        return [http_filter(DYNAMIC_FORWARD_PROXY, FilterConfig(dns_cache_config=dns_cache()))]


FEATURE = DynamicForwardProxyFeature()
