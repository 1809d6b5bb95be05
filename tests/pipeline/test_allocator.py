"""`meshpilot serve` runs on the C library's malloc (base/memory.py): memory a smaller policy
frees goes back to the system. PYTHONMALLOC set keeps the interpreter's own choice."""

from __future__ import annotations

import os
from pathlib import Path

from support import MeshpilotProcess

from meshpilot.base import memory


def _serve_log(tmp_path: Path, env_value: str | None) -> str:
    policy = tmp_path / "policy"
    policy.mkdir(parents=True)
    (policy / "c.yaml").write_text("kind: EnvoyResources\nname: c\n"
                                   "clusters: [{name: a, type: STATIC, connect_timeout: 1s}]\n")
    saved = os.environ.pop("PYTHONMALLOC", None)
    if env_value is not None:
        os.environ["PYTHONMALLOC"] = env_value
    try:
        # Plaintext xDS on purpose: this is about the process, not who may connect.
        mp = MeshpilotProcess(policy, tmp_path, extra_args=("--insecure-xds",
                                                            "--no-prepush-check")).start()
    finally:
        os.environ.pop("PYTHONMALLOC", None)
        if saved is not None:
            os.environ["PYTHONMALLOC"] = saved
    try:
        assert mp.proc is not None
        environ = Path(f"/proc/{mp.proc.pid}/environ").read_bytes().split(b"\0")
        return mp.log_path.read_text() + "\n" + "\n".join(
            e.decode() for e in environ if e.startswith(b"PYTHONMALLOC="))
    finally:
        mp.stop()


def test_serve_replaces_itself_on_malloc(tmp_path: Path) -> None:
    text = _serve_log(tmp_path / "default", None)
    if memory._MALLOC_TRIM is None:  # not glibc: stays on pymalloc
        assert "memory allocator: pymalloc" in text
    else:
        # The same process id (execve): what started it still holds it.
        assert "memory allocator: malloc" in text and "PYTHONMALLOC=malloc" in text


def test_pythonmalloc_set_keeps_the_interpreters_choice(tmp_path: Path) -> None:
    text = _serve_log(tmp_path / "chosen", "pymalloc")
    assert "memory allocator: pymalloc" in text and "PYTHONMALLOC=pymalloc" in text
