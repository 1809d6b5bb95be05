"""Istio documents once read: what each kind says, checked within the document, before any
other document is looked at (hosts are still as written, subsets not yet known to exist).

Each is an `IstioDocument` (a `context.PendingPart`): `compile.py` turns all of them together
into model parts. Frozen and comparable, so the parse of an unchanged document is reused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from meshpilot.inputs.context import PendingPart
from meshpilot.inputs.yamlsource import FieldPath
from meshpilot.ir.model import (
    CircuitBreaker,
    Cors,
    HashOn,
    HeaderOps,
    Labels,
    ListenerTls,
    LoadBalancer,
    LoadBalancerOptions,
    Match,
    OutlierDetection,
    Rule,
    TcpKeepalive,
    UnknownHosts,
    UpstreamTls,
)

# ---- ServiceEntry and WorkloadEntry -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Port:
    number: int
    name: str
    protocol: str  # upper case, as Istio writes it: HTTP, HTTP2, GRPC, TCP, ...
    target_port: int | None = None


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """A WorkloadEntry's spec, or one inline endpoint of a ServiceEntry."""

    address: str  # an IP or a DNS name
    ports: tuple[tuple[str, int], ...] = ()  # (port name, port)
    labels: Labels = ()
    service_account: str | None = None
    weight: int | None = None
    locality: str | None = None  # region/zone/subzone
    path: FieldPath = ()  # where it was written


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    hosts: tuple[str, ...]
    ports: tuple[Port, ...]
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"] = "NONE"
    location: Literal["MESH_INTERNAL", "MESH_EXTERNAL"] = "MESH_EXTERNAL"
    endpoints: tuple[WorkloadSpec, ...] = ()
    workload_selector: Labels | None = None
    subject_alt_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkloadEntry:
    spec: WorkloadSpec
    app: tuple[str, int] | None = None  # annotation meshpilot.io/app: where the application is
    # The annotation's `PORT=ADDRESS` form: where the application of each named inbound port
    # listens (a port it does not name: 127.0.0.1:<that port>), sorted by port.
    app_ports: tuple[tuple[int, tuple[str, int]], ...] = ()
    outbound_port: int | None = None  # annotation meshpilot.io/outbound-port (default 15001)


# ---- VirtualService ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Destination:
    host: str  # as written
    subset: str | None = None
    port: int | None = None
    weight: int = 100
    path: FieldPath = ()  # the destination's mapping
    # An http route destination's own header changes (`route[].headers`); None: none.
    request_headers: HeaderOps | None = None
    response_headers: HeaderOps | None = None


@dataclass(frozen=True, slots=True)
class HttpMatch:
    match: Match  # what the IR can say of it
    port: int | None = None  # only for the service port (or gateway listener) of this number
    gateways: tuple[str, ...] = ()  # only for these gateways ("mesh": the sidecars)
    # Only for callers (the proxy the route is built for) with these labels / in this
    # namespace; ignored when `gateways` is written (Istio's sourceMatchHTTP).
    source_labels: Labels = ()
    source_namespace: str | None = None

    @property
    def by_source(self) -> bool:
        return not self.gateways and (bool(self.source_labels)
                                      or self.source_namespace is not None)

    def applies_to(self, labels: Labels, namespace: str) -> bool:
        """Whether this match is kept for a proxy with these labels in this namespace."""
        return all(kv in labels for kv in self.source_labels) and (
            self.source_namespace is None or self.source_namespace == namespace)


@dataclass(frozen=True, slots=True)
class MirrorSpec:
    destination: Destination
    percentage: float = 100.0


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """One `http` entry: its matches and what the IR rule says, backends and mirrors left to
    compile (their hosts are resolved against the ServiceEntries)."""

    matches: tuple[HttpMatch, ...]  # empty: every request
    rule: Rule
    destinations: tuple[Destination, ...] = ()
    mirrors: tuple[MirrorSpec, ...] = ()
    cors: Cors | None = None
    path: FieldPath = ()
    written: frozenset[str] = frozenset()  # the keys written (what a delegate inherits)
    delegate: tuple[str, str | None] | None = None  # (name, namespace): its routes instead


@dataclass(frozen=True, slots=True)
class L4Match:
    """A `tcp` or `tls` route's match: the service or gateway port, gateways, the caller, and
    (tls) the SNI."""

    port: int | None = None
    gateways: tuple[str, ...] = ()
    source_labels: Labels = ()
    source_namespace: str | None = None
    sni_hosts: tuple[str, ...] = ()  # tls only (required there)
    path: FieldPath = ()
    destination_subnets: tuple[str, ...] = ()  # networks (`10.0.0.0/8`): the address dialled
    source_subnet: tuple[str, ...] = ()  # tcp only: the client's network (one, or none)

    def applies_to_proxy(self, labels: Labels, namespace: str) -> bool:
        return all(kv in labels for kv in self.source_labels) and (
            self.source_namespace is None or self.source_namespace == namespace)


@dataclass(frozen=True, slots=True)
class L4Route:
    """One `tcp` or `tls` entry: its matches (empty: every connection) and where to."""

    kind: Literal["tcp", "tls"]
    matches: tuple[L4Match, ...]
    destinations: tuple[Destination, ...]
    path: FieldPath = ()


@dataclass(frozen=True, slots=True)
class VirtualService:
    hosts: tuple[str, ...]
    gateways: tuple[str, ...] = ("mesh",)
    http: tuple[HttpRoute, ...] = ()
    tls: tuple[L4Route, ...] = ()  # before tcp: SNI chains are tried before the catch-all
    tcp: tuple[L4Route, ...] = ()


# ---- DestinationRule -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalitySetting:
    """`loadBalancer.localityLbSetting` as written (compile decides what applies: Istio's
    failover needs outlier detection)."""

    enabled: bool | None = None
    distribute: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()
    failover: tuple[tuple[str, str], ...] = ()
    failover_priority: tuple[str, ...] = ()
    path: FieldPath = ()


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    load_balancer: LoadBalancer | None = None
    load_balancer_options: LoadBalancerOptions = LoadBalancerOptions()  # noqa: RUF009 (frozen)
    hash_on: tuple[HashOn, ...] = ()  # consistentHash: the routes to the service hash on these
    circuit_breaker: CircuitBreaker | None = None
    connect_timeout: float | None = None
    max_requests_per_connection: int | None = None
    outlier_detection: OutlierDetection | None = None
    tls_mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] | None = None
    tls: UpstreamTls | None = None  # SIMPLE, MUTUAL
    # The blocks written (loadBalancer, connectionPool, outlierDetection, tls): a subset's
    # policy replaces those of the DestinationRule's, block by block (Istio's merge).
    written: frozenset[str] = frozenset()
    locality: LocalitySetting | None = None  # loadBalancer.localityLbSetting
    # connectionPool's connection lifetimes and keepalive, as the model's Service fields.
    connection_idle_timeout: float | None = None
    max_connection_duration: float | None = None
    max_concurrent_streams: int | None = None
    tcp_keepalive: TcpKeepalive | None = None
    panic_threshold: float | None = None  # outlierDetection.minHealthPercent (0 if unwritten)
    # tls.credentialName and where it is written: compile.py fills `tls` from the Secret.
    tls_credential: tuple[str, FieldPath] | None = None
    # ISTIO_MUTUAL's subjectAltNames: the SPIFFE IDs the endpoint's certificate may carry
    # (one of them), in place of its workloads' own
    mesh_sans: tuple[str, ...] = ()

    def under(self, subset: TrafficPolicy) -> TrafficPolicy:
        """This policy with `subset`'s blocks in place of its own (MergeTrafficPolicy)."""
        if not subset.written:
            return self
        fields: dict[str, object] = {}
        for block, names in _BLOCKS.items():
            source = subset if block in subset.written else self
            fields.update((name, getattr(source, name)) for name in names)
        return TrafficPolicy(**fields, written=self.written | subset.written)  # type: ignore[arg-type]


_BLOCKS = {"loadBalancer": ("load_balancer", "load_balancer_options", "hash_on", "locality"),
           "connectionPool": ("circuit_breaker", "connect_timeout",
                              "max_requests_per_connection", "connection_idle_timeout",
                              "max_connection_duration", "max_concurrent_streams",
                              "tcp_keepalive"),
           "outlierDetection": ("outlier_detection", "panic_threshold"),
           "tls": ("tls_mode", "tls", "tls_credential", "mesh_sans")}


@dataclass(frozen=True, slots=True)
class SubsetPolicy:
    """A subset's own trafficPolicy (and its portLevelSettings)."""

    policy: TrafficPolicy
    port_policies: tuple[tuple[int, TrafficPolicy], ...] = ()


@dataclass(frozen=True, slots=True)
class DestinationRule:
    host: str
    subsets: tuple[tuple[str, Labels], ...] = ()
    policy: TrafficPolicy = TrafficPolicy()
    port_policies: tuple[tuple[int, TrafficPolicy], ...] = ()  # portLevelSettings
    subset_policies: tuple[tuple[str, SubsetPolicy], ...] = ()  # subsets' own trafficPolicy


# ---- Sidecar -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EgressPort:
    """A Sidecar egress listener with a `port`: its hosts' services of that port number, on a
    Host-routed listener 127.0.0.1:number of their own (http), or on their local ports (tcp)."""

    number: int
    protocol: Literal["http", "tcp"]
    hosts: tuple[tuple[str, str], ...]  # as SidecarScope.egress_hosts
    path: FieldPath  # its `port`, where an issue with it is reported


@dataclass(frozen=True, slots=True)
class SidecarScope:
    """A Sidecar resource: which services the workloads it selects receive."""

    selector: Labels | None
    # (namespace or "*" "." "~", host pattern), of the egress listeners without a port
    egress_hosts: tuple[tuple[str, str], ...]
    # outboundTrafficPolicy.mode (ALLOW_ANY: passthrough); None: MeshConfig's, else ALLOW_ANY.
    unknown_hosts: UnknownHosts | None = None
    egress_ports: tuple[EgressPort, ...] = ()  # the egress listeners with a port


# ---- Gateway -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credential:
    """A server's `credentialName` (or `credentialNames`): Secrets of the gateway's namespace
    that compile.py reads, for tls mode SIMPLE, MUTUAL or OPTIONAL_MUTUAL."""

    names: tuple[str, ...]
    mutual: bool = False
    min_version: Literal["1.2", "1.3"] | None = None
    path: FieldPath = ()  # the server's tls
    optional: bool = False  # OPTIONAL_MUTUAL: a client may go without a certificate
    client_sans: tuple[tuple[Literal["dns", "uri"], str], ...] = ()  # subjectAltNames


@dataclass(frozen=True, slots=True)
class Server:
    port: int
    port_name: str
    protocol: Literal["HTTP", "HTTPS", "TCP", "TLS"]  # TLS: passthrough, or `terminates`
    hosts: tuple[str, ...]  # without any namespace/ prefix
    tls: ListenerTls | None = None
    https_redirect: bool = False
    bind: str | None = None
    path: FieldPath = ()
    credential: Credential | None = None  # TLS from Secrets, in place of `tls`
    # tls mode AUTO_PASSTHROUGH (a TLS server): routed by SNI `outbound_.PORT_.SUBSET_.HOST`
    # to that service, no VirtualService needed (Istio's east-west gateway)
    auto_passthrough: bool = False
    # tls mode ISTIO_MUTUAL: TLS ended with the gateway's mesh identity, a mesh client
    # certificate required (the built-in CA's), in place of `tls` and `credential`
    mesh_mutual: bool = False

    @property
    def terminates(self) -> bool:
        """A TLS server whose TLS the gateway ends (SIMPLE, MUTUAL, ISTIO_MUTUAL, ...): the
        plaintext stream goes by the `tcp` routes, as Istio's."""
        return self.protocol == "TLS" and (self.tls is not None or self.credential is not None
                                           or self.mesh_mutual)


@dataclass(frozen=True, slots=True)
class IstioGateway:
    selector: Labels
    servers: tuple[Server, ...]
    # the `proxy.istio.io/config` annotation's numTrustedProxies (None: not said), and the
    # ProxyConfig fields it writes that are not applied
    trusted_proxies: int | None = None
    proxy_ignored: tuple[str, ...] = ()


# ---- security ------------------------------------------------------------------------------------

MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE", "UNSET"]


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    selector: Labels | None
    mode: MtlsMode = "UNSET"
    port_modes: tuple[tuple[int, MtlsMode], ...] = ()


@dataclass(frozen=True, slots=True)
class Source:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()  # "namespace/name" or "name" (the policy's)
    not_service_accounts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Condition:
    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


CLAIMS_KEY = "request.auth.claims"
FILTERS_KEY = "experimental.envoy.filters."


def claim_path(key: str) -> tuple[str, ...] | None:
    """`request.auth.claims[a]` or, nested, `[a][b]...`: the claim's path (None: neither)."""
    brackets = key[len(CLAIMS_KEY):]
    if not key.startswith(CLAIMS_KEY) or not re.fullmatch(r"(\[[^\[\]]+\])+", brackets):
        return None
    return tuple(re.findall(r"\[([^\[\]]+)\]", brackets))


def filter_metadata_key(key: str) -> tuple[str, str] | None:
    """`experimental.envoy.filters.<filter>[<key>]`: (the filter's name, the key of its
    dynamic metadata), as Istio's builder splits it; None for anything else (nested keys
    too, which Istio's builder would read as one key holding brackets)."""
    found = re.fullmatch(r"experimental\.(envoy\.filters\.[^\[\]]*[^.\[\]])\[([^\[\]]+)\]", key)
    return (found[1], found[2]) if found else None


@dataclass(frozen=True, slots=True)
class AuthzRuleSpec:
    sources: tuple[Source, ...] | None = None  # None: `from` not written (any source)
    operations: tuple[Operation, ...] | None = None
    when: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    selector: Labels | None
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    rules: tuple[AuthzRuleSpec, ...] = ()
    dry_run: bool = False  # annotation istio.io/dry-run: "true": evaluated, never enforced
    provider: str | None = None  # CUSTOM: the MeshConfig extension provider's name


@dataclass(frozen=True, slots=True)
class JwtRule:
    issuer: str
    jwks: str | None = None
    jwks_uri: str | None = None
    audiences: tuple[str, ...] = ()
    from_headers: tuple[tuple[str, str], ...] = ()  # (name, prefix)
    from_params: tuple[str, ...] = ()
    forward_original_token: bool = False
    output_payload_to_header: str | None = None
    from_cookies: tuple[str, ...] = ()
    output_claim_to_headers: tuple[tuple[str, str], ...] = ()  # (claim, header)


@dataclass(frozen=True, slots=True)
class RequestAuthentication:
    selector: Labels | None
    rules: tuple[JwtRule, ...] = ()


Spec = (ServiceEntry | WorkloadEntry | VirtualService | DestinationRule | IstioGateway
        | PeerAuthentication | AuthorizationPolicy | RequestAuthentication | SidecarScope)


@dataclass(frozen=True, slots=True)
class IstioDocument(PendingPart):
    """One Istio document: its kind, where it lives (namespace) and its spec."""

    kind: str
    namespace: str
    name: str
    labels: Labels
    spec: Spec
