"""VHDS (`xds/vhds.py`, `--vhds`): a view's route configurations split into a thin
configuration and one VirtualHost resource per virtual host, and the stream state machine
serving that layout to delta ADS streams only. Driven directly: no gRPC, no Envoy (the real
Envoy is tests/e2e/test_vhds_traffic.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from envoy.config.route.v3.route_components_pb2 import VirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.service.discovery.v3 import discovery_pb2
from xds_client import node

from meshpilot.base import types
from meshpilot.inputs.loader import load_policy_text
from meshpilot.translators import Translation
from meshpilot.translators.provenance import origins_of
from meshpilot.xds.cache import SnapshotCache
from meshpilot.xds.csds import client_config
from meshpilot.xds.resources import Resource, ResourceMap
from meshpilot.xds.snapshot import Snapshot
from meshpilot.xds.stream import XdsStream
from meshpilot.xds.vhds import VhdsLayout, namespace_of, split_name, vhost_resource_name

ROUTE, VHOST = types.ROUTE, types.VIRTUAL_HOST

POLICY = """\
kind: Service
name: web
endpoints: [127.0.0.1:9081]
---
kind: Service
name: api
endpoints: [127.0.0.1:9082]
---
kind: Gateway
name: edge
listeners:
  - {{name: http, port: 8080}}
  - {{name: other, port: 8081}}
---
kind: Route
name: shop
gateway: edge
hosts: [shop.example.com, "*.shop.example.com"]
listeners: [http]
rules:
  - match: {{path: {{prefix: /}}}}
    backends: [{shop_to}]
    cors: {{allow_origins: ["https://app.example"]}}
---
kind: Route
name: blog
gateway: edge
hosts: [blog.example.com]
rules:
  - match: {{path: {{prefix: /}}}}
    backends: [web]
{extra}"""

DOCS = """---
kind: Route
name: docs
gateway: edge
hosts: [docs.example.com]
listeners: [http]
rules:
  - match: {path: {prefix: /}}
    backends: [api]
"""


def snapshot(shop_to: str = "web", extra: str = "") -> Snapshot:
    return Translation(load_policy_text(POLICY.format(shop_to=shop_to, extra=extra))
                       ).snapshot("edge")


def parse(resource: Resource) -> Any:
    cls = RouteConfiguration if resource.type_url == ROUTE else VirtualHost
    return cls.FromString(resource.body)


# ----- the layout ---------------------------------------------------------------------------------


def test_names_are_namespaced_by_the_route_configuration_and_round_trip() -> None:
    name = vhost_resource_name("ns/edge/http", "default/shop%1")
    assert name == "ns/edge/http/default%2Fshop%251"
    assert namespace_of(name) == "ns/edge/http"  # Envoy's namespace: before the last "/"
    assert split_name(name) == ("ns/edge/http", "default/shop%1")


def test_the_layout_says_what_the_whole_configuration_says() -> None:
    snap = snapshot()
    layout = snap.vhds()
    assert sorted(layout.routes) == sorted(snap.get(ROUTE)) == ["edge/http", "edge/other"]
    assert sorted(layout.vhosts) == ["edge/http/blog", "edge/http/shop", "edge/other/blog"]
    for name, whole in snap.get(ROUTE).items():
        thin = parse(layout.routes[name])
        assert not thin.virtual_hosts
        assert thin.vhds.config_source.HasField("ads")
        # Envoy merges the VHDS virtual hosts in: renamed back, they are the whole one's.
        merged = RouteConfiguration()
        merged.CopyFrom(thin)
        merged.ClearField("vhds")
        for vhost_name in sorted(n for n in layout.vhosts if namespace_of(n) == name):
            vhost = parse(layout.vhosts[vhost_name])
            assert vhost.name == vhost_name
            vhost.name = split_name(vhost_name)[1]
            merged.virtual_hosts.append(vhost)
        assert merged == parse(whole)
        assert merged.ignore_port_in_host_matching  # a Host with a port matches as today
    shop = parse(layout.vhosts["edge/http/shop"])
    assert list(shop.domains) == ["*.shop.example.com", "shop.example.com"]
    assert "envoy.filters.http.cors" in shop.routes[0].typed_per_filter_config
    assert layout.vhosts["edge/http/shop"].refs.clusters == {"web"}
    assert layout.routes["edge/http"].refs.clusters == frozenset()  # its vhosts name them


def test_an_edit_makes_only_the_edited_virtual_host_again() -> None:
    cache = SnapshotCache()
    first = snapshot()
    cache.set(first)
    before = first.vhds()
    second = snapshot(shop_to="api")
    cache.set(second)  # the cache hands the earlier layout on
    after = second.vhds()
    assert after.routes is before.routes  # the thin configurations did not change: one map
    changed = [n for n in after.vhosts if after.vhosts[n] is not before.vhosts[n]]
    assert changed == ["edge/http/shop"]
    assert after.vhosts["edge/http/shop"].refs.clusters == {"api"}
    assert after.vhosts.diff_from(before.vhosts) == (("edge/http/shop",), ())
    # Another edit elsewhere (a cluster): the route configurations' layout is kept whole.
    third = Snapshot(second.view, {**{t: second.get(t) for t in second.type_urls()},
                                   types.CLUSTER: ResourceMap(types.CLUSTER)})
    assert cache.set(third)
    assert third.vhds() is after


def test_configurations_left_whole() -> None:
    empty = Resource.from_message(ROUTE, "empty", RouteConfiguration(name="empty"))
    already = RouteConfiguration(name="already")
    already.vhds.config_source.ads.SetInParent()
    already.virtual_hosts.add(name="x", domains=["x"])
    twice = RouteConfiguration(name="twice")
    twice.virtual_hosts.add(name="x", domains=["a"])
    twice.virtual_hosts.add(name="x", domains=["b"])
    resources = [empty, Resource.from_message(ROUTE, "already", already),
                 Resource.from_message(ROUTE, "twice", twice),
                 Resource(ROUTE, "garbage", b"\xff\xff\xff", Resource.from_message(
                     ROUTE, "g", RouteConfiguration()).refs)]
    layout = VhdsLayout(ResourceMap(ROUTE, resources))
    assert len(layout.vhosts) == 0
    assert all(layout.routes[r.name] is r for r in resources)  # served as they are


# ----- the stream ---------------------------------------------------------------------------------


class Client:
    """A delta (or SotW) ADS stream opened as Envoy opens it, answering every response."""

    def __init__(self, snap: Snapshot, *, delta: bool = True, vhds: bool = True):
        self.stream = XdsStream(delta=delta, ads=True, vhds=vhds)
        self.delta = delta
        self.stream.on_snapshot(snap)
        self.now = 0.0
        self.got: dict[str, list[Any]] = {}

    def request(self, type_url: str, names: list[str] | None = None, *, nonce: str = "",
                unsubscribe: list[str] | None = None) -> list[Any]:
        if self.delta:
            request: Any = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url, resource_names_subscribe=names or [],
                resource_names_unsubscribe=unsubscribe or [], response_nonce=nonce)
        else:
            request = discovery_pb2.DiscoveryRequest(type_url=type_url,
                                                     resource_names=names or [],
                                                     response_nonce=nonce)
        request.node.CopyFrom(node())
        self.now += 1
        self.stream.on_request(request, self.now)
        return self.pump()

    def pump(self) -> list[Any]:
        out = []
        for sent in self.stream.responses(self.now):
            cls = (discovery_pb2.DeltaDiscoveryResponse if self.delta
                   else discovery_pb2.DiscoveryResponse)
            message = cls.FromString(sent.payload)
            self.got.setdefault(sent.type_url, []).append(message)
            out.append(message)
            ack: Any = (discovery_pb2.DeltaDiscoveryRequest if self.delta
                        else discovery_pb2.DiscoveryRequest)(
                type_url=sent.type_url, response_nonce=sent.nonce)
            if not self.delta:
                ack.version_info = sent.version
                ack.resource_names.extend(self.stream.types[sent.type_url].names)
            self.now += 1
            self.stream.on_request(ack, self.now)
        return out + (self.pump() if out else [])

    def set(self, snap: Snapshot) -> list[Any]:
        self.stream.on_snapshot(snap)
        return self.pump()

    def open(self) -> None:
        self.request(types.CLUSTER)
        self.request(types.ENDPOINT, ["web", "api"])
        self.request(types.LISTENER)
        self.request(ROUTE, ["edge/http", "edge/other"])


def names(response: Any) -> list[str]:
    return [r.name for r in response.resources]


def test_a_delta_ads_stream_gets_thin_configurations_then_every_virtual_host() -> None:
    client = Client(snapshot())
    client.open()
    (routes,) = client.got[ROUTE]
    for entry in routes.resources:
        config = RouteConfiguration.FromString(entry.resource.value)
        assert config.HasField("vhds") and not config.virtual_hosts
    # Envoy's VHDS subscription: a wildcard one, its first request naming nothing.
    (vhosts,) = client.request(VHOST)
    assert vhosts.type_url == VHOST
    assert names(vhosts) == ["edge/http/blog", "edge/http/shop", "edge/other/blog"]
    assert client.stream.types[VHOST].status == "SYNCED"
    # CSDS reports them as the stream serves them, synced with the newest layout.
    config = client_config(SimpleNamespace(stream=client.stream), include_contents=False)
    statuses = {(c.type_url, c.name): c.config_status for c in config.generic_xds_configs}
    assert statuses[(VHOST, "edge/http/shop")] == 1  # SYNCED
    assert statuses[(ROUTE, "edge/http")] == 1


def test_a_one_route_edit_is_that_virtual_host_alone_and_a_removal_is_said() -> None:
    client = Client(snapshot())
    client.open()
    client.request(VHOST)
    sent = client.set(snapshot(shop_to="api"))
    # The cluster it now sends to first (make before break), then its virtual host alone.
    assert [r.type_url for r in sent] == [types.CLUSTER, types.ENDPOINT, VHOST]
    edit = sent[-1]
    assert names(edit) == ["edge/http/shop"]
    assert not edit.removed_resources
    (added,) = [r for r in client.set(snapshot(shop_to="api", extra=DOCS)) if r.type_url == VHOST]
    assert names(added) == ["edge/http/docs"]
    (removed,) = [r for r in client.set(snapshot(shop_to="api")) if r.type_url == VHOST]
    assert names(removed) == [] and list(removed.removed_resources) == ["edge/http/docs"]


def test_a_subscription_naming_a_configuration_gets_its_virtual_hosts_only() -> None:
    client = Client(snapshot())
    client.open()
    (vhosts,) = client.request(VHOST, ["edge/other"])
    assert names(vhosts) == ["edge/other/blog"]
    sent = client.set(snapshot(shop_to="api"))
    assert VHOST not in {r.type_url for r in sent}  # not the other configuration's host
    (more,) = client.request(VHOST, ["edge/http"], nonce=str(client.stream._nonce))
    assert names(more) == ["edge/http/blog", "edge/http/shop"]
    client.request(VHOST, unsubscribe=["edge/other"], nonce=str(client.stream._nonce))
    assert set(client.stream.types[VHOST].known) == {"edge/http/blog", "edge/http/shop"}


def test_sotw_and_streams_without_vhds_get_the_whole_configurations() -> None:
    snap = snapshot()
    for client in (Client(snap, delta=False), Client(snap, vhds=False)):
        client.open()
        (routes,) = client.got[ROUTE]
        assert routes.resources
        for entry in routes.resources:
            whole = (entry.resource.value if client.delta else entry.value)
            assert RouteConfiguration.FromString(whole) == parse(snap.get(ROUTE)[
                RouteConfiguration.FromString(whole).name])
        # Nothing of the kind to send (a delta wildcard subscription is answered, empty).
        assert all(not r.resources for r in client.request(VHOST))


def test_a_refused_virtual_host_leads_back_to_its_route() -> None:
    model = load_policy_text(POLICY.format(shop_to="web", extra=""))
    origins = origins_of(model, "edge", VHOST, "edge/http/shop")
    # The Route (line 15), then its listener (edge's listeners[0]), then the Gateway.
    assert [(o.kind, o.name, o.field, o.position.line) for o in origins] == [
        ("Route", "shop", "", 15), ("Gateway", "edge", "listeners[0]", 12),
        ("Gateway", "edge", "", 9)], origins


def _answer_all_but(client: Client, type_url: str) -> list[Any]:
    """ACK every response but those of `type_url`, which are returned unanswered."""
    kept = []
    while out := client.stream.responses(client.now):
        for o in out:
            if o.type_url == type_url:
                kept.append(o)
            else:
                client.request(o.type_url, nonce=o.nonce)
    return kept


def test_a_refused_virtual_host_is_held_back_and_the_rest_goes_out() -> None:
    client = Client(snapshot())
    client.open()
    client.request(VHOST)
    stream = client.stream
    stream.on_snapshot(snapshot(extra=DOCS))
    (response,) = _answer_all_but(client, VHOST)
    assert response.names == ("edge/http/docs",)
    nack = discovery_pb2.DeltaDiscoveryRequest(type_url=VHOST, response_nonce=response.nonce)
    nack.error_detail.message = "duplicate domain docs.example.com"
    client.now += 1
    stream.on_request(nack, client.now)
    (held,) = stream.held.all()
    assert (held.type_url, held.name) == (VHOST, "edge/http/docs")
    # Never acknowledged: it is left out (said removed, as Envoy does not hold it) ...
    (out,) = _answer_all_but(client, VHOST)
    assert out.names == () and out.removed == ("edge/http/docs",)
    client.request(VHOST, nonce=out.nonce)
    # ... and CSDS shows it refused with Envoy's message.
    config = client_config(SimpleNamespace(stream=stream), include_contents=False)
    (entry,) = [c for c in config.generic_xds_configs if c.name == "edge/http/docs"]
    assert entry.error_state.details == "duplicate domain docs.example.com"
    # Another Route's edit still goes out, and the refused content is not sent again.
    stream.on_snapshot(snapshot(shop_to="api", extra=DOCS))
    (edit,) = _answer_all_but(client, VHOST)
    assert edit.names == ("edge/http/shop",)


def test_a_layout_made_edit_by_edit_equals_one_made_whole() -> None:
    """Random edits (a virtual host changed, added, removed, renamed; the configuration's own
    fields changed; several at once), each layout made from the one before: the same thin
    configurations, virtual hosts and map versions as a layout made from nothing."""
    import random

    rng = random.Random(18)
    hosts = {f"h{i:03d}": f"c{i}" for i in range(60)}
    headers = 0

    def config(name: str) -> Resource:
        message = RouteConfiguration(name=name, ignore_port_in_host_matching=True)
        for host in sorted(hosts):
            vhost = message.virtual_hosts.add(name=host, domains=[f"{host}.example"])
            vhost.routes.add(match={"prefix": "/"}, route={"cluster": hosts[host]})
        message.response_headers_to_remove.extend(f"x-{i}" for i in range(headers))
        return Resource.from_message(ROUTE, name, message)

    layout = VhdsLayout(ResourceMap(ROUTE, [config("edge/http"), config("edge/other")]))
    for step in range(200):  # enough edits for runs to be merged again (_MAX_PARTS)
        for _ in range(rng.choice((1, 1, 1, 2, 5))):
            kind = rng.random()
            host = rng.choice(sorted(hosts))
            if kind < 0.5:
                hosts[host] = f"c{rng.randrange(1000)}" * rng.randrange(1, 4)
            elif kind < 0.7:
                hosts[f"h{rng.randrange(1000):03d}x"] = "new"
            elif kind < 0.85 and len(hosts) > 1:
                del hosts[host]
            else:
                headers = rng.randrange(3)
        names = ["edge/http"] + (["edge/other"] if step % 7 else [])
        source = ResourceMap(ROUTE, [config(n) for n in names])
        layout = VhdsLayout(source, layout)
        whole = VhdsLayout(source)
        assert layout.routes.version == whole.routes.version, step
        assert layout.vhosts.version == whole.vhosts.version, step
        assert layout.vhosts.names_version == whole.vhosts.names_version, step
        assert list(layout.vhosts) == list(whole.vhosts), step
        for name, resource in whole.vhosts.items():
            assert layout.vhosts[name].body == resource.body, (step, name)
            assert layout.vhosts[name].refs == resource.refs, (step, name)
