"""An optimisation of loading: reuse what parsing unchanged files (and documents) gave last time.

The core is the cold load (`loader.load_policy`); this module only makes repeated loads of the
same folder cheaper and must give exactly the same model. `ParseCache` keeps, per file, what
parsing it gave, keyed by the file's shown name and the BLAKE2b hash of its bytes, so a reload
only parses the files that changed, and inside a changed file only the pieces of text (between
document start markers, `split_documents`) whose text or line offset changed: model parts carry
positions, so a piece that moved is parsed again. A file that cannot be split safely is parsed
whole. After a valid load of meshpilot's own kinds, the index of who refers to whom
(`dependents.References`) takes the next edit's removed and added pieces and checks only what
they touch. After a valid load of Gateway API documents (beside any of meshpilot's own), an
edit of only Gateway API documents skips the checks across documents, which read none of them,
and hands the edit to the formats' compile steps (`_format_edit`,
`assembly.compile_formats_edit`). Otherwise (or if either refuses the edit) the definitions
are replayed in file order and the checks across documents run over the whole set, as in a
cold load.

Whenever anything is wrong (any issue anywhere, a file that cannot be read), `try_load` gives
up and returns None: the caller then loads cold, so a rejected load reports exactly what a cold
one reports. A file whose inode, size, modification and status-change times are those it had
when it was read (long enough after it was written, `RACY_NS`) is not read again. A file
whose parsers read TLS files is parsed on every load, since a certificate
may change under an unchanged policy file (and hashing it after the parser read it could miss
a change in between).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from itertools import accumulate, chain
from operator import itemgetter
from pathlib import Path

from meshpilot.base import tlsfiles as tls
from meshpilot.base.errors import PolicyIssue, Position
from meshpilot.inputs import modelpatch
from meshpilot.inputs.assembly import build_model, compile_formats_edit
from meshpilot.inputs.context import (
    FormatPart,
    LoadContext,
    ModelPart,
    ParsedDocument,
)
from meshpilot.inputs.dependents import Edit, References
from meshpilot.inputs.documents import FORMATS, compile_pending, load_documents
from meshpilot.inputs.files import policy_files
from meshpilot.inputs.modelpatch import Compiled
from meshpilot.inputs.references import validate_references
from meshpilot.inputs.yamlsource import (
    MAX_FILE_BYTES,
    MAX_NODES,
    parse_yaml,
    parse_yaml_text,
    piece_ends,
    read_limited,
    split_documents,
    split_edited_text,
)
from meshpilot.ir.changes import ModelChanges, between
from meshpilot.ir.model import Model


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
class _Checked:
    """What a valid load without pending parts keeps for an edit of only FormatPart
    documents (`ParseCache._format_edit`): its definitions, the warnings of its checks across
    documents, its documents' parts other than FormatParts (in order) and what its formats'
    compile steps kept (`assembly.compile_formats_edit`)."""

    definitions: dict[Hashable, Position]
    warnings: list[PolicyIssue]
    natives: list[ModelPart]
    compiles: dict[int, object]
    compiled: Compiled  # the model and what the compile steps gave for it (`modelpatch.py`)


@dataclass(slots=True)
class _CachedFile:
    """What parsing one file gave, in a context of its own (no other file's definitions)."""

    # BLAKE2b of the file's bytes; None when `text` is kept: the next read is compared with
    # it instead (hashing a 1.2 MB file costs 15 M instructions, decoding and comparing 1.5).
    digest: bytes | None
    parsed: list[ParsedDocument]
    definitions: dict[Hashable, Position]  # in the order they were made
    clean: bool  # no issue at all (YAML, identity, kind parser)
    tls_files: tuple[str, ...]  # TLS files its parsers read: then parsed again on every load
    # (line offset, text) -> its parse, for every piece of a file that could be split
    pieces: dict[tuple[int, str], _CachedPiece] = field(default_factory=dict)
    # (inode, device, size, mtime, ctime) when read, if old enough to be trusted (`_entry`)
    signature: tuple[int, ...] | None = None
    # A split file whose every piece holds one document (so piece i is parsed[i]): its text
    # and pieces in order, for the next edit (`_edited`); None: not such a file.
    text: str | None = None
    order: list[tuple[int, str]] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # where each of them ends in `text`
    data: bytes = b""  # the bytes `text` was decoded from (compared without a decode)
    nodes: int = 0
    # The entry this one was made from by `_edited`, and the pieces it took out and put in
    # (so `_edit` need not compare every piece); None once another is made from this one.
    since: _CachedFile | None = None
    taken: list[_CachedPiece] = field(default_factory=list)
    put: list[_CachedPiece] = field(default_factory=list)


class ParseCache:
    """The parses of one policy folder's files, kept from load to load.

    An unchanged file is neither YAML-parsed nor kind-parsed again, and gives the very same
    model part objects as before (the Translation reuses resources by them). `tls_files` is the
    set of TLS files (absolute) the newest attempt depended on. Not thread-safe.
    """

    def __init__(self, path: Path):
        self.path = path
        self.tls_files: frozenset[str] = frozenset()
        self._files: dict[str, _CachedFile] = {}
        self.parsed_files = 0  # files parsed by the newest load (for tests and metrics)
        self.parsed_pieces = 0  # pieces of those files parsed (a file parsed whole counts 1)
        self.read_files = 0  # files read (and hashed) by the newest load
        # The newest valid load's files and its index (`dependents.py`), for the next edit.
        self._good: dict[str, _CachedFile] = {}
        self._references: References | None = None
        self._model: Model | None = None  # what the newest valid load gave
        # Every cached document reports into this one context once parsed, so a load need
        # not bind each document to a context of its own: it starts this one afresh.
        self._shared = LoadContext()
        # After a valid load without pending parts: its definitions and the warnings its
        # checks across documents gave (they read no FormatPart, so an edit of only those
        # gives the same), for `_format_edit`; None: the next edit goes the whole way.
        self._checked: _Checked | None = None
        # What the newest load changed from the one before (None: it went the whole way).
        self.changes: ModelChanges | None = None
        self.fast = False  # whether the newest load was an index one (for tests)
        self.format_edit = False  # whether it compiled an edit as cached (`_format_edit`)
        self.model_patched = False  # whether that edit patched the last model (`modelpatch`)

    def try_load(self) -> Model | None:
        """The model, or None if anything is wrong (then the caller loads cold, for the
        exact issues). Must run with TLS paths relative to the policy folder."""
        load = LoadContext()
        self.changes = None
        self.fast = self.format_edit = self.model_patched = False
        files = policy_files(self.path, load)
        self.parsed_files = self.parsed_pieces = self.read_files = 0
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
        shown = tuple(shown_name for _, shown_name in files)
        references, self._references = self._references, None  # stale if anything fails
        checked, self._checked = self._checked, None
        edit = _edit(self._good, kept) if references is not None or checked is not None \
            else Edit()
        if references is not None:
            done = references.apply(edit, shown)
            if done is not None:
                self._good, self._references = kept, references
                self.changes = done[1]
                self.fast = True
                self._model = done[0]
                return done[0]
        if checked is not None:
            model = self._format_edit(edit, entries, shown, checked)
            if model is not None:
                self._good = kept
                return model
        # Every cached document reports into `_shared` (`_share`): this load's, from now.
        load = self._shared
        load.issues, load.warnings, load.definitions = [], [], {}
        parsed: list[ParsedDocument] = []
        for entry in entries:
            for key, position in entry.definitions.items():
                if load.first_definition(key, position) is not None:
                    return None  # defined in two files: a cold load words the issue
            parsed.extend(entry.parsed)
        pending = compile_pending(parsed, load)
        validate_references(pending, load)
        checked_warnings = list(load.warnings)
        compiled, statuses, kept_compiles = compile_formats_edit(pending, load, (), (), {})
        if load.issues:
            return None
        model = build_model((*(part for document in pending for part in document.parts),
                             *compiled), shown, statuses, load.warnings)
        self._good = kept
        self._references = References.of(pending, model, load.definitions)
        if pending is parsed and self._references is None:
            natives = [part for document in pending for part in document.parts
                       if not isinstance(part, FormatPart)]
            self._checked = _Checked(load.definitions, checked_warnings, natives,
                                     kept_compiles,
                                     modelpatch.compiled(model, natives, compiled, statuses))
        # Not by the index: what changed is what the two models do not share.
        if self._model is not None:
            self.changes = between(self._model, model)
        self._model = model
        return model

    def _format_edit(self, edit: Edit, entries: list[_CachedFile], shown: tuple[str, ...],
                     checked: _Checked,
                     ) -> Model | None:
        """The model after an edit of only documents a format's compile step reads (Gateway
        API: `FormatPart`s), or None (then the load goes the whole way). The checks across
        documents read no FormatPart (`references.py`), so they would find what they found in
        the last valid load: its warnings, no issue. Only new definitions are checked, and
        the documents are compiled as cached, each already reporting into `_shared`."""
        if edit.clash or not all(document.parts and not document.compiled and
                                 all(isinstance(part, FormatPart) for part in document.parts)
                                 for document in (*edit.removed, *edit.added)):
            return None
        warnings = checked.warnings
        # Changed in place: `checked` is the last load's, already dropped (`try_load`) if this
        # edit fails (a copy of 5,000 definitions per edit otherwise).
        definitions = checked.definitions
        for key in edit.removed_definitions:
            definitions.pop(key, None)
        for key, position in edit.added_definitions.items():
            if key in definitions:
                return None  # defined twice: a cold load words it
            definitions[key] = position
        if any(_view_name_taken(document, definitions) for document in edit.added):
            return None  # `references._check_view_names` reads these documents' kinds
        load = self._shared
        load.issues, load.warnings, load.definitions = [], list(warnings), definitions
        parsed = list(chain.from_iterable(entry.parsed for entry in entries))
        compiled, statuses, kept_compiles = compile_formats_edit(
            parsed, load, edit.removed, edit.added, checked.compiles)
        if load.issues:
            return None
        # The other formats' parts are the last load's: only FormatPart documents changed,
        # so the last model is patched by what the compile gave differently, if it can be.
        done = modelpatch.patched(checked.compiled, compiled, statuses, shown, load.warnings)
        if done is not None:
            made, self.changes = done
            model = made.model
        else:
            model = build_model((*checked.natives, *compiled), shown, statuses, load.warnings)
            made = modelpatch.compiled(model, checked.natives, compiled, statuses)
            if self._model is not None:
                self.changes = between(self._model, model)
        self._checked = _Checked(definitions, warnings, checked.natives, kept_compiles, made)
        self.format_edit = True
        self.model_patched = done is not None
        self._model = model
        return model

    def forget(self) -> None:
        """A load went cold after this cache's attempt: the next one goes the whole way."""
        self._references = None
        self._checked = None
        self.changes = None
        self._model = None

    def _entry(self, file_path: Path, shown_name: str) -> _CachedFile | None:
        entry = self._files.get(shown_name)
        signature = _signature(file_path)
        if signature is None:
            return None  # gone or unreadable: a cold load says so
        if entry is not None and not entry.tls_files and entry.signature == signature:
            return entry  # not written since it was read (and not within the racy margin)
        made = self._read(file_path, shown_name, entry)
        if made is not None:
            made.signature = signature if _settled(signature) else None
        return made

    def _read(self, file_path: Path, shown_name: str,
              entry: _CachedFile | None) -> _CachedFile | None:
        self.read_files += 1
        try:
            data = read_limited(file_path)
        except Exception:  # too large, not a regular file, unreadable: a cold load says so
            return None
        if entry is not None and entry.text is not None:  # kept only for a clean entry
            if data == entry.data:
                return entry
            text = _decoded(data)
            self.parsed_files += 1
            told = None if text is None else split_edited_text(
                text, entry.text, entry.order, entry.ends, data, entry.data)
            if told is not None:
                return self._edited(entry, data, shown_name, *told)
            digest = None
        else:
            digest = _digest(data)
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
                load_documents(documents, local, parsed)
            self._share(parsed)
            digest = digest or _digest(data)
            made = _CachedFile(digest, parsed, local.definitions, not local.issues,
                               tuple(sorted(read)))
            return entry if entry is not None and entry.digest == digest and \
                _same_parse(entry, made) else made
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
                parsed_again = self._parse_piece(key, shown_name)
                # A piece reading TLS files whose files gave the same parts: the very objects
                # of last time, so the edit does not count it as changed.
                piece = piece if piece is not None and _same_parse(piece, parsed_again) \
                    else parsed_again
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
        made = _CachedFile(None, parsed, definitions, clean, tuple(sorted(read_files)), kept)
        if clean and not read_files and len(parsed) == len(kept):  # one document a piece
            made.text, made.order, made.nodes = "".join(text for _, text in pieces), \
                list(kept), nodes
            made.ends, made.data = piece_ends(pieces), data
        else:
            made.digest = digest or _digest(data)
        return made

    def _edited(self, entry: _CachedFile, data: bytes, shown_name: str, text: str,
                head: int, middle: list[tuple[int, str]], tail: int) -> _CachedFile:
        """The entry of an edited file from its last one (`split_edited`: its first `head`
        and last `tail` pieces are the same text at the same lines): only the pieces between
        are looked up or parsed, and the rest is taken over whole. Gives what the whole
        split in `_read` gives (the pieces in file order, one document each)."""
        count = len(entry.order)
        gone = entry.order[head:count - tail]
        pieces = dict(entry.pieces)
        definitions = dict(entry.definitions)
        nodes = entry.nodes
        for key in gone:
            piece = pieces.pop(key)
            nodes -= piece.nodes
            for name in piece.definitions:
                del definitions[name]
        clean, single = True, True
        made: list[_CachedPiece] = []
        for key in middle:
            piece = entry.pieces.get(key)  # a piece between two edited ones: the same
            if piece is None:
                piece = self._parse_piece(key, shown_name)
            pieces[key] = piece
            made.append(piece)
            nodes += piece.nodes
            clean = clean and piece.clean
            single = single and len(piece.parsed) == 1 and not piece.tls_files
            for name, position in piece.definitions.items():
                if name in definitions:  # defined twice in the file: a cold load words it
                    clean = False
                definitions[name] = position
        if nodes > MAX_NODES:
            clean = False
        parsed = [*entry.parsed[:head], *(document for piece in made
                                          for document in piece.parsed),
                  *entry.parsed[count - tail:]]
        order = [*entry.order[:head], *middle, *entry.order[count - tail:]]
        tls_files = tuple(sorted({path for piece in made for path in piece.tls_files}))
        result = _CachedFile(None, parsed, definitions, clean, tls_files, pieces)
        if single and clean:
            result.text, result.order, result.nodes, result.data = text, order, nodes, data
            # The unchanged last pieces end as far from the end as they did (one pass in C).
            start = entry.ends[head - 1] if head else 0
            made_ends = list(accumulate(map(len, map(itemgetter(1), middle)), initial=start))
            shift = len(text) - len(entry.text)
            result.ends = [*entry.ends[:head], *made_ends[1:],
                           *map(shift.__add__, entry.ends[count - tail:])]
        else:
            result.digest = _digest(data)
        kept_ids = {id(piece) for piece in made}
        gone_ids = {id(entry.pieces[key]) for key in gone}
        entry.since = None  # one step of history at most
        result.since = entry
        result.taken = [entry.pieces[key] for key in gone
                        if id(entry.pieces[key]) not in kept_ids]
        result.put = [piece for piece in made if id(piece) not in gone_ids]
        return result

    def _share(self, parsed: list[ParsedDocument]) -> None:
        """Parsed (its issues and definitions taken): each document now reports into
        `_shared`, which each load starts afresh."""
        for document in parsed:
            document.context.load = self._shared

    def _parse_piece(self, key: tuple[int, str], shown_name: str) -> _CachedPiece:
        line_offset, text = key
        self.parsed_pieces += 1
        local = LoadContext()
        parsed: list[ParsedDocument] = []
        with tls.recording() as read:
            documents, issues, nodes = parse_yaml_text(text, shown_name, line_offset)
            local.issues.extend(issues)
            load_documents(documents, local, parsed)
        self._share(parsed)
        return _CachedPiece(parsed, local.definitions, not local.issues, nodes,
                            tuple(sorted(read)))


# A file whose modification (or status change) is this recent when read may be written again
# within the same timestamp, so its (size, mtime) cannot tell the two contents apart (git's
# "racy" files): it is read and hashed again on every load until it is older.
RACY_NS = 2_000_000_000


def _signature(path: Path) -> tuple[int, ...] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _decoded(data: bytes) -> str | None:
    """A file's text, for `split_edited_text`; None: not UTF-8 or too large."""
    if len(data) > MAX_FILE_BYTES:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _settled(signature: tuple[int, ...]) -> bool:
    return max(signature[3], signature[4]) < time.time_ns() - RACY_NS


def _same_parse(old: _CachedPiece | _CachedFile, new: _CachedPiece | _CachedFile) -> bool:
    """Whether parsing the same text again gave equal parts (the TLS files it read unchanged),
    with the same issues-or-not and definitions."""
    return old.clean and new.clean and old.tls_files == new.tls_files and \
        old.definitions == new.definitions and \
        [d.parts for d in old.parsed] == [d.parts for d in new.parsed]


# Every API group a document's definition may be keyed by (None: meshpilot's own kinds).
_GROUPS = (None, *dict.fromkeys(version.rpartition("/")[0] for version in FORMATS.api_versions()))
_VIEW_KINDS = {"Service": "Gateway", "Gateway": "Service"}


def _view_name_taken(document: ParsedDocument, definitions: dict[Hashable, Position]) -> bool:
    """Whether a Service (or Gateway) document's name is a Gateway's (or Service's) too, or
    it is a Rollout: the checks of every document's kind and name
    (`references._check_view_names`, `_check_one_rollout`) would look at it."""
    kind, name = document.context.kind, document.context.name
    if kind == "Rollout":
        return True
    other = _VIEW_KINDS.get(kind)
    return other is not None and any(
        (("document", other, name) if group is None else ("document", group, other, name))
        in definitions for group in _GROUPS)


def _units(entry: _CachedFile) -> list[_CachedPiece | _CachedFile]:
    """What an entry was parsed as: its pieces, or the file whole."""
    return list(entry.pieces.values()) if entry.pieces else [entry]


def _edit(before: dict[str, _CachedFile], after: dict[str, _CachedFile]) -> Edit:
    """The documents (and definitions) of the pieces parsed for `after` that `before` did not
    hold, and those of `before`'s that are gone: pieces are compared by identity, so a piece
    parsed again (it moved, or reads TLS files) counts as removed and added."""
    edit = Edit()
    for name in before.keys() | after.keys():
        old, new = before.get(name), after.get(name)
        if old is new:
            continue
        if new is not None and old is not None and new.since is old:
            units: tuple[list[_CachedPiece], list[_CachedPiece]] = (new.taken, new.put)
            old_units, new_units = units
            for unit in old_units:
                edit.removed.extend(unit.parsed)
                edit.removed_definitions.extend(unit.definitions)
            for unit in new_units:
                edit.added.extend(unit.parsed)
                for key, position in unit.definitions.items():
                    if key in edit.added_definitions:
                        edit.clash = True
                    edit.added_definitions[key] = position
            continue
        old_units = _units(old) if old is not None else []
        new_units = _units(new) if new is not None else []
        old_ids = {id(unit) for unit in old_units}
        new_ids = {id(unit) for unit in new_units}
        for unit in old_units:
            if id(unit) not in new_ids:
                edit.removed.extend(unit.parsed)
                edit.removed_definitions.extend(unit.definitions)
        for unit in new_units:
            if id(unit) not in old_ids:
                edit.added.extend(unit.parsed)
                for key, position in unit.definitions.items():
                    if key in edit.added_definitions:
                        edit.clash = True  # defined in two changed files
                    edit.added_definitions[key] = position
    return edit
