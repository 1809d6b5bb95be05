"""The upstream GAMMA (MESH-HTTP) conformance tests, run through a real client sidecar.

Each upstream mesh manifest (conformance/tests/mesh/*.yaml) is loaded unchanged with the base
mesh topology's Services (conformance/base/mesh-manifests.yaml; its Deployments are the echo
backends here, on loopback, with one EndpointSlice per Service). What a cluster with sidecars
adds is written as native kinds: the parent Service `echo.gateway-conformance-mesh` (the mesh's
sidecars are native Services, docs/gateway-api.md) and a consumer whose sidecar calls it. The
upstream test's requests go to the consumer's sidecar, as the Go test's client pod sends them to
`echo` (upstream's client is echo-v1's pod: which caller sends does not matter to these
routes), and are checked as upstream checks them (which backend answered, what it saw, redirects).

The mesh manifests' rules are the Gateway tests' (same paths, filters, weights; only the parent
and backend names differ), so the cases are the Gateway suite's `CASES` with the backends
renamed, except weights, whose shares are read from the manifest.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gatewayapi_conformance as conformance
import grpc_conformance_echo as grpc_echo
import pytest
import yaml
from support import eventually, served_policy

pytestmark = [pytest.mark.envoy,
              pytest.mark.skipif(conformance.available() is not None,
                                 reason=str(conformance.available()))]

MESH = "gateway-conformance-mesh"
BACKENDS = ("echo-v1", "echo-v2")
RENAMED = {conformance.V1: "echo-v1", conformance.V2: "echo-v2"}
WEIGHT_REQUESTS = 500  # upstream's weighted test sends 500 and allows 5 points off each share
WEIGHT_TOLERANCE = 0.05

# upstream mesh test -> the Gateway test whose cases it shares (its manifest's twin)
SHARED = {
    "MeshHTTPRouteSimpleSameNamespace": "HTTPRouteSimpleSameNamespace",
    "MeshHTTPRouteMatching": "HTTPRouteMatching",
    "MeshHTTPRouteRequestHeaderModifier": "HTTPRouteRequestHeaderModifier",
    "MeshHTTPRouteBackendRequestHeaderModifier": "HTTPRouteBackendRequestHeaderModifier",
    "MeshHTTPRouteRedirectHostAndStatus": "HTTPRouteRedirectHostAndStatus",
    "MeshHTTPRouteRedirectPath": "HTTPRouteRedirectPath",
    "MeshHTTPRouteRedirectPort": "HTTPRouteRedirectPort",
    "MeshHTTPRouteSchemeRedirect": "HTTPRouteRedirectScheme",
    "MeshHTTPRoute307Redirect": "HTTPRoute307Redirect",
    "MeshHTTPRoute308Redirect": "HTTPRoute308Redirect",
    "MeshHTTPRouteRewritePath": "HTTPRouteRewritePath",
    "MeshHTTPRouteNamedRule": "HTTPRouteNamedRule",
}
_c, _404, V1, V2 = conformance._c, conformance._404, conformance.V1, conformance.V2
# The mesh manifests that differ from their Gateway twin: the upstream mesh test's cases (the
# Gateway test's less the query rules naming a third backend; 303's path is /redirect).
OWN: dict[str, tuple[str, tuple[conformance.Case, ...]]] = {
    "MeshHTTPRoute303Redirect": ("httproute-303-redirect", (
        conformance._redirect("/redirect", 303, path="/redirect"),)),
    "MeshHTTPRouteQueryParamMatching": ("httproute-query-param-matching", (
        _c("/?animal=whale"), _c("/?animal=dolphin", V2),
        _c("/?animal=whale&otherparam=irrelevant"), _c("/?animal=dolphin&color=yellow", V2),
        _404("/?color=blue"), _404("/?animal=dog"), _404("/?animal=whaledolphin"), _404("/"),
        _c("/path1?animal=whale"), _c("/?animal=whale", V2, headers={"version": "one"}),
        _c("/path3?animal=shark"), _c("/path4?animal=kraken", headers={"version": "three"}),
        _404("/?animal=shark"), _404("/path4?animal=kraken"), _c("/path5?animal=hydra"))),
}
MESH_TESTS: dict[str, tuple[str, tuple[conformance.Case, ...]]] = {
    **{mesh: (conformance.CASES[gateway].manifest, conformance.CASES[gateway].cases)
       for mesh, gateway in SHARED.items()}, **OWN}

@dataclasses.dataclass(frozen=True)
class Setup:
    """One test's folder beyond the base topology: an upstream mesh manifest of the shared copy
    (`manifest`, "" for none) or meshpilot's own input for a test whose manifest the shared
    copy lacks (`own`); the native parent Services (in MESH) the consumer calls; whether the
    backends' `grpc` port is the gRPC echo; whether a second caller in MESH (the producer)
    calls too; whether every route must resolve its backends (the gRPC weight manifest names
    an `echo-v3` the base topology lacks, at weight 0)."""

    manifest: str = ""
    own: str = ""
    parents: tuple[str, ...] = ("echo",)
    grpc: bool = False
    producer: bool = False
    resolved: bool = True


# Each caller: a sidecar with a local port per parent Service. Its namespace (its identity's)
# is what a consumer route (MeshConsumerRoute) is scoped to. Written in block style, so the
# only braces are the ports `served_policy` fills in.
PARENT_ENDPOINTS = {"echo": ("v1", "v2"), "echo-v1": ("v1",), "echo-v2": ("v2",)}
CONSUMER_NAMESPACE = f"{MESH}-consumer"


def _local(parent: str, caller: str) -> str:
    return f"{caller}_to_{parent.replace('-', '_')}"


def _caller(name: str, namespace: str, parents: tuple[str, ...]) -> str:
    calls = "".join(f"\n    - service: {parent}.{MESH}\n      local_port: {{{_local(parent, name)}}}"
                    for parent in parents)
    return "\n".join((
        "kind: Service", f"name: {name}", "endpoints:", f"  - 127.0.0.1:{{{name}_in}}",
        "sidecar:", f"  port: {{{name}_in}}", "  address: 127.0.0.1",
        f"  app: 127.0.0.1:{{{name}_app}}", f"  namespace: {namespace}", f"  calls:{calls}", ""))


def _natives(setup: Setup) -> str:
    """The callers (the consumer; the producer too) and the parent Services, native: the
    parents' pods are the echo backends of their names."""
    callers = [("consumer", CONSUMER_NAMESPACE if setup.producer else "default")]
    if setup.producer:
        callers.append(("producer", MESH))
    texts = [_caller(name, namespace, setup.parents) for name, namespace in callers]
    texts += [f"kind: Service\nname: {parent}.{MESH}\nendpoints:\n"
              + "".join(f"  - 127.0.0.1:{{{pod}}}\n" for pod in PARENT_ENDPOINTS[parent])
              for parent in setup.parents]
    return "---\n".join(texts)


def _escaped(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _base_services() -> list[str]:
    """The base mesh topology's Services (the Namespaces too), as written upstream. The
    Service `echo` is the native parent here (a sidecar's Service), so its Kubernetes twin is
    left out."""
    return [text for text, doc in conformance._documents(
                conformance.ROOT / "base" / "mesh-manifests.yaml")
            if doc.get("kind") == "Namespace"
            or (doc.get("kind") == "Service" and doc["metadata"]["name"] in BACKENDS)]


def _endpoint_slices(grpc: bool) -> str:
    """What the endpoints controller would write for echo-v1 and echo-v2: every port of the
    Service (by name) on its echo backend's loopback port (`{v1}`); with `grpc`, port `grpc`
    on its gRPC echo's (`{g1}`)."""
    slices = []
    for _, doc in conformance._documents(conformance.ROOT / "base" / "mesh-manifests.yaml"):
        name = doc["metadata"].get("name")
        if doc.get("kind") != "Service" or name not in BACKENDS:
            continue
        number = name.removeprefix("echo-v")
        ports = "".join(
            f"  - name: {p['name']}\n    port: "
            f"{{{'g' if grpc and p['name'] == 'grpc' else 'v'}{number}}}\n"
            for p in doc["spec"]["ports"])
        slices.append("\n".join((
            "apiVersion: discovery.k8s.io/v1", "kind: EndpointSlice", "metadata:",
            f"  name: {name}-pods", f"  namespace: {MESH}", "  labels:",
            f"    kubernetes.io/service-name: {name}", "addressType: IPv4", "ports:",
            ports + "endpoints:", "  - addresses: [127.0.0.1]", "    conditions:",
            "      ready: true", "")))
    return "---\n".join(slices)


def _template(setup: Setup) -> str:
    """The folder for one mesh test."""
    texts = [(conformance.ROOT / "tests" / "mesh" / f"{setup.manifest}.yaml").read_text()] \
        if setup.manifest else []
    if setup.own:
        texts.append(setup.own)
    return "\n---\n".join([_natives(setup), *(_escaped(t) for t in _base_services()),
                             _endpoint_slices(setup.grpc), *(_escaped(t) for t in texts)])


class Consumer:
    """A caller's sidecar: requests to its local port for a parent Service are the test's."""

    def __init__(self, ports: dict[str, int], backends: dict[str, int]):
        self.ports = ports  # parent Service -> the local port calling it
        self.port = ports["echo"] if "echo" in ports else next(iter(ports.values()))
        self.backends = backends  # the echo backends' ports ("v1", "v2")
        self.producer: Consumer | None = None  # the second caller, in MESH (MeshConsumerRoute)

    def send(self, case: conformance.Case, parent: str | None = None) -> list[str]:
        status, headers, body = conformance.request(
            self.ports[parent] if parent else self.port, case)
        return conformance.check(case, status, headers, body)

    def pod(self) -> str:
        status, _, body = conformance.request(self.port, conformance.Case("/", host="echo"))
        assert status == 200, (status, body[:200])
        return str(json.loads(body)["pod"])


def _mesh_case(case: conformance.Case) -> conformance.Case:
    """A Gateway case as the mesh test sends it: to `echo`, answered in the mesh namespace."""
    host = "echo" if case.host == conformance.DEFAULT_HOST else case.host
    return dataclasses.replace(case, host=host, namespace=MESH,
                               backend=RENAMED.get(case.backend or "", case.backend))


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    """The conformance report, with this module's results beside the Gateway suite's."""
    yield
    conformance.write_report()


@pytest.fixture
def consumer(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Consumer]:
    setup: Setup = request.param
    callers = ("consumer", "producer") if setup.producer else ("consumer",)
    apps: dict[str, Any] = {
        "v1": conformance.EchoBackend(MESH, "echo-v1"),
        "v2": conformance.EchoBackend(MESH, "echo-v2"),
        **{f"{name}_app": conformance.EchoBackend(CONSUMER_NAMESPACE, name) for name in callers}}
    if setup.grpc:
        apps.update(g1=grpc_echo.GrpcEchoBackend(MESH, "echo-v1"),
                    g2=grpc_echo.GrpcEchoBackend(MESH, "echo-v2"))
    locals_ = {parent: {name: _local(parent, name) for name in callers}
               for parent in setup.parents}
    with served_policy(tmp_path, "mesh.yaml", _template(setup), apps,
                       free_ports=(*(f"{name}_in" for name in callers),
                                   *(port for by in locals_.values() for port in by.values())),
                       envoys={name: f"sidecar-{name}" for name in callers}) as served:
        objects = served.mp.status()["policy"]["objects"]
        routes = [o for o in objects if o["kind"] in ("HTTPRoute", "GRPCRoute")]
        assert bool(routes) == bool(setup.manifest or setup.own), routes
        assert all(o["parent"].removeprefix(f"{MESH}/") in setup.parents for o in routes), routes
        for route in routes:
            assert {c["type"]: c["status"] for c in route["conditions"]} == {
                "Accepted": "True", "ResolvedRefs": "True" if setup.resolved else "False"}, route
        sidecars = [Consumer({parent: served.ports[by[name]] for parent, by in locals_.items()},
                             served.ports) for name in callers]
        for sidecar in sidecars:
            for port in sidecar.ports.values():
                eventually(lambda port=port: _served(port, setup.grpc), timeout=20,
                           what="the caller's sidecar to be served")
        client = sidecars[0]
        client.producer = sidecars[1] if setup.producer else None
        yield client


def _served(port: int, grpc: bool) -> bool:
    """Whether the local port answers as served (a call no rule matches: UNIMPLEMENTED)."""
    if grpc:
        return grpc_echo.call(port, "Echo", authority="echo:7070")[0].name != "UNAVAILABLE"
    return conformance.request(port, conformance.Case("/", host="echo"))[0] != 503


@pytest.mark.parametrize("consumer", [Setup(m) for m, _ in MESH_TESTS.values()],
                         ids=list(MESH_TESTS), indirect=True)
def test_mesh_cases(consumer: Consumer, request: pytest.FixtureRequest) -> None:
    test = request.node.callspec.id
    cases = [_mesh_case(c) for c in MESH_TESTS[test][1]]
    assert cases
    failures = {f"{c.method} {c.path} {c.headers}": problems
                for c in cases if (problems := consumer.send(c))}
    conformance.RESULTS[test] = "PASS" if not failures else f"FAIL ({len(failures)})"
    assert not failures, failures


@pytest.mark.parametrize("consumer", [Setup()], indirect=True)
def test_mesh_basic(consumer: Consumer) -> None:
    """MeshBasic: with no route at all, a mesh client reaches the mesh server `echo`."""
    status, _, body = conformance.request(consumer.port, conformance.Case("/", host="echo"))
    conformance.RESULTS["MeshBasic"] = "PASS" if status == 200 else "FAIL (1)"
    assert status == 200, (status, body[:200])
    assert json.loads(body)["pod"].removesuffix("-pod") in BACKENDS


def _weights() -> dict[str, float]:
    (route,) = [d for d in yaml.safe_load_all(
        (conformance.ROOT / "tests" / "mesh" / "httproute-weight.yaml").read_text()) if d]
    refs = route["spec"]["rules"][0]["backendRefs"]
    total = sum(r["weight"] for r in refs)
    return {r["name"]: r["weight"] / total for r in refs}


@pytest.mark.parametrize("consumer", [Setup("httproute-weight")], indirect=True)
def test_mesh_httproute_weight(consumer: Consumer) -> None:
    """MeshHTTPRouteWeight: the shares of the answers are the weights', within 5 points."""
    answered = Counter(consumer.pod().removesuffix("-pod") for _ in range(WEIGHT_REQUESTS))
    within = set(answered) == set(_weights()) and all(
        abs(answered[backend] / WEIGHT_REQUESTS - share) <= WEIGHT_TOLERANCE
        for backend, share in _weights().items())
    conformance.RESULTS["MeshHTTPRouteWeight"] = "PASS" if within else "FAIL (1)"
    assert within, (answered, _weights())


# ---- the upstream GRPCRoute mesh tests (MESH-GRPC), through the caller's sidecar to the gRPC echo

def _grpc(test_case: str, backend: str, metadata: dict[str, str], seen: dict[str, str],
          absent: tuple[str, ...] = ()) -> conformance.GrpcCase:
    return conformance.GrpcCase(metadata={"x-test-case": test_case, **metadata},
                                authority="echo:7070", backend=backend, namespace=MESH,
                                seen={"x-test-case": test_case, **seen}, absent=absent)


GRPC_HEADER_CASES = (
    _grpc("set", "echo-v1", {"some-other-header": "this-header-should-be-set",
                             "x-header-set": "this-value-should-be-overwritten"},
          {"some-other-header": "this-header-should-be-set",
           "x-header-set": "set-overwrites-values"}),
    _grpc("add", "echo-v1", {"x-header-add": "this-value-should-be-appended"},
          {"x-header-add": "this-value-should-be-appended,add-appends-values"}),
    _grpc("remove", "echo-v1", {"x-header-remove": "this-should-be-removed"}, {},
          ("x-header-remove",)),
    _grpc("multi", "echo-v2", {"x-header-set-2": "set-header-2", "x-header-add-2": "add-header-2",
                               "x-header-remove-2": "should-be-removed-2"},
          {"x-header-set-1": "header-set-1", "x-header-set-2": "header-set-2",
           "x-header-add-1": "header-add-1", "x-header-add-2": "add-header-2,header-add-2"},
          ("x-header-remove-1", "x-header-remove-2")),
)


@pytest.mark.parametrize("consumer", [Setup("grpcroute-request-header-modifier", grpc=True)],
                         indirect=True)
def test_mesh_grpcroute_request_header_modifier(consumer: Consumer) -> None:
    """MeshGRPCRouteRequestHeaderModifier: each rule (picked by `x-test-case`) sets, adds and
    removes the request headers the gRPC echo behind the caller's sidecar sees."""
    failures = {case.metadata["x-test-case"]: problems for case in GRPC_HEADER_CASES
                if (problems := conformance.grpc_check(consumer.port, case))}
    conformance.RESULTS["MeshGRPCRouteRequestHeaderModifier"] = \
        "PASS" if not failures else f"FAIL ({len(failures)})"
    assert not failures, failures


@pytest.mark.parametrize("consumer", [Setup("grpcroute-weight", grpc=True, resolved=False)],
                         indirect=True)
def test_mesh_grpcroute_weight(consumer: Consumer) -> None:
    """MeshGRPCRouteWeight: 70/30 between echo-v1 and echo-v2 within 5 points; echo-v3 (weight
    0, and no such Service in the base topology) never answers, and no call fails."""
    answered = Counter((conformance.grpc_pod(consumer.port) or "failed").removesuffix("-pod")
                       for _ in range(WEIGHT_REQUESTS))
    weights = {"echo-v1": 0.7, "echo-v2": 0.3}
    within = set(answered) == set(weights) and all(
        abs(answered[backend] / WEIGHT_REQUESTS - share) <= WEIGHT_TOLERANCE
        for backend, share in weights.items())
    conformance.RESULTS["MeshGRPCRouteWeight"] = "PASS" if within else "FAIL (1)"
    assert within, answered


# ---- the upstream mesh tests whose manifests the shared copy lacks: meshpilot's own inputs ----

def _route(name: str, parent: str, rules: str, namespace: str = MESH,
           parent_namespace: str | None = None) -> str:
    """An HTTPRoute of meshpilot's own, for the same behaviour as the upstream test's."""
    where = f", namespace: {parent_namespace}" if parent_namespace else ""
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: {parent}{where}}}]
  rules: {rules}
"""


def _answered_by(backend: str, **kw: Any) -> conformance.Case:
    return conformance.Case("/", namespace=MESH, backend=backend, **kw)


def _set_header(value: str, backend: str, backend_namespace: str | None = None) -> str:
    where = f", namespace: {backend_namespace}" if backend_namespace else ""
    return ("[{filters: [{type: ResponseHeaderModifier, responseHeaderModifier: "
            f"{{set: [{{name: X-Header-Set, value: {value}}}]}}}}], "
            f"backendRefs: [{{name: {backend}, port: 80{where}}}]}}]")


SPLIT = _route("split-by-path", "echo",
               "[{matches: [{path: {type: Exact, value: /v1}}], backendRefs: [{name: echo-v1, port: 80}]},"
               " {matches: [{path: {type: Exact, value: /v2}}], backendRefs: [{name: echo-v2, port: 80}]}]")


@pytest.mark.parametrize("consumer", [Setup(own=SPLIT)], indirect=True)
def test_mesh_traffic_split(consumer: Consumer) -> None:
    """MeshTrafficSplit (input meshpilot's own): a route on `echo` sends /v1 to echo-v1 and
    /v2 to echo-v2."""
    cases = [conformance.Case("/v1", host="echo", namespace=MESH, backend="echo-v1"),
             conformance.Case("/v2", host="echo", namespace=MESH, backend="echo-v2")]
    failures = {c.path: problems for c in cases if (problems := consumer.send(c))}
    conformance.RESULTS["MeshTrafficSplit"] = "PASS" if not failures else f"FAIL ({len(failures)})"
    assert not failures, failures


FRONTEND = _route("on-echo-v2", "echo-v2", _set_header("set", "echo-v2"))
_FRONTEND_PARENTS = ("echo-v1", "echo-v2")


@pytest.mark.parametrize("consumer", [Setup(own=FRONTEND, parents=_FRONTEND_PARENTS)],
                         indirect=True)
def test_mesh_frontend(consumer: Consumer) -> None:
    """MeshFrontend (input meshpilot's own): the route of Service echo-v2 shapes calls to that
    Service and nothing else. Nothing intercepts traffic in meshpilot's mesh (docs/mesh.md),
    so a call to echo-v2's pod by its address reaches the pod itself, which the route must
    leave alone as it does upstream's call to the pod IP."""
    pod = consumer.backends["v2"]
    failures = [*consumer.send(_answered_by("echo-v2", host="echo-v2",
                                            response_headers={"X-Header-Set": "set"}), "echo-v2"),
                *conformance.check(case := _answered_by(
                    "echo-v2", host=f"127.0.0.1:{pod}", response_absent=("X-Header-Set",)),
                    *conformance.request(pod, case))]
    conformance.RESULTS["MeshFrontend"] = "PASS" if not failures else f"FAIL ({len(failures)})"
    assert not failures, failures


@pytest.mark.parametrize("consumer", [Setup(own=FRONTEND, parents=_FRONTEND_PARENTS)],
                         indirect=True)
def test_mesh_frontend_hostname(consumer: Consumer) -> None:
    """MeshFrontendHostname (input meshpilot's own, the one of MeshFrontend): the Service a
    call is made to picks the route, not its Host header. A call to echo-v2 saying `Host:
    echo-v1` takes echo-v2's route; a call to echo-v1 saying `Host: echo-v2` does not."""
    failures = [*consumer.send(_answered_by("echo-v2", host="echo-v1",
                                            response_headers={"X-Header-Set": "set"}), "echo-v2"),
                *consumer.send(_answered_by("echo-v1", host="echo-v2",
                                            response_absent=("X-Header-Set",)), "echo-v1")]
    conformance.RESULTS["MeshFrontendHostname"] = \
        "PASS" if not failures else f"FAIL ({len(failures)})"
    assert not failures, failures


CONSUMER_ROUTE = _route("add-header-for-my-calls", "echo-v1",
                        _set_header("set", "echo-v1", backend_namespace=MESH),
                        namespace=CONSUMER_NAMESPACE, parent_namespace=MESH)


@pytest.mark.parametrize("consumer", [Setup(own=CONSUMER_ROUTE, parents=("echo-v1",),
                                            producer=True)], indirect=True)
def test_mesh_consumer_route(consumer: Consumer) -> None:
    """MeshConsumerRoute (input meshpilot's own): a route in the consumer's namespace whose
    parent is echo-v1 of the mesh namespace shapes the consumer's calls to echo-v1 and not the
    calls of a sidecar in the mesh namespace (the producer)."""
    assert consumer.producer is not None
    failures = [*consumer.send(_answered_by("echo-v1", host=f"echo-v1.{MESH}",
                                            response_headers={"X-Header-Set": "set"})),
                *consumer.producer.send(_answered_by("echo-v1", host=f"echo-v1.{MESH}",
                                                     response_absent=("X-Header-Set",)))]
    conformance.RESULTS["MeshConsumerRoute"] = \
        "PASS" if not failures else f"FAIL ({len(failures)})"
    assert not failures, failures
