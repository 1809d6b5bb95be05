"""End to end: `meshpilot serve --vhds` and real Envoys, one on delta ADS (VHDS) and one on SotW
(the whole route configuration), each the gateway of a policy of its own, alike: the same hosts are served the same way by both
(exact and wildcard hosts, a Host header with a port, 404 for an unknown host, per-route
configs), and a one-Route edit reaches the delta Envoy as that Route's virtual host alone, as
the server counts the bytes of its responses by type."""

from __future__ import annotations

import json

import pytest
from envoy.config.route.v3.route_components_pb2 import VirtualHost
from google.protobuf import json_format
from support import eventually, free_port, http_get, write_atomically

import meshpilot.translators  # noqa: F401  (every per-filter config's message, for ParseDict)

pytestmark = pytest.mark.envoy

FILLERS = 200  # Routes besides the three the test sends traffic to
ENVELOPE = 256  # at most, the bytes of a delta response around the resources it carries

SERVICES = """
kind: Service
name: a
endpoints: ["127.0.0.1:{a}"]
---
kind: Service
name: b
endpoints: ["127.0.0.1:{b}"]
"""

POLICY = """---
kind: Gateway
name: {gateway}
listeners:
  - {{name: http, port: {port}, address: 127.0.0.1}}
---
kind: Route
name: {gateway}-exact
gateway: {gateway}
hosts: [shop.example.com]
rules:
  - match: {{path: {{prefix: /}}}}
    backends: [{exact_to}]
    response_headers: {{set: {{x-edit: "{edit}"}}}}
---
kind: Route
name: {gateway}-wild
gateway: {gateway}
hosts: ["*.wild.example"]
rules:
  - match: {{path: {{prefix: /}}}}
    backends: [b]
---
kind: Route
name: {gateway}-guarded
gateway: {gateway}
hosts: [guarded.example.com]
rules:
  - match: {{path: {{prefix: /}}}}
    direct_response: {{status: 200}}
    authorization: {{action: ALLOW, rules: []}}
"""

FILLER = """---
kind: Route
name: {gateway}-filler-{i}
gateway: {gateway}
hosts: [filler-{i}.example.com]
rules:
  - match: {{path: {{prefix: /}}}}
    backends: [a]
"""


def _policy(ports: dict[str, int], exact_to: str, edit: str) -> str:
    """Gateway `delta` and gateway `sotw`, each with the same Routes (named after it)."""
    return SERVICES.format(**ports) + "".join(
        POLICY.format(gateway=g, port=ports[g], exact_to=exact_to, edit=edit) + "".join(
            FILLER.format(gateway=g, i=i) for i in range(FILLERS)) for g in ("delta", "sotw"))


def _get(port: int, host: str) -> tuple[int, dict[str, str], str | None]:
    status, headers, body = http_get(f"http://127.0.0.1:{port}/", {"Host": host})
    backend = json.loads(body).get("backend") if status == 200 and body.startswith(b"{") \
        else None
    return status, {k.lower(): v for k, v in headers.items()}, backend


def _route_configs(envoy) -> list[dict]:
    """The route configurations Envoy holds (from RDS, VHDS virtual hosts merged in)."""
    dump = envoy.config_dump(resource="dynamic_route_configs")
    return [c["route_config"] for c in dump.get("configs", [])]


def _sent(mp, short: str) -> float:
    return mp.metric("meshpilot_xds_bytes_sent_total", type=short)


def test_vhds_serves_hosts_as_today_and_a_one_route_edit_is_its_virtual_host(
        tmp_path, echo_factory, meshpilot_factory, envoy_factory):
    ports = {"a": echo_factory("a").port, "b": echo_factory("b").port,
             "delta": free_port(), "sotw": free_port()}
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    write_atomically(policy_dir / "edge.yaml", _policy(ports, "a", "one"))
    mp = meshpilot_factory(policy_dir, extra_args=("--insecure-xds", "--vhds"))
    delta = envoy_factory(mp.bootstrap("delta-1", "delta", delta=True), name="delta",
                          ready_timeout=30)
    sotw = envoy_factory(mp.bootstrap("sotw-1", "sotw"), name="sotw", ready_timeout=30)
    served = {"delta": ports["delta"], "sotw": ports["sotw"]}

    for kind, port in served.items():
        assert eventually(lambda p=port: _get(p, "shop.example.com")[2] == "a",
                          what=f"{kind}: traffic to the exact host")
        assert _get(port, "shop.example.com:8080")[2] == "a", kind  # the port is not compared
        assert _get(port, "x.wild.example")[2] == "b", kind
        assert _get(port, "deep.x.wild.example:9999")[2] == "b", kind
        assert _get(port, "wild.example")[0] == 404, kind  # a wildcard needs a label more
        assert _get(port, "unknown.example.com")[0] == 404, kind
        assert _get(port, "filler-7.example.com")[2] == "a", kind
        assert _get(port, "guarded.example.com")[0] == 403, kind  # its per-route RBAC

    # The delta Envoy holds the thin configuration and every virtual host through VHDS.
    (config,) = _route_configs(delta)
    assert config["vhds"]["config_source"]["ads"] == {}
    vhosts = {v["name"]: v for v in config["virtual_hosts"]}
    assert len(vhosts) == FILLERS + 3
    assert vhosts["delta/http/delta-exact"]["domains"] == ["shop.example.com"]
    # Envoy's own counters: the VHDS subscription of the route configuration took updates.
    reloads = {k: v for k, v in delta.stats().items()
               if ".vhds.delta/http." in k and k.endswith("config_reload")}
    assert reloads and all(v >= 1 for v in reloads.values()), reloads
    (whole,) = _route_configs(sotw)
    assert "vhds" not in whole and len(whole["virtual_hosts"]) == FILLERS + 3

    before = {short: _sent(mp, short) for short in ("routes", "virtual_hosts")}
    write_atomically(policy_dir / "edge.yaml", _policy(ports, "b", "two"))
    for kind, port in served.items():
        eventually(lambda p=port: _get(p, "shop.example.com")[1].get("x-edit") == "two",
                   what=f"{kind}: the edit")
        assert _get(port, "shop.example.com")[2] == "b", kind
        assert _get(port, "filler-7.example.com")[2] == "a", kind
    eventually(lambda: all(t["status"] == "SYNCED" for p in mp.proxies()
                           for t in p["types"].values()), what="both Envoys to ACK the edit")
    # Only each stream's first response said who sent it; Envoy still knows.
    for envoy in (delta, sotw):
        readout = envoy.admin_get("/stats?filter=^control_plane.identifier$")
        assert readout.strip() == 'control_plane.identifier: "meshpilot"', readout
    routes_bytes = _sent(mp, "routes") - before["routes"]
    vhost_bytes = _sent(mp, "virtual_hosts") - before["virtual_hosts"]

    # The SotW Envoy was sent the whole configuration again; the delta one only the virtual
    # host of the Route that changed (its thin configuration did not change).
    edited = eventually(lambda: next(
        (v for c in _route_configs(delta) for v in c["virtual_hosts"]
         if v["name"] == "delta/http/delta-exact" and "two" in json.dumps(v)), None),
        what="the edited virtual host in Envoy's config dump")
    vhost_size = len(json_format.ParseDict(edited, VirtualHost()).SerializeToString())
    whole_size = sum(len(json_format.ParseDict(v, VirtualHost()).SerializeToString())
                     for v in whole["virtual_hosts"])
    assert routes_bytes >= whole_size > 0, (routes_bytes, whole_size)
    # One response carrying that virtual host: its bytes plus the envelope (type URLs, name,
    # version, nonce), a fixed ~200 bytes whatever the number of Routes.
    assert vhost_size < vhost_bytes <= vhost_size + ENVELOPE, (vhost_bytes, vhost_size)
    assert vhost_bytes * 50 < routes_bytes, (vhost_bytes, routes_bytes)

    # meshpilot restarts: the delta Envoy resumes with the versions it holds
    # (initial_resource_versions) and is re-sent no virtual host; the next edit is one again.
    mp.stop()
    mp.start()
    eventually(lambda: len(mp.proxies()) == 2 and all(
        t["status"] == "SYNCED" for p in mp.proxies() for t in p["types"].values()),
        what="both Envoys back and in sync")
    assert _get(served["delta"], "shop.example.com")[1].get("x-edit") == "two"
    assert _sent(mp, "virtual_hosts") == 0
    write_atomically(policy_dir / "edge.yaml", _policy(ports, "a", "three"))
    eventually(lambda: _get(served["delta"], "shop.example.com")[1].get("x-edit") == "three",
               what="an edit after the restart")
    assert _get(served["delta"], "shop.example.com")[2] == "a"
    assert 0 < _sent(mp, "virtual_hosts") <= vhost_size + ENVELOPE
