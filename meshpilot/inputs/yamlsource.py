"""YAML text to plain Python values that remember where every field was written.

This module owns reading policy files safely and turning YAML into JSON-like values (dict, list,
str, int, float, bool, None) plus the 1-based line and column of every mapping key, mapping value
and list item, so later layers can say `raw.yaml:14:7` about any field path. It knows nothing about
policy kinds or Envoy; it never raises for bad input (every problem is a `PolicyIssue`), and it
never echoes document content in its messages beyond a single offending character.

Why events instead of `yaml.compose_all`: libyaml's C composer recurses once per nesting level and
segfaults the interpreter on deeply nested input (about 100,000 `[`), and composing expands nothing
but still lets an alias bomb through to whoever walks the graph. So we consume `CSafeLoader`'s event
stream (libyaml's parser is not recursive) and build values ourselves, which lets us:

- stop at `MAX_DEPTH` levels of nesting, before libyaml's slow path for deep flow collections;
- allow anchors and aliases (and `<<` merge keys) but count every node an alias expands to, and
  refuse a file of more than `MAX_NODES` expanded nodes, so billion-laughs documents fail fast
  (per file, not per document, so a file cannot repeat the trick document after document);
  an alias shares the anchored value rather than copying it, and an anchor is only usable once its
  node is complete, so recursive structures cannot be built;
- reject duplicate keys, at the second key.

Value rules (JSON semantics, because every consumer is JSON-shaped): mapping keys are always the
key's text (`on:` and `80:` are the strings "on" and "80"; complex keys are an error); scalars
follow YAML 1.1 as PyYAML's SafeLoader does (`yes` is true, `0x1f` is 31) except that timestamps
and `!!binary` stay strings, which is what protobuf's JSON mapping expects. Empty documents
(a trailing `---`, or a document that is just `null`) are skipped.
"""

from __future__ import annotations

import json
import os
import re
import stat
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate
from operator import itemgetter
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

from meshpilot.base.errors import PolicyIssue, Position

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_NODES = 1_000_000  # expanded nodes per file, aliases counted at their full size
MAX_DEPTH = 128  # nesting levels; Envoy configs need a few dozen, protobuf's JSON parser 100

FieldPath = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_RESOLVER = Resolver()
_CONSTRUCTOR = SafeConstructor()
_IDENTIFIER = re.compile(r"[A-Za-z_@][A-Za-z0-9_@\-]*\Z")


@lru_cache(maxsize=8192)  # the origin of every element: the same paths recur in every document
def format_path(path: FieldPath) -> str:
    """`("clusters", 0, "load_assignment")` -> `clusters[0].load_assignment`.

    Keys that are not identifier-like (dots, spaces) are written as `["key"]`, so the text can be
    read back unambiguously.
    """
    parts: list[str] = []
    for step in path:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _IDENTIFIER.match(step):
            parts.append(f".{step}" if parts else step)
        else:
            parts.append(f"[{json.dumps(step)}]")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Positions: a shadow tree beside the value, shared (not copied) when an alias repeats a node.
# A place is stored as one packed int (line << 24 | column, both 1-based) rather than a Position:
# ints are not tracked by the garbage collector, and a large policy has hundreds of thousands of
# places, which would otherwise make the collector re-scan the growing heap again and again.

_Mark = int
_COLUMN_BITS = 24


def _mark(line: int, column: int) -> _Mark:
    """Pack 1-based `line` and `column`."""
    return line << _COLUMN_BITS | column


def _position(file: str, mark: _Mark) -> Position:
    return Position(file, mark >> _COLUMN_BITS, mark & ((1 << _COLUMN_BITS) - 1))


class _MapMarks:
    __slots__ = ("keys", "start", "values")

    def __init__(self, start: _Mark):
        self.start = start
        self.keys: dict[str, _Mark] = {}
        self.values: dict[str, _MarkTree] = {}


class _SeqMarks:
    __slots__ = ("items", "start")

    def __init__(self, start: _Mark):
        self.start = start
        self.items: list[_MarkTree] = []


_MarkTree = _Mark | _MapMarks | _SeqMarks


def _start_of(tree: _MarkTree) -> _Mark:
    return tree if isinstance(tree, int) else tree.start


@dataclass(frozen=True, slots=True)
class Located:
    """One YAML document: its plain value and where each part of it was written."""

    value: Any
    file: str
    _marks: _MarkTree = field(repr=False)

    @property
    def position(self) -> Position:
        """Where the document's top-level node starts."""
        return _position(self.file, _start_of(self._marks))

    def position_of(self, path: FieldPath) -> Position:
        """Where the field at `path` was written: a mapping member's key, or a list item.

        Unknown paths fall back to the nearest ancestor that exists, so callers can pass the path
        of something that is missing (`name` of a mapping without one) and get the mapping.
        """
        return _position(self.file, self._locate(path, want_key=True))

    def value_position_of(self, path: FieldPath) -> Position:
        """Where the value at `path` starts (for a mapping member: after its key)."""
        return _position(self.file, self._locate(path, want_key=False))

    def _locate(self, path: FieldPath, want_key: bool) -> _Mark:
        # Called for the origin of every IR element: exact type tests (no subclasses exist)
        # and one length, rather than isinstance chains.
        tree = self._marks
        last = len(path) - 1
        for index, step in enumerate(path):
            kind = type(tree)
            if kind is _MapMarks and type(step) is str and step in tree.keys:
                if want_key and index == last:
                    return tree.keys[step]
                tree = tree.values[step]
            elif kind is _SeqMarks and type(step) is int and 0 <= step < len(tree.items):
                tree = tree.items[step]
            else:
                break
        return tree if type(tree) is int else tree.start


# ---------------------------------------------------------------------------------------------
# Reading files.


def read_yaml_file(path: Path, file: str) -> tuple[list[Located], list[PolicyIssue]]:
    """Read and parse one file; `file` is the name positions carry. Never raises for bad input.

    Opened non-blocking and checked to be a regular file, so a FIFO or device named `x.yaml`
    cannot hang or flood the loader; at most `MAX_FILE_BYTES` + 1 bytes are read.
    """
    try:
        data = read_limited(path)
    except _TooLarge:
        return [], [_file_issue(file, f"file is larger than {MAX_FILE_BYTES} bytes")]
    except _NotRegular:
        return [], [_file_issue(file, "not a regular file")]
    except OSError as error:
        return [], [_file_issue(file, f"cannot read file: {error.strerror or error}")]
    return parse_yaml(data, file)


class _TooLarge(Exception):
    pass


class _NotRegular(Exception):
    pass


def read_limited(path: Path) -> bytes:
    """A policy file's bytes; refuses (raises) what is not a regular file or is too large."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(path, flags)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise _NotRegular
        if info.st_size > MAX_FILE_BYTES:
            raise _TooLarge
        chunks: list[bytes] = []
        remaining = MAX_FILE_BYTES + 1  # the file may grow after fstat
        # The size fstat gave (and one more byte) in the first read: a file is usually read
        # in one, so its bytes are not copied again by the join (a 1 MB file, 2 M instructions).
        size = info.st_size + 1
        while remaining > 0:
            chunk = os.read(descriptor, min(remaining, max(size, 1 << 16)))
            size = 1 << 20
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(descriptor)
    data = b"".join(chunks)
    if len(data) > MAX_FILE_BYTES:
        raise _TooLarge
    return data


def _file_issue(file: str, message: str) -> PolicyIssue:
    return PolicyIssue(message, Position(file, 1, 1))


# ---------------------------------------------------------------------------------------------
# Parsing text.


def parse_yaml(data: bytes | str, file: str) -> tuple[list[Located], list[PolicyIssue]]:
    """Parse a YAML stream into its non-empty documents, plus every issue found.

    Documents before a syntax error are kept; the stream is abandoned at the first error that
    libyaml cannot recover from (syntax, nesting depth, node count).
    """
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError as error:
            return [], [_offset_issue(data.encode("utf-8", "surrogatepass"),
                                      len(data[: error.start].encode("utf-8", "surrogatepass")),
                                      file, "text is not valid Unicode (unpaired surrogate)")]
    if len(data) > MAX_FILE_BYTES:
        return [], [_file_issue(file, f"file is larger than {MAX_FILE_BYTES} bytes")]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return [], [_offset_issue(data, error.start, file, "file is not valid UTF-8")]
    text = text.removeprefix("\ufeff")
    documents, issues, _ = parse_yaml_text(text, file)
    return documents, issues


def parse_yaml_text(text: str, file: str,
                    line_offset: int = 0) -> tuple[list[Located], list[PolicyIssue], int]:
    """`parse_yaml` of decoded text (no BOM), which starts `line_offset` lines into `file`:
    every position is shifted by it. Also returns how many nodes the text counted (towards the
    file's `MAX_NODES`)."""
    builder = _DocumentBuilder(file, line_offset)
    try:
        builder.run(yaml.CSafeLoader(text))
    except _Abandon:
        pass
    except yaml.reader.ReaderError as error:
        issue = _offset_issue(text.encode("utf-8"), error.position, file, _reader_problem(error))
        if line_offset and issue.position is not None:
            issue = PolicyIssue(issue.message, Position(file, issue.position.line + line_offset,
                                                        issue.position.column))
        builder.issues.append(issue)
    except yaml.MarkedYAMLError as error:
        builder.issues.append(_syntax_issue(error, file, line_offset))
    except yaml.YAMLError as error:  # no mark: report at the top of the file
        builder.issues.append(_file_issue(file, f"YAML syntax error: {type(error).__name__}"))
    return builder.documents, builder.issues, builder.nodes


# A document start marker: `---` at the start of a line, then a blank or the end. libyaml always
# reads it as one there: a block scalar's content is indented at least one column, a plain
# scalar ends before it, and a quoted scalar or flow collection spanning it is an error (so the
# split text has an error too, and the caller parses the file whole).
_DOCUMENT_START = re.compile(r"^---(?=[ \t\n]|\Z)", re.M)
# What makes splitting at `---` lines unsafe: directives and document end markers (which belong
# to the next or the previous document), and line breaks or BOMs other than `\n` / the first.
_UNSPLITTABLE = re.compile(r"^(?:%|\.\.\.(?=[ \t\n]|\Z))|[\r\x85\u2028\u2029\ufeff]", re.M)


def split_documents(data: bytes) -> list[tuple[int, str]] | None:
    """The text of a policy file cut before every document start marker, as (line offset,
    text) pairs, so each piece can be parsed alone (`parse_yaml_text(text, file, offset)`) and
    give the very documents, and positions, a parse of the whole file gives; the pieces' node
    counts add up to the file's. None when the file cannot be cut safely (not UTF-8, too large,
    directives, `...`, `\r` line breaks): then parse it whole."""
    if len(data) > MAX_FILE_BYTES:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = text.removeprefix("\ufeff")
    # What `_UNSPLITTABLE` and `_DOCUMENT_START` match, found with str searches (a file edit
    # splits its file again: a multi-line regex over 450 kB costs tens of ms, these one).
    if any(mark in text for mark in ("\r", "\x85", "\u2028", "\u2029", "\ufeff")) or \
            text.startswith("%") or "\n%" in text or _markers(text, "...")[:1]:
        return None
    pieces: list[tuple[int, str]] = []
    start = line = 0
    for cut in _markers(text, "---"):
        if cut > start:
            pieces.append((line, text[start:cut]))
            line += text.count("\n", start, cut)
            start = cut
    pieces.append((line, text[start:]))
    return pieces


def split_edited(data: bytes, before: str, pieces: Sequence[tuple[int, str]],
                 ) -> tuple[str, int, list[tuple[int, str]], int] | None:
    """`split_documents(data)` for an edit of a text (`before`) it cut into `pieces`, told as
    (the text, how many of `pieces` begin it, the pieces between, how many end it): what only
    compares the unchanged pieces (in C) and cuts the changed middle. None when it cannot
    tell (then `split_documents` must cut the whole: the edit moved lines under the last
    pieces, a BOM, anything that makes the middle unsplittable, not UTF-8, too large)."""
    if len(data) > MAX_FILE_BYTES:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return split_edited_text(text, before, pieces, data=data, before_data=before.encode())


def split_edited_text(text: str, before: str, pieces: Sequence[tuple[int, str]],
                      ends: Sequence[int] | None = None,
                      data: bytes = b"", before_data: bytes = b"",
                      ) -> tuple[str, int, list[tuple[int, str]], int] | None:
    """`split_edited` of a file's text, already decoded (and no larger than
    MAX_FILE_BYTES); `ends`: where each of `pieces` ends in `before`, if known
    (`piece_ends`); `data` and `before_data`: the two texts' bytes, if known, compared
    instead where each is as long as its text (ASCII: the same offsets), without copies."""
    if not text or text.startswith("\ufeff") or before.startswith("\ufeff"):
        return None
    count = len(pieces)
    # Where the unchanged text ends and begins again, found in C, then which of the pieces lie
    # whole in it (by where they end, added up in C if not given).
    if ends is None:
        ends = piece_ends(pieces)
    ascii = len(data) == len(text) and len(before_data) == len(before)
    head = bisect_right(ends, _common_prefix_bytes(before_data, data) if ascii
                        else _common_prefix(before, text))
    while head and not _cut_at(text, ends[head - 1]):
        head -= 1  # the text after it changed right at its end: cut again
    at = ends[head - 1] if head else 0
    # The last `tail` pieces are `before`'s from ends[count - tail - 1] (0 for all of them):
    # as many as begin at or after the unchanged end.
    same_from = len(before) - (_common_suffix_bytes(before_data, data) if ascii
                               else _common_suffix(before, text))
    tail = 0 if not count else min(
        count - bisect_left(ends, same_from, 0, count - 1) - 1 if same_from else count,
        count - head)

    def begins(tail: int) -> int:  # where the last `tail` pieces begin in `before`
        return ends[count - tail - 1] if tail < count else 0

    shift = len(text) - len(before)
    # Each of the last pieces began at a cut of `before`, so with a document start marker (or
    # at 0): at the start of a line of `text`, it begins one there too.
    while tail and (begins(tail) + shift < at or
                    (begins(tail) + shift and text[begins(tail) + shift - 1] != "\n")):
        tail -= 1
    end = begins(tail) + shift if tail else len(text)
    if tail and text.count("\n", at, end) != before.count("\n", at, begins(tail)):
        tail, end = 0, len(text)  # lines added or removed before them: they moved
    middle = text[at:end]
    if any(mark in middle for mark in ("\r", "\x85", "\u2028", "\u2029", "\ufeff")) or \
            (at == 0 and middle.startswith("%")) or "\n%" in middle or \
            _markers(middle, "...")[:1]:
        return None
    line = pieces[head][0] if head < count else text.count("\n", 0, at)
    made: list[tuple[int, str]] = []
    start = 0
    for cut in _markers(middle, "---"):
        if cut > start:
            made.append((line, middle[start:cut]))
            line += middle.count("\n", start, cut)
            start = cut
    if start < len(middle):
        made.append((line, middle[start:]))
    return text, head, made, tail


def piece_ends(pieces: Sequence[tuple[int, str]]) -> list[int]:
    """Where each of a text's pieces (`split_documents`) ends in it."""
    return list(accumulate(map(len, map(itemgetter(1), pieces))))


_CHUNK = 1 << 15  # characters compared at a time by `_alike_for`


def _alike_for(most: int, alike: Callable[[int, int], bool]) -> int:
    """How many of at most `most` items two texts have alike, from one end, where
    `alike(done, count)` says whether the `count` items after the first `done` are: whole
    chunks first, then a binary search inside the first chunk that differs (every
    comparison in C)."""
    done = 0
    while done < most:
        step = min(_CHUNK, most - done)
        if alike(done, step):
            done += step
            continue
        low, high = 0, step - 1  # alike for `low` more; not for `high + 1`
        while low < high:
            middle = (low + high + 1) // 2
            if alike(done, middle):
                low = middle
            else:
                high = middle - 1
        return done + low
    return done


def _common_prefix(one: str, other: str) -> int:
    """How many characters `one` and `other` begin with alike."""
    return _alike_for(min(len(one), len(other)),
                      lambda done, n: one[done:done + n] == other[done:done + n])


def _common_suffix(one: str, other: str) -> int:
    """How many characters `one` and `other` end with alike."""
    a, b = len(one), len(other)
    return _alike_for(min(a, b),
                      lambda done, n: one[a - done - n:a - done] == other[b - done - n:b - done])


def _common_prefix_bytes(one: bytes, other: bytes) -> int:
    """`_common_prefix` of two byte strings: `one`'s slices are views, so nothing is copied
    (slices of a 1.2 MB text copied 3 M instructions of it per edit)."""
    view = memoryview(one)
    return _alike_for(min(len(one), len(other)),
                      lambda done, n: other.startswith(view[done:done + n], done))


def _common_suffix_bytes(one: bytes, other: bytes) -> int:
    """`_common_suffix` of two byte strings, without copies (`_common_prefix_bytes`)."""
    view = memoryview(one)
    a, b = len(one), len(other)
    return _alike_for(min(a, b),
                      lambda done, n: other.endswith(view[a - done - n:a - done], 0, b - done))


def _cut_at(text: str, at: int) -> bool:
    """Whether `split_documents` cuts `text` at `at` (a document start marker, or an end)."""
    if at == 0 or at == len(text):
        return True
    after = at + 3
    return text[at - 1] == "\n" and text.startswith("---", at) and \
        (after == len(text) or text[after] in " \t\n")


def _markers(text: str, marker: str) -> list[int]:
    """Where `marker` starts a line and is followed by a blank, a line break or the end."""
    found = []
    at = 0 if text.startswith(marker) else text.find("\n" + marker) + 1
    while at > 0 or (at == 0 and text.startswith(marker)):
        after = at + len(marker)
        if after == len(text) or text[after] in " \t\n":
            found.append(at)
        at = text.find("\n" + marker, at + 1) + 1
        if at == 0:
            break
    return found


def _offset_issue(data: bytes, offset: int, file: str, message: str) -> PolicyIssue:
    """An issue at a byte offset, with the column counted in characters as editors do."""
    offset = max(0, min(offset, len(data)))
    line_start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", "replace")) + 1
    return PolicyIssue(message, Position(file, data.count(b"\n", 0, offset) + 1, column))


def _reader_problem(error: yaml.reader.ReaderError) -> str:
    character = error.character
    if isinstance(character, int):
        return f"unacceptable character #x{character:04x}: {error.reason}"
    return f"unacceptable character: {error.reason}"


def _syntax_issue(error: yaml.MarkedYAMLError, file: str, line_offset: int = 0) -> PolicyIssue:
    mark = error.problem_mark or error.context_mark
    position = (Position(file, mark.line + 1 + line_offset, mark.column + 1) if mark
                else Position(file, 1 + line_offset, 1))
    problem = error.problem or "invalid YAML"
    if error.context:
        problem = f"{problem} ({error.context})"
    return PolicyIssue(f"YAML syntax error: {problem}", position)


class _Abandon(Exception):
    """The rest of the stream cannot be trusted; the issue is already recorded."""


_DISCARD = object()  # pending key whose value is dropped (a complex key already reported)
_MERGE = object()  # pending `<<` merge key


@dataclass(slots=True)
class _Node:
    """A complete node: kept for anchors and merges, which need its value, marks and size."""

    value: Any
    marks: _MarkTree
    size: int  # expanded node count, aliases included


class _MapFrame:
    """A mapping being built."""

    __slots__ = ("anchor", "key", "key_mark", "marks", "merges", "size", "value")

    def __init__(self, start: _Mark, anchor: str | None):
        self.anchor = anchor
        self.value: dict[str, Any] = {}
        self.marks = _MapMarks(start)
        self.size = 1
        # None: the next node is a key. A str, _DISCARD or _MERGE: the next node is its value.
        self.key: Any = None
        self.key_mark: _Mark = start
        self.merges: list[_Node] = []


class _SeqFrame:
    """A sequence being built."""

    __slots__ = ("anchor", "marks", "size", "value")

    def __init__(self, start: _Mark, anchor: str | None):
        self.anchor = anchor
        self.value: list[Any] = []
        self.marks = _SeqMarks(start)
        self.size = 1


class _DocumentBuilder:
    """Turns one stream of libyaml events into `Located` documents and issues."""

    def __init__(self, file: str, line_offset: int = 0):
        self.file = file
        self._line_offset = line_offset
        self.documents: list[Located] = []
        self.issues: list[PolicyIssue] = []
        self._stack: list[_MapFrame | _SeqFrame] = []
        self._anchors: dict[str, _Node] = {}
        self._nodes = 0  # in the whole file, what aliases repeat included
        self._root: _Node | None = None
        self._handlers: dict[type, Callable[[Any], None]] = {
            yaml.ScalarEvent: self._on_scalar,
            yaml.MappingStartEvent: self._on_collection_start,
            yaml.SequenceStartEvent: self._on_collection_start,
            yaml.MappingEndEvent: self._on_collection_end,
            yaml.SequenceEndEvent: self._on_collection_end,
            yaml.AliasEvent: self._on_alias,
            yaml.DocumentStartEvent: self._on_document_start,
            yaml.DocumentEndEvent: self._on_document_end,
        }

    def run(self, loader: yaml.CSafeLoader) -> None:
        handlers = self._handlers
        try:
            while (event := loader.get_event()) is not None:
                handler = handlers.get(type(event))
                if handler is not None:  # stream start and end need nothing
                    handler(event)
        finally:
            loader.dispose()

    @property
    def nodes(self) -> int:
        return self._nodes

    def _mark_of(self, event: yaml.Event) -> _Mark:
        mark = event.start_mark
        return _mark(mark.line + 1 + self._line_offset, mark.column + 1)

    def _on_document_start(self, _: yaml.DocumentStartEvent) -> None:
        self._anchors.clear()  # anchors do not cross documents
        self._root = None

    def _on_document_end(self, _: yaml.DocumentEndEvent) -> None:
        root, self._root = self._root, None
        if root is not None and root.value is not None:
            self.documents.append(Located(root.value, self.file, root.marks))

    def _on_scalar(self, event: yaml.ScalarEvent) -> None:
        # Every key and value of every file comes through here: the mark and the node count
        # are written out rather than called (_mark_of, _count), the frame's type tested exactly.
        start = event.start_mark
        mark = (start.line + 1 + self._line_offset) << _COLUMN_BITS | (start.column + 1)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            self._count(0, mark)  # reports and abandons the file
        frame = self._stack[-1] if self._stack else None
        if type(frame) is _MapFrame and frame.key is None:
            frame.size += 1
            self._set_key(frame, event, mark)
            if event.anchor is not None:
                self._anchors[event.anchor] = _Node(event.value, mark, 1)
            return
        value = self._scalar_value(event, mark)
        self._add(value, mark, 1, mark, event.anchor)

    def _set_key(self, frame: _MapFrame, event: yaml.ScalarEvent, mark: _Mark) -> None:
        key = event.value
        frame.key_mark = mark
        if key == "<<" and event.tag is None and event.implicit[0]:
            frame.key = _MERGE
        elif key in frame.marks.keys:
            first = _position(self.file, frame.marks.keys[key])
            self._issue(mark, f'duplicate key "{_shown(key)}" (first written at '
                              f"{first.line}:{first.column})")
            frame.key = _DISCARD
        else:
            frame.key = key

    def _scalar_value(self, event: yaml.ScalarEvent, mark: _Mark) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            if not event.implicit[0]:  # quoted or block scalar with no tag: always a string
                return event.value
            tag = _RESOLVER.resolve(ScalarNode, event.value, event.implicit)
        try:
            return _construct_scalar(tag, event.value)
        except _UnsupportedTag:
            self._issue(mark, f"unsupported YAML tag {_shown(tag)}")
        except (ValueError, KeyError, yaml.YAMLError):
            self._issue(mark, f"not a valid {tag.removeprefix(_TAG)}")
        return None

    def _on_collection_start(self, event: yaml.CollectionStartEvent) -> None:
        mark = self._mark_of(event)
        if len(self._stack) >= MAX_DEPTH:
            self._issue(mark, f"nested more than {MAX_DEPTH} levels deep")
            raise _Abandon
        is_mapping = type(event) is yaml.MappingStartEvent
        if event.tag not in (None, "!", _TAG + ("map" if is_mapping else "seq")):
            self._issue(mark, f"unsupported YAML tag {_shown(event.tag)}")
        self._count(1, mark)
        self._stack.append((_MapFrame if is_mapping else _SeqFrame)(mark, event.anchor))

    def _on_collection_end(self, _: yaml.CollectionEndEvent) -> None:
        frame = self._stack.pop()
        if isinstance(frame, _MapFrame) and frame.merges:
            self._apply_merges(frame)
        self._add(frame.value, frame.marks, frame.size, frame.marks.start, frame.anchor)

    def _apply_merges(self, frame: _MapFrame) -> None:
        """YAML merge keys: earlier merged mappings win over later ones, explicit keys over all."""
        value: dict[str, Any] = {}
        marks = _MapMarks(frame.marks.start)
        for merged in frame.merges:
            assert isinstance(merged.value, dict) and isinstance(merged.marks, _MapMarks)
            for key, item in merged.value.items():
                if key not in value:
                    value[key] = item
                    marks.keys[key] = merged.marks.keys[key]
                    marks.values[key] = merged.marks.values[key]
        value.update(frame.value)
        marks.keys.update(frame.marks.keys)
        marks.values.update(frame.marks.values)
        frame.value = value
        frame.marks = marks

    def _on_alias(self, event: yaml.AliasEvent) -> None:
        mark = self._mark_of(event)
        node = self._anchors.get(event.anchor)
        if node is None:
            self._issue(mark, f"unknown anchor *{_shown(event.anchor)} (an alias can only refer "
                              "to an anchor defined, and complete, before it)")
            node = _Node(None, mark, 1)
        self._count(node.size, mark)
        self._add(node.value, node.marks, node.size, mark, None)

    def _count(self, nodes: int, mark: _Mark) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            self._issue(mark, f"more than {MAX_NODES} YAML nodes in this file, counting what "
                              "aliases repeat; refusing to expand it")
            raise _Abandon

    def _add(self, value: Any, marks: _MarkTree, size: int, mark: _Mark,
             anchor: str | None) -> None:
        """Attach a complete node to its parent (or make it the document root).

        `mark` is where the node was written: for an alias, the alias rather than the anchor.
        """
        node = None
        if anchor is not None:
            node = self._anchors[anchor] = _Node(value, marks, size)
        if not self._stack:
            self._root = node or _Node(value, marks, size)
            return
        parent = self._stack[-1]
        parent.size += size
        if isinstance(parent, _SeqFrame):
            parent.value.append(value)
            parent.marks.items.append(marks)
        elif parent.key is None:  # this node is a key, and not a scalar
            self._issue(mark, "mapping keys must be plain strings")
            parent.key, parent.key_mark = _DISCARD, mark
        else:
            self._attach_member(parent, value, marks, size)

    def _attach_member(self, parent: _MapFrame, value: Any, marks: _MarkTree,
                       size: int) -> None:
        key = parent.key
        parent.key = None
        if key is _DISCARD:
            return
        if key is _MERGE:
            self._add_merge(parent, _Node(value, marks, size))
            return
        parent.value[key] = value
        parent.marks.keys[key] = parent.key_mark
        parent.marks.values[key] = marks

    def _add_merge(self, parent: _MapFrame, node: _Node) -> None:
        sources = [node] if isinstance(node.value, dict) else _list_nodes(node)
        if sources is None or not all(isinstance(source.value, dict) for source in sources):
            self._issue(parent.key_mark, "a << merge key needs a mapping or a list of mappings")
            return
        parent.merges.extend(sources)

    def _issue(self, mark: _Mark, message: str) -> None:
        self.issues.append(PolicyIssue(message, _position(self.file, mark)))


def _list_nodes(node: _Node) -> list[_Node] | None:
    if not isinstance(node.value, list) or not isinstance(node.marks, _SeqMarks):
        return None
    return [_Node(value, marks, 1)
            for value, marks in zip(node.value, node.marks.items, strict=True)]


class _UnsupportedTag(Exception):
    pass


def _construct_scalar(tag: str, text: str) -> Any:
    """A resolved scalar as a JSON-like value (see the module docstring for the exceptions)."""
    if tag == _TAG + "str":
        return text
    if tag == _TAG + "null":
        return None
    if tag == _TAG + "bool":
        return SafeConstructor.bool_values[text.lower()]  # KeyError: an explicit !!bool typo
    if tag == _TAG + "int":
        return _CONSTRUCTOR.construct_yaml_int(ScalarNode(tag, text))
    if tag == _TAG + "float":
        return _CONSTRUCTOR.construct_yaml_float(ScalarNode(tag, text))
    if tag in (_TAG + "timestamp", _TAG + "merge", _TAG + "value"):
        return text
    if tag == _TAG + "binary":
        return "".join(text.split())  # base64 text, as protobuf's JSON mapping wants bytes
    raise _UnsupportedTag


def _shown(text: str, limit: int = 60) -> str:
    """Text for a message: control characters escaped, long text cut."""
    shown = json.dumps(text[:limit])[1:-1]
    return shown + ("..." if len(text) > limit else "")
