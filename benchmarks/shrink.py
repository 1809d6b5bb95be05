"""Scenario `shrink`: the process's memory after a large policy is replaced by a small one.

A fresh Python process (`python -m benchmarks.shrink --worker ...`) runs meshpilot in-process
(`runtime.app.Meshpilot`: controller, snapshot cache, xDS server, admin API; no file watcher,
no pre-push check), with one view (`edge`) built, and reloads the same policy folder three
times: a small policy (the baseline), a large one (N Services + Routes), the small one again.
After each reload it reports the resident set size (RSS, from /proc) once the reload has been
applied (after a shrink: once the memory release it schedules has run), and once more after
`gc.collect()`. The figure that counts: RSS after the shrink against the small-policy
baseline. Each allocator (`PYTHONMALLOC`) gets a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, child_env, python_module_cmd


@dataclass
class ShrinkConfig:
    small: int = 100
    large: int = 60_000
    runs: int = 1
    # PYTHONMALLOC of the worker: "malloc" is what `meshpilot serve` runs on (base/memory.py);
    # "pymalloc" (Python's own) beside it shows why.
    allocators: tuple[str, ...] = ("malloc", "pymalloc")

    @classmethod
    def quick(cls) -> ShrinkConfig:
        return cls(small=50, large=2_000)


def _fill(folder: Path, services: int) -> None:
    from benchmarks.translation import write_services_policy

    if folder.exists():
        shutil.rmtree(folder)
    write_services_policy(folder, services)


def _worker(work: str, small: int, large: int) -> dict[str, Any]:
    import gc

    from benchmarks.common import proc_peak_rss_bytes, proc_rss_bytes
    from meshpilot.runtime.app import Meshpilot, Settings

    policy = Path(work) / "policy"
    _fill(policy, small)
    steps: list[dict[str, Any]] = []

    async def scenario() -> None:
        mp = Meshpilot(Settings(policy=policy, xds_address="127.0.0.1:0",
                                admin_address="127.0.0.1:0", insecure_xds=True, watch=False))
        await mp.start()
        try:
            async def step(name: str, services: int) -> None:
                if steps:  # the first policy was loaded by start()
                    _fill(policy, services)
                    releases = mp.controller.memory_releases
                    assert await mp.controller.reload_async(), mp.controller.status.error
                    if services < steps[-1]["services"]:  # the release it schedules
                        for _ in range(600):
                            if mp.controller.memory_releases > releases:
                                break
                            await asyncio.sleep(0.05)
                snapshot = await mp.snapshot_of("edge")
                assert snapshot is not None
                rss = proc_rss_bytes()
                gc.collect()
                steps.append({"step": name, "services": services, "rss": rss,
                              "rss_after_collect": proc_rss_bytes(),
                              "clusters": len(snapshot.get("type.googleapis.com/"
                                                           "envoy.config.cluster.v3.Cluster"))})

            await step("small", small)
            await step("large", large)
            await step("small again", small)
        finally:
            await mp.stop()

    asyncio.run(scenario())
    return {"steps": steps, "peak_rss": proc_peak_rss_bytes()}


def run(cfg: ShrinkConfig, work: Path, log: Any = print) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for index, allocator in [(i, a) for i in range(cfg.runs) for a in cfg.allocators]:
        folder = work / f"run-{index}-{allocator}"
        folder.mkdir()
        done = subprocess.run(
            python_module_cmd("benchmarks.shrink", "--worker", str(folder), "--small",
                              str(cfg.small), "--large", str(cfg.large)),
            capture_output=True, text=True, timeout=3600,
            env={**child_env(), "PYTHONMALLOC": allocator}, cwd=str(ROOT), check=False)
        if done.returncode != 0:
            raise RuntimeError(f"shrink worker failed ({done.returncode}):\n"
                               f"{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        steps = {s["step"]: s for s in result["steps"]}
        base, big, after = steps["small"], steps["large"], steps["small again"]
        result["ratio"] = after["rss_after_collect"] / base["rss_after_collect"]
        result["allocator"] = allocator
        runs.append(result)
        log(f"  shrink ({allocator}): {cfg.small} Services -> {cfg.large} -> {cfg.small}: RSS "
            f"{base['rss_after_collect'] / 2**20:.0f} MiB -> "
            f"{big['rss_after_collect'] / 2**20:.0f} MiB -> "
            f"{after['rss_after_collect'] / 2**20:.0f} MiB: {result['ratio']:.2f}x the "
            f"small-policy baseline (before gc.collect: {base['rss'] / 2**20:.0f} / "
            f"{big['rss'] / 2**20:.0f} / {after['rss'] / 2**20:.0f} MiB)")
    return {
        "scenario": "shrink",
        "what": "RSS of one meshpilot process (in-process app, one view built) after loading a "
                "small policy, a large one, then the small one again",
        "config": {"small": cfg.small, "large": cfg.large, "runs": cfg.runs,
                   "policy": "N Services (2 endpoints, 2 subsets) + N Routes, files of 1,000"},
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", metavar="FOLDER", required=True)
    parser.add_argument("--small", type=int, required=True)
    parser.add_argument("--large", type=int, required=True)
    args = parser.parse_args()
    print(json.dumps(_worker(args.worker, args.small, args.large)))


if __name__ == "__main__":
    sys.exit(main())
