"""The upstream Gateway API conformance tests, through meshpilot and a real Envoy.

For each upstream test (`gatewayapi_conformance.CASES`): the base manifests and the test's own
manifest, as they are, in the policy folder of one `meshpilot serve`; an Envoy bootstrapped
for the test's Gateway (`--node-cluster NS/NAME`); every request of the upstream test sent, and
the response compared as upstream does. The table of results is printed at the end
(`-s` shows it); docs/gateway-api.md keeps the conformance report.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gatewayapi_conformance as conformance
import pytest
import yaml
from grpc_conformance_echo import GrpcEchoBackend
from h2c_ws_echo import websocket_round_trip
from support import MeshpilotProcess, eventually, serving, write_atomically
from tls_material import CA

from meshpilot.base.netutil import free_port
from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

_WHY_NOT = conformance.available()
RESULTS = conformance.RESULTS


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if _WHY_NOT is not None:
        print(f"skipping the Gateway API conformance tests: {_WHY_NOT}")
        pytest.skip(_WHY_NOT)
    work = tmp_path_factory.mktemp("gatewayapi")
    ca = CA()
    pair = ca.issue("*.example.com", "example.com", "*.wildcard.org",
                          "second-example.org", "example.org", "https-listener.org",
                          "unknown-example.org",  # an SNI of the misdirected-requests test
                          "tls.example.com", "terminate.example.com")  # TLS Terminate
    # The base's TLS pods serve the suite's tls-checks-certificate, signed by the CA of the
    # ConfigMap tls-checks-ca-certificate (here: the same CA as the listeners').
    backend_tls = ca.issue(*conformance.BACKEND_CERT_NAMES, uris=conformance.BACKEND_CERT_URIS
                           ).write(work / "backend-tls", "tls-checks-certificate")
    backends = {(namespace, name): conformance.EchoBackend(
                    namespace, name,
                    tls=backend_tls if (namespace, name) in conformance.TLS_BACKENDS else None)
                for namespace, name, _ in conformance.base_services()
                if (namespace, name) != conformance.TCP_BACKEND
                and (namespace, name) not in conformance.grpc_services()}
    servers: dict[str, Any] = {f"{ns}/{name}": server for (ns, name), server in backends.items()}
    for namespace, name in conformance.grpc_services():  # TLS too: the tls-checks-certificate
        servers[f"{namespace}/{name}"] = GrpcEchoBackend(namespace, name, tls=backend_tls)
    tcp_ns, tcp_name = conformance.TCP_BACKEND
    for port_name, speaks_tls in conformance.TCP_PORTS.items():
        servers[f"{tcp_ns}/{tcp_name}#{port_name}"] = conformance.TcpEchoBackend(
            tcp_ns, tcp_name, tls=backend_tls if speaks_tls else None)
    # The HTTP echo pods' prior-knowledge HTTP/2 ports (echo-basic's 3001).
    for namespace, name, port_name in conformance.h2c_ports():
        servers[f"h2c#{namespace}/{name}#{port_name}"] = conformance.H2cEchoBackend(
            namespace, name)
    # The tests' own TCP echo Deployments, one server each.
    deployments = conformance.test_deployments([t.manifest for t in conformance.CASES.values()])
    for index, (namespace, name, _) in enumerate(deployments):
        servers[f"deployment#{index}"] = conformance.TcpEchoBackend(namespace, name)
    with serving(servers) as bound:
        ports = {port: free_port() for port in conformance.LISTENER_PORTS}
        policy = work / "policy"
        pods: dict[tuple[str, str], int | dict[str, int]] = {}
        pod_ports = {(deployments[int(key.partition("#")[2])][0],
                      tuple(sorted(deployments[int(key.partition("#")[2])][2].items()))): port
                     for key, port in bound.items() if key.startswith("deployment#")}
        for key, port in bound.items():
            if key.startswith(("deployment#", "h2c#")):
                continue
            service, _, port_name = key.partition("#")
            namespace, name = service.split("/", 1)
            if port_name:
                pods.setdefault((namespace, name), {})[port_name] = port  # type: ignore[index]
            else:
                pods[(namespace, name)] = port
        for namespace, name, service_ports in conformance.base_services():
            h2c = {port_name: port for key, port in bound.items()
                   if key.startswith(f"h2c#{namespace}/{name}#")
                   for port_name in (key.rpartition("#")[2],)}
            plain = pods.get((namespace, name))
            if h2c and isinstance(plain, int):  # one pod port per Service port, by name
                pods[(namespace, name)] = {p.get("name", ""): h2c.get(p.get("name", ""), plain)
                                           for p in service_ports}
        # The frontend validation tests' client certificates, each of its own CA.
        client_cas = {secret: CA(secret) for secret in conformance.CLIENT_CAS}
        client_certs = {secret: client_ca.issue("client.example.org").write(
                            work / "client-certs", secret)
                        for secret, client_ca in client_cas.items()}
        conformance.write_folder(policy, [], pods, ports, (pair.cert_pem, pair.key_pem), cas={
            "tls-checks-ca-certificate": ca.pem, "mismatch-ca-certificate": CA("other").pem,
            **{conformance.CLIENT_CAS[secret]: client_ca.pem
               for secret, client_ca in client_cas.items()}})
        mp = MeshpilotProcess(policy, work).start()
        try:
            yield {"mp": mp, "policy": policy, "ports": ports, "work": work,
                   "backends": backends, "ca": ca.pem, "pods": pods,
                   "deployments": pod_ports, "client_certs": client_certs,
                   "tls_ports": {(ns, name): servers[f"{ns}/{name}"].tls_port
                                 for ns, name in conformance.grpc_services()}}
        finally:
            mp.stop()
            print(mp.log_tail(20))
    _print_table()
    conformance.write_report()


def _print_table() -> None:
    print("\nGateway API conformance (upstream tests through a real Envoy):")
    for name in conformance.CASES:
        print(f"  {name:52} {RESULTS.get(name, 'not run')}")


def _serve_test(suite: dict[str, Any], manifest: str) -> None:
    """The policy folder holds the base and this test's manifest; wait until it is applied."""
    mp: MeshpilotProcess = suite["mp"]
    policy: Path = suite["policy"]
    for old in policy.glob("*.yaml"):
        if old.name not in ("base.yaml", "cluster.yaml"):
            old.unlink()
    before = mp.status()["policy"]["loads"]
    pods = conformance.test_pods(manifest, suite["pods"], suite["deployments"],
                                 suite["tls_ports"])
    # Each file appears whole (a rename): a load never reads one half written.
    if pods:  # the endpoints of the test's own Services
        write_atomically(policy / f"{manifest}.pods.yaml", pods)
    write_atomically(policy / f"{manifest}.yaml", conformance.test_manifest(manifest))
    eventually(lambda: mp.status()["policy"]["loads"] > before and
               f"{manifest}.yaml" in mp.status()["policy"]["applied_files"],
               what=f"meshpilot to apply {manifest}")


@pytest.mark.parametrize("name", list(conformance.CASES))
def test_upstream(suite: dict[str, Any], name: str) -> None:
    test = conformance.CASES[name]
    _serve_test(suite, test.manifest)
    mp: MeshpilotProcess = suite["mp"]
    status = mp.status()["policy"]
    assert status["ok"], status["errors"]
    # Each route of the test's manifest is accepted by its Gateway (as upstream asserts first).
    routes = {o["name"].split("/")[1]: {c["type"]: c for c in o["conditions"]}
              for o in status["objects"]
              if o["kind"] in ("HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute")
              and (o["parent"] == test.gateway or o["parent"].startswith(f"{test.gateway}/"))}
    if test.cases or test.grpc_cases or test.websocket:  # a traffic test: its routes are accepted (or refused as upstream says)
        assert routes
        for route, conditions in routes.items():
            reason = test.not_accepted.get(route)
            accepted = conditions["Accepted"]
            if reason is None:
                assert accepted["status"] == "True", (route, conditions)
            else:
                assert (accepted["status"], accepted["reason"]) == ("False", reason), \
                    conditions
    failures: list[str] = []
    for index, part in enumerate((test, *test.more)):
        failures.extend(conformance.check_statuses(part, status["objects"]))
        if part.cases or part.tls_cases or part.tcp_cases or part.grpc_cases or part.websocket:
            failures.extend(_requests(suite, f"{name}-{index}", part))
    RESULTS[name] = "PASS" if not failures else f"FAIL ({len(failures)})"
    assert not failures, "\n".join(failures)


def _requests(suite: dict[str, Any], name: str, test: conformance.Test) -> list[str]:
    """Every request of `test` through a new Envoy of its Gateway: what went wrong."""
    mp: MeshpilotProcess = suite["mp"]
    envoy = EnvoyProcess(mp.bootstrap(f"{name}-1", test.gateway), suite["work"] / name,
                         name=name)
    envoy.start()
    try:
        envoy.wait_ready(30)
        port = suite["ports"][test.listener_port]
        failures: list[str] = []
        for index, tls_case in enumerate(test.tls_cases):
            deadline = time.monotonic() + 10
            while True:  # eventually consistent, as upstream
                problems = conformance.tls_connect(port, tls_case, suite["ca"])
                if not problems or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            failures.extend(f"{test.gateway}:{test.listener_port} TLS case {index} SNI "
                            f"{tls_case.server_name}: {p}" for p in problems)
        for index, backend in enumerate(test.tcp_cases):
            deadline = time.monotonic() + 10
            while True:  # eventually consistent, as upstream
                pod = conformance.tcp_pod(port)
                if (pod is None if backend is None else
                        pod is not None and pod.startswith(f"{backend}-")) \
                        or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            if backend is None and pod is not None:
                failures.append(f"TCP case {index}: answered by {pod}, expected refused")
            elif backend is not None and (pod is None or not pod.startswith(f"{backend}-")):
                failures.append(f"TCP case {index}: answered by {pod}, expected {backend}")
        if test.tcp_weights:
            failures.extend(_tcp_weights(port, test.tcp_weights))
        for index, grpc_case in enumerate(test.grpc_cases):
            deadline = time.monotonic() + 10
            while True:  # eventually consistent, as upstream
                problems = conformance.grpc_check(port, grpc_case)
                if not problems or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            failures.extend(f"{test.gateway}:{test.listener_port} gRPC case {index} "
                            f"{grpc_case.method} {grpc_case.authority or ''} "
                            f"{grpc_case.metadata}: {p}" for p in problems)
        if test.grpc_weights:
            failures.extend(_grpc_weights(port, test.grpc_weights))
        for index, case in enumerate(test.cases):
            # Eventually consistent, as upstream: the Envoy may still be taking its routes.
            deadline = time.monotonic() + 10
            while True:
                try:
                    problems = conformance.check(case, *conformance.request(
                        port, case, suite["ca"] if test.tls else None, test.listener_port,
                        suite["client_certs"]))
                    problems += _mirrored(suite["backends"], case)
                except OSError as error:  # a refused client certificate is a failure expected
                    problems = [] if case.fails and case.client_cert else [f"{error}"]
                if not problems or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            failures.extend(f"{test.gateway}:{test.listener_port} case {index} {case.method} "
                            f"{case.host}{case.path}: {p}" for p in problems)
        if test.websocket is not None:
            deadline = time.monotonic() + 10
            while True:  # eventually consistent, as upstream
                problems = websocket_round_trip(f"ws://127.0.0.1:{port}{test.websocket}",
                                                f"ws://gateway/{name}")
                if not problems or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            failures.extend(f"{test.gateway}:{test.listener_port} websocket: {p}"
                            for p in problems)
        if test.manifest == "httproute-weight":
            failures.extend(_weights(port))
        if test.manifest == "httproute-request-header-modifier-backend-weights":
            failures.extend(_backend_headers(port))
        if test.manifest == "httproute-request-percentage-mirror":
            failures.extend(_mirror_shares(port, suite["backends"]))
        return failures
    finally:
        envoy.stop()


def _mirrored(backends: dict[tuple[str, str], conformance.EchoBackend],
              case: conformance.Case) -> list[str]:
    """Each mirror backend got the copy (Envoy sends it alongside, so give it a moment)."""
    problems = []
    for service in case.mirrored_to:
        seen = backends[(case.namespace, service)].seen
        try:
            eventually(lambda seen=seen: case.path in seen, timeout=5,  # type: ignore[misc]
                       what=f"{service} to see the copy")
        except AssertionError:
            problems.append(f"{service} was not sent a copy of {case.path}")
        else:
            seen.remove(case.path)
    return problems


def _backend_headers(port: int) -> list[str]:
    """Each of 100 requests carries the Backend header its backendRef's filter set, and went
    to that backend (upstream's check)."""
    import json
    seen: set[str] = set()
    for _ in range(100):
        status, _, body = conformance.request(port, conformance.Case("/"))
        if status != 200:
            return [f"status {status}"]
        echoed = json.loads(body)
        values = echoed["headers"].get("Backend", [])
        if len(values) != 1 or not echoed["pod"].startswith(values[0]):
            return [f"Backend header {values} on a request served by {echoed['pod']}"]
        seen.add(values[0])
    return [] if len(seen) == 2 else [f"only {seen} answered 100 requests weighted 10/10"]


def _mirror_shares(port: int, backends: dict[tuple[str, str], conformance.EchoBackend],
                   requests: int = 500) -> list[str]:
    """The share of requests copied to the mirror, within 3 standard deviations of the
    percentage written (upstream's tolerance), over 500 requests per path."""
    mirror = backends[(conformance.INFRA, conformance.V2)]
    problems = []
    for path, percent in conformance.PERCENTAGE_MIRRORS:
        mirror.seen.clear()
        for _ in range(requests):
            status = conformance.request(port, conformance.Case(path))[0]
            if status != 200:
                return [f"{path}: status {status}"]
        counted = -1
        for _ in range(50):  # the copies are sent alongside: wait until no more arrive
            time.sleep(0.1)
            now = mirror.seen.count(path)
            if now == counted:
                break
            counted = now
        p = percent / 100
        margin = 3 * (requests * p * (1 - p)) ** 0.5
        if abs(counted - requests * p) > margin:
            problems.append(f"{path}: {counted} of {requests} mirrored, expected "
                            f"{requests * p:.0f} +- {margin:.0f}")
    return problems


def _tcp_weights(port: int, weights: dict[str, float], connections: int = 200) -> list[str]:
    """Each backend's share of `connections` within 10 points of its weight's (upstream's
    weight.TestWeightedDistribution, over fewer connections); weight 0: none at all."""
    counts: dict[str, int] = {}
    for _ in range(connections):
        pod = conformance.tcp_pod(port)
        if pod is None:
            return ["a connection was refused"]
        counts[pod] = counts.get(pod, 0) + 1
    problems = []
    for backend, share in weights.items():
        got = counts.get(f"{backend}-pod", 0) / connections
        if (share == 0 and got) or abs(got - share) > 0.10:
            problems.append(f"{backend} got {got:.0%}, expected about {share:.0%}")
    return problems


def _grpc_weights(port: int, weights: dict[str, float], calls: int = 200) -> list[str]:
    """Each backend's share of `calls` Echo calls (with upstream's entropy header) within 10
    points of its weight's (upstream's TestWeightedDistribution over fewer calls); weight 0:
    none at all."""
    counts: dict[str, int] = {}
    for _ in range(calls):
        pod = conformance.grpc_pod(port)
        if pod is None:
            return ["a call failed"]
        counts[pod] = counts.get(pod, 0) + 1
    problems = []
    for backend, share in weights.items():
        got = counts.get(f"{backend}-pod", 0) / calls
        if (share == 0 and got) or abs(got - share) > 0.10:
            problems.append(f"{backend} got {got:.0%}, expected about {share:.0%}")
    return problems


def _weights(port: int) -> list[str]:
    """httproute-weight: v1, v2, v3 weighted 70, 30, 0; upstream allows a 5 % deviation over
    500 requests... here the shares over 300 requests must be within 10 points."""
    import json
    counts: dict[str, int] = {}
    for _ in range(300):
        status, _, body = conformance.request(port, conformance.Case("/"))
        if status != 200:
            return [f"status {status}"]
        pod = json.loads(body)["pod"]
        counts[pod] = counts.get(pod, 0) + 1
    share = {pod: 100 * n / 300 for pod, n in counts.items()}
    problems = []
    for pod, want in (("infra-backend-v1-pod", 70), ("infra-backend-v2-pod", 30)):
        if abs(share.get(pod, 0) - want) > 10:
            problems.append(f"{pod} got {share.get(pod, 0):.0f} %, expected about {want} %")
    if "infra-backend-v3-pod" in share:
        problems.append("infra-backend-v3 (weight 0) was sent requests")
    return problems


def _meshpilot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshpilot", *args], capture_output=True,
                          text=True, timeout=60)


def test_bootstrap_and_status_as_a_user_runs_them(suite: dict[str, Any]) -> None:
    """`meshpilot bootstrap --node-cluster NS/NAME` makes an Envoy of that Gateway (with its
    node token), and `meshpilot status` lists Gateways, listeners and routes with conditions
    and where each was written."""
    _serve_test(suite, "httproute-invalid-nonexistent-backendref")
    mp: MeshpilotProcess = suite["mp"]
    view = f"{conformance.INFRA}/same-namespace"
    made = _meshpilot("bootstrap", "--node-id", "user-1", "--node-cluster", view,
                      "--xds-address", f"127.0.0.1:{mp.xds_port}",
                      "--admin-address", f"127.0.0.1:{free_port()}",
                      "--state-dir", str(mp.state_dir))
    assert made.returncode == 0, made.stderr
    envoy = EnvoyProcess(yaml.safe_load(made.stdout), suite["work"] / "user", name="user")
    envoy.start()
    try:
        envoy.wait_ready(30)
        port = suite["ports"][80]
        eventually(lambda: conformance.request(port, conformance.Case("/"))[0] == 500,
                   what="the rule with a missing backend to answer 500")
    finally:
        envoy.stop()
    shown = _meshpilot("status", "--admin-address", f"127.0.0.1:{mp.admin_port}",
                       "--state-dir", str(mp.state_dir))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    route = next(line for line in lines if line.startswith("HTTPRoute")
                 and "invalid-nonexistent-backend-ref" in line)
    assert "Accepted=True" in route and "ResolvedRefs=False(BackendNotFound)" in route
    assert "(httproute-invalid-nonexistent-backendref.yaml:" in route
    assert any(line.startswith("Listener") and f"{view}/http " in line and "attachedRoutes=1"
               in line for line in lines), shown.stdout
    assert any(line.startswith("Gateway ") and view in line and "(base.yaml:" in line
               for line in lines), shown.stdout
    assert "ResolvedRefs: no Service gateway-conformance-infra/nonexistent" in shown.stdout


def test_a_malformed_document_is_refused_and_the_last_good_config_keeps_serving(
        suite: dict[str, Any]) -> None:
    _serve_test(suite, "httproute-simple-same-namespace")
    mp: MeshpilotProcess = suite["mp"]
    envoy = EnvoyProcess(mp.bootstrap("last-good-1", f"{conformance.INFRA}/same-namespace"),
                         suite["work"] / "last-good", name="last-good")
    envoy.start()
    try:
        envoy.wait_ready(30)
        port = suite["ports"][80]
        eventually(lambda: conformance.request(port, conformance.Case("/"))[0] == 200,
                   what="the route to serve")
        broken = suite["policy"] / "httproute-simple-same-namespace.yaml"
        before = mp.status()["policy"]["rejected"]
        broken.write_text(broken.read_text().replace("port: 8080", "port: eighty"))
        errors = eventually(lambda: mp.status()["policy"]["rejected"] > before
                            and mp.status()["policy"]["errors"], what="the edit to be refused")
        assert any(e.startswith("httproute-simple-same-namespace.yaml:") and
                   "spec.rules[0].backendRefs[0].port: expected an integer" in e
                   for e in errors), errors
        assert conformance.request(port, conformance.Case("/"))[0] == 200
    finally:
        envoy.stop()


PARTLY_INVALID = f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: partly-invalid, namespace: {conformance.INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules:
  - backendRefs:
    - {{name: infra-backend-v1, port: 8080, weight: 1}}
    - {{name: not-there, port: 8080, weight: 1}}
"""


def test_an_invalid_backend_beside_a_valid_one_answers_its_share_with_500(
        suite: dict[str, Any]) -> None:
    """The spec's partial validity inside one rule: requests that would go to the backend that
    does not resolve are answered 500, the others are served; the Envoy accepts the routes."""
    mp: MeshpilotProcess = suite["mp"]
    policy: Path = suite["policy"]
    _serve_test(suite, "httproute-simple-same-namespace")
    (policy / "httproute-simple-same-namespace.yaml").unlink()
    before = mp.status()["policy"]["loads"]
    (policy / "partly-invalid.yaml").write_text(PARTLY_INVALID)
    eventually(lambda: mp.status()["policy"]["loads"] > before
               and "partly-invalid.yaml" in mp.status()["policy"]["applied_files"],
               what="the route to be applied")
    envoy = EnvoyProcess(mp.bootstrap("partly-1", f"{conformance.INFRA}/same-namespace"),
                         suite["work"] / "partly", name="partly")
    envoy.start()
    try:
        envoy.wait_ready(30)
        port = suite["ports"][80]
        eventually(lambda: conformance.request(port, conformance.Case("/"))[0] in (200, 500),
                   what="the route to serve")
        statuses = [conformance.request(port, conformance.Case("/"))[0] for _ in range(200)]
        assert set(statuses) == {200, 500}, set(statuses)
        assert 60 <= statuses.count(500) <= 140, statuses.count(500)
        eventually(lambda: all(t["status"] == "SYNCED" for p in mp.proxies()
                               if p["node_id"] == "partly-1" for t in p["types"].values()),
                   what="the Envoy to ACK every type")
    finally:
        envoy.stop()
        (policy / "partly-invalid.yaml").unlink()


# Upstream tests whose manifests `meshpilot convert --to native` converts: the converted
# native folder, served by a meshpilot of its own, answers their requests as the original.
CONVERTED = ("HTTPRouteMatching", "HTTPRouteRequestHeaderModifierBackendWeights",
             "HTTPRouteRedirectPath", "GRPCRouteHeaderMatching", "GRPCRouteRequestHeaderModifier")


@pytest.mark.parametrize("name", CONVERTED)
def test_a_folder_converted_to_native_answers_as_the_original(suite: dict[str, Any],
                                                              name: str) -> None:
    """The base, the test's manifest and the cluster's files, converted as a user would
    (`meshpilot convert --to native DIR --gateway NS/NAME -o OUT`), served from OUT by another
    meshpilot, and the upstream test's requests sent through an Envoy of the converted
    Gateway (`--node-cluster NS.NAME`): every expectation holds as it does for the original."""
    test = conformance.CASES[name]
    _serve_test(suite, test.manifest)
    work: Path = suite["work"] / f"converted-{name}"
    output = work / "native"
    done = _meshpilot("convert", "--to", "native", str(suite["policy"]),
                      "--gateway", test.gateway, "-o", str(output))
    assert done.returncode == 0, done.stderr
    assert f"renamed: {test.gateway} -> {test.gateway.replace('/', '.')}" in done.stderr
    native = MeshpilotProcess(output, work).start()
    try:
        view = test.gateway.replace("/", ".")
        failures = _requests({**suite, "mp": native, "work": work}, f"native-{name}",
                             dataclasses.replace(test, gateway=view))
    finally:
        native.stop()
    assert not failures, "\n".join(failures)
