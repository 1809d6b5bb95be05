"""Two revisions side by side in one sitting: the translation and incremental scenarios of
benchmarks/run.py, run alternately in this checkout and in a worktree of another revision.

    .venv/bin/python benchmarks/compare.py --base REV [--rounds 3] [--quick]
        [--only translation --only incremental] [--out benchmarks/results/compare]

Machines here differ several-fold in speed, and so does one machine from one minute to the
next: a figure only means something next to another measured in the same sitting. Each round
runs the base, then this tree (then swaps the order in the next round, so neither always runs
on a warmer machine); the report gives, per figure, both medians over the rounds, their ratio
(this tree / base) and the raw figures of every round. The base worktree gets its own
environment from its own uv.lock (`make setup` there), so each side runs with its own locked
dependencies. Writes `<out>/compare.json` and `<out>/compare.md`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("translation", "incremental")

Figures = dict[str, float]


def translation_figures(data: dict[str, Any]) -> Figures:
    figures: Figures = {}
    for size in data.get("sizes", []):
        summary = _median_runs(size["runs"])
        figures[f"raw clusters {size['clusters']:,}: load+translate+snapshot s"] = summary
    for size in data.get("services", []):
        summary = _median_runs(size["runs"])
        figures[f"{size['services']:,} Services + Routes: load+translate+snapshot s"] = summary
    return figures


def incremental_figures(data: dict[str, Any]) -> Figures:
    figures: Figures = {}
    for size in data.get("sizes", []):
        if "kinds" in size:
            for kind, found in size["kinds"].items():
                figures[f"{size['services']:,} Services + Routes: one {kind} edited, reload "
                        "ms"] = found["summary"]["median"] * 1000
        else:  # the shape before the one-Service edit was measured too
            figures[f"{size['services']:,} Services + Routes: one route edited, reload ms"] = \
                statistics.median(edit["reload_s"] for edit in size["edits"]) * 1000
    return figures


def _median_runs(runs: list[dict[str, Any]]) -> float:
    return statistics.median(run["total_s"] for run in runs)


EXTRACT: dict[str, Callable[[dict[str, Any]], Figures]] = {
    "translation": translation_figures, "incremental": incremental_figures}


def worktree(rev: str, folder: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), rev],
                   check=True, capture_output=True)
    subprocess.run(["make", "-C", str(folder), "setup"], check=True, capture_output=True)
    return folder


def run_scenarios(tree: Path, scenarios: list[str], quick: bool, out: Path) -> dict[str, Figures]:
    command = [str(tree / ".venv" / "bin" / "python"), str(tree / "benchmarks" / "run.py"),
               "--out", str(out), *[arg for s in scenarios for arg in ("--only", s)]]
    if quick:
        command.append("--quick")
    subprocess.run(command, cwd=tree, check=True, capture_output=True)
    return {s: EXTRACT[s](json.loads((out / f"{s}.json").read_text())) for s in scenarios}


def rounds(count: int) -> Iterator[tuple[str, str]]:
    for i in range(count):
        yield ("base", "head") if i % 2 == 0 else ("head", "base")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/compare.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the revision to compare with (git rev)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", action="append", choices=SCENARIOS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compare"))
    args = parser.parse_args(argv)
    scenarios = args.only or list(SCENARIOS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.base],
                              check=True, capture_output=True, text=True).stdout.strip()
    head_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              check=True, capture_output=True, text=True).stdout.strip()
    samples: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
    with tempfile.TemporaryDirectory(prefix="meshpilot-compare-") as scratch:
        trees = {"base": worktree(args.base, Path(scratch) / "base"), "head": ROOT}
        try:
            for number, order in enumerate(rounds(args.rounds), 1):
                for side in order:
                    print(f"round {number}: {side}", file=sys.stderr, flush=True)
                    results = run_scenarios(trees[side], scenarios, args.quick,
                                            Path(scratch) / f"{side}-{number}")
                    for figures in results.values():
                        for name, value in figures.items():
                            samples[side].setdefault(name, []).append(value)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(trees["base"])], capture_output=True)
    rows = []
    for name in samples["head"]:
        base, head = samples["base"].get(name, []), samples["head"][name]
        if not base:
            continue
        base_median, head_median = statistics.median(base), statistics.median(head)
        rows.append({"figure": name, "base_median": base_median, "head_median": head_median,
                     "ratio": head_median / base_median if base_median else float("nan"),
                     "base_raw": base, "head_raw": head})
    (out / "compare.json").write_text(json.dumps(
        {"base": base_rev, "head": head_rev, "rounds": args.rounds, "quick": args.quick,
         "rows": rows}, indent=1))
    lines = [f"# {head_rev} (head) against {base_rev} (base), {args.rounds} rounds in one sitting",
             "", "| figure | base median | head median | head / base | base raw | head raw |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['figure']} | {r['base_median']:.4g} | {r['head_median']:.4g} | "
              f"{r['ratio']:.3f} | {', '.join(f'{v:.4g}' for v in r['base_raw'])} | "
              f"{', '.join(f'{v:.4g}' for v in r['head_raw'])} |" for r in rows]
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
