"""Input formats: each one a way of writing policy documents, all compiled into the one `Model`.

A format claims document types by `(apiVersion, kind)` and turns each document of those types
into model parts (`ir/model.py`), reporting what is wrong through the document's context, with
positions. Nothing below the formats knows which one a value came from. meshpilot's own kinds
(`native/format.py`, documents without an `apiVersion`) are the first format; a Gateway API or
Istio reader would be another, registered side by side, so that `gateway.networking.k8s.io/v1`
Gateways, `networking.istio.io/v1` Gateways and native Gateways can share one folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from meshpilot.inputs.context import DocumentContext, LoadContext, ModelPart, ParsedDocument
from meshpilot.inputs.yamlsource import FieldPath, Located
from meshpilot.ir.model import ObjectStatus

# One document in; its valid model parts out, every problem reported through the context
# (a parser never raises for bad input). A parser returns nothing for a document with any
# issue, so the checks across documents only ever see clean parts.
DocumentParser = Callable[[Located, DocumentContext], Iterable[ModelPart]]


class InputFormat(Protocol):
    """What the loader needs to know of a format."""

    @property
    def api_version(self) -> str | None:
        """The `apiVersion` of its documents; None: documents that have no `apiVersion`."""
        ...

    @property
    def name_path(self) -> FieldPath:
        """Where its documents' names are written: ("name",), or ("metadata", "name")."""
        ...

    @property
    def parsers(self) -> Mapping[str, DocumentParser]:
        """kind -> the parser of documents of that kind."""
        ...


# Optional members of a format (looked up with getattr, so a format without them is as before):
#
#   namespace_path: FieldPath   where a document's namespace is (Kubernetes: metadata.namespace,
#                               "default" when left out); its name is then "namespace/name"
#   compile: FormatCompiler     the step that turns the `FormatPart`s of every document of the
#                               load into model parts, once every document has been parsed
#
# A compile step sees every parsed document (its own kinds' FormatParts, and the model parts of
# other formats, say a native Service a route names) and returns the model parts and statuses it
# makes; it reports into the load only what must refuse the whole load. Several formats (one per
# apiVersion) may share one compile step: it runs once.
FormatCompiler = Callable[[Sequence[ParsedDocument], LoadContext],
                          tuple[list[ModelPart], list[ObjectStatus]]]
#   compile_edit: FormatEditCompiler   the same step for a process loading one folder again
#                               and again (`incremental.py`): also given the documents an
#                               edit removed and added since its last call and what that call
#                               kept (None: nothing, compile them all), it returns what it
#                               keeps for the next; it must give what `compile` gives.
FormatEditCompiler = Callable[[Sequence[ParsedDocument], LoadContext, Sequence[ParsedDocument],
                               Sequence[ParsedDocument], object | None],
                              tuple[list[ModelPart], list[ObjectStatus], object | None]]


@dataclass(frozen=True, slots=True)
class DocumentType:
    """What a document is, by its `apiVersion` (None: it has none) and `kind`."""

    api_version: str | None
    kind: str


class FormatRegistry:
    """Every known format, looked up by document type. Two formats may not claim the same
    `apiVersion`: a document's `apiVersion` alone says which format reads it."""

    def __init__(self, formats: Iterable[InputFormat]):
        self._formats: dict[str | None, InputFormat] = {}
        for input_format in formats:
            if input_format.api_version in self._formats:
                raise ValueError(f"two input formats claim apiVersion "
                                 f"{input_format.api_version!r}")
            self._formats[input_format.api_version] = input_format

    def format_of(self, api_version: str | None) -> InputFormat | None:
        """The format reading documents with this `apiVersion`, if any."""
        return self._formats.get(api_version)

    def parser_of(self, document_type: DocumentType) -> DocumentParser | None:
        input_format = self._formats.get(document_type.api_version)
        return None if input_format is None else input_format.parsers.get(document_type.kind)

    def api_versions(self) -> list[str]:
        """Every `apiVersion` some format reads (documents without one not counted), sorted."""
        return sorted(version for version in self._formats if version is not None)

    def compilers(self) -> list[FormatCompiler]:
        """The compile steps of the formats that have one, each once, in registration order."""
        found: list[FormatCompiler] = []
        for input_format in self._formats.values():
            step = getattr(input_format, "compile", None)
            if step is not None and step not in found:
                found.append(step)
        return found

    def edit_compilers(self) -> list[tuple[FormatCompiler, FormatEditCompiler | None]]:
        """`compilers()`, each with its format's `compile_edit`, if it has one."""
        edits = {id(getattr(f, "compile", None)): getattr(f, "compile_edit", None)
                 for f in self._formats.values()}
        return [(step, edits.get(id(step))) for step in self.compilers()]

    def kinds_of(self, api_version: str | None) -> list[str]:
        """The kinds of documents with this `apiVersion` some format reads, sorted."""
        input_format = self._formats.get(api_version)
        return [] if input_format is None else sorted(input_format.parsers)
