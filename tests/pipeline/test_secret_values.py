"""No secret value of any kind in anything meshpilot shows: CSDS (with contents, Secrets
included), the admin API's dumps, status, proxies and metrics, `meshpilot render`, the log, and
the messages of a refused policy. Each secret is a marker string; every output is scanned for
every marker, and the secrets' fingerprints are checked to be where the values were.

(TLS private keys and the CA's keys are scanned the same way in test_xds_tls.py.)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from pathlib import Path

import aiohttp
import grpc
import pytest
from xds_client import XdsClient, fetch_client_status, node

from meshpilot.base import types
from meshpilot.cli import main as cli_main
from meshpilot.runtime.app import Meshpilot, Settings
from meshpilot.xds.redact import fingerprint

API_KEY = "MARKER-api-key-3f9c2a"
HMAC_KEY = "MARKER-hmac-key-81bd"
GENERIC = "MARKER-generic-secret-5d11"
PASSWORD_HASH = "{SHA}" + base64.b64encode(hashlib.sha1(b"MARKER-password").digest()).decode()
HTPASSWD = f"alice:{PASSWORD_HASH}\n"
JWKS = json.dumps({"keys": [{"kty": "oct", "kid": "h1", "alg": "HS256",
                             "k": base64.urlsafe_b64encode(HMAC_KEY.encode()).decode().rstrip("=")}]})
MARKERS = [API_KEY, PASSWORD_HASH, GENERIC, JWKS.split('"k": ')[1][:20],
           base64.b64encode(GENERIC.encode()).decode()[:16], API_KEY.encode().hex()]

POLICY = """\
kind: Service
name: api
endpoints: [127.0.0.1:9081]
---
kind: Gateway
name: edge
listeners: [{{name: http, port: 10000, address: 127.0.0.1}}]
---
kind: Route
name: shop
gateway: edge
jwt:
  required: false
  providers: [{{name: corp, issuer: corp, jwks: {{inline: {jwks}}}}}]
rules:
  - match: {{path: {{prefix: /partners}}}}
    backends: [api]
    api_keys: {{header: x-api-key, keys: {{partner-a: "{api_key}"}}}}
  - match: {{path: {{prefix: /staff}}}}
    backends: [api]
    basic_auth: {{users: {{file: {users}}}}}
  - backends: [api]
---
kind: EnvoyResources
name: extras
secrets:
  - name: shared-token
    generic_secret: {{secret: {{inline_string: "{generic}"}}}}
"""


def policy_text(folder: Path) -> str:
    return POLICY.format(users=folder / "users.htpasswd", jwks=json.dumps(JWKS), api_key=API_KEY,
                         generic=GENERIC)


def assert_no_marker(text: str, where: str) -> None:
    found = [marker for marker in MARKERS if marker in text]
    assert not found, f"a secret value in {where}: {found}"


def test_no_secret_value_in_any_output(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "edge.yaml").write_text(policy_text(policy))
    (policy / "users.htpasswd").write_text(HTPASSWD)
    seen: dict[str, str] = {}

    async def scenario() -> None:
        mp = Meshpilot(Settings(policy=policy, xds_address="127.0.0.1:0",
                                admin_address="127.0.0.1:0", watch=False,
                                state_dir=tmp_path / "state"))
        await mp.start()
        credentials = grpc.ssl_channel_credentials(mp.xds_ca_pem)
        channel = grpc.aio.secure_channel(mp.xds_address, credentials,
                                          options=[("grpc.ssl_target_name_override",
                                                    "meshpilot")])
        try:
            async with XdsClient(mp.xds_address, channel=channel,
                                 token=mp.tokens.issue("node", "edge")) as xds:
                # Hold every type, so CSDS has each resource's contents to show.
                await xds.send(node=node("edge-1", "edge"), type_url=types.LISTENER)
                listeners = await xds.recv_type(types.LISTENER)
                await xds.ack(listeners)
                await xds.send(type_url=types.ROUTE, resource_names=["edge/http"])
                await xds.ack(await xds.recv_type(types.ROUTE), resource_names=["edge/http"])
                await xds.send(type_url=types.SECRET, resource_names=["shared-token"])
                secrets = await xds.recv_type(types.SECRET)
                # The Envoy of the view does get the value: that is what SDS is for.
                assert GENERIC.encode() in secrets.resources[0].value
                await xds.ack(secrets, resource_names=["shared-token"])
                await asyncio.sleep(0.2)
                status = await fetch_client_status(
                    mp.xds_address, token=mp.tokens.issue("operator"), credentials=credentials,
                    server_name="meshpilot")
                seen["csds"] = str(status)
                base = f"http://{mp.admin_address}"
                operator = {"Authorization": f"Bearer {mp.tokens.issue('operator')}"}
                async with aiohttp.ClientSession(headers=operator) as session:
                    for path in ("/debug/config_dump?view=edge", "/debug/config_dump?node=edge-1",
                                 "/debug/proxies", "/debug/status", "/metrics"):
                        async with session.get(base + path) as response:
                            assert response.status == 200, path
                            seen[path] = await response.text()
                    # A refused edit of a file holding secrets: its messages name, never echo.
                    (policy / "edge.yaml").write_text(
                        policy_text(policy).replace("partner-a:", "partner a:"))
                    (policy / "users.htpasswd").write_text(HTPASSWD + "not an htpasswd line\n")
                    await mp.controller.reload_async()
                    async with session.get(base + "/debug/status") as response:
                        seen["status after a refused edit"] = await response.text()
        finally:
            await channel.close()
            await mp.stop()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(scenario())
    assert json.loads(seen["status after a refused edit"])["policy"]["errors"]
    seen["log"] = "\n".join(record.getMessage() for record in caplog.records)
    (policy / "edge.yaml").write_text(policy_text(policy))
    (policy / "users.htpasswd").write_text(HTPASSWD)
    capsys.readouterr()
    assert cli_main(["render", str(policy), "--node-cluster", "edge"]) == 0
    seen["render"] = capsys.readouterr().out
    for where, text in seen.items():
        assert_no_marker(text, where)
    # Where each value was, its fingerprint is: CSDS shows every resource, Secrets included.
    # (basic_auth's users go to Envoy by file name: their hashes are never in a resource.)
    for where in ("csds", "/debug/config_dump?view=edge", "render"):
        for value in (API_KEY, GENERIC):
            assert fingerprint(value) in seen[where], (where, value)
