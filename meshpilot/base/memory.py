"""Giving memory back to the system after a large policy is replaced by a small one.

Freed Python objects return their memory to the allocator, not to the system. With glibc's
malloc (which `meshpilot serve` runs on: see `use_system_allocator`) the free pages scattered
through its heaps stay resident until `malloc_trim(0)` hands them back (glibc 2.8 and later
release free pages anywhere in every heap, not only at its top). Python's own small-object
allocator (pymalloc) cannot do that: it returns a 1 MiB arena only once every object in it is
gone, and the objects of the policy that replaced the large one are scattered through the large
one's arenas, pinning nearly all of them (measured in docs/benchmarks.md: 10,000 Services
replaced by 100 kept 3x the small policy's memory under pymalloc, 1.04x under glibc's malloc
with a trim).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys
from collections.abc import Callable, Sequence

log = logging.getLogger("meshpilot.base.memory")

ALLOCATOR_VARIABLE = "PYTHONMALLOC"


def _load_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:  # glibc's name first: find_library runs ldconfig in a subprocess
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
        except OSError:
            return None
    trim = getattr(libc, "malloc_trim", None)  # musl and other C libraries have none
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_MALLOC_TRIM = _load_malloc_trim()


def release(clear: Sequence[Callable[[], None]] = ()) -> bool:
    """Empty the memo tables `clear` names, collect cycles, and hand free heap pages back to
    the system. True if the C library could be asked to (glibc's `malloc_trim`)."""
    for clear_cache in clear:
        clear_cache()
    gc.collect()
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def use_system_allocator(argv: Sequence[str], environ: dict[str, str] | None = None) -> None:
    """Run this process again with Python's objects on the C library's malloc (`PYTHONMALLOC=
    malloc`), unless its allocator was chosen already (the variable is set, to any value:
    `PYTHONMALLOC=pymalloc` keeps Python's). The variable is read only when the interpreter
    starts, so the process replaces itself (same process id) with `python -m meshpilot ARGV`.
    Returns only if it did not (the variable is set, or not on Linux with glibc)."""
    environ = dict(os.environ if environ is None else environ)
    if ALLOCATOR_VARIABLE in environ or _MALLOC_TRIM is None or not sys.executable:
        return
    environ[ALLOCATOR_VARIABLE] = "malloc"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "meshpilot", *argv], environ)


def allocator() -> str:
    """Which allocator Python's objects are on, as PYTHONMALLOC names it ("pymalloc" unless
    the variable chose another)."""
    return os.environ.get(ALLOCATOR_VARIABLE) or "pymalloc"
