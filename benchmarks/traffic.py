"""Scenario `traffic`: steady HTTP load through a real Envoy while the route is edited 100 times.

`meshpilot serve` (subprocess, `--debounce-quiet 10ms`) serves one real Envoy (ADS; SotW, then
delta with a fresh server and Envoy) a policy in the language: Service `app` (subsets v1 and v2,
one echo backend each), Service `other` (a third echo backend), a Gateway and a Route `flip`. A
load generator keeps requests flowing through the Envoy's listener (`wrk` when it is installed,
else a Python thread pool of keep-alive clients) while `edits` edits are saved, one every
`interval_s`: three in four change the split between `app/v1` and `app/v2` (weights 10..90), every
fourth flips the Route's target to the service `other` (the next edit flips it back to a split).
Each flip adds and removes clusters: the make-before-break path.

Counted: total requests, non-2xx responses, connection (socket) errors; goal 0 and 0. Envoy's own
`downstream_rq_{2xx,4xx,5xx}` counters for the listener are read before and after as a
cross-check, and meshpilot's log tells how many reloads were applied (each edit must be one).
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import save_aside, stop_process, wait_for
from benchmarks.convergence import _Probe, _Serve, _start_echo
from benchmarks.policies import GATEWAY_LISTENER_ON_PORT_0
from meshpilot.local.bootstrap import render_bootstrap
from meshpilot.local.envoy_process import EnvoyProcess


@dataclass
class TrafficConfig:
    edits: int = 100
    interval_s: float = 0.2
    modes: tuple[str, ...] = ("sotw", "delta")
    connections: int = 8
    threads: int = 1  # wrk threads (2 cores: Envoy, backends, meshpilot and the generator share)
    warmup_s: float = 1.0
    tail_s: float = 1.5
    engine: str = "auto"  # auto (wrk if installed), wrk, python
    seed: int = 4

    @classmethod
    def quick(cls) -> TrafficConfig:
        return cls(edits=12, modes=("sotw",))


def traffic_policy(backends: dict[str, int], rule: str) -> str:
    return f"""kind: Service
name: app
endpoints:
  - {{address: 127.0.0.1:{backends['v1']}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1:{backends['v2']}, labels: {{version: v2}}}}
subsets: {{v1: {{version: v1}}, v2: {{version: v2}}}}
---
kind: Service
name: other
endpoints:
  - {{address: 127.0.0.1:{backends['other']}}}
---
kind: Gateway
name: edge
listeners: [{{name: http, port: 10000}}]
---
kind: Route
name: flip
gateway: edge
rules:
  - backends: {rule}
""" + GATEWAY_LISTENER_ON_PORT_0


def _split(w: int) -> str:
    return (f"[{{service: app, subset: v1, weight: {w}}}, "
            f"{{service: app, subset: v2, weight: {100 - w}}}]")


def edit_plan(edits: int, seed: int) -> list[tuple[str, str]]:
    """(kind, backends) per edit: weight changes, and every fourth a flip to `other`."""
    rng = random.Random(seed)
    plan = []
    for i in range(edits):
        if i % 4 == 3:
            plan.append(("flip to other", "[{service: other}]"))
        else:
            kind = "flip back + weights" if plan and plan[-1][0] == "flip to other" else "weights"
            plan.append((kind, _split(rng.randrange(10, 91, 10))))
    return plan


# ----- load generators ----------------------------------------------------------------------------


_WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(\w+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


class WrkLoad:
    engine = "wrk"

    def __init__(self, port: int, duration_s: float, cfg: TrafficConfig, log_path: Path):
        self.log_path = log_path
        cmd = [shutil.which("wrk") or "wrk", f"-t{cfg.threads}", f"-c{cfg.connections}",
               f"-d{max(1, round(duration_s))}s", "--timeout", "2s", "--latency",
               f"http://127.0.0.1:{port}/"]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        finally:
            stop_process(self.proc)
        text = out.decode(errors="replace")
        self.log_path.write_text(text)
        total = _WRK_TOTAL.search(text)
        non2xx = _WRK_NON2XX.search(text)
        sock = _WRK_SOCKET.search(text)
        errors = dict(zip(("connect", "read", "write", "timeout"),
                          (int(g) for g in sock.groups()), strict=True)) if sock else {}
        return {"engine": "wrk", "command": " ".join(self.cmd),
                "requests": int(total.group(1)) if total else None,
                "non_2xx": int(non2xx.group(1)) if non2xx else 0,
                "connection_errors": sum(errors.values()), "socket_errors": errors,
                "output": text}


class PythonLoad:
    """Keep-alive HTTP/1.1 clients in threads; counts answers by status and failed requests."""

    engine = "python"

    def __init__(self, port: int, duration_s: float, cfg: TrafficConfig, log_path: Path):
        self.port = port
        self.deadline = time.monotonic() + duration_s
        self.lock = threading.Lock()
        self.statuses: dict[str, int] = {}
        self.errors = 0
        self.threads = [threading.Thread(target=self._loop, daemon=True, name=f"load-{i}")
                        for i in range(cfg.connections)]
        for t in self.threads:
            t.start()

    def _loop(self) -> None:
        request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
        sock: socket.socket | None = None
        while time.monotonic() < self.deadline:
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                sock.sendall(request)
                status = self._read(sock)
                with self.lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1
            except (OSError, ValueError):
                with self.lock:
                    self.errors += 1
                if sock is not None:
                    sock.close()
                sock = None
        if sock is not None:
            sock.close()

    @staticmethod
    def _read(sock: socket.socket) -> str:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ValueError("closed")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1].decode()
        match = re.search(rb"(?i)content-length:\s*(\d+)", head)
        length = int(match.group(1)) if match else 0
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ValueError("closed")
            body += chunk
        return status

    def result(self, timeout: float) -> dict[str, Any]:
        for t in self.threads:
            t.join(timeout)
        total = sum(self.statuses.values())
        return {"engine": "python", "requests": total + self.errors,
                "non_2xx": sum(n for s, n in self.statuses.items() if not s.startswith("2")),
                "connection_errors": self.errors, "statuses": dict(self.statuses)}


# ----- the scenario -------------------------------------------------------------------------------


def _listener_counters(envoy: EnvoyProcess) -> dict[str, int]:
    stats = envoy.stats()
    return {k.rsplit(".", 1)[-1]: v for k, v in stats.items()
            if k.startswith("http.edge.downstream_rq_") and k[-3:] in ("2xx", "4xx", "5xx")}


def _run_mode(cfg: TrafficConfig, mode: str, work: Path, backends: dict[str, int],
              log: Any) -> dict[str, Any]:
    vdir = work / mode
    policy_dir = vdir / "policy"
    policy_dir.mkdir(parents=True)
    policy = policy_dir / "edge.yaml"
    save_aside(policy, traffic_policy(backends, _split(90)))
    serve: _Serve | None = None
    envoy: EnvoyProcess | None = None
    load: WrkLoad | PythonLoad | None = None
    try:
        serve = _Serve(policy_dir, vdir / "meshpilot.log", "10ms")
        bootstrap = render_bootstrap(node_id="traffic-0", node_cluster="edge",
                                     xds_addresses=[("127.0.0.1", serve.xds_port)],
                                     admin_address=("127.0.0.1", 0), delta=mode == "delta",
                                     **serve.security("edge"))
        envoy = EnvoyProcess(bootstrap, vdir / "envoy", name="envoy")
        envoy.start()
        envoy.wait_ready(timeout=60)
        port = wait_for(lambda: envoy.listener_addresses().get("edge/http", (None, 0))[1],
                        timeout=30, what="Envoy's listener")
        probe = _Probe(port, 1.0)
        wait_for(lambda: probe.get_backend() in ("v1", "v2"), timeout=30, what="first answer")
        probe.close()
        before = _listener_counters(envoy)
        plan = edit_plan(cfg.edits, cfg.seed)
        duration = cfg.warmup_s + cfg.edits * cfg.interval_s + cfg.tail_s
        engine = cfg.engine if cfg.engine != "auto" else ("wrk" if shutil.which("wrk")
                                                          else "python")
        load = (WrkLoad if engine == "wrk" else PythonLoad)(port, duration, cfg,
                                                            vdir / "load.txt")
        time.sleep(cfg.warmup_s)
        started = time.monotonic()
        for i, (_kind, rule) in enumerate(plan):
            save_aside(policy, traffic_policy(backends, rule))
            time.sleep(max(0.0, started + (i + 1) * cfg.interval_s - time.monotonic()))
        result = load.result(timeout=duration + 30)
        load = None
        after = _listener_counters(envoy)
        log_text = (vdir / "meshpilot.log").read_text(errors="replace")
        applied = log_text.count("policy applied")
        rejected = log_text.count("policy rejected")
        counters = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        kinds: dict[str, int] = {}
        for kind, _ in plan:
            kinds[kind] = kinds.get(kind, 0) + 1
        out = {"mode": mode, "edits": cfg.edits, "edit_kinds": kinds,
               "interval_s": cfg.interval_s, "duration_s": duration,
               "reloads_applied": applied - 1, "reloads_rejected": rejected,
               "envoy_counters": counters, **result}
        out.pop("output", None)
        log(f"    {mode}: {out['requests']:,} requests ({engine}, {cfg.connections} "
            f"connections, {duration:.0f}s) during {cfg.edits} edits ({kinds}); non-2xx "
            f"{out['non_2xx']}, connection errors {out['connection_errors']}; Envoy counted "
            f"{counters}; reloads applied {applied - 1}, rejected {rejected}")
        return out
    finally:
        if isinstance(load, WrkLoad):
            stop_process(load.proc)
        if envoy is not None:
            with contextlib.suppress(Exception):
                envoy.stop()
        if serve is not None:
            serve.stop()


def run(cfg: TrafficConfig, work: Path, log: Any = print) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    echoes: list[subprocess.Popen[bytes]] = []
    modes = []
    try:
        backends = {}
        for name in ("v1", "v2", "other"):
            proc, port = _start_echo(name, work)
            echoes.append(proc)
            backends[name] = port
        for mode in cfg.modes:
            log(f"  traffic: one real Envoy ({mode}), load during {cfg.edits} edits every "
                f"{cfg.interval_s:g}s")
            modes.append(_run_mode(cfg, mode, work, backends, log))
    finally:
        for proc in echoes:
            stop_process(proc)
    return {
        "scenario": "traffic",
        "what": "HTTP load through one real Envoy while a Route's weights and target change; "
                "non-2xx answers and connection errors counted (goal: 0)",
        "config": {"edits": cfg.edits, "interval_s": cfg.interval_s,
                   "connections": cfg.connections, "threads": cfg.threads,
                   "debounce_quiet": "10ms", "seed": cfg.seed,
                   "policy": "Service app (v1, v2), Service other, Gateway, Route flip"},
        "modes": modes,
    }
