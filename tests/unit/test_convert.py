"""`meshpilot convert --to native`: what it writes renders the very Envoy resources the source
does (`meshpilot render`), byte for byte once names are mapped, for the upstream Gateway API
conformance manifests and the repository's Gateway API folders; and whatever it cannot write
is said, with the source's file:line, never dropped.

Names are the one difference by design: Gateway API's compiled names hold `/` and `:`, native
ones cannot, so `shop/edge` is `shop.edge` (and its listener `shop/edge/8080` becomes
`shop.edge/8080`): the source's render has each renamed name replaced before the comparison.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import gatewayapi_conformance as conformance
import pytest
import yaml

from meshpilot.inputs.convert import (
    SHARED_PORT,
    convert,
    native_names,
    one_table,
    only_gateway,
)
from meshpilot.inputs.loader import load_policy, load_policy_text
from meshpilot.ir.model import GatewayListener, Model, only_for_tls_host
from meshpilot.translators import Translation
from meshpilot.xds.render import snapshot_to_dict

REPO = Path(__file__).resolve().parents[2]

# Where the conversion of an upstream manifest is incomplete, and why (the native language has
# no field for it): manifest -> the messages' beginnings, in order. Besides these, each listener
# with `tls_hosts` (HTTPS listeners sharing a port) is expected from the model to be said once
# (`assert_equivalent`).
INCOMPLETE = {
    "httproute-cors": ["the origin pattern 'https://[^/:]+\\\\.bar\\\\.com' (a regex) has no "
                       "native form",
                       "the native text is refused: rules[1].cors.allow_credentials: "
                       'allow_credentials cannot be used with the origin "*"'],
}


def _views(model: Model) -> list[str]:
    """Every view the model serves: its Gateways and the Services with a sidecar."""
    return [g.name for g in model.gateways] + [s.name for s in model.services if s.sidecar]


def _render(model: Model, view: str) -> dict[str, Any]:
    data = snapshot_to_dict(Translation(model).snapshot(view))
    data.pop("version")  # a hash of the resources: compared through them
    return data


def _renamer(names: dict[str, str]) -> Any:
    """Replace each old name, wherever a resource's text holds it whole (longest first: a
    Route's name begins with its Gateway's)."""
    if not names:
        return lambda text: text
    pattern = re.compile(r"(?<![A-Za-z0-9_.:/-])("
                         + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
                         + r")(?![A-Za-z0-9_.:-])")
    return lambda text: pattern.sub(lambda m: names[m.group(1)], text)


def _sorted(data: dict[str, Any]) -> dict[str, Any]:
    """Resources of each type in name order (renaming may change where a name sorts)."""
    def key(resource: dict[str, Any]) -> str:
        return str(resource.get("name") or resource.get("cluster_name") or "")
    return {"view": data["view"],
            "resources": {kind: sorted(items, key=key)
                          for kind, items in data["resources"].items()}}


def _shared_port_listeners(model: Model) -> list[tuple[str, GatewayListener]]:
    """The model's listeners with `tls_hosts`, as the converter names them."""
    return [(f"Gateway {g.name}: listeners[{index}]", listener) for g in model.gateways
            for index, listener in enumerate(g.listeners) if listener.tls_hosts]


def assert_equivalent(model: Model, folder: Path, output: Path) -> list[str]:
    """Convert `model` into `output` (certificates held in Secrets written there), load it,
    and compare every view's render; the messages of what was not converted (then nothing is
    rendered: the text may not even load).

    A listener with `tls_hosts` is expected to be said once, at its own source; with that the
    only thing unsaid, the text must render what the source does served as one table (every
    certificate on one filter chain, the Routes without the 421s and 404 guards made for the
    per-SNI tables): everything else is written byte-equivalently."""
    output.mkdir()
    conversion = convert(model, folder, output=output)
    shared = _shared_port_listeners(model)
    tables = [u for u in conversion.unsaid if u.message == SHARED_PORT]
    assert [(u.what, u.origin) for u in tables] == \
        [(what, listener.origin) for what, listener in _renamed(shared, conversion.names)]
    others = [u.message for u in conversion.unsaid if u not in tables]
    if others:
        return others
    (output / "policy.yaml").write_text(conversion.text)
    converted = load_policy(output)
    rename = _renamer(conversion.names)
    if shared:
        model = one_table(model)[0]
        assert not any(listener.tls_hosts for g in model.gateways for listener in g.listeners)
        assert not any(route.tls_host or only_for_tls_host(route) for route in model.routes)
    for view in _views(model):
        source = yaml.safe_load(rename(yaml.safe_dump(_render(model, view), sort_keys=False)))
        target = _render(converted, conversion.names.get(view, view))
        assert _sorted(source) == _sorted(target), view
    return []


def _renamed(listeners: list[tuple[str, GatewayListener]],
             names: dict[str, str]) -> list[tuple[str, GatewayListener]]:
    """`Gateway shop/edge: ...` as the converter says it, `Gateway shop.edge: ...`."""
    def native(what: str) -> str:
        gateway, rest = what.removeprefix("Gateway ").split(": ", 1)
        return f"Gateway {names.get(gateway, gateway)}: {rest}"
    return [(native(what), listener) for what, listener in listeners]


def _manifests() -> list[str]:
    if conformance.available() is not None:
        return []
    return sorted(p.stem for p in (conformance.ROOT / "tests").glob("*.yaml"))


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    if conformance.available() is not None:
        pytest.skip(conformance.available())
    pods: dict[tuple[str, str], int | dict[str, int]] = {
        (ns, name): 20000 + index for index, (ns, name, _) in enumerate(conformance.base_services())}
    pods[conformance.TCP_BACKEND] = {name: 21000 + index
                                     for index, name in enumerate(conformance.TCP_PORTS)}
    from tls_material import CA
    pair = CA().issue("*.example.com", "example.com", "second-example.org")
    return {"pods": pods, "ports": {p: 30000 + p for p in conformance.LISTENER_PORTS},
            "tls": (pair.cert_pem, pair.key_pem)}


@pytest.mark.parametrize("manifest", _manifests())
def test_each_upstream_manifest_converts_to_the_same_envoy_resources(
        base: dict[str, Any], manifest: str, tmp_path: Path) -> None:
    """Per Gateway the test's routes attach to (`--gateway`: the base's Gateways share port
    80, which native Gateways may not), every view renders the same, or the conversion says
    exactly what it could not write."""
    conformance.write_folder(tmp_path, [], base["pods"], base["ports"], base["tls"])
    (tmp_path / f"{manifest}.yaml").write_text(conformance.test_manifest(manifest))
    model = load_policy(tmp_path)
    attached = [g.name for g in model.gateways if any(r.gateway == g.name for r in model.routes)]
    problems = []
    for index, gateway in enumerate(attached or [model.gateways[0].name]):
        problems += assert_equivalent(only_gateway(model, gateway), tmp_path,
                                      tmp_path.parent / f"{tmp_path.name}-native-{index}")
    expected = INCOMPLETE.get(manifest, [])
    assert len(problems) == len(expected), problems
    for problem, beginning in zip(problems, expected, strict=True):
        assert problem.startswith(beginning), problem


@pytest.mark.parametrize("folder", ["examples/gateway-api", "tests/golden/gatewayapi",
                                    "tests/golden/gatewayapi-tls"])
def test_the_repository_gateway_api_folders_convert(folder: str, tmp_path: Path) -> None:
    """Their certificates held in Secrets written as files beside the converted policy;
    gatewayapi-tls's TLSRoute (passthrough by SNI), weighted TCPRoute and BackendTLSPolicy
    subjectAltNames are what native documents cannot say."""
    source = REPO / folder
    model = load_policy(source if folder.startswith("examples") else source / "policy.yaml")
    problems = assert_equivalent(model, source, tmp_path / "native")
    if folder == "tests/golden/gatewayapi-tls":
        # Each said, then the refusals of what is left without it (a tcp listener with no
        # service, a cors with no origin).
        assert problems and all("no native f" in p or p.startswith("the native text is refused")
                                for p in problems), problems
        assert any("TLS passthrough by SNI" in p for p in problems)
        assert any("weighted backends (TCPRoute)" in p for p in problems)
    else:
        assert problems == []


def test_what_cannot_be_said_is_reported_with_its_place() -> None:
    """A certificate held in a Secret, a TLS passthrough listener: each is named on stderr at
    its source file:line, and the exit status says the conversion is incomplete."""
    done = subprocess.run([sys.executable, "-m", "meshpilot", "convert", "--to", "native",
                           str(REPO / "tests/golden/gatewayapi-tls/policy.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.splitlines()
    assert any(re.match(r".*policy\.yaml:\d+:\d+: Gateway .*: listeners\[\d+\]: TLS passthrough "
                        r"by SNI \(TLSRoute\)", line) for line in lines), lines
    assert "the conversion is incomplete" in lines[-1]
    assert "kind: Gateway" in done.stdout  # what could be written is printed all the same


def test_a_complete_conversion_exits_0_with_a_comment_naming_each_source() -> None:
    done = subprocess.run([sys.executable, "-m", "meshpilot", "convert", "--to", "native",
                           str(REPO / "examples/gateway-api")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    comments = [line for line in done.stdout.splitlines() if line.startswith("# ")]
    assert comments and all(re.search(r"from .*\.yaml:\d+$", c) for c in comments), comments
    assert "renamed: shop/edge -> shop.edge" in done.stderr


# The native golden policies whose every field the writer writes; the others use security
# (jwt, api_keys, authorization, rate limits ...; session persistence is written), which it
# does not write yet, and say so.
NATIVE_GOLDENS = ("backends", "compression", "connections", "contract", "direct-response",
                  "dns-service", "failover", "http2-grpc", "listener-features", "locality-lb",
                  "matches", "max-requests", "mirror-from-header", "redirect", "resilience",
                  "resilience-clusters", "retries-timeouts", "rewrite-headers",
                  "session-persistence", "sidecar", "tls", "tracing", "traffic-mirror-cors-hash",
                  "traffic-resilience")


@pytest.mark.parametrize("case", NATIVE_GOLDENS)
def test_a_native_policy_converts_to_itself(case: str) -> None:
    """Native documents come back as native documents saying the same (the one seam works
    for any input; native names are kept): every view renders byte for byte as before."""
    folder = REPO / "tests/golden" / case
    model = load_policy(folder / "policy.yaml")
    conversion = convert(model, folder)
    assert conversion.complete, conversion.unsaid
    assert conversion.names == {}
    from meshpilot.base import tlsfiles
    with tlsfiles.paths_relative_to(folder):
        again = load_policy_text(conversion.text)
    for view in _views(model):
        assert _render(again, view) == _render(model, view), view


@pytest.mark.parametrize("case", ["auth", "csrf-ratelimit", "shared-ratelimit", "native-routing", "mesh-mtls"])
def test_what_the_writer_does_not_write_yet_is_said(case: str) -> None:
    folder = REPO / "tests/golden" / case
    conversion = convert(load_policy(folder / "policy.yaml"), folder)
    assert conversion.unsaid and all("not converted yet" in u.message
                                     for u in conversion.unsaid), conversion.unsaid


def test_names_native_cannot_spell_are_mapped_once_and_never_collide() -> None:
    model = load_policy_text("""
kind: Service
name: shop.web-80
endpoints: [127.0.0.1:1]
""")
    from dataclasses import replace

    from meshpilot.ir.model import Service
    taken = model.services[0]
    model = replace(model, services=(taken, Service("shop/web:80", taken.position)))
    assert native_names(model) == {"shop/web:80": "shop.web-80-2"}


def test_a_whole_segments_prefix_is_native() -> None:
    model = load_policy_text("""
kind: Service
name: web
endpoints: [127.0.0.1:1]
---
kind: Gateway
name: edge
listeners: [{name: http, port: 8080}]
---
kind: Route
name: r
gateway: edge
rules:
- match: {path: {prefix: /v2/, whole_segments: true}}
  backends: [web]
""")
    routes = _render(model, "edge")["resources"]["routes"]
    assert routes[0]["virtual_hosts"][0]["routes"][0]["match"] == {"path_separated_prefix": "/v2"}
    with pytest.raises(Exception, match='"whole_segments" goes with "prefix"'):
        load_policy_text("""
kind: Gateway
name: edge
listeners: [{name: http, port: 8080}]
---
kind: Route
name: r
gateway: edge
rules:
- match: {path: {exact: /v2, whole_segments: true}}
  direct_response: {status: 200}
""")



def test_a_backend_changes_the_headers_of_its_own_requests() -> None:
    model = load_policy_text("""
kind: Service
name: web
endpoints: [127.0.0.1:1]
---
kind: Gateway
name: edge
listeners: [{name: http, port: 8080}]
---
kind: Route
name: r
gateway: edge
rules:
- backends:
  - {service: web, request_headers: {set: {x-backend: web}}, response_headers: {remove: [server]}}
""")
    action = _render(model, "edge")["resources"]["routes"][0]["virtual_hosts"][0]["routes"][0]
    entry = action["route"]["weighted_clusters"]["clusters"][0]
    assert entry["name"] == "web"
    assert entry["request_headers_to_add"][0]["header"] == {"key": "x-backend", "value": "web"}
    assert entry["response_headers_to_remove"] == ["server"]


def test_with_an_output_folder_certificates_are_written_beside_the_text(tmp_path: Path) -> None:
    """`-o DIR`: the text names certificates written under DIR/certs from what the model holds
    (so DIR stands alone, wherever the source's files were), keys readable by their owner
    only; DIR loads and renders as the source."""
    folder = REPO / "tests/golden/tls"
    model = load_policy(folder / "policy.yaml")
    output = tmp_path / "native"
    assert assert_equivalent(model, folder, output) == []
    keys = list((output / "certs").glob("*.key"))
    assert keys and all(key.stat().st_mode & 0o077 == 0 for key in keys)
    assert "cert: certs/" in (output / "policy.yaml").read_text()


def test_only_name_fields_are_renamed() -> None:
    """A header value that reads like a renamed name stays as it is."""
    model = load_policy_text("""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: mp}
spec: {controllerName: meshpilot.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: mp
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-gateway, value: shop/edge}]}
    backendRefs: [{name: web, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80}]}
""")
    conversion = convert(model)
    assert conversion.complete, conversion.unsaid
    assert "x-gateway: shop/edge" in conversion.text
    assert "gateway: shop.edge" in conversion.text


def test_a_redirect_rewrites_the_path_by_a_regex() -> None:
    policy = """
kind: Gateway
name: edge
listeners: [{name: http, port: 8080}]
---
kind: Route
name: r
gateway: edge
rules:
- redirect: {regex: "^/old/(.*)", substitution: "/new/\\\\1", status: 301}
"""
    route = _render(load_policy_text(policy), "edge")["resources"]["routes"][0]
    redirect = route["virtual_hosts"][0]["routes"][0]["redirect"]
    assert redirect["regex_rewrite"] == {"pattern": {"regex": "^/old/(.*)"},
                                         "substitution": "/new/\\1"}
    with pytest.raises(Exception, match='missing "substitution"'):
        load_policy_text(policy.replace(', substitution: "/new/\\\\1"', ""))


def _secret(name: str, pem: tuple[bytes, bytes]) -> str:
    import base64
    return f"""apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: infra}}
type: kubernetes.io/tls
data:
  tls.crt: {base64.b64encode(pem[0]).decode()}
  tls.key: {base64.b64encode(pem[1]).decode()}
---
"""


def test_https_listeners_sharing_a_port_are_said_once_and_the_rest_written(
        tmp_path: Path) -> None:
    """Three HTTPS listeners on 443 (one table each by SNI, 421s for the others' hostnames,
    a 404 guard for `c.example.org`, which no route names): one message, at the first
    listener's source line, exit 3; the text has the listener with every certificate and the
    written Routes only, no 421 and no guard, and renders what the source does as one table."""
    from tls_material import CA
    ca = CA()
    pairs = [ca.issue(name) for name in ("a.example.com", "*.example.com", "c.example.org")]
    source = tmp_path / "source"
    source.mkdir()
    (source / "gateway.yaml").write_text("""apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: mp}
spec: {controllerName: meshpilot.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: mp
  listeners:
  - {name: exact, port: 443, protocol: HTTPS, hostname: a.example.com,
     tls: {certificateRefs: [{name: a}]}}
  - {name: wild, port: 443, protocol: HTTPS, hostname: '*.example.com',
     tls: {certificateRefs: [{name: wild}]}}
  - {name: other, port: 443, protocol: HTTPS, hostname: c.example.org,
     tls: {certificateRefs: [{name: c}]}}
---
""" + "".join(_secret(name, (pair.cert_pem, pair.key_pem))
              for name, pair in zip(("a", "wild", "c"), pairs, strict=True)))
    (source / "routes.yaml").write_text("""apiVersion: v1
kind: Service
metadata: {name: web, namespace: infra}
spec: {ports: [{port: 8080}]}
---
""" + "".join(f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {section}, namespace: infra}}
spec:
  parentRefs: [{{name: edge, sectionName: {section}}}]
  rules: [{{backendRefs: [{{name: web, port: 8080}}]}}]
---
""" for section in ("exact", "wild")))
    model = load_policy(source)
    assert any(only_for_tls_host(r) and not r.rules for r in model.routes)  # the 404 guard
    output = tmp_path / "native"
    done = subprocess.run([sys.executable, "-m", "meshpilot", "convert", "--to", "native",
                           str(source), "-o", str(output)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    problems = [line for line in done.stderr.splitlines()
                if not line.startswith(("renamed: ", "wrote "))]
    assert problems[:-1] == [f"gateway.yaml:12:5: Gateway infra.edge: listeners[0]: "
                             f"{SHARED_PORT}"], problems
    assert "the conversion is incomplete" in problems[-1]
    text = (output / "policy.yaml").read_text()
    assert "421" not in text and "misdirected" not in text and "tls_host" not in text
    converted = load_policy(output)
    (listener,) = converted.gateway("infra.edge").listeners
    assert listener.tls is not None and len(listener.tls.certificates) == 3
    assert not listener.tls_hosts
    assert sorted(r.name for r in converted.routes) == [
        "infra.edge.443.-.example.com", "infra.edge.443.a.example.com"]
    assert all(r.rules for r in converted.routes)
    # The same, through the comparison every other case uses.
    assert assert_equivalent(model, source, tmp_path / "again") == []


def test_a_located_gateway_and_istio_locality_settings_convert(tmp_path: Path) -> None:
    """An Istio ingress gateway whose selector says where it runs, and a DestinationRule's
    localityLbSetting, come back as a native Gateway `locality` and a Service `locality_lb`."""
    model = load_policy_text("""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, locality: us-east/z1}
  - {address: 10.0.0.2, locality: us-west/z1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1}
    loadBalancer: {localityLbSetting: {failover: [{from: us-east, to: us-west}]}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway, topology.kubernetes.io/region: us-west,
             topology.kubernetes.io/zone: z1}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http: [{route: [{destination: {host: echo, port: {number: 9080}}}]}]
""", "istio.yaml")
    conversion = convert(model, REPO)
    written = list(yaml.safe_load_all(conversion.text))
    gateways = [d for d in written if d and d.get("kind") == "Gateway"]
    assert [g.get("locality") for g in gateways] == ["us-west/z1"]
    services = [d for d in written if d and d.get("kind") == "Service" and "locality_lb" in d]
    assert [s["locality_lb"] for s in services] == [{"failover": [{"from": "us-east",
                                                                   "to": "us-west"}]}]
    # Written natively, a located gateway converts to itself: the same resources.
    native = load_policy_text("""
kind: Service
name: api
endpoints:
  - {address: 10.0.0.1:80, region: us-east, zone: a}
  - {address: 10.0.0.2:80, region: us-west, zone: a}
outlier_detection: {consecutive_5xx: 1}
locality_lb: {failover: [{from: us-west, to: us-east}]}
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
    assert assert_equivalent(native, REPO, tmp_path / "native") == []
    assert "locality: us-west/a" in convert(native, REPO).text


def test_a_sidecar_with_several_ports_converts_to_itself() -> None:
    """`sidecar.ports` (each port's application, protocol, mode and served Service) is
    written back as it was, as an Istio workload's several ports are (inputs/istio/inbound.py)."""
    text = """
kind: Service
name: reviews
endpoints: ["10.0.0.21:15006"]
sidecar:
  mtls: strict
  ports:
    - {port: 15006, app: 9080}
    - {port: 15007, app: "127.0.0.1:9090", protocol: tcp, mtls: permissive, service: reviews-db}
    - {port: 15008, app: 9091, mtls: "off"}
---
kind: Service
name: reviews-db
protocol: tcp
endpoints: ["10.0.0.21:15007"]
"""
    model = load_policy_text(text)
    conversion = convert(model, REPO)
    assert conversion.complete, conversion.unsaid
    again = load_policy_text(conversion.text)
    assert again.service("reviews") == model.service("reviews")
    for view in _views(model):
        assert _render(again, view) == _render(model, view), view
