"""The policy language's kinds (Service, Gateway, Route), references between them, the field
readers under them, and the JSON Schema of the language."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck as HypothesisHealthCheck
from hypothesis import given, settings
from hypothesis import strategies as st

from meshpilot.base.errors import PolicyError, Position
from meshpilot.inputs import references
from meshpilot.inputs.loader import load_policy, load_policy_text
from meshpilot.inputs.native import fields, gateway, meshpolicy, rollout, route, service, sidecar
from meshpilot.inputs.native.schema import json_schema
from meshpilot.inputs.yamlsource import parse_yaml
from meshpilot.ir.model import (
    Backend,
    CircuitBreaker,
    DirectResponse,
    Endpoint,
    Gateway,
    GatewayListener,
    HeaderOps,
    HealthCheck,
    Match,
    Model,
    OutlierDetection,
    PathRewrite,
    Redirect,
    Retries,
    Route,
    Rule,
    Service,
    StringMatch,
)

# ---------------------------------------------------------------------------------------------
# The contract documents: the first design's example policy, kept in the repository as a golden
# input (the design folder is not part of a checkout, and the code now leads).

# Less its one-line header comment, so that positions are the sketch's own.
CONTRACT = (Path(__file__).resolve().parents[1] / "golden" / "contract" / "policy.yaml").read_text() \
    .split("\n", 1)[1]


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def issues(text: str, file: str = "policy.yaml") -> list[str]:
    with pytest.raises(PolicyError) as raised:
        load_policy_text(textwrap.dedent(text), file)
    return [str(issue) for issue in raised.value.issues]


def folder_issues(folder: Path) -> list[str]:
    with pytest.raises(PolicyError) as raised:
        load_policy(folder)
    return [str(issue) for issue in raised.value.issues]


def service_doc(name: str, extra: str = "") -> str:
    return f"kind: Service\nname: {name}\n{textwrap.dedent(extra)}"


def at(line: int, column: int, file: str = "policy.yaml") -> Position:
    return Position(file, line, column)


def test_the_contract_documents_load_as_their_comments_say() -> None:
    model = load_policy_text(CONTRACT)

    (reviews,) = model.services
    v1 = Endpoint("127.0.0.1", 9081, (("version", "v1"),))
    v2 = Endpoint("127.0.0.1", 9082, (("version", "v2"),))
    assert reviews == Service(
        name="reviews", position=at(1, 1), protocol="http", endpoints=(v1, v2),
        subsets=(("v1", (("version", "v1"),)), ("v2", (("version", "v2"),))),
        load_balancer="least_request", connect_timeout=1.0,
        health_check=HealthCheck(kind="http", path="/healthz", interval=5.0,
                                 unhealthy_threshold=3),
        circuit_breaker=CircuitBreaker(max_connections=1000, max_pending_requests=100,
                                       max_requests=1000),
        outlier_detection=OutlierDetection(consecutive_5xx=5, interval=10.0,
                                           base_ejection_time=30.0),
    )
    assert reviews.endpoints_of("v1") == (v1,)
    assert reviews.endpoints_of("v2") == (v2,)

    assert model.gateways == (Gateway("edge", at(16, 1), (GatewayListener("http", 8080),)),)

    (shop,) = model.routes
    assert shop == Route(
        name="shop", position=at(21, 1), gateway="edge",
        hosts=("shop.example.com", "*.shop.example.com"),
        listeners=(),  # every listener of the gateway
        rules=(
            Rule(position=at(26, 5),
                 matches=(Match(path=StringMatch("prefix", "/api/"),
                                headers=(("x-canary", StringMatch("exact", "true")),)),),
                 backends=(Backend("reviews", "v2", 1),)),
            Rule(position=at(28, 5),
                 matches=(Match(path=StringMatch("prefix", "/")),),
                 backends=(Backend("reviews", "v1", 90), Backend("reviews", "v2", 10)),
                 retries=Retries(3, ("5xx", "reset", "connect-failure"), 0.5),
                 timeout=2.0),
        ),
    )
    assert model.service("reviews") is reviews
    assert model.gateway("edge") == model.gateways[0]


# ---------------------------------------------------------------------------------------------
# Every field.

FULL = """\
kind: Service
name: ratings
protocol: grpc
endpoints:
  - 10.0.0.1:9080
  - {address: "[2001:DB8::1]:9080", labels: {version: v2, zone: a}, weight: 10}
  - {address: Ratings-v3.internal:9080, labels: {version: v3}}
subsets: {v2: {version: v2}, v3: {version: v3}}
load_balancer: ring_hash
health_check:
  grpc: true
  interval: 2s
  timeout: 250ms
  unhealthy_threshold: 2
  healthy_threshold: 4
circuit_breaker: {max_connections: 1, max_pending_requests: 2, max_requests: 3, max_retries: 4}
outlier_detection:
  consecutive_5xx: 7
  consecutive_gateway_errors: 3
  interval: 1m
  base_ejection_time: 1h30m
  max_ejection_percent: 50
connect_timeout: 100ms
---
kind: Service
name: web
endpoints: [127.0.0.1:8000]
health_check: {http: /ready, expected_statuses: [200, "204", "300-399"]}
---
kind: Service
name: db
protocol: tcp
health_check: {tcp: true}
---
kind: Gateway
name: edge
listeners:
  - {name: http, port: 8080}
  - {name: internal, port: 9000, address: "::1", protocol: http}
---
kind: Route
name: all
gateway: edge
listeners: [internal, http]
hosts: [API.example.com, "*.Example.com", "*"]
rules:
  - match:
      - path: {exact: /login}
        method: POST
        headers:
          X-User: {prefix: adm}
          x-debug: {present: true}
          x-legacy: {absent: true}
          x-id: {regex: "[0-9]+"}
          x-mode: {exact: ""}
        query: {preview: "1", Page: {regex: "[0-9]{1,3}"}}
      - path: {regex: "^/v[0-9]+/.*$"}
        methods: [GET, HEAD]
    backends:
      - web
      - {service: ratings, subset: v2, weight: 0}
      - {service: ratings, weight: 3}
    rewrite: {path: {regex: "^/v([0-9]+)/(.*)$", substitution: "/\\\\2?v=\\\\1"}, host: Internal.example.com}
    request_headers: {add: {X-Trace: "on"}, set: {x-env: prod}, remove: [cookie, x-old]}
    response_headers: {set: {cache-control: no-store}}
    timeout: 0s
    retries: {on: [gateway-error, unavailable], per_try_timeout: 1s}
  - match: {path: {prefix: /old/}}
    redirect: {scheme: https, host: New.example.com, port: 8443, prefix: /new/, status: 308}
  - match: {path: {prefix: /gone}}
    redirect: {path: /}
  - direct_response: {status: 404, body: nothing here}
    response_headers: {add: {x-why: missing}}
  - match: {path: {prefix: /web/}}
    backends: [{service: web}]
    rewrite: {path: {prefix: /}}
    retries: {attempts: 5}
"""


def test_every_field_of_every_kind() -> None:
    model = load_policy_text(FULL)
    assert [s.name for s in model.services] == ["db", "ratings", "web"]  # sorted by name
    db, ratings, web = model.services

    assert ratings.protocol == "grpc"
    assert ratings.endpoints == (
        Endpoint("10.0.0.1", 9080),
        Endpoint("2001:db8::1", 9080, (("version", "v2"), ("zone", "a")), 10),
        Endpoint("ratings-v3.internal", 9080, (("version", "v3"),)),
    )
    assert [e.is_dns for e in ratings.endpoints] == [False, False, True]
    assert ratings.subsets == (("v2", (("version", "v2"),)), ("v3", (("version", "v3"),)))
    assert ratings.load_balancer == "ring_hash"
    assert ratings.health_check == HealthCheck("grpc", None, 2.0, 0.25, 2, 4)
    assert ratings.circuit_breaker == CircuitBreaker(1, 2, 3, 4)
    assert ratings.outlier_detection == OutlierDetection(7, 3, 60.0, 5400.0, 50)
    assert ratings.connect_timeout == 0.1

    assert web.health_check == HealthCheck("http", "/ready",
                                           expected_statuses=((200, 201), (204, 205),
                                                              (300, 400)))
    assert (web.protocol, web.load_balancer, web.connect_timeout) == ("http", "round_robin", 1.0)
    assert (web.circuit_breaker, web.outlier_detection, web.subsets) == (None, None, ())
    assert db == Service("db", db.position, protocol="tcp", health_check=HealthCheck("tcp"))

    (edge,) = model.gateways
    assert edge.listeners == (GatewayListener("http", 8080),
                              GatewayListener("internal", 9000, "::1", "http"))

    (all_,) = model.routes
    assert all_.listeners == ("internal", "http")
    assert all_.hosts == ("api.example.com", "*.example.com", "*")
    first, moved, gone, missing, plain = all_.rules
    assert first.matches == (
        Match(path=StringMatch("exact", "/login"), methods=("POST",),
              headers=(("x-user", StringMatch("prefix", "adm")),
                       ("x-debug", StringMatch("present")),
                       ("x-legacy", StringMatch("absent")),
                       ("x-id", StringMatch("regex", "[0-9]+")),
                       ("x-mode", StringMatch("exact", ""))),
              query=(("preview", StringMatch("exact", "1")),
                     ("Page", StringMatch("regex", "[0-9]{1,3}")))),
        Match(path=StringMatch("regex", "^/v[0-9]+/.*$"), methods=("GET", "HEAD")),
    )
    assert first.backends == (Backend("web"), Backend("ratings", "v2", 0),
                              Backend("ratings", None, 3))
    assert first.rewrite_path == PathRewrite(regex="^/v([0-9]+)/(.*)$",
                                             substitution="/\\2?v=\\1")
    assert first.rewrite_host == "internal.example.com"
    assert first.request_headers == HeaderOps(add=(("x-trace", "on"),), set=(("x-env", "prod"),),
                                              remove=("cookie", "x-old"))
    assert first.response_headers == HeaderOps(set=(("cache-control", "no-store"),))
    assert first.timeout == 0.0
    assert first.retries == Retries(1, ("gateway-error", "unavailable"), 1.0)
    assert (first.redirect, first.direct_response) == (None, None)

    assert moved.redirect == Redirect("https", "new.example.com", 8443, None, "/new/", 308)
    assert moved.backends == ()
    assert gone.redirect == Redirect(path="/", status=302)
    assert missing.direct_response == DirectResponse(404, "nothing here")
    assert missing.matches == (Match(),)  # no match: every request
    assert missing.response_headers == HeaderOps(add=(("x-why", "missing"),))
    assert plain.rewrite_path == PathRewrite(prefix="/")
    assert plain.retries == Retries(5)  # Envoy's usual conditions
    assert plain.timeout is None


def test_parts_are_sorted_by_name_into_the_model(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", service_doc("zeta") + "---\n" + service_doc("alpha"))
    write(tmp_path, "a.yaml", service_doc("mid"))
    assert [s.name for s in load_policy(tmp_path).services] == ["alpha", "mid", "zeta"]


def test_defaults() -> None:
    model = load_policy_text("kind: Service\nname: s\n---\nkind: Gateway\nname: g\nlisteners: "
                             "[{name: l, port: 1}]\n---\nkind: Route\nname: r\ngateway: g\n"
                             "rules: [{backends: [s]}, {direct_response: {status: 200}}]\n")
    assert model.services[0] == Service("s", at(1, 1))
    assert model.gateways[0].listeners == (GatewayListener("l", 1, "0.0.0.0", "http"),)
    assert model.routes[0].hosts == ("*",)
    assert model.routes[0].listeners == ()
    assert model.routes[0].rules == (
        Rule(at(11, 9), backends=(Backend("s", None, 1),), matches=(Match(),)),
        Rule(at(11, 26), direct_response=DirectResponse(200, "")),
    )


# ---------------------------------------------------------------------------------------------
# Errors, exactly as the user sees them.


GATEWAY = "kind: Gateway\nname: edge\nlisteners: [{name: http, port: 8080}]\n"
REVIEWS = """\
kind: Service
name: reviews
endpoints:
  - {address: 127.0.0.1:9081, labels: {version: v1}}
  - {address: 127.0.0.1:9082, labels: {version: v2}}
subsets: {v1: {version: v1}, v2: {version: v2}}
"""

ROUTES = """\
kind: Route
name: shop
gateway: edge
hosts: [shop.example.com]
rules:
  - match: {path: {prefix: /api/}}
    backends:
      - service: reviews
        subset: v2
  - match:
      path: {prefix: /}
      headers: {x-canary: "false"}
    backends:
    - service: reveiws
"""


def test_missing_service_reads_as_the_sketch_promises(tmp_path: Path) -> None:
    write(tmp_path, "services.yaml", REVIEWS + "---\n" + GATEWAY)
    write(tmp_path, "routes.yaml", ROUTES)
    assert folder_issues(tmp_path) == [
        'routes.yaml:14:7: Route shop: rules[1].backends[0].service: no Service named '
        '"reveiws" (did you mean "reviews"?)'
    ]


def test_unknown_key_suggests_the_closest() -> None:
    assert issues(service_doc("s", "protocl: http\nendpoints: [{adress: 1.2.3.4:80}]\n")) == [
        'policy.yaml:3:1: Service s: protocl: unknown key "protocl" (did you mean "protocol"?)',
        'policy.yaml:4:13: Service s: endpoints[0].address: missing "address"',
        'policy.yaml:4:14: Service s: endpoints[0].adress: unknown key "adress" (did you mean '
        '"address"?)',
    ]
    assert issues(service_doc("s", "health_check: {http: /, zzz: 1}\n")) == [
        'policy.yaml:3:25: Service s: health_check.zzz: unknown key "zzz"; health_check has: '
        "http, tcp, grpc, interval, timeout, unhealthy_threshold, healthy_threshold, "
        "expected_statuses, no_traffic_interval, unhealthy_interval"
    ]


def test_references_to_gateways_listeners_and_subsets() -> None:
    assert issues(REVIEWS + "---\n" + GATEWAY + """\
---
kind: Route
name: shop
gateway: edg
rules: [{backends: [reviews]}]
---
kind: Route
name: cart
gateway: edge
listeners: [http, htp, web]
rules:
  - backends:
      - {service: reviews, subset: v3}
      - {service: reviews, subset: v22}
""") == [
        'policy.yaml:14:1: Route shop: gateway: no Gateway named "edg" (did you mean "edge"?)',
        'policy.yaml:20:19: Route cart: listeners[1]: Gateway edge has no listener named "htp" '
        '(did you mean "http"?)',
        'policy.yaml:20:24: Route cart: listeners[2]: Gateway edge has no listener named "web"; '
        "it has: http",
        'policy.yaml:23:28: Route cart: rules[0].backends[0].subset: Service reviews has no '
        'subset named "v3"; it has: v1, v2',
        'policy.yaml:24:28: Route cart: rules[0].backends[1].subset: Service reviews has no '
        'subset named "v22" (did you mean "v2"?)',
    ]


def test_a_subset_of_a_service_without_subsets() -> None:
    assert issues(service_doc("s") + "---\n" + GATEWAY + """\
---
kind: Route
name: r
gateway: edge
rules: [{backends: [{service: s, subset: v1}]}]
""") == ['policy.yaml:11:34: Route r: rules[0].backends[0].subset: Service s has no subset '
         'named "v1" (it defines no subsets)']


def test_a_broken_document_is_not_reported_again_as_a_missing_reference() -> None:
    assert issues(service_doc("reviews", "protocol: htp\n") + "---\n" + GATEWAY + """\
---
kind: Route
name: r
gateway: edge
rules: [{backends: [reviews]}]
""") == ['policy.yaml:3:11: Service reviews: protocol: unknown value "htp" (did you mean '
         '"http"?); expected one of: http, http2, grpc, tcp']


def test_suggestions_stop_when_their_budget_is_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(references, "SUGGESTION_BUDGET", 3)
    text = service_doc("web-1") + "---\n" + service_doc("web-2") + "---\n" + GATEWAY + """\
---
kind: Route
name: r
gateway: edge
rules: [{backends: [web-3, web-4]}, {backends: [web-3]}]
"""
    assert [issue.split(": ", 3)[3] for issue in issues(text)] == [
        'no Service named "web-3" (did you mean "web-2"?)',
        'no Service named "web-4"',  # the budget is spent: no suggestion
        'no Service named "web-3" (did you mean "web-2"?)',  # already known
    ]


def test_an_endpoint_error_is_not_echoed_by_the_subsets() -> None:
    assert issues(service_doc("s", "endpoints: [{address: 1.2.3.4, labels: {v: a}}]\n"
                                   "subsets: {a: {v: a}}\n")) == [
        'policy.yaml:3:23: Service s: endpoints[0].address: invalid address "1.2.3.4": expected '
        "host:port, e.g. 10.0.0.1:8080"]


def test_two_routes_claiming_one_host_on_one_listener(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", REVIEWS + "---\n" + GATEWAY + """\
---
kind: Route
name: shop
gateway: edge
hosts: [shop.example.com, "*"]
rules: [{backends: [reviews]}]
""")
    write(tmp_path, "b.yaml", """\
kind: Route
name: shop-v2
gateway: edge
hosts: [a.example.com, Shop.Example.com]
rules: [{backends: [reviews]}]
---
kind: Route
name: fallback
gateway: edge
listeners: [http]
rules: [{direct_response: {status: 404}}]
""")
    assert folder_issues(tmp_path) == [
        'b.yaml:4:24: Route shop-v2: hosts[1]: host "shop.example.com" on listener "http" of '
        "Gateway edge is already claimed by Route shop (at a.yaml:15:9)",
        'b.yaml:7:1: Route fallback: hosts: host "*" (the default when hosts is left out) on '
        'listener "http" of Gateway edge is already claimed by Route shop (at a.yaml:15:27)',
    ]


def test_one_host_on_different_listeners_or_gateways_is_fine() -> None:
    model = load_policy_text("""\
kind: Gateway
name: edge
listeners: [{name: a, port: 80}, {name: b, port: 81}]
---
kind: Gateway
name: other
listeners: [{name: a, port: 82}]
---
kind: Route
name: one
gateway: edge
listeners: [a]
rules: [{direct_response: {status: 200}}]
---
kind: Route
name: two
gateway: edge
listeners: [b]
rules: [{direct_response: {status: 200}}]
---
kind: Route
name: three
gateway: other
rules: [{direct_response: {status: 200}}]
""")
    assert [r.name for r in model.routes] == ["one", "three", "two"]


def test_port_conflicts_between_and_within_gateways() -> None:
    assert issues("""\
kind: Gateway
name: edge
listeners:
  - {name: http, port: 8080}
  - {name: local, port: 9000, address: 127.0.0.1}
  - {name: v6, port: 8080, address: "::"}
---
kind: Gateway
name: internal
listeners:
  - {name: web, port: 8080, address: 10.0.0.1}
  - {name: local, port: 9000, address: 127.0.0.2}
  - {name: again, port: 9000, address: 127.0.0.1}
""") == [
        'policy.yaml:11:17: Gateway internal: listeners[0].port: port 8080 on 10.0.0.1 is '
        'already bound by listener "http" of Gateway edge on 0.0.0.0 (at policy.yaml:4:18)',
        'policy.yaml:13:19: Gateway internal: listeners[2].port: port 9000 on 127.0.0.1 is '
        'already bound by listener "local" of Gateway edge on 127.0.0.1 (at policy.yaml:5:19)',
    ]
    assert issues("kind: Gateway\nname: g\nlisteners: [{name: a, port: 1}, {name: b, port: 1}]"
                  "\n") == [
        'policy.yaml:3:43: Gateway g: listeners[1].port: port 1 on 0.0.0.0 is already bound by '
        'listener "a" of this Gateway on 0.0.0.0 (at policy.yaml:3:23)'
    ]


def test_names_unique_per_kind_across_the_folder(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", service_doc("web") + "---\n" + GATEWAY)
    write(tmp_path, "b.yaml", service_doc("web") + "---\n" + service_doc("edge") + """\
---
kind: Route
name: web
gateway: edge
rules: [{backends: [web]}]
""")
    assert folder_issues(tmp_path) == [
        'b.yaml:2:7: Service web: name: another Service is named "web" (at a.yaml:2:1)',
        'b.yaml:5:7: Service edge: name: a Gateway is also named "edge" (at a.yaml:5:1); a '
        "Service and a Gateway cannot share a name, as each name is the node cluster of its "
        "Envoys",
    ]


def test_listener_names_are_unique_in_a_gateway() -> None:
    assert issues("kind: Gateway\nname: g\nlisteners:\n  - {name: a, port: 1}\n"
                  "  - {name: a, port: 2}\n") == [
        'policy.yaml:5:12: Gateway g: listeners[1].name: another listener of this Gateway is '
        'named "a" (at policy.yaml:4:6)'
    ]


@pytest.mark.parametrize(("value", "message"), [
    ("5", 'a duration needs a unit, e.g. "5s" or "5ms"'),
    ("2x", 'invalid duration "2x": expected forms like 250ms, 2s, 1m, 1h30m'),
    ("0s", "must be longer than 0s"),
    ("[1s]", "expected a duration such as 250ms, 2s or 1m, found a list"),
    ("9" * 400 + "h", 'duration "' + "9" * 80 + '..." is too long'),
])
def test_bad_durations(value: str, message: str) -> None:
    assert issues(service_doc("s", f"connect_timeout: {value}\n")) == [
        f"policy.yaml:3:18: Service s: connect_timeout: {message}"]


@pytest.mark.parametrize(("value", "message"), [
    ("10.0.0.1", 'invalid address "10.0.0.1": expected host:port, e.g. 10.0.0.1:8080'),
    ("10.0.0.1:0", "port 0 is out of range: expected 1 to 65535"),
    ("10.0.0.1:http", 'invalid port "http": expected a number from 1 to 65535'),
    ("10.0.0.256:80", 'invalid address "10.0.0.256:80": "10.0.0.256" is neither an IP address '
                      "nor a DNS name"),
    ('"::1:80"', 'invalid address "::1:80": write IPv6 addresses in brackets, e.g. [::1]:8080'),
    ('"[::1:80"', 'invalid address "[::1:80": expected [IPv6]:port'),
    ('"[10.0.0.1]:80"', 'invalid address "[10.0.0.1]:80": expected [IPv6]:port'),
    ("0.0.0.0:80", 'invalid address "0.0.0.0:80": 0.0.0.0 cannot be connected to'),
    ("bad_host!:80", 'invalid address "bad_host!:80": "bad_host!" is neither an IP address '
                     "nor a DNS name"),
    ("8080", "expected host:port or a mapping {address: host:port, ...}, found a number"),
])
def test_bad_addresses(value: str, message: str) -> None:
    assert issues(service_doc("s", f"endpoints: [{value}]\n")) == [
        f"policy.yaml:3:13: Service s: endpoints[0]: {message}"]


def route_doc(rule: str, extra: str = "") -> str:
    """A Route around one rule (flow style), after a valid gateway and service."""
    return (REVIEWS + "---\n" + GATEWAY + "---\nkind: Route\nname: r\ngateway: edge\n" + extra
            + f"rules:\n  - {rule}\n")


RULE_LINE = 16  # the line of the rule in route_doc


def rule_issues(rule: str, extra: str = "") -> list[str]:
    return issues(route_doc(rule, extra))


@pytest.mark.parametrize(("regex", "message"), [
    ("(a", "invalid regex: missing ), unterminated subpattern at position 0"),
    ("a**", "invalid regex: multiple repeat at position 2"),
    ("(a)\\\\1", "backreferences (\\1, (?P=name)) are not supported by Envoy's RE2 regex "
                 "engine"),
    ("(?P<x>a)(?P=x)", "backreferences (\\1, (?P=name)) are not supported by Envoy's RE2 "
                       "regex engine"),
    ("/(?=api)", "lookahead and lookbehind ((?=...), (?<=...)) are not supported by Envoy's "
                 "RE2 regex engine"),
    ("/(?<!x)y", "negative lookahead and lookbehind ((?!...), (?<!...)) are not supported by "
                 "Envoy's RE2 regex engine"),
    ("(?>a)", "atomic groups (?>...) are not supported by Envoy's RE2 regex engine"),
    ("a++", "possessive quantifiers (*+, ++, ?+) are not supported by Envoy's RE2 regex "
            "engine"),
    ("(a)(?(1)b|c)", "conditional groups (?(1)...) are not supported by Envoy's RE2 regex "
                     "engine"),
    ("(?x)a b", "only the i, m and s flags are supported by Envoy's RE2 regex engine"),
    ("a\\\\Z", "\\Z is not supported by Envoy's RE2 regex engine: use $"),
    ("a{,3}", "{,n} means {0,n} in Python but literal text in Envoy's RE2 regex engine: write "
              "{0,n}"),
    ("a{1001}", "Envoy's RE2 regex engine allows repeat counts up to 1000"),
    ("[[:alpha:]]", r"""a "[" inside [...] must be escaped as \[ (Envoy's RE2 regex engine """
                    "reads [:alpha:] there as a class name)"),
    ("[a--z]", r'"--" inside [...] is reserved by Python for set operations: write \-- instead'),
    ("x" * 1025, "regex is longer than 1024 characters"),
])
def test_regexes_must_suit_python_and_re2(regex: str, message: str) -> None:
    (issue,) = rule_issues(f'{{match: {{path: {{regex: "{regex}"}}}}, backends: [reviews]}}')
    assert issue == f"policy.yaml:{RULE_LINE}:28: Route r: rules[0].match.path.regex: {message}"


@pytest.mark.parametrize("regex", ["^/api/v[0-9]+/(users|items)/[^/]+$", "(?i)/A.*",
                                   "(?P<id>[0-9]+)", "[{,]x", "a{0,3}", "\\\\d+\\\\.\\\\w*",
                                   "[]a]", "[^]a]{2}"])
def test_regexes_both_engines_accept(regex: str) -> None:
    assert fields.regex_problem(yaml.safe_load(f'"{regex}"')) is None


def test_exactly_one_action() -> None:
    assert rule_issues("{match: {path: {prefix: /}}}") == [
        f"policy.yaml:{RULE_LINE}:5: Route r: rules[0]: a rule needs one of backends, redirect "
        "or direct_response"]
    assert rule_issues("{backends: [reviews], redirect: {path: /}, direct_response: "
                       "{status: 200}}") == [
        f'policy.yaml:{RULE_LINE}:27: Route r: rules[0].redirect: "redirect" cannot be used '
        'together with "backends" (a rule has exactly one of backends, redirect or '
        "direct_response)",
        f'policy.yaml:{RULE_LINE}:48: Route r: rules[0].direct_response: "direct_response" '
        'cannot be used together with "backends" (a rule has exactly one of backends, redirect '
        "or direct_response)",
    ]


@pytest.mark.parametrize(("rule", "where", "message"), [
    ("{match: {path: {prefix: api}}, backends: [reviews]}", "match.path.prefix",
     'a path must start with "/", found "api"'),
    ("{match: {path: {prefix: /, exact: /}}, backends: [reviews]}", "match.path.exact",
     '"exact" cannot be used together with "prefix" (a path match has exactly one of prefix, '
     "exact or regex)"),
    ("{match: {path: /api}, backends: [reviews]}", "match.path",
     "expected a mapping with one of prefix, exact or regex, e.g. {prefix: /api/}, found a "
     "string"),
    ("{match: [], backends: [reviews]}", "match",
     "must list at least one match (or leave match out to match every request)"),
    ("{match: {method: GET, methods: [PUT]}, backends: [reviews]}", "match.methods",
     '"methods" cannot be used together with "method" (a match has exactly one of method or '
     "methods)"),
    ("{match: {methods: [GET, GET]}, backends: [reviews]}", "match.methods[1]",
     'method "GET" is listed twice (first at policy.yaml:16:24)'),
    ("{match: {method: get}, backends: [reviews]}", "match.method",
     'unknown value "get" (did you mean "GET"?); expected one of: GET, HEAD, POST, PUT, DELETE, '
     "CONNECT, OPTIONS, TRACE, PATCH, PURGE, PROPFIND, PROPPATCH, MKCOL, COPY, MOVE, LOCK, "
     "UNLOCK"),
    ("{match: {headers: {x-a: true}}, backends: [reviews]}", "match.headers.x-a",
     'expected a string, or a mapping with one of exact, prefix, regex, present or absent '
     '(quote "true" to match the text), found a boolean'),
    ("{match: {headers: {x-a: {present: false}}}, backends: [reviews]}",
     "match.headers.x-a.present", "expected true, found false"),
    ("{match: {headers: {x-a: {}}}, backends: [reviews]}", "match.headers.x-a",
     "a value match needs one of exact, prefix, regex, present or absent"),
    ("{match: {headers: {bad header: x}}, backends: [reviews]}", 'match.headers["bad header"]',
     "invalid header name \"bad header\": use letters, digits and -_.!#$%&'*+^`|~"),
    ("{match: {headers: {X-A: x, x-a: y}}, backends: [reviews]}", "match.headers.x-a",
     'header "x-a" is already matched (as "X-A"; header names ignore case)'),
    ("{backends: []}", "backends", "must list at least one backend"),
    ("{backends: [{service: reviews, weight: 0}]}", "backends",
     "at least one backend needs a weight above 0"),
    ("{backends: [reviews, {service: reviews}]}", "backends[1]",
     "reviews is listed twice (first at policy.yaml:16:17)"),
    ("{backends: [{service: reviews, weight: -1}]}", "backends[0].weight",
     "must be from 0 to 1000000, found -1"),
    ("{backends: [{subset: v1}]}", "backends[0].service", 'missing "service"'),
    ("{redirect: {status: 301}}", "redirect",
     "a redirect needs at least one of scheme, host, port, path, prefix, regex or strip_query (or it "
     "would send the client back to the same URL)"),
    ("{redirect: {path: /a, status: 300}}", "redirect.status",
     "expected one of 301, 302, 303, 307, 308, found 300"),
    ("{match: {path: {prefix: /}}, redirect: {path: /a, prefix: /b}}", "redirect.prefix",
     '"prefix" cannot be used together with "path" (a redirect has exactly one of path, '
     "prefix or regex)"),
    ("{redirect: {scheme: ftp}}", "redirect.scheme",
     'unknown value "ftp"; expected one of: http, https'),
    ("{direct_response: {status: 99}}", "direct_response.status",
     "must be from 200 to 599, found 99"),
    ("{direct_response: {body: x}}", "direct_response.status", 'missing "status"'),
    ("{direct_response: {status: 200}, timeout: 1s}", "timeout",
     "timeout applies to rules with backends only (this rule has direct_response)"),
    ("{backends: [reviews], rewrite: {path: {regex: a(b), substitution: \"\\\\2\"}}}",
     "rewrite.path.substitution", "\\2 refers to group 2, but the regex has 1 group"),
    ("{backends: [reviews], rewrite: {path: {regex: a}}}", "rewrite.path.substitution",
     'missing "substitution"'),
    ("{match: {path: {prefix: /}}, backends: [reviews], rewrite: {path: {prefix: /, substitution: x}}}",
     "rewrite.path.substitution", 'substitution goes with "regex", not "prefix"'),
    ("{backends: [reviews], request_headers: {set: {host: x}}}", "request_headers.set.host",
     '"host" cannot be changed here (use rewrite: {host: ...} for the host)'),
    ("{backends: [reviews], request_headers: {set: {x-a: 1}}}", "request_headers.set.x-a",
     'expected a string, found a number (write text in quotes, e.g. "true" or "2")'),
    ("{backends: [reviews], request_headers: {set: {x-a: b}, remove: [X-A]}}",
     "request_headers.remove[0]", 'header "x-a" is both removed and added or set'),
    ("{backends: [reviews], retries: {attempts: 0}}", "retries.attempts",
     "must be from 1 to 100, found 0"),
    ("{backends: [reviews], retries: {on: [5xx, connect-failures]}}", "retries.on[1]",
     'unknown value "connect-failures" (did you mean "connect-failure"?); expected one of: '
     "5xx, gateway-error, reset, reset-before-request, connect-failure, retriable-4xx, "
     "refused-stream, "
     "retriable-status-codes, retriable-headers, envoy-ratelimited, "
     "http3-post-connect-failure, cancelled, deadline-exceeded, internal, resource-exhausted, "
     "unavailable"),
    ("{backends: [reviews], retries: {per_try_timeout: 0s}}", "retries.per_try_timeout",
     "must be longer than 0s"),
])
def test_rule_errors(rule: str, where: str, message: str) -> None:
    (issue,) = rule_issues(rule)
    assert re.sub(r":\d+:\d+:", ":L:C:", issue, count=1) == \
        f"policy.yaml:L:C: Route r: rules[0].{where}: {message}"


@pytest.mark.parametrize(("extra", "message"), [
    ("hosts: [shop..example.com]\n", 'hosts[0]: invalid host "shop..example.com": expected a '
                                     'name like shop.example.com, a wildcard like '
                                     '*.example.com, or "*"'),
    ("hosts: [a.*.com]\n", 'hosts[0]: invalid host "a.*.com": a wildcard is written '
                           '"*.example.com" (or "*" for every host)'),
    ("hosts: [a.com, A.com]\n", 'hosts[1]: host "a.com" is listed twice (first at '
                                "policy.yaml:15:9)"),
    ("hosts: []\n", "hosts: must list at least one host (or leave hosts out)"),
    ("listeners: [http, http]\n", 'listeners[1]: listener name "http" is listed twice (first '
                                  "at policy.yaml:15:13)"),
])
def test_route_errors(extra: str, message: str) -> None:
    (issue,) = rule_issues("{backends: [reviews]}", extra)
    assert re.sub(r":\d+:\d+:", ":L:C:", issue, count=1) == f"policy.yaml:L:C: Route r: {message}"


@pytest.mark.parametrize(("extra", "message"), [
    ("subsets: {v9: {version: v9}}\nendpoints: [1.2.3.4:80]\n",
     'subsets.v9: subset "v9" selects none of the endpoints (no endpoint has the labels '
     "{version: v9})"),
    ("subsets: {v1: {}}\n", "subsets.v1: a subset needs at least one label to select by"),
    ("subsets: {v1: {version: 1}}\n", "subsets.v1.version: a label value must be a string, "
                                      'found a number (write text in quotes, e.g. "true" or '
                                      '"2")'),
    ("subsets: {bad name: {a: b}}\n", 'subsets["bad name"]: invalid name "bad name": use '
                                      "letters, digits, '.', '_' and '-', starting with a "
                                      "letter or digit (at most 253 characters)"),
    ("endpoints: [1.2.3.4:80, 1.2.3.4:80]\n", "endpoints[1]: endpoint 1.2.3.4:80 is listed "
                                              "twice (first at policy.yaml:3:13)"),
    ("endpoints: [{address: 1.2.3.4:80, weight: 129}]\n", "endpoints[0].weight: must be from 1 "
                                                          "to 128, found 129"),
    ("endpoints: [{address: 1.2.3.4:80, labels: [a]}]\n",
     "endpoints[0].labels: expected a mapping of labels, e.g. {version: v1}, found a list"),
    ("endpoints: 1.2.3.4:80\n", "endpoints: expected a list, found a string"),
    ("protocol: HTTP\n", 'protocol: unknown value "HTTP" (did you mean "http"?); expected one '
                         "of: http, http2, grpc, tcp"),
    ("load_balancer: leastrequest\n", 'load_balancer: unknown value "leastrequest" (did you '
                                      'mean "least_request"?); expected one of: round_robin, '
                                      "least_request, random, ring_hash, maglev"),
    ("health_check: {interval: 1s}\n", "health_check: a health check needs one of http, tcp or "
                                       "grpc"),
    ("health_check: {http: healthz}\n", 'health_check.http: a path must start with "/", found '
                                        '"healthz"'),
    ("health_check: {tcp: false}\n", "health_check.tcp: expected true, found false"),
    ("health_check: {grpc: true}\n", "health_check.grpc: a gRPC health check needs protocol "
                                     "grpc or http2 (this Service speaks http)"),
    ("health_check: {tcp: true, expected_statuses: [200]}\n",
     "health_check.expected_statuses: expected_statuses applies to http health checks only"),
    ("health_check: {http: /, expected_statuses: [600]}\n",
     "health_check.expected_statuses[0]: must be from 100 to 599, found 600"),
    ("health_check: {http: /, expected_statuses: [\"300-200\"]}\n",
     'health_check.expected_statuses[0]: range "300-200" ends before it starts'),
    ("health_check: {http: /, expected_statuses: [2xx]}\n",
     'health_check.expected_statuses[0]: expected a status code (200) or a range ("200-299"), '
     'found "2xx"'),
    ("health_check: {http: /, unhealthy_threshold: 0}\n",
     "health_check.unhealthy_threshold: must be from 1 to 1000000, found 0"),
    ("circuit_breaker: {max_requests: -1}\n",
     "circuit_breaker.max_requests: must be from 0 to 4294967295, found -1"),
    ("circuit_breaker: {max_requests: true}\n",
     "circuit_breaker.max_requests: expected an integer from 0 to 4294967295, found a boolean"),
    ("outlier_detection: {max_ejection_percent: 101}\n",
     "outlier_detection.max_ejection_percent: must be from 0 to 100, found 101"),
    ("outlier_detection: []\n", "outlier_detection: expected a mapping of outlier detection "
                                "settings, found a list"),
])
def test_service_errors(extra: str, message: str) -> None:
    (issue,) = issues(service_doc("s", extra))
    assert re.sub(r":\d+:\d+:", ":L:C:", issue, count=1) == f"policy.yaml:L:C: Service s: {message}"


@pytest.mark.parametrize(("extra", "message"), [
    ("listeners: []\n", "listeners: must list at least one listener"),
    ("", 'listeners: missing "listeners"'),
    ("listeners: [{name: a, port: 65536}]\n", "listeners[0].port: must be from 1 to 65535, "
                                              "found 65536"),
    ("listeners: [{name: a, port: 1, address: localhost}]\n",
     'listeners[0].address: invalid IP address "localhost"'),
    ("listeners: [{name: a, port: 1, protocol: udp}]\n",
     'listeners[0].protocol: unknown value "udp"; expected one of: http, https, tcp'),
    ("listeners: [{name: a, port: 1, protocol: tcp}]\n",
     'listeners[0].service: missing "service"'),
    ("listeners: [{port: 1}]\n", 'listeners[0].name: missing "name"'),
    ("listeners: [http]\n", "listeners[0]: expected a listener mapping such as {name: http, "
                            "port: 8080}, found a string"),
])
def test_gateway_errors(extra: str, message: str) -> None:
    (issue,) = issues(f"kind: Gateway\nname: g\n{extra}")
    assert re.sub(r":\d+:\d+:", ":L:C:", issue, count=1) == f"policy.yaml:L:C: Gateway g: {message}"


def test_names_of_the_language_kinds_are_checked() -> None:
    assert issues("kind: Service\nname: my service\n") == [
        "policy.yaml:2:7: Service my service: name: invalid name \"my service\": use letters, "
        "digits, '.', '_' and '-', starting with a letter or digit (at most 253 characters)"]


def test_a_null_field_counts_as_missing_but_a_null_required_field_is_named() -> None:
    model = load_policy_text(service_doc("s", "protocol:\nendpoints:\n"))
    assert model.services[0] == Service("s", at(1, 1))
    assert issues("kind: Route\nname: r\ngateway:\nrules: [{backends: [s]}]\n") == [
        'policy.yaml:3:9: Route r: gateway: "gateway" needs a value']


def test_every_problem_is_reported_in_one_pass_and_nothing_loads(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", service_doc("a", "protocol: udp\n"))
    write(tmp_path, "b.yaml", GATEWAY + "---\n" + "kind: Route\nname: r\ngateway: edge\n"
                              "rules: [{backends: [nope]}]\n")
    assert [issue.split(": ")[0] for issue in folder_issues(tmp_path)] == ["a.yaml:3:11",
                                                                           "b.yaml:8:21"]


# ---------------------------------------------------------------------------------------------
# Field readers on their own.


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:80", ("127.0.0.1", 80)),
    ("[::1]:443", ("::1", 443)),
    ("[2001:DB8:0:0::1]:1", ("2001:db8::1", 1)),
    ("Reviews.Default.svc:65535", ("reviews.default.svc", 65535)),
    ("web_1:8080", ("web_1", 8080)),
    ("localhost:1", ("localhost", 1)),
])
def test_addresses(text: str, expected: tuple[str, int]) -> None:
    assert fields.address(text) == expected


@pytest.mark.parametrize(("text", "seconds"), [("250ms", 0.25), ("2s", 2.0), ("1m", 60.0),
                                               ("1h30m", 5400.0), ("1.5s", 1.5)])
def test_durations(text: str, seconds: float) -> None:
    assert fields.duration()(text) == seconds


def test_host_patterns() -> None:
    assert fields.host_pattern("*") == "*"
    assert fields.host_pattern("*.Example.COM") == "*.example.com"
    for bad in ("*example.com", "-a.com", "a..b", "a" * 64 + ".com", "exa mple.com", "*.*.a"):
        with pytest.raises(fields.Invalid):
            fields.host_pattern(bad)


def test_header_names() -> None:
    assert fields.header_name("X-Request-ID") == "x-request-id"
    assert fields.header_name(":authority") == ":authority"
    for bad in (":status", "x y", "é", ""):
        with pytest.raises(fields.Invalid):
            fields.header_name(bad)


def test_substitutions() -> None:
    convert = fields.substitution("(a)(b)")
    assert convert("\\2\\1\\\\") == "\\2\\1\\\\"
    with pytest.raises(fields.Invalid, match="backslash must be followed"):
        convert("\\n")


# ---------------------------------------------------------------------------------------------
# The JSON Schema.


def check(instance: Any, schema: dict[str, Any], root: dict[str, Any]) -> bool:
    """A small JSON Schema validator for the keywords `json_schema` uses (jsonschema is not a
    dependency). True if `instance` is valid."""
    if "$ref" in schema:
        target = root
        for step in schema["$ref"].removeprefix("#/").split("/"):
            target = target[step]
        if not check(instance, target, root):
            return False
    type_checks = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
                   "string": lambda v: isinstance(v, str),
                   "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                   "boolean": lambda v: isinstance(v, bool)}
    if "type" in schema and not type_checks[schema["type"]](instance):
        return False
    if "const" in schema and (instance != schema["const"]
                              or type(instance) is not type(schema["const"])):
        return False
    if "enum" in schema and instance not in schema["enum"]:
        return False
    if isinstance(instance, str):
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            return False
        if len(instance) < schema.get("minLength", 0) or \
                len(instance) > schema.get("maxLength", len(instance)):
            return False
    if isinstance(instance, int) and not isinstance(instance, bool) and not (
            schema.get("minimum", instance) <= instance <= schema.get("maximum", instance)):
        return False
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            return False
        if schema.get("uniqueItems") and len({repr(v) for v in instance}) != len(instance):
            return False
        if "items" in schema and not all(check(v, schema["items"], root) for v in instance):
            return False
    if isinstance(instance, dict) and not check_object(instance, schema, root):
        return False
    if "oneOf" in schema and sum(check(instance, s, root) for s in schema["oneOf"]) != 1:
        return False
    if "anyOf" in schema and not any(check(instance, s, root) for s in schema["anyOf"]):
        return False
    if "allOf" in schema and not all(check(instance, s, root) for s in schema["allOf"]):
        return False
    return not ("not" in schema and check(instance, schema["not"], root))


def check_object(instance: dict[str, Any], schema: dict[str, Any], root: dict[str, Any]) -> bool:
    if any(key not in instance for key in schema.get("required", ())):
        return False
    if len(instance) < schema.get("minProperties", 0):
        return False
    properties = schema.get("properties", {})
    additional = schema.get("additionalProperties", True)
    for key, value in instance.items():
        if "propertyNames" in schema and not check(key, schema["propertyNames"], root):
            return False
        member = properties.get(key, additional)
        if member is False or (isinstance(member, dict) and not check(value, member, root)):
            return False
    return True


SCHEMA = json_schema()


def schema_accepts(document: Any) -> bool:
    return check(document, SCHEMA, SCHEMA)


def test_the_schema_is_a_2020_12_schema_of_every_kind() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    kinds = [SCHEMA["$defs"][ref["$ref"].rsplit("/", 1)[1]]["properties"]["kind"]["const"]
             for ref in SCHEMA["oneOf"]]
    assert kinds == ["Service", "Gateway", "Route", "EnvoyResources", "Rollout", "MeshPolicy"]


def documents_of(text: str) -> list[Any]:
    """The documents as the loader reads them (PyYAML alone would read the key `on` as true)."""
    documents, problems = parse_yaml(text, "policy.yaml")
    assert not problems
    return [document.value for document in documents]


@pytest.mark.parametrize("text", [CONTRACT, FULL], ids=["contract", "full"])
def test_the_schema_accepts_valid_documents(text: str) -> None:
    for document in documents_of(text):
        assert schema_accepts(document), document


def test_the_schema_accepts_envoy_resources() -> None:
    text = """\
kind: EnvoyResources
name: extras
views: [edge]
clusters: [{name: web, connect_timeout: 1s, type: STATIC}]
endpoints: []
"""
    load_policy_text(text)
    assert schema_accepts(yaml.safe_load(text))
    assert not schema_accepts({"kind": "EnvoyResources", "name": "x", "cluster": []})


@pytest.mark.parametrize("edit", [
    lambda d: d[0].update(protocl="http"),
    lambda d: d[0].update(load_balancer="fastest"),
    lambda d: d[0]["endpoints"].append("10.0.0.1"),
    lambda d: d[0].update(connect_timeout=1),
    lambda d: d[0]["health_check"].update(tcp=True),
    lambda d: d[1]["listeners"][0].update(port=0),
    lambda d: d[2]["rules"][0].update(redirect={"path": "/"}),
    lambda d: d[2]["rules"][0].pop("backends"),
    lambda d: d[2]["rules"][1].update(timeout="2 s"),
    lambda d: d[2]["rules"][1]["retries"].update(on=["5xxx"]),
    lambda d: d[2].update(hosts=["*.*.example.com"]),
    lambda d: d[2]["rules"][0]["match"].update(method="GET", methods=["PUT"]),
    lambda d: d[2]["rules"][0]["match"]["headers"].update({"x-b": {"present": False}}),
    lambda d: d[2].pop("gateway"),
    lambda d: d[0].update(kind="Gateway"),
])
def test_the_schema_refuses_invalid_documents(edit: Any) -> None:
    documents = documents_of(CONTRACT)
    edit(documents)
    assert not all(schema_accepts(document) for document in documents)


def object_keys(schema: dict[str, Any]) -> tuple[str, ...]:
    return tuple(schema["properties"])


def test_the_schema_knows_every_key_the_parsers_accept() -> None:
    defs = SCHEMA["$defs"]
    assert set(object_keys(defs["Service"])) == set(service.SERVICE_KEYS)
    assert set(object_keys(defs["Service"]["properties"]["health_check"])) == \
        set(service.HEALTH_CHECK_KEYS)
    endpoint = defs["Service"]["properties"]["endpoints"]["items"]["oneOf"][1]
    assert set(object_keys(endpoint)) == set(service.ENDPOINT_KEYS)
    assert set(object_keys(defs["Service"]["properties"]["circuit_breaker"])) == \
        set(service.CIRCUIT_BREAKER_KEYS)
    assert set(object_keys(defs["Service"]["properties"]["outlier_detection"])) == \
        set(service.OUTLIER_DETECTION_KEYS)
    assert set(object_keys(defs["Gateway"])) == set(gateway.GATEWAY_KEYS)
    assert set(object_keys(defs["Rollout"])) == set(rollout.ROLLOUT_KEYS)
    assert set(object_keys(defs["MeshPolicy"])) == set(meshpolicy.MESH_POLICY_KEYS)
    sidecar_ports = defs["Service"]["properties"]["sidecar"]["properties"]["ports"]["items"]
    assert set(object_keys(sidecar_ports)) == set(sidecar.PORT_KEYS)
    assert set(object_keys(defs["Gateway"]["properties"]["listeners"]["items"])) == \
        set(gateway.LISTENER_KEYS)
    assert set(object_keys(defs["Route"])) == set(route.ROUTE_KEYS)
    rule = defs["Route"]["properties"]["rules"]["items"]
    assert set(object_keys(rule)) == set(route.RULE_KEYS)
    assert set(object_keys(rule["properties"]["match"]["oneOf"][0])) == set(route.MATCH_KEYS)
    assert set(object_keys(rule["properties"]["redirect"])) == set(route.REDIRECT_KEYS)
    assert set(object_keys(rule["properties"]["retries"])) == set(route.RETRIES_KEYS)
    assert set(object_keys(defs["headerOps"])) == set(route.HEADER_OPS_KEYS)


# ---------------------------------------------------------------------------------------------
# Fuzzing: whatever the input, the answer is a Model or a PolicyError.

FUZZ = settings(deadline=None, max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
                suppress_health_check=[HypothesisHealthCheck.too_slow,
                                       HypothesisHealthCheck.data_too_large])


def load_anything(text: str) -> Model | None:
    try:
        return load_policy_text(text)
    except PolicyError as error:
        assert error.issues
        assert all(issue.position is not None for issue in error.issues)
        return None


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(FULL)), st.integers(0, 8), st.text(max_size=4)),
                min_size=1, max_size=6))
def test_fuzz_mutated_documents(edits: list[tuple[int, int, str]]) -> None:
    text = FULL
    for position, cut, insert in edits:
        text = text[:position] + insert + text[position + cut:]
    load_anything(text)


KEYS = sorted({*service.SERVICE_KEYS, *service.HEALTH_CHECK_KEYS, *service.ENDPOINT_KEYS,
               *route.RULE_KEYS, *route.MATCH_KEYS, *route.VALUE_MATCHES, *route.REDIRECT_KEYS,
               *route.BACKEND_KEYS, *route.PATH_REWRITE_KEYS, *route.RETRIES_KEYS,
               *route.HEADER_OPS_KEYS, *gateway.LISTENER_KEYS, "x-a", "X-A", ":path", "v1"})
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
           | st.sampled_from(["1s", "0s", "10.0.0.1:80", "[::1]:1", "/", "/a", "(a)\\1", "a{,2}",
                              "(?=x)", "*", "*.a.com", "GET", "5xx", "reviews", "v1", "edge",
                              "http", "\\1", "200-299", "", "0.0.0.0"])
           | st.text(max_size=6))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner,
                                        max_size=4), max_leaves=20)


@FUZZ
@given(st.sampled_from(["Service", "Gateway", "Route"]),
       st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6))
def test_fuzz_random_documents(kind: str, body: dict[str, Any]) -> None:
    document = {**body, "kind": kind, "name": "fuzz"}
    load_anything(REVIEWS + "---\n" + GATEWAY + "---\n" + yaml.safe_dump(document))


RULE = st.fixed_dictionaries({}, optional={
    "match": st.fixed_dictionaries({}, optional={
        "path": st.dictionaries(st.sampled_from(route.PATH_MATCHES), SCALARS, max_size=2),
        "headers": st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), VALUES,
                                   max_size=2),
        "methods": st.lists(SCALARS, max_size=2)}),
    "backends": st.lists(st.fixed_dictionaries({"service": SCALARS}, optional={
        "subset": SCALARS, "weight": SCALARS}) | SCALARS, max_size=3),
    "redirect": st.dictionaries(st.sampled_from(route.REDIRECT_KEYS), SCALARS, max_size=3),
    "direct_response": st.dictionaries(st.sampled_from(route.DIRECT_RESPONSE_KEYS), SCALARS),
    "rewrite": st.fixed_dictionaries({}, optional={"path": st.dictionaries(
        st.sampled_from(route.PATH_REWRITE_KEYS), SCALARS), "host": SCALARS}),
    "retries": st.dictionaries(st.sampled_from(route.RETRIES_KEYS), VALUES, max_size=3),
    "timeout": SCALARS,
})


@FUZZ
@given(st.lists(RULE, max_size=3), st.lists(SCALARS, max_size=3) | st.none())
def test_fuzz_nearly_valid_routes(rules: list[dict[str, Any]], hosts: Any) -> None:
    document: dict[str, Any] = {"kind": "Route", "name": "r", "gateway": "edge", "rules": rules}
    if hosts is not None:
        document["hosts"] = hosts
    model = load_anything(REVIEWS + "---\n" + GATEWAY + "---\n" + yaml.safe_dump(document))
    if model is not None:  # nothing is dropped without an issue
        assert len(model.routes[0].rules) == len(rules)


@FUZZ
@given(st.text(alphabet=st.sampled_from(list("()[]{}?*+|\\^$.,:=!<>PZzuUNx019aAbB-#^ ")),
               max_size=30))
def test_fuzz_regexes(text: str) -> None:
    if fields.regex_problem(text) is None:
        re.compile(text)


@FUZZ
@given(st.text(max_size=30) | st.from_regex(r"\[?[0-9a-fA-F:.]{0,20}\]?:[0-9]{0,8}",
                                             fullmatch=True))
def test_fuzz_addresses(text: str) -> None:
    try:
        host, port = fields.address(text)
    except fields.Invalid:
        return
    assert 1 <= port <= 65535 and host


@pytest.mark.parametrize("text", [
    "kind: Service\nname: s\nendpoints: [1.2.3.4:" + "9" * 5000 + "]\n",
    "kind: Service\nname: s\nhealth_check: {http: /, expected_statuses: ['" + "9" * 5000 + "']}\n",
    "kind: Route\nname: r\ngateway: g\nrules: [{direct_response: {status: 200, body: '"
    + "x" * 4097 + "'}}]\n",
])
def test_huge_values_are_issues_not_crashes(text: str) -> None:
    with pytest.raises(PolicyError):
        load_policy_text(text)


def _issues_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as failed:
        load_policy_text(textwrap.dedent(text))
    return [str(issue) for issue in failed.value.issues]


_BASE = """
kind: Service
name: web
endpoints: ["10.0.0.1:80"]
---
kind: Gateway
name: edge
listeners: [{name: http, port: 80}]
---
"""


@pytest.mark.parametrize("rule", [
    "{match: {path: {exact: /a}}, backends: [web], rewrite: {path: {prefix: /b}}}",
    "{match: {path: {regex: /a.*}}, backends: [web], rewrite: {path: {prefix: /b}}}",
    "{backends: [web], rewrite: {path: {prefix: /b}}}",
    "{match: [{path: {prefix: /a}}, {path: {exact: /c}}], redirect: {prefix: /b}}",
])
def test_prefix_replacement_with_any_path_match(rule: str) -> None:
    # docs/policy.md: the prefix replaces what the match matched, all of an exact or regex
    # match (Envoy's prefix_rewrite); issue 14, bug 1 (it was refused).
    model = load_policy_text(_BASE + f"kind: Route\nname: r\ngateway: edge\nrules:\n  - {rule}\n")
    (only,) = model.routes[0].rules
    assert (only.rewrite_path.prefix if only.rewrite_path else only.redirect.prefix) == "/b"


def test_http_route_to_a_tcp_service_is_refused() -> None:
    issues = _issues_of(_BASE.replace('endpoints: ["10.0.0.1:80"]',
                                      'protocol: tcp\nendpoints: ["10.0.0.1:80"]')
                        + "kind: Route\nname: r\ngateway: edge\nrules:\n  - backends: [web]\n")
    assert issues == ["policy.yaml:15:16: Route r: rules[0].backends[0].service: Service web "
                      "speaks protocol tcp; an HTTP route cannot send requests to it"], issues
