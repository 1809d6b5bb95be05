"""From YAML documents to parsed documents: the rules every document shares, and dispatch.

Every document must be a mapping with a string `kind`, an optional string `apiVersion` and a
string name (where its format keeps names); no two documents of a kind may share a name. The
document's `(apiVersion, kind)` picks its format's parser (`formats.py`), which reports through
the document's context and returns model parts. This module must not know what any kind means.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from meshpilot.base.errors import PolicyIssue, Position
from meshpilot.inputs.context import DocumentContext, LoadContext, ParsedDocument, PendingPart
from meshpilot.inputs.formats import DocumentParser, DocumentType, FormatRegistry
from meshpilot.inputs.gatewayapi.format import FORMATS as GATEWAY_API
from meshpilot.inputs.istio.format import ISTIO_FORMATS
from meshpilot.inputs.native.format import NATIVE
from meshpilot.inputs.yamlsource import FieldPath, Located, format_path

# The formats a load reads. A new format is added here.
FORMATS = FormatRegistry((NATIVE, *GATEWAY_API, *ISTIO_FORMATS))


def load_documents(documents: Iterable[Located], load: LoadContext,
                   parsed: list[ParsedDocument], formats: FormatRegistry = FORMATS) -> None:
    """Parse each document with its format's parser; report into `load`, append to `parsed`
    every document with a usable identity (even one with issues: later checks need it)."""
    for document in documents:
        loaded = _load_document(document, load, formats)
        if loaded is not None:
            parsed.append(loaded)


def _load_document(document: Located, load: LoadContext,
                   formats: FormatRegistry) -> ParsedDocument | None:
    identity = _document_identity(document, load, formats)
    if identity is None:
        return None
    parser, kind, name, name_path, group = identity
    ctx = DocumentContext(load, document, kind, name)
    # Native kinds keep their key; a format with apiVersions keys by API group too, so that a
    # Gateway API Gateway and an Istio Gateway of the same name are two documents.
    key = ("document", kind, name) if group is None else ("document", group, kind, name)
    first = load.first_definition(key, document.position_of(name_path))
    if first is not None:
        ctx.report(name_path, f'another {kind} is named "{name}" (at {first})', at_value=True)
    return ParsedDocument(ctx, tuple(parser(document, ctx)))


def compile_pending(parsed: list[ParsedDocument], load: LoadContext) -> list[ParsedDocument]:
    """`parsed` with every document holding pending parts (`context.PendingPart`) replaced by
    what its format's compiler made of all of them together, in the same order."""
    by_compiler: dict[int, tuple[object, list[ParsedDocument]]] = {}
    for document in parsed:
        for part in document.parts:
            if isinstance(part, PendingPart):
                compiler = type(part).compiler
                by_compiler.setdefault(id(compiler), (compiler, []))[1].append(document)
                break
    if not by_compiler:
        return parsed
    compiled: dict[int, ParsedDocument] = {}
    for compiler, documents in by_compiler.values():
        results = compiler(parsed, documents, load)  # type: ignore[operator]
        for before, after in zip(documents, results, strict=True):
            compiled[id(before)] = after
    return [compiled.get(id(document), document) for document in parsed]


_Identity = tuple[DocumentParser, str, str, FieldPath, str | None]
DEFAULT_NAMESPACE = "default"


def _document_identity(document: Located, load: LoadContext,
                       formats: FormatRegistry) -> _Identity | None:
    """The document's parser, kind, name and where the name is, if all are usable; otherwise
    report why and return None."""
    body = document.value
    if not isinstance(body, dict):
        _report_bare(load, document.position, "a policy document must be a mapping with "
                                              "kind and name")
        return None
    api_version = body.get("apiVersion")
    if "apiVersion" in body and (not isinstance(api_version, str) or not api_version):
        _report_bare(load, document.value_position_of(("apiVersion",)),
                     '"apiVersion" must be a non-empty string', field="apiVersion")
        return None
    input_format = formats.format_of(api_version)
    if input_format is None:
        _report_bare(load, document.value_position_of(("apiVersion",)),
                     _unknown_api_version(str(api_version), formats), field="apiVersion")
        return None
    kind = body.get("kind")
    if not isinstance(kind, str) or not kind:
        if "kind" in body:
            _report_bare(load, document.value_position_of(("kind",)),
                         '"kind" must be a non-empty string', field="kind")
        else:
            _report_bare(load, document.position, 'missing "kind"', field="kind")
        return None
    parser = formats.parser_of(DocumentType(api_version, kind))
    if parser is None:
        _report_bare(load, document.value_position_of(("kind",)),
                     _unknown_kind(kind, formats.kinds_of(api_version)), field="kind")
        return None
    name_path = input_format.name_path
    name = _member(body, name_path)
    if not isinstance(name, str) or not name:
        ctx = DocumentContext(load, document, kind, None)
        shown = format_path(name_path)
        if name is not _MISSING:
            ctx.report(name_path, f'"{shown}" must be a non-empty string', at_value=True)
        else:
            ctx.report(name_path, f'missing "{shown}"')
        return None
    namespace_path: FieldPath | None = getattr(input_format, "namespace_path", None)
    if namespace_path is not None:
        namespace = _member(body, namespace_path)
        if namespace is _MISSING or namespace is None:
            namespace = DEFAULT_NAMESPACE
        if not isinstance(namespace, str) or not namespace:
            ctx = DocumentContext(load, document, kind, name)
            ctx.report(namespace_path, f'"{format_path(namespace_path)}" must be a non-empty '
                                       "string", at_value=True)
            return None
        name = f"{namespace}/{name}"
    group = None if api_version is None else api_version.rpartition("/")[0]
    return parser, kind, name, name_path, group


_MISSING = object()


def _member(body: dict[str, Any], path: FieldPath) -> Any:
    """The value at `path` in nested mappings; `_MISSING` if any step is missing."""
    value: Any = body
    for step in path:
        if not isinstance(value, dict) or step not in value:
            return _MISSING
        value = value[step]
    return value


def _unknown_kind(kind: str, known: list[str]) -> str:
    matches = difflib.get_close_matches(kind, known, n=1, cutoff=0.6)
    hint = f' (did you mean "{matches[0]}"?)' if matches else f"; known kinds: {', '.join(known)}"
    return f'unknown kind "{_shown(kind)}"{hint}'


def _unknown_api_version(api_version: str, formats: FormatRegistry) -> str:
    known = formats.api_versions()
    # Suggest only within an API group (a version typo) or for a group typo: another group's
    # apiVersion (Istio's for the Gateway API's) would be wrong advice.
    group = api_version.partition("/")[0]
    matches = [m for m in difflib.get_close_matches(api_version, known, n=3, cutoff=0.6)
               if difflib.SequenceMatcher(None, m.partition("/")[0], group).ratio() >= 0.85]
    if matches:
        hint = f' (did you mean "{matches[0]}"?)'
    elif known:
        hint = f"; known apiVersions: {', '.join(known)}"
    else:
        hint = "; no input format reads it"
    if formats.format_of(None) is not None:
        hint += " (meshpilot's own kinds are written without apiVersion)"
    return f'unknown apiVersion "{_shown(api_version)}"{hint}'


def _shown(text: str) -> str:
    """User text in a message: clipped, and escaped if it is not printable."""
    if len(text) <= 80 and text.isprintable():
        return text
    return text[:80].encode("unicode_escape").decode("ascii") + "..."


def _report_bare(load: LoadContext, position: Position, message: str, field: str = "") -> None:
    load.issues.append(PolicyIssue(message, position, field=field))
