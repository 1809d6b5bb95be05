"""Scenario `replicas`: meshpilot replicas sharing their state through a real etcd.

Processes as a user runs them: an etcd (Debian's `etcd` binary, loopback ports, data in the
scratch folder), `meshpilot serve --store` replicas, one real Envoy, an echo backend. Two
figures, each beside the single-process baseline measured in the same sitting:

- **registration -> served**: t0 just before `POST /v1/registrations`; the time until a request
  through the Envoy is answered by the registered backend (polled on a keep-alive connection
  every ~1 ms). Replicas: registered on replica A, the Envoy connected to replica B (so the
  path is A -> etcd -> B's watch -> EDS push -> Envoy). Baseline: one process, no store,
  registered where the Envoy is. Between samples the registration is deleted and the
  gateway answers 503 again.
- **failover**: the Envoy lists every replica; the replica it is synced on is killed (SIGKILL)
  at t0; the time until a survivor reports it SYNCED on every type (its /debug/proxies, polled
  every 5 ms), and the responses the survivor sent it (0: nothing it had already). The killed
  replica is restarted between samples.
- **fan-out of one policy edit**: `streams` simulated ADS streams (`benchmarks/simclient.py`,
  the same client processes in both variants), spread over the replicas, or all on one
  replica without a store; t0 just before the edited file (one cluster of an EnvoyResources
  policy gets a marker) is renamed into the folder every replica watches; per edit, the time
  until every stream received the change, and the median stream. Plaintext xDS here
  (`--insecure-xds`): the cost measured is the fan-out, not TLS.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import child_env, now_ns, stop_process, tail, wait_for
from benchmarks.stats import summarize
from meshpilot.ca.tokens import TokenAuthority
from meshpilot.local.bootstrap import render_bootstrap
from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.envoy_process import EnvoyProcess

TYPES = ("clusters", "endpoints", "listeners", "routes")
POLICY = """
kind: Service
name: api
---
kind: Gateway
name: edge
listeners: [{{name: http, port: {port}, address: 127.0.0.1}}]
---
kind: Route
name: shop
gateway: edge
rules:
  - backends: [{{service: api}}]
"""


@dataclass
class ReplicasConfig:
    registrations: int = 100
    failovers: int = 10
    replicas: int = 3
    timeout_s: float = 15.0
    streams: int = 3000  # fan-out: simulated ADS streams in all
    clusters: int = 200  # fan-out: clusters in the view
    edits: int = 3  # fan-out: policy edits per variant
    sync_timeout_s: float = 300.0

    @classmethod
    def quick(cls) -> ReplicasConfig:
        return cls(registrations=10, failovers=2, replicas=2, streams=150, clusters=50,
                   edits=1, sync_timeout_s=60.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Etcd:
    def __init__(self, work: Path):
        self.port, self.peer = _free_port(), _free_port()
        self.log = work / "etcd.log"
        client, peer = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.peer}"
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError("no etcd on PATH (apt-get install etcd-server)")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "--name", "bench", "--data-dir", str(work / "etcd-data"),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"bench={peer}", "--log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: _get(f"{client}/health")[0] == 200, timeout=30, what="etcd")

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.port}"


class _Replica:
    def __init__(self, work: Path, name: str, policy: Path, store: str | None,
                 store_key: Path, extra: tuple[str, ...] = ()):
        self.name, self.policy, self.store, self.store_key = name, policy, store, store_key
        self.extra = extra
        self.xds_port, self.admin_port = _free_port(), _free_port()
        self.state = work / f"state-{name}"
        self.log = work / f"meshpilot-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> _Replica:
        store = ["--store", self.store, "--store-key", str(self.store_key),
                 "--replica-id", self.name] if self.store else []
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshpilot", "serve", "--policy", str(self.policy),
                 "--xds-address", f"127.0.0.1:{self.xds_port}",
                 "--admin-address", f"127.0.0.1:{self.admin_port}", "--debounce-quiet", "10ms",
                 "--log-level", "warning", "--state-dir", str(self.state), *store,
                 *self.extra],
                stdout=log, stderr=subprocess.STDOUT, env=child_env())
        wait_for(lambda: self.alive() and _get(f"{self.admin}/readyz")[0] == 200, timeout=60,
                 what=f"replica {self.name}")
        return self

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"replica {self.name} exited:\n{tail(self.log)}")
        return True

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def headers(self) -> dict[str, str]:
        token = TokenAuthority.load(self.state).issue("operator", ttl=3600)
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, path: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
        return _get(f"{self.admin}{path}", self.headers(), method,
                    json.dumps(body).encode() if body is not None else None)

    def synced(self, node: str) -> bool:
        status, data = self.call("/debug/proxies")
        return status == 200 and any(
            p["node_id"] == node and p.get("replica", self.name) == self.name and all(
                p["types"].get(t, {}).get("status") == "SYNCED" for t in TYPES)
            for p in data["proxies"])

    def responses(self) -> float:
        _, body = _get(f"{self.admin}/metrics", raw=True)
        total = 0.0
        for line in body.splitlines():
            if line.startswith("meshpilot_xds_responses_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig=sig)


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET",
         data: bytes | None = None, raw: bool = False) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            text = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        text, status = e.read().decode(), e.code
    except OSError:
        return 0, None
    if raw:
        return status, text
    try:
        return status, json.loads(text) if text.strip().startswith(("{", "[")) else text
    except ValueError:
        return status, text


class _Poller:
    """GET / through the Envoy on one keep-alive connection: the backend's name or None."""

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def backend(self) -> str | None:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            self.conn.request("GET", "/")
            response = self.conn.getresponse()
            response.read()
            return response.getheader("x-backend") if response.status == 200 else None
        except (OSError, http.client.HTTPException):
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return None


def _envoy(work: Path, name: str, replicas: list[_Replica], first: _Replica) -> EnvoyProcess:
    token = TokenAuthority.load(first.state).issue("node", "edge", ttl=3600)
    boot = render_bootstrap(node_id=name, node_cluster="edge",
                            xds_addresses=[("127.0.0.1", r.xds_port) for r in replicas],
                            admin_address=("127.0.0.1", 0),
                            xds_tls_ca=str(first.state / "ca.crt"), xds_sni="meshpilot",
                            xds_token=token)
    envoy = EnvoyProcess(boot, work / name, name=name)
    envoy.start()
    envoy.wait_ready(30)
    return envoy


def _registrations(cfg: ReplicasConfig, register_on: _Replica, port: int, echo: EchoServer,
                   log: Any) -> list[float]:
    poller = _Poller(port)
    samples = []
    body = {"service": "api", "address": f"127.0.0.1:{echo.port}", "ttl": "60s"}
    for _ in range(cfg.registrations):
        wait_for(lambda: poller.backend() is None, timeout=cfg.timeout_s, interval=0.005,
                 what="no backend before registering")
        t0 = now_ns()
        status, answer = register_on.call("/v1/registrations", "POST", body)
        if status not in (200, 201):
            raise RuntimeError(f"registration refused: {status} {answer}")
        deadline = time.monotonic() + cfg.timeout_s
        while poller.backend() != echo.name:
            if time.monotonic() > deadline:
                raise RuntimeError("the registration was never served")
            time.sleep(0.001)
        samples.append((now_ns() - t0) / 1e6)
        register_on.call(f"/v1/registrations/{answer['id']}", "DELETE")
    log(f"   registration -> served: median {summarize(samples)['median']:.1f} ms")
    return samples


def _fanout_variant(cfg: ReplicasConfig, work: Path, name: str, replicas: list[_Replica],
                    policy: Path, log: Any) -> dict[str, Any]:
    """`cfg.streams` simulated streams over `replicas` (round robin by client process); one
    cluster edited `cfg.edits` times; per edit: every stream received it, and the median."""
    from benchmarks.common import JsonLineProcess, proc_cpu_seconds, python_module_cmd, save_aside
    from benchmarks.policies import many_clusters_policy

    processes = 3
    clients = []
    per = cfg.streams // processes
    try:
        for i in range(processes):
            target = replicas[i % len(replicas)]
            clients.append(JsonLineProcess(python_module_cmd(
                "benchmarks.simclient", "--address", f"127.0.0.1:{target.xds_port}",
                "--streams", str(per), "--channels", "10", "--first-id", str(i * per)),
                work / f"simclient-{name}-{i}.log", name=f"simclient-{name}-{i}"))
        started = time.monotonic()
        for client in clients:
            client.send(cmd="start", timeout=cfg.sync_timeout_s)
        for client in clients:
            client.receive(cfg.sync_timeout_s + 30)
        sync_s = time.monotonic() - started
        log(f"   {name}: {per * processes} streams in sync after {sync_s:.1f}s")
        edits = []
        text = many_clusters_policy(cfg.clusters, name="bench")
        for n in range(cfg.edits):
            marker = f"edit-{name}-{n}"
            for client in clients:
                client.call(30, cmd="arm", marker=marker)
            cpu = [proc_cpu_seconds(r.proc.pid) for r in replicas if r.proc]
            stamp: list[int] = []
            edited = text.replace("{name: svc-00000, type: EDS,",
                                  f"{{name: svc-00000, alt_stat_name: {marker}, type: EDS,")
            save_aside(policy / "clusters.yaml", edited,
                       before_replace=lambda stamp=stamp: stamp.append(now_ns()))
            received: list[int] = []
            for client in clients:
                client.send(cmd="collect", timeout=120, quiet=0.3)
            for client in clients:
                received += client.receive(150)["recv_ns"]
            t0 = stamp[0]
            per_stream = sorted((r - t0) / 1e6 for r in received)
            edits.append({"all_ms": per_stream[-1], "median_ms": per_stream[len(per_stream) // 2],
                          "servers_cpu_s": sum(proc_cpu_seconds(r.proc.pid) for r in replicas
                                               if r.proc) - sum(cpu)})
            log(f"   {name} edit {n}: all {per_stream[-1]:.0f} ms, median stream "
                f"{per_stream[len(per_stream) // 2]:.0f} ms")
        return {"variant": name, "replicas": len(replicas), "streams": per * processes,
                "clusters": cfg.clusters, "initial_sync_s": sync_s, "edits": edits,
                "all_ms": summarize(e["all_ms"] for e in edits),
                "median_ms": summarize(e["median_ms"] for e in edits),
                "servers_cpu_s": summarize(e["servers_cpu_s"] for e in edits)}
    finally:
        for client in clients:
            client.close()


def run_fanout(cfg: ReplicasConfig, work: Path, etcd: _Etcd | None, log: Any) -> list[Any]:
    """One replica without a store, then `cfg.replicas` on etcd, the same streams each."""
    from benchmarks.policies import many_clusters_policy

    out = []
    for name in ("single", "replicas"):
        policy = work / f"policy-fanout-{name}"
        policy.mkdir()
        (policy / "clusters.yaml").write_text(many_clusters_policy(cfg.clusters, name="bench"))
        count = 1 if name == "single" else cfg.replicas
        store = etcd.url if (name == "replicas" and etcd is not None) else None
        servers = [_Replica(work, f"fan-{name}-{i}", policy, store,
                            work / "store.key", ("--insecure-xds",)).start()
                   for i in range(count)]
        try:
            out.append(_fanout_variant(cfg, work, name, servers, policy, log))
        finally:
            for server in servers:
                server.stop()
    return out


def run(cfg: ReplicasConfig, work: Path, log: Any = print) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    echo = EchoServer("registered")
    echo.start()
    started: list[Any] = []
    result: dict[str, Any] = {"config": vars(cfg).copy()}
    try:
        # Baseline: one process, no store.
        port = _free_port()
        policy = work / "policy-single"
        policy.mkdir()
        (policy / "edge.yaml").write_text(POLICY.format(port=port))
        single = _Replica(work, "single", policy, None, work / "unused.key").start()
        started.append(single)
        envoy = _envoy(work, "envoy-single", [single], single)
        started.append(envoy)
        log(" single process, no store")
        baseline = _registrations(cfg, single, port, echo, log)
        envoy.stop()
        single.stop()

        etcd = _Etcd(work)
        started.append(etcd)
        port = _free_port()
        policy = work / "policy-replicas"
        policy.mkdir()
        (policy / "edge.yaml").write_text(POLICY.format(port=port))
        key = work / "store.key"
        replicas = [_Replica(work, f"r{i}", policy, etcd.url, key).start()
                    for i in range(cfg.replicas)]
        started.extend(replicas)
        a, b = replicas[0], replicas[1]
        envoy = _envoy(work, "envoy-b", [b], a)
        started.append(envoy)
        wait_for(lambda: b.synced("envoy-b"), timeout=30, what="the Envoy on B")
        log(f" {cfg.replicas} replicas on etcd: registered on A, Envoy on B")
        shared = _registrations(cfg, a, port, echo, log)
        envoy.stop()

        # Failover: one Envoy listing every replica; kill -9 the one it is on.
        envoy = _envoy(work, "envoy-all", replicas, a)
        started.append(envoy)
        failovers, resent = [], []
        for _ in range(cfg.failovers):
            current = wait_for(lambda: next((r for r in replicas if r.synced("envoy-all")),
                                            None), timeout=30, what="the Envoy synced")
            survivors = [r for r in replicas if r is not current]
            before = {r.name: r.responses() for r in survivors}
            t0 = now_ns()
            current.stop(signal.SIGKILL)
            moved = wait_for(lambda survivors=survivors: next(
                (r for r in survivors if r.synced("envoy-all")), None),
                timeout=cfg.timeout_s, interval=0.005, what="the Envoy on a survivor")
            failovers.append((now_ns() - t0) / 1e6)
            resent.append(moved.responses() - before[moved.name])
            current.start()
        envoy.stop()
        for replica in replicas:
            replica.stop()
        log(f" fan-out of one edit: {cfg.streams} streams, one replica vs {cfg.replicas}")
        result["fanout"] = run_fanout(cfg, work, etcd, log)
        log(f"   failover (kill -9 -> SYNCED on a survivor): median "
            f"{summarize(failovers)['median']:.0f} ms, max {max(failovers):.0f} ms; responses "
            f"re-sent: {sorted(set(resent))}")
        result.update({
            "registration_single_ms": baseline, "registration_replicas_ms": shared,
            "failover_ms": failovers, "failover_responses_resent": resent,
            "summary": {"registration_single": summarize(baseline),
                        "registration_replicas": summarize(shared),
                        "failover": summarize(failovers)},
        })
        return result
    finally:
        for thing in reversed(started):
            if isinstance(thing, _Etcd):
                stop_process(thing.proc)
            else:
                thing.stop()
        echo.stop()
