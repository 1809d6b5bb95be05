"""ListenerSet end to end (upstream's ListenerSetHTTPRouting, on meshpilot's own input): a
Gateway takes the ListenerSets of its own namespace (allowedListeners from: Same), so a
ListenerSet's listener on a port of its own is bound by a real Envoy and the route attached to
it (a parentRef of kind ListenerSet) answers there, while a route attached to the Gateway does
not; a ListenerSet of another namespace is not taken and its port is not bound, until the
Gateway is edited to take ListenerSets of every namespace. On an HTTPS port the Gateway and a
ListenerSet share, with listeners of one name, each listener's SNI picks its own certificate
and routes, and the other's host is misdirected (421)."""

from __future__ import annotations

import base64
import json
import socket
import ssl
from collections.abc import Iterator
from http.client import HTTPConnection, HTTPSConnection

import pytest
from gatewayapi_conformance import EchoBackend
from support import (
    Served,
    eventually,
    gateway_class_template,
    http_get,
    served_policy,
    write_atomically,
)
from tls_material import CA

pytestmark = pytest.mark.envoy

POLICY = gateway_class_template() + """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: mp
  allowedListeners: {{namespaces: {{from: @FROM@}}}}
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {{name: extra, namespace: infra}}
spec:
  parentRef: {{name: edge}}
  listeners: [{{name: http, port: {ls_port}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {{name: elsewhere, namespace: team}}
spec:
  parentRef: {{name: edge, namespace: infra}}
  listeners: [{{name: http, port: {other_port}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: on-gateway, namespace: infra}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{matches: [{{path: {{type: PathPrefix, value: /gw}}}}],
           backendRefs: [{{name: app-gw, port: 8080}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: on-listenerset, namespace: infra}}
spec:
  parentRefs: [{{kind: ListenerSet, name: extra, sectionName: http}}]
  rules: [{{matches: [{{path: {{type: PathPrefix, value: /ls}}}}],
           backendRefs: [{{name: app-ls, port: 8080}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: on-elsewhere, namespace: team}}
spec:
  parentRefs: [{{kind: ListenerSet, name: elsewhere}}]
  rules: [{{backendRefs: [{{name: app-ls, namespace: infra, port: 8080}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: team-routes, namespace: infra}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: team}}]
  to: [{{group: "", kind: Service}}]
---
""" + "".join(f"""apiVersion: v1
kind: Service
metadata: {{{{name: {name}, namespace: infra}}}}
spec: {{{{ports: [{{{{port: 8080}}}}]}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{{{name: {name}-1, namespace: infra, labels: {{{{kubernetes.io/service-name: {name}}}}}}}}}
addressType: IPv4
ports: [{{{{port: {{{name.replace("-", "_")}}}}}}}]
endpoints: [{{{{addresses: [127.0.0.1]}}}}]
---
""" for name in ("app-gw", "app-ls"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("listenerset-e2e")
    servers = {"app_gw": EchoBackend("infra", "app-gw"), "app_ls": EchoBackend("infra", "app-ls")}
    with served_policy(work, "gateway.yaml", POLICY.replace("@FROM@", "Same"), servers,
                       free_ports=("port", "ls_port", "other_port"),
                       envoys={"infra/edge": "edge"}) as running:
        yield running


def answer(port: int, path: str) -> tuple[int, str | None]:
    """(status, the Service that answered, None: not a backend)."""
    status, _, body = http_get(f"http://127.0.0.1:{port}{path}")
    return status, json.loads(body)["service"] if status == 200 else None


def bound(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_listenerset_listener_serves_its_own_route_on_its_own_port(served: Served) -> None:
    ls_port, port = served.ports["ls_port"], served.ports["port"]
    eventually(lambda: answer(ls_port, "/ls") == (200, "app-ls"), timeout=30,
               what="the ListenerSet's route on its listener's port")
    assert answer(port, "/gw") == (200, "app-gw")
    # a Gateway parentRef reaches the Gateway's own listeners only, and back
    assert answer(ls_port, "/gw")[0] == 404
    assert answer(port, "/ls")[0] == 404


def test_the_status_says_what_the_gateway_took(served: Served) -> None:
    objects = {(o["kind"], o["name"]): o for o in served.mp.get_json("/debug/status")[
        "policy"]["objects"]}
    taken = {c["type"]: c["reason"] for c in objects[("ListenerSet", "infra/extra")]["conditions"]}
    assert taken == {"Accepted": "Accepted", "Programmed": "Programmed"}
    refused = objects[("ListenerSet", "team/elsewhere")]["conditions"]
    assert {c["reason"] for c in refused} == {"NotAllowed"}
    assert objects[("ListenerEntry", "infra/extra/http")]["attachedRoutes"] == "1"
    assert objects[("Gateway", "infra/edge")]["attachedListenerSets"] == "1"


def test_a_listenerset_not_allowed_is_not_bound_until_the_gateway_takes_it(
        served: Served) -> None:
    other = served.ports["other_port"]
    eventually(lambda: answer(served.ports["ls_port"], "/ls") == (200, "app-ls"), timeout=30,
               what="the policy served")
    assert not bound(other)
    text = POLICY.replace("@FROM@", "All").format(**served.ports)
    write_atomically(served.policy / "gateway.yaml", text)
    eventually(lambda: bound(other) and answer(other, "/") == (200, "app-ls"), timeout=30,
               what="the other namespace's ListenerSet served once the Gateway takes it")
    assert answer(served.ports["ls_port"], "/ls") == (200, "app-ls")


HTTPS = gateway_class_template("443:{port}") + """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: mp
  allowedListeners: {{namespaces: {{from: Same}}}}
  listeners:
  - {{name: secure, port: 443, protocol: HTTPS, hostname: a.example.com,
     tls: {{certificateRefs: [{{name: cert-a}}]}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {{name: extra, namespace: infra}}
spec:
  parentRef: {{name: edge}}
  listeners:
  - {{name: secure, port: 443, protocol: HTTPS, hostname: b.example.com,
     tls: {{certificateRefs: [{{name: cert-b}}]}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: on-gateway, namespace: infra}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: app-gw, port: 8080}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: on-listenerset, namespace: infra}}
spec:
  parentRefs: [{{kind: ListenerSet, name: extra}}]
  rules: [{{backendRefs: [{{name: app-ls, port: 8080}}]}}]
---
""" + "".join(f"""apiVersion: v1
kind: Secret
metadata: {{{{name: cert-{x}, namespace: infra}}}}
type: kubernetes.io/tls
data: {{{{tls.crt: {{cert_{x}}}, tls.key: {{key_{x}}}}}}}
---
""" for x in "ab") + POLICY[POLICY.index("apiVersion: v1\nkind: Service"):]


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, ssl.SSLContext]]:
    work = tmp_path_factory.mktemp("listenerset-https-e2e")
    ca = CA()
    pairs = {x: ca.issue(f"{x}.example.com") for x in "ab"}
    values = {f"{part}_{x}": base64.b64encode(getattr(pair, f"{part}_pem")).decode()
              for x, pair in pairs.items() for part in ("cert", "key")}
    servers = {"app_gw": EchoBackend("infra", "app-gw"), "app_ls": EchoBackend("infra", "app-ls")}
    with served_policy(work, "gateway.yaml", HTTPS, servers, envoys={"infra/edge": "edge"},
                       **values) as running:
        yield running.ports["port"], ssl.create_default_context(cadata=ca.pem.decode())


class _Sni(HTTPSConnection):
    """HTTPS to 127.0.0.1 with the SNI `server_name`, whatever Host is sent."""

    def __init__(self, port: int, context: ssl.SSLContext, server_name: str):
        super().__init__("127.0.0.1", port, timeout=10, context=context)
        self.server_name = server_name

    def connect(self) -> None:
        HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(  # type: ignore[attr-defined]
            self.sock, server_hostname=self.server_name)


def https_answer(https: tuple[int, ssl.SSLContext], sni: str, host: str,
                 ) -> tuple[int, str | None, str]:
    """(status, the Service that answered or None, the common name of the certificate shown)."""
    connection = _Sni(*https, sni)
    try:
        connection.request("GET", "/", headers={"Host": host})
        response = connection.getresponse()
        body = response.read()
        peer = connection.sock.getpeercert()  # type: ignore[union-attr]
        shown = dict(item[0] for item in peer["subject"])["commonName"]
        return response.status, json.loads(body)["service"] if response.status == 200 \
            else None, shown
    finally:
        connection.close()


def test_a_shared_https_port_gives_each_listener_its_sni(
        https: tuple[int, ssl.SSLContext]) -> None:
    eventually(lambda: https_answer(https, "b.example.com", "b.example.com")[0] == 200,
               timeout=30, what="the ListenerSet's HTTPS listener to serve")
    assert https_answer(https, "b.example.com", "b.example.com") == \
        (200, "app-ls", "b.example.com")
    assert https_answer(https, "a.example.com", "a.example.com") == \
        (200, "app-gw", "a.example.com")
    # the other listener's host, on a connection its SNI made: misdirected, never routed
    assert https_answer(https, "a.example.com", "b.example.com")[:2] == (421, None)
    assert https_answer(https, "b.example.com", "a.example.com")[:2] == (421, None)
