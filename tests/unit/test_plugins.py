"""Python plugins: what they add or patch in a view, the betterproto2 boundary (converted once),
how their failures are refused like policy errors, and discovery by entry point down to
`meshpilot serve --plugin NAME` (the wiring, without starting a server)."""

from __future__ import annotations

import datetime
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import envoy_data_plane.envoy.config.cluster.v3 as bp_cluster
import envoy_data_plane.envoy.config.core.v3 as bp_core
import envoy_data_plane.envoy.config.endpoint.v3 as bp_endpoint
import pytest

# Classes by module, never by bare name: the first envoy-data-plane (betterproto2) object of a
# class resolves its field types in the calling module's namespace too (pydantic), so a protobuf
# `LocalityLbEndpoints` imported here would be taken for the dataclass's (docs/plugins.md).
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.route.v3 import route_pb2

from meshpilot.base import types
from meshpilot.base.errors import Position
from meshpilot.cli import build_parser, main, serve_settings
from meshpilot.ir.model import (
    Backend,
    Gateway,
    GatewayListener,
    Model,
    Route,
    Rule,
    Service,
)
from meshpilot.ir.model import Endpoint as ModelEndpoint
from meshpilot.runtime import plugin_loader
from meshpilot.runtime.app import Meshpilot
from meshpilot.runtime.controller import Controller
from meshpilot.runtime.plugin_loader import load_plugins
from meshpilot.translators import Translation, plugins
from meshpilot.translators.plugins import CurrentResources, Plugin, PluginError
from meshpilot.xds.cache import SnapshotCache
from meshpilot.xds.render import message_of

Cluster = cluster_pb2.Cluster
AT = Position("policy.yaml", 1, 1)
QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"


def gateway_model() -> Model:
    """Gateway `edge` routing everything to service `reviews`: generated cluster `reviews`."""
    reviews = Service("reviews", AT, endpoints=(ModelEndpoint("127.0.0.1", 9081),))
    route = Route("shop", AT, "edge", rules=(Rule(AT, backends=(Backend("reviews"),)),))
    edge = Gateway("edge", AT, (GatewayListener("http", 8080),))
    return Model(services=(reviews,), gateways=(edge,), routes=(route,))


def upb_cluster(name: str = "ext", address: str = "10.0.0.1") -> Cluster:
    cluster = Cluster(name=name, type=Cluster.STATIC)
    cluster.connect_timeout.seconds = 1
    cluster.load_assignment.cluster_name = name
    endpoint = cluster.load_assignment.endpoints.add().lb_endpoints.add().endpoint
    endpoint.address.socket_address.address = address
    endpoint.address.socket_address.port_value = 80
    return cluster


def bp_cluster_of(name: str = "ext", address: str = "10.0.0.1") -> Any:
    """The same cluster as `upb_cluster`, as an envoy-data-plane (betterproto2) dataclass."""
    return bp_cluster.Cluster(
        name=name, type=bp_cluster.ClusterDiscoveryType.STATIC,
        connect_timeout=datetime.timedelta(seconds=1),
        load_assignment=bp_endpoint.ClusterLoadAssignment(cluster_name=name, endpoints=[
            bp_endpoint.LocalityLbEndpoints(lb_endpoints=[bp_endpoint.LbEndpoint(
                endpoint=bp_endpoint.Endpoint(address=bp_core.Address(
                    socket_address=bp_core.SocketAddress(address=address, port_value=80))))])]))


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every betterproto2 message serialized from now on, in order."""
    seen: list[Any] = []
    real = plugins._betterproto_bytes

    def counting(message: Any) -> bytes:
        seen.append(message)
        return real(message)

    monkeypatch.setattr(plugins, "_betterproto_bytes", counting)
    return seen


# ---- adding and patching -----------------------------------------------------------------------


def test_a_plugin_returning_a_protobuf_cluster_adds_it_to_the_view() -> None:
    def add(model: Model, view: str) -> list[Cluster]:
        return [upb_cluster(f"ext-{view}")]

    snapshot = Translation(gateway_model(), plugins=[add]).snapshot("edge")
    clusters = snapshot.get(types.CLUSTER)
    assert set(clusters) == {"reviews", "ext-edge"}  # generated ones stay
    assert message_of(clusters["ext-edge"]) == upb_cluster("ext-edge")
    assert set(Translation(gateway_model(), plugins=[add]).snapshot("other")
               .get(types.CLUSTER)) == {"ext-other"}


def test_plugin_resources_carry_their_references() -> None:
    def add(model: Model, view: str) -> list[Any]:
        config = route_pb2.RouteConfiguration(name="r")
        config.virtual_hosts.add(name="h", domains=["*"]).routes.add().route.cluster = "ext"
        return [config, bp_cluster.Cluster(name="e", type=bp_cluster.ClusterDiscoveryType.EDS)]

    snapshot = Translation(Model(), plugins=[add]).snapshot("a")
    assert snapshot.get(types.ROUTE)["r"].refs.clusters == {"ext"}  # for make-before-break
    assert snapshot.get(types.CLUSTER)["e"].refs.eds_name == "e"


def test_a_plugin_object_with_a_resources_method_and_its_name() -> None:
    class Routes:
        name = "routes-plugin"

        def resources(self, model: Model, view: str) -> Iterator[route_pb2.RouteConfiguration]:
            yield route_pb2.RouteConfiguration(name="extra")

    plugin = Plugin(Routes)  # a class is instantiated with no arguments
    assert plugin.name == "routes-plugin"
    snapshot = Translation(Model(), plugins=[plugin]).snapshot("any")
    assert list(snapshot.get(types.ROUTE)) == ["extra"]


def test_a_plugin_patches_a_generated_cluster_through_the_current_resources() -> None:
    seen: dict[str, Any] = {}

    def patch(model: Model, view: str, current: CurrentResources) -> list[Cluster]:
        seen["listeners"] = sorted(current[types.LISTENER])
        seen["secrets"] = len(current[types.SECRET])  # a served type the view has none of
        cluster = current[types.CLUSTER]["reviews"]  # the plugin's own copy: free to change
        cluster.connect_timeout.seconds = 7
        return [cluster]

    translation = Translation(gateway_model(), plugins=[patch])
    patched = message_of(translation.snapshot("edge").get(types.CLUSTER)["reviews"])
    assert patched.connect_timeout.seconds == 7
    assert patched.type == Cluster.EDS  # everything else as generated
    assert seen == {"listeners": ["edge/http"], "secrets": 0}
    plain = message_of(Translation(gateway_model()).snapshot("edge").get(types.CLUSTER)["reviews"])
    assert plain.connect_timeout.seconds != 7


def test_a_later_plugin_sees_and_wins_over_an_earlier_one() -> None:
    def first(model: Model, view: str) -> list[Cluster]:
        return [upb_cluster("reviews", "10.0.0.1")]

    def second(model: Model, view: str, current: CurrentResources) -> list[Cluster]:
        assert current[types.CLUSTER]["reviews"] == upb_cluster("reviews", "10.0.0.1")
        return [upb_cluster("reviews", "10.0.0.2")]

    snapshot = Translation(gateway_model(), plugins=[first, second]).snapshot("edge")
    assert message_of(snapshot.get(types.CLUSTER)["reviews"]) == upb_cluster("reviews", "10.0.0.2")


def test_current_resources_are_read_only() -> None:
    def meddle(model: Model, view: str, current: CurrentResources) -> list[Cluster]:
        current[types.CLUSTER]["new"] = upb_cluster("new")  # type: ignore[index]
        return []

    with pytest.raises(PluginError, match="raised TypeError"):
        Translation(gateway_model(), plugins=[meddle]).snapshot("edge")


# ---- the betterproto2 boundary -----------------------------------------------------------------


def test_a_betterproto_cluster_is_converted_once_to_the_same_bytes_as_protobuf(
        conversions: list[Any]) -> None:
    cluster = bp_cluster_of()

    def add(model: Model, view: str) -> list[Any]:
        return [cluster]

    plugin = Plugin(add, "bp")
    for model in (gateway_model(), Model()):  # two reloads ...
        translation = Translation(model, plugins=[plugin])
        for view in ("edge", "a", "b"):  # ... of three views each
            resource = translation.snapshot(view).get(types.CLUSTER)["ext"]
            assert resource.body == upb_cluster().SerializeToString(deterministic=True)
    assert conversions == [cluster]


def test_an_equal_betterproto_object_reuses_the_conversion_and_a_changed_one_does_not(
        conversions: list[Any]) -> None:
    address = ["10.0.0.1"]

    def fresh_each_call(model: Model, view: str) -> list[Any]:
        return [bp_cluster_of(address=address[0])]

    translation = Translation(Model(), plugins=[fresh_each_call])
    first = translation.snapshot("a").get(types.CLUSTER)["ext"]
    assert translation.snapshot("b").get(types.CLUSTER)["ext"] is first
    assert len(conversions) == 1

    address[0] = "10.0.0.2"
    changed = translation.snapshot("a").get(types.CLUSTER)["ext"]
    assert changed.body == upb_cluster(address="10.0.0.2").SerializeToString(deterministic=True)
    assert len(conversions) == 2


def test_a_betterproto_object_changed_in_place_is_converted_again(conversions: list[Any]) -> None:
    cluster = bp_cluster_of()

    def same_object(model: Model, view: str) -> list[Any]:
        return [cluster]

    translation = Translation(Model(), plugins=[same_object])
    translation.snapshot("a")
    cluster.connect_timeout = datetime.timedelta(seconds=9)
    body = translation.snapshot("a").get(types.CLUSTER)["ext"].body
    assert Cluster.FromString(body).connect_timeout.seconds == 9
    assert len(conversions) == 2


def test_the_controller_keeps_conversions_across_reloads(
        tmp_path: Path, conversions: list[Any]) -> None:
    def add(model: Model, view: str) -> list[Any]:
        return [bp_cluster_of()]  # a new, equal object every call

    cache = SnapshotCache()
    controller = Controller(policy_folder(tmp_path), cache, plugins=[add])
    assert controller.reload()
    assert controller.snapshot_blocking("edge") is not None
    assert controller.reload()
    assert controller.reload()
    assert len(conversions) == 1


def test_the_conversion_cache_is_bounded(conversions: list[Any]) -> None:
    converter = plugins.Converter(max_entries=2)
    a, b, c = (bp_cluster_of(name) for name in "abc")
    for message in (a, b, c, c, b):  # c and b stay cached ...
        converter.resource(message)
    assert len(conversions) == 3
    converter.resource(a)  # ... a was dropped
    assert len(conversions) == 4


def test_a_betterproto_assignment_is_named_by_its_cluster_name() -> None:
    def add(model: Model, view: str) -> list[Any]:
        return [bp_endpoint.ClusterLoadAssignment(cluster_name="ext")]

    snapshot = Translation(Model(), plugins=[add]).snapshot("a")
    assert list(snapshot.get(types.ENDPOINT)) == ["ext"]


def test_meshpilot_does_not_import_betterproto_by_itself() -> None:
    code = ("import sys, meshpilot.cli, meshpilot.translators.plugins, meshpilot.translators; "
            "sys.exit('betterproto2' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("returned", "message"), [
    ([{"name": "x"}], r"Plugin p: view 'a': item 0 \(dict\): unsupported dict"),
    ([Cluster()], r"Plugin p: view 'a': item 0 \(Cluster\): Cluster without a name"),
    ([address_pb2.Address()], r"unsupported type envoy.config.core.v3.Address"),
    ([upb_cluster("x"), upb_cluster("x")], r"Plugin p: view 'a': Cluster 'x' returned twice"),
    (upb_cluster("x"), r"returned a envoy.config.cluster.v3.cluster_pb2.Cluster, not an iterable"),
    ([bp_endpoint.ClusterLoadAssignment()], r"ClusterLoadAssignment without a cluster_name"),
])
def test_unusable_output_is_an_error_naming_the_plugin(returned: Any, message: str) -> None:
    with pytest.raises(PluginError, match=message) as caught:
        Translation(Model(), plugins=[Plugin(lambda model, view: returned, "p")]).snapshot("a")
    (issue,) = caught.value.issues
    assert (issue.kind, issue.name, issue.position) == ("Plugin", "p", None)


def test_a_plugin_may_return_nothing() -> None:
    snapshot = Translation(gateway_model(), plugins=[lambda model, view: None]).snapshot("edge")
    assert snapshot.version == Translation(gateway_model()).snapshot("edge").version


def policy_folder(tmp_path: Path) -> Path:
    policy = tmp_path / "policy"
    shutil.copytree(QUICKSTART, policy)
    return policy


def test_a_plugin_raising_refuses_the_reload_and_the_last_good_snapshot_stays(
        tmp_path: Path) -> None:
    failing = [False]

    def flaky(model: Model, view: str) -> list[Cluster]:
        if failing[0]:
            raise RuntimeError("database unreachable")
        return [upb_cluster("ext")]

    cache = SnapshotCache()
    controller = Controller(policy_folder(tmp_path), cache, plugins=[Plugin(flaky, "flaky")])
    assert controller.reload()
    good = controller.snapshot_blocking("edge")
    assert good is not None and "ext" in good.get(types.CLUSTER)

    failing[0] = True
    assert not controller.reload()
    assert cache.get("edge") is good
    status = controller.status.describe()  # what /debug/status shows
    assert status["ok"] is False
    assert status["errors"] == ["Plugin flaky: view 'edge': raised RuntimeError: database "
                                "unreachable"]

    failing[0] = False
    assert controller.reload()
    assert controller.status.describe()["ok"] is True


def test_a_plugin_failing_for_a_view_first_asked_for_later_sends_it_nothing(
        tmp_path: Path) -> None:
    def picky(model: Model, view: str) -> list[Cluster]:
        if view == "bad":
            raise ValueError("no such tenant")
        return []

    cache = SnapshotCache()
    controller = Controller(policy_folder(tmp_path), cache, plugins=[Plugin(picky, "picky")])
    assert controller.reload()
    assert controller.snapshot_blocking("edge") is not None
    with pytest.raises(PluginError):
        controller.snapshot_blocking("bad")
    assert cache.get("bad") is None
    assert controller.status.describe()["errors"] == [
        "Plugin picky: view 'bad': raised ValueError: no such tenant"]


# ---- discovery ---------------------------------------------------------------------------------


@pytest.fixture
def installed_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A distribution on sys.path declaring plugin `demo` (and a broken one), as pip would
    install it; returns the module name."""
    site = tmp_path / "site"
    site.mkdir()
    module = f"meshpilot_demo_plugin_{abs(hash(tmp_path)) % 10**8}"
    (site / f"{module}.py").write_text(textwrap.dedent("""
        from envoy.config.cluster.v3.cluster_pb2 import Cluster

        def plugin(model, view):
            return [Cluster(name="demo-" + view, type=Cluster.STATIC)]
    """))
    dist = site / "meshpilot_demo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: meshpilot-demo-plugin\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[meshpilot.plugins]\ndemo = {module}:plugin\n"
                                           f"broken = {module}:missing\n")
    monkeypatch.syspath_prepend(str(site))
    yield module
    sys.modules.pop(module, None)


def test_load_plugins_finds_an_entry_point_by_name(installed_demo: str) -> None:
    (plugin,) = load_plugins(["demo"])
    assert plugin.name == "demo"
    snapshot = Translation(Model(), plugins=[plugin]).snapshot("edge")
    assert list(snapshot.get(types.CLUSTER)) == ["demo-edge"]
    assert {"demo", "broken"} <= set(plugin_loader.installed())


def test_load_errors_name_the_plugin(installed_demo: str) -> None:
    with pytest.raises(PluginError, match=r"^Plugin nope: no entry point 'nope' in group "
                                          r"meshpilot.plugins \(installed: .*demo"):
        load_plugins(["nope"])
    with pytest.raises(PluginError, match=r"^Plugin broken: cannot load .*:missing: "
                                          r"AttributeError"):
        load_plugins(["broken"])


def test_serve_plugin_option_reaches_the_controller(installed_demo: str, tmp_path: Path) -> None:
    policy = policy_folder(tmp_path)
    args = build_parser().parse_args(["serve", "--policy", str(policy), "--plugin", "demo"])
    settings = serve_settings(args)
    assert settings.plugins == ("demo",)
    app = Meshpilot(settings)
    assert [p.name for p in app.controller.plugins] == ["demo"]
    assert app.controller.reload()
    built = app.controller.snapshot_blocking("edge")
    assert built is not None and "demo-edge" in built.get(types.CLUSTER)

    no_plugins = serve_settings(build_parser().parse_args(["serve", "--policy", str(policy)]))
    assert no_plugins.plugins == ()


def test_serve_with_an_unknown_plugin_exits_before_serving(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = policy_folder(tmp_path)
    assert main(["serve", "--policy", str(policy), "--plugin", "nope"]) == 2
    assert "Plugin nope: no entry point 'nope'" in capsys.readouterr().err
