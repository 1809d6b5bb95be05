"""Scenario `translation`: a raw policy of N clusters from files to serialized xDS, cold.

Each run is a fresh Python process (`python -m benchmarks.translation --worker ...`), so nothing is
warm: after the imports (timed apart), it times
- load: `meshpilot.inputs.loader.load_policy(dir)` (YAML with positions, schema walk, ParseDict);
- translate: `Translation(model)`, which serializes every resource once (bytes, hash, wire
  fragments);
- snapshot: `translation.snapshot(view)` (the view's immutable, content-versioned maps);
- bodies: the shared SotW body of every type (what the first stream's response is built from);
and reports RSS before loading and the peak RSS (VmHWM) after. A separate run per size traces
Python allocations with tracemalloc (slower, so not timed) for the peak of Python memory.

The policy: N EDS clusters, each with a ClusterLoadAssignment of one static endpoint, split into
files of 1,000 clusters (the fan-out scenario's policy).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, child_env, python_module_cmd
from benchmarks.stats import summarize


@dataclass
class TranslationConfig:
    sizes: tuple[int, ...] = (1000, 5000)
    service_sizes: tuple[int, ...] = (1000, 10000)
    runs: int = 5

    @classmethod
    def quick(cls) -> TranslationConfig:
        return cls(sizes=(200, 1000), service_sizes=(200,), runs=2)


def write_services_policy(folder: Path, count: int, per_file: int = 1000) -> None:
    from benchmarks.policies import services_policy

    folder.mkdir(parents=True, exist_ok=True)
    for first in range(0, count, per_file):
        (folder / f"services-{first:06d}.yaml").write_text(
            services_policy(min(per_file, count - first), first=first))


def _validate_seconds(policy: Path) -> float:
    """Wall time of `meshpilot validate DIR`, the command a user or CI runs (imports included)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "meshpilot", "validate", str(policy)],
                          capture_output=True, text=True, timeout=600, env=child_env(),
                          cwd=str(ROOT), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"validate failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def _worker(policy: str, traced: bool) -> dict[str, Any]:
    started = time.perf_counter()
    import tracemalloc

    from benchmarks.common import proc_peak_rss_bytes, proc_rss_bytes
    from meshpilot.inputs.loader import load_policy
    from meshpilot.translators import Translation

    imported = time.perf_counter()
    rss_before = proc_rss_bytes()
    if traced:
        tracemalloc.start()
    t0 = time.perf_counter()
    model = load_policy(policy)
    t1 = time.perf_counter()
    translation = Translation(model)
    t2 = time.perf_counter()
    snapshot = translation.snapshot("edge")
    t3 = time.perf_counter()
    body_bytes = sum(len(snapshot.get(t).sotw_body()) for t in snapshot.type_urls())
    t4 = time.perf_counter()
    out: dict[str, Any] = {
        "import_s": imported - started, "load_s": t1 - t0, "translate_s": t2 - t1,
        "snapshot_s": t3 - t2, "bodies_s": t4 - t3, "total_s": t4 - t0,
        "rss_before": rss_before, "peak_rss": proc_peak_rss_bytes(), "rss_after": proc_rss_bytes(),
        "counts": snapshot.counts(), "sotw_body_bytes": body_bytes,
    }
    if traced:
        current, peak = tracemalloc.get_traced_memory()
        out.update(traced_current=current, traced_peak=peak)
        tracemalloc.stop()
    return out


def _one_run(policy: Path, traced: bool) -> dict[str, Any]:
    cmd = python_module_cmd("benchmarks.translation", "--worker", str(policy))
    if traced:
        cmd.append("--tracemalloc")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=child_env(),
                          cwd=str(ROOT), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"translation worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(cfg: TranslationConfig, work: Path, log: Any = print) -> dict[str, Any]:
    from benchmarks.fanout import write_policy

    sizes = []
    for size in cfg.sizes:
        policy = work / f"policy-{size}"
        write_policy(policy, size)
        yaml_bytes = sum(p.stat().st_size for p in policy.glob("*.yaml"))
        runs = [_one_run(policy, traced=False) for _ in range(cfg.runs)]
        traced = _one_run(policy, traced=True)
        keys = ("import_s", "load_s", "translate_s", "snapshot_s", "bodies_s", "total_s")
        summary = {k: summarize(r[k] for r in runs) for k in keys}
        rss_delta = summarize(r["peak_rss"] - r["rss_before"] for r in runs)
        entry = {
            "clusters": size, "yaml_bytes": yaml_bytes, "counts": runs[0]["counts"],
            "sotw_body_bytes": runs[0]["sotw_body_bytes"], "runs": runs, "summary": summary,
            "peak_rss_delta_bytes": rss_delta,
            "tracemalloc_peak_bytes": traced["traced_peak"],
            "tracemalloc_retained_bytes": traced["traced_current"],
        }
        sizes.append(entry)
        log(f"  translation: {size} clusters + endpoints ({yaml_bytes / 1e6:.1f} MB YAML): "
            f"load {summary['load_s']['median']:.2f}s, translate "
            f"{summary['translate_s']['median']:.3f}s, snapshot "
            f"{summary['snapshot_s']['median']:.3f}s, total {summary['total_s']['median']:.2f}s "
            f"(median of {cfg.runs}); peak RSS +{rss_delta['median'] / 2**20:.0f} MiB, "
            f"tracemalloc peak {traced['traced_peak'] / 2**20:.0f} MiB")
    services = []
    for size in cfg.service_sizes:
        policy = work / f"services-{size}"
        write_services_policy(policy, size)
        yaml_bytes = sum(p.stat().st_size for p in policy.glob("*.yaml"))
        runs = [_one_run(policy, traced=False) for _ in range(cfg.runs)]
        validate = summarize(_validate_seconds(policy) for _ in range(cfg.runs))
        keys = ("load_s", "translate_s", "snapshot_s", "total_s")
        summary = {k: summarize(r[k] for r in runs) for k in keys}
        rss_delta = summarize(r["peak_rss"] - r["rss_before"] for r in runs)
        services.append({"services": size, "yaml_bytes": yaml_bytes, "counts": runs[0]["counts"],
                         "runs": runs, "summary": summary, "validate_s": validate,
                         "peak_rss_delta_bytes": rss_delta})
        log(f"  translation: {size} Services + {size} Routes ({yaml_bytes / 1e6:.1f} MB YAML): "
            f"meshpilot validate {validate['median']:.2f}s; load "
            f"{summary['load_s']['median']:.2f}s, translate+snapshot "
            f"{summary['translate_s']['median'] + summary['snapshot_s']['median']:.3f}s, "
            f"total {summary['total_s']['median']:.2f}s (median of {cfg.runs}); "
            f"peak RSS +{rss_delta['median'] / 2**20:.0f} MiB; {runs[0]['counts']}")
    return {
        "services": services,
        "scenario": "translation",
        "what": "cold (fresh process): load_policy + Translation + snapshot(view) + SotW bodies",
        "config": {"sizes": list(cfg.sizes), "runs": cfg.runs,
                   "policy": "N EDS clusters + N ClusterLoadAssignments (1 endpoint each), "
                             "files of 1,000 clusters"},
        "sizes": sizes,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", metavar="POLICY", required=True)
    parser.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args()
    print(json.dumps(_worker(args.worker, args.tracemalloc)))


if __name__ == "__main__":
    sys.exit(main())
