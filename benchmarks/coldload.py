"""Scenario `coldload`: a cold load of N Services + Routes against a bare PyYAML parse of the
same files, side by side in one run.

Each measurement is a fresh Python process (`python -m benchmarks.coldload --worker KIND DIR`),
timed after its imports; the kinds alternate in rotating rounds, so the machine's drift falls
on all alike:

- `pyyaml`: `yaml.load_all(data, Loader=yaml.CSafeLoader)` of every file (libyaml's C parser
  and composer, PyYAML's constructor): the bare parse the target is measured against;
- `events`: the same files' libyaml events only (`CSafeLoader.get_event`), nothing built: the
  floor of any loader on libyaml;
- `parse`: meshpilot's YAML layer alone (`yamlsource.parse_yaml`: values and positions, with
  its hostile-input limits);
- `load`: `load_policy(dir)` (parse, the kinds' parsers, the checks across documents);
- `full`: `load_policy`, `Translation(model)`, `translation.snapshot("edge")` and the SotW
  bodies: a server's cold start before its first push;
- `full_malloc`: the same on the C library's malloc (`PYTHONMALLOC=malloc`), as `meshpilot
  serve` runs (base/memory.py): what that allocator costs a cold start.

Each reports wall-clock and CPU seconds (user + system of the process, which other processes on
a shared machine move less). The figure that counts: `full` against `pyyaml`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, child_env, python_module_cmd
from benchmarks.stats import summarize

KINDS = ("pyyaml", "events", "parse", "load", "full", "full_malloc")


@dataclass
class ColdLoadConfig:
    services: int = 10_000
    rounds: int = 3

    @classmethod
    def quick(cls) -> ColdLoadConfig:
        return cls(services=500, rounds=1)


def _worker(kind: str, policy: str) -> dict[str, Any]:
    import gc
    import os
    import time

    import yaml

    from meshpilot.inputs.loader import load_policy
    from meshpilot.inputs.yamlsource import parse_yaml
    from meshpilot.translators import Translation

    files = sorted(p for p in Path(policy).iterdir() if p.suffix == ".yaml")
    gc.collect()
    wall0, cpu0 = time.perf_counter(), _cpu(os.times())
    count = 0
    if kind == "pyyaml":
        # gc paused as the loader pauses it (base/gcpause.py): the same footing.
        gc.disable()
        for path in files:
            count += len(list(yaml.load_all(path.read_bytes(), Loader=yaml.CSafeLoader)))
        gc.enable()
    elif kind == "events":
        for path in files:
            loader = yaml.CSafeLoader(path.read_bytes())
            while loader.get_event() is not None:
                count += 1
            loader.dispose()
    elif kind == "parse":
        gc.disable()
        for path in files:
            documents, issues = parse_yaml(path.read_bytes(), path.name)
            assert not issues
            count += len(documents)
        gc.enable()
    else:
        model = load_policy(policy)
        count = len(model.services)
        if kind.startswith("full"):
            translation = Translation(model)
            snapshot = translation.snapshot("edge")
            count = sum(len(snapshot.get(t).sotw_body()) for t in snapshot.type_urls())
    wall, cpu = time.perf_counter() - wall0, _cpu(os.times()) - cpu0
    return {"kind": kind, "wall_s": wall, "cpu_s": cpu, "count": count}


def _cpu(times: Any) -> float:
    return float(times.user + times.system)


def _one(kind: str, policy: Path) -> dict[str, Any]:
    env = {**child_env(), "PYTHONMALLOC": "malloc" if kind.endswith("_malloc") else "pymalloc"}
    done = subprocess.run(python_module_cmd("benchmarks.coldload", "--worker", kind,
                                            str(policy)),
                          capture_output=True, text=True, timeout=1800, env=env,
                          cwd=str(ROOT), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"coldload worker {kind} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(cfg: ColdLoadConfig, work: Path, log: Any = print) -> dict[str, Any]:
    from benchmarks.translation import write_services_policy

    policy = work / f"services-{cfg.services}"
    write_services_policy(policy, cfg.services)
    yaml_bytes = sum(p.stat().st_size for p in policy.glob("*.yaml"))
    samples: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for index in range(cfg.rounds):
        order = KINDS[index % len(KINDS):] + KINDS[:index % len(KINDS)]
        for kind in order:
            samples[kind].append(_one(kind, policy))
    summary = {kind: {"wall_s": summarize(s["wall_s"] for s in runs),
                      "cpu_s": summarize(s["cpu_s"] for s in runs)}
               for kind, runs in samples.items()}
    ratios = {f"{kind} / pyyaml": {m: summary[kind][m]["median"] / summary["pyyaml"][m]["median"]
                                   for m in ("wall_s", "cpu_s")} for kind in KINDS}
    log(f"  coldload: {cfg.services} Services + Routes ({yaml_bytes / 1e6:.1f} MB YAML), "
        f"medians of {cfg.rounds} (wall s / CPU s):")
    for kind in KINDS:
        s = summary[kind]
        log(f"    {kind:11} {s['wall_s']['median']:7.2f} / {s['cpu_s']['median']:6.2f}   "
            f"{ratios[f'{kind} / pyyaml']['wall_s']:.2f}x / "
            f"{ratios[f'{kind} / pyyaml']['cpu_s']:.2f}x of the bare PyYAML parse")
    return {
        "scenario": "coldload",
        "what": "fresh processes, after imports: bare PyYAML CSafeLoader parse, libyaml events "
                "only, meshpilot's YAML layer, load_policy, load + translate + snapshot",
        "config": {"services": cfg.services, "rounds": cfg.rounds, "yaml_bytes": yaml_bytes},
        "samples": samples, "summary": summary, "ratios": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "POLICY"), required=True)
    args = parser.parse_args()
    print(json.dumps(_worker(*args.worker)))


if __name__ == "__main__":
    sys.exit(main())
