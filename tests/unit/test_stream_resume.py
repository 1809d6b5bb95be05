"""The delta resume fast path: requests decoded once for many streams (`xds/requests.py`) and
claims compared with a snapshot's map in one step (`ResourceMap.held_exactly`).

Every stream here is fed the bytes a client would send, through the same decoder the server
uses, and must send exactly what differs between its claims and the snapshot: nothing for a
matching claim, the changed and new resources (and removals for a wildcard type) for a partly
matching or stale one, whether its request was decoded fresh or shared with other streams.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from xds_client import CDS, EDS, eds_cluster, load_assignment, names_of, snapshot_of

from meshpilot.xds.requests import DeltaRequestDecoder, SharedDeltaRequest
from meshpilot.xds.resources import SharedClaims
from meshpilot.xds.snapshot import Snapshot
from meshpilot.xds.stream import XdsStream

VIEW = "edge"
COUNT = 60  # enough resources that a resume's request is past the decoder's sharing threshold


def _names(prefix: str = "c", count: int = COUNT) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(count)]


def _snapshot(timeouts: Mapping[str, int] | None = None, names: Iterable[str] | None = None
              ) -> Snapshot:
    timeouts = timeouts or {}
    names = list(names) if names is not None else _names()
    return snapshot_of(VIEW, *(eds_cluster(n, connect_timeout_ms=timeouts.get(n, 1000))
                               for n in names),
                       *(load_assignment(n, [8000 + i]) for i, n in enumerate(names)))


def _versions(snapshot: Snapshot, type_url: str) -> dict[str, str]:
    return {n: r.version for n, r in snapshot.get(type_url).items()}


def _request(type_url: str, *, node_id: str | None = "envoy-1", subscribe: Iterable[str] = (),
             unsubscribe: Iterable[str] = (), initial: Mapping[str, str] | None = None,
             nonce: str = "") -> bytes:
    request = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url, resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe), initial_resource_versions=initial or {},
        response_nonce=nonce)
    if node_id is not None:
        request.node.CopyFrom(base_pb2.Node(id=node_id, cluster=VIEW))
    return request.SerializeToString()


class Client:
    """One delta ADS stream fed through a decoder; responses decoded as real protobuf."""

    def __init__(self, decoder: DeltaRequestDecoder, snapshot: Snapshot):
        self.decoder = decoder
        self.stream = XdsStream(delta=True, ads=True)
        self.stream.on_snapshot(snapshot)
        self.now = 0.0
        self.decoded: list[Any] = []

    def send(self, data: bytes) -> list[Any]:
        self.now += 1
        request = self.decoder.decode(data)
        self.decoded.append(request)
        self.stream.on_request(request, self.now)
        return [discovery_pb2.DeltaDiscoveryResponse.FromString(o.payload)
                for o in self.stream.responses(self.now)]

    def set(self, snapshot: Snapshot) -> list[Any]:
        self.stream.on_snapshot(snapshot)
        self.now += 1
        return [discovery_pb2.DeltaDiscoveryResponse.FromString(o.payload)
                for o in self.stream.responses(self.now)]

    def ack(self, response: Any) -> list[Any]:
        return self.send(_request(response.type_url, node_id=None, nonce=response.nonce))


def _resume(client: Client, snapshot: Snapshot, node_id: str,
            cds: Mapping[str, str], eds: Mapping[str, str]) -> list[Any]:
    out = client.send(_request(CDS, node_id=node_id, initial=cds))
    out += client.send(_request(EDS, node_id=None, subscribe=sorted(eds) or _names(),
                                initial=eds))
    return out


def test_a_storm_of_matching_resumes_shares_one_decoded_request_and_sends_nothing() -> None:
    snap = _snapshot()
    decoder = DeltaRequestDecoder()
    cds, eds = _versions(snap, CDS), _versions(snap, EDS)
    clients = [Client(decoder, snap) for _ in range(5)]
    for i, client in enumerate(clients):
        assert _resume(client, snap, f"envoy-{i}", cds, eds) == []
    # Two distinct bodies (the CDS and the EDS resume), each parsed once for five streams.
    assert (decoder.misses, decoder.hits) == (2, 8)
    first, last = clients[0].decoded[0], clients[-1].decoded[0]
    assert isinstance(last, SharedDeltaRequest)
    assert last.initial_resource_versions is first.initial_resource_versions
    assert [c.stream.node.id for c in clients] == [f"envoy-{i}" for i in range(5)]
    for client in clients:
        for type_url in (CDS, EDS):
            state = client.stream.types[type_url]
            assert state.status == "SYNCED"
            assert state.acked_version == snap.get(type_url).version
            assert state.known is snap.get(type_url), "in sync: the snapshot's map, shared"
    # Resumed streams then follow a change like any other: exactly the changed cluster.
    changed = _snapshot({"c007": 5})
    for client in clients:
        sent = client.set(changed)
        assert [(r.type_url, names_of(r)) for r in sent] == [(CDS, ["c007"]), (EDS, ["c007"])]


def test_a_partly_matching_resume_is_sent_exactly_what_differs() -> None:
    snap = _snapshot()
    decoder = DeltaRequestDecoder()
    cds = _versions(snap, CDS)
    cds["c003"] = "stale"  # changed since the client got it
    del cds["c004"]  # new to the client
    cds["gone"] = "x"  # gone from the policy
    eds = _versions(snap, EDS)
    eds["c010"] = "stale"
    for i in range(3):  # the first decoded fresh, the others shared: the same answer
        client = Client(decoder, snap)
        sent = _resume(client, snap, f"envoy-{i}", cds, eds)
        assert [(r.type_url, sorted(names_of(r)), list(r.removed_resources)) for r in sent] == [
            (CDS, ["c003", "c004"], ["gone"]), (EDS, ["c010"], [])]
        assert [client.ack(r) for r in sent] == [[], []]
        assert client.stream.types[CDS].acked_version == snap.get(CDS).version
    assert decoder.hits == 4


def test_a_stale_resume_after_a_change_is_sent_the_change() -> None:
    old = _snapshot()
    new = _snapshot({"c001": 7, "c002": 7})
    decoder = DeltaRequestDecoder()
    cds, eds = _versions(old, CDS), _versions(old, EDS)
    # One stream resumes on the snapshot it held (nothing), the next after a change: the
    # shared claims compared with the newer map say "not exactly", and the diff is sent.
    assert _resume(Client(decoder, old), old, "envoy-0", cds, eds) == []
    late = Client(decoder, new)
    sent = _resume(late, new, "envoy-1", cds, eds)
    assert [(r.type_url, sorted(names_of(r))) for r in sent] == [(CDS, ["c001", "c002"])]
    assert decoder.hits == 2


def test_shared_claims_are_never_changed_by_one_stream() -> None:
    snap = _snapshot()
    decoder = DeltaRequestDecoder()
    eds = _versions(snap, EDS)
    eds["c000"] = "stale"
    a, b = Client(decoder, snap), Client(decoder, snap)
    a.send(_request(CDS, node_id="a"))
    b.send(_request(CDS, node_id="b"))
    body = _request(EDS, node_id=None, subscribe=_names(), initial=eds)
    # Stream a subscribes, and before its first plan unsubscribes c000: its claims lose it.
    a.stream.on_request(decoder.decode(body), 1.0)
    a.stream.on_request(decoder.decode(_request(EDS, node_id=None, unsubscribe=["c000"])), 2.0)
    shared = a.stream.types[EDS]
    assert shared.claims is not None and "c000" not in shared.claims
    # Stream b, sharing the decoded request, still claims the stale c000 and is sent it.
    sent = b.send(body)
    assert [(r.type_url, names_of(r)) for r in sent if r.type_url == EDS] == [(EDS, ["c000"])]
    assert b.decoded[-1].initial_resource_versions["c000"] == "stale"


def test_the_decoder_parses_what_it_does_not_share_as_usual() -> None:
    decoder = DeltaRequestDecoder()
    names = _names(count=200)
    # A first subscription (no claims), big: the stream's own message, the node included.
    subscribe = _request(EDS, node_id="envoy-9", subscribe=names)
    got = decoder.decode(subscribe)
    assert isinstance(got, discovery_pb2.DeltaDiscoveryRequest)
    assert got == discovery_pb2.DeltaDiscoveryRequest.FromString(subscribe)
    # An ACK: small, parsed as usual.
    ack = _request(CDS, node_id=None, nonce="3")
    assert decoder.decode(ack) == discovery_pb2.DeltaDiscoveryRequest.FromString(ack)
    # A resume whose node is not written first is shared as a whole (its node included).
    initial = {n: "v1" for n in names}
    tail_node = (discovery_pb2.DeltaDiscoveryRequest(type_url=CDS,
                                                     initial_resource_versions=initial)
                 .SerializeToString()
                 + discovery_pb2.DeltaDiscoveryRequest(node=base_pb2.Node(id="late"))
                 .SerializeToString())
    shared = decoder.decode(tail_node)
    assert shared.HasField("node") and shared.node.id == "late"
    assert dict(shared.initial_resource_versions) == initial
    assert (decoder.hits, decoder.misses) == (0, 1)


def test_the_decoder_is_bounded() -> None:
    decoder = DeltaRequestDecoder(limit=3)
    for i in range(10):
        initial = {n: f"v{i}" for n in _names()}
        decoder.decode(_request(CDS, node_id="n", initial=initial))
    assert len(decoder._memo) == 3 and decoder.misses == 10


def test_held_exactly_remembers_several_shared_claims() -> None:
    """A storm's requests of several client processes (each its own map order, so its own
    shared claims) arrive interleaved: each shared claims map is compared once, a stream's own
    claims are compared and not kept."""
    snap = _snapshot(names=_names(count=3))
    clusters = snap.get(CDS)
    exact = dict(_versions(snap, CDS))
    first, second = SharedClaims(exact), SharedClaims(reversed(list(exact.items())))
    wrong = SharedClaims({**exact, "c000": "other"})
    for _ in range(3):
        assert clusters.held_exactly(first) and clusters.held_exactly(second)
        assert not clusters.held_exactly(wrong)
    assert clusters._claims_memo is not None and len(clusters._claims_memo) == 3
    assert clusters.held_exactly(dict(exact))
    assert len(clusters._claims_memo) == 3  # not kept


def test_held_exactly_compares_claims_with_the_map() -> None:
    snap = _snapshot(names=_names(count=3))
    clusters = snap.get(CDS)
    exact = dict(_versions(snap, CDS))
    assert clusters.held_exactly(exact)
    assert clusters.held_exactly(exact), "memoized on the claims object: the same answer"
    assert not clusters.held_exactly({**exact, "c000": "other"})
    assert not clusters.held_exactly({n: v for n, v in exact.items() if n != "c001"})
    assert not clusters.held_exactly({**exact, "extra": "v"})
    assert not _snapshot({"c000": 9}, names=_names(count=3)).get(CDS).held_exactly(exact)
