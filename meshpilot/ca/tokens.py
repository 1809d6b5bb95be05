"""Signed, scoped, expiring credentials: what a caller that is not a certificate presents.

A token is a JWT (HS256) signed with the control plane's token key, a 256-bit random secret kept
beside the CA root (`token.key`, mode 0600) and shared by the replicas that share the CA. Its
claims say what it allows, and nothing else does:

- `kind` "operator": the admin API's debug, config and write endpoints, and CSDS;
- `kind` "registration", `sub` a Service name: self-registration of that Service's endpoints only
  (docs/discovery.md);
- `kind` "node", `sub` a view: an Envoy's xDS stream for that view only.

Every token carries `iss` "meshpilot", `iat`, `exp` (required; at most `MAX_TTL` ahead) and a
random `jti`. Verification refuses anything else: another algorithm (no "none", no RS/HS
confusion), a missing claim, an expired token, another kind. Tokens cannot be revoked one by
one: rotating the key (`meshpilot token rotate-key`) invalidates every token at once, which is
the answer to a leak (docs/security.md). An authority loaded from a folder notices a new key file
at its next issue or check (a `stat` per call), so a running server needs no restart.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jwt

from meshpilot.base.privatefiles import write_private

KINDS = ("operator", "registration", "node")
ISSUER = "meshpilot"
ALGORITHM = "HS256"
KEY_FILE = "token.key"
MAX_TTL = 366 * 24 * 3600.0
_KEY_BYTES = 32
_LEEWAY = 5.0  # seconds of clock skew between the replica that signed and the one that checks

log = logging.getLogger("meshpilot.tokens")


class TokenError(ValueError):
    """A token that does not allow what it was presented for; the message says why, without
    echoing the token."""


class WrongKind(TokenError):
    """A valid token of another kind (a registration token where an operator's is needed): the
    caller is known but not allowed, which HTTP answers 403 rather than 401."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows."""

    kind: str
    subject: str  # the Service (registration), the view (node); "" for an operator
    expires_at: float
    token_id: str


class TokenAuthority:
    def __init__(self, key: bytes, clock: Callable[[], float] = time.time,
                 path: Path | None = None):
        """`path`: the file `key` was read from, re-read whenever it changes (a rotation)."""
        if len(key) < _KEY_BYTES:
            raise ValueError(f"a token key needs at least {_KEY_BYTES} bytes")
        self._key = key
        self.clock = clock
        self._path = path
        self._seen = _identity(path) if path is not None else None

    # ---- the key -------------------------------------------------------------------------------

    @classmethod
    def load_or_create(cls, directory: Path | None) -> TokenAuthority:
        """The key in `directory` (created there on first start); None: a key in memory, so
        tokens issued by this process stop working when it stops."""
        if directory is None:
            return cls(secrets.token_bytes(_KEY_BYTES))
        path = Path(directory) / KEY_FILE
        if not path.exists():
            write_key(path, secrets.token_bytes(_KEY_BYTES))
        return cls(_read_key(path), path=path)

    @classmethod
    def load(cls, directory: Path) -> TokenAuthority:
        """The key in `directory`, which must exist (a client minting a token for a server
        that made it); TokenError if it is missing or unreadable."""
        path = Path(directory) / KEY_FILE
        try:
            return cls(_read_key(path), path=path)
        except OSError as e:
            raise TokenError(f"cannot read the token key {path}: {e.strerror or e}") from None
        except ValueError as e:
            raise TokenError(f"{path}: {e}") from None

    def _current_key(self) -> bytes:
        """The key, re-read first if its file changed (size, time or inode: `rotate_key`
        replaces it by rename). A replacement that cannot be used is logged and the key in
        use stays, so a half-done edit does not lock every operator out."""
        if self._path is None:
            return self._key
        seen = _identity(self._path)
        if seen != self._seen:
            self._seen = seen
            try:
                key = _read_key(self._path)
                if len(key) < _KEY_BYTES:
                    raise ValueError(f"a token key needs at least {_KEY_BYTES} bytes")
            except (OSError, ValueError, TokenError) as e:
                log.error("the token key %s changed but cannot be used (%s); still using the "
                          "previous key", self._path, e)
            else:
                if key != self._key:
                    log.warning("the token key %s changed: tokens signed with the previous "
                                "key no longer work", self._path)
                self._key = key
        return self._key

    # ---- issuing and checking ----------------------------------------------------------------

    def issue(self, kind: str, subject: str = "", ttl: float = 24 * 3600.0) -> str:
        if kind not in KINDS:
            raise TokenError(f"unknown token kind {kind!r}; expected one of {', '.join(KINDS)}")
        if (kind == "operator") != (subject == ""):
            raise TokenError("an operator token has no subject; registration and node tokens "
                             "name their Service or view")
        if not 0 < ttl <= MAX_TTL:
            raise TokenError(f"ttl must be positive and at most {MAX_TTL / 86400:.0f} days")
        now = self.clock()
        claims = {"iss": ISSUER, "kind": kind, "sub": subject, "iat": int(now),
                  "exp": int(now + ttl), "jti": secrets.token_hex(8)}
        return jwt.encode(claims, self._current_key(), algorithm=ALGORITHM)

    def verify(self, token: str, kind: str) -> Grant:
        """The grant of a token of `kind`; TokenError if it is not one, or is no longer valid."""
        try:
            # Times are checked below against this authority's clock, not PyJWT's.
            claims = jwt.decode(
                token, self._current_key(), algorithms=[ALGORITHM], issuer=ISSUER,
                options={"require": ["iss", "exp", "iat", "sub", "jti"], "verify_sub": False,
                         "verify_exp": False, "verify_iat": False, "verify_nbf": False})
        except jwt.PyJWTError as e:
            raise TokenError(f"not a valid meshpilot token ({type(e).__name__})") from None
        if not all(isinstance(claims[c], int | float) for c in ("iat", "exp")):
            raise TokenError("not a valid meshpilot token (iat, exp)")
        now = self.clock()
        if now > claims["exp"] + _LEEWAY:
            raise TokenError("the token has expired")
        if claims["iat"] > now + _LEEWAY:
            raise TokenError("the token was issued in the future (check the clocks)")
        if not isinstance(claims["sub"], str):
            raise TokenError("not a valid meshpilot token (sub)")
        if claims["exp"] - claims["iat"] > MAX_TTL + _LEEWAY:
            raise TokenError("the token's lifetime is longer than meshpilot ever issues")
        # Last: WrongKind means "a genuine, current token", which callers may answer 403.
        if claims.get("kind") != kind:
            raise WrongKind(f"a {claims.get('kind')!r} token does not grant {kind!r} access")
        return Grant(kind=kind, subject=claims["sub"], expires_at=float(claims["exp"]),
                     token_id=str(claims["jti"]))


def write_key(path: Path, key: bytes) -> None:
    """Write a new key file readable by its owner only, atomically (a reader never sees half)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, key)


def _read_key(path: Path) -> bytes:
    if path.stat().st_mode & 0o077:
        raise TokenError(f"{path} is readable by others (mode "
                         f"{path.stat().st_mode & 0o777:o}): chmod 600 it")
    return path.read_bytes()


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def rotate_key(directory: Path) -> None:
    """A new key: every token issued so far stops working."""
    write_key(Path(directory) / KEY_FILE, secrets.token_bytes(_KEY_BYTES))


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header, else None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
