"""The xDS resource types meshpilot serves, their type URLs, and the order ADS pushes them in."""

from __future__ import annotations

_PREFIX = "type.googleapis.com/"

CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
# VHDS (`--vhds`, delta ADS only): a route configuration's virtual hosts as resources of their own.
VIRTUAL_HOST = _PREFIX + "envoy.config.route.v3.VirtualHost"

# Make before break (Envoy's xDS spec, "eventual consistency considerations"): clusters before
# the endpoints that fill them, both before the listeners and routes that send traffic to them.
# Secrets are requested by clusters and listeners as they warm, so they come last.
# A route configuration's VHDS virtual hosts follow it (Envoy subscribes to them once it holds
# the configuration).
ADS_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, VIRTUAL_HOST, SECRET)

# CDS and LDS subscriptions are wildcard by default; the others name what they want.
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})

SHORT_NAMES = {CLUSTER: "clusters", ENDPOINT: "endpoints", LISTENER: "listeners",
               ROUTE: "routes", SECRET: "secrets", VIRTUAL_HOST: "virtual_hosts"}
BY_SHORT_NAME = {short: url for url, short in SHORT_NAMES.items()}


def short_name(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.removeprefix(_PREFIX))
