"""meshpilot's credentials shared by every replica, sealed (docs/security.md, "Replicas").

The token key and the mesh CA's root (certificate and private key) are files in `--state-dir`
(and `--ca-dir`). With a store, every replica must hold the same ones: the first replica to
start publishes its files, sealed, under `<prefix>/state/files`; every later one writes the
published files into its own folders before loading them the usual way, so nothing in `ca/`
changes and `meshpilot token create`, `bootstrap` and `status` keep reading local files.

Sealed = AES-256-GCM with a key only the replicas hold: `store.key` (32 random bytes, mode
0600), created by the first replica in its `--state-dir` and copied to the others (or one file
named by `--store-key` on a volume only the replicas mount). Whoever can read etcd without that
key sees ciphertext; the entry's name is authenticated too, so a sealed blob cannot be replayed
under another name. A replica whose key does not open the store's state refuses to start.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshpilot.base.privatefiles import write_private
from meshpilot.store import StoreError, StoreUnavailable
from meshpilot.store.etcd import EtcdStore

log = logging.getLogger("meshpilot.store")

KEY_FILE = "store.key"
_MAGIC = b"mpseal1:"
_STATE_KEY = "state/files"


class SealingKey:
    def __init__(self, key: bytes, path: Path | None = None):
        if len(key) != 32:
            raise StoreError(f"{path or 'the store key'}: expected 32 bytes, found {len(key)}")
        self._aead = AESGCM(key)
        self.path = path

    @classmethod
    def load(cls, path: Path) -> SealingKey:
        """The key in `path`, which must exist (a tool writing for replicas that made it)."""
        try:
            return cls(path.read_bytes(), path)
        except OSError as e:
            raise StoreError(f"cannot read the store key {path}: {e.strerror} (it is made by "
                             f"the first replica: use that one, or --store-key)") from None

    @classmethod
    def load_or_create(cls, path: Path) -> tuple[SealingKey, bool]:
        """(the key in `path`, whether it was created now). Replicas starting together on one
        shared file (`--store-key` on a volume) make one key: it is linked into place only if
        no other replica's is there, and the others then load that one."""
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            key = secrets.token_bytes(32)
            write_private(temporary, key)
            try:
                os.link(temporary, path)
                return cls(key, path), True
            except FileExistsError:
                pass  # another replica's came first
            finally:
                temporary.unlink(missing_ok=True)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise StoreError(f"cannot read the store key {path}: {e.strerror}") from None
        if path.stat().st_mode & 0o077:
            log.warning("%s is readable by others (mode %o): chmod 600 it", path,
                        path.stat().st_mode & 0o777)
        return cls(data, path), False

    def seal(self, name: str, data: bytes) -> bytes:
        nonce = os.urandom(12)
        return _MAGIC + nonce + self._aead.encrypt(nonce, data, name.encode())

    def open(self, name: str, blob: bytes) -> bytes:
        if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + 12 + 16:
            raise StoreError(f"the store's {name} is not sealed by meshpilot")
        body = blob[len(_MAGIC):]
        try:
            return self._aead.decrypt(body[:12], body[12:], name.encode())
        except InvalidTag:
            raise StoreError(
                f"{self.path or 'this store key'} does not open the store's {name}: every "
                f"replica needs the same {KEY_FILE} (copy it from a running replica's "
                f"--state-dir, or name one shared file with --store-key)") from None


async def share_files(store: EtcdStore, key: SealingKey, files: Sequence[tuple[str, Path]],
                      create_local: Callable[[], object], optional: frozenset[str] = frozenset()
                      ) -> str:
    """Make the files (name, path) the fleet's: the store's copies written here if it has them,
    else ours (made by `create_local()` if missing) published. Returns what happened, in words.

    `optional` names files that may be absent (both here and in the store: fine; on one side
    only: a refusal, like a difference). A local file that differs from the store's is a
    refusal (StoreError), never overwritten: it may be the only copy of a CA other workloads
    trust. If the store is unreachable and every file is here already, they are used as they
    are (the last known state); if some are missing, StoreUnavailable: a replica cannot start
    on credentials nobody else has."""
    missing_before = {name for name, path in files
                      if not path.exists() and name not in optional}
    try:
        entry = await store.get(_STATE_KEY)
        if entry is None:
            create_local()
            blob = key.seal(_STATE_KEY, _pack(files, optional))
            created, entry = await store.create(_STATE_KEY, blob)
            if created:
                return f"published this replica's {_names(files)} to the store, sealed"
            if entry is None:
                raise StoreError("the store's shared state vanished while publishing it")
    except StoreUnavailable:
        if missing_before:
            raise
        log.warning("the store is unreachable: using the %s in this replica's folders as they "
                    "are (the last known state)", _names(files))
        return "store unreachable: local files used"
    published = _unpack(key.open(_STATE_KEY, entry.value))
    for name, path in files:
        data = published.get(name)
        if data is None and name in optional:
            if path.exists():
                raise StoreError(f"{path} is not part of the state the other replicas use (in "
                                 f"the store, {store.prefix}/{_STATE_KEY}): move it away")
            continue
        if data is None:
            raise StoreError(f"the store's shared state has no {name}")
        if path.exists() and name not in missing_before and path.read_bytes() != data:
            raise StoreError(
                f"{path} differs from the {name} the other replicas use (in the store, "
                f"{store.prefix}/{_STATE_KEY}): move it away to use the fleet's, or start this "
                f"replica with another --store-prefix")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, data)
    return f"loaded the fleet's {_names(files)} from the store"


def _names(files: Sequence[tuple[str, Path]]) -> str:
    return ", ".join(name for name, _ in files)


def _pack(files: Sequence[tuple[str, Path]], optional: frozenset[str]) -> bytes:
    """The files as one JSON object; an optional one that does not exist is left out."""
    return json.dumps({name: base64.b64encode(path.read_bytes()).decode()
                       for name, path in files if name not in optional or path.exists()},
                      sort_keys=True).encode()


def _unpack(data: bytes) -> dict[str, bytes]:
    try:
        return {name: base64.b64decode(text) for name, text in json.loads(data).items()}
    except (ValueError, AttributeError):
        raise StoreError("the store's shared state is malformed") from None
