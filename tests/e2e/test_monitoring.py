"""The compose stack's Prometheus scrape config and Grafana dashboard (compose/monitoring/)
against the real thing: `promtool check config` accepts the shipped scrape config; a real
Prometheus (Debian's `prometheus`) running it, its targets pointed at a live `meshpilot serve`
with a real Envoy and one edit, scrapes it; and every query of the Grafana dashboard is valid
PromQL there, names only metrics meshpilot's /metrics declares, answers with series wherever
meshpilot has samples, and groups by labels those series really carry (the relabelled
`replica` included). Skipped with the reason without Prometheus, except under CI."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import backend_of, eventually, http_get, listener_port, raw_policy, write_atomically

from meshpilot.base.netutil import free_port

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(240)]

MONITORING = Path(__file__).resolve().parents[2] / "compose" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "meshpilot.json"
METRIC = re.compile(r"\bmeshpilot_[a-z_]+\b")
GROUPING = re.compile(r"\bby \(([^)]*)\)")


def binary(name: str) -> str:
    found = os.environ.get(f"MESHPILOT_{name.upper()}") or shutil.which(name)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but no {name} on PATH (scripts/dashboard-tools.sh installs it)")
        print(f"no {name} on PATH (apt-get install prometheus): skipping")
        pytest.skip(f"no {name} on PATH (apt-get install prometheus)")
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard, with Grafana's rate interval
    variable as Grafana would fill it for a short range."""
    board = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"].replace("$__rate_interval", "30s"))
            for panel in board["panels"] for target in panel["targets"]]


def declared(metrics_text: str) -> tuple[set[str], dict[str, list[dict[str, str]]]]:
    """(every sample name /metrics declares, sample name -> the label sets it has now)."""
    names: set[str] = set()
    samples: dict[str, list[dict[str, str]]] = {}
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names.update({f"{family}_bucket", f"{family}_sum", f"{family}_count"}
                         if kind == "histogram" else {family})
        elif line and not line.startswith("#"):
            series = line.rsplit(" ", 1)[0]
            name, _, labels = series.partition("{")
            samples.setdefault(name, []).append(
                dict(re.findall(r'(\w+)="([^"]*)"', labels)))
    return names, samples


class Prometheus:
    def __init__(self, config: Path, work: Path):
        self.port = free_port()
        self.log_path = work / "prometheus.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary("prometheus"), f"--config.file={config}",
                 f"--storage.tsdb.path={work / 'prometheus-data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def api(self, path: str, **query: str) -> Any:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}:\n"
                                 f"{self.log_path.read_text(errors='replace')[-3000:]}")
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        status, _, body = http_get(url, timeout=10)
        data = json.loads(body) if body else {}
        assert status == 200 and data.get("status") == "success", (url, status, body[:500])
        return data["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def test_promtool_accepts_the_shipped_scrape_config() -> None:
    out = subprocess.run([binary("promtool"), "check", "config", str(MONITORING / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and "SUCCESS" in out.stdout + out.stderr, out


def test_the_dashboards_queries_run_on_a_real_prometheus_scraping_meshpilot(
        tmp_path, echo_factory, meshpilot_factory, envoy_factory) -> None:
    binary("prometheus")
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    backends = {"v1": v1.port, "v2": v2.port}
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    write_atomically(policy_dir / "edge.yaml", raw_policy(backends=backends, route_to="v1"))
    mp = meshpilot_factory(policy_dir)
    envoy = envoy_factory(mp.bootstrap("edge-0", "edge"), ready_timeout=30)
    port = listener_port(envoy)
    eventually(lambda: backend_of(port) == "v1", what="traffic to v1")
    write_atomically(policy_dir / "edge.yaml", raw_policy(backends=backends, route_to="v2"))
    eventually(lambda: mp.metric("meshpilot_edit_convergence_seconds_count") == 1, timeout=20,
               what="the edit to converge")

    # The shipped config, only its targets moved to this meshpilot (and a quicker scrape).
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{mp.admin_port}"]}]
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    prometheus = Prometheus(config_path, tmp_path)
    try:
        eventually(lambda: prometheus.query('up{job="meshpilot"} == 1'), timeout=60,
                   interval=0.5, what="Prometheus scraping meshpilot")
        # Enough samples for rate() over the dashboard's window.
        eventually(lambda: prometheus.query("count_over_time(meshpilot_views[30s]) >= 4"),
                   timeout=60, interval=0.5, what="four scrapes")
        names, samples = declared(http_get(f"{mp.admin}/metrics")[2].decode())
        queries = dashboard_queries()
        assert len(queries) >= 10
        answered = 0
        for title, expr in queries:
            used = set(METRIC.findall(expr))
            assert used and used <= names, (title, used - names)
            result = prometheus.query(expr)  # valid PromQL, or api() fails
            if not all(samples.get(name) for name in used):
                print("no samples yet:", title, expr)
                continue  # nothing recorded yet (no NACK, no discovery source): no series
            assert result, (title, expr)
            answered += 1
            grouping = {label.strip() for group in GROUPING.findall(expr)
                        for label in group.split(",") if label.strip()} - {"le"}
            for series in result:
                missing = {label for label in grouping if not series["metric"].get(label)}
                assert not missing, (title, expr, series)
            if "replica" in grouping:
                assert {s["metric"]["replica"] for s in result} == {"127.0.0.1"}
        assert answered >= 10, answered
        # The panels that matter most show the edit that happened.
        edits = prometheus.query("sum(meshpilot_edit_convergence_seconds_count)")
        assert float(edits[0]["value"][1]) == 1
        assert float(prometheus.query("sum(meshpilot_xds_connected_streams)")[0]["value"][1]) == 1
    finally:
        prometheus.stop()
