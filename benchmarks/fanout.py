"""Scenario `fanout`: one changed cluster pushed to many simulated ADS streams.

One meshpilot server process (`benchmarks/fanout_server.py`: the `Meshpilot` app, production gRPC
options) holds a policy of N EDS clusters, each with a ClusterLoadAssignment of one static
endpoint, all in one view. Several client processes (`benchmarks/simclient.py`, each its own
asyncio loop and a few grpc.aio channels) open the ADS streams and behave like Envoy for CDS and
EDS. Once every stream has ACKed the initial CDS and EDS, the server replaces ONE cluster in the
view's snapshot (`cache.set`, every other resource shared), and we measure, per stream:

- receive: from t0 (just before `cache.set`) until the stream's read returned the response that
  carries the change (all timestamps CLOCK_MONOTONIC, one clock for every process);
- ACK sent: until the client had written its ACK; ACK recorded: until the server recorded it;
- bytes received for the change (SotW resends every cluster in CDS; delta sends one), and the
  endpoints response that follows a changed cluster;
- server CPU time (every thread) from t0 until the server had recorded every ACK;
- server RSS after loading the policy and building the view (before any stream) and after every
  stream is connected and in sync: the difference per stream is the cost of a connected proxy.

The same is done for SotW and then delta, each on a fresh server. An extra, untimed change runs
under cProfile (server event-loop thread) to name the hot functions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import JsonLineProcess, python_module_cmd
from benchmarks.policies import many_clusters_policy
from benchmarks.stats import summarize

_FILE_CLUSTERS = 1000  # clusters per policy file


@dataclass
class FanoutConfig:
    streams: int = 1000
    clusters: int = 5000
    processes: int = 4
    channels_per_process: int = 10
    # "+auth": the default, authenticated xDS (TLS, a node token on every stream), run beside
    # the plaintext one so the cost of authentication is measured in the same sitting.
    modes: tuple[str, ...] = ("sotw", "delta", "sotw+auth", "delta+auth")
    changes: int = 5
    profile: bool = True
    sync_timeout_s: float = 300.0
    change_timeout_s: float = 120.0
    quiet_s: float = 0.5
    storms: int = 0  # reconnect storms after the changes (scenario `storm`)
    profile_storm: bool = False  # one more storm under cProfile (server loop), not counted

    @classmethod
    def storm(cls, quick: bool = False) -> FanoutConfig:
        """Scenario `storm`: 1,000 clusters (5,000 streams x 5,000 clusters would need about
        5 GB of server RSS and minutes of initial sync on 2 cores), 3 changes, 3 storms; each
        client process holds at most about 1,250 streams."""
        if quick:
            return cls(streams=100, clusters=300, processes=2, channels_per_process=4,
                       changes=1, profile=False, storms=1, sync_timeout_s=60.0,
                       change_timeout_s=30.0, quiet_s=0.3, modes=("sotw", "delta"))
        return cls(clusters=1000, processes=4, channels_per_process=20, changes=3,
                   modes=("sotw", "delta"),
                   profile=False, storms=3, sync_timeout_s=600.0, change_timeout_s=300.0)

    @classmethod
    def quick(cls) -> FanoutConfig:
        return cls(streams=100, clusters=500, processes=2, channels_per_process=4, changes=2,
                   sync_timeout_s=60.0, change_timeout_s=30.0, quiet_s=0.3,
                   modes=("sotw", "sotw+auth"))


def write_policy(directory: Path, clusters: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for first in range(0, clusters, _FILE_CLUSTERS):
        count = min(_FILE_CLUSTERS, clusters - first)
        (directory / f"clusters-{first:05d}.yaml").write_text(
            many_clusters_policy(count, first=first, name=f"clusters-{first:05d}"))


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _ms_list(stamps: list[int], t0: int) -> list[float]:
    return [round((s - t0) / 1e6, 3) for s in stamps]


def _run_mode(cfg: FanoutConfig, mode: str, policy: Path, work: Path, out_dir: Path,
              log: Any) -> dict[str, Any]:
    protocol, _, auth = mode.partition("+")
    secure = ["--secure", str(work / f"state-{mode}")] if auth else []
    server = JsonLineProcess(python_module_cmd("benchmarks.fanout_server", "--policy",
                                               str(policy), *secure),
                             work / f"server-{mode}.log", name=f"fanout server ({mode})")
    clients: list[JsonLineProcess] = []
    try:
        ready = server.receive(timeout=180)
        log(f"    server up: {ready['counts']}, RSS {ready['rss'] / 2**20:.0f} MiB "
            f"(CDS SotW body {ready['cds_sotw_bytes'] / 1e3:.0f} kB)")
        first_id = 0
        for p, count in enumerate(_split(cfg.streams, cfg.processes)):
            args = ["--address", ready["xds_address"], "--streams", str(count),
                    "--channels", str(min(cfg.channels_per_process, count)),
                    "--first-id", str(first_id)]
            if protocol == "delta":
                args.append("--delta")
            if auth:
                args += ["--ca-file", ready["ca_file"], "--token", ready["token"]]
            clients.append(JsonLineProcess(python_module_cmd("benchmarks.simclient", *args),
                                           work / f"client-{mode}-{p}.log",
                                           name=f"simclient {p} ({mode})"))
            first_id += count
        # Trim first, so that "before" and "after" both start from a trimmed heap.
        trimmed_before = server.call(60, cmd="memory")
        before = server.call(30, cmd="stats")
        connect_start = time.monotonic()
        for client in clients:
            client.send(cmd="start", timeout=cfg.sync_timeout_s)
        started = [c.receive(cfg.sync_timeout_s + 30) for c in clients]
        after = server.call(cfg.sync_timeout_s, cmd="wait_synced", count=cfg.streams,
                            timeout=cfg.sync_timeout_s)
        connect_s = time.monotonic() - connect_start
        sync_ms = [round((s - st["start_ns"]) / 1e6, 3) for st in started for s in st["sync_ns"]]
        per_stream = (after["rss"] - before["rss"]) / cfg.streams
        memory = server.call(60, cmd="memory")
        log(f"    {cfg.streams} streams in sync after {connect_s:.1f}s; server RSS "
            f"{before['rss'] / 2**20:.0f} -> {after['rss'] / 2**20:.0f} MiB "
            f"({per_stream / 1024:.1f} KiB per stream); after malloc_trim "
            f"{(memory['rss_after_trim'] or 0) / 2**20:.0f} MiB; subscription state "
            f"{memory['stream_state_bytes'] / cfg.streams / 1024:.1f} KiB per stream")

        changes = []
        for r in range(cfg.changes + (1 if cfg.profile else 0)):
            profiled = r == cfg.changes
            marker = f"bench-change-{mode}-{r}"
            armed = [c.call(30, cmd="arm", marker=marker) for c in clients]
            change = server.call(60, cmd="change", marker=marker,
                                 index=(r * 797) % cfg.clusters, profile=profiled)
            t0 = change["t0_ns"]
            server.send(cmd="wait_acked", version=change["version"],
                        timeout=cfg.change_timeout_s)
            for client in clients:
                client.send(cmd="collect", timeout=cfg.change_timeout_s, quiet=cfg.quiet_s)
            collected = [c.receive(cfg.change_timeout_s + 30) for c in clients]
            acked = server.receive(cfg.change_timeout_s + 30)
            profile = None
            if profiled:
                profile = server.call(60, cmd="profile_stop",
                                      path=str(out_dir / f"fanout_profile_{mode}.txt"))
            recv = [ms for c in collected for ms in _ms_list(c["recv_ns"], t0)]
            ack_sent = [ms for c in collected for ms in _ms_list(c["ack_ns"], t0)]
            ack_recorded = _ms_list(acked["acked_ns"], t0)
            planned = _ms_list(acked["sent_ns"], t0)
            byte_rows = [b for c in collected for b in c["bytes"]]
            cds_bytes = [b.get("clusters", 0) for b in byte_rows]
            eds_bytes = [b.get("endpoints", 0) for b in byte_rows]
            total_bytes = [sum(b.values()) for b in byte_rows]
            entry = {
                "profiled": profiled,
                "changed_cluster_bytes": change["changed_cluster_bytes"],
                "receive_ms": summarize(recv),
                "ack_sent_ms": summarize(ack_sent),
                "ack_recorded_ms": summarize(ack_recorded),
                "response_planned_ms": summarize(planned),
                "server_cpu_s": acked["cpu1"] - change["cpu0"],
                "server_loop_thread_cpu_s": acked["loop_cpu1"] - change["loop_cpu0"],
                # The collector's passes on the server's loop thread during the change.
                "server_gc_s": [b - a for a, b in zip(change["gc0"]["gc_s"],
                                                      acked["gc1"]["gc_s"], strict=True)],
                "server_gc_count": [b - a for a, b in zip(change["gc0"]["gc_count"],
                                                          acked["gc1"]["gc_count"],
                                                          strict=True)],
                # The loop thread on a CPU, and runnable but waiting for one (schedstat).
                "server_loop_run_s": acked["sched1"]["run_s"] - change["sched0"]["run_s"],
                "server_loop_wait_s": acked["sched1"]["wait_s"] - change["sched0"]["wait_s"],
                "server_all_acked_seen_ms": (acked["seen_all_acked_ns"] - t0) / 1e6,
                "client_cpu_s": sum(c["cpu"] for c in collected) - sum(a["cpu"] for a in armed),
                "bytes_per_stream": {"clusters": summarize(cds_bytes),
                                     "endpoints": summarize(eds_bytes),
                                     "total": summarize(total_bytes)},
                "bytes_all_streams": sum(total_bytes),
                "server_rss_after": acked["rss"], "server_peak_rss": acked["peak_rss"],
                "samples": {"receive_ms": recv, "ack_sent_ms": ack_sent,
                            "ack_recorded_ms": ack_recorded},
            }
            if profile is not None:
                entry["profile"] = profile
            changes.append(entry)
            tag = " (cProfile on, not counted)" if profiled else ""
            log(f"    change {r + 1}{tag}: received p50 {entry['receive_ms']['median']:.0f} ms,"
                f" p99 {entry['receive_ms']['p99']:.0f}, max {entry['receive_ms']['max']:.0f};"
                f" all ACKs recorded {entry['ack_recorded_ms']['max']:.0f} ms;"
                f" server CPU {entry['server_cpu_s']:.2f}s"
                f" ({entry['server_loop_thread_cpu_s']:.2f}s on the event loop, waiting for a"
                f" core {entry['server_loop_wait_s']:.2f}s; gc"
                f" {sum(entry['server_gc_s']):.2f}s in {entry['server_gc_count']});"
                f" {entry['bytes_per_stream']['total']['median'] / 1e3:.1f} kB/stream")
        timed = [c for c in changes if not c["profiled"]]
        storms = [_storm(cfg, server, clients, mode, s, log) for s in range(cfg.storms)]
        storm_profile = None
        if cfg.storms and cfg.profile_storm:
            server.call(30, cmd="profile_start")
            _storm(cfg, server, clients, mode, cfg.storms, log)
            storm_profile = server.call(60, cmd="profile_stop", path=str(
                out_dir / f"storm_profile_{mode}_{cfg.streams}.txt"))
            log(f"    storm under cProfile: {storm_profile.get('total_tottime_s', 0):.2f}s on "
                f"the loop; hottest: " + ", ".join(
                    f"{r['function']} {r['tottime_s']:.2f}s"
                    for r in storm_profile.get("top", [])[:4]))

        def med(key: str, stat: str) -> float | None:
            return summarize(c[key][stat] for c in timed)["median"]

        return {
            "mode": mode,
            "streams": cfg.streams,
            "clusters": cfg.clusters,
            "server_rss_start": ready["rss_start"],
            "server_rss_before_connect": before["rss"],
            "server_rss_after_sync": after["rss"],
            "server_peak_rss_after_sync": after["peak_rss"],
            "rss_per_stream_bytes": per_stream,
            "server_rss_after_sync_trimmed": memory["rss_after_trim"],
            "rss_per_stream_trimmed_bytes": (
                (memory["rss_after_trim"] - trimmed_before["rss_after_trim"]) / cfg.streams
                if memory["rss_after_trim"] else None),
            "stream_state_bytes_per_stream": memory["stream_state_bytes"] / cfg.streams,
            "initial_sync_s": connect_s,
            "initial_sync_ms": summarize(sync_ms),
            "initial_sync_samples_ms": sync_ms,
            "initial_sync_server_cpu_s": after["cpu"] - before["cpu"],
            "summary": {
                "receive_p50_ms": med("receive_ms", "median"),
                "receive_p99_ms": med("receive_ms", "p99"),
                "receive_max_ms": med("receive_ms", "max"),
                "ack_recorded_max_ms": med("ack_recorded_ms", "max"),
                "ack_sent_p50_ms": med("ack_sent_ms", "median"),
                "ack_sent_max_ms": med("ack_sent_ms", "max"),
                "server_cpu_s": summarize(c["server_cpu_s"] for c in timed)["median"],
                "server_loop_thread_cpu_s": summarize(
                    c["server_loop_thread_cpu_s"] for c in timed)["median"],
                "bytes_per_stream": summarize(
                    c["bytes_per_stream"]["total"]["median"] for c in timed)["median"],
                "cds_bytes_per_stream": summarize(
                    c["bytes_per_stream"]["clusters"]["median"] for c in timed)["median"],
                "changes": len(timed),
            },
            "changes": changes,
            "storms": storms,
            "storm_profile": storm_profile,
            "storm_summary": {
                "all_in_sync_ms": summarize(s["all_in_sync_ms"] for s in storms),
                "bytes_per_stream": summarize(s["bytes_per_stream"]["median"] for s in storms),
                "bytes_all_streams": summarize(s["bytes_all_streams"] for s in storms),
                "server_cpu_s": summarize(s["server_cpu_s"] for s in storms),
            } if storms else None,
        }
    finally:
        for client in clients:
            client.close()
        server.close(timeout=30)


def _storm(cfg: FanoutConfig, server: JsonLineProcess, clients: list[JsonLineProcess],
           mode: str, index: int, log: Any) -> dict[str, Any]:
    """Every stream drops (and its TCP connection) and reconnects at once, claiming what it held.

    From the first drop until the server sees every new stream in sync (polled every 10 ms), and
    the bytes each stream was sent after reconnecting (0 when the claim is honoured)."""
    before = server.call(30, cmd="forget_streams")
    server.send(cmd="wait_synced", count=cfg.streams, timeout=cfg.sync_timeout_s, interval=0.01)
    for client in clients:
        client.send(cmd="reconnect", timeout=cfg.sync_timeout_s)
    reconnected = [c.receive(cfg.sync_timeout_s + 30) for c in clients]
    synced = server.receive(cfg.sync_timeout_s + 30)
    drop_ns = min(r["drop_ns"] for r in reconnected)
    time.sleep(cfg.quiet_s)  # anything (re)sent after the sync is still counted
    resent = [c.call(30, cmd="resent") for c in clients]
    per_stream = [b for r in resent for b in r["bytes"]]
    responses = [n for r in resent for n in r["responses"]]
    entry = {
        "all_in_sync_ms": (synced["synced_ns"] - drop_ns) / 1e6,
        "all_dropped_ms": (max(r["dropped_ns"] for r in reconnected) - drop_ns) / 1e6,
        "requests_written_ms": (max(r["requests_written_ns"] for r in reconnected)
                                - drop_ns) / 1e6,
        "server_cpu_s": synced["cpu"] - before["cpu"],
        "bytes_per_stream": summarize(per_stream),
        "bytes_all_streams": sum(per_stream),
        "responses_per_stream": summarize(responses),
        "streams_sent_anything": sum(1 for b in per_stream if b),
    }
    log(f"    reconnect storm {index + 1} ({mode}): all {cfg.streams} streams in sync again "
        f"{entry['all_in_sync_ms']:.0f} ms after the drop (dropped in "
        f"{entry['all_dropped_ms']:.0f} ms, requests written at "
        f"{entry['requests_written_ms']:.0f} ms); re-sent {entry['bytes_all_streams']:,} bytes "
        f"in total, {entry['streams_sent_anything']} streams sent anything; server CPU "
        f"{entry['server_cpu_s']:.2f}s")
    return entry


def run_storm(cfg: FanoutConfig, stream_counts: tuple[int, ...], work: Path, out_dir: Path,
              log: Any = print) -> dict[str, Any]:
    """Scenario `storm`: the fan-out at several stream counts, each followed by reconnect
    storms (SotW and delta, a fresh server each)."""
    policy = work / "policy"
    write_policy(policy, cfg.clusters)
    runs: list[dict[str, Any]] = []
    failed: list[str] = []
    # At most about 625 streams per client process: with 1,250 per process, grpc's client core
    # failed streams at 5,000 ("INTERNAL: Internal error from Core", 300-500 of them). The same
    # number of client processes at every stream count: they share the server's 2 cores, and
    # with 4 at 1,000 streams but 16 at 10,000 the server's event loop waited for a core 1.3 to
    # 1.5 times as long as it ran at 10,000 against about as long at 1,000, which a ratio of
    # the two counts then read as the server's own scaling.
    cfg.processes = max(cfg.processes, -(-max(stream_counts) // 625))
    for streams in stream_counts:
        cfg.streams = streams
        for mode in cfg.modes:
            log(f"  storm: {streams} {mode} ADS streams ({cfg.processes} client processes x "
                f"{cfg.channels_per_process} channels), {cfg.clusters} EDS clusters; "
                f"{cfg.changes} changes, {cfg.storms} reconnect storms")
            try:
                runs.append(_run_mode(cfg, mode, policy, work / f"{mode}-{streams}", out_dir,
                                      log))
            except Exception as e:  # keep what was measured; the report names what failed
                failed.append(f"{mode}, {streams} streams: {type(e).__name__}: {e}"[:2000])
                log(f"    !! {failed[-1][:300]}")
    if not runs:
        raise RuntimeError("every storm run failed: " + " | ".join(failed))
    return {
        "failed": failed,
        "scenario": "storm",
        "what": "one changed cluster to N simulated streams, then every stream drops and "
                "reconnects at once claiming what it held (SotW version_info, delta "
                "initial_resource_versions)",
        "config": {"stream_counts": list(stream_counts), "clusters": cfg.clusters,
                   "client_processes": cfg.processes,
                   "channels_per_process": cfg.channels_per_process, "changes": cfg.changes,
                   "storms": cfg.storms},
        "modes": runs,
    }


def run(cfg: FanoutConfig, work: Path, out_dir: Path, log: Any = print) -> dict[str, Any]:
    policy = work / "policy"
    write_policy(policy, cfg.clusters)
    modes = []
    for mode in cfg.modes:
        log(f"  fanout: {cfg.streams} {mode} ADS streams ({cfg.processes} client processes x "
            f"{cfg.channels_per_process} channels), {cfg.clusters} EDS clusters + endpoints")
        modes.append(_run_mode(cfg, mode, policy, work, out_dir, log))
    return {
        "scenario": "fanout",
        "what": "one changed cluster, from cache.set until every simulated ADS stream has "
                "received (and ACKed) it",
        "config": {"streams": cfg.streams, "clusters": cfg.clusters,
                   "client_processes": cfg.processes,
                   "channels_per_process": cfg.channels_per_process, "changes": cfg.changes,
                   "resources": "EDS clusters, each with a ClusterLoadAssignment of one static "
                                "endpoint; one view; ADS; clients subscribe CDS (wildcard) + EDS",
                   "server": "benchmarks/fanout_server.py: Meshpilot app in its own process"},
        "modes": modes,
    }
