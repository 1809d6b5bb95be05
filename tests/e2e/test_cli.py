"""The `meshpilot` command as a user runs it: validate, render, bootstrap, status, up."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support import backend_of, eventually, write_policy

from meshpilot.base.netutil import free_port
from meshpilot.ca import CertificateAuthority
from meshpilot.ca.tokens import TokenAuthority
from meshpilot.local.envoy_process import validate_config

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"


def meshpilot(*args: str, timeout: float = 60,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`env`: variables added to this process's environment (MESHPILOT_TOKEN never inherited)."""
    environment = {k: v for k, v in os.environ.items() if k != "MESHPILOT_TOKEN"}
    return subprocess.run([sys.executable, "-m", "meshpilot", *args], capture_output=True,
                          text=True, timeout=timeout, env={**environment, **(env or {})})


def test_validate_accepts_the_quickstart() -> None:
    result = meshpilot("validate", str(QUICKSTART))
    assert result.returncode == 0, result.stderr
    assert "ok: 1 file(s): 1 service(s), 1 gateway(s), 1 route(s), 0 raw resource(s)" \
        in result.stdout


def test_validate_reports_every_problem_with_its_position(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "kind: EnvoyResources\nname: a\nclusters:\n  - name: x\n    conect_timeout: 1s\n")
    (tmp_path / "b.yaml").write_text("kind: EnvoyResourcez\nname: b\n")
    result = meshpilot("validate", str(tmp_path))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert any(re.match(r'a\.yaml:5:5: EnvoyResources a: clusters\[0\]\.conect_timeout: '
                        r'unknown field "conect_timeout" \(did you mean "connect_timeout"\?\)', line)
               for line in lines), lines
    assert any(line.startswith("b.yaml:1:") and "EnvoyResources" in line for line in lines), lines
    assert "2 problem(s)" in lines[-1]


def test_render_is_deterministic_and_selects_by_view(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "kind: EnvoyResources\nname: only-edge\nviews: [edge]\nclusters:\n"
        "  - {name: edge-only, type: STATIC, connect_timeout: 1s}\n")
    (tmp_path / "q.yaml").write_text(
        "kind: EnvoyResources\nname: all\nclusters:\n"
        "  - {name: everyone, type: STATIC, connect_timeout: 2s}\n")
    first = meshpilot("render", str(tmp_path), "--node-cluster", "edge")
    again = meshpilot("render", str(tmp_path), "--node-cluster", "edge")
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout
    edge = yaml.safe_load(first.stdout)
    assert [c["name"] for c in edge["resources"]["clusters"]] == ["edge-only", "everyone"]
    other = json.loads(meshpilot("render", str(tmp_path), "--node-cluster", "mesh",
                                 "--format", "json").stdout)
    assert [c["name"] for c in other["resources"]["clusters"]] == ["everyone"]
    assert other["resources"]["clusters"][0]["connect_timeout"] == "2s"


@pytest.mark.parametrize("delta", [False, True])
def test_bootstrap_is_accepted_by_envoy(tmp_path: Path, delta: bool) -> None:
    state = tmp_path / "state"
    CertificateAuthority.load_or_create(state)  # what `meshpilot serve --state-dir` creates
    tokens = TokenAuthority.load_or_create(state)
    args = ["bootstrap", "--node-id", "edge-1", "--node-cluster", "edge",
            "--xds-address", "127.0.0.1:18000", "--xds-address", "127.0.0.1:18002",
            "--admin-address", "127.0.0.1:19000", "-o", str(tmp_path / "b.yaml"),
            "--state-dir", str(state)]
    result = meshpilot(*args, *(["--delta"] if delta else []))
    assert result.returncode == 0, result.stderr
    # It holds a credential: readable by its owner only.
    assert (tmp_path / "b.yaml").stat().st_mode & 0o777 == 0o600
    bootstrap = yaml.safe_load((tmp_path / "b.yaml").read_text())
    assert bootstrap["node"] == {"id": "edge-1", "cluster": "edge"}
    ads = bootstrap["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == ("DELTA_GRPC" if delta else "GRPC")
    # Secure by default: TLS trusting the mesh CA, and a node token for the view.
    (metadata,) = ads["grpc_services"][0]["initial_metadata"]
    assert metadata["key"] == "authorization" and metadata["value"].startswith("Bearer ")
    assert tokens.verify(metadata["value"].split(" ", 1)[1], "node").subject == "edge"
    (cluster,) = bootstrap["static_resources"]["clusters"]
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["sni"] == "meshpilot"
    assert tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"] == \
        str((state / "ca.crt").resolve())
    validate_config(tmp_path / "b.yaml")


def test_bootstrap_needs_the_state_folder_or_an_explicit_insecure_choice(tmp_path: Path) -> None:
    base = ["bootstrap", "--node-id", "edge-1", "--node-cluster", "edge",
            "--xds-address", "127.0.0.1:18000", "--admin-address", "127.0.0.1:19000"]
    missing = meshpilot(*base, "--state-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "ca.crt" in missing.stderr
    plain = meshpilot(*base, "--insecure-xds")
    assert plain.returncode == 0, plain.stderr
    bootstrap = yaml.safe_load(plain.stdout)
    assert "initial_metadata" not in bootstrap["dynamic_resources"]["ads_config"][
        "grpc_services"][0]
    assert "transport_socket" not in bootstrap["static_resources"]["clusters"][0]


# One static cluster: enough for meshpilot to serve and an Envoy to ACK.
ONE_CLUSTER = ("kind: EnvoyResources\nname: c\n"
               "clusters: [{name: a, type: STATIC, connect_timeout: 1s}]\n")


def test_status_shows_the_policy_and_proxies(tmp_path: Path, envoy_factory,
                                             meshpilot_factory) -> None:
    mp = meshpilot_factory(write_policy(tmp_path, "c.yaml", ONE_CLUSTER))
    envoy_factory(mp.bootstrap("edge-1", "edge"))
    eventually(lambda: mp.proxies() and mp.proxies()[0]["types"]["clusters"]["status"]
               == "SYNCED", what="the Envoy to ACK")
    address = ("--admin-address", f"127.0.0.1:{mp.admin_port}")
    # Each of the three token sources: a token file, $MESHPILOT_TOKEN, the state folder's key.
    created = meshpilot("token", "create", "operator", "--ttl", "10m",
                        "--state-dir", str(mp.state_dir))
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    (tmp_path / "operator.token").write_text(token + "\n")
    for result in (meshpilot("status", *address, "--token-file", str(tmp_path / "operator.token"),
                             "--state-dir", str(tmp_path / "none")),
                   meshpilot("status", *address, "--state-dir", str(tmp_path / "none"),
                             env={"MESHPILOT_TOKEN": token}),
                   meshpilot("status", *address, "--state-dir", str(mp.state_dir))):
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ok" in result.stdout.splitlines()[0]
        assert re.search(r"edge-1\s+edge\s+sotw-ads\s+clusters\s+SYNCED", result.stdout)
    # No token, or one that does not grant operator access: refused, and the token not shown.
    anonymous = meshpilot("status", *address, "--state-dir", str(tmp_path / "none"))
    assert anonymous.returncode == 2 and "refused (401)" in anonymous.stderr, anonymous.stderr
    registration = meshpilot("token", "create", "registration", "api",
                             "--state-dir", str(mp.state_dir)).stdout.strip()
    wrong = meshpilot("status", *address, "--state-dir", str(tmp_path / "none"),
                      env={"MESHPILOT_TOKEN": registration})
    assert wrong.returncode == 2 and "refused (403)" in wrong.stderr, wrong.stderr
    assert "$MESHPILOT_TOKEN" in wrong.stderr and registration not in wrong.stderr
    # A rotated key: every token stops working, at once, without restarting the server.
    assert meshpilot("token", "rotate-key", "--state-dir", str(mp.state_dir)).returncode == 0
    rotated = meshpilot("status", *address, "--state-dir", str(tmp_path / "none"),
                        env={"MESHPILOT_TOKEN": token})
    assert rotated.returncode == 2 and "refused (401)" in rotated.stderr
    assert token not in rotated.stderr + rotated.stdout
    assert meshpilot("status", *address, "--state-dir", str(mp.state_dir)).returncode == 0
    mp.stop()
    unreachable = meshpilot("status", "--admin-address", f"127.0.0.1:{free_port()}")
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr


def copy_with_free_ports(source: Path, target: Path, ports: list[int]) -> dict[int, int]:
    """Copy an example folder, replacing each of its fixed `ports` with a free one."""
    mapping = {port: free_port() for port in ports}
    target.mkdir()
    for file in source.glob("*.yaml"):
        text = file.read_text()
        for old, new in mapping.items():
            text = re.sub(rf"\b{old}\b", str(new), text)
        (target / file.name).write_text(text)
    return mapping


class Up:
    """`meshpilot up DIR` as a subprocess; stopped with Ctrl-C (SIGINT) like a user would."""

    def __init__(self, policy: Path, log: Path):
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshpilot", "up", str(policy), "--xds-address",
                 "127.0.0.1:0", "--admin-address", "127.0.0.1:0", "--envoy-admin-port", "0"],
                stdout=out, stderr=subprocess.STDOUT, text=True)
        eventually(lambda: "meshpilot is up." in log.read_text() or self.proc.poll() is not None,
                   timeout=60, what="`meshpilot up` to start")
        assert self.proc.poll() is None, log.read_text()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def test_up_runs_the_quickstart_with_a_canary_split(tmp_path: Path) -> None:
    ports = copy_with_free_ports(QUICKSTART, tmp_path / "quickstart", [10000, 9081, 9082])
    listen, v1, v2 = ports[10000], ports[9081], ports[9082]
    up = Up(tmp_path / "quickstart", tmp_path / "up.log")
    try:
        assert f"curl -s http://127.0.0.1:{listen}/" in up.log.read_text()
        seen = collections.Counter(backend_of(listen) for _ in range(200))
        assert set(seen) == {f"reviews-v1:{v1}", f"reviews-v2:{v2}"}, seen
        assert seen[f"reviews-v1:{v1}"] > seen[f"reviews-v2:{v2}"]  # a 90/10 split
        assert backend_of(listen, headers={"x-canary": "true"}) == f"reviews-v2:{v2}"
    finally:
        code = up.stop()
    assert code == 0, up.log.read_text()
    assert "stopped." in up.log.read_text()
    time.sleep(0.2)
    with pytest.raises(OSError):
        backend_of(listen)  # Envoy is gone with it


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path, meshpilot_factory) -> None:
    """docker stop and systemd send SIGTERM: streams are closed, not cut, and the exit is 0."""
    mp = meshpilot_factory(write_policy(tmp_path, "c.yaml", ONE_CLUSTER))
    assert mp.proc is not None
    mp.proc.send_signal(signal.SIGTERM)
    assert mp.proc.wait(timeout=15) == 0, mp.log_tail()
    assert "meshpilot: stopping" in mp.log_tail()
