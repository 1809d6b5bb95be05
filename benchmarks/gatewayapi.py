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
    python -m benchmarks.gatewayapi --instructions [--base REV] [--sizes 1000] [--edits 4]

With `--instructions`, each input's edits are counted in instructions under callgrind instead
(`benchmarks/instructions.py`: a figure the machine's load cannot move), in this tree and, with
`--base`, in a worktree of that revision: `route` is one route's split changed, `service` one
backend endpoint's address (an EndpointSlice, natively the Service's endpoint).
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
    cpu: list[float] = []  # what a loaded machine cannot inflate as much as wall time
    make, _ = POLICIES[kind]
    for edit in range(edits):
        split = 80 - 5 * (edit % 10)
        (path / "routes-000000.yaml").write_text(make(min(PER_FILE, count), 0, split))
        begun, begun_cpu = time.perf_counter(), time.process_time()
        translation = Translation(loader.load(), previous=translation)
        translation.snapshot(view)
        samples.append(time.perf_counter() - begun)
        cpu.append(time.process_time() - begun_cpu)
    return {"cold": cold, "edit_s": summarize(samples), "edit_cpu_s": summarize(cpu)}


# Run under callgrind by `instructions.count`, in the measured tree: the phases it counts
# are `cold`, `route` and `service` (a line on stdin starts each, one on stdout ends it).
INSTRUCTIONS_WORKER = '''
import gc, sys
from pathlib import Path
sys.path.insert(0, ".")
from benchmarks.gatewayapi import PER_FILE, POLICIES
from meshpilot.runtime.controller import Controller
from meshpilot.xds.cache import SnapshotCache
folder, edits = Path(sys.argv[1]), int(sys.argv[2])
first = folder / "routes-000000.yaml"
original = first.read_text()
kind = "gateway-api" if "gateway.networking.k8s.io" in original else "native"
make, view = POLICIES[kind]
count = original.count("kind: Route") + original.count("kind: HTTPRoute")
assert "127.1.0.0" in original and count == PER_FILE, "the policies changed shape"

def edited(what, edit):
    if what == "service":
        return original.replace("127.1.0.0", "127.1.0.%d" % (100 + edit), 1)
    return make(count, 0, 80 - 5 * (edit % 10))

def phase():
    print("ready", flush=True)
    sys.stdin.readline()

controller = Controller(folder, SnapshotCache())
phase()
assert controller.reload()
controller.snapshot_blocking(view)
gc.collect()
gc.freeze()
try:
    for what in ("route", "service"):
        phase()
        for edit in range(edits):
            first.write_text(edited(what, edit))
            assert controller.reload()
            controller.snapshot_blocking(view)
        first.write_text(original)
        phase()
        assert controller.reload()
        controller.snapshot_blocking(view)
finally:
    first.write_text(original)
phase()
'''


def run_instructions(sizes: tuple[int, ...], edits: int, base: str | None,
                     log: Any = print) -> dict[str, Any]:
    """Per tree (this one; `base`'s worktree), input and size: instructions of a cold load
    and of one route and one service edit, and the Gateway API / native ratios."""
    from benchmarks.compare import worktree
    from benchmarks.instructions import count

    results: dict[str, Any] = {"sizes": list(sizes), "edits": edits, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="meshpilot-gwapi-") as scratch_dir:
        scratch = Path(scratch_dir)
        worker = scratch / "worker.py"
        worker.write_text(INSTRUCTIONS_WORKER)
        trees = {"head": ROOT}
        if base is not None:
            trees["base"] = worktree(base, scratch / "base")
            # The base measures with this revision's policies and worker.
            (trees["base"] / "benchmarks" / "gatewayapi.py").write_text(
                Path(__file__).read_text())
        for side, tree in trees.items():
            for count_ in sizes:
                figures: dict[str, dict[str, float]] = {}
                for kind in POLICIES:
                    folder = scratch / f"{side}-{kind}-{count_}"
                    write_policy(folder, kind, count_)
                    raw = count(tree, worker, folder, edits,
                                scratch / f"{side}.{kind}.{count_}.out")
                    figures[kind] = {"cold": raw["cold"], "route": raw["route"] / edits,
                                     "service": raw["service"] / edits}
                    log(f"{side:4} {kind:12} {count_:6} routes: cold {raw['cold'] / 1e6:8.1f} M,"
                        f" one route edit {figures[kind]['route'] / 1e6:7.1f} M, one service "
                        f"edit {figures[kind]['service'] / 1e6:7.1f} M instructions")
                ratios = {what: figures["gateway-api"][what] / figures["native"][what]
                          for what in ("cold", "route", "service")}
                results["runs"][f"{side}/{count_}"] = {**figures, "ratio": ratios}
                log(f"{side:4} {'':12} {count_:6} routes: Gateway API / native: cold "
                    f"{ratios['cold']:.2f}x, route edit {ratios['route']:.2f}x, service edit "
                    f"{ratios['service']:.2f}x")
    return results


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
                    f"{edit['median'] * 1000:.0f} ms (p90 {edit['p90'] * 1000:.0f} ms), CPU "
                    f"{result['edit_cpu_s']['median'] * 1000:.0f} ms")
            gateway_api, native = (results["runs"][f"{k}/{count}"] for k in POLICIES)
            results["runs"][f"ratio/{count}"] = ratio = \
                gateway_api["edit_cpu_s"]["median"] / native["edit_cpu_s"]["median"]
            log(f"{'':12} {count:6} routes: a Gateway API edit costs {ratio:.2f}x the native "
                "one (CPU, medians)")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000", help="route counts, comma separated")
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions under callgrind instead of timing")
    parser.add_argument("--base", help="with --instructions: a revision to compare with")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.kind, args.count, args.edits)))
        return 0
    sizes = tuple(int(s) for s in args.sizes.split(","))
    if args.instructions:
        run_instructions(sizes, args.edits, args.base)
    else:
        run(sizes, args.edits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
