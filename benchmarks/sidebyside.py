"""Scenario `sidebyside`: Envoy start to first served request, with and without a control plane.

The same config everywhere: the language policy Service `app` (subsets v1 and v2, one echo
backend each), Gateway `edge` (one HTTP listener on a free port P picked here) and a Route sending
`/` 90/10 to the subsets. meshpilot translates it once; the same resources are then served by

- `static`: the floor. Envoy with the resources as a static bootstrap (EDS clusters made STATIC with
  their ClusterLoadAssignment inline, the listener's RDS replaced by the route configuration
  inline): no control plane at all;
- `meshpilot`: `meshpilot serve` (already running, warm) over ADS (SotW), Envoy bootstrap from
  `meshpilot.local.bootstrap.render_bootstrap`;
- `sovereign` (optional; a separate virtualenv with `pip install sovereign`, never a meshpilot
  dependency): sovereign serving the static form of the same clusters and listener from Python
  templates over REST/JSON xDS (`api_config_source: REST`, `refresh_delay` `sovereign_refresh_s`).

Per run: t0 just before Envoy's process starts; GET / through port P every 5 ms until a 200;
the sample is the first 200 minus t0. `runs` per variant, interleaved (static, meshpilot,
sovereign, static, ...) so that machine noise hits all alike; medians and ratios to static.

Change to served (meshpilot and sovereign): with one Envoy serving, the split is flipped to 0/100
(meshpilot: a saved policy edit, `--debounce-quiet 10ms`; sovereign: the JSON file its templates
read is rewritten, Envoy picks it up on its next REST poll), and the probe waits until answers come
from v2.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, now_ns, save_aside, stop_process, tail, wait_for
from benchmarks.convergence import _Probe, _Serve, _start_echo
from benchmarks.stats import summarize
from meshpilot.local.bootstrap import render_bootstrap
from meshpilot.local.envoy_process import EnvoyProcess

_HCM = ("type.googleapis.com/"
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager")


@dataclass
class SideBySideConfig:
    runs: int = 7
    changes: int = 5
    sovereign_python: str | None = None  # default: <repo>/.sovereign-venv/bin/python
    sovereign_refresh_s: float = 1.0
    first_request_timeout_s: float = 30.0

    @classmethod
    def quick(cls) -> SideBySideConfig:
        return cls(runs=2, changes=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def policy_text(backends: dict[str, int], port: int, v1: int) -> str:
    return f"""kind: Service
name: app
endpoints:
  - {{address: 127.0.0.1:{backends['v1']}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1:{backends['v2']}, labels: {{version: v2}}}}
subsets: {{v1: {{version: v1}}, v2: {{version: v2}}}}
---
kind: Gateway
name: edge
listeners: [{{name: http, port: {port}, address: 127.0.0.1}}]
---
kind: Route
name: shop
gateway: edge
rules:
  - backends:
      - {{service: app, subset: v1, weight: {v1}}}
      - {{service: app, subset: v2, weight: {100 - v1}}}
"""


def static_resources(policy_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """meshpilot's resources for view `edge`, made self-contained (no EDS, no RDS), as JSON."""
    from google.protobuf import descriptor_pool, message_factory
    from google.protobuf.json_format import MessageToDict

    from meshpilot.base import types
    from meshpilot.inputs.loader import load_policy
    from meshpilot.translators import Translation

    snapshot = Translation(load_policy(policy_dir)).snapshot("edge")

    def dicts(type_url: str) -> list[dict[str, Any]]:
        out = []
        cls = message_factory.GetMessageClass(
            descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[-1]))
        for resource in snapshot.get(type_url).values():
            message = cls.FromString(resource.body)
            out.append(MessageToDict(message, preserving_proto_field_name=True))
        return out

    assignments = {a["cluster_name"]: a for a in dicts(types.ENDPOINT)}
    routes = {r["name"]: r for r in dicts(types.ROUTE)}
    clusters = []
    for cluster in dicts(types.CLUSTER):
        if cluster.get("type") == "EDS":
            service = cluster.get("eds_cluster_config", {}).get("service_name", cluster["name"])
            cluster.pop("eds_cluster_config", None)
            cluster["type"] = "STATIC"
            cluster["load_assignment"] = assignments[service]
        clusters.append(cluster)
    listeners = []
    for listener in dicts(types.LISTENER):
        for chain in listener.get("filter_chains", []):
            for f in chain.get("filters", []):
                hcm = f.get("typed_config", {})
                if hcm.get("@type") == _HCM and "rds" in hcm:
                    hcm["route_config"] = routes[hcm.pop("rds")["route_config_name"]]
        listeners.append(listener)
    return {"clusters": clusters, "listeners": listeners}


def _static_bootstrap(resources: dict[str, Any]) -> dict[str, Any]:
    return {"node": {"id": "static-0", "cluster": "edge"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": resources}


def _sovereign_bootstrap(port: int, refresh_s: float) -> dict[str, Any]:
    source = {"api_config_source": {
        "api_type": "REST", "transport_api_version": "V3", "cluster_names": ["sovereign"],
        "refresh_delay": f"{refresh_s}s", "request_timeout": "5s"},
        "resource_api_version": "V3"}
    return {
        "node": {"id": "sov-0", "cluster": "edge"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {"cds_config": source, "lds_config": source},
        "static_resources": {"clusters": [{
            "name": "sovereign", "type": "STATIC", "connect_timeout": "2s",
            "load_assignment": {"cluster_name": "sovereign", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": port}}}}]}]}}]},
    }


_SOVEREIGN_TEMPLATE = '''"""sovereign template (meshpilot benchmarks): one type from JSON."""
import json
import os


def call(*args, **kwargs):
    with open(os.environ["BENCH_RESOURCES"]) as f:
        yield from json.load(f)["{kind}"]
'''


class _Sovereign:
    def __init__(self, python: str, work: Path, resources: dict[str, Any]):
        work.mkdir(parents=True, exist_ok=True)
        self.resources_path = work / "resources.json"
        self.write(resources)
        for kind in ("clusters", "listeners"):
            (work / f"bench_sov_{kind}.py").write_text(_SOVEREIGN_TEMPLATE.replace("{kind}", kind))
        config = {"templates": {"default": [
            {"type": kind, "spec": {"protocol": "python", "serialization": "raw",
                                    "path": str(work / f"bench_sov_{kind}.py")}}
            for kind in ("clusters", "listeners")]}}
        (work / "sovereign.yaml").write_text(json.dumps(config))
        self.port = _free_port()
        self.log_path = work / "sovereign.log"
        env = dict(os.environ, SOVEREIGN_CONFIG=f"file://{work / 'sovereign.yaml'}",
                   SOVEREIGN_HOST="127.0.0.1", SOVEREIGN_PORT=str(self.port),
                   SOVEREIGN_WORKERS="1", BENCH_RESOURCES=str(self.resources_path),
                   PYTHONPATH=str(work))
        binary = Path(python).parent / "sovereign"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(binary)], stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=str(work))
        self.started = time.monotonic()
        wait_for(self._ready, timeout=60, what="sovereign to answer")
        self.startup_s = time.monotonic() - self.started

    def write(self, resources: dict[str, Any]) -> None:
        save_aside(self.resources_path, json.dumps(resources))

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"sovereign exited {self.proc.returncode}:\n{tail(self.log_path)}")
        body = json.dumps({"node": {"id": "probe", "cluster": "edge"}, "version_info": "",
                           "resource_names": []}).encode()
        request = (f"POST /v3/discovery:clusters HTTP/1.1\r\nHost: x\r\nContent-Type: "
                   f"application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                   ).encode() + body
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(request)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.startswith(b"HTTP/1.1 200") and b"app" in data

    def stop(self) -> None:
        stop_process(self.proc)


def _first_served(bootstrap: dict[str, Any], port: int, work: Path, name: str,
                  timeout: float) -> tuple[float, EnvoyProcess]:
    """Start Envoy; ms from just before its process starts until GET / through P is a 200."""
    envoy = EnvoyProcess(bootstrap, work, name=name)
    probe = _Probe(port, 0.5)
    t0 = now_ns()
    envoy.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if probe.get_backend() in ("v1", "v2"):
                return (now_ns() - t0) / 1e6, envoy
            if not envoy.is_running():
                raise RuntimeError(f"{name} exited:\n{envoy.log_tail()}")
            time.sleep(0.005)
        raise RuntimeError(f"{name}: no 200 through port {port} within {timeout:.0f}s:\n"
                           f"{envoy.log_tail()}")
    except BaseException:
        envoy.stop()
        raise
    finally:
        probe.close()


def _change_to_served(save: Any, port: int, timeout: float = 30.0) -> float:
    """Flip to 0/100 (v2 only) with `save(stamp)`; ms from the save until 20 answers in a row
    come from v2 (the first of them counts)."""
    probe = _Probe(port, 0.5)
    t0 = 0

    def stamp() -> None:
        nonlocal t0
        t0 = now_ns()

    save(stamp)
    first, streak = 0, 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            seen = now_ns()
            if probe.get_backend() == "v2":
                first = first or seen
                streak += 1
                if streak >= 20:
                    return (first - t0) / 1e6
            else:
                first, streak = 0, 0
            time.sleep(0.003)
    finally:
        probe.close()
    raise RuntimeError("change not served in time")


def run(cfg: SideBySideConfig, work: Path, log: Any = print) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    echoes: list[subprocess.Popen[bytes]] = []
    serve: _Serve | None = None
    sovereign: _Sovereign | None = None
    samples: dict[str, list[float]] = {"static": [], "meshpilot": []}
    changes: dict[str, list[float]] = {"meshpilot": []}
    sovereign_error: str | None = None
    sov_python = cfg.sovereign_python or str(ROOT / ".sovereign-venv" / "bin" / "python")
    try:
        backends = {}
        for name in ("v1", "v2"):
            proc, bport = _start_echo(name, work)
            echoes.append(proc)
            backends[name] = bport
        policy_dir = work / "policy"
        policy_dir.mkdir()
        policy = policy_dir / "edge.yaml"
        save_aside(policy, policy_text(backends, port, 90))
        resources = static_resources(policy_dir)
        (work / "static-resources.json").write_text(json.dumps(resources, indent=1))
        serve = _Serve(policy_dir, work / "meshpilot.log", "10ms")
        xds = render_bootstrap(node_id="mp-0", node_cluster="edge",
                               xds_addresses=[("127.0.0.1", serve.xds_port)],
                               admin_address=("127.0.0.1", 0), **serve.security("edge"))
        if Path(sov_python).exists():
            try:
                sovereign = _Sovereign(sov_python, work / "sovereign", resources)
                samples["sovereign"], changes["sovereign"] = [], []
                log(f"  sidebyside: sovereign up in {sovereign.startup_s:.1f}s on port "
                    f"{sovereign.port}")
            except Exception as e:  # recorded, the rest goes on
                sovereign_error = f"{type(e).__name__}: {e}"[:3000]
                log(f"  sidebyside: sovereign did not work: {sovereign_error[:500]}")
        else:
            sovereign_error = f"no sovereign virtualenv at {sov_python}"
        bootstraps = {"static": _static_bootstrap(resources), "meshpilot": xds}
        if sovereign is not None:
            bootstraps["sovereign"] = _sovereign_bootstrap(sovereign.port,
                                                           cfg.sovereign_refresh_s)
        for r in range(cfg.runs):
            for variant, bootstrap in bootstraps.items():
                try:
                    ms, envoy = _first_served(bootstrap, port, work / f"{variant}-{r}",
                                              f"envoy-{variant}-{r}",
                                              cfg.first_request_timeout_s)
                except RuntimeError as e:
                    if variant != "sovereign":
                        raise
                    sovereign_error = str(e)[:3000]
                    log(f"  sidebyside: sovereign run failed: {sovereign_error[:500]}")
                    bootstraps.pop("sovereign")
                    samples.pop("sovereign", None)
                    changes.pop("sovereign", None)
                    break
                envoy.stop()
                samples[variant].append(round(ms, 2))
            log(f"  sidebyside run {r + 1}: " + ", ".join(
                f"{v} {s[-1]:.0f} ms" for v, s in samples.items() if len(s) > r))
        # Change to served, one Envoy per control plane.
        for variant in [v for v in ("meshpilot", "sovereign") if v in bootstraps]:
            _, envoy = _first_served(bootstraps[variant], port, work / f"{variant}-change",
                                     f"envoy-{variant}-change", cfg.first_request_timeout_s)
            try:
                for c in range(cfg.changes):
                    v1 = 0 if c % 2 == 0 else 100  # 0/100 then back to 100/0
                    target_policy = policy_text(backends, port, v1)
                    if variant == "meshpilot":
                        def save(stamp: Any, text: str = target_policy) -> None:
                            save_aside(policy, text, stamp)
                    else:
                        tmp = work / f"change-{c}"
                        tmp.mkdir()
                        save_aside(tmp / "edge.yaml", target_policy)
                        new = static_resources(tmp)
                        assert sovereign is not None

                        def save(stamp: Any, new: dict[str, Any] = new) -> None:
                            stamp()
                            sovereign.write(new)
                    if v1 == 0:
                        changes[variant].append(round(_change_to_served(save, port), 2))
                    else:
                        save(lambda: None)
                        time.sleep(cfg.sovereign_refresh_s * 2 + 0.5)
                log(f"  sidebyside: {variant} change to served: {changes[variant]} ms")
            finally:
                envoy.stop()
                save_aside(policy, policy_text(backends, port, 90))
    finally:
        if sovereign is not None:
            sovereign.stop()
        if serve is not None:
            serve.stop()
        for proc in echoes:
            stop_process(proc)
    summary = {v: summarize(s) for v, s in samples.items()}
    floor = summary["static"]["median"]
    ratios = {v: (s["median"] / floor if floor and s["median"] else None)
              for v, s in summary.items()}
    log("  sidebyside: start to first served request, median: " + ", ".join(
        f"{v} {s['median']:.0f} ms ({ratios[v]:.2f}x static)" for v, s in summary.items()))
    sov_version = None
    with contextlib.suppress(Exception):
        sov_version = subprocess.run(
            [sov_python, "-c", "import importlib.metadata as m; print(m.version('sovereign'))"],
            capture_output=True, text=True, timeout=30).stdout.strip() or None
    return {
        "scenario": "sidebyside",
        "what": "Envoy process start until the first 200 through its listener: static "
                "bootstrap (no control plane) vs meshpilot (ADS, warm) vs sovereign (REST)",
        "config": {"runs": cfg.runs, "changes": cfg.changes,
                   "sovereign_refresh_s": cfg.sovereign_refresh_s,
                   "sovereign_version": sov_version,
                   "envoy": shutil.which("envoy") or "envoy",
                   "python": sys.version.split()[0]},
        "samples_ms": samples, "summary": summary, "ratio_to_static": ratios,
        "change_to_served_ms": changes,
        "change_summary": {v: summarize(s) for v, s in changes.items()},
        "sovereign_error": sovereign_error,
    }
