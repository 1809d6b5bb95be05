"""How meshpilot's own commands (`meshpilot status`, ...) call the admin API: which token they
send, and what a refusal says. The token is never part of a message."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshpilot.ca.tokens import TokenAuthority, TokenError

TOKEN_ENV = "MESHPILOT_TOKEN"
MINTED_TTL = 300.0  # a token a command mints for itself lives as long as the command, about


class AdminError(Exception):
    """The admin API could not be asked, or refused; `code` is the exit status to use."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def find_token(token_file: str | None = None, state_dir: str | Path | None = None,
               environ: Mapping[str, str] = os.environ) -> tuple[str | None, str]:
    """(token, where it came from): `token_file`, else $MESHPILOT_TOKEN, else an operator token
    minted for five minutes with `state_dir`'s key if this user can read it (whoever can read
    the key could sign any token anyway), else (None, why not)."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise AdminError(f"cannot read the token file {token_file}: {e.strerror}") from None
        if not token:
            raise AdminError(f"the token file {token_file} is empty")
        return token, f"--token-file {token_file}"
    token = environ.get(TOKEN_ENV, "").strip()
    if token:
        return token, f"${TOKEN_ENV}"
    if state_dir is not None:
        try:
            minted = TokenAuthority.load(Path(state_dir)).issue("operator", ttl=MINTED_TTL)
        except TokenError as e:
            return None, str(e)
        return minted, f"minted with the key in {state_dir}"
    return None, "no --token-file, $MESHPILOT_TOKEN or --state-dir"


class AdminClient:
    def __init__(self, address: str, token: str | None = None, *, source: str = "",
                 timeout: float = 5.0):
        self.base = f"http://{address}"
        self.token = token
        self.source = source  # where the token came from, for a refusal's message
        self.timeout = timeout

    def get_json(self, path: str) -> Any:
        return self._call(path)

    def post_json(self, path: str, body: Any = None) -> Any:
        """POST `body` as JSON (an empty object if None); the answer's JSON."""
        return self._call(path, json.dumps({} if body is None else body).encode())

    def _call(self, path: str, data: bytes | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, headers=headers, data=data,
                                         method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            raise AdminError(self._refusal(e)) from None
        except (urllib.error.URLError, OSError) as e:
            raise AdminError(f"cannot reach meshpilot admin at {self.base}: {e}") from None
        except ValueError:
            raise AdminError(f"meshpilot admin at {self.base}{path} did not answer JSON") \
                from None

    def _refusal(self, e: urllib.error.HTTPError) -> str:
        try:
            reason = str(json.loads(e.read())["error"])
        except (ValueError, KeyError, TypeError, OSError):
            reason = e.reason
        message = f"meshpilot admin at {self.base} refused ({e.code}): {reason}"
        if e.code in (401, 403):
            used = f"the token from {self.source}" if self.token else f"no token ({self.source})"
            message += (f"; sent {used}. Give an operator token with --token-file FILE or "
                        f"${TOKEN_ENV}, or the server's --state-dir")
        return message
