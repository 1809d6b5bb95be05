"""Loading a policy folder (or one file) into a `Model`, all of it or none of it.

This module owns finding the policy files, the rules every document shares (a mapping with a
string `kind` and `name`, no two documents with the same kind and name), dispatching each document
to its kind's parser, running the checks across documents (`references.py`) once all are read, and
collecting every issue from every file into one `PolicyError`. It must not know what any kind
means: kinds plug in through `KIND_PARSERS`, and the model parts they return are sorted into the
`Model` by `build_model`. It never raises anything but `PolicyError` for bad input.

`load_policy` holds no state between loads. `PolicyLoader` (what the controller keeps) caches,
per file, what parsing it gave, keyed by the file's name and the BLAKE2b hash of its bytes, so a
reload only parses the files that changed, and inside a changed file only the documents whose
text (between document start markers) or line offset changed; the checks across documents still
run over the whole set. Any issue anywhere makes it load the folder again
the stateless way, so error messages and positions are exactly `load_policy`'s.
"""

from __future__ import annotations

import difflib
import gc
import hashlib
import os
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TypeVar

from meshpilot.base.errors import PolicyError, PolicyIssue, Position
from meshpilot.base.types import ADS_ORDER
from meshpilot.inputs import tlsfiles as tls
from meshpilot.inputs.context import DocumentContext, LoadContext, ModelPart, ParsedDocument
from meshpilot.inputs.native import gateway, route, service
from meshpilot.inputs.native.envoy_resources import KIND as ENVOY_RESOURCES
from meshpilot.inputs.native.envoy_resources import parse_envoy_resources
from meshpilot.inputs.references import validate_references
from meshpilot.inputs.yamlsource import (
    MAX_NODES,
    Located,
    _read_limited,
    parse_yaml,
    parse_yaml_text,
    read_yaml_file,
    split_documents,
)
from meshpilot.ir.model import Gateway, Model, RawResource, Route, Service

POLICY_SUFFIXES = (".yaml", ".yml")

KindParser = Callable[[Located, DocumentContext], Iterable[ModelPart]]

# kind -> parser. A parser reports problems through its context (never raises for bad input)
# and returns the model parts of the document's valid parts. Service, Gateway and Route return
# nothing for a document with any issue, so the checks across documents (references.py) only
# ever see clean parts and never echo a document's own error as a broken reference.
KIND_PARSERS: dict[str, KindParser] = {
    ENVOY_RESOURCES: parse_envoy_resources,
    service.KIND: service.parse_service,
    gateway.KIND: gateway.parse_gateway,
    route.KIND: route.parse_route,
}


def policy_folder(path: Path) -> Path:
    """The folder relative paths in the policy are resolved against (certificates, keys)."""
    return path if path.is_dir() else path.parent


def load_policy(path: str | Path) -> Model:
    """Load a policy folder (every `*.yaml`/`*.yml` below it) or a single file.

    Raises `PolicyError` listing every issue, sorted by file, line and column, if anything is
    wrong anywhere; otherwise returns the whole model.
    """
    root = Path(path)
    load = LoadContext()
    parsed: list[ParsedDocument] = []
    with _garbage_collection_paused(), tls.paths_relative_to(policy_folder(root)):
        files = _policy_files(root, load)
        for file_path, shown_name in files:
            documents, issues = read_yaml_file(file_path, shown_name)
            load.issues.extend(issues)
            _load_documents(documents, load, parsed)
        return _finish(load, parsed, tuple(shown_name for _, shown_name in files))


@dataclass(slots=True)
class _CachedPiece:
    """What parsing one piece of a file (the text of its documents between two document start
    markers, `split_documents`) gave, in a context of its own, at its line offset."""

    parsed: list[ParsedDocument]
    definitions: dict[Hashable, Position]  # in the order they were made
    clean: bool
    nodes: int  # YAML nodes counted, towards the file's MAX_NODES
    tls_files: tuple[str, ...]


@dataclass(slots=True)
class _CachedFile:
    """What parsing one file gave, in a context of its own (no other file's definitions)."""

    digest: bytes  # BLAKE2b of the file's bytes
    parsed: list[ParsedDocument]
    definitions: dict[Hashable, Position]  # in the order they were made
    clean: bool  # no issue at all (YAML, identity, kind parser)
    # TLS files its parsers read: such a file is parsed again on every load, since a
    # certificate may change under an unchanged policy file (and hashing it after the parser
    # read it could miss a change in between).
    tls_files: tuple[str, ...]
    # (line offset, text) -> its parse, for every piece of a file that could be split
    pieces: dict[tuple[int, str], _CachedPiece] = field(default_factory=dict)


class PolicyLoader:
    """`load_policy(path)` for a process that loads the same folder again and again.

    Each file's parse (documents, model parts, the definitions they made, their issues) is kept,
    keyed by the file's shown name and content hash (a file whose parsers read TLS files is
    parsed every time: certificates change under unchanged policy files). An unchanged file is
    neither YAML-parsed nor kind-parsed again, and gives the very same model part objects as
    before (the Translation reuses resources by them). Inside a changed file, the same holds
    per piece of text between document start markers (`split_documents`), keyed by its text
    and line offset (model parts carry positions, so a piece that moved is parsed again); a
    file that cannot be split safely is parsed whole. Then the definitions are replayed in file
    order and `references.py` runs over the whole set, as in a cold load. If any issue is found
    anywhere, the folder is loaded once more by `load_policy` itself, so a rejected load reports
    exactly what a cold one reports.

    `tls_files` is the set of TLS files (absolute) the newest attempt depended on, successful or
    not. Not thread-safe: one load at a time (the controller never overlaps reloads).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tls_files: frozenset[str] = frozenset()
        self._files: dict[str, _CachedFile] = {}
        self.parsed_files = 0  # files parsed by the newest load (for tests and metrics)
        self.parsed_pieces = 0  # pieces of those files parsed (a file parsed whole counts 1)

    def load(self) -> Model:
        with _garbage_collection_paused(), tls.paths_relative_to(policy_folder(self.path)):
            model = self._load_cached()
            if model is not None:
                return model
            with tls.recording() as files:
                try:
                    return load_policy(self.path)
                finally:
                    self.tls_files = frozenset(files)

    def _load_cached(self) -> Model | None:
        """The model, or None if anything is wrong (then the caller loads cold, for the
        exact issues)."""
        load = LoadContext()
        files = _policy_files(self.path, load)
        self.parsed_files = self.parsed_pieces = 0
        if load.issues:
            return None
        entries: list[_CachedFile] = []
        kept: dict[str, _CachedFile] = {}
        clean = True
        for file_path, shown_name in files:
            entry = self._entry(file_path, shown_name)
            if entry is None:
                clean = False
                continue
            kept[shown_name] = entry
            entries.append(entry)
            clean = clean and entry.clean
        self._files = kept  # a deleted or renamed file's entry goes
        self.tls_files = frozenset(path for entry in entries for path in entry.tls_files)
        if not clean:
            return None
        parsed: list[ParsedDocument] = []
        for entry in entries:
            for key, position in entry.definitions.items():
                if load.first_definition(key, position) is not None:
                    return None  # defined in two files: a cold load words the issue
            for document in entry.parsed:
                old = document.context
                parsed.append(ParsedDocument(DocumentContext(load, old.document, old.kind,
                                                             old.name), document.parts))
        validate_references(parsed, load)
        if load.issues:
            return None
        return build_model((part for document in parsed for part in document.parts),
                           tuple(shown_name for _, shown_name in files))

    def _entry(self, file_path: Path, shown_name: str) -> _CachedFile | None:
        try:
            data = _read_limited(file_path)
        except Exception:  # too large, not a regular file, unreadable: a cold load says so
            return None
        digest = hashlib.blake2b(data, digest_size=16).digest()
        entry = self._files.get(shown_name)
        if entry is not None and entry.digest == digest and not entry.tls_files:
            return entry
        self.parsed_files += 1
        pieces = split_documents(data)
        if pieces is None:  # parsed whole, as load_policy does
            self.parsed_pieces += 1
            local = LoadContext()
            parsed: list[ParsedDocument] = []
            with tls.recording() as read:
                documents, issues = parse_yaml(data, shown_name)
                local.issues.extend(issues)
                _load_documents(documents, local, parsed)
            return _CachedFile(digest, parsed, local.definitions, not local.issues,
                               tuple(sorted(read)))
        earlier = entry.pieces if entry is not None else {}
        kept: dict[tuple[int, str], _CachedPiece] = {}
        parsed = []
        definitions: dict[Hashable, Position] = {}
        clean = True
        nodes = 0
        read_files: set[str] = set()
        for key in pieces:
            piece = earlier.get(key)
            if piece is None or piece.tls_files:
                piece = self._parse_piece(key, shown_name)
            kept[key] = piece
            parsed.extend(piece.parsed)
            for name, position in piece.definitions.items():
                if name in definitions:  # defined twice in the file: a cold load words it
                    clean = False
                else:
                    definitions[name] = position
            clean = clean and piece.clean
            nodes += piece.nodes
            read_files.update(piece.tls_files)
        if nodes > MAX_NODES:  # the file as a whole is refused: a cold load says so
            clean = False
        return _CachedFile(digest, parsed, definitions, clean, tuple(sorted(read_files)), kept)

    def _parse_piece(self, key: tuple[int, str], shown_name: str) -> _CachedPiece:
        line_offset, text = key
        self.parsed_pieces += 1
        local = LoadContext()
        parsed: list[ParsedDocument] = []
        with tls.recording() as read:
            documents, issues, nodes = parse_yaml_text(text, shown_name, line_offset)
            local.issues.extend(issues)
            _load_documents(documents, local, parsed)
        return _CachedPiece(parsed, local.definitions, not local.issues, nodes,
                            tuple(sorted(read)))


def load_policy_text(text: str | bytes, file: str = "policy.yaml") -> Model:
    """Load policy given as text, as if it were the file `file` (for tools and tests)."""
    load = LoadContext()
    parsed: list[ParsedDocument] = []
    with _garbage_collection_paused():
        documents, issues = parse_yaml(text, file)
        load.issues.extend(issues)
        _load_documents(documents, load, parsed)
        return _finish(load, parsed, (file,))


@contextmanager
def _garbage_collection_paused() -> Iterator[None]:
    """Loading builds hundreds of thousands of long-lived objects and no garbage cycles worth
    collecting; left on, the cycle collector re-scans the growing heap over and over, which
    doubles load time. Only switched back on if it was on (another thread may have paused it
    too: the worst outcome of that race is a slower load, never a wrong one)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _finish(load: LoadContext, parsed: list[ParsedDocument], files: tuple[str, ...]) -> Model:
    # References are checked even when documents had issues: every problem is reported in one
    # pass, and a document with issues gave no parts, so its errors are not echoed here.
    validate_references(parsed, load)
    if load.issues:
        raise PolicyError(sorted(load.issues, key=_issue_order))
    return build_model((part for document in parsed for part in document.parts), files)


def build_model(parts: Iterable[ModelPart], files: tuple[str, ...]) -> Model:
    """The model of a valid policy, in a deterministic order (translators rely on it)."""
    raw: list[RawResource] = []
    services: list[Service] = []
    gateways: list[Gateway] = []
    routes: list[Route] = []
    for part in parts:
        if isinstance(part, RawResource):
            raw.append(part)
        elif isinstance(part, Service):
            services.append(part)
        elif isinstance(part, Gateway):
            gateways.append(part)
        else:
            routes.append(part)
    raw.sort(key=lambda resource: (_ads_rank(resource.type_url), resource.name))
    return Model(raw=tuple(raw), services=_by_name(services), gateways=_by_name(gateways),
                 routes=_by_name(routes), files=files)


_Named = TypeVar("_Named", Service, Gateway, Route)


def _by_name(parts: list[_Named]) -> tuple[_Named, ...]:
    return tuple(sorted(parts, key=lambda part: part.name))


def _ads_rank(type_url: str) -> int:
    return ADS_ORDER.index(type_url) if type_url in ADS_ORDER else len(ADS_ORDER)


def _issue_order(issue: PolicyIssue) -> tuple[str, int, int]:
    position = issue.position
    return ("", 0, 0) if position is None else (position.file, position.line, position.column)


# ---------------------------------------------------------------------------------------------
# Documents.


def _load_documents(documents: list[Located], load: LoadContext,
                    parsed: list[ParsedDocument]) -> None:
    for document in documents:
        loaded = _load_document(document, load)
        if loaded is not None:
            parsed.append(loaded)


def _load_document(document: Located, load: LoadContext) -> ParsedDocument | None:
    identity = _document_identity(document, load)
    if identity is None:
        return None
    kind, name = identity
    ctx = DocumentContext(load, document, kind, name)
    first = load.first_definition(("document", kind, name), document.position_of(("name",)))
    if first is not None:
        ctx.report(("name",), f'another {kind} is named "{name}" (at {first})', at_value=True)
    return ParsedDocument(ctx, tuple(KIND_PARSERS[kind](document, ctx)))


def _document_identity(document: Located, load: LoadContext) -> tuple[str, str] | None:
    """The document's (kind, name) if both are usable; otherwise report why and return None."""
    body = document.value
    if not isinstance(body, dict):
        _report_bare(load, document.position, "a policy document must be a mapping with "
                                              "kind and name")
        return None
    kind = body.get("kind")
    if not isinstance(kind, str) or not kind:
        if "kind" in body:
            _report_bare(load, document.value_position_of(("kind",)),
                         '"kind" must be a non-empty string', field="kind")
        else:
            _report_bare(load, document.position, 'missing "kind"', field="kind")
        return None
    if kind not in KIND_PARSERS:
        _report_bare(load, document.value_position_of(("kind",)), _unknown_kind(kind),
                     field="kind")
        return None
    name = body.get("name")
    if not isinstance(name, str) or not name:
        ctx = DocumentContext(load, document, kind, None)
        if "name" in body:
            ctx.report(("name",), '"name" must be a non-empty string', at_value=True)
        else:
            ctx.report(("name",), 'missing "name"')
        return None
    return kind, name


def _unknown_kind(kind: str) -> str:
    known = sorted(KIND_PARSERS)
    matches = difflib.get_close_matches(kind, known, n=1, cutoff=0.6)
    hint = f' (did you mean "{matches[0]}"?)' if matches else f"; known kinds: {', '.join(known)}"
    shown = kind if len(kind) <= 80 and kind.isprintable() else kind[:80].encode(
        "unicode_escape").decode("ascii") + "..."
    return f'unknown kind "{shown}"{hint}'


def _report_bare(load: LoadContext, position: Position, message: str, field: str = "") -> None:
    load.issues.append(PolicyIssue(message, position, field=field))


# ---------------------------------------------------------------------------------------------
# Files.


def _policy_files(root: Path, load: LoadContext) -> list[tuple[Path, str]]:
    """(path to read, name shown in positions) of every policy file, in sorted path order.

    A directory contributes every `*.yaml`/`*.yml` below it, except hidden files and folders
    (editors' lock and swap files start with a dot) and symlinked folders (not followed, so a
    link cannot loop). A single file is loaded whatever its name.
    """
    try:
        is_directory = root.is_dir()
        exists = is_directory or root.exists()
    except OSError as error:
        load.issues.append(PolicyIssue(f"cannot read policy {root}: {error.strerror or error}"))
        return []
    if not exists:
        load.issues.append(PolicyIssue(f"policy path {root} does not exist"))
        return []
    if not is_directory:
        return [(root, str(root))]
    found: list[tuple[tuple[str, ...], Path]] = []

    def unreadable(error: OSError) -> None:
        where = _relative_name(Path(error.filename or root), root)
        load.issues.append(PolicyIssue(f"cannot read folder: {error.strerror or error}",
                                       Position(where, 1, 1)))

    for directory, folders, names in os.walk(root, onerror=unreadable):
        folders[:] = [folder for folder in folders if not _is_hidden(folder)]
        for name in names:
            if _is_policy_file_name(name):
                path = Path(directory, name)
                found.append((PurePosixPath(_relative_name(path, root)).parts, path))
    found.sort()
    return [(path, "/".join(parts)) for parts, path in found]


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_policy_file_name(name: str) -> bool:
    return (not _is_hidden(name) and name.lower().endswith(POLICY_SUFFIXES)
            and not name.endswith("~"))


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def policy_file_names(path: str | Path) -> list[str]:
    """The names `load_policy` would read (as shown in positions), for watchers and tools."""
    files = _policy_files(Path(path), LoadContext())
    return [shown_name for _, shown_name in files]
