"""Files only their owner may read (keys, tokens, bootstraps holding a token), written whole."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path`, mode 0600 from the first byte, atomically: a temporary file in
    the same folder renamed over it, so a reader (a server re-reading its key, an Envoy
    starting) never sees half a file. The temporary name is this process's, so two writers
    never share one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
