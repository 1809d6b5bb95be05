"""Gateway API as an input: shape errors with positions, the spec's semantics, the model made.

What traffic does with it is `tests/e2e/test_gatewayapi_conformance.py` (the upstream tests
through a real Envoy); here the loader and the translation are checked directly.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path

import pytest
import yaml
from tls_material import CA

from meshpilot.base import types
from meshpilot.base.errors import PolicyError
from meshpilot.cli import main
from meshpilot.inputs.loader import PolicyLoader, load_policy, load_policy_text
from meshpilot.ir.model import Model, ObjectStatus
from meshpilot.runtime.controller import Controller
from meshpilot.translators import Translation
from meshpilot.xds.cache import SnapshotCache
from meshpilot.xds.render import snapshot_to_dict

CLASS = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: mp}
spec: {controllerName: meshpilot.io/gateway-controller}
---
"""
GATEWAY = CLASS + """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: mp
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: infra}
spec:
  ports: [{name: http, port: 8080, targetPort: web}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: infra
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 3000}]
endpoints:
- {addresses: [10.0.0.1]}
- {addresses: [10.0.0.2], conditions: {ready: false}}
---
"""


def route(body: str, name: str = "r", namespace: str = "infra") -> str:
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  parentRefs: [{{name: edge, namespace: infra}}]
{body}"""


def status_of(model: Model, kind: str, name: str, parent: str = "") -> dict[str, tuple[str, str]]:
    found: list[ObjectStatus] = [s for s in model.statuses if s.kind == kind and s.name == name
                                 and (not parent or s.parent.startswith(parent))]
    assert len(found) == 1, (kind, name, model.statuses)
    return {c.type: (c.status, c.reason) for c in found[0].conditions}


def view(model: Model, name: str = "infra/edge") -> dict:
    return snapshot_to_dict(Translation(model).snapshot(name))["resources"]


def vhosts(model: Model, name: str = "infra/edge") -> dict[str, list[dict]]:
    (config,) = view(model, name)["routes"]
    return {v["domains"][0]: v["routes"] for v in config.get("virtual_hosts", [])}


# ---- shape: what the API server would refuse ---------------------------------------------------


def test_a_bad_enum_is_refused_at_its_value_with_the_field_path() -> None:
    text = GATEWAY + route("""  rules:
  - matches: [{path: {type: Prefix, value: /}}]
""")
    with pytest.raises(PolicyError) as error:
        load_policy_text(text, "gw.yaml")
    line = text.splitlines().index("  - matches: [{path: {type: Prefix, value: /}}]") + 1
    assert str(error.value) == (
        f"gw.yaml:{line}:29: HTTPRoute infra/r: spec.rules[0].matches[0].path.type: must be "
        'one of Exact, PathPrefix, RegularExpression, found "Prefix"')


def test_an_unknown_key_suggests_the_known_one() -> None:
    with pytest.raises(PolicyError) as error:
        load_policy_text(GATEWAY + route("  rules: [{backendRef: [{name: web, port: 8080}]}]\n"))
    assert 'HTTPRoute infra/r: spec.rules[0].backendRef: unknown key "backendRef" (did you ' \
           'mean "backendRefs"?)' in str(error.value)


def test_a_service_backend_without_a_port_is_refused() -> None:
    with pytest.raises(PolicyError) as error:
        load_policy_text(GATEWAY + route("  rules: [{backendRefs: [{name: web}]}]\n"))
    assert 'HTTPRoute infra/r: spec.rules[0].backendRefs[0].port: missing "port"' in \
        str(error.value)


def test_names_are_per_namespace() -> None:
    model = load_policy_text(GATEWAY + route("  rules: [{backendRefs: [{name: web, port: 8080}]}]\n")
                             + "\n---\n" + route("  rules: [{backendRefs: [{name: web, port: "
                                                 "8080}]}]\n", namespace="other"))
    assert {s.name for s in model.statuses if s.kind == "HTTPRoute"} == {"infra/r", "other/r"}
    with pytest.raises(PolicyError) as error:
        load_policy_text(GATEWAY + route("") + "\n---\n" + route(""))
    assert 'HTTPRoute infra/r: metadata.name: another HTTPRoute is named "infra/r"' in \
        str(error.value)


def test_a_native_and_a_gateway_api_gateway_may_share_a_name() -> None:
    model = load_policy_text(GATEWAY + """\
kind: Gateway
name: edge
listeners: [{name: http, port: 9090}]
""")
    assert sorted(g.name for g in model.gateways) == ["edge", "infra/edge"]


def test_hostile_documents_give_policy_errors_only() -> None:
    base = yaml.safe_load_all(GATEWAY + route("""  hostnames: [a.example]
  rules:
  - matches: [{path: {type: PathPrefix, value: /a}, headers: [{name: x, value: y}]}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}]
    backendRefs: [{name: web, port: 8080, weight: 3}]
"""))
    documents = [d for d in base if d]
    junk = [None, 0, -1, 70000, "", "x" * 300, [], {}, [1], {"a": 1}, True, "*", "/", "-a-"]
    generator = random.Random(12)
    for _ in range(300):
        mutated = yaml.safe_load(yaml.safe_dump(documents))
        target = generator.choice(mutated)
        for _ in range(generator.randint(1, 3)):
            node, key = _random_slot(generator, target)
            if key is not None:
                node[key] = generator.choice(junk)
        text = yaml.safe_dump_all(mutated)
        try:
            load_policy_text(text)
        except PolicyError as error:
            assert all(issue.position is not None for issue in error.issues)


def _random_slot(generator: random.Random, node: object) -> tuple[object, object]:
    parent, key = None, None
    while isinstance(node, (dict, list)) and node and generator.random() < 0.8:
        parent = node
        key = generator.choice(list(node)) if isinstance(node, dict) else \
            generator.randrange(len(node))
        node = node[key]  # type: ignore[index]
    return parent, key


# ---- the spec's semantics --------------------------------------------------------------------


def test_a_gateway_is_the_view_ns_name_with_one_listener_per_port() -> None:
    model = load_policy_text(GATEWAY + route("  rules: [{backendRefs: [{name: web, port: 8080}]}]\n"))
    resources = view(model)
    assert [listener["name"] for listener in resources["listeners"]] == ["infra/edge/80"]
    assert status_of(model, "Gateway", "infra/edge") == {
        "Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
    assert status_of(model, "HTTPRoute", "infra/r") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}


def test_endpoints_come_from_endpoint_slices_by_port_name_and_readiness() -> None:
    model = load_policy_text(GATEWAY + route("  rules: [{backendRefs: [{name: web, port: 8080}]}]\n"))
    service = model.service("infra/web:8080")
    assert service is not None
    assert [(e.host, e.port) for e in service.endpoints] == [("10.0.0.1", 3000)]


def test_a_gateway_of_another_controller_is_not_served() -> None:
    text = GATEWAY.replace("meshpilot.io/gateway-controller", "example.com/other")
    model = load_policy_text(text)
    assert model.gateways == ()
    assert status_of(model, "Gateway", "infra/edge")["Accepted"] == ("Unknown", "Pending")


def test_path_prefix_matches_whole_segments() -> None:
    model = load_policy_text(GATEWAY + route("""  rules:
  - matches: [{path: {type: PathPrefix, value: /v2/}}]
    backendRefs: [{name: web, port: 8080}]
"""))
    (entry,) = vhosts(model)["*"]
    assert entry["match"] == {"path_separated_prefix": "/v2"}


def test_precedence_across_routes_exact_then_longest_prefix_then_headers_then_age() -> None:
    old = route("""  rules:
  - matches: [{path: {type: PathPrefix, value: /a}}]
    backendRefs: [{name: web, port: 8080}]
""", name="zzz-old").replace("name: zzz-old, namespace: infra}", "name: zzz-old, namespace: "
                             "infra, creationTimestamp: '2020-01-01T00:00:00Z'}")
    new = route("""  rules:
  - matches: [{path: {type: PathPrefix, value: /a}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: by, value: new}]}}]
    backendRefs: [{name: web, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /a/b}}, {path: {type: Exact, value: /z}},
              {path: {type: PathPrefix, value: /a}, headers: [{name: h, value: v}]}]
    backendRefs: [{name: web, port: 8080}]
""", name="aaa-new").replace("name: aaa-new, namespace: infra}", "name: aaa-new, namespace: "
                             "infra, creationTimestamp: '2024-01-01T00:00:00Z'}")
    model = load_policy_text(GATEWAY + old + "\n---\n" + new)
    entries = vhosts(model)["*"]
    matches = [(e["match"], [h["header"]["value"] for h in e.get("request_headers_to_add", [])])
               for e in entries]
    assert matches == [
        ({"path": "/z"}, []),
        ({"path_separated_prefix": "/a/b"}, []),
        ({"path_separated_prefix": "/a", "headers": [
            {"name": "h", "string_match": {"exact": "v"}}]}, []),
        ({"path_separated_prefix": "/a"}, []),  # zzz-old: older than aaa-new
        ({"path_separated_prefix": "/a"}, ["new"]),
    ]


def test_allowed_routes_selector_reads_namespace_labels() -> None:
    text = GATEWAY.replace("{namespaces: {from: All}}",
                           "{namespaces: {from: Selector, selector: {matchLabels: {team: a}}}}")
    text += """apiVersion: v1
kind: Namespace
metadata: {name: team-a, labels: {team: a}}
---
"""
    body = "  rules: [{backendRefs: [{name: web, namespace: infra, port: 8080}]}]\n"
    model = load_policy_text(text + route(body, namespace="team-a") + "\n---\n"
                             + route(body, namespace="team-b"))
    assert status_of(model, "HTTPRoute", "team-a/r")["Accepted"] == ("True", "Accepted")
    assert status_of(model, "HTTPRoute", "team-b/r")["Accepted"] == \
        ("False", "NotAllowedByListeners")


def test_a_cross_namespace_backend_needs_a_reference_grant_else_the_rule_answers_500() -> None:
    body = """  rules:
  - matches: [{path: {type: PathPrefix, value: /ok}}]
    backendRefs: [{name: web, namespace: infra, port: 8080}]
  - backendRefs: [{name: web, namespace: infra, port: 8080}]
"""
    refused = load_policy_text(GATEWAY + route(body, namespace="apps"))
    assert status_of(refused, "HTTPRoute", "apps/r")["ResolvedRefs"] == \
        ("False", "RefNotPermitted")
    assert [e.get("direct_response", {}).get("status") for e in vhosts(refused)["*"]] == \
        [500, 500]
    grant = """apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: apps-to-web, namespace: infra}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: apps}]
  to: [{group: "", kind: Service, name: web}]
---
"""
    granted = load_policy_text(GATEWAY + grant + route(body, namespace="apps"))
    assert status_of(granted, "HTTPRoute", "apps/r")["ResolvedRefs"] == ("True", "ResolvedRefs")
    assert [e["route"]["cluster"] for e in vhosts(granted)["*"]] == ["infra/web:8080"] * 2


def test_a_missing_backend_answers_500_and_the_rest_keeps_serving() -> None:
    model = load_policy_text(GATEWAY + route("""  rules:
  - matches: [{path: {type: PathPrefix, value: /gone}}]
    backendRefs: [{name: nothing, port: 80}]
  - backendRefs: [{name: web, port: 8080}]
"""))
    assert status_of(model, "HTTPRoute", "infra/r") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")}
    gone, rest = vhosts(model)["*"]
    assert gone["direct_response"] == {"status": 500}
    assert rest["route"]["cluster"] == "infra/web:8080"


def test_a_backend_without_a_kubernetes_service_falls_back_to_a_native_service() -> None:
    model = load_policy_text(GATEWAY + """kind: Service
name: legacy.infra
endpoints: [10.1.1.1:80]
---
""" + route("  rules: [{backendRefs: [{name: legacy, port: 80}]}]\n"))
    (entry,) = vhosts(model)["*"]
    assert entry["route"]["cluster"] == "legacy.infra"


def test_listeners_on_one_port_merge_and_hostnames_intersect() -> None:
    text = GATEWAY.replace(
        "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}",
        "  - {name: any, port: 80, protocol: HTTP}\n"
        "  - {name: wild, port: 80, protocol: HTTP, hostname: '*.example.com'}\n"
        "  - {name: foo, port: 80, protocol: HTTP, hostname: foo.example.com}\n"
        "  - {name: same, port: 80, protocol: HTTP, hostname: foo.example.com}\n"
        "  - {name: custom, port: 81, protocol: example.com/quic}\n"
        "  - {name: clash, port: 82, protocol: HTTP}\n"
        "  - {name: clash2, port: 82, protocol: HTTPS, tls: {certificateRefs: [{name: x}]}}")
    body = "  hostnames: [a.example.com, b.other.org]\n" \
           "  rules: [{backendRefs: [{name: web, port: 8080}]}]\n"
    on_wild = route(body, name="on-wild").replace("{name: edge, namespace: infra}",
                                                  "{name: edge, namespace: infra, "
                                                  "sectionName: wild}")
    model = load_policy_text(text + on_wild)
    assert [listener["name"] for listener in view(model)["listeners"]] == ["infra/edge/80"]
    assert list(vhosts(model)) == ["a.example.com"]  # b.other.org: no intersection with wild
    assert status_of(model, "Listener", "infra/edge/foo")["Conflicted"] == \
        ("True", "HostnameConflict")
    assert status_of(model, "Listener", "infra/edge/custom")["Accepted"] == \
        ("False", "UnsupportedProtocol")
    assert status_of(model, "Listener", "infra/edge/clash")["Conflicted"] == \
        ("True", "ProtocolConflict")
    assert status_of(model, "Listener", "infra/edge/wild")["Programmed"] == \
        ("True", "Programmed")


def test_redirects_follow_the_spec_port_rules() -> None:
    text = GATEWAY.replace("port: 80, protocol: HTTP", "port: 8080, protocol: HTTP")
    model = load_policy_text(text + route("""  rules:
  - matches: [{path: {type: Exact, value: /keep}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
  - matches: [{path: {type: Exact, value: /tls}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch,
                                                                replacePrefixMatch: /}}}]
""").replace("{name: edge, namespace: infra}", "{name: edge, namespace: infra, port: 8080}"))
    keep, tls, old = vhosts(model)["*"]
    assert keep["redirect"] == {"host_redirect": "example.org", "port_redirect": 8080,
                                "response_code": "FOUND"}
    # A new scheme goes to its default port, written since the host stays.
    assert tls["redirect"] == {"scheme_redirect": "https", "port_redirect": 443,
                               "response_code": "FOUND"}
    assert old["redirect"]["regex_rewrite"] == {"pattern": {"regex": "^/old/*"},
                                                "substitution": "/"}
    assert old["redirect"]["port_redirect"] == 8080


def test_replace_prefix_match_needs_a_path_prefix_match() -> None:
    with pytest.raises(PolicyError) as error:
        load_policy_text(GATEWAY + route("""  rules:
  - matches: [{path: {type: Exact, value: /x}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch,
                                                     replacePrefixMatch: /y}}}]
    backendRefs: [{name: web, port: 8080}]
"""))
    assert "spec.rules[0].filters[0].urlRewrite.path.type: ReplacePrefixMatch needs" in \
        str(error.value)


def test_an_unsupported_filter_keeps_the_route_off_with_its_reason() -> None:
    model = load_policy_text(GATEWAY + route("""  rules:
  - filters: [{type: ExtensionRef, extensionRef: {group: x.io, kind: Y, name: z}}]
    backendRefs: [{name: web, port: 8080}]
"""))
    assert status_of(model, "HTTPRoute", "infra/r")["Accepted"] == ("False", "UnsupportedValue")
    assert vhosts(model) == {}


def test_https_listeners_take_certificates_from_tls_secrets(tmp_path: Path) -> None:
    pair = CA().issue("example.com")
    secret = f"""apiVersion: v1
kind: Secret
metadata: {{name: cert, namespace: @NAMESPACE@}}
type: kubernetes.io/tls
data:
  tls.crt: {base64.b64encode(pair.cert_pem).decode()}
  tls.key: {base64.b64encode(pair.key_pem).decode()}
---
"""
    text = GATEWAY.replace(
        "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}",
        "  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}\n"
        "  - {name: other, port: 8443, protocol: HTTPS, hostname: b.example.com,\n"
        "     tls: {certificateRefs: [{name: cert, namespace: certs}]}}")
    model = load_policy_text(text + secret.replace("@NAMESPACE@", "infra") + secret.replace("@NAMESPACE@", "certs"))
    (listener,) = model.gateway("infra/edge").listeners  # type: ignore[union-attr]
    assert listener.port == 443 and listener.tls is not None
    assert listener.tls.certificates[0].certificate_chain == pair.cert_pem
    assert status_of(model, "Listener", "infra/edge/other")["ResolvedRefs"] == \
        ("False", "RefNotPermitted")
    broken = load_policy_text(text + secret.replace("@NAMESPACE@", "infra").replace(
        base64.b64encode(pair.key_pem).decode(), base64.b64encode(b"not a key").decode()))
    assert status_of(broken, "Listener", "infra/edge/https")["ResolvedRefs"] == \
        ("False", "InvalidCertificateRef")
    assert broken.gateway("infra/edge").listeners == ()  # type: ignore[union-attr]


def test_class_parameters_bind_listeners_to_other_ports() -> None:
    text = GATEWAY.replace("spec: {controllerName: meshpilot.io/gateway-controller}",
                           "spec:\n  controllerName: meshpilot.io/gateway-controller\n"
                           "  parametersRef: {group: '', kind: ConfigMap, name: p, "
                           "namespace: default}") + """apiVersion: v1
kind: ConfigMap
metadata: {name: p}
data: {address: 127.0.0.1, ports: "80:18080"}
---
"""
    model = load_policy_text(text)
    (listener,) = model.gateway("infra/edge").listeners  # type: ignore[union-attr]
    assert (listener.address, listener.port) == ("127.0.0.1", 18080)
    bad = load_policy_text(text.replace('"80:18080"', '"80-18080"'))
    assert status_of(bad, "GatewayClass", "mp")["Accepted"] == ("False", "InvalidParameters")
    assert bad.gateways == ()


def test_incremental_loads_equal_cold_ones(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text(GATEWAY)
    (tmp_path / "route.yaml").write_text(route(
        "  rules: [{backendRefs: [{name: web, port: 8080}]}]\n"))
    loader = PolicyLoader(tmp_path)
    assert loader.load() == load_policy(tmp_path)
    (tmp_path / "route.yaml").write_text(route(
        "  rules: [{backendRefs: [{name: gone, port: 8080}]}]\n"))
    assert loader.load() == load_policy(tmp_path)
    assert loader.parsed_files == 1


def test_validate_shows_what_loads_but_is_not_served(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gw.yaml").write_text(GATEWAY + route(
        "  rules: [{backendRefs: [{name: nothing, port: 80}]}]\n"))
    assert main(["validate", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ok: 1 file(s)")
    (line,) = [o for o in out if o.startswith("HTTPRoute")]
    assert "infra/r" in line and "ResolvedRefs=False(BackendNotFound)" in line
    assert "(gw.yaml:" in line  # where its parentRef is written
    assert not any(o.startswith("Gateway ") for o in out)  # accepted and programmed: quiet


def test_an_invalid_backend_beside_valid_ones_takes_its_share_as_500() -> None:
    model = load_policy_text(GATEWAY + route("""  rules:
  - backendRefs:
    - {name: web, port: 8080, weight: 3}
    - {name: nothing, port: 80, weight: 1}
"""))
    (entry,) = vhosts(model)["*"]
    assert entry["route"]["weighted_clusters"]["clusters"] == [
        {"name": "infra/web:8080", "weight": 3},
        {"name": "unresolved|infra/nothing:80", "weight": 1}]
    assert entry["route"]["cluster_not_found_response_code"] == "INTERNAL_SERVER_ERROR"
    assert [c["name"] for c in view(model)["clusters"]] == ["infra/web:8080"]
    assert status_of(model, "HTTPRoute", "infra/r")["ResolvedRefs"] == \
        ("False", "BackendNotFound")


def test_routes_without_hostnames_serve_every_host_after_the_more_specific_ones() -> None:
    named = route("""  hostnames: [foo.example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /a}}]
    backendRefs: [{name: web, port: 8080}]
""", name="named")
    wild = route("""  hostnames: ["*.example.com"]
  rules:
  - matches: [{path: {type: Exact, value: /a/exact}}]
    backendRefs: [{name: web, port: 8080}]
""", name="wild")
    anything = route("""  rules:
  - matches: [{path: {type: PathPrefix, value: /b}}]
    backendRefs: [{name: web, port: 8080}]
""", name="anything")
    model = load_policy_text(GATEWAY + named + "\n---\n" + wild + "\n---\n" + anything)
    hosts = vhosts(model)
    assert [e["match"] for e in hosts["foo.example.com"]] == [
        {"path_separated_prefix": "/a"},  # its own rules first, even before a longer exact
        {"path": "/a/exact"}, {"path_separated_prefix": "/b"}]
    assert [e["match"] for e in hosts["*.example.com"]] == [
        {"path": "/a/exact"}, {"path_separated_prefix": "/b"}]
    assert [e["match"] for e in hosts["*"]] == [{"path_separated_prefix": "/b"}]


def test_a_reload_keeps_the_routes_that_did_not_change(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text(GATEWAY)
    one = route("  hostnames: [one.example]\n  rules: [{backendRefs: [{name: web, port: 8080}]}]\n",
                name="one")
    two = route("  hostnames: [two.example]\n  rules: [{backendRefs: [{name: web, port: 8080}]}]\n",
                name="two")
    (tmp_path / "one.yaml").write_text(one)
    (tmp_path / "two.yaml").write_text(two)
    loader = PolicyLoader(tmp_path)
    first = {r.name: r for r in loader.load().routes}
    (tmp_path / "two.yaml").write_text(two.replace("port: 8080}", "port: 8080, weight: 2}"))
    second_model = loader.load()
    second = {r.name: r for r in second_model.routes}
    assert second["infra/edge/80/one.example"] is first["infra/edge/80/one.example"]
    assert second["infra/edge/80/two.example"] is not first["infra/edge/80/two.example"]
    assert second_model == load_policy(tmp_path)
    # Moved down a line, equal in meaning: a new object, its rules' origins where they are now.
    (tmp_path / "one.yaml").write_text("# moved\n" + one)
    third = {r.name: r for r in loader.load().routes}
    moved = third["infra/edge/80/one.example"]
    assert moved is not first["infra/edge/80/one.example"]
    assert moved.rules[0].origin.position.line == \
        first["infra/edge/80/one.example"].rules[0].origin.position.line + 1


def test_reused_route_compiles_equal_cold_ones_and_issues_are_never_lost(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text(GATEWAY)
    body = "  rules: [{backendRefs: [{name: web, port: 8080}]}]\n"
    (tmp_path / "a.yaml").write_text(route(body, name="a"))
    (tmp_path / "b.yaml").write_text(route(body, name="b"))
    loader = PolicyLoader(tmp_path)
    loader.load()
    # Only b changes: a's rules are taken from the last compile; the model equals a cold one.
    (tmp_path / "b.yaml").write_text(route(body.replace("8080}", "8080, weight: 5}"), name="b"))
    assert loader.load() == load_policy(tmp_path)
    # The Service behind a changes: a is compiled again, with the new endpoints.
    (tmp_path / "gateway.yaml").write_text(GATEWAY.replace("10.0.0.1", "10.0.0.9"))
    model = loader.load()
    assert model == load_policy(tmp_path)
    assert [e.host for e in model.service("infra/web:8080").endpoints] == ["10.0.0.9"]
    # A route with an issue fails the same way on every load.
    broken = route("""  rules:
  - matches: [{path: {type: Exact, value: /x}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch,
                                                     replacePrefixMatch: /y}}}]
    backendRefs: [{name: web, port: 8080}]
""", name="c")
    (tmp_path / "c.yaml").write_text(broken)
    for _ in range(2):
        with pytest.raises(PolicyError, match="ReplacePrefixMatch needs"):
            loader.load()


def test_replayed_routes_compile_what_cold_loads_compile(tmp_path: Path) -> None:
    """A route whose document and backdrop did not change replays what it did last time
    (entries, attached counts, statuses) instead of compiling again: through edits of routes
    sharing a hostname, of wildcard and hostname-less ones, of one with two parents, and of
    a listener, every load equals a cold one, statuses (attachedRoutes) included."""
    (tmp_path / "gateway.yaml").write_text(GATEWAY.replace(
        "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}",
        "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}\n"
        "  - {name: alt, port: 81, protocol: HTTP, hostname: '*.example'}"))
    two_parents = """spec:
  parentRefs: [{name: edge, namespace: infra}, {name: edge, namespace: infra, sectionName: alt}]
"""
    bodies = {
        "a": "  hostnames: [x.example]\n  rules:\n  - matches: [{path: {type: PathPrefix, "
             "value: /a}}]\n    backendRefs: [{name: web, port: 8080}]\n",
        "b": "  hostnames: [x.example]\n  rules:\n  - matches: [{path: {type: Exact, "
             "value: /a/b}}]\n    backendRefs: [{name: web, port: 8080}]\n",
        "c": "  hostnames: ['*.example']\n  rules:\n  - matches: [{path: {type: PathPrefix, "
             "value: /c}}]\n    backendRefs: [{name: web, port: 8080}]\n",
        "d": "  rules:\n  - matches: [{path: {type: PathPrefix, value: /d}}]\n"
             "    backendRefs: [{name: web, port: 8080}]\n",
    }
    for name, body in bodies.items():
        text = route(body, name=name)
        if name == "c":
            text = text.replace("spec:\n  parentRefs: [{name: edge, namespace: infra}]\n",
                                two_parents)
        (tmp_path / f"{name}.yaml").write_text(text)
    loader = PolicyLoader(tmp_path)
    translation = Translation(loader.load())
    snapshot = translation.snapshot("infra/edge")
    patched = 0
    edits = [("b", "value: /a/b", "value: /a/bb"), ("c", "value: /c", "value: /cc"),
             ("d", "value: /d", "value: /a"), ("a", "hostnames: [x.example]",
                                               "hostnames: [x.example, y.example]"),
             ("b", "port: 8080}", "port: 8080, weight: 3}"), ("d", "port: 8080}", "port: 9}")]
    for name, old, new in edits:
        path = tmp_path / f"{name}.yaml"
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new))
        model = loader.load()
        cold = load_policy(tmp_path)
        assert model == cold, name
        assert model.statuses == cold.statuses
        # What changed is what the two models do not share: the view is patched by it, and
        # is what a cold translation builds.
        translation = Translation(model, previous=translation, changes=loader.changes)
        snapshot = translation.snapshot("infra/edge", previous=snapshot)
        assert snapshot_to_dict(snapshot) == \
            snapshot_to_dict(Translation(cold).snapshot("infra/edge"))
        patched += "infra/edge" in translation.patched_views
    assert patched == len(edits)
    # A route to a Service that is not there yet answers 500; the Service and its
    # EndpointSlice arrive, then the other Service's endpoints change: each load still
    # equals a cold one (what a route read is what it depends on).
    (tmp_path / "e.yaml").write_text(route(
        "  hostnames: [e.example]\n  rules: [{backendRefs: [{name: api, port: 80}]}]\n",
        name="e"))
    assert loader.load() == load_policy(tmp_path)
    assert status_of(loader.load(), "HTTPRoute", "infra/e")["ResolvedRefs"] == \
        ("False", "BackendNotFound")
    (tmp_path / "api.yaml").write_text("""apiVersion: v1
kind: Service
metadata: {name: api, namespace: infra}
spec: {ports: [{name: http, port: 80, targetPort: 9000}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: infra, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 9000}]
endpoints: [{addresses: [10.0.1.1]}]
""")
    model = loader.load()
    assert model == load_policy(tmp_path)
    assert status_of(model, "HTTPRoute", "infra/e")["ResolvedRefs"] == ("True", "ResolvedRefs")
    gateway = tmp_path / "gateway.yaml"
    gateway.write_text(gateway.read_text().replace("10.0.0.1", "10.0.0.7"))
    model = loader.load()
    assert model == load_policy(tmp_path)
    assert [e.host for e in model.service("infra/web:8080").endpoints] == ["10.0.0.7"]
    # The listener changes: every route compiles again, and still equals a cold load.
    gateway.write_text(gateway.read_text().replace("hostname: '*.example'",
                                                   "hostname: 'x.example'"))
    assert loader.load() == load_policy(tmp_path)
    assert status_of(loader.load(), "Listener", "infra/edge/alt")  # still one status


def test_two_listener_ports_mapped_to_one_socket_keep_the_first() -> None:
    text = GATEWAY.replace("spec: {controllerName: meshpilot.io/gateway-controller}",
                           "spec:\n  controllerName: meshpilot.io/gateway-controller\n"
                           "  parametersRef: {group: '', kind: ConfigMap, name: p}").replace(
        "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}",
        "  - {name: http, port: 80, protocol: HTTP}\n"
        "  - {name: alt, port: 8080, protocol: HTTP}") + """apiVersion: v1
kind: ConfigMap
metadata: {name: p}
data: {ports: "80:8080"}
---
"""
    model = load_policy_text(text)
    assert [(lst.name, lst.port) for lst in model.gateway("infra/edge").listeners] == \
        [("80", 8080)]  # type: ignore[union-attr]
    assert status_of(model, "Listener", "infra/edge/alt")["Accepted"] == \
        ("False", "PortUnavailable")


def test_a_reload_of_one_route_changes_only_the_route_configuration(tmp_path: Path) -> None:
    """As natively (test_incremental): the controller's new snapshot of the Gateway's view keeps
    the cluster, endpoint and listener maps (the very objects); only routes differ, and equal
    what a cold load and translation give."""
    (tmp_path / "gateway.yaml").write_text(GATEWAY)

    def routes(weight: int) -> str:
        return "\n---\n".join(route(
            f"  hostnames: [r{i}.example]\n  rules:\n  - backendRefs:\n"
            f"    - {{name: web, port: 8080, weight: {weight if i == 1 else 50}}}\n"
            f"    - {{name: legacy, port: 80, weight: 50}}\n", name=f"r{i}") for i in range(1, 6))

    (tmp_path / "legacy.yaml").write_text("kind: Service\nname: legacy.infra\n"
                                          "endpoints: [10.9.9.9:80]\n")
    (tmp_path / "routes.yaml").write_text(routes(90))
    cache = SnapshotCache()
    controller = Controller(tmp_path, cache)
    assert controller.reload()
    before = controller.snapshot_blocking("infra/edge")
    assert before is not None and before.get(types.ROUTE)
    assert controller.reload()
    assert cache.get("infra/edge") is before  # nothing changed: the very same snapshot
    (tmp_path / "routes.yaml").write_text(routes(70))
    assert controller.reload()
    after = cache.get("infra/edge")
    assert after is not None and after is not before
    for type_url in (types.CLUSTER, types.ENDPOINT, types.LISTENER):
        assert after.get(type_url) is before.get(type_url)
    assert after.get(types.ROUTE) is not before.get(types.ROUTE)
    cold = Translation(load_policy(tmp_path)).snapshot("infra/edge")
    assert after.version == cold.version


@pytest.mark.parametrize(("match", "where"), [
    ("{path: {type: RegularExpression, value: '/(?=a)'}}", "matches[0].path.value"),
    ("{headers: [{type: RegularExpression, name: x, value: '(a)\\1'}]}",
     "matches[0].headers[0].value"),
    ("{queryParams: [{type: RegularExpression, name: q, value: 'a{1001}'}]}",
     "matches[0].queryParams[0].value"),
])
def test_regular_expressions_are_checked_as_envoys_re2_will_see_them(match: str,
                                                                     where: str) -> None:
    with pytest.raises(PolicyError) as error:
        load_policy_text(GATEWAY + route(
            f"  rules: [{{matches: [{match}], backendRefs: [{{name: web, port: 8080}}]}}]\n"))
    assert f"HTTPRoute infra/r: spec.rules[0].{where}: not a regular expression Envoy " \
        "accepts" in str(error.value)


def test_a_cors_filter_is_the_rules_cors_policy() -> None:
    model = load_policy_text(GATEWAY + route("""  rules:
  - filters:
    - type: CORS
      cors:
        allowOrigins: ["https://www.foo.com", "https://*.bar.com", "*"]
        allowMethods: [GET, OPTIONS]
        allowHeaders: [x-header-1]
        exposeHeaders: [x-header-3]
        allowCredentials: true
        maxAge: 3600
    backendRefs: [{name: web, port: 8080}]
"""))
    (entry,) = vhosts(model)["*"]
    policy = entry["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert policy["allow_origin_string_match"] == [
        {"exact": "https://www.foo.com", "ignore_case": True},
        {"safe_regex": {"regex": "(?i)https://[^/:]+\\.bar\\.com"}},
        {"safe_regex": {"regex": "(?i).*"}}]
    assert (policy["allow_methods"], policy["allow_headers"], policy["expose_headers"],
            policy["max_age"], policy["allow_credentials"]) == \
        ("GET,OPTIONS", "x-header-1", "x-header-3", "3600", True)
    filters = [f["name"] for f in view(model)["listeners"][0]["filter_chains"][0]["filters"][0]
               ["typed_config"]["http_filters"]]
    assert "envoy.filters.http.cors" in filters
    assert status_of(model, "HTTPRoute", "infra/r")["Accepted"] == ("True", "Accepted")


def test_retry_is_envoys_retry_policy_on_the_codes_written() -> None:
    model = load_policy_text(GATEWAY + route("""  rules:
  - retry: {codes: [500, 503], attempts: 3, backoff: 100ms}
    backendRefs: [{name: web, port: 8080}]
  - matches: [{path: {value: /plain}}]
    retry: {attempts: 2}
    backendRefs: [{name: web, port: 8080}]
"""))
    plain, first = vhosts(model)["*"]
    policy = first["route"]["retry_policy"]
    assert (policy["num_retries"], policy["retriable_status_codes"],
            policy["retry_back_off"]["base_interval"]) == (3, [500, 503], "0.100s")
    assert set(policy["retry_on"].split(",")) == {"retriable-status-codes", "connect-failure",
                                                  "reset"}
    assert plain["route"]["retry_policy"]["num_retries"] == 2
    assert set(plain["route"]["retry_policy"]["retry_on"].split(",")) == {"connect-failure",
                                                                         "reset"}
    with pytest.raises(PolicyError) as error:
        load_policy_text(GATEWAY + route(
            "  rules: [{retry: {codes: [200]}, backendRefs: [{name: web, port: 8080}]}]\n"))
    assert "HTTPRoute infra/r: spec.rules[0].retry.codes[0]:" in str(error.value)
