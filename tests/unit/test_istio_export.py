"""Istio's exportTo: which namespaces' callers see a ServiceEntry's host or a VirtualService's
routes (a caller: a WorkloadEntry's sidecar, or the ingress gateway in istio-system)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_istio import DR, MESH, REVIEWS, dumped, errors, load

from meshpilot.base.types import CLUSTER, ROUTE
from meshpilot.inputs.incremental import ParseCache
from meshpilot.inputs.loader import load_policy, load_policy_text
from meshpilot.ir.model import Model
from meshpilot.translators import Translation

# A caller in namespace `other` beside productpage in `default` (MESH: reviews in default).
CALLERS = """
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: productpage-v1}
spec: {address: 10.0.0.31, labels: {app: productpage}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: other}
spec: {address: 10.0.0.41, labels: {app: client}}
"""
PRODUCTPAGE, CLIENT = "productpage-v1.default", "client.other"
RATINGS_HOST = "ratings.default.svc.cluster.local"
RATINGS = f"{RATINGS_HOST}:9080"


def ratings(export: str | None) -> str:
    said = f"\n  exportTo: {export}" if export is not None else ""
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings}}
spec:
  hosts: [{RATINGS_HOST}]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.51}}]{said}
"""


def mesh_config(mesh: str) -> str:
    body = "\n".join(f"    {line}" for line in mesh.splitlines())
    return f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
{body}
"""


def calls(model: Model, view: str) -> list[str]:
    sidecar = model.service(view).sidecar  # type: ignore[union-attr]
    assert sidecar is not None
    return [call.service for call in sidecar.calls]


def sees(model: Model, view: str) -> tuple[bool, bool]:
    """Whether the view's sidecar has (an outbound virtual host for, a cluster of) ratings."""
    snapshot = Translation(model).snapshot(view)
    vhosts = dumped(model, view, ROUTE, "outbound")["virtualHosts"]
    return (any(RATINGS in v["domains"] for v in vhosts), RATINGS in snapshot.get(CLUSTER))


@pytest.mark.parametrize(("export", "default", "other"), [
    (None, True, True), ('["*"]', True, True), ('["."]', True, False),
    ('["other"]', False, True), ('["~"]', False, False), ('[other, "."]', True, True)])
def test_a_service_entry_reaches_the_namespaces_it_is_exported_to(
        export: str | None, default: bool, other: bool) -> None:
    model = load(CALLERS, ratings(export))
    assert (RATINGS in calls(model, PRODUCTPAGE)) is default
    assert (RATINGS in calls(model, CLIENT)) is other
    assert sees(model, PRODUCTPAGE) == (default, default)
    assert sees(model, CLIENT) == (other, other)
    assert REVIEWS in calls(model, CLIENT)  # the other hosts are left as they were


def test_mesh_configs_default_service_export_to_applies_where_none_is_written() -> None:
    config = mesh_config('defaultServiceExportTo: ["."]')
    model = load(CALLERS, config, ratings(None))
    assert RATINGS in calls(model, PRODUCTPAGE) and RATINGS not in calls(model, CLIENT)
    model = load(CALLERS, config, ratings('["*"]'))  # its own exportTo wins
    assert RATINGS in calls(model, CLIENT)
    assert not [w for w in model.warnings if "defaultServiceExportTo" in str(w)]


def test_a_tcp_service_entry_gets_no_local_port_where_it_is_not_exported() -> None:
    mysql = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mysql}
spec:
  hosts: [mysql.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 3306, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.61}]
  exportTo: ["."]
"""
    model = load(CALLERS, mysql)
    local = [c.local_port for c in model.service(PRODUCTPAGE).sidecar.calls]  # type: ignore[union-attr]
    assert 3306 in local
    assert "mysql.default.svc.cluster.local:3306" not in calls(model, CLIENT)


def _vs(name: str, namespace: str, subset: str, export: str | None,
        gateways: str = "[mesh]") -> str:
    said = f"\n  exportTo: {export}" if export is not None else ""
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  gateways: {gateways}
  http: [{{route: [{{destination: {{host: reviews.default.svc.cluster.local, subset: {subset}}}}}]}}]{said}
"""


def routed(model: Model, view: str) -> list[dict[str, Any]]:
    """The reviews virtual host's route entries in the view's outbound route configuration."""
    vhosts = dumped(model, view, ROUTE, "outbound")["virtualHosts"]
    (vhost,) = [v for v in vhosts if REVIEWS in v["domains"]]
    return [entry["route"] for entry in vhost["routes"]]


def test_a_virtual_service_shapes_only_the_requests_of_namespaces_it_is_exported_to() -> None:
    model = load(DR, CALLERS, _vs("reviews", "default", "v2", '["."]'))
    assert [r["cluster"] for r in routed(model, PRODUCTPAGE)] == [f"{REVIEWS}/v2"]
    # The other namespace's caller gets Istio's default route to the host: no subset, and
    # the default retries.
    (default,) = routed(model, CLIENT)
    assert default["cluster"] == REVIEWS and default["retryPolicy"]["numRetries"] == 2
    names = sorted((r.name, r.callers_namespace) for r in model.routes if r.service == REVIEWS)
    assert names == [("default/reviews~callers=default", "default"),
                     (f"default@{REVIEWS}", None)]
    model = load(DR, CALLERS, _vs("reviews", "default", "v2", '["other"]'))
    assert [r["cluster"] for r in routed(model, CLIENT)] == [f"{REVIEWS}/v2"]
    assert [r["cluster"] for r in routed(model, PRODUCTPAGE)] == [REVIEWS]


def test_each_namespace_takes_the_first_virtual_service_it_sees() -> None:
    # default/reviews (first in order) for default's callers; other/reviews, exported
    # everywhere, for every other namespace's.
    model = load(DR, CALLERS, _vs("reviews", "default", "v2", '["."]'),
                 _vs("reviews", "other", "v1", None))
    assert [r["cluster"] for r in routed(model, PRODUCTPAGE)] == [f"{REVIEWS}/v2"]
    assert [r["cluster"] for r in routed(model, CLIENT)] == [f"{REVIEWS}/v1"]
    assert not [w for w in model.warnings if "already has VirtualService" in str(w)]
    # Both exported everywhere: the first one wins, the other is warned about, as before.
    model = load(DR, CALLERS, _vs("reviews", "default", "v2", None),
                 _vs("reviews", "other", "v1", None))
    assert [r["cluster"] for r in routed(model, CLIENT)] == [f"{REVIEWS}/v2"]
    assert any("already has VirtualService" in str(w) for w in model.warnings)


def test_mesh_configs_default_virtual_service_export_to() -> None:
    model = load(DR, CALLERS, mesh_config('defaultVirtualServiceExportTo: ["."]'),
                 _vs("reviews", "default", "v2", None))
    assert [r["cluster"] for r in routed(model, PRODUCTPAGE)] == [f"{REVIEWS}/v2"]
    assert [r["cluster"] for r in routed(model, CLIENT)] == [REVIEWS]


def test_source_labels_variants_follow_the_namespaces_that_see_the_virtual_service() -> None:
    vs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  exportTo: ["."]
  http:
  - match: [{sourceLabels: {app: client}}, {sourceLabels: {app: productpage}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"""
    model = load(DR, CALLERS, vs)
    assert [r["cluster"] for r in routed(model, PRODUCTPAGE)] == [f"{REVIEWS}/v2",
                                                                   f"{REVIEWS}/v1"]
    # app=client matches, but its namespace does not see the VirtualService.
    assert [r["cluster"] for r in routed(model, CLIENT)] == [REVIEWS]
    assert model.service(CLIENT).sidecar.calls[0].route is None  # type: ignore[union-attr]


GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
"""


@pytest.mark.parametrize(("export", "applies"), [
    (None, True), ('["."]', False), ('["istio-system"]', True), ('["other"]', False)])
def test_a_gateway_takes_the_virtual_services_its_namespace_sees(
        export: str | None, applies: bool) -> None:
    model = load(DR, GATEWAY, _vs("shop", "default", "v2", export, "[istio-system/edge]"))
    assert bool([r for r in model.routes if r.gateway]) is applies
    warned = [str(w) for w in model.warnings if "not exported to istio-system" in str(w)]
    assert bool(warned) is not applies
    if warned:
        assert "spec.exportTo" in warned[0] and "istio.yaml:" in warned[0]


def test_malformed_export_to_is_an_error_at_the_field() -> None:
    found = errors(ratings('["*", "."]'))
    assert any(":spec.exportTo:" in e.replace(" ", "") and "stand alone" in e
               for e in found), found
    found = errors(_vs("reviews", "default", "v1", '["Not_A_Namespace"]'))
    assert any("spec.exportTo" in e and "not a namespace name" in e for e in found), found
    found = errors(mesh_config("defaultServiceExportTo: .\n"))
    assert any("defaultServiceExportTo" in e and "a list of namespaces" in e
               for e in found), found


def test_tcp_routes_exported_to_some_namespaces_only_are_refused() -> None:
    mysql = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mysql}
spec:
  hosts: [mysql.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 3306, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.61}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mysql}
spec:
  hosts: [mysql.default.svc.cluster.local]
  exportTo: ["."]
  tcp: [{route: [{destination: {host: mysql.default.svc.cluster.local}}]}]
"""
    found = errors(CALLERS, mysql)
    assert any("spec.exportTo" in e and "not supported yet" in e for e in found), found


# ---- DestinationRule: Istio's lookup order, with exportTo ---------------------------------------

SHOP = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings.shop.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.51, labels: {v: a}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client, namespace: other}
spec: {address: 10.0.0.41}
"""
SHOP_RATINGS = "ratings.shop.svc.cluster.local:9080"


def _dr(namespace: str, subset: str, export: str | None = None) -> str:
    said = f"\n  exportTo: {export}" if export is not None else ""
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings, namespace: {namespace}}}
spec:
  host: ratings.shop.svc.cluster.local
  subsets: [{{name: {subset}, labels: {{v: a}}}}]{said}
"""


def _rule_taken(*documents: str) -> tuple[list[str], list[str]]:
    """(the subsets ratings got: the rule its callers take, the warnings)."""
    model = load_policy_text("\n---\n".join((SHOP, *documents)), "istio.yaml")
    service = model.service(SHOP_RATINGS)
    assert service is not None
    return [name for name, _ in service.subsets], [str(w) for w in model.warnings]


def test_the_callers_namespace_rule_then_the_hosts_then_the_roots() -> None:
    root, host, own = _dr("istio-system", "root"), _dr("shop", "host"), _dr("other", "own", '["."]')
    subsets, warnings = _rule_taken(root, host, own)
    assert subsets == ["own"]
    assert sum("this one is not used" in w for w in warnings) == 2, warnings
    assert not [w for w in warnings if "different DestinationRules" in w]
    # The host's namespace before the root's (in namespace/name order istio-system's is
    # first: the lookup order decides, not the order).
    assert _rule_taken(root, host)[0] == ["host"]
    # Not exported to the caller's namespace: the root namespace's.
    assert _rule_taken(root, _dr("shop", "host", '["."]'))[0] == ["root"]
    assert _rule_taken(root, _dr("shop", "host", '["shop", "elsewhere"]'))[0] == ["root"]
    assert _rule_taken(root, _dr("shop", "host", '["other"]'))[0] == ["host"]
    # Another namespace's rule, even exported to the caller's, is not looked at.
    assert _rule_taken(_dr("third", "third", '["*"]'))[0] == []
    subsets, warnings = _rule_taken(_dr("istio-system", "root", '["~"]'))
    assert subsets == []
    assert any("no caller of host ratings.shop.svc.cluster.local is in a namespace this "
               "DestinationRule is exported to" in w for w in warnings), warnings


def test_mesh_configs_default_destination_rule_export_to() -> None:
    config = mesh_config('defaultDestinationRuleExportTo: ["."]')
    # The host's rule is private to shop by default: the caller in other takes the root's,
    # which says exportTo itself.
    assert _rule_taken(config, _dr("shop", "host"), _dr("istio-system", "root", '["*"]'))[0] \
        == ["root"]


def test_callers_taking_different_rules_by_namespace_is_a_warning() -> None:
    caller = """
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: buyer, namespace: shop}
spec: {address: 10.0.0.42}
"""
    subsets, warnings = _rule_taken(caller, _dr("shop", "host", '["."]'))
    assert subsets == ["host"]  # applied for every caller, as said
    (warned,) = [w for w in warnings if "different DestinationRules" in w]
    assert "spec.exportTo" in warned and "other: none; shop: shop/ratings" in warned
    # The ingress gateway (in istio-system) is a caller too.
    subsets, warnings = _rule_taken(GATEWAY, _dr("other", "own", '["."]'))
    assert subsets == ["own"]
    assert any("istio-system: none; other: other/ratings" in w for w in warnings), warnings


# ---- a route to a host its caller does not see ------------------------------------------------

TO_RATINGS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  gateways: [mesh, istio-system/edge]
  http:
  - match: [{uri: {prefix: /ratings}}]
    route: [{destination: {host: ratings}}]
    mirror: {host: ratings}
  - route: [{destination: {host: reviews}}]
"""


def test_a_route_to_a_host_not_exported_to_the_caller_is_answered_503() -> None:
    model = load(CALLERS, GATEWAY, ratings('["."]'), TO_RATINGS)
    # productpage (default) sees ratings: the route sends and mirrors there.
    (first, _) = routed(model, PRODUCTPAGE)
    assert first["cluster"] == RATINGS and first["requestMirrorPolicies"][0]["cluster"] == RATINGS
    # The caller in other does not: its own Route, the ratings share a cluster never made
    # (Envoy's 503), no mirror; its other rule as written.
    (first, second) = routed(model, CLIENT)
    assert first["cluster"] == f"unresolved|{RATINGS}"
    assert "clusterNotFoundResponseCode" not in first and "requestMirrorPolicies" not in first
    assert second["cluster"] == REVIEWS
    assert RATINGS not in Translation(model).snapshot(CLIENT).get(CLUSTER)
    assert [(r.name, r.callers_namespace) for r in model.routes if r.service == REVIEWS] == [
        ("default/reviews@reviews.default.svc.cluster.local:9080", None),
        ("default/reviews@reviews.default.svc.cluster.local:9080~callers=other", "other")]
    # The gateway (istio-system) does not see it either.
    (vhost,) = dumped(model, "istio=ingressgateway", ROUTE)["virtualHosts"]
    assert vhost["routes"][0]["route"]["cluster"] == f"unresolved|{RATINGS}"
    warned = [str(w) for w in model.warnings if "answered 503" in str(w)]
    assert any("not exported to namespace other" in w for w in warned), warned
    assert any("not exported to istio-system" in w for w in warned), warned


def test_a_source_labels_route_to_a_hidden_host_is_the_callers_namespaces_own() -> None:
    vs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{sourceLabels: {app: client}}, {sourceLabels: {app: productpage}}]
    route: [{destination: {host: ratings}}]
  - route: [{destination: {host: reviews}}]
"""
    model = load(CALLERS, ratings('["."]'), vs)
    assert [r["cluster"] for r in routed(model, PRODUCTPAGE)] == [RATINGS, REVIEWS]
    assert [r["cluster"] for r in routed(model, CLIENT)] == [f"unresolved|{RATINGS}", REVIEWS]
    client = model.service(CLIENT).sidecar  # type: ignore[union-attr]
    assert client.calls[0].route == "default/reviews~app=client~callers=other"


def test_an_export_to_edit_loads_incrementally_as_cold(tmp_path: Path) -> None:
    # Editing one document's exportTo changes other documents' parts (the callers' sidecars).
    (tmp_path / "callers.yaml").write_text(MESH + "\n---\n" + CALLERS)
    (tmp_path / "ratings.yaml").write_text(ratings(None))
    (tmp_path / "vs.yaml").write_text(DR + "\n---\n" + _vs("reviews", "default", "v2", None))
    cache = ParseCache(tmp_path)
    first = cache.try_load()
    assert first is not None and RATINGS in calls(first, CLIENT)
    (tmp_path / "ratings.yaml").write_text(ratings('["."]'))
    second = cache.try_load()
    assert second == load_policy(tmp_path) and second is not None
    assert RATINGS not in calls(second, CLIENT) and RATINGS in calls(second, PRODUCTPAGE)
    (tmp_path / "vs.yaml").write_text(DR + "\n---\n" + _vs("reviews", "default", "v2", '["."]'))
    third = cache.try_load()
    assert third == load_policy(tmp_path) and third is not None
    assert [r["cluster"] for r in routed(third, CLIENT)] == [REVIEWS]


def test_tcp_routes_to_a_host_some_callers_do_not_see_are_warned_about() -> None:
    tcp = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.61}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db-replica}
spec:
  hosts: [replica.default.svc.cluster.local]
  exportTo: ["."]
  location: MESH_INTERNAL
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.62}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db.default.svc.cluster.local]
  tcp: [{route: [{destination: {host: replica.default.svc.cluster.local}}]}]
"""
    model = load(CALLERS, tcp)
    warned = [str(w) for w in model.warnings if "tcp and tls routes to it still reach" in str(w)]
    assert len(warned) == 1 and "not exported to namespace other" in warned[0], warned
