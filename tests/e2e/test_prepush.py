"""End to end: nothing Envoy would refuse is pushed, and a NACK that still happens is contained.

Real `meshpilot serve` (the pre-push check on, as by default, or off), real Envoys, real traffic:
- with the check, an edit only Envoy refuses never reaches an Envoy (its stats count no
  rejected update, meshpilot counts no NACK), the policy is refused at the line of the resource,
  and the last good config keeps serving;
- without it, Envoy's NACK holds back only the refused resource: the rest of the same edit
  reaches every Envoy, the refused version is never sent again, status names its line.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import (
    MeshpilotProcess,
    backend_of,
    eventually,
    listener_port,
    raw_policy,
    write_atomically,
)

from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

MODES = [pytest.param(False, id="sotw"), pytest.param(True, id="delta")]

# Valid for the schema, refused by Envoy: a STATIC cluster whose address is not an IP.
BROKEN = """
  - name: broken
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: broken
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: not-an-ip, port_value: 80}}}}]}]"""
REJECTED_STATS = ("cluster_manager.cds.update_rejected", "listener_manager.lds.update_rejected")


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def rejected_updates(envoy: EnvoyProcess) -> int:
    stats = envoy.stats()
    return sum(int(v) for k, v in stats.items()
               if k in REJECTED_STATS or (k.startswith("http.") and k.endswith(
                   ".rds.routes.update_rejected")))


def start(policy_dir: Path, text: str, meshpilot_factory: Callable[..., MeshpilotProcess],
          envoy_factory: Callable[..., EnvoyProcess], *, envoys: int, delta: bool,
          extra_args: tuple[str, ...] = ()) -> tuple[MeshpilotProcess, list[EnvoyProcess],
                                                     list[int]]:
    write_atomically(policy_dir / "edge.yaml", text)
    mp = meshpilot_factory(policy_dir, extra_args=extra_args)
    started = [envoy_factory(mp.bootstrap(f"edge-{i}", "edge", delta=delta),
                             name=f"envoy-{i}", ready_timeout=30) for i in range(envoys)]
    ports = [listener_port(envoy) for envoy in started]
    for port in ports:
        eventually(lambda p=port: backend_of(p) == "v1", what="traffic to reach v1")
    return mp, started, ports


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policy"
    d.mkdir()
    return d


@pytest.mark.parametrize("delta", MODES)
def test_an_edit_only_envoy_refuses_never_reaches_an_envoy(
        delta, policy_dir, echo_factory, meshpilot_factory, envoy_factory):
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    backends = {"v1": v1.port, "v2": v2.port}
    mp, envoys, ports = start(policy_dir, raw_policy(backends=backends, route_to="v1"),
                              meshpilot_factory, envoy_factory, envoys=2, delta=delta)
    loads = mp.metric("meshpilot_policy_loads_total", result="ok")

    # One edit: a cluster Envoy refuses, and a route change that on its own would be fine.
    bad = raw_policy(backends=backends, route_to="v2", extra_clusters=BROKEN)
    write_atomically(policy_dir / "edge.yaml", bad)
    policy = eventually(lambda: (p := mp.status()["policy"]) and p["errors"] and p,
                        timeout=15, what="the edit to be refused")
    assert not policy["ok"]
    (error,) = policy["errors"]
    # At the file and line of the resource, with Envoy's own message.
    assert error.startswith(f"edge.yaml:{line_of(bad, '- name: broken')}:"), error
    assert "EnvoyResources e2e: clusters[" in error, error
    assert "Cluster 'broken'" in error and "malformed IP address: not-an-ip" in error, error
    # The whole edit is refused: the last good config keeps serving, nothing reached an Envoy.
    for port in ports:
        assert backend_of(port) == "v1"
    for envoy in envoys:
        assert rejected_updates(envoy) == 0, envoy.stats()
        assert "broken" not in str(envoy.config_dump())
    assert mp.metric("meshpilot_xds_nacks_total") == 0
    assert mp.metric("meshpilot_policy_loads_total", result="ok") == loads
    for proxy in mp.proxies():
        assert {t["status"] for t in proxy["types"].values()} == {"SYNCED"}, proxy

    prepush = mp.status()["prepush"]
    assert prepush["enabled"] and prepush["refused"] >= 1
    assert prepush["envoy_version"] and prepush["connected_envoy_versions"] == [
        prepush["envoy_version"]]
    assert prepush["differing_envoy_versions"] == []

    # The fixed edit goes out, checked, and still no NACK anywhere.
    write_atomically(policy_dir / "edge.yaml", raw_policy(backends=backends, route_to="v2"))
    for port in ports:
        eventually(lambda p=port: backend_of(p) == "v2", timeout=15, what="the fixed edit")
    assert mp.status()["policy"]["ok"]
    assert mp.metric("meshpilot_xds_nacks_total") == 0
    for envoy in envoys:
        assert rejected_updates(envoy) == 0


@pytest.mark.parametrize("delta", MODES)
def test_without_the_check_a_nack_holds_back_only_the_refused_resource(
        delta, policy_dir, echo_factory, meshpilot_factory, envoy_factory):
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    backends = {"v1": v1.port, "v2": v2.port}
    mp, envoys, ports = start(policy_dir, raw_policy(backends=backends, route_to="v1"),
                              meshpilot_factory, envoy_factory, envoys=2, delta=delta,
                              extra_args=("--no-prepush-check",))
    assert mp.status()["prepush"]["enabled"] is False

    # One edit: a cluster Envoy refuses and a route change. The route change reaches every
    # Envoy; the refused cluster is held back (each Envoy keeps what it had: nothing).
    bad = raw_policy(backends=backends, route_to="v2", extra_clusters=BROKEN)
    write_atomically(policy_dir / "edge.yaml", bad)
    for port in ports:
        eventually(lambda p=port: backend_of(p) == "v2", timeout=15,
                   what="the rest of the edit to reach every Envoy")
    assert mp.status()["policy"]["ok"]  # meshpilot itself found nothing wrong

    def held() -> list[dict]:
        found = [h for p in mp.proxies() if p["types"]["clusters"]["status"] == "HELD"
                 for h in p["types"]["clusters"]["held_back"]]
        return found if len(found) == len(envoys) else []

    held_back = eventually(held, timeout=15, what="every Envoy to hold the cluster back")
    assert {h["name"] for h in held_back} == {"broken"}
    assert all("not-an-ip" in h["message"] for h in held_back)
    assert {h["origin"] for h in held_back} == {
        f"edge.yaml:{line_of(bad, '- name: broken')}:5: EnvoyResources e2e: clusters[2]"}
    for proxy in mp.proxies():
        for short in ("endpoints", "listeners", "routes"):
            assert proxy["types"][short]["status"] == "SYNCED", (short, proxy)
    # Each Envoy was sent the edit at once and refused it once; the refused version is not
    # sent again, to them or to any stream of the server: an Envoy connecting now never
    # receives it.
    assert mp.metric("meshpilot_xds_nacks_total", type="clusters") == len(envoys)
    assert sum(rejected_updates(envoy) for envoy in envoys) == len(envoys)
    late = envoy_factory(mp.bootstrap("edge-late", "edge", delta=delta), name="envoy-late",
                         ready_timeout=30)
    eventually(lambda: backend_of(listener_port(late)) == "v2", what="the late Envoy")
    assert rejected_updates(late) == 0
    envoys.append(late)
    for envoy in envoys:
        assert "broken" not in str(envoy.config_dump())
    nacks = mp.metric("meshpilot_xds_nacks_total")
    assert nacks == len(envoys) - 1

    # `meshpilot status` names the line, and says the fleet is not clean.
    out = subprocess.run(
        [sys.executable, "-m", "meshpilot", "status", "--admin-address",
         f"127.0.0.1:{mp.admin_port}", "--state-dir", str(mp.state_dir)],
        capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 1, out
    assert "pre-push check: off" in out.stdout
    assert (f"held back clusters 'broken' (edge.yaml:{line_of(bad, '- name: broken')}:5"
            in out.stdout), out.stdout

    # Another edit (the refused cluster unchanged) converges and never carries it.
    write_atomically(policy_dir / "edge.yaml",
                     raw_policy(backends=backends, route_to="v1", extra_clusters=BROKEN))
    for port in [*ports, listener_port(late)]:
        eventually(lambda p=port: backend_of(p) == "v1", timeout=15, what="the next edit")
    assert mp.metric("meshpilot_xds_nacks_total") == nacks
    # Its input changed (fixed): it is sent, accepted, nothing is held any more.
    fixed = BROKEN.replace("not-an-ip", "127.0.0.1")
    write_atomically(policy_dir / "edge.yaml",
                     raw_policy(backends=backends, route_to="v1", extra_clusters=fixed))
    eventually(lambda: all(p["types"]["clusters"]["status"] == "SYNCED"
                           and "broken" in str(e.config_dump())
                           for p, e in zip(mp.proxies(), envoys, strict=True)),
               timeout=15, what="the fixed cluster to be accepted by every Envoy")
    assert mp.metric("meshpilot_xds_nacks_total") == nacks
