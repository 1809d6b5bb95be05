"""The policy itself in the store (docs/operations.md, "The policy in the store").

`meshpilot apply DIR --store ...` validates the folder as `meshpilot validate` does and, only if
it loads, stores it as one revision: every regular, non-hidden file below DIR (policy files and
the certificates, keys, JWKS or htpasswd files beside them), sealed with `store.key` like the
credentials (a policy may hold secrets), under `<prefix>/policy/current`. The revision is a
hash of the files' names and contents, so applying the same folder twice changes nothing.

Replicas started with `serve --policy-from-store` serve that revision: they write it into
`--state-dir/policy-from-store/current` (a whole new folder swapped in by rename, so a load
never sees half a revision) and reload; they follow the key and reload on every new
revision. While the store is unreachable they serve the last revision they wrote. Files the
policy names outside DIR (`--allow-files-from` folders) are not stored: every replica needs
them at the same paths.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from meshpilot.base.privatefiles import write_private
from meshpilot.store import StoreError
from meshpilot.store.etcd import EtcdStore
from meshpilot.store.sealed import SealingKey

log = logging.getLogger("meshpilot")

POLICY_KEY = "policy/current"
MAX_BYTES = 1024 * 1024  # under etcd's default request limit (1.5 MiB), sealed and encoded
MAX_FILES = 2000


def read_folder(folder: Path) -> dict[str, bytes]:
    """Every regular, non-hidden file below `folder` (symlinked folders not followed), by
    relative POSIX name. StoreError if the folder is too large to store."""
    files: dict[str, bytes] = {}
    total = 0
    for directory, folders, names in os.walk(folder):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(names):
            path = Path(directory, name)
            if name.startswith(".") or name.endswith("~") or not path.is_file():
                continue
            data = path.read_bytes()
            total += len(data)
            if total > MAX_BYTES or len(files) >= MAX_FILES:
                raise StoreError(f"{folder} is too large to store as one revision (at most "
                                 f"{MAX_BYTES // 1024} KiB in {MAX_FILES} files)")
            files[path.relative_to(folder).as_posix()] = data
    return files


def revision_of(files: dict[str, bytes]) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


def _pack(revision: str, files: dict[str, bytes]) -> bytes:
    return json.dumps({"revision": revision, "applied_at": time.time(),
                       "files": {n: base64.b64encode(d).decode() for n, d in files.items()}},
                      sort_keys=True).encode()


def unpack(key: SealingKey, blob: bytes) -> tuple[str, dict[str, bytes]]:
    data: dict[str, Any] = json.loads(key.open(POLICY_KEY, blob))
    files = {str(n): base64.b64decode(t) for n, t in dict(data["files"]).items()}
    for name in files:  # written below a folder of ours: no way out of it
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or not parts:
            raise StoreError(f"the stored policy names a file outside its folder: {name!r}")
    if revision_of(files) != data["revision"]:
        raise StoreError("the stored policy does not match its revision")
    return str(data["revision"]), files


async def apply(store: EtcdStore, key: SealingKey, folder: Path) -> tuple[str, int, bool]:
    """Store `folder` (already validated) as the current revision: (revision, files, changed)."""
    files = read_folder(folder)
    revision = revision_of(files)
    current = await store.get(POLICY_KEY)
    if current is not None:
        try:
            if unpack(key, current.value)[0] == revision:
                return revision, len(files), False
        except (StoreError, ValueError, KeyError):
            pass  # unreadable: replaced by this one
    await store.put(POLICY_KEY, key.seal(POLICY_KEY, _pack(revision, files)))
    return revision, len(files), True


class PolicyFolder:
    """The folder a `--policy-from-store` replica serves: `<root>/current`, one revision."""

    def __init__(self, root: Path):
        self.root = root
        self.current = root / "current"
        self.revision: str | None = self._read_revision()

    def _read_revision(self) -> str | None:
        try:
            return (self.root / "revision").read_text().strip() or None
        except OSError:
            return None

    def write(self, revision: str, files: dict[str, bytes]) -> bool:
        """Make `files` the current folder (swapped whole); False if it was that revision."""
        if revision == self.revision and self.current.is_dir():
            return False
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = self.root / f".next-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        for name, data in files.items():
            path = staging / name
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(path, data)
        old = self.root / f".old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        if self.current.exists():
            os.replace(self.current, old)
        os.replace(staging, self.current)
        shutil.rmtree(old, ignore_errors=True)
        write_private(self.root / "revision", (revision + "\n").encode())
        self.revision = revision
        return True
