"""Several `meshpilot serve` replicas sharing their state through a real etcd, real Envoys,
real traffic (issue 16; docs/operations.md, "Running replicas").

- A registration made on replica A serves traffic through an Envoy connected to replica B;
  deregistered on B, it stops; with a TTL and no heartbeat it expires, once, in etcd, even after
  the replica that took it was killed.
- kill -9 the replica an Envoy is connected to, three times (restarting it each time), traffic
  running: not one request fails, the Envoy reconnects to a survivor and is sent nothing it
  already has (versions are content hashes: the survivor's response counters do not move),
  and no registration is lost.
- `meshpilot status` on any replica lists every Envoy of the fleet, with its replica.
- etcd stopped: replicas keep serving the last known state, registration writes are refused
  with 503 and the reason; etcd back: replicas follow again.
- A replica without the fleet's store key refuses to start and says what to copy.
- Docker discovery (a real engine; skipped without one) runs on one elected replica, whose
  findings reach an Envoy on another; kill -9 it and the other takes over.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support import (
    EtcdProcess,
    MeshpilotProcess,
    backend_of,
    docker_client,
    docker_echo_container,
    eventually,
    http_get,
    write_policy,
)

from meshpilot.base.netutil import free_port
from meshpilot.local.bootstrap import render_bootstrap

pytestmark = pytest.mark.envoy

POLICY = """
kind: Service
name: api
---
kind: Gateway
name: edge
listeners: [{{name: http, port: {port}, address: 127.0.0.1}}]
---
kind: Route
name: shop
gateway: edge
rules:
  - backends: [{{service: api}}]
"""

TYPES = ("clusters", "endpoints", "listeners", "routes")


def call(url: str, method: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            text = r.read()
            return r.status, json.loads(text) if text else {}
    except urllib.error.HTTPError as e:
        text = e.read()
        return e.code, json.loads(text) if text else {}


class Fleet:
    """Replicas of one policy folder on one etcd, each with its own state folder; the store
    key is one file all of them are given (--store-key), as on a volume only they mount."""

    def __init__(self, tmp_path: Path, etcd: EtcdProcess, meshpilot_factory, policy: Path):
        self.tmp_path, self.etcd, self.factory, self.policy = tmp_path, etcd, meshpilot_factory, policy
        self.store_key = tmp_path / "store.key"
        self.replicas: dict[str, MeshpilotProcess] = {}

    def start(self, name: str, *extra: str) -> MeshpilotProcess:
        mp = self.factory(self.policy, extra_args=(
            "--store", self.etcd.url, "--store-key", str(self.store_key),
            "--replica-id", name, *extra))
        self.replicas[name] = mp
        return mp


def bootstrap(node_id: str, replicas: list[MeshpilotProcess]) -> dict:
    """An Envoy of view `edge` listing `replicas` (what `meshpilot bootstrap --xds-address A
    --xds-address B` writes), trusting the shared CA, with a node token from the shared key."""
    first = replicas[0]
    return render_bootstrap(node_id=node_id, node_cluster="edge",
                            xds_addresses=[("127.0.0.1", mp.xds_port) for mp in replicas],
                            admin_address=("127.0.0.1", 0),
                            xds_tls_ca=str(first.state_dir / "ca.crt"), xds_sni="meshpilot",
                            xds_token=first.node_token("edge"))


def registration_token(mp: MeshpilotProcess, service: str = "api") -> str:
    return subprocess.run([sys.executable, "-m", "meshpilot", "token", "create", "registration",
                           service, "--state-dir", str(mp.state_dir)],
                          capture_output=True, text=True, check=True).stdout.strip()


def connected_to(mp: MeshpilotProcess, node_id: str) -> dict | None:
    """The node's status as `mp` holds it locally (replica's own connection), if synced."""
    for p in mp.proxies():
        if p["node_id"] == node_id and p.get("replica") == mp_name(mp) and all(
                p["types"].get(t, {}).get("status") == "SYNCED" for t in TYPES):
            return p
    return None


def mp_name(mp: MeshpilotProcess) -> str:
    args = list(mp.extra_args)
    return args[args.index("--replica-id") + 1]


def responses(mp: MeshpilotProcess) -> float:
    return sum(mp.metric("meshpilot_xds_responses_total", type=t) for t in TYPES)


@pytest.fixture
def gateway_policy(tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    return write_policy(tmp_path, "edge.yaml", POLICY.format(port=port)), port


def test_a_registration_on_one_replica_reaches_an_envoy_on_another(
        tmp_path, etcd, meshpilot_factory, envoy_factory, echo_factory, gateway_policy):
    policy, port = gateway_policy
    fleet = Fleet(tmp_path, etcd, meshpilot_factory, policy)
    a, b = fleet.start("a"), fleet.start("b")
    # The replicas share one CA and one token key: B's files are the ones A published.
    assert (a.state_dir / "ca.crt").read_bytes() == (b.state_dir / "ca.crt").read_bytes()
    assert (a.state_dir / "token.key").read_bytes() == (b.state_dir / "token.key").read_bytes()
    envoy_factory(bootstrap("edge-1", [b]), ready_timeout=30)
    eventually(lambda: connected_to(b, "edge-1"), timeout=20, what="the Envoy synced on B")
    assert http_get(f"http://127.0.0.1:{port}/")[0] == 503  # no endpoint yet

    echo = echo_factory("registered")
    token = registration_token(a)
    status, body = call(f"{a.admin}/v1/registrations", "POST", token,
                        {"service": "api", "address": f"127.0.0.1:{echo.port}", "ttl": "30s"})
    assert status == 201, body
    eventually(lambda: backend_of(port) == "registered", timeout=10,
               what="traffic through the Envoy on B to the backend registered on A")
    # B lists it, and says it is the same registration (one id, fleet-wide).
    listed = eventually(lambda: b.get_json("/v1/registrations")["registrations"], timeout=5)
    assert [r["id"] for r in listed] == [body["id"]]
    # The same address registered again on B is the same registration (200, same id).
    status, again = call(f"{b.admin}/v1/registrations", "POST", token,
                         {"service": "api", "address": f"127.0.0.1:{echo.port}", "ttl": "30s"})
    assert status == 200 and again["id"] == body["id"], again

    # Deregistered on B (it was made on A): gone everywhere.
    status, _ = call(f"{b.admin}/v1/registrations/{body['id']}", "DELETE", token)
    assert status == 204
    eventually(lambda: http_get(f"http://127.0.0.1:{port}/")[0] == 503, timeout=10,
               what="the gateway to answer 503 once deregistered")
    eventually(lambda: a.get_json("/v1/registrations")["registrations"] == [], timeout=5,
               what="A to forget the registration deleted on B")

    # A TTL with no heartbeat, taken by A, which is then killed: it still expires, in etcd.
    status, short = call(f"{a.admin}/v1/registrations", "POST", token,
                         {"service": "api", "address": f"127.0.0.1:{echo.port}", "ttl": "2s"})
    assert status == 201, short
    eventually(lambda: backend_of(port) == "registered", timeout=10, what="traffic again")
    a.stop(signal.SIGKILL)
    eventually(lambda: http_get(f"http://127.0.0.1:{port}/")[0] == 503, timeout=15,
               what="the lapsed registration to leave the Envoy on B")
    assert b.get_json("/v1/registrations")["registrations"] == []
    assert b.log_tail(200).count(f"registration {short['id']} of api") == 1


def test_kill_9_the_replica_an_envoy_uses_while_traffic_runs(
        tmp_path, etcd, meshpilot_factory, envoy_factory, echo_factory, gateway_policy):
    policy, port = gateway_policy
    fleet = Fleet(tmp_path, etcd, meshpilot_factory, policy)
    replicas = [fleet.start("a"), fleet.start("b"), fleet.start("c")]
    echo = echo_factory("api")
    token = registration_token(replicas[0])
    status, body = call(f"{replicas[0].admin}/v1/registrations", "POST", token,
                        {"service": "api", "address": f"127.0.0.1:{echo.port}", "ttl": "3s"})
    assert status == 201, body
    envoy = envoy_factory(bootstrap("edge-1", replicas), ready_timeout=30)
    eventually(lambda: backend_of(port) == "api", timeout=20, what="traffic to the backend")

    # Heartbeats go to whichever replica is alive, as a client with several addresses would.
    stop = threading.Event()
    failures: list[str] = []
    sent = [0]

    def heartbeat() -> None:
        while not stop.wait(0.3):
            for mp in fleet.replicas.values():
                try:
                    if call(f"{mp.admin}/v1/registrations/{body['id']}", "PUT", token)[0] == 200:
                        break
                except OSError:
                    continue

    def traffic() -> None:
        deadline = time.monotonic() + 120  # bounded, whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                code = http_get(f"http://127.0.0.1:{port}/", timeout=5)[0]
            except OSError as e:
                code = str(e)
            sent[0] += 1
            if code != 200:
                failures.append(str(code))
            time.sleep(0.01)

    threads = [threading.Thread(target=heartbeat, daemon=True),
               threading.Thread(target=traffic, daemon=True)]
    for t in threads:
        t.start()
    try:
        for _round in range(3):  # three crashes of whichever replica the Envoy is on
            alive = list(fleet.replicas.values())
            current = eventually(
                lambda alive=alive: next((mp for mp in alive if connected_to(mp, "edge-1")),
                                         None),
                timeout=20, what="the replica the Envoy is synced on")
            survivors = [mp for mp in alive if mp is not current]
            before = {mp_name(mp): responses(mp) for mp in survivors}
            current.stop(signal.SIGKILL)
            moved_to = eventually(
                lambda survivors=survivors: next(
                    (mp for mp in survivors if connected_to(mp, "edge-1")), None),
                timeout=10, what="the Envoy synced on a surviving replica")
            # Reconnected with every version it holds: the survivor sent it nothing.
            assert responses(moved_to) == before[mp_name(moved_to)], \
                f"{mp_name(moved_to)} sent responses to an Envoy that had everything"
            # Every survivor lists it, on the replica it moved to only, once the dead
            # replica's lease (and its entries) lapsed.
            target = mp_name(moved_to)
            for mp in survivors:
                eventually(lambda mp=mp, to=target: [
                    p["replica"] for p in mp.proxies() if p["node_id"] == "edge-1"] == [to],
                    timeout=15, what="the fleet's status to show the Envoy where it moved")
            current.start()  # back, on its ports: the next round may pick it again
        time.sleep(1.0)  # traffic after the last move, and past the registration's TTL
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert sent[0] > 100
    assert failures == [], f"{len(failures)} of {sent[0]} requests failed: {failures[:5]}"
    for mp in fleet.replicas.values():  # no registration lost, on any replica
        assert [r["id"] for r in mp.get_json("/v1/registrations")["registrations"]] == \
            [body["id"]]
    assert envoy.stats().get("control_plane.connected_state") == 1


def test_status_on_any_replica_lists_every_envoy(tmp_path, etcd, meshpilot_factory,
                                                envoy_factory, gateway_policy):
    policy, _ = gateway_policy
    fleet = Fleet(tmp_path, etcd, meshpilot_factory, policy)
    a, b = fleet.start("a"), fleet.start("b")
    envoy_factory(bootstrap("edge-on-a", [a]), ready_timeout=30, name="envoy-a")
    envoy_factory(bootstrap("edge-on-b", [b]), ready_timeout=30, name="envoy-b")
    eventually(lambda: connected_to(a, "edge-on-a") and connected_to(b, "edge-on-b"),
               timeout=20, what="both Envoys synced")
    for mp in (a, b):
        def fleet_status(mp: MeshpilotProcess = mp) -> dict:
            out = subprocess.run(
                [sys.executable, "-m", "meshpilot", "status", "--json", "--admin-address",
                 f"127.0.0.1:{mp.admin_port}", "--state-dir", str(mp.state_dir)],
                capture_output=True, text=True, check=True).stdout
            found = {p["node_id"]: p for p in json.loads(out)["proxies"]}
            assert set(found) == {"edge-on-a", "edge-on-b"}, found
            assert all(t["status"] == "SYNCED" for p in found.values()
                       for t in p["types"].values()), found
            return found

        found = eventually(fleet_status, timeout=10, what=f"the fleet's status on {mp_name(mp)}")
        assert found["edge-on-a"]["replica"] == "a" and found["edge-on-b"]["replica"] == "b"
        assert found["edge-on-a"]["types"]["clusters"]["version_acked"] == \
            found["edge-on-b"]["types"]["clusters"]["version_acked"]  # same input, same version
        text = subprocess.run(
            [sys.executable, "-m", "meshpilot", "status", "--admin-address",
             f"127.0.0.1:{mp.admin_port}", "--state-dir", str(mp.state_dir)],
            capture_output=True, text=True).stdout
        assert f"replica {mp_name(mp)}, store {etcd.url}" in text
        assert "edge-on-a" in text and "edge-on-b" in text
    # A replica that stops takes its Envoys out of the fleet's status.
    a.stop()
    eventually(lambda: [p["node_id"] for p in b.proxies()] == ["edge-on-b"], timeout=10,
               what="A's Envoy to leave the status once A stopped")


def test_etcd_down_keeps_serving_and_refuses_writes(tmp_path, etcd, meshpilot_factory,
                                                    envoy_factory, echo_factory,
                                                    gateway_policy):
    policy, port = gateway_policy
    fleet = Fleet(tmp_path, etcd, meshpilot_factory, policy)
    a, b = fleet.start("a"), fleet.start("b")
    echo = echo_factory("api")
    token = registration_token(a)
    status, body = call(f"{a.admin}/v1/registrations", "POST", token,
                        {"service": "api", "address": f"127.0.0.1:{echo.port}", "ttl": "60s"})
    assert status == 201, body
    envoy_factory(bootstrap("edge-1", [b]), ready_timeout=30)
    eventually(lambda: backend_of(port) == "api", timeout=20, what="traffic")

    # Traffic runs through the whole outage, B's restart and etcd's return: none may fail.
    stop, failures, sent = threading.Event(), [], [0]

    def traffic() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                name = backend_of(port)
            except OSError as e:
                name = str(e)
            sent[0] += 1
            if name not in ("api", "second"):
                failures.append(name)
            time.sleep(0.01)

    runner = threading.Thread(target=traffic, daemon=True)
    runner.start()
    etcd.stop()
    # Writes that need the store are refused, with the reason and what still works.
    status, refused = call(f"{b.admin}/v1/registrations", "POST", token,
                           {"service": "api", "address": "127.0.0.2:9", "ttl": "60s"})
    assert status == 503, refused
    assert "unreachable" in refused["error"] and "last known" in refused["error"], refused
    # The last known state keeps serving: traffic, the registration, a policy reload.
    assert backend_of(port) == "api"
    assert [r["id"] for r in b.get_json("/v1/registrations")["registrations"]] == [body["id"]]
    assert b.status()["store"]["reachable"] is False
    fleet_status = b.get_json("/debug/proxies")
    assert "only this replica's Envoys" in fleet_status["store_error"]
    # A replica started while etcd is down, with its credentials from an earlier start:
    # it serves too (the last known state), rather than refusing to start.
    b.stop()
    b.start()
    assert backend_of(port) == "api"

    # etcd back (same data): the replicas follow again; a new registration reaches B's Envoy.
    etcd.start()
    second = echo_factory("second")
    eventually(lambda: call(f"{a.admin}/v1/registrations", "POST", token,
                            {"service": "api", "address": f"127.0.0.1:{second.port}",
                             "ttl": "60s"})[0] == 201, timeout=20, what="writes accepted again")
    # Two steps, so that a failure says which link is slow: B's mirror of the store, then
    # B's push to its Envoy. Both wait long: a loaded 2-core machine takes seconds for each.
    eventually(lambda: len(b.get_json("/v1/registrations")["registrations"]) == 2, timeout=30,
               what="B mirroring the registration made after etcd returned")
    eventually(lambda: {backend_of(port) for _ in range(10)} == {"api", "second"}, timeout=30,
               what="both backends through B's Envoy")
    stop.set()
    runner.join(10)
    assert sent[0] > 50 and failures == [], f"{len(failures)} of {sent[0]} failed: {failures[:5]}"


def test_a_replica_without_the_store_key_refuses_to_start(tmp_path, etcd, meshpilot_factory,
                                                          gateway_policy):
    policy, _ = gateway_policy
    fleet = Fleet(tmp_path, etcd, meshpilot_factory, policy)
    a = fleet.start("a")
    own_key = tmp_path / "other-state"
    result = subprocess.run(
        [sys.executable, "-m", "meshpilot", "serve", "--policy", str(policy),
         "--xds-address", f"127.0.0.1:{free_port()}", "--admin-address",
         f"127.0.0.1:{free_port()}", "--state-dir", str(own_key), "--store", etcd.url],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "does not open the store's state/files" in result.stderr, result.stderr[-2000:]
    assert "copy that one here" in result.stderr
    assert not (own_key / "store.key").exists()  # the useless key made meanwhile is removed
    # With a copy of the fleet's key it starts, on the fleet's CA.
    shutil.copy(fleet.store_key, own_key / "store.key")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshpilot", "serve", "--policy", str(policy),
         "--xds-address", f"127.0.0.1:{free_port()}", "--admin-address", f"127.0.0.1:{port}",
         "--state-dir", str(own_key), "--store", etcd.url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: http_get(f"http://127.0.0.1:{port}/healthz", timeout=1)[0] == 200,
                   timeout=60, what="the replica with the fleet's key")
        assert (own_key / "ca.key").read_bytes() == (a.state_dir / "ca.key").read_bytes()
    finally:
        proc.terminate()
        proc.wait(10)


DOCKER_POLICY = """
kind: Service
name: replicated-docker
---
kind: Gateway
name: edge
listeners: [{{name: http, port: {port}, address: 127.0.0.1}}]
---
kind: Route
name: shop
gateway: edge
rules:
  - backends: [{{service: replicated-docker}}]
"""


def test_docker_discovery_runs_on_one_replica_and_moves_when_it_dies(
        tmp_path, etcd, meshpilot_factory, envoy_factory):
    client = docker_client(timeout=5)  # skips without an engine (except under CI)
    port = free_port()
    policy = write_policy(tmp_path, "edge.yaml", DOCKER_POLICY.format(port=port))
    fleet = Fleet(tmp_path, etcd, meshpilot_factory, policy)
    containers = [docker_echo_container(client, tmp_path, "first",
                                        service="replicated-docker")]
    try:
        a, b = fleet.start("a", "--docker"), fleet.start("b", "--docker")

        def elected() -> MeshpilotProcess | None:
            states = {mp_name(mp): mp.status()["docker_discovery"] for mp in (a, b)
                      if mp.proc and mp.proc.poll() is None}
            leaders = [name for name, s in states.items() if s["elected"]]
            holders = {s["holder"] for s in states.values()}
            if len(leaders) == 1 and holders == set(leaders):
                return fleet.replicas[leaders[0]]
            return None

        leader = eventually(elected, timeout=15, what="exactly one replica running Docker")
        follower = b if leader is a else a
        # The Envoy is on the replica that does not watch Docker: it gets what the other found.
        envoy_factory(bootstrap("edge-1", [follower]), ready_timeout=30)
        eventually(lambda: backend_of(port) == "first", timeout=20,
                   what="traffic to the container the other replica found")
        found = [i for i in follower.get_json("/debug/discovery")["instances"]
                 if i["service"] == "replicated-docker"]
        assert [i["source"] for i in found] == ["docker"]

        leader.stop(signal.SIGKILL)
        eventually(lambda: follower.status()["docker_discovery"]["elected"], timeout=15,
                   what="the surviving replica to take Docker discovery over")
        assert backend_of(port) == "first"  # the takeover's resync keeps what runs
        # What changes now is seen by the new leader: a new container, the old one stopped.
        containers.append(docker_echo_container(client, tmp_path, "second",
                                                service="replicated-docker"))
        containers[0].stop(timeout=1)
        eventually(lambda: {backend_of(port) for _ in range(5)} == {"second"}, timeout=20,
                   what="traffic to the container started after the takeover only")
    finally:
        for container in containers:
            with contextlib.suppress(Exception):  # removed already (--rm)
                container.remove(force=True)
        client.close()


def apply_policy(folder: Path, etcd: EtcdProcess, store_key: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meshpilot", "apply", str(folder), "--store",
                           etcd.url, "--store-key", str(store_key)],
                          capture_output=True, text=True, timeout=60)


STATIC_POLICY = """
kind: Service
name: api
endpoints: ["127.0.0.1:{backend}"]
---
kind: Gateway
name: edge
listeners: [{{name: http, port: {port}, address: 127.0.0.1}}]
---
kind: Route
name: shop
gateway: edge
rules:
  - backends: [{{service: api}}]
"""


def test_replicas_serve_the_policy_revision_meshpilot_apply_stored(
        tmp_path, etcd, meshpilot_factory, envoy_factory, echo_factory):
    one, two = echo_factory("one"), echo_factory("two")
    port = free_port()
    source = tmp_path / "source"
    source.mkdir()
    (source / "edge.yaml").write_text(STATIC_POLICY.format(backend=one.port, port=port))
    # The first replica makes the store key; `apply` needs it (it seals the policy too).
    fleet = Fleet(tmp_path, etcd, meshpilot_factory, tmp_path / "unused")
    a = fleet.start("a", "--policy", str(source))
    done = apply_policy(source, etcd, fleet.store_key)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("applied revision "), done.stdout
    revision = done.stdout.split()[2]
    again = apply_policy(source, etcd, fleet.store_key)
    assert again.stdout.startswith(f"unchanged: revision {revision} "), again.stdout
    a.stop()

    # Two replicas with no policy folder of their own: both serve the stored revision.
    b = meshpilot_factory(None, extra_args=("--store", etcd.url, "--store-key",
                                            str(fleet.store_key), "--replica-id", "b",
                                            "--policy-from-store"))
    c = meshpilot_factory(None, extra_args=("--store", etcd.url, "--store-key",
                                            str(fleet.store_key), "--replica-id", "c",
                                            "--policy-from-store"))
    for mp in (b, c):
        assert mp.status()["policy_revision"] == revision
    envoy_factory(bootstrap("edge-1", [b]), ready_timeout=30)
    eventually(lambda: backend_of(port) == "one", timeout=20, what="the stored policy served")
    # Same input, same versions, on every replica (C builds the view when asked for it).
    c.get_json("/debug/config_dump?view=edge")
    assert b.status()["views"]["edge"] == c.status()["views"]["edge"] is not None
    # The policy (it could hold keys) is sealed in etcd.
    from meshpilot.store.etcd import EtcdStore

    async def raw() -> bytes:
        store = EtcdStore(etcd.url)
        try:
            entry = await store.get("policy/current")
            assert entry is not None
            return entry.value
        finally:
            await store.close()

    import asyncio
    assert b"kind: Gateway" not in asyncio.run(raw())

    # A broken edit is refused by apply and stores nothing; a good one reaches every replica.
    (source / "edge.yaml").write_text("kind: Route\nname: [broken\n")
    refused = apply_policy(source, etcd, fleet.store_key)
    assert refused.returncode == 1 and "edge.yaml:" in refused.stderr, refused.stderr
    assert b.status()["policy_revision"] == revision
    (source / "edge.yaml").write_text(STATIC_POLICY.format(backend=two.port, port=port))
    done = apply_policy(source, etcd, fleet.store_key)
    assert done.returncode == 0, done.stderr
    new = done.stdout.split()[2]
    assert new != revision
    eventually(lambda: backend_of(port) == "two", timeout=20,
               what="the new revision served through B's Envoy")
    eventually(lambda: c.status()["policy_revision"] == new, timeout=10,
               what="C to follow the new revision")
    # Without a store key, apply refuses and says where the key comes from.
    missing = apply_policy(source, etcd, tmp_path / "nowhere.key")
    assert missing.returncode == 2 and "made by the first replica" in missing.stderr
