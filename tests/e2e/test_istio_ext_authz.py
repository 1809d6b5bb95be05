"""istio.io's External Authorization task (CUSTOM), and AUDIT, through real Envoys.

The mesh of the task on loopback: httpbin (namespace foo) behind a real sidecar, a `sleep`
client with a sidecar of its own (outbound only), and the sample external authorizer
(Istio's `samples/extauthz`: a request carrying `x-ext-authz: allow` is allowed, anything
else denied with 403 and "denied by ext_authz for not found header `x-ext-authz: allow` in
the request") as a workload without a sidecar, serving HTTP (port 8000 of its ServiceEntry)
and gRPC (9000). The two providers are the task's, in the task's `istio` ConfigMap of
istio-system. An ingress gateway Envoy carries the view of the Istio Gateway's selector.

Each step writes the task's AuthorizationPolicy and checks what istio.io says: only the
requests its rules match (`/headers`) are sent to the authorizer, which allows or denies
them; other paths pass unchecked. Then the same at the ingress gateway, and AUDIT's marks
(Envoy's RBAC LOG action) counted on the sidecar.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3.http_status_pb2 import HttpStatus, StatusCode
from google.rpc import code_pb2, status_pb2
from support import LoopbackHttpServer, eventually, http_get, served_policy, write_atomically

from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.demo.server import LoopThread

pytestmark = pytest.mark.envoy

DENIED = b"denied by ext_authz for not found header `x-ext-authz: allow` in the request"

MESH = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin, namespace: foo}}
spec:
  hosts: [httpbin.foo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: httpbin}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: httpbin-v1
  namespace: foo
  annotations: {{meshpilot.io/app: "127.0.0.1:{httpbin}", meshpilot.io/outbound-port: "{out_httpbin}"}}
spec:
  address: 127.0.0.1
  ports: {{http: {in_httpbin}}}
  labels: {{app: httpbin, version: v1, security.istio.io/tlsMode: istio}}
  serviceAccount: httpbin
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: sleep
  namespace: foo
  annotations: {{meshpilot.io/outbound-port: "{out_sleep}"}}
spec:
  address: 127.0.0.1
  labels: {{app: sleep, security.istio.io/tlsMode: istio}}
  serviceAccount: sleep
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext-authz, namespace: foo}}
spec:
  hosts: [ext-authz.foo.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {{number: 8000, name: http, protocol: HTTP}}
  - {{number: 9000, name: grpc, protocol: GRPC}}
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {authz_http}, grpc: {authz_grpc}}}
    labels: {{app: ext-authz}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: httpbin-gateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: {ingress}, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin, namespace: foo}}
spec:
  hosts: ["*"]
  gateways: [istio-system/httpbin-gateway]
  http: [{{route: [{{destination: {{host: httpbin.foo.svc.cluster.local, port: {{number: 8000}}}}}}]}}]
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: istio
  namespace: istio-system
data:
  mesh: |-
    # Add the following content to define the external authorizers.
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

# The task's policy, word for word but for the provider's name it says to choose.
WORKLOAD_POLICY = """
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
    # The provider name must match the extension provider defined in the mesh config.
    # You can also replace this with sample-ext-authz-http to test the other external authorizer.
    name: PROVIDER
  rules:
  # The rules specify when to trigger the external authorizer.
  - to:
    - operation:
        paths: ["/headers"]
"""

GATEWAY_POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ext-authz-ingress
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  action: CUSTOM
  provider:
    name: sample-ext-authz-http
  rules:
  - to:
    - operation:
        paths: ["/headers"]
"""

AUDIT_POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: audit-posts
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: AUDIT
  rules:
  - to:
    - operation:
        methods: ["POST"]
"""

DENY_DELETE = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-delete
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["DELETE"]
"""


# ---- Istio's sample external authorizer ----------------------------------------------------


@dataclass
class Checks:
    """What the authorizer was asked, in order: (protocol, path, allowed)."""

    seen: list[tuple[str, str, bool]] = field(default_factory=list)


class HttpAuthorizer(LoopbackHttpServer):
    """The sample's HTTP side: 200 with `x-ext-authz-check-result: allowed` when the check
    carries `x-ext-authz: allow`, else 403, `denied`, and its message."""

    def __init__(self, checks: Checks) -> None:
        class Handler(LoopbackHttpServer.Handler):
            def _answer(self) -> None:
                allowed = self.headers.get("x-ext-authz") == "allow"
                checks.seen.append(("http", self.path, allowed))
                body = b"" if allowed else DENIED
                self.send_response(200 if allowed else 403)
                self.send_header("x-ext-authz-check-result", "allowed" if allowed else "denied")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = do_HEAD = _answer

        super().__init__(Handler)


class GrpcAuthorizer:
    """The sample's gRPC side: OK with `x-ext-authz-check-result: allowed` added to the
    request, or PERMISSION_DENIED with a 403, `denied` and its message."""

    def __init__(self, checks: Checks) -> None:
        self.checks = checks
        self._loop = LoopThread("istio-grpc-authz")
        self._server: grpc.aio.Server | None = None

    def start(self) -> int:
        self._loop.start()
        return self._loop.run(self._serve(), timeout=10)

    async def _serve(self) -> int:
        checks = self.checks

        class Servicer(external_auth_pb2_grpc.AuthorizationServicer):
            async def Check(self, request: Any, context: Any) -> Any:
                http = request.attributes.request.http
                allowed = http.headers.get("x-ext-authz") == "allow"
                checks.seen.append(("grpc", http.path, allowed))
                result = HeaderValueOption(header=HeaderValue(
                    key="x-ext-authz-check-result", value="allowed" if allowed else "denied"))
                if allowed:
                    return external_auth_pb2.CheckResponse(
                        status=status_pb2.Status(code=code_pb2.OK),
                        ok_response=external_auth_pb2.OkHttpResponse(headers=[result]))
                return external_auth_pb2.CheckResponse(
                    status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED),
                    denied_response=external_auth_pb2.DeniedHttpResponse(
                        status=HttpStatus(code=StatusCode.Forbidden), headers=[result],
                        body=DENIED.decode()))

        self._server = grpc.aio.server()
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Servicer(), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._loop.run(self._server.stop(None), timeout=5)
        self._loop.stop()


# ---- the environment ----------------------------------------------------------------------------


class Task:
    def __init__(self, served: Any, checks: Checks, httpbin: EchoServer):
        self.served, self.checks, self.httpbin = served, checks, httpbin
        self.folder: Path = served.policy
        self.ports = served.ports

    def apply(self, *documents: str) -> None:
        write_atomically(self.folder / "policy.yaml", "\n---\n".join(documents))

    def sleep(self, path: str, method: str = "GET", **headers: str
              ) -> tuple[int, dict[str, str], bytes]:
        """`sleep`'s `curl http://httpbin.foo:8000PATH`, through its sidecar."""
        sent = {"Host": "httpbin.foo:8000", **{k.replace("_", "-"): v for k, v in headers.items()}}
        return http_get(f"http://127.0.0.1:{self.ports['out_sleep']}{path}", sent,
                        method=method, timeout=10)

    def ingress(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        sent = {k.replace("_", "-"): v for k, v in headers.items()}
        return http_get(f"http://127.0.0.1:{self.ports['ingress']}{path}", sent, timeout=10)

    def stat(self, name: str) -> int:
        return self.served.envoys["httpbin-v1.foo"].stats().get(name, 0)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Task]:
    work = tmp_path_factory.mktemp("istio-ext-authz")
    checks = Checks()
    httpbin = EchoServer("httpbin")
    servers = {"httpbin": httpbin, "authz_http": HttpAuthorizer(checks),
               "authz_grpc": GrpcAuthorizer(checks)}
    views = {"httpbin-v1.foo": "httpbin", "sleep.foo": "sleep",
             "istio=ingressgateway": "ingressgateway"}
    with served_policy(work, "mesh.yaml", MESH, servers,
                       free_ports=("in_httpbin", "out_httpbin", "out_sleep", "ingress"),
                       envoys=views, extra_args=("--insecure-xds",)) as served:
        environment = Task(served, checks, httpbin)
        eventually(lambda: environment.sleep("/ip")[0] == 200, timeout=60,
                   what="sleep's sidecar to reach httpbin's")
        eventually(lambda: environment.ingress("/ip")[0] == 200, timeout=60,
                   what="the ingress gateway to reach httpbin")
        yield environment


def _checked(task: Task, step: Any) -> list[tuple[str, str, bool]]:
    before = len(task.checks.seen)
    step()
    return task.checks.seen[before:]


@pytest.mark.parametrize("provider", ["sample-ext-authz-grpc", "sample-ext-authz-http"])
def test_the_sidecar_asks_the_provider_about_the_paths_the_rules_name(task: Task,
                                                                       provider: str) -> None:
    protocol = provider.rsplit("-", 1)[1]
    task.apply(WORKLOAD_POLICY.replace("PROVIDER", provider))
    eventually(lambda: task.sleep("/headers", x_ext_authz="deny")[0] == 403
               and task.checks.seen[-1][0] == protocol, timeout=30,
               what=f"the {provider} policy to refuse a denied request")
    # istio.io: "Verify a request to path /headers with header x-ext-authz: deny is denied"
    seen: list[Any] = []
    denied = _checked(task, lambda: seen.append(task.sleep("/headers", x_ext_authz="deny")))
    status, headers, body = seen[0]
    assert (status, body) == (403, DENIED)
    assert headers.get("x-ext-authz-check-result") == "denied"
    assert denied == [(protocol, "/headers", False)]
    # "... with header x-ext-authz: allow is allowed"
    seen.clear()
    allowed = _checked(task, lambda: seen.append(task.sleep("/headers", x_ext_authz="allow")))
    status, _, body = seen[0]
    assert status == 200 and json.loads(body)["backend"] == "httpbin"
    assert allowed == [(protocol, "/headers", True)]
    # "... a request to path /ip is allowed and does not trigger the external authorization"
    seen.clear()
    unchecked = _checked(task, lambda: seen.append(task.sleep("/ip", x_ext_authz="deny")))
    assert seen[0][0] == 200 and unchecked == []


def test_custom_is_asked_before_deny(task: Task) -> None:
    task.apply(WORKLOAD_POLICY.replace("PROVIDER", "sample-ext-authz-http"), DENY_DELETE)
    eventually(lambda: task.sleep("/headers", "DELETE", x_ext_authz="allow")[0] == 403,
               timeout=30, what="DELETE to be denied")
    # CUSTOM first: the authorizer is asked, allows, and DENY then refuses
    checked = _checked(task, lambda: task.sleep("/headers", "DELETE", x_ext_authz="allow"))
    assert checked == [("http", "/headers", True)]
    # the authorizer's denial comes first: its answer, not DENY's
    status, _, body = task.sleep("/headers", "DELETE", x_ext_authz="deny")
    assert (status, body) == (403, DENIED)
    assert task.sleep("/ip", "DELETE")[0] == 403  # DENY alone (no CUSTOM rule for /ip)
    assert task.sleep("/ip")[0] == 200


def test_the_ingress_gateway_asks_the_provider(task: Task) -> None:
    task.apply(GATEWAY_POLICY)
    # First the workload's sidecar without its policy (an earlier test's), whose 403 would
    # pass for the gateway's: the two views are pushed apart, in either order.
    eventually(lambda: task.sleep("/headers", x_ext_authz="deny")[0] == 200, timeout=30,
               what="httpbin's sidecar to let a denied request through")
    eventually(lambda: task.ingress("/headers", x_ext_authz="deny")[0] == 403, timeout=30,
               what="the ingress gateway to refuse a denied request")
    seen: list[Any] = []
    checked = _checked(task, lambda: seen.append(task.ingress("/headers", x_ext_authz="deny")))
    assert (seen[0][0], seen[0][2]) == (403, DENIED)
    assert checked == [("http", "/headers", False)]
    assert task.ingress("/headers", x_ext_authz="allow")[0] == 200
    assert _checked(task, lambda: task.ingress("/ip")) == []
    # the workload's sidecar checks nothing now: its policy is gone (its inbound listener was
    # replaced, without the provider's filter: sleep's open connection drains from the old)
    eventually(lambda: _checked(task, lambda: task.sleep("/headers", x_ext_authz="deny")) == [],
               timeout=30, what="httpbin's sidecar to stop asking")


def test_audit_marks_matching_requests_and_refuses_none(task: Task) -> None:
    task.apply(AUDIT_POLICY, DENY_DELETE)
    eventually(lambda: task.sleep("/ip", "DELETE")[0] == 403, timeout=30,
               what="the AUDIT and DENY policies to apply")
    assert task.sleep("/post", "POST")[0] == 200  # marked, not refused
    assert task.sleep("/get")[0] == 200
    # What the sidecar Envoy holds: its audit filter, on, with Istio's LOG action (the mark is
    # `access_log_hint` in the RBAC filter's dynamic metadata, for an access log to read).
    dump = task.served.envoys["httpbin-v1.foo"].config_dump(resource="dynamic_route_configs")
    (vhost,) = next(c["route_config"]["virtual_hosts"] for c in dump["configs"]
                    if c["route_config"]["name"] == "inbound/httpbin-v1.foo")
    rules = vhost["typed_per_filter_config"]["envoy.filters.http.rbac/audit"]["rbac"]["rules"]
    assert rules["action"] == "LOG"
    decided = "http.inbound/httpbin-v1.foo.rbac.allowed"

    def decisions() -> int:
        before = task.stat(decided)
        assert task.sleep("/post", "POST")[0] == 200
        return eventually(lambda: task.stat(decided) - before, what="the RBAC decisions")

    # the audit filter and the DENY filter each let it through (once any connection opened
    # before the edit has drained from the listener it replaced)
    eventually(lambda: decisions() == 2, timeout=30, what="two RBAC decisions per request")
