"""Incremental reloads: `PolicyLoader` and `Translation(previous=...)` give exactly what a cold
`Translation(load_policy(path))` gives, for every view, over many random edits of a policy folder
(services, routes, gateways and raw resources added, changed and removed; files renamed and
deleted; broken edits in between), and a rejected load reports exactly the cold load's issues."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from tls_material import CA

from meshpilot.base import types
from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import PolicyLoader, load_policy, load_policy_text
from meshpilot.ir.model import Endpoint
from meshpilot.runtime.controller import Controller
from meshpilot.translators import Translation
from meshpilot.xds.cache import SnapshotCache
from meshpilot.xds.resources import Resource
from meshpilot.xds.snapshot import Snapshot


@dataclass
class _Policy:
    """A random policy as documents assigned to files; rendered to YAML on every write."""

    rng: random.Random
    services: dict[str, dict] = field(default_factory=dict)
    gateways: dict[str, dict] = field(default_factory=dict)
    routes: dict[str, dict] = field(default_factory=dict)
    raws: dict[str, dict] = field(default_factory=dict)
    file_of: dict[tuple[str, str], str] = field(default_factory=dict)
    files: list[str] = field(default_factory=lambda: ["a.yaml", "b.yaml", "sub/c.yaml",
                                                      "d.yml"])
    counter: int = 0
    raw_allowed: bool = True  # False: meshpilot's Service, Route and Gateway only (the index)

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def place(self, kind: str, name: str) -> None:
        self.file_of[(kind, name)] = self.rng.choice(self.files)

    # ---- documents ----

    def add_service(self) -> None:
        name = self.fresh("svc")
        self.services[name] = self._service_spec(name)
        self.place("Service", name)

    def _service_spec(self, name: str) -> dict:
        rng = self.rng
        spec: dict = {"dns": rng.random() < 0.15, "subsets": rng.random() < 0.7,
                      "n": rng.randint(1, 3), "base": rng.randint(1, 200),
                      "lb": rng.choice(["round_robin", "least_request"]),
                      "timeout": rng.choice([None, "1s", "250ms"]), "sidecar": None}
        if rng.random() < 0.3:
            others = [s for s in self.services if s != name]
            spec["sidecar"] = rng.sample(others, min(len(others), rng.randint(0, 2)))
        return spec

    def render_service(self, name: str) -> str:
        spec = self.services[name]
        lines = [f"kind: Service\nname: {name}\nendpoints:"]
        for i in range(max(spec["n"], 2) if spec["subsets"] else spec["n"]):
            host = f"{name}-{i}.internal" if spec["dns"] else f"10.{spec['base']}.0.{i + 1}"
            lines.append(f"  - {{address: '{host}:8080', labels: {{version: v{i % 2 + 1}}}}}")
        if spec["subsets"]:
            lines.append("subsets: {v1: {version: v1}, v2: {version: v2}}")
        lines.append(f"load_balancer: {spec['lb']}")
        if spec["timeout"]:
            lines.append(f"connect_timeout: {spec['timeout']}")
        if spec["sidecar"] is not None:
            calls = [c for c in spec["sidecar"] if c in self.services]
            lines.append("sidecar:\n  port: 15006\n  app: 9080\n  outbound_port: 15001")
            if calls:
                lines.append(f"  calls: [{', '.join(calls)}]")
        return "\n".join(lines) + "\n"

    def add_gateway(self) -> None:
        name = self.fresh("gw")
        self.gateways[name] = {"port": 10000 + self.counter * 2, "two": self.rng.random() < 0.5}
        self.place("Gateway", name)

    def render_gateway(self, name: str) -> str:
        spec = self.gateways[name]
        text = f"kind: Gateway\nname: {name}\nlisteners:\n  - {{name: http, port: {spec['port']}}}\n"
        if spec["two"]:
            text += f"  - {{name: alt, port: {spec['port'] + 1}}}\n"
        return text

    def add_route(self) -> None:
        if not self.gateways or not self.services:
            return
        name = self.fresh("route")
        self.routes[name] = self._route_spec()
        self.place("Route", name)

    def _route_spec(self) -> dict:
        rng = self.rng
        gateway = rng.choice(sorted(self.gateways))
        backends = []
        for _ in range(rng.randint(1, 2)):
            service = rng.choice(sorted(self.services))
            subset = rng.choice(["v1", "v2"]) if self.services[service]["subsets"] else None
            if all((service, subset) != (s, sub) for s, sub, _ in backends):
                backends.append((service, subset, rng.randint(1, 99)))
        return {"gateway": gateway, "backends": backends, "listener": rng.random() < 0.3,
                "retries": rng.choice([None, 1, 3]), "prefix": rng.choice(["/", "/api"])}

    def render_route(self, name: str) -> str:
        spec = self.routes[name]
        items = []
        for service, subset, weight in spec["backends"]:
            subset_text = f", subset: {subset}" if subset else ""
            items.append(f"{{service: {service}{subset_text}, weight: {weight}}}")
        text = (f"kind: Route\nname: {name}\ngateway: {spec['gateway']}\n"
                f"hosts: [{name}.example.com]\n")
        if spec["listener"]:
            text += "listeners: [http]\n"
        text += (f"rules:\n  - match: {{path: {{prefix: {spec['prefix']}}}}}\n"
                 f"    backends: [{', '.join(items)}]\n")
        if spec["retries"]:
            text += f"    retries: {{attempts: {spec['retries']}}}\n"
        return text

    def add_raw(self) -> None:
        name = self.fresh("raw")
        self.raws[name] = self._raw_spec()
        self.place("EnvoyResources", name)

    def _raw_spec(self) -> dict:
        rng = self.rng
        # Sometimes it overrides a generated cluster (the escape hatch), sometimes one view only.
        cluster = rng.choice(sorted(self.services)) if self.services and rng.random() < 0.3 \
            else self.fresh("rawc")
        views = rng.choice([None, sorted(self.gateways)[:1] or None])
        return {"cluster": cluster, "port": rng.randint(1000, 2000), "views": views}

    def render_raw(self, name: str) -> str:
        spec = self.raws[name]
        text = f"kind: EnvoyResources\nname: {name}\n"
        if spec["views"]:
            text += f"views: [{', '.join(spec['views'])}]\n"
        text += (f"clusters:\n  - name: {spec['cluster']}\n    connect_timeout: 1s\n"
                 f"    type: STATIC\n    load_assignment:\n      cluster_name: {spec['cluster']}\n"
                 "      endpoints:\n        - lb_endpoints:\n            - endpoint: "
                 f"{{address: {{socket_address: {{address: 127.0.0.1, port_value: "
                 f"{spec['port']}}}}}}}\n")
        return text

    # ---- consistency after removals ----

    def prune(self) -> None:
        for name, spec in list(self.routes.items()):
            spec["backends"] = [b for b in spec["backends"] if b[0] in self.services
                                and (b[1] is None or self.services[b[0]]["subsets"])]
            if not spec["backends"] or spec["gateway"] not in self.gateways:
                del self.routes[name]
                del self.file_of[("Route", name)]
        raw_clusters: set[str] = set()
        for name, spec in list(self.raws.items()):
            if spec["views"] and spec["views"][0] not in self.gateways:
                spec["views"] = None
            if spec["cluster"] in raw_clusters:  # two raw clusters of one name: a conflict
                del self.raws[name]
                del self.file_of[("EnvoyResources", name)]
            else:
                raw_clusters.add(spec["cluster"])

    # ---- files ----

    def render(self) -> dict[str, str]:
        out: dict[str, list[str]] = {}
        renderers = {"Service": self.render_service, "Gateway": self.render_gateway,
                     "Route": self.render_route, "EnvoyResources": self.render_raw}
        for (kind, name), file in sorted(self.file_of.items()):
            out.setdefault(file, []).append(renderers[kind](name))
        return {file: "---\n".join(docs) for file, docs in out.items()}

    def views(self) -> list[str]:
        return [*self.gateways, *self.services, "nobody"]

    # ---- one random edit ----

    def edit(self) -> str:
        rng = self.rng
        choice = rng.choice(["add_service", "add_service", "add_route", "add_route",
                             "modify_service", "modify_route", "modify_route", "remove_service",
                             "remove_route", "add_gateway", "modify_gateway", "remove_gateway",
                             "add_raw", "modify_raw", "remove_raw", "move", "rename_file",
                             "delete_file", "noop"])
        if choice.endswith("_raw") and not self.raw_allowed:
            choice = "noop"
        if choice.startswith("add_"):
            getattr(self, choice)()
        elif choice == "modify_service" and self.services:
            name = rng.choice(sorted(self.services))
            spec = self.services[name]
            key = rng.choice(["n", "lb", "timeout", "subsets", "dns", "all"])
            fresh = self._service_spec(name)
            if key == "all":
                self.services[name] = fresh
            else:
                spec[key] = fresh[key]
        elif choice == "modify_route" and self.routes:
            name = rng.choice(sorted(self.routes))
            if rng.random() < 0.5:
                spec = self.routes[name]
                spec["backends"] = [(s, sub, rng.randint(1, 99)) for s, sub, _ in spec["backends"]]
            else:
                self.routes[name] = self._route_spec()
        elif choice == "modify_gateway" and self.gateways:
            name = rng.choice(sorted(self.gateways))
            self.gateways[name]["two"] = not self.gateways[name]["two"]
        elif choice == "modify_raw" and self.raws:
            name = rng.choice(sorted(self.raws))
            self.raws[name]["port"] = rng.randint(1000, 2000)
        elif choice.startswith("remove_"):
            kind, table = {"remove_service": ("Service", self.services),
                           "remove_route": ("Route", self.routes),
                           "remove_gateway": ("Gateway", self.gateways),
                           "remove_raw": ("EnvoyResources", self.raws)}[choice]
            if table:
                name = rng.choice(sorted(table))
                del table[name]
                del self.file_of[(kind, name)]
        elif choice == "move" and self.file_of:
            key = rng.choice(sorted(self.file_of))
            self.file_of[key] = rng.choice(self.files)
        elif choice == "rename_file":
            old = rng.choice(self.files)
            new = self.fresh("renamed-") + ".yaml"
            self.files[self.files.index(old)] = new
            self.file_of = {k: (new if f == old else f) for k, f in self.file_of.items()}
        elif choice == "delete_file" and len(self.files) > 1:
            gone = rng.choice(self.files)
            self.files.remove(gone)
            for key, file in list(self.file_of.items()):
                if file == gone:
                    kind, name = key
                    {"Service": self.services, "Gateway": self.gateways, "Route": self.routes,
                     "EnvoyResources": self.raws}[kind].pop(name)
                    del self.file_of[key]
        self.prune()
        return choice


def _write(root: Path, files: dict[str, str]) -> None:
    existing = {p.relative_to(root).as_posix() for p in root.rglob("*.y*ml")}
    for gone in existing - set(files):
        (root / gone).unlink()
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


def _broken(policy: _Policy, rng: random.Random) -> dict[str, str]:
    """The policy's files with one mistake: a broken reference, a duplicate name across files,
    a YAML syntax error, an unknown field, or a raw cluster defined twice."""
    files = policy.render()
    target = rng.choice(sorted(files)) if files else "a.yaml"
    text = files.get(target, "")
    mistake = rng.choice(["reference", "duplicate", "syntax", "field", "raw"])
    if mistake == "reference" and policy.gateways:
        gateway = sorted(policy.gateways)[0]
        extra = (f"kind: Route\nname: broken\ngateway: {gateway}\nhosts: [broken.example]\n"
                 "rules:\n  - backends: [{service: no-such-service}]\n")
    elif mistake == "duplicate" and policy.services:
        name = sorted(policy.services)[0]
        extra = f"kind: Service\nname: {name}\nendpoints: ['10.9.9.9:80']\n"
        target = "zz-duplicate.yaml"
        text = ""
    elif mistake == "syntax":
        extra = "kind: Service\nname: [unclosed\n"
    elif mistake == "field":
        extra = "kind: Service\nname: odd\nendpoints: ['10.9.9.8:80']\nbogus_field: 1\n"
    else:
        extra = ("kind: EnvoyResources\nname: dup-raw\nclusters:\n"
                 "  - {name: twice, type: STATIC, connect_timeout: 1s}\n")
        if policy.raw_allowed:
            files["zz-raw.yaml"] = extra
        else:  # a host two Routes claim on one listener instead
            route = sorted(policy.routes)[0] if policy.routes else None
            extra = "kind: Route\nname: [unclosed\n"
            if route is not None:
                spec = policy.routes[route]
                extra = (f"kind: Route\nname: twin\ngateway: {spec['gateway']}\n"
                         f"hosts: [{route}.example.com]\nrules:\n"
                         f"  - backends: [{{service: {spec['backends'][0][0]}}}]\n")
    files[target] = (text + "---\n" + extra) if text else extra
    return files


def _assert_same(incremental: Snapshot, cold: Snapshot) -> None:
    assert incremental.view == cold.view
    assert incremental.type_urls() == cold.type_urls()
    for type_url in cold.type_urls():
        a, b = incremental.get(type_url), cold.get(type_url)
        assert a.names() == b.names(), (cold.view, type_url)
        for name in b.names():
            assert a[name].body == b[name].body, (cold.view, type_url, name)
            assert a[name].version == b[name].version
        assert a.version == b.version
    assert incremental.version == cold.version


def _cold(root: Path, discovered: dict[str, tuple[Endpoint, ...]]) -> Translation:
    return Translation(load_policy(root), discovered=discovered)


@pytest.mark.parametrize("seed", range(6))
def test_incremental_reload_equals_cold(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    policy = _Policy(rng)
    for _ in range(4):
        policy.add_service()
    policy.add_gateway()
    for _ in range(5):
        policy.add_route()
    policy.add_raw()
    root = tmp_path / "policy"
    root.mkdir()
    loader = PolicyLoader(root)
    translation: Translation | None = None
    snapshots: dict[str, Snapshot] = {}
    rejected = applied = 0
    for step in range(70):
        if step and rng.random() < 0.12:
            _write(root, _broken(policy, rng))
            with pytest.raises(PolicyError) as cold_error:
                load_policy(root)
            with pytest.raises(PolicyError) as incremental_error:
                loader.load()
            assert [str(i) for i in incremental_error.value.issues] == \
                [str(i) for i in cold_error.value.issues]
            rejected += 1
            continue
        if step:
            policy.edit()
        _write(root, policy.render())
        discovered: dict[str, tuple[Endpoint, ...]] = {}
        if policy.services and rng.random() < 0.3:
            service = rng.choice(sorted(policy.services))
            discovered[service] = (Endpoint(host="10.200.0.1", port=rng.choice([80, 81])),)
        model = loader.load()
        cold_translation = _cold(root, discovered)
        assert model == cold_translation.model
        translation = Translation(model, discovered=discovered, previous=translation)
        for view in [*policy.views(), *snapshots]:
            snapshot = translation.snapshot(view, previous=snapshots.get(view))
            _assert_same(snapshot, cold_translation.snapshot(view))
            snapshots[view] = snapshot
        applied += 1
    assert applied > 40 and rejected > 3


def test_unchanged_files_are_not_parsed_again(tmp_path: Path) -> None:
    rng = random.Random(7)
    policy = _Policy(rng)
    for _ in range(6):
        policy.add_service()
    policy.add_gateway()
    for _ in range(6):
        policy.add_route()
    _write(tmp_path, policy.render())
    loader = PolicyLoader(tmp_path)
    first = loader.load()
    assert loader.parsed_files == len(policy.render())
    second = loader.load()
    assert loader.parsed_files == 0
    assert second == first
    assert all(a is b for a, b in zip(second.services, first.services, strict=True))
    (tmp_path / "a.yaml").write_text((tmp_path / "a.yaml").read_text() + "\n# edited\n")
    third = loader.load()
    assert loader.parsed_files == 1
    assert third == first


def test_reload_reuses_resources_and_maps(tmp_path: Path) -> None:
    """One Route's weights change: the controller's new edge snapshot keeps the cluster,
    endpoint and listener maps (the very objects), and only the route configuration differs."""
    services = "".join(
        f"---\nkind: Service\nname: s{i}\nendpoints:\n  - {{address: '10.0.0.{i}:80', labels: "
        f"{{version: v1}}}}\n  - {{address: '10.0.1.{i}:80', labels: {{version: v2}}}}\n"
        "subsets: {v1: {version: v1}, v2: {version: v2}}\n" for i in range(1, 6))
    (tmp_path / "services.yaml").write_text(services)
    (tmp_path / "gateway.yaml").write_text(
        "kind: Gateway\nname: edge\nlisteners: [{name: http, port: 10000}]\n")

    def routes(weight: int) -> str:
        return "".join(
            f"---\nkind: Route\nname: r{i}\ngateway: edge\nhosts: [r{i}.example]\nrules:\n"
            f"  - backends: [{{service: s{i}, subset: v1, weight: {weight if i == 1 else 50}}},"
            f" {{service: s{i}, subset: v2, weight: {100 - weight if i == 1 else 50}}}]\n"
            for i in range(1, 6))

    (tmp_path / "routes.yaml").write_text(routes(90))
    cache = SnapshotCache()
    controller = Controller(tmp_path, cache)
    assert controller.reload()
    before = controller.snapshot_blocking("edge")
    assert before is not None
    assert controller.reload()  # nothing changed: the very same snapshot
    assert cache.get("edge") is before
    (tmp_path / "routes.yaml").write_text(routes(70))
    assert controller.reload()
    after = cache.get("edge")
    assert after is not None and after is not before
    for type_url in (types.CLUSTER, types.ENDPOINT, types.LISTENER):
        assert after.get(type_url) is before.get(type_url)
    assert after.get(types.ROUTE) is not before.get(types.ROUTE)
    assert controller.loader.parsed_files == 1
    _assert_same(after, Translation(load_policy(tmp_path)).snapshot("edge"))


def _service_doc(i: int, port: int = 80, extra: str = "") -> str:
    return (f"kind: Service\nname: s{i}\nendpoints: ['10.0.0.{i}:{port}']\n{extra}")


def _load_both(root: Path, loader: PolicyLoader) -> None:
    """The loader gives what a cold load gives: the same model (positions included), or the
    same issues, word for word and position for position."""
    try:
        cold = load_policy(root)
    except PolicyError as error:
        with pytest.raises(PolicyError) as incremental:
            loader.load()
        assert [str(i) for i in incremental.value.issues] == [str(i) for i in error.issues]
        return
    model = loader.load()
    assert model == cold
    assert [s.position for s in model.services] == [s.position for s in cold.services]


def test_one_document_edit_parses_that_document_only(tmp_path: Path) -> None:
    docs = [_service_doc(i) for i in range(1, 9)]
    path = tmp_path / "services.yaml"
    path.write_text("---\n".join(docs))
    loader = PolicyLoader(tmp_path)
    first = loader.load()
    docs[3] = _service_doc(4, port=81)
    path.write_text("---\n".join(docs))
    second = loader.load()
    assert (loader.parsed_files, loader.parsed_pieces) == (1, 1)
    assert second == load_policy(tmp_path)
    changed = [a is not b for a, b in zip(first.services, second.services, strict=True)]
    assert changed == [i == 3 for i in range(8)]
    # A document that grows moves the ones after it: they are parsed again, at their new lines.
    docs[3] = _service_doc(4, port=81, extra="load_balancer: least_request\n")
    path.write_text("---\n".join(docs))
    _load_both(tmp_path, loader)
    assert loader.parsed_pieces == 5


@pytest.mark.parametrize("seed", range(4))
def test_per_document_edits_equal_cold(tmp_path: Path, seed: int) -> None:
    """Random edits of single documents in files of many, some breaking one document (YAML
    syntax, a bad field, a duplicate, a broken reference, text libyaml might not split where
    we do): always what a cold load gives, issues and positions included."""
    rng = random.Random(seed)
    docs: dict[str, list[str]] = {
        "a.yaml": [_service_doc(i) for i in range(1, 7)],
        "b.yaml": ["# leading comment\n" + _service_doc(7), _service_doc(8),
                   "kind: Gateway\nname: gw\nlisteners: [{name: http, port: 10000}]\n",
                   "kind: Route\nname: r1\ngateway: gw\nhosts: [r1.example]\n"
                   "rules:\n  - backends: [{service: s1}]\n"],
    }
    mistakes = [
        "kind: Service\nname: [unclosed\n",
        "kind: Service\nname: odd\nendpoints: ['10.9.9.8:80']\nbogus_field: 1\n",
        _service_doc(1),  # a duplicate name
        "kind: Route\nname: bad\ngateway: gw\nhosts: [bad.example]\n"
        "rules:\n  - backends: [{service: nowhere}]\n",
        "kind: Service\nname: quoted\nendpoints: ['10.9.9.7:80']\nnote: \"two\n---\nlines\"\n",
        "kind: Service\nname: flow\nendpoints: ['10.9.9.6:80',\n---\n]\n",
        "kind: Service\nname: block\nendpoints: ['10.9.9.5:80']\nnote: |\n  a\n  ---\n  b\n",
        "%YAML 1.1\n---\n" + _service_doc(40),
        _service_doc(41) + "...\n",
        "kind: Service\nname: tab\nendpoints: ['10.9.9.4:80']\r\n",
        "kind: Service\nname: &a anchored\nendpoints: ['10.9.9.3:80']\nalias: *a\n",
        "kind: Service\nname: alias\nendpoints: ['10.9.9.2:80']\nalias: *a\n",
    ]
    loader = PolicyLoader(tmp_path)
    for _ in range(40):
        file = rng.choice(sorted(docs))
        index = rng.randrange(len(docs[file]))
        action = rng.random()
        if action < 0.35:
            number = 1 + (index % 6 if file == "a.yaml" else 6 + index % 2)
            docs[file][index] = _service_doc(number, port=rng.randint(80, 90),
                                             extra="load_balancer: least_request\n"
                                             if rng.random() < 0.3 else "")
        elif action < 0.6:
            docs[file].insert(index, rng.choice(mistakes))
        elif action < 0.8 and len(docs[file]) > 4:
            del docs[file][index]
        for name, texts in docs.items():
            (tmp_path / name).write_text("---\n".join(texts))
        _load_both(tmp_path, loader)
        if rng.random() < 0.3:  # back to a clean policy now and then
            for texts in docs.values():
                texts[:] = [t for t in texts if t not in mistakes]
            for name, texts in docs.items():
                (tmp_path / name).write_text("---\n".join(texts))
            _load_both(tmp_path, loader)


def test_route_configuration_from_cached_virtual_hosts_is_byte_identical() -> None:
    """Concatenated VirtualHost bytes give exactly the serialized RouteConfiguration, also when
    two Routes claim one host (the second loses it) and across reuse."""
    from meshpilot.inputs.loader import load_policy_text
    from meshpilot.translators import routes as route_translator
    from meshpilot.xds.resources import Resource

    text = "kind: Gateway\nname: gw\nlisteners: [{name: http, port: 8080}]\n---\n" + \
        _service_doc(1) + "---\n" + "---\n".join(
            f"kind: Route\nname: r{i}\ngateway: gw\nhosts: [h{i}.example, only{i}.example]\n"
            "rules:\n  - backends: [{service: s1}]\n" for i in range(5))
    model = load_policy_text(text)
    # The loader refuses two Routes sharing a host; a model built otherwise may hold them.
    served = [replace(r, hosts=(f"h{i % 3}.example", f"only{i}.example"))
              for i, r in enumerate(model.routes)]
    gateway = model.gateways[0]
    spec = gateway.listeners[0]
    expected = route_translator.route_configuration(gateway, spec, served)
    assert len(expected.virtual_hosts) == 5 and list(expected.virtual_hosts[3].domains) == [
        "only3.example"]  # h0.example was taken by r0
    assert expected.ignore_port_in_host_matching
    cache: route_translator.VirtualHostCache = {}
    for earlier in ({}, dict(cache)):
        built = route_translator.route_configuration_resource(gateway, spec, served,
                                                              earlier, cache)
        reference = Resource.from_message(types.ROUTE, expected.name, expected)
        assert built.body == reference.body and built.refs == reference.refs


def test_route_configuration_version_follows_every_virtual_host() -> None:
    """A gateway's RouteConfiguration is versioned by its virtual hosts' hashes
    (`routes.config_version`), not by hashing the whole bytes: still one version per content.
    Editing any one Route, adding or removing one, or renaming the listener's configuration
    gives another version; the same policy built again gives the same one."""
    def config(text: str) -> Resource:
        return Translation(load_policy_text(text)).snapshot("gw").get(types.ROUTE)["gw/http"]

    def policy(weights: list[int], port: int = 10000) -> str:
        docs = [_gateway_doc(port=port), _service_doc(1)]
        docs += [_route_doc(f"r{i}", "s1", extra=f"    timeout: {w}s\n")
                 for i, w in enumerate(weights)]
        return "---\n".join(docs)

    base = config(policy([1, 2, 3, 4]))
    assert config(policy([1, 2, 3, 4])).version == base.version
    seen = {base.version}
    for variant in ([1, 2, 3, 5], [9, 2, 3, 4], [1, 2, 3], [1, 2, 3, 4, 5], [2, 1, 3, 4],
                    []):
        found = config(policy(variant))
        assert found.body != base.body and found.version not in seen, variant
        seen.add(found.version)


def test_a_spliced_layout_is_not_spliced_again(tmp_path: Path) -> None:
    """A splice takes the earlier layout's counts over (no copy of every domain and cluster):
    when the reload it was made for is refused and the earlier Translation is asked again
    (the controller keeps serving it), its listener is built whole, not spliced from counts
    that moved on, and gives what a cold Translation gives."""
    root = tmp_path / "policy"
    root.mkdir()
    routes = [_route_doc(f"r{i}", "s1", "s2") for i in range(4)]
    first = {"p.yaml": "---\n".join([_gateway_doc(), _service_doc(1), _service_doc(2),
                                      *routes])}
    _write(root, first)
    loader = PolicyLoader(root)
    earlier = Translation(loader.load())
    served = earlier.snapshot("gw")
    routes[1] = _route_doc("r1", "s2", host="other.example")
    _write(root, {"p.yaml": "---\n".join([_gateway_doc(), _service_doc(1), _service_doc(2),
                                          *routes])})
    model = loader.load()
    assert loader.fast
    refused = Translation(model, previous=earlier, changes=loader.changes)
    refused.snapshot("gw", previous=served)
    assert refused.gateways.spliced == 1
    again = Translation(model, previous=earlier, changes=loader.changes)
    snapshot = again.snapshot("gw", previous=served)
    assert again.gateways.spliced == 0  # the layout was spent by the refused one
    _assert_same(snapshot, Translation(load_policy(root)).snapshot("gw"))


# ---- the index of who refers to whom (inputs/dependents.py, translators/patch.py) -----------


class _Clock:
    def __call__(self) -> float:
        return 1_900_000_000.0


@pytest.mark.parametrize("seed", range(8))
def test_index_path_equals_cold(tmp_path: Path, seed: int) -> None:
    """Random edits of a policy of Services, Routes and Gateways only (what the index covers),
    with broken edits in between: every load that follows the index, and every gateway view
    patched from its earlier snapshot, gives exactly what a cold load and a cold Translation
    give (with a mesh CA's identities on odd seeds), and a refused edit the cold issues."""
    from meshpilot.ca import CertificateAuthority, WorkloadIdentities

    rng = random.Random(1000 + seed)
    policy = _Policy(rng, raw_allowed=False)
    for _ in range(5):
        policy.add_service()
    policy.add_gateway()
    policy.add_gateway()
    for _ in range(7):
        policy.add_route()
    identities = WorkloadIdentities(CertificateAuthority.create("example.org"), ttl=3600,
                                    clock=_Clock()) if seed % 2 else None
    root = tmp_path / "policy"
    root.mkdir()
    loader = PolicyLoader(root)
    translation: Translation | None = None
    snapshots: dict[str, Snapshot] = {}
    fast = patched = spliced = rejected = 0
    for step in range(60):
        if step and rng.random() < 0.12:
            _write(root, _broken(policy, rng))
            with pytest.raises(PolicyError) as cold_error:
                load_policy(root)
            with pytest.raises(PolicyError) as incremental_error:
                loader.load()
            assert [str(i) for i in incremental_error.value.issues] == \
                [str(i) for i in cold_error.value.issues]
            rejected += 1
            continue
        if step:
            policy.edit()
        _write(root, policy.render())
        discovered: dict[str, tuple[Endpoint, ...]] = {}
        if policy.services and rng.random() < 0.2:
            service = rng.choice(sorted(policy.services))
            discovered[service] = (Endpoint(host="10.200.0.1", port=rng.choice([80, 81])),)
        model = loader.load()
        fast += loader.fast
        cold = Translation(load_policy(root), discovered=discovered, identities=identities)
        assert model == cold.model
        assert [r.position for r in model.routes] == [r.position for r in cold.model.routes]
        translation = Translation(model, discovered=discovered, identities=identities,
                                  previous=translation, changes=loader.changes)
        for view in [*policy.views(), *snapshots]:
            snapshot = translation.snapshot(view, previous=snapshots.get(view))
            patched += view in translation.patched_views
            _assert_same(snapshot, cold.snapshot(view))
            snapshots[view] = snapshot
        spliced += translation.gateways.spliced
    assert fast > 20 and patched > 20 and spliced > 3 and rejected > 2, \
        (fast, patched, spliced, rejected)


def _gateway_doc(name: str = "gw", port: int = 10000, extra: str = "") -> str:
    return f"kind: Gateway\nname: {name}\nlisteners:\n  - {{name: http, port: {port}}}\n{extra}"


def _route_doc(name: str, *backends: str, host: str | None = None, extra: str = "") -> str:
    items = ", ".join(f"{{service: {b}}}" for b in backends)
    return (f"kind: Route\nname: {name}\ngateway: gw\nhosts: [{host or name + '.example'}]\n"
            f"rules:\n  - backends: [{items}]\n{extra}")


def _step(root: Path, files: dict[str, str], loader: PolicyLoader, state: dict,
          *, fast: bool | None = True) -> None:
    """Write `files`, load both ways and compare (model, or issues); then translate with the
    changes and compare the edge view with a cold one. `fast`: whether the load must have
    followed the index (None: either)."""
    _write(root, files)
    try:
        cold_model = load_policy(root)
    except PolicyError as error:
        with pytest.raises(PolicyError) as incremental:
            loader.load()
        assert [str(i) for i in incremental.value.issues] == [str(i) for i in error.issues]
        return
    model = loader.load()
    assert model == cold_model
    if fast is not None:
        assert loader.fast is fast
    translation = Translation(model, previous=state.get("translation"), changes=loader.changes)
    snapshot = translation.snapshot("gw", previous=state.get("snapshot"))
    _assert_same(snapshot, Translation(cold_model).snapshot("gw"))
    state.update(translation=translation, snapshot=snapshot)


def test_index_follows_references_added_removed_and_renamed(tmp_path: Path) -> None:
    loader = PolicyLoader(tmp_path)
    state: dict = {}
    services = {f"s{i}": _service_doc(i) for i in range(1, 5)}
    routes = {"r1": _route_doc("r1", "s1"), "r2": _route_doc("r2", "s2")}

    def files() -> dict[str, str]:
        return {"gw.yaml": _gateway_doc(), "services.yaml": "---\n".join(services.values()),
                "routes.yaml": "---\n".join(routes.values())}

    _step(tmp_path, files(), loader, state, fast=False)  # the first load: the whole way
    routes["r1"] = _route_doc("r1", "s1", "s3")  # a reference added
    _step(tmp_path, files(), loader, state)
    assert state["snapshot"].get(types.CLUSTER).get("s3") is not None
    routes["r1"] = _route_doc("r1", "s3")  # one removed: s1's cluster goes from the view
    _step(tmp_path, files(), loader, state)
    assert state["snapshot"].get(types.CLUSTER).get("s1") is None
    services["s3"] = _service_doc(3).replace("name: s3", "name: s3-renamed")  # Routes name it
    _step(tmp_path, files(), loader, state)  # refused: r1 names s3, as a cold load says
    assert loader.fast is False
    routes["r1"] = _route_doc("r1", "s3-renamed")
    _step(tmp_path, files(), loader, state, fast=None)  # valid again (the index is rebuilt)
    services["s2"] = _service_doc(2, port=81)  # a Service edited: its Routes are checked again
    _step(tmp_path, files(), loader, state)
    services["s2"] = _service_doc(2, extra="protocol: tcp\n")  # now r2 cannot send to it
    _step(tmp_path, files(), loader, state)
    assert loader.fast is False
    services["s2"] = _service_doc(2)
    _step(tmp_path, files(), loader, state, fast=None)
    routes["r3"] = _route_doc("r3", "s4", host="r2.example")  # a host r2 claims already
    _step(tmp_path, files(), loader, state)
    assert loader.fast is False
    routes["r3"] = _route_doc("r3", "s4")
    _step(tmp_path, files(), loader, state, fast=None)
    routes["r4"] = _route_doc("r4", "s4")  # a new Route, then one deleted
    _step(tmp_path, files(), loader, state)
    del routes["r2"]
    _step(tmp_path, files(), loader, state)
    assert state["snapshot"].get(types.CLUSTER).get("s2") is None


def test_index_follows_files_deleted_and_documents_moved(tmp_path: Path) -> None:
    loader = PolicyLoader(tmp_path)
    state: dict = {}
    layout = {"gw.yaml": [_gateway_doc()],
              "a.yaml": [_service_doc(1), _service_doc(2), _route_doc("r1", "s1")],
              "b.yaml": [_service_doc(3), _route_doc("r3", "s3")]}

    def files() -> dict[str, str]:
        return {name: "---\n".join(docs) for name, docs in layout.items() if docs}

    _step(tmp_path, files(), loader, state, fast=False)
    layout["b.yaml"].append(layout["a.yaml"].pop(1))  # s2 moves from a.yaml to b.yaml
    _step(tmp_path, files(), loader, state)
    layout["c.yaml"] = [_route_doc("r2", "s2")]
    _step(tmp_path, files(), loader, state)
    del layout["c.yaml"]  # a file deleted: its Route goes
    _step(tmp_path, files(), loader, state)
    assert state["snapshot"].get(types.CLUSTER).get("s2") is None
    layout["d.yaml"] = [_service_doc(1)]  # s1 defined in two files: refused
    _step(tmp_path, files(), loader, state)
    layout["a.yaml"].remove(_service_doc(1))  # the same Service moved to another file
    _step(tmp_path, files(), loader, state, fast=None)
    layout["e.yaml"] = [_service_doc(9)]
    layout["f.yaml"] = [_service_doc(9, port=81)]  # defined twice, both in changed files
    _step(tmp_path, files(), loader, state)
    assert loader.fast is False
    del layout["f.yaml"]
    _step(tmp_path, files(), loader, state, fast=None)


def test_index_checks_gateway_listeners_and_their_secrets(tmp_path: Path) -> None:
    """A Gateway edit (a listener added, an https listener whose certificate changes): the
    Routes attached are checked again, the view is assembled whole, and a certificate file
    rewritten under an unchanged policy is read again."""
    ca = CA()
    ca.issue("shop.example").write(tmp_path / "tls", "shop")
    loader = PolicyLoader(tmp_path / "policy")
    state: dict = {}
    policy = tmp_path / "policy"
    tls = ("  - name: https\n    port: 10443\n    protocol: https\n    tls:\n      certificates:"
           f"\n        - {{cert: {tmp_path}/tls/shop.pem, key: {tmp_path}/tls/shop.key}}\n")
    gateway = _gateway_doc(extra=tls)
    documents = [gateway, _service_doc(1), _route_doc("r1", "s1")]
    loader = PolicyLoader(policy, allowed_files=[tmp_path / "tls"])

    def step(fast: bool | None) -> None:
        _write(policy, {"all.yaml": "---\n".join(documents)})
        model = loader.load()
        cold_model = load_policy(policy, allowed_files=[tmp_path / "tls"])
        assert model == cold_model
        if fast is not None:
            assert loader.fast is fast
        translation = Translation(model, previous=state.get("translation"),
                                  changes=loader.changes)
        snapshot = translation.snapshot("gw", previous=state.get("snapshot"))
        _assert_same(snapshot, Translation(cold_model).snapshot("gw"))
        state.update(translation=translation, snapshot=snapshot)

    step(False)
    before = state["snapshot"].get(types.SECRET)
    assert len(before) == 1  # the listener's certificate
    ca.issue("shop.example").write(tmp_path / "tls", "shop")  # the certificate renewed
    step(True)  # the Gateway's piece read its files: parsed again, a Gateway change
    assert "gw" not in state["translation"].patched_views
    assert state["snapshot"].get(types.SECRET).version != before.version
    documents[2] = _route_doc("r1", "s1", extra="listeners: [https]\n")
    step(True)
    assert "gw" in state["translation"].patched_views
    documents[2] = _route_doc("r1", "s1", extra="listeners: [nope]\n")  # no such listener
    _write(policy, {"all.yaml": "---\n".join(documents)})
    with pytest.raises(PolicyError) as cold:
        load_policy(policy, allowed_files=[tmp_path / "tls"])
    with pytest.raises(PolicyError) as incremental:
        loader.load()
    assert [str(i) for i in incremental.value.issues] == [str(i) for i in cold.value.issues]
    documents[0] = gateway.replace("name: https", "name: nope")  # the listener it names
    step(None)


def test_formats_the_index_does_not_cover_go_the_whole_way(tmp_path: Path) -> None:
    """Raw EnvoyResources (and Gateway API or Istio documents) in a policy: every load goes
    the whole way, still equal to a cold one; what it changed is what the two models do not
    share (the edited Route only), and the snapshot made with those changes is a cold one's."""
    loader = PolicyLoader(tmp_path)
    state: dict = {}
    raw = ("kind: EnvoyResources\nname: extra\nclusters:\n  - {name: extra, type: STATIC, "
           "connect_timeout: 1s}\n")
    docs = [_gateway_doc(), _service_doc(1), _route_doc("r1", "s1"), raw]
    _step(tmp_path, {"all.yaml": "---\n".join(docs)}, loader, state, fast=False)
    docs[2] = _route_doc("r1", "s1", extra="    timeout: 3s\n")
    _step(tmp_path, {"all.yaml": "---\n".join(docs)}, loader, state, fast=False)
    changes = loader.changes
    assert changes is not None
    assert (changes.routes, changes.services, changes.gateways) == ({"r1"}, set(), set())
    docs[1] = _service_doc(1).replace("10.0.0.1", "10.0.0.9")
    assert docs[1] != _service_doc(1)
    _step(tmp_path, {"all.yaml": "---\n".join(docs)}, loader, state, fast=False)
    assert loader.changes is not None and loader.changes.services == {"s1"}
    docs.pop()  # the raw resource goes: the next load builds the index again
    _step(tmp_path, {"all.yaml": "---\n".join(docs)}, loader, state, fast=False)
    docs[2] = _route_doc("r1", "s1")
    _step(tmp_path, {"all.yaml": "---\n".join(docs)}, loader, state, fast=True)


def test_files_not_written_since_they_were_read_are_not_read_again(tmp_path: Path) -> None:
    """A file whose inode, size and times are those it had when read, long enough after it was
    written, is not read again; one written again (even to the same size and modification
    time) or written just before it was read is."""
    import os
    import time

    old = time.time_ns() - 3600 * 10**9
    (tmp_path / "a.yaml").write_text(_service_doc(1))
    (tmp_path / "b.yaml").write_text(_service_doc(2))
    os.utime(tmp_path / "a.yaml", ns=(old, old))
    loader = PolicyLoader(tmp_path)
    loader.load()
    assert loader._cache.read_files == 2
    loader.load()
    # a.yaml's modification time is an hour old, but it changed status just now (utime):
    # still racy. b.yaml was written just now.
    assert loader._cache.read_files == 2
    entry = loader._cache._files["a.yaml"]
    assert entry.signature is None
    # Once settled (as if read long after), its signature is kept and it is not read again.
    from meshpilot.inputs import incremental
    settled = incremental.RACY_NS
    incremental.RACY_NS = -10**12  # everything counts as settled
    try:
        loader.load()
        loader.load()
        assert loader._cache.read_files == 0
        # The same size and modification time, other bytes: the status change time moved.
        (tmp_path / "a.yaml").write_text(_service_doc(1).replace("10.0.0.1", "10.0.0.9"))
        os.utime(tmp_path / "a.yaml", ns=(old, old))
        model = loader.load()
        assert loader._cache.read_files == 1
        assert model == load_policy(tmp_path)
        assert model.services[0].endpoints[0].host == "10.0.0.9"
    finally:
        incremental.RACY_NS = settled


def test_discovered_endpoints_keep_the_view_patchable(tmp_path: Path) -> None:
    """Discovered endpoints swapped into a gateway view (the EDS fast path) patch its assembly
    too, so the next policy edit still patches the view; both equal cold translations."""
    routes = [_route_doc("r1", "s1"), _route_doc("r2", "s2")]
    documents = [_gateway_doc(), _service_doc(1), _service_doc(2)]
    (tmp_path / "p.yaml").write_text("---\n".join(documents + routes))
    loader = PolicyLoader(tmp_path)
    first = Translation(loader.load())
    before = first.snapshot("gw")
    discovered = {"s2": (Endpoint(host="10.200.0.7", port=80),)}
    moved = first.with_endpoints(discovered)
    swapped = moved.refresh_endpoints(before, moved.changed_services({}) | {"s2"})
    assert "gw" in moved.patched_views
    assert swapped.get(types.LISTENER) is before.get(types.LISTENER)
    _assert_same(swapped, Translation(first.model, discovered=discovered).snapshot("gw"))
    routes[0] = _route_doc("r1", "s1", "s2")
    (tmp_path / "p.yaml").write_text("---\n".join(documents + routes))
    model = loader.load()
    assert loader.fast
    after = Translation(model, discovered=discovered, previous=moved, changes=loader.changes)
    snapshot = after.snapshot("gw", previous=swapped)
    assert "gw" in after.patched_views
    _assert_same(snapshot, Translation(load_policy(tmp_path), discovered=discovered)
                 .snapshot("gw"))
    # The earlier assembly is spent: patching from it again assembles the view whole.
    again = Translation(model, discovered=discovered, previous=moved, changes=loader.changes)
    _assert_same(again.snapshot("gw", previous=swapped), snapshot)
    assert "gw" not in again.patched_views


def test_a_split_file_is_compared_by_its_text_not_hashed(tmp_path: Path) -> None:
    """A file split one document a piece keeps its text and no hash: written again with the
    same bytes it is the very entry (not parsed), edited it is told from its last text; an
    entry that keeps no text (a document of it fails) keeps a hash."""
    path = tmp_path / "a.yaml"
    text = "---\n".join([_service_doc(1), _service_doc(2)])
    path.write_text(text)
    loader = PolicyLoader(tmp_path)
    first = loader.load()
    entry = loader._cache._files["a.yaml"]
    assert entry.text == text and entry.digest is None
    path.write_text(text)  # the same bytes, a new modification time
    assert loader.load() == first
    assert loader._cache._files["a.yaml"] is entry
    assert (loader._cache.read_files, loader._cache.parsed_files) == (1, 0)
    edited = text.replace("10.0.0.2", "10.0.0.7")
    path.write_text(edited)
    model = loader.load()
    assert model == load_policy(tmp_path)
    assert loader._cache.parsed_pieces == 1
    assert loader._cache._files["a.yaml"].text == edited
    # Where each piece ends is carried from edit to edit (the next split bisects it).
    from meshpilot.inputs.yamlsource import piece_ends
    documents = [_service_doc(i) for i in range(1, 8)]
    for change in (lambda: documents.__setitem__(0, _service_doc(1, port=81)),
                   # longer on the same lines: the pieces after it are kept, moved on
                   lambda: documents.__setitem__(3, _service_doc(4, port=8080)),
                   lambda: documents.__setitem__(3, _service_doc(4, extra="protocol: http\n")),
                   lambda: documents.append(_service_doc(9)),
                   lambda: documents.pop(2),
                   lambda: documents.__setitem__(-1, _service_doc(9, port=82))):
        change()
        path.write_text("---\n".join(documents))
        assert loader.load() == load_policy(tmp_path)
        entry = loader._cache._files["a.yaml"]
        assert entry.text is not None and entry.ends == piece_ends(entry.order)
        assert entry.ends[-1] == len(entry.text)
    edited = "---\n".join(documents)
    path.write_text(edited + "---\nkind: Nonsense\n")
    with pytest.raises(PolicyError):
        loader.load()
    broken = loader._cache._files["a.yaml"]
    assert broken.text is None and broken.digest is not None
