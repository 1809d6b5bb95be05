"""An Istio VM mesh of N services: how long the Istio input takes to load, and a sidecar's view
to build, beside the same mesh written natively.

    python -m benchmarks.istio_mesh --services 100 500 1000 [--repeat 5]

Each service is a ServiceEntry (one HTTP port, a workloadSelector), three WorkloadEntries (two
versions), a DestinationRule with two subsets and a VirtualService splitting 90/10 between
them; natively, the same as a Service with endpoints and subsets, a Route attached to it, and
one Service with a sidecar per workload calling every service (Istio's default without a
Sidecar resource). Timed in this process, after a first warm-up load: `load_policy` (files of
200 documents; YAML with positions, parsing, Istio's compile step), then a workload's view
(`snapshot`, the
first one builds every callee's clusters) and a second workload's (clusters reused). Medians
of `--repeat` runs; docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from meshpilot.inputs.loader import load_policy
from meshpilot.translators import Translation

WORKLOADS_PER_SERVICE = 3


def istio_policy(services: int) -> str:
    documents = []
    for i in range(services):
        documents.append(f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: s{i}}}
spec:
  hosts: [s{i}.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: s{i}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: s{i}}}
spec:
  host: s{i}
  subsets: [{{name: v0, labels: {{version: v0}}}}, {{name: v1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: s{i}}}
spec:
  hosts: [s{i}]
  http:
  - route: [{{destination: {{host: s{i}, subset: v0}}, weight: 90}},
            {{destination: {{host: s{i}, subset: v1}}, weight: 10}}]""")
        for w in range(WORKLOADS_PER_SERVICE):
            documents.append(f"""apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: s{i}-{w}, annotations: {{meshpilot.io/app: "127.0.0.1:8080"}}}}
spec:
  address: 10.{i // 250}.{i % 250}.{w + 1}
  ports: {{http: 9080}}
  labels: {{app: s{i}, version: v{w % 2}}}""")
    return "\n---\n".join(documents)


def native_policy(services: int) -> str:
    calls = ", ".join(f"s{i}" for i in range(services))
    documents = []
    for i in range(services):
        endpoints = ", ".join(f"{{address: 10.{i // 250}.{i % 250}.{w + 1}:9080, labels: "
                              f"{{version: v{w % 2}}}}}" for w in range(WORKLOADS_PER_SERVICE))
        documents.append(f"""kind: Service
name: s{i}
endpoints: [{endpoints}]
subsets: {{v0: {{version: v0}}, v1: {{version: v1}}}}
---
kind: Route
name: s{i}
service: s{i}
rules:
  - backends: [{{service: s{i}, subset: v0, weight: 90}}, {{service: s{i}, subset: v1, weight: 10}}]
    timeout: 0s
    retries: {{attempts: 2, on: [connect-failure, refused-stream, unavailable, cancelled]}}""")
        for w in range(WORKLOADS_PER_SERVICE):
            documents.append(f"""kind: Service
name: s{i}-{w}
sidecar: {{port: 9080, app: 127.0.0.1:8080, outbound_port: 15001, calls: [{calls}]}}""")
    return "\n---\n".join(documents)


def write_folder(text: str, folder: Path) -> Path:
    """The documents in files of 200 (a file holds at most 16 MiB)."""
    folder.mkdir(parents=True)
    documents = text.split("\n---\n")
    for index in range(0, len(documents), 200):
        (folder / f"part-{index // 200:04d}.yaml").write_text(
            "\n---\n".join(documents[index:index + 200]) + "\n")
    return folder


def measure(folder: Path, views: tuple[str, str], repeat: int) -> dict[str, float]:
    load_policy(folder)  # warm: imports, caches
    loads, firsts, seconds = [], [], []
    for _ in range(repeat):
        start = time.perf_counter()
        model = load_policy(folder)
        loaded = time.perf_counter()
        translation = Translation(model)
        translation.snapshot(views[0])
        first = time.perf_counter()
        translation.snapshot(views[1])
        loads.append(loaded - start)
        firsts.append(first - loaded)
        seconds.append(time.perf_counter() - first)
    return {"load_s": statistics.median(loads), "first_view_s": statistics.median(firsts),
            "second_view_s": statistics.median(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        for services in args.services:
            istio = write_folder(istio_policy(services), Path(work) / f"istio-{services}")
            native = write_folder(native_policy(services), Path(work) / f"native-{services}")
            row = {"services": services, "workloads": services * WORKLOADS_PER_SERVICE,
                   "istio": measure(istio, ("s0-0.default", "s1-0.default"), args.repeat),
                   "native": measure(native, ("s0-0", "s1-0"), args.repeat)}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
