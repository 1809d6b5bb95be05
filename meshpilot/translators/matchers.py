"""Matchers: how a policy's `StringMatch` (a path, a header, a query parameter) becomes Envoy's.

One module for every translator that matches requests: route entries (`routes.py`), fault
injection's header conditions and authorization rules (`httpfilters/`), so a kind of match
means the same thing wherever the policy writes it.
"""

from __future__ import annotations

from envoy.config.route.v3.route_components_pb2 import HeaderMatcher, QueryParameterMatcher
from envoy.type.matcher.v3.regex_pb2 import RegexMatcher
from envoy.type.matcher.v3.string_pb2 import StringMatcher

from meshpilot.base import re2text
from meshpilot.ir.model import StringMatch


def string_matcher(how: StringMatch) -> StringMatcher:
    """exact, prefix or regex (`present` and `absent` are said by the matcher holding it)."""
    if how.kind == "exact":
        return StringMatcher(exact=how.value)
    if how.kind == "prefix":
        return StringMatcher(prefix=how.value)
    return StringMatcher(safe_regex=RegexMatcher(regex=how.value))


def header_matcher(name: str, how: StringMatch) -> HeaderMatcher:
    if how.kind == "present":
        return HeaderMatcher(name=name, present_match=True)
    if how.kind == "absent":
        return HeaderMatcher(name=name, present_match=True, invert_match=True)
    if how.invert:
        # A value that does not match, or no such header: Envoy's invert_match alone never
        # matches an absent header, so an absent one is read as the empty value.
        return HeaderMatcher(name=name, string_match=string_matcher(how), invert_match=True,
                             treat_missing_header_as_empty=True)
    return HeaderMatcher(name=name, string_match=string_matcher(how))


def inverted_path_matcher(how: StringMatch, ignore_case: bool = False) -> HeaderMatcher:
    """Paths NOT matching `how`, said on `:path` (a route's path match cannot be inverted).
    `:path` holds the query: an exact path is matched with any query, a regex on the path part
    (`base/re2text.py`: the loader checked the same text). `ignore_case`: compared without
    case (a regex says it itself, `(?i)`)."""
    if how.kind == "exact":
        regex = re2text.path_part(("(?i)" if ignore_case else "") + re2_literal(how.value))
    elif how.kind == "regex":
        regex = re2text.path_part(how.value)
    else:
        return HeaderMatcher(name=":path", string_match=StringMatcher(
            prefix=how.value, ignore_case=ignore_case), invert_match=True)
    return HeaderMatcher(name=":path", string_match=StringMatcher(
        safe_regex=RegexMatcher(regex=regex)), invert_match=True)


def query_matcher(name: str, how: StringMatch) -> QueryParameterMatcher:
    if how.kind == "present":
        return QueryParameterMatcher(name=name, present_match=True)
    return QueryParameterMatcher(name=name, string_match=string_matcher(how))


re2_literal = re2text.literal
