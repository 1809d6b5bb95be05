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

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from meshpilot.inputs.gatewayapi.kinds import EXPERIMENTAL_GROUP, GATEWAY_GROUP, KubeObject
from meshpilot.ir.model import Condition, ObjectStatus

# (group, kind) of the documents that are ListenerSets, as a route's parentRef names them
KINDS = frozenset({(GATEWAY_GROUP, "ListenerSet"), (EXPERIMENTAL_GROUP, "XListenerSet")})
KIND_NAMES = frozenset(kind for _, kind in KINDS)
# What `allowedListeners.namespaces.from` says when it is left out: no ListenerSet is taken.
DEFAULT_FROM = "None"


class SetListener(Protocol):
    """What this module reads of a listener the compile step built (`compile._Listener`)."""

    name: str
    index: int
    port: int
    protocol: str
    hostname: str | None
    kinds: tuple[str, ...]
    attached: int
    problems: list[tuple[str, str, str]]

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


def not_allowed(gateway: KubeObject, listener_set: KubeObject,
                namespace_labels: dict[str, str], selected: Any) -> str | None:
    """Why the Gateway's `allowedListeners` keeps the ListenerSet out, or None: it is let in.
    `selected(selector, labels)` is the compile step's label selector."""
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
        if selected(namespaces.get("selector") or {}, namespace_labels):
            return None
        return (f"namespace {listener_set.namespace} is not selected by Gateway "
                f"{gateway.key}'s allowedListeners.namespaces.selector")
    return (f"Gateway {gateway.key} takes no ListenerSets (allowedListeners.namespaces.from: "
            f"{source})")


def conflict(listener: SetListener, before: Sequence[SetListener]) -> tuple[str, str] | None:
    """(reason, message) when a ListenerSet's listener cannot be served beside a listener that
    comes before it: on its port, another protocol (ProtocolConflict) or the same protocol and
    hostname (HostnameConflict). None: no conflict."""
    for other in before:
        if other.port != listener.port:
            continue
        if other.protocol != listener.protocol:
            return "ProtocolConflict", (f"port {listener.port} is listener {other.name}'s, "
                                        f"protocol {other.protocol}, which comes first")
        if other.hostname == listener.hostname:
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


def set_status(listener_set: KubeObject, gateway: str | None,
               refused: tuple[str, str, str] | None,
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


def _condition(kind: str, ok: bool, reason_message: tuple[str, str]) -> Condition:
    return Condition(kind, "True" if ok else "False", *reason_message)
