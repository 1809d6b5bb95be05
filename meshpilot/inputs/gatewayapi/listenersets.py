"""ListenerSet: listeners of a Gateway written in documents of their own (GEP-1713).

A ListenerSet names its Gateway (`spec.parentRef`); the Gateway takes it only if its
`spec.allowedListeners.namespaces` lets the ListenerSet's namespace in (`from`: None, the
default; Same; All; Selector). A taken ListenerSet's listeners join the Gateway's own in the
spec's precedence: the Gateway's listeners, then ListenerSets oldest first, then by
namespace/name. A listener that conflicts with one before it in that order (the same port with
another protocol, or the same port, protocol and hostname) is refused, and the one before it
keeps serving. Routes attach to a ListenerSet's listeners only through a parentRef of kind
ListenerSet (a Gateway parentRef reaches the Gateway's own listeners only).

The XListenerSet of `gateway.networking.x-k8s.io/v1alpha1` (the experimental channel before
v1.5) is read as the same kind, and routes may name it as a parent by that group and kind.

This module decides which ListenerSets a Gateway takes and what their statuses say; the
compile step (`compile.py`) builds their listeners as it builds a Gateway's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from meshpilot.inputs.gatewayapi.kinds import EXPERIMENTAL_GROUP, GATEWAY_GROUP, KubeObject
from meshpilot.ir.model import Condition, ObjectStatus

# (group, kind) of the documents that are ListenerSets, as a route's parentRef names them
KINDS = frozenset({(GATEWAY_GROUP, "ListenerSet"), (EXPERIMENTAL_GROUP, "XListenerSet")})
KIND_NAMES = frozenset(kind for _, kind in KINDS)
# What `allowedListeners.namespaces.from` says when it is left out: no ListenerSet is taken.
DEFAULT_FROM = "None"
# Why a Gateway does not take a ListenerSet: (Accepted reason, Programmed reason, message)
Refusal = tuple[str, str, str]
# A ListenerSet naming a Gateway of the compile: (the Gateway's key, the ListenerSet, why the
# Gateway does not take it, or None: taken)
Known = tuple[str, KubeObject, Refusal | None]
# Whether a label selector selects a namespace (the compile step's, as for allowedRoutes)
Selects = Callable[[dict[str, Any], str], bool]


class SetListener(Protocol):
    """What this module reads of a listener the compile step built (`compile._Listener`)."""

    name: str
    index: int
    port: int
    protocol: str
    transport: str  # "tcp" or "udp": what the socket on the port speaks
    hostname: str | None
    kinds: tuple[str, ...]
    attached: int
    problems: list[tuple[str, str, str]]
    source: KubeObject | None  # the ListenerSet whose listener it is (None: the Gateway's)

    @property
    def valid(self) -> bool: ...


def names_listener_set(ref: dict[str, Any]) -> bool:
    """Whether a route's parentRef names a ListenerSet (its group defaults to Gateway API's)."""
    return (ref.get("group", GATEWAY_GROUP), ref.get("kind", "Gateway")) in KINDS


def parent_gateway(listener_set: KubeObject) -> str | None:
    """The key (ns/name) of the Gateway a ListenerSet names, or None: its parentRef names
    another kind."""
    ref = listener_set.spec()["parentRef"]
    if ref.get("group", GATEWAY_GROUP) != GATEWAY_GROUP or ref.get("kind", "Gateway") != "Gateway":
        return None
    return f"{ref.get('namespace') or listener_set.namespace}/{ref['name']}"


def in_precedence(listener_sets: Iterable[KubeObject]) -> list[KubeObject]:
    """Oldest first (creationTimestamp), then by namespace/name; without a creationTimestamp a
    ListenerSet sorts after every one that has one."""
    return sorted(listener_sets, key=lambda one: (
        one.body["metadata"].get("creationTimestamp") or "~", one.key))


def not_allowed(gateway: KubeObject, listener_set: KubeObject, selects: Selects) -> str | None:
    """Why the Gateway's `allowedListeners` keeps the ListenerSet out, or None: it is let in."""
    namespaces = (gateway.spec().get("allowedListeners") or {}).get("namespaces") or {}
    source = namespaces.get("from", DEFAULT_FROM)
    if source == "All":
        return None
    if source == "Same":
        if listener_set.namespace == gateway.namespace:
            return None
        return (f"Gateway {gateway.key} takes ListenerSets of its own namespace only "
                "(allowedListeners.namespaces.from: Same)")
    if source == "Selector":
        if selects(namespaces.get("selector") or {}, listener_set.namespace):
            return None
        return (f"namespace {listener_set.namespace} is not selected by Gateway "
                f"{gateway.key}'s allowedListeners.namespaces.selector")
    return (f"Gateway {gateway.key} takes no ListenerSets (allowedListeners.namespaces.from: "
            f"{source})")


L = TypeVar("L", bound=SetListener)


def merge(gateway: KubeObject, listener_sets: Sequence[KubeObject], own: Sequence[L],
          build: Callable[[int, dict[str, Any], KubeObject], L], selects: Selects,
          ) -> tuple[list[L], dict[str, Known]]:
    """The listeners of the `listener_sets` (in precedence) that `gateway` takes, each built by
    `build(index, spec, listener_set)`, to follow its `own`: one in conflict with a listener
    before it (the Gateway's, an older ListenerSet's, or an earlier one of its own) is refused
    (Accepted False, Conflicted True), and the one before it keeps its port. Also what became of
    each ListenerSet. (A listener name used twice in one ListenerSet refused the load already,
    as the API server refuses such a document: `kinds.py`.)"""
    before = [lst for lst in own if lst.protocol in _PROTOCOLS]
    taken: list[L] = []
    known: dict[str, Known] = {}
    for listener_set in listener_sets:
        why = not_allowed(gateway, listener_set, selects)
        known[listener_set.key] = (gateway.key, listener_set,
                                   None if why is None else ("NotAllowed", "NotAllowed", why))
        if why is not None:
            continue
        for index, item in enumerate(listener_set.spec()["listeners"]):
            listener = build(index, item, listener_set)
            if listener.protocol in _PROTOCOLS:
                found = conflict(listener, before)
                if found is None:
                    before.append(listener)
                else:
                    listener.problems.extend((("Accepted", *found), ("Conflicted", *found)))
            taken.append(listener)
    return taken, known


def statuses(gateway: str, known: Iterable[Known], listeners: Sequence[SetListener],
             ) -> tuple[list[ObjectStatus], int]:
    """The statuses of the ListenerSets naming `gateway` (its key) and of their listeners
    (among the Gateway's merged `listeners`), and how many are attached (the Gateway's
    attachedListenerSets)."""
    made: list[ObjectStatus] = []
    count = 0
    for parent, listener_set, refused in known:
        if parent != gateway:
            continue
        mine = [lst for lst in listeners if lst.source is listener_set]
        made.extend(entry_status(listener_set, lst) for lst in mine)
        status = set_status(listener_set, gateway, refused, mine)
        made.append(status)
        count += attached(status)
    return made, count


def orphans(listener_sets: Iterable[KubeObject], gateways: set[str]) -> list[ObjectStatus]:
    """A ListenerSet naming a Gateway the folder lacks is not accepted (one naming a Gateway of
    another controller is not ours to say anything of: it is in `gateways`, never taken)."""
    made: list[ObjectStatus] = []
    for listener_set in listener_sets:
        parent = parent_gateway(listener_set)
        if parent is None or parent not in gateways:
            why = f"no Gateway {parent}" if parent is not None else \
                "spec.parentRef names no Gateway"
            made.append(set_status(listener_set, parent,
                                   ("ParentNotAccepted", "ParentNotProgrammed", why), ()))
    return made


def conflict(listener: SetListener, before: Sequence[SetListener]) -> tuple[str, str] | None:
    """(reason, message) when a ListenerSet's listener cannot be served beside a listener that
    comes before it: on its port and transport, another protocol (ProtocolConflict) or the same
    protocol and hostname (HostnameConflict). None: no conflict."""
    for other in before:
        # A UDP listener and a TCP-borne one are two sockets: they share a port freely.
        if other.port != listener.port or other.transport != listener.transport:
            continue
        if other.protocol != listener.protocol:
            return "ProtocolConflict", (f"port {listener.port} is listener {other.name}'s, "
                                        f"protocol {other.protocol}, which comes first")
        # TCP and UDP carry no hostname to tell listeners apart: two on one port conflict.
        if other.hostname == listener.hostname or listener.protocol in ("TCP", "UDP"):
            return "HostnameConflict", (f"listener {other.name} on port {listener.port} has "
                                        f"hostname {listener.hostname or '(none)'} and comes "
                                        "first")
    return None


def entry_status(listener_set: KubeObject, listener: SetListener) -> ObjectStatus:
    """A ListenerSet listener's status (upstream's ListenerEntryStatus): kind ListenerEntry,
    named NS/LISTENERSET/LISTENER. A listener that is not accepted is not programmed, for the
    same reason."""
    problems = {kind: (reason, message) for kind, reason, message in reversed(listener.problems)}
    accepted = problems.get("Accepted")
    refs = problems.get("ResolvedRefs")
    conflicted = problems.get("Conflicted")
    programmed = ("Programmed", "") if listener.valid else \
        (accepted or conflicted or refs or ("Invalid", ""))
    return ObjectStatus(
        "ListenerEntry", f"{listener_set.key}/{listener.name}",
        listener_set.document.position_of(("spec", "listeners", listener.index)),
        (_condition("Accepted", accepted is None, accepted or ("Accepted", "")),
         _condition("ResolvedRefs", refs is None, refs or ("ResolvedRefs", "")),
         Condition("Conflicted", "False" if conflicted is None else "True",
                   *(conflicted or ("NoConflicts", ""))),
         _condition("Programmed", listener.valid, programmed)),
        parent=listener_set.key,
        details=(("attachedRoutes", str(listener.attached)),
                 ("supportedKinds", ",".join(listener.kinds))))


def set_status(listener_set: KubeObject, gateway: str | None, refused: Refusal | None,
               listeners: Sequence[SetListener]) -> ObjectStatus:
    """A ListenerSet's own status. `refused`: (Accepted reason, Programmed reason, message)
    when its Gateway does not take it; else it is accepted when one of its listeners is
    valid (ListenersNotValid otherwise, or beside the valid ones)."""
    if refused is not None:
        accepted_reason, programmed_reason, message = refused
        conditions = (Condition("Accepted", "False", accepted_reason, message),
                      Condition("Programmed", "False", programmed_reason, message))
    else:
        valid = sum(1 for one in listeners if one.valid)
        message = "" if valid == len(listeners) else \
            f"{len(listeners) - valid} of {len(listeners)} listeners are not valid"
        if valid:
            conditions = (Condition("Accepted", "True",
                                    "Accepted" if not message else "ListenersNotValid", message),
                          Condition("Programmed", "True", "Programmed", ""))
        else:
            conditions = (Condition("Accepted", "False", "ListenersNotValid", message),
                          Condition("Programmed", "False", "ListenersNotValid", message))
    return ObjectStatus(listener_set.kind, listener_set.key,
                        listener_set.document.position_of(("spec", "parentRef")), conditions,
                        parent=gateway or "")


def attached(status: ObjectStatus) -> bool:
    """Whether a ListenerSet status counts in its Gateway's attachedListenerSets."""
    return any(c.type == "Accepted" and c.status == "True" for c in status.conditions)


# The protocols whose listeners may conflict (compile.py's; others are refused already).
_PROTOCOLS = frozenset(("HTTP", "HTTPS", "TLS", "TCP", "UDP"))


def _condition(kind: str, ok: bool, reason_message: tuple[str, str]) -> Condition:
    return Condition(kind, "True" if ok else "False", *reason_message)
