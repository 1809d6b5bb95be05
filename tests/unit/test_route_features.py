"""Route-level traffic management, unit level: the YAML shapes of completed retries, idle and gRPC
timeouts, fault injection, mirroring, hash policies and CORS, their errors (with exact
positions), cross-document checks, the schema, and the Envoy messages they translate to."""

from __future__ import annotations

import re

import pytest
from envoy.extensions.filters.http.cors.v3.cors_pb2 import CorsPolicy
from envoy.extensions.filters.http.fault.v3.fault_pb2 import HTTPFault
from envoy.type.v3.percent_pb2 import FractionalPercent

from meshpilot.base import types
from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.inputs.native import route
from meshpilot.inputs.native.schema import json_schema
from meshpilot.ir.model import (
    Backoff,
    Cors,
    Fault,
    FaultAbort,
    FaultDelay,
    HashOn,
    Mirror,
    Retries,
    Rule,
    StringMatch,
)
from meshpilot.translators import Translation, routes
from meshpilot.translators.httpfilters.cors import CORS
from meshpilot.translators.httpfilters.fault import FAULT
from meshpilot.xds.render import message_of

HEAD = """\
kind: Service
name: web
endpoints: [127.0.0.1:9100]
---
kind: Service
name: shadow
endpoints: [{address: 127.0.0.1:9400, labels: {track: next}}]
subsets: {next: {track: next}}
---
kind: Service
name: carts
endpoints: [127.0.0.1:9500, 127.0.0.1:9501]
load_balancer: ring_hash
---
kind: Gateway
name: edge
listeners: [{name: http, port: 8080}]
---
kind: Route
name: r
gateway: edge
"""
RULE_LINE = HEAD.count("\n") + 2  # the line of the rule written by `doc`


def doc(rule: str, extra: str = "") -> str:
    return HEAD + extra + f"rules:\n  - {rule}\n"


def rule_of(rule: str, extra: str = "") -> Rule:
    return load_policy_text(doc(rule, extra)).routes[0].rules[0]


def issues(text: str) -> list[str]:
    with pytest.raises(PolicyError) as failed:
        load_policy_text(text)
    return [str(issue) for issue in failed.value.issues]


# ---- parsing ------------------------------------------------------------------------------------


def test_completed_retries() -> None:
    rule = rule_of("{backends: [web], retries: {attempts: 3, on: [gateway-error], "
                   "per_try_timeout: 1s, backoff: {base: 25ms, max: 250ms}, "
                   "retriable_status_codes: [503, 429], avoid_same_host: true}}")
    assert rule.retries == Retries(3, ("gateway-error", "retriable-status-codes"), 1.0,
                                   Backoff(0.025, 0.25), (503, 429), True)
    # Codes without `on`: the default conditions plus the implied one.
    rule = rule_of("{backends: [web], retries: {retriable_status_codes: [429]}}")
    assert rule.retries is not None
    assert rule.retries.on == ("5xx", "reset", "connect-failure", "retriable-status-codes")
    # Written explicitly as well: kept once.
    rule = rule_of("{backends: [web], retries: {on: [retriable-status-codes], "
                   "retriable_status_codes: [429]}}")
    assert rule.retries is not None and rule.retries.on == ("retriable-status-codes",)


def test_timeouts() -> None:
    rule = rule_of("{backends: [web], idle_timeout: 30s, grpc: {max_timeout: 0s}}")
    assert (rule.idle_timeout, rule.grpc_max_timeout) == (30.0, 0.0)


def test_fault_mirror_hash_and_cors() -> None:
    rule = rule_of("{backends: [web], fault: {delay: {fixed: 500ms}, abort: {grpc_status: 14, "
                   "percentage: 0.5}, headers: {End-User: jason}}, "
                   "mirror: [{service: shadow}, {service: shadow, subset: next, "
                   "percentage: 10}]}")
    assert rule.fault == Fault(FaultDelay(0.5), FaultAbort(grpc_status=14, percentage=0.5),
                               (("end-user", StringMatch("exact", "jason")),))
    assert rule.mirrors == (Mirror("shadow"), Mirror("shadow", "next", 10.0))
    assert rule_of("{backends: [web], mirror: {service: shadow}}").mirrors == (Mirror("shadow"),)
    rule = rule_of("{backends: [carts], hash_on: [{header: X-User}, {cookie: s}, "
                   "{cookie: {name: t, ttl: 1h, path: /}}, {source_ip: true}, {query: u}]}")
    assert rule.hash_on == (HashOn("header", "x-user"), HashOn("cookie", "s"),
                            HashOn("cookie", "t", 3600.0, "/"), HashOn("source_ip"),
                            HashOn("query", "u"))
    model = load_policy_text(doc("{backends: [web]}", 'cors: {allow_origins: ["HTTPS://A.example", '
                                 '"*.b.example", "c.example:8080", "*"], allow_methods: [GET], '
                                 "allow_headers: [X-User], max_age: 1m}\n"))
    cors = model.routes[0].cors
    assert cors == Cors(allow_origins=(
        StringMatch("exact", "https://a.example"),
        StringMatch("regex", r"https?://[a-z0-9-]+(\.[a-z0-9-]+)*\.b\.example"),
        StringMatch("regex", r"https?://c\.example:8080"),
        StringMatch("regex", ".*")),
        allow_methods=("GET",), allow_headers=("x-user",), max_age=60.0)


@pytest.mark.parametrize(("rule", "where", "message"), [
    ("{backends: [web], retries: {on: [retriable-status-codes]}}", "retries.on",
     '"retriable-status-codes" needs the codes to retry on: write retriable_status_codes: '
     "[503, ...] (which implies it)"),
    ("{backends: [web], retries: {retriable_status_codes: [503, 99]}}",
     "retries.retriable_status_codes[1]", "must be from 100 to 599, found 99"),
    ("{backends: [web], retries: {retriable_status_codes: [503, 503]}}",
     "retries.retriable_status_codes[1]", "status 503 is listed twice (first at "
                                          "policy.yaml:L:C)"),
    ("{backends: [web], retries: {backoff: {base: 1s, max: 100ms}}}", "retries.backoff.max",
     "must not be shorter than base"),
    ("{backends: [web], retries: {backoff: {max: 100ms}}}", "retries.backoff.base",
     'missing "base"'),
    ("{backends: [web], retries: {avoid_same_host: yes please}}", "retries.avoid_same_host",
     "expected true or false, found a string"),
    ("{backends: [web], idle_timeout: 5}", "idle_timeout",
     'a duration needs a unit, e.g. "5s" or "5ms"'),
    ("{backends: [web], grpc: {}}", "grpc.max_timeout", 'missing "max_timeout"'),
    ("{backends: [web], fault: {headers: {x: y}}}", "fault",
     "a fault needs a delay, an abort or both"),
    ("{backends: [web], fault: {abort: {status: 503, grpc_status: 14}}}",
     "fault.abort.grpc_status", '"grpc_status" cannot be used together with "status" (a fault '
                                "abort has exactly one of status or grpc_status)"),
    ("{backends: [web], fault: {abort: {status: 100}}}", "fault.abort.status",
     "must be from 200 to 599, found 100"),
    ("{backends: [web], fault: {delay: {fixed: 1s, percentage: 101}}}",
     "fault.delay.percentage", "must be from 0 to 100, found 101"),
    ("{backends: [web], fault: {delay: {fixed: 1s, percentage: 0.00001}}}",
     "fault.delay.percentage", "1e-05 has too many decimals: Envoy counts in millionths (4 "
                               "decimals of a percent)"),
    ("{backends: [web], fault: {delay: {percentage: 5}}}", "fault.delay.fixed",
     'missing "fixed"'),
    ("{backends: [web], mirror: [{service: shadow}, {service: shadow}]}", "mirror[1]",
     "shadow is mirrored twice (first at policy.yaml:L:C)"),
    ("{backends: [web], mirror: {service: shadow, percentge: 5}}", "mirror.percentge",
     'unknown key "percentge" (did you mean "percentage"?)'),
    ("{backends: [carts], hash_on: [{header: x, query: y}]}", "hash_on[0].query",
     '"query" cannot be used together with "header" (a hash input has exactly one of header, '
     "cookie, source_ip or query)"),
    ("{backends: [carts], hash_on: [{cookie: {name: 'a b'}}]}", "hash_on[0].cookie.name",
     "invalid cookie name \"a b\": use letters, digits and -_.!#$%&'*+^`|~"),
    ("{backends: [carts], hash_on: [{cookie: {name: s, path: /}}]}", "hash_on[0].cookie.path",
     "path is the generated cookie's Path: it needs a ttl (Envoy only creates the cookie when "
     "a ttl is given)"),
    ("{direct_response: {status: 200}, fault: {abort: {status: 503}}}", "fault",
     "fault applies to rules with backends only (this rule has direct_response)"),
    ("{backends: [web], mirror: {service_from_header: x-to}}", "mirror.candidates",
     'missing "candidates"'),
    ("{backends: [web], mirror: {service_from_header: x-to, candidates: []}}",
     "mirror.candidates", "must list at least one Service the header may name"),
    ("{backends: [web], mirror: {service_from_header: x-to, candidates: [web, web]}}",
     "mirror.candidates[1]", 'candidate "web" is listed twice (first at policy.yaml:L:C)'),
    ("{backends: [web], mirror: {service: shadow, service_from_header: x-to}}",
     "mirror.service_from_header",
     '"service_from_header" cannot be used together with "service" (a mirror has exactly one '
     "of service or service_from_header)"),
    ("{backends: [web], mirror: {service: shadow, candidates: [web]}}", "mirror.candidates",
     '"candidates" goes with "service_from_header" only'),
    ("{backends: [web], mirror: {service_from_header: x-to, subset: next, candidates: [web]}}",
     "mirror.subset", '"subset" cannot be used with "service_from_header" (the header names a '
                      "whole Service)"),
    ("{backends: [web], mirror: {service_from_header: 'a b', candidates: [web]}}",
     "mirror.service_from_header",
     "invalid header name \"a b\": use letters, digits and -_.!#$%&'*+^`|~"),
    ("{backends: [web], mirror: {service_from_header: ':path', candidates: [web]}}",
     "mirror.service_from_header", ":path is a pseudo-header: name a request header such as "
                                   "x-mirror-to"),
    ("{backends: [web], mirror: [{service_from_header: x-to, candidates: [web]}, "
     "{service_from_header: X-Other, candidates: [shadow]}]}", "mirror[1]",
     "a rule has one mirror chosen by a request header (the first is at policy.yaml:L:C); "
     "list every Service in its candidates"),
    ("{backends: [web], mirror: {service_from_header: null, candidates: [web]}}",
     "mirror.service_from_header", '"service_from_header" needs a value'),
    ("{backends: [web], mirror: {service_from_header: x-to, candidates: web}}",
     "mirror.candidates", "expected a list, found a string"),
    ("{backends: [web], mirror: {percentage: 5}}", "mirror",
     "a mirror needs one of service or service_from_header"),
    ("{redirect: {path: /x}, mirror: {service: shadow}}", "mirror",
     "mirror applies to rules with backends only (this rule has redirect)"),
])
def test_rule_errors(rule: str, where: str, message: str) -> None:
    (issue,) = issues(doc(rule))
    shown = re.sub(r"policy\.yaml:\d+:\d+", "policy.yaml:L:C", issue)
    assert shown == f"policy.yaml:L:C: Route r: rules[0].{where}: {message}"


@pytest.mark.parametrize(("cors", "where", "message"), [
    ("{allow_methods: [GET]}", "cors.allow_origins", 'missing "allow_origins"'),
    ('{allow_origins: ["https://a.example/path"]}', "cors.allow_origins[0]",
     'invalid origin "https://a.example/path": expected an origin such as '
     '"https://a.example", "*.b.example" (any subdomain) or "*" (any origin)'),
    ('{allow_origins: ["a.*.example"]}', "cors.allow_origins[0]",
     'invalid origin "a.*.example": expected an origin such as "https://a.example", '
     '"*.b.example" (any subdomain) or "*" (any origin)'),
    ('{allow_origins: ["https://a.example:99999"]}', "cors.allow_origins[0]",
     "port 99999 is out of range: expected 1 to 65535"),
    ('{allow_origins: ["https://A.example", "https://a.example"]}', "cors.allow_origins[1]",
     'origin "https://a.example" is listed twice (first at policy.yaml:L:C)'),
    ('{allow_origins: ["*"], allow_credentials: true}', "cors.allow_credentials",
     'allow_credentials cannot be used with the origin "*": any web site could then make '
     "requests with the user's cookies; list the origins"),
    ('{allow_origins: ["*"], max_age: 1500ms}', "cors.max_age",
     "max_age is sent in whole seconds"),
    ('{allow_origins: ["*"], allow_methods: [get]}', "cors.allow_methods[0]",
     'unknown value "get" (did you mean "GET"?); expected one of: GET, HEAD, POST, PUT, '
     "DELETE, CONNECT, OPTIONS, TRACE, PATCH, PURGE, PROPFIND, PROPPATCH, MKCOL, COPY, MOVE, "
     "LOCK, UNLOCK"),
])
def test_cors_errors(cors: str, where: str, message: str) -> None:
    (issue,) = issues(doc("{backends: [web]}", f"cors: {cors}\n"))
    shown = re.sub(r"policy\.yaml:\d+:\d+", "policy.yaml:L:C", issue)
    assert shown == f"policy.yaml:L:C: Route r: {where}: {message}"


def test_exact_positions() -> None:
    assert issues(doc("{backends: [web], fault: {abort: {status: 100}}}")) == [
        f"policy.yaml:{RULE_LINE}:47: Route r: rules[0].fault.abort.status: must be from 200 "
        "to 599, found 100"]


def test_references_of_mirrors_and_hash_on() -> None:
    assert issues(doc("{backends: [web], mirror: {service: shadw}}")) == [
        f'policy.yaml:{RULE_LINE}:32: Route r: rules[0].mirror.service: no Service named '
        '"shadw" (did you mean "shadow"?)']
    assert issues(doc("{backends: [web], mirror: [{service: web}, {service: shadow, "
                      "subset: nxt}]}")) == [
        f'policy.yaml:{RULE_LINE}:66: Route r: rules[0].mirror[1].subset: Service shadow has '
        'no subset named "nxt" (did you mean "next"?)']
    assert issues(doc("{backends: [web], hash_on: [{header: x-user}]}")) == [
        f"policy.yaml:{RULE_LINE}:23: Route r: rules[0].hash_on: hash_on needs backends whose "
        "Service balances with ring_hash or maglev; Service web uses round_robin, where it "
        "would do nothing"]


def test_a_mirror_chosen_by_a_header() -> None:
    rule = rule_of("{backends: [web], mirror: [{service: shadow}, {service_from_header: "
                   "X-Mirror-To, candidates: [shadow, carts], percentage: 50}]}")
    assert rule.mirrors == (Mirror("shadow"), Mirror("", None, 50.0, from_header="x-mirror-to",
                                                     candidates=("shadow", "carts")))
    assert rule.mirrors[1].targets() == (("shadow", None), ("carts", None))
    assert rule.mirrors[0].targets() == (("shadow", None),)
    # Each candidate is checked like a backend.
    assert issues(doc("{backends: [web], mirror: {service_from_header: x-to, "
                      "candidates: [shadow, shadw]}}")) == [
        f'policy.yaml:{RULE_LINE}:80: Route r: rules[0].mirror.candidates[1]: no Service named '
        '"shadw" (did you mean "shadow"?)']
    # One copy of the entry per candidate, before it, matching the header's value and
    # mirroring to that candidate only; the entry itself mirrors nothing. Envoy's
    # cluster_header (any cluster of the view) is never used.
    snapshot = Translation(load_policy_text(doc(
        "{backends: [web], mirror: {service_from_header: x-to, candidates: [shadow, carts], "
        "percentage: 25}, retries: {attempts: 2}}"))).snapshot("edge")
    entries = message_of(snapshot.get(types.ROUTE)["edge/http"]).virtual_hosts[0].routes
    assert [e.name for e in entries] == [
        "r/rules[0]/mirror[shadow]", "r/rules[0]/mirror[carts]", "r/rules[0]"]
    for entry, candidate in zip(entries, ("shadow", "carts"), strict=False):
        (mirror,) = entry.route.request_mirror_policies
        assert (mirror.cluster, mirror.cluster_header) == (candidate, "")
        assert mirror.runtime_fraction.default_value == FractionalPercent(numerator=25)
        assert [(h.name, h.string_match.exact) for h in entry.match.headers] == [
            ("x-to", candidate)]
        assert entry.route.retry_policy.num_retries.value == 2
        assert entry.route.cluster == "web"
    assert not entries[2].route.request_mirror_policies
    assert not entries[2].match.headers
    assert set(snapshot.get(types.CLUSTER)) == {"web", "shadow", "carts"}


def test_the_schema_knows_the_new_keys() -> None:
    rule = json_schema()["$defs"]["Route"]["properties"]["rules"]["items"]["properties"]
    route_props = json_schema()["$defs"]["Route"]["properties"]
    assert set(route_props["cors"]["properties"]) == set(route.CORS_KEYS)
    assert set(rule["retries"]["properties"]["backoff"]["properties"]) == set(route.BACKOFF_KEYS)
    assert set(rule["grpc"]["properties"]) == set(route.GRPC_KEYS)
    assert set(rule["fault"]["properties"]) == set(route.FAULT_KEYS)
    assert set(rule["fault"]["properties"]["delay"]["properties"]) == set(route.FAULT_DELAY_KEYS)
    assert set(rule["fault"]["properties"]["abort"]["properties"]) == set(route.FAULT_ABORT_KEYS)
    forms = rule["mirror"]["oneOf"][0]["oneOf"]  # a named service, or one chosen by a header
    assert set().union(*(form["properties"] for form in forms)) == set(route.MIRROR_KEYS)
    assert forms[1]["required"] == ["service_from_header", "candidates"]
    item = rule["hash_on"]["items"]
    assert set(item["properties"]) == set(route.HASH_KINDS)
    assert set(item["properties"]["cookie"]["oneOf"][1]["properties"]) == \
        set(route.HASH_COOKIE_KEYS)


# ---- translation --------------------------------------------------------------------------------


FULL = doc("{backends: [carts], idle_timeout: 10s, grpc: {max_timeout: 30s}, "
           "retries: {attempts: 2, backoff: {base: 10ms}, retriable_status_codes: [429], "
           "avoid_same_host: true}, fault: {delay: {fixed: 300ms, percentage: 12.5}, "
           "abort: {status: 503}, headers: {end-user: jason}}, mirror: {service: shadow, "
           "subset: next, percentage: 5}, hash_on: [{cookie: {name: s, ttl: 0s}}]}",
           'cors: {allow_origins: ["https://a.example"], allow_credentials: false, '
           "expose_headers: [x-id]}\n")


def test_translation_of_every_route_feature() -> None:
    snapshot = Translation(load_policy_text(FULL)).snapshot("edge")
    config = message_of(snapshot.get(types.ROUTE)["edge/http"])
    vhost = config.virtual_hosts[0]
    (entry,) = vhost.routes
    action = entry.route
    assert action.idle_timeout.seconds == 10
    assert action.max_stream_duration.grpc_timeout_header_max.seconds == 30
    policy = action.retry_policy
    assert policy.retry_on == "5xx,reset,connect-failure,retriable-status-codes"
    assert policy.num_retries.value == 2
    assert list(policy.retriable_status_codes) == [429]
    assert policy.retry_back_off.base_interval.nanos == 10_000_000
    assert not policy.retry_back_off.HasField("max_interval")
    assert [p.name for p in policy.retry_host_predicate] == [routes.PREVIOUS_HOSTS]
    assert policy.host_selection_retry_max_attempts == 5
    (mirror,) = action.request_mirror_policies
    assert mirror.cluster == "shadow/next"
    assert mirror.runtime_fraction.default_value == FractionalPercent(numerator=5)
    (hashing,) = action.hash_policy
    assert hashing.cookie.name == "s" and hashing.cookie.HasField("ttl")
    fault = HTTPFault()
    entry.typed_per_filter_config[FAULT].Unpack(fault)
    assert fault.delay.fixed_delay.nanos == 300_000_000
    assert fault.delay.percentage == FractionalPercent(
        numerator=125_000, denominator=FractionalPercent.MILLION)
    assert fault.abort.http_status == 503
    assert fault.abort.percentage == FractionalPercent(numerator=100)
    assert [h.name for h in fault.headers] == ["end-user"]
    cors = CorsPolicy()
    vhost.typed_per_filter_config[CORS].Unpack(cors)
    assert cors.allow_origin_string_match[0].exact == "https://a.example"
    assert cors.allow_origin_string_match[0].ignore_case
    assert cors.allow_credentials.value is False and cors.HasField("allow_credentials")
    assert cors.expose_headers == "x-id" and cors.max_age == ""
    # The mirror's cluster reaches the gateway's view with the backends' ones.
    assert set(snapshot.get(types.CLUSTER)) == {"carts", "shadow/next"}


def test_a_rule_without_the_features_is_unchanged() -> None:
    snapshot = Translation(load_policy_text(doc("{backends: [web]}"))).snapshot("edge")
    vhost = message_of(snapshot.get(types.ROUTE)["edge/http"]).virtual_hosts[0]
    assert not vhost.typed_per_filter_config
    (entry,) = vhost.routes
    assert not entry.typed_per_filter_config
    assert not entry.route.HasField("idle_timeout")
    assert not entry.route.request_mirror_policies and not entry.route.hash_policy


def test_fractional_percent() -> None:
    assert routes.fractional_percent(100) == FractionalPercent(numerator=100)
    assert routes.fractional_percent(0) == FractionalPercent(numerator=0)
    assert routes.fractional_percent(0.0001) == FractionalPercent(
        numerator=1, denominator=FractionalPercent.MILLION)
