"""The compose stack's monitoring profile (compose/monitoring/), as files: Prometheus scrapes
exactly the replicas of compose/docker-compose.yml at the port their admin API binds, on a path
meshpilot serves without a token; Grafana's data source is that Prometheus service, its
dashboard provider reads the folder compose mounts, and every panel names that data source.
No image can be pulled here, so the stack itself is not run; tests/e2e/test_monitoring.py runs
the scrape config and the dashboard's queries through a real Prometheus against a live
meshpilot."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from meshpilot.runtime.admin import ACCESS
from meshpilot.runtime.admin_guard import Access

COMPOSE = Path(__file__).resolve().parents[2] / "compose"
MONITORING = COMPOSE / "monitoring"


def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> the repository path bind-mounted there (./ paths only)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out[target] = (COMPOSE / source).resolve()
    return out


def replicas() -> dict[str, int]:
    """Each meshpilot replica of the compose file and the port of its --admin-address."""
    found = {}
    for name, service in compose()["services"].items():
        command = [str(a) for a in service.get("command", [])]
        if command[:2] == ["meshpilot", "serve"]:
            (address,) = [a.split("=", 1)[1] for a in command if a.startswith("--admin-address=")]
            found[name] = int(address.rsplit(":", 1)[1])
    return found


def scrape_config() -> dict[str, Any]:
    return yaml.safe_load((MONITORING / "prometheus.yml").read_text())


def test_prometheus_scrapes_every_replicas_metrics_port() -> None:
    found = replicas()
    assert set(found) == {"meshpilot-1", "meshpilot-2", "meshpilot-3"}
    (job,) = scrape_config()["scrape_configs"]
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert sorted(targets) == sorted(f"{name}:{port}" for name, port in found.items())
    assert job.get("scheme", "http") == "http"
    # The path is one the admin API serves to anyone (a scraper has no token).
    assert ACCESS[job.get("metrics_path", "/metrics")] is Access.OPEN
    # The replica label is the service name (also its --replica-id), from the address.
    (relabel,) = job["relabel_configs"]
    assert relabel["target_label"] == "replica"
    assert re.fullmatch(relabel["regex"], "meshpilot-2:18001").group(1) == "meshpilot-2"


def test_the_monitoring_profile_mounts_the_shipped_files() -> None:
    services = compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    # Off by default: `docker compose up` starts the stack without them.
    assert prometheus["profiles"] == ["monitoring"] and grafana["profiles"] == ["monitoring"]
    assert [s for s, spec in services.items() if spec.get("profiles")] == ["prometheus",
                                                                           "grafana"]
    # Prometheus reads the shipped scrape config, on the replicas' network.
    (config,) = [a.split("=", 1)[1] for a in prometheus["command"]
                 if a.startswith("--config.file=")]
    assert mounts(prometheus)[config] == (MONITORING / "prometheus.yml").resolve()
    for name in replicas():
        assert set(prometheus["networks"]) & set(services[name]["networks"]), name
    # Published on loopback only, like the rest of the stack.
    for service in (prometheus, grafana):
        assert all(p.startswith("127.0.0.1:") for p in service["ports"]), service["ports"]
    # Grafana: provisioning and dashboards from the repository.
    grafana_mounts = mounts(grafana)
    provisioning = grafana_mounts["/etc/grafana/provisioning"]
    assert provisioning == (MONITORING / "grafana" / "provisioning").resolve()
    (datasource,) = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    prometheus_port = int(prometheus["ports"][0].rsplit(":", 1)[1])
    assert datasource["url"] == f"http://prometheus:{prometheus_port}"
    assert datasource["type"] == "prometheus"
    (provider,) = yaml.safe_load(
        (provisioning / "dashboards" / "meshpilot.yml").read_text())["providers"]
    folder = provider["options"]["path"]
    assert grafana_mounts[folder] == (MONITORING / "grafana" / "dashboards").resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(folder + "/")
    assert (grafana_mounts[folder] / home[len(folder) + 1:]).is_file()
    # Every panel and query of the dashboard names the provisioned data source.
    board = json.loads((MONITORING / "grafana" / "dashboards" / "meshpilot.json").read_text())
    assert board["uid"] == "meshpilot" and board["panels"]
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]
            assert "meshpilot_" in target["expr"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
