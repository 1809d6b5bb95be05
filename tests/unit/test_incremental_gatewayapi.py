"""Gateway API edits (issue 12/18): each reload of an edited folder, with the loader and the
translation kept warm, gives the model, statuses and snapshot bytes of a cold load."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_incremental import _assert_same

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import PolicyLoader, load_policy
from meshpilot.translators import Translation

VIEW = "app/edge"
CLASS = """apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: meshpilot}
spec: {controllerName: meshpilot.io/gateway-controller}
"""


def _gateway(listeners: str = "[{name: http, port: 10000, protocol: HTTP}]") -> str:
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: app}}
spec:
  gatewayClassName: meshpilot
  listeners: {listeners}
"""


def _backend(name: str, address: str, port: int = 80, namespace: str = "app") -> str:
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec: {{ports: [{{name: http, port: {port}, targetPort: 8000}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: 8000}}]
endpoints: [{{addresses: ['{address}']}}]
"""


def _route(name: str, weight: int = 90, namespace_b: str = "app") -> str:
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: app}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [{name}.example.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs:
    - {{name: {name}-a, port: 80, weight: {weight}}}
    - {{name: shared, namespace: {namespace_b}, port: 80, weight: {100 - weight}}}
    timeouts: {{request: 2s}}
"""


GRANT = """apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-app, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: app}]
  to: [{group: '', kind: Service}]
"""


def _files(routes: dict[str, str], backends: dict[str, str], head: list[str]) -> dict[str, str]:
    return {"head.yaml": "---\n".join(head),
            "backends.yaml": "---\n".join(backends.values()),
            "routes.yaml": "---\n".join(routes.values())}


def _step(root: Path, files: dict[str, str], loader: PolicyLoader, state: dict,
          format_edit: bool = True, patched: bool = True) -> None:
    for name, text in files.items():
        (root / name).write_text(text)
    cold_model = load_policy(root)
    earlier = loader._cache._model  # the last load's, whichever test step made it
    model = loader.load()
    # An edit of Gateway API documents only compiles them as cached, without the checks
    # across documents; the first load (and one touching a native document) goes the way.
    assert loader.format_edit is (format_edit and "translation" in state)
    # Such an edit patches the last model by what the compile gave anew (`modelpatch.py`).
    assert loader._cache.model_patched is (loader.format_edit and patched)
    assert model == cold_model
    assert model.statuses == cold_model.statuses
    assert model.warnings == cold_model.warnings
    assert (model._services, model._gateways) == (cold_model._services, cold_model._gateways)
    if loader.format_edit:  # what changed, exactly: the names whose part is another object
        changes = loader.changes
        assert changes is not None and changes.follows(earlier, model)
        for kind in ("services", "gateways", "routes"):
            old = {part.name: part for part in getattr(earlier, kind)}
            new = {part.name: part for part in getattr(model, kind)}
            assert getattr(changes, kind) == {
                name for name in old.keys() | new.keys() if old.get(name) is not new.get(name)}
    translation = Translation(model, previous=state.get("translation"), changes=loader.changes)
    snapshot = translation.snapshot(VIEW, previous=state.get("snapshot"))
    _assert_same(snapshot, Translation(cold_model).snapshot(VIEW))
    state.update(translation=translation, snapshot=snapshot)


def test_gateway_api_edits_equal_cold(tmp_path: Path) -> None:
    loader = PolicyLoader(tmp_path)
    state: dict = {}
    head = [CLASS, _gateway(), GRANT]
    routes = {f"r{i}": _route(f"r{i}", namespace_b="other" if i % 2 else "app")
              for i in range(6)}
    backends = {f"r{i}": _backend(f"r{i}-a", f"127.0.1.{i}") for i in range(6)}
    backends["shared"] = _backend("shared", "127.0.2.1")
    backends["shared-other"] = _backend("shared", "127.0.3.1", namespace="other")
    _step(tmp_path, _files(routes, backends, head), loader, state)
    edits = [
        ("a route's split", lambda: routes.update(r2=_route("r2", 70))),
        ("a backend's endpoint", lambda: backends.update(r3=_backend("r3-a", "127.0.1.99"))),
        ("a backend Service's port", lambda: backends.update(r4=_backend("r4-a", "127.0.1.4",
                                                                         port=81))),
        ("the ReferenceGrant goes", lambda: head.remove(GRANT)),
        ("the ReferenceGrant comes back", lambda: head.append(GRANT)),
        ("a Gateway listener", lambda: head.__setitem__(1, _gateway(
            "[{name: http, port: 10001, protocol: HTTP, hostname: '*.example.com'}]"))),
        ("a route is added", lambda: (routes.update(r9=_route("r9")),
                                      backends.update(r9=_backend("r9-a", "127.0.1.9")))),
        ("a route is removed", lambda: routes.pop("r1")),
        ("a cross-namespace backend's endpoint",
         lambda: backends.update({"shared-other": _backend("shared", "127.0.3.7",
                                                           namespace="other")})),
    ]
    for what, edit in edits:
        edit()
        before = state["snapshot"].version
        _step(tmp_path, _files(routes, backends, head), loader, state)
        assert state["snapshot"].version != before, what


NATIVE_SERVICE = """kind: Service
name: fallback
endpoints: [{address: '127.0.4.1:8000'}]
"""


def _refused(root: Path, loader: PolicyLoader) -> str:
    with pytest.raises(PolicyError) as cold:
        load_policy(root)
    with pytest.raises(PolicyError) as warm:
        loader.load()
    assert str(warm.value) == str(cold.value)
    return str(cold.value)


def test_gateway_api_edit_refused_as_cold_then_served_again(tmp_path: Path) -> None:
    """An edit the checks across documents would refuse (a Service named like the Gateway,
    a route defined twice) is refused as a cold load words it, next to a native Service; the
    edit undone serves again, and an edit of the native Service goes the whole way."""
    loader = PolicyLoader(tmp_path)
    state: dict = {}
    head = [CLASS, _gateway()]
    routes = {"r0": _route("r0"), "r1": _route("r1")}
    backends = {"r0": _backend("r0-a", "127.0.1.1"), "r1": _backend("r1-a", "127.0.1.2"),
                "shared": _backend("shared", "127.0.2.1")}
    (tmp_path / "native.yaml").write_text(NATIVE_SERVICE)
    _step(tmp_path, _files(routes, backends, head), loader, state)
    backends["edge"] = _backend("edge", "127.0.1.3")  # Service app/edge, Gateway app/edge
    _write(tmp_path, _files(routes, backends, head))
    assert "cannot share a name" in _refused(tmp_path, loader)
    del backends["edge"]
    _step(tmp_path, _files(routes, backends, head), loader, state, format_edit=False)
    routes["r0"] = _route("r0", 60)
    _step(tmp_path, _files(routes, backends, head), loader, state)
    (tmp_path / "more.yaml").write_text(_route("r1", 50))  # HTTPRoute app/r1 twice
    assert "another HTTPRoute is named" in _refused(tmp_path, loader)
    (tmp_path / "more.yaml").unlink()
    _step(tmp_path, _files(routes, backends, head), loader, state, format_edit=False)
    (tmp_path / "native.yaml").write_text(NATIVE_SERVICE.replace("4.1", "4.2"))
    _step(tmp_path, _files(routes, backends, head), loader, state, format_edit=False)
    routes["r1"] = _route("r1", 40)
    _step(tmp_path, _files(routes, backends, head), loader, state)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).write_text(text)


def _shared_route(name: str, stamp: str, hostnames: str, prefix: str = "/",
                  parent: str = "edge", kind: str = "HTTPRoute", weight: int = 90) -> str:
    match = "" if kind == "GRPCRoute" else \
        f"\n  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n   "
    rule = match if match else "\n  -"
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: {kind}
metadata: {{name: {name}, namespace: app, creationTimestamp: '{stamp}'}}
spec:
  parentRefs: [{{name: {parent}}}]
  hostnames: {hostnames}
  rules:{rule} backendRefs:
    - {{name: shared, port: 80, weight: {weight}}}
    - {{name: {name}-a, port: 80, weight: {100 - weight}}}
"""


def test_gateway_api_route_edits_keep_precedence_and_statuses(tmp_path: Path,
                                                              monkeypatch) -> None:
    """Edits a compile patches by the routes they touch (`_patched_http_phase`): routes on
    one hostname, a wildcard covering it, ties broken by creation time then name; a route
    moving hostnames, failing to attach (its status, the listener's attachedRoutes), a
    GRPCRoute; each equal to a cold load, and each a patched compile."""
    from meshpilot.inputs.gatewayapi import compile as gateway_compile

    patched: list[int] = []
    phase = gateway_compile._Compiler._patched_http_phase

    def counted(self, kept):  # type: ignore[no-untyped-def]
        patched.append(1)
        return phase(self, kept)

    monkeypatch.setattr(gateway_compile._Compiler, "_patched_http_phase", counted)
    loader = PolicyLoader(tmp_path)
    state: dict = {}
    head = [CLASS, _gateway()]
    stamp, later = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"
    routes = {
        "old": _shared_route("old", stamp, "[a.example.com]"),
        "tie": _shared_route("tie", later, "[a.example.com]"),
        "new": _shared_route("new", later, "[a.example.com, b.example.com]", "/new"),
        "wild": _shared_route("wild", stamp, "['*.example.com']"),
        "grpc": _shared_route("grpc", stamp, "[g.example.com]", kind="GRPCRoute"),
    }
    backends = {name: _backend(f"{name}-a", f"127.0.1.{i}") for i, name in enumerate(routes)}
    backends["shared"] = _backend("shared", "127.0.2.1")
    _step(tmp_path, _files(routes, backends, head), loader, state)
    edits = [
        ("the older of two routes on a host", lambda: routes.update(
            old=_shared_route("old", stamp, "[a.example.com]", weight=70))),
        ("a tie on time, broken by name", lambda: routes.update(
            tie=_shared_route("tie", stamp, "[a.example.com]", weight=60))),
        ("the wildcard covering the hosts", lambda: routes.update(
            wild=_shared_route("wild", later, "['*.example.com']", "/w"))),
        ("a route moves to another host", lambda: routes.update(
            new=_shared_route("new", later, "[c.example.com]", "/new"))),
        ("a route no listener takes", lambda: routes.update(
            tie=_shared_route("tie", stamp, "[a.example.com]", parent="nowhere"))),
        ("it attaches again", lambda: routes.update(
            tie=_shared_route("tie", stamp, "[a.example.com]", weight=50))),
        ("a GRPCRoute", lambda: routes.update(
            grpc=_shared_route("grpc", stamp, "[g.example.com]", kind="GRPCRoute",
                               weight=40))),
        ("the shared backend", lambda: backends.update(shared=_backend("shared", "127.0.2.9"))),
        ("a route goes", lambda: routes.pop("old")),
        ("a route comes", lambda: routes.update(
            old=_shared_route("old", later, "[a.example.com, d.example.com]"))),
    ]
    for what, edit in edits:
        edit()
        before, count = state["snapshot"].version, len(patched)
        _step(tmp_path, _files(routes, backends, head), loader, state)
        assert len(patched) == count + 1, what
        assert state["snapshot"].version != before, what
        if what == "the older of two routes on a host":
            assert loader.parsed_pieces == 1  # the edited piece; the others kept by place
    listener = next(s for s in loader.load().statuses if s.kind == "Listener")
    assert dict(listener.details)["attachedRoutes"] == "5"


def _slice(service: str, index: int, address: str) -> str:
    return f"""apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service}-{index}
  namespace: app
  labels: {{kubernetes.io/service-name: {service}}}
addressType: IPv4
ports: [{{name: http, port: 8000}}]
endpoints: [{{addresses: ['{address}']}}]
"""


def test_gateway_api_endpoint_slice_edits_equal_cold(tmp_path: Path) -> None:
    """EndpointSlices patched into the kept walk (`compile.Walk.patched`): an edit of one of
    a Service's several, one gone and one back, a slice moving to another Service; each load
    equal to a cold one."""
    loader = PolicyLoader(tmp_path)
    state: dict = {}
    head = [CLASS, _gateway()]
    routes = {"r0": _route("r0")}
    service = """apiVersion: v1
kind: Service
metadata: {name: NAME, namespace: app}
spec: {ports: [{name: http, port: 80, targetPort: 8000}]}
"""
    backends = {"a": service.replace("NAME", "r0-a"), "shared": service.replace("NAME", "shared"),
                "s1": _slice("r0-a", 1, "127.0.5.1"), "s2": _slice("r0-a", 2, "127.0.5.2"),
                "s3": _slice("r0-a", 3, "127.0.5.3"), "t1": _slice("shared", 1, "127.0.6.1")}
    _step(tmp_path, _files(routes, backends, head), loader, state)
    edits = [
        ("the middle slice", lambda: backends.update(s2=_slice("r0-a", 2, "127.0.5.22"))),
        ("the first slice", lambda: backends.update(s1=_slice("r0-a", 1, "127.0.5.11"))),
        ("a slice goes", lambda: backends.pop("s3")),
        ("it comes back", lambda: backends.update(s3=_slice("r0-a", 3, "127.0.5.3"))),
        ("a slice moves to another Service", lambda: backends.update(
            s2=_slice("shared", 2, "127.0.5.2"))),
        ("the other Service's only slice", lambda: backends.update(
            t1=_slice("shared", 1, "127.0.6.9"))),
    ]
    for what, edit in edits:
        edit()
        before = state["snapshot"].version
        _step(tmp_path, _files(routes, backends, head), loader, state)
        assert state["snapshot"].version != before, what


LISTENER_SET = """apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: more, namespace: app}
spec:
  parentRef: {name: edge, namespace: app}
  listeners:
  - {name: extra, port: 10002, protocol: HTTP, hostname: set.example.com}
"""


def _set_route(name: str, weight: int) -> str:
    return f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: app}}
spec:
  parentRefs: [{{group: gateway.networking.k8s.io, kind: ListenerSet, name: more}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs:
    - {{name: shared, port: 80, weight: {weight}}}
    - {{name: {name}-a, port: 80, weight: {100 - weight}}}
"""


def test_gateway_api_listenerset_route_edits_equal_cold(tmp_path: Path, monkeypatch) -> None:
    """A route attached through a ListenerSet (what the gateway phase found is kept with the
    HTTP phase): its edits and a Gateway route's, each a patched compile equal to a cold
    load, the ListenerSet's statuses included."""
    from meshpilot.inputs.gatewayapi import compile as gateway_compile

    patched: list[int] = []
    phase = gateway_compile._Compiler._patched_http_phase

    def counted(self, kept):  # type: ignore[no-untyped-def]
        patched.append(1)
        return phase(self, kept)

    monkeypatch.setattr(gateway_compile._Compiler, "_patched_http_phase", counted)
    loader = PolicyLoader(tmp_path)
    state: dict = {}
    head = [CLASS, _gateway().replace("  gatewayClassName: meshpilot\n",
                                      "  gatewayClassName: meshpilot\n"
                                      "  allowedListeners: {namespaces: {from: Same}}\n"),
            LISTENER_SET]
    routes = {"r0": _route("r0"), "s0": _set_route("s0", 90)}
    backends = {"r0": _backend("r0-a", "127.0.1.1"), "s0": _backend("s0-a", "127.0.1.2"),
                "shared": _backend("shared", "127.0.2.1")}
    _step(tmp_path, _files(routes, backends, head), loader, state)
    assert any(s.kind == "ListenerSet" for s in loader.load().statuses)
    for what, edit in [("the ListenerSet's route", lambda: routes.update(s0=_set_route("s0", 70))),
                       ("the Gateway's route", lambda: routes.update(r0=_route("r0", 60))),
                       ("the shared backend", lambda: backends.update(
                           shared=_backend("shared", "127.0.2.5")))]:
        edit()
        before, count = state["snapshot"].version, len(patched)
        _step(tmp_path, _files(routes, backends, head), loader, state)
        assert len(patched) == count + 1, what
        assert state["snapshot"].version != before, what


MESH_POLICY = """kind: MeshPolicy
name: mesh-strict
namespace: "*"
mtls: strict
"""


def test_gateway_api_edit_beside_a_mesh_policy_builds_the_model_whole(tmp_path: Path) -> None:
    """A MeshPolicy rewrites Services as the model is built (`meshpolicy.apply`): an edit of
    Gateway API documents beside one still compiles as cached but builds the model whole,
    and equals a cold load."""
    loader = PolicyLoader(tmp_path)
    state: dict = {}
    head = [CLASS, _gateway()]
    routes = {"r0": _route("r0"), "r1": _route("r1")}
    backends = {"r0": _backend("r0-a", "127.0.1.1"), "r1": _backend("r1-a", "127.0.1.2"),
                "shared": _backend("shared", "127.0.2.1")}
    (tmp_path / "mesh.yaml").write_text(MESH_POLICY)
    _step(tmp_path, _files(routes, backends, head), loader, state)
    routes["r0"] = _route("r0", 60)
    _step(tmp_path, _files(routes, backends, head), loader, state, patched=False)
    backends["r1"] = _backend("r1-a", "127.0.1.7")
    _step(tmp_path, _files(routes, backends, head), loader, state, patched=False)
