"""The staged rollout state machine on a manual clock, without sockets: who is a canary, which
snapshot each stream follows, rollback on the error rate and on a canary's NACK, promotion after
a healthy watch, an edit superseding a rollout, promote and abort by hand, the settings' text."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from prometheus_client import CollectorRegistry

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.runtime.envoy_metrics import Sample
from meshpilot.runtime.rollout import (
    ABORTED,
    PROMOTED,
    ROLLED_BACK,
    WATCHING,
    RolloutError,
    RolloutMetrics,
    RolloutPolicy,
    Rollouts,
    canary_count,
    parse_rollout,
    policy_of,
)
from meshpilot.xds.resources import ResourceMap
from meshpilot.xds.snapshot import Snapshot
from meshpilot.xds.status import Connection, ProxyRegistry
from meshpilot.xds.stream import XdsStream


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def snap(view: str, n: int) -> Snapshot:
    type_url = f"type.googleapis.com/x{n}"
    return Snapshot(view, {type_url: ResourceMap(type_url)})


class Fleet:
    """Connections of one view, their counters, and the woken views."""

    def __init__(self, nodes: int, policy: RolloutPolicy | None = None, view: str = "edge"):
        self.proxies = ProxyRegistry()
        self.clock = Clock()
        self.counters: dict[str, Sample] = {}
        self.woken: list[str] = []
        self.registry = CollectorRegistry()
        self.conns = [self.connect(f"{view}-{i}", view) for i in range(nodes)]
        self.rollouts = Rollouts(
            policy or RolloutPolicy(canary=0.25, watch=30, threshold=0.1, min_requests=10),
            counts=self.counters.get, connections=self.proxies.connections,
            wake=self.woken.append, clock=self.clock, wall=lambda: 1_700_000_000.0,
            metrics=RolloutMetrics(self.registry))

    def connect(self, node_id: str, view: str) -> Connection:
        stream = XdsStream(delta=False, ads=True)
        stream.node = base_pb2.Node(id=node_id, cluster=view)
        conn = self.proxies.open(stream, "peer", 0.0)
        conn.view = view
        return conn

    def serve(self, newest: Snapshot) -> dict[str, str]:
        """What each connection follows now (node id -> snapshot version); streams take it."""
        out = {}
        for conn in self.proxies.connections():
            chosen = self.rollouts.follow(conn, newest)
            assert chosen is not None
            conn.stream.on_snapshot(chosen)
            out[conn.node_id] = chosen.version
        return out

    def flush(self, node: str, requests: float, errors: float) -> None:
        self.counters[node] = Sample(requests, errors, self.clock.now)

    def metric(self, name: str) -> float:
        return self.registry.get_sample_value(name) or 0.0


def test_canary_counts() -> None:
    assert [canary_count(n, 0.1) for n in (0, 1, 2, 3, 10, 11, 100)] == [0, 1, 1, 1, 1, 2, 10]
    assert [canary_count(n, 0.5) for n in (2, 3, 4)] == [1, 2, 2]
    assert canary_count(4, 1.0) == 3  # never all of several: someone keeps the baseline


def test_a_bad_edit_reaches_the_canaries_only_and_rolls_back_on_the_error_rate() -> None:
    fleet = Fleet(4)
    old, new = snap("edge", 0), snap("edge", 1)
    assert fleet.serve(old) == {f"edge-{i}": old.version for i in range(4)}
    for i in range(4):
        fleet.flush(f"edge-{i}", 100, 0)
    (rollout,) = fleet.rollouts.replaced([(old, new)], edit="3f2a")
    assert rollout.state == WATCHING and rollout.total == 4 and len(rollout.canary) == 1
    assert rollout.edit == "3f2a" and fleet.woken == ["edge"]
    (canary,) = rollout.canary
    served = fleet.serve(new)
    assert served[canary] == new.version
    assert {n: v for n, v in served.items() if n != canary} == {
        n: old.version for n in served if n != canary}
    # A new Envoy of the view, connecting meanwhile, is not a canary: the baseline.
    late = fleet.connect("edge-9", "edge")
    assert fleet.rollouts.follow(late, new) is old

    # The canary answers 5xx: below min_requests nothing is judged yet...
    fleet.flush(canary, 105, 5)
    fleet.rollouts.tick()
    assert rollout.state == WATCHING and rollout.error_rate == 1.0
    # ...then it crosses the threshold with enough requests: rolled back.
    fleet.flush(canary, 112, 9)
    fleet.rollouts.tick()
    assert rollout.state == ROLLED_BACK and rollout.requests == 12 and rollout.errors == 9
    assert "error rate 75.0% of 12 request(s) is above 10.0%" in (rollout.reason or "")
    assert set(fleet.serve(new).values()) == {old.version}  # the canary back on the baseline
    assert fleet.metric("meshpilot_rollouts_rolled_back_total") == 1
    assert fleet.metric("meshpilot_rollouts_in_progress") == 0
    assert fleet.metric("meshpilot_rollouts_held_views") == 1
    (described,) = fleet.rollouts.describe()
    assert {k: described[k] for k in ("id", "view", "state", "canary", "total", "threshold",
                                      "edit", "started")} == {
        "id": rollout.id, "view": "edge", "state": "rolled_back", "canary": [canary],
        "total": 4, "threshold": 0.1, "edit": "3f2a", "started": 1_700_000_000.0}
    assert described["error_rate"] == 0.75 and described["reason"] == rollout.reason

    # The same refused candidate again changes nothing in the cache, so no `replaced`; the next
    # edit starts from the baseline again; a revert to the baseline releases the view.
    fixed = snap("edge", 2)
    (second,) = fleet.rollouts.replaced([(new, fixed)])
    assert second.baseline is old and second.state == WATCHING
    fleet.rollouts.replaced([(fixed, snap("edge", 0))])
    assert second.state == ABORTED and second.reason == "the view is back to its baseline"
    assert set(fleet.serve(snap("edge", 0)).values()) == {old.version}
    assert fleet.rollouts.held == {} and fleet.rollouts.active == {}


def test_a_good_edit_is_promoted_after_the_watch() -> None:
    fleet = Fleet(3)
    old, new = snap("edge", 0), snap("edge", 1)
    fleet.serve(old)
    (rollout,) = fleet.rollouts.replaced([(old, new)])
    (canary,) = rollout.canary
    fleet.serve(new)
    fleet.flush(canary, 50, 0)  # its first flush since the start is the base
    fleet.rollouts.tick()
    fleet.clock.now += 10
    fleet.flush(canary, 80, 1)
    canary_conn = next(c for c in fleet.conns if c.node_id == canary)
    fleet.rollouts.settled(canary_conn)
    fleet.rollouts.tick()
    assert rollout.state == WATCHING and rollout.acked == {canary}
    assert rollout.describe(fleet.clock.now)["remaining"] == 20
    fleet.clock.now += 20
    fleet.rollouts.tick()
    assert rollout.state == PROMOTED and rollout.requests == 30 and rollout.errors == 1
    assert rollout.reason == "watched 30s: error rate 3.3% of 30 request(s)"
    assert set(fleet.serve(new).values()) == {new.version}
    assert fleet.metric("meshpilot_rollouts_promoted_total") == 1


def test_too_little_traffic_is_promoted_but_no_ack_is_rolled_back() -> None:
    fleet = Fleet(2)
    old, new = snap("edge", 0), snap("edge", 1)
    fleet.serve(old)
    (quiet,) = fleet.rollouts.replaced([(old, new)])
    fleet.serve(new)
    fleet.rollouts.settled(next(c for c in fleet.conns if c.node_id in quiet.canary))
    fleet.clock.now += 30
    fleet.rollouts.tick()
    assert quiet.state == PROMOTED and "too little canary traffic to judge" in (
        quiet.reason or "")

    newer = snap("edge", 2)
    (silent,) = fleet.rollouts.replaced([(new, newer)])
    fleet.clock.now += 31
    fleet.rollouts.tick()  # no canary ever settled on it
    assert silent.state == ROLLED_BACK and "no canary took the new config" in (
        silent.reason or "")


def test_a_canary_nack_rolls_back_and_a_non_canary_nack_does_not() -> None:
    fleet = Fleet(4, RolloutPolicy(canary=0.5, watch=30, threshold=0.1))
    old, new = snap("edge", 0), snap("edge", 1)
    fleet.serve(old)
    (rollout,) = fleet.rollouts.replaced([(old, new)])
    assert len(rollout.canary) == 2
    other = next(c for c in fleet.conns if c.node_id not in rollout.canary)
    fleet.rollouts.nacked(other, "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
                          "something of the baseline")
    assert rollout.state == WATCHING
    canary = next(c for c in fleet.conns if c.node_id in rollout.canary)
    fleet.rollouts.nacked(canary, "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                          "Error adding/updating cluster(s) bad: malformed IP address")
    assert rollout.state == ROLLED_BACK
    assert rollout.reason == (f"canary {canary.node_id} rejected clusters: Error adding/updating "
                              "cluster(s) bad: malformed IP address")


def test_an_edit_during_a_rollout_supersedes_it_with_the_same_canaries() -> None:
    fleet = Fleet(8)
    old, first, second = snap("edge", 0), snap("edge", 1), snap("edge", 2)
    fleet.serve(old)
    (one,) = fleet.rollouts.replaced([(old, first)], edit="aaaa")
    fleet.serve(first)
    (two,) = fleet.rollouts.replaced([(first, second)], edit="bbbb")
    assert one.state == ABORTED and one.reason == f"superseded by rollout {two.id}"
    assert two.baseline is old and two.canary == one.canary and two.id != one.id
    served = fleet.serve(second)
    assert {n for n, v in served.items() if v == second.version} == set(two.canary)
    assert {v for n, v in served.items() if n not in two.canary} == {old.version}
    assert [r["id"] for r in fleet.rollouts.describe()] == [two.id, one.id]


def test_promote_and_abort_by_hand() -> None:
    fleet = Fleet(3)
    old, new = snap("edge", 0), snap("edge", 1)
    with pytest.raises(RolloutError, match="no rollout is being watched"):
        fleet.rollouts.promote()
    (rollout,) = fleet.rollouts.replaced([(old, new)])
    with pytest.raises(RolloutError, match="view 'mesh'"):
        fleet.rollouts.abort("mesh")
    assert fleet.rollouts.promote("edge") == [rollout] and rollout.state == PROMOTED
    assert rollout.reason == "promoted by hand"
    assert set(fleet.serve(new).values()) == {new.version}
    newer = snap("edge", 2)
    (again,) = fleet.rollouts.replaced([(new, newer)])
    assert fleet.rollouts.abort() == [again] and again.state == ABORTED
    assert set(fleet.serve(newer).values()) == {new.version}  # everyone on the baseline


def test_views_apart_and_edge_cases() -> None:
    fleet = Fleet(1)
    mesh = fleet.connect("mesh-0", "mesh")
    old, new = snap("edge", 0), snap("edge", 1)
    # A view's first snapshot has nothing to roll back to; a view nobody is connected to
    # has no one to watch.
    assert fleet.rollouts.replaced([(None, old), (snap("idle", 0), snap("idle", 1))]) == []
    # One Envoy in the view: it is the canary.
    (rollout,) = fleet.rollouts.replaced([(old, new)])
    assert rollout.canary == ("edge-0",) and rollout.total == 1
    assert fleet.rollouts.follow(mesh, snap("mesh", 5)).version == snap("mesh", 5).version


def test_without_a_policy_nothing_is_staged() -> None:
    fleet = Fleet(3)
    rollouts = Rollouts(None, counts=fleet.counters.get, connections=fleet.proxies.connections,
                        wake=fleet.woken.append, clock=fleet.clock, wall=lambda: 0.0)
    assert rollouts.replaced([(snap("edge", 0), snap("edge", 1))]) == []
    assert rollouts.follow(fleet.conns[0], snap("edge", 1)).version == snap("edge", 1).version


def test_settings_text() -> None:
    assert parse_rollout("") == RolloutPolicy()
    assert parse_rollout("canary=25%, watch=1m, error-rate=0.02, min-requests=3") == \
        RolloutPolicy(canary=0.25, watch=60.0, threshold=0.02, min_requests=3)
    for bad, message in [("canary=0%", "canary"), ("canary=150%", "canary"),
                         ("watch=0s", "watch"), ("watch=soon", "watch"),
                         ("error-rate=-1", "error-rate"), ("min-requests=x", "min-requests"),
                         ("speed=3", "KEY=VALUE"), ("canary", "KEY=VALUE"),
                         ("watch=1s,watch=2s", "twice")]:
        with pytest.raises(RolloutError, match=message):
            parse_rollout(bad)


def test_the_rollout_document() -> None:
    model = load_policy_text("kind: Rollout\nname: staged\ncanary: 25\nwatch: 1m\n"
                             "error_rate: 2.5\nmin_requests: 3\nviews: [edge]\n")
    assert model.rollout is not None
    policy = policy_of(model.rollout)
    assert policy is not None
    assert (policy.canary, policy.watch, policy.threshold, policy.min_requests,
            policy.views) == (0.25, 60.0, 0.025, 3, frozenset({"edge"}))
    assert policy.source == "policy.yaml:1:1: Rollout staged"
    defaults = load_policy_text("kind: Rollout\nname: staged\n").rollout
    assert defaults is not None and policy_of(defaults) == RolloutPolicy(
        source="policy.yaml:1:1: Rollout staged")
    off = load_policy_text("kind: Rollout\nname: paused\nenabled: false\n").rollout
    assert off is not None and policy_of(off) is None
    assert load_policy_text("kind: Service\nname: api\nendpoints: [127.0.0.1:1]\n"
                            ).rollout is None

    with pytest.raises(PolicyError) as raised:
        load_policy_text("kind: Rollout\nname: a\ncanary: 10%\nwatch: 30\nerror_rate: 101\n"
                         "min_requests: -1\nviews: [edge, edge]\nspeed: 1\n---\n"
                         "kind: Rollout\nname: b\ncanary: 0\nwatch: 25h\n")
    assert [str(issue) for issue in raised.value.issues] == [
        "policy.yaml:3:9: Rollout a: canary: expected a percentage above 0, at most 100, found "
        "a string (a number: write 10, not 10%)",
        'policy.yaml:4:8: Rollout a: watch: a duration needs a unit, e.g. "30s" or "30ms"',
        "policy.yaml:5:13: Rollout a: error_rate: must be from 0 to 100, found 101",
        "policy.yaml:6:15: Rollout a: min_requests: must be from 0 to 1000000000, found -1",
        "policy.yaml:7:15: Rollout a: views[1]: view \"edge\" is listed twice (first at "
        "policy.yaml:7:9)",
        "policy.yaml:8:1: Rollout a: speed: unknown key \"speed\"; a Rollout has: kind, name, "
        "enabled, canary, watch, error_rate, min_requests, views",
        "policy.yaml:10:7: Rollout b: kind: a policy has one Rollout document; another is at "
        "policy.yaml:1:1",
        "policy.yaml:12:9: Rollout b: canary: must be above 0, at most 100, found 0",
        "policy.yaml:13:8: Rollout b: watch: at most 24h",
    ]


def test_the_policy_is_asked_at_each_reload_and_names_its_views() -> None:
    said: list[RolloutPolicy | None] = [RolloutPolicy(views=frozenset({"mesh"}))]
    fleet = Fleet(3)
    fleet.connect("mesh-0", "mesh")
    fleet.connect("mesh-1", "mesh")
    rollouts = Rollouts(lambda: said[0], counts=fleet.counters.get,
                        connections=fleet.proxies.connections, wake=fleet.woken.append,
                        clock=fleet.clock, wall=lambda: 0.0)
    started = rollouts.replaced([(snap("edge", 0), snap("edge", 1)),
                                 (snap("mesh", 0), snap("mesh", 1))])
    assert [r.view for r in started] == ["mesh"]  # edge is not rolled out in stages
    assert rollouts.status()["policy"]["views"] == ["mesh"]
    said[0] = None  # the new serving policy turned rollouts off: the next edit supersedes
    assert rollouts.replaced([(snap("mesh", 1), snap("mesh", 2))]) == []
    assert started[0].state == ABORTED and rollouts.held == {}
    assert rollouts.status() == {"enabled": False, "policy": None, "watching": [],
                                 "held_views": [], "lines": [started[0].line()]}
