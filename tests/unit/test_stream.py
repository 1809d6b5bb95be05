"""The xDS stream state machine (`meshpilot.xds.stream.XdsStream`) driven directly: no gRPC, no
sockets, no clocks. Every response is decoded from its payload bytes as real protobuf and checked
against what its `Outbound` says it carries.

The rules come from Envoy's "xDS REST and gRPC protocol": ACK/NACK by error_detail, nonces and
stale nonces, wildcard CDS/LDS and named EDS/RDS, delta subscriptions and
initial_resource_versions, ADS ordering and make before break.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2
from xds_client import (
    CDS,
    EDS,
    LDS,
    RDS,
    eds_cluster,
    load_assignment,
    messages_of,
    names_of,
    node,
    rds_listener,
    route_config,
    snapshot_of,
    static_cluster,
)

from meshpilot.base import types
from meshpilot.xds.snapshot import Snapshot
from meshpilot.xds.stream import HeldResources, Outbound, ProtocolError, RequestKind, XdsStream

VIEW = "edge"


# ----- harness ------------------------------------------------------------------------------------


@dataclass
class Sent:
    """One decoded response."""

    out: Outbound
    msg: Any  # DiscoveryResponse or DeltaDiscoveryResponse

    @property
    def type_url(self) -> str:
        return self.out.type_url

    @property
    def names(self) -> list[str]:
        return names_of(self.msg)

    @property
    def removed(self) -> list[str]:
        return list(self.msg.removed_resources)

    @property
    def version(self) -> str:
        return self.out.version

    @property
    def messages(self) -> dict[str, Message]:
        return messages_of(self.msg)


def decode(out: Outbound, *, delta: bool) -> Sent:
    """Parse the payload as protobuf and check it says what the Outbound says it says."""
    if delta:
        msg = discovery_pb2.DeltaDiscoveryResponse.FromString(out.payload)
        assert msg.system_version_info == out.version
        assert list(msg.removed_resources) == list(out.removed)
        for entry in msg.resources:
            assert entry.resource.type_url == out.type_url
            assert entry.version, "delta resources carry their own version"
    else:
        msg = discovery_pb2.DiscoveryResponse.FromString(out.payload)
        assert msg.version_info == out.version
        # SotW has no removed_resources: what a CDS/LDS response leaves out is removed.
        assert not set(out.removed) & set(names_of(msg))
        for packed in msg.resources:
            assert packed.type_url == out.type_url
    assert msg.type_url == out.type_url
    assert msg.nonce == out.nonce and out.nonce
    # Who sent it: in a stream's first response only (Envoy keeps it).
    assert msg.control_plane.identifier == ("meshpilot" if out.nonce == "1" else "")
    # The same resources (the payload may keep the snapshot's order), each once.
    assert sorted(names_of(msg)) == sorted(out.names)
    assert len(set(out.names)) == len(out.names)
    return Sent(out, msg)


def sotw(type_url: str, names: Iterable[str] = (), *, version: str = "", nonce: str = "",
         error: str | None = None, with_node: bool = True) -> Any:
    request = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(names),
                                             version_info=version, response_nonce=nonce)
    if with_node:
        request.node.CopyFrom(node())
    if error is not None:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return request


def delta(type_url: str, subscribe: Iterable[str] = (), unsubscribe: Iterable[str] = (), *,
          initial: Mapping[str, str] | None = None, nonce: str = "", error: str | None = None,
          with_node: bool = True) -> Any:
    request = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url, resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe), initial_resource_versions=initial or {},
        response_nonce=nonce)
    if with_node:
        request.node.CopyFrom(node())
    if error is not None:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return request


class Harness:
    """One XdsStream plus a fake clock; every input returns the decoded responses it caused."""

    def __init__(self, snapshot: Snapshot | None = None, *, delta: bool = False,
                 ads: bool = True, type_url: str | None = None,
                 held: HeldResources | None = None):
        self.delta = delta
        self.stream = XdsStream(delta=delta, ads=ads, type_url=type_url, held=held)
        self.now = 1000.0
        self.kinds: list[RequestKind] = []
        if snapshot is not None:
            self.stream.on_snapshot(snapshot)

    def _responses(self) -> list[Sent]:
        self.now += 1
        return [decode(o, delta=self.delta) for o in self.stream.responses(self.now)]

    def request(self, request: Any) -> list[Sent]:
        self.now += 1
        _, kind = self.stream.on_request(request, self.now)
        self.kinds.append(kind)
        return self._responses()

    @property
    def kind(self) -> RequestKind:
        return self.kinds[-1]

    def set(self, snapshot: Snapshot) -> list[Sent]:
        self.stream.on_snapshot(snapshot)
        return self._responses()

    def state(self, type_url: str) -> Any:
        return self.stream.types[type_url]

    # SotW answers ------------------------------------------------------------------------------

    def ack(self, sent: Sent, names: Iterable[str] = ()) -> list[Sent]:
        if self.delta:
            return self.request(delta(sent.type_url, nonce=sent.out.nonce, with_node=False))
        return self.request(sotw(sent.type_url, names, version=sent.version,
                                 nonce=sent.out.nonce, with_node=False))

    def nack(self, sent: Sent, message: str, names: Iterable[str] = (),
             previous_version: str = "") -> list[Sent]:
        if self.delta:
            return self.request(delta(sent.type_url, nonce=sent.out.nonce, error=message,
                                      with_node=False))
        return self.request(sotw(sent.type_url, names, version=previous_version,
                                 nonce=sent.out.nonce, error=message, with_node=False))


def only(sent: list[Sent], type_url: str | None = None) -> Sent:
    assert len(sent) == 1, f"expected one response, got {[(s.type_url, s.names) for s in sent]}"
    if type_url is not None:
        assert sent[0].type_url == type_url
    return sent[0]


def short(sent: list[Sent]) -> list[str]:
    return [types.short_name(s.type_url) for s in sent]


# ----- test config --------------------------------------------------------------------------------


def clusters(*names: str, timeout_ms: int = 1000) -> list[Message]:
    return [eds_cluster(n, connect_timeout_ms=timeout_ms) for n in names]


def world(*, cluster_names: Iterable[str] = ("a", "b"), timeout_ms: int = 1000,
          ports: Mapping[str, int] | None = None, route_clusters: Iterable[str] | None = None,
          listener_port: int = 10000, extra: Iterable[Message] = ()) -> Snapshot:
    """Clusters (EDS) with their endpoints, listener `l` on RDS, routes `r` to the clusters;
    `extra` resources added as given."""
    cluster_names = list(cluster_names)
    ports = ports or {}
    return snapshot_of(
        VIEW, *clusters(*cluster_names, timeout_ms=timeout_ms),
        *(load_assignment(n, [ports.get(n, 8080)]) for n in cluster_names),
        rds_listener("l", "r", port=listener_port),
        route_config("r", cluster_names if route_clusters is None else route_clusters),
        *extra)


def synced_ads(snapshot: Snapshot, *, delta_mode: bool = False) -> tuple[Harness, dict[str, Sent]]:
    """An ADS stream that opened CDS, EDS, LDS, RDS as Envoy does and ACKed everything."""
    h = Harness(snapshot, delta=delta_mode)
    last: dict[str, Sent] = {}

    def open_(type_url: str, names: Iterable[str]) -> None:
        names = list(names)
        req = (delta(type_url, names) if delta_mode else sotw(type_url, names))
        if type_url != CDS:
            req.ClearField("node")
        for s in h.request(req):
            last[s.type_url] = s
            h.ack(s, names)

    open_(CDS, [])
    open_(EDS, sorted(snapshot.get(EDS)))
    open_(LDS, [])
    open_(RDS, sorted(snapshot.get(RDS)))
    assert set(last) == {CDS, EDS, LDS, RDS}
    assert all(h.state(t).status == "SYNCED" for t in last)
    return h, last


# ----- SotW: wildcard CDS, ACK, versions ----------------------------------------------------------


def test_no_snapshot_means_nothing_is_sent() -> None:
    h = Harness()
    assert h.request(sotw(CDS)) == []
    assert h.state(CDS).status == "NOT_SENT"
    assert only(h.set(snapshot_of(VIEW, *clusters("a"))), CDS).names == ["a"]


def test_sotw_wildcard_cds_first_response_carries_everything() -> None:
    snap = snapshot_of(VIEW, *clusters("c", "a", "b"), static_cluster("s"))
    h = Harness(snap)
    sent = only(h.request(sotw(CDS)), CDS)
    assert h.kind is RequestKind.SUBSCRIBE
    assert sorted(sent.names) == ["a", "b", "c", "s"]
    assert sent.version == snap.get(CDS).version
    assert sent.messages["s"] == static_cluster("s")
    assert sent.messages["a"] == eds_cluster("a")
    assert h.state(CDS).wildcard
    assert h.state(CDS).status == "PENDING"


def test_sotw_explicit_wildcard_name_is_wildcard() -> None:
    h = Harness(snapshot_of(VIEW, *clusters("a", "b")))
    assert sorted(only(h.request(sotw(CDS, ["*"]))).names) == ["a", "b"]


def test_sotw_ack_then_nothing_more() -> None:
    h = Harness(snapshot_of(VIEW, *clusters("a", "b")))
    sent = only(h.request(sotw(CDS)))
    assert h.ack(sent) == []
    assert h.kind is RequestKind.ACK
    state = h.state(CDS)
    assert state.status == "SYNCED"
    assert state.acked_version == sent.version
    assert state.acks == 1 and state.responses == 1
    # The same snapshot again, or the client repeating its interest, sends nothing.
    assert h.set(snapshot_of(VIEW, *clusters("a", "b"))) == []
    assert h.request(sotw(CDS, version=sent.version, nonce=sent.out.nonce,
                          with_node=False)) == []


def test_snapshot_change_sends_one_new_version() -> None:
    h = Harness(snapshot_of(VIEW, *clusters("a", "b")))
    first = only(h.request(sotw(CDS)))
    h.ack(first)
    changed = snapshot_of(VIEW, eds_cluster("a"), eds_cluster("b", connect_timeout_ms=2000))
    second = only(h.set(changed), CDS)
    assert second.version != first.version
    assert second.version == changed.get(CDS).version
    assert second.out.nonce != first.out.nonce
    assert sorted(second.names) == ["a", "b"], "SotW CDS carries the whole state every time"
    assert second.messages["b"].connect_timeout.seconds == 2
    assert h.ack(second) == []


def test_versions_are_content_hashes() -> None:
    one = snapshot_of(VIEW, *clusters("a", "b"))
    same = snapshot_of(VIEW, *clusters("b", "a"))  # built separately, another order
    other = snapshot_of(VIEW, *clusters("a", "b", timeout_ms=3000))
    assert one.version == same.version
    assert one.get(CDS).version == same.get(CDS).version
    assert one.get(CDS).version != other.get(CDS).version

    h1, h2 = Harness(one), Harness(same)
    s1, s2 = only(h1.request(sotw(CDS))), only(h2.request(sotw(CDS)))
    assert s1.version == s2.version
    assert s1.out.payload == s2.out.payload, "identical content, identical bytes"

    # Changing and changing back comes back to the very same version.
    h1.ack(s1)
    s3 = only(h1.set(other))
    h1.ack(s3)
    s4 = only(h1.set(same))
    assert s4.version == s1.version


def test_one_response_in_flight_per_type_coalesces_changes() -> None:
    h = Harness(snapshot_of(VIEW, *clusters("a")))
    first = only(h.request(sotw(CDS)))
    assert h.set(snapshot_of(VIEW, *clusters("a", "b"))) == []
    newest = snapshot_of(VIEW, *clusters("a", "b", "c"))
    assert h.set(newest) == []
    assert h.state(CDS).status == "PENDING"
    after = only(h.ack(first), CDS)
    assert after.version == newest.get(CDS).version
    assert sorted(after.names) == ["a", "b", "c"]
    assert h.ack(after) == []
    assert h.state(CDS).responses == 2


# ----- NACK, stale nonces ---------------------------------------------------------------------------


def test_nack_is_recorded_and_only_the_refused_resource_is_held_back() -> None:
    h = Harness(snapshot_of(VIEW, *clusters("a")))
    good = only(h.request(sotw(CDS)))
    h.ack(good)
    bad_snapshot = snapshot_of(VIEW, *clusters("a", "bad", "new"))
    bad = only(h.set(bad_snapshot))
    message = "Error adding/updating cluster(s) bad: malformed IP address: not-an-ip"
    # At once, the same config without the refused cluster: the rest of the edit goes out.
    corrected = only(h.nack(bad, message, previous_version=good.version), CDS)
    assert sorted(corrected.names) == ["a", "new"]
    assert h.kinds[-1] is RequestKind.NACK
    state = h.state(CDS)
    assert state.rejection is not None
    assert state.rejection.version == bad.version
    assert state.rejection.message == message
    assert state.rejection.code == 3
    assert state.rejection.nonce == bad.out.nonce
    assert state.acked_version == good.version, "a NACK acknowledges nothing"
    assert state.nacks == 1
    assert state.status == "PENDING"
    h.ack(corrected)
    assert state.status == "HELD"
    assert [(held.name, held.message) for held in state.held_now] == [("bad", message)]

    # Never re-sent: not on the same snapshot, not on the client repeating its interest.
    assert h.set(bad_snapshot) == []
    assert h.set(snapshot_of(VIEW, *clusters("bad", "a", "new"))) == []
    assert h.request(sotw(CDS, version=corrected.version, nonce=corrected.out.nonce,
                          with_node=False)) == []
    assert state.responses == 3
    # Another change goes out, still without it.
    more = only(h.set(snapshot_of(VIEW, *clusters("a", "bad", "new", "more"))))
    assert sorted(more.names) == ["a", "more", "new"]
    h.ack(more)

    # New content of the refused resource is sent, and its ACK clears the HELD status.
    fixed_bad = snapshot_of(VIEW, *clusters("a", "new"), *clusters("bad", timeout_ms=2000))
    fixed = only(h.set(fixed_bad))
    assert sorted(fixed.names) == ["a", "bad", "new"]
    h.ack(fixed)
    assert state.status == "SYNCED"
    assert state.held_now == ()


def test_a_refused_resource_is_replaced_by_the_version_the_client_acknowledged() -> None:
    v1 = snapshot_of(VIEW, *clusters("a", "b"))
    h = Harness(v1)
    first = only(h.request(sotw(CDS)))
    h.ack(first)
    v2 = snapshot_of(VIEW, *clusters("a"), *clusters("b", timeout_ms=3000))
    refused = only(h.set(v2))
    back = only(h.nack(refused, "Error adding/updating cluster(s) b: no"), CDS)
    assert back.version == first.version  # b as the client had it
    h.ack(back)
    # The same refused content, even after other content in between, is not sent again.
    assert h.set(v1) == []
    assert h.set(v2) == []


def test_a_nack_naming_nothing_holds_back_what_the_response_changed() -> None:
    h = Harness(snapshot_of(VIEW, *clusters("a")), delta=True)
    h.ack(only(h.request(delta(CDS))))
    changed = only(h.set(snapshot_of(VIEW, *clusters("a"), *clusters("b", "c", timeout_ms=4000))))
    assert sorted(changed.names) == ["b", "c"]
    back = only(h.nack(changed, "invalid perl operator: (?="), CDS)
    assert sorted(back.out.removed) == ["b", "c"]
    assert sorted(held.name for held in h.state(CDS).held_now) == ["b", "c"]


def test_held_resources_are_shared_by_the_streams_of_a_server() -> None:
    held = HeldResources()
    snapshot = snapshot_of(VIEW, *clusters("a", "bad"))
    first = Harness(snapshot, held=held)
    refused = only(first.request(sotw(CDS)))
    first.nack(refused, "Error adding/updating cluster(s) bad: no")
    # An Envoy connecting afterwards never receives the refused version.
    second = Harness(snapshot, held=held)
    assert sorted(only(second.request(sotw(CDS))).names) == ["a"]


def test_a_refusal_holds_back_only_within_the_refusing_nodes_view() -> None:
    # Views share resources of equal content (every caller's cluster of a service): a node,
    # whose token proves only its own view, must not withhold them from another view.
    held = HeldResources()
    snapshot = snapshot_of(VIEW, *clusters("a", "bad"))
    first = Harness(snapshot, held=held)
    first.nack(only(first.request(sotw(CDS))), "Error adding/updating cluster(s) bad: no")
    other = Harness(snapshot_of("shop", *clusters("a", "bad")), held=held)
    request = sotw(CDS, with_node=False)
    request.node.CopyFrom(node("shop-1", "shop"))
    assert sorted(only(other.request(request)).names) == ["a", "bad"]
    assert other.state(CDS).held_now == ()


def test_stale_nonce_is_ignored() -> None:
    h = Harness(snapshot_of(VIEW, *clusters("a")))
    first = only(h.request(sotw(CDS)))
    h.ack(first)
    second = only(h.set(snapshot_of(VIEW, *clusters("a", "b"))))
    # A request answering the older response: neither an ACK nor a NACK of the newer one.
    assert h.request(sotw(CDS, version=first.version, nonce=first.out.nonce,
                          error="late NACK of the old one", with_node=False)) == []
    assert h.kind is RequestKind.STALE
    state = h.state(CDS)
    assert state.status == "PENDING"
    assert state.rejection is None
    assert state.acks == 1 and state.nacks == 0
    assert h.request(sotw(CDS, nonce="no-such-nonce", with_node=False)) == []
    assert h.kind is RequestKind.STALE
    h.ack(second)
    assert h.kind is RequestKind.ACK
    assert state.status == "SYNCED"


def test_stale_nonce_does_not_change_a_named_subscription() -> None:
    snap = snapshot_of(VIEW, load_assignment("a"), load_assignment("b"))
    h = Harness(snap)
    first = only(h.request(sotw(EDS, ["a"])))
    h.ack(first, ["a"])
    assert h.request(sotw(EDS, ["a", "b"], nonce="0", with_node=False)) == []
    assert h.kind is RequestKind.STALE
    assert h.state(EDS).names == frozenset({"a"})


# ----- SotW named subscriptions (EDS) ---------------------------------------------------------------


def test_named_eds_sends_only_subscribed_names() -> None:
    snap = snapshot_of(VIEW, *(load_assignment(n, [8000 + i]) for i, n in enumerate("abc")))
    h = Harness(snap)
    first = only(h.request(sotw(EDS, ["a"])), EDS)
    assert first.names == ["a"]
    assert not h.state(EDS).wildcard
    assert h.ack(first, ["a"]) == []

    # Adding a name sends just it (SotW EDS responses need not repeat unchanged ones).
    added = only(h.request(sotw(EDS, ["a", "b"], version=first.version, nonce=first.out.nonce,
                                with_node=False)))
    assert h.kind is RequestKind.SUBSCRIBE
    assert added.names == ["b"]
    assert added.messages["b"] == load_assignment("b", [8001])
    assert h.ack(added, ["a", "b"]) == []

    # Only a change to a subscribed name is sent.
    assert h.set(snapshot_of(VIEW, load_assignment("a", [8000]), load_assignment("b", [8001]),
                             load_assignment("c", [9999]))) == []
    changed = only(h.set(snapshot_of(VIEW, load_assignment("a", [7000]),
                                     load_assignment("b", [8001]), load_assignment("c", [9999]))))
    assert changed.names == ["a"]
    assert h.ack(changed, ["a", "b"]) == []

    # Removing a name sends nothing; re-adding it sends it again.
    assert h.request(sotw(EDS, ["a"], version=changed.version, nonce=changed.out.nonce,
                          with_node=False)) == []
    assert h.state(EDS).names == frozenset({"a"})
    again = only(h.request(sotw(EDS, ["a", "b"], version=changed.version,
                                nonce=changed.out.nonce, with_node=False)))
    assert again.names == ["b"]


def test_named_eds_unknown_name_sends_nothing_until_it_exists() -> None:
    h = Harness(snapshot_of(VIEW, load_assignment("a")))
    assert h.request(sotw(EDS, ["ghost"])) == []
    appeared = only(h.set(snapshot_of(VIEW, load_assignment("a"), load_assignment("ghost"))))
    assert appeared.names == ["ghost"]


# ----- SotW reconnects ------------------------------------------------------------------------------


def test_sotw_reconnect_with_matching_version_gets_nothing() -> None:
    snap = world()
    h = Harness(snap)
    assert h.request(sotw(CDS, version=snap.get(CDS).version)) == []
    assert h.request(sotw(LDS, version=snap.get(LDS).version, with_node=False)) == []
    assert h.request(sotw(EDS, ["a", "b"], version=snap.get(EDS).version,
                          with_node=False)) == []
    assert h.request(sotw(RDS, ["r"], version=snap.get(RDS).version, with_node=False)) == []
    assert h.state(CDS).acked_version == snap.get(CDS).version
    # ... but a change afterwards is sent as usual.
    changed = only(h.set(world(timeout_ms=5000)), CDS)
    assert sorted(changed.names) == ["a", "b"]


def test_sotw_reconnect_with_other_version_gets_everything() -> None:
    snap = world()
    h = Harness(snap)
    cds = only(h.request(sotw(CDS, version="some-older-version")))
    assert sorted(cds.names) == ["a", "b"]
    h.ack(cds)
    eds = only(h.request(sotw(EDS, ["a", "b"], version="some-older-version",
                              with_node=False)))
    assert sorted(eds.names) == ["a", "b"]


# ----- delta ----------------------------------------------------------------------------------------


def test_delta_wildcard_first_response_then_only_changes() -> None:
    snap = snapshot_of(VIEW, *clusters("a", "b", "c"))
    h = Harness(snap, delta=True)
    first = only(h.request(delta(CDS)), CDS)
    assert sorted(first.names) == ["a", "b", "c"]
    assert first.removed == []
    versions = {r.name: r.version for r in first.msg.resources}
    assert versions == {n: snap.get(CDS)[n].version for n in "abc"}
    assert h.ack(first) == []
    assert h.kind is RequestKind.ACK

    changed = only(h.set(snapshot_of(VIEW, eds_cluster("a"), eds_cluster("b", connect_timeout_ms=9),
                                     eds_cluster("c"))))
    assert changed.names == ["b"]
    assert changed.removed == []
    h.ack(changed)

    removed = only(h.set(snapshot_of(VIEW, eds_cluster("a"),
                                     eds_cluster("b", connect_timeout_ms=9))))
    assert removed.names == []
    assert removed.removed == ["c"]
    h.ack(removed)
    assert h.set(snapshot_of(VIEW, eds_cluster("b", connect_timeout_ms=9), eds_cluster("a"))) == []


def test_delta_named_subscribe_and_unsubscribe() -> None:
    snap = snapshot_of(VIEW, load_assignment("a"), load_assignment("b"), load_assignment("c"))
    h = Harness(snap, delta=True)
    first = only(h.request(delta(EDS, ["a"])))
    assert first.names == ["a"]
    h.ack(first)
    more = only(h.request(delta(EDS, ["b"], with_node=False)))
    assert more.names == ["b"]
    h.ack(more)
    assert h.request(delta(EDS, unsubscribe=["a"], with_node=False)) == []
    assert h.state(EDS).names == frozenset({"b"})
    # A change to an unsubscribed resource is not sent; one to a subscribed one is.
    assert h.set(snapshot_of(VIEW, load_assignment("a", [1]), load_assignment("b"),
                             load_assignment("c"))) == []
    changed = only(h.set(snapshot_of(VIEW, load_assignment("a", [1]), load_assignment("b", [2]),
                                     load_assignment("c"))))
    assert changed.names == ["b"]
    h.ack(changed)
    # Re-subscribing sends the resource again.
    again = only(h.request(delta(EDS, ["a"], with_node=False)))
    assert again.names == ["a"]
    assert again.messages["a"] == load_assignment("a", [1])


def test_delta_initial_resource_versions_wildcard() -> None:
    snap = snapshot_of(VIEW, *clusters("a", "b", "c"))
    current = {n: snap.get(CDS)[n].version for n in "abc"}
    h = Harness(snap, delta=True)
    sent = only(h.request(delta(CDS, initial={"a": current["a"], "b": "old", "gone": "x"})))
    assert sorted(sent.names) == ["b", "c"], "unchanged a is not sent, changed b and new c are"
    assert sent.removed == ["gone"], "a wildcard client holding a vanished resource is told"
    h.ack(sent)
    assert h.state(CDS).status == "SYNCED"


def test_delta_initial_resource_versions_all_current_sends_nothing() -> None:
    snap = snapshot_of(VIEW, *clusters("a", "b"))
    h = Harness(snap, delta=True)
    assert h.request(delta(CDS, initial={n: snap.get(CDS)[n].version for n in "ab"})) == []
    state = h.stream.types[CDS]
    assert state.status == "SYNCED" and state.acked_version == snap.get(CDS).version
    changed = only(h.set(snapshot_of(VIEW, eds_cluster("a"), eds_cluster("b", connect_timeout_ms=7))))
    assert changed.names == ["b"]


def test_delta_fresh_wildcard_on_an_empty_view_is_answered_once() -> None:
    # Envoy holds its initialization until the first CDS response; an empty view must answer.
    h = Harness(snapshot_of(VIEW), delta=True)
    first = only(h.request(delta(CDS)), CDS)
    assert first.names == [] and first.removed == []
    assert h.ack(first) == []


def test_delta_initial_resource_versions_named() -> None:
    snap = snapshot_of(VIEW, load_assignment("a"), load_assignment("b"), load_assignment("c"))
    v = {n: snap.get(EDS)[n].version for n in "abc"}
    h = Harness(snap, delta=True)
    sent = only(h.request(delta(EDS, ["a", "b"], initial={"a": v["a"], "b": "stale"})))
    assert sent.names == ["b"]
    assert sent.removed == []


def test_delta_nack_is_recorded_and_not_resent() -> None:
    h = Harness(snapshot_of(VIEW, *clusters("a")), delta=True)
    h.ack(only(h.request(delta(CDS))))
    bad_snapshot = snapshot_of(VIEW, *clusters("a", "bad"))
    bad = only(h.set(bad_snapshot))
    # The client never held `bad`: it is told at once that it is gone.
    back = only(h.nack(bad, "cluster bad: unknown field"))
    assert (back.names, back.removed) == ([], ["bad"])
    assert h.kind is RequestKind.NACK
    assert h.state(CDS).rejection.message == "cluster bad: unknown field"
    h.ack(back)
    assert h.state(CDS).status == "HELD"
    assert h.set(bad_snapshot) == []
    fixed = only(h.set(snapshot_of(VIEW, *clusters("a", "good"))))
    assert fixed.names == ["good"]
    assert fixed.removed == []


def test_delta_stale_nonce_still_applies_the_subscription_change() -> None:
    # Delta requests are incremental: losing a subscription change would lose it for good.
    snap = snapshot_of(VIEW, load_assignment("a"), load_assignment("b"))
    h = Harness(snap, delta=True)
    first = only(h.request(delta(EDS, ["a"])))
    assert h.request(delta(EDS, ["b"], nonce="stale", with_node=False)) == []
    assert h.kind is RequestKind.STALE
    assert h.state(EDS).names == frozenset({"a", "b"})
    after = only(h.ack(first))
    assert after.names == ["b"]


# ----- ADS ordering, dependents, make before break -------------------------------------------------


def test_ads_order_cds_eds_lds_rds() -> None:
    h, _ = synced_ads(world())
    changed = world(timeout_ms=2000, ports={"a": 9001, "b": 9002}, listener_port=10001,
                    route_clusters=["b", "a"])
    sent = h.set(changed)
    assert short(sent) == ["clusters", "endpoints", "listeners", "routes"]
    for s in sent:
        assert s.version == changed.get(s.type_url).version


def test_ads_order_does_not_depend_on_the_order_types_were_opened() -> None:
    snap = world()
    h = Harness(snap)
    for req in (sotw(RDS, ["r"]), sotw(LDS, with_node=False), sotw(EDS, ["a", "b"],
                with_node=False), sotw(CDS, with_node=False)):
        for s in h.request(req):
            h.ack(s, req.resource_names)
    sent = h.set(world(timeout_ms=2000, ports={"a": 1}, listener_port=2, route_clusters=["a"]))
    assert short(sent) == ["clusters", "endpoints", "listeners", "routes"]


def test_in_flight_type_holds_back_later_types() -> None:
    h, _ = synced_ads(world())
    cds, eds = h.set(world(timeout_ms=2000))  # CDS and (forced) EDS now in flight
    assert (cds.type_url, eds.type_url) == (CDS, EDS)
    # A second change touches clusters and routes: routes must not overtake the clusters.
    newest = world(timeout_ms=3000, route_clusters=["a"])
    assert h.set(newest) == []
    assert h.ack(eds, ["a", "b"]) == [], "RDS is free, but the clusters' change is held"
    assert h.state(CDS).status == "PENDING"
    assert h.state(RDS).status == "SYNCED"
    after = h.ack(cds)
    assert short(after) == ["clusters", "endpoints", "routes"]
    assert after[0].version == newest.get(CDS).version
    assert after[2].version == newest.get(RDS).version


def test_type_in_flight_without_pending_change_does_not_hold_back() -> None:
    h, _ = synced_ads(world())
    sent = h.set(world(timeout_ms=2000))
    assert short(sent) == ["clusters", "endpoints"]
    # Clusters still in flight, but with nothing new: a routes change goes out now.
    routes = only(h.set(world(timeout_ms=2000, route_clusters=["a"])), RDS)
    assert routes.names == ["r"]


def test_changed_eds_cluster_is_followed_by_its_endpoints() -> None:
    snap = world()
    h, last = synced_ads(snap)
    sent = h.set(world(cluster_names=["a", "b"], timeout_ms=4000))  # only the clusters changed
    assert short(sent) == ["clusters", "endpoints"]
    cds, eds = sent
    assert sorted(eds.names) == ["a", "b"]
    assert eds.messages["a"] == load_assignment("a")
    assert eds.version == last[EDS].version, "same endpoints, same version"
    h.ack(cds)
    assert h.ack(eds, ["a", "b"]) == []


def test_new_cluster_endpoints_come_in_the_same_batch() -> None:
    h, last = synced_ads(world())
    grown = world(cluster_names=["a", "b", "n"])
    sent = h.set(grown)
    assert short(sent)[:2] == ["clusters", "endpoints"]
    cds, eds = sent[0], sent[1]
    assert "n" in cds.names
    assert eds.names == ["n"], "the new cluster's endpoints, before Envoy asks"
    # Envoy asks for n with its older EDS nonce (stale), then ACKs both responses.
    assert h.request(sotw(EDS, ["a", "b", "n"], version=last[EDS].version,
                          nonce=last[EDS].out.nonce, with_node=False)) == []
    assert h.kind is RequestKind.STALE
    h.ack(cds)
    rest = h.ack(eds, ["a", "b", "n"])
    assert EDS not in {s.type_url for s in rest}
    assert h.state(EDS).names == frozenset({"a", "b", "n"})


def test_new_listener_routes_come_in_the_same_batch() -> None:
    h, _ = synced_ads(world())
    sent = h.set(world(extra=[rds_listener("l2", "r2", port=10002), route_config("r2", ["a"])]))
    assert short(sent) == ["listeners", "routes"]
    assert sorted(sent[0].names) == ["l", "l2"]
    assert sent[1].names == ["r2"], "the new listener's routes, before Envoy asks"
    h.ack(sent[0])
    assert h.ack(sent[1], ["r", "r2"]) == []
    assert h.state(RDS).names == frozenset({"r", "r2"})


def test_delta_anticipated_endpoints_confirmed_are_not_sent_twice() -> None:
    h, _ = synced_ads(world(), delta_mode=True)
    cds, eds = h.set(world(cluster_names=["a", "b", "n"], route_clusters=["a", "b"]))
    assert eds.names == ["n"]
    # Envoy subscribes to n while applying the clusters, then ACKs both responses.
    assert h.request(delta(EDS, ["n"], with_node=False)) == []
    h.ack(cds)
    assert h.ack(eds) == []
    changed = only(h.set(world(cluster_names=["a", "b", "n"], route_clusters=["a", "b"],
                               ports={"n": 1234})))
    assert changed.names == ["n"]


def test_anticipated_endpoints_not_confirmed_are_dropped() -> None:
    h, _ = synced_ads(world())
    cds, eds = h.set(world(cluster_names=["a", "b", "n"]))[:2]
    h.ack(cds)
    h.ack(eds, ["a", "b"])  # the client does not want n after all
    assert h.state(EDS).names == frozenset({"a", "b"})
    assert h.set(world(cluster_names=["a", "b", "n"], ports={"n": 4444})) == []


def test_removed_cluster_stays_until_new_routes_were_sent() -> None:
    h, _last = synced_ads(world(cluster_names=["a", "b"]))
    # b disappears, and the routes stop naming it, in the same snapshot.
    shrunk = world(cluster_names=["a"])
    sent = h.set(shrunk)
    assert short(sent) == ["routes"], "the held routes still name b: keep it in CDS for now"
    routes = sent[0]
    assert h.state(CDS).known.keys() >= {"a", "b"}
    assert sorted(routes.messages["r"].virtual_hosts[0].routes[0].route.cluster) == ["a"]
    # Once the new routes went out (and are answered), b is removed.
    after = h.ack(routes, ["r"])
    cds = only(after, CDS)
    assert cds.names == ["a"]
    assert cds.version == shrunk.get(CDS).version
    h.ack(cds)
    assert h.state(CDS).status == "SYNCED"


def test_removed_cluster_not_named_by_anything_is_removed_at_once() -> None:
    h, _ = synced_ads(world(cluster_names=["a", "b"], route_clusters=["a"]))
    sent = h.set(world(cluster_names=["a"], route_clusters=["a"]))
    assert short(sent) == ["clusters"]
    assert sent[0].names == ["a"]


def test_delta_removed_cluster_waits_for_routes() -> None:
    h, _ = synced_ads(world(cluster_names=["a", "b"]), delta_mode=True)
    sent = h.set(world(cluster_names=["a"]))
    assert short(sent) == ["routes"]
    cds = only(h.ack(sent[0]), CDS)
    assert cds.removed == ["b"]
    assert cds.names == []


def test_delta_changed_cluster_is_followed_by_its_endpoints() -> None:
    h, _ = synced_ads(world(), delta_mode=True)
    sent = h.set(world(cluster_names=["a", "b"], timeout_ms=1500))
    assert short(sent) == ["clusters", "endpoints"]
    assert sorted(sent[1].names) == ["a", "b"]


# ----- protocol errors ------------------------------------------------------------------------------


def test_first_request_without_node_is_a_protocol_error() -> None:
    stream = XdsStream(delta=False, ads=True)
    with pytest.raises(ProtocolError, match="node"):
        stream.on_request(sotw(CDS, with_node=False), 0.0)
    dstream = XdsStream(delta=True, ads=True)
    with pytest.raises(ProtocolError, match="node"):
        dstream.on_request(delta(CDS, with_node=False), 0.0)


def test_ads_request_without_type_url_is_a_protocol_error() -> None:
    stream = XdsStream(delta=False, ads=True)
    with pytest.raises(ProtocolError, match="type_url"):
        stream.on_request(sotw(""), 0.0)


def test_per_type_stream_rejects_other_types_and_defaults_its_own() -> None:
    with pytest.raises(ValueError):
        XdsStream(delta=False, ads=False)
    h = Harness(world(), ads=False, type_url=CDS)
    sent = only(h.request(sotw("")), CDS)  # per-type services may leave type_url empty
    assert sorted(sent.names) == ["a", "b"]
    with pytest.raises(ProtocolError, match="serves"):
        h.stream.on_request(sotw(EDS, ["a"], with_node=False), 0.0)
    d = Harness(world(), delta=True, ads=False, type_url=EDS)
    assert only(d.request(delta(EDS, ["a"]))).names == ["a"]
    with pytest.raises(ProtocolError):
        d.stream.on_request(delta(CDS, with_node=False), 0.0)


def test_per_type_stream_does_not_retain_removed_clusters() -> None:
    # Make before break across types needs ADS; a CDS-only stream just follows its snapshot.
    h = Harness(world(cluster_names=["a", "b"]), ads=False, type_url=CDS)
    h.ack(only(h.request(sotw(CDS))))
    assert only(h.set(world(cluster_names=["a"]))).names == ["a"]


# ----- status strings --------------------------------------------------------------------------------


def test_status_strings() -> None:
    h = Harness()
    h.request(sotw(CDS))
    state = h.state(CDS)
    assert state.status == "NOT_SENT"
    first = only(h.set(snapshot_of(VIEW, *clusters("a"))))
    assert state.status == "PENDING"
    h.ack(first)
    assert state.status == "SYNCED"
    second = only(h.set(snapshot_of(VIEW, *clusters("a", "b"))))
    assert state.status == "PENDING"
    # Envoy refused b: a is sent back in its place at once (PENDING), then b is HELD back.
    assert state.status == "PENDING"
    corrected = only(h.nack(second, "rejected"))
    assert state.status == "PENDING"
    assert state.rejection is not None
    h.ack(corrected)
    assert state.status == "HELD"
    third = only(h.set(snapshot_of(VIEW, *clusters("c"))))
    assert state.status == "PENDING"
    h.ack(third)
    assert state.status == "SYNCED"


def test_held_versions_of_one_name_in_two_views_are_held_apart() -> None:
    held = HeldResources()
    one = Harness(snapshot_of("one", *clusters("web", timeout_ms=1000)), held=held)
    two = Harness(snapshot_of("two", *clusters("web", timeout_ms=2000)), held=held)
    one.nack(only(one.request(sotw(CDS))), "Error adding/updating cluster(s) web: no")
    two.nack(only(two.request(sotw(CDS))), "Error adding/updating cluster(s) web: no")
    assert len(held.all()) == 2
    # Neither view's refused content is sent again, whichever was refused last.
    for view, timeout in (("one", 1000), ("two", 2000)):
        late = Harness(snapshot_of(view, *clusters("web", timeout_ms=timeout)), held=held)
        assert only(late.request(sotw(CDS))).names == []
