"""A root rotation in process, through the admin API and a real gRPC xDS client that plays a
sidecar's SDS: the new root is in the bundle before it signs, and it signs only once the
client answered that push; certificates are re-issued from it; the finish drops the old root;
a restart mid-rotation resumes; the --write-node-credentials copies of the bundle follow; bad
requests are refused with the reason. Not about xDS security: insecure_xds=True."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from xds_client import SDS, XdsClient, messages_of, node

from meshpilot.runtime.app import Meshpilot, Settings
from meshpilot.translators.mtls import IDENTITY_SECRET, TRUST_BUNDLE_SECRET

NAMES = [IDENTITY_SECRET, TRUST_BUNDLE_SECRET]  # SotW: every request restates them
POLICY = """
kind: Service
name: b
endpoints: ["127.0.0.1:9001"]
sidecar: {port: 15006, address: 127.0.0.1, app: 9000, mtls: strict}
"""


def make(tmp_path: Path, **overrides: Any) -> Meshpilot:
    policy = tmp_path / "policy"
    policy.mkdir(exist_ok=True)
    (policy / "mesh.yaml").write_text(POLICY)
    return Meshpilot(Settings(policy=policy, xds_address="127.0.0.1:0",
                              admin_address="127.0.0.1:0", watch=False, insecure_xds=True,
                              state_dir=tmp_path / "state", **overrides))


def _sha(cert: x509.Certificate) -> str:
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def secrets(response: Any) -> tuple[list[str], x509.Certificate | None]:
    """(fingerprints of the bundle's roots, the identity certificate) of an SDS response."""
    found = messages_of(response)
    bundle: list[str] = []
    identity = None
    if TRUST_BUNDLE_SECRET in found:
        pem = found[TRUST_BUNDLE_SECRET].validation_context.trusted_ca.inline_string
        bundle = [_sha(c) for c in x509.load_pem_x509_certificates(pem.encode())]
    if IDENTITY_SECRET in found:
        identity = x509.load_pem_x509_certificate(
            found[IDENTITY_SECRET].tls_certificate.certificate_chain.inline_string.encode())
    return bundle, identity


def issuer_of(cert: x509.Certificate, roots: dict[str, x509.Certificate]) -> str | None:
    for fp, root in roots.items():
        try:
            cert.verify_directly_issued_by(root)
        except Exception:
            continue
        return fp
    return None


class Admin:
    def __init__(self, session: aiohttp.ClientSession, mp: Meshpilot):
        self.session, self.mp = session, mp

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.mp.tokens.issue('operator')}"}
        kwargs: dict[str, Any] = {"json": body} if body is not None else {}
        if method == "POST" and body is None:
            kwargs = {"json": {}}
        async with self.session.request(method, f"http://{self.mp.admin_address}{path}",
                                        headers=headers, **kwargs) as r:
            return r.status, json.loads(await r.text())

    async def ca(self) -> dict[str, Any]:
        status, body = await self.call("GET", "/debug/ca")
        assert status == 200, body
        return body

    async def phase_becomes(self, phase: str, timeout: float = 10) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (ca := await self.ca())["phase"] != phase:
            assert loop.time() < deadline, f"phase {ca['phase']}, not {phase}: {ca}"
            await asyncio.sleep(0.05)
        return ca


def test_the_new_root_signs_only_after_the_sidecar_answered_its_bundle(tmp_path: Path) -> None:
    credentials = tmp_path / "creds-b"
    mp = make(tmp_path, node_credentials=(("b", credentials),))

    async def scenario() -> None:
        await mp.start()
        try:
            async with aiohttp.ClientSession() as session, \
                    XdsClient(mp.xds_address) as client:
                admin = Admin(session, mp)
                await client.send(node=node("b-1", "b"), type_url=SDS, resource_names=NAMES)
                first = await client.recv_type(SDS)
                old_bundle, old_identity = secrets(first)
                old_fp = (await admin.ca())["roots"][0]["fingerprint"]
                assert old_bundle == [old_fp] and old_identity is not None
                await client.ack(first, resource_names=NAMES)

                # Start: the bundle gains the new root; the identity is untouched.
                status, started = await admin.call("POST", "/v1/ca/rotate-root",
                                                   {"overlap": "manual"})
                assert status == 200, started
                assert started["phase"] == "adding-root"
                new_fp = started["roots"][1]["fingerprint"]
                assert [r["role"] for r in started["roots"]] == ["signing", "trusted (next)"]
                pushed = await client.recv_type(SDS)
                bundle, identity = secrets(pushed)
                assert bundle == [old_fp, new_fp]
                assert identity is None or identity.serial_number == old_identity.serial_number
                assert (credentials / "ca.crt").read_bytes().count(b"BEGIN CERTIFICATE") == 2
                # Unanswered, the push holds the rotation back: the new root does not sign.
                await asyncio.sleep(0.5)
                ca = await admin.ca()
                assert ca["phase"] == "adding-root" and "waiting" in (ca["step"] or ""), ca
                status, body = await admin.call("POST", "/v1/ca/rotate-root")
                assert status == 409 and "already in progress" in body["error"]
                status, body = await admin.call("POST", "/v1/ca/finish-rotation")
                assert status == 409 and "not signing yet" in body["error"]
                await client.ack(pushed, resource_names=NAMES)

                # Promoted: the identity is re-issued from the new root at once.
                await admin.phase_becomes("overlap")
                reissued = await client.recv_type(SDS)
                bundle, identity = secrets(reissued)
                roots = {_sha(c): c for c in x509.load_pem_x509_certificates(
                    (mp.root_store.folder / "ca.crt").read_bytes())}  # type: ignore[union-attr]
                assert identity is not None and issuer_of(identity, roots) == new_fp
                assert bundle in ([], [new_fp, old_fp])  # sent again only if it changed
                await client.ack(reissued, resource_names=NAMES)
                ca = await admin.ca()
                assert ca["workload_certificates"] == {new_fp: 1, old_fp: 0}
                assert ca["xds_serving_root"] == old_fp

                # Finish: the old root leaves the bundle.
                status, body = await admin.call("POST", "/v1/ca/finish-rotation")
                assert status == 202, body
                final = await client.recv_type(SDS)
                assert secrets(final)[0] == [new_fp]
                await client.ack(final, resource_names=NAMES)
                ca = await admin.phase_becomes("idle")
                assert [r["fingerprint"] for r in ca["roots"]] == [new_fp]
                assert ca["xds_serving_root"] == new_fp
                assert (credentials / "ca.crt").read_bytes().count(b"BEGIN CERTIFICATE") == 1
                status, body = await admin.call("POST", "/v1/ca/finish-rotation")
                assert status == 409 and "no rotation to finish" in body["error"]
                # /debug/status carries the same, for `meshpilot status`.
                status, full = await admin.call("GET", "/debug/status")
                assert full["ca"]["phase"] == "idle"
        finally:
            await mp.stop()

    asyncio.run(scenario())


def test_bad_rotation_requests_are_refused_with_the_reason(tmp_path: Path) -> None:
    mp = make(tmp_path)

    async def scenario() -> None:
        await mp.start()
        try:
            async with aiohttp.ClientSession() as session:
                admin = Admin(session, mp)
                for body, message in [({"overlap": "soon"}, "overlap"),
                                      ({"overlap": -5}, "between 0 and 366 days"),
                                      ({"overlap": True}, "a duration"),
                                      ({"reissue": "later"}, "reissue: one of"),
                                      ({"root": "mine"}, "unknown field"),
                                      ([1, 2], "JSON object")]:
                    status, answer = await admin.call("POST", "/v1/ca/rotate-root", body)
                    assert status == 400 and message in answer["error"], (body, answer)
                assert (await admin.ca())["phase"] == "idle"  # nothing started
                assert not (tmp_path / "state" / "ca-rotation.json").exists()
        finally:
            await mp.stop()

    asyncio.run(scenario())


def test_a_restart_mid_rotation_resumes_it(tmp_path: Path) -> None:
    async def first() -> str:
        mp = make(tmp_path)
        await mp.start()
        try:
            async with aiohttp.ClientSession() as session:
                admin = Admin(session, mp)
                status, body = await admin.call("POST", "/v1/ca/rotate-root",
                                                {"overlap": "1h", "reissue": "at-renewal"})
                assert status == 200, body
                # No Envoy is connected: nobody to wait for, the new root signs at once.
                ca = await admin.phase_becomes("overlap")
                return ca["roots"][0]["fingerprint"]
        finally:
            await mp.stop()

    async def second(new_fp: str) -> None:
        mp = make(tmp_path)
        await mp.start()
        try:
            async with aiohttp.ClientSession() as session:
                ca = await Admin(session, mp).ca()
                assert ca["phase"] == "overlap" and ca["roots"][0]["fingerprint"] == new_fp
                assert ca["reissue"] == "at-renewal" and ca["finish_after"] is not None
                # The serving certificate of the restarted process still comes from the old
                # root, which every Envoy bootstrapped before the rotation trusts.
                assert mp.xds_self_issued is None  # insecure here; the rule is the state's:
                assert mp.rotator.state.server_authority.root_fingerprint == \
                    ca["roots"][1]["fingerprint"]
        finally:
            await mp.stop()

    asyncio.run(second(asyncio.run(first())))


def test_a_replica_sharing_the_root_through_a_store_refuses_to_rotate_it(
        tmp_path: Path, etcd: Any) -> None:
    # The store carries the root only at start: a rotation on one replica would leave the
    # others trusting the old root alone. Refused with the reason, and nothing changes.
    mp = make(tmp_path, store=etcd.url)

    async def scenario() -> None:
        await mp.start()
        try:
            async with aiohttp.ClientSession() as session:
                admin = Admin(session, mp)
                before = await admin.ca()
                status, body = await admin.call("POST", "/v1/ca/rotate-root")
                assert status == 409, body
                assert "--store" in body["error"] and "not supported yet" in body["error"]
                after = await admin.ca()
                assert after["phase"] == before["phase"] == "idle"
                assert after["roots"] == before["roots"]
        finally:
            await mp.stop()

    asyncio.run(scenario())
