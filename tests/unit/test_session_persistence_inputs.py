"""Session persistence as the inputs say it: the native `session_persistence` (header or
cookie) and the Gateway API's `rules[].sessionPersistence` (GEP-1619), what they become and what
is refused with its position. Traffic: tests/e2e/test_session_persistence.py and
tests/e2e/test_gatewayapi_session_persistence.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from test_gatewayapi import GATEWAY, route, status_of

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import Model, SessionPersistence

NATIVE = """\
kind: Service
name: api
endpoints: ["127.0.0.1:9000"]
---
kind: Gateway
name: edge
listeners: [{name: http, port: 8080}]
---
kind: Route
name: r
gateway: edge
rules:
  - backends: [api]
    session_persistence: SETTING
"""


def native(setting: str) -> SessionPersistence | None:
    model = load_policy_text(textwrap.dedent(NATIVE.replace("SETTING", setting)))
    (found,) = [r for r in model.routes if r.name == "r"]
    return found.rules[0].security.session_persistence


def native_issues(setting: str) -> list[str]:
    with pytest.raises(PolicyError) as failed:
        native(setting)
    return [str(issue) for issue in failed.value.issues]


def test_native_cookie_forms() -> None:
    assert native("{cookie: sticky}") == SessionPersistence(cookie="sticky")
    assert native("{cookie: {name: sticky, path: /shop, ttl: 1h}, strict: true}") == \
        SessionPersistence(cookie="sticky", cookie_path="/shop", cookie_ttl=3600.0, strict=True)
    assert native("{header: X-Session}") == SessionPersistence(header="x-session")


@pytest.mark.parametrize(("setting", "message"), [
    ("{strict: true}", "session_persistence needs one of header or cookie"),
    ("{header: x-s, cookie: c}", '"cookie" cannot be used together with "header"'),
    ("{cookie: 'a b'}", 'invalid cookie name "a b"'),
    ("{cookie: {name: c, ttl: 10}}", 'a duration needs a unit'),
    ("{cookie: {name: c, path: shop}}", 'a path must start with "/"'),
    ("{cookie: {name: c, max_age: 1h}}", 'max_age'),
])
def test_native_errors_have_the_field_path(setting: str, message: str) -> None:
    found = native_issues(setting)
    assert any(message in issue and "policy.yaml:" in issue and "session_persistence" in issue
               for issue in found), found


def gateway(setting: str, extra: str = "") -> Model:
    return load_policy_text(GATEWAY + route(
        f"  rules:\n  - backendRefs: [{{name: web, port: 8080}}]\n"
        f"    sessionPersistence: {setting}\n{extra}"))


def persisted(model: Model) -> SessionPersistence | None:
    (found,) = [r for r in model.routes if r.name == "infra/edge/80/*"]  # the listener's
    return found.rules[0].security.session_persistence


def test_a_cookie_session_by_default_with_a_generated_name_the_same_on_every_load() -> None:
    first = persisted(gateway("{}"))
    assert first is not None and first.cookie.startswith("mp-session-")
    assert (first.cookie_path, first.cookie_ttl, first.header) == ("/", None, "")
    assert persisted(gateway("{}")) == first
    assert status_of(gateway("{}"), "HTTPRoute", "infra/r")["Accepted"] == ("True", "Accepted")


def test_cookie_name_path_and_absolute_timeout() -> None:
    assert persisted(gateway("{absoluteTimeout: 10m, cookie: {name: sticky, path: /shop, "
                             "lifetimeType: Permanent}}")) == \
        SessionPersistence(cookie="sticky", cookie_path="/shop", cookie_ttl=600.0)


def test_the_earlier_experimental_shape_is_read() -> None:
    assert persisted(gateway("{sessionName: sticky, absoluteTimeout: 1h, "
                             "cookieConfig: {lifetimeType: Permanent}}")) == \
        SessionPersistence(cookie="sticky", cookie_ttl=3600.0)
    assert persisted(gateway("{type: Header, sessionName: X-Sticky}")) == \
        SessionPersistence(header="x-sticky")


def test_a_header_session() -> None:
    assert persisted(gateway("{type: Header, header: {name: X-Session}}")) == \
        SessionPersistence(header="x-session")


@pytest.mark.parametrize(("setting", "why"), [
    ("{idleTimeout: 1m}", "idleTimeout is not supported"),
    ("{type: Header, header: {name: x-s}, absoluteTimeout: 1h}",
     "absoluteTimeout with type Header is not supported"),
])
def test_what_envoy_cannot_say_leaves_the_route_not_accepted(setting: str, why: str) -> None:
    model = gateway(setting)
    accepted = [s for s in model.statuses if s.kind == "HTTPRoute" and s.name == "infra/r"]
    (condition,) = [c for c in accepted[0].conditions if c.type == "Accepted"]
    assert (condition.status, condition.reason) == ("False", "UnsupportedValue")
    assert why in condition.message


@pytest.mark.parametrize(("setting", "message"), [
    ("{cookie: {lifetimeType: Permanent}}",
     "spec.rules[0].sessionPersistence.absoluteTimeout: a Permanent cookie needs "
     "absoluteTimeout"),
    ("{type: Header}", "spec.rules[0].sessionPersistence.header: a Header session needs "
                       "header.name"),
    ("{type: Sticky}", "spec.rules[0].sessionPersistence.type: must be one of Cookie, Header"),
    ("{absoluteTimeout: forever}", "spec.rules[0].sessionPersistence.absoluteTimeout"),
])
def test_gateway_api_errors_have_the_field_path(setting: str, message: str) -> None:
    with pytest.raises(PolicyError) as failed:
        gateway(setting)
    assert message in str(failed.value), str(failed.value)


def test_a_service_parent_does_not_accept_session_persistence_yet() -> None:
    model = load_policy_text("""\
kind: Service
name: b
endpoints: ["127.0.0.1:15007"]
sidecar: {port: 15007, app: 8081}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: m, namespace: default}
spec:
  parentRefs: [{group: '', kind: Service, name: b}]
  rules: [{backendRefs: [{name: b, port: 80}], sessionPersistence: {}}]
""")
    assert status_of(model, "HTTPRoute", "default/m")["Accepted"] == \
        ("False", "UnsupportedValue")


def test_gateway_api_sessions_and_websocket_ports_convert_to_native(tmp_path: Path) -> None:
    """`meshpilot convert --to native` writes them (session_persistence, websocket), and the
    native text renders what the source does."""
    from test_convert import assert_equivalent
    text = GATEWAY.replace(
        "ports: [{name: http, port: 8080, targetPort: web}]",
        "ports: [{name: http, port: 8080, targetPort: web}, "
        "{name: ws, port: 8082, targetPort: web, appProtocol: kubernetes.io/ws}]") + route(
        "  rules:\n"
        "  - matches: [{path: {type: PathPrefix, value: /a}}]\n"
        "    backendRefs: [{name: web, port: 8080}]\n"
        "    sessionPersistence: {absoluteTimeout: 1h, cookie: {name: s, path: /a}}\n"
        "  - matches: [{path: {type: PathPrefix, value: /b}}]\n"
        "    backendRefs: [{name: web, port: 8080}]\n"
        "    sessionPersistence: {type: Header, header: {name: x-s}}\n"
        "  - backendRefs: [{name: web, port: 8082}]\n")
    (tmp_path / "policy.yaml").write_text(text)
    model = load_policy_text(text)
    assert assert_equivalent(model, tmp_path, tmp_path / "native") == []
