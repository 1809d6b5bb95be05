"""End to end: `meshpilot serve --xds-tls-cert/--xds-tls-key [--xds-client-ca]` and real Envoys
whose bootstraps come from `meshpilot bootstrap --xds-tls-ca [--xds-tls-cert --xds-tls-key]`.

- TLS: Envoy connects over TLS (SNI, CA-checked), receives its config and serves traffic;
- mutual TLS with the identity check: an Envoy proving `edge` with node cluster `edge` is
  served; the same certificate with node cluster `reviews` is refused (PERMISSION_DENIED in
  meshpilot's log, Envoy's control_plane.connected_state stays 0); an Envoy without a client
  certificate cannot connect at all.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support import (
    MeshpilotProcess,
    backend_of,
    eventually,
    listener_port,
    raw_policy,
    write_policy,
)
from tls_material import CA

pytestmark = pytest.mark.envoy

SERVER_NAME = "meshpilot.test"


@pytest.fixture
def material(tmp_path: Path) -> dict[str, Path]:
    certs = tmp_path / "certs"
    ca = CA("xds e2e CA")
    out = {"ca": ca.write(certs / "ca.pem")}
    out["server_cert"], out["server_key"] = ca.issue(SERVER_NAME).write(certs, "xds")
    out["edge_cert"], out["edge_key"] = ca.issue("edge").write(certs, "edge")  # CN + DNS SAN
    return out


def policy_with(tmp_path: Path, backend_port: int) -> Path:
    return write_policy(tmp_path, "edge.yaml",
                        raw_policy(backends={"v1": backend_port}, route_to="v1"))


def cli_bootstrap(mp: MeshpilotProcess, node_id: str, cluster: str, *extra: str) -> dict:
    """The bootstrap `meshpilot bootstrap` prints, as an operator would make it."""
    out = subprocess.run(
        [sys.executable, "-m", "meshpilot", "bootstrap", "--node-id", node_id,
         "--node-cluster", cluster, "--xds-address", f"127.0.0.1:{mp.xds_port}",
         "--admin-address", "127.0.0.1:0", "--state-dir", str(mp.state_dir), *extra],
        check=True, capture_output=True, text=True, timeout=30).stdout
    bootstrap = yaml.safe_load(out)
    # Envoy waits for its first CDS/LDS up to initial_fetch_timeout (15s) before /ready says
    # LIVE; an Envoy that is refused would make every test wait that long.
    for source in ("cds_config", "lds_config"):
        bootstrap["dynamic_resources"][source]["initial_fetch_timeout"] = "1s"
    return bootstrap


def test_envoy_gets_config_over_tls(tmp_path, material, echo_factory, envoy_factory,
                                    meshpilot_factory):
    v1 = echo_factory("v1")
    mp = meshpilot_factory(policy_with(tmp_path, v1.port), extra_args=(
        "--xds-tls-cert", str(material["server_cert"]),
        "--xds-tls-key", str(material["server_key"])))
    envoy = envoy_factory(cli_bootstrap(mp, "edge-0", "edge", "--xds-tls-ca",
                                        str(material["ca"]), "--xds-sni", SERVER_NAME),
                          ready_timeout=30)
    port = listener_port(envoy)
    assert eventually(lambda: backend_of(port) == "v1", what="traffic over TLS-delivered config")
    stats = envoy.stats()
    assert stats.get("control_plane.connected_state") == 1
    assert stats.get("cluster.meshpilot_xds.ssl.handshake", 0) >= 1
    assert [p["node_id"] for p in mp.proxies()] == ["edge-0"]
    # Wrong server name expected: Envoy refuses meshpilot's certificate.
    wrong = envoy_factory(cli_bootstrap(mp, "edge-1", "edge", "--xds-tls-ca",
                                        str(material["ca"]), "--xds-sni", "elsewhere.test"),
                          name="wrong-sni", ready_timeout=30)
    time.sleep(1.5)
    stats = wrong.stats()
    assert stats.get("control_plane.connected_state") == 0
    assert stats.get("cluster.meshpilot_xds.ssl.fail_verify_san", 0) >= 1, {
        k: v for k, v in stats.items() if "ssl" in k}


def test_mutual_tls_serves_only_the_proven_identity(tmp_path, material, echo_factory,
                                                    envoy_factory, meshpilot_factory):
    v1 = echo_factory("v1")
    mp = meshpilot_factory(policy_with(tmp_path, v1.port), extra_args=(
        "--xds-tls-cert", str(material["server_cert"]),
        "--xds-tls-key", str(material["server_key"]),
        "--xds-client-ca", str(material["ca"])))
    tls = ("--xds-tls-ca", str(material["ca"]), "--xds-sni", SERVER_NAME)
    client = ("--xds-tls-cert", str(material["edge_cert"]),
              "--xds-tls-key", str(material["edge_key"]))

    edge = envoy_factory(cli_bootstrap(mp, "edge-0", "edge", *tls, *client), name="edge",
                         ready_timeout=30)
    port = listener_port(edge)
    assert eventually(lambda: backend_of(port) == "v1", what="the edge Envoy to be served")
    assert edge.stats().get("control_plane.connected_state") == 1

    impostor = envoy_factory(cli_bootstrap(mp, "reviews-0", "reviews", *tls, *client),
                             name="impostor", ready_timeout=30)
    eventually(lambda: "PERMISSION_DENIED" in impostor.log_tail(200)
               or "refused: node 'reviews-0'" in mp.log_path.read_text(),
               what="the impostor to be refused")
    log = mp.log_path.read_text()
    refusal = next(line for line in log.splitlines() if "refused: node 'reviews-0'" in line)
    assert "view 'reviews'" in refusal and "DNS:edge" in refusal, refusal

    anonymous = envoy_factory(cli_bootstrap(mp, "edge-9", "edge", *tls), name="anonymous",
                              ready_timeout=30)
    time.sleep(1.5)  # several reconnect attempts
    assert impostor.stats().get("control_plane.connected_state") == 0
    assert anonymous.stats().get("control_plane.connected_state") == 0
    assert "http" not in impostor.listener_addresses()
    assert "http" not in anonymous.listener_addresses()
    # Only the edge Envoy is a connected proxy; the refused never got a view.
    assert [p["node_id"] for p in mp.proxies()] == ["edge-0"]
    assert "edge-9" not in mp.log_path.read_text()  # never got past the TLS handshake
    assert backend_of(port) == "v1"
