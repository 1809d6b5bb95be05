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
import pytest
import yaml
from support import eventually, served_policy

pytestmark = [pytest.mark.envoy,
              pytest.mark.skipif(conformance.available() is not None,
                                 reason=str(conformance.available()))]

MESH = "gateway-conformance-mesh"
PARENT = f"echo.{MESH}"
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

CONSUMER = """
kind: Service
name: consumer
endpoints: ["127.0.0.1:{consumer_in}"]
sidecar:
  port: {consumer_in}
  address: 127.0.0.1
  app: 127.0.0.1:{consumer_app}
  calls: [{{service: {parent}, local_port: {to_echo}}}]
---
kind: Service
name: {parent}                 # the Service the routes' parentRefs name, its pods v1 and v2
endpoints: ["127.0.0.1:{v1}", "127.0.0.1:{v2}"]
"""


def _escaped(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _base_services() -> list[str]:
    """The base mesh topology's Services (the Namespace too), as written upstream. The Service
    `echo` is the native parent here (a sidecar's Service), so its Kubernetes twin is left out."""
    return [text for text, doc in conformance._documents(
                conformance.ROOT / "base" / "mesh-manifests.yaml")
            if doc.get("kind") == "Namespace"
            or (doc.get("kind") == "Service" and doc["metadata"]["name"] in BACKENDS)]


def _endpoint_slices() -> str:
    """What the endpoints controller would write for echo-v1 and echo-v2: every port of the
    Service (by name) on its echo backend's loopback port."""
    slices = []
    for _, doc in conformance._documents(conformance.ROOT / "base" / "mesh-manifests.yaml"):
        name = doc["metadata"].get("name")
        if doc.get("kind") != "Service" or name not in BACKENDS:
            continue
        ports = ", ".join(f"{{name: {p['name']}, port: {{{name.replace('echo-', '')}}}}}"
                          for p in doc["spec"]["ports"])
        slices.append(f"""apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-pods
  namespace: {MESH}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{ports}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
""".replace("{", "{{").replace("}", "}}").replace("{{v1}}", "{v1}")
                      .replace("{{v2}}", "{v2}"))
    return "---\n".join(slices)


def _template(manifest: str) -> str:
    """The folder for one upstream mesh test; `manifest` "" for MeshBasic, which has none."""
    texts = [(conformance.ROOT / "tests" / "mesh" / f"{manifest}.yaml").read_text()] \
        if manifest else []
    return "\n---\n".join([CONSUMER, *(_escaped(t) for t in _base_services()),
                             _endpoint_slices(), *(_escaped(t) for t in texts)])


class Consumer:
    """The consumer's sidecar: requests to its local port for `echo` are the test's."""

    def __init__(self, port: int):
        self.port = port

    def send(self, case: conformance.Case) -> list[str]:
        status, headers, body = conformance.request(self.port, case)
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
    manifest: str = request.param
    apps: dict[str, Any] = {
        "v1": conformance.EchoBackend(MESH, "echo-v1"),
        "v2": conformance.EchoBackend(MESH, "echo-v2"),
        "consumer_app": conformance.EchoBackend("gateway-conformance-mesh-consumer", "consumer")}
    with served_policy(tmp_path, "mesh.yaml", _template(manifest), apps,
                       free_ports=("consumer_in", "to_echo"),
                       envoys={"consumer": "sidecar-consumer"}, parent=PARENT) as served:
        objects = served.mp.status()["policy"]["objects"]
        routes = [o for o in objects if o["kind"] == "HTTPRoute"]
        assert bool(routes) == bool(manifest) and all(o["parent"] == f"{MESH}/echo" for o in routes), routes
        for route in routes:
            assert {c["type"]: c["status"] for c in route["conditions"]} == {
                "Accepted": "True", "ResolvedRefs": "True"}, route
        client = Consumer(served.ports["to_echo"])
        eventually(lambda: conformance.request(client.port, conformance.Case(
            "/", host="echo"))[0] != 503, timeout=20, what="the consumer's sidecar to be served")
        yield client


@pytest.mark.parametrize("consumer", [m for m, _ in MESH_TESTS.values()],
                         ids=list(MESH_TESTS), indirect=True)
def test_mesh_cases(consumer: Consumer, request: pytest.FixtureRequest) -> None:
    test = request.node.callspec.id
    cases = [_mesh_case(c) for c in MESH_TESTS[test][1]]
    assert cases
    failures = {f"{c.method} {c.path} {c.headers}": problems
                for c in cases if (problems := consumer.send(c))}
    conformance.RESULTS[test] = "PASS" if not failures else f"FAIL ({len(failures)})"
    assert not failures, failures


@pytest.mark.parametrize("consumer", [""], indirect=True)
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


@pytest.mark.parametrize("consumer", ["httproute-weight"], indirect=True)
def test_mesh_httproute_weight(consumer: Consumer) -> None:
    """MeshHTTPRouteWeight: the shares of the answers are the weights', within 5 points."""
    answered = Counter(consumer.pod().removesuffix("-pod") for _ in range(WEIGHT_REQUESTS))
    within = set(answered) == set(_weights()) and all(
        abs(answered[backend] / WEIGHT_REQUESTS - share) <= WEIGHT_TOLERANCE
        for backend, share in _weights().items())
    conformance.RESULTS["MeshHTTPRouteWeight"] = "PASS" if within else "FAIL (1)"
    assert within, (answered, _weights())
