"""Securing the control plane, in process: TLS and mutual TLS on the xDS port, the identity
check (a node's view must be what its client certificate proves), certificate reload, the
bootstrap's TLS options (also through `envoy --mode validate`), admin exposure warnings, and
private keys in no log, config dump, CSDS answer, render output or error message."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import socket
import ssl
from dataclasses import replace
from pathlib import Path

import aiohttp
import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from tls_material import CA, Pair, _key, _key_pem
from xds_client import CDS, SDS, XdsClient, names_of

from meshpilot.cli import main as cli_main
from meshpilot.local.bootstrap import render_bootstrap
from meshpilot.local.envoy_process import validate_config
from meshpilot.runtime import app as app_module
from meshpilot.runtime.app import Meshpilot, Settings
from meshpilot.xds.csds import client_config
from meshpilot.xds.redact import fingerprint
from meshpilot.xds.security import (
    IdentityCheck,
    XdsSecurityError,
    check_settings,
    is_loopback,
    peer_identity,
)

SERVER_NAME = "meshpilot.test"


def issue(ca: CA, *, cn: str | None = None, dns: tuple[str, ...] = (),
          uris: tuple[str, ...] = ()) -> Pair:
    """A client/server certificate with exactly these names (CN, DNS and URI SANs)."""
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=30)))
    sans = [x509.DNSName(n) for n in dns] + [x509.UniformResourceIdentifier(u) for u in uris]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return Pair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), cert.serial_number)


def spiffe(ca: CA, sa: str, ns: str = "default") -> Pair:
    """Like the workload certificates of meshpilot's CA: URI SAN spiffe://cluster.local/ns/…"""
    return issue(ca, uris=(f"spiffe://cluster.local/ns/{ns}/sa/{sa}",))


def key_markers(*pems: bytes) -> list[str]:
    """What would betray a private key: each line of its base64 body. (The armour alone,
    "PRIVATE KEY", may appear in a message saying what a key file should look like.)"""
    markers: list[str] = []
    for pem in pems:
        markers += [line for line in pem.decode().splitlines() if not line.startswith("-----")]
    return markers


def assert_no_key(text: str, markers: list[str], where: str) -> None:
    found = [m for m in markers if m in text]
    assert not found, f"key material in {where}: {found[:2]}"


# ----- identity ----------------------------------------------------------------------------------


def _context(pair: Pair) -> dict[str, list[bytes]]:
    return {"x509_pem_cert": [pair.cert_pem], "transport_security_type": [b"ssl"]}


def test_identity_is_the_spiffe_sa_else_dns_sans_else_cn() -> None:
    ca = CA()
    both = issue(ca, cn="reviews", dns=("reviews.internal",),
                 uris=("spiffe://cluster.local/ns/default/sa/edge",))
    assert peer_identity(_context(both)).names == ("edge",)  # SPIFFE wins over DNS and CN
    assert peer_identity(_context(both)).source == "spiffe"
    dns = issue(ca, cn="ignored", dns=("edge", "edge.internal"))
    assert peer_identity(_context(dns)).names == ("edge", "edge.internal")
    assert peer_identity(_context(issue(ca, cn="edge"))).names == ("edge",)
    # A URI SAN that is not a SPIFFE service account does not count; the CN does.
    other = issue(ca, cn="edge", uris=("https://example.com/edge",))
    assert peer_identity(_context(other)).names == ("edge",)
    assert peer_identity({}).names == ()
    # Without the PEM, gRPC's typed properties are used.
    props = {"peer_uri": [b"spiffe://td/ns/x/sa/edge"], "peer_dns": [b"other"],
             "x509_common_name": [b"cn"]}
    assert peer_identity(props).names == ("edge",)
    assert peer_identity({"x509_common_name": [b"cn"]}).names == ("cn",)


class _Ctx:
    def __init__(self, auth: dict[str, list[bytes]]):
        self.auth = auth

    def auth_context(self) -> dict[str, list[bytes]]:
        return self.auth


def test_identity_check_rule() -> None:
    ca = CA()
    edge = _Ctx(_context(spiffe(ca, "edge")))
    check = IdentityCheck("strict")
    assert check(None, "edge", edge) is None
    refusal = check(None, "reviews", edge)
    assert refusal is not None and "'reviews'" in refusal and "sa/edge" in refusal
    assert "certificate" in (check(None, "edge", _Ctx({})) or "")
    assert IdentityCheck("off")(None, "reviews", edge) is None


def test_settings_combinations() -> None:
    assert check_settings(None, None, None, None) == (None, "off")
    tls, mode = check_settings("c", "k", "ca", None)
    assert tls is not None and tls.client_ca == "ca" and mode == "strict"
    assert check_settings("c", "k", "ca", "off")[1] == "off"
    assert check_settings("c", "k", None, None)[1] == "off"
    for bad in [("c", None, None, None), (None, None, "ca", None), ("c", "k", None, "strict"),
                ("c", "k", "ca", "lax")]:
        with pytest.raises(XdsSecurityError):
            check_settings(*bad)


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.2") and is_loopback("::1")
    assert is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert not is_loopback("meshpilot.internal")
    assert Settings(policy=Path(".")).admin_address.startswith("127.0.0.1:")


# ----- the server, in process --------------------------------------------------------------------

POLICY = """
kind: Service
name: api
endpoints: ["127.0.0.1:9"]
---
kind: Gateway
name: edge
listeners:
  - name: https
    port: 8443
    address: 127.0.0.1
    protocol: https
    tls: {{certificates: [{{cert: "{certs}/site.pem", key: "{certs}/site.key"}}]}}
---
kind: Route
name: site
gateway: edge
rules: [{{backends: [api]}}]
"""


class Material:
    """A CA, meshpilot's xDS certificate, a gateway certificate, client certificates."""

    def __init__(self, root: Path):
        self.dir = root / "certs"
        self.ca = CA("xds test CA")
        self.ca_path = self.ca.write(self.dir / "ca.pem")
        self.server = self.ca.issue(SERVER_NAME)
        self.cert, self.key = self.server.write(self.dir, "xds")
        self.site = self.ca.issue("site.example.com")
        self.site.write(self.dir, "site")
        self.policy = root / "policy"
        self.policy.mkdir()
        (self.policy / "edge.yaml").write_text(POLICY.format(certs=self.dir))

    def settings(self, *, client_ca: bool = True, **kwargs: object) -> Settings:
        return Settings(policy=self.policy, xds_address="127.0.0.1:0",
                        admin_address="127.0.0.1:0", debounce_quiet=0.02, debounce_max=1.0,
                        xds_tls_cert=str(self.cert), xds_tls_key=str(self.key),
                        xds_client_ca=str(self.ca_path) if client_ca else None,
                        allowed_files=(self.dir,), **kwargs)  # type: ignore[arg-type]

    def channel(self, mp: Meshpilot, client: Pair | None) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(
            self.ca.pem, client.key_pem if client else None, client.cert_pem if client else None)
        return grpc.aio.secure_channel(mp.xds_address, creds, options=[
            ("grpc.ssl_target_name_override", SERVER_NAME)])


async def _first_clusters(mp: Meshpilot, material: Material, client: Pair | None,
                          cluster: str, token: str | None = None,
                          ) -> tuple[list[str] | None, grpc.StatusCode | None]:
    """(cluster names received, None) or (None, the status the stream ended with)."""
    async with material.channel(mp, client) as channel:
        xds = XdsClient(mp.xds_address, channel=channel, node_id=f"{cluster}-1", cluster=cluster,
                        token=token)
        await xds.connect()
        try:
            await xds.send(type_url=CDS)
            response = await xds.recv_type(CDS, timeout=5)
            return names_of(response), None
        except grpc.aio.AioRpcError as e:  # the write failed: no connection
            return None, e.code()
        except AssertionError:
            return None, await xds.wait_closed()
        finally:
            await xds.close()


def test_mutual_tls_serves_the_proven_view_only(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    material = Material(tmp_path)
    edge = spiffe(material.ca, "edge")
    stranger = spiffe(CA("another CA"), "edge")

    async def run() -> None:
        mp = Meshpilot(material.settings())
        assert mp.identity_check == "strict"
        await mp.start()
        try:
            names, _ = await _first_clusters(mp, material, edge, "edge")
            assert names == ["api"]
            names, status = await _first_clusters(mp, material, edge, "reviews")
            assert names is None and status == grpc.StatusCode.PERMISSION_DENIED
            # No client certificate, or one from another CA: the handshake fails.
            for client in (None, stranger):
                names, status = await _first_clusters(mp, material, client, "edge")
                assert names is None and status == grpc.StatusCode.UNAVAILABLE, client
        finally:
            await mp.stop()

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1, refused
    assert "node 'reviews-1'" in refused[0] and "view 'reviews'" in refused[0]
    assert "spiffe://cluster.local/ns/default/sa/edge" in refused[0]


def test_identity_check_off_and_plain_tls(tmp_path: Path) -> None:
    material = Material(tmp_path)
    edge = issue(material.ca, cn="edge")

    async def run() -> None:
        mp = Meshpilot(material.settings(xds_identity_check="off"))
        await mp.start()
        try:  # mutual TLS still required, but any view may be asked for
            assert (await _first_clusters(mp, material, edge, "reviews"))[1] is None
            assert (await _first_clusters(mp, material, None, "edge"))[1] is not None
        finally:
            await mp.stop()
        mp = Meshpilot(material.settings(client_ca=False))
        await mp.start()
        try:  # TLS without client certificates: a node token proves the view instead
            assert (await _first_clusters(mp, material, None, "edge"))[1] is not None
            token = mp.tokens.issue("node", "edge")
            assert (await _first_clusters(mp, material, None, "edge", token))[0] == ["api"]
            # A plaintext client cannot talk to a TLS port.
            async with grpc.aio.insecure_channel(mp.xds_address) as channel:
                xds = XdsClient(mp.xds_address, channel=channel)
                await xds.connect()
                with pytest.raises((AssertionError, grpc.aio.AioRpcError)):
                    await xds.send(type_url=CDS)
                    await xds.recv(timeout=3)
                await xds.close()
        finally:
            await mp.stop()

    asyncio.run(run())


def _served_serial(port: int, material: Material, client: Pair) -> int:
    context = ssl.create_default_context(cadata=material.ca.pem.decode())
    context.set_alpn_protocols(["h2"])
    cert_file, key_file = client.write(material.dir, "probe")
    context.load_cert_chain(cert_file, key_file)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_server_certificate_reloads_without_restart(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    material = Material(tmp_path)
    edge = spiffe(material.ca, "edge")

    async def run() -> None:
        mp = Meshpilot(material.settings())
        await mp.start()
        port = int(mp.xds_address.rsplit(":", 1)[1])
        try:
            serial = await asyncio.to_thread(_served_serial, port, material, edge)
            assert serial == material.server.serial
            # A key that does not match: refused, the old certificate keeps serving.
            replacement = material.ca.issue(SERVER_NAME)
            (material.dir / "xds.pem").write_bytes(replacement.cert_pem)
            serial = await asyncio.to_thread(_served_serial, port, material, edge)
            assert serial == material.server.serial
            replacement.write(material.dir, "xds")
            serial = await asyncio.to_thread(_served_serial, port, material, edge)
            assert serial == replacement.serial
            assert (await _first_clusters(mp, material, edge, "edge"))[0] == ["api"]
        finally:
            await mp.stop()

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "does not match private key" in text and "previous xDS certificate" in text
    assert "xDS certificate reloaded" in text
    assert_no_key(text, key_markers(material.server.key_pem), "the log")


def test_bad_tls_files_refuse_to_start_without_showing_the_key(tmp_path: Path) -> None:
    material = Material(tmp_path)
    other = material.ca.issue("other")
    (material.dir / "xds.key").write_bytes(other.key_pem)
    with pytest.raises(XdsSecurityError) as caught:
        Meshpilot(material.settings())
    assert "does not match" in str(caught.value)
    assert_no_key(str(caught.value), key_markers(other.key_pem), "the error")
    assert cli_main(["serve", "--policy", str(material.policy), "--xds-client-ca",
                     str(material.ca_path)]) == 2


def test_exposed_admin_and_plaintext_xds_are_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()

    async def start_stop(settings: Settings) -> None:
        mp = Meshpilot(settings)
        await mp.start()
        await mp.stop()

    plain = Settings(policy=policy, xds_address="127.0.0.1:0", admin_address="127.0.0.1:0",
                     watch=False, insecure_xds=True)
    with caplog.at_level(logging.WARNING):
        asyncio.run(start_stop(plain))
    assert not [r for r in caplog.records if "reachable beyond" in r.getMessage()]
    # Pretend 127.0.0.1 were a public address (tests bind loopback only).
    monkeypatch.setattr(app_module, "is_loopback", lambda host: False)
    with caplog.at_level(logging.WARNING):
        asyncio.run(start_stop(plain))
    warnings = [r.getMessage() for r in caplog.records if "reachable beyond" in r.getMessage()]
    assert any("admin API" in w and "plain HTTP" in w for w in warnings), warnings
    assert any("PLAINTEXT" in w for w in warnings), warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        asyncio.run(start_stop(replace(plain, insecure_admin=True)))
    warnings = [r.getMessage() for r in caplog.records if "reachable beyond" in r.getMessage()]
    assert any("admin API" in w and "NO authentication" in w for w in warnings), warnings


# ----- keys never leak ---------------------------------------------------------------------------


def test_private_keys_appear_nowhere(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Gateway TLS keys (SDS secrets) and meshpilot's own xDS key: not in the log, the config
    dump, CSDS, `meshpilot render`, or the messages of a refused policy."""
    material = Material(tmp_path)
    edge = spiffe(material.ca, "edge")
    markers = key_markers(material.site.key_pem, material.server.key_pem, edge.key_pem)
    seen: dict[str, str] = {}

    async def run() -> None:
        mp = Meshpilot(material.settings())
        await mp.start()
        try:
            async with material.channel(mp, edge) as channel:
                xds = XdsClient(mp.xds_address, channel=channel, node_id="edge-1",
                                cluster="edge")
                await xds.connect()
                await xds.send(type_url=SDS, resource_names=["edge/https/tls[0]"])
                response = await xds.recv_type(SDS)
                # The Envoy that proved `edge` does get its key: that is the point of SDS.
                assert material.site.key_pem.decode().splitlines()[1].encode() in \
                    response.resources[0].value
                await xds.ack(response, resource_names=["edge/https/tls[0]"])
                await asyncio.sleep(0.2)
                conns = mp.registry.connections()
                assert any(c.stream.types[SDS].known for c in conns)  # CSDS has it to show
                seen["csds"] = str([client_config(c) for c in conns])
                base = f"http://{mp.admin_address}"
                operator = {"Authorization": f"Bearer {mp.tokens.issue('operator')}"}
                async with aiohttp.ClientSession(headers=operator) as session:
                    for path in ("/debug/config_dump?view=edge", "/debug/config_dump?node=edge-1",
                                 "/debug/proxies", "/debug/status"):
                        async with session.get(base + path) as r:
                            assert r.status == 200, path
                            seen[path] = await r.text()
                    assert "edge/https/tls[0]" in seen["/debug/config_dump?view=edge"]
                    # A refused policy: a key that belongs to another certificate, then a key
                    # file that is not a key at all (but carries key-looking text).
                    wrong = material.ca.issue("wrong")
                    (material.dir / "site.key").write_bytes(wrong.key_pem)
                    markers.extend(key_markers(wrong.key_pem))
                    await mp.controller.reload_async()
                    async with session.get(base + "/debug/status") as r:
                        seen["status after a mismatched key"] = await r.text()
                    (material.dir / "site.key").write_bytes(
                        b"-----BEGIN PRIVATE KEY-----\nNOTAKEYBUTSECRETISH\n")
                    markers.append("NOTAKEYBUTSECRETISH")
                    await mp.controller.reload_async()
                    async with session.get(base + "/debug/status") as r:
                        seen["status after refusals"] = await r.text()
                await xds.close()
        finally:
            await mp.stop()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(run())
    errors = json.loads(seen["status after a mismatched key"])["policy"]["errors"]
    assert any("does not match" in e for e in errors), errors
    errors = json.loads(seen["status after refusals"])["policy"]["errors"]
    assert any("no usable PEM private key" in e for e in errors), errors
    seen["log"] = "\n".join(r.getMessage() for r in caplog.records)
    assert "site.key" in seen["log"]  # the refusals were logged, by file name
    capsys.readouterr()
    (material.dir / "site.key").write_bytes(material.site.key_pem)
    assert cli_main(["render", str(material.policy), "--node-cluster", "edge",
                     "--allow-files-from", str(material.dir)]) == 0
    seen["render"] = capsys.readouterr().out
    assert fingerprint(material.site.key_pem) in seen["render"]
    for where, text in seen.items():
        assert_no_key(text, markers, where)


# ----- the Envoy bootstrap -----------------------------------------------------------------------


def _tls_of(bootstrap: dict) -> dict:
    return bootstrap["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]


def test_bootstrap_tls_options() -> None:
    base = dict(node_id="edge-1", node_cluster="edge", admin_address=("127.0.0.1", 0))
    plain = render_bootstrap(xds_addresses=[("127.0.0.1", 18000)], **base)
    assert "transport_socket" not in plain["static_resources"]["clusters"][0]
    tls = _tls_of(render_bootstrap(xds_addresses=[("127.0.0.1", 18000)], xds_tls_ca="/ca.pem",
                                   **base))
    common = tls["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    assert common["validation_context"] == {"trusted_ca": {"filename": "/ca.pem"}}
    assert "sni" not in tls and "tls_certificates" not in common
    mtls = _tls_of(render_bootstrap(
        xds_addresses=[("127.0.0.1", 18000)], xds_tls_ca="/ca.pem", xds_tls_cert="/c.pem",
        xds_tls_key="/c.key", xds_sni="meshpilot.internal", **base))
    assert mtls["sni"] == "meshpilot.internal"
    assert mtls["common_tls_context"]["tls_certificates"] == [
        {"certificate_chain": {"filename": "/c.pem"}, "private_key": {"filename": "/c.key"}}]
    assert mtls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "meshpilot.internal"}}]
    # A DNS xDS host is the default SNI.
    by_name = _tls_of(render_bootstrap(xds_addresses=[("meshpilot.mesh", 18000)],
                                       xds_tls_ca="/ca.pem", **base))
    assert by_name["sni"] == "meshpilot.mesh"
    for bad in (dict(xds_tls_cert="/c.pem", xds_tls_key="/c.key"), dict(xds_sni="x"),
                dict(xds_tls_ca="/ca.pem", xds_tls_cert="/c.pem")):
        with pytest.raises(ValueError):
            render_bootstrap(xds_addresses=[("127.0.0.1", 18000)], **base, **bad)


def test_bootstrap_cli_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bootstrap", "--node-id", "edge-1", "--node-cluster", "edge", "--xds-address",
            "127.0.0.1:18000", "--admin-address", "127.0.0.1:19000"]
    assert cli_main([*args, "--xds-tls-ca", "/ca.pem", "--xds-tls-cert", "/c.pem",
                     "--xds-tls-key", "/c.key", "--xds-sni", "meshpilot.internal"]) == 0
    tls = _tls_of(yaml.safe_load(capsys.readouterr().out))
    assert tls["sni"] == "meshpilot.internal"
    assert cli_main([*args, "--xds-tls-cert", "/c.pem", "--xds-tls-key", "/c.key"]) == 2
    assert "needs xds_tls_ca" in capsys.readouterr().err


@pytest.mark.envoy
@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_bootstrap_passes_envoy_validate(tmp_path: Path, mutual: bool) -> None:
    material = Material(tmp_path)
    client = material.ca.issue("edge")
    cert, key = client.write(material.dir, "edge")
    extra = dict(xds_tls_cert=str(cert), xds_tls_key=str(key)) if mutual else {}
    validate_config(render_bootstrap(
        node_id="edge-1", node_cluster="edge", xds_addresses=[("127.0.0.1", 18000)],
        admin_address=("127.0.0.1", 0), xds_tls_ca=str(material.ca_path), xds_sni=SERVER_NAME,
        **extra))
