"""Scenario `incremental`: what ONE changed Service costs, in a warm process, today.

Issue 4's target: re-translating after one service changes takes at most 10 ms at 10k services.
A reload re-parses only the files whose content changed and reuses every translated resource
whose inputs are equal (the controller's `PolicyLoader` and `Translation(previous=...)`), but the
edited file is re-parsed whole and a gateway's route configuration is rebuilt whole. This
scenario measures a reload honestly, end to end, in one warm worker process per size
(`python -m benchmarks.incremental --worker DIR --edits N`):

1. `Controller(DIR, SnapshotCache())` + `reload()` + `controller.snapshot_blocking("edge")` (the
   gateway view exists, as it does once an Envoy asked for it), then `gc.freeze()` as `meshpilot
   serve` does;
2. each edit rewrites ONE file (the first, holding `svc-00000` and 999 others) with the route of
   ONE service changed (its 90/10 split becomes another split), then times `controller.reload()`
   (load every file + translate + snapshot of every known view + `cache.set`), which is exactly
   what a debounced file event runs (`reload_async` runs the same on a worker thread);
3. the same edit is then timed step by step, uncached: `load_policy`, `Translation(model)`,
   `.snapshot("edge")`; and what changed between the two snapshots (resources and bytes).

Policy: `policies.services_policy` (N Services with two subsets, N Routes on one Gateway, files of
1,000 services). The debounce quiet period and the push are not included (see `convergence`).
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

TARGET_MS = 10.0


@dataclass
class IncrementalConfig:
    sizes: tuple[int, ...] = (1000, 10000)
    edits: int = 7

    @classmethod
    def quick(cls) -> IncrementalConfig:
        return cls(sizes=(200,), edits=3)


def _edit_text(text: str, edit: int) -> str:
    """The first file with the first Route's split changed (90/10 -> another split each edit)."""
    v1 = 90 - 5 * (edit % 9 + 1)
    old = ("[{service: svc-00000, subset: v1, weight: 90},"
           " {service: svc-00000, subset: v2, weight: 10}]")
    assert old in text, "services_policy changed shape"
    new = (f"[{{service: svc-00000, subset: v1, weight: {v1}}},"
           f" {{service: svc-00000, subset: v2, weight: {100 - v1}}}]")
    return text.replace(old, new, 1)


def _worker(policy: str, edits: int) -> dict[str, Any]:
    import gc

    from benchmarks.common import proc_rss_bytes
    from meshpilot.inputs.loader import load_policy
    from meshpilot.runtime.controller import Controller
    from meshpilot.translators import Translation
    from meshpilot.xds.cache import SnapshotCache

    folder = Path(policy)
    first = sorted(folder.glob("*.yaml"))[0]
    original = first.read_text()
    cache = SnapshotCache()
    controller = Controller(folder, cache)
    t = time.perf_counter()
    assert controller.reload()
    cold_reload_s = time.perf_counter() - t
    before = controller.snapshot_blocking("edge")
    assert before is not None
    gc.collect()
    gc.freeze()
    rows = []
    try:
        for edit in range(edits):
            first.write_text(_edit_text(original, edit))
            old = cache.get("edge")
            t0 = time.perf_counter()
            assert controller.reload(), "reload rejected the edit"
            t1 = time.perf_counter()
            new = cache.get("edge")
            # The same work, step by step (a second full pass; nothing is cached across passes).
            s0 = time.perf_counter()
            model = load_policy(folder)
            s1 = time.perf_counter()
            translation = Translation(model)
            s2 = time.perf_counter()
            translation.snapshot("edge")
            s3 = time.perf_counter()
            changed, changed_bytes = [], 0
            assert old is not None and new is not None
            for type_url in new.type_urls():
                a, b = old.get(type_url), new.get(type_url)
                for name in b.names():
                    if name not in a or a[name].version != b[name].version:
                        changed.append(f"{type_url.rsplit('.', 1)[-1]}/{name}")
                        changed_bytes += len(b[name].body)
            rows.append({"reload_s": t1 - t0, "load_s": s1 - s0, "translate_s": s2 - s1,
                         "snapshot_s": s3 - s2, "steps_total_s": s3 - s0,
                         "changed_resources": changed[:10], "changed_count": len(changed),
                         "changed_bytes": changed_bytes})
    finally:
        first.write_text(original)
    return {"cold_reload_s": cold_reload_s, "edits": rows, "counts": before.counts(),
            "rss": proc_rss_bytes()}


def _one(policy: Path, edits: int) -> dict[str, Any]:
    done = subprocess.run(python_module_cmd("benchmarks.incremental", "--worker", str(policy),
                                            "--edits", str(edits)),
                          capture_output=True, text=True, timeout=1200, env=child_env(),
                          cwd=str(ROOT), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"incremental worker failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(cfg: IncrementalConfig, work: Path, log: Any = print) -> dict[str, Any]:
    from benchmarks.translation import write_services_policy

    sizes = []
    for size in cfg.sizes:
        policy = work / f"services-{size}"
        write_services_policy(policy, size)
        result = _one(policy, cfg.edits)
        edits = result["edits"]
        keys = ("reload_s", "load_s", "translate_s", "snapshot_s", "steps_total_s")
        summary = {k: summarize(e[k] for e in edits) for k in keys}
        entry = {"services": size, "counts": result["counts"],
                 "cold_reload_s": result["cold_reload_s"], "edits": edits, "summary": summary,
                 "changed_count": edits[0]["changed_count"] if edits else 0,
                 "changed_bytes": edits[0]["changed_bytes"] if edits else 0,
                 "changed_resources": edits[0]["changed_resources"] if edits else [],
                 "target_ms": TARGET_MS,
                 "over_target": summary["reload_s"]["median"] * 1000 / TARGET_MS}
        sizes.append(entry)
        log(f"  incremental: {size} Services + Routes, one Route edited: full reload "
            f"{summary['reload_s']['median'] * 1000:.0f} ms median of {len(edits)} (load "
            f"{summary['load_s']['median'] * 1000:.0f}, translate "
            f"{summary['translate_s']['median'] * 1000:.0f}, snapshot "
            f"{summary['snapshot_s']['median'] * 1000:.0f}); target {TARGET_MS:g} ms = "
            f"{entry['over_target']:.0f}x over; changed: {entry['changed_count']} resources, "
            f"{entry['changed_bytes'] / 1e3:.0f} kB ({', '.join(entry['changed_resources'])})")
    return {
        "scenario": "incremental",
        "what": "one Route's split edited in one file; warm process; controller.reload() "
                "(load all files + translate + snapshot + cache.set) as a file event runs it",
        "config": {"sizes": list(cfg.sizes), "edits": cfg.edits, "target_ms": TARGET_MS,
                   "policy": "services_policy: N Services (2 subsets) + N Routes, 1,000 per file"},
        "sizes": sizes,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", metavar="POLICY", required=True)
    parser.add_argument("--edits", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(_worker(args.worker, args.edits)))


if __name__ == "__main__":
    sys.exit(main())
