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

    python -m benchmarks.istio_mesh --locality --services 100 500 [--repeat 5]

Sidecar views with every DestinationRule's localityLbSetting (workloads in three regions)
beside the same mesh without: CPU seconds of a first view, a second in the same region and a
third in another (docs/benchmarks.md).

    python -m benchmarks.istio_mesh --bookinfo-edits 20

A bookinfo-sized edit instead: bookinfo (4 services, 6 workloads each with a sidecar,
destination-rule-all and virtual-service-all-v1 of Istio's samples) and the same policy written
natively, each served by a `Controller` (what `meshpilot serve` runs) whose six sidecar views
are built. Each edit saves the reviews VirtualService (native: its Route) flipped between v1
and v3 and times `controller.reload()`: the incremental load of the folder, the translation
and the snapshots of all six sidecars, put in the cache (the push to Envoys and the debounce
are not included: see `convergence`). Istio and native edits alternate in one process; the
medians, their ratio and the raw figures are printed, with the resources and bytes the edit
changed across the six views. `--instructions`: instructions per edit instead, counted by
callgrind (needs `valgrind`), which the machine's load cannot move.
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


REGIONS = 3  # --locality: workload w of each service runs in region r{w % REGIONS}


def istio_policy(services: int, locality: bool = False) -> str:
    """`locality`: each workload in a region, each DestinationRule with outlierDetection and
    a localityLbSetting failover, so every sidecar gets its callees' endpoints ranked for its
    own region (translators/locality.py)."""
    rule = ("\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 5}\n"
            "    loadBalancer: {localityLbSetting: {failover: [{from: r0, to: r1}]}}"
            if locality else "")
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
  subsets: [{{name: v0, labels: {{version: v0}}}}, {{name: v1, labels: {{version: v1}}}}]{rule}
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
  labels: {{app: s{i}, version: v{w % 2}}}""" + (f"\n  locality: r{w % REGIONS}/z1"
                                                 if locality else ""))
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


def measure_locality(services: int, repeat: int, work: Path) -> dict[str, object]:
    """CPU seconds (`time.process_time`) of three sidecar views of one Translation, without
    and with locality balancing, alternated in one process: s0-0 (region r0), s1-0 (r0 too:
    its clusters are the first one's) and s1-1 (r1: every callee's clusters ranked again)."""
    folders = {mode: write_folder(istio_policy(services, mode == "locality"),
                                  work / f"{mode}-{services}") for mode in ("plain", "locality")}
    views = ("s0-0.default", "s1-0.default", "s1-1.default")
    models = {mode: load_policy(folder) for mode, folder in folders.items()}
    found: dict[str, dict[str, list[float]]] = {m: {v: [] for v in views} for m in models}
    for _ in range(repeat):
        for mode, model in models.items():
            translation = Translation(model)
            for view in views:
                start = time.process_time()
                translation.snapshot(view)
                found[mode][view].append(time.process_time() - start)
    medians = {mode: {view: round(statistics.median(times), 4) for view, times in rows.items()}
               for mode, rows in found.items()}
    return {"services": services, "cpu_s": medians, "raw_cpu_s": found}


# ---- a bookinfo-sized edit ---------------------------------------------------------------------

BOOKINFO = (("productpage", ("v1",)), ("reviews", ("v1", "v2", "v3")), ("ratings", ("v1",)),
            ("details", ("v1",)))


def _bookinfo_workloads() -> list[tuple[str, str, str, int]]:
    """(app, version, workload name, last address byte)."""
    found = []
    for app, versions in BOOKINFO:
        for version in versions:
            found.append((app, version, f"{app}-{version}", len(found) + 1))
    return found


def bookinfo_istio(reviews: str) -> dict[str, str]:
    """The files of bookinfo as Istio documents: the mesh, Istio's destination-rule-all (its
    four hosts' subsets) and virtual-service-all-v1 with reviews sent to `reviews`."""
    mesh = []
    for app, _ in BOOKINFO:
        mesh.append(f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {app}, namespace: default}}
spec:
  hosts: [{app}.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: {app}}}}}""")
    for app, version, name, byte in _bookinfo_workloads():
        mesh.append(f"""apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}, namespace: default, annotations: {{meshpilot.io/app: "127.0.0.1:19080"}}}}
spec:
  address: 10.0.0.{byte}
  ports: {{http: 9080}}
  labels: {{app: {app}, version: {version}}}
  serviceAccount: bookinfo-{app}""")
    rules = [f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {app}}}
spec:
  host: {app}
  subsets: [{", ".join(f"{{name: {v}, labels: {{version: {v}}}}}" for v in versions)}]"""
             for app, versions in BOOKINFO]
    routes = [f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {app}}}
spec:
  hosts: [{app}]
  http:
  - route:
    - destination: {{host: {app}, subset: {reviews if app == "reviews" else "v1"}}}"""
              for app, _ in BOOKINFO]
    return {"mesh.yaml": "\n---\n".join(mesh), "destination-rule-all.yaml":
            "\n---\n".join(rules), "virtual-service-all-v1.yaml": "\n---\n".join(routes)}


def bookinfo_native(reviews: str) -> dict[str, str]:
    """The same policy in meshpilot's own language: a Service per host (endpoints, subsets), a
    Route per host (Istio's defaults written out: no timeout, 2 retries), a Service with a
    sidecar per workload calling every host."""
    services, routes = [], []
    workloads = _bookinfo_workloads()
    for app, versions in BOOKINFO:
        endpoints = ", ".join(f"{{address: 10.0.0.{byte}:9080, labels: {{version: {version}}}}}"
                              for a, version, _, byte in workloads if a == app)
        subsets = ", ".join(f"{v}: {{version: {v}}}" for v in versions)
        services.append(f"""kind: Service
name: {app}
endpoints: [{endpoints}]
subsets: {{{subsets}}}""")
        routes.append(f"""kind: Route
name: {app}
service: {app}
rules:
  - backends: [{{service: {app}, subset: {reviews if app == "reviews" else "v1"}}}]
    timeout: 0s
    retries: {{attempts: 2, on: [connect-failure, refused-stream, unavailable, cancelled]}}""")
    calls = ", ".join(app for app, _ in BOOKINFO)
    for _, _, name, _ in workloads:
        services.append(f"""kind: Service
name: {name}
sidecar: {{port: 9080, app: 127.0.0.1:19080, outbound_port: 15001, calls: [{calls}],
          unknown_hosts: passthrough}}""")  # Istio's default ALLOW_ANY
    return {"services.yaml": "\n---\n".join(services), "routes.yaml": "\n---\n".join(routes)}


class _Served:
    """A Controller on a folder with its six sidecar views built."""

    def __init__(self, folder: Path, files: dict[str, str], views: list[str],
                 edited: str) -> None:
        from meshpilot.runtime.controller import Controller
        from meshpilot.xds.cache import SnapshotCache

        folder.mkdir(parents=True)
        for name, text in files.items():
            (folder / name).write_text(text + "\n")
        self.folder, self.views, self.edited = folder, views, edited
        self.cache = SnapshotCache()
        self.controller = Controller(folder, self.cache)
        assert self.controller.reload(), "the policy did not load"
        for view in views:
            assert self.controller.snapshot_blocking(view) is not None, view

    def edit(self, text: str) -> dict[str, float]:
        before = {view: self.cache.get(view) for view in self.views}
        aside = self.folder / f".{self.edited}.tmp"
        aside.write_text(text + "\n")
        aside.replace(self.folder / self.edited)
        start = time.perf_counter()
        assert self.controller.reload(), "the edit was refused"
        elapsed = time.perf_counter() - start
        changed = changed_bytes = 0
        for view in self.views:
            old, new = before[view], self.cache.get(view)
            assert old is not None and new is not None
            for type_url in new.type_urls():
                a, b = old.get(type_url), new.get(type_url)
                for name in b.names():
                    if name not in a or a[name].version != b[name].version:
                        changed += 1
                        changed_bytes += len(b[name].body)
        return {"reload_s": elapsed, "changed": changed, "changed_bytes": changed_bytes}


def bookinfo_edits(edits: int, work: Path) -> dict[str, object]:
    import gc

    istio, native = _bookinfo_side("istio", work), _bookinfo_side("native", work)
    gc.collect()
    gc.freeze()  # as `meshpilot serve` does after start-up
    rows: dict[str, list[dict[str, float]]] = {"istio": [], "native": []}
    for edit in range(edits):
        target = "v3" if edit % 2 == 0 else "v1"
        # Alternate which side goes first, so drift on the shared machine hits both alike.
        order = [("istio", istio), ("native", native)]
        for side, served in order if edit % 2 == 0 else order[::-1]:
            files = bookinfo_istio(target) if side == "istio" else bookinfo_native(target)
            rows[side].append(served.edit(files[served.edited]))
    result: dict[str, object] = {"edits": edits}
    for side, found in rows.items():
        times = [r["reload_s"] for r in found]
        result[side] = {"median_ms": round(statistics.median(times) * 1000, 2),
                        "min_ms": round(min(times) * 1000, 2),
                        "max_ms": round(max(times) * 1000, 2),
                        "changed_resources": statistics.median(r["changed"] for r in found),
                        "changed_bytes": statistics.median(r["changed_bytes"] for r in found),
                        "raw_ms": [round(t * 1000, 2) for t in times]}
    result["ratio_istio_to_native"] = round(
        result["istio"]["median_ms"] / result["native"]["median_ms"], 2)  # type: ignore[index]
    return result


def _bookinfo_side(side: str, work: Path) -> _Served:
    if side == "istio":
        return _Served(work / "istio", bookinfo_istio("v1"),
                       [f"{name}.default" for _, _, name, _ in _bookinfo_workloads()],
                       "virtual-service-all-v1.yaml")
    return _Served(work / "native", bookinfo_native("v1"),
                   [name for _, _, name, _ in _bookinfo_workloads()], "routes.yaml")


def _bookinfo_worker(side: str, edits: int) -> None:
    """One side set up, then `edits` edits (run under callgrind by `bookinfo_instructions`)."""
    with tempfile.TemporaryDirectory() as work:
        served = _bookinfo_side(side, Path(work))
        for edit in range(edits):
            target = "v3" if edit % 2 == 0 else "v1"
            files = bookinfo_istio(target) if side == "istio" else bookinfo_native(target)
            served.edit(files[served.edited])


def bookinfo_instructions(edits: int, work: Path) -> dict[str, object]:
    """Instructions per bookinfo edit, counted by callgrind (the machine's load cannot move
    them): per side, a process that sets up and one that also makes `edits` edits; their
    difference over `edits`."""
    import os
    import re
    import subprocess
    import sys

    collected = re.compile(r"Collected : (\d+)")
    root = Path(__file__).resolve().parent.parent
    found: dict[str, object] = {}
    for side in ("istio", "native"):
        counts = []
        for n in (0, edits):
            done = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/{side}.{n}.out",
                 sys.executable, "-m", "benchmarks.istio_mesh", "--bookinfo-worker", side,
                 str(n)], cwd=root, env=dict(os.environ, PYTHONHASHSEED="0"),
                capture_output=True, text=True, check=False)
            match = collected.search(done.stderr)
            if done.returncode != 0 or match is None:
                raise RuntimeError(f"callgrind run failed ({side}, {n}):\n{done.stderr[-2000:]}")
            counts.append(int(match.group(1)))
        found[side] = {"setup": counts[0], "with_edits": counts[1],
                       "per_edit": (counts[1] - counts[0]) // edits}
    found["ratio_istio_to_native"] = round(
        found["istio"]["per_edit"] / found["native"]["per_edit"], 2)  # type: ignore[index]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--bookinfo-edits", type=int, default=0,
                        help="instead: this many bookinfo-sized edits, Istio beside native")
    parser.add_argument("--instructions", action="store_true",
                        help="with --bookinfo-edits: count instructions per edit (callgrind)")
    parser.add_argument("--bookinfo-worker", nargs=2, metavar=("SIDE", "EDITS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--locality", action="store_true",
                        help="instead: sidecar views with and without localityLbSetting "
                             "(CPU seconds)")
    args = parser.parse_args()
    if args.locality:
        with tempfile.TemporaryDirectory() as work:
            for services in args.services:
                print(json.dumps(measure_locality(services, args.repeat, Path(work))),
                      flush=True)
        return
    if args.bookinfo_worker:
        _bookinfo_worker(args.bookinfo_worker[0], int(args.bookinfo_worker[1]))
        return
    if args.bookinfo_edits:
        with tempfile.TemporaryDirectory() as work:
            measure_edits = bookinfo_instructions if args.instructions else bookinfo_edits
            print(json.dumps(measure_edits(args.bookinfo_edits, Path(work))), flush=True)
        return
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
