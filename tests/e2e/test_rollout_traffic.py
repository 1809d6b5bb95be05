"""End to end: staged rollouts with real Envoys whose stats reach meshpilot through Envoy's
metrics service (the bootstrap's stats sink).

- An edit that points the route at a backend refusing connections goes to the canary only; the
  canary's error rate, from its own stats, crosses the threshold and the rollout rolls back on its
  own; traffic sent meanwhile through every Envoy fails on the canary only (no more than the
  canary share of it), and the other Envoys never held the bad route (their config dumps).
- A good edit is promoted after the watch period (a `kind: Rollout` document says how).
- By hand: `meshpilot rollout promote` and `abort`; a canary's NACK rolls back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from support import backend_of, eventually, http_get, listener_port, raw_policy, write_atomically

from meshpilot.base.netutil import free_port

pytestmark = pytest.mark.envoy

FLUSH = 0.5  # the Envoys' stats flush interval


def rollouts(mp: Any) -> list[dict[str, Any]]:
    return mp.get_json("/debug/rollouts")["rollouts"]  # type: ignore[no-any-return]


def route_state(envoy: Any) -> tuple[str, str, str]:
    """(version, last update, the cluster `/` goes to) of the Envoy's route configuration."""
    (config,) = envoy.config_dump(resource="dynamic_route_configs")["configs"]
    (route,) = config["route_config"]["virtual_hosts"][0]["routes"]
    return config["version_info"], config["last_updated"], route["route"]["cluster"]


def fleet(mp: Any, envoy_factory: Any, count: int) -> tuple[list[Any], dict[str, int]]:
    envoys = [envoy_factory(mp.bootstrap(f"edge-{i}", "edge", delta=i % 2 == 1,
                                         stats_flush_interval=FLUSH),
                            name=f"edge-{i}", ready_timeout=30) for i in range(count)]
    ports = {f"edge-{i}": listener_port(envoy) for i, envoy in enumerate(envoys)}
    return envoys, ports


def cli(mp: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshpilot", *args, "--admin-address",
         f"127.0.0.1:{mp.admin_port}", "--state-dir", str(mp.state_dir)],
        capture_output=True, text=True, timeout=30, check=False)


def test_a_bad_backend_is_rolled_back_on_the_canaries_error_rate(
        tmp_path, echo_factory, meshpilot_factory, envoy_factory):
    good = echo_factory("good")
    refusing = free_port()  # nothing listens there: Envoy answers 503
    backends = {"good": good.port, "bad": refusing}
    policy = tmp_path / "policy"
    policy.mkdir()
    write_atomically(policy / "edge.yaml", raw_policy(backends=backends, route_to="good"))
    mp = meshpilot_factory(policy, extra_args=(
        "--rollout", "canary=25%,watch=10m,error-rate=20%,min-requests=8"))
    envoys, ports = fleet(mp, envoy_factory, 4)
    for port in ports.values():
        eventually(lambda p=port: backend_of(p) == "good", what="traffic to the good backend")
    # Every Envoy streams its stats to meshpilot.
    eventually(lambda: {r["node"] for r in mp.get_json("/debug/metrics/envoys")["request_rates"]}
               == set(ports), what="every Envoy's stats through the metrics service")
    before = {f"edge-{i}": route_state(envoy) for i, envoy in enumerate(envoys)}
    assert rollouts(mp) == []  # the first load is not rolled out

    write_atomically(policy / "edge.yaml", raw_policy(backends=backends, route_to="bad"))
    (rollout,) = eventually(lambda: rollouts(mp) or None, what="the rollout to start")
    assert rollout["view"] == "edge" and rollout["total"] == 4 and rollout["threshold"] == 0.2
    (canary,) = rollout["canary"]
    assert rollout["edit"] is not None
    by_node = dict(zip(ports, envoys, strict=True))
    eventually(lambda: route_state(by_node[canary])[2] == "bad",
               what="the canary to take the edit")

    # Traffic through every Envoy, round robin, until the rollout ends.
    sent = {node: 0 for node in ports}
    failed = {node: 0 for node in ports}

    def send_round() -> str | None:
        for node, port in ports.items():
            status, _, _ = http_get(f"http://127.0.0.1:{port}/")
            sent[node] += 1
            failed[node] += status != 200
        state = rollouts(mp)[0]
        return None if state["state"] == "watching" else state["state"]

    assert eventually(send_round, timeout=60, interval=0.02,
                      what="the rollout to end on its own") == "rolled_back"
    (ended,) = rollouts(mp)
    assert "canary error rate" in ended["reason"] and ended["error_rate"] > 0.2
    assert failed[canary] > 0
    assert {n: f for n, f in failed.items() if n != canary} == {
        n: 0 for n in ports if n != canary}
    assert sum(failed.values()) <= sum(sent.values()) / len(ports)  # the canary share

    # The canary is back on the good route; the others never held the bad one.
    eventually(lambda: route_state(by_node[canary])[2] == "good",
               what="the canary to be rolled back")
    for node, envoy in by_node.items():
        if node != canary:
            assert route_state(envoy) == before[node], node
    for port in ports.values():
        assert backend_of(port) == "good"
    assert mp.metric("meshpilot_rollouts_rolled_back_total") == 1
    assert mp.metric("meshpilot_rollouts_in_progress") == 0
    out = cli(mp, "status")
    assert f"rollout {ended['id']} of view edge: ROLLED BACK" in out.stdout, out
    out = cli(mp, "rollout", "status")
    assert out.returncode == 0 and ended["id"] in out.stdout and "rolled_back" in out.stdout


def test_a_good_edit_is_promoted_after_the_watch(tmp_path, echo_factory, meshpilot_factory,
                                                 envoy_factory):
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    backends = {"v1": v1.port, "v2": v2.port}
    policy = tmp_path / "policy"
    policy.mkdir()
    write_atomically(policy / "edge.yaml", raw_policy(backends=backends, route_to="v1"))
    # Said by the policy this time (the serving policy's Rollout governs the next edit).
    write_atomically(policy / "rollout.yaml", "kind: Rollout\nname: staged\ncanary: 34\n"
                                              "watch: 3s\nviews: [edge]\n")
    mp = meshpilot_factory(policy)
    _, ports = fleet(mp, envoy_factory, 3)
    for port in ports.values():
        eventually(lambda p=port: backend_of(p) == "v1", what="traffic to v1")

    write_atomically(policy / "edge.yaml", raw_policy(backends=backends, route_to="v2"))
    done = eventually(lambda: (r := rollouts(mp)) and r[0]["state"] != "watching" and r[0],
                      timeout=30, what="the rollout to end")
    assert done["state"] == "promoted" and done["reason"].startswith("watched 3s"), done
    assert len(done["canary"]) == 2 and done["total"] == 3
    for port in ports.values():
        eventually(lambda p=port: backend_of(p) == "v2", what="every Envoy on v2")
    assert mp.metric("meshpilot_rollouts_promoted_total") == 1
    assert mp.metric("meshpilot_rollouts_started_total") == 1


NACKED_CLUSTER = """
  - name: broken
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: broken
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: not-an-ip, port_value: 1}}}}]}]"""


def test_promote_abort_by_hand_and_a_canary_nack(tmp_path, echo_factory, meshpilot_factory,
                                                 envoy_factory):
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    backends = {"v1": v1.port, "v2": v2.port}
    policy = tmp_path / "policy"
    policy.mkdir()
    write_atomically(policy / "edge.yaml", raw_policy(backends=backends, route_to="v1"))
    # No pre-push check, so that an Envoy gets to refuse something.
    mp = meshpilot_factory(policy, extra_args=("--rollout", "canary=33%,watch=10m",
                                               "--no-prepush-check"))
    _, ports = fleet(mp, envoy_factory, 3)
    for port in ports.values():
        eventually(lambda p=port: backend_of(p) == "v1", what="traffic to v1")

    def started(count: int) -> dict[str, Any]:
        found = eventually(lambda: (r := rollouts(mp)) and len(r) == count and r[0],
                           what=f"rollout {count}")
        assert found["state"] == "watching"
        return found  # type: ignore[no-any-return]

    # Promote by hand: the canaries first, then everyone.
    write_atomically(policy / "edge.yaml", raw_policy(backends=backends, route_to="v2"))
    first = started(1)
    canary = set(first["canary"])
    assert len(canary) == 1
    for node, port in ports.items():
        want = "v2" if node in canary else "v1"
        eventually(lambda p=port, w=want: backend_of(p) == w, what=f"{node} on {want}")
    # meshpilot's own config dump of a node shows the snapshot that node follows.
    for node in ports:
        dump = mp.get_json(f"/debug/config_dump?node={node}")
        (routes,) = dump["resources"]["routes"]
        cluster = routes["virtual_hosts"][0]["routes"][0]["route"]["cluster"]
        assert cluster == ("v2" if node in canary else "v1"), node
        assert dump["version"] == (first["candidate"] if node in canary else first["baseline"])
    out = cli(mp, "rollout", "promote")
    assert out.returncode == 0 and "promoted by hand" in out.stdout, out
    for port in ports.values():
        eventually(lambda p=port: backend_of(p) == "v2", what="every Envoy on v2")

    # Abort by hand: the canaries go back to what everyone else serves.
    write_atomically(policy / "edge.yaml", raw_policy(backends=backends, route_to="v1"))
    second = started(2)
    (canary_node,) = second["canary"]
    eventually(lambda: backend_of(ports[canary_node]) == "v1", what="the canary on v1")
    out = cli(mp, "rollout", "abort", "--view", "edge")
    assert out.returncode == 0 and "aborted by hand" in out.stdout, out
    eventually(lambda: backend_of(ports[canary_node]) == "v2", what="the canary back on v2")
    assert all(backend_of(port) == "v2" for port in ports.values())
    out = cli(mp, "rollout", "abort")  # nothing being watched now
    assert out.returncode != 0 and "no rollout is being watched" in out.stderr, out

    # A canary's NACK rolls back at once; the other Envoys are never sent the refused cluster.
    write_atomically(policy / "edge.yaml", raw_policy(backends=backends, route_to="v2",
                                                      extra_clusters=NACKED_CLUSTER))
    third = eventually(lambda: (r := rollouts(mp)) and len(r) == 3 and
                       r[0]["state"] != "watching" and r[0], timeout=30,
                       what="the NACKed rollout to end")
    assert third["state"] == "rolled_back", third
    assert third["reason"].startswith(f"canary {third['canary'][0]} rejected clusters:"), third
    assert "not-an-ip" in third["reason"]
    proxies = {p["node_id"]: p for p in mp.proxies()}
    for node, proxy in proxies.items():
        nacks = sum(t["nacks"] for t in proxy["types"].values())
        assert (nacks > 0) == (node in third["canary"]), (node, json.dumps(proxy)[:500])
    assert mp.metric("meshpilot_rollouts_rolled_back_total") == 1
    assert mp.metric("meshpilot_rollouts_aborted_total") == 1
    assert mp.metric("meshpilot_rollouts_promoted_total") == 1
