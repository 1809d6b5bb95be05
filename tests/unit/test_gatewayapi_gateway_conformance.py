"""The upstream Gateway conformance tests whose manifests the shared copy lacks
(conformance/tests/gateway-*.go), checked through the loader: each test is named after the
upstream one and asserts the listener and Gateway statuses it expects. The inputs are
meshpilot's own, written for the same behaviour (not the upstream manifests)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import NamedTuple

import pytest
import test_incremental_gatewayapi as incremental
from test_gatewayapi import CLASS, status_of, view
from test_gatewayapi_backend_tls import ca_map, policy
from test_gatewayapi_tls_reencrypt import ENDING, ROUTES, TARGET, VALID
from tls_material import CA

from meshpilot.inputs.loader import PolicyLoader, load_policy, load_policy_text
from meshpilot.ir.model import Model
from meshpilot.local.validator import EnvoyValidator
from meshpilot.runtime.prepush import PrePush
from meshpilot.translators import Translation

INFRA, WEB, APP = "infra", "web", "apps"
_PAIR = CA("server").issue("example.org")


def _secret(name: str, namespace: str, cert: bytes = _PAIR.cert_pem,
            key: bytes = _PAIR.key_pem, kind: str = "kubernetes.io/tls") -> str:
    return f"""apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: {namespace}}}
type: {kind}
data: {{tls.crt: {base64.b64encode(cert).decode()}, tls.key: {base64.b64encode(key).decode()}}}
---
"""


BASE = CLASS + "".join(f"""apiVersion: v1
kind: Namespace
metadata: {{name: {name}}}
---
""" for name in (INFRA, WEB, APP)) + f"""apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: {INFRA}}}
spec:
  ports: [{{name: http, port: 8080}}]
---
""" + _secret("server-cert", INFRA) + _secret("certificate", WEB)


def gateway(name: str, listeners: str, extra_spec: str = "") -> str:
    """A Gateway of class mp in `infra` with `listeners` (YAML list items, indented 2)."""
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  gatewayClassName: mp
{extra_spec}  listeners:
{listeners}---
"""


def https(name: str = "https", port: int = 443, ref: str = "{name: server-cert}",
          hostname: str = "") -> str:
    host = f", hostname: {hostname}" if hostname else ""
    return (f"  - {{name: {name}, port: {port}, protocol: HTTPS{host},\n"
            f"     allowedRoutes: {{namespaces: {{from: All}}}},\n"
            f"     tls: {{certificateRefs: [{ref}]}}}}\n")


def grant(name: str, namespace: str, from_: str, to: str) -> str:
    return f"""apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  from: [{from_}]
  to: [{to}]
---
"""


class ListenerStatus(NamedTuple):
    """What the upstream ListenerStatus holds: conditions (type -> (status, reason)),
    supportedKinds and attachedRoutes."""

    conditions: dict[str, tuple[str, str]]
    kinds: list[str]
    attached: int


def listener(model: Model, gateway_name: str, name: str) -> ListenerStatus:
    (found,) = [s for s in model.statuses
                if s.kind == "Listener" and s.name == f"{INFRA}/{gateway_name}/{name}"]
    details = dict(found.details)
    return ListenerStatus({c.type: (c.status, c.reason) for c in found.conditions},
                          [k for k in details["supportedKinds"].split(",") if k],
                          int(details["attachedRoutes"]))


def test_gateway_invalid_route_kind() -> None:
    """GatewayInvalidRouteKind: an unknown route kind in allowedRoutes.kinds is ResolvedRefs
    False (InvalidRouteKinds); the kinds that are supported stay in supportedKinds."""
    model = load_policy_text(BASE + gateway("only-invalid", """\
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes: {namespaces: {from: All}, kinds: [{kind: NoSuchRoute}]}
""") + gateway("supported-and-invalid", """\
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes: {namespaces: {from: All}, kinds: [{kind: NoSuchRoute}, {kind: HTTPRoute}]}
"""))
    for name, kinds in (("only-invalid", []), ("supported-and-invalid", ["HTTPRoute"])):
        found = listener(model, name, "http")
        assert found.conditions["ResolvedRefs"] == ("False", "InvalidRouteKinds")
        assert found.kinds == kinds
        assert found.attached == 0


def test_gateway_listener_unsupported_protocol() -> None:
    """GatewayListenerUnsupportedProtocol: a listener of an unknown protocol is Accepted False
    (UnsupportedProtocol) with no supportedKinds; its Gateway is Accepted only while another
    listener is, and says ListenersNotValid either way."""
    model = load_policy_text(BASE + gateway("only-unsupported", """\
  - {name: odd, port: 1111, protocol: example.com/odd}
""") + gateway("supported-and-unsupported", """\
  - {name: http, port: 80, protocol: HTTP}
  - {name: odd, port: 1111, protocol: example.com/odd}
"""))
    assert status_of(model, "Gateway", f"{INFRA}/only-unsupported")["Accepted"] == \
        ("False", "ListenersNotValid")
    assert status_of(model, "Gateway", f"{INFRA}/supported-and-unsupported")["Accepted"] == \
        ("True", "ListenersNotValid")
    for name in ("only-unsupported", "supported-and-unsupported"):
        odd = listener(model, name, "odd")
        assert odd.conditions["Accepted"] == ("False", "UnsupportedProtocol")
        assert odd.kinds == [] and odd.attached == 0
    http = listener(model, "supported-and-unsupported", "http")
    assert http.conditions["Accepted"] == ("True", "Accepted")
    assert http.kinds == ["HTTPRoute", "GRPCRoute"]


def test_gateway_invalid_tls_configuration() -> None:
    """GatewayInvalidTLSConfiguration: a certificateRef to a missing Secret, to another group
    or kind, or to a Secret that holds no certificate is ResolvedRefs False
    (InvalidCertificateRef), and the listener is not programmed."""
    refs = {"missing": "{name: no-such-secret}",
            "group": "{group: example.com, kind: Secret, name: server-cert}",
            "kind": "{group: '', kind: ConfigMap, name: server-cert}",
            "malformed": "{name: malformed}"}
    text = BASE + _secret("malformed", INFRA, b"not a certificate\n", b"not a key\n")
    for name, ref in refs.items():
        text += gateway(f"tls-{name}", https(ref=ref))
    model = load_policy_text(text)
    for name in refs:
        found = listener(model, f"tls-{name}", "https")
        assert found.conditions["ResolvedRefs"] == ("False", "InvalidCertificateRef"), name
        assert found.conditions["Programmed"][0] == "False"
        assert found.kinds == ["HTTPRoute", "GRPCRoute"]
        assert found.attached == 0
        assert model.gateway(f"{INFRA}/tls-{name}").listeners == ()  # type: ignore[union-attr]


_CROSS = "{name: certificate, namespace: web}"
_FROM_GATEWAY = f"{{group: gateway.networking.k8s.io, kind: Gateway, namespace: {INFRA}}}"


def _refused_by_grants(grants: str) -> dict[str, object]:
    model = load_policy_text(BASE + gateway("cross", https(ref=_CROSS)) + grants)
    return listener(model, "cross", "https")


def test_gateway_secret_missing_reference_grant() -> None:
    """GatewaySecretMissingReferenceGrant: a Secret of another namespace with no
    ReferenceGrant there is ResolvedRefs False (RefNotPermitted)."""
    found = _refused_by_grants("")
    assert found.conditions["ResolvedRefs"] == ("False", "RefNotPermitted")
    assert found.conditions["Programmed"][0] == "False"
    assert found.kinds == ["HTTPRoute", "GRPCRoute"]


def test_gateway_secret_invalid_reference_grant() -> None:
    """GatewaySecretInvalidReferenceGrant: grants that each miss in one respect (in the
    wrong namespace; from another group, kind or namespace; to another group, kind or name)
    permit nothing."""
    secret = "{group: '', kind: Secret, name: certificate}"
    grants = "".join((
        grant("elsewhere", APP, _FROM_GATEWAY, secret),
        grant("from-group", WEB, f"{{group: example.com, kind: Gateway, namespace: {INFRA}}}",
              secret),
        grant("from-kind", WEB, "{group: gateway.networking.k8s.io, kind: HTTPRoute, "
                                f"namespace: {INFRA}}}", secret),
        grant("from-namespace", WEB, "{group: gateway.networking.k8s.io, kind: Gateway, "
                                     f"namespace: {APP}}}", secret),
        grant("to-group", WEB, _FROM_GATEWAY, "{group: example.com, kind: Secret, "
                                              "name: certificate}"),
        grant("to-kind", WEB, _FROM_GATEWAY, "{group: '', kind: Service, name: certificate}"),
        grant("to-name", WEB, _FROM_GATEWAY, "{group: '', kind: Secret, name: other}")))
    found = _refused_by_grants(grants)
    assert found.conditions["ResolvedRefs"] == ("False", "RefNotPermitted")
    assert found.attached == 0


def test_gateway_secret_reference_grant_all_in_namespace() -> None:
    """GatewaySecretReferenceGrantAllInNamespace: a grant to every Secret of the namespace
    (no name) lets the listener resolve its certificate and be programmed."""
    model = load_policy_text(BASE + gateway("cross", https(ref=_CROSS))
                             + grant("all", WEB, _FROM_GATEWAY, "{group: '', kind: Secret}"))
    found = listener(model, "cross", "https")
    assert found.conditions["ResolvedRefs"] == ("True", "ResolvedRefs")
    assert found.conditions["Programmed"] == ("True", "Programmed")
    (served,) = model.gateway(f"{INFRA}/cross").listeners  # type: ignore[union-attr]
    assert served.tls.certificates[0].certificate_chain == _PAIR.cert_pem  # type: ignore[union-attr]


def test_gateway_secret_reference_grant_specific() -> None:
    """GatewaySecretReferenceGrantSpecific: a grant naming the very Secret does the same."""
    model = load_policy_text(BASE + gateway("cross", https(ref=_CROSS)) + grant(
        "one", WEB, _FROM_GATEWAY, "{group: '', kind: Secret, name: certificate}"))
    found = listener(model, "cross", "https")
    assert found.conditions["ResolvedRefs"] == ("True", "ResolvedRefs")
    assert found.conditions["Programmed"] == ("True", "Programmed")


def _frontend(default: str, per_port: str) -> str:
    return (f"  tls:\n    frontend:\n      default: {{validation: {{caCertificateRefs: "
            f"[{default}]}}}}\n      perPort:\n{per_port}")


def _per_port(port: int, ref: str) -> str:
    return f"      - {{port: {port}, tls: {{validation: {{caCertificateRefs: [{ref}]}}}}}}\n"


def test_gateway_invalid_frontend_client_certificate_validation() -> None:
    """GatewayInvalidFrontendClientCertificateValidation: a port whose client CA is missing,
    not a ConfigMap or in another namespace without a grant is ResolvedRefs False
    (InvalidCACertificateRef, InvalidCACertificateKind, RefNotPermitted), Accepted False
    (NoValidCACertificate) and not programmed; the port with a valid CA is unaffected."""
    frontend = _frontend("{group: '', kind: ConfigMap, name: client-ca}", "".join((
        _per_port(7443, "{group: '', kind: ConfigMap, name: no-such-map}"),
        _per_port(8443, "{group: '', kind: Service, name: echo}"),
        _per_port(6443, f"{{group: '', kind: ConfigMap, name: client-ca, namespace: {WEB}}}"))))
    listeners = "".join((https(), https("missing", 7443, hostname="a.example.org"),
                         https("kind", 8443, hostname="b.example.org"),
                         https("grant", 6443, hostname="c.example.org")))
    client_ca = CA("clients").pem
    model = load_policy_text(BASE + gateway("frontend", listeners, frontend)
                             + ca_map(client_ca, "client-ca")
                             + ca_map(client_ca, "client-ca").replace("namespace: infra", f"namespace: {WEB}"))
    good = listener(model, "frontend", "https").conditions
    assert (good["ResolvedRefs"][0], good["Accepted"][0], good["Programmed"][0]) == \
        ("True", "True", "True")
    for name, reason in (("missing", "InvalidCACertificateRef"),
                         ("kind", "InvalidCACertificateKind"), ("grant", "RefNotPermitted")):
        found = listener(model, "frontend", name).conditions
        assert found["ResolvedRefs"] == ("False", reason), name
        assert found["Accepted"] == ("False", "NoValidCACertificate"), name
        assert found["Programmed"][0] == "False"
    assert [lst.port for lst in model.gateway(f"{INFRA}/frontend").listeners] == [443]  # type: ignore[union-attr]


def test_gateway_frontend_invalid_default_client_certificate_validation() -> None:
    """GatewayFrontendInvalidDefaultClientCertificateValidation: an unresolvable `default`
    takes down the HTTPS listener (NoValidCACertificate) but not the HTTP one, which a
    perPort entry for its port does not touch (client certificates are a TLS matter)."""
    frontend = _frontend("{group: '', kind: ConfigMap, name: no-such-map}",
                         _per_port(80, "{group: '', kind: ConfigMap, name: client-ca}"))
    listeners = https() + "  - {name: http, port: 80, protocol: HTTP}\n"
    model = load_policy_text(BASE + gateway("frontend", listeners, frontend)
                             + ca_map(CA("clients").pem, "client-ca"))
    http = listener(model, "frontend", "http").conditions
    assert (http["ResolvedRefs"][0], http["Accepted"][0], http["Programmed"][0]) == \
        ("True", "True", "True")
    secure = listener(model, "frontend", "https").conditions
    assert secure["ResolvedRefs"] == ("False", "InvalidCACertificateRef")
    assert secure["Accepted"] == ("False", "NoValidCACertificate")
    assert secure["Programmed"][0] == "False"
    assert [lst.port for lst in model.gateway(f"{INFRA}/frontend").listeners] == [80]  # type: ignore[union-attr]


def test_gateway_invalid_parameters_ref() -> None:
    """GatewayInvalidParametersRef: spec.infrastructure.parametersRef to an object meshpilot
    cannot read is Accepted False (InvalidParameters); nothing of the Gateway is served."""
    model = load_policy_text(BASE + gateway(
        "params", "  - {name: http, port: 80, protocol: HTTP}\n",
        "  infrastructure:\n    parametersRef: {group: example.com, kind: Params, name: p}\n"))
    assert status_of(model, "Gateway", f"{INFRA}/params")["Accepted"] == \
        ("False", "InvalidParameters")
    assert model.gateway(f"{INFRA}/params") is None


def test_gateway_modify_listeners(tmp_path: Path) -> None:
    """GatewayModifyListeners: a listener added to a Gateway is served and counts the route
    attached to it; one removed is gone from the Gateway's listeners, statuses and model."""
    route = f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: echo, port: 8080}}]}}]
---
"""
    http = ("  - {name: http, port: 80, protocol: HTTP, hostname: data.example.org,\n"
            "     allowedRoutes: {namespaces: {from: All}}}\n")
    secure = https(hostname="secure.example.org")
    (tmp_path / "base.yaml").write_text(BASE + route)
    (tmp_path / "gateway.yaml").write_text(gateway("edge", secure))
    loader = PolicyLoader(tmp_path)
    before = loader.load()
    assert [lst.port for lst in before.gateway(f"{INFRA}/edge").listeners] == [443]  # type: ignore[union-attr]
    (tmp_path / "gateway.yaml").write_text(gateway("edge", secure + http))
    added = loader.load()
    assert sorted(lst.port for lst in added.gateway(f"{INFRA}/edge").listeners) == [80, 443]  # type: ignore[union-attr]
    for name in ("https", "http"):
        found = listener(added, "edge", name)
        assert found.conditions["Accepted"][0] == "True"
        assert found.conditions["ResolvedRefs"][0] == "True"
        assert found.kinds == ["HTTPRoute", "GRPCRoute"]
        assert found.attached == 1, name
    (tmp_path / "gateway.yaml").write_text(gateway("edge", http))
    removed = loader.load()
    assert [lst.port for lst in removed.gateway(f"{INFRA}/edge").listeners] == [80]  # type: ignore[union-attr]
    assert [s.name for s in removed.statuses if s.kind == "Listener"] == [f"{INFRA}/edge/http"]
    assert listener(removed, "edge", "http").attached == 1


def _backend_client(ref: str) -> str:
    return f"  tls:\n    backend:\n      clientCertificateRef: {ref}\n"


_HTTP = "  - {name: http, port: 80, protocol: HTTP}\n"


def test_gateway_invalid_tls_backend_configuration() -> None:
    """GatewayInvalidTLSBackendConfiguration: a tls.backend.clientCertificateRef to a missing
    Secret, another group or kind, a Secret with no certificate (InvalidClientCertificateRef)
    or one of another namespace without a grant (RefNotPermitted) is the Gateway's
    ResolvedRefs False; the Gateway stays Accepted."""
    refs = {"missing": ("{name: no-such-secret}", "InvalidClientCertificateRef"),
            "group": ("{group: example.com, kind: Secret, name: server-cert}",
                      "InvalidClientCertificateRef"),
            "kind": ("{group: '', kind: ConfigMap, name: server-cert}",
                     "InvalidClientCertificateRef"),
            "malformed": ("{name: empty}", "InvalidClientCertificateRef"),
            "grant": (_CROSS, "RefNotPermitted")}
    text = BASE + f"""apiVersion: v1
kind: Secret
metadata: {{name: empty, namespace: {INFRA}}}
type: Opaque
data: {{}}
---
"""
    for name, (ref, _) in refs.items():
        text += gateway(f"client-{name}", _HTTP, _backend_client(ref))
    model = load_policy_text(text)
    for name, (_, reason) in refs.items():
        found = status_of(model, "Gateway", f"{INFRA}/client-{name}")
        assert found["ResolvedRefs"] == ("False", reason), name
        assert found["Accepted"] == ("True", "Accepted"), name
    plain = load_policy_text(BASE + gateway("plain", _HTTP))
    assert "ResolvedRefs" not in status_of(plain, "Gateway", f"{INFRA}/plain")


_TLS_BACKEND = f"""apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: echo-tls, namespace: {INFRA}}}
spec:
  targetRefs: [{{group: '', kind: Service, name: echo}}]
  validation:
    caCertificateRefs: [{{group: '', kind: ConfigMap, name: backend-ca}}]
    hostname: echo.example.org
---
"""


def _route_to_echo(name: str, parent: str) -> str:
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: {parent}}}]
  rules:
  - backendRefs: [{{name: echo, port: 8080}}]
    filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: echo, port: 8080}}}}}}]
---
"""


def test_gateway_tls_backend_client_certificate() -> None:
    """GatewayTLSBackendClientCertificate (the model; traffic:
    tests/e2e/test_gatewayapi_backend_client_traffic.py): a Gateway with a client certificate
    sends to its own copy of each TLS Service (backends and mirrors), which presents it; a
    Gateway without one keeps the shared Service, which presents none."""
    client = CA("gateway clients").issue("gateway.example.org")
    text = (BASE + ca_map(CA("backends").pem, "backend-ca") + _TLS_BACKEND
            + _secret("client", INFRA, client.cert_pem, client.key_pem)
            + gateway("with-client", _HTTP, _backend_client("{name: client}"))
            + gateway("without", _HTTP)
            + _route_to_echo("a", "with-client") + _route_to_echo("b", "without"))
    model = load_policy_text(text)
    assert status_of(model, "Gateway", f"{INFRA}/with-client")["ResolvedRefs"] == \
        ("True", "ResolvedRefs")
    copy = f"{INFRA}/echo:8080:client:{INFRA}/with-client"
    mine = view(model, f"{INFRA}/with-client")
    (entry,) = [r for c in mine["routes"] for v in c["virtual_hosts"] for r in v["routes"]]
    assert entry["route"]["cluster"] == copy
    assert [m["cluster"] for m in entry["route"]["request_mirror_policies"]] == [copy]
    (cluster,) = [c for c in mine["clusters"] if c["name"] == copy]
    context = cluster["transport_socket"]["typed_config"]
    (sds,) = context["common_tls_context"]["tls_certificate_sds_secret_configs"]
    (secret,) = [s for s in mine["secrets"] if s["name"] == sds["name"]]
    assert secret["tls_certificate"]["certificate_chain"]["inline_string"] == \
        client.cert_pem.decode()
    assert context["sni"] == "echo.example.org"
    theirs = view(model, f"{INFRA}/without")
    (shared,) = [c for c in theirs["clusters"] if c["name"] == f"{INFRA}/echo:8080"]
    assert "tls_certificate_sds_secret_configs" not in \
        shared["transport_socket"]["typed_config"]["common_tls_context"]
    assert all(c["name"] != copy for c in theirs["clusters"])


@pytest.mark.envoy
def test_gateway_name_maximum_length() -> None:
    """GatewayNameMaximumLength: a Gateway named with 253 characters (the most a name may
    have) is accepted and served, and a real Envoy (`--mode validate`) takes what it makes
    (listener, route configuration and stat names carry the name)."""
    name = "long-" + "a" * 248
    model = load_policy_text(BASE + gateway(name, _HTTP) + _route_to_echo("r", name))
    assert status_of(model, "Gateway", f"{INFRA}/{name}") == {
        "Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
    validator = EnvoyValidator()
    try:
        snapshot = Translation(model).snapshot(f"{INFRA}/{name}")
        (listener_name,) = [r["name"] for r in view(model, f"{INFRA}/{name}")["listeners"]]
        assert listener_name == f"{INFRA}/{name}/80"
        assert PrePush(validator).issues(model, [(None, snapshot)]) == ()
    finally:
        validator.close()


def test_tls_sent_again_behind_a_terminating_listener_presents_the_client_certificate() -> None:
    """GatewayTLSBackendClientCertificate behind a TLS listener that ends TLS (GEP-4274): the
    terminated SNI's TLS to the backend presents the Gateway's certificate (its own `:tls`
    copy); the passthrough SNI to the same port stays plain `:tcp`, nothing wrapped again."""
    client = CA("gateway clients").issue("gateway.example.org")
    text = ENDING.replace("  gatewayClassName: mp\n", "  gatewayClassName: mp\n"
                          + _backend_client("{name: client}"), 1)
    model = load_policy_text(text + ROUTES + ca_map(CA().pem) + policy(VALID, target=TARGET)
                             + _secret("client", INFRA, client.cert_pem, client.key_pem))
    chains = {c["filter_chain_match"]["server_names"][0]: c["filters"][0]["typed_config"]
              for lst in view(model)["listeners"] if lst["name"] == "infra/edge/443"
              for c in lst["filter_chains"]}
    copy = "infra/secure:443:tls:client:infra/edge"
    assert chains["abc.example.com"]["cluster"] == copy
    assert chains["foo.example.com"]["cluster"] == "infra/secure:443:tcp"
    (cluster,) = [c for c in view(model)["clusters"] if c["name"] == copy]
    assert cluster["transport_socket"]["typed_config"]["common_tls_context"][
        "tls_certificate_sds_secret_configs"][0]["name"] == f"{copy}/client-cert"


def test_edits_under_a_client_certificate_equal_cold_loads(tmp_path: Path) -> None:
    """The Gateway's copies of TLS Services follow edits as a cold load makes them (the
    loader and translation kept warm): a route's split, a backend's endpoint, the client
    certificate's Secret going and coming back."""
    client = CA("gateway clients").issue("gateway.example.org")
    secret = _secret("client", "app", client.cert_pem, client.key_pem)
    gateway_text = incremental._gateway().replace(
        "  gatewayClassName: meshpilot\n",
        "  gatewayClassName: meshpilot\n" + _backend_client("{name: client}"))
    tls = (ca_map(CA("backends").pem, "backend-ca").replace("namespace: infra", "namespace: app")
           + _TLS_BACKEND.replace(f"namespace: {INFRA}", "namespace: app")
           .replace("name: echo}", "name: shared}"))
    head = [incremental.CLASS, gateway_text, tls.removesuffix("---\n"),
            secret.removesuffix("---\n")]
    routes = {"r0": incremental._route("r0")}
    backends = {"r0": incremental._backend("r0-a", "127.0.1.1"),
                "shared": incremental._backend("shared", "127.0.2.1")}
    loader, state = PolicyLoader(tmp_path), {}  # type: ignore[var-annotated]
    copy = "app/shared:80:client:app/edge"

    def step(present: bool) -> None:
        incremental._step(tmp_path, incremental._files(routes, backends, head), loader, state)
        clusters = view(load_policy(tmp_path), incremental.VIEW)["clusters"]  # = the warm one
        assert any(c["name"] == copy for c in clusters) is present

    step(True)
    for edit, present in ((lambda: routes.update(r0=incremental._route("r0", 70)), True),
                          (lambda: backends.update(
                              shared=incremental._backend("shared", "127.0.2.9")), True),
                          (lambda: head.remove(head[3]), False),
                          (lambda: head.append(secret.removesuffix("---\n")), True)):
        edit()
        step(present)
