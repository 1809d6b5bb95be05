"""Registrations patch a Service's assignments instead of rebuilding them (issue 18): the
registry keeps each service's endpoints sorted with a history of changes
(`ir/discovered.py`), and `translators/assignments.py` patches the encoded assignment. Whatever
the sequence of registrations, removals, relabellings and sources, every view's snapshot must be
byte for byte what a cold translation of the same endpoints gives.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from meshpilot.base import types
from meshpilot.discovery.registry import EndpointRegistry, Instance
from meshpilot.inputs.loader import load_policy, load_policy_text
from meshpilot.ir.discovered import ADDED, REMOVED, DiscoveredEndpoints, EndpointHistory
from meshpilot.ir.model import Endpoint
from meshpilot.runtime.controller import Controller
from meshpilot.translators import Translation
from meshpilot.translators.assignments import VERSIONED_BY_PARTS, Assignment, full_bytes
from meshpilot.translators.mtls import TrustDomain
from meshpilot.translators.upstreams import translate_cluster
from meshpilot.xds.cache import SnapshotCache
from meshpilot.xds.resources import content_version
from meshpilot.xds.snapshot import Snapshot

POLICY = """
kind: Service
name: app
endpoints:
  - {address: '10.9.0.1:80', labels: {version: v1}}
  - {address: '10.9.0.2:80', labels: {version: v2}, weight: 3}
  - {address: '10.9.0.3:80', labels: {version: v1}, priority: 1}
  - {address: '10.9.0.4:80', labels: {version: v2, track: canary}}
subsets: {v1: {version: v1}, v2: {version: v2}, canary: {track: canary}}
---
kind: Service
name: other
---
kind: Gateway
name: edge
listeners: [{name: http, port: 10000, address: 127.0.0.1}]
---
kind: Route
name: shop
gateway: edge
rules:
  - match: {path: {prefix: /other}}
    backends: [{service: other}]
  - match: {path: {prefix: /canary}}
    backends: [{service: app, subset: canary}]
  - backends: [{service: app}, {service: app, subset: v1}, {service: app, subset: v2}]
"""


@pytest.fixture()
def policy(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY)
    return tmp_path


def _same(served: Snapshot, cold: Snapshot) -> None:
    assert served.type_urls() == cold.type_urls()
    for type_url in cold.type_urls():
        got = {n: r.body for n, r in served.get(type_url).items()}
        want = {n: r.body for n, r in cold.get(type_url).items()}
        assert got == want, type_url
    assert served.version == cold.version


def test_any_sequence_of_registrations_serves_what_a_cold_translation_gives(
        policy: Path) -> None:
    rng = random.Random(18)
    registry = EndpointRegistry()
    cache = SnapshotCache()
    controller = Controller(policy, cache, endpoints=registry)
    assert controller.reload()
    controller.snapshot_blocking("edge")
    model = load_policy(policy)
    # Addresses of the policy's own endpoints among them: a registration there is not added.
    hosts = [f"10.0.0.{i}" for i in range(1, 25)] + ["10.9.0.1", "10.9.0.3"]
    labels = [{"version": "v1"}, {"version": "v2"}, {"version": "v1", "track": "canary"}, {}]
    patched_total = 0
    for _ in range(400):
        live = registry.instances()
        roll = rng.random()
        if roll < 0.55 or not live:
            service = "app" if rng.random() < 0.9 else "other"
            registry.register(service, rng.choice(hosts), rng.choice((80, 81)),
                              rng.choice(labels), source=rng.choice(("registration", "docker")))
        elif roll < 0.85:
            registry.remove(rng.choice(live).id)
        else:  # the same instance again with other labels (a relabelled workload)
            was = rng.choice(live)
            registry.register(was.service, was.host, was.port, rng.choice(labels),
                              source=was.source, id=was.id)
        controller.apply_endpoints()
        served = cache.get("edge")
        assert served is not None
        cold = Translation(model, discovered=registry.endpoints()).snapshot("edge")
        _same(served, cold)
        patched_total += len(controller.translation.upstreams._assignments)
    # The patching path ran (not only full rebuilds, which would pass the above too).
    assert patched_total > 100


def test_large_assignments_are_versioned_by_parts_the_same_patched_and_cold(
        policy: Path) -> None:
    """From `VERSIONED_BY_PARTS` endpoints on, an assignment's version is made from its parts
    (a patch re-hashes only the entries that changed): growing past that count and shrinking
    back below it, every step's versions are what a cold translation gives."""
    registry = EndpointRegistry()
    cache = SnapshotCache()
    controller = Controller(policy, cache, endpoints=registry)
    assert controller.reload()
    controller.snapshot_blocking("edge")
    model = load_policy(policy)
    rng = random.Random(64)
    count = VERSIONED_BY_PARTS + 12
    ids = []
    by_parts = 0
    steps = [("add", i) for i in range(count)] + [("remove", i) for i in range(20)]
    seen: dict[str, dict[bytes, str]] = {}  # name -> body -> version
    for kind, i in steps:
        if kind == "add":
            instance, _ = registry.register("app", f"10.3.{i >> 8}.{i & 255}", 80,
                                            {"version": rng.choice(("v1", "v2"))})
            ids.append(instance.id)
        else:
            registry.remove(ids.pop(rng.randrange(len(ids))))
        controller.apply_endpoints()
        served = cache.get("edge")
        cold = Translation(model, discovered=registry.endpoints()).snapshot("edge")
        _same(served, cold)
        for name, resource in served.get(types.ENDPOINT).items():
            assert resource.version == cold.get(types.ENDPOINT)[name].version, name
            by_parts += resource.version != content_version(resource.body)
            # Another body, another version (a stream is sent what changed by version).
            versions = seen.setdefault(name, {})
            assert versions.setdefault(resource.body, resource.version) == resource.version
            assert len(set(versions.values())) == len(versions), name
    assert by_parts > 0  # the large ones were versioned by parts
    # Patched, not rebuilt, along the way.
    assert controller.translation.upstreams._assignments


def test_a_large_change_of_a_source_falls_back_to_building_anew(policy: Path) -> None:
    registry = EndpointRegistry()
    cache = SnapshotCache()
    controller = Controller(policy, cache, endpoints=registry)
    assert controller.reload()
    controller.snapshot_blocking("edge")
    for i in range(5):
        registry.register("app", f"10.1.0.{i}", 80, {"version": "v1"})
        controller.apply_endpoints()
    # More changes at once than a history keeps: the assignment is built from every endpoint.
    registry.replace_source("docker", [
        Instance(id=f"d{i}", service="app", host=f"10.2.{i >> 8}.{i & 255}", port=80,
                 labels=(("version", "v2"),)) for i in range(1500)])
    controller.apply_endpoints()
    cold = Translation(load_policy(policy), discovered=registry.endpoints()).snapshot("edge")
    _same(cache.get("edge"), cold)


def test_the_history_tells_changes_until_it_forgets_them() -> None:
    history = EndpointHistory(limit=3)
    a, b, c = Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80), Endpoint("10.0.0.3", 80)
    v1 = history.record([(ADDED, a)])
    v2 = history.record([(ADDED, b), (REMOVED, a)])
    first = DiscoveredEndpoints((a,), history, v1)
    second = DiscoveredEndpoints((b,), history, v2)
    assert second.changes_since(first) == [(ADDED, b), (REMOVED, a)]
    assert second.changes_since(second) == []
    assert first.changes_since(second) is None, "backwards is not a history"
    assert second.changes_since((a,)) is None, "a plain tuple has no history"
    assert second.changes_since(DiscoveredEndpoints((a,), EndpointHistory(), v1)) is None
    v3 = history.record([(ADDED, c), (ADDED, a)])  # four kept of three: (ADDED, a) forgotten
    third = DiscoveredEndpoints((a, b, c), history, v3)
    assert third.changes_since(second) == [(ADDED, c), (ADDED, a)]
    assert third.changes_since(first) is None, "part of v2's changes are forgotten"


def test_an_assignment_patched_equals_one_built_from_every_endpoint() -> None:
    model = load_policy_text(POLICY)
    service = model.service("app")
    assert service is not None
    trust = TrustDomain()
    built = translate_cluster(service, "v1", trust)
    resource = built[-1]
    assert resource.type_url == types.ENDPOINT
    assignment = Assignment.of(service, "v1", service.endpoints, resource)
    assert assignment is not None and assignment.discovered == 0
    added = [Endpoint(f"10.0.0.{i}", 80, (("version", "v1"),)) for i in (5, 2, 9)]
    other = Endpoint("10.0.0.7", 80, (("version", "v2"),))
    patched = assignment.patched([(ADDED, e) for e in added] + [(ADDED, other)])
    assert patched is not None and patched.discovered == 3
    members = [e for e in service.endpoints + tuple(added) if ("version", "v1") in e.labels]
    assert patched.resource.body == full_bytes(resource.name, members)
    removed = patched.patched([(REMOVED, added[0])])
    assert removed is not None and removed.discovered == 2
    assert removed.resource.body == full_bytes(resource.name, [e for e in members
                                                               if e is not added[0]])
    assert removed.patched([(REMOVED, Endpoint("10.0.0.99", 80, (("version", "v1"),)))]) is None
    assert assignment.patched([(ADDED, other)]) is assignment, "another subset's: unchanged"

