"""Instructions executed, counted by valgrind's callgrind: two revisions compared by a figure
the machine's load cannot move.

    .venv/bin/python benchmarks/instructions.py --base REV [--head REV] [--services 1000]
        [--edits 6] [--out benchmarks/results/instructions]

Wall-clock medians on these shared machines wander by 20 % from one minute to the next, so a
few per cent between two revisions drowns in them. The number of instructions a process
executes does not: a run under callgrind counts the same within a fraction of a per cent,
however busy the machine is (it only takes longer). Per revision, three processes run under
callgrind (PYTHONHASHSEED=0), each in that revision's own tree and locked environment:

1. `import`: the imports a server makes (Controller, SnapshotCache);
2. `cold`: the imports, then `Controller.reload()` of the services policy and the gateway view
   `edge` built (what a server does before its first push);
3. `edits`: the same, then K edits of one Route, each `Controller.reload()`, as
   `benchmarks/incremental.py` times them.

Cold load + translation = (2) - (1); one edit = ((3) - (2)) / K. Instructions are not time (a
cache miss costs more than an add), so this is beside the wall-clock scenarios, not instead of
them. Needs the `valgrind` binary; the base gets a worktree with `make setup`, as in
`compare.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run by the revision's own python, in its tree: imports must work in both layouts (the
# controller moved into meshpilot/runtime/ in the restructuring).
WORKER = '''
import gc, sys
from pathlib import Path
sys.path.insert(0, ".")
mode, folder, edits = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
try:
    from meshpilot.runtime.controller import Controller
except ImportError:
    from meshpilot.controller import Controller
from meshpilot.xds.cache import SnapshotCache
if mode == "import":
    sys.exit(0)
first = sorted(folder.glob("*.yaml"))[0]
original = first.read_text()
old = "[{service: svc-00000, subset: v1, weight: 90}, {service: svc-00000, subset: v2, weight: 10}]"
assert old in original, "services_policy changed shape"
controller = Controller(folder, SnapshotCache())
assert controller.reload()
if hasattr(controller, "snapshot_blocking"):
    controller.snapshot_blocking("edge")
else:
    controller.cache.get_or_build("edge")
gc.collect()
gc.freeze()
try:
    for edit in range(edits):
        v1 = 90 - 5 * (edit % 9 + 1)
        new = (f"[{{service: svc-00000, subset: v1, weight: {v1}}},"
               f" {{service: svc-00000, subset: v2, weight: {100 - v1}}}]")
        first.write_text(original.replace(old, new, 1))
        assert controller.reload()
finally:
    first.write_text(original)
'''

_COLLECTED = re.compile(r"Collected : (\d+)")


def count(tree: Path, worker: Path, mode: str, policy: Path, edits: int, out: Path) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0")
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         str(tree / ".venv" / "bin" / "python"), str(worker), mode, str(policy), str(edits)],
        cwd=tree, env=env, capture_output=True, text=True, check=False)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed in {tree} ({mode}):\n{done.stderr[-2000:]}")
    return int(found.group(1))


def measure(tree: Path, worker: Path, policy: Path, edits: int, scratch: Path,
            side: str) -> dict[str, int]:
    figures = {mode: count(tree, worker, mode, policy, n, scratch / f"{side}.{mode}.out")
               for mode, n in (("import", 0), ("cold", 0), ("edits", edits))}
    return {**figures, "cold_load_translate": figures["cold"] - figures["import"],
            "one_edit": (figures["edits"] - figures["cold"]) // edits}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/instructions.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the revision to compare with (git rev)")
    parser.add_argument("--head", help="a revision to measure instead of this tree")
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--edits", type=int, default=6)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "instructions"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks.compare import worktree
    from benchmarks.translation import write_services_policy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    revs = {side: subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev],
                                 check=True, capture_output=True, text=True).stdout.strip()
            for side, rev in (("base", args.base), ("head", args.head or "HEAD"))}
    with tempfile.TemporaryDirectory(prefix="meshpilot-instructions-") as scratch_dir:
        scratch = Path(scratch_dir)
        worker = scratch / "worker.py"
        worker.write_text(WORKER)
        policy = scratch / "policy"
        write_services_policy(policy, args.services)  # one input for both sides
        trees = {"base": worktree(args.base, scratch / "base"),
                 "head": worktree(args.head, scratch / "head") if args.head else ROOT}
        try:
            results = {side: measure(tree, worker, policy, args.edits, scratch, side)
                       for side, tree in trees.items()}
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                    str(tree)], capture_output=True)
    rows = [(name, results["base"][name], results["head"][name])
            for name in ("import", "cold_load_translate", "one_edit")]
    (out / "instructions.json").write_text(json.dumps(
        {"revisions": revs, "services": args.services, "edits": args.edits,
         "results": results}, indent=1))
    lines = [f"# instructions: {revs['head']} (head) against {revs['base']} (base), "
             f"{args.services:,} Services + Routes, {args.edits} edits", "",
             "| figure | base (M instructions) | head | head / base |", "|---|---|---|---|"]
    lines += [f"| {name} | {b / 1e6:,.1f} | {h / 1e6:,.1f} | {h / b:.3f} |"
              for name, b, h in rows]
    (out / "instructions.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
