"""Istio traffic settings and their native equivalents: DestinationRule localityLbSetting
(and `locality_lb`, computed per calling sidecar by `translators/locality.py`), VirtualService
`ignoreUriCase`, tcp `destinationSubnets`/`sourceSubnet`, MESH_EXTERNAL TCP hosts."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from google.protobuf.json_format import MessageToDict

from meshpilot.base.errors import PolicyError
from meshpilot.base.types import CLUSTER, ENDPOINT, LISTENER, ROUTE
from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import Endpoint, Locality, LocalityLb, Model, SlowStart, TcpKeepalive
from meshpilot.translators import Translation, locality
from meshpilot.translators.locality import Caller

_MESSAGES: dict[str, Any] = {LISTENER: Listener, CLUSTER: Cluster, ROUTE: RouteConfiguration,
                             ENDPOINT: ClusterLoadAssignment}

ECHO = "echo.default.svc.cluster.local:9080"

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, locality: us-east/z1/r1, labels: {tier: gold, version: v1}}
  - {address: 10.0.0.2, locality: us-east/z2, labels: {tier: gold, version: v1}}
  - {address: 10.0.0.3, locality: us-west/z1, labels: {tier: iron, version: v1}}
  - {address: 10.0.0.4, locality: eu/z1, labels: {tier: gold, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: east, annotations: {meshpilot.io/outbound-port: "15001"}}
spec: {address: 127.0.0.1, locality: us-east/z1/r1, labels: {app: east, tier: gold}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: west, annotations: {meshpilot.io/outbound-port: "15002"}}
spec: {address: 127.0.0.1, locality: us-west/z1, labels: {app: west}}
"""


def rule(load_balancer: str, outlier: bool = True, subsets: str = "") -> str:
    outlier_text = "    outlierDetection: {consecutive5xxErrors: 1}\n" if outlier else ""
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo}}
spec:
  host: echo
{subsets}  trafficPolicy:
{outlier_text}    loadBalancer: {load_balancer}
"""


def load(*documents: str) -> Model:
    return load_policy_text("\n---\n".join((MESH, *documents)), "istio.yaml")


def errors(*documents: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(*documents)
    return [str(issue) for issue in caught.value.issues]


def dumped(model: Model, view: str, type_url: str, name: str) -> dict[str, Any]:
    resource = Translation(model).snapshot(view).get(type_url)[name]
    message = _MESSAGES[type_url]()
    message.ParseFromString(resource.body)
    return MessageToDict(message)


def priorities(model: Model, view: str, name: str = ECHO) -> dict[str, int]:
    """Endpoint address -> its priority in the view's assignment of `name`."""
    assignment = dumped(model, view, ENDPOINT, name)
    return {e["endpoint"]["address"]["socketAddress"]["address"]: group.get("priority", 0)
            for group in assignment["endpoints"] for e in group["lbEndpoints"]}


# ---- translators/locality.py --------------------------------------------------------------------


def _endpoint(host: str, where: str, **labels: str) -> Endpoint:
    region, zone, sub_zone = [*where.split("/"), "", ""][:3]
    return Endpoint(host=host, port=80, labels=tuple(sorted(labels.items())),
                    region=region or None, zone=zone or None, sub_zone=sub_zone or None)


ENDPOINTS = (_endpoint("a", "us-east/z1/r1", tier="gold"), _endpoint("b", "us-east/z1/r2"),
             _endpoint("c", "us-east/z2"), _endpoint("d", "us-west/z1", tier="gold"),
             _endpoint("e", "eu/z1"))
EAST = Caller(Locality("us-east", "z1", "r1"), (("tier", "gold"),))


def ranks(found: tuple[Endpoint, ...]) -> dict[str, int]:
    return {e.host: e.priority for e in found}


def test_failover_ranks_subzone_zone_region_then_the_rest() -> None:
    found, weights = locality.localized(ENDPOINTS, LocalityLb(), EAST)
    assert weights is None
    assert ranks(found) == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 3}


def test_failover_names_the_next_region() -> None:
    found, _ = locality.localized(ENDPOINTS, LocalityLb(failover=(("us-east", "eu"),)), EAST)
    assert ranks(found) == {"a": 0, "b": 1, "c": 2, "e": 3, "d": 4}
    # A rule for another region changes nothing for this caller.
    found, _ = locality.localized(ENDPOINTS, LocalityLb(failover=(("eu", "us-west"),)), EAST)
    assert ranks(found) == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 3}


def test_failover_priority_by_labels_then_locality_only_with_failover() -> None:
    policy = LocalityLb(failover_priority=("tier",))
    found, _ = locality.localized(ENDPOINTS, policy, EAST)
    assert ranks(found) == {"a": 0, "d": 0, "b": 1, "c": 1, "e": 1}  # labels alone (Istio)
    policy = LocalityLb(failover_priority=("tier",), failover=(("us-east", "eu"),))
    found, _ = locality.localized(ENDPOINTS, policy, EAST)
    # gold first (a, then d in another region), then the rest by locality; numbered w/o gaps
    assert ranks(found) == {"a": 0, "d": 1, "b": 2, "c": 3, "e": 4}
    # A topology key is read from the locality when no label says it.
    policy = LocalityLb(failover_priority=("topology.kubernetes.io/region",))
    found, _ = locality.localized(ENDPOINTS, policy, EAST)
    assert ranks(found) == {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1}


def test_an_endpoints_own_priority_stays_outermost() -> None:
    written = (*ENDPOINTS[:1], Endpoint(host="z", port=80, region="us-east", zone="z1",
                                        sub_zone="r1", priority=1), ENDPOINTS[4])
    found, _ = locality.localized(written, LocalityLb(), EAST)
    assert ranks(found) == {"a": 0, "e": 1, "z": 2}


def test_distribute_shares_and_drops_what_no_pattern_covers() -> None:
    policy = LocalityLb(distribute=(
        ("eu/*", (("eu/*", 100),)),
        ("us-east/*", (("us-east/z1", 70), ("us-west/*", 30))),
    ))
    found, weights = locality.localized(ENDPOINTS, policy, EAST)
    assert [e.host for e in found] == ["a", "b", "d"]  # us-east/z2 and eu: no pattern
    # us-east/z1's 70 is shared by its two subzones (one endpoint each), rounded up.
    assert weights == {Locality("us-east", "z1", "r1"): 35, Locality("us-east", "z1", "r2"): 35,
                       Locality("us-west", "z1", ""): 30}
    # No rule for the caller: the endpoints as written, no weights.
    found, weights = locality.localized(ENDPOINTS, policy, Caller(Locality("ap", "x")))
    assert found == ENDPOINTS and weights is None


def test_locality_patterns_match_as_istio() -> None:
    here = Locality("us-east", "z1", "r1")
    assert locality.matches(here, "us-east") and locality.matches(here, "us-east/*")
    assert locality.matches(here, "us-east/z1/r1") and locality.matches(here, "*")
    assert not locality.matches(here, "us-east/z2") and not locality.matches(here, "eu/*")


# ---- Istio localityLbSetting ------------------------------------------------------------------


def test_each_sidecar_gets_priorities_for_its_own_locality() -> None:
    model = load(rule("{localityLbSetting: {failover: [{from: us-east, to: eu}]}}"))
    echo = model.service(ECHO)
    assert echo is not None and echo.locality_lb == LocalityLb(failover=(("us-east", "eu"),))
    assert priorities(model, "east.default") == {"10.0.0.1": 0, "10.0.0.2": 1, "10.0.0.4": 2,
                                                 "10.0.0.3": 3}
    assert priorities(model, "west.default") == {"10.0.0.3": 0, "10.0.0.1": 1, "10.0.0.2": 1,
                                                 "10.0.0.4": 1}
    # The cluster is the one every view shares; only the assignment is the caller's.
    assert dumped(model, "east.default", CLUSTER, ECHO) == dumped(model, "west.default",
                                                                  CLUSTER, ECHO)


def test_distribute_weights_and_the_cluster_balances_by_locality() -> None:
    model = load(rule('{localityLbSetting: {distribute: [{from: "us-east/*", '
                      'to: {"us-east/*": 80, "eu/*": 20}}]}}', outlier=False))
    assignment = dumped(model, "east.default", ENDPOINT, ECHO)
    # us-east's 80 shared by its two localities; us-west is in no pattern: left out.
    shares = sorted((g["locality"]["region"], g["loadBalancingWeight"])
                    for g in assignment["endpoints"])
    assert shares == [("eu", 20), ("us-east", 40), ("us-east", 40)]
    cluster = dumped(model, "east.default", CLUSTER, ECHO)
    assert "localityWeightedLbConfig" in cluster["commonLbConfig"]
    # The west caller has no rule: every endpoint, no weights.
    assert len(priorities(model, "west.default")) == 4
    assert "loadBalancingWeight" not in str(dumped(model, "west.default", ENDPOINT, ECHO))


def test_subset_clusters_are_ranked_on_their_own_endpoints() -> None:
    subsets = "  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]\n"
    model = load(rule("{localityLbSetting: {enabled: true}}", subsets=subsets), """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http: [{route: [{destination: {host: echo, subset: v1}, weight: 50},
                  {destination: {host: echo, subset: v2}, weight: 50}]}]
""")
    # v2 is eu's endpoint alone: priority 0 in its own cluster (no empty priorities above it).
    assert priorities(model, "east.default", f"{ECHO}/v2") == {"10.0.0.4": 0}
    assert priorities(model, "east.default", f"{ECHO}/v1") == {"10.0.0.1": 0, "10.0.0.2": 1,
                                                              "10.0.0.3": 2}


def test_failover_without_outlier_detection_is_not_applied_with_a_warning() -> None:
    model = load(rule("{localityLbSetting: {failover: [{from: us-east, to: eu}]}}",
                      outlier=False))
    assert model.service(ECHO).locality_lb is None  # type: ignore[union-attr]
    warnings = [str(w) for w in model.warnings]
    assert sum("spec.trafficPolicy.loadBalancer.localityLbSetting: locality failover needs "
               "outlierDetection" in w for w in warnings) == 1, warnings
    assert set(priorities(model, "east.default").values()) == {0}


def test_istio_default_locality_failover_with_outlier_detection_and_enabled_false() -> None:
    # Istio's mesh config turns locality balancing on: outlierDetection alone fails over by
    # locality (the endpoints have one) ...
    model = load(rule("{simple: ROUND_ROBIN}"))
    assert model.service(ECHO).locality_lb == LocalityLb()  # type: ignore[union-attr]
    assert priorities(model, "east.default")["10.0.0.1"] == 0
    assert priorities(model, "east.default") == {"10.0.0.1": 0, "10.0.0.2": 1, "10.0.0.3": 2,
                                                 "10.0.0.4": 2}
    # ... unless the rule says enabled: false.
    model = load(rule("{simple: ROUND_ROBIN, localityLbSetting: {enabled: false}}"))
    assert model.service(ECHO).locality_lb is None  # type: ignore[union-attr]


def test_gateway_views_get_the_endpoints_as_written() -> None:
    model = load(rule("{localityLbSetting: {failover: [{from: us-east, to: eu}]}}"), """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http: [{route: [{destination: {host: echo}}]}]
""")
    assert set(priorities(model, "istio=ingressgateway").values()) == {0}


@pytest.mark.parametrize(("setting", "message"), [
    ('{failover: [{from: us-east, to: eu}], distribute: [{from: "*", to: {"*": 100}}]}',
     '"failover" cannot be used together with "distribute"'),
    ('{distribute: [{from: "us-east/*", to: {"us-east/*": 60, "eu/*": 30}}]}',
     "the weights add up to 90: they must add up to 100"),
    ('{distribute: [{from: "us-east/*", to: {"us-east/*": 0, "eu/*": 100}}]}',
     "must be from 1 to 100, found 0"),
    ('{distribute: [{from: "*/z1", to: {"*": 100}}]}', "a wildcard '*' is allowed once, as "
                                                       "the last part"),
    ('{distribute: [{from: "us-east/*", to: {"*": 100}}, {from: "us-east/z1", to: {"*": 100}}]}',
     "locality us-east/z1 is already covered by us-east/*"),
    ("{failover: [{from: us-east, to: us-east}]}", "failover must name another region"),
    ("{failover: [{from: us-east/z1, to: eu}]}", "failover names a region"),
    ("{failover: [{from: us-east, to: eu}], failoverPriority: [topology.kubernetes.io/zone]}",
     "cannot be in failoverPriority together with failover"),
    ("{enabled: yes-please}", "spec.trafficPolicy.loadBalancer.localityLbSetting.enabled"),
])
def test_locality_setting_errors(setting: str, message: str) -> None:
    found = errors(rule(f"{{localityLbSetting: {setting}}}"))
    assert any(message in e and "istio.yaml:" in e for e in found), found


# ---- native locality_lb ----------------------------------------------------------------------


NATIVE = """
kind: Service
name: payments
endpoints:
  - {address: 10.0.0.1:8080, region: eu-west, zone: a, sub_zone: r1}
  - {address: 10.1.0.1:8080, region: us-east, zone: a}
  - {address: 10.2.0.1:8080, region: ap, zone: a}
outlier_detection: {consecutive_5xx: 3}
locality_lb: {failover: [{from: eu-west, to: ap}]}
---
kind: Service
name: checkout
sidecar: {locality: eu-west/a/r1, labels: {tier: gold}, outbound_port: 15001,
          calls: [payments]}
"""


def test_native_locality_lb_and_sidecar_locality() -> None:
    model = load_policy_text(NATIVE, "policy.yaml")
    payments, checkout = model.service("payments"), model.service("checkout")
    assert payments is not None and checkout is not None and checkout.sidecar is not None
    assert payments.locality_lb == LocalityLb(failover=(("eu-west", "ap"),))
    assert checkout.sidecar.locality == Locality("eu-west", "a", "r1")
    assert checkout.sidecar.labels == (("tier", "gold"),)
    assert payments.endpoints[0].sub_zone == "r1"
    assert priorities(model, "checkout", "payments") == {"10.0.0.1": 0, "10.2.0.1": 1,
                                                         "10.1.0.1": 2}


@pytest.mark.parametrize(("change", "message"), [
    (("outlier_detection: {consecutive_5xx: 3}\n", ""),
     "locality_lb: failover moves traffic only off endpoints found unhealthy"),
    (("locality_lb:", "zone_weights: {a: 1}\nlocality_lb:"),
     "write zone_weights or locality_lb, not both"),
    (("locality: eu-west/a/r1", "locality: eu-west/*"), "a sidecar's locality is one place"),
    (("{failover: [{from: eu-west, to: ap}]}", "{failover: [{from: eu-west, to: ap}], "
                                                "distribute: []}"),
     '"failover" cannot be used together with "distribute"'),
])
def test_native_locality_errors(change: tuple[str, str], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(NATIVE.replace(*change), "policy.yaml")
    found = [str(i) for i in caught.value.issues]
    assert any(message in e and "policy.yaml:" in e for e in found), found


# ---- ignoreUriCase ---------------------------------------------------------------------------


def test_ignore_uri_case_on_prefix_exact_and_regex() -> None:
    model = load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - match: [{uri: {prefix: /api/}, ignoreUriCase: true}]
    route: [{destination: {host: echo}}]
  - match: [{uri: {exact: /Login}, ignoreUriCase: true}]
    route: [{destination: {host: echo}}]
  - match: [{uri: {regex: "/v[0-9]+/.*"}, ignoreUriCase: true}]
    route: [{destination: {host: echo}}]
  - match: [{uri: {prefix: /CaSe}}]
    route: [{destination: {host: echo}}]
""")
    (vhost,) = [v for v in dumped(model, "east.default", ROUTE, "outbound")["virtualHosts"]
                if v["name"] == ECHO]
    matches = [r["match"] for r in vhost["routes"]]
    assert matches[0] == {"prefix": "/api/", "caseSensitive": False}
    assert matches[1] == {"path": "/Login", "caseSensitive": False}
    assert matches[2] == {"safeRegex": {"regex": "(?i)/v[0-9]+/.*"}}
    assert matches[3] == {"prefix": "/CaSe"}


def test_ignore_uri_case_must_be_a_boolean() -> None:
    found = errors("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - match: [{uri: {prefix: /api/}, ignoreUriCase: sure}]
    route: [{destination: {host: echo}}]
""")
    assert any("spec.http[0].match[0].ignoreUriCase" in e for e in found), found


# ---- tcp subnets and external TCP hosts --------------------------------------------------------


TCP = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 3306, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.41, labels: {v: a}}, {address: 10.0.0.42, labels: {v: b}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db}
spec:
  host: db
  subsets: [{name: a, labels: {v: a}}, {name: b, labels: {v: b}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 9000, name: tcp, protocol: TCP}, hosts: ["*"]}]
"""


def gateway_routes(tcp: str, gateways: str = "[istio-system/edge]") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: ["*"]
  gateways: {gateways}
  tcp: {tcp}
"""


def test_subnets_become_filter_chain_matches_at_a_gateway() -> None:
    model = load(TCP, gateway_routes(
        "[{match: [{destinationSubnets: [10.1.0.0/16, 10.2.3.4]}, {sourceSubnet: 192.0.2.7/24}],"
        " route: [{destination: {host: db, subset: a}}]},"
        " {route: [{destination: {host: db, subset: b}}]},"
        " {match: [{sourceSubnet: 198.51.100.0/24}], route: [{destination: {host: db}}]}]"))
    listener = dumped(model, "istio=ingressgateway", LISTENER, "istio=ingressgateway/tcp-9000")
    chains = [(c.get("filterChainMatch", {}),
               c["filters"][0]["typedConfig"]["cluster"]) for c in listener["filterChains"]]
    assert chains == [
        ({"prefixRanges": [{"addressPrefix": "10.1.0.0", "prefixLen": 16},
                           {"addressPrefix": "10.2.3.4", "prefixLen": 32}]},
         "db.default.svc.cluster.local:3306/a"),
        ({"sourcePrefixRanges": [{"addressPrefix": "192.0.2.0", "prefixLen": 24}]},
         "db.default.svc.cluster.local:3306/a"),
        ({}, "db.default.svc.cluster.local:3306/b"),
        # the route after the one taking every connection is never reached: left out
    ]


def test_subnet_errors() -> None:
    found = errors(TCP, gateway_routes("[{match: [{destinationSubnets: [10.0.0.300/8]}], "
                                       "route: [{destination: {host: db}}]}]"))
    assert any("spec.tcp[0].match[0].destinationSubnets[0]: \"10.0.0.300/8\" is not an IP "
               "address or subnet" in e for e in found), found
    # In the mesh the sidecar's local port knows no addresses: refused there.
    found = errors(TCP, gateway_routes("[{match: [{sourceSubnet: 10.0.0.0/8}], "
                                       "route: [{destination: {host: db}}]}]", "[mesh]")
                   .replace('hosts: ["*"]', "hosts: [db]"))
    assert any("spec.tcp[0].match[0].sourceSubnet: destinationSubnets and sourceSubnet in tcp "
               "routes in the mesh cannot apply" in e for e in found), found
    # tls matches have no sourceSubnet (Istio's TLSMatchAttributes).
    found = errors(TCP, """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  tls: [{match: [{sniHosts: [a.example.com], sourceSubnet: 10.0.0.0/8}],
         route: [{destination: {host: db}}]}]
""")
    assert any("spec.tls[0].match[0].sourceSubnet: unknown key" in e for e in found), found


EXTERNAL = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pg}
spec:
  hosts: [pg.example.com]
  location: MESH_EXTERNAL
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: blind}
spec:
  hosts: [blind.example.com]
  location: MESH_EXTERNAL
  ports: [{number: 6000, name: tcp, protocol: TCP}]
  resolution: NONE
"""


def test_mesh_external_tcp_hosts_get_a_local_port() -> None:
    model = load(EXTERNAL)
    east = model.service("east.default")
    assert east is not None and east.sidecar is not None
    local = {c.service: c.local_port for c in east.sidecar.calls if c.local_port}
    assert local == {"pg.example.com:5432": 5432}
    cluster = dumped(model, "east.default", CLUSTER, "pg.example.com:5432")
    assert cluster["type"] == "STRICT_DNS"
    assert "transportSocket" not in cluster  # external: never auto mTLS
    listener = dumped(model, "east.default", LISTENER, "outbound/pg.example.com:5432")
    assert listener["address"]["socketAddress"] == {"address": "127.0.0.1", "portValue": 5432}
    # resolution NONE without endpoints would pass connections to the address dialled, which
    # needs traffic capture: no local port, a warning.
    assert any("blind.example.com:6000: resolution NONE without endpoints" in str(w)
               for w in model.warnings), model.warnings


def test_native_path_ignore_case() -> None:
    model = load_policy_text("""
kind: Service
name: web
endpoints: [127.0.0.1:9001]
---
kind: Gateway
name: edge
listeners: [{name: http, port: 80}]
---
kind: Route
name: site
gateway: edge
hosts: [www.example.com]
rules:
  - match: {path: {prefix: /docs/, ignore_case: true}}
    backends: [web]
  - match: {path: {exact: /Old, invert: true, ignore_case: true}}
    backends: [web]
""", "policy.yaml")
    (vhost,) = dumped(model, "edge", ROUTE, "edge/http")["virtualHosts"]
    first, second = (r["match"] for r in vhost["routes"])
    assert first == {"prefix": "/docs/", "caseSensitive": False}
    (header,) = second["headers"]
    assert header["invertMatch"] and header["stringMatch"]["safeRegex"]["regex"].startswith(
        "(?:(?i)")
    with pytest.raises(PolicyError) as caught:
        load_policy_text("""
kind: Service
name: web
endpoints: [127.0.0.1:9001]
---
kind: Gateway
name: edge
listeners: [{name: http, port: 80}]
---
kind: Route
name: site
gateway: edge
hosts: [www.example.com]
rules: [{match: {path: {prefix: /x, ignore_case: nope}}, backends: [web]}]
""", "policy.yaml")
    assert any("rules[0].match.path.ignore_case" in str(i) for i in caught.value.issues), \
        caught.value.issues


def test_callers_alike_share_one_build() -> None:
    gold = Caller(Locality("us-east", "z1"), (("app", "a"), ("tier", "gold")))
    other = Caller(Locality("us-east", "z1"), (("app", "b"), ("tier", "gold")))
    by_tier = LocalityLb(failover_priority=("tier",))
    assert locality.relevant(gold, by_tier) == locality.relevant(other, by_tier)
    assert locality.relevant(gold, LocalityLb()) == Caller(Locality("us-east", "z1"))


def test_a_low_local_port_is_a_warning() -> None:
    model = load("""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
""")
    east = model.service("east.default")
    assert east is not None and east.sidecar is not None
    assert {c.service: c.local_port for c in east.sidecar.calls if c.local_port} == {
        "api.example.com:443": 443}
    found = [str(w) for w in model.warnings if "127.0.0.1:443" in str(w)]
    assert len(found) == 1 and "CAP_NET_BIND_SERVICE" in found[0], model.warnings


def test_localized_clusters_are_lent_to_the_next_translation_and_follow_endpoints() -> None:
    model = load(rule("{localityLbSetting: {failover: [{from: us-east, to: eu}]}}"))
    first = Translation(model)
    before = first.snapshot("east.default").get(ENDPOINT)[ECHO]
    second = Translation(model, previous=first)
    assert second.snapshot("east.default").get(ENDPOINT)[ECHO] is before  # lent, not rebuilt
    # A discovered endpoint of echo: the east caller's assignment is ranked again with it.
    extra = (Endpoint(host="10.9.9.9", port=9080),)
    moved = second.with_endpoints({ECHO: extra})
    after = moved.refresh_endpoints(second.snapshot("east.default"), {ECHO})
    assignment = after.get(ENDPOINT)[ECHO]
    assert assignment is not before
    message = ClusterLoadAssignment()
    message.ParseFromString(assignment.body)
    ranked = {e.endpoint.address.socket_address.address: group.priority
              for group in message.endpoints for e in group.lb_endpoints}
    # Without a locality it ranks with the regions no failover rule names (us-west).
    assert ranked == {"10.0.0.1": 0, "10.0.0.2": 1, "10.0.0.4": 2, "10.0.0.3": 3,
                      "10.9.9.9": 3}


GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{{selector}}}
  servers: [{{port: {{number: 8080, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo}}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http: [{{route: [{{destination: {{host: echo, port: {{number: 9080}}}}}}]}}]
"""


def test_an_ingress_gateway_is_ranked_for_by_its_selectors_topology_labels() -> None:
    located = "istio: ingressgateway, topology.kubernetes.io/region: us-west"
    model = load(rule("{localityLbSetting: {failover: [{from: us-east, to: eu}]}}"),
                 GATEWAY.format(selector=located))
    (view,) = [g.name for g in model.gateways]
    assert model.gateway(view).locality == Locality("us-west")
    assert priorities(model, view) == {"10.0.0.3": 0, "10.0.0.1": 1, "10.0.0.2": 1,
                                       "10.0.0.4": 1}
    # The gateway's cluster is the shared one; only its assignment is ranked.
    assert dumped(model, view, CLUSTER, ECHO) == dumped(model, "west.default", CLUSTER, ECHO)
    # Without topology labels: the endpoints as written (one priority), as before.
    plain = load(rule("{localityLbSetting: {failover: [{from: us-east, to: eu}]}}"),
                 GATEWAY.format(selector="istio: ingressgateway"))
    (view,) = [g.name for g in plain.gateways]
    assert plain.gateway(view).locality is None
    assert set(priorities(plain, view).values()) == {0}


def test_a_located_gateways_assignment_follows_discovered_endpoints() -> None:
    model = load_policy_text("""
kind: Service
name: api
endpoints:
  - {address: 10.0.0.1:80, region: us-east, zone: a}
  - {address: 10.0.0.2:80, region: us-west, zone: a}
outlier_detection: {consecutive_5xx: 1}
locality_lb: {}
---
kind: Gateway
name: edge
locality: us-west/a
listeners: [{name: http, port: 8080}]
---
kind: Route
name: r
gateway: edge
rules: [{backends: [{service: api}]}]
""")
    first = Translation(model)
    snapshot = first.snapshot("edge")

    def ranked(found) -> dict[str, int]:
        message = ClusterLoadAssignment()
        message.ParseFromString(found.get(ENDPOINT)["api"].body)
        return {e.endpoint.address.socket_address.address: group.priority
                for group in message.endpoints for e in group.lb_endpoints}

    assert ranked(snapshot) == {"10.0.0.2": 0, "10.0.0.1": 1}
    moved = first.with_endpoints({"api": (Endpoint("10.0.0.3", 80, region="us-west",
                                                   zone="a"),)})
    patched = moved.refresh_endpoints(snapshot, {"api"})
    assert ranked(patched) == {"10.0.0.2": 0, "10.0.0.3": 0, "10.0.0.1": 1}
    # The same as a cold translation with those endpoints.
    cold = Translation(model, discovered=moved.discovered).snapshot("edge")
    assert patched.get(ENDPOINT)["api"].body == cold.get(ENDPOINT)["api"].body


def test_connection_pool_lifetimes_keepalive_warmup_and_min_health_percent() -> None:
    model = load("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST, warmup: {duration: 45s, minimumPercent: 20,
                                                   aggression: 1.5}}
    connectionPool:
      tcp: {tcpKeepalive: {probes: 4, time: 30s, interval: 5s}, maxConnectionDuration: 10m,
            idleTimeout: 2m}
      http: {idleTimeout: 90s, maxConcurrentStreams: 50}
    outlierDetection: {consecutive5xxErrors: 2, minHealthPercent: 30}
""")
    echo = model.service(ECHO)
    assert echo is not None
    assert echo.load_balancer_options.slow_start == SlowStart(45.0, 1.5, 20.0)
    assert echo.tcp_keepalive == TcpKeepalive(4, 30.0, 5.0)
    # http's idle timeout over tcp's; streams only on HTTP/2 ports (this one is HTTP/1.1)
    assert (echo.connection_idle_timeout, echo.max_connection_duration,
            echo.max_concurrent_streams, echo.panic_threshold) == (90.0, 600.0, None, 30.0)
    cluster = dumped(model, "east.default", CLUSTER, ECHO)
    assert cluster["commonLbConfig"]["healthyPanicThreshold"] == {"value": 30.0}
    assert cluster["upstreamConnectionOptions"]["tcpKeepalive"] == {
        "keepaliveProbes": 4, "keepaliveTime": 30, "keepaliveInterval": 5}
    assert cluster["leastRequestLbConfig"]["slowStartConfig"]["slowStartWindow"] == "45s"


def test_an_outlier_detection_turns_envoys_panic_mode_off_as_istio_does() -> None:
    model = load(rule("{simple: ROUND_ROBIN}"))
    echo = model.service(ECHO)
    assert echo is not None and echo.panic_threshold == 0.0
    cluster = dumped(model, "east.default", CLUSTER, ECHO)
    assert "healthyPanicThreshold" in cluster["commonLbConfig"]  # present, at 0
    plain = load(rule("{simple: ROUND_ROBIN}", outlier=False)).service(ECHO)
    assert plain is not None and plain.panic_threshold is None  # Envoy's 50 then


def test_warmup_warnings_and_errors() -> None:
    model = load(rule("{simple: RANDOM, warmup: {duration: 10s}}"))
    assert model.service(ECHO).load_balancer_options.slow_start is None
    assert any("a warmup applies to ROUND_ROBIN and LEAST_REQUEST only; RANDOM ignores it"
               in str(w) for w in model.warnings), model.warnings
    found = errors(rule("{warmupDurationSecs: 10s, warmup: {duration: 10s}}"))
    assert any("loadBalancer.warmupDurationSecs: warmupDurationSecs is the older form of "
               "warmup: write one of them" in e for e in found), found
    found = errors(rule("{warmup: {minimumPercent: 10}}"))
    assert any('loadBalancer.warmup.duration: missing "duration"' in e for e in found), found
