"""ca/tokens.py: tokens grant their kind and subject, nothing else, and only while valid."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import pytest

from meshpilot.ca.tokens import (
    KEY_FILE,
    MAX_TTL,
    TokenAuthority,
    TokenError,
    WrongKind,
    bearer,
    rotate_key,
)

KEY = b"k" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_each_kind_grants_its_subject() -> None:
    tokens = TokenAuthority(KEY)
    grant = tokens.verify(tokens.issue("registration", "reviews"), "registration")
    assert (grant.kind, grant.subject) == ("registration", "reviews")
    assert tokens.verify(tokens.issue("node", "edge"), "node").subject == "edge"
    assert tokens.verify(tokens.issue("operator"), "operator").subject == ""


def test_a_token_grants_only_its_own_kind() -> None:
    tokens = TokenAuthority(KEY)
    with pytest.raises(TokenError, match="'registration' token does not grant 'operator'"):
        tokens.verify(tokens.issue("registration", "reviews"), "operator")
    with pytest.raises(WrongKind):  # genuine but of another kind: a 403, not a 401
        tokens.verify(tokens.issue("node", "edge"), "registration")
    with pytest.raises(TokenError) as caught:  # not genuine: never WrongKind
        TokenAuthority(b"o" * 32).verify(tokens.issue("node", "edge"), "registration")
    assert not isinstance(caught.value, WrongKind)


def test_subjects_are_required_where_they_scope() -> None:
    tokens = TokenAuthority(KEY)
    with pytest.raises(TokenError, match="name their Service or view"):
        tokens.issue("registration")
    with pytest.raises(TokenError, match="operator token has no subject"):
        tokens.issue("operator", "everything")
    with pytest.raises(TokenError, match="unknown token kind"):
        tokens.issue("admin")
    with pytest.raises(TokenError, match="at most"):
        tokens.issue("operator", ttl=MAX_TTL * 2)


def test_expiry_with_a_little_leeway() -> None:
    clock = Clock()
    tokens = TokenAuthority(KEY, clock=clock)
    token = tokens.issue("operator", ttl=60)
    clock.now += 62  # within the leeway for clock skew between replicas
    tokens.verify(token, "operator")
    clock.now += 10
    with pytest.raises(TokenError, match="expired"):
        TokenAuthority(KEY, clock=clock).verify(token, "operator")


def _forge(claims: dict, key: bytes = KEY, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def _claims(**overrides: object) -> dict:
    now = int(time.time())
    claims = {"iss": "meshpilot", "kind": "operator", "sub": "", "iat": now, "exp": now + 60,
              "jti": "x"}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.filterwarnings("ignore:The HMAC key")  # the HS512 forgery's short key
def test_forged_tampered_and_foreign_tokens_are_refused() -> None:
    tokens = TokenAuthority(KEY)
    good = tokens.issue("registration", "reviews")
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "ratings"
    tampered = ".".join([header, base64.urlsafe_b64encode(json.dumps(claims).encode())
                         .decode().rstrip("="), signature])
    unsigned = ".".join([base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode()
                         .rstrip("="), payload, ""])
    for token in (tampered, unsigned, _forge(_claims(), key=b"o" * 32),
                  _forge(_claims(), algorithm="HS512"), _forge(_claims(iss="someone")),
                  _forge(_claims(jti=None)), _forge(_claims(exp=None)), "not a token", ""):
        with pytest.raises(TokenError):
            tokens.verify(token, "operator")
    # Signed with the right key but living longer than meshpilot ever issues: refused.
    with pytest.raises(TokenError, match="lifetime"):
        now = int(time.time())
        tokens.verify(_forge(_claims(iat=now, exp=now + int(2 * MAX_TTL))), "operator")
    with pytest.raises(TokenError, match="future"):
        tokens.verify(_forge(_claims(iat=int(time.time()) + 3600)), "operator")


def test_errors_never_echo_the_token() -> None:
    token = TokenAuthority(b"o" * 32).issue("operator")
    with pytest.raises(TokenError) as caught:
        TokenAuthority(KEY).verify(token, "operator")
    assert token not in str(caught.value) and token.split(".")[2] not in str(caught.value)


def test_the_key_file_is_private_persistent_and_rotatable(tmp_path: Path) -> None:
    first = TokenAuthority.load_or_create(tmp_path / "state")
    assert (tmp_path / "state" / KEY_FILE).stat().st_mode & 0o777 == 0o600
    token = first.issue("operator")
    TokenAuthority.load_or_create(tmp_path / "state").verify(token, "operator")  # a restart
    rotate_key(tmp_path / "state")
    assert (tmp_path / "state" / KEY_FILE).stat().st_mode & 0o777 == 0o600
    with pytest.raises(TokenError):
        TokenAuthority.load_or_create(tmp_path / "state").verify(token, "operator")
    (tmp_path / "state" / KEY_FILE).chmod(0o644)
    with pytest.raises(TokenError, match="readable by others"):
        TokenAuthority.load_or_create(tmp_path / "state")


def test_in_memory_keys_differ_per_process() -> None:
    token = TokenAuthority.load_or_create(None).issue("operator")
    with pytest.raises(TokenError):
        TokenAuthority.load_or_create(None).verify(token, "operator")


def test_bearer_header() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer") is None
    assert bearer(None) is None


def test_a_running_authority_picks_up_a_rotated_key(tmp_path: Path, caplog) -> None:
    running = TokenAuthority.load_or_create(tmp_path)
    old = running.issue("operator")
    rotate_key(tmp_path)
    with pytest.raises(TokenError):  # no restart needed: the next check reads the new key
        running.verify(old, "operator")
    new = TokenAuthority.load(tmp_path).issue("operator")
    assert running.verify(new, "operator").kind == "operator"
    # A replacement that cannot be used (too short) is logged; the key in use stays.
    (tmp_path / KEY_FILE).write_bytes(b"short")
    assert running.verify(new, "operator").kind == "operator"
    assert "cannot be used" in caplog.text


def test_load_needs_an_existing_key(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="cannot read the token key"):
        TokenAuthority.load(tmp_path / "nowhere")
    TokenAuthority.load_or_create(tmp_path)
    TokenAuthority.load(tmp_path).verify(TokenAuthority.load(tmp_path).issue("operator"),
                                         "operator")
