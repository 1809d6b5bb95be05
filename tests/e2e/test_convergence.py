"""End to end: every edit's convergence, from its file event to the last Envoy's ACK, in
`meshpilot status` and a Prometheus histogram, with real Envoys (SotW and delta together)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from support import backend_of, eventually, listener_port, raw_policy, write_atomically

pytestmark = pytest.mark.envoy


def test_each_edit_is_followed_to_the_last_envoys_ack(tmp_path, echo_factory, meshpilot_factory,
                                                      envoy_factory):
    v1, v2 = echo_factory("v1"), echo_factory("v2")
    backends = {"v1": v1.port, "v2": v2.port}
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    write_atomically(policy_dir / "edge.yaml", raw_policy(backends=backends, route_to="v1"))
    mp = meshpilot_factory(policy_dir)
    envoys = [envoy_factory(mp.bootstrap(f"edge-{i}", "edge", delta=i % 2 == 1),
                            name=f"envoy-{i}", ready_timeout=30) for i in range(3)]
    ports = [listener_port(envoy) for envoy in envoys]
    for port in ports:
        eventually(lambda p=port: backend_of(p) == "v1", what="traffic to v1")
    assert mp.status()["edits"]["edits"] == []  # the first load is not an edit

    write_atomically(policy_dir / "edge.yaml", raw_policy(backends=backends, route_to="v2"))
    for port in ports:
        eventually(lambda p=port: backend_of(p) == "v2", timeout=15, what="the edit")

    def done():
        edits = mp.status()["edits"]["edits"]
        return edits if edits and edits[0]["seconds"] is not None else None

    (edit,) = eventually(done, timeout=15, what="the edit to converge")
    assert (edit["envoys"], edit["converged"], edit["disconnected"]) == (3, 3, 0)
    assert edit["views"] == ["edge"] and edit["waiting_for"] == []
    assert 0 < edit["applied_after"] <= edit["seconds"]
    assert re.fullmatch(r"edit [0-9a-f]{4}: 3 of 3 Envoys in \d+ ms", edit["line"]), edit
    assert mp.metric("meshpilot_edit_convergence_seconds_count") == 1

    # A second edit, and an Envoy gone before it: counted as disconnected, not waited for.
    envoys[2].stop()
    eventually(lambda: len(mp.proxies()) == 2, what="the stopped Envoy's stream to close")
    write_atomically(policy_dir / "edge.yaml", raw_policy(backends=backends, route_to="v1"))
    edits = eventually(lambda: (e := mp.status()["edits"]["edits"]) and len(e) == 2
                       and e[0]["seconds"] is not None and e, timeout=15,
                       what="the second edit to converge")
    assert (edits[0]["envoys"], edits[0]["converged"]) == (2, 2)
    assert edits[0]["id"] != edits[1]["id"]
    assert mp.metric("meshpilot_edit_convergence_seconds_count") == 2

    out = subprocess.run(
        [sys.executable, "-m", "meshpilot", "status", "--admin-address",
         f"127.0.0.1:{mp.admin_port}", "--state-dir", str(mp.state_dir)],
        capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out
    assert edits[0]["line"] in out.stdout and edits[1]["line"] in out.stdout
    assert "pre-push check: Envoy " in out.stdout
