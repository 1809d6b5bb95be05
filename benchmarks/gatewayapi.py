"""Scenario `gatewayapi`: N HTTPRoutes on one Gateway, against the same policy written natively.

Issue 12: "1,000 HTTPRoutes on one Gateway, cold load and one-route edit, side by side in one run
with the same policy written natively (the two inputs should cost about the same)". Both
policies serve the same traffic: one Gateway with one HTTP listener; per route i a host
`svc-i.example.com`, a PathPrefix `/` match, a 90/10 split between two backends (Gateway API:
two Kubernetes Services with an EndpointSlice each; native: one Service with subsets v1/v2), a
2 s timeout. Files hold 1,000 routes (plus their backends) each.

Per input and size, in one fresh worker process each (`--worker`):

- cold: `load_policy(DIR)` + `Translation(model).snapshot(view)`, as `meshpilot validate` and a
  first `serve` load do;
- edit: a warm `PolicyLoader` and `Translation(model, previous=...)`, then the first file
  rewritten with route 0's split changed, and the reload + snapshot timed (median of `edits`).

    python -m benchmarks.gatewayapi [--sizes 1000,5000] [--edits 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, child_env
from benchmarks.stats import summarize

PER_FILE = 1000
CLASS = """apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: meshpilot}
spec: {controllerName: meshpilot.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: bench}
spec:
  gatewayClassName: meshpilot
  listeners: [{name: http, port: 10000, protocol: HTTP}]
"""


def _ip(i: int, a: int) -> str:
    return f"127.{a}.{(i >> 8) & 255}.{i & 255}"


def gateway_api_policy(count: int, first: int, split: int = 90) -> str:
    docs = [CLASS] if first == 0 else []
    for i in range(first, first + count):
        name = f"svc-{i:05d}"
        for version, a in (("v1", 0), ("v2", 1)):
            docs.append(f"""apiVersion: v1
kind: Service
metadata: {{name: {name}-{version}, namespace: bench}}
spec: {{ports: [{{name: http, port: 80, targetPort: 8000}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-{version}-1
  namespace: bench
  labels: {{kubernetes.io/service-name: {name}-{version}}}
addressType: IPv4
ports: [{{name: http, port: 8000}}]
endpoints: [{{addresses: ['{_ip(i, a)}']}}]
""")
        weight = split if i == 0 else 90
        docs.append(f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: bench}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [{name}.example.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs:
    - {{name: {name}-v1, port: 80, weight: {weight}}}
    - {{name: {name}-v2, port: 80, weight: {100 - weight}}}
    timeouts: {{request: 2s}}
""")
    return "---\n".join(docs)


def native_policy(count: int, first: int, split: int = 90) -> str:
    docs = ["kind: Gateway\nname: edge\nlisteners:\n  - {name: http, port: 10000}\n"] \
        if first == 0 else []
    for i in range(first, first + count):
        name = f"svc-{i:05d}"
        weight = split if i == 0 else 90
        docs.append(
            f"kind: Service\nname: {name}\nendpoints:\n"
            f"  - {{address: '{_ip(i, 0)}:8000', labels: {{version: v1}}}}\n"
            f"  - {{address: '{_ip(i, 1)}:8000', labels: {{version: v2}}}}\n"
            f"subsets: {{v1: {{version: v1}}, v2: {{version: v2}}}}\n")
        docs.append(
            f"kind: Route\nname: {name}\ngateway: edge\nhosts: [{name}.example.com]\nrules:\n"
            f"  - match: {{path: {{prefix: /}}}}\n"
            f"    backends: [{{service: {name}, subset: v1, weight: {weight}}},"
            f" {{service: {name}, subset: v2, weight: {100 - weight}}}]\n"
            f"    timeout: 2s\n")
    return "---\n".join(docs)


POLICIES = {"gateway-api": (gateway_api_policy, "bench/edge"), "native": (native_policy, "edge")}


def write_policy(folder: Path, kind: str, count: int, split: int = 90) -> None:
    make, _ = POLICIES[kind]
    folder.mkdir(parents=True, exist_ok=True)
    for first in range(0, count, PER_FILE):
        (folder / f"routes-{first:06d}.yaml").write_text(
            make(min(PER_FILE, count - first), first, split))


def _worker(folder: str, kind: str, count: int, edits: int) -> dict[str, Any]:
    import gc

    from meshpilot.inputs.loader import PolicyLoader, load_policy
    from meshpilot.translators import Translation

    _, view = POLICIES[kind]
    path = Path(folder)
    started = time.perf_counter()
    model = load_policy(path)
    loaded = time.perf_counter()
    snapshot = Translation(model).snapshot(view)
    cold = {"load_s": loaded - started, "translate_s": time.perf_counter() - loaded,
            "routes": sum(1 for r in model.routes if r.gateway is not None),
            "version": snapshot.version}
    loader = PolicyLoader(path)
    translation = Translation(loader.load())
    translation.snapshot(view)
    gc.freeze()
    samples: list[float] = []
    make, _ = POLICIES[kind]
    for edit in range(edits):
        split = 80 - 5 * (edit % 10)
        (path / "routes-000000.yaml").write_text(make(min(PER_FILE, count), 0, split))
        begun = time.perf_counter()
        translation = Translation(loader.load(), previous=translation)
        translation.snapshot(view)
        samples.append(time.perf_counter() - begun)
    return {"cold": cold, "edit_s": summarize(samples)}


def run(sizes: tuple[int, ...], edits: int, log: Any = print) -> dict[str, Any]:
    results: dict[str, Any] = {"sizes": list(sizes), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="meshpilot-gwapi-") as scratch:
        for count in sizes:
            for kind in POLICIES:
                folder = Path(scratch) / f"{kind}-{count}"
                write_policy(folder, kind, count)
                done = subprocess.run(
                    [sys.executable, "-m", "benchmarks.gatewayapi", "--worker", str(folder),
                     "--kind", kind, "--count", str(count), "--edits", str(edits)],
                    capture_output=True, text=True, timeout=1800, env=child_env(),
                    cwd=str(ROOT), check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"{kind} {count}: {done.stderr[-2000:]}")
                result = json.loads(done.stdout.splitlines()[-1])
                results["runs"][f"{kind}/{count}"] = result
                cold, edit = result["cold"], result["edit_s"]
                log(f"{kind:12} {count:6} routes: cold load {cold['load_s']:.2f}s + translate "
                    f"{cold['translate_s']:.2f}s; one-route edit median "
                    f"{edit['median'] * 1000:.0f} ms (p90 {edit['p90'] * 1000:.0f} ms)")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000", help="route counts, comma separated")
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.kind, args.count, args.edits)))
        return 0
    run(tuple(int(s) for s in args.sizes.split(",")), args.edits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
