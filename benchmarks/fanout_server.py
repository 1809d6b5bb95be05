"""The server side of the `fanout` scenario: one meshpilot in its own process, driven by JSON lines.

    python -m benchmarks.fanout_server --policy DIR [--view edge]

It runs `Meshpilot(Settings(...))` (the same object `meshpilot serve` runs: controller, cache, xDS
gRPC server with its production options, admin) on 127.0.0.1 port 0, loads the policy once (no
file watching), builds the view's snapshot before any client connects, and then answers one JSON
object per line on stdin with one JSON line on stdout:

- `stats`: RSS, peak RSS, CPU seconds (every thread), connections, streams in sync.
- `wait_synced {count, timeout}`: wait until `count` streams have ACKed the current CDS and EDS.
- `change {marker, index}`: replace ONE cluster (`alt_stat_name` set to `marker`) in a copy of the
  view's snapshot (every other resource shared, as a reload that changed one cluster would leave
  it) and `cache.set()` it. Answers t0 (CLOCK_MONOTONIC, taken just before `cache.set`) and CPU.
- `wait_acked {version, timeout}`: wait until every stream has ACKed that CDS version; answers the
  CPU time then, and per stream when the server planned the response and recorded the ACK.
- `change {..., profile: true}` starts cProfile (event-loop thread) just before `cache.set`,
  `profile_start` now; `profile_stop {path}` ends it and answers the top functions.
- `memory`: RSS now, then after `gc.collect()` and glibc `malloc_trim(0)` (what the allocator
  keeps but Python no longer uses), and the Python objects the streams' state holds.
- `quit`.

Time stamps meshpilot records itself (`sent_at`, `acked_at`) are wall-clock (`time.time()`), turned
into CLOCK_MONOTONIC with an offset sampled here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import ctypes
import gc
import io
import linecache
import logging
import os
import pstats
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2

from benchmarks.common import (
    control_channel,
    now_ns,
    proc_peak_rss_bytes,
    proc_rss_bytes,
    realtime_offset_ns,
    self_cpu_seconds,
)
from benchmarks.policies import cluster_name
from meshpilot.base import types
from meshpilot.runtime.app import Meshpilot, Settings
from meshpilot.xds.resources import Resource, ResourceMap
from meshpilot.xds.snapshot import Snapshot


class GcClock:
    """The cycle collector's own time on this process, per generation (`gc.callbacks`): how much
    of a change's CPU is the collector's, which grows with the heap, not with the change."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.thread_time()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.thread_time() - self._start
            self.count[generation] += 1

    def read(self) -> dict[str, Any]:
        return {"gc_s": list(self.seconds), "gc_count": list(self.count)}


def loop_schedstat() -> dict[str, float]:
    """The event-loop thread's (this one's) time on a CPU and time runnable but waiting for one
    (Linux schedstat): whether a slow fan-out is the server's work or the machine's other
    processes (the simulated clients among them) holding the cores."""
    try:
        fields = Path(f"/proc/self/task/{threading.get_native_id()}/schedstat").read_text().split()
    except OSError:
        return {"run_s": 0.0, "wait_s": 0.0}
    return {"run_s": int(fields[0]) / 1e9, "wait_s": int(fields[1]) / 1e9}


def _poll_interval(interval: float, streams: int) -> float:
    """A poll of every stream's state runs on the server's event loop, at about a microsecond
    per stream: polled every 10 ms, 10,000 streams would take a third of the loop from the
    streams being measured. At least 100 times the poll's own cost apart, then (10 ms up to
    1,000 streams, 100 ms at 10,000); the times measured are per-stream stamps, not polls."""
    return max(interval, streams * 10e-6)


class Server:
    def __init__(self, mp: Meshpilot, view: str):
        self.mp = mp
        self.view = view
        self.profile: cProfile.Profile | None = None
        self._frozen: list[Any] | None = None  # the streams, once all are in sync
        self._heap_mark: tracemalloc.Snapshot | None = None
        self._old: list[Any] = []  # streams from before a reconnect storm (kept: ids stay unique)
        self._old_ids: set[int] = set()
        self.gc = GcClock()

    def _streams(self) -> list[Any]:
        if self._frozen is not None:
            return self._frozen
        # Frozen once all are in sync (wait_acked polls); unordered: a sort of 10,000
        # connections per poll would take the event loop from the streams measured.
        return [c.stream for c in self.mp.registry.unordered()
                if c.view == self.view and id(c.stream) not in self._old_ids]

    def forget_streams(self) -> dict[str, Any]:
        """Before a reconnect storm: from now on only streams opened later count."""
        self._old = [c.stream for c in self.mp.registry.unordered()]
        self._old_ids = {id(s) for s in self._old}
        self._frozen = None
        return self.stats()

    def snapshot(self) -> Snapshot:
        snapshot = self.mp.cache.get(self.view)
        assert snapshot is not None
        return snapshot

    def synced(self) -> int:
        snapshot = self.snapshot()
        want = {t: snapshot.get(t).version for t in (types.CLUSTER, types.ENDPOINT)}
        count = 0
        for stream in self._streams():
            states = [stream.types.get(t) for t in want]
            if all(s is not None and not s.in_flight and s.acked_version == want[s.type_url]
                   for s in states):
                count += 1
        return count

    def stats(self) -> dict[str, Any]:
        return {"rss": proc_rss_bytes(), "peak_rss": proc_peak_rss_bytes(),
                "cpu": self_cpu_seconds(), "now_ns": now_ns(),
                "connections": len(self.mp.registry.unordered()), "synced": self.synced()}

    async def wait_synced(self, count: int, timeout: float,
                          interval: float = 0.1) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while self.synced() < count:
            if time.monotonic() > deadline:
                return {"error": f"only {self.synced()} of {count} streams in sync after "
                                 f"{timeout:.0f}s ({len(self._streams())} connected)"}
            await asyncio.sleep(_poll_interval(interval, count))
        self._frozen = self._streams()
        synced_ns = now_ns()
        return {**self.stats(), "synced_ns": synced_ns}

    def change(self, marker: str, index: int, profile: bool = False) -> dict[str, Any]:
        old = self.snapshot()
        clusters = old.get(types.CLUSTER)
        name = cluster_name(index)
        message = cluster_pb2.Cluster.FromString(clusters[name].body)
        message.alt_stat_name = marker
        changed = Resource.from_message(types.CLUSTER, name, message)
        new_map = ResourceMap(types.CLUSTER,
                              [changed if r.name == name else r for r in clusters.values()])
        maps = {t: old.get(t) for t in old.type_urls()}
        maps[types.CLUSTER] = new_map
        new = Snapshot(self.view, maps)
        gc.collect()
        if profile:
            # Only the event-loop thread (this one), where all of meshpilot's Python runs.
            self.profile = cProfile.Profile()
            self.profile.enable()
        cpu0 = self_cpu_seconds()
        loop_cpu0 = time.thread_time()  # this thread: the event loop
        t0 = now_ns()
        self.mp.cache.set(new)
        return {"t0_ns": t0, "cpu0": cpu0, "loop_cpu0": loop_cpu0, "version": new_map.version,
                "gc0": self.gc.read(), "sched0": loop_schedstat(),
                "changed_cluster_bytes": len(changed.body)}

    async def wait_acked(self, version: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            streams = self._streams()
            states = [s.types.get(types.CLUSTER) for s in streams]
            if all(st is not None and st.acked_version == version and not st.in_flight
                   for st in states):
                break
            if time.monotonic() > deadline:
                done = sum(1 for st in states if st is not None and st.acked_version == version)
                return {"error": f"{done} of {len(states)} streams ACKed {version} "
                                 f"after {timeout:.0f}s"}
            await asyncio.sleep(_poll_interval(0.01, len(states)))
        cpu = self_cpu_seconds()
        loop_cpu = time.thread_time()
        seen = now_ns()
        offset = realtime_offset_ns()
        sent = [int(st.sent_at * 1e9) - offset for st in states if st and st.sent_at]
        acked = [int(st.acked_at * 1e9) - offset for st in states if st and st.acked_at]
        return {"cpu1": cpu, "loop_cpu1": loop_cpu, "seen_all_acked_ns": seen, "sent_ns": sent,
                "gc1": self.gc.read(), "sched1": loop_schedstat(),
                "acked_ns": acked, "rss": proc_rss_bytes(), "peak_rss": proc_peak_rss_bytes()}

    def memory(self) -> dict[str, Any]:
        rss = proc_rss_bytes()
        gc.collect()
        trimmed = None
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            trimmed = proc_rss_bytes()
        out = {"rss": rss, "rss_after_trim": trimmed, "blocks": sys.getallocatedblocks(),
               "stream_state_bytes": self._stream_state_bytes()}
        if tracemalloc.is_tracing():
            # Diagnostics (--tracemalloc): what grew since the previous `memory` call, by line.
            snap = tracemalloc.take_snapshot()
            if self._heap_mark is not None:
                out["python_heap_growth"] = [
                    {"where": str(stat.traceback), "bytes": stat.size_diff,
                     "blocks": stat.count_diff}
                    for stat in snap.compare_to(self._heap_mark, "lineno")[:20]]
            out["python_heap_bytes"] = tracemalloc.get_traced_memory()[0]
            self._heap_mark = snap
        return out

    def _stream_state_bytes(self) -> int:
        """Rough size of what the streams' own state holds: subscribed names sets (and their
        strings), per-stream `known` dicts; shared snapshot maps are not counted."""
        total = 0
        seen: set[int] = set()

        def size(obj: Any) -> int:
            if id(obj) in seen:
                return 0
            seen.add(id(obj))
            return sys.getsizeof(obj)

        for stream in self._streams():
            for state in stream.types.values():
                for attr in ("names", "anticipated", "force"):
                    names = getattr(state, attr, ())
                    total += size(names) + sum(size(n) for n in names)
                if isinstance(state.known, dict):
                    total += size(state.known)
        return total

    def profile_start(self) -> dict[str, Any]:
        """cProfile on the event-loop thread from now until `profile_stop` (a storm, say)."""
        self.profile = cProfile.Profile()
        self.profile.enable()
        return self.stats()

    def profile_stop(self, path: str, top: int = 30) -> dict[str, Any]:
        if self.profile is None:
            return {"error": "no profile running"}
        self.profile.disable()
        out = io.StringIO()
        stats = pstats.Stats(self.profile, stream=out).sort_stats("tottime")
        stats.print_stats(top)
        text = out.getvalue()
        rows = []
        entries = sorted(stats.stats.items(),  # type: ignore[attr-defined]
                         key=lambda kv: kv[1][2], reverse=True)
        # Waiting in epoll is the loop being idle, not work: left out of the hot list.
        idle = sum(v[2] for k, v in entries if "select.epoll" in k[2])
        for (file, line, func), (_cc, nc, tt, ct, _callers) in [
                e for e in entries if "select.epoll" not in e[0][2]][:top]:
            # The source line names what an anonymous <listcomp> or <genexpr> is.
            rows.append({"function": f"{Path(file).name}:{line}({func})", "calls": nc,
                         "tottime_s": tt, "cumtime_s": ct,
                         "source": linecache.getline(file, line).strip()[:120]})
        total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
        sources = "\n".join(f"{r['function']}: {r['source']}" for r in rows if r["source"])
        Path(path).write_text(f"{text}\nSource lines of the functions above:\n{sources}\n")
        self.profile = None
        return {"top": rows, "total_tottime_s": total - idle, "idle_s": idle, "path": path}


async def serve(args: argparse.Namespace) -> None:
    # --secure DIR: the default, authenticated xDS (TLS from the mesh CA, a node token per
    # stream), its state in DIR; without it plaintext and unauthenticated, so the two can be
    # compared side by side (the cost of authentication).
    secure = Path(args.secure) if args.secure else None
    settings = Settings(policy=Path(args.policy), xds_address="127.0.0.1:0",
                        admin_address="127.0.0.1:0", watch=False, insecure_xds=secure is None,
                        state_dir=secure)
    mp = Meshpilot(settings)
    rss_start = proc_rss_bytes()
    await mp.start()
    server = Server(mp, args.view)
    # The view's snapshot and its shared SotW bodies exist before anyone connects, so the
    # "before" RSS holds the whole shared config and the per-stream delta is only the streams'.
    snapshot = await mp.snapshot_of(args.view)
    assert snapshot is not None
    for type_url in snapshot.type_urls():
        snapshot.get(type_url).sotw_body()
    gc.collect()

    loop = asyncio.get_running_loop()
    commands, answer = control_channel(loop)

    credentials = {}
    if secure is not None:
        (secure / "xds-ca.crt").write_bytes(mp.xds_ca_pem or b"")
        credentials = {"ca_file": str(secure / "xds-ca.crt"),
                       "token": mp.tokens.issue("node", args.view)}
    answer({"ready": True, "xds_address": mp.xds_address, "pid": os.getpid(), **credentials,
            "rss_start": rss_start, "counts": snapshot.counts(),
            "cds_sotw_bytes": len(snapshot.get(types.CLUSTER).sotw_body()),
            "eds_sotw_bytes": len(snapshot.get(types.ENDPOINT).sotw_body()), **server.stats()})
    try:
        while True:
            command = await commands.get()
            if command is None or command.get("cmd") == "quit":
                break
            cmd = command.pop("cmd")
            try:
                if cmd == "stats":
                    answer(server.stats())
                elif cmd == "wait_synced":
                    answer(await server.wait_synced(**command))
                elif cmd == "change":
                    answer(server.change(**command))
                elif cmd == "wait_acked":
                    answer(await server.wait_acked(**command))
                elif cmd == "forget_streams":
                    answer(server.forget_streams())
                elif cmd == "memory":
                    answer(server.memory())
                elif cmd == "profile_start":
                    answer(server.profile_start())
                elif cmd == "profile_stop":
                    answer(server.profile_stop(**command))
                else:
                    answer({"error": f"unknown command {cmd!r}"})
            except Exception as e:  # report, keep serving: the coordinator decides
                logging.exception("command %s failed", cmd)
                answer({"error": f"{cmd}: {type(e).__name__}: {e}"})
    finally:
        await mp.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", required=True)
    parser.add_argument("--view", default="edge")
    parser.add_argument("--secure", metavar="DIR", default=None,
                        help="authenticated xDS (the default of meshpilot serve), state in DIR")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="diagnostics: trace Python allocations (slows everything down)")
    args = parser.parse_args()
    if args.tracemalloc:
        tracemalloc.start(4)
    # Per-connection info lines would be a thousand log writes; warnings still show.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
