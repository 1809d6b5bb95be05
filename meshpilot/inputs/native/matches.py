"""Matching requests: methods, header and query value matches, Istio-style path patterns.

Route rules (`match:`), request authorization (`authorization.rules`, security.py) and a
sidecar's authorization of callers (sidecar.py) all match requests the same way; this module
is the one place that reads those fields, so the three agree on what a match means and on
every message about one.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from meshpilot.base import re2text
from meshpilot.inputs.context import DocumentContext
from meshpilot.inputs.native import fields
from meshpilot.inputs.native.fields import Fields, Invalid
from meshpilot.inputs.yamlsource import FieldPath
from meshpilot.ir.model import StringMatch

# Accepted method names. A misspelt method would silently never match, so the list is closed:
# the standard methods plus the common extension ones.
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
           "PURGE", "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK")
METHOD = fields.choice(METHODS)
VALUE_MATCHES = ("exact", "prefix", "regex", "present", "absent")

MatchKind = Literal["exact", "prefix", "regex", "present", "absent"]


def methods(entry: Fields, key: str = "methods") -> tuple[str, ...]:
    """A list of HTTP methods, each written once, in upper case as HTTP spells them (methods
    are case-sensitive; `get` is refused with a suggestion rather than guessed)."""
    return fields.unique_list(entry, key, "method", METHOD)


def value_matches(entry: Fields, key: str) -> tuple[tuple[str, StringMatch], ...]:
    """`headers` or `query`: name -> "text" | {exact|prefix|regex: v} | {present|absent: true}.
    Header names are compared lower-cased (HTTP ignores their case); query names as written."""
    spec = entry.mapping(key, f"a mapping of {'header' if key == 'headers' else 'parameter'} "
                              "names to values or matches")
    if spec is None:
        return ()
    result: list[tuple[str, StringMatch]] = []
    seen: dict[str, str] = {}
    for written in spec.value:
        path = (*spec.path, written)
        name = _match_name(spec.ctx, written, path, header=key == "headers")
        match = value_match(spec.ctx, spec.value[written], path, invertible=key == "headers")
        if name is None or match is None:
            continue
        if key == "query" and match.kind == "absent":  # said as a regex on :path
            problem = fields.re2_problem(re2text.query_parameter_present(name))
            if problem is not None:
                spec.ctx.report(path, f"this parameter name is too long to match as absent: "
                                      f"{problem}", at_value=False)
                continue
        if name in seen:  # only headers: YAML itself refuses a key written twice
            spec.ctx.report(path, f"header {fields.quoted(name)} is already matched (as "
                                  f"{fields.quoted(seen[name])}; header names ignore case)")
            continue
        seen[name] = written
        result.append((name, match))
    return tuple(result)


def value_match(ctx: DocumentContext, value: Any, path: FieldPath, *,
                invertible: bool = True) -> StringMatch | None:
    """One value match: "text" (exact) or a mapping with exactly one of VALUE_MATCHES, and
    (headers) `invert: true`: the value must not match, or the header be absent."""
    if isinstance(value, str):
        return StringMatch("exact", value)
    spec = Fields.at(ctx, value, path, 'a string, or a mapping with one of exact, prefix, '
                                       'regex, present or absent (quote "true" to match the '
                                       "text)")
    if spec is None:
        return None
    spec.check_keys((*VALUE_MATCHES, "invert") if invertible else VALUE_MATCHES,
                    "a value match")
    kind = spec.exclusive(VALUE_MATCHES, required=True, what="a value match")
    if kind is None:
        return None
    invert = inverted(spec, kind)
    convert = _VALUE_CONVERTERS[kind]
    matched = spec.get(kind, convert, required=True)
    if matched is None or invert is None:
        return None
    return StringMatch(cast(MatchKind, kind), "" if kind in ("present", "absent")
                       else cast(str, matched), invert=invert)


def inverted(spec: Fields, kind: str) -> bool | None:
    """`invert:` of a match (default false); None after reporting it with present or absent,
    which are each other's inverse already."""
    invert = spec.get("invert", fields.boolean)
    if invert and kind in ("present", "absent"):
        other = "absent" if kind == "present" else "present"
        spec.report("invert", f"write {{{other}: true}} instead of inverting {kind}",
                    at_value=False)
        return None
    return bool(invert)


_VALUE_CONVERTERS: dict[str, fields.Converter[Any]] = {
    "exact": fields.any_string, "prefix": fields.string, "regex": fields.regex,
    "present": fields.true_only, "absent": fields.true_only,
}


def _match_name(ctx: DocumentContext, written: str, path: FieldPath,
                header: bool) -> str | None:
    if header:
        return fields.convert_at(ctx, written, path, _header_name_key)
    if not written:
        ctx.report(path, "a query parameter name must not be empty")
        return None
    return written


def _header_name_key(value: str) -> str:
    try:
        return fields.header_name(value)
    except Invalid as problem:  # the name is a key: point at it
        raise Invalid(problem.message, at_key=True) from None


# ---- Istio-style path patterns (authorization rules) -----------------------------------------


def istio_path(value: Any) -> str:
    """A converter: "/exact", "/prefix/*" or "*" (any path), as Istio's AuthorizationPolicy."""
    text = fields.string(value)
    if text == "*":
        return text
    core = text[:-1] if text.endswith("*") else text
    if "*" in core or not core.startswith("/"):
        raise Invalid(f"invalid path {fields.quoted(fields.clip(text))}: expected \"/exact\", "
                      "\"/prefix/*\" or \"*\"")
    return text


def istio_path_match(text: str) -> StringMatch:
    """The match of an `istio_path` pattern."""
    if text == "*":
        return StringMatch("present")
    if text.endswith("*"):
        return StringMatch("prefix", text[:-1])
    return StringMatch("exact", text)


def istio_paths(entry: Fields, key: str = "paths") -> tuple[StringMatch, ...]:
    """A list of `istio_path` patterns, each written once, as matches."""
    return tuple(istio_path_match(p) for p in fields.unique_list(entry, key, "path", istio_path))
