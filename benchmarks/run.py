"""meshpilot benchmarks: one command runs the scenarios, prints tables, writes JSON and Markdown.

    python benchmarks/run.py [--quick] [--only NAME ...] [--out benchmarks/results]

Scenarios (see docs/benchmarks.md): convergence (real Envoys, a saved edit until all serve it),
fanout (simulated ADS streams, one changed cluster), translation (policy to serialized xDS, cold),
incremental (one Service edited: the full reload it costs today), storm (1,000 and 5,000 streams,
then a reconnect storm), traffic (steady load through a real Envoy during 100 route/weight edits),
sidebyside (start-to-first-served-request: static bootstrap vs meshpilot vs sovereign),
replicas (replicas on a real etcd: registration on A served by an Envoy on B, beside one
process; kill -9 failover of an Envoy's replica), registration (the first and the 2,000th
self-registration of one Service), vhds (the bytes of a one-Route edit with VHDS), debounce
(save to all Envoys serving for three debounce settings in rotating rounds: the leading edge
against the quiet period), shrink (RSS after a large policy is replaced by a small one),
coldload (a cold load of 10,000 Services + Routes against a bare PyYAML parse of the same
files).
PNG plots are written next to report.md when matplotlib is installed (the `bench` extra).
Writes `<out>/<scenario>.json` (raw samples and summaries) and `<out>/report.md`.
`--quick` is a smoke run (small sizes, under a minute); the default run takes several minutes.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCENARIOS = ("convergence", "prepush", "fanout", "translation", "incremental", "storm",
             "traffic", "sidebyside", "replicas", "registration", "vhds", "debounce", "shrink",
             "coldload")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run (< 1 min)")
    parser.add_argument("--only", action="append", choices=SCENARIOS, metavar="NAME",
                        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}")
    parser.add_argument("--out", default=None,
                        help="results folder (benchmarks/results; with --quick, "
                             "benchmarks/results/quick)")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the scratch folder (logs, policies) for inspection")
    parser.add_argument("--edits", type=int, help="convergence: edits per variant")
    parser.add_argument("--streams", type=int, help="fanout: simulated ADS streams")
    parser.add_argument("--clusters", type=int, help="fanout: clusters in the snapshot")
    parser.add_argument("--poll-ms", type=float, help="convergence: ms between probes")
    parser.add_argument("--storm-streams", type=int, action="append", metavar="N",
                        help="storm: stream counts (repeatable; default 1000 and 5000)")
    parser.add_argument("--storm-profile", action="store_true",
                        help="storm: one more storm per row under cProfile (not counted)")
    parser.add_argument("--storm-storms", type=int, metavar="N",
                        help="storm: reconnect storms per row (default 3)")
    parser.add_argument("--traffic-edits", type=int, help="traffic: edits under load")
    parser.add_argument("--sovereign", metavar="PYTHON",
                        help="sidebyside: the python of a virtualenv with sovereign installed "
                             "(default: .sovereign-venv/bin/python if it exists)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops the processes it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks import (
        coldload,
        convergence,
        fanout,
        incremental,
        plots,
        registration,
        replicas,
        report,
        shrink,
        sidebyside,
        traffic,
        translation,
        vhds,
    )
    from benchmarks.common import write_json

    # A smoke run must not overwrite the figures of a full run: it has its own default folder.
    default_out = root / "benchmarks" / "results" / ("quick" if args.quick else "")
    out = Path(args.out) if args.out else default_out
    out.mkdir(parents=True, exist_ok=True)
    selected = args.only or list(SCENARIOS)
    work = Path(tempfile.mkdtemp(prefix="meshpilot-bench-"))
    meta = {
        "quick": args.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "python": platform.python_version(), "machine": platform.machine(),
        "cpus": _cpus(), "kernel": platform.release(),
    }

    def log(line: str) -> None:
        print(line, flush=True)

    log(f"meshpilot benchmarks ({'quick' if args.quick else 'full'}): {', '.join(selected)}; "
        f"{meta['cpus']} CPUs; scratch {work}")
    results: dict[str, Any] = {}
    failed: list[str] = []
    try:
        for name in selected:
            started = time.monotonic()
            log(f"\n== {name}")
            try:
                if name == "convergence":
                    ccfg = (convergence.ConvergenceConfig.quick() if args.quick
                            else convergence.ConvergenceConfig())
                    if args.edits:
                        ccfg.edits = args.edits
                    if args.poll_ms:
                        ccfg.poll_ms = args.poll_ms
                    result = convergence.run(ccfg, work / "convergence", log)
                elif name == "prepush":
                    pcfg = (convergence.PrePushConfig.quick() if args.quick
                            else convergence.PrePushConfig())
                    if args.edits:
                        pcfg.edits = args.edits
                    result = convergence.run_prepush(pcfg, work / "prepush", log)
                elif name == "debounce":
                    dcfg = (convergence.DebounceConfig.quick() if args.quick
                            else convergence.DebounceConfig())
                    if args.edits:
                        dcfg.edits = args.edits
                    result = convergence.run_debounce(dcfg, work / "debounce", log)
                elif name == "coldload":
                    lcfg = (coldload.ColdLoadConfig.quick() if args.quick
                            else coldload.ColdLoadConfig())
                    result = coldload.run(lcfg, work / "coldload", log)
                elif name == "shrink":
                    kcfg = (shrink.ShrinkConfig.quick() if args.quick
                            else shrink.ShrinkConfig())
                    result = shrink.run(kcfg, work / "shrink", log)
                elif name == "fanout":
                    fcfg = fanout.FanoutConfig.quick() if args.quick else fanout.FanoutConfig()
                    if args.streams:
                        fcfg.streams = args.streams
                    if args.clusters:
                        fcfg.clusters = args.clusters
                    result = fanout.run(fcfg, work / "fanout", out, log)
                elif name == "translation":
                    tcfg = (translation.TranslationConfig.quick() if args.quick
                            else translation.TranslationConfig())
                    result = translation.run(tcfg, work / "translation", log)
                elif name == "incremental":
                    icfg = (incremental.IncrementalConfig.quick() if args.quick
                            else incremental.IncrementalConfig())
                    result = incremental.run(icfg, work / "incremental", log)
                elif name == "storm":
                    scfg = fanout.FanoutConfig.storm(quick=args.quick)
                    if args.clusters:
                        scfg.clusters = args.clusters
                    scfg.profile_storm = args.storm_profile
                    if args.storm_storms:
                        scfg.storms = args.storm_storms
                    counts = tuple(args.storm_streams or ((100,) if args.quick
                                                          else (1000, 5000)))
                    result = fanout.run_storm(scfg, counts, work / "storm", out, log)
                elif name == "traffic":
                    rcfg = (traffic.TrafficConfig.quick() if args.quick
                            else traffic.TrafficConfig())
                    if args.traffic_edits:
                        rcfg.edits = args.traffic_edits
                    result = traffic.run(rcfg, work / "traffic", log)
                elif name == "registration":
                    gcfg = (registration.RegistrationConfig.quick() if args.quick
                            else registration.RegistrationConfig())
                    result = registration.run(gcfg, work / "registration", log)
                elif name == "vhds":
                    vcfg = vhds.VhdsConfig.quick() if args.quick else vhds.VhdsConfig()
                    result = vhds.run(vcfg, work / "vhds", log)
                elif name == "replicas":
                    pcfg = (replicas.ReplicasConfig.quick() if args.quick
                            else replicas.ReplicasConfig())
                    result = replicas.run(pcfg, work / "replicas", log)
                else:
                    bcfg = (sidebyside.SideBySideConfig.quick() if args.quick
                            else sidebyside.SideBySideConfig())
                    if args.sovereign:
                        bcfg.sovereign_python = args.sovereign
                    result = sidebyside.run(bcfg, work / "sidebyside", log)
            except Exception as e:  # report, go on with the next scenario
                failed.append(name)
                log(f"!! {name} failed: {type(e).__name__}: {e}")
                continue
            result["meta"] = {**meta, "duration_s": time.monotonic() - started}
            write_json(out / f"{name}.json", result)
            results[name] = result
            log(f"-- {name}: {result['meta']['duration_s']:.0f}s, wrote {out / (name + '.json')}")
    finally:
        if args.keep_work or failed:
            log(f"\nscratch kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    # The report covers every scenario with a result on disk (this run's or an earlier one's).
    for name in SCENARIOS:
        path = out / f"{name}.json"
        if name not in results and path.exists():
            results[name] = json.loads(path.read_text())
    log("")
    log(report.text_tables(results))
    try:
        pngs = plots.write_all(results, out)
        log("plots: " + (", ".join(p.name for p in pngs) or "none"))
    except ImportError as e:  # matplotlib is in the `bench` extra
        pngs = []
        log(f"no plots ({e}); make setup installs the bench extra")
    (out / "report.md").write_text(report.markdown(results, [p.name for p in pngs]))
    log(f"\nwrote {out / 'report.md'}")
    if failed:
        log(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
