"""The web dashboard in a real headless browser (Debian's chromium over the DevTools protocol,
tests/browser.py) against `meshpilot serve` with real Envoys: without a token the page shows
only its login and the data is refused; a wrong token is refused; with an operator token it
shows the live fleet (node ids, views, sync state) and the service graph; saving an edit shows
the new edit and its convergence without a reload, and a refused edit its file:line; the
Envoys' request rates; the token lives in the tab's sessionStorage and logging out forgets it.
An Envoy's refusal shows with the policy line it came from, a hostile node id stays text, a
rotated key sends the page back to its login; a staged rollout shows while it is watched and
when it is promoted; with replicas on etcd, any replica's page shows the whole fleet. Skipped
with the reason when chromium is absent (outside CI)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from browser import Chromium, chromium_or_skip
from support import backend_of, eventually, listener_port, raw_policy, write_atomically

from meshpilot.base.netutil import free_port
from meshpilot.ca.tokens import rotate_key
from meshpilot.local.bootstrap import render_bootstrap

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(240)]

ROWS = "[...document.querySelectorAll('#fleet tbody tr')]"


def fleet(page) -> list[tuple[str, str]]:
    return [tuple(row) for row in page.evaluate(
        f"{ROWS}.map(r => [r.dataset.node, r.dataset.view])")]


def test_the_dashboard_shows_the_live_fleet_and_follows_an_edit(
        tmp_path, echo_factory, meshpilot_factory, envoy_factory):
    chromium_or_skip()
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    backends = {"v1": v1.port, "v2": v2.port}
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    write_atomically(policy_dir / "edge.yaml", raw_policy(backends=backends, route_to="v1"))
    mp = meshpilot_factory(policy_dir)
    # Each with the stats sink (Envoy's metrics service), flushing every half second: the
    # request rates' source.
    envoys = [envoy_factory(mp.bootstrap(node, view, delta=delta, stats_flush_interval=0.5),
                            name=node, ready_timeout=30)
              for node, view, delta in (("edge-0", "edge", False), ("edge-1", "edge", True),
                                        ("other-0", "other", False))]
    ports = [listener_port(envoy) for envoy in envoys]
    for port in ports:
        eventually(lambda p=port: backend_of(p) == "v1", what="traffic to v1")
    url = f"{mp.admin}/dashboard"

    with Chromium(tmp_path) as browser:
        page = browser.page()
        page.navigate(url)
        # No token: the login, nothing of the fleet, and the data refused to the page itself.
        page.wait_for("!document.getElementById('login').hidden", what="the login form")
        assert page.evaluate("document.getElementById('board').hidden") is True
        body = page.evaluate("document.body.innerText")
        assert "edge-0" not in body and "other-0" not in body
        assert page.evaluate("fetch('/debug/dashboard').then(r => r.status)") == 401
        assert page.evaluate("fetch('/debug/dashboard/events').then(r => r.status)") == 401
        assert page.evaluate("sessionStorage.length") == 0

        def log_in(token: str) -> None:
            page.evaluate(f"document.getElementById('token').value = {json.dumps(token)}; "
                          "document.getElementById('login-form').requestSubmit(); true")

        # A token that is not meshpilot's: refused, said so, not kept.
        log_in("not-a-token")
        page.wait_for("document.getElementById('login-error').innerText.startsWith('refused')",
                      what="the refusal")
        assert page.evaluate("document.getElementById('board').hidden") is True
        assert page.evaluate("sessionStorage.length") == 0

        # The operator's token: the live fleet of real Envoys, each with its view.
        log_in(mp.operator_token())
        page.wait_for(f"{ROWS}.length === 3", what="three Envoys in the fleet")
        assert fleet(page) == [("edge-0", "edge"), ("edge-1", "edge"), ("other-0", "other")]
        page.wait_for("document.getElementById('live').dataset.state === 'live'",
                      what="the event stream")
        page.wait_for(f"{ROWS}.every(r => r.querySelectorAll('.badge').length >= 4 && "
                      "[...r.querySelectorAll('.badge')].every(b => b.dataset.status === "
                      "'SYNCED'))", what="every type synced")
        variants = page.evaluate(f"{ROWS}.map(r => r.cells[2].innerText)")
        assert variants == ["sotw-ads", "delta-ads", "sotw-ads"]
        assert page.evaluate("document.getElementById('policy').dataset.ok") == "true"
        # The service graph: each view, its Envoys, the clusters its snapshot names.
        edges = page.evaluate("[...document.querySelectorAll('#graph-table tbody tr')]"
                              ".map(r => [r.dataset.view, r.dataset.cluster, r.cells[1].innerText])")
        assert sorted(map(tuple, edges)) == [("edge", "v1", "edge-0, edge-1"),
                                            ("edge", "v2", "edge-0, edge-1"),
                                            ("other", "v1", "other-0"), ("other", "v2", "other-0")]
        assert page.evaluate("document.querySelectorAll('#graph svg line').length") == 4
        assert page.text("#edits-empty") == "no edit since the start"
        # Request rates from the Envoys' own stats (the metrics service): traffic through
        # edge-0 shows as its requests per second to v1, on its row and on the graph's edge.
        rate = ("(r => r && Number(r.cells[3].innerText))(document.querySelector("
                "'#rates tr[data-node=\"edge-0\"][data-cluster=\"v1\"]'))")
        edge_rate = ("(r => r && Number(r.cells[3].innerText))(document.querySelector("
                     "'#graph-table tr[data-view=\"edge\"][data-cluster=\"v1\"]'))")
        edge_port = ports[0]

        def traffic_seen() -> bool:
            for _ in range(5):
                assert backend_of(edge_port) == "v1"
            return bool(page.evaluate(rate)) and bool(page.evaluate(edge_rate))

        eventually(traffic_seen, timeout=30, interval=0.2, what="edge-0's request rate")
        assert page.evaluate("document.getElementById('rates-empty').hidden") is True
        # The token is kept by this tab only, never as a cookie.
        assert page.evaluate("sessionStorage.length") == 1
        assert page.evaluate("document.cookie") == ""

        # Save an edit: the page shows it and its convergence on its own (no reload: a value
        # set on this window is still there).
        page.evaluate("window.notReloaded = true")
        write_atomically(policy_dir / "edge.yaml", raw_policy(backends=backends, route_to="v2"))
        for port in ports:
            eventually(lambda p=port: backend_of(p) == "v2", timeout=15, what="the edit")
        edit = eventually(lambda: (e := mp.status()["edits"]["edits"]) and e[0]["seconds"]
                          is not None and e[0], timeout=15, what="the edit to converge")
        row = f"document.querySelector('#edits tr[data-edit=\"{edit['id']}\"]')"
        page.wait_for(f"{row} && {row}.dataset.done === 'true'", what="the converged edit")
        assert page.evaluate(f"{row}.querySelector('.reached').innerText") == "3 of 3"
        assert page.evaluate(f"{row}.cells[1].innerText") == "edge, other"
        assert page.evaluate(f"{row}.querySelector('.converged').innerText") == \
            f"converged in {round(edit['seconds'] * 1000)} ms"
        assert page.evaluate("window.notReloaded") is True

        # A refused edit: the page says so at its file:line, the fleet keeps its config.
        write_atomically(policy_dir / "edge.yaml",
                         raw_policy(backends=backends, route_to="v2") + "bogus: 1\n")
        page.wait_for("document.getElementById('policy').dataset.ok === 'false'",
                      what="the refused load")
        errors = page.evaluate("[...document.querySelectorAll('#policy-errors li')]"
                               ".map(li => li.innerText)")
        assert any(e.startswith("edge.yaml:") and "bogus" in e for e in errors), errors
        assert page.evaluate("window.notReloaded") is True

        # An Envoy leaves: the page drops it.
        envoys[2].stop()
        page.wait_for(f"{ROWS}.length === 2", what="the stopped Envoy to leave the fleet")
        assert fleet(page) == [("edge-0", "edge"), ("edge-1", "edge")]

        # A reload of the page keeps the session (the tab's sessionStorage) ...
        page.navigate(url)
        page.wait_for(f"{ROWS}.length === 2", what="the fleet after a reload")
        # A new tab has no token: sessionStorage is the tab's own.
        other = browser.page()
        other.navigate(url)
        other.wait_for("!document.getElementById('login').hidden", what="a new tab's login")
        assert other.evaluate("sessionStorage.length") == 0
        # ... and logging out forgets the token.
        page.evaluate("document.getElementById('logout').click(); true")
        page.wait_for("!document.getElementById('login').hidden", what="the login again")
        assert page.evaluate("sessionStorage.length") == 0
        page.navigate(url)
        page.wait_for("!document.getElementById('login').hidden", what="the login after out")
        assert "edge-0" not in page.evaluate("document.body.innerText")
        # The page ran under its own Content-Security-Policy without an error.
        assert [e for e in page.errors() if "401" not in e] == [], page.errors()


BROKEN = """
  - name: broken
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: broken
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: not-an-ip, port_value: 80}}}}]}]"""
HOSTILE = '<img src=x onerror="window.pwned=1">edge'


def test_a_refused_resource_shows_with_its_policy_line_and_hostile_names_stay_text(
        tmp_path, echo_factory, meshpilot_factory, envoy_factory):
    """Without the pre-push check, an Envoy refuses a cluster: its row shows the type held
    back, Envoy's message and the policy line that made it. The Envoy's node id is HTML; the
    page shows it as text and runs nothing of it."""
    chromium_or_skip()
    v1 = echo_factory("v1")
    backends = {"v1": v1.port}
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    write_atomically(policy_dir / "edge.yaml", raw_policy(backends=backends, route_to="v1"))
    mp = meshpilot_factory(policy_dir, extra_args=("--no-prepush-check",))
    envoy = envoy_factory(mp.bootstrap(HOSTILE, "edge"), name="envoy-hostile", ready_timeout=30)
    port = listener_port(envoy)
    eventually(lambda: backend_of(port) == "v1", what="traffic to v1")

    with Chromium(tmp_path) as browser:
        page = browser.page()
        page.navigate(f"{mp.admin}/dashboard")
        page.wait_for("!document.getElementById('login').hidden", what="the login form")
        page.evaluate(f"document.getElementById('token').value = {json.dumps(mp.operator_token())};"
                      " document.getElementById('login-form').requestSubmit(); true")
        page.wait_for(f"{ROWS}.length === 1", what="the Envoy in the fleet")
        assert fleet(page) == [(HOSTILE, "edge")]
        assert page.evaluate(f"{ROWS}[0].querySelector('.node').innerText") == HOSTILE
        assert page.evaluate("document.querySelectorAll('img').length") == 0
        assert page.evaluate("window.pwned === undefined") is True

        bad = raw_policy(backends=backends, route_to="v1", extra_clusters=BROKEN)
        write_atomically(policy_dir / "edge.yaml", bad)
        line = next(i for i, text in enumerate(bad.splitlines(), 1) if "- name: broken" in text)
        badge = (f"{ROWS}[0].querySelector('.badge[data-status=\"HELD\"]')")
        page.wait_for(f"{badge} && {badge}.innerText === 'clusters HELD'",
                      what="the refused cluster held back")
        rejection = page.evaluate(f"{ROWS}[0].cells[5].innerText")
        assert "clusters: " in rejection and "not-an-ip" in rejection, rejection
        assert (f"held back: clusters broken (edge.yaml:{line}:5: EnvoyResources e2e: "
                "clusters[1])") in rejection, rejection  # after the one echo cluster
        # meshpilot itself found nothing wrong with the policy.
        assert page.evaluate("document.getElementById('policy').dataset.ok") == "true"
        assert page.evaluate("window.pwned === undefined") is True
        # The operator's tokens stop working (the key is rotated): the open page loses the
        # stream, is refused when it reconnects, forgets the token and asks for a new one.
        rotate_key(mp.state_dir)
        page.wait_for("!document.getElementById('login').hidden && document.getElementById("
                      "'login-error').innerText.startsWith('refused')", timeout=30,
                      what="the login after the key rotation")
        assert page.evaluate("sessionStorage.length") == 0
        assert page.evaluate("document.getElementById('board').hidden") is True
        assert [e for e in page.errors() if "401" not in e] == [], page.errors()


def test_a_rollout_in_progress_and_its_promotion_show_live(
        tmp_path, echo_factory, meshpilot_factory, envoy_factory):
    """A staged rollout (runtime/rollout.py): the edit goes to the canary half of the view's
    Envoys, the page shows it being watched, and `meshpilot rollout promote` shows as
    promoted, without a reload."""
    chromium_or_skip()
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    backends = {"v1": v1.port, "v2": v2.port}
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    write_atomically(policy_dir / "edge.yaml", raw_policy(backends=backends, route_to="v1"))
    mp = meshpilot_factory(policy_dir, extra_args=("--rollout", "canary=50%,watch=10m"))
    envoys = [envoy_factory(mp.bootstrap(f"edge-{i}", "edge", stats_flush_interval=0.5),
                            name=f"edge-{i}", ready_timeout=30) for i in range(2)]
    for port in [listener_port(envoy) for envoy in envoys]:
        eventually(lambda p=port: backend_of(p) == "v1", what="traffic to v1")

    with Chromium(tmp_path) as browser:
        page = browser.page()
        page.navigate(f"{mp.admin}/dashboard")
        page.wait_for("!document.getElementById('login').hidden", what="the login form")
        page.evaluate(f"document.getElementById('token').value = {json.dumps(mp.operator_token())};"
                      " document.getElementById('login-form').requestSubmit(); true")
        page.wait_for(f"{ROWS}.length === 2", what="the fleet")
        assert page.text("#rollouts-empty") == "no rollout"
        page.evaluate("window.notReloaded = true")

        write_atomically(policy_dir / "edge.yaml", raw_policy(backends=backends, route_to="v2"))
        (rollout,) = eventually(lambda: mp.get_json("/debug/rollouts")["rollouts"] or None,
                                what="the rollout to start")
        row = f"document.querySelector('#rollouts tr[data-rollout=\"{rollout['id']}\"]')"
        page.wait_for(f"{row} && {row}.dataset.state === 'watching'", what="the rollout row")
        (canary,) = rollout["canary"]
        assert page.evaluate(f"{row}.querySelector('.canary').innerText") == f"1 of 2: {canary}"
        assert page.evaluate(f"{row}.querySelector('.state-cell').innerText").startswith(
            "watching, ")
        assert page.evaluate(f"{row}.querySelector('.edit').innerText") == rollout["edit"]

        out = subprocess.run(
            [sys.executable, "-m", "meshpilot", "rollout", "promote", "--admin-address",
             f"127.0.0.1:{mp.admin_port}", "--state-dir", str(mp.state_dir)],
            capture_output=True, text=True, timeout=30, check=False)
        assert out.returncode == 0, out
        page.wait_for(f"{row}.dataset.state === 'promoted'", what="the promotion")
        assert "promoted by hand" in page.evaluate(f"{row}.querySelector('.reason').innerText")
        assert page.evaluate("window.notReloaded") is True


REPLICA_POLICY = """
kind: Service
name: api
---
kind: Gateway
name: edge
listeners: [{{name: http, port: {port}, address: 127.0.0.1}}]
---
kind: Route
name: shop
gateway: edge
rules:
  - backends: [{{service: api}}]
"""


def test_with_replicas_any_replicas_dashboard_shows_the_whole_fleet(
        tmp_path, etcd, meshpilot_factory, envoy_factory):
    """Two replicas on one etcd, an Envoy on each: replica b's page lists both Envoys, each
    with the replica it is connected to, and says which replica it is."""
    chromium_or_skip()
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    write_atomically(policy_dir / "edge.yaml", REPLICA_POLICY.format(port=free_port()))
    store_key = tmp_path / "store.key"
    a, b = (meshpilot_factory(policy_dir, extra_args=(
        "--store", etcd.url, "--store-key", str(store_key), "--replica-id", name))
        for name in ("a", "b"))
    for node, replica in (("edge-on-a", a), ("edge-on-b", b)):
        envoy_factory(render_bootstrap(
            node_id=node, node_cluster="edge", xds_addresses=[("127.0.0.1", replica.xds_port)],
            admin_address=("127.0.0.1", 0), xds_tls_ca=str(a.state_dir / "ca.crt"),
            xds_sni="meshpilot", xds_token=a.node_token("edge")), ready_timeout=30, name=node)

    with Chromium(tmp_path) as browser:
        page = browser.page()
        page.navigate(f"{b.admin}/dashboard")
        page.wait_for("!document.getElementById('login').hidden", what="the login form")
        # A's token works on B: the replicas share the token key.
        page.evaluate(f"document.getElementById('token').value = {json.dumps(a.operator_token())};"
                      " document.getElementById('login-form').requestSubmit(); true")
        page.wait_for(f"{ROWS}.length === 2 && {ROWS}.every(r => "
                      "[...r.querySelectorAll('.badge')].every(b => b.dataset.status === "
                      "'SYNCED'))", timeout=30, what="both replicas' Envoys, synced")
        assert fleet(page) == [("edge-on-a", "edge"), ("edge-on-b", "edge")]
        streams = page.evaluate(f"{ROWS}.map(r => r.cells[2].innerText)")
        assert streams == ["sotw-ads @ a", "sotw-ads @ b"]
        assert page.text("#where").startswith("replica b")
