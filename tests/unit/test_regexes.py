"""meshpilot's regex check and Envoy's agree (issue 14, bug 6): a pattern `meshpilot validate`
accepts is one Envoy accepts, and one Envoy refuses (RE2 syntax, or an RE2 program over Envoy's
size limit of 100) is refused at its position instead of NACKing a whole route configuration.

Every pattern is put to a real Envoy (`envoy --mode validate` on a route using it as a path
regex) and to meshpilot's policy loader; the two verdicts must be the same."""

from __future__ import annotations

from typing import Any

import pytest

from meshpilot.inputs.loader import load_policy_text
from meshpilot.inputs.native import fields
from meshpilot.local.envoy_process import EnvoyError, validate_config

# The five patterns of the issue, which meshpilot accepted and Envoy refused, then valid ones
# (one close to the program-size limit), then ones both refuse.
REFUSED_BY_ENVOY = ["/a{200}", "/a{1000}", "/((a{20}){20}){20}", "(?#comment)", "(?u)"]
ACCEPTED = ["/v[0-9]+/.*", "^/api/v[0-9]+/(users|items)/[^/]+$", "(?i)/A.*", "/a{90}",
            "(?P<id>[0-9]+)/x", "/[a-z]{1,8}/\\d+"]


def bootstrap(pattern: str) -> dict[str, Any]:
    route = {"match": {"safe_regex": {"regex": pattern}},
             "direct_response": {"status": 200}}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                 ".v3.HttpConnectionManager",
        "stat_prefix": "check",
        "route_config": {"name": "check", "virtual_hosts": [
            {"name": "check", "domains": ["*"], "routes": [route]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    return {"static_resources": {"listeners": [{
        "name": "check",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": manager}]}]}]}}


def envoy_accepts(pattern: str) -> bool:
    try:
        validate_config(bootstrap(pattern))
    except EnvoyError:
        return False
    return True


def policy_issues(pattern: str) -> list[str]:
    text = ('kind: Gateway\nname: edge\nlisteners: [{name: http, port: 8080}]\n---\n'
            'kind: Route\nname: r\ngateway: edge\nrules:\n'
            f'  - match: {{path: {{regex: "{pattern.replace(chr(92), chr(92) * 2)}"}}}}\n'
            '    direct_response: {status: 200}\n')
    try:
        load_policy_text(text)
    except Exception as error:  # PolicyError: the issues, one a line
        return [line for line in str(error).splitlines() if "regex" in line]
    return []


@pytest.mark.envoy
@pytest.mark.parametrize("pattern", [*REFUSED_BY_ENVOY, *ACCEPTED])
def test_meshpilot_and_envoy_agree(pattern: str) -> None:
    accepted = envoy_accepts(pattern)
    assert accepted == (pattern in ACCEPTED), f"Envoy changed its mind about {pattern!r}"
    found = policy_issues(pattern)
    assert (not found) == accepted, (pattern, found)
    if found:  # reported at the regex, with the document and field
        assert found[0].startswith("policy.yaml:9:27: Route r: rules[0].match.path.regex: "), found


@pytest.mark.parametrize(("pattern", "message"), [
    ("/a{200}", "too complex for Envoy: its RE2 program size is 205, Envoy refuses regexes "
                "above 100 (use a shorter pattern, fewer or smaller repeat counts)"),
    ("/((a{20}){20}){20}", "Envoy's RE2 regex engine refuses it: invalid repetition size: {20}"),
    ("(?#comment)", "Envoy's RE2 regex engine refuses it: invalid perl operator: (?#"),
    ("(?u)", "Envoy's RE2 regex engine refuses it: invalid perl operator: (?u"),
])
def test_the_reason_is_re2s(pattern: str, message: str) -> None:
    assert fields.regex_problem(pattern) == message
