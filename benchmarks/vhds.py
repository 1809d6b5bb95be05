"""Scenario `vhds`: the bytes one edited Route puts on the wire, with and without VHDS.

Issue 18's target: at 10,000 Routes the push for one edited Route is at most 2x that Route's
virtual host. In one warm worker process per size (`python -m benchmarks.vhds --worker DIR
--edits N`), the policy of `incremental` (`policies.services_policy`: N Services and N Routes on
one Gateway, files of 1,000) is loaded by a `Controller`, and three ADS streams of the gateway
view are opened as Envoy opens them (CDS, EDS by name, LDS, RDS by name, and for VHDS the
VirtualHost wildcard subscription) and every response ACKed:

- `delta+vhds`: a delta stream with `vhds=True` (what `meshpilot serve --vhds` gives delta ADS
  Envoys): thin route configurations, one VirtualHost resource per Route;
- `delta`: a delta stream without it (today's delta);
- `sotw`: a SotW stream (today's default, and what `--vhds` keeps for SotW Envoys).

Each edit rewrites one file with one Route's split changed (as `incremental`), runs
`controller.reload()` (what a file event runs), hands the new snapshot to the streams and sums
the bytes of every response they write for it (the encoded DiscoveryResponse /
DeltaDiscoveryResponse, exactly what the gRPC servicer writes; sans-I/O, so no socket noise).
Printed: those bytes per stream, the edited Route's virtual host (its VirtualHost resource as
VHDS sends it, and its bytes inside the whole configuration), the ratio, and the time to make
the VHDS layout of the new snapshot (once per snapshot, shared by every stream of the view).
Bytes are exact; the time is a wall-clock median on a shared machine.
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
from benchmarks.incremental import _edit_text
from benchmarks.stats import summarize

TARGET_RATIO = 2.0
EDITED = "edge/http/svc-00000"  # the edited Route's VHDS virtual host


@dataclass
class VhdsConfig:
    sizes: tuple[int, ...] = (1000, 10000)
    edits: int = 5

    @classmethod
    def quick(cls) -> VhdsConfig:
        return cls(sizes=(200,), edits=2)


def _worker(policy: str, edits: int) -> dict[str, Any]:
    from envoy.service.discovery.v3 import discovery_pb2

    from meshpilot.base import types
    from meshpilot.runtime.controller import Controller
    from meshpilot.xds.cache import SnapshotCache
    from meshpilot.xds.stream import XdsStream

    folder = Path(policy)
    first = sorted(folder.glob("*.yaml"))[0]
    original = first.read_text()
    cache = SnapshotCache()
    controller = Controller(folder, cache)
    assert controller.reload()
    snapshot = controller.snapshot_blocking("edge")
    assert snapshot is not None
    now = [0.0]

    def request(stream: XdsStream, type_url: str, names: list[str], nonce: str = "",
                version: str = "") -> None:
        now[0] += 1
        if stream.delta:
            message: Any = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url, resource_names_subscribe=names, response_nonce=nonce)
        else:
            message = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names,
                                                     response_nonce=nonce, version_info=version)
        message.node.id, message.node.cluster = "bench", "edge"
        stream.on_request(message, now[0])

    def pump(stream: XdsStream) -> dict[str, int]:
        """Every response the stream writes now, each ACKed; bytes by type."""
        sent: dict[str, int] = {}
        while True:
            out = stream.responses(now[0])
            if not out:
                return sent
            for o in out:
                short = types.short_name(o.type_url)
                sent[short] = sent.get(short, 0) + len(o.payload)
                names = sorted(stream.types[o.type_url].names)
                request(stream, o.type_url, [] if stream.delta else names, o.nonce, o.version)

    streams = {"delta+vhds": XdsStream(delta=True, ads=True, vhds=True),
               "delta": XdsStream(delta=True, ads=True),
               "sotw": XdsStream(delta=False, ads=True)}
    opened: dict[str, dict[str, int]] = {}
    for kind, stream in streams.items():
        stream.on_snapshot(snapshot)
        total: dict[str, int] = {}
        plan = [(types.CLUSTER, []), (types.ENDPOINT, sorted(snapshot.get(types.ENDPOINT))),
                (types.LISTENER, []), (types.ROUTE, sorted(snapshot.get(types.ROUTE)))]
        if stream.vhds:
            plan.append((types.VIRTUAL_HOST, []))  # Envoy's VHDS: a wildcard subscription
        for type_url, names in plan:
            request(stream, type_url, names)
            for short, n in pump(stream).items():
                total[short] = total.get(short, 0) + n
        opened[kind] = total
    import gc

    gc.collect()
    gc.freeze()  # as `meshpilot serve` does after a load: edits do not re-scan the policy
    rows = []
    try:
        for edit in range(edits):
            first.write_text(_edit_text(original, edit))
            assert controller.reload(), "reload rejected the edit"
            new = cache.get("edge")
            assert new is not None and new is not snapshot
            t = time.perf_counter()
            layout = new.vhds()
            layout_s = time.perf_counter() - t
            pushed = {}
            for kind, stream in streams.items():
                stream.on_snapshot(new)
                pushed[kind] = pump(stream)
            whole = new.get(types.ROUTE)["edge/http"]
            vhost = layout.vhosts[EDITED]
            inline = layout.split["edge/http"].chunk(EDITED)
            rows.append({"pushed": pushed, "vhost_bytes": len(vhost.body),
                         "vhost_inline_bytes": len(inline), "route_config_bytes": len(whole.body),
                         "layout_s": layout_s})
            snapshot = new
    finally:
        first.write_text(original)
    return {"opened": opened, "edits": rows, "counts": snapshot.counts()}


def _one(policy: Path, edits: int) -> dict[str, Any]:
    done = subprocess.run(python_module_cmd("benchmarks.vhds", "--worker", str(policy),
                                            "--edits", str(edits)),
                          capture_output=True, text=True, timeout=1800, env=child_env(),
                          cwd=str(ROOT), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"vhds worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(cfg: VhdsConfig, work: Path, log: Any = print) -> dict[str, Any]:
    from benchmarks.translation import write_services_policy

    sizes = []
    for size in cfg.sizes:
        policy = work / f"services-{size}"
        write_services_policy(policy, size)
        result = _one(policy, cfg.edits)
        edits = result["edits"]
        last = edits[-1]
        pushed = {kind: sum(n for n in last["pushed"][kind].values()) for kind in last["pushed"]}
        # Bytes are the same every edit but for a byte of nonce (one split changed); the
        # layout time varies.
        ratio = pushed["delta+vhds"] / last["vhost_bytes"]
        entry = {"routes": size, "counts": result["counts"], "opened": result["opened"],
                 "edits": edits, "pushed": pushed, "pushed_by_type": last["pushed"],
                 "vhost_bytes": last["vhost_bytes"],
                 "vhost_inline_bytes": last["vhost_inline_bytes"],
                 "route_config_bytes": last["route_config_bytes"], "ratio": ratio,
                 "target_ratio": TARGET_RATIO,
                 "layout_s": summarize(e["layout_s"] for e in edits)}
        sizes.append(entry)
        log(f"  vhds: {size} Routes, one Route edited: pushed {pushed['delta+vhds']} B with "
            f"VHDS (delta), {pushed['delta']} B delta without, {pushed['sotw']} B SotW; the "
            f"Route's virtual host {last['vhost_bytes']} B ({last['vhost_inline_bytes']} B in "
            f"the {last['route_config_bytes'] / 1e3:.0f} kB configuration); ratio "
            f"{ratio:.2f} (target <= {TARGET_RATIO:g}); layout "
            f"{entry['layout_s']['median'] * 1000:.1f} ms median of {len(edits)}; first "
            f"sync {sum(result['opened']['delta+vhds'].values()) / 1e3:.0f} kB VHDS, "
            f"{sum(result['opened']['sotw'].values()) / 1e3:.0f} kB SotW")
    return {
        "scenario": "vhds",
        "what": "bytes an ADS stream of the gateway view is sent for one edited Route: delta "
                "with VHDS, delta, SotW; the Route's virtual host; their ratio",
        "config": {"sizes": list(cfg.sizes), "edits": cfg.edits, "target_ratio": TARGET_RATIO,
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
