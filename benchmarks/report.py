"""Turning scenario results into the printed tables and `report.md`."""

from __future__ import annotations

from typing import Any

from benchmarks.stats import table

ANCHORS = ("Published anchors (other systems, other machines; orders of magnitude only): "
           "route change to served, Istio 120-300 ms, Envoy Gateway ~600 ms; "
           "memory per connected proxy, istiod 1.3-2 MB.")


def _convergence(result: dict[str, Any]) -> tuple[str, list[str], list[list[Any]], str]:
    cfg = result["config"]
    headers = ["variant", "n", "median ms", "p90", "p99", "min", "max", "first Envoy median",
               "server: file event -> last ACK, median", "pre-push check, mean ms"]
    rows = []
    for v in result["variants"]:
        s = v["summary"]
        server = v.get("server_summary") or {}
        check = v.get("prepush_status") or {}
        mean = (round(1000 * check["seconds_total"] / check["checks"], 1)
                if check.get("checks") else "off" if check.get("enabled") is False else "")
        rows.append([v["name"], s["n"], s["median"], s["p90"], s["p99"], s["min"], s["max"],
                     v["first_envoy_summary"]["median"], server.get("median", ""), mean])
    title = (f"convergence: save -> all {cfg['envoys']} Envoys serve the edit "
             f"(meshpilot serve subprocess, real Envoys, HTTP probes every {cfg['poll_ms']:g} ms)")
    note = ("Each sample is one edit: from just before os.replace until the LAST Envoy answered "
            "from the new backend; it includes the --debounce-quiet period.")
    return title, headers, rows, note


def _prepush(result: dict[str, Any]) -> tuple[str, list[str], list[list[Any]], str]:
    cfg = result["config"]
    headers = ["variant", "n", "median ms", "p90", "p99", "min", "max", "round medians",
               "server: file event -> last ACK, median", "check mean ms"]
    rows = []
    for v in result["variants"]:
        s = v["summary"]
        rows.append([v["name"], s["n"], s["median"], s["p90"], s["p99"], s["min"], s["max"],
                     " / ".join(f"{m:.0f}" for m in v["round_medians_ms"]),
                     v["server_summary"]["median"],
                     "" if v["check_mean_ms"] is None else round(v["check_mean_ms"], 1)])
    title = (f"prepush: one edit until all {cfg['envoys']} Envoys serve it, with and without "
             f"the pre-push check ({cfg['rounds']} alternating rounds of "
             f"{cfg['edits_per_round']} edits each)")
    note = ("Every edit is new content (the check's cache cannot answer it). Rounds alternate "
            f"(order {cfg['order']}), each with a fresh server and fresh Envoys.")
    return title, headers, rows, note


def _fanout(result: dict[str, Any]) -> tuple[str, list[str], list[list[Any]], str]:
    headers = ["mode", "streams", "clusters", "recv p50 ms", "recv p99", "recv max",
               "all ACKs recorded", "server CPU s", "bytes/stream", "RSS/stream KiB",
               "initial sync s"]
    rows = []
    for m in result["modes"]:
        s = m["summary"]
        rows.append([m["mode"], m["streams"], m["clusters"], s["receive_p50_ms"],
                     s["receive_p99_ms"], s["receive_max_ms"], s["ack_recorded_max_ms"],
                     f"{s['server_cpu_s']:.2f}", int(s["bytes_per_stream"]),
                     m["rss_per_stream_bytes"] / 1024, m["initial_sync_s"]])
    cfg = result["config"]
    title = (f"fanout: one changed cluster to {cfg['streams']} simulated ADS streams "
             f"({cfg['client_processes']} client processes), {cfg['clusters']} EDS clusters")
    note = (f"Medians over {cfg['changes']} changes of the per-change p50/p99/max across streams; "
            "times from cache.set(). bytes/stream: everything a stream received for the change "
            "(CDS + the changed cluster's endpoints). RSS/stream: server RSS growth from before "
            "the first stream to all streams in sync, divided by streams.")
    return title, headers, rows, note


def _translation(result: dict[str, Any]) -> tuple[str, list[str], list[list[Any]], str]:
    headers = ["clusters", "YAML MB", "load s", "translate s", "snapshot s", "bodies s",
               "total s", "peak RSS +MiB", "tracemalloc peak MiB"]
    rows = []
    for e in result["sizes"]:
        s = e["summary"]
        rows.append([e["clusters"], e["yaml_bytes"] / 1e6, s["load_s"]["median"],
                     s["translate_s"]["median"], s["snapshot_s"]["median"],
                     s["bodies_s"]["median"], s["total_s"]["median"],
                     e["peak_rss_delta_bytes"]["median"] / 2**20,
                     e["tracemalloc_peak_bytes"] / 2**20])
    runs = result["config"]["runs"]
    title = f"translation: policy files to serialized xDS, cold process (median of {runs})"
    note = "Clusters with one endpoint each (EDS + ClusterLoadAssignment)."
    return title, headers, rows, note


def _policy_language(result: dict[str, Any]) -> tuple[str, list[str], list[list[Any]], str]:
    headers = ["services + routes", "YAML MB", "meshpilot validate s", "load s",
               "translate+snapshot s", "total s", "peak RSS +MiB"]
    rows = []
    for e in result.get("services", []):
        s = e["summary"]
        rows.append([e["services"], e["yaml_bytes"] / 1e6, e["validate_s"]["median"],
                     s["load_s"]["median"], s["translate_s"]["median"] + s["snapshot_s"]["median"],
                     s["total_s"]["median"], e["peak_rss_delta_bytes"]["median"] / 2**20])
    title = "policy language: N Services (2 endpoints, 2 subsets) + N Routes (90/10 split)"
    note = ("`meshpilot validate` is the whole command's wall time (imports included); the other "
            "columns are in one cold process, view `edge` (the Gateway).")
    return title, headers, rows, note


def _incremental(result: dict[str, Any]) -> tuple[str, list[str], list[list[Any]], str]:
    headers = ["services + routes", "edited", "reload ms (median)", "cold load ms",
               "share of cold", "index path", "changed resources", "changed kB"]
    rows = []
    for e in result["sizes"]:
        for kind, found in e["kinds"].items():
            rows.append([e["services"], kind, found["summary"]["median"] * 1000,
                         e["cold_total_median_s"] * 1000, found["share_of_cold"],
                         found["fast"], found["changed_count"], found["changed_bytes"] / 1e3])
    ratios = next(iter(result.get("trees", {}).values()), {}).get("ratios", {})
    title = "incremental: one Route or one Service edited, warm process, what the reload costs"
    note = (f"Median of {result['config']['edits']} edits each; cold load = load_policy + "
            "Translation + snapshot of the same folder. Largest / smallest size: " +
            ", ".join(f"{kind} {ratio:.2f}x" for kind, ratio in ratios.items()) +
            f" (target {result['config']['target_ratio']:g}x).")
    return title, headers, rows, note


def _vhds(result: dict[str, Any]) -> tuple[str, list[str], list[list[Any]], str]:
    headers = ["routes", "pushed B, delta+VHDS", "pushed B, delta", "pushed B, SotW",
               "virtual host B", "ratio", "target", "layout ms"]
    rows = [[e["routes"], e["pushed"]["delta+vhds"], e["pushed"]["delta"], e["pushed"]["sotw"],
             e["vhost_bytes"], e["ratio"], e["target_ratio"], e["layout_s"]["median"] * 1000]
            for e in result["sizes"]]
    title = "vhds: the bytes one edited Route puts on an ADS stream"
    note = ("Bytes are exact (every response the stream state machine writes for the edit); "
            "the ratio is pushed bytes (delta+VHDS) over the Route's VirtualHost resource. "
            f"Layout: median of {result['config']['edits']} edits, once per snapshot.")
    return title, headers, rows, note


def _storm(result: dict[str, Any]) -> tuple[str, list[str], list[list[Any]], str]:
    headers = ["mode", "streams", "clusters", "recv p50 ms", "recv p99", "recv max",
               "all ACKs", "initial sync s", "RSS/stream KiB", "storm: all in sync ms",
               "storm: bytes re-sent (all)", "storm: server CPU s"]
    rows = []
    for m in result["modes"]:
        s, st = m["summary"], m.get("storm_summary") or {}
        rows.append([m["mode"], m["streams"], m["clusters"], s["receive_p50_ms"],
                     s["receive_p99_ms"], s["receive_max_ms"], s["ack_recorded_max_ms"],
                     m["initial_sync_s"], m["rss_per_stream_bytes"] / 1024,
                     (st.get("all_in_sync_ms") or {}).get("median"),
                     (st.get("bytes_all_streams") or {}).get("median"),
                     (st.get("server_cpu_s") or {}).get("median")])
    cfg = result["config"]
    title = (f"storm: fan-out at {', '.join(f'{n:,}' for n in cfg['stream_counts'])} streams, "
             "then reconnect storms")
    note = (f"{cfg['changes']} changes and {cfg['storms']} storms per row (medians). Storm: every "
            "stream and TCP connection dropped at once, all reconnect claiming what they held; "
            "from the first drop until the server saw every new stream in sync.")
    ratios = storm_ratios(result)
    if ratios:
        note += " Ratios (issue 18): " + "; ".join(ratios) + "."
    return title, headers, rows, note


def storm_ratios(result: dict[str, Any]) -> list[str]:
    """Issue 18's ratios from one storm run: a delta storm over a SotW one at each stream
    count (target <= 1.5), and the change's receive p99 at the most streams over that at the
    fewest, per mode (target <= 10 for 10x the streams)."""
    by: dict[tuple[str, int], dict[str, Any]] = {(m["mode"], m["streams"]): m
                                                 for m in result["modes"]}
    out = []
    for n in sorted({k[1] for k in by}):
        sotw, delta = by.get(("sotw", n)), by.get(("delta", n))
        if sotw and delta and sotw.get("storm_summary") and delta.get("storm_summary"):
            a = sotw["storm_summary"]["all_in_sync_ms"]["median"]
            b = delta["storm_summary"]["all_in_sync_ms"]["median"]
            if a and b:
                out.append(f"{n:,} streams: delta storm / SotW storm {b / a:.2f}x "
                           f"({b:,.0f} / {a:,.0f} ms)")
    for mode in sorted({k[0] for k in by}):
        counts = sorted(n for m, n in by if m == mode)
        if len(counts) > 1:
            low, high = by[(mode, counts[0])], by[(mode, counts[-1])]
            p_low = low["summary"]["receive_p99_ms"]
            p_high = high["summary"]["receive_p99_ms"]
            if p_low and p_high:
                out.append(f"{mode}: receive p99 at {counts[-1]:,} / at {counts[0]:,} streams "
                           f"{p_high / p_low:.1f}x ({p_high:,.0f} / {p_low:,.0f} ms)")
    return out


def _registration(result: dict[str, Any]) -> tuple[str, list[str], list[list[Any]], str]:
    headers = ["round", "first 20: median ms", "CPU ms", "last 20: median ms", "CPU ms",
               "ratio (wall)", "ratio (CPU)", "assignments bytes"]
    rows = [[i + 1, r["first_wall_ms"], r["first_cpu_ms"], r["last_wall_ms"], r["last_cpu_ms"],
             r["ratio_wall"], r["ratio_cpu"], r["assignment_bytes"]]
            for i, r in enumerate(result["rounds"])]
    cfg, s = result["config"], result["summary"]
    title = (f"registration: the first and the {cfg['registrations']:,}th registration of one "
             "Service")
    note = (f"register + apply_endpoints (registry, assignments, every view's snapshot, cache), "
            f"{cfg['services']} Services with subsets on one Gateway; medians of registrations "
            f"1-{cfg['window']} and of the last {cfg['window']}. Median ratio over rounds "
            f"{s['ratio_wall']:.2f}x wall, {s['ratio_cpu']:.2f}x CPU (target <= "
            f"{cfg['target_ratio']}).")
    return title, headers, rows, note


def _traffic(result: dict[str, Any]) -> tuple[str, list[str], list[list[Any]], str]:
    headers = ["mode", "engine", "edits", "requests", "non-2xx", "connection errors",
               "Envoy 5xx", "reloads applied"]
    rows = [[m["mode"], m["engine"], m["edits"], m["requests"], m["non_2xx"],
             m["connection_errors"], m["envoy_counters"].get("downstream_rq_5xx"),
             m["reloads_applied"]] for m in result["modes"]]
    cfg = result["config"]
    title = "traffic: steady load through a real Envoy during route and weight edits"
    note = (f"An edit every {cfg['interval_s']:g} s (3 of 4 change the v1/v2 weights, every "
            f"4th flips the target to another Service and the next flips it back); "
            f"{cfg['connections']} keep-alive connections. Goal: 0 non-2xx, 0 errors.")
    return title, headers, rows, note


def _sidebyside(result: dict[str, Any]) -> tuple[str, list[str], list[list[Any]], str]:
    headers = ["variant", "n", "start -> first 200, median ms", "p90", "max", "x static",
               "change -> served, median ms"]
    rows = []
    for v, s in result["summary"].items():
        change = result.get("change_summary", {}).get(v, {})
        rows.append([v, s["n"], s["median"], s["p90"], s["max"],
                     result["ratio_to_static"].get(v), change.get("median")])
    title = "sidebyside: Envoy start to first served request (same config)"
    note = ("static: the resources as a static bootstrap (no control plane); meshpilot: ADS, "
            "warm server; sovereign: REST/JSON polling (refresh "
            f"{result['config']['sovereign_refresh_s']:g} s).")
    if result.get("sovereign_error"):
        note += f" sovereign failed: {result['sovereign_error'][:300]}"
    return title, headers, rows, note


def _replicas(result: dict[str, Any]) -> tuple[str, list[str], list[list[Any]], str]:
    headers = ["what", "n", "median ms", "p90", "p99", "max"]
    labels = {"registration_single": "registration -> served, one process",
              "registration_replicas": "registration on A -> served via B",
              "failover": "kill -9 -> SYNCED on a survivor"}
    rows = [[labels[k], s["n"], s["median"], s["p90"], s["p99"], s["max"]]
            for k, s in result["summary"].items()]
    for f in result.get("fanout", []):
        rows.append([f"one edit to all {f['streams']:,} streams, {f['replicas']} replica(s)",
                     f["all_ms"]["n"], f["all_ms"]["median"], None, None, f["all_ms"]["max"]])
    cfg = result["config"]
    resent = sorted(set(result.get("failover_responses_resent", [])))
    title = f"replicas: {cfg['replicas']} replicas on one etcd, real Envoys"
    note = ("Registration: t0 before the POST, until a request through the Envoy is answered "
            "by the backend. Failover: the Envoy lists every replica; the one it is on is "
            f"killed; responses the survivor sent it: {resent} (versions are content hashes).")
    return title, headers, rows, note


_BUILDERS = {"convergence": _convergence, "prepush": _prepush, "fanout": _fanout,
             "translation": _translation, "policy_language": _policy_language,
             "incremental": _incremental, "storm": _storm, "traffic": _traffic,
             "sidebyside": _sidebyside, "replicas": _replicas, "registration": _registration,
             "vhds": _vhds}
_DIGITS = {"convergence": 1, "prepush": 1, "fanout": 1, "translation": 3, "policy_language": 3,
           "incremental": 1, "storm": 1, "traffic": 0, "sidebyside": 1, "replicas": 1,
           "registration": 2, "vhds": 2}


def _sections(results: dict[str, Any]) -> list[tuple[str, str, list[str], list[list[Any]], str]]:
    out = []
    for name in ("convergence", "prepush", "fanout", "translation"):
        if name in results:
            out.append((name, *_BUILDERS[name](results[name])))
    if results.get("translation", {}).get("services"):
        out.append(("policy_language", *_policy_language(results["translation"])))
    for name in ("incremental", "vhds", "storm", "traffic", "sidebyside", "replicas",
                 "registration"):
        if name in results:
            out.append((name, *_BUILDERS[name](results[name])))
    return out


def text_tables(results: dict[str, Any]) -> str:
    parts = []
    for name, title, headers, rows, _note in _sections(results):
        parts.append(title)
        parts.append(table(headers, rows, digits=_DIGITS[name]))
        parts.append("")
    parts.append(ANCHORS)
    return "\n".join(parts)


def markdown(results: dict[str, Any], plots: list[str] | tuple[str, ...] = ()) -> str:
    parts = ["# meshpilot benchmark report", ""]
    meta = next((r.get("meta") for r in results.values() if r.get("meta")), None)
    if meta:
        parts.append(f"Run {meta['started']} ({'quick' if meta['quick'] else 'full'}), "
                     f"Python {meta['python']}, {meta['cpus']} CPUs, kernel {meta['kernel']}. "
                     "The load generators share the CPUs with the server: expect noise.")
        parts.append("")
    for name, title, headers, rows, note in _sections(results):
        # The policy-language table is part of the translation scenario's result.
        run = (results.get(name) or results.get("translation") or {}).get("meta") or {}
        when = (f"Measured {run['started']} ({'quick' if run['quick'] else 'full'} run, "
                f"{run['duration_s']:.0f} s). " if run else "")
        parts += [f"## {title}", "", table(headers, rows, markdown=True, digits=_DIGITS[name]),
                  "", when + note, ""]
        if name == "fanout":
            parts += _fanout_details(results[name])
    if plots:
        parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    parts += [ANCHORS, ""]
    return "\n".join(parts)


def _fanout_details(result: dict[str, Any]) -> list[str]:
    lines = []
    for m in result["modes"]:
        trimmed = m.get("rss_per_stream_trimmed_bytes")
        lines.append(
            f"- {m['mode']}: server RSS {m['server_rss_before_connect'] / 2**20:.0f} MiB before "
            f"any stream, {m['server_rss_after_sync'] / 2**20:.0f} MiB with all in sync "
            f"({m['rss_per_stream_bytes'] / 1024:.0f} KiB/stream"
            + (f", {trimmed / 1024:.0f} KiB after malloc_trim" if trimmed else "")
            + f"; subscribed-name sets alone {m['stream_state_bytes_per_stream'] / 1024:.0f} "
            f"KiB/stream); initial sync of all streams {m['initial_sync_s']:.1f} s "
            f"(server CPU {m['initial_sync_server_cpu_s']:.1f} s).")
        profiled = [c for c in m["changes"] if c.get("profile")]
        if profiled:
            top = profiled[0]["profile"]["top"][:6]
            hot = "; ".join(
                f"`{t['function']}` {t['tottime_s']:.2f}s"
                + (f" (`{t['source']}`)" if t.get("source") and "(<" in t["function"] else "")
                for t in top)
            total = profiled[0]["profile"]["total_tottime_s"]
            lines.append(f"  - cProfile of one extra change (event-loop thread, {total:.1f}s "
                         f"busy under the profiler; top by own time): {hot}")
    by_mode = {m["mode"]: m["summary"] for m in result["modes"]}
    if "sotw" in by_mode and "delta" in by_mode:
        s, d = by_mode["sotw"], by_mode["delta"]

        def ratio(key: str) -> str:
            return f"{s[key] / d[key]:.1f}x" if s.get(key) and d.get(key) else "-"

        lines.append(f"- SotW / delta in this run: last stream received {ratio('receive_max_ms')},"
                     f" all ACKs recorded {ratio('ack_recorded_max_ms')}, server CPU "
                     f"{ratio('server_cpu_s')}, bytes per stream {ratio('bytes_per_stream')}.")
    lines.append("")
    return lines
