"""A rendered view's resources as a static Envoy bootstrap, for `envoy --mode validate`: the
golden, translator and fuzz tests check with Envoy itself that what meshpilot generates is
accepted."""

from __future__ import annotations

import copy
from typing import Any

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# The management server the checked bootstrap's EDS clusters point at: never contacted, since
# validation does not start xDS, but required for an `ads: {}` config source to be valid.
XDS_CLUSTER = "meshpilot_xds"


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
