"""The xDS stream as a sans-I/O state machine: requests and snapshots in, responses out.

Rules of this module (after h11's `_state.py`):
- Everything that decides what an Envoy is sent lives here; the gRPC servicer only moves bytes.
- No I/O, no clocks (the caller passes `now`), no locks: one instance per stream, one task feeds it.
- It knows nothing of the policy language; it sees snapshots of serialized resources.

Theory of operation
-------------------
Per resource type the stream keeps a `TypeState`: the client's subscription (wildcard and/or
names), `known` (the resources the client holds by our account: updated when we send, so a version
that was sent, even one that was rejected, is never sent again), the nonce in flight, and the
ACK/NACK record. `responses()` plans, for every type the client has opened, what differs between
`known` and the current snapshot, and returns the responses to send now:

- One response per type in flight: a type waits for its ACK or NACK before its next response, and
  the next response is computed from the newest snapshot at that moment. A slow Envoy therefore
  gets the latest config, never a queue of stale ones.
- ADS order (make before break): types are planned in `types.ADS_ORDER`; a type whose change is
  held back (its previous response is still in flight) holds back every later type too, so a route
  never overtakes the cluster it names.
- A cluster sent new or changed is followed by its endpoints, and a listener by its route
  configurations, in the same batch, even if the client has not asked for them yet: Envoy
  processes an ADS stream in order and registers those watches while it applies the cluster or
  listener, so they leave warming at once instead of waiting for another round trip.
- A cluster the snapshot dropped stays in what an ADS client is sent while a route or listener that
  the client holds, and that is about to be replaced, still names it.
- Versions are content hashes: a reconnecting client whose SotW `version_info` (or delta
  `initial_resource_versions`) matches the snapshot is sent nothing.
- Stale nonces (SotW) are ignored; the client repeats its interest with the newest nonce.
- A NACK is contained to what Envoy refused: the resources of the rejected response that Envoy's
  message names (else the ones that response changed) are held back, by content version, in
  `HeldResources` (shared by the streams of one view): in their place the client is sent the
  version it last acknowledged (nothing, if it never had one), at once, so the rest of the
  change goes out and is acknowledged, and no stream is sent that content again. A new version
  of the resource (its input changed) is sent as usual.
- VHDS (`vhds=True`, on a delta ADS stream only): route configurations are sent thin, their
  virtual hosts as `VirtualHost` resources (`xds/vhds.py`); a VHDS subscription names route
  configurations (Envoy's namespaces) or, as Envoy's does by default, is a wildcard one (every
  virtual host of the view; Envoy sorts them by namespace); a virtual host gone is sent removed.
"""

from __future__ import annotations

import enum
import re
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshpilot.base import types
from meshpilot.xds import wire
from meshpilot.xds.resources import Resource, ResourceMap, set_version
from meshpilot.xds.snapshot import Snapshot
from meshpilot.xds.vhds import namespace_of

WILDCARD = "*"


class ProtocolError(Exception):
    """The client broke the protocol; the stream is closed with INVALID_ARGUMENT."""


class RequestKind(enum.Enum):
    SUBSCRIBE = "subscribe"  # a first request or a change of interest, acknowledging nothing
    ACK = "ack"
    NACK = "nack"
    STALE = "stale"  # a nonce that is not the newest sent: ignored


@dataclass(frozen=True, slots=True)
class Outbound:
    """One response to write: the encoded bytes plus what they carry, for status and tests."""

    type_url: str
    nonce: str
    version: str
    payload: bytes
    names: tuple[str, ...]
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejection:
    """A NACK: the version Envoy refused and Envoy's own error text."""

    version: str
    nonce: str
    message: str
    code: int
    at: float


@dataclass(frozen=True, slots=True)
class Held:
    """A resource version an Envoy refused: held back from its view's streams until it
    changes."""

    type_url: str
    name: str
    version: str
    message: str  # Envoy's
    node: str  # the node that refused it first
    at: float
    view: str = ""  # the refusing node's cluster: only that view's streams hold it back


class HeldResources:
    """Resource versions Envoys refused, by (view, type URL, name, version): what no stream of
    that view sends again.

    Shared by the streams of one server (one instance each otherwise); bounded, oldest
    forgotten first. An entry stops mattering once the resource's content changes: it is
    matched by version, so a new version is sent as usual. It is scoped to the refusing node's
    view: views share resources of equal content (every caller's cluster of a service), and a
    node, whose token proves only its own view, must not be able to withhold config from the
    others by refusing it."""

    def __init__(self, limit: int = 10_000):
        self.limit = limit
        self._held: OrderedDict[tuple[str, str, str, str], Held] = OrderedDict()
        self._by_type: dict[tuple[str, str], dict[str, dict[str, Held]]] = {}

    def __bool__(self) -> bool:
        return bool(self._held)

    def hold(self, held: Held) -> None:
        key = (held.view, held.type_url, held.name, held.version)
        if key in self._held:
            return  # the first refusal is kept (its node, its time)
        self._held[key] = held
        self._by_type.setdefault((held.view, held.type_url), {}).setdefault(
            held.name, {})[held.version] = held
        while len(self._held) > self.limit:
            (view, type_url, name, version), _ = self._held.popitem(last=False)
            versions = self._by_type[(view, type_url)][name]
            versions.pop(version, None)
            if not versions:
                del self._by_type[(view, type_url)][name]

    def of_type(self, type_url: str, view: str = "") -> Mapping[str, Mapping[str, Held]]:
        """name -> version -> Held, for one type in one view."""
        return self._by_type.get((view, type_url), {})

    def all(self) -> list[Held]:
        return list(self._held.values())


@dataclass(slots=True)
class _Claimed:
    """A resource a reconnecting client says it holds, known to us only by version."""

    name: str
    version: str
    refs: Any = None


@dataclass(slots=True)
class TypeState:
    type_url: str
    opened: bool = False
    wildcard: bool = False
    names: frozenset[str] = frozenset()
    known: Mapping[str, Resource | _Claimed] = field(default_factory=dict)
    known_shared: bool = False  # `known` is a snapshot's map: copy before changing it
    # What the client last acknowledged holding (`known` at its newest ACK): what a refused
    # resource is replaced by.
    acked: Mapping[str, Resource | _Claimed] = field(default_factory=dict)
    # Names whose content the newest response changed (a NACK of it is about these).
    last_changed: tuple[str, ...] = ()
    # Refused resources the newest plan replaced by the client's acknowledged version.
    held_now: tuple[Held, ...] = ()
    client_version: str | None = None  # SotW version_info of the first request (reconnects)
    claimed: bool = False  # delta: the first request listed initial_resource_versions
    # Those versions, until the first plan compares them with the snapshot (name -> version;
    # read-only: it may be one interned map shared by many streams, `xds/requests.py`).
    claims: Mapping[str, str] | None = None
    anticipated: set[str] = field(default_factory=set)
    force: set[str] = field(default_factory=set)
    nonce: str | None = None
    in_flight: bool = False
    sent_version: str = ""
    sent_at: float | None = None
    acked_version: str = ""
    acked_at: float | None = None
    rejection: Rejection | None = None
    cover_memo: tuple[frozenset[str], str, bool] | None = None
    responses: int = 0
    acks: int = 0
    nacks: int = 0
    resources_sent: int = 0

    @property
    def status(self) -> str:
        """SYNCED, PENDING (a response awaits its answer), NACKED or NOT_SENT."""
        if self.in_flight:
            return "PENDING"
        if not self.responses:
            return "SYNCED" if self.acked_version else "NOT_SENT"
        if self.rejection is not None and self.rejection.version == self.sent_version:
            return "NACKED"
        return "HELD" if self.held_now else "SYNCED"

    def _own_known(self) -> dict[str, Resource | _Claimed]:
        if self.known_shared or not isinstance(self.known, dict):
            self.known = dict(self.known)
            self.known_shared = False
        return self.known  # type: ignore[return-value]

    def forget(self, names: set[str] | frozenset[str]) -> None:
        if self.claims is not None and any(n in self.claims for n in names):
            self.claims = {n: v for n, v in self.claims.items() if n not in names}
        if any(n in self.known for n in names):
            known = self._own_known()
            for name in names:
                known.pop(name, None)


@dataclass(slots=True)
class _Plan:
    desired: Mapping[str, Resource | _Claimed]
    version: str
    send: Collection[Resource]  # the resources to carry (a map's values view: all of them)
    removed: list[str]
    changed: list[str]  # names whose content the client did not have before


class XdsStream:
    """One Envoy's xDS stream: SotW or delta, aggregated (ADS) or for a single type."""

    def __init__(self, *, delta: bool, ads: bool, type_url: str | None = None,
                 control_plane_id: str = "meshpilot", held: HeldResources | None = None,
                 vhds: bool = False):
        """`held`: the refused resource versions no stream sends again, shared by a server's
        streams (a new one of this stream's own by default). `vhds`: send route
        configurations in the VHDS layout, if this is a delta ADS stream (Envoy takes VHDS
        only over delta; a per-type stream could not carry the virtual hosts)."""
        if not ads and type_url is None:
            raise ValueError("a non-ADS stream serves exactly one type_url")
        self.held = held if held is not None else HeldResources()
        self.delta = delta
        self.ads = ads
        self.vhds = vhds and delta and ads
        self.only_type = type_url
        self.node: Any = None
        self.snapshot: Snapshot | None = None
        self.types: dict[str, TypeState] = {}
        self._nonce = 0
        self._control_plane = wire.control_plane(control_plane_id)

    # ---- inputs -------------------------------------------------------------------------------

    def on_request(self, request: Any, now: float) -> tuple[str, RequestKind]:
        """Feed a DiscoveryRequest (or DeltaDiscoveryRequest); returns its type and what it was."""
        if self.node is None:
            if not request.HasField("node"):
                raise ProtocolError("the first request on a stream must carry the node")
            self.node = request.node
        type_url = request.type_url or self.only_type
        if not type_url:
            raise ProtocolError("an ADS request must name its type_url")
        if self.only_type is not None and type_url != self.only_type:
            raise ProtocolError(f"this stream serves {self.only_type}, not {type_url}")
        state = self.types.get(type_url)
        if state is None:
            state = self.types[type_url] = TypeState(type_url)
        if self.delta:
            return type_url, self._on_delta_request(state, request, now)
        return type_url, self._on_sotw_request(state, request, now)

    def on_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    # ---- SotW requests ------------------------------------------------------------------------

    def _on_sotw_request(self, state: TypeState, request: Any, now: float) -> RequestKind:
        nonce = request.response_nonce
        if nonce and nonce != state.nonce:
            return RequestKind.STALE
        kind = RequestKind.SUBSCRIBE
        if nonce and state.in_flight:
            kind = self._answer(state, request, now)
        names = frozenset(request.resource_names)
        if not state.opened:
            state.opened = True
            state.client_version = request.version_info or None
            state.wildcard = WILDCARD in names or (
                not names and state.type_url in types.WILDCARD_TYPES)
        elif names:
            state.wildcard = WILDCARD in names
        elif state.type_url not in types.WILDCARD_TYPES:
            state.wildcard = False
        if WILDCARD in names:  # (a copy of thousands of names per ACK otherwise)
            names -= {WILDCARD}
        if kind is not RequestKind.SUBSCRIBE:
            # The client answered a response that carried what we anticipated for it: what it
            # does not name now, it does not want.
            state.anticipated &= names
        state.anticipated -= names  # confirmed: already sent, nothing more to do
        dropped = state.names - names - state.anticipated
        if dropped:
            state.forget(dropped)
        self._set_names(state, names | state.anticipated if state.anticipated else names)
        return kind

    def _set_names(self, state: TypeState, names: frozenset[str]) -> None:
        """Replace the subscription, keeping the same object when nothing changed and sharing
        the snapshot's own name set when it is the same: memos keyed on the object keep
        hitting, and a thousand streams subscribed to everything hold one set, not a thousand."""
        if names == state.names:
            return
        if self.snapshot is not None:
            canonical = self.served(state.type_url).name_set()
            if names == canonical:
                names = canonical
        state.names = names

    # ---- delta requests -----------------------------------------------------------------------

    def _on_delta_request(self, state: TypeState, request: Any, now: float) -> RequestKind:
        # Frozen, and not copied when the request's are already (a resuming request shared by
        # the streams of a reconnect storm names a thousand clusters: three copies per stream).
        subscribe = _frozen(request.resource_names_subscribe)
        unsubscribe = _frozen(request.resource_names_unsubscribe)
        if not state.opened:
            state.opened = True
            # Envoy's VHDS subscription starts as a wildcard one (its watch takes the virtual
            # hosts of its route configuration by namespace), unless it names the configuration.
            state.wildcard = WILDCARD in subscribe or (
                not subscribe and (state.type_url in types.WILDCARD_TYPES
                                   or state.type_url == types.VIRTUAL_HOST))
            self._set_names(state, subscribe - {WILDCARD} if WILDCARD in subscribe
                            else subscribe)
            initial = request.initial_resource_versions
            if not isinstance(initial, dict):
                initial = dict(initial)  # a protobuf map: this stream's own copy
            if initial:
                state.claimed = True
                state.claims = initial  # settled against the snapshot by the first plan
                state.known_shared = False
        else:
            if WILDCARD in subscribe:
                state.wildcard = True
            if WILDCARD in unsubscribe:
                state.wildcard = False
            added = subscribe - {WILDCARD} if WILDCARD in subscribe else subscribe
            removed = unsubscribe - {WILDCARD} if WILDCARD in unsubscribe else unsubscribe
            confirmed = added & state.anticipated
            state.anticipated -= confirmed
            fresh = added - confirmed
            if fresh:
                # A (re)subscription asks for the resource whatever we think the client has.
                state.forget(self._held_under(state, fresh))
            if added or removed:
                self._set_names(state, (state.names | added) - removed)
            state.anticipated -= removed
            if removed:
                state.forget(self._held_under(state, removed))
        nonce = request.response_nonce
        if not nonce:
            return RequestKind.SUBSCRIBE
        if nonce != state.nonce:
            return RequestKind.STALE
        if not state.in_flight:
            return RequestKind.SUBSCRIBE  # the same nonce again: a change of interest only
        return self._answer(state, request, now)

    @staticmethod
    def _held_under(state: TypeState, names: frozenset[str]) -> frozenset[str]:
        """`names`, and for VHDS (whose subscriptions name route configurations) the virtual
        hosts the client holds in those namespaces."""
        if state.type_url != types.VIRTUAL_HOST:
            return names
        return names | {n for n in state.known if namespace_of(n) in names}

    # ---- ACK / NACK ---------------------------------------------------------------------------

    def _answer(self, state: TypeState, request: Any, now: float) -> RequestKind:
        state.in_flight = False
        if request.HasField("error_detail"):
            state.nacks += 1
            message = request.error_detail.message
            state.rejection = Rejection(version=state.sent_version, nonce=state.nonce or "",
                                        message=message,
                                        code=request.error_detail.code, at=now)
            node = self.node.id if self.node is not None else ""
            for name in refused_names(state.last_changed, message):
                sent = state.known.get(name)
                if sent is not None:
                    self.held.hold(Held(state.type_url, name, sent.version, message, node, now,
                                        self.node_cluster))
            return RequestKind.NACK
        state.acks += 1
        state.acked_version = state.sent_version
        state.acked_at = now
        state.acked = state.known
        return RequestKind.ACK

    # ---- outputs ------------------------------------------------------------------------------

    def responses(self, now: float) -> list[Outbound]:
        """Everything that should be written now, in order. Call after every input."""
        if self.snapshot is None or self.node is None:
            return []
        out: list[Outbound] = []
        held = False
        for type_url in self._order():
            state = self.types[type_url]
            plan = self._plan(state)
            if plan is None:
                continue
            if state.in_flight or held:
                held = True  # a later type must not overtake this one's pending change
                continue
            out.append(self._send(state, plan, now))
            self._after_send(state, plan)
        return out

    def _order(self) -> list[str]:
        opened = [t for t, s in self.types.items() if s.opened]
        ordered = [t for t in types.ADS_ORDER if t in opened]
        return ordered + sorted(t for t in opened if t not in types.ADS_ORDER)

    def _desired(self, state: TypeState) -> tuple[Mapping[str, Resource | _Claimed], str]:
        assert self.snapshot is not None
        current = self.served(state.type_url)
        if self.vhds and state.type_url == types.VIRTUAL_HOST and not state.wildcard:
            base = self.snapshot.vhds().subscribed(state.names)
        elif state.wildcard or self._covers(state, current):
            base: Mapping[str, Resource | _Claimed] = current
        else:
            base = {n: current[n] for n in sorted(state.names) if n in current}
        retained = self._retained_clusters(state, current) if state.wildcard else {}
        if retained:
            merged = dict(base)
            merged.update(retained)
            base = merged
        if self.held:
            base = self._without_held(state, base)
        elif state.held_now:
            state.held_now = ()
        if isinstance(base, ResourceMap):
            return base, base.version
        return base, set_version(base)  # type: ignore[arg-type]

    def served(self, type_url: str) -> ResourceMap:
        """The newest map of `type_url` this stream serves: the snapshot's, or for a VHDS
        stream its layout's route configurations and virtual hosts."""
        assert self.snapshot is not None
        if self.vhds:
            found = self.snapshot.vhds().get(type_url)
            if found is not None:
                return found
        return self.snapshot.get(type_url)

    @property
    def node_cluster(self) -> str:
        """The node's cluster (its view), once its first request named the node."""
        return self.node.cluster if self.node is not None else ""

    def _without_held(self, state: TypeState, base: Mapping[str, Resource | _Claimed]
                      ) -> Mapping[str, Resource | _Claimed]:
        """`base` with each refused resource version replaced by the one the client last
        acknowledged, or left out if it never acknowledged one."""
        refused = self.held.of_type(state.type_url, self.node_cluster)
        found = [held for name, versions in refused.items()
                 if (r := base.get(name)) is not None and (held := versions.get(r.version))]
        state.held_now = tuple(found)
        if not found:
            return base
        out = dict(base)
        for held in found:
            previous = state.acked.get(held.name)
            if previous is not None and previous.version != held.version:
                out[held.name] = previous
            else:
                del out[held.name]
        return out

    @staticmethod
    def _covers(state: TypeState, current: ResourceMap) -> bool:
        """Whether the subscription names exactly the snapshot's resources (the common case:
        Envoy asks for the endpoints of every cluster), so the shared map can be used as is.
        Memoized on the names object and the map's name set: O(1) per push when neither moved."""
        if state.names is current.name_set():
            return True
        memo = state.cover_memo
        if memo is not None and memo[0] is state.names and memo[1] == current.names_version:
            return memo[2]
        names = state.names
        covered = len(names) == len(current) and all(n in names for n in current)
        state.cover_memo = (names, current.names_version, covered)
        return covered

    def _plan(self, state: TypeState) -> _Plan | None:
        desired, version = self._desired(state)
        if state.claims is not None:
            self._settle_claims(state, desired)
        if not state.responses and state.client_version == version:
            # A reconnecting SotW client already holds exactly this: send nothing.
            self._adopt(state, desired, version)
            return None
        changed = _changed(desired, state.known)
        forced: list[str] = []
        if state.force:
            forced = [n for n in state.force if n in desired and n not in changed]
            state.force.intersection_update(desired)
        if self.delta:
            # Delta tells a wildcard subscriber what is gone; SotW CDS/LDS say it by omission.
            # A VHDS subscription names a route configuration: its virtual hosts come and go.
            removed = (_removed(desired, state.known)
                       if state.wildcard or state.type_url == types.VIRTUAL_HOST else [])
            # A wildcard subscription is always answered once, even when empty: Envoy holds its
            # initialization (and LDS) until the first CDS response, or until a 15 s timeout.
            first_wildcard = state.wildcard and not state.responses and not state.claimed
            if not (changed or forced or removed or first_wildcard):
                if state.claimed and not state.responses:
                    # A reconnecting client that holds all of it: in sync without a response.
                    state.known, state.known_shared = desired, isinstance(desired, ResourceMap)
                    state.acked = desired
                    state.sent_version = state.acked_version = version
                return None
            send = [desired[n] for n in changed + forced]
        elif state.type_url in types.WILDCARD_TYPES or state.wildcard:
            # SotW CDS and LDS carry the whole state of the world every time.
            if version == state.sent_version and not forced:
                return None
            # Fix: hold back a rejected version only while it is the last one sent. Once the
            # client accepted another version, going back to the rejected content is a change
            # it must be sent (as delta and named SotW types do), not a silent divergence.
            if (state.rejection is not None and version == state.rejection.version
                    and state.sent_version == state.rejection.version):
                return None
            return _Plan(desired, version, desired.values(), [], changed)  # type: ignore[arg-type]
        else:
            if not (changed or forced):
                self._adopt(state, desired, state.sent_version)
                return None
            send = [desired[n] for n in changed + forced]
            removed = []
        return _Plan(desired, version, send, removed, changed)  # type: ignore[arg-type]

    @staticmethod
    def _settle_claims(state: TypeState, desired: Mapping[str, Resource | _Claimed]) -> None:
        """What a resuming delta client holds, from its initial_resource_versions. Usually it
        holds exactly the snapshot (a reconnect, a restarted or other replica): then it shares the
        snapshot's map, checked in one pass without an object per claim (a reconnect storm of
        thousands of streams claiming thousands of resources each). Otherwise, the claims."""
        claims, state.claims = state.claims or {}, None
        if isinstance(desired, ResourceMap):
            # One comparison in C, memoized on the map for claims shared by many streams.
            exact = desired.held_exactly(claims)
        else:
            exact = len(claims) == len(desired) and all(
                (held := desired.get(name)) is not None and held.version == version
                for name, version in claims.items())
        if exact:
            state.known, state.known_shared = desired, isinstance(desired, ResourceMap)
        else:
            state.known = {n: _Claimed(n, v) for n, v in claims.items()}
            state.known_shared = False
        state.acked = state.known

    def _adopt(self, state: TypeState, desired: Mapping[str, Resource | _Claimed],
               version: str) -> None:
        state.known = desired
        state.known_shared = isinstance(desired, ResourceMap)
        if not state.in_flight:
            state.acked = desired
        if not state.responses and state.client_version == version:
            state.sent_version = state.acked_version = version

    def _send(self, state: TypeState, plan: _Plan, now: float) -> Outbound:
        self._nonce += 1
        nonce = str(self._nonce)
        full = isinstance(plan.desired, ResourceMap) and len(plan.send) == len(plan.desired)
        # Who we are, in the stream's first response only: Envoy keeps the identifier it was
        # given (its `control_plane.identifier` readout) until a response names another, so
        # saying it again is 13 bytes of every response for nothing (a one-host VHDS edit is
        # ~300 bytes in all).
        control_plane = self._control_plane if self._nonce == 1 else b""
        if self.delta:
            payload = wire.delta_response(
                system_version=plan.version, type_url=state.type_url,
                entries=(r.delta_entry for r in plan.send), removed=plan.removed, nonce=nonce,
                control_plane_bytes=control_plane)
        else:
            body = (plan.desired.sotw_body() if full  # type: ignore[union-attr]
                    else b"".join(r.sotw_entry for r in plan.send))
            payload = wire.sotw_response(version=plan.version, type_url=state.type_url,
                                         resources_body=body, nonce=nonce,
                                         control_plane_bytes=control_plane)
        if full and len(plan.changed) == len(plan.desired):
            # Everything changed (a first response): the map's own names tuple, shared by
            # every stream, not a copy of a thousand names each.
            state.last_changed = plan.desired.names()  # type: ignore[union-attr]
        else:
            state.last_changed = (tuple(plan.changed) if full
                                  else tuple(r.name for r in plan.send))
        state.known = plan.desired
        state.known_shared = isinstance(plan.desired, ResourceMap)
        state.force.clear()
        state.nonce = nonce
        state.in_flight = True
        state.sent_version = plan.version
        state.sent_at = now
        state.responses += 1
        state.resources_sent += len(plan.send)
        names = (plan.desired.names() if full  # type: ignore[union-attr]
                 else tuple(r.name for r in plan.send))
        return Outbound(state.type_url, nonce, plan.version, payload, names, tuple(plan.removed))

    def _after_send(self, state: TypeState, plan: _Plan) -> None:
        """Queue the dependents of what was just sent, so they are not left warming."""
        if state.type_url == types.CLUSTER:
            wanted = {plan.desired[n].refs.eds_name for n in plan.changed}
            self._anticipate(types.ENDPOINT, {w for w in wanted if w})
        elif state.type_url == types.LISTENER:
            routes: set[str] = set()
            for name in plan.changed:
                routes |= plan.desired[name].refs.routes
            self._anticipate(types.ROUTE, routes)

    def _anticipate(self, type_url: str, names: set[str]) -> None:
        state = self.types.get(type_url)
        if state is None or not state.opened or not names:
            return
        state.force |= names
        unseen = {n for n in names if n not in state.names}
        if unseen and not state.wildcard:
            state.anticipated |= unseen
            self._set_names(state, state.names | unseen)

    def _retained_clusters(self, state: TypeState,
                           current: ResourceMap) -> dict[str, Resource | _Claimed]:
        """Clusters gone from the snapshot that a route or listener the client holds still names."""
        if not self.ads or state.type_url != types.CLUSTER or not state.known:
            return {}
        if isinstance(state.known, ResourceMap):
            _, gone = current.diff_from(state.known)
        else:
            gone = tuple(n for n in state.known if n not in current)
        if not gone:
            return {}
        assert self.snapshot is not None
        still_named: set[str] = set()
        for holder_type in (types.ROUTE, types.VIRTUAL_HOST, types.LISTENER):
            holder = self.types.get(holder_type)
            if holder is None:
                continue
            newest = self.served(holder_type)
            for name, held in holder.known.items():
                fresh = newest.get(name)
                if fresh is not None and fresh.version == held.version:
                    continue  # the client holds the current one; it names what it should
                if held.refs is not None:
                    still_named |= held.refs.clusters
        return {n: state.known[n] for n in gone if n in still_named}




def _frozen(names: Iterable[str]) -> frozenset[str]:
    return names if isinstance(names, frozenset) else frozenset(names)


def refused_names(changed: Iterable[str], message: str) -> list[str]:
    """Which of the resources a response changed Envoy's NACK is about: those its message
    names (Envoy's CDS and LDS say "Error adding/updating cluster(s) NAME: ..."), else all of
    them (Envoy's RDS and EDS messages often name none; a response usually changes one)."""
    changed = list(changed)
    named = [name for name in changed
             if re.search(rf"(?<![\w.|/\[-]){re.escape(name)}(?![\w.|/\[\]-])", message)]
    return named or changed


def _changed(desired: Mapping[str, Resource | _Claimed],
             known: Mapping[str, Resource | _Claimed]) -> list[str]:
    if desired is known:
        return []
    if isinstance(desired, ResourceMap) and isinstance(known, ResourceMap):
        return list(desired.diff_from(known)[0])
    return [n for n, r in desired.items()
            if (k := known.get(n)) is None or k.version != r.version]


def _removed(desired: Mapping[str, Resource | _Claimed],
             known: Mapping[str, Resource | _Claimed]) -> list[str]:
    if desired is known:
        return []
    if isinstance(desired, ResourceMap) and isinstance(known, ResourceMap):
        return list(desired.diff_from(known)[1])
    return [n for n in known if n not in desired]
