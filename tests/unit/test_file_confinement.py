"""Files a policy names are read only from the policy folder and the folders allowed on purpose
(`--allow-files-from`): a certificate, key, API key, JWKS or htpasswd anywhere else, or reached
through a link or `..`, is refused at the field that names it, and nothing of it is read."""

from __future__ import annotations

from pathlib import Path

import pytest
from tls_material import CA

from meshpilot.base.errors import PolicyError
from meshpilot.inputs.loader import PolicyLoader, load_policy

GATEWAY = """kind: Gateway
name: edge
listeners:
  - name: https
    port: 8443
    protocol: https
    tls: {{certificates: [{{cert: "{cert}", key: "{key}"}}]}}
"""

ROUTE = """kind: Service
name: api
endpoints: ["127.0.0.1:9443"]
---
kind: Gateway
name: edge
listeners: [{{name: http, port: 8080}}]
---
kind: Route
name: site
gateway: edge
{security}
rules: [{{backends: [api]}}]
"""


def issues(policy: Path, allowed: tuple[Path, ...] = ()) -> list[str]:
    with pytest.raises(PolicyError) as raised:
        load_policy(policy, allowed)
    return [str(issue) for issue in raised.value.issues]


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """(the policy folder, a folder beside it holding a certificate and its key)."""
    policy, outside = tmp_path / "policy", tmp_path / "outside"
    policy.mkdir()
    CA().issue("a.example.com").write(outside, "a")
    return policy, outside


def test_a_certificate_outside_the_policy_folder_is_refused_at_its_field(folders) -> None:
    policy, outside = folders
    (policy / "edge.yaml").write_text(GATEWAY.format(cert=outside / "a.pem",
                                                     key=outside / "a.key"))
    found = issues(policy)
    assert len(found) == 1
    assert found[0].startswith("edge.yaml:7:")
    assert "certificates[0].cert" in found[0] and "outside the policy folder" in found[0]
    assert "--allow-files-from" in found[0]
    # Allowed on purpose: loaded, by the cold and by the incremental loader alike.
    assert load_policy(policy, (outside,)).gateways[0].listeners[0].tls is not None
    assert PolicyLoader(policy, (outside,)).load().gateways[0].listeners[0].tls is not None


def test_inside_the_policy_folder_needs_no_allowance(folders) -> None:
    policy, outside = folders
    (policy / "tls").mkdir()
    for name in ("a.pem", "a.key"):
        (policy / "tls" / name).write_bytes((outside / name).read_bytes())
    (policy / "edge.yaml").write_text(GATEWAY.format(cert="tls/a.pem", key="tls/a.key"))
    assert load_policy(policy).gateways[0].listeners[0].tls is not None


def test_links_and_dot_dot_do_not_escape(folders) -> None:
    policy, outside = folders
    (policy / "tls").mkdir()
    (policy / "tls" / "a.pem").symlink_to(outside / "a.pem")
    (policy / "tls" / "a.key").symlink_to(outside / "a.key")
    (policy / "edge.yaml").write_text(GATEWAY.format(cert="tls/a.pem", key="tls/a.key"))
    assert any("outside the policy folder" in i for i in issues(policy))
    (policy / "edge.yaml").write_text(GATEWAY.format(cert="../outside/a.pem",
                                                     key="../outside/a.key"))
    assert any("outside the policy folder" in i for i in issues(policy))


@pytest.mark.parametrize("security", [
    'api_keys: {{header: x-api-key, keys: {{a: {{file: "{secret}"}}}}}}',
    'basic_auth: {{users: {{file: "{secret}"}}}}',
    'jwt: {{providers: [{{name: p, issuer: i, jwks: {{file: "{secret}"}}}}]}}',
], ids=["api-key", "htpasswd", "jwks"])
def test_request_security_files_are_confined_too(tmp_path: Path, security: str) -> None:
    policy, outside = tmp_path / "policy", tmp_path / "outside"
    policy.mkdir()
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT\n")
    (policy / "route.yaml").write_text(ROUTE.format(security=security.format(secret=secret)))
    found = issues(policy)
    assert any("outside the policy folder" in i for i in found), found
    assert not any("TOP-SECRET-CONTENT" in i for i in found)
