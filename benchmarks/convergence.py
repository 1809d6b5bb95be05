"""Scenario `convergence`: a saved route edit until every real Envoy serves it.

`meshpilot serve` runs as a subprocess (as a user runs it), with two echo backends (subprocesses)
and ten real Envoys (one view, `node.cluster=edge`, ADS; SotW, then delta). Each edit flips the
route `/` between the backends with a write-aside-and-rename save; t0 is taken just before
`os.replace`. One poller thread per Envoy sends HTTP requests through that Envoy's listener on a
keep-alive connection, every `poll_ms` (a few ms), from just before the save until the answer
comes from the new backend. The edit's convergence time is the latest of those first answers
across the Envoys, minus t0: save -> file event -> debounce quiet period -> load + translate ->
push -> Envoy applies RDS -> served. Resolution: one poll interval plus one request round trip.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import select
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    child_env,
    now_ns,
    save_aside,
    stop_process,
    tail,
    wait_for,
)
from benchmarks.policies import language_flip_policy, route_flip_policy
from benchmarks.stats import summarize
from meshpilot.ca.tokens import TokenAuthority
from meshpilot.local.bootstrap import render_bootstrap
from meshpilot.local.envoy_process import EnvoyProcess
from meshpilot.runtime.admin_client import AdminClient

_LISTENING = re.compile(rb"xDS on ([\d.]+):(\d+), admin on http://([\d.]+):(\d+)")


@dataclass
class ConvergenceConfig:
    envoys: int = 10
    edits: int = 20
    debounces: tuple[str, ...] = ("10ms", "100ms")
    modes: tuple[str, ...] = ("sotw", "delta")
    # raw: EnvoyResources; language: Service + Gateway + Route (the translators in the path)
    policies: tuple[str, ...] = ("raw", "language")
    poll_ms: float = 3.0
    request_timeout_s: float = 0.25
    edit_timeout_s: float = 10.0
    settle_s: float = 0.3  # quiet time between edits, beyond the debounce period
    auth_compare: bool = True  # run the first variant also with --insecure-xds, beside it
    # Run the first variant also with --no-prepush-check, beside it: what Envoy's own check of
    # each edit (envoy --mode validate, the default) adds to convergence.
    prepush_compare: bool = True

    @classmethod
    def quick(cls) -> ConvergenceConfig:
        return cls(edits=3, debounces=("10ms",), policies=("language",))


# ----- one HTTP/1.1 keep-alive connection, cheap enough to poll with ----------------------------


class _Probe:
    """GET / through one Envoy listener; returns the `x-backend` of the answer (None if none)."""

    _REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: meshpilot-bench\r\n\r\n"

    def __init__(self, port: int, timeout: float):
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self.errors = 0

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def get_backend(self) -> str | None:
        try:
            if self._sock is None:
                self._sock = self._connect()
            self._sock.sendall(self._REQUEST)
            return self._read_response(self._sock)
        except (OSError, ValueError):
            self.errors += 1
            self.close()
            return None

    def _read_response(self, sock: socket.socket) -> str | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ValueError("connection closed")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)[1]
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(b":")
            headers[key.strip().lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ValueError("connection closed")
            body += chunk
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        if status != b"200":
            return None
        backend = headers.get(b"x-backend")
        return backend.decode() if backend is not None else None


class _Poller(threading.Thread):
    """Polls one Envoy while armed; records when it first answers from the target backend."""

    def __init__(self, index: int, port: int, cfg: ConvergenceConfig):
        super().__init__(name=f"poll-envoy-{index}", daemon=True)
        self.index = index
        self.probe = _Probe(port, cfg.request_timeout_s)
        self.interval = cfg.poll_ms / 1000.0
        self._armed = threading.Event()
        self._stopping = threading.Event()
        self.done = threading.Event()
        self.target = ""
        self.deadline = 0.0
        self.sent_ns = 0
        self.seen_ns = 0
        self.requests = 0

    def arm(self, target: str, timeout: float) -> None:
        self.target = target
        self.deadline = time.monotonic() + timeout
        self.sent_ns = self.seen_ns = 0
        self.requests = 0
        self.done.clear()
        self._armed.set()

    def stop(self) -> None:
        self._stopping.set()
        self._armed.set()

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._armed.wait(timeout=1.0)
                if self._stopping.is_set() or not self._armed.is_set():
                    continue
                while time.monotonic() < self.deadline and not self._stopping.is_set():
                    sent = now_ns()
                    backend = self.probe.get_backend()
                    seen = now_ns()
                    self.requests += 1
                    if backend == self.target:
                        self.sent_ns, self.seen_ns = sent, seen
                        break
                    time.sleep(self.interval)
                self._armed.clear()
                self.done.set()
        finally:
            self.probe.close()


# ----- processes ----------------------------------------------------------------------------------


def _start_echo(name: str, log_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    log = open(log_dir / f"echo-{name}.log", "wb")  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshpilot.local.demo.echo", "--name", name, "--port", "0"],
            stdout=subprocess.PIPE, stderr=log, env=child_env())
    finally:
        log.close()
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    line = proc.stdout.readline() if ready else b""
    match = re.search(rb":(\d+)\s*$", line)
    if not match:
        stop_process(proc)
        raise RuntimeError(f"echo backend {name} did not start: {line!r}")
    return proc, int(match.group(1))


class _Serve:
    """`meshpilot serve` on port 0 (xDS and admin); addresses read from its log."""

    def __init__(self, policy_dir: Path, log_path: Path, debounce: str, insecure: bool = False,
                 prepush: bool = True, leading: str | None = None):
        """`insecure`: plaintext, unauthenticated xDS (--insecure-xds), to measure what the
        default's TLS and node tokens cost beside it. `prepush`: False runs without the
        pre-push check (--no-prepush-check), to measure what it costs. `leading`: "on" or
        "off" (--debounce-leading); None: the server's default."""
        self.log_path = log_path
        self.insecure = insecure
        self.state_dir = log_path.parent / "meshpilot-state"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshpilot", "serve", "--policy", str(policy_dir),
                 "--xds-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0",
                 "--debounce-quiet", debounce, "--log-level", "info",
                 "--state-dir", str(self.state_dir),
                 *(["--insecure-xds"] if insecure else []),
                 *([] if prepush else ["--no-prepush-check"]),
                 *([] if leading is None else ["--debounce-leading", leading])],
                stdout=log, stderr=subprocess.STDOUT, env=child_env())
        match = wait_for(self._listening, timeout=30, what="meshpilot serve to listen")
        self.xds_port = int(match.group(2))
        self.admin_port = int(match.group(4))

    def _listening(self) -> re.Match[bytes] | None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"meshpilot exited {self.proc.returncode}:\n{tail(self.log_path)}")
        return _LISTENING.search(self.log_path.read_bytes())

    def security(self, view: str) -> dict[str, str]:
        """The bootstrap settings `meshpilot bootstrap --state-dir` writes by default: TLS
        trusting the mesh CA, and a node token for the view (authenticated xDS, as deployed);
        none with --insecure-xds."""
        if self.insecure:
            return {}
        return {"xds_tls_ca": str(self.state_dir / "ca.crt"), "xds_sni": "meshpilot",
                "xds_token": TokenAuthority.load_or_create(self.state_dir).issue("node", view)}

    def edits(self) -> dict[str, Any]:
        """The server's own account of the edits (GET /debug/status as an operator): each
        from its first file event to the last Envoy's ACK, and the pre-push check's figures."""
        token = TokenAuthority.load(self.state_dir).issue("operator", ttl=300)
        status = AdminClient(f"127.0.0.1:{self.admin_port}", token).get_json("/debug/status")
        return {"edits": status.get("edits", {}).get("edits", []),
                "prepush": status.get("prepush", {})}

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class _Variant:
    mode: str
    debounce: str
    policy: str = "raw"
    auth: str = "token"  # "token": the authenticated default; "insecure": --insecure-xds
    prepush: str = "on"  # "on": the default pre-push check; "off": --no-prepush-check
    leading: str | None = None  # --debounce-leading on/off; None: the server's default
    samples_ms: list[float] = field(default_factory=list)
    # The server's own measure of each edit: first file event -> last Envoy's ACK.
    server_ms: list[float] = field(default_factory=list)
    prepush_status: dict[str, Any] = field(default_factory=dict)
    first_ms: list[float] = field(default_factory=list)  # fastest Envoy per edit
    per_envoy_ms: list[list[float]] = field(default_factory=list)
    timeouts: int = 0
    probe_errors: int = 0
    requests: int = 0
    startup_s: float = 0.0

    @property
    def name(self) -> str:
        auth = "" if self.auth == "token" else ", --insecure-xds"
        check = "" if self.prepush == "on" else ", --no-prepush-check"
        leading = "" if self.leading is None else f", leading edge {self.leading}"
        return (f"{self.policy} policy, {self.mode}, debounce {self.debounce}{leading}{auth}"
                f"{check}")


_FLIPS = {"raw": (route_flip_policy, "http"), "language": (language_flip_policy, "edge/http")}


def _run_variant(cfg: ConvergenceConfig, work: Path, mode: str, debounce: str,
                 backends: dict[str, int], log: Any, policy_kind: str = "raw",
                 auth: str = "token", prepush: str = "on",
                 leading: str | None = None) -> _Variant:
    variant = _Variant(mode, debounce, policy_kind, auth, prepush, leading)
    flip, listener = _FLIPS[policy_kind]
    vdir = work / f"{policy_kind}-{mode}-{debounce}-{auth}-prepush-{prepush}-leading-{leading}"
    policy_dir = vdir / "policy"
    policy_dir.mkdir(parents=True)
    policy = policy_dir / "edge.yaml"
    save_aside(policy, flip(backends=backends, route_to="v1"))
    serve: _Serve | None = None
    envoys: list[EnvoyProcess] = []
    pollers: list[_Poller] = []
    try:
        started = time.monotonic()
        serve = _Serve(policy_dir, vdir / "meshpilot.log", debounce, insecure=auth == "insecure",
                       prepush=prepush == "on", leading=leading)
        for i in range(cfg.envoys):
            bootstrap = render_bootstrap(node_id=f"bench-{i}", node_cluster="edge",
                                         xds_addresses=[("127.0.0.1", serve.xds_port)],
                                         admin_address=("127.0.0.1", 0), delta=mode == "delta",
                                         **serve.security("edge"))
            envoys.append(EnvoyProcess(bootstrap, vdir / f"envoy-{i}", name=f"envoy-{i}"))
        for envoy in envoys:
            envoy.start()
        with ThreadPoolExecutor(max_workers=cfg.envoys) as pool:
            list(pool.map(lambda e: e.wait_ready(timeout=60), envoys))
            ports = list(pool.map(lambda e: wait_for(
                lambda: e.listener_addresses().get(listener, (None, 0))[1], timeout=30,
                what=f"{e.name}'s listener"), envoys))
        for i, port in enumerate(ports):
            probe = _Probe(port, 1.0)
            wait_for(lambda p=probe: p.get_backend() == "v1", timeout=30,
                     what=f"envoy-{i} to serve v1")
            probe.close()
        variant.startup_s = time.monotonic() - started
        pollers = [_Poller(i, port, cfg) for i, port in enumerate(ports)]
        for poller in pollers:
            poller.start()

        current = "v1"
        for edit in range(cfg.edits):
            target = "v2" if current == "v1" else "v1"
            for poller in pollers:
                poller.arm(target, cfg.edit_timeout_s)
            t0 = 0

            def stamp() -> None:
                nonlocal t0
                t0 = now_ns()

            # New content every edit (a numbered response header), as a real edit is: the
            # pre-push check's cache cannot answer it from an earlier edit.
            save_aside(policy, flip(backends=backends, route_to=target, edit=edit + 1), stamp)
            for poller in pollers:
                poller.done.wait(cfg.edit_timeout_s + 2)
            seen = [p.seen_ns for p in pollers]
            variant.requests += sum(p.requests for p in pollers)
            if not all(seen):
                variant.timeouts += 1
                log(f"    edit {edit + 1}: {seen.count(0)} Envoys did not serve {target} "
                    f"within {cfg.edit_timeout_s:.0f}s")
                raise RuntimeError("convergence timed out; see " + str(vdir))
            per_envoy = [round((s - t0) / 1e6, 3) for s in seen]
            variant.per_envoy_ms.append(per_envoy)
            variant.samples_ms.append(max(per_envoy))
            variant.first_ms.append(min(per_envoy))
            current = target
            time.sleep(cfg.settle_s)
        variant.probe_errors = sum(p.probe.errors for p in pollers)
        account = wait_for(lambda: (a := serve.edits()) and len(
            [e for e in a["edits"] if e["seconds"] is not None]) >= min(cfg.edits, 20) and a,
            timeout=10, what="the server to account for every edit")  # it keeps 20
        variant.server_ms = [round(e["seconds"] * 1000, 3)
                             for e in reversed(account["edits"]) if e["seconds"] is not None]
        variant.prepush_status = account["prepush"]
        return variant
    finally:
        # Every step on its own: a failure in one must not leave processes running.
        for poller in pollers:
            poller.stop()
        for poller in pollers:
            poller.join(timeout=5)
        with ThreadPoolExecutor(max_workers=max(1, len(envoys))) as pool:
            for done in [pool.submit(e.stop) for e in envoys]:
                with contextlib.suppress(Exception):
                    done.result(timeout=30)
        if serve is not None:
            serve.stop()


def run(cfg: ConvergenceConfig, work: Path, log: Any = print) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    echoes: list[subprocess.Popen[bytes]] = []
    variants: list[_Variant] = []
    try:
        backends = {}
        for name in ("v1", "v2"):
            proc, port = _start_echo(name, work)
            echoes.append(proc)
            backends[name] = port
        combos = [(p, d, m, "token", "on") for p, d, m in
                  itertools.product(cfg.policies, cfg.debounces, cfg.modes)]
        first = combos[0][:3] if combos else None
        # The cost of the pre-push check and of authentication: the first combination once
        # more without each, right after it.
        if cfg.prepush_compare and first is not None:
            combos.insert(1, (*first, "token", "off"))
        if cfg.auth_compare and first is not None:
            combos.insert(1, (*first, "insecure", "on"))
        for policy_kind, debounce, mode, auth, prepush in combos:
            log(f"  convergence: {cfg.envoys} Envoys, {policy_kind} policy, {mode}, "
                f"--debounce-quiet {debounce}, {cfg.edits} edits"
                + (", --insecure-xds" if auth == "insecure" else "")
                + (", --no-prepush-check" if prepush == "off" else ""))
            v = _run_variant(cfg, work, mode, debounce, backends, log, policy_kind, auth,
                             prepush)
            s = summarize(v.samples_ms)
            log(f"    median {s['median']:.1f} ms, p90 {s['p90']:.1f}, max {s['max']:.1f} "
                f"(startup {v.startup_s:.1f}s)")
            variants.append(v)
    finally:
        for proc in echoes:
            stop_process(proc)
    return {
        "scenario": "convergence",
        "what": "file save (just before os.replace) until ALL Envoys serve the new backend, "
                "observed by HTTP requests through each Envoy's listener",
        "config": {"envoys": cfg.envoys, "edits": cfg.edits, "poll_ms": cfg.poll_ms,
                   "request_timeout_s": cfg.request_timeout_s, "settle_s": cfg.settle_s,
                   "server": "meshpilot serve subprocess", "envoy_concurrency": 1,
                   "policy": {"raw": "EnvoyResources: 2 EDS clusters, 1 listener, 1 RDS route",
                              "language": "Service (2 subsets) + Gateway + Route; the gateway "
                                          "listener replaced by a raw one on port 0"}},
        "variants": [
            {"name": v.name, "mode": v.mode, "debounce_quiet": v.debounce, "auth": v.auth,
             "prepush": v.prepush, "server_ms": v.server_ms,
             "server_summary": summarize(v.server_ms), "prepush_status": v.prepush_status,
             "samples_ms": v.samples_ms, "summary": summarize(v.samples_ms),
             "first_envoy_ms": v.first_ms, "first_envoy_summary": summarize(v.first_ms),
             "per_envoy_ms": v.per_envoy_ms, "timeouts": v.timeouts,
             "probe_errors": v.probe_errors, "poll_requests": v.requests,
             "startup_s": v.startup_s}
            for v in variants
        ],
    }


# ----- scenario `prepush`: the same edits with and without the pre-push check, interleaved ---


@dataclass
class PrePushConfig:
    """One variant of `convergence` (10 real Envoys, the policy language, SotW, 10 ms quiet)
    run with the pre-push check (the default) and with --no-prepush-check, in alternating
    rounds (on, off, off, on, on, off, ...) so that the machine's drift falls on both alike."""

    envoys: int = 10
    edits: int = 10  # per round
    rounds: int = 4  # rounds per side
    policy: str = "language"
    mode: str = "sotw"
    debounce: str = "10ms"

    @classmethod
    def quick(cls) -> PrePushConfig:
        return cls(edits=3, rounds=1)


def run_prepush(cfg: PrePushConfig, work: Path, log: Any = print) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    ccfg = ConvergenceConfig(envoys=cfg.envoys, edits=cfg.edits)
    order = [("on", "off") if r % 2 == 0 else ("off", "on") for r in range(cfg.rounds)]
    sides: dict[str, list[_Variant]] = {"on": [], "off": []}
    echoes: list[subprocess.Popen[bytes]] = []
    try:
        backends = {}
        for name in ("v1", "v2"):
            proc, port = _start_echo(name, work)
            echoes.append(proc)
            backends[name] = port
        for index, pair in enumerate(order):
            for side in pair:
                log(f"  prepush round {index + 1}/{cfg.rounds}: check {side}, {cfg.edits} edits")
                v = _run_variant(ccfg, work / f"round-{index}-{side}", cfg.mode, cfg.debounce,
                                 backends, log, cfg.policy, "token", side)
                s = summarize(v.samples_ms)
                log(f"    median {s['median']:.1f} ms, p90 {s['p90']:.1f}")
                sides[side].append(v)
    finally:
        for proc in echoes:
            stop_process(proc)

    def pooled(side: str) -> dict[str, Any]:
        variants = sides[side]
        samples = [x for v in variants for x in v.samples_ms]
        server = [x for v in variants for x in v.server_ms]
        checks = [v.prepush_status for v in variants if v.prepush_status.get("checks")]
        return {"name": f"{cfg.policy} policy, {cfg.mode}, debounce {cfg.debounce}, "
                        f"pre-push check {side}",
                "prepush": side, "samples_ms": samples, "summary": summarize(samples),
                "server_ms": server, "server_summary": summarize(server),
                "round_medians_ms": [summarize(v.samples_ms)["median"] for v in variants],
                "check_mean_ms": (1000 * sum(c["seconds_total"] for c in checks)
                                  / sum(c["checks"] for c in checks)) if checks else None,
                "checks": sum(c["checks"] for c in checks),
                "first_envoy_summary": summarize([x for v in variants for x in v.first_ms])}

    return {
        "scenario": "prepush",
        "what": "one edit (new content each time) from the save until ALL Envoys serve it, with "
                "the pre-push check (envoy --mode validate of what changed) and without it, "
                "in alternating rounds",
        "config": {"envoys": cfg.envoys, "edits_per_round": cfg.edits, "rounds": cfg.rounds,
                   "order": [list(p) for p in order], "policy": cfg.policy, "mode": cfg.mode,
                   "debounce_quiet": cfg.debounce, "poll_ms": ccfg.poll_ms},
        "variants": [pooled("on"), pooled("off")],
    }


# ----- scenario `debounce`: the leading edge against the quiet-period debounce, interleaved ---


@dataclass
class DebounceConfig:
    """The convergence variant (10 real Envoys, SotW) with three debounce settings in rotating
    rounds, so the machine's drift falls on all alike: `--debounce-quiet 10ms` without the
    leading edge (the fastest setting before it), the default 100 ms quiet period without it
    (the default before it), and the default (100 ms, leading edge on). The ratio that counts:
    the default's median against the first's."""

    envoys: int = 10
    edits: int = 10  # per round
    rounds: int = 3  # rounds per setting
    policies: tuple[str, ...] = ("raw", "language")
    mode: str = "sotw"
    settings: tuple[tuple[str, str], ...] = (("10ms", "off"), ("100ms", "off"), ("100ms", "on"))

    @classmethod
    def quick(cls) -> DebounceConfig:
        return cls(edits=3, rounds=1, policies=("language",))


def run_debounce(cfg: DebounceConfig, work: Path, log: Any = print) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    ccfg = ConvergenceConfig(envoys=cfg.envoys, edits=cfg.edits)
    count = len(cfg.settings)
    # Round r runs the settings rotated by r: each one first, middle and last in turn.
    order = [[cfg.settings[(r + i) % count] for i in range(count)] for r in range(cfg.rounds)]
    runs: dict[tuple[str, str, str], list[_Variant]] = {}
    echoes: list[subprocess.Popen[bytes]] = []
    try:
        backends = {}
        for name in ("v1", "v2"):
            proc, port = _start_echo(name, work)
            echoes.append(proc)
            backends[name] = port
        for policy_kind in cfg.policies:
            for index, settings in enumerate(order):
                for debounce, leading in settings:
                    log(f"  debounce {policy_kind} round {index + 1}/{cfg.rounds}: "
                        f"--debounce-quiet {debounce} --debounce-leading {leading}, "
                        f"{cfg.edits} edits")
                    v = _run_variant(ccfg, work / f"round-{index}", cfg.mode, debounce,
                                     backends, log, policy_kind, "token", "on", leading)
                    s = summarize(v.samples_ms)
                    log(f"    median {s['median']:.1f} ms, p90 {s['p90']:.1f}")
                    runs.setdefault((policy_kind, debounce, leading), []).append(v)
    finally:
        for proc in echoes:
            stop_process(proc)

    variants = []
    for (policy_kind, debounce, leading), done in runs.items():
        samples = [x for v in done for x in v.samples_ms]
        server = [x for v in done for x in v.server_ms]
        variants.append({
            "name": f"{policy_kind} policy, {cfg.mode}, --debounce-quiet {debounce}, "
                    f"leading edge {leading}",
            "policy": policy_kind, "debounce_quiet": debounce, "leading": leading,
            "samples_ms": samples, "summary": summarize(samples),
            "server_ms": server, "server_summary": summarize(server),
            "round_medians_ms": [summarize(v.samples_ms)["median"] for v in done],
            "first_envoy_summary": summarize([x for v in done for x in v.first_ms]),
            "timeouts": sum(v.timeouts for v in done)})
    ratios = {}
    fastest, default = cfg.settings[0], cfg.settings[-1]
    for policy_kind in cfg.policies:
        by = {(v["debounce_quiet"], v["leading"]): v for v in variants
              if v["policy"] == policy_kind}
        base = by[fastest]["summary"]["median"]
        ratios[policy_kind] = {f"{d} leading {lead} / {fastest[0]} leading {fastest[1]}":
                               by[(d, lead)]["summary"]["median"] / base
                               for d, lead in cfg.settings}
        log(f"  debounce {policy_kind}: default (--debounce-quiet {default[0]}, leading "
            f"{default[1]}) median {by[default]['summary']['median']:.1f} ms = "
            f"{by[default]['summary']['median'] / base:.2f}x of --debounce-quiet {fastest[0]} "
            f"leading {fastest[1]} ({base:.1f} ms); 100ms without the leading edge "
            f"{by[('100ms', 'off')]['summary']['median']:.1f} ms"
            if ("100ms", "off") in by else "")
    return {
        "scenario": "debounce",
        "what": "one saved edit (write aside, rename) until ALL Envoys serve it, for three "
                "debounce settings in rotating rounds",
        "config": {"envoys": cfg.envoys, "edits_per_round": cfg.edits, "rounds": cfg.rounds,
                   "order": order, "policies": list(cfg.policies), "mode": cfg.mode,
                   "poll_ms": ccfg.poll_ms},
        "variants": variants, "ratios": ratios,
    }
