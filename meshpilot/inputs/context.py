"""What every document parser of one load shares: where issues go and where names were defined.

This is the only thing a format's parsers need from the loading machinery, so it lives apart
from the loader: kinds import this module (and `fields`), never `loader.py`, and the loader
imports the kinds, so no import runs in a circle.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from meshpilot.base.errors import PolicyIssue, Position
from meshpilot.inputs.yamlsource import FieldPath, Located, format_path
from meshpilot.ir.model import (
    Gateway,
    MeshPolicy,
    Origin,
    RawResource,
    RolloutSettings,
    Route,
    Service,
)


class FormatPart:
    """What a document of a format whose documents mean something only together (Gateway API:
    a Gateway, the routes attached to it, the Services they name) gives before the format's
    compile step (`formats.InputFormat.compile`) turns all of them into model parts. The checks
    across documents and the model never see one."""

    __slots__ = ()


# What a document parser may return (below): a new top-level model class is added there and
# sorted into the Model by `assembly.build_model`.


class PendingPart:
    """What a format's parser returns for a document it can only compile together with the
    other documents of the load (an Istio VirtualService names hosts that ServiceEntries
    declare, and subsets that DestinationRules define). After every document is parsed,
    `documents.compile_pending` hands all pending parts of one `compiler` to it at once: it
    returns the documents again, each with the model parts it gave (issues are reported through
    the documents' contexts, with positions, as parsers report theirs). Equal documents must
    compile to equal parts, so incremental loads equal cold ones."""

    __slots__ = ()
    compiler: ClassVar[Compiler]


# (pending parts are compiled before the model is built, FormatParts by their format's step)
ModelPart = (RawResource | Service | Gateway | Route | RolloutSettings | MeshPolicy
             | FormatPart | PendingPart)




@dataclass(slots=True)
class LoadContext:
    """State shared by every document of one load: the issues, and where names were defined."""

    issues: list[PolicyIssue] = field(default_factory=list)
    # Advice that does not refuse the load (`istioctl analyze`'s kind: a subset nothing
    # selects); the model keeps them (`Model.warnings`) for the CLI and the status page.
    warnings: list[PolicyIssue] = field(default_factory=list)
    definitions: dict[Hashable, Position] = field(default_factory=dict)

    def first_definition(self, key: Hashable, position: Position) -> Position | None:
        """Record `key` as defined at `position`; if it was defined before, where that was."""
        if key in self.definitions:
            return self.definitions[key]
        self.definitions[key] = position
        return None


@dataclass(slots=True)
class DocumentContext:
    """What a kind's parser gets besides the document: a way to report issues about it."""

    load: LoadContext
    document: Located
    kind: str
    name: str | None

    def warn(self, path: FieldPath, message: str) -> None:
        """Record advice about the field at `path` that does not refuse the load."""
        self.load.warnings.append(PolicyIssue(message, self.document.position_of(path),
                                              self.kind, self.name, format_path(path)))

    def report(self, path: FieldPath, message: str, *, at_value: bool = False,
               position: Position | None = None) -> None:
        """Record an issue about the field at `path`.

        The position is the field's key (or list item) unless `at_value` asks for its value or
        `position` is given; a path that does not exist falls back to its nearest ancestor.
        """
        if position is None:
            locate = self.document.value_position_of if at_value else self.document.position_of
            position = locate(path)
        self.load.issues.append(PolicyIssue(message, position, self.kind, self.name,
                                            format_path(path)))

    def first_definition(self, key: Hashable, position: Position) -> Position | None:
        return self.load.first_definition(key, position)

    def origin(self, path: FieldPath = ()) -> Origin:
        """Where the field at `path` was written (its key, or list item), for the model element
        read from it; () is the document itself."""
        position = self.document.position_of(path) if path else self.document.position
        return Origin(position, self.kind, self.name, format_path(path))


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    """One document with a usable kind and name: its context (so later checks can report
    about it) and the model parts its parser returned."""

    context: DocumentContext
    parts: tuple[ModelPart, ...]
    # Made by a format's compiler from pending parts: its parts were checked there, against
    # the document's own shape, not the native kinds' (references.py skips what reads those).
    compiled: bool = False


# (every parsed document of the load, the ones holding this compiler's pending parts, the load)
# -> those documents with their compiled model parts (and nothing pending)
Compiler = Callable[[Sequence[ParsedDocument], Sequence[ParsedDocument], LoadContext],
                    list[ParsedDocument]]
