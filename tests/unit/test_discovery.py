"""Discovery, without a network: the endpoint registry (TTLs on an injected clock), the
registration body's validation, the EDS fast path of a Translation, and the Docker source
against a fake Docker client implementing the few SDK calls it uses."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from samples import DISCOVERY_POLICY
from support import eventually

from meshpilot.base import types
from meshpilot.discovery.docker_source import DockerSource, instance_of
from meshpilot.discovery.http_api import Invalid, parse_registration
from meshpilot.discovery.registry import EndpointRegistry, LimitExceeded, Limits
from meshpilot.inputs.loader import load_policy
from meshpilot.ir.model import Endpoint
from meshpilot.runtime.controller import Controller
from meshpilot.translators import Translation
from meshpilot.xds.cache import SnapshotCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- the registry -------------------------------------------------------------------------------


def test_registry_ttl_expiry_heartbeat_and_change_callbacks() -> None:
    clock = Clock()
    registry = EndpointRegistry(clock)
    seen: list[frozenset[str]] = []
    registry.on_change(seen.append)

    a, created = registry.register("reviews", "10.0.0.1", 80, {"version": "v2"}, ttl=1.0)
    assert created and a.expires_at == 1001.0 and a.labels == (("version", "v2"),)
    b, _ = registry.register("ratings", "10.0.0.2", 80, ttl=3.0)
    assert seen == [frozenset({"reviews"}), frozenset({"ratings"})]

    # Registering the same service and address again keeps the id; a TTL-only change is no
    # endpoint change, so nobody is told.
    again, created = registry.register("reviews", "10.0.0.1", 80, {"version": "v2"}, ttl=5.0)
    assert not created and again.id == a.id and len(seen) == 2

    clock.now += 4.0
    registry.renew(b.id)  # heartbeat: 3s from now
    assert registry.expire() == []  # a: 5s TTL from 1000 -> 1005
    clock.now += 1.5
    assert [i.id for i in registry.expire()] == [a.id]
    assert seen[-1] == frozenset({"reviews"})
    assert registry.endpoints() == {"ratings": (Endpoint("10.0.0.2", 80),)}
    clock.now += 2.0
    assert [i.id for i in registry.expire()] == [b.id]
    assert registry.endpoints() == {}
    with pytest.raises(KeyError):
        registry.renew(b.id)


def test_an_instance_says_its_locality_with_the_topology_labels() -> None:
    registry = EndpointRegistry(Clock())
    registry.register("reviews", "10.0.0.1", 80, {"topology.kubernetes.io/region": "us-east",
                                                  "topology.kubernetes.io/zone": "us-east-1a",
                                                  "topology.istio.io/subzone": "rack-3",
                                                  "version": "v1"})
    registry.register("reviews", "10.0.0.2", 80, {"topology.kubernetes.io/zone": "b"})
    registry.register("reviews", "10.0.0.3", 80, {"version": "v2"})
    by_host = {e.host: e for e in registry.endpoints()["reviews"]}
    east = by_host["10.0.0.1"]
    assert (east.region, east.zone, east.sub_zone) == ("us-east", "us-east-1a", "rack-3")
    assert ("version", "v1") in east.labels  # the labels stay: failover_priority reads them
    assert (by_host["10.0.0.2"].region, by_host["10.0.0.2"].zone) == (None, "b")
    assert (by_host["10.0.0.3"].region, by_host["10.0.0.3"].zone,
            by_host["10.0.0.3"].sub_zone) == (None, None, None)


def test_registry_sources_resync_and_dedupe() -> None:
    registry = EndpointRegistry(Clock())
    reg, _ = registry.register("reviews", "10.0.0.1", 80)
    registry.register("reviews", "10.0.0.1", 80, source="docker", id="docker:x")
    # One address found by two sources is one endpoint.
    assert registry.endpoints() == {"reviews": (Endpoint("10.0.0.1", 80),)}
    assert registry.counts() == {"registration": 1, "docker": 1}
    seen: list[frozenset[str]] = []
    registry.on_change(seen.append)
    other, _ = EndpointRegistry().register("ratings", "10.0.0.9", 81, source="docker",
                                           id="docker:y")
    registry.replace_source("docker", [other])
    assert seen == [frozenset({"reviews", "ratings"})]
    assert {i.id for i in registry.instances()} == {reg.id, "docker:y"}
    assert registry.remove(reg.id) is not None and registry.remove(reg.id) is None
    with pytest.raises(ValueError):
        registry.register("reviews", "not-an-ip", 80)
    assert registry.register("v6", "[::1]", 80)[0].address == "[::1]:80"


def test_registry_is_thread_safe() -> None:
    registry = EndpointRegistry()
    changes: list[frozenset[str]] = []
    registry.on_change(changes.append)

    def work(n: int) -> None:
        for i in range(200):
            instance, _ = registry.register(f"s{n}", f"10.{n}.{i // 250}.{i % 250}", 80)
            if i % 2:
                registry.remove(instance.id)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {s: len(e) for s, e in registry.endpoints().items()} == {f"s{n}": 100 for n in range(4)}
    assert len(changes) == 4 * 300


# ---- the registration body ----------------------------------------------------------------------


def test_per_service_limits_bound_count_and_rate_for_limited_sources_only() -> None:
    clock = Clock()
    registry = EndpointRegistry(clock=clock, limits={
        "registration": Limits(max_instances=3, rate=2.0, burst=2)})
    registry.register("a", "10.0.0.1", 80)
    registry.register("a", "10.0.0.2", 80)
    with pytest.raises(LimitExceeded) as too_fast:
        registry.register("a", "10.0.0.3", 80)
    assert too_fast.value.retry_after == pytest.approx(0.5)
    registry.register("b", "10.0.0.3", 80)  # another Service has a bucket of its own
    registry.register("a", "10.0.0.1", 80, labels={"v": "2"})  # an update is not a new one
    clock.now += 0.5
    registry.register("a", "10.0.0.3", 80)
    clock.now += 10
    with pytest.raises(LimitExceeded) as too_many:
        registry.register("a", "10.0.0.4", 80)
    assert too_many.value.retry_after is None and "3 endpoints" in str(too_many.value)
    (gone,) = [i for i in registry.instances("a") if i.host == "10.0.0.2"]
    registry.remove(gone.id)
    registry.register("a", "10.0.0.4", 80)  # room again
    for n in range(10):  # Docker reports what runs: never limited
        registry.register("a", f"10.1.0.{n}", 80, source="docker")
    assert len(registry.instances("a")) == 13


def test_the_address_index_follows_every_kind_of_change() -> None:
    clock = Clock()
    registry = EndpointRegistry(clock=clock)
    first, created = registry.register("a", "10.0.0.1", 80, ttl=5)
    assert created
    again, created = registry.register("a", "10.0.0.1", 80, ttl=5)
    assert (again.id, created) == (first.id, False)
    clock.now += 6
    assert [i.id for i in registry.expire()] == [first.id]
    third, created = registry.register("a", "10.0.0.1", 80)
    assert created and third.id != first.id
    registry.replace_source("registration", [])
    assert registry.instances() == ()
    _, created = registry.register("a", "10.0.0.1", 80)
    assert created


def test_expiry_skips_renewed_and_removed_instances() -> None:
    clock = Clock()
    registry = EndpointRegistry(clock=clock)
    kept, _ = registry.register("a", "10.0.0.1", 80, ttl=5)
    removed, _ = registry.register("a", "10.0.0.2", 80, ttl=5)
    lapsing, _ = registry.register("a", "10.0.0.3", 80, ttl=5)
    clock.now += 4
    registry.renew(kept.id)
    registry.remove(removed.id)
    clock.now += 2
    assert [i.id for i in registry.expire()] == [lapsing.id]
    clock.now += 4
    assert [i.id for i in registry.expire()] == [kept.id]
    assert registry.expire() == []


def test_registration_body_is_parsed() -> None:
    assert parse_registration({"service": "reviews", "address": "10.0.0.7:9080",
                               "labels": {"version": "v2"}, "ttl": "30s"}) == (
        "reviews", "10.0.0.7", 9080, {"version": "v2"}, 30.0)
    assert parse_registration({"service": "r", "address": "[::1]:80"})[1:3] == ("::1", 80)
    assert parse_registration({"service": "r", "address": "10.0.0.1:1", "ttl": 2})[4] == 2.0


@pytest.mark.parametrize(("body", "message"), [
    ([], "expected a JSON object"),
    ({"service": "r", "address": "10.0.0.1:80", "tll": "1s"}, "unknown field(s) 'tll'"),
    ({"address": "10.0.0.1:80"}, "service: expected a service name"),
    ({"service": "a/b", "address": "10.0.0.1:80"}, "service: expected a service name"),
    ({"service": "r"}, "address: expected \"IP:PORT\""),
    ({"service": "r", "address": "10.0.0.1"}, "address: expected \"IP:PORT\""),
    ({"service": "r", "address": "db.internal:80"}, "is not an IP address"),
    ({"service": "r", "address": "10.0.0.1:70000"}, "out of range"),
    ({"service": "r", "address": "10.0.0.1:80", "labels": ["a"]}, "labels: expected an object"),
    ({"service": "r", "address": "10.0.0.1:80", "labels": {"v": 2}}, "labels.v: expected"),
    ({"service": "r", "address": "10.0.0.1:80", "ttl": "soon"}, "ttl: invalid duration"),
    ({"service": "r", "address": "10.0.0.1:80", "ttl": "2d"}, "ttl: invalid duration"),
    ({"service": "r", "address": "10.0.0.1:80", "ttl": "0s"}, "ttl: must be between"),
    ({"service": "r", "address": "10.0.0.1:80", "ttl": True}, "ttl: expected a duration"),
])
def test_registration_body_errors_are_clear(body: Any, message: str) -> None:
    with pytest.raises(Invalid) as e:
        parse_registration(body)
    assert message in str(e.value)


# ---- the EDS fast path --------------------------------------------------------------------------


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    d = tmp_path / "policy"
    d.mkdir()
    (d / "shop.yaml").write_text(DISCOVERY_POLICY)
    return d


def assignment_hosts(snapshot, name: str) -> list[tuple[str, int]]:
    from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

    cla = ClusterLoadAssignment.FromString(snapshot.get(types.ENDPOINT)[name].body)
    return [(e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
            for group in cla.endpoints for e in group.lb_endpoints]


def test_a_service_without_endpoints_gets_an_eds_cluster(policy: Path) -> None:
    snapshot = Translation(load_policy(policy)).snapshot("edge")
    assert "ratings" in snapshot.get(types.CLUSTER)
    assert assignment_hosts(snapshot, "ratings") == []


def test_fast_path_changes_only_the_affected_assignments(policy: Path) -> None:
    before = Translation(load_policy(policy))
    old = before.snapshot("edge")
    discovered = {"reviews": (Endpoint("10.0.0.2", 80, (("version", "v1"),)),
                              Endpoint("127.0.0.1", 9081)),  # already static: not added twice
                  "unknown": (Endpoint("10.0.0.3", 80),)}  # no such Service: kept, unused
    after = before.with_endpoints(discovered)
    assert before.changed_services(discovered) == {"reviews", "unknown"}
    new = after.refresh_endpoints(old, {"reviews", "unknown"})
    for type_url in (types.CLUSTER, types.LISTENER, types.ROUTE):
        assert new.get(type_url) is old.get(type_url), type_url  # the very same objects
    eds_old, eds_new = old.get(types.ENDPOINT), new.get(types.ENDPOINT)
    assert eds_new is not eds_old
    assert set(eds_new.diff_from(eds_old)[0]) == {"reviews", "reviews/v1"}
    assert eds_new["ratings"] is eds_old["ratings"]
    assert assignment_hosts(new, "reviews") == [("10.0.0.2", 80), ("127.0.0.1", 9081)]
    assert assignment_hosts(new, "reviews/v1") == [("10.0.0.2", 80), ("127.0.0.1", 9081)]
    # The same as translating from scratch with those endpoints.
    fresh = Translation(load_policy(policy), discovered=discovered).snapshot("edge")
    assert fresh.version == new.version
    # Nothing changed: the same snapshot object.
    assert after.refresh_endpoints(new, {"reviews"}) is new


def test_controller_applies_registry_changes_to_every_view(policy: Path) -> None:
    registry = EndpointRegistry(Clock())
    cache = SnapshotCache()
    controller = Controller(policy, cache, endpoints=registry)
    registry.register("ratings", "10.0.0.5", 8080, ttl=1.0)  # before the first load
    assert controller.reload()
    controller.snapshot_blocking("edge")
    assert assignment_hosts(cache.get("edge"), "ratings") == [("10.0.0.5", 8080)]
    registry.register("ratings", "10.0.0.6", 8080)
    first = cache.get("edge")
    assert controller.apply_endpoints() == {"ratings"}
    second = cache.get("edge")
    assert second.get(types.CLUSTER) is first.get(types.CLUSTER)
    assert assignment_hosts(second, "ratings") == [("10.0.0.5", 8080), ("10.0.0.6", 8080)]
    registry.expire(registry.clock() + 2)
    assert controller.apply_endpoints() == {"ratings"}
    assert assignment_hosts(cache.get("edge"), "ratings") == [("10.0.0.6", 8080)]
    assert controller.apply_endpoints() == set()
    # A reload keeps the discovered endpoints.
    assert controller.reload()
    assert assignment_hosts(cache.get("edge"), "ratings") == [("10.0.0.6", 8080)]


# ---- Docker, against a fake client --------------------------------------------------------------


class FakeStream:
    def __init__(self) -> None:
        self.events: queue.Queue[dict | None] = queue.Queue()

    def __iter__(self):
        while True:
            event = self.events.get()
            if event is None:
                return
            yield event

    def close(self) -> None:
        self.events.put(None)


class FakeContainers:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    def list(self, filters: dict[str, Any] | None = None) -> list[Any]:
        return [c for c in self.engine.containers.values()
                if c.status == "running" and "meshpilot.service" in c.labels]

    def get(self, container_id: str) -> Any:
        return self.engine.containers[container_id]


class FakeEngine:
    """The Docker engine as the source sees it through the SDK."""

    def __init__(self) -> None:
        self.containers: dict[str, Any] = {}
        self.streams: list[FakeStream] = []
        self.up = True

    def client(self) -> Any:
        if not self.up:
            raise ConnectionError("engine down")
        stream = FakeStream()
        self.streams.append(stream)
        return SimpleNamespace(containers=FakeContainers(self), close=lambda: None,
                               events=lambda decode, filters: stream)

    def run(self, cid: str, labels: dict[str, str], ip: str, ports: dict | None = None) -> None:
        self.containers[cid] = SimpleNamespace(
            id=cid, name=f"c-{cid[:4]}", labels=labels, status="running",
            attrs={"NetworkSettings": {"IPAddress": ip, "Ports": ports or {},
                                       "Networks": {"mesh": {"IPAddress": ip}}}})
        self.emit(cid, "start")

    def stop(self, cid: str, action: str = "die") -> None:
        self.containers[cid].status = "exited"
        self.emit(cid, action)

    def emit(self, cid: str, action: str) -> None:
        event = {"Type": "container", "Action": action,
                 "Actor": {"ID": cid, "Attributes": dict(self.containers[cid].labels)}}
        if self.streams:
            self.streams[-1].events.put(event)


LABELS = {"meshpilot.service": "reviews", "meshpilot.port": "9080",
          "meshpilot.label.version": "v2", "other": "x"}


def test_instance_of_a_container_on_a_network_or_a_published_port() -> None:
    ports = {"9080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32768"},
                          {"HostIp": "::", "HostPort": "32768"}]}
    c = SimpleNamespace(id="a" * 64, name="a", labels=LABELS, attrs={"NetworkSettings": {
        "IPAddress": "172.17.0.2", "Ports": ports,
        "Networks": {"mesh": {"IPAddress": "172.18.0.5"}}}})
    on_network = instance_of(c, network="mesh")
    assert (on_network.host, on_network.port) == ("172.18.0.5", 9080)
    assert on_network.labels == (("version", "v2"),) and on_network.id == "docker:aaaaaaaaaaaa"
    published = instance_of(c)
    assert (published.host, published.port) == ("127.0.0.1", 32768)
    assert instance_of(c, network="elsewhere") is None
    c.attrs["NetworkSettings"]["Ports"] = {}
    assert (instance_of(c).host, instance_of(c).port) == ("172.17.0.2", 9080)
    c.labels = {"meshpilot.service": "reviews", "meshpilot.port": "http"}
    assert instance_of(c) is None


def test_docker_source_follows_events_and_reconnects() -> None:
    engine = FakeEngine()
    engine.run("1" * 64, LABELS, "172.18.0.2")
    engine.run("2" * 64, {"unrelated": "yes"}, "172.18.0.3")
    registry = EndpointRegistry()
    source = DockerSource(registry, network="mesh", client_factory=engine.client,
                          backoff=(0.01, 0.05))
    source.start()
    try:
        def hosts() -> list[str]:
            return [e.host for e in registry.endpoints().get("reviews", ())]

        eventually(lambda: hosts() == ["172.18.0.2"], timeout=5, what="the listed container")
        engine.run("3" * 64, LABELS, "172.18.0.4")
        eventually(lambda: hosts() == ["172.18.0.2", "172.18.0.4"], timeout=5,
                   what="a started container")
        engine.stop("1" * 64)
        eventually(lambda: hosts() == ["172.18.0.4"], timeout=5, what="a stopped container")
        engine.stop("3" * 64, "pause")
        eventually(lambda: hosts() == [], timeout=5, what="a paused container")
        engine.containers["3" * 64].status = "running"
        engine.emit("3" * 64, "unpause")
        eventually(lambda: hosts() == ["172.18.0.4"], timeout=5, what="an unpaused container")

        # The engine goes away; meanwhile a container stops and another starts. After the
        # reconnection the list replaces what the Docker source had.
        engine.up = False
        engine.streams[-1].close()
        eventually(lambda: not source.connected.is_set(), timeout=5, what="the disconnection")
        assert hosts() == ["172.18.0.4"]  # kept while the engine is unreachable
        engine.containers["3" * 64].status = "exited"
        engine.containers["4" * 64] = SimpleNamespace(
            id="4" * 64, name="d", labels=LABELS, status="running",
            attrs={"NetworkSettings": {"Networks": {"mesh": {"IPAddress": "172.18.0.9"}}}})
        engine.up = True
        eventually(lambda: hosts() == ["172.18.0.9"], timeout=5, what="the resync")
        assert source.connects == 2
    finally:
        source.stop()
    assert source._thread is not None and not source._thread.is_alive()
