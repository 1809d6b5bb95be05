"""Discovery end to end: `meshpilot serve`, a real Envoy and real traffic.

- A self-registered echo backend receives traffic through a gateway route; when its TTL lapses
  (no more heartbeats) it stops receiving it; both pushes are EDS only (meshpilot's
  `meshpilot_xds_responses_total{type=...}`: endpoints grows, clusters/listeners/routes don't).
- Docker: a real engine, if one is reachable (skipped otherwise, and only then): a labelled
  container becomes an instance, and leaves within a second of being stopped.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from support import (
    MeshpilotProcess,
    backend_of,
    docker_client,
    docker_echo_container,
    eventually,
    http_get,
    write_policy,
)

from meshpilot.base.netutil import free_port
from meshpilot.discovery.docker_source import instance_id

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


def post(url: str, body: dict, token: str) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def responses(mp: MeshpilotProcess) -> dict[str, float]:
    return {t: mp.metric("meshpilot_xds_responses_total", type=t) for t in TYPES}


def synced(mp: MeshpilotProcess) -> bool:
    proxies = mp.proxies()
    return len(proxies) == 1 and all(
        proxies[0]["types"].get(t, {}).get("status") == "SYNCED" for t in TYPES)


def listening(port: int) -> bool:
    try:
        http_get(f"http://127.0.0.1:{port}/", timeout=2)
        return True
    except OSError:
        return False


def start_gateway(tmp_path: Path, meshpilot_factory, envoy_factory,
                  extra_args: tuple[str, ...] = (),
                  empty: bool = True) -> tuple[MeshpilotProcess, int]:
    port = free_port()
    policy = write_policy(tmp_path, "edge.yaml", POLICY.format(port=port))
    mp = meshpilot_factory(policy, extra_args=extra_args)
    envoy_factory(mp.bootstrap("edge-1", "edge"), ready_timeout=30)
    eventually(lambda: listening(port), timeout=15, what="the gateway listener")
    if empty:  # no endpoints yet: the (EDS) cluster exists, the route answers 503
        eventually(lambda: http_get(f"http://127.0.0.1:{port}/")[0] == 503, timeout=15,
                   what="the gateway to answer 503 without endpoints")
    eventually(lambda: synced(mp), timeout=10, what="Envoy to ACK every type")
    return mp, port


def test_a_registered_instance_gets_traffic_until_its_ttl_lapses(tmp_path, echo_factory,
                                                                  envoy_factory,
                                                                  meshpilot_factory):
    echo = echo_factory("registered")
    mp, port = start_gateway(tmp_path, meshpilot_factory, envoy_factory)
    before = responses(mp)

    # What an instance is given: a registration token for its own Service.
    token = subprocess.run([sys.executable, "-m", "meshpilot", "token", "create",
                            "registration", "api", "--state-dir", str(mp.state_dir)],
                           capture_output=True, text=True, check=True).stdout.strip()
    status, body = post(f"{mp.admin}/v1/registrations",
                        {"service": "api", "address": f"127.0.0.1:{echo.port}",
                         "labels": {"version": "v1"}, "ttl": "1s"}, token)
    assert status == 201, body
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(0.25):
            http_get(f"{mp.admin}/v1/registrations/{body['id']}", mp.admin_headers(token),
                     method="PUT", timeout=2)

    beats = threading.Thread(target=heartbeat, daemon=True)
    beats.start()
    try:
        eventually(lambda: backend_of(port) == "registered", timeout=10,
                   what="traffic to the registered instance")
        time.sleep(1.5)  # longer than the TTL: the heartbeats keep it
        assert backend_of(port) == "registered"
        eventually(lambda: synced(mp), timeout=10, what="Envoy to ACK the push")
        after = responses(mp)
        assert after["endpoints"] > before["endpoints"], (before, after)
        for t in ("clusters", "listeners", "routes"):
            assert after[t] == before[t], (t, before, after)
    finally:
        stop.set()
        beats.join(timeout=5)

    # No more heartbeats: within the TTL plus a sweep, Envoy stops sending it traffic.
    lapsed = time.monotonic()
    eventually(lambda: http_get(f"http://127.0.0.1:{port}/")[0] == 503, timeout=5,
               what="the instance to leave after its TTL")
    assert time.monotonic() - lapsed < 3.0
    eventually(lambda: synced(mp), timeout=10, what="Envoy to ACK the removal")
    final = responses(mp)
    assert final["endpoints"] > after["endpoints"]
    for t in ("clusters", "listeners", "routes"):
        assert final[t] == before[t], (t, before, final)
    assert mp.metric("meshpilot_policy_loads_total") == 1  # never re-loaded


def test_a_large_service_is_patched_by_registrations_with_traffic(tmp_path, echo_factory,
                                                                 envoy_factory,
                                                                 meshpilot_factory):
    """A Service past `VERSIONED_BY_PARTS` endpoints: its assignment is versioned by its parts
    and patched at each registration (`translators/assignments.py`). A real Envoy is sent the
    patches, EDS only: one more instance gets traffic, and once removed gets none."""
    from meshpilot.translators.assignments import VERSIONED_BY_PARTS

    count = VERSIONED_BY_PARTS + 6
    echoes = [echo_factory(f"api-{i}") for i in range(count)]
    late = echo_factory("late")
    mp, port = start_gateway(tmp_path, meshpilot_factory, envoy_factory)
    token = subprocess.run([sys.executable, "-m", "meshpilot", "token", "create",
                            "registration", "api", "--state-dir", str(mp.state_dir)],
                           capture_output=True, text=True, check=True).stdout.strip()
    for echo in echoes:
        status, body = post(f"{mp.admin}/v1/registrations",
                            {"service": "api", "address": f"127.0.0.1:{echo.port}"}, token)
        assert status == 201, body

    def backends(requests: int) -> set[str | None]:
        return {backend_of(port) for _ in range(requests)}

    eventually(lambda: len(backends(4 * count) - {None}) > count // 2, timeout=30,
               what="traffic spread over the registered instances")
    eventually(lambda: synced(mp), timeout=15, what="Envoy to ACK the registrations")
    before = responses(mp)
    status, body = post(f"{mp.admin}/v1/registrations",
                        {"service": "api", "address": f"127.0.0.1:{late.port}"}, token)
    assert status == 201, body
    eventually(lambda: "late" in backends(3 * count), timeout=30,
               what="traffic to the instance registered last")
    eventually(lambda: synced(mp), timeout=15, what="Envoy to ACK the patch")
    status = http_get(f"{mp.admin}/v1/registrations/{body['id']}", mp.admin_headers(token),
                      method="DELETE", timeout=5)[0]
    assert status in (200, 204)
    eventually(lambda: synced(mp) and responses(mp)["endpoints"] >= before["endpoints"] + 2,
               timeout=15, what="Envoy to ACK the removal")
    assert "late" not in backends(3 * count)
    assert None not in backends(count)  # every other instance still serves
    after = responses(mp)
    for t in ("clusters", "listeners", "routes"):
        assert after[t] == before[t], (t, before, after)
    assert mp.metric("meshpilot_policy_loads_total") == 1  # never re-loaded


# ---- Docker, with a real engine --------------------------------------------------------------

def test_docker_containers_are_discovered_and_leave_when_stopped(tmp_path, envoy_factory,
                                                                  meshpilot_factory):
    client = docker_client(timeout=5)
    # A name of its own: another checkout's test run on the same engine may run an "api"
    # container too, and this test must tell them apart.
    name = f"container-{uuid.uuid4().hex[:8]}"
    container = docker_echo_container(client, tmp_path, name, service="api",
                                      labels={"version": "v1"})
    try:
        mp, port = start_gateway(tmp_path, meshpilot_factory, envoy_factory,
                                 extra_args=("--docker",), empty=False)
        eventually(lambda: backend_of(port) == name, timeout=15,
                   what="traffic to the container through Envoy")
        # Only this container: other labelled containers on this engine (tests/e2e/test_compose.py
        # running in parallel, other checkouts' test runs) are discovered too.
        ours = instance_id(container.id)
        found = [i for i in mp.get_json("/debug/discovery")["instances"] if i["id"] == ours]
        assert [(i["service"], i["source"], i["labels"]) for i in found] == [
            ("api", "docker", {"version": "v1"})]
        container.stop(timeout=1)
        stopped = time.monotonic()
        eventually(lambda: not [i for i in mp.get_json("/debug/discovery")["instances"]
                                if i["id"] == ours], timeout=5,
                   interval=0.02, what="the stopped container to leave")
        assert time.monotonic() - stopped < 1.0
        others = [i for i in mp.get_json("/debug/discovery")["instances"]
                  if i["service"] == "api"]
        if not others:  # alone on the engine: no endpoint is left at all
            eventually(lambda: http_get(f"http://127.0.0.1:{port}/")[0] == 503, timeout=5,
                       what="the gateway to stop routing to it")
        else:
            eventually(lambda: all(backend_of(port) != name for _ in range(10)), timeout=5,
                       what="the gateway to stop routing to it")
    finally:
        with contextlib.suppress(Exception):  # removed already (--rm)
            container.remove(force=True)
        client.close()
