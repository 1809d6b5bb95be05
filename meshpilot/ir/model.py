"""The model: the immutable intermediate representation every input format is loaded into.

Translators read only this. It holds no I/O handles and is never mutated after loading, so one
model can be shared by every view and every thread. Every value here is already validated and
normalized (durations in seconds, addresses split, defaults filled in): translators never
re-check user input.

Elements carry their `Origin` (file, line, column, the document and the field path they were
written at), so that later stages (a check across documents, Envoy's NACK) can point back at the
place, whatever format it was written in. Origins are left out of equality and hashing
(`compare=False`): two elements that say the same thing are equal wherever they were written,
and model equality (incremental loads equal cold ones) stays about meaning. An element made by
code rather than read from a document (a default, a discovered endpoint) has no origin.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from typing import Literal

from google.protobuf.message import Message

from meshpilot.base.errors import PolicyIssue, Position

_NAME = attrgetter("name")  # a model's index by name is made in C (thousands of parts)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an element was written: the position of its field, the document it is part of
    (kind and name) and the field's path in that document, as issues show it."""

    position: Position
    kind: str  # the document's kind: "Route"
    name: str | None  # the document's name: "shop"
    field: str = ""  # "rules[1].backends[0]"; empty: the document itself

    def issue(self, message: str) -> PolicyIssue:
        """An issue about this element, worded as the parsers word theirs
        (`routes.yaml:14:7: Route shop: rules[1].backends[0]: message`)."""
        return PolicyIssue(message, self.position, self.kind, self.name, self.field)

    def __str__(self) -> str:
        return str(self.position)


Labels = tuple[tuple[str, str], ...]  # sorted (key, value) pairs: hashable and deterministic
Protocol = Literal["http", "http2", "grpc", "tcp"]
# What a sidecar's Host-routed outbound port does with a Host no callee answers to:
# `passthrough` sends it to that host and port as written (Istio's ALLOW_ANY), `refuse`
# answers 502 (Istio's REGISTRY_ONLY).
UnknownHosts = Literal["passthrough", "refuse"]
LoadBalancer = Literal["round_robin", "least_request", "random", "ring_hash", "maglev"]


@dataclass(frozen=True, slots=True)
class RawResource:
    """An Envoy resource written by hand in a `kind: EnvoyResources` document.

    `message` is a parsed, schema-checked protobuf; treat it as read-only. `views` restricts which
    node views receive it (None: every view).
    """

    type_url: str
    name: str
    message: Message
    position: Position
    document: str  # the EnvoyResources document's name
    views: frozenset[str] | None = None
    origin: Origin | None = field(default=None, compare=False, repr=False)


# ---- Service ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str  # an IP literal, or a DNS name (the service's endpoints are then resolved by Envoy)
    port: int
    labels: Labels = ()
    weight: int | None = None  # load-balancing weight, 1..128 (Envoy's range)
    region: str | None = None  # locality: endpoints are grouped by (priority, region, zone)
    zone: str | None = None
    priority: int = 0  # 0 is preferred; higher priorities get traffic when lower ones fail
    sub_zone: str | None = None  # the third level of a locality (Istio's subzone)
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # The SPIFFE path (`ns/<namespace>/sa/<account>`) of a mesh workload behind this endpoint:
    # callers speak mTLS to it (Istio's auto mTLS) when every endpoint of the cluster has one.
    mtls_identity: str | None = None

    @property
    def is_dns(self) -> bool:
        return not _is_ip_literal(self.host)


@lru_cache(maxsize=65536)  # asked several times per endpoint per translation; hosts recur
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def clear_caches() -> None:
    """Empty this module's memo tables (they hold every host of the policies that filled
    them): after a large policy is replaced by a small one."""
    _is_ip_literal.cache_clear()


@dataclass(frozen=True, slots=True)
class HealthCheck:
    kind: Literal["http", "tcp", "grpc"]
    path: str | None = None  # http
    interval: float = 5.0
    timeout: float = 1.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 1
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 201),)  # [start, end) ranges, http
    no_traffic_interval: float | None = None  # None: the interval (checks run before traffic)
    unhealthy_interval: float | None = None  # None: the interval
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class RetryBudget:
    percent: float | None = None  # share of active requests that may be retries (Envoy: 20)
    min_concurrency: int | None = None  # retries always allowed this many at once (Envoy: 3)


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None
    retry_budget: RetryBudget | None = None  # replaces max_retries when set
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx: int | None = None
    consecutive_gateway_errors: int | None = None
    interval: float | None = None
    base_ejection_time: float | None = None
    max_ejection_percent: int | None = None
    success_rate: SuccessRate | None = None
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class SuccessRate:
    minimum_hosts: int | None = None  # Envoy: 5
    request_volume: int | None = None  # Envoy: 100
    stdev_factor: float | None = None  # Envoy: 1.9


@dataclass(frozen=True, slots=True)
class LoadBalancerOptions:
    """Settings of the chosen load balancer; each applies to one policy only."""

    choice_count: int | None = None  # least_request
    minimum_ring_size: int | None = None  # ring_hash
    maximum_ring_size: int | None = None  # ring_hash
    table_size: int | None = None  # maglev (a prime)
    slow_start: SlowStart | None = None  # round_robin, least_request


@dataclass(frozen=True, slots=True)
class SlowStart:
    """A new endpoint's traffic ramped up over `window` seconds (Envoy's slow start; Istio's
    warmup) instead of its full share at once: a cold JVM or cache is not flooded."""

    window: float
    aggression: float = 1.0  # 1: linear; higher: slower at first
    min_weight_percent: float = 10.0  # the share it starts from (Envoy's default)


@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    """TCP keepalive on the connections to a Service's endpoints; None fields: the OS's."""

    probes: int | None = None
    time: float | None = None  # idle seconds before the first probe
    interval: float | None = None  # seconds between probes


@dataclass(frozen=True, slots=True, order=True)
class Locality:
    """Where a proxy or an endpoint runs: region, zone, subzone (empty: not said)."""

    region: str = ""
    zone: str = ""
    sub_zone: str = ""

    @classmethod
    def of(cls, endpoint: Endpoint) -> Locality:
        return cls(endpoint.region or "", endpoint.zone or "", endpoint.sub_zone or "")

    @classmethod
    def of_labels(cls, labels: Labels) -> Locality:
        """The locality the topology labels say (Kubernetes' and Istio's, as on a node or a
        pod): how a discovered instance, which has labels and no other place for it, says
        where it runs."""
        found = {TOPOLOGY_LABELS[k]: v for k, v in labels if k in TOPOLOGY_LABELS}
        return cls(**found)


# The labels Kubernetes and Istio put on nodes, proxies and endpoints for their locality:
# `failover_priority` may name them, they are read from a locality when the labels do not
# say them, and a discovered instance's locality is read from them.
TOPOLOGY_LABELS = {"topology.kubernetes.io/region": "region",
                   "topology.kubernetes.io/zone": "zone",
                   "topology.istio.io/subzone": "sub_zone"}


@dataclass(frozen=True, slots=True)
class LocalityLb:
    """Balancing that depends on where the caller runs (Istio's localityLbSetting), decided
    per calling sidecar (`Sidecar.locality`) by `translators/locality.py`.

    `distribute`: for a caller whose locality matches a `from` pattern (`region/zone/subzone`,
    `*` for any, a shorter pattern covering everything below it), the share of traffic each
    `to` pattern's endpoints get; endpoints no `to` pattern covers get nothing. Otherwise,
    failover by priority: endpoints in the caller's subzone, then zone, then region, then (with
    `failover` naming the caller's region) the regions it names, then the rest; with
    `failover_priority`, endpoints whose labels equal the caller's for the first of those label
    keys come first, then those equal for fewer. Priorities move traffic only when endpoints
    are found unhealthy, so a Service with failover also has outlier detection or a health
    check (the loaders check it)."""

    distribute: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()  # (from, ((to, w),))
    failover: tuple[tuple[str, str], ...] = ()  # (from region, to region)
    failover_priority: tuple[str, ...] = ()  # label keys (Istio's topology keys included)
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Call:
    """A service a sidecar's application calls, and how it reaches it: through a local port
    of its own (`local_port`), or through the sidecar's Host-routed outbound port."""

    service: str
    local_port: int | None = None  # a listener on 127.0.0.1:local_port sending to `service`
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # The Route (by name, attached to `service`) this sidecar uses for it instead of the one
    # its other callers use (Istio's `sourceLabels`: the caller's labels pick the rules that
    # apply to it). None: the service's attached Route.
    route: str | None = None
    # Reached through a further Host-routed HTTP listener on 127.0.0.1:egress_port (Istio's
    # Sidecar `egress[].port`) instead of `Sidecar.outbound_port`. None: the outbound port's.
    egress_port: int | None = None


# The application's default address behind its sidecar (docs/mesh.md).
DEFAULT_APP_HOST = "127.0.0.1"
DEFAULT_APP_PORT = 8080


@dataclass(frozen=True, slots=True)
class InboundPort:
    """A sidecar's inbound port after its first (`Sidecar.port`): mesh traffic in on `port`,
    forwarded to the application's `app_host:app_port`, spoken in `protocol` (None: the
    Service's). Its mTLS mode is `Sidecar.mode_of(port)`."""

    port: int
    app_host: str = DEFAULT_APP_HOST
    app_port: int = DEFAULT_APP_PORT
    protocol: Protocol | None = None
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # The Service (without a sidecar of its own) whose endpoints are this port of the
    # sidecar's instances: its callers speak mTLS to it as this sidecar's identity when the
    # port's mode is not off (the loader marks its endpoints, `Endpoint.mtls_identity`).
    service: str | None = None


@dataclass(frozen=True, slots=True)
class Sidecar:
    """The mesh side of a Service: the Envoy next to each of its instances (node cluster = the
    Service's name). The Service's `endpoints` are then its sidecars' inbound addresses."""

    port: int | None = None  # inbound: mesh traffic in, forwarded to the app; None: no inbound
    address: str = "0.0.0.0"  # the inbound listener's bind address
    app_host: str = DEFAULT_APP_HOST  # where the local application listens
    app_port: int = DEFAULT_APP_PORT
    outbound_port: int | None = None  # one HTTP listener on 127.0.0.1 routing by Host
    calls: tuple[Call, ...] = ()  # the services it may call: all it receives (scoping)
    # Mesh security (docs/security.md): mTLS on inbound with certificates from meshpilot's CA,
    # and callers' mTLS to this service; authorization of callers by SPIFFE identity.
    mtls: MtlsMode = "off"
    authorization: Authorization | None = None  # rules' `principals`: names or SPIFFE IDs
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # JWT validation of inbound requests (file, inline or remote JWKS: a remote one's service
    # cluster is sent to the sidecar): what `claims` and `authenticated` in `authorization`
    # read.
    jwt: Jwt | None = None
    # The SPIFFE path of its certificate (`ns/default/sa/bookinfo-reviews`, Istio's); None:
    # the Service's name in the CA's namespace.
    identity: str | None = None
    deny: Authorization | None = None  # DENY rules checked before `authorization` (Istio)
    # Istio's AUDIT rules (marked, first) and CUSTOM provider (asked before `deny`).
    audit: Authorization | None = None
    ext_authz: ExtAuthz | None = None
    # Traces of inbound and outbound requests (spans named after the Service); the collector's
    # cluster joins the view.
    tracing: Tracing | None = None
    # Further inbound ports (the first is `port`, `app_host`, `app_port`), each a listener of
    # its own; callers of the Service reach `port` (its endpoints').
    more_ports: tuple[InboundPort, ...] = ()
    # Port-level mTLS (Istio's `portLevelMtls`): (inbound port, mode), sorted; a port not
    # listed takes `mtls`.
    port_modes: tuple[tuple[int, MtlsMode], ...] = ()
    # True when the policy left `mtls` unwritten: the MeshPolicy of the sidecar's namespace,
    # else the mesh-wide one, decides (`inputs/native/meshpolicy.py`); `mtls` is then what
    # they decided, or off.
    mtls_inherited: bool = False
    # Where this sidecar runs, and its labels: what its callees' `locality_lb` compares with
    # their endpoints' localities and labels. None: not said, read as an empty locality
    # (Istio's: endpoints with a locality then come after those without).
    locality: Locality | None = None
    labels: Labels = ()
    # The outbound port's catch-all for a Host no callee answers to (`UnknownHosts`). None:
    # no catch-all, so Envoy answers 404 (no route).
    unknown_hosts: UnknownHosts | None = None

    def mode_of(self, port: int | None) -> MtlsMode:
        """The mTLS mode of one inbound port: its own, else the sidecar's."""
        for number, mode in self.port_modes:
            if number == port:
                return mode
        return self.mtls

    def inbound_ports(self) -> tuple[InboundPort, ...]:
        """Every inbound port, the first (`port`) first, with the protocol left to the Service
        where the policy did not say one."""
        if self.port is None:
            return ()
        return (InboundPort(self.port, self.app_host, self.app_port, origin=self.origin),
                *self.more_ports)

    @property
    def namespace(self) -> str:
        """The namespace of its identity (`ns/<namespace>/sa/...`), else the CA's."""
        if self.identity is not None and self.identity.startswith("ns/"):
            return self.identity.split("/", 2)[1]
        return MESH_NAMESPACE


MtlsMode = Literal["strict", "permissive", "off"]


@dataclass(frozen=True, slots=True)
class MeshPolicy:
    """Mesh security for every sidecar of a namespace (`"*"`: of every namespace): their
    default mTLS mode and an authorization joining their own (Istio's namespace-wide and
    mesh-wide PeerAuthentication and AuthorizationPolicy). The loader takes it into each
    sidecar it applies to (`inputs/native/meshpolicy.py`); translators never read it."""

    name: str
    namespace: str
    mtls: MtlsMode | None = None  # None: says nothing of mTLS
    authorization: Authorization | None = None
    position: Position | None = field(default=None, compare=False)
    origin: Origin | None = field(default=None, compare=False, repr=False)

# The namespace of a mesh identity written without one (`sidecar.service_account` alone): the
# CA's own (`ca.authority.DEFAULT_NAMESPACE`, which a unit test keeps equal to this).
MESH_NAMESPACE = "default"


# ---- TLS (files read by the loader, delivered to Envoy as SDS Secrets) -------------------------


@dataclass(frozen=True, slots=True)
class TlsCertificate:
    """A certificate chain and its private key, read from the files the policy names. The key
    is kept out of repr() so that no log line or error can show it."""

    cert_path: str  # as written in the policy
    key_path: str
    certificate_chain: bytes = field(repr=False)  # PEM
    private_key: bytes = field(repr=False)  # PEM; never logged, redacted in every dump
    position: Position | None = field(default=None, compare=False)  # the `cert:` field
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """TLS termination on a gateway listener (protocol https)."""

    certificates: tuple[TlsCertificate, ...]  # Envoy picks by SNI against each SAN; first: default
    min_version: Literal["1.2", "1.3"] | None = None  # None: Envoy's default (1.2)
    alpn: tuple[str, ...] = ("h2", "http/1.1")
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # Mutual TLS: clients must present a certificate these CA certificates (PEM) signed;
    # None: no client certificate asked for.
    client_ca: bytes | None = field(default=None, repr=False)
    client_ca_path: str | None = None  # as written in the policy
    # With client_ca: a client may also go without a certificate, or with one the CA did not
    # sign (Gateway API's AllowInsecureFallback); the certificate is still asked for.
    client_optional: bool = False
    # With client_ca: a client may go without a certificate, but one it sends must be one the
    # CA signed (Istio's OPTIONAL_MUTUAL).
    client_may_omit: bool = False
    # With client_ca: the names the client's certificate must carry, one of them (as
    # UpstreamTls.subject_alt_names); empty: any name.
    client_subject_alt_names: tuple[tuple[Literal["dns", "uri"], str], ...] = ()


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """TLS origination from Envoy to a Service's endpoints."""

    sni: str | None = None
    verify: bool = True  # check the endpoint's certificate against `ca` (and its SAN against sni)
    ca_path: str | None = None
    ca: bytes | None = field(default=None, repr=False)  # PEM of the trusted CA certificates
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # The names the endpoint's certificate must carry, one of them: ("dns", NAME) or ("uri",
    # URI), in place of `sni` (Gateway API's BackendTLSPolicy subjectAltNames, Istio's
    # DestinationRule tls.subjectAltNames). Empty: `sni`.
    subject_alt_names: tuple[tuple[Literal["dns", "uri"], str], ...] = ()
    # Mutual TLS: the certificate (and key) Envoy presents to the endpoints; None: none.
    client_certificate: TlsCertificate | None = None


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    position: Position
    protocol: Protocol = "http"
    endpoints: tuple[Endpoint, ...] = ()
    subsets: tuple[tuple[str, Labels], ...] = ()  # (subset name, label selector), as written
    load_balancer: LoadBalancer = "round_robin"
    load_balancer_options: LoadBalancerOptions = LoadBalancerOptions()
    connect_timeout: float = 1.0
    health_check: HealthCheck | None = None
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None
    # Locality-weighted balancing: each zone's share of traffic (zone name, weight), sorted.
    zone_weights: tuple[tuple[str, int], ...] = ()
    sidecar: Sidecar | None = None  # None: no sidecar (the service may still be called)
    tls: UpstreamTls | None = None  # None: plain connections to the endpoints
    origin: Origin | None = field(default=None, compare=False, repr=False)
    max_requests_per_connection: int | None = None  # None: unlimited (Envoy's default)
    # Services to send to, in order, when this one has no healthy endpoint (an aggregate
    # cluster: translators/failover.py). Each has no failover of its own.
    failover: tuple[str, ...] = ()
    # More Host values that pick this service on a caller's outbound port, beside its name
    # (an Istio host's short forms: `reviews`, `reviews:9080`, `reviews.default.svc`, ...).
    hosts: tuple[str, ...] = ()
    # A subset whose cluster has settings of its own (Istio's per-subset trafficPolicy): the
    # Service as that subset's cluster is built from (same name, endpoints and subsets; its
    # own load balancer, pools, outlier detection, TLS). A subset not listed: this Service.
    subset_services: tuple[tuple[str, Service], ...] = ()
    # tcp only: where its callers' sidecars send connections to it (by SNI and weight, as a
    # gateway listener's `tcp_routes`); empty: its whole-service cluster.
    tcp_routes: tuple[TcpRoute, ...] = ()
    # Balancing by the caller's locality (priorities and shares computed per calling sidecar);
    # None: the endpoints as written, the same for every caller.
    locality_lb: LocalityLb | None = None
    # Connections to the endpoints (None: Envoy's defaults). HTTP ones close after this long
    # idle or this long in all; an h2 one carries at most this many streams at once.
    connection_idle_timeout: float | None = None
    max_connection_duration: float | None = None
    max_concurrent_streams: int | None = None
    tcp_keepalive: TcpKeepalive | None = None
    # Below this share of healthy endpoints Envoy balances over all of them anyway (its
    # panic mode; default 50). 0 turns panic off: ejected endpoints stay out (Istio's
    # minHealthPercent, 0 unless written, whenever outlierDetection is).
    panic_threshold: float | None = None
    # Mesh mTLS to its endpoints accepts a certificate carrying one of these SPIFFE IDs (full
    # URIs) in place of the workloads' own (Istio's DestinationRule ISTIO_MUTUAL
    # subjectAltNames); empty: theirs.
    mesh_peer_ids: tuple[str, ...] = ()

    def subset(self, name: str) -> Labels | None:
        return next((selector for n, selector in self.subsets if n == name), None)

    def for_subset(self, subset: str | None) -> Service:
        """The Service the cluster of `subset` (None: the whole service) is built from."""
        if subset is None or not self.subset_services:
            return self
        return next((s for n, s in self.subset_services if n == subset), self)

    def endpoints_of(self, subset: str | None) -> tuple[Endpoint, ...]:
        """The endpoints of the whole service, or of one subset (all selector labels match)."""
        if subset is None:
            return self.endpoints
        selector = self.subset(subset) or ()
        return tuple(e for e in self.endpoints if all(kv in e.labels for kv in selector))


# ---- Gateway ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccessLog:
    path: str  # an absolute file path (/dev/stdout included)
    format: Literal["json", "text"] = "json"
    origin: Origin | None = field(default=None, compare=False, repr=False)


CompressionAlgorithm = Literal["brotli", "zstd", "gzip"]


@dataclass(frozen=True, slots=True)
class Compression:
    """Compression of responses for clients that accept it."""

    min_content_length: int | None = None  # None: Envoy's default (30 bytes)
    content_types: tuple[str, ...] = ()  # empty: Envoy's default list
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # In order of preference (when a client accepts several equally): brotli, zstd, gzip.
    algorithms: tuple[CompressionAlgorithm, ...] = ("gzip",)


@dataclass(frozen=True, slots=True)
class Decompression:
    """Request bodies sent compressed (Content-Encoding) are decompressed for the backend."""

    algorithms: tuple[CompressionAlgorithm, ...]  # brotli, zstd, gzip: which are accepted
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Tracing:
    """Distributed tracing of a listener's requests (translators/tracing.py): Envoy starts or
    continues a trace, propagates its headers upstream and exports spans to a collector."""

    provider: Literal["opentelemetry", "zipkin"]
    collector: str  # the Service spans are sent to (OTLP/gRPC, or Zipkin's HTTP JSON API)
    sampling: float = 100.0  # percent of requests without a sampling decision that are traced
    service_name: str | None = None  # the spans' service name; None: the gateway's name
    path: str = "/api/v2/spans"  # zipkin: the collector's endpoint
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TcpRoute:
    """Where connections go at the TCP level (a tcp gateway listener, or a tcp Service's
    callers' sidecars): weighted backends, for the connections whose TLS SNI is one of
    `server_names` (exact names or `*.suffix`; TLS passthrough), or for every connection."""

    backends: tuple[Backend, ...]  # weights as Backend.weight; a weight of 0 gets nothing
    server_names: tuple[str, ...] = ()  # empty: any connection (TLS or not)
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # Only connections to one of these local addresses (CIDRs, `10.0.0.0/8`; the address the
    # client dialled) / from one of these client addresses; empty: any. Envoy picks the most
    # specific filter chain: destination, then SNI, then source.
    destination_ranges: tuple[str, ...] = ()
    source_ranges: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GatewayListener:
    name: str
    port: int
    address: str = "0.0.0.0"
    protocol: Literal["http", "tcp", "udp"] = "http"  # `protocol: https` is http with `tls` set
    service: str | None = None  # tcp: the Service (protocol tcp) every connection goes to;
    # udp: the Service every datagram goes to (Envoy's UDP proxy names one cluster)
    access_log: AccessLog | None = None  # the gateway-wide one already filled in
    # http only:
    trust_request_id: bool = False  # keep a client's x-request-id (default: replace it)
    request_id_in_response: bool = False
    compression: Compression | None = None
    websocket: bool = False
    tls: ListenerTls | None = None  # set: the listener terminates TLS (protocol https)
    # Set (in place of `tls`): TLS is ended with the view's mesh identity certificate (SDS)
    # and a client certificate the mesh CA signed is required (Istio's ISTIO_MUTUAL). On a
    # tcp listener, `tls` or this ends TLS before the `tcp_routes`.
    mesh_tls: bool = False
    redirect_to_https: int | None = None  # set: answer everything with a 301 to https on this port
    origin: Origin | None = field(default=None, compare=False, repr=False)
    client_ip: ClientIp | None = None  # how the client's address is found (None: the peer's)
    tracing: Tracing | None = None  # http only: spans to a collector (the gateway's default)
    decompression: Decompression | None = None  # http only: compressed request bodies
    max_requests_per_connection: int | None = None  # http only: None: unlimited
    # tcp only: the Services every connection goes to, by weight (Envoy's weighted clusters),
    # in place of `service`; a backend not `resolved` takes its share and closes it.
    backends: tuple[Backend, ...] = ()
    # tcp only: TLS passthrough by SNI (a TLS inspector picks an entry by the ClientHello's
    # server name; nothing is terminated). Set: `service` and `backends` are not used.
    passthrough: tuple[TlsPassthrough, ...] = ()
    # tcp only: connections routed by SNI and weight (one filter chain each, in order; the
    # first without server_names takes the rest) instead of all to `service`.
    tcp_routes: tuple[TcpRoute, ...] = ()
    # https only: one filter chain per entry, picked by the connection's SNI, each with its own
    # certificates and route table (Gateway API HTTPS listeners sharing a port). Empty: one
    # chain, Envoy picking among `tls.certificates` by SNI, one route table for every Route.
    tls_hosts: tuple[TlsHost, ...] = ()


@dataclass(frozen=True, slots=True)
class TlsHost:
    """The connections of an https listener whose SNI matches `server_names` (exact, or
    `*.suffix` for any name below it; the most specific entry wins, as Envoy picks filter
    chains): they are shown `certificates` (some of the listener's `tls.certificates`) and
    routed by the Routes naming this entry (`Route.tls_host`) only, so a request whose Host
    belongs to another entry is answered by what the Routes here say of it (a 421). No
    server_names: the connections no other entry takes, no SNI included."""

    name: str  # its route table is the listener's name and this one (names.tls_host_routes)
    server_names: tuple[str, ...]
    certificates: tuple[TlsCertificate, ...]
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TlsPassthrough:
    """Connections whose SNI matches one of `hostnames` (exact, or `*.suffix` for any name
    below it) go unterminated to `backends` (weighted). No hostnames: every connection no other
    entry of the listener takes, SNI or none."""

    hostnames: tuple[str, ...]
    backends: tuple[Backend, ...]
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # Set: these connections are not passed through but terminated, shown these certificates
    # (some of the listener's `tls.certificates`), and their plaintext proxied to `backends`.
    terminate: tuple[TlsCertificate, ...] = ()


@dataclass(frozen=True, slots=True)
class ClientIp:
    """How a listener finds the client's address behind proxies: used by `source_ips`, rate
    limits by source_ip and access logs (Envoy's downstream remote address)."""

    xff_trusted_hops: int = 0  # trust this many proxies' X-Forwarded-For entries
    trusted_cidrs: tuple[str, ...] = ()  # or: trust X-Forwarded-For from these proxies (CIDRs)
    header: str | None = None  # or: the client's address is in this header (x-real-ip)
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Gateway:
    name: str
    position: Position
    listeners: tuple[GatewayListener, ...] = ()
    origin: Origin | None = field(default=None, compare=False, repr=False)
    identity: str | None = None  # the SPIFFE path of its certificate; None: from its name
    # Where its Envoys run: the Services it sends to that balance by the caller's locality
    # (`Service.locality_lb`) rank their endpoints for it, as for a calling sidecar. None:
    # the endpoints as written.
    locality: Locality | None = None


# ---- Route --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StringMatch:
    """How one value (a path, a header, a query parameter) is matched."""

    kind: Literal["exact", "prefix", "regex", "present", "absent"]
    value: str = ""  # empty for present/absent
    # True: the value must NOT match (an absent header is read as "", so it matches unless
    # the pattern matches ""); Envoy's invert_match. Not for present/absent (each other's
    # inverse).
    invert: bool = False


@dataclass(frozen=True, slots=True)
class Match:
    path: StringMatch | None = None  # exact | prefix | regex; None matches every path
    methods: tuple[str, ...] = ()  # upper case; empty matches every method
    headers: tuple[tuple[str, StringMatch], ...] = ()  # (lower-case name, match), all must hold
    query: tuple[tuple[str, StringMatch], ...] = ()  # (name, match), all must hold
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # A prefix path matches whole segments only: "/v2" matches /v2 and /v2/x, not /v2x
    # (Gateway API's PathPrefix). False: a plain string prefix.
    whole_segments: bool = False
    # The path compared without regard to case (Istio's ignoreUriCase): /API matches /api.
    ignore_case: bool = False


@dataclass(frozen=True, slots=True)
class Backend:
    service: str
    subset: str | None = None
    weight: int = 1
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # Header changes for requests sent to this backend only (and their responses), after the
    # rule's own (Gateway API's backendRef filters). None: none.
    request_headers: HeaderOps | None = None
    response_headers: HeaderOps | None = None
    # False: a reference that does not resolve (Gateway API's partial validity): no cluster is
    # made for it, and the share of requests it would get is answered 500.
    resolved: bool = True
    # The status of that share when not `resolved`: 503 is Envoy's own for a cluster the
    # proxy lacks (Istio: a host not exported to the caller's namespace).
    unresolved_status: Literal[500, 503] = 500


@dataclass(frozen=True, slots=True)
class PathRewrite:
    prefix: str | None = None  # replace the matched prefix (a regex match: the path) with this
    regex: str | None = None  # or: replace what this regex matches ...
    substitution: str = ""  # ... with this (\1 style groups)
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Redirect:
    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None  # replaces the whole path
    prefix: str | None = None  # replaces the matched prefix
    status: int = 302  # 301, 302, 303, 307, 308
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # With no `port`: "request" keeps the port the request came to (the listener's when the
    # host changes), except that a scheme change goes to the new scheme's default port;
    # "scheme": always the default port of the (new or kept) scheme (Istio's FROM_PROTOCOL_DEFAULT).
    port_from: Literal["request", "scheme"] = "request"
    strip_query: bool = False  # drop the query string from the Location
    regex: str | None = None  # or: replace what this regex matches in the path ...
    substitution: str = ""  # ... with this (\1 style groups)


@dataclass(frozen=True, slots=True)
class DirectResponse:
    status: int
    body: str | bytes = ""  # bytes: a body that is not UTF-8 text (never formatted)
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # True: `body` is an Envoy format string (%REQ(:METHOD)%, %START_TIME% ...; %% is a "%");
    # False: sent as written, byte for byte.
    formatted: bool = False


@dataclass(frozen=True, slots=True)
class HeaderOps:
    add: tuple[tuple[str, str], ...] = ()  # appended (a header may then have several values)
    set: tuple[tuple[str, str], ...] = ()  # replaces any value
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float  # seconds; Envoy's retry_back_off.base_interval
    max: float | None = None  # None: Envoy's default, 10 times base


@dataclass(frozen=True, slots=True)
class Retries:
    attempts: int  # retries after the first try (Envoy's num_retries, Istio's meaning)
    on: tuple[str, ...] = ("5xx", "reset", "connect-failure")  # Envoy's retry_on names
    per_try_timeout: float | None = None
    backoff: Backoff | None = None
    retriable_status_codes: tuple[int, ...] = ()  # "retriable-status-codes" is then in `on`
    avoid_same_host: bool = False  # retry on another host than the ones already tried
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # "retriable-headers" (implied in `on` when given): retry when a response has one of these.
    retriable_headers: tuple[tuple[str, StringMatch], ...] = ()


@dataclass(frozen=True, slots=True)
class FaultDelay:
    fixed: float  # seconds
    percentage: float = 100.0  # of matching requests, 0 to 100


@dataclass(frozen=True, slots=True)
class FaultAbort:
    status: int | None = None  # exactly one of an HTTP status ...
    grpc_status: int | None = None  # ... or a gRPC status code
    percentage: float = 100.0


@dataclass(frozen=True, slots=True)
class Fault:
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()  # only requests with these headers
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Mirror:
    """A copy of each request to `service` (and `subset`), or, with `from_header`, to the
    Service a request header names: one of `candidates`, whose clusters the view gets (then
    `service` is empty)."""

    service: str
    subset: str | None = None
    percentage: float = 100.0
    origin: Origin | None = field(default=None, compare=False, repr=False)
    from_header: str | None = None  # the request header naming the Service receiving the copy
    candidates: tuple[str, ...] = ()  # the Services that header may name

    def targets(self) -> tuple[tuple[str, str | None], ...]:
        """(service, subset) of every cluster this mirror may send copies to."""
        if self.from_header is not None:
            return tuple((candidate, None) for candidate in self.candidates)
        return ((self.service, self.subset),)


@dataclass(frozen=True, slots=True)
class HashOn:
    """One input of a consistent hash (ring_hash, maglev): tried in the order written."""

    kind: Literal["header", "cookie", "source_ip", "query"]
    name: str = ""  # the header, cookie or query parameter; empty for source_ip
    ttl: float | None = None  # cookie: Envoy sets the cookie when absent (0: a session cookie)
    path: str | None = None  # cookie: its Path attribute
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Cors:
    allow_origins: tuple[StringMatch, ...]  # exact, prefix (case ignored) or regex origins
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: float | None = None  # seconds
    allow_credentials: bool | None = None
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # allow_methods / allow_headers may be ("*",): any (Envoy answers with what the preflight
    # asks for). allow_origins may also hold exact non-URL origins ("null").


# ---- Route and rule security (translators/auth.py) ------------------------------------------


@dataclass(frozen=True, slots=True)
class Jwks:
    """Where a JWT provider's public keys are: exactly one of file, inline or uri."""

    file: str | None = None  # an absolute path, read by Envoy
    inline: str | None = None  # the JWKS JSON text
    uri: str | None = None  # https://..., fetched by Envoy through `service`'s cluster
    service: str | None = None
    cache: float | None = None  # seconds the fetched keys are kept (None: Envoy's 5 minutes)


@dataclass(frozen=True, slots=True)
class JwtProvider:
    name: str
    issuer: str | None
    jwks: Jwks
    audiences: tuple[str, ...] = ()
    forward_claims: tuple[tuple[str, str], ...] = ()  # (claim, header), as written
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # Where the token is (empty: Envoy's default, `Authorization: Bearer` and `access_token`):
    from_headers: tuple[tuple[str, str], ...] = ()  # (header, value prefix)
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    forward: bool = False  # keep the token in the request sent upstream
    payload_header: str | None = None  # the validated payload, base64url, in this header


@dataclass(frozen=True, slots=True)
class Jwt:
    providers: tuple[JwtProvider, ...]
    required: bool = True  # False: a request without a token passes (a bad token never does)
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ApiKeys:
    source: Literal["header", "query", "cookie"]
    name: str  # the header, query parameter or cookie carrying the key
    keys: tuple[tuple[str, str], ...] = field(repr=False)  # (client, key): never printed
    origin: Origin | None = field(default=None, compare=False, repr=False)
    forward_header: str | None = None  # the client's name is sent to the backend in this header
    strip: bool = False  # the key never reaches the backend


@dataclass(frozen=True, slots=True)
class BasicAuth:
    users_file: str  # an absolute path to an htpasswd file of {SHA} hashes, read by Envoy
    origin: Origin | None = field(default=None, compare=False, repr=False)
    forward_header: str | None = None  # the user's name is sent to the backend in this header
    strip: bool = False  # the Authorization header never reaches the backend


@dataclass(frozen=True, slots=True)
class ExtAuthz:
    service: str
    protocol: Literal["http", "grpc"] = "http"
    timeout: float = 0.2
    failure_mode_allow: bool = False
    origin: Origin | None = field(default=None, compare=False, repr=False)
    path_prefix: str = ""  # http: prepended to the request's path in the check request
    send_headers: tuple[StringMatch, ...] = ()  # request headers also sent to it (names)
    upstream_headers: tuple[StringMatch, ...] = ()  # its answer's headers set on the request
    client_headers: tuple[StringMatch, ...] = ()  # its denial's headers sent to the client
    client_headers_on_success: tuple[StringMatch, ...] = ()  # ... and on an allowed answer
    # Istio's CUSTOM action: only the requests matching one of these rules are sent to the
    # service (an RBAC filter's shadow rules mark them), and it is asked before the
    # authorization policies (AUDIT, CUSTOM, DENY, ALLOW, Istio's order); None: every request,
    # asked after them.
    only: tuple[AuthzRule, ...] | None = None
    status_on_error: int | None = None  # the status when the service fails; None: Envoy's 403
    add_headers: tuple[tuple[str, str], ...] = ()  # http: (name, value) set on each check
    request_body: ExtAuthzBody | None = None  # the request's body sent along; None: none


@dataclass(frozen=True, slots=True)
class ExtAuthzBody:
    """How much of a request's body an authorization service sees (Envoy's with_request_body)."""

    max_bytes: int
    allow_partial: bool = False  # a longer body is cut at max_bytes (else 413)
    pack_as_bytes: bool = False  # gRPC: the body as raw bytes, not UTF-8 text


@dataclass(frozen=True, slots=True)
class AuthzCondition:
    """One condition of an authorization rule on one attribute of the request or connection:
    it holds when the attribute matches any of `matches` (addresses: lies in any of `cidrs`).
    Istio's `when` conditions and the source fields a rule's lists cannot say are these."""

    # header: a request header; claim: the validated JWT's claim (a list value holds when an
    # element matches); metadata: Envoy's dynamic metadata of a filter; principal: the peer
    # certificate's identity (mTLS); peer_ip: the connection's peer address; client_ip: the
    # client's address as the listener detects it (X-Forwarded-For behind trusted proxies);
    # destination_ip: the address the connection was accepted on; sni: the TLS server name.
    # request_principal: the validated JWT is one of `request_principals`.
    attribute: Literal["header", "claim", "metadata", "principal", "peer_ip", "client_ip",
                       "destination_ip", "sni", "request_principal"]
    # header: (lower-case name,); claim: its path in the payload (nested: several names);
    # metadata: (filter, key)
    key: tuple[str, ...] = ()
    matches: tuple[StringMatch, ...] = ()
    # metadata: also holds when the value is a list holding an element matching one of these
    elements: tuple[StringMatch, ...] = ()
    cidrs: tuple[str, ...] = ()  # peer_ip, client_ip, destination_ip: normalized CIDRs
    request_principals: tuple[str, ...] = ()  # as AuthzRule.request_principals

    @property
    def http_only(self) -> bool:
        """Whether only an HTTP request has what it reads (a TCP connection does not)."""
        return self.attribute in ("header", "claim", "request_principal")


@dataclass(frozen=True, slots=True)
class AuthzRule:
    """One rule of an authorization policy: every condition given must hold (Istio's AND within
    a rule); each list is any of its items."""

    paths: tuple[StringMatch, ...] = ()
    methods: tuple[str, ...] = ()
    headers: tuple[tuple[str, StringMatch], ...] = ()
    source_ips: tuple[str, ...] = ()  # CIDRs, normalized (10.0.0.0/8)
    claims: tuple[tuple[str, str], ...] = ()  # (claim, value): the JWT's claim holds the value
    # Mesh callers (a sidecar's `from`): Service names or SPIFFE IDs, as written; the
    # translator makes SPIFFE IDs of names (authenticated principal, exact).
    principals: tuple[str, ...] = ()
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # The `not` forms: every condition given here must NOT hold (a path not among these, a
    # method not among these, a caller not among these ...); Istio's notPaths, notMethods ...
    exclude: AuthzRule | None = None
    # True: the request carries a valid JWT; False: it carries none (Istio's requestPrincipals
    # ["*"] and notRequestPrincipals ["*"]). Needs jwt on the Route or rule.
    authenticated: bool | None = None
    # Istio's ports and hosts: the destination port is one of `ports`; the Host header is one of
    # `hosts` (exact, "*.suffix" or "prefix*", case ignored; "*": any). In `exclude`: none is.
    ports: tuple[int, ...] = ()
    hosts: tuple[str, ...] = ()
    # The request's JWT (validated by the Route's jwt) is one of these: "iss/sub", or "*" for any
    # valid token; a leading `*` makes the issuer (no `/`: the subject) a suffix, a trailing
    # one the subject (no `/`: the issuer) a prefix (Istio's). In `exclude`: none is.
    request_principals: tuple[str, ...] = ()
    # Mesh callers by namespace (a sidecar's `namespaces`): any identity `ns/<namespace>/sa/*`
    # of the trust domain; the translator makes SPIFFE ID prefixes of them. In `exclude`: none.
    namespaces: tuple[str, ...] = ()
    # Istio's path templates (Envoy's uri_template syntax: `*` one segment, `**` any tail),
    # any of which, or of `paths`, the path matches. In `exclude`: none does.
    path_templates: tuple[str, ...] = ()
    # Istio's serviceAccounts, "namespace/name": the caller's SPIFFE ID names that account in
    # that namespace, of any trust domain (as Istio matches them). In `exclude`: none does.
    service_accounts: tuple[str, ...] = ()
    # Further conditions, each of which must hold. In `exclude`: none does.
    conditions: tuple[AuthzCondition, ...] = ()


@dataclass(frozen=True, slots=True)
class Authorization:
    # AUDIT (Istio's): matching requests are marked for audit logging (Envoy's RBAC LOG
    # action), nothing is refused.
    action: Literal["ALLOW", "DENY", "AUDIT"]
    rules: tuple[AuthzRule, ...] = ()  # ALLOW with no rules denies everything (Istio)
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests: int
    per: float  # seconds
    by: Literal["route", "host", "header", "source_ip"] = "route"
    header: str | None = None  # by header
    origin: Origin | None = field(default=None, compare=False, repr=False)
    shadow: bool = False  # count what would be limited, refuse nothing (Envoy's filter_enforced 0)
    ratelimit_headers: bool = True  # x-ratelimit-limit/-remaining/-reset on every answer
    limited_headers: tuple[tuple[str, str], ...] = ()  # (name, value) on 429 answers only
    # Set: counted across every Envoy by this Service, a rate limit service (Envoy's
    # envoy.service.ratelimit.v3; meshpilot serves one with --rate-limit-address). None: each
    # Envoy counts on its own (local_ratelimit).
    shared: str | None = None
    # shared: the limit's name in the service; Routes (of any gateway) naming the same one
    # share its counts. None: the Route's name, or `<route>/rules[<i>]`.
    shared_name: str | None = None


@dataclass(frozen=True, slots=True)
class Csrf:
    """Cross-site request forgery protection (Envoy's CSRF filter): a state-changing request
    (POST, PUT, DELETE, PATCH) whose Origin (else Referer) is not the request's own host, nor
    one of `allow_origins`, or that has neither header, is refused with 403."""

    allow_origins: tuple[str, ...] = ()  # hosts (host or host:port); "*.example.com" suffixes
    shadow: bool = False  # count what would be refused, refuse nothing
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class SessionPersistence:
    """Sticky sessions by header or cookie (Envoy's stateful_session filter): the answer
    carries the endpoint that served it in `header` (or sets the cookie `cookie`); a request
    sending it back goes to that endpoint while it is healthy (else, `strict` False, anywhere;
    `strict` True: 503). Exactly one of `header` and `cookie` is set."""

    header: str = ""  # lower case
    strict: bool = False
    cookie: str = ""
    cookie_path: str = "/"
    # The cookie's lifetime (its Max-Age; Envoy also refuses a cookie older than this); None:
    # a session cookie, valid until the client drops it.
    cookie_ttl: float | None = None
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Security:
    """Request-level security of a Route (its virtual host) or of one rule (replacing the
    Route's setting of the same feature for that rule)."""

    jwt: Jwt | None = None
    api_keys: ApiKeys | None = None
    basic_auth: BasicAuth | None = None
    ext_authz: ExtAuthz | None = None
    authorization: tuple[Authorization, ...] | None = None  # (AUDIT,) DENY, then ALLOW
    rate_limit: RateLimit | None = None
    csrf: Csrf | None = None
    # Not security, but switched per virtual host or route entry the same way.
    session_persistence: SessionPersistence | None = None

    def __bool__(self) -> bool:
        # Asked for every Route and rule by every HTTP feature: written out, not a loop.
        return (self.jwt is not None or self.api_keys is not None
                or self.basic_auth is not None or self.ext_authz is not None
                or self.authorization is not None or self.rate_limit is not None
                or self.csrf is not None or self.session_persistence is not None)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a Route: first match wins, in the order written. Exactly one of
    backends, redirect or direct_response says what happens to a matching request."""

    position: Position
    matches: tuple[Match, ...] = (Match(),)  # any of them (a request matching one is taken)
    backends: tuple[Backend, ...] = ()
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    rewrite_path: PathRewrite | None = None
    rewrite_host: str | None = None
    request_headers: HeaderOps = field(default_factory=HeaderOps)
    response_headers: HeaderOps = field(default_factory=HeaderOps)
    timeout: float | None = None  # None: Envoy's default (15 s); 0 disables
    retries: Retries | None = None
    idle_timeout: float | None = None  # None: Envoy's default; 0 disables
    grpc_max_timeout: float | None = None  # honour grpc-timeout up to this; 0: uncapped
    fault: Fault | None = None
    mirrors: tuple[Mirror, ...] = ()
    hash_on: tuple[HashOn, ...] = ()
    security: Security = field(default_factory=Security)
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # This rule's CORS policy, replacing the Route's for its entries (a parser fills in what
    # the rule leaves out from the Route's cors): None uses the Route's.
    cors: Cors | None = None
    websocket: bool = False  # requests may upgrade to a websocket (whatever the listener says)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    position: Position
    gateway: str | None  # exactly one of gateway and service is set
    hosts: tuple[str, ...] = ("*",)  # exact names and "*.suffix" wildcards; "*" is every host
    rules: tuple[Rule, ...] = ()
    listeners: tuple[str, ...] = ()  # attach to these listeners of the gateway; empty: all
    cors: Cors | None = None  # for the Route's virtual host
    security: Security = field(default_factory=Security)  # for the Route's virtual host
    service: str | None = None  # attached to a Service: its virtual host in its callers' sidecars
    # With `service`: only the callers whose sidecar is in this namespace take it, instead of
    # the Service's Route for every caller (a Gateway API consumer route). None: every caller.
    callers_namespace: str | None = None
    # With `service`: taken only by the callers whose `Call.route` names it (Istio's
    # sourceLabels), never as the Service's Route for its other callers.
    named_only: bool = False
    origin: Origin | None = field(default=None, compare=False, repr=False)
    # On a listener with `tls_hosts`: the entry whose route table holds this Route (None: it is
    # served on no such listener).
    tls_host: str | None = None


# The name of a Route an input format makes for one TLS host's table, answering 421 for the
# requests that belong to another entry's hostnames, ends so (`shop/edge/443/a:misdirected`).
MISDIRECTED_ROUTE = ":misdirected"


def only_for_tls_host(route: Route) -> bool:
    """Whether `route` exists only for one TLS host's table (`GatewayListener.tls_hosts`),
    made by the input format rather than written: its 421s for misdirected requests, or a
    guard with no rules that keeps a listener's own hostname from a less specific 421 (a
    404). Served as one table (a listener without `tls_hosts`) such a Route says nothing its
    source did."""
    return route.tls_host is not None and (not route.rules
                                           or route.name.endswith(MISDIRECTED_ROUTE))


# ---- status of input objects ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition as Kubernetes writes them: `Accepted` is "True" because "Accepted"."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class ObjectStatus:
    """The status of one input object (a Gateway, a listener of it, a route's parent): what an
    input format decided about it, with where it was written."""

    kind: str  # "Gateway", "Listener", "HTTPRoute"
    name: str  # "NS/NAME"; a listener: "NS/GATEWAY/LISTENER"; a route's parent: its route
    position: Position | None
    conditions: tuple[Condition, ...]
    parent: str = ""  # a route: the Gateway (and section) this status is about
    details: tuple[tuple[str, str], ...] = ()  # ("attachedRoutes", "2"), ...


# ---- staged rollouts (runtime/rollout.py) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RolloutSettings:
    """`kind: Rollout`: how the runtime rolls each edit out (a canary share first, watched,
    then promoted or rolled back). Read by the runtime only; no translator sees it."""

    name: str
    position: Position
    enabled: bool = True
    canary: float = 10.0  # percent of each view's Envoys
    watch: float = 30.0  # seconds
    error_rate: float = 5.0  # percent of the canaries' requests answered 5xx
    min_requests: int = 10
    views: tuple[str, ...] = ()  # only these views in stages; (): every view
    origin: Origin | None = field(default=None, compare=False, repr=False)


# ---- the whole model ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Model:
    raw: tuple[RawResource, ...] = ()
    services: tuple[Service, ...] = ()  # sorted by name
    gateways: tuple[Gateway, ...] = ()  # sorted by name
    routes: tuple[Route, ...] = ()  # sorted by name
    files: tuple[str, ...] = ()
    _services: dict[str, Service] = field(default_factory=dict, compare=False, repr=False)
    _gateways: dict[str, Gateway] = field(default_factory=dict, compare=False, repr=False)
    # What an input format says of the documents it read beyond the model itself (Gateway
    # API's conditions per Gateway, listener and route), for status pages; sorted.
    statuses: tuple[ObjectStatus, ...] = ()
    # Advice that did not refuse the load (an Istio subset nothing selects), in file order.
    warnings: tuple[PolicyIssue, ...] = field(default=(), compare=False, repr=False)
    # The policy's `kind: Rollout` document, if any (runtime/rollout.py reads it).
    rollout: RolloutSettings | None = None

    # True only for a model whose `_services` and `_gateways` were given already made (an
    # incremental load patched the previous model's index, inputs/dependents.py); reset at once,
    # so `dataclasses.replace` of this model indexes again.
    _indexed: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Lookups by name are on every translator's path: index once (10k services), in dicts
        # of this model's own (`dataclasses.replace` passes the old model's along).
        if self._indexed:
            object.__setattr__(self, "_indexed", False)
            return
        object.__setattr__(self, "_services", dict(zip(map(_NAME, self.services),
                                                        self.services, strict=True)))
        object.__setattr__(self, "_gateways", dict(zip(map(_NAME, self.gateways),
                                                        self.gateways, strict=True)))

    def service(self, name: str) -> Service | None:
        return self._services.get(name)

    def gateway(self, name: str) -> Gateway | None:
        return self._gateways.get(name)
