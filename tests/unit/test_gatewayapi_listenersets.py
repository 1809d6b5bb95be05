"""ListenerSet: which ListenerSets a Gateway takes, their listeners merged into its own in the
spec's precedence, routes attaching to them by a parentRef of kind ListenerSet, and the
statuses upstream's conformance tests read.

Each test is named after the upstream conformance test (conformance/tests/listenerset-*.go)
whose behaviour it checks; the inputs are meshpilot's own (the shared copy of the suite lacks
those tests' manifests).
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from test_incremental_gatewayapi import CLASS as CLASS_APP
from test_incremental_gatewayapi import _backend, _files, _gateway, _route, _step
from tls_material import CA

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import PolicyLoader, load_policy_text
from meshpilot.ir.model import Model, ObjectStatus
from meshpilot.translators import Translation
from meshpilot.xds.render import snapshot_to_dict

CLASS = """apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: mp}
spec: {controllerName: meshpilot.io/gateway-controller}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: infra}
spec: {ports: [{name: http, port: 8080}]}
---
"""


def gateway(listeners: str = "  - {name: gw, port: 80, protocol: HTTP, hostname: gw.example.com}",
            allowed: str | None = "Same", name: str = "edge") -> str:
    allowed_listeners = f"  allowedListeners: {{namespaces: {{from: {allowed}}}}}\n" \
        if allowed else ""
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: infra}}
spec:
  gatewayClassName: mp
{allowed_listeners}  listeners:
{listeners}
---
"""


def listener_set(name: str, listeners: str, namespace: str = "infra", stamp: str = "",
                 parent: str = "{name: edge, namespace: infra}",
                 api: str = "gateway.networking.k8s.io/v1", kind: str = "ListenerSet") -> str:
    created = f", creationTimestamp: '{stamp}'" if stamp else ""
    return f"""apiVersion: {api}
kind: {kind}
metadata: {{name: {name}, namespace: {namespace}{created}}}
spec:
  parentRef: {parent}
  listeners:
{listeners}
---
"""


def http_route(name: str, parents: str, path: str, namespace: str = "infra",
               hostnames: str = "") -> str:
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  parentRefs: {parents}
{hostnames}  rules:
  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
    backendRefs: [{{name: web, namespace: infra, port: 8080}}]
---
"""


LS_REF = "{group: gateway.networking.k8s.io, kind: ListenerSet, name: %s, namespace: infra%s}"


def ls_ref(name: str, section: str = "") -> str:
    return LS_REF % (name, f", sectionName: {section}" if section else "")


def one(model: Model, kind: str, name: str, parent: str | None = None) -> ObjectStatus:
    found = [s for s in model.statuses if s.kind == kind and s.name == name
             and (parent is None or s.parent == parent)]
    assert len(found) == 1, (kind, name, parent, model.statuses)
    return found[0]


def conditions(model: Model, kind: str, name: str,
               parent: str | None = None) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in one(model, kind, name, parent).conditions}


def details(model: Model, kind: str, name: str) -> dict[str, str]:
    return dict(one(model, kind, name).details)


def served(model: Model) -> dict[str, set[str]]:
    """Each hostname of the Gateway's route tables (port/hostname) -> the paths served there."""
    return {route.name.removeprefix("infra/edge/"): {
        rule.matches[0].path.value for rule in route.rules if rule.matches[0].path}
        for route in model.routes if route.gateway == "infra/edge"}


def ports(model: Model) -> list[str]:
    return [listener.name for listener in model.gateway("infra/edge").listeners]  # type: ignore[union-attr]


LS_LISTENER = "  - {name: extra, port: 8081, protocol: HTTP, hostname: ls.example.com}"


def test_ListenerSetDefaultNotAllowed() -> None:
    model = load_policy_text(CLASS + gateway(allowed=None) + listener_set("ls", LS_LISTENER))
    assert conditions(model, "ListenerSet", "infra/ls") == {
        "Accepted": ("False", "NotAllowed"), "Programmed": ("False", "NotAllowed")}
    assert conditions(model, "Gateway", "infra/edge")["Accepted"] == ("True", "Accepted")
    assert details(model, "Gateway", "infra/edge")["attachedListenerSets"] == "0"
    assert ports(model) == ["80"]  # the ListenerSet's port is not bound
    assert not [s for s in model.statuses if s.kind == "ListenerEntry"]


def test_ListenerSetAllowedNamespaceNone() -> None:
    model = load_policy_text(CLASS + gateway(allowed="None") + listener_set("ls", LS_LISTENER))
    assert conditions(model, "ListenerSet", "infra/ls") == {
        "Accepted": ("False", "NotAllowed"), "Programmed": ("False", "NotAllowed")}
    assert details(model, "Gateway", "infra/edge")["attachedListenerSets"] == "0"
    assert ports(model) == ["80"]


def test_ListenerSetAllowedNamespaceSame() -> None:
    model = load_policy_text(CLASS + gateway(allowed="Same") + listener_set("ls", LS_LISTENER)
                             + listener_set("elsewhere", LS_LISTENER.replace("8081", "8082"),
                                            namespace="other"))
    assert conditions(model, "ListenerSet", "infra/ls") == {
        "Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
    assert conditions(model, "ListenerEntry", "infra/ls/extra") == {
        "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs"),
        "Conflicted": ("False", "NoConflicts"), "Programmed": ("True", "Programmed")}
    assert conditions(model, "ListenerSet", "other/elsewhere") == {
        "Accepted": ("False", "NotAllowed"), "Programmed": ("False", "NotAllowed")}
    assert details(model, "Gateway", "infra/edge")["attachedListenerSets"] == "1"
    assert ports(model) == ["80", "8081"]
    # the ListenerSet's status is about its Gateway, at its parentRef
    status = one(model, "ListenerSet", "infra/ls")
    assert status.parent == "infra/edge" and status.position is not None


def test_ListenerSetAllowedNamespaceSelector() -> None:
    namespaces = """apiVersion: v1
kind: Namespace
metadata: {name: picked, labels: {listeners: "yes"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: unpicked, labels: {listeners: "no"}}
---
"""
    edge = gateway(allowed="Selector").replace(
        "{from: Selector}", "{from: Selector, selector: {matchLabels: {listeners: 'yes'}}}")
    model = load_policy_text(CLASS + namespaces + edge
                             + listener_set("in", LS_LISTENER, namespace="picked")
                             + listener_set("out", LS_LISTENER.replace("8081", "8082"),
                                            namespace="unpicked"))
    assert conditions(model, "ListenerSet", "picked/in")["Accepted"] == ("True", "Accepted")
    assert conditions(model, "ListenerSet", "unpicked/out") == {
        "Accepted": ("False", "NotAllowed"), "Programmed": ("False", "NotAllowed")}
    assert details(model, "Gateway", "infra/edge")["attachedListenerSets"] == "1"
    assert ports(model) == ["80", "8081"]


def test_ListenerSetAllowedRoutesNamespaces() -> None:
    namespaces = """apiVersion: v1
kind: Namespace
metadata: {name: allowed, labels: {routes: "yes"}}
---
"""
    listeners = """  - {name: all, port: 80, protocol: HTTP, hostname: all.example.com,
     allowedRoutes: {namespaces: {from: All}}}
  - {name: same, port: 80, protocol: HTTP, hostname: same.example.com}
  - {name: selector, port: 80, protocol: HTTP, hostname: selector.example.com,
     allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {routes: "yes"}}}}}"""
    cross = "  - {name: cross-same, port: 80, protocol: HTTP, hostname: cross.example.com}"
    text = (CLASS + namespaces + gateway(allowed="All") + listener_set("ls", listeners)
            + listener_set("ls-cross", cross, namespace="lsns")
            + http_route("r-same", f"[{ls_ref('ls')}]", "/same")
            + http_route("r-allowed", f"[{ls_ref('ls')}]", "/allowed", namespace="allowed")
            + http_route("r-denied", f"[{ls_ref('ls')}]", "/denied", namespace="denied")
            + http_route("r-lsns", f"[{ls_ref('ls-cross').replace('infra', 'lsns')}]", "/lsns",
                         namespace="lsns")
            + http_route("r-gwns", f"[{ls_ref('ls-cross').replace('infra', 'lsns')}]", "/gwns"))
    model = load_policy_text(text)
    assert details(model, "Gateway", "infra/edge")["attachedListenerSets"] == "2"
    attached = {name: details(model, "ListenerEntry", f"infra/ls/{name}")["attachedRoutes"]
                for name in ("all", "same", "selector")}
    assert attached == {"all": "3", "same": "1", "selector": "1"}
    for route in ("infra/r-same", "allowed/r-allowed", "denied/r-denied"):
        assert conditions(model, "HTTPRoute", route)["Accepted"] == ("True", "Accepted")
    assert served(model) == {"80/all.example.com": {"/same", "/allowed", "/denied"},
                             "80/same.example.com": {"/same"},
                             "80/selector.example.com": {"/allowed"},
                             "80/cross.example.com": {"/lsns"}}
    # Same is the ListenerSet's namespace, not its Gateway's
    assert details(model, "ListenerEntry", "lsns/ls-cross/cross-same")["attachedRoutes"] == "1"
    assert conditions(model, "HTTPRoute", "lsns/r-lsns")["Accepted"] == ("True", "Accepted")
    assert conditions(model, "HTTPRoute", "infra/r-gwns")["Accepted"] == \
        ("False", "NotAllowedByListeners")


def test_ListenerSetAllowedRoutesSupportedKinds() -> None:
    listeners = """  - {name: tls-only, port: 8081, protocol: HTTP,
     allowedRoutes: {kinds: [{kind: TLSRoute}]}}"""
    model = load_policy_text(CLASS + gateway() + listener_set("ls", listeners))
    entry = conditions(model, "ListenerEntry", "infra/ls/tls-only")
    assert entry["ResolvedRefs"] == ("False", "InvalidRouteKinds")
    assert details(model, "ListenerEntry", "infra/ls/tls-only")["supportedKinds"] == ""


def test_ListenerSetDualParentRefIndependence() -> None:
    listeners = "  - {name: ls-listener, port: 80, protocol: HTTP, hostname: ls.example.com}"
    both = f"[{{name: edge, namespace: infra, sectionName: gw}}, {ls_ref('ls')}]"
    # its Gateway parentRef names the ListenerSet's listener, which a Gateway lacks
    one_good = f"[{{name: edge, namespace: infra, sectionName: ls-listener}}, {ls_ref('ls')}]"
    model = load_policy_text(CLASS + gateway() + listener_set("ls", listeners)
                             + http_route("both", both, "/both")
                             + http_route("one", one_good, "/one"))
    assert conditions(model, "HTTPRoute", "infra/both", "infra/edge/gw")["Accepted"] == \
        ("True", "Accepted")
    assert conditions(model, "HTTPRoute", "infra/both", "ListenerSet:infra/ls")["Accepted"] == \
        ("True", "Accepted")
    assert conditions(model, "HTTPRoute", "infra/one", "infra/edge/ls-listener")["Accepted"] \
        == ("False", "NoMatchingParent")
    assert conditions(model, "HTTPRoute", "infra/one", "ListenerSet:infra/ls")["Accepted"] == \
        ("True", "Accepted")
    assert details(model, "ListenerEntry", "infra/ls/ls-listener")["attachedRoutes"] == "2"
    assert served(model) == {"80/gw.example.com": {"/both"},
                             "80/ls.example.com": {"/both", "/one"}}


def test_ListenerSetGatewayParentSectionNameNotFound() -> None:
    listeners = "  - {name: ls-section, port: 80, protocol: HTTP, hostname: ls.example.com}"
    model = load_policy_text(
        CLASS + gateway() + listener_set("ls", listeners)
        + http_route("via-ls", f"[{ls_ref('ls', 'ls-section')}]", "/good")
        + http_route("via-gw", "[{name: edge, namespace: infra, sectionName: ls-section}]",
                     "/bad"))
    assert conditions(model, "HTTPRoute", "infra/via-ls")["Accepted"] == ("True", "Accepted")
    assert one(model, "HTTPRoute", "infra/via-ls").parent == "ListenerSet:infra/ls/ls-section"
    assert conditions(model, "HTTPRoute", "infra/via-gw")["Accepted"] == \
        ("False", "NoMatchingParent")
    assert served(model) == {"80/ls.example.com": {"/good"}}


def _conflicts(listener: str, other: str, reason: str) -> None:
    """The upstream conflict tests' shape: the Gateway's listener and the first ListenerSet's
    win; a ListenerSet keeps being accepted while one of its listeners is valid."""
    gw = gateway(f"  - {{name: gw, port: 80, protocol: HTTP, hostname: gw.example.com}}\n"
                 f"  - {{name: taken, {listener}}}")
    text = (CLASS + gw
            + listener_set("with-gw-1", f"  - {{name: own-1, port: 80, protocol: HTTP, "
                           f"hostname: one.example.com}}\n  - {{name: taken, {other}}}\n"
                           f"  - {{name: first, port: 90, protocol: HTTP, "
                           f"hostname: first.example.com}}", stamp="2026-01-01T00:00:00Z")
            + listener_set("with-gw-2", f"  - {{name: taken, {other}}}",
                           stamp="2026-01-02T00:00:00Z")
            # an older creationTimestamp sorts before a name earlier in the alphabet
            + listener_set("a-with-ls-1", "  - {name: own-2, port: 80, protocol: HTTP, "
                           "hostname: two.example.com}\n  - {name: first, port: 90, "
                           f"{'protocol: HTTP, hostname: first.example.com' if reason == 'HostnameConflict' else 'protocol: TCP'}}}",
                           stamp="2026-01-03T00:00:00Z")
            + listener_set("a-with-ls-2", "  - {name: first, port: 90, "
                           f"{'protocol: HTTP, hostname: first.example.com' if reason == 'HostnameConflict' else 'protocol: TCP'}}}",
                           stamp="2026-01-03T00:00:00Z"))
    model = load_policy_text(text)
    refused = {"Accepted": ("False", reason), "ResolvedRefs": ("True", "ResolvedRefs"),
               "Conflicted": ("True", reason), "Programmed": ("False", reason)}
    accepted = {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs"),
                "Conflicted": ("False", "NoConflicts"), "Programmed": ("True", "Programmed")}
    for name in ("gw", "taken"):
        assert conditions(model, "Listener", f"infra/edge/{name}")["Programmed"] == \
            ("True", "Programmed")
        assert conditions(model, "Listener", f"infra/edge/{name}")["Conflicted"] == \
            ("False", "NoConflicts")
    assert details(model, "Gateway", "infra/edge")["attachedListenerSets"] == "2"
    assert conditions(model, "ListenerEntry", "infra/with-gw-1/own-1") == accepted
    assert conditions(model, "ListenerEntry", "infra/with-gw-1/taken") == refused
    assert conditions(model, "ListenerEntry", "infra/with-gw-1/first") == accepted
    assert conditions(model, "ListenerSet", "infra/with-gw-1") == {
        "Accepted": ("True", "ListenersNotValid"), "Programmed": ("True", "Programmed")}
    assert conditions(model, "ListenerEntry", "infra/with-gw-2/taken") == refused
    assert conditions(model, "ListenerSet", "infra/with-gw-2") == {
        "Accepted": ("False", "ListenersNotValid"), "Programmed": ("False", "ListenersNotValid")}
    assert conditions(model, "ListenerEntry", "infra/a-with-ls-1/own-2") == accepted
    assert conditions(model, "ListenerEntry", "infra/a-with-ls-1/first") == refused
    assert conditions(model, "ListenerSet", "infra/a-with-ls-1")["Accepted"] == \
        ("True", "ListenersNotValid")
    assert conditions(model, "ListenerEntry", "infra/a-with-ls-2/first") == refused
    assert conditions(model, "ListenerSet", "infra/a-with-ls-2")["Accepted"] == \
        ("False", "ListenersNotValid")
    # only the winners are bound: port 90 is HTTP (with-gw-1's), not TCP
    (port_90,) = [lst for lst in model.gateway("infra/edge").listeners  # type: ignore[union-attr]
                  if lst.name == "90"]
    assert port_90.protocol == "http"


def test_ListenerSetHostnameConflict() -> None:
    spec = "port: 80, protocol: HTTP, hostname: taken.example.com"
    _conflicts(spec, spec, "HostnameConflict")


def test_ListenerSetProtocolConflict() -> None:
    _conflicts("port: 8080, protocol: HTTP", "port: 8080, protocol: TCP", "ProtocolConflict")


def test_ListenerSetReferenceGrant() -> None:
    pair = CA().issue("secure.example.com")
    secret = f"""apiVersion: v1
kind: Secret
metadata: {{name: cert, namespace: certs}}
type: kubernetes.io/tls
data:
  tls.crt: {base64.b64encode(pair.cert_pem).decode()}
  tls.key: {base64.b64encode(pair.key_pem).decode()}
---
"""

    def grant(from_kind: str, namespace: str, group: str = "gateway.networking.k8s.io") -> str:
        return f"""apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: from-{namespace}-{from_kind.lower()}, namespace: certs}}
spec:
  from: [{{group: {group}, kind: {from_kind}, namespace: {namespace}}}]
  to: [{{group: "", kind: Secret}}]
---
"""
    https = """  - {name: secure, port: 443, protocol: HTTPS, hostname: secure.example.com,
     tls: {certificateRefs: [{name: cert, namespace: certs}]}}"""
    text = (CLASS + gateway(allowed="All") + secret + grant("ListenerSet", "granted")
            # a grant to the Gateway's namespace's Gateways is not one to its ListenerSets
            + grant("Gateway", "infra")
            + listener_set("with-grant", https, namespace="granted")
            + listener_set("without-grant", https.replace("443", "8443"),
                           namespace="ungranted")
            + listener_set("gateway-grant", https.replace("443", "9443"))
            # an XListenerSet's grant names its own group and kind
            + grant("XListenerSet", "experimental", "gateway.networking.x-k8s.io")
            + listener_set("x", https.replace("443", "7443"), namespace="experimental",
                           api="gateway.networking.x-k8s.io/v1alpha1", kind="XListenerSet"))
    model = load_policy_text(text)
    assert conditions(model, "ListenerEntry", "experimental/x/secure")["ResolvedRefs"] == \
        ("True", "ResolvedRefs")
    assert conditions(model, "ListenerEntry", "granted/with-grant/secure")["ResolvedRefs"] == \
        ("True", "ResolvedRefs")
    assert conditions(model, "ListenerSet", "granted/with-grant") == {
        "Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
    for key in ("ungranted/without-grant", "infra/gateway-grant"):
        assert conditions(model, "ListenerEntry", f"{key}/secure")["ResolvedRefs"] == \
            ("False", "RefNotPermitted")
        assert conditions(model, "ListenerSet", key) == {
            "Accepted": ("False", "ListenersNotValid"),
            "Programmed": ("False", "ListenersNotValid")}
    assert ports(model) == ["80", "443", "7443"]
    (https_listener,) = [lst for lst in model.gateway("infra/edge").listeners  # type: ignore[union-attr]
                         if lst.name == "443"]
    assert https_listener.tls is not None and https_listener.tls.certificates


def test_ListenerSetHTTPRouting() -> None:
    gw = gateway("  - {name: gw-1, port: 80, protocol: HTTP, hostname: gw1.example.com}\n"
                 "  - {name: gw-2, port: 80, protocol: HTTP, hostname: gw2.example.com}")
    sets = (listener_set("ls-1", "  - {name: l1, port: 80, protocol: HTTP, hostname: a1.example.com}\n"
                                 "  - {name: l2, port: 8081, protocol: HTTP, hostname: a2.example.com}")
            + listener_set("ls-2", "  - {name: l1, port: 80, protocol: HTTP, hostname: b1.example.com}"))
    everywhere = f"[{{name: edge, namespace: infra}}, {ls_ref('ls-1')}, {ls_ref('ls-2')}]"
    model = load_policy_text(
        CLASS + gw + sets
        + http_route("all", everywhere, "/all")
        + http_route("gw", "[{name: edge, namespace: infra}]", "/gw")
        + http_route("gw-section", "[{name: edge, namespace: infra, sectionName: gw-1}]",
                     "/gw-section")
        + http_route("ls-1", f"[{ls_ref('ls-1')}]", "/ls-1")
        + http_route("ls-1-section", f"[{ls_ref('ls-1', 'l1')}]", "/ls-1-section")
        + http_route("ls-2", f"[{ls_ref('ls-2')}]", "/ls-2"))
    assert served(model) == {
        "80/gw1.example.com": {"/all", "/gw", "/gw-section"},
        "80/gw2.example.com": {"/all", "/gw"},
        "80/a1.example.com": {"/all", "/ls-1", "/ls-1-section"},
        "8081/a2.example.com": {"/all", "/ls-1"},
        "80/b1.example.com": {"/all", "/ls-2"}}
    assert ports(model) == ["80", "8081"]
    assert details(model, "ListenerEntry", "infra/ls-1/l1")["attachedRoutes"] == "3"
    assert details(model, "ListenerEntry", "infra/ls-1/l2")["attachedRoutes"] == "2"
    assert details(model, "ListenerEntry", "infra/ls-2/l1")["attachedRoutes"] == "2"
    # a listener's name need not be unique across a Gateway and its ListenerSets
    assert details(model, "Listener", "infra/edge/gw-1")["attachedRoutes"] == "3"
    assert details(model, "Gateway", "infra/edge")["attachedListenerSets"] == "2"


def test_ListenerSetRouteStatusScopedToParentRef() -> None:
    listeners = "  - {name: ls-listener, port: 80, protocol: HTTP, hostname: ls.example.com}"
    model = load_policy_text(CLASS + gateway() + listener_set("ls", listeners)
                             + http_route("gw-only", "[{name: edge, namespace: infra}]", "/g")
                             + http_route("ls-only", f"[{ls_ref('ls')}]", "/l"))
    assert [s.parent for s in model.statuses if s.name == "infra/gw-only"] == ["infra/edge"]
    assert [s.parent for s in model.statuses if s.name == "infra/ls-only"] == \
        ["ListenerSet:infra/ls"]
    assert details(model, "ListenerEntry", "infra/ls/ls-listener")["attachedRoutes"] == "1"


def test_an_xlistenerset_is_read_as_a_listenerset() -> None:
    model = load_policy_text(
        CLASS + gateway() + listener_set("x", LS_LISTENER,
                                         api="gateway.networking.x-k8s.io/v1alpha1",
                                         kind="XListenerSet")
        + http_route("r", "[{group: gateway.networking.x-k8s.io, kind: XListenerSet, name: x, "
                          "namespace: infra}]", "/x"))
    assert conditions(model, "XListenerSet", "infra/x")["Accepted"] == ("True", "Accepted")
    assert conditions(model, "HTTPRoute", "infra/r")["Accepted"] == ("True", "Accepted")
    assert served(model) == {"8081/ls.example.com": {"/x"}}


def test_a_listenerset_without_its_gateway_is_not_accepted() -> None:
    model = load_policy_text(CLASS + gateway() + listener_set(
        "lost", LS_LISTENER, parent="{name: nowhere}"))
    assert conditions(model, "ListenerSet", "infra/lost") == {
        "Accepted": ("False", "ParentNotAccepted"), "Programmed": ("False", "ParentNotProgrammed")}
    assert ports(model) == ["80"]


def test_a_listener_name_twice_in_one_listenerset_refuses_the_load() -> None:
    twice = LS_LISTENER + "\n" + LS_LISTENER.replace("8081", "8082")
    with pytest.raises(PolicyError) as error:
        # whether or not its Gateway takes it: the API server refuses such a document
        load_policy_text(CLASS + gateway(allowed=None) + listener_set("ls", twice))
    assert ('policy.yaml:26:12: ListenerSet infra/ls: spec.listeners[1].name: listener name '
            '"extra" is used twice (first at spec.listeners[0])') in str(error.value)


def test_allowed_listeners_is_checked() -> None:
    with pytest.raises(PolicyError) as error:
        load_policy_text(CLASS + gateway(allowed="Everyone"))
    assert "spec.allowedListeners.namespaces.from" in str(error.value)


def test_https_listeners_of_one_name_share_a_port_as_tls_hosts_of_their_own() -> None:
    pair = CA().issue("a.example.com", "b.example.com")
    secret = f"""apiVersion: v1
kind: Secret
metadata: {{name: cert, namespace: infra}}
type: kubernetes.io/tls
data:
  tls.crt: {base64.b64encode(pair.cert_pem).decode()}
  tls.key: {base64.b64encode(pair.key_pem).decode()}
---
"""
    https = ("  - {name: secure, port: 443, protocol: HTTPS, hostname: %s.example.com, "
             "tls: {certificateRefs: [{name: cert}]}}")
    model = load_policy_text(CLASS + secret + gateway(https % "a")
                             + listener_set("ls", https % "b")
                             + http_route("a", "[{name: edge, namespace: infra}]", "/a")
                             + http_route("b", f"[{ls_ref('ls')}]", "/b"))
    (listener,) = model.gateway("infra/edge").listeners  # type: ignore[union-attr]
    assert [host.name for host in listener.tls_hosts] == ["secure", "infra/ls/secure", "*"]
    resources = snapshot_to_dict(Translation(model).snapshot("infra/edge"))["resources"]
    chains = [chain["name"] for chain in resources["listeners"][0]["filter_chains"]]
    assert len(chains) == len(set(chains)) == 3
    tables = {config["name"]: [vhost["domains"] for vhost in config["virtual_hosts"]]
              for config in resources["routes"]}
    # the ListenerSet's table serves b and answers 421 for a (the Gateway's), and back
    assert tables["infra/edge/443/infra/ls/secure"] == [["b.example.com"], ["a.example.com"]]
    assert tables["infra/edge/443/secure"] == [["a.example.com"], ["b.example.com"]]


def test_listenerset_edits_equal_a_cold_load(tmp_path: Path) -> None:
    """Each reload of an edited folder (the loader and translation kept warm) gives what a cold
    load gives, as a ListenerSet comes, moves, is let in and out, and goes."""
    gateway_text = _gateway("[{name: http, port: 10000, protocol: HTTP}]")
    head = [CLASS_APP, gateway_text.replace("spec:\n", "spec:\n  allowedListeners: "
                                            "{namespaces: {from: Same}}\n")]
    backends = {"a": _backend("a", "127.0.1.1")}

    def app_set(port: int) -> str:
        return listener_set("more", f"  - {{name: extra, port: {port}, protocol: HTTP}}",
                            namespace="app", parent="{name: edge}")

    routes = {"r": _route("r"), "on-set": http_route(
        "on-set", "[{kind: ListenerSet, name: more}]", "/set", namespace="app").replace(
        "{name: web, namespace: infra, port: 8080}", "{name: a, port: 80}")}
    loader = PolicyLoader(tmp_path)
    state: dict = {}
    _step(tmp_path, _files(routes, backends, head), loader, state)
    edits = [
        ("a ListenerSet comes", lambda: head.append(app_set(10001))),
        ("its listener moves", lambda: head.__setitem__(2, app_set(10002))),
        ("the Gateway lets none in", lambda: head.__setitem__(1, gateway_text)),
        ("the Gateway lets them in again", lambda: head.__setitem__(1, head[1].replace(
            "spec:\n", "spec:\n  allowedListeners: {namespaces: {from: All}}\n"))),
        ("the ListenerSet goes", lambda: head.pop(2)),
    ]
    for what, edit in edits:
        edit()
        before = state["snapshot"].version
        _step(tmp_path, _files(routes, backends, head), loader, state)
        assert state["snapshot"].version != before, what
    assert ("ListenerSet", "app/more") not in {(s.kind, s.name) for s in loader.load().statuses}


def test_a_route_on_a_listenerset_not_taken_is_not_accepted_and_says_why() -> None:
    model = load_policy_text(CLASS + gateway(allowed=None) + listener_set("ls", LS_LISTENER)
                             + http_route("r", f"[{ls_ref('ls')}]", "/r"))
    status = one(model, "HTTPRoute", "infra/r")
    assert status.parent == "ListenerSet:infra/ls"
    (accepted,) = [c for c in status.conditions if c.type == "Accepted"]
    assert (accepted.status, accepted.reason) == ("False", "NoMatchingParent")
    assert accepted.message == ("ListenerSet infra/ls is not accepted: Gateway infra/edge takes "
                                "no ListenerSets (allowedListeners.namespaces.from: None)")
    assert served(model) == {}


def test_a_tcproute_attaches_to_a_listenerset_tcp_listener() -> None:
    tcp_route = f"""apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: raw, namespace: infra}}
spec:
  parentRefs: [{ls_ref('ls', 'raw')}]
  rules: [{{backendRefs: [{{name: web, port: 8080}}]}}]
---
"""
    model = load_policy_text(CLASS + gateway() + listener_set(
        "ls", "  - {name: raw, port: 9000, protocol: TCP}") + tcp_route)
    assert conditions(model, "TCPRoute", "infra/raw")["Accepted"] == ("True", "Accepted")
    (tcp,) = [lst for lst in model.gateway("infra/edge").listeners  # type: ignore[union-attr]
              if lst.name == "9000"]
    assert tcp.protocol == "tcp" and [b.service for b in tcp.backends] == ["infra/web:8080:tcp"]
    assert tcp.origin is not None and tcp.origin.kind == "ListenerSet"


def test_a_listenerset_without_listeners_refuses_the_load() -> None:
    with pytest.raises(PolicyError) as error:
        load_policy_text(CLASS + gateway(allowed=None) + listener_set("ls", "  []").replace(
            "  listeners:\n  []", "  listeners: []"))
    assert "ListenerSet infra/ls: spec.listeners: needs at least one listener" in str(error.value)


def test_a_listener_sets_udp_listener_shares_a_port_with_the_gateways_tcp_one() -> None:
    """UDP and a TCP-borne protocol on one port are two sockets (as for a Gateway's own
    listeners): no conflict. Two UDP listeners on one port carry no hostname to tell them
    apart: the later one conflicts, whatever hostnames they say."""
    text = (CLASS + gateway("  - {name: gw, port: 80, protocol: HTTP, hostname: gw.example.com}\n"
                            "  - {name: dns-tcp, port: 53, protocol: TCP}")
            + listener_set("udp", "  - {name: dns-udp, port: 53, protocol: UDP}",
                           stamp="2026-01-01T00:00:00Z")
            + listener_set("udp-again", "  - {name: dns-udp, port: 53, protocol: UDP}",
                           stamp="2026-01-02T00:00:00Z"))
    model = load_policy_text(text)
    assert conditions(model, "ListenerEntry", "infra/udp/dns-udp")["Conflicted"] == \
        ("False", "NoConflicts")
    assert conditions(model, "Listener", "infra/edge/dns-tcp")["Conflicted"] == \
        ("False", "NoConflicts")
    assert conditions(model, "ListenerEntry", "infra/udp-again/dns-udp")["Conflicted"] == \
        ("True", "HostnameConflict")
