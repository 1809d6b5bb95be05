"""Istio's CUSTOM and AUDIT authorization and MeshConfig's ext_authz providers.

The MeshConfig is read where Istio users keep it, the `istio` ConfigMap of istio-system
(`data.mesh`); the documents are istio.io's External Authorization task's. What the sidecar
and the ingress gateway get is compared with Istio's RBAC builder goldens (`custom-*`,
`audit-*`): the requests CUSTOM's shadow rules pick, the ext_authz filter's settings, AUDIT's
LOG action. Envoy itself validates the views.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2 import ExtAuthz
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from google.protobuf.json_format import MessageToDict
from rbac_eval import matched
from support import shared_folder

from meshpilot.base.errors import PolicyError
from meshpilot.base.types import LISTENER, ROUTE
from meshpilot.inputs.incremental import ParseCache
from meshpilot.inputs.loader import load_policy, load_policy_text
from meshpilot.ir.model import Model
from meshpilot.translators import Translation

ISTIO = shared_folder() / "conformance" / "istio"
GOLDEN = ISTIO / "authz-builder-golden" / "http"

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: foo}
spec:
  hosts: [httpbin.foo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: httpbin}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: httpbin-1, namespace: foo, annotations: {meshpilot.io/app: "127.0.0.1:18000"}}
spec: {address: 10.0.0.1, ports: {http: 8000}, labels: {app: httpbin, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext-authz, namespace: foo}
spec:
  hosts: [ext-authz.foo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8000, name: http, protocol: HTTP}, {number: 9000, name: grpc, protocol: GRPC}]
  resolution: STATIC
  workloadSelector: {labels: {app: ext-authz}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ext-authz, namespace: foo}
spec: {address: 10.0.0.2, labels: {app: ext-authz}}
"""
VIEW = "httpbin-1.foo"

# istio.io's External Authorization task: the two sample providers, as its `kubectl edit
# configmap istio -n istio-system` writes them (ports quoted, as there).
MESH_CONFIG = """
apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: istio-system
data:
  mesh: |-
    extensionProviders:
    - name: "sample-ext-authz-grpc"
      envoyExtAuthzGrpc:
        service: "ext-authz.foo.svc.cluster.local"
        port: "9000"
    - name: "sample-ext-authz-http"
      envoyExtAuthzHttp:
        service: "ext-authz.foo.svc.cluster.local"
        port: "8000"
        includeRequestHeadersInCheck: ["x-ext-authz"]
"""

TASK_POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ext-authz
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: CUSTOM
  provider:
    name: PROVIDER
  rules:
  - to:
    - operation:
        paths: ["/headers"]
"""


def load(*documents: str) -> Model:
    return load_policy_text("\n---\n".join((MESH, *documents)), "istio.yaml")


def errors(*documents: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(*documents)
    return [str(issue) for issue in caught.value.issues]


def inbound(model: Model, view: str = VIEW) -> tuple[list[Any], dict[str, Any]]:
    """The inbound listener's HTTP filters (messages) and its virtual host's per-filter
    configs (JSON)."""
    snapshot = Translation(model).snapshot(view)
    listener = Listener()
    listener.ParseFromString(snapshot.get(LISTENER)[f"inbound/{view}"].body)
    manager = hcm.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    routes = RouteConfiguration()
    routes.ParseFromString(snapshot.get(ROUTE)[f"inbound/{view}"].body)
    (vhost,) = MessageToDict(routes)["virtualHosts"]
    return list(manager.http_filters), vhost.get("typedPerFilterConfig", {})


def ext_authz_of(filters: list[Any]) -> tuple[str, ExtAuthz]:
    (found,) = [f for f in filters if f.name.startswith("envoy.filters.http.ext_authz")]
    config = ExtAuthz()
    found.typed_config.Unpack(config)
    return found.name, config


PROBES = [{"path": path, "method": method}
          for path in ("/", "/httpbin1", "/httpbin2", "/httpbin1/x", "/headers")
          for method in ("GET", "POST")]


# ---- the External Authorization task -----------------------------------------------------------


def test_custom_sends_only_the_requests_its_rules_match_to_the_provider() -> None:
    model = load(MESH_CONFIG, TASK_POLICY.replace("PROVIDER", "sample-ext-authz-http"))
    filters, configs = inbound(model)
    names = [f.name for f in filters]
    name, config = ext_authz_of(filters)
    # CUSTOM's shadow rules, then its ext_authz filter, before the RBAC filter (DENY, ALLOW)
    assert names.index("envoy.filters.http.rbac/custom") + 1 == names.index(name)
    assert names.index(name) < names.index("envoy.filters.http.rbac")
    assert all(f.disabled for f in filters if f.name != "envoy.filters.http.router")
    # the provider's service: the ServiceEntry's host and port
    service = config.http_service
    assert service.server_uri.cluster == "ext-authz.foo.svc.cluster.local:8000"
    assert service.server_uri.timeout.seconds == 600  # Istio's default: 10 minutes
    assert [m.exact for m in config.allowed_headers.patterns] == ["x-ext-authz"]
    # switched on by the metadata the shadow rules write for a request they match
    enabled = MessageToDict(config.filter_enabled_metadata)
    assert enabled["filter"] == "envoy.filters.http.rbac"
    assert enabled["path"] == [{"key": "istio_ext_authz_shadow_effective_policy_id"}]
    prefix = enabled["value"]["stringMatch"]["prefix"]
    shadow = configs["envoy.filters.http.rbac/custom"]["rbac"]
    assert shadow["shadowRulesStatPrefix"] == "istio_ext_authz_"
    assert "rules" not in shadow  # refuses nothing itself
    assert all(name.startswith(prefix) for name in shadow["shadowRules"]["policies"])
    assert shadow["shadowRules"]["action"] == "DENY"  # a match is named in the metadata
    for request in PROBES:
        assert matched(shadow["shadowRules"], request) == (request["path"] == "/headers")
    assert name in configs  # the ext_authz filter is on for the inbound route
    # the inbound sidecar receives the provider's cluster
    assert "ext-authz.foo.svc.cluster.local:8000" in Translation(model).snapshot(VIEW).get(
        "type.googleapis.com/envoy.config.cluster.v3.Cluster")


def test_the_grpc_provider() -> None:
    model = load(MESH_CONFIG, TASK_POLICY.replace("PROVIDER", "sample-ext-authz-grpc"))
    _, config = ext_authz_of(inbound(model)[0])
    assert config.grpc_service.envoy_grpc.cluster_name == "ext-authz.foo.svc.cluster.local:9000"
    # gRPC: every header goes (Envoy's default there, Istio writes none)
    assert [m.safe_regex.regex for m in config.allowed_headers.patterns] == [".*"]


# Istio's builder test's provider "default" (pilot/pkg/security/authz/builder), as far as its
# golden output shows it.
GOLDEN_MESH_CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: my-custom-ext-authz, namespace: foo}
spec:
  hosts: [my-custom-ext-authz.foo.svc.cluster.local]
  ports: [{number: 9000, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: default
      envoyExtAuthzHttp:
        service: foo/my-custom-ext-authz.foo.svc.cluster.local
        port: 9000
        timeout: 10s
        pathPrefix: /check
        failOpen: true
        statusOnError: "403"
        includeRequestHeadersInCheck: [x-custom-id, x-prefix-*, "*-suffix"]
        includeAdditionalHeadersInCheck: {x-header-1: value-1, x-header-2: value-2}
        includeRequestBodyInCheck: {maxRequestBytes: 2048, allowPartialMessage: true,
                                    packAsBytes: true}
        headersToUpstreamOnAllow: [Authorization, x-prefix-*, "*-suffix"]
        headersToDownstreamOnDeny: [Set-cookie, x-prefix-*, "*-suffix"]
        headersToDownstreamOnAllow: [Set-cookie, x-prefix-*, "*-suffix"]
"""


def _golden(name: str) -> dict[str, Any]:
    if not GOLDEN.is_dir():
        print(f"skipped: no {GOLDEN}")
        pytest.skip(f"no {GOLDEN}")
    return yaml.safe_load((GOLDEN / name).read_text())["typedConfig"]


def _lowered(matchers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # header names ignore case (both sides say ignoreCase)
    return sorted(({k: v.lower() if isinstance(v, str) else v for k, v in m.items()}
                   for m in matchers), key=repr)


def test_custom_matches_istios_builder_golden() -> None:
    policy = (GOLDEN.parent / "http" / "custom-simple-http-in.yaml")
    shadow_golden = _golden("custom-http-provider-out1.yaml")
    authz_golden = _golden("custom-http-provider-out2.yaml")
    model = load(GOLDEN_MESH_CONFIG, policy.read_text())
    filters, configs = inbound(model)
    _, config = ext_authz_of(filters)
    ours = MessageToDict(config)
    # the same requests are sent to the provider
    shadow = configs["envoy.filters.http.rbac/custom"]["rbac"]
    assert shadow["shadowRulesStatPrefix"] == shadow_golden["shadowRulesStatPrefix"]
    for request in PROBES:
        assert matched(shadow["shadowRules"], request) == \
            matched(shadow_golden["shadowRules"], request), request
    # the same ext_authz settings
    for key in ("failureModeAllow", "statusOnError", "transportApiVersion", "withRequestBody"):
        assert ours[key] == authz_golden[key], key
    assert ours["filterEnabledMetadata"]["path"] == authz_golden["filterEnabledMetadata"]["path"]
    assert _lowered(ours["allowedHeaders"]["patterns"]) == \
        _lowered(authz_golden["allowedHeaders"]["patterns"])
    theirs, mine = authz_golden["httpService"], ours["httpService"]
    assert mine["pathPrefix"] == theirs["pathPrefix"]
    assert mine["serverUri"]["timeout"] == theirs["serverUri"]["timeout"]
    assert mine["authorizationRequest"] == theirs["authorizationRequest"]
    for key in ("allowedClientHeaders", "allowedClientHeadersOnSuccess",
                "allowedUpstreamHeaders"):
        assert _lowered(mine["authorizationResponse"][key]["patterns"]) == \
            _lowered(theirs["authorizationResponse"][key]["patterns"]), key


def test_audit_is_rbac_log_first_as_istios_builder_writes_it() -> None:
    golden = _golden("audit-full-rule-out.yaml")
    policy = (GOLDEN / "audit-full-rule-in.yaml").read_text()
    deny = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-post, namespace: foo}
spec: {action: DENY, rules: [{to: [{operation: {methods: [POST]}}]}]}
"""
    filters, configs = inbound(load(policy, deny))
    names = [f.name for f in filters]
    assert names.index("envoy.filters.http.rbac/audit") < names.index(
        "envoy.filters.http.rbac/deny")  # a request DENY refuses is marked too
    rules = configs["envoy.filters.http.rbac/audit"]["rbac"]["rules"]
    assert rules["action"] == golden["rules"]["action"] == "LOG"
    for request in PROBES:
        assert matched(rules, request) == matched(golden["rules"], request)


def test_custom_and_audit_at_the_ingress_gateway() -> None:
    gateway = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: foo}
spec:
  hosts: [httpbin.example.com]
  gateways: [istio-system/edge]
  http: [{route: [{destination: {host: httpbin.foo.svc.cluster.local}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: CUSTOM
  provider: {name: sample-ext-authz-http}
  rules: [{to: [{operation: {paths: [/headers]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: istio-system}
spec:
  action: AUDIT
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
"""
    model = load(MESH_CONFIG, gateway)
    snapshot = Translation(model).snapshot("istio=ingressgateway")
    listener = Listener()
    listener.ParseFromString(next(iter(snapshot.get(LISTENER).values())).body)
    manager = hcm.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    names = [f.name for f in manager.http_filters]
    name, _ = ext_authz_of(list(manager.http_filters))
    assert names.index("envoy.filters.http.rbac/audit") < names.index(
        "envoy.filters.http.rbac/custom") < names.index(name)
    routes = RouteConfiguration()
    routes.ParseFromString(next(iter(snapshot.get(ROUTE).values())).body)
    (vhost,) = MessageToDict(routes)["virtualHosts"]
    configs = vhost["typedPerFilterConfig"]
    assert {name, "envoy.filters.http.rbac/custom", "envoy.filters.http.rbac/audit"} <= \
        set(configs)
    assert "ext-authz.foo.svc.cluster.local:8000" in snapshot.get(
        "type.googleapis.com/envoy.config.cluster.v3.Cluster")


@pytest.mark.envoy
def test_envoy_accepts_custom_and_audit() -> None:
    from static_check import static_bootstrap

    from meshpilot.local.envoy_process import validate_config
    from meshpilot.xds.render import snapshot_to_dict

    audit = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: foo}
spec: {action: AUDIT, rules: [{}]}
"""
    for provider in ("sample-ext-authz-http", "sample-ext-authz-grpc"):
        model = load(MESH_CONFIG, TASK_POLICY.replace("PROVIDER", provider), audit)
        validate_config(static_bootstrap(snapshot_to_dict(Translation(model).snapshot(VIEW))))
    model = load(GOLDEN_MESH_CONFIG, (GOLDEN / "custom-simple-http-in.yaml").read_text())
    validate_config(static_bootstrap(snapshot_to_dict(Translation(model).snapshot(VIEW))))


# ---- errors: positioned, with the field path ------------------------------------------------


def test_custom_policy_errors() -> None:
    found = errors(MESH_CONFIG, TASK_POLICY.replace("PROVIDER", "sample-ext-authz"))
    assert any("spec.provider.name: no extension provider sample-ext-authz in MeshConfig"
               in e and "did you mean" in e for e in found), found
    found = errors(TASK_POLICY.replace("PROVIDER", "x"))  # no ConfigMap at all
    assert any("no extension provider x" in e for e in found), found
    no_provider = TASK_POLICY.replace("  provider:\n    name: PROVIDER\n", "")
    assert any("spec.action: action CUSTOM needs a provider" in e
               for e in errors(MESH_CONFIG, no_provider))
    allow = TASK_POLICY.replace("CUSTOM", "ALLOW").replace("PROVIDER", "sample-ext-authz-http")
    assert any("spec.provider: provider is for action CUSTOM" in e
               for e in errors(MESH_CONFIG, allow))
    # one provider per workload, as Istio's builder (custom-bad-multiple-providers)
    if GOLDEN.is_dir():
        found = errors(GOLDEN_MESH_CONFIG.replace("name: default", "name: another").replace(
            "    extensionProviders:\n", "    extensionProviders:\n    - name: default\n"
            "      envoyExtAuthzGrpc: {service: ext-authz.foo.svc.cluster.local, port: 9000}\n"),
            (GOLDEN / "custom-bad-multiple-providers-in.yaml").read_text())
        assert any("AuthorizationPolicy foo/httpbin-2: spec.provider.name: provider another: "
                   "one provider may apply to a workload" in e for e in found), found


def test_mesh_config_errors_are_at_their_line_in_the_config_map() -> None:
    text = MESH_CONFIG.replace('port: "8000"', 'port: "eighty"')
    found = errors(text, TASK_POLICY.replace("PROVIDER", "sample-ext-authz-http"))
    line = 1 + "\n---\n".join((MESH, text)).splitlines().index('        port: "eighty"')
    assert any(f"istio.yaml:{line}:15: ConfigMap istio-system/istio: data.mesh."
               "extensionProviders[1].envoyExtAuthzHttp.port:" in e for e in found), found
    # a provider whose service is not declared: a warning, until a policy uses it
    missing = MESH_CONFIG.replace("port: \"9000\"", "port: 9001")
    assert any("extensionProviders[0].envoyExtAuthzGrpc.service: no ServiceEntry declares "
               "host ext-authz.foo.svc.cluster.local with port 9001" in str(w)
               for w in load(missing).warnings)
    found = errors(missing, TASK_POLICY.replace("PROVIDER", "sample-ext-authz-grpc"))
    assert any("spec.provider.name: provider sample-ext-authz-grpc cannot be used: no "
               "ServiceEntry declares host" in e for e in found), found
    grpc_on_http = MESH_CONFIG.replace('port: "9000"', 'port: "8000"')
    assert any("envoyExtAuthzGrpc.port: a gRPC provider calls an HTTP/2 port" in e
               for e in errors(grpc_on_http))
    unknown = MESH_CONFIG.replace('includeRequestHeadersInCheck', 'includeRequestHeaders')
    assert any("envoyExtAuthzHttp.includeRequestHeaders: unknown key" in e
               for e in errors(unknown))
    bad_status = MESH_CONFIG.replace('port: "8000"', 'port: "8000"\n        statusOnError: "299"')
    assert any("statusOnError" in e for e in errors(bad_status))


def test_other_mesh_config_fields_and_providers_are_warnings_not_silence() -> None:
    text = MESH_CONFIG.replace("    extensionProviders:\n", "    accessLogFile: /dev/stdout\n"
                               "    extensionProviders:\n    - name: zipkin\n"
                               "      zipkin: {service: zipkin.istio-system, port: 9411}\n")
    model = load(text)
    warnings = [str(w) for w in model.warnings]
    assert any("data.mesh.accessLogFile: MeshConfig field accessLogFile is not applied" in w
               for w in warnings), warnings
    assert any("extension provider zipkin (zipkin) is not applied" in w for w in warnings)
    found = errors(text, TASK_POLICY.replace("PROVIDER", "zipkin"))
    assert any("provider zipkin is of kind zipkin; CUSTOM needs an envoyExtAuthzHttp" in e
               for e in found), found


def test_custom_and_audit_on_a_tcp_workload_are_refused() -> None:
    tcp = MESH.replace("ports: [{number: 8000, name: http, protocol: HTTP}]",
                       "ports: [{number: 8000, name: tcp, protocol: TCP}]", 1).replace(
        "ports: {http: 8000}", "ports: {tcp: 8000}")
    text = "\n---\n".join((tcp, MESH_CONFIG, TASK_POLICY.replace("PROVIDER",
                                                                 "sample-ext-authz-http")))
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "istio.yaml")
    assert any("spec.action: action CUSTOM for a workload serving TCP" in str(i)
               for i in caught.value.issues), caught.value.issues


def test_an_edit_of_the_config_map_or_a_secret_reloads_as_a_cold_load(tmp_path: Path) -> None:
    # The ConfigMap is a document of another format (core v1) that the Istio compile step
    # reads: an edit of it alone must recompile the Istio documents too.
    (tmp_path / "mesh.yaml").write_text(MESH)
    (tmp_path / "policy.yaml").write_text(TASK_POLICY.replace("PROVIDER",
                                                              "sample-ext-authz-http"))
    (tmp_path / "mesh-config.yaml").write_text(MESH_CONFIG)
    cache = ParseCache(tmp_path)
    first = cache.try_load()
    assert first == load_policy(tmp_path)
    (tmp_path / "mesh-config.yaml").write_text(
        MESH_CONFIG.replace('port: "8000"', 'port: "8000"\n        pathPrefix: /check'))
    second = cache.try_load()
    assert second == load_policy(tmp_path) and second != first
    sidecar = second.service(VIEW).sidecar  # type: ignore[union-attr]
    assert sidecar is not None and sidecar.ext_authz is not None
    assert sidecar.ext_authz.path_prefix == "/check"
