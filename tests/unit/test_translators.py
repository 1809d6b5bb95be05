"""The translators: models built in Python in, Envoy protobuf messages out.

Each mapping is asserted on the protobuf fields; then the Translation as a whole: which view gets
what, determinism, the per-service cache, and raw EnvoyResources merged (and winning on a name
collision). Envoy itself checks a model using every feature in `test_envoy_accepts_every_feature`.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.route.v3.route_components_pb2 import RedirectAction
from envoy.config.route.v3.route_components_pb2 import Route as EnvoyRoute
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from envoy.type.v3.http_pb2 import CodecClientType
from google.protobuf.message import Message
from static_check import static_bootstrap

from meshpilot.base import types
from meshpilot.base.errors import Position
from meshpilot.ir.model import (
    Backend,
    CircuitBreaker,
    DirectResponse,
    Endpoint,
    Gateway,
    GatewayListener,
    HeaderOps,
    HealthCheck,
    Match,
    Model,
    OutlierDetection,
    PathRewrite,
    RawResource,
    Redirect,
    Retries,
    Route,
    Rule,
    Service,
    StringMatch,
)
from meshpilot.local.envoy_process import validate_config
from meshpilot.translators import Translation, clusters, endpoints, listeners, names, routes
from meshpilot.xds.render import message_of, snapshot_to_dict
from meshpilot.xds.snapshot import Snapshot

AT = Position("policy.yaml", 1, 1)
V1 = (("version", "v1"),)
V2 = (("version", "v2"),)


def service(name: str = "reviews", **kwargs: object) -> Service:
    defaults: dict[str, object] = {
        "endpoints": (Endpoint("127.0.0.1", 9082, V2), Endpoint("127.0.0.1", 9081, V1)),
        "subsets": (("v1", V1), ("v2", V2)),
    }
    return Service(name, AT, **{**defaults, **kwargs})  # type: ignore[arg-type]


def rule(*matches: Match, **kwargs: object) -> Rule:
    kwargs.setdefault("backends", (Backend("reviews"),))
    return Rule(AT, matches=matches or (Match(),), **kwargs)  # type: ignore[arg-type]


def edge(*listener_specs: GatewayListener) -> Gateway:
    return Gateway("edge", AT, listener_specs or (GatewayListener("http", 8080),))


def contract_model() -> Model:
    """The policy sketch's contract example."""
    reviews = service(
        load_balancer="least_request",
        health_check=HealthCheck("http", path="/healthz", interval=5.0, unhealthy_threshold=3),
        circuit_breaker=CircuitBreaker(max_connections=1000, max_pending_requests=100,
                                       max_requests=1000),
        outlier_detection=OutlierDetection(consecutive_5xx=5, interval=10.0,
                                           base_ejection_time=30.0),
    )
    shop = Route("shop", AT, "edge", hosts=("shop.example.com", "*.shop.example.com"), rules=(
        rule(Match(path=StringMatch("prefix", "/api/"),
                   headers=(("x-canary", StringMatch("exact", "true")),)),
             backends=(Backend("reviews", "v2"),)),
        rule(Match(path=StringMatch("prefix", "/")),
             backends=(Backend("reviews", "v1", 90), Backend("reviews", "v2", 10)),
             retries=Retries(3, per_try_timeout=0.5), timeout=2.0),
    ))
    return Model(services=(reviews,), gateways=(edge(),), routes=(shop,))


def messages(snapshot: Snapshot, type_url: str) -> dict[str, Message]:
    return {name: message_of(r) for name, r in snapshot.get(type_url).items()}


def only_route_config(model: Model, view: str = "edge") -> RouteConfiguration:
    (config,) = messages(Translation(model).snapshot(view), types.ROUTE).values()
    assert isinstance(config, RouteConfiguration)
    return config


def entries_of(*rules: Rule, hosts: tuple[str, ...] = ("*",)) -> list[EnvoyRoute]:
    model = Model(services=(service(),), gateways=(edge(),),
                  routes=(Route("shop", AT, "edge", hosts=hosts, rules=rules),))
    return list(only_route_config(model).virtual_hosts[0].routes)


# ---- names --------------------------------------------------------------------------------------


def test_names() -> None:
    assert names.cluster("reviews") == "reviews"
    assert names.cluster("reviews", "v2") == "reviews/v2"
    assert names.eds_service("reviews/v2") == "reviews/v2"
    assert names.listener("edge", "http") == names.route_config("edge", "http") == "edge/http"
    assert names.virtual_host("shop") == "shop"
    assert names.route_entry("shop", 0) == "shop/rules[0]"
    assert names.route_entry("shop", 2, 1) == "shop/rules[2]/match[1]"


# ---- clusters -----------------------------------------------------------------------------------


def test_static_ip_service_is_an_eds_cluster_over_ads() -> None:
    cluster = clusters.cluster(service(connect_timeout=0.25), "v2")
    assert cluster.name == "reviews/v2"
    assert cluster.type == Cluster.EDS
    assert cluster.eds_cluster_config.service_name == "reviews/v2"
    assert cluster.eds_cluster_config.eds_config.HasField("ads")
    assert cluster.eds_cluster_config.eds_config.resource_api_version == 2  # V3
    assert cluster.connect_timeout.ToNanoseconds() == 250_000_000
    assert not cluster.HasField("load_assignment")
    assert cluster.lb_policy == Cluster.ROUND_ROBIN


def test_any_dns_endpoint_makes_a_strict_dns_cluster_with_inline_endpoints() -> None:
    svc = service("catalog", subsets=(), endpoints=(Endpoint("catalog.internal", 80),
                                                    Endpoint("10.0.0.1", 80)))
    cluster = clusters.cluster(svc)
    assert cluster.type == Cluster.STRICT_DNS
    assert cluster.dns_lookup_family == Cluster.V4_PREFERRED
    assert not cluster.HasField("eds_cluster_config")
    assert cluster.load_assignment.cluster_name == "catalog"
    hosts = [e.endpoint.address.socket_address.address
             for e in cluster.load_assignment.endpoints[0].lb_endpoints]
    assert hosts == ["10.0.0.1", "catalog.internal"]


@pytest.mark.parametrize(("balancer", "policy"), [
    ("round_robin", Cluster.ROUND_ROBIN), ("least_request", Cluster.LEAST_REQUEST),
    ("random", Cluster.RANDOM), ("ring_hash", Cluster.RING_HASH), ("maglev", Cluster.MAGLEV),
])
def test_load_balancer(balancer: str, policy: int) -> None:
    assert clusters.cluster(service(load_balancer=balancer)).lb_policy == policy


@pytest.mark.parametrize("protocol", ["http2", "grpc"])
def test_http2_and_grpc_upstreams_speak_http2(protocol: str) -> None:
    cluster = clusters.cluster(service(protocol=protocol))
    packed = cluster.typed_extension_protocol_options[clusters.HTTP_PROTOCOL_OPTIONS]
    options = HttpProtocolOptions()
    assert packed.Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")


@pytest.mark.parametrize("protocol", ["http", "tcp"])
def test_other_protocols_have_no_protocol_options(protocol: str) -> None:
    assert not clusters.cluster(service(protocol=protocol)).typed_extension_protocol_options


def test_http_health_check() -> None:
    check = HealthCheck("http", path="/healthz", interval=5.0, timeout=0.5, unhealthy_threshold=2,
                        healthy_threshold=3, expected_statuses=((200, 300), (404, 405)))
    (hc,) = clusters.cluster(service(health_check=check), "v1").health_checks
    assert hc.interval.ToSeconds() == 5
    assert hc.timeout.ToMilliseconds() == 500
    assert hc.unhealthy_threshold.value == 2
    assert hc.healthy_threshold.value == 3
    assert hc.http_health_check.path == "/healthz"
    # Not the cluster name "reviews/v1", which is no valid Host.
    assert hc.http_health_check.host == "reviews"
    assert [(r.start, r.end) for r in hc.http_health_check.expected_statuses] == [
        (200, 300), (404, 405)]
    assert hc.http_health_check.codec_client_type == CodecClientType.HTTP1


def test_http_health_check_of_an_http2_service_uses_http2() -> None:
    svc = service(protocol="http2", health_check=HealthCheck("http", path="/"))
    (hc,) = clusters.cluster(svc).health_checks
    assert hc.http_health_check.codec_client_type == CodecClientType.HTTP2


def test_tcp_and_grpc_health_checks() -> None:
    (tcp,) = clusters.cluster(service(health_check=HealthCheck("tcp"))).health_checks
    assert tcp.WhichOneof("health_checker") == "tcp_health_check"
    grpc_service = service(protocol="grpc", health_check=HealthCheck("grpc"))
    (grpc,) = clusters.cluster(grpc_service).health_checks
    assert grpc.WhichOneof("health_checker") == "grpc_health_check"
    assert grpc.grpc_health_check.authority == "reviews"


def test_circuit_breaker_sets_only_given_limits_at_default_priority() -> None:
    cluster = clusters.cluster(service(circuit_breaker=CircuitBreaker(max_connections=10,
                                                                      max_retries=2)))
    (thresholds,) = cluster.circuit_breakers.thresholds
    assert thresholds.priority == 0  # DEFAULT
    assert thresholds.max_connections.value == 10
    assert thresholds.max_retries.value == 2
    assert not thresholds.HasField("max_requests")
    assert not thresholds.HasField("max_pending_requests")


def test_outlier_detection() -> None:
    detection = OutlierDetection(consecutive_5xx=5, consecutive_gateway_errors=3, interval=10.0,
                                 base_ejection_time=30.0, max_ejection_percent=50)
    outlier = clusters.cluster(service(outlier_detection=detection)).outlier_detection
    assert outlier.consecutive_5xx.value == 5
    assert outlier.consecutive_gateway_failure.value == 3
    assert outlier.enforcing_consecutive_gateway_failure.value == 100  # Envoy's default is 0
    assert outlier.interval.ToSeconds() == 10
    assert outlier.base_ejection_time.ToSeconds() == 30
    assert outlier.max_ejection_percent.value == 50


def test_empty_outlier_detection_is_still_turned_on() -> None:
    cluster = clusters.cluster(service(outlier_detection=OutlierDetection()))
    assert cluster.HasField("outlier_detection")


def test_no_optional_sections_unless_asked() -> None:
    cluster = clusters.cluster(service())
    for field in ("circuit_breakers", "outlier_detection"):
        assert not cluster.HasField(field)
    assert not cluster.health_checks


# ---- endpoints ----------------------------------------------------------------------------------


def test_load_assignment_sorts_endpoints_and_keeps_weights_and_labels() -> None:
    assignment = endpoints.load_assignment("reviews", [
        Endpoint("127.0.0.2", 80, weight=5), Endpoint("127.0.0.1", 81, V1),
        Endpoint("127.0.0.1", 80)])
    (locality,) = assignment.endpoints
    addresses = [(e.endpoint.address.socket_address.address,
                  e.endpoint.address.socket_address.port_value) for e in locality.lb_endpoints]
    assert addresses == [("127.0.0.1", 80), ("127.0.0.1", 81), ("127.0.0.2", 80)]
    plain, labelled, weighted = locality.lb_endpoints
    assert not plain.HasField("load_balancing_weight")
    assert not plain.HasField("metadata")
    assert dict(labelled.metadata.filter_metadata["meshpilot"]) == {"version": "v1"}
    assert weighted.load_balancing_weight.value == 5


def test_load_assignment_without_endpoints_has_no_locality() -> None:
    assert not endpoints.load_assignment("empty", []).endpoints


# ---- listeners ----------------------------------------------------------------------------------


def test_listener_serves_http_through_rds_over_ads() -> None:
    gateway = edge(GatewayListener("http", 8080, address="127.0.0.1"))
    listener = listeners.listener(gateway, gateway.listeners[0])
    assert listener.name == "edge/http"
    assert listener.address.socket_address.address == "127.0.0.1"
    assert listener.address.socket_address.port_value == 8080
    (chain,) = listener.filter_chains
    (network_filter,) = chain.filters
    assert network_filter.name == "envoy.filters.network.http_connection_manager"
    manager = hcm.HttpConnectionManager()
    assert network_filter.typed_config.Unpack(manager)
    assert manager.stat_prefix == "edge/http"
    assert manager.rds.route_config_name == "edge/http"
    assert manager.rds.config_source.HasField("ads")
    assert manager.rds.config_source.resource_api_version == 2  # V3
    assert [f.name for f in manager.http_filters] == [
        "envoy.filters.http.cors", "envoy.filters.http.fault", "envoy.filters.http.router"]
    assert manager.use_remote_address.value
    assert manager.normalize_path.value
    assert manager.merge_slashes
    assert (manager.path_with_escaped_slashes_action
            == hcm.HttpConnectionManager.UNESCAPE_AND_REDIRECT)
    assert not manager.HasField("generate_request_id")  # Envoy's default: generate one


# ---- routes: configuration and virtual hosts ----------------------------------------------------


def test_one_virtual_host_per_attached_route_matched_whatever_the_hosts_port() -> None:
    config = only_route_config(contract_model())
    assert config.name == "edge/http"
    # A Host header's port is not compared (Host: shop.example.com:1234 behind a NAT matches).
    assert config.ignore_port_in_host_matching
    (vhost,) = config.virtual_hosts
    assert vhost.name == "shop"
    assert list(vhost.domains) == ["*.shop.example.com", "shop.example.com"]


def test_domains_are_the_hosts_on_any_port() -> None:
    assert routes.domains(("a.example", "*"), 80) == ["*", "a.example"]
    assert routes.domains(("*",), 8080) == ["*"]


def test_routes_attach_to_the_listeners_they_name() -> None:
    gateway = edge(GatewayListener("http", 8080), GatewayListener("admin", 9000))
    everywhere = Route("a-all", AT, "edge", rules=(rule(),))
    admin_only = Route("b-admin", AT, "edge", hosts=("admin.example",), listeners=("admin",),
                       rules=(rule(),))
    model = Model(services=(service(),), gateways=(gateway,), routes=(everywhere, admin_only))
    configs = messages(Translation(model).snapshot("edge"), types.ROUTE)
    assert {n: [v.name for v in c.virtual_hosts] for n, c in configs.items()} == {
        "edge/admin": ["a-all", "b-admin"], "edge/http": ["a-all"]}


def test_a_listener_without_routes_still_gets_its_route_configuration() -> None:
    model = Model(gateways=(edge(),))
    config = only_route_config(model)
    assert config.name == "edge/http"
    assert not config.virtual_hosts


def test_a_domain_claimed_twice_stays_with_the_first_route_by_name() -> None:
    first = Route("a", AT, "edge", hosts=("x.example", "y.example"), rules=(rule(),))
    second = Route("b", AT, "edge", hosts=("y.example", "z.example"), rules=(rule(),))
    only_taken = Route("c", AT, "edge", hosts=("x.example",), rules=(rule(),))
    model = Model(services=(service(),), gateways=(edge(GatewayListener("http", 80)),),
                  routes=(first, second, only_taken))
    config = only_route_config(model)
    assert {v.name: list(v.domains) for v in config.virtual_hosts} == {
        "a": ["x.example", "y.example"], "b": ["z.example"]}


# ---- routes: matches ----------------------------------------------------------------------------


def test_rules_keep_their_order_and_several_matches_get_one_entry_each() -> None:
    first = rule(Match(path=StringMatch("exact", "/a")), Match(path=StringMatch("regex", "/b.*")))
    second = rule()
    entries = entries_of(first, second)
    assert [e.name for e in entries] == ["shop/rules[0]/match[0]", "shop/rules[0]/match[1]",
                                         "shop/rules[1]"]
    assert entries[0].match.path == "/a"
    assert entries[1].match.safe_regex.regex == "/b.*"
    assert entries[2].match.prefix == "/"  # no path: every path


def test_path_prefix() -> None:
    (entry,) = entries_of(rule(Match(path=StringMatch("prefix", "/api/"))))
    assert entry.match.prefix == "/api/"


def test_one_method_is_an_exact_match_several_an_alternation() -> None:
    (one,) = entries_of(rule(Match(methods=("GET",))))
    (matcher,) = one.match.headers
    assert matcher.name == ":method"
    assert matcher.string_match.exact == "GET"
    (several,) = entries_of(rule(Match(methods=("POST", "GET", "POST"))))
    (matcher,) = several.match.headers
    assert matcher.string_match.safe_regex.regex == "GET|POST"


def test_header_matches_sorted_by_name() -> None:
    match = Match(methods=("GET",), headers=(
        ("x-exact", StringMatch("exact", "1")), ("x-absent", StringMatch("absent")),
        ("x-prefix", StringMatch("prefix", "ab")), ("x-regex", StringMatch("regex", "a+")),
        ("x-present", StringMatch("present"))))
    (entry,) = entries_of(rule(match))
    by_name = {h.name: h for h in entry.match.headers}
    assert [h.name for h in entry.match.headers] == [":method", "x-absent", "x-exact",
                                                     "x-prefix", "x-present", "x-regex"]
    assert by_name["x-exact"].string_match.exact == "1"
    assert by_name["x-prefix"].string_match.prefix == "ab"
    assert by_name["x-regex"].string_match.safe_regex.regex == "a+"
    assert by_name["x-present"].present_match and not by_name["x-present"].invert_match
    assert by_name["x-absent"].present_match and by_name["x-absent"].invert_match


def test_query_parameter_matches() -> None:
    match = Match(query=(("v", StringMatch("exact", "2")), ("debug", StringMatch("present")),
                         ("q", StringMatch("regex", "[a-z]+")), ("p", StringMatch("prefix", "x"))))
    (entry,) = entries_of(rule(match))
    by_name = {q.name: q for q in entry.match.query_parameters}
    assert list(by_name) == ["debug", "p", "q", "v"]
    assert by_name["v"].string_match.exact == "2"
    assert by_name["debug"].present_match
    assert by_name["q"].string_match.safe_regex.regex == "[a-z]+"
    assert by_name["p"].string_match.prefix == "x"


def test_an_absent_query_parameter_is_an_inverted_path_match() -> None:
    (entry,) = entries_of(rule(Match(query=(("no-cache", StringMatch("absent")),))))
    assert not entry.match.query_parameters
    (matcher,) = entry.match.headers
    assert matcher.name == ":path"
    assert matcher.invert_match
    assert matcher.string_match.safe_regex.regex == r"[^?]*\?(.*&)?no\-cache([=&].*)?"
    # Envoy matches the whole :path (RE2 full match, the same as Python's fullmatch here).
    has_parameter = re.compile(matcher.string_match.safe_regex.regex)
    for path in ("/?no-cache", "/a?x=1&no-cache=1", "/a?no-cache&x", "/a?no-cache="):
        assert has_parameter.fullmatch(path), path
    for path in ("/a", "/no-cache", "/a?x=no-cache", "/a?no-caches=1", "/a?xno-cache=1"):
        assert not has_parameter.fullmatch(path), path


# ---- routes: actions ----------------------------------------------------------------------------


def test_one_backend_is_a_cluster_several_are_weighted_clusters_as_written() -> None:
    one, several = entries_of(
        rule(Match(path=StringMatch("prefix", "/a")), backends=(Backend("reviews", "v2"),)),
        rule(backends=(Backend("reviews", "v2", 10), Backend("reviews", "v1", 90),
                       Backend("reviews", weight=5))))
    assert one.route.cluster == "reviews/v2"
    weighted = several.route.weighted_clusters.clusters
    assert [(c.name, c.weight.value) for c in weighted] == [
        ("reviews/v2", 10), ("reviews/v1", 90), ("reviews", 5)]
    assert not several.route.weighted_clusters.HasField("total_weight")


def test_rewrites() -> None:
    prefix, regex = entries_of(
        rule(Match(path=StringMatch("prefix", "/old/")), rewrite_path=PathRewrite(prefix="/new/"),
             rewrite_host="internal.example"),
        rule(rewrite_path=PathRewrite(regex="^/v(\\d+)/(.*)", substitution="/\\2?v=\\1")))
    assert prefix.route.prefix_rewrite == "/new/"
    assert prefix.route.host_rewrite_literal == "internal.example"
    assert regex.route.regex_rewrite.pattern.regex == "^/v(\\d+)/(.*)"
    assert regex.route.regex_rewrite.substitution == "/\\2?v=\\1"


@pytest.mark.parametrize(("status", "code"), [
    (301, RedirectAction.MOVED_PERMANENTLY), (302, RedirectAction.FOUND),
    (303, RedirectAction.SEE_OTHER), (307, RedirectAction.TEMPORARY_REDIRECT),
    (308, RedirectAction.PERMANENT_REDIRECT),
])
def test_redirect_status(status: int, code: int) -> None:
    (entry,) = entries_of(rule(backends=(), redirect=Redirect(path="/x", status=status)))
    assert entry.redirect.response_code == code


def test_redirect_fields() -> None:
    whole, prefix = entries_of(
        rule(Match(path=StringMatch("exact", "/old")), backends=(),
             redirect=Redirect(scheme="https", host="new.example", port=8443, path="/new")),
        rule(Match(path=StringMatch("prefix", "/docs/")), backends=(),
             redirect=Redirect(prefix="/manual/", status=301)))
    assert not whole.HasField("route")
    assert whole.redirect.scheme_redirect == "https"
    assert whole.redirect.host_redirect == "new.example"
    assert whole.redirect.port_redirect == 8443
    assert whole.redirect.path_redirect == "/new"
    assert prefix.redirect.prefix_rewrite == "/manual/"
    assert not prefix.redirect.path_redirect


def test_direct_response() -> None:
    with_body, without = entries_of(
        rule(Match(path=StringMatch("exact", "/ping")), backends=(),
             direct_response=DirectResponse(200, "pong\n")),
        rule(backends=(), direct_response=DirectResponse(404)))
    assert with_body.direct_response.status == 200
    assert with_body.direct_response.body.inline_string == "pong\n"
    assert without.direct_response.status == 404
    assert not without.direct_response.HasField("body")


def test_header_operations() -> None:
    ops = HeaderOps(add=(("x-a", "1"), ("x-a", "2")), set=(("x-s", "3"),), remove=("x-r",))
    (entry,) = entries_of(rule(request_headers=ops, response_headers=HeaderOps(
        set=(("cache-control", "no-store"),), remove=("server",))))
    assert [(o.header.key, o.header.value, o.append_action)
            for o in entry.request_headers_to_add] == [
        ("x-s", "3", HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
        ("x-a", "1", HeaderValueOption.APPEND_IF_EXISTS_OR_ADD),
        ("x-a", "2", HeaderValueOption.APPEND_IF_EXISTS_OR_ADD)]
    assert list(entry.request_headers_to_remove) == ["x-r"]
    assert [(o.header.key, o.append_action) for o in entry.response_headers_to_add] == [
        ("cache-control", HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD)]
    assert list(entry.response_headers_to_remove) == ["server"]


def test_timeout_and_retries() -> None:
    with_retries, disabled, default = entries_of(
        rule(Match(path=StringMatch("prefix", "/a")), timeout=2.5,
             retries=Retries(3, on=("5xx", "unavailable", "5xx"), per_try_timeout=0.5)),
        rule(Match(path=StringMatch("prefix", "/b")), timeout=0.0, retries=Retries(1)),
        rule())
    action = with_retries.route
    assert action.timeout.ToMilliseconds() == 2500
    assert action.retry_policy.retry_on == "5xx,unavailable"  # gRPC names too, once each
    assert action.retry_policy.num_retries.value == 3
    assert action.retry_policy.per_try_timeout.ToMilliseconds() == 500
    assert disabled.route.HasField("timeout")  # 0s: no timeout at all
    assert disabled.route.timeout.ToNanoseconds() == 0
    assert disabled.route.retry_policy.retry_on == "5xx,reset,connect-failure"
    assert not disabled.route.retry_policy.HasField("per_try_timeout")
    assert not default.route.HasField("timeout")
    assert not default.route.HasField("retry_policy")


# ---- the Translation: views, scoping, determinism, raw resources --------------------------------


def large_mesh() -> Model:
    """The contract model plus services no route of `edge` sends traffic to."""
    model = contract_model()
    unused = tuple(service(f"svc-{i:03}") for i in range(20))
    other_gateway = Gateway("internal", AT, (GatewayListener("http", 9090),))
    elsewhere = Route("internal", AT, "internal", rules=(rule(backends=(Backend("svc-001"),)),))
    return replace(model, services=tuple(sorted(model.services + unused, key=lambda s: s.name)),
                   gateways=(edge(), other_gateway), routes=(elsewhere, *model.routes))


def test_a_gateway_view_gets_its_listeners_routes_and_only_referenced_clusters() -> None:
    snapshot = Translation(large_mesh()).snapshot("edge")
    assert list(snapshot.get(types.LISTENER)) == ["edge/http"]
    assert list(snapshot.get(types.ROUTE)) == ["edge/http"]
    assert list(snapshot.get(types.CLUSTER)) == ["reviews/v1", "reviews/v2"]
    assert list(snapshot.get(types.ENDPOINT)) == ["reviews/v1", "reviews/v2"]
    other = Translation(large_mesh()).snapshot("internal")
    assert list(other.get(types.CLUSTER)) == ["svc-001"]


def test_a_subset_assignment_holds_only_the_subset_endpoints() -> None:
    assignments = messages(Translation(contract_model()).snapshot("edge"), types.ENDPOINT)
    v1 = assignments["reviews/v1"]
    assert isinstance(v1, ClusterLoadAssignment)
    (locality,) = v1.endpoints
    assert [e.endpoint.address.socket_address.port_value for e in locality.lb_endpoints] == [9081]


def test_dns_clusters_have_no_separate_assignment() -> None:
    catalog = service("catalog", subsets=(), endpoints=(Endpoint("catalog.internal", 80),))
    route = Route("shop", AT, "edge", rules=(rule(backends=(Backend("catalog"),)),))
    snapshot = Translation(Model(services=(catalog,), gateways=(edge(),),
                                 routes=(route,))).snapshot("edge")
    assert list(snapshot.get(types.CLUSTER)) == ["catalog"]
    assert not snapshot.get(types.ENDPOINT)


def test_a_view_that_is_no_gateway_gets_no_service_resources() -> None:
    for view in ("reviews", "nobody"):
        assert not Translation(large_mesh()).snapshot(view).counts()


def test_backends_of_unknown_services_or_subsets_get_no_cluster() -> None:
    route = Route("shop", AT, "edge", rules=(rule(backends=(
        Backend("reviews", "v9"), Backend("ghost"), Backend("reviews", "v1"))),))
    model = Model(services=(service(),), gateways=(edge(),), routes=(route,))
    assert list(Translation(model).snapshot("edge").get(types.CLUSTER)) == ["reviews/v1"]


def test_equal_models_give_byte_identical_snapshots() -> None:
    def rendered(model: Model) -> list[tuple[str, str, bytes]]:
        snapshot = Translation(model).snapshot("edge")
        return [(t, name, r.body) for t in snapshot.type_urls()
                for name, r in snapshot.get(t).items()]

    first, second = large_mesh(), large_mesh()
    assert first is not second
    assert rendered(first) == rendered(second)
    assert Translation(first).snapshot("edge").version == Translation(second).snapshot(
        "edge").version


def test_endpoint_order_in_the_policy_does_not_change_the_bytes() -> None:
    model = contract_model()
    (reviews,) = model.services
    flipped = replace(model, services=(replace(reviews,
                                               endpoints=tuple(reversed(reviews.endpoints))),))
    assert Translation(model).snapshot("edge").version == Translation(flipped).snapshot(
        "edge").version


def test_a_service_shared_by_many_views_is_serialized_once() -> None:
    gateways = tuple(Gateway(f"gw-{i}", AT, (GatewayListener("http", 8000 + i),))
                     for i in range(3))
    shared = tuple(Route(f"r-{i}", AT, f"gw-{i}", rules=(rule(backends=(Backend("reviews"),)),))
                   for i in range(3))
    translation = Translation(Model(services=(service(),), gateways=gateways, routes=shared))
    views = [translation.snapshot(g.name) for g in gateways]
    clusters_seen = {id(v.get(types.CLUSTER)["reviews"]) for v in views}
    assignments_seen = {id(v.get(types.ENDPOINT)["reviews"]) for v in views}
    assert len(clusters_seen) == len(assignments_seen) == 1


def raw_cluster(name: str, views: frozenset[str] | None = None) -> RawResource:
    message = Cluster(name=name, type=Cluster.STATIC)
    message.connect_timeout.FromSeconds(7)
    return RawResource(types.CLUSTER, name, message, AT, "extras", views)


def test_raw_resources_merge_into_the_gateway_view() -> None:
    model = replace(contract_model(), raw=(raw_cluster("extra"),
                                           raw_cluster("elsewhere", frozenset({"other"}))))
    snapshot = Translation(model).snapshot("edge")
    assert list(snapshot.get(types.CLUSTER)) == ["extra", "reviews/v1", "reviews/v2"]
    assert list(Translation(model).snapshot("other").get(types.CLUSTER)) == ["elsewhere",
                                                                              "extra"]


def test_a_raw_resource_wins_over_a_generated_one_of_the_same_type_and_name() -> None:
    model = replace(contract_model(), raw=(raw_cluster("reviews/v2"),))
    snapshot = Translation(model).snapshot("edge")
    clusters_by_name = messages(snapshot, types.CLUSTER)
    overridden = clusters_by_name["reviews/v2"]
    assert isinstance(overridden, Cluster)
    assert overridden.type == Cluster.STATIC
    assert overridden.connect_timeout.ToSeconds() == 7
    assert clusters_by_name["reviews/v1"].type == Cluster.EDS  # type: ignore[attr-defined]
    # Only the same type is overridden: the generated assignment of that name stays.
    assert "reviews/v2" in snapshot.get(types.ENDPOINT)


def test_generated_resources_name_what_they_depend_on() -> None:
    """The xDS stream orders pushes by these references (make before break)."""
    snapshot = Translation(contract_model()).snapshot("edge")
    assert snapshot.get(types.LISTENER)["edge/http"].refs.routes == {"edge/http"}
    assert snapshot.get(types.ROUTE)["edge/http"].refs.clusters == {"reviews/v1", "reviews/v2"}
    assert snapshot.get(types.CLUSTER)["reviews/v1"].refs.eds_name == "reviews/v1"


# ---- Envoy's verdict ----------------------------------------------------------------------------


def every_feature() -> Model:
    """A model using every mapping above at least once, for Envoy to judge."""
    reviews = contract_model().services[0]
    grpc = service("greeter", protocol="grpc", subsets=(), load_balancer="ring_hash",
                   endpoints=(Endpoint("127.0.0.1", 50051, weight=3),),
                   health_check=HealthCheck("grpc"),
                   outlier_detection=OutlierDetection(consecutive_gateway_errors=2,
                                                      max_ejection_percent=50))
    h2 = service("h2", protocol="http2", subsets=(), load_balancer="maglev",
                 endpoints=(Endpoint("::1", 8443),), health_check=HealthCheck("http", path="/"))
    dns = service("catalog", subsets=(), load_balancer="random",
                  endpoints=(Endpoint("catalog.internal", 80),), health_check=HealthCheck("tcp"),
                  circuit_breaker=CircuitBreaker(max_retries=3))
    everything = Route("everything", AT, "edge", hosts=("all.example", "*.all.example"), rules=(
        rule(Match(path=StringMatch("exact", "/ping"), methods=("GET", "HEAD")), backends=(),
             direct_response=DirectResponse(200, "pong")),
        rule(Match(path=StringMatch("prefix", "/old/")), backends=(),
             redirect=Redirect(scheme="https", host="new.example", port=8443, prefix="/new/",
                               status=308)),
        rule(Match(path=StringMatch("exact", "/moved")), backends=(),
             redirect=Redirect(path="/here", status=301)),
        rule(Match(path=StringMatch("regex", "/v[0-9]+/.*"),
                   headers=(("x-a", StringMatch("absent")), ("x-p", StringMatch("present"))),
                   query=(("q", StringMatch("regex", "[a-z]+")),
                          ("no-cache", StringMatch("absent")))),
             backends=(Backend("greeter"),),
             rewrite_path=PathRewrite(regex="^/v([0-9]+)/(.*)", substitution="/\\2"),
             retries=Retries(2, on=("unavailable", "cancelled"))),
        rule(Match(path=StringMatch("prefix", "/api/")), Match(methods=("POST",)),
             backends=(Backend("h2"), Backend("catalog", weight=3)),
             rewrite_path=PathRewrite(prefix="/"), rewrite_host="api.internal", timeout=0.0,
             request_headers=HeaderOps(add=(("x-a", "1"),), set=(("x-s", "2"),),
                                       remove=("cookie",)),
             response_headers=HeaderOps(set=(("x-served-by", "meshpilot"),),
                                        remove=("server",))),
    ))
    contract = contract_model()
    return Model(services=(reviews, grpc, h2, dns),
                 gateways=(edge(GatewayListener("http", 8080),
                                GatewayListener("plain", 80, address="::")),),
                 routes=(*contract.routes, everything))


@pytest.mark.envoy
def test_envoy_accepts_every_feature() -> None:
    validate_config(static_bootstrap(snapshot_to_dict(Translation(every_feature()).snapshot(
        "edge"))))
