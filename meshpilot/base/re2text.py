"""RE2 pattern text meshpilot writes itself, shared by the loader (which checks each one with
RE2 under Envoy's program-size limit, so a long name is refused at its position) and the
translators (which put the same text into Envoy's matchers)."""

from __future__ import annotations


def literal(text: str) -> str:
    """`text` as an RE2 pattern matching itself (RE2 accepts a backslash before punctuation)."""
    return "".join(f"\\{c}" if c.isascii() and not c.isalnum() and c != "_" else c
                   for c in text)


def query_parameter_present(name: str) -> str:
    """A `:path` (path and query) that has the query parameter `name`."""
    return rf"[^?]*\?(.*&)?{literal(name)}([=&].*)?"


def path_part(pattern: str) -> str:
    """A `:path` whose path part (before any query) `pattern` matches as a whole."""
    return f"(?:{pattern})(\\?.*)?"
