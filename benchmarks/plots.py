"""PNG plots of the results (matplotlib, the `bench` extra), written next to report.md.

- `convergence_cdf.png`: save-to-all-Envoys-serving latency, one CDF per variant;
- `fanout_receive_cdf.png`: per-stream time to receive a one-cluster change, one CDF per mode
  (and per stream count, from `storm`), every timed change pooled;
- `translation_scaling.png`: time vs size, cold (`translation`) and one-edit reload
  (`incremental`), log-log, with issue 18's target (1 % of the cold load).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _cdf(ax: Any, values: list[float], label: str) -> None:
    values = sorted(values)
    if not values:
        return
    n = len(values)
    ax.step(values, [(i + 1) / n for i in range(n)], where="post", label=f"{label} (n={n})")


def write_all(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    conv = results.get("convergence")
    if conv:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for v in conv["variants"]:
            _cdf(ax, v["samples_ms"], v["name"])
        ax.set_xscale("log")
        ax.set_xlabel("save -> last Envoy serves the edit (ms, log scale)")
        ax.set_ylabel("fraction of edits")
        ax.set_title(f"convergence: {conv['config']['envoys']} real Envoys")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        save(fig, "convergence_cdf.png")

    runs = []
    for key in ("fanout", "storm"):
        for m in (results.get(key) or {}).get("modes", []):
            samples = [ms for c in m["changes"] if not c.get("profiled")
                       for ms in c["samples"]["receive_ms"]]
            runs.append((f"{key}: {m['mode']}, {m['streams']:,} streams, "
                         f"{m['clusters']:,} clusters", samples))
    if runs:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for label, samples in runs:
            _cdf(ax, samples, label)
        ax.set_xlabel("cache.set -> stream received the changed cluster (ms)")
        ax.set_ylabel("fraction of stream-changes")
        ax.set_title("fan-out: time to receive a one-cluster change")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        save(fig, "fanout_receive_cdf.png")

    trans, inc = results.get("translation"), results.get("incremental")
    if trans or inc:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        if trans:
            sizes = trans.get("sizes", [])
            if sizes:
                xs = [e["clusters"] for e in sizes]
                for key, label in (("total_s", "raw clusters: cold total"),
                                   ("load_s", "raw clusters: load"),
                                   ("translate_s", "raw clusters: translate")):
                    ax.plot(xs, [e["summary"][key]["median"] * 1000 for e in sizes], "o-",
                            label=label)
            services = trans.get("services", [])
            if services:
                xs = [e["services"] for e in services]
                ax.plot(xs, [e["summary"]["total_s"]["median"] * 1000 for e in services],
                        "s-", label="Services+Routes: cold total")
        if inc:
            xs = [e["services"] for e in inc["sizes"]]
            for kind in ("route", "service"):
                ax.plot(xs, [e["kinds"][kind]["summary"]["median"] * 1000
                             for e in inc["sizes"]],
                        "D-", label=f"Services+Routes: one {kind} edited, reload")
            ax.plot(xs, [e["cold_total_median_s"] * 10 for e in inc["sizes"]], "r--",
                    label="issue 18 target: 1 % of the cold load")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("size (clusters, or Services each with a Route)")
        ax.set_ylabel("ms (median)")
        ax.set_title("translation scaling")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "translation_scaling.png")
    return written
