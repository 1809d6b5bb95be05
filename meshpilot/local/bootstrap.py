"""Envoy bootstrap rendering: the static config an Envoy needs to find meshpilot over ADS.

This module owns the shape of the bootstrap every meshpilot-managed Envoy starts from: node
identity, the admin listener, ADS (state-of-the-world or delta) for CDS and LDS, and the static
cluster that points at the meshpilot xDS replicas. Everything else (listeners, routes, clusters,
endpoints) arrives over xDS. Pure functions, no I/O: callers write the result where they like.
"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import yaml

__all__ = ["bootstrap_yaml", "render_bootstrap"]

_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# xDS is a handful of long-lived gRPC streams per Envoy, so Envoy's default circuit breaker
# (1024) is never the bottleneck for one proxy; a generous explicit limit documents that intent
# and keeps a future default change, or a burst of reconnects, from throttling configuration.
_XDS_CIRCUIT_BREAKER_LIMIT = 100_000

# A short connect timeout lets Envoy move to another replica quickly when one is down.
_XDS_CONNECT_TIMEOUT = "1s"

# HTTP/2 PINGs detect a dead control-plane connection (for example a replica whose node vanished
# without sending a FIN) long before TCP would, so Envoy reconnects to a live replica.
_XDS_KEEPALIVE = {"interval": "30s", "timeout": "5s"}

# Re-establishing a lost xDS stream: Envoy's default backoff (0.5 s, doubling up to 30 s) left a
# fleet without config for seconds after a replica crashed. Start at 50 ms, never wait more
# than 500 ms; Envoy's backoff is fully jittered (each wait drawn from [0, interval)), so a fleet
# that lost one replica spreads its reconnects instead of stampeding a survivor.
_XDS_RETRY_POLICY = {"retry_back_off": {"base_interval": "0.05s", "max_interval": "0.5s"}}

# Several replicas (addresses, or a DNS name with one address per replica): a TCP health check
# each second takes a dead one out of the xDS cluster, so a reconnect goes to a live replica (a
# refused connect is retried by the backoff meanwhile).
_XDS_HEALTH_CHECK = {"timeout": "0.5s", "interval": "1s", "interval_jitter": "0.1s",
                     "unhealthy_threshold": 1, "healthy_threshold": 1,
                     "no_traffic_interval": "1s", "tcp_health_check": {}}
# ...and sooner than the next check: the first connect to it that fails ejects it for a second
# (then the health check decides), so the retry after the backoff picks a live replica.
_XDS_OUTLIER_DETECTION = {"split_external_local_origin_errors": True,
                          "consecutive_local_origin_failure": 1,
                          "enforcing_consecutive_local_origin_failure": 100,
                          "interval": "1s", "base_ejection_time": "1s",
                          "max_ejection_time": "5s", "max_ejection_percent": 50}


def render_bootstrap(
    *,
    node_id: str,
    node_cluster: str,
    xds_addresses: list[tuple[str, int]],
    admin_address: tuple[str, int],
    delta: bool = False,
    xds_cluster_name: str = "meshpilot_xds",
    node_metadata: dict[str, Any] | None = None,
    ads: bool = True,
    xds_tls_ca: str | None = None,
    xds_tls_cert: str | None = None,
    xds_tls_key: str | None = None,
    xds_sni: str | None = None,
    xds_token: str | None = None,
    stats_flush_interval: float | None = None,
) -> dict[str, Any]:
    """Return an Envoy v3 bootstrap that takes CDS and LDS from meshpilot over one ADS stream.

    `xds_addresses` lists the meshpilot replicas as (host, port); hosts may be IP literals
    (cluster type STATIC) or DNS names (STRICT_DNS, every resolved address becomes a host).
    `delta` selects incremental xDS (DELTA_GRPC) instead of state-of-the-world (GRPC).
    `ads=False` gives CDS and LDS a stream each (per-type services) instead of one ADS stream.
    `xds_tls_ca` (a file path, read by Envoy) makes the xDS cluster speak TLS and trust that CA;
    `xds_tls_cert`/`xds_tls_key` add a client certificate (mutual TLS); `xds_sni` is sent as SNI
    and required as a DNS SAN of meshpilot's certificate (default: the xDS host, if every
    address names the same DNS host; with IP addresses only the CA is checked).
    `xds_token` (a node token, `meshpilot token create node VIEW`) is sent on every xDS stream
    as `authorization: Bearer` metadata: the bootstrap then holds a credential, so write it
    where only the Envoy can read it.
    `stats_flush_interval` (seconds) turns on Envoy's metrics service stats sink: every
    interval, the Envoy streams its stats to meshpilot over the xDS cluster (with the same
    token), where rollouts read its error rate; None: no stats sink.
    """
    if not node_id:
        raise ValueError("node_id must not be empty")
    if not node_cluster:
        raise ValueError("node_cluster must not be empty")
    if not xds_addresses:
        raise ValueError("xds_addresses must list at least one (host, port)")
    for host, port in [*xds_addresses, admin_address]:
        _check_address(host, port)
    if (xds_tls_cert is None) != (xds_tls_key is None):
        raise ValueError("xds_tls_cert and xds_tls_key go together")
    if xds_tls_ca is None and (xds_tls_cert or xds_sni):
        raise ValueError("a client certificate or SNI for xDS needs xds_tls_ca")

    cluster = _xds_cluster(xds_cluster_name, xds_addresses)
    if xds_tls_ca is not None:
        hosts = {host for host, _ in xds_addresses}
        if xds_sni is None and len(hosts) == 1 and not _is_ip_literal(next(iter(hosts))):
            xds_sni = next(iter(hosts))
        cluster["transport_socket"] = _xds_tls(xds_tls_ca, xds_tls_cert, xds_tls_key, xds_sni)
    out = {
        "node": _node(node_id, node_cluster, node_metadata),
        "admin": {"address": _socket_address(*admin_address)},
        "dynamic_resources": _dynamic_resources(xds_cluster_name, delta, ads, xds_token),
        "static_resources": {"clusters": [cluster]},
    }
    if stats_flush_interval is not None:
        if not 0.001 <= stats_flush_interval <= 300:
            raise ValueError("the stats flush interval is between 1ms and 300s (Envoy's range)")
        out["stats_sinks"] = [_metrics_service_sink(xds_cluster_name, xds_token)]
        out["stats_flush_interval"] = f"{stats_flush_interval:.3f}s"
    return out


_METRICS_SERVICE = "envoy.config.metrics.v3.MetricsServiceConfig"


def _metrics_service_sink(xds_cluster_name: str, token: str | None) -> dict[str, Any]:
    """Envoy's metrics service stats sink, to meshpilot's xDS port: the Envoy's stats with
    their tags as labels (`cluster.upstream_rq_xx{envoy_cluster_name=...}`), cumulative."""
    service: dict[str, Any] = {"envoy_grpc": {"cluster_name": xds_cluster_name}}
    if token is not None:
        service["initial_metadata"] = [{"key": "authorization", "value": f"Bearer {token}"}]
    return {"name": "envoy.stat_sinks.metrics_service",
            "typed_config": {"@type": f"type.googleapis.com/{_METRICS_SERVICE}",
                             "transport_api_version": "V3",
                             "emit_tags_as_labels": True,
                             "grpc_service": service}}


_UPSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def _xds_tls(ca: str, cert: str | None, key: str | None, sni: str | None) -> dict[str, Any]:
    """TLS to meshpilot: files by path (this is Envoy's own bootstrap, read before any xDS);
    ALPN h2, which gRPC servers require."""
    validation: dict[str, Any] = {"trusted_ca": {"filename": ca}}
    if sni:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "DNS", "matcher": {"exact": sni}}]
    common: dict[str, Any] = {"alpn_protocols": ["h2"], "validation_context": validation}
    if cert is not None and key is not None:
        common["tls_certificates"] = [{"certificate_chain": {"filename": cert},
                                       "private_key": {"filename": key}}]
    context: dict[str, Any] = {"@type": f"type.googleapis.com/{_UPSTREAM_TLS}",
                               "common_tls_context": common}
    if sni:
        context["sni"] = sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def bootstrap_yaml(**kwargs: Any) -> str:
    """The bootstrap of `render_bootstrap` (same keyword arguments) as YAML text.

    Keys keep the order `render_bootstrap` builds them in (node, admin, dynamic, static), which is
    deterministic, so the text is stable across runs and reads top-down.
    """
    bootstrap = render_bootstrap(**kwargs)
    return yaml.dump(bootstrap, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False)


class _PlainDumper(yaml.SafeDumper):
    """SafeDumper without anchors/aliases: a metadata object reused twice is written out twice."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _check_address(host: str, port: int) -> None:
    if not host:
        raise ValueError("address host must not be empty")
    # Port 0 is allowed: Envoy then picks a free port (useful for admin in tests).
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range for {host}: {port}")


def _node(node_id: str, node_cluster: str, metadata: dict[str, Any] | None) -> dict[str, Any]:
    node: dict[str, Any] = {"id": node_id, "cluster": node_cluster}
    if metadata:
        node["metadata"] = copy.deepcopy(metadata)
    return node


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _ads_source() -> dict[str, Any]:
    return {"ads": {}, "resource_api_version": "V3"}


def _grpc_api(xds_cluster_name: str, delta: bool, token: str | None = None) -> dict[str, Any]:
    service: dict[str, Any] = {"envoy_grpc": {"cluster_name": xds_cluster_name,
                                              "retry_policy": copy.deepcopy(_XDS_RETRY_POLICY)}}
    if token is not None:
        service["initial_metadata"] = [{"key": "authorization", "value": f"Bearer {token}"}]
    return {
        "api_type": "DELTA_GRPC" if delta else "GRPC",
        "transport_api_version": "V3",
        "grpc_services": [service],
        # The node is large (metadata, extensions list); sending it once per stream is enough.
        "set_node_on_first_message_only": True,
    }


def api_config_source(xds_cluster_name: str, delta: bool,
                      token: str | None = None) -> dict[str, Any]:
    """A config source for one xDS type on its own gRPC stream (no ADS): no ordering across
    types is guaranteed then, which is why ADS is the default."""
    return {"api_config_source": _grpc_api(xds_cluster_name, delta, token),
            "resource_api_version": "V3"}


def _dynamic_resources(xds_cluster_name: str, delta: bool, ads: bool = True,
                       token: str | None = None) -> dict[str, Any]:
    if not ads:
        source = api_config_source(xds_cluster_name, delta, token)
        return {"cds_config": source, "lds_config": source}
    return {
        "ads_config": _grpc_api(xds_cluster_name, delta, token),
        "cds_config": _ads_source(),
        "lds_config": _ads_source(),
    }


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _xds_cluster(name: str, addresses: list[tuple[str, int]]) -> dict[str, Any]:
    all_ips = all(_is_ip_literal(host) for host, _ in addresses)
    thresholds = {
        "max_connections": _XDS_CIRCUIT_BREAKER_LIMIT,
        "max_pending_requests": _XDS_CIRCUIT_BREAKER_LIMIT,
        "max_requests": _XDS_CIRCUIT_BREAKER_LIMIT,
        "max_retries": _XDS_CIRCUIT_BREAKER_LIMIT,
    }
    cluster: dict[str, Any] = {
        "name": name,
        # STATIC needs IP literals; STRICT_DNS resolves names (a headless Service gives one
        # address per replica) and keeps re-resolving as replicas come and go.
        "type": "STATIC" if all_ips else "STRICT_DNS",
        "connect_timeout": _XDS_CONNECT_TIMEOUT,
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            _HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_PROTOCOL_OPTIONS}",
                # gRPC needs HTTP/2; without this Envoy speaks HTTP/1.1 and ADS never starts.
                "explicit_http_config": {
                    "http2_protocol_options": {"connection_keepalive": dict(_XDS_KEEPALIVE)},
                },
            },
        },
        "circuit_breakers": {
            "thresholds": [
                {"priority": "DEFAULT", **thresholds},
                {"priority": "HIGH", **thresholds},
            ],
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket_address(host, port)}}
                        for host, port in addresses
                    ],
                },
            ],
        },
    }
    if len(addresses) > 1 or not all_ips:  # several replicas, or a name resolving to several
        cluster["health_checks"] = [dict(_XDS_HEALTH_CHECK)]
        cluster["outlier_detection"] = dict(_XDS_OUTLIER_DETECTION)
    if not all_ips:
        # Envoy's default (AUTO) prefers IPv6: c-ares answers ::1 for `localhost`, and a
        # dual-stack name would be dialled on IPv6 while servers commonly bind 0.0.0.0.
        # V4_PREFERRED still falls back to IPv6 on IPv6-only networks.
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    return cluster
