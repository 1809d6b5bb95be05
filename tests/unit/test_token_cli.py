"""`meshpilot token` and the token the CLI's admin clients send (runtime/admin_client.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshpilot.ca.tokens import TokenAuthority, TokenError
from meshpilot.cli import main
from meshpilot.runtime.admin_client import AdminClient, AdminError, find_token


def test_token_create_signs_with_the_state_folders_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    # No key there (a mistyped --state-dir): refused, rather than a token no server accepts.
    assert main(["token", "create", "operator", "--state-dir", str(state)]) == 2
    assert "cannot read the token key" in capsys.readouterr().err
    assert not state.exists()
    tokens = TokenAuthority.load_or_create(state)  # what serve does on first start
    assert main(["token", "create", "registration", "reviews", "--ttl", "1h",
                 "--state-dir", str(state)]) == 0
    grant = tokens.verify(capsys.readouterr().out.strip(), "registration")
    assert grant.subject == "reviews" and grant.expires_at - tokens.clock() <= 3600
    assert main(["token", "create", "node", "edge", "--state-dir", str(state)]) == 0
    assert tokens.verify(capsys.readouterr().out.strip(), "node").subject == "edge"
    for wrong in (["operator", "everything"], ["registration"], ["node", "edge", "--ttl", "9000h"]):
        assert main(["token", "create", *wrong, "--state-dir", str(state)]) == 2, wrong
        captured = capsys.readouterr()
        assert captured.out == "" and "meshpilot token create:" in captured.err


def test_rotate_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "rotate-key", "--state-dir", str(tmp_path / "nowhere")]) == 2
    tokens = TokenAuthority.load_or_create(tmp_path)
    token = tokens.issue("operator")
    assert main(["token", "rotate-key", "--state-dir", str(tmp_path)]) == 0
    assert "no longer works" in capsys.readouterr().err
    with pytest.raises(TokenError):
        tokens.verify(token, "operator")


def test_where_the_clients_token_comes_from(tmp_path: Path) -> None:
    TokenAuthority.load_or_create(tmp_path / "state")
    (tmp_path / "file").write_text("from-the-file\n")
    env = {"MESHPILOT_TOKEN": "from-the-environment"}
    assert find_token(str(tmp_path / "file"), tmp_path / "state", env)[0] == "from-the-file"
    assert find_token(None, tmp_path / "state", env)[0] == "from-the-environment"
    minted, source = find_token(None, tmp_path / "state", {})
    assert minted is not None and "minted" in source
    grant = TokenAuthority.load(tmp_path / "state").verify(minted, "operator")
    assert grant.expires_at - TokenAuthority.load(tmp_path / "state").clock() <= 300
    assert find_token(None, tmp_path / "none", {})[0] is None
    (tmp_path / "empty").write_text("\n")
    for bad in ("empty", "missing"):
        with pytest.raises(AdminError):
            find_token(str(tmp_path / bad), None, {})


def test_an_unreachable_admin_is_reported_without_the_token() -> None:
    from meshpilot.base.netutil import free_port

    client = AdminClient(f"127.0.0.1:{free_port()}", "secret-token-value", source="test")
    with pytest.raises(AdminError) as caught:
        client.get_json("/debug/status")
    assert "cannot reach" in str(caught.value) and "secret-token-value" not in str(caught.value)
