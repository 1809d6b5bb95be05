"""The upstream Gateway API conformance suite's inputs, made runnable here.

`../shared/conformance/gateway-api-conformance/` holds the upstream manifests (kubernetes-sigs/
gateway-api, conformance/base and conformance/tests) unchanged. A conformance folder is written
from them as they are, plus what a cluster would add: a GatewayClass `meshpilot` (the suite's
{GATEWAY_CLASS_NAME}) whose parameters map the listeners' ports to free loopback ports, the
suite's TLS Secret, and one EndpointSlice per base Service pointing at an echo backend on
loopback. The base's Deployments (pods) are the echo backends, so they are left out.

`CASES` transcribes the requests and expectations of the upstream tests (conformance/tests/*.go
at the same commit) into data; `check` compares a response with a case as the upstream
`http.CompareRoundTrip` does (backend and namespace from the echo reply, the request the backend
saw, redirects, response headers).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import socket
import socketserver
import ssl
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPSConnection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc_conformance_echo as grpc_echo
import yaml
from h2c_ws_echo import H2cEchoServer, h2c_get, is_websocket_upgrade, websocket_echo
from support import LoopbackHttpServer, QuietHandler


def _root() -> Path:
    """`shared/conformance/gateway-api-conformance` next to the repository (as CI clones it),
    or next to a folder above it (a git worktree kept below the main checkout's parent)."""
    repository = Path(__file__).resolve().parents[1]
    for folder in (repository, *repository.parents):
        candidate = folder.parent / "shared" / "conformance" / "gateway-api-conformance"
        if candidate.is_dir():
            return candidate
    return repository.parent / "shared" / "conformance" / "gateway-api-conformance"


ROOT = _root()
CLASS_NAME = "meshpilot"
INFRA = "gateway-conformance-infra"
APP = "gateway-conformance-app-backend"
WEB = "gateway-conformance-web-backend"
BASE_KINDS = ("Namespace", "Gateway", "Service")  # Deployments and ConfigMaps are the pods'
# What the suite's set-up makes for the TLS tests (conformance/utils/suite/suite.go): the
# backends' certificate and the CA ConfigMaps BackendTLSPolicies name.
BACKEND_CERT_NAMES = ("abc.example.com", "other.example.com")
BACKEND_CERT_URIS = ("spiffe://abc.example.com/test-identity",)
# The client certificates of the frontend validation tests: Secret -> the CA ConfigMap (of
# the same suite set-up) whose CA signed it.
CLIENT_CERT = "tls-validity-checks-client-certificate"
PER_PORT_CLIENT_CERT = "tls-validity-checks-per-port-client-certificate"
CLIENT_CAS = {CLIENT_CERT: "tls-validity-checks-ca-certificate",
              PER_PORT_CLIENT_CERT: "tls-validity-checks-per-port-ca-certificate"}
LISTENER_PORTS = (80, 443, 8080, 8443, 8081, 8082, 8083, 8090, 8883,
                  5300, 9300, 9301, 9302, 9310, 9311, 9312, 9313, 9320, 9321)  # and TCPRoute's
# The base's pods that serve HTTPS with the suite's `tls-checks-certificate` (echo-basic with
# TLS), and the TCP echo whose ports are plain and TLS (the upstream tcpserver, by port name).
TLS_BACKENDS = ((INFRA, "tls-backend"), (INFRA, "tls-backend-2"), (APP, "tls-backend"))
TCP_BACKEND = (INFRA, "tcp-backend")
ECHO_TLS_PORT = 8443  # where echo-basic serves TLS (given TLS_SERVER_CERT) beside plaintext
TCP_PORTS = {"echo-tcp-plain": False, "echo-tcp-tls": True}  # port name -> speaks TLS


def available() -> str | None:
    """None if the upstream manifests are here, else why not (a test then skips)."""
    if not (ROOT / "base" / "manifests.yaml").is_file():
        return f"upstream conformance manifests not found at {ROOT}"
    return None


def _documents(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(text, parsed) of each document of a manifest file, text unchanged."""
    found = []
    for chunk in re.split(r"(?m)^---\s*$", path.read_text()):
        parsed = yaml.safe_load(chunk)
        if isinstance(parsed, dict):
            found.append((chunk.strip("\n"), parsed))
    return found


def grpc_services() -> list[tuple[str, str]]:
    """(namespace, name) of the base Services whose pods are the gRPC echo: their Deployment
    (named like the Service) runs echo-basic with GRPC_ECHO_SERVER set, as upstream's base."""
    deployments = {(doc["metadata"]["namespace"], doc["metadata"]["name"])
                   for _, doc in _documents(ROOT / "base" / "manifests.yaml")
                   if doc.get("kind") == "Deployment" and any(
                       env.get("name") == "GRPC_ECHO_SERVER" and env.get("value") == "1"
                       for container in doc["spec"]["template"]["spec"]["containers"]
                       for env in container.get("env") or ())}
    return [(namespace, name) for namespace, name, _ in base_services()
            if (namespace, name) in deployments]


def h2c_ports() -> list[tuple[str, str, str]]:
    """(namespace, name, port name) of the base Services' ports with appProtocol
    kubernetes.io/h2c whose pods are the HTTP echo (echo-basic answers prior-knowledge HTTP/2
    there, beside HTTP/1.1 on its other ports)."""
    grpc = set(grpc_services())
    return [(namespace, name, port.get("name", ""))
            for namespace, name, ports in base_services() if (namespace, name) not in grpc
            for port in ports if port.get("appProtocol") == "kubernetes.io/h2c"]


def base_services() -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(namespace, name, ports) of every Service of the base manifests."""
    return [(doc["metadata"]["namespace"], doc["metadata"]["name"], doc["spec"]["ports"])
            for _, doc in _documents(ROOT / "base" / "manifests.yaml")
            if doc.get("kind") == "Service"]


# ---- the echo backend ---------------------------------------------------------------------------


def echo_reply(path: str, host: str, method: str, proto: str, sent: list[tuple[str, str]],
               namespace: str, service: str, tls: dict[str, str]) -> bytes:
    """The upstream echo's JSON answer: the request as the backend saw it, who served it."""
    headers: dict[str, list[str]] = {}
    for name, value in sent:
        headers.setdefault("-".join(p.capitalize() for p in name.split("-")), []).append(value)
    return json.dumps({
        "path": path, "host": host, "method": method, "proto": proto, "headers": headers,
        "namespace": namespace, "service": service, "pod": f"{service}-pod", "tls": tls,
    }).encode()


class H2cEchoBackend(H2cEchoServer):
    """The upstream echo's prior-knowledge HTTP/2 port (echo-basic's 3001): the same answer."""

    def __init__(self, namespace: str, service: str):
        def reply(method: str, path: str, head: list[tuple[str, str]],
                  ) -> tuple[int, list[tuple[str, str]], bytes]:
            sent = [(n, v) for n, v in head if not n.startswith(":")]
            host = dict(head).get(":authority", "")
            body = echo_reply(path, host, method, "HTTP/2.0", sent, namespace, service, {})
            return 200, [("content-type", "application/json")], body

        super().__init__(reply)


class _EchoHandler(QuietHandler):
    """What the upstream echo server answers: JSON with the request as the backend saw it and
    who served it (namespace, pod); `X-Echo-Set-Header: Name:value,...` sets response headers."""

    def _answer(self) -> None:
        server: Any = self.server
        server.echo_seen.append(self.path)
        sni = getattr(self.request, "echo_sni", None)
        # Upstream's retry simulation: answer `responseCode` to the first `succeedAfter`
        # requests carrying one `uuid`, then as usual.
        query = parse_qs(urlsplit(self.path).query)
        if "succeedAfter" in query and "uuid" in query:
            key = query["uuid"][0]
            with server.echo_lock:
                seen = server.echo_attempts[key] = server.echo_attempts.get(key, 0) + 1
            if seen <= int(query["succeedAfter"][0]):
                self.reply(int(query.get("responseCode", ["500"])[0]), b"simulated failure")
                return
        delay = re.search(r"[?&]delay=([0-9]+)(ms|s)\b", self.path)
        if delay:
            time.sleep(int(delay.group(1)) / (1000 if delay.group(2) == "ms" else 1))
        if self.path.partition("?")[0] == "/ws" and is_websocket_upgrade(self):
            websocket_echo(self)  # upstream's echo-basic serves websockets at /ws
            return
        body = echo_reply(self.path, self.headers.get("Host", ""), self.command,
                          self.request_version, list(self.headers.items()),
                          server.echo_namespace, server.echo_service,
                          {"serverName": sni} if isinstance(self.request, ssl.SSLSocket) else {})
        self.send_response(200)
        for item in (self.headers.get("X-Echo-Set-Header") or "").split(","):
            name, _, value = item.partition(":")
            if name.strip():
                self.send_header(name.strip(), value.strip())
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        try:
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # A delayed answer Envoy gave up on (the timeout tests): the client is gone.
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer


class EchoBackend(LoopbackHttpServer):
    def __init__(self, namespace: str, service: str, tls: tuple[Path, Path] | None = None):
        super().__init__(_EchoHandler, tls=tls)
        self.namespace, self.service = namespace, service
        if tls is not None:  # the SNI of each connection, on the connection (the echo says it)
            context = self.httpd.socket.context  # type: ignore[attr-defined]
            record = context.sni_callback

            def remember(connection: Any, name: str | None, ctx: ssl.SSLContext) -> None:
                connection.echo_sni = name
                record(connection, name, ctx)

            context.sni_callback = remember

    @property
    def seen(self) -> list[str]:
        """The request paths (with query) it was sent, in order."""
        return self.httpd.echo_seen  # type: ignore[attr-defined,no-any-return]

    def start(self) -> int:
        self.httpd.echo_seen = []  # type: ignore[attr-defined]
        self.httpd.echo_attempts = {}  # type: ignore[attr-defined]
        self.httpd.echo_lock = threading.Lock()  # type: ignore[attr-defined]
        self.httpd.echo_namespace = self.namespace  # type: ignore[attr-defined]
        self.httpd.echo_service = self.service  # type: ignore[attr-defined]
        return super().start()


TCP_WELCOME = b"Welcome to the gateway-api conformance TCP echo server\n"


class _TcpEchoHandler(socketserver.StreamRequestHandler):
    """The upstream TCP echo (echo-basic's tcpserver): a welcome line, then per line `PING`
    answers `PONG`, `IS_TLS` whether the connection is TLS, `TEST` a JSON line with who served
    it (namespace, pod) and the TLS the client negotiated (SNI, protocol)."""

    def setup(self) -> None:
        server: Any = self.server
        if server.tls_context is not None:
            try:
                self.request = server.tls_context.wrap_socket(self.request, server_side=True)
            except (ssl.SSLError, OSError):
                self.request.close()
                raise
        super().setup()

    def handle(self) -> None:
        server: Any = self.server
        try:
            self.wfile.write(TCP_WELCOME)
            for line in self.rfile:
                command = line.strip()
                if command == b"PING":
                    self.wfile.write(b"PONG\n")
                elif command == b"IS_TLS":
                    self.wfile.write(b"true\n" if server.tls_context else b"false\n")
                elif command == b"TEST":
                    tls: dict[str, str] = {}
                    if isinstance(self.request, ssl.SSLSocket):
                        tls = {"serverName": server.server_names.get(id(self.request), ""),
                               "negotiatedProtocol": self.request.version() or ""}
                    self.wfile.write(json.dumps({
                        "namespace": server.echo_namespace, "pod": f"{server.echo_service}-pod",
                        "tls": tls}).encode() + b"\n")
                else:
                    self.wfile.write(line)
        except (OSError, ValueError):
            pass


class TcpEchoBackend:
    """The upstream TCP echo on loopback, plain or TLS (`tls`: certificate and key files)."""

    def __init__(self, namespace: str, service: str, tls: tuple[Path, Path] | None = None):
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _TcpEchoHandler)
        self.server.daemon_threads = True
        server: Any = self.server
        server.echo_namespace, server.echo_service = namespace, service
        server.server_names = {}
        server.tls_context = None
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)

            def record(connection: ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
                server.server_names[id(connection)] = name or ""

            context.sni_callback = record  # type: ignore[assignment]
            server.tls_context = context
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)

    def start(self) -> int:
        self._thread.start()
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(timeout=5)
        self.server.server_close()


def tcp_pod(port: int) -> str | None:
    """The pod of the upstream TCP echo that answers one plain connection to `port` (its
    TEST line), or None when the connection is refused or closed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            reader = conn.makefile("rb")
            if reader.readline() != TCP_WELCOME:
                return None
            conn.sendall(b"TEST\n")
            return str(json.loads(reader.readline())["pod"])
    except (OSError, ValueError):
        return None


# ---- the folder -----------------------------------------------------------------------------------


def write_folder(folder: Path, tests: list[str],
                 backends: dict[tuple[str, str], int | dict[str, int]],
                 ports: dict[int, int], tls: tuple[bytes, bytes],
                 cas: dict[str, bytes] | None = None) -> None:
    """The base manifests and the named test manifests as they are, and what a cluster adds.
    `backends`: the loopback port of each base Service's pod, or one per Service port name."""
    folder.mkdir(parents=True, exist_ok=True)
    base = [text for text, doc in _documents(ROOT / "base" / "manifests.yaml")
            if doc.get("kind") in BASE_KINDS]
    (folder / "base.yaml").write_text(
        "\n---\n".join(base).replace("{GATEWAY_CLASS_NAME}", CLASS_NAME) + "\n")
    for test in tests:
        text = (ROOT / "tests" / f"{test}.yaml").read_text()
        (folder / f"{test}.yaml").write_text(text.replace("{GATEWAY_CLASS_NAME}", CLASS_NAME))
    mapping = " ".join(f"{written}:{bound}" for written, bound in sorted(ports.items()))
    cluster = [f"""apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: {CLASS_NAME}}}
spec:
  controllerName: meshpilot.io/gateway-controller
  parametersRef: {{group: "", kind: ConfigMap, name: {CLASS_NAME}-ports, namespace: default}}
""", f"""apiVersion: v1
kind: ConfigMap
metadata: {{name: {CLASS_NAME}-ports, namespace: default}}
data: {{address: 127.0.0.1, ports: "{mapping}"}}
"""]
    cert, key = (base64.b64encode(x).decode() for x in tls)
    for secret in ("tls-validity-checks-certificate", "tls-terminate-checks-certificate"):
        cluster.append(f"""apiVersion: v1
kind: Secret
metadata: {{name: {secret}, namespace: {INFRA}}}
type: kubernetes.io/tls
data: {{tls.crt: {cert}, tls.key: {key}}}
""")
    for namespace, name, service_ports in base_services():
        port = backends.get((namespace, name))
        if port is None:
            continue
        slice_ports = ", ".join(
            f"{{name: {p.get('name', '')!r}, "
            f"port: {port if isinstance(port, int) else port[p['name']]}}}"
            for p in service_ports)
        cluster.append(f"""apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-echo
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{slice_ports}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
""")
    for name, pem in (cas or {}).items():
        body = "\n".join("    " + line for line in pem.decode().splitlines())
        cluster.append(f"""apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}, namespace: {INFRA}}}
data:
  ca.crt: |
{body}
""")
    (folder / "cluster.yaml").write_text("---\n".join(cluster))


def test_manifest(test: str) -> str:
    """A test's manifest as the cluster would hold it: its Deployments are pods (of the base's
    backends here), so they are left out; the rest unchanged."""
    documents = [text for text, doc in _documents(ROOT / "tests" / f"{test}.yaml")
                 if doc.get("kind") != "Deployment"]
    return "\n---\n".join(documents).replace("{GATEWAY_CLASS_NAME}", CLASS_NAME) + "\n"


def test_deployments(tests: list[str]) -> list[tuple[str, str, dict[str, str]]]:
    """(namespace, SERVICE_NAME, pod labels) of each upstream TCP echo Deployment the tests'
    manifests bring (echo-basic with TCP_ECHO_SERVER): the harness runs one per Deployment."""
    found = []
    for test in dict.fromkeys(tests):
        for _, doc in _documents(ROOT / "tests" / f"{test}.yaml"):
            if doc.get("kind") != "Deployment":
                continue
            template = doc["spec"]["template"]
            env = {e["name"]: e.get("value") for c in template["spec"]["containers"]
                   for e in c.get("env") or ()}
            if "TCP_ECHO_SERVER" in env:
                found.append((doc["metadata"].get("namespace", "default"),
                              env.get("SERVICE_NAME") or doc["metadata"]["name"],
                              dict(template["metadata"]["labels"])))
    return found


def test_pods(test: str, backends: dict[tuple[str, str], int | dict[str, int]],
              deployments: dict[tuple[str, tuple[tuple[str, str], ...]], int] | None = None,
              tls_ports: dict[tuple[str, str], int] | None = None) -> str:
    """EndpointSlices for a test's own Services whose selector picks a base backend's pods or
    a test Deployment's (as the endpoints controller would make them): their loopback port.
    `deployments`: (namespace, pod labels) -> port. `tls_ports`: a base pod's TLS port (a
    Service targeting ECHO_TLS_PORT of that pod gets it)."""
    base = [doc for _, doc in _documents(ROOT / "base" / "manifests.yaml")
            if doc.get("kind") == "Service" and doc["spec"].get("selector")]
    selectors = {(doc["metadata"]["namespace"], tuple(sorted(doc["spec"]["selector"].items()))):
                 (doc["metadata"]["namespace"], doc["metadata"]["name"]) for doc in base}
    # A base pod serving several ports (by port name): its port name per target port, so a
    # test's Service targeting one of them gets that one (the TCP echo's TLS port, 8443).
    targets = {(doc["metadata"]["namespace"], doc["metadata"]["name"]):
               {p.get("targetPort", p["port"]): p.get("name", "") for p in doc["spec"]["ports"]}
               for doc in base}
    slices = []
    for _, doc in _documents(ROOT / "tests" / f"{test}.yaml"):
        if doc.get("kind") != "Service" or not doc["spec"].get("selector"):
            continue
        namespace = doc["metadata"].get("namespace", "default")
        pod = selectors.get((namespace, tuple(sorted(doc["spec"]["selector"].items()))))
        port = backends.get(pod) if pod else None
        if pod in (tls_ports or {}) and any(p.get("targetPort") == ECHO_TLS_PORT
                                            for p in doc["spec"]["ports"]):
            port = (tls_ports or {})[pod]
        selector = set(doc["spec"]["selector"].items())
        for (pod_namespace, labels), pod_port in (deployments or {}).items():
            if pod_namespace == namespace and selector <= set(labels):
                port = pod_port
        if isinstance(port, dict) and pod is not None:
            named = {targets[pod].get(p.get("targetPort", p["port"])) for p in doc["spec"]["ports"]}
            port = port.get(named.pop()) if len(named) == 1 else None  # type: ignore[arg-type]
        if not isinstance(port, int):
            continue
        slice_ports = ", ".join(f"{{name: {p.get('name', '')!r}, port: {port}}}"
                                for p in doc["spec"]["ports"])
        slices.append(f"""apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {doc["metadata"]["name"]}-pods
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: {doc["metadata"]["name"]}}}
addressType: IPv4
ports: [{slice_ports}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
""")
    return "---\n".join(slices)


# ---- the cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    path: str
    host: str = "gateway.example"  # what a client of the Gateway's address sends
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    backend: str | None = None  # the Service that must answer (its pod)
    namespace: str = INFRA
    seen_path: str | None = None  # the path the backend must see
    seen_host: str | None = None
    seen_headers: dict[str, str] = field(default_factory=dict)
    seen_absent: tuple[str, ...] = ()
    redirect: dict[str, str] | None = None  # scheme, host, port, path
    set_response: dict[str, str] = field(default_factory=dict)  # the backend sets these
    response_headers: dict[str, str] = field(default_factory=dict)
    response_absent: tuple[str, ...] = ()
    mirrored_to: tuple[str, ...] = ()  # these Services get a copy of the request
    seen_sni: str | None = None  # the SNI the (TLS) backend saw
    statuses: tuple[int, ...] = ()  # any of these (upstream's StatusCodes: [500, 502, 503])
    fails: bool = False  # any answer but 200 (upstream's MakeRequestAndExpectFailure)
    # response header -> the values upstream accepts, whitespace ignored (ValidHeaderValues)
    response_one_of: dict[str, tuple[str, ...]] = field(default_factory=dict)
    echo: bool = True  # answered by a backend (False: Envoy answers, a CORS preflight)
    server_name: str | None = None  # over TLS: the SNI (and the certificate's name); None: host
    # over TLS: the client certificate presented, by the name of the suite's Secret holding it
    # (CLIENT_CERTS); None: none. With `fails`, a refused handshake is the expected failure.
    client_cert: str | None = None
    h2c: bool = False  # sent over prior-knowledge HTTP/2 cleartext (upstream's H2C protocol)


@dataclass(frozen=True)
class TlsCase:
    """A TLS connection to a TLS (Passthrough) listener with SNI `server_name`: `backend` must
    answer it (None: the connection is rejected), over HTTPS (`http`: a request with Host
    `server_name`, as upstream's MakeTLSRequest) or the TCP echo's line protocol (MakeTCPRequest,
    SNI checked at the backend)."""

    server_name: str
    backend: str | None
    http: bool = True
    namespace: str = INFRA
    terminated: bool = False  # TLS ends at the Gateway: the backend sees plaintext, no SNI
    # With `terminated`: the Gateway speaks TLS again to the backend (a BackendTLSPolicy),
    # which sees this SNI (None: plaintext)
    backend_sni: str | None = None


@dataclass(frozen=True)
class GrpcCase:
    """One call of upstream's GRPCRoute tests (conformance/utils/grpc, ExpectedResponse):
    GrpcEcho/`method` with `metadata` and `:authority`; `backend` must answer it (its pod,
    the method echoed back, the namespace), or the call ends with `code`. `seen`: request
    headers the backend must see (lower-case names, repeated values joined by ","), `absent`:
    headers it must not see; upstream transcribes expected headers but does not compare
    them, so these say what the manifest's filters do to the rule that wins (spec precedence)."""

    method: str = "Echo"
    metadata: dict[str, str] = field(default_factory=dict)
    authority: str | None = None
    backend: str | None = None
    code: str = "OK"  # a grpc.StatusCode name
    namespace: str = INFRA
    seen: dict[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()
    fails: bool = False  # any code but OK (upstream's MakeRequestAndExpectEventuallyConsistentFailure)


@dataclass(frozen=True)
class Expect:
    """A status upstream asserts: an object's conditions (type -> (status, reason or None for
    any reason)), and for a listener its attachedRoutes and supportedKinds."""

    kind: str  # HTTPRoute (its status for the test's Gateway), Listener ("GATEWAY/LISTENER"),
    # or Gateway
    name: str  # in the infra namespace unless "NS/..." is given
    conditions: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    attached: int | None = None
    supported: str | None = None


@dataclass(frozen=True)
class Test:
    manifest: str
    gateway: str  # NS/NAME: the view
    cases: tuple[Case, ...]
    listener_port: int = 80
    # route name -> the reason upstream expects its Accepted condition False for
    not_accepted: dict[str, str] = field(default_factory=dict)
    tls: bool = False  # requests over TLS, SNI = the case's host
    more: tuple[Test, ...] = ()  # the same manifest, another Gateway or listener port
    expect: tuple[Expect, ...] = ()  # statuses upstream asserts
    tls_cases: tuple[TlsCase, ...] = ()  # connections to a TLS passthrough listener
    # connections to a TCP listener: the backend that must answer each (None: refused)
    tcp_cases: tuple[str | None, ...] = ()
    tcp_weights: dict[str, float] = field(default_factory=dict)  # their shares, weighted
    grpc_cases: tuple[GrpcCase, ...] = ()  # gRPC calls to the upstream gRPC echo (GrpcEcho)
    grpc_weights: dict[str, float] = field(default_factory=dict)  # backends' shares of Echo
    # A websocket opened at this path of the listener: a text and a binary message come back
    websocket: str | None = None


V1, V2, V3 = "infra-backend-v1", "infra-backend-v2", "infra-backend-v3"
GW = f"{INFRA}/same-namespace"


def _c(path: str, backend: str | None = V1, **kw: Any) -> Case:
    return Case(path, backend=backend, **kw)


def _404(path: str, **kw: Any) -> Case:
    return Case(path, status=404, **kw)


def _redirect(request_path: str, status: int = 302, **redirect: str) -> Case:
    return Case(request_path, status=status, redirect=redirect)


_HM = {"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1",
       "X-Header-Set": "set-val"}
_HM_SEEN = {"X-Header-Add": "header-val-1", "X-Header-Add-Append": "append-val-1,header-val-2",
            "X-Header-Set": "set-overwrites-values"}

CASES: dict[str, Test] = {
    "HTTPRouteSimpleSameNamespace": Test("httproute-simple-same-namespace", GW, (_c("/"),)),
    "HTTPRouteMatching": Test("httproute-matching", GW, (
        _c("/"), _c("/example"), _c("/", headers={"Version": "one"}), _c("/v2", V2),
        _c("/v2/example", V2), _c("/", V2, headers={"Version": "two"}), _c("/v2/", V2),
        _c("/v2example"), _c("/foo/v2/example"))),
    "HTTPRouteExactPathMatching": Test("httproute-exact-path-matching", GW, (
        _c("/one"), _c("/two", V2), _404("/"), _404("/one/example"), _404("/two/"),
        _404("/Two"))),
    "HTTPRouteHeaderMatching": Test("httproute-header-matching", GW, (
        _c("/", headers={"Version": "one"}), _c("/", V2, headers={"Version": "two"}),
        _c("/", headers={"Version": "two", "Color": "orange"}),
        _c("/", V2, headers={"Version": "two", "Color": "blue"}),
        _404("/", headers={"Color": "orange"}), _404("/", headers={"Some-Other-Header": "one"}),
        _c("/", headers={"Color": "blue"}), _c("/", headers={"Color": "green"}),
        _c("/", V2, headers={"Color": "red"}), _c("/", V2, headers={"Color": "yellow"}),
        _404("/", headers={"Color": "purple"}))),
    "HTTPRouteMethodMatching": Test("httproute-method-matching", GW, (
        _c("/", method="POST"), _c("/", V2, method="GET"), _404("/", method="HEAD"),
        _c("/path1", method="GET"), _c("/", V2, method="PUT", headers={"version": "one"}),
        _c("/path2", V3, method="POST", headers={"version": "two"}),
        _c("/path3", method="PATCH"),
        _c("/path4", method="DELETE", headers={"version": "three"}),
        _404("/", method="PUT"), _404("/path4", method="DELETE"),
        _c("/path5", method="PATCH"), _c("/", V2, method="PATCH", headers={"version": "four"}))),
    "HTTPRouteQueryParamMatching": Test("httproute-query-param-matching", GW, (
        _c("/?animal=whale"), _c("/?animal=dolphin", V2), _c("/?animal=dolphin&color=blue", V3),
        _c("/?ANIMAL=Whale", V3), _c("/?animal=whale&otherparam=irrelevant"),
        _c("/?animal=dolphin&color=yellow", V2), _404("/?color=blue"), _404("/?animal=dog"),
        _404("/?animal=whaledolphin"), _404("/"), _c("/path1?animal=whale"),
        _c("/?animal=whale", V2, headers={"version": "one"}),
        _c("/path2?animal=whale", V3, headers={"version": "two"}),
        _c("/path3?animal=shark"), _c("/path4?animal=kraken", headers={"version": "three"}),
        _404("/?animal=shark"), _404("/path4?animal=kraken"), _c("/path5?animal=hydra"),
        _c("/?animal=hydra", V3, headers={"version": "four"}))),
    "HTTPRoutePathMatchOrder": Test("httproute-path-match-order", GW, (
        _c("/match/exact/one", V3), _c("/match/exact", V2), _c("/match"),
        _c("/match/prefix/one/any", V2), _c("/match/prefix/any"), _c("/match/any", V3))),
    "HTTPRouteMatchingAcrossRoutes": Test("httproute-matching-across-routes", GW, (
        _c("/", host="example.com"), _c("/example", host="example.com"),
        _c("/example", host="example.net"),
        _c("/example", host="example.com", headers={"Version": "one"}),
        _c("/v2", V2, host="example.com"), _c("/v2", host="example.net"),
        _c("/v2/example", V2, host="example.com"),
        _c("/", V2, host="example.com", headers={"Version": "two"}))),
    "HTTPRouteRequestHeaderModifier": Test("httproute-request-header-modifier", GW, (
        _c("/set", headers={"Some-Other-Header": "val"},
           seen_headers={"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}),
        _c("/set", headers={"Some-Other-Header": "val", "X-Header-Set": "some-other-value"},
           seen_headers={"X-Header-Set": "set-overwrites-values"}),
        _c("/add", headers={"Some-Other-Header": "val"},
           seen_headers={"X-Header-Add": "add-appends-values"}),
        _c("/add", headers={"Some-Other-Header": "val", "X-Header-Add": "some-other-value"},
           seen_headers={"X-Header-Add": "some-other-value,add-appends-values"}),
        _c("/remove", headers={"X-Header-Remove": "val"}, seen_absent=("X-Header-Remove",)),
        _c("/case-insensitivity", headers={"x-header-set": "original-val-set",
                                           "x-header-add": "original-val-add",
                                           "x-header-remove": "original-val-remove",
                                           "Another-Header": "another-header-val"},
           seen_headers={"X-Header-Set": "header-set", "X-Header-Add": "original-val-add,"
                         "header-add", "Another-Header": "another-header-val"},
           seen_absent=("X-Header-Remove",)))),
    # The same requests, the same expectations, with the filters on the backendRefs.
    "HTTPRouteBackendRequestHeaderModifier": None,  # type: ignore[dict-item]
    "HTTPRouteResponseHeaderModifier": Test("httproute-response-header-modifier", GW, (
        _c("/set", set_response={"Some-Other-Header": "val"},
           response_headers={"Some-Other-Header": "val",
                             "X-Header-Set": "set-overwrites-values"}),
        _c("/set", set_response={"X-Header-Set": "some-other-value"},
           response_headers={"X-Header-Set": "set-overwrites-values"}),
        _c("/add", set_response={"Some-Other-Header": "val"},
           response_headers={"X-Header-Add": "add-appends-values"}),
        _c("/add", set_response={"X-Header-Add": "some-other-value"},
           response_headers={"X-Header-Add": "some-other-value,add-appends-values"}),
        _c("/remove", set_response={"X-Header-Remove": "val"},
           response_absent=("X-Header-Remove",)))),
    "HTTPRouteRedirectScheme": Test("httproute-redirect-scheme", GW, (
        _redirect("/scheme", scheme="https"),
        _redirect("/scheme-and-host", host="example.org", scheme="https"),
        _redirect("/scheme-and-status", 301, scheme="https"),
        _redirect("/scheme-and-host-and-status", 302, scheme="https", host="example.org"))),
    "HTTPRouteRedirectPath": Test("httproute-redirect-path", GW, (
        _redirect("/original-prefix/lemon", path="/replacement-prefix/lemon"),
        _redirect("/full/path/original", path="/full-path-replacement"),
        _redirect("/path-and-host", host="example.org", path="/replacement-prefix"),
        _redirect("/path-and-status", 301, path="/replacement-prefix"),
        _redirect("/full-path-and-host", host="example.org", path="/replacement-full"),
        _redirect("/full-path-and-status", 301, path="/replacement-full"))),
    "HTTPRouteRedirectPort": Test("httproute-redirect-port", GW, (
        _redirect("/port", port="8083"),
        _redirect("/port-and-host", host="example.org", port="8083"),
        _redirect("/port-and-status", 301, port="8083"),
        _redirect("/port-and-host-and-status", 302, port="8083", host="example.org"))),
    "HTTPRouteRedirectHostAndStatus": Test("httproute-redirect-host-and-status", GW, (
        _redirect("/hostname-redirect", host="example.org"),
        _redirect("/host-and-status", 301, host="example.org"))),
    "HTTPRouteRewritePath": Test("httproute-rewrite-path", GW, (
        _c("/prefix/one/two", seen_path="/one/two"),
        _c("/strip-prefix/three", seen_path="/three"), _c("/strip-prefix", seen_path="/"),
        _c("/full/one/two", seen_path="/one"),
        _c("/full/rewrite-path-and-modify-headers/test", headers=_HM, seen_path="/test",
           seen_headers=_HM_SEEN, seen_absent=("X-Header-Remove",)),
        _c("/prefix/rewrite-path-and-modify-headers/one", headers=_HM, seen_path="/prefix/one",
           seen_headers=_HM_SEEN, seen_absent=("X-Header-Remove",)))),
    "HTTPRouteRewriteHost": Test("httproute-rewrite-host", GW, (
        _c("/one", host="rewrite.example", seen_host="one.example.org"),
        _c("/two", V2, host="rewrite.example", seen_host="example.org"),
        _c("/rewrite-host-and-modify-headers", V2, host="rewrite.example",
           headers={"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1"},
           seen_host="test.example.org", seen_headers=_HM_SEEN,
           seen_absent=("X-Header-Remove",)))),
    "HTTPRouteHostnameIntersection": Test("httproute-hostname-intersection",
                                          f"{INFRA}/httproute-hostname-intersection", (
        _c("/s1", host="very.specific.com"), _c("/s1", host="very.specific.com:1234"),
        _404("/s1", host="non.matching.com"), _404("/s1", host="foo.nonmatchingwildcard.io"),
        _404("/s1", host="foo.wildcard.io"), _404("/non-matching-prefix", host="very.specific.com"),
        _c("/s2", V2, host="foo.wildcard.io"), _c("/s2", V2, host="bar.wildcard.io"),
        _c("/s2", V2, host="foo.bar.wildcard.io"), _404("/s2", host="non.matching.com"),
        _404("/s2", host="wildcard.io"), _404("/s2", host="very.specific.com"),
        _404("/non-matching-prefix", host="foo.wildcard.io"),
        _c("/s3", V3, host="very.specific.com"), _404("/s3", host="non.matching.com"),
        _404("/s3", host="foo.specific.com"), _404("/s3", host="foo.wildcard.io"),
        _c("/s4", host="foo.anotherwildcard.io"), _c("/s4", host="bar.anotherwildcard.io"),
        _c("/s4", host="foo.bar.anotherwildcard.io"), _404("/s4", host="anotherwildcard.io"),
        _404("/s4", host="foo.wildcard.io"), _404("/s4", host="very.specific.com"),
        _404("/non-matching-prefix", host="foo.anotherwildcard.io")),
        not_accepted={"no-intersecting-hosts": "NoMatchingListenerHostname"}),
    "HTTPRouteListenerHostnameMatching": Test("httproute-listener-hostname-matching",
                                              f"{INFRA}/httproute-listener-hostname-matching", (
        _c("/", host="bar.com"), _c("/", V2, host="foo.bar.com"),
        _c("/", V3, host="baz.bar.com"), _c("/", V3, host="boo.bar.com"),
        _c("/", V3, host="multiple.prefixes.bar.com"),
        _c("/", V3, host="multiple.prefixes.foo.com"), _404("/", host="foo.com"),
        _404("/", host="no.matching.host"))),
    "HTTPRouteCrossNamespace": Test("httproute-cross-namespace", f"{INFRA}/backend-namespaces",
                                    (_c("/", "web-backend", namespace=WEB),)),
    "HTTPRouteReferenceGrant": Test("httproute-reference-grant", GW,
                                    (_c("/", "web-backend", namespace=WEB),)),
    "HTTPRouteInvalidNonExistentBackendRef": Test("httproute-invalid-nonexistent-backendref",
                                                  GW, (Case("/", status=500),)),
    "HTTPRouteInvalidCrossNamespaceBackendRef": Test(
        "httproute-invalid-cross-namespace-backend-ref", GW, (Case("/", status=500),)),
    "HTTPRoutePartiallyInvalidViaInvalidReferenceGrant": Test(
        "httproute-partially-invalid-via-invalid-reference-grant", GW,
        (Case("/v2", status=500), _c("/", "app-backend-v1", namespace=APP))),
    "HTTPRouteTimeoutRequest": Test("httproute-timeout-request", GW, (
        Case("/request-timeout"), Case("/request-timeout?delay=1s", status=504),
        Case("/disable-request-timeout?delay=1s"))),
    "HTTPRouteTimeoutBackendRequest": Test("httproute-timeout-backend-request", GW, (
        Case("/backend-timeout"), Case("/backend-timeout?delay=1s", status=504),
        Case("/disable-backend-timeout?delay=1s"))),
    "HTTPRouteRequestMirror": Test("httproute-request-mirror", GW, (
        _c("/mirror", mirrored_to=(V2,)),
        _c("/mirror-and-modify-headers", headers=_HM, mirrored_to=(V2,),
           seen_headers=_HM_SEEN, seen_absent=("X-Header-Remove",)))),
    "HTTPRouteHTTPSListener": Test("httproute-https-listener",
                                   f"{INFRA}/same-namespace-with-https-listener", (
        _c("/", host="example.org"), _c("/", V2, host="second-example.org")),
        listener_port=443, tls=True),
    # (SNI, Host, status, backend) as upstream's cases, in its order.
    "HTTPRouteHTTPSListenerDetectMisdirectedRequests": Test(
        "httproute-https-listener-detect-misdirected-requests",
        f"{INFRA}/same-namespace-with-https-listener", tuple(
            Case("/detect-misdirected-requests", host=host, server_name=sni, status=status,
                 backend=backend)
            for sni, host, status, backend in (
                ("example.org", "example.org", 200, V1),
                ("example.org", "second-example.org", 421, None),
                ("example.org", "unknown-example.org", 404, None),
                ("second-example.org", "second-example.org", 200, V2),
                ("second-example.org", "example.org", 421, None),
                ("second-example.org", "unknown-example.org", 421, None),
                ("third-example.wildcard.org", "third-example.wildcard.org", 200, V3),
                ("third-example.wildcard.org", "fith-example.wildcard.org", 200, V3),
                ("third-example.wildcard.org", "fourth-example.wildcard.org", 421, None),
                ("third-example.wildcard.org", "second-example.org", 421, None),
                ("third-example.wildcard.org", "unknown-example.org", 421, None),
                ("fourth-example.wildcard.org", "fourth-example.wildcard.org", 200, V1),
                ("fourth-example.wildcard.org", "fith-example.wildcard.org", 421, None),
                ("unknown-example.org", "example.org", 200, V1),
                ("unknown-example.org", "unknown-example.org", 404, None))),
        listener_port=443, tls=True),
    "HTTPRoute303Redirect": Test("httproute-303-redirect", GW, (
        _redirect("/see-other", 303, path="/see-other"),)),
    "HTTPRoute307Redirect": Test("httproute-307-redirect", GW, (
        _redirect("/temporary", 307, path="/temporary"),)),
    "HTTPRoute308Redirect": Test("httproute-308-redirect", GW, (
        _redirect("/permanent", 308, path="/permanent"),)),
    "HTTPRouteRedirectPortAndScheme": Test("httproute-redirect-port-and-scheme", GW, (
        _redirect("/scheme-nil-and-port-nil", scheme="http", host="example.org"),
        _redirect("/scheme-nil-and-port-80", scheme="http", host="example.org"),
        _redirect("/scheme-nil-and-port-8080", scheme="http", port="8080", host="example.org"),
        _redirect("/scheme-https-and-port-nil", scheme="https", host="example.org"),
        _redirect("/scheme-https-and-port-443", scheme="https", host="example.org"),
        _redirect("/scheme-https-and-port-8443", scheme="https", port="8443",
                  host="example.org")), more=(
        Test("httproute-redirect-port-and-scheme",
             f"{INFRA}/same-namespace-with-http-listener-on-8080", (
                 _redirect("/scheme-nil-and-port-nil", scheme="http", port="8080",
                           host="example.org"),
                 _redirect("/scheme-nil-and-port-80", scheme="http", host="example.org"),
                 _redirect("/scheme-https-and-port-nil", scheme="https", host="example.org")),
             listener_port=8080),
        Test("httproute-redirect-port-and-scheme",
             f"{INFRA}/same-namespace-with-https-listener", tuple(
                 Case(path, host="example.org", status=302, redirect=redirect) for path, redirect
                 in (("/scheme-nil-and-port-nil", {"scheme": "https"}),
                     ("/scheme-nil-and-port-443", {"scheme": "https"}),
                     ("/scheme-nil-and-port-8443", {"scheme": "https", "port": "8443"}),
                     ("/scheme-http-and-port-nil", {"scheme": "http"}),
                     ("/scheme-http-and-port-80", {"scheme": "http"}),
                     ("/scheme-http-and-port-8080", {"scheme": "http", "port": "8080"}))),
             listener_port=443, tls=True))),
    "HTTPRouteListenerPortMatching": Test(
        "httproute-listener-port-matching", f"{INFRA}/httproute-listener-port-matching",
        (_c("/", host="foo.com"),), more=(
            Test("httproute-listener-port-matching",
                 f"{INFRA}/httproute-listener-port-matching",
                 (_c("/", V2, host="foo.com:8080"), _c("/", V2, host="bar.com:8080")),
                 listener_port=8080),
            Test("httproute-listener-port-matching",
                 f"{INFRA}/httproute-listener-port-matching",
                 (_c("/", V3, host="foo.com:8090"), _404("/", host="bar.com:8090")),
                 listener_port=8090))),
    "GatewayHTTPListenerIsolation": Test(
        "gateway-http-listener-isolation", f"{INFRA}/http-listener-isolation", tuple(
            _c(path, host=host) if path == served else _404(path, host=host) for host, served in (
                ("bar.com", "/empty-hostname"),
                ("bar.example.com", "/wildcard-example-com"),
                ("bar.foo.example.com", "/wildcard-foo-example-com"),
                ("abc.foo.example.com", "/abc-foo-example-com"))
            for path in ("/empty-hostname", "/wildcard-example-com",
                         "/wildcard-foo-example-com", "/abc-foo-example-com"))),
    "HTTPRouteInvalidBackendRefUnknownKind": Test(
        "httproute-invalid-backendref-unknown-kind", GW, (Case("/v2", status=500),)),
    "HTTPRouteNamedRule": Test("httproute-named-rule", GW, (Case("/named"), Case("/unnamed"))),
    "HTTPRouteRequestMultipleMirrors": Test("httproute-request-multiple-mirrors", GW, (
        _c("/multi-mirror", mirrored_to=(V2, V3)),
        _c("/multi-mirror-and-modify-request-headers", headers=_HM, mirrored_to=(V2, V3),
           seen_headers=_HM_SEEN, seen_absent=("X-Header-Remove",)))),
    "HTTPRouteRequestHeaderModifierBackendWeights": Test(
        "httproute-request-header-modifier-backend-weights", GW, (_c("/", None),)),
    "HTTPRouteWeight": Test("httproute-weight", GW, tuple(
        _c("/", None) for _ in range(30))),
}

_NO_PARENT = {"Accepted": ("False", "NoMatchingParent")}
_NOT_ALLOWED = {"Accepted": ("False", "NotAllowedByListeners")}
_OK = {"Accepted": ("True", None), "ResolvedRefs": ("True", None)}
CASES.update({
    "HTTPRouteInvalidParentRefNotMatchingSectionName": Test(
        "httproute-invalid-parentref-not-matching-section-name", GW, (), expect=(
            Expect("HTTPRoute", "httproute-listener-not-matching-section-name", _NO_PARENT),
            Expect("Listener", "same-namespace/http", attached=0))),
    "HTTPRouteInvalidParentRefNotMatchingListenerPort": Test(
        "httproute-invalid-parentref-not-matching-listener-port", GW, (), expect=(
            Expect("HTTPRoute", "httproute-listener-not-matching-route-port",
                   {**_NO_PARENT, "ResolvedRefs": ("True", None)}),
            Expect("Listener", "same-namespace/http", attached=0))),
    "HTTPRouteInvalidParentRefSectionNameNotMatchingPort": Test(
        "httproute-invalid-parentref-section-name-not-matching-port",
        f"{INFRA}/gateway-with-one-not-matching-port-and-section-name-route", (), expect=(
            Expect("HTTPRoute", "httproute-listener-section-name-not-matching-port",
                   _NO_PARENT),)),
    "HTTPRouteDisallowedKind": Test(
        "httproute-disallowed-kind", f"{INFRA}/tlsroutes-only", (), expect=(
            Expect("HTTPRoute", "disallowed-kind", {**_NOT_ALLOWED,
                                                    "ResolvedRefs": ("True", None)}),)),
    "HTTPRouteInvalidCrossNamespaceParentRef": Test(
        "httproute-invalid-cross-namespace-parent-ref", GW, (), expect=(
            Expect("HTTPRoute", f"{WEB}/invalid-cross-namespace-parent-ref", _NOT_ALLOWED),
            Expect("Listener", "same-namespace/http", attached=0))),
    "GatewayWithAttachedRoutes": Test(
        "gateway-with-attached-routes", f"{INFRA}/gateway-with-one-attached-route", (), expect=(
            Expect("Listener", "gateway-with-one-attached-route/http",
                   {"Accepted": ("True", None), "ResolvedRefs": ("True", None)}, attached=1,
                   supported="HTTPRoute"),), more=(
            Test("gateway-with-attached-routes", f"{INFRA}/gateway-with-two-attached-routes",
                 (), expect=(
                     Expect("Listener", "gateway-with-two-attached-routes/http",
                            {"Accepted": ("True", None), "ResolvedRefs": ("True", None)},
                            attached=2, supported="HTTPRoute"),
                     Expect("HTTPRoute", "http-route-not-accepted",
                            {"Accepted": ("False", "NoMatchingListenerHostname")}))),
            Test("gateway-with-attached-routes",
                 f"{INFRA}/unresolved-gateway-with-one-attached-unresolved-route", (), expect=(
                     Expect("Listener",
                            "unresolved-gateway-with-one-attached-unresolved-route/tls",
                            {"ResolvedRefs": ("False", None), "Programmed": ("False", None)},
                            attached=1),
                     Expect("HTTPRoute", "http-route-4", {"ResolvedRefs": ("False", None)}))))),
    "GatewayWithAttachedRoutesWithPort8080": Test(
        "gateway-with-attached-routes-with-port-8080",
        f"{INFRA}/gateway-with-two-listeners-and-one-attached-route", (), expect=(
            Expect("Listener", "gateway-with-two-listeners-and-one-attached-route/"
                   "http-unattached", {"Accepted": ("True", None),
                                       "ResolvedRefs": ("True", None)}, attached=0),
            Expect("Listener", "gateway-with-two-listeners-and-one-attached-route/http",
                   {"Accepted": ("True", None), "ResolvedRefs": ("True", None)},
                   attached=1))),
})

# httproute-request-percentage-mirror: (path, percent of requests mirrored to v2), checked over
# 500 requests each within 3 standard deviations, as upstream.
PERCENTAGE_MIRRORS = (("/percent-mirror", 20), ("/percent-mirror-fraction", 50),
                      ("/percent-mirror-and-modify-headers", 35))
# ---- GRPCRoute: the upstream tests' calls to the gRPC echo (tests/grpc_conformance_echo.py) --

G1, G2, G3 = "grpc-infra-backend-v1", "grpc-infra-backend-v2", "grpc-infra-backend-v3"
_UNIMPLEMENTED = "UNIMPLEMENTED"  # no route: Envoy's 404, which gRPC clients read so
# grpcroute-request-header-modifier: three rules match Echo alike, so the first (set) wins.
_GRPC_AUTHORITY = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"


def _g(method: str = "Echo", backend: str | None = G1, **kw: Any) -> GrpcCase:
    return GrpcCase(method=method, backend=backend, **kw)


def _no_route(**kw: Any) -> GrpcCase:
    return GrpcCase(backend=None, code=_UNIMPLEMENTED, **kw)


def _grpc_hm(method: str, metadata: dict[str, str], backend: str, seen: dict[str, str],
             absent: tuple[str, ...] = ()) -> GrpcCase:
    return GrpcCase(method=method, metadata=metadata, authority=_GRPC_AUTHORITY,
                    backend=backend, seen=seen, absent=absent)


_OTHER = {"Some-Other-Header": "this-header-should-be-set"}
CASES.update({
    "GRPCExactMethodMatching": Test("grpcroute-exact-method-matching", GW, (), grpc_cases=(
        _g("Echo", G1), _g("EchoTwo", G2), _no_route(method="EchoThree"))),
    "GRPCRouteHeaderMatching": Test("grpcroute-header-matching", GW, (), grpc_cases=(
        _g(metadata={"Version": "one"}), _g(backend=G2, metadata={"Version": "two"}),
        _g(metadata={"Version": "two", "Color": "orange"}),
        _g(backend=G2, metadata={"Version": "two", "Color": "blue"}),
        _no_route(metadata={"Color": "orange"}), _no_route(metadata={"Some-Other-Header": "one"}),
        _g(metadata={"Color": "blue"}), _g(metadata={"Color": "green"}),
        _g(backend=G2, metadata={"Color": "red"}), _g(backend=G2, metadata={"Color": "yellow"}),
        _no_route(metadata={"Color": "purple"}))),
    "GRPCRouteListenerHostnameMatching": Test(
        "grpcroute-listener-hostname-matching", f"{INFRA}/grpcroute-listener-hostname-matching",
        (), grpc_cases=(
            _g(authority="bar.com"), _g(backend=G2, authority="foo.bar.com"),
            *(_g(backend=G3, authority=host) for host in (
                "baz.bar.com", "boo.bar.com", "multiple.prefixes.bar.com",
                "multiple.prefixes.foo.com")),
            _no_route(authority="foo.com"), _no_route(authority="no.matching.host"))),
    "GRPCRouteNamedRule": Test("grpcroute-named-rule", GW, (), grpc_cases=(
        _g("Echo", G1), _g("EchoTwo", G2))),
    "GRPCRouteRequestHeaderModifier": Test("grpcroute-request-header-modifier", GW, (),
                                           grpc_cases=(
        _grpc_hm("Echo", _OTHER, G1, {"some-other-header": "this-header-should-be-set",
                                      "x-header-set": "set-overwrites-values"}),
        _grpc_hm("Echo", {**_OTHER, "X-Header-Set": "this-value-should-be-overwritten"}, G1,
                 {"x-header-set": "set-overwrites-values"}),
        # Upstream expects X-Header-Add here, from the second rule, which the first (equal
        # matches, earlier) always wins over: only what upstream compares is asserted.
        _grpc_hm("Echo", _OTHER, G1, {"some-other-header": "this-header-should-be-set"}),
        _grpc_hm("Echo", {**_OTHER, "X-Header-Add": "this-value-should-be-appended"}, G1,
                 {"x-header-add": "this-value-should-be-appended"}),
        _grpc_hm("Echo", {"X-Header-Remove": "this-should-be-removed"}, G1, {}),
        _grpc_hm("EchoTwo", {"X-Header-Set-2": "set-header-2", "X-Header-Add-2": "add-header-2",
                             "X-Header-Remove-2": "should-be-removed-2",
                             "Some-Other-Header": "another-header-val"}, G2,
                 {"x-header-set-1": "header-set-1", "x-header-set-2": "header-set-2",
                  "x-header-add-1": "header-add-1", "x-header-add-2": "add-header-2,header-add-2",
                  "some-other-header": "another-header-val"},
                 absent=("x-header-remove-2",)),
        _grpc_hm("EchoTwo", {"x-header-set-1": "original-set-1",
                             "x-header-add-1": "existing-add-1",
                             "x-header-remove-1": "should-be-removed-1"}, G2,
                 {"x-header-set-1": "header-set-1", "x-header-set-2": "header-set-2",
                  "x-header-add-1": "existing-add-1,header-add-1",
                  "x-header-add-2": "header-add-2"},
                 absent=("x-header-remove-1",)))),
    "GRPCRouteWeight": Test("grpcroute-weight", GW, (), grpc_cases=(_g(backend=""),),
                            grpc_weights={G1: 0.7, G2: 0.3, G3: 0.0}),
})

CASES["HTTPRouteRequestPercentageMirror"] = Test(
    "httproute-request-percentage-mirror", GW,
    tuple(_c(path) for path, _ in PERCENTAGE_MIRRORS))

TLS_GW = f"{INFRA}/gateway-tlsroute"
_TLS_OK = {"Accepted": ("True", None), "ResolvedRefs": ("True", None)}


_TLS_HOSTS = ((TlsCase("abc.example.com", "tls-backend"),
               TlsCase("non.matching.com", None)),
              (TlsCase("abc.example.com", "tls-backend"),
               TlsCase("other.example.com", "tls-backend-2"),
               TlsCase("non.matching.com", None)))
CASES.update({
    "TLSRouteSimpleSameNamespace": Test(
        "tlsroute-simple-same-namespace", TLS_GW, (), listener_port=443,
        tls_cases=(TlsCase("abc.example.com", "tcp-backend", http=False),),
        expect=(Expect("TLSRoute", "gateway-conformance-infra-test", _TLS_OK),)),
    "TLSRouteHostnameIntersection": Test(
        "tlsroute-hostname-intersection", f"{INFRA}/gw-tlsroute-exact-hostname-x-1", (),
        listener_port=443, tls_cases=_TLS_HOSTS[0],
        expect=(Expect("TLSRoute", "tlsroute-more-specific-wc-hostname-x-1", _TLS_OK),),
        more=tuple(
            Test("tlsroute-hostname-intersection", f"{INFRA}/{gateway}", (), listener_port=443,
                 tls_cases=_TLS_HOSTS[1],
                 expect=tuple(Expect("TLSRoute", route, _TLS_OK) for route in routes))
            for gateway, routes in (
                ("gw-tlsroute-more-specific-wc-hostname-x-2",
                 ("tlsroute-exact-hostname-x-2", "tlsroute-less-specific-wc-hostname-x-2")),
                ("gw-tlsroute-less-specific-wc-hostname-x-3",
                 ("tlsroute-exact-hostname-x-3", "tlsroute-more-specific-wc-hostname-x-3")),
                ("gw-tlsroute-empty-hostname-x-4",
                 ("tlsroute-exact-hostname-x-4", "tlsroute-less-specific-wc-hostname-x-4"))))),
    "TLSRouteInvalidBackendRefNonexistent": Test(
        "tlsroute-invalid-backendref-nonexistent",
        f"{INFRA}/gateway-tlsroute-invalid-backend-ref-nonexistent", (), listener_port=443,
        tls_cases=(TlsCase("example.com", None),), expect=(
            Expect("TLSRoute", "invalid-backend-ref-nonexistent",
                   {"ResolvedRefs": ("False", "BackendNotFound")}),)),
    "TLSRouteInvalidBackendRefUnknownKind": Test(
        "tlsroute-invalid-backendref-unknown-kind",
        f"{INFRA}/gateway-tlsroute-invalid-backend-ref-unknown-kind", (), listener_port=443,
        tls_cases=(TlsCase("example.com", None),), expect=(
            Expect("TLSRoute", "invalid-backend-ref-unknown-kind",
                   {"ResolvedRefs": ("False", "InvalidKind")}),)),
    "TLSRouteInvalidReferenceGrant": Test(
        "tlsroute-invalid-reference-grant", f"{INFRA}/gateway-tlsroute-referencegrant", (),
        expect=(Expect("TLSRoute", "gateway-conformance-infra-test",
                       {"ResolvedRefs": ("False", "RefNotPermitted")}),)),
    "TLSRouteInvalidNoMatchingListener": Test(
        "tlsroute-invalid-no-matching-listener",
        f"{INFRA}/gateway-tlsroute-tls-passthrough-only", (), expect=(
            Expect("TLSRoute", "tlsroute-no-matching-section-name", _NO_PARENT),), more=(
            Test("tlsroute-invalid-no-matching-listener", f"{INFRA}/gateway-tlsroute-http-only",
                 (), expect=(Expect("TLSRoute", "tlsroute-not-allowed-protocol-http",
                                    _NOT_ALLOWED),)),
            Test("tlsroute-invalid-no-matching-listener",
                 f"{INFRA}/gateway-tlsroute-https-only", (), expect=(
                     Expect("TLSRoute", "tlsroute-not-allowed-protocol-https",
                            _NOT_ALLOWED),)))),
    "TLSRouteInvalidNoMatchingListenerHostname": Test(
        "tlsroute-invalid-no-matching-listener-hostname",
        f"{INFRA}/gateway-tls-exact-hostname", (), expect=(
            Expect("TLSRoute", "tlsroute-hostname-mismatch-1",
                   {"Accepted": ("False", "NoMatchingListenerHostname")}),), more=(
            Test("tlsroute-invalid-no-matching-listener-hostname",
                 f"{INFRA}/gateway-tls-wildcard-hostname", (), expect=(
                     Expect("TLSRoute", "tlsroute-hostname-mismatch-2",
                            {"Accepted": ("False", "NoMatchingListenerHostname")}),)),)),
    # Terminate: the listener's certificate (tls-terminate-checks-certificate, made by the
    # harness as upstream's suite does) ends TLS; the TCP echo's plain port answers.
    "TLSRouteTerminateSimpleSameNamespace": Test(
        "tlsroute-terminate-simple-same-namespace", f"{INFRA}/gateway-tlsroute-terminate", (),
        listener_port=8443,
        tls_cases=(TlsCase("tls.example.com", "tcp-backend", http=False, terminated=True),),
        expect=(Expect("TLSRoute", "tlsroute-terminated-test", _TLS_OK),)),
    # Terminated, then TLS again to the TCP echo's TLS port, as its BackendTLSPolicy says
    # (the CA of tls-checks-ca-certificate, the name abc.example.com as SNI and SAN).
    "BackendTLSPolicyTLSRouteTerminate": Test(
        "backendtlspolicy-tlsroute-terminate", f"{INFRA}/gateway-btls-tlsroute-terminate", (),
        listener_port=8443,
        tls_cases=(TlsCase("tls.example.com", "tcp-backend", http=False, terminated=True,
                           backend_sni="abc.example.com"),),
        expect=(Expect("TLSRoute", "backendtlspolicy-tlsroute-terminate", _TLS_OK),
                Expect("BackendTLSPolicy", "btls-tlsroute-terminate-test", {
                    "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}))),
    "TLSRouteMixedTerminationSameNamespace": Test(
        "tlsroute-mixed-termination-same-namespace",
        f"{INFRA}/gateway-tlsroute-mixed-termination", (), listener_port=8883,
        tls_cases=(TlsCase("tls.example.com", "tcp-backend", http=False, terminated=True),
                   TlsCase("abc.example.com", "tcp-backend", http=False)),
        expect=(Expect("TLSRoute", "gateway-conformance-mixed-terminateroute", _TLS_OK),
                Expect("TLSRoute", "gateway-conformance-mixed-passthroughroute", _TLS_OK),
                *(Expect("Listener", f"gateway-tlsroute-mixed-termination/{name}",
                         {"Accepted": ("True", "Accepted")}, attached=1, supported="TLSRoute")
                  for name in ("tls-terminate", "tls-passthrough")))),
    "TLSRouteListenerTerminateSupportedKinds": Test(
        "tlsroute-listener-terminate-supported-kinds",
        f"{INFRA}/gateway-tlsroute-terminate-supported", (), expect=(
            Expect("Listener", "gateway-tlsroute-terminate-supported/tls-terminate",
                   {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", None)},
                   attached=0, supported="TLSRoute"),)),
    "TLSRouteListenerPassthroughSupportedKinds": Test(
        "tlsroute-listener-passthrough-supported-kinds",
        f"{INFRA}/gateway-tlsroute-passthrough-supported-kind", (), expect=(
            Expect("Listener", "gateway-tlsroute-passthrough-supported-kind/tls-passthrough",
                   {"ResolvedRefs": ("False", "InvalidRouteKinds")}, attached=0,
                   supported="TLSRoute"),)),
})

def _retry(path: str, code: int, succeed_after: int, status: int) -> Case:
    return Case(f"{path}?responseCode={code}&succeedAfter={succeed_after}&uuid={{uuid}}",
                status=status, backend=V3 if status == 200 else None)


_ALL = "/retry/code-all-attempts-2"
CASES["HTTPRouteRetry"] = Test("httproute-retry", GW, (
    _retry("/retry/code-500-attempts-3", 500, 2, 200),
    _retry("/retry/code-500-attempts-3", 500, 4, 500),
    _retry("/retry/code-500-attempts-3", 503, 2, 503),
    *(c for code in (500, 502, 503, 504)
      for c in (_retry(_ALL, code, 1, 200), _retry(_ALL, code, 3, code)))))

_ASK = {"access-control-request-method": "GET",
        "access-control-request-headers": "x-header-1, x-header-2"}
_CORS_1 = {"access-control-allow-methods": ("GET, OPTIONS", "OPTIONS, GET"),
           "access-control-allow-headers": ("x-header-1, x-header-2", "x-header-2, x-header-1"),
           "access-control-expose-headers": ("x-header-3, x-header-4",
                                             "x-header-4, x-header-3"),
           "access-control-max-age": ("3600",), "access-control-allow-credentials": ("true",)}
_CREDENTIALS = ("access-control-allow-credentials",)
_ANY_ORIGIN = ("*",)


def _preflight(path: str, origin: str, ask: dict[str, str], one_of: dict[str, tuple[str, ...]],
               absent: tuple[str, ...] = (), statuses: tuple[int, ...] = (200, 204)) -> Case:
    return Case(path, method="OPTIONS", headers={"Origin": origin, **ask}, statuses=statuses,
                response_one_of=one_of, response_absent=absent, echo=False, backend=None)


def _simple(path: str, origin: str, one_of: dict[str, tuple[str, ...]], method: str = "GET",
            absent: tuple[str, ...] = (), ask: dict[str, str] | None = None) -> Case:
    return Case(path, method=method, headers={"Origin": origin, **(ask or {})},
                response_one_of=one_of, response_absent=absent, backend=None)


CASES["HTTPRouteCORS"] = Test("httproute-cors", GW, (
    *(_preflight("/cors-1", origin, _ASK, {"access-control-allow-origin": (origin,), **_CORS_1})
      for origin in ("https://www.foo.com", "https://www.bar.com", "https://xpto.www.bar.com")),
    _preflight("/cors-1", "https://foobar.com", {"access-control-request-method": "GET"}, {},
               absent=("access-control-allow-origin",), statuses=(200, 204, 403)),
    *(_simple("/cors-1", origin, {"access-control-allow-origin": (origin,)}, ask=_ASK)
      for origin in ("https://www.foo.com", "https://www.bar.com")),
    _simple("/cors-1", "https://foobar.com", {}, absent=("access-control-allow-origin",),
            ask={"access-control-request-method": "GET"}),
    _preflight("/cors-2", "https://www.foo.com", {"access-control-request-method": "POST"},
               {"access-control-allow-methods": ("POST", "*"),
                "access-control-allow-origin": ("https://www.foo.com",)}, absent=_CREDENTIALS),
    _preflight("/cors-2", "https://www.foo.com", {"access-control-request-method": "POST"}, {},
               absent=_CREDENTIALS),
    *(_preflight("/cors-wildcard-origin", origin, {"access-control-request-method": "PUT"},
                 {"access-control-allow-origin": ("*", origin),
                  "access-control-allow-methods": ("PUT",)}, absent=_CREDENTIALS)
      for origin in ("https://foobar.com", "https://foobar.com:12345")),
    _simple("/cors-wildcard-origin", "https://foobar.com:12345",
            {"access-control-allow-origin": ("*", "https://foobar.com:12345")}, method="PUT"),
    _simple("/cors-wildcard-origin", "https://foobar.com",
            {"access-control-allow-origin": ("*", "https://foobar.com")}, method="PUT",
            absent=_CREDENTIALS),
    _preflight("/cors-wildcard-methods-headers", "https://other.foo.com",
               {**_ASK, "access-control-request-method": "PUT"},
               {"access-control-allow-origin": ("https://other.foo.com",),
                "access-control-allow-methods": ("PUT",),
                "access-control-allow-headers": ("x-header-1, x-header-2",
                                                 "x-header-2, x-header-1"),
                "access-control-allow-credentials": ("true",)}),
    _preflight("/cors-wildcard-methods-headers-unauth", "https://other.foo.com",
               {**_ASK, "access-control-request-method": "PUT"},
               {"access-control-allow-origin": ("https://other.foo.com", "*"),
                "access-control-allow-methods": ("PUT", "*"),
                "access-control-allow-headers": ("x-header-1, x-header-2",
                                                 "x-header-2, x-header-1", "*")},
               absent=_CREDENTIALS),
    _simple("/cors-wildcard-methods-headers", "https://other.foo.com",
            {"access-control-allow-origin": ("https://other.foo.com",),
             "access-control-allow-credentials": ("true",)}),
    _simple("/cors-wildcard-methods-headers-unauth", "https://other.foo.com",
            {"access-control-allow-origin": ("https://other.foo.com", "*")},
            absent=_CREDENTIALS)))

def _tcp(manifest: str, gateway: str, port: int, *backends: str | None,
         expect: tuple[Expect, ...] = (), **kw: Any) -> Test:
    return Test(manifest, f"{INFRA}/{gateway}", (), listener_port=port, tcp_cases=backends,
                expect=expect, **kw)


_TCP_OK = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
CASES.update({
    "TCPRouteParentRefAttachAll": _tcp(
        "tcproute-parentref-attach-all", "tcp-attach-all-gateway", 9310, "tcp-echo-attach-all",
        expect=(Expect("TCPRoute", "tcp-route-attach-all", _TCP_OK),), more=tuple(
            _tcp("tcproute-parentref-attach-all", "tcp-attach-all-gateway", port,
                 "tcp-echo-attach-all") for port in (9311, 9312, 9313))),
    "TCPRouteParentRefPortAndSectionName": _tcp(
        "tcproute-parentref-port-and-section-name", "tcp-multi-listener-gateway", 9300,
        "tcp-echo-one", expect=tuple(Expect("TCPRoute", route, _TCP_OK) for route in (
            "tcp-route-by-port", "tcp-route-by-section", "tcp-route-by-section-and-port")),
        more=(_tcp("tcproute-parentref-port-and-section-name", "tcp-multi-listener-gateway",
                   9301, "tcp-echo-two"),
              _tcp("tcproute-parentref-port-and-section-name", "tcp-multi-listener-gateway",
                   9302, "tcp-echo-three"))),
    "TCPRouteWeightedRouting": _tcp(
        "tcproute-weighted-routing", "tcp-weighted-gateway", 9300, "tcp-backend-v1",
        tcp_weights={"tcp-backend-v1": 0.7, "tcp-backend-v2": 0.3, "tcp-backend-v3": 0.0},
        expect=(Expect("TCPRoute", "tcp-weighted-route", _TCP_OK),)),
    "TCPRouteReferenceGrant": _tcp(
        "tcproute-reference-grant", "tcp-reference-grant-gateway", 9320,
        "tcp-reference-grant-backend",
        expect=(Expect("TCPRoute", "tcp-reference-grant", _TCP_OK),)),
    "TCPRouteInvalidNonTCPListener": Test(
        "tcproute-invalid-non-tcp-listener", f"{INFRA}/tcp-mixed-protocol-gateway", (),
        expect=(Expect("TCPRoute", "tcp-route", _NOT_ALLOWED),)),
    "TCPRouteInvalidBackendRefNonexistent": _tcp(
        "tcproute-invalid-backendref-nonexistent", "tcp-gateway-invalid-backend", 9300, None,
        expect=(Expect("TCPRoute", "tcp-route-invalid-backend-ref-nonexistent",
                       {"ResolvedRefs": ("False", "BackendNotFound")}),)),
    "TCPRouteInvalidCrossNamespaceBackendRef": _tcp(
        "tcproute-invalid-cross-namespace-backend-ref",
        "tcp-invalid-cross-namespace-backend-ref-gateway", 9321, None,
        expect=(Expect("TCPRoute", "tcp-invalid-cross-namespace-backend-ref",
                       {"ResolvedRefs": ("False", "RefNotPermitted")}),)),
})

_POLICY_OK = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
_NO_CA = {"Accepted": ("False", "NoValidCACertificate")}
_ABC = "abc.example.com"


def _policy(name: str, conditions: dict[str, tuple[str, str | None]]) -> Expect:
    return Expect("BackendTLSPolicy", name, conditions)


def _btls(path: str, sni: str | None = _ABC, **kw: Any) -> Case:
    """A request to a Service a BackendTLSPolicy targets: answered by the TLS backend, which
    saw the SNI the policy says (None: the request fails)."""
    if sni is None:
        return Case(path, host=kw.pop("host", _ABC), fails=True, **kw)
    return Case(path, host=kw.pop("host", _ABC), backend="tls-backend", seen_sni=sni, **kw)


_5XX = (500, 502, 503)
CASES.update({
    "BackendTLSPolicy": Test(
        "backendtlspolicy", f"{INFRA}/same-namespace-with-https-listener",
        (_btls("/backendtlspolicy", host="https-listener.org"),), listener_port=443, tls=True,
        expect=(_policy("normative-test", _POLICY_OK),), more=(
            Test("backendtlspolicy", GW, (
                _btls("/backendtlspolicy"),
                _btls("/backendtlspolicy-host-mismatch", None, host="abc.example.org"),
                _btls("/backendtlspolicy-cert-mismatch", None)), expect=(
                    _policy("normative-test", _POLICY_OK), _policy("host-mismatch", _POLICY_OK),
                    _policy("cert-mismatch", _POLICY_OK),
                    _policy("reconcile-test", _POLICY_OK))),)),
    "BackendTLSPolicyInvalidCACertificateRef": Test(
        "backendtlspolicy-invalid-ca-certificate-ref", GW, tuple(
            Case(f"/backendtlspolicy-{name}", host=_ABC, statuses=_5XX)
            for name in ("nonexistent-ca-certificate-ref", "malformed-ca-certificate-ref")),
        expect=tuple(_policy(name, {**_NO_CA, "ResolvedRefs": (
            "False", "InvalidCACertificateRef")}) for name in (
                "nonexistent-ca-certificate-ref", "malformed-ca-certificate-ref"))),
    "BackendTLSPolicyInvalidKind": Test(
        "backendtlspolicy-invalid-kind", GW,
        (Case("/backendtlspolicy-invalid-kind", host=_ABC, statuses=_5XX),),
        expect=(_policy("invalid-kind", {**_NO_CA, "ResolvedRefs": ("False", "InvalidKind")}),)),
    "BackendTLSPolicySANValidation": Test("backendtlspolicy-san", GW, (
        _btls("/backendtlspolicy-san-dns"), _btls("/backendtlspolicy-san-dns-mismatch", None),
        _btls("/backendtlspolicy-san-uri"), _btls("/backendtlspolicy-san-uri-mismatch", None),
        _btls("/backendtlspolicy-multiple-sans"),
        _btls("/backendtlspolicy-multiple-mismatch-sans", None)), expect=tuple(
            _policy(name, {"Accepted": ("True", "Accepted")}) for name in (
                "san-dns", "san-dns-mismatch", "san-uri", "san-uri-mismatch", "multiple-sans",
                "multiple-mismatch-sans"))),
    "BackendTLSPolicyConflictResolution": Test("backendtlspolicy-conflict-resolution", GW, (
        _btls("/backendtlspolicy-conflicted-without-section-name", "other.example.com"),
        _btls("/backendtlspolicy-conflicted-with-section-name", "other.example.com"),
        _btls("/backendtlspolicy-not-conflicted-with-section-name", "other.example.com"),
        _btls("/backendtlspolicy-not-conflicted-without-section-name", _ABC)), expect=(
            _policy("conflicted-without-section-name-1", {"Accepted": ("True", "Accepted")}),
            _policy("conflicted-without-section-name-2", {"Accepted": ("False", "Conflicted")}),
            _policy("conflicted-with-section-name-1", {"Accepted": ("True", "Accepted")}),
            _policy("conflicted-with-section-name-2", {"Accepted": ("False", "Conflicted")}),
            _policy("not-conflicted-with-section-name", {"Accepted": ("True", "Accepted")}),
            _policy("not-conflicted-without-section-name",
                    {"Accepted": ("True", "Accepted")}))),
})


# Echo to the policy's Service succeeds; EchoTwo (hostname mismatch) and the other route's
# Echo (a CA that did not sign the backend's certificate) fail.
CASES["BackendTLSPolicyGRPCRoute"] = Test("backendtlspolicy-grpcroute", GW, (), grpc_cases=(
    _g(authority=_ABC), _g("EchoTwo", None, authority=_ABC, fails=True),
    _g("Echo", None, authority="cert-mismatch.example.com", fails=True)),
    expect=tuple(_policy(name, _POLICY_OK) for name in (
        "grpc-normative-test", "grpc-host-mismatch", "grpc-cert-mismatch")))


def _mtls(host: str, backend: str, client_cert: str | None, refused: bool = False) -> Case:
    """A request to an HTTPS listener validating client certificates, presenting
    `client_cert` (None: none): answered by `backend`, or (`refused`) failing."""
    if refused:
        return Case("/", host=host, client_cert=client_cert, fails=True)
    return Case("/", host=host, backend=backend, client_cert=client_cert)


_SECOND = "second-example.org"
CASES.update({
    # The matching client certificate passes, the other CA's is refused, on each port.
    "GatewayFrontendClientCertificateValidation": Test(
        "gateway-with-clientcertificate-validation", f"{INFRA}/client-validation-default", (
            _mtls("example.org", V1, CLIENT_CERT),
            _mtls("example.org", V1, PER_PORT_CLIENT_CERT, refused=True)),
        listener_port=443, tls=True, more=(Test(
            "gateway-with-clientcertificate-validation", f"{INFRA}/client-validation-default", (
                _mtls(_SECOND, V2, PER_PORT_CLIENT_CERT),
                _mtls(_SECOND, V2, CLIENT_CERT, refused=True)),
            listener_port=8443, tls=True),)),
    # AllowInsecureFallback: matching, other and no client certificate all pass.
    "GatewayFrontendClientCertificateValidationInsecureFallback": Test(
        "gateway-with-clientcertificate-validation-insecure-fallback",
        f"{INFRA}/client-validation-insecure-fallback", tuple(
            _mtls("example.org", V1, cert) for cert in (CLIENT_CERT, PER_PORT_CLIENT_CERT, None)),
        listener_port=443, tls=True, expect=(Expect(
            "Gateway", "client-validation-insecure-fallback", {
                "InsecureFrontendValidationMode": ("True", "ConfigurationChanged")}),),
        more=(Test(
            "gateway-with-clientcertificate-validation-insecure-fallback",
            f"{INFRA}/client-validation-insecure-fallback", tuple(
                _mtls(_SECOND, V2, cert) for cert in (PER_PORT_CLIENT_CERT, CLIENT_CERT, None)),
            listener_port=8443, tls=True),)),
})

# Upstream sends "/" with Protocol H2CPriorKnowledge to the Gateway and expects infra-backend-v1
# to answer (through its h2c port); the websocket test dials ws://GATEWAY/ws and expects a text
# and a binary message echoed.
CASES["HTTPRouteBackendProtocolH2C"] = Test("httproute-backend-protocol-h2c", GW,
                                            (_c("/", h2c=True),))
CASES["HTTPRouteBackendProtocolWebSocket"] = Test("httproute-backend-protocol-websocket", GW, (),
                                                  websocket="/ws")

CASES["HTTPRouteBackendRequestHeaderModifier"] = Test(
    "httproute-request-header-modifier-backend", GW,
    CASES["HTTPRouteRequestHeaderModifier"].cases)

# The features each upstream test needs (its `Features`, less Gateway), transcribed from
# conformance/tests/*.go at the same commit: which profile, and core or extended, it counts in.
FEATURES: dict[str, tuple[str, ...]] = {
    "HTTPRouteSimpleSameNamespace": ("HTTPRoute",),
    "HTTPRouteMatching": ("HTTPRoute",),
    "HTTPRouteExactPathMatching": ("HTTPRoute",),
    "HTTPRouteHeaderMatching": ("HTTPRoute",),
    "HTTPRouteMethodMatching": ("HTTPRoute", "HTTPRouteMethodMatching"),
    "HTTPRouteQueryParamMatching": ("HTTPRoute", "HTTPRouteQueryParamMatching"),
    "HTTPRoutePathMatchOrder": ("HTTPRoute",),
    "HTTPRouteMatchingAcrossRoutes": ("HTTPRoute",),
    "HTTPRouteRequestHeaderModifier": ("HTTPRoute",),
    "HTTPRouteBackendRequestHeaderModifier": (
        "HTTPRoute", "HTTPRouteBackendRequestHeaderModification"),
    "HTTPRouteResponseHeaderModifier": ("HTTPRoute", "HTTPRouteResponseHeaderModification"),
    "HTTPRouteRedirectScheme": ("HTTPRoute", "HTTPRouteSchemeRedirect"),
    "HTTPRouteRedirectPath": ("HTTPRoute", "HTTPRoutePathRedirect"),
    "HTTPRouteRedirectPort": ("HTTPRoute", "HTTPRoutePortRedirect"),
    "HTTPRouteRedirectHostAndStatus": ("HTTPRoute",),
    "HTTPRouteRewritePath": ("HTTPRoute", "HTTPRoutePathRewrite"),
    "HTTPRouteRewriteHost": ("HTTPRoute", "HTTPRouteHostRewrite"),
    "HTTPRouteHostnameIntersection": ("HTTPRoute",),
    "HTTPRouteListenerHostnameMatching": ("HTTPRoute",),
    "HTTPRouteCrossNamespace": ("HTTPRoute",),
    "HTTPRouteReferenceGrant": ("HTTPRoute", "ReferenceGrant"),
    "HTTPRouteInvalidNonExistentBackendRef": ("HTTPRoute",),
    "HTTPRouteInvalidCrossNamespaceBackendRef": ("HTTPRoute", "ReferenceGrant"),
    "HTTPRoutePartiallyInvalidViaInvalidReferenceGrant": ("HTTPRoute", "ReferenceGrant"),
    "HTTPRouteTimeoutRequest": ("HTTPRoute", "HTTPRouteRequestTimeout"),
    "HTTPRouteTimeoutBackendRequest": ("HTTPRoute", "HTTPRouteBackendTimeout"),
    "HTTPRouteRequestMirror": ("HTTPRoute", "HTTPRouteRequestMirror"),
    "HTTPRouteHTTPSListener": ("HTTPRoute",),
    "HTTPRouteHTTPSListenerDetectMisdirectedRequests": (
        "HTTPRoute", "GatewayHTTPSListenerDetectMisdirectedRequests"),
    "HTTPRoute303Redirect": ("HTTPRoute", "HTTPRoute303RedirectStatusCode"),
    "HTTPRoute307Redirect": ("HTTPRoute", "HTTPRoute307RedirectStatusCode"),
    "HTTPRoute308Redirect": ("HTTPRoute", "HTTPRoute308RedirectStatusCode"),
    "HTTPRouteRedirectPortAndScheme": ("HTTPRoute", "HTTPRoutePortRedirect", "GatewayPort8080"),
    "HTTPRouteListenerPortMatching": ("HTTPRoute", "HTTPRouteParentRefPort"),
    "GatewayHTTPListenerIsolation": ("GatewayHTTPListenerIsolation", "HTTPRoute"),
    "HTTPRouteInvalidBackendRefUnknownKind": ("HTTPRoute",),
    "HTTPRouteNamedRule": ("HTTPRoute", "HTTPRouteNamedRouteRule"),
    "HTTPRouteRequestMultipleMirrors": (
        "HTTPRoute", "HTTPRouteRequestMirror", "HTTPRouteRequestMultipleMirrors"),
    "HTTPRouteRequestHeaderModifierBackendWeights": (
        "HTTPRouteBackendRequestHeaderModification", "HTTPRoute"),
    "HTTPRouteWeight": ("HTTPRoute",),
    "HTTPRouteInvalidParentRefNotMatchingSectionName": ("HTTPRoute",),
    "HTTPRouteInvalidParentRefNotMatchingListenerPort": (
        "HTTPRoute", "HTTPRouteDestinationPortMatching"),
    "HTTPRouteInvalidParentRefSectionNameNotMatchingPort": ("HTTPRoute", "HTTPRouteParentRefPort"),
    "HTTPRouteDisallowedKind": ("HTTPRoute", "TLSRoute"),
    "HTTPRouteInvalidCrossNamespaceParentRef": ("HTTPRoute",),
    "GatewayWithAttachedRoutes": ("HTTPRoute",),
    "GatewayWithAttachedRoutesWithPort8080": ("GatewayPort8080", "HTTPRoute"),
    "HTTPRouteRequestPercentageMirror": ("HTTPRoute", "HTTPRouteRequestPercentageMirror"),
    "TLSRouteSimpleSameNamespace": ("TLSRoute",),
    "TLSRouteHostnameIntersection": ("TLSRoute",),
    "TLSRouteInvalidBackendRefNonexistent": ("TLSRoute",),
    "TLSRouteInvalidBackendRefUnknownKind": ("TLSRoute",),
    "TLSRouteInvalidReferenceGrant": ("TLSRoute", "ReferenceGrant"),
    "TLSRouteInvalidNoMatchingListener": ("TLSRoute",),
    "TLSRouteInvalidNoMatchingListenerHostname": ("TLSRoute",),
    "TLSRouteTerminateSimpleSameNamespace": ("TLSRoute", "TLSRouteModeTerminate"),
    "TLSRouteMixedTerminationSameNamespace": (
        "TLSRoute", "TLSRouteModeTerminate", "TLSRouteModeMixed"),
    "TLSRouteListenerTerminateSupportedKinds": ("TLSRoute", "TLSRouteModeTerminate"),
    "BackendTLSPolicyTLSRouteTerminate": ("TLSRoute", "TLSRouteModeTerminate",
                                          "BackendTLSPolicy"),
    "TLSRouteListenerPassthroughSupportedKinds": ("TLSRoute",),
    "BackendTLSPolicy": ("HTTPRoute", "BackendTLSPolicy"),
    "BackendTLSPolicyInvalidCACertificateRef": ("HTTPRoute", "BackendTLSPolicy"),
    "BackendTLSPolicyInvalidKind": ("HTTPRoute", "BackendTLSPolicy"),
    "BackendTLSPolicySANValidation": (
        "HTTPRoute", "BackendTLSPolicy", "BackendTLSPolicySANValidation"),
    "BackendTLSPolicyConflictResolution": ("HTTPRoute", "BackendTLSPolicy"),
    "BackendTLSPolicyGRPCRoute": ("GRPCRoute", "BackendTLSPolicy"),
    "GatewayFrontendClientCertificateValidation": (
        "HTTPRoute", "GatewayFrontendClientCertificateValidation"),
    "GatewayFrontendClientCertificateValidationInsecureFallback": (
        "HTTPRoute", "GatewayFrontendClientCertificateValidation",
        "GatewayFrontendClientCertificateValidationInsecureFallback"),
    "HTTPRouteRetry": ("HTTPRoute", "HTTPRouteRetry"),
    "HTTPRouteCORS": ("HTTPRoute", "HTTPRouteCORS"),
    "TCPRouteParentRefAttachAll": ("TCPRoute",),
    "TCPRouteParentRefPortAndSectionName": ("TCPRoute",),
    "TCPRouteWeightedRouting": ("TCPRoute",),
    "TCPRouteReferenceGrant": ("TCPRoute", "ReferenceGrant"),
    "TCPRouteInvalidNonTCPListener": ("TCPRoute",),
    "TCPRouteInvalidBackendRefNonexistent": ("TCPRoute",),
    "TCPRouteInvalidCrossNamespaceBackendRef": ("TCPRoute", "ReferenceGrant"),
    "GRPCExactMethodMatching": ("GRPCRoute",),
    "GRPCRouteHeaderMatching": ("GRPCRoute",),
    "GRPCRouteListenerHostnameMatching": ("GRPCRoute",),
    "GRPCRouteNamedRule": ("GRPCRoute", "GRPCRouteNamedRouteRule"),
    "GRPCRouteRequestHeaderModifier": ("GRPCRoute", "GRPCRouteRequestHeaderModifier"),
    "GRPCRouteWeight": ("GRPCRoute",),
}


# The upstream mesh tests (conformance/tests/mesh/*.go), run by
# tests/e2e/test_gatewayapi_mesh_conformance.py through a real client sidecar.
_MESH = ("Mesh", "HTTPRoute")
MESH_FEATURES: dict[str, tuple[str, ...]] = {
    "MeshBasic": ("Mesh",),
    "MeshHTTPRouteSimpleSameNamespace": _MESH,
    "MeshHTTPRouteMatching": _MESH,
    "MeshHTTPRouteWeight": _MESH,
    "MeshHTTPRouteRequestHeaderModifier": _MESH,
    "MeshHTTPRouteBackendRequestHeaderModifier": (
        *_MESH, "MeshHTTPRouteBackendRequestHeaderModification"),
    "MeshHTTPRouteQueryParamMatching": (*_MESH, "MeshHTTPRouteQueryParamMatching"),
    "MeshHTTPRouteRedirectHostAndStatus": _MESH,
    "MeshHTTPRouteRedirectPath": (*_MESH, "MeshHTTPRouteRedirectPath"),
    "MeshHTTPRouteRedirectPort": (*_MESH, "MeshHTTPRouteRedirectPort"),
    "MeshHTTPRouteSchemeRedirect": (*_MESH, "MeshHTTPRouteSchemeRedirect"),
    "MeshHTTPRoute303Redirect": (*_MESH, "HTTPRoute303RedirectStatusCode"),
    "MeshHTTPRoute307Redirect": (*_MESH, "HTTPRoute307RedirectStatusCode"),
    "MeshHTTPRoute308Redirect": (*_MESH, "HTTPRoute308RedirectStatusCode"),
    "MeshHTTPRouteRewritePath": (*_MESH, "MeshHTTPRouteRewritePath"),
    "MeshHTTPRouteNamedRule": (*_MESH, "MeshHTTPRouteNamedRouteRule"),
    "MeshTrafficSplit": _MESH,
    "MeshFrontend": (*_MESH, "HTTPRouteResponseHeaderModification"),
    "MeshFrontendHostname": (*_MESH, "MeshClusterIPMatching",
                             "HTTPRouteResponseHeaderModification"),
    "MeshConsumerRoute": (*_MESH, "MeshConsumerRoute", "HTTPRouteResponseHeaderModification"),
    "MeshGRPCRouteRequestHeaderModifier": ("Mesh", "GRPCRoute"),
    "MeshGRPCRouteWeight": ("Mesh", "GRPCRoute"),
}
FEATURES["HTTPRouteBackendProtocolH2C"] = ("HTTPRoute", "HTTPRouteBackendProtocolH2C")
FEATURES["HTTPRouteBackendProtocolWebSocket"] = ("HTTPRoute", "HTTPRouteBackendProtocolWebSocket")
FEATURES.update(MESH_FEATURES)
# Each test's result ("PASS" or "FAIL (n)"), from every conformance module of this run: the
# report written at the end of each module holds all the results so far.
RESULTS: dict[str, str] = {}

# ---- the conformance report ----------------------------------------------------------------------

# The profiles upstream defines (conformance/utils/suite/profiles.go): each one's core features;
# a test counts in a profile when its route kind's feature is there, as core when all of its
# features are core, else as extended. Mesh is GAMMA's.
PROFILES: dict[str, tuple[str, ...]] = {
    "GATEWAY-HTTP": ("HTTPRoute", "ReferenceGrant"),
    "GATEWAY-TLS": ("TLSRoute", "ReferenceGrant"),
    "GATEWAY-TCP": ("TCPRoute", "ReferenceGrant"),
    "GATEWAY-GRPC": ("GRPCRoute", "ReferenceGrant"),
    "MESH-HTTP": ("Mesh", "HTTPRoute"),
    "MESH-GRPC": ("Mesh", "GRPCRoute"),
}
_KIND_OF = {"GATEWAY-HTTP": "HTTPRoute", "GATEWAY-TLS": "TLSRoute",
            "GATEWAY-TCP": "TCPRoute", "GATEWAY-GRPC": "GRPCRoute", "MESH-HTTP": "Mesh",
            "MESH-GRPC": "Mesh"}
_OTHER_KINDS = {"TLSRoute", "GRPCRoute", "TCPRoute", "UDPRoute", "Mesh", "HTTPRoute"}
# What meshpilot does not claim, per profile (docs/gateway-api.md says why).
UNSUPPORTED: dict[str, tuple[str, ...]] = {
    "GATEWAY-HTTP": ("GatewayAddressEmpty", "GatewayInfrastructurePropagation",
                     "GatewayStaticAddresses"),
    "GATEWAY-TLS": (),
    "GATEWAY-TCP": (),
    "GATEWAY-GRPC": (),
    "MESH-HTTP": (),
    "MESH-GRPC": (),
}


# What each profile's run covers, said in the report (upstream's `summary`).
SUMMARIES: dict[str, str] = {
    "GATEWAY-HTTP": "Upstream tests whose manifests are in the shared copy, through a real Envoy "
                    "(statuses as meshpilot reports them). Core tests that watch objects change "
                    "through a Kubernetes API server are not run: a partial core.",
    "GATEWAY-TLS": "TLSRoute by SNI through a real Envoy: passed through to TLS backends, "
                   "or terminated at the Gateway (mode Terminate, also beside passthrough "
                   "listeners on one port) to plain TCP backends.",
    "GATEWAY-TCP": "Upstream TCPRoute tests through a real Envoy to a Python TCP echo on "
                   "loopback (statuses as meshpilot reports them).",
    "GATEWAY-GRPC": "Upstream GRPCRoute tests through a real Envoy to a Python transcription of "
                    "the upstream gRPC echo (grpcecho.proto, tests/grpc_conformance_echo.py), "
                    "which also serves TLS for BackendTLSPolicyGRPCRoute.",
    "MESH-HTTP": "The upstream HTTPRoute mesh tests whose manifests are in the shared copy, "
                 "through a real client sidecar Envoy calling the parent Service "
                 "(tests/e2e/test_gatewayapi_mesh_conformance.py), and MeshBasic (no "
                 "manifest). MeshTrafficSplit, MeshFrontend, MeshFrontendHostname and "
                 "MeshConsumerRoute have no manifest there: run on meshpilot's own inputs for "
                 "the same behaviour. MeshPorts is not run (a native Service serves one "
                 "port): a partial core.",
    "MESH-GRPC": "The upstream GRPCRoute mesh tests, through a real client sidecar Envoy "
                 "calling the parent Service to the Python gRPC echo "
                 "(tests/grpc_conformance_echo.py).",
}


def _profile_of(name: str) -> tuple[str, bool] | None:
    """(profile, core?) a test counts in; None: in none (it needs kinds of two profiles)."""
    needed = set(FEATURES[name])
    for profile, core in PROFILES.items():
        kind = _KIND_OF[profile]
        if kind not in needed or (needed & _OTHER_KINDS) - {kind, *core}:
            continue
        return profile, needed <= set(core)
    return None


def conformance_report(results: dict[str, str], version: str, date: str) -> dict[str, Any]:
    """A ConformanceReport (the format implementations publish upstream, conformance/reports)
    of `results` (test -> "PASS" or "FAIL (n)"; a test not in it was not run), with each
    test's result listed per profile."""
    profiles = []
    for profile in PROFILES:
        parts: dict[str, dict[str, Any]] = {}
        for name, result in results.items():
            where = _profile_of(name)
            if where is None or where[0] != profile:
                continue
            part = parts.setdefault("core" if where[1] else "extended", {"tests": {}})
            part["tests"][name] = "Passed" if result == "PASS" else "Failed"
        entry: dict[str, Any] = {"name": profile, "summary": SUMMARIES[profile]}
        for key in ("core", "extended"):
            part = parts.get(key)
            if part is None:
                if key == "core" or UNSUPPORTED[profile]:
                    entry[key] = {"result": "skipped", "statistics": {
                        "Passed": 0, "Failed": 0, "Skipped": 0}}
                if key == "extended" and UNSUPPORTED[profile]:
                    entry[key]["supportedFeatures"] = []
                    entry[key]["unsupportedFeatures"] = sorted(UNSUPPORTED[profile])
                continue
            tests = part["tests"]
            failed = sorted(n for n, r in tests.items() if r == "Failed")
            section: dict[str, Any] = {
                "result": "failure" if failed else ("success" if key == "extended"
                                                    else "partial"),
                "statistics": {"Passed": len(tests) - len(failed), "Failed": len(failed),
                               "Skipped": 0},
                "tests": dict(sorted(tests.items())),
            }
            if failed:
                section["failedTests"] = failed
            if key == "extended":
                core = set(PROFILES[profile])
                # Claimed: the features of tests that passed, less those said unsupported (a
                # test may pass on status alone).
                section["supportedFeatures"] = sorted({
                    f for n, r in tests.items() if r == "Passed" for f in FEATURES[n]
                    if f not in core and f not in UNSUPPORTED[profile]})
                section["unsupportedFeatures"] = sorted(UNSUPPORTED[profile])
            entry[key] = section
        profiles.append(entry)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "ConformanceReport",
        "date": date,
        "gatewayAPIChannel": "experimental",
        "gatewayAPIVersion": f"main @ {UPSTREAM_COMMIT}",
        "implementation": {"organization": "meshpilot", "project": "meshpilot",
                           "version": version},
        "mode": "standalone-files",
        "profiles": profiles,
    }


def write_report() -> None:
    """With MESHPILOT_CONFORMANCE_REPORT=FILE, this run's `RESULTS` as a ConformanceReport in
    FILE (docs/gateway-api-conformance.yaml is one, from one run of both conformance modules:
    `pytest -p no:xdist tests/e2e/test_gatewayapi_conformance.py
    tests/e2e/test_gatewayapi_mesh_conformance.py`)."""
    target = os.environ.get("MESHPILOT_CONFORMANCE_REPORT")
    if not target:
        return
    repository = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(repository), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    report = conformance_report(RESULTS, f"commit {commit} (not released)", now)
    Path(target).write_text(
        "# Written by tests/gatewayapi_conformance.py (MESHPILOT_CONFORMANCE_REPORT):\n"
        "# the upstream tests run through a real Envoy; see docs/gateway-api.md.\n"
        + yaml.safe_dump(report, sort_keys=False))
    print(f"conformance report written to {target}")

UPSTREAM_COMMIT = "4564255ac2c35d582249b3cdf261bdf51c8bca32"

DEFAULT_HOST = Case.__dataclass_fields__["host"].default


def request(port: int, case: Case, ca: bytes | None = None,
            listener_port: int | None = None,
            client_certs: dict[str, tuple[Path, Path]] | None = None,
            ) -> tuple[int, dict[str, str], bytes]:
    """The case's request to a listener on `port`; over TLS trusting `ca` when given (SNI: the
    case's host), presenting the case's client certificate (its (cert, key) files in
    `client_certs`). A request to the Gateway's address carries the listener's port in Host
    unless it is the scheme's default, as a client's does."""
    host = case.host
    if host == DEFAULT_HOST and listener_port not in (None, 443 if ca else 80):
        host = f"{host}:{listener_port}"
    headers = {"Host": host, **case.headers}
    if case.set_response:
        headers["X-Echo-Set-Header"] = ",".join(f"{k}:{v}" for k, v in case.set_response.items())
    path = case.path.replace("{uuid}", uuid.uuid4().hex)  # a new one per request (retries)
    if case.h2c:
        return h2c_get(port, path, headers, case.method)
    connection: HTTPConnection
    if ca is None:
        connection = HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        context = ssl.create_default_context(cadata=ca.decode())
        if case.client_cert is not None:
            context.load_cert_chain(*(client_certs or {})[case.client_cert])
        connection = _SniConnection(case.server_name or host.partition(":")[0], "127.0.0.1",
                                    port, timeout=10, context=context)
    try:
        connection.request(case.method, path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        merged: dict[str, str] = {}
        for name, value in response.getheaders():
            key = name.lower()
            merged[key] = f"{merged[key]},{value}" if key in merged else value
        return response.status, merged, body
    finally:
        connection.close()


class _SniConnection(HTTPSConnection):
    """HTTPS to an address, with SNI and certificate check for another name (the Host)."""

    def __init__(self, server_name: str, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.server_name = server_name

    def connect(self) -> None:
        HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(  # type: ignore[attr-defined]
            self.sock, server_hostname=self.server_name)


def check_statuses(test: Test, objects: list[dict[str, Any]]) -> list[str]:
    """What differs from the statuses upstream asserts, in `/debug/status` objects."""
    problems: list[str] = []
    for want in test.expect:
        name = want.name if want.name.count("/") == (2 if want.kind == "Listener" else 1) \
            else f"{INFRA}/{want.name}"
        found = [o for o in objects if o["kind"] == want.kind and o["name"] == name
                 # A route's and a policy's status are per parent (ancestor) Gateway.
                 and (want.kind in ("Listener", "Gateway") or o["parent"].split("/")[:2]
                      == test.gateway.split("/"))]
        if len(found) != 1:
            problems.append(f"{want.kind} {name}: {len(found)} statuses")
            continue
        conditions = {c["type"]: c for c in found[0]["conditions"]}
        for kind, (status, reason) in want.conditions.items():
            got = conditions.get(kind)
            if got is None or got["status"] != status or \
                    (reason is not None and got["reason"] != reason):
                problems.append(f"{want.kind} {name}: {kind} is {got}, expected "
                                f"{status} ({reason or 'any reason'})")
        if want.attached is not None and found[0].get("attachedRoutes") != str(want.attached):
            problems.append(f"{name}: attachedRoutes {found[0].get('attachedRoutes')}, "
                            f"expected {want.attached}")
        if want.supported is not None and found[0].get("supportedKinds") != want.supported:
            problems.append(f"{name}: supportedKinds {found[0].get('supportedKinds')!r}, "
                            f"expected {want.supported!r}")
    return problems


def grpc_check(port: int, case: GrpcCase) -> list[str]:
    """One call of `case` to the listener on `port`, compared as upstream's compareResponse
    does (code; for OK the method echoed, the namespace, the pod's name prefix), and the
    headers the backend saw against `seen` and `absent`."""
    code, response = grpc_echo.call(port, case.method, case.metadata, case.authority)
    if case.fails:
        return [] if code.name != "OK" else ["answered OK, expected a failure"]
    if code.name != case.code:
        return [f"status {code.name}, expected {case.code}"]
    if response is None:
        return []
    assertions = response.assertions
    problems = []
    if assertions.fully_qualified_method != f"/{grpc_echo.SERVICE}/{case.method}":
        problems.append(f"the backend was called as {assertions.fully_qualified_method}")
    if case.namespace and assertions.context.namespace != case.namespace:
        problems.append(f"answered from namespace {assertions.context.namespace}")
    if case.backend is not None and not assertions.context.pod.startswith(case.backend):
        problems.append(f"answered by {assertions.context.pod}, expected {case.backend}")
    seen = grpc_echo.seen_headers(response)
    problems += [f"the backend saw {name}: {seen.get(name)!r}, expected {value!r}"
                 for name, value in case.seen.items() if seen.get(name) != value]
    problems += [f"the backend saw {name}, which should be gone" for name in case.absent
                 if name in seen]
    return problems


def grpc_pod(port: int) -> str | None:
    """The pod answering one Echo call (upstream's weight sampler), None on an error."""
    _, response = grpc_echo.call(port, "Echo", {"x-jitter": uuid.uuid4().hex})
    return response.assertions.context.pod if response is not None else None


def check(case: Case, status: int, headers: dict[str, str], body: bytes) -> list[str]:
    """What differs from the case (empty: it passed), as upstream's CompareRoundTrip."""
    problems: list[str] = []
    if case.fails:
        return [] if status != 200 else ["answered 200, expected a failure"]
    if case.statuses:
        return [] if status in case.statuses else [f"status {status}, expected one of "
                                                   f"{case.statuses}"]
    if status != case.status:
        return [f"status {status}, expected {case.status}"]
    if case.redirect is not None:
        location = urlsplit(headers.get("location", ""))
        got = {"scheme": location.scheme, "host": location.hostname or "",
               "port": str(location.port or ""), "path": location.path}
        want = {"scheme": "http", "host": case.host.partition(":")[0],
                "path": urlsplit(case.path).path, **case.redirect}
        for key in ("scheme", "host", "path"):
            if got[key] != want[key]:
                problems.append(f"redirect {key} {got[key]!r}, expected {want[key]!r}")
        if "port" in want and got["port"] != want["port"]:
            problems.append(f"redirect port {got['port']!r}, expected {want['port']!r}")
        if "port" not in want and got["port"] not in ("", str({"http": 80, "https": 443}
                                                             .get(got["scheme"], ""))):
            problems.append(f"redirect port {got['port']!r} for scheme {got['scheme']}")
        return problems
    for name, value in case.response_headers.items():
        if headers.get(name.lower()) != value:
            problems.append(f"response header {name}: {headers.get(name.lower())!r}, "
                            f"expected {value!r}")
    for name in case.response_absent:
        if name.lower() in headers:
            problems.append(f"response header {name} should be absent")
    for name, values in case.response_one_of.items():
        got = headers.get(name.lower())
        if got is None or got.replace(" ", "") not in {v.replace(" ", "") for v in values}:
            problems.append(f"response header {name}: {got!r}, expected one of {values}")
    if status != 200 or case.status != 200 or not case.echo:
        return problems
    try:
        echoed = json.loads(body)
    except ValueError:
        return [*problems, f"not an echo reply: {body[:100]!r}"]
    if case.backend is not None:
        if not echoed["pod"].startswith(case.backend):
            problems.append(f"served by {echoed['pod']}, expected {case.backend}")
        if echoed["namespace"] != case.namespace:
            problems.append(f"namespace {echoed['namespace']}, expected {case.namespace}")
    seen = {name.lower(): ",".join(values) for name, values in echoed["headers"].items()}
    if case.seen_path is not None and echoed["path"] != case.seen_path:
        problems.append(f"backend saw path {echoed['path']!r}, expected {case.seen_path!r}")
    if case.seen_sni is not None and echoed.get("tls", {}).get("serverName") != case.seen_sni:
        problems.append(f"backend saw SNI {echoed.get('tls')}, expected {case.seen_sni!r}")
    if case.seen_host is not None and echoed["host"] != case.seen_host:
        problems.append(f"backend saw host {echoed['host']!r}, expected {case.seen_host!r}")
    for name, value in case.seen_headers.items():
        if seen.get(name.lower()) != value:
            problems.append(f"backend saw {name}: {seen.get(name.lower())!r}, expected {value!r}")
    for name in case.seen_absent:
        if name.lower() in seen:
            problems.append(f"backend saw {name}, which should be absent")
    return problems


def tls_connect(port: int, case: TlsCase, ca: bytes) -> list[str]:
    """One TLS connection of `case` to a listener on `port` (trusting `ca`): what differs from
    what upstream expects (empty: it passed)."""
    context = ssl.create_default_context(cadata=ca.decode())
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError as error:
        return [f"connect: {error}"]
    try:
        try:
            conn = context.wrap_socket(raw, server_hostname=case.server_name)
        except (ssl.SSLError, OSError) as error:
            return [] if case.backend is None else [f"TLS handshake: {error}"]
        if case.backend is None:
            return [f"{case.server_name}: the connection was accepted ({conn.version()}), "
                    "expected it rejected"]
        if case.http:
            conn.sendall(f"GET / HTTP/1.1\r\nHost: {case.server_name}\r\n"
                         "Connection: close\r\n\r\n".encode())
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                return [f"{case.server_name}: {head[:60]!r}"]
            echoed = json.loads(body)
            found = (echoed["pod"], echoed["namespace"], echoed["host"])
            want = (f"{case.backend}-pod", case.namespace, case.server_name)
            return [] if found == want else [f"{case.server_name}: {found}, expected {want}"]
        reader = conn.makefile("rb")
        problems = []
        if reader.readline() != TCP_WELCOME:
            problems.append("no welcome line")
        reencrypted = case.terminated and case.backend_sni is not None
        is_tls = b"false" if case.terminated and not reencrypted else b"true"
        for command, answer in ((b"PING", b"PONG"), (b"IS_TLS", is_tls)):
            conn.sendall(command + b"\n")
            got = reader.readline().strip()
            if got != answer:
                problems.append(f"{command.decode()}: {got!r}, expected {answer!r}")
        conn.sendall(b"TEST\n")
        payload = json.loads(reader.readline())
        if not payload["pod"].startswith(f"{case.backend}-") or \
                payload["namespace"] != case.namespace:
            problems.append(f"served by {payload['namespace']}/{payload['pod']}")
        seen = payload["tls"].get("serverName") or ""
        if seen != (case.backend_sni if reencrypted else
                    "" if case.terminated else case.server_name):
            problems.append(f"the backend saw SNI {seen!r}")
        return problems
    except (OSError, ValueError) as error:
        return [] if case.backend is None else [f"{case.server_name}: {error}"]
    finally:
        raw.close()
