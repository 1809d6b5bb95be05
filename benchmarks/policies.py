"""Policy text for the benchmarks: raw `kind: EnvoyResources` documents.

- `route_flip_policy`: one EDS cluster per echo backend, one HTTP listener on port 0 (each Envoy
  binds its own free port) and an RDS route sending `/` to one backend: the convergence scenario
  flips that route. Same shape as `tests/support.py::raw_policy`, kept here so the benchmarks do
  not import from the test tree.
- `many_clusters_policy`: N EDS clusters, each with a ClusterLoadAssignment (one or more static
  endpoints), optionally one listener and one route configuration with a route per cluster: the
  fan-out and translation scenarios load it.
"""

from __future__ import annotations

_HCM = ("type.googleapis.com/"
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager")
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_ADS = "{ads: {}, resource_api_version: V3}"


def cluster_name(index: int) -> str:
    return f"svc-{index:05d}"


def route_flip_policy(*, backends: dict[str, int], route_to: str, edit: int | None = None) -> str:
    """`edit`: a number put in a response header of the route, so that every edit is new
    content (a check cached by content hash cannot answer it from an earlier edit)."""
    header = ("" if edit is None else "\n            response_headers_to_add:"
              f" [{{header: {{key: x-edit, value: '{edit}'}}}}]")
    clusters = "".join(
        f"\n  - {{name: {name}, type: EDS, connect_timeout: 1s,"
        f" eds_cluster_config: {{eds_config: {_ADS}}}}}" for name in backends)
    endpoints = "".join(
        f"\n  - {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address:"
        f" {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}"
        for name, port in backends.items())
    return f"""kind: EnvoyResources
name: bench
clusters:{clusters}
endpoints:{endpoints}
listeners:
  - name: http
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
      - filters:
          - name: envoy.filters.network.http_connection_manager
            typed_config:
              "@type": {_HCM}
              stat_prefix: bench
              rds: {{route_config_name: routes, config_source: {_ADS}}}
              http_filters:
                - name: envoy.filters.http.router
                  typed_config: {{"@type": {_ROUTER}}}
routes:
  - name: routes
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{prefix: /}}
            route: {{cluster: {route_to}}}{header}
"""


def many_clusters_policy(count: int, *, endpoints_per_cluster: int = 1,
                         with_routes: bool = False, first: int = 0, name: str = "bench") -> str:
    """`count` EDS clusters (`svc-00000`...) each with its ClusterLoadAssignment.

    Endpoints are 127.0.0.x:port literals nobody listens on: nothing here sends traffic.
    `first` offsets the cluster numbers, so a large policy can be split into several files.
    """
    lines = ["kind: EnvoyResources", f"name: {name}", "clusters:"]
    for i in range(first, first + count):
        lines.append(f"  - {{name: {cluster_name(i)}, type: EDS, connect_timeout: 1s,"
                     f" eds_cluster_config: {{eds_config: {_ADS}}}}}")
    lines.append("endpoints:")
    for i in range(first, first + count):
        eps = ", ".join(
            f"{{endpoint: {{address: {{socket_address: {{address: 127.0.{(i >> 8) & 255}.{i & 255},"
            f" port_value: {8000 + e}}}}}}}}}" for e in range(endpoints_per_cluster))
        lines.append(f"  - {{cluster_name: {cluster_name(i)},"
                     f" endpoints: [{{lb_endpoints: [{eps}]}}]}}")
    if with_routes:
        lines += [
            "listeners:",
            "  - name: http",
            "    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}",
            "    filter_chains:",
            "      - filters:",
            "          - name: envoy.filters.network.http_connection_manager",
            "            typed_config:",
            f'              "@type": {_HCM}',
            "              stat_prefix: bench",
            f"              rds: {{route_config_name: routes, config_source: {_ADS}}}",
            "              http_filters:",
            "                - name: envoy.filters.http.router",
            f'                  typed_config: {{"@type": {_ROUTER}}}',
            "routes:",
            "  - name: routes",
            "    virtual_hosts:",
            "      - name: all",
            '        domains: ["*"]',
            "        routes:",
        ]
        for i in range(first, first + count):
            lines.append(f"          - {{match: {{prefix: /{cluster_name(i)}/}},"
                         f" route: {{cluster: {cluster_name(i)}}}}}")
    return "\n".join(lines) + "\n"


def services_policy(count: int, *, first: int = 0) -> str:
    """`count` Services (`svc-00000`...), each with two endpoints in subsets v1 and v2, and a Route
    each on one Gateway (host `svc-00000.example.com`) splitting 90/10 between the subsets: the
    policy language's own workload, as the issue's "N services with a route each"."""
    docs = []
    if first == 0:
        docs.append("kind: Gateway\nname: edge\nlisteners:\n  - {name: http, port: 10000}\n")
    for i in range(first, first + count):
        name = cluster_name(i)
        a, b = f"127.0.{(i >> 8) & 255}.{i & 255}", f"127.1.{(i >> 8) & 255}.{i & 255}"
        docs.append(
            f"kind: Service\nname: {name}\nendpoints:\n"
            f"  - {{address: '{a}:8000', labels: {{version: v1}}}}\n"
            f"  - {{address: '{b}:8000', labels: {{version: v2}}}}\n"
            f"subsets: {{v1: {{version: v1}}, v2: {{version: v2}}}}\n")
        docs.append(
            f"kind: Route\nname: {name}\ngateway: edge\nhosts: [{name}.example.com]\nrules:\n"
            f"  - match: {{path: {{prefix: /}}}}\n"
            f"    backends: [{{service: {name}, subset: v1, weight: 90}},"
            f" {{service: {name}, subset: v2, weight: 10}}]\n"
            f"    timeout: 2s\n")
    return "---\n".join(docs)


# The escape hatch that lets ten Envoys of one gateway view share a machine: a raw listener of the
# generated listener's name (`edge/http`) replaces it, bound to port 0 (each Envoy its own port).
GATEWAY_LISTENER_ON_PORT_0 = f"""---
kind: EnvoyResources
name: listener-on-port-0
listeners:
  - name: edge/http
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
      - filters:
          - name: envoy.filters.network.http_connection_manager
            typed_config:
              "@type": {_HCM}
              stat_prefix: edge
              rds: {{route_config_name: edge/http, config_source: {_ADS}}}
              http_filters:
                - name: envoy.filters.http.router
                  typed_config: {{"@type": {_ROUTER}}}
"""


def language_flip_policy(*, backends: dict[str, int], route_to: str,
                         edit: int | None = None) -> str:
    """The same flip in the policy language: a Service with one subset per backend, a Gateway and
    a Route to subset `route_to`. The Gateway's listener is replaced (the raw-resource escape
    hatch) by one on port 0 of the same name, so that ten Envoys on one machine can each bind.
    `edit`: as for route_flip_policy, a response header making every edit new content."""
    header = "" if edit is None else f"\n    response_headers: {{set: {{x-edit: '{edit}'}}}}"
    endpoints = "".join(f"\n  - {{address: 127.0.0.1:{port}, labels: {{version: {name}}}}}"
                        for name, port in backends.items())
    subsets = ", ".join(f"{name}: {{version: {name}}}" for name in backends)
    return f"""kind: Service
name: app
endpoints:{endpoints}
subsets: {{{subsets}}}
---
kind: Gateway
name: edge
listeners: [{{name: http, port: 10000}}]
---
kind: Route
name: flip
gateway: edge
rules:
  - backends: [{{service: app, subset: {route_to}}}]{header}
""" + GATEWAY_LISTENER_ON_PORT_0
