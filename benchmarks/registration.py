"""Scenario `registration`: what one self-registration costs, by the Service's endpoint count.

Issue 18's target: the 2,000th registration of a Service costs at most 1.2x the first (each used
to rebuild the Service's ClusterLoadAssignment from all its endpoints). One warm worker process
(`python -m benchmarks.registration --worker DIR --registrations N`):

1. `Controller(DIR, SnapshotCache(), endpoints=EndpointRegistry(...))` on
   `policies.services_policy(100)` (100 Services with subsets v1 and v2, a Route each on one
   Gateway), `reload()`, the gateway view `edge` built, `gc.freeze()` as `meshpilot serve` does;
2. N instances of `svc-00000` registered one by one (alternately labelled v1 and v2, so the
   Service's assignment and one subset's change each time), each followed by
   `controller.apply_endpoints()`: the registry read, the changed assignments built, every view's
   new snapshot made and swapped into the cache: what the runtime runs (on a worker thread and
   the loop) after a `POST /v1/registrations`. Timed: `register` + `apply_endpoints`, wall clock
   (`perf_counter`) and this thread's CPU (`thread_time`);
3. after the last one, the view's assignments of `svc-00000`'s subsets (the clusters the
   gateway routes to) are decoded and checked: all N registered addresses plus the policy's
   own, each once.

Reported: the median of registrations 1-20 ("first") and of the 20 ending at N ("N-th"), their
ratio (target at most 1.2), and every raw figure. Rate limits are off (the registry's own
defaults allow 1,000 instances per Service, which is what a hostile registrant meets).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, child_env, python_module_cmd
from benchmarks.policies import cluster_name, services_policy
from benchmarks.stats import summarize

TARGET_RATIO = 1.2
WINDOW = 20


@dataclass
class RegistrationConfig:
    registrations: int = 2000
    services: int = 100
    rounds: int = 3  # worker processes, one after the other; medians over them

    @classmethod
    def quick(cls) -> RegistrationConfig:
        return cls(registrations=200, services=20, rounds=1)


def worker(policy: Path, registrations: int) -> dict[str, Any]:
    from envoy.config.endpoint.v3 import endpoint_pb2

    from meshpilot.base import types
    from meshpilot.discovery.registry import EndpointRegistry, Limits
    from meshpilot.runtime.controller import Controller
    from meshpilot.xds.cache import SnapshotCache

    limit = Limits(max_instances=registrations + 10, rate=1e9, burst=registrations + 10)
    registry = EndpointRegistry(limits={"registration": limit})
    controller = Controller(policy, SnapshotCache(), endpoints=registry)
    if not controller.reload():
        raise RuntimeError(f"policy rejected: {controller.status.error}")
    controller.snapshot_blocking("edge")
    gc.collect()
    gc.freeze()
    service = cluster_name(0)
    wall: list[float] = []
    cpu: list[float] = []
    for i in range(registrations):
        host = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        labels = {"version": "v1" if i % 2 == 0 else "v2"}
        t0, c0 = time.perf_counter(), time.thread_time()
        registry.register(service, host, 9000, labels)
        changed = controller.apply_endpoints()
        c1, t1 = time.thread_time(), time.perf_counter()
        if changed != {service}:
            raise RuntimeError(f"registration {i + 1} changed {sorted(changed)}")
        wall.append((t1 - t0) * 1e3)
        cpu.append((c1 - c0) * 1e3)
    snapshot = controller.cache.get("edge")
    assert snapshot is not None
    # The gateway routes to the subsets: their assignments hold every endpoint once.
    assignments = [r for n, r in snapshot.get(types.ENDPOINT).items()
                   if n.startswith(service + "/")]
    addresses = [lb.endpoint.address.socket_address.address
                 for r in assignments
                 for group in endpoint_pb2.ClusterLoadAssignment.FromString(r.body).endpoints
                 for lb in group.lb_endpoints]
    expected = registrations + 2  # the policy's two endpoints of the Service
    if len(addresses) != expected or len(set(addresses)) != expected:
        raise RuntimeError(f"the assignments hold {len(addresses)} endpoints "
                           f"({len(set(addresses))} distinct), expected {expected}")
    return {"wall_ms": wall, "cpu_ms": cpu,
            "assignment_bytes": sum(len(r.body) for r in assignments),
            "endpoints": len(addresses)}


def _window(samples: list[float], end: int) -> float:
    median = summarize(samples[max(0, end - WINDOW):end])["median"]
    assert median is not None
    return float(median)


def run(cfg: RegistrationConfig, work: Path, log: Any = print) -> dict[str, Any]:
    policy = work / "policy"
    policy.mkdir(parents=True, exist_ok=True)
    (policy / "services.yaml").write_text(services_policy(cfg.services))
    rounds = []
    for r in range(cfg.rounds):
        out = subprocess.run(
            python_module_cmd("benchmarks.registration", "--worker", str(policy),
                              "--registrations", str(cfg.registrations)),
            cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"registration worker failed: {out.stderr[-2000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        n = cfg.registrations
        entry = {
            "first_wall_ms": _window(result["wall_ms"], WINDOW),
            "last_wall_ms": _window(result["wall_ms"], n),
            "first_cpu_ms": _window(result["cpu_ms"], WINDOW),
            "last_cpu_ms": _window(result["cpu_ms"], n),
            "assignment_bytes": result["assignment_bytes"],
            "samples": result,
        }
        entry["ratio_wall"] = entry["last_wall_ms"] / entry["first_wall_ms"]
        entry["ratio_cpu"] = entry["last_cpu_ms"] / entry["first_cpu_ms"]
        rounds.append(entry)
        log(f"  round {r + 1}: registration 1-{WINDOW} median {entry['first_wall_ms']:.2f} ms "
            f"(CPU {entry['first_cpu_ms']:.2f}), {n - WINDOW + 1}-{n} median "
            f"{entry['last_wall_ms']:.2f} ms (CPU {entry['last_cpu_ms']:.2f}): "
            f"{entry['ratio_wall']:.2f}x wall, {entry['ratio_cpu']:.2f}x CPU (target "
            f"<= {TARGET_RATIO}); assignment {entry['assignment_bytes']:,} bytes")

    def med(key: str) -> float:
        value = summarize(e[key] for e in rounds)["median"]
        assert value is not None
        return float(value)

    return {
        "scenario": "registration",
        "what": "register one instance of a Service and apply it (registry, assignments, every "
                "view's snapshot, cache), by how many endpoints the Service already has",
        "config": {"registrations": cfg.registrations, "services": cfg.services,
                   "rounds": cfg.rounds, "window": WINDOW, "target_ratio": TARGET_RATIO},
        "summary": {"first_wall_ms": med("first_wall_ms"), "last_wall_ms": med("last_wall_ms"),
                    "ratio_wall": med("ratio_wall"), "first_cpu_ms": med("first_cpu_ms"),
                    "last_cpu_ms": med("last_cpu_ms"), "ratio_cpu": med("ratio_cpu")},
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", metavar="POLICY_DIR")
    parser.add_argument("--registrations", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker), args.registrations)))
        return
    import tempfile

    cfg = RegistrationConfig.quick() if args.quick else RegistrationConfig()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(cfg, Path(tmp))
    print(json.dumps(result["summary"], indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
