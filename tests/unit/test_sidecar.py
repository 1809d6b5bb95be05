"""Sidecars without Envoy: the `sidecar:` block and `service:` Routes as the loader reads and
checks them, and what a sidecar's view receives (scoping included). See docs/mesh.md."""

from __future__ import annotations

import re

import pytest
from envoy.config.route.v3.route_pb2 import RouteConfiguration

from meshpilot.base import types
from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import load_policy_text
from meshpilot.ir.model import Call, Sidecar
from meshpilot.translators import Translation

A_CALLS_B = """
kind: Service
name: a
sidecar: {port: 15006, outbound_port: 15001, calls: [{service: b, local_port: 9001}]}
---
kind: Service
name: b
endpoints: [10.0.0.2:15006]
sidecar: {port: 15006, app: 9090}
"""


def issues(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text)
    return [re.sub(r":\d+:\d+:", ":L:C:", str(issue), count=1) for issue in caught.value.issues]


def names_of(snapshot, type_url: str) -> list[str]:
    return sorted(snapshot.get(type_url).names())


def test_sidecar_block_is_read_with_defaults() -> None:
    model = load_policy_text(A_CALLS_B)
    assert model.service("a").sidecar == Sidecar(port=15006, outbound_port=15001,
                                                  calls=(Call("b", 9001),), mtls_inherited=True)
    b = model.service("b").sidecar
    assert (b.address, b.app_host, b.app_port, b.calls) == ("0.0.0.0", "127.0.0.1", 9090, ())
    assert model.service("b").sidecar is not None and load_policy_text(
        "kind: Service\nname: x\n").services[0].sidecar is None


@pytest.mark.parametrize(("text", "expected"), [
    (A_CALLS_B.replace("service: b,", "service: bb,"),
     'Service a: sidecar.calls[0].service: no Service named "bb" (did you mean "b"?)'),
    ("kind: Service\nname: a\nsidecar: {port: 1, calls: [b]}\n---\nkind: Service\nname: b\n",
     "Service a: sidecar.calls[0]: the application could not reach b: give it a local_port"),
    ("kind: Service\nname: a\nsidecar: {port: 1, outbound_port: 1}\n",
     "Service a: sidecar.outbound_port: port 1 is already the inbound port"),
    ("kind: Service\nname: a\nsidecar: {port: 8080}\n",
     "Service a: sidecar.port: the application cannot listen on the sidecar's own inbound port"),
    ("kind: Service\nname: a\nsidecar: {app: 9000}\n",
     "Service a: sidecar: a sidecar needs a port"),
    ("kind: Service\nname: a\nsidecar: {port: 1, outbound_port: 2, calls: [b, b]}\n---\n"
     "kind: Service\nname: b\n", 'Service a: sidecar.calls[1]: service "b" is listed twice'),
    ("kind: Service\nname: a\nsidecar: {port: 1, outbound_port: 2, calls: [db]}\n---\n"
     "kind: Service\nname: db\nprotocol: tcp\n",
     "Service a: sidecar.calls[0]: Service db speaks protocol tcp"),
    ("kind: Service\nname: a\nsidecar: {prot: 1}\n",
     'Service a: sidecar.prot: unknown key "prot" (did you mean "port"?)'),
    ("kind: Service\nname: a\nsidecar: {port: 1, tracing: {provider: zipkin, collector: zipkn}}"
     "\n---\nkind: Service\nname: zipkin\n",
     'Service a: sidecar.tracing.collector: no Service named "zipkn" (did you mean "zipkin"?)'),
    ("kind: Service\nname: a\nsidecar: {port: 1, tracing: {provider: opentelemetry, "
     "collector: otel}}\n---\nkind: Service\nname: otel\n",
     "Service a: sidecar.tracing.collector: Service otel speaks protocol http; an OpenTelemetry "
     "collector receives OTLP over gRPC"),
    ("kind: Service\nname: a\nsidecar: {port: 1, tracing: {provider: zipkin, collector: z, "
     "service_name: x}}\n---\nkind: Service\nname: z\n",
     "Service a: sidecar.tracing.service_name: Envoy's Zipkin tracer names the spans' service"),
    ("kind: Service\nname: a\nprotocol: tcp\nsidecar: {port: 1, tracing: {provider: zipkin, "
     "collector: z}}\n---\nkind: Service\nname: z\n",
     "Service a: sidecar.tracing: tracing follows HTTP requests; this sidecar carries tcp only"),
])
def test_sidecar_errors(text: str, expected: str) -> None:
    found = issues(text)
    assert any(expected in issue for issue in found), found


ROUTE = "---\nkind: Route\nname: r\n{attach}\nrules: [{{backends: [b]}}]\n"


@pytest.mark.parametrize(("attach", "expected"), [
    ("service: bb", 'Route r: service: no Service named "bb" (did you mean "b"?)'),
    ("service: b\ngateway: edge", 'Route r: service: "service" cannot be used together with '
                                  '"gateway"'),
    ("service: b\nhosts: [x.example]", 'Route r: hosts: "hosts" applies to a Route attached '
                                       "to a gateway"),
    ("name: r", "Route r: a Route needs one of gateway or service"),
])
def test_service_route_errors(attach: str, expected: str) -> None:
    text = A_CALLS_B + ROUTE.format(attach=attach).replace("name: r\nname: r", "name: r")
    found = issues(text)
    assert any(expected in issue for issue in found), found


def test_one_route_per_service() -> None:
    text = A_CALLS_B + ROUTE.format(attach="service: b") + ROUTE.format(
        attach="service: b").replace("name: r\n", "name: s\n")
    assert any("Service b already has Route r attached" in i for i in issues(text))


def test_sidecar_view_receives_inbound_and_its_callees_only() -> None:
    snapshot = Translation(load_policy_text(A_CALLS_B)).snapshot("a")
    assert names_of(snapshot, types.LISTENER) == ["inbound/a", "outbound", "outbound/b"]
    assert names_of(snapshot, types.ROUTE) == ["inbound/a", "outbound", "outbound/b"]
    assert names_of(snapshot, types.CLUSTER) == ["b", "inbound|a"]
    assert names_of(snapshot, types.ENDPOINT) == ["b"]  # B's sidecar inbound address
    b = Translation(load_policy_text(A_CALLS_B)).snapshot("b")
    assert names_of(b, types.LISTENER) == ["inbound/b"]
    assert names_of(b, types.CLUSTER) == ["inbound|b"]


def test_a_thousand_service_mesh_sends_each_sidecar_its_callees_only() -> None:
    documents = [f"kind: Service\nname: s{i:04}\nendpoints: [10.1.{i // 250}.{i % 250 + 1}:15006]"
                 f"\nsidecar: {{port: 15006, outbound_port: 15001, calls: "
                 f"[s{(i + 1) % 1000:04}, s{(i + 2) % 1000:04}]}}\n"
                 for i in range(1000)]
    translation = Translation(load_policy_text("---\n".join(documents)))
    snapshot = translation.snapshot("s0500")
    assert names_of(snapshot, types.CLUSTER) == ["inbound|s0500", "s0501", "s0502"]
    assert names_of(snapshot, types.ENDPOINT) == ["s0501", "s0502"]
    assert names_of(snapshot, types.LISTENER) == ["inbound/s0500", "outbound"]


def test_route_attached_to_a_service_is_its_virtual_host_in_both_styles() -> None:
    text = A_CALLS_B.replace("endpoints: [10.0.0.2:15006]", """endpoints:
  - {address: 10.0.0.2:15006, labels: {version: v1}}
  - {address: 10.0.0.3:15006, labels: {version: v2}}
subsets: {v1: {version: v1}, v2: {version: v2}}""") + """---
kind: Route
name: b-split
service: b
rules:
  - backends: [{service: b, subset: v1, weight: 80}, {service: b, subset: v2, weight: 20}]
    retries: {attempts: 2}
"""
    snapshot = Translation(load_policy_text(text)).snapshot("a")
    assert names_of(snapshot, types.CLUSTER) == ["b/v1", "b/v2", "inbound|a"]
    for name, domains in (("outbound/b", ["*"]), ("outbound", ["b", "b:15001", "b:15006"])):
        message = RouteConfiguration.FromString(snapshot.get(types.ROUTE)[name].body)
        (vhost,) = message.virtual_hosts
        assert (vhost.name, list(vhost.domains)) == ("b", domains)
        (entry,) = vhost.routes
        assert entry.name == "b-split/rules[0]"
        assert [(c.name, c.weight.value) for c in entry.route.weighted_clusters.clusters] == \
            [("b/v1", 80), ("b/v2", 20)]
        assert entry.route.retry_policy.num_retries.value == 2


def test_a_service_without_sidecar_gets_nothing_and_gateways_ignore_service_routes() -> None:
    text = A_CALLS_B + """---
kind: Gateway
name: edge
listeners: [{name: http, port: 8080}]
---
kind: Route
name: r
service: b
rules: [{direct_response: {status: 200}}]
"""
    translation = Translation(load_policy_text(text + "---\nkind: Service\nname: plain\n"))
    assert not names_of(translation.snapshot("plain"), types.LISTENER)
    edge = translation.snapshot("edge")
    assert names_of(edge, types.CLUSTER) == []


def test_a_traced_sidecar_gets_the_collectors_cluster_and_traced_listeners() -> None:
    from meshpilot.xds.render import snapshot_to_dict
    text = A_CALLS_B.replace("sidecar: {port: 15006, outbound_port",
                             "sidecar: {tracing: {provider: zipkin, collector: zipkin}, "
                             "port: 15006, outbound_port") + (
        "---\nkind: Service\nname: zipkin\nendpoints: [10.0.0.9:9411]\n")
    snapshot = Translation(load_policy_text(text)).snapshot("a")
    assert names_of(snapshot, types.CLUSTER) == ["b", "inbound|a", "zipkin"]
    listeners = snapshot_to_dict(snapshot)["resources"]["listeners"]
    for listener in listeners:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        provider = manager["tracing"]["provider"]
        assert provider["typed_config"]["collector_cluster"] == "zipkin", listener["name"]
        expected = "INBOUND" if listener["name"].startswith("inbound") else "OUTBOUND"
        assert listener["traffic_direction"] == expected
    # b traces nothing and does not receive the collector.
    b = Translation(load_policy_text(text)).snapshot("b")
    assert "zipkin" not in names_of(b, types.CLUSTER)
    assert "tracing" not in str(snapshot_to_dict(b)["resources"]["listeners"])
