"""The names of generated Envoy resources: the one place they are made.

Every translator asks this module for a name, and so does any reader that needs to find a
generated resource again (a route names its cluster, a cluster names its EDS assignment, a
listener names its route configuration). Names are readable and stable: they come from the
policy's own names, never from hashes or counters, so a resource keeps its name (and Envoy keeps
its state: stats, connection pools, health) when the rest of the policy changes.

It must not build messages or look at anything but the names it is given.

    cluster of service `reviews`                      reviews
    cluster of subset `v2` of `reviews`               reviews/v2
    a backend that does not resolve (never made)      unresolved|ns/name:80
    EDS service name of a cluster                     the cluster's name
    listener `http` of gateway `edge`                 edge/http
    route configuration of that listener              edge/http
    ... of its TLS host `b` (one filter chain by SNI) edge/https/b
    HTTP connection manager stat prefix               edge/http
    virtual host of Route `shop`                      shop
    route entry of rule 0 of `shop`                   shop/rules[0]
    ... of its match 1, when the rule has several     shop/rules[0]/match[1]
"""

from __future__ import annotations

from collections.abc import Callable

# Names stay unique only while the separator is kept out of native policy names: a service "a/b"
# would clash with subset "b" of service "a". The native language rejects "/" in names; the
# Gateway API's Services (`NS/NAME:PORT`) have no subsets, and `service_of_cluster` knows them.
SEPARATOR = "/"


def cluster(service: str, subset: str | None = None) -> str:
    """The cluster of a whole service, or of one of its subsets."""
    return service if subset is None else f"{service}{SEPARATOR}{subset}"


_PRIMARY = "|primary"


def failover_primary(service: str) -> str:
    """The cluster of a Service's own endpoints when its cluster (named like the service) is
    the aggregate that fails over to other Services ("|" is in no policy name)."""
    return f"{service}{_PRIMARY}"


def service_of_cluster(cluster_name: str, is_service: Callable[[str], bool]) -> str:
    """The Service a cluster of `cluster`, `failover_primary` or a subset belongs to.

    A Service compiled from a Gateway API backend is named `NS/NAME:PORT`: a cluster named
    like a Service is that Service's, whatever separators its name holds (`is_service` says
    which names are); only the others are a subset's or a failover's."""
    if is_service(cluster_name):
        return cluster_name
    return cluster_name.removesuffix(_PRIMARY).partition(SEPARATOR)[0]


def unresolved_cluster(service: str) -> str:
    """The cluster a backend that does not resolve is named by (Gateway API): no such cluster
    is ever made, so Envoy answers its share of requests with the route's
    cluster_not_found_response_code. "|" is in no policy name, and nothing else uses the
    prefix."""
    return f"unresolved|{service}"


def eds_service(cluster_name: str) -> str:
    """The ClusterLoadAssignment an EDS cluster asks for: named like the cluster, so the two are
    found together in config dumps and an endpoint change pushes exactly one assignment."""
    return cluster_name


def listener(gateway: str, listener_name: str) -> str:
    return f"{gateway}{SEPARATOR}{listener_name}"


def route_config(gateway: str, listener_name: str) -> str:
    """One route configuration per listener, named like it."""
    return listener(gateway, listener_name)


def tls_host_routes(gateway: str, listener_name: str, host: str) -> str:
    """The route configuration of one TLS host of a listener (`GatewayListener.tls_hosts`):
    the filter chain of the connections whose SNI it takes reads this one."""
    return f"{listener(gateway, listener_name)}{SEPARATOR}{host}"


def stat_prefix(gateway: str, listener_name: str) -> str:
    """The HTTP connection manager's stat prefix: the listener's name, so its stats
    (`http.edge/http.downstream_rq_2xx`) point at the listener they are about."""
    return listener(gateway, listener_name)


def virtual_host(route: str) -> str:
    return route


def route_entry(route: str, rule_index: int, match_index: int | None = None) -> str:
    """A route entry: a rule of a Route, and which of its matches when it has several."""
    name = f"{route}{SEPARATOR}rules[{rule_index}]"
    return name if match_index is None else f"{name}{SEPARATOR}match[{match_index}]"


def header_chosen_mirror(entry: str, candidate: str) -> str:
    """The copy of a route entry taken when the mirror header names `candidate`."""
    return f"{entry}{SEPARATOR}mirror[{candidate}]"


# ---- sidecars (translators/sidecar.py, docs/mesh.md) --------------------------------------------
#
#     inbound listener of the sidecar of `reviews`      inbound/reviews   (and its stat prefix
#                                                                          and inline routes)
#     cluster of the local application of `reviews`     inbound|reviews   ("|" is never in a
#                                                                          policy name: no clash
#                                                                          with a subset cluster)
#     local-port listener for called service `ratings`  outbound/ratings  (and its route config)
#     Host-routed outbound listener                     outbound          (and its route config)
#     a further one, on egress port 9080 (Istio)        outbound:9080     (and its route config)
#     virtual host of a called service `ratings`        ratings
#     route entry when no Route is attached to ratings  ratings/default

OUTBOUND = "outbound"
# The outbound port's catch-all for unknown hosts (`Sidecar.unknown_hosts`): its virtual host
# (no policy name has `|`, so no callee's clashes), and the clusters it sends to, Istio's
# PassthroughCluster and BlackHoleCluster ("|": never a Service's cluster).
UNKNOWN_HOSTS = "outbound|unknown"
PASSTHROUGH_CLUSTER = "outbound|passthrough"
BLACKHOLE_CLUSTER = "outbound|blackhole"


def inbound(service: str, port: int | None = None) -> str:
    """A sidecar's inbound listener and route configuration; `port` names a further inbound
    port's (`inbound/reviews:15007`), the first one's has none."""
    return f"inbound{SEPARATOR}{service}" + ("" if port is None else f"{PORT_MARK}{port}")


def inbound_cluster(service: str, port: int | None = None) -> str:
    """The application behind a sidecar's (first, or further `port`) inbound port."""
    return f"inbound|{service}" + ("" if port is None else f"{PORT_MARK}{port}")


# Between a service's name and a further inbound port's number (native names have no `:`).
PORT_MARK = ":"


def outbound(service: str) -> str:
    return f"{OUTBOUND}{SEPARATOR}{service}"


def egress_port(port: int) -> str:
    """A further Host-routed outbound listener's (`Call.egress_port`) and its route config's:
    `outbound:9080` (no `/`, so never a local port's `outbound/<callee>`)."""
    return f"{OUTBOUND}{PORT_MARK}{port}"


def default_route_entry(service: str) -> str:
    return f"{service}{SEPARATOR}default"
