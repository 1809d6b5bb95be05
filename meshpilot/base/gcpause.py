"""Pausing the cycle collector while building a large, acyclic, long-lived structure.

Loading a policy and translating it build hundreds of thousands of objects that live as long
as the configuration does and form no reference cycles worth collecting. Left on, the
collector re-scans the growing heap again and again (each generation-2 pass visits every
tracked object), which costs as much as the work itself at 10,000 Services. Pauses nest and
may overlap across threads (a reload on a worker thread while a view is built on another):
the collector is switched back on when the last pause ends, and only if it was on before the
first began; what the pauses built is then counted as old (`_age`), not scanned again.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False
# Whether `freeze_for_life` froze what was alive (a server, after its start). Kept here because
# CPython's gc.get_freeze_count() walks every frozen object (millions in a large policy's
# server): asked at the end of every pause, it made each view build pay for the whole heap.
_frozen = False


def freeze_for_life() -> None:
    """Keep everything alive now out of the collector's passes for good (`gc.freeze`)."""
    global _frozen
    with _lock:
        gc.freeze()
        _frozen = True


@contextmanager
def collection_paused() -> Iterator[None]:
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                if not _frozen:
                    _age()
                gc.enable()


def _age() -> None:
    """Move every tracked object to the oldest generation, with the generations' counts reset.

    The pause does not stop the count of new objects, so the first allocation after it would
    start a young collection over everything the pause built (about 20 % of a cold load at
    10,000 Services), and later middle-generation passes would scan the survivors again. What
    the pause built is long-lived: it belongs in the oldest generation, which the collector
    still scans in its (rare) full passes, so a cycle among these objects is collected then.
    `freeze` + `unfreeze` does exactly that move, in constant time. Skipped when objects are
    frozen already (a server freezes what it holds after its start): unfreezing would put them
    back into the full passes."""
    gc.freeze()
    gc.unfreeze()
