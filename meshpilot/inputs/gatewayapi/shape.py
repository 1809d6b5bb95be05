"""The shape of Kubernetes documents: a small declarative schema and the walk that checks it.

Each kind's schema (`kinds.py`) says which keys a mapping may have, which are required and
what type each value is, as the upstream CRDs and core APIs do. A document that does not fit
is refused with the position and field path of each problem (`file:line:col: HTTPRoute
ns/name: spec.rules[0].matches[0].path.type: ...`), as the API server would refuse it. What a
well-shaped document means (a reference that resolves or not, a listener that conflicts) is
not checked here: that is status, decided by `compile.py`, and never refuses the load.

It must not read any other document.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshpilot.inputs.context import DocumentContext
from meshpilot.inputs.native.fields import describe, did_you_mean, quoted
from meshpilot.inputs.yamlsource import FieldPath


class Spec:
    """A value's schema."""

    def check(self, ctx: DocumentContext, value: Any, path: FieldPath) -> None:
        raise NotImplementedError


def _bad(ctx: DocumentContext, path: FieldPath, message: str) -> None:
    ctx.report(path, message, at_value=True)


@dataclass(frozen=True)
class Str(Spec):
    pattern: str | None = None  # a full match, as the CRDs' patterns
    max_length: int | None = None
    what: str = ""  # said when the pattern does not match: "a DNS label"

    def check(self, ctx: DocumentContext, value: Any, path: FieldPath) -> None:
        if not isinstance(value, str):
            _bad(ctx, path, f"expected a string, found {describe(value)}")
            return
        if self.max_length is not None and len(value) > self.max_length:
            _bad(ctx, path, f"must be at most {self.max_length} characters")
        elif self.pattern is not None and not re.fullmatch(self.pattern, value):
            _bad(ctx, path, f"{quoted(value[:80])} is not {self.what or 'valid'}")


@dataclass(frozen=True)
class Int(Spec):
    minimum: int | None = None
    maximum: int | None = None

    def check(self, ctx: DocumentContext, value: Any, path: FieldPath) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            _bad(ctx, path, f"expected an integer, found {describe(value)}")
        elif self.minimum is not None and value < self.minimum:
            _bad(ctx, path, f"must be at least {self.minimum}")
        elif self.maximum is not None and value > self.maximum:
            _bad(ctx, path, f"must be at most {self.maximum}")


@dataclass(frozen=True)
class Bool(Spec):
    def check(self, ctx: DocumentContext, value: Any, path: FieldPath) -> None:
        if not isinstance(value, bool):
            _bad(ctx, path, f"expected true or false, found {describe(value)}")


@dataclass(frozen=True)
class Enum(Spec):
    options: tuple[str, ...]

    def check(self, ctx: DocumentContext, value: Any, path: FieldPath) -> None:
        if value not in self.options:
            found = quoted(value[:80]) if isinstance(value, str) else describe(value)
            _bad(ctx, path, f"must be one of {', '.join(self.options)}, found {found}")


@dataclass(frozen=True)
class IntOrStr(Spec):
    """A Kubernetes IntOrString (a Service's targetPort)."""

    def check(self, ctx: DocumentContext, value: Any, path: FieldPath) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            _bad(ctx, path, f"expected a port number or name, found {describe(value)}")
        elif isinstance(value, int) and not 0 < value < 65536:
            _bad(ctx, path, "must be a port number (1 to 65535)")


@dataclass(frozen=True)
class Anything(Spec):
    """A part this format does not read (`status`, a kind it only recognizes)."""

    def check(self, ctx: DocumentContext, value: Any, path: FieldPath) -> None:
        return


@dataclass(frozen=True)
class StrMap(Spec):
    """String keys to string values (labels, annotations, a Secret's data)."""

    def check(self, ctx: DocumentContext, value: Any, path: FieldPath) -> None:
        if not isinstance(value, dict):
            _bad(ctx, path, f"expected a mapping of strings, found {describe(value)}")
            return
        for key, item in value.items():
            if not isinstance(item, str):
                _bad(ctx, (*path, key), f"expected a string, found {describe(item)}")


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec
    max_items: int | None = None

    def check(self, ctx: DocumentContext, value: Any, path: FieldPath) -> None:
        if not isinstance(value, list):
            _bad(ctx, path, f"expected a list, found {describe(value)}")
            return
        if self.max_items is not None and len(value) > self.max_items:
            _bad(ctx, path, f"may have at most {self.max_items} items")
        for index, item in enumerate(value):
            self.item.check(ctx, item, (*path, index))


@dataclass(frozen=True)
class Obj(Spec):
    fields: Mapping[str, Spec]
    required: Sequence[str] = ()
    open_keys: bool = False  # keys beyond `fields` are let through (metadata's many)
    one_of: Sequence[str] = ()  # at most one of these keys
    requires: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # type -> (key, value)

    def check(self, ctx: DocumentContext, value: Any, path: FieldPath) -> None:
        if not isinstance(value, dict):
            _bad(ctx, path, f"expected a mapping, found {describe(value)}")
            return
        for key, item in value.items():
            spec = self.fields.get(key)
            if spec is None:
                if not self.open_keys:
                    hint = did_you_mean(str(key), self.fields) or \
                        f"; known keys: {', '.join(self.fields)}"
                    ctx.report((*path, key), f"unknown key {quoted(str(key))}{hint}")
                continue
            if item is None:
                continue  # null is left out, as the API server does
            spec.check(ctx, item, (*path, key))
        for key in self.required:
            if value.get(key) is None:
                ctx.report((*path, key), f'missing "{key}"')
        present = [key for key in self.one_of if value.get(key) is not None]
        for extra in present[1:]:
            ctx.report((*path, extra), f'"{extra}" cannot be used together with '
                                       f'"{present[0]}"')
        kind = value.get("type")
        if isinstance(kind, str) and kind in self.requires:
            key, shown = self.requires[kind]
            if value.get(key) is None:
                ctx.report((*path, key), f'type {kind} needs "{key}" ({shown})')


def check_document(ctx: DocumentContext, body: Any, spec: Spec) -> None:
    spec.check(ctx, body, ())
