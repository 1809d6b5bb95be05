"""The pre-push check with a real `envoy --mode validate`: what it refuses, where it says the
problem is (provenance), what it costs (cached answers, halving), and the controller refusing a
reload on its word while the last good config keeps serving."""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshpilot.base import types
from meshpilot.inputs.loader import load_policy_text
from meshpilot.local import validator as validator_module
from meshpilot.local.envoy_process import EnvoyError
from meshpilot.local.validator import EnvoyValidator, bootstrap_of, refusal_message
from meshpilot.runtime.controller import Controller
from meshpilot.runtime.prepush import PrePush, changed_resources
from meshpilot.translators import Translation
from meshpilot.xds.cache import SnapshotCache
from meshpilot.xds.resources import Resource

pytestmark = pytest.mark.envoy

GOOD = """\
kind: Service
name: web
endpoints:
  - {address: 127.0.0.1:9081}
---
kind: Gateway
name: edge
listeners:
  - {name: http, port: 8080}
---
kind: Route
name: shop
gateway: edge
rules:
  - match: {path: {prefix: /api}}
    backends: [{service: web}]
  - match: {path: {prefix: /}}
    backends: [{service: web}]
"""
# The loader checks a formatted body's operators for shape only (`%NAME%`); which names exist
# is Envoy's to say, so only Envoy refuses this rule. (Regexes are no example: the loader runs
# RE2 under Envoy's program-size limit itself.)
UNKNOWN_OPERATOR = '"%NO_SUCH_OPERATOR%"'
REFUSED_RULE = GOOD.replace(
    "  - match: {path: {prefix: /api}}\n    backends: [{service: web}]",
    "  - match: {path: {prefix: /api}}\n"
    "    direct_response: {status: 200, body: " + UNKNOWN_OPERATOR + ", formatted: true}")
RAW_BROKEN = GOOD + """---
kind: EnvoyResources
name: extra
clusters:
  - name: fine
    type: STATIC
    load_assignment: {cluster_name: fine, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}
  - name: broken
    type: STATIC
    load_assignment: {cluster_name: broken, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: not-an-ip, port_value: 1}}}}]}]}
"""


@pytest.fixture(scope="module")
def validator() -> EnvoyValidator:
    found = EnvoyValidator()
    yield found
    found.close()


def snapshot(text: str, view: str = "edge"):
    model = load_policy_text(text, "policy.yaml")
    return model, Translation(model).snapshot(view)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_the_validators_envoy_build_is_known(validator: EnvoyValidator) -> None:
    assert validator.envoy_version is not None
    assert validator.envoy_version.count(".") == 2


def test_generated_views_are_accepted(validator: EnvoyValidator) -> None:
    _, view = snapshot(GOOD)
    resources = [r for t in view.type_urls() for r in view.get(t).values()]
    assert validator.check(resources) == {}


def test_a_refused_rule_is_reported_at_its_line_with_envoys_message(
        validator: EnvoyValidator) -> None:
    model, view = snapshot(REFUSED_RULE)
    (issue,) = PrePush(validator).issues(model, [(None, view)])
    text = str(issue)
    line = line_of(REFUSED_RULE, "prefix: /api")
    # The rule of the Route (narrowed from the listener's RouteConfiguration), not the file.
    assert text.startswith(f"policy.yaml:{line}:5: Route shop: rules[0]: "), text
    assert "RouteConfiguration 'edge/http', entry 'shop/rules[0]'" in text
    assert "Not supported field in StreamInfo: NO_SUCH_OPERATOR" in text
    assert f"Envoy {validator.envoy_version} refuses" in text


def test_a_refused_raw_resource_is_reported_at_its_entry(validator: EnvoyValidator) -> None:
    model, view = snapshot(RAW_BROKEN)
    (issue,) = PrePush(validator).issues(model, [(None, view)])
    assert issue.position is not None
    assert issue.position.line == line_of(RAW_BROKEN, "- name: broken")
    assert (issue.kind, issue.name, issue.field) == ("EnvoyResources", "extra", "clusters[1]")
    assert "Cluster 'broken'" in issue.message
    assert "malformed IP address: not-an-ip" in issue.message


def test_only_what_changed_is_checked_and_answers_are_cached() -> None:
    validator = EnvoyValidator()
    try:
        check = PrePush(validator)
        model, first = snapshot(GOOD)
        assert check.issues(model, [(None, first)]) == ()
        runs = validator.runs
        # The same content again (another view, a reload that changed nothing): no Envoy run.
        assert check.issues(model, [(None, first)]) == ()
        assert validator.runs == runs
        # One edited route: only the route configuration changed, one small check.
        edited = GOOD.replace("prefix: /api", "prefix: /v2/api")
        model2, second = snapshot(edited)
        changed = changed_resources(first, second)
        assert [(r.type_url, r.name) for r in changed] == [(types.ROUTE, "edge/http")]
        assert check.issues(model2, [(first, second)]) == ()
        assert validator.runs == runs + 1
        assert check.status.checks == 3
        assert check.status.resources_checked == 2 * len(changed_resources(None, first)) + 1
    finally:
        validator.close()


def test_one_refused_resource_among_many_is_found_by_halving(validator: EnvoyValidator) -> None:
    many = [Resource.from_message(types.CLUSTER, f"c{i}", _static_cluster(f"c{i}", "127.0.0.1"))
            for i in range(40)]
    bad = Resource.from_message(types.CLUSTER, "bad", _static_cluster("bad", "999.1.1.1"))
    fresh = EnvoyValidator(workers=2)
    try:
        refused = fresh.check([*many[:17], bad, *many[17:]])
        assert list(refused) == [(types.CLUSTER, bad.version)]
        assert "999.1.1.1" in refused[(types.CLUSTER, bad.version)]
        # log2(41) rounds of two halves at most, plus the first two batches.
        assert fresh.runs <= 2 + 2 * 6
    finally:
        fresh.close()


def test_without_warm_runs_each_check_starts_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshpilot.local import validator as module

    monkeypatch.setattr(module, "_WARM", False)  # no /proc, no FIFOs: a 0600 file per check
    fresh = EnvoyValidator(workers=1)
    try:
        bad = Resource.from_message(types.CLUSTER, "bad", _static_cluster("bad", "not-an-ip"))
        good = Resource.from_message(types.CLUSTER, "ok", _static_cluster("ok", "127.0.0.1"))
        refused = fresh.check([bad, good])
        assert list(refused) == [(types.CLUSTER, bad.version)]
        assert "not-an-ip" in refused[(types.CLUSTER, bad.version)]
    finally:
        fresh.close()


def test_a_waiting_run_that_died_is_replaced_not_taken_for_a_refusal() -> None:
    fresh = EnvoyValidator(workers=1)
    try:
        waiting = fresh._warm.get_nowait()
        assert waiting.proc is not None
        waiting.proc.kill()
        waiting.proc.wait()
        fresh._warm.put(waiting)
        good = Resource.from_message(types.CLUSTER, "ok", _static_cluster("ok", "127.0.0.1"))
        assert fresh.check([good]) == {}
    finally:
        fresh.close()


def test_closing_leaves_no_validate_run_behind() -> None:
    fresh = EnvoyValidator(workers=2)
    waiting = [fresh._warm.get_nowait() for _ in range(2)]
    for run in waiting:
        fresh._warm.put(run)
    assert all(run.proc is not None and run.proc.poll() is None for run in waiting)
    fresh.close()
    assert all(run.proc is not None and run.proc.poll() is not None for run in waiting)
    assert not any(Path(run.folder).exists() for run in waiting)


def test_a_check_finishing_after_close_starts_no_run() -> None:
    fresh = EnvoyValidator(workers=1)
    fresh.close()
    fresh._replenish()  # what a check in flight does when it ends
    with pytest.raises(queue.Empty):
        fresh._warm.get_nowait()


_OWNER = """
import sys, time
from meshpilot.local.validator import EnvoyValidator
validator = EnvoyValidator(workers=2)
runs = [validator._warm.get_nowait() for _ in range(2)]
print(" ".join(str(run.proc.pid) for run in runs), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaped yet has stopped running)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="warm runs need Linux's /proc")
def test_a_killed_owner_leaves_no_validate_run_behind() -> None:
    """kill -9 of the process holding warm runs, before they opened their FIFOs or after:
    none of them is left blocked for ever."""
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pids = [int(pid) for pid in owner.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    finally:
        owner.kill()
        owner.wait(timeout=10)
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if _alive(pid)]


def test_a_config_source_naming_the_bootstraps_xds_cluster_is_accepted(
        validator: EnvoyValidator) -> None:
    """Per-type streams: resources name the management server's cluster of the Envoy's own
    bootstrap (`api_config_source`), which the check stands in for."""
    from envoy.config.cluster.v3 import cluster_pb2
    from google.protobuf import json_format

    source = {"api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
                                    "grpc_services": [{"envoy_grpc": {
                                        "cluster_name": "meshpilot_xds"}}]},
              "resource_api_version": "V3"}
    cluster = json_format.ParseDict({"name": "per-type", "type": "EDS",
                                     "eds_cluster_config": {"eds_config": source}},
                                    cluster_pb2.Cluster())
    resource = Resource.from_message(types.CLUSTER, "per-type", cluster)
    assert validator.check([resource]) == {}
    assert [c["name"] for c in bootstrap_of([resource])["static_resources"]["clusters"]] == [
        "per-type", "meshpilot_xds", "meshpilot|validate-xds"]


def test_envoys_message_loses_its_log_prefix_and_the_temporary_path() -> None:
    line = ("[2026-12-01 22:57:48.427][7800][critical][main] [source/server/config_validation/"
            "server.cc:76] error initializing configuration '/tmp/x/bootstrap.json': "
            "malformed IP address: not-an-ip")
    assert refusal_message(line) == "malformed IP address: not-an-ip"


def test_resources_of_one_name_or_one_address_are_checked_apart(
        validator: EnvoyValidator) -> None:
    a = Resource.from_message(types.CLUSTER, "same", _static_cluster("same", "127.0.0.1"))
    b = Resource.from_message(types.CLUSTER, "same", _static_cluster("same", "127.0.0.2"))
    assert validator.check([a, b]) == {}
    assert len(bootstrap_of([a])["static_resources"]["clusters"]) == 2  # with the ADS cluster


def test_a_check_that_cannot_run_refuses_the_reload(tmp_path: Path) -> None:
    class Broken:
        envoy_version = "1.40.0"
        broken = False

        def check(self, resources):
            if self.broken:
                raise EnvoyError("envoy --mode validate timed out")
            return {}

    policy = tmp_path / "p"
    policy.mkdir()
    (policy / "edge.yaml").write_text(GOOD)
    check = Broken()
    cache = SnapshotCache()
    controller = Controller(policy, cache, prepush=PrePush(check))
    assert controller.reload() is True
    served = controller.snapshot_blocking("edge")
    check.broken = True
    (policy / "edge.yaml").write_text(GOOD.replace("/api", "/v2"))
    assert controller.reload() is False
    assert controller.status.error == [
        "the pre-push check could not run: envoy --mode validate timed out"]
    assert cache.get("edge") is served


def test_the_controller_refuses_what_envoy_refuses_and_keeps_the_last_good(
        tmp_path: Path, validator: EnvoyValidator) -> None:
    policy = tmp_path / "p"
    policy.mkdir()
    (policy / "edge.yaml").write_text(GOOD)
    cache = SnapshotCache()
    controller = Controller(policy, cache, prepush=PrePush(validator))
    assert controller.reload()
    served = controller.snapshot_blocking("edge")
    (policy / "edge.yaml").write_text(REFUSED_RULE)
    assert asyncio.run(controller.reload_async()) is False
    assert cache.get("edge") is served
    (error,) = controller.status.error
    assert error.startswith("edge.yaml:") and "Route shop: rules[0]" in error
    assert controller.metrics.policy_valid._value.get() == 0


def test_a_view_first_asked_for_is_checked_too(tmp_path: Path,
                                               validator: EnvoyValidator) -> None:
    policy = tmp_path / "p"
    policy.mkdir()
    (policy / "edge.yaml").write_text(REFUSED_RULE)
    cache = SnapshotCache()
    controller = Controller(policy, cache, prepush=PrePush(validator))
    assert controller.reload()  # no view is known yet: nothing built, nothing checked
    with pytest.raises(Exception, match="NO_SUCH_OPERATOR"):
        controller.snapshot_blocking("edge")
    assert cache.get("edge") is None  # nothing is sent to it
    assert any("Route shop: rules[0]" in e for e in controller.status.error)


def _static_cluster(name: str, address: str):
    from envoy.config.cluster.v3 import cluster_pb2
    from google.protobuf import json_format

    return json_format.ParseDict({
        "name": name, "type": "STATIC",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {"address": address,
                                                        "port_value": 1}}}}]}]}},
        cluster_pb2.Cluster())


def test_meshpilot_validate_with_envoy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from meshpilot.cli import main

    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "routes.yaml").write_text(REFUSED_RULE)
    assert main(["validate", str(folder)]) == 0  # meshpilot's own checks find nothing
    capsys.readouterr()
    assert main(["validate", str(folder), "--envoy"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"routes.yaml:{line_of(REFUSED_RULE, 'prefix: /api')}:5: Route shop: rules[0]: ")
    assert err.endswith("1 problem(s) Envoy refuses; nothing would be applied\n")
    (folder / "routes.yaml").write_text(GOOD)
    assert main(["validate", str(folder), "--envoy"]) == 0
    assert capsys.readouterr().out.startswith("ok: 1 file(s)")


@pytest.mark.parametrize("case", ["tracing", "auth", "shared-ratelimit"])
def test_a_listener_is_checked_without_the_clusters_its_filters_name(
        validator: EnvoyValidator, case: str) -> None:
    # An edit that changes only a listener sends only the listener to the check: the
    # collectors, JWKS servers and rate-limit services it names stand in, as its view's
    # clusters are checked on their own (the tracing e2e test found Zipkin's missing).
    folder = Path(__file__).parents[1] / "golden" / case
    model = load_policy_text((folder / "policy.yaml").read_text(), "policy.yaml")
    view = Translation(model).snapshot("edge")
    listeners = list(view.get(types.LISTENER).values())
    assert listeners
    assert validator.check(listeners) == {}


@pytest.mark.skipif(validator_module._SH is None, reason="warm runs need setpriv and sh")
def test_a_run_orphaned_before_its_death_signal_was_set_exits_at_once() -> None:
    """The gap setpriv leaves (a parent that died before the signal was set never sends it):
    the shell between setpriv and Envoy exits unless its parent is the one that started it."""
    assert validator_module._SH is not None
    orphaned = subprocess.run([validator_module._SH, "-c", validator_module._STILL_OURS, "1", "sleep", "30"],
                              timeout=10, check=False)
    assert orphaned.returncode == 70  # its parent (this test) is not pid 1: gone at once
    ours = subprocess.run([validator_module._SH, "-c", validator_module._STILL_OURS, str(os.getpid()),
                           "sh", "-c", "exit 3"], timeout=10, check=False)
    assert ours.returncode == 3  # its parent started it: the command runs (exec'd)
