"""Test support: a real `meshpilot serve` process with the Envoys it feeds, the small servers
tests make (loopback HTTP/HTTPS, started and stopped together), policy writers and bounded polling.

Kept apart from conftest.py so tests can import these helpers by name.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from meshpilot.base.netutil import free_port
from meshpilot.ca.tokens import TokenAuthority
from meshpilot.local.bootstrap import render_bootstrap
from meshpilot.local.envoy_process import EnvoyProcess

T = TypeVar("T")


def eventually(check: Callable[[], T], *, timeout: float = 15.0, interval: float = 0.05,
               what: str = "condition") -> T:
    """Poll `check` until it returns a truthy value (returned) or raise with its last error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = check()
            if result:
                return result
            last = result
        except Exception as e:  # any failure means "not yet"
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a test looks at the redirect itself


_OPENER = urllib.request.build_opener(_NoRedirect)


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0,
             method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body); redirects are returned, not followed."""
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with _OPENER.open(request, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def backend_of(port: int, path: str = "/", headers: dict[str, str] | None = None) -> str | None:
    """Which echo backend answered a request through an Envoy listener (None if not 200)."""
    status, _, body = http_get(f"http://127.0.0.1:{port}{path}", headers)
    return json.loads(body)["backend"] if status == 200 else None


# ---- policy files --------------------------------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    """Replace a file the way careful editors do: write aside, then rename into place, so a
    watcher never reads half a file."""
    aside = path.with_name(f".{path.name}.tmp")
    aside.write_text(text)
    os.replace(aside, path)


def write_policy(work: Path, filename: str, text: str) -> Path:
    """`text` as `filename` in the policy folder `work/policy` (made if need be, so a test can
    put the files a policy names there first); the folder, which is what meshpilot serves."""
    folder = work / "policy"
    folder.mkdir(exist_ok=True)
    (folder / filename).write_text(text)
    return folder


# ---- meshpilot with real Envoys --------------------------------------------------------------


@contextmanager
def meshpilot_and_envoys(policy: Path, work: Path, names: Mapping[str, str], *,
                         extra_args: tuple[str, ...] = ()
                         ) -> Iterator[tuple[MeshpilotProcess, dict[str, EnvoyProcess]]]:
    """`meshpilot serve` on `policy` and one real Envoy per view (`names`: view -> process
    name; node id `VIEW-1`, node cluster VIEW), all ready; every one stopped on exit, meshpilot's
    log tail printed (pytest shows it when a test failed)."""
    mp = MeshpilotProcess(policy, work, extra_args=extra_args)
    envoys: dict[str, EnvoyProcess] = {}
    try:
        mp.start()
        for view, name in names.items():
            envoys[view] = EnvoyProcess(mp.bootstrap(f"{view}-1", view), work / name, name=name)
            envoys[view].start()  # all started before any is waited for: they boot together
        for envoy in envoys.values():
            envoy.wait_ready(30)
        yield mp, envoys
    finally:
        for envoy in envoys.values():
            envoy.stop()
        mp.stop()
        print(mp.log_tail(30))


@contextmanager
def meshpilot_and_gateway(policy: Path, work: Path,
                          view: str = "edge") -> Iterator[tuple[MeshpilotProcess, EnvoyProcess]]:
    """`meshpilot serve` on `policy` and one real Envoy of `view`, ready; both stopped on exit,
    meshpilot's log tail printed (pytest shows it when a test failed)."""
    with meshpilot_and_envoys(policy, work, {view: view}) as (mp, envoys):
        yield mp, envoys[view]


@dataclass
class Served:
    """What `served_policy` runs: meshpilot, its Envoys by view, every port the policy names."""

    mp: MeshpilotProcess
    envoys: dict[str, EnvoyProcess]
    ports: dict[str, int]
    policy: Path  # the folder meshpilot serves

    @property
    def envoy(self) -> EnvoyProcess:
        """The one Envoy (served_policy's default: one edge gateway)."""
        (only,) = self.envoys.values()
        return only


def gateway_class_template(ports: str = "") -> str:
    """The Gateway API e2e folders' GatewayClass `mp` (namespace infra) and its parameters:
    every listener on 127.0.0.1, its ports mapped by `ports` ("443:{port}": the listener port
    to a `served_policy` free port). A `served_policy` template: its own braces are doubled."""
    data = f'address: 127.0.0.1, ports: "{ports}"' if ports else "address: 127.0.0.1"
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{{{name: mp}}}}
spec:
  controllerName: meshpilot.io/gateway-controller
  parametersRef: {{{{group: "", kind: ConfigMap, name: mp, namespace: infra}}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{{{name: mp, namespace: infra}}}}
data: {{{{{data}}}}}
---
"""

def loopback_service_template(name: str, port: int, placeholder: str | None = None, *,
                              port_name: str | None = None, protocol: str | None = None) -> str:
    """A Kubernetes Service `name` (namespace infra) with one port, and its EndpointSlice on
    127.0.0.1 at the `served_policy` port `{placeholder}` (by default the name, `-` as `_`):
    what the Gateway API e2e folders write for each backend. A `served_policy` template: its
    own braces are doubled."""
    named = f"name: {port_name}, " if port_name else ""
    carried = f", protocol: {protocol}" if protocol else ""
    key = placeholder or name.replace("-", "_")
    return f"""apiVersion: v1
kind: Service
metadata: {{{{name: {name}, namespace: infra}}}}
spec: {{{{ports: [{{{{{named}port: {port}{carried}}}}}]}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{{{name: {name}-1, namespace: infra, labels: {{{{kubernetes.io/service-name: {name}}}}}}}}}
addressType: IPv4
ports: [{{{{{named}port: {{{key}}}{carried}}}}}]
endpoints: [{{{{addresses: [127.0.0.1]}}}}]
"""


@contextmanager
def served_policy(work: Path, filename: str, template: str, servers: Mapping[str, Server], *,
                  free_ports: Sequence[str] = ("port",),
                  envoys: Mapping[str, str] | None = None, extra_args: tuple[str, ...] = (),
                  **values: Any) -> Iterator[Served]:
    """The set-up of a policy-driven end-to-end test, torn down in reverse on exit.

    Starts `servers` (the upstreams: {name: server}), takes a free loopback port for each name
    in `free_ports` (the policy's listeners), writes `template` formatted with all those ports
    and `values` as `filename` in work/policy, and runs `meshpilot serve` on it to the Envoys
    `envoys` ({view: process name}; by default one edge gateway), all ready.
    """
    with serving(servers) as ports:
        ports.update({name: free_port() for name in free_ports})
        policy = write_policy(work, filename, template.format(**ports, **values))
        with meshpilot_and_envoys(policy, work, envoys or {"edge": "edge"},
                                  extra_args=extra_args) as (mp, started):
            yield Served(mp, started, ports, policy)


def listener_port(envoy: EnvoyProcess, listener: str = "http") -> int:
    """The port Envoy bound for `listener` (a policy's port 0: each Envoy binds its own)."""
    return eventually(lambda: envoy.listener_addresses().get(listener, (None, 0))[1],
                      what=f"Envoy's listener {listener!r} to be bound")


# ---- small servers a test makes --------------------------------------------------------------


class Server(Protocol):
    """What `serving` starts: echo backends, demo upstreams and the servers below."""

    def start(self) -> int: ...
    def stop(self) -> None: ...


@contextmanager
def serving(servers: Mapping[str, Server]) -> Iterator[dict[str, int]]:
    """Start every server, yield {name: bound port}; on exit stop each one, even when a later
    one failed to start or the body raised (every Server's stop() is harmless before start)."""
    with ExitStack() as stack:
        ports: dict[str, int] = {}
        for name, server in servers.items():
            stack.callback(server.stop)
            ports[name] = server.start()
        yield ports


class QuietHandler(BaseHTTPRequestHandler):
    """The request handler of a test's own server: HTTP/1.1 keep-alive and no log lines."""

    protocol_version = "HTTP/1.1"  # every answer carries its Content-Length

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no line per request on stderr

    def reply(self, status: int, body: bytes = b"", content_type: str | None = None) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class LoopbackHttpServer:
    """`handler` on a ThreadingHTTPServer at 127.0.0.1 (port from the OS), in a daemon thread.

    With `tls=(certificate, key)` it speaks HTTPS and records the SNI each client sent, in
    order, in `server_names`; with `client_ca` too, it requires a client certificate that CA
    signed. `stop()` is idempotent and harmless before `start()`.
    """

    Handler = QuietHandler  # what a test's handler derives from

    def __init__(self, handler: type[BaseHTTPRequestHandler], *,
                 tls: tuple[Path, Path] | None = None, client_ca: Path | None = None):
        self.server_names: list[str | None] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            if client_ca is not None:  # mutual TLS: a client certificate this CA signed
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(client_ca)
            context.sni_callback = self._record_server_name
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)

    def _record_server_name(self, connection: ssl.SSLObject, name: str | None,
                            context: ssl.SSLContext) -> None:
        self.server_names.append(name)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> int:
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() would wait forever for a loop never started
            self.httpd.shutdown()
            self._thread.join(timeout=5)
        self.httpd.server_close()


class ZipkinCollector(LoopbackHttpServer):
    """A Zipkin v2 collector on loopback: POST /api/v2/spans with a JSON list of spans."""

    def __init__(self) -> None:
        spans: list[dict[str, Any]] = []
        self.spans = spans

        class Handler(LoopbackHttpServer.Handler):
            def do_POST(self) -> None:
                body = self._body()
                if self.path == "/api/v2/spans":
                    spans.extend(json.loads(body))
                    self.reply(202)
                else:
                    self.reply(404)

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("content-length", "0")))
                body = b""
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()  # the empty line after the last chunk
                return body

        super().__init__(Handler)


# ---- Docker --------------------------------------------------------------------------------


DOCKER_ECHO_IMAGE = "meshpilot-test-echo:1"


def _ensure_docker_echo_image(client: Any, work: Path) -> None:
    """An image cannot be pulled here: import a root filesystem holding only /bin/sleep and the
    libraries it needs; the test's Python and meshpilot are bind-mounted read-only."""
    import shutil
    import tarfile

    import docker.errors

    try:
        client.images.get(DOCKER_ECHO_IMAGE)
        return
    except docker.errors.ImageNotFound:
        pass
    sleep = shutil.which("sleep") or "/bin/sleep"
    out = subprocess.run(["ldd", sleep], capture_output=True, text=True, check=True).stdout
    files = [sleep] + [p for line in out.splitlines() for p in line.split() if p.startswith("/")]
    tarball = work / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        for path in files:
            tar.add(os.path.realpath(path), arcname=path.lstrip("/"))
    with tarball.open("rb") as f:
        repository, tag = DOCKER_ECHO_IMAGE.split(":")
        client.api.import_image_from_data(f.read(), repository=repository, tag=tag)


def docker_echo_container(client: Any, work: Path, name: str, *, service: str,
                          labels: Mapping[str, str] = ()) -> Any:  # type: ignore[assignment]
    """A running container of the echo backend answering as `name`, labelled as an instance of
    `service` (port 9080, published on 127.0.0.1), removed when stopped."""
    import shutil

    _ensure_docker_echo_image(client, work)
    python = os.path.realpath(shutil.which("python3") or "/usr/bin/python3")
    prefix = str(Path(python).parents[1])
    repo = str(Path(__file__).resolve().parents[1])
    volumes = {p: {"bind": p, "mode": "ro"} for p in (prefix, repo, "/lib", "/lib64", "/usr")
               if os.path.isdir(p)}
    return client.containers.run(
        DOCKER_ECHO_IMAGE, [python, "-m", "meshpilot.local.demo.echo", "--name", name,
                            "--host", "0.0.0.0", "--port", "9080"],
        detach=True, remove=True, volumes=volumes, environment={"PYTHONPATH": repo},
        ports={"9080/tcp": ("127.0.0.1", None)},
        labels={"meshpilot.service": service, "meshpilot.port": "9080",
                **{f"meshpilot.label.{k}": v for k, v in dict(labels).items()}})


def docker_client(timeout: float) -> Any:
    """A docker.DockerClient to a reachable engine, else the test is skipped (and only then).
    The SDK is imported here, so tests that never reach Docker do not need it."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as e:  # no SDK, no socket, no daemon: the same answer
        pytest.skip(f"no Docker engine reachable: {e}")


# ---- the meshpilot process -----------------------------------------------------------------


class MeshpilotProcess:
    """`meshpilot serve` as a user runs it, on free loopback ports; stopped by its fixture."""

    def __init__(self, policy: Path | None, log_dir: Path, *, xds_port: int | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.policy = policy
        self.xds_port = xds_port or free_port()
        self.admin_port = free_port()
        self.log_path = log_dir / f"meshpilot-{self.xds_port}.log"
        self.state_dir = log_dir / f"meshpilot-state-{self.xds_port}"  # its token key and CA
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 30.0) -> MeshpilotProcess:
        log = self.log_path.open("ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshpilot", "serve",
             *(("--policy", str(self.policy)) if self.policy is not None else ()),
             "--xds-address", f"127.0.0.1:{self.xds_port}",
             "--admin-address", f"127.0.0.1:{self.admin_port}",
             "--debounce-quiet", "50ms", "--log-level", "info",
             "--state-dir", str(self.state_dir), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        eventually(self._healthy, timeout=timeout, what=f"meshpilot admin on {self.admin}")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"meshpilot exited {self.proc.returncode}:\n{self.log_tail()}")
        return http_get(f"{self.admin}/healthz", timeout=1)[0] == 200

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def operator_token(self) -> str:
        """An operator token signed with this process's key (in its state folder, made at
        start): what an operator on this machine uses for the admin API."""
        return TokenAuthority.load(self.state_dir).issue("operator", ttl=3600)

    def admin_headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.operator_token()}"}

    def admin_get(self, path: str, method: str = "GET",
                  timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        """`http_get` of an admin path, as an operator."""
        return http_get(f"{self.admin}{path}", self.admin_headers(), timeout=timeout,
                        method=method)

    def get_json(self, path: str) -> Any:
        status, _, body = self.admin_get(path)
        assert status == 200, f"{path}: {status} {body[:300]!r}"
        return json.loads(body)

    def proxies(self) -> list[dict[str, Any]]:
        return self.get_json("/debug/proxies")["proxies"]

    def status(self) -> dict[str, Any]:
        return self.get_json("/debug/status")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus sample over series whose labels include `labels`."""
        _, _, body = http_get(f"{self.admin}/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, value = line.rsplit(" ", 1)
            metric_name, _, label_text = series.partition("{")
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    @property
    def insecure_xds(self) -> bool:
        return "--insecure-xds" in self.extra_args

    def node_token(self, view: str) -> str:
        """A node token for `view`, signed with this server's key (as `meshpilot bootstrap
        --state-dir` signs one)."""
        return TokenAuthority.load_or_create(self.state_dir).issue("node", view)

    def bootstrap(self, node_id: str, node_cluster: str, *, delta: bool = False,
                  ads: bool = True, stats_flush_interval: float | None = None) -> dict:
        """The bootstrap `meshpilot bootstrap --state-dir` writes: TLS trusting the mesh CA,
        and a node token for the view (plaintext and no token with --insecure-xds); with
        `stats_flush_interval`, the metrics service stats sink."""
        security: dict[str, Any] = {}
        if not self.insecure_xds:
            args = list(self.extra_args)
            ca_dir = Path(args[args.index("--ca-dir") + 1]) if "--ca-dir" in args \
                else self.state_dir
            security = {"xds_tls_ca": str(ca_dir / "ca.crt"), "xds_sni": "meshpilot",
                        "xds_token": self.node_token(node_cluster)}
        return render_bootstrap(node_id=node_id, node_cluster=node_cluster,
                                xds_addresses=[("127.0.0.1", self.xds_port)],
                                admin_address=("127.0.0.1", 0), delta=delta, ads=ads,
                                stats_flush_interval=stats_flush_interval, **security)


# ---- raw EnvoyResources policies ----------------------------------------------------------

ADS_SOURCE = "{ads: {}, resource_api_version: V3}"


def grpc_source(api_type: str, token: str) -> str:
    """A config source for EDS or RDS on a gRPC stream of its own to meshpilot (no ADS): like
    the bootstrap's own streams, it must carry the node token."""
    return (f"{{api_config_source: {{api_type: {api_type}, transport_api_version: V3, "
            f"grpc_services: [{{envoy_grpc: {{cluster_name: meshpilot_xds}}, initial_metadata: "
            f"[{{key: authorization, value: 'Bearer {token}'}}]}}]}}, resource_api_version: V3}}")


def raw_policy(*, backends: dict[str, int], route_to: str | dict[str, int],
               listener_port: int = 0, extra_clusters: str = "", extra_routes: str = "",
               config_source: str = ADS_SOURCE) -> str:
    """A raw EnvoyResources policy: one EDS cluster per echo backend, one HTTP listener (port 0:
    each Envoy binds its own) whose RDS config sends `/` to one cluster or a weighted split."""
    clusters = "".join(f"""
  - name: {name}
    type: EDS
    connect_timeout: 1s
    eds_cluster_config: {{eds_config: {config_source}}}""" for name in backends)
    endpoints = "".join(f"""
  - cluster_name: {name}
    endpoints:
      - lb_endpoints:
          - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}"""
                        for name, port in backends.items())
    if isinstance(route_to, str):
        action = f"{{cluster: {route_to}}}"
    else:
        weights = ", ".join(f"{{name: {n}, weight: {w}}}" for n, w in route_to.items())
        action = f"{{weighted_clusters: {{clusters: [{weights}]}}}}"
    return f"""kind: EnvoyResources
name: e2e
clusters:{clusters}{extra_clusters}
endpoints:{endpoints}
listeners:
  - name: http
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listener_port}}}}}
    filter_chains:
      - filters:
          - name: envoy.filters.network.http_connection_manager
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
              stat_prefix: e2e
              rds: {{route_config_name: routes, config_source: {config_source}}}
              http_filters:
                - name: envoy.filters.http.router
                  typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
routes:
  - name: routes
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:{extra_routes}
          - match: {{prefix: /}}
            route: {action}
"""


def etcd_binary() -> str:
    """The etcd binary; skipped with the reason when there is none, except under CI=true, where
    `make test` installs it (scripts/etcd-server.sh) and its absence is a failure."""
    import shutil

    found = shutil.which("etcd")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true and no etcd on PATH: scripts/etcd-server.sh should have installed "
                    "Debian's etcd-server")
    pytest.skip("no etcd on PATH (apt-get install etcd-server, or `make test` under CI)")


class EtcdProcess:
    """A real single-member etcd on free loopback ports, its data in `data_dir`."""

    def __init__(self, data_dir: Path, log_dir: Path):
        self.binary = etcd_binary()
        self.data_dir = data_dir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.log_path = log_dir / f"etcd-{self.client_port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 30.0) -> EtcdProcess:
        log = self.log_path.open("ab")
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.proc = subprocess.Popen(
            [self.binary, "--name", "test", "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}", "--log-level", "warn",
             "--logger", "zap"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        eventually(self._healthy, timeout=timeout, what=f"etcd on {self.client_url}")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"etcd exited {self.proc.returncode}:\n"
                                 f"{self.log_path.read_text()[-2000:]}")
        status, _, body = http_get(f"{self.client_url}/health", timeout=1)
        return status == 200 and b'"true"' in body

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def shared_folder() -> Path:
    """`shared/` next to the repository (as CI clones it), or next to a folder above it (a git
    worktree kept below the main checkout's parent); MESHPILOT_SHARED names it outright."""
    named = os.environ.get("MESHPILOT_SHARED")
    if named:
        return Path(named).resolve()
    repository = Path(__file__).resolve().parents[1]
    for folder in (repository, *repository.parents):
        if (folder.parent / "shared" / "conformance").is_dir():
            return (folder.parent / "shared").resolve()
    return (repository.parent / "shared").resolve()


# An echo Service behind an Istio ingress gateway on HTTP, every host and path to it: the
# preamble of the Istio e2e policies that test what the gateway does to requests (a template:
# `{echo}` the echo's port, `{ingress}` the gateway's).
ECHO_BEHIND_ISTIO_INGRESS = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {echo}}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: {ingress}, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [istio-system/edge]
  http: [{{route: [{{destination: {{host: echo.default.svc.cluster.local}}}}]}}]
---
"""
