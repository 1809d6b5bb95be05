"""Instructions executed, counted by valgrind's callgrind: two revisions compared by a figure
the machine's load cannot move.

    .venv/bin/python benchmarks/instructions.py --base REV [--head REV] [--sizes 1000 10000]
        [--edits 4] [--out benchmarks/results/instructions]

Wall-clock medians on these shared machines wander by 20 % from one minute to the next, so a
few per cent between two revisions drowns in them. The number of instructions a process
executes does not: a run under callgrind counts the same within a fraction of a per cent,
however busy the machine is (it only takes longer). Per revision and size, one process runs
under callgrind (PYTHONHASHSEED=0) in that revision's own tree and locked environment, with
instrumentation off until told (`--instr-atstart=no`); `callgrind_control` switches it on and
dumps the counts around each phase, so only the phases are counted:

1. `cold`: `Controller.reload()` of the services policy and the gateway view `edge` built (what
   a server does before its first push; the imports are not counted);
2. `route`: K edits of one Route (svc-00000's split), each `Controller.reload()`, as
   `benchmarks/incremental.py` times them;
3. `service`: K edits of one Service (svc-00000's v2 endpoint port), the same way.

One edit = the phase's count / K; its share of the cold load = one edit / cold, and the scaling
= one edit at the largest size / at the smallest (issue 18: at most 1 % and 1.5x). Instructions
are not time (a cache miss costs more than an add), so this is beside the wall-clock scenarios,
not instead of them. Needs `valgrind` and `callgrind_control`; the base gets a worktree with
`make setup`, as in `compare.py`.
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
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("cold", "route", "service")

# Run by the revision's own python, in its tree: imports must work in both layouts (the
# controller moved into meshpilot/runtime/ in the restructuring). Each phase waits for a line
# on stdin (the counting is on) and prints one when it is done.
WORKER = '''
import gc, sys
from pathlib import Path
sys.path.insert(0, ".")
folder, edits = Path(sys.argv[1]), int(sys.argv[2])
try:
    from meshpilot.runtime.controller import Controller
except ImportError:
    from meshpilot.controller import Controller
from meshpilot.xds.cache import SnapshotCache
first = sorted(folder.glob("*.yaml"))[0]
original = first.read_text()
route = ("[{service: svc-00000, subset: v1, weight: 90},"
         " {service: svc-00000, subset: v2, weight: 10}]")
endpoint = "- {address: '127.1.0.0:8000', labels: {version: v2}}"
assert route in original and endpoint in original, "services_policy changed shape"

def edited(kind, edit):
    if kind == "service":
        return original.replace(endpoint, "- {address: '127.1.0.0:%d', labels: {version: v2}}"
                                % (8100 + edit), 1)
    v1 = 90 - 5 * (edit % 9 + 1)
    return original.replace(route, "[{service: svc-00000, subset: v1, weight: %d}, "
                            "{service: svc-00000, subset: v2, weight: %d}]" % (v1, 100 - v1), 1)

def phase():
    print("ready", flush=True)
    sys.stdin.readline()

controller = Controller(folder, SnapshotCache())
phase()
assert controller.reload()
if hasattr(controller, "snapshot_blocking"):
    controller.snapshot_blocking("edge")
else:
    controller.cache.get_or_build("edge")
gc.collect()
gc.freeze()
try:
    for kind in ("route", "service"):
        phase()
        for edit in range(edits):
            first.write_text(edited(kind, edit))
            assert controller.reload()
        first.write_text(original)
        phase()
        assert controller.reload()  # back to the original, not counted
finally:
    first.write_text(original)
phase()
'''

_TOTALS = re.compile(r"^totals: (\d+)", re.M)


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, text=True)


def _await(stream: IO[str], process: subprocess.Popen[str]) -> None:
    line = stream.readline()
    if line.strip() != "ready":
        process.kill()
        _, err = process.communicate()
        raise RuntimeError(f"callgrind worker failed: {line!r}\n{(err or '')[-2000:]}")


def count(tree: Path, worker: Path, policy: Path, edits: int, out: Path,
          cold: bool = True) -> dict[str, int]:
    """Instructions of each phase (`PHASES`), in one process under callgrind; without `cold`,
    the cold phase runs uncounted (at 10,000 Services counting it takes most of an hour on a
    loaded machine) and is left out."""
    phases = PHASES if cold else PHASES[1:]
    env = dict(os.environ, PYTHONHASHSEED="0")
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         str(tree / ".venv" / "bin" / "python"), str(worker), str(policy), str(edits)],
        cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    pid = str(process.pid)
    figures: dict[str, int] = {}
    try:
        _await(process.stdout, process)
        for phase in PHASES:
            counted = phase in phases
            if counted:
                _control("--zero", pid)
                _control("--instr=on", pid)
            process.stdin.write("go\n")
            process.stdin.flush()
            _await(process.stdout, process)  # the phase is done
            if counted:
                _control("--instr=off", pid)
                _control(f"--dump={phase}", pid)
            if phase != "cold":  # the reload back to the original file, not counted
                process.stdin.write("go\n")
                process.stdin.flush()
                _await(process.stdout, process)
        process.stdin.write("go\n")
        process.stdin.flush()
        _, err = process.communicate(timeout=3600)
    except BaseException:
        process.kill()
        process.communicate()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"callgrind run failed in {tree}:\n{err[-2000:]}")
    dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    for phase, dump in zip(phases, dumps, strict=False):
        found = _TOTALS.search(dump.read_text(errors="replace"))
        if found is None:
            raise RuntimeError(f"no totals in {dump}")
        figures[phase] = int(found.group(1))
    if set(figures) != set(phases):
        raise RuntimeError(f"callgrind dumps missing in {out.parent}: {dumps}")
    return figures


def measure(tree: Path, worker: Path, policy: Path, edits: int, scratch: Path,
            side: str, size: int, cold: bool = True) -> dict[str, float | None]:
    raw = count(tree, worker, policy, edits, scratch / f"{side}.{size}.out", cold)
    route, service = raw["route"] / edits, raw["service"] / edits
    return {"cold": raw.get("cold"), "route": raw["route"], "service": raw["service"],
            "one_route_edit": route, "one_service_edit": service,
            "route_share": route / raw["cold"] if cold else None,
            "service_share": service / raw["cold"] if cold else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/instructions.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the revision to compare with (git rev)")
    parser.add_argument("--head", help="a revision to measure instead of this tree")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--edits", type=int, default=4)
    parser.add_argument("--cold-up-to", type=int, default=1000,
                        help="count the cold phase only at sizes up to this (default 1000)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "instructions"))
    parser.add_argument("--reuse", metavar="JSON",
                        help="take the base side's counts from an earlier instructions.json "
                             "(same sizes and edits): counts do not move, so it is not run "
                             "again")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks.compare import worktree
    from benchmarks.translation import write_services_policy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    revs = {side: subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev],
                                 check=True, capture_output=True, text=True).stdout.strip()
            for side, rev in (("base", args.base), ("head", args.head or "HEAD"))}
    results: dict[str, dict[int, dict[str, float | None]]] = {"base": {}, "head": {}}
    if args.reuse:
        earlier = json.loads(Path(args.reuse).read_text())
        if earlier["edits"] != args.edits or \
                any(str(size) not in earlier["results"]["base"] for size in args.sizes):
            parser.error("--reuse: another number of edits or sizes")
        results["base"] = {size: earlier["results"]["base"][str(size)] for size in args.sizes}
        revs["base"] = earlier["revisions"]["base"]
    with tempfile.TemporaryDirectory(prefix="meshpilot-instructions-") as scratch_dir:
        scratch = Path(scratch_dir)
        worker = scratch / "worker.py"
        worker.write_text(WORKER)
        trees = {"head": worktree(args.head, scratch / "head") if args.head else ROOT}
        if not args.reuse:
            trees = {"base": worktree(args.base, scratch / "base"), **trees}
        try:
            for size in args.sizes:
                policy = scratch / f"policy-{size}"
                write_services_policy(policy, size)  # one input for both sides
                for side, tree in trees.items():
                    results[side][size] = measure(tree, worker, policy, args.edits, scratch,
                                                  side, size, size <= args.cold_up_to)
                    print(f"{side} {size}: {json.dumps(results[side][size])}", flush=True)
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                    str(tree)], capture_output=True)
    (out / "instructions.json").write_text(json.dumps(
        {"revisions": revs, "sizes": args.sizes, "edits": args.edits,
         "results": {side: {str(k): v for k, v in found.items()}
                     for side, found in results.items()}}, indent=1))
    lines = [f"# instructions: {revs['head']} (head) against {revs['base']} (base), "
             f"{args.edits} edits of each kind", "",
             "| size | figure | base (M instructions) | head | head / base |",
             "|---|---|---|---|---|"]
    for size in args.sizes:
        b, h = results["base"][size], results["head"][size]
        for name in ("cold", "one_route_edit", "one_service_edit"):
            base, head = b[name], h[name]
            if base is None or head is None:
                continue  # not counted at this size
            lines.append(f"| {size:,} | {name} | {base / 1e6:,.1f} | {head / 1e6:,.1f} | "
                         f"{head / base:.3f} |")
        for name in ("route_share", "service_share"):
            base, head = b[name], h[name]
            if base is not None and head is not None:
                lines.append(f"| {size:,} | {name} (edit / cold) | {base * 100:.2f} % | "
                             f"{head * 100:.2f} % | |")
    if len(args.sizes) > 1:
        small, large = args.sizes[0], args.sizes[-1]
        for name in ("one_route_edit", "one_service_edit"):
            ratio = {side: results[side][large][name] / results[side][small][name]  # type: ignore[operator]
                     for side in results}
            lines.append(f"| {large:,} / {small:,} | {name} | {ratio['base']:.2f}x | "
                         f"{ratio['head']:.2f}x | |")
    (out / "instructions.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
