"""Request-level security, unit level: the YAML shapes of jwt, api_keys, basic_auth, ext_authz,
authorization and rate_limit, their errors (with exact positions, never echoing a key), the
cross-document checks, and the Envoy filters and per-route configs they translate to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from envoy.extensions.filters.http.rbac.v3.rbac_pb2 import RBACPerRoute
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)

from meshpilot.base import types
from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import Authorization, AuthzRule, StringMatch
from meshpilot.translators import Translation, auth
from meshpilot.xds.redact import fingerprint
from meshpilot.xds.render import message_of, snapshot_to_dict

JWKS = json.dumps({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]})

HEAD = """\
kind: Service
name: api
endpoints: [127.0.0.1:9100]
---
kind: Gateway
name: edge
listeners: [{name: http, port: 8080}]
---
kind: Route
name: r
gateway: edge
"""


def errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as raised:
        load_policy_text(HEAD + text, "policy.yaml")
    return [str(issue) for issue in raised.value.issues]


def listener_filters(text: str) -> list[str]:
    snapshot = Translation(load_policy_text(HEAD + text, "policy.yaml")).snapshot("edge")
    listener = message_of(snapshot.get(types.LISTENER)["edge/http"])
    manager = hcm.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return [f.name for f in manager.http_filters]


def test_no_security_adds_no_filter() -> None:
    assert "envoy.filters.http.rbac/allow" not in listener_filters("rules: [{backends: [api]}]")


def test_filters_come_in_order_after_cors() -> None:
    names = listener_filters(f"""\
jwt: {{providers: [{{name: p, issuer: i, jwks: {{inline: '{JWKS}'}}}}]}}
authorization: [{{action: DENY, rules: [{{paths: [/x]}}]}}, {{action: ALLOW}}]
rate_limit: {{requests: 3, per: 1s}}
rules: [{{backends: [api]}}]
""")
    assert names == ["envoy.filters.http.cors", auth.LOCAL_RATELIMIT, auth.JWT_AUTHN,
                     auth.RBAC_DENY, auth.RBAC_ALLOW, "envoy.filters.http.fault",
                     "envoy.filters.http.router"]


def test_allow_without_rules_denies_everything_and_deny_without_rules_nothing() -> None:
    allow = auth.rbac(Authorization("ALLOW"))
    assert allow.rules.action == allow.rules.ALLOW and not allow.rules.policies
    deny = auth.rbac(Authorization("DENY"))
    assert deny.rules.action == deny.rules.DENY and not deny.rules.policies
    rule = AuthzRule(paths=(StringMatch("prefix", "/a/"),), methods=("GET",),
                     source_ips=("10.0.0.0/8",))
    policy = auth.rbac(Authorization("ALLOW", (rule,))).rules.policies["rules[0]"]
    assert len(policy.permissions[0].and_rules.rules) == 2
    assert policy.principals[0].direct_remote_ip.prefix_len.value == 8


def test_a_rules_authorization_replaces_both_route_policies() -> None:
    snapshot = Translation(load_policy_text(HEAD + """\
authorization: [{action: DENY, rules: [{paths: [/x]}]}, {action: ALLOW, rules: [{paths: [/a]}]}]
rules:
  - match: {path: {prefix: /open}}
    backends: [api]
    authorization: {action: DENY, rules: [{paths: [/open/secret]}]}
""", "policy.yaml")).snapshot("edge")
    config = message_of(snapshot.get(types.ROUTE)["edge/http"])
    entry = config.virtual_hosts[0].routes[0]
    allow = RBACPerRoute()
    entry.typed_per_filter_config[auth.RBAC_ALLOW].Unpack(allow)
    assert not allow.HasField("rbac")  # the Route's ALLOW policy is off for this rule


def test_rate_limit_per_client_uses_dynamic_descriptors() -> None:
    from meshpilot.ir.model import RateLimit

    config = auth.local_rate_limit(RateLimit(requests=3, per=1.0, by="header", header="x-c"))
    assert config.rate_limits[0].actions[0].request_headers.header_name == "x-c"
    assert config.descriptors[0].entries[0].value == ""
    assert not config.always_consume_default_token_bucket.value
    assert config.token_bucket.max_tokens == 3


def test_errors_have_positions_and_never_show_keys(tmp_path: Path) -> None:
    assert errors("""\
api_keys: {header: x-api-key, keys: {a: "top secret", b: "top secret"}}
rate_limit: {requests: 0, per: 10ms, by: everyone}
rules: [{backends: [api]}]
""") == [
        "policy.yaml:12:41: Route r: api_keys.keys.a: a key must be non-empty, printable, "
        "without spaces",
        "policy.yaml:12:58: Route r: api_keys.keys.b: a key must be non-empty, printable, "
        "without spaces",
        "policy.yaml:13:24: Route r: rate_limit.requests: must be from 1 to 1000000000, found 0",
        "policy.yaml:13:32: Route r: rate_limit.per: must be at least 50ms (Envoy's smallest "
        "refill interval)",
        'policy.yaml:13:42: Route r: rate_limit.by: unknown value "everyone"; expected one of: '
        "route, host, source_ip",
    ]
    found = errors("""\
api_keys: {header: x-api-key, keys: {a: same-key, b: same-key}}
rules: [{backends: [api]}]
""")
    assert found == ["policy.yaml:12:51: Route r: api_keys.keys.b: client b has the same key "
                     "as client a"]
    assert "same-key\"" not in found[0]


def test_files_claims_and_services_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "users"
    bad.write_text("alice:plain\n")
    found = errors(f"""\
basic_auth: {{users: {{file: {bad}}}}}
ext_authz: {{service: nowhere}}
authorization: {{rules: [{{claims: {{group: admins}}}}]}}
rules:
  - backends: [api]
    jwt: {{providers: [{{name: p, jwks: {{file: relative.json}}}}]}}
""")
    assert found[0] == (f"policy.yaml:12:28: Route r: basic_auth.users.file: {bad}:1: expected "
                        "user:{SHA}hash (htpasswd -s); Envoy accepts SHA-1 hashes only")
    assert found[1].startswith("policy.yaml:17:46: Route r: rules[0].jwt.providers[0].jwks.file"
                               ": expected an absolute path")
    assert len(found) == 2
    assert errors("""\
authorization: {rules: [{claims: {group: admins}}]}
rules: [{backends: [api]}]
""") == ["policy.yaml:12:1: Route r: authorization: claims and authenticated need a jwt on "
         "the Route or on the rule (a request has no claims without one)"]
    assert errors("""\
ext_authz: {service: nowhere}
rules: [{backends: [api]}]
""") == ['policy.yaml:12:13: Route r: ext_authz.service: no Service named "nowhere"']


def test_dumps_redact_api_keys() -> None:
    snapshot = Translation(load_policy_text(HEAD + """\
api_keys: {query: key, keys: {a: the-key-of-a}}
rules: [{backends: [api]}]
""", "policy.yaml")).snapshot("edge")
    text = json.dumps(snapshot_to_dict(snapshot))
    assert "the-key-of-a" not in text and fingerprint("the-key-of-a") in text
