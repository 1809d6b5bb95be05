"""Reading the fields of a policy document: typed values out, precise issues reported.

This module owns the small, reusable pieces every kind's parser is built from:

- *converters*: plain functions from a YAML value to a typed value (a port, a duration in
  seconds, a `host:port` pair, a label map ...) that raise `Invalid` with a message written for
  the user. They know nothing of documents or positions, so they are easy to test and reuse;
- `Fields`: one mapping of a document at a field path, whose getters run a converter on a member
  and report any `Invalid` at that member's exact position through the document's context, plus
  the "unknown key" check with its "did you mean".

It must not know any kind's meaning (which keys a Service has is `native/service.py`'s business),
and it never raises for bad input: an invalid field is reported and read as None, so a parser can
carry on and report every problem of a document in one pass.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import re._constants as sre_constants  # private, see _UNSAFE_OPS
import re._parser as sre_parser
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, TypeVar

import re2

from meshpilot.base.errors import Position
from meshpilot.base.units import parse_duration
from meshpilot.inputs.context import DocumentContext
from meshpilot.inputs.yamlsource import FieldPath
from meshpilot.ir.model import Labels, Origin

T = TypeVar("T")
Converter = Callable[[Any], T]


class Invalid(ValueError):
    """A value the user must change. `where` narrows the place down (a path relative to the
    value: a label's key), and `at_key` reports that member's key rather than its value."""

    def __init__(self, message: str, where: FieldPath = (), *, at_key: bool = False):
        super().__init__(message)
        self.message = message
        self.where = where
        self.at_key = at_key


# ---------------------------------------------------------------------------------------------
# Words for messages.

_KIND_NAMES: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string",
                                bool: "a boolean", int: "a number", float: "a number"}


def describe(value: Any) -> str:
    """What a YAML value is, in words: `a mapping`, `a number`, `null`."""
    return "null" if value is None else _KIND_NAMES.get(type(value), type(value).__name__)


def clip(text: str, limit: int = 80) -> str:
    """User text fit to be quoted in a message: short, and with control characters escaped."""
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


def quoted(text: str) -> str:
    return f'"{clip(text)}"'


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """` (did you mean "x"?)` for the closest candidate, or "" if none is close. Case is
    ignored in the comparison, so `HTTP` finds `http`."""
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    matches = difflib.get_close_matches(word[:100].lower(), list(by_lower), n=1, cutoff=0.6)
    return f' (did you mean "{by_lower[matches[0]]}"?)' if matches else ""


def one_of_words(options: Sequence[str], conjunction: str = "or") -> str:
    """`a, b or c`."""
    if len(options) == 1:
        return options[0]
    return f"{', '.join(options[:-1])} {conjunction} {options[-1]}"


# ---------------------------------------------------------------------------------------------
# Converters: a YAML value in, a typed value out, or `Invalid`.


def string(value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str):
        raise Invalid(f"expected a string, found {describe(value)}{_quote_hint(value)}")
    if not value:
        raise Invalid("must not be empty")
    return value


def any_string(value: Any) -> str:
    """A string, possibly empty (a header value, a response body)."""
    if not isinstance(value, str):
        raise Invalid(f"expected a string, found {describe(value)}{_quote_hint(value)}")
    return value


def _quote_hint(value: Any) -> str:
    # YAML turns `true`, `yes`, `2`, `1.10` into booleans and numbers; turning them back into
    # text would guess wrong (`1.10` is the number 1.1), so ask for quotes instead.
    if isinstance(value, bool | int | float):
        return " (write text in quotes, e.g. \"true\" or \"2\")"
    return ""


def integer(minimum: int, maximum: int) -> Converter[int]:
    """An integer from `minimum` to `maximum`, inclusive (booleans are not integers here)."""

    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer from {minimum} to {maximum}, found "
                          f"{describe(value)}")
        if not minimum <= value <= maximum:
            raise Invalid(f"must be from {minimum} to {maximum}, found {_clip_number(value)}")
        return value

    return convert


def _clip_number(value: int) -> str:
    text = str(value) if abs(value) < 10**30 else f"a {len(str(abs(value)))}-digit number"
    return text


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, found {describe(value)}")
    return value


def true_only(value: Any) -> bool:
    """A flag that is only ever written as `true` (`present: true`, `tcp: true`)."""
    if value is not True:
        raise Invalid(f"expected true, found {describe(value) if value is not False else 'false'}")
    return True


def choice(options: Sequence[str]) -> Converter[str]:
    """One of `options`, exactly as written there."""
    listed = ", ".join(options)

    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(f"expected one of: {listed}; found {describe(value)}")
        if value not in options:
            raise Invalid(f"unknown value {quoted(value)}{did_you_mean(value, options)}; "
                          f"expected one of: {listed}")
        return value

    return convert


def int_choice(options: Sequence[int]) -> Converter[int]:
    """One of a few integers (HTTP status codes)."""
    listed = ", ".join(str(option) for option in options)

    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value not in options:
            shown = _clip_number(value) if isinstance(value, int) and not isinstance(
                value, bool) else describe(value)
            raise Invalid(f"expected one of {listed}, found {shown}")
        return value

    return convert


# protobuf's Duration tops out at 10,000 years; anything near it is a mistake anyway.
MAX_DURATION = 315_576_000_000.0


def duration(*, allow_zero: bool = False) -> Converter[float]:
    """A duration written with units (`250ms`, `2s`, `1m`, `1h30m`), in seconds."""

    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise Invalid(f"expected a duration such as 250ms, 2s or 1m, found "
                          f"{describe(value)}")
        if not isinstance(value, str):
            # A bare number is ambiguous (seconds? milliseconds?): the unit is required.
            raise Invalid(f'a duration needs a unit, e.g. "{value}s" or "{value}ms"')
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise Invalid(f"invalid duration {quoted(value)}: expected forms like 250ms, 2s, "
                          "1m, 1h30m") from None
        if seconds > MAX_DURATION:
            raise Invalid(f"duration {quoted(value)} is too long")
        if seconds == 0 and not allow_zero:
            raise Invalid("must be longer than 0s")
        return seconds

    return convert


PORT = integer(1, 65535)


def port_text(text: str) -> int:
    """A port written as text (the part after `:` in `host:port`)."""
    if not text.isascii() or not text.isdigit():
        raise Invalid(f"invalid port {quoted(text)}: expected a number from 1 to 65535")
    # Length first: int() refuses very long digit strings with a ValueError of its own.
    port = int(text) if len(text) <= 5 else 0
    if not 1 <= port <= 65535:
        raise Invalid(f"port {clip(text)} is out of range: expected 1 to 65535")
    return port


_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
# Endpoint names also allow "_": Docker and compose service names resolve with it.
_ENDPOINT_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


def _is_dns_name(text: str, label: re.Pattern[str] = _DNS_LABEL) -> bool:
    return 0 < len(text) <= 253 and all(label.match(part) for part in text.split("."))


def dns_name(value: Any) -> str:
    """A host name (`shop.example.com`), lower-cased."""
    text = string(value).lower()
    if not _is_dns_name(text):
        raise Invalid(f"invalid host name {quoted(text)}: expected dot-separated labels of "
                      "letters, digits and '-'")
    return text


def host_pattern(value: Any) -> str:
    """A Route host: an exact name, a `*.suffix` wildcard, or `*` (every host); lower-cased."""
    text = string(value).lower()
    if text == "*":
        return text
    name = text.removeprefix("*.")
    if "*" in name:
        raise Invalid(f"invalid host {quoted(text)}: a wildcard is written \"*.example.com\" "
                      "(or \"*\" for every host)")
    if not _is_dns_name(name):
        raise Invalid(f"invalid host {quoted(text)}: expected a name like shop.example.com, "
                      "a wildcard like *.example.com, or \"*\"")
    return text


def ip_address(value: Any) -> str:
    """An IPv4 or IPv6 address literal, normalized (`::1`, not `0:0::1`)."""
    text = string(value)
    try:
        return str(ipaddress.ip_address(text.removeprefix("[").removesuffix("]")))
    except ValueError:
        raise Invalid(f"invalid IP address {quoted(text)}") from None


def address(value: Any) -> tuple[str, int]:
    """`host:port` with an IPv4 address, `[IPv6]:port`, or `dns-name:port`; an IP is
    normalized, a name lower-cased."""
    if not isinstance(value, str):
        raise Invalid(f"expected host:port (e.g. 10.0.0.1:8080), found {describe(value)}")
    host, _, port = value.rpartition(":")
    if not host:
        raise Invalid(f"invalid address {quoted(value)}: expected host:port, e.g. 10.0.0.1:8080")
    if host.startswith("["):
        ip = _ip(host[1:-1]) if host.endswith("]") else None
        if ip is None or ip.version != 6:
            raise Invalid(f"invalid address {quoted(value)}: expected [IPv6]:port")
        return _connectable(ip, value), port_text(port)
    if ":" in host:
        raise Invalid(f"invalid address {quoted(value)}: write IPv6 addresses in brackets, "
                      "e.g. [::1]:8080")
    ip = _ip(host) if host[:1].isdigit() else None  # a DNS name seldom starts with a digit
    if ip is not None:
        return _connectable(ip, value), port_text(port)
    name = host.lower()
    if not _is_dns_name(name, _ENDPOINT_LABEL) or _looks_like_ipv4(name):
        raise Invalid(f"invalid address {quoted(value)}: {quoted(host)} is neither an IP "
                      "address nor a DNS name")
    return name, port_text(port)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _looks_like_ipv4(name: str) -> bool:
    # "10.0.0.256" is a valid DNS name by shape, but it is surely a mistyped address.
    return all(part.isdigit() for part in name.split("."))


def _connectable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, written: str) -> str:
    if ip.is_unspecified:
        raise Invalid(f"invalid address {quoted(written)}: {ip} cannot be connected to")
    return str(ip)


def labels(value: Any) -> Labels:
    """A mapping of label names to string values, as sorted pairs."""
    if not isinstance(value, dict):
        raise Invalid(f"expected a mapping of labels, e.g. {{version: v1}}, found "
                      f"{describe(value)}")
    for key, item in value.items():
        if not key:
            raise Invalid("a label name must not be empty", (key,), at_key=True)
        if not isinstance(item, str):
            raise Invalid(f"a label value must be a string, found {describe(item)}"
                          f"{_quote_hint(item)}", (key,))
    return tuple(sorted(value.items()))


UINT32 = integer(0, 2**32 - 1)


def url_path(value: Any) -> str:
    """A URL path as Envoy sees it: starts with "/", no spaces or control characters."""
    text = string(value)
    if not text.startswith("/"):
        raise Invalid(f"a path must start with \"/\", found {quoted(text)}")
    if not text.isprintable() or " " in text:
        raise Invalid(f"invalid path {quoted(text)}: spaces and control characters must be "
                      "percent-encoded")
    return text


_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # an RFC 6265 token


def cookie_name(value: Any) -> str:
    text = string(value)
    if not _COOKIE_NAME.match(text):
        raise Invalid(f"invalid cookie name {quoted(text)}: use letters, digits and "
                      "-_.!#$%&'*+^`|~")
    return text


# A name that becomes part of Envoy resource names and stats (a Service, a subset, a listener).
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})\Z")


def name(value: Any) -> str:
    text = string(value)
    if not _NAME.match(text):
        raise Invalid(f"invalid name {quoted(text)}: use letters, digits, '.', '_' and '-', "
                      "starting with a letter or digit (at most 253 characters)")
    return text


# RFC 9110 token characters, lower case: a header name as Envoy compares it.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
PSEUDO_HEADERS = (":authority", ":method", ":path", ":scheme")


def header_name(value: Any) -> str:
    """An HTTP header name, lower-cased; the request pseudo-headers are allowed."""
    text = string(value).lower()
    if text in PSEUDO_HEADERS:
        return text
    if not _HEADER_NAME.match(text):
        raise Invalid(f"invalid header name {quoted(text)}: use letters, digits and "
                      "-_.!#$%&'*+^`|~")
    return text


# ---------------------------------------------------------------------------------------------
# Regular expressions: Python must compile them, and Envoy's RE2 must accept them.
#
# RE2 itself (Google's own binding, google-re2) has the last word, under the program-size limit
# Envoy enforces (its runtime key re2.max_program_size.error_level, 100 unless a bootstrap
# raises it): a regex Envoy would refuse NACKs the whole route configuration of a listener, so
# it is refused here, at its position. The checks before it (Python's parse tree) only give
# clearer messages for what RE2 lacks (backreferences, lookarounds) and keep Python and RE2
# agreeing on what the pattern means where their syntaxes differ.

MAX_REGEX_LENGTH = 1024  # Envoy rejects large RE2 programs anyway; keeps compiling cheap
RE2_MAX_REPEAT = 1000
ENVOY_MAX_PROGRAM_SIZE = 100  # Envoy's default re2.max_program_size.error_level
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # Envoy compiles with RE2::Quiet; errors are reported, not logged

# Python syntax RE2 does not have, as operations of the tree `re` itself parses a pattern into
# (`re._parser`: private, but where sre_parse has lived since 3.11). Walking that tree finds
# backreferences and lookarounds without re-implementing regex syntax, and without being fooled
# by escapes or character classes.
_UNSAFE_OPS: dict[Any, str] = {
    sre_constants.GROUPREF: "backreferences (\\1, (?P=name)) are not supported by Envoy's RE2 "
                            "regex engine",
    sre_constants.GROUPREF_EXISTS: "conditional groups (?(1)...) are not supported by Envoy's "
                                   "RE2 regex engine",
    sre_constants.ASSERT: "lookahead and lookbehind ((?=...), (?<=...)) are not supported by "
                          "Envoy's RE2 regex engine",
    sre_constants.ASSERT_NOT: "negative lookahead and lookbehind ((?!...), (?<!...)) are not "
                              "supported by Envoy's RE2 regex engine",
    sre_constants.ATOMIC_GROUP: "atomic groups (?>...) are not supported by Envoy's RE2 regex "
                                "engine",
    sre_constants.POSSESSIVE_REPEAT: "possessive quantifiers (*+, ++, ?+) are not supported by "
                                     "Envoy's RE2 regex engine",
}
_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT)
_ALLOWED_FLAGS = (sre_constants.SRE_FLAG_IGNORECASE | sre_constants.SRE_FLAG_MULTILINE
                  | sre_constants.SRE_FLAG_DOTALL | sre_constants.SRE_FLAG_UNICODE)
_UNSAFE_ESCAPES = {
    "Z": "\\Z is not supported by Envoy's RE2 regex engine: use $",
    "u": "\\u escapes are not supported by Envoy's RE2 regex engine: write the character itself",
    "U": "\\U escapes are not supported by Envoy's RE2 regex engine: write the character itself",
    "N": "\\N{...} escapes are not supported by Envoy's RE2 regex engine: write the character "
         "itself",
}


def regex(value: Any) -> str:
    """A regular expression both Python's `re` and Envoy's RE2 accept, as written."""
    text = string(value)
    problem = regex_problem(text)
    if problem is not None:
        raise Invalid(problem)
    return text


def regex_problem(text: str) -> str | None:
    """Why `text` cannot be used as an Envoy regex, or None if it can."""
    if len(text) > MAX_REGEX_LENGTH:
        return f"regex is longer than {MAX_REGEX_LENGTH} characters"
    # The text is scanned before Python parses it: Python warns (FutureWarning) about what the
    # scan refuses, and a load should not print warnings.
    problem = _lexical_problem(text)
    if problem is not None:
        return problem
    try:
        parsed = sre_parser.parse(text)
        re.compile(text)
    except re.error as error:
        where = "" if error.pos is None else f" at position {error.pos}"
        return f"invalid regex: {error.msg}{where}"
    except (RecursionError, OverflowError, ValueError):
        return "invalid regex: nested too deeply"
    return _tree_problem(parsed, parsed.state.flags) or re2_problem(text)


def re2_problem(text: str) -> str | None:
    """Why Envoy's RE2 refuses `text` (as Envoy compiles it), or None if it accepts it."""
    try:
        size = re2.compile(text, _RE2_OPTIONS).programsize
    except re2.error as error:
        message = error.args[0] if error.args else ""
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        return f"Envoy's RE2 regex engine refuses it: {message}"
    if size > ENVOY_MAX_PROGRAM_SIZE:
        return (f"too complex for Envoy: its RE2 program size is {size}, Envoy refuses regexes "
                f"above {ENVOY_MAX_PROGRAM_SIZE} (use a shorter pattern, fewer or smaller "
                "repeat counts)")
    return None


_NESTED_SET = ("a \"[\" inside [...] must be escaped as \\[ (Envoy's RE2 regex engine reads "
               "[:alpha:] there as a class name)")
_SET_OPERATORS = ("--", "&&", "||", "~~")


def _lexical_problem(text: str) -> str | None:
    """RE2 differences invisible in Python's parse tree: some escapes, `{,n}` (a repeat in
    Python, literal text in RE2), and `[` or doubled operators inside a character class."""
    index, in_class = 0, False
    while index < len(text):
        char = text[index]
        if char == "\\":
            escaped = text[index + 1:index + 2]
            if escaped in _UNSAFE_ESCAPES:
                return _UNSAFE_ESCAPES[escaped]
            index += 2
            continue
        if in_class:
            if char == "[":
                return _NESTED_SET
            pair = text[index:index + 2]
            if pair in _SET_OPERATORS:
                return (f'"{pair}" inside [...] is reserved by Python for set operations: write '
                        f"\\{pair} instead")
            in_class = char != "]"
        elif char == "[":
            in_class = True
            index += 1
            if text[index:index + 1] == "^":
                index += 1
            if text[index:index + 1] == "]":  # a leading "]" is a literal one
                index += 1
            continue
        elif char == "{" and text[index + 1:index + 2] == ",":
            return ("{,n} means {0,n} in Python but literal text in Envoy's RE2 regex engine: "
                    "write {0,n}")
        index += 1
    return None


def _tree_problem(items: Any, flags: int) -> str | None:
    if flags & ~_ALLOWED_FLAGS:
        return "only the i, m and s flags are supported by Envoy's RE2 regex engine"
    for op, argument in items:
        problem = _UNSAFE_OPS.get(op)
        if problem is not None:
            return problem
        if op in _REPEATS and _largest_count(argument) > RE2_MAX_REPEAT:
            return f"Envoy's RE2 regex engine allows repeat counts up to {RE2_MAX_REPEAT}"
        for child, child_flags in _children(op, argument):
            problem = _tree_problem(child, child_flags)
            if problem is not None:
                return problem
    return None


def _children(op: Any, argument: Any) -> list[tuple[Any, int]]:
    """The sub-patterns under one parse-tree node (with any inline flags they add)."""
    if op == sre_constants.SUBPATTERN:
        _, add_flags, del_flags, child = argument
        return [(child, add_flags | del_flags)]
    if op in _REPEATS:
        return [(argument[2], 0)]
    if op == sre_constants.BRANCH:
        return [(child, 0) for child in argument[1]]
    return []


def _largest_count(repeat: tuple[int, int, Any]) -> int:
    low, high, _ = repeat
    return low if high == sre_constants.MAXREPEAT else max(low, high)


def substitution(pattern: str) -> Converter[str]:
    """A regex substitution in RE2's form: `\\1`..`\\9` name groups of `pattern`, `\\\\` is a
    backslash; nothing else may follow a backslash."""
    groups = re.compile(pattern).groups

    def convert(value: Any) -> str:
        text = any_string(value)
        index = 0
        while (index := text.find("\\", index)) != -1:
            escaped = text[index + 1:index + 2]
            if escaped.isdigit() and escaped.isascii():
                if int(escaped) > groups:
                    raise Invalid(f"\\{escaped} refers to group {escaped}, but the regex has "
                                  f"{groups} group{'s' if groups != 1 else ''}")
            elif escaped != "\\":
                raise Invalid("in a substitution a backslash must be followed by a group "
                              "number (\\1) or another backslash")
            index += 2
        return text

    return convert


# ---------------------------------------------------------------------------------------------
# Fields: one mapping of a document.


class Fields:
    """The members of one mapping at `path` in a document, read through converters.

    Every getter treats a member written as null (`timeout:` with nothing after it) like a
    missing one, as the rest of the loader does, and returns None for a member that is missing
    or invalid; an invalid one has been reported at its own position.
    """

    __slots__ = ("ctx", "path", "value")

    def __init__(self, ctx: DocumentContext, value: dict[str, Any], path: FieldPath = ()):
        self.ctx = ctx
        self.value = value
        self.path = path

    @classmethod
    def at(cls, ctx: DocumentContext, value: Any, path: FieldPath,
           what: str) -> Fields | None:
        """`value` as a mapping, or None after reporting that it is not one; `what` says what
        was expected ("a mapping such as {http: /healthz}")."""
        if isinstance(value, dict):
            return cls(ctx, value, path)
        report_at(ctx, path, f"expected {what}, found {describe(value)}")
        return None

    def report(self, key: str, message: str, *, at_value: bool = True) -> None:
        self.ctx.report((*self.path, key), message, at_value=at_value)

    def origin(self, key: str | None = None) -> Origin:
        """Where this mapping (or its member `key`) was written, for the element read from it."""
        return self.ctx.origin(self.path if key is None else (*self.path, key))

    def check_keys(self, allowed: Sequence[str], what: str) -> None:
        """Report every member not in `allowed`, suggesting the closest allowed key (or, if
        none is close, listing them: `; {what} has: a, b`)."""
        for key in self.value:
            if key not in allowed:
                hint = did_you_mean(key, allowed) or f"; {what} has: {', '.join(allowed)}"
                self.ctx.report((*self.path, key), f"unknown key {quoted(key)}{hint}")

    def get(self, key: str, convert: Converter[T], *, required: bool = False) -> T | None:
        """The member converted, or None if it is missing (reported if `required`) or invalid."""
        value = self.value.get(key)
        if value is None:
            if required:
                self.missing(key)
            return None
        try:  # convert_at, inlined: this is the loader's busiest path
            return convert(value)
        except Invalid as problem:
            self.ctx.report((*self.path, key, *problem.where), problem.message,
                            at_value=not problem.at_key)
            return None

    def missing(self, key: str) -> None:
        """Report a required member that is missing (at the mapping) or null (at the null)."""
        if key in self.value:
            self.report(key, f'"{key}" needs a value')
        else:
            self.ctx.report((*self.path, key), f'missing "{key}"')

    def mapping(self, key: str, what: str, *, required: bool = False) -> Fields | None:
        """The member as a `Fields` of its own, or None (missing, or reported: not a mapping,
        where `what` says what was expected)."""
        value = self.value.get(key)
        if value is None:
            if required:
                self.missing(key)
            return None
        return Fields.at(self.ctx, value, (*self.path, key), what)

    def items(self, key: str, what: str, *, required: bool = False) -> list[Any] | None:
        """The member as a non-empty list (of `what`s), or None (missing, or reported)."""
        value = self.value.get(key)
        if value is None:
            if required:
                self.missing(key)
            return None
        if not isinstance(value, list):
            self.report(key, f"expected a list, found {describe(value)}")
            return None
        if not value:
            self.report(key, f"must list at least one {what}"
                             + ("" if required else f" (or leave {key} out)"))
            return None
        return value

    def exclusive(self, keys: Sequence[str], *, required: bool, what: str) -> str | None:
        """Which one of the mutually exclusive `keys` is written (None if none is); reports
        a second one, and none at all if `required`."""
        present = [key for key in keys if key in self.value]
        for extra in present[1:]:
            self.report(extra, f'"{extra}" cannot be used together with "{present[0]}" '
                               f"({what} has exactly one of {one_of_words(keys)})",
                        at_value=False)
        if not present:
            if required:
                self.ctx.report(self.path, f"{what} needs one of {one_of_words(keys)}")
            return None
        return present[0]


def convert_at(ctx: DocumentContext, value: Any, path: FieldPath,
               convert: Converter[T]) -> T | None:
    """`convert(value)`, or None after reporting why the value at `path` is invalid."""
    try:
        return convert(value)
    except Invalid as problem:
        ctx.report((*path, *problem.where), problem.message, at_value=not problem.at_key)
        return None


def report_at(ctx: DocumentContext, path: FieldPath, message: str) -> None:
    """Report about the value at `path` (a list item, or a member's value)."""
    ctx.report(path, message, at_value=True)


def written_before(ctx: DocumentContext, seen: dict[Hashable, FieldPath], key: Hashable,
                   path: FieldPath) -> Position | None:
    """Where `key` was first written, if it was already; otherwise None, and `path` is recorded
    as its place. Positions are looked up only for a repeat: most lists have none."""
    first = seen.setdefault(key, path)
    return None if first is path else ctx.document.position_of(first)


def issue_count(ctx: DocumentContext) -> int:
    """A mark to compare with later: a parser returns a model part only if nothing was
    reported since, so references are checked against clean parts only (no cascades)."""
    return len(ctx.load.issues)


def reported_since(ctx: DocumentContext, mark: int) -> bool:
    return len(ctx.load.issues) > mark


def unique_list(doc: Fields, key: str, what: str, convert: Converter[str]) -> tuple[str, ...]:
    """A list of converted strings, each written once (compared after conversion)."""
    items = doc.items(key, what)
    if items is None:
        return ()
    seen: dict[Hashable, FieldPath] = {}
    result: list[str] = []
    for index, item in enumerate(items):
        path = (*doc.path, key, index)
        value = convert_at(doc.ctx, item, path, convert)
        if value is None:
            continue
        first = written_before(doc.ctx, seen, value, path)
        if first is not None:
            report_at(doc.ctx, path, f"{what} {quoted(value)} is listed twice "
                                     f"(first at {first})")
            continue
        result.append(value)
    return tuple(result)
