"""The native language's issue-14 additions at the loader: what is accepted, what it becomes,
and what is refused with its position (the end-to-end tests send the traffic)."""

from __future__ import annotations

import textwrap

import pytest

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import Model, Redirect, StringMatch
from meshpilot.translators.routes import redirect_action

BASE = """\
kind: Service
name: api
endpoints: ["127.0.0.1:9000"]
---
kind: Gateway
name: edge
listeners: [{name: http, port: 8080}]
---
"""


def load(text: str) -> Model:
    return load_policy_text(textwrap.dedent(text))


def issues(text: str) -> list[str]:
    with pytest.raises(PolicyError) as failed:
        load(text)
    return [str(issue) for issue in failed.value.issues]


def route(rule: str, extra: str = "") -> str:
    return BASE + f"kind: Route\nname: r\ngateway: edge\n{extra}rules:\n  - {rule}\n"


def test_unquoted_mtls_off_is_off_and_on_is_refused() -> None:
    sidecar = 'kind: Service\nname: s\nendpoints: ["127.0.0.1:2"]\nsidecar: {port: 15006, mtls: %s}\n'
    assert load(sidecar % "off").services[0].sidecar.mtls == "off"  # type: ignore[union-attr]
    assert issues(sidecar % "on") == [
        "policy.yaml:4:30: Service s: sidecar.mtls: expected strict, permissive or off (true is "
        "not a mode: write strict or permissive)"]


def test_allow_with_empty_rules_is_accepted_on_routes_and_sidecars() -> None:
    model = load(route("{backends: [api]}", "authorization: {action: ALLOW, rules: []}\n"))
    (policy,) = model.routes[0].security.authorization or ()
    assert policy.action == "ALLOW" and policy.rules == ()
    model = load('kind: Service\nname: s\nendpoints: ["127.0.0.1:2"]\n'
                 "sidecar: {port: 15006, authorization: {action: ALLOW, rules: []}}\n")
    assert model.services[0].sidecar.authorization.rules == ()  # type: ignore[union-attr]


def test_inverted_matches() -> None:
    model = load(route("{match: {path: {prefix: /a, invert: true}, headers: {x: {regex: "
                       "'b.*', invert: true}}}, backends: [api]}"))
    match = model.routes[0].rules[0].matches[0]
    assert match.path == StringMatch("prefix", "/a", invert=True)
    assert match.headers == (("x", StringMatch("regex", "b.*", invert=True)),)
    assert issues(route("{match: {headers: {x: {present: true, invert: true}}}, "
                        "backends: [api]}")) == [
        "policy.yaml:13:43: Route r: rules[0].match.headers.x.invert: write {absent: true} "
        "instead of inverting present"]
    (found,) = issues(route("{match: {query: {q: {exact: a, invert: true}}}, backends: [api]}"))
    assert 'rules[0].match.query.q.invert: unknown key "invert"' in found


def test_a_formatted_body_needs_well_formed_operators() -> None:
    (found,) = issues(route("{direct_response: {status: 200, body: '50% off', "
                            "formatted: true}}"))
    assert found.startswith("policy.yaml:13:43: Route r: rules[0].direct_response.body: a "
                            'formatted body has a "%" that starts no command operator')
    model = load(route("{direct_response: {status: 200, body: '50% off'}}"))
    response = model.routes[0].rules[0].direct_response
    assert response is not None and not response.formatted and response.body == "50% off"


def test_redirect_port_forms() -> None:
    model = load(route("{redirect: {host: b.example, port: scheme, strip_query: true}}"))
    redirect = model.routes[0].rules[0].redirect
    assert redirect is not None and redirect.port is None
    assert redirect.port_from == "scheme" and redirect.strip_query
    (found,) = issues(route("{redirect: {port: from_request}}"))
    assert 'unknown value "from_request"' in found


def test_cors_on_a_rule_inherits_and_refuses_any_origin_with_credentials() -> None:
    model = load(route("{backends: [api], cors: {allow_methods: [PUT]}}",
                       'cors: {allow_origins: ["https://a.example"], allow_methods: [GET], '
                       "max_age: 1m}\n"))
    cors = model.routes[0].rules[0].cors
    assert cors is not None and cors.allow_methods == ("PUT",) and cors.max_age == 60
    assert cors.allow_origins == (StringMatch("exact", "https://a.example"),)
    (found,) = issues(route("{backends: [api], cors: {allow_methods: [PUT]}}"))
    assert 'rules[0].cors.allow_origins: missing "allow_origins"' in found
    assert load(route("{backends: [api]}", 'cors: {allow_origins: ["https://a.example"], '
                                           'allow_headers: ["*"], allow_credentials: true}\n'))
    (found,) = issues(route("{backends: [api], cors: {allow_credentials: true}}",
                            'cors: {allow_origins: ["*"]}\n'))
    assert 'rules[0].cors.allow_credentials: allow_credentials cannot be used with the origin ' \
           '"*"' in found


def test_a_gateways_basic_auth_forwards_in_one_header(tmp_path) -> None:
    users = tmp_path / "users.htpasswd"
    users.write_text("alice:{SHA}" + "A" * 27 + "=\n")
    auth = "{{users: {{file: {path}}}, forward: {header}}}"
    text = (BASE + "kind: Route\nname: a\ngateway: edge\nhosts: [a.example]\nbasic_auth: "
            + auth.format(path=users, header="x-user") + "\nrules: [{backends: [api]}]\n---\n"
            + "kind: Route\nname: b\ngateway: edge\nhosts: [b.example]\nbasic_auth: "
            + auth.format(path=users, header="x-name") + "\nrules: [{backends: [api]}]\n")
    found = issues(text)
    assert any('basic_auth forwards the user in "x-name", but Route a on Gateway edge in '
               '"x-user"' in line for line in found), found


@pytest.mark.parametrize(("listener", "message"), [
    ("{name: h, port: 80, client_ip: {xff_trusted_hops: 1, header: x-real-ip}}",
     '"header" cannot be used together with "xff_trusted_hops"'),
    ("{name: h, port: 80, client_ip: {header: host}}", '"host" cannot carry an address'),
    ("{name: h, port: 80, client_ip: {trusted_cidrs: [10.0.0.0/33]}}",
     'invalid address or CIDR range "10.0.0.0/33"'),
    ("{name: h, port: 80, protocol: tcp, service: api, client_ip: {xff_trusted_hops: 1}}",
     '"client_ip" is an HTTP option'),
])
def test_client_ip_errors(listener: str, message: str) -> None:
    (found,) = issues('kind: Service\nname: api\nprotocol: tcp\nendpoints: ["127.0.0.1:1"]\n---\n'
                      f"kind: Gateway\nname: edge\nlisteners: [{listener}]\n")
    assert message in found, found


def test_ext_authz_path_prefix_is_for_http() -> None:
    (found,) = issues(route("{backends: [api], ext_authz: {service: api, protocol: grpc, "
                            "path_prefix: /check}}"))
    assert "path_prefix applies to protocol http" in found


def test_generated_regexes_are_checked_too() -> None:
    # An absent query parameter and an inverted path regex are said as regexes on :path:
    # a name or pattern making that regex too large for Envoy is refused where it is written.
    long_name = "p" * 120
    (found,) = issues(route(f"{{match: {{query: {{{long_name}: {{absent: true}}}}}}, "
                            "backends: [api]}"))
    assert "this parameter name is too long to match as absent: too complex for Envoy" in found
    assert load(route("{match: {query: {preview: {absent: true}}}, backends: [api]}"))
    (found,) = issues(route("{match: {path: {regex: '/a{95}', invert: true}}, "
                            "backends: [api]}"))
    assert "rules[0].match.path.regex: too complex for Envoy" in found


def test_a_sidecars_claims_need_its_jwt_and_its_keys_inline_or_in_a_file() -> None:
    sidecar = ('kind: Service\nname: s\nendpoints: ["127.0.0.1:2"]\nsidecar:\n  port: 15006\n'
               "  authorization: {rules: [{claims: {group: admins}}]}\n")
    (found,) = issues(sidecar)
    assert "claims and authenticated need the sidecar's jwt" in found
    (found,) = issues(sidecar + "  jwt: {providers: [{name: p, jwks: {uri: "
                                "'https://idp/jwks', service: s}}]}\n")
    assert "a sidecar's jwt reads its keys from a file or inline" in found


def test_a_jwt_providers_cookies_and_payload_header() -> None:
    model = load(route("{backends: [api]}", "jwt: {providers: [{name: p, jwks: {inline: "
                       "'{\"keys\": [{}]}'}, from_cookies: [session, sid], "
                       "forward_payload: x-jwt-payload}]}\n"))
    (provider,) = model.routes[0].security.jwt.providers  # type: ignore[union-attr]
    assert (provider.from_cookies, provider.payload_header) == (("session", "sid"),
                                                                "x-jwt-payload")
    (found,) = issues(route("{backends: [api]}", "jwt: {providers: [{name: p, jwks: {inline: "
                            "'{\"keys\": [{}]}'}, forward_payload: 'bad header'}]}\n"))
    assert "jwt.providers[0].forward_payload" in found


@pytest.mark.parametrize(("redirect", "listener", "port"), [
    (Redirect(host="b.example"), (8080, "http"), 8080),  # the listener's port kept
    (Redirect(host="b.example"), (80, "http"), 0),  # its default: left out
    (Redirect(host="b.example"), (8443, "https"), 8443),
    (Redirect(host="b.example"), None, 0),  # a sidecar's: unknown, Envoy's way
    (Redirect(path="/x"), (8080, "http"), 0),  # the Host's own port stays (Envoy's way)
    (Redirect(scheme="https"), (8080, "http"), 443),  # a new scheme: its default
    (Redirect(scheme="https", host="b.example"), (8080, "http"), 0),  # dropped by Envoy
    (Redirect(scheme="http"), (8080, "http"), 0),  # not a change
    (Redirect(path="/x", port_from="scheme"), (8080, "http"), 80),
    (Redirect(host="b.example", port_from="scheme"), (8080, "http"), 0),
    (Redirect(host="b.example", port=9000), (8080, "http"), 9000),
])
def test_the_port_of_a_redirect(redirect: Redirect, listener: tuple[int, str] | None,
                                port: int) -> None:
    assert redirect_action(redirect, listener).port_redirect == port
