"""The model: the immutable intermediate representation every input format is loaded into.

Translators read only this. It holds no I/O handles and is never mutated after loading, so one
model can be shared by every view and every thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import Message

from meshpilot.errors import Position


@dataclass(frozen=True, slots=True)
class RawResource:
    """An Envoy resource written by hand in a `kind: EnvoyResources` document.

    `message` is a parsed, schema-checked protobuf; treat it as read-only. `views` restricts which
    node views receive it (None: every view).
    """

    type_url: str
    name: str
    message: Message
    position: Position
    document: str  # the EnvoyResources document's name
    views: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Model:
    raw: tuple[RawResource, ...] = ()
    files: tuple[str, ...] = field(default=())
