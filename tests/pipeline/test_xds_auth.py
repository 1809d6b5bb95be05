"""Who may connect to the xDS port, with the default settings: no TLS-less client, no
anonymous client, no client of another view, no expired or foreign token gets anything, on
every xDS type, on ADS and per-type services, SotW and delta; CSDS only for an operator. The
explicit opt-out (`insecure_xds`) serves plaintext to anyone, and says so.

Each refused client is checked for what it received (nothing) and how its stream ended; a
client with a proper node token is the control that shows the same request would succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from xds_client import CDS, EDS, LDS, RDS, SDS, XdsClient, fetch_client_status, names_of

from meshpilot.ca.tokens import TokenAuthority
from meshpilot.runtime.app import Meshpilot, Settings
from meshpilot.xds.security import XdsSecurityError

POLICY = """\
kind: Service
name: api
endpoints: [127.0.0.1:9081]
---
kind: Gateway
name: edge
listeners: [{name: http, port: 10000, address: 127.0.0.1}]
---
kind: Route
name: shop
gateway: edge
rules:
  - backends: [api]
    api_keys: {header: x-api-key, keys: {partner: "SECRET-API-KEY-1c7e"}}
---
kind: EnvoyResources
name: extras
secrets:
  - name: shared
    generic_secret: {secret: {inline_string: "SECRET-GENERIC-99af"}}
"""
# What a first request asks for, per type: the names the edge view has.
NAMES = {CDS: [], LDS: [], EDS: ["api"], RDS: ["edge/http"], SDS: ["shared"]}


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **settings: object) -> AsyncIterator[Meshpilot]:
    policy = tmp_path / "policy"
    policy.mkdir(exist_ok=True)
    (policy / "edge.yaml").write_text(POLICY)
    mp = Meshpilot(Settings(policy=policy, xds_address="127.0.0.1:0",
                            admin_address="127.0.0.1:0", watch=False,
                            state_dir=tmp_path / "state", **settings))  # type: ignore[arg-type]
    await mp.start()
    try:
        yield mp
    finally:
        await mp.stop()


def tls_channel(mp: Meshpilot) -> grpc.aio.Channel:
    """A channel that trusts the mesh CA, as an Envoy bootstrapped by meshpilot does."""
    assert mp.xds_ca_pem is not None
    return grpc.aio.secure_channel(
        mp.xds_address, grpc.ssl_channel_credentials(mp.xds_ca_pem),
        options=[("grpc.ssl_target_name_override", "meshpilot")])


async def first_answer(mp: Meshpilot, *, token: str | None, service: str, type_url: str,
                       delta: bool, view: str = "edge", channel: grpc.aio.Channel | None = None,
                       ) -> tuple[list[str], grpc.StatusCode | None]:
    """(names of the first response's resources, how the stream ended if it did)."""
    own = channel is None
    channel = channel or tls_channel(mp)
    try:
        xds = XdsClient(mp.xds_address, channel=channel, delta=delta, service=service,
                        node_id=f"{view}-1", cluster=view, token=token)
        await xds.connect()
        try:
            if delta:
                await xds.send(type_url=type_url, resource_names_subscribe=NAMES[type_url])
            else:
                await xds.send(type_url=type_url, resource_names=NAMES[type_url])
            response = await xds.recv(timeout=3)
            return names_of(response), None
        except grpc.aio.AioRpcError as e:
            return [], e.code()
        except AssertionError:
            if xds.error is not None:
                return [], xds.error.code()
            return [], None
        finally:
            await xds.close()
    finally:
        if own:
            await channel.close()


CASES = [(service, type_url, delta) for delta in (False, True)
         for service, type_url in [("ads", CDS), ("ads", LDS), ("ads", EDS), ("ads", RDS),
                                   ("ads", SDS), (CDS, CDS), (EDS, EDS), (LDS, LDS),
                                   (RDS, RDS), (SDS, SDS)]]


def test_only_a_node_token_for_the_view_gets_anything(tmp_path: Path) -> None:
    async def run() -> None:
        async with serving(tmp_path) as mp:
            foreign = TokenAuthority(b"f" * 32).issue("node", "edge")
            expired = TokenAuthority(mp.tokens._key, clock=lambda: 1_000_000.0).issue(
                "node", "edge", ttl=60)
            refused = {
                "anonymous": None,
                "another view's token": mp.tokens.issue("node", "reviews"),
                "a foreign key's token": foreign,
                "an expired token": expired,
                "an operator token": mp.tokens.issue("operator"),
                "a registration token": mp.tokens.issue("registration", "edge"),
                "garbage": "not-a-token",
            }
            good = mp.tokens.issue("node", "edge")
            for service, type_url, delta in CASES:
                where = f"{service} {type_url.rsplit('.', 1)[-1]} {'delta' if delta else 'sotw'}"
                names, ended = await first_answer(mp, token=good, service=service,
                                                  type_url=type_url, delta=delta)
                assert names and ended is None, f"the control failed on {where}"
                for who, token in refused.items():
                    names, ended = await first_answer(mp, token=token, service=service,
                                                      type_url=type_url, delta=delta)
                    assert names == [], f"{who} received {names} on {where}"
                    assert ended == grpc.StatusCode.PERMISSION_DENIED, (who, where, ended)

    asyncio.run(run())


def test_a_plaintext_client_reaches_nothing(tmp_path: Path) -> None:
    async def run() -> None:
        async with serving(tmp_path) as mp:
            token = mp.tokens.issue("node", "edge")
            async with grpc.aio.insecure_channel(mp.xds_address) as plain:
                names, ended = await first_answer(mp, token=token, service="ads", type_url=SDS,
                                                  delta=False, channel=plain)
            assert names == [] and ended == grpc.StatusCode.UNAVAILABLE

    asyncio.run(run())


def test_csds_answers_operators_only_and_redacts(tmp_path: Path) -> None:
    async def run() -> None:
        async with serving(tmp_path) as mp:
            # An Envoy holding every type, so CSDS has contents to show.
            async with tls_channel(mp) as channel:
                xds = XdsClient(mp.xds_address, channel=channel, node_id="edge-1",
                                cluster="edge", token=mp.tokens.issue("node", "edge"))
                await xds.connect()
                await xds.send(type_url=LDS)
                await xds.ack(await xds.recv_type(LDS))
                await xds.send(type_url=SDS, resource_names=["shared"])
                await xds.ack(await xds.recv_type(SDS), resource_names=["shared"])
                credentials = grpc.ssl_channel_credentials(mp.xds_ca_pem)
                for who, token in [("anonymous", None),
                                   ("a node token", mp.tokens.issue("node", "edge")),
                                   ("a registration token",
                                    mp.tokens.issue("registration", "api"))]:
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await fetch_client_status(mp.xds_address, token=token,
                                                  credentials=credentials,
                                                  server_name="meshpilot")
                    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, who
                status = await fetch_client_status(
                    mp.xds_address, token=mp.tokens.issue("operator"),
                    credentials=credentials, server_name="meshpilot")
                await xds.close()
            text = str(status)
            assert "edge-1" in text and "shared" in text
            assert "SECRET-API-KEY-1c7e" not in text and "SECRET-GENERIC-99af" not in text

    asyncio.run(run())


def test_insecure_xds_is_explicit_plaintext_and_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        async with serving(tmp_path, insecure_xds=True) as mp:
            assert mp.xds_ca_pem is None
            async with grpc.aio.insecure_channel(mp.xds_address) as plain:
                names, ended = await first_answer(mp, token=None, service="ads", type_url=CDS,
                                                  delta=False, channel=plain)
            assert names == ["api"] and ended is None
            async with XdsClient(mp.xds_address, node_id="edge-1", cluster="edge") as xds:
                await xds.send(type_url=CDS)
                await xds.ack(await xds.recv_type(CDS))
                status = await fetch_client_status(mp.xds_address)  # CSDS too: anyone
            assert "edge-1" in str(status)
            async with aiohttp.ClientSession() as session, \
                    session.get(f"http://{mp.admin_address}/readyz") as response:
                readyz = await response.text()
            assert response.status == 200 and "--insecure-xds" in readyz

    with caplog.at_level(logging.WARNING):
        asyncio.run(run())
    assert any("PLAINTEXT and UNAUTHENTICATED" in r.getMessage() for r in caplog.records)


def test_insecure_xds_cannot_be_combined_with_tls_files(tmp_path: Path) -> None:
    with pytest.raises(XdsSecurityError, match="--insecure-xds"):
        Meshpilot(Settings(policy=tmp_path, insecure_xds=True, xds_tls_cert="c.pem",
                           xds_tls_key="k.pem"))


def test_the_serving_certificate_names_what_envoys_dial(tmp_path: Path) -> None:
    from cryptography import x509

    mp = Meshpilot(Settings(policy=tmp_path, xds_address="127.0.0.1:0",
                            xds_server_names=("meshpilot.mesh",), state_dir=tmp_path / "s"))
    assert mp.xds_self_issued is not None
    cert = x509.load_pem_x509_certificate(mp.xds_self_issued.certificate_chain)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"meshpilot", "localhost",
                                                            "meshpilot.mesh"}
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    root = x509.load_pem_x509_certificate(mp.xds_ca_pem or b"")
    assert cert.issuer == root.subject
