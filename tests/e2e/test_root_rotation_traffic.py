"""Rotating the mesh CA root under live traffic, end to end (docs/operations.md, "Rotating the
CA root"): real sidecar Envoys with mTLS strict, bootstrapped over TLS trusting the root that
existed before the rotation, a meshpilot that is restarted in the middle of it, and the
operator's commands (`meshpilot ca rotate-root`, `finish-rotation`, `status`).

A calls B (strict mTLS, allows A and C) through its local port without pause from before the
rotation to after its finish, each request on a new connection (B's
`max_requests_per_connection: 1`), so every request is a fresh mTLS handshake between the two
sidecars with whatever certificates and bundles they hold at that moment: not one may fail. Along the way the test checks each
phase from outside: what B's inbound accepts (client certificates from either root during the
overlap, only the new root's after the finish), which root signed what B serves, what Envoy
holds as its trust bundle, and that an Envoy whose bootstrap trusts only the old root still
joins the mesh during the overlap.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from support import MeshpilotProcess, eventually, http_get, served_policy

from meshpilot.ca import CertificateAuthority
from meshpilot.local.bootstrap import render_bootstrap
from meshpilot.local.demo.echo import EchoServer
from meshpilot.local.envoy_process import EnvoyProcess

pytestmark = pytest.mark.envoy

SPIFFE = "spiffe://cluster.local/ns/default/sa/"

POLICY = """
kind: Service
name: a
endpoints: ["127.0.0.1:{a_in}"]
sidecar:
  port: {a_in}
  address: 127.0.0.1
  app: {app_a}
  mtls: strict
  calls: [{{service: b, local_port: {a_to_b}}}]
---
kind: Service
name: b
endpoints: ["127.0.0.1:{b_in}"]
max_requests_per_connection: 1  # every request from A a new mTLS handshake
sidecar:
  port: {b_in}
  address: 127.0.0.1
  app: {app_b}
  mtls: strict
  authorization: {{action: ALLOW, rules: [{{from: [a, c]}}]}}
---
kind: Service
name: c
endpoints: ["127.0.0.1:{c_in}"]
sidecar:
  port: {c_in}
  address: 127.0.0.1
  app: {app_c}
  mtls: strict
  calls: [{{service: b, local_port: {c_to_b}}}]
"""


def _sha(cert: x509.Certificate) -> str:
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


class Rotation:
    def __init__(self, served: Any, work: Path, ca_dir: Path):
        self.mp: MeshpilotProcess = served.mp
        self.envoys: dict[str, EnvoyProcess] = served.envoys
        self.ports: dict[str, int] = served.ports
        self.work, self.ca_dir = work, ca_dir
        self.failures: list[str] = []
        self.sent = 0
        self._stop = threading.Event()
        self._sender: threading.Thread | None = None

    # ---- the traffic that must never fail ----------------------------------------------------

    def start_traffic(self) -> None:
        def traffic() -> None:
            while not self._stop.is_set():
                try:
                    status, _, body = http_get(
                        f"http://127.0.0.1:{self.ports['a_to_b']}/rotating", timeout=3)
                    if status != 200:
                        self.failures.append(f"{time.time():.2f} {status}: {body[:200]!r}")
                except Exception as e:  # every failure counts
                    self.failures.append(f"{time.time():.2f} {e!r}")
                self.sent += 1
                time.sleep(0.02)
        self._sender = threading.Thread(target=traffic, daemon=True)
        self._sender.start()

    def stop_traffic(self) -> None:
        self._stop.set()
        if self._sender is not None:
            self._sender.join(5)

    # ---- the operator ---------------------------------------------------------------------------

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshpilot", *args,
             "--admin-address", f"127.0.0.1:{self.mp.admin_port}",
             "--state-dir", str(self.mp.state_dir)],
            capture_output=True, text=True, timeout=60)

    def ca(self) -> dict[str, Any]:
        return self.mp.status()["ca"]

    def phase(self) -> str:
        return self.ca()["phase"]

    # ---- looking from outside -------------------------------------------------------------------

    def mtls_to_b(self, issuer: CertificateAuthority, name: str = "a",
                  trust: bytes | None = None) -> tuple[int, x509.Certificate]:
        """One request straight to B's inbound over mTLS with a certificate for `name` issued by
        `issuer`; (status, the certificate B served), verified against `trust` (the bundle in
        the CA folder by default)."""
        issued = issuer.issue(issuer.spiffe_id(name), time.time(), 3600)
        folder = self.work / f"client-{issuer.root_fingerprint[7:19]}-{name}"
        folder.mkdir(exist_ok=True)
        (folder / "cert.pem").write_bytes(issued.certificate_chain)
        (folder / "key.pem").write_bytes(issued.private_key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(
            cadata=(trust or (self.ca_dir / "ca.crt").read_bytes()).decode())
        context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
        with socket.create_connection(("127.0.0.1", self.ports["b_in"]), timeout=3) as raw, \
                context.wrap_socket(raw) as tls:
            served = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
            tls.sendall(b"GET /direct HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
        return int(data.split(b" ", 2)[1]), served

    def bundle_held(self, sidecar: str) -> list[str]:
        """The fingerprints of the roots in the trust bundle the sidecar's Envoy holds."""
        dump = self.envoys[sidecar].config_dump(resource="dynamic_active_secrets")
        for entry in dump.get("configs", []):
            if entry["name"] == "spiffe/trust-bundle":
                ca = entry["secret"]["validation_context"]["trusted_ca"]
                pem = ca.get("inline_string") or ca.get("inline_bytes")
                pem = pem.encode() if isinstance(pem, str) else pem
                return [_sha(c) for c in x509.load_pem_x509_certificates(pem)]
        return []

    def new_sidecar(self, view: str, trusted_ca: Path) -> EnvoyProcess:
        """An Envoy of `view` bootstrapped now, its xDS TLS trusting the file `trusted_ca`."""
        bootstrap = render_bootstrap(
            node_id=f"{view}-late", node_cluster=view,
            xds_addresses=[("127.0.0.1", self.mp.xds_port)], admin_address=("127.0.0.1", 0),
            xds_tls_ca=str(trusted_ca), xds_sni="meshpilot",
            xds_token=self.mp.node_token(view))
        envoy = EnvoyProcess(bootstrap, self.work / f"late-{view}-{time.monotonic_ns()}",
                             name=f"late-{view}")
        return envoy


def _served_by(served: x509.Certificate, ca: CertificateAuthority) -> bool:
    try:
        served.verify_directly_issued_by(ca.root)
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def rotation(tmp_path_factory) -> Iterator[Rotation]:
    work = tmp_path_factory.mktemp("ca-rotation-e2e")
    ca_dir = work / "ca"
    CertificateAuthority.load_or_create(ca_dir)  # the root before the rotation
    servers = {f"app_{n}": EchoServer(n) for n in ("a", "b", "c")}
    with served_policy(work, "mesh.yaml", POLICY, servers,
                       free_ports=("a_in", "b_in", "c_in", "a_to_b", "c_to_b"),
                       envoys={"a": "sidecar-a", "b": "sidecar-b"},
                       extra_args=("--ca-dir", str(ca_dir), "--cert-ttl", "1h")) as served:
        environment = Rotation(served, work, ca_dir)
        eventually(lambda: http_get(f"http://127.0.0.1:{served.ports['a_to_b']}/")[0] == 200,
                   timeout=20, what="A's sidecar to reach B over mTLS")
        yield environment
        environment.stop_traffic()


def test_a_root_rotation_no_request_notices(rotation: Rotation) -> None:
    old = CertificateAuthority.load(rotation.ca_dir)
    old_pem = rotation.ca_dir / "ca.crt"
    bootstrap_ca = rotation.work / "old-ca.crt"  # what every Envoy's bootstrap trusts so far
    shutil.copy(old_pem, bootstrap_ca)
    assert rotation.phase() == "idle"
    assert [r["fingerprint"] for r in rotation.ca()["roots"]] == [old.root_fingerprint]
    status, served = rotation.mtls_to_b(old)
    assert status == 200 and _served_by(served, old)
    handshakes = rotation.envoys["a"].stats().get("cluster.b.ssl.handshake", 0)
    rotation.start_traffic()

    # Start: a new root joins every bundle, then signs; B is re-issued from it at once.
    started = rotation.cli("ca", "rotate-root", "--overlap", "manual")
    assert started.returncode == 0, started.stderr
    assert "adding-root" in started.stdout or "overlap" in started.stdout, started.stdout
    eventually(lambda: rotation.phase() == "overlap", timeout=30,
               what="the new root to sign once every Envoy holds it")
    ca = rotation.ca()
    new_fp = ca["roots"][0]["fingerprint"]
    assert [r["role"] for r in ca["roots"]] == ["signing", "trusted (previous)"]
    assert ca["roots"][1]["fingerprint"] == old.root_fingerprint != new_fp
    assert ca["xds_serving_root"] == old.root_fingerprint  # old bootstraps keep connecting
    new = CertificateAuthority.load(rotation.ca_dir)  # ca.key is the new root's now
    assert new.root_fingerprint == new_fp
    assert [_sha(c) for c in x509.load_pem_x509_certificates(old_pem.read_bytes())] == \
        [new_fp, old.root_fingerprint]  # the bootstrap's CA file holds the bundle
    for sidecar in ("a", "b"):
        eventually(lambda s=sidecar: rotation.bundle_held(s) == [new_fp, old.root_fingerprint],
                   timeout=15, what=f"sidecar {sidecar} to hold both roots")
    eventually(lambda: _served_by(rotation.mtls_to_b(new)[1], new), timeout=15,
               what="B to serve a certificate from the new root")
    eventually(lambda: rotation.ca()["workload_certificates"][old.root_fingerprint] == 0,
               timeout=15, what="every workload certificate re-issued from the new root")
    # During the overlap both roots' certificates are accepted.
    assert rotation.mtls_to_b(old)[0] == 200
    assert rotation.mtls_to_b(new)[0] == 200
    assert rotation.mtls_to_b(new, "unknown")[0] == 403  # authorization still applies

    # A restart mid-rotation resumes it: same phase, same roots; Envoys reconnect over TLS
    # trusting only the old root (the serving certificate still comes from it).
    rotation.mp.stop()
    rotation.mp.start()
    ca = rotation.ca()
    assert ca["phase"] == "overlap"
    assert [r["fingerprint"] for r in ca["roots"]] == [new_fp, old.root_fingerprint]
    eventually(lambda: {p["node_id"] for p in rotation.mp.proxies()} >= {"a-1", "b-1"},
               timeout=30, what="the old-bootstrap sidecars to reconnect after the restart")

    # An Envoy bootstrapped with only the old root joins during the overlap and calls B.
    late = rotation.new_sidecar("c", bootstrap_ca).start()
    try:
        late.wait_ready(30)
        eventually(lambda: http_get(f"http://127.0.0.1:{rotation.ports['c_to_b']}/late",
                                    timeout=3)[0] == 200,
                   timeout=20, what="a late sidecar (old root in its bootstrap) to reach B")
    finally:
        late.stop()

    # Finish: the old root leaves every bundle; the xDS serving certificate comes from the new.
    finished = rotation.cli("ca", "finish-rotation")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    ca = rotation.ca()
    assert ca["phase"] == "idle"
    assert [r["fingerprint"] for r in ca["roots"]] == [new_fp]
    assert ca["xds_serving_root"] == new_fp
    for sidecar in ("a", "b"):
        eventually(lambda s=sidecar: rotation.bundle_held(s) == [new_fp], timeout=15,
                   what=f"sidecar {sidecar} to drop the old root")
    assert [_sha(c) for c in x509.load_pem_x509_certificates(old_pem.read_bytes())] == [new_fp]
    # A certificate from the old root is refused now; the new root's still works.
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        rotation.mtls_to_b(old, trust=new.trust_bundle)
    assert rotation.mtls_to_b(new, trust=new.trust_bundle)[0] == 200
    # The traffic flowed through all of it.
    time.sleep(0.5)
    rotation.stop_traffic()
    assert rotation.sent > 50, rotation.sent
    # Each request was its own handshake between the sidecars (A's count, as the client).
    assert rotation.envoys["a"].stats().get("cluster.b.ssl.handshake", 0) - handshakes \
        >= rotation.sent - 5
    assert rotation.failures == [], \
        f"{len(rotation.failures)} of {rotation.sent} requests failed: {rotation.failures[:5]}"
    # meshpilot status shows the roots with fingerprint and expiry.
    shown = rotation.cli("status")
    assert f"signing              {new_fp}  expires " in shown.stdout, shown.stdout
    assert "rotation phase idle" in shown.stdout
    described = rotation.cli("ca", "status", "--json")
    assert described.returncode == 0, described.stderr
    assert json.loads(described.stdout)["roots"][0]["fingerprint"] == new_fp


def test_an_overlap_ends_by_itself_and_new_xds_connections_need_the_new_root(
        rotation: Rotation) -> None:
    before = CertificateAuthority.load(rotation.ca_dir)
    started = rotation.cli("ca", "rotate-root", "--overlap", "15s", "--reissue", "at-renewal")
    assert started.returncode == 0, started.stderr
    again = rotation.cli("ca", "rotate-root")  # one rotation at a time
    assert again.returncode != 0 and "already in progress" in again.stderr, again.stderr
    eventually(lambda: rotation.phase() == "idle", timeout=60,
               what="the overlap to end by itself")
    ca = rotation.ca()
    assert len(ca["roots"]) == 1 and ca["roots"][0]["fingerprint"] != before.root_fingerprint
    # Reissued at the finish (at-renewal with a 1h TTL had not renewed them yet).
    assert ca["workload_certificates"][ca["roots"][0]["fingerprint"]] >= 2
    after = CertificateAuthority.load(rotation.ca_dir)
    eventually(lambda: rotation.mtls_to_b(after, trust=after.trust_bundle)[0] == 200,
               timeout=15, what="B to serve a certificate from the newest root")
    # An Envoy whose bootstrap trusts only the previous root cannot connect any more: the
    # serving certificate comes from the new root.
    stale = rotation.work / "stale-ca.crt"
    stale.write_bytes(before.trust_bundle)
    refused = rotation.new_sidecar("c", stale).start()
    try:
        eventually(lambda: refused.stats().get("cluster.meshpilot_xds.ssl.fail_verify_error",
                                               0) > 0,
                   timeout=20, what="Envoy to refuse meshpilot's certificate")
        assert "c-late" not in {p["node_id"] for p in rotation.mp.proxies()}
    finally:
        refused.stop()
