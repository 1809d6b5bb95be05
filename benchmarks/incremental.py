"""Scenario `incremental`: what ONE edited Route or Service costs in a warm process, at 1,000 and
10,000 Services + Routes, against a cold load of the same folder.

Issue 18's target: the reload after a one-Route or one-Service edit costs at most 1.5x at
10,000 what it costs at 1,000, and at most 1 % of a cold load of the same folder. Per size, one
warm worker process (`python -m benchmarks.incremental --worker DIR --edits N`):

1. `Controller(DIR, SnapshotCache())` + `reload()` + `controller.snapshot_blocking("edge")` (the
   gateway view exists, as it does once an Envoy asked for it), timed: the cold reload; then
   `gc.freeze()` as `meshpilot serve` does;
2. N edits of ONE Route (the first file's `svc-00000` split: 90/10 becomes another split),
   each timed `controller.reload()` (load every file + translate + snapshot of every known view
   + `cache.set`: exactly what a debounced file event runs; `reload_async` runs the same on a
   worker thread), then N edits of ONE Service (`svc-00000`'s v2 endpoint port);
3. a cold pass, twice, uncached: `load_policy` + `Translation(model)` + `.snapshot("edge")`:
   the cold load the share is taken of (the cold reload of step 1 is printed too).

Printed per size: medians (and every raw figure), whether the edits followed the index of who
refers to whom (`loader.fast`), what changed in the edge snapshot; then the 10k/1k ratio and each
edit's share of the cold load. Policy: `policies.services_policy` (N Services with two subsets,
N Routes on one Gateway, files of 1,000 services). The debounce and the push are not included
(see `convergence`).

    .venv/bin/python -m benchmarks.incremental [--sizes 1000 10000] [--edits 7]
        [--tree DIR ...]   # measure other checkouts too, alternately, with the same policy
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, child_env
from benchmarks.stats import summarize

TARGET_RATIO = 1.5  # the edit at 10k against the edit at 1k
TARGET_SHARE = 0.01  # the edit against a cold load of the same folder
KINDS = ("route", "service")


@dataclass
class IncrementalConfig:
    sizes: tuple[int, ...] = (1000, 10000)
    edits: int = 7

    @classmethod
    def quick(cls) -> IncrementalConfig:
        return cls(sizes=(200, 1000), edits=3)


def _edit_text(text: str, edit: int, kind: str = "route") -> str:
    """The first file with svc-00000's Route split (90/10 -> another split each edit) or its
    Service's v2 endpoint port changed."""
    if kind == "service":
        old = "- {address: '127.1.0.0:8000', labels: {version: v2}}"
        assert old in text, "services_policy changed shape"
        return text.replace(old, f"- {{address: '127.1.0.0:{8100 + edit % 50}', labels: "
                                 "{version: v2}}", 1)
    v1 = 90 - 5 * (edit % 9 + 1)
    old = ("[{service: svc-00000, subset: v1, weight: 90},"
           " {service: svc-00000, subset: v2, weight: 10}]")
    assert old in text, "services_policy changed shape"
    new = (f"[{{service: svc-00000, subset: v1, weight: {v1}}},"
           f" {{service: svc-00000, subset: v2, weight: {100 - v1}}}]")
    return text.replace(old, new, 1)


def _changed(old: Any, new: Any) -> tuple[list[str], int]:
    changed, changed_bytes = [], 0
    for type_url in new.type_urls():
        a, b = old.get(type_url), new.get(type_url)
        for name in b.names():
            if name not in a or a[name].version != b[name].version:
                changed.append(f"{type_url.rsplit('.', 1)[-1]}/{name}")
                changed_bytes += len(b[name].body)
    return changed, changed_bytes


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
    before = controller.snapshot_blocking("edge")
    cold_reload_s = time.perf_counter() - t
    assert before is not None
    gc.collect()
    gc.freeze()
    rows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    try:
        for kind in KINDS:
            for edit in range(edits):
                first.write_text(_edit_text(original, edit, kind))
                old = cache.get("edge")
                t0 = time.perf_counter()
                assert controller.reload(), "reload rejected the edit"
                t1 = time.perf_counter()
                new = cache.get("edge")
                assert old is not None and new is not None
                changed, changed_bytes = _changed(old, new)
                rows[kind].append({"reload_s": t1 - t0, "changed_resources": changed[:10],
                                   "changed_count": len(changed),
                                   "changed_bytes": changed_bytes,
                                   "fast": bool(getattr(controller.loader, "fast", False))})
            first.write_text(original)
            assert controller.reload()
    finally:
        first.write_text(original)
    cold = []
    for _ in range(2):  # the cold load the share is taken of
        s0 = time.perf_counter()
        model = load_policy(folder)
        s1 = time.perf_counter()
        translation = Translation(model)
        s2 = time.perf_counter()
        translation.snapshot("edge")
        s3 = time.perf_counter()
        cold.append({"load_s": s1 - s0, "translate_s": s2 - s1, "snapshot_s": s3 - s2,
                     "total_s": s3 - s0})
        del model, translation
    return {"cold_reload_s": cold_reload_s, "edits": rows, "cold": cold,
            "counts": before.counts(), "rss": proc_rss_bytes()}


def _one(tree: Path, policy: Path, edits: int) -> dict[str, Any]:
    env = child_env()
    env["PYTHONPATH"] = str(tree)
    done = subprocess.run([sys.executable, "-c",
                           "import sys; sys.path.insert(0, '.'); "
                           "from benchmarks.incremental import main; sys.exit(main())",
                           "--worker", str(policy), "--edits", str(edits)],
                          capture_output=True, text=True, timeout=3600, env=env,
                          cwd=str(tree), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"incremental worker failed in {tree} ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def summarize_size(size: int, result: dict[str, Any]) -> dict[str, Any]:
    cold_total = summarize(c["total_s"] for c in result["cold"])["median"]
    entry: dict[str, Any] = {"services": size, "counts": result["counts"],
                             "cold_reload_s": result["cold_reload_s"], "cold": result["cold"],
                             "cold_total_median_s": cold_total, "kinds": {}}
    for kind, rows in result["edits"].items():
        summary = summarize(r["reload_s"] for r in rows)
        entry["kinds"][kind] = {
            "summary": summary, "raw_s": [r["reload_s"] for r in rows],
            "fast": all(r["fast"] for r in rows),
            "changed_count": rows[0]["changed_count"] if rows else 0,
            "changed_bytes": rows[0]["changed_bytes"] if rows else 0,
            "changed_resources": rows[0]["changed_resources"] if rows else [],
            "share_of_cold": summary["median"] / cold_total,
        }
    return entry


def _log_size(entry: dict[str, Any], label: str, log: Any) -> None:
    cold = entry["cold"]
    log(f"  incremental [{label}] {entry['services']} Services + Routes: cold load "
        f"{_ms(entry['cold_total_median_s'])} ms median of {len(cold)} "
        f"({', '.join(_ms(c['total_s']) for c in cold)}; load/translate/snapshot "
        f"{_ms(cold[0]['load_s'])}/{_ms(cold[0]['translate_s'])}/"
        f"{_ms(cold[0]['snapshot_s'])}), cold reload + edge view "
        f"{_ms(entry['cold_reload_s'])} ms")
    for kind, figures in entry["kinds"].items():
        log(f"    one {kind} edited: reload {_ms(figures['summary']['median'])} ms median of "
            f"{figures['summary']['n']} (raw {', '.join(_ms(s) for s in figures['raw_s'])}); "
            f"{figures['share_of_cold'] * 100:.2f} % of the cold load (target "
            f"{TARGET_SHARE * 100:g} %); index path: {figures['fast']}; changed "
            f"{figures['changed_count']} resources, {figures['changed_bytes'] / 1e3:.0f} kB "
            f"({', '.join(figures['changed_resources'])})")


def ratios(sizes: list[dict[str, Any]]) -> dict[str, float]:
    """The largest size's edit median against the smallest's, per kind."""
    if len(sizes) < 2:
        return {}
    small, large = sizes[0], sizes[-1]
    return {kind: large["kinds"][kind]["summary"]["median"] /
            small["kinds"][kind]["summary"]["median"] for kind in KINDS}


def run(cfg: IncrementalConfig, work: Path, log: Any = print,
        trees: tuple[tuple[str, Path], ...] = (("head", ROOT),)) -> dict[str, Any]:
    from benchmarks.translation import write_services_policy

    by_tree: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in trees}
    for size in cfg.sizes:
        policy = work / f"services-{size}"
        write_services_policy(policy, size)
        for label, tree in trees:  # alternately, on the same folder
            entry = summarize_size(size, _one(tree, policy, cfg.edits))
            by_tree[label].append(entry)
            _log_size(entry, label, log)
    out: dict[str, Any] = {
        "scenario": "incremental",
        "what": "one Route's split, then one Service's endpoint, edited in one file; warm "
                "process; controller.reload() (load all files + translate + snapshot + "
                "cache.set) as a file event runs it; against load_policy + Translation + "
                "snapshot of the same folder",
        "config": {"sizes": list(cfg.sizes), "edits": cfg.edits, "target_ratio": TARGET_RATIO,
                   "target_share": TARGET_SHARE,
                   "policy": "services_policy: N Services (2 subsets) + N Routes, 1,000 per "
                             "file"},
        "trees": {},
    }
    for label, sizes in by_tree.items():
        found = ratios(sizes)
        for kind, ratio in found.items():
            log(f"  incremental [{label}] one {kind}: {sizes[-1]['services']} / "
                f"{sizes[0]['services']} = {ratio:.2f}x (target {TARGET_RATIO:g}x); share of "
                f"the cold load at {sizes[-1]['services']}: "
                f"{sizes[-1]['kinds'][kind]['share_of_cold'] * 100:.2f} %")
        out["trees"][label] = {"sizes": sizes, "ratios": found}
    out["sizes"] = by_tree[trees[0][0]]
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", metavar="POLICY")
    parser.add_argument("--edits", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--tree", action="append", default=[],
                        help="another checkout to measure alternately (label=DIR or DIR)")
    parser.add_argument("--out", help="write the JSON result here")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.edits)))
        return 0
    trees = [("head", ROOT)]
    for spec in args.tree:
        label, _, path = spec.rpartition("=")
        trees.append((label or Path(path).name, Path(path).resolve()))
    with tempfile.TemporaryDirectory(prefix="meshpilot-incremental-") as work:
        result = run(IncrementalConfig(tuple(args.sizes), args.edits), Path(work),
                     trees=tuple(trees))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
